//! The course of a canary release, as `make demo SCENARIO=bad-release|good-release` shows it:
//! Steady (the stable version alone) → Releasing (the image changed, the canary's pod starting) →
//! Analysing (its AnalysisRun measures canary against stable) → Promoted or Aborted, then settled
//! (every pod on the promoted version, or on the stable one again). Pure: the caller reads the
//! Rollout and the AnalysisRun ([`orderpipe_stack::argo`]) and passes them with the instant; each
//! phase is entered once, in that order, and timed from the image change.

use std::fmt;
use std::time::{Duration, Instant};

use orderpipe_stack::argo::{AnalysisState, RolloutState};

use super::observe::ReleaseView;
use super::peak::seconds_or_never;

/// Where the release is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Steady,
    Releasing,
    Analysing,
    Promoted,
    Aborted,
}

impl Phase {
    /// The release has its outcome.
    pub fn decided(self) -> bool {
        matches!(self, Phase::Promoted | Phase::Aborted)
    }
}

/// See the module header.
#[derive(Debug, Clone)]
pub struct ReleaseTimeline {
    phase: Phase,
    /// The image change; `None` while steady.
    started: Option<Instant>,
    /// The stable version's pod template hash when the image changed.
    stable: Option<String>,
    /// The new version's pod template hash, once the Rollout made it.
    pub canary: Option<String>,
    pub analysing_at: Option<Duration>,
    pub decided_at: Option<Duration>,
    pub settled_at: Option<Duration>,
    /// The verdict of the canary's AnalysisRun, and its name (or, if the run was not seen, why the
    /// Rollout did what it did).
    pub verdict: Option<String>,
}

impl Default for ReleaseTimeline {
    fn default() -> Self {
        ReleaseTimeline::new()
    }
}

impl ReleaseTimeline {
    pub fn new() -> ReleaseTimeline {
        ReleaseTimeline {
            phase: Phase::Steady,
            started: None,
            stable: None,
            canary: None,
            analysing_at: None,
            decided_at: None,
            settled_at: None,
            verdict: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The new image was applied at `now`, over the stable version `stable` (a pod template hash).
    pub fn released(&mut self, stable: Option<String>, now: Instant) {
        if self.phase == Phase::Steady {
            self.phase = Phase::Releasing;
            self.started = Some(now);
            self.stable = stable;
        }
    }

    /// Time since the image change.
    pub fn elapsed(&self, now: Instant) -> Option<Duration> {
        self.started.map(|s| now.saturating_duration_since(s))
    }

    /// Records one observation of the stage's Rollout and of the AnalysisRun judging its newest
    /// version (if any).
    pub fn observe(
        &mut self,
        rollout: &RolloutState,
        analysis: Option<&AnalysisState>,
        now: Instant,
    ) {
        let Some(at) = self.elapsed(now) else {
            return;
        };
        if self.canary.is_none() {
            // The Rollout's newest version next to its stable one; not the stable version of the
            // image change, should an earlier release still be shown as newest.
            self.canary = rollout
                .canary()
                .filter(|canary| Some(*canary) != self.stable.as_deref())
                .map(str::to_owned);
        }
        let Some(canary) = self.canary.clone() else {
            return;
        };
        // Only the run judging this release counts: an earlier release's run may still be listed.
        let analysis = analysis.filter(|run| run.judges.as_deref() == Some(canary.as_str()));
        if self.phase == Phase::Releasing && analysis.is_some() {
            self.phase = Phase::Analysing;
            self.analysing_at = Some(at);
        }
        if !self.phase.decided() {
            let outcome = if rollout.aborted {
                Some(Phase::Aborted)
            } else if rollout.fully_on(&canary) {
                Some(Phase::Promoted)
            } else {
                None
            };
            if let Some(outcome) = outcome {
                self.phase = outcome;
                self.decided_at = Some(at);
                self.verdict = Some(match analysis {
                    Some(run) => format!(
                        "AnalysisRun {} {}",
                        run.name,
                        run.phase.as_deref().unwrap_or("?")
                    ),
                    None => rollout
                        .message
                        .clone()
                        .unwrap_or_else(|| "no AnalysisRun seen".to_owned()),
                });
            }
        }
        let settled = match self.phase {
            Phase::Promoted => rollout.fully_on(&canary),
            Phase::Aborted => rollout.rolled_back(),
            _ => false,
        };
        if settled && self.settled_at.is_none() {
            self.settled_at = Some(at);
        }
    }

    /// Decided and settled: nothing more will happen to this release.
    pub fn settled(&self) -> bool {
        self.settled_at.is_some()
    }
}

impl fmt::Display for ReleaseTimeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.phase {
            Phase::Steady => write!(f, "Steady: no release yet"),
            _ => write!(
                f,
                "{:?}; after the image change: analysis from {}, {} at {} ({}), settled at {}",
                self.phase,
                seconds_or_never(self.analysing_at),
                match self.phase {
                    Phase::Aborted => "aborted",
                    Phase::Promoted => "promoted",
                    _ => "decided",
                },
                seconds_or_never(self.decided_at),
                self.verdict.as_deref().unwrap_or("no verdict yet"),
                seconds_or_never(self.settled_at),
            ),
        }
    }
}

