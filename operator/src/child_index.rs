//! Which owned children each pipeline has, kept up to date from the child watches, so a reconcile
//! finds its own children in time proportional to their number rather than by scanning (and
//! cloning) every cached object of every kind. Pure: fed watcher events, holds names only (the
//! objects stay in the reflector stores), no client.

use std::collections::{BTreeSet, HashMap};

use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::cached_child::CachedChild;
use crate::children::{ChildKind, PIPELINE_LABEL};

/// A pipeline by namespace and name.
type PipelineKey = (String, String);
/// A child by kind, namespace and name.
type ChildRef = (ChildKind, String, String);

#[derive(Debug, Default)]
pub struct ChildIndex {
    /// The pipeline each indexed child names in its label.
    owner: HashMap<ChildRef, String>,
    /// The reverse: children of each pipeline, by kind and name.
    children: HashMap<PipelineKey, BTreeSet<(ChildKind, String)>>,
    /// Children seen so far while a kind's watch relists (between `Init` and `InitDone`).
    relisting: HashMap<ChildKind, Vec<(ChildRef, String)>>,
}

impl ChildIndex {
    /// Applies one event of the watch on `kind`, in the order the reflector applies it to its store.
    pub fn apply(&mut self, kind: ChildKind, event: &Event<CachedChild>) {
        match event {
            Event::Apply(object) => match entry(kind, object) {
                Some((child, pipeline)) => self.insert(child, pipeline),
                // The label went away: no longer a child of any pipeline.
                None => self.remove(&child_ref(kind, object)),
            },
            Event::Delete(object) => self.remove(&child_ref(kind, object)),
            Event::Init => {
                self.relisting.insert(kind, Vec::new());
            }
            Event::InitApply(object) => {
                if let (Some(seen), Some(found)) =
                    (self.relisting.get_mut(&kind), entry(kind, object))
                {
                    seen.push(found);
                }
            }
            Event::InitDone => {
                // The relist is the whole truth for this kind: what it did not list is gone.
                let seen = self.relisting.remove(&kind).unwrap_or_default();
                let stale: Vec<ChildRef> =
                    self.owner.keys().filter(|c| c.0 == kind).cloned().collect();
                for child in stale {
                    self.remove(&child);
                }
                for (child, pipeline) in seen {
                    self.insert(child, pipeline);
                }
            }
        }
    }

    /// The children of one pipeline, by kind and name.
    pub fn children_of(&self, namespace: &str, pipeline: &str) -> Vec<(ChildKind, String)> {
        self.children
            .get(&(namespace.to_owned(), pipeline.to_owned()))
            .map(|children| children.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn insert(&mut self, child: ChildRef, pipeline: String) {
        if self.owner.get(&child) == Some(&pipeline) {
            return;
        }
        self.remove(&child);
        let (kind, namespace, name) = child.clone();
        self.children
            .entry((namespace, pipeline.clone()))
            .or_default()
            .insert((kind, name));
        self.owner.insert(child, pipeline);
    }

    fn remove(&mut self, child: &ChildRef) {
        let Some(pipeline) = self.owner.remove(child) else {
            return;
        };
        let (kind, namespace, name) = child;
        let key = (namespace.clone(), pipeline);
        if let Some(children) = self.children.get_mut(&key) {
            children.remove(&(*kind, name.clone()));
            if children.is_empty() {
                self.children.remove(&key);
            }
        }
    }
}

fn child_ref(kind: ChildKind, object: &CachedChild) -> ChildRef {
    (
        kind,
        object.namespace().unwrap_or_default(),
        object.name_any(),
    )
}

/// The child and the pipeline its label names, if it names one.
fn entry(kind: ChildKind, object: &CachedChild) -> Option<(ChildRef, String)> {
    let pipeline = object.labels().get(PIPELINE_LABEL)?.clone();
    Some((child_ref(kind, object), pipeline))
}

#[cfg(test)]
mod tests {
    use kube::api::{DynamicObject, ObjectMeta};

    use super::*;

    const DEPLOYMENT: ChildKind = ChildKind::Deployment;
    const SERVICE: ChildKind = ChildKind::Service;

    fn object(namespace: &str, name: &str, pipeline: Option<&str>) -> CachedChild {
        DynamicObject {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: pipeline.map(|p| [(PIPELINE_LABEL.to_owned(), p.to_owned())].into()),
                ..ObjectMeta::default()
            },
            data: serde_json::Value::Null,
        }
        .into()
    }

    /// An `Apply` of a child in namespace `shop` (or `other/name`) labelled with `pipeline`.
    fn applied(index: &mut ChildIndex, kind: ChildKind, name: &str, pipeline: Option<&str>) {
        let (namespace, name) = name.split_once('/').unwrap_or(("shop", name));
        index.apply(kind, &Event::Apply(object(namespace, name, pipeline)));
    }

    fn children(list: &[(ChildKind, &str)]) -> Vec<(ChildKind, String)> {
        list.iter().map(|(k, n)| (*k, (*n).to_owned())).collect()
    }

    #[test]
    fn children_are_found_by_their_pipeline_label_and_namespace() {
        let mut index = ChildIndex::default();
        applied(&mut index, DEPLOYMENT, "a-validate", Some("a"));
        applied(&mut index, SERVICE, "a-validate", Some("a"));
        applied(&mut index, DEPLOYMENT, "b-validate", Some("b"));
        applied(&mut index, DEPLOYMENT, "other/a-validate", Some("a"));
        assert_eq!(
            index.children_of("shop", "a"),
            children(&[(DEPLOYMENT, "a-validate"), (SERVICE, "a-validate")])
        );
        assert_eq!(index.children_of("shop", "c"), vec![]);
    }

    #[test]
    fn a_deleted_or_relabelled_child_leaves_its_old_pipeline() {
        let mut index = ChildIndex::default();
        applied(&mut index, DEPLOYMENT, "x", Some("a"));
        applied(&mut index, DEPLOYMENT, "x", Some("b"));
        assert_eq!(index.children_of("shop", "a"), vec![]);
        assert_eq!(
            index.children_of("shop", "b"),
            children(&[(DEPLOYMENT, "x")])
        );
        applied(&mut index, DEPLOYMENT, "x", None);
        assert_eq!(index.children_of("shop", "b"), vec![]);
        applied(&mut index, DEPLOYMENT, "y", Some("b"));
        index.apply(DEPLOYMENT, &Event::Delete(object("shop", "y", Some("b"))));
        assert_eq!(index.children_of("shop", "b"), vec![]);
    }

    #[test]
    fn a_relist_replaces_what_is_known_of_that_kind_only() {
        let mut index = ChildIndex::default();
        applied(&mut index, DEPLOYMENT, "gone", Some("a"));
        applied(&mut index, SERVICE, "kept", Some("a"));
        index.apply(DEPLOYMENT, &Event::Init);
        index.apply(
            DEPLOYMENT,
            &Event::InitApply(object("shop", "new", Some("a"))),
        );
        // Until the relist is complete, the old view stands.
        assert!(
            index
                .children_of("shop", "a")
                .contains(&(DEPLOYMENT, "gone".to_owned()))
        );
        index.apply(DEPLOYMENT, &Event::InitDone);
        assert_eq!(
            index.children_of("shop", "a"),
            children(&[(DEPLOYMENT, "new"), (SERVICE, "kept")])
        );
    }
}
