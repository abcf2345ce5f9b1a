//! The intake gateway's benchmark: `oha`, an independent HTTP load generator (pinned in the
//! Makefile's `bench-tools`), POSTs unique valid orders to a release `orderpipe-worker intake` on a
//! private one-broker stack — paced at the target rate, then as fast as it answers. Every
//! 202 waited for the broker's acknowledgement (acks=all). This module plans the runs and renders
//! the section; it must not judge answers (oha counts them, the broker holds the records).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use orderpipe_orders::generator::{GenConfig, OrderGenerator};
use orderpipe_stack::{Isolation, Stack, create_topics, free_port, read_all, wait_until};
use serde_json::Value;

use crate::Context;
use crate::report::{Section, Table};
use crate::worker::process::{Measured, cpu_share};
use crate::worker::stats::{millis, whole};

/// The target: at least this many POST/s ...
const TARGET_RATE: u32 = 5_000;
/// ... with a p99 at most this.
const TARGET_P99: Duration = Duration::from_millis(50);
const TOKEN: &str = "bench-token";
const PARTITIONS: i32 = 4;

/// One oha run.
struct Load {
    name: &'static str,
    /// Requests per second; `None`: as fast as the gateway answers.
    rate: Option<u32>,
    seconds: u32,
    connections: u32,
}

/// What oha measured, and what the gateway used meanwhile.
struct Measurement {
    requests_per_second: Option<f64>,
    p50: Option<Duration>,
    p99: Option<Duration>,
    p999: Option<Duration>,
    statuses: String,
    cpu: Option<f64>,
    peak_rss: u64,
}

pub async fn run(ctx: &Context) -> anyhow::Result<Vec<Section>> {
    let oha = which("oha").context("oha is missing: make bench-tools installs it")?;
    eprintln!("[bench] intake: starting a private Kafka broker");
    let stack = Stack::builder("bench-intake")
        .kafka_only()
        .start()
        .await
        .context("starting the local Kafka broker (make e2e-tools builds it)")?;
    let measured = measure(ctx, &stack, &oha).await;
    stack.stop().await.context("stopping the local broker")?;
    measured
}

async fn measure(ctx: &Context, stack: &Stack, oha: &Path) -> anyhow::Result<Vec<Section>> {
    let bootstrap = stack.kafka_bootstrap()?.to_owned();
    let work_dir = stack.work_dir().join("bench-intake");
    std::fs::create_dir_all(&work_dir)?;
    let (orders, changes) = ("bench.intake.orders", "bench.intake.changes");
    create_topics(&bootstrap, &[(orders, PARTITIONS), (changes, 1)])?;
    let seconds = if ctx.quick { 3 } else { 10 };
    let loads = [
        Load {
            name: "paced at the target",
            rate: Some(TARGET_RATE),
            seconds,
            connections: 64,
        },
        Load {
            name: "as fast as it answers",
            rate: None,
            seconds,
            connections: 64,
        },
    ];
    // oha picks a body line at random for each request: four times as many distinct orders as
    // requests at the target rate keeps most of them first submissions (the others are answered
    // from the idempotency ledger without producing; the report says how many).
    let lines = 4 * TARGET_RATE as usize * seconds as usize;
    let bodies = work_dir.join("orders.jsonl");
    write_bodies(&bodies, lines)?;
    let gateway_binary = std::env::current_exe()?.with_file_name("orderpipe-worker");
    ensure!(
        gateway_binary.exists(),
        "{} is missing: make bench builds it",
        gateway_binary.display()
    );
    let api = free_port()?;
    let metrics = free_port()?;
    let mut command = Command::new(&gateway_binary);
    command
        .arg("intake")
        .env("ORDERPIPE_PIPELINE", "bench")
        .env("ORDERPIPE_KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("ORDERPIPE_INTAKE_ORDERS_TOPIC", orders)
        .env("ORDERPIPE_INTAKE_STATUS_TOPIC", changes)
        .env("ORDERPIPE_INTAKE_PORT", api.to_string())
        .env("ORDERPIPE_METRICS_PORT", metrics.to_string())
        .env("ORDERPIPE_INTAKE_TOKENS", TOKEN)
        .env("RUST_LOG", "warn");
    let mut gateway = Measured::spawn("intake gateway", command, &work_dir.join("gateway.log"))?;
    let client = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{metrics}/readyz");
    wait_until("the gateway to be ready", Duration::from_secs(60), || {
        let (client, ready) = (client.clone(), ready.clone());
        async move {
            let response = client.get(&ready).send().await.ok()?;
            response.status().is_success().then_some(())
        }
    })
    .await?;

    let url = format!("http://127.0.0.1:{api}/v1/orders");
    // Unmeasured: the producer's id, the partitions' leaders and oha's connections are set up here,
    // not inside the paced run's percentiles.
    let warm_up = Load {
        name: "warm-up",
        rate: Some(TARGET_RATE),
        seconds: 2,
        connections: loads[0].connections,
    };
    oha_run(oha, &url, &bodies, &warm_up, &gateway)?;
    let mut table = Table::new(&[
        "load",
        "POST/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "answers",
        "gateway CPU (cores)",
        "gateway peak RSS MiB",
    ]);
    let mut notes = Vec::new();
    for load in &loads {
        eprintln!("[bench] intake: {} for {} s", load.name, load.seconds);
        gateway.ensure_running()?;
        let result = oha_run(oha, &url, &bodies, load, &gateway)?;
        let verdict = match (load.rate, result.requests_per_second, result.p99) {
            (Some(_), Some(rate), Some(p99)) => format!(
                "{} POST/s with p99 {} ms (target >= {TARGET_RATE} with p99 <= {} ms: {})",
                whole(Some(rate)),
                millis(Some(p99)),
                TARGET_P99.as_millis(),
                if rate >= f64::from(TARGET_RATE) * 0.98 && p99 <= TARGET_P99 {
                    "met"
                } else {
                    "NOT met"
                }
            ),
            _ => String::new(),
        };
        if !verdict.is_empty() {
            notes.push(verdict);
        }
        table.row(vec![
            load.name.to_owned(),
            whole(result.requests_per_second),
            millis(result.p50),
            millis(result.p99),
            millis(result.p999),
            result.statuses,
            result
                .cpu
                .map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.2}")),
            (result.peak_rss / (1024 * 1024)).to_string(),
        ]);
    }
    let records = read_all(&bootstrap, orders, Isolation::ReadCommitted)?.len();
    notes.extend([
        format!(
            "{} ({} connections, HTTP/1.1 keep-alive, after a 2 s unmeasured warm-up at the target \
             rate; the paced run with --latency-correction) POSTs a valid order (mean ~1 KiB) drawn \
             at random from {lines} distinct ones, with a bearer token, to a release gateway with \
             default settings producing to {PARTITIONS} partitions on a private one-broker stack. \
             Every 202 waited for the broker's acknowledgement (idempotent producer, acks=all).",
            oha_version(oha),
            loads[0].connections
        ),
        format!(
            "{records} records in the orders topic after all runs: the distinct orders that got \
             a 202; the other 202s were repeats answered from the idempotency ledger (validated, \
             not produced again), the 409s repeats that arrived while the same order waited for \
             the broker (request_in_flight). \"aborted due to deadline\" are requests still open \
             when oha's duration ended."
        ),
        "Latency is oha's, per request, client side. oha, the gateway and the broker share the \
         machine's cores."
            .to_owned(),
    ]);
    Ok(vec![Section {
        title: "Intake gateway: POST /v1/orders under oha".to_owned(),
        table,
        notes,
    }])
}

