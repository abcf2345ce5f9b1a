//! orderpipe's local real-infrastructure harness: starts kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler, kwok and a KRaft Kafka broker as plain processes on
//! 127.0.0.1 (no Docker), and gives end-to-end tests what they need to use them.
//!
//! Two ways to get a stack:
//! - the shared one (`make e2e-up`, `make test-e2e`), found by tests through
//!   [`SharedStack::get`], [`kube_client`] and [`kafka_bootstrap`];
//! - a private one from [`Stack::builder`], for tests that restart or kill components.
//!
//! This crate owns process lifecycles, ports, certificates and readiness. It must not know
//! about the operator or the worker: their tests build on these helpers. The exceptions are
//! [`node_agent`], a local kubelet for worker pods, which speaks the worker contract's port, and
//! [`demo`], which runs the checkout pipeline end to end (`make demo` and its test).

mod component;
pub mod crds;
pub mod demo;
mod envfile;
mod error;
mod harness;
mod kafka;
mod kube_cluster;
mod kubeconfig;
pub mod node_agent;
mod pki;
mod ports;
mod process;
mod stack;
pub mod tools;
mod topics;
mod wait;

pub use component::Component;
pub use envfile::StackEnv;
pub use error::{E2eError, Result};
pub use harness::{
    ENV_FILE_VAR, SharedStack, TestNamespace, kafka_bootstrap, kafka_secure, kube_client,
    shared_env_file, unique_name,
};
pub use kafka::{SASL_USERNAME, SecureKafka};
pub use kube_cluster::{Kubernetes, NODE_NAME};
pub use kubeconfig::client as kube_client_for;
pub use node_agent::{NodeAgent, NodeAgentConfig};
pub use process::pid_alive;
pub use stack::{Stack, StackBuilder};
pub use topics::{Isolation, Record, create_topic, read_all};
pub use wait::{try_wait_until, wait_until};
