//! `orderpipe-worker run`: wires one stage from the worker contract — metrics and health
//! endpoints, the stage handler, the producer for the configured delivery guarantee, the state
//! topic reader, the control topic's reader (partition growth), the coordinator and the stage
//! consumer — and runs the loop on its own thread, and the control topic's tail on another,
//! until shutdown. Must not contain loop logic (see [`crate::runtime`]).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orderpipe_api::contract::{self, ContractError, Delivery, WorkerConfig, env};
use orderpipe_api::v1alpha1::Processor as ProcessorKind;
use orderpipe_orders::status::StatusMachine;
use orderpipe_orders::validate::{ValidatePolicy, Validator};
use rdkafka::consumer::BaseConsumer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;
use crate::kafka::GroupCommit;
use crate::kafka::changelog::KafkaChangelog;
use crate::kafka::client;
use crate::kafka::consumer::{KafkaSource, StageContext};
use crate::kafka::control::{self, KafkaControl};
use crate::kafka::producer::{self, AtLeastOnceSink, TransactionalSink};
use crate::metrics::Metrics;
use crate::output_topics::OutputTopics;
use crate::runtime::growth::{ControlFilter, View};
use crate::runtime::{
    ChangelogReader, Coordinator, CoordinatorParts, DEFAULT_COMMIT_STALL, Health, LagBook, Sink,
    SinkError, Tuning, driver,
};
use crate::server::{self, Endpoints};
use crate::stage::fault::{DeadLetterEverything, Release};
use crate::stage::notify::{self, NotifyStage};
use crate::stage::webhook::HttpWebhook;
use crate::stage::{StageHandler, Stateful};

/// Beyond the longest legitimate blocking call of the loop (a revocation waiting for workers, then
/// a commit), a silent loop counts as wedged.
const STALL_MARGIN: Duration = Duration::from_secs(90);

/// Shared by everything the stage runs.
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    tuning: Tuning,
}

