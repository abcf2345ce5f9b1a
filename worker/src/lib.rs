//! `orderpipe-worker`: one stage of an order pipeline, exactly once from Kafka to Kafka.
//!
//! The pure decisions (validation, the status state machine, notification rules) live in
//! `orderpipe-orders`; this crate is the adapter around them (pure core, I/O at the edges):
//! - [`stage`]: the built-in processors as the runtime drives them (the notify stage's webhook
//!   calls and retries included);
//! - [`runtime`]: the read-process-write loop, independent of Kafka — partition workers, the
//!   coordinator that owns the one transactional producer, back-pressure, rebalancing, recovery;
//! - [`kafka`]: librdkafka clients implementing the runtime's ports;
//! - [`output_topics`]: the topic of each output a stage writes; [`record`]: records as the
//!   runtime moves them;
//! - [`app`]: wiring of one stage from the worker contract (`orderpipe_api::contract`);
//! - [`metrics`], [`server`]: Prometheus metrics and `/metrics`, `/healthz`, `/readyz`;
//! - [`loadgen`]: seeded input for tests, the demo and the benchmarks;
//! - [`intake`]: the intake gateway, the pipeline's HTTP front door (a mode of the same binary).
//!
//! The design is documented in `docs/worker.md`.

pub mod app;
pub mod error;
pub mod intake;
pub mod kafka;
pub mod loadgen;
pub mod metrics;
pub mod output_topics;
pub mod record;
pub mod runtime;
pub mod server;
pub mod stage;

pub use error::WorkerError;
