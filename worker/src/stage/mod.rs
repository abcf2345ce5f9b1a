//! The stages as the runtime drives them: one [`StageHandler`] per built-in processor, wrapping the
//! pure decisions of `orderpipe-orders`. A handler turns one input record (plus the partition's
//! per-key state) into the records to produce; only the notify stage does I/O (its webhook), and
//! hands that part back as a [`Decision`] still waiting.
//! This module must not touch Kafka, offsets or transactions.

pub mod fault;
pub mod notify;
pub mod webhook;

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use chrono::{DateTime, TimeDelta, Utc};

use orderpipe_api::contract::metrics::outcome;
use orderpipe_orders::status::StatusOutcome;
use orderpipe_orders::validate::ValidateOutcome;
use orderpipe_orders::{
    ChangelogState, DeadLetterReason, Emit, Output, Processor, Stage, StateDecodeError,
};
use tokio_util::sync::CancellationToken;

use crate::record::SourceRecord;

/// How often, in record time, a partition drops the states its processor calls expired. A sweep
/// walks every key of the partition, so it runs rarely; an expired state is never used meanwhile
/// (processors treat it like no state), it only takes memory a little longer.
const EXPIRY_SWEEP_EVERY: TimeDelta = TimeDelta::minutes(10);

/// Per-key state of one partition, keyed like the changelog records, with the size of what it
/// holds (keys plus their changelog records' bytes, a proxy for memory that needs no allocator).
#[derive(Debug)]
pub struct KeyStates<S> {
    /// Boxed keys: 8 bytes less per entry than a `Vec` (no capacity), on millions of entries.
    by_key: HashMap<Box<[u8]>, (S, usize)>,
    bytes: usize,
    /// Record time of the last expiry sweep (`None`: none yet, the first record sweeps).
    swept_at: Option<DateTime<Utc>>,
}

impl<S> Default for KeyStates<S> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            bytes: 0,
            swept_at: None,
        }
    }
}

impl<S> KeyStates<S> {
    pub fn get(&self, key: &[u8]) -> Option<&S> {
        self.by_key.get(key).map(|(state, _)| state)
    }

    /// Remembers `state` for `key`; `encoded` is the size of its changelog record.
    pub fn insert(&mut self, key: Vec<u8>, state: S, encoded: usize) {
        let size = key.len() + encoded;
        self.bytes += size;
        if let Some((_, old)) = self.by_key.insert(key.into_boxed_slice(), (state, size)) {
            self.bytes -= old;
        }
    }

    pub fn remove(&mut self, key: &[u8]) {
        if let Some((_, size)) = self.by_key.remove(key) {
            self.bytes -= size;
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Every key with a state, in no particular order (a re-shard plans over them).
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.by_key.keys().map(AsRef::as_ref)
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Keys plus changelog bytes of every state held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the states `expired` says are expired at record time `now`, if the last sweep is
    /// [`EXPIRY_SWEEP_EVERY`] old (or there was none); returns their keys, for the tombstones that
    /// delete them from the changelog too.
    pub fn sweep(&mut self, now: DateTime<Utc>, expired: impl Fn(&S) -> bool) -> Vec<Vec<u8>> {
        if self
            .swept_at
            .is_some_and(|at| now.signed_duration_since(at) < EXPIRY_SWEEP_EVERY)
        {
            return Vec::new();
        }
        self.swept_at = Some(now);
        let mut dropped = Vec::new();
        self.by_key.retain(|key, (state, size)| {
            let keep = !expired(state);
            if !keep {
                self.bytes -= *size;
                dropped.push(key.to_vec());
            }
            keep
        });
        dropped
    }
}

/// What became of one record, for metrics: the contract's bounded outcome and, for dead letters,
/// the reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// One of [`orderpipe_api::contract::metrics::outcome::ALL`].
    pub label: &'static str,
    pub dead_letter: Option<DeadLetterReason>,
}

impl Outcome {
    pub const PROCESSED: Self = Self::plain(outcome::PROCESSED);
    pub const REJECTED: Self = Self::plain(outcome::REJECTED);
    pub const DUPLICATE: Self = Self::plain(outcome::DUPLICATE);
    pub const IGNORED: Self = Self::plain(outcome::IGNORED);

