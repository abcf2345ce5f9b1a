//! Kafka topic management: the declared topics plus one compacted state topic per stateful stage,
//! created, grown, kept at their declared config, and deleted when the user opted in.
//!
//! The controller calls, in order:
//! 1. [`OwnershipView::new`] over every pipeline in its store: who owns each topic (the oldest
//!    pipeline on the same Kafka cluster that declares it).
//! 2. [`desired_topics`], [`LastStatus::of`] and [`TopicQuery::new`]: what to look at.
//! 3. [`AdminPool::get`] and [`TopicAdmin::describe`]: what Kafka has (I/O), unless the pipeline's
//!    last look ([`looks`]) still answers.
//! 4. [`plan`](fn@plan): the actions and the per-topic status (pure); [`creation_record`]: the
//!    topics to record in the status as the operator's own before it creates them.
//! 5. [`execute`](fn@execute): runs the actions, returns the Events to publish, the errors, and
//!    the statuses corrected for actions that failed (I/O through [`TopicAdmin`] only).
//!
//! On deletion, the finalizer calls [`finalize_plan`] and [`execute`](fn@execute) instead of
//! steps 2-4; [`needs_finalizer`] says whether a pipeline needs that finalizer at all.
//!
//! Only [`kafka_admin`] holds a Kafka client (kept in the [`pool`]; [`diagnosis`] probes the
//! brokers when they cannot be reached); [`desired`], [`plan`](mod@plan), [`ownership`],
//! [`connection`] and [`error`] are pure, and [`execute`](mod@execute) drives whatever
//! [`TopicAdmin`] it is given. The one memory between reconciles is the last look at each
//! pipeline's topics ([`looks`], a cache bounded by the resync period); what the operator manages
//! is read back from `status.topics`.

pub mod admin;
pub mod cleanup;
pub mod connection;
pub mod desired;
pub mod diagnosis;
pub mod error;
pub mod execute;
pub mod kafka_admin;
pub mod looks;
pub mod ownership;
pub mod plan;
pub mod pool;

pub use admin::{Effect, TopicAdmin};
pub use connection::{
    AdminConnection, ClientCertificate, ConnectionKey, ResolvedKafkaSecrets, SaslCredentials,
};
pub use desired::{DesiredTopic, desired_topics};
pub use error::{ErrorCategory, Operation, TopicError};
pub use execute::{TopicOutcome, execute};
pub use kafka_admin::KafkaTopicAdmin;
pub use ownership::{OwnershipView, PipelineRef};
pub use plan::{
    ConfigReason, Described, LastStatus, ObservedTopic, TOPIC_FINALIZER, TopicAction, TopicPlan,
    TopicQuery, creation_record, finalize_plan, has_finalizer, needs_finalizer, plan,
};
pub use pool::{AdminPool, AdminSettings};

/// PascalCase reasons of the Events and topic statuses this module produces.
pub mod reason {
    /// Event: a topic was created.
    pub const TOPIC_CREATED: &str = "TopicCreated";
    /// Event: a topic got more partitions (keys are remapped).
    pub const PARTITIONS_INCREASED: &str = "PartitionsIncreased";
    /// Event: declared config keys were set on a topic for the first time (adoption, spec change).
    pub const TOPIC_CONFIGURED: &str = "TopicConfigured";
    /// Event: declared config keys changed out of band were set back.
    pub const TOPIC_CONFIG_RESTORED: &str = "TopicConfigRestored";
    /// Event: a topic with deletion policy Delete was deleted.
    pub const TOPIC_DELETED: &str = "TopicDeleted";
    /// Status: an older pipeline on the same Kafka cluster declares the topic.
    pub const CONFLICT: &str = "Conflict";
    /// Status: the topic exists in Kafka, this pipeline did not create it, and the spec does not
    /// opt in to adopting it (`adopt: true`).
    pub const ADOPTION_REQUIRED: &str = "AdoptionRequired";
    /// Status: the operator is creating the topic (recorded before the create call, so a crash
    /// in between still knows the topic is its own).
    pub const CREATING: &str = "Creating";
    /// Status: the topic has more partitions than declared; they are never removed.
    pub const PARTITION_DECREASE_REFUSED: &str = "PartitionDecreaseRefused";
    /// Status: the topic's replication factor differs from the declared one.
    pub const REPLICATION_FACTOR_MISMATCH: &str = "ReplicationFactorMismatch";
    /// Status: the declared replication factor is greater than the brokers the cluster has; the
    /// topic is not created.
    pub const REPLICATION_FACTOR_TOO_HIGH: &str = "ReplicationFactorTooHigh";
    /// Status: the declared `min.insync.replicas` is greater than the topic's replicas, so no
    /// `acks=all` write could ever succeed; the topic is not created or configured.
    pub const MIN_INSYNC_REPLICAS_TOO_HIGH: &str = "MinInsyncReplicasTooHigh";
    /// Status (the topic stays ready): one replica on a cluster of several brokers, so one broker
    /// failure stops the topic and can lose its records.
    pub const SINGLE_REPLICA: &str = "SingleReplica";
    /// Status: the topic left the spec (or the pipeline is being deleted) and is being deleted.
    pub const DELETING: &str = "Deleting";
    /// Status: a Kafka admin call for the topic failed; the message says which and why.
    pub const KAFKA_ADMIN_FAILED: &str = "KafkaAdminFailed";
}
