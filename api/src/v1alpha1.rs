//! The `OrderPipeline` custom resource, version `v1alpha1` (group `orderpipe.dev`).
//!
//! Owns the wire format users write and the validation the apiserver enforces at admission: OpenAPI
//! bounds (lengths, ranges, patterns), list-map keys for unique names, and CEL rules for everything
//! that spans fields. The `///` docs become the schema descriptions that `kubectl explain` prints.
//! This module must not contain behaviour beyond small accessors: reconciling is the operator's job.
//!
//! Every list and string is bounded so the CEL cost estimate of the cross-field rules stays inside the
//! apiserver's budget; the bounds are in `limits` so the tests and docs can name them. Messages are
//! static or concatenate bounded fields only: the apiserver estimates a `messageExpression` that uses
//! list macros (`filter`, `map`, `join`) or `string(int)` as unbounded and refuses the whole CRD. The
//! apiserver prefixes every message with the field path and, for `FieldValueInvalid`, the value.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Bounds on sizes, chosen generously for real pipelines and small enough for the CEL cost budget.
pub mod limits {
    /// Most topics one pipeline declares.
    pub const MAX_TOPICS: usize = 32;
    /// Most stages one pipeline declares.
    pub const MAX_STAGES: usize = 16;
    /// Most named outputs of one stage.
    pub const MAX_OUTPUTS: usize = 8;
    /// Kafka's own limit on topic names.
    pub const MAX_TOPIC_NAME: usize = 249;
    /// A stage name is a DNS label; the pipeline and stage names together must fit in one (see the
    /// root rule), because child objects are named `<pipeline>-<stage>`.
    pub const MAX_STAGE_NAME: usize = 40;
    /// Most partitions one topic may declare.
    pub const MAX_PARTITIONS: i32 = 10_000;
    /// Most replicas a stage may run.
    pub const MAX_REPLICAS: i32 = 1_000;
}

/// An order pipeline: Kafka topics plus the stages that consume and produce them.
///
/// The operator creates the declared topics, runs one worker workload per stage (a Deployment, or an
/// Argo Rollout for canary releases), autoscales it, monitors it, and reports the state in `status`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orderpipe.dev",
    version = "v1alpha1",
    kind = "OrderPipeline",
    namespaced,
    status = "OrderPipelineStatus",
    shortname = "op",
    category = "orderpipe",
    derive = "PartialEq",
    doc = "OrderPipeline declares Kafka topics and the order-processing stages that run on them.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every topic and stage is ready"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the pipeline is (not) ready"
    ),
    printcolumn(
        name = "Stages",
        type_ = "string",
        json_path = ".status.stagesReady",
        description = "Ready stages / declared stages"
    ),
    printcolumn(
        name = "Topics",
        type_ = "string",
        json_path = ".status.topicsReady",
        description = "Ready topics / declared topics"
    ),
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        json_path = ".spec.paused",
        priority = 1,
        description = "Consumption stopped by the user"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 52")
        .message("metadata.name must be a DNS-1035 label of at most 52 characters: child objects are named <pipeline>-<stage>")
        .reason(Reason::FieldValueInvalid),
    validation = Rule::new("self.spec.stages.all(s, size(self.metadata.name) + size(s.name) <= 62)")
        .message("spec.stages[].name: the pipeline name, a dash and the stage name must fit in 63 characters (child objects are named <pipeline>-<stage>)")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.stages.all(s, self.topics.exists(t, t.name == s.input))")
        .message("spec.stages[].input must name a topic declared in spec.topics")
        .field_path(".stages")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("self.stages.all(s, self.topics.exists(t, t.name == s.deadLetter))")
        .message("spec.stages[].deadLetter must name a topic declared in spec.topics")
        .field_path(".stages")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("self.stages.all(s, !has(s.outputs) || s.outputs.all(o, self.topics.exists(t, t.name == s.outputs[o])))")
        .message("spec.stages[].outputs must name topics declared in spec.topics")
        .field_path(".stages")
        .reason(Reason::FieldValueInvalid),
)]
pub struct OrderPipelineSpec {
    /// How workers and the operator reach Kafka.
    pub kafka: KafkaSpec,

    /// Kafka topics this pipeline owns. Names are unique (the list is keyed by `name`). Partitions may
    /// only grow. A topic that already exists in Kafka is adopted.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub topics: Vec<TopicSpec>,

    /// Consumer stages. Names are unique (the list is keyed by `name`); each stage reads one declared
    /// topic and writes to declared topics.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<StageSpec>,

