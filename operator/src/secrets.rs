//! The Kafka TLS and SASL material pipelines reference, and the versions of the Secrets their pods
//! use (for `rotation`), read from their Secrets through a short cache: [`SecretCache`] keeps each
//! Secret it read for one period ([`SecretCache::TTL`] by default), so a pipeline's reconciles
//! (and, in their own cache, its lag readings) make one GET per Secret per period instead of one
//! per reconcile or reading, however many pipelines share the credentials.
//!
//! Why not a watch: a watch needs `list`/`watch` on Secrets, which RBAC cannot limit to the Secrets
//! pipelines name, so the operator would receive (and cache) every Secret of every namespace it
//! watches; it gets only the Secrets it is pointed at (`get`, see `config/rbac/role.yaml`). The
//! cost is staleness: a rotated credential is used at most one period late. A failed read is not
//! cached, so a Secret created after its pipeline is found on the next reconcile.
//!
//! Values never leave this module except inside [`ResolvedKafkaSecrets`], whose Debug output
//! redacts them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
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
use crate::ttl_cache::TtlCache;

/// A Secret as read, shared by the readers of the same period. No Debug: it holds the values.
struct Read {
    data: BTreeMap<String, ByteString>,
    /// `metadata.resourceVersion`: changes with every change to the Secret.
    version: String,
}

type Shared = Arc<Read>;

/// The version [`SecretCache::versions`] gives a Secret that does not exist.
const ABSENT: &str = "absent";

/// The Secrets read for pipelines, each kept for one period.
pub struct SecretCache {
    client: Client,
    /// By (namespace, name).
    read: TtlCache<(String, String), Shared>,
}

impl std::fmt::Debug for SecretCache {
    /// Names the Secrets held, never their data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("ttl", &self.read.ttl())
            .field("held", &self.read.keys())
            .finish_non_exhaustive()
    }
}

impl SecretCache {
    /// How long a Secret read is used before it is read again, unless the operator is told
    /// otherwise (`--secret-refresh-seconds`).
    pub const TTL: Duration = Duration::from_secs(30);

    pub fn new(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            read: TtlCache::new(ttl),
        }
    }

    /// The TLS and SASL material `pipeline` references (for topic management and the lag
    /// consumer).
    pub async fn kafka(&self, pipeline: &OrderPipeline) -> Result<ResolvedKafkaSecrets, Error> {
        let namespace = pipeline.namespace().ok_or(Error::MissingNamespace)?;
        let value = async |name: &str, key: &str| {
            let read = self.read(&namespace, name).await?;
            read.data
                .get(key)
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

    /// The `metadata.resourceVersion` of each named Secret of `namespace`, [`ABSENT`] for one that
    /// does not exist (its pods cannot start until it does).
    pub async fn versions(
        &self,
        namespace: &str,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, String>, Error> {
        let mut versions = BTreeMap::new();
        for name in names {
            let version = match self.read(namespace, name).await {
                Ok(read) => read.version.clone(),
                Err(Error::ReadSecret {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 404 => ABSENT.to_owned(),
                Err(error) => return Err(error),
            };
            versions.insert(name.clone(), version);
        }
        Ok(versions)
    }

    /// The Secret: as read within the period, or read now.
    async fn read(&self, namespace: &str, name: &str) -> Result<Shared, Error> {
        let key = (namespace.to_owned(), name.to_owned());
        let now = Instant::now();
        if let Some(read) = self.read.get(&key, now) {
            return Ok(read);
        }
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|source| Error::ReadSecret {
                secret: name.to_owned(),
                source,
            })?;
        let shared: Shared = Arc::new(Read {
            version: secret.metadata.resource_version.unwrap_or_default(),
            data: secret.data.unwrap_or_default(),
        });
        self.read.insert(key, Arc::clone(&shared), now);
        Ok(shared)
    }
}
