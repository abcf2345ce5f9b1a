//! `orderpipe-operator`: parses flags, sets up logging, metrics and health endpoints, waits for the
//! leader lease, and runs the controller until SIGTERM (restarting it when the cluster's optional
//! CRDs appear or disappear).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Toleration;
use kube::client::ClientBuilder;
use kube::runtime::events::Reporter;
use kube_lease_manager::LeaseManagerBuilder;
use orderpipe_api::contract;
use orderpipe_operator::egress::{AllowList, AllowedHost};
use orderpipe_operator::external_metrics;
use orderpipe_operator::http::{self, Health};
use orderpipe_operator::lag::{CacheSettings, KafkaLagSource, LagCache};
use orderpipe_operator::metrics::Metrics;
use orderpipe_operator::settings::{OperatorSettings, WorkerPlacement};
use orderpipe_operator::topics::{AdminPool, AdminSettings};
use orderpipe_operator::{capabilities, controller, heap};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Reconciles OrderPipelines into Kafka topics and worker workloads"
)]
struct Args {
    /// Worker image for the built-in processors.
    #[arg(long, env = "ORDERPIPE_WORKER_IMAGE", default_value = concat!("docker.io/orderpipe/orderpipe-worker:", env!("CARGO_PKG_VERSION")))]
    worker_image: String,
    /// Prometheus queried by canary analyses unless a stage names its own.
    #[arg(
        long,
        env = "ORDERPIPE_PROMETHEUS_URL",
        default_value = "http://prometheus-operated.monitoring.svc:9090"
    )]
    prometheus_url: String,
    /// Node label every worker pod requires, as key=value (repeatable), e.g. a dedicated node pool.
    #[arg(long = "worker-node-selector", value_parser = parse_node_selector)]
    worker_node_selector: Vec<(String, String)>,
    /// Taint every worker pod tolerates, as key[=value]:Effect (repeatable).
    #[arg(long = "worker-toleration", value_parser = parse_toleration)]
    worker_tolerations: Vec<Toleration>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ORDERPIPE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Port of --metrics-addr, replacing its own. The worker contract's variable: a node agent that
    /// maps container ports to free host ports (the local stack's) sets it for the port named
    /// `metrics`, as for worker pods, so replicas sharing a host do not collide and probes find them.
    #[arg(long, env = contract::env::METRICS_PORT)]
    metrics_port: Option<u16>,
    /// Only reconcile OrderPipelines in this namespace (default: all namespaces).
    #[arg(long, env = "ORDERPIPE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Run for leadership with a Lease so several replicas can run; only the holder reconciles.
    #[arg(long, env = "ORDERPIPE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "orderpipe-system")]
    lease_namespace: String,
    /// Identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds between re-checks of a Ready pipeline (default 300); Kafka drift is found this way.
    #[arg(long, env = "ORDERPIPE_RESYNC_SECONDS")]
    resync_seconds: Option<u64>,
    /// Seconds a Secret read is reused, and between re-checks of a pipeline whose pods use
    /// Secrets (default 30): a rotated Secret rolls those pods within two periods.
    #[arg(long, env = "ORDERPIPE_SECRET_REFRESH_SECONDS")]
    secret_refresh_seconds: Option<u64>,
    /// Seconds a deleted pipeline's failing topic cleanup is retried before the pipeline is
    /// released with its topics left behind and a Warning Event (default 600).
    #[arg(long, env = "ORDERPIPE_TOPIC_CLEANUP_GIVE_UP_SECONDS")]
    topic_cleanup_give_up_seconds: Option<u64>,
    /// Let notify stages send their webhook's auth Secret over plain `http://` (e.g. to a sidecar
    /// or inside a service mesh that encrypts). Off: such a stage is held at zero replicas.
    #[arg(long, env = "ORDERPIPE_ALLOW_INSECURE_WEBHOOKS")]
    allow_insecure_webhooks: bool,
    /// Hosts pipelines may make the operator and the workers dial (bootstrap servers, webhooks),
    /// comma-separated: CIDRs (`10.0.0.0/8`), addresses, names (`kafka.example.com`) and
    /// `*.suffix` names. Unset: any host. Link-local and cloud-metadata addresses are refused
    /// either way; a stage that would dial a refused host is held at zero replicas.
    #[arg(long, env = "ORDERPIPE_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<AllowedHost>,
    /// Address of the external metrics API (`external.metrics.k8s.io`, HTTPS), the target of the
    /// APIService's Service.
    #[arg(
        long,
        env = "ORDERPIPE_EXTERNAL_METRICS_ADDR",
        default_value = "0.0.0.0:6443"
    )]
    external_metrics_addr: SocketAddr,
    /// Directory with the API's serving certificate (tls.crt, tls.key, e.g. a mounted
    /// kubernetes.io/tls Secret). Unset: the external metrics API is not served.
    #[arg(long, env = "ORDERPIPE_EXTERNAL_METRICS_CERT_DIR")]
    external_metrics_cert_dir: Option<PathBuf>,
    /// Seconds between two lag measurements of one stage in Kafka; requests in between share the
    /// last one.
    #[arg(long, env = "ORDERPIPE_LAG_INTERVAL_SECONDS", default_value_t = 5)]
    lag_interval_seconds: u64,
    /// Log format.
    #[arg(long, env = "ORDERPIPE_LOG_FORMAT", value_parser = ["json", "text"], default_value = "json")]
    log_format: String,
}

