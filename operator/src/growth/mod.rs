//! Coordinated partition growth, the operator's half (issue #22, `docs/partition-growth.md`): when
//! the declared partitions of a stage input grow, the operator does not just add partitions. It
//! records the growth in `status.growth[]`, tells every stage reading the topic to hold the new
//! partitions (the pipeline's control topic), grows the stages' state topics and the input, waits
//! the topic's settle window, publishes the settle barrier, and releases the new partitions once
//! every stage has committed the re-shard of every old partition.
//!
//! [`step`] decides all of that from the last status and what was observed (pure); [`needs`] says
//! what to observe first; [`kafka`] does the Kafka reads and the control writes. The controller
//! writes the status before publishing, except for a release, which is published first (see
//! [`GrowthStep::status_first`]), so a crash at any point leaves a growth the next reconcile
//! continues where it stopped.

pub mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use orderpipe_api::OrderPipeline;
use orderpipe_api::contract::naming;
use orderpipe_api::v1alpha1::{GrowthPhase, GrowthStatus, Processor, TopicStatus};
use orderpipe_growth::{
    ControlRecord, Growth, GrowthError, GrowthView, Partitions, Phase, ReshardMarker, SettleBarrier,
};

use crate::events::Change;
use crate::topics::DesiredTopic;
use serde_json::Value;

/// Producers' default metadata refresh (Java `metadata.max.age.ms`, librdkafka
/// `topic.metadata.refresh.interval.ms`: 300 s) plus margin.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(330);

/// Deadline of each Kafka request a growth makes.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// How soon to look again while a growth waits on Kafka (the grow showing in metadata, the stages'
/// re-shard commits).
const POLL: Duration = Duration::from_secs(2);

/// PascalCase reasons of the Events, topic statuses and condition this module produces.
pub mod reason {
    /// Event: a growth was recorded and the stages told to hold the new partitions.
    pub const GROWTH_ANNOUNCED: &str = "GrowthAnnounced";
    /// Event: the settle window passed and the barrier was published.
    pub const GROWTH_SETTLED: &str = "GrowthSettled";
    /// Event: every old partition re-sharded; the new partitions are processed.
    pub const GROWTH_RELEASED: &str = "GrowthReleased";
    /// Topic status: the declared count is not a multiple of the current one; not grown.
    pub const GROWTH_REFUSED: &str = "GrowthRefused";
    /// Topic status (still ready): the growth starts once every reading stage follows the control
    /// topic.
    pub const GROWTH_WAITING: &str = "GrowthWaiting";
    /// Condition type: whether a growth is running.
    pub const RESHARDING: &str = "Resharding";
}

/// A stage input whose growth is coordinated: every stage reading it runs a built-in processor
/// (a custom image may not speak the protocol, so its input grows as before, with a warning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatedInput {
    pub topic: String,
    /// The stages reading it.
    pub stages: Vec<StageGroup>,
    /// The state topics of its stateful readers: grown with it.
    pub state_topics: Vec<String>,
    pub settle: Duration,
}

/// A stage reading a coordinated input, and its consumer group (whose commits carry the markers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageGroup {
    pub stage: String,
    pub group: String,
}

/// The coordinated inputs of `pipeline`, in spec order.
pub fn coordinated_inputs(pipeline: &OrderPipeline) -> Vec<CoordinatedInput> {
    let namespace = pipeline.metadata.namespace.as_deref().unwrap_or_default();
    let name = pipeline.metadata.name.as_deref().unwrap_or_default();
    let spec = &pipeline.spec;
    spec.topics
        .iter()
        .filter_map(|topic| {
            let readers: Vec<_> = spec
                .stages
                .iter()
                .filter(|stage| stage.input == topic.name)
                .collect();
            if readers.is_empty() || readers.iter().any(|s| s.processor == Processor::Custom) {
                return None;
            }
            Some(CoordinatedInput {
                topic: topic.name.clone(),
                stages: readers
                    .iter()
                    .map(|s| StageGroup {
                        stage: s.name.clone(),
                        group: naming::consumer_group(namespace, name, &s.name),
                    })
                    .collect(),
                state_topics: readers
                    .iter()
                    .filter(|s| orderpipe_api::contract::is_stateful(s.processor))
                    .map(|s| naming::state_topic(namespace, name, &s.name))
                    .collect(),
                settle: topic
                    .settle_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(DEFAULT_SETTLE, Duration::from_secs),
            })
        })
        .collect()
}

