//! Per-order state of the status stage, as kept in its compacted changelog topic.
//!
//! This module owns the state's shape and its bounded idempotency window; it must not decide
//! transitions (see the stage module) and must not do I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    pub recent_event_ids: RecentEventIds,
    /// Present while the order is quarantined (boxed: rare, and large next to the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Box<Quarantine>>,
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
            recent_event_ids: RecentEventIds::default(),
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
        self.recent_event_ids.push(event_id, capacity.max(1));
    }
}

/// A window of eventIds in one allocation: a status stage holds one per order in flight, and a
/// deque of strings cost about 300 bytes per order, half of the state's memory. The ids are joined
/// by `\n`, which an eventId (visible ASCII) cannot contain. On the wire it is a JSON array of
/// strings, as before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentEventIds {
    joined: String,
}

impl RecentEventIds {
    const SEPARATOR: char = '\n';

    /// The ids, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.joined
            .split(Self::SEPARATOR)
            .filter(|id| !id.is_empty())
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.joined.is_empty()
    }

    /// Appends `id`, dropping the oldest beyond `capacity`.
    fn push(&mut self, id: &str, capacity: usize) {
        if !self.joined.is_empty() {
            self.joined.push(Self::SEPARATOR);
        }
        self.joined.push_str(id);
        let excess = self.len().saturating_sub(capacity);
        if excess > 0 {
            let cut = self
                .joined
                .match_indices(Self::SEPARATOR)
                .nth(excess - 1)
                .map_or(self.joined.len(), |(at, _)| at + 1);
            self.joined.drain(..cut);
        }
        self.joined.shrink_to_fit();
    }
}

impl<const N: usize> PartialEq<[&str; N]> for RecentEventIds {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.iter().eq(other.iter().copied())
    }
}

impl Serialize for RecentEventIds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for RecentEventIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ids = Vec::<String>::deserialize(deserializer)?;
        if ids
            .iter()
            .any(|id| id.is_empty() || id.contains(Self::SEPARATOR))
        {
            return Err(serde::de::Error::custom(
                "recentEventIds holds an empty id or one with a line break",
            ));
        }
        Ok(Self {
            joined: ids.join("\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_id_window_keeps_the_newest_and_reads_and_writes_a_json_array() {
        let mut ids = RecentEventIds::default();
        for id in ["a", "bb", "ccc", "dddd"] {
            ids.push(id, 3);
        }
        assert_eq!(ids, ["bb", "ccc", "dddd"]);
        let json = serde_json::to_string(&ids).expect("serialises");
        assert_eq!(json, r#"["bb","ccc","dddd"]"#);
        let back: RecentEventIds = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, ids);
        assert!(serde_json::from_str::<RecentEventIds>(r#"["a\nb"]"#).is_err());
        assert!(serde_json::from_str::<RecentEventIds>(r#"[""]"#).is_err());
    }
}
