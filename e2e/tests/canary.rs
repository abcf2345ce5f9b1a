//! Canary releases of a stage of real worker processes, judged by a real Prometheus: the stack's
//! Prometheus discovers the worker pods a node agent runs (its active targets are checked against
//! the running pods), the Argo Rollouts controller runs the operator's AnalysisTemplate against it,
//! and the analysis compares the canary pods' dead-letter share with the stable pods'.
//!
//! - A sound release (`orderpipe/orderpipe-worker:v2`, the same worker binary) is promoted step by
//!   step, its AnalysisRun Successful.
//! - A bad release (`orderpipe/orderpipe-worker:faulty`, which the node agent here maps to the test
//!   build `orderpipe-worker-faulty`: it dead-letters every record) is aborted by its AnalysisRun,
//!   and the stable version goes on processing.
//!
//! Through both, orders flow the whole time and the books balance: every order produced is exactly
//! once in the validated output or, for the bad canary's share, the dead-letter topic (read
//! committed). Needs `make test-e2e` (a stack with `--argo-rollouts` and Prometheus) and the worker
//! binaries (`cargo build -p orderpipe-worker`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use orderpipe_api::OrderPipeline;
use orderpipe_e2e::load::SteadyProducer;
use orderpipe_e2e::{OperatorTest, apply_pipeline, on_node_agent, wait_ready};
use orderpipe_node_agent::{FAULTY_WORKER_IMAGE, NodeAgent, NodeAgentConfig};
use orderpipe_stack::argo::{self, AnalysisState, replica_count};
use orderpipe_stack::prometheus::{self, Target};
use orderpipe_stack::tools;
use orderpipe_stack::{
    Isolation, Record, TestNamespace, caught_up, read_all, unique_name, wait_until,
};
use serde_json::{Value, json};

