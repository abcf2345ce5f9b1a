//! What the stack's Prometheus scrapes: the targets the cluster's ServiceMonitors
//! (monitoring.coreos.com/v1) select, written as a Prometheus file-SD file that Prometheus follows.
//!
//! The Prometheus Operator would turn each ServiceMonitor into a scrape job over the selected
//! Services' Endpoints. Two things rule that out here: the apiserver refuses loopback addresses in
//! Endpoints and EndpointSlices, and node-agent pods listen on 127.0.0.1 (each container port on a
//! host port published in the pod annotation `orderpipe.dev/local-ports`); and Debian's Prometheus
//! is built without Kubernetes service discovery. So this module does the operator's part, resolving
//! Services to pods through their selectors instead of Endpoints: for every ServiceMonitor, the
//! Services its `selector` (`matchLabels`) picks in its `namespaceSelector` (default: its own
//! namespace; `any`, `matchNames`), for each of its `endpoints[]` the Service port of that name,
//! and the Service's pods that run (`Running`, not being deleted) with that port's target port
//! mapped to a host port. Labels as the Prometheus Operator sets them (`namespace`, `service`,
//! `pod`, `container`, `endpoint`, `job` = the Service's name, the endpoint's `path`) plus the
//! monitor's `podTargetLabels`. Not followed: `matchExpressions`, `targetLabels`, `jobLabel`,
//! relabelings, TLS and auth settings, and the interval (the stack scrapes every 5 s).
//!
//! [`target_groups`] is pure; [`run`] polls the apiserver and rewrites the file when the targets
//! change (atomically: Prometheus watches the file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// Pod annotation in which a node agent publishes its pods' host ports (`metrics=41234,...`);
/// the node agent's `LOCAL_PORTS_ANNOTATION`, which this crate cannot import.
const LOCAL_PORTS_ANNOTATION: &str = "orderpipe.dev/local-ports";
/// How often the targets are recomputed: a new pod is scraped within this plus a scrape interval.
const POLL: Duration = Duration::from_secs(2);

