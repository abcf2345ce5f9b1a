//! Hostile records on a real broker, produced by a client we did not write (kcat), interleaved with
//! normal orders on every partition of the input: none of them stops its partition. Every normal
//! order behind them is validated exactly once, and each hostile record ends exactly once in the
//! rejected or the dead-letter topic with its reason — including one whose rejection the rejected
//! topic refuses (its `max.message.bytes` lowered to 200,000 bytes), which is dead-lettered as
//! `output_refused`.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::Command;
use std::time::Duration;

use common::{ValidatePipeline, WorkerProcess, orders, produce};
use orderpipe_orders::{MAX_KEY_BYTES, headers};
use orderpipe_stack::{
    Isolation, alter_topic_config, caught_up, free_port, kafka_bootstrap, read_all,
    wait_until_blocking,
};
use orderpipe_worker::loadgen::LoadSpec;

const PROCESS_TIMEOUT: Duration = Duration::from_secs(180);
const PARTITIONS: i32 = 3;
/// The rejected topic's `max.message.bytes` in this test, far below the broker's default.
const REJECTED_LIMIT: usize = 200_000;

/// Where a hostile record must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Rejected,
    DeadLetter(&'static str),
}

struct HostileRecord {
    name: &'static str,
    key: Vec<u8>,
    payload: Vec<u8>,
    verdict: Verdict,
}

/// A well-formed order (valid except for what `edit` changes), as JSON text with `key` as orderId.
fn order_text(key: &str, edit: impl FnOnce(&mut String)) -> Vec<u8> {
    let mut text = format!(
        r#"{{"orderId":"{key}","customerId":"c-1","createdAt":"2025-03-01T12:00:00Z","currency":"EUR","items":[{{"sku":"A","quantity":1,"unitPriceMinor":100}}],"totalMinor":100}}"#
    );
    edit(&mut text);
    text.into_bytes()
}

