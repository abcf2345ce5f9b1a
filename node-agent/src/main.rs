//! `orderpipe-node-agent`: registers a local Node and runs the worker pods bound to it as local
//! processes (see the `orderpipe_node_agent` library). Runs until SIGTERM or SIGINT, then drains the node:
//! every container stops gracefully, the pods, the Lease and the Node are deleted.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use kube::config::Kubeconfig;
use orderpipe_node_agent::{
    DEFAULT_NODE_NAME, ImageMapping, NODE_AGENT_LABEL, NodeAgent, NodeAgentConfig,
};
use orderpipe_stack::{kube_client_for, tools};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Local node agent: runs orderpipe pods bound to its node as local processes",
    after_help = "Worker pods reach the node when the operator runs with\n  \
        --worker-node-selector orderpipe.dev/node-agent=true \
        --worker-toleration orderpipe.dev/node-agent=true:NoSchedule\n\
        Each pod's processes run in <work-dir>/pods/<namespace>_<pod>/ with their logs there; the \
        host port of each container port is in the pod annotation orderpipe.dev/local-ports."
)]
struct Cli {
    /// Kubeconfig of the cluster (e.g. the local stack's, after `source target/e2e/env`).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Name of the Node to register.
    #[arg(long, default_value = DEFAULT_NODE_NAME)]
    node_name: String,
    /// Where pod directories and container logs go (default: target/e2e/node-agent/<node-name>).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Run containers of IMAGE (registry and digest ignored; a tag-less IMAGE stands for every tag,
    /// a tagged one wins for its tag) as the local binary PATH,
    /// e.g. orderpipe/orderpipe-worker=target/debug/orderpipe-worker. Repeatable.
    #[arg(long = "image", value_name = "IMAGE=PATH", required = true)]
    images: Vec<ImageMapping>,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Before anything is registered: a signal during start-up must still end in a drain.
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let client = kube_client_for(&cli.kubeconfig)
        .await
        .with_context(|| format!("loading {}", cli.kubeconfig.display()))?;
    let work_dir = cli
        .work_dir
        .unwrap_or_else(|| tools::e2e_root().join("node-agent").join(&cli.node_name));
    let kubeconfig = Kubeconfig::read_from(&cli.kubeconfig)
        .with_context(|| format!("reading {}", cli.kubeconfig.display()))?;
    // Pods reach the API server the agent reaches, as their ServiceAccount.
    let config = cli
        .images
        .into_iter()
        .fold(
            NodeAgentConfig::new(&cli.node_name, &work_dir),
            NodeAgentConfig::image,
        )
        .service_account_tokens(&kubeconfig)?;
    let agent = tokio::select! {
        agent = NodeAgent::start(client, config) => agent?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
    info!(
        node = %agent.node_name(),
        "ready: pods that tolerate {NODE_AGENT_LABEL}=true:NoSchedule and select this node run here; \
         stop with Ctrl-C"
    );
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
    }
    agent.stop().await.context("stopping the node agent")
}
