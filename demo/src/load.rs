//! The order load: the worker's seeded generator (`orderpipe_worker::loadgen::generate`) produced
//! at a steady rate by an idempotent producer on a thread of its own, until its count is reached
//! or it is stopped (Ctrl-C in the demo). It keeps what the pipeline must do with every
//! acknowledged record: the books are checked against that.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use orderpipe_orders::generator::Expected;
use orderpipe_worker::loadgen::{LoadMode, LoadSpec, generate};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::DemoError;

/// What to produce.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Orders per second.
    pub rate: u32,
    /// Stop after this many orders; `None`: until stopped.
    pub count: Option<u64>,
    /// Share of orders that fail validation (rejected).
    pub invalid_share: f64,
    /// Share of records that are not orders at all (dead-lettered).
    pub garbage_share: f64,
    /// Share of re-submitted orders (recognised and dropped by validate).
    pub duplicate_share: f64,
    /// Seeds the generator; order ids embed it, so loads with different seeds never share ids.
    pub seed: u64,
}

/// What a finished load sent, by what the pipeline must do with it.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub sent: u64,
    pub valid: u64,
    pub invalid: u64,
    pub garbage: u64,
    pub duplicates: u64,
    /// Keys (order ids) of the valid orders.
    pub valid_keys: HashSet<Vec<u8>>,
    /// Re-submissions sent per valid order id (only those re-submitted).
    pub resubmitted: HashMap<Vec<u8>, u64>,
    /// Keys of the invalid orders (`""` for the ones sent without a key) and of the garbage: a
    /// dead letter of a faulty release is told apart by its key.
    pub invalid_keys: HashSet<Vec<u8>>,
    pub garbage_keys: HashSet<Vec<u8>>,
}

impl Tally {
    fn add(&mut self, key: Option<&[u8]>, expected: &Expected) {
        self.sent += 1;
        let key = key.map(<[u8]>::to_vec).unwrap_or_default();
        match expected {
            Expected::Valid => {
                self.valid += 1;
                self.valid_keys.insert(key);
            }
            Expected::Duplicate => {
                self.duplicates += 1;
                *self.resubmitted.entry(key).or_default() += 1;
            }
            Expected::Invalid { .. } => {
                self.invalid += 1;
                self.invalid_keys.insert(key);
            }
            Expected::Garbage { .. } => {
                self.garbage += 1;
                self.garbage_keys.insert(key);
            }
        }
    }

    /// Both loads together (distinct seeds: no shared order ids).
    pub fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.valid += other.valid;
        self.invalid += other.invalid;
        self.garbage += other.garbage;
        self.duplicates += other.duplicates;
        self.valid_keys.extend(other.valid_keys);
        self.resubmitted.extend(other.resubmitted);
        self.invalid_keys.extend(other.invalid_keys);
        self.garbage_keys.extend(other.garbage_keys);
    }
}

/// A load in progress.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    thread: thread::JoinHandle<Result<Tally, DemoError>>,
}

impl Load {
    /// Starts producing `options` to `topic`.
    pub fn start(bootstrap: &str, topic: &str, options: LoadOptions) -> Result<Load, DemoError> {
        let producer: ThreadedProducer<_> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()
            .map_err(|source| DemoError::Kafka {
                action: "creating the load producer",
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let spec = LoadSpec {
            mode: LoadMode::Orders,
            count: options.count.unwrap_or(u64::MAX),
            rate: None,
            keys: 0,
            invalid_share: options.invalid_share,
            garbage_share: options.garbage_share,
            duplicate_share: options.duplicate_share,
            seed: options.seed,
        };
        let started = Instant::now();
        let thread = {
            let (stop, sent, topic) = (Arc::clone(&stop), Arc::clone(&sent), topic.to_owned());
            thread::spawn(move || produce(&producer, &topic, &spec, options.rate, &stop, &sent))
        };
        Ok(Load {
            stop,
            sent,
            started,
            thread,
        })
    }

    /// Orders sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether every order was sent (or the load failed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops sending (if still sending), waits for every acknowledgement, returns the tally.
    pub async fn finish(self) -> Result<Tally, DemoError> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|_| DemoError::LoadThread)?
            .map_err(|_| DemoError::LoadThread)?
    }
}

fn produce(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    spec: &LoadSpec,
    rate: u32,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<Tally, DemoError> {
    let started = Instant::now();
    let mut tally = Tally::default();
    for record in generate(spec) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Pacing, not synchronisation: order n is due n/rate seconds after the start.
        let due = started + Duration::from_secs_f64(tally.sent as f64 / f64::from(rate.max(1)));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        loop {
            let mut base: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(topic).payload(&record.payload);
            if let Some(key) = &record.key {
                base = base.key(key);
            }
            match producer.send(base) {
                Ok(()) => break,
                // The producer's thread drains the queue as the broker acknowledges.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    thread::sleep(Duration::from_millis(2));
                }
                Err((source, _)) => {
                    return Err(DemoError::Kafka {
                        action: "producing an order",
                        source,
                    });
                }
            }
        }
        if let orderpipe_worker::loadgen::Expectation::Order(expected) = &record.expectation {
            tally.add(record.key.as_deref(), expected);
        }
        sent.store(tally.sent, Ordering::Relaxed);
    }
    // The idempotent producer retries until acknowledged or failed: after a successful flush
    // every sent order is in the topic exactly once.
    producer
        .flush(Duration::from_secs(60))
        .map_err(|source| DemoError::Kafka {
            action: "waiting for the load's acknowledgements",
            source,
        })?;
    Ok(tally)
}
