//! Helpers for the worker's tests against a real broker (`KAFKA_BOOTSTRAP_SERVERS`, set by
//! `make test-e2e` with the local stack up): topics, reading a topic to its end, the group's
//! committed offsets, and worker processes started from the built binary. Waits are on
//! conditions with timeouts, never fixed sleeps.

#![allow(dead_code)] // each test binary uses a different subset

pub mod pipeline;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet, VecDeque};

use orderpipe_api::contract::{KafkaConnection, env};
use orderpipe_orders::generator::Expected;
use orderpipe_orders::headers;
use orderpipe_worker::loadgen::{self, Expectation, LoadMode, LoadRecord, LoadSpec};
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub const ENV_BOOTSTRAP: &str = "KAFKA_BOOTSTRAP_SERVERS";

/// The broker of the local stack.
pub fn bootstrap() -> String {
    std::env::var(ENV_BOOTSTRAP).unwrap_or_else(|_| {
        panic!("{ENV_BOOTSTRAP} is not set: start the local stack (make test-e2e)")
    })
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `condition` holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An admin client and the runtime to block on its calls.
fn admin(bootstrap: &str) -> (tokio::runtime::Runtime, AdminClient<DefaultClientContext>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let admin = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    (runtime, admin)
}

/// Creates the topics (replication 1) and waits until the broker reports their leaders.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let (runtime, admin) = admin(bootstrap);
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime
        .block_on(admin.create_topics(new.iter(), &options))
        .expect("create topics");
    for result in results {
        result.expect("topic created");
    }
    let probe = consumer(bootstrap, None, "read_committed");
    for (name, partitions) in topics {
        wait_until(
            &format!("leaders of {name}"),
            Duration::from_secs(30),
            || {
                (0..*partitions).all(|p| {
                    probe
                        .fetch_watermarks(name, p, Duration::from_secs(5))
                        .is_ok()
                })
            },
        );
    }
}

/// Sets one config of `topic` (e.g. a lowered `max.message.bytes`) and waits for the broker's answer.
pub fn set_topic_config(bootstrap: &str, topic: &str, key: &str, value: &str) {
    let (runtime, admin) = admin(bootstrap);
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime
        .block_on(admin.alter_configs([&change], &options))
        .expect("alter configs");
    for result in results {
        result.map_err(|(_, code)| code).expect("topic config set");
    }
}

fn consumer(bootstrap: &str, group: Option<&str>, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            group.map_or_else(|| unique("reader"), str::to_owned),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// A record as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The partitions of `topic`. Right after a broker (re)start the metadata may list the topic with
/// an error and no partitions; such an answer is retried, never taken for "no partitions" (that
/// made a drain check compare two empty maps and declare an unfinished stage drained).
fn partitions(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    retrying(&format!("partitions of {topic}"), || {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
        let described = metadata.topics().iter().find(|t| t.name() == topic);
        match described {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().iter().map(|p| p.id()).collect())
            }
            _ => Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            )),
        }
    })
}

/// Everything a reader with `isolation` (`read_committed` or `read_uncommitted`) sees in
/// `topic` now, in partition then offset order.
pub fn read_all(bootstrap: &str, topic: &str, isolation: &str) -> Vec<Record> {
    let consumer = consumer(bootstrap, None, isolation);
    let ids = partitions(&consumer, topic);
    let mut assignment = TopicPartitionList::new();
    for &partition in &ids {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end: BTreeMap<i32, bool> = ids.iter().map(|p| (*p, false)).collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.values().any(|done| !done) {
        assert!(
            Instant::now() < deadline,
            "reading {topic} to its end timed out"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers: message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                                (h.key.to_owned(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition, true);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// Repeats a broker call that fails while the broker is (re)starting, for up to a minute.
fn retrying<T>(what: &str, mut call: impl FnMut() -> Result<T, KafkaError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call() {
            Ok(value) => return value,
            Err(error) if Instant::now() < deadline => {
                eprintln!("{what}: {error}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
}

/// The end (last stable offset) of every partition of `topic`.
pub fn end_offsets(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer = consumer(bootstrap, None, "read_committed");
    partitions(&consumer, topic)
        .into_iter()
        .map(|p| {
            let (_, high) = retrying("watermarks", || {
                consumer.fetch_watermarks(topic, p, Duration::from_secs(10))
            });
            (p, high)
        })
        .collect()
}

/// The offsets `group` committed for `topic` (0 where nothing is committed yet).
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer = consumer(bootstrap, Some(group), "read_committed");
    let mut list = TopicPartitionList::new();
    for partition in partitions(&consumer, topic) {
        list.add_partition(topic, partition);
    }
    // Right after a broker (re)start the group coordinator may still be loading: retry.
    let committed = retrying("committed offsets", || {
        consumer.committed_offsets(list.clone(), Duration::from_secs(10))
    });
    committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(offset) => offset,
                _ => 0,
            };
            (e.partition(), offset)
        })
        .collect()
}

/// Whether `group` has committed every record currently visible in `topic`: nothing a
/// read_committed reader finds after the committed offsets. (Comparing with the end offsets is not
/// enough: a transactional topic ends with commit markers, which no consumer ever commits past.)
pub fn caught_up(bootstrap: &str, group: &str, topic: &str) -> bool {
    let committed = committed_offsets(bootstrap, group, topic);
    let ends = end_offsets(bootstrap, topic);
    if committed == ends {
        return true;
    }
    let reader = consumer(bootstrap, None, "read_committed");
    let mut assignment = TopicPartitionList::new();
    let mut at_end: BTreeMap<i32, bool> = BTreeMap::new();
    for (&partition, &offset) in &committed {
        let end = ends.get(&partition).copied().unwrap_or_default();
        if offset < end {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(offset))
                .expect("assignment");
            at_end.insert(partition, false);
        }
    }
    reader.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while at_end.values().any(|done| !done) {
        assert!(
            Instant::now() < deadline,
            "reading the rest of {topic} timed out"
        );
        match reader.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(_)) => return false,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition, true);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
        }
    }
    true
}

/// A free TCP port on loopback (for a worker's metrics endpoint).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

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
    let input = read_all(bootstrap, &pipeline.input, "read_committed");
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

    let validated = read_all(bootstrap, &pipeline.validated, "read_committed");
    let valid_total: usize = valid_by_partition.values().map(Vec::len).sum();
    if validated.len() != valid_total {
        let seen: HashSet<Vec<u8>> = validated.iter().filter_map(|r| r.key.clone()).collect();
        let committed = committed_offsets(bootstrap, &pipeline.group, &pipeline.input);
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

    let rejected = read_all(bootstrap, &pipeline.rejected, "read_committed");
    assert_eq!(
        rejected.len(),
        invalid,
        "one rejection per invalid submission"
    );

    let dead_letters = read_all(bootstrap, &pipeline.dead_letter, "read_committed");
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
        let id = unique("wt");
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
        );
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
    pub fn spawn(name: &str, env: &[(String, String)]) -> Self {
        let dir = std::env::temp_dir().join("orderpipe-worker-tests");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{}.log", unique(name)));
        let file = File::create(&log).expect("log file");
        let metrics_port = env
            .iter()
            .find(|(k, _)| k == env::METRICS_PORT)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_default();
        let child = Command::new(env!("CARGO_BIN_EXE_orderpipe-worker"))
            .arg("run")
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
            if let Some(status) = self.child.try_wait().expect("wait") {
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
