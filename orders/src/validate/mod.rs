//! The validate stage: bytes of an `OrderPlaced` → validated, rejected, duplicate or dead-letter.
//!
//! - Bytes that are not a JSON object (null, not UTF-8, not JSON, JSON array/string/number) cannot be
//!   judged as an order: dead-letter with the original bytes.
//! - A JSON object that breaks rules: `RejectedOrder` listing every violated rule.
//! - A valid order whose id was validated before (within the dedup window): dropped as `Duplicate` if
//!   the content is the same, rejected with `order_id_reused` if it differs.
//! - Otherwise: `ValidatedOrder`, plus the key's new dedup record for the changelog.
//!
//! This module must not do I/O or read the clock; time is the input record's timestamp.

mod dedup;
mod rules;

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use dedup::{Fingerprint, SeenOrder};

use crate::dead_letter::{DeadLetterReason, Failure, Undecodable, decode_payload};
use crate::decision::{Decision, Emit, InputRecord, Output, Processor, Stage};
use crate::document::Json;
use crate::records::{
    EventDetails, EventType, OriginalOrder, Reason, RejectedOrder, Rule, StatusEvent,
    ValidatedOrder,
};
use rules::CheckedOrder;

/// Tunables of the validate stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatePolicy {
    /// Most items an order may have (rule `items_max`).
    pub max_items: usize,
    /// How long a validated orderId suppresses duplicates, counted in record time.
    pub dedup_window: Duration,
}

impl Default for ValidatePolicy {
    fn default() -> Self {
        Self {
            max_items: 500,
            // A week covers producer retries, replays after incidents and batch re-submissions.
            // The worker sets it from the contract (`DEDUP_WINDOW`), which also sizes the state
            // topic's retention.ms.
            dedup_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What the validate stage decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidateOutcome {
    Validated,
    /// Same order already validated within the dedup window; nothing produced.
    Duplicate,
    Rejected {
        reasons: Vec<Reason>,
    },
    DeadLettered {
        reason: DeadLetterReason,
    },
}

impl ValidateOutcome {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Validated => "validated",
            Self::Duplicate => "duplicate",
            Self::Rejected { .. } => "rejected",
            Self::DeadLettered { .. } => "dead_lettered",
        }
    }
}

/// An order accepted by [`Validator::admit`]: what an HTTP front door needs to key and deduplicate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub order_id: String,
    /// The same content fingerprint the stage's dedup record holds ([`SeenOrder::fingerprint`]).
    pub fingerprint: Fingerprint,
}

/// Why [`Validator::admit`] refused a submission: the stage would dead-letter it (`Undecodable`,
/// with the dead-letter reason code) or reject it (every violated rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inadmissible {
    Undecodable {
        reason: DeadLetterReason,
        message: String,
    },
    Rejected {
        order_id: Option<String>,
        reasons: Vec<Reason>,
    },
}

/// The validate stage.
#[derive(Debug, Clone, Default)]
pub struct Validator {
    policy: ValidatePolicy,
}

/// Shorthand for the validate stage's decision.
pub type ValidateDecision = Decision<ValidateOutcome, SeenOrder>;

impl Validator {
    pub fn new(policy: ValidatePolicy) -> Self {
        Self { policy }
    }

