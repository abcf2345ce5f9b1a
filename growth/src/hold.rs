//! The worker's rule during a growth: may this record be processed now, must it wait, must the
//! partition's state be re-sharded first, or does it belong to another partition?
//!
//! The order it keeps is "per key, in the order each producer wrote": a producer writes a key to
//! its old partition until it refreshes its metadata and to its new partition after, never back.
//! So a moved key's records on its old partition (up to the settle barrier) are all processed, with
//! the old partition's state, before any of its records on the new partition, which are held until
//! every old partition has re-sharded. Old partitions are never held. This module must not do I/O.

use crate::control::{GrowthView, Phase};

/// What to do with one record of an input partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it, with the state this partition holds.
    Process,
    /// Not yet: the partition stays where it is until the view changes (only new partitions, before
    /// the growth is released).
    Hold,
    /// Re-shard this old partition's state first (in the transaction that commits the barrier
    /// offset), then ask again.
    ReshardFirst,
    /// The key's state has moved: produce the record, unchanged, to partition `to` of the input in
    /// the transaction that commits its offset here. Only for records written after the producer
    /// refresh bound the settle barrier assumes (counted and reported; see the design).
    Forward { to: i32 },
}

/// The verdict for the record at `offset` of `partition` with `key`, under the worker's `view` of
/// its input's latest growth (`None`: the input never grew under this protocol). `resharded`: this
/// partition's committed re-shard marker covers the view's generation.
pub fn verdict(
    view: Option<&GrowthView>,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    resharded: bool,
) -> Verdict {
    let Some(view) = view else {
        return Verdict::Process;
    };
    let growth = view.growth;
    if growth.is_new_partition(partition) {
        return if view.is_released() {
            Verdict::Process
        } else {
            Verdict::Hold
        };
    }
    if !growth.is_old_partition(partition) {
        // A partition beyond the growth's target: a later growth the view has not caught up with.
        return Verdict::Hold;
    }
    // Records without a key have no order and no per-key state to find.
    let Some(key) = key else {
        return Verdict::Process;
    };
    let placement = growth.placement(key);
    if placement.origin != partition || !placement.moves() {
        // Keys that stay, and keys a custom partitioner put here: as before the growth.
        return Verdict::Process;
    }
    if resharded {
        return Verdict::Forward {
            to: placement.destination,
        };
    }
    match &view.phase {
        Phase::Draining(barrier) if barrier.offset(partition).is_some_and(|b| offset >= b) => {
            Verdict::ReshardFirst
        }
        // Released without our marker: an older worker committed over it. Re-sharding again
        // moves only what is still here, so it is safe.
        Phase::Released => Verdict::ReshardFirst,
        Phase::Held | Phase::Draining(_) => Verdict::Process,
    }
}

/// Whether old partition `partition` must re-shard now: every record below `next_offset` is
/// processed, and the settle barrier is at or below it. The worker asks on reaching a record and
/// when the partition is caught up, so an idle partition re-shards too.
pub fn reshard_due(
    view: Option<&GrowthView>,
    partition: i32,
    next_offset: i64,
    resharded: bool,
) -> bool {
    let Some(view) = view else {
        return false;
    };
    if resharded || !view.growth.is_old_partition(partition) {
        return false;
    }
    match &view.phase {
        Phase::Draining(barrier) => barrier.offset(partition).is_some_and(|b| next_offset >= b),
        Phase::Released => true,
        Phase::Held => false,
    }
}

#[cfg(test)]
mod tests;
