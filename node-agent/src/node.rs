//! The agent's Node: registration (labels, the NoSchedule taint that keeps every pod but ours
//! away, capacity, a Ready condition, 127.0.0.1 as its address), the kubelet's heartbeat (a Lease
//! in `kube-node-lease` renewed every 10 s plus a fresh NodeReady heartbeat, without which the
//! node lifecycle controller marks the node NotReady and taints it) and deregistration. All
//! writes are server-side applies by [`FIELD_MANAGER`]. Must not touch pods.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::error::NodeAgentError;
use super::launch::POD_IP;

/// Label and taint key of every agent node. Worker pods reach an agent node by tolerating the
/// taint (`--worker-toleration orderpipe.dev/node-agent=true:NoSchedule`) and selecting the label
/// (`--worker-node-selector orderpipe.dev/node-agent=true`); every other pod stays off it.
pub const NODE_AGENT_LABEL: &str = "orderpipe.dev/node-agent";
/// Field manager of every write the agent makes.
pub(crate) const FIELD_MANAGER: &str = "orderpipe-node-agent";
/// How often the agent renews its Lease and the Ready heartbeat, as a kubelet does.
const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_DURATION_SECONDS: i32 = 40;

/// Registers (or re-registers) the node and takes its Lease; returns the node's UID.
pub(crate) async fn register(client: &Client, name: &str) -> Result<String, NodeAgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let node = nodes
        .patch(name, &params, &Patch::Apply(node_manifest(name, false)))
        .await
        .map_err(|e| NodeAgentError::kube(format!("register node {name}"), e))?;
    let uid = node.metadata.uid.unwrap_or_default();
    heartbeat_once(client, name, &uid).await?;
    Ok(uid)
}

/// One heartbeat: renew the Lease, refresh the NodeReady condition.
async fn heartbeat_once(client: &Client, name: &str, uid: &str) -> Result<(), NodeAgentError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let now = Timestamp::now();
    Api::<Node>::all(client.clone())
        .patch_status(name, &params, &Patch::Apply(node_status(name, now)))
        .await
        .map_err(|e| NodeAgentError::kube(format!("update status of node {name}"), e))?;
    Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE)
        .patch(name, &params, &Patch::Apply(lease(name, uid, now)))
        .await
        .map_err(|e| NodeAgentError::kube(format!("renew lease {LEASE_NAMESPACE}/{name}"), e))?;
    Ok(())
}

/// Heartbeats every [`HEARTBEAT`] until `shutdown`; failures are logged and retried next beat.
pub(crate) async fn keep_alive(
    client: Client,
    name: String,
    uid: String,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and `register` just did a heartbeat.
    ticks.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                if let Err(error) = heartbeat_once(&client, &name, &uid).await {
                    tracing::warn!(node = %name, %error, "heartbeat failed; retrying in {HEARTBEAT:?}");
                }
            }
        }
    }
}

/// Waits until the node is Ready and carries no taint but ours: the apiserver taints a new node
/// `not-ready` until the node lifecycle controller has seen it Ready, and pods created before
/// that would sit in the scheduler's back-off.
pub(crate) async fn wait_schedulable(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<(), NodeAgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let waited =
        orderpipe_stack::wait_until(&format!("node {name} schedulable"), timeout, || async {
            let node = nodes.get_opt(name).await.ok().flatten()?;
            (ready(&node) == "True" && foreign_taints(&node).is_empty()).then_some(())
        })
        .await;
    if waited.is_ok() {
        return Ok(());
    }
    let node = nodes.get_opt(name).await.ok().flatten().unwrap_or_default();
    Err(NodeAgentError::NodeNotSchedulable {
        node: name.to_owned(),
        waited: timeout,
        ready: ready(&node),
        taints: foreign_taints(&node).join(", "),
    })
}

/// Marks the node unschedulable, so no new pod lands on it while the agent drains it.
pub(crate) async fn cordon(client: &Client, name: &str) -> Result<(), NodeAgentError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Api::<Node>::all(client.clone())
        .patch(name, &params, &Patch::Apply(node_manifest(name, true)))
        .await
        .map_err(|e| NodeAgentError::kube(format!("cordon node {name}"), e))?;
    Ok(())
}

