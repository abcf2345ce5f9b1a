//! The release operator binary as its own process (so its memory is its alone), watching one
//! namespace of the benchmark stack without leader election (a lease renewal is a write, which would
//! hide whether a resync writes anything). Killed when dropped.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use orderpipe_stack::{free_port, tools, wait_until};
use tokio::process::{Child, Command};

use super::scrape::{Scrape, status_bytes};

/// How long a fresh operator may take to answer /metrics and open its watches.
const START: Duration = Duration::from_secs(60);
/// Watches every run opens whatever the cluster serves: pipelines, Deployments, HPAs, Services, PDBs.
const CORE_WATCHES: f64 = 5.0;

/// Memory of the process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    pid: u32,
    metrics_url: String,
    http: reqwest::Client,
}

impl OperatorProcess {
    /// Starts the operator next to this binary and waits until it has listed and opened a watch on
    /// every core kind: from then on it is idle until a pipeline appears.
    pub async fn start(
        kubeconfig: &Path,
        namespace: &str,
        resync: Duration,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        // `make bench` builds the operator next to the bench, in release.
        let binary = tools::built_binary("orderpipe-operator")?;
        let child = Command::new(&binary)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn,rdkafka=warn")
            .args(["--watch-namespace", namespace])
            .args(["--leader-election", "false"])
            .args(["--resync-seconds", &resync.as_secs().to_string()])
            .args(["--log-format", "text"])
            .args(["--worker-image", super::WORKER_IMAGE])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the operator exited at once")?;
        let operator = Self {
            child,
            pid,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            http: reqwest::Client::new(),
        };
        wait_until("the operator opens its watches", START, || async {
            let scrape = operator.scrape().await.ok()?;
            let watches = scrape.sum("orderpipe_operator_api_requests_total", &["verb=\"watch\""]);
            (watches >= CORE_WATCHES).then_some(())
        })
        .await
        .with_context(|| format!("operator log: {}", log.display()))?;
        Ok(operator)
    }

    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let text = self
            .http
            .get(&self.metrics_url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Scrape::parse(&text))
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let read = |key: &str| {
            status_bytes(&status, key).with_context(|| format!("{key} missing in {path}"))
        };
        Ok(Memory {
            rss: read("VmRSS")?,
            peak: read("VmHWM")?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}
