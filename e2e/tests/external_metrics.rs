//! The operator's external metrics API behind the real kube-apiserver's aggregation layer: the
//! operator serves it in the test process (`external_metrics::run`, as the binary does, from the
//! in-process operator's own lag readings) on a loopback port registered with the apiserver by
//! [`LocalApiService`] (see `stack/README.md`). Proves that the upstream kubectl reads the lag
//! measured in Kafka (and 0 for a drained stage whose input ends in transaction markers), that the
//! API is discoverable, that a request past the apiserver without the front-proxy certificate is
//! refused, that the stage's HPA reads the metric, that a burst scales a stage of real worker
//! processes (a node agent runs its pods) out and back in, and that `minReplicas: 0` parks an idle
//! stage and wakes it. Needs `make test-e2e` and the worker binary (`cargo build -p
//! orderpipe-worker`).
//!
//! The APIService is cluster-wide (one `external.metrics.k8s.io` per cluster), so within this
//! file one test at a time holds it ([`REGISTRATION`]); the demo's test registers it too, from
//! another test binary, and cargo runs test binaries one after another. It is deleted before the
//! namespace, whose deletion needs the discovery of every API group to succeed.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::ListParams;
use orderpipe_api::OrderPipeline;
use orderpipe_api::v1alpha1::{AutoscalingSpec, ScalingBehavior, ScalingRules};
use orderpipe_e2e::load::produce_transaction;
use orderpipe_e2e::{InProcessOperator, OperatorTest, apply_pipeline, on_node_agent, wait_ready};
use orderpipe_node_agent::{ImageMapping, NodeAgent, NodeAgentConfig};
use orderpipe_operator::external_metrics;
use orderpipe_stack::tools::{self, Tools};
use orderpipe_stack::{
    Isolation, LocalApiService, SharedStack, TestNamespace, caught_up, read_all, unique_name,
    wait_until,
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

const METRIC: &str = "orderpipe_consumer_lag";
const SERVICE: &str = "orderpipe-metrics-api";
/// Records produced to the autoscaled stage's input, with no worker consuming them.
const ORDERS: u64 = 60;
const LAG_PER_REPLICA: i64 = 10;
/// The burst on real workers, and their target: the lag is far above what one replica may carry.
const BURST: u64 = 60_000;
const BURST_LAG_PER_REPLICA: i64 = 500;
/// The promise: at least three replicas within 30 s of the lag crossing the target.
const SCALE_OUT: Duration = Duration::from_secs(30);
/// The stage's scale-down behaviour (`SCALE_DOWN`) waits 10 s of lower load and may then shed
/// every surplus pod at once; the rest is the HPA's 5-second sync and the workers' shutdown.
const SCALE_IN: Duration = Duration::from_secs(120);
/// Scale-down fast enough for a test; the default (300 s window, half the pods a minute) is for
/// production consumers, where a rebalance costs more than an idle pod.
const SCALE_DOWN: ScalingRules = ScalingRules {
    stabilization_window_seconds: Some(10),
    max_pods_per_period: None,
    max_percent_per_period: Some(100),
    period_seconds: Some(15),
};
/// Held by each test from registering the APIService until it is deleted.
static REGISTRATION: Mutex<()> = Mutex::const_new(());
const PARTITIONS: i32 = 6;
/// `parkAfterIdleSeconds` of the scale-to-zero test (the CRD's minimum), and how long parking may
/// take: the idle period, the lag interval and the workers' shutdown.
const PARK_AFTER: i32 = 10;
const PARK_WAIT: Duration = Duration::from_secs(90);
/// Orders that wake the parked stage.
const WAKE_ORDERS: u64 = 1_000;
/// From the APIService's creation to the aggregator routing to it, and from the records to the
/// HPA's next 5-second sync: seconds each; generous for a loaded machine.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn kubectl_and_the_hpa_read_kafka_lag_through_the_aggregation_layer() -> anyhow::Result<()> {
    let OperatorTest {
        stack,
        bootstrap,
        ns,
        operator,
    } = OperatorTest::start("extmetrics").await?;
    let api = AggregatedApi::start(&ns, &operator).await?;
    let proven = prove(&stack, &bootstrap, &ns, &api).await;
    api.stop(&ns).await?;
    proven?;
    OperatorTest::finish(operator, ns).await
}

