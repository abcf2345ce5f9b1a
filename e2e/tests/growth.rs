//! Coordinated partition growth (issue #22) with real worker processes: the operator grows the
//! inputs of a validate and a status stage from 3 to 6 and then to 12 partitions while orders
//! (with re-submissions) and multi-event order histories are produced continuously, placed as Java
//! producers place them and switching to the new count at their own metadata refresh.
//!
//! One more producer of orders keeps librdkafka's default metadata refresh (5 minutes), far beyond
//! the topics' settle window, until the first growth is released: its records of moved keys past
//! the barrier are forwarded to their keys' new partitions, and the shipped
//! `OrderPipelineGrowthForwarding` alert fires on the stack's Prometheus (rules loaded as
//! `orderpipe_e2e::rules` shortens them). It stops before the second growth, which a producer two
//! growths behind would break (see `docs/partition-growth.md`).
//!
//! Afterwards every order's status changes appear once and in event order, no re-submitted order
//! is validated twice, nothing is dead-lettered (so nothing quarantined), and every valid order is
//! validated exactly once. The hold of each growth (from the grow to the release) is printed.
//! Needs `make test-e2e` and the worker binary (`cargo build -p orderpipe-worker`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use orderpipe_api::OrderPipeline;
use orderpipe_api::v1alpha1::{GrowthPhase, GrowthStatus, Processor};
use orderpipe_e2e::load::PacedLoad;
use orderpipe_e2e::rules::{AlertWatch, LiveRules};
use orderpipe_e2e::{OperatorTest, apply_pipeline, on_node_agent, wait_ready};
use orderpipe_node_agent::{NodeAgent, NodeAgentConfig};
use orderpipe_orders::generator::{EventExpectation, Expected};
use orderpipe_orders::{OrderState, StatusChanged};
use orderpipe_stack::{
    Isolation, SharedStack, TestNamespace, caught_up, partition_count, prometheus, read_all, tools,
    unique_name, wait_until,
};
use orderpipe_worker::loadgen::{self, Expectation, LoadMode, LoadSpec};
use serde_json::{Value, json};

/// The producers notice a grown topic within this; the topics' settle window covers it twice.
const METADATA_REFRESH: Duration = Duration::from_secs(2);
const SETTLE_SECONDS: i32 = 5;
/// librdkafka's default `topic.metadata.refresh.interval.ms`: a producer that breaks the window.
const LATE_REFRESH: Duration = Duration::from_secs(300);
/// Records per second into each input.
const RATE: u64 = 60;
/// From a partition change to the growth's release: the grow, the settle window, the drain.
const GROWTH: Duration = Duration::from_secs(180);
const DRAIN: Duration = Duration::from_secs(300);

fn orders_spec() -> LoadSpec {
    LoadSpec {
        mode: LoadMode::Orders,
        count: u64::MAX,
        rate: None,
        keys: 0,
        invalid_share: 0.0,
        garbage_share: 0.0,
        // Re-submissions, some of which straddle a growth: the dedup state must have moved.
        duplicate_share: 0.2,
        seed: 22,
    }
}

/// The late producer's orders: another seed, so other order ids.
fn late_orders_spec() -> LoadSpec {
    LoadSpec {
        seed: 24,
        ..orders_spec()
    }
}

fn events_spec() -> LoadSpec {
    LoadSpec {
        mode: LoadMode::StatusEvents,
        count: u64::MAX,
        rate: None,
        // Few open orders at a time, so each has several events around every growth.
        keys: 60,
        invalid_share: 0.0,
        garbage_share: 0.0,
        duplicate_share: 0.05,
        seed: 23,
    }
}

struct Topics {
    orders: String,
    validated: String,
    events: String,
    changes: String,
    dead_letter: String,
}

impl Topics {
    fn of(ns: &str) -> Topics {
        let t = |suffix: &str| format!("{ns}.{suffix}");
        Topics {
            orders: t("orders"),
            validated: t("validated"),
            events: t("events"),
            changes: t("changes"),
            dead_letter: t("dlq"),
        }
    }
}

