//! The runtime's ports: what the loop needs from a broker — a [`Source`] of input records (a
//! consumer group member), a [`Sink`] for outputs and offsets (one transactional producer), a
//! [`ChangelogReader`] to restore per-key state — and the errors they report.
//!
//! The errors carry exactly the distinctions the coordinator acts on: a [`SinkErrorKind`] (abort,
//! re-create, or stop as fenced); everything else a broker says is a [`BrokerError`], text for the
//! logs that the runtime never looks into. A backend maps its client's errors into these (the
//! Kafka adapter in `crate::kafka`, with the Kafka client's error text) and keeps the group
//! metadata a transactional commit needs behind [`Sink::Group`]. This module must not name a
//! client library, and a backend that is not Kafka (the in-memory one) must not need to invent
//! Kafka's errors to implement it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::growth::Markers;
use super::refusals::{Position, Refusal};
use crate::error::RestoreFailure;
use crate::record::{OutRecord, SourceRecord};

/// Next offset to consume, per input partition (what a commit stores).
pub type Offsets = BTreeMap<i32, i64>;

/// Committed offsets as read back from the group; `None` where the group has committed nothing.
pub type CommittedOffsets = BTreeMap<i32, Option<i64>>;

/// What a broker (or its client) said about a failed call, as its backend words it, with the
/// backend's own error code. Only logged and shown: what the runtime must decide is carried by the
/// error that contains it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BrokerError {
    message: String,
}

impl BrokerError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
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
    /// A newer instance with our transactional id exists, or the broker aborted a transaction
    /// that timed out (Kafka fences that producer epoch too): this process stops.
    Fenced,
}

impl fmt::Display for SinkErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Abortable => "abortable",
            Self::Fatal => "fatal",
            Self::Fenced => "fenced",
        })
    }
}

/// A failed sink operation.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed ({kind}): {cause}")]
pub struct SinkError {
    pub kind: SinkErrorKind,
    pub operation: &'static str,
    #[source]
    pub cause: BrokerError,
}

/// Where a stage's records go: one producer, one open transaction at a time.
pub trait Sink: Send + 'static {
    /// The consumer group's side of a commit, as this sink needs it (a Kafka transactional sink:
    /// the member whose group metadata goes into the transaction; an at-least-once one: the member
    /// that commits the offsets). The runtime only hands it from the [`Source`] to
    /// [`Sink::commit`].
    type Group: ?Sized;

    fn begin(&mut self) -> Result<(), SinkError>;
    /// Produces one record, an output of the input record at `from`, into the open transaction.
    fn send(&mut self, from: Position, record: OutRecord<'_>) -> Result<(), SinkError>;
    /// Adds the input offsets to the transaction and commits it. A partition in `markers` is
    /// committed with that re-shard marker as its offset's metadata (partition growth).
    fn commit(
        &mut self,
        input_topic: &str,
        offsets: &Offsets,
        markers: &Markers,
        group: &Self::Group,
    ) -> Result<(), SinkError>;
    fn abort(&mut self) -> Result<(), SinkError>;
    /// Replaces an unusable producer with a fresh one.
    fn recreate(&mut self) -> Result<(), SinkError>;
    /// The records of the failed transaction that the broker refused for good (too large,
    /// invalid), by the input that produced them, waiting (bounded) for outstanding delivery
    /// reports. Called after a failed transaction was aborted; each refusal is reported once.
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
/// which call into the [`Coordinator`](super::Coordinator) themselves. Every failure is logged
/// and retried by the loop, so its errors carry nothing to decide on.
pub trait Source {
    /// This member as its sink's commits need it (see [`Sink::Group`]).
    type Group: ?Sized;

    /// The next record, or `None` when none arrived within `timeout`.
    fn poll(&mut self, timeout: Duration) -> Option<Result<SourceRecord, BrokerError>>;
    fn pause(&mut self, partition: i32) -> Result<(), BrokerError>;
    fn resume(&mut self, partition: i32) -> Result<(), BrokerError>;
    /// The group's committed offsets of `partitions` (waiting for pending transactional commits).
    fn committed(&mut self, partitions: &[i32]) -> Result<CommittedOffsets, BrokerError>;
    /// Makes the next record of `partition` the one at `offset` (`None`: the earliest).
    fn seek(&mut self, partition: i32, offset: Option<i64>) -> Result<(), BrokerError>;
    /// For each of `partitions`, the offset after the last record (or transaction marker, which
    /// is never delivered) polling has handed out since it was assigned or sought; partitions
    /// without one yet are left out.
    fn positions(&mut self, partitions: &[i32]) -> BTreeMap<i32, i64>;
    fn group(&self) -> &Self::Group;
    /// Leaves the group (running the final revocation) by `deadline`.
    fn close(&mut self, deadline: Instant);
}

/// The binary picks its sink at run time (exactly-once or at-least-once); one coordinator type
/// serves both.
impl<G: ?Sized + 'static> Sink for Box<dyn Sink<Group = G>> {
    type Group = G;

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
        markers: &Markers,
        group: &G,
    ) -> Result<(), SinkError> {
        (**self).commit(input_topic, offsets, markers, group)
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