    /// Judges an order submitted outside Kafka (the intake gateway) by exactly the rules `process`
    /// applies, before it is produced keyed by its orderId. The key rule cannot fail here: the
    /// record's key will be the orderId read from the payload. Dedup is not judged: that needs the
    /// stage's state, and the stage still judges the produced record.
    pub fn admit(&self, payload: &[u8]) -> Result<Admitted, Inadmissible> {
        let input = InputRecord {
            key: None,
            payload: Some(payload),
            origin: crate::decision::Origin {
                topic: "",
                partition: 0,
                offset: 0,
            },
            timestamp: DateTime::<Utc>::UNIX_EPOCH,
        };
        let undecodable = |failure: Undecodable| Inadmissible::Undecodable {
            reason: failure.reason,
            message: failure.message,
        };
        let object = match decode_payload::<Json<'_>>(&input) {
            Ok(Json::Object(object)) => object,
            Ok(_) => {
                return Err(Inadmissible::Undecodable {
                    reason: DeadLetterReason::NotAnObject,
                    message: "an order must be a JSON object".to_owned(),
                });
            }
            Err(failure) => return Err(undecodable(failure)),
        };
        let order_id = object.get("orderId").and_then(Json::as_str);
        match rules::check_order(&object, order_id.map(str::as_bytes), self.policy.max_items) {
            Ok(checked) => Ok(Admitted {
                fingerprint: SeenOrder::new(&checked.order, input.timestamp).fingerprint,
                order_id: checked.order.order_id,
            }),
            Err(reasons) => Err(Inadmissible::Rejected {
                order_id: order_id
                    .filter(|id| crate::ids::is_order_id(id))
                    .map(str::to_owned),
                reasons,
            }),
        }
    }

    fn dead_letter(input: &InputRecord<'_>, failure: Undecodable) -> ValidateDecision {
        let emit = Failure {
            stage: Stage::Validate,
            reason: failure.reason,
            field: None,
            message: &failure.message,
        }
        .dead_letter(input);
        Decision::stateless(
            ValidateOutcome::DeadLettered {
                reason: failure.reason,
            },
            vec![emit],
        )
    }

    /// Rejects `input`, quoting its payload: a JSON object, since only objects are judged.
    fn reject(
        input: &InputRecord<'_>,
        order_id: Option<String>,
        reasons: Vec<Reason>,
    ) -> ValidateDecision {
        // The payload already parsed as a JSON object; this second parse only keeps its text.
        let original = match serde_json::from_slice(input.payload.unwrap_or_default()) {
            Ok(raw) => OriginalOrder(raw),
            Err(error) => {
                let failure = Undecodable {
                    reason: DeadLetterReason::NotJson,
                    message: error.to_string(),
                };
                return Self::dead_letter(input, failure);
            }
        };
        let (reasons, reasons_omitted) = RejectedOrder::bounded_reasons(reasons);
        let rejected = RejectedOrder {
            order_id,
            reasons,
            reasons_omitted,
            order: original,
            rejected_at: input.timestamp,
        };
        // Keyed like the input (not by orderId, which may be missing or malformed) so a rejection
        // stays in the partition of the submission it answers.
        let emit = Emit {
            output: Output::Rejected,
            key: input.key.map(<[u8]>::to_vec),
            payload: crate::json::encode(&rejected),
            headers: Vec::new(),
        };
        let outcome = ValidateOutcome::Rejected {
            reasons: rejected.reasons,
        };
        Decision::stateless(outcome, vec![emit])
    }

    fn accept(
        &self,
        input: &InputRecord<'_>,
        checked: CheckedOrder,
        seen: Option<&SeenOrder>,
    ) -> ValidateDecision {
        let candidate = SeenOrder::new(&checked.order, input.timestamp);
        match seen.filter(|seen| seen.is_live(input.timestamp, self.policy.dedup_window)) {
            Some(seen) if seen.fingerprint == candidate.fingerprint => {
                Decision::stateless(ValidateOutcome::Duplicate, Vec::new())
            }
            Some(_) => {
                let reason = Reason {
                    field: "orderId".to_owned(),
                    rule: Rule::OrderIdReused,
                    message: "was already validated with different content".to_owned(),
                };
                Self::reject(input, Some(checked.order.order_id), vec![reason])
            }
            None => {
                let CheckedOrder {
                    order,
                    subtotal_minor,
                    currency_exponent,
                } = checked;
                let key = order.order_id.clone().into_bytes();
                let validated = ValidatedOrder {
                    shipping_minor: order.shipping_minor.unwrap_or(0),
                    discount_minor: order.discount_minor.unwrap_or(0),
                    order_id: order.order_id,
                    customer_id: order.customer_id,
                    created_at: order.created_at,
                    currency: order.currency,
                    currency_exponent,
                    items: order.items,
                    subtotal_minor,
                    total_minor: order.total_minor,
                    contact: order.contact,
                    validated_at: input.timestamp,
                };
                let event = validated_event(&validated);
                let emits = vec![
                    Emit::json(Output::Validated, key.clone(), &validated),
                    Emit::json(Output::StatusEvent, key.clone(), &event),
                ];
                Decision::with_state(ValidateOutcome::Validated, emits, &key, candidate)
            }
        }
    }
}

/// The status event announcing a validated order. Its eventId is derived from the orderId, so a
/// re-processed record (after a crash) yields the same event, which the status stage ignores.
/// Rejections emit no event: a rejected submission never enters the life cycle, and a corrected
/// re-submission under the same orderId must still be able to start it.
fn validated_event(order: &ValidatedOrder) -> StatusEvent {
    StatusEvent {
        order_id: order.order_id.clone(),
        event_id: format!("validate:{}", order.order_id),
        kind: EventType::Validated,
        at: order.validated_at,
        details: EventDetails::default(),
    }
}

impl Processor for Validator {
    type Outcome = ValidateOutcome;
    type State = SeenOrder;

    fn stage(&self) -> Stage {
        Stage::Validate
    }

    /// A dedup record older than the window is ignored by `process`, so it can go.
    fn is_expired(&self, seen: &SeenOrder, now: DateTime<Utc>) -> bool {
        !seen.is_live(now, self.policy.dedup_window)
    }

    /// `seen` is the dedup record the runtime holds for the input's key, if any.
    fn process(&self, input: &InputRecord<'_>, seen: Option<&SeenOrder>) -> ValidateDecision {
        let object = match decode_payload::<Json<'_>>(input) {
            Ok(Json::Object(object)) => object,
            Ok(_) => {
                let failure = Undecodable {
                    reason: DeadLetterReason::NotAnObject,
                    message: "an order must be a JSON object".to_owned(),
                };
                return Self::dead_letter(input, failure);
            }
            Err(failure) => return Self::dead_letter(input, failure),
        };
        match rules::check_order(&object, input.key, self.policy.max_items) {
            Ok(checked) => self.accept(input, checked, seen),
            Err(reasons) => {
                let order_id = object
                    .get("orderId")
                    .and_then(Json::as_str)
                    .filter(|id| crate::ids::is_order_id(id))
                    .map(str::to_owned);
                Self::reject(input, order_id, reasons)
            }
        }
    }
}
