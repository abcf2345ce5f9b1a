//! `orderpipe-node-agent`: the kubelet of one local node, for orderpipe's pods (the workers, and
//! the operator itself when deployed from config/default). It registers a Node (labelled and
//! tainted [`NODE_AGENT_LABEL`], so only pods that tolerate the taint land there), keeps it alive
//! like a kubelet, and runs each container of the pods bound to it as a plain local process: the
//! image selects a local binary, env and args are resolved as a kubelet resolves them, container
//! ports are mapped to free host ports, pods reach the apiserver as their ServiceAccount (see
//! [`NodeAgentConfig::service_account_tokens`]), probes decide readiness and liveness, crashed
//! containers restart with the crash-loop back-off, and deletions stop the
//! processes gracefully before the pod object goes. The demo and the tests start it in-process
//! through [`NodeAgent::start`]; the `orderpipe-node-agent` binary wraps the same.
//!
//! It is a development tool: no isolation (processes share the machine's file system, network
//! and user), no image pulls, no volumes but emptyDir. It must not run pods bound to any other
//! node, and must not leave a process behind: not when stopped, dropped, or SIGKILLed (watchdogs).

mod backoff;
mod container;
mod error;
mod images;
mod launch;
mod node;
mod pod;
mod pod_watch;
mod port_map;
mod probe;
mod processes;
mod service_account;
mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::config::Kubeconfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::NodeAgentError;
pub use images::ImageMapping;
pub use node::NODE_AGENT_LABEL;
pub use port_map::{LOCAL_PORTS_ANNOTATION, local_ports};
pub use status::running_pid;

use images::ImageMap;
use processes::ProcessTable;
use service_account::ApiServer;

/// The worker image's repository, whose every tag runs the worker binary (see
/// [`NodeAgentConfig::worker_releases`]).
pub const WORKER_IMAGE: &str = "orderpipe/orderpipe-worker";
/// The operator image's repository (config/manager), for running the operator as a pod.
pub const OPERATOR_IMAGE: &str = "orderpipe/orderpipe-operator";
/// The one tag of the worker image that runs `orderpipe-worker-faulty` (every record dead-lettered):
/// the bad release of the canary tests and of `make demo SCENARIO=bad-release`.
pub const FAULTY_WORKER_IMAGE: &str = "orderpipe/orderpipe-worker:faulty";

/// The node name when none is given.
pub const DEFAULT_NODE_NAME: &str = "orderpipe-local";
/// How long [`NodeAgent::start`] waits for the control plane to accept the node.
const SCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Each probe's own timeout applies; this only bounds connection set-up.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to run a node agent with.
#[derive(Debug, Clone)]
pub struct NodeAgentConfig {
    node_name: String,
    work_dir: PathBuf,
    images: ImageMap,
    api_server: Option<ApiServer>,
}

impl NodeAgentConfig {
    /// An agent for node `node_name` that keeps pod directories and container logs under
    /// `work_dir/pods/<namespace>_<pod>/`.
    pub fn new(node_name: impl Into<String>, work_dir: impl Into<PathBuf>) -> Self {
        NodeAgentConfig {
            node_name: node_name.into(),
            work_dir: work_dir.into(),
            images: ImageMap::default(),
            api_server: None,
        }
    }

    /// Gives pods API access as their ServiceAccount (unless `automountServiceAccountToken` is
    /// false): a bound token in a kubeconfig for the current context's cluster of `kubeconfig`
    /// (the agent's own), named by `KUBECONFIG`. Without this, pods cannot reach the apiserver.
    pub fn service_account_tokens(
        mut self,
        kubeconfig: &Kubeconfig,
    ) -> Result<Self, NodeAgentError> {
        self.api_server = Some(ApiServer::of(kubeconfig)?);
        Ok(self)
    }

    /// Runs containers of `mapping.image` as `mapping.binary`: registry and digest ignored, and
    /// without a tag in `mapping.image` any tag; a tagged mapping wins for its tag.
    #[must_use]
    pub fn image(mut self, mapping: ImageMapping) -> Self {
        self.images.insert(mapping);
        self
    }

    /// Runs every tag of [`WORKER_IMAGE`] as `worker`, except [`FAULTY_WORKER_IMAGE`], which runs
    /// `faulty`: a sound and a bad release of the worker to roll out.
    #[must_use]
    pub fn worker_releases(self, worker: PathBuf, faulty: PathBuf) -> Self {
        self.image(ImageMapping {
            image: WORKER_IMAGE.into(),
            binary: worker,
        })
        .image(ImageMapping {
            image: FAULTY_WORKER_IMAGE.into(),
            binary: faulty,
        })
    }
}

