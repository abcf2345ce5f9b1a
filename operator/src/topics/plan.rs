//! Topic planning: from the declared topics, what Kafka has, who owns what and the last status,
//! decide the admin actions and the status of every topic.
//!
//! Pure: no client, no async, no clock, and it never fails. Whatever the operator must not do
//! (shrink partitions, change a replication factor, touch a topic another pipeline owns) becomes a
//! status with a reason instead of an action, and planning of the other topics goes on.
//!
//! Rules:
//! - Partitions only grow. A topic with more partitions than declared is left as it is and reported
//!   `ready: false, reason: PartitionDecreaseRefused`: it still serves records (workers keep
//!   running) but it is not what the spec says, and the fix is the user's (declare at least that
//!   many). CEL rejects decreases at admission, so this only happens after an out-of-band grow or
//!   when a spec is re-created with fewer partitions.
//! - The replication factor is never changed (that is a partition reassignment); a mismatch is
//!   reported `ready: false, reason: ReplicationFactorMismatch`. Unset means the broker default and
//!   accepts whatever the topic has.
//! - Config: only declared keys are compared (against their effective value, whatever its source)
//!   and set; every other key of the topic is left alone.
//! - Every stateful stage gets a compacted state topic co-partitioned with its input: it has as
//!   many partitions as the input will have after this plan, and follows the input's replication
//!   factor and deletion policy.
//! - A topic an older pipeline on the same cluster declares gets no action, only a `Conflict`
//!   status.
//! - A topic that exists in Kafka but that this pipeline neither created nor took over (its last
//!   status does not record it as managed) gets no action unless its spec says `adopt: true`, only
//!   an `AdoptionRequired` status: it may be another team's or another tool's. Creation is
//!   recorded before it happens ([`creation_record`]), so a crash between the two does not turn
//!   the operator's own topic into one it must be told to adopt.
//! - Deletion is opt-in (`deletionPolicy: Delete`) and only of topics this pipeline managed, as its
//!   last status records them, and that no other live pipeline on the cluster declares.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use orderpipe_api::OrderPipeline;
use orderpipe_api::v1alpha1::{DeletionPolicy, TopicStatus};

use super::desired::{DesiredTopic, desired_topics};
use super::ownership::{OwnershipView, PipelineRef};
use super::reason;
use crate::events::Change;

/// A topic as Kafka has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    /// The smallest replica count over the topic's partitions: the weakest partition decides how
    /// many broker losses the topic survives.
    pub replication_factor: i16,
    /// Effective values of the queried config keys, whatever their source (topic, broker, default).
    pub config: BTreeMap<String, String>,
}

/// What one [`TopicAdmin::describe`](super::TopicAdmin::describe) saw of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Described {
    /// The queried topics that exist.
    pub topics: BTreeMap<String, ObservedTopic>,
    /// How many brokers the cluster's metadata lists (brokers that are down are not listed);
    /// `None` when unknown (no topic was queried), and then nothing is checked against it. It comes
    /// with the topics' metadata, so it costs no request of its own.
    pub brokers: Option<usize>,
}

/// What the operator knows from its last status write; it keeps no memory in the process.
#[derive(Clone, Copy, Debug)]
pub struct LastStatus<'a> {
    /// `status.topics`: the topics the operator managed (`deletionPolicy` set) or reported.
    pub topics: &'a [TopicStatus],
    /// `metadata.generation` differs from `status.observedGeneration`: the spec changed since the
    /// last status, so a config difference may be the user's edit rather than drift.
    pub spec_changed: bool,
}

impl<'a> LastStatus<'a> {
    pub fn of(pipeline: &'a OrderPipeline) -> Self {
        let status = pipeline.status.as_ref();
        Self {
            topics: status.map(|s| s.topics.as_slice()).unwrap_or_default(),
            spec_changed: status.and_then(|s| s.observed_generation)
                != pipeline.metadata.generation,
        }
    }

