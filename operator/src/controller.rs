//! The reconcile loop: wiring (watches, caches, context) and the reconcile script itself.
//!
//! This is one of the few modules that does I/O. The script reads top to bottom:
//! finalize-if-deleting -> finalizer -> Kafka topics -> validate -> desired -> apply -> orphans ->
//! status -> events. Everything it decides is delegated to the pure modules; what stays here is the
//! order of the steps and the calls that read or write.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Future, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use orderpipe_api::v1alpha1::{KafkaSpec, OrderPipeline, OrderPipelineStatus};
use serde_json::{Value, json};
use tracing::{info, instrument, warn};

use crate::apply::{self, Applier, ChildKey};
use crate::capabilities::Capabilities;
use crate::child_index::ChildIndex;
use crate::children::{ChildKind, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL};
use crate::desired::desired_children;
use crate::error::Error;
use crate::events::Change;
use crate::metrics::Metrics;
use crate::model;
use crate::settings::OperatorSettings;
use crate::status::{self, Observed};
use crate::topics::{self, AdminPool, ResolvedKafkaSecrets, TopicAdmin};
use orderpipe_api::contract::SecretString;

/// Finalizer that lets the operator delete topics with deletion policy Delete.
pub const TOPIC_FINALIZER: &str = "orderpipe.dev/topic-cleanup";

/// How often a Ready pipeline is re-checked unless the settings say otherwise; Kafka changes (config
/// drift, partitions changed out of band) produce no Kubernetes watch event, so this is how drift is
/// found. Also the longest error backoff.
const RESYNC: Duration = Duration::from_secs(300);
/// Reconciles running at once. Each one mostly waits on the one Kafka cluster (topic metadata calls
/// hold a blocking-pool thread each) and the apiserver; unbounded, 1,000 new pipelines meant
/// hundreds of threads and concurrent topic creations timing out on the broker.
const CONCURRENCY: u16 = 32;
/// Triggers arriving this close together make one reconcile: a new pipeline's own status write and
/// its children's creation and rollout would otherwise cost about ten reconciles, each describing
/// every topic of the pipeline in Kafka.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Re-check interval while something is still converging.
const CONVERGING: Duration = Duration::from_secs(10);

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub settings: OperatorSettings,
    pub capabilities: Capabilities,
    pub pipelines: Store<OrderPipeline>,
    pub children: BTreeMap<ChildKind, Store<DynamicObject>>,
    /// Which of the stores' objects belong to which pipeline.
    pub child_index: Arc<Mutex<ChildIndex>>,
    pub kafka: Arc<AdminPool>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    failures: Mutex<HashMap<ObjectRef<OrderPipeline>, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// What the controller needs that outlives one run (the controller is restarted when the cluster's
/// optional CRDs change).
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub settings: OperatorSettings,
    pub kafka: Arc<AdminPool>,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    /// Only reconcile pipelines in this namespace (default: all).
    pub watch_namespace: Option<String>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .field("watch_namespace", &self.watch_namespace)
            .finish_non_exhaustive()
    }
}

