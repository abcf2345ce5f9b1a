//! The operator binary as it is deployed: its own ServiceAccount bound to the RBAC of `config/rbac`
//! (so the apiserver enforces exactly the permissions we ship), two replicas electing a leader with a
//! Lease, `/metrics`, `/healthz`, `/readyz`, a handover when the leader gets SIGTERM, a takeover
//! when it is SIGKILLed while applying twenty pipelines (nothing duplicated or orphaned); and the
//! roles `config/rbac` aggregates into the built-in `edit` and `view` for the pipelines' users.
//! Needs `make test-e2e`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use orderpipe_api::OrderPipeline;
use orderpipe_e2e::deployed::{
    Replica, apply_dynamic, delete_cluster_rbac, operator_identity, rbac_manifest,
};
use orderpipe_e2e::{CONVERGE, apply_pipeline, is_ready};
use orderpipe_stack::{SharedStack, TestNamespace, unique_name, wait_until};
use serde_json::{Value, json};

/// Two replicas of the operator binary with the shipped RBAC, once both answer `/readyz`; returns
/// them with the index of the leader.
async fn two_replicas(
    kubeconfig: &Path,
    ns: &TestNamespace,
) -> anyhow::Result<([Replica; 2], usize)> {
    let replicas = [
        Replica::start("op-a", kubeconfig, ns.name())?,
        Replica::start("op-b", kubeconfig, ns.name())?,
    ];
    for replica in &replicas {
        wait_until(
            &format!("{} /healthz and /readyz answer 200", replica.name),
            CONVERGE,
            || async {
                let healthy = replica.get("/healthz").await?.0 == 200;
                (healthy && replica.get("/readyz").await?.0 == 200).then_some(())
            },
        )
        .await?;
    }
    let leader = wait_until("exactly one leader", CONVERGE, || async {
        let a = replicas[0].is_leader().await;
        let b = replicas[1].is_leader().await;
        match (a, b) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    })
    .await?;
    Ok((replicas, leader))
}

fn pipeline(ns: &str, bootstrap: &str, partitions: i32) -> Value {
    let t = |suffix: &str| format!("{ns}.{suffix}");
    let pipeline = OrderPipeline::test("shop")
        .bootstrap(bootstrap)
        .topic_prefix(ns)
        .partitions(&t("orders"), partitions)
        .partitions(&t("validated"), 1)
        .deletion_policy(&t("dlq"), orderpipe_api::v1alpha1::DeletionPolicy::Delete)
        .autoscaling(
            "validate",
            orderpipe_api::v1alpha1::AutoscalingSpec::test(8),
        );
    serde_json::to_value(pipeline).expect("fixture serializes")
}

