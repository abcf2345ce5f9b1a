//! The operator's external metrics API behind the real kube-apiserver's aggregation layer: the
//! operator serves it in the test process (`external_metrics::run`, as the binary does) on a
//! loopback port with a serving certificate made here, and an APIService with that CA in its
//! `caBundle` routes `external.metrics.k8s.io` to it through an `ExternalName: localhost` Service
//! (see `stack/README.md`). Proves that the upstream kubectl reads the lag measured in Kafka, that
//! the API is discoverable, that a request past the apiserver without the front-proxy certificate
//! is refused, that the stage's HPA reads the metric, and that a burst scales a stage of real
//! worker processes (a node agent runs its pods) out. Needs `make test-e2e` and the worker binary
//! (`cargo build -p orderpipe-worker`).
//!
//! The APIService is cluster-wide (one `external.metrics.k8s.io` per cluster), so only this file
//! creates it, one test at a time ([`REGISTRATION`]); it is deleted before the namespace, whose
//! deletion needs the discovery of every API group to succeed.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceSpec, ServiceReference,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use orderpipe_api::OrderPipeline;
use orderpipe_api::v1alpha1::{AutoscalingSpec, ScalingBehavior, ScalingRules};
use orderpipe_e2e::{OperatorTest, apply_pipeline, on_node_agent, wait_ready};
use orderpipe_node_agent::{ImageMapping, NodeAgent, NodeAgentConfig};
use orderpipe_operator::external_metrics;
use orderpipe_operator::lag::{CacheSettings, KafkaLagSource, LagCache};
use orderpipe_operator::metrics::Metrics;
use orderpipe_operator::topics::AdminSettings;
use orderpipe_orders::generator::{GenConfig, OrderGenerator};
use orderpipe_stack::tools::{self, Tools};
use orderpipe_stack::{
    Isolation, SharedStack, TestNamespace, caught_up, free_port, read_all, unique_name, wait_until,
};
use prometheus_client::registry::Registry;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

const APISERVICE: &str = "v1beta1.external.metrics.k8s.io";
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
    let api = AggregatedApi::start(&ns).await?;
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
    let input = ready_autoscaled_stage(bootstrap, ns, LAG_PER_REPLICA).await?;
    // kwok's pods run no process: nothing consumes, so the lag is everything produced.
    produce(bootstrap, &input, ORDERS).await?;
    let produced = Instant::now();

    let kubectl = Kubectl::new(stack)?;
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{METRIC}?labelSelector=pipeline=shop,stage=validate",
        ns.name()
    );
    let expected = ORDERS.to_string();
    let list = wait_until(
        &format!("kubectl get --raw {path} reads {ORDERS}"),
        WAIT,
        || async {
            let list: Value =
                serde_json::from_str(&kubectl.run(&["get", "--raw", &path]).await?).ok()?;
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

    let direct = api.request_without_client_certificate(&path).await?;
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
    let worker = tools::built_binary("orderpipe-worker")?;
    let node = unique_name("lagscale-node");
    let placement = on_node_agent(&node);
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start_placed("lagscale", placement).await?;
    let work = tempfile::tempdir()?;
    let agent = NodeAgent::start(
        ns.client().clone(),
        NodeAgentConfig::new(&node, work.path()).image(ImageMapping {
            image: "orderpipe/orderpipe-worker".into(),
            binary: worker,
        }),
    )
    .await?;
    let api = AggregatedApi::start(&ns).await?;
    let proven = burst_round_trip(&bootstrap, &ns).await;
    api.stop(&ns).await?;
    agent.stop().await?;
    proven?;
    OperatorTest::finish(operator, ns).await
}

/// Scale-out to three ready worker processes within [`SCALE_OUT`] of the burst, every order
/// validated exactly once, back to one replica after the drain.
async fn burst_round_trip(bootstrap: &str, ns: &TestNamespace) -> anyhow::Result<()> {
    let input = ready_autoscaled_stage(bootstrap, ns, BURST_LAG_PER_REPLICA).await?;

    // The lag crosses the target with the burst's first records: the clock starts with them.
    let burst = produce(bootstrap, &input, BURST).await?;
    let produced = burst.elapsed();
    let deployments = ns.api::<Deployment>();
    let replicas = || async {
        let d = deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .pop()?;
        Some((d.spec?.replicas?, d.status?.ready_replicas.unwrap_or(0)))
    };
    let scaled = wait_until(
        "three worker processes of the stage ready",
        SCALE_OUT,
        || async { replicas().await.filter(|&(_, ready)| ready >= 3) },
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

    let validated = format!("{}.validated", ns.name());
    let group = format!("orderpipe.{}.shop.validate", ns.name());
    wait_until("the stage drained the burst", SCALE_IN, || async {
        let (bootstrap, group, input) = (bootstrap.to_owned(), group.clone(), input.clone());
        let caught_up = tokio::task::spawn_blocking(move || caught_up(&bootstrap, &group, &input));
        caught_up.await.ok()?.ok()?.then_some(())
    })
    .await?;
    let drained = burst.elapsed();
    wait_until("the stage back at one replica", SCALE_IN, || async {
        replicas().await.filter(|&counts| counts == (1, 1))
    })
    .await?;
    let scaled_in = burst.elapsed();

    let (bootstrap, topic) = (bootstrap.to_owned(), validated.clone());
    let records =
        tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, Isolation::ReadCommitted))
            .await??;
    let distinct: HashSet<Vec<u8>> = records.iter().filter_map(|r| r.key.clone()).collect();
    ensure!(
        records.len() == usize::try_from(BURST)? && distinct.len() == records.len(),
        "{validated} holds {} records with {} distinct keys for {BURST} orders",
        records.len(),
        distinct.len()
    );
    eprintln!(
        "measured: {BURST} orders produced in {produced:?}; after the burst began: three ready \
         worker processes {scaled_out:?}, drained {drained:?}, back at one replica {scaled_in:?}"
    );
    Ok(())
}

