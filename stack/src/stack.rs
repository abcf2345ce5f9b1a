//! `Stack`: one local real-infrastructure environment (Kubernetes control plane and/or Kafka — one
//! broker or a replicated cluster — and with Kubernetes a Prometheus and the exporters it scrapes)
//! in its own work dir, started by a builder, restartable component by component (each Kafka
//! broker killed, paused, stopped and started on its own), and stopped by PID on `stop()`, on
//! `Drop`, and (through the watchdogs) when its owner dies.
//! Must not share state with other stacks: own ports, PKI, data dirs and logs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Client;

use crate::component::{Component, Member, stop_members, stop_members_blocking};
use crate::envfile::StackEnv;
use crate::error::{Result, StackError};
use crate::exporters::{self, Exporters, SystemTarget};
use crate::kafka::{KafkaBrokerInfo, KafkaCluster, KafkaControllers, KafkaTopology, SecureKafka};
use crate::kube_cluster::{KubeCluster, KubeOptions, Kubernetes};
use crate::prometheus::PrometheusServer;
use crate::service_monitors;
use crate::tools::{self, Tools};

/// Marks a directory as a stack work dir, the only kind `start` will wipe.
const MARKER: &str = ".orderpipe-e2e-stack";
/// A port taken between our probe and the component's bind is retried with fresh ports.
const START_ATTEMPTS: u32 = 3;

/// Options for a [`Stack`]; see [`Stack::builder`].
#[derive(Debug, Clone)]
pub struct StackBuilder {
    name: String,
    kafka: bool,
    kafka_topology: KafkaTopology,
    kubernetes: Kubernetes,
    work_dir: Option<PathBuf>,
    tools: Option<Tools>,
    crds_dir: Option<PathBuf>,
    install_crds: bool,
    third_party_crds: bool,
    argo_rollouts: bool,
    prometheus: bool,
    controller_api_qps: Option<u32>,
    ready_timeout: Duration,
    stop_grace: Duration,
}

impl StackBuilder {
    /// Run Kafka (default: yes, one broker).
    pub fn kafka(mut self, on: bool) -> Self {
        self.kafka = on;
        self
    }

    /// How many Kafka brokers (default 1; at most 9). From 2 on, the internal topics and the
    /// default for new topics are replicated (3 replicas and `min.insync.replicas=2` from three
    /// brokers on), and every broker is also a KRaft controller unless
    /// [`StackBuilder::kafka_controllers`] says otherwise.
    pub fn kafka_brokers(mut self, brokers: u8) -> Self {
        self.kafka_topology.brokers = brokers;
        self
    }

    /// Where the KRaft controllers run (default: [`KafkaControllers::Combined`], in the brokers).
    pub fn kafka_controllers(mut self, controllers: KafkaControllers) -> Self {
        self.kafka_topology.controllers = controllers;
        self
    }

    /// Kafka only, three brokers that are also the controllers: what `--profile kafka-ha` runs.
    pub fn kafka_ha(self) -> Self {
        self.kafka_only().kafka_topology(KafkaTopology::HA)
    }

    /// The whole Kafka shape at once.
    pub fn kafka_topology(mut self, topology: KafkaTopology) -> Self {
        self.kafka_topology = topology;
        self
    }

    /// How much of Kubernetes to run (default: [`Kubernetes::Full`]).
    pub fn kubernetes(mut self, kubernetes: Kubernetes) -> Self {
        self.kubernetes = kubernetes;
        self
    }

    /// Kafka only: `.kafka(true).kubernetes(Kubernetes::Off)`.
    pub fn kafka_only(self) -> Self {
        self.kafka(true).kubernetes(Kubernetes::Off)
    }

    /// Work dir (default `target/e2e/<name>`); wiped on start if it holds an old stack.
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Tools directory (default: [`Tools::locate`]).
    pub fn tools(mut self, tools: Tools) -> Self {
        self.tools = Some(tools);
        self
    }

