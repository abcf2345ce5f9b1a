//! Every planning rule, each test named after the invariant it guards.

use orderpipe_api::OrderPipelineStatus;

use super::*;

const STATE: &str = "orderpipe.shop.checkout.validate.state";
const CONTROL: &str = "orderpipe.shop.checkout.control";

#[test]
fn the_control_topic_comes_with_the_first_growth_of_a_stage_input_and_stays() {
    let names = |pipeline: &OrderPipeline| -> Vec<String> {
        desired_topics(pipeline)
            .into_iter()
            .map(|t| t.name)
            .collect()
    };
    // New, and reconciled at its declared size: no control topic.
    let pipeline = checkout();
    assert!(!names(&pipeline).contains(&CONTROL.to_owned()));
    let reconciled = reconciled(checkout());
    assert!(!names(&reconciled).contains(&CONTROL.to_owned()));
    // A stage input declared above what the status recorded: a growth is asked for.
    let mut growing = reconciled.clone();
    growing
        .spec
        .topics
        .iter_mut()
        .filter(|t| t.name == "orders")
        .for_each(|t| t.partitions *= 2);
    assert!(names(&growing).contains(&CONTROL.to_owned()));
    let control = desired_topics(&growing)
        .into_iter()
        .find(|t| t.name == CONTROL)
        .expect("control topic");
    assert_eq!(control.partitions, 1);
    assert_eq!(
        control.config.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );
    // Growing a topic no stage reads asks for none.
    let mut other = reconciled.clone();
    other
        .spec
        .topics
        .iter_mut()
        .filter(|t| t.name == "orders.dlq")
        .for_each(|t| t.partitions *= 2);
    assert!(!names(&other).contains(&CONTROL.to_owned()));
    // Once recorded, it stays (with the growth done and the sizes equal again).
    let kept = with_status(
        reconciled.clone(),
        plan_alone(&growing, &BTreeMap::new()).statuses,
        false,
    );
    assert!(names(&kept).contains(&CONTROL.to_owned()));
}

/// The validate stage of the checkout pipeline: four declared topics and one state topic.
fn checkout() -> OrderPipeline {
    named("checkout", "2026-01-01T00:00:00Z")
}

fn named(name: &str, created: &str) -> OrderPipeline {
    OrderPipeline::test(name)
        .in_namespace("shop")
        .created_at(created)
        .generation(1)
        .bootstrap("kafka:9092")
        .partitions("orders", 6)
        .replication_factor("orders", 3)
        .topic_config("orders", "retention.ms", "604800000")
        .topic_config("orders", "min.insync.replicas", "2")
        .partitions("orders.validated", 6)
        .partitions("orders.rejected", 3)
        .deletion_policy("orders.dlq", DeletionPolicy::Delete)
}

/// What Kafka has once every desired topic exists as declared (broker default replication: 1).
fn converged(pipeline: &OrderPipeline) -> BTreeMap<String, ObservedTopic> {
    desired_topics(pipeline)
        .into_iter()
        .map(|topic| {
            let observed = ObservedTopic {
                partitions: topic.partitions,
                replication_factor: topic.replication_factor.unwrap_or(1),
                config: topic.config,
            };
            (topic.name, observed)
        })
        .collect()
}

fn plan_among(
    me: &OrderPipeline,
    all: &[&OrderPipeline],
    observed: &BTreeMap<String, ObservedTopic>,
) -> TopicPlan {
    let owners = OwnershipView::new(me, all.iter().copied(), None);
    let described = Described {
        topics: observed.clone(),
        brokers: None,
    };
    plan(
        &desired_topics(me),
        &described,
        &owners,
        &LastStatus::of(me),
    )
}

fn plan_alone(me: &OrderPipeline, observed: &BTreeMap<String, ObservedTopic>) -> TopicPlan {
    plan_among(me, &[me], observed)
}

