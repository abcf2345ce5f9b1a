//! The load generator: produces seeded, realistic input for a stage (placed orders with shares of
//! invalid, garbage and duplicate submissions, or interleaved status event life cycles) with an
//! idempotent producer at a target rate, reporting progress. Tests, the demo and the benchmarks
//! use it; [`generate`] gives them the same records, each with what the pipeline must do with it.
//! Must not consume or judge records.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use orderpipe_api::contract::KafkaConnection;
use orderpipe_orders::generator::{
    EventConfig, EventExpectation, EventGenerator, Expected, GenConfig, GeneratedEvent,
    OrderGenerator,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::kafka::client;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// `OrderPlaced` records for the validate stage.
    Orders,
    /// Status event sequences for the status stage.
    StatusEvents,
}

/// A load to produce.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub mode: LoadMode,
    /// Records to produce.
    pub count: u64,
    /// Records per second; `None` produces as fast as the broker takes them.
    pub rate: Option<u32>,
    /// Status events: orders whose life cycles are interleaved at any time.
    pub keys: usize,
    /// Orders: invalid submissions; status events: orders with one illegal event.
    pub invalid_share: f64,
    /// Orders only: bytes that are not an order.
    pub garbage_share: f64,
    /// Orders: re-submissions; status events: re-deliveries of an accepted event.
    pub duplicate_share: f64,
    pub seed: u64,
}

/// What the pipeline must do with a generated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    Order(Expected),
    Event(EventExpectation),
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct LoadRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub expectation: Expectation,
}

/// The records of `spec`, in production order; the same spec always yields the same records.
pub fn generate(spec: &LoadSpec) -> Box<dyn Iterator<Item = LoadRecord> + Send> {
    let count = usize::try_from(spec.count).unwrap_or(usize::MAX);
    match spec.mode {
        LoadMode::Orders => {
            let config = GenConfig {
                invalid_share: spec.invalid_share,
                garbage_share: spec.garbage_share,
                duplicate_share: spec.duplicate_share,
            };
            Box::new(
                OrderGenerator::new(spec.seed, config)
                    .map(|record| LoadRecord {
                        key: record.key,
                        payload: record.payload,
                        expectation: Expectation::Order(record.expected),
                    })
                    .take(count),
            )
        }
        LoadMode::StatusEvents => {
            let config = EventConfig {
                duplicate_share: spec.duplicate_share,
                illegal_share: spec.invalid_share,
                ..EventConfig::default()
            };
            Box::new(StatusEventStream::new(spec.seed, spec.keys, config).take(count))
        }
    }
}

/// Interleaves the life cycles of `keys` orders at a time: each record is the next event of a
/// randomly picked open order, so one order's events stay in order while orders mix.
struct StatusEventStream {
    events: EventGenerator,
    rng: StdRng,
    seed: u64,
    open: Vec<VecDeque<GeneratedEvent>>,
    next_order: u64,
}

impl StatusEventStream {
    fn new(seed: u64, keys: usize, config: EventConfig) -> Self {
        let mut stream = Self {
            events: EventGenerator::new(seed, config),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed),
            seed,
            open: Vec::with_capacity(keys.max(1)),
            next_order: 0,
        };
        for _ in 0..keys.max(1) {
            let lifecycle = stream.next_lifecycle();
            stream.open.push(lifecycle);
        }
        stream
    }

    fn next_lifecycle(&mut self) -> VecDeque<GeneratedEvent> {
        loop {
            let index = self.next_order;
            self.next_order += 1;
            let order_id = format!("ord-{:012x}-{index:08}", self.seed & 0xffff_ffff_ffff);
            let start = epoch() + TimeDelta::seconds(i64::try_from(index).unwrap_or(0));
            let events = self.events.lifecycle(&order_id, start);
            if !events.is_empty() {
                return events.into();
            }
        }
    }
}

impl Iterator for StatusEventStream {
    type Item = LoadRecord;

    fn next(&mut self) -> Option<LoadRecord> {
        let pick = self.rng.random_range(0..self.open.len());
        let event = self.open.get_mut(pick)?.pop_front()?;
        if self.open.get(pick).is_some_and(VecDeque::is_empty) {
            let lifecycle = self.next_lifecycle();
            self.open[pick] = lifecycle;
        }
        Some(LoadRecord {
            key: Some(event.key),
            payload: event.payload,
            expectation: Expectation::Event(event.expected),
        })
    }
}