async fn prove(
    stack: &SharedStack,
    bootstrap: &str,
    ns: &TestNamespace,
    api: &AggregatedApi,
) -> anyhow::Result<()> {
    let input = ready_autoscaled_stage(bootstrap, ns, autoscaling(LAG_PER_REPLICA)).await?;
    // kwok's pods run no process: nothing consumes, so the lag is everything produced.
    produce_transaction(bootstrap, &input, ORDERS).await?;
    let produced = Instant::now();

    let kubectl = Kubectl::new(stack)?;
    let expected = ORDERS.to_string();
    let list = wait_until(
        &format!("kubectl get --raw {} reads {ORDERS}", lag_path(ns)),
        WAIT,
        || async {
            let list = kubectl.lag_list(ns).await?;
            (list["items"][0]["value"] == expected.as_str()).then_some(list)
        },
    )
    .await?;
    let read_by_kubectl = produced.elapsed();
    ensure!(
        list["kind"] == "ExternalMetricValueList"
            && list["items"][0]["metricLabels"] == json!({"pipeline": "shop", "stage": "validate"}),
        "kubectl read {list}"
    );

    let resources = kubectl
        .run(&[
            "api-resources",
            "--api-group=external.metrics.k8s.io",
            "-o",
            "name",
        ])
        .await
        .context("kubectl api-resources failed")?;
    ensure!(
        resources.lines().any(|line| line.starts_with(METRIC)),
        "discovery lists no {METRIC}: {resources:?}"
    );

    let direct = api
        .request_without_client_certificate(&lag_path(ns))
        .await?;
    ensure!(
        direct == reqwest::StatusCode::UNAUTHORIZED,
        "a request without the front-proxy certificate got {direct}"
    );

    // The lag is several times the target of one replica, so the HPA wants more than one; how
    // many more within a minute is its scale-up policy's business, not this test's.
    let hpas = ns.api::<HorizontalPodAutoscaler>();
    let status = wait_until(
        "the stage's HPA reads the lag, ScalingActive=True, and wants more than one replica",
        WAIT,
        || async {
            let hpa = hpas.list(&ListParams::default()).await.ok()?.items.pop()?;
            let status = hpa.status?;
            let active = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "ScalingActive" && c.status == "True");
            let read = status.current_metrics.iter().flatten().any(|m| {
                m.external
                    .as_ref()
                    .is_some_and(|e| e.current.average_value.is_some())
            });
            (active && read && status.desired_replicas > 1).then_some(status)
        },
    )
    .await;
    match status {
        Ok(_) => {
            // For the record (--nocapture): how fast the lag reaches kubectl and the HPA.
            eprintln!(
                "measured: kubectl read the lag {read_by_kubectl:?} and the HPA wanted more replicas {:?} after the records were produced",
                produced.elapsed()
            );
            Ok(())
        }
        Err(e) => {
            let hpa = hpas.list(&ListParams::default()).await?.items;
            anyhow::bail!("{e}\nHPA: {}", serde_json::to_string_pretty(&hpa)?)
        }
    }
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_burst_scales_real_workers_out_and_back_in_without_losing_or_duplicating_an_order()
-> anyhow::Result<()> {
    let workers = RealWorkers::start("lagscale").await?;
    let proven = burst_round_trip(&workers).await;
    workers.finish(proven).await
}

