//! Bounds on sizes of an `OrderPipeline`, chosen generously for real pipelines and small enough for
//! the CEL cost budget of the cross-field rules.
//!
//! Named here so the tests and docs can cite them; the schema attributes on the types carry the
//! same numbers. Holds constants only.

/// Most topics one pipeline declares.
pub const MAX_TOPICS: usize = 32;
/// Most stages one pipeline declares.
pub const MAX_STAGES: usize = 16;
/// Most named outputs of one stage.
pub const MAX_OUTPUTS: usize = 8;
/// Kafka's own limit on topic names.
pub const MAX_TOPIC_NAME: usize = 249;
/// A stage name is a DNS label; the pipeline and stage names together must fit in one (see the
/// root rule), because child objects are named `<pipeline>-<stage>`.
pub const MAX_STAGE_NAME: usize = 40;
/// Most partitions one topic may declare.
pub const MAX_PARTITIONS: i32 = 10_000;
/// Most replicas a stage may run.
pub const MAX_REPLICAS: i32 = 1_000;
