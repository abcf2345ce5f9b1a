//! One partition worker: restores the partition's per-key state, then handles its queued records
//! one at a time, in offset order, and reports each decision to the coordinator in that order.
//! Sequential per partition is what keeps per-key order; partitions run in parallel as separate
//! tasks. Decisions that wait on I/O only (notify's webhook) stay in flight while the worker goes
//! on with records of other keys (`in_flight`), up to [`super::Tuning::records_in_flight`].
//! A worker never produces or commits (the coordinator does) and never outlives its incarnation:
//! on stop it finishes the records in hand and returns, leaving queued records uncommitted.
//!
//! During a growth of the input (`docs/partition-growth.md`) it judges each record by
//! `orderpipe_growth::verdict` before the stage sees it: an old partition re-shards its state when
//! it reaches the settle barrier (also when idle: on a view change, or when told how far polling
//! got) and forwards records of keys whose state moved; it reports both for the coordinator to put
//! into the transaction that commits its offset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderpipe_growth::{GrowthView, ReshardMarker, Verdict, reshard, reshard_due, verdict};
use orderpipe_orders::DeadLetterReason;
use orderpipe_orders::dead_letter::{self, DeadLetterCopy};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ChangelogReader;
use super::budget::BytePermit;
use super::growth::{View, is_resharded};
use super::in_flight::{Finished, InFlight};
use super::refusals::{Escape, Position, Refusals};
use crate::error::{RestoreFailure, WorkerError};
use crate::metrics::Metrics;
use crate::record::SourceRecord;
use crate::stage::{Handled, Handling, KeyStates, Outcome, StageHandler};

/// A record waiting for its partition worker, with its share of the byte budget.
#[derive(Debug)]
pub(crate) struct Queued {
    pub record: SourceRecord,
    pub permit: BytePermit,
}

/// What a worker's queue carries, in the order the partition was polled.
#[derive(Debug)]
pub(crate) enum Work {
    Record(Queued),
    /// Polling has handed out everything of the partition below this offset, so once the worker
    /// gets here it has processed every record below it: transaction markers take offsets but are
    /// never delivered, and an idle partition's last record is often one of them. Tells an idle
    /// old partition it has reached the settle barrier.
    FetchedTo(i64),
}

/// What a worker tells the coordinator. Every report names the worker's incarnation, so reports of
/// a worker that was replaced (after a rewind) are recognised and dropped.
#[derive(Debug)]
pub(crate) enum Report {
    Restored {
        partition: i32,
        incarnation: u64,
        keys: usize,
        took: Duration,
    },
    Done(Completed),
    /// The partition's state re-sharded for a growth: every record below `next_offset` is
    /// processed; commit `next_offset` with `marker`, in the transaction that writes `moves`.
    Resharded(Resharded),
    /// A record of a key whose state moved: produce it to partition `to` of the input in the
    /// transaction that commits its offset here.
    Forwarded(Forwarded),
    Failed {
        partition: i32,
        incarnation: u64,
        error: WorkerError,
    },
}

impl Report {
    /// The partition and worker incarnation it comes from.
    pub fn sender(&self) -> (i32, u64) {
        match self {
            Self::Restored {
                partition,
                incarnation,
                ..
            }
            | Self::Failed {
                partition,
                incarnation,
                ..
            } => (*partition, *incarnation),
            Self::Done(done) => (done.partition, done.incarnation),
            Self::Resharded(resharded) => (resharded.partition, resharded.incarnation),
            Self::Forwarded(forwarded) => (forwarded.record.partition, forwarded.incarnation),
        }
    }
}

/// One handled record.
#[derive(Debug)]
pub(crate) struct Completed {
    pub partition: i32,
    pub incarnation: u64,
    pub offset: i64,
    /// The input record's timestamp, which its outputs carry on.
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub handled: Handled,
    /// Produce it in a transaction of its own: its outputs were refused before.
    pub isolate: bool,
    /// Held (never read) until the coordinator has produced the record's outputs; dropping it
    /// returns the record's bytes to the budget.
    pub _permit: BytePermit,
}

