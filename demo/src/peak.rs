//! The clock of a burst on an autoscaled stage, as `make demo SCENARIO=peak` and `make bench`
//! report it: from the burst's first order, when the stage first ran more ready replicas than its
//! minimum, the most it ran and when, when the burst's backlog was gone, and when the stage was
//! back at its minimum. Pure: the caller observes and passes what it saw with the instant.

use std::fmt;
use std::time::{Duration, Instant};

/// See the module header.
#[derive(Debug, Clone)]
pub struct PeakClock {
    started: Instant,
    min_replicas: i32,
    /// First observation with more ready replicas than the minimum.
    pub scaled_out: Option<Duration>,
    /// The most ready replicas observed, and since when.
    pub peak: (i32, Duration),
    /// First observation of a drained backlog (after scaling out, if it did).
    pub drained: Option<Duration>,
    /// First observation, after the drain, of the minimum again.
    pub back_to_min: Option<Duration>,
}

impl PeakClock {
    /// A clock for a burst that began at `started` on a stage whose minimum is `min_replicas`.
    pub fn new(started: Instant, min_replicas: i32) -> PeakClock {
        PeakClock {
            started,
            min_replicas,
            scaled_out: None,
            peak: (min_replicas, Duration::ZERO),
            drained: None,
            back_to_min: None,
        }
    }

    /// Records one observation: the stage's ready replicas and whether its backlog is drained.
    pub fn observe(&mut self, ready: i32, drained: bool, now: Instant) {
        let at = now.saturating_duration_since(self.started);
        if ready > self.min_replicas && self.scaled_out.is_none() {
            self.scaled_out = Some(at);
        }
        if ready > self.peak.0 {
            self.peak = (ready, at);
        }
        if drained && self.drained.is_none() {
            self.drained = Some(at);
        }
        let shrunk = self.scaled_out.is_some() && ready <= self.min_replicas;
        if self.drained.is_some() && shrunk && self.back_to_min.is_none() {
            self.back_to_min = Some(at);
        }
    }

    /// Scaled out, drained and back at the minimum: the whole round trip was seen.
    pub fn round_trip(&self) -> bool {
        self.back_to_min.is_some()
    }
}

/// `12.3 s`, or `never` for what was not observed: the timelines' moments, from their start.
pub(crate) fn seconds_or_never(t: Option<Duration>) -> String {
    t.map_or_else(
        || "never".to_owned(),
        |t| format!("{:.1} s", t.as_secs_f64()),
    )
}

impl fmt::Display for PeakClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "after the burst began: more than {} replica(s) at {}, {} replicas at {:.1} s, \
             backlog drained at {}, back at {} at {}",
            self.min_replicas,
            seconds_or_never(self.scaled_out),
            self.peak.0,
            self.peak.1.as_secs_f64(),
            seconds_or_never(self.drained),
            self.min_replicas,
            seconds_or_never(self.back_to_min),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_is_timed_from_the_burst() {
        let start = Instant::now();
        let s = |secs| start + Duration::from_secs(secs);
        let mut clock = PeakClock::new(start, 1);
        clock.observe(1, false, s(1));
        clock.observe(3, false, s(8));
        clock.observe(6, false, s(12));
        clock.observe(6, true, s(20));
        clock.observe(2, true, s(40));
        assert!(!clock.round_trip());
        clock.observe(1, true, s(50));
        assert_eq!(clock.scaled_out, Some(Duration::from_secs(8)));
        assert_eq!(clock.peak, (6, Duration::from_secs(12)));
        assert_eq!(clock.drained, Some(Duration::from_secs(20)));
        assert_eq!(clock.back_to_min, Some(Duration::from_secs(50)));
        assert!(clock.round_trip());
    }

    #[test]
    fn a_stage_that_never_scaled_out_has_no_round_trip() {
        let start = Instant::now();
        let mut clock = PeakClock::new(start, 1);
        clock.observe(1, true, start + Duration::from_secs(30));
        assert_eq!(clock.drained, Some(Duration::from_secs(30)));
        assert_eq!(clock.scaled_out, None);
        assert!(!clock.round_trip());
        assert!(
            clock
                .to_string()
                .contains("more than 1 replica(s) at never")
        );
    }
}
