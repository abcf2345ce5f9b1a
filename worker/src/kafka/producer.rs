//! The [`Sink`]s over librdkafka: the transactional producer of exactly-once mode, and the
//! idempotent producer plus offset commits of at-least-once mode (the benchmark baseline).
//! Owns the classification of librdkafka errors into abort / re-create / fenced; must not decide
//! what to do about them (the coordinator does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};

use super::{GroupCommit, offsets_list};
use crate::record::OutRecord;
use crate::runtime::driver::lock;
use crate::runtime::growth::Markers;
use crate::runtime::{BrokerError, Offsets, Position, Refusal, Sink, SinkError, SinkErrorKind};

/// How long one transactional call (init, send offsets, commit, abort) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a send waits for room in a full producer queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(30);
/// How long a send waits for a metadata refresh that may show a partition it does not know yet.
const METADATA_WAIT: Duration = Duration::from_secs(5);

/// How long [`Sink::take_refusals`] waits for the delivery reports of an aborted transaction.
const REPORTS_WAIT: Duration = Duration::from_secs(10);

/// Whether Kafka refused a record for what it is, so that sending it again can never succeed:
/// larger than `message.max.bytes` (checked by librdkafka before sending) or the topic's
/// `max.message.bytes` (checked by the broker), or a record the broker calls invalid. Everything
/// else (authorization, unknown topic, fencing, timeouts) is about the client, the cluster or the
/// pipeline and must never be blamed on, and dead-lettered with, an input record.
fn is_record_refusal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTimestamp
    )
}

/// The producer's delivery reports: failures (at-least-once must not commit offsets past a lost
/// record), record refusals by the input that produced them, and how many reports are outstanding.
#[derive(Debug, Default, Clone)]
pub struct Deliveries {
    failures: Arc<AtomicU64>,
    outstanding: Arc<AtomicU64>,
    /// Signalled when `outstanding` drops to zero; the mutex only orders that signal against a
    /// waiter's check of the counter, so no wake-up is lost.
    settled_all: Arc<(Mutex<()>, Condvar)>,
    refusals: Arc<Mutex<Vec<Refusal>>>,
}

impl Deliveries {
    fn refused(&self, from: Position, error: &KafkaError) {
        lock(&self.refusals).push(Refusal {
            from,
            error: error.to_string(),
        });
    }

    /// One report came (or one send was not queued). Saturating: a late report of a replaced
    /// producer must not wrap the count.
    fn settled(&self) {
        let before = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        if before.is_ok_and(|n| n <= 1) {
            self.wake_waiters();
        }
    }

    /// The producer was replaced: the old one's missing reports will never come.
    fn replaced(&self) {
        self.outstanding.store(0, Ordering::Release);
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        let (mutex, condvar) = &*self.settled_all;
        let _ordered = lock(mutex);
        condvar.notify_all();
    }

    /// Waits until every outstanding report is in, or until `deadline`.
    fn wait_settled(&self, deadline: Instant) {
        let (mutex, condvar) = &*self.settled_all;
        let mut guard = lock(mutex);
        while self.outstanding.load(Ordering::Acquire) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            guard = condvar
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The refusals reported so far, once every outstanding report is in (or after `wait`).
    fn take_refusals(&self, wait: Duration) -> Vec<Refusal> {
        self.wait_settled(Instant::now() + wait);
        std::mem::take(&mut *lock(&self.refusals))
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Position>;

    fn delivery(&self, result: &DeliveryResult<'_>, from: Box<Position>) {
        self.settled();
        if let Err((error, _)) = result {
            tracing::warn!(%error, "record delivery failed");
            self.failures.fetch_add(1, Ordering::AcqRel);
            if error.rdkafka_error_code().is_some_and(is_record_refusal) {
                self.refused(*from, error);
            }
        }
    }
}

type Client = ThreadedProducer<Deliveries>;

fn create(config: &ClientConfig, context: &Deliveries) -> Result<Client, SinkError> {
    config
        .create_with_context(context.clone())
        .map_err(|error| SinkError {
            kind: SinkErrorKind::Fatal,
            operation: "creating the producer",
            cause: error.into(),
        })
}

/// Whether `code` says another producer with our transactional id took over.
fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
    )
}

