//! Notification records: the webhook body and the audit record of each dispatch.
//!
//! Notifications carry no contact data: the webhook is the shop's own endpoint, which knows how to
//! reach its customer. This module must not decide which transitions notify; see [`crate::notify`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{EventDetails, OrderState};

/// The JSON body POSTed to the webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Equal to the `Idempotency-Key` header: `<orderId>:<version>:<channel>`.
    pub notification_id: String,
    pub order_id: String,
    pub version: u64,
    pub channel: String,
    /// The state the order moved to.
    pub status: OrderState,
    pub previous_status: OrderState,
    /// When the transition happened (the status event's `at`).
    #[serde(with = "crate::rfc3339")]
    pub occurred_at: DateTime<Utc>,
    pub event_id: String,
    #[serde(flatten)]
    pub details: EventDetails,
}

stable_codes! {
    /// How a dispatch ended.
    pub enum DispatchResult {
        /// The webhook answered 2xx.
        Delivered = "delivered",
        /// The webhook answered with a permanent failure; dead-lettered.
        Rejected = "rejected",
        /// Every allowed attempt failed transiently; dead-lettered.
        RetriesExhausted = "retries_exhausted",
    }
}

/// Audit record of one finished dispatch, produced in the transaction that commits the input offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationDispatched {
    pub idempotency_key: String,
    pub order_id: String,
    pub version: u64,
    pub channel: String,
    pub status: OrderState,
    pub result: DispatchResult,
    /// HTTP attempts made, including the last.
    pub attempts: u32,
    /// The last HTTP status, when the webhook answered at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// When the dispatch finished (passed in by the runtime).
    #[serde(with = "crate::rfc3339")]
    pub finished_at: DateTime<Utc>,
}
