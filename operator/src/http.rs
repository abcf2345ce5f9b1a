//! The operator's HTTP endpoints (served by `orderpipe-probes`): `/metrics`, `/healthz` (the process
//! serves requests) and `/readyz` (the controller's caches are synced and it is reconciling, or it
//! is a healthy standby waiting for the leader lease).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use orderpipe_probes::Probes;
use prometheus_client::registry::Registry;

/// What the endpoints report.
#[derive(Debug)]
pub struct Health {
    pub registry: Registry,
    pub ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

impl Probes for Health {
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

/// Serves the endpoints on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    orderpipe_probes::serve(listener, health, shutdown).await
}