/// Classifies a failed producer call by what librdkafka says about the producer's state.
fn classify(producer: &Client, operation: &'static str, source: KafkaError) -> SinkError {
    let fatal = producer.client().fatal_error().map(|(code, _)| code);
    let kind = match (&source, fatal) {
        (_, Some(code)) if is_fencing(code) => SinkErrorKind::Fenced,
        (KafkaError::Transaction(error), _) if is_fencing(error.code()) => SinkErrorKind::Fenced,
        (_, Some(_)) => SinkErrorKind::Fatal,
        (KafkaError::Transaction(error), None) if error.is_fatal() => SinkErrorKind::Fatal,
        _ => SinkErrorKind::Abortable,
    };
    SinkError {
        kind,
        operation,
        cause: source.into(),
    }
}

/// Runs a transactional call, repeating it while librdkafka says a retry can succeed.
fn retrying(
    producer: &Client,
    operation: &'static str,
    call: impl Fn(&Client) -> Result<(), KafkaError>,
) -> Result<(), SinkError> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        match call(producer) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(error))
                if error.is_retriable()
                    && !error.txn_requires_abort()
                    && !error.is_fatal()
                    && Instant::now() < deadline =>
            {
                tracing::debug!(%error, operation, "retrying");
            }
            Err(error) => return Err(classify(producer, operation, error)),
        }
    }
}

/// A sink's producer with what re-creating it takes. Every producer of one connection reports to
/// the same [`Deliveries`], so failures and refusals carry across a re-creation.
struct Connection {
    config: ClientConfig,
    context: Deliveries,
    producer: Client,
    /// Makes each producer of this connection: the first one and every re-created one.
    create: fn(&ClientConfig, &Deliveries) -> Result<Client, SinkError>,
}

impl Connection {
    fn open(
        config: ClientConfig,
        create: fn(&ClientConfig, &Deliveries) -> Result<Client, SinkError>,
    ) -> Result<Self, SinkError> {
        let context = Deliveries::default();
        let producer = create(&config, &context)?;
        Ok(Self {
            config,
            context,
            producer,
            create,
        })
    }

    /// Replaces the producer; the old one's missing delivery reports will never come.
    fn recreate(&mut self) -> Result<(), SinkError> {
        self.producer = (self.create)(&self.config, &self.context)?;
        self.context.replaced();
        Ok(())
    }

