//! Observed state of an `OrderPipeline`, written only by the operator: conditions, readiness counts
//! and one entry per topic and stage.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DeletionPolicy;

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

    /// Ready replicas over desired replicas, summed over the stages, e.g. `4/6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_ready: Option<String>,

    /// The stages' `lag` summed (records, rounded as each stage's); unset when no stage's lag is
    /// measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_lag: Option<i64>,

    /// One entry per declared topic, per operator-managed state topic of a stateful stage, and per
    /// topic still being deleted after it left the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub topics: Vec<TopicStatus>,

    /// One entry per declared stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<StageStatus>,

    /// The intake gateway, when `spec.intake` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intake: Option<IntakeStatus>,

    /// The id the Kafka cluster's brokers report. Two pipelines share a cluster (and compete for
    /// its topic names) when their ids match, whatever addresses they name the brokers by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_cluster_id: Option<String>,

    /// The latest coordinated partition growth of each stage input that grew (see
    /// `docs/partition-growth.md`): the operator's record of where the growth stands, so a new
    /// leader continues it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["topic"]))]
    pub growth: Vec<GrowthStatus>,
}

/// One coordinated growth of a stage input: its partitions grow to a multiple while every stage
/// reading it holds the new partitions, drains the old ones to a barrier, moves its per-key state
/// to the keys' new partitions, then releases.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GrowthStatus {
    /// The grown topic.
    pub topic: String,
    /// When the growth was announced, in Unix milliseconds (and above every earlier growth's): it
    /// orders control records and re-shard markers, also against those a deleted predecessor of
    /// this pipeline left in the control topic and the consumer groups.
    pub generation: i64,
    /// Partitions before the growth.
    pub from: i32,
    /// Partitions after it (a multiple of `from`).
    pub to: i32,
    pub phase: GrowthPhase,
    /// The stages reading the topic, which hold, drain and re-shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<String>,
    /// When the topic got its new partitions (producers start writing there as their metadata
    /// refreshes; the settle window counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grown_at: Option<Time>,
    /// The old partitions' end offsets once the settle window passed: each stage re-shards an old
    /// partition's state on reaching its barrier offset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub barrier: Vec<i64>,
    /// Old partitions whose re-shard every stage has committed, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resharded: Option<String>,
    /// When the new partitions were released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
    /// How long the new partitions were held, from `grownAt` to `releasedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_seconds: Option<i64>,
    /// One line for `kubectl get -o wide`, e.g. `orders 3->6 Draining 2/3`.
    pub summary: String,
}

/// Where a coordinated growth stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowthPhase {
    /// Recorded, and the stages told to hold the new partitions; the topic is grown next.
    Announced,
    /// Grown; producers switch to the new count as their metadata refreshes, for the topic's
    /// `settleSeconds`.
    Settling,
    /// The barrier is published; the stages re-shard each old partition on reaching it.
    Draining,
    /// Every old partition re-sharded; the new partitions are processed.
    Completed,
}

/// Observed state of the intake gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IntakeStatus {
    /// Whether every desired gateway replica is ready (a replica is ready once it reaches Kafka and
    /// its status view has caught up).
    pub ready: bool,
    /// Where clients in the cluster reach the API, e.g. `http://shop-intake.shop.svc:8080`.
    pub url: String,
    /// Ready replicas over desired replicas, e.g. `2/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_ready: Option<String>,
    /// PascalCase reason when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
    /// Replicas the workload runs now (its `spec.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Replicas the stage should run: the autoscaler's latest recommendation, 0 while parked, or
    /// the fixed count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Ready replicas of the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Set when the declared `replicas` was lowered to the input topic's partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_capped_from: Option<i32>,
    /// The autoscaler's effective maximum after capping at the input topic's partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
    /// Set when the declared maxReplicas was lowered to the input topic's partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_capped_from: Option<i32>,
    /// Records the stage's consumer group is behind on its input, measured in Kafka, for stages
    /// with a lag target. Rounded to two significant digits (1234 reads 1200), so a busy stage's
    /// status changes with its backlog's size, not with every record; 0 is exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Since when the stage is parked (scaled to zero by `minReplicas: 0`, no autoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_since: Option<Time>,
    /// Since when the lag of an active stage with `minReplicas: 0` reads 0: it is parked once this
    /// is `parkAfterIdleSeconds` old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Time>,
    /// While a canary release runs (a Rollout between its stable and its new version): how much
    /// of the stage the new version has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// PascalCase reason when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A running canary, in whole consumers: without a traffic router Argo Rollouts realises a step's
/// weight as a share of the stage's pods (the closest whole count, at least one of each version
/// when there are two or more pods, never more pods than the stage's replicas, which are capped at
/// the input's partitions), and each pod is one member of the stage's consumer group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The weight of the current step, in percent (the last `setWeight` reached; 0 before it).
    pub weight: i32,
    /// Pods of the new version.
    pub replicas: i32,
    /// Pods of the stable version.
    pub stable_replicas: i32,
    /// Input partitions the new version's pods hold when the group is balanced: each member gets
    /// an equal share (partitions / members, rounded either way), so this is the canary's share of
    /// the partitions, rounded. Derived from the counts, not read from the group's assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Partitions of the stage's input topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_partitions: Option<i32>,
}