    /// The partition count each topic had when last seen in Kafka. While Kafka cannot be
    /// reached, replicas and autoscalers stay capped by these instead of losing their cap:
    /// partitions never shrink, so a count seen once is still a safe bound.
    pub fn partitions(&self) -> BTreeMap<String, i32> {
        self.topics
            .iter()
            .filter_map(|t| Some((t.name.clone(), t.partitions?)))
            .collect()
    }

    fn managed(&self, topic: &str) -> bool {
        self.topics
            .iter()
            .any(|s| s.name == topic && s.deletion_policy.is_some())
    }

    /// Topics the operator managed with deletion policy Delete: each may have to be deleted.
    pub(super) fn deletable(&self) -> impl Iterator<Item = &'a TopicStatus> + use<'a> {
        self.topics
            .iter()
            .filter(|s| s.deletion_policy == Some(DeletionPolicy::Delete))
    }
}

/// What [`TopicAdmin::describe`](super::TopicAdmin::describe) must look up for [`plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicQuery {
    /// The desired topics and those that may have to be deleted.
    pub names: BTreeSet<String>,
    /// Every declared config key; other keys are never compared, so never fetched.
    pub config_keys: BTreeSet<String>,
}

impl TopicQuery {
    pub fn new(desired: &[DesiredTopic], last: &LastStatus<'_>) -> Self {
        let desired_names = desired.iter().map(|topic| topic.name.clone());
        Self {
            names: desired_names
                .chain(last.deletable().map(|s| s.name.clone()))
                .collect(),
            config_keys: desired
                .iter()
                .flat_map(|topic| topic.config.keys().cloned())
                .collect(),
        }
    }
}

/// Which Event a config change is reported as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigReason {
    /// First set: a topic adopted, or a declared value the user changed.
    Configured,
    /// A managed topic's value was changed out of band and is set back.
    Restored,
}

/// One Kafka admin call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicAction {
    Create {
        name: String,
        partitions: i32,
        /// `None`: created with replication factor -1, which Kafka >= 2.4 maps to
        /// `default.replication.factor`.
        replication_factor: Option<i16>,
        config: BTreeMap<String, String>,
    },
    AddPartitions {
        name: String,
        from: i32,
        to: i32,
        /// The coordinated growth this is a step of (`crate::growth`), if it is one.
        generation: Option<i64>,
    },
    /// Sets these declared keys; other keys of the topic are kept.
    AlterConfig {
        name: String,
        set: BTreeMap<String, String>,
        reason: ConfigReason,
    },
    Delete {
        name: String,
    },
}

impl TopicAction {
    pub fn topic(&self) -> &str {
        match self {
            Self::Create { name, .. }
            | Self::AddPartitions { name, .. }
            | Self::AlterConfig { name, .. }
            | Self::Delete { name } => name,
        }
    }

    /// The Event to publish once the action took effect.
    pub fn change(&self) -> Change {
        match self {
            Self::Create {
                name,
                partitions,
                replication_factor,
                config,
            } => {
                let replication = replication_factor
                    .map_or_else(|| "the broker default".to_owned(), |rf| rf.to_string());
                let config = if config.is_empty() {
                    String::new()
                } else {
                    format!(" and config {}", key_values(config))
                };
                Change {
                    reason: reason::TOPIC_CREATED,
                    note: format!(
                        "created topic {name} with {partitions} partitions, replication factor \
                         {replication}{config}"
                    ),
                }
            }
            Self::AddPartitions {
                name,
                from,
                to,
                generation: Some(generation),
            } => Change {
                reason: reason::PARTITIONS_INCREASED,
                note: format!(
                    "topic {name} grew from {from} to {to} partitions as part of coordinated growth \
                     {generation}: the stages hold the new partitions until every key's state has \
                     moved"
                ),
            },
            Self::AddPartitions {
                name,
                from,
                to,
                generation: None,
            } => Change {
                reason: reason::PARTITIONS_INCREASED,
                note: format!(
                    "topic {name} grew from {from} to {to} partitions; keys are remapped: records \
                     of an existing key may now go to another partition than its earlier records, \
                     so consumers may see them before older records of that key still in flight"
                ),
            },
            Self::AlterConfig {
                name,
                set,
                reason: ConfigReason::Configured,
            } => Change {
                reason: reason::TOPIC_CONFIGURED,
                note: format!("set config of topic {name}: {}", key_values(set)),
            },
            Self::AlterConfig {
                name,
                set,
                reason: ConfigReason::Restored,
            } => Change {
                reason: reason::TOPIC_CONFIG_RESTORED,
                note: format!(
                    "restored config of topic {name} changed outside the operator: {}",
                    key_values(set)
                ),
            },
            Self::Delete { name } => Change {
                reason: reason::TOPIC_DELETED,
                note: format!("deleted topic {name} and its records (deletionPolicy Delete)"),
            },
        }
    }
}

