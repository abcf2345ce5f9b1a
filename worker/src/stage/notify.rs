//! The notify stage: plan a notification (pure), POST it, and retry transient failures with the
//! pure policy's backoff, blocking only this order's later notifications (the POST is a
//! [`Decision`] the partition worker keeps in flight while it goes on with other orders). The audit record (and, after a
//! permanent failure or exhausted retries, the dead letter) is produced in the transaction that
//! commits the offset; a crash before that commit repeats the POST with the same idempotency key.
//! This module must not touch Kafka; it must not sleep past a stop request.

use std::sync::Arc;

use chrono::Utc;
use orderpipe_api::contract::NotifyConfig;
use orderpipe_orders::notify::RetryPolicy;
use orderpipe_orders::notify::{AttemptDecision, HttpOutcome, Notifier, NotifyPlan, NotifyPolicy};
use orderpipe_orders::{Stage, StateDecodeError};
use tokio_util::sync::CancellationToken;

use super::webhook::Webhook;
use super::{Decision, Handled, Handling, KeyStates, Outcome, StageHandler};
use crate::metrics::Metrics;
use crate::record::SourceRecord;

/// The notify stage's tunables from the worker contract.
pub fn policy(config: &NotifyConfig) -> NotifyPolicy {
    NotifyPolicy {
        channel: config.channel.clone(),
        retry: RetryPolicy {
            max_attempts: config.max_attempts,
            base_delay: config.initial_backoff,
            max_delay: config.max_backoff,
            ..RetryPolicy::default()
        },
        ..NotifyPolicy::default()
    }
}

/// The notify stage over a [`Webhook`].
#[derive(Debug)]
pub struct NotifyStage<W> {
    /// Shared with the dispatches in flight, which outlive the call that started them.
    dispatcher: Arc<Dispatcher<W>>,
}

impl<W: Webhook> NotifyStage<W> {
    pub fn new(policy: NotifyPolicy, webhook: W, metrics: Arc<Metrics>) -> Self {
        Self {
            dispatcher: Arc::new(Dispatcher {
                notifier: Notifier::new(policy),
                webhook,
                metrics,
            }),
        }
    }
}

/// POSTs planned notifications, with retries.
#[derive(Debug)]
struct Dispatcher<W> {
    notifier: Notifier,
    webhook: W,
    metrics: Arc<Metrics>,
}

impl<W: Webhook> Dispatcher<W> {
    /// The handled record once the webhook took the notification or the policy gave up; `None`
    /// if stopped during a retry wait.
    async fn dispatch(
        &self,
        dispatch: &orderpipe_orders::notify::Dispatch,
        stop: &CancellationToken,
    ) -> Option<Handled> {
        let mut attempt: u32 = 1;
        loop {
            let outcome = self
                .webhook
                .post(dispatch.body(), &dispatch.http_headers())
                .await;
            self.metrics.webhook_request(attempt_label(&outcome));
            let decision = self.notifier.after_attempt(
                dispatch,
                attempt,
                &outcome,
                Utc::now(),
                rand::random(),
            );
            match decision {
                AttemptDecision::Delivered { audit } => {
                    return Some(Handled::emitting(Outcome::PROCESSED, vec![audit]));
                }
                AttemptDecision::GiveUp {
                    reason,
                    audit,
                    dead_letter,
                } => {
                    return Some(Handled::emitting(
                        Outcome::dead_lettered(reason),
                        vec![audit, dead_letter],
                    ));
                }
                AttemptDecision::Retry { after } => {
                    self.metrics.retry();
                    tracing::debug!(
                        key = dispatch.idempotency_key(),
                        attempt,
                        ?after,
                        "webhook failed transiently; retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        () = stop.cancelled() => return None,
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

/// Bounded label of one webhook attempt.
fn attempt_label(outcome: &HttpOutcome) -> &'static str {
    match outcome {
        HttpOutcome::Response { status, .. } => match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            429 => "429",
            400..=499 => "4xx",
            _ => "5xx",
        },
        HttpOutcome::Timeout => "timeout",
        HttpOutcome::ConnectionFailed => "connection_failed",
    }
}

impl<W: Webhook> StageHandler for NotifyStage<W> {
    /// Notifications of one order are independent messages; nothing is remembered per key.
    type State = ();

    fn stage(&self) -> Stage {
        Stage::Notify
    }

    fn decode_state(&self, _payload: &[u8]) -> Result<(), StateDecodeError> {
        Ok(())
    }

    /// Never called: without states a re-shard moves nothing.
    fn encode_state(&self, (): &()) -> Vec<u8> {
        Vec::new()
    }

    async fn handle<'a>(
        &'a self,
        record: &'a SourceRecord,
        topic: &'a str,
        _states: &'a mut KeyStates<()>,
        stop: &'a CancellationToken,
    ) -> Handling {
        match self.dispatcher.notifier.plan(&record.as_input(topic)) {
            NotifyPlan::Skip { .. } => {
                Handling::Done(Handled::emitting(Outcome::IGNORED, Vec::new()))
            }
            NotifyPlan::DeadLetter {
                reason,
                dead_letter,
            } => Handling::Done(Handled::emitting(
                Outcome::dead_lettered(reason),
                vec![dead_letter],
            )),
            // The POST (and its retries) need nothing of the partition: records of other
            // orders go on meanwhile.
            NotifyPlan::Dispatch(dispatch) => {
                let dispatcher = Arc::clone(&self.dispatcher);
                let stop = stop.clone();
                Handling::Waiting(Decision::new(async move {
                    dispatcher.dispatch(&dispatch, &stop).await
                }))
            }
        }
    }
}
