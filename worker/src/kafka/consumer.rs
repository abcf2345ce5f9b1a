//! The stage consumer: the [`Source`] over a librdkafka group member, and its context, whose
//! rebalance callback hands assignments and revocations to the coordinator *before* librdkafka
//! applies them, so revoked partitions are committed while this member still owns them. On an
//! assignment it first splits each new partition's queue off (see [`super::partition_queues`]),
//! reads the control topic to its end, so a partition a growth added is held before it could
//! start, and hands over each partition's committed re-shard marker.
//! Must not process or produce records.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orderpipe_growth::ReshardMarker;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::bounded::BoundedCalls;
use super::control::KafkaControl;
use super::partition_queues::PartitionQueues;
use super::{GroupCommit, offsets_list};
use crate::error::WorkerError;
use crate::record::{RawHeader, SourceRecord};
use crate::runtime::driver::lock;
use crate::runtime::growth::Markers;
use crate::runtime::{
    BrokerError, CommittedOffsets, Coordinator, FetchView, LagBook, Offsets, Sink, Source,
};
use crate::stage::StageHandler;

/// How long a group call (committed offsets, seek) may take.
const GROUP_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Records taken from the partition queues before the consumer's own queue (rebalance callbacks,
/// errors, statistics) is served again; it is also served whenever the partition queues are empty.
/// Serving it costs a lock and several clock reads, about as much as taking a record, and it
/// almost never holds anything (docs/benchmarks.md, session 19).
const RECORDS_PER_MAIN_QUEUE_SERVE: u32 = 64;

/// Callbacks of the stage consumer.
pub struct StageContext<H: StageHandler, K: Sink<Group = dyn GroupCommit>> {
    coordinator: Arc<Mutex<Coordinator<H, K>>>,
    lag: Arc<LagBook>,
    topic: String,
    /// The control topic's reader; `None` when the pipeline has none.
    control: Option<Arc<Mutex<KafkaControl>>>,
    queues: PartitionQueues<Self>,
}

/// A consumer context that keeps its consumer's split partition queues: what the [`KafkaSource`]
/// polls, and what the context's rebalance callback splits and drops.
pub trait SplitsPartitions: ConsumerContext + Sized {
    fn partition_queues(&self) -> &PartitionQueues<Self>;
}

impl<H: StageHandler, K: Sink<Group = dyn GroupCommit>> SplitsPartitions for StageContext<H, K> {
    fn partition_queues(&self) -> &PartitionQueues<Self> {
        &self.queues
    }
}

impl<H: StageHandler, K: Sink<Group = dyn GroupCommit>> std::fmt::Debug for StageContext<H, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<H: StageHandler, K: Sink<Group = dyn GroupCommit>> StageContext<H, K> {
    pub fn new(
        coordinator: Arc<Mutex<Coordinator<H, K>>>,
        lag: Arc<LagBook>,
        control: Option<Arc<Mutex<KafkaControl>>>,
    ) -> Self {
        let topic = lock(&coordinator).input_topic().to_owned();
        Self {
            coordinator,
            lag,
            queues: PartitionQueues::new(&topic),
            topic,
            control,
        }
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect()
    }
}

