//! `orderpipe-bench raw-copy` (hidden): the ceiling of the worker benchmarks. A plain librdkafka
//! consume -> produce copy with no processing, in its own process so its RSS and CPU are its own:
//! every record's key and bytes go to the output unchanged; every commit interval the producer is
//! flushed and the consumed offsets are committed (at-least-once). Consumer and producer use the
//! worker's client settings (read_committed, idempotent producer, acks=all, lz4), so the
//! difference to the worker is the worker's own work. Runs until killed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orderpipe_worker::kafka::client;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use orderpipe_api::contract::KafkaConnection;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    commit_interval_ms: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating the consumer")?;
    consumer
        .subscribe(&[&args.input])
        .with_context(|| format!("subscribing to {}", args.input))?;
    let producer: ThreadedProducer<_> = client::idempotent_producer(
        &KafkaConnection::plaintext(&args.bootstrap),
        "orderpipe-bench-raw-copy",
    )
    .create()
    .context("creating the producer")?;
    let interval = Duration::from_millis(args.commit_interval_ms);
    let mut next_offsets: HashMap<i32, i64> = HashMap::new();
    let mut last_commit = Instant::now();
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(10)) {
            let message = message.context("consuming")?;
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&args.output).payload(message.payload().unwrap_or_default());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            send(&producer, record)?;
            next_offsets.insert(message.partition(), message.offset() + 1);
        }
        if last_commit.elapsed() >= interval && !next_offsets.is_empty() {
            producer
                .flush(Duration::from_secs(30))
                .context("flushing")?;
            let mut offsets = TopicPartitionList::new();
            for (partition, offset) in next_offsets.drain() {
                offsets
                    .add_partition_offset(&args.input, partition, Offset::Offset(offset))
                    .context("offsets to commit")?;
            }
            consumer
                .commit(&offsets, CommitMode::Sync)
                .context("committing offsets")?;
            last_commit = Instant::now();
        }
    }
}

fn send(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                // The producer's own thread drains the queue as the broker acknowledges.
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => return Err(error).context("producing"),
        }
    }
}
