//! The whole pipeline — validate -> status -> notify, each stage a worker process — against a
//! real broker and a webhook receiver in the test: every valid order exactly once in every committed
//! output and exactly one distinct webhook delivery per (order, version), with and without faults
//! (workers SIGKILLed mid-run, rebalances between two workers, a webhook failing transiently).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::pipeline::{
    Pipeline, Stage, WebhookReceiver, assert_pipeline_exactly_once, spec, start, start_stages,
    validate_progress,
};
use common::{WorkerProcess, count_from_env, orders, produce};
use nix::sys::signal::Signal;
use orderpipe_orders::generator::EventExpectation;
use orderpipe_orders::headers;
use orderpipe_orders::notify::{NotifyPolicy, idempotency_key};
use orderpipe_orders::{OrderState, StatusChanged};
use orderpipe_stack::{
    Isolation, Stack, kafka_bootstrap, read_all, unique_name, wait_until_blocking,
};
use orderpipe_worker::loadgen::{self, Expectation, LoadMode, LoadSpec};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(900);

/// Orders in the baseline run; `ORDERPIPE_TEST_ORDERS` overrides it for a quicker local run.
fn baseline_orders() -> u64 {
    count_from_env("ORDERPIPE_TEST_ORDERS", 100_000)
}

/// Orders in each fault run: 20,000 in `make test`; `make test-faults` runs 100,000.
fn fault_orders() -> u64 {
    count_from_env("ORDERPIPE_FAULT_ORDERS", 20_000)
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn baseline_every_valid_order_flows_once_through_validate_status_and_notify() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = Pipeline::create(&bootstrap, 6);
    let webhook = WebhookReceiver::start(0);
    let spec = spec(baseline_orders(), 100);
    let started = Instant::now();
    produce(&bootstrap, &pipeline.orders, &spec);
    let produced = started.elapsed();

    let mut workers = start_stages(&pipeline, &bootstrap, &Stage::ALL, "0", &webhook);
    let processing = Instant::now();
    pipeline.wait_drained(&bootstrap, &mut workers, DRAIN_TIMEOUT);
    let took = processing.elapsed();
    for mut worker in workers {
        worker.stop_gracefully();
    }
    let delivered = assert_pipeline_exactly_once(&bootstrap, &pipeline, &spec, &webhook);
    eprintln!(
        "baseline: {} orders produced in {produced:.1?}; all three stages drained in {took:.1?} \
         ({:.0} orders/s end to end); {delivered}",
        spec.count,
        spec.count as f64 / took.as_secs_f64()
    );
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn sigkilled_workers_resume_from_committed_state_and_a_flaky_webhook_is_retried() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = Pipeline::create(&bootstrap, 6);
    // Every 7th request fails transiently (503, or 429 with Retry-After).
    let webhook = WebhookReceiver::start(7);
    let spec = spec(fault_orders(), 200);
    produce(&bootstrap, &pipeline.orders, &spec);

    let pods: HashMap<Stage, String> = Stage::ALL
        .iter()
        .map(|stage| (*stage, format!("{}-0", stage.name())))
        .collect();
    let mut workers: Vec<(Stage, WorkerProcess)> = Stage::ALL
        .iter()
        .map(|stage| {
            (
                *stage,
                start(&pipeline, &bootstrap, *stage, &pods[stage], &webhook),
            )
        })
        .collect();
    for kill_at in [0.2, 0.4, 0.6] {
        wait_until_blocking(
            &format!("{:.0}% validate progress", kill_at * 100.0),
            DRAIN_TIMEOUT,
            || validate_progress(&bootstrap, &pipeline) >= kill_at,
        )
        .expect("in time");
        // SIGKILL mid-transaction: no shutdown, no commit, no leaving the group. The restarted
        // worker has the same pod name, so initialising its producer aborts what the dead one
        // left open, and the group hands it the partitions once the dead member times out.
        workers = workers
            .into_iter()
            .map(|(stage, worker)| {
                worker.signal(Signal::SIGKILL);
                drop(worker);
                (
                    stage,
                    start(&pipeline, &bootstrap, stage, &pods[&stage], &webhook),
                )
            })
            .collect();
    }
    pipeline.wait_drained(
        &bootstrap,
        workers.iter_mut().map(|(_, worker)| worker),
        DRAIN_TIMEOUT,
    );
    for (_, mut worker) in workers {
        worker.stop_gracefully();
    }
    let delivered = assert_pipeline_exactly_once(&bootstrap, &pipeline, &spec, &webhook);
    eprintln!("after 3 SIGKILLs of every stage: {delivered}");
    assert!(
        delivered.webhook_requests > delivered.raw_deliveries,
        "some requests failed and were retried"
    );
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn rebalances_between_two_validate_workers_keep_every_order_exactly_once() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = Pipeline::create(&bootstrap, 6);
    let webhook = WebhookReceiver::start(0);
    let spec = spec(fault_orders(), 300);
    produce(&bootstrap, &pipeline.orders, &spec);

    let mut steady = start_stages(&pipeline, &bootstrap, &Stage::ALL, "a", &webhook);
    // A second validate worker joins and leaves repeatedly: each join and each graceful leave is a
    // cooperative rebalance that moves partitions between the two while they process.
    for (round, until) in [0.15, 0.35, 0.55, 0.75].into_iter().enumerate() {
        let mut joiner = start(
            &pipeline,
            &bootstrap,
            Stage::Validate,
            &format!("validate-b{round}"),
            &webhook,
        );
        wait_until_blocking(
            &format!("{:.0}% validate progress", until * 100.0),
            DRAIN_TIMEOUT,
            || validate_progress(&bootstrap, &pipeline) >= until,
        )
        .expect("in time");
        joiner.stop_gracefully();
    }
    pipeline.wait_drained(&bootstrap, &mut steady, DRAIN_TIMEOUT);
    for mut worker in steady {
        worker.stop_gracefully();
    }
    let delivered = assert_pipeline_exactly_once(&bootstrap, &pipeline, &spec, &webhook);
    eprintln!("after 8 rebalances of validate: {delivered}");
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn a_broker_restart_mid_run_loses_and_duplicates_nothing() {
    // A private broker: the shared one must not be restarted under other tests.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut stack = runtime
        .block_on(
            Stack::builder(&unique_name("worker-restart"))
                .kafka_only()
                .start(),
        )
        .expect("private Kafka");
    let bootstrap = stack.kafka_bootstrap().expect("bootstrap").to_owned();
    let pipeline = Pipeline::create(&bootstrap, 6);
    let webhook = WebhookReceiver::start(0);
    let spec = spec(fault_orders(), 400);
    produce(&bootstrap, &pipeline.orders, &spec);

    let mut workers = start_stages(&pipeline, &bootstrap, &Stage::ALL, "0", &webhook);
    wait_until_blocking("30% validate progress", DRAIN_TIMEOUT, || {
        validate_progress(&bootstrap, &pipeline) >= 0.3
    })
    .expect("in time");
    // Same port, same log dirs: in-flight transactions time out or are aborted, the workers'
    // clients reconnect, and whatever failed is rewound to the committed offsets.
    runtime
        .block_on(stack.stop_kafka())
        .expect("broker stopped");
    wait_until_blocking("every worker to notice the outage", DRAIN_TIMEOUT, || {
        workers
            .iter()
            .all(|worker| worker.log_text().contains("brokers are down"))
    })
    .expect("in time");
    runtime
        .block_on(stack.start_kafka())
        .expect("broker restarted");

    pipeline.wait_drained(&bootstrap, &mut workers, DRAIN_TIMEOUT);
    for mut worker in workers {
        worker.stop_gracefully();
    }
    let delivered = assert_pipeline_exactly_once(&bootstrap, &pipeline, &spec, &webhook);
    eprintln!("after a broker restart: {delivered}");
    runtime
        .block_on(stack.stop())
        .expect("private Kafka stopped");
}

/// Status events in the per-key run; `ORDERPIPE_TEST_EVENTS` overrides it.
fn status_events() -> u64 {
    count_from_env("ORDERPIPE_TEST_EVENTS", 50_000)
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn status_events_over_10000_interleaved_keys_change_each_order_in_order_and_notify_once_per_version()
 {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = Pipeline::create(&bootstrap, 6);
    let webhook = WebhookReceiver::start(0);
    // 10,000 orders' life cycles open at any time, their events interleaved; some redelivered,
    // some illegal (which quarantines the order: its later events are dead-lettered too).
    let spec = LoadSpec {
        mode: LoadMode::StatusEvents,
        count: status_events(),
        keys: 10_000,
        invalid_share: 0.02,
        duplicate_share: 0.05,
        ..orders(0, 500)
    };
    produce(&bootstrap, &pipeline.events, &spec);
    let mut workers = start_stages(
        &pipeline,
        &bootstrap,
        &[Stage::Status, Stage::Notify],
        "0",
        &webhook,
    );
    let processing = Instant::now();
    pipeline.wait_drained(&bootstrap, &mut workers, DRAIN_TIMEOUT);
    let took = processing.elapsed();
    for mut worker in workers {
        worker.stop_gracefully();
    }

    // What each order's changes must be, in production order, and which of them notify.
    let mut expected_changes: HashMap<Vec<u8>, Vec<(OrderState, OrderState, u64)>> = HashMap::new();
    let mut expected_dead_letters: HashMap<&str, usize> = HashMap::new();
    for record in loadgen::generate(&spec) {
        let key = record.key.unwrap_or_default();
        match record.expectation {
            Expectation::Event(EventExpectation::Transition { from, to, version }) => {
                expected_changes
                    .entry(key)
                    .or_default()
                    .push((from, to, version));
            }
            Expectation::Event(EventExpectation::Illegal) => {
                *expected_dead_letters
                    .entry("illegal_transition")
                    .or_default() += 1;
            }
            Expectation::Event(EventExpectation::Quarantined) => {
                *expected_dead_letters.entry("key_quarantined").or_default() += 1;
            }
            Expectation::Event(EventExpectation::Duplicate) | Expectation::Order(_) => {}
        }
    }
    assert!(
        expected_changes.len() > 10_000,
        "more orders than open keys"
    );

    // Changes are keyed by order id into as many partitions as the input: one order's changes
    // are in one partition, so offset order is the order they were committed in.
    let mut changes: HashMap<Vec<u8>, Vec<(OrderState, OrderState, u64)>> = HashMap::new();
    for record in read_all(&bootstrap, &pipeline.changes, Isolation::ReadCommitted)
        .expect("topic read to its end")
    {
        let changed: StatusChanged =
            serde_json::from_slice(record.payload.as_deref().unwrap_or_default())
                .expect("StatusChanged");
        changes
            .entry(record.key.unwrap_or_default())
            .or_default()
            .push((changed.from, changed.to, changed.version));
    }
    let wrong: Vec<_> = expected_changes
        .iter()
        .filter(|(key, expected)| changes.get(*key) != Some(expected))
        .take(3)
        .collect();
    assert!(
        wrong.is_empty() && changes.len() == expected_changes.len(),
        "every order's changes exactly once and in event order; first wrong: {wrong:?}"
    );

    let mut dead_letters: HashMap<String, usize> = HashMap::new();
    for record in read_all(&bootstrap, &pipeline.dead_letter, Isolation::ReadCommitted)
        .expect("topic read to its end")
    {
        let reason = record.header(headers::ERROR_REASON).unwrap_or("none");
        *dead_letters.entry(reason.to_owned()).or_default() += 1;
    }
    let expected_dead_letters: HashMap<String, usize> = expected_dead_letters
        .into_iter()
        .map(|(reason, count)| (reason.to_owned(), count))
        .collect();
    assert_eq!(
        dead_letters, expected_dead_letters,
        "dead letters by reason"
    );

    let notify_on = NotifyPolicy::default().notify_on;
    let expected_keys: HashSet<String> = expected_changes
        .iter()
        .flat_map(|(key, changes)| {
            let order_id = String::from_utf8_lossy(key).into_owned();
            changes
                .iter()
                .filter(|(_, to, _)| notify_on.contains(to))
                .map(move |(_, _, version)| idempotency_key(&order_id, *version, "webhook"))
        })
        .collect();
    let delivered = webhook.delivered();
    let delivered_keys: HashSet<String> = delivered.keys().cloned().collect();
    assert_eq!(
        delivered_keys.len(),
        expected_keys.len(),
        "one distinct delivery per notifying (order, version)"
    );
    assert_eq!(delivered_keys, expected_keys);
    let audit = read_all(&bootstrap, &pipeline.audit, Isolation::ReadCommitted)
        .expect("topic read to its end");
    assert_eq!(
        audit.len(),
        expected_keys.len(),
        "one audit record per notification"
    );
    eprintln!(
        "{} status events over {} orders drained through status and notify in {took:.1?} \
         ({:.0} events/s); {} changes, {} dead letters, {} distinct / {} raw deliveries",
        spec.count,
        expected_changes.len(),
        spec.count as f64 / took.as_secs_f64(),
        expected_changes.values().map(Vec::len).sum::<usize>(),
        dead_letters.values().sum::<usize>(),
        delivered_keys.len(),
        delivered.values().sum::<u64>(),
    );
}
