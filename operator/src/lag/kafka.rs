//! The Kafka edge of lag: [`KafkaLagSource`] finds a stage's input topic, consumer group and
//! Kafka connection from its OrderPipeline, and [`LagConsumer`] asks Kafka for the group's
//! committed offsets and the input's offsets, then counts the records of small gaps.
//!
//! I/O only: what the offsets mean is decided in `offsets`. The connection settings and
//! credentials are the ones topic management uses (`topics::AdminConnection`, the `secrets`
//! module's resolution), never a second way to reach Kafka. The consumer never subscribes, so it
//! never joins the stage's group, and never commits: it only reads the group's offsets
//! (OffsetFetch) and, to count, reads assigned partitions from explicit offsets.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::Api;
use orderpipe_api::OrderPipeline;
use orderpipe_api::contract::naming;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::offsets::{COUNT_GAPS_UP_TO, PartitionLag, PartitionOffsets, partition_lag, stage_lag};
use super::{LagError, LagSource, StageKey};
use crate::secrets::SecretCache;
use crate::topics::pool::drop_blocking;
use crate::topics::{AdminConnection, ConnectionKey, TopicError};

/// A consumer bound to one stage's group, on one connection. Cheap to clone.
#[derive(Clone)]
pub struct LagConsumer {
    consumer: Arc<BaseConsumer>,
    connection: ConnectionKey,
    group: String,
}

impl fmt::Debug for LagConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LagConsumer")
            .field("connection", &self.connection)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl LagConsumer {
    /// Builds the consumer; it connects on its first request.
    pub fn connect(connection: &AdminConnection, group: &str) -> Result<Self, TopicError> {
        let mut config = connection.client_config();
        config
            // The group whose offsets OffsetFetch returns; never joined (no subscribe).
            .set("group.id", group)
            // Counts what the stage's read_committed consumer would be given; also makes the
            // offset queries return the last stable offset and only stable commits.
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Counting stops at the end of each partition.
            .set("enable.partition.eof", "true")
            // As the worker: a counting read from an offset that is gone starts at the log start.
            .set("auto.offset.reset", "earliest")
            // A count reads at most COUNT_GAPS_UP_TO records per partition: keep prefetch small.
            .set("queued.max.messages.kbytes", "1024")
            .set("fetch.max.bytes", "1048576");
        let consumer = config.create().map_err(TopicError::client)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            connection: connection.key(),
            group: group.to_owned(),
        })
    }

    fn serves(&self, connection: &ConnectionKey, group: &str) -> bool {
        self.connection == *connection && self.group == group
    }

    /// The group's lag on `topic`. Blocks (librdkafka's calls do): run it on the blocking pool.
    pub fn measure(&self, topic: &str, timeout: Duration) -> Result<u64, LagError> {
        let consumer = &*self.consumer;
        let kafka = |step: &'static str| {
            let topic = topic.to_owned();
            move |source: KafkaError| LagError::Kafka {
                step,
                topic,
                source,
            }
        };
        let partitions = partitions_of(consumer, topic, timeout)?;
        let mut asked = TopicPartitionList::new();
        for partition in &partitions {
            asked.add_partition(topic, *partition);
        }
        // Commits first, then the ends (see `PartitionOffsets`).
        let committed = consumer
            .committed_offsets(asked, timeout)
            .map_err(kafka("reading the group's committed offsets"))?;
        let mut offsets = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let (start, end) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(kafka("reading the partition offsets"))?;
            let committed = committed
                .find_partition(topic, partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            offsets.push(PartitionOffsets {
                partition,
                start,
                end,
                committed,
            });
        }
        let mut known = Vec::new();
        let mut to_count = Vec::new();
        for lag in offsets.iter().map(|o| partition_lag(o, COUNT_GAPS_UP_TO)) {
            match lag {
                PartitionLag::Known(records) => known.push(records),
                PartitionLag::Count {
                    partition,
                    from,
                    end,
                } => to_count.push((partition, from, end)),
            }
        }
        let counted = if to_count.is_empty() {
            Vec::new()
        } else {
            count_records(consumer, topic, &to_count, timeout)?
        };
        Ok(stage_lag(known.into_iter().chain(counted)))
    }
}

/// The input topic's partition ids, from metadata.
fn partitions_of(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, LagError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| LagError::Kafka {
            step: "reading the topic's metadata",
            topic: topic.to_owned(),
            source,
        })?;
    let missing = || LagError::TopicMissing {
        topic: topic.to_owned(),
    };
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    let found = found.ok_or_else(missing)?;
    match found.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Err(missing()),
        Some(code) => {
            return Err(LagError::Kafka {
                step: "reading the topic's metadata",
                topic: topic.to_owned(),
                source: KafkaError::MetadataFetch(code),
            });
        }
    }
    let partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(missing());
    }
    Ok(partitions)
}

