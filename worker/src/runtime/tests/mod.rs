//! The runtime against the in-memory broker, one file per concern: `exactly_once` (outputs once
//! across aborted transactions, a producer re-created late, revocations, per-key order,
//! back-pressure), `notify` (the notify stage's retries and dead letters), `refusals` (outputs
//! Kafka refuses for good), `expiry` (forgotten state and what a restore reads back), `growth`
//! (a growth of the input: held new partitions, re-shard, forwarding, markers).
//!
//! This file holds the fixtures: [`TestStage`] builds and starts a stage, [`Running`] stops it
//! and reads its metrics. Tests must not reach into the coordinator; they judge what reached the
//! broker and the metrics.

mod exactly_once;
mod expiry;
mod growth;
mod notify;
mod refusals;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use orderpipe_api::contract::{WorkerConfig, env};
use orderpipe_orders::headers;
use orderpipe_orders::status::StatusMachine;
use orderpipe_orders::validate::Validator;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::driver::drive;
use super::growth::View;
use super::memory::{
    Broker, BrokerState, MemoryChangelog, MemorySink, MemorySource, Produced, Rebalance,
};
use super::{ChangelogReader, Coordinator, CoordinatorParts, Health, LagBook, Tuning};
use crate::error::WorkerError;
use crate::loadgen::{LoadMode, LoadRecord, LoadSpec, generate};
use crate::metrics::Metrics;
use crate::output_topics::OutputTopics;
use crate::record::SourceRecord;
use crate::stage::{StageHandler, Stateful};

/// How long any wait of these tests may take before it fails.
const WAIT: Duration = Duration::from_secs(60);

fn worker_config(processor: &str, input: &str, outputs: &str, stateful: bool) -> WorkerConfig {
    let mut vars: HashMap<&str, &str> = HashMap::from([
        (env::PIPELINE, "shop"),
        (env::NAMESPACE, "test"),
        (env::STAGE, processor),
        (env::POD_NAME, "worker-0"),
        (env::PROCESSOR, processor),
        (env::BOOTSTRAP_SERVERS, "in-memory"),
        (env::INPUT_TOPIC, input),
        (env::OUTPUTS, outputs),
        (env::DEAD_LETTER_TOPIC, "orders.dlq"),
        (env::CONSUMER_GROUP, "group"),
        (env::WEBHOOK_URL, "http://in-memory"),
    ]);
    if stateful {
        vars.insert(env::STATE_TOPIC, "state");
    }
    WorkerConfig::from_env(|name| vars.get(name).map(|v| (*v).to_owned())).expect("valid config")
}

/// Commits every 5 ms, so a test's records span many transactions.
fn fast_tuning() -> Tuning {
    Tuning {
        commit_interval: Duration::from_millis(5),
        ..Tuning::new(Duration::from_millis(5), Duration::from_secs(10))
    }
}

/// Builds the stage from the metrics it is started with (the notify stage counts retries).
type MakeStage<H> = Box<dyn FnOnce(&Arc<Metrics>) -> H>;

/// A stage to start against the in-memory broker: its processor and configuration (from
/// [`TestStage::validate`], [`TestStage::status`], or `notify::stage`), with [`fast_tuning`] and no
/// rebalance unless [`TestStage::tuning`] or [`TestStage::rebalance`] say otherwise.
struct TestStage<H> {
    config: WorkerConfig,
    make: MakeStage<H>,
    tuning: Tuning,
    rebalance: Option<Rebalance>,
    growth: Option<watch::Receiver<View>>,
}

impl TestStage<Stateful<Validator>> {
    /// Validate, from `orders` into `orders.validated` and `orders.rejected`.
    fn validate() -> Self {
        let config = worker_config(
            "validate",
            "orders",
            "validated=orders.validated,rejected=orders.rejected",
            true,
        );
        Self::new(config, |_| Stateful(Validator::default()))
    }
}

impl TestStage<Stateful<StatusMachine>> {
    /// Status, from `order-events` into `order-status`.
    fn status() -> Self {
        let config = worker_config("status", "order-events", "changes=order-status", true);
        Self::new(config, |_| Stateful(StatusMachine::default()))
    }
}

impl<H: StageHandler> TestStage<H> {
    fn new(config: WorkerConfig, make: impl FnOnce(&Arc<Metrics>) -> H + 'static) -> Self {
        Self {
            config,
            make: Box::new(make),
            tuning: fast_tuning(),
            rebalance: None,
            growth: None,
        }
    }

