//! The whole checkout pipeline for real-broker tests — validate -> status -> notify, each stage a
//! worker process of the built binary — and the webhook receiver the notify stage posts to (an axum
//! server in the test process that counts deliveries per idempotency key and can fail on cue).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use orderpipe_api::contract::env;
use orderpipe_orders::generator::Expected;
use orderpipe_orders::headers::IDEMPOTENCY_KEY;
use orderpipe_orders::{DispatchResult, NotificationDispatched, OrderState, StatusChanged};
use orderpipe_stack::{
    Isolation, caught_up, committed_offsets, create_topics, end_offsets, free_port, read_all,
    unique_name, wait_until_blocking,
};
use orderpipe_worker::loadgen::LoadSpec;

use super::{ValidateTopics, WorkerProcess, assert_exactly_once, expectations, orders};
use tokio_util::sync::CancellationToken;

/// Topics and groups of one pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub orders: String,
    pub validated: String,
    pub rejected: String,
    pub events: String,
    pub changes: String,
    pub audit: String,
    pub dead_letter: String,
    id: String,
}

/// One stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Validate,
    Status,
    Notify,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Validate, Stage::Status, Stage::Notify];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::Status => "status",
            Stage::Notify => "notify",
        }
    }
}

impl Pipeline {
    /// Creates every topic; stage inputs and state topics have `partitions` partitions.
    pub fn create(bootstrap: &str, partitions: i32) -> Self {
        let id = unique_name("pipe");
        let topic = |name: &str| format!("{id}.{name}");
        let pipeline = Self {
            orders: topic("orders"),
            validated: topic("validated"),
            rejected: topic("rejected"),
            events: topic("events"),
            changes: topic("changes"),
            audit: topic("audit"),
            dead_letter: topic("dlq"),
            id: id.clone(),
        };
        let validate_state = pipeline.state_topic(Stage::Validate);
        let status_state = pipeline.state_topic(Stage::Status);
        create_topics(
            bootstrap,
            &[
                (&pipeline.orders, partitions),
                (&pipeline.validated, partitions),
                (&pipeline.rejected, 1),
                (&pipeline.events, partitions),
                (&pipeline.changes, partitions),
                (&pipeline.audit, partitions),
                (&pipeline.dead_letter, 1),
                (&validate_state, partitions),
                (&status_state, partitions),
            ],
        )
        .expect("topics created");
        pipeline
    }

    /// Every topic of the pipeline: inputs, outputs, state and dead-letter topics.
    pub fn all_topics(&self) -> Vec<String> {
        vec![
            self.orders.clone(),
            self.validated.clone(),
            self.rejected.clone(),
            self.events.clone(),
            self.changes.clone(),
            self.audit.clone(),
            self.dead_letter.clone(),
            self.state_topic(Stage::Validate),
            self.state_topic(Stage::Status),
        ]
    }

    pub fn state_topic(&self, stage: Stage) -> String {
        format!("{}.{}.state", self.id, stage.name())
    }

    pub fn group(&self, stage: Stage) -> String {
        format!("{}.{}", self.id, stage.name())
    }

    pub fn input(&self, stage: Stage) -> &str {
        match stage {
            Stage::Validate => &self.orders,
            Stage::Status => &self.events,
            Stage::Notify => &self.changes,
        }
    }

    /// Whether every stage's group has committed everything in its input.
    pub fn drained(&self, bootstrap: &str) -> bool {
        Stage::ALL.iter().all(|stage| {
            caught_up(bootstrap, &self.group(*stage), self.input(*stage))
                .expect("the group's progress")
        })
    }