/// Records `statuses` as the pipeline's last status; `spec_changed` makes the generation newer.
fn with_status(
    mut pipeline: OrderPipeline,
    statuses: Vec<TopicStatus>,
    spec_changed: bool,
) -> OrderPipeline {
    let generation = pipeline.metadata.generation.unwrap_or_default();
    pipeline.status = Some(OrderPipelineStatus {
        observed_generation: Some(if spec_changed {
            generation - 1
        } else {
            generation
        }),
        topics: statuses,
        ..OrderPipelineStatus::default()
    });
    pipeline
}

/// The pipeline after the operator created its topics: its status records every topic as
/// managed.
fn reconciled(pipeline: OrderPipeline) -> OrderPipeline {
    let statuses = plan_alone(&pipeline, &BTreeMap::new()).statuses;
    with_status(pipeline, statuses, false)
}

fn status<'a>(plan: &'a TopicPlan, name: &str) -> &'a TopicStatus {
    plan.statuses
        .iter()
        .find(|s| s.name == name)
        .expect("topic has a status")
}

fn actions_on<'a>(plan: &'a TopicPlan, name: &str) -> Vec<&'a TopicAction> {
    plan.actions
        .iter()
        .filter(|action| action.topic() == name)
        .collect()
}

fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn missing_topics_are_created_as_declared() {
    let pipeline = checkout();
    let plan = plan_alone(&pipeline, &BTreeMap::new());

    let created: Vec<&str> = plan.actions.iter().map(TopicAction::topic).collect();
    assert_eq!(
        created,
        [
            "orders",
            "orders.validated",
            "orders.rejected",
            "orders.dlq",
            STATE
        ]
    );
    assert_eq!(
        plan.actions[0],
        TopicAction::Create {
            name: "orders".into(),
            partitions: 6,
            replication_factor: Some(3),
            config: config(&[("min.insync.replicas", "2"), ("retention.ms", "604800000")]),
        }
    );
    assert!(
        matches!(
            &plan.actions[1],
            TopicAction::Create {
                replication_factor: None,
                ..
            }
        ),
        "unset replication factor is the broker default"
    );
    assert_eq!(plan.actions[0].change().reason, "TopicCreated");
    assert!(
        plan.statuses
            .iter()
            .all(|s| s.ready && s.deletion_policy.is_some())
    );
}

#[test]
fn a_converged_pipeline_plans_nothing_and_reports_the_same_status_again() {
    let pipeline = reconciled(checkout());
    let plan = plan_alone(&pipeline, &converged(&pipeline));
    assert_eq!(plan.actions, []);
    let last = &pipeline.status.as_ref().expect("reconciled").topics;
    assert_eq!(
        &plan.statuses, last,
        "a no-op reconcile must not change the status"
    );
}

#[test]
fn partitions_never_decrease() {
    let pipeline = reconciled(checkout());
    let mut observed = converged(&pipeline);
    observed
        .get_mut("orders.rejected")
        .expect("converged")
        .partitions = 12;
    let plan = plan_alone(&pipeline, &observed);

    assert_eq!(
        actions_on(&plan, "orders.rejected"),
        Vec::<&TopicAction>::new()
    );
    let refused = status(&plan, "orders.rejected");
    assert!(!refused.ready, "the topic is not as declared");
    assert_eq!(refused.reason.as_deref(), Some("PartitionDecreaseRefused"));
    assert_eq!(
        refused.partitions,
        Some(12),
        "the status reports what Kafka has"
    );
    assert!(
        refused
            .message
            .as_deref()
            .is_some_and(|m| m.contains("declare 12"))
    );
    assert!(
        status(&plan, "orders").ready,
        "planning goes on for the other topics"
    );
}

#[test]
fn growing_partitions_emits_an_event_about_key_remapping() {
    let pipeline = reconciled(checkout());
    let mut observed = converged(&pipeline);
    observed
        .get_mut("orders.validated")
        .expect("converged")
        .partitions = 4;
    let plan = plan_alone(&pipeline, &observed);

    let grow = TopicAction::AddPartitions {
        name: "orders.validated".into(),
        from: 4,
        to: 6,
        generation: None,
    };
    assert_eq!(actions_on(&plan, "orders.validated"), [&grow]);
    let change = grow.change();
    assert_eq!(change.reason, "PartitionsIncreased");
    assert!(change.note.contains("from 4 to 6") && change.note.contains("keys are remapped"));
    assert_eq!(status(&plan, "orders.validated").partitions, Some(6));
}

