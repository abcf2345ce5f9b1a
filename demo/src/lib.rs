//! `make demo` as a library: the checkout pipeline running locally, driven by the real operator.
//! [`Demo::start`] starts the webhook receiver, a node agent (worker pods become local
//! processes of the built `orderpipe-worker`), the operator as a child process placing worker pods
//! on that node and serving the external metrics API (registered with the apiserver, so the
//! validate stage's HPA scales on its lag in Kafka), and applies the checkout sample wired to the
//! local broker and receiver (with [`DemoConfig::canary`], validate as a canary stage, to which
//! [`Demo::release`] releases a new worker image; [`ReleaseTimeline`] follows it). Then a
//! [`Load`] feeds orders, an [`Observer`] gives the live view, and [`Books`] checks the result.
//! The `orderpipe-demo` binary and `tests/demo.rs` both drive it, so the test proves what the demo
//! shows. It must not sleep to synchronise: everything waits on observed state with a timeout.

mod books;
mod load;
mod observe;
mod peak;
mod pipeline;
mod release;
mod webhook;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use orderpipe_api::OrderPipeline;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub use books::{Books, Faulted, Outputs, PerOrder};
pub use load::{Gateway, Load, LoadOptions, Tally};
pub use observe::{Counters, Observer, ReleaseView, Snapshot, StageView};
pub use peak::PeakClock;
pub use pipeline::{CANARY_REPLICAS, STAGES, Topics, checkout, intake_tokens_secret, new_token};
pub use release::{Phase, ReleaseTimeline, release_lines};
pub use webhook::WebhookReceiver;

use orderpipe_node_agent::{NODE_AGENT_LABEL, NodeAgent, NodeAgentConfig, NodeAgentError};
use orderpipe_stack::{LocalApiService, StackError, free_port, tools, wait_until};

