//! Records as the runtime moves them: an owned copy of one consumed input record, and the concrete
//! record to produce. Owns the conversion to the pure core's [`InputRecord`]; must not do I/O and
//! must never print payloads (they may hold contact data).

use std::fmt;

use chrono::{DateTime, Utc};
use orderpipe_orders::{Header, InputRecord, Origin};

/// One consumed input record, detached from the consumer's buffers so it can be queued.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None` for a Kafka null value (tombstone).
    pub payload: Option<Vec<u8>>,
    /// The record's Kafka timestamp; the processors derive every time they write from it.
    pub timestamp: DateTime<Utc>,
    /// Its Kafka headers as they came; only a forwarded record (partition growth) passes them on.
    pub headers: Vec<RawHeader>,
}

/// A Kafka header as a producer wrote it: any name, any bytes, or no value.
#[derive(Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub name: String,
    pub value: Option<Vec<u8>>,
}

// By hand: a header's value is the producer's and may hold anything a payload may.
impl fmt::Debug for RawHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawHeader")
            .field("name", &self.name)
            .field("value_bytes", &self.value.as_ref().map(Vec::len))
            .finish()
    }
}

impl SourceRecord {
    /// The record as the pure processors see it; `topic` is the stage's input topic.
    pub fn as_input<'a>(&'a self, topic: &'a str) -> InputRecord<'a> {
        InputRecord {
            key: self.key.as_deref(),
            payload: self.payload.as_deref(),
            origin: Origin {
                topic,
                partition: self.partition,
                offset: self.offset,
            },
            timestamp: self.timestamp,
        }
    }

    /// Bytes this record holds, for the in-flight memory budget.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.as_ref().map_or(0, Vec::len))
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len) + headers
    }
}

// By hand: the payload may hold contact data, which must never reach logs.
impl fmt::Debug for SourceRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceRecord")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("key", &self.key.as_deref().map(String::from_utf8_lossy))
            .field("payload_bytes", &self.payload.as_ref().map(Vec::len))
            .field("timestamp", &self.timestamp)
            .field("headers", &self.headers.len())
            .finish()
    }
}

/// One record to produce, with its topic resolved.
#[derive(Clone, Copy)]
pub struct OutRecord<'a> {
    pub topic: &'a str,
    /// Set for changelog records, which must land in the input's partition number; `None` lets
    /// the producer's partitioner place the record by key.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    /// `None` for a tombstone (a changelog key's state deleted).
    pub payload: Option<&'a [u8]>,
    pub headers: &'a [Header],
    /// Headers copied as they are from an input record (a forwarded record's), after `headers`.
    pub passthrough: &'a [RawHeader],
    /// The record's Kafka timestamp: the input's, for a record carrying the order on (Kafka
    /// Streams' timestamp propagation), so every stage sees when the order entered the pipeline;
    /// `None` (produce time) for dead letters and changelog records.
    pub timestamp: Option<DateTime<Utc>>,
}

impl fmt::Debug for OutRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutRecord")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("key", &self.key.map(String::from_utf8_lossy))
            .field("payload_bytes", &self.payload.map(<[u8]>::len))
            .field("headers", &self.headers)
            .field("passthrough", &self.passthrough.len())
            .field("timestamp", &self.timestamp)
            .finish()
    }
}
