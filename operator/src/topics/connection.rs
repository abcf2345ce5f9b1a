//! How the operator's admin client reaches a pipeline's Kafka cluster: the librdkafka settings
//! built from `spec.kafka` and the credentials the controller resolved from Secrets.
//!
//! Pure: no client, no I/O. Credentials are held as redacted values: the `Debug` output of every
//! type here prints key names, never certificate or password contents, and the [`ConnectionKey`]
//! that identifies a cached client carries a fingerprint of them, never the values. This module
//! must not read Secrets (the controller does) nor build a client (`kafka_admin` does).

use std::fmt;

use orderpipe_api::contract::SecretString;
use orderpipe_api::v1alpha1::KafkaSpec;
use rdkafka::ClientConfig;
use sha2::{Digest, Sha256};

use super::error::TopicError;

/// Identifies the operator in broker logs and quotas.
const CLIENT_ID: &str = "orderpipe-operator";

/// A client certificate for mutual TLS (a kubernetes.io/tls Secret: tls.crt, tls.key).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub certificate_pem: String,
    pub key_pem: SecretString,
}

/// SASL username and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslCredentials {
    pub username: String,
    pub password: SecretString,
}

/// The credentials `spec.kafka` references, read from the pipeline's Secrets by the controller.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ResolvedKafkaSecrets {
    /// CA certificate (PEM) from `tls.caSecretRef`; `None`: the system trust store.
    pub ca_pem: Option<String>,
    /// From `tls.clientCertSecretName`.
    pub client_certificate: Option<ClientCertificate>,
    /// From `sasl.credentialsSecretRef`.
    pub sasl: Option<SaslCredentials>,
}

// Certificates are not secret, but long, and no log line needs them: print presence only.
impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientCertificate(<redacted>)")
    }
}

impl fmt::Debug for ResolvedKafkaSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedKafkaSecrets")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| Redacted))
            .field("client_certificate", &self.client_certificate)
            .field("sasl", &self.sasl)
            .finish()
    }
}

struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One librdkafka setting; the sensitive ones are never printed.
#[derive(Clone, PartialEq, Eq)]
enum Setting {
    Plain(String),
    Redacted(SecretString),
}

impl Setting {
    fn value(&self) -> &str {
        match self {
            Self::Plain(value) => value,
            Self::Redacted(value) => value.expose(),
        }
    }
}

/// The librdkafka settings of an admin client for one Kafka cluster and identity.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConnection {
    bootstrap_servers: String,
    settings: Vec<(&'static str, Setting)>,
}

impl fmt::Debug for AdminConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, setting) in &self.settings {
            match setting {
                Setting::Plain(value) => map.entry(key, value),
                Setting::Redacted(_) => map.entry(key, &Redacted),
            };
        }
        map.finish()
    }
}

impl AdminConnection {
    /// Settings for `spec`. Fails when the spec references a credential that was not resolved,
    /// rather than silently connecting without it.
    pub fn new(spec: &KafkaSpec, secrets: &ResolvedKafkaSecrets) -> Result<Self, TopicError> {
        let servers: Vec<&str> = spec.bootstrap_servers.iter().map(|s| s.0.trim()).collect();
        let bootstrap_servers = servers.join(",");
        let protocol = match (spec.tls.is_some(), spec.sasl.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        };
        let mut settings = vec![
            (
                "bootstrap.servers",
                Setting::Plain(bootstrap_servers.clone()),
            ),
            ("client.id", Setting::Plain(CLIENT_ID.to_owned())),
            // librdkafka's admin client is a producer underneath, and a producer's metadata request
            // for a missing topic creates it on brokers with auto.create.topics.enable, with the
            // broker's partitions and config: describing must never create.
            (
                "allow.auto.create.topics",
                Setting::Plain("false".to_owned()),
            ),
            ("security.protocol", Setting::Plain(protocol.to_owned())),
        ];
        if let Some(tls) = &spec.tls {
            if tls.ca_secret_ref.is_some() {
                let ca = secrets
                    .ca_pem
                    .as_ref()
                    .ok_or_else(|| missing("tls.caSecretRef"))?;
                settings.push((
                    "ssl.ca.pem",
                    Setting::Redacted(SecretString::new(ca.as_str())),
                ));
            }
            if tls.client_cert_secret_name.is_some() {
                let client = secrets.client_certificate.as_ref();
                let client = client.ok_or_else(|| missing("tls.clientCertSecretName"))?;
                let certificate = SecretString::new(client.certificate_pem.as_str());
                settings.push(("ssl.certificate.pem", Setting::Redacted(certificate)));
                settings.push(("ssl.key.pem", Setting::Redacted(client.key_pem.clone())));
            }
        }
        if let Some(sasl) = &spec.sasl {
            let credentials = secrets.sasl.as_ref();
            let credentials = credentials.ok_or_else(|| missing("sasl.credentialsSecretRef"))?;
            let mechanism = sasl.mechanism.as_kafka_str().to_owned();
            settings.push(("sasl.mechanism", Setting::Plain(mechanism)));
            settings.push((
                "sasl.username",
                Setting::Plain(credentials.username.clone()),
            ));
            settings.push((
                "sasl.password",
                Setting::Redacted(credentials.password.clone()),
            ));
        }
        Ok(Self {
            bootstrap_servers,
            settings,
        })
    }