    /// Directory of our own CRDs (default `<workspace>/crds`; missing or empty is fine).
    pub fn crds_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.crds_dir = Some(dir.into());
        self
    }

    /// Install any CRDs at all (default: yes); tests that only need core objects skip them.
    pub fn install_crds(mut self, on: bool) -> Self {
        self.install_crds = on;
        self
    }

    /// Install the Argo Rollouts and Prometheus Operator CRDs from the tools dir (default: yes).
    pub fn third_party_crds(mut self, on: bool) -> Self {
        self.third_party_crds = on;
        self
    }

    /// Also run the Argo Rollouts controller (default: no), for canary tests; needs
    /// [`Kubernetes::Full`] and the third-party CRDs.
    pub fn argo_rollouts(mut self, on: bool) -> Self {
        self.argo_rollouts = on;
        self
    }

    /// The kube-controller-manager's and kube-scheduler's client rate limit in requests per second
    /// (burst twice that). Default: theirs (20 and 50, burst 30 and 100). A benchmark that creates
    /// thousands of Deployments raises it, so it measures the operator rather than them.
    pub fn controller_api_qps(mut self, qps: u32) -> Self {
        self.controller_api_qps = Some(qps);
        self
    }

    /// Run Prometheus, scraping what the cluster's ServiceMonitors select and the system around
    /// the pipelines: the broker, the Argo Rollouts controller, kube-state-metrics and
    /// node-exporter, the last two run for it (default: yes; only with [`Kubernetes::Full`],
    /// where pods run).
    pub fn prometheus(mut self, on: bool) -> Self {
        self.prometheus = on;
        self
    }

    /// How long each component may take to become ready (default 180 s: two cores shared
    /// with compilers make a cold JVM or apiserver slow).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts every component and waits until all are ready. On failure, everything already
    /// started is stopped and the error names the component and shows its log tail.
    pub async fn start(self) -> Result<Stack> {
        let mut attempt = 1;
        loop {
            let mut stack = self.prepare()?;
            match stack.boot().await {
                Ok(()) => {
                    stack.write_env()?;
                    return Ok(stack);
                }
                Err(StackError::PortTaken { .. }) if attempt < START_ATTEMPTS => {
                    stack.shutdown().await?;
                    attempt += 1;
                }
                Err(error) => {
                    // The start error matters more than a failure to stop what did start.
                    let _ = stack.shutdown().await;
                    return Err(error);
                }
            }
        }
    }

    fn prepare(&self) -> Result<Stack> {
        let tools = match &self.tools {
            Some(tools) => tools.clone(),
            None => Tools::locate()?,
        };
        let work_dir = self
            .work_dir
            .clone()
            .unwrap_or_else(|| tools::e2e_root().join(&self.name));
        reset_work_dir(&work_dir)?;

        let kube = match self.kubernetes {
            Kubernetes::Off => None,
            mode => {
                let crds_dir = self
                    .crds_dir
                    .clone()
                    .unwrap_or_else(|| tools::workspace_root().join("crds"));
                let mut crd_files = Vec::new();
                if self.install_crds {
                    crd_files.extend(tools::repo_crds(&crds_dir)?);
                    if self.third_party_crds {
                        crd_files.extend(tools.third_party_crds()?);
                    }
                }
                let options = KubeOptions {
                    mode,
                    crd_files,
                    argo_rollouts: self.argo_rollouts,
                    controller_api_qps: self.controller_api_qps,
                    timeout: self.ready_timeout,
                };
                Some(KubeCluster::prepare(&tools, &work_dir, options)?)
            }
        };
        let kafka = if self.kafka {
            Some(KafkaCluster::prepare(
                &tools,
                &work_dir,
                self.kafka_topology,
                self.ready_timeout,
            )?)
        } else {
            None
        };
        let (prometheus, exporters) = match &kube {
            Some(kube) if self.prometheus && self.kubernetes == Kubernetes::Full => {
                let prometheus = PrometheusServer::prepare(&work_dir, self.ready_timeout)?;
                let exporters = Exporters::prepare(
                    &tools,
                    &work_dir,
                    kube.admin_kubeconfig(),
                    self.ready_timeout,
                )?;
                let mut targets = Vec::from(exporters.targets());
                targets.extend(kafka.iter().flat_map(KafkaCluster::metrics_addresses).map(
                    |address| SystemTarget {
                        job: "kafka",
                        address: address.to_owned(),
                    },
                ));
                targets.extend(kube.rollouts_metrics_address().map(|address| SystemTarget {
                    job: "argo-rollouts-metrics",
                    address: address.to_owned(),
                }));
                exporters::write_targets(prometheus.system_targets_file(), &targets)?;
                (Some(prometheus), Some(exporters))
            }
            _ => (None, None),
        };
        Ok(Stack {
            name: self.name.clone(),
            work_dir,
            tools,
            kube,
            kafka,
            prometheus,
            exporters,
            discovery: None,
            grace: self.stop_grace,
        })
    }
}

