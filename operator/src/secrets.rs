//! The Kafka TLS and SASL material pipelines reference, read from their Secrets through a short
//! cache: [`SecretCache`] keeps each Secret it read for [`SecretCache::TTL`], so a pipeline's
//! reconciles (and, in their own cache, its lag readings) make one GET per Secret per period
//! instead of one per reconcile or reading, however many pipelines share the credentials.
//!
//! Why not a watch: a watch needs `list`/`watch` on Secrets, which RBAC cannot limit to the Secrets
//! pipelines name, so the operator would receive (and cache) every Secret of every namespace it
//! watches; it gets only the Secrets it is pointed at (`get`, see `config/rbac/role.yaml`). The
//! cost is staleness: a rotated credential is used at most one period late. A failed read is not
//! cached, so a Secret created after its pipeline is found on the next reconcile.
//!
//! Values never leave this module except inside [`ResolvedKafkaSecrets`], whose Debug output
//! redacts them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use orderpipe_api::OrderPipeline;
use orderpipe_api::contract::SecretString;
use orderpipe_api::v1alpha1::KafkaSpec;

use crate::error::Error;
use crate::topics::{ClientCertificate, ResolvedKafkaSecrets, SaslCredentials};

/// A Secret's data as read, shared by the readers of the same period.
type Data = Arc<BTreeMap<String, ByteString>>;

/// The Secrets read for pipelines, each kept for one period.
pub struct SecretCache {
    client: Client,
    ttl: Duration,
    /// By (namespace, name): the data and when it was read.
    read: Mutex<HashMap<(String, String), (Data, Instant)>>,
}

impl std::fmt::Debug for SecretCache {
    /// Names the Secrets held, never their data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: Vec<(String, String)> = self.lock().keys().cloned().collect();
        f.debug_struct("SecretCache")
            .field("ttl", &self.ttl)
            .field("held", &held)
            .finish_non_exhaustive()
    }
}

impl SecretCache {
    /// How long a Secret read is used before it is read again.
    pub const TTL: Duration = Duration::from_secs(30);

    pub fn new(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            read: Mutex::new(HashMap::new()),
        }
    }

    /// The TLS and SASL material `pipeline` references (for topic management and the lag
    /// consumer).
    pub async fn kafka(&self, pipeline: &OrderPipeline) -> Result<ResolvedKafkaSecrets, Error> {
        let namespace = pipeline.namespace().ok_or(Error::MissingNamespace)?;
        let value = async |name: &str, key: &str| {
            let data = self.data(&namespace, name).await?;
            data.get(key)
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
                .ok_or_else(|| Error::SecretKeyMissing {
                    secret: name.to_owned(),
                    key: key.to_owned(),
                })
        };
        let KafkaSpec { tls, sasl, .. } = &pipeline.spec.kafka;
        let mut resolved = ResolvedKafkaSecrets::default();
        if let Some(tls) = tls {
            if let Some(ca) = &tls.ca_secret_ref {
                resolved.ca_pem = Some(value(&ca.name.0, &ca.key.0).await?);
            }
            if let Some(client) = &tls.client_cert_secret_name {
                resolved.client_certificate = Some(ClientCertificate {
                    certificate_pem: value(&client.0, "tls.crt").await?,
                    key_pem: SecretString::new(value(&client.0, "tls.key").await?),
                });
            }
        }
        if let Some(sasl) = sasl {
            let creds = &sasl.credentials_secret_ref;
            resolved.sasl = Some(SaslCredentials {
                username: value(&creds.name.0, &creds.username_key.0).await?,
                password: SecretString::new(value(&creds.name.0, &creds.password_key.0).await?),
            });
        }
        Ok(resolved)
    }

    /// The Secret's data: as read within the period, or read now.
    async fn data(&self, namespace: &str, name: &str) -> Result<Data, Error> {
        let key = (namespace.to_owned(), name.to_owned());
        let now = Instant::now();
        if let Some(data) = fresh(&self.lock(), &key, now, self.ttl) {
            return Ok(data);
        }
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|source| Error::ReadSecret {
                secret: name.to_owned(),
                source,
            })?;
        let data: Data = Arc::new(secret.data.unwrap_or_default());
        let mut read = self.lock();
        // Expired entries go on every read, so Secrets no pipeline names any more are not kept.
        read.retain(|_, (_, at)| now.saturating_duration_since(*at) < self.ttl);
        read.insert(key, (Arc::clone(&data), now));
        Ok(data)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (Data, Instant)>> {
        // A poisoned lock only means another thread panicked mid-update of a plain map.
        self.read.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The data read for `key`, if it was read less than `ttl` before `now`.
fn fresh(
    read: &HashMap<(String, String), (Data, Instant)>,
    key: &(String, String),
    now: Instant,
    ttl: Duration,
) -> Option<Data> {
    let (data, at) = read.get(key)?;
    (now.saturating_duration_since(*at) < ttl).then(|| Arc::clone(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_read_serves_for_one_period_then_is_read_again() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let key = ("shop".to_owned(), "kafka-client".to_owned());
        let data: Data = Arc::new([("password".to_owned(), ByteString(b"s3cret".to_vec()))].into());
        let read = HashMap::from([(key.clone(), (Arc::clone(&data), t0))]);

        let within = fresh(&read, &key, t0 + Duration::from_secs(29), ttl);
        assert_eq!(within.as_deref(), Some(data.as_ref()));
        assert_eq!(fresh(&read, &key, t0 + ttl, ttl), None);
        let other = ("eu".to_owned(), "kafka-client".to_owned());
        assert_eq!(
            fresh(&read, &other, t0, ttl),
            None,
            "Secrets are per namespace"
        );
    }
}
