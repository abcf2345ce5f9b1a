//! What a failed Kafka admin call says: the [`Operation`] that failed, the [`TopicError`] and its
//! bounded [`ErrorCategory`] for metric labels.
//!
//! Pure: builds and classifies errors, never calls Kafka. No message here may contain a credential:
//! librdkafka's client-config errors echo the rejected value, so they are rewritten without it.

use std::fmt;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::task::JoinError;

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

    pub(super) fn kafka(op: Operation, topic: &str, error: KafkaError) -> Self {
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

    pub(crate) fn client(error: KafkaError) -> Self {
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

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaConfRes;

    use super::*;

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
}
