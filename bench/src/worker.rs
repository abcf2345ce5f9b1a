//! Worker benchmarks on a private one-broker stack: the validate stage exactly-once vs
//! at-least-once vs a raw librdkafka copy vs Kafka Streams at 1, 4 and 8 partitions, and the
//! commit-interval sweep. Each variant runs as its own process, one after the other, against the
//! same broker in the same run. This module plans the runs and renders the sections; measuring is
//! in `measure`, the processes in `variant`.

pub mod kafka;
mod measure;
mod pipeline;
pub(crate) mod process;
pub(crate) mod stats;
mod variant;
mod webhook;

use std::time::Duration;

use anyhow::Context as _;
use orderpipe_stack::tools::Tools;
use orderpipe_stack::{Stack, create_topics};

use crate::Context;
use crate::report::{Section, Table};
use measure::{Pace, Throughput};
use pipeline::PipelinePlan;
use variant::{Programs, Run, Variant};

/// The worker contract's default commit interval; every variant gets the same.
const COMMIT_INTERVAL: Duration = orderpipe_api::contract::defaults::COMMIT_INTERVAL;
/// Seed of the backlogs.
const BACKLOG_SEED: u64 = 7;

/// Sizes of one benchmark run.
#[derive(Debug, Clone)]
struct Plan {
    backlog: u64,
    /// Orders each variant drains, untimed, before the first timed run ([`warm_up`]).
    warm_up: u64,
    /// Timed throughput runs per variant and partition count, the variants taking turns; the
    /// report shows the median run.
    rounds: usize,
    partitions: Vec<i32>,
    pace: Pace,
    sweep_ms: Vec<u64>,
    pipeline: PipelinePlan,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                backlog: 20_000,
                warm_up: 10_000,
                rounds: 1,
                partitions: vec![1],
                pace: Pace {
                    rate: 200,
                    seconds: 3,
                },
                sweep_ms: vec![10, 1_000],
                pipeline: PipelinePlan {
                    backlog: 20_000,
                    warm_up: 5_000,
                    paced_seconds: 3,
                    slow_webhook_backlog: 2_000,
                },
            }
        } else {
            Self {
                backlog: 300_000,
                warm_up: 100_000,
                rounds: 3,
                partitions: vec![1, 4, 8],
                pace: Pace {
                    rate: 500,
                    seconds: 10,
                },
                sweep_ms: vec![10, 100, 1_000],
                pipeline: PipelinePlan {
                    backlog: 1_000_000,
                    warm_up: 200_000,
                    paced_seconds: 20,
                    slow_webhook_backlog: 20_000,
                },
            }
        }
    }
}

/// What one variant measured.
#[derive(Debug, Clone)]
struct Measurement {
    throughput: Throughput,
    latencies: Vec<Duration>,
}

/// A side-by-side variant as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VariantArg {
    Eos,
    Alo,
    Raw,
    Streams,
}

impl VariantArg {
    fn variant(self) -> Variant {
        match self {
            Self::Eos => Variant::ExactlyOnce,
            Self::Alo => Variant::AtLeastOnce,
            Self::Raw => Variant::RawCopy,
            Self::Streams => Variant::Streams,
        }
    }
}

/// A narrower worker run (command-line filters); empty lists mean the plan's defaults.
#[derive(Debug, Clone, Default)]
pub struct Focus {
    pub variants: Vec<VariantArg>,
    pub partitions: Vec<i32>,
    pub side_by_side_only: bool,
}

/// Which worker benchmarks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Side by side, whole pipeline, commit interval sweep.
    All,
    /// The whole pipeline alone (`--only pipeline`): drain, paced rate, per-stage CPU and RSS.
    PipelineOnly,
}

pub async fn run(ctx: &Context, scope: Scope) -> anyhow::Result<Vec<Section>> {
    let mut plan = Plan::new(ctx.quick);
    if !ctx.worker.partitions.is_empty() {
        plan.partitions.clone_from(&ctx.worker.partitions);
    }
    let variants: Vec<Variant> = if ctx.worker.variants.is_empty() {
        Variant::ALL.to_vec()
    } else {
        ctx.worker.variants.iter().map(|v| v.variant()).collect()
    };
    let side_by_side_only = ctx.worker.side_by_side_only;
    eprintln!("[bench] worker: starting a private Kafka broker");
    let stack = Stack::builder("bench-worker")
        .kafka_only()
        .start()
        .await
        .context("starting the local Kafka broker (make e2e-tools builds it)")?;
    let bootstrap = stack.kafka_bootstrap()?.to_owned();
    let classpath = Tools::locate()?.kafka_classpath()?;
    let work_dir = stack.work_dir().join("bench");
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let handle = tokio::runtime::Handle::current();
    let measured = tokio::task::spawn_blocking(move || {
        let programs = Programs::prepare(&classpath, &work_dir, &bootstrap)?;
        match scope {
            Scope::All => measure_all(&plan, &variants, side_by_side_only, &handle, &programs),
            Scope::PipelineOnly => Ok(vec![pipeline_section(&plan, &handle, &programs)]),
        }
    })
    .await
    .context("the worker benchmarks panicked");
    stack.stop().await.context("stopping the local broker")?;
    measured?
}

