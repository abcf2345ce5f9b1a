//! Per-order state of the status stage, as kept in its compacted changelog topic.
//!
//! This module owns the state's shape and its bounded idempotency window; it must not decide
//! transitions (see the stage module) and must not do I/O.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::dead_letter::DeadLetterReason;
use crate::decision::{ChangelogState, Origin};
use crate::records::OrderState;

/// The state of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatusState {
    pub state: OrderState,
    /// Number of accepted transitions; the `version` of the last `StatusChanged`.
    pub version: u64,
    /// The most recent accepted eventIds, oldest first, bounded by the policy's window.
    pub recent_event_ids: VecDeque<String>,
    /// Present while the order is quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
    /// Timestamp of the input record that last changed this state.
    #[serde(with = "crate::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl ChangelogState for OrderStatusState {
    const FORMAT_VERSION: u32 = 1;
}

/// Why and since when an order's key is quarantined; points at the dead-lettered record that caused
/// it, so an operator can find it in the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantine {
    pub reason: DeadLetterReason,
    /// The eventId of the dead-lettered record, when it had a readable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(with = "crate::rfc3339")]
    pub since: DateTime<Utc>,
}

impl Quarantine {
    pub(crate) fn new(
        reason: DeadLetterReason,
        event_id: Option<&str>,
        origin: &Origin<'_>,
        since: DateTime<Utc>,
    ) -> Self {
        Self {
            reason,
            event_id: event_id.map(str::to_owned),
            topic: origin.topic.to_owned(),
            partition: origin.partition,
            offset: origin.offset,
            since,
        }
    }
}

impl OrderStatusState {
    /// The state of an order the stage has never seen: `Placed`, version 0.
    pub fn initial(at: DateTime<Utc>) -> Self {
        Self {
            state: OrderState::Placed,
            version: 0,
            recent_event_ids: VecDeque::new(),
            quarantine: None,
            updated_at: at,
        }
    }

    /// Whether `event_id` was accepted recently enough to be remembered.
    pub fn has_seen(&self, event_id: &str) -> bool {
        self.recent_event_ids.iter().any(|seen| seen == event_id)
    }

    /// Remembers `event_id`, forgetting the oldest beyond `capacity` (at least 1).
    pub(crate) fn remember(&mut self, event_id: &str, capacity: usize) {
        self.recent_event_ids.push_back(event_id.to_owned());
        while self.recent_event_ids.len() > capacity.max(1) {
            self.recent_event_ids.pop_front();
        }
    }
}
