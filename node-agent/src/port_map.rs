//! Container ports → host ports. Every process of every pod shares the machine's loopback, so two
//! workers cannot both listen on the contract's 9090: the agent gives each declared container
//! port a free local port, tells the worker (and the operator, run as a pod) its metrics port
//! through the contract's env var (`ORDERPIPE_METRICS_PORT`, overriding the operator's literal
//! 9090) and the intake gateway its API port (`ORDERPIPE_INTAKE_PORT`), probes the mapped port,
//! and publishes the mapping in the pod annotation [`LOCAL_PORTS_ANNOTATION`]. Ports are fixed
//! for the pod's life (kept across container restarts, like a hostPort). Must not bind anything.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orderpipe_api::contract;

use orderpipe_stack::{StackError, free_port};

/// Pod annotation with the host port of each container port: `name=port` for named ports,
/// `container:containerPort=port` for unnamed ones, comma-separated and sorted, e.g.
/// `metrics=41234`. The demo's live view scrapes workers through it.
pub const LOCAL_PORTS_ANNOTATION: &str = "orderpipe.dev/local-ports";
/// The port name whose host port [`PortMap::env_for`] passes on, as worker pods and the operator's
/// Deployment name their metrics port.
const METRICS_PORT_NAME: &str = "metrics";
/// The port name of the intake gateway's API, as the operator names it.
const INTAKE_PORT_NAME: &str = "http";

/// One container port and the host port it is mapped to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    container: String,
    name: Option<String>,
    container_port: i32,
    host_port: u16,
}

impl Mapping {
    fn key(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("{}:{}", self.container, self.container_port),
        }
    }
}

/// The host ports of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PortMap {
    mappings: Vec<Mapping>,
}

impl PortMap {
    /// A free host port for every port every container declares.
    pub fn allocate(containers: &[Container]) -> Result<PortMap, StackError> {
        let mut mappings = Vec::new();
        for container in containers {
            for port in container.ports.iter().flatten() {
                mappings.push(Mapping {
                    container: container.name.clone(),
                    name: port.name.clone().filter(|n| !n.is_empty()),
                    container_port: port.container_port,
                    host_port: free_port()?,
                });
            }
        }
        Ok(PortMap { mappings })
    }

    /// The value of [`LOCAL_PORTS_ANNOTATION`]; `None` when the pod declares no ports.
    pub fn annotation(&self) -> Option<String> {
        let mut pairs: Vec<String> = self
            .mappings
            .iter()
            .map(|m| format!("{}={}", m.key(), m.host_port))
            .collect();
        pairs.sort();
        (!pairs.is_empty()).then(|| pairs.join(","))
    }

    /// Env vars the agent sets for `container` (overriding the pod's own values): the contract's
    /// metrics port variable, with the host port of the container's port named `metrics` or else
    /// of the contract's metrics port. By name too, so any image that names its metrics port so and
    /// honours the variable (the operator's 8080 does) runs here without the agent knowing it. And
    /// the intake gateway's API port variable, with the host port of the port named `http`.
    pub fn env_for(&self, container: &str) -> BTreeMap<String, String> {
        let own = || self.mappings.iter().filter(|m| m.container == container);
        let named = |name: &str| own().find(|m| m.name.as_deref() == Some(name));
        let metrics = named(METRICS_PORT_NAME)
            .or_else(|| own().find(|m| m.container_port == i32::from(contract::METRICS_PORT)))
            .map(|m| (contract::env::METRICS_PORT, m.host_port));
        let intake = named(INTAKE_PORT_NAME).map(|m| (contract::env::INTAKE_PORT, m.host_port));
        metrics
            .into_iter()
            .chain(intake)
            .map(|(variable, port)| (variable.to_owned(), port.to_string()))
            .collect()
    }

    /// Where a probe of `container` connects for `port`: a named port or a declared number maps to
    /// its host port; an undeclared number is used as is (nothing was mapped for it).
    pub fn host_port(&self, container: &str, port: &IntOrString) -> Option<u16> {
        let own = || self.mappings.iter().filter(|m| m.container == container);
        match port {
            IntOrString::String(name) => own()
                .find(|m| m.name.as_deref() == Some(name.as_str()))
                .map(|m| m.host_port),
            IntOrString::Int(number) => own()
                .find(|m| m.container_port == *number)
                .map(|m| m.host_port)
                .or_else(|| u16::try_from(*number).ok()),
        }
    }
}

