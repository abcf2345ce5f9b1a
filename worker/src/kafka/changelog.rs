//! Restores per-key state: reads one partition of the stage's compacted state topic from the
//! beginning to its last stable offset with a read_committed consumer of its own, so only what
//! committed transactions wrote is restored. Must not write to the state topic.

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::RestoreFailure;
use crate::runtime::{ApplyChangelog, ChangelogReader};

/// How long a restore may take before the worker gives up (and exits, to be restarted).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(100);
/// A restore that neither reads a record nor reaches the end for this long starts a fresh
/// consumer at its position. Seen once right after brokers came back from an outage below
/// `min.insync.replicas` while the partition's leadership moved: one partition's restore consumer
/// got nothing at all for minutes, its siblings' restores finished in 2 s (docs/high-availability.md).
const RESTORE_STALL: Duration = Duration::from_secs(20);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(30);

/// Reaching the end of the partition is how a restore finishes, not an error worth a log line.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka also reports it as a global error, besides the partition event.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(%error, reason, "state restore client error");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// A failed librdkafka call of a restore.
fn broker(error: KafkaError) -> RestoreFailure {
    RestoreFailure::Broker(error.into())
}

/// A state topic read through Kafka.
#[derive(Clone)]
pub struct KafkaChangelog {
    config: ClientConfig,
    topic: String,
}

impl std::fmt::Debug for KafkaChangelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaChangelog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaChangelog {
    /// `config` must be read_committed with `enable.partition.eof` (see
    /// `crate::kafka::client::restore_consumer`).
    pub fn new(config: ClientConfig, topic: String) -> Self {
        Self { config, topic }
    }
}

impl KafkaChangelog {
    /// The low watermark and the end to restore to: the last stable offset once it has reached
    /// the high watermark seen at the start. A transaction still open on the partition can only be
    /// a previous owner's (this worker writes nothing before its restore), possibly one whose
    /// offsets already committed while its marker here is still being written; restoring before it
    /// resolves would miss its state. It resolves within the transaction timeout.
    fn stable_end(
        &self,
        consumer: &BaseConsumer<RestoreContext>,
        partition: i32,
        stop: &CancellationToken,
        started: Instant,
    ) -> Result<(i64, i64), RestoreFailure> {
        let mut uncommitted = self.config.clone();
        uncommitted.set("isolation.level", "read_uncommitted");
        let probe: BaseConsumer<RestoreContext> = uncommitted
            .create_with_context(RestoreContext)
            .map_err(broker)?;
        let (_, high) = probe
            .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
            .map_err(broker)?;
        loop {
            // Under read_committed the "high" watermark is the last stable offset.
            let (low, stable) = consumer
                .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
                .map_err(broker)?;
            if stable >= high {
                return Ok((low, stable));
            }
            if stop.is_cancelled() {
                return Err(RestoreFailure::Interrupted);
            }
            if started.elapsed() > RESTORE_TIMEOUT {
                return Err(RestoreFailure::Timeout {
                    end: high,
                    position: stable,
                    waited: RESTORE_TIMEOUT,
                });
            }
            tracing::info!(
                partition,
                stable,
                high,
                "waiting for an open transaction on the state partition to end"
            );
            std::thread::sleep(POLL);
        }
    }
}

impl ChangelogReader for KafkaChangelog {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn read(
        &self,
        partition: i32,
        stop: &CancellationToken,
        apply: &mut ApplyChangelog<'_>,
    ) -> Result<u64, RestoreFailure> {
        let consumer: BaseConsumer<RestoreContext> = self
            .config
            .create_with_context(RestoreContext)
            .map_err(broker)?;
        let started = Instant::now();
        let (low, end) = self.stable_end(&consumer, partition, stop, started)?;
        if end <= low {
            return Ok(0);
        }
        let assign = |consumer: &BaseConsumer<RestoreContext>, from: Offset| {
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&self.topic, partition, from)
                .map_err(broker)?;
            consumer.assign(&assignment).map_err(broker)
        };
        assign(&consumer, Offset::Beginning)?;
        let mut consumer = consumer;

        let mut applied = 0_u64;
        let mut position = low;
        let mut progressed = Instant::now();
        while position < end {
            if stop.is_cancelled() {
                return Err(RestoreFailure::Interrupted);
            }
            if progressed.elapsed() > RESTORE_STALL {
                tracing::warn!(
                    partition,
                    position,
                    end,
                    topic = self.topic,
                    "restore made no progress for {RESTORE_STALL:?}; continuing with a fresh consumer"
                );
                consumer = self
                    .config
                    .create_with_context(RestoreContext)
                    .map_err(broker)?;
                assign(&consumer, Offset::Offset(position))?;
                progressed = Instant::now();
            }
            if started.elapsed() > RESTORE_TIMEOUT {
                return Err(RestoreFailure::Timeout {
                    end,
                    position,
                    waited: RESTORE_TIMEOUT,
                });
            }
            match consumer.poll(POLL) {
                None => {}
                Some(Ok(message)) => {
                    position = message.offset() + 1;
                    progressed = Instant::now();
                    // Keyless records belong to no key; the stages never write them.
                    if let Some(key) = message.key() {
                        apply(message.offset(), key, message.payload())?;
                        applied += 1;
                    }
                }
                // The end of what is readable now; records after `end` are not needed (aborted
                // transactions and control records leave gaps the position jumps over).
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) => {
                    tracing::warn!(%error, partition, topic = self.topic, "restore read error; retrying");
                }
            }
        }
        Ok(applied)
    }
}
