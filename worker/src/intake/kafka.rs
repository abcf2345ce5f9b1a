//! The gateway's Kafka clients: the idempotent producer of the orders topic (acks=all: a 202 only
//! for a record the broker acknowledged) with the broker's reachability, and the read_committed
//! consumer that feeds the [`StatusView`] from the status stage's output topic. librdkafka's types
//! end here: the HTTP layer sees [`Produced`] and [`ProduceError`]. Must not decide answers.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orderpipe_api::contract::KafkaConnection;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::metrics::IntakeMetrics;
use super::status_view::StatusView;
use crate::kafka::client::{connection, idempotent_producer};

/// How long a metadata request may take when probing the broker or listing partitions.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the broker answered lately: set down by librdkafka's "all brokers down" and by failed
/// deliveries, set up by a metadata answer or an acknowledged record.
#[derive(Debug, Default)]
pub struct BrokerState {
    up: AtomicBool,
    /// A fatal producer error (e.g. the idempotent producer's sequence broke): only a new process
    /// recovers, so liveness fails.
    fatal: AtomicBool,
}

impl BrokerState {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn is_fatal(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }
}

/// Routes librdkafka's error callback into [`BrokerState`].
#[derive(Debug, Clone)]
pub struct BrokerWatch(Arc<BrokerState>);

impl ClientContext for BrokerWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.0.set_up(false);
        }
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

/// A record the broker acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record is not (known to be) in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer's queue is full: back-pressure, the client should retry later.
    #[error("the producer queue is full")]
    QueueFull,
    /// The broker cannot be reached or did not acknowledge in time.
    #[error("Kafka is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the record as too large for the topic.
    #[error("Kafka refused the record: {0}")]
    Refused(String),
}

/// The idempotent producer of the orders topic.
pub struct OrderSink {
    producer: FutureProducer<BrokerWatch>,
    topic: String,
    pub broker: Arc<BrokerState>,
}

impl std::fmt::Debug for OrderSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl OrderSink {
    /// `delivery_timeout` bounds how long a request waits for the acknowledgement
    /// (`message.timeout.ms`); past it the record is reported failed and the client gets a 503.
    /// `queue_messages` records at most wait for the broker; one more is refused (429).
    pub fn new(
        kafka: &KafkaConnection,
        client_id: &str,
        topic: &str,
        delivery_timeout: Duration,
        queue_messages: NonZeroUsize,
    ) -> Result<Self, KafkaError> {
        let broker = Arc::new(BrokerState::default());
        let mut config = idempotent_producer(kafka, client_id);
        config
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            )
            .set("queue.buffering.max.messages", queue_messages.to_string());
        let producer = config.create_with_context(BrokerWatch(Arc::clone(&broker)))?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            broker,
        })
    }

    /// Produces `payload` keyed by `key` and waits for the broker's acknowledgement (acks=all).
    pub async fn produce(&self, key: &str, payload: &[u8]) -> Result<Produced, ProduceError> {
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        let delivery = match self.producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((error, _)) => return Err(self.failed(error)),
        };
        match delivery.await {
            Ok(Ok(delivery)) => {
                self.broker.set_up(true);
                Ok(Produced {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Ok(Err((error, _))) => Err(self.failed(error)),
            Err(_canceled) => Err(ProduceError::Unavailable(
                "the producer shut down before the acknowledgement".to_owned(),
            )),
        }
    }

    fn failed(&self, error: KafkaError) -> ProduceError {
        if self.producer.client().fatal_error().is_some() {
            self.broker.fatal.store(true, Ordering::Relaxed);
        }
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => ProduceError::QueueFull,
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
                ProduceError::Refused(error.to_string())
            }
            _ => {
                self.broker.set_up(false);
                ProduceError::Unavailable(error.to_string())
            }
        }
    }

    /// Asks the broker for the topic's metadata; up when it answers. Blocking.
    fn probe(&self) -> bool {
        let up = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .is_ok_and(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .any(|topic| topic.error().is_none() && !topic.partitions().is_empty())
            });
        self.broker.set_up(up);
        up
    }

    /// Probes the broker at start and then every `interval` while it is down, so that requests
    /// are refused fast (503) during an outage and accepted again as soon as it ends.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        loop {
            if !self.broker.is_up() {
                let sink = Arc::clone(&self);
                let _ = tokio::task::spawn_blocking(move || sink.probe()).await;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Waits (bounded) for queued records to be acknowledged, at shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "flushing the order producer at shutdown failed");
        }
    }
}

/// Reads the status stage's `StatusChanged` topic (read_committed, every partition from its start)
/// into `view`; `caught_up` is set once every partition reached the end it had at start.
pub async fn feed_status_view(
    kafka: &KafkaConnection,
    client_id: &str,
    topic: &str,
    view: Arc<Mutex<StatusView>>,
    caught_up: Arc<AtomicBool>,
    metrics: Arc<IntakeMetrics>,
    stop: CancellationToken,
) -> Result<(), KafkaError> {
    let mut config: ClientConfig = connection(kafka, client_id);
    config
        // Names the client in broker logs only: partitions are assigned, nothing is committed.
        .set("group.id", client_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // Read-your-writes within 1 s of the stage's commit: an idle fetch returns after 100 ms.
        .set("fetch.wait.max.ms", "100");
    let consumer: StreamConsumer = config.create()?;
    let partitions = loop {
        match consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
            Ok(metadata) => {
                let count = metadata
                    .topics()
                    .first()
                    .map_or(0, |topic| topic.partitions().len());
                if count > 0 {
                    break count;
                }
                tracing::warn!(topic, "the status topic has no partitions yet");
            }
            Err(error) => tracing::warn!(%error, topic, "reading the status topic's metadata"),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let partition = i32::try_from(partition).unwrap_or(i32::MAX);
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut at_end = vec![false; partitions];
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                let Some(payload) = message.payload() else {
                    continue;
                };
                match serde_json::from_slice(payload) {
                    Ok(change) => {
                        let mut view = view.lock().unwrap_or_else(|p| p.into_inner());
                        view.apply(change);
                        metrics.status_entries(view.len());
                    }
                    Err(error) => tracing::warn!(
                        %error,
                        partition = message.partition(),
                        offset = message.offset(),
                        "skipping a record of the status topic that is not a StatusChanged"
                    ),
                }
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                if let Some(end) = usize::try_from(partition)
                    .ok()
                    .and_then(|p| at_end.get_mut(p))
                {
                    *end = true;
                }
                if at_end.iter().all(|end| *end) {
                    caught_up.store(true, Ordering::Relaxed);
                }
            }
            Err(error) => tracing::warn!(%error, "reading the status topic"),
        }
    }
}
