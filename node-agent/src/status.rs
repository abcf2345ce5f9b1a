//! Pod status the way a kubelet writes it: container statuses from what the runners report, the
//! phase by the kubelet's rules (`getPhase`), and the conditions it owns (Initialized,
//! ContainersReady, Ready), keeping conditions others own (PodScheduled, DisruptionTarget ...).
//! The container ID names the process (`pid://<pid>`); [`running_pid`] reads it back for the
//! demo and the tests. Pure: the pod worker decides when to patch. Must not read the clock (the
//! caller passes `now`).

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::error::PodRejection;
use super::launch::POD_IP;

/// Conditions this agent owns; all others on the pod are kept as they are.
const OWNED_CONDITIONS: [&str; 3] = ["Initialized", "ContainersReady", "Ready"];

/// A container as its runner last reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerView {
    pub name: String,
    pub image: String,
    /// `file://<binary>`: which local binary stands in for the image.
    pub image_id: String,
    pub state: State,
    pub last_termination: Option<Terminated>,
    pub ready: bool,
    pub started: bool,
    pub restart_count: i32,
}

impl ContainerView {
    /// A container that has not run yet.
    pub fn waiting(name: &str, image: &str, reason: &str, message: Option<String>) -> Self {
        ContainerView {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: String::new(),
            state: State::Waiting {
                reason: reason.to_owned(),
                message,
            },
            last_termination: None,
            ready: false,
            started: false,
            restart_count: 0,
        }
    }

