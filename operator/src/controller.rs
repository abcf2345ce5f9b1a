//! The reconcile loop: wiring (watches, caches, context) and the reconcile script itself.
//!
//! The script reads top to bottom, one call per step: finalize-if-deleting -> finalizer -> Kafka
//! topics -> validate -> lag -> scale to zero -> desired -> child plan -> child writes -> status ->
//! events. Everything it decides is delegated to the pure modules (`model`, `scale_to_zero`,
//! `desired`, `child_plan`, `topics::plan`, `status`) and every Kubernetes write to the `Writer`;
//! what stays here is the order of the steps and the reads: the watch caches, the Kafka Secrets,
//! the topic sync (shared by the reconcile and the finalizer) and the stages' lag, read through the
//! same [`LagCache`] the external metrics API serves from, so the reconcile adds no Kafka query
//! of its own within a lag interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Future, StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use orderpipe_api::contract::naming;
use orderpipe_api::v1alpha1::{GrowthStatus, OrderPipeline, TopicStatus};
use serde_json::Value;
use tracing::{info, instrument, warn};

use crate::cached_child::CachedChild;
use crate::capabilities::Capabilities;
use crate::child_index::ChildIndex;
use crate::child_plan::{self, ChildKey};
use crate::children::{ChildKind, MANAGED_BY, MANAGED_BY_LABEL};
use crate::desired::desired_children;
use crate::egress::{self, Dialer, Resolver};
use crate::error::Error;
use crate::events::Change;
use crate::growth;
use crate::lag::{KafkaLagSource, LagCache, StageKey};
use crate::metrics::Metrics;
use crate::model::{self, Scaling, ValidatedPipeline};
use crate::recorder::Recorder;
use crate::rotation;
use crate::scale_to_zero::{self, Decision};
use crate::secrets::SecretCache;
use crate::settings::OperatorSettings;
use crate::status::{self, ChildrenError, KafkaProblem, Observed};
use crate::topics::cleanup::{self, Verdict};
use crate::topics::looks::{Asked, LastLooks, Look};
use crate::topics::{self, AdminConnection, AdminPool, TopicAdmin, TopicOutcome};
use crate::writer::Writer;

