//! The operator under faults of the parts it depends on, on the local stack: a Kafka cluster that
//! goes away while its pipeline changes, or before its pipeline's topics could be deleted, Kafka
//! credentials deleted before their namespace, and a kube-apiserver that restarts while pipelines
//! change. Each test brings a private broker (or a
//! whole private stack) it can stop: the shared one serves every other test. Needs
//! `make test-e2e`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use orderpipe_api::OrderPipeline;
use orderpipe_api::v1alpha1::{AutoscalingSpec, DeletionPolicy};
use orderpipe_e2e::{
    CONVERGE, InProcessOperator, NO_PROMETHEUS, OperatorTest, apply_pipeline, apply_secret,
    over_sasl_ssl, wait_ready,
};
use orderpipe_operator::settings::WorkerPlacement;
use orderpipe_operator::topics::cleanup::SKIP_ANNOTATION;
use orderpipe_stack::{Stack, TestNamespace, partition_count, unique_name, wait_until};
use serde_json::json;

/// The input's partitions, below the autoscaler's declared maximum: the HPA is capped at them.
const PARTITIONS: i32 = 2;
const DECLARED_MAX: i32 = 6;
/// How many reconciles an unreachable cluster may cause in [`WINDOW`]: a pipeline that is not
/// Ready is looked at every 10 s, so a handful; a tight loop would make hundreds.
const MAX_RECONCILES_IN_WINDOW: f64 = 8.0;
const WINDOW: Duration = Duration::from_secs(20);

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn while_kafka_is_unreachable_the_status_says_so_the_autoscaler_keeps_its_cap_and_all_recovers()
-> anyhow::Result<()> {
    let mut test = PrivateKafkaTest::start("kafkadown").await?;
    let proven = prove(&mut test).await;
    test.finish(proven).await
}

/// An [`OperatorTest`] whose pipelines use a broker of their own, which the test may stop.
struct PrivateKafkaTest {
    ns: TestNamespace,
    operator: InProcessOperator,
    kafka: Stack,
}

impl PrivateKafkaTest {
    async fn start(prefix: &str) -> anyhow::Result<PrivateKafkaTest> {
        let OperatorTest { ns, operator, .. } = OperatorTest::start(prefix).await?;
        let kafka = Stack::builder(&unique_name(prefix))
            .kafka_only()
            .start()
            .await?;
        Ok(PrivateKafkaTest {
            ns,
            operator,
            kafka,
        })
    }

    /// Stops the broker whatever `proven` says, then reports it.
    async fn finish(self, proven: anyhow::Result<()>) -> anyhow::Result<()> {
        self.kafka.stop().await?;
        proven?;
        OperatorTest::finish(self.operator, self.ns).await
    }
}

