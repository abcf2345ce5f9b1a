//! What the cluster serves (Argo Rollouts, Prometheus Operator ServiceMonitors), detected at start
//! and periodically afterwards, so the operator uses a CRD installed after it started.
//!
//! [`Capabilities`] is plain data the pure modules decide with, and [`Discovery`] turns discovery's
//! answers into it (pure). [`detect`] and [`changed`] are the I/O, and they only read (discovery).
//! The controller is restarted by `main` when the answer changes, because its watches are set up
//! per served kind.
//!
//! Only "not found" means "not served". Any other failure (apiserver unreachable, timeout, 5xx) is
//! no answer: flipping "Argo Rollouts installed" to "not installed" on a transient error would turn
//! canary stages into plain Deployments running the unanalysed image.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::Client;
use tracing::{info, warn};

/// Cluster features detected at start and whenever CRDs change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// argoproj.io Rollouts and AnalysisTemplates are served.
    pub rollouts: bool,
    /// monitoring.coreos.com ServiceMonitors are served.
    pub service_monitors: bool,
}

/// How often discovery is repeated.
pub const POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Pause between two start-up discovery rounds that did not answer for every group.
const START_RETRY: Duration = Duration::from_secs(5);

const ROLLOUTS: (&str, &[&str]) = ("argoproj.io/v1alpha1", &["Rollout", "AnalysisTemplate"]);
const SERVICE_MONITORS: (&str, &[&str]) = ("monitoring.coreos.com/v1", &["ServiceMonitor"]);

/// One round of discovery: per group whether its kinds are served, `None` where the lookup failed
/// for another reason than "not found".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    pub rollouts: Option<bool>,
    pub service_monitors: Option<bool>,
}

impl Discovery {
    /// The capabilities, when every group answered.
    pub fn answered(self) -> Option<Capabilities> {
        Some(Capabilities {
            rollouts: self.rollouts?,
            service_monitors: self.service_monitors?,
        })
    }

    /// The answers, and where a lookup failed what was `last` known.
    pub fn or_last(self, last: Capabilities) -> Capabilities {
        Capabilities {
            rollouts: self.rollouts.unwrap_or(last.rollouts),
            service_monitors: self.service_monitors.unwrap_or(last.service_monitors),
        }
    }
}

/// Whether one group's lookup says all `kinds` are served: yes or no when the apiserver answered
/// (a 404 is a "no": the group is not installed), `None` when it did not.
pub fn served(lookup: &Result<APIResourceList, kube::Error>, kinds: &[&str]) -> Option<bool> {
    match lookup {
        Ok(list) => Some(
            kinds
                .iter()
                .all(|kind| list.resources.iter().any(|r| r.kind == *kind)),
        ),
        Err(kube::Error::Api(status)) if status.is_not_found() => Some(false),
        Err(_) => None,
    }
}

/// Asks the apiserver once which optional kinds it serves.
async fn discover(client: &Client) -> Discovery {
    let ask = |(group_version, kinds): (&'static str, &'static [&'static str])| async move {
        let lookup = client.list_api_group_resources(group_version).await;
        let answer = served(&lookup, kinds);
        if let (None, Err(error)) = (answer, &lookup) {
            warn!(%error, group_version, "discovery did not answer; the last known answer stands (at start: waiting)");
        }
        answer
    };
    Discovery {
        rollouts: ask(ROLLOUTS).await,
        service_monitors: ask(SERVICE_MONITORS).await,
    }
}

/// The served kinds, asked until the apiserver answers for every group: with nothing known yet,
/// a guess could switch workloads, so the controller (and readiness) waits instead.
pub async fn detect(client: &Client) -> Capabilities {
    loop {
        if let Some(capabilities) = discover(client).await.answered() {
            return capabilities;
        }
        tokio::time::sleep(START_RETRY).await;
    }
}

/// Resolves when the served kinds differ from `current`; a group discovery cannot answer for
/// keeps its `current` value.
pub async fn changed(client: Client, current: Capabilities) {
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = discover(&client).await.or_last(current);
        if now != current {
            info!(before = ?current, after = ?now, "cluster capabilities changed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;
    use kube::core::Status;

    use super::*;

    fn serving(kinds: &[&str]) -> Result<APIResourceList, kube::Error> {
        Ok(APIResourceList {
            group_version: "argoproj.io/v1alpha1".into(),
            resources: kinds
                .iter()
                .map(|kind| APIResource {
                    kind: (*kind).into(),
                    ..APIResource::default()
                })
                .collect(),
        })
    }

    fn failing(code: u16, reason: &str) -> Result<APIResourceList, kube::Error> {
        Err(kube::Error::Api(Box::new(
            Status::failure("discovery", reason).with_code(code),
        )))
    }

    #[test]
    fn only_not_found_means_not_served() {
        let kinds = ROLLOUTS.1;
        assert_eq!(served(&serving(kinds), kinds), Some(true));
        assert_eq!(served(&serving(&["Rollout"]), kinds), Some(false));
        assert_eq!(served(&failing(404, "NotFound"), kinds), Some(false));
        assert_eq!(served(&failing(503, "ServiceUnavailable"), kinds), None);
        assert_eq!(served(&failing(500, "InternalError"), kinds), None);
        assert_eq!(served(&failing(403, "Forbidden"), kinds), None);
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_known_answer() {
        let installed = Capabilities {
            rollouts: true,
            service_monitors: true,
        };
        let failed = Discovery {
            rollouts: None,
            service_monitors: Some(false),
        };
        assert_eq!(
            failed.or_last(installed),
            Capabilities {
                rollouts: true,
                service_monitors: false,
            }
        );
        let uninstalled = Discovery {
            rollouts: Some(false),
            service_monitors: Some(true),
        };
        assert_eq!(
            uninstalled.or_last(installed),
            Capabilities {
                rollouts: false,
                service_monitors: true,
            }
        );
    }

    #[test]
    fn start_up_waits_for_an_answer_from_every_group() {
        let partial = Discovery {
            rollouts: Some(true),
            service_monitors: None,
        };
        assert_eq!(partial.answered(), None);
        let full = Discovery {
            service_monitors: Some(false),
            ..partial
        };
        assert_eq!(
            full.answered(),
            Some(Capabilities {
                rollouts: true,
                service_monitors: false,
            })
        );
    }
}
