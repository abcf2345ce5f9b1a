//! The operator against the real apiserver and Kafka broker of the shared stack: an OrderPipeline
//! becomes Kafka topics, stage workloads, capped autoscalers, services and a truthful status; spec
//! changes and out-of-band edits converge; an idle resync writes nothing. Each test runs its own
//! in-process operator limited to its own namespace, so tests do not see each other's pipelines.
//! Needs `make test-e2e`.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use orderpipe_api::OrderPipeline;
use orderpipe_e2e::policy::DenyDeployments;
use orderpipe_e2e::{
    CONVERGE, InProcessOperator, NO_PROMETHEUS, OperatorTest, apply_pipeline, apply_secret,
    condition, over_sasl_ssl, wait_ready,
};
use orderpipe_operator::settings::WorkerPlacement;
use orderpipe_stack::{
    TestNamespace, create_topics_with, partition_count, topic_config, wait_until,
};
use serde_json::{Value, json};

/// A two-stage pipeline whose topics carry the namespace name, so parallel tests never share one.
fn pipeline(ns: &str, bootstrap: &str) -> Value {
    use orderpipe_api::v1alpha1::{AutoscalingSpec, Processor};
    let t = |suffix: &str| format!("{ns}.{suffix}");
    let pipeline = OrderPipeline::test("shop")
        .bootstrap(bootstrap)
        .topic_prefix(ns)
        .partitions(&t("orders"), 2)
        .topic_config(&t("orders"), "retention.ms", "86400000")
        .partitions(&t("validated"), 2)
        .topic(&t("events"), 2)
        .topic(&t("status"), 2)
        .output("validate", "events", &t("events"))
        .autoscaling(
            "validate",
            AutoscalingSpec {
                target_lag_per_replica: Some(500),
                ..AutoscalingSpec::test(6)
            },
        )
        .stage(
            "status",
            Processor::Status,
            &t("events"),
            &[("changes", &t("status"))],
        )
        .replicas("status", 2);
    serde_json::to_value(pipeline).expect("fixture serializes")
}

fn pipelines(ns: &TestNamespace) -> Api<OrderPipeline> {
    ns.api::<OrderPipeline>()
}

/// Waits until pipeline `name` reports `TopicsReady=False` with `reason`, and returns it.
async fn topics_not_ready(
    api: &Api<OrderPipeline>,
    name: &str,
    reason: &str,
) -> anyhow::Result<OrderPipeline> {
    let what = format!("{name} reports TopicsReady=False {reason}");
    let result = wait_until(&what, CONVERGE, || async {
        let p = api.get(name).await.ok()?;
        (condition(&p, "TopicsReady")? == ("False".to_owned(), reason.to_owned())).then_some(p)
    })
    .await?;
    Ok(result)
}

/// The managed fields of one field manager, as JSON text.
fn fields_owned_by(metadata: &kube::api::ObjectMeta, manager: &str) -> String {
    metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.manager.as_deref() == Some(manager))
        .map(|f| serde_json::to_string(&f.fields_v1).unwrap_or_default())
        .collect()
}

async fn events_with_reason(ns: &TestNamespace, reason: &str) -> usize {
    event_notes(ns, reason).await.len()
}