#[test]
fn drifted_config_is_restored() {
    let pipeline = reconciled(checkout());
    let mut observed = converged(&pipeline);
    let live = observed.get_mut("orders").expect("converged");
    live.config.insert("retention.ms".into(), "1000".into());
    let plan = plan_alone(&pipeline, &observed);

    let restore = TopicAction::AlterConfig {
        name: "orders".into(),
        set: config(&[("retention.ms", "604800000")]),
        reason: ConfigReason::Restored,
    };
    assert_eq!(actions_on(&plan, "orders"), [&restore]);
    assert_eq!(restore.change().reason, "TopicConfigRestored");
    assert!(restore.change().note.contains("retention.ms=604800000"));
}

#[test]
fn a_config_value_edited_in_the_spec_is_configured_not_restored() {
    let mut pipeline = reconciled(checkout());
    let observed = converged(&pipeline);
    pipeline.spec.topics[0].config.insert(
        "retention.ms".into(),
        orderpipe_api::v1alpha1::TopicConfigValue("86400000".into()),
    );
    pipeline.metadata.generation = Some(2);
    let plan = plan_alone(&pipeline, &observed);

    assert!(matches!(
        actions_on(&plan, "orders")[..],
        [TopicAction::AlterConfig {
            reason: ConfigReason::Configured,
            ..
        }]
    ));
}

#[test]
fn an_existing_topic_nobody_manages_is_left_alone_until_the_spec_opts_in() {
    let pipeline = checkout();
    let mut observed = converged(&pipeline);
    observed.get_mut("orders").expect("converged").config = config(&[("retention.ms", "1000")]);
    observed.get_mut("orders").expect("converged").partitions = 2;
    let plan = plan_alone(&pipeline, &observed);

    assert_eq!(actions_on(&plan, "orders"), Vec::<&TopicAction>::new());
    assert_eq!(
        actions_on(&plan, STATE),
        Vec::<&TopicAction>::new(),
        "its state topic follows it"
    );
    let refused = status(&plan, "orders");
    assert!(!refused.ready);
    assert_eq!(refused.reason.as_deref(), Some("AdoptionRequired"));
    assert_eq!(refused.partitions, Some(2), "what Kafka has");
    assert_eq!(
        refused.deletion_policy, None,
        "not managed, so never deleted by this pipeline"
    );
    let message = refused.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("did not create it")
            && message.contains("spec.topics[name=orders].adopt: true"),
        "{message}"
    );
    let state = status(&plan, STATE);
    assert_eq!(state.reason.as_deref(), Some("AdoptionRequired"));
    assert!(
        state
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("spec.topics[name=orders].adopt (state topic"),
        "{state:?}"
    );

    // The same topics, recorded as created by this pipeline: managed without opting in.
    let plan = plan_alone(&reconciled(checkout()), &observed);
    assert_eq!(
        status(&plan, "orders").deletion_policy,
        Some(DeletionPolicy::Retain)
    );
    assert!(!actions_on(&plan, "orders").is_empty());
}

