//! Child planning: from the desired children and the live ones in the watch cache, the writes one
//! reconcile makes: applies of what differs, replica seeds of autoscaled Rollouts, and deletes of
//! owned objects that left the spec.
//!
//! Pure: no client, no async; the writer executes the plan. A no-op reconcile must write nothing,
//! so every child carries a hash of what the operator last applied: when the live object still has
//! that hash and every desired field still has its desired value, the apply is skipped. Removing a
//! field changes the hash (so it is applied); an out-of-band edit of a field we own breaks the
//! subset check (so it is restored).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::children::{Child, ChildKind};
use crate::events::Change;
use crate::model::{ValidatedPipeline, ValidatedStage};
use crate::status;

/// Annotation holding the hash of the object the operator last applied.
pub const DESIRED_HASH_ANNOTATION: &str = "orderpipe.dev/desired-hash";

/// Adds the desired-hash annotation to a child's object. The hash covers the object without the
/// annotation itself.
fn with_desired_hash(mut child: Child) -> Child {
    let hash = desired_hash(&child.object);
    if let Some(metadata) = child
        .object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
    {
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(map) = annotations.as_object_mut() {
            map.insert(DESIRED_HASH_ANNOTATION.into(), Value::String(hash));
        }
    }
    child
}

fn desired_hash(object: &Value) -> String {
    // serde_json's Map is ordered (BTreeMap without preserve_order), so the encoding is canonical.
    let digest = Sha256::digest(object.to_string().as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Whether `desired` (already carrying its hash) must be applied over `live`.
pub fn needs_apply(desired: &Value, live: Option<&Value>) -> bool {
    let Some(live) = live else { return true };
    let hash = |v: &Value| {
        v.pointer("/metadata/annotations")
            .and_then(|a| a.get(DESIRED_HASH_ANNOTATION))
            .cloned()
    };
    hash(desired) != hash(live) || !is_subset(desired, live)
}

/// True when every field of `desired` is present in `live` with the same value (lists element by
/// element); `live` may have more (defaults, other managers' fields, status).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|lv| is_subset(v, lv))),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(a, b)| is_subset(a, b))
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        _ => desired == live,
    }
}

/// Fields the API server never changes on an existing object, by kind, as JSON pointers. A desired
/// value that differs from a live one can only be had by deleting the object and creating it anew.
const IMMUTABLE_FIELDS: &[(ChildKind, &str)] = &[
    // A stage's Service became headless; those made by an older operator have a virtual IP.
    (ChildKind::Service, "/spec/clusterIP"),
];

/// Whether applying `desired` over `live` would change a field the API server rejects changes of.
pub fn must_replace(kind: ChildKind, desired: &Value, live: &Value) -> bool {
    IMMUTABLE_FIELDS
        .iter()
        .filter(|(immutable_in, _)| *immutable_in == kind)
        .any(
            |(_, pointer)| match (desired.pointer(pointer), live.pointer(pointer)) {
                (Some(wanted), Some(has)) => wanted != has,
                _ => false,
            },
        )
}

/// The seed to apply when an autoscaled Rollout has no replica count yet: `Some(patch)` or `None`.
/// The writer applies it under
/// [`REPLICA_SEED_MANAGER`](crate::children::REPLICA_SEED_MANAGER), whose documentation says why.
pub fn replica_seed(child: &Child, live: Option<&Value>, min_replicas: i32) -> Option<Value> {
    let autoscaled = child.object.pointer("/spec/replicas").is_none();
    let missing = live.is_none_or(|l| l.pointer("/spec/replicas").is_none());
    (child.kind == ChildKind::Rollout && autoscaled && missing).then(|| {
        serde_json::json!({
            "apiVersion": child.object.get("apiVersion"),
            "kind": child.object.get("kind"),
            "metadata": { "name": child.name },
            "spec": { "replicas": min_replicas },
        })
    })
}

/// Identity of a child within one pipeline.
pub type ChildKey = (ChildKind, String);

/// Owned objects to delete: observed children that are not desired. A workload being replaced by
/// the other workload kind (Deployment <-> Rollout) is kept until its replacement is ready, so the
/// stage never stops consuming during the switch.
pub fn orphans(
    desired: &[Child],
    observed: &BTreeMap<ChildKey, Value>,
    replacement_ready: impl Fn(&str) -> bool,
) -> Vec<ChildKey> {
    let wanted: BTreeSet<ChildKey> = desired.iter().map(|c| (c.kind, c.name.clone())).collect();
    observed
        .keys()
        .filter(|key| !wanted.contains(*key))
        .filter(|(kind, name)| {
            let replaced_by = match kind {
                ChildKind::Deployment => Some(ChildKind::Rollout),
                ChildKind::Rollout => Some(ChildKind::Deployment),
                _ => None,
            };
            match replaced_by {
                Some(other) if wanted.contains(&(other, name.clone())) => replacement_ready(name),
                _ => true,
            }
        })
        .cloned()
        .collect()
}