    const fn plain(label: &'static str) -> Self {
        Self {
            label,
            dead_letter: None,
        }
    }

    pub const fn dead_lettered(reason: DeadLetterReason) -> Self {
        Self {
            label: outcome::DEAD_LETTERED,
            dead_letter: Some(reason),
        }
    }
}

/// A handled record: what to produce in the transaction that commits its offset.
#[derive(Debug)]
pub struct Handled {
    pub outcome: Outcome,
    pub emits: Vec<Emit>,
    /// Keys whose state the partition forgot while handling this record (expired): the runtime
    /// writes a tombstone for each into the changelog, in the same transaction, so a restore does
    /// not bring them back.
    pub forgotten: Vec<Vec<u8>>,
}

impl Handled {
    /// A record that changed no state beyond its emits.
    pub fn emitting(outcome: Outcome, emits: Vec<Emit>) -> Self {
        Self {
            outcome,
            emits,
            forgotten: Vec::new(),
        }
    }
}

/// How handling one record ended.
#[derive(Debug)]
pub enum Handling {
    Done(Handled),
    /// The decision waits on I/O only and needs nothing more of the partition or its state (the
    /// notify stage's webhook): the partition worker takes later records of other keys meanwhile
    /// and still reports every record in offset order (`runtime::in_flight`).
    Waiting(Decision),
    /// Stopped (revocation, shutdown) before a decision; the record stays uncommitted and is
    /// processed again by whoever owns the partition next.
    Interrupted,
}

/// A decision still waiting on I/O; it resolves to `None` if stopped first, like
/// [`Handling::Interrupted`].
pub struct Decision(Pin<Box<dyn Future<Output = Option<Handled>> + Send>>);

impl Decision {
    pub fn new(decision: impl Future<Output = Option<Handled>> + Send + 'static) -> Self {
        Self(Box::pin(decision))
    }
}

impl IntoFuture for Decision {
    type Output = Option<Handled>;
    type IntoFuture = Pin<Box<dyn Future<Output = Option<Handled>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        self.0
    }
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decision(waiting)")
    }
}

/// One stage of the pipeline, as the partition workers call it. Records of one partition are
/// handed to it one at a time, in offset order; only decisions that wait on I/O
/// ([`Handling::Waiting`]) overlap, and never two of one key.
pub trait StageHandler: Send + Sync + 'static {
    /// Per-key state restored from the changelog; `()` for stateless stages.
    type State: Send + 'static;

    /// Which stage this is, for dead-letter headers.
    fn stage(&self) -> Stage;

    /// Decodes one changelog record written by this stage.
    fn decode_state(&self, payload: &[u8]) -> Result<Self::State, StateDecodeError>;

    /// The changelog record of `state`, as [`StageHandler::decode_state`] reads it back: what a
    /// re-shard writes to the key's new state partition (partition growth).
    fn encode_state(&self, state: &Self::State) -> Vec<u8>;

    /// Handles one record. `stop` asks the handler to give up waits (retry backoff) early.
    fn handle<'a>(
        &'a self,
        record: &'a SourceRecord,
        topic: &'a str,
        states: &'a mut KeyStates<Self::State>,
        stop: &'a CancellationToken,
    ) -> impl Future<Output = Handling> + Send + 'a;
}

/// Maps a processor's own outcome onto the contract's bounded metric outcomes.
pub trait MetricOutcome {
    fn metric_outcome(&self) -> Outcome;
}

