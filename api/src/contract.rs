//! The operator-to-worker contract: everything a worker pod receives, defined once.
//!
//! The operator calls [`render_env`] to build the container's environment; the kubelet resolves the
//! field and Secret references; the worker calls [`WorkerConfig::from_env`] to read it back, with errors
//! that name the variable. Names of derived Kafka objects (consumer group, state topic, transactional
//! id) live in [`naming`] so both sides agree. This module does no I/O: the worker passes its own
//! environment lookup in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration as StdDuration;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector};

use crate::v1alpha1::{Duration, OrderPipeline, Processor, SaslMechanism, StageSpec};

/// Arguments of the worker container: the `run` subcommand reads everything else from the env.
pub const WORKER_ARGS: [&str; 1] = ["run"];
/// Port of `/metrics`, `/healthz` and `/readyz` in the worker container.
pub const METRICS_PORT: u16 = 9090;
/// Where the operator mounts the Kafka CA certificate (Secret key projected to this file name).
pub const TLS_MOUNT_DIR: &str = "/etc/orderpipe/kafka-tls";
/// File name of the CA certificate inside [`TLS_MOUNT_DIR`].
pub const TLS_CA_FILE: &str = "ca.crt";
/// Where the operator mounts the client certificate Secret (kubernetes.io/tls: tls.crt, tls.key).
pub const TLS_CLIENT_MOUNT_DIR: &str = "/etc/orderpipe/kafka-client-tls";

/// Environment variable names of the contract.
pub mod env {
    pub const PIPELINE: &str = "ORDERPIPE_PIPELINE";
    pub const NAMESPACE: &str = "ORDERPIPE_NAMESPACE";
    pub const STAGE: &str = "ORDERPIPE_STAGE";
    pub const POD_NAME: &str = "ORDERPIPE_POD_NAME";
    pub const PROCESSOR: &str = "ORDERPIPE_PROCESSOR";
    pub const BOOTSTRAP_SERVERS: &str = "ORDERPIPE_KAFKA_BOOTSTRAP_SERVERS";
    pub const TLS_CA_FILE: &str = "ORDERPIPE_KAFKA_TLS_CA_FILE";
    pub const TLS_CLIENT_DIR: &str = "ORDERPIPE_KAFKA_TLS_CLIENT_DIR";
    pub const TLS_ENABLED: &str = "ORDERPIPE_KAFKA_TLS";
    pub const SASL_MECHANISM: &str = "ORDERPIPE_KAFKA_SASL_MECHANISM";
    pub const SASL_USERNAME: &str = "ORDERPIPE_KAFKA_SASL_USERNAME";
    pub const SASL_PASSWORD: &str = "ORDERPIPE_KAFKA_SASL_PASSWORD";
    pub const INPUT_TOPIC: &str = "ORDERPIPE_INPUT_TOPIC";
    pub const OUTPUTS: &str = "ORDERPIPE_OUTPUTS";
    pub const DEAD_LETTER_TOPIC: &str = "ORDERPIPE_DEAD_LETTER_TOPIC";
    pub const STATE_TOPIC: &str = "ORDERPIPE_STATE_TOPIC";
    pub const CONSUMER_GROUP: &str = "ORDERPIPE_CONSUMER_GROUP";
    pub const METRICS_PORT: &str = "ORDERPIPE_METRICS_PORT";
    pub const SHUTDOWN_GRACE_SECONDS: &str = "ORDERPIPE_SHUTDOWN_GRACE_SECONDS";
    pub const COMMIT_INTERVAL_MS: &str = "ORDERPIPE_COMMIT_INTERVAL_MS";
    pub const DELIVERY: &str = "ORDERPIPE_DELIVERY";
    pub const WEBHOOK_URL: &str = "ORDERPIPE_WEBHOOK_URL";
    pub const WEBHOOK_AUTHORIZATION: &str = "ORDERPIPE_WEBHOOK_AUTHORIZATION";
    pub const WEBHOOK_TIMEOUT_MS: &str = "ORDERPIPE_WEBHOOK_TIMEOUT_MS";
    pub const NOTIFY_CHANNEL: &str = "ORDERPIPE_NOTIFY_CHANNEL";
    pub const RETRY_MAX_ATTEMPTS: &str = "ORDERPIPE_RETRY_MAX_ATTEMPTS";
    pub const RETRY_INITIAL_BACKOFF_MS: &str = "ORDERPIPE_RETRY_INITIAL_BACKOFF_MS";
    pub const RETRY_MAX_BACKOFF_MS: &str = "ORDERPIPE_RETRY_MAX_BACKOFF_MS";
}

