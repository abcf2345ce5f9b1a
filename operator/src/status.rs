//! Computing the pipeline's status from what was observed: per-topic and per-stage summaries and the
//! `TopicsReady`, `StagesReady` and `Ready` conditions.
//!
//! Pure: the controller writes the result only when it differs from the current status, and
//! `lastTransitionTime` moves only when a condition's status flips, so a no-op reconcile computes an
//! identical status and writes nothing. Lag is rounded to two significant digits for the same
//! reason: a busy stage's status follows the size of its backlog, not every record, and an idle
//! stage's 0 never changes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use orderpipe_api::v1alpha1::{OrderPipelineStatus, StageStatus, TopicStatus};
use serde_json::Value;

use crate::model::{Scaling, StageIssue, ValidatedPipeline, ValidatedStage, WorkloadKind};
use crate::scale_to_zero::Decision;

pub const READY: &str = "Ready";
pub const TOPICS_READY: &str = "TopicsReady";
pub const STAGES_READY: &str = "StagesReady";

/// Everything the status is computed from.
#[derive(Debug)]
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub pipeline: &'a ValidatedPipeline,
    pub topics: Vec<TopicStatus>,
    /// Set when Kafka could not be reached or refused the operator; the topic list is then stale.
    pub kafka_error: Option<String>,
    /// The live workload (Deployment or Rollout) of each stage, by stage name.
    pub workloads: BTreeMap<String, Value>,
    /// The live HorizontalPodAutoscaler of each autoscaled stage, by stage name.
    pub autoscalers: BTreeMap<String, Value>,
    /// The measured lag (records) of each stage with a lag target, by stage name; absent when it
    /// could not be measured.
    pub lags: BTreeMap<String, u64>,
    /// The scale-to-zero state of each stage with `minReplicas: 0`, by stage name.
    pub scale_to_zero: &'a BTreeMap<String, Decision>,
    pub issues: &'a [StageIssue],
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

    let topics_condition = match (&observed.kafka_error, topics.iter().find(|t| !t.ready)) {
        (Some(error), _) => ("False", "KafkaUnavailable".to_string(), error.clone()),
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
    let stages_condition = match stages.iter().find(|s| !s.ready) {
        Some(first) => (
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
        None if observed.pipeline.paused => (
            "True",
            "Paused".into(),
            "every stage is scaled to zero; offsets are kept".into(),
        ),
        None => (
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

    OrderPipelineStatus {
        observed_generation: observed.generation,
        conditions: vec![
            condition(READY, ready_condition),
            condition(TOPICS_READY, topics_condition),
            condition(STAGES_READY, stages_condition),
        ],
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
    }
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
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use orderpipe_api::OrderPipeline;
    use serde_json::json;

    use super::*;
    use crate::capabilities::Capabilities;
    use crate::model::fixtures::lag_autoscaled;
    use crate::model::validate;
    use crate::scale_to_zero::Memory;
    use crate::settings::OperatorSettings;

    fn pipeline(paused: bool) -> ValidatedPipeline {
        let text = include_str!("../../config/samples/orderpipe_v1alpha1_minimal.yaml");
        let mut p: OrderPipeline = serde_norway::from_str(text).expect("sample parses");
        p.spec.paused = paused;
        let settings = OperatorSettings {
            worker_image: "w".into(),
            prometheus_url: "http://p".into(),
            ..OperatorSettings::default()
        };
        validate(&p, &BTreeMap::new(), Capabilities::default(), &settings).0
    }

    fn topic(name: &str, ready: bool) -> TopicStatus {
        TopicStatus {
            name: name.into(),
            ready,
            partitions: Some(3),
            reason: (!ready).then(|| "Conflict".into()),
            message: (!ready).then(|| "owned by shop/older".into()),
            ..TopicStatus::default()
        }
    }

    fn deployment(replicas: i64, ready: i64) -> Value {
        json!({
            "metadata": { "generation": 2 },
            "spec": { "replicas": replicas },
            "status": { "observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": replicas }
        })
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid time"))
    }

    fn compute_with(
        p: &ValidatedPipeline,
        topics: Vec<TopicStatus>,
        live: Option<Value>,
        previous: Option<&OrderPipelineStatus>,
        now: i64,
    ) -> OrderPipelineStatus {
        let workloads = p
            .stages
            .iter()
            .filter_map(|s| Some((s.spec.name.clone(), live.clone()?)))
            .collect();
        let observed = Observed {
            generation: Some(2),
            pipeline: p,
            topics,
            kafka_error: None,
            workloads,
            autoscalers: BTreeMap::new(),
            lags: BTreeMap::new(),
            scale_to_zero: &BTreeMap::new(),
            issues: &[],
        };
        compute(&observed, previous, &at(now))
    }

    /// `value` as the validate stage's entry of an `Observed` map.
    fn stage<T>(value: Option<T>) -> BTreeMap<String, T> {
        value
            .map(|v| BTreeMap::from([("validate".to_string(), v)]))
            .unwrap_or_default()
    }

    /// The validate stage's status with the given lag, autoscaler and scale-to-zero decision.
    fn autoscaled_status(
        p: &ValidatedPipeline,
        lag: Option<u64>,
        hpa: Option<Value>,
        decision: Option<Decision>,
    ) -> OrderPipelineStatus {
        let observed = Observed {
            generation: Some(2),
            pipeline: p,
            topics: vec![],
            kafka_error: None,
            workloads: stage(Some(deployment(2, 1))),
            autoscalers: stage(hpa),
            lags: stage(lag),
            scale_to_zero: &stage(decision),
            issues: &[],
        };
        compute(&observed, None, &at(10))
    }

    fn condition<'a>(status: &'a OrderPipelineStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn ready_when_every_topic_and_stage_is_ready() {
        let s = compute_with(
            &pipeline(false),
            vec![topic("a", true)],
            Some(deployment(2, 2)),
            None,
            10,
        );
        assert_eq!(condition(&s, READY).status, "True");
        assert_eq!(s.stages_ready.as_deref(), Some("1/1"));
        assert_eq!(s.stages[0].ready_replicas, Some(2));
    }

    #[test]
    fn conflicting_topic_makes_the_pipeline_not_ready_with_the_topic_reason() {
        let s = compute_with(
            &pipeline(false),
            vec![topic("a", false)],
            Some(deployment(1, 1)),
            None,
            10,
        );
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Conflict")
        );
        assert!(
            ready.message.contains("a: owned by shop/older"),
            "{}",
            ready.message
        );
        assert_eq!(s.topics_ready.as_deref(), Some("0/1"));
    }

    #[test]
    fn unready_replicas_are_reported_with_counts() {
        let s = compute_with(&pipeline(false), vec![], Some(deployment(3, 1)), None, 10);
        let stages = condition(&s, STAGES_READY);
        assert_eq!(stages.reason, "ReplicasNotReady");
        assert!(
            stages.message.contains("1/3 replicas ready"),
            "{}",
            stages.message
        );
    }

    #[test]
    fn fixed_replicas_capped_at_the_partitions_are_reported_and_the_stage_is_ready() {
        let mut p = pipeline(false);
        p.stages[0].scaling = Scaling::Fixed {
            replicas: 2,
            capped_from: Some(5),
        };
        let s = compute_with(&p, vec![], Some(deployment(2, 2)), None, 10);
        assert_eq!(s.stages[0].replicas_capped_from, Some(5));
        assert_eq!(s.stages[0].max_replicas_capped_from, None);
        assert!(s.stages[0].ready);
    }

    #[test]
    fn paused_pipeline_is_not_ready_but_its_stages_are_in_their_desired_state() {
        let s = compute_with(&pipeline(true), vec![], Some(deployment(0, 0)), None, 10);
        assert_eq!(condition(&s, STAGES_READY).reason, "Paused");
        assert_eq!(condition(&s, READY).status, "False");
        assert_eq!(condition(&s, READY).reason, "Paused");
    }

    #[test]
    fn recomputing_an_unchanged_state_yields_an_identical_status() {
        let p = pipeline(false);
        let first = compute_with(&p, vec![topic("a", true)], Some(deployment(1, 1)), None, 10);
        let again = compute_with(
            &p,
            vec![topic("a", true)],
            Some(deployment(1, 1)),
            Some(&first),
            99,
        );
        assert_eq!(
            first, again,
            "a no-op reconcile must not produce a status write"
        );
    }

    #[test]
    fn transition_time_moves_only_when_the_condition_flips() {
        let p = pipeline(false);
        let ready = compute_with(&p, vec![], Some(deployment(1, 1)), None, 10);
        let degraded = compute_with(&p, vec![], Some(deployment(1, 0)), Some(&ready), 20);
        assert_eq!(condition(&degraded, READY).last_transition_time, at(20));
        assert_eq!(
            condition(&degraded, TOPICS_READY).last_transition_time,
            at(10)
        );
    }

    #[test]
    fn missing_workload_is_pending() {
        let s = compute_with(&pipeline(false), vec![], None, None, 10);
        assert_eq!(s.stages[0].reason.as_deref(), Some("WorkloadPending"));
    }

    #[test]
    fn lag_is_rounded_to_two_significant_digits() {
        let cases = [
            (0, 0),
            (7, 7),
            (99, 99),
            (104, 100),
            (1234, 1200),
            (995, 1000),
        ];
        for (records, shown) in cases {
            assert_eq!(rounded_lag(records), shown, "{records}");
        }
        assert_eq!(rounded_lag(u64::MAX), i64::MAX);
    }

    #[test]
    fn an_autoscaled_stage_shows_its_current_and_desired_replicas_and_its_lag() {
        let hpa = json!({ "status": { "currentReplicas": 2, "desiredReplicas": 3 } });
        let s = autoscaled_status(&lag_autoscaled(1, false), Some(1234), Some(hpa), None);
        let stage = &s.stages[0];
        assert_eq!(
            (stage.replicas, stage.ready_replicas, stage.desired_replicas),
            (Some(2), Some(1), Some(3))
        );
        assert_eq!(stage.lag, Some(1200));
        assert_eq!(s.total_lag, Some(1200));
        assert_eq!(s.replicas_ready.as_deref(), Some("1/3"));
    }

    #[test]
    fn a_stage_without_a_lag_reading_has_no_lag_and_the_total_is_unset() {
        let s = autoscaled_status(&lag_autoscaled(1, false), None, None, None);
        assert_eq!((s.stages[0].lag, s.total_lag), (None, None));
        assert_eq!(
            s.stages[0].desired_replicas, None,
            "no autoscaler status yet"
        );
    }

    #[test]
    fn a_parked_stage_wants_zero_replicas_and_says_since_when() {
        let mut p = lag_autoscaled(0, false);
        p.park(|_| true);
        let decision = Decision {
            memory: Memory {
                parked_since: Some(at(5)),
                idle_since: None,
            },
            transition: None,
        };
        let s = autoscaled_status(&p, Some(0), None, Some(decision));
        let stage = &s.stages[0];
        assert_eq!(stage.desired_replicas, Some(0));
        assert_eq!(stage.parked_since, Some(at(5)));
        assert_eq!(stage.lag, Some(0));
    }

    #[test]
    fn an_idle_stage_recomputes_an_identical_status() {
        // The idle period's start is kept, lag 0 stays 0: a resync of an idle stage writes nothing.
        let p = lag_autoscaled(0, false);
        let decision = || Decision {
            memory: Memory {
                parked_since: None,
                idle_since: Some(at(3)),
            },
            transition: None,
        };
        let first = autoscaled_status(&p, Some(0), None, Some(decision()));
        let again = autoscaled_status(&p, Some(0), None, Some(decision()));
        assert_eq!(first, again);
        assert_eq!(first.stages[0].idle_since, Some(at(3)));
    }
}
