//! The status stage: a state machine per order, with idempotency and key quarantine.
//!
//! For each event of an order (records keyed by orderId, so one order's events arrive in order):
//! 1. an eventId among the order's recently accepted ones is ignored (a replay changes nothing);
//! 2. while the order is quarantined, events go to the dead-letter topic (`key_quarantined`), except
//!    `QuarantineReleased`, which lifts the quarantine;
//! 3. a transition outside [`transitions::TRANSITIONS`] goes to the dead-letter topic
//!    (`illegal_transition`) and quarantines the order;
//! 4. otherwise the order moves: `StatusChanged` with version + 1, and the new state for the changelog.
//!
//! Quarantine: any dead-lettered record that has a key quarantines that key, because its later events
//! would otherwise be judged against a state that misses the dead-lettered one and could overtake it
//! silently (e.g. `Delivered` accepted while the `Shipped` before it sits in the dead-letter topic).
//! Everything after it follows it to the dead-letter topic, in order, until an operator repairs the
//! order and sends `QuarantineReleased`. This module must not do I/O or read the clock.

mod state;
pub mod transitions;

pub use state::{OrderStatusState, Quarantine, RecentEventIds};

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::dead_letter::{DeadLetterReason, Failure, Undecodable, decode_payload};
use crate::decision::{Decision, Emit, InputRecord, Output, Processor, Stage};
use crate::ids;
use crate::records::{OrderState, StatusChanged, StatusEvent};

/// Tunables of the status stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPolicy {
    /// How many accepted eventIds each order remembers for idempotency. An order has few transitions
    /// (the longest path through the table with one payment failure has 6), so the default remembers
    /// every event of all but pathological orders while bounding the state's size.
    pub recent_event_ids: usize,
    /// How long, in record time since its last change, the state of a *finished* order is kept:
    /// one in a terminal state (`Rejected`, `Cancelled`, `Refunded`) or `Delivered`, and not
    /// quarantined. After that the order is forgotten (and its changelog record deleted), so the
    /// stage's state is bounded by the orders of one window, not by every order ever seen. An event
    /// for a forgotten order is judged as for a new one: a replayed `Delivered` becomes an illegal
    /// transition from `Placed`. The default covers a 30-day return window.
    pub forget_finished_after: Duration,
}

impl Default for StatusPolicy {
    fn default() -> Self {
        Self {
            recent_event_ids: 32,
            forget_finished_after: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl StatusPolicy {
    /// Whether the order `state` describes is finished and untouched for the whole window at `now`.
    fn is_forgotten(&self, state: &OrderStatusState, now: DateTime<Utc>) -> bool {
        let finished =
            state.state == OrderState::Delivered || transitions::is_terminal(state.state);
        let idle = now
            .signed_duration_since(state.updated_at)
            .to_std()
            .is_ok_and(|idle| idle >= self.forget_finished_after);
        finished && state.quarantine.is_none() && idle
    }
}

/// What the status stage decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusOutcome {
    /// The order moved; `StatusChanged` produced.
    Transitioned {
        from: OrderState,
        to: OrderState,
        version: u64,
    },
    /// `QuarantineReleased` lifted the order's quarantine.
    Released,
    /// The eventId was already accepted; nothing produced.
    DuplicateEvent,
    /// `QuarantineReleased` for an order that is not quarantined; nothing produced.
    NotQuarantined,
    /// Dead-lettered; `quarantined` says whether this record started the order's quarantine.
    DeadLettered {
        reason: DeadLetterReason,
        quarantined: bool,
    },
}

impl StatusOutcome {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Transitioned { .. } => "transitioned",
            Self::Released => "released",
            Self::DuplicateEvent => "duplicate_event",
            Self::NotQuarantined => "not_quarantined",
            Self::DeadLettered { .. } => "dead_lettered",
        }
    }
}

/// Shorthand for the status stage's decision.
pub type StatusDecision = Decision<StatusOutcome, OrderStatusState>;

/// The status stage.
#[derive(Debug, Clone, Default)]
pub struct StatusMachine {
    policy: StatusPolicy,
}

/// A dead-letter cause found while judging an event.
struct Refusal {
    reason: DeadLetterReason,
    field: Option<&'static str>,
    message: String,
}

impl From<Undecodable> for Refusal {
    fn from(failure: Undecodable) -> Self {
        Self {
            reason: failure.reason,
            field: None,
            message: failure.message,
        }
    }
}

impl StatusMachine {
    pub fn new(policy: StatusPolicy) -> Self {
        Self { policy }
    }

    /// Dead-letters `input` and quarantines its key unless it already is (the first cause is kept,
    /// it is the one to repair).
    fn refuse(
        input: &InputRecord<'_>,
        current: Option<&OrderStatusState>,
        event_id: Option<&str>,
        refusal: Refusal,
    ) -> StatusDecision {
        let dead_letter = Failure {
            stage: Stage::Status,
            reason: refusal.reason,
            field: refusal.field,
            message: &refusal.message,
        }
        .dead_letter(input);
        let already_quarantined = current.is_some_and(|state| state.quarantine.is_some());
        let outcome = |quarantined| StatusOutcome::DeadLettered {
            reason: refusal.reason,
            quarantined,
        };
        match input.key {
            Some(key) if !already_quarantined => {
                let mut next = current
                    .cloned()
                    .unwrap_or_else(|| OrderStatusState::initial(input.timestamp));
                next.quarantine = Some(Box::new(Quarantine::new(
                    refusal.reason,
                    event_id,
                    &input.origin,
                    input.timestamp,
                )));
                next.updated_at = input.timestamp;
                Decision::with_state(outcome(true), vec![dead_letter], key, next)
            }
            // No key: the record belongs to no order, so there is nothing to quarantine.
            _ => Decision::stateless(outcome(false), vec![dead_letter]),
        }
    }