/// Whether the spec asks for a growth of some coordinated input: declared above its live count.
/// Only then does [`step`] look at which stages follow the control topic.
pub fn asked(
    inputs: &[CoordinatedInput],
    declared: &BTreeMap<String, i32>,
    live: &BTreeMap<String, i32>,
) -> bool {
    inputs.iter().any(|input| {
        declared
            .get(&input.topic)
            .zip(live.get(&input.topic))
            .is_some_and(|(declared, live)| declared > live)
    })
}

/// What the next [`step`] needs read from Kafka first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Topics whose settle window passed: the end offsets of their first `n` partitions.
    pub end_offsets: Vec<(String, i32)>,
    /// Draining topics: each stage group's committed metadata on the first `n` partitions.
    pub markers: Vec<(String, i32, Vec<StageGroup>)>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.end_offsets.is_empty() && self.markers.is_empty()
    }
}

/// What was read for [`Needs`]. Missing entries (a read failed) leave the growth where it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observations {
    /// Topic → end offset of each old partition.
    pub end_offsets: BTreeMap<String, Vec<i64>>,
    /// Topic → stage → the re-shard marker committed on each old partition (`None`: none).
    pub markers: BTreeMap<String, BTreeMap<String, Vec<Option<ReshardMarker>>>>,
}

/// The Kafka reads the growths in `last` need at `now`.
pub fn needs(inputs: &[CoordinatedInput], last: &[GrowthStatus], now: Timestamp) -> Needs {
    let mut needs = Needs::default();
    for input in inputs {
        let Some(growth) = last.iter().find(|g| g.topic == input.topic) else {
            continue;
        };
        match growth.phase {
            GrowthPhase::Settling if settle_left(growth, input.settle, now).is_zero() => {
                needs.end_offsets.push((input.topic.clone(), growth.from));
            }
            GrowthPhase::Draining => {
                needs
                    .markers
                    .push((input.topic.clone(), growth.from, input.stages.clone()))
            }
            _ => {}
        }
    }
    needs
}

/// Everything [`step`] looks at.
#[derive(Debug)]
pub struct StepInput<'a> {
    pub pipeline_uid: &'a str,
    pub inputs: &'a [CoordinatedInput],
    /// Declared partitions per topic.
    pub declared: &'a BTreeMap<String, i32>,
    /// Partitions each existing topic has.
    pub live: &'a BTreeMap<String, i32>,
    /// Whether the control topic exists: no growth starts before it does (an operator upgrade
    /// creates it in the first reconcile; until then the topic's growth waits one pass).
    pub control_topic_exists: bool,
    /// Stages whose workload is fully rolled out with workers that follow the control topic
    /// ([`follows_control`]): a growth starts only when every reader is one, since a worker
    /// that predates the protocol would process the new partitions at once.
    pub following: &'a BTreeSet<String>,
    pub last: &'a [GrowthStatus],
    pub observed: &'a Observations,
    pub now: Timestamp,
}

/// What one reconcile does about growth.
#[derive(Debug, Default, PartialEq)]
pub struct GrowthStep {
    /// The new `status.growth`.
    pub statuses: Vec<GrowthStatus>,
    /// Topic → the partitions the topic plan may give it now (inputs under coordination and their
    /// state topics), with the growth's generation when it grows them.
    pub targets: BTreeMap<String, Target>,
    /// Topic → why its declared growth is refused (the topic is not grown).
    pub refused: BTreeMap<String, String>,
    /// Topic → what its growth waits for before it starts (the topic stays ready meanwhile).
    pub deferred: BTreeMap<String, String>,
    /// Control records to write, key = stage.
    pub publish: Vec<(String, ControlRecord)>,
    /// The status to write before publishing, when a decision (a new growth, a barrier) must be
    /// durable before any worker acts on it: [`GrowthStep::statuses`] with the growths released in
    /// this step still as they were (a release is recorded only once published, or a crash in
    /// between would leave the new partitions held with nothing left to publish it).
    pub status_first: Option<Vec<GrowthStatus>>,
    pub events: Vec<Change>,
    /// When to look again, while a growth runs.
    pub recheck: Option<Duration>,
}

/// The partitions a topic may have after this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub partitions: i32,
    /// The coordinated growth adding partitions, if it is one.
    pub generation: Option<i64>,
}