    /// Waits until librdkafka has delivered (or given up on) every record produced so far.
    ///
    /// Not the crate's `Producer::flush`: rust-rdkafka 0.39 serves the event queue in
    /// `poll(100 ms)` steps that only return at their deadline, so a flush that finds a record
    /// still in flight takes 100 ms however soon the broker acknowledges it. That was most of
    /// every commit (`commit_transaction` flushes first). Here the delivery reports wake the wait,
    /// then a non-blocking flush confirms librdkafka's own count is zero (its reports are released
    /// a moment after our callback saw them).
    fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + timeout;
        self.context.wait_settled(deadline);
        loop {
            match self.producer.flush(Duration::ZERO) {
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_micros(100));
                }
                flushed => return flushed,
            }
        }
    }

    /// Produces one record, an output of the input at `from`, waiting (bounded) while the local
    /// queue is full. A record librdkafka refuses at once for what it is counts as a refusal, like
    /// one the broker refuses later.
    fn send(&self, from: Position, record: OutRecord<'_>) -> Result<(), SinkError> {
        let deadline = Instant::now() + QUEUE_FULL_WAIT;
        let mut metadata_refreshed = false;
        loop {
            let mut headers =
                OwnedHeaders::new_with_capacity(record.headers.len() + record.passthrough.len());
            for header in record.headers {
                headers = headers.insert(Header {
                    key: header.name,
                    value: Some(header.value.as_bytes()),
                });
            }
            for header in record.passthrough {
                headers = headers.insert(Header {
                    key: &header.name,
                    value: header.value.as_deref(),
                });
            }
            let mut base: BaseRecord<'_, [u8], [u8], Box<Position>> =
                BaseRecord::with_opaque_to(record.topic, Box::new(from)).headers(headers);
            if let Some(payload) = record.payload {
                base = base.payload(payload);
            }
            if let Some(key) = record.key {
                base = base.key(key);
            }
            if let Some(partition) = record.partition {
                base = base.partition(partition);
            }
            if let Some(timestamp) = record.timestamp {
                base = base.timestamp(timestamp.timestamp_millis());
            }
            // Counted before the send: its report may arrive on the producer's thread before send
            // returns, and the count must never look settled while a report is still due.
            self.context.outstanding.fetch_add(1, Ordering::AcqRel);
            let sent = self.producer.send(base);
            if sent.is_err() {
                // Not queued, so no report will come.
                self.context.settled();
            }
            match sent {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < deadline =>
                {
                    // The producer's own thread drains the queue; back off briefly and try again.
                    thread::sleep(Duration::from_millis(5));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition), _))
                    if record.partition.is_some() && !metadata_refreshed =>
                {
                    // A partition the topic just grew by (a growth's re-shard or forward writes to
                    // one explicitly): librdkafka knows the count of its last metadata refresh,
                    // every 5 minutes. A metadata request updates it; then try once more.
                    metadata_refreshed = true;
                    if let Err(error) = self
                        .producer
                        .client()
                        .fetch_metadata(Some(record.topic), METADATA_WAIT)
                    {
                        tracing::warn!(%error, topic = record.topic, "refreshing the topic's metadata");
                    }
                }
                Err((error, _)) => {
                    if error.rdkafka_error_code().is_some_and(is_record_refusal) {
                        self.context.refused(from, &error);
                    }
                    return Err(classify(&self.producer, "producing a record", error));
                }
            }
        }
    }
}

/// Exactly-once: one transactional producer per worker process.
pub struct TransactionalSink {
    connection: Connection,
}

impl std::fmt::Debug for TransactionalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalSink").finish_non_exhaustive()
    }
}

impl TransactionalSink {
    /// Creates the producer and initialises transactions, which fences any earlier incarnation
    /// with the same transactional id and aborts what it left open.
    pub fn connect(config: ClientConfig) -> Result<Self, SinkError> {
        Ok(Self {
            connection: Connection::open(config, Self::initialised)?,
        })
    }

    fn initialised(config: &ClientConfig, context: &Deliveries) -> Result<Client, SinkError> {
        let producer = create(config, context)?;
        retrying(&producer, "initialising transactions", |p| {
            p.init_transactions(CALL_TIMEOUT)
        })?;
        Ok(producer)
    }
}

impl Sink for TransactionalSink {
    type Group = dyn GroupCommit;

    fn begin(&mut self) -> Result<(), SinkError> {
        self.connection
            .producer
            .begin_transaction()
            .map_err(|error| classify(&self.connection.producer, "beginning a transaction", error))
    }

    fn send(&mut self, from: Position, record: OutRecord<'_>) -> Result<(), SinkError> {
        self.connection.send(from, record)
    }

    fn commit(
        &mut self,
        input_topic: &str,
        offsets: &Offsets,
        markers: &Markers,
        group: &dyn GroupCommit,
    ) -> Result<(), SinkError> {
        let metadata = group.group_metadata().ok_or_else(|| SinkError {
            kind: SinkErrorKind::Abortable,
            operation: "reading the consumer group metadata",
            cause: BrokerError::new("the consumer has none (it is closed or not a group member)"),
        })?;
        let list = offsets_list(input_topic, offsets, markers).map_err(|error| SinkError {
            kind: SinkErrorKind::Abortable,
            operation: "listing offsets",
            cause: error.into(),
        })?;
        tracing::debug_span!("send_offsets").in_scope(|| {
            retrying(
                &self.connection.producer,
                "sending offsets to the transaction",
                |p| p.send_offsets_to_transaction(&list, &metadata, CALL_TIMEOUT),
            )
        })?;
        tracing::debug_span!("flush")
            .in_scope(|| self.connection.flush(CALL_TIMEOUT))
            .map_err(|error| {
                classify(
                    &self.connection.producer,
                    "waiting for acknowledgements",
                    error,
                )
            })?;
        // Nothing is in flight any more, so the flush inside commit_transaction returns at once.
        tracing::debug_span!("commit_transaction").in_scope(|| {
            retrying(
                &self.connection.producer,
                "committing the transaction",
                |p| p.commit_transaction(CALL_TIMEOUT),
            )
        })
    }