fn key_values(config: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = config.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(", ")
}

/// The actions to run, in order, and the status of every topic once they succeeded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicPlan {
    pub actions: Vec<TopicAction>,
    pub statuses: Vec<TopicStatus>,
}

impl TopicPlan {
    /// Plans the deletion of a managed topic. Its status entry stays (with `deletionPolicy`) until
    /// the topic is gone, so a failed delete is retried on the next reconcile.
    fn delete(&mut self, name: &str, partitions: Option<i32>, why: &str) {
        self.actions.push(TopicAction::Delete {
            name: name.to_owned(),
        });
        self.statuses.push(TopicStatus {
            name: name.to_owned(),
            ready: false,
            partitions,
            reason: Some(reason::DELETING.to_owned()),
            message: Some(format!(
                "deleting topic {name}: {why} (deletionPolicy Delete)"
            )),
            deletion_policy: Some(DeletionPolicy::Delete),
        });
    }
}

/// Plans one reconcile of the pipeline's topics. `described` is what Kafka has (as described for
/// [`TopicQuery::new`]); `owners` was built for this pipeline.
pub fn plan(
    desired: &[DesiredTopic],
    described: &Described,
    owners: &OwnershipView,
    last: &LastStatus<'_>,
) -> TopicPlan {
    let Described {
        topics: observed,
        brokers,
    } = described;
    let brokers = *brokers;
    let mut out = TopicPlan::default();
    for topic in desired {
        let live = observed.get(&topic.name);
        match owners.other_owner(&topic.name) {
            Some(owner) => out.statuses.push(conflict(&topic.name, live, owner)),
            None if needs_adoption(topic, live, last) => {
                out.statuses.push(adoption_required(topic, live));
            }
            None => match unplaceable(topic, live, brokers) {
                Some(refused) => out.statuses.push(refused),
                None => {
                    let target = target_partitions(topic, desired, observed, owners);
                    manage(topic, target, live, last, &mut out);
                    if let Some(status) = out.statuses.last_mut() {
                        warn_single_replica(status, topic, live, brokers);
                    }
                }
            },
        }
    }
    let desired_names: BTreeSet<&str> = desired.iter().map(|topic| topic.name.as_str()).collect();
    for gone in last
        .deletable()
        .filter(|s| !desired_names.contains(s.name.as_str()))
    {
        // Another live pipeline on the cluster declares it now: it is theirs to keep. Not observed:
        // already deleted, and dropping the status entry ends the memory of it.
        if owners.is_claimed_by_another(&gone.name) {
            continue;
        }
        if let Some(live) = observed.get(&gone.name) {
            out.delete(&gone.name, Some(live.partitions), "it left the spec");
        }
    }
    out
}

/// The `status.topics` to record before `plan`'s actions run, when it creates topics the last
/// status does not record as managed: the last statuses with those topics added as `Creating`
/// (with their deletion policy, which is what marks a topic managed). `None` when there is no such
/// creation, so nothing needs writing first.
///
/// Without this record, a crash between a create and the status write after it would leave a topic
/// the operator made looking exactly like one somebody else made, and [`plan`] would then ask the
/// user to adopt it. A create that fails after the record leaves a managed topic that does not
/// exist, which the next plan simply creates again.
pub fn creation_record(plan: &TopicPlan, last: &LastStatus<'_>) -> Option<Vec<TopicStatus>> {
    let creating: Vec<TopicStatus> = plan
        .actions
        .iter()
        .filter_map(|action| match action {
            TopicAction::Create { name, .. } if !last.managed(name) => {
                plan.statuses.iter().find(|status| status.name == *name)
            }
            _ => None,
        })
        .map(|planned| TopicStatus {
            ready: false,
            reason: Some(reason::CREATING.to_owned()),
            message: Some(format!("creating topic {}", planned.name)),
            ..planned.clone()
        })
        .collect();
    if creating.is_empty() {
        return None;
    }
    let mut recorded: Vec<TopicStatus> = last
        .topics
        .iter()
        .filter(|status| !creating.iter().any(|c| c.name == status.name))
        .cloned()
        .collect();
    recorded.extend(creating);
    Some(recorded)
}