/// Runs the configured stage, as `release` builds it, until `shutdown` is cancelled or an
/// unrecoverable error occurs.
pub async fn run(
    config: WorkerConfig,
    release: Release,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let (registry, metrics) = Metrics::registry(&config.pipeline, &config.stage);
    let tuning = Tuning::new(config.commit_interval, config.shutdown_grace);
    // Not ready once finished records wait for a commit much longer than the commit interval.
    let health = Arc::new(
        Health::new(tuning.stop_timeout + STALL_MARGIN)
            .with_commit_stall(DEFAULT_COMMIT_STALL.max(config.commit_interval * 10)),
    );
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, config.metrics_port))
        .await
        .map_err(|source| WorkerError::Serve {
            port: config.metrics_port,
            source,
        })?;
    let endpoints = Arc::new(Endpoints {
        registry,
        health: Arc::clone(&health),
    });
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(listener, endpoints, server_stop.clone()));

    let shared = Shared {
        metrics: Arc::new(metrics),
        health,
        tuning,
    };
    let result = match config.processor {
        ProcessorKind::Validate => {
            let policy = ValidatePolicy {
                dedup_window: contract::DEDUP_WINDOW,
                ..ValidatePolicy::default()
            };
            let stage = Stateful(Validator::new(policy));
            run_release(stage, release, config, shared, shutdown).await
        }
        ProcessorKind::Status => {
            let stage = Stateful(StatusMachine::default());
            run_release(stage, release, config, shared, shutdown).await
        }
        ProcessorKind::Notify => {
            let settings = config.notify.as_ref().ok_or(ContractError::Missing {
                var: env::WEBHOOK_URL,
                why: "the notify processor posts to a webhook",
            })?;
            let stage = NotifyStage::new(
                notify::policy(settings),
                HttpWebhook::new(settings)?,
                Arc::clone(&shared.metrics),
            );
            run_release(stage, release, config, shared, shutdown).await
        }
        ProcessorKind::Custom => Err(WorkerError::UnsupportedProcessor {
            processor: ProcessorKind::Custom.as_str(),
        }),
    };
    server_stop.cancel();
    match server.await {
        Ok(Err(error)) => tracing::warn!(%error, "the metrics server failed"),
        Err(error) => tracing::warn!(%error, "the metrics server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// Runs `stage` as it is, or as the faulty release's wrapper of it.
async fn run_release<H: StageHandler>(
    stage: H,
    release: Release,
    config: WorkerConfig,
    shared: Shared,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    match release {
        Release::Sound => run_stage(stage, config, shared, shutdown).await,
        Release::DeadLetterEverything => {
            tracing::warn!("orderpipe-worker-faulty: every record goes to the dead-letter topic");
            run_stage(DeadLetterEverything(stage), config, shared, shutdown).await
        }
    }
}

/// Runs the blocking loop on its own thread (Kafka's transactional calls and rebalance callbacks
/// block) while partition workers run on this async runtime.
async fn run_stage<H: StageHandler>(
    stage: H,
    config: WorkerConfig,
    shared: Shared,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let runtime = tokio::runtime::Handle::current();
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("orderpipe-loop".to_owned())
        .spawn(move || {
            let result = stage_loop(stage, &config, runtime, shared, &shutdown);
            let _ = done.send(result);
        })
        .map_err(|error| WorkerError::Thread {
            what: "consume loop",
            detail: error.to_string(),
        })?;
    finished.await.unwrap_or_else(|_| {
        Err(WorkerError::Thread {
            what: "consume loop",
            detail: "it ended without a result (panicked)".to_owned(),
        })
    })
}

/// The sink of either delivery guarantee; it commits with the Kafka consumer's group.
type KafkaSink = Box<dyn Sink<Group = dyn GroupCommit>>;

fn startup(error: SinkError) -> WorkerError {
    WorkerError::Kafka {
        operation: error.operation,
        source: error.cause,
    }
}

fn stage_loop<H: StageHandler>(
    stage: H,
    config: &WorkerConfig,
    runtime: tokio::runtime::Handle,
    shared: Shared,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let outputs = OutputTopics::for_stage(config)?;
    // Before joining the group: initialising transactions fences a previous incarnation of this
    // worker and aborts its open transaction, so its records never become visible.
    let sink: KafkaSink = match config.delivery {
        Delivery::ExactlyOnce => Box::new(
            TransactionalSink::connect(
                client::transactional_producer(config),
                producer::CALL_TIMEOUT,
            )
            .map_err(startup)?,
        ),
        Delivery::AtLeastOnce => {
            Box::new(AtLeastOnceSink::connect(client::producer(config)).map_err(startup)?)
        }
    };
    let changelog = config.state_topic.as_ref().map(|topic| {
        Arc::new(KafkaChangelog::new(
            client::restore_consumer(config),
            topic.clone(),
        )) as Arc<dyn ChangelogReader>
    });
    let (control, growth) = control_reader(config)?;
    let lag = Arc::new(LagBook::new(Arc::clone(&shared.metrics)));
    let coordinator = Arc::new(Mutex::new(Coordinator::new(CoordinatorParts {
        stage: Arc::new(stage),
        sink,
        outputs,
        input_topic: config.input_topic.clone(),
        changelog,
        runtime,
        tuning: shared.tuning,
        metrics: shared.metrics,
        health: Arc::clone(&shared.health),
        lag: Arc::clone(&lag),
        transactional_id: config.transactional_id(),
        growth,
    })));
    let consumer: BaseConsumer<StageContext<H, KafkaSink>> = client::stage_consumer(config)
        .create_with_context(StageContext::new(
            Arc::clone(&coordinator),
            lag,
            control.clone(),
        ))
        .map_err(|error| WorkerError::KafkaClient {
            client: "consumer",
            source: error.into(),
        })?;
    let mut source = KafkaSource::subscribe(consumer, &config.input_topic)
        .map_err(WorkerError::kafka("subscribing to the input topic"))?;
    tracing::info!(
        pipeline = config.pipeline,
        stage = config.stage,
        processor = config.processor.as_str(),
        input = config.input_topic,
        group = config.consumer_group,
        delivery = config.delivery.as_str(),
        "worker started"
    );
    let tail_stop = shutdown.child_token();
    let tail = control
        .map(|control| {
            let stop = tail_stop.clone();
            std::thread::Builder::new()
                .name("orderpipe-control".to_owned())
                .spawn(move || control::tail_until(&control, &stop))
        })
        .transpose()
        .map_err(|error| WorkerError::Thread {
            what: "control topic tail",
            detail: error.to_string(),
        })?;
    let result = driver::drive(
        &mut source,
        &coordinator,
        shutdown,
        &shared.health,
        config.shutdown_grace,
    );
    tail_stop.cancel();
    if let Some(tail) = tail
        && tail.join().is_err()
    {
        tracing::warn!("the control topic's tail panicked");
    }
    result
}

/// The control topic's reader, shared by the assignment callback and the tail thread.
type SharedControl = Arc<Mutex<KafkaControl>>;

/// The control topic's reader, read to its end before the stage joins its group, and the view it
/// keeps; without a control topic the view stays `None` (no growth is followed, as before).
fn control_reader(
    config: &WorkerConfig,
) -> Result<(Option<SharedControl>, watch::Receiver<View>), WorkerError> {
    let Some(topic) = &config.control_topic else {
        return Ok((None, watch::channel(None).1));
    };
    let filter = ControlFilter {
        stage: config.stage.clone(),
        input_topic: config.input_topic.clone(),
        pipeline_uid: config.pipeline_uid.clone(),
    };
    let (mut reader, view) =
        KafkaControl::new(&client::control_consumer(config), topic.clone(), filter).map_err(
            |error| WorkerError::KafkaClient {
                client: "control topic consumer",
                source: error.into(),
            },
        )?;
    reader.sync().map_err(|reason| WorkerError::Control {
        topic: topic.clone(),
        reason,
    })?;
    Ok((Some(Arc::new(Mutex::new(reader))), view))
}
