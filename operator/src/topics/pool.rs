//! The [`AdminPool`]: one [`KafkaTopicAdmin`] per cluster and identity, shared by every reconcile
//! and closed when idle.
//!
//! Builds clients (local work: a client connects on its first request) and drops them; it sends no
//! admin request itself.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Mutex, PoisonError};
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
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30 * 60),
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
        let idle: Vec<Pooled> = clients
            .extract_if(|k, pooled| {
                *k != key && now.duration_since(pooled.last_used) >= self.settings.idle_timeout
            })
            .map(|(_, pooled)| pooled)
            .collect();
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
                    tracing::info!(connection = %entry.key(), "opened a Kafka admin client");
                    let pooled = Pooled {
                        admin: admin.clone(),
                        last_used: now,
                    };
                    entry.insert(pooled);
                })
            }
        };
        drop(clients);
        if !idle.is_empty() {
            tracing::info!(clients = idle.len(), "closing idle Kafka admin clients");
            drop_blocking(idle);
        }
        admin
    }
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

    use orderpipe_api::v1alpha1::BootstrapServer;

    use super::*;

    fn plaintext(bootstrap: &str) -> KafkaSpec {
        KafkaSpec {
            bootstrap_servers: vec![BootstrapServer(bootstrap.into())],
            tls: None,
            sasl: None,
        }
    }

    #[test]
    fn the_pool_shares_one_client_per_connection_and_closes_idle_ones() {
        let pool = AdminPool::new(AdminSettings {
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::ZERO,
        });
        let none = ResolvedKafkaSecrets::default();
        let first = pool.get(&plaintext("127.0.0.1:9"), &none).expect("client");
        let again = pool.get(&plaintext("127.0.0.1:9"), &none).expect("client");
        assert!(
            Arc::ptr_eq(&first.client, &again.client),
            "one client per connection"
        );

        pool.get(&plaintext("127.0.0.2:9"), &none).expect("client");
        let clients = pool.clients.lock().expect("not poisoned");
        let keys: Vec<String> = clients.keys().map(ToString::to_string).collect();
        assert_eq!(clients.len(), 1, "the idle client was closed: {keys:?}");
        assert!(keys[0].starts_with("127.0.0.2:9#"), "{keys:?}");
    }
}
