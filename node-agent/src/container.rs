//! One container's life, as the kubelet runs it: resolve its configuration (waiting with
//! `CreateContainerConfigError` and retrying while a Secret or key is missing), start its process,
//! run its startup, readiness and liveness probes, restart it under the pod's restart policy with
//! the crash-loop back-off (waiting with `CrashLoopBackOff`), and stop it (SIGTERM, the grace
//! period, SIGKILL) when the pod worker asks. Every change is reported to the pod worker as a
//! [`ContainerView`]. Must not write to the API: status is the pod worker's job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, sleep};
use tracing::{info, warn};

use super::backoff::CrashLoopBackOff;
use super::error::ConfigError;
use super::launch::{self, Launch, fetch_sources, resolve_env};
use super::pod::PodContext;
use super::probe::{ProbeKind, ProbeResult, ProbeSpec, run_prober};
use super::processes::{ContainerProcess, exit_code};
use super::service_account;
use super::status::{ContainerView, State, Terminated};

/// How soon a container whose configuration cannot be built is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(2);

/// The stop request the pod worker sends to its containers: SIGKILL no later than this.
type StopRequest = watch::Receiver<Option<Instant>>;
/// Where a runner reports its container (by index in the pod spec).
type Reports = mpsc::Sender<(usize, ContainerView)>;

/// How a run of the process ended.
#[derive(Debug)]
enum Ending {
    /// It exited on its own.
    Exited,
    /// The pod worker stopped it (deletion, agent shutdown).
    Stopped,
    /// The agent killed it for failing its liveness or startup probe.
    Unhealthy(String),
}

/// One container of a pod, with the local binary standing in for its image.
#[derive(Debug)]
pub(crate) struct ContainerRunner {
    pub pod: Arc<PodContext>,
    pub index: usize,
    pub container: Container,
    pub binary: PathBuf,
}

