//! What the live view shows: each stage's counters (scraped from every worker's `/metrics` through
//! the host port the node agent publishes on the pod), lag, ready replicas and live worker
//! processes; the pipeline's conditions; for a stage released by canary, its Rollout, the
//! AnalysisRun judging the newest version and the canary's share from the pipeline's status.
//! Counters of workers that went away (scaled down) are kept, so the totals never go backwards.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use orderpipe_api::OrderPipeline;
use orderpipe_api::contract::{self, naming};
use orderpipe_api::v1alpha1::{CanaryStatus, OrderPipelineStatus};
use orderpipe_stack::argo::{self, AnalysisState, RolloutState};

use super::DemoError;
use super::pipeline::STAGES;
use orderpipe_node_agent::{local_ports, running_pid};
use orderpipe_stack::pid_alive;

/// The label the operator puts on every worker pod of a pipeline (`operator/src/children.rs`).
const PIPELINE_LABEL: &str = "orderpipe.dev/pipeline";
const STAGE_LABEL: &str = "orderpipe.dev/stage";
/// The `stage` label of the intake gateway's pods.
const INTAKE_STAGE: &str = "intake";

/// A stage's counters, from `orderpipe_records_*` (see `docs/worker.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub consumed: f64,
    pub processed: f64,
    pub rejected: f64,
    pub dead_lettered: f64,
    pub duplicates: f64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.consumed += other.consumed;
        self.processed += other.processed;
        self.rejected += other.rejected;
        self.dead_lettered += other.dead_lettered;
        self.duplicates += other.duplicates;
    }
}

/// One stage in a snapshot.
#[derive(Debug, Clone, Default)]
pub struct StageView {
    pub name: String,
    pub counters: Counters,
    /// Sum of the workers' `orderpipe_consumer_lag` (refreshed by librdkafka every 5 s).
    pub lag: f64,
    /// The lag the operator measures in Kafka, read as the stage's HPA reads it: from the external
    /// metrics API through the apiserver. Unlike `lag`, it does not vanish with the stage's pods.
    /// `None` while the API does not answer.
    pub kafka_lag: Option<i64>,
    pub desired: i32,
    pub ready: i32,
    /// Worker pods whose process (the node agent's `pid://` container ID) is alive.
    pub processes: usize,
}

/// The pipeline at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub stages: Vec<StageView>,
    /// `type=status (reason)` of each condition.
    pub conditions: Vec<String>,
    /// The stage that runs as an Argo Rollout, if one does.
    pub release: Option<ReleaseView>,
}

/// A stage released by canary at one moment.
#[derive(Debug, Clone, Default)]
pub struct ReleaseView {
    pub stage: String,
    pub rollout: RolloutState,
    /// The AnalysisRun judging the Rollout's newest version, once there is one.
    pub analysis: Option<AnalysisState>,
    /// The canary's share as the operator reports it (`status.stages[].canary`), while one runs.
    pub canary: Option<CanaryStatus>,
}

/// Takes snapshots of one pipeline; remembers the last counters of each worker pod.
pub struct Observer {
    client: Client,
    namespace: String,
    pipeline: String,
    http: reqwest::Client,
    /// Last counters per pod UID, with the pod's stage.
    live: HashMap<String, (String, Counters)>,
    /// Counters of pods that are gone, per stage.
    retired: BTreeMap<String, Counters>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("namespace", &self.namespace)
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl Observer {
    pub fn new(client: Client, namespace: &str, pipeline: &str) -> Result<Observer, DemoError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(DemoError::Http)?;
        Ok(Observer {
            client,
            namespace: namespace.to_owned(),
            pipeline: pipeline.to_owned(),
            http,
            live: HashMap::new(),
            retired: BTreeMap::new(),
        })
    }

