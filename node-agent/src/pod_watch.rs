//! The agent's view of its pods: one watch of the pods bound to its node (`spec.nodeName`), and
//! one pod worker per pod UID fed with the latest object, told when the pod vanished (a delete
//! event, or absence from a re-list after the watch broke) and, at shutdown, told to stop; then it
//! waits for every worker to finish. Must not run containers or write pods itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::AgentContext;
use super::pod::{self, PodSignal};

/// Pod workers by pod UID.
#[derive(Default)]
struct Workers {
    signals: HashMap<String, watch::Sender<PodSignal>>,
    tasks: JoinSet<()>,
    uid_of_task: HashMap<Id, String>,
    /// UIDs whose worker has ended while the pod still exists (e.g. its deletion is pending in
    /// the watch): later events must not start it again.
    finished: HashSet<String>,
}

impl Workers {
    fn dispatch(&mut self, agent: &Arc<AgentContext>, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if self.finished.contains(&uid) {
            return;
        }
        let signal = PodSignal::Update(Arc::new(pod));
        if let Some(sender) = self.signals.get(&uid) {
            sender.send_replace(signal);
            return;
        }
        let (sender, receiver) = watch::channel(signal);
        let task = self.tasks.spawn(pod::run(agent.clone(), receiver));
        self.uid_of_task.insert(task.id(), uid.clone());
        self.signals.insert(uid, sender);
    }

    fn gone(&mut self, uid: &str) {
        if let Some(sender) = self.signals.get(uid) {
            sender.send_replace(PodSignal::Gone);
        }
        self.finished.remove(uid);
    }

    /// After a re-list: every pod not in it is gone.
    fn keep_only(&mut self, listed: &HashSet<String>) {
        let vanished: Vec<String> = self
            .signals
            .keys()
            .filter(|uid| !listed.contains(*uid))
            .cloned()
            .collect();
        for uid in vanished {
            self.gone(&uid);
        }
        self.finished.retain(|uid| listed.contains(uid));
    }

    fn ended(&mut self, task: Id) {
        if let Some(uid) = self.uid_of_task.remove(&task)
            && let Some(sender) = self.signals.remove(&uid)
            && !matches!(*sender.borrow(), PodSignal::Gone)
        {
            self.finished.insert(uid);
        }
    }
}

/// Watches the node's pods until `shutdown`, then stops them all and returns when they are.
pub(crate) async fn run(agent: Arc<AgentContext>, shutdown: CancellationToken) {
    let pods: Api<Pod> = Api::all(agent.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", agent.node_name));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    let mut workers = Workers::default();
    // UIDs seen during a (re-)list, from Init to InitDone.
    let mut listing: Option<HashSet<String>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.next() => match event {
                Some(Ok(Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(Event::InitApply(pod))) => {
                    if let (Some(seen), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    workers.dispatch(&agent, pod);
                }
                Some(Ok(Event::InitDone)) => {
                    if let Some(seen) = listing.take() {
                        workers.keep_only(&seen);
                    }
                }
                Some(Ok(Event::Apply(pod))) => workers.dispatch(&agent, pod),
                Some(Ok(Event::Delete(pod))) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        workers.gone(uid);
                    }
                }
                Some(Err(error)) => warn!(node = %agent.node_name, %error, "pod watch failed; retrying"),
                None => break,
            },
            Some(ended) = workers.tasks.join_next_with_id() => {
                let task = match ended {
                    Ok((task, ())) => task,
                    Err(error) => {
                        warn!(%error, "a pod worker failed");
                        error.id()
                    }
                };
                workers.ended(task);
            }
        }
    }
    debug!(node = %agent.node_name, pods = workers.signals.len(), "stopping every pod");
    for sender in workers.signals.values() {
        sender.send_replace(PodSignal::Shutdown);
    }
    while let Some(ended) = workers.tasks.join_next().await {
        if let Err(error) = ended {
            warn!(%error, "a pod worker failed while stopping");
        }
    }
}
