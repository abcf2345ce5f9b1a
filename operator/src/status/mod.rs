//! Computing the pipeline's status from what was observed: per-topic and per-stage summaries, the
//! intake gateway's, and the `TopicsReady`, `StagesReady` and `Ready` conditions (a declared
//! gateway must be ready too for `Ready`).
//!
//! Pure: the controller writes the result only when it differs from the current status, and
//! `lastTransitionTime` moves only when a condition's status flips, so a no-op reconcile computes an
//! identical status and writes nothing. Lag is rounded to two significant digits for the same
//! reason: a busy stage's status follows the size of its backlog, not every record, and an idle
//! stage's 0 never changes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use orderpipe_api::v1alpha1::{
    CanaryStatus, GrowthPhase, GrowthStatus, IntakeStatus, OrderPipelineStatus, StageStatus,
    TopicStatus,
};
use serde_json::Value;

use crate::model::{Scaling, StageIssue, ValidatedPipeline, ValidatedStage, WorkloadKind};
use crate::scale_to_zero::Decision;

pub const READY: &str = "Ready";
pub const TOPICS_READY: &str = "TopicsReady";
pub const STAGES_READY: &str = "StagesReady";
/// Present once a stage input grew under coordination (`crate::growth`).
pub const RESHARDING: &str = crate::growth::reason::RESHARDING;

/// Everything the status is computed from.
#[derive(Debug)]
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub pipeline: &'a ValidatedPipeline,
    pub topics: Vec<TopicStatus>,
    /// Set when Kafka could not be reached, refused the operator, or was not dialled; the topic
    /// list is then stale.
    pub kafka_error: Option<KafkaProblem>,
    /// The id the cluster's brokers reported this time, when they did (the last one is kept
    /// otherwise).
    pub kafka_cluster_id: Option<String>,
    /// The live workload (Deployment or Rollout) of each stage, by stage name.
    pub workloads: BTreeMap<String, Value>,
    /// The live HorizontalPodAutoscaler of each autoscaled stage, by stage name.
    pub autoscalers: BTreeMap<String, Value>,
    /// The intake gateway's live Deployment, when the pipeline declares one and it exists.
    pub intake_workload: Option<Value>,
    /// The measured lag (records) of each stage with a lag target, by stage name; absent when it
    /// could not be measured.
    pub lags: BTreeMap<String, u64>,
    /// The scale-to-zero state of each stage with `minReplicas: 0`, by stage name.
    pub scale_to_zero: &'a BTreeMap<String, Decision>,
    pub issues: &'a [StageIssue],
    /// Set when the stages' objects could not be built or written; the live objects may then be
    /// an older generation's.
    pub children_error: Option<ChildrenError>,
    /// The coordinated partition growths, as `growth::step` left them this time.
    pub growth: Vec<GrowthStatus>,
}

/// Why the topics could not be observed: `TopicsReady`'s reason and message.
#[derive(Debug, Clone)]
pub struct KafkaProblem {
    /// PascalCase: `KafkaUnavailable`, or `HostNotAllowed` when the operator would not dial.
    pub reason: &'static str,
    pub message: String,
}

/// Why the stages' objects could not be built or written.
#[derive(Debug, Clone)]
pub struct ChildrenError {
    /// PascalCase, e.g. `ApplyFailed`.
    pub reason: &'static str,
    pub message: String,
}