/// One write to a child object, in the order the writer makes them.
#[derive(Clone, Debug, PartialEq)]
pub enum ChildWrite {
    /// Server-side apply of the whole object; `created`: nothing of that kind and name was live.
    Apply { child: Child, created: bool },
    /// The first `spec.replicas` of an autoscaled Rollout (see [`replica_seed`]).
    SeedReplicas {
        kind: ChildKind,
        name: String,
        seed: Value,
    },
    /// An owned object no longer desired.
    Delete { kind: ChildKind, name: String },
}

impl ChildWrite {
    pub fn kind(&self) -> ChildKind {
        match self {
            Self::Apply { child, .. } => child.kind,
            Self::SeedReplicas { kind, .. } | Self::Delete { kind, .. } => *kind,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Apply { child, .. } => &child.name,
            Self::SeedReplicas { name, .. } | Self::Delete { name, .. } => name,
        }
    }

    /// The Event to publish once the write is done. A replica seed only makes the Rollout readable
    /// by its autoscaler: nothing a user asked for changed.
    pub fn change(&self) -> Option<Change> {
        let (reason, verb) = match self {
            Self::Apply { created: true, .. } => ("ChildCreated", "Created"),
            Self::Apply { created: false, .. } => ("ChildUpdated", "Updated"),
            Self::SeedReplicas { .. } => return None,
            Self::Delete { .. } => ("ChildDeleted", "Deleted"),
        };
        Some(Change {
            reason,
            note: format!("{verb} {} {}", self.kind(), self.name()),
        })
    }
}

/// Plans one reconcile of a pipeline's children: for each desired child in order, its apply when
/// the live object differs (after deleting the live one when it differs in an immutable field) and
/// then its replica seed (after the apply, so a seed never creates a Rollout on its own), then the
/// deletes of the orphans.
pub fn plan(
    desired: Vec<Child>,
    observed: &BTreeMap<ChildKey, Value>,
    pipeline: &ValidatedPipeline,
) -> Vec<ChildWrite> {
    let desired: Vec<Child> = desired.into_iter().map(with_desired_hash).collect();
    let mut writes = Vec::new();
    for child in &desired {
        let live = observed.get(&(child.kind, child.name.clone()));
        if needs_apply(&child.object, live) {
            let replaced = live.is_some_and(|live| must_replace(child.kind, &child.object, live));
            if replaced {
                writes.push(ChildWrite::Delete {
                    kind: child.kind,
                    name: child.name.clone(),
                });
            }
            writes.push(ChildWrite::Apply {
                child: child.clone(),
                created: live.is_none() || replaced,
            });
        }
        let min_replicas = pipeline
            .stages
            .iter()
            .find(|stage| stage.workload_name == child.name)
            .and_then(|stage| stage.scaling.autoscaler_min());
        if let Some(seed) = min_replicas.and_then(|min| replica_seed(child, live, min)) {
            writes.push(ChildWrite::SeedReplicas {
                kind: child.kind,
                name: child.name.clone(),
                seed,
            });
        }
    }
    let replacement_ready = |workload_name: &str| {
        pipeline.stages.iter().any(|stage| {
            stage.workload_name == workload_name
                && live_workload(stage, observed).is_some_and(status::workload_is_ready)
        })
    };
    let orphans = orphans(&desired, observed, replacement_ready);
    writes.extend(
        orphans
            .into_iter()
            .map(|(kind, name)| ChildWrite::Delete { kind, name }),
    );
    writes
}

/// The live workload (Deployment or Rollout, as the stage runs now) of each stage, by stage name.
pub fn live_workloads(
    pipeline: &ValidatedPipeline,
    observed: &BTreeMap<ChildKey, Value>,
) -> BTreeMap<String, Value> {
    live_by_stage(pipeline, observed, |stage| ChildKind::from(stage.workload))
}

/// The live HorizontalPodAutoscaler of each stage that has one, by stage name.
pub fn live_autoscalers(
    pipeline: &ValidatedPipeline,
    observed: &BTreeMap<ChildKey, Value>,
) -> BTreeMap<String, Value> {
    live_by_stage(pipeline, observed, |_| ChildKind::HorizontalPodAutoscaler)
}

/// The intake gateway's live Deployment, when the pipeline declares a gateway.
pub fn live_intake_workload(
    pipeline: &ValidatedPipeline,
    observed: &BTreeMap<ChildKey, Value>,
) -> Option<Value> {
    let intake = pipeline.intake.as_ref()?;
    observed
        .get(&(ChildKind::Deployment, intake.workload_name.clone()))
        .cloned()
}

fn live_by_stage(
    pipeline: &ValidatedPipeline,
    observed: &BTreeMap<ChildKey, Value>,
    kind: impl Fn(&ValidatedStage) -> ChildKind,
) -> BTreeMap<String, Value> {
    pipeline
        .stages
        .iter()
        .filter_map(|stage| {
            let live = observed.get(&(kind(stage), stage.workload_name.clone()))?;
            Some((stage.spec.name.clone(), live.clone()))
        })
        .collect()
}

fn live_workload<'a>(
    stage: &ValidatedStage,
    observed: &'a BTreeMap<ChildKey, Value>,
) -> Option<&'a Value> {
    observed.get(&(ChildKind::from(stage.workload), stage.workload_name.clone()))
}

#[cfg(test)]
mod tests;
