//! [`KafkaTopicAdmin`]: the [`TopicAdmin`] over an rdkafka `AdminClient`, the only Kafka client
//! of topic management.
//!
//! It decides nothing: what to create, grow, configure or delete comes from `plan`. Every call has
//! a deadline, every failure is a [`TopicError`], and nothing here logs or formats a credential.
//! Prefer [`AdminPool::get`](super::AdminPool::get) to building one per reconcile.
//!
//! Config changes: rdkafka 0.39 exposes only the legacy, non-incremental AlterConfigs, which
//! replaces every dynamic config of a topic with the ones sent (KIP-339); IncrementalAlterConfigs
//! exists only as a raw `rdkafka-sys` binding, which would need `unsafe`. So
//! [`KafkaTopicAdmin::alter_config`] reads the topic's current dynamic configs right before writing
//! and sends them merged with the declared keys: keys the operator does not manage survive. Two
//! costs, both accepted: a change made by someone else between the read and the write is lost (the
//! window is one round trip), and a topic with a sensitive dynamic config, which cannot be read
//! back, is refused rather than wiped.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigResource, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication, TopicResult,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};

use super::admin::{Effect, TopicAdmin};
use super::connection::AdminConnection;
use super::diagnosis::{Diagnosis, connection_failure, explained, is_local};
use super::error::{Operation, TopicError};
use super::plan::{Described, ObservedTopic, TopicQuery};
use super::pool::drop_blocking;

/// Added to the request timeout for our own deadline, so librdkafka's timeout (with its precise
/// error) normally fires first.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// [`TopicAdmin`] over an rdkafka `AdminClient`. Cheap to clone: clones share the client.
#[derive(Clone)]
pub struct KafkaTopicAdmin {
    pub(super) client: Arc<OwnedClient>,
    /// Single-topic metadata lookups this client has made, a topic looked up again counted again:
    /// an upper bound on the topics it holds state for. librdkafka keeps a topic object (and one
    /// per partition) for every topic it was asked about, for the client's whole life: about
    /// 5 KiB each, 22 MiB at 1,000 pipelines (docs/benchmarks.md, issue #17). The pool retires a
    /// client past a bound on this count.
    pub(super) looked_up: Arc<AtomicUsize>,
    /// The client's config, for a probe that finds out why a connection fails.
    config: Arc<ClientConfig>,
    /// The last probe's answer. The lock is held while a probe runs, so the reconciles failing at
    /// the same time wait for one probe instead of starting one each.
    diagnosis: Arc<tokio::sync::Mutex<Option<Diagnosis>>>,
    /// Per request: librdkafka's request and operation timeout, and our own deadline.
    timeout: Duration,
    /// The cluster's id, once a metadata answer carried it.
    cluster_id: Arc<tokio::sync::OnceCell<String>>,
}