/// On pipeline deletion: deletes the topics this pipeline managed (as its last status records)
/// whose deletion policy is Delete and that no other live pipeline on the cluster declares. The
/// spec's current policy wins for a declared topic: it is the user's latest word. A topic the
/// operator never recorded as managed (say, the pipeline is deleted before its first status) is
/// kept: for business records, keeping one too many is the safe mistake.
pub fn finalize_plan(pipeline: &OrderPipeline, owners: &OwnershipView) -> TopicPlan {
    let declared: BTreeMap<String, DeletionPolicy> = desired_topics(pipeline)
        .into_iter()
        .map(|topic| (topic.name, topic.deletion_policy))
        .collect();
    let mut out = TopicPlan::default();
    for managed in LastStatus::of(pipeline).topics {
        let Some(recorded) = managed.deletion_policy else {
            continue;
        };
        let policy = declared.get(&managed.name).copied().unwrap_or(recorded);
        if policy == DeletionPolicy::Delete && !owners.is_claimed_by_another(&managed.name) {
            out.delete(
                &managed.name,
                managed.partitions,
                "the pipeline is being deleted",
            );
        }
    }
    out
}

/// Finalizer that lets the operator delete topics with deletion policy Delete.
pub const TOPIC_FINALIZER: &str = "orderpipe.dev/topic-cleanup";

/// Whether the pipeline carries [`TOPIC_FINALIZER`].
pub fn has_finalizer(pipeline: &OrderPipeline) -> bool {
    let finalizers = pipeline.metadata.finalizers.as_deref().unwrap_or_default();
    finalizers.iter().any(|f| f == TOPIC_FINALIZER)
}

/// Whether deleting the pipeline has topic work to do, so the controller keeps its finalizer: a
/// declared topic (and with it its state topics) with deletion policy Delete, or a managed topic
/// with Delete still waiting for its deletion.
pub fn needs_finalizer(pipeline: &OrderPipeline) -> bool {
    let mut declared = pipeline.spec.topics.iter();
    declared.any(|topic| topic.deletion_policy == DeletionPolicy::Delete)
        || LastStatus::of(pipeline).deletable().next().is_some()
}

/// Partitions a topic must have after this plan. A state topic follows what its input will have, so
/// the changelog stays co-partitioned even when the input was grown out of band.
fn target_partitions(
    topic: &DesiredTopic,
    desired: &[DesiredTopic],
    observed: &BTreeMap<String, ObservedTopic>,
    owners: &OwnershipView,
) -> i32 {
    let Some(input) = &topic.co_partitioned_with else {
        return topic.partitions;
    };
    let input_now = observed.get(input).map(|live| live.partitions);
    match desired.iter().find(|d| d.name == *input) {
        // Managed here: the input ends at its declared count, or keeps more if it has more.
        Some(declared) if owners.other_owner(input).is_none() => {
            input_now.map_or(declared.partitions, |now| now.max(declared.partitions))
        }
        // Another pipeline manages the input: follow what it has.
        _ => input_now.unwrap_or(topic.partitions),
    }
}