/// One key's state leaving an old partition for state partition `to`.
#[derive(Debug)]
pub(crate) struct MovedState {
    pub key: Vec<u8>,
    pub to: i32,
    /// Its changelog record, as the stage encodes it.
    pub state: Vec<u8>,
}

/// See [`Report::Resharded`].
#[derive(Debug)]
pub(crate) struct Resharded {
    pub partition: i32,
    pub incarnation: u64,
    pub next_offset: i64,
    pub marker: ReshardMarker,
    pub moves: Vec<MovedState>,
}

/// See [`Report::Forwarded`].
#[derive(Debug)]
pub(crate) struct Forwarded {
    pub incarnation: u64,
    pub record: SourceRecord,
    pub to: i32,
    /// Held until the coordinator has produced the copy, like [`Completed`]'s.
    pub _permit: BytePermit,
}

/// What the growth rule made of a record.
enum Judged {
    Process,
    /// Forward it to this partition of the input.
    Forward(i32),
    /// The worker stops (revoked, shutting down, or the coordinator is gone).
    Stop,
}

/// How far a worker got, for the growth rule.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Every record below it is processed (or forwarded).
    next_offset: i64,
    /// The partition's re-shard marker: committed, or written by this incarnation.
    marker: Option<ReshardMarker>,
}

/// Everything a worker needs besides its queue.
pub(crate) struct PartitionWorker<H: StageHandler> {
    pub partition: i32,
    pub incarnation: u64,
    pub topic: Arc<str>,
    pub stage: Arc<H>,
    pub changelog: Option<Arc<dyn ChangelogReader>>,
    pub reports: mpsc::Sender<Report>,
    pub stop: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// Inputs whose outputs Kafka refused: produced alone, then dead-lettered if refused again.
    pub refusals: Arc<Refusals>,
    /// The view of the input's latest growth, as the control topic says.
    pub growth: watch::Receiver<View>,
    /// See [`super::Tuning::records_in_flight`].
    pub records_in_flight: usize,
    /// The partition's committed offset (`None`: nothing committed) and re-shard marker.
    pub committed: Option<i64>,
    pub marker: Option<ReshardMarker>,
}

