//! Operator benchmarks: apply-to-Ready for 1, 100 and 1,000 pipelines, RSS, idle-resync API
//! requests, reconcile latency.
//!
//! One private stack (real apiserver, controller-manager, scheduler, kwok, Kafka); per size a fresh
//! namespace and a fresh release operator process watching only it, authenticating as the shipped
//! RBAC's ServiceAccount (what it may do is what it may do deployed), so each row's memory and
//! latency belong to that size alone. Ready is read from a watch on the pipelines, never by polling
//! with sleeps. This module drives the run; the numbers come from the pure functions in `scrape`.

mod floor;
mod process;
mod scrape;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use orderpipe_api::OrderPipeline;
use orderpipe_e2e::deployed::operator_identity_in;
use orderpipe_stack::{Stack, wait_until};
use serde_json::{Value, json};

use crate::Context;
use crate::report::{Section, Table};
use process::{Memory, OperatorProcess};
use scrape::histogram_quantile;

/// Pipelines applied at once: enough to keep the apiserver busy, few enough not to queue in it.
const APPLY_CONCURRENCY: usize = 16;
/// Resync period the operator runs with, short enough to observe one idle pass per size.
const RESYNC: Duration = Duration::from_secs(20);
/// Budget for one size's apply-to-Ready, per pipeline on top of a base.
const READY_BASE: Duration = Duration::from_secs(60);
const READY_PER_PIPELINE: Duration = Duration::from_millis(300);
/// Reconcile durations as the operator exports them.
const RECONCILE_HISTOGRAM: &str = "orderpipe_operator_reconcile_duration_seconds";
const RECONCILES: &str = "orderpipe_operator_reconciles_total";
const API_REQUESTS: &str = "orderpipe_operator_api_requests_total";
const WRITE_VERBS: [&str; 4] = ["post", "put", "patch", "delete"];
const MIB: f64 = 1024.0 * 1024.0;
/// The benchmark stack's controller-manager and scheduler client rate (their defaults: 20, 50).
const CONTROLLER_API_QPS: u32 = 200;
/// The stage image the operator is told to use; kwok runs no container, so it never pulls.
const WORKER_IMAGE: &str = "orderpipe/orderpipe-worker:bench";

pub async fn run(ctx: &Context) -> anyhow::Result<Vec<Section>> {
    let sizes: &[usize] = match (&ctx.pipelines[..], ctx.quick) {
        ([], true) => &[1, 20],
        ([], false) => &[1, 100, 1000],
        (chosen, _) => chosen,
    };
    // Other work on a shared machine changes every number here; the report says how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("[bench] operator: starting a private stack");
    // The stack's kube-controller-manager and scheduler at their default rate limits turn about
    // 3-4 new Deployments a second into ReplicaSets and pods: the wall of apply -> Ready at 1,000
    // pipelines, not the operator's. A cluster's own limits are its administrator's.
    let stack = Stack::builder("bench-operator")
        .controller_api_qps(CONTROLLER_API_QPS)
        .start()
        .await
        .context("starting the benchmark stack")?;
    let result = run_sizes(&stack, sizes).await;
    stack.stop().await.context("stopping the benchmark stack")?;
    let rows = result?;
    Ok(vec![section(&rows, load.trim())])
}

