//! Reads the pipeline's control topic (partition growth, `docs/partition-growth.md`): an assigned
//! read_committed consumer of its one partition from the beginning, never a group member, never
//! committing. It keeps the stage's view of its input's latest growth current and publishes each
//! change on a `watch` channel the coordinator and the partition workers read.
//!
//! [`KafkaControl::sync`] reads to the end as of the call, before the stage consumer starts and on
//! every assignment: the operator writes `Held` before it grows a topic, so a worker that has read
//! to the end before starting a newly assigned partition knows whether it must hold it.
//! [`KafkaControl::tail`] picks up later changes (draining, released). A topic that does not exist
//! yet means no growth ever ran: the view stays `None`. Which records count is
//! [`ControlFilter`]'s decision; a record that cannot be read is logged and skipped.
//! Must not decide anything about partitions.

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::ControlFailure;
use crate::runtime::growth::{ControlFilter, View, merge};

/// The control topic's only partition.
const PARTITION: i32 = 0;
/// How long a sync may take before the worker gives up (and exits, to be restarted): it runs in
/// the rebalance callback, so well inside the group's `max.poll.interval.ms` (5 min).
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// How often the tail looks again for a control topic that did not exist.
const ABSENT_RECHECK: Duration = Duration::from_secs(5);

/// Reaching the end of the partition is how a sync finishes, not an error worth a log line.
struct ControlContext;

impl ClientContext for ControlContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(%error, reason, "control topic client error");
        }
    }
}

impl ConsumerContext for ControlContext {}

fn is_absent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

/// See the module documentation.
pub struct KafkaControl {
    consumer: BaseConsumer<ControlContext>,
    topic: String,
    filter: ControlFilter,
    view: watch::Sender<View>,
    /// Whether the partition is assigned: only once the topic is known to exist.
    assigned: bool,
    /// The offset after the last record read.
    position: i64,
    absent_checked: Option<Instant>,
}

impl std::fmt::Debug for KafkaControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaControl")
            .field("topic", &self.topic)
            .field("position", &self.position)
            .field("view", &*self.view.borrow())
            .finish_non_exhaustive()
    }
}

impl KafkaControl {
    /// A reader of `topic` for the stage `filter` describes, and the receiving end of its view.
    /// `config` must be read_committed with `enable.partition.eof` (see
    /// `crate::kafka::client::control_consumer`).
    pub fn new(
        config: &ClientConfig,
        topic: String,
        filter: ControlFilter,
    ) -> Result<(Self, watch::Receiver<View>), KafkaError> {
        let consumer = config.create_with_context(ControlContext)?;
        let (view, receiver) = watch::channel(None);
        let reader = Self {
            consumer,
            topic,
            filter,
            view,
            assigned: false,
            position: 0,
            absent_checked: None,
        };
        Ok((reader, receiver))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Reads every record written before the call (to the last stable offset as of now) and
    /// applies it to the view. A control topic that does not exist leaves the view as it is.
    pub fn sync(&mut self) -> Result<(), ControlFailure> {
        let started = Instant::now();
        let end = match self
            .consumer
            .fetch_watermarks(&self.topic, PARTITION, WATERMARK_TIMEOUT)
        {
            // Under read_committed the "high" watermark is the last stable offset.
            Ok((_, end)) => end,
            Err(error) if is_absent(&error) => {
                tracing::debug!(
                    topic = self.topic,
                    "no control topic yet: no growth to follow"
                );
                self.absent_checked = Some(Instant::now());
                return Ok(());
            }
            Err(error) => return Err(ControlFailure::Broker(error.into())),
        };
        self.assign()?;
        while self.position < end {
            if started.elapsed() > SYNC_TIMEOUT {
                return Err(ControlFailure::Timeout {
                    end,
                    position: self.position,
                    waited: SYNC_TIMEOUT,
                });
            }
            // The end of what is readable now: compaction may have left the last offsets empty.
            if self.read_one(POLL) == Read::End {
                break;
            }
        }
        Ok(())
    }

    /// Applies what arrived since the last read, waiting at most `wait` for it.
    pub fn tail(&mut self, wait: Duration) {
        if !self.assigned {
            let due = self
                .absent_checked
                .is_none_or(|at| at.elapsed() >= ABSENT_RECHECK);
            if due {
                self.absent_checked = Some(Instant::now());
            }
            if due && let Err(error) = self.sync() {
                tracing::warn!(%error, topic = self.topic, "reading the control topic failed; retrying");
            }
            if !self.assigned {
                // Nothing to read: serve the client's callbacks for `wait`, which paces the loop.
                let _ = self.consumer.poll(wait);
                return;
            }
        }
        let deadline = Instant::now() + wait;
        while self.read_one(deadline.saturating_duration_since(Instant::now())) == Read::Record {}
    }

    fn assign(&mut self) -> Result<(), ControlFailure> {
        if self.assigned {
            return Ok(());
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.topic, PARTITION, Offset::Beginning)
            .and_then(|()| self.consumer.assign(&assignment))
            .map_err(|error| ControlFailure::Broker(error.into()))?;
        self.assigned = true;
        Ok(())
    }

    fn read_one(&mut self, wait: Duration) -> Read {
        match self.consumer.poll(wait) {
            None => Read::Nothing,
            Some(Ok(message)) => {
                self.position = message.offset() + 1;
                self.apply(&message);
                Read::Record
            }
            Some(Err(KafkaError::PartitionEOF(_))) => Read::End,
            Some(Err(error)) => {
                tracing::warn!(%error, topic = self.topic, "control topic read error; retrying");
                Read::Nothing
            }
        }
    }

    fn apply(&self, message: &BorrowedMessage<'_>) {
        match self.filter.judge(message.key(), message.payload()) {
            Ok(Some(announced)) => {
                self.view.send_if_modified(|view| {
                    let merged = merge(view.clone(), announced);
                    let changed = merged != *view;
                    if changed {
                        tracing::info!(
                            offset = message.offset(),
                            view = ?merged,
                            "the growth of the input changed"
                        );
                    }
                    *view = merged;
                    changed
                });
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(
                %error,
                topic = self.topic,
                offset = message.offset(),
                stage = self.filter.stage,
                "skipping a control record that cannot be read; the view stays as it is"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Record,
    Nothing,
    End,
}

/// Tails the control topic until `shutdown`, on the calling thread (blocking polls). The lock is
/// held for one short poll at a time, so an assignment's sync waits at most that long.
pub fn tail_until(control: &std::sync::Mutex<KafkaControl>, shutdown: &CancellationToken) {
    while !shutdown.is_cancelled() {
        crate::runtime::driver::lock(control).tail(POLL);
    }
}
