//! Coordinated growth of the status stage's input on a real broker (issue #22,
//! `docs/partition-growth.md`), with the built worker and control records written as the operator
//! writes them: new partitions are not processed while held; each old partition commits the
//! re-shard marker once draining; after release every order's status changes appear once and in
//! event order, nothing is dead-lettered, and the moved keys' state sits in the new state
//! partitions with tombstones in the old ones.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::WorkerProcess;
use common::pipeline::{Pipeline, Stage};
use orderpipe_api::contract::env;
use orderpipe_growth::{
    ControlRecord, Growth, GrowthView, Partitions, Phase, ReshardMarker, SettleBarrier,
};
use orderpipe_orders::generator::EventExpectation;
use orderpipe_stack::{
    Isolation, caught_up, committed_offsets, create_topics, end_offsets, free_port,
    kafka_bootstrap, read_all, unique_name, wait_until_blocking,
};
use orderpipe_worker::loadgen::{self, Expectation, LoadMode, LoadRecord, LoadSpec};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(120);
const UID: &str = "uid-growth";

/// Grows `topic` to `partitions`, as the operator's `CreatePartitions`.
fn grow(bootstrap: &str, topic: &str, partitions: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = runtime
        .block_on(admin.create_partitions(
            [&NewPartitions::new(topic, partitions)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("create partitions answered");
    for result in results {
        result.expect("partitions created");
    }
}

/// Produces `records` keyed, placed as Kafka's clients place them (murmur2) under the partition
/// count a fresh producer sees now, and waits for the acknowledgements.
fn produce(bootstrap: &str, topic: &str, records: &[LoadRecord]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for record in records {
        let mut base = BaseRecord::to(topic).payload(&record.payload);
        if let Some(key) = &record.key {
            base = base.key(key);
        }
        producer
            .send(base)
            .map_err(|(error, _)| error)
            .expect("queued");
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("acknowledged");
}

/// Writes the control record for `stage`, as the operator does.
fn announce(bootstrap: &str, control: &str, stage: &str, topic: &str, view: GrowthView) {
    let record = ControlRecord {
        pipeline_uid: UID.to_owned(),
        topic: topic.to_owned(),
        view,
    };
    let value = record.encode();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    producer
        .send(BaseRecord::to(control).key(stage).payload(&value))
        .map_err(|(error, _)| error)
        .expect("queued");
    producer
        .flush(Duration::from_secs(30))
        .expect("acknowledged");
}

/// The group's commits of `partitions`: offset (`None`: nothing committed) and re-shard marker
/// generation (from the offset's metadata).
fn commits(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, (Option<i64>, Option<u64>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(30))
        .expect("committed offsets");
    committed
        .elements_for_topic(topic)
        .iter()
        .map(|element| {
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let marker = ReshardMarker::parse(element.metadata()).map(|m| m.generation);
            (element.partition(), (offset, marker))
        })
        .collect()
}

/// The committed marker generation of each of `partitions` that has one.
fn markers(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, u64> {
    commits(bootstrap, group, topic, partitions)
        .into_iter()
        .filter_map(|(partition, (_, marker))| Some((partition, marker?)))
        .collect()
}

fn partitions_of(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    end_offsets(bootstrap, topic).expect("end offsets")
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn a_growth_of_the_status_input_keeps_every_orders_changes_once_and_in_order() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let pipeline = Pipeline::create(&bootstrap, 3);
    let control = format!("{}.control", unique_name("growth"));
    create_topics(&bootstrap, &[(&control, 1)]).expect("control topic");
    let events = pipeline.input(Stage::Status).to_owned();
    let state = pipeline.state_topic(Stage::Status);
    let group = pipeline.group(Stage::Status);

    // Multi-event orders, 60 of them open at any time; the first half before the growth.
    let spec = LoadSpec {
        mode: LoadMode::StatusEvents,
        count: 2_400,
        rate: None,
        keys: 60,
        invalid_share: 0.0,
        garbage_share: 0.0,
        duplicate_share: 0.0,
        seed: 2_200,
    };
    let load: Vec<LoadRecord> = loadgen::generate(&spec).collect();
    let (before, after) = load.split_at(1_200);
    let (held, draining) = after.split_at(600);
    produce(&bootstrap, &events, before);

    let mut env = pipeline.worker_env(
        &bootstrap,
        Stage::Status,
        "status-0",
        free_port().expect("a free port"),
        "",
    );
    env.extend(
        [
            (env::CONTROL_TOPIC, control.as_str()),
            (env::PIPELINE_UID, UID),
            (env::COMMIT_INTERVAL_MS, "100"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let mut first = WorkerProcess::spawn("status-growth", &env);
    wait_until_blocking("the first half processed", TIMEOUT, || {
        caught_up(&bootstrap, &group, &events).expect("the group's progress")
    })
    .expect("in time");

    // Announce (Held), then grow the state topic and the input, then keep producing with the new
    // partition count: the moved orders' later events land on the new partitions.
    let generation = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    let count = |n| Partitions::new(n).expect("positive");
    let growth = Growth::new(generation, count(3), count(6)).expect("a multiple");
    let view = |phase| GrowthView { growth, phase };
    announce(&bootstrap, &control, "status", &events, view(Phase::Held));
    grow(&bootstrap, &state, 6);
    grow(&bootstrap, &events, 6);
    produce(&bootstrap, &events, held);
    let ends = partitions_of(&bootstrap, &events);
    assert!(
        (3..6).any(|p| ends.get(&p).is_some_and(|end| *end > 0)),
        "events landed on new partitions: {ends:?}"
    );
    wait_until_blocking("the old partitions processed", TIMEOUT, || {
        let committed = committed_offsets(&bootstrap, &group, &events).expect("committed");
        (0..3).all(|p| committed.get(&p) == ends.get(&p))
    })
    .expect("in time");
    // A subscribed consumer sees new partitions at its next metadata refresh (librdkafka: every
    // 5 minutes); a worker (re)starting sees them at once. It reads the control topic to its end
    // before the group assigns it anything, so it holds the new partitions from the start.
    first.stop_gracefully();
    let mut worker = WorkerProcess::spawn("status-growth", &env);
    wait_until_blocking("the new partitions reported held", TIMEOUT, || {
        worker.get("/metrics").is_some_and(|(_, text)| {
            text.contains(r#"orderpipe_partitions_held{pipeline="pipe",stage="status"} 3"#)
        })
    })
    .expect("in time");
    let committed = commits(&bootstrap, &group, &events, 6);
    assert!(
        (3..6).all(|p| committed[&p].0.is_none()),
        "held partitions are not processed: {committed:?}"
    );

    // The settle barrier: the old partitions' ends now. Producing goes on meanwhile.
    let barrier: Vec<i64> = (0..3).map(|p| ends.get(&p).copied().unwrap_or(0)).collect();
    let settle = SettleBarrier::new(growth, barrier).expect("one offset per old partition");
    announce(
        &bootstrap,
        &control,
        "status",
        &events,
        view(Phase::Draining(settle)),
    );
    produce(&bootstrap, &events, draining);
    wait_until_blocking(
        "every old partition to commit the re-shard marker",
        TIMEOUT,
        || {
            let markers = markers(&bootstrap, &group, &events, 3);
            (0..3).all(|p| markers.get(&p).is_some_and(|g| *g >= generation))
        },
    )
    .expect("in time");

    announce(
        &bootstrap,
        &control,
        "status",
        &events,
        view(Phase::Released),
    );
    wait_until_blocking("every partition processed", TIMEOUT, || {
        caught_up(&bootstrap, &group, &events).expect("the group's progress")
    })
    .expect("in time");
    let (_, metrics) = worker.get("/metrics").expect("metrics served");
    worker.stop_gracefully();
    assert!(
        metrics.contains(r#"orderpipe_partitions_held{pipeline="pipe",stage="status"} 0"#),
        "{metrics}"
    );
    assert!(
        (0..3).all(|p| markers(&bootstrap, &group, &events, 3).get(&p) == Some(&generation)),
        "later commits keep the marker"
    );

    // Every order's transitions once, in event order.
    let mut expected: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    for record in &load {
        if let Expectation::Event(EventExpectation::Transition { version, .. }) =
            &record.expectation
        {
            expected
                .entry(record.key.clone().unwrap_or_default())
                .or_default()
                .push(*version);
        }
    }
    let mut changed: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    let changes = read_all(&bootstrap, &pipeline.changes, Isolation::ReadCommitted).expect("read");
    for record in &changes {
        let change: serde_json::Value =
            serde_json::from_slice(record.payload.as_deref().unwrap_or_default()).expect("json");
        changed
            .entry(record.key.clone().unwrap_or_default())
            .or_default()
            .push(change["version"].as_u64().expect("a version"));
    }
    assert_eq!(changed.len(), expected.len(), "every order changed");
    for (key, versions) in &expected {
        assert_eq!(
            changed.get(key),
            Some(versions),
            "order {} changed once per event, in order",
            String::from_utf8_lossy(key)
        );
    }
    let dead = read_all(&bootstrap, &pipeline.dead_letter, Isolation::ReadCommitted).expect("read");
    assert!(
        dead.is_empty(),
        "nothing dead-lettered or quarantined: {dead:?}"
    );

    // The moved keys' state: in their new state partition, deleted from their old one.
    let states = read_all(&bootstrap, &state, Isolation::ReadCommitted).expect("read");
    let mut moved = 0;
    for key in expected.keys() {
        let placement = growth.placement(key);
        if !placement.moves() {
            continue;
        }
        let in_partition = |p: i32| -> Vec<bool> {
            states
                .iter()
                .filter(|r| r.partition == p && r.key.as_deref() == Some(key.as_slice()))
                .map(|r| r.payload.is_some())
                .collect()
        };
        let old = in_partition(placement.origin);
        if old.is_empty() {
            // An order that began after the producers switched: it never lived there.
            continue;
        }
        moved += 1;
        assert_eq!(
            old.last(),
            Some(&false),
            "a tombstone in the old state partition"
        );
        assert!(
            in_partition(placement.destination).first() == Some(&true),
            "its state moved to the new state partition first"
        );
    }
    assert!(moved > 0, "some orders moved");
}
