//! The stage runtime: the read-process-write loop around the pure stages, independent of Kafka.
//!
//! - [`driver::drive`] is the loop: poll the [`Source`], route records to partition workers, let
//!   the [`Coordinator`] commit, apply back-pressure (pause/resume) and rewinds.
//! - [`Coordinator`] owns the one [`Sink`] (the transactional producer): it turns finished records
//!   into produced records inside one open transaction and commits every partition's progress
//!   together, with the consumer offsets, once per commit interval. It also owns rebalancing
//!   (finish and commit revoked partitions; start workers for assigned ones) and recovery (abort,
//!   re-create the producer, rewind every partition to its committed offset).
//!   What the open transaction holds and counts is `transaction`'s bookkeeping; each assigned
//!   partition's worker, phase and held-back records are a `slot`.
//! - partition workers (`partition`) handle one partition's records one at a time, in offset
//!   order, after restoring its per-key state from the [`ChangelogReader`]; decisions that wait on
//!   I/O overlap for records of distinct keys (`in_flight`) and are still reported in order.
//! - [`growth`]: the worker's side of coordinated partition growth (issue #22): which control
//!   records are the stage's, which partitions a growth holds, which markers a commit carries.
//!   Partition workers apply `orderpipe_growth`'s per-record rule; the coordinator holds, pauses
//!   and releases new partitions and commits re-shard markers.
//!
//! - `ports`: what the loop needs from a broker ([`Source`], [`Sink`], [`ChangelogReader`]) and the
//!   errors they report, in the runtime's own types. Kafka implements the ports in `crate::kafka`;
//!   `memory` (test-only) implements them in memory.
//!
//! This module must not name a Kafka client library (its types stay in `crate::kafka`) or topics'
//! contents; it must not block the async runtime (the driver runs on its own thread).

mod budget;
mod coordinator;
pub mod driver;
pub mod growth;
mod health;
mod in_flight;
mod lag;
#[cfg(test)]
mod memory;
mod partition;
mod ports;
mod refusals;
mod slot;
#[cfg(test)]
mod tests;
mod transaction;

use std::time::Duration;

pub use budget::{ByteBudget, BytePermit};
pub use coordinator::{Coordinator, CoordinatorParts};
pub use health::{DEFAULT_COMMIT_STALL, Health};
pub use lag::{FetchView, LagBook};
pub use ports::{
    ApplyChangelog, BrokerError, ChangelogReader, CommittedOffsets, Offsets, Sink, SinkError,
    SinkErrorKind, Source,
};
pub use refusals::{Position, Refusal};
pub use slot::Routed;

/// Limits that keep memory flat and rebalances bounded.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How long records are batched into one transaction.
    pub commit_interval: Duration,
    /// A transaction is committed early once it holds this many input records.
    pub max_records_per_transaction: usize,
    /// Records queued per partition before its fetching is paused.
    pub partition_queue: usize,
    /// Records of distinct keys a partition worker keeps in flight while their decisions wait on
    /// I/O (the notify stage's webhook); 1 handles them one at a time.
    pub records_in_flight: usize,
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
            // Enough to keep the cores busy on loopback (docs/benchmarks.md, session 18) and
            // 8 POSTs per partition against a slow webhook; per-key order holds at any value.
            records_in_flight: 8,
            max_in_flight_bytes: 32 * 1024 * 1024,
            // Leaves part of the grace period for the commit and leaving the group.
            stop_timeout: shutdown_grace.mul_f64(0.6),
            recreate_backoff: Duration::from_secs(2),
        }
    }
}