/// How often a Ready pipeline is re-checked unless the settings say otherwise; Kafka changes (config
/// drift, partitions changed out of band) produce no Kubernetes watch event, so this is how drift is
/// found. Also the longest error backoff.
const RESYNC: Duration = Duration::from_secs(300);
/// A Ready pipeline's resync comes after 1.0-1.1 times the period, at random: pipelines reconciled
/// together (all of them, after the operator starts) would otherwise stay in step and resync in
/// one wave every period, each wave a queue that user changes wait behind. Never earlier than the
/// period, so the look at Kafka it reuses has expired and the resync looks again.
const RESYNC_JITTER: f64 = 0.1;
/// Reconciles running at once. Each one mostly waits on the one Kafka cluster (topic metadata calls
/// hold a blocking-pool thread each) and the apiserver; unbounded, 1,000 new pipelines meant
/// hundreds of threads and concurrent topic creations timing out on the broker.
pub const CONCURRENCY: u16 = 32;
/// Triggers arriving this close together make one reconcile: a new pipeline's own status write and
/// its children's creation and rollout would otherwise cost about ten reconciles, each describing
/// every topic of the pipeline in Kafka.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Re-check interval while something is still converging.
const CONVERGING: Duration = Duration::from_secs(10);
/// How long a reconcile waits for a stage's lag reading. A healthy broker answers in
/// milliseconds; an unreachable one would otherwise hold the reconcile for the admin timeout.
const LAG_WAIT: Duration = Duration::from_secs(2);

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub settings: OperatorSettings,
    pub capabilities: Capabilities,
    pub pipelines: Store<OrderPipeline>,
    pub children: BTreeMap<ChildKind, Store<CachedChild>>,
    /// Which of the stores' objects belong to which pipeline.
    pub child_index: Arc<Mutex<ChildIndex>>,
    pub kafka: Arc<AdminPool>,
    /// The Secrets pipelines reference, read at most once per period.
    secrets: SecretCache,
    /// What the pipelines' hosts resolve to, looked up at most once per period.
    resolver: Resolver,
    /// The last look at each pipeline's topics, reused by reconciles that changed nothing topic
    /// related (no Kafka request for those).
    looks: Arc<LastLooks>,
    /// The stages' lag, shared with the external metrics API when `main` runs both.
    pub lag: Arc<LagCache<KafkaLagSource>>,
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
    /// The stages' lag, measured in Kafka at most once per interval: the binary shares this cache
    /// with its external metrics API, so the reconciles (scale to zero, status) and the HPAs read
    /// the same measurement.
    pub lag: Arc<LagCache<KafkaLagSource>>,
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
        lag,
    } = shared;
    let pipelines: Api<OrderPipeline> = match &watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // The pipeline watch as Controller::new builds it, with a look at each event for the gauge.
    let pipeline_cache = reflector::store::Writer::default();
    let pipeline_store = pipeline_cache.as_reader();
    // Looks at Kafka are reused for at most a resync period: the bound on how long drift made in
    // Kafka goes unseen stays what it was when every reconcile described.
    let looks = Arc::new(LastLooks::new(settings.resync.unwrap_or(RESYNC)));
    let gauge = (metrics.clone(), Arc::clone(&looks), pipeline_store.clone());
    // managedFields are a large share of an applied pipeline and nothing reads them: every write
    // to the pipeline is a server-side apply, which needs no resourceVersion or field owners.
    let pipeline_events = watcher(pipelines, watcher::Config::default().any_semantic())
        .modify(|pipeline: &mut OrderPipeline| pipeline.metadata.managed_fields = None);
    let watched = reflector(pipeline_cache, pipeline_events)
        .default_backoff()
        .inspect_ok(move |event| forget_deleted_pipelines(&gauge.0, &gauge.1, &gauge.2, event))
        .applied_objects();
    let watched = recovering(watched, "OrderPipeline");
    let mut controller = Controller::for_stream(watched, pipeline_store).with_config(
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
        // Compact entries: the objects as JSON text, parsed only for their own pipeline's plan.
        let api: Api<CachedChild> = match &watch_namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let writer = reflector::store::Writer::new(resource.clone());
        stores.insert(kind, writer.as_reader());
        let index = child_index.clone();
        // The index sees each event right after the store and before the reconcile it triggers.
        let stream = reflector(writer, watcher(api, owned.clone()))
            .default_backoff()
            .inspect_ok(move |event| {
                if let Ok(mut index) = index.lock() {
                    index.apply(kind, event);
                }
            })
            .touched_objects();
        controller = controller.owns_stream_with(recovering(stream, kind.as_str()), resource);
    }
    let gauge_metrics = metrics.clone();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        secrets: SecretCache::new(client.clone(), secret_refresh(&settings)),
        resolver: Resolver::default(),
        client,
        settings,
        capabilities,
        pipelines: controller.store(),
        children: stores,
        child_index,
        kafka,
        looks,
        lag,
        metrics,
        failures: Mutex::new(HashMap::new()),
    });
    info!(?capabilities, "controller starting");
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let metrics = gauge_metrics.clone();
            async move {
                match result {
                    // A requeue of a pipeline deleted meanwhile: a reconcile still running at its
                    // Delete event may have put it back into the gauge.
                    Err(controller::Error::ObjectNotFound(gone)) => {
                        let namespace = gone.namespace.as_deref().unwrap_or_default();
                        metrics.set_pipeline_ready(&pipeline_key(namespace, &gone.name), None);
                    }
                    Err(error) => warn!(%error, "reconcile failed"),
                    Ok(_) => {}
                }
            }
        })
        .await;
}

/// A watch stream without its errors, which are logged here. Each watch has its own backoff and
/// recovers by itself: after a 410 Gone it lists again. An error passed on would also pause the
/// controller's trigger backoff, which all watches share and which doubles with every error until
/// two quiet minutes reset it. After an apiserver restart, each of the watches fails once (410)
/// and that shared backoff reached 44 s: changes then waited minutes for a reconcile
/// (`e2e/tests/faults.rs`, the apiserver restart).
fn recovering<T>(
    stream: impl futures::Stream<Item = Result<T, watcher::Error>>,
    watch: &'static str,
) -> impl futures::Stream<Item = Result<T, watcher::Error>> {
    stream.filter(move |item| {
        if let Err(error) = item {
            warn!(watch, %error, "watch failed; it retries with backoff");
        }
        futures::future::ready(item.is_ok())
    })
}

