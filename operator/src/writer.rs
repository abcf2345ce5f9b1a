//! The one place the operator writes to the Kubernetes API: children applied, seeded and deleted,
//! the topic finalizer, the status, and the Events. Each write is counted here in
//! `orderpipe_operator_api_writes_total`, by kind and verb.
//!
//! I/O only, and it decides nothing: what to write comes from `child_plan`, `topics::plan`
//! (the finalizer) and `status`. Every write to the pipeline itself is a server-side apply with
//! [`FIELD_MANAGER`], so fields other managers own (their finalizers, say) are left alone.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use orderpipe_api::v1alpha1::{OrderPipeline, OrderPipelineStatus};
use serde_json::{Value, json};
use tracing::warn;

use crate::child_plan::ChildWrite;
use crate::children::{ChildKind, FIELD_MANAGER, REPLICA_SEED_MANAGER};
use crate::error::Error;
use crate::events::{self, Change};
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::topics::TOPIC_FINALIZER;

/// Kind label of the writes to the pipeline itself.
const PIPELINE_KIND: &str = "OrderPipeline";

/// Writes for the pipelines of one namespace.
pub struct Writer<'a> {
    client: &'a Client,
    recorder: &'a Recorder,
    metrics: &'a Metrics,
    namespace: &'a str,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl<'a> Writer<'a> {
    pub fn new(
        client: &'a Client,
        recorder: &'a Recorder,
        metrics: &'a Metrics,
        namespace: &'a str,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            namespace,
        }
    }

    /// Makes the planned child writes in order and returns the Events they call for. The first
    /// failure stops the rest: the next reconcile plans them again from what is live then.
    pub async fn children(&self, writes: &[ChildWrite]) -> Result<Vec<Change>, Error> {
        for write in writes {
            let (kind, name) = (write.kind(), write.name().to_owned());
            let api = self.children_api(kind);
            match write {
                ChildWrite::Apply { child, .. } => {
                    api.patch(&name, &forced(), &Patch::Apply(&child.object))
                        .await
                        .map_err(|source| Error::Apply { kind, name, source })?;
                    self.metrics.api_write(kind.as_str(), "apply");
                }
                ChildWrite::SeedReplicas { seed, .. } => {
                    let params = PatchParams::apply(REPLICA_SEED_MANAGER);
                    api.patch(&name, &params, &Patch::Apply(seed))
                        .await
                        .map_err(|source| Error::Apply { kind, name, source })?;
                    self.metrics.api_write(kind.as_str(), "seed-replicas");
                }
                ChildWrite::Delete { .. } => {
                    match api.delete(&name, &DeleteParams::background()).await {
                        Ok(_) => {}
                        // Already gone counts as done.
                        Err(kube::Error::Api(status)) if status.code == 404 => {}
                        Err(source) => return Err(Error::Delete { kind, name, source }),
                    }
                    self.metrics.api_write(kind.as_str(), "delete");
                }
            }
        }
        Ok(writes.iter().filter_map(ChildWrite::change).collect())
    }

    /// Adds or removes [`TOPIC_FINALIZER`]; other controllers' finalizers stay (metadata.finalizers
    /// is a set merged per field manager).
    pub async fn finalizer(&self, pipeline: &OrderPipeline, present: bool) -> Result<(), Error> {
        let finalizers: Vec<&str> = if present {
            vec![TOPIC_FINALIZER]
        } else {
            vec![]
        };
        let name = pipeline.name_any();
        let patch =
            pipeline_patch(json!({ "metadata": { "name": name, "finalizers": finalizers } }));
        self.pipelines()
            .patch(&name, &forced(), &Patch::Apply(&patch))
            .await
            .map_err(Error::Finalizer)?;
        self.metrics.api_write(PIPELINE_KIND, "finalizer");
        Ok(())
    }

    pub async fn status(
        &self,
        pipeline: &OrderPipeline,
        status: &OrderPipelineStatus,
    ) -> Result<(), Error> {
        let patch = pipeline_patch(json!({ "status": status }));
        self.pipelines()
            .patch_status(&pipeline.name_any(), &forced(), &Patch::Apply(&patch))
            .await
            .map_err(Error::Status)?;
        self.metrics.api_write(PIPELINE_KIND, "status");
        Ok(())
    }

    /// Publishes one Event per reason among `changes` ([`events::coalesced`]). An Event that
    /// cannot be written is logged, not retried: the change itself already happened.
    ///
    /// The [`Recorder`] folds events with the same reason and action into one series (keeping the
    /// first note), so the action is the start of the note, which names the objects changed: the
    /// same drift restored again on the same topic counts up one series.
    pub async fn events(&self, pipeline: &OrderPipeline, changes: &[Change]) {
        for change in events::coalesced(changes) {
            self.publish(pipeline, EventType::Normal, change.reason, &change.note)
                .await;
        }
    }

    /// Publishes a Warning Event on the pipeline: something the operator could not do.
    pub async fn warning(&self, pipeline: &OrderPipeline, reason: &str, note: &str) {
        self.publish(pipeline, EventType::Warning, reason, note)
            .await;
    }

    async fn publish(&self, pipeline: &OrderPipeline, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.to_owned()),
            action: event_action(note),
            secondary: None,
        };
        match self
            .recorder
            .publish(&event, &pipeline.object_ref(&()))
            .await
        {
            Ok(()) => self.metrics.api_write("Event", "create"),
            Err(error) => warn!(%error, reason, "could not publish event"),
        }
    }

    fn children_api(&self, kind: ChildKind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), self.namespace, &kind.api_resource())
    }

    fn pipelines(&self) -> Api<OrderPipeline> {
        Api::namespaced(self.client.clone(), self.namespace)
    }
}

/// Server-side apply as the operator, forcing ownership of the fields it sets: the operator is the
/// source of truth for them, and a conflicting manager (kubectl edit) is exactly the drift it undoes.
fn forced() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// An apply patch of the pipeline: its apiVersion and kind, and `fields`.
fn pipeline_patch(fields: Value) -> Value {
    let mut patch = json!({
        "apiVersion": OrderPipeline::api_version(&()),
        "kind": OrderPipeline::kind(&()),
    });
    if let (Some(patch), Value::Object(fields)) = (patch.as_object_mut(), fields) {
        patch.extend(fields);
    }
    patch
}

/// The Event action: the change's note, cut to the API's 128-character limit.
fn event_action(note: &str) -> String {
    note.chars().take(128).collect()
}