    /// Decodes the event and checks what serde cannot: id formats and key = orderId. Returns the key
    /// with the event because a keyless record belongs to no order.
    fn decode<'a>(input: &InputRecord<'a>) -> Result<(&'a [u8], StatusEvent), Refusal> {
        let event: StatusEvent = decode_payload(input)?;
        let invalid = |field, message: &str| Refusal {
            reason: DeadLetterReason::InvalidRecord,
            field: Some(field),
            message: message.to_owned(),
        };
        if !ids::is_order_id(&event.order_id) {
            return Err(invalid("orderId", ids::ORDER_ID_FORMAT_MESSAGE));
        }
        if !ids::is_event_id(&event.event_id) {
            return Err(invalid("eventId", ids::EVENT_ID_FORMAT_MESSAGE));
        }
        if event.details.amount_minor.is_some_and(|amount| amount < 0) {
            return Err(invalid("amountMinor", "must be 0 or more"));
        }
        if let Some(field) = event.details.overlong_text() {
            let message = format!("must be at most {} bytes", ids::EVENT_DETAIL_MAX_LEN);
            return Err(invalid(field, &message));
        }
        match input.key {
            Some(key) if key == event.order_id.as_bytes() => Ok((key, event)),
            Some(_) => Err(Refusal {
                reason: DeadLetterReason::KeyMismatch,
                field: Some("orderId"),
                message: "the Kafka record key differs from orderId".to_owned(),
            }),
            None => Err(Refusal {
                reason: DeadLetterReason::KeyMissing,
                field: None,
                message: "the Kafka record has no key".to_owned(),
            }),
        }
    }

    fn apply(
        &self,
        input: &InputRecord<'_>,
        key: &[u8],
        current: Option<&OrderStatusState>,
        event: StatusEvent,
    ) -> StatusDecision {
        let state = current
            .cloned()
            .unwrap_or_else(|| OrderStatusState::initial(input.timestamp));
        // Idempotency first: replaying an accepted event is harmless even while quarantined.
        if state.has_seen(&event.event_id) {
            return Decision::stateless(StatusOutcome::DuplicateEvent, Vec::new());
        }
        let quarantined = state.quarantine.is_some();
        let target = match (event.kind.target_state(), quarantined) {
            (None, true) => return self.release(input, key, state, &event.event_id),
            (None, false) => return Decision::stateless(StatusOutcome::NotQuarantined, Vec::new()),
            (Some(_), true) => {
                let refusal = Refusal {
                    reason: DeadLetterReason::KeyQuarantined,
                    field: None,
                    message: "an earlier event of this order was dead-lettered; send \
                              QuarantineReleased after repairing it"
                        .to_owned(),
                };
                return Self::refuse(input, current, Some(&event.event_id), refusal);
            }
            (Some(target), false) => target,
        };
        if !transitions::is_allowed(state.state, target) {
            let refusal = Refusal {
                reason: DeadLetterReason::IllegalTransition,
                field: Some("type"),
                message: format!(
                    "transition from {} to {} is not allowed",
                    state.state, target
                ),
            };
            return Self::refuse(input, current, Some(&event.event_id), refusal);
        }
        self.transition(input, key, state, event, target)
    }

    fn release(
        &self,
        input: &InputRecord<'_>,
        key: &[u8],
        mut state: OrderStatusState,
        event_id: &str,
    ) -> StatusDecision {
        state.quarantine = None;
        state.remember(event_id, self.policy.recent_event_ids);
        state.updated_at = input.timestamp;
        Decision::with_state(StatusOutcome::Released, Vec::new(), key, state)
    }

    fn transition(
        &self,
        input: &InputRecord<'_>,
        key: &[u8],
        mut state: OrderStatusState,
        event: StatusEvent,
        target: OrderState,
    ) -> StatusDecision {
        let from = state.state;
        let version = state.version.saturating_add(1);
        state.state = target;
        state.version = version;
        state.remember(&event.event_id, self.policy.recent_event_ids);
        state.updated_at = input.timestamp;
        let changed = StatusChanged {
            order_id: event.order_id,
            from,
            to: target,
            version,
            at: event.at,
            event_id: event.event_id,
            details: event.details,
        };
        let emit = Emit::json(Output::StatusChanged, key, &changed);
        let outcome = StatusOutcome::Transitioned {
            from,
            to: target,
            version,
        };
        Decision::with_state(outcome, vec![emit], key, state)
    }
}

impl Processor for StatusMachine {
    type Outcome = StatusOutcome;
    type State = OrderStatusState;

    fn stage(&self) -> Stage {
        Stage::Status
    }

    /// A finished order idle for the policy's window; `process` treats it like an unknown one.
    fn is_expired(&self, state: &OrderStatusState, now: DateTime<Utc>) -> bool {
        self.policy.is_forgotten(state, now)
    }

    /// `state` is the state the runtime holds for the input's key, if any.
    fn process(&self, input: &InputRecord<'_>, state: Option<&OrderStatusState>) -> StatusDecision {
        let state = state.filter(|state| !self.is_expired(state, input.timestamp));
        match Self::decode(input) {
            Ok((key, event)) => self.apply(input, key, state, event),
            Err(refusal) => Self::refuse(input, state, None, refusal),
        }
    }
}
