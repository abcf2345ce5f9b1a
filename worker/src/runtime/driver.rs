//! The read-process-write loop: poll a burst of records, route them (pausing partitions whose
//! queue is full), let the coordinator take finished records into the transaction and commit,
//! resume drained partitions, pause partitions a growth of the input holds, tell old partitions
//! how far polling got while a growth drains, seek rewound partitions back to their committed
//! offsets. On shutdown:
//! stop fetching, finish the records in hand, commit, leave the group.
//!
//! Runs on a dedicated thread: polling and the transactional calls block, and rebalance callbacks
//! run inside `poll` on this thread. The coordinator lock is never held across a poll or a close,
//! because the callbacks take it. Must not process records itself.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Coordinator, Health, Routed, Sink, Source};
use crate::error::WorkerError;
use crate::stage::StageHandler;

/// Records polled per turn before the coordinator's bookkeeping runs.
const POLL_BURST: usize = 500;

/// Locks the coordinator; a panic elsewhere must not turn into a second one here.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the loop until `shutdown` is cancelled (then leaves gracefully within `shutdown_grace`)
/// or an unrecoverable error stops the worker.
pub fn drive<H, K, S>(
    source: &mut S,
    coordinator: &Mutex<Coordinator<H, K>>,
    shutdown: &CancellationToken,
    health: &Health,
    shutdown_grace: Duration,
) -> Result<(), WorkerError>
where
    H: StageHandler,
    K: Sink,
    S: Source<Group = K::Group>,
{
    // Partitions whose seek back failed (e.g. the broker is restarting); retried every turn.
    let mut rewinds = BTreeSet::new();
    while !shutdown.is_cancelled() {
        health.turn();
        let mut timeout = lock(coordinator).poll_timeout();
        let poll = tracing::trace_span!("poll", records = tracing::field::Empty).entered();
        let mut polled_records = 0_usize;
        for _ in 0..POLL_BURST {
            let Some(polled) = source.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            match polled {
                Ok(record) => {
                    polled_records += 1;
                    let partition = record.partition;
                    let routed = lock(coordinator).route(record);
                    if routed == (Routed::Held { pause: true })
                        && let Err(error) = source.pause(partition)
                    {
                        tracing::warn!(partition, %error, "pausing a full partition failed");
                    }
                }
                // The client reports broker trouble here and keeps retrying by itself.
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    break;
                }
            }
        }
        poll.record("records", polled_records);
        drop(poll);
        let (resumes, pauses, probes, assigned, can_restart) = {
            let _tick = tracing::trace_span!("tick").entered();
            let mut coordinator = lock(coordinator);
            coordinator.tick(source.group());
            if coordinator.has_failed() {
                break;
            }
            rewinds.extend(coordinator.take_rewinds());
            (
                coordinator.take_resumes(),
                coordinator.take_pauses(),
                coordinator.position_probes(),
                coordinator.assigned(),
                coordinator.can_restart(),
            )
        };
        for partition in resumes {
            if let Err(error) = source.resume(partition) {
                tracing::warn!(partition, %error, "resuming a drained partition failed");
            }
        }
        for partition in pauses {
            // Its records are dropped meanwhile and fetched again after the release's seek.
            if let Err(error) = source.pause(partition) {
                tracing::warn!(partition, %error, "pausing a partition the growth holds failed");
            }
        }
        if !probes.is_empty() {
            let positions = source.positions(&probes);
            lock(coordinator).fetched_to(&positions);
        }
        rewinds.retain(|partition| assigned.contains(partition));
        if !rewinds.is_empty() && can_restart {
            rewind(source, coordinator, &mut rewinds);
        }
    }
    let deadline = Instant::now() + shutdown_grace;
    lock(coordinator).shut_down(source.group(), deadline);
    source.close(deadline);
    health.stopped();
    match lock(coordinator).take_fatal() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Seeks `partitions` back to their committed offsets and restarts their workers; partitions
/// that cannot be sought yet stay in `partitions` for the next turn.
fn rewind<H, K, S>(
    source: &mut S,
    coordinator: &Mutex<Coordinator<H, K>>,
    partitions: &mut BTreeSet<i32>,
) where
    H: StageHandler,
    K: Sink,
    S: Source<Group = K::Group>,
{
    let wanted: Vec<i32> = partitions.iter().copied().collect();
    let committed = match source.committed(&wanted) {
        Ok(committed) => committed,
        Err(error) => {
            tracing::warn!(%error, ?wanted, "reading committed offsets for a rewind failed; retrying");
            return;
        }
    };
    let mut sought = committed.clone();
    for (&partition, &offset) in &committed {
        let moved = source
            .seek(partition, offset)
            .and_then(|()| source.resume(partition));
        match moved {
            Ok(()) => {
                partitions.remove(&partition);
            }
            Err(error) => {
                tracing::warn!(partition, %error, "seeking back failed; retrying");
                sought.remove(&partition);
            }
        }
    }
    lock(coordinator).restart(&sought);
}