impl fmt::Debug for KafkaTopicAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTopicAdmin")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaTopicAdmin {
    /// Builds a client; it connects lazily, on its first request. Prefer
    /// [`AdminPool::get`](super::AdminPool::get): a new client per reconcile would open new broker
    /// connections every time.
    pub fn connect(connection: &AdminConnection, timeout: Duration) -> Result<Self, TopicError> {
        let config = connection.client_config();
        let client = config.create().map_err(TopicError::client)?;
        Ok(Self {
            client: Arc::new(OwnedClient(Some(client))),
            looked_up: Arc::default(),
            config: Arc::new(config),
            diagnosis: Arc::default(),
            timeout,
            cluster_id: Arc::default(),
        })
    }

    /// The id of the Kafka cluster the client talks to: what tells two pipelines apart or together
    /// whatever addresses they name the brokers by. `None` while no broker has answered within the
    /// timeout. librdkafka keeps the id from its last metadata answer, so after a describe this
    /// costs no request, and once known it is kept for the life of the client.
    pub async fn cluster_id(&self) -> Option<String> {
        if let Some(id) = self.cluster_id.get() {
            return Some(id.clone());
        }
        let client = Arc::clone(&self.client);
        let timeout = self.timeout;
        // Blocks its thread until the metadata answer arrives, so it runs on the blocking pool.
        let task = tokio::task::spawn_blocking(move || client.inner().fetch_cluster_id(timeout));
        let id = task.await.ok().flatten()?;
        Some(self.cluster_id.get_or_init(|| async { id }).await.clone())
    }

    /// How many single-topic metadata lookups this client has made (see `looked_up`).
    pub fn topics_looked_up(&self) -> usize {
        self.looked_up.load(Ordering::Relaxed)
    }

    fn options(&self) -> AdminOptions {
        // With an operation timeout the broker answers once the change is done, not merely
        // accepted, so the next describe sees it.
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Awaits an rdkafka admin request under our own deadline: librdkafka enforces its request
    /// timeout, but a reconcile must not hang on a client that never answers.
    async fn call<T>(
        &self,
        op: Operation,
        topic: &str,
        request: impl Future<Output = KafkaResult<T>>,
    ) -> Result<T, TopicError> {
        match tokio::time::timeout(self.timeout + DEADLINE_GRACE, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(self.diagnosed(TopicError::kafka(op, topic, error)).await),
            Err(_elapsed) => Err(TopicError::Timeout {
                op,
                topic: topic.to_owned(),
                timeout: self.timeout,
            }),
        }
    }

    /// The single result of a create, create-partitions or delete request; `benign` is the error
    /// code meaning the desired state is already there.
    async fn single(
        &self,
        op: Operation,
        topic: &str,
        request: impl Future<Output = KafkaResult<Vec<TopicResult>>>,
        benign: Option<RDKafkaErrorCode>,
    ) -> Result<Effect, TopicError> {
        match only_answer(op, topic, self.call(op, topic, request).await?)? {
            Ok(_) => Ok(Effect::Applied),
            Err((_, code)) if Some(code) == benign => Ok(Effect::AlreadyInPlace),
            Err((_, code)) => Err(TopicError::Broker {
                op,
                topic: topic.to_owned(),
                code,
            }),
        }
    }

    /// Partitions and replication factor of each named topic that exists, and the brokers the
    /// last metadata answer lists (`None` when no topic is named, so nothing was asked).
    /// librdkafka's metadata call blocks its thread, so it runs on the blocking pool.
    async fn shapes(&self, names: Vec<String>) -> Result<(Vec<Shape>, Option<usize>), TopicError> {
        let client = Arc::clone(&self.client);
        let looked_up = Arc::clone(&self.looked_up);
        let timeout = self.timeout;
        let topics = names.join(", ");
        let task = tokio::task::spawn_blocking(move || {
            let mut shapes = Vec::new();
            let mut brokers = None;
            for name in names {
                looked_up.fetch_add(1, Ordering::Relaxed);
                let (shape, listed) = shape_of(&client, name, timeout)?;
                shapes.extend(shape);
                brokers = Some(listed);
            }
            Ok((shapes, brokers))
        });
        match task.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(self.diagnosed(error).await),
            Err(source) => Err(TopicError::Blocking {
                op: Operation::Describe,
                topic: topics,
                source,
            }),
        }
    }

    /// `error`, with the reason the brokers are unreachable when it is about that (see
    /// [`connection_failure`]): the last probe's answer while it is recent, else a new probe's; the
    /// probe blocks, so it runs on the blocking pool.
    async fn diagnosed(&self, error: TopicError) -> TopicError {
        if !is_local(&error) {
            return error;
        }
        let mut last = self.diagnosis.lock().await;
        if let Some(cause) = last.as_ref().and_then(|d| d.recent(Instant::now())) {
            return explained(error, cause.clone());
        }
        let config = Arc::clone(&self.config);
        let probe = tokio::task::spawn_blocking(move || connection_failure(&config));
        let cause = probe.await.ok().flatten();
        *last = Some(Diagnosis {
            cause: cause.clone(),
            heard: Instant::now(),
        });
        explained(error, cause)
    }

    /// The current configuration entries of one topic.
    async fn config_of(&self, op: Operation, topic: &str) -> Result<ConfigResource, TopicError> {
        let resources = [ResourceSpecifier::Topic(topic)];
        let options = self.options();
        let request = self.client.describe_configs(&resources, &options);
        let answer = only_answer(op, topic, self.call(op, topic, request).await?)?;
        answer.map_err(|code| TopicError::Broker {
            op,
            topic: topic.to_owned(),
            code,
        })
    }
}

