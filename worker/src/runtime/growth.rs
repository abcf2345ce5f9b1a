//! The worker's side of coordinated partition growth (issue #22, `docs/partition-growth.md`), as
//! the runtime needs it and without I/O: which control records concern this stage, which assigned
//! partitions a growth holds, and which re-shard markers a commit carries.
//!
//! The rules themselves (hold, process, re-shard first, forward; the re-shard plan) are
//! `orderpipe_growth`'s; reading the control topic is `crate::kafka::control`'s; the partition
//! workers and the coordinator apply these decisions. Must not do I/O.

use std::collections::BTreeMap;

use orderpipe_growth::{ControlRecord, GrowthView, ReshardMarker, Verdict, WireError, verdict};

use super::Offsets;

/// The worker's view of its input's latest growth; `None` while it never grew under the protocol.
pub type View = Option<GrowthView>;

/// Re-shard markers by input partition: committed ones, or those a transaction is about to commit.
pub type Markers = BTreeMap<i32, ReshardMarker>;

/// The header a forwarded record carries: `<partition>/<offset>` of the record it copies.
pub const FORWARDED_FROM: &str = "orderpipe.forwarded-from";

/// Which control records are this stage's: keyed by its name, about its input topic, written for
/// this incarnation of its pipeline.
#[derive(Debug, Clone)]
pub struct ControlFilter {
    pub stage: String,
    pub input_topic: String,
    /// Empty: the worker was started without one (older operator, tests) and accepts any.
    pub pipeline_uid: String,
}