/// Scale-out to three ready worker processes within [`SCALE_OUT`] of the burst, every order
/// validated exactly once, back to one replica after the drain, and then the idle stage's lag
/// read as exactly 0 by kubectl although its input ends in transaction markers.
async fn burst_round_trip(workers: &RealWorkers) -> anyhow::Result<()> {
    let OperatorTest {
        stack,
        bootstrap,
        ns,
        ..
    } = &workers.test;
    let input = ready_autoscaled_stage(bootstrap, ns, autoscaling(BURST_LAG_PER_REPLICA)).await?;

    // The lag crosses the target with the burst's first records: the clock starts with them.
    let burst = produce_transaction(bootstrap, &input, BURST).await?;
    let produced = burst.elapsed();
    let scaled = wait_until(
        "three worker processes of the stage ready",
        SCALE_OUT,
        || async { workload_replicas(ns).await.filter(|&(_, ready)| ready >= 3) },
    )
    .await;
    let scaled_out = burst.elapsed();
    if let Err(e) = scaled {
        let hpa = ns
            .api::<HorizontalPodAutoscaler>()
            .list(&ListParams::default())
            .await?;
        anyhow::bail!(
            "{e}\nHPA: {}\n{}",
            serde_json::to_string_pretty(&hpa.items)?,
            ns.dump().await
        );
    }

    wait_drained(bootstrap, ns, &input).await?;
    let drained = burst.elapsed();
    wait_until("the stage back at one replica", SCALE_IN, || async {
        workload_replicas(ns)
            .await
            .filter(|&counts| counts == (1, 1))
    })
    .await?;
    let scaled_in = burst.elapsed();
    validated_exactly_once(bootstrap, ns, BURST).await?;

    // Every partition of the input ends in a commit marker the group never consumes: a naive
    // end - committed would read 6 here for ever.
    let kubectl = Kubectl::new(stack)?;
    let idle = wait_until(
        "kubectl reads the drained transactional stage's lag as 0",
        WAIT,
        || async { (kubectl.lag(ns).await? == "0").then_some(()) },
    )
    .await;
    if let Err(e) = idle {
        anyhow::bail!("{e}; last reading: {:?}", kubectl.lag(ns).await);
    }
    eprintln!(
        "measured: {BURST} orders produced in {produced:?}; after the burst began: three ready \
         worker processes {scaled_out:?}, drained {drained:?}, back at one replica {scaled_in:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn an_idle_stage_parks_at_zero_and_wakes_when_orders_arrive() -> anyhow::Result<()> {
    let workers = RealWorkers::start("lagpark").await?;
    let proven = park_and_wake(&workers).await;
    workers.finish(proven).await
}

/// `minReplicas: 0`: the stage parks after [`PARK_AFTER`] of lag 0 (no worker, no HPA, Event
/// `Parked`), wakes when orders arrive (one worker, the HPA back, Event `Activated`), processes
/// each order exactly once, and parks again.
async fn park_and_wake(workers: &RealWorkers) -> anyhow::Result<()> {
    let OperatorTest { bootstrap, ns, .. } = &workers.test;
    let spec = AutoscalingSpec {
        min_replicas: 0,
        park_after_idle_seconds: Some(PARK_AFTER),
        ..autoscaling(BURST_LAG_PER_REPLICA)
    };
    let input = ready_autoscaled_stage(bootstrap, ns, spec).await?;
    let hpas = ns.api::<HorizontalPodAutoscaler>();
    let parked = || async {
        let idle = workload_replicas(ns).await? == (0, 0);
        let no_hpa = hpas
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty();
        (idle && no_hpa && events(ns, "Parked").await? > 0).then_some(())
    };
    let started = Instant::now();
    wait_until(
        "the idle stage parked: no worker, no HPA",
        PARK_WAIT,
        parked,
    )
    .await?;
    let parked_after = started.elapsed();

    let arrival = produce_transaction(bootstrap, &input, WAKE_ORDERS).await?;
    wait_until(
        "the parked stage woken: a ready worker and its HPA",
        WAIT,
        || async {
            let running = workload_replicas(ns).await?.1 >= 1;
            let hpa = !hpas
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty();
            (running && hpa && events(ns, "Activated").await? > 0).then_some(())
        },
    )
    .await?;
    let woke = arrival.elapsed();
    wait_drained(bootstrap, ns, &input).await?;
    let drained = arrival.elapsed();
    validated_exactly_once(bootstrap, ns, WAKE_ORDERS).await?;
    wait_until("the stage parked again", PARK_WAIT, parked).await?;
    eprintln!(
        "measured: parked {parked_after:?} after the pipeline was Ready (idle since it was created; \
         parkAfterIdleSeconds {PARK_AFTER}); after \
         {WAKE_ORDERS} orders arrived: a ready worker {woke:?}, drained {drained:?}"
    );
    Ok(())
}

/// An [`OperatorTest`] whose worker pods run as real processes of the built worker on a node
/// agent of its own, with the operator's external metrics API registered.
struct RealWorkers {
    test: OperatorTest,
    agent: NodeAgent,
    api: AggregatedApi,
    _work: tempfile::TempDir,
}

impl RealWorkers {
    async fn start(prefix: &str) -> anyhow::Result<RealWorkers> {
        let worker = tools::built_binary("orderpipe-worker")?;
        let node = unique_name(&format!("{prefix}-node"));
        let placement = on_node_agent(&node);
        let test = OperatorTest::start_placed(prefix, placement).await?;
        let work = tempfile::tempdir()?;
        let agent = NodeAgent::start(
            test.ns.client().clone(),
            NodeAgentConfig::new(&node, work.path()).image(ImageMapping {
                image: "orderpipe/orderpipe-worker".into(),
                binary: worker,
            }),
        )
        .await?;
        let api = AggregatedApi::start(&test.ns, &test.operator).await?;
        Ok(RealWorkers {
            test,
            agent,
            api,
            _work: work,
        })
    }

    /// Unregisters the API and stops the agent whatever `proven` says, then reports it.
    async fn finish(self, proven: anyhow::Result<()>) -> anyhow::Result<()> {
        let OperatorTest { ns, operator, .. } = self.test;
        self.api.stop(&ns).await?;
        self.agent.stop().await?;
        proven?;
        OperatorTest::finish(operator, ns).await
    }
}

/// The stage's Deployment: (spec replicas, ready replicas).
async fn workload_replicas(ns: &TestNamespace) -> Option<(i32, i32)> {
    let d = ns
        .api::<Deployment>()
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .pop()?;
    let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    Some((d.spec?.replicas?, ready))
}

/// Events with `reason` in the namespace.
async fn events(ns: &TestNamespace, reason: &str) -> Option<usize> {
    let events = ns
        .api::<k8s_openapi::api::events::v1::Event>()
        .list(&ListParams::default())
        .await
        .ok()?;
    Some(
        events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .count(),
    )
}

async fn wait_drained(bootstrap: &str, ns: &TestNamespace, input: &str) -> anyhow::Result<()> {
    let group = format!("orderpipe.{}.shop.validate", ns.name());
    wait_until("the stage drained its input", SCALE_IN, || async {
        let (bootstrap, group, input) = (bootstrap.to_owned(), group.clone(), input.to_owned());
        let caught_up = tokio::task::spawn_blocking(move || caught_up(&bootstrap, &group, &input));
        caught_up.await.ok()?.ok()?.then_some(())
    })
    .await?;
    Ok(())
}

/// The validated topic holds `orders` records, each order once (read_committed).
async fn validated_exactly_once(
    bootstrap: &str,
    ns: &TestNamespace,
    orders: u64,
) -> anyhow::Result<()> {
    let validated = format!("{}.validated", ns.name());
    let (bootstrap, topic) = (bootstrap.to_owned(), validated.clone());
    let records =
        tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, Isolation::ReadCommitted))
            .await??;
    let distinct: HashSet<Vec<u8>> = records.iter().filter_map(|r| r.key.clone()).collect();
    ensure!(
        records.len() == usize::try_from(orders)? && distinct.len() == records.len(),
        "{validated} holds {} records with {} distinct keys for {orders} orders",
        records.len(),
        distinct.len()
    );
    Ok(())
}