/// `count` distinct valid orders, one compact JSON document per line.
fn write_bodies(path: &Path, count: usize) -> anyhow::Result<()> {
    let mut generator = OrderGenerator::new(19, GenConfig::default());
    let mut text = String::new();
    for _ in 0..count {
        text.push_str(&serde_json::to_string(&generator.valid_order())?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn oha_run(
    oha: &Path,
    url: &str,
    bodies: &Path,
    load: &Load,
    gateway: &Measured,
) -> anyhow::Result<Measurement> {
    let mut command = Command::new(oha);
    command
        .args(["--no-tui", "--output-format", "json", "-m", "POST"])
        .args(["-T", "application/json"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg("-Z")
        .arg(bodies)
        .args(["-c", &load.connections.to_string()])
        .args(["-z", &format!("{}s", load.seconds)]);
    if let Some(rate) = load.rate {
        // Latency from each request's scheduled start, so a stall is not hidden by requests the
        // stall kept from being sent (coordinated omission).
        command
            .args(["-q", &rate.to_string()])
            .arg("--latency-correction");
    }
    command.arg(url);
    let before = gateway.cpu()?;
    let output = command.output().context("running oha")?;
    let after = gateway.cpu()?;
    ensure!(
        output.status.success(),
        "oha failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).context("oha's JSON report")?;
    let seconds = |value: &Value| value.as_f64().map(Duration::from_secs_f64);
    let percentiles = &report["latencyPercentiles"];
    let statuses = report["statusCodeDistribution"]
        .as_object()
        .map(|codes| {
            codes
                .iter()
                .map(|(code, count)| format!("{code}: {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let errors = report["errorDistribution"]
        .as_object()
        .filter(|errors| !errors.is_empty())
        .map(|errors| format!("; errors {}", Value::Object(errors.clone())))
        .unwrap_or_default();
    Ok(Measurement {
        requests_per_second: report["summary"]["requestsPerSec"].as_f64(),
        p50: seconds(&percentiles["p50"]),
        p99: seconds(&percentiles["p99"]),
        p999: seconds(&percentiles["p99.9"]),
        statuses: format!("{statuses}{errors}"),
        cpu: cpu_share(before, after),
        peak_rss: gateway.peak_rss()?,
    })
}

fn oha_version(oha: &Path) -> String {
    Command::new(oha)
        .arg("--version")
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".to_owned())
}

/// `name` on the PATH, or in cargo's bin directory (where `cargo install` puts it).
fn which(name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"));
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}
