//! The Kafka test kit, the one every crate's tests use: create topics and look at or change them as
//! an outsider would, read everything a consumer with a given isolation level can see right now,
//! and a consumer group's committed progress. Reading "up to the end of every partition" (not "N
//! messages or a timeout") is what lets a test assert that something is absent.
//!
//! Every call blocks until the broker answered, as librdkafka's clients do; an async test whose
//! runtime also serves something calls them through `spawn_blocking`. Broker calls that fail while
//! a broker (re)starts are retried for up to [`BROKER_TIMEOUT`], so a test that restarts the broker
//! reads on without waiting for it first. Must not commit consumer offsets or create topics
//! implicitly.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::error::{Result, StackError};

/// How long any call of the kit keeps trying before it fails.
const BROKER_TIMEOUT: Duration = Duration::from_secs(60);
/// One request's own timeout; a failed request is retried until [`BROKER_TIMEOUT`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Header names and values (values as UTF-8, lossy), in the record's order.
    pub headers: Vec<(String, String)>,
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

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn from_message(message: &impl Message) -> Record {
        let headers = message.headers().map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        });
        Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: headers.unwrap_or_default(),
        }
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

/// Creates `topics` (name, partitions) with the cluster's default replication factor and
/// `min.insync.replicas` (one broker: 1 and 1; a stack of three brokers or more: 3 and 2) and
/// waits until the broker names a leader for every partition, so a producer's first send finds
/// them.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<()> {
    create_topics_with(bootstrap, topics, None, &[])
}

/// [`create_topics`] with an explicit replication factor (`None`: the cluster's default) and
/// topic configs (e.g. `min.insync.replicas`).
pub fn create_topics_with(
    bootstrap: &str,
    topics: &[(&str, i32)],
    replication_factor: Option<i32>,
    config: &[(&str, &str)],
) -> Result<()> {
    // -1: the broker's `default.replication.factor` (KIP-464).
    let replication = replication_factor.unwrap_or(-1);
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            config.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(replication)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let results = futures::executor::block_on(admin(bootstrap)?.create_topics(&new, &options()))
        .map_err(|e| StackError::kafka("create topics", e))?;
    for result in results {
        result.map_err(|(topic, code)| {
            StackError::kafka(format!("create topic {topic}"), KafkaError::AdminOp(code))
        })?;
    }
    let probe = consumer(bootstrap, "leaders", Isolation::ReadCommitted)?;
    for (name, partitions) in topics {
        for partition in 0..*partitions {
            retrying(&format!("the leader of {name}/{partition}"), || {
                probe.fetch_watermarks(name, partition, REQUEST_TIMEOUT)
            })?;
        }
    }
    Ok(())
}

/// Sets `pairs` as the dynamic config of `topic`, the way an outsider would. Kafka's legacy
/// AlterConfigs (all rdkafka offers) replaces every dynamic config the topic had.
pub fn alter_topic_config(bootstrap: &str, topic: &str, pairs: &[(&str, &str)]) -> Result<()> {
    let change = pairs.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(topic)),
        |change, (key, value)| change.set(key, value),
    );
    let context = format!("alter the config of {topic}");
    let results =
        futures::executor::block_on(admin(bootstrap)?.alter_configs([&change], &options()))
            .map_err(|e| StackError::kafka(context.as_str(), e))?;
    for result in results {
        result
            .map_err(|(_, code)| StackError::kafka(context.as_str(), KafkaError::AdminOp(code)))?;
    }
    Ok(())
}

/// The effective config values of `topic` (defaults included), as an outsider sees them.
pub fn topic_config(bootstrap: &str, topic: &str) -> Result<HashMap<String, String>> {
    let context = format!("describe the config of {topic}");
    let resources = [ResourceSpecifier::Topic(topic)];
    let results =
        futures::executor::block_on(admin(bootstrap)?.describe_configs(&resources, &options()))
            .map_err(|e| StackError::kafka(context.as_str(), e))?;
    let mut config = HashMap::new();
    for result in results {
        let resource = result
            .map_err(|code| StackError::kafka(context.as_str(), KafkaError::AdminOp(code)))?;
        config.extend(
            resource
                .entries
                .into_iter()
                .filter_map(|entry| Some((entry.name, entry.value?))),
        );
    }
    Ok(config)
}