/// The live view's lines about the release: the step and weight, the canary's share of the pods
/// and partitions (from the pipeline's status), the AnalysisRun's measurements and the outcome.
pub fn release_lines(
    timeline: &ReleaseTimeline,
    view: Option<&ReleaseView>,
    now: Instant,
) -> Vec<String> {
    let Some(view) = view else {
        return vec!["release: no Rollout yet".to_owned()];
    };
    let rollout = &view.rollout;
    let mut lines = vec![match timeline.elapsed(now) {
        None => format!(
            "release of {}: Steady, the stable version alone ({} of {} pods ready)",
            view.stage, rollout.ready, rollout.desired
        ),
        Some(t) => format!(
            "release of {}: {:?}, {:.0} s after the image change",
            view.stage,
            timeline.phase(),
            t.as_secs_f64()
        ),
    }];
    let rollout_line = format!(
        "  Rollout: {}, step {}/{}{}",
        rollout.phase.as_deref().unwrap_or("-"),
        rollout.step.unwrap_or(0),
        rollout.steps,
        rollout
            .message
            .as_ref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default()
    );
    lines.push(rollout_line);
    if let Some(canary) = &view.canary {
        lines.push(format!(
            "  canary: weight {}%: {} pod(s) of the new version, {} stable; holds {} of {} input partitions",
            canary.weight,
            canary.replicas,
            canary.stable_replicas,
            canary.partitions.map_or_else(|| "?".to_owned(), |p| p.to_string()),
            canary
                .input_partitions
                .map_or_else(|| "?".to_owned(), |p| p.to_string()),
        ));
    }
    match &view.analysis {
        Some(run) if timeline.canary.is_some() && run.judges == timeline.canary => {
            let metrics: Vec<String> = run
                .metrics
                .iter()
                .map(|m| {
                    format!(
                        "{} {} ({} measured, {} failed, last {})",
                        m.name,
                        m.phase.as_deref().unwrap_or("-"),
                        m.count,
                        m.failed,
                        m.last_value
                            .as_deref()
                            .map_or_else(|| "-".to_owned(), rounded)
                    )
                })
                .collect();
            lines.push(format!(
                "  analysis: AnalysisRun {} {}: {}",
                run.name,
                run.phase.as_deref().unwrap_or("Pending"),
                if metrics.is_empty() {
                    "no measurement yet".to_owned()
                } else {
                    metrics.join("; ")
                }
            ));
        }
        _ if timeline.phase() != Phase::Steady => {
            lines.push("  analysis: not started".to_owned());
        }
        _ => {}
    }
    if timeline.phase().decided() {
        lines.push(format!("  outcome: {timeline}"));
    }
    lines
}

