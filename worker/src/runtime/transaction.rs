//! The open transaction's bookkeeping: when it began, how far each partition got in it (the next
//! offset to consume, which its commit stores, and the re-shard markers it writes), and what it
//! counts once committed (records by outcome, dead letters by reason, moved keys, forwarded
//! records). It decides when the transaction is due; beginning, producing,
//! committing and aborting are the coordinator's calls to the sink. Must not touch the sink.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use orderpipe_growth::ReshardMarker;

use super::growth::Markers;
use super::{Offsets, Tuning};
use crate::metrics::{Metrics, transaction};
use crate::stage::Outcome;

/// The progress of the one open transaction.
#[derive(Debug)]
pub(crate) struct OpenTransaction {
    started: Instant,
    offsets: Offsets,
    records: u64,
    outcomes: BTreeMap<&'static str, u64>,
    dead_letters: BTreeMap<&'static str, u64>,
    markers: Markers,
    moved_keys: u64,
    forwarded: u64,
}

impl OpenTransaction {
    pub fn begin(now: Instant) -> Self {
        Self {
            started: now,
            offsets: Offsets::new(),
            records: 0,
            outcomes: BTreeMap::new(),
            dead_letters: BTreeMap::new(),
            markers: Markers::new(),
            moved_keys: 0,
            forwarded: 0,
        }
    }

    /// `partition`'s state was re-sharded in it (`moved_keys` moves written): every record below
    /// `next_offset` is processed, and the commit carries `marker`.
    pub fn resharded(
        &mut self,
        partition: i32,
        next_offset: i64,
        marker: ReshardMarker,
        moved_keys: usize,
    ) {
        let offset = self.offsets.entry(partition).or_insert(next_offset);
        *offset = (*offset).max(next_offset);
        let kept = self.markers.entry(partition).or_insert(marker);
        *kept = (*kept).max(marker);
        self.moved_keys += moved_keys as u64;
    }

    /// The input record at `offset` of `partition` was forwarded to its key's new partition in it.
    pub fn forwarded(&mut self, partition: i32, offset: i64) {
        self.offsets.insert(partition, offset + 1);
        self.forwarded += 1;
    }

    /// The re-shard markers it writes.
    pub fn markers(&self) -> &Markers {
        &self.markers
    }

    /// The input record at `offset` of `partition` is finished: its outputs are in the
    /// transaction, so its partition's progress moves past it.
    pub fn finished(&mut self, partition: i32, offset: i64, outcome: Outcome) {
        self.offsets.insert(partition, offset + 1);
        self.records += 1;
        *self.outcomes.entry(outcome.label).or_default() += 1;
        if let Some(reason) = outcome.dead_letter {
            *self.dead_letters.entry(reason.code()).or_default() += 1;
        }
    }

    /// How long it has been open at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Whether it must commit at `now`: its interval is over, or it is full.
    pub fn is_due(&self, now: Instant, tuning: &Tuning) -> bool {
        self.age(now) >= tuning.commit_interval
            || self.records >= tuning.max_records_per_transaction as u64
    }

    /// The next offset to consume of every partition it made progress on.
    pub fn offsets(&self) -> &Offsets {
        &self.offsets
    }

    /// Input records finished in it.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Counts what it did, once it committed.
    pub fn count_committed(&self, metrics: &Metrics) {
        metrics.transaction(transaction::COMMITTED);
        for (label, count) in &self.outcomes {
            metrics.processed(label, *count);
        }
        for (reason, count) in &self.dead_letters {
            metrics.dead_lettered(reason, *count);
        }
        metrics.reshard_keys_moved(self.moved_keys);
        metrics.growth_forwarded(self.forwarded);
    }
}

#[cfg(test)]
mod tests {
    use orderpipe_orders::DeadLetterReason;

    use super::*;

    #[test]
    fn a_partitions_progress_is_the_offset_after_its_last_finished_record() {
        let mut open = OpenTransaction::begin(Instant::now());
        open.finished(0, 4, Outcome::PROCESSED);
        open.finished(1, 9, Outcome::REJECTED);
        open.finished(0, 5, Outcome::PROCESSED);
        assert_eq!(open.offsets(), &Offsets::from([(0, 6), (1, 10)]));
        assert_eq!(open.records(), 3);
    }

    #[test]
    fn a_reshard_moves_progress_to_its_offset_and_writes_its_marker() {
        let mut open = OpenTransaction::begin(Instant::now());
        open.finished(0, 4, Outcome::PROCESSED);
        // Idle after a transaction marker at 5: the re-shard commits 6.
        open.resharded(0, 6, ReshardMarker { generation: 2 }, 3);
        open.resharded(1, 0, ReshardMarker { generation: 2 }, 0);
        open.forwarded(0, 6);
        assert_eq!(open.offsets(), &Offsets::from([(0, 7), (1, 0)]));
        assert_eq!(
            open.markers(),
            &Markers::from([
                (0, ReshardMarker { generation: 2 }),
                (1, ReshardMarker { generation: 2 })
            ])
        );
        assert_eq!(
            open.records(),
            1,
            "moves and forwards are not processed records"
        );
    }

    #[test]
    fn it_is_due_when_its_interval_is_over_or_it_is_full() {
        let tuning = Tuning {
            max_records_per_transaction: 3,
            ..Tuning::new(Duration::from_millis(100), Duration::from_secs(10))
        };
        let started = Instant::now();
        let mut open = OpenTransaction::begin(started);
        open.finished(0, 0, Outcome::PROCESSED);
        assert!(!open.is_due(started + Duration::from_millis(99), &tuning));
        assert!(open.is_due(started + Duration::from_millis(100), &tuning));
        open.finished(0, 1, Outcome::PROCESSED);
        open.finished(0, 2, Outcome::dead_lettered(DeadLetterReason::NotJson));
        assert!(open.is_due(started, &tuning), "full");
    }
}
