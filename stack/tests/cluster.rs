//! Kubernetes on the shared stack: the control plane really reconciles workloads (controller-
//! manager → ReplicaSet → pods, scheduler → kwok node, kwok → Ready), and so does the Argo
//! Rollouts controller. Needs `make test-e2e`.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use orderpipe_stack::{NODE_NAME, SharedStack, wait_until};

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

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn argo_rollout_becomes_healthy() -> anyhow::Result<()> {
    let stack = SharedStack::get()?;
    let ns = stack.namespace("rollout").await?;
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "rollouts");
    let rollouts: Api<DynamicObject> =
        Api::namespaced_with(ns.client().clone(), ns.name(), &resource);
    let rollout: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "example.invalid/web:1" }] },
            },
            "strategy": { "canary": { "steps": [{ "setWeight": 50 }, { "pause": { "duration": 1 } }] } },
        },
    }))?;
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .context("creating the rollout (are the Argo CRDs installed?)")?;

    wait_until(
        "rollout web Healthy with 2 available replicas (is the stack up with --argo-rollouts?)",
        Duration::from_secs(90),
        || async {
            let status = rollouts.get("web").await.ok()?.data.get("status")?.clone();
            (status["phase"] == "Healthy" && status["availableReplicas"] == 2).then_some(())
        },
    )
    .await?;

    // The controller, not something else, did the work: its ReplicaSet carries the owner.
    let replica_sets = ns.api::<ReplicaSet>().list(&ListParams::default()).await?;
    let owned = replica_sets.items.iter().any(|rs| {
        rs.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.kind == "Rollout" && owner.name == "web")
    });
    assert!(owned, "no ReplicaSet owned by Rollout web");
    ns.cleanup().await?;
    Ok(())
}
