//! What the stack's Prometheus scrapes besides orderpipe's own pods: the system around the
//! pipelines, as a production Prometheus sees it.
//!
//! - kube-state-metrics (built from its Go module) against the stack's apiserver: Deployments,
//!   ReplicaSets and HPAs, desired against current.
//! - prometheus-node-exporter (Debian) for this machine's CPU and memory.
//! - The targets that live in other components: the broker's JMX exporter agent (`kafka`) and the
//!   Argo Rollouts controller's `/metrics` (`kube_cluster`).
//!
//! Every one of them is a [`SystemTarget`] with the `job` a production install gives it, written
//! once into a file-SD file of its own ([`write_targets`]); unlike the ServiceMonitors' targets
//! they never move while the stack runs.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::component::{Component, Member};
use crate::error::{Result, StackError};
use crate::kube_cluster::{http_ok, probe_client};
use crate::ports::free_port;
use crate::process::CommandSpec;
use crate::tools::Tools;

/// One scrape target outside the cluster's pods: `127.0.0.1:<port>`, path `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemTarget {
    /// The job label: what the Service, PodMonitor or scrape config of a production install
    /// names it (`kube-state-metrics`, `node-exporter`, `kafka`, `argo-rollouts-metrics`).
    pub job: &'static str,
    pub address: String,
}

/// Writes `targets` as one file-SD group per job into `file`.
pub(crate) fn write_targets(file: &Path, targets: &[SystemTarget]) -> Result<()> {
    let groups: Vec<_> = targets
        .iter()
        .map(|target| json!({ "targets": [target.address], "labels": { "job": target.job } }))
        .collect();
    fs::write(file, serde_json::Value::Array(groups).to_string())
        .map_err(|e| StackError::io("writing", file, e))
}

/// kube-state-metrics and node-exporter.
#[derive(Debug)]
pub(crate) struct Exporters {
    kube_state_metrics: Member,
    kube_state_metrics_address: String,
    node_exporter: Member,
    node_exporter_address: String,
    timeout: Duration,
}

/// What kube-state-metrics watches: what the dashboards and alerts read, nothing more (every
/// resource it knows would cost a watch each on two shared cores).
const KUBE_STATE_RESOURCES: &str = "deployments,horizontalpodautoscalers";

/// The labels kube-state-metrics copies onto `kube_horizontalpodautoscaler_labels`: the stage's,
/// which the replica-cap alert joins on.
const KUBE_STATE_LABELS: &str =
    "horizontalpodautoscalers=[orderpipe.dev/pipeline,orderpipe.dev/stage]";

/// The node-exporter collectors the node row reads.
const NODE_COLLECTORS: [&str; 3] = ["cpu", "meminfo", "loadavg"];

impl Exporters {
    /// Prepares both command lines; kube-state-metrics talks to the apiserver through `kubeconfig`.
    pub fn prepare(
        tools: &Tools,
        dir: &Path,
        kubeconfig: &Path,
        timeout: Duration,
    ) -> Result<Exporters> {
        let logs = dir.join("logs");
        let (port, telemetry_port) = (free_port()?, free_port()?);
        let kube_state_metrics = CommandSpec::new(tools.bin("kube-state-metrics")?, dir).args([
            format!("--kubeconfig={}", kubeconfig.display()),
            "--host=127.0.0.1".to_owned(),
            format!("--port={port}"),
            "--telemetry-host=127.0.0.1".to_owned(),
            format!("--telemetry-port={telemetry_port}"),
            format!("--resources={KUBE_STATE_RESOURCES}"),
            // kube_horizontalpodautoscaler_labels with the stage's labels: the replica-cap alert
            // joins on them (as docs/monitoring.md tells users to run theirs).
            format!("--metric-labels-allowlist={KUBE_STATE_LABELS}"),
        ]);
        let program = crate::prometheus::system_binary(
            "prometheus-node-exporter",
            "install the Debian package `prometheus-node-exporter` (make e2e-setup)",
        )?;
        let node_port = free_port()?;
        let node_exporter = CommandSpec::new(program, dir)
            .arg(format!("--web.listen-address=127.0.0.1:{node_port}"))
            .arg("--collector.disable-defaults")
            .args(NODE_COLLECTORS.map(|c| format!("--collector.{c}")));
        Ok(Exporters {
            kube_state_metrics: Member::new(Component::KubeStateMetrics, kube_state_metrics, &logs),
            kube_state_metrics_address: format!("127.0.0.1:{port}"),
            node_exporter: Member::new(Component::NodeExporter, node_exporter, &logs),
            node_exporter_address: format!("127.0.0.1:{node_port}"),
            timeout,
        })
    }

    /// Their scrape targets.
    pub fn targets(&self) -> [SystemTarget; 2] {
        [
            SystemTarget {
                job: "kube-state-metrics",
                address: self.kube_state_metrics_address.clone(),
            },
            SystemTarget {
                job: "node-exporter",
                address: self.node_exporter_address.clone(),
            },
        ]
    }

    /// Starts both (the apiserver must answer) and waits until each serves `/metrics`.
    pub async fn start(&mut self) -> Result<()> {
        let http = probe_client()?;
        for (member, address) in [
            (
                &mut self.kube_state_metrics,
                &self.kube_state_metrics_address,
            ),
            (&mut self.node_exporter, &self.node_exporter_address),
        ] {
            member.spawn()?;
            let url = format!("http://{address}/metrics");
            member
                .wait_ready("GET /metrics", self.timeout, || http_ok(&http, &url, None))
                .await?;
        }
        Ok(())
    }

    pub fn members(&self) -> [&Member; 2] {
        [&self.kube_state_metrics, &self.node_exporter]
    }

    pub fn members_mut(&mut self) -> [&mut Member; 2] {
        [&mut self.kube_state_metrics, &mut self.node_exporter]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_system_target_is_a_group_with_its_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("system-targets.json");
        let targets = [
            SystemTarget {
                job: "kafka",
                address: "127.0.0.1:1".into(),
            },
            SystemTarget {
                job: "node-exporter",
                address: "127.0.0.1:2".into(),
            },
        ];
        write_targets(&file, &targets).expect("written");
        let written: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&file).expect("read")).expect("json");
        assert_eq!(
            written,
            json!([
                { "targets": ["127.0.0.1:1"], "labels": { "job": "kafka" } },
                { "targets": ["127.0.0.1:2"], "labels": { "job": "node-exporter" } },
            ])
        );
    }
}
