//! Duplicate-submission state of the validate stage: one small record per order id.
//!
//! Why per key with state: a shop (or its producer retrying) can submit the same order twice, hours
//! apart and across worker restarts, so the only reliable memory is a record in the stage's compacted
//! changelog topic keyed by orderId, restored by the runtime for its partitions. Because the key is
//! the orderId (enforced by `key_matches_order_id`), all submissions of one order land in one
//! partition and are judged sequentially against this record. This module must not do I/O.

use std::fmt;
use std::io;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::decision::ChangelogState;
use crate::records::OrderPlaced;

/// The dedup record of one validated order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeenOrder {
    /// Fingerprint of the validated order's canonical JSON: tells a retried submission (same content:
    /// dropped as duplicate) from a reused orderId (different content: rejected).
    pub fingerprint: Fingerprint,
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
            fingerprint: Fingerprint::of(order),
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

/// FNV-1a 64 over the canonical JSON of a validated order; written as 16 lowercase hex digits.
///
/// Canonical: re-serialised from the typed record, so whitespace, member order, unknown members and
/// timestamp offsets do not matter. FNV-1a is stable across Rust releases (std's hasher is not) and
/// is enough to tell a retry from a different order; it is not a security boundary, since a producer
/// that wants to reuse an id can simply send different content. Held as a number: the stage keeps
/// one per validated order in memory, where a `String` took 16 bytes more in each hash-table bucket
/// and an allocation of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u64);

impl Fingerprint {
    pub(crate) fn of(order: &OrderPlaced) -> Self {
        let mut hasher = Fnv1a64::default();
        crate::json::encode_into(&mut hasher, order);
        Self(hasher.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let is_hex = text.len() == 16
            && text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !is_hex {
            return Err(serde::de::Error::custom(format!(
                "fingerprint {text:?} is not 16 lowercase hex digits"
            )));
        }
        u64::from_str_radix(&text, 16)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// FNV-1a 64 fed by the JSON encoder, so the canonical text is hashed without being kept.
struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl io::Write for Fnv1a64 {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        self.0 = bytes.iter().fold(self.0, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fnv1a64(bytes: &[u8]) -> u64 {
        let mut hasher = Fnv1a64::default();
        io::Write::write_all(&mut hasher, bytes).expect("hashing cannot fail");
        hasher.0
    }

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_fingerprint_is_fnv1a64_of_the_encoded_order_as_earlier_releases_stored_it() {
        let mut generator =
            crate::generator::OrderGenerator::new(7, crate::generator::GenConfig::default());
        for _ in 0..200 {
            let order = generator.valid_order();
            assert_eq!(
                Fingerprint::of(&order),
                Fingerprint(fnv1a64(&crate::json::encode(&order)))
            );
        }
    }

    #[test]
    fn a_fixed_order_keeps_the_fingerprint_its_dedup_records_hold() {
        // Pinned: a changed canonical encoding would turn every retry inside the dedup window
        // into an `order_id_reused` rejection after an upgrade.
        let order: OrderPlaced = serde_json::from_str(
            r#"{"totalMinor": 2500, "orderId": "ord-1", "customerId": "cus-1",
                "createdAt": "2025-03-01T10:00:00+01:00", "currency": "EUR",
                "items": [{"sku": "SKU-1", "quantity": 2, "unitPriceMinor": 1250}]}"#,
        )
        .expect("a valid order");
        assert_eq!(Fingerprint::of(&order).to_string(), "46a8f127f247e160");
    }

    #[test]
    fn a_fingerprint_reads_back_what_it_writes_and_refuses_other_text() {
        let fingerprint = Fingerprint(0x0123_4567_89ab_cdef);
        let json = serde_json::to_string(&fingerprint).expect("serialises");
        assert_eq!(json, r#""0123456789abcdef""#);
        assert_eq!(
            serde_json::from_str::<Fingerprint>(&json).expect("reads back"),
            fingerprint
        );
        for bad in [
            r#""0123456789ABCDEF""#,
            r#""+123456789abcdef""#,
            r#""123456789abcdef""#,
            r#""0123456789abcdef0""#,
            "1",
        ] {
            assert!(serde_json::from_str::<Fingerprint>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entries_expire_after_the_window_but_not_before() {
        let start = crate::rfc3339::parse("2025-03-01T00:00:00Z").expect("valid timestamp");
        let seen = SeenOrder {
            fingerprint: Fingerprint(0),
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
