use serde_json::json;

use super::*;

const STATE: &str = "orderpipe.shop.checkout.validate.state";

/// The test pipeline (a validate stage reading `orders`) with `orders` declared at `partitions`.
fn pipeline(partitions: i32) -> OrderPipeline {
    OrderPipeline::test("checkout")
        .in_namespace("shop")
        .partitions("orders", partitions)
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("valid time")
}

/// What a step sees of the cluster besides topic sizes.
#[derive(Clone, Copy)]
struct Cluster {
    control_topic_exists: bool,
    stages_follow_control: bool,
}

const SETTLED: Cluster = Cluster {
    control_topic_exists: true,
    stages_follow_control: true,
};

/// One reconcile's step over `last` on `cluster`, with the live counts given.
fn run_on(
    cluster: Cluster,
    pipeline: &OrderPipeline,
    live: &[(&str, i32)],
    last: &[GrowthStatus],
    observed: &Observations,
    now: Timestamp,
) -> GrowthStep {
    let inputs = coordinated_inputs(pipeline);
    let declared = pipeline
        .spec
        .topics
        .iter()
        .map(|t| (t.name.clone(), t.partitions))
        .collect();
    let live = live.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect();
    let following = pipeline
        .spec
        .stages
        .iter()
        .filter(|_| cluster.stages_follow_control)
        .map(|s| s.name.clone())
        .collect();
    step(&StepInput {
        pipeline_uid: "uid-1",
        inputs: &inputs,
        declared: &declared,
        live: &live,
        control_topic_exists: cluster.control_topic_exists,
        following: &following,
        last,
        observed,
        now,
    })
}

fn phases(step: &GrowthStep) -> Vec<&Phase> {
    step.publish.iter().map(|(_, r)| &r.view.phase).collect()
}

#[test]
fn a_declared_growth_to_a_multiple_is_announced_before_anything_grows() {
    let grown = pipeline(6);
    let step = run_on(
        SETTLED,
        &grown,
        &[("orders", 3), (STATE, 3)],
        &[],
        &Observations::default(),
        at(1_000),
    );

    let [growth] = step.statuses.as_slice() else {
        panic!("one growth: {:?}", step.statuses);
    };
    assert_eq!(
        (growth.from, growth.to, growth.phase),
        (3, 6, GrowthPhase::Announced)
    );
    assert_eq!(growth.stages, ["validate"]);
    assert_eq!(
        growth.generation, 1_000_000,
        "Unix milliseconds at announcement"
    );
    assert_eq!(phases(&step), [&Phase::Held]);
    assert_eq!(step.publish[0].0, "validate");
    assert_eq!(step.publish[0].1.pipeline_uid, "uid-1");
    let decided = step
        .status_first
        .as_ref()
        .expect("recorded before it is published");
    assert_eq!(decided, &step.statuses);
    // The input and its state topic grow together, tagged with the growth.
    for topic in ["orders", STATE] {
        assert_eq!(
            step.targets.get(topic),
            Some(&Target {
                partitions: 6,
                generation: Some(1_000_000)
            })
        );
    }
    assert_eq!(step.events[0].reason, reason::GROWTH_ANNOUNCED);
}

#[test]
fn a_growth_to_a_count_that_is_not_a_multiple_is_refused_naming_the_field_and_the_next_multiple() {
    let step = run_on(
        SETTLED,
        &pipeline(5),
        &[("orders", 3)],
        &[],
        &Observations::default(),
        at(1),
    );
    let why = step.refused.get("orders").expect("refused");
    assert!(why.contains("spec.topics[name=orders].partitions"), "{why}");
    assert!(why.contains("e.g. 6"), "{why}");
    assert_eq!(step.targets["orders"].partitions, 3, "not grown");
    assert!(step.publish.is_empty() && step.statuses.is_empty());

    let mut statuses = vec![TopicStatus {
        name: "orders".into(),
        ready: true,
        ..TopicStatus::default()
    }];
    mark_refused(&mut statuses, &step);
    assert!(!statuses[0].ready);
    assert_eq!(statuses[0].reason.as_deref(), Some(reason::GROWTH_REFUSED));
}

/// The first pass of `orders` 3 -> 6 on `cluster`, checked not to start: nothing recorded or
/// published, the topic kept at 3, a look again soon.
fn not_started_on(cluster: Cluster) -> GrowthStep {
    let step = run_on(
        cluster,
        &pipeline(6),
        &[("orders", 3)],
        &[],
        &Observations::default(),
        at(1),
    );
    assert!(step.statuses.is_empty() && step.publish.is_empty());
    assert_eq!(step.targets["orders"].partitions, 3, "not grown yet");
    assert!(step.recheck.is_some());
    step
}

#[test]
fn no_growth_starts_before_the_control_topic_exists() {
    not_started_on(Cluster {
        control_topic_exists: false,
        ..SETTLED
    });
}