/// The result of a request about one topic: rdkafka answers with one result per resource asked
/// about, and an answer without it is [`TopicError::Unanswered`].
fn only_answer<T>(op: Operation, topic: &str, answers: Vec<T>) -> Result<T, TopicError> {
    answers
        .into_iter()
        .next()
        .ok_or_else(|| TopicError::Unanswered {
            op,
            topic: topic.to_owned(),
        })
}

/// What a change looks like once describing the topic shows it.
enum Visible<'a> {
    Exists,
    Partitions(i32),
    Config(&'a BTreeMap<String, String>),
    Gone,
}

impl KafkaTopicAdmin {
    /// Waits, at most one request timeout, until describing the topic shows an applied change.
    /// KRaft answers once the controller committed the change, while brokers serve metadata from an
    /// image that catches up a moment later; and the status write that follows a change triggers
    /// the next reconcile at once. Without this wait that reconcile could plan the same change
    /// again from stale metadata: a duplicate grow fails, a duplicate config set reports false
    /// drift. Still not visible at the deadline is an error: the status then says so instead of
    /// claiming the change (and a config value the broker rewrites shows up here, not as endless
    /// "drift").
    async fn settle(
        &self,
        op: Operation,
        name: &str,
        visible: Visible<'_>,
    ) -> Result<Effect, TopicError> {
        let deadline = Instant::now() + self.timeout;
        // An error while looking (a leader not elected yet) just means: not visible yet.
        while !self.shows(name, &visible).await.unwrap_or(false) {
            if Instant::now() >= deadline {
                let topic = name.to_owned();
                return Err(TopicError::Unconfirmed {
                    op,
                    topic,
                    timeout: self.timeout,
                });
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
        Ok(Effect::Applied)
    }

    async fn shows(&self, name: &str, visible: &Visible<'_>) -> Result<bool, TopicError> {
        let shape =
            || async { Ok::<_, TopicError>(self.shapes(vec![name.to_owned()]).await?.0.pop()) };
        Ok(match visible {
            Visible::Exists => shape().await?.is_some(),
            Visible::Gone => shape().await?.is_none(),
            Visible::Partitions(to) => shape().await?.is_some_and(|s| s.partitions >= *to),
            Visible::Config(set) => {
                let current = self.config_of(Operation::Describe, name).await?;
                set.iter().all(|(key, value)| {
                    current.get(key).and_then(|entry| entry.value.as_ref()) == Some(value)
                })
            }
        })
    }
}

/// The admin client, destroyed on the blocking pool: destroying a librdkafka client joins its
/// threads, and the last handle of a client the pool closed or retired may be a reconcile's, on
/// an async worker.
pub(super) struct OwnedClient(Option<AdminClient<DefaultClientContext>>);

impl Deref for OwnedClient {
    type Target = AdminClient<DefaultClientContext>;

    fn deref(&self) -> &Self::Target {
        // Only `drop` takes the client out.
        self.0
            .as_ref()
            .expect("the client lives until the handle is dropped")
    }
}

impl Drop for OwnedClient {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop_blocking(client);
        }
    }
}

/// Pause between two looks at a change that is not visible yet.
const SETTLE_POLL: Duration = Duration::from_millis(100);

struct Shape {
    name: String,
    partitions: i32,
    replication_factor: i16,
}

/// The topic's shape (`None` when it does not exist) and the brokers its metadata answer lists.
fn shape_of(
    client: &AdminClient<DefaultClientContext>,
    name: String,
    timeout: Duration,
) -> Result<(Option<Shape>, usize), TopicError> {
    let metadata = client
        .inner()
        .fetch_metadata(Some(&name), timeout)
        .map_err(|error| TopicError::kafka(Operation::Describe, &name, error))?;
    let brokers = metadata.brokers().len();
    let Some(topic) = metadata.topics().iter().find(|topic| topic.name() == name) else {
        return Ok((None, brokers));
    };
    match topic.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok((None, brokers)),
        Some(code) => {
            return Err(TopicError::Broker {
                op: Operation::Describe,
                topic: name,
                code,
            });
        }
    }
    let partitions = topic.partitions();
    let replicas = partitions
        .iter()
        .map(|p| p.replicas().len())
        .min()
        .unwrap_or(0);
    let shape = Shape {
        partitions: i32::try_from(partitions.len()).unwrap_or(i32::MAX),
        replication_factor: i16::try_from(replicas).unwrap_or(i16::MAX),
        name,
    };
    Ok((Some(shape), brokers))
}