/// Reads each `(partition, from, end)` read_committed and counts the records below `end`:
/// transaction markers and aborted records are never delivered, so an idle partition counts 0.
/// A partition is done at its end-of-partition event or at a record at or past `end` (records
/// committed since the end was read are not this reading's lag).
fn count_records(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[(i32, i64, i64)],
    timeout: Duration,
) -> Result<Vec<u64>, LagError> {
    let kafka = |step: &'static str| {
        move |source: KafkaError| LagError::Kafka {
            step,
            topic: topic.to_owned(),
            source,
        }
    };
    let mut assignment = TopicPartitionList::new();
    let mut pending: HashMap<i32, (i64, u64)> = HashMap::new();
    for &(partition, from, end) in ranges {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(kafka("assigning the partitions to count"))?;
        pending.insert(partition, (end, 0));
    }
    consumer
        .assign(&assignment)
        .map_err(kafka("assigning the partitions to count"))?;
    let mut counted = Vec::with_capacity(ranges.len());
    let deadline = Instant::now() + timeout;
    // librdkafka reports connection trouble as consumer errors and recovers on its own: an error
    // ends the count only if the deadline passes before the count is done, and then it is named.
    let mut last_error = None;
    let outcome = loop {
        if pending.is_empty() {
            break Ok(counted);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(match last_error.take() {
                Some(error) => kafka("counting the records after the commit")(error),
                None => LagError::CountTimeout {
                    topic: topic.to_owned(),
                    timeout,
                },
            });
        }
        let done = match consumer.poll(left.min(Duration::from_millis(200))) {
            None => None,
            Some(Ok(message)) if message.topic() == topic => {
                let partition = message.partition();
                match pending.get_mut(&partition) {
                    Some((end, records)) if message.offset() < *end => {
                        *records += 1;
                        None
                    }
                    Some(_) => Some(partition),
                    None => None,
                }
            }
            Some(Ok(_)) => None,
            Some(Err(KafkaError::PartitionEOF(partition))) => Some(partition),
            Some(Err(error)) => {
                last_error = Some(error);
                None
            }
        };
        if let Some((_, records)) = done.and_then(|partition| pending.remove(&partition)) {
            counted.push(records);
        }
    };
    // Stops fetching until the next count; an error here only costs prefetched records.
    if let Err(error) = consumer.unassign() {
        tracing::debug!(%error, "unassigning the counted partitions");
    }
    outcome
}

/// [`LagSource`] over Kafka: per measurement, one read of the OrderPipeline, its Kafka Secrets
/// (through a [`SecretCache`] of its own: at most one read per Secret per period) and one lag
/// query; the consumer is kept per stage while its connection and group stay the same.
#[derive(Clone)]
pub struct KafkaLagSource {
    client: kube::Client,
    secrets: Arc<SecretCache>,
    /// Deadline of each Kafka request and of the count.
    timeout: Duration,
}

impl fmt::Debug for KafkaLagSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLagSource")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaLagSource {
    pub fn new(client: kube::Client, timeout: Duration) -> Self {
        let secrets = Arc::new(SecretCache::new(client.clone(), SecretCache::TTL));
        Self {
            client,
            secrets,
            timeout,
        }
    }
}

impl LagSource for KafkaLagSource {
    type Client = LagConsumer;

    async fn measure(
        &self,
        stage: &StageKey,
        client: &mut Option<LagConsumer>,
    ) -> Result<u64, LagError> {
        let api: Api<OrderPipeline> = Api::namespaced(self.client.clone(), &stage.namespace);
        let pipeline = api
            .get_opt(&stage.pipeline)
            .await
            .map_err(LagError::ReadPipeline)?
            .ok_or_else(|| LagError::PipelineNotFound {
                namespace: stage.namespace.clone(),
                pipeline: stage.pipeline.clone(),
            })?;
        let spec = pipeline.spec.stages.iter().find(|s| s.name == stage.stage);
        let input = spec
            .ok_or_else(|| LagError::StageNotFound {
                pipeline: stage.pipeline.clone(),
                stage: stage.stage.clone(),
            })?
            .input
            .clone();
        let secrets = (self.secrets.kafka(&pipeline))
            .await
            .map_err(|error| LagError::Credentials(Box::new(error)))?;
        let connection =
            AdminConnection::new(&pipeline.spec.kafka, &secrets).map_err(LagError::Connection)?;
        let group = naming::consumer_group(&stage.namespace, &stage.pipeline, &stage.stage);
        let consumer = match client.take() {
            Some(kept) if kept.serves(&connection.key(), &group) => kept,
            stale => {
                // Credentials rotated or the spec changed: the old consumer goes.
                self.close(stale.into_iter().collect());
                LagConsumer::connect(&connection, &group).map_err(LagError::Connection)?
            }
        };
        *client = Some(consumer.clone());
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || consumer.measure(&input, timeout))
            .await
            .map_err(LagError::Blocking)?
    }

    fn close(&self, clients: Vec<LagConsumer>) {
        drop_blocking(clients);
    }
}
