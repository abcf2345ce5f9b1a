//! One growth of a stage input: generation, old and new partition count, and what that means for a
//! key (where it lived, where it lives now, whether it moves).
//!
//! Growth is only to a multiple of the current count (see `docs/partition-growth.md`, "Only
//! multiples"): then every key of old partition `p` moves to some `p + j·from`, a *new* partition,
//! so no old partition ever receives keys and old partitions never have to wait. This module
//! must not do I/O.

use thiserror::Error;

use crate::placement::{Partitions, key_hash, place};

/// Why a requested growth cannot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum GrowthError {
    #[error("partitions only grow: {to} is not more than {from}")]
    NotAGrowth { from: Partitions, to: Partitions },
    #[error(
        "{to} partitions is not a multiple of {from}: keys of one old partition would move into \
         other old partitions, which then have to hold back their own records (grow to a multiple, \
         e.g. {suggestion})"
    )]
    NotAMultiple {
        from: Partitions,
        to: Partitions,
        suggestion: i32,
    },
}

/// The growth of one topic from `from` to `to` partitions, the `generation`-th of that topic.
///
/// Generations count the topic's coordinated growths from 1; they order control records and
/// re-shard markers, so a stale writer can never move a worker's view backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Growth {
    generation: u64,
    from: Partitions,
    to: Partitions,
}

/// What a growth does to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPlacement {
    /// The partition producers wrote the key to before the growth.
    pub origin: i32,
    /// The partition producers write the key to after the growth.
    pub destination: i32,
}

impl KeyPlacement {
    /// Whether the key changes partition (its state and later records move).
    pub fn moves(self) -> bool {
        self.origin != self.destination
    }
}

impl Growth {
    /// A growth `from` → `to`, refused unless `to` is a larger multiple of `from`.
    pub fn new(generation: u64, from: Partitions, to: Partitions) -> Result<Self, GrowthError> {
        if to <= from {
            return Err(GrowthError::NotAGrowth { from, to });
        }
        if to.get() % from.get() != 0 {
            // The next multiple above the requested count; saturating keeps absurd counts an error
            // rather than an overflow.
            let suggestion = (to.get() / from.get())
                .saturating_add(1)
                .saturating_mul(from.get());
            return Err(GrowthError::NotAMultiple {
                from,
                to,
                suggestion,
            });
        }
        Ok(Self {
            generation,
            from,
            to,
        })
    }

    pub fn generation(self) -> u64 {
        self.generation
    }

    pub fn from(self) -> Partitions {
        self.from
    }

    pub fn to(self) -> Partitions {
        self.to
    }

    /// Whether `partition` was added by this growth (held until the growth releases it).
    pub fn is_new_partition(self, partition: i32) -> bool {
        partition >= self.from.get() && self.to.contains(partition)
    }

    /// Whether `partition` existed before this growth.
    pub fn is_old_partition(self, partition: i32) -> bool {
        self.from.contains(partition)
    }

    /// Where `key` lived before and lives after the growth.
    pub fn placement(self, key: &[u8]) -> KeyPlacement {
        let hash = key_hash(key);
        KeyPlacement {
            origin: place(hash, self.from),
            destination: place(hash, self.to),
        }
    }

    /// The partitions keys of old partition `old` can move to (itself included): `old + j·from`.
    pub fn destinations_of(self, old: i32) -> impl Iterator<Item = i32> {
        let (from, to) = (self.from.get(), self.to.get());
        let start = if self.is_old_partition(old) { old } else { to };
        (start..to).step_by(from.unsigned_abs() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn partitions(count: i32) -> Partitions {
        Partitions::new(count).expect("a positive count")
    }

    fn growth(from: i32, to: i32) -> Growth {
        Growth::new(1, partitions(from), partitions(to)).expect("a valid growth")
    }

    #[test]
    fn only_larger_multiples_are_growths() {
        assert!(Growth::new(1, partitions(3), partitions(6)).is_ok());
        assert!(Growth::new(2, partitions(6), partitions(12)).is_ok());
        assert!(Growth::new(1, partitions(3), partitions(12)).is_ok());
        assert_eq!(
            Growth::new(1, partitions(6), partitions(6)),
            Err(GrowthError::NotAGrowth {
                from: partitions(6),
                to: partitions(6)
            })
        );
        assert_eq!(
            Growth::new(1, partitions(3), partitions(5)),
            Err(GrowthError::NotAMultiple {
                from: partitions(3),
                to: partitions(5),
                suggestion: 6
            })
        );
    }

    #[test]
    fn a_refused_growth_names_a_count_that_would_work() {
        let error = Growth::new(1, partitions(4), partitions(10)).expect_err("not a multiple");
        assert!(error.to_string().contains("e.g. 12"), "{error}");
    }

    #[test]
    fn doubling_sends_old_partition_keys_to_itself_or_its_twin() {
        let growth = growth(3, 6);
        assert_eq!(growth.destinations_of(1).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(growth.destinations_of(5).count(), 0, "not an old partition");
        assert!(growth.is_new_partition(3) && growth.is_new_partition(5));
        assert!(!growth.is_new_partition(2) && !growth.is_new_partition(6));
    }

    proptest! {
        #[test]
        fn a_key_moves_only_to_a_new_partition_among_its_origins_destinations(
            key in proptest::collection::vec(any::<u8>(), 0..48),
            from in 1..=32i32,
            factor in 2..=8i32,
        ) {
            let growth = growth(from, from * factor);
            let placement = growth.placement(&key);
            prop_assert!(growth.is_old_partition(placement.origin));
            prop_assert!(growth.destinations_of(placement.origin).any(|p| p == placement.destination));
            if placement.moves() {
                prop_assert!(growth.is_new_partition(placement.destination));
            }
        }
    }
}
