//! `orderpipe-demo` (`make demo`): starts a private local stack, the operator, a node agent and a
//! webhook receiver, applies the checkout sample, POSTs orders to its intake gateway (the view
//! prints the gateway's URL and token, for `curl`) and shows a live view once a second. Ctrl-C
//! (or `--seconds`) stops the load; the demo waits for the backlog to drain, prints the books
//! and tears everything down. Exits 1 if the books do not balance.
//!
//! `--scenario peak` (`make demo SCENARIO=peak`) adds a burst several times what one validate
//! worker handles: the view shows validate's lag in Kafka rising, its HPA adding workers up to the
//! input's partitions, the lag draining and the stage shrinking back; the load stops once it is
//! back at one replica (or at `--seconds`), and the summary gives the burst's timeline.
//!
//! `--scenario bad-release` / `good-release` (`make demo SCENARIO=...`) run the stack with the Argo
//! Rollouts controller and validate as a canary stage (two pods, the analysis querying the stack's
//! Prometheus). After `--release-after` seconds of steady load the demo releases a new worker
//! image to validate: `orderpipe/orderpipe-worker:faulty` (the node agent runs
//! `orderpipe-worker-faulty`, which dead-letters every record) or `:v2` (the same worker). The view
//! shows the canary's step, weight and partitions, its AnalysisRun's measurements and the outcome;
//! the load stops once the release is aborted or promoted and settled, and the books account for
//! what the faulty canary dead-lettered.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use orderpipe_demo::{
    Books, Demo, DemoConfig, Load, LoadOptions, PeakClock, Phase, ReleaseTimeline, Snapshot,
};
use orderpipe_node_agent::FAULTY_WORKER_IMAGE;
use orderpipe_stack::Stack;
use tokio::signal::unix::{SignalKind, signal};

/// The live view's refresh (a display rate, not synchronisation).
const REFRESH: Duration = Duration::from_secs(1);
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// The checkout sample's `targetLagPerReplica` for validate: below it, the burst's backlog is gone
/// (the steady load keeps a small lag of its own).
const BURST_DRAINED_BELOW: i64 = 1_000;
/// After the first line of the view's header while the load runs; not in the headless lines.
const CTRL_C_HINT: &str = "   Ctrl-C: stop, drain, check the books";
/// A sound release: another tag of the worker image, which the node agent runs as the same worker.
const GOOD_RELEASE: &str = "orderpipe/orderpipe-worker:v2";
/// From the image change to a settled outcome: the canary's pod, the 40 s pause, the promotion.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(300);

/// The shape of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// The rate until stopped.
    Steady,
    /// The rate, then a burst on top of it; see the module header.
    Peak,
    /// The rate; validate released by canary to a faulty version, which the analysis aborts.
    BadRelease,
    /// The rate; validate released by canary to a sound version, which is promoted.
    GoodRelease,
}