    /// Stop consuming without deleting anything: every stage is scaled to zero, committed offsets and
    /// topics are kept, and consumption resumes where it stopped when `paused` is cleared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// Connection to the Kafka cluster. Credentials are only ever referenced from Secrets in the
/// pipeline's namespace, never written inline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Bootstrap brokers as `host:port`.
    #[schemars(length(min = 1, max = 16))]
    pub bootstrap_servers: Vec<BootstrapServer>,

    /// Encrypt connections with TLS. Without it, connections are plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,

    /// Authenticate with SASL (over TLS when `tls` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
}

/// One bootstrap broker address, `host:port`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct BootstrapServer(
    #[schemars(
        length(min = 3, max = 253),
        regex(pattern = r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
    )]
    pub String,
);

/// TLS settings for the Kafka connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// CA certificate (PEM) to verify the brokers, from a Secret key. Unset: the system trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// Client certificate for mutual TLS: a Secret of type kubernetes.io/tls (keys tls.crt, tls.key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_name: Option<SecretName>,
}

/// SASL authentication for the Kafka connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// SASL mechanism.
    pub mechanism: SaslMechanism,
    /// Secret holding the username and password.
    pub credentials_secret_ref: SaslCredentialsRef,
}

/// The SASL mechanisms the worker and operator support.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka and Kafka use for the mechanism.
    pub fn as_kafka_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Where the SASL username and password live.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SaslCredentialsRef {
    /// Name of a Secret in the pipeline's namespace.
    pub name: SecretName,
    /// Key of the username in the Secret.
    #[serde(default = "default_username_key")]
    pub username_key: SecretKey,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    pub password_key: SecretKey,
}

fn default_username_key() -> SecretKey {
    SecretKey("username".into())
}

fn default_password_key() -> SecretKey {
    SecretKey("password".into())
}

/// A key in a Secret of the pipeline's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: SecretName,
    /// Key inside the Secret.
    pub key: SecretKey,
}

/// The name of a Secret (a DNS subdomain).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretName(
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub String,
);

/// A key of a Secret's data.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretKey(
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))] pub String,
);

/// A Kafka topic owned by the pipeline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.name != '.' && self.name != '..'")
        .message("spec.topics[].name must not be '.' or '..' (Kafka forbids them)")
        .field_path(".name")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("self.partitions >= oldSelf.partitions")
        .message(Message::Expression("'spec.topics[' + self.name + '].partitions may only grow (Kafka cannot remove partitions); declare a new topic instead'".into()))
        .field_path(".partitions")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("has(self.replicationFactor) == has(oldSelf.replicationFactor) && (!has(self.replicationFactor) || self.replicationFactor == oldSelf.replicationFactor)")
        .message("spec.topics[].replicationFactor cannot be changed after creation (it needs a partition reassignment)")
        .field_path(".replicationFactor")
        .reason(Reason::FieldValueForbidden),
)]
pub struct TopicSpec {
    /// Kafka topic name: 1-249 characters of [a-zA-Z0-9._-], not "." or "..".
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub name: String,

    /// Number of partitions. May only grow; growing remaps keys to partitions (orders already in
    /// flight keep their old partition, new records of the same key may land elsewhere).
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,

    /// Replicas of each partition. Unset: the broker's `default.replication.factor`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i32>,

    /// Topic configuration (e.g. `retention.ms`, `cleanup.policy`, `min.insync.replicas`). The operator
    /// sets these keys and restores them when changed out of band; keys not listed are left alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub config: BTreeMap<String, TopicConfigValue>,

    /// What happens to the Kafka topic when it leaves the spec or the pipeline is deleted. Topics hold
    /// business records, so the default keeps them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A topic configuration value (Kafka config values are strings).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct TopicConfigValue(#[schemars(length(max = 1024))] pub String);

/// What the operator does with a Kafka topic that is no longer declared.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Keep the topic and its records (default).
    #[default]
    Retain,
    /// Delete the topic and its records.
    Delete,
}

/// The grammar of an image reference (distribution/reference): an optional registry host with an
/// optional port, lower-case path components, an optional tag and an optional digest. Checked at
/// admission so a typo fails the apply, not an image pull minutes later.
const IMAGE_REFERENCE_RULE: &str = concat!(
    "!has(self.image) || self.image.matches('^",
    r"([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?",
    r"[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*",
    r"(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')",
);