fn pipeline(ns: &str, bootstrap: &str, partitions: i32) -> anyhow::Result<Value> {
    let topics = Topics::of(ns);
    let pipeline = OrderPipeline::test("shop")
        .bootstrap(bootstrap)
        .topic_prefix(ns)
        .partitions(&topics.orders, partitions)
        .topic(&topics.events, partitions)
        .topic(&topics.changes, 3)
        .stage(
            "status",
            Processor::Status,
            &topics.events,
            &[("changes", &topics.changes)],
        )
        .replicas("validate", 2)
        .replicas("status", 2);
    let mut spec = serde_json::to_value(pipeline)?;
    for topic in spec["spec"]["topics"]
        .as_array_mut()
        .context("spec.topics")?
    {
        topic["settleSeconds"] = json!(SETTLE_SECONDS);
    }
    Ok(spec)
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn inputs_grow_3_to_6_to_12_under_load_keeping_order_state_and_dedup() -> anyhow::Result<()> {
    let worker = tools::built_binary("orderpipe-worker")?;
    let node = unique_name("growth-node");
    let OperatorTest {
        stack,
        bootstrap,
        ns,
        operator,
    } = OperatorTest::start_placed("growth", on_node_agent(&node)).await?;
    let work = tempfile::tempdir()?;
    let agent = NodeAgent::start(
        ns.client().clone(),
        NodeAgentConfig::new(&node, work.path()).worker_releases(worker.clone(), worker),
    )
    .await?;
    let proven = grow_under_load(&stack, &bootstrap, &ns).await;
    agent.stop().await?;
    proven?;
    OperatorTest::finish(operator, ns).await
}

async fn grow_under_load(
    stack: &SharedStack,
    bootstrap: &str,
    ns: &TestNamespace,
) -> anyhow::Result<()> {
    let topics = Topics::of(ns.name());
    let prometheus_url = stack.prometheus_url()?.to_owned();
    let rules =
        LiveRules::install(stack.prometheus_rules_dir()?, &prometheus_url, ns.name()).await?;
    let alerts = AlertWatch::new(&prometheus_url, Some(ns.name()));
    apply_pipeline(ns, &pipeline(ns.name(), bootstrap, 3)?).await?;
    wait_ready(ns, "shop").await?;
    let orders = PacedLoad::start(
        bootstrap,
        &topics.orders,
        orders_spec(),
        RATE,
        METADATA_REFRESH,
    );
    let mut late = Some(PacedLoad::start(
        bootstrap,
        &topics.orders,
        late_orders_spec(),
        RATE / 2,
        LATE_REFRESH,
    ));
    let mut sent_late = 0;
    let events = PacedLoad::start(
        bootstrap,
        &topics.events,
        events_spec(),
        RATE,
        METADATA_REFRESH,
    );

    let mut holds = Vec::new();
    for partitions in [6, 12] {
        // Some records with the old count first.
        tokio::time::sleep(Duration::from_secs(5)).await;
        apply_pipeline(ns, &pipeline(ns.name(), bootstrap, partitions)?).await?;
        let began = Instant::now();
        let done = completed(ns, &[&topics.orders, &topics.events], partitions).await?;
        for growth in done {
            eprintln!(
                "measured: {} {}->{} released after {:?} (held {}s from the grow; settle window \
                 {SETTLE_SECONDS}s)",
                growth.topic,
                growth.from,
                growth.to,
                began.elapsed(),
                growth.held_seconds.unwrap_or_default()
            );
            holds.push(growth);
        }
        for topic in [&topics.orders, &topics.events] {
            let live = partition_count(bootstrap, topic)?;
            ensure!(
                live == Some(usize::try_from(partitions)?),
                "{topic} has {live:?} partitions"
            );
        }
        if let Some(late) = late.take() {
            // The late producer's records past the barrier were forwarded, and that is alerted.
            alerts
                .fires("OrderPipelineGrowthForwarding", &[("stage", "validate")])
                .await?;
            sent_late = late.stop().await?;
        }
    }
    // Records with the final count after the last release.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent_orders = orders.stop().await?;
    let sent_events = events.stop().await?;
    eprintln!(
        "measured: {sent_orders} + {sent_late} (late producer) order records and {sent_events} \
         event records produced"
    );

    for (group, topic) in [("validate", &topics.orders), ("status", &topics.events)] {
        let group = format!("orderpipe.{}.shop.{group}", ns.name());
        wait_until(&format!("{group} consumed {topic}"), DRAIN, || async {
            let (bootstrap, group, topic) = (bootstrap.to_owned(), group.clone(), topic.clone());
            let done = tokio::task::spawn_blocking(move || caught_up(&bootstrap, &group, &topic));
            done.await.ok()?.ok()?.then_some(())
        })
        .await?;
    }
    let read = |topic: &str| read_all(bootstrap, topic, Isolation::ReadCommitted);
    let dead = read(&topics.dead_letter)?;
    ensure!(
        dead.is_empty(),
        "{} dead letters, e.g. {:?}",
        dead.len(),
        dead.first().map(|r| r.headers.clone())
    );
    validated_once(
        &read(&topics.validated)?,
        &[
            (orders_spec(), sent_orders),
            (late_orders_spec(), sent_late),
        ],
    )?;
    changes_in_order(&read(&topics.changes)?, sent_events)?;
    ensure!(holds.len() == 4, "four growths: {holds:?}");
    let forwarded = prometheus::query(
        &prometheus_url,
        &format!(
            "sum by (stage) (orderpipe_growth_forwarded_total{{namespace=\"{}\"}})",
            ns.name()
        ),
    )
    .await?;
    eprintln!("measured: records forwarded, by stage: {forwarded:?}");
    rules.remove().await
}

/// Waits until the latest growth of each of `topics` to `partitions` completed.
async fn completed(
    ns: &TestNamespace,
    topics: &[&String],
    partitions: i32,
) -> anyhow::Result<Vec<GrowthStatus>> {
    let api = ns.api::<OrderPipeline>();
    let what = format!("the growths to {partitions} partitions complete");
    let done = wait_until(&what, GROWTH, || async {
        let status = api.get("shop").await.ok()?.status?;
        let done: Vec<GrowthStatus> = topics
            .iter()
            .filter_map(|topic| {
                status.growth.iter().find(|g| {
                    &&g.topic == topic && g.to == partitions && g.phase == GrowthPhase::Completed
                })
            })
            .cloned()
            .collect();
        (done.len() == topics.len()).then_some(done)
    })
    .await?;
    Ok(done)
}

/// Every valid order exactly once in the validated output: a re-submission is never validated
/// again, wherever the growth put it. `sent`: each producer's load and how many records it sent.
fn validated_once(
    validated: &[orderpipe_stack::Record],
    sent: &[(LoadSpec, u64)],
) -> anyhow::Result<()> {
    let mut expected: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut resubmissions = 0;
    let records = sent.iter().flat_map(|(spec, count)| {
        loadgen::generate(&LoadSpec {
            count: *count,
            ..spec.clone()
        })
    });
    for record in records {
        match record.expectation {
            Expectation::Order(Expected::Valid) => {
                expected.insert(record.key.unwrap_or_default(), 0);
            }
            Expectation::Order(Expected::Duplicate) => resubmissions += 1,
            other => anyhow::bail!("the load has only valid orders and re-submissions: {other:?}"),
        }
    }
    let mut unknown = 0;
    for record in validated {
        match expected.get_mut(record.key.as_deref().unwrap_or_default()) {
            Some(count) => *count += 1,
            None => unknown += 1,
        }
    }
    let twice = expected.values().filter(|&&n| n > 1).count();
    let missing = expected.values().filter(|&&n| n == 0).count();
    eprintln!(
        "measured: {} valid orders and {resubmissions} re-submissions; validated {}: {twice} twice, \
         {missing} missing",
        expected.len(),
        validated.len()
    );
    ensure!(
        twice == 0 && missing == 0 && unknown == 0,
        "validated: {twice} orders twice, {missing} missing, {unknown} unknown"
    );
    Ok(())
}

/// Every order's status changes exactly once and in event order.
fn changes_in_order(changes: &[orderpipe_stack::Record], sent: u64) -> anyhow::Result<()> {
    type Change = (OrderState, OrderState, u64);
    let mut expected: HashMap<Vec<u8>, Vec<Change>> = HashMap::new();
    for record in loadgen::generate(&LoadSpec {
        count: sent,
        ..events_spec()
    }) {
        match record.expectation {
            Expectation::Event(EventExpectation::Transition { from, to, version }) => expected
                .entry(record.key.unwrap_or_default())
                .or_default()
                .push((from, to, version)),
            Expectation::Event(EventExpectation::Duplicate) => {}
            other => anyhow::bail!("the load has only legal events and re-deliveries: {other:?}"),
        }
    }
    // One order's changes are in one partition of the changes topic (keyed by order id), so
    // offset order is the order they were committed in.
    let mut seen: HashMap<Vec<u8>, Vec<Change>> = HashMap::new();
    for record in changes {
        let changed: StatusChanged =
            serde_json::from_slice(record.payload.as_deref().unwrap_or_default())
                .context("a StatusChanged record")?;
        seen.entry(record.key.clone().unwrap_or_default())
            .or_default()
            .push((changed.from, changed.to, changed.version));
    }
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(key, want)| seen.get(*key) != Some(want))
        .map(|(key, want)| {
            (
                String::from_utf8_lossy(key).into_owned(),
                want,
                seen.get(key),
            )
        })
        .take(3)
        .collect();
    eprintln!(
        "measured: {} orders with {} status changes expected; {} orders seen",
        expected.len(),
        expected.values().map(Vec::len).sum::<usize>(),
        seen.len()
    );
    ensure!(
        wrong.is_empty() && seen.len() == expected.len(),
        "every order's changes exactly once and in event order; first wrong \
         (order, expected, seen): {wrong:?}"
    );
    Ok(())
}