/// The notes of the namespace's Events with `reason`.
async fn event_notes(ns: &TestNamespace, reason: &str) -> Vec<String> {
    ns.api::<Event>()
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .filter_map(|e| e.message)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn pipeline_becomes_ready_with_topics_workloads_and_capped_autoscaler() -> anyhow::Result<()>
{
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-ready").await?;
    apply_pipeline(&ns, &pipeline(ns.name(), &bootstrap)).await?;

    let p = wait_ready(&ns, "shop").await?;
    let status = p.status.clone().unwrap_or_default();
    assert_eq!(status.stages_ready.as_deref(), Some("2/2"));
    // 6 declared topics plus the two operator-managed state topics of validate and status (the
    // control topic comes with the first growth).
    assert_eq!(status.topics_ready.as_deref(), Some("8/8"));
    let validate = status
        .stages
        .iter()
        .find(|s| s.name == "validate")
        .context("validate status")?;
    assert_eq!(
        (validate.max_replicas, validate.max_replicas_capped_from),
        (Some(2), Some(6))
    );

    // Kafka has the topics, and the state topic is co-partitioned with its input.
    assert_eq!(
        partition_count(&bootstrap, &format!("{}.orders", ns.name()))?,
        Some(2)
    );
    let state = format!("orderpipe.{}.shop.validate.state", ns.name());
    assert_eq!(partition_count(&bootstrap, &state)?, Some(2));

    // Workloads, autoscaler, service, PDB.
    let deployments = ns.api::<Deployment>();
    let validate_deploy = deployments.get("shop-validate").await?;
    let status_deploy = deployments.get("shop-status").await?;
    assert_eq!(
        status_deploy.spec.as_ref().and_then(|s| s.replicas),
        Some(2)
    );
    // The HPA owns validate's replica count: our field manager must not own spec.replicas.
    let ours = fields_owned_by(&validate_deploy.metadata, "orderpipe-operator");
    assert!(
        !ours.contains("f:replicas"),
        "operator owns spec.replicas of an autoscaled Deployment: {ours}"
    );
    let hpa = ns
        .api::<HorizontalPodAutoscaler>()
        .get("shop-validate")
        .await?;
    assert_eq!(hpa.spec.as_ref().map(|s| s.max_replicas), Some(2));
    ns.api::<Service>().get("shop-validate").await?;
    // The shared stack serves the Prometheus Operator CRDs, so each stage also gets a ServiceMonitor.
    let monitors: Api<DynamicObject> = Api::namespaced_with(
        ns.client().clone(),
        ns.name(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
            "servicemonitors",
        ),
    );
    let monitor = monitors.get("shop-validate").await?;
    assert_eq!(
        monitor.data.pointer("/spec/endpoints/0/port"),
        Some(&json!("metrics"))
    );
    ns.api::<PodDisruptionBudget>().get("shop-status").await?;
    assert!(
        ns.api::<HorizontalPodAutoscaler>()
            .get_opt("shop-status")
            .await?
            .is_none()
    );
    // An Event per reconcile names every topic that reconcile created: all 8, each once.
    let notes = wait_until("TopicCreated Events naming 8 topics", CONVERGE, || async {
        let notes = event_notes(&ns, "TopicCreated").await;
        (notes
            .iter()
            .map(|n| n.matches("created topic ").count())
            .sum::<usize>()
            == 8)
            .then_some(notes)
    })
    .await?;
    assert!(
        notes.iter().any(|n| n.contains(&format!(
            "created topic {}.orders with 2 partitions",
            ns.name()
        ))),
        "{notes:?}"
    );

    OperatorTest::finish(operator, ns).await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn idle_resync_makes_no_api_writes() -> anyhow::Result<()> {
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-idle").await?;
    apply_pipeline(&ns, &pipeline(ns.name(), &bootstrap)).await?;
    wait_ready(&ns, "shop").await?;
    // Let the last status write and its echo settle: wait until two reconciles in a row wrote nothing.
    let settled = || async {
        let before = (
            operator.counter("orderpipe_operator_api_writes_total"),
            operator.counter("orderpipe_operator_reconciles_total"),
        );
        touch(&ns).await.ok()?;
        wait_until(
            "a reconcile after the touch",
            Duration::from_secs(30),
            || async {
                (operator.counter("orderpipe_operator_reconciles_total") > before.1).then_some(())
            },
        )
        .await
        .ok()?;
        (operator.counter("orderpipe_operator_api_writes_total") == before.0).then_some(())
    };
    wait_until("a reconcile that writes nothing", CONVERGE, settled).await?;

    // Now every further reconcile must write nothing, and no child may change.
    let versions = child_versions(&ns).await?;
    let writes = operator.counter("orderpipe_operator_api_writes_total");
    for _ in 0..3 {
        let reconciles = operator.counter("orderpipe_operator_reconciles_total");
        touch(&ns).await?;
        wait_until(
            "a reconcile after the touch",
            Duration::from_secs(30),
            || async {
                (operator.counter("orderpipe_operator_reconciles_total") > reconciles).then_some(())
            },
        )
        .await?;
    }
    assert_eq!(
        operator.counter("orderpipe_operator_api_writes_total"),
        writes,
        "an idle reconcile wrote to the API"
    );
    assert_eq!(
        child_versions(&ns).await?,
        versions,
        "an idle reconcile changed a child object"
    );
    OperatorTest::finish(operator, ns).await
}

/// Changes an annotation of the pipeline (not its spec), which makes the controller reconcile it.
async fn touch(ns: &TestNamespace) -> anyhow::Result<()> {
    let nonce = orderpipe_stack::unique_name("t");
    let patch = json!({ "metadata": { "annotations": { "e2e/touch": nonce } } });
    pipelines(ns)
        .patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn child_versions(ns: &TestNamespace) -> anyhow::Result<Vec<(String, String)>> {
    let mut versions = Vec::new();
    for d in ns.api::<Deployment>().list(&ListParams::default()).await? {
        versions.push((
            format!("deploy/{}", d.metadata.name.unwrap_or_default()),
            d.metadata.resource_version.unwrap_or_default(),
        ));
    }
    for h in ns
        .api::<HorizontalPodAutoscaler>()
        .list(&ListParams::default())
        .await?
    {
        // The HPA controller writes status; compare the spec generation instead.
        versions.push((
            format!("hpa/{}", h.metadata.name.unwrap_or_default()),
            h.metadata.generation.unwrap_or_default().to_string(),
        ));
    }
    for s in ns.api::<Service>().list(&ListParams::default()).await? {
        versions.push((
            format!("svc/{}", s.metadata.name.unwrap_or_default()),
            s.metadata.resource_version.unwrap_or_default(),
        ));
    }
    versions.sort();
    Ok(versions)
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn spec_changes_and_out_of_band_edits_converge() -> anyhow::Result<()> {
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-change").await?;
    let mut spec = pipeline(ns.name(), &bootstrap);
    apply_pipeline(&ns, &spec).await?;
    wait_ready(&ns, "shop").await?;

    // Growing the input topic reaches Kafka (and the co-partitioned state topic), lifts the HPA
    // cap, and is announced as an Event because keys are remapped.
    spec["spec"]["topics"][0]["partitions"] = json!(4);
    apply_pipeline(&ns, &spec).await?;
    let hpas = ns.api::<HorizontalPodAutoscaler>();
    wait_until(
        "HPA maxReplicas follows the grown input topic",
        CONVERGE,
        || async {
            let hpa = hpas.get("shop-validate").await.ok()?;
            (hpa.spec?.max_replicas == 4).then_some(())
        },
    )
    .await?;
    assert_eq!(
        partition_count(&bootstrap, &format!("{}.orders", ns.name()))?,
        Some(4)
    );
    let state = format!("orderpipe.{}.shop.validate.state", ns.name());
    assert_eq!(partition_count(&bootstrap, &state)?, Some(4));
    // Events are published at the end of the reconcile that made the change.
    wait_until("a PartitionsIncreased Event", CONVERGE, || async {
        (events_with_reason(&ns, "PartitionsIncreased").await >= 1).then_some(())
    })
    .await?;

    // Someone edits the worker image by hand: the operator puts it back.
    let deployments = ns.api::<Deployment>();
    let vandal = json!({ "spec": { "template": { "spec": { "containers": [{ "name": "worker", "image": "evil:latest" }] } } } });
    deployments
        .patch(
            "shop-status",
            &PatchParams::default(),
            &Patch::Strategic(&vandal),
        )
        .await?;
    wait_until("the worker image is restored", CONVERGE, || async {
        let d = deployments.get("shop-status").await.ok()?;
        let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
        (image == "orderpipe/orderpipe-worker:e2e").then_some(())
    })
    .await?;

    // Removing a stage deletes its children.
    if let Some(stages) = spec["spec"]["stages"].as_array_mut() {
        stages.truncate(1);
    }
    apply_pipeline(&ns, &spec).await?;
    wait_until(
        "the removed stage's Deployment is deleted",
        CONVERGE,
        || async {
            deployments
                .get_opt("shop-status")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await?;
    assert!(ns.api::<Service>().get_opt("shop-status").await?.is_none());

    // Pausing scales to zero and removes the autoscaler.
    spec["spec"]["paused"] = json!(true);
    apply_pipeline(&ns, &spec).await?;
    wait_until(
        "paused: validate at zero replicas, no HPA",
        CONVERGE,
        || async {
            let d = deployments.get("shop-validate").await.ok()?;
            let hpa_gone = hpas.get_opt("shop-validate").await.ok()?.is_none();
            (d.spec?.replicas == Some(0) && hpa_gone).then_some(())
        },
    )
    .await?;
    let paused = pipelines(&ns).get("shop").await?;
    wait_until("Ready=False reason Paused", CONVERGE, || async {
        let p = pipelines(&ns).get("shop").await.ok()?;
        (condition(&p, "Ready")? == ("False".to_string(), "Paused".to_string())).then_some(())
    })
    .await
    .with_context(|| format!("{:?}", paused.status))?;

    OperatorTest::finish(operator, ns).await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_stage_service_with_a_virtual_ip_from_an_older_operator_is_replaced_by_a_headless_one()
-> anyhow::Result<()> {
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-headless").await?;
    apply_pipeline(&ns, &pipeline(ns.name(), &bootstrap)).await?;
    wait_ready(&ns, "shop").await?;
    let services = ns.api::<Service>();
    let headless = services.get("shop-validate").await?;
    assert_eq!(
        headless.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );

    // An older operator's Service: the same object, with a virtual IP the apiserver allocates.
    operator.stop().await;
    services
        .delete("shop-validate", &DeleteParams::default())
        .await?;
    let mut older = serde_json::to_value(&headless)?;
    let spec = older["spec"].as_object_mut().context("spec")?;
    for field in ["clusterIP", "clusterIPs"] {
        spec.remove(field);
    }
    let metadata = older["metadata"].as_object_mut().context("metadata")?;
    for field in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        metadata.remove(field);
    }
    let older: Service = serde_json::from_value(older)?;
    let created = services.create(&Default::default(), &older).await?;
    let virtual_ip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the apiserver allocates a virtual IP")?;
    assert_ne!(virtual_ip, "None");

    // This operator deletes it and creates the headless one: clusterIP cannot be changed in place.
    let operator =
        InProcessOperator::start(&ns, WorkerPlacement::default(), NO_PROMETHEUS.into()).await;
    wait_until("the stage Service is headless again", CONVERGE, || async {
        let service = services.get("shop-validate").await.ok()?;
        (service.spec?.cluster_ip.as_deref() == Some("None")).then_some(())
    })
    .await?;
    wait_until("a ChildDeleted Event naming it", CONVERGE, || async {
        let notes = event_notes(&ns, "ChildDeleted").await;
        notes
            .iter()
            .any(|n| n.contains("Deleted Service shop-validate"))
            .then_some(())
    })
    .await?;
    OperatorTest::finish(operator, ns).await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn the_newer_of_two_pipelines_claiming_a_topic_gets_a_conflict() -> anyhow::Result<()> {
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-conflict").await?;
    let older = pipeline(ns.name(), &bootstrap);
    apply_pipeline(&ns, &older).await?;
    wait_ready(&ns, "shop").await?;

    let mut newer = pipeline(ns.name(), &bootstrap);
    newer["metadata"]["name"] = json!("copycat");
    apply_pipeline(&ns, &newer).await?;
    let api = pipelines(&ns);
    topics_not_ready(&api, "copycat", "Conflict").await?;
    let shop = api.get("shop").await?;
    assert_eq!(
        condition(&shop, "Ready").map(|c| c.0),
        Some("True".into()),
        "the older pipeline keeps its topics"
    );

    // The owner goes and keeps its topics (Retain): the copycat does not take them over silently.
    api.delete("shop", &DeleteParams::default()).await?;
    topics_not_ready(&api, "copycat", "AdoptionRequired").await?;
    OperatorTest::finish(operator, ns).await
}

/// The same brokers under another name: `localhost` for a loopback address and back.
fn alias_of(bootstrap: &str) -> String {
    if bootstrap.contains("127.0.0.1") {
        bootstrap.replace("127.0.0.1", "localhost")
    } else {
        bootstrap.replace("localhost", "127.0.0.1")
    }
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn pipelines_naming_one_kafka_cluster_by_different_addresses_conflict_by_its_cluster_id()
-> anyhow::Result<()> {
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-cluster-id").await?;
    apply_pipeline(&ns, &pipeline(ns.name(), &bootstrap)).await?;
    let older = wait_ready(&ns, "shop").await?;
    let cluster_id = older
        .status
        .as_ref()
        .and_then(|s| s.kafka_cluster_id.clone());
    anyhow::ensure!(cluster_id.is_some(), "the status records the cluster id");

    let alias = alias_of(&bootstrap);
    anyhow::ensure!(alias != bootstrap, "no alias for {bootstrap}");
    let mut newer = pipeline(ns.name(), &alias);
    newer["metadata"]["name"] = json!("copycat");
    apply_pipeline(&ns, &newer).await?;
    let api = pipelines(&ns);
    let copycat = topics_not_ready(&api, "copycat", "Conflict").await?;
    assert_eq!(
        copycat.status.and_then(|s| s.kafka_cluster_id),
        cluster_id,
        "{alias} and {bootstrap} are one cluster"
    );
    OperatorTest::finish(operator, ns).await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn an_existing_topic_is_left_alone_until_the_spec_opts_in_to_adopting_it()
-> anyhow::Result<()> {
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-adopt").await?;
    // Somebody else's topic, with fewer partitions and another retention than the spec declares.
    let orders = format!("{}.orders", ns.name());
    create_topics_with(
        &bootstrap,
        &[(&orders, 1)],
        None,
        &[("retention.ms", "1000")],
    )?;
    let mut spec = pipeline(ns.name(), &bootstrap);
    apply_pipeline(&ns, &spec).await?;
    let api = pipelines(&ns);
    let refused = topics_not_ready(&api, "shop", "AdoptionRequired").await?;
    let message = refused
        .status
        .iter()
        .flat_map(|s| s.conditions.iter())
        .find(|c| c.type_ == "TopicsReady")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(&format!("spec.topics[name={orders}].adopt: true")),
        "the condition says how to opt in: {message}"
    );
    assert_eq!(partition_count(&bootstrap, &orders)?, Some(1), "not grown");
    let config = topic_config(&bootstrap, &orders)?;
    assert_eq!(
        config.get("retention.ms").map(String::as_str),
        Some("1000"),
        "not configured"
    );

    spec["spec"]["topics"][0]["adopt"] = json!(true);
    apply_pipeline(&ns, &spec).await?;
    wait_ready(&ns, "shop").await?;
    assert_eq!(
        partition_count(&bootstrap, &orders)?,
        Some(2),
        "grown as declared"
    );
    let config = topic_config(&bootstrap, &orders)?;
    assert_eq!(
        config.get("retention.ms").map(String::as_str),
        Some("86400000"),
        "configured as declared"
    );
    OperatorTest::finish(operator, ns).await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn delete_policy_topics_are_deleted_with_the_pipeline_and_retained_ones_kept()
-> anyhow::Result<()> {
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-delete").await?;
    let mut spec = pipeline(ns.name(), &bootstrap);
    spec["spec"]["topics"][2]["deletionPolicy"] = json!("Delete");
    apply_pipeline(&ns, &spec).await?;
    let p = wait_ready(&ns, "shop").await?;
    assert!(
        p.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "orderpipe.dev/topic-cleanup")
    );

    pipelines(&ns)
        .delete("shop", &DeleteParams::default())
        .await?;
    wait_until("the pipeline is gone", CONVERGE, || async {
        pipelines(&ns)
            .get_opt("shop")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    assert_eq!(
        partition_count(&bootstrap, &format!("{}.rejected", ns.name()))?,
        None,
        "Delete topic survived"
    );
    assert_eq!(
        partition_count(&bootstrap, &format!("{}.orders", ns.name()))?,
        Some(2),
        "Retain topic was deleted"
    );
    OperatorTest::finish(operator, ns).await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn canary_stage_runs_as_an_argo_rollout_with_analysis() -> anyhow::Result<()> {
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-canary").await?;
    let mut spec = pipeline(ns.name(), &bootstrap);
    spec["spec"]["stages"][0]["rollout"] = json!({ "strategy": "Canary" });
    apply_pipeline(&ns, &spec).await?;
    wait_ready(&ns, "shop").await?;

    let rollouts: Api<DynamicObject> = Api::namespaced_with(
        ns.client().clone(),
        ns.name(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
            "rollouts",
        ),
    );
    let rollout = rollouts.get("shop-validate").await?;
    // The HPA owns the replica count: the operator's main field manager never sets it (a separate
    // manager seeds it once, because an HPA cannot read the scale of a Rollout without one).
    assert!(
        !fields_owned_by(&rollout.metadata, "orderpipe-operator").contains("f:replicas"),
        "the operator owns the Rollout's replicas"
    );
    assert!(
        rollout.data.pointer("/spec/replicas").is_some(),
        "the Rollout has a replica count for the HPA"
    );
    assert!(
        ns.api::<Deployment>()
            .get_opt("shop-validate")
            .await?
            .is_none()
    );
    let hpa = ns
        .api::<HorizontalPodAutoscaler>()
        .get("shop-validate")
        .await?;
    assert_eq!(
        hpa.spec.map(|s| s.scale_target_ref.kind),
        Some("Rollout".to_string())
    );

    // Switching in both directions: the new workload is ready before the old one goes away, so at
    // every observation some workload of the stage has a ready replica (no gap in consumption).
    let deployments = ns.api::<Deployment>();
    for (strategy, new_kind) in [("RollingUpdate", "Deployment"), ("Canary", "Rollout")] {
        spec["spec"]["stages"][0]["rollout"] = json!({ "strategy": strategy });
        apply_pipeline(&ns, &spec).await?;
        wait_until(
            &format!("switch to {strategy}: only a ready {new_kind} left"),
            CONVERGE,
            || async {
                let rollout = rollouts.get_opt("shop-validate").await.ok()?;
                let deployment = deployments.get_opt("shop-validate").await.ok()?;
                let rollout_ready = rollout.as_ref().map_or(0, |r| {
                    r.data
                        .pointer("/status/readyReplicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                });
                let deployment_ready = deployment
                    .as_ref()
                    .and_then(|d| d.status.as_ref()?.ready_replicas)
                    .map_or(0, i64::from);
                assert!(
                    rollout_ready + deployment_ready >= 1,
                    "no ready workload for the stage while switching to {strategy}"
                );
                let done = match new_kind {
                    "Deployment" => rollout.is_none() && deployment_ready >= 1,
                    _ => deployment.is_none() && rollout_ready >= 1,
                };
                done.then_some(())
            },
        )
        .await?;
    }
    OperatorTest::finish(operator, ns).await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn over_tls_with_sasl_topics_are_created_and_a_wrong_password_is_reported_without_it()
-> anyhow::Result<()> {
    let OperatorTest {
        stack,
        bootstrap: plaintext,
        ns,
        operator,
    } = OperatorTest::start("op-sasl-ssl").await?;
    let secure = stack.kafka_secure()?;
    let ca_pem = std::fs::read_to_string(&secure.ca_file)?;
    let wrong_password = "definitely-not-the-password";
    for (name, password) in [
        ("kafka-user", secure.password.as_str()),
        ("kafka-intruder", wrong_password),
    ] {
        let credentials = json!({ "username": secure.username, "password": password });
        apply_secret(&ns, name, credentials).await?;
    }
    apply_secret(&ns, "kafka-ca", json!({ "ca.crt": ca_pem })).await?;
    let secured = |name: &str, credentials: &str| {
        let mut p = pipeline(&format!("{}.{name}", ns.name()), &secure.bootstrap);
        p["metadata"]["name"] = json!(name);
        over_sasl_ssl(&mut p, credentials);
        p
    };
    apply_pipeline(&ns, &secured("shop", "kafka-user")).await?;
    wait_ready(&ns, "shop").await?;
    let orders = format!("{}.shop.orders", ns.name());
    assert_eq!(
        partition_count(&plaintext, &orders)?,
        Some(2),
        "created through the SASL_SSL listener"
    );

    apply_pipeline(&ns, &secured("intruder", "kafka-intruder")).await?;
    let api = pipelines(&ns);
    // The first failed request may precede the client's report of why; the condition says it
    // from the next reconcile on.
    let refused = wait_until(
        "intruder's TopicsReady=False to name the authentication failure",
        CONVERGE,
        || async {
            let p = api.get("intruder").await.ok()?;
            let topics = p
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "TopicsReady")?;
            let explained =
                topics.status == "False" && topics.message.contains("SASL authentication error");
            explained.then_some(p)
        },
    )
    .await?;
    let status = serde_json::to_string(&refused.status)?;
    let events = serde_json::to_string(&ns.api::<Event>().list(&ListParams::default()).await?)?;
    for (what, text) in [("status", &status), ("events", &events)] {
        assert!(!text.contains(wrong_password), "no password in {what}");
        assert!(!text.contains(&secure.password), "no password in {what}");
    }
    let intruder_orders = format!("{}.intruder.orders", ns.name());
    assert_eq!(partition_count(&plaintext, &intruder_orders)?, None);
    OperatorTest::finish(operator, ns).await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_refused_apply_shows_in_the_status_and_a_warning_event_and_recovers() -> anyhow::Result<()>
{
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("applyfail").await?;
    // A ValidatingAdmissionPolicy (CEL, in the apiserver) refuses this namespace's Deployments: the
    // operator's server-side apply fails as it would against a user's admission policy.
    let policy = DenyDeployments::install(&ns).await?;
    apply_pipeline(&ns, &pipeline(ns.name(), &bootstrap)).await?;
    let refused = wait_until(
        "Ready=False and StagesReady=False with reason ApplyFailed and the policy's message",
        CONVERGE,
        || async {
            let p = pipelines(&ns).get("shop").await.ok()?;
            let ready = condition(&p, "Ready")?;
            let stages = p
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "StagesReady")?
                .clone();
            let reasons = (ready.0.as_str(), ready.1.as_str(), stages.reason.as_str());
            (reasons == ("False", "ApplyFailed", "ApplyFailed")
                && stages.message.contains(DenyDeployments::MESSAGE))
            .then_some(())
        },
    )
    .await;
    let warned = wait_until("a Warning Event ApplyFailed", CONVERGE, || async {
        (events_with_reason(&ns, "ApplyFailed").await > 0).then_some(())
    })
    .await;
    policy.remove(&ns).await?;
    if let Err(error) = refused.and(warned) {
        let status = pipelines(&ns).get("shop").await?.status;
        anyhow::bail!(
            "{error}\nstatus: {}",
            serde_json::to_string_pretty(&status)?
        );
    }
    // The backoff retries; once the policy is gone the apply goes through.
    wait_ready(&ns, "shop").await?;
    OperatorTest::finish(operator, ns).await
}

/// The control topic's latest record per stage, decoded.
fn control_records(
    bootstrap: &str,
    ns: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, orderpipe_growth::ControlRecord>> {
    let topic = orderpipe_api::contract::naming::control_topic(ns, "shop");
    let records =
        orderpipe_stack::read_all(bootstrap, &topic, orderpipe_stack::Isolation::ReadCommitted)?;
    records
        .iter()
        .map(|record| {
            let value = record.payload.as_deref().unwrap_or_default();
            let decoded = orderpipe_growth::ControlRecord::decode(value)
                .with_context(|| format!("control record at offset {}", record.offset))?;
            Ok((record.key_str(), decoded))
        })
        .collect()
}

/// The growth of `topic` in the pipeline's status, once `ready` accepts it.
async fn growth_where(
    api: &Api<OrderPipeline>,
    topic: &str,
    what: &str,
    ready: impl Fn(&orderpipe_api::v1alpha1::GrowthStatus) -> bool,
) -> anyhow::Result<orderpipe_api::v1alpha1::GrowthStatus> {
    let result = wait_until(what, CONVERGE, || async {
        let p = api.get("shop").await.ok()?;
        let growth = p.status?.growth.into_iter().find(|g| g.topic == topic)?;
        ready(&growth).then_some(growth)
    })
    .await?;
    Ok(result)
}

/// The operator's half of coordinated growth on the real apiserver and broker, across an operator
/// restart mid-growth; the stages' half (holding, re-sharding) is stood in for by committing their
/// re-shard markers from the test.
#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_grown_input_is_held_until_every_old_partition_commits_its_reshard() -> anyhow::Result<()>
{
    use orderpipe_api::v1alpha1::GrowthPhase;
    use orderpipe_growth::{Phase, ReshardMarker};

    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start("op-growth").await?;
    let orders = format!("{}.orders", ns.name());
    let mut spec = pipeline(ns.name(), &bootstrap);
    spec["spec"]["topics"][0]["settleSeconds"] = json!(1);
    apply_pipeline(&ns, &spec).await?;
    wait_ready(&ns, "shop").await?;
    let api = pipelines(&ns);

    spec["spec"]["topics"][0]["partitions"] = json!(4);
    apply_pipeline(&ns, &spec).await?;
    let draining = growth_where(&api, &orders, "the growth drains", |g| {
        g.phase == GrowthPhase::Draining
    })
    .await?;
    assert_eq!((draining.from, draining.to), (2, 4));
    assert_eq!(draining.stages, ["validate"]);
    assert_eq!(draining.barrier.len(), 2);
    assert_eq!(partition_count(&bootstrap, &orders)?, Some(4));
    let state = format!("orderpipe.{}.shop.validate.state", ns.name());
    assert_eq!(partition_count(&bootstrap, &state)?, Some(4));
    // The barrier is recorded before it is published; the condition follows at the end of that
    // reconcile.
    wait_until("Resharding=True Draining", CONVERGE, || async {
        let p = api.get("shop").await.ok()?;
        (condition(&p, "Resharding")? == ("True".to_owned(), "Draining".to_owned())).then_some(())
    })
    .await?;
    // What the validate stage's workers are told: drain to the recorded barrier.
    let control = control_records(&bootstrap, ns.name())?;
    let told = &control
        .get("validate")
        .context("a control record for validate")?
        .view;
    match &told.phase {
        Phase::Draining(barrier) => assert_eq!(barrier.offsets(), draining.barrier.as_slice()),
        other => panic!("validate is told {other:?}"),
    }
    assert!(
        !control.contains_key("status"),
        "the status stage reads another topic"
    );

    // One old partition re-sharded: progress, no release.
    let group = format!("orderpipe.{}.shop.validate", ns.name());
    let generation = u64::try_from(draining.generation)?;
    let marker = ReshardMarker { generation }.to_metadata();
    let commit = |partitions: &[i32]| {
        let offsets: Vec<(i32, i64, &str)> = partitions
            .iter()
            .map(|&p| {
                (
                    p,
                    draining.barrier[usize::try_from(p).expect("partition")],
                    marker.as_str(),
                )
            })
            .collect();
        orderpipe_stack::commit_offsets(&bootstrap, &group, &orders, &offsets)
    };
    commit(&[0])?;
    growth_where(&api, &orders, "one of two old partitions re-sharded", |g| {
        g.resharded.as_deref() == Some("1/2")
    })
    .await?;
    assert!(matches!(
        control_records(&bootstrap, ns.name())?["validate"]
            .view
            .phase,
        Phase::Draining(_)
    ));

    // The operator goes away mid-growth; a new one continues from the status alone.
    operator.stop().await;
    let operator =
        InProcessOperator::start(&ns, WorkerPlacement::default(), NO_PROMETHEUS.into()).await;
    commit(&[0, 1])?;
    let done = growth_where(&api, &orders, "the growth completes", |g| {
        g.phase == GrowthPhase::Completed
    })
    .await?;
    assert!(done.held_seconds.is_some() && done.released_at.is_some());
    assert_eq!(
        control_records(&bootstrap, ns.name())?["validate"]
            .view
            .phase,
        Phase::Released
    );
    wait_until("Resharding=False Completed", CONVERGE, || async {
        let p = api.get("shop").await.ok()?;
        (condition(&p, "Resharding")? == ("False".to_owned(), "Completed".to_owned())).then_some(())
    })
    .await?;
    for reason in ["GrowthAnnounced", "GrowthSettled", "GrowthReleased"] {
        wait_until(&format!("a {reason} Event"), CONVERGE, || async {
            (events_with_reason(&ns, reason).await >= 1).then_some(())
        })
        .await?;
    }

    // 4 -> 6 is not a multiple: refused, naming the field and the next multiple; not grown.
    spec["spec"]["topics"][0]["partitions"] = json!(6);
    apply_pipeline(&ns, &spec).await?;
    let refused = topics_not_ready(&api, "shop", "GrowthRefused").await?;
    let status = refused.status.context("status")?;
    let topic = status
        .topics
        .iter()
        .find(|t| t.name == orders)
        .context("orders")?;
    let message = topic.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(&format!("spec.topics[name={orders}].partitions"))
            && message.contains("e.g. 8"),
        "{message}"
    );
    assert_eq!(partition_count(&bootstrap, &orders)?, Some(4));
    OperatorTest::finish(operator, ns).await
}