/// The host ports the agent published on `pod` (see [`LOCAL_PORTS_ANNOTATION`]), by port name.
/// Empty for a pod the agent has not started (or that is not on an agent's node).
pub fn local_ports(pod: &Pod) -> BTreeMap<String, u16> {
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LOCAL_PORTS_ANNOTATION));
    annotation
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter_map(|pair| {
            let (name, port) = pair.split_once('=')?;
            Some((name.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn containers() -> Vec<Container> {
        serde_json::from_value(json!([
            { "name": "worker", "ports": [
                { "name": "metrics", "containerPort": 9090 },
                { "containerPort": 8081 },
            ] },
            { "name": "sidecar", "ports": [{ "name": "admin", "containerPort": 9090 }] },
        ]))
        .expect("containers")
    }

    #[test]
    fn every_declared_port_gets_its_own_host_port() {
        let map = PortMap::allocate(&containers()).expect("ports");
        let mut ports: Vec<u16> = map.mappings.iter().map(|m| m.host_port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 3);
        assert!(!ports.contains(&9090));
    }

    #[test]
    fn the_annotation_round_trips_through_local_ports() {
        let map = PortMap::allocate(&containers()).expect("ports");
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(BTreeMap::from([(
            LOCAL_PORTS_ANNOTATION.to_owned(),
            map.annotation().expect("ports declared"),
        )]));
        let ports = local_ports(&pod);
        assert_eq!(
            ports.keys().map(String::as_str).collect::<Vec<_>>(),
            ["admin", "metrics", "worker:8081"]
        );
        assert_eq!(
            ports.get("metrics").copied(),
            map.host_port("worker", &IntOrString::String("metrics".into()))
        );
        assert_eq!(PortMap::default().annotation(), None);
    }

    #[test]
    fn the_worker_learns_its_metrics_port_through_the_contract_variable() {
        let map = PortMap::allocate(&containers()).expect("ports");
        let metrics = map.host_port("worker", &IntOrString::Int(9090));
        let env = map.env_for("worker");
        assert_eq!(
            env.get(contract::env::METRICS_PORT).map(String::as_str),
            metrics.map(|p| p.to_string()).as_deref()
        );
        // Each container is told its own mapping of 9090.
        assert_ne!(
            map.env_for("sidecar").get(contract::env::METRICS_PORT),
            env.get(contract::env::METRICS_PORT)
        );
    }

    #[test]
    fn the_intake_gateway_learns_its_api_port_through_the_contract_variable() {
        let gateway: Vec<Container> = serde_json::from_value(json!([
            { "name": "worker", "ports": [
                { "name": "http", "containerPort": 8080 },
                { "name": "metrics", "containerPort": 9090 },
            ] },
        ]))
        .expect("containers");
        let map = PortMap::allocate(&gateway).expect("ports");
        let env = map.env_for("worker");
        let port = |name: &str| {
            map.host_port("worker", &IntOrString::String(name.into()))
                .map(|p| p.to_string())
        };
        assert_eq!(env.get(contract::env::INTAKE_PORT), port("http").as_ref());
        assert_eq!(
            env.get(contract::env::METRICS_PORT),
            port("metrics").as_ref()
        );
        // A worker without an API port is told none.
        let worker = PortMap::allocate(&containers()).expect("ports");
        assert_eq!(
            worker.env_for("worker").get(contract::env::INTAKE_PORT),
            None
        );
    }

    #[test]
    fn a_port_named_metrics_is_the_metrics_port_whatever_its_number() {
        let operator: Vec<Container> = serde_json::from_value(json!([
            { "name": "operator", "ports": [
                { "name": "webhook", "containerPort": 9090 },
                { "name": "metrics", "containerPort": 8080 },
            ] },
        ]))
        .expect("containers");
        let map = PortMap::allocate(&operator).expect("ports");
        let metrics = map.host_port("operator", &IntOrString::String("metrics".into()));
        assert_eq!(
            map.env_for("operator")
                .get(contract::env::METRICS_PORT)
                .map(String::as_str),
            metrics.map(|p| p.to_string()).as_deref()
        );
    }

    #[test]
    fn probes_resolve_names_and_numbers_per_container() {
        let map = PortMap::allocate(&containers()).expect("ports");
        assert_ne!(
            map.host_port("worker", &IntOrString::Int(9090)),
            map.host_port("sidecar", &IntOrString::Int(9090))
        );
        assert_eq!(
            map.host_port("worker", &IntOrString::String("admin".into())),
            None
        );
        assert_eq!(map.host_port("worker", &IntOrString::Int(7000)), Some(7000));
    }
}
