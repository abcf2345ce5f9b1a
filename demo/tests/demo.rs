//! The demo path, headless, on the shared stack: the checkout sample run by the real operator with
//! its workers and its intake gateway as local processes (node agent), a load with invalid,
//! garbage and duplicate orders POSTed to the gateway, and the books checked after the backlog
//! drains, and every accepted order's status read back through the gateway (GET); then the status stage scaled 1 -> 3 -> 1
//! through the OrderPipeline's spec while orders keep flowing, with the process count following
//! and nothing lost or duplicated. And `SCENARIO=bad-release`: validate as a canary stage, the
//! faulty worker released to it under load, followed to its abort as the demo follows it, and the
//! books balanced with what the faulty canary dead-lettered; after it, every panel of the system
//! dashboard (`config/monitoring/grafana/orderpipe-system.json`: the Rollout and its analysis, the
//! broker, the workloads and autoscaler, the node) returns data from the stack's Prometheus,
//! whose system targets are listed in the log. Needs `make test-e2e` (a stack with
//! the Argo Rollouts controller and Prometheus; and the operator and worker binaries, which
//! `cargo test --workspace` builds).

use std::time::Duration;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use orderpipe_demo::{Binaries, Demo, DemoConfig, LoadOptions, Phase, ReleaseTimeline, Tally};
use orderpipe_node_agent::FAULTY_WORKER_IMAGE;
use orderpipe_stack::prometheus;
use orderpipe_stack::{SharedStack, TestNamespace, unique_name, wait_until};

const READY: Duration = Duration::from_secs(120);
const DRAIN: Duration = Duration::from_secs(180);
const SCALE: Duration = Duration::from_secs(120);
/// From the image change to the stable version alone again: the canary's pod, its first
/// measurement, the abort, a stable pod back.
const RELEASE: Duration = Duration::from_secs(180);

fn load(count: Option<u64>, seed: u64) -> LoadOptions {
    LoadOptions {
        rate: 300,
        count,
        invalid_share: 0.03,
        garbage_share: 0.01,
        duplicate_share: 0.01,
        seed,
    }
}

/// Once the books balance, the status stage has committed every order's `Validated` change: the
/// gateway's view (fed from the order-status topic) must show each, from every replica.
async fn every_order_reads_validated(demo: &Demo, sent: &Tally) -> anyhow::Result<()> {
    let gateway = demo.gateway().await?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    for key in &sent.valid_keys {
        let id = String::from_utf8(key.clone())?;
        for url in &gateway.urls {
            let read = format!("{url}/v1/orders/{id}");
            // Read-your-writes within 1 s of the commit; the drain already waited for the commit.
            let body = wait_until(
                &format!("GET {read} shows Validated"),
                Duration::from_secs(1),
                || async {
                    let response = client
                        .get(&read)
                        .bearer_auth(&gateway.token)
                        .send()
                        .await
                        .ok()?;
                    let body: serde_json::Value = response.json().await.ok()?;
                    (body["state"] == "Validated").then_some(body)
                },
            )
            .await?;
            anyhow::ensure!(body["version"] == 1, "{read}: {body}");
        }
    }
    eprintln!(
        "measured: {} orders read back Validated from each of {} gateway replicas in {:?}",
        sent.valid_keys.len(),
        gateway.urls.len(),
        started.elapsed()
    );
    Ok(())
}

