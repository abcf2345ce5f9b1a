//! Which pipeline owns a Kafka topic that several pipelines declare.
//!
//! Pure: decided from the pipelines the controller already holds in its reflector store, with no
//! client and no clock, so every operator replica and every reconcile agree. Among the live
//! pipelines on the same Kafka cluster that declare a topic, the oldest
//! `metadata.creationTimestamp` wins; ties go to the smaller namespace, then name.
//!
//! "The same cluster" is decided by the cluster id the brokers report (`status.kafkaClusterId`,
//! and the id the caller just read for the pipeline at hand), so a cluster named by a DNS name in
//! one pipeline and by an address or another listener in the next is still one cluster. Until
//! both ids are known, bootstrap server sets that intersect (host names compared without case)
//! stand in. A pipeline being deleted releases its claims, so the next one in
//! line becomes the owner on its next reconcile; it manages the topic only if its spec opts in to
//! adopting it (`adopt: true`, see `plan`), as the topic exists and it did not create it.
//!
//! The view answers for the topics the pipeline it was built for declares or lists in its status;
//! it must not be used for another pipeline.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orderpipe_api::OrderPipeline;

use super::desired::claimed_topic_names;

/// A pipeline by namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PipelineRef {
    pub namespace: String,
    pub name: String,
}

