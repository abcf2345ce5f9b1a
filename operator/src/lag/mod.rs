//! Consumer lag of autoscaled stages, measured in Kafka (not reported by the workers, so it is
//! there when a stage crash-loops or has no pods): the group's committed offsets against the end
//! of its input, correct for transactional inputs.
//!
//! [`offsets`] is the pure arithmetic; [`kafka`] the only code that talks to Kafka (through the
//! connection settings topic management uses); [`cache`] shares one measurement per stage per
//! interval between every request. The external metrics API serves what the cache returns. Nothing
//! here writes to Kafka or Kubernetes.

pub mod cache;
pub mod kafka;
pub mod offsets;

use std::time::Duration;

pub use cache::{CacheSettings, LagCache, LagReading, LagSource, StageKey};
pub use kafka::{KafkaLagSource, LagConsumer};

use crate::topics::TopicError;

/// Why a stage's lag could not be measured. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error("OrderPipeline {namespace}/{pipeline} not found")]
    PipelineNotFound { namespace: String, pipeline: String },
    #[error("OrderPipeline {pipeline} has no stage {stage}")]
    StageNotFound { pipeline: String, stage: String },
    #[error("reading the OrderPipeline: {0}")]
    ReadPipeline(#[source] kube::Error),
    #[error("resolving the Kafka credentials: {0}")]
    Credentials(#[source] Box<crate::error::Error>),
    #[error("connecting to Kafka: {0}")]
    Connection(#[source] TopicError),
    #[error("input topic {topic} does not exist")]
    TopicMissing { topic: String },
    #[error("{step} of topic {topic}: {source}")]
    Kafka {
        step: &'static str,
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("counting the records after the commit on topic {topic}: not done within {timeout:?}")]
    CountTimeout { topic: String, timeout: Duration },
    #[error("the lag query did not complete: {0}")]
    Blocking(#[source] tokio::task::JoinError),
    #[error("no lag reading younger than {max_age:?}")]
    Stale { max_age: Duration },
}

impl LagError {
    /// The request named something that does not exist (a 404, not a failure to retry).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::PipelineNotFound { .. } | Self::StageNotFound { .. }
        )
    }
}
