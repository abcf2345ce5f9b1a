//! How a stage's workload scales (a HorizontalPodAutoscaler) and releases new versions (a
//! Deployment's rolling update, or an Argo Rollout canary with Prometheus analysis).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

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
