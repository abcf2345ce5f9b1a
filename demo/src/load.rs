//! The order load: the worker's seeded generator (`orderpipe_worker::loadgen::generate`) POSTed
//! at a steady rate to the pipeline's intake gateway, as a shop's checkout would, until its count
//! is reached or it is stopped (Ctrl-C in the demo). It keeps what the pipeline must do with every
//! order the gateway accepted: the books are checked against that.
//!
//! Every copy of an order (the generator re-submits some) goes to the same gateway replica, whose
//! idempotency ledger answers the repeat without producing it again (`Idempotent-Replayed`); an
//! order the gateway refuses (400: invalid, or not an order at all) never reaches Kafka. Answers
//! that say "later" (429, 503, 409 `request_in_flight`) are retried after their `Retry-After`, as
//! a client should.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orderpipe_orders::Rule;
use orderpipe_orders::generator::Expected;
use orderpipe_worker::loadgen::{Expectation, LoadMode, LoadRecord, LoadSpec, generate};
use reqwest::StatusCode;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::DemoError;

/// Requests in flight at most: enough for the demo's rates at a few milliseconds each.
const IN_FLIGHT: usize = 64;
/// How long one order may keep being answered "later" before the load fails.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// The wait before a retry whose answer named none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(200);

/// Where the load goes: the gateway replicas' base URLs and a token with `orders:write`.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub urls: Vec<String>,
    pub token: String,
}

/// What to produce.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Orders per second.
    pub rate: u32,
    /// Stop after this many orders; `None`: until stopped.
    pub count: Option<u64>,
    /// Share of orders that fail validation (rejected).
    pub invalid_share: f64,
    /// Share of records that are not orders at all (dead-lettered).
    pub garbage_share: f64,
    /// Share of re-submitted orders (recognised and dropped by validate).
    pub duplicate_share: f64,
    /// Seeds the generator; order ids embed it, so loads with different seeds never share ids.
    pub seed: u64,
}

/// What a finished load sent, by what the pipeline must do with it.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Orders POSTed (copies included), whatever the answer.
    pub posted: u64,
    /// Copies the gateway answered from its ledger (202 `Idempotent-Replayed`): not in Kafka again.
    pub replayed: u64,
    /// Orders the gateway refused with 400 (invalid, or not an order): never in Kafka.
    pub refused: u64,
    /// Orders the gateway put into Kafka: what the pipeline received.
    pub sent: u64,
    pub valid: u64,
    pub invalid: u64,
    pub garbage: u64,
    pub duplicates: u64,
    /// Keys (order ids) of the valid orders.
    pub valid_keys: HashSet<Vec<u8>>,
    /// Re-submissions sent per valid order id (only those re-submitted).
    pub resubmitted: HashMap<Vec<u8>, u64>,
    /// Keys of the invalid orders (`""` for the ones sent without a key) and of the garbage: a
    /// dead letter of a faulty release is told apart by its key.
    pub invalid_keys: HashSet<Vec<u8>>,
    pub garbage_keys: HashSet<Vec<u8>>,
}

impl Tally {
    fn add(&mut self, key: Option<&[u8]>, expected: &Expected) {
        self.sent += 1;
        let key = key.map(<[u8]>::to_vec).unwrap_or_default();
        match expected {
            Expected::Valid => {
                self.valid += 1;
                self.valid_keys.insert(key);
            }
            Expected::Duplicate => {
                self.duplicates += 1;
                *self.resubmitted.entry(key).or_default() += 1;
            }
            Expected::Invalid { .. } => {
                self.invalid += 1;
                self.invalid_keys.insert(key);
            }
            Expected::Garbage { .. } => {
                self.garbage += 1;
                self.garbage_keys.insert(key);
            }
        }
    }

    /// Both loads together (distinct seeds: no shared order ids).
    pub fn merge(&mut self, other: Tally) {
        self.posted += other.posted;
        self.replayed += other.replayed;
        self.refused += other.refused;
        self.sent += other.sent;
        self.valid += other.valid;
        self.invalid += other.invalid;
        self.garbage += other.garbage;
        self.duplicates += other.duplicates;
        self.valid_keys.extend(other.valid_keys);
        self.resubmitted.extend(other.resubmitted);
        self.invalid_keys.extend(other.invalid_keys);
        self.garbage_keys.extend(other.garbage_keys);
    }
}

/// A load in progress.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    posted: Arc<AtomicU64>,
    started: Instant,
    task: tokio::task::JoinHandle<Result<Tally, DemoError>>,
}