impl ControlFilter {
    /// The view a control record announces, if it is for this stage; `Ok(None)` for another
    /// stage's, topic's or pipeline's record and for a deleted one (a null value). An error only
    /// for a record of this stage that cannot be read; the caller logs it and keeps its view.
    pub fn judge(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Option<GrowthView>, WireError> {
        if key != Some(self.stage.as_bytes()) {
            return Ok(None);
        }
        // Compaction's deletion of the stage's record: a view never moves back, so nothing changes.
        let Some(value) = value else {
            return Ok(None);
        };
        let record = ControlRecord::decode(value)?;
        let ours = record.topic == self.input_topic
            && (self.pipeline_uid.is_empty() || record.pipeline_uid == self.pipeline_uid);
        Ok(ours.then_some(record.view))
    }
}

/// `current` with `announced` merged in: only ever forward (`GrowthView::merge`).
pub fn merge(current: View, announced: GrowthView) -> View {
    Some(match current {
        Some(current) => current.merge(announced),
        None => announced,
    })
}

/// Whether `partition` must not be started under `view`: a partition the growth added, before
/// the growth is released (or one beyond a growth the view has not caught up with). Old partitions
/// are never held.
pub fn is_held(view: Option<&GrowthView>, partition: i32) -> bool {
    // Holding does not depend on the record: a new partition holds whatever it contains.
    verdict(view, partition, 0, None, false) == Verdict::Hold
}

/// Whether `marker` (a partition's committed or just written re-shard marker) covers `view`'s
/// growth.
pub fn is_resharded(view: Option<&GrowthView>, marker: Option<ReshardMarker>) -> bool {
    match (view, marker) {
        (Some(view), Some(marker)) => marker.covers(view.growth.generation()),
        _ => false,
    }
}

/// The markers a commit of `offsets` sends: for each partition in it, the marker its transaction
/// wrote (`pending`), else the one already committed, so a later commit never erases a marker the
/// operator is waiting for.
pub fn commit_markers(offsets: &Offsets, committed: &Markers, pending: &Markers) -> Markers {
    offsets
        .keys()
        .filter_map(|partition| {
            let marker = match (pending.get(partition), committed.get(partition)) {
                (Some(a), Some(b)) => Some(*a.max(b)),
                (a, b) => a.or(b).copied(),
            };
            marker.map(|marker| (*partition, marker))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use orderpipe_growth::{Growth, Partitions, Phase, SettleBarrier};

    use super::*;

    fn growth(generation: u64) -> Growth {
        let count = |n| Partitions::new(n).expect("positive");
        Growth::new(generation, count(3), count(6)).expect("a multiple")
    }

    fn view(generation: u64, phase: Phase) -> GrowthView {
        GrowthView {
            growth: growth(generation),
            phase,
        }
    }

    fn draining(generation: u64) -> Phase {
        Phase::Draining(SettleBarrier::new(growth(generation), vec![5, 5, 5]).expect("valid"))
    }

    fn filter(uid: &str) -> ControlFilter {
        ControlFilter {
            stage: "status".to_owned(),
            input_topic: "order-events".to_owned(),
            pipeline_uid: uid.to_owned(),
        }
    }

    fn record(topic: &str, uid: &str, view: GrowthView) -> Vec<u8> {
        ControlRecord {
            pipeline_uid: uid.to_owned(),
            topic: topic.to_owned(),
            view,
        }
        .encode()
    }

    #[test]
    fn only_this_stages_records_about_its_input_and_pipeline_count() {
        let held = view(1, Phase::Held);
        let value = record("order-events", "u1", held.clone());
        let ours = filter("u1");
        assert_eq!(
            ours.judge(Some(b"status"), Some(&value)).expect("readable"),
            Some(held.clone())
        );
        assert_eq!(
            ours.judge(Some(b"validate"), Some(&value))
                .expect("readable"),
            None,
            "another stage's"
        );
        assert_eq!(ours.judge(None, Some(&value)).expect("readable"), None);
        let other_topic = record("orders", "u1", held.clone());
        assert_eq!(
            ours.judge(Some(b"status"), Some(&other_topic))
                .expect("readable"),
            None,
            "about a topic the stage no longer reads"
        );
        let predecessor = record("order-events", "u0", held.clone());
        assert_eq!(
            ours.judge(Some(b"status"), Some(&predecessor))
                .expect("readable"),
            None,
            "a deleted pipeline's"
        );
        assert_eq!(
            filter("")
                .judge(Some(b"status"), Some(&predecessor))
                .expect("readable"),
            Some(held),
            "a worker without a uid accepts any"
        );
        assert_eq!(ours.judge(Some(b"status"), None).expect("a deletion"), None);
    }

    #[test]
    fn a_malformed_record_of_this_stage_is_an_error_naming_the_rule() {
        let error = filter("u1")
            .judge(Some(b"status"), Some(b"{\"phase\":\"Held\"}"))
            .expect_err("malformed");
        assert!(
            error.to_string().contains("not a control record"),
            "{error}"
        );
        // Another stage's garbage is not ours to judge.
        assert_eq!(
            filter("u1")
                .judge(Some(b"notify"), Some(b"garbage"))
                .expect("not ours"),
            None
        );
    }

    #[test]
    fn the_view_only_moves_forward() {
        let released = merge(None, view(1, Phase::Released));
        assert_eq!(
            merge(released.clone(), view(1, Phase::Held)),
            released,
            "a deposed leader's late Held changes nothing"
        );
        assert_eq!(
            merge(released, view(2, Phase::Held)),
            Some(view(2, Phase::Held))
        );
    }

    #[test]
    fn new_partitions_are_held_until_released_and_old_ones_never() {
        assert!(!is_held(None, 5), "no growth: nothing held");
        for phase in [Phase::Held, draining(1)] {
            let view = view(1, phase);
            let held: Vec<i32> = (0..8).filter(|p| is_held(Some(&view), *p)).collect();
            assert_eq!(
                held,
                [3, 4, 5, 6, 7],
                "new ones and any beyond the growth's target"
            );
        }
        let released = view(1, Phase::Released);
        let held: Vec<i32> = (0..8).filter(|p| is_held(Some(&released), *p)).collect();
        assert_eq!(held, [6, 7], "only partitions of a growth not seen yet");
    }

    #[test]
    fn a_marker_covers_its_generation_and_earlier_ones() {
        let second = view(2, Phase::Held);
        assert!(is_resharded(
            Some(&second),
            Some(ReshardMarker { generation: 2 })
        ));
        assert!(!is_resharded(
            Some(&second),
            Some(ReshardMarker { generation: 1 })
        ));
        assert!(!is_resharded(Some(&second), None));
        assert!(!is_resharded(None, Some(ReshardMarker { generation: 1 })));
    }

    #[test]
    fn every_commit_of_a_resharded_partition_carries_its_marker() {
        let marker = |generation| ReshardMarker { generation };
        let committed = Markers::from([(0, marker(1)), (2, marker(1))]);
        let pending = Markers::from([(1, marker(1)), (2, marker(2))]);
        let offsets = Offsets::from([(0, 10), (1, 11), (2, 12), (3, 13)]);
        assert_eq!(
            commit_markers(&offsets, &committed, &pending),
            Markers::from([(0, marker(1)), (1, marker(1)), (2, marker(2))]),
            "carried over, newly written, the later of both; none for a partition without"
        );
        assert_eq!(
            commit_markers(&Offsets::from([(3, 1)]), &committed, &pending),
            Markers::new(),
            "a commit only names the partitions it commits"
        );
        // An older marker pending (re-sharded again for an old generation) never lowers one.
        assert_eq!(
            commit_markers(
                &Offsets::from([(0, 1)]),
                &Markers::from([(0, marker(3))]),
                &Markers::from([(0, marker(2))])
            ),
            Markers::from([(0, marker(3))])
        );
    }
}
