//! The [`AdminPool`]: one [`KafkaTopicAdmin`] per cluster and identity, shared by every reconcile,
//! closed when idle and bounded in number (least recently used first), so pipelines naming ever new
//! clusters or credentials cannot make the operator hold ever more connections and threads.
//!
//! A client that has looked up many topics is replaced by a fresh one, which bounds the per-topic
//! state librdkafka keeps for a client's life.
//!
//! Builds clients (local work: a client connects on its first request) and drops them; it sends no
//! admin request itself. Which clients to close is decided by the pure `to_close`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use orderpipe_api::v1alpha1::KafkaSpec;

use super::connection::{AdminConnection, ConnectionKey, ResolvedKafkaSecrets};
use super::error::TopicError;
use super::kafka_admin::KafkaTopicAdmin;

/// Settings of the admin clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    /// Deadline of one admin request.
    pub request_timeout: Duration,
    /// A client unused this long is closed: its pipelines were deleted or its credentials rotated.
    /// Longer than the controller's resync period, so a live pipeline keeps its client.
    pub idle_timeout: Duration,
    /// Most clients kept open. Each holds connections and a few threads per broker; a shop has a
    /// handful of clusters and identities, so this is only reached when something is wrong, and
    /// then the least recently used client not held by a reconcile is closed to make room.
    pub max_clients: usize,
    /// Topics a client may look up before it is replaced by a fresh one: librdkafka keeps state
    /// for every topic a client was asked about until the client is destroyed, so a bound here is
    /// a bound on that memory (about 5 KiB per topic). A replacement costs one connection setup.
    pub max_topic_lookups: usize,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30 * 60),
            // Above the controller's 32 concurrent reconciles, so a client that is not in use can
            // always be found to make room.
            max_clients: 64,
            // About 1.3 MiB of librdkafka topic state; at 1,000 pipelines of 7 topics, a new
            // connection every 36 or so pipelines described, a few a second at most.
            max_topic_lookups: 256,
        }
    }
}

/// The admin clients of the operator, one per cluster and identity ([`ConnectionKey`]). The
/// controller keeps one pool in its context, so reconciles share connections instead of opening new
/// ones every pass.
#[derive(Debug)]
pub struct AdminPool {
    settings: AdminSettings,
    clients: Mutex<HashMap<ConnectionKey, Pooled>>,
}

#[derive(Debug)]
struct Pooled {
    admin: KafkaTopicAdmin,
    last_used: Instant,
}