/// Keeps the Ready gauge and the looks at Kafka to the pipelines that exist. A pipeline without a
/// finalizer is gone before any reconcile could see it deleted, so both follow the watch: at a
/// Delete, and at the end of a relist (deletions missed while the watch was down), the store is
/// what exists.
fn forget_deleted_pipelines(
    metrics: &Metrics,
    looks: &LastLooks,
    store: &Store<OrderPipeline>,
    event: &watcher::Event<OrderPipeline>,
) {
    if matches!(event, watcher::Event::Delete(_) | watcher::Event::InitDone) {
        let live: BTreeSet<String> = store
            .state()
            .iter()
            .map(|p| pipeline_key(&p.namespace().unwrap_or_default(), &p.name_any()))
            .collect();
        metrics.retain_pipelines(|key| live.contains(key));
        looks.retain(|key| live.contains(key));
    }
}

/// How the metrics name a pipeline.
fn pipeline_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
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
    // Jittered (0.8-1.2x), so pipelines that failed together (Kafka down) do not retry in step.
    let delay = Duration::from_secs(1u64 << attempts.min(9))
        .min(RESYNC)
        .mul_f64(rand::random_range(0.8..1.2));
    warn!(pipeline = %pipeline.name_any(), category = error.category(), %error, ?delay, "reconcile failed, backing off");
    Action::requeue(delay)
}

#[instrument(skip_all, fields(pipeline = %pipeline.name_any(), namespace = pipeline.namespace().unwrap_or_default()))]
async fn reconcile(pipeline: Arc<OrderPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let namespace = pipeline.namespace().ok_or(Error::MissingNamespace)?;
    let key = pipeline_key(&namespace, &pipeline.name_any());
    let writer = Writer::new(&ctx.client, &ctx.recorder, &ctx.metrics, &namespace);

    // Deletion: owned children go with the owner references; topics need the finalizer.
    if pipeline.meta().deletion_timestamp.is_some() {
        finalize(&pipeline, &ctx, &writer).await?;
        ctx.metrics.set_pipeline_ready(&key, None);
        return Ok(Action::await_change());
    }

    ensure_finalizer(&pipeline, &writer).await?;
    // Hosts the operator will not dial are not dialled, not even to describe topics.
    let refused = egress::refusals(&ctx.settings.allowed_hosts, &ctx.resolver, &pipeline).await;
    let topics = match refused.get(&Dialer::Kafka) {
        Some(reason) => TopicsOutcome::not_dialled(&pipeline, reason),
        None => reconcile_topics(&pipeline, &ctx, &writer).await?,
    };
    let (mut validated, mut issues) = model::validate(
        &pipeline,
        &topics.partitions,
        ctx.capabilities,
        &ctx.settings,
    );
    issues.extend(validated.hold_refused_hosts(&refused));
    let now = Time(Timestamp::now());
    let (lags, parking) = park_idle_stages(&ctx, &pipeline, &mut validated, &now).await;
    let live = observed_children(&ctx, &namespace, &pipeline.name_any());
    // A failure to build or apply the children is reported in the status and as a Warning Event
    // before the reconcile fails (and backs off): the status must not go on describing the
    // generation before it.
    let mut uses_secrets = false;
    let children = async {
        let mut desired = desired_children(&pipeline, &validated, ctx.capabilities, &ctx.settings)?;
        let used = rotation::secrets_used(&desired);
        uses_secrets = !used.is_empty();
        let versions = ctx.secrets.versions(&namespace, &used).await?;
        rotation::stamp(&mut desired, &versions);
        let child_writes = child_plan::plan(desired, &live, &validated);
        writer.children(&child_writes).await
    }
    .await;
    let (child_changes, children_error) = match children {
        Ok(changes) => (changes, None),
        Err(error) => (Vec::new(), Some(error)),
    };

    let observed = Observed {
        generation: pipeline.metadata.generation,
        pipeline: &validated,
        topics: topics.statuses,
        kafka_error: topics.error,
        kafka_cluster_id: topics.cluster_id,
        workloads: child_plan::live_workloads(&validated, &live),
        autoscalers: child_plan::live_autoscalers(&validated, &live),
        intake_workload: child_plan::live_intake_workload(&validated, &live),
        lags,
        scale_to_zero: &parking,
        issues: &issues,
        children_error: children_error.as_ref().map(|error| ChildrenError {
            reason: error.reason(),
            message: error.to_string(),
        }),
        growth: topics.growth.unwrap_or_else(|| {
            pipeline
                .status
                .as_ref()
                .map(|status| status.growth.clone())
                .unwrap_or_default()
        }),
    };
    let ready = write_status(&pipeline, &observed, &writer, &now).await?;
    ctx.metrics.set_pipeline_ready(&key, ready.as_deref());
    if let Some(error) = children_error {
        writer
            .warning(&pipeline, error.reason(), &error.to_string())
            .await;
        return Err(error);
    }

    let changes: Vec<Change> = topics
        .changes
        .into_iter()
        .chain(child_changes)
        .chain(scale_to_zero::changes(&validated, &parking))
        .collect();
    writer.events(&pipeline, &changes).await;
    // Pods that use Secrets are re-stamped with their versions once per refresh period: that is
    // how a rotated Secret is found (nothing watches Secrets, see `secrets`).
    let secrets_recheck = uses_secrets.then(|| secret_refresh(&ctx.settings));
    let recheck = topics.recheck.into_iter().chain(secrets_recheck).min();
    Ok(settle(
        &ctx,
        &pipeline,
        &validated,
        ready.as_deref(),
        recheck,
    ))
}

