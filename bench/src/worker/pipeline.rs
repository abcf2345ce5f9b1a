//! The whole pipeline validate -> status -> notify, one exactly-once worker process per stage and
//! a webhook receiver in the bench: how fast a backlog drains, and which paced rates it keeps up
//! with (every order delivered within [`KEPT_UP_WITHIN`] of being produced), and how fast a smaller
//! backlog drains when the webhook takes [`SLOW_ANSWER`] to answer. Must not render anything but
//! its own section.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orderpipe_api::contract::env;
use orderpipe_orders::generator::Expected;
use orderpipe_worker::loadgen::{self, Expectation};

use super::process::{Measured, cpu_share};
use super::variant::{Programs, StageEnv};
use super::webhook::Webhook;
use super::{COMMIT_INTERVAL, kafka, stats};
use crate::report::{Section, Table};

/// A paced rate is sustained when no order took longer than this from producer to webhook.
const KEPT_UP_WITHIN: Duration = Duration::from_secs(5);
const PARTITIONS: i32 = 4;
const STAGES: [&str; 3] = ["validate", "status", "notify"];
/// The answer time of the slow webhook row: a shop's endpoint across a network, doing some work.
const SLOW_ANSWER: Duration = Duration::from_millis(20);

/// Sizes of the pipeline runs.
#[derive(Debug, Clone, Copy)]
pub struct PipelinePlan {
    pub backlog: u64,
    /// Orders drained untimed first, by a pipeline of their own ([`warm_up`]).
    pub warm_up: u64,
    pub paced_seconds: u32,
    /// Orders drained through a pipeline whose webhook answers in [`SLOW_ANSWER`].
    pub slow_webhook_backlog: u64,
}