async fn wait_ready_at_partitions(api: &Api<OrderPipeline>, partitions: i32) -> anyhow::Result<()> {
    wait_until(
        &format!("pipeline Ready with the input at {partitions} partitions"),
        CONVERGE,
        || async {
            let p = api.get("shop").await.ok()?;
            let grown = p.status.as_ref()?.stages.first()?.max_replicas == Some(partitions);
            (is_ready(&p) && grown).then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn two_replicas_with_shipped_rbac_elect_a_leader_and_hand_over_on_sigterm()
-> anyhow::Result<()> {
    let stack = SharedStack::get()?;
    let bootstrap = stack.kafka_bootstrap()?.to_string();
    let ns = stack.namespace("op-deploy").await?;
    let (kubeconfig, cluster_name) = operator_identity(&stack, &ns).await?;

    let (replicas, leader) = two_replicas(&kubeconfig, &ns).await?;

    // Everything the operator does below, it does with the shipped permissions only.
    let api = ns.api::<OrderPipeline>();
    apply_pipeline(&ns, &pipeline(ns.name(), &bootstrap, 2)).await?;
    wait_ready_at_partitions(&api, 2).await?;

    // The leader's metrics carry the families the dashboards and alerts use.
    let (_, metrics) = replicas[leader]
        .get("/metrics")
        .await
        .context("leader /metrics")?;
    for family in [
        "orderpipe_operator_reconciles_total",
        "orderpipe_operator_reconcile_duration_seconds_bucket",
        "orderpipe_operator_kafka_admin_operations_total",
        "orderpipe_operator_pipelines",
        "orderpipe_operator_api_writes_total",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from /metrics:\n{metrics}"
        );
    }

    // SIGTERM: the leader releases the Lease and exits cleanly; the standby takes over.
    replicas[leader].terminate()?;
    let standby = 1 - leader;
    let [first, second] = replicas;
    let (mut old, new) = if leader == 0 {
        (first, second)
    } else {
        (second, first)
    };
    let exit = tokio::time::timeout(Duration::from_secs(30), old.child.wait()).await??;
    assert!(exit.success(), "the leader exited with {exit} on SIGTERM");
    wait_until(
        &format!("replica {standby} becomes the leader"),
        CONVERGE,
        || async { new.is_leader().await.then_some(()) },
    )
    .await?;
    // A coordinated growth of the stage input (to a multiple: 2 -> 4).
    apply_pipeline(&ns, &pipeline(ns.name(), &bootstrap, 4)).await?;
    wait_ready_at_partitions(&api, 4).await?;

    // The finalizer (a Delete topic) also works with the shipped permissions.
    api.delete("shop", &DeleteParams::default()).await?;
    wait_until("the pipeline is deleted", CONVERGE, || async {
        api.get_opt("shop").await.ok()?.is_none().then_some(())
    })
    .await?;

    drop(new);
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        delete_cluster_rbac(ns.client(), kind, &cluster_name).await?;
    }
    ns.cleanup().await?;
    Ok(())
}

/// Pipelines applied at once while the leader is killed.
const PIPELINES: usize = 20;

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn the_standby_converges_twenty_pipelines_after_the_leader_is_sigkilled_mid_apply()
-> anyhow::Result<()> {
    let stack = SharedStack::get()?;
    let bootstrap = stack.kafka_bootstrap()?.to_string();
    let ns = stack.namespace("op-kill").await?;
    let (kubeconfig, cluster_name) = operator_identity(&stack, &ns).await?;
    let (replicas, leader) = two_replicas(&kubeconfig, &ns).await?;

    let names: Vec<String> = (0..PIPELINES).map(|i| format!("shop-{i:02}")).collect();
    for name in &names {
        apply_pipeline(&ns, &numbered_pipeline(ns.name(), &bootstrap, name)).await?;
    }
    // Kill the leader while it is part-way: some pipelines have a status, not all are Ready.
    let api = ns.api::<OrderPipeline>();
    let started = wait_until(
        "the leader has begun on the pipelines",
        CONVERGE,
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            let begun = list.items.iter().filter(|p| p.status.is_some()).count();
            (begun >= 3).then_some(list.items.iter().filter(|p| is_ready(p)).count())
        },
    )
    .await?;
    replicas[leader].signal(nix::sys::signal::Signal::SIGKILL)?;
    eprintln!("SIGKILLed the leader with {started} of {PIPELINES} pipelines Ready");

    let standby = &replicas[1 - leader];
    // No release on SIGKILL: the standby waits out the 15 s lease.
    wait_until("the standby becomes the leader", CONVERGE, || async {
        standby.is_leader().await.then_some(())
    })
    .await?;
    let all_ready = wait_until(
        &format!("all {PIPELINES} pipelines Ready"),
        CONVERGE,
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            (list.items.len() == PIPELINES && list.items.iter().all(is_ready)).then_some(list.items)
        },
    )
    .await?;

    // Nothing duplicated, nothing orphaned: every stage has one workload owned by its pipeline,
    // and every declared topic is recorded as ready exactly once.
    let stages: usize = all_ready.iter().map(|p| p.spec.stages.len()).sum();
    let deployments = ns
        .api::<Deployment>()
        .list(&ListParams::default())
        .await?
        .items;
    let owners: Vec<String> = deployments
        .iter()
        .flat_map(|d| d.metadata.owner_references.iter().flatten())
        .map(|owner| owner.name.clone())
        .collect();
    anyhow::ensure!(
        deployments.len() == stages
            && owners.len() == stages
            && owners.iter().all(|o| names.contains(o)),
        "{} Deployments owned by {owners:?} for {stages} stages",
        deployments.len()
    );
    for pipeline in &all_ready {
        let status = pipeline.status.as_ref().context("Ready has a status")?;
        let declared: Vec<&str> = pipeline
            .spec
            .topics
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let recorded: Vec<&str> = status.topics.iter().map(|t| t.name.as_str()).collect();
        anyhow::ensure!(
            declared
                .iter()
                .all(|t| recorded.iter().filter(|r| *r == t).count() == 1),
            "{}: declared {declared:?}, recorded {recorded:?}",
            pipeline.name_any()
        );
    }

    drop(replicas);
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        delete_cluster_rbac(ns.client(), kind, &cluster_name).await?;
    }
    ns.cleanup().await?;
    Ok(())
}

