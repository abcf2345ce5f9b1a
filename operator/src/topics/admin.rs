//! The Kafka side of topic management: the [`TopicAdmin`] trait the rest of the module is written
//! against, its rdkafka implementation, and the [`AdminPool`] of clients the controller keeps.
//!
//! The only module that holds a Kafka client. It decides nothing: what to create, grow, configure
//! or delete comes from `plan`. Every call has a deadline, every failure is a [`TopicError`] with a
//! bounded [`ErrorCategory`] for metrics, and nothing here logs or formats a credential.
//!
//! Config changes: rdkafka 0.39 exposes only the legacy, non-incremental AlterConfigs, which
//! replaces every dynamic config of a topic with the ones sent (KIP-339); IncrementalAlterConfigs
//! exists only as a raw `rdkafka-sys` binding, which would need `unsafe`. So
//! [`KafkaTopicAdmin::alter_config`] reads the topic's current dynamic configs right before writing
//! and sends them merged with the declared keys: keys the operator does not manage survive. Two
//! costs, both accepted: a change made by someone else between the read and the write is lost (the
//! window is one round trip), and a topic with a sensitive dynamic config, which cannot be read
//! back, is refused rather than wiped.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use orderpipe_api::v1alpha1::KafkaSpec;
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigResource, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication, TopicResult,
};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use tokio::task::JoinError;

use super::connection::{AdminConnection, ConnectionKey, ResolvedKafkaSecrets};
use super::plan::{ObservedTopic, TopicQuery};

/// What Kafka needs to do for the pipeline's topics. Methods are `async` with a `Send` future (the
/// controller's reconcile future must be `Send`); implementations may write `async fn`.
pub trait TopicAdmin: Sync {
    /// The queried topics that exist, with the queried config keys' effective values.
    fn describe(
        &self,
        query: &TopicQuery,
    ) -> impl Future<Output = Result<BTreeMap<String, ObservedTopic>, TopicError>> + Send;

    /// Creates a topic; `replication_factor: None` uses the broker default. A topic that already
    /// exists (someone raced us) is [`Effect::AlreadyInPlace`].
    fn create(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: Option<i16>,
        config: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Effect, TopicError>> + Send;

    /// Grows a topic to `to` partitions in total.
    fn add_partitions(
        &self,
        name: &str,
        to: i32,
    ) -> impl Future<Output = Result<Effect, TopicError>> + Send;

    /// Sets these config keys and keeps every other config of the topic.
    fn alter_config(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Effect, TopicError>> + Send;

    /// Deletes a topic and its records. A topic that is already gone is [`Effect::AlreadyInPlace`].
    fn delete(&self, name: &str) -> impl Future<Output = Result<Effect, TopicError>> + Send;
}

/// What an admin call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The change was made.
    Applied,
    /// Nothing to do: the topic was created by someone else first, or was already deleted.
    AlreadyInPlace,
}

/// The admin call that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Describe,
    Create,
    AddPartitions,
    AlterConfig,
    Delete,
}

impl Operation {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Describe => "describe",
            Self::Create => "create",
            Self::AddPartitions => "add_partitions",
            Self::AlterConfig => "alter_config",
            Self::Delete => "delete",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Describe => "describing",
            Self::Create => "creating",
            Self::AddPartitions => "adding partitions to",
            Self::AlterConfig => "altering the config of",
            Self::Delete => "deleting",
        })
    }
}

