//! The operator's HTTP endpoints (served by `orderpipe-probes`): `/metrics`, `/healthz` (the process
//! serves requests) and `/readyz` (the controller's caches are synced and it is reconciling, or it
//! is a healthy standby waiting for the leader lease).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the endpoints report: the registry and one readiness flag.
pub use orderpipe_probes::FlagProbes as Health;

/// Serves the endpoints on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    orderpipe_probes::serve(listener, health, shutdown).await
}
