//! The gateway's idempotency ledger: which orders and `Idempotency-Key`s this replica has taken,
//! bounded by an LRU. Decides how a repeated request is answered; must not do I/O.
//!
//! Semantics (documented for shops in `docs/intake.md`):
//! - same orderId, same content: the first request's answer again (202, nothing produced twice);
//! - same orderId, different content: `order_id_reused` (409), the validate stage's own rule;
//! - same `Idempotency-Key` with another orderId or content: `idempotency_key_reused` (422);
//! - a repeat while the first request still waits for the broker: 409, retry shortly.
//!
//! The ledger is per replica and forgets the least recently used entries beyond its capacity; the
//! validate stage's dedup state (a week, every replica) stays the backstop: a repeat it does not
//! catch here is produced again and dropped or rejected there.

use std::num::NonZeroUsize;

use lru::LruCache;

/// What the ledger says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Never seen: produce it, then report [`Ledger::accepted`] or [`Ledger::failed`].
    New,
    /// Already acknowledged by the broker: answer 202 again without producing.
    Replay,
    /// The same request is waiting for the broker.
    InFlight,
    /// The orderId was taken with different content.
    OrderIdReused,
    /// The idempotency key was used for another orderId or content.
    KeyReused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    InFlight,
    Accepted,
}

#[derive(Debug)]
struct Taken {
    fingerprint: String,
    phase: Phase,
}

/// The request an idempotency key was first used for.
#[derive(Debug)]
struct KeyUse {
    order_id: String,
    fingerprint: String,
}

/// Orders and keys this replica took, each map holding at most `capacity` entries.
#[derive(Debug)]
pub struct Ledger {
    orders: LruCache<String, Taken>,
    keys: LruCache<String, KeyUse>,
}

impl Ledger {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            orders: LruCache::new(capacity),
            keys: LruCache::new(capacity),
        }
    }

    /// Judges a request for `order_id` with content `fingerprint` and an optional idempotency key,
    /// and records a [`Claim::New`] one as in flight.
    pub fn claim(&mut self, order_id: &str, fingerprint: &str, key: Option<&str>) -> Claim {
        if let Some(key) = key
            && let Some(used) = self.keys.get(key)
            && (used.order_id != order_id || used.fingerprint != fingerprint)
        {
            return Claim::KeyReused;
        }
        if let Some(taken) = self.orders.get(order_id) {
            return match (taken.fingerprint == fingerprint, taken.phase) {
                (false, _) => Claim::OrderIdReused,
                (true, Phase::InFlight) => Claim::InFlight,
                (true, Phase::Accepted) => Claim::Replay,
            };
        }
        self.orders.put(
            order_id.to_owned(),
            Taken {
                fingerprint: fingerprint.to_owned(),
                phase: Phase::InFlight,
            },
        );
        if let Some(key) = key {
            self.keys.put(
                key.to_owned(),
                KeyUse {
                    order_id: order_id.to_owned(),
                    fingerprint: fingerprint.to_owned(),
                },
            );
        }
        Claim::New
    }

    /// The broker acknowledged `order_id`: repeats are answered 202 from now on.
    pub fn accepted(&mut self, order_id: &str) {
        if let Some(taken) = self.orders.get_mut(order_id) {
            taken.phase = Phase::Accepted;
        }
    }

    /// Producing `order_id` failed: forget the claim (and its key) so that a retry produces again.
    pub fn failed(&mut self, order_id: &str, key: Option<&str>) {
        self.orders.pop(order_id);
        if let Some(key) = key {
            self.keys.pop(key);
        }
    }

    /// Whether this replica got the broker's acknowledgement for `order_id` (and still remembers).
    pub fn is_accepted(&self, order_id: &str) -> bool {
        self.orders
            .peek(order_id)
            .is_some_and(|taken| taken.phase == Phase::Accepted)
    }

    /// Entries held (orders and keys), for the memory gauge.
    pub fn len(&self) -> usize {
        self.orders.len() + self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(capacity: usize) -> Ledger {
        Ledger::new(NonZeroUsize::new(capacity).expect("non-zero"))
    }

    #[test]
    fn a_retry_of_an_acknowledged_order_is_replayed_and_one_in_flight_waits() {
        let mut ledger = ledger(8);
        assert_eq!(ledger.claim("o1", "f1", None), Claim::New);
        assert_eq!(ledger.claim("o1", "f1", None), Claim::InFlight);
        ledger.accepted("o1");
        assert!(ledger.is_accepted("o1"));
        assert_eq!(ledger.claim("o1", "f1", None), Claim::Replay);
        assert_eq!(ledger.claim("o1", "f1", Some("k")), Claim::Replay);
    }

    #[test]
    fn an_order_id_with_other_content_is_refused_as_reused() {
        let mut ledger = ledger(8);
        assert_eq!(ledger.claim("o1", "f1", None), Claim::New);
        ledger.accepted("o1");
        assert_eq!(ledger.claim("o1", "f2", None), Claim::OrderIdReused);
    }

    #[test]
    fn an_idempotency_key_bound_to_another_request_is_refused_as_reused() {
        let mut ledger = ledger(8);
        assert_eq!(ledger.claim("o1", "f1", Some("k")), Claim::New);
        ledger.accepted("o1");
        assert_eq!(ledger.claim("o2", "f9", Some("k")), Claim::KeyReused);
        assert_eq!(ledger.claim("o1", "f2", Some("k")), Claim::KeyReused);
        assert_eq!(ledger.claim("o1", "f1", Some("k")), Claim::Replay);
    }

    #[test]
    fn a_failed_produce_is_forgotten_so_the_retry_produces_again() {
        let mut ledger = ledger(8);
        assert_eq!(ledger.claim("o1", "f1", Some("k")), Claim::New);
        ledger.failed("o1", Some("k"));
        assert!(!ledger.is_accepted("o1"));
        assert_eq!(ledger.claim("o1", "f1", Some("k")), Claim::New);
    }

    #[test]
    fn the_ledger_holds_at_most_its_capacity_forgetting_the_least_recently_used() {
        let mut ledger = ledger(2);
        for order in ["o1", "o2", "o3"] {
            assert_eq!(ledger.claim(order, "f", Some(order)), Claim::New);
            ledger.accepted(order);
        }
        assert_eq!(ledger.len(), 4);
        assert!(!ledger.is_accepted("o1"));
        assert!(ledger.is_accepted("o3"));
    }
}
