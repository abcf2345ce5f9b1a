//! Orders for the e2e tests, produced as upstream systems would: a steady stream
//! ([`SteadyProducer`]), a paced stream of the load generator's records with their expectations
//! ([`PacedLoad`]), or a burst committed in one transaction ([`produce_transaction`]), so
//! every partition ends in a commit marker as behind an exactly-once upstream stage.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use orderpipe_orders::generator::{GenConfig, OrderGenerator};
use orderpipe_stack::unique_name;
use orderpipe_worker::loadgen::{self, LoadMode, LoadSpec};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Valid orders at a steady rate on a blocking thread until stopped, so a stage has records to
/// process all through a release or a fault: a [`PacedLoad`] of valid orders only, with
/// librdkafka's default metadata refresh.
#[derive(Debug)]
pub struct SteadyProducer {
    load: PacedLoad,
}

/// Sets the flag when dropped: a test that fails before [`PacedLoad::stop`] must not leave the
/// thread producing, since the runtime waits for it at the end of the test.
#[derive(Debug)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl SteadyProducer {
    /// Starts producing `rate` orders per second to `topic`.
    pub fn start(bootstrap: &str, topic: &str, rate: u64) -> SteadyProducer {
        let load = PacedLoad::start(
            bootstrap,
            topic,
            Self::spec(u64::MAX),
            rate,
            Duration::from_secs(300),
        );
        SteadyProducer { load }
    }

    fn spec(count: u64) -> LoadSpec {
        LoadSpec {
            mode: LoadMode::Orders,
            count,
            rate: None,
            keys: 0,
            invalid_share: 0.0,
            garbage_share: 0.0,
            duplicate_share: 0.0,
            seed: 17,
        }
    }

    /// Stops producing; the keys of every order sent (all delivered: the flush succeeded).
    pub async fn stop(self) -> anyhow::Result<BTreeSet<Vec<u8>>> {
        let sent = self.load.stop().await?;
        Ok(loadgen::generate(&Self::spec(sent))
            .filter_map(|record| record.key)
            .collect())
    }
}

/// The load generator's records ([`loadgen::generate`]) at a steady rate on a blocking thread until
/// stopped, placed as a Java producer would (murmur2 of the key) and noticing a grown topic within
/// `metadata_refresh` (what a topic's `settleSeconds` must cover).
#[derive(Debug)]
pub struct PacedLoad {
    stop: StopOnDrop,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

impl PacedLoad {
    pub fn start(
        bootstrap: &str,
        topic: &str,
        spec: LoadSpec,
        rate: u64,
        metadata_refresh: Duration,
    ) -> PacedLoad {
        let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::task::spawn_blocking(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("enable.idempotence", "true")
                .set("partitioner", "murmur2_random")
                .set(
                    "topic.metadata.refresh.interval.ms",
                    metadata_refresh.as_millis().to_string(),
                )
                .create()?;
            let began = Instant::now();
            let mut sent = 0u64;
            for record in loadgen::generate(&spec) {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                // Paced by the clock: record n leaves at n / rate seconds.
                let due = Duration::from_millis(sent * 1000 / rate.max(1));
                producer.poll(due.saturating_sub(began.elapsed()));
                let mut next = BaseRecord::to(&topic).payload(&record.payload);
                if let Some(key) = &record.key {
                    next = next.key(key);
                }
                producer
                    .send(next)
                    .map_err(|(error, _)| error)
                    .with_context(|| format!("producing record {sent} to {topic}"))?;
                sent += 1;
            }
            producer.flush(Duration::from_secs(30))?;
            anyhow::Ok(sent)
        });
        PacedLoad {
            stop: StopOnDrop(stop),
            task,
        }
    }

    /// Stops producing; how many records were sent (all delivered: the flush succeeded). They are
    /// the first that many of `loadgen::generate(&spec)`.
    pub async fn stop(self) -> anyhow::Result<u64> {
        drop(self.stop);
        self.task.await?
    }
}

/// Produces `count` valid generated orders to `topic` in one transaction, as an upstream
/// exactly-once stage would (so each partition ends in a commit marker), on a blocking thread (an
/// in-process operator may share the test's runtime). The orders are generated first, so
/// they arrive as fast as the broker takes them: a burst, not a stream one worker could keep up
/// with. Returns when the sending began.
pub async fn produce_transaction(
    bootstrap: &str,
    topic: &str,
    count: u64,
) -> anyhow::Result<Instant> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("transactional.id", unique_name("e2e-burst"))
            .create()?;
        producer.init_transactions(Duration::from_secs(30))?;
        let valid_only = GenConfig {
            invalid_share: 0.0,
            garbage_share: 0.0,
            duplicate_share: 0.0,
        };
        let records: Vec<_> = OrderGenerator::new(13, valid_only)
            .take(usize::try_from(count)?)
            .collect();
        let began = Instant::now();
        producer.begin_transaction()?;
        for record in &records {
            let mut next = BaseRecord::to(&topic).payload(&record.payload);
            if let Some(key) = &record.key {
                next = next.key(key);
            }
            // A full local queue only means librdkafka is behind: let it deliver, then retry.
            while let Err((error, unsent)) = producer.send(next) {
                ensure!(
                    error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    "producing to {topic}: {error}"
                );
                producer.poll(Duration::from_millis(100));
                next = unsent;
            }
        }
        producer.commit_transaction(Duration::from_secs(60))?;
        anyhow::Ok(began)
    })
    .await?
}
