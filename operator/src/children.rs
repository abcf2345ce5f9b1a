//! The kinds of child objects the operator owns, and the one place that lists them.
//!
//! Builders produce `Child` values (a kind, a name, and the full object as JSON); the apply layer
//! server-side-applies them and deletes owned objects of the same kinds that are no longer desired.
//! Every child carries the same labels so the operator can find what it owns. Pure: no client.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::{ApiResource, GroupVersionKind};

use crate::capabilities::Capabilities;
use crate::model::WorkloadKind;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "orderpipe-operator";
/// Field manager that seeds `spec.replicas` of an autoscaled Rollout. The main field manager never
/// sets replicas on an autoscaled workload (the HPA owns the count), but an HPA cannot read the scale
/// of a Rollout that has no `spec.replicas` at all (Deployments get it defaulted by the apiserver).
/// A separate manager sets it once; the HPA's first scale update takes the field over.
pub const REPLICA_SEED_MANAGER: &str = "orderpipe-operator-replica-seed";
/// Label marking objects the operator manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "orderpipe-operator";
/// Label naming the owning pipeline.
pub const PIPELINE_LABEL: &str = "orderpipe.dev/pipeline";
/// Label naming the stage.
pub const STAGE_LABEL: &str = "orderpipe.dev/stage";

/// Every kind of object the operator creates per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChildKind {
    Deployment,
    Rollout,
    AnalysisTemplate,
    HorizontalPodAutoscaler,
    Service,
    ServiceMonitor,
    PodDisruptionBudget,
}

impl ChildKind {
    pub const ALL: [ChildKind; 7] = [
        Self::Deployment,
        Self::Rollout,
        Self::AnalysisTemplate,
        Self::HorizontalPodAutoscaler,
        Self::Service,
        Self::ServiceMonitor,
        Self::PodDisruptionBudget,
    ];

    /// The Kubernetes kind: the `kind` metric label of writes, and how Events and errors name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::Rollout => "Rollout",
            Self::AnalysisTemplate => "AnalysisTemplate",
            Self::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            Self::Service => "Service",
            Self::ServiceMonitor => "ServiceMonitor",
            Self::PodDisruptionBudget => "PodDisruptionBudget",
        }
    }

    /// Group, version, kind and plural for dynamic API access.
    pub fn api_resource(self) -> ApiResource {
        match self {
            Self::Deployment => ApiResource::erase::<Deployment>(&()),
            Self::HorizontalPodAutoscaler => ApiResource::erase::<HorizontalPodAutoscaler>(&()),
            Self::Service => ApiResource::erase::<Service>(&()),
            Self::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
            Self::Rollout => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
                "rollouts",
            ),
            Self::AnalysisTemplate => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "AnalysisTemplate"),
                "analysistemplates",
            ),
            Self::ServiceMonitor => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
                "servicemonitors",
            ),
        }
    }

    /// Whether the cluster serves this kind.
    pub fn is_served(self, capabilities: Capabilities) -> bool {
        match self {
            Self::Rollout | Self::AnalysisTemplate => capabilities.rollouts,
            Self::ServiceMonitor => capabilities.service_monitors,
            Self::Deployment
            | Self::HorizontalPodAutoscaler
            | Self::Service
            | Self::PodDisruptionBudget => true,
        }
    }
}

impl From<WorkloadKind> for ChildKind {
    fn from(workload: WorkloadKind) -> Self {
        match workload {
            WorkloadKind::Deployment => Self::Deployment,
            WorkloadKind::Rollout => Self::Rollout,
        }
    }
}

impl std::fmt::Display for ChildKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One desired child object.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub kind: ChildKind,
    pub name: String,
    /// The complete object to apply, including apiVersion, kind, metadata (labels, owner reference).
    pub object: serde_json::Value,
}

/// Labels on every child of a stage; the first two also select the stage's pods.
pub fn stage_labels(pipeline: &str, stage: &str, processor: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (PIPELINE_LABEL.into(), pipeline.into()),
        (STAGE_LABEL.into(), stage.into()),
        ("app.kubernetes.io/name".into(), "orderpipe-worker".into()),
        (
            "app.kubernetes.io/instance".into(),
            orderpipe_api::contract::naming::workload(pipeline, stage),
        ),
        ("app.kubernetes.io/component".into(), processor.into()),
        ("app.kubernetes.io/part-of".into(), "orderpipe".into()),
        (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
    ])
}

/// The immutable pod selector of a stage's workload.
pub fn selector_labels(pipeline: &str, stage: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (PIPELINE_LABEL.into(), pipeline.into()),
        (STAGE_LABEL.into(), stage.into()),
    ])
}

/// Label selector finding every child of a pipeline.
pub fn owned_by_pipeline_selector(pipeline: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{PIPELINE_LABEL}={pipeline}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_named_by_its_kubernetes_kind() {
        for kind in ChildKind::ALL {
            assert_eq!(kind.as_str(), kind.api_resource().kind);
            // Metric labels and Events carried the variant name before; dashboards and alerts match
            // on those values.
            assert_eq!(kind.as_str(), format!("{kind:?}"));
        }
    }
}
