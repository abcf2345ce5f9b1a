//! Runs a [`TopicPlan`] against a [`TopicAdmin`]: the actions in order, a change to announce for
//! each action that took effect, and the plan's statuses corrected for the actions that failed.
//!
//! Holds no client (the admin is passed in) and decides nothing (the plan did). A failed action
//! does not stop the others, since topics are independent: the failure shows in that topic's status
//! and in the returned errors, which the controller counts (by category) and requeues on.

use std::collections::{BTreeMap, BTreeSet};

use orderpipe_api::v1alpha1::TopicStatus;

use super::admin::{Effect, TopicAdmin};
use super::error::{Operation, TopicError};
use super::plan::{TopicAction, TopicPlan};
use super::reason;
use crate::events::Change;

/// The result of running a plan.
#[derive(Debug)]
pub struct TopicOutcome {
    /// `status.topics`: the plan's statuses, where a topic whose action failed is not ready and
    /// says why, and a deleted topic is gone.
    pub statuses: Vec<TopicStatus>,
    /// Events to publish, one per change that took effect.
    pub changes: Vec<Change>,
    /// Each admin call made, as (operation label, succeeded), for metrics.
    pub operations: Vec<(&'static str, bool)>,
    pub errors: Vec<TopicError>,
}

impl TopicOutcome {
    /// Partitions of each topic that exists, as the statuses report them: what the stages'
    /// autoscalers are capped at.
    pub fn partitions(&self) -> BTreeMap<String, i32> {
        let known = self
            .statuses
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.partitions?)));
        known.collect()
    }
}

impl TopicOutcome {
    /// The failed admin calls in one message, for `TopicsReady` or the finalizer's error; `None`
    /// when every call succeeded.
    pub fn error_summary(&self) -> Option<String> {
        let errors: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }
}

/// Runs the plan's actions one by one, in order.
pub async fn execute<A: TopicAdmin>(admin: &A, plan: TopicPlan) -> TopicOutcome {
    let TopicPlan {
        actions,
        mut statuses,
    } = plan;
    let mut changes = Vec::new();
    let mut operations = Vec::new();
    let mut errors = Vec::new();
    let mut deleted = BTreeSet::new();
    for action in &actions {
        let result = run(admin, action).await;
        operations.push((operation(action).as_str(), result.is_ok()));
        match result {
            Ok(effect) => {
                if effect == Effect::Applied {
                    changes.push(action.change());
                }
                if let TopicAction::Delete { name } = action {
                    deleted.insert(name.as_str());
                }
            }
            Err(error) => {
                tracing::warn!(
                    topic = action.topic(),
                    category = error.category().as_str(),
                    %error,
                    "topic action failed"
                );
                if let Some(status) = statuses.iter_mut().find(|s| s.name == action.topic()) {
                    record_failure(status, action, &error);
                }
                errors.push(error);
            }
        }
    }
    // A deleted topic leaves the status, and with it the operator's memory of it.
    statuses.retain(|status| !deleted.contains(status.name.as_str()));
    TopicOutcome {
        statuses,
        changes,
        operations,
        errors,
    }
}

fn operation(action: &TopicAction) -> Operation {
    match action {
        TopicAction::Create { .. } => Operation::Create,
        TopicAction::AddPartitions { .. } => Operation::AddPartitions,
        TopicAction::AlterConfig { .. } => Operation::AlterConfig,
        TopicAction::Delete { .. } => Operation::Delete,
    }
}

async fn run<A: TopicAdmin>(admin: &A, action: &TopicAction) -> Result<Effect, TopicError> {
    match action {
        TopicAction::Create {
            name,
            partitions,
            replication_factor,
            config,
        } => {
            admin
                .create(name, *partitions, *replication_factor, config)
                .await
        }
        TopicAction::AddPartitions { name, to, .. } => admin.add_partitions(name, *to).await,
        TopicAction::AlterConfig { name, set, .. } => admin.alter_config(name, set).await,
        TopicAction::Delete { name } => admin.delete(name).await,
    }
}