/// Recomputes the targets every [`POLL`] and writes them to `file` when they change, until the
/// task is aborted. A failed list keeps the last file (a restarted apiserver must not empty it).
pub(crate) async fn run(client: Client, file: PathBuf) {
    let monitors: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
            "servicemonitors",
        ),
    );
    let services: Api<Service> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client);
    let all = ListParams::default();
    let mut written = None;
    loop {
        let listed = tokio::try_join!(monitors.list(&all), services.list(&all), pods.list(&all));
        if let Ok((monitors, services, pods)) = listed {
            let groups = Value::Array(target_groups(&monitors.items, &services.items, &pods.items));
            if written.as_ref() != Some(&groups) && write(&file, &groups).is_ok() {
                written = Some(groups);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

fn write(file: &Path, groups: &Value) -> std::io::Result<()> {
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, groups.to_string())?;
    std::fs::rename(&tmp, file)
}

/// One file-SD target group per scraped pod endpoint, in a stable order.
pub(crate) fn target_groups(
    monitors: &[DynamicObject],
    services: &[Service],
    pods: &[Pod],
) -> Vec<Value> {
    let mut groups = BTreeMap::new();
    for monitor in monitors {
        let spec = &monitor.data["spec"];
        let Some(selector) = spec.pointer("/selector/matchLabels").map(string_map) else {
            continue;
        };
        let namespaces = monitored_namespaces(monitor);
        let picked = services.iter().filter(|service| {
            namespaces.matches(service.namespace().as_deref())
                && labels_match(&selector, service.labels())
        });
        for service in picked {
            for endpoint in spec["endpoints"].as_array().into_iter().flatten() {
                for (key, group) in endpoint_targets(spec, endpoint, service, pods) {
                    groups.insert(key, group);
                }
            }
        }
    }
    groups.into_values().collect()
}

/// The target groups of one ServiceMonitor endpoint on one Service, keyed for ordering.
fn endpoint_targets(
    spec: &Value,
    endpoint: &Value,
    service: &Service,
    pods: &[Pod],
) -> Vec<(String, Value)> {
    let Some(port_name) = endpoint["port"].as_str() else {
        return Vec::new();
    };
    let Some(service_spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let Some(port) = service_spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(port_name))
    else {
        return Vec::new();
    };
    let Some(pod_selector) = service_spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let namespace = service.namespace().unwrap_or_default();
    let service_name = service.name_any();
    let pod_target_labels: Vec<&str> = spec["podTargetLabels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    pods.iter()
        .filter(|pod| pod.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|pod| labels_match(pod_selector, pod.labels()))
        .filter(|pod| running(pod))
        .filter_map(|pod| {
            let (container, host_port) = host_port(pod, port.target_port.as_ref(), port.port)?;
            let mut labels = BTreeMap::from([
                (
                    "__metrics_path__".to_owned(),
                    endpoint["path"].as_str().unwrap_or("/metrics").to_owned(),
                ),
                ("namespace".to_owned(), namespace.clone()),
                ("service".to_owned(), service_name.clone()),
                ("job".to_owned(), service_name.clone()),
                ("endpoint".to_owned(), port_name.to_owned()),
                ("pod".to_owned(), pod.name_any()),
                ("container".to_owned(), container),
            ]);
            for name in &pod_target_labels {
                if let Some(value) = pod.labels().get(*name) {
                    labels.insert(sanitize(name), value.clone());
                }
            }
            let key = format!("{namespace}/{service_name}/{port_name}/{}", pod.name_any());
            let target = format!("127.0.0.1:{host_port}");
            Some((key, json!({ "targets": [target], "labels": labels })))
        })
        .collect()
}

/// The container and host port behind a Service port's `targetPort` (a container port's name or
/// number; absent means the Service port's number) on a node-agent pod; `None` for a pod whose
/// process does not run on this machine.
fn host_port(pod: &Pod, target: Option<&IntOrString>, service_port: i32) -> Option<(String, u16)> {
    let published = pod.annotations().get(LOCAL_PORTS_ANNOTATION)?;
    let containers = &pod.spec.as_ref()?.containers;
    let (container, port) = containers.iter().find_map(|container| {
        let port = container.ports.iter().flatten().find(|p| match target {
            Some(IntOrString::String(name)) => p.name.as_deref() == Some(name.as_str()),
            Some(IntOrString::Int(number)) => p.container_port == *number,
            None => p.container_port == service_port,
        })?;
        Some((container, port))
    })?;
    // The annotation's key: the port's name, or `container:containerPort` for an unnamed one.
    let key = port
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{}:{}", container.name, port.container_port));
    let host_port = published
        .split(',')
        .find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == key))?
        .1
        .parse()
        .ok()?;
    Some((container.name.clone(), host_port))
}

fn running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Where a ServiceMonitor looks for Services.
enum Namespaces {
    Any,
    Named(Vec<String>),
}

impl Namespaces {
    fn matches(&self, namespace: Option<&str>) -> bool {
        match self {
            Namespaces::Any => true,
            Namespaces::Named(names) => namespace.is_some_and(|ns| names.iter().any(|n| n == ns)),
        }
    }
}

fn monitored_namespaces(monitor: &DynamicObject) -> Namespaces {
    let selector = &monitor.data["spec"]["namespaceSelector"];
    if selector["any"].as_bool() == Some(true) {
        return Namespaces::Any;
    }
    match selector["matchNames"].as_array() {
        Some(names) => Namespaces::Named(
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        None => Namespaces::Named(monitor.namespace().into_iter().collect()),
    }
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// Prometheus's spelling of a Kubernetes label name as a label name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(namespace: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": { "name": "shop-validate", "namespace": namespace },
            "spec": spec,
        }))
        .expect("monitor")
    }

    fn service(namespace: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": "shop-validate", "namespace": namespace,
                          "labels": { "orderpipe.dev/stage": "validate", "other": "x" } },
            "spec": {
                "selector": { "orderpipe.dev/stage": "validate" },
                "ports": [{ "name": "metrics", "port": 9090, "targetPort": "metrics" }],
            },
        }))
        .expect("service")
    }

    fn pod(namespace: &str, name: &str, phase: &str, ports: Option<&str>) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(ports) = ports {
            annotations.insert(LOCAL_PORTS_ANNOTATION.into(), ports.into());
        }
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace, "annotations": annotations,
                          "labels": { "orderpipe.dev/stage": "validate",
                                      "rollouts-pod-template-hash": "abc123" } },
            "spec": { "containers": [{ "name": "worker",
                                       "ports": [{ "name": "metrics", "containerPort": 9090 }] }] },
            "status": { "phase": phase },
        }))
        .expect("pod")
    }

    fn spec() -> Value {
        json!({
            "selector": { "matchLabels": { "orderpipe.dev/stage": "validate" } },
            "podTargetLabels": ["rollouts-pod-template-hash"],
            "endpoints": [{ "port": "metrics", "path": "/metrics", "interval": "15s" }],
        })
    }

    #[test]
    fn a_monitor_selects_the_running_local_pods_of_its_services_at_their_host_ports() {
        let pods = [
            pod("a", "shop-validate-1", "Running", Some("metrics=41234")),
            // kwok's pods run no process: no annotation, no target.
            pod("a", "shop-validate-2", "Running", None),
            pod("a", "shop-validate-3", "Pending", Some("metrics=41235")),
            // Same labels in another namespace: not this Service's pod.
            pod("b", "shop-validate-4", "Running", Some("metrics=41236")),
        ];
        let groups = target_groups(
            &[monitor("a", spec())],
            &[service("a"), service("b")],
            &pods,
        );
        assert_eq!(
            groups,
            [json!({
                "targets": ["127.0.0.1:41234"],
                "labels": {
                    "__metrics_path__": "/metrics",
                    "namespace": "a",
                    "service": "shop-validate",
                    "job": "shop-validate",
                    "endpoint": "metrics",
                    "pod": "shop-validate-1",
                    "container": "worker",
                    "rollouts_pod_template_hash": "abc123",
                },
            })]
        );
    }

    #[test]
    fn namespace_selector_and_label_selector_are_honoured() {
        let pods = [
            pod("a", "p1", "Running", Some("health=1,metrics=2")),
            pod("b", "p2", "Running", Some("metrics=3")),
        ];
        let services = [service("a"), service("b")];
        let mut any = spec();
        any["namespaceSelector"] = json!({ "any": true });
        assert_eq!(
            target_groups(&[monitor("a", any)], &services, &pods).len(),
            2
        );
        let mut named = spec();
        named["namespaceSelector"] = json!({ "matchNames": ["b"] });
        let groups = target_groups(&[monitor("a", named)], &services, &pods);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0]["targets"], json!(["127.0.0.1:3"]));
        let mut other = spec();
        other["selector"] = json!({ "matchLabels": { "other": "y" } });
        assert!(target_groups(&[monitor("a", other)], &services, &pods).is_empty());
        let mut wrong_port = spec();
        wrong_port["endpoints"] = json!([{ "port": "http" }]);
        assert!(target_groups(&[monitor("a", wrong_port)], &services, &pods).is_empty());
    }

    #[test]
    fn a_terminating_pod_is_no_target() {
        let mut leaving = pod("a", "p1", "Running", Some("metrics=2"));
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(target_groups(&[monitor("a", spec())], &[service("a")], &[leaving]).is_empty());
    }
}