impl<H: StageHandler> PartitionWorker<H> {
    pub async fn run(mut self, mut queue: mpsc::Receiver<Work>) {
        let restore_started = Instant::now();
        let mut states = match self.restore().await {
            Ok(states) => states,
            Err(_) if self.stop.is_cancelled() => return,
            Err(error) => {
                let _ = self
                    .reports
                    .send(Report::Failed {
                        partition: self.partition,
                        incarnation: self.incarnation,
                        error,
                    })
                    .await;
                return;
            }
        };
        // Stateful stages only: a stateless one has nothing to report.
        let state_gauges = self
            .changelog
            .is_some()
            .then(|| self.metrics.state_gauges(self.partition));
        let report_state_size = |states: &KeyStates<H::State>| {
            if let Some((entries, bytes)) = &state_gauges {
                entries.set(i64::try_from(states.len()).unwrap_or(i64::MAX));
                bytes.set(i64::try_from(states.bytes()).unwrap_or(i64::MAX));
            }
        };
        report_state_size(&states);
        let restored = Report::Restored {
            partition: self.partition,
            incarnation: self.incarnation,
            keys: states.len(),
            took: restore_started.elapsed(),
        };
        if self.reports.send(restored).await.is_err() {
            return;
        }
        let mut progress = Progress {
            next_offset: self.committed.unwrap_or(0),
            marker: self.marker,
        };
        // Cleared once the view's sender is gone (shutting down): nothing more to wait for.
        let mut watching = true;
        let mut in_flight = InFlight::new(self.records_in_flight);
        loop {
            let work = tokio::select! {
                // Stop wins over a waiting record: queued records stay uncommitted for the next
                // owner. What is in flight finishes and is reported, as the record in hand did
                // before there were several (a webhook's retry wait gives up at once).
                biased;
                () = self.stop.cancelled() => {
                    self.report_all(&mut in_flight, &mut states, &mut progress).await;
                    return;
                }
                changed = self.growth.changed(), if watching => {
                    watching = changed.is_ok();
                    None
                }
                Some(finished) = in_flight.next(), if !in_flight.is_empty() => {
                    if !self.report(finished, &mut states, &mut progress).await {
                        return;
                    }
                    report_state_size(&states);
                    continue;
                }
                next = queue.recv(), if in_flight.has_room() => match next {
                    Some(work) => Some(work),
                    None => return,
                },
            };
            let queued = match work {
                Some(Work::Record(queued)) => queued,
                // Polling got this far, or the view changed (an idle old partition may be past the
                // barrier already). Both are about every record below being processed: true once
                // nothing is in flight.
                idle => {
                    if !self
                        .report_all(&mut in_flight, &mut states, &mut progress)
                        .await
                    {
                        return;
                    }
                    if let Some(Work::FetchedTo(offset)) = idle {
                        progress.next_offset = progress.next_offset.max(offset);
                    }
                    if !self.reshard_if_due(&mut states, &mut progress).await {
                        return;
                    }
                    report_state_size(&states);
                    continue;
                }
            };
            // A record is handled alongside those in flight only if its key is not among them
            // and the growth rule would simply process it; otherwise the records in flight are
            // reported first, so per-key order and the growth rule see one record in hand.
            if !in_flight.is_empty() {
                let key = queued.record.key.as_deref();
                let reported = if self.may_overlap(&queued.record, &progress) {
                    self.report_until(&mut in_flight, &mut states, &mut progress, |in_flight| {
                        !in_flight.holds(key)
                    })
                    .await
                } else {
                    self.report_all(&mut in_flight, &mut states, &mut progress)
                        .await
                };
                if !reported {
                    return;
                }
                report_state_size(&states);
            }
            let offset = queued.record.offset;
            match self.judge(&queued.record, &mut states, &mut progress).await {
                Judged::Process => {}
                Judged::Forward(to) => {
                    report_state_size(&states);
                    let forwarded = Report::Forwarded(Forwarded {
                        incarnation: self.incarnation,
                        record: queued.record,
                        to,
                        _permit: queued.permit,
                    });
                    if self.reports.send(forwarded).await.is_err() {
                        return;
                    }
                    progress.next_offset = offset + 1;
                    continue;
                }
                Judged::Stop => return,
            }
            self.metrics.consumed();
            let started = Instant::now();
            let position = Position {
                partition: self.partition,
                offset: queued.record.offset,
            };
            let escape = self.refusals.escape(position);
            let isolate = escape.is_some();
            let handling = match escape {
                None | Some(Escape::Isolate) => {
                    let span = tracing::trace_span!(
                        "process",
                        partition = self.partition,
                        offset = queued.record.offset,
                        // Since the record's timestamp: with producers' CreateTime, how long
                        // it took to reach its worker (fetch, poll, queues).
                        age_ms = (chrono::Utc::now() - queued.record.timestamp).num_milliseconds()
                    );
                    self.stage
                        .handle(&queued.record, &self.topic, &mut states, &self.stop)
                        .instrument(span)
                        .await
                }
                Some(Escape::DeadLetter { copy, error }) => {
                    Handling::Done(self.output_refused(&queued.record, copy, &error))
                }
                Some(Escape::GiveUp { error }) => {
                    let failed = Report::Failed {
                        partition: self.partition,
                        incarnation: self.incarnation,
                        error: WorkerError::OutputRefused {
                            topic: self.topic.to_string(),
                            partition: self.partition,
                            offset: queued.record.offset,
                            error,
                        },
                    };
                    let _ = self.reports.send(failed).await;
                    return;
                }
            };
            let timestamp = queued.record.timestamp;
            let permit = queued.permit;
            let finished = move |handled| Finished {
                offset,
                timestamp,
                isolate,
                permit,
                took: started.elapsed(),
                handled,
            };
            match handling {
                Handling::Waiting(decision) => in_flight.push(
                    queued.record.key,
                    Box::pin(async move { finished(decision.await) }),
                ),
                Handling::Done(handled) if in_flight.is_empty() => {
                    if !self
                        .report(finished(Some(handled)), &mut states, &mut progress)
                        .await
                    {
                        return;
                    }
                }
                // Its turn to be reported comes after the records in flight.
                Handling::Done(handled) => {
                    let finished = finished(Some(handled));
                    in_flight.push(None, Box::pin(std::future::ready(finished)));
                }
                Handling::Interrupted => {
                    self.report_all(&mut in_flight, &mut states, &mut progress)
                        .await;
                    return;
                }
            }
            report_state_size(&states);
        }
    }