    /// Waits until every stage has drained its input. Fails at once if one of `workers` exits
    /// (nothing would drain what it owned), and on either failure names what is behind: each
    /// stage's committed and end offsets per partition, and the tail of every worker's log.
    pub fn wait_drained<'a>(
        &self,
        bootstrap: &str,
        workers: impl IntoIterator<Item = &'a mut WorkerProcess>,
        timeout: Duration,
    ) {
        let mut workers: Vec<&mut WorkerProcess> = workers.into_iter().collect();
        let mut exited = None;
        let waited = wait_until_blocking("every stage to drain its input", timeout, || {
            exited = workers.iter_mut().find_map(|worker| {
                worker
                    .exit_status()
                    .map(|status| format!("{} exited ({status})", worker.log.display()))
            });
            exited.is_some() || self.drained(bootstrap)
        });
        let failure = match (waited, exited) {
            (_, Some(exited)) => exited,
            (Err(timeout), None) => timeout.to_string(),
            (Ok(()), None) => return,
        };
        let logs: Vec<String> = workers
            .iter()
            .map(|worker| format!("--- {}:\n{}", worker.log.display(), worker.log_tail()))
            .collect();
        panic!(
            "{failure}\n{}\n{}",
            self.progress_report(bootstrap),
            logs.join("\n")
        );
    }

    /// Each stage's committed offset and end offset per input partition, one line per stage.
    fn progress_report(&self, bootstrap: &str) -> String {
        Stage::ALL
            .iter()
            .map(|stage| {
                let input = self.input(*stage);
                let committed = committed_offsets(bootstrap, &self.group(*stage), input);
                let ends = end_offsets(bootstrap, input);
                format!(
                    "{} ({input}): committed {committed:?}, end {ends:?}",
                    stage.name()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The worker contract's environment of `stage`, for pod `pod`.
    pub fn worker_env(
        &self,
        bootstrap: &str,
        stage: Stage,
        pod: &str,
        metrics_port: u16,
        webhook: &str,
    ) -> Vec<(String, String)> {
        let outputs = match stage {
            Stage::Validate => format!(
                "validated={},rejected={},events={}",
                self.validated, self.rejected, self.events
            ),
            Stage::Status => format!("changes={}", self.changes),
            Stage::Notify => format!("audit={}", self.audit),
        };
        let mut vars = vec![
            (env::PIPELINE, "pipe".to_owned()),
            (env::NAMESPACE, "test".to_owned()),
            (env::STAGE, stage.name().to_owned()),
            (env::POD_NAME, pod.to_owned()),
            (env::PROCESSOR, stage.name().to_owned()),
            (env::BOOTSTRAP_SERVERS, bootstrap.to_owned()),
            (env::INPUT_TOPIC, self.input(stage).to_owned()),
            (env::OUTPUTS, outputs),
            (env::DEAD_LETTER_TOPIC, self.dead_letter.clone()),
            (env::CONSUMER_GROUP, self.group(stage)),
            (env::METRICS_PORT, metrics_port.to_string()),
            (env::SHUTDOWN_GRACE_SECONDS, "20".to_owned()),
        ];
        match stage {
            Stage::Validate | Stage::Status => {
                vars.push((env::STATE_TOPIC, self.state_topic(stage)));
            }
            Stage::Notify => {
                vars.extend([
                    (env::WEBHOOK_URL, webhook.to_owned()),
                    (env::WEBHOOK_TIMEOUT_MS, "2000".to_owned()),
                    (env::RETRY_MAX_ATTEMPTS, "10".to_owned()),
                    (env::RETRY_INITIAL_BACKOFF_MS, "20".to_owned()),
                    (env::RETRY_MAX_BACKOFF_MS, "200".to_owned()),
                ]);
            }
        }
        vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

#[derive(Debug, Default)]
struct Received {
    /// Deliveries (2xx answers) per idempotency key.
    delivered: Mutex<HashMap<String, u64>>,
    requests: AtomicU64,
    /// Every n-th request is answered 503 (0: never).
    fail_every: u64,
}

/// The shop's webhook endpoint.
#[derive(Debug)]
pub struct WebhookReceiver {
    pub url: String,
    received: Arc<Received>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebhookReceiver {
    /// Starts the receiver; with `fail_every` = n > 0, every n-th request fails transiently
    /// (alternating 503 and 429 with `Retry-After: 0`).
    pub fn start(fail_every: u64) -> Self {
        let received = Arc::new(Received {
            fail_every,
            ..Received::default()
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("webhook port");
        let addr: SocketAddr = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = CancellationToken::new();
        let thread = {
            let received = Arc::clone(&received);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let app = Router::new()
                        .route("/hook", post(receive))
                        .with_state(received);
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await
                        .expect("webhook receiver");
                });
            })
        };
        Self {
            url: format!("http://{addr}/hook"),
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Deliveries per idempotency key.
    pub fn delivered(&self) -> HashMap<String, u64> {
        self.received.delivered.lock().expect("deliveries").clone()
    }

    /// Requests received, failed ones included.
    pub fn requests(&self) -> u64 {
        self.received.requests.load(Ordering::Relaxed)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn receive(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, HeaderMap) {
    let count = received.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let mut answer = HeaderMap::new();
    if received.fail_every > 0 && count % received.fail_every == 0 {
        if (count / received.fail_every) % 2 == 0 {
            answer.insert("retry-after", "0".parse().expect("header"));
            return (StatusCode::TOO_MANY_REQUESTS, answer);
        }
        return (StatusCode::SERVICE_UNAVAILABLE, answer);
    }
    let Some(key) = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
    else {
        return (StatusCode::BAD_REQUEST, answer);
    };
    if !body.contains(key) {
        return (StatusCode::UNPROCESSABLE_ENTITY, answer);
    }
    *received
        .delivered
        .lock()
        .expect("deliveries")
        .entry(key.to_owned())
        .or_default() += 1;
    (StatusCode::OK, answer)
}

pub fn start(
    pipeline: &Pipeline,
    bootstrap: &str,
    stage: Stage,
    pod: &str,
    webhook: &WebhookReceiver,
) -> WorkerProcess {
    WorkerProcess::spawn(
        pod,
        &pipeline.worker_env(
            bootstrap,
            stage,
            pod,
            free_port().expect("a free port"),
            &webhook.url,
        ),
    )
}

/// One worker per stage, pods named `<stage>-<suffix>`.
pub fn start_stages(
    pipeline: &Pipeline,
    bootstrap: &str,
    stages: &[Stage],
    suffix: &str,
    webhook: &WebhookReceiver,
) -> Vec<WorkerProcess> {
    stages
        .iter()
        .map(|stage| {
            let pod = format!("{}-{suffix}", stage.name());
            start(pipeline, bootstrap, *stage, &pod, webhook)
        })
        .collect()
}

/// Share of the validate stage's input its group has committed.
pub fn validate_progress(bootstrap: &str, pipeline: &Pipeline) -> f64 {
    let committed: i64 = committed_offsets(
        bootstrap,
        &pipeline.group(Stage::Validate),
        &pipeline.orders,
    )
    .expect("the group's committed offsets")
    .values()
    .sum();
    let end: i64 = end_offsets(bootstrap, &pipeline.orders)
        .expect("the topic's end offsets")
        .values()
        .sum();
    committed as f64 / end.max(1) as f64
}

/// What the run delivered, for the report.
#[derive(Debug)]
pub struct Delivered {
    pub valid_orders: usize,
    pub distinct_deliveries: usize,
    pub raw_deliveries: u64,
    pub webhook_requests: u64,
}

/// Every valid order exactly once in validated, events, changes and audit; rejects and dead
/// letters exactly the injected bad records; one distinct webhook delivery per (order, version).
pub fn assert_pipeline_exactly_once(
    bootstrap: &str,
    pipeline: &Pipeline,
    spec: &LoadSpec,
    webhook: &WebhookReceiver,
) -> Delivered {
    let topics = ValidateTopics {
        input: pipeline.orders.clone(),
        validated: pipeline.validated.clone(),
        rejected: pipeline.rejected.clone(),
        dead_letter: pipeline.dead_letter.clone(),
        group: pipeline.group(Stage::Validate),
    };
    // Also checks the dead-letter topic holds exactly validate's garbage: the later stages must
    // dead-letter nothing in a run without bad events.
    assert_exactly_once(bootstrap, &topics, std::slice::from_ref(spec));

    let valid: HashSet<Vec<u8>> = expectations(std::slice::from_ref(spec))
        .into_iter()
        .filter(|(_, expected)| expected.front() == Some(&Expected::Valid))
        .filter_map(|((key, _), _)| key)
        .collect();
    let once_per_valid_order = |topic: &str, what: &str| {
        let records =
            read_all(bootstrap, topic, Isolation::ReadCommitted).expect("topic read to its end");
        let mut seen = HashSet::new();
        for record in &records {
            let key = record.key.clone().unwrap_or_default();
            assert!(valid.contains(&key), "{what}: unexpected key {key:?}");
            assert!(seen.insert(key), "{what}: duplicate");
        }
        assert_eq!(seen.len(), valid.len(), "{what}: one per valid order");
        records
    };
    once_per_valid_order(&pipeline.events, "status events");
    for record in once_per_valid_order(&pipeline.changes, "status changes") {
        let changed: StatusChanged =
            serde_json::from_slice(record.payload.as_deref().unwrap_or_default())
                .expect("StatusChanged");
        assert_eq!(
            (changed.from, changed.to, changed.version),
            (OrderState::Placed, OrderState::Validated, 1)
        );
    }
    for record in once_per_valid_order(&pipeline.audit, "notification audit") {
        let audit: NotificationDispatched =
            serde_json::from_slice(record.payload.as_deref().unwrap_or_default()).expect("audit");
        assert_eq!(audit.result, DispatchResult::Delivered);
    }

    let delivered = webhook.delivered();
    let expected_keys: HashSet<String> = valid
        .iter()
        .map(|key| format!("{}:1:webhook", String::from_utf8_lossy(key)))
        .collect();
    let delivered_keys: HashSet<String> = delivered.keys().cloned().collect();
    assert_eq!(
        delivered_keys, expected_keys,
        "one distinct delivery per (order, version)"
    );
    Delivered {
        valid_orders: valid.len(),
        distinct_deliveries: delivered.len(),
        raw_deliveries: delivered.values().sum(),
        webhook_requests: webhook.requests(),
    }
}

impl std::fmt::Display for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} valid orders, {} distinct webhook deliveries, {} raw deliveries, {} webhook requests",
            self.valid_orders, self.distinct_deliveries, self.raw_deliveries, self.webhook_requests
        )
    }
}

/// The pipeline tests' load: orders with 2% invalid, 1% garbage and 2% duplicate submissions.
pub fn spec(count: u64, seed: u64) -> LoadSpec {
    LoadSpec {
        invalid_share: 0.02,
        garbage_share: 0.01,
        duplicate_share: 0.02,
        ..orders(count, seed)
    }
}