#[test]
fn creations_are_recorded_before_they_run_and_only_when_new() {
    let pipeline = checkout();
    let plan = plan_alone(&pipeline, &BTreeMap::new());
    let recorded = creation_record(&plan, &LastStatus::of(&pipeline)).expect("five creations");
    assert_eq!(recorded.len(), 5);
    for topic in &recorded {
        assert!(!topic.ready);
        assert_eq!(topic.reason.as_deref(), Some("Creating"));
        assert!(
            topic.deletion_policy.is_some(),
            "{topic:?} is recorded as managed"
        );
    }
    // Recorded, the topics exist after a crash and are managed, not up for adoption.
    let after_crash = with_status(checkout(), recorded, false);
    let plan = plan_alone(&after_crash, &converged(&after_crash));
    assert!(plan.statuses.iter().all(|s| s.ready), "{:?}", plan.statuses);

    // A recorded creation that failed is created again without another record.
    let retry = plan_alone(&after_crash, &BTreeMap::new());
    assert_eq!(retry.actions.len(), 5);
    assert_eq!(creation_record(&retry, &LastStatus::of(&after_crash)), None);

    // One new topic: the record keeps the others' last statuses and adds it.
    let grown = with_status(
        checkout().topic("orders.audit", 1),
        plan_alone(&checkout(), &BTreeMap::new()).statuses,
        true,
    );
    let plan = plan_alone(&grown, &converged(&checkout()));
    let recorded = creation_record(&plan, &LastStatus::of(&grown)).expect("one creation");
    assert_eq!(recorded.len(), 6);
    let creating: Vec<&str> = recorded
        .iter()
        .filter(|s| s.reason.as_deref() == Some("Creating"))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(creating, ["orders.audit"]);
}

#[test]
fn an_existing_topic_is_adopted_on_opt_in_and_given_its_declared_config() {
    let pipeline = checkout().adopt("orders");
    let mut observed = converged(&pipeline);
    observed.get_mut("orders").expect("converged").config = config(&[("retention.ms", "1000")]);
    let plan = plan_alone(&pipeline, &observed);

    let configure = TopicAction::AlterConfig {
        name: "orders".into(),
        set: config(&[("min.insync.replicas", "2"), ("retention.ms", "604800000")]),
        reason: ConfigReason::Configured,
    };
    assert_eq!(actions_on(&plan, "orders"), [&configure]);
    assert_eq!(configure.change().reason, "TopicConfigured");
    assert_eq!(
        status(&plan, "orders").deletion_policy,
        Some(DeletionPolicy::Retain)
    );
}

#[test]
fn undeclared_config_keys_are_left_alone() {
    let pipeline = reconciled(checkout());
    let mut observed = converged(&pipeline);
    let live = observed.get_mut("orders").expect("converged");
    live.config.insert("segment.bytes".into(), "1048576".into());
    live.config.insert("min.insync.replicas".into(), "1".into());
    let plan = plan_alone(&pipeline, &observed);

    let [TopicAction::AlterConfig { set, .. }] = actions_on(&plan, "orders")[..] else {
        panic!("expected one config change, got {:?}", plan.actions);
    };
    assert_eq!(
        set,
        &config(&[("min.insync.replicas", "2")]),
        "only the drifted declared key"
    );
}

#[test]
fn replication_factor_mismatch_is_reported_without_an_action() {
    let pipeline = reconciled(checkout());
    let mut observed = converged(&pipeline);
    observed
        .get_mut("orders")
        .expect("converged")
        .replication_factor = 1;
    let plan = plan_alone(&pipeline, &observed);

    assert_eq!(actions_on(&plan, "orders"), Vec::<&TopicAction>::new());
    let mismatch = status(&plan, "orders");
    assert!(!mismatch.ready);
    assert_eq!(
        mismatch.reason.as_deref(),
        Some("ReplicationFactorMismatch")
    );
    // The broker default accepts whatever the topic has.
    observed
        .get_mut("orders.validated")
        .expect("converged")
        .replication_factor = 5;
    assert!(status(&plan_alone(&pipeline, &observed), "orders.validated").ready);
}

#[test]
fn several_issues_keep_the_first_reason_and_say_everything() {
    let pipeline = reconciled(checkout());
    let mut observed = converged(&pipeline);
    let live = observed.get_mut("orders").expect("converged");
    live.partitions = 9;
    live.replication_factor = 1;
    let plan = plan_alone(&pipeline, &observed);

    let orders = status(&plan, "orders");
    assert_eq!(orders.reason.as_deref(), Some("PartitionDecreaseRefused"));
    let message = orders.message.as_deref().unwrap_or_default();
    assert!(message.contains("9 partitions") && message.contains("replication factor 1"));
}