fn manage(
    topic: &DesiredTopic,
    target: i32,
    live: Option<&ObservedTopic>,
    last: &LastStatus<'_>,
    out: &mut TopicPlan,
) {
    let Some(live) = live else {
        out.actions.push(TopicAction::Create {
            name: topic.name.clone(),
            partitions: target,
            replication_factor: topic.replication_factor,
            config: topic.config.clone(),
        });
        out.statuses.push(managed_status(topic, target, &[]));
        return;
    };
    let mut issues = Vec::new();
    match live.partitions.cmp(&target) {
        Ordering::Less => out.actions.push(TopicAction::AddPartitions {
            name: topic.name.clone(),
            from: live.partitions,
            to: target,
            generation: topic.growth_generation,
        }),
        Ordering::Greater => issues.push(Issue::PartitionDecreaseRefused {
            has: live.partitions,
            wants: target,
        }),
        Ordering::Equal => {}
    }
    if let Some(wants) = topic.replication_factor
        && wants != live.replication_factor
    {
        issues.push(Issue::ReplicationFactorMismatch {
            has: live.replication_factor,
            wants,
        });
    }
    let set: BTreeMap<String, String> = topic
        .config
        .iter()
        .filter(|(key, value)| live.config.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    if !set.is_empty() {
        // Drift only when nothing but Kafka changed: the topic was already managed and the spec is
        // the one the last status described.
        let reason = if last.managed(&topic.name) && !last.spec_changed {
            ConfigReason::Restored
        } else {
            ConfigReason::Configured
        };
        out.actions.push(TopicAction::AlterConfig {
            name: topic.name.clone(),
            set,
            reason,
        });
    }
    out.statuses
        .push(managed_status(topic, live.partitions.max(target), &issues));
}

/// The spec field a topic's setting comes from: a state topic follows its input's declaration.
fn spec_field(topic: &DesiredTopic, field: &str) -> String {
    match &topic.co_partitioned_with {
        Some(input) => format!(
            "spec.topics[name={input}].{field} (state topic {} follows its input)",
            topic.name
        ),
        None => format!("spec.topics[name={}].{field}", topic.name),
    }
}

/// A topic whose declared replication cannot work on this cluster: refused (no action) with a
/// status naming the field. Declared replication factor above the brokers present (only checked
/// before creation: an existing topic already has its replicas), or a declared
/// `min.insync.replicas` above the topic's replicas (every `acks=all` write, so every worker's
/// transaction, would fail with NOT_ENOUGH_REPLICAS).
fn unplaceable(
    topic: &DesiredTopic,
    live: Option<&ObservedTopic>,
    brokers: Option<usize>,
) -> Option<TopicStatus> {
    let refused = |reason: &str, message: String| TopicStatus {
        name: topic.name.clone(),
        ready: false,
        partitions: live.map(|live| live.partitions),
        reason: Some(reason.to_owned()),
        message: Some(message),
        deletion_policy: Some(topic.deletion_policy),
    };
    if live.is_none()
        && let (Some(wants), Some(brokers)) = (topic.replication_factor, brokers)
        && usize::try_from(wants).unwrap_or(0) > brokers
    {
        return Some(refused(
            reason::REPLICATION_FACTOR_TOO_HIGH,
            format!(
                "{} is {wants} but the Kafka cluster has {brokers} broker(s): Kafka cannot place \
                 {wants} replicas of each partition, so topic {} is not created; declare at most \
                 {brokers} or add brokers",
                spec_field(topic, "replicationFactor"),
                topic.name
            ),
        ));
    }
    let replicas = topic
        .replication_factor
        .or(live.map(|live| live.replication_factor))?;
    let min_isr: i16 = topic.config.get(MIN_INSYNC_REPLICAS)?.trim().parse().ok()?;
    (min_isr > replicas).then(|| {
        refused(
            reason::MIN_INSYNC_REPLICAS_TOO_HIGH,
            format!(
                "{} is {min_isr} but topic {} has {replicas} replica(s): no write with acks=all \
                 (every worker's) could ever be acknowledged; declare at most {replicas} \
                 (recommended: replicationFactor 3, min.insync.replicas 2)",
                spec_field(topic, "config[min.insync.replicas]"),
                topic.name
            ),
        )
    })
}

const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// A ready topic with one replica on a cluster of several brokers stays ready but says why it
/// should not be: one broker failure makes it unavailable and can lose its records.
fn warn_single_replica(
    status: &mut TopicStatus,
    topic: &DesiredTopic,
    live: Option<&ObservedTopic>,
    brokers: Option<usize>,
) {
    let replicas = live
        .map(|live| live.replication_factor)
        .or(topic.replication_factor);
    if status.ready
        && replicas == Some(1)
        && let Some(brokers) = brokers.filter(|n| *n > 1)
    {
        status.reason = Some(reason::SINGLE_REPLICA.to_owned());
        status.message = Some(format!(
            "topic {} has 1 replica on a cluster of {brokers} brokers: one broker failure stops \
             it and can lose its records; declare {} 3 and min.insync.replicas 2 (a new topic: \
             the replication factor cannot be changed in place)",
            topic.name,
            spec_field(topic, "replicationFactor"),
        ));
    }
}

/// Why a managed topic is not as declared, though it stays in use.
enum Issue {
    PartitionDecreaseRefused { has: i32, wants: i32 },
    ReplicationFactorMismatch { has: i16, wants: i16 },
}

impl Issue {
    fn reason(&self) -> &'static str {
        match self {
            Self::PartitionDecreaseRefused { .. } => reason::PARTITION_DECREASE_REFUSED,
            Self::ReplicationFactorMismatch { .. } => reason::REPLICATION_FACTOR_MISMATCH,
        }
    }

    fn message(&self, topic: &str) -> String {
        match self {
            Self::PartitionDecreaseRefused { has, wants } => format!(
                "topic {topic} has {has} partitions in Kafka but {wants} are declared; partitions \
                 are never removed (records would be lost and keys remapped): declare {has}"
            ),
            Self::ReplicationFactorMismatch { has, wants } => format!(
                "topic {topic} has replication factor {has} in Kafka but {wants} is declared; the \
                 operator does not reassign replicas: reassign them (kafka-reassign-partitions) or \
                 recreate the topic"
            ),
        }
    }
}

