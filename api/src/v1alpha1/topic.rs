//! A Kafka topic as declared in `spec.topics`: name, partitions, replication, config and what
//! happens to it when it leaves the spec, with the rules that keep updates Kafka can apply.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    validation = Rule::new("!self.name.startsWith('__')")
        .message("spec.topics[].name must not start with '__': Kafka reserves such names for its internal topics (__consumer_offsets, __transaction_state)")
        .field_path(".name")
        .reason(Reason::FieldValueForbidden),
)]
#[x_kube(
    validation = Rule::new("!self.name.startsWith('orderpipe.')")
        .message("spec.topics[].name must not start with 'orderpipe.': the operator names its own topics so (stage state, pipeline control), and a pipeline must not reach another's")
        .field_path(".name")
        .reason(Reason::FieldValueForbidden),
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
    /// Kafka topic name: 1-249 characters of [a-zA-Z0-9._-], not "." or "..", not starting with `__`
    /// (Kafka's internal topics).
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

    /// Take this topic over when it already exists in Kafka and no pipeline manages it (created
    /// by hand, by another tool, or kept by a deleted pipeline's `Retain`). Without it such a
    /// topic is left untouched and reported `AdoptionRequired`: its config is not set, it is not
    /// grown, and it is never deleted on this pipeline's behalf. A topic this pipeline created is
    /// managed without it. Applies to the stage state topics that follow this topic too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,

    /// When this topic is a stage's input and grows: the longest time, in seconds, any producer
    /// may go on writing with the old partition count (its metadata refresh interval plus a
    /// margin). The stages hold the keys that move until then; a shorter window holds less, a
    /// window shorter than a producer's refresh breaks that producer's per-key order. Default
    /// 330: Java clients' and librdkafka's 300 s default refresh plus margin. Growth keeps each
    /// key's order and state only for producers that place keys with murmur2 (Java's default;
    /// librdkafka's `partitioner=murmur2_random`), and only to a multiple of the current count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub settle_seconds: Option<i32>,
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
