//! Consumer lag arithmetic, per partition and per stage: where the stage's group resumes, how far
//! that is from the end of the input, and when that distance needs a look at the records.
//!
//! Pure: no client, no clock. Must not decide how offsets are fetched (that is `kafka`), only
//! what they mean.
//!
//! Why a look is needed at all: a worker commits "last processed record + 1" inside its
//! transaction, and on a transactional input every transaction leaves a commit marker that takes
//! an offset but is never delivered. An idle, fully caught-up stage therefore sits one marker (or
//! an aborted batch and its marker) below the end, and "end − committed" never reaches 0. The last
//! stable offset does not help: with no transaction open it equals the high watermark. So a small
//! gap is counted exactly by reading it read_committed (markers and aborted records are skipped);
//! a large gap is a backlog either way and is reported as its size.

/// A gap of at most this many offsets is read to count its records; a larger one is reported as is.
/// An idle transactional input leaves one marker per partition; aborted batches at the tail add
/// theirs. Reading 100 small records per partition per interval is cheap; above that the error
/// of counting markers (one per transaction) is small against the backlog it describes.
pub const COUNT_GAPS_UP_TO: u64 = 100;

/// What Kafka reports for one input partition. Read the committed offset before the end: then a
/// commit beyond the end means the offset is out of range, not that the end moved meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// Log start offset (low watermark): the first offset still stored.
    pub start: i64,
    /// End for a read_committed reader: the last stable offset.
    pub end: i64,
    /// The group's committed offset; `None` when it has none for this partition.
    pub committed: Option<i64>,
}

/// The lag of one partition, or the range that must be read to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionLag {
    /// Records the group has yet to consume.
    Known(u64),
    /// Count the committed records in `from..end` (a read_committed read).
    Count { partition: i32, from: i64, end: i64 },
}

/// Where the group resumes reading a partition. The worker's consumer uses
/// `auto.offset.reset=earliest`: with no commit, or a commit outside `start..=end` (records deleted
/// by retention, a recreated topic), it starts at the log start.
pub fn resume_offset(offsets: &PartitionOffsets) -> i64 {
    match offsets.committed {
        Some(committed) if (offsets.start..=offsets.end).contains(&committed) => committed,
        _ => offsets.start,
    }
}

/// The lag of one partition: known outright when the gap is 0 or larger than `count_up_to`,
/// otherwise the range to count.
pub fn partition_lag(offsets: &PartitionOffsets, count_up_to: u64) -> PartitionLag {
    let from = resume_offset(offsets);
    let gap = u64::try_from(offsets.end.saturating_sub(from)).unwrap_or(0);
    if gap == 0 || gap > count_up_to {
        PartitionLag::Known(gap)
    } else {
        PartitionLag::Count {
            partition: offsets.partition,
            from,
            end: offsets.end,
        }
    }
}

/// The stage's lag: the sum over its input partitions (saturating; a stage is never "negative").
pub fn stage_lag(partitions: impl IntoIterator<Item = u64>) -> u64 {
    partitions.into_iter().fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn offsets(start: i64, end: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            partition: 3,
            start,
            end,
            committed,
        }
    }

    #[test]
    fn a_caught_up_partition_has_no_lag() {
        assert_eq!(
            partition_lag(&offsets(0, 42, Some(42)), 100),
            PartitionLag::Known(0)
        );
    }

    #[test]
    fn a_single_trailing_marker_is_counted_not_trusted() {
        assert_eq!(
            partition_lag(&offsets(0, 42, Some(41)), 100),
            PartitionLag::Count {
                partition: 3,
                from: 41,
                end: 42
            }
        );
    }

    #[test]
    fn a_backlog_larger_than_the_counting_limit_is_its_size() {
        assert_eq!(
            partition_lag(&offsets(0, 5_000, Some(1_000)), 100),
            PartitionLag::Known(4_000)
        );
    }

    #[test]
    fn without_a_commit_the_group_starts_at_the_log_start() {
        // auto.offset.reset=earliest: everything still stored is lag.
        assert_eq!(
            partition_lag(&offsets(700, 1_700, None), 100),
            PartitionLag::Known(1_000)
        );
        assert_eq!(
            partition_lag(&offsets(0, 0, None), 100),
            PartitionLag::Known(0)
        );
    }

    #[test]
    fn a_commit_outside_the_log_resumes_at_the_start() {
        // Retention deleted records the group never read.
        assert_eq!(resume_offset(&offsets(500, 900, Some(100))), 500);
        // The topic was recreated: the old commit is beyond the new end.
        assert_eq!(resume_offset(&offsets(0, 10, Some(5_000))), 0);
    }

    #[test]
    fn the_stage_lag_is_the_sum_and_saturates() {
        assert_eq!(stage_lag([1, 2, 3]), 6);
        assert_eq!(stage_lag([]), 0);
        assert_eq!(stage_lag([u64::MAX, 1]), u64::MAX);
    }

    proptest! {
        #[test]
        fn lag_never_exceeds_what_is_stored_and_never_panics(
            start in any::<i64>(),
            end in any::<i64>(),
            committed in proptest::option::of(any::<i64>()),
            limit in 0u64..1_000,
        ) {
            let offsets = offsets(start, end, committed);
            let stored = u64::try_from(end.saturating_sub(start)).unwrap_or(0);
            match partition_lag(&offsets, limit) {
                PartitionLag::Known(lag) => {
                    prop_assert!(lag <= stored);
                    prop_assert!(lag == 0 || lag > limit);
                }
                PartitionLag::Count { from, end: to, .. } => {
                    prop_assert!(from < to);
                    prop_assert!(u64::try_from(to - from).is_ok_and(|gap| gap <= limit));
                    prop_assert!(from >= start);
                }
            }
        }

        #[test]
        fn a_commit_at_the_end_always_reads_zero(start in 0i64..1 << 40, len in 0i64..1 << 20) {
            let end = start + len;
            prop_assert_eq!(partition_lag(&offsets(start, end, Some(end)), 100), PartitionLag::Known(0));
        }
    }
}
