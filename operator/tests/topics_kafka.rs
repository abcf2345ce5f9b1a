//! Topic management against a real Kafka broker: every reconcile goes through the same steps as the
//! controller's (ownership, desired, describe, plan, execute) and the results are checked with a
//! separate rdkafka admin client, as an outsider would see them.
//!
//! Needs the local stack (`make test-e2e`, or `make e2e-up`); the outsider's view is the stack's
//! Kafka kit. Each test works on topics with a unique prefix, so tests run in parallel and leave
//! other topics alone.

use std::collections::{BTreeMap, HashMap};

use orderpipe_api::{OrderPipeline, OrderPipelineStatus};
use orderpipe_operator::topics::{
    AdminPool, AdminSettings, DesiredTopic, Effect, ErrorCategory, KafkaTopicAdmin, LastStatus,
    OwnershipView, ResolvedKafkaSecrets, TopicAdmin, TopicOutcome, TopicQuery, desired_topics,
    execute, finalize_plan, plan,
};
use orderpipe_stack::{
    alter_topic_config, create_topics, kafka_bootstrap, partition_count, topic_config, unique_name,
};

fn bootstrap() -> String {
    kafka_bootstrap().expect("the local stack's broker")
}

/// A pipeline whose validate stage reads `<p>.orders`; `<p>.dlq` has deletion policy Delete.
fn pipeline(prefix: &str, orders_partitions: i32) -> OrderPipeline {
    let orders = format!("{prefix}.orders");
    OrderPipeline::test(prefix)
        .in_namespace("it")
        .created_at("2026-01-01T00:00:00Z")
        .generation(1)
        .bootstrap(&bootstrap())
        .topic_prefix(prefix)
        .partitions(&orders, orders_partitions)
        .topic_config(&orders, "retention.ms", "3600000")
        .topic_config(&orders, "max.message.bytes", "500000")
        .partitions(&format!("{prefix}.validated"), 2)
        .deletion_policy(
            &format!("{prefix}.dlq"),
            orderpipe_api::v1alpha1::DeletionPolicy::Delete,
        )
}

fn state_topic(prefix: &str) -> String {
    format!("orderpipe.it.{prefix}.validate.state")
}

fn admin() -> KafkaTopicAdmin {
    let pool = AdminPool::new(AdminSettings::default());
    let spec = pipeline("unused", 1).spec.kafka;
    pool.get(&spec, &ResolvedKafkaSecrets::default())
        .expect("admin client")
}

/// One topic reconcile as the controller runs it, then the status write it would make.
async fn reconcile(pipeline: &mut OrderPipeline, admin: &KafkaTopicAdmin) -> TopicOutcome {
    let owners = OwnershipView::new(pipeline, [&*pipeline], None);
    let desired = desired_topics(pipeline);
    let last = LastStatus::of(pipeline);
    let query = TopicQuery::new(&desired, &last);
    let described = admin.describe(&query).await.expect("describe");
    let outcome = execute(admin, plan(&desired, &described, &owners, &last)).await;
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    pipeline.status = Some(OrderPipelineStatus {
        observed_generation: pipeline.metadata.generation,
        topics: outcome.statuses.clone(),
        ..OrderPipelineStatus::default()
    });
    outcome
}

fn reasons(outcome: &TopicOutcome) -> Vec<&'static str> {
    outcome.changes.iter().map(|change| change.reason).collect()
}

/// Partitions of a topic as an outsider sees them; `None` when it does not exist.
fn partitions(topic: &str) -> Option<usize> {
    partition_count(&bootstrap(), topic).expect("topic metadata")
}

/// Effective config values of a topic as an outsider sees them.
fn config(topic: &str) -> HashMap<String, String> {
    topic_config(&bootstrap(), topic).expect("topic config")
}

/// Sets a topic's dynamic config behind the operator's back (legacy AlterConfigs: replaces all).
fn alter_out_of_band(topic: &str, pairs: &[(&str, &str)]) {
    alter_topic_config(&bootstrap(), topic, pairs).expect("config altered");
}

