//! What the worker's tests on the local stack share beyond the stack's own kit (`orderpipe_stack`:
//! the broker, topics, reading a topic to its end, a group's offsets, waits): the load they
//! produce, the exactly-once check of the validate stage's outputs, and worker processes started
//! from the built binary. Waits are on conditions with timeouts, never fixed sleeps.

#![allow(dead_code)] // each test binary uses a different subset

pub mod pipeline;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use orderpipe_api::contract::{KafkaConnection, env};
use orderpipe_orders::generator::Expected;
use orderpipe_orders::headers;
use orderpipe_stack::{Isolation, Record, committed_offsets, create_topics, read_all, unique_name};
use orderpipe_worker::loadgen::{self, Expectation, LoadMode, LoadRecord, LoadSpec};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// The topics the validate stage reads and writes.
#[derive(Debug, Clone)]
pub struct ValidateTopics {
    pub input: String,
    pub validated: String,
    pub rejected: String,
    pub dead_letter: String,
    /// The validate stage's consumer group (to tell a lost order from an unprocessed one).
    pub group: String,
}

/// A count from the environment, or `default`.
pub fn count_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

pub fn orders(count: u64, seed: u64) -> LoadSpec {
    LoadSpec {
        mode: LoadMode::Orders,
        count,
        rate: None,
        keys: 1,
        invalid_share: 0.05,
        garbage_share: 0.03,
        duplicate_share: 0.03,
        seed,
    }
}

pub fn produce(bootstrap: &str, topic: &str, spec: &LoadSpec) {
    loadgen::produce(&KafkaConnection::plaintext(bootstrap), topic, spec, |_| {})
        .expect("load produced");
}

/// Produces one record as it is (for inputs the load generator does not make), up to the broker's
/// default size limit (1 MiB), and waits for the broker's acknowledgement.
pub fn produce_raw(bootstrap: &str, topic: &str, key: &[u8], payload: &[u8]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "1048576")
        .create()
        .expect("producer");
    producer
        .send(BaseRecord::to(topic).key(key).payload(payload))
        .map_err(|(error, _)| error)
        .expect("record queued");
    producer
        .flush(Duration::from_secs(30))
        .expect("record acknowledged");
}

/// A record's key and value.
type RecordBytes = (Option<Vec<u8>>, Vec<u8>);

/// What validate must do with each input record, found by its bytes: a duplicate has the bytes of
/// the submission it repeats, so each entry lists the expectations in production order (one key
/// stays in one partition, so input offset order is production order).
pub fn expectations(specs: &[LoadSpec]) -> HashMap<RecordBytes, VecDeque<Expected>> {
    let mut expected: HashMap<_, VecDeque<Expected>> = HashMap::new();
    for spec in specs {
        for LoadRecord {
            key,
            payload,
            expectation,
        } in loadgen::generate(spec)
        {
            if let Expectation::Order(order) = expectation {
                expected.entry((key, payload)).or_default().push_back(order);
            }
        }
    }
    expected
}

fn keys(records: &[Record]) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| r.key.clone().unwrap_or_default())
        .collect()
}