/// Runs the controller for the given capabilities until `shutdown` resolves.
pub async fn run(
    shared: Shared,
    capabilities: Capabilities,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Shared {
        client,
        settings,
        kafka,
        metrics,
        reporter,
        watch_namespace,
    } = shared;
    let pipelines: Api<OrderPipeline> = match &watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut controller = Controller::new(pipelines, watcher::Config::default().any_semantic())
        .with_config(
            controller::Config::default()
                .concurrency(CONCURRENCY)
                .debounce(DEBOUNCE),
        );
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let mut stores = BTreeMap::new();
    let child_index = Arc::new(Mutex::new(ChildIndex::default()));
    for kind in ChildKind::ALL
        .into_iter()
        .filter(|k| k.is_served(capabilities))
    {
        let resource = kind.api_resource();
        let api: Api<DynamicObject> = match &watch_namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let writer = reflector::store::Writer::new(resource.clone());
        stores.insert(kind, writer.as_reader());
        let index = child_index.clone();
        // The index sees each event right after the store and before the reconcile it triggers.
        // managedFields are most of a cached Deployment and nothing here reads them.
        let children = watcher(api, owned.clone()).modify(|object: &mut DynamicObject| {
            object.metadata.managed_fields = None;
        });
        let stream = reflector(writer, children)
            .default_backoff()
            .inspect_ok(move |event| {
                if let Ok(mut index) = index.lock() {
                    index.apply(kind, event);
                }
            })
            .touched_objects();
        controller = controller.owns_stream_with(stream, resource);
    }
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings,
        capabilities,
        pipelines: controller.store(),
        children: stores,
        child_index,
        kafka,
        metrics,
        failures: Mutex::new(HashMap::new()),
    });
    info!(?capabilities, "controller starting");
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
            }
        })
        .await;
}

