//! The whole checkout pipeline for real-broker tests — validate -> status -> notify, each stage a
//! worker process of the built binary — and the webhook receiver the notify stage posts to (an axum
//! server in the test process that counts deliveries per idempotency key and can fail on cue).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use orderpipe_api::contract::env;
use orderpipe_orders::headers::IDEMPOTENCY_KEY;
use orderpipe_stack::{caught_up, create_topics, free_port, unique_name};

use super::WorkerProcess;
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

    fn state_topic(&self, stage: Stage) -> String {
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

/// Starts `stage` as a worker process of pod `pod`.
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
