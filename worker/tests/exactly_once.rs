//! The validate stage against a real broker, as the built binary: every valid order exactly once
//! in the committed output, in key order, rejects and garbage routed with their reasons, and a
//! worker fenced by a newer instance with its transactional id leaves no visible writes.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use common::{
    Record, ValidatePipeline, WorkerProcess, bootstrap, caught_up, committed_offsets, connection,
    free_port, read_all, wait_until,
};
use nix::sys::signal::Signal;
use orderpipe_api::contract::env;
use orderpipe_orders::generator::Expected;
use orderpipe_orders::headers;
use orderpipe_worker::loadgen::{self, Expectation, LoadMode, LoadRecord, LoadSpec};

const PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

fn orders(count: u64, seed: u64) -> LoadSpec {
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

fn produce(bootstrap: &str, topic: &str, spec: &LoadSpec) {
    loadgen::produce(&connection(bootstrap), topic, spec, |_| {}).expect("load produced");
}

/// A record's key and value.
type RecordBytes = (Option<Vec<u8>>, Vec<u8>);

/// What validate must do with each input record, found by its bytes: a duplicate has the bytes of
/// the submission it repeats, so each entry lists the expectations in production order (one key
/// stays in one partition, so input offset order is production order).
fn expectations(specs: &[LoadSpec]) -> HashMap<RecordBytes, VecDeque<Expected>> {
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
fn assert_exactly_once(bootstrap: &str, pipeline: &ValidatePipeline, specs: &[LoadSpec]) {
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
    assert_eq!(
        validated.len(),
        valid_total,
        "each valid order exactly once"
    );
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

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn validate_commits_each_order_exactly_once_in_key_order_and_stops_cleanly_on_sigterm() {
    let bootstrap = bootstrap();
    let pipeline = ValidatePipeline::create(&bootstrap, 3);
    let spec = orders(1_000, 42);
    produce(&bootstrap, &pipeline.input, &spec);

    let mut worker = WorkerProcess::spawn(
        "validate",
        &pipeline.worker_env(&bootstrap, "validate-0", free_port()),
    );
    let started = Instant::now();
    wait_until("the worker to commit every order", PROCESS_TIMEOUT, || {
        caught_up(&bootstrap, &pipeline.group, &pipeline.input)
    });
    let took = started.elapsed();

    let (status, _) = worker.get("/readyz").expect("readyz served");
    assert_eq!(
        status, 200,
        "ready while running with its partitions restored"
    );
    let (status, metrics) = worker.get("/metrics").expect("metrics served");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"orderpipe_transactions_total{pipeline="wt",stage="validate",result="committed"}"#
        ),
        "{metrics}"
    );

    worker.signal(Signal::SIGTERM);
    let exit = worker.wait_exit(Duration::from_secs(30));
    assert!(
        exit.success(),
        "graceful exit, got {exit}; log:\n{}",
        worker.log_tail()
    );
    eprintln!(
        "1,000 orders through validate in {took:.2?} ({:.0} records/s, worker start and group join included)",
        1_000.0 / took.as_secs_f64()
    );

    assert_exactly_once(&bootstrap, &pipeline, &[spec]);
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn a_worker_fenced_by_a_newer_instance_stops_and_its_open_transaction_never_becomes_visible() {
    let bootstrap = bootstrap();
    let pipeline = ValidatePipeline::create(&bootstrap, 3);
    let first_batch = orders(1_000, 7);
    produce(&bootstrap, &pipeline.input, &first_batch);

    // A long commit interval keeps the first worker inside an open transaction most of the time.
    let mut env = pipeline.worker_env(&bootstrap, "validate-0", free_port());
    env.push((env::COMMIT_INTERVAL_MS.to_owned(), "3000".to_owned()));
    let mut zombie = WorkerProcess::spawn("zombie", &env);
    wait_until("the first worker to commit", PROCESS_TIMEOUT, || {
        caught_up(&bootstrap, &pipeline.group, &pipeline.input)
    });

    // More input; stop the first worker while it holds processed records in an open transaction.
    let second_batch = orders(2_000, 8);
    produce(&bootstrap, &pipeline.input, &second_batch);
    let uncommitted = |bootstrap: &str| {
        read_all(bootstrap, &pipeline.validated, "read_uncommitted").len()
            - read_all(bootstrap, &pipeline.validated, "read_committed").len()
    };
    wait_until(
        "the first worker to hold an open transaction",
        PROCESS_TIMEOUT,
        || {
            if uncommitted(&bootstrap) == 0 {
                return false;
            }
            zombie.signal(Signal::SIGSTOP);
            // It may have committed between the look and the stop.
            let open = uncommitted(&bootstrap) > 0;
            if !open {
                zombie.signal(Signal::SIGCONT);
            }
            open
        },
    );
    let committed_before = committed_offsets(&bootstrap, &pipeline.group, &pipeline.input);
    let hidden = uncommitted(&bootstrap);

    // Same pod name, same transactional id: initialising it fences the stopped worker and aborts
    // its open transaction.
    let mut successor = WorkerProcess::spawn(
        "successor",
        &pipeline.worker_env(&bootstrap, "validate-0", free_port()),
    );
    wait_until(
        "the successor to initialise its producer",
        PROCESS_TIMEOUT,
        || successor.log_text().contains("worker started"),
    );
    assert_eq!(
        committed_offsets(&bootstrap, &pipeline.group, &pipeline.input),
        committed_before,
        "the fenced transaction committed no offsets"
    );

    zombie.signal(Signal::SIGCONT);
    let exit = zombie.wait_exit(PROCESS_TIMEOUT);
    assert_eq!(
        exit.code(),
        Some(3),
        "the fenced worker stops with the fenced exit code; log:\n{}",
        zombie.log_tail()
    );
    assert!(
        zombie.log_text().contains("fenced"),
        "{}",
        zombie.log_tail()
    );

    wait_until(
        "the successor to commit every order",
        PROCESS_TIMEOUT,
        || caught_up(&bootstrap, &pipeline.group, &pipeline.input),
    );
    successor.signal(Signal::SIGTERM);
    assert!(
        successor.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        successor.log_tail()
    );
    eprintln!(
        "the fenced worker's aborted transaction held {hidden} validated records, none visible"
    );

    assert_exactly_once(&bootstrap, &pipeline, &[first_batch, second_batch]);
}
