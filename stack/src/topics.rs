//! Kafka helpers for end-to-end tests: create a topic, and read everything a consumer with a
//! given isolation level can see right now. Reading "up to the end of every partition" (not "N
//! messages or a timeout") is what lets a test assert that something is absent. Must not commit
//! consumer offsets or create topics implicitly.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::error::{Result, StackError};

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl Record {
    /// The payload as UTF-8 (lossy), `""` for none.
    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(self.payload.as_deref().unwrap_or_default()).into_owned()
    }

    /// The key as UTF-8 (lossy), `""` for none.
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }
}

/// Which records a consumer may see (`isolation.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Only records of committed transactions (and non-transactional ones).
    ReadCommitted,
    /// Everything in the log, including records of aborted or open transactions.
    ReadUncommitted,
}

impl Isolation {
    fn config_value(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// Creates `name` with `partitions` partitions (replication factor 1: one broker).
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| StackError::kafka("admin client", e))?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|e| StackError::kafka(format!("create topic {name}"), e))?;
    for result in results {
        result.map_err(|(topic, code)| {
            StackError::kafka(format!("create topic {topic}"), KafkaError::AdminOp(code))
        })?;
    }
    Ok(())
}

/// Every record of `topic` visible under `isolation`, from the beginning of each partition to
/// its current end (for read_committed: the last stable offset), in partition then offset order.
pub async fn read_all(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_all_blocking(&bootstrap, &topic, isolation, timeout))
        .await
        .map_err(|error| StackError::Task {
            what: "reading a topic".into(),
            error,
        })?
}

fn read_all_blocking(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let context = |what: &str| format!("{what} {topic} ({})", isolation.config_value());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Assigned partitions, no commits: the group only names the client in broker logs.
        .set(
            "group.id",
            format!("orderpipe-stack-reader-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation.config_value())
        .create()
        .map_err(|e| StackError::kafka(context("consumer for"), e))?;
    let deadline = Instant::now() + timeout;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| StackError::kafka(context("metadata of"), e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(StackError::kafka(
            context("no partitions in"),
            KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition),
        ));
    }
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(|e| StackError::kafka(context("assigning"), e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| StackError::kafka(context("assigning"), e))?;

    let mut at_end = vec![false; partitions.len()];
    let mut records = Vec::new();
    while at_end.iter().any(|done| !done) {
        let now = Instant::now();
        if now >= deadline {
            return Err(StackError::Timeout {
                what: format!("the end of every partition of {topic}"),
                waited: timeout,
            });
        }
        match consumer.poll(deadline - now) {
            None => {}
            Some(Ok(message)) => records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
            }),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(index) = partitions.iter().position(|p| *p == partition) {
                    at_end[index] = true;
                }
            }
            Some(Err(error)) => return Err(StackError::kafka(context("reading"), error)),
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}
