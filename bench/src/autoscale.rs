//! Lag autoscaling: one burst of orders on the checkout pipeline, its validate stage autoscaled on
//! its lag in Kafka (the sample's 1..6 replicas, 1,000 records per replica), side by side with the
//! same stage fixed at one replica, in one run on one private stack. The set-up is the demo's
//! (`orderpipe_demo::Demo`): the release operator serving the external metrics API to the
//! apiserver's HPA controller, a node agent running the release worker as real processes.
//!
//! Measured from the burst's first order ([`PeakClock`]): when validate first runs more than one
//! ready replica, the most it runs, when it has finished every order (drained: its consumer group
//! has committed the whole input), and when it is back at one replica. The books are
//! checked after each variant: a fast drain that lost or duplicated orders would not count.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use orderpipe_demo::{Demo, DemoConfig, LoadOptions, PeakClock};
use orderpipe_stack::{Stack, unique_name};

use crate::Context;
use crate::report::{Section, Table};

const STAGE: &str = "validate";
/// Polling the pipeline: the clock's resolution.
const OBSERVE_EVERY: Duration = Duration::from_millis(500);
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// The longest a variant may take from the burst to the end of its round trip.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(600);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Autoscaled,
    OneReplica,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Autoscaled => "autoscaled on lag (1..6 replicas)",
            Variant::OneReplica => "fixed at 1 replica",
        }
    }
}

/// One variant's outcome.
#[derive(Debug)]
struct Row {
    variant: Variant,
    orders: u64,
    produced_in: Duration,
    clock: PeakClock,
    books_balance: bool,
}

pub async fn run(ctx: &Context) -> anyhow::Result<Vec<Section>> {
    // One release worker drains about 6,000 orders/s here, and the HPA needs some 15 s to act
    // (lag interval, 5 s sync, pod start): a burst that one replica drains in 10 s is over before
    // any scaling. The full size keeps one replica busy for well over a minute.
    let orders = if ctx.quick { 20_000 } else { 600_000 };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("[bench] autoscale: starting a private stack");
    let stack = Stack::builder("bench-autoscale")
        .start()
        .await
        .context("starting the benchmark stack")?;
    let mut rows = Vec::new();
    let mut result = Ok(());
    for variant in [Variant::Autoscaled, Variant::OneReplica] {
        eprintln!("[bench] autoscale: {}", variant.label());
        match burst(&stack, variant, orders).await {
            Ok(row) => rows.push(row),
            Err(error) => {
                result = Err(error);
                break;
            }
        }
    }
    stack.stop().await.context("stopping the benchmark stack")?;
    result?;
    Ok(vec![section(&rows, orders, load.trim())])
}

/// Starts the demo pipeline in a namespace of its own, fixes validate at one replica for
/// [`Variant::OneReplica`], produces `orders` as fast as the broker takes them, and times the
/// round trip.
async fn burst(stack: &Stack, variant: Variant, orders: u64) -> anyhow::Result<Row> {
    let namespace = unique_name("bench-autoscale");
    let work_dir = stack.work_dir().join(&namespace);
    let config = DemoConfig::on_stack(
        stack,
        &namespace,
        &format!("{namespace}."),
        &format!("{namespace}-node"),
        work_dir.clone(),
    )?;
    let mut demo = Demo::start(stack.kube_client()?, config, |_| {}).await?;
    let measured = async {
        demo.wait_ready(READY_TIMEOUT).await?;
        if variant == Variant::OneReplica {
            demo.scale(STAGE, 1, READY_TIMEOUT).await?;
        }
        let started = Instant::now();
        let load = demo
            .start_load(LoadOptions {
                // As fast as the gateway takes them: a burst, not a rate any one worker keeps up with.
                rate: 1_000_000,
                count: Some(orders),
                invalid_share: 0.03,
                garbage_share: 0.01,
                duplicate_share: 0.01,
                seed: 11,
            })
            .await?;
        let mut observer = demo.observer()?;
        let mut clock = PeakClock::new(started, 1);
        let mut produced_in = None;
        loop {
            let snapshot = observer.snapshot().await?;
            let now = Instant::now();
            if produced_in.is_none() && load.sent() >= orders {
                produced_in = Some(now - started);
            }
            let validate = snapshot
                .stages
                .iter()
                .find(|s| s.name == STAGE)
                .context("no validate stage in the snapshot")?;
            let drained = produced_in.is_some() && demo.caught_up(STAGE).await?;
            clock.observe(validate.ready, drained, now);
            let done = match variant {
                Variant::Autoscaled => clock.round_trip(),
                Variant::OneReplica => clock.drained.is_some(),
            };
            if done {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < ROUND_TRIP_TIMEOUT,
                "{}: no round trip within {ROUND_TRIP_TIMEOUT:?}: {clock}",
                variant.label()
            );
            tokio::time::sleep(OBSERVE_EVERY).await;
        }
        let sent = load.finish().await?;
        let books = demo.drain(&sent, DRAIN_TIMEOUT).await?;
        let problems = books.problems();
        for problem in &problems {
            eprintln!("[bench] autoscale: {}: {problem}", variant.label());
        }
        anyhow::Ok(Row {
            variant,
            orders,
            produced_in: produced_in.unwrap_or_default(),
            clock,
            books_balance: problems.is_empty(),
        })
    }
    .await;
    let stopped = demo.stop().await;
    let row = measured.with_context(|| format!("logs in {}", work_dir.display()))?;
    stopped?;
    Ok(row)
}

fn section(rows: &[Row], orders: u64, load: &str) -> Section {
    let seconds =
        |d: Option<Duration>| d.map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64()));
    let mut table = Table::new(&[
        "validate",
        "orders",
        "burst produced in (s)",
        "> 1 replica at (s)",
        "most replicas (at s)",
        "drained at (s)",
        "back at 1 replica at (s)",
        "books balance",
    ]);
    for row in rows {
        table.row(vec![
            row.variant.label().into(),
            row.orders.to_string(),
            seconds(Some(row.produced_in)),
            seconds(row.clock.scaled_out),
            format!(
                "{} ({:.1})",
                row.clock.peak.0,
                row.clock.peak.1.as_secs_f64()
            ),
            seconds(row.clock.drained),
            seconds(row.clock.back_to_min),
            if row.books_balance { "yes" } else { "NO" }.into(),
        ]);
    }
    let drained = |variant| {
        rows.iter()
            .find(|r| r.variant == variant)
            .and_then(|r| r.clock.drained)
    };
    let mut notes = vec![
        format!(
            "{orders} orders (3 % invalid, 1 % not orders, 1 % re-submitted) produced at once onto the \
             checkout pipeline's 6-partition input; times from the first order, observed every \
             {OBSERVE_EVERY:?}. Release binaries; the stack's HPA syncs every 5 s, the operator \
             measures lag every 2 s, and scale-down waits 15 s (the demo's settings)."
        ),
        format!("load average at the start: {load}"),
    ];
    if let (Some(auto), Some(fixed)) = (drained(Variant::Autoscaled), drained(Variant::OneReplica))
    {
        notes.push(format!(
            "drain time, one replica / autoscaled: {:.2}",
            fixed.as_secs_f64() / auto.as_secs_f64().max(0.001)
        ));
    }
    Section {
        title: "Lag autoscaling: a burst on validate".into(),
        table,
        notes,
    }
}
