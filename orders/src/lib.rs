//! Pure order domain: records, validation rules, the status state machine and notification rules.
//!
//! This crate owns what an order pipeline *decides*; the worker's Kafka runtime owns how records move.
//! Every processor is a pure function of (input record, per-key state the runtime restored) that returns
//! a [`Decision`]: the records to produce inside the runtime's Kafka transaction, each addressed to a
//! logical [`Output`], plus the new per-key state. It must not do I/O: no Kafka client, no Kubernetes
//! client, no HTTP client, no async runtime, no clock (time comes in with the input), no randomness
//! except through explicit seeds or samples passed in.
//!
//! The stages:
//! - [`validate::Validator`]: bytes → validated / rejected (all reasons) / dead-letter / duplicate.
//! - [`status::StatusMachine`]: the per-order state machine with idempotency and key quarantine.
//! - [`notify::Notifier`]: which transitions notify, the webhook payload, and the retry policy.
//!
//! [`generator`] is a seeded generator of realistic input for the load generator, benchmarks and tests.
//! The record formats, codes and headers other teams rely on are documented in `docs/orders.md` and
//! `docs/schemas/`.

#[macro_use]
mod codes;

pub mod currency;
pub mod dead_letter;
pub mod decision;
pub mod generator;
pub mod headers;
pub mod ids;
pub mod notify;
pub mod records;
pub mod rfc3339;
pub mod status;
pub mod validate;

mod checks;
mod document;
mod json;

pub use dead_letter::{DeadLetterReason, MAX_KEY_BYTES, MAX_OUTPUT_BYTES, MAX_PAYLOAD_BYTES};
pub use decision::{
    ChangelogState, Decision, Emit, Header, InputRecord, Origin, Output, Processor, Stage,
    StateDecodeError,
};
pub use records::{
    Contact, DispatchResult, EventDetails, EventType, Notification, NotificationDispatched,
    OrderItem, OrderPlaced, OrderState, OriginalOrder, Reason, RejectedOrder, Rule, StatusChanged,
    StatusEvent, ValidatedOrder,
};
