//! The stage's workload: a Deployment, or an Argo Rollout with canary steps; and the intake
//! gateway's Deployment.
//!
//! Pure. Owns the Deployment and Rollout kinds. A Rollout's spec is a Deployment's spec with a
//! different `strategy` (Argo designed it that way), so both are built from one [`workload_spec`]
//! and differ only in the strategy: the pod template, selector and replica rule cannot drift apart.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orderpipe_api::contract;
use orderpipe_api::v1alpha1::{CanaryPause, CanaryStep, Duration};
use serde_json::{Value, json};

use super::analysis::HASH_ARGS;
use super::{ComponentMeta, DesiredError, StageContext};
use crate::children::ChildKind;
use crate::model::Scaling;

/// Old ReplicaSets kept for `kubectl rollout undo`; each holds a full pod template in etcd.
const REVISION_HISTORY_LIMIT: i32 = 3;
/// A rollout that makes no progress for this long is reported as failed in the workload's status.
const PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// Every pod replacement is two consumer-group rebalances (one member leaves, one joins); waiting
/// after a pod turns ready lets the group settle before the next pod leaves.
const MIN_READY_SECONDS: i32 = 10;

/// The spec both workload kinds share. `replicas` is set only for a fixed count and a parked stage
/// (0): with an autoscaler the field must be absent, or every apply would take the count back from
/// the HPA. Dropping it again on activation gives a Deployment the default 1 and a Rollout its
/// replica seed, from which the HPA takes over.
fn workload_spec(ctx: &StageContext<'_>, template: PodTemplateSpec) -> DeploymentSpec {
    DeploymentSpec {
        replicas: match ctx.stage.scaling {
            Scaling::Fixed { replicas, .. } => Some(replicas),
            Scaling::Auto { parked: true, .. } => Some(0),
            Scaling::Auto { parked: false, .. } => None,
        },
        selector: ctx.meta.selector(),
        template,
        revision_history_limit: Some(REVISION_HISTORY_LIMIT),
        progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
        min_ready_seconds: Some(MIN_READY_SECONDS),
        ..DeploymentSpec::default()
    }
}

/// Replace pods one at a time and never surge: a surge pod would be a consumer beyond the
/// partition count (the autoscaler's cap), and two pods briefly sharing a transactional identity
/// only fence each other. Records wait in Kafka meanwhile, so one missing consumer costs latency,
/// not orders.
fn max_surge() -> IntOrString {
    IntOrString::Int(0)
}

fn max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

pub(super) fn desired_deployment(ctx: &StageContext<'_>, template: PodTemplateSpec) -> Deployment {
    Deployment {
        metadata: ctx.meta.metadata(),
        spec: Some(DeploymentSpec {
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(max_surge()),
                    max_unavailable: Some(max_unavailable()),
                }),
            }),
            ..workload_spec(ctx, template)
        }),
        status: None,
    }
}

/// The intake gateway's Deployment. Its autoscaler owns the replica count. Unlike a stage it may
/// surge and never goes below its count during a rollout: an HTTP server has no partition cap,
/// and a missing replica is requests refused, not records waiting in Kafka.
pub(super) fn desired_intake_deployment(
    meta: &ComponentMeta<'_>,
    template: PodTemplateSpec,
) -> Deployment {
    Deployment {
        metadata: meta.metadata(),
        spec: Some(DeploymentSpec {
            replicas: None,
            selector: meta.selector(),
            template,
            revision_history_limit: Some(REVISION_HISTORY_LIMIT),
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// An Argo Rollout (argoproj.io/v1alpha1) releasing new pod templates by canary, with background
/// analysis against the stage's AnalysisTemplate (see `analysis`).
pub(super) fn desired_rollout(
    ctx: &StageContext<'_>,
    template: PodTemplateSpec,
) -> Result<Value, DesiredError> {
    let mut spec = ctx
        .meta
        .to_json(ChildKind::Rollout, workload_spec(ctx, template))?;
    spec["strategy"] = json!({
        "canary": {
            "maxSurge": max_surge(),
            "maxUnavailable": max_unavailable(),
            "steps": canary_steps(ctx)?,
            // Background analysis rather than an analysis step: it measures during every pause
            // and aborts as soon as a threshold is crossed, instead of at one point in the plan.
            // It starts at step 1, once the first setWeight has created canary pods.
            "analysis": {
                "templates": [{ "templateName": ctx.meta.name() }],
                "startingStep": 1,
                // Which pods are the canary and which the stable version, for its queries.
                "args": HASH_ARGS.map(|(name, version)| json!({
                    "name": name,
                    "valueFrom": { "podTemplateHashValue": version },
                })),
            },
        }
    });
    Ok(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": ctx.meta.metadata(),
        "spec": spec,
    }))
}

/// The declared steps, or 25% for 1m, 50% for 1m (then full). The step shape matches Argo's, so
/// the declared steps pass through; their durations are checked here so a bad one is reported
/// against the stage instead of failing inside Argo.
fn canary_steps(ctx: &StageContext<'_>) -> Result<Vec<CanaryStep>, DesiredError> {
    let declared = ctx
        .stage
        .spec
        .rollout
        .as_ref()
        .and_then(|r| r.canary.as_ref())
        .map(|c| c.steps.clone())
        .unwrap_or_default();
    if declared.is_empty() {
        let weight = |percent| CanaryStep {
            set_weight: Some(percent),
            pause: None,
        };
        let pause = |duration: &str| CanaryStep {
            set_weight: None,
            pause: Some(CanaryPause {
                duration: Some(Duration(duration.into())),
            }),
        };
        return Ok(vec![weight(25), pause("1m"), weight(50), pause("1m")]);
    }
    for (index, step) in declared.iter().enumerate() {
        if let Some(duration) = step.pause.as_ref().and_then(|p| p.duration.as_ref()) {
            contract::parse_duration(duration).map_err(|reason| DesiredError::InvalidDuration {
                stage: ctx.stage.spec.name.clone(),
                field: format!("rollout.canary.steps[{index}].pause.duration"),
                reason,
            })?;
        }
    }
    Ok(declared)
}
