//! The output topics of a stage: which topic each logical [`Output`] goes to (the names from the
//! worker contract) and the partition rule for changelog records. Resolved once at startup so a
//! missing output fails the worker before it consumes anything. Must not produce records.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use orderpipe_api::contract::WorkerConfig;
use orderpipe_api::v1alpha1::Processor as ProcessorKind;
use orderpipe_orders::{Emit, Output};

use crate::error::WorkerError;
use crate::record::OutRecord;

/// The contract's output name (`ORDERPIPE_OUTPUTS`) of each logical output a built-in stage writes.
/// Dead-letter and changelog records have their own variables.
fn output_name(output: Output) -> Option<&'static str> {
    match output {
        Output::Validated => Some("validated"),
        Output::Rejected => Some("rejected"),
        Output::StatusChanged => Some("changes"),
        Output::NotificationAudit => Some("audit"),
        Output::StatusEvent => Some("events"),
        Output::DeadLetter | Output::Changelog => None,
    }
}

/// Outputs a pipeline may leave out; their records are then not produced.
fn is_optional(output: Output) -> bool {
    output == Output::StatusEvent
}

/// The outputs each built-in stage writes.
fn stage_outputs(processor: ProcessorKind) -> &'static [Output] {
    match processor {
        ProcessorKind::Validate => &[
            Output::Validated,
            Output::Rejected,
            Output::StatusEvent,
            Output::DeadLetter,
            Output::Changelog,
        ],
        ProcessorKind::Status => &[Output::StatusChanged, Output::DeadLetter, Output::Changelog],
        ProcessorKind::Notify => &[Output::NotificationAudit, Output::DeadLetter],
        ProcessorKind::Custom => &[],
    }
}

/// Topic of every output of one stage.
#[derive(Debug, Clone)]
pub struct OutputTopics {
    topics: HashMap<Output, String>,
}

impl OutputTopics {
    /// Resolves every output the configured stage writes, failing on the first without a topic.
    pub fn for_stage(config: &WorkerConfig) -> Result<Self, WorkerError> {
        let mut topics = HashMap::new();
        for &output in stage_outputs(config.processor) {
            let topic = match output {
                Output::DeadLetter => Some(config.dead_letter_topic.clone()),
                Output::Changelog => config.state_topic.clone(),
                other => output_name(other).and_then(|name| config.output(name).map(str::to_owned)),
            };
            match topic {
                Some(topic) => {
                    topics.insert(output, topic);
                }
                None if is_optional(output) => {}
                None => return Err(without_topic(output)),
            }
        }
        Ok(Self { topics })
    }

    /// The record to produce for `emit`, decided while processing the input record of
    /// `partition` stamped `input_timestamp`; `None` for an optional output the pipeline left out.
    pub fn resolve<'a>(
        &'a self,
        emit: &'a Emit,
        partition: i32,
        input_timestamp: DateTime<Utc>,
    ) -> Result<Option<OutRecord<'a>>, WorkerError> {
        let Some(topic) = self.topics.get(&emit.output) else {
            return if is_optional(emit.output) {
                Ok(None)
            } else {
                Err(without_topic(emit.output))
            };
        };
        Ok(Some(OutRecord {
            topic,
            // The state topic is co-partitioned with the input: restoring partition p of the input
            // reads partition p of the state topic, whatever partitioner wrote the input.
            partition: (emit.output == Output::Changelog).then_some(partition),
            key: emit.key.as_deref(),
            payload: Some(&emit.payload),
            headers: &emit.headers,
            passthrough: &[],
            // Dead letters and changelog records are the stage's own records, stamped when written
            // (a changelog's compaction and a dead letter's retention count from then).
            timestamp: (!matches!(emit.output, Output::DeadLetter | Output::Changelog))
                .then_some(input_timestamp),
        }))
    }

    /// The tombstone deleting `key`'s state from the changelog partition of input partition
    /// `partition`; `None` for a stage without a state topic.
    pub fn tombstone<'a>(&'a self, key: &'a [u8], partition: i32) -> Option<OutRecord<'a>> {
        let topic = self.topics.get(&Output::Changelog)?;
        Some(OutRecord {
            topic,
            partition: Some(partition),
            key: Some(key),
            payload: None,
            headers: &[],
            passthrough: &[],
            timestamp: None,
        })
    }

    /// `key`'s state `state` (a changelog record's payload) written to the changelog partition of
    /// input partition `to`, where a re-shard moves it (partition growth); `None` for a stage
    /// without a state topic.
    pub fn moved_state<'a>(
        &'a self,
        key: &'a [u8],
        state: &'a [u8],
        to: i32,
    ) -> Option<OutRecord<'a>> {
        let topic = self.topics.get(&Output::Changelog)?;
        Some(OutRecord {
            topic,
            partition: Some(to),
            key: Some(key),
            payload: Some(state),
            headers: &[],
            passthrough: &[],
            timestamp: None,
        })
    }
}

fn without_topic(output: Output) -> WorkerError {
    WorkerError::OutputWithoutTopic {
        output: output_label(output),
        name: output_name(output).unwrap_or("state topic"),
    }
}

fn output_label(output: Output) -> &'static str {
    match output {
        Output::Validated => "Validated",
        Output::Rejected => "Rejected",
        Output::DeadLetter => "DeadLetter",
        Output::Changelog => "Changelog",
        Output::StatusChanged => "StatusChanged",
        Output::NotificationAudit => "NotificationAudit",
        Output::StatusEvent => "StatusEvent",
    }
}
