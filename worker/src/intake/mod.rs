//! The intake gateway (`orderpipe-worker intake`): shops POST orders over HTTP and read their
//! status back. It is a mode of the worker binary, not a crate of its own, because it is the
//! pipeline's HTTP source: it shares the worker's Kafka connection contract and client
//! configuration (TLS, SASL, the idempotent producer), its metrics endpoint and image, so the
//! operator runs it from the same image as the stages.
//!
//! - [`http`]: the API, its answers and its OpenAPI document;
//! - [`ledger`]: idempotency by orderId and `Idempotency-Key`; [`auth`]: bearer tokens;
//! - [`status_view`]: the bounded read model behind GET; [`kafka`]: the producer and the feed.
//!
//! This module wires them from the command line and runs them until shutdown. The design is in
//! `docs/intake.md`.

pub mod auth;
pub mod http;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod status_view;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use orderpipe_api::contract::{INTAKE_PORT, KafkaConnection, METRICS_PORT};
use orderpipe_orders::validate::Validator;
use orderpipe_probes::Probes;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::auth::Tokens;
use self::http::Intake;
use self::kafka::OrderSink;
use self::metrics::IntakeMetrics;

/// How often the broker is probed while it is down.
const BROKER_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long shutdown waits for records already handed to the producer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's settings. The Kafka connection comes from the worker contract's
/// `ORDERPIPE_KAFKA_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct IntakeArgs {
    /// The pipeline's name (the `pipeline` label of every metric).
    #[arg(long, env = "ORDERPIPE_PIPELINE")]
    pub pipeline: String,
    /// This replica's name (Kafka client id).
    #[arg(long, env = "ORDERPIPE_POD_NAME", default_value = "orderpipe-intake")]
    pub pod_name: String,
    /// The topic orders are produced to (the validate stage's input).
    #[arg(long, env = "ORDERPIPE_INTAKE_ORDERS_TOPIC")]
    pub orders_topic: String,
    /// The status stage's `StatusChanged` output, read for GET.
    #[arg(long, env = "ORDERPIPE_INTAKE_STATUS_TOPIC")]
    pub status_topic: String,
    /// Port of the API (all interfaces).
    #[arg(long, env = "ORDERPIPE_INTAKE_PORT", default_value_t = INTAKE_PORT)]
    pub port: u16,
    /// Port of /metrics, /healthz and /readyz (all interfaces).
    #[arg(long, env = "ORDERPIPE_METRICS_PORT", default_value_t = METRICS_PORT)]
    pub metrics_port: u16,
    /// Bearer tokens, one per line with optional scopes (a Secret's key; see docs/intake.md).
    /// Pass it in the environment: a command line is readable by every user of the machine.
    #[arg(long, env = "ORDERPIPE_INTAKE_TOKENS", hide_env_values = true)]
    pub tokens: String,
    /// Orders (and as many idempotency keys) the ledger remembers.
    #[arg(
        long,
        env = "ORDERPIPE_INTAKE_IDEMPOTENCY_ENTRIES",
        default_value = "100000"
    )]
    pub idempotency_entries: NonZeroUsize,
    /// Orders the status view holds.
    #[arg(
        long,
        env = "ORDERPIPE_INTAKE_STATUS_ENTRIES",
        default_value = "100000"
    )]
    pub status_entries: NonZeroUsize,
    /// Records waiting for the broker's acknowledgement at most; a POST beyond is answered 429.
    #[arg(
        long,
        env = "ORDERPIPE_INTAKE_QUEUE_MESSAGES",
        default_value = "100000"
    )]
    pub queue_messages: NonZeroUsize,
    /// How long a POST waits for the broker's acknowledgement before answering 503.
    #[arg(
        long,
        env = "ORDERPIPE_INTAKE_DELIVERY_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub delivery_timeout_ms: u64,
}

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Contract(#[from] orderpipe_api::contract::ContractError),
    #[error(transparent)]
    Tokens(#[from] auth::TokensError),
    #[error("creating a Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("serving HTTP on {addr}: {source}")]
    Serve {
        addr: String,
        source: std::io::Error,
    },
}

/// `/healthz` and `/readyz` of the gateway.
#[derive(Debug)]
struct Endpoints {
    registry: Registry,
    intake: Arc<Intake>,
}

impl Probes for Endpoints {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn live(&self) -> Result<(), &'static str> {
        if self.intake.sink.broker.is_fatal() {
            Err("the producer hit a fatal error; a new process recovers")
        } else {
            Ok(())
        }
    }

    fn ready(&self) -> Result<(), &'static str> {
        self.intake.ready()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, IntakeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| IntakeError::Serve {
            addr: addr.to_string(),
            source,
        })
}

/// Runs the gateway until `shutdown` is cancelled, then answers the requests in progress.
pub async fn run(
    args: IntakeArgs,
    kafka: KafkaConnection,
    shutdown: CancellationToken,
) -> Result<(), IntakeError> {
    let tokens = Tokens::from_text(&args.tokens)?;
    let (registry, metrics) = IntakeMetrics::registry(&args.pipeline);
    let metrics = Arc::new(metrics);
    let sink = Arc::new(OrderSink::new(
        &kafka,
        &args.pod_name,
        &args.orders_topic,
        Duration::from_millis(args.delivery_timeout_ms),
        args.queue_messages,
    )?);
    let intake = Arc::new(Intake::new(
        Validator::default(),
        tokens,
        Arc::clone(&sink),
        args.idempotency_entries,
        args.status_entries,
        Arc::clone(&metrics),
    ));
    let background = CancellationToken::new();
    tokio::spawn(Arc::clone(&sink).watch(BROKER_PROBE_INTERVAL, background.clone()));
    let feed = {
        let intake = Arc::clone(&intake);
        let client_id = format!("{}.status-view", args.pod_name);
        let stop = background.clone();
        tokio::spawn(async move {
            let fed = kafka::feed_status_view(
                &kafka,
                &client_id,
                &args.status_topic,
                Arc::clone(&intake.view),
                Arc::clone(&intake.view_caught_up),
                Arc::clone(&intake.metrics),
                stop,
            )
            .await;
            if let Err(error) = fed {
                tracing::error!(%error, "the status view's consumer failed; GET answers stay as they are");
            }
        })
    };

    let probes = Arc::new(Endpoints {
        registry,
        intake: Arc::clone(&intake),
    });
    let metrics_listener = bind(SocketAddr::from(([0, 0, 0, 0], args.metrics_port))).await?;
    let api_addr = SocketAddr::from(([0, 0, 0, 0], args.port));
    let api_listener = bind(api_addr).await?;
    tracing::info!(api = %api_addr, metrics_port = args.metrics_port, "intake gateway serving");
    let probes_server = tokio::spawn(orderpipe_probes::serve(
        metrics_listener,
        probes,
        background.clone().cancelled_owned(),
    ));
    let served = axum::serve(api_listener, http::router(Arc::clone(&intake)))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    background.cancel();
    let _ = feed.await;
    let _ = probes_server.await;
    let flush = Arc::clone(&sink);
    let _ = tokio::task::spawn_blocking(move || flush.flush(FLUSH_TIMEOUT)).await;
    served.map_err(|source| IntakeError::Serve {
        addr: api_addr.to_string(),
        source,
    })
}
