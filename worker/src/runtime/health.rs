//! Liveness and readiness as the loop reports them, read by `/healthz` and `/readyz`.
//!
//! Ready: the loop runs and every assigned partition's state is restored (a member waiting for an
//! assignment is ready: it can take one at any moment). Live: the loop has made a turn recently;
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
}

impl Health {
    /// `stall_after`: a loop silent for longer than this is reported as not live.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
            running: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            stall_after,
        }
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
        self.running.load(Ordering::Acquire) && self.ready.load(Ordering::Acquire)
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
}
