//! The runtime against the in-memory broker: exactly-once outputs across aborted transactions and
//! revocations, per-key order, back-pressure, and the notify stage's retries and dead letters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orderpipe_api::contract::{WorkerConfig, env};
use orderpipe_orders::generator::{EventExpectation, Expected, GenConfig, OrderGenerator};
use orderpipe_orders::notify::{HttpOutcome, NotifyPolicy, RetryPolicy};
use orderpipe_orders::status::{StatusMachine, StatusPolicy};
use orderpipe_orders::validate::Validator;
use orderpipe_orders::{
    DispatchResult, EventDetails, EventType, NotificationDispatched, OrderState, StatusChanged,
    StatusEvent, headers,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::driver::drive;
use super::memory::{
    Broker, BrokerState, MemoryChangelog, MemorySink, MemorySource, Produced, Rebalance,
};
use super::{ChangelogReader, Coordinator, CoordinatorParts, Health, LagBook, Tuning};
use crate::error::WorkerError;
use crate::loadgen::{Expectation, LoadMode, LoadRecord, LoadSpec, generate};
use crate::metrics::Metrics;
use crate::output_topics::OutputTopics;
use crate::stage::notify::NotifyStage;
use crate::stage::webhook::Webhook;
use crate::stage::{StageHandler, Stateful};

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

fn fast_tuning() -> Tuning {
    Tuning {
        commit_interval: Duration::from_millis(5),
        ..Tuning::new(Duration::from_millis(5), Duration::from_secs(10))
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
    fn start<H: StageHandler>(
        stage: H,
        config: &WorkerConfig,
        broker: &Arc<Broker>,
        tuning: Tuning,
        rebalance: Option<Rebalance>,
    ) -> Self {
        let (registry, metrics) = Metrics::registry("shop", &config.stage);
        Self::start_with_metrics(
            stage,
            config,
            broker,
            tuning,
            rebalance,
            registry,
            Arc::new(metrics),
        )
    }

    fn start_with_metrics<H: StageHandler>(
        stage: H,
        config: &WorkerConfig,
        broker: &Arc<Broker>,
        tuning: Tuning,
        rebalance: Option<Rebalance>,
        registry: Registry,
        metrics: Arc<Metrics>,
    ) -> Self {
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
            stage: Arc::new(stage),
            sink: MemorySink::new(Arc::clone(broker)),
            outputs: OutputTopics::for_stage(config).expect("output topics"),
            input_topic: config.input_topic.clone(),
            changelog,
            runtime: runtime.handle().clone(),
            tuning,
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
            lag: Arc::new(LagBook::new(metrics)),
            transactional_id: "test".to_owned(),
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
        Self {
            shutdown,
            driver,
            registry,
            _runtime: runtime,
        }
    }

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
        let deadline = std::time::Instant::now() + timeout;
        while !self.driver.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker kept running"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        self.driver.join().expect("driver thread")
    }
}

/// A validate stage over the in-memory broker's `orders` topic.
fn start_validate(broker: &Arc<Broker>, tuning: Tuning, rebalance: Option<Rebalance>) -> Running {
    let config = worker_config(
        "validate",
        "orders",
        "validated=orders.validated,rejected=orders.rejected",
        true,
    );
    Running::start(
        Stateful(Validator::default()),
        &config,
        broker,
        tuning,
        rebalance,
    )
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

fn load(spec: &LoadSpec) -> Vec<LoadRecord> {
    generate(spec).collect()
}

fn input_of(load: &[LoadRecord]) -> impl Iterator<Item = (Option<Vec<u8>>, Vec<u8>)> + '_ {
    load.iter().map(|r| (r.key.clone(), r.payload.clone()))
}

#[test]
fn validate_writes_each_order_exactly_once_although_transactions_abort() {
    let spec = LoadSpec {
        mode: LoadMode::Orders,
        count: 3_000,
        rate: None,
        keys: 1,
        invalid_share: 0.05,
        garbage_share: 0.02,
        duplicate_share: 0.03,
        seed: 11,
    };
    let load = load(&spec);
    let broker = Broker::with_input(4, input_of(&load));
    broker.fail_commits([2, 5, 9]);
    let running = start_validate(&broker, fast_tuning(), None);
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    let metrics = running.metrics();
    running.stop().expect("clean shutdown");

    let state = broker.state();
    let expected_of = |pick: fn(&Expected) -> bool| {
        load.iter()
            .filter(|r| matches!(&r.expectation, Expectation::Order(e) if pick(e)))
            .collect::<Vec<_>>()
    };
    let valid = expected_of(|e| matches!(e, Expected::Valid));
    let invalid = expected_of(|e| matches!(e, Expected::Invalid { .. }));
    let garbage = expected_of(|e| matches!(e, Expected::Garbage { .. }));
    assert!(!valid.is_empty() && !invalid.is_empty() && !garbage.is_empty());

    let validated = count_by_key(state.outputs_to("orders.validated"));
    assert_eq!(
        validated.len(),
        valid.len(),
        "one validated record per valid order"
    );
    for record in &valid {
        let key = record.key.clone().expect("valid orders are keyed");
        assert_eq!(validated.get(&key), Some(&1), "validated exactly once");
    }
    assert_eq!(state.outputs_to("orders.rejected").count(), invalid.len());
    let changelog = count_by_key(state.outputs_to("state"));
    assert_eq!(
        changelog.len(),
        valid.len(),
        "one dedup record per valid order"
    );

    let dead_letters: Vec<&Produced> = state.outputs_to("orders.dlq").collect();
    assert_eq!(dead_letters.len(), garbage.len());
    for dead in dead_letters {
        let partition: i32 = dead
            .header(headers::ORIGINAL_PARTITION)
            .expect("partition")
            .parse()
            .expect("number");
        let offset: usize = dead
            .header(headers::ORIGINAL_OFFSET)
            .expect("offset")
            .parse()
            .expect("number");
        let original = &state.input[&partition][offset];
        assert_eq!(
            original.payload.as_deref(),
            Some(dead.payload.as_slice()),
            "original bytes"
        );
        assert_eq!(original.key, dead.key, "original key");
        assert_eq!(dead.header(headers::ERROR_STAGE), Some("validate"));
        assert_eq!(dead.header(headers::ORIGINAL_TOPIC), Some("orders"));
        let load_record = garbage
            .iter()
            .find(|r| r.payload == dead.payload && r.key == dead.key)
            .expect("a garbage input");
        let Expectation::Order(Expected::Garbage { reason }) = &load_record.expectation else {
            unreachable!("filtered above");
        };
        assert_eq!(dead.header(headers::ERROR_REASON), Some(reason.code()));
    }
    assert!(state.aborts >= 3, "the failed commits were aborted");
    assert!(
        metrics.contains(
            r#"orderpipe_transactions_total{pipeline="shop",stage="validate",result="aborted"} 3"#
        ),
        "{metrics}"
    );
}

#[test]
fn a_producer_that_cannot_be_recreated_at_once_is_retried_and_nothing_is_lost_or_doubled() {
    let spec = LoadSpec {
        mode: LoadMode::Orders,
        count: 1_500,
        rate: None,
        keys: 1,
        invalid_share: 0.0,
        garbage_share: 0.0,
        duplicate_share: 0.0,
        seed: 21,
    };
    let load = load(&spec);
    let broker = Broker::with_input(3, input_of(&load));
    {
        let mut state = broker.state();
        state.fatal_commits.insert(3);
        state.failing_recreates = 2;
    }
    let tuning = Tuning {
        recreate_backoff: Duration::from_millis(10),
        ..fast_tuning()
    };
    let running = start_validate(&broker, tuning, None);
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    running
        .stop()
        .expect("the worker kept running through the outage");

    let state = broker.state();
    assert_eq!(
        state.recreates, 1,
        "re-created once the broker was reachable again"
    );
    assert_eq!(state.failing_recreates, 0, "both failed attempts were made");
    let validated = count_by_key(state.outputs_to("orders.validated"));
    assert_eq!(validated.len(), load.len());
    assert!(validated.values().all(|count| *count == 1), "exactly once");
}

/// The transitions each order must go through, in order, as the generator labelled them.
fn expected_transitions(
    load: &[LoadRecord],
) -> BTreeMap<Vec<u8>, Vec<(OrderState, OrderState, u64)>> {
    let mut expected: BTreeMap<Vec<u8>, Vec<_>> = BTreeMap::new();
    for record in load {
        if let Expectation::Event(EventExpectation::Transition { from, to, version }) =
            record.expectation
        {
            let key = record.key.clone().expect("events are keyed");
            expected.entry(key).or_default().push((from, to, version));
        }
    }
    expected
}

#[test]
fn status_changes_keep_each_orders_order_through_aborts_and_a_revocation() {
    let spec = LoadSpec {
        mode: LoadMode::StatusEvents,
        count: 3_000,
        rate: None,
        keys: 100,
        invalid_share: 0.05,
        garbage_share: 0.0,
        duplicate_share: 0.05,
        seed: 5,
    };
    let load = load(&spec);
    let broker = Broker::with_input(3, input_of(&load));
    broker.fail_commits([3, 8]);
    let config = worker_config("status", "order-events", "changes=order-status", true);
    let rebalance = Rebalance {
        after_records: 1_000,
        partitions: vec![1],
        reassign_after: 1_600,
        while_paused: false,
    };
    let running = Running::start(
        Stateful(StatusMachine::default()),
        &config,
        &broker,
        fast_tuning(),
        Some(rebalance),
    );
    broker.wait_until("every event committed", WAIT, BrokerState::all_committed);
    running.stop().expect("clean shutdown");

    let state = broker.state();
    let mut changes: BTreeMap<Vec<u8>, Vec<(OrderState, OrderState, u64)>> = BTreeMap::new();
    for record in state.outputs_to("order-status") {
        let changed: StatusChanged =
            serde_json::from_slice(&record.payload).expect("StatusChanged");
        changes
            .entry(changed.order_id.into_bytes())
            .or_default()
            .push((changed.from, changed.to, changed.version));
    }
    assert_eq!(
        changes,
        expected_transitions(&load),
        "every transition once, in order per order"
    );

    let refused = load
        .iter()
        .filter(|r| {
            matches!(
                r.expectation,
                Expectation::Event(EventExpectation::Illegal | EventExpectation::Quarantined)
            )
        })
        .count();
    assert!(refused > 0);
    assert_eq!(state.outputs_to("orders.dlq").count(), refused);
}

#[test]
fn a_full_partition_is_paused_and_resumed_without_losing_or_reordering_records_across_a_rebalance()
{
    let spec = LoadSpec {
        mode: LoadMode::Orders,
        count: 600,
        rate: None,
        keys: 1,
        invalid_share: 0.0,
        garbage_share: 0.0,
        duplicate_share: 0.0,
        seed: 3,
    };
    let load = load(&spec);
    let broker = Broker::with_input(2, input_of(&load));
    let tuning = Tuning {
        partition_queue: 2,
        max_in_flight_bytes: 4 * 1024,
        ..fast_tuning()
    };
    // Revoked while paused and assigned again: the partitions must be fetched again.
    let rebalance = Rebalance {
        after_records: 150,
        partitions: vec![0, 1],
        reassign_after: 150,
        while_paused: true,
    };
    let running = start_validate(&broker, tuning, Some(rebalance));
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    running.stop().expect("clean shutdown");

    let state = broker.state();
    assert!(
        state.pauses > 0 && state.resumes > 0,
        "the bounds were hit and released"
    );
    let validated: Vec<Vec<u8>> = state
        .outputs_to("orders.validated")
        .map(|r| r.key.clone().unwrap_or_default())
        .collect();
    assert_eq!(validated.len(), load.len());
    for partition in [0, 1] {
        let input_order: Vec<Vec<u8>> = state.input[&partition]
            .iter()
            .map(|r| r.key.clone().unwrap_or_default())
            .collect();
        let output_order: Vec<Vec<u8>> = validated
            .iter()
            .filter(|key| input_order.contains(key))
            .cloned()
            .collect();
        assert_eq!(
            output_order, input_order,
            "partition {partition} in offset order"
        );
    }
}

/// A webhook answering from per-key scripts (200 once a script runs out), optionally holding one
/// key's requests until a gate opens.
#[derive(Default)]
struct ScriptedWebhook {
    scripts: Mutex<HashMap<String, VecDeque<HttpOutcome>>>,
    calls: Mutex<Vec<String>>,
    gate: Option<(String, CancellationToken)>,
}

impl ScriptedWebhook {
    fn script(self, key: &str, outcomes: impl IntoIterator<Item = HttpOutcome>) -> Self {
        self.scripts
            .lock()
            .expect("scripts")
            .insert(key.to_owned(), outcomes.into_iter().collect());
        self
    }

    fn calls_for(&self, key: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|k| *k == key)
            .count()
    }
}