/// One reconcile's decisions about every coordinated input.
pub fn step(input: &StepInput<'_>) -> GrowthStep {
    let mut out = GrowthStep::default();
    for coordinated in input.inputs {
        let last = input.last.iter().find(|g| g.topic == coordinated.topic);
        step_topic(input, coordinated, last, &mut out);
    }
    // Growths of topics no longer coordinated (the stage went) are kept as history only when done.
    for old in input.last {
        let kept = out.statuses.iter().any(|g| g.topic == old.topic);
        if !kept && old.phase == GrowthPhase::Completed {
            out.statuses.push(old.clone());
        }
    }
    out.statuses.sort_by(|a, b| a.topic.cmp(&b.topic));
    if out.status_first.is_some() {
        let before_release = out
            .statuses
            .iter()
            .map(
                |now| match input.last.iter().find(|l| l.topic == now.topic) {
                    Some(last)
                        if now.phase == GrowthPhase::Completed && last.phase != now.phase =>
                    {
                        last.clone()
                    }
                    _ => now.clone(),
                },
            )
            .collect();
        out.status_first = Some(before_release);
    }
    out
}

fn step_topic(
    input: &StepInput<'_>,
    coordinated: &CoordinatedInput,
    last: Option<&GrowthStatus>,
    out: &mut GrowthStep,
) {
    let topic = &coordinated.topic;
    match last {
        Some(running) if running.phase != GrowthPhase::Completed => {
            advance(input, coordinated, running, out);
        }
        _ => {
            if let Some(started) = start(input, coordinated, last, out) {
                out.statuses.push(started);
            } else if let Some(done) = last {
                out.statuses.push(done.clone());
            }
        }
    }
    // A growth that is running (or just announced) decides the topic's and its state topics'
    // partitions; the declared count waits for the next generation.
    if let Some(growth) = out.statuses.iter().find(|g| &g.topic == topic)
        && growth.phase != GrowthPhase::Completed
    {
        let target = Target {
            partitions: growth.to,
            generation: Some(growth.generation),
        };
        for name in std::iter::once(topic).chain(&coordinated.state_topics) {
            out.targets.insert(name.clone(), target);
        }
    }
}

/// The desired topics as this step allows them: a coordinated input (and its state topics) at its
/// growth's target while the growth runs, at its live count while its growth is refused.
pub fn constrain(desired: &mut [DesiredTopic], step: &GrowthStep) {
    for topic in desired {
        if let Some(target) = step.targets.get(&topic.name) {
            topic.partitions = target.partitions;
            topic.growth_generation = target.generation;
        }
    }
}

/// Marks the planned statuses of topics whose growth is refused (not ready, with the rule) or
/// waits to start (still ready, saying for what).
pub fn mark_refused(statuses: &mut [TopicStatus], step: &GrowthStep) {
    for status in statuses {
        if let Some(why) = step.refused.get(&status.name) {
            status.ready = false;
            status.reason = Some(reason::GROWTH_REFUSED.to_owned());
            status.message = Some(why.clone());
        } else if let Some(waiting) = step.deferred.get(&status.name) {
            status.reason = Some(reason::GROWTH_WAITING.to_owned());
            status.message = Some(waiting.clone());
        }
    }
}

/// Whether a stage's live workload (a Deployment or an Argo Rollout, as the watch cache holds it)
/// runs only workers that follow the control topic: its pod template sets the control topic's
/// variable and its controller reports every replica on that template.
pub fn follows_control(workload: &Value) -> bool {
    let sets_control_topic = workload
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|containers| {
            containers.iter().any(|container| {
                container["env"].as_array().is_some_and(|env| {
                    env.iter()
                        .any(|var| var["name"] == orderpipe_api::contract::env::CONTROL_TOPIC)
                })
            })
        });
    // Argo Rollouts writes observedGeneration as a string, Deployments as a number.
    let number = |pointer: &str| {
        workload.pointer(pointer).and_then(|value| {
            value
                .as_i64()
                .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
        })
    };
    let observed = number("/status/observedGeneration") >= number("/metadata/generation");
    let replicas = number("/status/replicas").unwrap_or(0);
    let updated = number("/status/updatedReplicas").unwrap_or(0);
    sets_control_topic && observed && updated >= replicas
}

