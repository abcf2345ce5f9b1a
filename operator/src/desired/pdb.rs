//! The PodDisruptionBudget (policy/v1) of a stage or of the intake gateway.
//!
//! Pure. Owns the PodDisruptionBudget kind.
//!
//! Every stage gets one, whatever its replica count: `maxUnavailable: 1` never blocks a node drain
//! (with one replica, that one may go), so it is harmless at 0 or 1 replicas, and it spares the
//! create/delete churn of a PDB that comes and goes as the autoscaler crosses 1. What it does at
//! larger counts is evict one worker at a time, so a drain costs one rebalance per pod instead of
//! taking several consumers away at once. For the gateway (at least its minimum of replicas, 2 by
//! default) it keeps all but one replica answering during a drain.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ComponentMeta;

pub(super) fn desired_pdb(meta: &ComponentMeta<'_>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta.metadata(),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(meta.selector()),
            // A crash-looping worker consumes nothing; protecting it would only block drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}
