//! The stage's HorizontalPodAutoscaler (autoscaling/v2), for stages with `Scaling::Auto` only.
//!
//! Pure. Owns the HorizontalPodAutoscaler kind. The bounds come from the model, where the maximum
//! is already capped at the input topic's partitions; this module must not recompute them.
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

use super::StageContext;
use crate::children::ChildKind;
use crate::model::Scaling;

/// The autoscaler of an autoscaled stage; `None` for a fixed replica count (paused included).
pub(super) fn desired_hpa(ctx: &StageContext<'_>) -> Option<HorizontalPodAutoscaler> {
    let Scaling::Auto {
        min,
        max,
        target_cpu_utilization,
        target_lag_per_replica,
        ..
    } = ctx.stage.scaling
    else {
        return None;
    };
    let target = ChildKind::from(ctx.stage.workload).api_resource();
    let cpu = target_cpu_utilization.map(|percent| MetricSpec {
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
    });
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
        metadata: ctx.metadata(),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(target.api_version),
                kind: target.kind,
                name: ctx.name().to_owned(),
            },
            min_replicas: Some(min),
            max_replicas: max,
            metrics: Some(cpu.into_iter().chain(lag).collect()),
            behavior: Some(behavior()),
        }),
        status: None,
    })
}

/// Every scale event rebalances the consumer group (all partitions pause while they move), so
/// scale-down waits for five minutes of lower load and sheds at most half the pods per minute;
/// scale-up reacts at once, because a growing lag is orders waiting.
fn behavior() -> HorizontalPodAutoscalerBehavior {
    let policy = |type_: &str, value: i32| HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds: 60,
    };
    HorizontalPodAutoscalerBehavior {
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(300),
            policies: Some(vec![policy("Percent", 50)]),
            select_policy: Some("Max".into()),
            ..HPAScalingRules::default()
        }),
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(0),
            // Double, or add four pods, per minute: whichever is more.
            policies: Some(vec![policy("Percent", 100), policy("Pods", 4)]),
            select_policy: Some("Max".into()),
            ..HPAScalingRules::default()
        }),
    }
}
