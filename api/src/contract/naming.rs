//! Names of the objects derived from a pipeline, shared by the operator and the worker so both sides
//! agree. Pure string functions: nothing here looks anything up.

/// Deployment, Rollout, Service, HPA and PDB name of a stage.
pub fn workload(pipeline: &str, stage: &str) -> String {
    format!("{pipeline}-{stage}")
}

/// Consumer group of a stage; namespaced so two pipelines never share a group by accident.
pub fn consumer_group(namespace: &str, pipeline: &str, stage: &str) -> String {
    format!("orderpipe.{namespace}.{pipeline}.{stage}")
}

/// The compacted changelog topic holding a stateful stage's per-key state (operator-managed,
/// co-partitioned with the stage's input topic).
pub fn state_topic(namespace: &str, pipeline: &str, stage: &str) -> String {
    format!("orderpipe.{namespace}.{pipeline}.{stage}.state")
}

/// The pipeline's compacted, one-partition control topic: the operator publishes each stage's
/// phase of a partition growth there (key: the stage), workers read it (`orderpipe_growth::wire`).
pub fn control_topic(namespace: &str, pipeline: &str) -> String {
    format!("orderpipe.{namespace}.{pipeline}.control")
}

/// Transactional id of one worker: stable across restarts of the same pod, so a restarted
/// process fences its previous incarnation.
pub fn transactional_id(consumer_group: &str, pod_name: &str) -> String {
    format!("{consumer_group}.{pod_name}")
}
