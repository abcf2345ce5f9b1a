//! The stage's metrics endpoint: a Service and, where the Prometheus Operator is installed, a
//! ServiceMonitor (monitoring.coreos.com/v1) scraping it.
//!
//! Pure. Owns the Service and ServiceMonitor kinds. The worker serves no traffic besides
//! `/metrics`, `/healthz` and `/readyz`, so the Service exists for scraping only.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orderpipe_api::contract::METRICS_PORT;
use serde_json::{Value, json};

use super::StageContext;
use super::analysis::ROLLOUTS_POD_HASH;
use super::pod::{METRICS_PATH, METRICS_PORT_NAME};

/// Matches the `rate()` window of the canary analysis (several samples per window).
const SCRAPE_INTERVAL: &str = "15s";

pub(super) fn desired_service(ctx: &StageContext<'_>) -> Service {
    Service {
        metadata: ctx.metadata(),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(ctx.selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some(METRICS_PORT_NAME.into()),
                port: METRICS_PORT.into(),
                target_port: Some(IntOrString::String(METRICS_PORT_NAME.into())),
                // Part of the list's merge key: server-side apply rejects a port without it.
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Selects exactly this stage's Service (its selector labels) in the pipeline's namespace.
pub(super) fn desired_service_monitor(ctx: &StageContext<'_>) -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": ctx.metadata(),
        "spec": {
            "selector": ctx.selector(),
            // Tells canary and stable pods of a Rollout apart for the canary analysis.
            "podTargetLabels": [ROLLOUTS_POD_HASH],
            "endpoints": [{
                "port": METRICS_PORT_NAME,
                "path": METRICS_PATH,
                "interval": SCRAPE_INTERVAL,
            }],
        },
    })
}