/// The sample's pipeline name.
pub const PIPELINE: &str = "checkout";
/// The stage released by canary when [`DemoConfig::canary`] is set: the first one, whose dead
/// letters the faulty release shows at once.
pub const CANARY_STAGE: &str = "validate";
/// The image the operator puts in worker pods; the node agent maps it to the local binary.
const WORKER_IMAGE: &str = "orderpipe/orderpipe-worker:demo";
const FIELD_MANAGER: &str = "orderpipe-demo";
/// How long the operator gets to exit after SIGTERM.
const OPERATOR_GRACE: Duration = Duration::from_secs(15);
/// The Service the external metrics APIService names (an `ExternalName` to this machine).
const METRICS_API_SERVICE: &str = "orderpipe-metrics-api";
/// How long the operator may take to open its external metrics port.
const OPERATOR_START: Duration = Duration::from_secs(30);

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    NodeAgent(#[from] NodeAgentError),
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {source}")]
    Kafka {
        action: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    #[error("the checkout sample: {0}")]
    Sample(String),
    #[error("the operator exited early ({0}); see its log")]
    OperatorExited(String),
    #[error("the load generator task panicked")]
    LoadThread,
    #[error("the intake gateway: {0}")]
    Gateway(String),
    #[error("the task reading a stage's offsets panicked")]
    OffsetsTask,
}

impl DemoError {
    fn io(action: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> DemoError {
        DemoError::Io {
            action,
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    fn kube(action: &'static str, source: kube::Error) -> DemoError {
        DemoError::Kube { action, source }
    }
}

/// The operator and worker binaries the demo runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub operator: PathBuf,
    pub worker: PathBuf,
    /// `orderpipe-worker-faulty`, the bad release (`orderpipe_node_agent::FAULTY_WORKER_IMAGE`).
    pub faulty_worker: PathBuf,
}

impl Binaries {
    /// The binaries cargo built next to the running executable (the demo's, or its test's).
    pub fn next_to_current_exe() -> Result<Binaries, DemoError> {
        Ok(Binaries {
            operator: tools::built_binary("orderpipe-operator")?,
            worker: tools::built_binary("orderpipe-worker")?,
            faulty_worker: tools::built_binary("orderpipe-worker-faulty")?,
        })
    }
}

/// Where and how to run the demo.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Namespace of the pipeline; the operator watches only it.
    pub namespace: String,
    /// Prepended to every topic name (`""` keeps the sample's names).
    pub topic_prefix: String,
    /// The node agent's node; worker pods are pinned to it by hostname.
    pub node_name: String,
    /// Operator log, node agent pod directories and worker logs go here.
    pub work_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bootstrap: String,
    /// The Prometheus the canary analysis queries (the operator's `--prometheus-url`).
    pub prometheus_url: Option<String>,
    /// Release [`CANARY_STAGE`] by canary (an Argo Rollout with analysis): the stack must run the
    /// Argo Rollouts controller and Prometheus.
    pub canary: bool,
    pub binaries: Binaries,
}

impl DemoConfig {
    /// A run on `stack`'s apiserver and broker with the binaries cargo built next to the running
    /// executable.
    pub fn on_stack(
        stack: &orderpipe_stack::Stack,
        namespace: &str,
        topic_prefix: &str,
        node_name: &str,
        work_dir: PathBuf,
    ) -> Result<DemoConfig, DemoError> {
        let kubeconfig = stack.kubeconfig().ok_or(StackError::NotInStack {
            component: "kube-apiserver",
        })?;
        Ok(DemoConfig {
            namespace: namespace.to_owned(),
            topic_prefix: topic_prefix.to_owned(),
            node_name: node_name.to_owned(),
            work_dir,
            kubeconfig: kubeconfig.to_path_buf(),
            bootstrap: stack.kafka_bootstrap()?.to_owned(),
            prometheus_url: stack.prometheus_url().ok().map(str::to_owned),
            canary: false,
            binaries: Binaries::next_to_current_exe()?,
        })
    }
}

/// A running demo pipeline.
pub struct Demo {
    client: Client,
    config: DemoConfig,
    manifest: Value,
    /// The bearer token of the intake gateway (both scopes).
    intake_token: String,
    topics: Topics,
    webhook: WebhookReceiver,
    agent: NodeAgent,
    operator: Child,
    metrics_api: LocalApiService,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("config", &self.config)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// Starts everything and applies the pipeline; `step` hears about each step as it begins.
    /// Returns once the pipeline is applied (see [`Demo::wait_ready`]).
    pub async fn start(
        client: Client,
        config: DemoConfig,
        step: impl Fn(&str),
    ) -> Result<Demo, DemoError> {
        std::fs::create_dir_all(&config.work_dir)
            .map_err(|e| DemoError::io("creating", &config.work_dir, e))?;
        step("namespace");
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(
                &config.namespace,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": { "name": config.namespace }
                })),
            )
            .await
            .map_err(|source| DemoError::kube("creating the namespace", source))?;

        step("webhook receiver");
        let webhook = WebhookReceiver::start().await?;

        step("node agent");
        let agent = NodeAgent::start(
            client.clone(),
            NodeAgentConfig::new(&config.node_name, config.work_dir.join("node-agent"))
                .worker_releases(
                    config.binaries.worker.clone(),
                    config.binaries.faulty_worker.clone(),
                ),
        )
        .await?;

        step("operator");
        let metrics_api = LocalApiService::prepare(
            "external.metrics.k8s.io",
            "v1beta1",
            &config.namespace,
            METRICS_API_SERVICE,
            &config.work_dir.join("metrics-api"),
        )?;
        let mut operator = start_operator(&config, &metrics_api)?;
        // Registered once it listens: an unavailable APIService fails its group's discovery.
        let port = metrics_api.port();
        let listening = wait_until(
            "the operator serves the external metrics API",
            OPERATOR_START,
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
        if let Ok(Some(status)) = operator.try_wait() {
            return Err(DemoError::OperatorExited(status.to_string()));
        }
        listening?;
        metrics_api.register(&client).await?;

        step("checkout pipeline");
        let (mut manifest, topics) = checkout(
            &config.namespace,
            &config.topic_prefix,
            &config.bootstrap,
            webhook.url(),
        )?;
        if config.canary {
            manifest = pipeline::with_canary(&manifest, CANARY_STAGE)?;
        }
        let intake_token = new_token();
        let secret = intake_tokens_secret(&manifest, &intake_token)?;
        let secrets = Api::<Secret>::namespaced(client.clone(), &config.namespace);
        apply(&secrets, &secret, "applying the intake gateway's tokens").await?;
        let mut demo = Demo {
            client,
            config,
            manifest,
            intake_token,
            topics,
            webhook,
            agent,
            operator,
            metrics_api,
        };
        demo.apply(&demo.manifest.clone()).await?;
        Ok(demo)
    }

    /// The pipeline's topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn webhook(&self) -> &WebhookReceiver {
        &self.webhook
    }

    pub fn config(&self) -> &DemoConfig {
        &self.config
    }

    /// The operator's log file.
    pub fn operator_log(&self) -> PathBuf {
        self.config.work_dir.join("operator.log")
    }

    /// An observer of this pipeline for live views.
    pub fn observer(&self) -> Result<Observer, DemoError> {
        Observer::new(self.client.clone(), &self.config.namespace, PIPELINE)
    }

    /// Starts a load through the intake gateway's ready replicas.
    pub async fn start_load(&self, options: LoadOptions) -> Result<Load, DemoError> {
        Load::start(self.gateway().await?, options)
    }

    /// The intake gateway as a client reaches it here: its ready replicas and a token.
    pub async fn gateway(&self) -> Result<Gateway, DemoError> {
        let urls = self.observer()?.gateway_urls().await?;
        if urls.is_empty() {
            return Err(DemoError::Gateway("no replica is ready".into()));
        }
        Ok(Gateway {
            urls,
            token: self.intake_token.clone(),
        })
    }

    /// Waits until the pipeline reports `Ready=True` (every topic created, every stage ready).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), DemoError> {
        let api: Api<OrderPipeline> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let result = wait_until("the checkout pipeline is Ready", timeout, || async {
            let pipeline = api.get_opt(PIPELINE).await.ok()??;
            let status = pipeline.status?;
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await;
        self.check_operator()?;
        Ok(result?)
    }

    /// Sets `stage`'s replicas through the OrderPipeline's spec and waits until exactly that
    /// many worker processes of the stage run and its Deployment has them ready.
    pub async fn scale(
        &mut self,
        stage: &str,
        replicas: i32,
        timeout: Duration,
    ) -> Result<(), DemoError> {
        self.manifest = pipeline::with_replicas(&self.manifest, stage, replicas);
        self.apply(&self.manifest.clone()).await?;
        let observer = self.observer()?;
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(self.client.clone(), &self.config.namespace);
        let workload = orderpipe_api::contract::naming::workload(PIPELINE, stage);
        let expected = usize::try_from(replicas).unwrap_or_default();
        wait_until(
            &format!("{stage}: {replicas} ready replicas and exactly {replicas} processes"),
            timeout,
            || async {
                let status = deployments.get_opt(&workload).await.ok()??.status?;
                let ready = status.ready_replicas.unwrap_or_default() == replicas
                    && status.replicas.unwrap_or_default() == replicas;
                (ready && observer.processes(stage).await.ok()? == expected).then_some(())
            },
        )
        .await?;
        self.check_operator()
    }

    /// Releases `image` to [`CANARY_STAGE`] through the OrderPipeline's spec, as a user would;
    /// with [`DemoConfig::canary`] the Rollout then runs it as a canary.
    pub async fn release(&mut self, image: &str) -> Result<(), DemoError> {
        self.manifest = pipeline::with_image(&self.manifest, CANARY_STAGE, image);
        self.apply(&self.manifest.clone()).await?;
        self.check_operator()
    }

    /// Worker processes of `stage` alive now.
    pub async fn processes(&self, stage: &str) -> Result<usize, DemoError> {
        self.observer()?.processes(stage).await
    }

    /// Counts the books for `sent` now.
    pub async fn books(&self, sent: &Tally) -> Result<Books, DemoError> {
        Books::count(
            &self.config.bootstrap,
            &self.topics,
            sent,
            &self.webhook.deliveries(),
        )
        .await
    }

    /// Waits until the pipeline has [`Demo::drained`] what was produced, then counts the books for
    /// `sent`. On timeout the books are counted anyway: they show what is missing.
    pub async fn drain(&self, sent: &Tally, timeout: Duration) -> Result<Books, DemoError> {
        let drained = wait_until("the pipeline drains its backlog", timeout, || async {
            self.drained().await.ok()?.then_some(())
        })
        .await;
        if let Err(error) = drained {
            tracing::warn!(%error, "not drained; counting the books as they are");
        }
        self.books(sent).await
    }

    /// Whether every stage, in flow order, has committed all of its input: the pipeline has
    /// finished everything produced before the call. Read from Kafka, not from the workers'
    /// counters: a worker stopped by a scale-in takes its last unscraped counts with it.
    pub async fn drained(&self) -> Result<bool, DemoError> {
        for stage in STAGES {
            if !self.caught_up(stage).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether `stage`'s consumer group has committed all of its input (read_committed: a
    /// transaction's marker is not work).
    pub async fn caught_up(&self, stage: &str) -> Result<bool, DemoError> {
        let group = orderpipe_api::contract::naming::consumer_group(
            &self.config.namespace,
            PIPELINE,
            stage,
        );
        let input = self
            .topics
            .input_of(stage)
            .ok_or_else(|| DemoError::Sample(format!("no stage {stage}")))?
            .to_owned();
        let bootstrap = self.config.bootstrap.clone();
        tokio::task::spawn_blocking(move || orderpipe_stack::caught_up(&bootstrap, &group, &input))
            .await
            .map_err(|_| DemoError::OffsetsTask)?
            .map_err(DemoError::from)
    }

    /// Tears down: deletes the pipeline (its workers and topics), drains and removes the node,
    /// stops the operator. Every step runs even if an earlier one failed; the first error wins.
    pub async fn stop(mut self) -> Result<(), DemoError> {
        let api: Api<OrderPipeline> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let mut first_error = None;
        let deleted = async {
            match api.delete(PIPELINE, &DeleteParams::foreground()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => return Err(DemoError::kube("deleting the pipeline", source)),
            }
            wait_until(
                "the pipeline is deleted",
                Duration::from_secs(60),
                || async { api.get_opt(PIPELINE).await.ok()?.is_none().then_some(()) },
            )
            .await?;
            Ok(())
        }
        .await;
        if let Err(error) = deleted {
            first_error.get_or_insert(error);
        }
        if let Err(error) = self.metrics_api.unregister(&self.client).await {
            first_error.get_or_insert(error.into());
        }
        if let Err(error) = self.agent.stop().await {
            first_error.get_or_insert(error.into());
        }
        if let Err(error) = stop_child(&mut self.operator).await {
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn apply(&mut self, manifest: &Value) -> Result<(), DemoError> {
        let pipelines =
            Api::<OrderPipeline>::namespaced(self.client.clone(), &self.config.namespace);
        apply(&pipelines, manifest, "applying the checkout pipeline").await
    }

    /// An operator that died would make every later wait time out with a vague message.
    fn check_operator(&mut self) -> Result<(), DemoError> {
        match self.operator.try_wait() {
            Ok(Some(status)) => Err(DemoError::OperatorExited(status.to_string())),
            Ok(None) => Ok(()),
            Err(e) => Err(DemoError::io("checking", "the operator process", e)),
        }
    }
}

/// Creates or updates `object` (named by its metadata) as the demo's field manager.
async fn apply<K>(api: &Api<K>, object: &Value, action: &'static str) -> Result<(), DemoError>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| DemoError::kube(action, source))?;
    Ok(())
}

/// The operator as a child process: the admin kubeconfig, this namespace only, no leader election
/// (one instance), worker pods pinned to the node agent's node, the external metrics API on
/// `metrics_api`'s port and certificate. Killed if dropped.
fn start_operator(config: &DemoConfig, metrics_api: &LocalApiService) -> Result<Child, DemoError> {
    let log_path = config.work_dir.join("operator.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| DemoError::io("creating", &log_path, e))?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    Command::new(&config.binaries.operator)
        .env("KUBECONFIG", &config.kubeconfig)
        .env("POD_NAME", "orderpipe-demo-operator")
        .env("RUST_LOG", "info")
        .args(["--watch-namespace", &config.namespace])
        .args(["--leader-election", "false", "--log-format", "text"])
        .args(["--worker-image", WORKER_IMAGE])
        .args(
            config
                .prometheus_url
                .iter()
                .flat_map(|url| ["--prometheus-url", url.as_str()]),
        )
        .args(["--metrics-addr", &metrics])
        .args([
            "--external-metrics-addr",
            &format!("127.0.0.1:{}", metrics_api.port()),
        ])
        .arg("--external-metrics-cert-dir")
        .arg(metrics_api.cert_dir())
        // Fresher readings than the 5 s default: the live view shows the HPA's input.
        .args(["--lag-interval-seconds", "2"])
        // The hostname label, not only the agent label: on a shared stack other tests run agent
        // nodes too, and this run's workers must be this run's processes.
        .args([
            "--worker-node-selector",
            &format!("kubernetes.io/hostname={}", config.node_name),
        ])
        .args([
            "--worker-toleration",
            &format!("{NODE_AGENT_LABEL}=true:NoSchedule"),
        ])
        // Its own process group: Ctrl-C at the demo's terminal must not kill it before the
        // teardown, which needs it (topic deletion runs through its finalizer).
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DemoError::io("starting", &config.binaries.operator, e))
}

/// SIGTERM, then SIGKILL after the grace period.
async fn stop_child(child: &mut Child) -> Result<(), DemoError> {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(OPERATOR_GRACE, child.wait()).await {
        Ok(result) => result.map(drop),
        Err(_) => child.kill().await,
    }
    .map_err(|e| DemoError::io("stopping", "the operator", e))
}
