//! The last look at each pipeline's topics in Kafka, so that a reconcile nothing topic-relevant
//! triggered (a child's rollout, the operator's own status write, a lag requeue) plans from it
//! instead of describing every topic of the pipeline again.
//!
//! A look is reused only while all of these hold: the pipeline (same UID) is at the same spec
//! generation; the query (topic names, config keys) is the same; the look is younger than the
//! maximum age; and the plan made from it when it was taken had no action and reported every topic
//! ready. After an action the next reconcile looks again (Kafka changed); a topic that is not ready
//! is looked at afresh on every reconcile until it is.
//!
//! Staleness bound: a status planned from a reused look describes Kafka as it was at most the
//! maximum age ago (the controller's resync period), and the controller comes back when the look
//! expires ([`LastLooks::reusable`] says when), so a change made in Kafka out of band (config drift,
//! partitions added, a topic deleted) shows within one resync period, as before looks were kept.
//!
//! No I/O: the caller describes and decides what to remember with [`worth_keeping`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::plan::{Described, TopicPlan, TopicQuery};

/// What a look is taken for: a look answers only the same question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    /// `metadata.uid`: a pipeline deleted and created again under its name starts over.
    pub uid: Option<String>,
    /// `metadata.generation`: a spec change looks again.
    pub generation: Option<i64>,
    pub query: TopicQuery,
}

/// One look at a pipeline's topics.
#[derive(Clone, Debug)]
pub struct Look {
    pub asked: Asked,
    pub described: Described,
    pub taken: Instant,
}

/// A look that may stand in for describing, and how much longer it may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reused {
    pub described: Described,
    /// When the controller must come back at the latest, so that Kafka is looked at again.
    pub expires_in: Duration,
}

/// The last look per pipeline (keyed `namespace/name`), shared by the reconciles.
#[derive(Debug)]
pub struct LastLooks {
    max_age: Duration,
    looks: Mutex<HashMap<String, Look>>,
}

impl LastLooks {
    /// Looks are reused for at most `max_age` (the controller's resync period: how long drift made
    /// in Kafka out of band may go unseen).
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            looks: Mutex::new(HashMap::new()),
        }
    }

    /// The look to plan from at `now` instead of describing, if the pipeline's last one answers
    /// what is `asked`.
    pub fn reusable(&self, key: &str, asked: &Asked, now: Instant) -> Option<Reused> {
        let looks = self.looks.lock().unwrap_or_else(PoisonError::into_inner);
        reuse(looks.get(key)?, asked, now, self.max_age)
    }

    /// Keeps `look` for the next reconciles when the plan made from it is [`worth_keeping`];
    /// otherwise drops the pipeline's last look, so the next reconcile describes.
    pub fn remember(&self, key: &str, look: Look, plan: &TopicPlan) {
        let mut looks = self.looks.lock().unwrap_or_else(PoisonError::into_inner);
        if worth_keeping(plan) {
            looks.insert(key.to_owned(), look);
        } else {
            looks.remove(key);
        }
    }

    /// After planning from a reused look: drops it unless the plan is still [`worth_keeping`] (what
    /// it is planned with besides the look, such as who owns which topic, may have changed).
    pub fn keep_if_still_worth(&self, key: &str, plan: &TopicPlan) {
        if !worth_keeping(plan) {
            let mut looks = self.looks.lock().unwrap_or_else(PoisonError::into_inner);
            looks.remove(key);
        }
    }

    /// Drops the looks of pipelines that are gone.
    pub fn retain(&self, mut live: impl FnMut(&str) -> bool) {
        let mut looks = self.looks.lock().unwrap_or_else(PoisonError::into_inner);
        looks.retain(|key, _| live(key));
    }
}

/// `last`, if it answers what is `asked` and is younger than `max_age` at `now`.
fn reuse(last: &Look, asked: &Asked, now: Instant, max_age: Duration) -> Option<Reused> {
    let age = now.checked_duration_since(last.taken)?;
    (last.asked == *asked && age < max_age).then(|| Reused {
        described: last.described.clone(),
        expires_in: max_age - age,
    })
}

