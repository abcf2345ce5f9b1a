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

use super::bounded::BoundedCalls;
use super::{GroupCommit, offsets_list};
use crate::record::OutRecord;
use crate::runtime::driver::lock;
use crate::runtime::growth::Markers;
use crate::runtime::{BrokerError, Offsets, Position, Refusal, Sink, SinkError, SinkErrorKind};

/// How long one transactional call (init, send offsets, commit, abort) may take, its retries
/// included, and how long a flush waits for acknowledgements.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than a transactional call's timeout the sink waits for its answer before it
/// gives up on the producer: librdkafka answers a timed-out call a moment after its deadline.
const ANSWER_GRACE: Duration = Duration::from_secs(5);
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

/// Runs a transactional call, repeating it while librdkafka says a retry can succeed, each time
/// with what is left of `timeout`.
fn retrying(
    producer: &Client,
    operation: &'static str,
    timeout: Duration,
    call: impl Fn(&Client, Duration) -> Result<(), KafkaError>,
) -> Result<(), SinkError> {
    let deadline = Instant::now() + timeout;
    loop {
        match call(producer, deadline.saturating_duration_since(Instant::now())) {
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
    /// Shared only with a transactional call in flight, which may outlive the connection's use of
    /// this producer (see [`TransactionalSink::call`]).
    producer: Arc<Client>,
}

impl Connection {
    fn open(config: ClientConfig) -> Result<Self, SinkError> {
        let context = Deliveries::default();
        let producer = Arc::new(create(&config, &context)?);
        Ok(Self {
            config,
            context,
            producer,
        })
    }

    /// Replaces the producer; the old one's missing delivery reports will never come.
    fn recreate(&mut self) -> Result<(), SinkError> {
        self.producer = Arc::new(create(&self.config, &self.context)?);
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
        // The records in flight when the wait begins; the span's busy time when it closes is how
        // long the broker took to acknowledge them (docs/benchmarks.md compares the two modes).
        let _span =
            tracing::debug_span!("flush", in_flight = self.producer.in_flight_count()).entered();
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
    /// Where the blocking transactional calls run, so that one librdkafka never answers costs
    /// `call_timeout` and a new producer instead of the worker (see [`super::bounded`]).
    calls: BoundedCalls,
    call_timeout: Duration,
}

impl std::fmt::Debug for TransactionalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalSink").finish_non_exhaustive()
    }
}

impl TransactionalSink {
    /// Creates the producer and initialises transactions; each transactional call may take
    /// `call_timeout` ([`CALL_TIMEOUT`] outside tests).
    pub fn connect(config: ClientConfig, call_timeout: Duration) -> Result<Self, SinkError> {
        let mut sink = Self {
            connection: Connection::open(config)?,
            calls: BoundedCalls::default(),
            call_timeout,
        };
        sink.init()?;
        Ok(sink)
    }

    /// Initialises transactions, which fences any earlier incarnation with the same transactional
    /// id (a re-created producer's predecessor included) and aborts what it left open.
    fn init(&mut self) -> Result<(), SinkError> {
        self.call("initialising transactions", |p, timeout| {
            p.init_transactions(timeout)
        })
    }

    /// Runs a transactional call of the current producer with its retries, waiting for the answer
    /// at most a little longer than the call's own timeout. No answer by then means librdkafka
    /// lost the call (see [`super::bounded`]): the producer is unusable, and re-creating it (what
    /// the coordinator does with [`SinkErrorKind::Fatal`]) fences the stuck one.
    fn call(
        &mut self,
        operation: &'static str,
        call: impl Fn(&Client, Duration) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), SinkError> {
        let producer = Arc::clone(&self.connection.producer);
        let timeout = self.call_timeout;
        self.calls
            .run(timeout + ANSWER_GRACE, move || {
                retrying(&producer, operation, timeout, call)
            })
            .unwrap_or_else(|unanswered| {
                Err(SinkError {
                    kind: SinkErrorKind::Fatal,
                    operation,
                    cause: BrokerError::new(format!(
                        "librdkafka gave {unanswered}; the producer is given up on and re-created"
                    )),
                })
            })
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
            self.call("sending offsets to the transaction", move |p, timeout| {
                p.send_offsets_to_transaction(&list, &metadata, timeout)
            })
        })?;
        self.connection.flush(self.call_timeout).map_err(|error| {
            classify(
                &self.connection.producer,
                "waiting for acknowledgements",
                error,
            )
        })?;
        // Nothing is in flight any more, so the flush inside commit_transaction returns at once.
        tracing::debug_span!("commit_transaction").in_scope(|| {
            self.call("committing the transaction", |p, timeout| {
                p.commit_transaction(timeout)
            })
        })
    }

    fn abort(&mut self) -> Result<(), SinkError> {
        self.call("aborting the transaction", |p, timeout| {
            p.abort_transaction(timeout)
        })
    }

    /// Replaces the producer; the old one's missing delivery reports will never come.
    fn recreate(&mut self) -> Result<(), SinkError> {
        tracing::warn!("re-creating the transactional producer");
        self.connection.recreate()?;
        self.init()
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
            connection: Connection::open(config)?,
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
        self.connection
            .flush(CALL_TIMEOUT)
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

#[cfg(test)]
mod tests {
    //! The sink against librdkafka's in-process mock cluster, which can hold one broker down
    //! while others serve: the one way to take the group coordinator away mid-call here.

    use rdkafka::consumer::BaseConsumer;
    use rdkafka::mocking::{MockCluster, MockCoordinator};

    use super::*;

    const GROUP: &str = "orders-validate";
    const TRANSACTIONAL_ID: &str = "orders-validate-0";
    const GROUP_COORDINATOR: i32 = 3;

    fn send_one(sink: &mut TransactionalSink, offset: i64) {
        sink.begin().expect("beginning a transaction");
        let record = OutRecord {
            topic: "orders-valid",
            partition: None,
            key: Some(b"order-1"),
            payload: Some(b"{}"),
            headers: &[],
            passthrough: &[],
            timestamp: None,
        };
        sink.send(
            Position {
                partition: 0,
                offset,
            },
            record,
        )
        .expect("queueing a record");
    }

    #[test]
    fn a_commit_librdkafka_never_answers_gives_up_the_producer_and_a_new_one_commits() {
        let cluster = MockCluster::new(3).expect("starting the mock cluster");
        for topic in ["orders", "orders-valid"] {
            cluster.create_topic(topic, 1, 3).expect("creating a topic");
        }
        // The transaction coordinator stays up; only the group coordinator goes away.
        cluster
            .coordinator(MockCoordinator::Transaction(TRANSACTIONAL_ID.into()), 1)
            .expect("placing the transaction coordinator");
        cluster
            .coordinator(MockCoordinator::Group(GROUP.into()), GROUP_COORDINATOR)
            .expect("placing the group coordinator");
        let bootstrap = cluster.bootstrap_servers();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", TRANSACTIONAL_ID);
        let call_timeout = Duration::from_secs(2);
        let mut sink =
            TransactionalSink::connect(config, call_timeout).expect("initialising transactions");
        // Its group metadata is all a commit reads; it need not join.
        let member: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", GROUP)
            .create()
            .expect("creating the consumer");

        send_one(&mut sink, 0);
        cluster
            .broker_down(GROUP_COORDINATOR)
            .expect("taking the group coordinator down");
        let started = Instant::now();
        let given_up = sink
            .commit("orders", &Offsets::from([(0, 1)]), &Markers::new(), &member)
            .expect_err("the offsets cannot reach a coordinator that is down");
        let waited = started.elapsed();
        assert_eq!(given_up.kind, SinkErrorKind::Fatal, "{given_up}");
        assert!(
            waited < call_timeout + ANSWER_GRACE + Duration::from_secs(5),
            "the commit waited {waited:?}"
        );

        cluster
            .broker_up(GROUP_COORDINATOR)
            .expect("bringing the group coordinator back");
        sink.recreate().expect("a new producer initialises");
        send_one(&mut sink, 0);
        sink.commit("orders", &Offsets::from([(0, 1)]), &Markers::new(), &member)
            .expect("the new producer commits");
    }
}