/// 2025-01-01T00:00:00Z, as the orders generator starts business time.
fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_735_689_600, 0).unwrap_or_default()
}

/// Progress of a running load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// Why a load could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("creating the producer failed: {0}")]
    Producer(#[source] KafkaError),
    #[error("producing record {index} failed: {source}")]
    Send {
        index: u64,
        #[source]
        source: KafkaError,
    },
    #[error("{failed} of {sent} records were not acknowledged")]
    Undelivered { failed: u64, sent: u64 },
    #[error("waiting for acknowledgements failed: {0}")]
    Flush(#[source] KafkaError),
}

#[derive(Debug, Default, Clone)]
struct Acks {
    acknowledged: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(_) => self.acknowledged.fetch_add(1, Ordering::Relaxed),
            Err((error, _)) => {
                tracing::warn!(%error, "load record not delivered");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Produces `spec` to `topic`, calling `progress` about once a second and at the end. Blocking.
pub fn produce(
    connection: &KafkaConnection,
    topic: &str,
    spec: &LoadSpec,
    mut progress: impl FnMut(&LoadProgress),
) -> Result<LoadProgress, LoadError> {
    let acks = Acks::default();
    let producer: ThreadedProducer<Acks> =
        client::idempotent_producer(connection, "orderpipe-loadgen")
            .create_with_context(acks.clone())
            .map_err(LoadError::Producer)?;
    let started = Instant::now();
    let snapshot = |sent| LoadProgress {
        sent,
        acknowledged: acks.acknowledged.load(Ordering::Relaxed),
        failed: acks.failed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    let mut last_report = Instant::now();
    let mut sent = 0_u64;
    for record in generate(spec) {
        if let Some(rate) = spec.rate.filter(|&rate| rate > 0) {
            // Pacing, not synchronisation: record n is due n/rate seconds after the start.
            let due = started + Duration::from_secs_f64(sent as f64 / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        send(&producer, topic, &record, sent)?;
        sent += 1;
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress(&snapshot(sent));
            last_report = Instant::now();
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(LoadError::Flush)?;
    let done = snapshot(sent);
    progress(&done);
    if done.failed > 0 {
        return Err(LoadError::Undelivered {
            failed: done.failed,
            sent,
        });
    }
    Ok(done)
}

fn send(
    producer: &ThreadedProducer<Acks>,
    topic: &str,
    record: &LoadRecord,
    index: u64,
) -> Result<(), LoadError> {
    loop {
        let mut base: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(&record.payload);
        if let Some(key) = &record.key {
            base = base.key(key);
        }
        match producer.send(base) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // The producer's thread drains the queue as the broker acknowledges.
                thread::sleep(Duration::from_millis(2));
            }
            Err((source, _)) => return Err(LoadError::Send { index, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: LoadMode) -> LoadSpec {
        LoadSpec {
            mode,
            count: 2_000,
            rate: None,
            keys: 50,
            invalid_share: 0.05,
            garbage_share: 0.0,
            duplicate_share: 0.05,
            seed: 7,
        }
    }

    #[test]
    fn the_same_spec_generates_the_same_records() {
        for mode in [LoadMode::Orders, LoadMode::StatusEvents] {
            let first: Vec<Vec<u8>> = generate(&spec(mode)).map(|r| r.payload).collect();
            let second: Vec<Vec<u8>> = generate(&spec(mode)).map(|r| r.payload).collect();
            assert_eq!(first.len(), 2_000);
            assert_eq!(first, second);
        }
    }

    #[test]
    fn status_events_interleave_orders_but_keep_each_orders_versions_in_order() {
        let mut versions: std::collections::HashMap<Vec<u8>, u64> = Default::default();
        let mut distinct_in_first_hundred = std::collections::HashSet::new();
        for (index, record) in generate(&spec(LoadMode::StatusEvents)).enumerate() {
            let key = record.key.expect("events are keyed");
            if index < 100 {
                distinct_in_first_hundred.insert(key.clone());
            }
            if let Expectation::Event(EventExpectation::Transition { version, .. }) =
                record.expectation
            {
                let last = versions.insert(key, version).unwrap_or(0);
                assert_eq!(
                    version,
                    last + 1,
                    "versions of one order are produced in order"
                );
            }
        }
        assert!(
            distinct_in_first_hundred.len() > 20,
            "orders are interleaved"
        );
    }
}