impl ContainerRunner {
    /// Runs the container until it is stopped or, under its restart policy, done for good.
    pub async fn run(self, mut stop: StopRequest, reports: Reports) {
        let name = self.container.name.clone();
        let image = self.container.image.clone().unwrap_or_default();
        let mut view = ContainerView::waiting(&name, &image, "ContainerCreating", None);
        view.image_id = format!("file://{}", self.binary.display());
        let mut backoff = CrashLoopBackOff::default();
        loop {
            if view.last_termination.is_some() {
                let delay = backoff.delay(Instant::now());
                if !delay.is_zero() {
                    let message = format!(
                        "back-off {delay:?} restarting failed container={name} pod={}",
                        self.pod
                    );
                    info!(pod = %self.pod, container = %name, ?delay, "crash loop: waiting before the restart");
                    view.state = State::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(message),
                    };
                    report(&reports, self.index, &view).await;
                    if wait_or_stop(delay, &mut stop).await {
                        break;
                    }
                }
            }
            let launch = loop {
                match self.launch().await {
                    Ok(launch) => break Some(launch),
                    Err(error) => {
                        warn!(pod = %self.pod, container = %name, %error, "cannot build the container's configuration; retrying in {CONFIG_RETRY:?}");
                        view.state = State::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: Some(error.to_string()),
                        };
                        report(&reports, self.index, &view).await;
                        if wait_or_stop(CONFIG_RETRY, &mut stop).await {
                            break None;
                        }
                    }
                }
            };
            let Some(launch) = launch else { break };
            if view.last_termination.is_some() {
                backoff.restarted(Instant::now());
                view.restart_count += 1;
            }
            let (terminated, ending) = self.run_once(&launch, &mut view, &mut stop, &reports).await;
            view.ready = false;
            view.started = false;
            let restart = match ending {
                Ending::Stopped => false,
                Ending::Unhealthy(_) => self.restart_policy() != "Never",
                Ending::Exited => match self.restart_policy() {
                    "Never" => false,
                    "OnFailure" => terminated.exit_code != 0,
                    _ => true,
                },
            };
            info!(
                pod = %self.pod, container = %name, exit_code = terminated.exit_code,
                reason = %terminated.reason, restart, "container exited"
            );
            if !restart || stop_requested(&stop) {
                view.state = State::Terminated(terminated);
                break;
            }
            view.last_termination = Some(terminated);
        }
        report(&reports, self.index, &view).await;
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    /// The process's program, arguments and environment for this start. Secrets and ConfigMaps
    /// are read anew each time, as a kubelet does.
    async fn launch(&self) -> Result<Launch, ConfigError> {
        let pod = &self.pod;
        let sources = fetch_sources(&pod.agent.client, &pod.namespace, &self.container).await?;
        let mut base = BTreeMap::from([("HOSTNAME".to_owned(), pod.hostname())]);
        // No image, so no image PATH: the agent's own lets a binary find its helpers.
        if let Ok(path) = std::env::var("PATH") {
            base.insert("PATH".to_owned(), path);
        }
        // Where the kubelet sets KUBERNETES_SERVICE_*: before the pod's env, which may override it.
        if let Some(kubeconfig) = self.kubeconfig().await? {
            base.insert("KUBECONFIG".to_owned(), kubeconfig.display().to_string());
        }
        let mut env = resolve_env(&pod.pod, &self.container, &sources, base)?;
        // After the pod's env: the agent's port mapping overrides the contract's literal 9090.
        env.extend(pod.ports.env_for(&self.container.name));
        Ok(launch::launch(&self.binary, &self.container, env))
    }

    /// A kubeconfig with a fresh token of the pod's ServiceAccount, written for this start (a
    /// restarted container gets a new token, as the kubelet re-reads Secrets); `None` when the
    /// pod opts out or the agent gives pods no API access.
    async fn kubeconfig(&self) -> Result<Option<PathBuf>, ConfigError> {
        let pod = &self.pod;
        let (Some(api), Some(account)) = (
            pod.agent.api_server.as_ref(),
            service_account::token_account(&pod.pod),
        ) else {
            return Ok(None);
        };
        let token = service_account::request_token(&pod.agent.client, &pod.pod, &account).await?;
        let kubeconfig = service_account::kubeconfig(api, &pod.namespace, &token);
        service_account::write_kubeconfig(&pod.dir, &self.container.name, &kubeconfig).map(Some)
    }

    /// One run of the process: start, supervise, and how it ended.
    async fn run_once(
        &self,
        launch: &Launch,
        view: &mut ContainerView,
        stop: &mut StopRequest,
        reports: &Reports,
    ) -> (Terminated, Ending) {
        let pod = &self.pod;
        let name = &self.container.name;
        let started_at = Timestamp::now();
        let log = pod.dir.join(format!("{name}.log"));
        let label = format!("{}_{}_{name}", pod.namespace, pod.name);
        let spawned = ContainerProcess::spawn(
            launch,
            &pod.dir,
            &log,
            &label,
            pod.grace,
            &pod.agent.processes,
        );
        let mut process = match spawned {
            Ok(process) => process,
            Err(error) => {
                warn!(pod = %pod, container = %name, %error, "container failed to start");
                let terminated = Terminated {
                    exit_code: 128,
                    reason: "StartError".into(),
                    message: Some(error.to_string()),
                    pid: None,
                    started_at: None,
                    finished_at: Timestamp::now(),
                };
                return (terminated, Ending::Exited);
            }
        };
        let pid = process.pid();
        info!(pod = %pod, container = %name, pid, restarts = view.restart_count, log = %log.display(), "container started");
        view.state = State::Running { pid, started_at };
        let (status, ending) = self.supervise(&mut process, view, stop, reports).await;
        let code = exit_code(status);
        let terminated = Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: match &ending {
                Ending::Unhealthy(why) => Some(why.clone()),
                Ending::Exited | Ending::Stopped => None,
            },
            pid: Some(pid),
            started_at: Some(started_at),
            finished_at: Timestamp::now(),
        };
        (terminated, ending)
    }

    /// Probes the running process until it exits, is stopped, or fails a liveness or startup
    /// probe (then it is terminated with the probe's grace period, else the pod's).
    async fn supervise(
        &self,
        process: &mut ContainerProcess,
        view: &mut ContainerView,
        stop: &mut StopRequest,
        reports: &Reports,
    ) -> (ExitStatus, Ending) {
        let spec = |probe: &Option<Probe>| {
            probe
                .as_ref()
                .map(|p| ProbeSpec::new(p, &self.container.name, &self.pod.ports))
        };
        let startup = spec(&self.container.startup_probe);
        let readiness = spec(&self.container.readiness_probe);
        let liveness = spec(&self.container.liveness_probe);
        let mut verdicts =
            [&startup, &readiness, &liveness].map(|spec| spec.as_ref().map(ProbeSpec::thresholds));
        let (mut probers, mut results) = Probers::new(self.pod.agent.probe_http.clone());
        // Like the kubelet: readiness and liveness probes begin once the startup probe passes.
        let startup_prober = probers.start(ProbeKind::Startup, &startup);
        if startup_prober.is_none() {
            view.started = true;
            probers.start(ProbeKind::Readiness, &readiness);
            probers.start(ProbeKind::Liveness, &liveness);
        }
        view.ready = view.started && readiness.is_none();
        report(reports, self.index, view).await;

        let mut stop_open = true;
        loop {
            tokio::select! {
                status = process.wait() => return (status, Ending::Exited),
                changed = stop.changed(), if stop_open => {
                    // A closed channel means the pod worker is gone: stop within the grace.
                    let deadline = match changed {
                        Ok(()) => *stop.borrow_and_update(),
                        Err(_) => {
                            stop_open = false;
                            Some(Instant::now() + self.pod.grace)
                        }
                    };
                    if let Some(deadline) = deadline {
                        info!(pod = %self.pod, container = %self.container.name, pid = process.pid(), "stopping the container (SIGTERM, SIGKILL after the grace period)");
                        return (process.terminate(deadline, stop).await, Ending::Stopped);
                    }
                }
                Some((kind, result)) = results.recv() => {
                    let slot = kind as usize;
                    let verdict = verdicts[slot].as_mut().and_then(|t| t.record(result.is_ok()));
                    if let Err(why) = &result {
                        tracing::debug!(pod = %self.pod, container = %self.container.name, ?kind, %why, "probe failed");
                    }
                    match (kind, verdict) {
                        (ProbeKind::Startup, Some(true)) => {
                            if let Some(prober) = &startup_prober {
                                prober.abort();
                            }
                            view.started = true;
                            view.ready = readiness.is_none();
                            probers.start(ProbeKind::Readiness, &readiness);
                            probers.start(ProbeKind::Liveness, &liveness);
                        }
                        (ProbeKind::Readiness, Some(ready)) if ready != view.ready => {
                            info!(pod = %self.pod, container = %self.container.name, ready, "readiness changed");
                            view.ready = ready;
                        }
                        (ProbeKind::Startup | ProbeKind::Liveness, Some(false)) => {
                            let why = format!("{kind} probe failed: {}", result.err().unwrap_or_default());
                            warn!(pod = %self.pod, container = %self.container.name, pid = process.pid(), %why, "killing the container to restart it");
                            let failed = if kind == ProbeKind::Startup { &startup } else { &liveness };
                            let grace = failed
                                .as_ref()
                                .and_then(|s| s.termination_grace)
                                .unwrap_or(self.pod.grace);
                            let status = process.terminate(Instant::now() + grace, stop).await;
                            return (status, Ending::Unhealthy(why));
                        }
                        _ => continue,
                    }
                    report(reports, self.index, view).await;
                }
            }
        }
    }
}