fn measure_all(
    plan: &Plan,
    variants: &[Variant],
    side_by_side_only: bool,
    handle: &tokio::runtime::Handle,
    programs: &Programs,
) -> anyhow::Result<Vec<Section>> {
    let order_bytes = kafka::mean_payload_bytes(&kafka::orders(1_000, None, BACKLOG_SEED));
    let mut side_by_side = Section {
        title: "Worker: validate stage, side by side".to_owned(),
        table: measured_table(&["partitions", "variant"]),
        notes: vec![
            format!(
                "Input: {} orders from the load generator (mean payload {order_bytes} bytes; 2 % invalid, \
                 1 % re-submitted), pre-produced once per partition count and read by every variant \
                 with its own group. Commit interval {} ms for all. Before the first timed run, \
                 every variant drains {} orders once, untimed, so that none is timed on a cold \
                 broker.",
                plan.backlog,
                COMMIT_INTERVAL.as_millis(),
                plan.warm_up
            ),
            format!(
                "orders/s: the variant's process is started on the full backlog; the clock runs \
                 from the first probe (every 100 ms) that sees >= 10 % of the backlog in the \
                 group's committed offsets to the first that sees all of it (start-up, group join \
                 and restore excluded). With transactions, committed offsets become visible with \
                 the outputs. Each variant is timed {} time(s), the variants taking turns with a \
                 group of their own each time; the row shows the run of median rate (with its RSS \
                 and CPU), and the ratios are of those runs.",
                plan.rounds
            ),
            format!(
                "p50/p99: a fresh process on an empty input, a 100-order warm-up committed, then \
                 {} valid orders at {}/s; latency = from handing an order to the bench's producer to a \
                 read_committed consumer of the validated topic (raw copy: its output) receiving it, \
                 both in the bench process.",
                u64::from(plan.pace.rate) * u64::from(plan.pace.seconds),
                plan.pace.rate
            ),
            "peak RSS: VmHWM of the process under test over the throughput run; CPU: its \
             (utime+stime) over wall time in the timed interval. The broker and the bench's own \
             clients run on the same cores."
                .to_owned(),
        ],
    };
    warm_up(plan, programs, variants);
    let mut sweep_input = None;
    for &partitions in &plan.partitions {
        let input = backlog(plan, programs, partitions)?;
        let tag = format!("p{partitions}");
        let mut rounds: Vec<Vec<anyhow::Result<Throughput>>> =
            variants.iter().map(|_| Vec::new()).collect();
        for round in 1..=plan.rounds {
            for (&variant, runs) in variants.iter().zip(&mut rounds) {
                let tag = format!("{tag}.r{round}");
                let run = Run::new(variant, &input, partitions, COMMIT_INTERVAL, &tag);
                runs.push(measure_throughput(programs, &run, plan.backlog));
            }
        }
        let mut results = Vec::new();
        let mut per_round = Vec::new();
        for (&variant, runs) in variants.iter().zip(rounds) {
            per_round.push(format!(
                "{} {}",
                variant.slug(),
                runs.iter()
                    .map(|run| run.as_ref().map_or_else(
                        |_| "failed".to_owned(),
                        |throughput| stats::whole(throughput.rate)
                    ))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ));
            let result = median_run(runs).and_then(|throughput| {
                let latencies =
                    measure_latency(plan, programs, variant, partitions, COMMIT_INTERVAL, &tag)?;
                Ok(Measurement {
                    throughput,
                    latencies,
                })
            });
            side_by_side.table.row(row(
                vec![partitions.to_string(), variant.label().to_owned()],
                &result,
            ));
            if let Err(error) = &result {
                side_by_side.notes.push(format!(
                    "{partitions} partition(s), {}: failed: {error:#}",
                    variant.label()
                ));
            }
            results.push((variant, result.ok()));
        }
        if plan.rounds > 1 {
            side_by_side.notes.push(format!(
                "{partitions} partition(s), orders/s of the {} rounds: {}",
                plan.rounds,
                per_round.join("; ")
            ));
        }
        side_by_side.notes.push(ratios(partitions, &results));
        if partitions == 1 {
            sweep_input = Some(input);
        }
    }
    let mut sections = vec![side_by_side];
    if side_by_side_only {
        return Ok(sections);
    }
    sections.push(pipeline_section(plan, handle, programs));
    if let Some(input) = sweep_input {
        sections.push(sweep(plan, programs, &input)?);
    }
    Ok(sections)
}

