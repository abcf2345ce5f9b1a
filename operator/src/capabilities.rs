//! What the cluster serves (Argo Rollouts, Prometheus Operator ServiceMonitors), detected at start
//! and periodically afterwards, so the operator uses a CRD installed after it started.
//!
//! [`Capabilities`] is plain data the pure modules decide with; [`detect`] and [`changed`] are the
//! I/O, and they only read (discovery). The controller is restarted by `main` when the answer
//! changes, because its watches are set up per served kind.

use std::time::Duration;

use kube::Client;
use tracing::{info, warn};

/// Cluster features detected at start and whenever CRDs change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// argoproj.io Rollouts and AnalysisTemplates are served.
    pub rollouts: bool,
    /// monitoring.coreos.com ServiceMonitors are served.
    pub service_monitors: bool,
}

/// How often discovery is repeated.
pub const POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Asks the apiserver which optional kinds it serves. A failed lookup counts as "not served" for
/// that group, which only makes the operator more conservative.
pub async fn detect(client: &Client) -> Capabilities {
    let serves = |group_version: &'static str, kinds: &'static [&'static str]| {
        let client = client.clone();
        async move {
            match client.list_api_group_resources(group_version).await {
                Ok(list) => kinds
                    .iter()
                    .all(|kind| list.resources.iter().any(|r| r.kind == *kind)),
                Err(kube::Error::Api(status)) if status.code == 404 => false,
                Err(error) => {
                    warn!(%error, group_version, "discovery failed; treating the kinds as not served");
                    false
                }
            }
        }
    };
    Capabilities {
        rollouts: serves("argoproj.io/v1alpha1", &["Rollout", "AnalysisTemplate"]).await,
        service_monitors: serves("monitoring.coreos.com/v1", &["ServiceMonitor"]).await,
    }
}

/// Resolves when the served kinds differ from `current`.
pub async fn changed(client: Client, current: Capabilities) {
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = detect(&client).await;
        if now != current {
            info!(before = ?current, after = ?now, "cluster capabilities changed");
            return;
        }
    }
}