/// A failed Kafka admin interaction. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// `spec.kafka` and the resolved credentials do not make a usable connection.
    #[error("invalid Kafka connection settings: {0}")]
    Connection(String),
    /// librdkafka refused to build the client, e.g. a certificate that does not parse.
    #[error("creating the Kafka admin client failed: {0}")]
    Client(String),
    /// The broker or librdkafka answered with an error code.
    #[error("{op} topic {topic} failed: {code}")]
    Broker {
        op: Operation,
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// librdkafka failed without an error code.
    #[error("{op} topic {topic} failed: {source}")]
    Kafka {
        op: Operation,
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// No answer before the deadline.
    #[error("{op} topic {topic}: no answer within {timeout:?}")]
    Timeout {
        op: Operation,
        topic: String,
        timeout: Duration,
    },
    /// The broker accepted the change, but describing the topic did not show it in time.
    #[error(
        "{op} topic {topic}: accepted, but describing the topic did not show the change within \
         {timeout:?}"
    )]
    Unconfirmed {
        op: Operation,
        topic: String,
        timeout: Duration,
    },
    /// The answer did not mention the topic asked about.
    #[error("{op} topic {topic}: the broker's answer did not mention the topic")]
    Unanswered { op: Operation, topic: String },
    /// A request the admin will not send, because it would do harm.
    #[error("{op} topic {topic} refused: {why}")]
    Refused {
        op: Operation,
        topic: String,
        why: String,
    },
    /// librdkafka could not reach the brokers (a local error code such as "broker transport
    /// failure"); `cause` is what the client last reported about its connections, e.g. "SASL
    /// authentication error: Authentication failed: Invalid username or password", which the
    /// request's own error leaves out.
    #[error("{op} topic {topic} failed: {code}; the client reports: {cause}")]
    Unreachable {
        op: Operation,
        topic: String,
        code: RDKafkaErrorCode,
        cause: String,
    },
    /// The blocking metadata call ended without a result.
    #[error("{op} topic {topic}: the metadata task did not complete: {source}")]
    Blocking {
        op: Operation,
        topic: String,
        #[source]
        source: JoinError,
    },
}

/// Bounded classification of a [`TopicError`], for metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCategory {
    /// No broker reachable (DNS, TCP, no leader or controller).
    Unreachable,
    /// TLS, SASL or ACLs refused us.
    Auth,
    /// The request or the settings are wrong; retrying the same will fail the same way.
    Invalid,
    Timeout,
    Other,
}

impl ErrorCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Auth => "auth",
            Self::Invalid => "invalid",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

impl TopicError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Self::Connection(_) | Self::Client(_) | Self::Refused { .. } => ErrorCategory::Invalid,
            Self::Timeout { .. } | Self::Unconfirmed { .. } => ErrorCategory::Timeout,
            Self::Broker { code, .. } | Self::Unreachable { code, .. } => category_of(*code),
            Self::Kafka { .. } | Self::Unanswered { .. } | Self::Blocking { .. } => {
                ErrorCategory::Other
            }
        }
    }

    /// The topic the failed call was about; `None` for connection and client errors.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Self::Connection(_) | Self::Client(_) => None,
            Self::Broker { topic, .. }
            | Self::Unreachable { topic, .. }
            | Self::Kafka { topic, .. }
            | Self::Timeout { topic, .. }
            | Self::Unconfirmed { topic, .. }
            | Self::Unanswered { topic, .. }
            | Self::Refused { topic, .. }
            | Self::Blocking { topic, .. } => Some(topic),
        }
    }

    fn kafka(op: Operation, topic: &str, error: KafkaError) -> Self {
        let code = match &error {
            KafkaError::AdminOp(code) => Some(*code),
            other => other.rdkafka_error_code(),
        };
        let topic = topic.to_owned();
        match code {
            Some(code) => Self::Broker { op, topic, code },
            None => Self::Kafka {
                op,
                topic,
                source: error,
            },
        }
    }

    fn client(error: KafkaError) -> Self {
        match error {
            // Its Display includes the rejected value, which may be a private key or a password.
            KafkaError::ClientConfig(_, description, key, _value) => {
                Self::Client(format!("setting {key}: {description}"))
            }
            other => Self::Client(other.to_string()),
        }
    }
}

fn category_of(code: RDKafkaErrorCode) -> ErrorCategory {
    use RDKafkaErrorCode as Code;
    match code {
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::Resolve
        | Code::NetworkException
        | Code::BrokerNotAvailable
        | Code::LeaderNotAvailable
        | Code::NotController
        | Code::UnknownBroker => ErrorCategory::Unreachable,
        Code::Authentication
        | Code::SaslAuthenticationFailed
        | Code::SSL
        | Code::UnsupportedSASLMechanism
        | Code::IllegalSASLState
        | Code::TopicAuthorizationFailed
        | Code::ClusterAuthorizationFailed => ErrorCategory::Auth,
        Code::RequestTimedOut | Code::OperationTimedOut | Code::TimedOutQueue => {
            ErrorCategory::Timeout
        }
        Code::InvalidTopic
        | Code::InvalidPartitions
        | Code::InvalidReplicationFactor
        | Code::InvalidReplicaAssignment
        | Code::InvalidConfig
        | Code::InvalidRequest
        | Code::PolicyViolation
        | Code::TopicDeletionDisabled
        | Code::UnsupportedVersion
        | Code::InvalidArgument => ErrorCategory::Invalid,
        _ => ErrorCategory::Other,
    }
}