async fn prove(test: &mut PrivateKafkaTest) -> anyhow::Result<()> {
    let PrivateKafkaTest {
        ns,
        operator,
        kafka,
    } = test;
    let bootstrap = kafka.kafka_bootstrap()?.to_owned();
    let input = format!("{}.orders", ns.name());
    let pipeline = |target_lag_per_replica| {
        let pipeline = OrderPipeline::test("shop")
            .bootstrap(&bootstrap)
            .topic_prefix(ns.name())
            .partitions(&input, PARTITIONS)
            .autoscaling(
                "validate",
                AutoscalingSpec {
                    target_lag_per_replica: Some(target_lag_per_replica),
                    ..AutoscalingSpec::test(DECLARED_MAX)
                },
            );
        serde_json::to_value(pipeline)
    };
    apply_pipeline(ns, &pipeline(100)?).await?;
    wait_ready(ns, "shop").await?;
    anyhow::ensure!(
        hpa_max(ns).await == Some(PARTITIONS),
        "the HPA is capped at the input's {PARTITIONS} partitions"
    );

    kafka.stop_kafka().await?;
    // A user edits the pipeline while its cluster is gone: the reconcile cannot describe a topic.
    apply_pipeline(ns, &pipeline(200)?).await?;
    let unavailable = wait_until(
        "TopicsReady=False with reason KafkaUnavailable and the brokers in the message",
        CONVERGE,
        || async {
            let p = ns.api::<OrderPipeline>().get("shop").await.ok()?;
            let status = p.status?;
            let topics = status
                .conditions
                .iter()
                .find(|c| c.type_ == "TopicsReady")?;
            let current = status.observed_generation == p.metadata.generation;
            (current
                && topics.status == "False"
                && topics.reason == "KafkaUnavailable"
                && topics.message.contains(&bootstrap))
            .then(|| topics.message.clone())
        },
    )
    .await?;
    eprintln!("status while Kafka is down: {unavailable}");
    anyhow::ensure!(
        hpa_max(ns).await == Some(PARTITIONS),
        "the HPA lost its cap while Kafka was unreachable: maxReplicas {:?}",
        hpa_max(ns).await
    );

    let reconciles = || operator.counter("orderpipe_operator_reconciles_total");
    let before = reconciles();
    let window = tokio::time::Instant::now() + WINDOW;
    // Observing a quiet period is the point here: the window is the measurement, not a wait
    // for something to happen.
    tokio::time::sleep_until(window).await;
    let during = reconciles() - before;
    anyhow::ensure!(
        during <= MAX_RECONCILES_IN_WINDOW,
        "{during} reconciles in {WINDOW:?} with Kafka unreachable: a tight loop"
    );
    eprintln!("{during} reconciles in {WINDOW:?} while Kafka was unreachable");

    kafka.start_kafka().await?;
    let recovered = wait_ready(ns, "shop").await?;
    anyhow::ensure!(
        hpa_max(ns).await == Some(PARTITIONS),
        "after recovery the HPA is capped at {PARTITIONS}"
    );
    let input_ready = recovered
        .status
        .iter()
        .flat_map(|s| &s.topics)
        .find(|t| t.name == input)
        .is_some_and(|t| t.ready);
    anyhow::ensure!(input_ready, "{input} ready again after the outage");
    Ok(())
}

/// The stage's HPA `maxReplicas`.
async fn hpa_max(ns: &TestNamespace) -> Option<i32> {
    let hpa = ns
        .api::<HorizontalPodAutoscaler>()
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .pop()?;
    Some(hpa.spec?.max_replicas)
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_pipeline_whose_kafka_is_gone_is_held_for_topic_cleanup_until_the_user_skips_it()
-> anyhow::Result<()> {
    let mut test = PrivateKafkaTest::start("cleanupskip").await?;
    let proven = held_then_skipped(&mut test).await;
    test.finish(proven).await
}

async fn held_then_skipped(test: &mut PrivateKafkaTest) -> anyhow::Result<()> {
    let PrivateKafkaTest {
        ns,
        operator,
        kafka,
    } = test;
    let dead_letter = format!("{}.dlq", ns.name());
    let pipeline = OrderPipeline::test("shop")
        .bootstrap(kafka.kafka_bootstrap()?)
        .topic_prefix(ns.name())
        .deletion_policy(&dead_letter, DeletionPolicy::Delete);
    apply_pipeline(ns, &serde_json::to_value(pipeline)?).await?;
    wait_ready(ns, "shop").await?;
    kafka.stop_kafka().await?;

    let api = ns.api::<OrderPipeline>();
    let errors = || operator.counter("orderpipe_operator_reconcile_errors_total");
    let before = errors();
    api.delete("shop", &DeleteParams::default()).await?;
    wait_until("a failed topic cleanup", CONVERGE, || async {
        (errors() > before).then_some(())
    })
    .await?;
    anyhow::ensure!(
        api.get_opt("shop").await?.is_some(),
        "the pipeline is held by its finalizer while its topics cannot be deleted"
    );

    api.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {SKIP_ANNOTATION: "true"}}})),
    )
    .await?;
    wait_until("the pipeline is released", CONVERGE, || async {
        api.get_opt("shop").await.ok()?.is_none().then_some(())
    })
    .await?;
    let events = ns.api::<Event>().list(&ListParams::default()).await?.items;
    let skipped = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("TopicCleanupSkipped"))
        .context("a Warning Event TopicCleanupSkipped")?;
    anyhow::ensure!(
        skipped.type_.as_deref() == Some("Warning")
            && skipped
                .message
                .as_deref()
                .unwrap_or_default()
                .contains(&dead_letter),
        "the Event names the topic left behind: {skipped:?}"
    );
    Ok(())
}

