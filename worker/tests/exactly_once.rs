//! The validate stage against a real broker, as the built binary: every valid order exactly once
//! in the committed output, in key order, rejects and garbage routed with their reasons, and a
//! worker fenced by a newer instance with its transactional id leaves no visible writes.

mod common;

use std::time::{Duration, Instant};

use common::{ValidatePipeline, WorkerProcess, assert_exactly_once, orders, produce, produce_raw};
use nix::sys::signal::Signal;
use orderpipe_api::contract::{KafkaConnection, SaslConfig, SecretString, env};
use orderpipe_api::v1alpha1::SaslMechanism;
use orderpipe_orders::{MAX_PAYLOAD_BYTES, headers};
use orderpipe_stack::{
    Isolation, caught_up, committed_offsets, free_port, kafka_bootstrap, kafka_secure, read_all,
    wait_until_blocking,
};
use orderpipe_worker::loadgen::{self, LoadSpec};

const PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn validate_commits_each_order_exactly_once_in_key_order_and_stops_cleanly_on_sigterm() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = ValidatePipeline::create(&bootstrap, 3);
    let spec = orders(1_000, 42);
    produce(&bootstrap, &pipeline.input, &spec);

    let mut worker = WorkerProcess::spawn(
        "validate",
        &pipeline.worker_env(&bootstrap, "validate-0", free_port().expect("a free port")),
    );
    let started = Instant::now();
    wait_until_blocking("the worker to commit every order", PROCESS_TIMEOUT, || {
        caught_up(&bootstrap, &pipeline.group, &pipeline.input).expect("the group's progress")
    })
    .expect("in time");
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

    worker.stop_gracefully();
    eprintln!(
        "1,000 orders through validate in {took:.2?} ({:.0} records/s, worker start and group join included)",
        1_000.0 / took.as_secs_f64()
    );

    assert_exactly_once(&bootstrap, &pipeline.topics(), &[spec]);
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn a_worker_fenced_by_a_newer_instance_stops_and_its_open_transaction_never_becomes_visible() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = ValidatePipeline::create(&bootstrap, 3);
    let first_batch = orders(1_000, 7);
    produce(&bootstrap, &pipeline.input, &first_batch);

    // A long commit interval keeps the first worker inside an open transaction most of the time.
    let mut env = pipeline.worker_env(&bootstrap, "validate-0", free_port().expect("a free port"));
    env.push((env::COMMIT_INTERVAL_MS.to_owned(), "3000".to_owned()));
    let mut zombie = WorkerProcess::spawn("zombie", &env);
    wait_until_blocking("the first worker to commit", PROCESS_TIMEOUT, || {
        caught_up(&bootstrap, &pipeline.group, &pipeline.input).expect("the group's progress")
    })
    .expect("in time");

    // More input; stop the first worker while it holds processed records in an open transaction.
    let second_batch = orders(2_000, 8);
    produce(&bootstrap, &pipeline.input, &second_batch);
    let uncommitted = |bootstrap: &str| {
        read_all(bootstrap, &pipeline.validated, Isolation::ReadUncommitted)
            .expect("topic read to its end")
            .len()
            - read_all(bootstrap, &pipeline.validated, Isolation::ReadCommitted)
                .expect("topic read to its end")
                .len()
    };
    wait_until_blocking(
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
    )
    .expect("in time");
    let committed_before = committed_offsets(&bootstrap, &pipeline.group, &pipeline.input)
        .expect("the group's committed offsets");
    let hidden = uncommitted(&bootstrap);

    // Same pod name, same transactional id: initialising it fences the stopped worker and aborts
    // its open transaction.
    let mut successor = WorkerProcess::spawn(
        "successor",
        &pipeline.worker_env(&bootstrap, "validate-0", free_port().expect("a free port")),
    );
    wait_until_blocking(
        "the successor to initialise its producer",
        PROCESS_TIMEOUT,
        || successor.log_text().contains("worker started"),
    )
    .expect("in time");
    assert_eq!(
        committed_offsets(&bootstrap, &pipeline.group, &pipeline.input)
            .expect("the group's committed offsets"),
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

    wait_until_blocking(
        "the successor to commit every order",
        PROCESS_TIMEOUT,
        || caught_up(&bootstrap, &pipeline.group, &pipeline.input).expect("the group's progress"),
    )
    .expect("in time");
    successor.stop_gracefully();
    eprintln!(
        "the fenced worker's aborted transaction held {hidden} validated records, none visible"
    );

    assert_exactly_once(&bootstrap, &pipeline.topics(), &[first_batch, second_batch]);
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn at_least_once_mode_loses_no_valid_order() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = ValidatePipeline::create(&bootstrap, 3);
    let spec = orders(1_000, 43);
    produce(&bootstrap, &pipeline.input, &spec);

    let mut env = pipeline.worker_env(&bootstrap, "validate-0", free_port().expect("a free port"));
    env.push((env::DELIVERY.to_owned(), "at-least-once".to_owned()));
    let mut worker = WorkerProcess::spawn("at-least-once", &env);
    wait_until_blocking("the worker to commit every order", PROCESS_TIMEOUT, || {
        caught_up(&bootstrap, &pipeline.group, &pipeline.input).expect("the group's progress")
    })
    .expect("in time");
    worker.stop_gracefully();

    // Without failures at-least-once delivers exactly once too; the full check applies.
    assert_exactly_once(&bootstrap, &pipeline.topics(), &[spec]);
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn a_record_at_the_broker_size_limit_is_dead_lettered_cut_and_the_orders_behind_it_flow() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    // One partition: the orders queue behind the huge record, so they flow only if it does not
    // fail its transaction over and over. Near the broker's default limit (1 MiB), a dead letter
    // copying it whole plus headers would be refused.
    let pipeline = ValidatePipeline::create(&bootstrap, 1);
    let huge = vec![b'x'; 1_040_000];
    produce_raw(&bootstrap, &pipeline.input, b"ord-huge", &huge);
    let spec = LoadSpec {
        invalid_share: 0.0,
        garbage_share: 0.0,
        duplicate_share: 0.0,
        ..orders(200, 9)
    };
    produce(&bootstrap, &pipeline.input, &spec);

    let mut worker = WorkerProcess::spawn(
        "validate",
        &pipeline.worker_env(&bootstrap, "validate-0", free_port().expect("a free port")),
    );
    wait_until_blocking("the worker to commit every record", PROCESS_TIMEOUT, || {
        caught_up(&bootstrap, &pipeline.group, &pipeline.input).expect("the group's progress")
    })
    .expect("in time");
    worker.stop_gracefully();

    let dead_letters = read_all(&bootstrap, &pipeline.dead_letter, Isolation::ReadCommitted)
        .expect("topic read to its end");
    assert_eq!(
        dead_letters.len(),
        1,
        "only the huge record is dead-lettered"
    );
    let dead = &dead_letters[0];
    assert_eq!(
        dead.header(headers::ERROR_REASON),
        Some("payload_too_large")
    );
    assert_eq!(
        dead.payload.as_deref().map(<[u8]>::len),
        Some(MAX_PAYLOAD_BYTES)
    );
    let size = huge.len().to_string();
    assert_eq!(dead.header(headers::ORIGINAL_SIZE), Some(size.as_str()));
    assert_eq!(dead.key.as_deref(), Some(&b"ord-huge"[..]));
    let validated = read_all(&bootstrap, &pipeline.validated, Isolation::ReadCommitted)
        .expect("topic read to its end");
    assert_eq!(validated.len(), 200, "every order behind it validated once");
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn over_tls_with_sasl_the_worker_validates_every_order_and_a_wrong_password_stays_unready() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let secure = kafka_secure().expect("the stack's SASL_SSL listener");
    let pipeline = ValidatePipeline::create(&bootstrap, 3);
    let spec = orders(500, 13);
    let connection = KafkaConnection {
        bootstrap_servers: secure.bootstrap.clone(),
        tls: true,
        tls_ca_file: Some(secure.ca_file.clone()),
        tls_client_dir: None,
        sasl: Some(SaslConfig {
            mechanism: SaslMechanism::Plain,
            username: secure.username.clone(),
            password: SecretString::new(secure.password.clone()),
        }),
    };
    // The load generator speaks TLS + SASL too.
    loadgen::produce(&connection, &pipeline.input, &spec, |_| {}).expect("load produced");

    // The worker gets the listener, CA file and credentials through the contract's variables, as
    // the operator renders them from the pipeline's spec.kafka and its Secret.
    let secure_env = |password: &str| {
        let mut env = pipeline.worker_env(
            &secure.bootstrap,
            "validate-0",
            free_port().expect("a free port"),
        );
        env.extend(
            [
                (env::TLS_ENABLED, "true".to_owned()),
                (env::TLS_CA_FILE, secure.ca_file.display().to_string()),
                (env::SASL_MECHANISM, "PLAIN".to_owned()),
                (env::SASL_USERNAME, secure.username.clone()),
                (env::SASL_PASSWORD, password.to_owned()),
            ]
            .map(|(key, value)| (key.to_owned(), value)),
        );
        env
    };

    let intruder = WorkerProcess::spawn("validate-wrong-password", &secure_env("not-it"));
    wait_until_blocking(
        "the broker to refuse the credentials",
        PROCESS_TIMEOUT,
        || intruder.log_text().contains("Authentication failed"),
    )
    .expect("in time");
    let (status, _) = intruder.get("/readyz").expect("readyz served");
    assert_eq!(status, 503, "not ready without a broker session");
    intruder.signal(Signal::SIGKILL);
    assert!(
        !intruder.log_text().contains("not-it"),
        "the password never appears in the log"
    );

    let mut worker = WorkerProcess::spawn("validate-sasl-ssl", &secure_env(&secure.password));
    wait_until_blocking("the worker to commit every order", PROCESS_TIMEOUT, || {
        caught_up(&bootstrap, &pipeline.group, &pipeline.input).expect("the group's progress")
    })
    .expect("in time");
    worker.stop_gracefully();
    assert!(
        !worker.log_text().contains(&secure.password),
        "the password never appears in the log"
    );
    assert_exactly_once(&bootstrap, &pipeline.topics(), &[spec]);
}
