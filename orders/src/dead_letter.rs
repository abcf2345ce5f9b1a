//! Dead-letter records: the reason codes and the one builder every stage uses.
//!
//! A dead-letter record is the input record unchanged (same key, same payload bytes) plus
//! `orderpipe.error.*` and `orderpipe.original.*` headers, so nothing is lost and a replay tool can send
//! it back as it was. Messages must never quote contact data. This module must not decide *whether*
//! something is dead-lettered; the stages do.

use serde::Deserialize;
use serde_json::error::Category;

use crate::decision::{Emit, Header, InputRecord, Output, Stage};
use crate::{headers, rfc3339};

stable_codes! {
    /// Why a record went to the dead-letter topic (header `orderpipe.error.reason`).
    pub enum DeadLetterReason {
        /// The record has a null value (Kafka tombstone) where a record was expected.
        NullPayload = "null_payload",
        /// The payload is larger than [`MAX_PAYLOAD_BYTES`]; the dead letter carries its first
        /// `MAX_PAYLOAD_BYTES` bytes and the full size in `orderpipe.original.size`.
        PayloadTooLarge = "payload_too_large",
        /// The record key is longer than [`MAX_KEY_BYTES`] (no order id is); the dead letter
        /// carries its first `MAX_KEY_BYTES` bytes and the full size in `orderpipe.original.key-size`.
        KeyTooLarge = "key_too_large",
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
        /// Kafka refused an output of this record for a reason retrying cannot fix (e.g. larger
        /// than the topic's `max.message.bytes`); the broker's error is in `orderpipe.error.message`.
        /// Decided by the worker's runtime, not by a processor.
        OutputRefused = "output_refused",
        /// Only the test build `orderpipe-worker-faulty` writes it: a deliberately bad release
        /// that dead-letters every record, for the canary analysis to catch.
        FaultInjected = "fault_injected",
    }
}

/// The largest payload a stage judges. Whatever a stage writes for one record (a rejection that
/// quotes the order, a dead letter that copies it, plus headers) must fit the broker's default
/// `max.message.bytes` (1 MiB): an output the broker refuses would fail its transaction on every
/// retry and stop the partition. Half of that leaves room for the quoting; a real order with the
/// maximum 500 items is about a fifth of it.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;

/// The longest record key a stage judges. Keys are order ids (at most 64 bytes); a longer key cannot
/// belong to an order, and copying it whole into a dead letter could push that over the limit.
pub const MAX_KEY_BYTES: usize = 4 * 1024;

/// What any record a processor emits is bounded by: key + payload + header names and values. Every
/// output either copies at most [`MAX_PAYLOAD_BYTES`] + [`MAX_KEY_BYTES`] of its input plus bounded
/// headers, or is built from fields whose lengths the rules bound; the property tests check it on
/// hostile input. It stays under librdkafka's `message.max.bytes` (1,000,000) and the broker's
/// default `max.message.bytes` (1 MiB), with room for the record batch framing.
pub const MAX_OUTPUT_BYTES: usize = 640 * 1024;

/// Why a payload could not be decoded; becomes a dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Undecodable {
    pub reason: DeadLetterReason,
    pub message: String,
}

/// Decodes a record's payload as JSON of type `T`, telling apart the failures a human must fix
/// differently: a key or payload too large to judge, no payload, bytes that are not text, text that
/// is not JSON, and JSON of the wrong shape.
pub(crate) fn decode_payload<'a, T: Deserialize<'a>>(
    input: &InputRecord<'a>,
) -> Result<T, Undecodable> {
    let key_len = input.key.map_or(0, <[u8]>::len);
    if key_len > MAX_KEY_BYTES {
        return Err(Undecodable {
            reason: DeadLetterReason::KeyTooLarge,
            message: format!("key of {key_len} bytes is longer than the limit of {MAX_KEY_BYTES}"),
        });
    }
    let Some(bytes) = input.payload else {
        return Err(Undecodable {
            reason: DeadLetterReason::NullPayload,
            message: "record value is null".to_owned(),
        });
    };
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(Undecodable {
            reason: DeadLetterReason::PayloadTooLarge,
            message: format!(
                "payload of {} bytes is larger than the limit of {MAX_PAYLOAD_BYTES}",
                bytes.len()
            ),
        });
    }
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

/// How much of the input a dead letter copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterCopy {
    /// Key and payload, each cut to its limit ([`MAX_KEY_BYTES`], [`MAX_PAYLOAD_BYTES`]).
    KeyAndPayload,
    /// Key (cut) and no payload: the last resort when even the cut copy was refused.
    KeyOnly,
}

/// The dead letter every record gets from the test build `orderpipe-worker-faulty` (reason
/// [`DeadLetterReason::FaultInjected`]): the input copied whole, so a replay loses nothing.
pub fn fault_injected(input: &InputRecord<'_>, stage: Stage) -> Emit {
    Failure {
        stage,
        reason: DeadLetterReason::FaultInjected,
        field: None,
        message: "orderpipe-worker-faulty dead-letters every record on purpose",
    }
    .dead_letter(input)
}

/// The dead letter for an input record whose output Kafka refused (reason
/// [`DeadLetterReason::OutputRefused`]); `error` is the broker's answer. The worker's runtime
/// escalates from [`DeadLetterCopy::KeyAndPayload`] to [`DeadLetterCopy::KeyOnly`] when the first is refused too.
pub fn output_refused(
    input: &InputRecord<'_>,
    stage: Stage,
    error: &str,
    copy: DeadLetterCopy,
) -> Emit {
    Failure {
        stage,
        reason: DeadLetterReason::OutputRefused,
        field: None,
        message: error,
    }
    .dead_letter_copying(input, copy)
}

