//! Unit tests of the status rules: conditions, stage summaries, lag rounding, scale-to-zero memory.

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
    let text = include_str!("../../../config/samples/orderpipe_v1alpha1_minimal.yaml");
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
        kafka_cluster_id: None,
        workloads,
        intake_workload: None,
        autoscalers: BTreeMap::new(),
        lags: BTreeMap::new(),
        scale_to_zero: &BTreeMap::new(),
        issues: &[],
        children_error: None,
        growth: Vec::new(),
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
        kafka_cluster_id: None,
        workloads: stage(Some(deployment(2, 1))),
        intake_workload: None,
        autoscalers: stage(hpa),
        lags: stage(lag),
        scale_to_zero: &stage(decision),
        issues: &[],
        children_error: None,
        growth: Vec::new(),
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
fn a_failed_apply_makes_the_stages_and_the_pipeline_not_ready_with_its_error() {
    let p = pipeline(false);
    let observed = Observed {
        generation: Some(2),
        pipeline: &p,
        topics: vec![topic("a", true)],
        kafka_error: None,
        kafka_cluster_id: None,
        // The previous generation's workload is still up and ready: the status must not say so.
        workloads: stage(Some(deployment(2, 2))),
        intake_workload: None,
        autoscalers: BTreeMap::new(),
        lags: BTreeMap::new(),
        scale_to_zero: &BTreeMap::new(),
        issues: &[],
        children_error: Some(ChildrenError {
            reason: "ApplyFailed",
            message: "applying Deployment shop-validate: admission webhook denied".into(),
        }),
        growth: Vec::new(),
    };
    let s = compute(&observed, None, &at(10));
    for type_ in [READY, STAGES_READY] {
        let c = condition(&s, type_);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ApplyFailed")
        );
        assert!(
            c.message.contains("admission webhook denied"),
            "{}",
            c.message
        );
    }
    assert_eq!(condition(&s, TOPICS_READY).status, "True");
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

/// A Rollout of `replicas` pods, `canary` of them of the new version, at step `step` of
/// 25% / pause / 50% / pause.
fn rollout(replicas: i64, canary: i64, step: i64, latest: &str) -> Value {
    json!({
        "kind": "Rollout",
        "spec": {
            "replicas": replicas,
            "strategy": { "canary": { "steps": [
                { "setWeight": 25 }, { "pause": { "duration": "1m" } },
                { "setWeight": 50 }, { "pause": { "duration": "1m" } },
            ] } },
        },
        "status": {
            "stableRS": "stable1",
            "currentPodHash": latest,
            "currentStepIndex": step,
            "replicas": replicas,
            "updatedReplicas": canary,
        },
    })
}

#[test]
fn a_running_canary_reports_its_weight_pods_and_balanced_partitions() {
    assert_eq!(
        canary_status(&rollout(4, 1, 1, "new2"), Some(6)),
        Some(CanaryStatus {
            weight: 25,
            replicas: 1,
            stable_replicas: 3,
            // 6 partitions over 4 members: 1 or 2 each; one member's share is 1.5, rounded up.
            partitions: Some(2),
            input_partitions: Some(6),
        })
    );
    let at_half = canary_status(&rollout(2, 1, 3, "new2"), Some(4)).expect("canary");
    assert_eq!(
        (at_half.weight, at_half.partitions, at_half.stable_replicas),
        (50, Some(2), 1)
    );
    assert_eq!(
        canary_status(&rollout(2, 0, 0, "new2"), None).map(|c| c.weight),
        Some(25),
        "the first step is being set"
    );
}

#[test]
fn no_canary_when_stable_or_aborted() {
    assert_eq!(canary_status(&rollout(2, 2, 4, "stable1"), Some(4)), None);
    let mut aborted = rollout(2, 0, 1, "new2");
    aborted["status"]["abort"] = json!(true);
    assert_eq!(canary_status(&aborted, Some(4)), None);
    assert_eq!(balanced_share(4, 0, 0), None);
    assert_eq!(balanced_share(4, 1, 3), Some(1));
    assert_eq!(balanced_share(5, 1, 2), Some(3), "half up");
}

/// The minimal sample with an intake gateway, and its live Deployment (`None`: not created yet).
fn with_gateway(live: Option<Value>) -> OrderPipelineStatus {
    let text = include_str!("../../../config/samples/orderpipe_v1alpha1_checkout.yaml");
    let p: OrderPipeline = serde_norway::from_str(text).expect("sample parses");
    let settings = OperatorSettings::default();
    let validated = validate(&p, &BTreeMap::new(), Capabilities::default(), &settings).0;
    let workloads = validated
        .stages
        .iter()
        .map(|s| (s.spec.name.clone(), deployment(1, 1)))
        .collect();
    let observed = Observed {
        generation: Some(2),
        pipeline: &validated,
        topics: vec![topic("orders", true)],
        kafka_error: None,
        kafka_cluster_id: None,
        workloads,
        intake_workload: live,
        autoscalers: BTreeMap::new(),
        lags: BTreeMap::new(),
        scale_to_zero: &BTreeMap::new(),
        issues: &[],
        children_error: None,
        growth: Vec::new(),
    };
    compute(&observed, None, &at(10))
}

#[test]
fn a_declared_gateway_must_be_ready_for_the_pipeline_to_be() {
    let missing = with_gateway(None);
    assert_eq!(condition(&missing, READY).status, "False");
    assert_eq!(condition(&missing, READY).reason, "IntakePending");
    assert_eq!(condition(&missing, STAGES_READY).status, "True");

    let starting = with_gateway(Some(deployment(2, 1)));
    let intake = starting.intake.as_ref().expect("intake status");
    assert!(!intake.ready);
    assert_eq!(intake.replicas_ready.as_deref(), Some("1/2"));
    assert_eq!(condition(&starting, READY).reason, "ReplicasNotReady");
    assert!(
        condition(&starting, READY)
            .message
            .starts_with("intake gateway not ready: 1/2 replicas ready")
    );

    let ready = with_gateway(Some(deployment(2, 2)));
    let intake = ready.intake.as_ref().expect("intake status");
    assert!(intake.ready);
    // The sample has no namespace; the URL is what clients in the cluster use.
    assert_eq!(intake.url, "http://checkout-intake..svc:8080");
    assert_eq!(condition(&ready, READY).status, "True");
}
