//! The Kafka adapter of the runtime: librdkafka clients implementing the runtime's ports (the
//! stage consumer as [`crate::runtime::Source`], the producers as [`crate::runtime::Sink`], the
//! state topic as [`crate::runtime::ChangelogReader`]) and their configuration from the worker
//! contract. librdkafka's types end here: its errors become the runtime's ([`BrokerError`]: the
//! text librdkafka gives, the error code's description included, for the logs; the
//! classification into [`crate::runtime::SinkErrorKind`] is `producer`'s), and the consumer group
//! reaches the sinks as [`GroupCommit`]. Must not decide what to produce; the stages and the
//! coordinator do.

mod bounded;
pub mod changelog;
pub mod client;
pub mod consumer;
pub mod control;
pub mod partition_queues;
pub mod producer;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::runtime::growth::Markers;
use crate::runtime::{BrokerError, Offsets};

/// The consumer group's side of a commit (the Kafka sinks' [`crate::runtime::Sink::Group`]): its
/// metadata for a transactional offset commit (KIP-447), or a plain offset commit when
/// at-least-once.
pub trait GroupCommit {
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata>;
    fn commit_offsets(
        &self,
        topic: &str,
        offsets: &Offsets,
        markers: &Markers,
    ) -> Result<(), KafkaError>;
}

/// Every runtime port reports librdkafka's errors this way.
impl From<KafkaError> for BrokerError {
    fn from(error: KafkaError) -> Self {
        Self::new(error.to_string())
    }
}

/// `offsets` of `topic` as librdkafka's list type, each partition in `markers` with its re-shard
/// marker as the offset's metadata (which the commit stores and the operator reads back).
pub(crate) fn offsets_list(
    topic: &str,
    offsets: &Offsets,
    markers: &Markers,
) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::new();
    for (&partition, &offset) in offsets {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        if let Some(marker) = markers.get(&partition)
            && let Some(mut element) = list.find_partition(topic, partition)
        {
            element.set_metadata(marker.to_metadata());
        }
    }
    Ok(list)
}
