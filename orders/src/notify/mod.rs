//! The notify stage: which transitions notify, the webhook request, and what to do after each attempt.
//!
//! Flow, driven by the runtime: [`Notifier::plan`] turns a `StatusChanged` record into a [`Dispatch`]
//! (or a skip, or a dead-letter); the runtime POSTs [`Dispatch::body`] with
//! [`Dispatch::http_headers`], then asks [`Notifier::after_attempt`] whether the dispatch is done,
//! must wait and retry (blocking the partition, which keeps per-order order), or is given up. Done and
//! given-up dispatches return the records to produce in the transaction that commits the input offset.
//!
//! Exactly-once ends at Kafka: a crash after the POST and before the commit repeats the POST, with
//! the same `Idempotency-Key` (`<orderId>:<version>:<channel>`), so a receiver that honours the key
//! acts once. No quarantine here: notifications of one order are independent messages, and each
//! carries its version, so a receiver can see a gap left by a dead-lettered one.
//! This module must not send requests, sleep or draw random numbers.

mod retry;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use retry::{Classification, HttpOutcome, RetryPolicy, classify, parse_retry_after};

use crate::dead_letter::{DeadLetterReason, Failure, Undecodable, decode_payload};
use crate::decision::{Emit, Header, InputRecord, Origin, Output, Stage};
use crate::headers;
use crate::ids;
use crate::records::{
    DispatchResult, Notification, NotificationDispatched, OrderState, StatusChanged,
};

/// Tunables of the notify stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyPolicy {
    /// Target states whose transitions notify.
    pub notify_on: BTreeSet<OrderState>,
    /// Channel name, part of the idempotency key (one webhook endpoint per channel).
    pub channel: String,
    pub retry: RetryPolicy,
}

impl NotifyPolicy {
    /// The states a customer-facing shop typically tells its customer about. Payment states are left
    /// out: the payment provider already informs the customer, and a failed payment is often retried.
    pub const DEFAULT_NOTIFY_ON: &[OrderState] = &[
        OrderState::Validated,
        OrderState::Rejected,
        OrderState::Shipped,
        OrderState::Delivered,
        OrderState::Cancelled,
        OrderState::Refunded,
    ];
}

impl Default for NotifyPolicy {
    fn default() -> Self {
        Self {
            notify_on: Self::DEFAULT_NOTIFY_ON.iter().copied().collect(),
            channel: "webhook".to_owned(),
            retry: RetryPolicy::default(),
        }
    }
}

/// The idempotency key of a notification: `<orderId>:<version>:<channel>`. Unique per transition
/// and channel, identical across redeliveries of the same `StatusChanged`.
pub fn idempotency_key(order_id: &str, version: u64, channel: &str) -> String {
    format!("{order_id}:{version}:{channel}")
}

/// What to do with one `StatusChanged` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyPlan {
    /// The transition is not configured to notify; commit and move on.
    Skip { to: OrderState },
    /// POST it. Boxed: it owns a copy of the input record and is much larger than the other variants.
    Dispatch(Box<Dispatch>),
    /// The record is unreadable; produce this and commit.
    DeadLetter {
        reason: DeadLetterReason,
        dead_letter: Emit,
    },
}

/// A notification to deliver, owning a copy of its input so the runtime can retry across polls.
#[derive(Clone, PartialEq, Eq)]
pub struct Dispatch {
    notification: Notification,
    body: Vec<u8>,
    source: OwnedInput,
}

impl Dispatch {
    /// The notification being delivered.
    pub fn notification(&self) -> &Notification {
        &self.notification
    }

    /// The `Idempotency-Key` header value.
    pub fn idempotency_key(&self) -> &str {
        &self.notification.notification_id
    }

    /// The JSON request body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Headers the POST must carry.
    pub fn http_headers(&self) -> [(&'static str, &str); 2] {
        [
            ("Content-Type", "application/json"),
            (headers::IDEMPOTENCY_KEY, self.idempotency_key()),
        ]
    }

    fn audit(
        &self,
        result: DispatchResult,
        attempts: u32,
        http_status: Option<u16>,
        now: DateTime<Utc>,
    ) -> Emit {
        let notification = &self.notification;
        let record = NotificationDispatched {
            idempotency_key: notification.notification_id.clone(),
            order_id: notification.order_id.clone(),
            version: notification.version,
            channel: notification.channel.clone(),
            status: notification.status,
            result,
            attempts,
            http_status,
            finished_at: now,
        };
        Emit::json(
            Output::NotificationAudit,
            notification.order_id.as_bytes(),
            &record,
        )
    }
}

// By hand: keeps the body (already free of contact data) out of logs, which only need the key.
impl fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("idempotency_key", &self.idempotency_key())
            .field("body_bytes", &self.body.len())
            .field("origin", &self.source.as_input().origin)
            .finish()
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptDecision {
    /// Delivered: produce `audit` and commit.
    Delivered { audit: Emit },
    /// Wait `after`, then attempt again (the partition stays blocked).
    Retry { after: Duration },
    /// Give up: produce `audit` and `dead_letter` and commit.
    GiveUp {
        reason: DeadLetterReason,
        audit: Emit,
        dead_letter: Emit,
    },
}

/// The notify stage.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    policy: NotifyPolicy,
}

