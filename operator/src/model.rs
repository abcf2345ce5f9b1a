//! The validated model every pure builder works from: a pipeline checked against what admission
//! cannot see (the cluster's capabilities, the observed partition counts) with the operator's
//! decisions made explicit (workload kind, effective replica bounds, image).
//!
//! Pure: no client, no async. `validate` turns an `OrderPipeline` plus observations into a
//! `ValidatedPipeline` and a list of `StageIssue`s that become conditions; it never fails on a spec
//! the CRD admitted, because an operator that errors on input it accepted leaves users stuck.

use std::collections::BTreeMap;
use std::time::Duration;

use orderpipe_api::v1alpha1::{
    AutoscalingSpec, IntakeSpec, OrderPipeline, RolloutStrategy, ScalingBehavior, StageSpec,
};

use crate::capabilities::Capabilities;
use crate::egress::Dialer;
use crate::settings::OperatorSettings;

/// The workload kind a stage runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    Rollout,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::Rollout => "Rollout",
        }
    }
}

/// How many replicas a stage runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scaling {
    /// A fixed count, applied as `spec.replicas` (0 while paused).
    Fixed {
        /// The declared count capped at the input topic's partitions.
        replicas: i32,
        /// The declared count when it was capped.
        capped_from: Option<i32>,
    },
    /// An HPA owns the replica count: the workload must not carry `spec.replicas`; unless the
    /// stage is parked, when the operator holds it at 0 and there is no HPA.
    Auto {
        /// As declared: 0 for a stage that may be parked (see [`Scaling::autoscaler_min`]).
        min: i32,
        /// The declared maximum capped at the input topic's partitions.
        max: i32,
        /// The declared maximum when it was capped.
        capped_from: Option<i32>,
        target_cpu_utilization: Option<i32>,
        target_lag_per_replica: Option<i64>,
        /// As declared; the HPA builder fills in the defaults.
        behavior: ScalingBehavior,
        /// With `minReplicas: 0`: how long the lag must read 0 before the stage is parked.
        park_after: Option<Duration>,
        /// Parked by the operator (decided by `scale_to_zero` each reconcile, never by `validate`).
        parked: bool,
    },
}

/// How long an idle stage with `minReplicas: 0` waits before it is parked, unless declared.
pub const DEFAULT_PARK_AFTER: Duration = Duration::from_secs(300);

impl Scaling {
    /// The HPA's `minReplicas`: the declared minimum, but at least 1. An HPA at 0 replicas stops
    /// scaling (without the alpha `HPAScaleToZero` gate it cannot even be told to go there), so
    /// the operator itself moves a stage between 0 and 1 (see `scale_to_zero`).
    pub fn autoscaler_min(&self) -> Option<i32> {
        match self {
            Self::Auto { min, .. } => Some((*min).max(1)),
            Self::Fixed { .. } => None,
        }
    }
}

/// One stage, ready for the builders.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedStage {
    pub spec: StageSpec,
    /// `<pipeline>-<stage>`: the name of every child object of the stage.
    pub workload_name: String,
    pub workload: WorkloadKind,
    pub image: String,
    pub scaling: Scaling,
}

/// The intake gateway, ready for the builders.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedIntake {
    pub spec: IntakeSpec,
    /// `<pipeline>-intake`: the name of every child object of the gateway.
    pub workload_name: String,
    pub image: String,
}

/// The name the gateway takes where a stage's name goes: in child names and in the `stage` label.
/// Admission refuses a stage of that name while `spec.intake` is set.
pub const INTAKE: &str = "intake";

/// A pipeline ready for the builders.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedPipeline {
    pub name: String,
    pub namespace: String,
    pub paused: bool,
    pub stages: Vec<ValidatedStage>,
    pub intake: Option<ValidatedIntake>,
}

impl ValidatedPipeline {
    /// Holds at zero replicas every stage that would dial a refused host: all of them when the
    /// bootstrap servers are refused, a notify stage when its webhook is. Returns why, per stage.
    pub fn hold_refused_hosts(&mut self, refused: &BTreeMap<Dialer, String>) -> Vec<StageIssue> {
        let mut issues = Vec::new();
        for stage in &mut self.stages {
            let webhook = Dialer::Webhook {
                stage: stage.spec.name.clone(),
            };
            let reason = refused
                .get(&Dialer::Kafka)
                .or_else(|| refused.get(&webhook));
            if let Some(reason) = reason {
                stage.scaling = Scaling::stopped();
                issues.push(StageIssue::HostNotAllowed {
                    stage: stage.spec.name.clone(),
                    reason: reason.clone(),
                });
            }
        }
        issues
    }