/// Defaults applied when the spec leaves a setting out.
pub mod defaults {
    use std::time::Duration;

    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
    pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
    pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
    pub const NOTIFY_CHANNEL: &str = "webhook";
    pub const RETRY_MAX_ATTEMPTS: u32 = 8;
    pub const RETRY_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
    pub const RETRY_MAX_BACKOFF: Duration = Duration::from_secs(30);
}

/// Metric and label names the worker exports and the operator's children query: the canary
/// analysis (error and dead-letter share) and the autoscaler (consumer lag). Renaming one silently
/// breaks canaries and autoscaling, so both sides use these constants.
///
/// Names are as Prometheus stores them; prometheus-client appends `_total` to a counter's name, so
/// the worker registers counters without that suffix. Every series carries [`labels::PIPELINE`] and
/// [`labels::STAGE`] (the pipeline and stage names, bounded by the CRD); `outcome` takes only the
/// values in [`outcome`]. Prometheus adds the `namespace` target label when it scrapes.
pub mod metrics {
    /// Counter: records handed to the processor, re-deliveries after an aborted transaction included.
    pub const RECORDS_CONSUMED: &str = "orderpipe_records_consumed_total";
    /// Counter: records finished, by [`labels::OUTCOME`].
    pub const RECORDS_PROCESSED: &str = "orderpipe_records_processed_total";
    /// Gauge: records on the stage's input topic its consumer group has not consumed yet (high
    /// watermark minus committed offset), per worker. The autoscaler does not read it: the
    /// operator measures each stage's lag in Kafka and serves it under this name through the
    /// External metrics API (also while the stage has no pods).
    pub const CONSUMER_LAG: &str = "orderpipe_consumer_lag";
    /// Counter: records written to the dead-letter topic, by [`labels::REASON`] (the stable
    /// dead-letter reason codes of `orderpipe-orders`).
    pub const DEAD_LETTERS: &str = "orderpipe_dead_letters_total";
    /// Counter: transactions (or, at-least-once, offset commits) by [`labels::RESULT`]:
    /// `committed` or `aborted`.
    pub const TRANSACTIONS: &str = "orderpipe_transactions_total";
    /// Counter: blocking retries of a transient failure (webhook attempts after the first).
    pub const RETRIES: &str = "orderpipe_retries_total";
    /// Counter: webhook attempts by [`labels::RESULT`] (`2xx`, `4xx`, `429`, `5xx`, `timeout`...).
    pub const WEBHOOK_REQUESTS: &str = "orderpipe_webhook_requests_total";
    /// Counter: consumer group rebalances by [`labels::KIND`]: `assigned`, `revoked`, `lost`.
    pub const REBALANCES: &str = "orderpipe_rebalances_total";
    /// Gauge: per-key states a stateful stage holds for an input partition, by
    /// [`labels::PARTITION`] (validate: live dedup records; status: orders not yet forgotten).
    pub const STATE_ENTRIES: &str = "orderpipe_state_entries";
    /// Gauge: bytes of those states (keys plus changelog records), by [`labels::PARTITION`].
    pub const STATE_BYTES: &str = "orderpipe_state_bytes";
    /// Gauge: input partitions currently assigned to this worker.
    pub const ASSIGNED_PARTITIONS: &str = "orderpipe_assigned_partitions";
    /// Histogram: seconds from handing a record to the processor to its decision (webhook
    /// attempts and retry waits included).
    pub const PROCESSING_DURATION: &str = "orderpipe_processing_duration_seconds";

    /// Label names.
    pub mod labels {
        pub const PIPELINE: &str = "pipeline";
        pub const STAGE: &str = "stage";
        pub const OUTCOME: &str = "outcome";
        /// Input partition number (bounded by the topic's partition count).
        pub const PARTITION: &str = "partition";
        pub const REASON: &str = "reason";
        pub const RESULT: &str = "result";
        pub const KIND: &str = "kind";
    }