/// One consumer stage: reads the input topic, processes each record, writes outputs exactly once.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.processor != 'custom' || has(self.image)")
        .message("spec.stages[].image is required when processor is custom")
        .field_path(".image")
        .reason(Reason::FieldValueRequired),
)]
#[x_kube(
    validation = Rule::new("self.deadLetter != self.input")
        .message("spec.stages[].deadLetter must not be the stage's input topic: the stage would consume its own dead letters again")
        .field_path(".deadLetter")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("!has(self.outputs) || self.outputs.all(o, self.outputs[o] != self.input && self.outputs[o] != self.deadLetter)")
        .message("spec.stages[].outputs must not name the stage's input topic (the stage would consume its own output) or its deadLetter topic")
        .field_path(".outputs")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new(IMAGE_REFERENCE_RULE)
        .message("spec.stages[].image must be an image reference: [registry[:port]/]path[:tag][@sha256:digest], lower-case path, e.g. registry.example.com/shop/worker:1.4.2")
        .field_path(".image")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))")
        .message("spec.stages[]: set either replicas or autoscaling, not both")
        .field_path(".autoscaling")
        .reason(Reason::FieldValueForbidden),
)]
#[x_kube(
    validation = Rule::new("self.processor != 'notify' || has(self.notify)")
        .message("spec.stages[].notify (webhook settings) is required when processor is notify")
        .field_path(".notify")
        .reason(Reason::FieldValueRequired),
)]
#[x_kube(
    validation = Rule::new("!has(self.notify) || self.processor == 'notify'")
        .message("spec.stages[].notify is only allowed when processor is notify")
        .field_path(".notify")
        .reason(Reason::FieldValueForbidden),
)]
#[x_kube(
    validation = Rule::new("self.processor != 'validate' || (has(self.outputs) && 'validated' in self.outputs && 'rejected' in self.outputs)")
        .message("spec.stages[].outputs must name the 'validated' and 'rejected' topics for processor validate")
        .field_path(".outputs")
        .reason(Reason::FieldValueRequired),
)]
#[x_kube(
    validation = Rule::new("self.processor != 'status' || (has(self.outputs) && 'changes' in self.outputs)")
        .message("spec.stages[].outputs must name the 'changes' topic for processor status")
        .field_path(".outputs")
        .reason(Reason::FieldValueRequired),
)]
#[x_kube(
    validation = Rule::new("self.processor != 'notify' || (has(self.outputs) && 'audit' in self.outputs)")
        .message("spec.stages[].outputs must name the 'audit' topic for processor notify")
        .field_path(".outputs")
        .reason(Reason::FieldValueRequired),
)]
pub struct StageSpec {
    /// Stage name, a DNS-1035 label; the workload is named `<pipeline>-<stage>`.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// What the stage does: a built-in processor or a custom image speaking the worker contract.
    pub processor: Processor,

    /// Container image. Required for `custom`; for built-in processors it overrides the operator's
    /// default worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// The declared topic this stage consumes.
    #[schemars(length(min = 1, max = 249))]
    pub input: String,

    /// Named outputs, each a declared topic. Built-in processors need: validate → `validated`,
    /// `rejected`; status → `changes`; notify → `audit`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8))]
    pub outputs: BTreeMap<String, OutputTopic>,

    /// Declared topic for records that cannot be processed (undecodable bytes, illegal transitions,
    /// exhausted retries). Each carries the original bytes and reason headers.
    #[schemars(length(min = 1, max = 249))]
    pub dead_letter: String,

    /// Fixed number of worker replicas (default 1). Mutually exclusive with `autoscaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// Scale the stage with a HorizontalPodAutoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// How new worker versions roll out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,

    /// Compute resources of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Settings of the notify processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifySpec>,
}

/// A declared topic used as a named output.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct OutputTopic(#[schemars(length(min = 1, max = 249))] pub String);

/// The processor a stage runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Processor {
    /// Schema and business validation of placed orders.
    Validate,
    /// The per-order status state machine.
    Status,
    /// Notification dispatch to a webhook.
    Notify,
    /// A user image implementing the worker contract.
    Custom,
}

impl Processor {
    /// The name used in the spec, labels and the worker contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validate => "validate",
            Self::Status => "status",
            Self::Notify => "notify",
            Self::Custom => "custom",
        }
    }
}

/// HorizontalPodAutoscaler settings. `maxReplicas` is capped at the input topic's partition count
/// (a consumer beyond that count has no partition to read); status says when it was capped.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("spec.stages[].autoscaling.minReplicas must not exceed maxReplicas")
        .field_path(".minReplicas")
        .reason(Reason::FieldValueInvalid),
)]
pub struct AutoscalingSpec {
    /// Fewest replicas.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,

    /// Most replicas (capped at the input topic's partitions).
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Target average CPU utilisation in percent of the requested CPU. Unset and no lag target: 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,

    /// Target consumer lag (records) per replica, read through the External metrics API
    /// (metric `orderpipe_consumer_lag`, measured in Kafka and served by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: Option<i64>,
}