    /// Follows the growth view `growth` (a test's stand-in for the control topic).
    fn growth(self, growth: watch::Receiver<View>) -> Self {
        Self {
            growth: Some(growth),
            ..self
        }
    }

    fn tuning(self, tuning: Tuning) -> Self {
        Self { tuning, ..self }
    }

    fn rebalance(self, rebalance: Rebalance) -> Self {
        Self {
            rebalance: Some(rebalance),
            ..self
        }
    }

    /// Runs the stage on its own driver thread until [`Running::stop`].
    fn start(self, broker: &Arc<Broker>) -> Running {
        let Self {
            config,
            make,
            tuning,
            rebalance,
            growth,
        } = self;
        let (registry, metrics) = Metrics::registry("shop", &config.stage);
        let metrics = Arc::new(metrics);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let health = Arc::new(Health::new(WAIT));
        let changelog = config.state_topic.clone().map(|topic| {
            Arc::new(MemoryChangelog {
                broker: Arc::clone(broker),
                topic,
            }) as Arc<dyn ChangelogReader>
        });
        let coordinator = Arc::new(Mutex::new(Coordinator::new(CoordinatorParts {
            stage: Arc::new(make(&metrics)),
            sink: MemorySink::new(Arc::clone(broker)),
            outputs: OutputTopics::for_stage(&config).expect("output topics"),
            input_topic: config.input_topic.clone(),
            changelog,
            runtime: runtime.handle().clone(),
            tuning,
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
            lag: Arc::new(LagBook::new(metrics)),
            transactional_id: "test".to_owned(),
            growth: growth.unwrap_or_else(|| watch::channel(None).1),
        })));
        let shutdown = CancellationToken::new();
        let driver = {
            let broker = Arc::clone(broker);
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                let mut source = MemorySource::new(broker, Arc::clone(&coordinator), rebalance);
                drive(
                    &mut source,
                    &coordinator,
                    &shutdown,
                    &health,
                    Duration::from_secs(10),
                )
            })
        };
        Running {
            shutdown,
            driver,
            registry,
            _runtime: runtime,
        }
    }
}

/// A stage running against the in-memory broker on its own driver thread.
struct Running {
    shutdown: CancellationToken,
    driver: JoinHandle<Result<(), WorkerError>>,
    registry: Registry,
    _runtime: tokio::runtime::Runtime,
}

impl Running {
    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encodes");
        text
    }

    fn stop(self) -> Result<(), WorkerError> {
        self.shutdown.cancel();
        self.driver.join().expect("driver thread")
    }

    /// Waits until the worker stops by itself (an error that ends it), failing after `timeout`.
    fn stopped_by_itself(self, timeout: Duration) -> Result<(), WorkerError> {
        let deadline = Instant::now() + timeout;
        while !self.driver.is_finished() {
            assert!(Instant::now() < deadline, "the worker kept running");
            std::thread::sleep(Duration::from_millis(2));
        }
        self.driver.join().expect("driver thread")
    }
}

fn count_by_key<'a>(records: impl Iterator<Item = &'a Produced>) -> HashMap<Vec<u8>, usize> {
    let mut counts = HashMap::new();
    for record in records {
        *counts
            .entry(record.key.clone().unwrap_or_default())
            .or_default() += 1;
    }
    counts
}

/// The input record a dead letter names in its `orderpipe.original.*` headers.
fn original<'a>(state: &'a BrokerState, dead: &Produced) -> &'a SourceRecord {
    let number = |header| {
        dead.header(header)
            .and_then(|value| value.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("{header} is a number"))
    };
    let partition = i32::try_from(number(headers::ORIGINAL_PARTITION)).expect("a partition");
    let offset = usize::try_from(number(headers::ORIGINAL_OFFSET)).expect("an offset");
    &state.input[&partition][offset]
}

/// `count` valid orders (none invalid, garbage or re-submitted) from `seed`, as fast as taken.
fn valid_orders(count: u64, seed: u64) -> LoadSpec {
    LoadSpec {
        mode: LoadMode::Orders,
        count,
        rate: None,
        keys: 1,
        invalid_share: 0.0,
        garbage_share: 0.0,
        duplicate_share: 0.0,
        seed,
    }
}

fn load(spec: &LoadSpec) -> Vec<LoadRecord> {
    generate(spec).collect()
}

fn input_of(load: &[LoadRecord]) -> impl Iterator<Item = (Option<Vec<u8>>, Vec<u8>)> + '_ {
    load.iter().map(|r| (r.key.clone(), r.payload.clone()))
}