    /// The pipeline now.
    pub async fn snapshot(&mut self) -> Result<Snapshot, DemoError> {
        let pods = self.worker_pods().await?;
        let mut lag: BTreeMap<String, f64> = BTreeMap::new();
        let mut processes: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen = HashMap::new();
        for pod in &pods {
            let stage = label(pod, STAGE_LABEL);
            if running_pid(pod).is_some_and(pid_alive) {
                *processes.entry(stage.clone()).or_default() += 1;
            }
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let Some(port) = local_ports(pod).get("metrics").copied() else {
                continue;
            };
            match self.scrape(port).await {
                Some((counters, pod_lag)) => {
                    *lag.entry(stage.clone()).or_default() += pod_lag;
                    seen.insert(uid, (stage, counters));
                }
                // A worker starting or stopping: keep what it last reported.
                None => {
                    if let Some(last) = self.live.get(&uid) {
                        seen.insert(uid, last.clone());
                    }
                }
            }
        }
        for (uid, (stage, counters)) in &self.live {
            if !seen.contains_key(uid) {
                self.retired.entry(stage.clone()).or_default().add(counters);
            }
        }
        self.live = seen;

        let status = self.status().await?.unwrap_or_default();
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut stages = Vec::new();
        let mut release = None;
        for name in STAGES {
            let mut counters = self.retired.get(name).copied().unwrap_or_default();
            for (stage, live) in self.live.values() {
                if stage == name {
                    counters.add(live);
                }
            }
            let stage_status = status.stages.iter().find(|s| s.name == name);
            let (desired, ready) = if stage_status
                .is_some_and(|s| s.workload.as_deref() == Some("Rollout"))
            {
                let view = self
                    .release_view(name, stage_status.and_then(|s| s.canary.clone()))
                    .await?;
                let counts = view
                    .as_ref()
                    .map(|v| (v.rollout.desired, v.rollout.ready))
                    .unwrap_or_default();
                release = release.or(view);
                counts
            } else {
                let deployment = deployments
                    .get_opt(&naming::workload(&self.pipeline, name))
                    .await
                    .map_err(|source| DemoError::kube("reading a stage's Deployment", source))?;
                deployment
                    .map(|d| {
                        (
                            d.spec.and_then(|s| s.replicas).unwrap_or_default(),
                            d.status.and_then(|s| s.ready_replicas).unwrap_or_default(),
                        )
                    })
                    .unwrap_or_default()
            };
            stages.push(StageView {
                name: name.to_owned(),
                counters,
                lag: lag.get(name).copied().unwrap_or_default(),
                kafka_lag: self.external_lag(name).await,
                desired,
                ready,
                processes: processes.get(name).copied().unwrap_or_default(),
            });
        }
        let conditions = status
            .conditions
            .iter()
            .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
            .collect();
        Ok(Snapshot {
            stages,
            conditions,
            release,
        })
    }

