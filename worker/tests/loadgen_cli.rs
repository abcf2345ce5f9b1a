//! The `loadgen` subcommand of the built binary against a real broker.

use std::process::Command;

use orderpipe_stack::{Isolation, create_topics, kafka_bootstrap, read_all, unique_name};

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn loadgen_produces_the_requested_records_and_refuses_flags_of_the_other_mode() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let topic = unique_name("loadgen");
    create_topics(&bootstrap, &[(&topic, 2)]).expect("topics created");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_orderpipe-worker"))
            .arg("loadgen")
            .args(["--bootstrap-servers", &bootstrap, "--topic", &topic])
            .args(args)
            .output()
            .expect("loadgen runs")
    };

    let orders = run(&["--count", "300", "--rate", "2000", "--seed", "5"]);
    assert!(
        orders.status.success(),
        "{}",
        String::from_utf8_lossy(&orders.stderr)
    );
    assert!(String::from_utf8_lossy(&orders.stderr).contains("produced 300/300"));
    let events = run(&["--mode", "status-events", "--keys", "20", "--count", "200"]);
    assert!(
        events.status.success(),
        "{}",
        String::from_utf8_lossy(&events.stderr)
    );
    assert_eq!(
        read_all(&bootstrap, &topic, Isolation::ReadCommitted)
            .expect("topic read to its end")
            .len(),
        500
    );

    let refused = run(&["--count", "1", "--keys", "5"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "--keys is a status-events flag"
    );
}