/// Measures the lag of the stages with a lag target and decides which stages with
/// `minReplicas: 0` stay parked; those are marked in `validated`, so their children are built at 0
/// replicas without an autoscaler.
async fn park_idle_stages(
    ctx: &Context,
    pipeline: &OrderPipeline,
    validated: &mut ValidatedPipeline,
    now: &Time,
) -> (BTreeMap<String, u64>, BTreeMap<String, Decision>) {
    let lags = stage_lags(ctx, validated).await;
    let parking = scale_to_zero::decide_all(validated, &lags, pipeline.status.as_ref(), now);
    validated.park(|stage| parking.get(stage).is_some_and(Decision::parked));
    (lags, parking)
}

/// Writes the status, only when it differs from what is there; returns the Ready condition's
/// status.
async fn write_status(
    pipeline: &OrderPipeline,
    observed: &Observed<'_>,
    writer: &Writer<'_>,
    now: &Time,
) -> Result<Option<String>, Error> {
    let new_status = status::compute(observed, pipeline.status.as_ref(), now);
    if pipeline.status.as_ref() != Some(&new_status) {
        writer.status(pipeline, &new_status).await?;
    }
    Ok(new_status
        .conditions
        .iter()
        .find(|c| c.type_ == status::READY)
        .map(|c| c.status.clone()))
}

/// How long a Secret read is reused, and how often pods' Secrets are looked at again.
fn secret_refresh(settings: &OperatorSettings) -> Duration {
    settings.secret_refresh.unwrap_or(SecretCache::TTL)
}

/// The bookkeeping of a reconcile that succeeded, and when to look at the pipeline again: by
/// `recheck` at the latest (when its topics were planned from a look at Kafka that expires then,
/// or its pods use Secrets that may be rotated).
fn settle(
    ctx: &Context,
    pipeline: &OrderPipeline,
    validated: &ValidatedPipeline,
    ready: Option<&str>,
    recheck: Option<Duration>,
) -> Action {
    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&ObjectRef::from(pipeline));
    }
    ctx.metrics.reconciled();
    let requeue = if ready == Some("True") {
        jittered(ctx.settings.resync.unwrap_or(RESYNC))
    } else {
        CONVERGING
    };
    let requeue = recheck.map_or(requeue, |expires_in| requeue.min(expires_in));
    // A stage that may be parked is re-checked every lag interval: that is how a parked stage
    // wakes (nothing else watches its lag) and how its idle period is sampled.
    Action::requeue(if scale_to_zero::watches_lag(validated) {
        requeue.min(ctx.lag.settings().interval)
    } else {
        requeue
    })
}

/// A resync `period` stretched by up to [`RESYNC_JITTER`] of itself.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random_range(0.0..RESYNC_JITTER))
}

