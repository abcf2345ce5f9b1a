//! The `OrderPipeline` custom resource, version `v1alpha1` (group `orderpipe.dev`).
//!
//! Owns the wire format users write and the validation the apiserver enforces at admission: OpenAPI
//! bounds (lengths, ranges, patterns), list-map keys for unique names, and CEL rules for everything
//! that spans fields. The `///` docs become the schema descriptions that `kubectl explain` prints.
//! This module must not contain behaviour beyond small accessors: reconciling is the operator's job.
//!
//! Every list and string is bounded so the CEL cost estimate of the cross-field rules stays inside the
//! apiserver's budget; the bounds are in `limits` so the tests and docs can name them. Messages are
//! static or concatenate bounded fields only: the apiserver estimates a `messageExpression` that uses
//! list macros (`filter`, `map`, `join`) or `string(int)` as unbounded and refuses the whole CRD. The
//! apiserver prefixes every message with the field path and, for `FieldValueInvalid`, the value.
//!
//! The types live in one submodule per part of the resource; this module is the API version's
//! public surface and re-exports them, so every type is named `orderpipe_api::v1alpha1::X`.

mod duration;
mod hosts;
mod intake;
mod kafka;
pub mod limits;
mod notify;
mod pipeline;
mod secret;
mod stage;
mod status;
mod topic;
mod workload;

pub use duration::Duration;
pub use intake::IntakeSpec;
pub use kafka::{
    BootstrapServer, KafkaSasl, KafkaSpec, KafkaTls, SaslCredentialsRef, SaslMechanism,
};
pub use notify::{NotifySpec, RetrySpec, WebhookSpec};
pub use pipeline::{OrderPipeline, OrderPipelineSpec};
pub use secret::{SecretKey, SecretKeyRef, SecretName};
pub use stage::{OutputTopic, Processor, StageSpec};
pub use status::{
    CanaryStatus, GrowthPhase, GrowthStatus, IntakeStatus, OrderPipelineStatus, StageStatus,
    TopicStatus,
};
pub use topic::{DeletionPolicy, TopicConfigValue, TopicSpec};
pub use workload::{
    AutoscalingSpec, CanaryAnalysis, CanaryPause, CanarySpec, CanaryStep, RolloutSpec,
    RolloutStrategy, ScalingBehavior, ScalingRules,
};