/// A new growth when the declared count is above the live one; `None` otherwise (refusals are
/// recorded in `out`).
fn start(
    input: &StepInput<'_>,
    coordinated: &CoordinatedInput,
    last: Option<&GrowthStatus>,
    out: &mut GrowthStep,
) -> Option<GrowthStatus> {
    let topic = &coordinated.topic;
    let live = *input.live.get(topic)?;
    let declared = *input.declared.get(topic)?;
    if declared <= live {
        return None;
    }
    let hold_at_live = Target {
        partitions: live,
        generation: None,
    };
    if !input.control_topic_exists {
        out.targets.insert(topic.clone(), hold_at_live);
        soon(out, POLL);
        return None;
    }
    let rolling: Vec<&str> = coordinated
        .stages
        .iter()
        .map(|reader| reader.stage.as_str())
        .filter(|stage| !input.following.contains(*stage))
        .collect();
    if !rolling.is_empty() {
        out.deferred.insert(
            topic.clone(),
            format!(
                "growing from {live} to {declared} partitions once stage(s) {} finish rolling out \
                 (every worker must follow the control topic before the new partitions exist)",
                rolling.join(", ")
            ),
        );
        out.targets.insert(topic.clone(), hold_at_live);
        soon(out, POLL);
        return None;
    }
    let generation = last
        .map_or(0, |g| g.generation)
        .saturating_add(1)
        .max(input.now.as_millisecond());
    let growth = match grow(generation, live, declared) {
        Ok(growth) => growth,
        Err(error) => {
            out.refused.insert(
                topic.clone(),
                format!("spec.topics[name={topic}].partitions: not grown from {live} to {declared}: {error}"),
            );
            out.targets.insert(topic.clone(), hold_at_live);
            return None;
        }
    };
    let status = GrowthStatus {
        topic: topic.clone(),
        generation,
        from: live,
        to: declared,
        phase: GrowthPhase::Announced,
        stages: coordinated.stages.iter().map(|s| s.stage.clone()).collect(),
        grown_at: None,
        barrier: Vec::new(),
        resharded: None,
        released_at: None,
        held_seconds: None,
        summary: summary(topic, live, declared, "Announced"),
    };
    publish(input, coordinated, growth, Phase::Held, out);
    out.status_first = Some(Vec::new());
    out.events.push(Change {
        reason: reason::GROWTH_ANNOUNCED,
        note: format!(
            "topic {topic} grows from {live} to {declared} partitions (generation {generation}): \
             stages {} hold the new partitions until their state is re-sharded",
            status.stages.join(", ")
        ),
    });
    soon(out, POLL);
    Some(status)
}

/// The next phase of a running growth, when what it waits for happened.
fn advance(
    input: &StepInput<'_>,
    coordinated: &CoordinatedInput,
    running: &GrowthStatus,
    out: &mut GrowthStep,
) {
    let topic = &coordinated.topic;
    let mut next = running.clone();
    let Ok(growth) = grow(running.generation, running.from, running.to) else {
        // A status nobody but the operator writes, so this cannot be; keep it as it is.
        out.statuses.push(next);
        return;
    };
    match running.phase {
        GrowthPhase::Announced => {
            // Idempotent: a crash between the status write and the control write is mended here.
            publish(input, coordinated, growth, Phase::Held, out);
            let grown = std::iter::once(topic)
                .chain(&coordinated.state_topics)
                .all(|t| input.live.get(t).is_some_and(|&n| n >= running.to));
            if grown {
                next.phase = GrowthPhase::Settling;
                next.grown_at = Some(Time(input.now));
                soon(out, coordinated.settle.max(Duration::from_secs(1)));
            } else {
                soon(out, POLL);
            }
        }
        GrowthPhase::Settling => {
            let left = settle_left(running, coordinated.settle, input.now);
            let barrier = input
                .observed
                .end_offsets
                .get(topic)
                .and_then(|offsets| SettleBarrier::new(growth, offsets.clone()).ok());
            match barrier {
                Some(barrier) if left.is_zero() => {
                    next.phase = GrowthPhase::Draining;
                    next.barrier = barrier.offsets().to_vec();
                    next.resharded = Some(format!("0/{}", running.from));
                    publish(input, coordinated, growth, Phase::Draining(barrier), out);
                    out.status_first = Some(Vec::new());
                    out.events.push(Change {
                        reason: reason::GROWTH_SETTLED,
                        note: format!(
                            "topic {topic}: the settle window passed; the stages re-shard each old \
                             partition on reaching offsets {:?}",
                            next.barrier
                        ),
                    });
                    soon(out, POLL);
                }
                _ => soon(out, left.max(POLL)),
            }
        }
        GrowthPhase::Draining => {
            if let Ok(barrier) = SettleBarrier::new(growth, running.barrier.clone()) {
                publish(input, coordinated, growth, Phase::Draining(barrier), out);
            }
            if let Some(markers) = input.observed.markers.get(topic) {
                let done = resharded_partitions(growth, &coordinated.stages, markers);
                next.resharded = Some(format!("{done}/{}", running.from));
                if done == running.from {
                    out.publish.retain(|(_, record)| &record.topic != topic);
                    publish(input, coordinated, growth, Phase::Released, out);
                    next.phase = GrowthPhase::Completed;
                    next.released_at = Some(Time(input.now));
                    next.held_seconds = running
                        .grown_at
                        .as_ref()
                        .map(|grown| input.now.as_second().saturating_sub(grown.0.as_second()));
                    out.events.push(Change {
                        reason: reason::GROWTH_RELEASED,
                        note: format!(
                            "topic {topic}: every old partition re-sharded; {} new partitions \
                             released after {}s",
                            running.to - running.from,
                            next.held_seconds.unwrap_or_default()
                        ),
                    });
                }
            }
            soon(out, POLL);
        }
        GrowthPhase::Completed => {}
    }
    next.summary = match next.phase {
        GrowthPhase::Draining => summary(
            topic,
            next.from,
            next.to,
            &format!("Draining {}", next.resharded.as_deref().unwrap_or_default()),
        ),
        GrowthPhase::Completed => summary(
            topic,
            next.from,
            next.to,
            &format!("Completed, held {}s", next.held_seconds.unwrap_or_default()),
        ),
        phase => summary(topic, next.from, next.to, phase_name(phase)),
    };
    out.statuses.push(next);
}