/// Applies pipeline `shop` whose stage `validate` reads a 6-partition input and autoscales on
/// `lag_per_replica`, waits until it is Ready, and returns the input topic.
async fn ready_autoscaled_stage(
    bootstrap: &str,
    ns: &TestNamespace,
    lag_per_replica: i64,
) -> anyhow::Result<String> {
    let input = format!("{}.orders", ns.name());
    let pipeline = OrderPipeline::test("shop")
        .bootstrap(bootstrap)
        .topic_prefix(ns.name())
        .partitions(&input, PARTITIONS)
        .autoscaling(
            "validate",
            AutoscalingSpec {
                target_lag_per_replica: Some(lag_per_replica),
                behavior: Some(ScalingBehavior {
                    scale_up: None,
                    scale_down: Some(SCALE_DOWN),
                }),
                ..AutoscalingSpec::test(PARTITIONS)
            },
        );
    apply_pipeline(ns, &serde_json::to_value(pipeline)?).await?;
    wait_ready(ns, "shop").await?;
    Ok(input)
}

/// Produces `count` valid generated orders to `topic` and waits until the broker has them, on a
/// blocking thread: the in-process operator and API share this test's runtime. The orders are
/// generated first, so they arrive as fast as the broker takes them: a burst, not a stream one
/// worker could keep up with. Returns when the sending began.
async fn produce(bootstrap: &str, topic: &str, count: u64) -> anyhow::Result<Instant> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .create()?;
        let valid_only = GenConfig {
            invalid_share: 0.0,
            garbage_share: 0.0,
            duplicate_share: 0.0,
        };
        let records: Vec<_> = OrderGenerator::new(13, valid_only)
            .take(usize::try_from(count)?)
            .collect();
        let began = Instant::now();
        for record in &records {
            let mut next = BaseRecord::to(&topic).payload(&record.payload);
            if let Some(key) = &record.key {
                next = next.key(key);
            }
            // A full local queue only means librdkafka is behind: let it deliver, then retry.
            while let Err((error, unsent)) = producer.send(next) {
                ensure!(
                    error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    "producing to {topic}: {error}"
                );
                producer.poll(Duration::from_millis(100));
                next = unsent;
            }
        }
        producer.flush(Duration::from_secs(60))?;
        anyhow::Ok(began)
    })
    .await?
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

