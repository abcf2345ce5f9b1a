//! How a stage's workload scales (a HorizontalPodAutoscaler) and releases new versions (a
//! Deployment's rolling update, or an Argo Rollout canary with Prometheus analysis).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

/// HorizontalPodAutoscaler settings. `maxReplicas` is capped at the input topic's partition count
/// (a consumer beyond that count has no partition to read); status says when it was capped.
///
/// With `minReplicas: 0` the operator parks an idle stage (scales it to zero, removes its
/// autoscaler) once its lag has read 0 for `parkAfterIdleSeconds`, and activates it (one replica,
/// the autoscaler back) as soon as its lag in Kafka is above 0.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("spec.stages[].autoscaling.minReplicas must not exceed maxReplicas")
        .field_path(".minReplicas")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("self.minReplicas > 0 || has(self.targetLagPerReplica)")
        .message("spec.stages[].autoscaling.minReplicas may be 0 only with targetLagPerReplica: a parked stage has no pods, and only its lag in Kafka can wake it")
        .field_path(".minReplicas")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("!has(self.parkAfterIdleSeconds) || self.minReplicas == 0")
        .message("spec.stages[].autoscaling.parkAfterIdleSeconds is only allowed with minReplicas 0")
        .field_path(".parkAfterIdleSeconds")
        .reason(Reason::FieldValueForbidden),
)]
pub struct AutoscalingSpec {
    /// Fewest replicas. 0 parks the stage while it is idle (needs `targetLagPerReplica`).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,

    /// Most replicas (capped at the input topic's partitions).
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Target average CPU utilisation in percent of the requested CPU. Unset and no lag target: 80.
    /// Unset with a lag target: lag is the only metric (an HPA that cannot read a metric never
    /// scales down, and CPU is unreadable where no resource metrics are served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,

    /// Target consumer lag (records) per replica, read through the External metrics API
    /// (metric `orderpipe_consumer_lag`, measured in Kafka and served by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: Option<i64>,

    /// How fast the stage grows and shrinks. Unset fields keep the defaults: fast up (no
    /// stabilisation; double or add 4 pods per minute, whichever is more), slow down (5 minutes of
    /// stabilisation; at most half the pods per minute). Every scale event rebalances the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<ScalingBehavior>,

    /// With `minReplicas: 0`: seconds the stage's lag must read 0 before it is parked (default
    /// 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub park_after_idle_seconds: Option<i32>,
}

fn default_min_replicas() -> i32 {
    1
}

/// Scaling behaviour of a stage's autoscaler, per direction.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// Adding replicas. Defaults: window 0, `maxPercentPerPeriod` 100, `maxPodsPerPeriod` 4,
    /// `periodSeconds` 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,

    /// Removing replicas. Defaults: window 300, `maxPercentPerPeriod` 50, `periodSeconds` 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

/// How far one direction may move per period, rendered into the HPA's `behavior`. When either
/// limit is set, only the limits set apply (the larger of the two wins); when neither is, the
/// direction's defaults do.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Seconds of past recommendations considered before acting: scale-up takes the lowest of
    /// them, scale-down the highest, so a short spike or dip does not move the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,

    /// At most this many pods added or removed per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_pods_per_period: Option<i32>,

    /// At most this percentage of the current pods added or removed per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_percent_per_period: Option<i32>,

    /// Length of the period the limits apply to (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: Option<i32>,
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

/// Thresholds of the canary analysis (Prometheus queries over the stage's worker metrics): each
/// compares the canary pods' share of the records they consumed with the stable pods' share.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAnalysis {
    /// How many percentage points the canary's share of records ending in error outcomes (`error`,
    /// `dead_lettered`) may exceed the stable pods' (default 1).
    #[serde(default = "default_max_error_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_error_percent: i32,

    /// How many percentage points the canary's share of dead-lettered records may exceed the
    /// stable pods' (default 1).
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