/// Pipeline `name` with topics of its own (`<ns>.<name>.*`).
fn numbered_pipeline(ns: &str, bootstrap: &str, name: &str) -> Value {
    let prefix = format!("{ns}.{name}");
    let pipeline = OrderPipeline::test(name)
        .bootstrap(bootstrap)
        .topic_prefix(&prefix)
        .autoscaling(
            "validate",
            orderpipe_api::v1alpha1::AutoscalingSpec::test(4),
        );
    serde_json::to_value(pipeline).expect("fixture serializes")
}

/// Whether the apiserver's authorizer lets `user` `verb` OrderPipelines in `namespace`.
async fn may(
    client: &kube::Client,
    user: &str,
    verb: &str,
    namespace: &str,
) -> anyhow::Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some(verb.into()),
                group: Some("orderpipe.dev".into()),
                resource: Some("orderpipelines".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("creating a SubjectAccessReview")?;
    Ok(answer.status.is_some_and(|status| status.allowed))
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn namespace_editors_manage_pipelines_and_viewers_only_read_them() -> anyhow::Result<()> {
    let ns = SharedStack::get()?.namespace("roles").await?;
    let client = ns.client();
    // Cluster-scoped and on a shared stack: each run applies the shipped roles under its own names
    // (the aggregation selects by label, not by name).
    let mut roles = Vec::new();
    for file in [
        "orderpipeline_edit_role.yaml",
        "orderpipeline_view_role.yaml",
    ] {
        let mut role = rbac_manifest(file)?;
        let name = unique_name(role["metadata"]["name"].as_str().unwrap_or("orderpipe"));
        role["metadata"]["name"] = json!(name);
        apply_dynamic(client, None, &role).await?;
        roles.push(name);
    }
    for (user, role) in [("alice", "edit"), ("bob", "view")] {
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": format!("{user}-{role}"), "namespace": ns.name() },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
        });
        apply_dynamic(client, Some(ns.name()), &binding).await?;
    }

    // The controller-manager copies the labelled rules into edit and view shortly after.
    wait_until(
        "edit and view carry the OrderPipeline rules",
        CONVERGE,
        || async {
            let editor = may(client, "alice", "create", ns.name()).await.ok()?;
            let viewer = may(client, "bob", "list", ns.name()).await.ok()?;
            (editor && viewer).then_some(())
        },
    )
    .await?;
    assert!(
        !may(client, "bob", "create", ns.name()).await?,
        "a viewer must not create pipelines"
    );
    assert!(
        !may(client, "alice", "create", "default").await?,
        "edit in one namespace must not reach pipelines of another"
    );

    for role in &roles {
        delete_cluster_rbac(client, "ClusterRole", role).await?;
    }
    ns.cleanup().await?;
    Ok(())
}