impl Args {
    /// Where /metrics, /healthz and /readyz are served: --metrics-addr with --metrics-port's port.
    fn metrics_address(&self) -> SocketAddr {
        let mut address = self.metrics_addr;
        if let Some(port) = self.metrics_port {
            address.set_port(port);
        }
        address
    }
}

const LEASE_NAME: &str = "orderpipe-operator-leader";
const LEASE_SECONDS: u64 = 15;

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads, so the limit holds for every arena.
    heap::limit_arenas();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    init_logging(&args.log_format);

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    tokio::spawn(heap::trim_when_grown(shutdown.clone()));

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let health = Arc::new(Health {
        registry,
        ready: AtomicBool::new(false),
    });
    let server = tokio::spawn(http::serve(
        args.metrics_address(),
        health.clone(),
        shutdown.clone().cancelled_owned(),
    ));

    let config = kube::Config::infer()
        .await
        .context("reading the Kubernetes client configuration")?;
    let client = ClientBuilder::try_from(config)
        .context("connecting to the Kubernetes API")?
        .with_layer(&metrics.api_request_counter())
        .build();
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("orderpipe-operator-{}", std::process::id()));
    let settings = OperatorSettings {
        worker_image: args.worker_image.clone(),
        prometheus_url: args.prometheus_url.clone(),
        worker_placement: WorkerPlacement {
            node_selector: args.worker_node_selector.iter().cloned().collect(),
            tolerations: args.worker_tolerations.clone(),
        },
        resync: args.resync_seconds.map(std::time::Duration::from_secs),
        secret_refresh: args
            .secret_refresh_seconds
            .map(std::time::Duration::from_secs),
        topic_cleanup_give_up: args
            .topic_cleanup_give_up_seconds
            .map(std::time::Duration::from_secs),
        allow_insecure_webhooks: args.allow_insecure_webhooks,
        allowed_hosts: AllowList(args.allowed_hosts.clone()),
    };

    // One lag cache for the external metrics API and the reconciles (scale to zero, status): a
    // stage's lag is measured at most once per interval in this process, whoever asks.
    let lag = Arc::new(LagCache::new(
        KafkaLagSource::new(client.clone(), AdminSettings::default().request_timeout),
        CacheSettings {
            interval: std::time::Duration::from_secs(args.lag_interval_seconds),
            ..CacheSettings::default()
        },
        metrics.clone(),
    ));
    // Every replica answers the external metrics API, leader or standby (see external_metrics).
    if let Some(dir) = &args.external_metrics_cert_dir {
        tokio::spawn(external_metrics::run(
            args.external_metrics_addr,
            dir.clone(),
            client.clone(),
            Arc::clone(&lag),
            metrics.clone(),
            shutdown.clone(),
        ));
    }

    // Leadership: only the holder reconciles; losing the lease ends the process so a fresh start
    // rejoins as a candidate with clean caches.
    let leadership = CancellationToken::new();
    let lease = if args.leader_election {
        let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
            .with_namespace(&args.lease_namespace)
            .with_identity(&identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(5)
            .build()
            .await
            .context("setting up the leader lease")?;
        let (mut leader, task) = manager.watch().await;
        health.set_ready(true);
        info!(%identity, lease = LEASE_NAME, "waiting for leadership");
        loop {
            if *leader.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = leader.changed() => changed.context("lease manager stopped")?,
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        let lost = leadership.clone();
        let watcher = tokio::spawn(async move {
            while leader.changed().await.is_ok() {
                if !*leader.borrow_and_update() {
                    break;
                }
            }
            lost.cancel();
            leader
        });
        Some((watcher, task))
    } else {
        None
    };
    metrics.set_leader(true);
    info!(%identity, "leading: reconciling OrderPipelines");

    let shared = controller::Shared {
        client: client.clone(),
        settings,
        kafka: Arc::new(AdminPool::new(AdminSettings::default())),
        metrics: metrics.clone(),
        reporter: Reporter {
            controller: "orderpipe-operator".into(),
            instance: Some(identity),
        },
        watch_namespace: args.watch_namespace.clone(),
        lag,
    };
    let mut lost_leadership = false;
    loop {
        // detect waits while the apiserver cannot say what it serves; a shutdown or a lost lease
        // must still end the process.
        let capabilities = tokio::select! {
            capabilities = capabilities::detect(&client) => capabilities,
            () = shutdown.cancelled() => break,
            () = leadership.cancelled() => {
                lost_leadership = true;
                break;
            }
        };
        health.set_ready(true);
        let stop = CancellationToken::new();
        let restart = tokio::spawn({
            let (client, stop, shutdown, leadership) = (
                client.clone(),
                stop.clone(),
                shutdown.clone(),
                leadership.clone(),
            );
            async move {
                tokio::select! {
                    () = capabilities::changed(client, capabilities) => {}
                    () = shutdown.cancelled() => {}
                    () = leadership.cancelled() => {}
                }
                stop.cancel();
            }
        });
        controller::run(shared.clone(), capabilities, stop.cancelled_owned()).await;
        restart.abort();
        if leadership.is_cancelled() {
            lost_leadership = true;
            break;
        }
        if shutdown.is_cancelled() {
            break;
        }
    }

    metrics.set_leader(false);
    if let Some((watcher, task)) = lease {
        watcher.abort();
        // Closing the channel ends the lease task; releasing lets a standby take over at once.
        if let Ok(Ok(manager)) = task.await
            && let Err(error) = manager.release().await
        {
            error!(%error, "could not release the leader lease");
        }
    }
    shutdown.cancel();
    let _ = server.await;
    if lost_leadership {
        anyhow::bail!("lost the leader lease");
    }
    info!("stopped");
    Ok(())
}

fn parse_node_selector(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

/// `key=value:Effect` tolerates that exact taint; `key:Effect` any value of the key.
fn parse_toleration(text: &str) -> Result<Toleration, String> {
    let (taint, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not key[=value]:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(format!(
            "{effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value, operator) = match taint.split_once('=') {
        Some((key, value)) => (key, Some(value.to_string()), "Equal"),
        None => (taint, None, "Exists"),
    };
    Ok(Toleration {
        key: Some(key.into()),
        value,
        operator: Some(operator.into()),
        effect: Some(effect.into()),
        toleration_seconds: None,
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,rdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    info!("shutdown requested");
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_port_replaces_the_port_of_the_metrics_address() {
        let args = |extra: &[&str]| {
            Args::try_parse_from(["orderpipe-operator"].iter().chain(extra)).expect("valid flags")
        };
        assert_eq!(args(&[]).metrics_address().to_string(), "0.0.0.0:8080");
        assert_eq!(
            args(&["--metrics-port", "41234"])
                .metrics_address()
                .to_string(),
            "0.0.0.0:41234"
        );
        assert_eq!(
            args(&[
                "--metrics-addr",
                "127.0.0.1:9000",
                "--metrics-port",
                "41234"
            ])
            .metrics_address()
            .to_string(),
            "127.0.0.1:41234"
        );
    }
}
