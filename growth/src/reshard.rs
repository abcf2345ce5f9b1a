//! The re-shard of one old partition's state: which keys leave it, and for which new partition.
//!
//! The worker that owns old partition `p` runs it on reaching `p`'s settle barrier, over the state
//! it restored for `p`, and writes each move (the key's state to its new state partition, a
//! tombstone in `p`) in the transaction that commits `p`'s offset with the re-shard marker. Planning
//! again over what remains moves nothing, so a re-shard repeated after a crash or by an older
//! worker's lost marker is harmless. This module must not do I/O.

use std::collections::BTreeMap;

use crate::growth::Growth;

/// One key's state leaving the old partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move<'k> {
    pub key: &'k [u8],
    /// The new partition; its state partition receives the key's state.
    pub to: i32,
}

/// The moves of one old partition's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReshardPlan<'k> {
    pub moves: Vec<Move<'k>>,
    /// Keys that stay: their destination is this partition.
    pub kept: usize,
    /// Keys whose origin is another partition (written by a producer with its own partitioner):
    /// they stay where their records arrived, as before the growth.
    pub foreign: usize,
}

impl ReshardPlan<'_> {
    /// How many keys each new partition receives, for progress in the status and the logs.
    pub fn per_destination(&self) -> BTreeMap<i32, usize> {
        let mut counts = BTreeMap::new();
        for step in &self.moves {
            *counts.entry(step.to).or_insert(0) += 1;
        }
        counts
    }
}

/// The moves of old partition `partition`'s state, whose keys are `keys`, under `growth`.
/// Empty for a partition the growth added (it has no state to give away).
pub fn plan<'k>(
    growth: Growth,
    partition: i32,
    keys: impl IntoIterator<Item = &'k [u8]>,
) -> ReshardPlan<'k> {
    let mut plan = ReshardPlan::default();
    if !growth.is_old_partition(partition) {
        return plan;
    }
    for key in keys {
        let placement = growth.placement(key);
        if placement.origin != partition {
            plan.foreign += 1;
        } else if placement.moves() {
            plan.moves.push(Move {
                key,
                to: placement.destination,
            });
        } else {
            plan.kept += 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{Partitions, partition_for};
    use proptest::prelude::*;

    fn growth(from: i32, to: i32) -> Growth {
        let count = |n| Partitions::new(n).expect("a positive count");
        Growth::new(1, count(from), count(to)).expect("a valid growth")
    }

    fn keys_of(partition: i32, from: i32, count: usize) -> Vec<Vec<u8>> {
        let from = Partitions::new(from).expect("a positive count");
        (0..)
            .map(|i| format!("order-{i}").into_bytes())
            .filter(|key| partition_for(key, from) == partition)
            .take(count)
            .collect()
    }

    #[test]
    fn doubling_moves_the_keys_whose_new_partition_is_the_twin() {
        let growth = growth(3, 6);
        let keys = keys_of(1, 3, 200);
        let plan = plan(growth, 1, keys.iter().map(Vec::as_slice));
        assert_eq!(plan.foreign, 0);
        assert_eq!(plan.moves.len() + plan.kept, 200);
        assert_eq!(
            plan.per_destination().keys().copied().collect::<Vec<_>>(),
            [4]
        );
        // murmur2 spreads keys: about half move (binomial, 200 draws: far inside 60..140).
        assert!(
            (60..140).contains(&plan.moves.len()),
            "{}",
            plan.moves.len()
        );
    }

    #[test]
    fn a_new_partition_gives_nothing_away() {
        let keys = keys_of(4, 6, 10);
        let plan = plan(growth(3, 6), 4, keys.iter().map(Vec::as_slice));
        assert_eq!(plan, ReshardPlan::default());
    }

    proptest! {
        #[test]
        fn after_a_reshard_every_key_is_where_producers_now_write_it(
            seeds in proptest::collection::vec(any::<u32>(), 0..200),
            from in 1..=6i32,
            factor in 2..=4i32,
        ) {
            let growth = growth(from, from * factor);
            let to = growth.to();
            // The state of every old partition: the keys its records were written to.
            let mut state: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
            for seed in seeds {
                let key = format!("o-{seed}").into_bytes();
                state.entry(growth.placement(&key).origin).or_default().push(key);
            }
            let mut after: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
            for (partition, keys) in &state {
                let plan = plan(growth, *partition, keys.iter().map(Vec::as_slice));
                prop_assert_eq!(plan.foreign, 0);
                for step in &plan.moves {
                    prop_assert!(growth.is_new_partition(step.to));
                    after.entry(step.to).or_default().push(step.key.to_vec());
                }
                let moved: Vec<&[u8]> = plan.moves.iter().map(|m| m.key).collect();
                let kept = keys.iter().filter(|k| !moved.contains(&k.as_slice())).cloned();
                after.entry(*partition).or_default().extend(kept);
            }
            for (partition, keys) in &after {
                for key in keys {
                    prop_assert_eq!(partition_for(key, to), *partition);
                }
            }
            let before: usize = state.values().map(Vec::len).sum();
            let now: usize = after.values().map(Vec::len).sum();
            prop_assert_eq!(before, now, "no key lost or duplicated");
            // Idempotent: planning the re-sharded old partitions again moves nothing.
            for partition in 0..from {
                let keys = after.get(&partition).cloned().unwrap_or_default();
                prop_assert!(plan(growth, partition, keys.iter().map(Vec::as_slice)).moves.is_empty());
            }
        }
    }
}