#[test]
fn an_input_a_custom_image_reads_is_not_coordinated() {
    let mut custom = pipeline(6);
    custom.spec.stages[0].processor = Processor::Custom;
    assert_eq!(coordinated_inputs(&custom), []);
    let step = run_on(
        SETTLED,
        &custom,
        &[("orders", 3)],
        &[],
        &Observations::default(),
        at(1),
    );
    assert!(
        step.targets.is_empty(),
        "grown as before, by the topic plan"
    );
}

/// Runs reconciles from a declared 3 -> 6 until the growth completes; Kafka's side is simulated:
/// the grow shows after the announcing pass, and every partition's marker commits after `Draining`.
#[test]
fn a_growth_walks_every_phase_and_releases_only_after_every_old_partition_resharded() {
    let grown = pipeline(6);
    let settle = DEFAULT_SETTLE.as_secs() as i64;
    let none = Observations::default();

    let announced = run_on(
        SETTLED,
        &grown,
        &[("orders", 3), (STATE, 3)],
        &[],
        &none,
        at(100),
    );
    // Not yet visible in Kafka: still announced, and Held is written again.
    let still = run_on(
        SETTLED,
        &grown,
        &[("orders", 6), (STATE, 3)],
        &announced.statuses,
        &none,
        at(101),
    );
    assert_eq!(still.statuses[0].phase, GrowthPhase::Announced);
    assert_eq!(phases(&still), [&Phase::Held]);

    let settling = run_on(
        SETTLED,
        &grown,
        &[("orders", 6), (STATE, 6)],
        &still.statuses,
        &none,
        at(102),
    );
    let growth = &settling.statuses[0];
    assert_eq!(growth.phase, GrowthPhase::Settling);
    assert_eq!(growth.grown_at, Some(Time(at(102))));
    assert_eq!(settling.recheck, Some(DEFAULT_SETTLE));
    assert!(settling.status_first.is_none());

    // Inside the window nothing is read and nothing changes.
    let inputs = coordinated_inputs(&grown);
    assert!(needs(&inputs, &settling.statuses, at(102 + settle - 1)).is_empty());
    let waiting = run_on(
        SETTLED,
        &grown,
        &[("orders", 6), (STATE, 6)],
        &settling.statuses,
        &none,
        at(102 + settle - 1),
    );
    assert_eq!(waiting.statuses[0].phase, GrowthPhase::Settling);
    assert!(waiting.publish.is_empty());

    // After it: the end offsets of the old partitions are the barrier.
    let after = at(102 + settle);
    assert_eq!(
        needs(&inputs, &settling.statuses, after).end_offsets,
        [("orders".to_owned(), 3)]
    );
    let ends = Observations {
        end_offsets: BTreeMap::from([("orders".to_owned(), vec![40, 50, 60])]),
        ..Observations::default()
    };
    let draining = run_on(
        SETTLED,
        &grown,
        &[("orders", 6), (STATE, 6)],
        &settling.statuses,
        &ends,
        after,
    );
    let growth = &draining.statuses[0];
    assert_eq!(growth.phase, GrowthPhase::Draining);
    assert_eq!(growth.barrier, [40, 50, 60]);
    assert_eq!(growth.summary, "orders 3->6 Draining 0/3");
    assert!(
        draining.status_first.is_some(),
        "the barrier is recorded before it is published"
    );
    assert!(matches!(phases(&draining)[..], [Phase::Draining(_)]));

    // Two of three partitions re-sharded: still draining, progress shown.
    let generation = u64::try_from(growth.generation).expect("positive");
    let marker = Some(ReshardMarker { generation });
    let markers = |per_partition: Vec<Option<ReshardMarker>>| Observations {
        markers: BTreeMap::from([(
            "orders".to_owned(),
            BTreeMap::from([("validate".to_owned(), per_partition)]),
        )]),
        ..Observations::default()
    };
    let older = Some(ReshardMarker {
        generation: generation - 1,
    });
    let partial = run_on(
        SETTLED,
        &grown,
        &[("orders", 6), (STATE, 6)],
        &draining.statuses,
        &markers(vec![marker, older, marker]),
        at(102 + settle + 5),
    );
    assert_eq!(partial.statuses[0].summary, "orders 3->6 Draining 2/3");
    assert!(matches!(phases(&partial)[..], [Phase::Draining(_)]));

    let released = run_on(
        SETTLED,
        &grown,
        &[("orders", 6), (STATE, 6)],
        &partial.statuses,
        &markers(vec![marker; 3]),
        at(102 + settle + 9),
    );
    let growth = &released.statuses[0];
    assert_eq!(growth.phase, GrowthPhase::Completed);
    assert_eq!(growth.held_seconds, Some(settle + 9));
    assert_eq!(phases(&released), [&Phase::Released]);
    assert!(
        released.status_first.is_none(),
        "a release is recorded after it is published"
    );
    assert!(released.targets.is_empty(), "the topic plan decides again");
    assert_eq!(released.events[0].reason, reason::GROWTH_RELEASED);

    // The next growth is a later generation.
    let again = run_on(
        SETTLED,
        &pipeline(12),
        &[("orders", 6), (STATE, 6)],
        &released.statuses,
        &none,
        at(1),
    );
    assert_eq!(again.statuses[0].phase, GrowthPhase::Announced);
    assert!(again.statuses[0].generation > growth.generation);
    assert_eq!((again.statuses[0].from, again.statuses[0].to), (6, 12));
}