impl AdminPool {
    pub fn new(settings: AdminSettings) -> Self {
        Self {
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for a pipeline's `spec.kafka` and the credentials it references, created on
    /// first use.
    pub fn get(
        &self,
        spec: &KafkaSpec,
        secrets: &ResolvedKafkaSecrets,
    ) -> Result<KafkaTopicAdmin, TopicError> {
        let connection = AdminConnection::new(spec, secrets)?;
        let key = connection.key();
        let now = Instant::now();
        // A poisoned lock only means another thread panicked mid-update of a plain map: keep going.
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let usage: Vec<Usage<&ConnectionKey>> = clients
            .iter()
            .map(|(key, pooled)| Usage {
                key,
                last_used: pooled.last_used,
                // The pool's own handle is one reference; any other is a reconcile's.
                in_use: Arc::strong_count(&pooled.admin.client) > 1,
            })
            .collect();
        let closing: Vec<ConnectionKey> = to_close(&usage, &&key, now, &self.settings)
            .into_iter()
            .cloned()
            .collect();
        let closed: Vec<Pooled> = closing.iter().filter_map(|k| clients.remove(k)).collect();
        let worn = clients.get(&key).is_some_and(|pooled| {
            pooled.admin.topics_looked_up() >= self.settings.max_topic_lookups
        });
        if worn {
            // Reconciles holding the retired client finish with it; the last one closes it.
            clients.remove(&key);
            tracing::debug!(connection = %key, "replacing a Kafka admin client past its topic lookups");
        }
        let admin = match clients.entry(key) {
            Entry::Occupied(mut entry) => {
                entry.get_mut().last_used = now;
                Ok(entry.get().admin.clone())
            }
            // Built under the lock, so two reconciles never race to open the same client; building
            // is local work (the client connects on its first request).
            Entry::Vacant(entry) => {
                let timeout = self.settings.request_timeout;
                KafkaTopicAdmin::connect(&connection, timeout).inspect(|admin| {
                    if !worn {
                        tracing::info!(connection = %entry.key(), "opened a Kafka admin client");
                    }
                    let pooled = Pooled {
                        admin: admin.clone(),
                        last_used: now,
                    };
                    entry.insert(pooled);
                })
            }
        };
        drop(clients);
        if !closed.is_empty() {
            tracing::info!(
                clients = closed.len(),
                "closing Kafka admin clients (idle, or least recently used beyond the pool's maximum)"
            );
        }
        admin
    }
}

/// What the pool knows of one client when it decides which to close.
#[derive(Clone, Copy, Debug)]
struct Usage<K> {
    key: K,
    last_used: Instant,
    /// A reconcile holds the client.
    in_use: bool,
}

/// The clients to close before `wanted` is served at `now`. `wanted` and the clients in use stay:
/// a reconcile is working with them, and the next one would open the same client again. Of the
/// others, oldest first, every idle one goes, then as many as it takes to fit `wanted` into
/// `max_clients`. With every client in use the pool exceeds its maximum by at most the number of
/// concurrent reconciles, until they let go.
fn to_close<K: PartialEq + Clone>(
    clients: &[Usage<K>],
    wanted: &K,
    now: Instant,
    settings: &AdminSettings,
) -> Vec<K> {
    let mut closable: Vec<&Usage<K>> = clients
        .iter()
        .filter(|c| !c.in_use && c.key != *wanted)
        .collect();
    closable.sort_by_key(|c| c.last_used);
    let adding = !clients.iter().any(|c| c.key == *wanted);
    let mut open = clients.len() + usize::from(adding);
    let mut close = Vec::new();
    for client in closable {
        let idle = now.duration_since(client.last_used) >= settings.idle_timeout;
        if !idle && open <= settings.max_clients {
            break;
        }
        close.push(client.key.clone());
        open -= 1;
    }
    close
}

/// Drops Kafka clients. Dropping one joins its threads and closes its connections, which blocks:
/// keep that off the async workers when there are any.
pub(crate) fn drop_blocking<T: Send + 'static>(clients: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(clients));
        }
        Err(_) => drop(clients),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use orderpipe_api::v1alpha1::BootstrapServer;

    use super::*;

    fn plaintext(bootstrap: &str) -> KafkaSpec {
        KafkaSpec {
            bootstrap_servers: vec![BootstrapServer(bootstrap.into())],
            tls: None,
            sasl: None,
        }
    }

    fn open_clients(pool: &AdminPool) -> Vec<String> {
        let clients = pool.clients.lock().expect("not poisoned");
        let mut keys: Vec<String> = clients.keys().map(ToString::to_string).collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_pool_shares_one_client_per_connection_and_closes_idle_ones_nobody_holds() {
        let pool = AdminPool::new(AdminSettings {
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::ZERO,
            max_clients: 8,
            ..AdminSettings::default()
        });
        let none = ResolvedKafkaSecrets::default();
        let first = pool.get(&plaintext("127.0.0.1:9"), &none).expect("client");
        let again = pool.get(&plaintext("127.0.0.1:9"), &none).expect("client");
        assert!(
            Arc::ptr_eq(&first.client, &again.client),
            "one client per connection"
        );

        let held = pool.get(&plaintext("127.0.0.2:9"), &none).expect("client");
        assert_eq!(open_clients(&pool).len(), 2, "a held client stays open");
        drop((first, again, held));

        pool.get(&plaintext("127.0.0.3:9"), &none).expect("client");
        let keys = open_clients(&pool);
        assert_eq!(keys.len(), 1, "the idle clients were closed: {keys:?}");
        assert!(keys[0].starts_with("127.0.0.3:9#"), "{keys:?}");
    }

    #[test]
    fn a_full_pool_closes_its_least_recently_used_client() {
        let pool = AdminPool::new(AdminSettings {
            max_clients: 2,
            ..AdminSettings::default()
        });
        let none = ResolvedKafkaSecrets::default();
        for host in ["127.0.0.1:9", "127.0.0.2:9", "127.0.0.1:9", "127.0.0.3:9"] {
            pool.get(&plaintext(host), &none).expect("client");
        }
        let keys = open_clients(&pool);
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys[0].starts_with("127.0.0.1:9#"), "{keys:?}");
        assert!(keys[1].starts_with("127.0.0.3:9#"), "{keys:?}");
    }