/// The test stage's autoscaling: `lag_per_replica` up to one replica per partition, and
/// [`SCALE_DOWN`].
fn autoscaling(lag_per_replica: i64) -> AutoscalingSpec {
    AutoscalingSpec {
        target_lag_per_replica: Some(lag_per_replica),
        behavior: Some(ScalingBehavior {
            scale_up: None,
            scale_down: Some(SCALE_DOWN),
        }),
        ..AutoscalingSpec::test(PARTITIONS)
    }
}

/// Applies pipeline `shop` whose stage `validate` reads a 6-partition input and autoscales as
/// `autoscaling` says, waits until it is Ready, and returns the input topic.
async fn ready_autoscaled_stage(
    bootstrap: &str,
    ns: &TestNamespace,
    autoscaling: AutoscalingSpec,
) -> anyhow::Result<String> {
    let input = format!("{}.orders", ns.name());
    let pipeline = OrderPipeline::test("shop")
        .bootstrap(bootstrap)
        .topic_prefix(ns.name())
        .partitions(&input, PARTITIONS)
        .autoscaling("validate", autoscaling);
    apply_pipeline(ns, &serde_json::to_value(pipeline)?).await?;
    wait_ready(ns, "shop").await?;
    Ok(input)
}

/// The external metrics API path of the test stage's lag.
fn lag_path(ns: &TestNamespace) -> String {
    format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{METRIC}?labelSelector=pipeline=shop,stage=validate",
        ns.name()
    )
}