/// Per-object exponential backoff: 1 s, 2 s, 4 s ... capped at 5 minutes; reset on success.
fn error_policy(pipeline: Arc<OrderPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.category());
    let attempts = ctx
        .failures
        .lock()
        .map(|mut failures| {
            let n = failures
                .entry(ObjectRef::from(pipeline.as_ref()))
                .or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delay = Duration::from_secs(1u64 << attempts.min(9)).min(RESYNC);
    warn!(pipeline = %pipeline.name_any(), category = error.category(), %error, ?delay, "reconcile failed, backing off");
    Action::requeue(delay)
}

#[instrument(skip_all, fields(pipeline = %pipeline.name_any(), namespace = pipeline.namespace().unwrap_or_default()))]
async fn reconcile(pipeline: Arc<OrderPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let namespace = pipeline.namespace().ok_or(Error::MissingNamespace)?;
    let key = format!("{namespace}/{}", pipeline.name_any());
    let api: Api<OrderPipeline> = Api::namespaced(ctx.client.clone(), &namespace);

    // 1. Deletion: owned children go with the owner references; topics need the finalizer.
    if pipeline.meta().deletion_timestamp.is_some() {
        finalize(&pipeline, &api, &ctx).await?;
        ctx.metrics.set_pipeline_ready(&key, None);
        return Ok(Action::await_change());
    }

    // 2. The finalizer exists exactly when a topic may have to be deleted.
    ensure_finalizer(&pipeline, &api, &ctx).await?;

    // 3. Kafka topics: observe, plan (pure), execute.
    let mut changes = Vec::new();
    let (topic_statuses, partitions, kafka_error) = match reconcile_topics(&pipeline, &ctx).await {
        Ok(outcome) => {
            changes.extend(outcome.changes);
            (outcome.statuses, outcome.partitions, outcome.error)
        }
        Err(error) => {
            // Kafka unreachable is a state to report, not a reason to stop managing the workloads.
            let previous = pipeline
                .status
                .as_ref()
                .map(|s| s.topics.clone())
                .unwrap_or_default();
            (previous, BTreeMap::new(), Some(error.to_string()))
        }
    };

    // 4-5. Validate against the cluster and the observed partitions; build every child (pure).
    let (validated, issues) =
        model::validate(&pipeline, &partitions, ctx.capabilities, &ctx.settings);
    let desired: Vec<_> = desired_children(&pipeline, &validated, ctx.capabilities, &ctx.settings)?
        .into_iter()
        .map(apply::with_desired_hash)
        .collect();

    // 6. Apply what differs from the cache; nothing is written when nothing changed.
    let observed = observed_children(&ctx, &namespace, &pipeline.name_any());
    let applier = Applier::new(ctx.client.clone(), &namespace);
    for child in &desired {
        let live = observed.get(&(child.kind, child.name.clone()));
        if apply::needs_apply(&child.object, live) {
            applier.apply(child).await.map_err(|source| Error::Apply {
                kind: child.kind,
                name: child.name.clone(),
                source,
            })?;
            ctx.metrics.api_write(child.kind.as_str(), "apply");
            let verb = if live.is_some() { "Updated" } else { "Created" };
            changes.push(Change {
                reason: if live.is_some() {
                    "ChildUpdated"
                } else {
                    "ChildCreated"
                },
                note: format!("{verb} {} {}", child.kind, child.name),
            });
        }
        // After the apply, so the seed never creates a Rollout on its own.
        let min_replicas = validated
            .stages
            .iter()
            .find(|s| s.workload_name == child.name)
            .and_then(|s| match s.scaling {
                model::Scaling::Auto { min, .. } => Some(min),
                model::Scaling::Fixed(_) => None,
            });
        if let Some(seed) = min_replicas.and_then(|min| apply::replica_seed(child, live, min)) {
            applier
                .seed_replicas(child.kind, &child.name, &seed)
                .await
                .map_err(|source| Error::Apply {
                    kind: child.kind,
                    name: child.name.clone(),
                    source,
                })?;
            ctx.metrics.api_write(child.kind.as_str(), "seed-replicas");
        }
    }

    // 7. Delete owned objects that left the spec; a replaced workload waits for its successor.
    let workloads: BTreeMap<String, Value> = validated
        .stages
        .iter()
        .filter_map(|stage| {
            let kind = match stage.workload {
                model::WorkloadKind::Deployment => ChildKind::Deployment,
                model::WorkloadKind::Rollout => ChildKind::Rollout,
            };
            let live = observed.get(&(kind, stage.workload_name.clone()))?;
            Some((stage.spec.name.clone(), live.clone()))
        })
        .collect();
    let orphans = apply::orphans(&desired, &observed, |workload_name| {
        validated.stages.iter().any(|stage| {
            stage.workload_name == workload_name
                && workloads
                    .get(&stage.spec.name)
                    .is_some_and(status::workload_is_ready)
        })
    });
    for (kind, name) in orphans {
        applier
            .delete(kind, &name)
            .await
            .map_err(|source| Error::Delete {
                kind,
                name: name.clone(),
                source,
            })?;
        ctx.metrics.api_write(kind.as_str(), "delete");
        changes.push(Change {
            reason: "ChildDeleted",
            note: format!("Deleted {kind} {name}"),
        });
    }

    // 8. Status: written only when it differs from what is there.
    let observed = Observed {
        generation: pipeline.metadata.generation,
        pipeline: &validated,
        topics: topic_statuses,
        kafka_error,
        workloads,
        issues: &issues,
    };
    let now = Time(Timestamp::now());
    let new_status = status::compute(&observed, pipeline.status.as_ref(), &now);
    if pipeline.status.as_ref() != Some(&new_status) {
        write_status(&api, &pipeline.name_any(), &new_status).await?;
        ctx.metrics.api_write("OrderPipeline", "status");
    }
    let ready = new_status
        .conditions
        .iter()
        .find(|c| c.type_ == status::READY)
        .map(|c| c.status.clone());
    ctx.metrics.set_pipeline_ready(&key, ready.as_deref());

    // 9. One Event per change the operator made.
    publish(&ctx, &pipeline, &changes).await;

    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&ObjectRef::from(pipeline.as_ref()));
    }
    ctx.metrics.reconciled();
    Ok(Action::requeue(if ready.as_deref() == Some("True") {
        ctx.settings.resync.unwrap_or(RESYNC)
    } else {
        CONVERGING
    }))
}

/// What the topic step hands to the rest of the reconcile.
struct TopicsOutcome {
    statuses: Vec<orderpipe_api::v1alpha1::TopicStatus>,
    /// Partitions of each topic as Kafka reports them (input sizing for autoscalers).
    partitions: BTreeMap<String, i32>,
    changes: Vec<Change>,
    /// Admin calls that failed; reported in TopicsReady, retried on the next pass.
    error: Option<String>,
}