/// The status to write, reusing `previous` transition times for conditions that did not flip.
pub fn compute(
    observed: &Observed<'_>,
    previous: Option<&OrderPipelineStatus>,
    now: &Time,
) -> OrderPipelineStatus {
    let stages: Vec<StageStatus> = observed
        .pipeline
        .stages
        .iter()
        .map(|stage| stage_status(stage, observed))
        .collect();
    let topics = observed.topics.clone();
    let intake = intake_status(observed);

    let topics_condition = match (&observed.kafka_error, topics.iter().find(|t| !t.ready)) {
        (Some(problem), _) => ("False", problem.reason.to_string(), problem.message.clone()),
        (None, Some(first)) => (
            "False",
            first
                .reason
                .clone()
                .unwrap_or_else(|| "TopicPending".into()),
            not_ready_message(
                "topics",
                topics
                    .iter()
                    .filter(|t| !t.ready)
                    .map(|t| (&t.name, &t.message)),
            ),
        ),
        (None, None) => (
            "True",
            "AllTopicsReady".into(),
            format!("{} topics ready", topics.len()),
        ),
    };
    let stages_condition = match (&observed.children_error, stages.iter().find(|s| !s.ready)) {
        (Some(error), _) => ("False", error.reason.to_string(), error.message.clone()),
        (None, Some(first)) => (
            "False",
            first
                .reason
                .clone()
                .unwrap_or_else(|| "StagePending".into()),
            not_ready_message(
                "stages",
                stages
                    .iter()
                    .filter(|s| !s.ready)
                    .map(|s| (&s.name, &s.message)),
            ),
        ),
        (None, None) if observed.pipeline.paused => (
            "True",
            "Paused".into(),
            "every stage is scaled to zero; offsets are kept".into(),
        ),
        (None, None) => (
            "True",
            "AllStagesReady".into(),
            format!("{} stages ready", stages.len()),
        ),
    };
    let ready_condition = if topics_condition.0 == "False" {
        (
            "False",
            topics_condition.1.clone(),
            topics_condition.2.clone(),
        )
    } else if stages_condition.0 == "False" {
        (
            "False",
            stages_condition.1.clone(),
            stages_condition.2.clone(),
        )
    } else if let Some(gateway) = intake.as_ref().filter(|gateway| !gateway.ready) {
        (
            "False",
            gateway
                .reason
                .clone()
                .unwrap_or_else(|| "IntakePending".into()),
            format!(
                "intake gateway not ready: {}",
                gateway.message.as_deref().unwrap_or("pending")
            ),
        )
    } else if observed.pipeline.paused {
        (
            "False",
            "Paused".into(),
            "the pipeline is paused: no stage consumes".into(),
        )
    } else {
        (
            "True",
            "PipelineReady".into(),
            "every topic and stage is ready".into(),
        )
    };

    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, (status, reason, message): (&str, String, String)| {
        let last_transition_time = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason,
            message,
            observed_generation: observed.generation,
            last_transition_time,
        }
    };

    let mut conditions = vec![
        condition(READY, ready_condition),
        condition(TOPICS_READY, topics_condition),
        condition(STAGES_READY, stages_condition),
    ];
    conditions.extend(resharding_condition(&observed.growth).map(|c| condition(RESHARDING, c)));
    OrderPipelineStatus {
        observed_generation: observed.generation,
        conditions,
        topics_ready: Some(format!(
            "{}/{}",
            topics.iter().filter(|t| t.ready).count(),
            topics.len()
        )),
        stages_ready: Some(format!(
            "{}/{}",
            stages.iter().filter(|s| s.ready).count(),
            stages.len()
        )),
        replicas_ready: Some(format!(
            "{}/{}",
            stages.iter().filter_map(|s| s.ready_replicas).sum::<i32>(),
            stages
                .iter()
                .filter_map(|s| s.desired_replicas.or(s.replicas))
                .sum::<i32>()
        )),
        total_lag: stages
            .iter()
            .filter_map(|s| s.lag)
            .reduce(i64::saturating_add),
        topics,
        stages,
        intake,
        kafka_cluster_id: observed
            .kafka_cluster_id
            .clone()
            .or_else(|| previous.and_then(|p| p.kafka_cluster_id.clone())),
        growth: observed.growth.clone(),
    }
}

