//! The operator as an aggregated API server for `external.metrics.k8s.io/v1beta1`: the HPA of an
//! autoscaled stage reads `orderpipe_consumer_lag` from here, measured in Kafka by `lag`.
//!
//! [`api`] (routes, selector, documents) and [`auth`] (front-proxy authentication, the review) are
//! pure; [`delegation`] calls kube-apiserver (the front proxy's settings, SubjectAccessReviews) and
//! [`server`] serves HTTPS; [`run`] wires them together as the operator runs them. Every replica
//! serves, leader or not: answering is read-only, so replicas cannot disagree in a harmful way,
//! and the HPA keeps its metric through a leader failover. Nothing here writes to the cluster.

pub mod api;
pub mod auth;
pub mod delegation;
pub mod run;
pub mod server;

pub use delegation::{
    Authorizer, CachedAuthorizer, Decision, SubjectAccessReviewer, request_header_config,
};
pub use run::run;
pub use server::{FrontProxyTrust, MetricsApi, ServingCertificate, TlsError, serve};