/// How many partitions the broker reports for `topic` now; `None` when it does not exist. Never
/// creates it.
pub fn partition_count(bootstrap: &str, topic: &str) -> Result<Option<usize>> {
    let consumer = consumer(bootstrap, "metadata", Isolation::ReadCommitted)?;
    let metadata = retrying(&format!("the metadata of {topic}"), || {
        consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)
    })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len()))
}

/// One partition as the cluster's metadata describes it (broker ids are `node.id`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// The leader's broker id; -1 while there is none.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl PartitionInfo {
    /// A leader, and every replica in the ISR.
    pub fn fully_in_sync(&self) -> bool {
        self.leader >= 0 && self.isr.len() == self.replicas.len()
    }
}

/// Leader, replicas and ISR of every partition of `topic` (internal topics included), in
/// partition order.
pub fn partition_infos(bootstrap: &str, topic: &str) -> Result<Vec<PartitionInfo>> {
    let consumer = consumer(bootstrap, "metadata", Isolation::ReadCommitted)?;
    let metadata = retrying(&format!("the metadata of {topic}"), || {
        let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(metadata),
            _ => Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )),
        }
    })?;
    let mut infos: Vec<PartitionInfo> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
        .map(|p| PartitionInfo {
            partition: p.id(),
            leader: p.leader(),
            replicas: p.replicas().to_vec(),
            isr: p.isr().to_vec(),
        })
        .collect();
    infos.sort_by_key(|p| p.partition);
    Ok(infos)
}

