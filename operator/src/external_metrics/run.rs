//! The external metrics API as the operator runs it: sets up the front-proxy trust, the serving
//! certificate and the port (retrying until all three are there), keeps the first two fresh, and
//! serves the lag cache's readings (measured in Kafka) until shutdown. The binary and the e2e tests start it through
//! [`run`], so both exercise the same wiring. Must not reconcile or write to the cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{
    CachedAuthorizer, FrontProxyTrust, MetricsApi, ServingCertificate, SubjectAccessReviewer,
    request_header_config, serve,
};
use crate::lag::{KafkaLagSource, LagCache};
use crate::metrics::Metrics;

/// How often the external metrics API re-reads its serving certificate files and the front
/// proxy's settings: well inside the weeks cert-manager leaves between renewal and expiry, and
/// cheap (two small files, one ConfigMap GET).
const TRUST_REFRESH: Duration = Duration::from_secs(60);
/// How long an authorization decision of the external metrics API is reused (kube-apiserver's
/// delegating authorizer's default).
const DECISION_TTL: Duration = Duration::from_secs(10);
/// Pause between two attempts to set the external metrics API up.
const SETUP_RETRY: Duration = Duration::from_secs(10);

/// Serves `external.metrics.k8s.io` on `addr` with the certificate in `cert_dir` until shutdown,
/// answering from `lag` (the caller's cache, which it may share). Setup (the front-proxy settings,
/// the certificate, the port) is retried until it succeeds: on install the RoleBinding that lets
/// the operator read the front-proxy settings, or cert-manager's Secret, may arrive after the pod
/// starts. Meanwhile the operator reconciles and the APIService reports the service unavailable.
pub async fn run(
    addr: SocketAddr,
    cert_dir: PathBuf,
    client: kube::Client,
    lag: Arc<LagCache<KafkaLagSource>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let setup = || async {
        let front_proxy = request_header_config(&client)
            .await
            .map_err(anyhow::Error::msg)?;
        let serving = Arc::new(ServingCertificate::load(&cert_dir)?);
        let trust = Arc::new(FrontProxyTrust::new(Arc::clone(&serving), front_proxy)?);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        anyhow::Ok((serving, trust, listener))
    };
    let (serving, trust, listener) = loop {
        match setup().await {
            Ok(ready) => break ready,
            Err(error) => error!(
                error = format!("{error:#}"),
                retry_in = ?SETUP_RETRY,
                "not serving the external metrics API yet"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(SETUP_RETRY) => {}
            () = shutdown.cancelled() => return,
        }
    };
    info!(%addr, "serving external.metrics.k8s.io");
    tokio::spawn(serving.reload_periodically(TRUST_REFRESH, shutdown.clone()));
    tokio::spawn(Arc::clone(&trust).refresh_periodically(
        client.clone(),
        TRUST_REFRESH,
        shutdown.clone(),
    ));
    let api = MetricsApi {
        lag,
        authorizer: CachedAuthorizer::new(SubjectAccessReviewer::new(client), DECISION_TTL),
        metrics,
    };
    serve(listener, trust, Arc::new(api), shutdown).await;
}