impl<H: StageHandler, K: Sink<Group = dyn GroupCommit>> ClientContext for StageContext<H, K> {
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.topic) {
            // Called from the poll loop, which holds no lock while it polls.
            let coordinator = lock(&self.coordinator);
            for (&partition, stats) in &topic.partitions {
                // Partition -1 is librdkafka's "unassigned" bucket.
                if partition >= 0 && stats.hi_offset >= 0 {
                    self.lag.fetched(
                        partition,
                        FetchView {
                            high_watermark: stats.hi_offset,
                            last_stable: stats.ls_offset,
                            next_fetch: stats.next_offset,
                            queued: stats.fetchq_cnt,
                            routed_to: coordinator.routed_to(partition),
                        },
                    );
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

impl<H: StageHandler, K: Sink<Group = dyn GroupCommit>> ConsumerContext for StageContext<H, K> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = self.partitions(list);
                // Before librdkafka starts fetching them, or their first records would reach the
                // consumer's queue.
                let unsplit = self.queues.split(&partitions);
                if !unsplit.is_empty() {
                    let error = WorkerError::KafkaClient {
                        client: "consumer",
                        source: BrokerError::new(format!(
                            "librdkafka gave no queue of their own for partitions {unsplit:?} of {}",
                            self.topic
                        )),
                    };
                    tracing::error!(%error, "not starting the assigned partitions");
                    lock(&self.coordinator).stop(error);
                    return;
                }
                // Before any partition starts: a partition the input grew by is only known to be
                // held once the control record announcing the growth has been read, and the
                // operator writes it before growing the topic.
                if let Some(control) = &self.control {
                    let mut control = lock(control);
                    if let Err(reason) = control.sync() {
                        let error = WorkerError::Control {
                            topic: control.topic().to_owned(),
                            reason,
                        };
                        tracing::error!(%error, "not starting the assigned partitions");
                        lock(&self.coordinator).stop(error);
                        return;
                    }
                }
                // Read before the workers restore state: with read_committed this waits for a
                // previous owner's pending transactional commit, whose changelog records the
                // restore must then see.
                let (committed, markers) = match consumer
                    .committed_offsets((*list).clone(), GROUP_CALL_TIMEOUT)
                {
                    Ok(list) => (
                        committed_offsets(&list, &self.topic),
                        committed_markers(&list, &self.topic),
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "reading committed offsets of the assignment failed");
                        (
                            partitions.iter().map(|&p| (p, None)).collect(),
                            Markers::new(),
                        )
                    }
                };
                lock(&self.coordinator).assign(&committed, &markers);
            }
            Rebalance::Revoke(list) => {
                let partitions = self.partitions(list);
                let lost = consumer.assignment_lost();
                lock(&self.coordinator).revoke(&partitions, lost, consumer);
                self.queues.remove(&partitions);
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}

impl<C: ConsumerContext> GroupCommit for BaseConsumer<C> {
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        Consumer::group_metadata(self)
    }

    fn commit_offsets(
        &self,
        topic: &str,
        offsets: &Offsets,
        markers: &Markers,
    ) -> Result<(), KafkaError> {
        self.commit(&offsets_list(topic, offsets, markers)?, CommitMode::Sync)
    }
}

fn committed_offsets(list: &TopicPartitionList, topic: &str) -> CommittedOffsets {
    list.elements_for_topic(topic)
        .iter()
        .map(|element| {
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            (element.partition(), offset)
        })
        .collect()
}

/// The re-shard markers in the committed offsets' metadata (foreign metadata is no marker).
fn committed_markers(list: &TopicPartitionList, topic: &str) -> Markers {
    list.elements_for_topic(topic)
        .iter()
        .filter_map(|element| {
            // rdkafka's accessor panics on metadata that is not UTF-8; every Kafka client writes
            // a string, so only a hand-crafted commit could, and it would be no marker anyway.
            let metadata = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                element.metadata().to_owned()
            }))
            .ok()?;
            Some((element.partition(), ReshardMarker::parse(&metadata)?))
        })
        .collect()
}

/// The stage's input, consumed as a member of its group.
pub struct KafkaSource<C: SplitsPartitions> {
    /// `None` once closed, or abandoned after a close that did not finish in time. Shared only
    /// with the split partition queues, which the context keeps.
    consumer: Option<Arc<BaseConsumer<C>>>,
    topic: String,
    /// Records taken since the consumer's own queue was last served.
    taken_since_main_queue: u32,
}

impl<C: SplitsPartitions> std::fmt::Debug for KafkaSource<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<C: SplitsPartitions> KafkaSource<C> {
    /// Subscribes `consumer` to `topic`.
    pub fn subscribe(mut consumer: BaseConsumer<C>, topic: &str) -> Result<Self, KafkaError> {
        // Rebalances, errors and statistics wake a waiting poll like records do.
        let arrivals = Arc::clone(consumer.context().partition_queues().arrivals());
        consumer.set_nonempty_callback(move || arrivals.notify());
        let consumer = Arc::new(consumer);
        consumer.context().partition_queues().attach(&consumer);
        consumer.subscribe(&[topic])?;
        Ok(Self {
            consumer: Some(consumer),
            topic: topic.to_owned(),
            taken_since_main_queue: 0,
        })
    }

    fn consumer(&self) -> Result<&BaseConsumer<C>, BrokerError> {
        self.consumer
            .as_deref()
            .ok_or_else(|| BrokerError::new("the consumer is closed"))
    }

    fn partition_list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition(&self.topic, partition);
        }
        list
    }
}