/// A look may be reused when the plan made from it changed nothing in Kafka and found nothing to
/// report: every later reconcile at the same generation would plan the same from it.
pub fn worth_keeping(plan: &TopicPlan) -> bool {
    plan.actions.is_empty() && plan.statuses.iter().all(|status| status.ready)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use orderpipe_api::v1alpha1::TopicStatus;

    use super::*;
    use crate::topics::plan::{ObservedTopic, TopicAction};

    const MAX_AGE: Duration = Duration::from_secs(300);

    fn asked(generation: i64) -> Asked {
        Asked {
            uid: Some("uid-1".into()),
            generation: Some(generation),
            query: TopicQuery {
                names: ["orders".to_owned()].into(),
                config_keys: Default::default(),
            },
        }
    }

    fn look(taken: Instant) -> Look {
        let orders = ObservedTopic {
            partitions: 6,
            replication_factor: 1,
            config: BTreeMap::new(),
        };
        Look {
            asked: asked(1),
            described: Described {
                topics: [("orders".to_owned(), orders)].into(),
                brokers: Some(1),
            },
            taken,
        }
    }

    fn ready_plan() -> TopicPlan {
        TopicPlan {
            actions: Vec::new(),
            statuses: vec![TopicStatus {
                name: "orders".into(),
                ready: true,
                partitions: Some(6),
                ..TopicStatus::default()
            }],
        }
    }

    #[test]
    fn a_look_is_reused_until_it_expires_and_says_when_it_does() {
        let t0 = Instant::now();
        let looks = LastLooks::new(MAX_AGE);
        looks.remember("shop/checkout", look(t0), &ready_plan());

        let later = t0 + Duration::from_secs(100);
        let reused = looks
            .reusable("shop/checkout", &asked(1), later)
            .expect("young enough");
        assert_eq!(reused.described, look(t0).described);
        assert_eq!(reused.expires_in, Duration::from_secs(200));

        assert_eq!(
            looks.reusable("shop/checkout", &asked(1), t0 + MAX_AGE),
            None
        );
    }

    #[test]
    fn a_new_generation_query_or_pipeline_looks_again() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        let looks = LastLooks::new(MAX_AGE);
        looks.remember("shop/checkout", look(t0), &ready_plan());

        assert_eq!(looks.reusable("shop/checkout", &asked(2), soon), None);
        let mut other_query = asked(1);
        other_query.query.config_keys.insert("retention.ms".into());
        assert_eq!(looks.reusable("shop/checkout", &other_query, soon), None);
        let mut recreated = asked(1);
        recreated.uid = Some("uid-2".into());
        assert_eq!(looks.reusable("shop/checkout", &recreated, soon), None);
        assert_eq!(looks.reusable("shop/other", &asked(1), soon), None);
    }

    #[test]
    fn a_look_whose_plan_acted_or_found_a_problem_is_not_kept_and_drops_the_last_one() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        let looks = LastLooks::new(MAX_AGE);

        let mut acted = ready_plan();
        acted.actions.push(TopicAction::Delete {
            name: "gone".into(),
        });
        looks.remember("shop/checkout", look(t0), &ready_plan());
        looks.remember("shop/checkout", look(t0), &acted);
        assert_eq!(looks.reusable("shop/checkout", &asked(1), soon), None);

        let mut problem = ready_plan();
        problem.statuses[0].ready = false;
        looks.remember("shop/checkout", look(t0), &problem);
        assert_eq!(looks.reusable("shop/checkout", &asked(1), soon), None);

        // Reused, then planned into an action (the topic's older owner went): looked at again.
        looks.remember("shop/checkout", look(t0), &ready_plan());
        looks.keep_if_still_worth("shop/checkout", &ready_plan());
        assert!(looks.reusable("shop/checkout", &asked(1), soon).is_some());
        looks.keep_if_still_worth("shop/checkout", &acted);
        assert_eq!(looks.reusable("shop/checkout", &asked(1), soon), None);
    }

    #[test]
    fn the_looks_of_pipelines_that_are_gone_are_dropped() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        let looks = LastLooks::new(MAX_AGE);
        looks.remember("shop/checkout", look(t0), &ready_plan());
        looks.remember("shop/gone", look(t0), &ready_plan());
        looks.retain(|key| key == "shop/checkout");
        assert!(looks.reusable("shop/checkout", &asked(1), soon).is_some());
        assert_eq!(looks.reusable("shop/gone", &asked(1), soon), None);
    }
}
