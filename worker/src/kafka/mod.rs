//! The Kafka adapter of the runtime: librdkafka clients implementing the runtime's ports (the
//! stage consumer as [`crate::runtime::Source`], the producers as [`crate::runtime::Sink`], the
//! state topic as [`crate::runtime::ChangelogReader`]) and their configuration from the worker
//! contract. Must not decide what to produce; the stages and the coordinator do.

pub mod changelog;
pub mod client;
pub mod consumer;
pub mod producer;

use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::runtime::Offsets;

/// `offsets` of `topic` as librdkafka's list type.
pub(crate) fn offsets_list(
    topic: &str,
    offsets: &Offsets,
) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::new();
    for (&partition, &offset) in offsets {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(list)
}