impl Webhook for Arc<ScriptedWebhook> {
    async fn post(&self, body: &[u8], headers: &[(&'static str, &str)]) -> HttpOutcome {
        let key = headers
            .iter()
            .find(|(name, _)| *name == headers::IDEMPOTENCY_KEY)
            .map(|(_, value)| (*value).to_owned())
            .unwrap_or_default();
        assert!(
            String::from_utf8_lossy(body).contains(&key),
            "the body names the notification the key identifies"
        );
        if let Some((gated, gate)) = &self.gate
            && *gated == key
        {
            gate.cancelled().await;
        }
        self.calls.lock().expect("calls").push(key.clone());
        self.scripts
            .lock()
            .expect("scripts")
            .get_mut(&key)
            .and_then(VecDeque::pop_front)
            .unwrap_or(HttpOutcome::Response {
                status: 200,
                retry_after: None,
            })
    }
}

fn status(code: u16) -> HttpOutcome {
    HttpOutcome::Response {
        status: code,
        retry_after: None,
    }
}

fn changed(order: &str, to: OrderState, version: u64) -> (Option<Vec<u8>>, Vec<u8>) {
    let record = StatusChanged {
        order_id: order.to_owned(),
        from: OrderState::Placed,
        to,
        version,
        at: DateTime::<Utc>::from_timestamp(1_750_000_000, 0).unwrap_or_default(),
        event_id: format!("{order}-ev{version}"),
        details: EventDetails::default(),
    };
    (
        Some(order.as_bytes().to_vec()),
        serde_json::to_vec(&record).expect("serialises"),
    )
}

fn notify_stage(
    webhook: &Arc<ScriptedWebhook>,
    metrics: &Arc<Metrics>,
) -> NotifyStage<Arc<ScriptedWebhook>> {
    let policy = NotifyPolicy {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_retry_after: Duration::from_millis(5),
        },
        ..NotifyPolicy::default()
    };
    NotifyStage::new(policy, Arc::clone(webhook), Arc::clone(metrics))
}

#[test]
fn notify_retries_transient_failures_and_dead_letters_permanent_and_exhausted_ones() {
    let webhook = Arc::new(
        ScriptedWebhook::default()
            .script("ord-a:3:webhook", [status(503), status(503)])
            .script("ord-b:4:webhook", [status(500), status(502), status(500)])
            .script("ord-c:2:webhook", [status(400)])
            .script(
                "ord-d:5:webhook",
                [HttpOutcome::Response {
                    status: 429,
                    retry_after: Some("0".to_owned()),
                }],
            ),
    );
    let broker = Broker::with_input(
        2,
        [
            changed("ord-a", OrderState::Shipped, 3),
            changed("ord-b", OrderState::Delivered, 4),
            changed("ord-c", OrderState::Cancelled, 2),
            changed("ord-d", OrderState::Refunded, 5),
            changed("ord-e", OrderState::PaymentAuthorized, 2),
            changed("ord-g", OrderState::Validated, 1),
            (Some(b"ord-f".to_vec()), b"{not json".to_vec()),
        ],
    );
    let config = worker_config("notify", "order-status", "audit=notifications.audit", false);
    let (registry, metrics) = Metrics::registry("shop", "notify");
    let metrics = Arc::new(metrics);
    let running = Running::start_with_metrics(
        notify_stage(&webhook, &metrics),
        &config,
        &broker,
        fast_tuning(),
        None,
        registry,
        Arc::clone(&metrics),
    );
    broker.wait_until("every change committed", WAIT, BrokerState::all_committed);
    let text = running.metrics();
    running.stop().expect("clean shutdown");

    let state = broker.state();
    let audits: HashMap<String, NotificationDispatched> = state
        .outputs_to("notifications.audit")
        .map(|r| {
            let audit: NotificationDispatched = serde_json::from_slice(&r.payload).expect("audit");
            (audit.order_id.clone(), audit)
        })
        .collect();
    let result = |order: &str| {
        let audit = &audits[order];
        (audit.result, audit.attempts, audit.http_status)
    };
    assert_eq!(result("ord-a"), (DispatchResult::Delivered, 3, Some(200)));
    assert_eq!(
        result("ord-b"),
        (DispatchResult::RetriesExhausted, 3, Some(500))
    );
    assert_eq!(result("ord-c"), (DispatchResult::Rejected, 1, Some(400)));
    assert_eq!(result("ord-d"), (DispatchResult::Delivered, 2, Some(200)));
    assert_eq!(result("ord-g"), (DispatchResult::Delivered, 1, Some(200)));
    assert_eq!(
        audits.len(),
        5,
        "no audit for a skipped transition or garbage"
    );

    let dead: HashMap<Vec<u8>, &Produced> = state
        .outputs_to("orders.dlq")
        .map(|r| (r.key.clone().unwrap_or_default(), r))
        .collect();
    assert_eq!(dead.len(), 3);
    assert_eq!(
        dead[&b"ord-b".to_vec()].header(headers::ERROR_REASON),
        Some("retries_exhausted")
    );
    assert_eq!(
        dead[&b"ord-b".to_vec()].header(headers::NOTIFY_ATTEMPTS),
        Some("3")
    );
    assert_eq!(
        dead[&b"ord-c".to_vec()].header(headers::ERROR_REASON),
        Some("webhook_rejected")
    );
    assert_eq!(
        dead[&b"ord-c".to_vec()].header(headers::NOTIFY_HTTP_STATUS),
        Some("400")
    );
    assert_eq!(
        dead[&b"ord-f".to_vec()].header(headers::ERROR_REASON),
        Some("not_json")
    );

    for (key, calls) in [
        ("ord-a:3:webhook", 3),
        ("ord-b:4:webhook", 3),
        ("ord-c:2:webhook", 1),
        ("ord-d:5:webhook", 2),
        ("ord-e:2:webhook", 0),
        ("ord-g:1:webhook", 1),
    ] {
        assert_eq!(webhook.calls_for(key), calls, "{key}");
    }
    assert!(
        text.contains(r#"orderpipe_retries_total{pipeline="shop",stage="notify"} 5"#),
        "{text}"
    );
}

#[test]
fn a_partition_blocked_by_retries_does_not_hold_back_the_others() {
    let orders: Vec<String> = (0..40).map(|i| format!("ord-{i:03}")).collect();
    let gate = CancellationToken::new();
    let blocked_order = orders[7].clone();
    let webhook = Arc::new(ScriptedWebhook {
        gate: Some((format!("{blocked_order}:1:webhook"), gate.clone())),
        ..ScriptedWebhook::default()
    });
    let broker = Broker::with_input(
        2,
        orders
            .iter()
            .map(|order| changed(order, OrderState::Validated, 1)),
    );
    let (blocked_partition, blocked_offset) = {
        let state = broker.state();
        state
            .input
            .iter()
            .flat_map(|(p, log)| log.iter().map(move |r| (*p, r)))
            .find(|(_, r)| r.key.as_deref() == Some(blocked_order.as_bytes()))
            .map(|(p, r)| (p, r.offset))
            .expect("the blocked order is in the input")
    };
    let config = worker_config("notify", "order-status", "audit=notifications.audit", false);
    let (registry, metrics) = Metrics::registry("shop", "notify");
    let metrics = Arc::new(metrics);
    let running = Running::start_with_metrics(
        notify_stage(&webhook, &metrics),
        &config,
        &broker,
        fast_tuning(),
        None,
        registry,
        Arc::clone(&metrics),
    );
    broker.wait_until(
        "the other partition committed, the blocked one up to the order",
        WAIT,
        |state| {
            state.input.iter().all(|(partition, log)| {
                let committed = state.committed.get(partition).copied().unwrap_or(0);
                if *partition == blocked_partition {
                    committed == blocked_offset
                } else {
                    committed == log.len() as i64
                }
            })
        },
    );
    gate.cancel();
    broker.wait_until(
        "everything committed once the webhook answers",
        WAIT,
        BrokerState::all_committed,
    );
    running.stop().expect("clean shutdown");
    assert_eq!(
        broker.state().outputs_to("notifications.audit").count(),
        orders.len()
    );
}

/// Orders for the refusal tests: `count` valid ones, with the rejected-topic refusals at `refused`
/// (invalid orders whose rejection is larger than the rejected topic's limit of 4,000 bytes) and
/// small rejections at every 50th index.
fn orders_with_oversized_rejections(
    count: usize,
    refused: &[usize],
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut generator = OrderGenerator::new(5, GenConfig::default());
    (0..count)
        .map(|index| {
            let order = generator.valid_order();
            let key = Some(order.order_id.clone().into_bytes());
            let mut value = serde_json::to_value(&order).expect("json");
            if refused.contains(&index) {
                value["totalMinor"] = serde_json::Value::String("x".repeat(5_000));
            } else if index % 50 == 49 {
                value["totalMinor"] = serde_json::Value::String("x".to_owned());
            }
            (key, serde_json::to_vec(&value).expect("json"))
        })
        .collect()
}

fn run_validate_with_limits(
    input: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    limits: &[(&str, usize)],
) -> (Arc<Broker>, Running) {
    let broker = Broker::with_input(2, input);
    broker.state().max_record_bytes = limits
        .iter()
        .map(|(topic, limit)| ((*topic).to_owned(), *limit))
        .collect();
    let running = start_validate(&broker, fast_tuning(), None);
    (broker, running)
}

#[test]
fn an_input_whose_output_kafka_refuses_is_dead_lettered_once_and_its_partition_moves_on() {
    let input = orders_with_oversized_rejections(400, &[3, 150, 151, 399]);
    let (broker, running) = run_validate_with_limits(input, &[("orders.rejected", 4_000)]);
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    let metrics = running.metrics();
    running.stop().expect("clean shutdown");

    let state = broker.state();
    assert_eq!(
        state.outputs_to("orders.validated").count(),
        389,
        "every valid order validated"
    );
    assert_eq!(
        count_by_key(state.outputs_to("orders.validated")).len(),
        389,
        "each once"
    );
    assert_eq!(
        state.outputs_to("orders.rejected").count(),
        7,
        "the small rejections that shared a refused batch are not blamed"
    );
    let dead: Vec<&Produced> = state.outputs_to("orders.dlq").collect();
    assert_eq!(
        dead.len(),
        4,
        "each refused input dead-lettered exactly once"
    );
    for letter in &dead {
        assert_eq!(letter.header(headers::ERROR_REASON), Some("output_refused"));
        assert!(
            letter
                .header(headers::ERROR_MESSAGE)
                .is_some_and(|m| m.contains("Message size too large")),
            "the broker's error: {:?}",
            letter.header(headers::ERROR_MESSAGE)
        );
        let partition: i32 = letter
            .header(headers::ORIGINAL_PARTITION)
            .expect("header")
            .parse()
            .expect("number");
        let offset: usize = letter
            .header(headers::ORIGINAL_OFFSET)
            .expect("header")
            .parse()
            .expect("number");
        assert_eq!(
            state.input[&partition][offset].payload.as_deref(),
            Some(letter.payload.as_slice()),
            "the input, copied"
        );
    }
    assert!(
        metrics.contains(
            r#"orderpipe_dead_letters_total{pipeline="shop",stage="validate",reason="output_refused"} 4"#
        ),
        "{metrics}"
    );
}

#[test]
fn a_dead_letter_refused_too_is_sent_without_its_payload_and_a_bare_one_refused_stops_the_worker() {
    let input = orders_with_oversized_rejections(50, &[10]);
    let (broker, running) = run_validate_with_limits(
        input.clone(),
        &[("orders.rejected", 4_000), ("orders.dlq", 3_000)],
    );
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    running.stop().expect("clean shutdown");
    {
        let state = broker.state();
        let dead: Vec<&Produced> = state.outputs_to("orders.dlq").collect();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].payload.is_empty(), "the key and headers only");
        assert!(dead[0].header(headers::ORIGINAL_SIZE).is_some());
        assert_eq!(state.outputs_to("orders.validated").count(), 48);
        assert_eq!(state.outputs_to("orders.rejected").count(), 1);
    }