fn default_min_replicas() -> i32 {
    1
}

/// Release strategy of a stage's workload.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.canary) || self.strategy == 'Canary'")
        .message("spec.stages[].rollout.canary is only allowed when strategy is Canary")
        .field_path(".canary")
        .reason(Reason::FieldValueForbidden),
)]
pub struct RolloutSpec {
    /// `RollingUpdate` (a Deployment, the default) or `Canary` (an Argo Rollout with analysis).
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// Canary steps and analysis; defaults apply when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
}

/// The workload kind a stage runs as.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RolloutStrategy {
    /// A Deployment with a rolling update.
    #[default]
    RollingUpdate,
    /// An Argo Rollout with canary steps and Prometheus analysis.
    Canary,
}

/// Canary release settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// Steps, in order. Unset: 25% for 1m, 50% for 1m, then full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub steps: Vec<CanaryStep>,

    /// Abort thresholds evaluated against Prometheus while the canary runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,
}

/// One canary step: shift a share of replicas, or wait.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.setWeight) != has(self.pause)")
        .message("spec.stages[].rollout.canary.steps[]: set exactly one of setWeight or pause")
        .reason(Reason::FieldValueInvalid),
)]
pub struct CanaryStep {
    /// Percentage of replicas running the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub set_weight: Option<i32>,

    /// Wait before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<CanaryPause>,
}

/// A pause step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryPause {
    /// How long to wait, e.g. `30s`, `5m`. Unset: until promoted by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

/// Thresholds of the canary analysis (Prometheus queries over the stage's worker metrics).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAnalysis {
    /// Highest tolerated share of records ending in error outcomes, in percent (default 1).
    #[serde(default = "default_max_error_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_error_percent: i32,

    /// Highest tolerated share of records dead-lettered, in percent (default 1).
    #[serde(default = "default_max_error_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_dead_letter_percent: i32,

    /// How often to measure (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,

    /// Failed measurements tolerated before the canary is aborted (default 1).
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub failure_limit: i32,

    /// Prometheus base URL the analysis queries (default: the operator's `--prometheus-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub prometheus_url: Option<String>,
}

fn default_max_error_percent() -> i32 {
    1
}

fn default_failure_limit() -> i32 {
    1
}

/// A duration such as `250ms`, `30s`, `5m`, `1h` or `1m30s`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Duration(
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))] pub String,
);

/// Settings of the notify processor.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotifySpec {
    /// Where notifications are POSTed.
    pub webhook: WebhookSpec,

    /// Channel name, part of the idempotency key `<orderId>:<version>:<channel>` (default `webhook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z0-9-]+$"))]
    pub channel: Option<String>,

    /// Retries of transient failures (timeouts, 5xx, 429) before the record is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// The notification webhook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// URL to POST to (http or https).
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,

    /// Value of the `Authorization` header, read from a Secret key (e.g. `Bearer ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,

    /// Timeout of one delivery attempt (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Capped exponential backoff with jitter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Attempts in total, including the first (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<i32>,

    /// Backoff before the second attempt (default `200ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff: Option<Duration>,

    /// Longest backoff between two attempts (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
}

/// Observed state of an OrderPipeline, written only by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OrderPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `TopicsReady` and `StagesReady`, each with a PascalCase reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Ready topics over declared topics, e.g. `3/5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics_ready: Option<String>,

    /// Ready stages over declared stages, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages_ready: Option<String>,

    /// One entry per declared topic, per operator-managed state topic of a stateful stage, and per
    /// topic still being deleted after it left the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub topics: Vec<TopicStatus>,

    /// One entry per declared stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<StageStatus>,
}

/// Observed state of one topic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Topic name.
    pub name: String,
    /// Whether the topic exists, is managed by this pipeline and has the declared partitions,
    /// replication factor and config.
    pub ready: bool,
    /// Partitions the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// PascalCase reason when not ready (e.g. `Conflict`, `PartitionDecreaseRefused`,
    /// `ReplicationFactorMismatch`, `Deleting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the operator does with this topic once it leaves the spec or the pipeline is deleted.
    /// Set only on topics this pipeline manages (unset on a `Conflict`): it is the operator's memory
    /// of what it manages, so a topic removed from the spec can still be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// Observed state of one stage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// `Deployment` or `Rollout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Whether the workload has all its desired replicas ready.
    pub ready: bool,
    /// Desired replicas of the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready replicas of the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The autoscaler's effective maximum after capping at the input topic's partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
    /// Set when the declared maxReplicas was lowered to the input topic's partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_capped_from: Option<i32>,
    /// PascalCase reason when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