    /// Marks the stages `scale_to_zero` decided to hold at zero as parked.
    pub fn park(&mut self, is_parked: impl Fn(&str) -> bool) {
        for stage in &mut self.stages {
            if let Scaling::Auto { parked, .. } = &mut stage.scaling {
                *parked = is_parked(&stage.spec.name);
            }
        }
    }
}

/// Something the spec asks for that the operator cannot (fully) provide; surfaced as a condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageIssue {
    /// A Canary rollout was requested but Argo Rollouts is not installed; the stage runs as a
    /// Deployment so orders keep flowing.
    RolloutsNotInstalled { stage: String },
    /// The input topic's partition count is unknown (topic not created yet); autoscaling bounds wait.
    InputPartitionsUnknown { stage: String, topic: String },
    /// A notify stage would send its webhook auth Secret over plain http and the operator does not
    /// allow it; the stage is held at zero replicas so no pod carries the Secret anywhere.
    InsecureWebhook { stage: String },
    /// The stage would dial a host the operator refuses (`egress`): a link-local or metadata
    /// address, or one outside `--allowed-hosts`. Held at zero replicas.
    HostNotAllowed { stage: String, reason: String },
}

impl StageIssue {
    /// PascalCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RolloutsNotInstalled { .. } => "RolloutsNotInstalled",
            Self::InputPartitionsUnknown { .. } => "InputTopicPending",
            Self::InsecureWebhook { .. } => "InsecureWebhook",
            Self::HostNotAllowed { .. } => "HostNotAllowed",
        }
    }

    /// The stage the issue is about.
    pub fn stage(&self) -> &str {
        match self {
            Self::RolloutsNotInstalled { stage }
            | Self::InputPartitionsUnknown { stage, .. }
            | Self::InsecureWebhook { stage }
            | Self::HostNotAllowed { stage, .. } => stage,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::RolloutsNotInstalled { stage } => format!(
                "stage {stage} asks for a Canary rollout but argoproj.io Rollouts are not installed; \
                 running it as a Deployment"
            ),
            Self::InputPartitionsUnknown { stage, topic } => format!(
                "stage {stage} waits for its input topic {topic} before its autoscaler is sized"
            ),
            Self::InsecureWebhook { stage } => format!(
                "stage {stage}: spec.stages[].notify.webhook.url must use https:// when authSecretRef \
                 is set (the Secret is sent as the Authorization header); the stage is held at 0 \
                 replicas until it does, or until the operator runs with --allow-insecure-webhooks"
            ),
            Self::HostNotAllowed { stage, reason } => {
                format!("stage {stage} is held at 0 replicas: {reason}")
            }
        }
    }
}

