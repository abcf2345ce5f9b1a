//! The names of the environment variables a worker reads, and the encoding of the one structured
//! value among them (the outputs map). Names only: reading them is `config`'s job, writing them
//! `render`'s.

use std::collections::BTreeMap;

use super::config::Malformed;

pub const PIPELINE: &str = "ORDERPIPE_PIPELINE";
pub const PIPELINE_UID: &str = "ORDERPIPE_PIPELINE_UID";
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
pub const CONTROL_TOPIC: &str = "ORDERPIPE_CONTROL_TOPIC";
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
/// The intake gateway's topics, its API port and its bearer tokens (the Secret's text).
pub const INTAKE_ORDERS_TOPIC: &str = "ORDERPIPE_INTAKE_ORDERS_TOPIC";
pub const INTAKE_STATUS_TOPIC: &str = "ORDERPIPE_INTAKE_STATUS_TOPIC";
pub const INTAKE_PORT: &str = "ORDERPIPE_INTAKE_PORT";
pub const INTAKE_TOKENS: &str = "ORDERPIPE_INTAKE_TOKENS";
/// Encodes a stage's outputs for [`OUTPUTS`]: `name=topic,name=topic`. Topic names cannot contain
/// `,` or `=`, so the encoding needs no escaping.
pub(super) fn format_outputs(outputs: &BTreeMap<String, String>) -> String {
    outputs
        .iter()
        .map(|(name, topic)| format!("{name}={topic}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Decodes [`format_outputs`]; the error is the pair that is not `name=topic`.
pub(super) fn parse_outputs(value: &str) -> Result<BTreeMap<String, String>, Malformed> {
    value
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((name, topic)) if !name.is_empty() && !topic.is_empty() => {
                Ok((name.to_string(), topic.to_string()))
            }
            _ => Err(Malformed::new(pair, "name=topic")),
        })
        .collect()
}