const PARTITIONS: i32 = 4;
const REPLICAS: i32 = 2;
/// A sound release: a tag the node agent runs as the worker (the bad one is `FAULTY_WORKER_IMAGE`).
const SOUND_RELEASE: &str = "orderpipe/orderpipe-worker:v2";
/// Orders per second while a release runs: enough for every pod to see records in each scrape.
const RATE: u64 = 40;
/// Measurements every 10 s, and a pause long enough for several: with `failureLimit: 0` one
/// failed measurement aborts the release.
const ANALYSIS_INTERVAL: &str = "10s";
const PAUSE: &str = "45s";
/// From the image change to a promotion: the canary pod starts, the pause, the last step.
const RELEASE: Duration = Duration::from_secs(180);
/// Discovery (pod watch), then the first scrape at the 5 s interval.
const TARGETS: Duration = Duration::from_secs(60);

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_sound_canary_is_promoted_step_by_step_with_balanced_books() -> anyhow::Result<()> {
    release(SOUND_RELEASE, Verdict::Promoted).await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_faulty_canary_is_aborted_by_its_analysis_and_stable_keeps_processing()
-> anyhow::Result<()> {
    release(FAULTY_WORKER_IMAGE, Verdict::Aborted).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Promoted,
    Aborted,
}

/// A stage of real workers on a node agent of the test's own; releases `image` to it while orders
/// flow; checks the verdict, the targets and the books.
async fn release(image: &str, verdict: Verdict) -> anyhow::Result<()> {
    let worker = tools::built_binary("orderpipe-worker")?;
    let faulty = tools::built_binary("orderpipe-worker-faulty")?;
    let node = unique_name("canary-node");
    let OperatorTest {
        stack,
        bootstrap,
        ns,
        operator,
    } = OperatorTest::start_placed("canary", on_node_agent(&node)).await?;
    let prometheus_url = stack.prometheus_url()?.to_owned();
    let work = tempfile::tempdir()?;
    let agent = NodeAgent::start(
        ns.client().clone(),
        NodeAgentConfig::new(&node, work.path()).worker_releases(worker, faulty),
    )
    .await?;
    let proven = run_release(&prometheus_url, &bootstrap, &ns, image, verdict).await;
    agent.stop().await?;
    proven?;
    OperatorTest::finish(operator, ns).await
}

async fn run_release(
    prometheus_url: &str,
    bootstrap: &str,
    ns: &TestNamespace,
    image: &str,
    verdict: Verdict,
) -> anyhow::Result<()> {
    let mut spec = serde_json::to_value(
        OrderPipeline::test("shop")
            .bootstrap(bootstrap)
            .topic_prefix(ns.name())
            .partitions(&format!("{}.orders", ns.name()), PARTITIONS)
            .replicas("validate", REPLICAS),
    )?;
    spec["spec"]["stages"][0]["rollout"] = json!({
        "strategy": "Canary",
        "canary": {
            "steps": [{ "setWeight": 50 }, { "pause": { "duration": PAUSE } }],
            "analysis": {
                "interval": ANALYSIS_INTERVAL,
                "failureLimit": 0,
                "maxErrorPercent": 5,
                "maxDeadLetterPercent": 5,
            },
        },
    });
    apply_pipeline(ns, &spec).await?;
    wait_ready(ns, "shop").await?;
    let replicas = usize::try_from(REPLICAS)?;
    let stable = targets_match_pods(prometheus_url, ns, |pods| pods.len() == replicas).await?;
    eprintln!(
        "measured: before the release, Prometheus's active targets = the running pods: {stable:?}"
    );

    let producer = SteadyProducer::start(bootstrap, &format!("{}.orders", ns.name()), RATE);
    let began = Instant::now();
    spec["spec"]["stages"][0]["image"] = json!(image);
    apply_pipeline(ns, &spec).await?;
    let rollouts = argo::rollouts(ns.client().clone(), ns.name());
    let canary = wait_until("the Rollout releasing the new version", RELEASE, || async {
        let rollout = rollouts.get("shop-validate").await.ok()?;
        let status = rollout.data.get("status")?;
        let (stable, latest) = (
            status["stableRS"].as_str()?,
            status["currentPodHash"].as_str()?,
        );
        (stable != latest).then(|| latest.to_owned())
    })
    .await?;
    // A faulty canary is aborted at the analysis's first measurement, within a second of its pod
    // turning available: only the sound one stays (its pause) long enough to be looked at.
    if verdict == Verdict::Promoted {
        during_the_canary(prometheus_url, ns, &canary).await?;
    }
    release_verdict(ns, &canary, verdict, began).await?;
    let replicas = usize::try_from(REPLICAS)?;
    let after = targets_match_pods(prometheus_url, ns, |pods| {
        pods.len() == replicas
            && pods
                .values()
                .all(|hash| (*hash == canary) == (verdict == Verdict::Promoted))
    })
    .await?;
    ensure!(
        after.len() == usize::try_from(REPLICAS)?
            && after
                .values()
                .all(|hash| (*hash == canary) == (verdict == Verdict::Promoted)),
        "targets after the release: {after:?}"
    );
    eprintln!(
        "measured: after the release, Prometheus's active targets = the running pods: {after:?}"
    );

    // The stable version goes on: what is produced until here is processed too.
    let produced = producer.stop().await?;
    balanced_books(bootstrap, ns, &produced, verdict).await
}

/// The canary at 50%: one of the two pods, holding half of the partitions (in the status and in
/// the worker's own gauge), and Prometheus scrapes both versions.
async fn during_the_canary(
    prometheus_url: &str,
    ns: &TestNamespace,
    canary: &str,
) -> anyhow::Result<()> {
    let both = targets_match_pods(prometheus_url, ns, |pods| {
        pods.len() == 2 && pods.values().any(|hash| hash == canary)
    })
    .await?;
    ensure!(
        both.values().any(|hash| hash == canary) && both.len() == 2,
        "targets during the canary: {both:?}"
    );
    eprintln!(
        "measured: during the canary, Prometheus's active targets = the running pods: {both:?}"
    );
    let reported = wait_until(
        "the pipeline status reports the canary's share",
        RELEASE,
        || async {
            let p = ns.api::<OrderPipeline>().get("shop").await.ok()?;
            p.status?.stages.into_iter().next()?.canary
        },
    )
    .await?;
    ensure!(
        (
            reported.weight,
            reported.replicas,
            reported.stable_replicas,
            reported.partitions
        ) == (50, 1, 1, Some(PARTITIONS / 2)),
        "status.stages[0].canary = {reported:?}"
    );
    // The derived share against what the canary's consumer really holds.
    let held = format!(
        r#"sum(orderpipe_assigned_partitions{{namespace="{}",rollouts_pod_template_hash="{canary}"}})"#,
        ns.name()
    );
    wait_until(
        &format!("{held} == {}", PARTITIONS / 2),
        TARGETS,
        || async {
            let samples = prometheus::query(prometheus_url, &held).await.ok()?;
            (samples.first()?.value == f64::from(PARTITIONS / 2)).then_some(())
        },
    )
    .await?;
    eprintln!(
        "measured: status canary {reported:?}; {held} = {}",
        PARTITIONS / 2
    );
    Ok(())
}

/// Waits for the release's AnalysisRun to end and the Rollout to act on it: promoted to stable
/// (`Successful`) or aborted back to the stable pods (`Failed`).
async fn release_verdict(
    ns: &TestNamespace,
    canary: &str,
    verdict: Verdict,
    began: Instant,
) -> anyhow::Result<()> {
    let run = wait_until(
        &format!("the release's AnalysisRun to end ({verdict:?} expected)"),
        RELEASE,
        || async {
            let runs = argo::analysis_runs(ns.client().clone(), ns.name())
                .list(&ListParams::default())
                .await
                .ok()?;
            runs.items
                .into_iter()
                .find(|run| AnalysisState::of(run).ended())
        },
    )
    .await?;
    let phase = run.data.pointer("/status/phase").and_then(Value::as_str);
    let results = run
        .data
        .pointer("/status/metricResults")
        .cloned()
        .unwrap_or_default();
    eprintln!(
        "measured: AnalysisRun {} {phase:?} {:?} after the image change; metric results {results}",
        run.metadata.name.as_deref().unwrap_or_default(),
        began.elapsed()
    );
    let rollouts = argo::rollouts(ns.client().clone(), ns.name());
    let rollout = match verdict {
        Verdict::Promoted => {
            ensure!(
                phase == Some("Successful"),
                "AnalysisRun {phase:?}: {results}"
            );
            wait_until("the new version promoted to stable", RELEASE, || async {
                let rollout = rollouts.get("shop-validate").await.ok()?;
                let status = rollout.data.get("status")?;
                (status["stableRS"] == canary
                    && status["phase"] == "Healthy"
                    && replica_count(status, "updatedReplicas") == REPLICAS)
                    .then_some(rollout)
            })
            .await?
        }
        Verdict::Aborted => {
            ensure!(phase == Some("Failed"), "AnalysisRun {phase:?}: {results}");
            wait_until(
                "the release aborted, every pod of the stable version again",
                RELEASE,
                || async {
                    let rollout = rollouts.get("shop-validate").await.ok()?;
                    let status = rollout.data.get("status")?;
                    (status["abort"] == true
                        && status["stableRS"] != canary
                        && replica_count(status, "availableReplicas") == REPLICAS
                        && replica_count(status, "updatedReplicas") == 0)
                        .then_some(rollout)
                },
            )
            .await?
        }
    };
    eprintln!(
        "measured: rollout {verdict:?} {:?} after the image change; status {}",
        began.elapsed(),
        rollout.data["status"]
    );
    Ok(())
}

/// Waits until the namespace's running pods (pod name → `rollouts-pod-template-hash`) are what
/// `expected` accepts and its `up` targets are exactly those pods with their hashes; returns
/// them. Pods and
/// targets are read together on every attempt: a set of pods taken once can be overtaken by the
/// rollout (a stable pod gone, the canary's not created yet) and then never match.
async fn targets_match_pods(
    prometheus_url: &str,
    ns: &TestNamespace,
    expected: impl Fn(&BTreeMap<String, String>) -> bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let pods = ns.api::<Pod>();
    let running = || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        let settled = list.items.iter().all(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        let pods: BTreeMap<String, String> = list
            .items
            .iter()
            .map(|p| {
                let hash = p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("rollouts-pod-template-hash"))
                    .cloned()
                    .unwrap_or_default();
                (p.metadata.name.clone().unwrap_or_default(), hash)
            })
            .collect();
        (settled && expected(&pods)).then_some(pods)
    };
    let in_namespace = |targets: &[Target]| -> Vec<(String, String, String)> {
        targets
            .iter()
            .filter(|t| t.labels.get("namespace").map(String::as_str) == Some(ns.name()))
            .map(|t| {
                let label = |name: &str| t.labels.get(name).cloned().unwrap_or_default();
                (
                    label("pod"),
                    label("rollouts_pod_template_hash"),
                    t.health.clone(),
                )
            })
            .collect()
    };
    let last = std::sync::Mutex::new((BTreeMap::new(), Vec::new()));
    let matched = wait_until(
        "Prometheus scraping exactly the running pods",
        TARGETS,
        || async {
            let running = running().await?;
            let targets = in_namespace(&prometheus::active_targets(prometheus_url).await.ok()?);
            let up: BTreeMap<String, String> = targets
                .iter()
                .filter(|(_, _, health)| health == "up")
                .map(|(pod, hash, _)| (pod.clone(), hash.clone()))
                .collect();
            let matches = up == running && targets.len() == running.len();
            *last.lock().ok()? = (running.clone(), targets);
            matches.then_some(running)
        },
    )
    .await;
    matched.with_context(|| format!("active targets against running pods; last seen: {last:?}"))
}