#[test]
fn older_pipeline_keeps_a_shared_topic_and_newer_gets_conflict() {
    let older = reconciled(checkout());
    let newer = named("returns", "2026-03-01T00:00:00Z");
    let mut observed = converged(&older);
    observed.get_mut("orders").expect("converged").config = BTreeMap::new();

    let plan = plan_among(&newer, &[&older, &newer], &observed);
    assert_eq!(actions_on(&plan, "orders"), Vec::<&TopicAction>::new());
    let conflict = status(&plan, "orders");
    assert!(!conflict.ready);
    assert_eq!(conflict.reason.as_deref(), Some("Conflict"));
    assert_eq!(
        conflict.message.as_deref(),
        Some("topic orders is owned by OrderPipeline shop/checkout (created earlier)")
    );
    assert_eq!(
        conflict.deletion_policy, None,
        "not managed, so never deleted by this pipeline"
    );

    let plan = plan_among(&older, &[&older, &newer], &observed);
    assert!(matches!(
        actions_on(&plan, "orders")[..],
        [TopicAction::AlterConfig { .. }]
    ));
    assert!(status(&plan, "orders").ready);
}

#[test]
fn retained_topic_is_not_deleted_when_removed_from_spec() {
    let mut pipeline = reconciled(checkout());
    pipeline
        .spec
        .topics
        .retain(|topic| topic.name != "orders.rejected");
    let plan = plan_alone(&pipeline, &converged(&reconciled(checkout())));

    assert_eq!(
        actions_on(&plan, "orders.rejected"),
        Vec::<&TopicAction>::new()
    );
    assert!(
        plan.statuses.iter().all(|s| s.name != "orders.rejected"),
        "a released topic leaves the status"
    );
}

#[test]
fn delete_policy_deletes_only_own_topics() {
    let mut pipeline = reconciled(checkout());
    let observed = converged(&pipeline);
    let topics = &mut pipeline.status.as_mut().expect("reconciled").topics;
    // Seen as a conflict earlier: never managed here, though it carries Delete in someone's spec.
    topics.push(TopicStatus {
        name: "foreign".into(),
        ..TopicStatus::default()
    });
    let mut observed_too = observed.clone();
    observed_too.insert("foreign".into(), observed["orders.dlq"].clone());
    pipeline
        .spec
        .topics
        .retain(|topic| topic.name != "orders.dlq");

    let plan = plan_alone(&pipeline, &observed_too);
    assert_eq!(
        plan.actions,
        [TopicAction::Delete {
            name: "orders.dlq".into()
        }]
    );
    let deleting = status(&plan, "orders.dlq");
    assert_eq!(deleting.reason.as_deref(), Some("Deleting"));
    assert_eq!(
        deleting.deletion_policy,
        Some(DeletionPolicy::Delete),
        "kept until it is gone"
    );
    assert_eq!(plan.actions[0].change().reason, "TopicDeleted");

    // A live pipeline on the cluster that declares it now keeps it.
    let other = named("returns", "2026-03-01T00:00:00Z");
    let plan = plan_among(&pipeline, &[&pipeline, &other], &observed_too);
    assert_eq!(plan.actions, []);
}

#[test]
fn a_removed_topic_that_is_already_gone_needs_nothing() {
    let mut pipeline = reconciled(checkout());
    let mut observed = converged(&pipeline);
    observed.remove("orders.dlq");
    pipeline
        .spec
        .topics
        .retain(|topic| topic.name != "orders.dlq");
    let plan = plan_alone(&pipeline, &observed);
    assert_eq!(plan.actions, []);
    assert!(plan.statuses.iter().all(|s| s.name != "orders.dlq"));
}

