//! Dead-letter records: the reason codes and the one builder every stage uses.
//!
//! A dead-letter record is the input record unchanged (same key, same payload bytes) plus
//! `orderpipe.error.*` and `orderpipe.original.*` headers, so nothing is lost and a replay tool can send
//! it back as it was. Messages must never quote contact data. This module must not decide *whether*
//! something is dead-lettered; the stages do.

use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::decision::{Emit, Header, InputRecord, Output, Stage};
use crate::{headers, rfc3339};

stable_codes! {
    /// Why a record went to the dead-letter topic (header `orderpipe.error.reason`).
    pub enum DeadLetterReason {
        /// The record has a null value (Kafka tombstone) where a record was expected.
        NullPayload = "null_payload",
        /// The payload is not UTF-8.
        NotUtf8 = "not_utf8",
        /// The payload is UTF-8 but not JSON.
        NotJson = "not_json",
        /// validate: the payload is JSON but not an object, so it cannot be judged as an order.
        NotAnObject = "not_an_object",
        /// status/notify: JSON of the wrong shape (missing field, unknown event type, bad id...).
        InvalidRecord = "invalid_record",
        /// status: the record has no key, so it belongs to no order.
        KeyMissing = "key_missing",
        /// status: the record key differs from the record's orderId.
        KeyMismatch = "key_mismatch",
        /// status: the event's transition is not in the transition table.
        IllegalTransition = "illegal_transition",
        /// status: an earlier event of this order was dead-lettered and the key is quarantined.
        KeyQuarantined = "key_quarantined",
        /// notify: the webhook answered with a permanent failure (e.g. 400, 404, 422).
        WebhookRejected = "webhook_rejected",
        /// notify: transient failures lasted for every allowed attempt.
        RetriesExhausted = "retries_exhausted",
    }
}

/// Why a payload could not be decoded; becomes a dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Undecodable {
    pub reason: DeadLetterReason,
    pub message: String,
}

/// Decodes a payload as JSON of type `T`, telling apart the failures a human must fix differently:
/// no payload, bytes that are not text, text that is not JSON, and JSON of the wrong shape.
pub(crate) fn decode_payload<T: DeserializeOwned>(
    payload: Option<&[u8]>,
) -> Result<T, Undecodable> {
    let Some(bytes) = payload else {
        return Err(Undecodable {
            reason: DeadLetterReason::NullPayload,
            message: "record value is null".to_owned(),
        });
    };
    // Checked before JSON parsing so the reason says "not UTF-8" rather than a JSON syntax error.
    let text = std::str::from_utf8(bytes).map_err(|error| Undecodable {
        reason: DeadLetterReason::NotUtf8,
        message: error.to_string(),
    })?;
    serde_json::from_str(text).map_err(|error| Undecodable {
        reason: match error.classify() {
            Category::Data => DeadLetterReason::InvalidRecord,
            Category::Io | Category::Syntax | Category::Eof => DeadLetterReason::NotJson,
        },
        message: error.to_string(),
    })
}

/// What a dead-letter record says about its failure, beyond the input it copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure<'m> {
    pub stage: Stage,
    pub reason: DeadLetterReason,
    pub field: Option<&'m str>,
    pub message: &'m str,
}

impl Failure<'_> {
    /// The dead-letter record for `input`: original key and bytes, plus the error and origin headers.
    pub(crate) fn dead_letter(&self, input: &InputRecord<'_>) -> Emit {
        let mut headers = vec![
            Header::new(headers::ERROR_REASON, self.reason.code()),
            Header::new(headers::ERROR_STAGE, self.stage.code()),
        ];
        if let Some(field) = self.field {
            headers.push(Header::new(headers::ERROR_FIELD, field));
        }
        headers.extend([
            Header::new(headers::ERROR_MESSAGE, self.message),
            Header::new(headers::ORIGINAL_TOPIC, input.origin.topic),
            Header::new(
                headers::ORIGINAL_PARTITION,
                input.origin.partition.to_string(),
            ),
            Header::new(headers::ORIGINAL_OFFSET, input.origin.offset.to_string()),
            Header::new(
                headers::ORIGINAL_TIMESTAMP,
                rfc3339::format(&input.timestamp),
            ),
        ]);
        Emit {
            output: Output::DeadLetter,
            key: input.key.map(<[u8]>::to_vec),
            payload: input.payload.map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_for(payload: Option<&[u8]>) -> Option<DeadLetterReason> {
        decode_payload::<crate::StatusEvent>(payload)
            .err()
            .map(|failure| failure.reason)
    }

    #[test]
    fn each_kind_of_undecodable_payload_gets_its_own_reason() {
        assert_eq!(reason_for(None), Some(DeadLetterReason::NullPayload));
        assert_eq!(
            reason_for(Some(b"\xff\xfe")),
            Some(DeadLetterReason::NotUtf8)
        );
        assert_eq!(
            reason_for(Some(b"{\"orderId\":")),
            Some(DeadLetterReason::NotJson)
        );
        assert_eq!(
            reason_for(Some(b"not json")),
            Some(DeadLetterReason::NotJson)
        );
        assert_eq!(
            reason_for(Some(b"{\"a\":1}")),
            Some(DeadLetterReason::InvalidRecord)
        );
    }

    #[test]
    fn header_values_are_bounded_on_a_char_boundary() {
        let header = Header::new(headers::ERROR_MESSAGE, "é".repeat(headers::MAX_VALUE_BYTES));
        assert!(header.value.len() <= headers::MAX_VALUE_BYTES);
        assert!(header.value.chars().all(|c| c == 'é'));
    }
}
