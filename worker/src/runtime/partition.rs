//! One partition worker: restores the partition's per-key state, then handles its queued records
//! one at a time, in offset order, and reports each decision to the coordinator. Sequential per
//! partition is what keeps per-key order; partitions run in parallel as separate tasks.
//! A worker never produces or commits (the coordinator does) and never outlives its incarnation:
//! on stop it finishes the record in hand and returns, leaving queued records uncommitted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderpipe_orders::DeadLetterReason;
use orderpipe_orders::dead_letter::{self, DeadLetterCopy};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ChangelogReader;
use super::budget::BytePermit;
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
}

impl<H: StageHandler> PartitionWorker<H> {
    pub async fn run(self, mut queue: mpsc::Receiver<Queued>) {
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
        loop {
            let queued = tokio::select! {
                // Stop wins over a waiting record: queued records stay uncommitted for the next owner.
                biased;
                () = self.stop.cancelled() => return,
                next = queue.recv() => match next {
                    Some(queued) => queued,
                    None => return,
                },
            };
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
            self.metrics.observe_processing(started.elapsed());
            self.metrics
                .observe_pipeline_latency(chrono::Utc::now() - queued.record.timestamp);
            report_state_size(&states);
            let handled = match handling {
                Handling::Done(handled) => handled,
                Handling::Interrupted => return,
            };
            let done = Report::Done(Completed {
                partition: self.partition,
                incarnation: self.incarnation,
                offset: queued.record.offset,
                timestamp: queued.record.timestamp,
                handled,
                isolate,
                _permit: queued.permit,
            });
            if self.reports.send(done).await.is_err() {
                return;
            }
        }
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
