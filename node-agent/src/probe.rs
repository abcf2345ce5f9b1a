//! Container probes as the kubelet runs them: `httpGet` (2xx/3xx is success) and `tcpSocket` on
//! the mapped host port, with the kubelet's defaults and its consecutive-result thresholds. A
//! prober task per probe sends each result to the container's runner, which decides what a result
//! means (ready, started, restart). Must not signal processes or write status.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use super::port_map::PortMap;

/// Which of a container's probes a result belongs to (the discriminant indexes per-kind state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    Startup = 0,
    Readiness = 1,
    Liveness = 2,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Liveness => "liveness",
        })
    }
}

/// One probe's outcome, and why it failed.
pub(crate) type ProbeResult = (ProbeKind, Result<(), String>);

/// How a probe checks the container.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Http {
        url: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        address: String,
    },
    /// exec, gRPC, or a port the container does not declare by that name: always fails, and the
    /// reason says so in the agent's log.
    Unsupported(String),
}

/// A probe with the kubelet's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeSpec {
    action: Action,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    /// The probe's own `terminationGracePeriodSeconds` (liveness and startup), if any.
    pub termination_grace: Option<Duration>,
}

impl ProbeSpec {
    /// Resolves `probe` of `container` against the pod's host ports.
    pub fn new(probe: &Probe, container: &str, ports: &PortMap) -> ProbeSpec {
        let seconds = |value: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(value.unwrap_or(default).max(min).unsigned_abs().into())
        };
        let count =
            |value: Option<i32>, default: i32| value.unwrap_or(default).max(1).unsigned_abs();
        ProbeSpec {
            action: action(probe, container, ports),
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
            termination_grace: probe
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(1).unsigned_abs())),
        }
    }

    /// A fresh result tracker for this probe.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            success_threshold: self.success_threshold,
            failure_threshold: self.failure_threshold,
            run: 0,
            last: None,
        }
    }
}

fn action(probe: &Probe, container: &str, ports: &PortMap) -> Action {
    if let Some(http) = &probe.http_get {
        let Some(port) = ports.host_port(container, &http.port) else {
            return Action::Unsupported(format!("httpGet port {:?} is not declared", http.port));
        };
        let scheme = http
            .scheme
            .as_deref()
            .unwrap_or("HTTP")
            .to_ascii_lowercase();
        let host = http.host.as_deref().unwrap_or(super::launch::POD_IP);
        let path = http.path.as_deref().unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        return Action::Http {
            url: format!("{scheme}://{host}:{port}{path}"),
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        return match ports.host_port(container, &tcp.port) {
            Some(port) => Action::Tcp {
                address: format!(
                    "{}:{port}",
                    tcp.host.as_deref().unwrap_or(super::launch::POD_IP)
                ),
            },
            None => Action::Unsupported(format!("tcpSocket port {:?} is not declared", tcp.port)),
        };
    }
    let kind = if probe.exec.is_some() {
        "exec"
    } else if probe.grpc.is_some() {
        "grpc"
    } else {
        "an empty"
    };
    Action::Unsupported(format!(
        "{kind} probes are not supported by orderpipe-node-agent"
    ))
}

/// Consecutive results → a verdict, like the kubelet's prober worker: success only after
/// `success_threshold` successes in a row, failure only after `failure_threshold` failures in a
/// row; anything shorter changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Thresholds {
    success_threshold: u32,
    failure_threshold: u32,
    run: u32,
    last: Option<bool>,
}

impl Thresholds {
    /// Records one result; `Some(verdict)` once the current run reaches its threshold.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let needed = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        (self.run >= needed).then_some(success)
    }
}

/// Runs `spec` from `started` on: waits the initial delay, then probes once per period and sends
/// each result; ends when the receiver is gone. The caller aborts it when the process exits.
pub(crate) async fn run_prober(
    kind: ProbeKind,
    spec: ProbeSpec,
    http: reqwest::Client,
    started: Instant,
    results: mpsc::Sender<ProbeResult>,
) {
    let mut next = started + spec.initial_delay;
    loop {
        sleep_until(next).await;
        let result = match timeout(spec.timeout, probe_once(&spec.action, &http)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {:?}", spec.timeout)),
        };
        if results.send((kind, result)).await.is_err() {
            return;
        }
        // A ticker, not a delay after the probe: a slow probe does not stretch the period.
        next += spec.period;
        let now = Instant::now();
        if next < now {
            next = now;
        }
    }
}

async fn probe_once(action: &Action, http: &reqwest::Client) -> Result<(), String> {
    match action {
        Action::Http { url, headers } => {
            let mut request = http.get(url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = request
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("GET {url}: HTTP {status}"))
            }
        }
        Action::Tcp { address } => tokio::net::TcpStream::connect(address)
            .await
            .map(drop)
            .map_err(|e| format!("connect {address}: {e}")),
        Action::Unsupported(reason) => Err(reason.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;
    use serde_json::json;

    fn spec(probe: serde_json::Value) -> ProbeSpec {
        let containers: Vec<Container> = serde_json::from_value(json!([
            { "name": "worker", "ports": [{ "name": "metrics", "containerPort": 9090 }] },
        ]))
        .expect("containers");
        let ports = PortMap::allocate(&containers).expect("ports");
        let probe: Probe = serde_json::from_value(probe).expect("probe");
        ProbeSpec::new(&probe, "worker", &ports)
    }

    #[test]
    fn kubelet_defaults_apply_and_http_targets_the_mapped_port() {
        let probe = spec(json!({ "httpGet": { "path": "readyz", "port": "metrics" } }));
        assert_eq!(probe.period, Duration::from_secs(10));
        assert_eq!(probe.timeout, Duration::from_secs(1));
        assert_eq!((probe.success_threshold, probe.failure_threshold), (1, 3));
        let Action::Http { url, .. } = &probe.action else {
            panic!("{probe:?}");
        };
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert!(url.ends_with("/readyz") && !url.contains(":9090/"), "{url}");
    }

    #[test]
    fn unsupported_probes_say_why() {
        let probe = spec(json!({ "exec": { "command": ["true"] } }));
        assert_eq!(
            probe.action,
            Action::Unsupported("exec probes are not supported by orderpipe-node-agent".into())
        );
        let probe = spec(json!({ "httpGet": { "port": "admin" } }));
        assert!(matches!(probe.action, Action::Unsupported(ref r) if r.contains("admin")));
    }

    #[test]
    fn a_verdict_needs_the_threshold_in_a_row() {
        let probe = spec(json!({
            "tcpSocket": { "port": 9090 }, "successThreshold": 2, "failureThreshold": 3,
        }));
        let mut thresholds = probe.thresholds();
        let verdicts: Vec<Option<bool>> =
            [true, true, false, false, true, false, false, false, false]
                .into_iter()
                .map(|result| thresholds.record(result))
                .collect();
        assert_eq!(
            verdicts,
            [
                None,
                Some(true),
                None,
                None,
                None, // a success breaks the failure run
                None,
                None,
                Some(false),
                Some(false),
            ]
        );
    }
}
