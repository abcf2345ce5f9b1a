//! Liveness and readiness as the loop reports them, read by `/healthz` and `/readyz`.
//!
//! Ready: the loop runs, every assigned partition's state is restored (a member waiting for an
//! assignment is ready: it can take one at any moment), and nothing it finished has waited for a
//! commit longer than the commit allowance: a worker whose transactions cannot commit (brokers
//! unreachable, fewer in-sync replicas than `min.insync.replicas`) makes no progress, even while
//! its loop turns or blocks in a commit, and says so until a commit succeeds. Live: the loop has
//! made a turn recently;
//! the allowance covers the longest legitimate blocking call (a revocation waiting for workers,
//! a commit waiting for the broker). Must not decide anything about processing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` at the loop's last turn.
    last_turn_ms: AtomicU64,
    running: AtomicBool,
    ready: AtomicBool,
    stall_after: Duration,
    /// Milliseconds since `started` when the oldest finished work no commit covers yet was
    /// finished; [`NOTHING_UNCOMMITTED`] when everything finished is committed.
    uncommitted_since_ms: AtomicU64,
    commit_stall_after: Duration,
}

const NOTHING_UNCOMMITTED: u64 = u64::MAX;

/// Default of [`Health::with_commit_stall`]: longer than a leader election (the controller fences
/// a dead broker after 9 s), far shorter than a transaction's timeout.
pub const DEFAULT_COMMIT_STALL: Duration = Duration::from_secs(20);

impl Health {
    /// `stall_after`: a loop silent for longer than this is reported as not live.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
            running: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            stall_after,
            uncommitted_since_ms: AtomicU64::new(NOTHING_UNCOMMITTED),
            commit_stall_after: DEFAULT_COMMIT_STALL,
        }
    }

    /// Finished work that has waited longer than `allowance` for a commit makes the worker not
    /// ready.
    #[must_use]
    pub fn with_commit_stall(mut self, allowance: Duration) -> Self {
        self.commit_stall_after = allowance;
        self
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The loop made a turn.
    pub fn turn(&self) {
        self.last_turn_ms.store(self.now_ms(), Ordering::Release);
        self.running.store(true, Ordering::Release);
    }

    /// The loop ended (shutdown); the process is about to exit.
    pub fn stopped(&self) {
        self.running.store(false, Ordering::Release);
        self.ready.store(false, Ordering::Release);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.running.load(Ordering::Acquire)
            && self.ready.load(Ordering::Acquire)
            && !self.is_commit_stalled()
    }

    /// Work was finished that only a commit makes visible; the first such call since the last
    /// commit starts the clock.
    pub fn uncommitted_work(&self) {
        let _ = self.uncommitted_since_ms.compare_exchange(
            NOTHING_UNCOMMITTED,
            self.now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Everything finished is committed (or no longer this worker's to commit).
    pub fn all_committed(&self) {
        self.uncommitted_since_ms
            .store(NOTHING_UNCOMMITTED, Ordering::Release);
    }

    /// Whether finished work has waited for a commit for longer than the allowance: the brokers
    /// do not take the stage's writes (unreachable, or fewer in-sync replicas than
    /// `min.insync.replicas`). Computed when asked, so it holds while a commit call blocks.
    pub fn is_commit_stalled(&self) -> bool {
        let since = self.uncommitted_since_ms.load(Ordering::Acquire);
        since != NOTHING_UNCOMMITTED
            && Duration::from_millis(self.now_ms().saturating_sub(since)) > self.commit_stall_after
    }

    /// Live until the loop, once running, stops turning for `stall_after`. Before the first turn
    /// (connecting, initialising transactions) the process counts as live: startup has its own
    /// timeouts, which end the process.
    pub fn is_live(&self) -> bool {
        if !self.running.load(Ordering::Acquire) {
            return true;
        }
        let since = self
            .now_ms()
            .saturating_sub(self.last_turn_ms.load(Ordering::Acquire));
        Duration::from_millis(since) <= self.stall_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_running_loop_and_liveness_tracks_turns() {
        let health = Health::new(Duration::ZERO);
        health.set_ready(true);
        assert!(!health.is_ready(), "not ready before the loop runs");
        assert!(health.is_live(), "starting up counts as live");
        health.turn();
        assert!(health.is_ready());
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            !health.is_live(),
            "a loop silent beyond the allowance is wedged"
        );
        health.stopped();
        assert!(!health.is_ready());
    }

    #[test]
    fn work_waiting_too_long_for_a_commit_makes_the_worker_not_ready_until_it_commits() {
        let health = Health::new(Duration::from_secs(60)).with_commit_stall(Duration::ZERO);
        health.set_ready(true);
        health.turn();
        assert!(health.is_ready(), "nothing uncommitted");
        health.uncommitted_work();
        std::thread::sleep(Duration::from_millis(5));
        health.uncommitted_work();
        assert!(health.is_commit_stalled());
        assert!(
            !health.is_ready(),
            "finished work waits beyond the allowance"
        );
        health.all_committed();
        assert!(health.is_ready(), "a commit went through");

        let patient = Health::new(Duration::from_secs(60));
        patient.set_ready(true);
        patient.turn();
        patient.uncommitted_work();
        assert!(patient.is_ready(), "within the default allowance");
    }
}