/// What the agent's tasks share.
pub(crate) struct AgentContext {
    client: Client,
    node_name: String,
    work_dir: PathBuf,
    images: ImageMap,
    /// Where pods' kubeconfigs point; `None`: pods get no API access.
    api_server: Option<ApiServer>,
    /// For httpGet probes: never through a proxy, and like the kubelet, without verifying
    /// certificates of HTTPS probes.
    probe_http: reqwest::Client,
    processes: ProcessTable,
}

impl std::fmt::Debug for AgentContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentContext")
            .field("node_name", &self.node_name)
            .field("work_dir", &self.work_dir)
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

/// A running node agent. [`NodeAgent::stop`] drains it (stops every container gracefully, deletes
/// its pods, then its Lease and Node). Dropping it instead stops the processes (SIGTERM, their
/// grace period, SIGKILL) but leaves the Node and pods behind: the node lifecycle controller then
/// marks the node NotReady.
#[derive(Debug)]
pub struct NodeAgent {
    node_name: String,
    work_dir: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), NodeAgentError>>>,
    processes: ProcessTable,
}

impl NodeAgent {
    /// Registers the node, waits until the control plane lets pods be scheduled on it, and starts
    /// running the pods bound to it.
    pub async fn start(
        client: Client,
        config: NodeAgentConfig,
    ) -> Result<NodeAgent, NodeAgentError> {
        let NodeAgentConfig {
            node_name,
            work_dir,
            mut images,
            api_server,
        } = config;
        images.resolve_binaries()?;
        let pods_dir = work_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(|error| NodeAgentError::Io {
            action: "creating",
            path: pods_dir.clone(),
            error,
        })?;
        let probe_http = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .connect_timeout(PROBE_CONNECT_TIMEOUT)
            .build()
            .map_err(NodeAgentError::ProbeClient)?;
        info!(node = %node_name, images = %images.describe(), work_dir = %work_dir.display(), "registering the node");
        let node_uid = node::register(&client, &node_name).await?;
        if let Err(error) = node::wait_schedulable(&client, &node_name, SCHEDULABLE_TIMEOUT).await {
            let _ = node::deregister(&client, &node_name).await;
            return Err(error);
        }
        info!(node = %node_name, "node Ready and schedulable; running its pods");
        let processes = ProcessTable::default();
        let agent = Arc::new(AgentContext {
            client: client.clone(),
            node_name: node_name.clone(),
            work_dir: work_dir.clone(),
            images,
            api_server,
            probe_http,
            processes: processes.clone(),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(agent, node_uid, shutdown.clone()));
        Ok(NodeAgent {
            node_name,
            work_dir,
            shutdown,
            task: Some(task),
            processes,
        })
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Working directory of a pod's containers, where their logs `<container>.log` are too.
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        pod_dir(&self.work_dir, namespace, pod)
    }

    /// Drains and deregisters: cordons the node, stops every container (SIGTERM, the pod's grace
    /// period, SIGKILL), deletes its pods, its Lease and its Node.
    pub async fn stop(mut self) -> Result<(), NodeAgentError> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for NodeAgent {
    /// Without [`NodeAgent::stop`]: the processes still stop, blocking for up to their grace.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.shutdown.cancel();
            task.abort();
            self.processes.stop_all_blocking();
        }
    }
}

fn pod_dir(work_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    work_dir.join("pods").join(format!("{namespace}_{pod}"))
}

/// The agent's life after registration: heartbeats and pods until `shutdown`, then the drain.
/// Everything runs inside this one future (nothing detached), so aborting its task (a dropped
/// handle) drops the pod workers and with them every process they still hold.
async fn run(
    agent: Arc<AgentContext>,
    node_uid: String,
    shutdown: CancellationToken,
) -> Result<(), NodeAgentError> {
    let client = agent.client.clone();
    let node_name = agent.node_name.clone();
    // Pods stop only once the node is cordoned, so no replacement lands on it meanwhile.
    let drain = CancellationToken::new();
    let heartbeat = node::keep_alive(client.clone(), node_name.clone(), node_uid, drain.clone());
    let pods = pod_watch::run(agent, drain.clone());
    let cordon_then_drain = async {
        shutdown.cancelled().await;
        info!(node = %node_name, "shutting down: cordoning the node and stopping its pods");
        if let Err(error) = node::cordon(&client, &node_name).await {
            warn!(node = %node_name, %error, "could not cordon the node");
        }
        drain.cancel();
    };
    tokio::join!(heartbeat, pods, cordon_then_drain);
    node::deregister(&client, &node_name).await?;
    info!(node = %node_name, "node removed; agent stopped");
    Ok(())
}
