//! The shop's notification endpoint for the run: counts 2xx deliveries per `Idempotency-Key`
//! (`orderId:version:channel`), so the books can show each notification arrived once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use http::{HeaderMap, StatusCode};
use tokio_util::sync::CancellationToken;

use super::DemoError;

#[derive(Debug, Default)]
struct Received {
    deliveries: Mutex<HashMap<String, u64>>,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct WebhookReceiver {
    url: String,
    received: Arc<Received>,
    stop: CancellationToken,
}

impl WebhookReceiver {
    /// Serves `POST /order-updates` on a free 127.0.0.1 port of the current runtime.
    pub async fn start() -> Result<WebhookReceiver, DemoError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| {
                DemoError::io("binding the webhook receiver", "127.0.0.1:0", source)
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| DemoError::io("webhook receiver address", "127.0.0.1:0", source))?;
        let received = Arc::new(Received::default());
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/order-updates", post(receive))
            .with_state(Arc::clone(&received));
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(%error, "webhook receiver stopped");
            }
        });
        Ok(WebhookReceiver {
            url: format!("http://{addr}/order-updates"),
            received,
            stop,
        })
    }

    /// The URL the notify stage posts to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Deliveries per idempotency key.
    pub fn deliveries(&self) -> HashMap<String, u64> {
        self.received
            .deliveries
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// (distinct idempotency keys, deliveries in total).
    pub fn counts(&self) -> (usize, u64) {
        let deliveries = self.deliveries();
        (deliveries.len(), deliveries.values().sum())
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(State(received): State<Arc<Received>>, headers: HeaderMap) -> StatusCode {
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        // A notification without its key is a contract violation: permanent, dead-lettered.
        return StatusCode::BAD_REQUEST;
    };
    if let Ok(mut deliveries) = received.deliveries.lock() {
        *deliveries.entry(key.to_owned()).or_default() += 1;
    }
    StatusCode::NO_CONTENT
}
