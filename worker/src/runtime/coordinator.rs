//! The coordinator: the single owner of the producer (the [`Sink`]) and of every partition
//! worker. It routes records to workers under the queue and byte bounds, turns finished records
//! into produced records inside one open transaction, and commits every partition's progress
//! together with the consumer offsets once per commit interval (KIP-447: one transactional
//! producer per worker process, offsets sent with the group metadata).
//!
//! It also owns the two ways progress can be lost and must be redone:
//! - rebalancing: revoked partitions finish the record in hand and are committed before the
//!   callback returns; a lost assignment (session expired) aborts instead;
//! - transaction failures: abort (or re-create the producer after a fatal error), then restart
//!   every partition from its committed offset with state restored from the changelog, which holds
//!   exactly what committed transactions wrote. Fencing stops the worker: a newer instance with the
//!   same transactional id exists.
//!
//! What the open transaction holds and counts is kept by `transaction`, each partition's worker
//! and held-back records by its `slot`.
//!
//! During a growth of the input (`docs/partition-growth.md`) it starts no partition the growth
//! holds (it asks the driver to pause it instead) until the view says released, then starts it
//! like a rewound partition; it writes the moves and forwarded records the workers report into
//! the transaction, and commits each re-sharded partition's offset with its marker, on every later
//! commit too.
//!
//! It runs on the driver's thread (and inside rebalance callbacks on that thread), never on the
//! async runtime, because Kafka's transactional calls block. It must not poll the consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderpipe_api::contract::metrics::outcome;
use orderpipe_orders::Header;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::growth::{FORWARDED_FROM, Markers, View, commit_markers, is_held, is_resharded};
use super::partition::{Completed, Forwarded, PartitionWorker, Report, Resharded};
use super::refusals::{Position, Refusals};
use super::slot::{Routed, Slot, WorkerHandle};
use super::transaction::OpenTransaction;
use super::{
    BrokerError, ByteBudget, ChangelogReader, CommittedOffsets, Health, LagBook, Sink, SinkError,
    SinkErrorKind, Tuning,
};
use crate::error::WorkerError;
use crate::metrics::{Metrics, rebalance, transaction};
use crate::output_topics::OutputTopics;
use crate::record::{OutRecord, SourceRecord};
use crate::stage::StageHandler;

/// Reports handled per [`Coordinator::tick`], so a flood of results cannot starve polling (and
/// with it the consumer's liveness in its group).
const REPORTS_PER_TICK: usize = 10_000;
/// Poll timeout while work is in flight: results are picked up at most this late.
const BUSY_POLL: Duration = Duration::from_millis(2);
/// Poll timeout when idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Everything a coordinator is built from.
pub struct CoordinatorParts<H, K> {
    pub stage: Arc<H>,
    pub sink: K,
    pub outputs: OutputTopics,
    pub input_topic: String,
    /// The stage's changelog, for stateful stages.
    pub changelog: Option<Arc<dyn ChangelogReader>>,
    /// The multi-threaded runtime the partition workers run on.
    pub runtime: tokio::runtime::Handle,
    pub tuning: Tuning,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub lag: Arc<LagBook>,
    /// For the error that stops a fenced worker.
    pub transactional_id: String,
    /// The view of the input's latest growth (the control topic's reader keeps it current).
    pub growth: watch::Receiver<View>,
}

impl<H, K> std::fmt::Debug for CoordinatorParts<H, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorParts")
            .field("input_topic", &self.input_topic)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