#[test]
fn validate_state_topic_is_compacted_keeps_the_dedup_window_and_follows_its_input() {
    let desired = desired_topics(&checkout());
    let state = desired
        .iter()
        .find(|t| t.name == STATE)
        .expect("validate is stateful");
    assert_eq!(
        state.config,
        config(&[
            ("cleanup.policy", "compact,delete"),
            ("retention.ms", "604800000")
        ])
    );
    assert_eq!(state.partitions, 6);
    assert_eq!(state.replication_factor, Some(3));
    assert_eq!(state.deletion_policy, DeletionPolicy::Retain);
    assert_eq!(state.co_partitioned_with.as_deref(), Some("orders"));
}

#[test]
fn state_topic_follows_input_partitions() {
    // The spec grows the input: both grow in the same plan.
    let mut pipeline = reconciled(checkout());
    let observed = converged(&pipeline);
    pipeline.spec.topics[0].partitions = 12;
    let plan = plan_alone(&pipeline, &observed);
    let grow = |name: &str| TopicAction::AddPartitions {
        name: name.into(),
        from: 6,
        to: 12,
        generation: None,
    };
    assert_eq!(actions_on(&plan, "orders"), [&grow("orders")]);
    assert_eq!(actions_on(&plan, STATE), [&grow(STATE)]);

    // The input was grown out of band: the changelog follows what the input has.
    let pipeline = reconciled(checkout());
    let mut observed = converged(&pipeline);
    observed.get_mut("orders").expect("converged").partitions = 9;
    let plan = plan_alone(&pipeline, &observed);
    assert_eq!(
        status(&plan, "orders").reason.as_deref(),
        Some("PartitionDecreaseRefused")
    );
    let follow = TopicAction::AddPartitions {
        name: STATE.into(),
        from: 6,
        to: 9,
        generation: None,
    };
    assert_eq!(actions_on(&plan, STATE), [&follow]);

    // Created together with a new input: same count.
    let plan = plan_alone(&checkout(), &BTreeMap::new());
    assert!(matches!(
        actions_on(&plan, STATE)[..],
        [TopicAction::Create { partitions: 6, .. }]
    ));
}

#[test]
fn a_state_topic_of_an_input_owned_elsewhere_follows_what_the_input_has() {
    let older = named("intake", "2025-01-01T00:00:00Z");
    let pipeline = checkout();
    let mut observed = BTreeMap::new();
    observed.insert(
        "orders".to_owned(),
        ObservedTopic {
            partitions: 4,
            replication_factor: 3,
            config: BTreeMap::new(),
        },
    );
    let plan = plan_among(&pipeline, &[&older, &pipeline], &observed);
    assert_eq!(status(&plan, "orders").reason.as_deref(), Some("Conflict"));
    assert!(matches!(
        actions_on(&plan, STATE)[..],
        [TopicAction::Create { partitions: 4, .. }]
    ));
}

#[test]
fn an_explicitly_declared_state_topic_name_keeps_the_users_settings() {
    let mut pipeline = checkout();
    let mut explicit = pipeline.spec.topics[1].clone();
    explicit.name = STATE.into();
    explicit.partitions = 2;
    pipeline.spec.topics.push(explicit);
    let desired = desired_topics(&pipeline);
    let states: Vec<&DesiredTopic> = desired.iter().filter(|t| t.name == STATE).collect();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].partitions, 2);
    assert_eq!(states[0].co_partitioned_with, None);
}

#[test]
fn query_covers_desired_topics_deletion_candidates_and_declared_keys() {
    let mut pipeline = reconciled(checkout());
    pipeline
        .spec
        .topics
        .retain(|topic| topic.name != "orders.dlq");
    let desired = desired_topics(&pipeline);
    let query = TopicQuery::new(&desired, &LastStatus::of(&pipeline));
    let names: Vec<&str> = query.names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            STATE,
            "orders",
            "orders.dlq",
            "orders.rejected",
            "orders.validated"
        ]
    );
    let keys: Vec<&str> = query.config_keys.iter().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["cleanup.policy", "min.insync.replicas", "retention.ms"]
    );
}

