//! Duplicate-submission state of the validate stage: one small record per order id.
//!
//! Why per key with state: a shop (or its producer retrying) can submit the same order twice, hours
//! apart and across worker restarts, so the only reliable memory is a record in the stage's compacted
//! changelog topic keyed by orderId, restored by the runtime for its partitions. Because the key is
//! the orderId (enforced by `key_matches_order_id`), all submissions of one order land in one
//! partition and are judged sequentially against this record. This module must not do I/O.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::decision::ChangelogState;
use crate::records::OrderPlaced;

/// The dedup record of one validated order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeenOrder {
    /// Fingerprint of the validated order's canonical JSON: tells a retried submission (same content:
    /// dropped as duplicate) from a reused orderId (different content: rejected).
    pub fingerprint: String,
    /// Timestamp of the input record that was validated; the dedup window counts from here.
    #[serde(with = "crate::rfc3339")]
    pub first_validated_at: DateTime<Utc>,
}

impl ChangelogState for SeenOrder {
    const FORMAT_VERSION: u32 = 1;
}

impl SeenOrder {
    pub(crate) fn new(order: &OrderPlaced, validated_at: DateTime<Utc>) -> Self {
        Self {
            fingerprint: fingerprint(order),
            first_validated_at: validated_at,
        }
    }

    /// Whether this record still suppresses duplicates at `now` (a record timestamp).
    ///
    /// The runtime should also use it to evict expired entries from memory; the changelog topic
    /// forgets them through `retention.ms` (see `docs/orders.md`). Deciding expiry here, from record
    /// timestamps, keeps the outcome the same whether or not Kafka has deleted the entry yet.
    pub fn is_live(&self, now: DateTime<Utc>, window: Duration) -> bool {
        let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
        // A record timestamp older than the entry (producer clock skew) counts as inside the window.
        now.signed_duration_since(self.first_validated_at) < window
    }
}

/// 16 hex digits of FNV-1a 64 over the canonical JSON of `order`.
///
/// Canonical: re-serialised from the typed record, so whitespace, member order, unknown members and
/// timestamp offsets do not matter. FNV-1a is stable across Rust releases (std's hasher is not) and
/// is enough to tell a retry from a different order; it is not a security boundary, since a producer
/// that wants to reuse an id can simply send different content.
pub(crate) fn fingerprint(order: &OrderPlaced) -> String {
    format!("{:016x}", fnv1a64(&crate::json::encode(order)))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn entries_expire_after_the_window_but_not_before() {
        let start = crate::rfc3339::parse("2025-03-01T00:00:00Z").expect("valid timestamp");
        let seen = SeenOrder {
            fingerprint: "0".repeat(16),
            first_validated_at: start,
        };
        let day = Duration::from_secs(86_400);
        assert!(seen.is_live(start + TimeDelta::hours(23), day));
        assert!(!seen.is_live(start + TimeDelta::hours(24), day));
        assert!(
            seen.is_live(start - TimeDelta::hours(1), day),
            "clock skew keeps it live"
        );
        assert!(
            seen.is_live(start + TimeDelta::days(10_000), Duration::MAX),
            "no overflow"
        );
    }
}