/// The broker leading `topic`/`partition` now, waiting (up to the kit's broker timeout) while
/// there is none, e.g. during an election.
pub fn partition_leader(bootstrap: &str, topic: &str, partition: i32) -> Result<i32> {
    let what = format!("a leader of {topic}/{partition}");
    let deadline = Instant::now() + BROKER_TIMEOUT;
    loop {
        let leader = partition_infos(bootstrap, topic)?
            .into_iter()
            .find(|p| p.partition == partition)
            .map_or(-1, |p| p.leader);
        if leader >= 0 {
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            return Err(StackError::Timeout {
                what,
                waited: BROKER_TIMEOUT,
            });
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// The leader of each partition of `topic` (-1 for none), by partition.
pub fn partition_leaders(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, i32>> {
    Ok(partition_infos(bootstrap, topic)?
        .into_iter()
        .map(|p| (p.partition, p.leader))
        .collect())
}

/// Whether every partition of every one of `topics` has a leader and all its replicas in the
/// ISR: after a broker came back, it has caught up.
pub fn in_sync(bootstrap: &str, topics: &[&str]) -> Result<bool> {
    for topic in topics {
        if !partition_infos(bootstrap, topic)?
            .iter()
            .all(PartitionInfo::fully_in_sync)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The broker that is the transaction coordinator of `transactional_id` now: the leader of its
/// partition of `__transaction_state` (which exists once any transactional producer started;
/// a multi-broker stack creates it at start).
pub fn transaction_coordinator(bootstrap: &str, transactional_id: &str) -> Result<i32> {
    coordinator(bootstrap, "__transaction_state", transactional_id)
}

/// The broker that is the group coordinator of `group` now: the leader of its partition of
/// `__consumer_offsets`.
pub fn group_coordinator(bootstrap: &str, group: &str) -> Result<i32> {
    coordinator(bootstrap, "__consumer_offsets", group)
}

fn coordinator(bootstrap: &str, internal_topic: &str, key: &str) -> Result<i32> {
    let partitions = partition_infos(bootstrap, internal_topic)?.len();
    partition_leader(
        bootstrap,
        internal_topic,
        coordinator_partition(key, partitions),
    )
}

/// The partition of an internal topic that holds `key` (a transactional id or a group), as the
/// brokers compute it: `Utils.abs(key.hashCode()) % partitions` with Java's `String.hashCode`
/// (31-based over UTF-16 code units, wrapping) and Kafka's `abs` (which maps `i32::MIN` to 0).
pub fn coordinator_partition(key: &str, partitions: usize) -> i32 {
    let hash = key.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    let partitions = i32::try_from(partitions.max(1)).unwrap_or(i32::MAX);
    positive % partitions
}

/// Every record of `topic` visible under `isolation`, from the beginning of each partition to
/// its current end (for read_committed: the last stable offset), in partition then offset order.
pub fn read_all(bootstrap: &str, topic: &str, isolation: Isolation) -> Result<Vec<Record>> {
    let context = |what: &str| format!("{what} {topic} ({})", isolation.config_value());
    let consumer = consumer(bootstrap, "reader", isolation)?;
    let partitions = partitions(&consumer, topic)?;
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(|e| StackError::kafka(context("assigning"), e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| StackError::kafka(context("assigning"), e))?;
    let mut records = Vec::new();
    read_to_end(&consumer, topic, &partitions, |message| {
        records.push(Record::from_message(message));
        true
    })?;
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// The end (for a read_committed reader: the last stable offset) of every partition of `topic`.
pub fn end_offsets(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer = consumer(bootstrap, "watermarks", Isolation::ReadCommitted)?;
    partitions(&consumer, topic)?
        .into_iter()
        .map(|partition| {
            let (_, high) = retrying(&format!("the end of {topic}/{partition}"), || {
                consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            })?;
            Ok((partition, high))
        })
        .collect()
}

/// The offsets `group` committed for `topic` (0 where nothing is committed yet).
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
    // A client with the group's id asks the group coordinator; it never joins the group.
    let consumer = client_config(bootstrap, group, Isolation::ReadCommitted)
        .create::<BaseConsumer>()
        .map_err(|e| StackError::kafka(format!("consumer of group {group}"), e))?;
    let mut list = TopicPartitionList::new();
    for partition in partitions(&consumer, topic)? {
        list.add_partition(topic, partition);
    }
    // Right after a broker (re)start the group coordinator may still be loading.
    let committed = retrying(&format!("the offsets {group} committed in {topic}"), || {
        consumer.committed_offsets(list.clone(), REQUEST_TIMEOUT)
    })?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => (e.partition(), offset),
            _ => (e.partition(), 0),
        })
        .collect())
}

/// Commits `offsets` (partition, offset, metadata) of `topic` for `group` as an outside client
/// would (the group must have no live members): what a test uses to stand in for a group's
/// workers, e.g. their re-shard markers.
pub fn commit_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64, &str)],
) -> Result<()> {
    let consumer = client_config(bootstrap, group, Isolation::ReadCommitted)
        .create::<BaseConsumer>()
        .map_err(|e| StackError::kafka(format!("consumer of group {group}"), e))?;
    let mut list = TopicPartitionList::new();
    for &(partition, offset, metadata) in offsets {
        let mut element = list.add_partition(topic, partition);
        element
            .set_offset(Offset::Offset(offset))
            .map_err(|e| StackError::kafka(format!("offset {offset} of {topic}/{partition}"), e))?;
        element.set_metadata(metadata);
    }
    retrying(&format!("committing {group}'s offsets in {topic}"), || {
        consumer.commit(&list, rdkafka::consumer::CommitMode::Sync)
    })
}

/// Whether `group` has committed every record currently visible in `topic`: nothing a
/// read_committed reader finds after the committed offsets. (Comparing with the end offsets is not
/// enough: a transactional topic ends with commit markers, which no consumer ever commits past.)
pub fn caught_up(bootstrap: &str, group: &str, topic: &str) -> Result<bool> {
    let committed = committed_offsets(bootstrap, group, topic)?;
    let ends = end_offsets(bootstrap, topic)?;
    if committed == ends {
        return Ok(true);
    }
    let reader = consumer(bootstrap, "rest", Isolation::ReadCommitted)?;
    let mut assignment = TopicPartitionList::new();
    let mut behind = Vec::new();
    for (&partition, &offset) in &committed {
        if offset < ends.get(&partition).copied().unwrap_or_default() {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(|e| StackError::kafka(format!("assigning {topic}"), e))?;
            behind.push(partition);
        }
    }
    reader
        .assign(&assignment)
        .map_err(|e| StackError::kafka(format!("assigning {topic}"), e))?;
    let mut found = false;
    read_to_end(&reader, topic, &behind, |_| {
        found = true;
        false
    })?;
    Ok(!found)
}

/// Polls `consumer` (assigned `partitions` of `topic`) until every partition reports its end or
/// `on_record` returns false.
fn read_to_end<M>(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    mut on_record: M,
) -> Result<()>
where
    M: FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
{
    let deadline = Instant::now() + BROKER_TIMEOUT;
    let mut at_end = vec![false; partitions.len()];
    while at_end.iter().any(|done| !done) {
        let now = Instant::now();
        if now >= deadline {
            return Err(StackError::Timeout {
                what: format!("the end of every partition of {topic}"),
                waited: BROKER_TIMEOUT,
            });
        }
        match consumer.poll(deadline - now) {
            None => {}
            Some(Ok(message)) if !on_record(&message) => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(index) = partitions.iter().position(|p| *p == partition) {
                    at_end[index] = true;
                }
            }
            // A connection to a broker that is down (killed in a fault test, say): librdkafka
            // reports it and reconnects, or reads from the new leader, by itself.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
            ))) => {}
            Some(Err(error)) => return Err(StackError::kafka(format!("reading {topic}"), error)),
        }
    }
    Ok(())
}