    /// The exit that counts for the phase: the current one, else the last one.
    fn termination(&self) -> Option<&Terminated> {
        match &self.state {
            State::Terminated(t) => Some(t),
            State::Waiting { .. } => self.last_termination.as_ref(),
            State::Running { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        pid: u32,
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub message: Option<String>,
    /// `None` when the process never started.
    pub pid: Option<u32>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
}

/// Everything the status of one pod is computed from.
#[derive(Debug)]
pub(crate) struct PodView<'a> {
    pub pod: &'a Pod,
    /// What this agent last wrote (else the pod's status): transition times carry over from it.
    pub previous: Option<&'a PodStatus>,
    pub containers: &'a [ContainerView],
    pub rejection: Option<&'a PodRejection>,
    /// The pod is being deleted or the agent stops: once all containers have exited the phase
    /// is terminal whatever the restart policy.
    pub stopping: bool,
    pub start_time: Timestamp,
}

/// The status to write for `view` at `now`.
pub(crate) fn pod_status(view: &PodView<'_>, now: Timestamp) -> PodStatus {
    let phase = phase(view);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let unready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let containers_ready = unready.is_empty() && !view.containers.is_empty();
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_message = (!unready.is_empty() && !terminal)
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let gates_ready = readiness_gates_ready(view.pod);
    let owned = [
        ("Initialized", true, None, None),
        (
            "ContainersReady",
            containers_ready,
            Some(not_ready_reason),
            unready_message.clone(),
        ),
        (
            "Ready",
            containers_ready && gates_ready,
            Some(if containers_ready {
                "ReadinessGatesNotReady"
            } else {
                not_ready_reason
            }),
            unready_message,
        ),
    ];
    let previous_conditions = view
        .previous
        .or(view.pod.status.as_ref())
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conditions: Vec<PodCondition> = previous_conditions
        .iter()
        .filter(|c| !OWNED_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    for (type_, ok, reason, message) in owned {
        let status = if ok { "True" } else { "False" };
        let since = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        conditions.push(PodCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: (!ok).then(|| reason.map(str::to_owned)).flatten(),
            message: (!ok).then_some(message).flatten(),
            last_transition_time: Some(since),
            ..PodCondition::default()
        });
    }
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        container_statuses: Some(view.containers.iter().map(container_status).collect()),
        host_ip: Some(POD_IP.to_owned()),
        host_ips: Some(vec![HostIP {
            ip: POD_IP.to_owned(),
        }]),
        pod_ip: Some(POD_IP.to_owned()),
        pod_ips: Some(vec![PodIP {
            ip: POD_IP.to_owned(),
        }]),
        start_time: Some(Time(view.start_time)),
        reason: view.rejection.map(|r| r.reason().to_owned()),
        message: view.rejection.map(ToString::to_string),
        ..PodStatus::default()
    }
}

/// The kubelet's `getPhase` for pods without init containers.
fn phase(view: &PodView<'_>) -> &'static str {
    if let Some(rejection) = view.rejection {
        return if rejection.fails_pod() {
            "Failed"
        } else {
            "Pending"
        };
    }
    let containers = view.containers;
    let waiting = containers
        .iter()
        .filter(|c| matches!(c.state, State::Waiting { .. }) && c.last_termination.is_none())
        .count();
    let running = containers
        .iter()
        .filter(|c| matches!(c.state, State::Running { .. }))
        .count();
    let stopped: Vec<&Terminated> = containers
        .iter()
        .filter(|c| !matches!(c.state, State::Running { .. }))
        .filter_map(ContainerView::termination)
        .collect();
    let all_succeeded = stopped.iter().all(|t| t.exit_code == 0);
    if waiting > 0 || (running == 0 && stopped.is_empty()) {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    let restart_policy = view
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    match (view.stopping, restart_policy, all_succeeded) {
        (true, _, true) | (false, "OnFailure" | "Never", true) => "Succeeded",
        (true, _, false) | (false, "Never", false) => "Failed",
        // Always, or OnFailure with a failure: the container is backing off and will restart.
        (false, _, _) => "Running",
    }
}

fn readiness_gates_ready(pod: &Pod) -> bool {
    let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_ref());
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    gates.into_iter().flatten().all(|gate| {
        conditions
            .into_iter()
            .flatten()
            .any(|c| c.type_ == gate.condition_type && c.status == "True")
    })
}

fn container_status(view: &ContainerView) -> ContainerStatus {
    let container_id = match &view.state {
        State::Running { pid, .. } => Some(*pid),
        State::Terminated(t) => t.pid,
        State::Waiting { .. } => None,
    };
    ContainerStatus {
        name: view.name.clone(),
        image: view.image.clone(),
        image_id: view.image_id.clone(),
        container_id: container_id.map(container_id_for),
        state: Some(state(&view.state)),
        last_state: Some(
            view.last_termination
                .as_ref()
                .map(|t| ContainerState {
                    terminated: Some(terminated(t)),
                    ..ContainerState::default()
                })
                .unwrap_or_default(),
        ),
        ready: view.ready,
        started: Some(view.started),
        restart_count: view.restart_count,
        ..ContainerStatus::default()
    }
}

/// `pid://<pid>`: the container ID names the process, so anyone can find (and check) it.
fn container_id_for(pid: u32) -> String {
    format!("{PID_SCHEME}{pid}")
}

const PID_SCHEME: &str = "pid://";

/// The PID of the pod's first container while the agent reports it running (read back from its
/// container ID, `pid://<pid>`).
pub fn running_pid(pod: &Pod) -> Option<u32> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    status.state.as_ref()?.running.as_ref()?;
    status
        .container_id
        .as_deref()?
        .strip_prefix(PID_SCHEME)?
        .parse()
        .ok()
}

fn state(state: &State) -> ContainerState {
    match state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        State::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..ContainerState::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..ContainerState::default()
        },
    }
}