/// The upstream kubectl of the stack's tools, with the admin kubeconfig.
struct Kubectl {
    bin: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
}

impl Kubectl {
    fn new(stack: &SharedStack) -> anyhow::Result<Kubectl> {
        Ok(Kubectl {
            bin: Tools::at(&stack.env().tools_dir).bin("kubectl")?,
            kubeconfig: stack.kubeconfig()?.to_owned(),
        })
    }

    /// The `ExternalMetricValueList` of the test stage's lag, read with `kubectl get --raw`.
    async fn lag_list(&self, ns: &TestNamespace) -> Option<Value> {
        serde_json::from_str(&self.run(&["get", "--raw", &lag_path(ns)]).await?).ok()
    }

    /// The test stage's lag as kubectl reads it (a Kubernetes quantity).
    async fn lag(&self, ns: &TestNamespace) -> Option<String> {
        let list = self.lag_list(ns).await?;
        list["items"][0]["value"].as_str().map(str::to_owned)
    }

    /// Its stdout if it succeeds; `None` (and its stderr on ours) if not.
    async fn run(&self, args: &[&str]) -> Option<String> {
        let output = tokio::process::Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .await
            .ok()?;
        if !output.status.success() {
            eprintln!(
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            return None;
        }
        String::from_utf8(output.stdout).ok()
    }
}

/// The operator's external metrics API, served in this process from the in-process operator's lag
/// readings and registered with the apiserver.
struct AggregatedApi {
    registration: LocalApiService,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _cert_dir: tempfile::TempDir,
    _registration: MutexGuard<'static, ()>,
}

impl AggregatedApi {
    async fn start(
        ns: &TestNamespace,
        operator: &InProcessOperator,
    ) -> anyhow::Result<AggregatedApi> {
        let held = REGISTRATION.lock().await;
        let cert_dir = tempfile::tempdir()?;
        let registration = LocalApiService::prepare(
            "external.metrics.k8s.io",
            "v1beta1",
            ns.name(),
            SERVICE,
            cert_dir.path(),
        )?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, registration.port()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(external_metrics::run(
            addr,
            cert_dir.path().to_owned(),
            ns.client().clone(),
            operator.lag(),
            operator.metrics(),
            stop.clone(),
        ));
        wait_until(
            "the external metrics API listens",
            Duration::from_secs(30),
            || async { tokio::net::TcpStream::connect(addr).await.ok() },
        )
        .await?;
        registration.register(ns.client()).await?;
        Ok(AggregatedApi {
            registration,
            stop,
            task,
            _cert_dir: cert_dir,
            _registration: held,
        })
    }

    /// The status of an HTTPS request straight to the operator's port, trusting its serving
    /// certificate but presenting no client certificate.
    async fn request_without_client_certificate(
        &self,
        path: &str,
    ) -> anyhow::Result<reqwest::StatusCode> {
        let host = self.registration.host();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.registration.port()));
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(
                self.registration.ca_pem().as_bytes(),
            )?)
            .resolve(&host, addr)
            .no_proxy()
            .build()?;
        let url = format!("https://{host}:{}{path}", addr.port());
        Ok(client.get(url).send().await?.status())
    }

    /// Deletes the APIService, then stops the server.
    async fn stop(self, ns: &TestNamespace) -> anyhow::Result<()> {
        self.registration.unregister(ns.client()).await?;
        self.stop.cancel();
        self.task.await?;
        Ok(())
    }
}