    /// Values of [`labels::OUTCOME`]: what became of a record. Processors' finer outcomes map onto
    /// these (e.g. validate's `validated` and status's `transitioned` are `processed`).
    pub mod outcome {
        /// Handled and its outputs written.
        pub const PROCESSED: &str = "processed";
        /// Refused on business grounds and written to the stage's rejected output.
        pub const REJECTED: &str = "rejected";
        /// Written to the dead-letter topic.
        pub const DEAD_LETTERED: &str = "dead_lettered";
        /// Processing failed and the transaction was aborted; the record is consumed again.
        pub const ERROR: &str = "error";
        /// Already processed (same order id, or an event seen before); nothing written.
        pub const DUPLICATE: &str = "duplicate";
        /// Not for this stage (e.g. an event type it does not handle); nothing written.
        pub const IGNORED: &str = "ignored";

        pub const ALL: [&str; 6] = [
            PROCESSED,
            REJECTED,
            DEAD_LETTERED,
            ERROR,
            DUPLICATE,
            IGNORED,
        ];
    }
}

/// Names of the objects derived from a pipeline, shared by the operator and the worker.
pub mod naming {
    /// Deployment, Rollout, Service, HPA and PDB name of a stage.
    pub fn workload(pipeline: &str, stage: &str) -> String {
        format!("{pipeline}-{stage}")
    }

    /// Consumer group of a stage; namespaced so two pipelines never share a group by accident.
    pub fn consumer_group(namespace: &str, pipeline: &str, stage: &str) -> String {
        format!("orderpipe.{namespace}.{pipeline}.{stage}")
    }

    /// The compacted changelog topic holding a stateful stage's per-key state (operator-managed,
    /// co-partitioned with the stage's input topic).
    pub fn state_topic(namespace: &str, pipeline: &str, stage: &str) -> String {
        format!("orderpipe.{namespace}.{pipeline}.{stage}.state")
    }

    /// Transactional id of one worker: stable across restarts of the same pod, so a restarted
    /// process fences its previous incarnation.
    pub fn transactional_id(consumer_group: &str, pod_name: &str) -> String {
        format!("{consumer_group}.{pod_name}")
    }
}

/// Whether a stage keeps per-key state in a changelog topic.
pub fn is_stateful(processor: Processor) -> bool {
    matches!(processor, Processor::Validate | Processor::Status)
}

/// Validate's dedup window, in record time: how long a validated orderId turns a re-submission into
/// a duplicate. The worker's validator uses it, and the operator keeps validate's state topic that
/// long (see [`state_topic_config`]).
pub const DEDUP_WINDOW: StdDuration = StdDuration::from_secs(7 * 24 * 3600);

/// Topic config of a stateful stage's state topic. Compacted: a restore only needs each key's
/// latest state. Validate's dedup records also expire after [`DEDUP_WINDOW`], so its topic deletes
/// segments older than that (`compact,delete`) and stays bounded however many orders pass; status
/// keeps an order's state as long as the order lives, so compaction alone.
pub fn state_topic_config(processor: Processor) -> BTreeMap<String, String> {
    let mut config = BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]);
    if processor == Processor::Validate {
        config.insert("cleanup.policy".to_owned(), "compact,delete".to_owned());
        config.insert(
            "retention.ms".to_owned(),
            DEDUP_WINDOW.as_millis().to_string(),
        );
    }
    config
}

/// Processing guarantee of a worker. Exactly-once is the product; at-least-once exists so the
/// benchmark can measure what the transactions cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Delivery {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

impl Delivery {
    fn as_str(self) -> &'static str {
        match self {
            Self::ExactlyOnce => "exactly-once",
            Self::AtLeastOnce => "at-least-once",
        }
    }
}

/// A secret value read from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for handing to the Kafka client or an HTTP header. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// SASL credentials as the worker receives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: SecretString,
}

/// Kafka connection settings as the worker receives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConnection {
    pub bootstrap_servers: String,
    /// Use TLS. The CA file is optional (system trust store otherwise).
    pub tls: bool,
    pub tls_ca_file: Option<PathBuf>,
    /// Directory with `tls.crt` and `tls.key` for mutual TLS.
    pub tls_client_dir: Option<PathBuf>,
    pub sasl: Option<SaslConfig>,
}