async fn run_sizes(stack: &Stack, sizes: &[usize]) -> anyhow::Result<Vec<Row>> {
    let client = stack.kube_client()?;
    let kubeconfig = stack.kubeconfig().context("the stack has no kubeconfig")?;
    let bootstrap = stack.kafka_bootstrap()?.to_owned();
    let mut rows = Vec::new();
    for &size in sizes {
        let namespace = format!("bench-{size}");
        create_namespace(&client, &namespace).await?;
        // The ClusterRole and its binding go with the private stack.
        let (identity, _cluster_rbac) = operator_identity_in(&client, kubeconfig, &namespace)
            .await
            .context("binding the shipped RBAC")?;
        let log = stack.work_dir().join(format!("operator-{size}.log"));
        let operator = OperatorProcess::start(&identity, &namespace, RESYNC, &log).await?;
        eprintln!(
            "[bench] operator pid {} watching {namespace}, log {}",
            operator.pid(),
            log.display()
        );
        let row = measure(&client, &operator, &namespace, &bootstrap, size)
            .await
            .with_context(|| format!("{size} pipelines (operator log {})", log.display()))?;
        operator.stop().await?;
        // After the operator's row, so the platform has that row's objects too: its floor is
        // measured on a cluster at least as full.
        let floor_namespace = format!("floor-{size}");
        create_namespace(&client, &floor_namespace).await?;
        eprintln!("[bench] platform floor: {size} pipelines' objects without the operator");
        let floor = floor::measure(
            &client,
            &floor_namespace,
            &bootstrap,
            size,
            ready_budget(size)?,
        )
        .await
        .with_context(|| format!("the platform floor at {size} pipelines"))?;
        rows.push(Row { floor, ..row });
    }
    Ok(rows)
}

/// One row of the report.
#[derive(Debug)]
struct Row {
    pipelines: usize,
    idle: Memory,
    ready: ReadyOutcome,
    loaded: Memory,
    reconcile_p50: Option<f64>,
    reconcile_p99: Option<f64>,
    resync: Option<ResyncRequests>,
    /// The same objects without the operator, to every Deployment ready (`floor`).
    floor: Option<Duration>,
}

#[derive(Debug)]
enum ReadyOutcome {
    AllReady(Duration),
    TimedOut { ready: usize, after: Duration },
}

/// Kubernetes API requests of the operator during one idle resync pass.
#[derive(Debug)]
struct ResyncRequests {
    reconciles: f64,
    /// p99 of the reconciles in the window: steady state, nothing to change.
    reconcile_p99: Option<f64>,
    reads: f64,
    writes: f64,
    took: Duration,
}

async fn measure(
    client: &Client,
    operator: &OperatorProcess,
    namespace: &str,
    bootstrap: &str,
    size: usize,
) -> anyhow::Result<Row> {
    let idle = operator.memory()?;
    let api: Api<OrderPipeline> = Api::namespaced(client.clone(), namespace);
    let ready = apply_and_wait_ready(&api, namespace, bootstrap, size, ready_budget(size)?).await?;
    let loaded = operator.memory()?;
    let resync = match ready {
        ReadyOutcome::AllReady(_) => Some(idle_resync(operator, size).await?),
        ReadyOutcome::TimedOut { .. } => None,
    };
    let scrape = operator.scrape().await?;
    let buckets = scrape.buckets(RECONCILE_HISTOGRAM);
    Ok(Row {
        pipelines: size,
        idle,
        ready,
        loaded,
        reconcile_p50: histogram_quantile(0.5, &buckets),
        reconcile_p99: histogram_quantile(0.99, &buckets),
        resync,
        floor: None,
    })
}

/// How long one size's apply -> Ready may take, per pipeline on top of a base.
fn ready_budget(size: usize) -> anyhow::Result<Duration> {
    Ok(READY_BASE + READY_PER_PIPELINE * u32::try_from(size)?)
}

