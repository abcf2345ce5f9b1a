//! The worker's HTTP endpoints on the contract's metrics port (served by `orderpipe-probes`):
//! `/metrics`, `/healthz` (the loop is not wedged) and `/readyz` (the loop runs, every assigned
//! partition's state is restored, and finished records do not wait too long for a commit). Must not change what it reports.

use std::sync::Arc;

use orderpipe_probes::Probes;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::runtime::Health;

/// What the endpoints serve.
#[derive(Debug)]
pub struct Endpoints {
    pub registry: Registry,
    pub health: Arc<Health>,
}

impl Probes for Endpoints {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn live(&self) -> Result<(), &'static str> {
        if self.health.is_live() {
            Ok(())
        } else {
            Err("the consume loop is not making progress")
        }
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.health.is_commit_stalled() {
            Err(
                "finished records have waited too long for a commit: the brokers are unreachable \
                 or refuse writes (fewer in-sync replicas than min.insync.replicas?)",
            )
        } else if self.health.is_ready() {
            Ok(())
        } else {
            Err("starting, restoring partition state, or stopping")
        }
    }
}

/// Serves the endpoints on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    endpoints: Arc<Endpoints>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    orderpipe_probes::serve(listener, endpoints, stop.cancelled_owned()).await
}
