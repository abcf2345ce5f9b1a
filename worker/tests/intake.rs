//! The intake gateway (`orderpipe-worker intake`, a process of the built binary) against a real
//! broker, driven by an independent HTTP client (reqwest) and checked with an independent Kafka
//! reader: every answer code for its cause, GET reading the real status stage's writes within 1 s
//! of its commit, and a broker restart under load after which every order that got a 202 is in
//! the orders topic exactly once.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::WorkerProcess;
use common::pipeline::{Pipeline, Stage, WebhookReceiver, start_stages};
use orderpipe_api::contract::env;
use orderpipe_orders::OrderPlaced;
use orderpipe_orders::generator::{GenConfig, OrderGenerator};
use orderpipe_stack::{
    Isolation, Stack, create_topics, free_port, kafka_bootstrap, read_all, unique_name, wait_until,
    wait_until_blocking,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use reqwest::StatusCode;
use serde_json::Value;

/// A token with both scopes, one that may only read and one that may only write.
const SHOP: &str = "shop-token-1";
const READER: &str = "reader-token-1";
const WRITER: &str = "writer-token-1";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway process and where it listens.
struct Gateway {
    process: WorkerProcess,
    url: String,
}

impl Gateway {
    /// Starts a gateway producing to `orders` and reading status from `changes`, with `extra`
    /// settings, and waits until it is ready.
    fn start(bootstrap: &str, orders: &str, changes: &str, extra: &[(&str, &str)]) -> Self {
        let api_port = free_port().expect("a free port");
        let pod = unique_name("intake");
        let mut vars: Vec<(String, String)> = [
            (env::PIPELINE, "test".to_owned()),
            (env::POD_NAME, pod.clone()),
            (env::BOOTSTRAP_SERVERS, bootstrap.to_owned()),
            (env::METRICS_PORT, free_port().expect("port").to_string()),
            (env::INTAKE_ORDERS_TOPIC, orders.to_owned()),
            (env::INTAKE_STATUS_TOPIC, changes.to_owned()),
            (env::INTAKE_PORT, api_port.to_string()),
            (
                env::INTAKE_TOKENS,
                format!("# test tokens\n{SHOP}\n{READER} orders:read\n{WRITER} orders:write\n"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let process = WorkerProcess::spawn_mode(&pod, "intake", &vars);
        if wait_until_blocking("the gateway to be ready", READY_TIMEOUT, || {
            process
                .get("/readyz")
                .is_some_and(|(status, _)| status == 200)
        })
        .is_err()
        {
            panic!("gateway not ready; log:\n{}", process.log_tail());
        }
        Self {
            process,
            url: format!("http://127.0.0.1:{api_port}"),
        }
    }
}

/// An answer: status, the headers the tests look at, and the JSON body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    location: Option<String>,
    retry_after: Option<String>,
    www_authenticate: Option<String>,
    replayed: Option<String>,
    body: Value,
}

async fn answer(response: reqwest::Response) -> Answer {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (location, retry_after, www_authenticate, replayed) = (
        header("location"),
        header("retry-after"),
        header("www-authenticate"),
        header("idempotent-replayed"),
    );
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        replayed,
        location,
        retry_after,
        www_authenticate,
        body,
    }
}

async fn post(
    client: &reqwest::Client,
    gateway: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut request = client
        .post(format!("{gateway}/v1/orders"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    answer(request.send().await.expect("POST answered")).await
}

async fn get(client: &reqwest::Client, gateway: &str, token: Option<&str>, id: &str) -> Answer {
    let mut request = client.get(format!("{gateway}/v1/orders/{id}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request.send().await.expect("GET answered")).await
}

fn json(order: &OrderPlaced) -> Vec<u8> {
    serde_json::to_vec(order).expect("order serialises")
}

fn generator(seed: u64) -> OrderGenerator {
    OrderGenerator::new(seed, GenConfig::default())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// How many records of `topic` (read_committed) carry each key.
fn keys_in(bootstrap: &str, topic: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in read_all(bootstrap, topic, Isolation::ReadCommitted).expect("topic read") {
        let key = String::from_utf8_lossy(&record.key.unwrap_or_default()).into_owned();
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn every_answer_code_but_503_is_given_for_its_cause_with_the_rule_and_field() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let orders = unique_name("intake-orders");
    let changes = unique_name("intake-changes");
    create_topics(&bootstrap, &[(&orders, 3), (&changes, 3)]).expect("topics");
    let gateway = Gateway::start(&bootstrap, &orders, &changes, &[]);
    // A queue of one record: a burst overflows it (429) while the first waits for the broker.
    let narrow = Gateway::start(
        &bootstrap,
        &orders,
        &changes,
        &[("ORDERPIPE_INTAKE_QUEUE_MESSAGES", "1")],
    );
    let mut orders_gen = generator(19);
    let order = orders_gen.valid_order();
    let url = gateway.url.clone();
    let mut accepted = vec![order.order_id.clone()];
    let burst_accepted = runtime().block_on(async {
        let client = reqwest::Client::new();
        let body = json(&order);

        let none = post(&client, &url, None, None, body.clone()).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{none:?}");
        assert_eq!(none.www_authenticate.as_deref(), Some("Bearer"));
        let unknown = post(&client, &url, Some("nope"), None, body.clone()).await;
        assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "{unknown:?}");
        let reader = post(&client, &url, Some(READER), None, body.clone()).await;
        assert_eq!(reader.status, StatusCode::FORBIDDEN, "{reader:?}");
        assert_eq!(reader.body["error"], "forbidden");

        let first = post(&client, &url, Some(SHOP), Some("k-1"), body.clone()).await;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
        assert_eq!(first.replayed, None);
        let location = format!("/v1/orders/{}", order.order_id);
        assert_eq!(first.location.as_deref(), Some(location.as_str()));
        assert_eq!(first.body["orderId"], order.order_id.as_str());
        let again = post(&client, &url, Some(SHOP), Some("k-1"), body.clone()).await;
        assert_eq!(
            again.status,
            StatusCode::ACCEPTED,
            "a retry gets the same answer"
        );
        assert_eq!(again.location.as_deref(), Some(location.as_str()));
        assert_eq!(again.replayed.as_deref(), Some("true"), "{again:?}");

        let mut changed = order.clone();
        changed.customer_id = "cus-someone-else".to_owned();
        let reused = post(&client, &url, Some(SHOP), None, json(&changed)).await;
        assert_eq!(reused.status, StatusCode::CONFLICT, "{reused:?}");
        assert_eq!(reused.body["error"], "order_id_reused");
        assert_eq!(reused.body["reasons"][0]["field"], "orderId");
        assert_eq!(reused.body["reasons"][0]["rule"], "order_id_reused");

        let other = orders_gen.valid_order();
        let key_reused = post(&client, &url, Some(SHOP), Some("k-1"), json(&other)).await;
        assert_eq!(
            key_reused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{key_reused:?}"
        );
        assert_eq!(key_reused.body["error"], "idempotency_key_reused");
        let bad_key = post(&client, &url, Some(SHOP), Some("two words"), json(&other)).await;
        assert_eq!(bad_key.status, StatusCode::BAD_REQUEST, "{bad_key:?}");
        assert_eq!(bad_key.body["error"], "idempotency_key_format");

        let mut invalid = serde_json::to_value(orders_gen.valid_order()).expect("value");
        invalid["items"][0]["quantity"] = 0.into();
        invalid["customerId"] = "".into();
        let rejected = post(
            &client,
            &url,
            Some(SHOP),
            None,
            serde_json::to_vec(&invalid).expect("json"),
        )
        .await;
        assert_eq!(rejected.status, StatusCode::BAD_REQUEST, "{rejected:?}");
        assert_eq!(rejected.body["error"], "order_rejected");
        let reasons: Vec<(String, String)> = rejected.body["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .map(|r| (r["field"].to_string(), r["rule"].to_string()))
            .collect();
        for expected in [
            ("\"customerId\"", "\"customer_id_format\""),
            ("\"items[0].quantity\"", "\"quantity_positive\""),
        ] {
            assert!(
                reasons.contains(&(expected.0.to_owned(), expected.1.to_owned())),
                "{expected:?} missing from {reasons:?}"
            );
        }
        let not_json = post(&client, &url, Some(SHOP), None, b"{not json".to_vec()).await;
        assert_eq!(not_json.status, StatusCode::BAD_REQUEST, "{not_json:?}");
        assert_eq!(not_json.body["error"], "not_json");
        let huge = post(&client, &url, Some(SHOP), None, vec![b' '; 600 * 1024]).await;
        assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE, "{huge:?}");
        assert_eq!(huge.body["error"], "payload_too_large");

        let id = order.order_id.as_str();
        let unauthenticated = get(&client, &url, None, id).await;
        assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
        let writer = get(&client, &url, Some(WRITER), id).await;
        assert_eq!(writer.status, StatusCode::FORBIDDEN, "{writer:?}");
        let malformed = get(&client, &url, Some(READER), "not.an.id").await;
        assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{malformed:?}");
        assert_eq!(malformed.body["error"], "order_id_format");
        let missing = get(&client, &url, Some(READER), "never-posted").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing:?}");
        // No status stage runs here: the accepted order is Placed until it is validated.
        let placed = get(&client, &url, Some(READER), id).await;
        assert_eq!(placed.status, StatusCode::OK, "{placed:?}");
        assert_eq!(
            (&placed.body["state"], &placed.body["version"]),
            (&Value::from("Placed"), &Value::from(0))
        );
        let openapi = client
            .get(format!("{url}/v1/openapi.json"))
            .send()
            .await
            .expect("answered");
        assert_eq!(openapi.status(), StatusCode::OK);

        // Bursts of concurrent POSTs to the one-record queue until one overflows it.
        let mut burst_accepted = Vec::new();
        let mut overflowed = None;
        for _ in 0..20 {
            let bodies: Vec<OrderPlaced> = (0..32).map(|_| orders_gen.valid_order()).collect();
            let answers = futures_join(bodies.iter().map(|order| {
                let (client, narrow) = (client.clone(), narrow.url.clone());
                let body = json(order);
                async move { post(&client, &narrow, Some(SHOP), None, body).await }
            }))
            .await;
            for (order, answer) in bodies.iter().zip(answers) {
                match answer.status {
                    StatusCode::ACCEPTED => burst_accepted.push(order.order_id.clone()),
                    StatusCode::TOO_MANY_REQUESTS => overflowed = Some(answer),
                    other => panic!("unexpected {other}: {answer:?}"),
                }
            }
            if overflowed.is_some() {
                break;
            }
        }
        let overflowed = overflowed.expect("a burst overflowed the one-record queue");
        assert_eq!(overflowed.body["error"], "queue_full");
        assert_eq!(overflowed.retry_after.as_deref(), Some("1"));
        burst_accepted
    });
    accepted.extend(burst_accepted);

    let in_kafka = keys_in(&bootstrap, &orders);
    for id in &accepted {
        assert_eq!(in_kafka.get(id), Some(&1), "{id} accepted: once in Kafka");
    }
    assert_eq!(
        in_kafka.values().sum::<usize>(),
        accepted.len(),
        "nothing but the accepted orders is in Kafka: {in_kafka:?}"
    );
    drop((gateway, narrow));
}

/// Runs every future concurrently and returns their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("request task"));
    }
    outputs
}

/// When an independent read_committed reader first saw each order's `StatusChanged`.
fn tail_commits(bootstrap: &str, topic: &str, stop: Arc<AtomicBool>) -> HashMap<String, Instant> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("tail"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("tail consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assigned");
    let mut seen = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(10)) {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            seen.entry(key).or_insert_with(Instant::now);
        }
    }
    seen
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn get_shows_the_status_stage_commit_within_one_second() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = Pipeline::create(&bootstrap, 3);
    let webhook = WebhookReceiver::start(0);
    let _workers = start_stages(
        &pipeline,
        &bootstrap,
        &[Stage::Validate, Stage::Status],
        "0",
        &webhook,
    );
    let gateway = Gateway::start(&bootstrap, &pipeline.orders, &pipeline.changes, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let tail = {
        let (bootstrap, topic, stop) = (bootstrap.clone(), pipeline.changes.clone(), stop.clone());
        std::thread::spawn(move || tail_commits(&bootstrap, &topic, stop))
    };
    let mut orders = generator(1919);
    let count = 20;
    let mut shown = Vec::new();
    runtime().block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..count {
            let order = orders.valid_order();
            let posted = post(&client, &gateway.url, Some(SHOP), None, json(&order)).await;
            assert_eq!(posted.status, StatusCode::ACCEPTED, "{posted:?}");
            let id = order.order_id.clone();
            // Polled every 10 ms, not with the kit's backing-off wait: the moment GET first shows
            // the order is the measurement, and a poll interval up to 1 s would inflate it.
            let deadline = Instant::now() + READY_TIMEOUT;
            let body = loop {
                let answer = get(&client, &gateway.url, Some(READER), &id).await;
                if answer.body["state"] == "Validated" {
                    break answer.body;
                }
                assert!(
                    Instant::now() < deadline,
                    "{id} not validated in time: {answer:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let seen_at = Instant::now();
            assert_eq!(body["version"], 1, "{body}");
            assert_eq!(body["history"][0]["from"], "Placed", "{body}");
            assert_eq!(body["history"][0]["to"], "Validated", "{body}");
            shown.push((id, seen_at));
        }
    });
    stop.store(true, Ordering::Relaxed);
    let committed = tail.join().expect("tail thread");
    let mut lags: Vec<Duration> = shown
        .iter()
        .map(|(id, shown_at)| {
            let committed_at = committed
                .get(id)
                .unwrap_or_else(|| panic!("{id} shown by GET but never committed"));
            shown_at.saturating_duration_since(*committed_at)
        })
        .collect();
    lags.sort();
    eprintln!(
        "GET after the status stage's commit, {count} orders: median {:?}, max {:?}",
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    assert!(
        lags[lags.len() - 1] <= Duration::from_secs(1),
        "read-your-writes promises 1 s: {lags:?}; gateway log:\n{}",
        gateway.process.log_tail()
    );
}

/// Orders attempted in the broker-restart run; `ORDERPIPE_INTAKE_ORDERS` overrides it.
fn restart_orders() -> usize {
    std::env::var("ORDERPIPE_INTAKE_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000)
}

/// Each order's answer, in the order the loaders got them.
#[derive(Debug, Default)]
struct Outcomes {
    by_order: Mutex<HashMap<String, StatusCode>>,
    accepted: AtomicUsize,
    unavailable: AtomicUsize,
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn a_broker_restart_mid_load_answers_503_and_every_accepted_order_is_in_kafka_exactly_once() {
    let runtime = runtime();
    // A private broker: the shared one must not be restarted under other tests.
    let mut stack = runtime
        .block_on(
            Stack::builder(&unique_name("intake-restart"))
                .kafka_only()
                .start(),
        )
        .expect("private Kafka");
    let bootstrap = stack.kafka_bootstrap().expect("bootstrap").to_owned();
    let orders = unique_name("intake-orders");
    let changes = unique_name("intake-changes");
    create_topics(&bootstrap, &[(&orders, 3), (&changes, 1)]).expect("topics");
    let gateway = Gateway::start(
        &bootstrap,
        &orders,
        &changes,
        &[("ORDERPIPE_INTAKE_DELIVERY_TIMEOUT_MS", "3000")],
    );
    let total = restart_orders();
    let mut generator = generator(4242);
    let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..total)
            .map(|_| {
                let order = generator.valid_order();
                (order.order_id.clone(), json(&order))
            })
            .collect(),
    );
    let outcomes = Arc::new(Outcomes::default());
    let next = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let client = reqwest::Client::new();
        // Shops that send each order once and wait as Retry-After asks after a refusal: an order
        // answered 503 may or may not be in Kafka, so sending it again could duplicate it.
        let loaders: Vec<_> = (0..8)
            .map(|_| {
                let (client, url) = (client.clone(), gateway.url.clone());
                let (bodies, outcomes, next) = (bodies.clone(), outcomes.clone(), next.clone());
                tokio::spawn(async move {
                    while let Some((id, body)) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let answer = post(&client, &url, Some(SHOP), None, body.clone()).await;
                        match answer.status {
                            StatusCode::ACCEPTED => {
                                outcomes.accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                                if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                                    outcomes.unavailable.fetch_add(1, Ordering::Relaxed);
                                }
                                assert_eq!(answer.retry_after.as_deref(), Some("1"));
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            other => panic!("unexpected {other} for {id}: {answer:?}"),
                        }
                        outcomes
                            .by_order
                            .lock()
                            .expect("outcomes")
                            .insert(id.clone(), answer.status);
                    }
                })
            })
            .collect();

        wait_until("30% of the orders accepted", READY_TIMEOUT, || {
            let accepted = outcomes.accepted.load(Ordering::Relaxed);
            async move { (accepted * 10 >= total * 3).then_some(()) }
        })
        .await
        .expect("in time");
        stack.stop_kafka().await.expect("broker stopped");
        wait_until("a 503 while the broker is down", READY_TIMEOUT, || {
            let unavailable = outcomes.unavailable.load(Ordering::Relaxed);
            async move { (unavailable > 0).then_some(()) }
        })
        .await
        .expect("in time");
        let (status, reason) = gateway.process.get("/readyz").expect("readyz answers");
        assert_eq!(status, 503, "not ready while Kafka is down: {reason}");
        let before_restart = outcomes.accepted.load(Ordering::Relaxed);
        stack.start_kafka().await.expect("broker restarted");
        for loader in loaders {
            loader.await.expect("loader");
        }
        assert!(
            outcomes.accepted.load(Ordering::Relaxed) > before_restart,
            "orders are accepted again after the restart; gateway log:\n{}",
            gateway.process.log_tail()
        );
    });

    let in_kafka = keys_in(&bootstrap, &orders);
    let by_order = outcomes.by_order.lock().expect("outcomes");
    assert_eq!(by_order.len(), total, "every order got an answer");
    let mut accepted = 0;
    for (id, status) in by_order.iter() {
        let copies = in_kafka.get(id).copied().unwrap_or(0);
        if *status == StatusCode::ACCEPTED {
            accepted += 1;
            assert_eq!(copies, 1, "{id} got a 202: exactly once in Kafka");
        } else {
            assert!(copies <= 1, "{id} got {status}: at most once in Kafka");
        }
    }
    assert!(
        in_kafka.keys().all(|id| by_order.contains_key(id)),
        "only the orders sent are in Kafka"
    );
    eprintln!(
        "broker restart: {total} orders sent, {accepted} accepted (each once in Kafka), {} \
         answered 503, {} records in Kafka",
        outcomes.unavailable.load(Ordering::Relaxed),
        in_kafka.values().sum::<usize>()
    );
    drop(gateway);
    runtime
        .block_on(stack.stop())
        .expect("private Kafka stopped");
}