/// A measurement as Argo records a Prometheus vector (`[0.004795170983859669]`), to four decimals.
fn rounded(value: &str) -> String {
    let inner = value.trim_start_matches('[').trim_end_matches(']');
    inner
        .parse::<f64>()
        .map_or_else(|_| value.to_owned(), |v| format!("{v:.4}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(current: &str, updated: i32, available: i32) -> RolloutState {
        RolloutState {
            desired: 2,
            stable: Some("old".into()),
            current: Some(current.into()),
            phase: Some("Paused".into()),
            updated,
            available,
            ..RolloutState::default()
        }
    }

    fn run(judges: &str, phase: &str) -> AnalysisState {
        AnalysisState {
            name: format!("run-{judges}"),
            phase: Some(phase.into()),
            judges: Some(judges.into()),
            ..AnalysisState::default()
        }
    }

    #[test]
    fn a_bad_release_goes_steady_releasing_analysing_aborted_then_settles_on_stable() {
        let start = Instant::now();
        let s = |secs| start + Duration::from_secs(secs);
        let mut timeline = ReleaseTimeline::new();
        timeline.observe(&rollout("old", 2, 2), None, s(1));
        assert_eq!(timeline.phase(), Phase::Steady);
        timeline.released(Some("old".into()), s(10));
        timeline.observe(&rollout("old", 2, 2), None, s(11));
        assert_eq!(timeline.phase(), Phase::Releasing);
        assert_eq!(timeline.canary, None);
        timeline.observe(&rollout("new", 1, 1), None, s(13));
        assert_eq!(timeline.canary.as_deref(), Some("new"));
        assert_eq!(timeline.phase(), Phase::Releasing);
        timeline.observe(&rollout("new", 1, 2), Some(&run("new", "Running")), s(15));
        assert_eq!(timeline.phase(), Phase::Analysing);
        let mut aborted = RolloutState {
            aborted: true,
            phase: Some("Degraded".into()),
            ..rollout("new", 1, 1)
        };
        timeline.observe(&aborted, Some(&run("new", "Failed")), s(26));
        assert_eq!(timeline.phase(), Phase::Aborted);
        assert!(!timeline.settled(), "a canary pod is still there");
        aborted.updated = 0;
        aborted.available = 2;
        timeline.observe(&aborted, Some(&run("new", "Failed")), s(29));
        assert!(timeline.settled());
        assert_eq!(
            (
                timeline.analysing_at,
                timeline.decided_at,
                timeline.settled_at
            ),
            (
                Some(Duration::from_secs(5)),
                Some(Duration::from_secs(16)),
                Some(Duration::from_secs(19))
            )
        );
        assert_eq!(
            timeline.verdict.as_deref(),
            Some("AnalysisRun run-new Failed")
        );
    }

    #[test]
    fn a_good_release_is_promoted_once_every_pod_runs_it() {
        let start = Instant::now();
        let s = |secs| start + Duration::from_secs(secs);
        let mut timeline = ReleaseTimeline::new();
        timeline.released(Some("old".into()), s(0));
        timeline.observe(&rollout("new", 1, 2), Some(&run("new", "Running")), s(5));
        // The last step: the new version is stable, its second pod not yet available.
        let mut promoting = RolloutState {
            stable: Some("new".into()),
            phase: Some("Progressing".into()),
            ..rollout("new", 2, 1)
        };
        timeline.observe(&promoting, Some(&run("new", "Running")), s(50));
        assert_eq!(timeline.phase(), Phase::Analysing);
        promoting.available = 2;
        promoting.phase = Some("Healthy".into());
        timeline.observe(&promoting, Some(&run("new", "Successful")), s(52));
        assert_eq!(timeline.phase(), Phase::Promoted);
        assert!(timeline.settled());
        assert!(
            timeline
                .to_string()
                .starts_with("Promoted; after the image change: analysis from 5.0 s, promoted at 52.0 s (AnalysisRun run-new Successful)")
        );
    }

    #[test]
    fn an_earlier_releases_analysis_does_not_count_for_this_one() {
        let start = Instant::now();
        let mut timeline = ReleaseTimeline::new();
        timeline.released(Some("old".into()), start);
        timeline.observe(
            &rollout("new", 1, 2),
            Some(&run("older", "Failed")),
            start + Duration::from_secs(3),
        );
        assert_eq!(timeline.phase(), Phase::Releasing);
    }

    #[test]
    fn the_view_shows_the_step_the_canary_share_the_analysis_and_the_outcome() {
        let start = Instant::now();
        let mut timeline = ReleaseTimeline::new();
        timeline.released(Some("old".into()), start);
        let mut view = ReleaseView {
            stage: "validate".into(),
            rollout: RolloutState {
                step: Some(1),
                steps: 2,
                ..rollout("new", 1, 2)
            },
            analysis: Some(AnalysisState {
                metrics: vec![orderpipe_stack::argo::MetricState {
                    name: "dead-letter-share".into(),
                    phase: Some("Running".into()),
                    count: 1,
                    failed: 0,
                    last_value: Some("[0.004795170983859669]".into()),
                }],
                ..run("new", "Running")
            }),
            canary: Some(orderpipe_api::v1alpha1::CanaryStatus {
                weight: 50,
                replicas: 1,
                stable_replicas: 1,
                partitions: Some(3),
                input_partitions: Some(6),
            }),
        };
        let now = start + Duration::from_secs(12);
        timeline.observe(&view.rollout, view.analysis.as_ref(), now);
        assert_eq!(
            release_lines(&timeline, Some(&view), now),
            vec![
                "release of validate: Analysing, 12 s after the image change",
                "  Rollout: Paused, step 1/2",
                "  canary: weight 50%: 1 pod(s) of the new version, 1 stable; holds 3 of 6 input partitions",
                "  analysis: AnalysisRun run-new Running: dead-letter-share Running (1 measured, 0 failed, last 0.0048)",
            ]
        );
        view.rollout.aborted = true;
        view.canary = None;
        let later = start + Duration::from_secs(20);
        timeline.observe(&view.rollout, view.analysis.as_ref(), later);
        let lines = release_lines(&timeline, Some(&view), later);
        assert_eq!(
            lines[0],
            "release of validate: Aborted, 20 s after the image change"
        );
        assert!(lines[3].starts_with("  outcome: Aborted; after the image change: analysis from 12.0 s, aborted at 20.0 s"), "{lines:?}");
    }
}