/// `Resharding`: True while a coordinated growth runs (reason: the first running growth's phase),
/// False once every growth completed; absent for a pipeline that never grew a stage input.
fn resharding_condition(growth: &[GrowthStatus]) -> Option<(&'static str, String, String)> {
    if growth.is_empty() {
        return None;
    }
    let summaries = growth
        .iter()
        .map(|g| g.summary.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Some(
        match growth.iter().find(|g| g.phase != GrowthPhase::Completed) {
            Some(running) => ("True", format!("{:?}", running.phase), summaries),
            None => ("False", "Completed".to_owned(), summaries),
        },
    )
}

/// The gateway's summary from its live Deployment; `None` when the pipeline declares none.
fn intake_status(observed: &Observed<'_>) -> Option<IntakeStatus> {
    let intake = observed.pipeline.intake.as_ref()?;
    let url = format!(
        "http://{}.{}.svc:{}",
        intake.workload_name,
        observed.pipeline.namespace,
        orderpipe_api::contract::INTAKE_PORT
    );
    let Some(live) = &observed.intake_workload else {
        return Some(IntakeStatus {
            ready: false,
            url,
            replicas_ready: None,
            reason: Some("IntakePending".into()),
            message: Some("the gateway's Deployment does not exist yet".into()),
        });
    };
    let (desired, ready, updated) = replica_counts(live);
    let progress = workload_progress(WorkloadKind::Deployment, live, desired, ready, updated);
    let (reason, message) = match progress {
        Ok(()) => (None, None),
        Err((reason, message)) => (Some(reason.to_owned()), Some(message)),
    };
    Some(IntakeStatus {
        ready: reason.is_none(),
        url,
        replicas_ready: Some(format!("{ready}/{desired}")),
        reason,
        message,
    })
}

fn not_ready_message<'a>(
    what: &str,
    items: impl Iterator<Item = (&'a String, &'a Option<String>)>,
) -> String {
    let details: Vec<String> = items
        .map(|(name, message)| match message {
            Some(m) => format!("{name}: {m}"),
            None => name.clone(),
        })
        .collect();
    format!("{what} not ready: {}", details.join("; "))
}

/// The summary of one stage from its live workload and autoscaler, its lag and its scale-to-zero
/// state.
fn stage_status(stage: &ValidatedStage, observed: &Observed<'_>) -> StageStatus {
    let name = &stage.spec.name;
    let live = observed.workloads.get(name);
    let (max_replicas, max_replicas_capped_from, replicas_capped_from) = match &stage.scaling {
        Scaling::Auto {
            max, capped_from, ..
        } => (Some(*max), *capped_from, None),
        Scaling::Fixed { capped_from, .. } => (None, None, *capped_from),
    };
    let desired_replicas = match &stage.scaling {
        Scaling::Fixed { replicas, .. } => Some(*replicas),
        Scaling::Auto { parked: true, .. } => Some(0),
        Scaling::Auto { parked: false, .. } => observed
            .autoscalers
            .get(name)
            .and_then(|hpa| hpa.pointer("/status/desiredReplicas"))
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok()),
    };
    let memory = observed.scale_to_zero.get(name).map(|d| d.memory.clone());
    let issue = observed.issues.iter().find(|i| i.stage() == name);
    let mut status = StageStatus {
        name: name.clone(),
        workload: Some(stage.workload.as_str().into()),
        desired_replicas,
        max_replicas,
        max_replicas_capped_from,
        replicas_capped_from,
        lag: observed.lags.get(name).map(|&records| rounded_lag(records)),
        parked_since: memory.as_ref().and_then(|m| m.parked_since.clone()),
        idle_since: memory.and_then(|m| m.idle_since),
        ..StageStatus::default()
    };
    let Some(live) = live else {
        status.reason = Some("WorkloadPending".into());
        status.message = Some(format!(
            "{} {} not created yet",
            stage.workload.as_str(),
            stage.workload_name
        ));
        return status;
    };
    let (desired, ready, updated) = replica_counts(live);
    status.replicas = Some(desired);
    status.ready_replicas = Some(ready);
    if stage.workload == WorkloadKind::Rollout {
        let input_partitions = observed
            .topics
            .iter()
            .find(|t| t.name == stage.spec.input)
            .and_then(|t| t.partitions);
        status.canary = canary_status(live, input_partitions);
    }

    let progress = workload_progress(stage.workload, live, desired, ready, updated);
    match (progress, issue) {
        (Err((reason, message)), _) => {
            status.reason = Some(reason.into());
            status.message = Some(message);
        }
        (Ok(()), Some(issue)) => {
            status.reason = Some(issue.reason().into());
            status.message = Some(issue.message());
        }
        (Ok(()), None) => status.ready = true,
    }
    status
}

