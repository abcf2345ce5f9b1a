//! Why the brokers cannot be reached: a short-lived probe that listens to what librdkafka reports
//! about its connections, and the rewrite of a bare "broker transport failure" into an error that
//! carries that reason.
//!
//! Blocking I/O (the probe connects to the bootstrap brokers): callers run it on the blocking pool.
//! It only listens; it sends no request and decides nothing about topics. A probe's answer is kept
//! per client for [`ANSWER_TIME`] ([`Diagnosis`]): when a cluster goes away, every reconcile of its
//! pipelines fails, and each would otherwise start a producer of its own.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use super::error::TopicError;

/// How long a probe may listen for the reason a connection fails.
const PROBE_TIME: Duration = Duration::from_secs(3);
/// How long a probe's answer explains the failures of the same client. Short: a fixed credential or
/// a broker back should not be explained away for long, and the answer is only an explanation.
pub(super) const ANSWER_TIME: Duration = Duration::from_secs(10);

/// A probe's answer, and when it was heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Diagnosis {
    /// What the probe heard; `None`: nothing within [`PROBE_TIME`], which is an answer too.
    pub cause: Option<String>,
    pub heard: Instant,
}

impl Diagnosis {
    /// The answer, if it was heard less than [`ANSWER_TIME`] before `now`.
    pub(super) fn recent(&self, now: Instant) -> Option<&Option<String>> {
        (now.saturating_duration_since(self.heard) < ANSWER_TIME).then_some(&self.cause)
    }
}

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
pub(super) fn connection_failure(config: &ClientConfig) -> Option<String> {
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
pub(super) fn is_local(error: &TopicError) -> bool {
    matches!(error, TopicError::Broker { code, .. } if is_local_code(*code))
}

/// librdkafka's own codes are negative; the brokers' are not.
fn is_local_code(code: RDKafkaErrorCode) -> bool {
    (code as i32) < 0
}

/// A local failure (see [`is_local`]) becomes [`TopicError::Unreachable`] when a `cause` was found;
/// other failures stay as they are.
pub(super) fn explained(error: TopicError, cause: Option<String>) -> TopicError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::error::Operation;

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
    fn a_probe_answer_explains_failures_for_a_short_while_only() {
        let heard = Instant::now();
        let diagnosis = Diagnosis {
            cause: Some("Connection refused".into()),
            heard,
        };
        let soon = heard + ANSWER_TIME - Duration::from_millis(1);
        assert_eq!(diagnosis.recent(soon), Some(&diagnosis.cause));
        assert_eq!(diagnosis.recent(heard + ANSWER_TIME), None);
        let silent = Diagnosis { cause: None, heard };
        assert_eq!(silent.recent(heard), Some(&None), "silence is kept too");
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
}