    /// Whether `record` may be handled while others are in flight, as far as the growth rule goes:
    /// under a settled view (no growth, or the latest released) it would just be processed here.
    fn may_overlap(&self, record: &SourceRecord, progress: &Progress) -> bool {
        let view = self.growth.borrow();
        let settled = view.as_ref().is_none_or(GrowthView::is_released);
        settled
            && verdict(
                view.as_ref(),
                self.partition,
                record.offset,
                record.key.as_deref(),
                is_resharded(view.as_ref(), progress.marker),
            ) == Verdict::Process
    }

    /// Reports every record in flight, oldest first; false when the worker must stop.
    async fn report_all(
        &self,
        in_flight: &mut InFlight,
        states: &mut KeyStates<H::State>,
        progress: &mut Progress,
    ) -> bool {
        self.report_until(in_flight, states, progress, InFlight::is_empty)
            .await
    }

    /// Reports the records in flight, oldest first, until `enough` says so (or none is left);
    /// false when the worker must stop.
    async fn report_until(
        &self,
        in_flight: &mut InFlight,
        states: &mut KeyStates<H::State>,
        progress: &mut Progress,
        enough: impl Fn(&InFlight) -> bool,
    ) -> bool {
        while !enough(in_flight) {
            let Some(finished) = in_flight.next().await else {
                break;
            };
            if !self.report(finished, states, progress).await {
                return false;
            }
        }
        true
    }

    /// Reports one finished record to the coordinator, then re-shards if that made it due; false
    /// when the worker must stop (interrupted, or the coordinator is gone).
    async fn report(
        &self,
        finished: Finished,
        states: &mut KeyStates<H::State>,
        progress: &mut Progress,
    ) -> bool {
        self.metrics.observe_processing(finished.took);
        self.metrics
            .observe_pipeline_latency(chrono::Utc::now() - finished.timestamp);
        let Some(handled) = finished.handled else {
            return false;
        };
        let done = Report::Done(Completed {
            partition: self.partition,
            incarnation: self.incarnation,
            offset: finished.offset,
            timestamp: finished.timestamp,
            handled,
            isolate: finished.isolate,
            _permit: finished.permit,
        });
        if self.reports.send(done).await.is_err() {
            return false;
        }
        progress.next_offset = finished.offset + 1;
        // Past the barrier with a record of a key that stays: re-shard now, not at the next
        // moved key (which may never come).
        self.reshard_if_due(states, progress).await
    }

