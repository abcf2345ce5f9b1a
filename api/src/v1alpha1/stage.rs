//! A consumer stage as declared in `spec.stages`: its processor, image, topics and the rules that
//! tie them together.
//!
//! How a stage scales and rolls out lives in `workload`, the notify processor's settings in
//! `notify`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AutoscalingSpec, NotifySpec, RolloutSpec};

/// The grammar of an image reference (distribution/reference): an optional registry host with an
/// optional port, lower-case path components, an optional tag and an optional digest. Checked at
/// admission so a typo fails the apply, not an image pull minutes later.
pub(super) const IMAGE_REFERENCE_RULE: &str = concat!(
    "!has(self.image) || self.image.matches('^",
    r"([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?",
    r"[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*",
    r"(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')",
);

/// One consumer stage: reads the input topic, processes each record, writes outputs exactly once.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.processor != 'custom' || has(self.image)")
        .message("spec.stages[].image is required when processor is custom")
        .field_path(".image")
        .reason(Reason::FieldValueRequired),
)]
#[x_kube(
    validation = Rule::new("self.deadLetter != self.input")
        .message("spec.stages[].deadLetter must not be the stage's input topic: the stage would consume its own dead letters again")
        .field_path(".deadLetter")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("!has(self.outputs) || self.outputs.all(o, self.outputs[o] != self.input && self.outputs[o] != self.deadLetter)")
        .message("spec.stages[].outputs must not name the stage's input topic (the stage would consume its own output) or its deadLetter topic")
        .field_path(".outputs")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new(IMAGE_REFERENCE_RULE)
        .message("spec.stages[].image must be an image reference: [registry[:port]/]path[:tag][@sha256:digest], lower-case path, e.g. registry.example.com/shop/worker:1.4.2")
        .field_path(".image")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))")
        .message("spec.stages[]: set either replicas or autoscaling, not both")
        .field_path(".autoscaling")
        .reason(Reason::FieldValueForbidden),
)]
#[x_kube(
    validation = Rule::new("self.processor != 'notify' || has(self.notify)")
        .message("spec.stages[].notify (webhook settings) is required when processor is notify")
        .field_path(".notify")
        .reason(Reason::FieldValueRequired),
)]
#[x_kube(
    validation = Rule::new("!has(self.notify) || self.processor == 'notify'")
        .message("spec.stages[].notify is only allowed when processor is notify")
        .field_path(".notify")
        .reason(Reason::FieldValueForbidden),
)]
#[x_kube(
    validation = Rule::new("self.processor != 'validate' || (has(self.outputs) && 'validated' in self.outputs && 'rejected' in self.outputs)")
        .message("spec.stages[].outputs must name the 'validated' and 'rejected' topics for processor validate")
        .field_path(".outputs")
        .reason(Reason::FieldValueRequired),
)]
#[x_kube(
    validation = Rule::new("self.processor != 'status' || (has(self.outputs) && 'changes' in self.outputs)")
        .message("spec.stages[].outputs must name the 'changes' topic for processor status")
        .field_path(".outputs")
        .reason(Reason::FieldValueRequired),
)]
#[x_kube(
    validation = Rule::new("self.processor != 'notify' || (has(self.outputs) && 'audit' in self.outputs)")
        .message("spec.stages[].outputs must name the 'audit' topic for processor notify")
        .field_path(".outputs")
        .reason(Reason::FieldValueRequired),
)]
pub struct StageSpec {
    /// Stage name, a DNS-1035 label; the workload is named `<pipeline>-<stage>`.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// What the stage does: a built-in processor or a custom image speaking the worker contract.
    pub processor: Processor,

    /// Container image. Required for `custom`; for built-in processors it overrides the operator's
    /// default worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// The declared topic this stage consumes.
    #[schemars(length(min = 1, max = 249))]
    pub input: String,

    /// Named outputs, each a declared topic. Built-in processors need: validate → `validated`,
    /// `rejected`; status → `changes`; notify → `audit`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8))]
    pub outputs: BTreeMap<String, OutputTopic>,

    /// Declared topic for records that cannot be processed (undecodable bytes, illegal transitions,
    /// exhausted retries). Each carries the original bytes and reason headers.
    #[schemars(length(min = 1, max = 249))]
    pub dead_letter: String,

    /// Fixed number of worker replicas (default 1), capped at the input topic's partitions (a
    /// consumer beyond them would sit idle). Mutually exclusive with `autoscaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// Scale the stage with a HorizontalPodAutoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// How new worker versions roll out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,

    /// Compute resources of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Settings of the notify processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifySpec>,
}

/// A declared topic used as a named output.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct OutputTopic(#[schemars(length(min = 1, max = 249))] pub String);

/// The processor a stage runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Processor {
    /// Schema and business validation of placed orders.
    Validate,
    /// The per-order status state machine.
    Status,
    /// Notification dispatch to a webhook.
    Notify,
    /// A user image implementing the worker contract.
    Custom,
}

impl Processor {
    /// The name used in the spec, labels and the worker contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validate => "validate",
            Self::Status => "status",
            Self::Notify => "notify",
            Self::Custom => "custom",
        }
    }
}
