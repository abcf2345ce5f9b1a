//! The shop's notification endpoint for the run: counts 2xx deliveries per `Idempotency-Key`
//! (`orderId:version:channel`), so the books can show each notification arrived once. It can
//! also play an outage ([`WebhookReceiver::set_failing`]: 503 to every delivery) for the tests of
//! retries and alerts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    failing: AtomicBool,
    refused: AtomicU64,
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

    /// While `failing`, every delivery is answered 503 Service Unavailable (a transient failure the
    /// notify stage retries) and not counted as delivered.
    pub fn set_failing(&self, failing: bool) {
        self.received.failing.store(failing, Ordering::Relaxed);
    }

    /// Deliveries answered 503 while failing.
    pub fn refused(&self) -> u64 {
        self.received.refused.load(Ordering::Relaxed)
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
    if received.failing.load(Ordering::Relaxed) {
        received.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Ok(mut deliveries) = received.deliveries.lock() {
        *deliveries.entry(key.to_owned()).or_default() += 1;
    }
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn deliver(receiver: &WebhookReceiver, key: &str) -> u16 {
        reqwest::Client::new()
            .post(receiver.url())
            .header("Idempotency-Key", key)
            .send()
            .await
            .expect("the receiver answers")
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn an_outage_refuses_deliveries_with_503_and_counts_none_as_delivered() {
        let receiver = WebhookReceiver::start().await.expect("starts");
        receiver.set_failing(true);
        assert_eq!(deliver(&receiver, "o-1:1:webhook").await, 503);
        assert_eq!((receiver.refused(), receiver.counts()), (1, (0, 0)));
        receiver.set_failing(false);
        assert_eq!(deliver(&receiver, "o-1:1:webhook").await, 204);
        assert_eq!((receiver.refused(), receiver.counts()), (1, (1, 1)));
    }
}