/// A namespace deleted after the Kafka credentials Secrets of its `deletionPolicy: Delete` pipeline
/// went: the cleanup cannot authenticate, so after the give-up time the operator releases the
/// pipeline with its topics left behind, and the namespace finishes terminating.
#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_namespace_whose_kafka_secrets_went_first_finishes_terminating_with_its_topics_kept()
-> anyhow::Result<()> {
    let give_up = Duration::from_secs(5);
    let OperatorTest {
        stack,
        bootstrap: plaintext,
        ns,
        operator,
    } = OperatorTest::start_with("nsdelete", |settings| {
        settings.topic_cleanup_give_up = Some(give_up);
        // Short, so the finalizer reads the Secrets again rather than from the cache.
        settings.secret_refresh = Some(Duration::from_secs(1));
    })
    .await?;
    let secure = stack.kafka_secure()?;
    let ca_pem = std::fs::read_to_string(&secure.ca_file)?;
    apply_secret(&ns, "kafka-ca", json!({ "ca.crt": ca_pem })).await?;
    let credentials = json!({ "username": secure.username, "password": secure.password });
    apply_secret(&ns, "kafka-user", credentials).await?;
    let dead_letter = format!("{}.dlq", ns.name());
    let mut pipeline = serde_json::to_value(
        OrderPipeline::test("shop")
            .bootstrap(&secure.bootstrap)
            .topic_prefix(ns.name())
            .deletion_policy(&dead_letter, DeletionPolicy::Delete),
    )?;
    over_sasl_ssl(&mut pipeline, "kafka-user");
    apply_pipeline(&ns, &pipeline).await?;
    wait_ready(&ns, "shop").await?;

    let secrets = ns.api::<Secret>();
    for name in ["kafka-ca", "kafka-user"] {
        secrets.delete(name, &DeleteParams::default()).await?;
    }
    let deleted = Instant::now();
    let namespaces = Api::<Namespace>::all(ns.client().clone());
    namespaces
        .delete(ns.name(), &DeleteParams::background())
        .await?;
    wait_until("the namespace finishes terminating", CONVERGE, || async {
        namespaces
            .get_opt(ns.name())
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    eprintln!(
        "measured: the namespace was gone {:?} after its deletion (cleanup given up after {give_up:?})",
        deleted.elapsed()
    );
    anyhow::ensure!(
        deleted.elapsed() >= give_up,
        "released before the give-up time: the cleanup did not fail as the test means"
    );
    anyhow::ensure!(
        partition_count(&plaintext, &dead_letter)?.is_some(),
        "{dead_letter} was deleted: the cleanup should not have reached Kafka"
    );
    OperatorTest::finish(operator, ns).await
}

/// Pipelines on a control plane of the test's own, so its apiserver may restart.
const RESTART_PIPELINES: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e tools: make test-e2e"]
async fn an_apiserver_restart_while_pipelines_change_loses_no_change_and_duplicates_no_child()
-> anyhow::Result<()> {
    let mut stack = Stack::builder(&unique_name("apirestart"))
        .prometheus(false)
        .start()
        .await?;
    let ns =
        TestNamespace::create(stack.kubeconfig().context("a kubeconfig")?, "apirestart").await?;
    let operator =
        InProcessOperator::start(&ns, WorkerPlacement::default(), NO_PROMETHEUS.into()).await;
    let proven = restart_while_changing(&mut stack, &ns).await;
    operator.stop().await;
    // While the apiserver still runs: the namespace is deleted, or on failure dumped first.
    match proven {
        Ok(()) => ns.cleanup().await?,
        Err(_) => drop(ns),
    }
    stack.stop().await?;
    proven
}

async fn restart_while_changing(stack: &mut Stack, ns: &TestNamespace) -> anyhow::Result<()> {
    let bootstrap = stack.kafka_bootstrap()?.to_owned();
    let pipeline = |index: usize, replicas: i32| {
        let name = format!("shop-{index}");
        let prefix = format!("{}.{name}", ns.name());
        serde_json::to_value(
            OrderPipeline::test(&name)
                .bootstrap(&bootstrap)
                .topic_prefix(&prefix)
                .replicas("validate", replicas),
        )
    };
    for index in 0..RESTART_PIPELINES {
        apply_pipeline(ns, &pipeline(index, 1)?).await?;
    }
    for index in 0..RESTART_PIPELINES {
        wait_ready(ns, &format!("shop-{index}")).await?;
    }

    // Half the changes reach the operator before the restart, half while it reconnects.
    let (before, after) = (0..RESTART_PIPELINES).partition::<Vec<_>, _>(|i| i % 2 == 0);
    for &index in &before {
        apply_pipeline(ns, &pipeline(index, 2)?).await?;
    }
    let restart = Instant::now();
    stack.stop_apiserver().await?;
    stack.start_apiserver().await?;
    eprintln!(
        "measured: kube-apiserver down and back in {:.1?}",
        restart.elapsed()
    );
    for &index in &after {
        apply_pipeline(ns, &pipeline(index, 2)?).await?;
    }

    let converged = Instant::now();
    let deployments = ns.api::<k8s_openapi::api::apps::v1::Deployment>();
    let pipelines = ns.api::<OrderPipeline>();
    let waited = wait_until(
        "every pipeline Ready at its latest generation, one Deployment per stage at 2 replicas",
        CONVERGE,
        || async {
            let listed = pipelines.list(&ListParams::default()).await.ok()?;
            let current = listed.items.iter().all(|p| {
                orderpipe_e2e::is_ready(p)
                    && p.status.as_ref().and_then(|s| s.observed_generation)
                        == p.metadata.generation
            });
            let workloads = deployments.list(&ListParams::default()).await.ok()?.items;
            let at_two = workloads
                .iter()
                .all(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(2));
            (current && listed.items.len() == RESTART_PIPELINES && at_two).then(|| {
                let owners: std::collections::BTreeMap<String, String> = listed
                    .items
                    .iter()
                    .filter_map(|p| Some((p.metadata.uid.clone()?, p.metadata.name.clone()?)))
                    .collect();
                (owners, workloads)
            })
        },
    )
    .await;
    let (owners, workloads) = match waited {
        Ok(found) => found,
        Err(error) => {
            let listed = pipelines.list(&ListParams::default()).await?;
            let seen: Vec<_> = listed
                .items
                .iter()
                .map(|p| {
                    (
                        p.metadata.name.clone().unwrap_or_default(),
                        orderpipe_e2e::is_ready(p),
                        p.metadata.generation,
                        p.status.as_ref().and_then(|s| s.observed_generation),
                    )
                })
                .collect();
            anyhow::bail!("{error}; (pipeline, ready, generation, observed): {seen:?}");
        }
    };
    // Nothing duplicated, nothing orphaned: each Deployment belongs to a live pipeline, and each
    // pipeline has exactly its one stage's.
    let mut per_owner = std::collections::BTreeMap::<String, usize>::new();
    for deployment in &workloads {
        let owner = deployment
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find_map(|o| owners.get(&o.uid))
            .with_context(|| {
                format!(
                    "{:?} has no live pipeline as owner",
                    deployment.metadata.name
                )
            })?;
        *per_owner.entry(owner.clone()).or_default() += 1;
    }
    anyhow::ensure!(
        per_owner.len() == RESTART_PIPELINES && per_owner.values().all(|n| *n == 1),
        "Deployments per pipeline: {per_owner:?}"
    );
    eprintln!(
        "measured: {RESTART_PIPELINES} pipelines Ready at their latest generation {:.1?} after the \
         last change; {} Deployments, one per pipeline",
        converged.elapsed(),
        workloads.len()
    );
    Ok(())
}
