//! The topics a pipeline declares: its declared topics, one compacted state topic per stateful
//! stage, co-partitioned with the stage's input, and the pipeline's control topic once a stage
//! input grows (partition growth, `docs/partition-growth.md`).
//!
//! Pure: read from the spec alone. It knows nothing of Kafka, of other pipelines or of the last
//! status; `ownership` asks it which names a pipeline claims, `plan` what each topic should be.

use std::collections::{BTreeMap, BTreeSet};

use orderpipe_api::OrderPipeline;
use orderpipe_api::contract::{is_stateful, naming, state_topic_config};
use orderpipe_api::v1alpha1::{DeletionPolicy, Processor, TopicSpec};

/// A topic as the pipeline wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredTopic {
    pub name: String,
    /// Declared partitions. For a state topic, its input's declared partitions; `plan` raises it
    /// to what the input will really have.
    pub partitions: i32,
    /// `None`: the broker's `default.replication.factor`.
    pub replication_factor: Option<i16>,
    pub config: BTreeMap<String, String>,
    pub deletion_policy: DeletionPolicy,
    /// For a state topic, the input it must stay co-partitioned with: the worker that owns input
    /// partition N restores the state of exactly those keys from state partition N.
    pub co_partitioned_with: Option<String>,
    /// The user opted in to taking the topic over if it exists unmanaged (a state topic follows
    /// its input).
    pub adopt: bool,
    /// Set by `crate::growth` while a coordinated growth runs on the topic (or its input): its
    /// generation, and `partitions` is then the growth's target.
    pub growth_generation: Option<i64>,
}

/// Kafka carries replication factors as int16; the CRD bounds them to 1..=32, so this never fails for
/// an admitted spec.
fn kafka_replication_factor(declared: i32) -> Option<i16> {
    i16::try_from(declared).ok()
}

/// The declared topics, then one compacted state topic per stateful stage, then the control topic.
/// The first declaration of a name wins, so a user who declares a state topic's name explicitly gets
/// their own settings.
pub fn desired_topics(pipeline: &OrderPipeline) -> Vec<DesiredTopic> {
    let declared = pipeline.spec.topics.iter().map(|topic| DesiredTopic {
        name: topic.name.clone(),
        partitions: topic.partitions,
        replication_factor: topic.replication_factor.and_then(kafka_replication_factor),
        config: topic
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
        deletion_policy: topic.deletion_policy,
        co_partitioned_with: None,
        adopt: topic.adopt,
        growth_generation: None,
    });
    let state = state_topics(pipeline).map(|(name, processor, input)| DesiredTopic {
        name,
        partitions: input.partitions,
        replication_factor: input.replication_factor.and_then(kafka_replication_factor),
        config: state_topic_config(processor),
        deletion_policy: input.deletion_policy,
        co_partitioned_with: Some(input.name.clone()),
        adopt: input.adopt,
        growth_generation: None,
    });
    let control = control_topic(pipeline).map(|name| DesiredTopic {
        name,
        partitions: 1,
        replication_factor: None,
        config: BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]),
        // Kept like any retained topic: its records name the pipeline incarnation that wrote them,
        // so a re-created pipeline ignores its predecessor's.
        deletion_policy: DeletionPolicy::Retain,
        co_partitioned_with: None,
        // The name is reserved for the operator (admission refuses `orderpipe.` names), so an
        // existing one is a predecessor's: taken over without asking.
        adopt: true,
        growth_generation: None,
    });
    let mut seen = BTreeSet::new();
    declared
        .chain(state)
        .chain(control)
        .filter(|topic| seen.insert(topic.name.clone()))
        .collect()
}

/// Names of every topic the pipeline claims: the same set [`desired_topics`] returns, without
/// building the topics (ownership asks this of every pipeline in the store).
pub(super) fn claimed_topic_names(pipeline: &OrderPipeline) -> BTreeSet<String> {
    let declared = pipeline.spec.topics.iter().map(|topic| topic.name.clone());
    declared
        .chain(state_topics(pipeline).map(|(name, _, _)| name))
        .chain(control_topic(pipeline))
        .collect()
}

/// The control topic's name, once the pipeline needs one: a stage input is declared larger than
/// the status last recorded it (a growth is asked for), or the status already records the control
/// topic or a growth. Created with the first growth rather than with the pipeline, so the many
/// pipelines that never grow an input cost no topic (workers find it when it appears; the growth
/// waits for it, see `crate::growth`).
fn control_topic(pipeline: &OrderPipeline) -> Option<String> {
    let namespace = pipeline.metadata.namespace.as_deref().unwrap_or_default();
    let name = naming::control_topic(
        namespace,
        pipeline.metadata.name.as_deref().unwrap_or_default(),
    );
    let status = pipeline.status.as_ref()?;
    let recorded = |topic: &str| {
        status
            .topics
            .iter()
            .find(|t| t.name == topic)
            .and_then(|t| t.partitions)
    };
    let kept = !status.growth.is_empty() || recorded(&name).is_some();
    let growing = pipeline.spec.stages.iter().any(|stage| {
        let declared = pipeline.spec.topics.iter().find(|t| t.name == stage.input);
        declared
            .zip(recorded(&stage.input))
            .is_some_and(|(declared, recorded)| declared.partitions > recorded)
    });
    (kept || growing).then_some(name)
}

/// The state topic name of each stateful stage, with the stage's processor and input topic.
fn state_topics(pipeline: &OrderPipeline) -> impl Iterator<Item = (String, Processor, &TopicSpec)> {
    let namespace = pipeline.metadata.namespace.as_deref().unwrap_or_default();
    let name = pipeline.metadata.name.as_deref().unwrap_or_default();
    let spec = &pipeline.spec;
    spec.stages
        .iter()
        .filter(|stage| is_stateful(stage.processor))
        .filter_map(move |stage| {
            // CEL guarantees the input is declared; without it there is nothing to co-partition
            // with.
            let input = spec.topics.iter().find(|topic| topic.name == stage.input)?;
            Some((
                naming::state_topic(namespace, name, &stage.name),
                stage.processor,
                input,
            ))
        })
}