async fn reconcile_topics(pipeline: &OrderPipeline, ctx: &Context) -> Result<TopicsOutcome, Error> {
    let all: Vec<Arc<OrderPipeline>> = ctx.pipelines.state();
    let ownership = topics::OwnershipView::new(pipeline, all.iter().map(AsRef::as_ref));
    let desired = topics::desired_topics(pipeline);
    let last = topics::LastStatus::of(pipeline);
    let query = topics::TopicQuery::new(&desired, &last);
    let secrets = resolve_kafka_secrets(ctx, pipeline).await?;
    let admin = ctx
        .kafka
        .get(&pipeline.spec.kafka, &secrets)
        .map_err(Error::Kafka)?;
    let observed = admin.describe(&query).await.map_err(Error::Kafka)?;
    ctx.metrics.admin_operation("describe", true);
    let plan = topics::plan(&desired, &observed, &ownership, &last);
    let outcome = topics::execute(&admin, plan).await;
    for (operation, ok) in &outcome.operations {
        ctx.metrics.admin_operation(operation, *ok);
    }
    Ok(TopicsOutcome {
        partitions: outcome.partitions(),
        changes: outcome.changes,
        error: (!outcome.errors.is_empty()).then(|| {
            outcome
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }),
        statuses: outcome.statuses,
    })
}

/// Reads the TLS and SASL material the pipeline references. Values never leave this function except
/// inside `ResolvedKafkaSecrets`, whose Debug output redacts them.
async fn resolve_kafka_secrets(
    ctx: &Context,
    pipeline: &OrderPipeline,
) -> Result<ResolvedKafkaSecrets, Error> {
    let namespace = pipeline.namespace().ok_or(Error::MissingNamespace)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let read = |name: String, key: String| {
        let secrets = secrets.clone();
        async move {
            let secret = secrets
                .get(&name)
                .await
                .map_err(|source| Error::ReadSecret {
                    secret: name.clone(),
                    source,
                })?;
            secret
                .data
                .and_then(|mut data| data.remove(&key))
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
                .ok_or(Error::SecretKeyMissing { secret: name, key })
        }
    };
    let KafkaSpec { tls, sasl, .. } = &pipeline.spec.kafka;
    let mut resolved = ResolvedKafkaSecrets::default();
    if let Some(tls) = tls {
        if let Some(ca) = &tls.ca_secret_ref {
            resolved.ca_pem = Some(read(ca.name.0.clone(), ca.key.0.clone()).await?);
        }
        if let Some(client) = &tls.client_cert_secret_name {
            resolved.client_certificate = Some(topics::ClientCertificate {
                certificate_pem: read(client.0.clone(), "tls.crt".into()).await?,
                key_pem: SecretString::new(read(client.0.clone(), "tls.key".into()).await?),
            });
        }
    }
    if let Some(sasl) = sasl {
        let creds = &sasl.credentials_secret_ref;
        resolved.sasl = Some(topics::SaslCredentials {
            username: read(creds.name.0.clone(), creds.username_key.0.clone()).await?,
            password: SecretString::new(
                read(creds.name.0.clone(), creds.password_key.0.clone()).await?,
            ),
        });
    }
    Ok(resolved)
}

/// Owned children of one pipeline, from the watch caches (no API call): the index names them, the
/// stores hold them; only these few objects are serialized.
fn observed_children(ctx: &Context, namespace: &str, pipeline: &str) -> BTreeMap<ChildKey, Value> {
    let names = ctx
        .child_index
        .lock()
        .map(|index| index.children_of(namespace, pipeline))
        .unwrap_or_default();
    names
        .into_iter()
        .filter_map(|(kind, name)| {
            let key = ObjectRef::new_with(&name, kind.api_resource()).within(namespace);
            let object = ctx.children.get(&kind)?.get(&key)?;
            let value = serde_json::to_value(object.as_ref()).unwrap_or_default();
            Some(((kind, name), value))
        })
        .collect()
}

