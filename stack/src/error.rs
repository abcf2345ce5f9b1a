//! The harness's one error type. Every variant names the component or file it concerns, and
//! readiness failures carry the tail of the component's log, so a failed run explains itself
//! without anyone digging through `target/e2e/`.
//!
//! Messages are self-contained: each variant keeps its typed cause (for matching) and prints it
//! inline, and `Debug` prints the same text, so `expect()`, a `Result`-returning test and
//! anyhow's `{:#}` all show one readable message (log tails with real line breaks) instead of
//! a struct dump or a cause printed twice. Must not drop a cause's text.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Result alias for the harness.
pub type Result<T, E = StackError> = std::result::Result<T, E>;

/// Everything that can go wrong while starting, using or stopping the local stack.
#[derive(thiserror::Error)]
pub enum StackError {
    #[error(
        "e2e tool not found: {path} ({hint}); build the tools with `make e2e-tools` \
         or point E2E_TOOLS_DIR at a tools directory"
    )]
    ToolMissing { path: PathBuf, hint: &'static str },

    #[error(
        "no CRD manifests in {dir}: run `make manifests` there, or pass --crds-dir (or --no-crds)"
    )]
    NoCrds { dir: PathBuf },

    #[error("`{program}` not found on PATH: {hint}")]
    SystemToolMissing {
        program: &'static str,
        hint: &'static str,
    },

    #[error("{binary} is not built: run `{build}`")]
    NotBuilt { binary: PathBuf, build: String },

    #[error("{action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("could not find a free 127.0.0.1 port: {0}")]
    Port(std::io::Error),

    #[error("could not generate the {what} certificate or key: {error}")]
    Pki {
        what: &'static str,
        error: rcgen::Error,
    },

    #[error("could not start {component} ({program}): {error}")]
    Spawn {
        component: &'static str,
        program: PathBuf,
        error: std::io::Error,
    },

    #[error("{component} exited before it became ready ({status}); last lines of {log}:\n{tail}")]
    ExitedEarly {
        component: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("{component} was not ready after {waited:?} ({what}); last lines of {log}:\n{tail}")]
    NotReady {
        component: &'static str,
        what: String,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },

    #[error("{component}: a free port was taken by someone else before it bound it")]
    PortTaken { component: &'static str },

    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },

    #[error("could not stop {component} (pid {pid}): {error}")]
    Stop {
        component: &'static str,
        pid: u32,
        error: nix::Error,
    },

    #[error("{component} is not part of this stack")]
    NotInStack { component: &'static str },

    #[error("Kafka broker {id} is not part of this stack (its brokers: {brokers:?})")]
    NoSuchBroker { id: i32, brokers: Vec<i32> },

    #[error("invalid stack option: {reason}")]
    InvalidOption { reason: String },

    #[error("Kafka ({what}): {reason}")]
    KafkaState { what: String, reason: String },

    #[error("kube-apiserver request ({what}) failed: {}", summarize_kube(.error))]
    Kube { what: String, error: kube::Error },

    #[error("invalid kubeconfig {path}: {error}")]
    Kubeconfig {
        path: PathBuf,
        error: kube::config::KubeconfigError,
    },

    #[error("Kafka ({what}): {error}")]
    Kafka {
        what: String,
        error: rdkafka::error::KafkaError,
    },

    #[error("invalid YAML in {path}: {error}")]
    Yaml {
        path: PathBuf,
        error: serde_norway::Error,
    },

    #[error("invalid manifest in {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    #[error("invalid env file {path}: {reason}")]
    EnvFile { path: PathBuf, reason: String },

    #[error(
        "no shared e2e stack: {reason}. Start one with `make e2e-up` (then run the tests with \
         `cargo test -- --include-ignored`), or run everything with `make test-e2e`"
    )]
    NoSharedStack { reason: String },

    #[error("background task ({what}) failed: {error}")]
    Task {
        what: String,
        error: tokio::task::JoinError,
    },

    #[error("Prometheus ({what}): {reason}")]
    Prometheus { what: String, reason: String },

    #[error("HTTP probe of {component} failed: {error}")]
    Http {
        component: &'static str,
        error: reqwest::Error,
    },
}

impl fmt::Debug for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl StackError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        error: std::io::Error,
    ) -> Self {
        StackError::Io {
            action,
            path: path.into(),
            error,
        }
    }

    pub(crate) fn kube(what: impl Into<String>, error: kube::Error) -> Self {
        StackError::Kube {
            what: what.into(),
            error,
        }
    }

    pub(crate) fn kafka(what: impl Into<String>, error: rdkafka::error::KafkaError) -> Self {
        StackError::Kafka {
            what: what.into(),
            error,
        }
    }
}

/// The API server's own answer for API errors (kube's Display adds a full `Status` dump);
/// the whole cause chain for transport errors, where the root cause is what matters.
fn summarize_kube(error: &kube::Error) -> String {
    if let kube::Error::Api(status) = error {
        return format!("{} {}: {}", status.code, status.reason, status.message);
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
