//! What a pure processor receives from the worker's Kafka runtime and what it hands back.
//!
//! The runtime hands a processor an [`InputRecord`] (bytes, key, where it came from) and the per-key
//! state it restored; the processor returns a [`Decision`]: what to produce, to which logical
//! [`Output`], and the new state. The runtime maps outputs to concrete topics and writes every [`Emit`]
//! plus the consumer offset in one Kafka transaction. This module must not know topic names, clients
//! or how state is stored.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::headers;

stable_codes! {
    /// A pipeline stage; appears in dead-letter headers and metric labels.
    pub enum Stage {
        Validate = "validate",
        Status = "status",
        Notify = "notify",
    }
}

/// Where an input record was read from; copied into dead-letter headers so it can be found again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// One consumed Kafka record as the processors see it.
///
/// `timestamp` is the record's timestamp, not the wall clock: processors derive every time they write
/// (validatedAt, dedup expiry, quarantine start) from it, so re-processing after a crash yields
/// byte-identical output.
#[derive(Clone, Copy)]
pub struct InputRecord<'a> {
    pub key: Option<&'a [u8]>,
    /// `None` for a Kafka null value (tombstone).
    pub payload: Option<&'a [u8]>,
    pub origin: Origin<'a>,
    pub timestamp: DateTime<Utc>,
}

// By hand: the payload may hold contact data, which must never reach logs through Debug.
impl fmt::Debug for InputRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputRecord")
            .field("key", &self.key.map(String::from_utf8_lossy))
            .field("payload_bytes", &self.payload.map(<[u8]>::len))
            .field("origin", &self.origin)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

/// A logical output; the runtime maps each to the concrete topic of its pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// `ValidatedOrder` records (validate).
    Validated,
    /// `RejectedOrder` records (validate).
    Rejected,
    /// Original bytes plus `orderpipe.error.*` headers (every stage).
    DeadLetter,
    /// The stage's compacted per-key state topic (validate: seen orders; status: order state).
    Changelog,
    /// `StatusChanged` records (status).
    StatusChanged,
    /// `NotificationDispatched` audit records (notify).
    NotificationAudit,
    /// `StatusEvent` records (validate: the `Validated` event that starts an order's life cycle in
    /// the status stage). Optional in a pipeline: dropped when the stage declares no `events` output.
    StatusEvent,
}

/// A Kafka header; names are the constants in [`crate::headers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: &'static str,
    pub value: String,
}

impl Header {
    /// A header whose value is cut to [`headers::MAX_VALUE_BYTES`] on a character boundary.
    pub fn new(name: &'static str, value: impl Into<String>) -> Self {
        let mut value = value.into();
        if value.len() > headers::MAX_VALUE_BYTES {
            let cut = (0..=headers::MAX_VALUE_BYTES)
                .rev()
                .find(|&index| value.is_char_boundary(index))
                .unwrap_or(0);
            value.truncate(cut);
        }
        Self { name, value }
    }
}

/// One record to produce in the runtime's transaction.
#[derive(Clone, PartialEq, Eq)]
pub struct Emit {
    pub output: Output,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<Header>,
}

impl Emit {
    /// A JSON record without headers.
    pub(crate) fn json(output: Output, key: impl Into<Vec<u8>>, record: &impl Serialize) -> Self {
        Self {
            output,
            key: Some(key.into()),
            payload: crate::json::encode(record),
            headers: Vec::new(),
        }
    }

    /// The header value named `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|header| header.name == name)
            .map(|header| header.value.as_str())
    }
}

// By hand: payloads of validated/rejected orders hold contact data, which must never reach logs.
impl fmt::Debug for Emit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emit")
            .field("output", &self.output)
            .field("key", &self.key.as_deref().map(String::from_utf8_lossy))
            .field("payload_bytes", &self.payload.len())
            .field("headers", &self.headers)
            .finish()
    }
}

