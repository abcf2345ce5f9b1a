//! The kit the canary tests and the demo read Argo Rollouts' objects with (`argoproj.io/v1alpha1`,
//! whose CRDs the stack installs and whose controller `--argo-rollouts` runs): the APIs, and what a
//! canary release is doing, parsed from a Rollout's and an AnalysisRun's status into plain structs
//! (pure, so callers can decide on them without an apiserver). Reads only; knows nothing about
//! orderpipe.

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

/// The label Argo Rollouts puts on every pod, ReplicaSet and AnalysisRun of one version.
pub const POD_TEMPLATE_HASH: &str = "rollouts-pod-template-hash";

/// Rollouts in `namespace`.
pub fn rollouts(client: Client, namespace: &str) -> Api<DynamicObject> {
    argo(client, namespace, "Rollout", "rollouts")
}

/// AnalysisRuns in `namespace`.
pub fn analysis_runs(client: Client, namespace: &str) -> Api<DynamicObject> {
    argo(client, namespace, "AnalysisRun", "analysisruns")
}

fn argo(client: Client, namespace: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client,
        namespace,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", kind),
            plural,
        ),
    )
}

/// A replica count of a Rollout's status; Argo omits the ones that are 0.
pub fn replica_count(status: &Value, field: &str) -> i32 {
    status[field]
        .as_i64()
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(0)
}

/// What a Rollout reports about its versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutState {
    /// `spec.replicas`.
    pub desired: i32,
    /// Pod template hash of the stable version (`status.stableRS`).
    pub stable: Option<String>,
    /// Pod template hash of the newest version (`status.currentPodHash`): the canary while it
    /// differs from `stable`.
    pub current: Option<String>,
    /// `Progressing`, `Paused`, `Healthy` or `Degraded`.
    pub phase: Option<String>,
    /// Why it is in that phase (Argo's words), e.g. the analysis that aborted it.
    pub message: Option<String>,
    /// The release was aborted (`status.abort`): back to the stable version.
    pub aborted: bool,
    /// Index of the canary step it is at (`status.currentStepIndex`), of `steps`.
    pub step: Option<i64>,
    pub steps: usize,
    pub ready: i32,
    pub available: i32,
    /// Pods of the newest version.
    pub updated: i32,
    /// The AnalysisRun judging the newest version in the background, once started.
    pub analysis_run: Option<String>,
}

impl RolloutState {
    pub fn of(rollout: &DynamicObject) -> RolloutState {
        let status = &rollout.data["status"];
        let text = |value: &Value| value.as_str().map(str::to_owned);
        RolloutState {
            desired: replica_count(&rollout.data["spec"], "replicas"),
            stable: text(&status["stableRS"]),
            current: text(&status["currentPodHash"]),
            phase: text(&status["phase"]),
            message: text(&status["message"]).filter(|m| !m.is_empty()),
            aborted: status["abort"] == true,
            step: status["currentStepIndex"].as_i64(),
            steps: rollout
                .data
                .pointer("/spec/strategy/canary/steps")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            ready: replica_count(status, "readyReplicas"),
            available: replica_count(status, "availableReplicas"),
            updated: replica_count(status, "updatedReplicas"),
            analysis_run: status
                .pointer("/canary/currentBackgroundAnalysisRunStatus/name")
                .and_then(text),
        }
    }

    /// The canary's pod template hash while a new version runs next to the stable one.
    pub fn canary(&self) -> Option<&str> {
        match (&self.stable, &self.current) {
            (Some(stable), Some(current)) if stable != current => Some(current),
            _ => None,
        }
    }

    /// `hash` is the stable version and every pod runs it, ready.
    pub fn fully_on(&self, hash: &str) -> bool {
        self.stable.as_deref() == Some(hash)
            && self.phase.as_deref() == Some("Healthy")
            && self.updated == self.desired
            && self.available == self.desired
    }

    /// Aborted, and every pod is the stable version again: no pod of the aborted one is left.
    pub fn rolled_back(&self) -> bool {
        self.aborted && self.updated == 0 && self.available == self.desired
    }
}