/// Waits until the stage has consumed everything, then checks that every order produced is exactly
/// once in the validated output or the dead-letter topic, and dead letters only from the faulty
/// release (reason `fault_injected`).
async fn balanced_books(
    bootstrap: &str,
    ns: &TestNamespace,
    produced: &BTreeSet<Vec<u8>>,
    verdict: Verdict,
) -> anyhow::Result<()> {
    let input = format!("{}.orders", ns.name());
    let group = format!("orderpipe.{}.shop.validate", ns.name());
    wait_until(
        "the stable version consumed every order",
        RELEASE,
        || async {
            let (bootstrap, group, input) = (bootstrap.to_owned(), group.clone(), input.clone());
            let done = tokio::task::spawn_blocking(move || caught_up(&bootstrap, &group, &input));
            done.await.ok()?.ok()?.then_some(())
        },
    )
    .await?;
    let read = |topic: String| {
        let bootstrap = bootstrap.to_owned();
        tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, Isolation::ReadCommitted))
    };
    let validated = read(format!("{}.validated", ns.name())).await??;
    let dead = read(format!("{}.dlq", ns.name())).await??;
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for record in validated.iter().chain(&dead) {
        *seen
            .entry(record.key.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    let lost = produced.iter().filter(|k| !seen.contains_key(*k)).count();
    let foreign = seen.keys().filter(|k| !produced.contains(*k)).count();
    let reasons: BTreeSet<String> = dead.iter().filter_map(reason).collect();
    eprintln!(
        "measured: {} orders produced; {} validated, {} dead-lettered {reasons:?}; {lost} lost, \
         {duplicated} duplicated",
        produced.len(),
        validated.len(),
        dead.len()
    );
    ensure!(
        lost == 0 && duplicated == 0 && foreign == 0,
        "books: {lost} lost, {duplicated} duplicated, {foreign} unknown of {} orders",
        produced.len()
    );
    match verdict {
        Verdict::Promoted => ensure!(dead.is_empty(), "a sound release dead-lettered {reasons:?}"),
        Verdict::Aborted => ensure!(
            !dead.is_empty() && reasons == BTreeSet::from(["fault_injected".to_owned()]),
            "the faulty canary's dead letters: {} with reasons {reasons:?}",
            dead.len()
        ),
    }
    Ok(())
}

fn reason(record: &Record) -> Option<String> {
    record
        .headers
        .iter()
        .find(|(name, _)| name == "orderpipe.error.reason")
        .map(|(_, value)| value.clone())
}
