//! One assigned partition as the coordinator tracks it: the incarnation of its worker, its phase
//! (running, stopping, awaiting a rewind's seek, held by a growth of the input), whether its state
//! is restored, and the records
//! held back while its queue or the byte budget is full (fetching it is paused meanwhile). Owns
//! handing polled records to the worker in offset order under those bounds. Must not produce,
//! commit or call the consumer: the coordinator and the driver do.

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ByteBudget;
use super::partition::{Queued, Work};
use crate::record::SourceRecord;

/// What [`Coordinator::route`](super::Coordinator::route) did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Queued for its partition worker.
    Queued,
    /// Held back: the partition's queue or the byte budget is full. `pause` is set the first time,
    /// when the caller must pause fetching the partition.
    Held { pause: bool },
    /// Not for a partition this worker is processing (revoked, or waiting for a rewind's seek);
    /// it will be fetched again by whoever processes the partition.
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Revoked or shutting down: finishing the record in hand, accepting no more.
    Stopping,
    /// Its uncommitted progress was discarded; waiting for the consumer to seek back.
    AwaitingSeek,
    /// A partition a growth of the input added, not released yet: no worker, no state restored,
    /// fetching paused; its records are dropped (the consumer seeks back when it is released).
    Held,
}

/// The coordinator's side of a running partition worker.
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    pub queue: mpsc::Sender<Work>,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

impl WorkerHandle {
    fn abort(&self) {
        self.stop.cancel();
        self.task.abort();
    }
}

#[derive(Debug)]
pub(crate) struct Slot {
    incarnation: u64,
    phase: Phase,
    worker: Option<WorkerHandle>,
    restored: bool,
    /// Records polled after the queue filled up, in offset order; the partition is paused.
    held: VecDeque<SourceRecord>,
    paused: bool,
    /// The offset after the last record routed here: what the lag gauge compares with the
    /// committed offset to tell "everything taken is committed" (commit markers are never routed).
    routed_to: Option<i64>,
    /// The last [`Work::FetchedTo`] sent to the worker.
    fetched_to: Option<i64>,
}

impl Slot {
    pub fn running(incarnation: u64, worker: WorkerHandle) -> Self {
        Self {
            incarnation,
            phase: Phase::Running,
            worker: Some(worker),
            restored: false,
            held: VecDeque::new(),
            paused: false,
            routed_to: None,
            fetched_to: None,
        }
    }

    pub fn awaiting_seek(incarnation: u64) -> Self {
        Self::idle(incarnation, Phase::AwaitingSeek)
    }

    /// A partition held by a growth of the input (see [`Phase::Held`]).
    pub fn held_by_growth(incarnation: u64) -> Self {
        Self::idle(incarnation, Phase::Held)
    }

    fn idle(incarnation: u64, phase: Phase) -> Self {
        Self {
            incarnation,
            phase,
            worker: None,
            restored: false,
            held: VecDeque::new(),
            paused: false,
            routed_to: None,
            fetched_to: None,
        }
    }

    pub fn is_held_by_growth(&self) -> bool {
        self.phase == Phase::Held
    }

    /// The growth released it: it starts like a rewound partition, from its committed offset
    /// once the consumer has sought there.
    pub fn release_growth_hold(&mut self) {
        if self.phase == Phase::Held {
            self.phase = Phase::AwaitingSeek;
        }
    }

    /// Tells the worker that polling handed out everything below `offset` (see
    /// [`Work::FetchedTo`]), unless records still wait here to be queued (they come first) or
    /// the worker was told already. Skipped when its queue is full: a busy worker reaches the
    /// offset with its records, and the next turn tells it again.
    pub fn fetched_to(&mut self, offset: i64) {
        if self.phase != Phase::Running
            || !self.held.is_empty()
            || self.fetched_to.is_some_and(|sent| sent >= offset)
        {
            return;
        }
        if let Some(worker) = &self.worker
            && worker.queue.try_send(Work::FetchedTo(offset)).is_ok()
        {
            self.fetched_to = Some(offset);
        }
    }