fn has_finalizer(pipeline: &OrderPipeline) -> bool {
    pipeline.finalizers().iter().any(|f| f == TOPIC_FINALIZER)
}

/// Adds or removes our finalizer with server-side apply, so other controllers' finalizers are left
/// alone (metadata.finalizers is a set merged per field manager).
async fn ensure_finalizer(
    pipeline: &OrderPipeline,
    api: &Api<OrderPipeline>,
    ctx: &Context,
) -> Result<(), Error> {
    let wanted = topics::needs_finalizer(pipeline);
    if wanted == has_finalizer(pipeline) {
        return Ok(());
    }
    set_finalizer(pipeline, api, wanted).await?;
    ctx.metrics.api_write("OrderPipeline", "finalizer");
    Ok(())
}

async fn set_finalizer(
    pipeline: &OrderPipeline,
    api: &Api<OrderPipeline>,
    present: bool,
) -> Result<(), Error> {
    let finalizers: Vec<&str> = if present {
        vec![TOPIC_FINALIZER]
    } else {
        vec![]
    };
    let patch = json!({
        "apiVersion": OrderPipeline::api_version(&()),
        "kind": OrderPipeline::kind(&()),
        "metadata": { "name": pipeline.name_any(), "finalizers": finalizers },
    });
    api.patch(
        &pipeline.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Finalizer)?;
    Ok(())
}

/// Deletes the topics this pipeline owns with deletion policy Delete, then releases the finalizer.
async fn finalize(
    pipeline: &OrderPipeline,
    api: &Api<OrderPipeline>,
    ctx: &Context,
) -> Result<(), Error> {
    if !has_finalizer(pipeline) {
        return Ok(());
    }
    let all: Vec<Arc<OrderPipeline>> = ctx.pipelines.state();
    let ownership = topics::OwnershipView::new(pipeline, all.iter().map(AsRef::as_ref));
    let secrets = resolve_kafka_secrets(ctx, pipeline).await?;
    let admin = ctx
        .kafka
        .get(&pipeline.spec.kafka, &secrets)
        .map_err(Error::Kafka)?;
    let plan = topics::finalize_plan(pipeline, &ownership);
    let outcome = topics::execute(&admin, plan).await;
    for (operation, ok) in &outcome.operations {
        ctx.metrics.admin_operation(operation, *ok);
    }
    if !outcome.errors.is_empty() {
        let message = outcome
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::TopicCleanup(message));
    }
    publish(ctx, pipeline, &outcome.changes).await;
    set_finalizer(pipeline, api, false).await?;
    ctx.metrics.api_write("OrderPipeline", "finalizer");
    Ok(())
}

async fn write_status(
    api: &Api<OrderPipeline>,
    name: &str,
    status: &OrderPipelineStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": OrderPipeline::api_version(&()),
        "kind": OrderPipeline::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

/// Publishes one Event per change. An Event that cannot be written is logged, not retried: the
/// change itself already happened.
///
/// The Recorder folds events with the same reason and action into one series (keeping the first
/// note), so the action names the object changed: eight topics created are eight Events, while the
/// same drift restored again on the same topic counts up one series.
async fn publish(ctx: &Context, pipeline: &OrderPipeline, changes: &[Change]) {
    let reference = pipeline.object_ref(&());
    for change in changes {
        let event = Event {
            type_: EventType::Normal,
            reason: change.reason.into(),
            note: Some(change.note.clone()),
            action: event_action(&change.note),
            secondary: None,
        };
        match ctx.recorder.publish(&event, &reference).await {
            Ok(()) => ctx.metrics.api_write("Event", "create"),
            Err(error) => warn!(%error, reason = change.reason, "could not publish event"),
        }
    }
}

/// The Event action: the change's note, cut to the API's 128-character limit.
fn event_action(note: &str) -> String {
    note.chars().take(128).collect()
}