    // A dead-letter topic that refuses even a bare dead letter is a pipeline fault, not a record's.
    let (broker, running) =
        run_validate_with_limits(input, &[("orders.rejected", 4_000), ("orders.dlq", 10)]);
    let error = running
        .stopped_by_itself(WAIT)
        .expect_err("the worker stops");
    assert!(
        matches!(error, WorkerError::OutputRefused { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("max.message.bytes"), "{error}");
    assert!(
        !broker.state().all_committed(),
        "the refused record is not skipped silently"
    );
}

/// A status event as JSON, keyed by its order.
fn status_event(
    order: &str,
    id: &str,
    kind: EventType,
    at: DateTime<Utc>,
) -> (Option<Vec<u8>>, Vec<u8>, DateTime<Utc>) {
    let event = StatusEvent {
        order_id: order.to_owned(),
        event_id: id.to_owned(),
        kind,
        at,
        details: EventDetails::default(),
    };
    let payload = serde_json::to_vec(&event).expect("json");
    (Some(order.as_bytes().to_vec()), payload, at)
}

#[test]
fn finished_orders_are_forgotten_after_the_window_with_tombstones_so_a_restore_stays_small() {
    let start = DateTime::<Utc>::from_timestamp(1_750_000_000, 0).unwrap_or_default();
    let window = StatusPolicy::default().forget_finished_after;
    let later =
        start + chrono::TimeDelta::from_std(window).expect("fits") + chrono::TimeDelta::hours(1);
    let mut input = Vec::new();
    for index in 0..50 {
        let order = format!("done-{index}");
        input.push(status_event(&order, "v", EventType::Validated, start));
        input.push(status_event(&order, "c", EventType::Cancelled, start));
    }
    input.push(status_event("open-0", "v", EventType::Validated, start));
    input.push(status_event("late-0", "v", EventType::Validated, later));
    let broker = Broker::with_timed_input(1, input);
    let config = worker_config("status", "order-events", "changes=order-status", true);
    let start_stage = || {
        Running::start(
            Stateful(StatusMachine::default()),
            &config,
            &broker,
            fast_tuning(),
            None,
        )
    };
    let running = start_stage();
    broker.wait_until("every event committed", WAIT, BrokerState::all_committed);
    let metrics = running.metrics();
    running.stop().expect("clean shutdown");

    let entries = |count: usize| {
        format!(
            r#"orderpipe_state_entries{{pipeline="shop",stage="status",partition="0"}} {count}"#
        )
    };
    assert!(
        metrics.contains(&entries(2)),
        "the open and the late order remain: {metrics}"
    );
    {
        let state = broker.state();
        let tombstones: Vec<&Produced> =
            state.outputs_to("state").filter(|r| r.tombstone).collect();
        assert_eq!(tombstones.len(), 50, "one tombstone per forgotten order");
        assert!(
            tombstones
                .iter()
                .all(|r| r.key.as_ref().is_some_and(|k| k.starts_with(b"done-")))
        );
        assert_eq!(
            state.outputs_to("order-status").count(),
            102,
            "every transition written"
        );
    }

    // A restart restores only what was not forgotten.
    let running = start_stage();
    let deadline = std::time::Instant::now() + WAIT;
    while !running.metrics().contains(&entries(2)) {
        assert!(
            std::time::Instant::now() < deadline,
            "restored state: {}",
            running.metrics()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    running.stop().expect("clean shutdown");
}