impl TopicAdmin for KafkaTopicAdmin {
    async fn describe(&self, query: &TopicQuery) -> Result<Described, TopicError> {
        let (shapes, brokers) = self.shapes(query.names.iter().cloned().collect()).await?;
        if shapes.is_empty() {
            return Ok(Described {
                topics: BTreeMap::new(),
                brokers,
            });
        }
        let resources: Vec<ResourceSpecifier<'_>> = shapes
            .iter()
            .map(|shape| ResourceSpecifier::Topic(&shape.name))
            .collect();
        let topics: Vec<&str> = shapes.iter().map(|shape| shape.name.as_str()).collect();
        let options = self.options();
        let request = self.client.describe_configs(&resources, &options);
        let op = Operation::Describe;
        let topics = topics.join(", ");
        let results = self.call(op, &topics, request).await?;
        if results.len() != shapes.len() {
            return Err(TopicError::Unanswered { op, topic: topics });
        }

        let mut observed = BTreeMap::new();
        // librdkafka returns the results in the order of the request.
        for (shape, result) in shapes.iter().zip(results) {
            let resource = match result {
                Ok(resource) => resource,
                // Deleted between the two requests: it does not exist.
                Err(RDKafkaErrorCode::UnknownTopicOrPartition) => continue,
                Err(code) => {
                    return Err(TopicError::Broker {
                        op,
                        topic: shape.name.clone(),
                        code,
                    });
                }
            };
            if resource.specifier != OwnedResourceSpecifier::Topic(shape.name.clone()) {
                return Err(TopicError::Unanswered {
                    op,
                    topic: shape.name.clone(),
                });
            }
            let config = resource
                .entries
                .into_iter()
                .filter(|entry| query.config_keys.contains(&entry.name))
                .filter_map(|entry| Some((entry.name, entry.value?)))
                .collect();
            let topic = ObservedTopic {
                partitions: shape.partitions,
                replication_factor: shape.replication_factor,
                config,
            };
            observed.insert(shape.name.clone(), topic);
        }
        Ok(Described {
            topics: observed,
            brokers,
        })
    }

    async fn create(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: Option<i16>,
        config: &BTreeMap<String, String>,
    ) -> Result<Effect, TopicError> {
        // -1 asks the broker for its default.replication.factor (KIP-464, Kafka >= 2.4).
        let replication = TopicReplication::Fixed(replication_factor.map_or(-1, i32::from));
        let topic = config.iter().fold(
            NewTopic::new(name, partitions, replication),
            |topic, (key, value)| topic.set(key, value),
        );
        let options = self.options();
        let request = self.client.create_topics([&topic], &options);
        let already = Some(RDKafkaErrorCode::TopicAlreadyExists);
        match self
            .single(Operation::Create, name, request, already)
            .await?
        {
            Effect::Applied => self.settle(Operation::Create, name, Visible::Exists).await,
            Effect::AlreadyInPlace => Ok(Effect::AlreadyInPlace),
        }
    }

    async fn add_partitions(&self, name: &str, to: i32) -> Result<Effect, TopicError> {
        let op = Operation::AddPartitions;
        let count = usize::try_from(to).map_err(|_| TopicError::Refused {
            op,
            topic: name.to_owned(),
            why: format!("{to} is not a partition count"),
        })?;
        let partitions = NewPartitions::new(name, count);
        let options = self.options();
        let request = self.client.create_partitions([&partitions], &options);
        self.single(op, name, request, None).await?;
        self.settle(op, name, Visible::Partitions(to)).await
    }