/// Applies `size` pipelines with bounded concurrency and waits, on a watch, until every one is
/// Ready; the clock starts just before the first apply.
async fn apply_and_wait_ready(
    api: &Api<OrderPipeline>,
    namespace: &str,
    bootstrap: &str,
    size: usize,
    budget: Duration,
) -> anyhow::Result<ReadyOutcome> {
    // The watch lists before the first apply, so no transition to Ready can be missed.
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    let start = Instant::now();
    let apply = futures::stream::iter(0..size)
        .map(|i| {
            let object = pipeline(namespace, &format!("p{i}"), bootstrap);
            async move {
                api.patch(
                    &format!("p{i}"),
                    &PatchParams::apply("orderpipe-bench").force(),
                    &Patch::Apply(&object),
                )
                .await
                .with_context(|| format!("applying pipeline p{i}"))
            }
        })
        .buffer_unordered(APPLY_CONCURRENCY)
        .try_for_each(|_| async { Ok(()) });
    let mut apply = std::pin::pin!(apply);
    let mut applied = false;
    let mut ready = HashSet::new();
    let mut last_progress = Instant::now();
    let deadline = tokio::time::sleep(budget);
    tokio::pin!(deadline);
    while ready.len() < size {
        tokio::select! {
            result = &mut apply, if !applied => {
                result?;
                applied = true;
                eprintln!("[bench] {size} pipelines applied after {:.1} s", start.elapsed().as_secs_f64());
            }
            event = events.try_next() => {
                let pipeline = event?.context("the pipeline watch ended")?;
                if is_ready(&pipeline) {
                    ready.insert(pipeline.name_any());
                }
                if last_progress.elapsed() >= Duration::from_secs(5) {
                    eprintln!("[bench] {}/{size} Ready after {:.1} s", ready.len(), start.elapsed().as_secs_f64());
                    last_progress = Instant::now();
                }
            }
            () = &mut deadline => {
                eprintln!("[bench] timed out: {}/{size} Ready after {:.1} s", ready.len(), budget.as_secs_f64());
                return Ok(ReadyOutcome::TimedOut { ready: ready.len(), after: budget });
            }
        }
    }
    let took = start.elapsed();
    eprintln!(
        "[bench] {size}/{size} Ready after {:.1} s",
        took.as_secs_f64()
    );
    Ok(ReadyOutcome::AllReady(took))
}

/// Counts the API requests the operator makes while every pipeline is reconciled once more with
/// nothing to change. The window starts when all are Ready and ends once a resync period has passed
/// (each pipeline's last reconcile before the window requeues within it) and at least as many
/// reconciles as pipelines have completed.
async fn idle_resync(operator: &OperatorProcess, size: usize) -> anyhow::Result<ResyncRequests> {
    let before = operator.scrape().await?;
    let start = Instant::now();
    let pipelines = size as f64;
    let after = wait_until(
        "one idle resync of every pipeline",
        RESYNC * 2 + READY_PER_PIPELINE * u32::try_from(size)?,
        || async {
            let now = operator.scrape().await.ok()?;
            let reconciles = now.delta(&before, RECONCILES, &[]);
            (start.elapsed() >= RESYNC && reconciles >= pipelines).then_some(now)
        },
    )
    .await?;
    let count = |verbs: &[&str]| -> f64 {
        verbs
            .iter()
            .map(|verb| after.delta(&before, API_REQUESTS, &[&format!("verb=\"{verb}\"")]))
            .sum()
    };
    Ok(ResyncRequests {
        reconciles: after.delta(&before, RECONCILES, &[]),
        reconcile_p99: histogram_quantile(0.99, &after.buckets_since(&before, RECONCILE_HISTOGRAM)),
        reads: count(&["read", "watch"]),
        writes: count(&WRITE_VERBS),
        took: start.elapsed(),
    })
}

fn is_ready(pipeline: &OrderPipeline) -> bool {
    pipeline.status.as_ref().is_some_and(|status| {
        status.observed_generation == pipeline.metadata.generation
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The smallest pipeline: one stage, one replica, four 1-partition topics of its own.
fn pipeline(namespace: &str, name: &str, bootstrap: &str) -> Value {
    let prefix = format!("{namespace}.{name}");
    let topic = |suffix: &str| format!("{prefix}.{suffix}");
    let pipeline = OrderPipeline::test(name)
        .bootstrap(bootstrap)
        .topic_prefix(&prefix)
        .partitions(&topic("orders"), 1)
        .partitions(&topic("validated"), 1);
    serde_json::to_value(pipeline).expect("fixture serializes")
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name },
    });
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("orderpipe-bench").force(),
            &Patch::Apply(&namespace),
        )
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