impl KafkaConnection {
    /// A plaintext connection without authentication (the load generator's default, tests).
    pub fn plaintext(bootstrap_servers: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.to_owned(),
            tls: false,
            tls_ca_file: None,
            tls_client_dir: None,
            sasl: None,
        }
    }
}

/// Notify processor settings as the worker receives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyConfig {
    pub url: String,
    pub authorization: Option<SecretString>,
    pub timeout: StdDuration,
    pub channel: String,
    pub max_attempts: u32,
    pub initial_backoff: StdDuration,
    pub max_backoff: StdDuration,
}

/// Everything one worker needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    pub pipeline: String,
    pub namespace: String,
    pub stage: String,
    pub pod_name: String,
    pub processor: Processor,
    pub kafka: KafkaConnection,
    pub input_topic: String,
    /// Output name (e.g. `validated`) to topic.
    pub outputs: BTreeMap<String, String>,
    pub dead_letter_topic: String,
    pub state_topic: Option<String>,
    pub consumer_group: String,
    pub metrics_port: u16,
    pub shutdown_grace: StdDuration,
    pub commit_interval: StdDuration,
    pub delivery: Delivery,
    pub notify: Option<NotifyConfig>,
}

impl WorkerConfig {
    /// Transactional id of this worker process.
    pub fn transactional_id(&self) -> String {
        naming::transactional_id(&self.consumer_group, &self.pod_name)
    }

    /// The topic of a named output.
    pub fn output(&self, name: &str) -> Option<&str> {
        self.outputs.get(name).map(String::as_str)
    }

    /// Reads and validates the contract from an environment lookup (`std::env::var` in the binary).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ContractError> {
        let vars = Vars(&lookup);
        let processor = vars.parse(env::PROCESSOR, parse_processor)?;
        let notify = if processor == Processor::Notify {
            Some(NotifyConfig {
                url: vars.required(env::WEBHOOK_URL)?,
                authorization: vars.optional(env::WEBHOOK_AUTHORIZATION).map(SecretString),
                timeout: vars.millis_or(env::WEBHOOK_TIMEOUT_MS, defaults::WEBHOOK_TIMEOUT)?,
                channel: vars
                    .optional(env::NOTIFY_CHANNEL)
                    .unwrap_or_else(|| defaults::NOTIFY_CHANNEL.into()),
                max_attempts: vars.parse_or(
                    env::RETRY_MAX_ATTEMPTS,
                    defaults::RETRY_MAX_ATTEMPTS,
                    parse_positive,
                )?,
                initial_backoff: vars.millis_or(
                    env::RETRY_INITIAL_BACKOFF_MS,
                    defaults::RETRY_INITIAL_BACKOFF,
                )?,
                max_backoff: vars
                    .millis_or(env::RETRY_MAX_BACKOFF_MS, defaults::RETRY_MAX_BACKOFF)?,
            })
        } else {
            None
        };
        let sasl = match vars.optional(env::SASL_MECHANISM) {
            None => None,
            Some(mechanism) => Some(SaslConfig {
                mechanism: parse_sasl_mechanism(&mechanism)
                    .map_err(|rule| ContractError::invalid(env::SASL_MECHANISM, rule))?,
                username: vars.required(env::SASL_USERNAME)?,
                password: SecretString(vars.required(env::SASL_PASSWORD)?),
            }),
        };
        Ok(Self {
            pipeline: vars.required(env::PIPELINE)?,
            namespace: vars.required(env::NAMESPACE)?,
            stage: vars.required(env::STAGE)?,
            pod_name: vars.required(env::POD_NAME)?,
            processor,
            kafka: KafkaConnection {
                bootstrap_servers: vars.required(env::BOOTSTRAP_SERVERS)?,
                tls: vars.parse_or(env::TLS_ENABLED, false, parse_bool)?,
                tls_ca_file: vars.optional(env::TLS_CA_FILE).map(PathBuf::from),
                tls_client_dir: vars.optional(env::TLS_CLIENT_DIR).map(PathBuf::from),
                sasl,
            },
            input_topic: vars.required(env::INPUT_TOPIC)?,
            outputs: vars.parse_or(env::OUTPUTS, BTreeMap::new(), parse_outputs)?,
            dead_letter_topic: vars.required(env::DEAD_LETTER_TOPIC)?,
            state_topic: vars.optional(env::STATE_TOPIC),
            consumer_group: vars.required(env::CONSUMER_GROUP)?,
            metrics_port: vars.parse_or(env::METRICS_PORT, METRICS_PORT, parse_port)?,
            shutdown_grace: vars.parse_or(
                env::SHUTDOWN_GRACE_SECONDS,
                defaults::SHUTDOWN_GRACE,
                parse_seconds,
            )?,
            commit_interval: vars.millis_or(env::COMMIT_INTERVAL_MS, defaults::COMMIT_INTERVAL)?,
            delivery: vars.parse_or(env::DELIVERY, Delivery::default(), parse_delivery)?,
            notify,
        })
        .and_then(Self::checked)
    }

    /// Rules across variables, checked after each variable parsed on its own.
    fn checked(self) -> Result<Self, ContractError> {
        if is_stateful(self.processor) && self.state_topic.is_none() {
            return Err(ContractError::Missing {
                var: env::STATE_TOPIC,
                why: "the validate and status processors keep per-order state",
            });
        }
        for required in required_outputs(self.processor) {
            if !self.outputs.contains_key(*required) {
                return Err(ContractError::invalid(
                    env::OUTPUTS,
                    format!(
                        "processor {} needs an output named {required:?}",
                        self.processor.as_str()
                    ),
                ));
            }
        }
        Ok(self)
    }
}

