//! The reconcile's errors: one variant per step, each with its source, and a bounded category for
//! metrics. Permanent problems of the spec are not errors: they become conditions and wait for a
//! change. Errors here are transient (API or Kafka unavailable) and are retried with backoff.

use crate::children::ChildKind;
use crate::desired::DesiredError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OrderPipeline has no namespace")]
    MissingNamespace,
    #[error(
        "reading Secret {secret} for the Kafka connection (spec.kafka): {}",
        brief(source)
    )]
    ReadSecret { secret: String, source: kube::Error },
    #[error("Secret {secret} has no key {key} (referenced by spec.kafka)")]
    SecretKeyMissing { secret: String, key: String },
    #[error("connecting to Kafka: {0}")]
    Kafka(#[source] crate::topics::TopicError),
    #[error("partition growth: {0}")]
    Growth(#[source] crate::growth::kafka::GrowthKafkaError),
    #[error("building the stage objects: {0}")]
    Desired(#[from] DesiredError),
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: ChildKind,
        name: String,
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: ChildKind,
        name: String,
        source: kube::Error,
    },
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("updating the finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("deleting topics before removing the finalizer: {0}")]
    TopicCleanup(String),
}

impl Error {
    /// The reason a failure to build or write the children gets in the status and its Warning
    /// Event (PascalCase, stable).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Desired(_) => "BuildFailed",
            Self::Apply { .. } => "ApplyFailed",
            Self::Delete { .. } => "DeleteFailed",
            _ => "ReconcileFailed",
        }
    }

    /// Every value of [`Error::category`], so the metrics can export each from the start.
    pub const CATEGORIES: [&'static str; 8] = [
        "invalid",
        "secret",
        "kafka",
        "desired",
        "apply",
        "delete",
        "status",
        "finalizer",
    ];

    /// Bounded label for `orderpipe_operator_reconcile_errors_total`; one of [`Error::CATEGORIES`].
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingNamespace => "invalid",
            Self::ReadSecret { .. } | Self::SecretKeyMissing { .. } => "secret",
            Self::Kafka(_) | Self::Growth(_) | Self::TopicCleanup(_) => "kafka",
            Self::Desired(_) => "desired",
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::Status(_) => "status",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// What the apiserver said, without the Debug dump of its whole Status object (this text ends up
/// in conditions that `kubectl get` prints).
fn brief(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_secret_reads_as_the_apiservers_sentence_not_its_status_dump() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "message": "secrets \"nobody\" not found",
            "reason": "NotFound",
            "code": 404,
        }))
        .expect("a Status");
        let error = Error::ReadSecret {
            secret: "nobody".into(),
            source: kube::Error::Api(Box::new(status)),
        };
        assert_eq!(
            error.to_string(),
            "reading Secret nobody for the Kafka connection (spec.kafka): secrets \"nobody\" not found"
        );
    }
}
