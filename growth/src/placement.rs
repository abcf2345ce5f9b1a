//! Where Kafka's default partitioner puts a key: `toPositive(murmur2(key)) % partitions`, as the
//! Java clients (`BuiltInPartitioner.partitionForKey`) and librdkafka's `murmur2_random` compute it.
//!
//! Why we compute it ourselves: during a growth the worker must know, for a record it reads, where
//! the key lived before (its *origin*) and where it lives after (its *destination*), and the re-shard
//! must move each key's state to exactly the partition producers now write that key to. Any other
//! hash would disagree with the producers. Records without a key are placed at random by every
//! client, so they have no placement. This module must not do I/O.

use std::fmt;

/// A topic's partition count: at least one (Kafka refuses a topic without partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partitions(i32);

impl Partitions {
    /// `None` for a count below one.
    pub fn new(count: i32) -> Option<Self> {
        (count >= 1).then_some(Self(count))
    }

    /// `count`, or one for a count below one: for counts read back from a record whose writer
    /// only ever wrote real partition counts.
    pub fn at_least_one(count: i32) -> Self {
        Self(count.max(1))
    }

    pub fn get(self) -> i32 {
        self.0
    }

    /// Whether `partition` exists in a topic of this many partitions.
    pub fn contains(self, partition: i32) -> bool {
        (0..self.0).contains(&partition)
    }
}

impl fmt::Display for Partitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`): MurmurHash2, seed `0x9747b28c`,
/// little-endian 4-byte blocks, returned as Java's signed `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java mixes in `data.length` as an int; keys are far below 4 GiB, and truncating as Java's
    // int arithmetic would is what "compatible" means for larger ones.
    let mut h = SEED ^ (data.len() as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    // Java's switch falls through from the longest tail to the shortest.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on `i32::MIN`).
pub fn to_positive(hash: i32) -> i32 {
    hash & 0x7fff_ffff
}

/// The key's hash as placement uses it: non-negative, so `% partitions` is a partition.
pub fn key_hash(key: &[u8]) -> u32 {
    // Non-negative by construction, so the conversion is lossless.
    to_positive(murmur2(key)).unsigned_abs()
}

/// The partition the default partitioner gives `key` in a topic of `partitions` partitions.
pub fn partition_for(key: &[u8], partitions: Partitions) -> i32 {
    place(key_hash(key), partitions)
}

/// The partition of a key whose [`key_hash`] is `hash`; lets callers hash a key once and place it
/// under several counts.
pub fn place(hash: u32, partitions: Partitions) -> i32 {
    // `partitions` is at least one and `hash % partitions` is below it, so both conversions hold.
    (hash % partitions.0.unsigned_abs()) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn partitions(count: i32) -> Partitions {
        Partitions::new(count).expect("a positive count")
    }

    #[test]
    fn murmur2_matches_kafkas_own_test_vectors() {
        // apache/kafka clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
        // testMurmur2: the Java client's expected hashes.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn murmur2_matches_the_librdkafka_the_worker_links() {
        // librdkafka 2.12.1 (bundled by rdkafka-sys 4.10), src/rdmurmur2.c, unittest_murmur2:
        // "java_murmur2_results", including unaligned tails and the empty key.
        let unaligned = "PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: [(&str, u32); 11] = [
            ("kafka", 0xd067_cf64),
            ("giberish123456789", 0x8f55_2b0c),
            ("1234", 0x9fc9_7b14),
            ("234", 0xe7c0_09ca),
            ("34", 0x8739_30da),
            ("4", 0x5a4b_5ca1),
            (unaligned, 0x7842_4f1c),
            (&unaligned[1..], 0x4a62_b377),
            (&unaligned[2..], 0xe0e4_e09e),
            (&unaligned[3..], 0x62b8_b43f),
            ("", 0x106e_08d9),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()) as u32, expected, "{key:?}");
        }
    }

    #[test]
    fn placement_is_to_positive_hash_modulo_the_count() {
        // "foobar" hashes negative: abs() would give another partition than toPositive().
        let hash = murmur2(b"foobar");
        assert!(hash < 0);
        for count in [1, 3, 6, 7, 12, 100] {
            let expected = (hash & 0x7fff_ffff) % count;
            assert_eq!(partition_for(b"foobar", partitions(count)), expected);
        }
    }

    #[test]
    fn to_positive_never_overflows() {
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn counts_below_one_are_not_partition_counts() {
        assert_eq!(Partitions::new(0), None);
        assert_eq!(Partitions::new(-3), None);
        assert_eq!(Partitions::new(1).map(Partitions::get), Some(1));
    }

    proptest! {
        #[test]
        fn every_key_lands_inside_the_topic(key in proptest::collection::vec(any::<u8>(), 0..64),
                                            count in 1..=10_000i32) {
            let count = partitions(count);
            prop_assert!(count.contains(partition_for(&key, count)));
        }

        #[test]
        fn growing_to_a_multiple_keeps_the_key_in_its_residue_class(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            from in 1..=64i32,
            factor in 1..=16i32,
        ) {
            // h % (k*n) ≡ h (mod n): a key on old partition p goes to p + j*n for some j < k.
            // With k = 2 that is p or p + n.
            let old = partition_for(&key, partitions(from));
            let new = partition_for(&key, partitions(from * factor));
            prop_assert_eq!(new % from, old);
            prop_assert!(new == old || new >= from);
        }
    }
}