impl Notifier {
    pub fn new(policy: NotifyPolicy) -> Self {
        Self { policy }
    }

    pub fn policy(&self) -> &NotifyPolicy {
        &self.policy
    }

    /// Decides whether and what to notify for one `StatusChanged` record.
    pub fn plan(&self, input: &InputRecord<'_>) -> NotifyPlan {
        let decoded = decode_payload::<StatusChanged>(input).and_then(|changed| {
            // What the status stage writes always passes; anything else could make the
            // notification, its Idempotency-Key header and the audit record arbitrarily large.
            let invalid = |message: &str| Undecodable {
                reason: DeadLetterReason::InvalidRecord,
                message: message.to_owned(),
            };
            if !ids::is_order_id(&changed.order_id) {
                return Err(invalid(&format!(
                    "orderId {}",
                    ids::ORDER_ID_FORMAT_MESSAGE
                )));
            }
            if !ids::is_event_id(&changed.event_id) {
                return Err(invalid(&format!(
                    "eventId {}",
                    ids::EVENT_ID_FORMAT_MESSAGE
                )));
            }
            if let Some(field) = changed.details.overlong_text() {
                let limit = ids::EVENT_DETAIL_MAX_LEN;
                return Err(invalid(&format!("{field} must be at most {limit} bytes")));
            }
            Ok(changed)
        });
        let changed = match decoded {
            Ok(changed) => changed,
            Err(failure) => {
                let dead_letter = Failure {
                    stage: Stage::Notify,
                    reason: failure.reason,
                    field: None,
                    message: &failure.message,
                }
                .dead_letter(input);
                return NotifyPlan::DeadLetter {
                    reason: failure.reason,
                    dead_letter,
                };
            }
        };
        if !self.policy.notify_on.contains(&changed.to) {
            return NotifyPlan::Skip { to: changed.to };
        }
        let channel = self.policy.channel.clone();
        let notification = Notification {
            notification_id: idempotency_key(&changed.order_id, changed.version, &channel),
            order_id: changed.order_id,
            version: changed.version,
            channel,
            status: changed.to,
            previous_status: changed.from,
            occurred_at: changed.at,
            event_id: changed.event_id,
            details: changed.details,
        };
        NotifyPlan::Dispatch(Box::new(Dispatch {
            body: crate::json::encode(&notification),
            notification,
            source: OwnedInput::copy(input),
        }))
    }

    /// Judges attempt number `attempt` (1-based) of `dispatch`. `now` is the wall-clock time the
    /// runtime observed the outcome (audit time and HTTP-date `Retry-After`); `jitter_sample` is a
    /// uniform draw from [0, 1) for the backoff.
    pub fn after_attempt(
        &self,
        dispatch: &Dispatch,
        attempt: u32,
        outcome: &HttpOutcome,
        now: DateTime<Utc>,
        jitter_sample: f64,
    ) -> AttemptDecision {
        let http_status = match outcome {
            HttpOutcome::Response { status, .. } => Some(*status),
            HttpOutcome::Timeout | HttpOutcome::ConnectionFailed => None,
        };
        let (reason, result, message) = match classify(outcome, now) {
            Classification::Delivered => {
                let audit = dispatch.audit(DispatchResult::Delivered, attempt, http_status, now);
                return AttemptDecision::Delivered { audit };
            }
            Classification::Retryable { retry_after }
                if attempt < self.policy.retry.max_attempts =>
            {
                let after = self.policy.retry.delay(attempt, retry_after, jitter_sample);
                return AttemptDecision::Retry { after };
            }
            Classification::Retryable { .. } => (
                DeadLetterReason::RetriesExhausted,
                DispatchResult::RetriesExhausted,
                format!("webhook still failing after {attempt} attempts"),
            ),
            Classification::Permanent => (
                DeadLetterReason::WebhookRejected,
                DispatchResult::Rejected,
                "webhook answered with a permanent failure".to_owned(),
            ),
        };
        let mut dead_letter = Failure {
            stage: Stage::Notify,
            reason,
            field: None,
            message: &message,
        }
        .dead_letter(&dispatch.source.as_input());
        dead_letter
            .headers
            .push(Header::new(headers::NOTIFY_ATTEMPTS, attempt.to_string()));
        if let Some(status) = http_status {
            dead_letter
                .headers
                .push(Header::new(headers::NOTIFY_HTTP_STATUS, status.to_string()));
        }
        AttemptDecision::GiveUp {
            reason,
            audit: dispatch.audit(result, attempt, http_status, now),
            dead_letter,
        }
    }
}

/// An owned copy of an [`InputRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnedInput {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: DateTime<Utc>,
}

impl OwnedInput {
    fn copy(input: &InputRecord<'_>) -> Self {
        Self {
            key: input.key.map(<[u8]>::to_vec),
            payload: input.payload.map(<[u8]>::to_vec),
            topic: input.origin.topic.to_owned(),
            partition: input.origin.partition,
            offset: input.origin.offset,
            timestamp: input.timestamp,
        }
    }

    fn as_input(&self) -> InputRecord<'_> {
        InputRecord {
            key: self.key.as_deref(),
            payload: self.payload.as_deref(),
            origin: Origin {
                topic: &self.topic,
                partition: self.partition,
                offset: self.offset,
            },
            timestamp: self.timestamp,
        }
    }
}
