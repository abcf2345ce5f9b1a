//! The open transaction's bookkeeping: when it began, how far each partition got in it (the next
//! offset to consume, which its commit stores), and what it counts once committed (records by
//! outcome, dead letters by reason). It decides when the transaction is due; beginning, producing,
//! committing and aborting are the coordinator's calls to the sink. Must not touch the sink.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
}

impl OpenTransaction {
    pub fn begin(now: Instant) -> Self {
        Self {
            started: now,
            offsets: Offsets::new(),
            records: 0,
            outcomes: BTreeMap::new(),
            dead_letters: BTreeMap::new(),
        }
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