/// See the module documentation.
pub struct Coordinator<H: StageHandler, K: Sink> {
    stage: Arc<H>,
    sink: K,
    outputs: OutputTopics,
    topic: Arc<str>,
    changelog: Option<Arc<dyn ChangelogReader>>,
    runtime: tokio::runtime::Handle,
    tuning: Tuning,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    lag: Arc<LagBook>,
    transactional_id: String,
    slots: BTreeMap<i32, Slot>,
    reports_tx: mpsc::Sender<Report>,
    reports_rx: mpsc::Receiver<Report>,
    budget: ByteBudget,
    transaction: Option<OpenTransaction>,
    next_incarnation: u64,
    to_resume: Vec<i32>,
    to_rewind: BTreeSet<i32>,
    /// Set while the producer is unusable: when to try re-creating it next.
    recreate_at: Option<Instant>,
    fatal: Option<WorkerError>,
    /// Inputs whose outputs Kafka refused; shared with the partition workers.
    refusals: Arc<Refusals>,
    growth: watch::Receiver<View>,
    /// The committed re-shard marker of each owned partition that has one.
    markers: Markers,
    /// Partitions a growth holds, for the driver to pause.
    to_pause: Vec<i32>,
}

impl<H: StageHandler, K: Sink> std::fmt::Debug for Coordinator<H, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("topic", &self.topic)
            .field("partitions", &self.slots.keys().collect::<Vec<_>>())
            .field("transaction_open", &self.transaction.is_some())
            .finish_non_exhaustive()
    }
}

impl<H: StageHandler, K: Sink> Coordinator<H, K> {
    pub fn new(parts: CoordinatorParts<H, K>) -> Self {
        // Enough for every queued record of a few partitions; a full channel only makes workers
        // wait for the coordinator, which is the back-pressure we want.
        let (reports_tx, reports_rx) = mpsc::channel(parts.tuning.partition_queue.max(64) * 4);
        Self {
            budget: ByteBudget::new(parts.tuning.max_in_flight_bytes),
            stage: parts.stage,
            sink: parts.sink,
            outputs: parts.outputs,
            topic: Arc::from(parts.input_topic),
            changelog: parts.changelog,
            runtime: parts.runtime,
            tuning: parts.tuning,
            metrics: parts.metrics,
            health: parts.health,
            lag: parts.lag,
            transactional_id: parts.transactional_id,
            slots: BTreeMap::new(),
            reports_tx,
            reports_rx,
            transaction: None,
            next_incarnation: 0,
            to_resume: Vec::new(),
            to_rewind: BTreeSet::new(),
            recreate_at: None,
            fatal: None,
            refusals: Arc::default(),
            growth: parts.growth,
            markers: Markers::new(),
            to_pause: Vec::new(),
        }
    }

    pub fn input_topic(&self) -> &str {
        &self.topic
    }

    /// Partitions this worker currently owns.
    pub fn assigned(&self) -> Vec<i32> {
        self.slots.keys().copied().collect()
    }

    /// How long the driver may block in its next poll.
    pub fn poll_timeout(&self) -> Duration {
        if self.transaction.is_some() || self.budget.used() > 0 {
            BUSY_POLL
        } else {
            IDLE_POLL
        }
    }

    /// Starts workers for newly assigned partitions; `committed` are their committed offsets,
    /// read before the workers restore state so a restore sees every committed transaction, and
    /// `markers` the re-shard markers in their metadata. A partition a growth holds is not
    /// started: the driver pauses it (see [`Coordinator::take_pauses`]).
    pub fn assign(&mut self, committed: &CommittedOffsets, markers: &Markers) {
        self.metrics.rebalance(rebalance::ASSIGNED);
        for (&partition, &offset) in committed {
            if self.slots.contains_key(&partition) {
                continue;
            }
            if let Some(marker) = markers.get(&partition) {
                self.markers.insert(partition, *marker);
            }
            self.lag.committed(partition, offset);
            if is_held(self.growth.borrow().as_ref(), partition) {
                self.slots
                    .insert(partition, Slot::held_by_growth(self.next_incarnation));
                self.to_pause.push(partition);
                tracing::info!(
                    partition,
                    ?offset,
                    "partition assigned; held until the growth of the input is released"
                );
                continue;
            }
            let slot = if self.can_restart() {
                self.spawn(partition, offset)
            } else {
                // Started by the rewind that follows the producer's recovery.
                self.to_rewind.insert(partition);
                Slot::awaiting_seek(self.next_incarnation)
            };
            self.slots.insert(partition, slot);
            // A Kafka consumer keeps a partition's pause across revocation and re-assignment: one
            // paused when it was revoked would otherwise never deliver again.
            self.to_resume.push(partition);
            tracing::info!(partition, ?offset, "partition assigned");
        }
        self.metrics.set_assigned_partitions(self.slots.len());
        self.update_readiness();
    }

