//! Kafka on the shared stack: the broker behaves like a real one for what orderpipe relies on
//! (admin API, transactions and isolation levels, interoperability with an independent client).
//! Each test uses its own topics. Needs `make test-e2e`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use orderpipe_stack::{Isolation, create_topics, kafka_bootstrap, read_all, unique_name};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn topic_created_through_admin_api_is_described() -> anyhow::Result<()> {
    let bootstrap = kafka_bootstrap()?;
    let topic = unique_name("described");
    create_topics(&bootstrap, &[(&topic, 3)])?;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let wanted = topic.clone();
    let metadata =
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&wanted), TIMEOUT))
            .await??;
    let [described] = metadata.topics() else {
        bail!(
            "expected exactly one topic in {:?}",
            metadata.topics().len()
        );
    };
    assert_eq!(described.name(), topic);
    assert_eq!(described.error(), None);
    let mut partitions: Vec<i32> = described.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    assert_eq!(partitions, [0, 1, 2]);
    for partition in described.partitions() {
        assert_eq!(
            partition.leader(),
            1,
            "partition {} has no leader",
            partition.id()
        );
        assert_eq!(partition.replicas(), [1]);
    }
    Ok(())
}

fn transactional_producer(bootstrap: &str) -> anyhow::Result<BaseProducer> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", unique_name("e2e-txn"))
        .create()?;
    producer.init_transactions(TIMEOUT)?;
    Ok(producer)
}

/// Sends `payloads` in one transaction, flushed to the broker, then commits or aborts it.
fn send_transaction(
    producer: &BaseProducer,
    topic: &str,
    payloads: &[String],
    commit: bool,
) -> anyhow::Result<()> {
    producer.begin_transaction()?;
    for payload in payloads {
        producer
            .send(BaseRecord::to(topic).key("order-1").payload(payload))
            .map_err(|(error, _)| error)?;
    }
    // Make sure the records are in the log before the abort: an aborted transaction whose
    // records never left the client would prove nothing about read_committed.
    producer.flush(TIMEOUT)?;
    if commit {
        producer.commit_transaction(TIMEOUT)?;
    } else {
        producer.abort_transaction(TIMEOUT)?;
    }
    Ok(())
}

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn visible_payloads(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
) -> anyhow::Result<Vec<String>> {
    Ok(read_all(bootstrap, topic, isolation)?
        .iter()
        .map(|r| r.payload_str())
        .collect())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn committed_transaction_is_visible_to_read_committed_consumer() -> anyhow::Result<()> {
    let bootstrap = kafka_bootstrap()?;
    let topic = unique_name("committed");
    create_topics(&bootstrap, &[(&topic, 1)])?;
    let sent = payloads("committed", 10);

    let (b, t, s) = (bootstrap.clone(), topic.clone(), sent.clone());
    tokio::task::spawn_blocking(move || {
        send_transaction(&transactional_producer(&b)?, &t, &s, true)
    })
    .await??;

    let seen = visible_payloads(&bootstrap, &topic, Isolation::ReadCommitted)?;
    assert_eq!(seen, sent);
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn aborted_transaction_is_invisible_to_read_committed_consumer() -> anyhow::Result<()> {
    let bootstrap = kafka_bootstrap()?;
    let topic = unique_name("aborted");
    create_topics(&bootstrap, &[(&topic, 1)])?;
    let aborted = payloads("aborted", 5);
    let committed = payloads("committed", 3);

    let (b, t, a, c) = (
        bootstrap.clone(),
        topic.clone(),
        aborted.clone(),
        committed.clone(),
    );
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let producer = transactional_producer(&b)?;
        send_transaction(&producer, &t, &a, false)?;
        send_transaction(&producer, &t, &c, true)
    })
    .await??;

    let read_committed = visible_payloads(&bootstrap, &topic, Isolation::ReadCommitted)?;
    assert_eq!(
        read_committed, committed,
        "read_committed must skip the aborted records"
    );

    // The aborted records really are in the log: without read_committed they show up, so the
    // assertion above could have failed.
    let read_uncommitted = visible_payloads(&bootstrap, &topic, Isolation::ReadUncommitted)?;
    let expected_all: Vec<String> = aborted.iter().chain(&committed).cloned().collect();
    assert_eq!(read_uncommitted, expected_all);
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn kcat_reads_what_our_client_wrote() -> anyhow::Result<()> {
    let bootstrap = kafka_bootstrap()?;
    let topic = unique_name("kcat");
    create_topics(&bootstrap, &[(&topic, 2)])?;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    let mut written = BTreeSet::new();
    for i in 0..20 {
        let (key, payload) = (format!("order-{i}"), format!("{{\"order\":{i}}}"));
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                TIMEOUT,
            )
            .await
            .map_err(|(error, _)| error)?;
        written.insert(format!("{key}={payload}"));
    }

    let (b, t) = (bootstrap.clone(), topic.clone());
    let output = tokio::task::spawn_blocking(move || {
        // `timeout` bounds kcat should the broker stop answering; -e exits at the end of
        // every partition.
        Command::new("timeout")
            .args([
                "60",
                "kcat",
                "-b",
                &b,
                "-C",
                "-t",
                &t,
                "-o",
                "beginning",
                "-e",
                "-q",
            ])
            .args(["-f", "%k=%s\\n"])
            .output()
    })
    .await?
    .context(
        "running kcat (install it with `apt-get install kcat`, see e2e/tools/setup-debian.sh)",
    )?;
    ensure!(
        output.status.success(),
        "kcat failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let read: BTreeSet<String> = String::from_utf8(output.stdout)?
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(read, written);
    Ok(())
}