/// The lag of every stage with a lag target, through the shared cache (at most one Kafka query per
/// stage per interval, whoever asks). A measurement that takes longer than [`LAG_WAIT`] is not
/// waited for: the last reading stands in. A stage whose lag cannot be measured is absent: the
/// cache logs why, its status shows no lag, and `scale_to_zero` neither parks nor wakes it.
async fn stage_lags(ctx: &Context, pipeline: &ValidatedPipeline) -> BTreeMap<String, u64> {
    let reads = pipeline
        .stages
        .iter()
        .filter(|stage| {
            matches!(
                stage.scaling,
                Scaling::Auto {
                    target_lag_per_replica: Some(_),
                    ..
                }
            )
        })
        .map(|stage| async move {
            let key = StageKey {
                namespace: pipeline.namespace.clone(),
                pipeline: pipeline.name.clone(),
                stage: stage.spec.name.clone(),
            };
            // The measurement runs on its own task: one that outlasts LAG_WAIT (Kafka
            // unreachable) finishes in the background and fills the cache for the next
            // reconcile, instead of holding this one (and the pipeline's status) up to the admin
            // request timeout per stage.
            let lag = Arc::clone(&ctx.lag);
            let stage = key.clone();
            let read = tokio::spawn(async move { lag.get(&stage).await });
            let reading = match tokio::time::timeout(LAG_WAIT, read).await {
                Ok(Ok(measured)) => measured.ok(),
                // Still measuring: the reading before it, if young enough to serve.
                _ => ctx.lag.last(&key),
            }?;
            Some((key.stage, reading.records))
        });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Deletes the topics this pipeline owns with deletion policy Delete, then releases the finalizer.
async fn finalize(
    pipeline: &OrderPipeline,
    ctx: &Context,
    writer: &Writer<'_>,
) -> Result<(), Error> {
    if !topics::has_finalizer(pipeline) {
        return Ok(());
    }
    let now = Time(Timestamp::now());
    let give_up = ctx
        .settings
        .topic_cleanup_give_up
        .unwrap_or(cleanup::GIVE_UP_AFTER);
    let kept = |why: String| {
        format!(
            "topics {:?} were not deleted: {why}",
            cleanup::left_behind(pipeline)
        )
    };
    if cleanup::verdict(pipeline, false, &now, give_up) == Verdict::Skip {
        let note = kept(format!("annotation {}", cleanup::SKIP_ANNOTATION));
        writer.warning(pipeline, "TopicCleanupSkipped", &note).await;
        return writer.finalizer(pipeline, false).await;
    }
    let refused = egress::refusals(&ctx.settings.allowed_hosts, &ctx.resolver, pipeline).await;
    if let Some(reason) = refused.get(&Dialer::Kafka) {
        // Not dialled to create them, not dialled to delete them either.
        let note = kept(format!("the operator does not dial the brokers: {reason}"));
        writer.warning(pipeline, "TopicCleanupSkipped", &note).await;
        return writer.finalizer(pipeline, false).await;
    }
    let outcome = sync_topics(pipeline, ctx, writer, TopicSync::Finalize)
        .await
        .map(|synced| synced.outcome)
        .and_then(|outcome| match outcome.error_summary() {
            Some(errors) => Err(Error::TopicCleanup(errors)),
            None => Ok(outcome),
        });
    match outcome {
        Ok(outcome) => writer.events(pipeline, &outcome.changes).await,
        Err(error) if cleanup::verdict(pipeline, true, &now, give_up) == Verdict::Abandon => {
            let note = kept(format!(
                "still failing {:?} after the deletion request: {error}",
                give_up
            ));
            writer
                .warning(pipeline, "TopicCleanupAbandoned", &note)
                .await;
        }
        Err(error) => return Err(error),
    }
    writer.finalizer(pipeline, false).await
}

/// The finalizer exists exactly when a topic may have to be deleted.
async fn ensure_finalizer(pipeline: &OrderPipeline, writer: &Writer<'_>) -> Result<(), Error> {
    let wanted = topics::needs_finalizer(pipeline);
    if wanted == topics::has_finalizer(pipeline) {
        return Ok(());
    }
    writer.finalizer(pipeline, wanted).await
}

/// What the topic step hands to the rest of the reconcile.
struct TopicsOutcome {
    statuses: Vec<TopicStatus>,
    /// Partitions of each topic as Kafka reports them (input sizing for autoscalers).
    partitions: BTreeMap<String, i32>,
    changes: Vec<Change>,
    /// Why Kafka could not be reached, or the admin calls that failed; reported in TopicsReady,
    /// retried on the next pass.
    error: Option<KafkaProblem>,
    /// Planned from an earlier look at Kafka, which expires after this long.
    recheck: Option<Duration>,
    /// The id the cluster's brokers reported, when they did.
    cluster_id: Option<String>,
    /// `status.growth` after this pass; `None` when Kafka was not reached (the last one stands).
    growth: Option<Vec<GrowthStatus>>,
}

impl TopicsOutcome {
    /// The topics and partitions of the last status, which stand while Kafka is not reached this
    /// time, with `problem` saying why.
    fn last_reported(pipeline: &OrderPipeline, problem: KafkaProblem) -> TopicsOutcome {
        let last = topics::LastStatus::of(pipeline);
        TopicsOutcome {
            statuses: last.topics.to_vec(),
            partitions: last.partitions(),
            changes: Vec::new(),
            error: Some(problem),
            recheck: None,
            cluster_id: None,
            growth: None,
        }
    }

    /// [`TopicsOutcome::last_reported`], because the operator does not dial the brokers.
    fn not_dialled(pipeline: &OrderPipeline, reason: &str) -> TopicsOutcome {
        let problem = KafkaProblem {
            reason: "HostNotAllowed",
            message: format!("the operator does not dial spec.kafka.bootstrapServers: {reason}"),
        };
        TopicsOutcome::last_reported(pipeline, problem)
    }
}

fn kafka_unavailable(message: String) -> KafkaProblem {
    KafkaProblem {
        reason: "KafkaUnavailable",
        message,
    }
}

/// Kafka topics: observe, plan (pure), execute. Kafka unreachable is a state to report, not a
/// reason to stop managing the workloads: the last reported topics stand until it answers again.
/// Fails only when the status could not record the topics about to be created: then nothing was
/// created, and the reconcile is retried like any failed status write.
async fn reconcile_topics(
    pipeline: &OrderPipeline,
    ctx: &Context,
    writer: &Writer<'_>,
) -> Result<TopicsOutcome, Error> {
    Ok(
        match sync_topics(pipeline, ctx, writer, TopicSync::Reconcile).await {
            Ok(Synced {
                outcome,
                recheck,
                cluster_id,
                growth,
            }) => TopicsOutcome {
                partitions: outcome.partitions(),
                error: outcome.error_summary().map(kafka_unavailable),
                changes: outcome.changes,
                statuses: outcome.statuses,
                recheck,
                cluster_id,
                growth,
            },
            Err(error @ Error::Status(_)) => return Err(error),
            Err(error) => {
                TopicsOutcome::last_reported(pipeline, kafka_unavailable(error.to_string()))
            }
        },
    )
}

/// Which plan a topic sync runs.
#[derive(Clone, Copy, Debug)]
enum TopicSync {
    /// The pipeline's topics as declared: described in Kafka (or the last look reused, see
    /// `topics::looks`), then planned.
    Reconcile,
    /// The pipeline is being deleted: its topics with deletion policy Delete go.
    Finalize,
}

/// What one topic sync did.
struct Synced {
    outcome: TopicOutcome,
    /// When to look again: the look at Kafka it planned from expires, or a growth waits.
    recheck: Option<Duration>,
    /// The id the cluster's brokers reported, when they did.
    cluster_id: Option<String>,
    /// `status.growth` after this sync (`None` when finalizing).
    growth: Option<Vec<GrowthStatus>>,
}

/// Connects to the pipeline's Kafka cluster, plans the topic actions and runs them, counting every
/// admin call in the metrics; topics it is about to create are first recorded in the status
/// (`topics::creation_record`).
async fn sync_topics(
    pipeline: &OrderPipeline,
    ctx: &Context,
    writer: &Writer<'_>,
    sync: TopicSync,
) -> Result<Synced, Error> {
    let secrets = ctx.secrets.kafka(pipeline).await?;
    let admin = ctx
        .kafka
        .get(&pipeline.spec.kafka, &secrets)
        .map_err(Error::Kafka)?;
    let all: Vec<Arc<OrderPipeline>> = ctx.pipelines.state();
    let owners = |cluster_id: Option<&str>| {
        topics::OwnershipView::new(pipeline, all.iter().map(AsRef::as_ref), cluster_id)
    };
    let (plan, recheck, cluster_id, growth) = match sync {
        TopicSync::Reconcile => {
            let mut desired = topics::desired_topics(pipeline);
            let last = topics::LastStatus::of(pipeline);
            let key = pipeline_key(
                &pipeline.namespace().unwrap_or_default(),
                &pipeline.name_any(),
            );
            let asked = Asked {
                uid: pipeline.metadata.uid.clone(),
                generation: pipeline.metadata.generation,
                query: topics::TopicQuery::new(&desired, &last),
            };
            let now = Instant::now();
            let (described, recheck) = match ctx.looks.reusable(&key, &asked, now) {
                Some(reused) => (reused.described, Some(reused.expires_in)),
                None => {
                    let described = admin.describe(&asked.query).await.map_err(Error::Kafka)?;
                    ctx.metrics
                        .admin_operation(topics::Operation::Describe.as_str(), true);
                    (described, None)
                }
            };
            // After a describe librdkafka holds the id from the metadata answer: no request.
            let cluster_id = admin.cluster_id().await;
            let growth = step_growth(ctx, pipeline, &desired, &described, &secrets).await?;
            growth::constrain(&mut desired, &growth);
            let mut plan =
                topics::plan(&desired, &described, &owners(cluster_id.as_deref()), &last);
            growth::mark_refused(&mut plan.statuses, &growth);
            if recheck.is_some() {
                // Ownership may have changed since (an older pipeline on the cluster went).
                ctx.looks.keep_if_still_worth(&key, &plan);
            } else {
                let look = Look {
                    asked,
                    described,
                    taken: now,
                };
                ctx.looks.remember(&key, look, &plan);
            }
            (plan, recheck, cluster_id, Some(growth))
        }
        TopicSync::Finalize => {
            let cluster_id = admin.cluster_id().await;
            let plan = topics::finalize_plan(pipeline, &owners(cluster_id.as_deref()));
            (plan, None, cluster_id, None)
        }
    };
    // Decisions workers will act on are recorded before anything acts on them: topics about to be
    // created (`topics::creation_record`), a growth announced or its barrier taken.
    let created = topics::creation_record(&plan, &topics::LastStatus::of(pipeline));
    let decided = growth.as_ref().and_then(|g| g.status_first.clone());
    if created.is_some() || decided.is_some() {
        let mut status = pipeline.status.clone().unwrap_or_default();
        if let Some(recorded) = created {
            status.topics = recorded;
        }
        if let Some(decided) = decided {
            status.growth = decided;
        }
        writer.status(pipeline, &status).await?;
    }
    if let Some(growth) = &growth {
        let connection =
            AdminConnection::new(&pipeline.spec.kafka, &secrets).map_err(Error::Kafka)?;
        let namespace = pipeline.namespace().unwrap_or_default();
        let control = naming::control_topic(&namespace, &pipeline.name_any());
        growth::kafka::publish(
            &connection,
            &control,
            &growth.publish,
            growth::KAFKA_TIMEOUT,
        )
        .await
        .map_err(Error::Growth)?;
    }
    let mut outcome = topics::execute(&admin, plan).await;
    for (operation, ok) in &outcome.operations {
        ctx.metrics.admin_operation(operation, *ok);
    }
    let (recheck, growth) = match growth {
        Some(step) => {
            outcome.changes.extend(step.events);
            let recheck = [recheck, step.recheck].into_iter().flatten().min();
            (recheck, Some(step.statuses))
        }
        None => (recheck, None),
    };
    Ok(Synced {
        outcome,
        recheck,
        cluster_id,
        growth,
    })
}

/// The stages whose live workload runs only workers that follow the control topic
/// (`growth::follows_control`), from the watch cache.
fn stages_following_control(ctx: &Context, pipeline: &OrderPipeline) -> BTreeSet<String> {
    let namespace = pipeline.namespace().unwrap_or_default();
    let name = pipeline.name_any();
    let live = observed_children(ctx, &namespace, &name);
    pipeline
        .spec
        .stages
        .iter()
        .filter(|stage| {
            let workload = naming::workload(&name, &stage.name);
            [ChildKind::Deployment, ChildKind::Rollout]
                .into_iter()
                .filter_map(|kind| live.get(&(kind, workload.clone())))
                .any(growth::follows_control)
        })
        .map(|stage| stage.name.clone())
        .collect()
}

/// One reconcile's growth decisions: reads from Kafka what the running growths wait on, then
/// [`growth::step`]. A failed read leaves its growth where it is (logged in `growth::kafka`).
async fn step_growth(
    ctx: &Context,
    pipeline: &OrderPipeline,
    desired: &[topics::DesiredTopic],
    described: &topics::Described,
    secrets: &topics::ResolvedKafkaSecrets,
) -> Result<growth::GrowthStep, Error> {
    let inputs = growth::coordinated_inputs(pipeline);
    let last = pipeline
        .status
        .as_ref()
        .map(|status| status.growth.as_slice())
        .unwrap_or_default();
    let now = Timestamp::now();
    let needs = growth::needs(&inputs, last, now);
    let observed = if needs.is_empty() {
        growth::Observations::default()
    } else {
        let connection =
            AdminConnection::new(&pipeline.spec.kafka, secrets).map_err(Error::Kafka)?;
        growth::kafka::observe(&connection, needs, growth::KAFKA_TIMEOUT)
            .await
            .map_err(Error::Growth)?
    };
    let namespace = pipeline.namespace().unwrap_or_default();
    let control = naming::control_topic(&namespace, &pipeline.name_any());
    let declared = desired
        .iter()
        .map(|topic| (topic.name.clone(), topic.partitions))
        .collect();
    let live = described
        .topics
        .iter()
        .map(|(name, topic)| (name.clone(), topic.partitions))
        .collect();
    // Only a growth about to start asks whether the stages follow the control topic: reading the
    // live workloads out of the watch cache is not for every reconcile.
    let following = if growth::asked(&inputs, &declared, &live) {
        stages_following_control(ctx, pipeline)
    } else {
        BTreeSet::new()
    };
    Ok(growth::step(&growth::StepInput {
        pipeline_uid: pipeline.metadata.uid.as_deref().unwrap_or_default(),
        inputs: &inputs,
        declared: &declared,
        live: &live,
        control_topic_exists: described.topics.contains_key(&control),
        following: &following,
        last,
        observed: &observed,
        now,
    }))
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
            Some(((kind, name), object.to_value()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    fn ready_count(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).expect("encodes");
        text.lines()
            .find(|l| {
                l.starts_with("orderpipe_operator_pipelines{condition=\"Ready\",status=\"True\"}")
            })
            .unwrap_or_default()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn a_resync_comes_after_its_period_and_within_a_tenth_more() {
        let period = Duration::from_secs(300);
        let delays: Vec<Duration> = (0..1_000).map(|_| jittered(period)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= period && *d < period.mul_f64(1.1))
        );
        // Spread, not one value: pipelines reconciled together drift apart.
        let longest = delays.iter().max().copied().unwrap_or_default();
        let shortest = delays.iter().min().copied().unwrap_or_default();
        let spread = longest.saturating_sub(shortest);
        assert!(spread > Duration::from_secs(20), "{spread:?}");
    }

    /// Whether `looks` still holds a look for `key` (one remembered by [`remember_a_look`]).
    fn has_look(looks: &LastLooks, key: &str) -> bool {
        looks.reusable(key, &looked_for(), Instant::now()).is_some()
    }

    fn looked_for() -> Asked {
        Asked {
            uid: None,
            generation: None,
            query: topics::TopicQuery::default(),
        }
    }

    fn remember_a_look(looks: &LastLooks, key: &str) {
        let look = Look {
            asked: looked_for(),
            described: topics::Described::default(),
            taken: Instant::now(),
        };
        looks.remember(key, look, &topics::TopicPlan::default());
    }

    #[test]
    fn a_deleted_pipeline_leaves_the_gauge_and_the_looks_at_its_delete_or_at_the_next_relist() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let looks = LastLooks::new(RESYNC);
        let mut cache = reflector::store::Writer::<OrderPipeline>::default();
        let store = cache.as_reader();
        let shop = OrderPipeline::test("checkout").in_namespace("shop");
        let eu = OrderPipeline::test("checkout").in_namespace("eu");
        for event in [
            watcher::Event::Apply(shop.clone()),
            watcher::Event::Apply(eu.clone()),
        ] {
            cache.apply_watcher_event(&event);
            forget_deleted_pipelines(&metrics, &looks, &store, &event);
        }
        for key in ["shop/checkout", "eu/checkout"] {
            metrics.set_pipeline_ready(key, Some("True"));
            remember_a_look(&looks, key);
        }
        assert_eq!(ready_count(&registry), "2");

        let delete = watcher::Event::Delete(shop);
        cache.apply_watcher_event(&delete);
        forget_deleted_pipelines(&metrics, &looks, &store, &delete);
        assert_eq!(ready_count(&registry), "1");
        assert!(!has_look(&looks, "shop/checkout"));
        assert!(has_look(&looks, "eu/checkout"));

        // The watch was down while eu/checkout went: the relist does not list it.
        for event in [watcher::Event::Init, watcher::Event::InitDone] {
            cache.apply_watcher_event(&event);
            forget_deleted_pipelines(&metrics, &looks, &store, &event);
        }
        assert_eq!(ready_count(&registry), "0");
        assert!(!has_look(&looks, "eu/checkout"));
    }
}