/// Validates a pipeline against the cluster's capabilities and the observed partition counts
/// (`partitions` maps topic name to its partition count in Kafka).
pub fn validate(
    pipeline: &OrderPipeline,
    partitions: &BTreeMap<String, i32>,
    capabilities: Capabilities,
    settings: &OperatorSettings,
) -> (ValidatedPipeline, Vec<StageIssue>) {
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let namespace = pipeline.metadata.namespace.clone().unwrap_or_default();
    let paused = pipeline.spec.paused;
    let mut issues = Vec::new();
    let stages = pipeline
        .spec
        .stages
        .iter()
        .map(|stage| {
            let wants_canary = stage
                .rollout
                .as_ref()
                .is_some_and(|r| r.strategy == RolloutStrategy::Canary);
            let workload = match (wants_canary, capabilities.rollouts) {
                (false, _) => WorkloadKind::Deployment,
                (true, true) => WorkloadKind::Rollout,
                (true, false) => {
                    issues.push(StageIssue::RolloutsNotInstalled {
                        stage: stage.name.clone(),
                    });
                    WorkloadKind::Deployment
                }
            };
            let insecure = sends_secret_in_cleartext(stage, settings);
            if insecure {
                issues.push(StageIssue::InsecureWebhook {
                    stage: stage.name.clone(),
                });
            }
            let input_partitions = partitions.get(&stage.input).copied();
            let scaling = match (&stage.autoscaling, paused || insecure) {
                (_, true) => Scaling::stopped(),
                (None, false) => fixed_scaling(stage.replicas.unwrap_or(1), input_partitions),
                (Some(auto), false) => {
                    if input_partitions.is_none() {
                        issues.push(StageIssue::InputPartitionsUnknown {
                            stage: stage.name.clone(),
                            topic: stage.input.clone(),
                        });
                    }
                    auto_scaling(auto, input_partitions)
                }
            };
            // CEL guarantees custom stages carry an image; built-ins default to the operator's.
            let image = stage
                .image
                .clone()
                .unwrap_or_else(|| settings.worker_image.clone());
            ValidatedStage {
                spec: stage.clone(),
                workload_name: orderpipe_api::contract::naming::workload(&name, &stage.name),
                workload,
                image,
                scaling,
            }
        })
        .collect();
    // The gateway keeps serving while the pipeline is paused: orders wait in Kafka.
    let intake = pipeline.spec.intake.as_ref().map(|spec| ValidatedIntake {
        spec: spec.clone(),
        workload_name: orderpipe_api::contract::naming::workload(&name, INTAKE),
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| settings.worker_image.clone()),
    });
    (
        ValidatedPipeline {
            name,
            namespace,
            paused,
            stages,
            intake,
        },
        issues,
    )
}

/// Whether the stage would POST its webhook auth Secret over anything but https while the operator
/// does not allow it. Checked here, not at admission: the operator-wide switch is invisible to CEL.
fn sends_secret_in_cleartext(stage: &StageSpec, settings: &OperatorSettings) -> bool {
    stage.notify.as_ref().is_some_and(|notify| {
        notify.webhook.auth_secret_ref.is_some()
            && !notify.webhook.url.starts_with("https://")
            && !settings.allow_insecure_webhooks
    })
}

impl Scaling {
    /// No replicas and no autoscaler: paused, or held because of an issue.
    pub fn stopped() -> Self {
        Self::Fixed {
            replicas: 0,
            capped_from: None,
        }
    }
}

/// The fixed count, capped like an autoscaler's maximum (see `auto_scaling`): a consumer beyond the
/// input's partitions would sit idle. Unknown partitions (topic not created yet) keep the declared
/// count until the topic exists.
fn fixed_scaling(declared: i32, input_partitions: Option<i32>) -> Scaling {
    match input_partitions {
        Some(p) if p.max(1) < declared => Scaling::Fixed {
            replicas: p.max(1),
            capped_from: Some(declared),
        },
        _ => Scaling::Fixed {
            replicas: declared,
            capped_from: None,
        },
    }
}

/// Effective autoscaling bounds: a consumer beyond the input's partition count would sit idle, so
/// the maximum is capped there. Workloads roll out with `maxSurge: 0` (Deployment and canary alike),
/// so canary pods are part of this count, never on top of it.
fn auto_scaling(auto: &AutoscalingSpec, input_partitions: Option<i32>) -> Scaling {
    let (max, capped_from) = match input_partitions {
        Some(p) if p < auto.max_replicas => (p.max(1), Some(auto.max_replicas)),
        _ => (auto.max_replicas, None),
    };
    Scaling::Auto {
        min: auto.min_replicas.min(max),
        max,
        capped_from,
        target_cpu_utilization: match (auto.target_cpu_utilization, auto.target_lag_per_replica) {
            (None, None) => Some(80),
            (cpu, _) => cpu,
        },
        target_lag_per_replica: auto.target_lag_per_replica,
        behavior: auto.behavior.clone().unwrap_or_default(),
        park_after: (auto.min_replicas == 0).then(|| {
            auto.park_after_idle_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(DEFAULT_PARK_AFTER, Duration::from_secs)
        }),
        parked: false,
    }
}