#[test]
fn finalize_deletes_managed_delete_topics_that_no_live_pipeline_declares() {
    let mut pipeline = reconciled(checkout());
    // Left the spec earlier and still being deleted: the recorded policy applies.
    let topics = &mut pipeline.status.as_mut().expect("reconciled").topics;
    topics.push(TopicStatus {
        name: "orders.old".into(),
        deletion_policy: Some(DeletionPolicy::Delete),
        ..TopicStatus::default()
    });
    topics.push(TopicStatus {
        name: "foreign".into(),
        ..TopicStatus::default()
    });

    let owners = OwnershipView::new(&pipeline, [&pipeline], None);
    let deleted: Vec<String> = finalize_plan(&pipeline, &owners)
        .actions
        .iter()
        .map(|action| action.topic().to_owned())
        .collect();
    assert_eq!(deleted, ["orders.dlq", "orders.old"]);

    let other = named("returns", "2026-03-01T00:00:00Z");
    let owners = OwnershipView::new(&pipeline, [&pipeline, &other], None);
    let deleted: Vec<String> = finalize_plan(&pipeline, &owners)
        .actions
        .iter()
        .map(|action| action.topic().to_owned())
        .collect();
    assert_eq!(
        deleted,
        ["orders.old"],
        "orders.dlq is still declared by a live pipeline"
    );
}

#[test]
fn finalize_follows_the_current_spec_policy_and_forgets_nothing_unmanaged() {
    let mut pipeline = reconciled(checkout());
    // The user switched to Retain right before deleting the pipeline.
    pipeline.spec.topics[3].deletion_policy = DeletionPolicy::Retain;
    let owners = OwnershipView::new(&pipeline, [&pipeline], None);
    assert_eq!(finalize_plan(&pipeline, &owners).actions, []);

    // Never reconciled: nothing recorded as managed, nothing deleted.
    let fresh = checkout();
    let owners = OwnershipView::new(&fresh, [&fresh], None);
    assert_eq!(finalize_plan(&fresh, &owners).actions, []);
}

#[test]
fn a_finalizing_plan_lists_the_topics_being_deleted() {
    let pipeline = reconciled(checkout());
    let owners = OwnershipView::new(&pipeline, [&pipeline], None);
    let plan = finalize_plan(&pipeline, &owners);
    let deleting = status(&plan, "orders.dlq");
    assert_eq!(deleting.reason.as_deref(), Some("Deleting"));
    assert_eq!(deleting.partitions, Some(1));
    assert!(
        deleting
            .message
            .as_deref()
            .is_some_and(|m| m.contains("pipeline is being deleted"))
    );
}

#[test]
fn the_finalizer_is_needed_while_a_topic_may_have_to_be_deleted() {
    assert!(
        needs_finalizer(&checkout()),
        "orders.dlq has deletion policy Delete"
    );

    let mut retained = checkout();
    retained.spec.topics[3].deletion_policy = DeletionPolicy::Retain;
    assert!(!needs_finalizer(&retained));

    // Removed from the spec while Delete, and not deleted yet (Kafka was down).
    let mut pending = reconciled(checkout());
    pending
        .spec
        .topics
        .retain(|topic| topic.name != "orders.dlq");
    assert!(needs_finalizer(&pending));
}

#[test]
fn the_last_status_remembers_each_topics_partitions_for_when_kafka_is_unreachable() {
    let mut pipeline = checkout();
    pipeline.status = Some(OrderPipelineStatus {
        topics: vec![
            TopicStatus {
                name: "orders".into(),
                partitions: Some(6),
                ..TopicStatus::default()
            },
            TopicStatus {
                name: "orders.validated".into(),
                partitions: None,
                ..TopicStatus::default()
            },
        ],
        ..Default::default()
    });
    assert_eq!(
        LastStatus::of(&pipeline).partitions(),
        BTreeMap::from([("orders".to_owned(), 6)]),
        "a topic never seen has no count"
    );
    assert!(LastStatus::of(&checkout()).partitions().is_empty());
}

