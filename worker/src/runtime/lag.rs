//! Consumer lag per assigned partition: the input's high watermark (from the consumer's
//! statistics) minus the offset this worker last committed for it, except when the worker has
//! caught up. Both halves arrive at different times from different threads; whichever arrives
//! updates the gauge. Must not fetch anything itself.
//!
//! Why "caught up" is a case of its own: on a transactional input, every transaction ends in a
//! commit marker that takes an offset but is never delivered, so the offset this worker commits
//! (the last record's + 1) stays below the high watermark for ever on an idle partition. An idle
//! stage would read a lag of one per partition (more after an aborted transaction) and an alert
//! on "a backlog and no progress" would fire on it. The consumer's statistics and the coordinator
//! together say when nothing is left: the fetcher is past the last stable offset, nothing waits
//! in its queue, and every record routed to the partition's worker is committed. [`lag`] is that
//! rule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::Metrics;

/// What the consumer's statistics (librdkafka's field names in brackets; a negative offset is
/// librdkafka's "not known") and the coordinator say about one partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FetchView {
    /// The high watermark (`hi_offset`).
    pub high_watermark: i64,
    /// The last stable offset (`ls_offset`): with `read_committed`, the fetcher stops there.
    pub last_stable: i64,
    /// The next offset the fetcher will fetch (`next_offset`): past any control record it read.
    pub next_fetch: i64,
    /// Records fetched and not yet handed over (`fetchq_cnt`).
    pub queued: i64,
    /// The offset after the last record routed to the partition's worker (not librdkafka's
    /// `app_offset`, which also moves past commit markers).
    pub routed_to: Option<i64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Ends {
    fetch: Option<FetchView>,
    committed: Option<i64>,
}

/// The lag of a partition, once both halves are known: everything from the committed offset to
/// the high watermark, or, once caught up, only what sits in still-open transactions.
fn lag(fetch: FetchView, committed: i64) -> i64 {
    let caught_up = fetch.queued == 0
        && fetch.last_stable >= 0
        && fetch.next_fetch >= fetch.last_stable
        && fetch.routed_to.is_none_or(|routed| routed <= committed);
    let from = if caught_up {
        fetch.last_stable
    } else {
        committed
    };
    fetch.high_watermark.saturating_sub(from).max(0)
}

/// The two halves of each partition's lag.
#[derive(Debug)]
pub struct LagBook {
    partitions: Mutex<HashMap<i32, Ends>>,
    metrics: Arc<Metrics>,
}

impl LagBook {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            partitions: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Records the committed offset of an assigned partition (`None`: nothing committed yet, so
    /// everything from the log start counts).
    pub fn committed(&self, partition: i32, offset: Option<i64>) {
        self.update(partition, |ends| ends.committed = Some(offset.unwrap_or(0)));
    }

    /// Records what the statistics say about a partition, if this worker tracks it.
    pub fn fetched(&self, partition: i32, view: FetchView) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(ends) = partitions.get_mut(&partition) {
            ends.fetch = Some(view);
            self.publish(partition, *ends);
        }
    }

    /// Stops tracking a partition this worker no longer owns.
    pub fn forget(&self, partition: i32) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        partitions.remove(&partition);
        self.metrics.forget_partition(partition);
    }

    fn update(&self, partition: i32, change: impl FnOnce(&mut Ends)) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ends = partitions.entry(partition).or_default();
        change(ends);
        self.publish(partition, *ends);
    }

    fn publish(&self, partition: i32, ends: Ends) {
        if let (Some(fetch), Some(committed)) = (ends.fetch, ends.committed) {
            self.metrics
                .set_consumer_lag(partition, lag(fetch, committed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition of 100 records in transactions, the last ending in a commit marker at 100.
    fn idle_after_a_transaction() -> FetchView {
        FetchView {
            high_watermark: 101,
            last_stable: 101,
            next_fetch: 101,
            queued: 0,
            routed_to: Some(100),
        }
    }

    #[test]
    fn an_idle_partition_of_a_transactional_input_has_no_lag() {
        // The naive high watermark - committed reads 1 here: the commit marker.
        assert_eq!(lag(idle_after_a_transaction(), 100), 0);
    }

    #[test]
    fn records_routed_but_not_yet_committed_are_lag() {
        assert_eq!(lag(idle_after_a_transaction(), 40), 61);
    }

    #[test]
    fn records_still_queued_or_not_yet_fetched_are_lag() {
        let queued = FetchView {
            queued: 7,
            ..idle_after_a_transaction()
        };
        assert_eq!(lag(queued, 93), 8);
        let behind = FetchView {
            next_fetch: 50,
            routed_to: Some(50),
            ..idle_after_a_transaction()
        };
        assert_eq!(lag(behind, 50), 51);
    }

    #[test]
    fn a_partition_that_only_ever_held_commit_markers_has_no_lag() {
        let markers_only = FetchView {
            routed_to: None,
            ..idle_after_a_transaction()
        };
        assert_eq!(lag(markers_only, 0), 0);
    }

    #[test]
    fn records_of_a_still_open_transaction_are_lag_once_caught_up() {
        let open = FetchView {
            high_watermark: 130,
            ..idle_after_a_transaction()
        };
        assert_eq!(lag(open, 100), 29);
    }

    #[test]
    fn unknown_offsets_never_count_as_caught_up() {
        let unknown = FetchView {
            last_stable: -1001,
            next_fetch: -1001,
            routed_to: None,
            ..idle_after_a_transaction()
        };
        assert_eq!(lag(unknown, 100), 1);
    }
}
