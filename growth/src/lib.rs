//! Coordinated partition growth (issue #22): the pure core the operator and the worker share.
//!
//! When a stage's input topic grows, Kafka's default partitioner sends a key's later records to
//! another partition; per-key order, the status stage's per-order state and validate's duplicate
//! memory all depend on a key staying put. `docs/partition-growth.md` describes the protocol that
//! keeps them; this crate holds the parts that are decisions rather than I/O:
//!
//! - [`placement`]: Kafka's murmur2 key placement, as Java clients and librdkafka compute it;
//! - [`growth`]: one growth of a topic (only to a multiple of the current count) and what it does
//!   to a key;
//! - [`control`]: the worker's view of a growth (phase, settle barrier), which only moves forward;
//! - [`marker`]: the re-shard marker a worker commits with an old partition's offset;
//! - [`hold`]: may a record be processed now, held, or forwarded, and when to re-shard;
//! - [`reshard`]: which keys' state leaves an old partition, and for which new one;
//! - [`wire`]: the control record's bytes, as the operator writes and workers read them.
//!
//! It must not do I/O (encoding bytes is not I/O): no Kafka client, no Kubernetes client, no async runtime, no clock.

pub mod control;
pub mod growth;
pub mod hold;
pub mod marker;
pub mod placement;
pub mod reshard;
pub mod wire;

pub use control::{BarrierError, GrowthView, Phase, SettleBarrier};
pub use growth::{Growth, GrowthError, KeyPlacement};
pub use hold::{Verdict, reshard_due, verdict};
pub use marker::ReshardMarker;
pub use placement::{Partitions, murmur2, partition_for};
pub use reshard::{Move, ReshardPlan};
pub use wire::{ControlRecord, WireError};
