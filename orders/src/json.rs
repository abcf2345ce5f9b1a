//! JSON encoding of our own records, in one place.
//!
//! Kept separate so the single place that asserts "our records always serialise" is easy to audit.
//! It must not be used to decode input: input decoding lives with the rules that judge it.

use serde::Serialize;

/// Serialises one of this crate's records.
///
/// serde_json fails only for maps with non-string keys or a `Serialize` impl that returns an error;
/// our records have neither (every record type is round-tripped by the tests), so a failure here is a
/// programming error in this crate, never a property of input.
pub(crate) fn encode(record: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(record).expect("orderpipe records always serialise to JSON")
}

/// Serialises one of this crate's records into `writer`, which must not fail (a hasher, a buffer).
pub(crate) fn encode_into(writer: impl std::io::Write, record: &impl Serialize) {
    // Same invariant as `encode`, and the writers given here never return an error.
    serde_json::to_writer(writer, record).expect("orderpipe records always serialise to JSON")
}

/// Converts one of this crate's records to a JSON value (for generators that edit records as JSON).
pub(crate) fn to_value(record: &impl Serialize) -> serde_json::Value {
    // Same invariant as `encode`: our records always serialise.
    serde_json::to_value(record).expect("orderpipe records always serialise to JSON")
}
