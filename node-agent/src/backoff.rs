//! The kubelet's crash-loop back-off for one container: the first restart is immediate, then the
//! waits are 10 s, 20 s, 40 s ... up to 5 min; a container that ran 10 min since its last restart
//! starts over. Pure (the caller passes the time) so the sequence is unit-tested.

use std::time::Duration;

use tokio::time::Instant;

const INITIAL: Duration = Duration::from_secs(10);
const MAX: Duration = Duration::from_secs(300);
/// The kubelet forgets a back-off entry not updated for twice its maximum.
const RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default)]
pub(crate) struct CrashLoopBackOff {
    current: Option<Duration>,
    last_restart: Option<Instant>,
}

impl CrashLoopBackOff {
    /// How long to wait before restarting a container that exited at `now`.
    pub fn delay(&mut self, now: Instant) -> Duration {
        if self
            .last_restart
            .is_some_and(|last| now.saturating_duration_since(last) > RESET_AFTER)
        {
            self.current = None;
        }
        self.current.unwrap_or(Duration::ZERO)
    }

    /// Records a restart at `now`: the next delay doubles.
    pub fn restarted(&mut self, now: Instant) {
        self.current = Some(self.current.map_or(INITIAL, |d| (d * 2).min(MAX)));
        self.last_restart = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_kubelet_sequence_and_cap_at_five_minutes() {
        let mut backoff = CrashLoopBackOff::default();
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..8 {
            let delay = backoff.delay(now);
            delays.push(delay.as_secs());
            now += delay + Duration::from_secs(1);
            backoff.restarted(now);
        }
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn ten_minutes_of_running_resets_the_back_off() {
        let mut backoff = CrashLoopBackOff::default();
        let start = Instant::now();
        backoff.restarted(start);
        backoff.restarted(start);
        assert_eq!(backoff.delay(start + Duration::from_secs(599)), INITIAL * 2);
        assert_eq!(
            backoff.delay(start + Duration::from_secs(601)),
            Duration::ZERO
        );
    }
}
