//! A queue of its own for each assigned input partition, so back-pressure on one partition is
//! "stop taking from its queue" rather than a librdkafka pause.
//!
//! Why: with one consumer queue, the only way to stop a full partition was `pause`, and librdkafka
//! purges what it has prefetched for a paused partition and, after `resume`, fetches it again
//! from the application's position. A one-partition worker whose 10,000-record queue kept filling
//! was paused and resumed every 30-150 ms and then waited up to 450 ms for the next fetch
//! (docs/benchmarks.md). With a partition's records in their own queue, librdkafka keeps its
//! bounded prefetch (`queued.max.messages.kbytes`, counted per split queue) and stops fetching
//! the partition by itself while that prefetch is full; the other partitions keep flowing.
//!
//! How: the queue is split in the rebalance callback, before librdkafka starts fetching the
//! partition. A queue split then is flagged as forwarded by the application, and fetch start
//! leaves it alone (librdkafka `rd_kafka_toppar_op_fetch_start`), so every record of the partition
//! arrives in its queue and none in the consumer's queue: the order within a partition holds.
//! The consumer's own queue is still polled for rebalances, errors and statistics.
//!
//! The queues hold the consumer (`PartitionQueue` keeps an `Arc` of it) and the consumer's
//! context holds the queues; [`PartitionQueues::clear`] breaks that cycle before the consumer is
//! closed. Must not decide when to hold a partition; the coordinator does, through the driver.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;

use crate::runtime::driver::lock;

/// Records taken from one partition in a row before the next gets its turn: runs keep a
/// partition's records together for its worker, as librdkafka's fetch batches come.
const RUN: usize = 256;

/// Counts what librdkafka put into any of the queues, so a waiting poll wakes at once.
#[derive(Debug, Default)]
pub struct Arrivals {
    count: Mutex<u64>,
    changed: Condvar,
}

impl Arrivals {
    /// Called by librdkafka's threads when a queue becomes non-empty.
    pub fn notify(&self) {
        *lock(&self.count) += 1;
        self.changed.notify_all();
    }

    /// The count to wait on: read it before looking into the queues, so nothing that arrives
    /// after the look is missed.
    pub fn seen(&self) -> u64 {
        *lock(&self.count)
    }

    /// Waits until something arrived after `seen`, or until `deadline`.
    pub fn wait(&self, seen: u64, deadline: Instant) {
        let mut count = lock(&self.count);
        while *count == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            count = self
                .changed
                .wait_timeout(count, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

struct Split<C: ConsumerContext> {
    queue: PartitionQueue<C>,
    /// Not taken from: its worker has no room, or a growth holds the partition.
    held: bool,
}

struct Queues<C: ConsumerContext> {
    by_partition: BTreeMap<i32, Split<C>>,
    /// The partition taken from last, and how many records in a row came from it.
    last: i32,
    streak: usize,
}

/// The split queues of one consumer's assigned partitions of `topic`.
pub struct PartitionQueues<C: ConsumerContext> {
    topic: String,
    consumer: OnceLock<Weak<BaseConsumer<C>>>,
    queues: Mutex<Queues<C>>,
    arrivals: Arc<Arrivals>,
}

impl<C: ConsumerContext> std::fmt::Debug for PartitionQueues<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionQueues")
            .field("topic", &self.topic)
            .field("partitions", &lock(&self.queues).by_partition.keys())
            .finish_non_exhaustive()
    }
}

impl<C: ConsumerContext> PartitionQueues<C> {
    pub fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            consumer: OnceLock::new(),
            queues: Mutex::new(Queues {
                by_partition: BTreeMap::new(),
                last: -1,
                streak: 0,
            }),
            arrivals: Arc::default(),
        }
    }

    pub fn arrivals(&self) -> &Arc<Arrivals> {
        &self.arrivals
    }

    /// Gives the queues their consumer; splitting needs it, and the rebalance callback that splits
    /// only gets a reference.
    pub fn attach(&self, consumer: &Arc<BaseConsumer<C>>) {
        // Set once, by the one source that owns the consumer.
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    /// Splits the queues of newly assigned `partitions`; call before librdkafka assigns them.
    /// Returns the partitions that could not be split (their records would reach the consumer's
    /// queue instead, out of the driver's control).
    pub fn split(&self, partitions: &[i32]) -> Vec<i32> {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return partitions.to_vec();
        };
        let mut queues = lock(&self.queues);
        let mut failed = Vec::new();
        for &partition in partitions {
            match consumer.split_partition_queue(&self.topic, partition) {
                Some(mut queue) => {
                    let arrivals = Arc::clone(&self.arrivals);
                    queue.set_nonempty_callback(move || arrivals.notify());
                    queues
                        .by_partition
                        .insert(partition, Split { queue, held: false });
                }
                None => failed.push(partition),
            }
        }
        failed
    }

    /// Drops the queues of revoked `partitions`.
    pub fn remove(&self, partitions: &[i32]) {
        let mut queues = lock(&self.queues);
        for partition in partitions {
            queues.by_partition.remove(partition);
        }
    }

    /// Drops every queue, and with them their hold on the consumer, so that it can close.
    pub fn clear(&self) {
        lock(&self.queues).by_partition.clear();
    }

    /// Stops or restarts taking records from `partition`'s queue; librdkafka keeps fetching into
    /// it up to its prefetch bound. Unknown partitions are ignored: they are not assigned.
    pub fn hold(&self, partition: i32, held: bool) {
        if let Some(split) = lock(&self.queues).by_partition.get_mut(&partition) {
            split.held = held;
        }
    }

    /// The next record (or error) of any partition not held, converted by `take` while its queue
    /// is locked; `None` when all are empty. Records come in runs of up to [`RUN`] from one
    /// partition, then the next partition with records gets its turn, so none starves.
    pub fn poll<T>(&self, take: impl FnOnce(KafkaResult<BorrowedMessage<'_>>) -> T) -> Option<T> {
        let mut queues = lock(&self.queues);
        let first = if queues.streak < RUN {
            queues.last
        } else {
            queues.last.saturating_add(1)
        };
        let order = queues
            .by_partition
            .range(first..)
            .chain(queues.by_partition.range(..first));
        for (&partition, split) in order {
            if split.held {
                continue;
            }
            if let Some(polled) = split.queue.poll(std::time::Duration::ZERO) {
                let taken = take(polled);
                queues.streak = if partition == queues.last {
                    queues.streak + 1
                } else {
                    1
                };
                queues.last = partition;
                return Some(taken);
            }
        }
        None
    }
}
