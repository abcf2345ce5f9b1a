//! The three-broker profile on a private cluster: internal topics and new topics are replicated
//! (3 replicas, `min.insync.replicas=2`), and the harness kills, pauses and restarts one broker at a
//! time while an `acks=all` producer keeps writing; an independent read_committed reader then
//! finds every record exactly once, in order. Needs the tools (`make e2e-tools`); run with
//! `make test-e2e`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::ensure;
use orderpipe_stack::{
    Component, Isolation, Stack, StackEnv, create_topics, in_sync, partition_infos,
    partition_leader, pid_alive, read_all, topic_config, transaction_coordinator, unique_name,
    wait_until,
};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Long enough for the controller to fence a dead or silent broker (`broker.session.timeout.ms`,
/// 9 s) and elect new leaders, on two busy cores.
const FAILOVER: Duration = Duration::from_secs(90);

/// Sends `keys` to partition 0 of `topic` one by one, each acknowledged by all in-sync replicas.
async fn produce(producer: &FutureProducer, topic: &str, keys: impl Iterator<Item = String>) {
    for key in keys {
        producer
            .send(
                FutureRecord::to(topic).partition(0).key(&key).payload(&key),
                Duration::from_secs(60),
            )
            .await
            .map_err(|(error, _)| error)
            .expect("acknowledged by the in-sync replicas");
    }
}

/// Waits until partition 0 of `topic` is led by a broker other than `old` (and has a leader).
async fn new_leader(bootstrap: &str, topic: &str, old: i32) -> anyhow::Result<i32> {
    Ok(wait_until(
        &format!("a leader of {topic}/0 other than broker {old}"),
        FAILOVER,
        || async {
            let leader = partition_infos(bootstrap, topic).ok()?.first()?.leader;
            (leader >= 0 && leader != old).then_some(leader)
        },
    )
    .await?)
}

async fn wait_in_sync(bootstrap: &str, topics: &[&str]) -> anyhow::Result<()> {
    wait_until(
        &format!("every replica of {topics:?} back in the ISR"),
        FAILOVER,
        || async { in_sync(bootstrap, topics).ok()?.then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the e2e tools: make test-e2e"]
async fn three_brokers_replicate_and_survive_a_killed_leader_and_a_paused_broker()
-> anyhow::Result<()> {
    let started = Instant::now();
    let phase = |what: &str| eprintln!("[kafka-ha {:>5.1?}] {what}", started.elapsed());
    let mut stack = Stack::builder(&unique_name("kafka-ha"))
        .kafka_ha()
        .start()
        .await?;
    phase("three brokers ready");
    let bootstrap = stack.kafka_bootstrap()?.to_owned();

    // Every broker in the bootstrap list, the env file and the PIDs.
    let brokers = stack.kafka_brokers()?;
    let ids: Vec<i32> = brokers.iter().map(|b| b.id).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(
        bootstrap.split(',').collect::<Vec<_>>(),
        brokers
            .iter()
            .map(|b| b.bootstrap.as_str())
            .collect::<Vec<_>>()
    );
    let env = StackEnv::load(&stack.env_file())?;
    assert_eq!(env.kafka_bootstrap.as_deref(), Some(bootstrap.as_str()));
    assert_eq!(
        env.kafka_brokers
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        ids
    );
    let components: Vec<&str> = env.pids.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(components, ["kafka-1", "kafka-2", "kafka-3"]);

    // Internal topics: 3 replicas, all in sync, min ISR 2 for the transaction log.
    for internal in ["__consumer_offsets", "__transaction_state"] {
        for partition in partition_infos(&bootstrap, internal)? {
            assert_eq!(partition.replicas.len(), 3, "{internal}: {partition:?}");
            assert!(partition.fully_in_sync(), "{internal}: {partition:?}");
        }
    }
    assert_eq!(
        topic_config(&bootstrap, "__transaction_state")?
            .get("min.insync.replicas")
            .map(String::as_str),
        Some("2")
    );

    // A topic created with the cluster's defaults: what every test kit and client gets.
    let topic = unique_name("ha");
    create_topics(&bootstrap, &[(&topic, 3)])?;
    for partition in partition_infos(&bootstrap, &topic)? {
        assert_eq!(partition.replicas.len(), 3, "{partition:?}");
    }
    assert_eq!(
        topic_config(&bootstrap, &topic)?
            .get("min.insync.replicas")
            .map(String::as_str),
        Some("2")
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A paused leader answers nothing: give up on its requests (and retry elsewhere) sooner
        // than the defaults (30 s produce, 60 s other requests), which only make this test slow.
        .set("request.timeout.ms", "5000")
        .set("socket.timeout.ms", "10000")
        .create()?;
    produce(&producer, &topic, (0..50).map(|i| format!("k{i:03}"))).await;

    // SIGKILL the leader: another replica takes over, and acks=all writes go on with 2 of 3.
    phase("killing the leader");
    let killed = partition_leader(&bootstrap, &topic, 0)?;
    let killed_pid = brokers[(killed - 1) as usize].pid.expect("running");
    stack.kill_broker(killed)?;
    ensure!(!pid_alive(killed_pid), "broker {killed} survived SIGKILL");
    assert_eq!(stack.kafka_brokers()?[(killed - 1) as usize].pid, None);
    let leader = new_leader(&bootstrap, &topic, killed).await?;
    phase("new leader elected");
    produce(&producer, &topic, (50..100).map(|i| format!("k{i:03}"))).await;
    let coordinator = transaction_coordinator(&bootstrap, "orderpipe-probe")?;
    ensure!(
        coordinator != killed,
        "the coordinator moved off the dead broker"
    );

    // Back on the same ports and log dir: it catches up and rejoins every ISR.
    stack.start_broker(killed).await?;
    phase("killed broker restarted");
    wait_in_sync(
        &bootstrap,
        &[&topic, "__transaction_state", "__consumer_offsets"],
    )
    .await?;
    phase("back in every ISR");
    assert!(
        stack.kafka_brokers()?[(killed - 1) as usize]
            .pid
            .is_some_and(pid_alive)
    );

    // SIGSTOP the new leader past the session timeout: fenced, leadership moves, writes go on.
    stack.pause_broker(leader)?;
    phase("leader paused");
    assert!(stack.kafka_brokers()?[(leader - 1) as usize].paused);
    new_leader(&bootstrap, &topic, leader).await?;
    phase("new leader elected");
    produce(&producer, &topic, (100..150).map(|i| format!("k{i:03}"))).await;
    stack.resume_broker(leader)?;
    phase("resumed, writes acknowledged");
    wait_in_sync(&bootstrap, &[&topic]).await?;
    phase("back in the ISR");

    // An independent reader finds every acknowledged record exactly once, in order.
    let records = read_all(&bootstrap, &topic, Isolation::ReadCommitted)?;
    let keys: Vec<String> = records.iter().map(|r| r.key_str()).collect();
    let expected: Vec<String> = (0..150).map(|i| format!("k{i:03}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 150);
    assert_eq!(
        stack.log_file(Component::KafkaBroker(1)).file_name(),
        Some("kafka-1.log".as_ref())
    );

    drop(producer);
    stack.stop().await?;
    Ok(())
}
