//! librdkafka configuration of every client the worker creates, derived from the worker contract:
//! connection and security settings once, then the stage consumer, the transactional (or
//! idempotent) producer and the changelog restore consumer. Must not create clients; never log a
//! `ClientConfig` (it holds the SASL password).

use std::time::Duration;

use orderpipe_api::contract::{KafkaConnection, WorkerConfig};
use rdkafka::ClientConfig;

/// How long a transaction may stay open before the broker aborts it. Far above the commit
/// interval; bounds how long a crashed worker's open transaction blocks read_committed readers.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection and security settings shared by every client.
pub fn connection(kafka: &KafkaConnection, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id);
    let protocol = match (kafka.tls, kafka.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    config.set("security.protocol", protocol);
    if let Some(ca) = &kafka.tls_ca_file {
        config.set("ssl.ca.location", ca.display().to_string());
    }
    if let Some(dir) = &kafka.tls_client_dir {
        config
            .set(
                "ssl.certificate.location",
                dir.join("tls.crt").display().to_string(),
            )
            .set(
                "ssl.key.location",
                dir.join("tls.key").display().to_string(),
            );
    }
    if let Some(sasl) = &kafka.sasl {
        config
            .set("sasl.mechanism", sasl.mechanism.as_kafka_str())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose());
    }
    config
}

/// The stage's group member: reads only committed records, never commits on its own (offsets go
/// into the transaction), and rebalances cooperatively so unaffected partitions keep flowing.
pub fn stage_consumer(config: &WorkerConfig) -> ClientConfig {
    let mut client = connection(&config.kafka, &config.pod_name);
    client
        .set("group.id", &config.consumer_group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Pre-fetched records per assigned partition (each has a queue of its own, see
        // kafka/partition_queues.rs): part of the memory bound. At 1 MiB, 8 partitions peaked
        // lower than one shared 4 MiB queue did, and 1 partition was as fast as with 4 MiB.
        .set("queued.max.messages.kbytes", "1024")
        // When that small queue is full, librdkafka stops fetching for this long (default 1 s,
        // sized for its 64 MiB default): the loop drained the queue in a few ms and then starved
        // for the rest of the second. 10 ms rechecks well before a full queue runs dry.
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.max.bytes", "16777216")
        // What one fetch brings per partition, compressed. librdkafka keeps each decompressed
        // batch until its last record is taken: at the 1 MiB default, 8 partitions held 44 MiB of
        // decompressed batches at the peak (heaptrack, when the producers used zstd).
        .set("max.partition.fetch.bytes", "262144")
        // Statistics carry each partition's high watermark for the lag gauge.
        .set("statistics.interval.ms", "5000")
        // A grown input's new partitions are assigned (held, until their growth is released) at
        // the group's next metadata refresh: 10 s rather than the default 5 minutes, so a growth
        // whose settle window is short is not then held for minutes more. One small metadata
        // request per 10 s per worker.
        .set("topic.metadata.refresh.interval.ms", "10000");
    client
}

/// The worker's one transactional producer (KIP-447).
pub fn transactional_producer(config: &WorkerConfig) -> ClientConfig {
    let mut client = producer(config);
    let timeout = TRANSACTION_TIMEOUT.as_millis().to_string();
    client
        .set("transactional.id", config.transactional_id())
        .set("transaction.timeout.ms", &timeout)
        // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
        .set("message.timeout.ms", &timeout);
    client
}

/// An idempotent producer (the at-least-once mode and the load generator).
pub fn producer(config: &WorkerConfig) -> ClientConfig {
    idempotent_producer(&config.kafka, &config.transactional_id())
}

/// An idempotent producer for any connection.
pub fn idempotent_producer(kafka: &KafkaConnection, client_id: &str) -> ClientConfig {
    let mut client = connection(kafka, client_id);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // lz4, not zstd: on the whole pipeline zstd's compression was 15 % of the validate
        // worker's CPU, and the cores, not the network, are what an order pipeline runs out of
        // (docs/benchmarks.md, session 18). JSON orders still shrink about 2x.
        .set("compression.type", "lz4")
        // Same key -> same partition as the Java clients (Kafka Streams, Connect) compute it.
        .set("partitioner", "murmur2_random")
        // The producer's share of the flat memory bound.
        .set("queue.buffering.max.kbytes", "65536");
    client
}

/// Reads a state topic partition from the start; assigned, never a group member, never commits.
pub fn restore_consumer(config: &WorkerConfig) -> ClientConfig {
    assigned_reader(config, "restore")
}

/// Reads the pipeline's control topic (partition growth); assigned, never a group member, never
/// commits. Read_committed like every reader of the worker, though the operator's writes are not
/// transactional.
pub fn control_consumer(config: &WorkerConfig) -> ClientConfig {
    assigned_reader(config, "control")
}

/// A read_committed reader of assigned partitions from their start, named `<pod>.<role>`.
fn assigned_reader(config: &WorkerConfig, role: &str) -> ClientConfig {
    let mut client = connection(&config.kafka, &format!("{}.{role}", config.pod_name));
    client
        // Names the client in broker logs only: partitions are assigned, nothing is committed.
        .set("group.id", format!("{}.{role}", config.consumer_group))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    client
}
