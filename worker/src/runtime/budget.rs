//! The in-flight byte budget: input records queued for or held by partition workers count against
//! one limit shared by all partitions, so memory stays flat whatever the input rate. A permit
//! travels with its record and gives its bytes back when dropped (processed and produced, or
//! discarded with a stopped worker's queue). Must not block: a full budget pauses a partition.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shared byte budget.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// A permit for `bytes`, or `None` when they do not fit. A record larger than the whole
    /// budget still gets a permit when nothing else is in flight, so it cannot block forever.
    pub fn try_acquire(&self, bytes: usize) -> Option<BytePermit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let fits = used.checked_add(bytes).is_some_and(|sum| sum <= self.limit);
                (used == 0 || fits).then(|| used.saturating_add(bytes))
            })
            .ok()
            .map(|_| BytePermit {
                used: Arc::clone(&self.used),
                bytes,
            })
    }

    /// Bytes currently in flight.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes of one in-flight record; returned to the budget on drop.
#[derive(Debug)]
pub struct BytePermit {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for BytePermit {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_refused_beyond_the_limit_and_returned_on_drop() {
        let budget = ByteBudget::new(100);
        let first = budget.try_acquire(60).expect("fits");
        assert!(budget.try_acquire(50).is_none());
        let second = budget.try_acquire(40).expect("fits exactly");
        assert_eq!(budget.used(), 100);
        drop(first);
        drop(second);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_oversized_record_passes_alone_so_it_cannot_wedge_its_partition() {
        let budget = ByteBudget::new(10);
        let big = budget.try_acquire(1_000).expect("alone in flight");
        assert!(budget.try_acquire(1).is_none());
        drop(big);
        assert!(budget.try_acquire(1).is_some());
    }
}