/// Validated pipelines the pure modules' tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use orderpipe_api::OrderPipeline;
    use orderpipe_api::v1alpha1::AutoscalingSpec;

    use super::*;

    /// `OrderPipeline::test` with its validate stage autoscaled on a lag of 100 records per
    /// replica, between `min_replicas` and 3 (idle 60 s before parking when `min_replicas` is 0).
    pub fn lag_autoscaled(min_replicas: i32, paused: bool) -> ValidatedPipeline {
        let mut pipeline = OrderPipeline::test("shop")
            .in_namespace("default")
            .autoscaling(
                "validate",
                AutoscalingSpec {
                    min_replicas,
                    target_lag_per_replica: Some(100),
                    park_after_idle_seconds: (min_replicas == 0).then_some(60),
                    ..AutoscalingSpec::test(3)
                },
            );
        pipeline.spec.paused = paused;
        let settings = OperatorSettings::default();
        validate(
            &pipeline,
            &BTreeMap::new(),
            Capabilities::default(),
            &settings,
        )
        .0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout() -> OrderPipeline {
        let text = include_str!("../../config/samples/orderpipe_v1alpha1_checkout.yaml");
        let mut p: OrderPipeline = serde_norway::from_str(text).expect("sample parses");
        p.metadata.namespace = Some("shop".into());
        p
    }

    fn settings() -> OperatorSettings {
        OperatorSettings {
            worker_image: "orderpipe/orderpipe-worker:test".into(),
            prometheus_url: "http://prometheus:9090".into(),
            ..OperatorSettings::default()
        }
    }

    fn partitions(n: i32) -> BTreeMap<String, i32> {
        ["orders", "order-events", "order-status"]
            .iter()
            .map(|t| (t.to_string(), n))
            .collect()
    }

    #[test]
    fn max_replicas_is_capped_at_the_input_partitions_and_the_cap_is_reported() {
        let (v, issues) = validate(
            &checkout(),
            &partitions(4),
            Capabilities::default(),
            &settings(),
        );
        assert!(issues.is_empty(), "{issues:?}");
        let validate_stage = &v.stages[0];
        assert_eq!(
            validate_stage.scaling,
            Scaling::Auto {
                min: 1,
                max: 4,
                capped_from: Some(6),
                target_cpu_utilization: Some(70),
                target_lag_per_replica: Some(1000),
                behavior: ScalingBehavior::default(),
                park_after: None,
                parked: false,
            }
        );
    }

    #[test]
    fn max_replicas_within_partitions_is_kept() {
        let (v, _) = validate(
            &checkout(),
            &partitions(12),
            Capabilities::default(),
            &settings(),
        );
        assert!(matches!(
            v.stages[0].scaling,
            Scaling::Auto {
                max: 6,
                capped_from: None,
                ..
            }
        ));
    }

    #[test]
    fn fixed_replicas_are_capped_at_the_input_partitions_and_the_cap_is_reported() {
        let mut p = checkout();
        p.spec.stages[2].replicas = Some(5);
        let scaling = |partitions: &BTreeMap<String, i32>| {
            let (v, issues) = validate(&p, partitions, Capabilities::default(), &settings());
            assert!(issues.iter().all(|i| i.stage() != "notify"), "{issues:?}");
            v.stages[2].scaling.clone()
        };
        assert_eq!(scaling(&partitions(2)), fixed(2, Some(5)));
        assert_eq!(scaling(&partitions(5)), fixed(5, None));
        assert_eq!(
            scaling(&BTreeMap::new()),
            fixed(5, None),
            "unknown partitions keep the declared count"
        );
    }

    #[test]
    fn paused_pipeline_scales_every_stage_to_zero_without_an_autoscaler() {
        let mut p = checkout();
        p.spec.paused = true;
        let (v, _) = validate(&p, &partitions(6), Capabilities::default(), &settings());
        assert!(v.stages.iter().all(|s| s.scaling == Scaling::stopped()));
    }

    #[test]
    fn canary_without_argo_rollouts_runs_as_a_deployment_and_says_so() {
        let text = include_str!("../../config/samples/orderpipe_v1alpha1_canary.yaml");
        let p: OrderPipeline = serde_norway::from_str(text).expect("sample parses");
        let (v, issues) = validate(&p, &BTreeMap::new(), Capabilities::default(), &settings());
        assert_eq!(v.stages[0].workload, WorkloadKind::Deployment);
        assert_eq!(issues[0].reason(), "RolloutsNotInstalled");

        let caps = Capabilities {
            rollouts: true,
            service_monitors: false,
        };
        let (v, _) = validate(&p, &BTreeMap::new(), caps, &settings());
        assert_eq!(v.stages[0].workload, WorkloadKind::Rollout);
    }

    #[test]
    fn unknown_input_partitions_keep_the_declared_maximum_and_raise_an_issue() {
        let (v, issues) = validate(
            &checkout(),
            &BTreeMap::new(),
            Capabilities::default(),
            &settings(),
        );
        assert!(matches!(v.stages[0].scaling, Scaling::Auto { max: 6, .. }));
        assert_eq!(issues[0].reason(), "InputTopicPending");
    }

    /// The checkout sample's notify stage (the last one) with its webhook at `url`.
    fn checkout_notifying_to(url: &str) -> OrderPipeline {
        let mut p = checkout();
        let notify = p.spec.stages[2].notify.as_mut().expect("notify stage");
        notify.webhook.url = url.into();
        p
    }

    #[test]
    fn a_webhook_secret_over_http_holds_the_stage_at_zero_and_says_why() {
        let p = checkout_notifying_to("http://notifications.shop.svc/order-updates");
        let (v, issues) = validate(&p, &partitions(6), Capabilities::default(), &settings());
        assert_eq!(v.stages[2].scaling, Scaling::stopped());
        assert_eq!(
            issues,
            [StageIssue::InsecureWebhook {
                stage: "notify".into()
            }]
        );
        assert!(issues[0].message().contains("--allow-insecure-webhooks"));
        assert!(
            v.stages[..2]
                .iter()
                .all(|s| s.scaling != Scaling::stopped())
        );
    }

    #[test]
    fn a_refused_webhook_holds_its_stage_and_refused_brokers_hold_every_stage() {
        let p = checkout_notifying_to("https://hooks.example.com/order-updates");
        let (mut v, _) = validate(&p, &partitions(6), Capabilities::default(), &settings());
        let webhook = Dialer::Webhook {
            stage: "notify".into(),
        };
        let refused = BTreeMap::from([(webhook, "hooks.example.com is not allowed".to_owned())]);
        let issues = v.hold_refused_hosts(&refused);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].reason(), "HostNotAllowed");
        assert!(
            issues[0]
                .message()
                .contains("hooks.example.com is not allowed")
        );
        assert_eq!(v.stages[2].scaling, Scaling::stopped());
        assert!(
            v.stages[..2]
                .iter()
                .all(|s| s.scaling != Scaling::stopped())
        );

        let refused = BTreeMap::from([(Dialer::Kafka, "169.254.169.254".to_owned())]);
        let issues = v.hold_refused_hosts(&refused);
        assert_eq!(issues.len(), 3);
        assert!(v.stages.iter().all(|s| s.scaling == Scaling::stopped()));
    }

    fn fixed(replicas: i32, capped_from: Option<i32>) -> Scaling {
        Scaling::Fixed {
            replicas,
            capped_from,
        }
    }

    #[track_caller]
    fn assert_notify_stage_runs(p: &OrderPipeline, settings: &OperatorSettings) {
        let (v, issues) = validate(p, &partitions(6), Capabilities::default(), settings);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(v.stages[2].scaling, fixed(1, None));
    }

    #[test]
    fn a_webhook_secret_may_go_over_https_or_over_http_when_the_operator_allows_it() {
        let https = checkout_notifying_to("https://notifications.shop.svc/order-updates");
        assert_notify_stage_runs(&https, &settings());
        let http = checkout_notifying_to("http://notifications.shop.svc/order-updates");
        let allowed = OperatorSettings {
            allow_insecure_webhooks: true,
            ..settings()
        };
        assert_notify_stage_runs(&http, &allowed);
    }

    #[test]
    fn a_webhook_without_a_secret_may_use_http() {
        let mut p = checkout_notifying_to("http://notifications.shop.svc/order-updates");
        if let Some(notify) = p.spec.stages[2].notify.as_mut() {
            notify.webhook.auth_secret_ref = None;
        }
        assert_notify_stage_runs(&p, &settings());
    }

    #[test]
    fn built_in_stages_use_the_operator_image_unless_overridden() {
        let (v, _) = validate(
            &checkout(),
            &partitions(6),
            Capabilities::default(),
            &settings(),
        );
        assert!(
            v.stages
                .iter()
                .all(|s| s.image == "orderpipe/orderpipe-worker:test")
        );
        assert_eq!(v.stages[1].workload_name, "checkout-status");
    }
}
