//! Input records whose outputs Kafka refused for good, and what to produce for them instead.
//!
//! A record the broker will never accept (larger than the topic's `max.message.bytes`, an invalid
//! record) fails the whole transaction on every retry; without an escape its partition would stop
//! for ever. The sink reports which inputs produced the refused records; the coordinator notes them
//! here, aborts and rewinds as after any failed transaction. From then on each noted input is
//! produced in a transaction of its own, and as it is refused again it escalates:
//! 1. first refusal: maybe not its fault — the broker refuses a whole batch, so every input with a
//!    record in it is reported. Processed as usual, alone: an innocent input now commits.
//! 2. refused alone: guilty. An `output_refused` dead letter copying the input (cut to the input
//!    limits) instead of the processor's outputs, leaving the key's state alone (none of the
//!    refused outputs were written).
//! 3. that refused too (the dead-letter topic's limit is lower still): the dead letter without the
//!    payload, headers only;
//! 4. that refused too: nothing about the record can be fixed; the worker stops with an error that
//!    names the input and the broker's answer (see `docs/worker.md`).
//!
//! Entries live until the partition commits past them or leaves this worker. Must not decide which
//! Kafka errors are record refusals (the sink does) and must not do I/O.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use orderpipe_orders::dead_letter::DeadLetterCopy;

use super::driver::lock;

/// Where an input record is: its partition and offset in the stage's input topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// A refused output, as the sink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The input record whose output was refused.
    pub from: Position,
    /// The broker's (or its client's) error, for the dead letter's message header.
    pub error: String,
}

/// What to produce for an input whose outputs were refused before. Every escape is produced in
/// a transaction of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Escape {
    /// Refused once: maybe only for sharing a batch with the guilty record (the broker refuses
    /// whole batches). Processed as usual, but alone.
    Isolate,
    /// A dead letter copying this much of the input.
    DeadLetter { copy: DeadLetterCopy, error: String },
    /// Even the bare dead letter was refused: stop with this error.
    GiveUp { error: String },
}

#[derive(Debug, Default)]
pub struct Refusals {
    /// Refusals so far per input record: the last error and how many times.
    by_position: Mutex<BTreeMap<Position, (String, u32)>>,
    /// Whether `by_position` may hold anything: the common case, nothing refused, costs one load.
    any: AtomicBool,
}

impl Refusals {
    /// Notes the refusals of one failed transaction. An input counts once per transaction however
    /// many of its records were refused (each output is a record, and a batch refusal reports them
    /// all), so that one failure never skips its isolation step.
    pub fn record(&self, refusals: Vec<Refusal>) {
        let by_input: BTreeMap<Position, String> = refusals
            .into_iter()
            .map(|refusal| (refusal.from, refusal.error))
            .collect();
        if by_input.is_empty() {
            return;
        }
        let mut by_position = lock(&self.by_position);
        for (from, error) in by_input {
            let entry = by_position
                .entry(from)
                .or_insert_with(|| (String::new(), 0));
            entry.0 = error;
            entry.1 = entry.1.saturating_add(1);
        }
        self.any.store(true, Ordering::Release);
    }

    /// What to produce for the input at `at` instead of the processor's outputs, if it was refused.
    pub fn escape(&self, at: Position) -> Option<Escape> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let by_position = lock(&self.by_position);
        let (error, times) = by_position.get(&at)?;
        let error = error.clone();
        Some(match times {
            1 => Escape::Isolate,
            2 => Escape::DeadLetter {
                copy: DeadLetterCopy::KeyAndPayload,
                error,
            },
            3 => Escape::DeadLetter {
                copy: DeadLetterCopy::KeyOnly,
                error,
            },
            _ => Escape::GiveUp { error },
        })
    }

    /// Forgets the refusals of `partition` below `committed` (the next offset to consume).
    pub fn committed(&self, partition: i32, committed: i64) {
        self.retain(|at| at.partition != partition || at.offset >= committed);
    }

    /// Forgets the refusals of a partition this worker no longer owns; its next owner finds them
    /// again by itself.
    pub fn released(&self, partition: i32) {
        self.retain(|at| at.partition != partition);
    }

    fn retain(&self, keep: impl Fn(&Position) -> bool) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut by_position = lock(&self.by_position);
        by_position.retain(|at, _| keep(at));
        self.any.store(!by_position.is_empty(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }

    fn refusal(partition: i32, offset: i64) -> Refusal {
        Refusal {
            from: at(partition, offset),
            error: format!("too large at {offset}"),
        }
    }

    fn refuse(refusals: &Refusals, partition: i32, offset: i64) {
        refusals.record(vec![refusal(partition, offset)]);
    }

    #[test]
    fn an_input_counts_once_per_failed_transaction_however_many_of_its_records_were_refused() {
        let refusals = Refusals::default();
        refusals.record(vec![refusal(0, 5), refusal(0, 5), refusal(0, 5)]);
        assert_eq!(refusals.escape(at(0, 5)), Some(Escape::Isolate));
    }

    #[test]
    fn each_refusal_of_the_same_input_escalates_until_the_worker_gives_up() {
        let refusals = Refusals::default();
        assert_eq!(refusals.escape(at(0, 5)), None);
        let steps: Vec<Option<Escape>> = (0..4)
            .map(|_| {
                refuse(&refusals, 0, 5);
                refusals.escape(at(0, 5))
            })
            .collect();
        let error = "too large at 5".to_owned();
        assert_eq!(
            steps,
            [
                Some(Escape::Isolate),
                Some(Escape::DeadLetter {
                    copy: DeadLetterCopy::KeyAndPayload,
                    error: error.clone()
                }),
                Some(Escape::DeadLetter {
                    copy: DeadLetterCopy::KeyOnly,
                    error: error.clone()
                }),
                Some(Escape::GiveUp { error }),
            ]
        );
        assert_eq!(
            refusals.escape(at(1, 5)),
            None,
            "other partitions are unaffected"
        );
    }

    #[test]
    fn refusals_are_forgotten_once_committed_past_or_released() {
        let refusals = Refusals::default();
        refuse(&refusals, 0, 5);
        refuse(&refusals, 0, 9);
        refuse(&refusals, 1, 5);
        refusals.committed(0, 6);
        assert_eq!(refusals.escape(at(0, 5)), None);
        assert!(refusals.escape(at(0, 9)).is_some());
        refusals.released(1);
        assert_eq!(refusals.escape(at(1, 5)), None);
        refusals.committed(0, 10);
        assert!(!refusals.any.load(Ordering::Acquire), "empty again");
    }
}