    fn abort(&mut self) -> Result<(), SinkError> {
        retrying(&self.connection.producer, "aborting the transaction", |p| {
            p.abort_transaction(CALL_TIMEOUT)
        })
    }

    /// Replaces the producer; the old one's missing delivery reports will never come.
    fn recreate(&mut self) -> Result<(), SinkError> {
        tracing::warn!("re-creating the transactional producer");
        self.connection.recreate()
    }

    fn take_refusals(&mut self) -> Vec<Refusal> {
        self.connection.context.take_refusals(REPORTS_WAIT)
    }
}

/// At-least-once: produce, wait for every acknowledgement, then commit offsets with the consumer.
pub struct AtLeastOnceSink {
    connection: Connection,
}

impl std::fmt::Debug for AtLeastOnceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtLeastOnceSink").finish_non_exhaustive()
    }
}

impl AtLeastOnceSink {
    pub fn connect(config: ClientConfig) -> Result<Self, SinkError> {
        Ok(Self {
            connection: Connection::open(config, create)?,
        })
    }
}

impl Sink for AtLeastOnceSink {
    type Group = dyn GroupCommit;

    fn begin(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn send(&mut self, from: Position, record: OutRecord<'_>) -> Result<(), SinkError> {
        self.connection.send(from, record)
    }

    /// A re-shard's moves are flushed before its marker is committed, but not atomically with it.
    /// The coordinator commits what came before a re-shard first, so a crash in between only
    /// leaves moved states without the marker: the next owner restores the partition without the
    /// moved keys, continues at the barrier, and re-shards again, which moves nothing twice. What
    /// at-least-once loses is what it always loses: outputs between the last commit and a crash
    /// are written again.
    fn commit(
        &mut self,
        input_topic: &str,
        offsets: &Offsets,
        markers: &Markers,
        group: &dyn GroupCommit,
    ) -> Result<(), SinkError> {
        let abortable = |operation, cause| SinkError {
            kind: SinkErrorKind::Abortable,
            operation,
            cause,
        };
        tracing::debug_span!("flush")
            .in_scope(|| self.connection.flush(CALL_TIMEOUT))
            .map_err(|error| abortable("waiting for acknowledgements", error.into()))?;
        let failed = self.connection.context.failures.swap(0, Ordering::AcqRel);
        if failed > 0 {
            return Err(abortable(
                "delivering the batch",
                BrokerError::new(format!("{failed} records were not delivered")),
            ));
        }
        tracing::debug_span!("commit_offsets")
            .in_scope(|| group.commit_offsets(input_topic, offsets, markers))
            .map_err(|error| abortable("committing offsets", error.into()))
    }

    /// Drops what is not sent yet; what was sent may still land (at-least-once allows duplicates).
    fn abort(&mut self) -> Result<(), SinkError> {
        self.connection
            .producer
            .purge(PurgeConfig::default().queue().inflight());
        self.connection.context.failures.store(0, Ordering::Release);
        Ok(())
    }

    /// Replaces the producer; the old one's missing delivery reports will never come.
    fn recreate(&mut self) -> Result<(), SinkError> {
        self.connection.recreate()
    }

    fn take_refusals(&mut self) -> Vec<Refusal> {
        self.connection.context.take_refusals(REPORTS_WAIT)
    }
}
