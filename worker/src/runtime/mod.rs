//! The stage runtime: the read-process-write loop around the pure stages, independent of Kafka.
//!
//! - [`driver::drive`] is the loop: poll the [`Source`], route records to partition workers, let
//!   the [`Coordinator`] commit, apply back-pressure (pause/resume) and rewinds.
//! - [`Coordinator`] owns the one [`Sink`] (the transactional producer): it turns finished records
//!   into produced records inside one open transaction and commits every partition's progress
//!   together, with the consumer offsets, once per commit interval. It also owns rebalancing
//!   (finish and commit revoked partitions; start workers for assigned ones) and recovery (abort,
//!   re-create the producer, rewind every partition to its committed offset).
//! - partition workers (`partition`) handle one partition's records one at a time, in offset
//!   order, after restoring its per-key state from the [`ChangelogReader`].
//!
//! Kafka implements the ports in `crate::kafka`; `memory` (test-only) implements them in memory. This module must not name rdkafka clients or topics' contents; it must not block the
//! async runtime (the driver runs on its own thread).

mod budget;
mod coordinator;
pub mod driver;
mod health;
mod lag;
#[cfg(test)]
mod memory;
mod partition;
mod refusals;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

pub use budget::{ByteBudget, BytePermit};
pub use coordinator::{Coordinator, CoordinatorParts, Routed};
pub use health::Health;
pub use lag::LagBook;
pub use refusals::{Position, Refusal};

use crate::error::RestoreFailure;
use crate::record::{OutRecord, SourceRecord};

/// Next offset to consume, per input partition (what a commit stores).
pub type Offsets = BTreeMap<i32, i64>;

/// Committed offsets as read back from the group; `None` where the group has committed nothing.
pub type CommittedOffsets = BTreeMap<i32, Option<i64>>;

/// Limits that keep memory flat and rebalances bounded.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How long records are batched into one transaction.
    pub commit_interval: Duration,
    /// A transaction is committed early once it holds this many input records.
    pub max_records_per_transaction: usize,
    /// Records queued per partition before its fetching is paused.
    pub partition_queue: usize,
    /// Bytes of input records queued or in processing, over all partitions, before fetching of the
    /// partition that hits the limit is paused.
    pub max_in_flight_bytes: usize,
    /// How long a revocation or shutdown waits for partition workers to finish the record in hand.
    pub stop_timeout: Duration,
    /// Wait between attempts to re-create a producer that could not be recovered.
    pub recreate_backoff: Duration,
}

impl Tuning {
    /// Defaults around the contract's commit interval and shutdown grace period.
    pub fn new(commit_interval: Duration, shutdown_grace: Duration) -> Self {
        Self {
            commit_interval,
            max_records_per_transaction: 20_000,
            partition_queue: 10_000,
            max_in_flight_bytes: 32 * 1024 * 1024,
            // Leaves part of the grace period for the commit and leaving the group.
            stop_timeout: shutdown_grace.mul_f64(0.6),
            recreate_backoff: Duration::from_secs(2),
        }
    }
}

/// How a sink failure must be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// Abort the transaction, rewind to the committed offsets, continue.
    Abortable,
    /// The producer is unusable: re-create it (which aborts what it left open), rewind, continue.
    Fatal,
    /// A newer instance with our transactional id exists: this process is a zombie and stops.
    Fenced,
}

/// A failed sink operation.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed ({kind:?}): {source}")]
pub struct SinkError {
    pub kind: SinkErrorKind,
    pub operation: &'static str,
    #[source]
    pub source: KafkaError,
}

/// The consumer group side of a commit: its metadata for a transactional offset commit (KIP-447),
/// or a plain offset commit when at-least-once.
pub trait GroupCommit {
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata>;
    fn commit_offsets(&self, topic: &str, offsets: &Offsets) -> Result<(), KafkaError>;
}

/// Where a stage's records go: one producer, one open transaction at a time.
pub trait Sink: Send + 'static {
    fn begin(&mut self) -> Result<(), SinkError>;
    /// Produces one record, an output of the input record at `from`, into the open transaction.
    fn send(&mut self, from: Position, record: OutRecord<'_>) -> Result<(), SinkError>;
    /// Adds the input offsets to the transaction and commits it.
    fn commit(
        &mut self,
        input_topic: &str,
        offsets: &Offsets,
        group: &dyn GroupCommit,
    ) -> Result<(), SinkError>;
    fn abort(&mut self) -> Result<(), SinkError>;
    /// Replaces an unusable producer with a fresh one.
    fn recreate(&mut self) -> Result<(), SinkError>;
    /// The records of the failed transaction that Kafka refused for good (too large, invalid), by
    /// the input that produced them, waiting (bounded) for outstanding delivery reports. Called
    /// after a failed transaction was aborted; each refusal is reported once.
    fn take_refusals(&mut self) -> Vec<Refusal>;
}

/// Receives each changelog record of a restore: `(offset, key, value)`.
pub type ApplyChangelog<'a> =
    dyn FnMut(i64, &[u8], Option<&[u8]>) -> Result<(), RestoreFailure> + 'a;

/// Reads a stateful stage's changelog partition to restore per-key state.
pub trait ChangelogReader: Send + Sync + 'static {
    fn topic(&self) -> &str;

    /// Calls `apply(offset, key, value)` for every committed record of `partition`, from the
    /// beginning to the end as of the call, in order. Blocking; gives up when `stop` is cancelled.
    fn read(
        &self,
        partition: i32,
        stop: &CancellationToken,
        apply: &mut ApplyChangelog<'_>,
    ) -> Result<u64, RestoreFailure>;
}

/// Where input records come from: a consumer group member. Polling may run rebalance callbacks,
/// which call into the [`Coordinator`] themselves.
pub trait Source {
    /// The next record, or `None` when none arrived within `timeout`.
    fn poll(&mut self, timeout: Duration) -> Option<Result<SourceRecord, KafkaError>>;
    fn pause(&mut self, partition: i32) -> Result<(), KafkaError>;
    fn resume(&mut self, partition: i32) -> Result<(), KafkaError>;
    /// The group's committed offsets of `partitions` (waiting for pending transactional commits).
    fn committed(&mut self, partitions: &[i32]) -> Result<CommittedOffsets, KafkaError>;
    /// Makes the next record of `partition` the one at `offset` (`None`: the earliest).
    fn seek(&mut self, partition: i32, offset: Option<i64>) -> Result<(), KafkaError>;
    fn group(&self) -> &dyn GroupCommit;
    /// Leaves the group (running the final revocation) by `deadline`.
    fn close(&mut self, deadline: Instant);
}

/// The binary picks its sink at run time (exactly-once or at-least-once); one coordinator type
/// serves both.
impl Sink for Box<dyn Sink> {
    fn begin(&mut self) -> Result<(), SinkError> {
        (**self).begin()
    }

    fn send(&mut self, from: Position, record: OutRecord<'_>) -> Result<(), SinkError> {
        (**self).send(from, record)
    }

    fn commit(
        &mut self,
        input_topic: &str,
        offsets: &Offsets,
        group: &dyn GroupCommit,
    ) -> Result<(), SinkError> {
        (**self).commit(input_topic, offsets, group)
    }

    fn abort(&mut self) -> Result<(), SinkError> {
        (**self).abort()
    }

    fn recreate(&mut self) -> Result<(), SinkError> {
        (**self).recreate()
    }

    fn take_refusals(&mut self) -> Vec<Refusal> {
        (**self).take_refusals()
    }
}