impl PipelineRef {
    pub fn of(pipeline: &OrderPipeline) -> Self {
        Self {
            namespace: pipeline.metadata.namespace.clone().unwrap_or_default(),
            name: pipeline.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PipelineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Orders claimants of one topic: the pipeline already managing it first (its status records the
/// topic with a deletion policy), then older first. Incumbency comes first because creation
/// timestamps have one-second resolution: two pipelines created in the same second would otherwise
/// be ordered by name, and a newcomer could take a topic away from the pipeline running on it. A
/// pipeline without a creation timestamp has not been stored by the API server yet, so it is the
/// youngest of all; the derived order compares fields top to bottom.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seniority {
    newcomer: bool,
    unstored: bool,
    created: Option<Time>,
    pipeline: PipelineRef,
}

impl Seniority {
    /// The seniority of `pipeline` as a claimant of `topic`.
    fn of(pipeline: &OrderPipeline, topic: &str) -> Self {
        let created = pipeline.metadata.creation_timestamp.clone();
        let manages = pipeline
            .status
            .iter()
            .flat_map(|s| s.topics.iter())
            .any(|t| t.name == topic && t.deletion_policy.is_some());
        Self {
            newcomer: !manages,
            unstored: created.is_none(),
            created,
            pipeline: PipelineRef::of(pipeline),
        }
    }
}

/// Topic ownership as seen by one pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnershipView {
    me: PipelineRef,
    /// The oldest claimant of each topic of interest, this pipeline included.
    owners: BTreeMap<String, PipelineRef>,
    /// Topics of interest another live pipeline on the same cluster declares.
    claimed_by_others: BTreeSet<String>,
}

impl OwnershipView {
    /// Builds the view for `me` from every pipeline in the store (`me` may be among them; the
    /// argument is used, as it is the fresher copy). `me` counts even while being deleted, so its
    /// finalizer still knows what it owned. `cluster_id` is the id `me`'s brokers reported now, if
    /// known; its last recorded one stands in otherwise.
    pub fn new<I>(me: &OrderPipeline, pipelines: I, cluster_id: Option<&str>) -> Self
    where
        I: IntoIterator,
        I::Item: Borrow<OrderPipeline>,
    {
        let mine = claimed_topic_names(me);
        // Topics in the status may have left the spec and still need a delete decision.
        let status_topics = me
            .status
            .iter()
            .flat_map(|s| s.topics.iter().map(|t| t.name.clone()));
        let interest: BTreeSet<String> = mine.iter().cloned().chain(status_topics).collect();
        let cluster = Cluster::of(me, cluster_id);
        let me_ref = PipelineRef::of(me);

        let mut oldest: BTreeMap<String, Seniority> = mine
            .into_iter()
            .map(|topic| {
                let seniority = Seniority::of(me, &topic);
                (topic, seniority)
            })
            .collect();
        let mut claimed_by_others = BTreeSet::new();
        for other in pipelines {
            let other = other.borrow();
            if PipelineRef::of(other) == me_ref
                || other.metadata.deletion_timestamp.is_some()
                || !cluster.shared_with(&Cluster::of(other, None))
            {
                continue;
            }
            for topic in claimed_topic_names(other)
                .into_iter()
                .filter(|t| interest.contains(t))
            {
                claimed_by_others.insert(topic.clone());
                let seniority = Seniority::of(other, &topic);
                let current = oldest.entry(topic).or_insert_with(|| seniority.clone());
                if seniority < *current {
                    *current = seniority;
                }
            }
        }
        Self {
            me: me_ref,
            owners: oldest
                .into_iter()
                .map(|(topic, s)| (topic, s.pipeline))
                .collect(),
            claimed_by_others,
        }
    }

    /// The owner of `topic`; `None` when no live pipeline on the cluster declares it.
    pub fn owner_of(&self, topic: &str) -> Option<&PipelineRef> {
        self.owners.get(topic)
    }

    /// Whether the pipeline this view was built for owns `topic`.
    pub fn is_mine(&self, topic: &str) -> bool {
        self.owner_of(topic) == Some(&self.me)
    }

    /// The owner of `topic` when it is another pipeline: then this one must not touch the topic.
    pub fn other_owner(&self, topic: &str) -> Option<&PipelineRef> {
        self.owner_of(topic).filter(|owner| **owner != self.me)
    }

    /// Whether a live pipeline other than this one declares `topic` (older or newer): such a topic
    /// is never deleted on this pipeline's behalf.
    pub fn is_claimed_by_another(&self, topic: &str) -> bool {
        self.claimed_by_others.contains(topic)
    }
}

/// How a pipeline's Kafka cluster is recognised.
struct Cluster {
    /// The id its brokers report, once known.
    id: Option<String>,
    /// Its bootstrap servers, normalised: DNS names are case-insensitive.
    servers: BTreeSet<String>,
}

impl Cluster {
    /// `pipeline`'s cluster: `id` if given, else the id its status recorded.
    fn of(pipeline: &OrderPipeline, id: Option<&str>) -> Self {
        let recorded = pipeline
            .status
            .as_ref()
            .and_then(|s| s.kafka_cluster_id.as_deref());
        let servers = pipeline.spec.kafka.bootstrap_servers.iter();
        Self {
            id: id.or(recorded).map(ToOwned::to_owned),
            servers: servers
                .map(|server| server.0.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    /// The ids decide when both are known: the same brokers may be named differently, and one
    /// name may be reused for another cluster. Until then, a shared bootstrap server.
    fn shared_with(&self, other: &Self) -> bool {
        match (&self.id, &other.id) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => !self.servers.is_disjoint(&other.servers),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    /// A pipeline declaring `topics` besides the fixture's own.
    fn pipeline(
        namespace: &str,
        name: &str,
        created: &str,
        bootstrap: &str,
        topics: &[&str],
    ) -> OrderPipeline {
        let fixture = OrderPipeline::test(name)
            .in_namespace(namespace)
            .created_at(created)
            .bootstrap(bootstrap);
        topics
            .iter()
            .fold(fixture, |pipeline, topic| pipeline.topic(topic, 3))
    }

    const EARLY: &str = "2026-01-01T00:00:00Z";
    const LATE: &str = "2026-02-01T00:00:00Z";

    fn owner(view: &OwnershipView, topic: &str) -> Option<String> {
        view.owner_of(topic).map(ToString::to_string)
    }

    #[test]
    fn oldest_pipeline_owns_a_shared_topic() {
        let old = pipeline("shop", "old", EARLY, "kafka:9092", &["shared"]);
        let new = pipeline("shop", "new", LATE, "kafka:9092", &["shared", "own"]);
        let all = [old.clone(), new.clone()];

        let view = OwnershipView::new(&new, &all, None);
        assert_eq!(owner(&view, "shared").as_deref(), Some("shop/old"));
        assert!(!view.is_mine("shared"));
        assert_eq!(
            view.other_owner("shared")
                .map(ToString::to_string)
                .as_deref(),
            Some("shop/old")
        );
        assert!(view.is_mine("own"));

        let view = OwnershipView::new(&old, &all, None);
        assert!(view.is_mine("shared"));
        assert!(view.other_owner("shared").is_none());
        assert!(
            view.is_claimed_by_another("shared"),
            "the newer pipeline still declares it"
        );
    }

    #[test]
    fn creation_time_ties_are_broken_by_namespace_then_name() {
        let a = pipeline("alpha", "zeta", EARLY, "kafka:9092", &["shared"]);
        let b = pipeline("beta", "able", EARLY, "kafka:9092", &["shared"]);
        let c = pipeline("alpha", "omega", EARLY, "kafka:9092", &["shared"]);
        let all = [a.clone(), b.clone(), c.clone()];
        for me in &all {
            let view = OwnershipView::new(me, &all, None);
            assert_eq!(owner(&view, "shared").as_deref(), Some("alpha/omega"));
        }
    }

    #[test]
    fn the_pipeline_managing_a_topic_keeps_it_against_a_newcomer_of_the_same_second() {
        let mut incumbent = pipeline("shop", "shop", EARLY, "kafka:9092", &["shared"]);
        incumbent.status = Some(orderpipe_api::OrderPipelineStatus {
            topics: vec![orderpipe_api::v1alpha1::TopicStatus {
                name: "shared".into(),
                ready: true,
                deletion_policy: Some(orderpipe_api::v1alpha1::DeletionPolicy::Retain),
                ..Default::default()
            }],
            ..Default::default()
        });
        // Same creation second, and "copycat" sorts before "shop".
        let newcomer = pipeline("shop", "copycat", EARLY, "kafka:9092", &["shared"]);
        for view in [
            OwnershipView::new(&newcomer, [&incumbent, &newcomer], None),
            OwnershipView::new(&incumbent, [&incumbent, &newcomer], None),
        ] {
            assert_eq!(
                view.owner_of("shared").map(|p| p.name.as_str()),
                Some("shop")
            );
        }
    }

    #[test]
    fn pipelines_on_different_clusters_do_not_compete() {
        let old = pipeline("shop", "old", EARLY, "kafka-a:9092", &["shared"]);
        let new = pipeline("shop", "new", LATE, "kafka-b:9092", &["shared"]);
        let view = OwnershipView::new(&new, [&old, &new], None);
        assert!(view.is_mine("shared"));
        assert!(!view.is_claimed_by_another("shared"));
    }

    fn on_cluster(mut pipeline: OrderPipeline, id: &str) -> OrderPipeline {
        pipeline.status = Some(orderpipe_api::OrderPipelineStatus {
            kafka_cluster_id: Some(id.into()),
            ..Default::default()
        });
        pipeline
    }

    #[test]
    fn one_cluster_named_by_different_addresses_is_one_cluster_once_its_id_is_known() {
        let old = on_cluster(
            pipeline("shop", "old", EARLY, "kafka.example.com:9092", &["shared"]),
            "cluster-a",
        );
        let new = pipeline("shop", "new", LATE, "10.0.0.7:9092", &["shared"]);
        // Before `new` has reached its brokers, the addresses are all there is.
        assert!(OwnershipView::new(&new, [&old, &new], None).is_mine("shared"));
        // Its brokers report the same cluster as `old`'s.
        let view = OwnershipView::new(&new, [&old, &new], Some("cluster-a"));
        assert_eq!(owner(&view, "shared").as_deref(), Some("shop/old"));
        // `old` sees `new` on its cluster once `new` recorded the id.
        let new = on_cluster(new, "cluster-a");
        let view = OwnershipView::new(&old, [&old, &new], Some("cluster-a"));
        assert!(view.is_claimed_by_another("shared"));
    }

    #[test]
    fn one_address_reused_for_another_cluster_is_two_clusters_once_the_ids_are_known() {
        let old = on_cluster(
            pipeline("shop", "old", EARLY, "kafka:9092", &["shared"]),
            "cluster-a",
        );
        let new = pipeline("dev", "new", LATE, "kafka:9092", &["shared"]);
        let view = OwnershipView::new(&new, [&old, &new], Some("cluster-b"));
        assert!(view.is_mine("shared"));
        assert!(!view.is_claimed_by_another("shared"));
    }

    #[test]
    fn bootstrap_hosts_compare_without_case() {
        let old = pipeline("shop", "old", EARLY, "Kafka.Example.COM:9092", &["shared"]);
        let new = pipeline("shop", "new", LATE, "kafka.example.com:9092", &["shared"]);
        let view = OwnershipView::new(&new, [&old, &new], None);
        assert!(!view.is_mine("shared"));
    }

    #[test]
    fn a_deleted_pipeline_releases_its_claims() {
        let mut old = pipeline("shop", "old", EARLY, "kafka:9092", &["shared"]);
        old.metadata.deletion_timestamp = Some(Time(
            Timestamp::from_second(1_780_000_000).expect("in range"),
        ));
        let new = pipeline("shop", "new", LATE, "kafka:9092", &["shared"]);

        let view = OwnershipView::new(&new, [&old, &new], None);
        assert!(view.is_mine("shared"));
        assert!(!view.is_claimed_by_another("shared"));

        // The pipeline being deleted still sees its own claims (its finalizer needs them), and sees
        // that a live pipeline declares the topic, so it must not delete it.
        let view = OwnershipView::new(&old, [&old, &new], None);
        assert!(view.is_mine("shared"));
        assert!(view.is_claimed_by_another("shared"));
    }

    #[test]
    fn a_pipeline_not_yet_stored_is_the_youngest() {
        let stored = pipeline("shop", "stored", LATE, "kafka:9092", &["shared"]);
        let mut fresh = pipeline("aaa", "fresh", EARLY, "kafka:9092", &["shared"]);
        fresh.metadata.creation_timestamp = None;
        let view = OwnershipView::new(&fresh, [&stored], None);
        assert_eq!(owner(&view, "shared").as_deref(), Some("shop/stored"));
    }

    #[test]
    fn state_topics_are_claimed_like_declared_ones() {
        let me = OrderPipeline::test("checkout")
            .in_namespace("shop")
            .created_at("2026-01-01T00:00:00Z")
            .bootstrap("kafka:9092");
        let view = OwnershipView::new(&me, [&me], None);
        assert!(view.is_mine("orderpipe.shop.checkout.validate.state"));
    }
}