    /// Gives up `partitions`. Unless the assignment was `lost`, workers finish the record in hand
    /// and everything finished is committed before this returns, so the next owner starts exactly
    /// where this worker stopped. A lost assignment cannot commit in this group generation: the
    /// open transaction is aborted and the partitions still owned start over.
    pub fn revoke(&mut self, partitions: &[i32], lost: bool, group: &K::Group) {
        let owned: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| self.slots.contains_key(p))
            .collect();
        if lost {
            self.metrics.rebalance(rebalance::LOST);
            for partition in &owned {
                if let Some(slot) = self.slots.get(partition) {
                    slot.abort();
                }
            }
            self.release(&owned);
            if self.transaction.is_some() {
                tracing::warn!(
                    ?owned,
                    "assignment lost; aborting the open transaction and restarting the rest"
                );
                self.fail_transaction(SinkError {
                    kind: SinkErrorKind::Abortable,
                    operation: "commit after a lost assignment",
                    cause: BrokerError::new("the group took the partitions away (session expired)"),
                });
            }
        } else {
            self.metrics.rebalance(rebalance::REVOKED);
            let deadline = Instant::now() + self.tuning.stop_timeout;
            self.stop_and_drain(&owned, deadline, group);
            self.commit_now(group);
            self.release(&owned);
        }
        tracing::info!(?owned, lost, "partitions revoked");
        self.metrics.set_assigned_partitions(self.slots.len());
        self.update_readiness();
    }

    /// The offset after the last record routed to `partition`'s worker, if it has one.
    pub fn routed_to(&self, partition: i32) -> Option<i64> {
        self.slots.get(&partition).and_then(Slot::routed_to)
    }

    /// Offers a polled record to its partition worker.
    pub fn route(&mut self, record: SourceRecord) -> Routed {
        match self.slots.get_mut(&record.partition) {
            Some(slot) => slot.route(record, &self.budget),
            None => Routed::Dropped,
        }
    }

    /// One turn of bookkeeping: take finished records into the transaction, move held records
    /// into freed queue space, and commit when the interval is over.
    pub fn tick(&mut self, group: &K::Group) {
        self.retry_recreate();
        self.release_growth_holds();
        for _ in 0..REPORTS_PER_TICK {
            match self.reports_rx.try_recv() {
                Ok(report) => self.on_report(report, group),
                Err(_) => break,
            }
        }
        self.release_held();
        self.maybe_commit(group);
        self.update_readiness();
    }

    /// Partitions whose held records all moved on, and newly assigned ones; the caller resumes
    /// fetching them.
    pub fn take_resumes(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.to_resume)
    }

    /// Newly assigned partitions a growth holds; the caller pauses fetching them (released ones
    /// are resumed by the rewind that starts them).
    pub fn take_pauses(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.to_pause)
    }

    /// Old partitions that may have to re-shard without a record (the view is draining or
    /// released and their marker does not cover it): the caller reports how far polling got in
    /// each with [`Coordinator::fetched_to`].
    pub fn position_probes(&self) -> Vec<i32> {
        let view = self.growth.borrow();
        let Some(current) = view.as_ref() else {
            return Vec::new();
        };
        if current.barrier().is_none() && !current.is_released() {
            return Vec::new();
        }
        self.slots
            .keys()
            .copied()
            .filter(|&partition| {
                current.growth.is_old_partition(partition)
                    && !is_resharded(view.as_ref(), self.markers.get(&partition).copied())
            })
            .collect()
    }

    /// Polling has handed out everything below each partition's offset in `positions`; their
    /// workers learn it behind the records routed to them (an idle partition whose last record is
    /// a transaction marker reaches its settle barrier that way).
    pub fn fetched_to(&mut self, positions: &BTreeMap<i32, i64>) {
        for (partition, &offset) in positions {
            if let Some(slot) = self.slots.get_mut(partition) {
                slot.fetched_to(offset);
            }
        }
    }

    /// Whether rewound partitions may restart: not while the producer is unusable, because
    /// nothing they finish could be produced.
    pub fn can_restart(&self) -> bool {
        self.recreate_at.is_none()
    }

    /// Partitions whose uncommitted progress was discarded; the caller seeks each back to its
    /// committed offset, resumes it, then calls [`Coordinator::restart`].
    pub fn take_rewinds(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.to_rewind).into_iter().collect()
    }

    /// Ends this worker with `error` (found outside the coordinator, e.g. by the consumer's
    /// callbacks); the driver shuts down at its next turn.
    pub fn stop(&mut self, error: WorkerError) {
        self.fatal.get_or_insert(error);
    }

    /// The error that ends this worker, if one happened.
    pub fn take_fatal(&mut self) -> Option<WorkerError> {
        self.fatal.take()
    }

    pub fn has_failed(&self) -> bool {
        self.fatal.is_some()
    }

    /// Starts fresh workers for rewound partitions once the consumer has sought back.
    pub fn restart(&mut self, committed: &CommittedOffsets) {
        for (&partition, &offset) in committed {
            let awaiting = self
                .slots
                .get(&partition)
                .is_some_and(Slot::is_awaiting_seek);
            if awaiting {
                let slot = self.spawn(partition, offset);
                self.slots.insert(partition, slot);
                self.lag.committed(partition, offset);
                tracing::info!(
                    partition,
                    ?offset,
                    "partition restarted from its committed offset"
                );
            }
        }
        self.update_readiness();
    }

    /// Graceful shutdown: workers finish the record in hand, the transaction commits, and the
    /// partitions are released, so the final revocation when the consumer closes finds nothing.
    pub fn shut_down(&mut self, group: &K::Group, deadline: Instant) {
        let owned = self.assigned();
        if self.fatal.is_some() {
            for slot in self.slots.values() {
                slot.abort();
            }
        } else {
            self.stop_and_drain(&owned, deadline, group);
            self.commit_now(group);
        }
        self.release(&owned);
        self.metrics.set_assigned_partitions(0);
        self.health.set_ready(false);
    }

    fn spawn(&mut self, partition: i32, committed: Option<i64>) -> Slot {
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        let (queue, records) = mpsc::channel(self.tuning.partition_queue.max(1));
        let stop = CancellationToken::new();
        let worker = PartitionWorker {
            partition,
            incarnation,
            topic: Arc::clone(&self.topic),
            stage: Arc::clone(&self.stage),
            changelog: self.changelog.clone(),
            reports: self.reports_tx.clone(),
            stop: stop.clone(),
            metrics: Arc::clone(&self.metrics),
            refusals: Arc::clone(&self.refusals),
            growth: self.growth.clone(),
            records_in_flight: self.tuning.records_in_flight,
            committed,
            marker: self.markers.get(&partition).copied(),
        };
        let task = self.runtime.spawn(worker.run(records));
        Slot::running(incarnation, WorkerHandle { queue, stop, task })
    }

    fn release(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.slots.remove(partition);
            self.markers.remove(partition);
            self.lag.forget(*partition);
            self.refusals.released(*partition);
        }
    }

    fn on_report(&mut self, report: Report, group: &K::Group) {
        let (partition, incarnation) = report.sender();
        let Some(slot) = self.slots.get_mut(&partition) else {
            return;
        };
        if !slot.is_current(incarnation) {
            return;
        }
        match report {
            Report::Restored { keys, took, .. } => {
                slot.mark_restored();
                tracing::info!(partition, keys, ?took, "partition state restored");
            }
            Report::Failed { error, .. } => {
                tracing::error!(partition, %error, "partition worker failed");
                self.fatal.get_or_insert(error);
            }
            Report::Done(done) => self.take_into_transaction(done, group),
            Report::Resharded(resharded) => self.take_reshard(resharded, group),
            Report::Forwarded(forwarded) => self.take_forward(forwarded),
        }
    }

    /// Writes a re-shard's moves into a transaction of their own: each key's state to its new
    /// state partition and a tombstone in the old one, committed with the partition's offset and
    /// marker. What came before is committed first: were it in the same transaction, an
    /// at-least-once sink (which cannot abort what it flushed) could lose the moved state and then
    /// replay records below the barrier without it.
    fn take_reshard(&mut self, resharded: Resharded, group: &K::Group) {
        self.commit_now(group);
        let still_current = self
            .slots
            .get(&resharded.partition)
            .is_some_and(|slot| slot.is_current(resharded.incarnation));
        // A failed commit rewound the partition: its next worker re-shards again.
        if self.fatal.is_some() || !still_current || !self.open_transaction() {
            return;
        }
        let Resharded {
            partition,
            next_offset,
            marker,
            moves,
            ..
        } = resharded;
        // Blamed on the next record should Kafka refuse a move; it has the bytes the changelog
        // already accepted for that key, so it will not be.
        let from = Position {
            partition,
            offset: next_offset,
        };
        let (outputs, sink) = (&self.outputs, &mut self.sink);
        let sent = moves.iter().try_for_each(|moved| {
            [
                outputs.moved_state(&moved.key, &moved.state, moved.to),
                outputs.tombstone(&moved.key, partition),
            ]
            .into_iter()
            .flatten()
            .try_for_each(|record| sink.send(from, record))
        });
        if let Err(error) = sent {
            self.fail_transaction(error);
            return;
        }
        if let Some(transaction) = &mut self.transaction {
            transaction.resharded(partition, next_offset, marker, moves.len());
            self.health.uncommitted_work();
        }
    }

    /// Produces a record of a moved key, unchanged but for a header naming where it comes from, to
    /// its key's new partition of the input, in the transaction that commits its offset here.
    fn take_forward(&mut self, forwarded: Forwarded) {
        if self.fatal.is_some() || !self.open_transaction() {
            return;
        }
        let record = &forwarded.record;
        let from = Position {
            partition: record.partition,
            offset: record.offset,
        };
        let origin = [Header::new(
            FORWARDED_FROM,
            format!("{}/{}", record.partition, record.offset),
        )];
        let copy = OutRecord {
            topic: &self.topic,
            partition: Some(forwarded.to),
            key: record.key.as_deref(),
            payload: record.payload.as_deref(),
            headers: &origin,
            passthrough: &record.headers,
            timestamp: Some(record.timestamp),
        };
        if let Err(error) = self.sink.send(from, copy) {
            self.fail_transaction(error);
            return;
        }
        tracing::warn!(
            partition = record.partition,
            offset = record.offset,
            to = forwarded.to,
            "forwarding a record of a moved key to its new partition: its producer wrote it with the old partition count after the settle window"
        );
        if let Some(transaction) = &mut self.transaction {
            transaction.forwarded(record.partition, record.offset);
            self.health.uncommitted_work();
        }
    }

    /// Begins a transaction unless one is open; false if that failed (and was handled).
    fn open_transaction(&mut self) -> bool {
        if self.transaction.is_some() {
            return true;
        }
        if let Err(error) = self.sink.begin() {
            self.fail_transaction(error);
            return false;
        }
        self.transaction = Some(OpenTransaction::begin(Instant::now()));
        true
    }

    /// Produces a finished record's outputs into the open transaction (beginning one if needed)
    /// and records its offset as the partition's progress. A record to `isolate` (one whose outputs
    /// Kafka refused before) gets a transaction of its own: the broker refuses whole batches, so
    /// only alone can it be told apart from the records that shared its batch.
    fn take_into_transaction(&mut self, done: Completed, group: &K::Group) {
        if self.fatal.is_some() {
            return;
        }
        if done.isolate {
            self.commit_now(group);
            let still_current = self
                .slots
                .get(&done.partition)
                .is_some_and(|slot| slot.is_current(done.incarnation));
            if !still_current {
                // The commit before it failed and rewound its partition: it comes again.
                return;
            }
        }
        let isolate = done.isolate;
        self.produce(done);
        if isolate {
            self.commit_now(group);
        }
    }

    fn produce(&mut self, done: Completed) {
        let _span =
            tracing::trace_span!("produce", partition = done.partition, offset = done.offset)
                .entered();
        if !self.open_transaction() {
            return;
        }
        let from = Position {
            partition: done.partition,
            offset: done.offset,
        };
        for emit in &done.handled.emits {
            let record = match self.outputs.resolve(emit, done.partition, done.timestamp) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(error) => {
                    self.fatal.get_or_insert(error);
                    return;
                }
            };
            if let Err(error) = self.sink.send(from, record) {
                self.fail_transaction(error);
                return;
            }
        }
        let tombstones = done
            .handled
            .forgotten
            .iter()
            .filter_map(|key| self.outputs.tombstone(key, done.partition));
        for tombstone in tombstones {
            if let Err(error) = self.sink.send(from, tombstone) {
                self.fail_transaction(error);
                return;
            }
        }
        if let Some(transaction) = &mut self.transaction {
            transaction.finished(done.partition, done.offset, done.handled.outcome);
            self.health.uncommitted_work();
        }
        // `done.permit` drops here: the record's bytes now live in the producer's bounded queue.
    }

    fn maybe_commit(&mut self, group: &K::Group) {
        let now = Instant::now();
        let due = self
            .transaction
            .as_ref()
            .is_some_and(|transaction| transaction.is_due(now, &self.tuning));
        if due {
            self.commit_now(group);
        }
    }

    fn commit_now(&mut self, group: &K::Group) {
        if self.fatal.is_some() {
            return;
        }
        let Some(transaction) = self.transaction.take() else {
            return;
        };
        let _span = tracing::debug_span!(
            "commit",
            records = transaction.records(),
            open_ms = transaction.age(Instant::now()).as_millis()
        )
        .entered();
        let markers = commit_markers(transaction.offsets(), &self.markers, transaction.markers());
        match self
            .sink
            .commit(&self.topic, transaction.offsets(), &markers, group)
        {
            Ok(()) => {
                self.markers.extend(markers);
                self.health.all_committed();
                transaction.count_committed(&self.metrics);
                for (&partition, &offset) in transaction.offsets() {
                    self.lag.committed(partition, Some(offset));
                    self.refusals.committed(partition, offset);
                }
                tracing::debug!(
                    records = transaction.records(),
                    offsets = ?transaction.offsets(),
                    "transaction committed"
                );
            }
            Err(error) => {
                self.transaction = Some(transaction);
                self.fail_transaction(error);
            }
        }
    }

    /// Recovers from a failed transaction: abort (or re-create the producer), then discard every
    /// partition's uncommitted progress and in-memory state; the caller seeks back and restarts.
    fn fail_transaction(&mut self, error: SinkError) {
        tracing::warn!(%error, "transaction failed; rewinding to the committed offsets");
        self.metrics.transaction(transaction::ABORTED);
        if let Some(transaction) = self.transaction.take() {
            self.metrics
                .processed(outcome::ERROR, transaction.records());
        }
        let recovered = match error.kind {
            SinkErrorKind::Fenced => Err(error),
            SinkErrorKind::Abortable => self.sink.abort().or_else(|abort| match abort.kind {
                SinkErrorKind::Fenced => Err(abort),
                // A producer that cannot abort is replaced; re-initialising aborts what it left.
                SinkErrorKind::Abortable | SinkErrorKind::Fatal => self.sink.recreate(),
            }),
            SinkErrorKind::Fatal => self.sink.recreate(),
        };
        if let Err(error) = recovered {
            self.producer_unusable(error);
        }
        // After the abort, so every delivery report of the transaction is in.
        let refusals = self.sink.take_refusals();
        for refusal in &refusals {
            tracing::warn!(
                partition = refusal.from.partition,
                offset = refusal.from.offset,
                error = %refusal.error,
                "Kafka refused an output of this input record (or of its batch); it is produced alone next"
            );
        }
        self.refusals.record(refusals);
        for (&partition, slot) in &mut self.slots {
            if slot.discard() {
                self.to_rewind.insert(partition);
            }
        }
    }

    /// A producer that could not be recovered: fencing ends the worker; anything else (typically
    /// the broker being unreachable for longer than a call's timeout) is retried from
    /// [`Coordinator::tick`] while every partition waits, instead of exiting.
    fn producer_unusable(&mut self, error: SinkError) {
        if error.kind == SinkErrorKind::Fenced {
            self.fatal.get_or_insert(WorkerError::Fenced {
                transactional_id: self.transactional_id.clone(),
            });
            return;
        }
        tracing::warn!(%error, "the producer is unusable; re-creating it shortly");
        self.recreate_at = Some(Instant::now() + self.tuning.recreate_backoff);
    }

    /// Retries re-creating an unusable producer when its time has come.
    fn retry_recreate(&mut self) {
        if self.recreate_at.is_none_or(|at| Instant::now() < at) {
            return;
        }
        self.recreate_at = None;
        match self.sink.recreate() {
            Ok(()) => tracing::info!("the producer is usable again"),
            Err(error) => self.producer_unusable(error),
        }
    }

    /// Asks the workers of `partitions` to stop after the record in hand and takes what they
    /// finish into the transaction; workers still busy at `deadline` are aborted.
    fn stop_and_drain(&mut self, partitions: &[i32], deadline: Instant, group: &K::Group) {
        for partition in partitions {
            if let Some(slot) = self.slots.get_mut(partition) {
                slot.stop();
            }
        }
        loop {
            let busy: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|p| self.slots.get(p).is_some_and(Slot::is_busy))
                .collect();
            if busy.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    partitions = ?busy,
                    "workers did not finish in time; their records stay uncommitted"
                );
                for partition in &busy {
                    if let Some(slot) = self.slots.get(partition) {
                        slot.abort();
                    }
                }
                break;
            }
            // This thread is not a runtime thread (see the module docs), so it may block on one.
            let runtime = self.runtime.clone();
            let reports = &mut self.reports_rx;
            let next = runtime.block_on(async {
                tokio::time::timeout(Duration::from_millis(20), reports.recv()).await
            });
            if let Ok(Some(report)) = next {
                self.on_report(report, group);
            }
        }
        // Reports sent just before the workers returned.
        while let Ok(report) = self.reports_rx.try_recv() {
            self.on_report(report, group);
        }
    }

    /// Partitions held by a growth the view now releases start like rewound ones: the driver
    /// seeks them to their committed offset (the partition's start when none) and resumes them,
    /// then their workers restore the state the re-shards moved there.
    fn release_growth_holds(&mut self) {
        let view = self.growth.borrow();
        for (&partition, slot) in &mut self.slots {
            if slot.is_held_by_growth() && !is_held(view.as_ref(), partition) {
                slot.release_growth_hold();
                self.to_rewind.insert(partition);
                tracing::info!(
                    partition,
                    "the growth of the input is released; starting the partition"
                );
            }
        }
    }

    fn release_held(&mut self) {
        for (&partition, slot) in &mut self.slots {
            if slot.release_held(&self.budget) {
                self.to_resume.push(partition);
            }
        }
    }

    fn update_readiness(&self) {
        // No partitions and no transaction: nothing is owed a commit any more.
        if self.slots.is_empty() && self.transaction.is_none() {
            self.health.all_committed();
        }
        let held = self
            .slots
            .values()
            .filter(|slot| slot.is_held_by_growth())
            .count();
        self.metrics.set_partitions_held(held);
        let ready = self.slots.values().all(Slot::is_ready);
        self.health.set_ready(ready && self.fatal.is_none());
    }
}