    /// The Rollout of `stage` and the AnalysisRun judging its newest version: the one the Rollout
    /// names while it runs, else the newest run labelled with that version (an ended run is no
    /// longer named).
    async fn release_view(
        &self,
        stage: &str,
        canary: Option<CanaryStatus>,
    ) -> Result<Option<ReleaseView>, DemoError> {
        let rollout = argo::rollouts(self.client.clone(), &self.namespace)
            .get_opt(&naming::workload(&self.pipeline, stage))
            .await
            .map_err(|source| DemoError::kube("reading a stage's Rollout", source))?;
        let Some(rollout) = rollout.as_ref().map(RolloutState::of) else {
            return Ok(None);
        };
        let runs = argo::analysis_runs(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .map_err(|source| DemoError::kube("listing AnalysisRuns", source))?;
        let analysis = runs
            .items
            .iter()
            .map(|run| {
                (
                    run.metadata.creation_timestamp.clone(),
                    AnalysisState::of(run),
                )
            })
            .filter(|(_, run)| match &rollout.analysis_run {
                Some(name) => &run.name == name,
                None => run.judges.is_some() && run.judges == rollout.current,
            })
            .max_by_key(|(created, _)| created.clone())
            .map(|(_, run)| run);
        Ok(Some(ReleaseView {
            stage: stage.to_owned(),
            rollout,
            analysis,
            canary,
        }))
    }

    /// Worker pods of `stage` with a live process.
    pub async fn processes(&self, stage: &str) -> Result<usize, DemoError> {
        Ok(self
            .worker_pods()
            .await?
            .iter()
            .filter(|pod| label(pod, STAGE_LABEL) == stage)
            .filter(|pod| running_pid(pod).is_some_and(pid_alive))
            .count())
    }

    /// The base URLs of the intake gateway's ready replicas, on this machine's loopback (the node
    /// agent maps each pod's `http` port to a local one), in pod name order.
    pub async fn gateway_urls(&self) -> Result<Vec<String>, DemoError> {
        let mut pods: Vec<Pod> = self
            .worker_pods()
            .await?
            .into_iter()
            .filter(|pod| label(pod, STAGE_LABEL) == INTAKE_STAGE && is_ready(pod))
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(pods
            .iter()
            .filter_map(|pod| local_ports(pod).get("http").copied())
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect())
    }

    async fn worker_pods(&self) -> Result<Vec<Pod>, DemoError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!("{PIPELINE_LABEL}={}", self.pipeline);
        Ok(pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| DemoError::kube("listing worker pods", source))?
            .items)
    }

    async fn status(&self) -> Result<Option<OrderPipelineStatus>, DemoError> {
        let pipelines: Api<OrderPipeline> = Api::namespaced(self.client.clone(), &self.namespace);
        let pipeline = pipelines
            .get_opt(&self.pipeline)
            .await
            .map_err(|source| DemoError::kube("reading the OrderPipeline", source))?;
        Ok(pipeline.and_then(|p| p.status))
    }

    /// `orderpipe_consumer_lag` of `stage` from `external.metrics.k8s.io`, as `kubectl get --raw`
    /// and the HPA controller read it.
    async fn external_lag(&self, stage: &str) -> Option<i64> {
        let path = format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{}?labelSelector=pipeline%3D{}%2Cstage%3D{stage}",
            self.namespace,
            contract::metrics::CONSUMER_LAG,
            self.pipeline,
        );
        let request = http::Request::get(path).body(Vec::new()).ok()?;
        let list: serde_json::Value = self.client.request(request).await.ok()?;
        list["items"][0]["value"].as_str()?.parse().ok()
    }

    async fn scrape(&self, port: u16) -> Option<(Counters, f64)> {
        let body = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(parse_metrics(&body))
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn label(pod: &Pod, key: &str) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .cloned()
        .unwrap_or_default()
}

/// One worker's counters and total lag from its Prometheus text exposition.
fn parse_metrics(body: &str) -> (Counters, f64) {
    let mut counters = Counters::default();
    let mut lag = 0.0;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let outcome = labels
            .split(',')
            .find_map(|pair| pair.strip_prefix("outcome=\""))
            .map(|v| v.trim_end_matches(['"', '}']));
        match (name, outcome) {
            ("orderpipe_records_consumed_total", _) => counters.consumed += value,
            ("orderpipe_records_processed_total", Some("processed")) => {
                counters.processed += value;
            }
            ("orderpipe_records_processed_total", Some("rejected")) => counters.rejected += value,
            ("orderpipe_records_processed_total", Some("dead_lettered")) => {
                counters.dead_lettered += value;
            }
            ("orderpipe_records_processed_total", Some("duplicate")) => {
                counters.duplicates += value;
            }
            ("orderpipe_consumer_lag", _) => lag += value,
            _ => {}
        }
    }
    (counters, lag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_lag_are_read_from_the_exposition() {
        let body = "# HELP x\n\
            orderpipe_records_consumed_total{pipeline=\"p\",stage=\"validate\"} 10\n\
            orderpipe_records_processed_total{pipeline=\"p\",stage=\"validate\",outcome=\"processed\"} 7\n\
            orderpipe_records_processed_total{outcome=\"rejected\",pipeline=\"p\",stage=\"validate\"} 2\n\
            orderpipe_records_processed_total{pipeline=\"p\",stage=\"validate\",outcome=\"dead_lettered\"} 1\n\
            orderpipe_consumer_lag{pipeline=\"p\",stage=\"validate\",partition=\"0\"} 3\n\
            orderpipe_consumer_lag{pipeline=\"p\",stage=\"validate\",partition=\"1\"} 4\n";
        let (counters, lag) = parse_metrics(body);
        assert_eq!(
            counters,
            Counters {
                consumed: 10.0,
                processed: 7.0,
                rejected: 2.0,
                dead_lettered: 1.0,
                duplicates: 0.0
            }
        );
        assert!((lag - 7.0).abs() < f64::EPSILON);
    }
}
