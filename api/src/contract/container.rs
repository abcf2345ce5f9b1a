//! The worker container as the operator builds it and the worker expects it: its arguments, the port
//! it serves on and where the TLS Secrets are mounted. Only names and numbers; the pod itself is the
//! operator's to build.

/// Arguments of the worker container: the `run` subcommand reads everything else from the env.
pub const WORKER_ARGS: [&str; 1] = ["run"];
/// Port of `/metrics`, `/healthz` and `/readyz` in the worker container.
pub const METRICS_PORT: u16 = 9090;
/// Arguments of the intake gateway's container (the same image, the `intake` subcommand).
pub const INTAKE_ARGS: [&str; 1] = ["intake"];
/// Port of the intake gateway's HTTP API.
pub const INTAKE_PORT: u16 = 8080;
/// Where the operator mounts the Kafka CA certificate (Secret key projected to this file name).
pub const TLS_MOUNT_DIR: &str = "/etc/orderpipe/kafka-tls";
/// File name of the CA certificate inside [`TLS_MOUNT_DIR`].
pub const TLS_CA_FILE: &str = "ca.crt";
/// Where the operator mounts the client certificate Secret (kubernetes.io/tls: tls.crt, tls.key).
pub const TLS_CLIENT_MOUNT_DIR: &str = "/etc/orderpipe/kafka-client-tls";