/// The demo in a namespace of its own on the shared stack (its own node agent and topic prefix;
/// `canary`: validate as a canary stage), Ready. Operator and worker logs go to the returned
/// directory, kept when the test fails.
async fn ready_demo(prefix: &str, canary: bool) -> anyhow::Result<(TestNamespace, PathBuf, Demo)> {
    let stack = SharedStack::get()?;
    let ns = stack.namespace(prefix).await?;
    let work_dir = std::env::temp_dir().join(ns.name());
    eprintln!("demo: operator and worker logs in {}", work_dir.display());
    let config = DemoConfig {
        namespace: ns.name().to_owned(),
        topic_prefix: format!("{}.", ns.name()),
        node_name: unique_name("demo-node"),
        work_dir: work_dir.clone(),
        kubeconfig: stack.kubeconfig()?.to_path_buf(),
        bootstrap: stack.kafka_bootstrap()?.to_owned(),
        prometheus_url: stack.prometheus_url().ok().map(str::to_owned),
        canary,
        binaries: Binaries::next_to_current_exe()?,
    };
    let mut demo = Demo::start(ns.client().clone(), config, |step| {
        eprintln!("demo: starting {step}");
    })
    .await?;
    demo.wait_ready(READY).await?;
    Ok((ns, work_dir, demo))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local stack: make test-e2e"]
async fn the_demo_balances_its_books_and_scaling_a_stage_loses_and_duplicates_nothing()
-> anyhow::Result<()> {
    let (ns, work_dir, mut demo) = ready_demo("demo", false).await?;

    // The demo's load, short: 2,000 orders at 300/s.
    let first = demo.start_load(load(Some(2_000), 1)).await?;
    wait_until("2,000 orders are sent", Duration::from_secs(60), || async {
        first.is_finished().then_some(())
    })
    .await?;
    let mut sent = first.finish().await?;
    assert_eq!(sent.posted, 2_000);
    let books = demo.drain(&sent, DRAIN).await?;
    eprintln!("books after the first load:\n{books}");
    assert!(books.problems().is_empty(), "{:#?}", books.problems());
    every_order_reads_validated(&demo, &sent).await?;

    // Scaling with orders flowing: the load runs until the stage is back at one replica.
    let second = demo.start_load(load(None, 2)).await?;
    for replicas in [3, 1] {
        demo.scale("status", replicas, SCALE).await?;
        assert_eq!(
            demo.processes("status").await?,
            usize::try_from(replicas)?,
            "worker processes of the status stage"
        );
        assert!(!second.is_finished(), "the load flows during the scaling");
    }
    let during = second.sent();
    sent.merge(second.finish().await?);
    eprintln!(
        "{during} orders posted while scaling status 1 -> 3 -> 1; {} in total",
        sent.posted
    );
    let books = demo.drain(&sent, DRAIN).await?;
    eprintln!("books after scaling:\n{books}");
    assert!(books.problems().is_empty(), "{:#?}", books.problems());

    demo.stop().await?;
    ns.cleanup().await?;
    std::fs::remove_dir_all(&work_dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_faulty_release_is_aborted_its_books_balance_and_the_system_dashboard_shows_it()
-> anyhow::Result<()> {
    let (ns, work_dir, mut demo) = ready_demo("demo-release", true).await?;
    let orders = demo.start_load(load(None, 3)).await?;

    // Observed as the demo's view observes it: a snapshot of the pipeline, its Rollout and the
    // AnalysisRun judging the new version, fed to the release's timeline.
    let observer = tokio::sync::Mutex::new(demo.observer()?);
    let timeline = Mutex::new(ReleaseTimeline::new());
    let observe = || async {
        let snapshot = observer.lock().await.snapshot().await.ok()?;
        let view = snapshot.release?;
        let mut timeline = timeline.lock().ok()?;
        timeline.observe(&view.rollout, view.analysis.as_ref(), Instant::now());
        Some((view, timeline.clone()))
    };
    let stable = wait_until("validate's Rollout Healthy on 2 pods", READY, || async {
        let (view, _) = observe().await?;
        let stable = view.rollout.stable.clone()?;
        view.rollout.fully_on(&stable).then_some(stable)
    })
    .await?;
    demo.release(FAULTY_WORKER_IMAGE).await?;
    timeline
        .lock()
        .map_err(|_| anyhow::anyhow!("timeline lock"))?
        .released(Some(stable), Instant::now());
    let settled = wait_until(
        "the faulty release decided and settled",
        RELEASE,
        || async {
            let (_, timeline) = observe().await?;
            timeline.settled().then_some(timeline)
        },
    )
    .await?;
    eprintln!("release: {settled}");
    assert_eq!(settled.phase(), Phase::Aborted, "{settled}");
    assert!(
        settled
            .verdict
            .as_deref()
            .is_some_and(|v| v.ends_with("Failed")),
        "{settled}"
    );

    let sent = orders.finish().await?;
    let books = demo.drain(&sent, DRAIN).await?;
    eprintln!("books after the faulty release:\n{books}");
    assert!(books.problems().is_empty(), "{:#?}", books.problems());
    assert!(
        books.faulted.valid_copies > 0 && books.faulted.unknown == 0,
        "the faulty canary's dead letters: {:?}",
        books.faulted
    );
    system_dashboard_has_data(&ns).await?;

    demo.stop().await?;
    ns.cleanup().await?;
    std::fs::remove_dir_all(&work_dir)?;
    Ok(())
}

/// The jobs of the system around the pipelines, as the stack's Prometheus scrapes them.
const SYSTEM_JOBS: [&str; 4] = [
    "kafka",
    "argo-rollouts-metrics",
    "kube-state-metrics",
    "node-exporter",
];

/// Prometheus scrapes every system target, and every panel of the system dashboard, for the
/// demo's namespace, returns data.
async fn system_dashboard_has_data(ns: &TestNamespace) -> anyhow::Result<()> {
    let stack = SharedStack::get()?;
    let url = stack.prometheus_url()?;
    let targets = prometheus::wait_for_targets(url, "every system target up", READY, |targets| {
        SYSTEM_JOBS.iter().all(|job| {
            targets
                .iter()
                .any(|t| t.labels.get("job").map(String::as_str) == Some(job) && t.health == "up")
        })
    })
    .await?;
    for target in targets.iter().filter(|t| {
        t.labels
            .get("job")
            .is_some_and(|job| SYSTEM_JOBS.contains(&job.as_str()))
    }) {
        eprintln!(
            "measured: system target {} {} (job {})",
            target.scrape_url,
            target.health,
            target.labels.get("job").map_or("", String::as_str)
        );
    }
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/monitoring/grafana/orderpipe-system.json");
    prometheus::every_panel_returns_data(url, &dashboard, &[("namespace", ns.name())], READY)
        .await?;
    Ok(())
}