/// The status now describes what Kafka has after the failure. The first reason stays (a
/// `PartitionDecreaseRefused` or `Deleting` is still true); messages accumulate.
fn record_failure(status: &mut TopicStatus, action: &TopicAction, error: &TopicError) {
    match action {
        TopicAction::Create { .. } => status.partitions = None,
        TopicAction::AddPartitions { from, .. } => status.partitions = Some(*from),
        TopicAction::AlterConfig { .. } | TopicAction::Delete { .. } => {}
    }
    if status.ready {
        status.ready = false;
        status.reason = Some(reason::KAFKA_ADMIN_FAILED.to_owned());
        status.message = Some(error.to_string());
    } else {
        let earlier = status.message.take().into_iter();
        status.message = Some(
            earlier
                .chain([error.to_string()])
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use orderpipe_api::v1alpha1::DeletionPolicy;
    use rdkafka::error::RDKafkaErrorCode;

    use super::*;
    use crate::topics::plan::{ConfigReason, Described, TopicQuery};

    /// Answers every call from two sets and records the calls in order.
    #[derive(Default)]
    struct FakeAdmin {
        /// Topics a create finds already there, or a delete finds already gone.
        in_place: BTreeSet<&'static str>,
        failing: BTreeSet<&'static str>,
        calls: Mutex<Vec<String>>,
    }

    impl FakeAdmin {
        fn answer(&self, op: Operation, topic: &str) -> Result<Effect, TopicError> {
            self.calls
                .lock()
                .expect("not poisoned")
                .push(format!("{op} {topic}"));
            if self.failing.contains(topic) {
                let code = RDKafkaErrorCode::PolicyViolation;
                return Err(TopicError::Broker {
                    op,
                    topic: topic.to_owned(),
                    code,
                });
            }
            if self.in_place.contains(topic) {
                Ok(Effect::AlreadyInPlace)
            } else {
                Ok(Effect::Applied)
            }
        }
    }

    impl TopicAdmin for FakeAdmin {
        async fn describe(&self, _query: &TopicQuery) -> Result<Described, TopicError> {
            Ok(Described::default())
        }

        async fn create(
            &self,
            name: &str,
            _partitions: i32,
            _replication_factor: Option<i16>,
            _config: &BTreeMap<String, String>,
        ) -> Result<Effect, TopicError> {
            self.answer(Operation::Create, name)
        }

        async fn add_partitions(&self, name: &str, _to: i32) -> Result<Effect, TopicError> {
            self.answer(Operation::AddPartitions, name)
        }

        async fn alter_config(
            &self,
            name: &str,
            _set: &BTreeMap<String, String>,
        ) -> Result<Effect, TopicError> {
            self.answer(Operation::AlterConfig, name)
        }

        async fn delete(&self, name: &str) -> Result<Effect, TopicError> {
            self.answer(Operation::Delete, name)
        }
    }

    fn status(name: &str, partitions: i32, policy: DeletionPolicy) -> TopicStatus {
        TopicStatus {
            name: name.into(),
            ready: true,
            partitions: Some(partitions),
            deletion_policy: Some(policy),
            ..TopicStatus::default()
        }
    }

    /// One action of each kind, on topics named after them.
    fn plan() -> TopicPlan {
        let set: BTreeMap<String, String> = [("retention.ms".into(), "1000".into())].into();
        let deleting = TopicStatus {
            ready: false,
            reason: Some(reason::DELETING.into()),
            message: Some("deleting topic gone: it left the spec (deletionPolicy Delete)".into()),
            ..status("gone", 3, DeletionPolicy::Delete)
        };
        TopicPlan {
            actions: vec![
                TopicAction::Create {
                    name: "new".into(),
                    partitions: 6,
                    replication_factor: None,
                    config: set.clone(),
                },
                TopicAction::AddPartitions {
                    name: "grown".into(),
                    from: 3,
                    to: 6,
                    generation: None,
                },
                TopicAction::AlterConfig {
                    name: "drifted".into(),
                    set,
                    reason: ConfigReason::Restored,
                },
                TopicAction::Delete {
                    name: "gone".into(),
                },
            ],
            statuses: vec![
                status("new", 6, DeletionPolicy::Retain),
                status("grown", 6, DeletionPolicy::Retain),
                status("drifted", 1, DeletionPolicy::Retain),
                deleting,
            ],
        }
    }

    fn find<'a>(outcome: &'a TopicOutcome, name: &str) -> Option<&'a TopicStatus> {
        outcome.statuses.iter().find(|s| s.name == name)
    }

    #[tokio::test]
    async fn changes_that_took_effect_become_events_in_plan_order() {
        let admin = FakeAdmin::default();
        let outcome = execute(&admin, plan()).await;

        let reasons: Vec<&str> = outcome.changes.iter().map(|c| c.reason).collect();
        assert_eq!(
            reasons,
            [
                "TopicCreated",
                "PartitionsIncreased",
                "TopicConfigRestored",
                "TopicDeleted"
            ]
        );
        assert!(outcome.errors.is_empty());
        let calls = admin.calls.lock().expect("not poisoned").clone();
        assert_eq!(
            calls,
            [
                "creating new",
                "adding partitions to grown",
                "altering the config of drifted",
                "deleting gone"
            ]
        );
        assert!(
            find(&outcome, "gone").is_none(),
            "a deleted topic leaves the status"
        );
        assert!(outcome.statuses.iter().all(|s| s.ready));
    }

    #[tokio::test]
    async fn a_raced_create_or_an_already_deleted_topic_is_success_without_an_event() {
        let admin = FakeAdmin {
            in_place: ["new", "gone"].into(),
            ..FakeAdmin::default()
        };
        let outcome = execute(&admin, plan()).await;

        let reasons: Vec<&str> = outcome.changes.iter().map(|c| c.reason).collect();
        assert_eq!(reasons, ["PartitionsIncreased", "TopicConfigRestored"]);
        assert!(outcome.errors.is_empty());
        assert!(find(&outcome, "new").is_some_and(|s| s.ready));
        assert!(find(&outcome, "gone").is_none());
    }

    #[tokio::test]
    async fn a_failed_action_marks_only_its_topic_and_the_others_still_run() {
        let admin = FakeAdmin {
            failing: ["new", "grown"].into(),
            ..FakeAdmin::default()
        };
        let outcome = execute(&admin, plan()).await;

        let failed: Vec<Option<&str>> = outcome.errors.iter().map(TopicError::topic).collect();
        assert_eq!(failed, [Some("new"), Some("grown")]);
        let new = find(&outcome, "new").expect("listed");
        assert!(!new.ready);
        assert_eq!(new.reason.as_deref(), Some("KafkaAdminFailed"));
        assert_eq!(
            new.partitions, None,
            "a topic that was not created has no partitions"
        );
        assert!(
            new.message
                .as_deref()
                .is_some_and(|m| m.contains("creating topic new failed"))
        );
        let grown = find(&outcome, "grown").expect("listed");
        assert_eq!(grown.partitions, Some(3), "still the partitions it had");
        assert!(find(&outcome, "drifted").is_some_and(|s| s.ready));
        assert_eq!(
            outcome.changes.len(),
            2,
            "the config restore and the delete happened"
        );
        assert_eq!(
            outcome.operations,
            [
                ("create", false),
                ("add_partitions", false),
                ("alter_config", true),
                ("delete", true)
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_delete_keeps_the_topic_in_status_so_it_is_retried() {
        let admin = FakeAdmin {
            failing: ["gone"].into(),
            ..FakeAdmin::default()
        };
        let outcome = execute(&admin, plan()).await;

        let gone = find(&outcome, "gone").expect("still listed");
        assert_eq!(gone.deletion_policy, Some(DeletionPolicy::Delete));
        assert_eq!(gone.reason.as_deref(), Some("Deleting"));
        let message = gone.message.as_deref().unwrap_or_default();
        assert!(
            message.contains("it left the spec") && message.contains("deleting topic gone failed")
        );
    }

    #[tokio::test]
    async fn outcome_partitions_list_the_topics_that_exist() {
        let admin = FakeAdmin {
            failing: ["new"].into(),
            ..FakeAdmin::default()
        };
        let outcome = execute(&admin, plan()).await;
        let expected: BTreeMap<String, i32> = [("grown".into(), 6), ("drifted".into(), 1)].into();
        assert_eq!(outcome.partitions(), expected);
    }
}
