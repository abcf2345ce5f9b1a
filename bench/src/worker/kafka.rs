//! The benchmark's own Kafka clients (topics come from the stack's Kafka kit): backlogs from the
//! load generator, a group's committed progress, and the latency probe (paced orders in, the same orders seen by a read_committed
//! reader of the output). Must not start or judge the processes under test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orderpipe_api::contract::KafkaConnection;
use orderpipe_worker::kafka::client;
use orderpipe_worker::loadgen::{self, LoadMode, LoadSpec};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Every wait on the broker gives up after this long.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates topics whose names the runs build at run time (`(name, partitions)`), through the
/// stack's Kafka kit.
pub fn create_named_topics(bootstrap: &str, topics: &[(String, i32)]) -> anyhow::Result<()> {
    let topics: Vec<(&str, i32)> = topics
        .iter()
        .map(|(name, partitions)| (name.as_str(), *partitions))
        .collect();
    Ok(orderpipe_stack::create_topics(bootstrap, &topics)?)
}

/// Orders as a shop sends them: mostly valid, a few invalid and re-submitted ones.
pub fn orders(count: u64, rate: Option<u32>, seed: u64) -> LoadSpec {
    LoadSpec {
        mode: LoadMode::Orders,
        count,
        rate,
        keys: 0,
        invalid_share: 0.02,
        garbage_share: 0.0,
        duplicate_share: 0.01,
        seed,
    }
}

/// Only valid, distinct orders: each yields exactly one validated record, keyed by its orderId.
pub fn valid_orders(count: u64, rate: u32, seed: u64) -> LoadSpec {
    LoadSpec {
        invalid_share: 0.0,
        duplicate_share: 0.0,
        ..orders(count, Some(rate), seed)
    }
}

/// Mean payload size of `spec`'s first thousand records, in bytes.
pub fn mean_payload_bytes(spec: &LoadSpec) -> u64 {
    let sizes: Vec<u64> = loadgen::generate(spec)
        .take(1_000)
        .map(|record| record.payload.len() as u64)
        .collect();
    sizes.iter().sum::<u64>() / sizes.len().max(1) as u64
}

/// Produces `spec` into `topic` and waits for every acknowledgement.
pub fn fill(bootstrap: &str, topic: &str, spec: &LoadSpec) -> anyhow::Result<()> {
    let mut last = Instant::now();
    loadgen::produce(
        &KafkaConnection::plaintext(bootstrap),
        topic,
        spec,
        |progress| {
            if last.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "[bench]   {topic}: {} of {} orders produced",
                    progress.acknowledged, spec.count
                );
                last = Instant::now();
            }
        },
    )
    .with_context(|| format!("producing {} orders into {topic}", spec.count))?;
    Ok(())
}

/// How far a consumer group has committed in one topic.
pub struct GroupProgress {
    reader: BaseConsumer,
    partitions: TopicPartitionList,
}

impl std::fmt::Debug for GroupProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupProgress")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl GroupProgress {
    pub fn new(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        // A client with the group's id asks the group coordinator; it never joins the group.
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the progress reader")?;
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
        }
        Ok(Self {
            reader,
            partitions: list,
        })
    }

    /// Sum of the group's committed offsets (a partition without a commit counts 0). A group
    /// coordinator that is still loading or moving (`NotCoordinator` on a fresh broker) is asked
    /// again for up to [`BROKER_TIMEOUT`].
    pub fn committed(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + BROKER_TIMEOUT;
        let committed = loop {
            match self
                .reader
                .committed_offsets(self.partitions.clone(), BROKER_TIMEOUT)
            {
                Ok(committed) => break committed,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => return Err(error).context("reading committed offsets"),
            }
        };
        Ok(committed
            .elements()
            .iter()
            .map(|element| match element.offset() {
                Offset::Offset(offset) => u64::try_from(offset).unwrap_or(0),
                _ => 0,
            })
            .sum())
    }
}

/// End-to-end latencies of `spec` (valid, distinct orders, paced): from handing each order to the
/// producer to a read_committed reader of `output` receiving the record with its key.
pub fn latencies(
    bootstrap: &str,
    input: &str,
    output: &str,
    output_partitions: i32,
    spec: &LoadSpec,
    timeout: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{output}.latency"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()
        .context("creating the latency reader")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..output_partitions {
        assignment
            .add_partition_offset(output, partition, Offset::Beginning)
            .context("latency reader assignment")?;
    }
    reader
        .assign(&assignment)
        .context("assigning the latency reader")?;

    let sent: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
    let producer = {
        let sent = Arc::clone(&sent);
        let (bootstrap, input, spec) = (bootstrap.to_owned(), input.to_owned(), spec.clone());
        std::thread::spawn(move || paced(&bootstrap, &input, &spec, &sent))
    };
    let expected = usize::try_from(spec.count).unwrap_or(usize::MAX);
    let mut samples = Vec::with_capacity(expected);
    let deadline = Instant::now() + timeout;
    while samples.len() < expected {
        if Instant::now() > deadline {
            bail!(
                "latency run: {} of {expected} orders reached {output} within {timeout:?}",
                samples.len()
            );
        }
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let seen = Instant::now();
                let key = message.key().unwrap_or_default();
                if let Some(at) = sent
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .get(key)
                {
                    samples.push(seen.duration_since(*at));
                }
            }
            Some(Err(error)) => return Err(error).context(format!("reading {output}")),
        }
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("the latency producer panicked"))??;
    Ok(samples)
}

/// Produces `spec` at its rate, noting each key's send time first.
pub fn paced(
    bootstrap: &str,
    topic: &str,
    spec: &LoadSpec,
    sent: &Mutex<HashMap<Vec<u8>, Instant>>,
) -> anyhow::Result<()> {
    let producer: ThreadedProducer<_> = client::idempotent_producer(
        &KafkaConnection::plaintext(bootstrap),
        "orderpipe-bench-latency",
    )
    .set("linger.ms", "0")
    .create()
    .context("creating the latency producer")?;
    // One unmeasured order first: connecting and acquiring the idempotent producer id must not
    // be counted in the first measured orders' latency.
    let primer = loadgen::generate(&LoadSpec {
        count: 1,
        seed: spec.seed ^ 0xffff,
        ..spec.clone()
    })
    .next()
    .context("generating the primer order")?;
    let base: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
        .key(primer.key.as_deref().unwrap_or_default())
        .payload(primer.payload.as_slice());
    producer
        .send(base)
        .map_err(|(error, _)| error)
        .context("producing the primer order")?;
    producer
        .flush(BROKER_TIMEOUT)
        .context("flushing the primer order")?;
    let rate = f64::from(spec.rate.unwrap_or(1).max(1));
    let started = Instant::now();
    for (index, record) in loadgen::generate(spec).enumerate() {
        // Pacing, not synchronisation: order n is due n/rate seconds after the start.
        let due = started + Duration::from_secs_f64(index as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let key = record.key.clone().unwrap_or_default();
        sent.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(key.clone(), Instant::now());
        let base: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .key(key.as_slice())
            .payload(record.payload.as_slice());
        match producer.send(base) {
            Ok(()) => {}
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                bail!("the latency load saturated the producer queue: lower its rate")
            }
            Err((error, _)) => return Err(error).context("producing a latency order"),
        }
    }
    producer
        .flush(BROKER_TIMEOUT)
        .context("flushing the latency producer")
}
