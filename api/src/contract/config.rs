//! What a worker reads back from its environment: [`WorkerConfig::from_env`] parses and checks every
//! variable, with errors that name it. No I/O: the worker passes its own environment lookup in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration as StdDuration;

use super::container::METRICS_PORT;
use super::env::parse_outputs;
use super::processors::{is_stateful, required_outputs};
use super::{defaults, env, naming};
use crate::v1alpha1::{Processor, SaslMechanism};

/// Processing guarantee of a worker. Exactly-once is the product; at-least-once exists so the
/// benchmark can measure what the transactions cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Delivery {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

impl Delivery {
    /// The value of `ORDERPIPE_DELIVERY` that selects it.
    pub fn as_str(self) -> &'static str {
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
    /// Reads the connection variables of the contract (`ORDERPIPE_KAFKA_*`): every process the
    /// operator runs against a pipeline's cluster (stage workers, the intake gateway) gets them.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ContractError> {
        Self::read(&Vars(&lookup))
    }

    fn read<F: Fn(&str) -> Option<String>>(vars: &Vars<'_, F>) -> Result<Self, ContractError> {
        let sasl = match vars.optional(env::SASL_MECHANISM) {
            None => None,
            Some(mechanism) => Some(SaslConfig {
                mechanism: parse_sasl_mechanism(&mechanism)
                    .map_err(|malformed| malformed.of(env::SASL_MECHANISM))?,
                username: vars.required(env::SASL_USERNAME)?,
                password: SecretString(vars.required(env::SASL_PASSWORD)?),
            }),
        };
        Ok(Self {
            bootstrap_servers: vars.required(env::BOOTSTRAP_SERVERS)?,
            tls: vars.parse_or(env::TLS_ENABLED, false, parse_bool)?,
            tls_ca_file: vars.optional(env::TLS_CA_FILE).map(PathBuf::from),
            tls_client_dir: vars.optional(env::TLS_CLIENT_DIR).map(PathBuf::from),
            sasl,
        })
    }

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
    /// The OrderPipeline's `metadata.uid`: control records of another incarnation of the pipeline
    /// are ignored. Empty from an operator that predates it.
    pub pipeline_uid: String,
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
    /// The pipeline's control topic (partition growth, `docs/partition-growth.md`); `None` from an
    /// operator that predates it: the worker then processes every partition as it comes.
    pub control_topic: Option<String>,
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
        Ok(Self {
            pipeline: vars.required(env::PIPELINE)?,
            pipeline_uid: vars.optional(env::PIPELINE_UID).unwrap_or_default(),
            namespace: vars.required(env::NAMESPACE)?,
            stage: vars.required(env::STAGE)?,
            pod_name: vars.required(env::POD_NAME)?,
            processor,
            kafka: KafkaConnection::read(&vars)?,
            input_topic: vars.required(env::INPUT_TOPIC)?,
            outputs: vars.parse_or(env::OUTPUTS, BTreeMap::new(), parse_outputs)?,
            dead_letter_topic: vars.required(env::DEAD_LETTER_TOPIC)?,
            state_topic: vars.optional(env::STATE_TOPIC),
            control_topic: vars.optional(env::CONTROL_TOPIC),
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
        for &required in required_outputs(self.processor) {
            if !self.outputs.contains_key(required) {
                return Err(ContractError::MissingOutput {
                    processor: self.processor,
                    output: required,
                });
            }
        }
        Ok(self)
    }
}

/// Why the worker's environment does not satisfy the contract. Every variant names the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContractError {
    #[error("{var} is not set ({why})")]
    Missing {
        var: &'static str,
        why: &'static str,
    },
    /// The value (or, for a list, one item of it) does not have the form the variable needs.
    #[error("{var} is invalid: {value:?} is not {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: String,
    },
    /// The outputs leave out one the processor cannot run without.
    #[error("{} is invalid: processor {} needs an output named {output:?}", env::OUTPUTS, processor.as_str())]
    MissingOutput {
        processor: Processor,
        output: &'static str,
    },
}

/// A value that does not have the form its variable needs, before it is known which variable that
/// is: the parsers below know the form, [`Vars`] knows the variable.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed {
    value: String,
    expected: String,
}

impl Malformed {
    pub(super) fn new(value: &str, expected: impl Into<String>) -> Self {
        Self {
            value: value.to_owned(),
            expected: expected.into(),
        }
    }

    fn of(self, var: &'static str) -> ContractError {
        ContractError::Invalid {
            var,
            value: self.value,
            expected: self.expected,
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
        parse: impl Fn(&str) -> Result<T, Malformed>,
    ) -> Result<T, ContractError> {
        parse(&self.required(var)?).map_err(|malformed| malformed.of(var))
    }

    fn parse_or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl Fn(&str) -> Result<T, Malformed>,
    ) -> Result<T, ContractError> {
        match self.optional(var) {
            None => Ok(default),
            Some(value) => parse(&value).map_err(|malformed| malformed.of(var)),
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
                .map_err(|_| Malformed::new(v, "a whole number of milliseconds"))
        })
    }
}

fn parse_processor(value: &str) -> Result<Processor, Malformed> {
    one_of(
        value,
        [
            Processor::Validate,
            Processor::Status,
            Processor::Notify,
            Processor::Custom,
        ],
        Processor::as_str,
    )
}

fn parse_sasl_mechanism(value: &str) -> Result<SaslMechanism, Malformed> {
    one_of(
        value,
        [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ],
        SaslMechanism::as_kafka_str,
    )
}

fn parse_delivery(value: &str) -> Result<Delivery, Malformed> {
    one_of(
        value,
        [Delivery::ExactlyOnce, Delivery::AtLeastOnce],
        Delivery::as_str,
    )
}

/// The variant named `value`; the error lists the names, taken from the same function that matched.
fn one_of<T: Copy, const N: usize>(
    value: &str,
    all: [T; N],
    name: fn(T) -> &'static str,
) -> Result<T, Malformed> {
    all.into_iter().find(|&v| name(v) == value).ok_or_else(|| {
        let names: Vec<&str> = all.into_iter().map(name).collect();
        Malformed::new(value, format!("one of {}", names.join(", ")))
    })
}

fn parse_bool(value: &str) -> Result<bool, Malformed> {
    value
        .parse()
        .map_err(|_| Malformed::new(value, "true or false"))
}

fn parse_positive(value: &str) -> Result<u32, Malformed> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Malformed::new(value, "a positive whole number")),
    }
}

fn parse_port(value: &str) -> Result<u16, Malformed> {
    value
        .parse()
        .map_err(|_| Malformed::new(value, "a port number"))
}

fn parse_seconds(value: &str) -> Result<StdDuration, Malformed> {
    value
        .parse::<u64>()
        .map(StdDuration::from_secs)
        .map_err(|_| Malformed::new(value, "a whole number of seconds"))
}