/// Checks the committed outputs of the pipeline against the generated input (`specs`, produced
/// in this order): each valid order exactly once and in its partition's input order, one rejection
/// per invalid submission, one dead letter (original bytes, reason, origin) per garbage record,
/// nothing for duplicates.
pub fn assert_exactly_once(bootstrap: &str, pipeline: &ValidateTopics, specs: &[LoadSpec]) {
    let mut expected = expectations(specs);
    let input = read_all(bootstrap, &pipeline.input, Isolation::ReadCommitted)
        .expect("topic read to its end");
    assert_eq!(
        input.len() as u64,
        specs.iter().map(|s| s.count).sum::<u64>()
    );
    let mut judgement: HashMap<(i32, i64), Expected> = HashMap::new();
    for record in &input {
        let bytes = (
            record.key.clone(),
            record.payload.clone().unwrap_or_default(),
        );
        let judged = expected
            .get_mut(&bytes)
            .and_then(VecDeque::pop_front)
            .expect("every input record was generated");
        judgement.insert((record.partition, record.offset), judged);
    }
    let judged = |record: &Record| judgement[&(record.partition, record.offset)].clone();

    let mut valid_by_partition: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    let (mut invalid, mut garbage) = (0, 0);
    for record in &input {
        match judged(record) {
            Expected::Valid => valid_by_partition
                .entry(record.partition)
                .or_default()
                .push(record.key.clone().unwrap_or_default()),
            Expected::Invalid { .. } => invalid += 1,
            Expected::Garbage { .. } => garbage += 1,
            Expected::Duplicate => {}
        }
    }

    let validated = read_all(bootstrap, &pipeline.validated, Isolation::ReadCommitted)
        .expect("topic read to its end");
    let valid_total: usize = valid_by_partition.values().map(Vec::len).sum();
    if validated.len() != valid_total {
        let seen: HashSet<Vec<u8>> = validated.iter().filter_map(|r| r.key.clone()).collect();
        let committed = committed_offsets(bootstrap, &pipeline.group, &pipeline.input)
            .expect("the group's committed offsets");
        let missing: Vec<(i32, i64)> = input
            .iter()
            .filter(|r| judged(r) == Expected::Valid)
            .filter(|r| !seen.contains(&r.key.clone().unwrap_or_default()))
            .map(|r| (r.partition, r.offset))
            .collect();
        let (lost, unprocessed): (Vec<&(i32, i64)>, Vec<_>) = missing
            .iter()
            .partition(|(partition, offset)| committed.get(partition).is_some_and(|c| offset < c));
        panic!(
            "each valid order exactly once: {} of {valid_total} valid orders in {}; missing: {} \
             below the group's committed offsets (lost), {} at or above them (not processed), \
             first: {:?}; committed: {committed:?}",
            validated.len(),
            pipeline.validated,
            lost.len(),
            unprocessed.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
        );
    }
    for (partition, keys_in_input_order) in &valid_by_partition {
        let output: Vec<Record> = validated
            .iter()
            .filter(|r| r.partition == *partition)
            .cloned()
            .collect();
        // Same partitioner (murmur2) and partition count on both sides: same partition number.
        assert_eq!(
            &keys(&output),
            keys_in_input_order,
            "partition {partition} in input order"
        );
    }

    let rejected = read_all(bootstrap, &pipeline.rejected, Isolation::ReadCommitted)
        .expect("topic read to its end");
    assert_eq!(
        rejected.len(),
        invalid,
        "one rejection per invalid submission"
    );

    let dead_letters = read_all(bootstrap, &pipeline.dead_letter, Isolation::ReadCommitted)
        .expect("topic read to its end");
    assert_eq!(
        dead_letters.len(),
        garbage,
        "one dead letter per garbage record"
    );
    for dead in &dead_letters {
        let partition: i32 = dead
            .header(headers::ORIGINAL_PARTITION)
            .expect("partition")
            .parse()
            .expect("number");
        let offset: i64 = dead
            .header(headers::ORIGINAL_OFFSET)
            .expect("offset")
            .parse()
            .expect("number");
        let original = input
            .iter()
            .find(|r| r.partition == partition && r.offset == offset)
            .expect("the original record");
        assert_eq!(dead.payload, original.payload, "original bytes");
        assert_eq!(dead.key, original.key, "original key");
        assert_eq!(
            dead.header(headers::ORIGINAL_TOPIC),
            Some(pipeline.input.as_str())
        );
        assert_eq!(dead.header(headers::ERROR_STAGE), Some("validate"));
        let Expected::Garbage { reason } = judged(original) else {
            panic!("dead letter for a record that is not garbage");
        };
        assert_eq!(dead.header(headers::ERROR_REASON), Some(reason.code()));
    }
}

/// The validate stage's topics and group for one test.
#[derive(Debug, Clone)]
pub struct ValidatePipeline {
    pub input: String,
    pub validated: String,
    pub rejected: String,
    pub dead_letter: String,
    pub state: String,
    pub group: String,
}

