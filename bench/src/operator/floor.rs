//! The platform's floor under apply -> Ready: the same pipelines' topics and children created
//! without the operator, by the operator's own code paths, so the row says what the apiserver,
//! controller-manager, scheduler, kwok and Kafka of this box need for those objects alone.
//!
//! Per pipeline, as many at once as the operator reconciles at once: the pipeline applied (for its
//! uid, which the children's owner references need), its topics created through the operator's
//! Kafka admin one by one as its topic sync does, its children rendered by `desired_children`,
//! planned against nothing live and written by its `Writer`. What the operator does on top (status,
//! Events, finalizer, describes, re-reconciles on child changes) is missing here, so the operator's
//! row minus this one is its whole overhead. The clock stops when every stage Deployment reports a
//! ready replica, which is what the operator's Ready waits for (not `availableReplicas`, which
//! comes the Deployment's `minReadySeconds` later).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use orderpipe_api::OrderPipeline;
use orderpipe_operator::capabilities::Capabilities;
use orderpipe_operator::child_plan;
use orderpipe_operator::controller::CONCURRENCY;
use orderpipe_operator::desired::desired_children;
use orderpipe_operator::metrics::Metrics;
use orderpipe_operator::model;
use orderpipe_operator::recorder::Recorder;
use orderpipe_operator::settings::OperatorSettings;
use orderpipe_operator::topics::{
    AdminConnection, AdminSettings, KafkaTopicAdmin, ResolvedKafkaSecrets, TopicAdmin,
    desired_topics,
};
use orderpipe_operator::writer::Writer;

use super::{WORKER_IMAGE, pipeline};

/// Creates `size` pipelines' objects without an operator in `namespace` (which exists) and returns
/// how long it took until every stage Deployment had a ready replica, or `None` after `budget`.
pub async fn measure(
    client: &Client,
    namespace: &str,
    bootstrap: &str,
    size: usize,
    budget: Duration,
) -> anyhow::Result<Option<Duration>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    // Listed before the first write, so no Deployment's readiness can be missed.
    let mut events = watcher(deployments, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    // One admin client for all, as the operator's pool keeps one per Kafka connection.
    let first: OrderPipeline = serde_json::from_value(pipeline(namespace, "p0", bootstrap))?;
    let connection = AdminConnection::new(&first.spec.kafka, &ResolvedKafkaSecrets::default())
        .context("the pipelines' Kafka connection")?;
    // The operator's own timeout for one admin call.
    let admin = KafkaTopicAdmin::connect(&connection, AdminSettings::default().request_timeout)
        .context("connecting the Kafka admin")?;
    let writes = Writes::new(client, namespace, admin);
    let start = Instant::now();
    let create = futures::stream::iter(0..size)
        .map(|i| writes.pipeline(format!("p{i}"), bootstrap))
        .buffer_unordered(usize::from(CONCURRENCY))
        .try_for_each(|_| async { Ok(()) });
    let mut create = std::pin::pin!(create);
    let mut created = false;
    let mut ready = HashSet::new();
    let deadline = tokio::time::sleep(budget);
    tokio::pin!(deadline);
    while ready.len() < size {
        tokio::select! {
            result = &mut create, if !created => {
                result?;
                created = true;
                eprintln!("[bench] floor: {size} pipelines' objects written after {:.1} s", start.elapsed().as_secs_f64());
            }
            event = events.try_next() => {
                let deployment = event?.context("the Deployment watch ended")?;
                let replicas = deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
                if replicas > 0 {
                    ready.insert(deployment.name_any());
                }
            }
            () = &mut deadline => {
                eprintln!("[bench] floor: timed out with {}/{size} ready", ready.len());
                return Ok(None);
            }
        }
    }
    let took = start.elapsed();
    eprintln!(
        "[bench] floor: {size}/{size} ready after {:.1} s",
        took.as_secs_f64()
    );
    Ok(Some(took))
}

/// The operator's Kafka admin and writers, set up once for the namespace.
struct Writes {
    client: Client,
    admin: KafkaTopicAdmin,
    recorder: Recorder,
    metrics: Metrics,
    namespace: String,
    settings: OperatorSettings,
}

impl Writes {
    fn new(client: &Client, namespace: &str, admin: KafkaTopicAdmin) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "orderpipe-bench-floor".into(),
            instance: None,
        };
        Self {
            client: client.clone(),
            admin,
            recorder: Recorder::new(client.clone(), reporter),
            metrics: Metrics::register(&mut prometheus_client::registry::Registry::default()),
            namespace: namespace.to_owned(),
            settings: OperatorSettings {
                worker_image: WORKER_IMAGE.into(),
                ..OperatorSettings::default()
            },
        }
    }

    /// One pipeline: applied, its topics created, its children written.
    async fn pipeline(&self, name: String, bootstrap: &str) -> anyhow::Result<()> {
        let namespace = &self.namespace;
        let api: Api<OrderPipeline> = Api::namespaced(self.client.clone(), namespace);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply("orderpipe-bench").force(),
                &Patch::Apply(&pipeline(namespace, &name, bootstrap)),
            )
            .await
            .with_context(|| format!("applying pipeline {name}"))?;
        let mut partitions = BTreeMap::new();
        for topic in desired_topics(&applied) {
            self.admin
                .create(
                    &topic.name,
                    topic.partitions,
                    topic.replication_factor,
                    &topic.config,
                )
                .await
                .with_context(|| format!("creating topic {}", topic.name))?;
            partitions.insert(topic.name, topic.partitions);
        }
        let capabilities = Capabilities {
            rollouts: true,
            service_monitors: true,
        };
        let (validated, _) = model::validate(&applied, &partitions, capabilities, &self.settings);
        let desired = desired_children(&applied, &validated, capabilities, &self.settings)
            .with_context(|| format!("rendering the children of {name}"))?;
        let plan = child_plan::plan(desired, &BTreeMap::new(), &validated);
        Writer::new(&self.client, &self.recorder, &self.metrics, &self.namespace)
            .children(&plan)
            .await
            .with_context(|| format!("writing the children of {name}"))?;
        Ok(())
    }
}
