//! The control record's wire format: what the operator writes to a pipeline's control topic and
//! every worker reads back. Key: the stage's name (UTF-8), so compaction keeps the latest record per
//! stage. Value: JSON, e.g.
//!
//! ```json
//! {"pipelineUid":"5c0e…","topic":"orders","generation":1764950400000,"from":3,"to":6,
//!  "phase":"Draining","barrier":[812,790,804]}
//! ```
//!
//! `barrier` is present only with phase `Draining`. The topic is the stage input the growth is of:
//! a worker ignores a record for any other topic (the stage's input was changed since), and a
//! record of another incarnation of its pipeline (`pipelineUid`): the control topic outlives a
//! deleted pipeline like any retained topic, and a re-created pipeline must not obey its
//! predecessor's growths. Encoding is pure; the Kafka I/O belongs to the operator's publisher and
//! the worker's reader.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::control::{BarrierError, GrowthView, Phase, SettleBarrier};
use crate::growth::{Growth, GrowthError};
use crate::placement::Partitions;

/// One control record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRecord {
    /// The `metadata.uid` of the OrderPipeline that wrote it.
    pub pipeline_uid: String,
    /// The grown topic (the stage's input).
    pub topic: String,
    pub view: GrowthView,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Wire {
    pipeline_uid: String,
    topic: String,
    generation: u64,
    from: i32,
    to: i32,
    phase: WirePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    barrier: Option<Vec<i64>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
enum WirePhase {
    Held,
    Draining,
    Released,
}

/// Why a control record's value cannot be read. The worker logs it and keeps its current view.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("not a control record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("partition counts must be positive, got from {from} to {to}")]
    Partitions { from: i32, to: i32 },
    #[error(transparent)]
    Growth(#[from] GrowthError),
    #[error("phase Draining needs a barrier")]
    MissingBarrier,
    #[error("only phase Draining carries a barrier")]
    UnexpectedBarrier,
    #[error(transparent)]
    Barrier(#[from] BarrierError),
}

impl ControlRecord {
    /// The record's value bytes.
    pub fn encode(&self) -> Vec<u8> {
        let growth = self.view.growth;
        let (phase, barrier) = match &self.view.phase {
            Phase::Held => (WirePhase::Held, None),
            Phase::Draining(barrier) => (WirePhase::Draining, Some(barrier.offsets().to_vec())),
            Phase::Released => (WirePhase::Released, None),
        };
        let wire = Wire {
            pipeline_uid: self.pipeline_uid.clone(),
            topic: self.topic.clone(),
            generation: growth.generation(),
            from: growth.from().get(),
            to: growth.to().get(),
            phase,
            barrier,
        };
        // A struct of strings, integers and a unit enum always serialises.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// A record from its value bytes, checked as strictly as the operator builds it.
    pub fn decode(value: &[u8]) -> Result<Self, WireError> {
        let wire: Wire = serde_json::from_slice(value)?;
        let (Some(from), Some(to)) = (Partitions::new(wire.from), Partitions::new(wire.to)) else {
            return Err(WireError::Partitions {
                from: wire.from,
                to: wire.to,
            });
        };
        let growth = Growth::new(wire.generation, from, to)?;
        let phase = match (wire.phase, wire.barrier) {
            (WirePhase::Draining, Some(offsets)) => {
                Phase::Draining(SettleBarrier::new(growth, offsets)?)
            }
            (WirePhase::Draining, None) => return Err(WireError::MissingBarrier),
            (_, Some(_)) => return Err(WireError::UnexpectedBarrier),
            (WirePhase::Held, None) => Phase::Held,
            (WirePhase::Released, None) => Phase::Released,
        };
        Ok(Self {
            pipeline_uid: wire.pipeline_uid,
            topic: wire.topic,
            view: GrowthView { growth, phase },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn growth(generation: u64, from: i32, k: i32) -> Growth {
        let partitions = |n| Partitions::new(n).expect("positive");
        Growth::new(generation, partitions(from), partitions(from * k)).expect("a multiple")
    }

    #[test]
    fn the_documented_example_decodes() {
        let value = br#"{"pipelineUid":"u1","topic":"orders","generation":1,"from":3,"to":6,"phase":"Draining","barrier":[812,790,804]}"#;
        let record = ControlRecord::decode(value).expect("decodes");
        assert_eq!(record.pipeline_uid, "u1");
        assert_eq!(record.topic, "orders");
        assert_eq!(record.view.growth, growth(1, 3, 2));
        assert_eq!(
            record.view.barrier().map(SettleBarrier::offsets),
            Some(&[812, 790, 804][..])
        );
    }

    #[test]
    fn records_the_operator_would_never_write_are_refused_with_the_rule() {
        let refused = |value: &str| {
            ControlRecord::decode(value.as_bytes())
                .expect_err(value)
                .to_string()
        };
        assert!(
            refused(
                r#"{"pipelineUid":"u","topic":"t","generation":1,"from":3,"to":5,"phase":"Held"}"#
            )
            .contains("not a multiple")
        );
        assert!(
            refused(
                r#"{"pipelineUid":"u","topic":"t","generation":1,"from":0,"to":6,"phase":"Held"}"#
            )
            .contains("positive")
        );
        assert!(refused(r#"{"pipelineUid":"u","topic":"t","generation":1,"from":3,"to":6,"phase":"Draining"}"#)
            .contains("needs a barrier"));
        assert!(
            refused(r#"{"pipelineUid":"u","topic":"t","generation":1,"from":3,"to":6,"phase":"Held","barrier":[1,2,3]}"#)
                .contains("only phase Draining")
        );
        assert!(
            refused(r#"{"pipelineUid":"u","topic":"t","generation":1,"from":3,"to":6,"phase":"Draining","barrier":[1,2]}"#)
                .contains("3 old partitions")
        );
        assert!(
            refused(
                r#"{"pipelineUid":"u","topic":"t","generation":1,"from":3,"to":6,"phase":"Paused"}"#
            )
            .contains("not a control record")
        );
    }

    fn any_view() -> impl Strategy<Value = GrowthView> {
        (
            1u64..1000,
            1i32..64,
            2i32..5,
            0u8..3,
            prop::collection::vec(0i64..1 << 40, 64),
        )
            .prop_map(|(generation, from, k, phase, offsets)| {
                let growth = growth(generation, from, k);
                let phase = match phase {
                    0 => Phase::Held,
                    1 => Phase::Draining(
                        SettleBarrier::new(growth, offsets[..from as usize].to_vec())
                            .expect("one offset per old partition"),
                    ),
                    _ => Phase::Released,
                };
                GrowthView { growth, phase }
            })
    }

    proptest! {
        #[test]
        fn every_record_round_trips(
            view in any_view(),
            topic in "[a-zA-Z0-9._-]{1,249}",
            pipeline_uid in "[a-f0-9-]{0,36}",
        ) {
            let record = ControlRecord { pipeline_uid, topic, view };
            prop_assert_eq!(ControlRecord::decode(&record.encode()).expect("decodes"), record);
        }

        #[test]
        fn arbitrary_bytes_never_panic(value in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = ControlRecord::decode(&value);
        }
    }
}