/// What an AnalysisRun reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalysisState {
    pub name: String,
    /// `Pending`, `Running`, `Successful`, `Failed`, `Error` or `Inconclusive`.
    pub phase: Option<String>,
    pub message: Option<String>,
    /// The version it judges (its `rollouts-pod-template-hash` label).
    pub judges: Option<String>,
    pub metrics: Vec<MetricState>,
}

/// One metric of an AnalysisRun.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricState {
    pub name: String,
    pub phase: Option<String>,
    /// Measurements taken, and how many of them failed.
    pub count: i32,
    pub failed: i32,
    /// The last measurement's value as Argo records it (e.g. `[0.97]`).
    pub last_value: Option<String>,
}

impl AnalysisState {
    pub fn of(run: &DynamicObject) -> AnalysisState {
        let status = &run.data["status"];
        let text = |value: &Value| value.as_str().map(str::to_owned);
        let metrics = status["metricResults"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|metric| MetricState {
                name: text(&metric["name"]).unwrap_or_default(),
                phase: text(&metric["phase"]),
                count: replica_count(metric, "count"),
                failed: replica_count(metric, "failed"),
                last_value: metric["measurements"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| text(&m["value"])),
            })
            .collect();
        AnalysisState {
            name: run.metadata.name.clone().unwrap_or_default(),
            phase: text(&status["phase"]),
            message: text(&status["message"]).filter(|m| !m.is_empty()),
            judges: run
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(POD_TEMPLATE_HASH))
                .cloned(),
            metrics,
        }
    }

    /// The run has its verdict: it measures no more.
    pub fn ended(&self) -> bool {
        matches!(
            self.phase.as_deref(),
            Some("Successful" | "Failed" | "Error" | "Inconclusive")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).expect("a valid object")
    }

    #[test]
    fn a_rollout_at_its_canary_step_names_the_canary_and_its_analysis() {
        let rollout = object(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": { "name": "checkout-validate" },
            "spec": { "replicas": 2, "strategy": { "canary": { "steps": [
                { "setWeight": 50 }, { "pause": { "duration": "40s" } }
            ] } } },
            "status": {
                "stableRS": "aaa", "currentPodHash": "bbb", "phase": "Paused",
                "currentStepIndex": 1, "readyReplicas": 2, "availableReplicas": 2,
                "updatedReplicas": 1,
                "canary": { "currentBackgroundAnalysisRunStatus": { "name": "run-1" } }
            }
        }));
        let state = RolloutState::of(&rollout);
        assert_eq!(state.canary(), Some("bbb"));
        assert_eq!((state.step, state.steps, state.desired), (Some(1), 2, 2));
        assert_eq!(state.analysis_run.as_deref(), Some("run-1"));
        assert!(!state.fully_on("bbb") && !state.rolled_back());
    }

    #[test]
    fn an_aborted_rollout_is_rolled_back_once_no_canary_pod_is_left() {
        let mut state = RolloutState {
            desired: 2,
            stable: Some("aaa".into()),
            current: Some("bbb".into()),
            aborted: true,
            available: 2,
            updated: 1,
            ..RolloutState::default()
        };
        assert!(!state.rolled_back());
        state.updated = 0;
        assert!(state.rolled_back());
    }

    #[test]
    fn an_analysis_run_reports_its_verdict_and_last_measurements() {
        let run = object(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
            "metadata": { "name": "run-1", "labels": { "rollouts-pod-template-hash": "bbb" } },
            "status": { "phase": "Failed", "message": "Metric \"dead-letter-share\" assessed Failed",
                "metricResults": [{ "name": "dead-letter-share", "phase": "Failed", "count": 1,
                    "failed": 1, "measurements": [{ "phase": "Failed", "value": "[0.99]" }] }] }
        }));
        let state = AnalysisState::of(&run);
        assert!(state.ended());
        assert_eq!(state.judges.as_deref(), Some("bbb"));
        assert_eq!(
            state.metrics,
            vec![MetricState {
                name: "dead-letter-share".into(),
                phase: Some("Failed".into()),
                count: 1,
                failed: 1,
                last_value: Some("[0.99]".into()),
            }]
        );
    }
}