/// The whole-pipeline section, or one saying why it failed.
fn pipeline_section(plan: &Plan, handle: &tokio::runtime::Handle, programs: &Programs) -> Section {
    pipeline::measure(plan.pipeline, handle, programs).unwrap_or_else(|error| Section {
        title: "Worker: whole pipeline: failed".to_owned(),
        notes: vec![format!("{error:#}")],
        ..Section::default()
    })
}

/// Lets every variant drain a small backlog once, untimed, so that no timed run alone pays for a
/// cold broker. The first variant timed used to: its broker used about twice the CPU for the same
/// backlog (most likely the JVM still compiling its produce, fetch, transaction and group-commit
/// paths), and exactly-once, always first, measured 0.67-0.75 of at-least-once at 1 partition;
/// with at-least-once first, the same binaries measured 1.07. With this warm-up: 0.77-0.89
/// (docs/benchmarks.md, session 15). A failed warm-up is only reported: the variant's timed run
/// fails in its own row.
fn warm_up(plan: &Plan, programs: &Programs, variants: &[Variant]) {
    let input = "warm-up.orders";
    let filled = create_topics(&programs.bootstrap, &[(input, 1)])
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            kafka::fill(
                &programs.bootstrap,
                input,
                &kafka::orders(plan.warm_up, None, BACKLOG_SEED),
            )
        });
    if let Err(error) = filled {
        eprintln!("[bench] worker: no warm-up, its input failed: {error:#}");
        return;
    }
    for &variant in variants {
        eprintln!(
            "[bench] worker: warming the broker up with {} ({} orders, untimed)",
            variant.label(),
            plan.warm_up
        );
        let run = Run::new(variant, input, 1, COMMIT_INTERVAL, "warm-up");
        let drained = kafka::create_named_topics(&programs.bootstrap, &run.outputs())
            .and_then(|()| measure::throughput(programs, &run, plan.warm_up));
        if let Err(error) = drained {
            eprintln!(
                "[bench] worker: warm-up with {} failed: {error:#}",
                variant.label()
            );
        }
    }
}

/// Creates `p<n>.orders` and fills it with the plan's backlog.
fn backlog(plan: &Plan, programs: &Programs, partitions: i32) -> anyhow::Result<String> {
    let input = format!("p{partitions}.orders");
    create_topics(&programs.bootstrap, &[(&input, partitions)])
        .with_context(|| format!("creating {input}"))?;
    eprintln!(
        "[bench] worker: producing {} orders into {input}",
        plan.backlog
    );
    kafka::fill(
        &programs.bootstrap,
        &input,
        &kafka::orders(plan.backlog, None, BACKLOG_SEED),
    )?;
    Ok(input)
}

/// A throughput run on `input` and a latency run on an input of its own.
fn measure_variant(
    plan: &Plan,
    programs: &Programs,
    variant: Variant,
    input: &str,
    partitions: i32,
    interval: Duration,
    tag: &str,
) -> anyhow::Result<Measurement> {
    let run = Run::new(variant, input, partitions, interval, tag);
    let throughput = measure_throughput(programs, &run, plan.backlog)?;
    let latencies = measure_latency(plan, programs, variant, partitions, interval, tag)?;
    Ok(Measurement {
        throughput,
        latencies,
    })
}

/// `run` started on its input's whole backlog of `backlog` orders.
fn measure_throughput(programs: &Programs, run: &Run, backlog: u64) -> anyhow::Result<Throughput> {
    kafka::create_named_topics(&programs.bootstrap, &run.outputs())
        .context("creating the run's topics")?;
    eprintln!(
        "[bench] worker: {} on {} partition(s), commit interval {} ms ({}): throughput",
        run.variant.label(),
        run.partitions,
        run.commit_interval.as_millis(),
        run.name
    );
    let throughput = measure::throughput(programs, run, backlog)?;
    eprintln!(
        "[bench] worker: {}: {:.0} orders/s",
        run.variant.label(),
        throughput.rate.unwrap_or(0.0)
    );
    Ok(throughput)
}

