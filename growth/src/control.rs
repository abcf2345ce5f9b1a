//! What a worker knows about a growth of its input: the growth and its phase, as the operator
//! publishes them on the pipeline's control topic, and the settle barrier once recorded.
//!
//! The operator is the only writer, but a deposed leader may still write an older record, and a
//! worker may read records out of order across restarts. So a view only ever moves forward:
//! [`GrowthView::merge`] keeps the later generation, and within one generation the later phase.
//! This module must not do I/O; the record's wire format belongs to the adapter that reads it.

use thiserror::Error;

use crate::growth::Growth;

/// The end offsets of a growth's old partitions when the operator judged that no producer still
/// writes with the old partition count (see `docs/partition-growth.md`, "The settle barrier").
///
/// Records of old partition `p` below `offset(p)` are processed where they are, with the state that
/// partition holds; at `offset(p)` the worker re-shards `p`'s state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleBarrier {
    offsets: Vec<i64>,
}

/// Why a barrier does not fit its growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BarrierError {
    #[error("the barrier has {got} offsets, the growth has {expected} old partitions")]
    WrongLength { expected: i32, got: usize },
    #[error("the barrier's offset {offset} for partition {partition} is negative")]
    NegativeOffset { partition: i32, offset: i64 },
}

impl SettleBarrier {
    /// A barrier with one end offset per old partition of `growth`, in partition order.
    pub fn new(growth: Growth, offsets: Vec<i64>) -> Result<Self, BarrierError> {
        let expected = growth.from().get();
        if usize::try_from(expected).ok() != Some(offsets.len()) {
            return Err(BarrierError::WrongLength {
                expected,
                got: offsets.len(),
            });
        }
        if let Some((partition, &offset)) = offsets.iter().enumerate().find(|(_, o)| **o < 0) {
            return Err(BarrierError::NegativeOffset {
                partition: i32::try_from(partition).unwrap_or(i32::MAX),
                offset,
            });
        }
        Ok(Self { offsets })
    }

    /// The barrier of old partition `partition`; `None` for a partition the growth added.
    pub fn offset(&self, partition: i32) -> Option<i64> {
        usize::try_from(partition)
            .ok()
            .and_then(|index| self.offsets.get(index))
            .copied()
    }

    pub fn offsets(&self) -> &[i64] {
        &self.offsets
    }
}

/// Where a growth stands, as far as workers are concerned. Ordered: a view never moves back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The growth is announced (and the topic may already be larger): the new partitions are held,
    /// old partitions are processed as before, with their own state.
    Held,
    /// The settle barrier is known: each old partition's worker re-shards its state on reaching it.
    /// New partitions are still held.
    Draining(SettleBarrier),
    /// Every old partition has re-sharded: new partitions are processed, and a record of a moved key
    /// that still arrives on its old partition is forwarded to its new one.
    Released,
}

impl Phase {
    fn rank(&self) -> u8 {
        match self {
            Self::Held => 0,
            Self::Draining(_) => 1,
            Self::Released => 2,
        }
    }
}

/// A worker's view of the latest growth of its input topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowthView {
    pub growth: Growth,
    pub phase: Phase,
}

impl GrowthView {
    /// The later of two views of the same topic: a later generation wins, then a later phase. Of two
    /// different barriers for one generation the one already known stays (the operator records a
    /// barrier in the pipeline's status before publishing it, so a second one cannot be published).
    pub fn merge(self, other: Self) -> Self {
        let key = |view: &Self| (view.growth.generation(), view.phase.rank());
        if key(&other) > key(&self) {
            other
        } else {
            self
        }
    }

    /// The settle barrier while draining; once released no rule needs it (every old partition
    /// has re-sharded, so a moved key on an old partition is forwarded whatever its offset).
    pub fn barrier(&self) -> Option<&SettleBarrier> {
        match &self.phase {
            Phase::Draining(barrier) => Some(barrier),
            Phase::Held | Phase::Released => None,
        }
    }

    /// Whether the growth's new partitions may be processed.
    pub fn is_released(&self) -> bool {
        self.phase == Phase::Released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Partitions;
    use proptest::prelude::*;

    fn growth(generation: u64, from: i32, to: i32) -> Growth {
        let count = |n| Partitions::new(n).expect("a positive count");
        Growth::new(generation, count(from), count(to)).expect("a valid growth")
    }

    #[test]
    fn a_barrier_has_one_offset_per_old_partition() {
        let growth = growth(1, 3, 6);
        assert!(SettleBarrier::new(growth, vec![10, 0, 7]).is_ok());
        assert_eq!(
            SettleBarrier::new(growth, vec![10, 0]),
            Err(BarrierError::WrongLength {
                expected: 3,
                got: 2
            })
        );
        assert_eq!(
            SettleBarrier::new(growth, vec![10, -1, 0]),
            Err(BarrierError::NegativeOffset {
                partition: 1,
                offset: -1
            })
        );
        let barrier = SettleBarrier::new(growth, vec![10, 0, 7]).expect("valid");
        assert_eq!(barrier.offset(2), Some(7));
        assert_eq!(barrier.offset(3), None, "a new partition has no barrier");
        assert_eq!(barrier.offset(-1), None);
    }

    fn any_view() -> impl Strategy<Value = GrowthView> {
        (1..4u64, 0..3u8, proptest::collection::vec(0..100i64, 2)).prop_map(
            |(generation, phase, offsets)| {
                let growth = growth(generation, 2, 4);
                let phase = match phase {
                    0 => Phase::Held,
                    1 => Phase::Draining(SettleBarrier::new(growth, offsets).expect("valid")),
                    _ => Phase::Released,
                };
                GrowthView { growth, phase }
            },
        )
    }

    proptest! {
        #[test]
        fn a_view_never_moves_backwards(a in any_view(), b in any_view()) {
            let merged = a.clone().merge(b.clone());
            let key = |v: &GrowthView| (v.growth.generation(), v.phase.rank());
            prop_assert!(key(&merged) >= key(&a) && key(&merged) >= key(&b));
            prop_assert!(merged == a || merged == b);
        }

        #[test]
        fn merging_is_order_independent_up_to_the_kept_barrier(a in any_view(), b in any_view()) {
            let ab = a.clone().merge(b.clone());
            let ba = b.merge(a);
            prop_assert_eq!(ab.growth, ba.growth);
            prop_assert_eq!(ab.phase.rank(), ba.phase.rank());
        }
    }
}
