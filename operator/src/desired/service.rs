//! A component's Service and, where the Prometheus Operator is installed, a ServiceMonitor
//! (monitoring.coreos.com/v1) scraping it.
//!
//! Pure. Owns the Service and ServiceMonitor kinds. A stage's worker serves no traffic besides
//! `/metrics`, `/healthz` and `/readyz`, so its Service exists for scraping only and is headless
//! (see [`Address`]); the intake gateway's also carries the API, which clients in the cluster reach
//! through its virtual IP.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::ComponentMeta;
use super::analysis::ROLLOUTS_POD_HASH;
use super::pod::{METRICS_PATH, METRICS_PORT_NAME};

/// Matches the `rate()` window of the canary analysis (several samples per window).
const SCRAPE_INTERVAL: &str = "15s";

/// How a component's Service is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Address {
    /// A virtual IP balancing over the pods, for clients that call the component.
    Virtual,
    /// No virtual IP (`clusterIP: None`), for a Service that only names the pods: Prometheus
    /// scrapes each pod at the address its EndpointSlices list, never through a virtual IP. It
    /// spares the cluster an IP allocation per stage (an IPAddress object written with every
    /// Service) and every node's kube-proxy the rules for it. `clusterIP` is immutable, so a
    /// Service created with a virtual IP by an older operator is replaced (`child_plan`).
    Headless,
}

/// The `clusterIP` of a headless Service.
const HEADLESS: &str = "None";

/// Serves each of the pod's named `ports` on the same number, targeting the port by name.
pub(super) fn desired_service(
    meta: &ComponentMeta<'_>,
    ports: &[(&str, u16)],
    address: Address,
) -> Service {
    Service {
        metadata: meta.metadata(),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: (address == Address::Headless).then(|| HEADLESS.into()),
            selector: Some(meta.selector_labels()),
            ports: Some(
                ports
                    .iter()
                    .map(|&(name, port)| ServicePort {
                        name: Some(name.into()),
                        port: port.into(),
                        target_port: Some(IntOrString::String(name.into())),
                        // Part of the list's merge key: server-side apply rejects a port without it.
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Selects exactly this component's Service (its selector labels) in the pipeline's namespace.
pub(super) fn desired_service_monitor(meta: &ComponentMeta<'_>) -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta.metadata(),
        "spec": {
            "selector": meta.selector(),
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
