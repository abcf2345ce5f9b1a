//! The `OrderPipeline` resource itself: the `kube` CustomResource declaration (group, version,
//! printer columns, the name rules on `metadata`) and the top-level spec with the rules that tie
//! stages to declared topics.
//!
//! Must not hold the shapes of topics, stages or status: those live in their own modules.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{IntakeSpec, KafkaSpec, OrderPipelineStatus, StageSpec, TopicSpec};

/// An order pipeline: Kafka topics plus the stages that consume and produce them.
///
/// The operator creates the declared topics, runs one worker workload per stage (a Deployment, or an
/// Argo Rollout for canary releases), autoscales it, monitors it, and reports the state in `status`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orderpipe.dev",
    version = "v1alpha1",
    kind = "OrderPipeline",
    namespaced,
    status = "OrderPipelineStatus",
    shortname = "op",
    category = "orderpipe",
    derive = "PartialEq",
    doc = "OrderPipeline declares Kafka topics and the order-processing stages that run on them.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every topic and stage is ready"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the pipeline is (not) ready"
    ),
    printcolumn(
        name = "Stages",
        type_ = "string",
        json_path = ".status.stagesReady",
        description = "Ready stages / declared stages"
    ),
    printcolumn(
        name = "Topics",
        type_ = "string",
        json_path = ".status.topicsReady",
        description = "Ready topics / declared topics"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "string",
        json_path = ".status.replicasReady",
        priority = 1,
        description = "Ready replicas / desired replicas, over all stages"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.totalLag",
        priority = 1,
        description = "Records the stages are behind on their inputs, summed"
    ),
    printcolumn(
        name = "Intake",
        type_ = "string",
        json_path = ".status.intake.replicasReady",
        priority = 1,
        description = "Ready intake gateway replicas / desired, when spec.intake is set"
    ),
    printcolumn(
        name = "Growth",
        type_ = "string",
        json_path = ".status.growth[?(@.phase!=\"Completed\")].summary",
        priority = 1,
        description = "Partition growths in progress, e.g. orders 3->6 Draining 2/3"
    ),
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        json_path = ".spec.paused",
        priority = 1,
        description = "Consumption stopped by the user"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 52")
        .message("metadata.name must be a DNS-1035 label of at most 52 characters: child objects are named <pipeline>-<stage>")
        .reason(Reason::FieldValueInvalid),
    validation = Rule::new("self.spec.stages.all(s, size(self.metadata.name) + size(s.name) <= 62)")
        .message("spec.stages[].name: the pipeline name, a dash and the stage name must fit in 63 characters (child objects are named <pipeline>-<stage>)")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.stages.all(s, self.topics.exists(t, t.name == s.input))")
        .message("spec.stages[].input must name a topic declared in spec.topics")
        .field_path(".stages")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("self.stages.all(s, self.topics.exists(t, t.name == s.deadLetter))")
        .message("spec.stages[].deadLetter must name a topic declared in spec.topics")
        .field_path(".stages")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("self.stages.all(s, !has(s.outputs) || s.outputs.all(o, self.topics.exists(t, t.name == s.outputs[o])))")
        .message("spec.stages[].outputs must name topics declared in spec.topics")
        .field_path(".stages")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("!has(self.intake) || self.stages.exists(s, s.processor == 'validate' && s.input == self.intake.ordersTopic)")
        .message("spec.intake.ordersTopic must be the input topic of a validate stage: the gateway's orders are validated and de-duplicated there")
        .field_path(".intake.ordersTopic")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("!has(self.intake) || self.stages.exists(s, s.processor == 'status' && has(s.outputs) && 'changes' in s.outputs && s.outputs['changes'] == self.intake.statusTopic)")
        .message("spec.intake.statusTopic must be the 'changes' output of a status stage: GET answers from the status changes")
        .field_path(".intake.statusTopic")
        .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("!has(self.intake) || !self.stages.exists(s, s.name == 'intake')")
        .message("spec.stages[].name must not be 'intake' while spec.intake is set: the gateway's objects are named <pipeline>-intake")
        .field_path(".stages")
        // Not FieldValueDuplicate: the apiserver renders that reason as "Duplicate value" alone,
        // dropping the message.
        .reason(Reason::FieldValueInvalid),
)]
pub struct OrderPipelineSpec {
    /// How workers and the operator reach Kafka.
    pub kafka: KafkaSpec,

    /// Kafka topics this pipeline owns. Names are unique (the list is keyed by `name`). Partitions may
    /// only grow. A topic that already exists in Kafka and that this pipeline did not create is left
    /// alone unless it opts in with `adopt: true`.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub topics: Vec<TopicSpec>,

    /// Consumer stages. Names are unique (the list is keyed by `name`); each stage reads one declared
    /// topic and writes to declared topics.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<StageSpec>,

    /// Stop consuming without deleting anything: every stage is scaled to zero, committed offsets and
    /// topics are kept, and consumption resumes where it stopped when `paused` is cleared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// An HTTP gateway for the pipeline: shops POST orders to it instead of running a Kafka
    /// producer, and read each order's status back. It keeps serving while the pipeline is paused
    /// (orders wait in Kafka).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intake: Option<IntakeSpec>,
}