/// How long a probe may listen for the reason a connection fails.
const PROBE_TIME: Duration = Duration::from_secs(3);

/// Listens to what librdkafka reports about broker connections (authentication, TLS, name
/// resolution) and keeps the first error. A request that fails for such a reason only says
/// "broker transport failure", useless in a pipeline's status; and an `AdminClient` never hands
/// its logs to its context (rust-rdkafka routes them to a queue only consumers and producers
/// poll), so [`connection_failure`] asks a short-lived producer. librdkafka's messages name
/// brokers and mechanisms, never credentials.
#[derive(Debug, Default)]
struct ProbeContext {
    failure: Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {
    /// Connection failures arrive as error-level `FAIL` logs.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let error = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        );
        if error && fac == "FAIL" {
            self.remember(log_message);
        }
    }

    fn error(&self, _error: KafkaError, reason: &str) {
        self.remember(reason);
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    /// The probe sends nothing.
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

impl ProbeContext {
    fn remember(&self, cause: &str) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert_with(|| cause.to_owned());
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Why clients with `config` cannot talk to the brokers, if a fresh producer (which connects to
/// the bootstrap brokers at once) hears a reason within [`PROBE_TIME`]. Blocks.
fn connection_failure(config: &ClientConfig) -> Option<String> {
    let producer: BaseProducer<ProbeContext> =
        config.create_with_context(ProbeContext::default()).ok()?;
    let deadline = Instant::now() + PROBE_TIME;
    while Instant::now() < deadline {
        producer.poll(Duration::from_millis(100));
        if let Some(failure) = producer.context().failure() {
            return Some(failure);
        }
    }
    None
}

/// Whether `error` carries a local error code: librdkafka could not reach the brokers.
fn is_local(error: &TopicError) -> bool {
    matches!(error, TopicError::Broker { code, .. } if is_local_code(*code))
}

/// librdkafka's own codes are negative; the brokers' are not.
fn is_local_code(code: RDKafkaErrorCode) -> bool {
    (code as i32) < 0
}

/// A local failure (see [`is_local`]) becomes [`TopicError::Unreachable`] when a `cause` was found;
/// other failures stay as they are.
fn explained(error: TopicError, cause: Option<String>) -> TopicError {
    match (error, cause) {
        (TopicError::Broker { op, topic, code }, Some(cause)) if is_local_code(code) => {
            TopicError::Unreachable {
                op,
                topic,
                code,
                cause,
            }
        }
        (error, _) => error,
    }
}

/// Added to the request timeout for our own deadline, so librdkafka's timeout (with its precise
/// error) normally fires first.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// [`TopicAdmin`] over an rdkafka `AdminClient`. Cheap to clone: clones share the client.
#[derive(Clone)]
pub struct KafkaTopicAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
    /// The client's config, for a probe that finds out why a connection fails.
    config: Arc<ClientConfig>,
    /// Per request: librdkafka's request and operation timeout, and our own deadline.
    timeout: Duration,
}

impl fmt::Debug for KafkaTopicAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTopicAdmin")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaTopicAdmin {
    /// Builds a client; it connects lazily, on its first request. Prefer [`AdminPool::get`]: a new
    /// client per reconcile would open new broker connections every time.
    pub fn connect(connection: &AdminConnection, timeout: Duration) -> Result<Self, TopicError> {
        let config = connection.client_config();
        let client = config.create().map_err(TopicError::client)?;
        Ok(Self {
            client: Arc::new(client),
            config: Arc::new(config),
            timeout,
        })
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
        match self.call(op, topic, request).await?.into_iter().next() {
            Some(Ok(_)) => Ok(Effect::Applied),
            Some(Err((_, code))) if Some(code) == benign => Ok(Effect::AlreadyInPlace),
            Some(Err((_, code))) => Err(TopicError::Broker {
                op,
                topic: topic.to_owned(),
                code,
            }),
            None => Err(TopicError::Unanswered {
                op,
                topic: topic.to_owned(),
            }),
        }
    }

    /// Partitions and replication factor of each named topic that exists. librdkafka's metadata
    /// call blocks its thread, so it runs on the blocking pool.
    async fn shapes(&self, names: Vec<String>) -> Result<Vec<Shape>, TopicError> {
        let client = Arc::clone(&self.client);
        let timeout = self.timeout;
        let topics = names.join(", ");
        let task = tokio::task::spawn_blocking(move || {
            let mut shapes = Vec::new();
            for name in names {
                shapes.extend(shape_of(&client, name, timeout)?);
            }
            Ok(shapes)
        });
        match task.await {
            Ok(Ok(shapes)) => Ok(shapes),
            Ok(Err(error)) => Err(self.diagnosed(error).await),
            Err(source) => Err(TopicError::Blocking {
                op: Operation::Describe,
                topic: topics,
                source,
            }),
        }
    }

    /// `error`, with the reason the brokers are unreachable when it is about that (see
    /// [`connection_failure`]); the probe blocks, so it runs on the blocking pool.
    async fn diagnosed(&self, error: TopicError) -> TopicError {
        if !is_local(&error) {
            return error;
        }
        let config = Arc::clone(&self.config);
        let probe = tokio::task::spawn_blocking(move || connection_failure(&config));
        explained(error, probe.await.ok().flatten())
    }

    /// The current configuration entries of one topic.
    async fn config_of(&self, op: Operation, topic: &str) -> Result<ConfigResource, TopicError> {
        let resources = [ResourceSpecifier::Topic(topic)];
        let options = self.options();
        let request = self.client.describe_configs(&resources, &options);
        match self.call(op, topic, request).await?.into_iter().next() {
            Some(Ok(resource)) => Ok(resource),
            Some(Err(code)) => Err(TopicError::Broker {
                op,
                topic: topic.to_owned(),
                code,
            }),
            None => Err(TopicError::Unanswered {
                op,
                topic: topic.to_owned(),
            }),
        }
    }
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
            || async { Ok::<_, TopicError>(self.shapes(vec![name.to_owned()]).await?.pop()) };
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

/// Pause between two looks at a change that is not visible yet.
const SETTLE_POLL: Duration = Duration::from_millis(100);

struct Shape {
    name: String,
    partitions: i32,
    replication_factor: i16,
}

/// `None` when the topic does not exist.
fn shape_of(
    client: &AdminClient<DefaultClientContext>,
    name: String,
    timeout: Duration,
) -> Result<Option<Shape>, TopicError> {
    let metadata = client
        .inner()
        .fetch_metadata(Some(&name), timeout)
        .map_err(|error| TopicError::kafka(Operation::Describe, &name, error))?;
    let Some(topic) = metadata.topics().iter().find(|topic| topic.name() == name) else {
        return Ok(None);
    };
    match topic.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
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
    Ok(Some(Shape {
        partitions: i32::try_from(partitions.len()).unwrap_or(i32::MAX),
        replication_factor: i16::try_from(replicas).unwrap_or(i16::MAX),
        name,
    }))
}

impl TopicAdmin for KafkaTopicAdmin {
    async fn describe(
        &self,
        query: &TopicQuery,
    ) -> Result<BTreeMap<String, ObservedTopic>, TopicError> {
        let shapes = self.shapes(query.names.iter().cloned().collect()).await?;
        if shapes.is_empty() {
            return Ok(BTreeMap::new());
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
        Ok(observed)
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
        match self.call(op, name, request).await?.into_iter().next() {
            Some(Ok(_)) => self.settle(op, name, Visible::Config(set)).await,
            Some(Err((_, code))) => Err(TopicError::Broker {
                op,
                topic: name.to_owned(),
                code,
            }),
            None => Err(TopicError::Unanswered {
                op,
                topic: name.to_owned(),
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
        close(idle);
        admin
    }
}

/// Dropping a client joins its threads and closes its connections, which blocks: keep that off the
/// async workers when there are any.
fn close(idle: Vec<Pooled>) {
    if idle.is_empty() {
        return;
    }
    tracing::info!(clients = idle.len(), "closing idle Kafka admin clients");
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(idle));
        }
        Err(_) => drop(idle),
    }
}

#[cfg(test)]
mod tests {
    use orderpipe_api::contract::SecretString;
    use orderpipe_api::v1alpha1::{BootstrapServer, KafkaTls, SecretName};
    use rdkafka::types::RDKafkaConfRes;

    use super::*;
    use crate::topics::connection::ClientCertificate;

    fn plaintext(bootstrap: &str) -> KafkaSpec {
        KafkaSpec {
            bootstrap_servers: vec![BootstrapServer(bootstrap.into())],
            tls: None,
            sasl: None,
        }
    }

    #[test]
    fn error_categories_are_bounded_and_follow_the_code() {
        let broker = |code| TopicError::Broker {
            op: Operation::Create,
            topic: "t".into(),
            code,
        };
        let cases = [
            (RDKafkaErrorCode::AllBrokersDown, ErrorCategory::Unreachable),
            (
                RDKafkaErrorCode::BrokerTransportFailure,
                ErrorCategory::Unreachable,
            ),
            (
                RDKafkaErrorCode::SaslAuthenticationFailed,
                ErrorCategory::Auth,
            ),
            (
                RDKafkaErrorCode::TopicAuthorizationFailed,
                ErrorCategory::Auth,
            ),
            (
                RDKafkaErrorCode::InvalidReplicationFactor,
                ErrorCategory::Invalid,
            ),
            (RDKafkaErrorCode::PolicyViolation, ErrorCategory::Invalid),
            (RDKafkaErrorCode::RequestTimedOut, ErrorCategory::Timeout),
            (RDKafkaErrorCode::OperationTimedOut, ErrorCategory::Timeout),
            (RDKafkaErrorCode::KafkaStorageError, ErrorCategory::Other),
        ];
        for (code, category) in cases {
            assert_eq!(broker(code).category(), category, "{code:?}");
        }
        let timeout = TopicError::Timeout {
            op: Operation::Delete,
            topic: "t".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.category().as_str(), "timeout");
        assert_eq!(
            TopicError::Connection("x".into()).category().as_str(),
            "invalid"
        );
    }

    #[test]
    fn metadata_errors_keep_their_code() {
        let error = TopicError::kafka(
            Operation::Describe,
            "orders",
            KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown),
        );
        assert_eq!(error.category(), ErrorCategory::Unreachable);
        assert_eq!(error.topic(), Some("orders"));
        let error = TopicError::kafka(
            Operation::Create,
            "orders",
            KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut),
        );
        assert_eq!(error.category(), ErrorCategory::Timeout);
    }

    #[test]
    fn a_local_failure_is_explained_by_the_reason_the_brokers_are_unreachable() {
        let failure = |code| TopicError::Broker {
            op: Operation::Describe,
            topic: "orders".into(),
            code,
        };
        let transport = RDKafkaErrorCode::BrokerTransportFailure;
        let sasl = Some("SASL authentication error: Authentication failed".to_owned());
        let explained_transport = explained(failure(transport), sasl.clone());
        assert_eq!(
            explained_transport.to_string(),
            "describing topic orders failed: BrokerTransportFailure (Local: Broker transport \
             failure); the client reports: SASL authentication error: Authentication failed"
        );
        assert_eq!(
            explained_transport.category(),
            failure(transport).category()
        );
        assert!(matches!(
            explained(failure(transport), None),
            TopicError::Broker { .. }
        ));
        assert!(
            matches!(
                explained(failure(RDKafkaErrorCode::TopicAuthorizationFailed), sasl),
                TopicError::Broker { .. }
            ),
            "a broker's own answer needs no explaining"
        );
    }

    #[test]
    fn a_probe_hears_why_the_brokers_refuse_a_client() {
        // A broker address nobody listens on: the probe reports the connection failure.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", format!("127.0.0.1:{port}"));
        let failure = connection_failure(&config).expect("a reason");
        assert!(failure.contains("Connection refused"), "{failure}");
    }

    #[test]
    fn client_config_errors_do_not_echo_the_rejected_value() {
        let error = TopicError::client(KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value".into(),
            "sasl.password".into(),
            "hunter2-password".into(),
        ));
        let printed = format!("{error} {error:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("sasl.password"), "{printed}");
    }

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
        let spec = plaintext("127.0.0.1:9");
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