fn plan_on_brokers(
    me: &OrderPipeline,
    observed: &BTreeMap<String, ObservedTopic>,
    brokers: usize,
) -> TopicPlan {
    let owners = OwnershipView::new(me, [me], None);
    let described = Described {
        topics: observed.clone(),
        brokers: Some(brokers),
    };
    plan(
        &desired_topics(me),
        &described,
        &owners,
        &LastStatus::of(me),
    )
}

#[test]
fn a_replication_factor_above_the_brokers_present_is_refused_naming_the_field() {
    let pipeline = checkout();
    let plan = plan_on_brokers(&pipeline, &BTreeMap::new(), 1);

    // `orders` declares 3 replicas, and its state topic follows it: neither is created.
    let created: Vec<&str> = plan.actions.iter().map(TopicAction::topic).collect();
    assert_eq!(
        created,
        ["orders.validated", "orders.rejected", "orders.dlq"]
    );
    let orders = status(&plan, "orders");
    assert!(!orders.ready);
    assert_eq!(orders.reason.as_deref(), Some("ReplicationFactorTooHigh"));
    let message = orders.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("spec.topics[name=orders].replicationFactor is 3")
            && message.contains("1 broker"),
        "{message}"
    );
    let state = status(&plan, STATE);
    assert_eq!(state.reason.as_deref(), Some("ReplicationFactorTooHigh"));
    assert!(
        state
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("spec.topics[name=orders].replicationFactor (state topic"),
        "{state:?}"
    );

    // Three brokers: everything is created as declared.
    let plan = plan_on_brokers(&pipeline, &BTreeMap::new(), 3);
    assert_eq!(plan.actions.len(), 5);
    assert!(plan.statuses.iter().all(|s| s.ready), "{:?}", plan.statuses);
}

#[test]
fn min_insync_replicas_above_the_replicas_is_refused_naming_the_field() {
    let pipeline = checkout()
        .replication_factor("orders.validated", 2)
        .topic_config("orders.validated", "min.insync.replicas", "3");
    let plan = plan_on_brokers(&pipeline, &BTreeMap::new(), 3);
    assert!(actions_on(&plan, "orders.validated").is_empty());
    let validated = status(&plan, "orders.validated");
    assert!(!validated.ready);
    assert_eq!(
        validated.reason.as_deref(),
        Some("MinInsyncReplicasTooHigh")
    );
    let message = validated.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(
            "spec.topics[name=orders.validated].config[min.insync.replicas] is 3 but topic \
             orders.validated has 2 replica(s)"
        ),
        "{message}"
    );

    // An existing topic's replicas count when none is declared; the config is not set on it.
    let pipeline =
        reconciled(checkout().topic_config("orders.rejected", "min.insync.replicas", "2"));
    let mut observed = converged(&pipeline);
    observed
        .get_mut("orders.rejected")
        .expect("observed")
        .config
        .clear();
    let plan = plan_on_brokers(&pipeline, &observed, 3);
    assert!(actions_on(&plan, "orders.rejected").is_empty());
    assert_eq!(
        status(&plan, "orders.rejected").reason.as_deref(),
        Some("MinInsyncReplicasTooHigh")
    );
}

#[test]
fn one_replica_on_a_multi_broker_cluster_stays_ready_with_a_warning() {
    let pipeline = reconciled(checkout());
    // Undeclared replication factors got the broker default, 1.
    let observed = converged(&pipeline);
    let plan = plan_on_brokers(&pipeline, &observed, 3);
    assert!(plan.actions.is_empty());
    let validated = status(&plan, "orders.validated");
    assert!(validated.ready, "a warning, not a failure");
    assert_eq!(validated.reason.as_deref(), Some("SingleReplica"));
    assert!(
        validated
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("1 replica on a cluster of 3 brokers"),
        "{validated:?}"
    );
    assert_eq!(status(&plan, "orders").reason, None, "3 replicas");

    // One broker: nothing better is possible, so nothing to warn about.
    let plan = plan_on_brokers(&pipeline, &observed, 1);
    assert!(plan.statuses.iter().all(|s| s.reason.is_none()));
}