    /// Applies the growth rule to `record` (re-sharding first where it says so) until the record
    /// may be processed here or belongs to another partition.
    async fn judge(
        &mut self,
        record: &SourceRecord,
        states: &mut KeyStates<H::State>,
        progress: &mut Progress,
    ) -> Judged {
        loop {
            let decided = {
                let view = self.growth.borrow();
                verdict(
                    view.as_ref(),
                    self.partition,
                    record.offset,
                    record.key.as_deref(),
                    is_resharded(view.as_ref(), progress.marker),
                )
            };
            match decided {
                Verdict::Process => return Judged::Process,
                Verdict::Forward { to } => return Judged::Forward(to),
                Verdict::ReshardFirst => {
                    // Records arrive in offset order: every one below this is processed.
                    progress.next_offset = progress.next_offset.max(record.offset);
                    if !self.reshard(states, progress).await {
                        return Judged::Stop;
                    }
                }
                // The coordinator starts no held partition; only a view that has not caught up
                // with a later growth of the topic gets here. Wait for it to catch up.
                Verdict::Hold => {
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => return Judged::Stop,
                        changed = self.growth.changed() => if changed.is_err() {
                            return Judged::Stop;
                        },
                    }
                }
            }
        }
    }

    /// Re-shards when `reshard_due` says so; false when the coordinator is gone.
    async fn reshard_if_due(
        &self,
        states: &mut KeyStates<H::State>,
        progress: &mut Progress,
    ) -> bool {
        let due = {
            let view = self.growth.borrow();
            reshard_due(
                view.as_ref(),
                self.partition,
                progress.next_offset,
                is_resharded(view.as_ref(), progress.marker),
            )
        };
        !due || self.reshard(states, progress).await
    }

    /// Moves the state of the keys that now belong to a new partition out of this one's and
    /// reports the moves, to be committed with `progress.next_offset` and the marker; false when
    /// the coordinator is gone. If that transaction aborts, this incarnation is replaced and the
    /// next one restores the state the changelog still holds, so nothing moves twice.
    async fn reshard(&self, states: &mut KeyStates<H::State>, progress: &mut Progress) -> bool {
        let Some(growth) = self.growth.borrow().as_ref().map(|view| view.growth) else {
            return true;
        };
        let plan = reshard::plan(growth, self.partition, states.keys());
        let (kept, foreign, per_destination) = (plan.kept, plan.foreign, plan.per_destination());
        let moves: Vec<MovedState> = plan
            .moves
            .iter()
            .filter_map(|step| {
                let state = states.get(step.key)?;
                Some(MovedState {
                    key: step.key.to_vec(),
                    to: step.to,
                    state: self.stage.encode_state(state),
                })
            })
            .collect();
        for moved in &moves {
            states.remove(&moved.key);
        }
        let marker = ReshardMarker {
            generation: growth.generation(),
        };
        progress.marker = Some(marker);
        tracing::info!(
            partition = self.partition,
            generation = growth.generation(),
            offset = progress.next_offset,
            moved = moves.len(),
            kept,
            foreign,
            ?per_destination,
            "re-sharding the partition's state for a growth of the input"
        );
        let resharded = Report::Resharded(Resharded {
            partition: self.partition,
            incarnation: self.incarnation,
            next_offset: progress.next_offset,
            marker,
            moves,
        });
        self.reports.send(resharded).await.is_ok()
    }

    /// The dead letter that replaces the outputs of `record`, which Kafka refused even alone.
    fn output_refused(&self, record: &SourceRecord, copy: DeadLetterCopy, error: &str) -> Handled {
        tracing::warn!(
            partition = self.partition,
            offset = record.offset,
            %error,
            with_payload = copy == DeadLetterCopy::KeyAndPayload,
            "Kafka refused this record's outputs; dead-lettering it as output_refused"
        );
        let input = record.as_input(&self.topic);
        let emit = dead_letter::output_refused(&input, self.stage.stage(), error, copy);
        Handled::emitting(
            Outcome::dead_lettered(DeadLetterReason::OutputRefused),
            vec![emit],
        )
    }

    /// The partition's per-key state from the changelog (empty for stateless stages). Reading
    /// blocks, so it runs on the blocking pool.
    async fn restore(&self) -> Result<KeyStates<H::State>, WorkerError> {
        let Some(reader) = self.changelog.clone() else {
            return Ok(KeyStates::default());
        };
        let stage = Arc::clone(&self.stage);
        let stop = self.stop.clone();
        let partition = self.partition;
        let read = tokio::task::spawn_blocking(move || {
            let mut states = KeyStates::default();
            reader
                .read(partition, &stop, &mut |offset, key, value| {
                    match value {
                        // A tombstone: the key's state was deleted (compaction will drop it).
                        None => {
                            states.remove(key);
                        }
                        Some(bytes) => {
                            let state = stage
                                .decode_state(bytes)
                                .map_err(|source| RestoreFailure::Decode { offset, source })?;
                            states.insert(key.to_vec(), state, bytes.len());
                        }
                    }
                    Ok(())
                })
                .map(|_| states)
                .map_err(|reason| (reader.topic().to_owned(), reason))
        })
        .await;
        match read {
            Ok(Ok(states)) => Ok(states),
            Ok(Err((topic, reason))) => Err(WorkerError::Restore {
                topic,
                partition,
                reason,
            }),
            Err(join) => Err(WorkerError::Thread {
                what: "state restore",
                detail: join.to_string(),
            }),
        }
    }
}