/// The hostile records for partition `partition`; keys are unique per partition.
fn hostile_records(partition: i32) -> Vec<HostileRecord> {
    let key = |name: &str| format!("hostile-{partition}-{name}");
    let record = |name: &'static str, payload: Vec<u8>, verdict| HostileRecord {
        name,
        key: key(name).into_bytes(),
        payload,
        verdict,
    };
    // 500,000 pseudo-random letters as totalMinor (wrong type): a rejection quoting them is over
    // the rejected topic's 200,000-byte limit even after the producer's compression.
    let noise = |text: &mut String| {
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ partition.unsigned_abs() as u64;
        let letters: String = (0..500_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'a' + (seed % 26) as u8)
            })
            .collect();
        text.insert_str(text.len() - 1, &format!(r#","totalMinor":"{letters}""#));
    };
    vec![
        record(
            "refused-rejection",
            order_text(&key("refused-rejection"), noise),
            Verdict::DeadLetter("output_refused"),
        ),
        record(
            "twenty-digits",
            order_text(&key("twenty-digits"), |t| {
                *t = t.replace(
                    r#""totalMinor":100"#,
                    r#""totalMinor":12345678901234567890"#,
                );
            }),
            Verdict::Rejected,
        ),
        record(
            "huge-exponent",
            order_text(&key("huge-exponent"), |t| {
                *t = t.replace(r#""totalMinor":100"#, r#""totalMinor":1E+400"#);
            }),
            Verdict::DeadLetter("not_json"),
        ),
        record(
            "not-utf8",
            [&b"{\"orderId\":\""[..], &[0xff, 0xfe], &b"\"}"[..]].concat(),
            Verdict::DeadLetter("not_utf8"),
        ),
        record(
            "lone-surrogate",
            order_text(&key("lone-surrogate"), |t| {
                *t = t.replace(r#""c-1""#, r#""\ud800""#);
            }),
            Verdict::DeadLetter("not_json"),
        ),
        record(
            "deep",
            format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
            Verdict::DeadLetter("not_json"),
        ),
        record(
            "bom",
            [&[0xEF, 0xBB, 0xBF][..], &order_text(&key("bom"), |_| {})].concat(),
            Verdict::DeadLetter("not_json"),
        ),
        record(
            "duplicate-member",
            order_text(&key("duplicate-member"), |t| {
                t.insert_str(t.len() - 1, r#","orderId":"someone-else""#);
            }),
            Verdict::Rejected,
        ),
        record(
            "key-disagrees",
            order_text("another-order", |_| {}),
            Verdict::Rejected,
        ),
        HostileRecord {
            name: "giant-key",
            key: vec![b'k'; MAX_KEY_BYTES * 4],
            payload: order_text("x", |_| {}),
            verdict: Verdict::DeadLetter("key_too_large"),
        },
    ]
}

/// Produces one record to `partition` with kcat (one message per file: any bytes, newlines too).
fn kcat_produce(bootstrap: &str, topic: &str, partition: i32, record: &HostileRecord) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("payload");
    std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(&record.payload))
        .expect("payload written");
    let key = String::from_utf8(record.key.clone()).expect("test keys are text");
    let status = Command::new("timeout")
        .args(["60", "kcat", "-P", "-b", bootstrap, "-t", topic])
        .args(["-p", &partition.to_string(), "-k", &key])
        .args(["-X", "message.max.bytes=1048576"])
        .arg(&path)
        .status()
        .expect("kcat runs (make e2e-setup installs it)");
    assert!(status.success(), "kcat produced {}: {status}", record.name);
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn hostile_records_on_every_partition_end_once_in_rejected_or_dead_letter_and_stall_nothing() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = ValidatePipeline::create(&bootstrap, PARTITIONS);
    alter_topic_config(
        &bootstrap,
        &pipeline.rejected,
        &[("max.message.bytes", &REJECTED_LIMIT.to_string())],
    )
    .expect("topic config set");
    let valid_only = |count, seed| LoadSpec {
        invalid_share: 0.0,
        garbage_share: 0.0,
        duplicate_share: 0.0,
        ..orders(count, seed)
    };
    let (before, after) = (valid_only(600, 71), valid_only(600, 72));
    produce(&bootstrap, &pipeline.input, &before);
    let hostile: Vec<(i32, HostileRecord)> = (0..PARTITIONS)
        .flat_map(|partition| {
            hostile_records(partition)
                .into_iter()
                .map(move |record| (partition, record))
        })
        .collect();
    for (partition, record) in &hostile {
        kcat_produce(&bootstrap, &pipeline.input, *partition, record);
    }
    produce(&bootstrap, &pipeline.input, &after);

    let mut worker = WorkerProcess::spawn(
        "validate-hostile",
        &pipeline.worker_env(&bootstrap, "validate-0", free_port().expect("a free port")),
    );
    wait_until_blocking(
        "the worker to commit every record, hostile ones included",
        PROCESS_TIMEOUT,
        || caught_up(&bootstrap, &pipeline.group, &pipeline.input).expect("the group's progress"),
    )
    .expect("in time");
    let (_, metrics) = worker.get("/metrics").expect("metrics served");
    worker.stop_gracefully();

    let validated = read_all(&bootstrap, &pipeline.validated, Isolation::ReadCommitted)
        .expect("topic read to its end");
    let mut validated_keys: HashMap<Vec<u8>, usize> = HashMap::new();
    for record in &validated {
        *validated_keys
            .entry(record.key.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(validated.len(), 1_200, "every normal order validated");
    assert!(validated_keys.values().all(|&n| n == 1), "each once");

    let rejected = read_all(&bootstrap, &pipeline.rejected, Isolation::ReadCommitted)
        .expect("topic read to its end");
    let dead_letters = read_all(&bootstrap, &pipeline.dead_letter, Isolation::ReadCommitted)
        .expect("topic read to its end");
    for (partition, record) in &hostile {
        let in_rejected = rejected
            .iter()
            .filter(|r| r.key.as_ref() == Some(&record.key))
            .count();
        // A dead letter keeps at most 4 KiB of the key; the giant key's prefix is unique here.
        let key_prefix = &record.key[..record.key.len().min(MAX_KEY_BYTES)];
        let letters: Vec<_> = dead_letters
            .iter()
            .filter(|r| r.key.as_deref() == Some(key_prefix))
            .filter(|r| r.header(headers::ORIGINAL_PARTITION) == Some(&partition.to_string()))
            .collect();
        let what = format!("{} on partition {partition}", record.name);
        match record.verdict {
            Verdict::Rejected => {
                let dead: Vec<_> = letters
                    .iter()
                    .map(|r| r.header(headers::ERROR_MESSAGE))
                    .collect();
                assert_eq!(
                    (in_rejected, letters.len()),
                    (1, 0),
                    "{what}: rejected once (dead letters: {dead:?})"
                );
            }
            Verdict::DeadLetter(reason) => {
                assert_eq!(
                    (in_rejected, letters.len()),
                    (0, 1),
                    "{what}: dead-lettered once"
                );
                assert_eq!(
                    letters[0].header(headers::ERROR_REASON),
                    Some(reason),
                    "{what}"
                );
            }
        }
    }
    let expected_rejected = hostile
        .iter()
        .filter(|(_, r)| r.verdict == Verdict::Rejected)
        .count();
    assert_eq!(rejected.len(), expected_rejected, "nothing else rejected");
    assert_eq!(
        dead_letters.len(),
        hostile.len() - expected_rejected,
        "nothing else dead-lettered"
    );

    let refused = dead_letters
        .iter()
        .find(|r| r.header(headers::ERROR_REASON) == Some("output_refused"))
        .expect("an output_refused dead letter");
    assert!(
        refused
            .header(headers::ERROR_MESSAGE)
            .is_some_and(|m| m.contains("too large")),
        "the broker's error: {:?}",
        refused.header(headers::ERROR_MESSAGE)
    );
    assert!(
        refused
            .payload
            .as_ref()
            .is_some_and(|p| p.len() > REJECTED_LIMIT),
        "the input copied whole"
    );
    let line =
        r#"orderpipe_dead_letters_total{pipeline="wt",stage="validate",reason="output_refused"} 3"#;
    assert!(metrics.contains(line), "{metrics}");
}