fn managed_status(topic: &DesiredTopic, partitions: i32, issues: &[Issue]) -> TopicStatus {
    let messages: Vec<String> = issues
        .iter()
        .map(|issue| issue.message(&topic.name))
        .collect();
    TopicStatus {
        name: topic.name.clone(),
        ready: issues.is_empty(),
        partitions: Some(partitions),
        reason: issues.first().map(|issue| issue.reason().to_owned()),
        message: (!messages.is_empty()).then(|| messages.join("; ")),
        deletion_policy: Some(topic.deletion_policy),
    }
}

/// Whether `topic` exists in Kafka without this pipeline managing it (it did not create it and
/// never took it over) and the spec does not opt in to taking it over. Such a topic may be another
/// team's or another tool's: the operator neither configures, grows nor deletes it.
fn needs_adoption(
    topic: &DesiredTopic,
    live: Option<&ObservedTopic>,
    last: &LastStatus<'_>,
) -> bool {
    live.is_some() && !topic.adopt && !last.managed(&topic.name)
}

/// The status of a topic that [`needs_adoption`]: not ready, not managed (no deletion policy), and
/// the message says how to opt in.
fn adoption_required(topic: &DesiredTopic, live: Option<&ObservedTopic>) -> TopicStatus {
    TopicStatus {
        name: topic.name.clone(),
        ready: false,
        partitions: live.map(|live| live.partitions),
        reason: Some(reason::ADOPTION_REQUIRED.to_owned()),
        message: Some(format!(
            "topic {} already exists in Kafka and this pipeline did not create it, so the operator              leaves it untouched; to manage it (set its declared config, grow it, delete it by              deletionPolicy) set {}: true",
            topic.name,
            spec_field(topic, "adopt"),
        )),
        deletion_policy: None,
    }
}

fn conflict(name: &str, live: Option<&ObservedTopic>, owner: &PipelineRef) -> TopicStatus {
    TopicStatus {
        name: name.to_owned(),
        ready: false,
        partitions: live.map(|live| live.partitions),
        reason: Some(reason::CONFLICT.to_owned()),
        message: Some(format!(
            "topic {name} is owned by OrderPipeline {owner} (created earlier)"
        )),
        deletion_policy: None,
    }
}

#[cfg(test)]
mod tests;