/// The probers of one run of a process. Dropping it aborts them: they live exactly as long as
/// the run.
struct Probers {
    tasks: JoinSet<()>,
    http: reqwest::Client,
    started: Instant,
    results: mpsc::Sender<ProbeResult>,
}

impl Probers {
    fn new(http: reqwest::Client) -> (Probers, mpsc::Receiver<ProbeResult>) {
        let (results, receiver) = mpsc::channel(8);
        let probers = Probers {
            tasks: JoinSet::new(),
            http,
            started: Instant::now(),
            results,
        };
        (probers, receiver)
    }

    /// Starts probing with `spec`, if the container has that probe.
    fn start(&mut self, kind: ProbeKind, spec: &Option<ProbeSpec>) -> Option<AbortHandle> {
        let spec = spec.clone()?;
        Some(self.tasks.spawn(run_prober(
            kind,
            spec,
            self.http.clone(),
            self.started,
            self.results.clone(),
        )))
    }
}

async fn report(reports: &Reports, index: usize, view: &ContainerView) {
    // The pod worker outlives its runners; a closed channel only happens while it is torn down.
    let _ = reports.send((index, view.clone())).await;
}

fn stop_requested(stop: &StopRequest) -> bool {
    stop.borrow().is_some()
}

/// Sleeps for `delay` unless a stop is requested first; `true` if it was.
async fn wait_or_stop(delay: Duration, stop: &mut StopRequest) -> bool {
    if stop_requested(stop) {
        return true;
    }
    let requested = async {
        // Also when closed: the pod worker is gone, so nobody waits for this container any more.
        let _ = stop.wait_for(Option::is_some).await;
    };
    tokio::select! {
        () = sleep(delay) => false,
        () = requested => true,
    }
}