/// The operator's external metrics API, served in this process and registered with the apiserver.
struct AggregatedApi {
    addr: SocketAddr,
    /// The name the aggregator verifies: `<service>.<namespace>.svc`.
    host: String,
    ca_pem: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _cert_dir: tempfile::TempDir,
    _registration: MutexGuard<'static, ()>,
}

impl AggregatedApi {
    async fn start(ns: &TestNamespace) -> anyhow::Result<AggregatedApi> {
        let registration = REGISTRATION.lock().await;
        let host = format!("{SERVICE}.{}.svc", ns.name());
        let cert_dir = tempfile::tempdir()?;
        let ca_pem = serving_certificate(&host, cert_dir.path())?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let lag = LagCache::new(
            KafkaLagSource::new(
                ns.client().clone(),
                AdminSettings::default().request_timeout,
            ),
            // Fresher than the binary's 5 s default: the tests wait on the readings.
            CacheSettings {
                interval: Duration::from_secs(1),
                ..CacheSettings::default()
            },
            Arc::clone(&metrics),
        );
        let task = tokio::spawn(external_metrics::run(
            addr,
            cert_dir.path().to_owned(),
            ns.client().clone(),
            Arc::new(lag),
            metrics,
            stop.clone(),
        ));

        // Registered only once it listens: while an APIService is unavailable, the discovery of
        // its group fails, and with it every namespace deletion on the shared stack (retried).
        wait_until(
            "the external metrics API listens",
            Duration::from_secs(30),
            || async { tokio::net::TcpStream::connect(addr).await.ok() },
        )
        .await?;
        // The aggregator dials localhost:<port> and verifies the certificate for `host`.
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": ns.name()},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": addr.port()}],
            },
        });
        ns.api::<Service>()
            .patch(SERVICE, &apply(), &Patch::Apply(&service))
            .await?;
        let apiservice = APIService {
            metadata: kube::api::ObjectMeta {
                name: Some(APISERVICE.into()),
                ..Default::default()
            },
            spec: Some(APIServiceSpec {
                group: Some("external.metrics.k8s.io".into()),
                version: Some("v1beta1".into()),
                group_priority_minimum: 100,
                version_priority: 100,
                ca_bundle: Some(ByteString(ca_pem.clone().into_bytes())),
                service: Some(ServiceReference {
                    namespace: Some(ns.name().into()),
                    name: Some(SERVICE.into()),
                    port: Some(i32::from(addr.port())),
                }),
                insecure_skip_tls_verify: None,
            }),
            status: None,
        };
        kube::Api::<APIService>::all(ns.client().clone())
            .patch(APISERVICE, &apply(), &Patch::Apply(&apiservice))
            .await?;
        Ok(AggregatedApi {
            addr,
            host,
            ca_pem,
            stop,
            task,
            _cert_dir: cert_dir,
            _registration: registration,
        })
    }

    /// The status of an HTTPS request straight to the operator's port, trusting its serving
    /// certificate but presenting no client certificate.
    async fn request_without_client_certificate(
        &self,
        path: &str,
    ) -> anyhow::Result<reqwest::StatusCode> {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?)
            .resolve(&self.host, self.addr)
            .no_proxy()
            .build()?;
        let url = format!("https://{}:{}{path}", self.host, self.addr.port());
        Ok(client.get(url).send().await?.status())
    }

    /// Deletes the APIService, then stops the server.
    async fn stop(self, ns: &TestNamespace) -> anyhow::Result<()> {
        kube::Api::<APIService>::all(ns.client().clone())
            .delete(APISERVICE, &DeleteParams::default())
            .await?;
        self.stop.cancel();
        self.task.await?;
        Ok(())
    }
}

fn apply() -> PatchParams {
    PatchParams::apply("e2e-test").force()
}

/// Writes `tls.crt` and `tls.key` for `host` into `dir`, signed by a fresh CA; returns the CA.
fn serving_certificate(host: &str, dir: &Path) -> anyhow::Result<String> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "orderpipe-e2e-metrics-api-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![host.to_owned()])?.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(ca_pem)
}