impl ValidatePipeline {
    /// Creates the topics: input and state co-partitioned with `partitions` partitions.
    pub fn create(bootstrap: &str, partitions: i32) -> Self {
        let id = unique_name("wt");
        let pipeline = Self {
            input: format!("{id}.orders"),
            validated: format!("{id}.validated"),
            rejected: format!("{id}.rejected"),
            dead_letter: format!("{id}.dlq"),
            state: format!("{id}.state"),
            group: format!("{id}.validate"),
        };
        create_topics(
            bootstrap,
            &[
                (&pipeline.input, partitions),
                (&pipeline.validated, partitions),
                (&pipeline.rejected, 1),
                (&pipeline.dead_letter, 1),
                (&pipeline.state, partitions),
            ],
        )
        .expect("topics created");
        pipeline
    }

    pub fn topics(&self) -> ValidateTopics {
        ValidateTopics {
            input: self.input.clone(),
            validated: self.validated.clone(),
            rejected: self.rejected.clone(),
            dead_letter: self.dead_letter.clone(),
            group: self.group.clone(),
        }
    }

    /// The worker contract's environment for a validate worker of this pipeline.
    pub fn worker_env(
        &self,
        bootstrap: &str,
        pod: &str,
        metrics_port: u16,
    ) -> Vec<(String, String)> {
        [
            (env::PIPELINE, "wt"),
            (env::NAMESPACE, "test"),
            (env::STAGE, "validate"),
            (env::POD_NAME, pod),
            (env::PROCESSOR, "validate"),
            (env::BOOTSTRAP_SERVERS, bootstrap),
            (env::INPUT_TOPIC, &self.input),
            (
                env::OUTPUTS,
                &format!("validated={},rejected={}", self.validated, self.rejected),
            ),
            (env::DEAD_LETTER_TOPIC, &self.dead_letter),
            (env::STATE_TOPIC, &self.state),
            (env::CONSUMER_GROUP, &self.group),
            (env::METRICS_PORT, &metrics_port.to_string()),
            (env::SHUTDOWN_GRACE_SECONDS, "20"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// A worker process started from the built binary; killed when dropped.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    pub log: PathBuf,
    pub metrics_port: u16,
}

impl WorkerProcess {
    /// `orderpipe-worker run`: one stage.
    pub fn spawn(name: &str, env: &[(String, String)]) -> Self {
        Self::spawn_mode(name, "run", env)
    }

    /// `orderpipe-worker <mode>` (`run`, `intake`) with the environment `env`.
    pub fn spawn_mode(name: &str, mode: &str, env: &[(String, String)]) -> Self {
        let dir = std::env::temp_dir().join("orderpipe-worker-tests");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{}.log", unique_name(name)));
        let file = File::create(&log).expect("log file");
        let metrics_port = env
            .iter()
            .find(|(k, _)| k == env::METRICS_PORT)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_default();
        let child = Command::new(env!("CARGO_BIN_EXE_orderpipe-worker"))
            .arg(mode)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("worker starts");
        Self {
            child,
            log,
            metrics_port,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"))
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal delivered");
    }

    /// SIGTERM, then asserts a clean exit (0) within 40 s: the graceful shutdown finished its
    /// work, committed and left the group.
    pub fn stop_gracefully(&mut self) {
        self.signal(Signal::SIGTERM);
        let exit = self.wait_exit(Duration::from_secs(40));
        assert!(
            exit.success(),
            "graceful exit, got {exit}; log:\n{}",
            self.log_tail()
        );
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {timeout:?}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How the process ended, or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// GET of one of the worker's endpoints: status code and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        plain_http::get(&url)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

mod plain_http {
    //! A blocking GET without an HTTP client's blocking feature: a tiny HTTP/1.0 exchange is
    //! enough for the worker's own endpoints.
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub fn get(url: &str) -> Option<(u16, String)> {
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_once('/')?;
        let mut stream = TcpStream::connect(host).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }
}
