//! The Kafka edge of coordinated growth: reads what [`super::Needs`] asks for (old partitions' end
//! offsets, the stage groups' committed re-shard markers) and writes control records.
//!
//! Growths are rare, so clients are made per call and dropped after it (off the async workers)
//! rather than pooled: a growth costs a few short-lived connections per reconcile for its minutes,
//! an idle pipeline nothing. The connection settings are topic management's
//! ([`AdminConnection`]), never a second way to reach Kafka. Consumers never subscribe, so they
//! never join a stage's group; they only read its offsets (OffsetFetch).

use std::collections::BTreeMap;
use std::time::Duration;

use orderpipe_growth::{ControlRecord, ReshardMarker};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Needs, Observations};
use crate::topics::AdminConnection;
use crate::topics::pool::drop_blocking;

/// A failed growth read or control write. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum GrowthKafkaError {
    #[error("creating a Kafka client for partition growth: {0}")]
    Client(#[source] KafkaError),
    #[error("{step} of topic {topic}: {source}")]
    Kafka {
        step: &'static str,
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("the growth's Kafka reads did not complete: {0}")]
    Blocking(#[source] tokio::task::JoinError),
}

/// Reads what `needs` asks for. A topic whose reads fail is left out (and logged): its growth
/// stays where it is until a later reconcile reads it.
pub async fn observe(
    connection: &AdminConnection,
    needs: Needs,
    timeout: Duration,
) -> Result<Observations, GrowthKafkaError> {
    if needs.is_empty() {
        return Ok(Observations::default());
    }
    let connection = connection.clone();
    tokio::task::spawn_blocking(move || observe_blocking(&connection, &needs, timeout))
        .await
        .map_err(GrowthKafkaError::Blocking)
}

fn observe_blocking(
    connection: &AdminConnection,
    needs: &Needs,
    timeout: Duration,
) -> Observations {
    let mut observed = Observations::default();
    for (topic, partitions) in &needs.end_offsets {
        match end_offsets(connection, topic, *partitions, timeout) {
            Ok(offsets) => {
                observed.end_offsets.insert(topic.clone(), offsets);
            }
            Err(error) => tracing::warn!(%error, topic, "reading the settle barrier"),
        }
    }
    for (topic, partitions, stages) in &needs.markers {
        let mut per_stage = BTreeMap::new();
        for reader in stages {
            match markers(connection, &reader.group, topic, *partitions, timeout) {
                Ok(markers) => {
                    per_stage.insert(reader.stage.clone(), markers);
                }
                Err(error) => {
                    tracing::warn!(%error, topic, stage = reader.stage, "reading re-shard markers");
                }
            }
        }
        observed.markers.insert(topic.clone(), per_stage);
    }
    observed
}

/// The end offset (high watermark) of partitions `0..partitions` of `topic`.
fn end_offsets(
    connection: &AdminConnection,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<i64>, GrowthKafkaError> {
    let consumer: BaseConsumer = connection
        .client_config()
        .create()
        .map_err(GrowthKafkaError::Client)?;
    let offsets = (0..partitions)
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, timeout)
                .map(|(_, high)| high)
                .map_err(|source| GrowthKafkaError::Kafka {
                    step: "reading the end offsets",
                    topic: topic.to_owned(),
                    source,
                })
        })
        .collect();
    drop_blocking(consumer);
    offsets
}

/// The re-shard marker `group` committed on each of partitions `0..partitions` of `topic`.
fn markers(
    connection: &AdminConnection,
    group: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Option<ReshardMarker>>, GrowthKafkaError> {
    let consumer: BaseConsumer = connection
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // Only stable commits: a re-shard counts once its transaction committed.
        .set("isolation.level", "read_committed")
        .create()
        .map_err(GrowthKafkaError::Client)?;
    let mut asked = TopicPartitionList::new();
    for partition in 0..partitions {
        asked.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(asked, timeout);
    drop_blocking(consumer);
    let committed = committed.map_err(|source| GrowthKafkaError::Kafka {
        step: "reading the group's committed offsets",
        topic: topic.to_owned(),
        source,
    })?;
    Ok((0..partitions)
        .map(|partition| {
            committed
                .find_partition(topic, partition)
                .filter(|element| matches!(element.offset(), Offset::Offset(_)))
                .and_then(|element| ReshardMarker::parse(element.metadata()))
        })
        .collect())
}

/// Writes `records` (key: stage) to partition 0 of the control topic, idempotently and
/// acknowledged by every in-sync replica, before it returns.
pub async fn publish(
    connection: &AdminConnection,
    control_topic: &str,
    records: &[(String, ControlRecord)],
    timeout: Duration,
) -> Result<(), GrowthKafkaError> {
    if records.is_empty() {
        return Ok(());
    }
    let producer: FutureProducer = connection
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .create()
        .map_err(GrowthKafkaError::Client)?;
    let sends = records.iter().map(|(stage, record)| {
        let value = record.encode();
        let producer = &producer;
        async move {
            producer
                .send(
                    FutureRecord::to(control_topic)
                        .partition(0)
                        .key(stage.as_bytes())
                        .payload(&value),
                    timeout,
                )
                .await
                .map(|_| ())
                .map_err(|(source, _)| GrowthKafkaError::Kafka {
                    step: "writing a control record",
                    topic: control_topic.to_owned(),
                    source,
                })
        }
    });
    let sent = futures::future::try_join_all(sends).await.map(|_| ());
    // Everything sent was acknowledged (or failed): nothing is left to flush.
    if let Err(error) = producer.flush(Duration::ZERO) {
        tracing::debug!(%error, "flushing the control producer");
    }
    drop_blocking(producer);
    sent
}
