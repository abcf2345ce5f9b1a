//! The operator-to-worker contract: everything a worker pod receives, defined once.
//!
//! The operator calls [`render_env`] to build the container's environment; the kubelet resolves the
//! field and Secret references; the worker calls [`WorkerConfig::from_env`] to read it back, with errors
//! that name the variable. Both sides take every name from here: variables ([`env`](mod@env)), defaults
//! ([`defaults`]), derived Kafka objects ([`naming`]), metrics ([`metrics`]), the container layout
//! and what each built-in processor needs. This module does no I/O: the worker passes its own
//! environment lookup in.

mod config;
mod container;
pub mod defaults;
mod duration;
pub mod env;
pub mod metrics;
pub mod naming;
mod processors;
mod render;

pub use config::{
    ContractError, Delivery, KafkaConnection, NotifyConfig, SaslConfig, SecretString, WorkerConfig,
};
pub use container::{
    INTAKE_ARGS, INTAKE_PORT, METRICS_PORT, TLS_CA_FILE, TLS_CLIENT_MOUNT_DIR, TLS_MOUNT_DIR,
    WORKER_ARGS,
};
pub use duration::{DurationError, parse_duration};
pub use processors::{DEDUP_WINDOW, is_stateful, required_outputs, state_topic_config};
pub use render::{RenderError, render_env, render_intake_env};

#[cfg(test)]
mod tests;