/// Latencies of `variant` on an input of its own, paced by the plan.
fn measure_latency(
    plan: &Plan,
    programs: &Programs,
    variant: Variant,
    partitions: i32,
    interval: Duration,
    tag: &str,
) -> anyhow::Result<Vec<Duration>> {
    let tag = format!("{tag}.latency");
    let input = format!("{tag}.{}.orders", variant.slug());
    let run = Run::new(variant, &input, partitions, interval, &tag);
    let mut topics = run.outputs();
    topics.push((input.clone(), partitions));
    kafka::create_named_topics(&programs.bootstrap, &topics)
        .context("creating the latency run's topics")?;
    eprintln!("[bench] worker: {}: latency", variant.label());
    measure::latency(programs, &run, plan.pace)
}

/// The run of median rate (of an even count, the lower of the middle two); the first failure when
/// none succeeded.
fn median_run(runs: Vec<anyhow::Result<Throughput>>) -> anyhow::Result<Throughput> {
    let mut measured = Vec::new();
    let mut first_error = None;
    for run in runs {
        match run {
            Ok(throughput) => measured.push(throughput),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    measured.sort_by(|a, b| a.rate.unwrap_or(0.0).total_cmp(&b.rate.unwrap_or(0.0)));
    let middle = measured.len().saturating_sub(1) / 2;
    match (measured.into_iter().nth(middle), first_error) {
        (Some(median), _) => Ok(median),
        (None, Some(error)) => Err(error),
        (None, None) => anyhow::bail!("no throughput run"),
    }
}

/// A table of `leading` columns, then what [`row`] fills in.
fn measured_table(leading: &[&str]) -> Table {
    let measured = [
        "orders/s",
        "p50 ms",
        "p99 ms",
        "peak RSS MiB",
        "CPU (cores)",
    ];
    let columns: Vec<&str> = leading.iter().copied().chain(measured).collect();
    Table::new(&columns)
}

/// `leading` cells, then the measurement's (or dashes for a failed run).
fn row(mut leading: Vec<String>, result: &anyhow::Result<Measurement>) -> Vec<String> {
    let cells = match result {
        Ok(measured) => vec![
            stats::whole(measured.throughput.rate),
            stats::millis(stats::percentile(&measured.latencies, 0.5)),
            stats::millis(stats::percentile(&measured.latencies, 0.99)),
            format!(
                "{:.0}",
                measured.throughput.peak_rss as f64 / (1024.0 * 1024.0)
            ),
            measured
                .throughput
                .cpu
                .map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.2}")),
        ],
        Err(_) => vec![
            "failed".to_owned(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ],
    };
    leading.extend(cells);
    leading
}

/// The ratios for one partition count, against their targets.
fn ratios(partitions: i32, results: &[(Variant, Option<Measurement>)]) -> String {
    let of = |variant: Variant| {
        results
            .iter()
            .find(|(v, _)| *v == variant)
            .and_then(|(_, measured)| measured.as_ref())
    };
    let rate = |variant| of(variant).and_then(|m| m.throughput.rate);
    let rss = |variant| of(variant).map(|m| m.throughput.peak_rss as f64);
    let eos = rate(Variant::ExactlyOnce);
    format!(
        "{partitions} partition(s): a/c = {}; a/b = {}; a/d = {}; RSS a/d = {}",
        stats::against_target(stats::ratio(eos, rate(Variant::RawCopy)), 0.5, true),
        stats::against_target(stats::ratio(eos, rate(Variant::AtLeastOnce)), 0.9, true),
        stats::against_target(stats::ratio(eos, rate(Variant::Streams)), 1.5, true),
        stats::against_target(
            stats::ratio(rss(Variant::ExactlyOnce), rss(Variant::Streams)),
            0.2,
            false
        ),
    )
}

/// The exactly-once worker on one partition at each of the plan's commit intervals.
fn sweep(plan: &Plan, programs: &Programs, input: &str) -> anyhow::Result<Section> {
    let mut section = Section {
        title: "Worker: commit interval sweep (validate, exactly-once, 1 partition)".to_owned(),
        table: measured_table(&["commit interval ms"]),
        notes: vec![
            "Same backlog and method as the side-by-side table. The commit interval is the only \
             batch setting of the worker contract (a transaction also ends at 20,000 records, \
             a fixed bound in runtime::Tuning). The rate is read from committed offsets, so at \
             1,000 ms it is coarser (one commit per second)."
                .to_owned(),
        ],
    };
    for &ms in &plan.sweep_ms {
        let interval = Duration::from_millis(ms);
        let result = measure_variant(
            plan,
            programs,
            Variant::ExactlyOnce,
            input,
            1,
            interval,
            &format!("sweep{ms}"),
        );
        section.table.row(row(vec![ms.to_string()], &result));
        if let Err(error) = &result {
            section.notes.push(format!("{ms} ms: failed: {error:#}"));
        }
    }
    Ok(section)
}
