//! When the topic-cleanup finalizer stops trying. Deleting a pipeline must not hang for ever
//! because its Kafka cluster is gone or its Secrets were deleted first (a namespace deletion
//! removes them in any order): the user can skip the cleanup with an annotation, and after a
//! bounded time of failed attempts ([`GIVE_UP_AFTER`] unless the operator is told otherwise) the
//! operator releases the pipeline itself, saying which topics it left behind. Pure.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orderpipe_api::OrderPipeline;

/// `orderpipe.dev/skip-topic-cleanup: "true"` on a pipeline being deleted: release it without
/// deleting its topics.
pub const SKIP_ANNOTATION: &str = "orderpipe.dev/skip-topic-cleanup";
/// How long after the deletion request failed cleanups are retried (with backoff), unless
/// `--topic-cleanup-give-up-seconds` says otherwise.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// What the finalizer does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try to delete the topics (again).
    Attempt,
    /// The user asked to keep the topics: release the pipeline.
    Skip,
    /// Attempts failed for the give-up time: release the pipeline, topics left behind.
    Abandon,
}

/// The verdict for a pipeline being deleted; `failed` says whether the last attempt failed, and
/// failures are retried for `give_up_after` from the deletion request.
pub fn verdict(
    pipeline: &OrderPipeline,
    failed: bool,
    now: &Time,
    give_up_after: Duration,
) -> Verdict {
    let skip = pipeline
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SKIP_ANNOTATION))
        .is_some_and(|v| v == "true");
    if skip {
        return Verdict::Skip;
    }
    let deleting_for: Duration = pipeline
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|since| Duration::try_from(now.0.duration_since(since.0)).ok())
        .unwrap_or_default();
    if failed && deleting_for >= give_up_after {
        Verdict::Abandon
    } else {
        Verdict::Attempt
    }
}

/// Names of the topics the finalizer would delete (deletion policy Delete in the last status).
pub fn left_behind(pipeline: &OrderPipeline) -> Vec<String> {
    super::LastStatus::of(pipeline)
        .deletable()
        .map(|t| t.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use orderpipe_api::v1alpha1::{DeletionPolicy, OrderPipelineStatus, TopicStatus};

    use super::*;

    fn deleting(since_secs: i64, annotation: Option<&str>) -> (OrderPipeline, Time) {
        let mut p = OrderPipeline::test("shop");
        let start = Timestamp::from_second(1_800_000_000).expect("valid");
        p.metadata.deletion_timestamp = Some(Time(start));
        if let Some(value) = annotation {
            p.metadata.annotations = Some([(SKIP_ANNOTATION.to_owned(), value.to_owned())].into());
        }
        let now = start
            .checked_add(SignedDuration::from_secs(since_secs))
            .expect("in range");
        (p, Time(now))
    }

    #[test]
    fn failures_are_retried_until_the_give_up_time_then_abandoned() {
        let (p, now) = deleting(599, None);
        assert_eq!(verdict(&p, true, &now, GIVE_UP_AFTER), Verdict::Attempt);
        let (p, now) = deleting(600, None);
        assert_eq!(verdict(&p, true, &now, GIVE_UP_AFTER), Verdict::Abandon);
        assert_eq!(
            verdict(&p, false, &now, GIVE_UP_AFTER),
            Verdict::Attempt,
            "a first attempt after a long wait still runs"
        );
    }

    #[test]
    fn the_annotation_skips_at_once_and_only_when_true() {
        let (p, now) = deleting(0, Some("true"));
        assert_eq!(verdict(&p, false, &now, GIVE_UP_AFTER), Verdict::Skip);
        let (p, now) = deleting(0, Some("yes"));
        assert_eq!(verdict(&p, false, &now, GIVE_UP_AFTER), Verdict::Attempt);
    }

    #[test]
    fn left_behind_lists_the_delete_topics_of_the_last_status() {
        let mut p = OrderPipeline::test("shop");
        p.status = Some(OrderPipelineStatus {
            topics: vec![
                TopicStatus {
                    name: "orders".into(),
                    deletion_policy: Some(DeletionPolicy::Retain),
                    ..TopicStatus::default()
                },
                TopicStatus {
                    name: "orders.dlq".into(),
                    deletion_policy: Some(DeletionPolicy::Delete),
                    ..TopicStatus::default()
                },
            ],
            ..OrderPipelineStatus::default()
        });
        assert_eq!(left_behind(&p), ["orders.dlq"]);
    }
}