/// What a processor decided for one input record.
///
/// Invariant: `state` is `Some` exactly when `emits` holds one [`Output::Changelog`] record, whose
/// payload is `state.encode()`; the runtime writes the emits in the transaction and, once it commits,
/// replaces its in-memory state for the key with `state`. An empty `emits` with `state: None` means
/// "commit the offset, produce nothing" (e.g. a duplicate).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<O, S> {
    /// What happened, for metrics (`outcome.label()`-style methods are bounded) and logs.
    pub outcome: O,
    /// Records to produce, in order.
    pub emits: Vec<Emit>,
    /// The key's new state, when it changed.
    pub state: Option<S>,
}

impl<O, S> Decision<O, S> {
    /// A decision that produces `emits` and leaves the key's state as it was.
    pub(crate) fn stateless(outcome: O, emits: Vec<Emit>) -> Self {
        Self {
            outcome,
            emits,
            state: None,
        }
    }
}

impl<O, S: ChangelogState> Decision<O, S> {
    /// A decision that also persists `state` under `key` in the stage's changelog.
    pub(crate) fn with_state(outcome: O, mut emits: Vec<Emit>, key: &[u8], state: S) -> Self {
        emits.push(Emit {
            output: Output::Changelog,
            key: Some(key.to_vec()),
            payload: state.encode(),
            headers: Vec::new(),
        });
        Self {
            outcome,
            emits,
            state: Some(state),
        }
    }
}

/// A stage whose decision depends on one input record and the state of its key.
///
/// The runtime's consume-process-produce loop is generic over this trait: look up the key's state,
/// call `process`, produce `emits` and commit, then store `state`.
pub trait Processor {
    type Outcome;
    type State: ChangelogState;

    /// Which stage this is, for dead-letter headers.
    fn stage(&self) -> Stage;

    fn process(
        &self,
        input: &InputRecord<'_>,
        state: Option<&Self::State>,
    ) -> Decision<Self::Outcome, Self::State>;

    /// Whether `state` no longer affects any decision at record time `now`, so the runtime may
    /// forget it (validate's dedup records after the dedup window). Forgetting must not change a
    /// decision: `process` treats an expired state exactly like no state.
    fn is_expired(&self, _state: &Self::State, _now: DateTime<Utc>) -> bool {
        false
    }
}

/// Per-key state kept in a compacted changelog topic and restored by the runtime on assignment.
///
/// The encoding is JSON with a format version field `v`, readable with any Kafka tool; a decoder
/// refuses versions it does not know instead of guessing, so a rollback after a format change fails
/// loudly at restore rather than corrupting state.
pub trait ChangelogState: Serialize + DeserializeOwned {
    /// The `v` written by [`encode`](Self::encode) and the only one [`decode`](Self::decode) accepts.
    const FORMAT_VERSION: u32;

    /// The changelog record payload.
    fn encode(&self) -> Vec<u8> {
        crate::json::encode(&Versioned {
            v: Self::FORMAT_VERSION,
            state: self,
        })
    }

    /// Reads a changelog record payload written by [`encode`](Self::encode).
    fn decode(bytes: &[u8]) -> Result<Self, StateDecodeError> {
        #[derive(serde::Deserialize)]
        struct VersionProbe {
            v: u32,
        }
        let probe: VersionProbe =
            serde_json::from_slice(bytes).map_err(StateDecodeError::Malformed)?;
        if probe.v != Self::FORMAT_VERSION {
            return Err(StateDecodeError::UnsupportedVersion {
                found: probe.v,
                supported: Self::FORMAT_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(StateDecodeError::Malformed)
    }
}

#[derive(Serialize)]
struct Versioned<'a, S> {
    v: u32,
    #[serde(flatten)]
    state: &'a S,
}

/// Why a changelog record could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum StateDecodeError {
    #[error("changelog state is not valid JSON of the expected shape: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("changelog state format v{found} is not supported (this build reads v{supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
}