/// Outputs a built-in processor cannot run without (mirrors the CRD's CEL rules).
pub fn required_outputs(processor: Processor) -> &'static [&'static str] {
    match processor {
        Processor::Validate => &["validated", "rejected"],
        Processor::Status => &["changes"],
        Processor::Notify => &["audit"],
        Processor::Custom => &[],
    }
}

/// Why the worker's environment does not satisfy the contract.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContractError {
    #[error("{var} is not set ({why})")]
    Missing {
        var: &'static str,
        why: &'static str,
    },
    #[error("{var} is invalid: {rule}")]
    Invalid { var: &'static str, rule: String },
}

impl ContractError {
    fn invalid(var: &'static str, rule: impl Into<String>) -> Self {
        Self::Invalid {
            var,
            rule: rule.into(),
        }
    }
}

/// Environment lookup with errors that name the variable.
struct Vars<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Vars<'_, F> {
    fn optional(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.is_empty())
    }

    fn required(&self, var: &'static str) -> Result<String, ContractError> {
        self.optional(var).ok_or(ContractError::Missing {
            var,
            why: "rendered by the operator for every worker",
        })
    }

    fn parse<T>(
        &self,
        var: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ContractError> {
        parse(&self.required(var)?).map_err(|rule| ContractError::invalid(var, rule))
    }

    fn parse_or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ContractError> {
        match self.optional(var) {
            None => Ok(default),
            Some(value) => parse(&value).map_err(|rule| ContractError::invalid(var, rule)),
        }
    }

    fn millis_or(
        &self,
        var: &'static str,
        default: StdDuration,
    ) -> Result<StdDuration, ContractError> {
        self.parse_or(var, default, |v| {
            v.parse::<u64>()
                .map(StdDuration::from_millis)
                .map_err(|_| format!("{v:?} is not a whole number of milliseconds"))
        })
    }
}

fn parse_processor(value: &str) -> Result<Processor, String> {
    [
        Processor::Validate,
        Processor::Status,
        Processor::Notify,
        Processor::Custom,
    ]
    .into_iter()
    .find(|p| p.as_str() == value)
    .ok_or_else(|| format!("{value:?} is not one of validate, status, notify, custom"))
}

fn parse_sasl_mechanism(value: &str) -> Result<SaslMechanism, String> {
    [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ]
    .into_iter()
    .find(|m| m.as_kafka_str() == value)
    .ok_or_else(|| format!("{value:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"))
}

fn parse_delivery(value: &str) -> Result<Delivery, String> {
    [Delivery::ExactlyOnce, Delivery::AtLeastOnce]
        .into_iter()
        .find(|d| d.as_str() == value)
        .ok_or_else(|| format!("{value:?} is not one of exactly-once, at-least-once"))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not true or false"))
}

fn parse_positive(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{value:?} is not a positive whole number")),
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a port number"))
}