/// The running canary of a live Rollout: set while its new pods' hash differs from the stable one
/// and the release is not aborted (Argo then scales the canary back to zero).
fn canary_status(live: &Value, input_partitions: Option<i32>) -> Option<CanaryStatus> {
    let text = |pointer: &str| live.pointer(pointer).and_then(Value::as_str);
    let int = |pointer: &str| {
        live.pointer(pointer)
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(0)
    };
    let stable = text("/status/stableRS")?;
    let latest = text("/status/currentPodHash")?;
    let aborted = live
        .pointer("/status/abort")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if stable == latest || aborted {
        return None;
    }
    let step = usize::try_from(int("/status/currentStepIndex")).unwrap_or(0);
    let weight = live
        .pointer("/spec/strategy/canary/steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(step + 1)
        .filter_map(|s| s.get("setWeight").and_then(Value::as_i64))
        .last()
        .and_then(|w| i32::try_from(w).ok())
        .unwrap_or(0);
    let replicas = int("/status/updatedReplicas");
    let stable_replicas = (int("/status/replicas") - replicas).max(0);
    Some(CanaryStatus {
        weight,
        replicas,
        stable_replicas,
        partitions: input_partitions
            .and_then(|total| balanced_share(total, replicas, replicas + stable_replicas)),
        input_partitions,
    })
}

/// What `members` of a group of `group` hold of `partitions` when every member holds an equal
/// share: `partitions × members / group`, rounded half up; `None` for an empty group.
fn balanced_share(partitions: i32, members: i32, group: i32) -> Option<i32> {
    if group <= 0 {
        return None;
    }
    let (partitions, members, group) =
        (i64::from(partitions), i64::from(members), i64::from(group));
    i32::try_from((2 * partitions * members + group) / (2 * group)).ok()
}

/// `records` to two significant digits (1234 -> 1200, 99 -> 99), half up.
fn rounded_lag(records: u64) -> i64 {
    let mut scale = 1u64;
    while records / scale >= 100 {
        scale *= 10;
    }
    let rounded = records.saturating_add(scale / 2) / scale * scale;
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

/// Whether a live Deployment or Rollout has finished rolling out with every replica ready.
pub fn workload_is_ready(live: &Value) -> bool {
    let kind = match live.get("kind").and_then(Value::as_str) {
        Some("Rollout") => WorkloadKind::Rollout,
        _ => WorkloadKind::Deployment,
    };
    let (desired, ready, updated) = replica_counts(live);
    workload_progress(kind, live, desired, ready, updated).is_ok()
}

/// Desired, ready and updated replicas of a live workload (a missing `spec.replicas` means 1).
fn replica_counts(live: &Value) -> (i32, i32, i32) {
    let int = |pointer: &str| {
        live.pointer(pointer)
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
    };
    (
        int("/spec/replicas").unwrap_or(1),
        int("/status/readyReplicas").unwrap_or(0),
        int("/status/updatedReplicas").unwrap_or(0),
    )
}

/// Whether the workload has finished rolling out with every replica ready; otherwise why not.
fn workload_progress(
    kind: WorkloadKind,
    live: &Value,
    desired: i32,
    ready: i32,
    updated: i32,
) -> Result<(), (&'static str, String)> {
    let generation = live.pointer("/metadata/generation").and_then(Value::as_i64);
    // Deployments report observedGeneration as a number; Argo Rollouts as a string.
    let observed_generation = live.pointer("/status/observedGeneration").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    if generation.is_some() && observed_generation.is_some() && observed_generation < generation {
        return Err((
            "RolloutProgressing",
            "the workload controller has not observed the latest spec yet".into(),
        ));
    }
    if kind == WorkloadKind::Rollout {
        match live.pointer("/status/phase").and_then(Value::as_str) {
            Some("Healthy") | None => {}
            Some("Paused") => {
                return Err(("CanaryPaused", "the canary is paused at a step".into()));
            }
            Some("Degraded") => {
                let message = live
                    .pointer("/status/message")
                    .and_then(Value::as_str)
                    .unwrap_or("canary aborted");
                return Err(("CanaryDegraded", message.into()));
            }
            Some(phase) => return Err(("RolloutProgressing", format!("rollout phase {phase}"))),
        }
    }
    if updated < desired {
        return Err((
            "RolloutProgressing",
            format!("{updated}/{desired} replicas updated"),
        ));
    }
    if ready < desired {
        return Err((
            "ReplicasNotReady",
            format!("{ready}/{desired} replicas ready"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
