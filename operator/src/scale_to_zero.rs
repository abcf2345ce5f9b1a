//! Scale to zero: when a stage with `minReplicas: 0` is parked (held at zero replicas, no HPA) and
//! when it is activated again (one replica, the HPA back), decided from its lag in Kafka.
//!
//! Pure: no client, no clock (`now` is passed in). The HPA cannot go to 0 without the alpha
//! `HPAScaleToZero` gate, so the operator owns 0 <-> 1 on every cluster and the HPA owns 1..max.
//! A stage's memory (since when it is parked, since when its lag reads 0) is kept in its
//! `status.stages[]` entry (`parkedSince`, `idleSince`), not in this process, so a new leader
//! continues where the last one stopped; both change only on a transition, so an idle stage's
//! resync writes nothing. This module must not build objects: `desired` renders the parked flag
//! the reconcile sets in the model from [`Decision::parked`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orderpipe_api::v1alpha1::{OrderPipelineStatus, StageStatus};

use crate::events::Change;
use crate::model::{Scaling, ValidatedPipeline, ValidatedStage};

/// What the last status remembers of a stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub parked_since: Option<Time>,
    pub idle_since: Option<Time>,
}

impl Memory {
    fn of(status: &StageStatus) -> Self {
        Self {
            parked_since: status.parked_since.clone(),
            idle_since: status.idle_since.clone(),
        }
    }
}

/// A stage's state after this reconcile: the memory to write into its status, and the
/// transition made now, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub memory: Memory,
    pub transition: Option<Transition>,
}

impl Decision {
    pub fn parked(&self) -> bool {
        self.memory.parked_since.is_some()
    }
}

/// A change between running and parked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The lag read 0 for the whole idle period: scaled to zero, HPA removed.
    Parked,
    /// Lag appeared on a parked stage: one replica and the HPA again.
    Activated,
}

/// The decision for one stage that may be parked.
///
/// - Running: a reading of 0 starts (or continues) the idle period; a reading above 0 ends it; a
///   reading of 0 at least `park_after` after the idle period began parks the stage. A reading
///   that could not be taken (`None`) changes nothing: parking needs a measured 0, so a stage
///   whose lag cannot be read keeps running.
/// - Parked: a reading above 0 activates the stage; 0 or no reading keeps it parked.
///
/// Readings are taken at each reconcile, which comes at least every lag interval for such a
/// pipeline, so a burst drained entirely between two readings is not seen: the stage can then be
/// parked up to one interval early, and lag wakes it again.
pub fn decide(park_after: Duration, lag: Option<u64>, memory: &Memory, now: &Time) -> Decision {
    let keep = || Decision {
        memory: memory.clone(),
        transition: None,
    };
    let running = |idle_since: Option<Time>| Memory {
        parked_since: None,
        idle_since,
    };
    match (&memory.parked_since, lag) {
        (_, None) => keep(),
        (Some(_), Some(0)) => keep(),
        (Some(_), Some(_)) => Decision {
            memory: running(None),
            transition: Some(Transition::Activated),
        },
        (None, Some(0)) => {
            let since = memory.idle_since.clone().unwrap_or_else(|| now.clone());
            // Negative (a clock step backwards) never parks.
            let idle = u64::try_from(now.0.duration_since(since.0).as_secs());
            if idle.is_ok_and(|idle| idle >= park_after.as_secs()) {
                Decision {
                    memory: Memory {
                        parked_since: Some(now.clone()),
                        idle_since: None,
                    },
                    transition: Some(Transition::Parked),
                }
            } else {
                Decision {
                    memory: running(Some(since)),
                    transition: None,
                }
            }
        }
        (None, Some(_)) => Decision {
            memory: running(None),
            transition: None,
        },
    }
}

/// How long a stage waits before it is parked, for the stages that may be parked.
fn park_after(stage: &ValidatedStage) -> Option<Duration> {
    match stage.scaling {
        Scaling::Auto { park_after, .. } => park_after,
        Scaling::Fixed { .. } => None,
    }
}

/// Whether any stage may be parked: such a pipeline is re-checked every lag interval, so a parked
/// stage wakes within one interval of its lag appearing.
pub fn watches_lag(pipeline: &ValidatedPipeline) -> bool {
    pipeline.stages.iter().any(|s| park_after(s).is_some())
}

/// The decisions for every stage that may be parked (`minReplicas: 0`, pipeline not paused), by
/// stage name, from the stages' lag readings (absent: not measured) and the last status.
pub fn decide_all(
    pipeline: &ValidatedPipeline,
    lags: &BTreeMap<String, u64>,
    previous: Option<&OrderPipelineStatus>,
    now: &Time,
) -> BTreeMap<String, Decision> {
    pipeline
        .stages
        .iter()
        .filter_map(|stage| {
            let name = &stage.spec.name;
            let memory = previous
                .and_then(|p| p.stages.iter().find(|s| &s.name == name))
                .map(Memory::of)
                .unwrap_or_default();
            let decision = decide(park_after(stage)?, lags.get(name).copied(), &memory, now);
            Some((name.clone(), decision))
        })
        .collect()
}