    /// Identifies the client these settings make: same key, same client. Credentials enter only
    /// through a SHA-256 fingerprint, so a rotated password yields a new client and the key can be
    /// kept and printed safely.
    pub fn key(&self) -> ConnectionKey {
        let mut hash = Sha256::new();
        for (key, setting) in &self.settings {
            // Separators keep ("ab", "c") and ("a", "bc") apart.
            hash.update(key.as_bytes());
            hash.update([0]);
            hash.update(setting.value().as_bytes());
            hash.update([0]);
        }
        let digest = hash.finalize();
        let fingerprint: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        ConnectionKey {
            bootstrap_servers: self.bootstrap_servers.clone(),
            fingerprint,
        }
    }

    /// The librdkafka configuration. It holds the credentials in clear, and `ClientConfig`'s
    /// `Debug` prints them: hand it to a client constructor (the admin client, or the lag
    /// consumer, which adds its consumer settings) and nowhere else.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, setting) in &self.settings {
            config.set(*key, setting.value());
        }
        config
    }
}

fn missing(field: &str) -> TopicError {
    TopicError::Connection(format!(
        "spec.kafka.{field} is set but the controller resolved no credential for it"
    ))
}

/// Identifies a cached admin client: the bootstrap servers and a fingerprint of every setting.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    bootstrap_servers: String,
    fingerprint: String,
}

