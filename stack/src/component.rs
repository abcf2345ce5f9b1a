//! One component of a stack: its name, the exact command it runs (kept for restarts on the same
//! ports and data), its log file, its running process, and the readiness wait that turns a
//! timeout or an early exit into an error carrying the log tail. Must not know what any
//! particular component is: the command lines live in `kube_cluster`, `kafka`, `prometheus` and
//! `exporters`.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Result, StackError};
use crate::process::{self, CommandSpec, Process};
use crate::wait::try_wait_until;

/// The processes a stack can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Kwok,
    RolloutsController,
    /// The broker of a one-broker stack.
    Kafka,
    /// Broker `n` (1-based, also its `node.id`) of a multi-broker cluster; a KRaft controller too
    /// unless the cluster has dedicated controllers.
    KafkaBroker(u8),
    /// Dedicated KRaft controller `n` (1-based; its `node.id` is `100 + n`).
    KafkaController(u8),
    Prometheus,
    KubeStateMetrics,
    NodeExporter,
}

/// Names of cluster nodes, so a [`Component`] stays `Copy` with a `&'static str` name.
const BROKER_NAMES: [&str; MAX_KAFKA_NODES as usize] = [
    "kafka-1", "kafka-2", "kafka-3", "kafka-4", "kafka-5", "kafka-6", "kafka-7", "kafka-8",
    "kafka-9",
];
const CONTROLLER_NAMES: [&str; MAX_KAFKA_NODES as usize] = [
    "kafka-controller-1",
    "kafka-controller-2",
    "kafka-controller-3",
    "kafka-controller-4",
    "kafka-controller-5",
    "kafka-controller-6",
    "kafka-controller-7",
    "kafka-controller-8",
    "kafka-controller-9",
];

/// The most brokers (and the most dedicated controllers) a stack runs.
pub const MAX_KAFKA_NODES: u8 = 9;

fn node_name(names: &[&'static str], n: u8) -> &'static str {
    names
        .get(usize::from(n).wrapping_sub(1))
        .copied()
        .unwrap_or("kafka-node")
}

impl Component {
    /// The name used for logs, the env file and errors.
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::Kwok => "kwok",
            Component::RolloutsController => "rollouts-controller",
            Component::Kafka => "kafka",
            Component::KafkaBroker(n) => node_name(&BROKER_NAMES, n),
            Component::KafkaController(n) => node_name(&CONTROLLER_NAMES, n),
            Component::Prometheus => "prometheus",
            Component::KubeStateMetrics => "kube-state-metrics",
            Component::NodeExporter => "node-exporter",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A component's command, log and (while running) process.
#[derive(Debug)]
pub(crate) struct Member {
    component: Component,
    spec: CommandSpec,
    log: PathBuf,
    process: Option<Process>,
}

impl Member {
    pub fn new(component: Component, spec: CommandSpec, log_dir: &Path) -> Member {
        Member {
            component,
            spec,
            log: log_dir.join(format!("{}.log", component.name())),
            process: None,
        }
    }

    pub fn component(&self) -> Component {
        self.component
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Spawns the command (again, after a stop: same arguments, same ports, same data).
    pub fn spawn(&mut self) -> Result<()> {
        if self.process.is_none() {
            self.process = Some(Process::spawn(
                self.component.name(),
                &self.spec,
                &self.log,
            )?);
        }
        Ok(())
    }

    pub fn is_paused(&self) -> bool {
        self.process.as_ref().is_some_and(Process::is_paused)
    }

    /// SIGKILLs the process (a crash: no shutdown at all); a no-op when not running.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill()?;
        }
        Ok(())
    }

    /// SIGSTOPs the process; it keeps its PID and sockets. Fails when not running.
    pub fn pause(&mut self) -> Result<()> {
        self.running_mut()?.pause()
    }

    /// SIGCONTs a paused process. Fails when not running.
    pub fn resume(&mut self) -> Result<()> {
        self.running_mut()?.resume()
    }

    fn running_mut(&mut self) -> Result<&mut Process> {
        let component = self.component.name();
        self.process
            .as_mut()
            .ok_or(StackError::NotInStack { component })
    }

    /// Polls `probe` until it reports ready; fails early if the process exits, and on timeout
    /// with the log tail.
    pub async fn wait_ready<F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let component = self.component.name();
        let Some(process) = self.process.as_mut() else {
            return Err(StackError::NotInStack { component });
        };
        let outcome = try_wait_until(what, timeout, || {
            let exited = process.exited_error();
            let attempt = probe();
            async move {
                match exited {
                    Some(error) => Err(error),
                    None => Ok(attempt.await.then_some(())),
                }
            }
        })
        .await;
        match outcome {
            Ok(()) => {
                process.note(&format!("ready ({what})"));
                Ok(())
            }
            Err(StackError::Timeout { what, waited }) => Err(process.not_ready_error(what, waited)),
            Err(error) => Err(error),
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after `grace`); a no-op when not running.
    pub async fn stop(&mut self, grace: Duration) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process::stop_all(&mut [&mut process], grace).await?;
        }
        Ok(())
    }
}

/// SIGTERM every running member at once, then wait: a stack stops in one grace period, not one
/// per component.
pub(crate) async fn stop_members(members: &mut [&mut Member], grace: Duration) -> Result<()> {
    let mut running: Vec<&mut Process> = members
        .iter_mut()
        .filter_map(|m| m.process.as_mut())
        .collect();
    process::stop_all(&mut running, grace).await?;
    for member in members.iter_mut() {
        member.process = None;
    }
    Ok(())
}

/// [`stop_members`] for `Drop`.
pub(crate) fn stop_members_blocking(members: &mut [&mut Member], grace: Duration) {
    let mut running: Vec<&mut Process> = members
        .iter_mut()
        .filter_map(|m| m.process.as_mut())
        .collect();
    // Errors here leave only the Process drop (SIGKILL) as fallback, which still runs below.
    let _ = process::stop_all_blocking(&mut running, grace);
    for member in members.iter_mut() {
        member.process = None;
    }
}