impl MetricOutcome for ValidateOutcome {
    fn metric_outcome(&self) -> Outcome {
        match self {
            Self::Validated => Outcome::PROCESSED,
            Self::Duplicate => Outcome::DUPLICATE,
            Self::Rejected { .. } => Outcome::REJECTED,
            Self::DeadLettered { reason } => Outcome::dead_lettered(*reason),
        }
    }
}

impl MetricOutcome for StatusOutcome {
    fn metric_outcome(&self) -> Outcome {
        match self {
            Self::Transitioned { .. } | Self::Released => Outcome::PROCESSED,
            Self::DuplicateEvent => Outcome::DUPLICATE,
            Self::NotQuarantined => Outcome::IGNORED,
            Self::DeadLettered { reason, .. } => Outcome::dead_lettered(*reason),
        }
    }
}

/// A pure, stateful processor (validate, status) as a stage: look up the key's state, decide,
/// remember the new state. The state is updated before the transaction commits so the next record
/// of the same key sees it; if the transaction aborts, the runtime discards the partition's state
/// and restores it from the changelog, which only holds committed state.
#[derive(Debug, Clone, Default)]
pub struct Stateful<P>(pub P);

impl<P> StageHandler for Stateful<P>
where
    P: Processor + Send + Sync + 'static,
    P::Outcome: MetricOutcome,
    P::State: Send + 'static,
{
    type State = P::State;

    fn stage(&self) -> Stage {
        self.0.stage()
    }

    fn decode_state(&self, payload: &[u8]) -> Result<P::State, StateDecodeError> {
        P::State::decode(payload)
    }

    fn encode_state(&self, state: &P::State) -> Vec<u8> {
        state.encode()
    }

    fn handle<'a>(
        &'a self,
        record: &'a SourceRecord,
        topic: &'a str,
        states: &'a mut KeyStates<P::State>,
        _stop: &'a CancellationToken,
    ) -> impl Future<Output = Handling> + Send + 'a {
        let input = record.as_input(topic);
        let forgotten = states.sweep(input.timestamp, |state| {
            self.0.is_expired(state, input.timestamp)
        });
        let current = input.key.and_then(|key| states.get(key));
        let decision = self.0.process(&input, current);
        if let Some(state) = decision.state {
            // Keyed like the changelog record, which is what a restore reads back.
            let changelog = decision
                .emits
                .iter()
                .find(|emit| emit.output == Output::Changelog)
                .and_then(|emit| Some((emit.key.clone()?, emit.payload.len())));
            if let Some((key, encoded)) = changelog {
                states.insert(key, state, encoded);
            }
        }
        std::future::ready(Handling::Done(Handled {
            outcome: decision.outcome.metric_outcome(),
            emits: decision.emits,
            forgotten,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::minutes(minutes)
    }

    #[test]
    fn a_sweep_drops_expired_states_at_most_every_ten_minutes_of_record_time() {
        let mut states = KeyStates::default();
        states.insert(b"old".to_vec(), 1, 10);
        states.insert(b"new".to_vec(), 100, 20);
        assert_eq!(states.bytes(), 3 + 10 + 3 + 20);
        let older_than = |limit: i32| move |state: &i32| *state < limit;

        assert_eq!(
            states.sweep(at(0), older_than(50)),
            [b"old".to_vec()],
            "the first record sweeps"
        );
        assert_eq!(states.get(b"old"), None);
        assert_eq!(states.bytes(), 3 + 20);
        states.insert(b"old".to_vec(), 1, 10);
        assert!(states.sweep(at(9), older_than(50)).is_empty(), "too soon");
        assert_eq!(states.len(), 2);
        assert_eq!(states.sweep(at(10), older_than(50)).len(), 1);
        assert_eq!(states.get(b"new"), Some(&100));
        assert!(
            states.sweep(at(5), older_than(500)).is_empty(),
            "record time going back does not sweep"
        );
        states.insert(b"new".to_vec(), 7, 5);
        states.remove(b"gone");
        assert_eq!(states.bytes(), 3 + 5, "a replaced state counts once");
    }
}
