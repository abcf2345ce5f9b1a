//! What the operator's end-to-end tests share: their setup ([`OperatorTest`]: the shared stack, a
//! namespace of the test's own and an operator in the test process that watches only that
//! namespace), and the steps every pipeline test takes: apply an OrderPipeline as a user would,
//! read its conditions, wait until it is Ready. Must not assert anything: each test says what it
//! proves.

pub mod deployed;
pub mod load;
pub mod policy;
pub mod rules;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Pod, Secret, Toleration};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Reporter;
use orderpipe_api::OrderPipeline;
use orderpipe_node_agent::NODE_AGENT_LABEL;
use orderpipe_operator::controller::{self, Shared};
use orderpipe_operator::lag::{CacheSettings, KafkaLagSource, LagCache};
use orderpipe_operator::metrics::Metrics;
use orderpipe_operator::settings::{OperatorSettings, WorkerPlacement};
use orderpipe_operator::topics::{AdminPool, AdminSettings};
use orderpipe_stack::{SharedStack, TestNamespace, wait_until};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The operator's Prometheus URL on a stack without Prometheus.
pub const NO_PROMETHEUS: &str = "http://127.0.0.1:9090";

/// How long the operator gets to bring a pipeline to what a test waits for.
pub const CONVERGE: Duration = Duration::from_secs(90);
/// The operator's lag interval in tests (the binary's default is 5 s).
pub const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// One operator test: its namespace on the shared stack and an operator running for it. End it
/// with [`OperatorTest::finish`] (a namespace dropped without that is dumped and deleted, see
/// [`TestNamespace`]).
#[derive(Debug)]
pub struct OperatorTest {
    pub stack: SharedStack,
    /// The shared broker's plaintext listener.
    pub bootstrap: String,
    /// `<prefix>-<random>`, so tests running in parallel never see each other's pipelines.
    pub ns: TestNamespace,
    pub operator: InProcessOperator,
}

impl OperatorTest {
    pub async fn start(prefix: &str) -> anyhow::Result<OperatorTest> {
        OperatorTest::start_placed(prefix, WorkerPlacement::default()).await
    }

    /// As [`OperatorTest::start`], with worker pods placed as `placement` says (e.g. pinned to a
    /// node agent's node, where they run as real worker processes).
    pub async fn start_placed(
        prefix: &str,
        placement: WorkerPlacement,
    ) -> anyhow::Result<OperatorTest> {
        OperatorTest::start_with(prefix, |settings| settings.worker_placement = placement).await
    }

    /// As [`OperatorTest::start`], with the operator's settings changed by `configure` (e.g. a
    /// flag under test).
    pub async fn start_with(
        prefix: &str,
        configure: impl FnOnce(&mut OperatorSettings),
    ) -> anyhow::Result<OperatorTest> {
        let stack = SharedStack::get()?;
        let bootstrap = stack.kafka_bootstrap()?.to_owned();
        let ns = stack.namespace(prefix).await?;
        // The stack's Prometheus, which the canary analysis queries; a stack started without one
        // leaves a URL where nothing listens (an AnalysisRun then errors).
        let prometheus_url = stack.prometheus_url().unwrap_or(NO_PROMETHEUS).to_owned();
        let mut settings = InProcessOperator::settings(WorkerPlacement::default(), prometheus_url);
        configure(&mut settings);
        let operator = InProcessOperator::start_with(&ns, settings).await;
        Ok(OperatorTest {
            stack,
            bootstrap,
            ns,
            operator,
        })
    }

    /// Ends a test that got this far: stops its operator, then deletes its namespace without the
    /// failure dump. Takes the two fields because each test destructures what `start` returned.
    pub async fn finish(operator: InProcessOperator, ns: TestNamespace) -> anyhow::Result<()> {
        operator.stop().await;
        ns.cleanup().await?;
        Ok(())
    }
}

