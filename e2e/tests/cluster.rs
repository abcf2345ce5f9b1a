//! Kubernetes on the shared stack: the control plane really reconciles workloads (controller-
//! manager → ReplicaSet → pods, scheduler → kwok node, kwok → Ready). Needs `make test-e2e`.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use orderpipe_e2e::{NODE_NAME, SharedStack, wait_until};

const REPLICAS: i32 = 3;

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn deployment_becomes_available() -> anyhow::Result<()> {
    let stack = SharedStack::get()?;
    let ns = stack.namespace("deploy").await?;
    let deployments = ns.api::<Deployment>();
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": REPLICAS,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                // kwok never pulls images: any name will do.
                "spec": { "containers": [{ "name": "web", "image": "example.invalid/web:1" }] },
            },
        },
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .context("creating the deployment")?;

    wait_until(
        &format!("deployment web Available with {REPLICAS}/{REPLICAS} ready replicas"),
        Duration::from_secs(90),
        || async {
            let status = deployments.get("web").await.ok()?.status?;
            let available = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available
                && status.replicas == Some(REPLICAS)
                && status.ready_replicas == Some(REPLICAS))
            .then_some(())
        },
    )
    .await?;

    // The chain really ran: pods exist, were scheduled onto the fake node, and are Ready.
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .context("listing pods")?;
    assert_eq!(pods.items.len(), REPLICAS as usize);
    for pod in &pods.items {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        assert_eq!(node, Some(NODE_NAME), "pod {name} not on the kwok node");
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(ready, "pod {name} not Ready");
    }
    ns.cleanup().await?;
    Ok(())
}
