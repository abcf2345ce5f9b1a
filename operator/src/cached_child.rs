//! What the child watches keep of each owned object: the metadata the watch machinery, the
//! controller's owner mapping and the child index read (name, namespace, labels, owner
//! references, resource version, uid), and the whole object as the JSON text it arrived as. A
//! reconcile parses only its own pipeline's few children back into values; every other cached
//! object stays compact text. Pure: no client.
//!
//! Why not `DynamicObject`: its body is a `serde_json::Value` tree, about 37 KiB of heap for a
//! 4 KiB worker Deployment (k8s-openapi's typed struct: about 19 KiB), and the child caches'
//! trees were the largest share of the operator's heap at 1,000 pipelines (docs/benchmarks.md,
//! issue #17). Kept as text, the same Deployment costs its 4 KiB.

use std::borrow::Cow;

use kube::Resource;
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use kube::core::DynamicResourceScope;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One owned child as the watch caches hold it.
#[derive(Debug, Clone)]
pub struct CachedChild {
    /// The fields read without parsing the body; everything else is only in `json`.
    metadata: ObjectMeta,
    /// The object without its managedFields (which nothing here reads), as JSON.
    json: Box<str>,
}

impl CachedChild {
    /// The whole object (without managedFields) as a value, for planning against it.
    pub fn to_value(&self) -> Value {
        // The text was written by serde_json from a value: it parses back.
        serde_json::from_str(&self.json).unwrap_or_default()
    }
}

impl From<DynamicObject> for CachedChild {
    fn from(mut object: DynamicObject) -> Self {
        object.metadata.managed_fields = None;
        // A DynamicObject always serialises (string keys, finite numbers from JSON).
        let json = serde_json::to_string(&object).unwrap_or_default();
        let kept = object.metadata;
        Self {
            metadata: ObjectMeta {
                name: kept.name,
                namespace: kept.namespace,
                labels: kept.labels,
                owner_references: kept.owner_references,
                resource_version: kept.resource_version,
                uid: kept.uid,
                ..ObjectMeta::default()
            },
            json: json.into_boxed_str(),
        }
    }
}

impl<'de> Deserialize<'de> for CachedChild {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = DynamicObject::deserialize(deserializer).map_err(D::Error::custom)?;
        Ok(object.into())
    }
}

impl Resource for CachedChild {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(resource: &ApiResource) -> Cow<'_, str> {
        resource.kind.as_str().into()
    }

    fn group(resource: &ApiResource) -> Cow<'_, str> {
        resource.group.as_str().into()
    }

    fn version(resource: &ApiResource) -> Cow<'_, str> {
        resource.version.as_str().into()
    }

    fn api_version(resource: &ApiResource) -> Cow<'_, str> {
        resource.api_version.as_str().into()
    }

    fn plural(resource: &ApiResource) -> Cow<'_, str> {
        resource.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "checkout-validate",
                "namespace": "shop",
                "uid": "0b7e3c1a",
                "resourceVersion": "42",
                "labels": {"orderpipe.dev/pipeline": "checkout"},
                "annotations": {"orderpipe.dev/desired-hash": "abc"},
                "ownerReferences": [{
                    "apiVersion": "orderpipe.dev/v1alpha1", "kind": "OrderPipeline",
                    "name": "checkout", "uid": "p-1", "controller": true
                }],
                "managedFields": [{"manager": "orderpipe-operator", "operation": "Apply"}]
            },
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "worker"}]}}},
            "status": {"readyReplicas": 2}
        })
    }

    #[test]
    fn the_cached_object_is_the_object_without_its_managed_fields() {
        let cached: CachedChild = serde_json::from_value(deployment()).expect("deserialises");
        let mut expected = deployment();
        expected["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("managedFields");
        assert_eq!(cached.to_value(), expected);
    }

    #[test]
    fn the_metadata_the_watches_read_is_kept_outside_the_text() {
        let cached: CachedChild =
            serde_json::from_str(&deployment().to_string()).expect("deserialises");
        assert_eq!(cached.name_any(), "checkout-validate");
        assert_eq!(cached.namespace().as_deref(), Some("shop"));
        assert_eq!(cached.resource_version().as_deref(), Some("42"));
        assert_eq!(cached.uid().as_deref(), Some("0b7e3c1a"));
        assert_eq!(cached.labels()["orderpipe.dev/pipeline"], "checkout");
        assert_eq!(cached.owner_references()[0].name, "checkout");
        // Read from the text only: not duplicated in the metadata.
        assert!(cached.annotations().is_empty());
        assert!(cached.meta().managed_fields.is_none());
    }

    #[test]
    fn a_malformed_object_is_a_deserialisation_error() {
        let error = serde_json::from_value::<CachedChild>(json!({"metadata": 7}))
            .expect_err("metadata must be an object");
        assert!(error.to_string().contains("invalid type"), "{error}");
    }
}