#[test]
fn a_release_in_the_same_pass_as_another_topics_announcement_is_recorded_only_after_publishing() {
    let two = pipeline(6).partitions("orders.validated", 6).stage(
        "notify",
        Processor::Notify,
        "orders.validated",
        &[],
    );
    let draining = GrowthStatus {
        topic: "orders".into(),
        generation: 7,
        from: 3,
        to: 6,
        phase: GrowthPhase::Draining,
        stages: vec!["validate".into()],
        grown_at: Some(Time(at(1))),
        barrier: vec![1, 2, 3],
        resharded: Some("0/3".into()),
        released_at: None,
        held_seconds: None,
        summary: "orders 3->6 Draining 0/3".into(),
    };
    let done = Observations {
        markers: BTreeMap::from([(
            "orders".to_owned(),
            BTreeMap::from([(
                "validate".to_owned(),
                vec![Some(ReshardMarker { generation: 7 }); 3],
            )]),
        )]),
        ..Observations::default()
    };
    let step = run_on(
        SETTLED,
        &two,
        &[("orders", 6), (STATE, 6), ("orders.validated", 3)],
        &[draining],
        &done,
        at(50),
    );
    let phase_of = |statuses: &[GrowthStatus], topic: &str| {
        statuses.iter().find(|g| g.topic == topic).map(|g| g.phase)
    };
    assert_eq!(
        phase_of(&step.statuses, "orders"),
        Some(GrowthPhase::Completed)
    );
    assert_eq!(
        phase_of(&step.statuses, "orders.validated"),
        Some(GrowthPhase::Announced)
    );
    let first = step
        .status_first
        .as_deref()
        .expect("the announcement is recorded first");
    assert_eq!(phase_of(first, "orders"), Some(GrowthPhase::Draining));
    assert_eq!(
        phase_of(first, "orders.validated"),
        Some(GrowthPhase::Announced)
    );
}

#[test]
fn a_growth_waits_until_every_reading_stage_runs_workers_that_follow_the_control_topic() {
    let step = not_started_on(Cluster {
        stages_follow_control: false,
        ..SETTLED
    });
    let waiting = step.deferred.get("orders").expect("says what it waits for");
    assert!(
        waiting.contains("validate") && waiting.contains("rolling out"),
        "{waiting}"
    );

    let mut statuses = vec![TopicStatus {
        name: "orders".into(),
        ready: true,
        ..TopicStatus::default()
    }];
    mark_refused(&mut statuses, &step);
    assert!(statuses[0].ready, "waiting is not a fault");
    assert_eq!(statuses[0].reason.as_deref(), Some(reason::GROWTH_WAITING));
}

#[test]
fn a_workload_follows_the_control_topic_once_every_replica_runs_a_template_that_sets_it() {
    let workload = |env: Value, status: Value| {
        json!({
            "metadata": { "generation": 4 },
            "spec": { "template": { "spec": { "containers": [{ "name": "worker", "env": env }] } } },
            "status": status,
        })
    };
    let control = json!([{ "name": "ORDERPIPE_CONTROL_TOPIC", "value": "c" }]);
    let rolled = json!({ "observedGeneration": 4, "replicas": 2, "updatedReplicas": 2 });
    assert!(follows_control(&workload(control.clone(), rolled.clone())));
    // Argo Rollouts' string generation.
    let argo = json!({ "observedGeneration": "4", "replicas": 2, "updatedReplicas": 2 });
    assert!(follows_control(&workload(control.clone(), argo)));
    // Old pods still running, a template not yet observed, or no variable: not yet.
    let rolling = json!({ "observedGeneration": 4, "replicas": 3, "updatedReplicas": 2 });
    assert!(!follows_control(&workload(control.clone(), rolling)));
    let stale = json!({ "observedGeneration": 3, "replicas": 2, "updatedReplicas": 2 });
    assert!(!follows_control(&workload(control, stale)));
    assert!(!follows_control(&workload(json!([]), rolled)));
    // A parked stage (no replicas) runs no old worker.
    let parked = json!({ "observedGeneration": 4 });
    assert!(follows_control(&workload(
        json!([{ "name": "ORDERPIPE_CONTROL_TOPIC", "value": "c" }]),
        parked
    )));
}

#[test]
fn a_growth_is_asked_for_only_by_a_coordinated_input_declared_above_its_live_count() {
    let inputs = coordinated_inputs(&pipeline(6));
    let sizes = |pairs: &[(&str, i32)]| -> BTreeMap<String, i32> {
        pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    };
    let declared = sizes(&[("orders", 6), ("orders.dlq", 4)]);
    assert!(asked(&inputs, &declared, &sizes(&[("orders", 3)])));
    assert!(!asked(
        &inputs,
        &declared,
        &sizes(&[("orders", 6), ("orders.dlq", 1)])
    ));
    assert!(!asked(&inputs, &declared, &sizes(&[])), "not created yet");
}