    async fn alter_config(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
    ) -> Result<Effect, TopicError> {
        let op = Operation::AlterConfig;
        // AlterConfigs replaces every dynamic config of the topic (see the module header): send the
        // current ones along, read as late as possible.
        let current = self.config_of(op, name).await?;
        let mut merged: BTreeMap<&str, &str> = BTreeMap::new();
        for entry in current
            .entries
            .iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic)
        {
            match &entry.value {
                Some(value) if !entry.is_sensitive => merged.insert(&entry.name, value),
                _ => {
                    return Err(TopicError::Refused {
                        op,
                        topic: name.to_owned(),
                        why: format!(
                            "its config {} cannot be read back, and rewriting the topic's config \
                             would drop it",
                            entry.name
                        ),
                    });
                }
            };
        }
        merged.extend(
            set.iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        );
        let alter = merged.into_iter().fold(
            AlterConfig::new(ResourceSpecifier::Topic(name)),
            |alter, (key, value)| alter.set(key, value),
        );
        let options = self.options();
        let request = self.client.alter_configs([&alter], &options);
        match only_answer(op, name, self.call(op, name, request).await?)? {
            Ok(_) => self.settle(op, name, Visible::Config(set)).await,
            Err((_, code)) => Err(TopicError::Broker {
                op,
                topic: name.to_owned(),
                code,
            }),
        }
    }

    async fn delete(&self, name: &str) -> Result<Effect, TopicError> {
        let options = self.options();
        let request = self.client.delete_topics(&[name], &options);
        let gone = Some(RDKafkaErrorCode::UnknownTopicOrPartition);
        match self.single(Operation::Delete, name, request, gone).await? {
            Effect::Applied => self.settle(Operation::Delete, name, Visible::Gone).await,
            Effect::AlreadyInPlace => Ok(Effect::AlreadyInPlace),
        }
    }
}

#[cfg(test)]
mod tests {
    use orderpipe_api::contract::SecretString;
    use orderpipe_api::v1alpha1::{BootstrapServer, KafkaSpec, KafkaTls, SecretName};

    use super::*;
    use crate::topics::connection::{ClientCertificate, ResolvedKafkaSecrets};
    use crate::topics::error::ErrorCategory;

    #[test]
    fn a_bad_private_key_fails_client_creation_without_leaking_it() {
        let spec = KafkaSpec {
            bootstrap_servers: vec![BootstrapServer("127.0.0.1:9".into())],
            tls: Some(KafkaTls {
                ca_secret_ref: None,
                client_cert_secret_name: Some(SecretName("client".into())),
            }),
            sasl: None,
        };
        let secrets = ResolvedKafkaSecrets {
            client_certificate: Some(ClientCertificate {
                certificate_pem:
                    "-----BEGIN CERTIFICATE-----\nnot-a-cert\n-----END CERTIFICATE-----".into(),
                key_pem: SecretString::new(
                    "-----BEGIN PRIVATE KEY-----\nSUPER-SECRET-KEY-BYTES\n-----END PRIVATE KEY-----",
                ),
            }),
            ..ResolvedKafkaSecrets::default()
        };
        let connection = AdminConnection::new(&spec, &secrets).expect("settings are complete");
        let error = KafkaTopicAdmin::connect(&connection, Duration::from_secs(1))
            .expect_err("librdkafka rejects the certificate");
        let printed = format!("{error} {error:?}");
        assert!(!printed.contains("SUPER-SECRET"), "{printed}");
        assert_eq!(error.category(), ErrorCategory::Invalid);
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_categorised_as_such() {
        // Nothing listens on the discard port of loopback.
        let none = ResolvedKafkaSecrets::default();
        let spec = KafkaSpec {
            bootstrap_servers: vec![BootstrapServer("127.0.0.1:9".into())],
            tls: None,
            sasl: None,
        };
        let admin = KafkaTopicAdmin::connect(
            &AdminConnection::new(&spec, &none).expect("plain"),
            Duration::from_secs(1),
        )
        .expect("client");
        let query = TopicQuery {
            names: ["orders".to_owned()].into(),
            ..TopicQuery::default()
        };
        let error = admin.describe(&query).await.expect_err("no broker");
        assert!(
            matches!(
                error.category(),
                ErrorCategory::Unreachable | ErrorCategory::Timeout
            ),
            "{error} is {:?}",
            error.category()
        );
        assert_eq!(error.topic(), Some("orders"));
    }
}