/// A running local stack. Dropping it stops every process (blocking, SIGTERM then SIGKILL).
#[derive(Debug)]
pub struct Stack {
    name: String,
    work_dir: PathBuf,
    tools: Tools,
    kube: Option<KubeCluster>,
    kafka: Option<KafkaCluster>,
    prometheus: Option<PrometheusServer>,
    exporters: Option<Exporters>,
    /// Keeps Prometheus's targets file in step with the ServiceMonitors (`service_monitors::run`).
    discovery: Option<tokio::task::JoinHandle<()>>,
    grace: Duration,
}

impl Stack {
    /// A builder for a stack named `name` (its work dir is `target/e2e/<name>`).
    pub fn builder(name: &str) -> StackBuilder {
        StackBuilder {
            name: name.to_owned(),
            kafka: true,
            kafka_topology: KafkaTopology::SINGLE,
            kubernetes: Kubernetes::Full,
            work_dir: None,
            tools: None,
            crds_dir: None,
            install_crds: true,
            third_party_crds: true,
            argo_rollouts: false,
            prometheus: true,
            controller_api_qps: None,
            ready_timeout: Duration::from_secs(180),
            stop_grace: Duration::from_secs(15),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> Option<&Path> {
        self.kube.as_ref().map(KubeCluster::admin_kubeconfig)
    }

    pub fn apiserver_url(&self) -> Option<&str> {
        self.kube.as_ref().map(KubeCluster::apiserver_url)
    }

    /// An admin kube client; it keeps working across `stop_apiserver`/`start_apiserver`.
    pub fn kube_client(&self) -> Result<Client> {
        self.kube
            .as_ref()
            .and_then(KubeCluster::client)
            .ok_or(StackError::NotInStack {
                component: Component::KubeApiserver.name(),
            })
    }

    /// `127.0.0.1:<port>` of every broker, comma-separated (one for a one-broker stack).
    pub fn kafka_bootstrap(&self) -> Result<&str> {
        self.kafka_ref().map(KafkaCluster::bootstrap)
    }

    /// The brokers' SASL_SSL listeners and their credentials.
    pub fn kafka_secure(&self) -> Result<SecureKafka> {
        SecureKafka::load(&self.work_dir, self.kafka_ref()?.secure_bootstrap())
    }

    /// The shape of the stack's Kafka.
    pub fn kafka_topology(&self) -> Result<KafkaTopology> {
        self.kafka_ref().map(KafkaCluster::topology)
    }

    /// Every broker: its id, component, listener, PID and whether it is paused.
    pub fn kafka_brokers(&self) -> Result<Vec<KafkaBrokerInfo>> {
        self.kafka_ref().map(KafkaCluster::brokers)
    }

    /// `http://127.0.0.1:<port>` of the stack's Prometheus.
    pub fn prometheus_url(&self) -> Result<&str> {
        self.prometheus
            .as_ref()
            .map(PrometheusServer::url)
            .ok_or(StackError::NotInStack {
                component: Component::Prometheus.name(),
            })
    }

    /// Where rule files for the stack's Prometheus go (then [`crate::prometheus::reload`]).
    pub fn prometheus_rules_dir(&self) -> Result<&Path> {
        self.prometheus
            .as_ref()
            .map(PrometheusServer::rules_dir)
            .ok_or(StackError::NotInStack {
                component: Component::Prometheus.name(),
            })
    }

    /// PID (= process group) of every running component.
    pub fn pids(&self) -> Vec<(Component, u32)> {
        let mut members: Vec<&Member> = Vec::new();
        if let Some(kube) = &self.kube {
            members.extend(kube.members());
        }
        if let Some(kafka) = &self.kafka {
            members.extend(kafka.members());
        }
        if let Some(prometheus) = &self.prometheus {
            members.push(prometheus.member());
        }
        if let Some(exporters) = &self.exporters {
            members.extend(exporters.members());
        }
        members
            .into_iter()
            .filter_map(|m| m.pid().map(|pid| (m.component(), pid)))
            .collect()
    }

    /// The stack as an env file (what `target/e2e/env` holds for the shared stack).
    pub fn env(&self) -> StackEnv {
        StackEnv {
            kubeconfig: self.kubeconfig().map(Path::to_path_buf),
            kafka_bootstrap: self.kafka_bootstrap().ok().map(str::to_owned),
            kafka_secure_bootstrap: self
                .kafka
                .as_ref()
                .map(|kafka| kafka.secure_bootstrap().to_owned()),
            kafka_brokers: self
                .kafka
                .as_ref()
                .map(|kafka| {
                    kafka
                        .brokers()
                        .into_iter()
                        .map(|b| (b.id, b.bootstrap))
                        .collect()
                })
                .unwrap_or_default(),
            prometheus_url: self.prometheus.as_ref().map(|p| p.url().to_owned()),
            prometheus_rules_dir: self
                .prometheus
                .as_ref()
                .map(|p| p.rules_dir().to_path_buf()),
            prometheus_targets_dir: self
                .prometheus
                .as_ref()
                .map(|p| p.local_targets_dir().to_path_buf()),
            tools_dir: self.tools.root().to_path_buf(),
            work_dir: self.work_dir.clone(),
            supervisor_pid: std::process::id(),
            pids: self
                .pids()
                .into_iter()
                .map(|(c, pid)| (c.name().to_owned(), pid))
                .collect(),
        }
    }

    /// `<work dir>/env`, rewritten whenever a PID changes.
    pub fn env_file(&self) -> PathBuf {
        self.work_dir.join("env")
    }

    /// Log file of a component.
    pub fn log_file(&self, component: Component) -> PathBuf {
        self.work_dir
            .join("logs")
            .join(format!("{}.log", component.name()))
    }

    /// Stops kube-apiserver (graceful, then SIGKILL); etcd and its data stay.
    pub async fn stop_apiserver(&mut self) -> Result<()> {
        let grace = self.grace;
        self.kube_mut()?.stop_apiserver(grace).await?;
        self.write_env()
    }

    /// Starts kube-apiserver again with the same port, certificates and etcd; waits for /readyz.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        self.kube_mut()?.start_apiserver().await?;
        self.write_env()
    }

    /// Stops every Kafka node (controlled shutdown, then SIGKILL); their log dirs stay.
    pub async fn stop_kafka(&mut self) -> Result<()> {
        let grace = self.grace;
        self.kafka_mut()?.stop(grace).await?;
        self.write_env()
    }

    /// Starts every Kafka node that is not running again on the same ports and log dirs; waits
    /// until every broker answers metadata listing all of them.
    pub async fn start_kafka(&mut self) -> Result<()> {
        self.kafka_mut()?.start().await?;
        self.write_env()
    }

    /// SIGKILLs broker `id` (its `node.id`, as metadata names it): a crash, no controlled
    /// shutdown. [`Stack::start_broker`] brings it back.
    pub fn kill_broker(&mut self, id: i32) -> Result<()> {
        self.kafka_mut()?.kill_broker(id)?;
        self.write_env()
    }

    /// Stops broker `id` gracefully (controlled shutdown, then SIGKILL after the grace period).
    pub async fn stop_broker(&mut self, id: i32) -> Result<()> {
        let grace = self.grace;
        self.kafka_mut()?.stop_broker(id, grace).await?;
        self.write_env()
    }

    /// Starts broker `id` again (same ports, same log dir) and waits until it answers metadata
    /// listing itself. Its partitions catch up afterwards: wait for [`crate::in_sync`].
    pub async fn start_broker(&mut self, id: i32) -> Result<()> {
        self.kafka_mut()?.start_broker(id).await?;
        self.write_env()
    }

    /// SIGSTOPs broker `id`: it keeps its PID and open connections and answers nothing, as a
    /// network partition or a long pause looks from the other brokers and the clients.
    pub fn pause_broker(&mut self, id: i32) -> Result<()> {
        self.kafka_mut()?.pause_broker(id)
    }

    /// SIGCONTs broker `id` after [`Stack::pause_broker`].
    pub fn resume_broker(&mut self, id: i32) -> Result<()> {
        self.kafka_mut()?.resume_broker(id)
    }

    /// Stops every component and waits for them to exit.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown().await
    }

