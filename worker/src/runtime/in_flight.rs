//! A partition worker's records in flight: handlings that wait on I/O only (the notify stage's
//! webhook), kept running together while the worker takes the partition's next records, and
//! handed back finished in offset order, so offsets and outputs still commit in that order.
//!
//! Why: with one record at a time, a webhook that answers in r seconds capped a notify partition
//! at 1/r notifications per second (20 ms: 50 per second), and on loopback left the stage waiting
//! on round trips with cores idle (docs/benchmarks.md, session 18). Per-key order needs only that
//! one key's records go one at a time: the worker never puts a record in flight while a record of
//! the same key is. Keyless records have no order to keep.
//! This module must not report to the coordinator or judge growth; the partition worker does.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;

use super::budget::BytePermit;
use crate::stage::Handled;

/// One record's handling, finished: what the partition worker reports, in offset order.
#[derive(Debug)]
pub(crate) struct Finished {
    pub offset: i64,
    pub timestamp: DateTime<Utc>,
    /// Produce its outputs in a transaction of their own (they were refused before).
    pub isolate: bool,
    /// Held until the coordinator has produced the outputs.
    pub permit: BytePermit,
    /// From the start of its handling to its decision (not to its turn to be reported).
    pub took: Duration,
    /// `None`: interrupted (stop) before a decision; it and every later record stay uncommitted.
    pub handled: Option<Handled>,
}

/// A handling on its way to [`Finished`].
pub(crate) type Handling = Pin<Box<dyn Future<Output = Finished> + Send>>;

/// The records in flight of one partition, oldest first, of distinct keys.
pub(crate) struct InFlight {
    handlings: FuturesOrdered<Handling>,
    /// The key of each record in `handlings`, in the same order.
    keys: VecDeque<Option<Vec<u8>>>,
    capacity: usize,
}

impl InFlight {
    /// At most `capacity` records in flight (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            handlings: FuturesOrdered::new(),
            keys: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_room(&self) -> bool {
        self.keys.len() < self.capacity
    }

    /// Whether a record of `key` is in flight (never for a keyless record).
    pub fn holds(&self, key: Option<&[u8]>) -> bool {
        key.is_some_and(|key| self.keys.iter().flatten().any(|held| held == key))
    }

    /// Puts the handling of a record with `key` in flight, after every record already there.
    pub fn push(&mut self, key: Option<Vec<u8>>, handling: Handling) {
        self.keys.push_back(key);
        self.handlings.push_back(handling);
    }

    /// The oldest record's handling once it has finished (later ones may have finished before
    /// it and wait their turn); `None` when nothing is in flight. Cancel-safe: a record leaves
    /// only with its result.
    pub async fn next(&mut self) -> Option<Finished> {
        let finished = self.handlings.next().await;
        if finished.is_some() {
            self.keys.pop_front();
        }
        finished
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;
    use tokio::sync::oneshot;

    use super::*;
    use crate::runtime::ByteBudget;
    use crate::stage::Outcome;

    fn finished(offset: i64, permit: BytePermit) -> Finished {
        Finished {
            offset,
            timestamp: DateTime::UNIX_EPOCH,
            isolate: false,
            permit,
            took: Duration::ZERO,
            handled: Some(Handled::emitting(Outcome::PROCESSED, Vec::new())),
        }
    }

    #[tokio::test]
    async fn records_come_back_in_offset_order_whatever_order_they_finish_in() {
        let budget = ByteBudget::new(1024);
        let mut in_flight = InFlight::new(3);
        let mut answers = Vec::new();
        for offset in 0..3 {
            let (answer, answered) = oneshot::channel::<()>();
            answers.push(answer);
            let Some(permit) = budget.try_acquire(1) else {
                panic!("the budget has room");
            };
            let key = format!("order-{offset}").into_bytes();
            in_flight.push(
                Some(key),
                Box::pin(async move {
                    let _ = answered.await;
                    finished(offset, permit)
                }),
            );
        }
        assert!(!in_flight.has_room());
        assert!(in_flight.holds(Some(b"order-1")));
        assert!(!in_flight.holds(Some(b"order-3")));
        assert!(!in_flight.holds(None), "keyless records have no order");

        // The last two finish first; the oldest is still out, so nothing comes back.
        for answer in answers.drain(1..) {
            let _ = answer.send(());
        }
        assert!(
            in_flight.next().now_or_never().is_none(),
            "a later record came back before the oldest"
        );

        let _ = answers.remove(0).send(());
        let mut offsets = Vec::new();
        while let Some(done) = in_flight.next().await {
            offsets.push(done.offset);
        }
        assert_eq!(offsets, [0, 1, 2]);
        assert!(in_flight.is_empty() && in_flight.has_room());
        assert!(!in_flight.holds(Some(b"order-1")), "a finished key is free");
    }
}
