//! The HTTP endpoints both binaries serve, written once: `/metrics` (the process's registry as
//! OpenMetrics text), `/healthz` (liveness) and `/readyz` (readiness). What "live" and "ready"
//! mean is each binary's business ([`Probes`]); how they are served is this crate's.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The content type Prometheus negotiates for OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a process reports on its endpoints. `Err` carries the human-readable reason the probe
/// fails, which is the response body (kubectl and `curl` users read it).
pub trait Probes: Send + Sync + 'static {
    fn registry(&self) -> &Registry;
    fn live(&self) -> Result<(), &'static str>;
    fn ready(&self) -> Result<(), &'static str>;
}

/// Probes of a process that is live while it serves requests and ready when one flag says so
/// (the operator: caches synced and reconciling, or a healthy standby).
#[derive(Debug, Default)]
pub struct FlagProbes {
    pub registry: Registry,
    pub ready: AtomicBool,
}

impl FlagProbes {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

impl Probes for FlagProbes {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn live(&self) -> Result<(), &'static str> {
        Ok(())
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("starting")
        }
    }
}

/// The endpoints as a router, for serving or for tests.
pub fn router<P: Probes>(probes: Arc<P>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<P>))
        .route(
            "/healthz",
            get(|State(p): State<Arc<P>>| async move { probe(p.live(), "ok") }),
        )
        .route(
            "/readyz",
            get(|State(p): State<Arc<P>>| async move { probe(p.ready(), "ready") }),
        )
        .with_state(probes)
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve<P: Probes>(
    listener: TcpListener,
    probes: Arc<P>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(probes))
        .with_graceful_shutdown(shutdown)
        .await
}

fn probe(result: Result<(), &'static str>, ok: &'static str) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, ok).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn metrics<P: Probes>(State(probes): State<Arc<P>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, probes.registry()) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let status = response[9..12].parse().expect("status code");
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn endpoints_report_liveness_readiness_with_reasons_and_the_registry() {
        let mut probes = FlagProbes::default();
        let counter = Counter::<u64>::default();
        counter.inc();
        probes
            .registry
            .register("probe_test", "a test counter", counter);
        let probes = Arc::new(probes);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, Arc::clone(&probes), std::future::pending()));

        assert_eq!(get(addr, "/healthz").await, (200, "ok".to_owned()));
        assert_eq!(get(addr, "/readyz").await, (503, "starting".to_owned()));
        probes.set_ready(true);
        assert_eq!(get(addr, "/readyz").await, (200, "ready".to_owned()));
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("probe_test_total 1"), "{body}");
        server.abort();
    }
}