impl Scenario {
    /// The image the scenario releases to validate, with what it is.
    fn release(self) -> Option<(&'static str, &'static str)> {
        match self {
            Scenario::Steady | Scenario::Peak => None,
            Scenario::BadRelease => Some((
                FAULTY_WORKER_IMAGE,
                "orderpipe-worker-faulty: dead-letters every record",
            )),
            Scenario::GoodRelease => Some((GOOD_RELEASE, "the same worker")),
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "The checkout pipeline on a local stack, with a live view and its books")]
struct Args {
    /// Orders per second.
    #[arg(long, default_value_t = 300)]
    rate: u32,
    /// Share of orders that fail validation.
    #[arg(long, default_value_t = 0.03)]
    invalid_share: f64,
    /// Share of records that are not orders (dead-lettered).
    #[arg(long, default_value_t = 0.01)]
    garbage_share: f64,
    /// Share of re-submitted orders.
    #[arg(long, default_value_t = 0.01)]
    duplicate_share: f64,
    /// Stop the load after this many seconds (default: at Ctrl-C).
    #[arg(long, env = "DEMO_SECONDS")]
    seconds: Option<u64>,
    /// One status line per second instead of the redrawn view (for CI and logs).
    #[arg(long)]
    headless: bool,
    #[arg(long, value_enum, env = "SCENARIO", default_value = "steady")]
    scenario: Scenario,
    /// peak: orders in the burst.
    #[arg(long, default_value_t = 60_000)]
    burst_orders: u64,
    /// peak: the burst's rate (orders/s), on top of `--rate`.
    #[arg(long, default_value_t = 6_000)]
    burst_rate: u32,
    /// peak: seconds of steady load before the burst.
    #[arg(long, default_value_t = 10)]
    burst_after: u64,
    /// bad-release, good-release: seconds of steady load before the release.
    #[arg(long, default_value_t = 20)]
    release_after: u64,
}

/// Set-up and tear-down steps, with the time since the start.
struct Progress(Instant);

impl Progress {
    fn step(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let progress = Progress(Instant::now());
    let work_dir = PathBuf::from("target/e2e/demo-run");
    std::fs::create_dir_all(&work_dir).context("creating target/e2e/demo-run")?;
    // The components log to a file: the terminal belongs to the live view.
    let log = std::fs::File::create(work_dir.join("demo.log")).context("creating demo.log")?;
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .init();

    let releases = args.scenario.release().is_some();
    progress.step(if releases {
        "starting the local stack (etcd, kube-apiserver, controller-manager, scheduler, kwok, Kafka, Prometheus, Argo Rollouts) ..."
    } else {
        "starting the local stack (etcd, kube-apiserver, controller-manager, scheduler, kwok, Kafka, Prometheus) ..."
    });
    let stack = Stack::builder("demo")
        .argo_rollouts(releases)
        .start()
        .await?;
    progress.step(&format!(
        "stack ready (logs: {})",
        stack.work_dir().join("logs").display()
    ));
    if let Ok(url) = stack.prometheus_url() {
        progress.step(&format!(
            "Prometheus: {url}/graph (targets: {url}/targets, alerts: {url}/alerts); the \
             dashboards' queries are in config/monitoring/grafana/"
        ));
    }
    let mut config = DemoConfig::on_stack(&stack, "demo", "", "orderpipe-local", work_dir.clone())?;
    config.canary = releases;
    let mut demo = Demo::start(stack.kube_client()?, config, |step| {
        progress.step(&format!("starting the {step}"));
    })
    .await?;
    progress.step("waiting for the checkout pipeline to become Ready ...");
    demo.wait_ready(READY_TIMEOUT).await.with_context(|| {
        format!(
            "operator log: {}, worker logs: {}",
            demo.operator_log().display(),
            work_dir.join("node-agent/pods").display()
        )
    })?;
    progress.step("pipeline Ready; starting the load");

    let outcome = run(&args, &mut demo).await;
    progress.step("tearing down: pipeline, node agent, operator, stack ...");
    let stopped = demo.stop().await;
    stack.stop().await?;
    progress.step("done");
    stopped?;
    let books = outcome?;
    if !books.problems().is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// Load, live view, drain, summary; returns the books.
async fn run(args: &Args, demo: &mut Demo) -> anyhow::Result<Books> {
    let mut sigint = signal(SignalKind::interrupt()).context("handling Ctrl-C")?;
    let mut observer = demo.observer()?;
    let options = LoadOptions {
        rate: args.rate,
        count: None,
        invalid_share: args.invalid_share,
        garbage_share: args.garbage_share,
        duplicate_share: args.duplicate_share,
        seed: 7,
    };
    let gateway = demo.gateway().await?;
    let intake_line = format!(
        "intake gateway: {} (token {}); try: curl -H 'Authorization: Bearer {}' {}/v1/orders/<orderId>",
        gateway.urls.join(" "),
        gateway.token,
        gateway.token,
        gateway.urls.first().map_or("", String::as_str),
    );
    // Headless lines are a log: the gateway is named once, not on every line.
    if args.headless {
        println!("{intake_line}");
    }
    let load = demo.start_load(options).await?;
    let limit = args.seconds.map(Duration::from_secs);
    let mut ticks = tokio::time::interval(REFRESH);
    let mut burst: Option<(Load, PeakClock)> = None;
    let mut release = ReleaseTimeline::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = sigint.recv() => break,
        }
        if args.scenario == Scenario::Peak
            && burst.is_none()
            && load.elapsed() >= Duration::from_secs(args.burst_after)
        {
            let started = Instant::now();
            let orders = demo
                .start_load(LoadOptions {
                    rate: args.burst_rate,
                    count: Some(args.burst_orders),
                    seed: 8,
                    ..options
                })
                .await?;
            burst = Some((orders, PeakClock::new(started, 1)));
        }
        let snapshot = observer.snapshot().await?;
        let now = Instant::now();
        if let Some((image, _)) = args.scenario.release()
            && release.phase() == Phase::Steady
            && load.elapsed() >= Duration::from_secs(args.release_after)
        {
            let stable = snapshot
                .release
                .as_ref()
                .and_then(|view| view.rollout.stable.clone());
            demo.release(image).await?;
            release.released(stable, now);
        }
        if let Some(view) = &snapshot.release {
            release.observe(&view.rollout, view.analysis.as_ref(), now);
        }
        let rate = load.sent() as f64 / load.elapsed().as_secs_f64().max(0.001);
        let mut header = format!(
            "load: {} orders posted in {:.0} s ({rate:.0}/s, target {}/s)",
            load.sent(),
            load.elapsed().as_secs_f64(),
            args.rate
        );
        header.push_str(CTRL_C_HINT);
        if !args.headless {
            header.push('\n');
            header.push_str(&intake_line);
        }
        if let Some((orders, clock)) = &mut burst {
            let validate = snapshot.stages.first();
            let sent_all = orders.sent() >= args.burst_orders;
            let drained = sent_all
                && validate
                    .and_then(|v| v.kafka_lag)
                    .is_some_and(|lag| lag < BURST_DRAINED_BELOW);
            clock.observe(validate.map_or(0, |v| v.ready), drained, Instant::now());
            let _ = write!(
                header,
                "\nburst: {} of {} orders at up to {}/s; {clock}",
                orders.sent(),
                args.burst_orders,
                args.burst_rate
            );
        }
        if let Some((image, what)) = args.scenario.release() {
            let _ = write!(
                header,
                "\nrelease: {image} ({what}) after {} s of steady load",
                args.release_after
            );
            for line in orderpipe_demo::release_lines(&release, snapshot.release.as_ref(), now) {
                let _ = write!(header, "\n{line}");
            }
        }
        show(args.headless, &header, &snapshot, demo);
        let round_trip = burst.as_ref().is_some_and(|(_, clock)| clock.round_trip());
        let release_over =
            release.settled() || release.elapsed(now).is_some_and(|t| t >= RELEASE_TIMEOUT);
        if round_trip || release_over || limit.is_some_and(|limit| load.elapsed() >= limit) {
            break;
        }
    }
    let load_time = load.elapsed();
    let mut sent = load.finish().await?;
    let timeline = match burst {
        Some((orders, clock)) => {
            sent.merge(orders.finish().await?);
            Some(clock)
        }
        None => None,
    };
    let drain_started = Instant::now();
    loop {
        let snapshot = observer.snapshot().await?;
        let validate = snapshot
            .stages
            .first()
            .map(|s| s.counters)
            .unwrap_or_default();
        let notify = snapshot
            .stages
            .last()
            .map(|s| s.counters)
            .unwrap_or_default();
        let header = format!(
            "load stopped after {} orders ({} accepted into Kafka); draining for {:.0} s: validate finished {:.0}, notify delivered {:.0} of {}",
            sent.posted,
            sent.sent,
            drain_started.elapsed().as_secs_f64(),
            validate.processed + validate.rejected + validate.dead_lettered + validate.duplicates,
            notify.processed,
            sent.valid
        );
        show(args.headless, &header, &snapshot, demo);
        if demo.drained().await? || drain_started.elapsed() >= DRAIN_TIMEOUT {
            break;
        }
        tokio::select! {
            _ = ticks.tick() => {}
            // A second Ctrl-C skips the drain; the books then show what is still in flight.
            _ = sigint.recv() => break,
        }
    }
    let drain_time = drain_started.elapsed();
    let books = demo.books(&sent).await?;
    println!("\n==== orderpipe demo: summary");
    println!(
        "load: {} orders posted in {:.1} s ({:.0}/s; target {}/s); drain took {:.1} s after the load stopped",
        sent.posted,
        load_time.as_secs_f64(),
        sent.posted as f64 / load_time.as_secs_f64().max(0.001),
        args.rate,
        drain_time.as_secs_f64()
    );
    if let Some(clock) = timeline {
        println!("peak: validate {clock}");
    }
    if let Some((image, what)) = args.scenario.release() {
        println!("release of validate to {image} ({what}): {release}");
    }
    println!("{books}");
    let problems = books.problems();
    if problems.is_empty() {
        println!(
            "BOOKS BALANCE: every order accounted for once; every valid order once in each output; one notification per (order, version)"
        );
    } else {
        println!("BOOKS DO NOT BALANCE:");
        for problem in &problems {
            println!("  - {problem}");
        }
    }
    Ok(books)
}

/// The live view: redrawn in place, or one line per refresh when headless.
fn show(headless: bool, header: &str, snapshot: &Snapshot, demo: &Demo) {
    let (distinct, deliveries) = demo.webhook().counts();
    if headless {
        let mut line = header.replace(CTRL_C_HINT, "").replace('\n', " | ");
        for stage in &snapshot.stages {
            let _ = write!(
                line,
                " | {} {:.0} done, lag {:.0}{}, {}/{} ready",
                stage.name,
                stage.counters.processed
                    + stage.counters.rejected
                    + stage.counters.dead_lettered
                    + stage.counters.duplicates,
                stage.lag,
                kafka_lag(stage),
                stage.ready,
                stage.desired
            );
        }
        println!("{line} | {distinct} notified");
        return;
    }
    let mut view = String::from("\x1b[H\x1b[2J");
    let _ = writeln!(
        view,
        "orderpipe demo: OrderPipeline {}/checkout (orders -> validate -> status -> notify -> webhook)\n",
        demo.config().namespace
    );
    let _ = writeln!(view, "{header}\n");
    let _ = writeln!(
        view,
        "{:<9} {:>9} {:>10} {:>9} {:>14} {:>11} {:>6} {:>10} {:>7} {:>10}",
        "stage",
        "consumed",
        "processed",
        "rejected",
        "dead-lettered",
        "duplicates",
        "lag",
        "Kafka lag",
        "ready",
        "processes"
    );
    for stage in &snapshot.stages {
        let c = stage.counters;
        let _ = writeln!(
            view,
            "{:<9} {:>9.0} {:>10.0} {:>9.0} {:>14.0} {:>11.0} {:>6.0} {:>10} {:>7} {:>10}",
            stage.name,
            c.consumed,
            c.processed,
            c.rejected,
            c.dead_lettered,
            c.duplicates,
            stage.lag,
            stage
                .kafka_lag
                .map_or_else(|| "-".to_owned(), |lag| lag.to_string()),
            format!("{}/{}", stage.ready, stage.desired),
            stage.processes
        );
    }
    let _ = writeln!(
        view,
        "\nlag: the workers' own reading; Kafka lag: the operator's, which the HPA scales on"
    );
    let _ = writeln!(view, "conditions: {}", snapshot.conditions.join(", "));
    let _ = writeln!(
        view,
        "notifications received: {distinct} distinct (order, version), {deliveries} deliveries"
    );
    print!("{view}");
}

/// ` (Kafka N)` for a stage whose lag the operator measures, for the one-line view.
fn kafka_lag(stage: &orderpipe_demo::StageView) -> String {
    stage
        .kafka_lag
        .map(|lag| format!(" (Kafka {lag})"))
        .unwrap_or_default()
}