/// Worker pods pinned to the node agent of node `node` (by hostname: on a shared stack other tests
/// run node agents too), where they run as real worker processes.
pub fn on_node_agent(node: &str) -> WorkerPlacement {
    WorkerPlacement {
        node_selector: [("kubernetes.io/hostname".to_owned(), node.to_owned())].into(),
        tolerations: vec![Toleration {
            key: Some(NODE_AGENT_LABEL.into()),
            operator: Some("Equal".into()),
            value: Some("true".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }],
    }
}

/// The operator's controller running in this test process, watching one namespace.
pub struct InProcessOperator {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    registry: Registry,
    metrics: Arc<Metrics>,
    lag: Arc<LagCache<KafkaLagSource>>,
}

impl std::fmt::Debug for InProcessOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessOperator")
            .field("stopped", &self.stop.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl InProcessOperator {
    /// Starts the controller as the binary would (capabilities detected from the apiserver), with
    /// the namespace's admin client, worker pods placed as `placement` says and canary analyses
    /// querying `prometheus_url`.
    pub async fn start(
        ns: &TestNamespace,
        placement: WorkerPlacement,
        prometheus_url: String,
    ) -> InProcessOperator {
        InProcessOperator::start_with(ns, InProcessOperator::settings(placement, prometheus_url))
            .await
    }

    /// The settings [`InProcessOperator::start`] runs with.
    pub fn settings(placement: WorkerPlacement, prometheus_url: String) -> OperatorSettings {
        OperatorSettings {
            worker_image: "orderpipe/orderpipe-worker:e2e".into(),
            prometheus_url,
            worker_placement: placement,
            ..OperatorSettings::default()
        }
    }

    /// As [`InProcessOperator::start`], with `settings`.
    pub async fn start_with(ns: &TestNamespace, settings: OperatorSettings) -> InProcessOperator {
        let client = ns.client().clone();
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let lag = Arc::new(LagCache::new(
            KafkaLagSource::new(client.clone(), AdminSettings::default().request_timeout),
            // Fresher than the binary's 5 s default: tests wait on the readings.
            CacheSettings {
                interval: LAG_INTERVAL,
                ..CacheSettings::default()
            },
            Arc::clone(&metrics),
        ));
        let shared = Shared {
            client: client.clone(),
            settings,
            kafka: Arc::new(AdminPool::new(AdminSettings::default())),
            lag: Arc::clone(&lag),
            metrics: Arc::clone(&metrics),
            reporter: Reporter {
                controller: "orderpipe-operator".into(),
                instance: Some("e2e".into()),
            },
            watch_namespace: Some(ns.name().to_string()),
        };
        let capabilities = orderpipe_operator::capabilities::detect(&client).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(controller::run(
            shared,
            capabilities,
            stop.clone().cancelled_owned(),
        ));
        InProcessOperator {
            stop,
            task,
            registry,
            metrics,
            lag,
        }
    }

    /// The lag readings its reconciles use, to serve the external metrics API from (as the binary
    /// does).
    pub fn lag(&self) -> Arc<LagCache<KafkaLagSource>> {
        Arc::clone(&self.lag)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Sum of a counter family in the operator's /metrics text.
    pub fn counter(&self, name: &str) -> f64 {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Applies `object` (an OrderPipeline manifest) in the namespace as a user would: server-side
/// apply under the field manager `e2e-user`, taking over fields another manager set.
pub async fn apply_pipeline(ns: &TestNamespace, object: &Value) -> anyhow::Result<()> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    ns.api::<OrderPipeline>()
        .patch(
            name,
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(object),
        )
        .await
        .with_context(|| format!("applying OrderPipeline {name}"))?;
    Ok(())
}

/// Creates or replaces the Secret `name` in `ns` with `string_data` (server-side apply).
pub async fn apply_secret(
    ns: &TestNamespace,
    name: &str,
    string_data: Value,
) -> anyhow::Result<()> {
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "stringData": string_data,
    });
    ns.api::<Secret>()
        .patch(
            name,
            &PatchParams::apply("e2e-user"),
            &Patch::Apply(&secret),
        )
        .await
        .with_context(|| format!("applying Secret {name}"))?;
    Ok(())
}

/// Points a pipeline manifest at the stack's SASL_SSL listener: TLS with the CA in the Secret
/// `kafka-ca` (key `ca.crt`), SASL/PLAIN with the credentials in the Secret `credentials`.
pub fn over_sasl_ssl(pipeline: &mut Value, credentials: &str) {
    let kafka = &mut pipeline["spec"]["kafka"];
    kafka["tls"] = serde_json::json!({ "caSecretRef": { "name": "kafka-ca", "key": "ca.crt" } });
    kafka["sasl"] = serde_json::json!({ "mechanism": "PLAIN", "credentialsSecretRef": { "name": credentials } });
}

/// Whether the pod runs and its Ready condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Status and reason of the condition `type_`, if the status has it.
pub fn condition(pipeline: &OrderPipeline, type_: &str) -> Option<(String, String)> {
    let status = pipeline.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

/// Whether the status describes the current generation and says Ready=True.
pub fn is_ready(pipeline: &OrderPipeline) -> bool {
    let current = pipeline
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation == pipeline.metadata.generation);
    current && condition(pipeline, "Ready").is_some_and(|(status, _)| status == "True")
}

/// Waits until pipeline `name` [`is_ready`]; on timeout the error carries its status and the
/// namespace's events, pods and deployments.
pub async fn wait_ready(ns: &TestNamespace, name: &str) -> anyhow::Result<OrderPipeline> {
    let api: Api<OrderPipeline> = ns.api();
    let result = wait_until(
        &format!("OrderPipeline {name} Ready=True"),
        CONVERGE,
        || async {
            let p = api.get(name).await.ok()?;
            is_ready(&p).then_some(p)
        },
    )
    .await;
    match result {
        Ok(p) => Ok(p),
        Err(e) => {
            let status = api
                .get(name)
                .await
                .ok()
                .and_then(|p| serde_json::to_string_pretty(&p.status).ok());
            anyhow::bail!(
                "{e}\nstatus: {}\n{}",
                status.unwrap_or_default(),
                ns.dump().await
            )
        }
    }
}
