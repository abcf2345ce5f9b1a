//! The re-shard marker: the metadata string a worker commits with an old partition's offset in the
//! transaction that re-sharded that partition's state, and on every later commit of it.
//!
//! Why in the offset commit: the moved state, the tombstones and the offset are then one Kafka
//! transaction (KIP-447: `send_offsets_to_transaction` carries each partition's metadata in the
//! TxnOffsetCommit request), so "the marker is committed" and "the state moved" are the same fact,
//! and the operator reads it with the OffsetFetch it already makes for lag. This module must not
//! do I/O.

/// The prefix that tells our marker from metadata other tools may have committed.
const PREFIX: &str = "orderpipe.resharded=";

/// "Old partition's state re-sharded for growth `generation`" (and every earlier one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReshardMarker {
    pub generation: u64,
}

impl ReshardMarker {
    /// The commit metadata carrying this marker.
    pub fn to_metadata(self) -> String {
        format!("{PREFIX}{}", self.generation)
    }

    /// The marker in committed metadata; `None` for empty or foreign metadata (nothing re-sharded
    /// as far as we can tell).
    pub fn parse(metadata: &str) -> Option<Self> {
        let digits = metadata.strip_prefix(PREFIX)?;
        // u64's parser accepts a leading '+'; our own format never writes one.
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(|generation| Self { generation })
    }

    /// Whether this marker covers growth `generation`.
    pub fn covers(self, generation: u64) -> bool {
        self.generation >= generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn foreign_or_empty_metadata_is_no_marker() {
        assert_eq!(ReshardMarker::parse(""), None);
        assert_eq!(
            ReshardMarker::parse("committed by kafka-consumer-groups"),
            None
        );
        assert_eq!(ReshardMarker::parse("orderpipe.resharded="), None);
        assert_eq!(ReshardMarker::parse("orderpipe.resharded=+3"), None);
        assert_eq!(ReshardMarker::parse("orderpipe.resharded=3 "), None);
    }

    #[test]
    fn a_marker_covers_its_generation_and_earlier_ones() {
        let marker = ReshardMarker { generation: 2 };
        assert!(marker.covers(1) && marker.covers(2));
        assert!(!marker.covers(3));
    }

    proptest! {
        #[test]
        fn markers_survive_the_round_trip(generation in any::<u64>()) {
            let marker = ReshardMarker { generation };
            prop_assert_eq!(ReshardMarker::parse(&marker.to_metadata()), Some(marker));
        }

        #[test]
        fn arbitrary_metadata_never_panics(metadata in ".*") {
            let _ = ReshardMarker::parse(&metadata);
        }
    }
}