pub fn measure(
    plan: PipelinePlan,
    handle: &tokio::runtime::Handle,
    programs: &Programs,
) -> anyhow::Result<Section> {
    let webhook = Webhook::start(handle, Duration::ZERO)?;
    warm_up(plan, programs, &webhook);
    let timed = Pipeline::new("pipe");
    let expected = timed.fill(programs, plan.backlog, 21)?;
    let mut stages = timed.start(programs, &webhook)?;
    let mut section = Section {
        title: format!(
            "Worker: whole pipeline validate -> status -> notify ({PARTITIONS} partitions, exactly-once)"
        ),
        table: Table::new(&["load", "orders/s", "p50 ms", "p99 ms", "max ms", "kept up"]),
        notes: vec![format!(
            "One worker process per stage, commit interval {} ms, a webhook receiver in the bench \
             answering 200 at once. Progress = webhook deliveries (one per valid order).",
            COMMIT_INTERVAL.as_millis()
        )],
    };
    let drain = drain(&mut stages, &webhook, plan.backlog, expected)?;
    let drain_rate = stats::rate(plan.backlog, drain.total);
    section.table.row(vec![
        format!("backlog of {} orders", plan.backlog),
        stats::whole(drain_rate),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    section.notes.push(format!(
        "Backlog: {} orders ({expected} valid) pre-produced, drained in {:.1} s from starting the \
         three workers to the last webhook delivery (start-up included); orders/s = input orders \
         over that time. Before it, a pipeline of its own drained {} orders untimed (the broker \
         warmed up). Per stage over the drain: {}.",
        plan.backlog,
        drain.total.as_secs_f64(),
        plan.warm_up,
        drain.per_stage.join("; ")
    ));

    let Some(steady) = drain_rate else {
        bail!("the backlog drained too fast to measure a rate");
    };
    let mut sustained = None;
    for (index, share) in [0.5, 0.9].into_iter().enumerate() {
        let rate = (steady * share).round().max(1.0) as u32;
        let (samples, all_delivered) = paced(
            programs,
            &webhook,
            &timed.topic("orders"),
            rate,
            plan.paced_seconds,
            index,
        )?;
        let max = samples.iter().max().copied();
        let kept_up = all_delivered && max.is_some_and(|max| max <= KEPT_UP_WITHIN);
        if kept_up {
            sustained = Some(rate);
        }
        section.table.row(vec![
            format!("paced, {:.0} % of the drain rate", share * 100.0),
            rate.to_string(),
            stats::millis(stats::percentile(&samples, 0.5)),
            stats::millis(stats::percentile(&samples, 0.99)),
            stats::millis(max),
            if kept_up { "yes" } else { "no" }.to_owned(),
        ]);
    }
    section.notes.push(format!(
        "Paced: {} s of valid orders at the rate shown; latency = from handing an order to the \
         bench's producer to its webhook delivery. Kept up = no order took more than {} s. \
         Sustained on this machine: {}.",
        plan.paced_seconds,
        KEPT_UP_WITHIN.as_secs(),
        sustained.map_or_else(
            || "below the lowest rate tried".to_owned(),
            |rate| format!("at least {rate} orders/s")
        )
    ));
    // Its workers stop before the next pipeline's start: they would share the cores.
    drop(stages);
    slow_webhook(plan, handle, programs, &mut section)?;
    Ok(section)
}

/// The backlog row of a pipeline of its own whose webhook answers in [`SLOW_ANSWER`]: what notify
/// does when the webhook, not the CPU, is what it waits on.
fn slow_webhook(
    plan: PipelinePlan,
    handle: &tokio::runtime::Handle,
    programs: &Programs,
    section: &mut Section,
) -> anyhow::Result<()> {
    let webhook = Webhook::start(handle, SLOW_ANSWER)?;
    let slow = Pipeline::new("slow-webhook.pipe");
    let expected = slow.fill(programs, plan.slow_webhook_backlog, 25)?;
    let mut stages = slow.start(programs, &webhook)?;
    let drain = drain(&mut stages, &webhook, plan.slow_webhook_backlog, expected)?;
    section.table.row(vec![
        format!(
            "backlog of {} orders, webhook answering in {} ms",
            plan.slow_webhook_backlog,
            SLOW_ANSWER.as_millis()
        ),
        stats::whole(stats::rate(plan.slow_webhook_backlog, drain.total)),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    let one_at_a_time = f64::from(PARTITIONS) / SLOW_ANSWER.as_secs_f64();
    section.notes.push(format!(
        "Slow webhook: a pipeline of its own, its webhook answering each POST {} ms after it \
         arrived, drained {} orders ({expected} valid) in {:.1} s. Handling one record at a time \
         per partition would cap notify at {one_at_a_time:.0} notifications/s here ({PARTITIONS} \
         partitions / {} ms). Per stage over the drain: {}.",
        SLOW_ANSWER.as_millis(),
        plan.slow_webhook_backlog,
        drain.total.as_secs_f64(),
        SLOW_ANSWER.as_millis(),
        drain.per_stage.join("; ")
    ));
    Ok(())
}

/// Drains a small backlog through a pipeline of its own, untimed, so that the timed drain does not
/// pay for a broker still compiling its code for three stages' transactions: on a fresh broker
/// (`--only pipeline`) its JIT compiler took 11 % of the machine during the timed drain, against
/// 3 % after the side-by-side runs (docs/benchmarks.md, session 17). A failed warm-up is only
/// reported: the timed drain fails on its own.
fn warm_up(plan: PipelinePlan, programs: &Programs, webhook: &Webhook) {
    eprintln!(
        "[bench] pipeline: warming the broker up with {} orders (untimed)",
        plan.warm_up
    );
    let warm_up = Pipeline::new("warm-up.pipe");
    let drained = warm_up
        .fill(programs, plan.warm_up, 23)
        .and_then(|expected| {
            let mut stages = warm_up.start(programs, webhook)?;
            drain(&mut stages, webhook, plan.warm_up, expected)
        });
    if let Err(error) = drained {
        eprintln!("[bench] pipeline: the warm-up failed: {error:#}");
    }
}

/// The topics of one pipeline under a name prefix, and its three stage processes.
struct Pipeline {
    prefix: &'static str,
}

impl Pipeline {
    fn new(prefix: &'static str) -> Self {
        Self { prefix }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Creates the topics and fills the input with `orders` orders; returns how many are valid
    /// (one webhook delivery each).
    fn fill(&self, programs: &Programs, orders: u64, seed: u64) -> anyhow::Result<u64> {
        let mut topics: Vec<(String, i32)> = ["orders", "validated", "events", "changes", "audit"]
            .iter()
            .chain(&["validate.state", "status.state"])
            .map(|name| (self.topic(name), PARTITIONS))
            .collect();
        topics.extend([(self.topic("rejected"), 1), (self.topic("dlq"), 1)]);
        kafka::create_named_topics(&programs.bootstrap, &topics)
            .context("creating the pipeline's topics")?;
        let spec = kafka::orders(orders, None, seed);
        eprintln!("[bench] pipeline: producing {orders} orders");
        kafka::fill(&programs.bootstrap, &self.topic("orders"), &spec)?;
        Ok(loadgen::generate(&spec)
            .filter(|record| record.expectation == Expectation::Order(Expected::Valid))
            .count() as u64)
    }

    /// Starts one exactly-once worker process per stage, notify posting to `webhook`.
    fn start(&self, programs: &Programs, webhook: &Webhook) -> anyhow::Result<Vec<Measured>> {
        let mut stages = Vec::new();
        for stage in STAGES {
            let (input, outputs) = match stage {
                "validate" => (
                    self.topic("orders"),
                    format!(
                        "validated={},rejected={},events={}",
                        self.topic("validated"),
                        self.topic("rejected"),
                        self.topic("events")
                    ),
                ),
                "status" => (
                    self.topic("events"),
                    format!("changes={}", self.topic("changes")),
                ),
                _ => (
                    self.topic("changes"),
                    format!("audit={}", self.topic("audit")),
                ),
            };
            let mut command = programs.worker(&StageEnv {
                stage,
                input: &input,
                outputs: &outputs,
                dead_letter: &self.topic("dlq"),
                group: &self.topic(stage),
                commit_interval: COMMIT_INTERVAL,
            });
            if stage == "notify" {
                command.env(env::WEBHOOK_URL, &webhook.url);
            } else {
                command.env(env::STATE_TOPIC, self.topic(&format!("{stage}.state")));
            }
            let log = programs
                .work_dir
                .join(format!("{}.{stage}.log", self.prefix));
            stages.push(Measured::spawn(stage, command, &log)?);
        }
        Ok(stages)
    }
}

struct Drain {
    total: Duration,
    per_stage: Vec<String>,
}

/// Waits until `expected` deliveries arrived; times the whole drain from the workers' start (the
/// stages overlap, so a window on the last stage's progress alone would flatter the rate).
fn drain(
    stages: &mut [Measured],
    webhook: &Webhook,
    backlog: u64,
    expected: u64,
) -> anyhow::Result<Drain> {
    let started = Instant::now();
    let before = webhook.deliveries();
    let start_cpu = stages
        .iter()
        .map(Measured::cpu)
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Slower than 200 orders/s is a broken run, not a measurement.
    let timeout = Duration::from_secs(300 + backlog / 200);
    let mut last_report = Instant::now();
    loop {
        for stage in stages.iter_mut() {
            stage.ensure_running()?;
        }
        let delivered = webhook.deliveries().saturating_sub(before);
        if delivered >= expected {
            let total = started.elapsed();
            let mut per_stage = Vec::new();
            for ((stage, name), start) in stages.iter().zip(STAGES).zip(&start_cpu) {
                per_stage.push(format!(
                    "{name} {:.2} cores, peak RSS {} MiB",
                    cpu_share(*start, stage.cpu()?).unwrap_or(0.0),
                    stage.peak_rss()? / (1024 * 1024)
                ));
            }
            return Ok(Drain { total, per_stage });
        }
        if started.elapsed() > timeout {
            bail!("pipeline: {delivered} of {expected} deliveries after {timeout:?}");
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!("[bench] pipeline: {delivered} of {expected} delivered");
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Latencies of `seconds` of valid orders at `rate`, producer to webhook, and whether every order
/// arrived (within two minutes of the last one produced).
fn paced(
    programs: &Programs,
    webhook: &Webhook,
    input: &str,
    rate: u32,
    seconds: u32,
    index: usize,
) -> anyhow::Result<(Vec<Duration>, bool)> {
    eprintln!("[bench] pipeline: paced load at {rate} orders/s for {seconds} s");
    webhook.record_arrivals();
    let count = u64::from(rate) * u64::from(seconds);
    let spec = kafka::valid_orders(count, rate, 31 + index as u64);
    let sent = Mutex::new(HashMap::new());
    kafka::paced(&programs.bootstrap, input, &spec, &sent)?;
    let sent = sent.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let measured = |arrivals: &HashMap<String, Instant>| -> Vec<Duration> {
        arrivals
            .iter()
            .filter_map(|(order_id, at)| {
                sent.get(order_id.as_bytes())
                    .map(|produced| at.duration_since(*produced))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let (samples, all_delivered) = loop {
        let samples = measured(&webhook.arrivals());
        if samples.len() as u64 >= count {
            break (samples, true);
        }
        if Instant::now() > deadline {
            eprintln!(
                "[bench] pipeline: {} of {count} paced orders delivered",
                samples.len()
            );
            break (samples, false);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok((samples, all_delivered))
}
