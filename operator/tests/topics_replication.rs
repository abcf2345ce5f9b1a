//! Replication checks of topic management against the brokers actually present: a declared
//! `replicationFactor` above them, or `min.insync.replicas` above a topic's replicas, is refused
//! with a status naming the field (nothing created); one replica on a multi-broker cluster is
//! ready with a warning. On the shared one-broker stack and on a private three-broker cluster, one
//! of whose brokers is killed and restarted. Reconciles run the controller's steps (desired,
//! describe, plan, execute). Needs the e2e tools (`make test-e2e`).

use std::time::Duration;

use orderpipe_api::OrderPipeline;
use orderpipe_api::v1alpha1::TopicStatus;
use orderpipe_operator::topics::{
    AdminPool, AdminSettings, KafkaTopicAdmin, LastStatus, OwnershipView, ResolvedKafkaSecrets,
    TopicAdmin, TopicOutcome, TopicQuery, desired_topics, execute, plan,
};
use orderpipe_stack::{
    Stack, kafka_bootstrap, partition_count, partition_infos, unique_name, wait_until,
};

/// A pipeline on `bootstrap` whose validate stage reads `<p>.orders`.
fn pipeline(prefix: &str, bootstrap: &str) -> OrderPipeline {
    OrderPipeline::test(prefix)
        .in_namespace("it")
        .created_at("2026-01-01T00:00:00Z")
        .generation(1)
        .bootstrap(bootstrap)
        .topic_prefix(prefix)
        .partitions(&format!("{prefix}.orders"), 3)
        .partitions(&format!("{prefix}.validated"), 3)
}

fn admin(pipeline: &OrderPipeline) -> KafkaTopicAdmin {
    AdminPool::new(AdminSettings::default())
        .get(&pipeline.spec.kafka, &ResolvedKafkaSecrets::default())
        .expect("admin client")
}

/// One topic reconcile as the controller runs it.
async fn reconcile(pipeline: &OrderPipeline, admin: &KafkaTopicAdmin) -> TopicOutcome {
    let owners = OwnershipView::new(pipeline, [pipeline], None);
    let desired = desired_topics(pipeline);
    let last = LastStatus::of(pipeline);
    let query = TopicQuery::new(&desired, &last);
    let described = admin.describe(&query).await.expect("describe");
    let outcome = execute(admin, plan(&desired, &described, &owners, &last)).await;
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    outcome
}

fn status<'a>(outcome: &'a TopicOutcome, name: &str) -> &'a TopicStatus {
    outcome
        .statuses
        .iter()
        .find(|s| s.name == name)
        .expect("a status for the topic")
}

fn message(status: &TopicStatus) -> &str {
    status.message.as_deref().unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn three_replicas_on_the_one_broker_stack_are_refused_naming_the_field() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let prefix = unique_name("rf");
    let orders = format!("{prefix}.orders");
    let pipeline = pipeline(&prefix, &bootstrap).replication_factor(&orders, 3);
    let admin = admin(&pipeline);
    assert_eq!(
        admin
            .describe(&TopicQuery::new(
                &desired_topics(&pipeline),
                &LastStatus::of(&pipeline)
            ))
            .await
            .expect("describe")
            .brokers,
        Some(1)
    );

    let outcome = reconcile(&pipeline, &admin).await;
    let refused = status(&outcome, &orders);
    assert!(!refused.ready);
    assert_eq!(refused.reason.as_deref(), Some("ReplicationFactorTooHigh"));
    assert!(
        message(refused).contains(&format!(
            "spec.topics[name={orders}].replicationFactor is 3 but the Kafka cluster has 1 broker"
        )),
        "{refused:?}"
    );
    assert_eq!(
        partition_count(&bootstrap, &orders).expect("metadata"),
        None
    );
    // The rest is created; on one broker a single replica is all there can be: no warning.
    let validated = status(&outcome, &format!("{prefix}.validated"));
    assert!(
        validated.ready && validated.reason.is_none(),
        "{validated:?}"
    );
}

#[tokio::test]
#[ignore = "needs the e2e tools: make test-e2e"]
async fn a_three_broker_cluster_gets_replicated_topics_and_warnings_for_single_replicas()
-> anyhow::Result<()> {
    let mut stack = Stack::builder(&unique_name("operator-ha"))
        .kafka_ha()
        .start()
        .await?;
    let bootstrap = stack.kafka_bootstrap()?.to_owned();
    let prefix = unique_name("ha");
    let (orders, validated, rejected) = (
        format!("{prefix}.orders"),
        format!("{prefix}.validated"),
        format!("{prefix}.rejected"),
    );
    let pipeline = pipeline(&prefix, &bootstrap)
        .replication_factor(&orders, 3)
        .topic_config(&orders, "min.insync.replicas", "2")
        .replication_factor(&validated, 1)
        .replication_factor(&rejected, 2)
        .topic_config(&rejected, "min.insync.replicas", "3");
    let admin = admin(&pipeline);

    let outcome = reconcile(&pipeline, &admin).await;
    assert!(status(&outcome, &orders).ready);
    for partition in partition_infos(&bootstrap, &orders)? {
        assert_eq!(partition.replicas.len(), 3, "{partition:?}");
    }
    let single = status(&outcome, &validated);
    assert!(single.ready, "a warning, not a failure");
    assert_eq!(single.reason.as_deref(), Some("SingleReplica"));
    assert!(
        message(single).contains("1 replica on a cluster of 3 brokers"),
        "{single:?}"
    );
    let refused = status(&outcome, &rejected);
    assert_eq!(refused.reason.as_deref(), Some("MinInsyncReplicasTooHigh"));
    assert!(
        message(refused).contains(&format!(
            "spec.topics[name={rejected}].config[min.insync.replicas] is 3"
        )),
        "{refused:?}"
    );
    assert_eq!(partition_count(&bootstrap, &rejected)?, None);

    // A broker down: a new topic declaring 3 replicas waits with a clear reason, and is created
    // once the broker is back.
    let late = format!("{prefix}.late");
    let pipeline = pipeline.topic(&late, 2).replication_factor(&late, 3);
    stack.kill_broker(3)?;
    // Until the controller fences it (broker session timeout, 9 s) the dead broker is still
    // listed, and Kafka would still place replicas on it.
    let query = TopicQuery::new(&desired_topics(&pipeline), &LastStatus::of(&pipeline));
    wait_until(
        "the dead broker fenced (metadata lists 2 brokers)",
        Duration::from_secs(90),
        || async { (admin.describe(&query).await.ok()?.brokers? == 2).then_some(()) },
    )
    .await?;
    let outcome = reconcile(&pipeline, &admin).await;
    assert_eq!(
        status(&outcome, &late).reason.as_deref(),
        Some("ReplicationFactorTooHigh")
    );
    assert_eq!(partition_count(&bootstrap, &late)?, None);
    assert!(
        message(status(&outcome, &late)).contains("the Kafka cluster has 2 broker(s)"),
        "{:?}",
        status(&outcome, &late)
    );
    stack.start_broker(3).await?;
    wait_until(
        "the topic created once the broker is back",
        Duration::from_secs(90),
        || async {
            let outcome = reconcile(&pipeline, &admin).await;
            status(&outcome, &late).ready.then_some(())
        },
    )
    .await?;
    for partition in partition_infos(&bootstrap, &late)? {
        assert_eq!(partition.replicas.len(), 3, "{partition:?}");
    }
    stack.stop().await?;
    Ok(())
}
