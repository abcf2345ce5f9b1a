//! One pod on the agent's node, from admission to the end of its deletion, like the kubelet's pod
//! worker: admit it (every image mapped to a binary, nothing unsupported; else phase Failed),
//! give it a directory and host ports (published in an annotation), run one
//! [`ContainerRunner`] per container, write its status whenever what the runners report changes
//! it, and stop it when it is deleted (then delete the object with grace period 0, as the kubelet
//! finishes a deletion), when it vanishes from the API, or when the agent shuts down (a drain).
//! Must not touch other pods or the node.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{info, warn};

use super::AgentContext;
use super::container::ContainerRunner;
use super::error::PodRejection;
use super::node::FIELD_MANAGER;
use super::port_map::{LOCAL_PORTS_ANNOTATION, PortMap};
use super::status::{ContainerView, PodView, pod_status};

/// The kubelet's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How soon a failed API write (status, annotation, final delete) is tried again.
const WRITE_RETRY: Duration = Duration::from_secs(1);
/// How long a shutting-down agent keeps trying to write a pod's last status and delete it.
const SHUTDOWN_WRITES: Duration = Duration::from_secs(10);

/// What the agent's pod watch tells a pod worker; only the latest counts.
#[derive(Debug, Clone)]
pub(crate) enum PodSignal {
    /// The pod as the API now has it.
    Update(Arc<Pod>),
    /// The pod is no longer in the API (deleted outright, or its node changed).
    Gone,
    /// The agent is shutting down: stop the pod and remove it, as a drain would.
    Shutdown,
}

/// What the containers of a pod share.
#[derive(Debug)]
pub(crate) struct PodContext {
    pub agent: Arc<AgentContext>,
    /// The pod as admitted; `fieldRef`s read it.
    pub pod: Pod,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Working directory of every container, and where their logs go.
    pub dir: PathBuf,
    pub ports: PortMap,
    /// `terminationGracePeriodSeconds`.
    pub grace: Duration,
}

impl PodContext {
    /// `HOSTNAME` of the containers, as the kubelet sets it.
    pub fn hostname(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone())
    }
}

impl fmt::Display for PodContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a pod's containers are being stopped; decides what is written afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    /// The pod has a deletionTimestamp: write the final status, then delete the object.
    Deleted,
    /// The agent shuts down: the same as a deletion.
    Shutdown,
    /// The object is gone: nothing left to write.
    Gone,
}