    /// Whether a report of the worker `incarnation` describes work that still counts: not one of
    /// a replaced worker, nor of a partition whose progress was discarded.
    pub fn is_current(&self, incarnation: u64) -> bool {
        self.incarnation == incarnation && self.phase != Phase::AwaitingSeek
    }

    pub fn is_awaiting_seek(&self) -> bool {
        self.phase == Phase::AwaitingSeek
    }

    /// The offset after the last record routed to this worker, if any.
    pub fn routed_to(&self) -> Option<i64> {
        self.routed_to
    }

    /// Its worker reported the partition's state restored.
    pub fn mark_restored(&mut self) {
        self.restored = true;
    }

    /// Running with its state restored, or held by a growth (which is the plan, not a fault):
    /// what readiness waits for.
    pub fn is_ready(&self) -> bool {
        (self.phase == Phase::Running && self.restored) || self.phase == Phase::Held
    }

    /// Whether its worker is still running (finishing the record in hand, after a stop).
    pub fn is_busy(&self) -> bool {
        self.worker
            .as_ref()
            .is_some_and(|worker| !worker.task.is_finished())
    }

    /// Offers a polled record to the worker, behind any held records so offset order holds.
    pub fn route(&mut self, record: SourceRecord, budget: &ByteBudget) -> Routed {
        if self.phase != Phase::Running {
            return Routed::Dropped;
        }
        self.routed_to = Some(record.offset + 1);
        if self.held.is_empty() {
            match offer(budget, self.worker.as_ref(), record) {
                Ok(()) => return Routed::Queued,
                Err(record) => self.held.push_back(record),
            }
        } else {
            // Nothing overtakes a held record.
            self.held.push_back(record);
        }
        let pause = !self.paused;
        self.paused = true;
        Routed::Held { pause }
    }

    /// Moves held records into freed queue space. True when the partition was paused and holds
    /// nothing any more: the caller resumes fetching it.
    pub fn release_held(&mut self, budget: &ByteBudget) -> bool {
        if self.phase != Phase::Running || self.held.is_empty() {
            return false;
        }
        while let Some(record) = self.held.pop_front() {
            if let Err(record) = offer(budget, self.worker.as_ref(), record) {
                self.held.push_front(record);
                break;
            }
        }
        let resume = self.held.is_empty() && self.paused;
        if resume {
            self.paused = false;
        }
        resume
    }

    /// Asks the worker to finish the record in hand and stop; held records are dropped (they stay
    /// uncommitted).
    pub fn stop(&mut self) {
        self.held.clear();
        if self.phase == Phase::Running {
            self.phase = Phase::Stopping;
        }
        if let Some(worker) = &self.worker {
            worker.stop.cancel();
        }
    }

    /// Stops the worker at once, dropping the record in hand.
    pub fn abort(&self) {
        if let Some(worker) = &self.worker {
            worker.abort();
        }
    }

    /// Discards the uncommitted progress of a partition still being processed: its worker is
    /// aborted and it waits for the consumer to seek back. False for a stopping partition, which
    /// is on its way out and is not rewound, and for a held one, which has no progress.
    pub fn discard(&mut self) -> bool {
        if matches!(self.phase, Phase::Stopping | Phase::Held) {
            return false;
        }
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
        self.phase = Phase::AwaitingSeek;
        self.restored = false;
        self.held.clear();
        true
    }
}

/// Queues `record` for `worker` if the queue and the byte budget have room.
fn offer(
    budget: &ByteBudget,
    worker: Option<&WorkerHandle>,
    record: SourceRecord,
) -> Result<(), SourceRecord> {
    let Some(worker) = worker else {
        return Err(record);
    };
    let Some(permit) = budget.try_acquire(record.size()) else {
        return Err(record);
    };
    match worker.queue.try_reserve() {
        Ok(slot) => {
            slot.send(Work::Record(Queued { record, permit }));
            Ok(())
        }
        Err(_) => Err(record),
    }
}
