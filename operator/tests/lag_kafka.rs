//! Consumer lag measured by the operator against a real broker with a transactional producer, as
//! the workers write: an idle stage reads exactly 0 although commit markers sit after its last
//! commit; aborted and still-open transactions are not lag; a backlog reads its size.
//!
//! Starts its own private Kafka broker (`orderpipe_e2e::Stack`, Kafka only, own ports and dirs),
//! so it needs the prebuilt e2e tools (`make e2e-tools`) but not the shared stack:
//! `cargo test -p orderpipe-operator --test lag_kafka -- --ignored`.

use std::collections::BTreeMap;
use std::time::Duration;

use orderpipe_api::v1alpha1::{BootstrapServer, KafkaSpec};
use orderpipe_e2e::{Stack, create_topic, unique_name};
use orderpipe_operator::lag::{LagConsumer, LagError};
use orderpipe_operator::topics::{AdminConnection, ResolvedKafkaSecrets};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(20);
const PARTITIONS: i32 = 3;

/// The operator's lag consumer for `group`, built the way the operator builds it.
fn lag_consumer(bootstrap: &str, group: &str) -> LagConsumer {
    let spec = KafkaSpec {
        bootstrap_servers: vec![BootstrapServer(bootstrap.into())],
        tls: None,
        sasl: None,
    };
    let connection =
        AdminConnection::new(&spec, &ResolvedKafkaSecrets::default()).expect("plaintext");
    LagConsumer::connect(&connection, group).expect("consumer")
}

async fn lag(consumer: &LagConsumer, topic: &str) -> Result<u64, LagError> {
    let (consumer, topic) = (consumer.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || consumer.measure(&topic, TIMEOUT))
        .await
        .expect("measurement task")
}

/// A transactional producer like a worker's.
fn producer(bootstrap: &str, id: &str) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .create()
        .expect("producer");
    producer.init_transactions(TIMEOUT).expect("init");
    producer
}

/// Sends `count` records to each of `partitions` inside the producer's open transaction.
fn send(producer: &BaseProducer, topic: &str, partitions: &[i32], count: usize) {
    for partition in partitions {
        for n in 0..count {
            let key = format!("order-{partition}-{n}");
            let record = BaseRecord::to(topic)
                .partition(*partition)
                .key(&key)
                .payload("{}");
            producer.send(record).expect("queued");
        }
    }
    producer.flush(TIMEOUT).expect("flushed");
}

fn transaction(producer: &BaseProducer, topic: &str, partitions: &[i32], count: usize) {
    producer.begin_transaction().expect("begin");
    send(producer, topic, partitions, count);
    producer.commit_transaction(TIMEOUT).expect("commit");
}

/// A consumer of the stage's group with the worker's read settings.
fn stage_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("stage consumer")
}

/// Consumes everything committed, as the stage's workers do, and commits "last record + 1" per
/// partition for the group, the offset a worker sends with its transaction.
fn consume_all_and_commit(bootstrap: &str, group: &str, topic: &str) {
    let consumer = stage_consumer(bootstrap, group);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition(topic, partition);
    }
    consumer.assign(&assignment).expect("assigned");
    let mut next = BTreeMap::new();
    let mut at_end = 0;
    while at_end < PARTITIONS {
        match consumer.poll(TIMEOUT) {
            Some(Ok(message)) => {
                next.insert(message.partition(), message.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(error)) => panic!("consuming: {error}"),
            None => panic!("no end of partition within {TIMEOUT:?}"),
        }
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next {
        offsets
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("offset");
    }
    consumer
        .commit(&offsets, CommitMode::Sync)
        .expect("committed");
}

/// The naive "end − committed" a lag gauge computes from offsets alone.
fn naive_gap(bootstrap: &str, group: &str, topic: &str) -> i64 {
    let consumer = stage_consumer(bootstrap, group);
    let mut asked = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        asked.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(asked, TIMEOUT)
        .expect("committed");
    (0..PARTITIONS)
        .map(|partition| {
            let (_, end) = consumer
                .fetch_watermarks(topic, partition, TIMEOUT)
                .expect("watermarks");
            let commit = match committed
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => 0,
            };
            end - commit
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "starts a private Kafka broker: needs the e2e tools (make e2e-tools)"]
async fn lag_on_a_transactional_input_is_zero_when_idle_and_the_backlog_when_behind()
-> anyhow::Result<()> {
    let work = std::env::temp_dir().join(unique_name("orderpipe-lag-kafka"));
    let stack = Stack::builder("lag-kafka")
        .kafka_only()
        .work_dir(&work)
        .start()
        .await?;
    let bootstrap = stack.kafka_bootstrap()?.to_owned();
    let topic = unique_name("orders");
    let group = format!("orderpipe.it.{topic}.validate");
    create_topic(&bootstrap, &topic, PARTITIONS).await?;

    // Blocking client calls below: the multi-threaded runtime keeps the stack's tasks going.
    let writer = producer(&bootstrap, &format!("{topic}.writer"));
    let lagging = lag_consumer(&bootstrap, &group);
    let all: Vec<i32> = (0..PARTITIONS).collect();

    // Nothing committed yet: the group starts at the log start (auto.offset.reset=earliest).
    transaction(&writer, &topic, &all, 10);
    assert_eq!(
        lag(&lagging, &topic).await?,
        30,
        "no commit: all 30 records"
    );

    // Caught up: the markers keep "end − committed" at one per partition; the lag is 0.
    consume_all_and_commit(&bootstrap, &group, &topic);
    assert_eq!(naive_gap(&bootstrap, &group, &topic), i64::from(PARTITIONS));
    assert_eq!(lag(&lagging, &topic).await?, 0, "an idle stage reads 0");

    // An aborted transaction at the tail is never delivered: still 0.
    writer.begin_transaction()?;
    send(&writer, &topic, &[0], 5);
    writer.abort_transaction(TIMEOUT)?;
    assert_eq!(
        lag(&lagging, &topic).await?,
        0,
        "aborted records are no lag"
    );

    // An open transaction is not readable yet (the last stable offset holds): still 0; once it
    // commits, its records are the lag.
    writer.begin_transaction()?;
    send(&writer, &topic, &[1], 5);
    assert_eq!(lag(&lagging, &topic).await?, 0, "open transaction");
    writer.commit_transaction(TIMEOUT)?;
    assert_eq!(lag(&lagging, &topic).await?, 5, "small backlog, counted");

    // A backlog beyond the counting limit is its size plus the markers in it: one per transaction
    // (5) and the one after the last commit. Partition 1's 5 are still counted exactly.
    for _ in 0..5 {
        transaction(&writer, &topic, &[2], 100);
    }
    let behind = lag(&lagging, &topic).await?;
    assert!(
        (505..=511).contains(&behind),
        "505 records behind, read as {behind}"
    );

    consume_all_and_commit(&bootstrap, &group, &topic);
    assert_eq!(lag(&lagging, &topic).await?, 0, "drained");

    let missing = lag(&lagging, "no-such-topic").await;
    assert!(
        matches!(missing, Err(LagError::TopicMissing { .. })),
        "{missing:?}"
    );

    drop((writer, lagging));
    stack.stop().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