/// Runs the pod whose first sighting is `signals`' current value until its end.
pub(crate) async fn run(agent: Arc<AgentContext>, mut signals: watch::Receiver<PodSignal>) {
    let PodSignal::Update(pod) = signals.borrow_and_update().clone() else {
        return;
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let grace = grace_of(&pod).unwrap_or(DEFAULT_GRACE);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    // A pod already finished or being deleted before this agent saw it running has nothing to
    // run, and its status is not this agent's to rewrite.
    let passive =
        matches!(phase, Some("Succeeded" | "Failed")) || pod.metadata.deletion_timestamp.is_some();
    let context = Arc::new(PodContext {
        dir: super::pod_dir(&agent.work_dir, &namespace, &name),
        agent,
        pod: (*pod).clone(),
        namespace,
        name,
        uid,
        ports: PortMap::default(),
        grace,
    });
    let mut worker = PodWorker {
        views: spec
            .containers
            .iter()
            .map(|c| {
                let image = c.image.as_deref().unwrap_or_default();
                ContainerView::waiting(&c.name, image, "ContainerCreating", None)
            })
            .collect(),
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(Timestamp::now, |t| t.0),
        latest: pod,
        context,
        rejection: None,
        write_status: !passive,
        last_written: None,
        annotation: None,
        stopping: None,
        deadline: None,
    };
    let mut runners = JoinSet::new();
    let (reports_tx, reports) = mpsc::channel(32);
    let (stop_tx, stop_rx) = watch::channel(None);
    if !passive {
        match worker.admit() {
            Ok((admitted, binaries)) => {
                info!(pod = %admitted, containers = worker.views.len(), dir = %admitted.dir.display(), "pod admitted");
                worker.annotation = admitted.ports.annotation();
                worker.context = admitted.clone();
                let containers = spec.containers.iter().zip(binaries);
                for (index, (container, binary)) in containers.enumerate() {
                    let runner = ContainerRunner {
                        pod: admitted.clone(),
                        index,
                        container: container.clone(),
                        binary,
                    };
                    runners.spawn(runner.run(stop_rx.clone(), reports_tx.clone()));
                }
            }
            Err(rejection) => {
                warn!(pod = %worker.context, reason = rejection.reason(), %rejection, "pod rejected");
                for view in &mut worker.views {
                    *view = ContainerView::waiting(
                        &view.name,
                        &view.image,
                        rejection.reason(),
                        Some(rejection.to_string()),
                    );
                }
                worker.rejection = Some(rejection);
            }
        }
    }
    drop(reports_tx);
    worker.handle(&worker.latest.clone(), &stop_tx);
    worker.supervise(signals, runners, reports, &stop_tx).await;
}

struct PodWorker {
    context: Arc<PodContext>,
    latest: Arc<Pod>,
    start_time: Timestamp,
    views: Vec<ContainerView>,
    rejection: Option<PodRejection>,
    /// False for pods this agent never ran (found finished or already being deleted).
    write_status: bool,
    last_written: Option<PodStatus>,
    /// The port annotation still to write.
    annotation: Option<String>,
    stopping: Option<Stopping>,
    /// When the containers get SIGKILL, once stopping.
    deadline: Option<Instant>,
}

impl PodWorker {
    /// Checks that the agent can run the pod, and prepares its directory and ports. Returns the
    /// pod's context and the binary of each container, in spec order.
    fn admit(&self) -> Result<(Arc<PodContext>, Vec<PathBuf>), PodRejection> {
        let context = &self.context;
        let spec = context.pod.spec.clone().unwrap_or_default();
        if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(PodRejection::Unsupported {
                what: "init containers",
            });
        }
        let mut binaries = Vec::with_capacity(spec.containers.len());
        for container in &spec.containers {
            let Some(image) = container.image.as_deref().filter(|i| !i.is_empty()) else {
                return Err(PodRejection::NoImage {
                    container: container.name.clone(),
                });
            };
            let Some(binary) = context.agent.images.binary_for(image) else {
                return Err(PodRejection::ImageNotMapped {
                    container: container.name.clone(),
                    image: image.to_owned(),
                });
            };
            binaries.push(binary.to_path_buf());
        }
        // An emptyDir needs nothing: the process sees the machine's file system anyway. Other
        // volumes (Secrets ...) are simply not there; the service account token comes through
        // KUBECONFIG instead (see `service_account`).
        let unmounted: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.empty_dir.is_none())
            .map(|v| v.name.as_str())
            .collect();
        if !unmounted.is_empty() {
            info!(pod = %context, volumes = ?unmounted, "only emptyDir volumes are supported: these are not mounted, and the containers see the machine's own files at their mount paths");
        }
        std::fs::create_dir_all(&context.dir).map_err(|error| PodRejection::LocalSetup {
            what: format!("creating {}: {error}", context.dir.display()),
        })?;
        let ports =
            PortMap::allocate(&spec.containers).map_err(|error| PodRejection::LocalSetup {
                what: error.to_string(),
            })?;
        let admitted = PodContext {
            agent: context.agent.clone(),
            pod: context.pod.clone(),
            namespace: context.namespace.clone(),
            name: context.name.clone(),
            uid: context.uid.clone(),
            dir: context.dir.clone(),
            ports,
            grace: context.grace,
        };
        Ok((Arc::new(admitted), binaries))
    }

    /// Until the pod's end: apply signals and reports, write status, then finish.
    async fn supervise(
        mut self,
        mut signals: watch::Receiver<PodSignal>,
        mut runners: JoinSet<()>,
        mut reports: mpsc::Receiver<(usize, ContainerView)>,
        stop_tx: &watch::Sender<Option<Instant>>,
    ) {
        let mut signals_open = true;
        let mut retry: Option<Instant> = None;
        loop {
            if self.write().await {
                retry = None;
            } else {
                retry.get_or_insert_with(|| Instant::now() + WRITE_RETRY);
            }
            if self.stopping.is_some() && runners.is_empty() {
                break;
            }
            tokio::select! {
                changed = signals.changed(), if signals_open => {
                    let signal = if changed.is_ok() {
                        signals.borrow_and_update().clone()
                    } else {
                        // The pod watch is gone: the agent is stopping.
                        signals_open = false;
                        PodSignal::Shutdown
                    };
                    self.on_signal(signal, stop_tx);
                }
                Some((index, view)) = reports.recv() => {
                    if let Some(slot) = self.views.get_mut(index) {
                        *slot = view;
                    }
                }
                Some(joined) = runners.join_next(), if !runners.is_empty() => {
                    if let Err(error) = joined {
                        warn!(pod = %self.context, %error, "a container runner failed");
                    }
                }
                () = sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => retry = None,
            }
        }
        // The runners' last words (terminated states) may still be queued.
        while let Ok((index, view)) = reports.try_recv() {
            if let Some(slot) = self.views.get_mut(index) {
                *slot = view;
            }
        }
        self.finish(signals).await;
    }

    fn on_signal(&mut self, signal: PodSignal, stop_tx: &watch::Sender<Option<Instant>>) {
        match signal {
            PodSignal::Update(pod) => self.handle(&pod, stop_tx),
            PodSignal::Gone => self.stop(Stopping::Gone, None, stop_tx),
            PodSignal::Shutdown => self.stop(Stopping::Shutdown, None, stop_tx),
        }
    }

    fn handle(&mut self, pod: &Arc<Pod>, stop_tx: &watch::Sender<Option<Instant>>) {
        self.latest = pod.clone();
        if pod.metadata.deletion_timestamp.is_some() {
            self.stop(Stopping::Deleted, grace_of(pod), stop_tx);
        }
    }

    /// Starts (or hurries) stopping the containers: SIGKILL no later than `grace` from now.
    fn stop(
        &mut self,
        why: Stopping,
        grace: Option<Duration>,
        stop_tx: &watch::Sender<Option<Instant>>,
    ) {
        // Gone outranks the others: nothing is left to write. Deleted and Shutdown end the same
        // way (last status, then delete); Shutdown only bounds how long that may take.
        if self.stopping != Some(Stopping::Gone) {
            if self.stopping.is_none() {
                info!(pod = %self.context, reason = ?why, "stopping the pod's containers");
            }
            self.stopping = Some(why);
        }
        let deadline = Instant::now() + grace.unwrap_or(self.context.grace);
        let deadline = self.deadline.map_or(deadline, |d| d.min(deadline));
        if self.deadline != Some(deadline) {
            self.deadline = Some(deadline);
            stop_tx.send_replace(Some(deadline));
        }
    }

    /// Writes what changed (annotation, status); `false` if a write failed and must be retried.
    async fn write(&mut self) -> bool {
        if !self.write_status || self.stopping == Some(Stopping::Gone) {
            return true;
        }
        let pods: Api<Pod> =
            Api::namespaced(self.context.agent.client.clone(), &self.context.namespace);
        let name = &self.context.name;
        if let Some(annotation) = &self.annotation {
            let patch = json!({
                "metadata": {
                    "uid": self.context.uid,
                    "annotations": { LOCAL_PORTS_ANNOTATION: annotation },
                },
            });
            match pods
                .patch(name, &write_params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(pod = %self.context, ports = %annotation, "host ports published");
                    self.annotation = None;
                }
                Err(error) => {
                    warn!(pod = %self.context, %error, "could not annotate the pod with its host ports; retrying");
                    return false;
                }
            }
        }
        let view = PodView {
            pod: &self.latest,
            previous: self.last_written.as_ref(),
            containers: &self.views,
            rejection: self.rejection.as_ref(),
            stopping: self.stopping.is_some(),
            start_time: self.start_time,
        };
        let status = pod_status(&view, Timestamp::now());
        if self.last_written.as_ref() == Some(&status) {
            return true;
        }
        let patch = match status_patch(&self.context.uid, &status) {
            Ok(patch) => patch,
            Err(error) => {
                warn!(pod = %self.context, %error, "cannot serialize the pod status");
                return true;
            }
        };
        match pods
            .patch_status(name, &write_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if self.last_written.as_ref().and_then(|s| s.phase.as_ref())
                    != status.phase.as_ref()
                {
                    info!(pod = %self.context, phase = status.phase.as_deref().unwrap_or_default(), "pod phase");
                }
                self.last_written = Some(status);
                true
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                // Deleted, or replaced by a pod of the same name: the watch will say Gone.
                true
            }
            Err(error) => {
                warn!(pod = %self.context, %error, "could not write the pod status; retrying");
                false
            }
        }
    }

    /// After the containers have stopped: the last status and the object's deletion, unless it
    /// is gone already. Once the agent is shutting down it gives up after [`SHUTDOWN_WRITES`].
    async fn finish(mut self, mut signals: watch::Receiver<PodSignal>) {
        let Some(why) = self.stopping else {
            return;
        };
        if why == Stopping::Gone {
            info!(pod = %self.context, "pod gone; its containers are stopped");
            return;
        }
        let shutdown_deadline = || Instant::now() + SHUTDOWN_WRITES;
        let mut give_up = (why == Stopping::Shutdown).then(shutdown_deadline);
        loop {
            let attempt = async { self.write().await && self.delete().await };
            let done = match give_up {
                Some(at) => timeout(at.saturating_duration_since(Instant::now()), attempt)
                    .await
                    .unwrap_or(false),
                None => attempt.await,
            };
            if done {
                return;
            }
            if give_up.is_some_and(|at| Instant::now() >= at) {
                warn!(pod = %self.context, "gave up writing the pod's last status and deleting it while shutting down");
                return;
            }
            tokio::select! {
                () = sleep_until(Instant::now() + WRITE_RETRY) => {}
                changed = signals.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    match *signals.borrow_and_update() {
                        PodSignal::Gone => return,
                        PodSignal::Shutdown => {
                            give_up.get_or_insert_with(shutdown_deadline);
                        }
                        PodSignal::Update(_) => {}
                    }
                }
            }
        }
    }

    /// Deletes the object with grace period 0 (only this incarnation: UID precondition).
    async fn delete(&self) -> bool {
        let pods: Api<Pod> =
            Api::namespaced(self.context.agent.client.clone(), &self.context.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.context.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&self.context.name, &params).await {
            Ok(_) => {
                info!(pod = %self.context, "pod deleted");
                true
            }
            // Gone already, or the name now belongs to another pod.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
            Err(error) => {
                warn!(pod = %self.context, %error, "could not delete the pod; retrying");
                false
            }
        }
    }
}

/// Pod writes are merge patches (the kubelet's way), attributed to the agent's field manager.
fn write_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// The deletion's grace period if the pod is being deleted, else its spec's.
fn grace_of(pod: &Pod) -> Option<Duration> {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .map(|s| Duration::from_secs(s.max(0).unsigned_abs()))
}

/// A merge patch of the status subresource. Absent reason/message are written as null so a
/// stale value is cleared; the UID makes the patch fail on a same-named successor.
fn status_patch(uid: &str, status: &PodStatus) -> Result<Value, serde_json::Error> {
    let mut body = serde_json::to_value(status)?;
    if let Some(object) = body.as_object_mut() {
        for field in ["reason", "message"] {
            object.entry(field).or_insert(Value::Null);
        }
    }
    Ok(json!({ "metadata": { "uid": uid }, "status": body }))
}
