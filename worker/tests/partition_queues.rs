//! The stage consumer's queue per partition, on the real broker: a paused partition stops
//! delivering while the others keep flowing, and after its resume it goes on at the next offset.
//! Every record of every partition arrives exactly once, in offset order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use orderpipe_stack::{create_topics, kafka_bootstrap, unique_name};
use orderpipe_worker::kafka::consumer::{KafkaSource, SplitsPartitions};
use orderpipe_worker::kafka::partition_queues::PartitionQueues;
use orderpipe_worker::runtime::Source;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;

const PARTITIONS: i32 = 2;
const PER_PARTITION: i64 = 3_000;
const PAUSED: i32 = 0;
const FLOWING: i32 = 1;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Splits and drops the queues as the stage consumer's context does, and nothing else.
struct Splitting {
    topic: String,
    queues: PartitionQueues<Self>,
}

impl Splitting {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect()
    }
}

impl ClientContext for Splitting {}

impl ConsumerContext for Splitting {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let unsplit = self.queues.split(&self.partitions(list));
                assert!(unsplit.is_empty(), "partitions {unsplit:?} were not split");
            }
            Rebalance::Revoke(list) => self.queues.remove(&self.partitions(list)),
            Rebalance::Error(_) => {}
        }
    }
}

impl SplitsPartitions for Splitting {
    fn partition_queues(&self) -> &PartitionQueues<Self> {
        &self.queues
    }
}

fn produce(bootstrap: &str, topic: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for partition in 0..PARTITIONS {
        for index in 0..PER_PARTITION {
            let payload = format!("{partition}/{index}");
            loop {
                match producer.send(
                    BaseRecord::<[u8], [u8]>::to(topic)
                        .partition(partition)
                        .payload(payload.as_bytes()),
                ) {
                    Ok(()) => break,
                    // The local queue is full: serve delivery reports, then try again.
                    Err(_) => {
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("records acknowledged");
}

/// Polls `source` until `done` says so, recording each record's offset by partition.
fn poll_until(
    source: &mut KafkaSource<Splitting>,
    seen: &mut BTreeMap<i32, Vec<i64>>,
    what: &str,
    mut done: impl FnMut(&BTreeMap<i32, Vec<i64>>) -> bool,
) {
    let deadline = Instant::now() + TIMEOUT;
    while !done(seen) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if let Some(polled) = source.poll(Duration::from_millis(100)) {
            let record = polled.expect("no consumer error");
            seen.entry(record.partition)
                .or_default()
                .push(record.offset);
        }
    }
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn a_paused_partition_stops_alone_and_resumes_at_its_next_offset() {
    let bootstrap = kafka_bootstrap().expect("the local stack's broker");
    let topic = unique_name("split-queues");
    create_topics(&bootstrap, &[(&topic, PARTITIONS)]).expect("topic created");
    produce(&bootstrap, &topic);

    let consumer = BaseConsumer::from_config_and_context(
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", unique_name("split-queues"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // A small pre-fetch, so the paused partition's queue fills while it waits.
            .set("queued.max.messages.kbytes", "16"),
        Splitting {
            topic: topic.clone(),
            queues: PartitionQueues::new(&topic),
        },
    )
    .expect("consumer");
    let mut source = KafkaSource::subscribe(consumer, &topic).expect("subscribed");
    let mut seen = BTreeMap::new();

    poll_until(
        &mut source,
        &mut seen,
        "a first record of the paused partition",
        |seen| seen.contains_key(&PAUSED),
    );
    source.pause(PAUSED).expect("paused");
    let delivered_before_pause = seen[&PAUSED].len();
    poll_until(
        &mut source,
        &mut seen,
        "every record of the flowing partition",
        |seen| seen.get(&FLOWING).map_or(0, Vec::len) as i64 == PER_PARTITION,
    );
    assert_eq!(
        seen[&PAUSED].len(),
        delivered_before_pause,
        "the paused partition delivered records"
    );
    assert!(
        (delivered_before_pause as i64) < PER_PARTITION,
        "the paused partition was drained before its pause; the test shows nothing"
    );

    source.resume(PAUSED).expect("resumed");
    poll_until(
        &mut source,
        &mut seen,
        "every record of the resumed partition",
        |seen| seen[&PAUSED].len() as i64 == PER_PARTITION,
    );
    let in_order: Vec<i64> = (0..PER_PARTITION).collect();
    for partition in [PAUSED, FLOWING] {
        assert_eq!(
            seen[&partition], in_order,
            "partition {partition}: every offset once, in order"
        );
    }
    source.close(Instant::now() + Duration::from_secs(10));
}