impl fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.bootstrap_servers, self.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use orderpipe_api::v1alpha1::{
        BootstrapServer, KafkaSasl, KafkaTls, SaslCredentialsRef, SaslMechanism, SecretKey,
        SecretKeyRef, SecretName,
    };

    use super::*;

    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nTOP-SECRET-KEY\n-----END PRIVATE KEY-----";
    const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nCLIENT-CERT\n-----END CERTIFICATE-----";
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nCA-CERT\n-----END CERTIFICATE-----";
    const PASSWORD: &str = "hunter2-password";

    fn spec(tls: bool, sasl: bool) -> KafkaSpec {
        KafkaSpec {
            bootstrap_servers: vec![
                BootstrapServer("kafka-0.kafka:9093".into()),
                BootstrapServer("kafka-1.kafka:9093".into()),
            ],
            tls: tls.then(|| KafkaTls {
                ca_secret_ref: Some(SecretKeyRef {
                    name: SecretName("kafka-ca".into()),
                    key: SecretKey("ca.crt".into()),
                }),
                client_cert_secret_name: Some(SecretName("kafka-client".into())),
            }),
            sasl: sasl.then(|| KafkaSasl {
                mechanism: SaslMechanism::ScramSha512,
                credentials_secret_ref: SaslCredentialsRef {
                    name: SecretName("kafka-user".into()),
                    username_key: SecretKey("username".into()),
                    password_key: SecretKey("password".into()),
                },
            }),
        }
    }

    fn secrets(password: &str) -> ResolvedKafkaSecrets {
        ResolvedKafkaSecrets {
            ca_pem: Some(CA_PEM.into()),
            client_certificate: Some(ClientCertificate {
                certificate_pem: CERT_PEM.into(),
                key_pem: SecretString::new(KEY_PEM),
            }),
            sasl: Some(SaslCredentials {
                username: "orderpipe".into(),
                password: SecretString::new(password),
            }),
        }
    }

    fn connection(tls: bool, sasl: bool) -> AdminConnection {
        AdminConnection::new(&spec(tls, sasl), &secrets(PASSWORD)).expect("secrets resolved")
    }

    #[test]
    fn debug_output_redacts_credentials() {
        let connection = connection(true, true);
        let printed = format!(
            "{connection:?} {:?} {:?}",
            secrets(PASSWORD),
            connection.key()
        );
        for secret in ["TOP-SECRET-KEY", "CLIENT-CERT", "CA-CERT", PASSWORD] {
            assert!(!printed.contains(secret), "{secret} leaked into {printed}");
        }
        assert!(
            printed.contains("\"sasl.password\": <redacted>"),
            "{printed}"
        );
        assert!(printed.contains("\"ssl.key.pem\": <redacted>"), "{printed}");
        assert!(
            printed.contains("SCRAM-SHA-512"),
            "non-secret settings stay readable: {printed}"
        );
    }

    #[test]
    fn security_protocol_follows_tls_and_sasl() {
        let cases = [
            (false, false, "PLAINTEXT"),
            (true, false, "SSL"),
            (false, true, "SASL_PLAINTEXT"),
            (true, true, "SASL_SSL"),
        ];
        for (tls, sasl, protocol) in cases {
            let config = connection(tls, sasl).client_config();
            assert_eq!(
                config.get("security.protocol"),
                Some(protocol),
                "tls {tls}, sasl {sasl}"
            );
            assert_eq!(config.get("ssl.key.pem").is_some(), tls);
            assert_eq!(config.get("ssl.ca.pem").is_some(), tls);
            assert_eq!(config.get("sasl.password"), sasl.then_some(PASSWORD));
        }
    }

    #[test]
    fn credentials_reach_librdkafka_under_their_keys() {
        let config = connection(true, true).client_config();
        assert_eq!(
            config.get("bootstrap.servers"),
            Some("kafka-0.kafka:9093,kafka-1.kafka:9093")
        );
        assert_eq!(config.get("ssl.ca.pem"), Some(CA_PEM));
        assert_eq!(config.get("ssl.certificate.pem"), Some(CERT_PEM));
        assert_eq!(config.get("ssl.key.pem"), Some(KEY_PEM));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("orderpipe"));
    }

    #[test]
    fn the_admin_client_never_creates_topics_by_describing_them() {
        let config = connection(false, false).client_config();
        assert_eq!(config.get("allow.auto.create.topics"), Some("false"));
    }

    #[test]
    fn connection_key_changes_with_credentials_but_never_contains_them() {
        let a = connection(true, true).key();
        let rotated = AdminConnection::new(&spec(true, true), &secrets("rotated-password"))
            .expect("secrets resolved")
            .key();
        assert_ne!(a, rotated, "a rotated password needs a new client");
        assert_eq!(
            a,
            connection(true, true).key(),
            "same settings, same cached client"
        );
        assert!(!a.to_string().contains(PASSWORD));
        assert!(
            a.to_string()
                .starts_with("kafka-0.kafka:9093,kafka-1.kafka:9093#")
        );
    }

    #[test]
    fn a_referenced_credential_that_was_not_resolved_is_an_error() {
        let no_sasl = ResolvedKafkaSecrets {
            sasl: None,
            ..secrets(PASSWORD)
        };
        let error = AdminConnection::new(&spec(false, true), &no_sasl).expect_err("must fail");
        assert!(
            error.to_string().contains("sasl.credentialsSecretRef"),
            "{error}"
        );

        let no_cert = ResolvedKafkaSecrets {
            client_certificate: None,
            ..secrets(PASSWORD)
        };
        let error = AdminConnection::new(&spec(true, false), &no_cert).expect_err("must fail");
        assert!(
            error.to_string().contains("tls.clientCertSecretName"),
            "{error}"
        );
    }
}