    async fn boot(&mut self) -> Result<()> {
        let (kube, kafka, prometheus, exporters) = (
            &mut self.kube,
            &mut self.kafka,
            &mut self.prometheus,
            &mut self.exporters,
        );
        // Prometheus after the apiserver, whose ServiceMonitors say what it scrapes, and after
        // kube-state-metrics, which watches the apiserver.
        let kube = async {
            if let Some(kube) = kube {
                kube.start().await?;
            }
            if let Some(exporters) = exporters {
                exporters.start().await?;
            }
            match prometheus {
                Some(prometheus) => prometheus.start().await,
                None => Ok(()),
            }
        };
        let kafka = async {
            match kafka {
                Some(kafka) => kafka.start().await,
                None => Ok(()),
            }
        };
        tokio::try_join!(kube, kafka)?;
        if let (Some(kube), Some(prometheus)) = (&self.kube, &self.prometheus)
            && let Some(client) = kube.client()
        {
            let file = prometheus.targets_file().to_path_buf();
            self.discovery = Some(tokio::spawn(service_monitors::run(client, file)));
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<()> {
        let grace = self.grace;
        // First, so it does not log failed scrapes and discoveries while the rest stops.
        if let Some(discovery) = self.discovery.take() {
            discovery.abort();
        }
        if let Some(prometheus) = self.prometheus.as_mut() {
            prometheus.member_mut().stop(grace).await?;
        }
        if let Some(exporters) = self.exporters.as_mut() {
            stop_members(&mut exporters.members_mut(), grace).await?;
        }
        // Kafka and Kubernetes do not depend on each other: stop both at once.
        let (kube, kafka) = (&mut self.kube, &mut self.kafka);
        let kube = async {
            match kube {
                Some(kube) => kube.stop(grace).await,
                None => Ok(()),
            }
        };
        let kafka = async {
            match kafka {
                Some(kafka) => kafka.stop(grace).await,
                None => Ok(()),
            }
        };
        let (kube, kafka) = tokio::join!(kube, kafka);
        kube.and(kafka)
    }

    fn write_env(&self) -> Result<()> {
        self.env().write(&self.env_file())
    }

    fn kube_mut(&mut self) -> Result<&mut KubeCluster> {
        self.kube.as_mut().ok_or(StackError::NotInStack {
            component: Component::KubeApiserver.name(),
        })
    }

    fn kafka_ref(&self) -> Result<&KafkaCluster> {
        self.kafka.as_ref().ok_or(StackError::NotInStack {
            component: Component::Kafka.name(),
        })
    }

    fn kafka_mut(&mut self) -> Result<&mut KafkaCluster> {
        self.kafka.as_mut().ok_or(StackError::NotInStack {
            component: Component::Kafka.name(),
        })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(discovery) = self.discovery.take() {
            discovery.abort();
        }
        let mut members: Vec<&mut Member> = Vec::new();
        if let Some(prometheus) = self.prometheus.as_mut() {
            members.push(prometheus.member_mut());
        }
        if let Some(exporters) = self.exporters.as_mut() {
            members.extend(exporters.members_mut());
        }
        if let Some(kube) = self.kube.as_mut() {
            members.extend(kube.members_mut());
        }
        if let Some(kafka) = self.kafka.as_mut() {
            members.extend(kafka.members_mut());
        }
        stop_members_blocking(&mut members, self.grace);
    }
}

/// Empties `dir` for a fresh stack, refusing to wipe a directory that is not a stack's.
fn reset_work_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let is_stack = dir.join(MARKER).exists();
        let is_empty = fs::read_dir(dir)
            .map_err(|e| StackError::io("reading", dir, e))?
            .next()
            .is_none();
        if !is_stack && !is_empty {
            return Err(StackError::io(
                "refusing to wipe (not an e2e work dir)",
                dir,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "directory not empty"),
            ));
        }
        fs::remove_dir_all(dir).map_err(|e| StackError::io("wiping", dir, e))?;
    }
    fs::create_dir_all(dir).map_err(|e| StackError::io("creating", dir, e))?;
    fs::write(dir.join(MARKER), "").map_err(|e| StackError::io("writing", dir.join(MARKER), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_refuses_foreign_directories_and_wipes_stack_dirs() {
        let root = tempfile::tempdir().expect("tempdir");
        let foreign = root.path().join("foreign");
        fs::create_dir(&foreign).expect("mkdir");
        fs::write(foreign.join("precious"), "x").expect("write");
        assert!(reset_work_dir(&foreign).is_err());
        assert!(foreign.join("precious").exists());

        let stack = root.path().join("stack");
        reset_work_dir(&stack).expect("fresh");
        fs::write(stack.join("old.log"), "x").expect("write");
        reset_work_dir(&stack).expect("reset");
        assert!(!stack.join("old.log").exists());
        assert!(stack.join(MARKER).exists());
    }

    #[tokio::test]
    async fn missing_tools_fail_before_anything_starts() {
        let root = tempfile::tempdir().expect("tempdir");
        let err = Stack::builder("t")
            .tools(Tools::at(root.path().join("no-tools")))
            .work_dir(root.path().join("work"))
            .start()
            .await
            .expect_err("no tools");
        assert!(matches!(err, StackError::ToolMissing { .. }), "{err}");
    }
}