/// Deletes the Lease and the Node. Pods still bound to the node are the caller's business.
pub(crate) async fn deregister(client: &Client, name: &str) -> Result<(), NodeAgentError> {
    let lease = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE)
        .delete(name, &DeleteParams::default())
        .await;
    ignore_missing(lease, || format!("delete lease {LEASE_NAMESPACE}/{name}"))?;
    let node = Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
    ignore_missing(node, || format!("delete node {name}"))
}

fn ignore_missing<T>(
    result: Result<T, kube::Error>,
    what: impl FnOnce() -> String,
) -> Result<(), NodeAgentError> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(NodeAgentError::kube(what(), e)),
    }
}

fn ready(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map_or_else(|| "unknown".to_owned(), |c| c.status.clone())
}

fn foreign_taints(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.key != NODE_AGENT_LABEL)
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect()
}

/// The node's metadata and spec. A server-side apply removes what this manager owned and left out,
/// so every apply (registration, cordon) carries all of it.
fn node_manifest(name: &str, unschedulable: bool) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                NODE_AGENT_LABEL: "true",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": architecture(),
            },
        },
        "spec": {
            "taints": [{ "key": NODE_AGENT_LABEL, "value": "true", "effect": "NoSchedule" }],
            "unschedulable": unschedulable,
        },
    })
}

/// Generous capacity: the scheduler must never be what limits a local demo.
fn node_status(name: &str, now: Timestamp) -> Value {
    let resources = json!({
        "cpu": "64", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi",
    });
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": Time(now), "lastTransitionTime": Time(now),
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name },
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("Ready", "True", "KubeletReady", "orderpipe-node-agent is posting ready status"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure is tracked locally"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure is tracked locally"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure is tracked locally"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": POD_IP },
                { "type": "Hostname", "address": name },
            ],
            "nodeInfo": {
                "architecture": architecture(),
                "operatingSystem": "linux",
                "osImage": "local processes (orderpipe-node-agent)",
                "kernelVersion": "",
                "kubeletVersion": concat!("v", env!("CARGO_PKG_VERSION"), "-orderpipe-node-agent"),
                "kubeProxyVersion": "",
                "containerRuntimeVersion": concat!("orderpipe-node-agent://", env!("CARGO_PKG_VERSION")),
                "machineID": "", "systemUUID": "", "bootID": "",
            },
        },
    })
}

/// The kubelet's Lease: held by the node, owned by it (so it goes when the node goes).
fn lease(name: &str, node_uid: &str, now: Timestamp) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid }],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": MicroTime(now),
        },
    })
}

/// Go's GOARCH names, which the `kubernetes.io/arch` label uses.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_repels_every_pod_that_does_not_tolerate_the_agent_taint() {
        let node: Node =
            serde_json::from_value(node_manifest("orderpipe-local", false)).expect("node");
        let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
        assert_eq!(taints.len(), 1);
        assert_eq!(
            (
                taints[0].key.as_str(),
                taints[0].value.as_deref(),
                taints[0].effect.as_str()
            ),
            (NODE_AGENT_LABEL, Some("true"), "NoSchedule")
        );
        let labels = node.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get(NODE_AGENT_LABEL).map(String::as_str),
            Some("true")
        );
        assert_eq!(
            labels.get("kubernetes.io/hostname").map(String::as_str),
            Some("orderpipe-local")
        );
    }

    #[test]
    fn status_and_lease_deserialize_as_the_api_types() {
        let now = Timestamp::now();
        let node: Node = serde_json::from_value(node_status("n", now)).expect("node status");
        assert_eq!(ready(&node), "True");
        let status = node.status.unwrap_or_default();
        assert_eq!(
            status
                .allocatable
                .unwrap_or_default()
                .get("pods")
                .map(|q| q.0.as_str()),
            Some("110")
        );
        let lease: Lease = serde_json::from_value(lease("n", "uid-1", now)).expect("lease");
        let spec = lease.spec.unwrap_or_default();
        assert_eq!(spec.holder_identity.as_deref(), Some("n"));
        assert!(spec.renew_time.is_some());
    }
}
