//! The worker's error type: one variant per step that can fail, each with the context an operator
//! needs to act (which partition, which topic, which Kafka call). This module must not decide how an
//! error is handled; the runtime does (abort and rewind, re-create the producer, or stop).

use std::time::Duration;

use orderpipe_api::contract::ContractError;
use orderpipe_orders::StateDecodeError;

use crate::runtime::BrokerError;

/// Why the worker (or one of its steps) failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ContractError),

    #[error(
        "processor {processor:?} is not built into orderpipe-worker (it runs the user's image)"
    )]
    UnsupportedProcessor { processor: &'static str },

    #[error(
        "output {output} has no topic in ORDERPIPE_OUTPUTS (the stage needs one named {name:?})"
    )]
    OutputWithoutTopic {
        output: &'static str,
        name: &'static str,
    },

    #[error("creating the Kafka {client} failed: {source}")]
    KafkaClient {
        client: &'static str,
        #[source]
        source: BrokerError,
    },

    #[error("Kafka {operation} failed: {source}")]
    Kafka {
        operation: &'static str,
        #[source]
        source: BrokerError,
    },

    #[error(
        "the producer was fenced: another worker with transactional id {transactional_id:?} took \
         over, or the broker aborted a transaction of ours that outlived transaction.timeout.ms. \
         Either way this process may be a zombie, so it stops and its replacement resumes from \
         the committed offsets"
    )]
    Fenced { transactional_id: String },

    #[error(
        "Kafka refused even a bare dead letter (headers only) for input record {topic}/{partition} \
         at offset {offset}: {error}. This is not about the record: check max.message.bytes and \
         the ACLs of the stage's dead-letter topic"
    )]
    OutputRefused {
        topic: String,
        partition: i32,
        offset: i64,
        error: String,
    },

    #[error("restoring partition {partition} of state topic {topic:?} failed: {reason}")]
    Restore {
        topic: String,
        partition: i32,
        reason: RestoreFailure,
    },

    #[error("building the webhook HTTP client failed: {0}")]
    HttpClient(#[source] reqwest::Error),

    #[error("{var} is not an absolute URL: {reason}")]
    WebhookUrl { var: &'static str, reason: String },

    #[error("serving /metrics on port {port} failed: {source}")]
    Serve {
        port: u16,
        #[source]
        source: std::io::Error,
    },

    #[error("the {what} thread failed: {detail}")]
    Thread { what: &'static str, detail: String },

    #[error("reading the control topic {topic:?} failed: {reason}")]
    Control {
        topic: String,
        reason: ControlFailure,
    },
}

/// Why the control topic could not be read to its end (partition growth): without it, a partition
/// the input grew by could be started before the record that holds it was read.
#[derive(Debug, thiserror::Error)]
pub enum ControlFailure {
    #[error("Kafka error: {0}")]
    Broker(#[source] BrokerError),
    #[error("the end offset {end} was not reached within {waited:?} (position {position})")]
    Timeout {
        end: i64,
        position: i64,
        waited: Duration,
    },
}

/// Why restoring per-key state from a changelog partition failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreFailure {
    #[error("Kafka error: {0}")]
    Broker(#[source] BrokerError),
    #[error("record at offset {offset} cannot be decoded: {source}")]
    Decode {
        offset: i64,
        #[source]
        source: StateDecodeError,
    },
    #[error("the end offset {end} was not reached within {waited:?} (position {position})")]
    Timeout {
        end: i64,
        position: i64,
        waited: Duration,
    },
    #[error("interrupted by shutdown or revocation")]
    Interrupted,
}

impl WorkerError {
    pub(crate) fn kafka<E: Into<BrokerError>>(operation: &'static str) -> impl FnOnce(E) -> Self {
        move |source| Self::Kafka {
            operation,
            source: source.into(),
        }
    }

    /// Process exit code: configuration errors (2) and fencing (3) are told apart from other
    /// failures (1) so a supervisor or test can react to each.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_)
            | Self::UnsupportedProcessor { .. }
            | Self::OutputWithoutTopic { .. } => 2,
            Self::Fenced { .. } => 3,
            _ => 1,
        }
    }
}