impl Failure<'_> {
    /// The dead-letter record for `input`: original key and bytes, plus the error and origin headers.
    /// Bytes beyond [`MAX_PAYLOAD_BYTES`] are cut (so the dead letter fits the broker), and then
    /// `orderpipe.original.size` says how many there were.
    pub(crate) fn dead_letter(&self, input: &InputRecord<'_>) -> Emit {
        self.dead_letter_copying(input, DeadLetterCopy::KeyAndPayload)
    }

    fn dead_letter_copying(&self, input: &InputRecord<'_>, copy: DeadLetterCopy) -> Emit {
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
        let payload = input.payload.unwrap_or_default();
        let kept = match copy {
            DeadLetterCopy::KeyAndPayload => payload.len().min(MAX_PAYLOAD_BYTES),
            DeadLetterCopy::KeyOnly => 0,
        };
        if kept < payload.len() {
            headers.push(Header::new(
                headers::ORIGINAL_SIZE,
                payload.len().to_string(),
            ));
        }
        let key = input.key.map(|key| {
            if key.len() > MAX_KEY_BYTES {
                headers.push(Header::new(
                    headers::ORIGINAL_KEY_SIZE,
                    key.len().to_string(),
                ));
            }
            key[..key.len().min(MAX_KEY_BYTES)].to_vec()
        });
        Emit {
            output: Output::DeadLetter,
            key,
            payload: payload[..kept].to_vec(),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> InputRecord<'a> {
        InputRecord {
            key,
            payload,
            origin: crate::decision::Origin {
                topic: "orders",
                partition: 0,
                offset: 7,
            },
            timestamp: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn reason_for(payload: Option<&[u8]>) -> Option<DeadLetterReason> {
        decode_payload::<crate::StatusEvent>(&record(Some(b"o-1"), payload))
            .err()
            .map(|failure| failure.reason)
    }

    #[test]
    fn a_key_too_long_for_any_order_is_dead_lettered_cut_with_its_size() {
        let key = vec![b'k'; MAX_KEY_BYTES + 1];
        let input = record(Some(&key), Some(b"{}"));
        let failure = decode_payload::<crate::StatusEvent>(&input).expect_err("key too large");
        assert_eq!(failure.reason, DeadLetterReason::KeyTooLarge);
        let emit = Failure {
            stage: Stage::Status,
            reason: failure.reason,
            field: None,
            message: &failure.message,
        }
        .dead_letter(&input);
        assert_eq!(emit.key.as_ref().map(Vec::len), Some(MAX_KEY_BYTES));
        let size = (MAX_KEY_BYTES + 1).to_string();
        assert_eq!(emit.header(headers::ORIGINAL_KEY_SIZE), Some(size.as_str()));
        assert_eq!(emit.payload, b"{}");
    }

    #[test]
    fn an_output_refused_dead_letter_escalates_from_a_copy_to_the_key_alone() {
        let input = record(Some(b"o-1"), Some(b"{\"orderId\":\"o-1\"}"));
        let error = "Broker: Message size too large";
        let copy = output_refused(
            &input,
            Stage::Validate,
            error,
            DeadLetterCopy::KeyAndPayload,
        );
        assert_eq!(copy.header(headers::ERROR_REASON), Some("output_refused"));
        assert_eq!(copy.header(headers::ERROR_MESSAGE), Some(error));
        assert_eq!(copy.payload, b"{\"orderId\":\"o-1\"}");
        assert_eq!(copy.header(headers::ORIGINAL_SIZE), None);
        let bare = output_refused(&input, Stage::Validate, error, DeadLetterCopy::KeyOnly);
        assert!(bare.payload.is_empty());
        assert_eq!(bare.key.as_deref(), Some(&b"o-1"[..]));
        assert_eq!(bare.header(headers::ORIGINAL_SIZE), Some("17"));
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
        // Forms a hostile producer sends: out-of-range numbers, lone surrogates, a byte-order mark,
        // nesting past the parser's recursion limit.
        for text in [
            &b"{\"a\":1E+400}"[..],
            b"{\"a\":\"\\ud800\"}",
            b"\xEF\xBB\xBF{\"a\":1}",
            &[&[b'['; 200][..], &[b']'; 200][..]].concat(),
        ] {
            let judged = decode_payload::<serde_json::Value>(&record(None, Some(text)));
            assert_eq!(
                judged.err().map(|failure| failure.reason),
                Some(DeadLetterReason::NotJson),
                "{}",
                String::from_utf8_lossy(&text[..text.len().min(20)])
            );
        }
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            reason_for(Some(&huge)),
            Some(DeadLetterReason::PayloadTooLarge)
        );
        assert_eq!(
            reason_for(Some(&huge[1..])),
            Some(DeadLetterReason::NotJson)
        );
    }

    #[test]
    fn header_values_are_bounded_on_a_char_boundary() {
        let header = Header::new(headers::ERROR_MESSAGE, "é".repeat(headers::MAX_VALUE_BYTES));
        assert!(header.value.len() <= headers::MAX_VALUE_BYTES);
        assert!(header.value.chars().all(|c| c == 'é'));
    }
}
