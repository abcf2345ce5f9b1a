//! The stage's HorizontalPodAutoscaler (autoscaling/v2), for stages with `Scaling::Auto` that are
//! not parked; and the intake gateway's, on CPU.
//!
//! Pure. Owns the HorizontalPodAutoscaler kind and the defaults of its `behavior`. The bounds come
//! from the model, where the maximum is already capped at the input topic's partitions (canary
//! pods counted); this module must not recompute them.
//!
//! Metrics: lag when a lag target is set, CPU when a CPU target is (the model sets 80 % when
//! neither is). An HPA that cannot read one of its metrics never scales down, so a stage with a
//! lag target and no CPU target scales on lag alone.
//!
//! Consumer lag is an External metric, [`metrics::CONSUMER_LAG`], selected by the `pipeline` and
//! `stage` labels. Not by consumer group: a group name (`orderpipe.<ns>.<pipeline>.<stage>`) can
//! exceed the 63 characters of a label value, which the apiserver enforces on the HPA's selector.
//! The operator itself serves it (`external_metrics`, measured in Kafka by `lag`); the request's
//! namespace and these two labels name the stage.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HPAScalingPolicy, HPAScalingRules,
    HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use orderpipe_api::contract::metrics::{self, labels};
use orderpipe_api::v1alpha1::{IntakeSpec, ScalingBehavior, ScalingRules};

use super::{ComponentMeta, StageContext};
use crate::children::ChildKind;
use crate::model::Scaling;

/// The autoscaler of an autoscaled stage; `None` for a fixed replica count (paused included) and
/// for a parked stage (the operator holds it at 0; an HPA would take it back to its minimum).
pub(super) fn desired_hpa(ctx: &StageContext<'_>) -> Option<HorizontalPodAutoscaler> {
    let Scaling::Auto {
        max,
        target_cpu_utilization,
        target_lag_per_replica,
        ref behavior,
        parked: false,
        ..
    } = ctx.stage.scaling
    else {
        return None;
    };
    let min = ctx.stage.scaling.autoscaler_min()?;
    let target = ChildKind::from(ctx.stage.workload).api_resource();
    let cpu = target_cpu_utilization.map(cpu_metric);
    let lag = target_lag_per_replica.map(|records| MetricSpec {
        type_: "External".into(),
        external: Some(ExternalMetricSource {
            metric: MetricIdentifier {
                name: metrics::CONSUMER_LAG.into(),
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        (labels::PIPELINE.into(), ctx.pipeline.name.clone()),
                        (labels::STAGE.into(), ctx.stage.spec.name.clone()),
                    ])),
                    match_expressions: None,
                }),
            },
            // Total lag divided by the current replicas: the HPA sizes the stage so each consumer
            // is at most this many records behind.
            target: MetricTarget {
                type_: "AverageValue".into(),
                average_value: Some(Quantity(records.to_string())),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    });
    Some(HorizontalPodAutoscaler {
        metadata: ctx.meta.metadata(),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(target.api_version),
                kind: target.kind,
                name: ctx.meta.name().to_owned(),
            },
            min_replicas: Some(min),
            max_replicas: max,
            metrics: Some(cpu.into_iter().chain(lag).collect()),
            behavior: Some(hpa_behavior(behavior)),
        }),
        status: None,
    })
}

/// The intake gateway's autoscaler: CPU only, Kubernetes' default behaviour (no consumer group
/// to rebalance, so nothing argues for slower steps).
pub(super) fn desired_intake_hpa(
    meta: &ComponentMeta<'_>,
    intake: &IntakeSpec,
) -> HorizontalPodAutoscaler {
    let target = ChildKind::Deployment.api_resource();
    HorizontalPodAutoscaler {
        metadata: meta.metadata(),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(target.api_version),
                kind: target.kind,
                name: meta.name().to_owned(),
            },
            min_replicas: Some(intake.min_replicas),
            max_replicas: intake.max_replicas,
            metrics: Some(vec![cpu_metric(intake.target_cpu_utilization)]),
            behavior: None,
        }),
        status: None,
    }
}

fn cpu_metric(percent: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

/// What a direction does when the spec leaves it unset.
struct Defaults {
    stabilization_window_seconds: i32,
    max_pods_per_period: Option<i32>,
    max_percent_per_period: Option<i32>,
}

/// Scale-up reacts at once, because a growing lag is orders waiting: double, or add four pods,
/// per minute, whichever is more.
const SCALE_UP: Defaults = Defaults {
    stabilization_window_seconds: 0,
    max_pods_per_period: Some(4),
    max_percent_per_period: Some(100),
};

/// Every scale event rebalances the consumer group (all partitions pause while they move), so
/// scale-down waits for five minutes of lower load and sheds at most half the pods per minute.
const SCALE_DOWN: Defaults = Defaults {
    stabilization_window_seconds: 300,
    max_pods_per_period: None,
    max_percent_per_period: Some(50),
};

/// The period the limits apply to unless declared.
const DEFAULT_PERIOD_SECONDS: i32 = 60;

/// The HPA's `behavior`: the declared rules, each unset field with its direction's default.
pub(super) fn hpa_behavior(declared: &ScalingBehavior) -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_down: Some(rules(declared.scale_down.as_ref(), &SCALE_DOWN)),
        scale_up: Some(rules(declared.scale_up.as_ref(), &SCALE_UP)),
    }
}

/// One direction. Declared limits replace both default limits: a user who sets "at most 2 pods
/// per period" means that, not "2 pods or the default 100 %, whichever is more".
fn rules(declared: Option<&ScalingRules>, defaults: &Defaults) -> HPAScalingRules {
    let declared = declared.cloned().unwrap_or_default();
    let (pods, percent) = match (
        declared.max_pods_per_period,
        declared.max_percent_per_period,
    ) {
        (None, None) => (
            defaults.max_pods_per_period,
            defaults.max_percent_per_period,
        ),
        limits => limits,
    };
    let period_seconds = declared.period_seconds.unwrap_or(DEFAULT_PERIOD_SECONDS);
    let policy = |type_: &str, value: i32| HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds,
    };
    let policies = percent
        .map(|value| policy("Percent", value))
        .into_iter()
        .chain(pods.map(|value| policy("Pods", value)))
        .collect();
    HPAScalingRules {
        stabilization_window_seconds: Some(
            declared
                .stabilization_window_seconds
                .unwrap_or(defaults.stabilization_window_seconds),
        ),
        policies: Some(policies),
        // With two limits, the one that allows the larger change applies.
        select_policy: Some("Max".into()),
        ..HPAScalingRules::default()
    }
}
