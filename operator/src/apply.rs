//! Applying children: server-side apply with one field manager, skipping objects that already match,
//! and deleting owned objects that are no longer desired.
//!
//! The decisions are pure (`needs_apply`, `orphans`) and tested without a cluster; `Applier` is the
//! only I/O here. A no-op reconcile must write nothing, so every child carries a hash of what the
//! operator last applied: when the live object still has that hash and every desired field still has
//! its desired value, the apply is skipped. Removing a field changes the hash (so it is applied);
//! an out-of-band edit of a field we own breaks the subset check (so it is restored).

use std::collections::{BTreeMap, BTreeSet};

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::children::{Child, ChildKind, FIELD_MANAGER};

/// Annotation holding the hash of the object the operator last applied.
pub const DESIRED_HASH_ANNOTATION: &str = "orderpipe.dev/desired-hash";

/// Adds the desired-hash annotation to a child's object. The hash covers the object without the
/// annotation itself.
pub fn with_desired_hash(mut child: Child) -> Child {
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

/// Field manager that seeds `spec.replicas` of an autoscaled Rollout. The main field manager never
/// sets replicas on an autoscaled workload (the HPA owns the count), but an HPA cannot read the scale
/// of a Rollout that has no `spec.replicas` at all (Deployments get it defaulted by the apiserver).
/// A separate manager sets it once; the HPA's first scale update takes the field over.
pub const REPLICA_SEED_MANAGER: &str = "orderpipe-operator-replica-seed";

/// The seed to apply when an autoscaled Rollout has no replica count yet: `Some(patch)` or `None`.
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

/// Applies and deletes children in one namespace.
#[derive(Clone)]
pub struct Applier {
    client: Client,
    namespace: String,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Applier {
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
        }
    }

    fn api(&self, kind: ChildKind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &kind.api_resource())
    }

    /// Server-side apply, forcing ownership of the fields we set: the operator is the source of truth
    /// for them, and a conflicting manager (kubectl edit) is exactly the drift we undo.
    pub async fn apply(&self, child: &Child) -> Result<(), kube::Error> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api(child.kind)
            .patch(&child.name, &params, &Patch::Apply(&child.object))
            .await?;
        Ok(())
    }

    /// Applies a replica seed (see [`replica_seed`]) with its own field manager.
    pub async fn seed_replicas(
        &self,
        kind: ChildKind,
        name: &str,
        seed: &Value,
    ) -> Result<(), kube::Error> {
        let params = PatchParams::apply(REPLICA_SEED_MANAGER);
        self.api(kind)
            .patch(name, &params, &Patch::Apply(seed))
            .await?;
        Ok(())
    }

    /// Deletes an owned object; already gone counts as done.
    pub async fn delete(&self, kind: ChildKind, name: &str) -> Result<(), kube::Error> {
        match self
            .api(kind)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn child(kind: ChildKind, name: &str, spec: Value) -> Child {
        with_desired_hash(Child {
            kind,
            name: name.into(),
            object: json!({ "metadata": { "name": name, "labels": { "a": "b" } }, "spec": spec }),
        })
    }

    #[test]
    fn unchanged_live_object_is_not_applied_again() {
        let desired = child(
            ChildKind::Service,
            "s",
            json!({ "ports": [{ "port": 9090 }] }),
        );
        let mut live = desired.object.clone();
        live["spec"]["clusterIP"] = json!("10.0.0.1");
        live["metadata"]["resourceVersion"] = json!("42");
        live["spec"]["ports"][0]["protocol"] = json!("TCP");
        assert!(!needs_apply(&desired.object, Some(&live)));
    }

    #[test]
    fn out_of_band_edit_of_an_owned_field_is_applied_back() {
        let desired = child(
            ChildKind::Deployment,
            "d",
            json!({ "template": { "image": "w:1" } }),
        );
        let mut live = desired.object.clone();
        live["spec"]["template"]["image"] = json!("w:evil");
        assert!(needs_apply(&desired.object, Some(&live)));
    }

    #[test]
    fn removing_a_field_from_the_desired_object_is_applied() {
        let before = child(
            ChildKind::Deployment,
            "d",
            json!({ "replicas": 3, "paused": false }),
        );
        let after = child(ChildKind::Deployment, "d", json!({ "paused": false }));
        // The live object still has replicas (it is a superset of `after`), but the hash differs.
        assert!(needs_apply(&after.object, Some(&before.object)));
    }

    #[test]
    fn missing_live_object_is_applied() {
        let desired = child(ChildKind::Service, "s", json!({}));
        assert!(needs_apply(&desired.object, None));
    }

    #[test]
    fn numbers_compare_by_value_not_representation() {
        assert!(is_subset(&json!({ "n": 1 }), &json!({ "n": 1.0 })));
        assert!(!is_subset(&json!({ "n": 1 }), &json!({ "n": 2 })));
    }

    #[test]
    fn autoscaled_rollout_without_replicas_gets_a_seed_once() {
        let rollout = child(ChildKind::Rollout, "r", json!({ "strategy": {} }));
        let seed = replica_seed(&rollout, None, 2).expect("a new rollout is seeded");
        assert_eq!(seed["spec"]["replicas"], 2);
        let mut live = rollout.object.clone();
        live["spec"]["replicas"] = json!(5);
        assert_eq!(
            replica_seed(&rollout, Some(&live), 2),
            None,
            "the HPA's count is never touched"
        );
        let deployment = child(ChildKind::Deployment, "d", json!({}));
        assert_eq!(
            replica_seed(&deployment, None, 2),
            None,
            "the apiserver defaults Deployments"
        );
        let fixed = child(ChildKind::Rollout, "r", json!({ "replicas": 3 }));
        assert_eq!(
            replica_seed(&fixed, None, 2),
            None,
            "fixed replicas are applied normally"
        );
    }

    #[test]
    fn undesired_children_are_orphans() {
        let desired = vec![child(ChildKind::Deployment, "p-a", json!({}))];
        let observed = BTreeMap::from([
            ((ChildKind::Deployment, "p-a".to_string()), json!({})),
            ((ChildKind::Deployment, "p-gone".to_string()), json!({})),
            (
                (ChildKind::HorizontalPodAutoscaler, "p-a".to_string()),
                json!({}),
            ),
        ]);
        let got = orphans(&desired, &observed, |_| true);
        assert_eq!(
            got,
            vec![
                (ChildKind::Deployment, "p-gone".to_string()),
                (ChildKind::HorizontalPodAutoscaler, "p-a".to_string())
            ]
        );
    }

    #[test]
    fn replaced_workload_is_kept_until_its_replacement_is_ready() {
        let desired = vec![child(ChildKind::Rollout, "p-a", json!({}))];
        let observed = BTreeMap::from([((ChildKind::Deployment, "p-a".to_string()), json!({}))]);
        assert!(orphans(&desired, &observed, |_| false).is_empty());
        assert_eq!(
            orphans(&desired, &observed, |_| true),
            vec![(ChildKind::Deployment, "p-a".to_string())]
        );
    }
}
