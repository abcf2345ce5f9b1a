//! Status records: events about an order (input of status) and accepted transitions (its output).
//!
//! This module names the states and event types; which transitions are legal is data in
//! [`crate::status::transitions`]. It must not decide transitions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

stable_codes! {
    /// Where an order is in its life cycle.
    pub enum OrderState {
        /// Submitted; the implicit state of an order the status stage has not seen yet.
        Placed = "Placed",
        Validated = "Validated",
        Rejected = "Rejected",
        PaymentAuthorized = "PaymentAuthorized",
        PaymentFailed = "PaymentFailed",
        Shipped = "Shipped",
        Delivered = "Delivered",
        Cancelled = "Cancelled",
        Refunded = "Refunded",
    }
}

stable_codes! {
    /// What a status event reports. Every type but `QuarantineReleased` asks for a transition to the
    /// state of the same name.
    pub enum EventType {
        Validated = "Validated",
        Rejected = "Rejected",
        PaymentAuthorized = "PaymentAuthorized",
        PaymentFailed = "PaymentFailed",
        Shipped = "Shipped",
        Delivered = "Delivered",
        Cancelled = "Cancelled",
        Refunded = "Refunded",
        /// Operator command, sent in-band on the order's key so it is ordered with its events: lifts
        /// the quarantine of the order (see `docs/orders.md`).
        QuarantineReleased = "QuarantineReleased",
    }
}

impl EventType {
    /// The state this event asks to move to; `None` for commands that are not transitions.
    pub const fn target_state(self) -> Option<OrderState> {
        match self {
            Self::Validated => Some(OrderState::Validated),
            Self::Rejected => Some(OrderState::Rejected),
            Self::PaymentAuthorized => Some(OrderState::PaymentAuthorized),
            Self::PaymentFailed => Some(OrderState::PaymentFailed),
            Self::Shipped => Some(OrderState::Shipped),
            Self::Delivered => Some(OrderState::Delivered),
            Self::Cancelled => Some(OrderState::Cancelled),
            Self::Refunded => Some(OrderState::Refunded),
            Self::QuarantineReleased => None,
        }
    }
}

/// Optional facts an event may carry; passed through to `StatusChanged` and the notification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDetails {
    /// Why (rejection, payment failure, cancellation, refund).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    /// Amount concerned (authorised, refunded), in the order's minor units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
}

impl EventDetails {
    /// The first free-text member longer than [`crate::ids::EVENT_DETAIL_MAX_LEN`], by its JSON
    /// name.
    pub fn overlong_text(&self) -> Option<&'static str> {
        [
            ("reason", &self.reason),
            ("carrier", &self.carrier),
            ("trackingNumber", &self.tracking_number),
        ]
        .into_iter()
        .find(|(_, text)| {
            text.as_ref()
                .is_some_and(|text| text.len() > crate::ids::EVENT_DETAIL_MAX_LEN)
        })
        .map(|(name, _)| name)
    }
}

/// Input of the status stage: something happened to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    pub order_id: String,
    /// Unique per order; a repeated eventId is ignored (idempotency).
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened (business time).
    #[serde(with = "crate::rfc3339")]
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub details: EventDetails,
}

/// Output of the status stage: an accepted transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusChanged {
    pub order_id: String,
    pub from: OrderState,
    pub to: OrderState,
    /// 1 for the first accepted transition of an order, +1 for each next one.
    pub version: u64,
    /// The event's `at`.
    #[serde(with = "crate::rfc3339")]
    pub at: DateTime<Utc>,
    /// The eventId that caused the transition.
    pub event_id: String,
    #[serde(flatten)]
    pub details: EventDetails,
}