impl Load {
    /// Starts POSTing `options` to `gateway`.
    pub fn start(gateway: Gateway, options: LoadOptions) -> Result<Load, DemoError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(DemoError::Http)?;
        let stop = Arc::new(AtomicBool::new(false));
        let posted = Arc::new(AtomicU64::new(0));
        let spec = LoadSpec {
            mode: LoadMode::Orders,
            count: options.count.unwrap_or(u64::MAX),
            rate: None,
            keys: 0,
            invalid_share: options.invalid_share,
            garbage_share: options.garbage_share,
            duplicate_share: options.duplicate_share,
            seed: options.seed,
        };
        let started = Instant::now();
        let task = tokio::spawn(post_all(
            client,
            gateway,
            spec,
            options.rate,
            Arc::clone(&stop),
            Arc::clone(&posted),
        ));
        Ok(Load {
            stop,
            posted,
            started,
            task,
        })
    }

    /// Orders POSTed so far.
    pub fn sent(&self) -> u64 {
        self.posted.load(Ordering::Relaxed)
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether every order was answered (or the load failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops sending (if still sending), waits for every answer, returns the tally.
    pub async fn finish(self) -> Result<Tally, DemoError> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.map_err(|_| DemoError::LoadThread)?
    }
}

/// What the gateway finally answered for one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 202: produced now.
    Accepted,
    /// 202 `Idempotent-Replayed`: produced by an earlier copy.
    Replayed,
    /// 400: refused, nothing produced.
    Refused,
}

async fn post_all(
    client: reqwest::Client,
    gateway: Gateway,
    spec: LoadSpec,
    rate: u32,
    stop: Arc<AtomicBool>,
    posted: Arc<AtomicU64>,
) -> Result<Tally, DemoError> {
    let started = tokio::time::Instant::now();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let gateway = Arc::new(gateway);
    let mut answers = JoinSet::new();
    let mut answered = Answers::default();
    for (n, record) in generate(&spec).map(as_posted).enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Pacing, not synchronisation: order n is due n/rate seconds after the start.
        let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
        tokio::time::sleep_until(due).await;
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .map_err(|_| DemoError::LoadThread)?;
        let (client, gateway) = (client.clone(), Arc::clone(&gateway));
        answers.spawn(async move {
            let outcome = post(&client, &gateway, &record).await;
            drop(slot);
            (record, outcome)
        });
        while let Some(answer) = answers.try_join_next() {
            answered.count(answer)?;
            posted.store(answered.tally.posted, Ordering::Relaxed);
        }
    }
    while let Some(answer) = answers.join_next().await {
        answered.count(answer)?;
        posted.store(answered.tally.posted, Ordering::Relaxed);
    }
    answered.into_tally()
}

type Answer = (LoadRecord, Result<Outcome, DemoError>);

/// The answers so far. The copies of a valid order race: whichever the gateway takes first is
/// produced, the others are answered from its ledger (or, had it forgotten the order, produced
/// again for validate to drop). So they are counted per order, and only at the end does the
/// tally say which was the order and which its re-submissions.
#[derive(Debug, Default)]
struct Answers {
    tally: Tally,
    /// Per valid order (by key): copies produced, copies answered from the ledger.
    copies: HashMap<Vec<u8>, (u64, u64)>,
}

impl Answers {
    fn count(&mut self, answer: Result<Answer, tokio::task::JoinError>) -> Result<(), DemoError> {
        let (record, outcome) = answer.map_err(|_| DemoError::LoadThread)?;
        self.tally.posted += 1;
        let Expectation::Order(expected) = &record.expectation else {
            return Ok(());
        };
        let key = record.key.clone().unwrap_or_default();
        match (outcome?, expected) {
            (Outcome::Accepted, Expected::Valid | Expected::Duplicate) => {
                self.copies.entry(key).or_default().0 += 1;
            }
            (Outcome::Replayed, Expected::Valid | Expected::Duplicate) => {
                self.copies.entry(key).or_default().1 += 1;
            }
            (Outcome::Accepted, _) => self.tally.add(record.key.as_deref(), expected),
            (Outcome::Refused, Expected::Invalid { .. } | Expected::Garbage { .. }) => {
                self.tally.refused += 1;
            }
            (outcome, expected) => {
                return Err(DemoError::Gateway(format!(
                    "order {}: the gateway answered {outcome:?} to a copy that is {expected:?}",
                    String::from_utf8_lossy(&key)
                )));
            }
        }
        Ok(())
    }

    fn into_tally(self) -> Result<Tally, DemoError> {
        let mut tally = self.tally;
        for (key, (produced, replayed)) in self.copies {
            if produced == 0 {
                return Err(DemoError::Gateway(format!(
                    "order {}: every copy was answered as a replay, none was produced",
                    String::from_utf8_lossy(&key)
                )));
            }
            tally.add(Some(&key), &Expected::Valid);
            for _ in 1..produced {
                tally.add(Some(&key), &Expected::Duplicate);
            }
            tally.replayed += replayed;
        }
        Ok(tally)
    }
}

