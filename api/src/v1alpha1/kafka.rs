//! How workers and the operator reach Kafka: bootstrap brokers, TLS and SASL.
//!
//! Credentials appear only as references to Secrets in the pipeline's namespace, never inline; the
//! reference types themselves live in `secret`.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::hosts::BOOTSTRAP_SERVERS_RULE;
use super::{SecretKey, SecretKeyRef, SecretName};

/// Connection to the Kafka cluster. Credentials are only ever referenced from Secrets in the
/// pipeline's namespace, never written inline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(BOOTSTRAP_SERVERS_RULE)
        .message("spec.kafka.bootstrapServers must not name a link-local or cloud-metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254, metadata.google.internal): the operator and the workers would dial the node's metadata service")
        .field_path(".bootstrapServers")
        .reason(Reason::FieldValueForbidden),
)]
pub struct KafkaSpec {
    /// Bootstrap brokers as `host:port`. Link-local and cloud-metadata addresses are refused.
    #[schemars(length(min = 1, max = 16))]
    pub bootstrap_servers: Vec<BootstrapServer>,

    /// Encrypt connections with TLS. Without it, connections are plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,

    /// Authenticate with SASL (over TLS when `tls` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
}

/// One bootstrap broker address, `host:port`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct BootstrapServer(
    #[schemars(
        length(min = 3, max = 253),
        regex(pattern = r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
    )]
    pub String,
);

/// TLS settings for the Kafka connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// CA certificate (PEM) to verify the brokers, from a Secret key. Unset: the system trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// Client certificate for mutual TLS: a Secret of type kubernetes.io/tls (keys tls.crt, tls.key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_name: Option<SecretName>,
}

/// SASL authentication for the Kafka connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// SASL mechanism.
    pub mechanism: SaslMechanism,
    /// Secret holding the username and password.
    pub credentials_secret_ref: SaslCredentialsRef,
}

/// The SASL mechanisms the worker and operator support.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka and Kafka use for the mechanism.
    pub fn as_kafka_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Where the SASL username and password live.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SaslCredentialsRef {
    /// Name of a Secret in the pipeline's namespace.
    pub name: SecretName,
    /// Key of the username in the Secret.
    #[serde(default = "default_username_key")]
    pub username_key: SecretKey,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    pub password_key: SecretKey,
}

fn default_username_key() -> SecretKey {
    SecretKey("username".into())
}

fn default_password_key() -> SecretKey {
    SecretKey("password".into())
}
