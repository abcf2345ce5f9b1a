//! The shop's webhook endpoint for the pipeline benchmark: answers every notification 200, at once
//! or after a set time (a real endpoint's answer time), counts deliveries, and notes when each
//! order's first delivery arrived while asked to. Must not fail requests: the benchmark measures
//! the pipeline, not its retries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use orderpipe_orders::headers::IDEMPOTENCY_KEY;

#[derive(Debug, Default)]
struct Received {
    /// How long each request waits for its answer.
    answer_after: Duration,
    deliveries: AtomicU64,
    /// First arrival per orderId, while recording.
    arrivals: Mutex<Option<HashMap<String, Instant>>>,
}

/// A running receiver; it stops with the runtime it was started on.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    received: Arc<Received>,
}

impl Webhook {
    /// A receiver answering each request `answer_after` it arrived.
    pub fn start(runtime: &tokio::runtime::Handle, answer_after: Duration) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("webhook port")?;
        let addr: SocketAddr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let received = Arc::new(Received {
            answer_after,
            ..Received::default()
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&received));
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("webhook listener")?
        };
        runtime.spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("[bench] webhook receiver stopped: {error}");
            }
        });
        Ok(Self {
            url: format!("http://{addr}/hook"),
            received,
        })
    }

    /// Successful deliveries so far (the receiver never fails one, so none is retried).
    pub fn deliveries(&self) -> u64 {
        self.received.deliveries.load(Ordering::Relaxed)
    }

    /// Starts noting first arrivals per orderId, forgetting earlier ones.
    pub fn record_arrivals(&self) {
        if let Ok(mut arrivals) = self.received.arrivals.lock() {
            *arrivals = Some(HashMap::new());
        }
    }

    /// The arrivals noted since [`Webhook::record_arrivals`].
    pub fn arrivals(&self) -> HashMap<String, Instant> {
        self.received
            .arrivals
            .lock()
            .ok()
            .and_then(|arrivals| arrivals.clone())
            .unwrap_or_default()
    }
}

async fn receive(State(received): State<Arc<Received>>, headers: HeaderMap) -> StatusCode {
    let now = Instant::now();
    received.deliveries.fetch_add(1, Ordering::Relaxed);
    let order_id = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
        .and_then(|key| key.split(':').next());
    if let (Some(order_id), Ok(mut arrivals)) = (order_id, received.arrivals.lock())
        && let Some(arrivals) = arrivals.as_mut()
    {
        arrivals.entry(order_id.to_owned()).or_insert(now);
    }
    if !received.answer_after.is_zero() {
        tokio::time::sleep(received.answer_after).await;
    }
    StatusCode::OK
}