/// The record as the pipeline receives it over HTTP. There is no Kafka key to get wrong: the
/// gateway keys every order by its `orderId`, so the generator's key mutations (a missing or
/// mismatched key, which validate rejects from a Kafka producer) are valid orders here.
fn as_posted(record: LoadRecord) -> LoadRecord {
    let Expectation::Order(Expected::Invalid {
        rule: Rule::KeyMatchesOrderId,
        ..
    }) = &record.expectation
    else {
        return record;
    };
    let order_id = serde_json::from_slice::<serde_json::Value>(&record.payload)
        .ok()
        .and_then(|order| order["orderId"].as_str().map(str::to_owned));
    LoadRecord {
        key: order_id.map(String::into_bytes),
        expectation: Expectation::Order(Expected::Valid),
        ..record
    }
}

/// POSTs one order to the replica its key picks, retrying while the answer says "later".
async fn post(
    client: &reqwest::Client,
    gateway: &Gateway,
    record: &LoadRecord,
) -> Result<Outcome, DemoError> {
    let url = format!("{}/v1/orders", replica(gateway, record.key.as_deref()));
    let give_up = Instant::now() + RETRY_FOR;
    loop {
        let response = client
            .post(&url)
            .bearer_auth(&gateway.token)
            .header("content-type", "application/json")
            .body(record.payload.clone())
            .send()
            .await;
        let retry_after = match response {
            Ok(response) => {
                let replayed = response.headers().contains_key("idempotent-replayed");
                match response.status() {
                    StatusCode::ACCEPTED if replayed => return Ok(Outcome::Replayed),
                    StatusCode::ACCEPTED => return Ok(Outcome::Accepted),
                    StatusCode::BAD_REQUEST => return Ok(Outcome::Refused),
                    StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::CONFLICT
                        if Instant::now() < give_up =>
                    {
                        retry_after(&response)
                    }
                    status => {
                        let body = response.text().await.unwrap_or_default();
                        return Err(DemoError::Gateway(format!(
                            "POST {url} answered {status}: {body}"
                        )));
                    }
                }
            }
            // A replica that went away (restarted, rescheduled) answers on the next try or never.
            Err(_) if Instant::now() < give_up => DEFAULT_RETRY_AFTER,
            Err(error) => return Err(DemoError::Http(error)),
        };
        tokio::time::sleep(retry_after).await;
    }
}

/// The replica every copy of an order goes to: the one whose ledger knows the order.
fn replica<'a>(gateway: &'a Gateway, key: Option<&[u8]>) -> &'a str {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    let index = usize::try_from(hasher.finish() % gateway.urls.len().max(1) as u64).unwrap_or(0);
    gateway.urls.get(index).map_or("", String::as_str)
}

fn retry_after(response: &reqwest::Response) -> Duration {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(key: &str, expected: Expected, outcome: Outcome) -> Answer {
        let record = LoadRecord {
            key: Some(key.as_bytes().to_vec()),
            payload: Vec::new(),
            expectation: Expectation::Order(expected),
        };
        (record, Ok(outcome))
    }

    #[test]
    fn racing_copies_count_the_one_produced_as_the_order_and_the_rest_as_replays() {
        let mut answers = Answers::default();
        // The re-submission won the race: it was produced, the original answered from the ledger.
        for (key, expected, outcome) in [
            ("a", Expected::Duplicate, Outcome::Accepted),
            ("a", Expected::Valid, Outcome::Replayed),
            ("b", Expected::Valid, Outcome::Accepted),
            // A replica that forgot b produced its re-submission again: validate drops it.
            ("b", Expected::Duplicate, Outcome::Accepted),
        ] {
            answers
                .count(Ok(answer(key, expected, outcome)))
                .expect("counted");
        }
        let tally = answers.into_tally().expect("every order produced once");
        assert_eq!((tally.posted, tally.sent, tally.replayed), (4, 3, 1));
        assert_eq!((tally.valid, tally.duplicates), (2, 1));
        assert_eq!(tally.resubmitted.get(b"b".as_slice()), Some(&1));
        assert_eq!(tally.resubmitted.get(b"a".as_slice()), None);
    }

    #[test]
    fn a_refused_valid_order_fails_the_load() {
        let mut answers = Answers::default();
        let refused = answers.count(Ok(answer("a", Expected::Valid, Outcome::Refused)));
        assert!(matches!(refused, Err(DemoError::Gateway(_))), "{refused:?}");
    }
}