fn parse_seconds(value: &str) -> Result<StdDuration, String> {
    value
        .parse::<u64>()
        .map(StdDuration::from_secs)
        .map_err(|_| format!("{value:?} is not a whole number of seconds"))
}

/// `name=topic,name=topic` — topic names cannot contain `,` or `=`.
fn parse_outputs(value: &str) -> Result<BTreeMap<String, String>, String> {
    value
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((name, topic)) if !name.is_empty() && !topic.is_empty() => {
                Ok((name.to_string(), topic.to_string()))
            }
            _ => Err(format!("{pair:?} is not name=topic")),
        })
        .collect()
}

fn format_outputs(outputs: &BTreeMap<String, String>) -> String {
    outputs
        .iter()
        .map(|(name, topic)| format!("{name}={topic}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a spec duration (`250ms`, `30s`, `1m30s`, `2h`). The CRD pattern already guarantees the
/// shape; this still rejects overflow instead of panicking.
pub fn parse_duration(duration: &Duration) -> Result<StdDuration, String> {
    let text = duration.0.as_str();
    let mut total = StdDuration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration"))?;
        let (unit_ms, tail) = if let Some(t) = tail.strip_prefix("ms") {
            (1, t)
        } else if let Some(t) = tail.strip_prefix('s') {
            (1_000, t)
        } else if let Some(t) = tail.strip_prefix('m') {
            (60_000, t)
        } else if let Some(t) = tail.strip_prefix('h') {
            (3_600_000, t)
        } else {
            return Err(format!("{text:?} is not a duration (units: ms, s, m, h)"));
        };
        let millis = value
            .checked_mul(unit_ms)
            .ok_or_else(|| format!("{text:?} is too long"))?;
        total = total
            .checked_add(StdDuration::from_millis(millis))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        rest = tail;
    }
    Ok(total)
}

/// The environment of a stage's worker container. Secrets stay references (resolved by the kubelet);
/// pod identity comes from the downward API.
pub fn render_env(pipeline: &OrderPipeline, stage: &StageSpec) -> Result<Vec<EnvVar>, String> {
    let name = pipeline.metadata.name.as_deref().unwrap_or_default();
    let namespace = pipeline.metadata.namespace.as_deref().unwrap_or_default();
    let kafka = &pipeline.spec.kafka;
    let bootstrap: Vec<&str> = kafka
        .bootstrap_servers
        .iter()
        .map(|s| s.0.as_str())
        .collect();
    let outputs: BTreeMap<String, String> = stage
        .outputs
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();

    let mut vars = vec![
        value(env::PIPELINE, name),
        field(env::NAMESPACE, "metadata.namespace"),
        value(env::STAGE, &stage.name),
        field(env::POD_NAME, "metadata.name"),
        value(env::PROCESSOR, stage.processor.as_str()),
        value(env::BOOTSTRAP_SERVERS, &bootstrap.join(",")),
        value(env::INPUT_TOPIC, &stage.input),
        value(env::OUTPUTS, &format_outputs(&outputs)),
        value(env::DEAD_LETTER_TOPIC, &stage.dead_letter),
        value(
            env::CONSUMER_GROUP,
            &naming::consumer_group(namespace, name, &stage.name),
        ),
        value(env::METRICS_PORT, &METRICS_PORT.to_string()),
        value(
            env::SHUTDOWN_GRACE_SECONDS,
            &defaults::SHUTDOWN_GRACE.as_secs().to_string(),
        ),
    ];
    if is_stateful(stage.processor) {
        vars.push(value(
            env::STATE_TOPIC,
            &naming::state_topic(namespace, name, &stage.name),
        ));
    }
    if let Some(tls) = &kafka.tls {
        vars.push(value(env::TLS_ENABLED, "true"));
        if tls.ca_secret_ref.is_some() {
            vars.push(value(
                env::TLS_CA_FILE,
                &format!("{TLS_MOUNT_DIR}/{TLS_CA_FILE}"),
            ));
        }
        if tls.client_cert_secret_name.is_some() {
            vars.push(value(env::TLS_CLIENT_DIR, TLS_CLIENT_MOUNT_DIR));
        }
    }
    if let Some(sasl) = &kafka.sasl {
        let creds = &sasl.credentials_secret_ref;
        vars.push(value(env::SASL_MECHANISM, sasl.mechanism.as_kafka_str()));
        vars.push(secret(
            env::SASL_USERNAME,
            &creds.name.0,
            &creds.username_key.0,
        ));
        vars.push(secret(
            env::SASL_PASSWORD,
            &creds.name.0,
            &creds.password_key.0,
        ));
    }
    if let Some(notify) = &stage.notify {
        let retry = notify.retry.as_ref();
        let millis = |d: Option<&Duration>, default: StdDuration| -> Result<String, String> {
            Ok(d.map(parse_duration)
                .transpose()?
                .unwrap_or(default)
                .as_millis()
                .to_string())
        };
        vars.push(value(env::WEBHOOK_URL, &notify.webhook.url));
        if let Some(auth) = &notify.webhook.auth_secret_ref {
            vars.push(secret(
                env::WEBHOOK_AUTHORIZATION,
                &auth.name.0,
                &auth.key.0,
            ));
        }
        vars.push(value(
            env::WEBHOOK_TIMEOUT_MS,
            &millis(notify.webhook.timeout.as_ref(), defaults::WEBHOOK_TIMEOUT)?,
        ));
        vars.push(value(
            env::NOTIFY_CHANNEL,
            notify
                .channel
                .as_deref()
                .unwrap_or(defaults::NOTIFY_CHANNEL),
        ));
        let attempts = retry
            .and_then(|r| r.max_attempts)
            .map_or(defaults::RETRY_MAX_ATTEMPTS, |n| {
                u32::try_from(n).unwrap_or(defaults::RETRY_MAX_ATTEMPTS)
            });
        vars.push(value(env::RETRY_MAX_ATTEMPTS, &attempts.to_string()));
        vars.push(value(
            env::RETRY_INITIAL_BACKOFF_MS,
            &millis(
                retry.and_then(|r| r.initial_backoff.as_ref()),
                defaults::RETRY_INITIAL_BACKOFF,
            )?,
        ));
        vars.push(value(
            env::RETRY_MAX_BACKOFF_MS,
            &millis(
                retry.and_then(|r| r.max_backoff.as_ref()),
                defaults::RETRY_MAX_BACKOFF,
            )?,
        ));
    }
    Ok(vars)
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout() -> OrderPipeline {
        let text = include_str!("../../config/samples/orderpipe_v1alpha1_checkout.yaml");
        let mut pipeline: OrderPipeline = serde_norway::from_str(text).expect("sample parses");
        pipeline.metadata.namespace = Some("shop".into());
        pipeline
    }

    /// What a kubelet does with the rendered env: substitute field and Secret references.
    fn resolve(
        vars: &[EnvVar],
        pod: &str,
        secrets: &BTreeMap<(&str, &str), &str>,
    ) -> BTreeMap<String, String> {
        vars.iter()
            .map(|var| {
                let resolved = match (&var.value, &var.value_from) {
                    (Some(v), _) => v.clone(),
                    (None, Some(from)) => match (&from.field_ref, &from.secret_key_ref) {
                        (Some(f), _) if f.field_path == "metadata.name" => pod.to_string(),
                        (Some(f), _) if f.field_path == "metadata.namespace" => "shop".into(),
                        (_, Some(s)) => secrets[&(s.name.as_str(), s.key.as_str())].to_string(),
                        _ => panic!("unexpected reference in {}", var.name),
                    },
                    (None, None) => String::new(),
                };
                (var.name.clone(), resolved)
            })
            .collect()
    }

    #[test]
    fn rendered_env_reads_back_into_the_config_the_stage_declares() {
        let pipeline = checkout();
        let stage = pipeline
            .spec
            .stages
            .iter()
            .find(|s| s.name == "notify")
            .expect("notify stage");
        let secrets = BTreeMap::from([(("notify-webhook", "authorization"), "Bearer s3cret")]);
        let env = resolve(
            &render_env(&pipeline, stage).expect("renders"),
            "checkout-notify-7d9f",
            &secrets,
        );
        let config = WorkerConfig::from_env(|k| env.get(k).cloned()).expect("contract holds");

        assert_eq!(config.processor, Processor::Notify);
        assert_eq!(config.namespace, "shop");
        assert_eq!(config.input_topic, "order-status");
        assert_eq!(config.output("audit"), Some("notifications.audit"));
        assert_eq!(config.dead_letter_topic, "orders.dlq");
        assert_eq!(config.consumer_group, "orderpipe.shop.checkout.notify");
        assert_eq!(
            config.transactional_id(),
            "orderpipe.shop.checkout.notify.checkout-notify-7d9f"
        );
        assert_eq!(config.state_topic, None);
        let notify = config.notify.expect("notify settings");
        assert_eq!(
            notify.url,
            "http://notifications.shop.svc:8080/order-updates"
        );
        assert_eq!(
            notify.authorization,
            Some(SecretString::new("Bearer s3cret"))
        );
        assert_eq!(notify.max_backoff, StdDuration::from_secs(30));
        assert_eq!(notify.initial_backoff, StdDuration::from_millis(200));
    }

    #[test]
    fn stateful_stages_get_an_operator_managed_state_topic() {
        let pipeline = checkout();
        let stage = pipeline
            .spec
            .stages
            .iter()
            .find(|s| s.name == "status")
            .expect("status stage");
        let env = resolve(
            &render_env(&pipeline, stage).expect("renders"),
            "p",
            &BTreeMap::new(),
        );
        let config = WorkerConfig::from_env(|k| env.get(k).cloned()).expect("contract holds");
        assert_eq!(
            config.state_topic.as_deref(),
            Some("orderpipe.shop.checkout.status.state")
        );
    }

    #[test]
    fn secrets_are_references_in_the_pod_spec_and_redacted_in_debug_output() {
        let pipeline = checkout();
        let stage = pipeline
            .spec
            .stages
            .iter()
            .find(|s| s.name == "notify")
            .expect("notify stage");
        let vars = render_env(&pipeline, stage).expect("renders");
        let auth = vars
            .iter()
            .find(|v| v.name == env::WEBHOOK_AUTHORIZATION)
            .expect("auth var");
        assert_eq!(auth.value, None, "the Secret's value must never be inlined");

        let secrets = BTreeMap::from([(("notify-webhook", "authorization"), "Bearer s3cret")]);
        let env = resolve(&vars, "p", &secrets);
        let config = WorkerConfig::from_env(|k| env.get(k).cloned()).expect("contract holds");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn missing_and_invalid_variables_are_named_in_the_error() {
        let pipeline = checkout();
        let stage = pipeline
            .spec
            .stages
            .iter()
            .find(|s| s.name == "validate")
            .expect("stage");
        let mut env = resolve(
            &render_env(&pipeline, stage).expect("renders"),
            "p",
            &BTreeMap::new(),
        );

        env.remove(env::INPUT_TOPIC);
        let err = WorkerConfig::from_env(|k| env.get(k).cloned()).expect_err("input missing");
        assert!(
            err.to_string()
                .starts_with("ORDERPIPE_INPUT_TOPIC is not set"),
            "{err}"
        );

        env.insert(env::INPUT_TOPIC.into(), "orders".into());
        env.insert(env::COMMIT_INTERVAL_MS.into(), "soon".into());
        let err = WorkerConfig::from_env(|k| env.get(k).cloned()).expect_err("bad interval");
        assert_eq!(
            err.to_string(),
            "ORDERPIPE_COMMIT_INTERVAL_MS is invalid: \"soon\" is not a whole number of milliseconds"
        );

        env.remove(env::COMMIT_INTERVAL_MS);
        env.insert(env::OUTPUTS.into(), "validated=orders.validated".into());
        let err = WorkerConfig::from_env(|k| env.get(k).cloned()).expect_err("output missing");
        assert!(
            err.to_string()
                .contains("needs an output named \"rejected\""),
            "{err}"
        );
    }

    #[test]
    fn durations_parse_compound_values_and_reject_garbage() {
        let d = |s: &str| parse_duration(&Duration(s.into()));
        assert_eq!(d("1m30s"), Ok(StdDuration::from_secs(90)));
        assert_eq!(d("250ms"), Ok(StdDuration::from_millis(250)));
        assert_eq!(d("2h"), Ok(StdDuration::from_secs(7200)));
        assert!(d("5x").is_err());
        assert!(d("99999999999999999999h").is_err());
    }
}