fn terminated(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        container_id: t.pid.map(container_id_for),
        started_at: t.started_at.map(Time),
        finished_at: Some(Time(t.finished_at)),
        ..ContainerStateTerminated::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(restart_policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "n" },
            "spec": { "restartPolicy": restart_policy, "containers": [{ "name": "c" }] },
            "status": { "conditions": [
                { "type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z" },
            ] },
        }))
        .expect("pod")
    }

    fn running(ready: bool) -> ContainerView {
        ContainerView {
            state: State::Running {
                pid: 42,
                started_at: Timestamp::UNIX_EPOCH,
            },
            ready,
            started: true,
            ..ContainerView::waiting("c", "img", "ContainerCreating", None)
        }
    }

    fn exited(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            pid: Some(42),
            started_at: Some(Timestamp::UNIX_EPOCH),
            finished_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn status_of(pod: &Pod, containers: &[ContainerView], stopping: bool) -> PodStatus {
        let view = PodView {
            pod,
            previous: None,
            containers,
            rejection: None,
            stopping,
            start_time: Timestamp::UNIX_EPOCH,
        };
        pod_status(&view, Timestamp::UNIX_EPOCH)
    }

    fn condition(status: &PodStatus, type_: &str) -> String {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }

    #[test]
    fn a_running_container_is_ready_only_when_its_probe_says_so() {
        let pod = pod("Always");
        let unready = status_of(&pod, &[running(false)], false);
        assert_eq!(unready.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&unready, "Ready"), "False");
        assert_eq!(condition(&unready, "PodScheduled"), "True", "kept");
        let ready = status_of(&pod, &[running(true)], false);
        assert_eq!(condition(&ready, "ContainersReady"), "True");
        assert_eq!(condition(&ready, "Ready"), "True");
        let statuses = ready.container_statuses.unwrap_or_default();
        assert_eq!(statuses[0].container_id.as_deref(), Some("pid://42"));
        assert_eq!(ready.pod_ip.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn the_phase_follows_the_kubelet_rules() {
        let backing_off = ContainerView {
            state: State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: None,
            },
            last_termination: Some(exited(1)),
            ..running(false)
        };
        let done = |code| ContainerView {
            state: State::Terminated(exited(code)),
            ..running(false)
        };
        let creating = ContainerView::waiting("c", "img", "ContainerCreating", None);
        let cases = [
            ("Always", creating, false, "Pending"),
            ("Always", backing_off.clone(), false, "Running"),
            ("OnFailure", backing_off, false, "Running"),
            ("OnFailure", done(0), false, "Succeeded"),
            ("Never", done(1), false, "Failed"),
            ("Never", done(0), false, "Succeeded"),
            ("Always", done(0), true, "Succeeded"),
            ("Always", done(137), true, "Failed"),
        ];
        for (policy, container, stopping, expected) in cases {
            let status = status_of(&pod(policy), std::slice::from_ref(&container), stopping);
            assert_eq!(
                status.phase.as_deref(),
                Some(expected),
                "{policy} {container:?} stopping={stopping}"
            );
        }
    }

    #[test]
    fn an_unmapped_image_keeps_the_pod_pending_and_an_unsupported_spec_fails_it() {
        let pod = pod("Always");
        let rejections = [
            (
                PodRejection::ImageNotMapped {
                    container: "c".into(),
                    image: "example.invalid/x:1".into(),
                },
                "Pending",
            ),
            (
                PodRejection::Unsupported {
                    what: "init containers",
                },
                "Failed",
            ),
        ];
        for (rejection, phase) in rejections {
            let containers = [ContainerView::waiting(
                "c",
                "example.invalid/x:1",
                rejection.reason(),
                Some(rejection.to_string()),
            )];
            let view = PodView {
                pod: &pod,
                previous: None,
                containers: &containers,
                rejection: Some(&rejection),
                stopping: false,
                start_time: Timestamp::UNIX_EPOCH,
            };
            let status = pod_status(&view, Timestamp::UNIX_EPOCH);
            assert_eq!(status.phase.as_deref(), Some(phase), "{rejection}");
            assert_eq!(status.reason.as_deref(), Some(rejection.reason()));
            assert_eq!(status.message, Some(rejection.to_string()));
            let container = &status.container_statuses.unwrap_or_default()[0];
            let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
            assert_eq!(
                waiting.and_then(|w| w.reason.as_deref()),
                Some(rejection.reason())
            );
        }
    }

    #[test]
    fn transition_times_change_only_when_a_condition_flips() {
        let pod = pod("Always");
        let earlier = Timestamp::UNIX_EPOCH;
        let later = Timestamp::from_second(1_000).expect("valid");
        let first = pod_status(
            &PodView {
                pod: &pod,
                previous: None,
                containers: &[running(false)],
                rejection: None,
                stopping: false,
                start_time: earlier,
            },
            earlier,
        );
        let transition = |status: &PodStatus, type_: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == type_)
                .and_then(|c| c.last_transition_time.clone())
        };
        let same = pod_status(
            &PodView {
                pod: &pod,
                previous: Some(&first),
                containers: &[running(false)],
                rejection: None,
                stopping: false,
                start_time: earlier,
            },
            later,
        );
        assert_eq!(same, first, "nothing changed, nothing to patch");
        let flipped = pod_status(
            &PodView {
                pod: &pod,
                previous: Some(&first),
                containers: &[running(true)],
                rejection: None,
                stopping: false,
                start_time: earlier,
            },
            later,
        );
        assert_eq!(transition(&flipped, "Ready"), Some(Time(later)));
        assert_eq!(transition(&flipped, "Initialized"), Some(Time(earlier)));
    }
}