fn source_record(message: &BorrowedMessage<'_>) -> SourceRecord {
    let timestamp = message
        .timestamp()
        .to_millis()
        .and_then(DateTime::from_timestamp_millis)
        // Brokers since 0.10 always set one; a record without falls back to arrival time.
        .unwrap_or_else(Utc::now);
    SourceRecord {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        timestamp,
        headers: message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| RawHeader {
                        name: header.key.to_owned(),
                        value: header.value.map(<[u8]>::to_vec),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn taken(polled: KafkaResult<BorrowedMessage<'_>>) -> Result<SourceRecord, BrokerError> {
    polled
        .map(|message| source_record(&message))
        .map_err(BrokerError::from)
}

impl<C: SplitsPartitions + 'static> Source for KafkaSource<C> {
    type Group = dyn GroupCommit;

    /// Takes the next record of a partition not held, serving the consumer's own queue (rebalance
    /// callbacks run there) every [`RECORDS_PER_MAIN_QUEUE_SERVE`] records and whenever the
    /// partition queues are empty; waits up to `timeout` for anything to arrive.
    fn poll(&mut self, timeout: Duration) -> Option<Result<SourceRecord, BrokerError>> {
        let consumer = self.consumer.as_ref()?;
        let queues = consumer.context().partition_queues();
        let mut deadline = None;
        loop {
            let seen = queues.arrivals().seen();
            let main_queue_due = self.taken_since_main_queue >= RECORDS_PER_MAIN_QUEUE_SERVE;
            if !main_queue_due && let Some(polled) = queues.poll(taken) {
                self.taken_since_main_queue += 1;
                return Some(polled);
            }
            self.taken_since_main_queue = 0;
            // Records only before a partition's queue is split, which happens before its fetching
            // starts; errors and callbacks always.
            if let Some(polled) = consumer.poll(Duration::ZERO) {
                return Some(taken(polled));
            }
            if main_queue_due {
                // The partition queues were skipped for it: look at them before waiting.
                continue;
            }
            if timeout.is_zero() {
                return None;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
            if Instant::now() >= deadline {
                return None;
            }
            queues.arrivals().wait(seen, deadline);
        }
    }

    /// Stops taking `partition`'s records without a librdkafka pause, which would purge what is
    /// prefetched: librdkafka stops fetching once the partition's queue is at its bound.
    fn pause(&mut self, partition: i32) -> Result<(), BrokerError> {
        self.consumer()?
            .context()
            .partition_queues()
            .hold(partition, true);
        Ok(())
    }

    fn resume(&mut self, partition: i32) -> Result<(), BrokerError> {
        self.consumer()?
            .context()
            .partition_queues()
            .hold(partition, false);
        Ok(())
    }

    fn committed(&mut self, partitions: &[i32]) -> Result<CommittedOffsets, BrokerError> {
        let list = self
            .consumer()?
            .committed_offsets(self.partition_list(partitions), GROUP_CALL_TIMEOUT)?;
        Ok(committed_offsets(&list, &self.topic))
    }

    fn seek(&mut self, partition: i32, offset: Option<i64>) -> Result<(), BrokerError> {
        let offset = offset.map_or(Offset::Beginning, Offset::Offset);
        Ok(self
            .consumer()?
            .seek(&self.topic, partition, offset, GROUP_CALL_TIMEOUT)?)
    }

    fn positions(&mut self, partitions: &[i32]) -> BTreeMap<i32, i64> {
        let Ok(consumer) = self.consumer() else {
            return BTreeMap::new();
        };
        let list = match consumer.position() {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%error, "reading the consumer's positions failed");
                return BTreeMap::new();
            }
        };
        list.elements_for_topic(&self.topic)
            .iter()
            .filter(|element| partitions.contains(&element.partition()))
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => Some((element.partition(), offset)),
                _ => None,
            })
            .collect()
    }

    fn group(&self) -> &Self::Group {
        match &self.consumer {
            Some(consumer) => &**consumer,
            None => &Closed,
        }
    }

    fn close(&mut self, deadline: Instant) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        // The queues hold the consumer too; the last holder's drop is what closes it.
        consumer.context().partition_queues().clear();
        // Dropping closes the consumer: it runs the final revocation and leaves the group, with no
        // deadline of its own, so it is a bounded call we stop waiting for at `deadline`.
        let limit = deadline.saturating_duration_since(Instant::now());
        if let Err(unanswered) = BoundedCalls::default().run(limit, move || drop(consumer)) {
            // The process is exiting; the group times the member out instead.
            tracing::warn!(%unanswered, "the consumer did not leave the group in time");
        }
    }
}

/// The group of a closed consumer: nothing can be committed any more.
struct Closed;

impl GroupCommit for Closed {
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        None
    }

    fn commit_offsets(
        &self,
        _topic: &str,
        _offsets: &Offsets,
        _markers: &Markers,
    ) -> Result<(), KafkaError> {
        Err(KafkaError::Canceled)
    }
}