    #[test]
    fn a_client_past_its_topic_lookups_is_replaced_and_its_holders_keep_it() {
        let pool = AdminPool::new(AdminSettings {
            max_topic_lookups: 3,
            ..AdminSettings::default()
        });
        let none = ResolvedKafkaSecrets::default();
        let first = pool.get(&plaintext("127.0.0.1:9"), &none).expect("client");
        first.looked_up.fetch_add(2, Ordering::Relaxed);
        let same = pool.get(&plaintext("127.0.0.1:9"), &none).expect("client");
        assert!(Arc::ptr_eq(&first.client, &same.client), "below the bound");

        first.looked_up.fetch_add(1, Ordering::Relaxed);
        let fresh = pool.get(&plaintext("127.0.0.1:9"), &none).expect("client");
        assert!(
            !Arc::ptr_eq(&first.client, &fresh.client),
            "replaced at the bound"
        );
        assert_eq!(fresh.topics_looked_up(), 0);
        assert_eq!(
            open_clients(&pool).len(),
            1,
            "the pool holds only the new one"
        );
        // The retired client still serves the reconcile that holds it.
        assert_eq!(first.topics_looked_up(), 3);
        assert_eq!(
            Arc::strong_count(&first.client),
            2,
            "held by `first` and `same` only"
        );
    }

    /// Clients `a`, `b`, `c` last used 30, 20 and 10 minutes before `now`.
    fn three_clients(now: Instant, in_use: &str) -> Vec<Usage<&'static str>> {
        [("a", 30), ("b", 20), ("c", 10)]
            .into_iter()
            .map(|(key, minutes_ago)| Usage {
                key,
                last_used: now - Duration::from_secs(minutes_ago * 60),
                in_use: in_use.contains(key),
            })
            .collect()
    }

    fn limits(idle_minutes: u64, max_clients: usize) -> AdminSettings {
        AdminSettings {
            idle_timeout: Duration::from_secs(idle_minutes * 60),
            max_clients,
            ..AdminSettings::default()
        }
    }

    #[test]
    fn idle_clients_close_but_never_the_wanted_one() {
        let now = Instant::now();
        let clients = three_clients(now, "");
        assert_eq!(to_close(&clients, &"c", now, &limits(15, 8)), ["a", "b"]);
        assert_eq!(to_close(&clients, &"a", now, &limits(5, 8)), ["b", "c"]);
        assert!(to_close(&clients, &"a", now, &limits(60, 8)).is_empty());
    }

    #[test]
    fn room_is_made_least_recently_used_first_and_only_for_a_new_client() {
        let now = Instant::now();
        let clients = three_clients(now, "");
        assert_eq!(to_close(&clients, &"d", now, &limits(60, 3)), ["a"]);
        assert_eq!(
            to_close(&clients, &"d", now, &limits(60, 1)),
            ["a", "b", "c"]
        );
        assert!(to_close(&clients, &"b", now, &limits(60, 3)).is_empty());
        assert_eq!(to_close(&clients, &"b", now, &limits(60, 2)), ["a"]);
    }

    #[test]
    fn a_client_a_reconcile_holds_is_never_closed() {
        let now = Instant::now();
        let clients = three_clients(now, "a");
        assert_eq!(to_close(&clients, &"c", now, &limits(5, 8)), ["b"]);
        assert_eq!(to_close(&clients, &"d", now, &limits(60, 2)), ["b", "c"]);
        let all_held = three_clients(now, "abc");
        assert!(to_close(&all_held, &"d", now, &limits(5, 1)).is_empty());
    }
}
