//! The operator-wide settings from the command line that shape what it builds: the worker image,
//! the Prometheus the canary analysis queries, where worker pods run, how often it resyncs and
//! re-reads Secrets, whether
//! a webhook may receive its Secret over plain http, which hosts pipelines may have dialled.
//!
//! Plain data: parsed by `main`, read by the pure builders. Nothing here reads the cluster.

use std::collections::BTreeMap;

use crate::egress::AllowList;

/// Operator-wide settings from the command line.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct OperatorSettings {
    /// Image of the worker for the built-in processors.
    pub worker_image: String,
    /// Prometheus the canary analysis queries when a stage does not name one.
    pub prometheus_url: String,
    /// Where worker pods may run (e.g. a dedicated node pool near the Kafka brokers).
    pub worker_placement: WorkerPlacement,
    /// How often a Ready pipeline is re-checked (`None`: the controller's default of 5 minutes).
    pub resync: Option<std::time::Duration>,
    /// How long a Secret read is reused, and how often a pipeline whose pods use Secrets is
    /// re-checked for rotated ones (`None`: `SecretCache::TTL`, 30 s). A rotated Secret reaches
    /// the pods within two periods.
    pub secret_refresh: Option<std::time::Duration>,
    /// How long a deleted pipeline's failing topic cleanup is retried before it is released with
    /// its topics left behind (`None`: `cleanup::GIVE_UP_AFTER`, 10 minutes).
    pub topic_cleanup_give_up: Option<std::time::Duration>,
    /// Let a notify stage send its webhook auth Secret over `http://` (off: such a stage is held
    /// at zero replicas and says why).
    pub allow_insecure_webhooks: bool,
    /// Hosts pipelines may make the operator and the workers dial (`--allowed-hosts`; empty: any
    /// that is not link-local or a metadata service).
    pub allowed_hosts: AllowList,
}

/// Node selection for every worker pod, set operator-wide.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct WorkerPlacement {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
}