fn section(rows: &[Row], load: &str) -> Section {
    let mut table = Table::new(&[
        "pipelines",
        "apply → all Ready",
        "Ready/s",
        "platform floor",
        "RSS idle",
        "RSS all Ready",
        "peak RSS",
        "reconcile p50 / p99",
        "idle resync: reconciles, reads, writes",
        "idle resync reconcile p99",
    ]);
    for row in rows {
        table.row(cells(row));
    }
    Section {
        title: "Operator".into(),
        table,
        notes: vec![
            "Targets: idle RSS <= 20 MiB; <= 64 MiB and all Ready within 60 s at 1,000 pipelines; 0 writes per idle resync.".into(),
            format!("Each size: a fresh namespace and a fresh release operator process (--watch-namespace, no leader election, authenticating as a ServiceAccount bound to the shipped config/rbac) on one private stack (kube-apiserver, controller-manager and scheduler with a client rate of {CONTROLLER_API_QPS} requests/s instead of their defaults 20 and 50, kwok node, KRaft Kafka); earlier sizes' objects stay in the cluster."),
            format!("Pipeline: one validate stage, 1 replica (a kwok pod, Ready once scheduled), four 1-partition topics of its own; applied {APPLY_CONCURRENCY} at a time with server-side apply. Ready = condition Ready True at the current generation, seen on a watch; the clock starts at the first apply."),
            "Platform floor: after each size, the same number of the same pipelines in a namespace of their own with no operator watching it: each pipeline applied, its topics created through the operator's Kafka admin and its children written by the operator's own rendering, plan and writer (no status, Events, finalizer or re-reconciles), timed from the first apply until every stage Deployment has a ready replica (what the operator's Ready waits for). It is what this box's apiserver, controller-manager, scheduler, kwok and Kafka need for those objects alone: apply -> all Ready minus the floor is the operator's whole overhead.".into(),
            "RSS: VmRSS of the operator from /proc once its watches are open (idle) and when all are Ready; peak = VmHWM over the whole run of that size.".into(),
            "Reconcile p50 / p99: from the operator's orderpipe_operator_reconcile_duration_seconds histogram (buckets 1 ms x 2^k, linear interpolation inside a bucket), over every reconcile of that run including the idle resync; 32768 ms is the last finite bucket and means \"that or more\".".into(),
            format!("Idle resync: the operator runs with --resync-seconds {}; the window runs from all Ready until one resync period has passed (so every pipeline's last reconcile has come due) and the operator has completed at least as many reconciles as there are pipelines; the row takes the difference of its client-side request counter (orderpipe_operator_api_requests_total, a layer on its kube client counting every request by verb); reads include re-opened watches; writes = POST+PUT+PATCH+DELETE. Its reconcile p99 is the same histogram's difference over the window: the steady state, where nothing changes.", RESYNC.as_secs()),
            format!("Load average (/proc/loadavg) when the section started: {load}; the machine is shared, so other builds compete for the same cores."),
        ],
    }
}

fn cells(row: &Row) -> Vec<String> {
    let mib = |bytes: u64| {
        let value = bytes as f64 / MIB;
        format!("{value:.1} MiB")
    };
    let ms = |seconds: Option<f64>| seconds.map_or("-".into(), |s| format!("{:.1}", s * 1000.0));
    let (ready, rate) = match row.ready {
        ReadyOutcome::AllReady(took) => (
            format!("{:.1} s", took.as_secs_f64()),
            format!("{:.1}", row.pipelines as f64 / took.as_secs_f64()),
        ),
        ReadyOutcome::TimedOut { ready, after } => (
            format!(
                "timed out: {ready}/{} after {:.0} s",
                row.pipelines,
                after.as_secs_f64()
            ),
            "-".into(),
        ),
    };
    let resync = row.resync.as_ref().map_or("-".into(), |r| {
        format!(
            "{:.0} in {:.1} s: {:.0} reads, {:.0} writes",
            r.reconciles,
            r.took.as_secs_f64(),
            r.reads,
            r.writes
        )
    });
    vec![
        row.pipelines.to_string(),
        ready,
        rate,
        row.floor.map_or("timed out".into(), |took| {
            format!("{:.1} s", took.as_secs_f64())
        }),
        mib(row.idle.rss),
        mib(row.loaded.rss),
        mib(row.loaded.peak),
        format!("{} / {} ms", ms(row.reconcile_p50), ms(row.reconcile_p99)),
        resync,
        row.resync
            .as_ref()
            .map_or("-".into(), |r| format!("{} ms", ms(r.reconcile_p99))),
    ]
}