/// The Events of the transitions made now. The notes do not carry the lag, so a stage that parks
/// and wakes again and again counts up one Event series per direction.
pub fn changes(
    pipeline: &ValidatedPipeline,
    decisions: &BTreeMap<String, Decision>,
) -> Vec<Change> {
    pipeline
        .stages
        .iter()
        .filter_map(|stage| {
            let decision = decisions.get(&stage.spec.name)?;
            let change = match decision.transition? {
                Transition::Parked => Change {
                    reason: "Parked",
                    note: format!(
                        "Parked {}: its lag read 0 for {}s; scaled to zero until lag appears",
                        stage.workload_name,
                        park_after(stage)?.as_secs()
                    ),
                },
                Transition::Activated => Change {
                    reason: "Activated",
                    note: format!(
                        "Activated {}: lag appeared; one replica, then its autoscaler",
                        stage.workload_name
                    ),
                },
            };
            Some(change)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::model::fixtures::lag_autoscaled;

    const PARK_AFTER: Duration = Duration::from_secs(300);

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid time"))
    }

    fn running(idle_since: Option<i64>) -> Memory {
        Memory {
            parked_since: None,
            idle_since: idle_since.map(at),
        }
    }

    fn parked(since: i64) -> Memory {
        Memory {
            parked_since: Some(at(since)),
            idle_since: None,
        }
    }

    /// Feeds readings taken every `step` seconds from t=0 through `decide`, as the reconcile
    /// does, and returns the memory and transitions after each one.
    fn replay(start: Memory, step: i64, readings: &[Option<u64>]) -> Vec<Decision> {
        let mut memory = start;
        let mut decisions = Vec::new();
        for (i, lag) in readings.iter().enumerate() {
            let now = at(i64::try_from(i).expect("small") * step);
            let decision = decide(PARK_AFTER, *lag, &memory, &now);
            memory = decision.memory.clone();
            decisions.push(decision);
        }
        decisions
    }

    #[test]
    fn an_idle_stage_is_parked_once_its_lag_read_zero_for_the_whole_period() {
        // Readings every 100 s: 0 at 0, 100, 200 (idle 200 s: keeps running), 300 (parks).
        let decisions = replay(running(None), 100, &[Some(0); 4]);
        assert_eq!(decisions[0].memory, running(Some(0)));
        assert!(decisions[..3].iter().all(|d| d.transition.is_none()));
        assert_eq!(
            decisions[2].memory,
            running(Some(0)),
            "the period began at 0"
        );
        assert_eq!(decisions[3].transition, Some(Transition::Parked));
        assert_eq!(decisions[3].memory, parked(300));
    }

    #[test]
    fn lag_during_the_idle_period_starts_it_again() {
        let decisions = replay(
            running(None),
            100,
            &[Some(0), Some(0), Some(7), Some(0), Some(0), Some(0)],
        );
        assert_eq!(decisions[2].memory, running(None));
        assert_eq!(decisions[5].memory, running(Some(300)));
        assert!(decisions.iter().all(|d| d.transition.is_none()));
    }

    #[test]
    fn a_parked_stage_is_activated_by_the_first_lag_above_zero() {
        let decisions = replay(parked(0), 5, &[Some(0), None, Some(1)]);
        assert!(decisions[0].parked() && decisions[1].parked());
        assert_eq!(decisions[2].transition, Some(Transition::Activated));
        assert_eq!(decisions[2].memory, running(None));
    }

    #[test]
    fn a_reading_that_failed_neither_parks_nor_activates_nor_forgets() {
        for memory in [running(None), running(Some(-1000)), parked(-1000)] {
            let decision = decide(PARK_AFTER, None, &memory, &at(0));
            assert_eq!(decision.memory, memory);
            assert_eq!(decision.transition, None);
        }
    }

    #[test]
    fn a_busy_stage_stays_running_and_remembers_nothing() {
        let decisions = replay(running(None), 5, &[Some(1200), Some(40), Some(3)]);
        assert!(
            decisions
                .iter()
                .all(|d| d.memory == running(None) && d.transition.is_none())
        );
    }

    #[test]
    fn an_idle_since_in_the_future_does_not_park() {
        // A clock step backwards (or a status written by a node ahead in time) must not park early.
        let decision = decide(PARK_AFTER, Some(0), &running(Some(1000)), &at(0));
        assert_eq!(decision.transition, None);
    }

    #[test]
    fn only_stages_with_min_replicas_zero_of_a_running_pipeline_are_decided() {
        let lags = BTreeMap::from([("validate".to_string(), 0)]);
        assert!(decide_all(&lag_autoscaled(1, false), &lags, None, &at(0)).is_empty());
        assert!(decide_all(&lag_autoscaled(0, true), &lags, None, &at(0)).is_empty());
        assert!(!watches_lag(&lag_autoscaled(1, false)));
        assert!(watches_lag(&lag_autoscaled(0, false)));

        let decisions = decide_all(&lag_autoscaled(0, false), &lags, None, &at(0));
        assert_eq!(decisions["validate"].memory, running(Some(0)));
    }

    #[test]
    fn the_declared_idle_period_and_the_last_status_are_used() {
        let p = lag_autoscaled(0, false);
        let previous = OrderPipelineStatus {
            stages: vec![StageStatus {
                name: "validate".into(),
                idle_since: Some(at(0)),
                ..StageStatus::default()
            }],
            ..OrderPipelineStatus::default()
        };
        let lags = BTreeMap::from([("validate".to_string(), 0)]);
        let decisions = decide_all(&p, &lags, Some(&previous), &at(60));
        assert!(decisions["validate"].parked(), "parkAfterIdleSeconds: 60");
        let events = changes(&p, &decisions);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "Parked");
        assert!(
            events[0].note.contains("shop-validate"),
            "{}",
            events[0].note
        );
    }
}
