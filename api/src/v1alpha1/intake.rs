//! The optional HTTP gateway in front of a pipeline (`spec.intake`): shops POST orders to it and read
//! their status back. The operator runs it as a Deployment with a Service, an autoscaler, a
//! disruption budget and a ServiceMonitor; the gateway itself is `orderpipe-worker intake`
//! (`docs/intake.md`).
//!
//! The rules that tie it to the pipeline's stages (which topic it writes, which it reads) are on the
//! spec, in `pipeline`, because they span fields.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;
use super::stage::IMAGE_REFERENCE_RULE;

/// The intake gateway: `POST /v1/orders` and `GET /v1/orders/{id}` on port 8080 of the Service
/// `<pipeline>-intake`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("spec.intake.minReplicas must not exceed maxReplicas")
        .field_path(".minReplicas")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new(IMAGE_REFERENCE_RULE)
        .message("spec.intake.image must be an image reference: [registry[:port]/]path[:tag][@sha256:digest], lower-case path, e.g. registry.example.com/shop/worker:1.4.2")
        .field_path(".image")
        .reason(Reason::FieldValueInvalid),
)]
pub struct IntakeSpec {
    /// The declared topic POSTed orders are written to: the input of a validate stage, which
    /// checks them again and drops re-submitted ones.
    #[schemars(length(min = 1, max = 249))]
    pub orders_topic: String,

    /// The declared topic GET answers from: the `changes` output of a status stage.
    #[schemars(length(min = 1, max = 249))]
    pub status_topic: String,

    /// The Secret key holding the bearer tokens, one per line, each optionally followed by its
    /// scopes (`orders:write`, `orders:read`; none means both). Only the tokens' SHA-256 digests
    /// stay in the gateway's memory. A changed Secret reaches the gateway with its next rollout
    /// (`kubectl rollout restart deployment/<pipeline>-intake`).
    pub tokens_secret_ref: SecretKeyRef,

    /// Fewest gateway replicas (default 2, so one can be disrupted while the other answers).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,

    /// Most gateway replicas the autoscaler may run (default 4).
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,

    /// Target average CPU utilisation in percent of the requested CPU (default 70).
    #[serde(default = "default_target_cpu_utilization")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,

    /// Container image; defaults to the operator's worker image, which carries the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of the gateway container. The CPU request is what the autoscaler's
    /// utilisation target is a percentage of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_min_replicas() -> i32 {
    2
}

fn default_max_replicas() -> i32 {
    4
}

fn default_target_cpu_utilization() -> i32 {
    70
}
