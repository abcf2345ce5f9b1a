//! orderpipe's local real-infrastructure stack: starts kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler, kwok, KRaft Kafka (one broker, or a cluster of
//! several whose brokers tests can kill, pause and restart one by one) and a Prometheus that
//! scrapes what the cluster's ServiceMonitors select, as plain processes on 127.0.0.1 (no Docker), and gives
//! tests what they need to use them.
//!
//! Two ways to get a stack:
//! - the shared one (`make e2e-up`, `make test-e2e`), found by tests through
//!   [`SharedStack::get`], [`kube_client`] and [`kafka_bootstrap`];
//! - a private one from [`Stack::builder`], for tests that restart or kill components.
//!
//! This crate owns process lifecycles, ports, certificates and readiness, the Kafka test kit
//! (topics, reading a topic to its end, a group's offsets, partition leaders, ISRs and
//! coordinators) and the Argo Rollouts one ([`argo`]: what
//! a canary release is doing). It must not depend on any orderpipe
//! crate: the operator, worker, node agent, demo and bench build on it, never the other way.

mod apiservice;
pub mod argo;
mod component;
pub mod crds;
mod envfile;
mod error;
mod exporters;
mod harness;
mod kafka;
mod kube_cluster;
mod kubeconfig;
mod pki;
mod ports;
mod process;
pub mod prometheus;
mod service_monitors;
mod stack;
pub mod tools;
mod topics;
mod wait;

pub use apiservice::LocalApiService;
pub use component::Component;
pub use component::MAX_KAFKA_NODES;
pub use envfile::StackEnv;
pub use error::{Result, StackError};
pub use harness::{
    ENV_FILE_VAR, SharedStack, TestNamespace, kafka_bootstrap, kafka_secure, kube_client,
    shared_env_file, unique_name,
};
pub use kafka::{KafkaBrokerInfo, KafkaControllers, KafkaTopology, SASL_USERNAME, SecureKafka};
pub use kube_cluster::{Kubernetes, NODE_NAME};
pub use kubeconfig::client as kube_client_for;
pub use ports::free_port;
pub use process::{dismiss_watchdog, pid_alive, spawn_watchdog};
pub use stack::{Stack, StackBuilder};
pub use topics::{
    Isolation, PartitionInfo, Record, alter_topic_config, caught_up, commit_offsets,
    committed_offsets, coordinator_partition, create_topics, create_topics_with, end_offsets,
    group_coordinator, in_sync, partition_count, partition_infos, partition_leader,
    partition_leaders, read_all, topic_config, transaction_coordinator,
};
pub use wait::{try_wait_until, wait_until, wait_until_blocking};