/// The partitions of `topic`. Right after a broker (re)start the metadata may list the topic with
/// an error and no partitions; such an answer is retried, never taken for "no partitions" (that
/// made a drain check compare two empty maps and declare an unfinished stage drained).
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>> {
    retrying(&format!("the partitions of {topic}"), || {
        let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().iter().map(|p| p.id()).collect())
            }
            _ => Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )),
        }
    })
}

/// Repeats a broker call that fails while the broker is (re)starting, for up to [`BROKER_TIMEOUT`].
fn retrying<T>(what: &str, mut call: impl FnMut() -> Result<T, KafkaError>) -> Result<T> {
    let deadline = Instant::now() + BROKER_TIMEOUT;
    loop {
        match call() {
            Ok(value) => return Ok(value),
            Err(_) if Instant::now() < deadline => std::thread::sleep(RETRY_PAUSE),
            Err(error) => return Err(StackError::kafka(what, error)),
        }
    }
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| StackError::kafka("admin client", e))
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT))
}

/// A consumer that is only ever assigned partitions and never commits: the group only names the
/// client (`role`) in the broker's logs.
fn consumer(bootstrap: &str, role: &str, isolation: Isolation) -> Result<BaseConsumer> {
    let group = format!("orderpipe-stack-{role}-{}", std::process::id());
    client_config(bootstrap, &group, isolation)
        .create()
        .map_err(|e| StackError::kafka(format!("{role} consumer"), e))
}

fn client_config(bootstrap: &str, group: &str, isolation: Isolation) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .set("isolation.level", isolation.config_value());
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_partitions_follow_java_string_hash_code() {
        // Java: "".hashCode() == 0, "a".hashCode() == 97, "hello".hashCode() == 99162322,
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE (Kafka's abs maps it to 0).
        assert_eq!(coordinator_partition("", 50), 0);
        assert_eq!(coordinator_partition("a", 50), 97 % 50);
        assert_eq!(coordinator_partition("hello", 50), 99_162_322 % 50);
        assert_eq!(coordinator_partition("polygenelubricants", 7), 0);
        // "orderpipe".hashCode() == -390_745_604 in Java: negative hashes are made positive.
        assert_eq!(coordinator_partition("orderpipe", 3), 390_745_604 % 3);
        assert_eq!(coordinator_partition("anything", 1), 0);
        assert_eq!(coordinator_partition("anything", 0), 0);
    }
}
