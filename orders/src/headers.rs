//! Kafka header names written by the processors, defined once for the worker, tools and dashboards.
//!
//! Dead-letter records keep the original key and payload bytes untouched; everything we know about
//! the failure travels in these headers so a replay tool can route the record back unchanged. Header
//! values are UTF-8 text and never contain contact data. This module must not build records.

/// Stable code of why the record was dead-lettered ([`crate::DeadLetterReason`]).
pub const ERROR_REASON: &str = "orderpipe.error.reason";
/// The stage that dead-lettered the record: `validate`, `status` or `notify`.
pub const ERROR_STAGE: &str = "orderpipe.error.stage";
/// JSON path of the offending field, when one field is to blame.
pub const ERROR_FIELD: &str = "orderpipe.error.field";
/// Human-readable detail, bounded to [`MAX_VALUE_BYTES`].
pub const ERROR_MESSAGE: &str = "orderpipe.error.message";
/// Topic the input record was read from.
pub const ORIGINAL_TOPIC: &str = "orderpipe.original.topic";
/// Partition the input record was read from (decimal).
pub const ORIGINAL_PARTITION: &str = "orderpipe.original.partition";
/// Offset of the input record (decimal).
pub const ORIGINAL_OFFSET: &str = "orderpipe.original.offset";
/// Timestamp of the input record (RFC 3339, UTC).
pub const ORIGINAL_TIMESTAMP: &str = "orderpipe.original.timestamp";
/// Size in bytes of an input payload that was too large to copy whole (decimal); only on dead
/// letters whose payload was cut to [`crate::MAX_PAYLOAD_BYTES`].
pub const ORIGINAL_SIZE: &str = "orderpipe.original.size";
/// Size in bytes of an input key that was too long to copy whole (decimal); only on dead letters
/// whose key was cut to [`crate::dead_letter::MAX_KEY_BYTES`].
pub const ORIGINAL_KEY_SIZE: &str = "orderpipe.original.key-size";
/// How many webhook attempts were made before the notify stage gave up (decimal).
pub const NOTIFY_ATTEMPTS: &str = "orderpipe.notify.attempts";
/// The last HTTP status the webhook answered, when it answered at all (decimal).
pub const NOTIFY_HTTP_STATUS: &str = "orderpipe.notify.http-status";

/// Every Kafka header name above, for documentation checks and header allow-lists.
pub const ALL: &[&str] = &[
    ERROR_REASON,
    ERROR_STAGE,
    ERROR_FIELD,
    ERROR_MESSAGE,
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    ORIGINAL_SIZE,
    ORIGINAL_KEY_SIZE,
    NOTIFY_ATTEMPTS,
    NOTIFY_HTTP_STATUS,
];

/// HTTP request header carrying `<orderId>:<version>:<channel>` on every webhook POST.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Header values longer than this are cut (on a character boundary): a header must not carry an
/// unbounded copy of bad input.
pub const MAX_VALUE_BYTES: usize = 1024;