/// Old partitions every stage has committed a re-shard marker covering the growth on.
fn resharded_partitions(
    growth: Growth,
    stages: &[StageGroup],
    markers: &BTreeMap<String, Vec<Option<ReshardMarker>>>,
) -> i32 {
    let generation = growth.generation();
    (0..growth.from().get())
        .filter(|&partition| {
            stages.iter().all(|reader| {
                markers
                    .get(&reader.stage)
                    .and_then(|per_partition| {
                        per_partition.get(usize::try_from(partition).ok()?).copied()
                    })
                    .flatten()
                    .is_some_and(|marker| marker.covers(generation))
            })
        })
        .fold(0, |count, _| count + 1)
}

fn publish(
    input: &StepInput<'_>,
    coordinated: &CoordinatedInput,
    growth: Growth,
    phase: Phase,
    out: &mut GrowthStep,
) {
    for reader in &coordinated.stages {
        out.publish.push((
            reader.stage.clone(),
            ControlRecord {
                pipeline_uid: input.pipeline_uid.to_owned(),
                topic: coordinated.topic.clone(),
                view: GrowthView {
                    growth,
                    phase: phase.clone(),
                },
            },
        ));
    }
}

/// The growth `from` → `to`; partition counts below one (never in a topic) read as one.
fn grow(generation: i64, from: i32, to: i32) -> Result<Growth, GrowthError> {
    Growth::new(
        u64::try_from(generation).unwrap_or_default(),
        Partitions::at_least_one(from),
        Partitions::at_least_one(to),
    )
}

fn settle_left(growth: &GrowthStatus, settle: Duration, now: Timestamp) -> Duration {
    let Some(grown) = &growth.grown_at else {
        return settle;
    };
    let elapsed = now.as_second().saturating_sub(grown.0.as_second());
    settle.saturating_sub(Duration::from_secs(
        u64::try_from(elapsed).unwrap_or_default(),
    ))
}

fn soon(out: &mut GrowthStep, after: Duration) {
    out.recheck = Some(out.recheck.map_or(after, |r| r.min(after)));
}

fn phase_name(phase: GrowthPhase) -> &'static str {
    match phase {
        GrowthPhase::Announced => "Announced",
        GrowthPhase::Settling => "Settling",
        GrowthPhase::Draining => "Draining",
        GrowthPhase::Completed => "Completed",
    }
}

fn summary(topic: &str, from: i32, to: i32, phase: &str) -> String {
    format!("{topic} {from}->{to} {phase}")
}

#[cfg(test)]
mod tests;
