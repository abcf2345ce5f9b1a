//! A map whose entries serve for one period after they were stored: what the operator keeps of
//! answers that are cheap to be slightly late about and costly to ask for on every reconcile (the
//! Secrets pipelines reference, the addresses their hosts resolve to).
//!
//! Pure apart from a lock: the caller passes the clock, so expiry is tested without waiting.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Entries by key, each with the time it was stored.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The value stored for `key` less than one period before `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.lock();
        let (value, at) = entries.get(key)?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| value.clone())
    }

    /// Stores `value` as of `now`. Expired entries go on every insert, so keys nobody asks for
    /// any more are not kept.
    pub fn insert(&self, key: K, value: V, now: Instant) {
        let mut entries = self.lock();
        entries.retain(|_, (_, at)| now.saturating_duration_since(*at) < self.ttl);
        entries.insert(key, (value, now));
    }

    /// The keys held, expired or not.
    pub fn keys(&self) -> Vec<K> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, (V, Instant)>> {
        // A poisoned lock only means another thread panicked mid-update of a plain map.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_serves_for_one_period_then_is_gone() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let cache = TtlCache::new(ttl);
        cache.insert("shop/kafka-client", 7, t0);

        assert_eq!(
            cache.get(&"shop/kafka-client", t0 + Duration::from_secs(29)),
            Some(7)
        );
        assert_eq!(cache.get(&"shop/kafka-client", t0 + ttl), None);
        assert_eq!(cache.get(&"eu/kafka-client", t0), None, "keys are exact");

        cache.insert("eu/kafka-client", 8, t0 + ttl);
        assert_eq!(
            cache.keys(),
            ["eu/kafka-client"],
            "the expired entry went with the next insert"
        );
    }
}