/// The topics of a pipeline, for checks.
fn desired(pipeline: &OrderPipeline) -> BTreeMap<String, DesiredTopic> {
    desired_topics(pipeline)
        .into_iter()
        .map(|topic| (topic.name.clone(), topic))
        .collect()
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn creates_declared_topics_with_their_config_and_a_compacted_state_topic() {
    let prefix = unique_name("create");
    let mut pipeline = pipeline(&prefix, 3);
    let admin = admin();

    let outcome = reconcile(&mut pipeline, &admin).await;
    assert_eq!(reasons(&outcome), ["TopicCreated"; 5]);
    for (name, topic) in desired(&pipeline) {
        assert_eq!(partitions(&name), Some(topic.partitions as usize), "{name}");
    }
    let orders = config(&format!("{prefix}.orders"));
    assert_eq!(
        orders.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(
        orders.get("max.message.bytes").map(String::as_str),
        Some("500000")
    );
    let state = config(&state_topic(&prefix));
    assert_eq!(
        state.get("cleanup.policy").map(String::as_str),
        Some("compact,delete"),
        "validate's dedup records expire"
    );
    assert_eq!(
        state.get("retention.ms").map(String::as_str),
        Some("604800000"),
        "the dedup window"
    );
    assert!(
        outcome.statuses.iter().all(|s| s.ready),
        "{:?}",
        outcome.statuses
    );
    assert_eq!(
        outcome.partitions().get(&format!("{prefix}.orders")),
        Some(&3)
    );
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_second_reconcile_against_the_broker_changes_nothing() {
    let mut pipeline = pipeline(&unique_name("noop"), 3);
    let admin = admin();
    reconcile(&mut pipeline, &admin).await;
    let status = pipeline.status.clone();

    let again = reconcile(&mut pipeline, &admin).await;
    assert_eq!(
        again.operations,
        [],
        "a converged pipeline makes no admin call but describe"
    );
    assert_eq!(pipeline.status, status, "and writes the same status");
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn adopts_an_existing_topic_only_on_opt_in_and_sets_only_its_declared_keys() {
    let prefix = unique_name("adopt");
    let orders = format!("{prefix}.orders");
    create_topics(&bootstrap(), &[(&orders, 3)]).expect("create");
    alter_out_of_band(
        &orders,
        &[("retention.ms", "1000"), ("segment.ms", "7200000")],
    );

    let mut pipeline = pipeline(&prefix, 3);
    let admin = admin();
    let outcome = reconcile(&mut pipeline, &admin).await;
    let refused = outcome
        .statuses
        .iter()
        .find(|s| s.name == orders)
        .expect("a status for the existing topic");
    assert_eq!(refused.reason.as_deref(), Some("AdoptionRequired"));
    assert!(
        outcome.changes.iter().all(|c| !c.note.contains(&orders)),
        "{:?}",
        outcome.changes
    );
    assert_eq!(
        config(&orders).get("retention.ms").map(String::as_str),
        Some("1000"),
        "not adopted: left as it was"
    );

    pipeline = pipeline.adopt(&orders);
    let outcome = reconcile(&mut pipeline, &admin).await;
    let configured: Vec<&str> = outcome
        .changes
        .iter()
        .filter(|c| c.note.contains(&format!("topic {orders}:")))
        .map(|c| c.reason)
        .collect();
    assert_eq!(configured, ["TopicConfigured"], "{:?}", outcome.changes);

    let config = config(&orders);
    assert_eq!(
        config.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(
        config.get("max.message.bytes").map(String::as_str),
        Some("500000")
    );
    assert_eq!(
        config.get("segment.ms").map(String::as_str),
        Some("7200000"),
        "an undeclared key set by someone else survives"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn grows_partitions_of_the_input_and_its_state_topic_together() {
    let prefix = unique_name("grow");
    let mut pipeline = pipeline(&prefix, 2);
    let admin = admin();
    reconcile(&mut pipeline, &admin).await;

    pipeline.spec.topics[0].partitions = 5;
    pipeline.metadata.generation = Some(2);
    let outcome = reconcile(&mut pipeline, &admin).await;
    // Without the growth step (this drives the topic plan alone) the grow is uncoordinated; a
    // stage input growing also brings the pipeline's control topic.
    assert_eq!(
        reasons(&outcome),
        ["PartitionsIncreased", "PartitionsIncreased", "TopicCreated"]
    );
    assert!(
        outcome
            .changes
            .iter()
            .filter(|c| c.reason == "PartitionsIncreased")
            .all(|c| c.note.contains("keys are remapped"))
    );
    assert_eq!(partitions(&format!("{prefix}.orders")), Some(5));
    assert_eq!(
        partitions(&state_topic(&prefix)),
        Some(5),
        "the changelog stays co-partitioned"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn restores_drifted_config_and_leaves_an_undeclared_key_alone() {
    let prefix = unique_name("drift");
    let orders = format!("{prefix}.orders");
    let mut pipeline = pipeline(&prefix, 3);
    let admin = admin();
    reconcile(&mut pipeline, &admin).await;

    // Someone changes a declared key and adds one the operator does not manage.
    alter_out_of_band(
        &orders,
        &[
            ("retention.ms", "1000"),
            ("max.message.bytes", "500000"),
            ("segment.ms", "7200000"),
        ],
    );
    let outcome = reconcile(&mut pipeline, &admin).await;
    assert_eq!(reasons(&outcome), ["TopicConfigRestored"]);
    assert!(outcome.changes[0].note.contains("retention.ms=3600000"));

    let config = config(&orders);
    assert_eq!(
        config.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(
        config.get("segment.ms").map(String::as_str),
        Some("7200000")
    );
    assert_eq!(
        reasons(&reconcile(&mut pipeline, &admin).await),
        Vec::<&str>::new()
    );
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn deletes_a_removed_delete_policy_topic_and_keeps_a_retained_one() {
    let prefix = unique_name("remove");
    let mut pipeline = pipeline(&prefix, 1);
    let admin = admin();
    reconcile(&mut pipeline, &admin).await;

    // Nothing reads the dead-letter or rejected topics any more (a custom stage without outputs).
    pipeline.spec.stages[0].dead_letter = format!("{prefix}.validated");
    pipeline.spec.stages[0].outputs.clear();
    pipeline.spec.stages[0].processor = orderpipe_api::v1alpha1::Processor::Custom;
    pipeline.spec.stages[0].image = Some("example/copy:1".into());
    pipeline
        .spec
        .topics
        .retain(|t| !t.name.ends_with(".dlq") && !t.name.ends_with(".rejected"));
    pipeline.metadata.generation = Some(2);
    let outcome = reconcile(&mut pipeline, &admin).await;

    assert_eq!(reasons(&outcome), ["TopicDeleted"], "{:?}", outcome.changes);
    assert_eq!(
        partitions(&format!("{prefix}.dlq")),
        None,
        "deletionPolicy Delete"
    );
    assert_eq!(
        partitions(&format!("{prefix}.rejected")),
        Some(1),
        "deletionPolicy Retain"
    );
    assert_eq!(
        partitions(&state_topic(&prefix)),
        Some(1),
        "Retain, like its input"
    );
    let listed: Vec<&str> = outcome.statuses.iter().map(|s| s.name.as_str()).collect();
    assert!(
        !listed
            .iter()
            .any(|name| name.ends_with(".dlq") || name.ends_with(".rejected"))
    );
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn finalizing_deletes_the_delete_policy_topics_only() {
    let prefix = unique_name("final");
    let mut pipeline = pipeline(&prefix, 1);
    let admin = admin();
    reconcile(&mut pipeline, &admin).await;

    let owners = OwnershipView::new(&pipeline, [&pipeline], None);
    let outcome = execute(&admin, finalize_plan(&pipeline, &owners)).await;
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert_eq!(reasons(&outcome), ["TopicDeleted"]);
    assert_eq!(partitions(&format!("{prefix}.dlq")), None);
    assert_eq!(partitions(&format!("{prefix}.orders")), Some(1));
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn create_and_delete_are_idempotent_and_describe_never_creates() {
    let topic = unique_name("idem");
    let admin = admin();
    let query = TopicQuery {
        names: [topic.clone()].into(),
        config_keys: Default::default(),
    };
    let described = admin.describe(&query).await.expect("describe");
    assert!(described.topics.is_empty());
    assert_eq!(
        partitions(&topic),
        None,
        "describing a missing topic must not create it"
    );

    let none = BTreeMap::new();
    assert_eq!(
        admin.create(&topic, 1, None, &none).await.expect("create"),
        Effect::Applied
    );
    let raced = admin
        .create(&topic, 1, None, &none)
        .await
        .expect("exists: success");
    assert_eq!(raced, Effect::AlreadyInPlace);
    let described = admin.describe(&query).await.expect("describe");
    let replication = described.topics.get(&topic).map(|t| t.replication_factor);
    assert_eq!(replication, Some(1), "-1 became the broker default");

    assert_eq!(admin.delete(&topic).await.expect("delete"), Effect::Applied);
    assert_eq!(
        admin.delete(&topic).await.expect("gone: success"),
        Effect::AlreadyInPlace
    );
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn broker_refusals_are_typed_and_categorised() {
    let topic = unique_name("refused");
    let admin = admin();
    // One broker cannot hold three replicas.
    let error = admin
        .create(&topic, 1, Some(3), &BTreeMap::new())
        .await
        .expect_err("refused");
    assert_eq!(error.category(), ErrorCategory::Invalid, "{error}");
    assert_eq!(error.topic(), Some(topic.as_str()));

    let error = admin
        .add_partitions(&topic, 2)
        .await
        .expect_err("no such topic");
    assert_eq!(error.topic(), Some(topic.as_str()), "{error}");
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn an_applied_change_is_visible_to_the_very_next_describe() {
    // The status write after a change triggers the next reconcile at once: it must not see the
    // topics as they were before (KRaft brokers serve metadata that lags the controller a little).
    let admin = admin();
    let set: BTreeMap<String, String> = [("retention.ms".to_owned(), "7200000".to_owned())].into();
    for _ in 0..10 {
        let topic = unique_name("visible");
        let query = TopicQuery {
            names: [topic.clone()].into(),
            config_keys: set.keys().cloned().collect(),
        };
        let seen = async || {
            admin
                .describe(&query)
                .await
                .expect("describe")
                .topics
                .remove(&topic)
        };
        admin
            .create(&topic, 1, None, &BTreeMap::new())
            .await
            .expect("create");
        assert_eq!(seen().await.map(|t| t.partitions), Some(1), "created");
        admin.add_partitions(&topic, 3).await.expect("grow");
        assert_eq!(seen().await.map(|t| t.partitions), Some(3), "grown");
        admin.alter_config(&topic, &set).await.expect("alter");
        assert_eq!(
            seen().await.map(|t| t.config),
            Some(set.clone()),
            "configured"
        );
        admin.delete(&topic).await.expect("delete");
        assert_eq!(seen().await, None, "deleted");
    }
}
