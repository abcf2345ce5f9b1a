//! The node agent's errors. Each names what it concerns (node, pod, container, Secret, key), and
//! the container-level ones double as the `message` of a container's waiting or terminated state,
//! so `kubectl describe pod` says the same as the agent's log. Must not swallow a cause.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use orderpipe_stack::StackError;

/// Why the agent could not start, or failed while stopping.
#[derive(Debug, thiserror::Error)]
pub enum NodeAgentError {
    #[error("invalid --image {arg:?}: {reason}")]
    ImageMapping { arg: String, reason: String },

    #[error("the binary mapped to image {image} is not an executable file: {}", binary.display())]
    BinaryNotExecutable { image: String, binary: PathBuf },

    #[error("{action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("kube-apiserver request ({what}) failed: {error}")]
    Kube { what: String, error: kube::Error },

    #[error(
        "node {node} was not schedulable after {waited:?} (Ready={ready}, taints: {taints}); \
         is the controller-manager's node lifecycle controller running?"
    )]
    NodeNotSchedulable {
        node: String,
        waited: Duration,
        ready: String,
        taints: String,
    },

    #[error("no API server for pods in the agent's kubeconfig: {reason}")]
    NoCluster { reason: &'static str },

    #[error("building the HTTP client for probes: {0}")]
    ProbeClient(reqwest::Error),

    #[error("node agent task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl NodeAgentError {
    pub(crate) fn kube(what: impl Into<String>, error: kube::Error) -> Self {
        NodeAgentError::Kube {
            what: what.into(),
            error,
        }
    }
}

/// Why a container's configuration cannot be built yet: it waits with reason
/// `CreateContainerConfigError` and this message, and the agent retries.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("{} \"{name}\" not found", kind.resource())]
    NotFound { kind: SourceKind, name: String },

    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        kind: SourceKind,
        namespace: String,
        name: String,
        key: String,
    },

    #[error("key {key} in {kind} {namespace}/{name} is not valid UTF-8")]
    NotUtf8 {
        kind: SourceKind,
        namespace: String,
        name: String,
        key: String,
    },

    #[error("reading {kind} {namespace}/{name}: {error}")]
    Fetch {
        kind: SourceKind,
        namespace: String,
        name: String,
        error: kube::Error,
    },

    #[error("requesting a token of ServiceAccount {namespace}/{account}: {error}")]
    Token {
        namespace: String,
        account: String,
        error: kube::Error,
    },

    #[error("writing the pod's kubeconfig {}: {error}", path.display())]
    Kubeconfig {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("env {var}: fieldRef {path} is not supported by orderpipe-node-agent")]
    UnsupportedFieldPath { var: String, path: String },

    #[error("env {var}: {source_kind} is not supported by orderpipe-node-agent")]
    UnsupportedSource {
        var: String,
        source_kind: &'static str,
    },
}

/// Where `env`/`envFrom` values come from besides the pod itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SourceKind {
    Secret,
    ConfigMap,
}

impl SourceKind {
    /// The lower-case resource name the kubelet's "not found" messages use.
    fn resource(self) -> &'static str {
        match self {
            SourceKind::Secret => "secret",
            SourceKind::ConfigMap => "configmap",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Secret => "Secret",
            SourceKind::ConfigMap => "ConfigMap",
        })
    }
}

/// Why a container's process could not be started: it counts as a failed start (exit code 128,
/// reason `StartError`) and restarts under the pod's restart policy, with back-off.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("opening the container log {}: {error}", path.display())]
    Log {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("starting {}: {error}", program.display())]
    Exec {
        program: PathBuf,
        error: std::io::Error,
    },

    #[error("starting the watchdog: {0}")]
    Watchdog(StackError),
}

/// Why the agent cannot run a pod. Retrying cannot help while the agent runs with the same flags,
/// so nothing is retried; the reason and message go on the pod and its containers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PodRejection {
    #[error(
        "no local binary for image {image} (container {container}); pass \
         --image {image}=/path/to/binary to orderpipe-node-agent"
    )]
    ImageNotMapped { container: String, image: String },

    #[error("container {container} has no image")]
    NoImage { container: String },

    #[error("{what} are not supported by orderpipe-node-agent")]
    Unsupported { what: &'static str },

    #[error("preparing the pod on this machine failed: {what}")]
    LocalSetup { what: String },
}

impl PodRejection {
    /// Whether the pod goes to phase Failed. Like the kubelet, a pod the node cannot admit fails,
    /// but one whose image cannot be had stays Pending with its containers waiting (as with
    /// `ErrImagePull`): a Failed pod of a ReplicaSet is replaced at once, and a wrong `--image`
    /// would then fill the cluster with failed pods (measured: about 10 per second).
    pub fn fails_pod(&self) -> bool {
        match self {
            PodRejection::ImageNotMapped { .. } | PodRejection::NoImage { .. } => false,
            PodRejection::Unsupported { .. } | PodRejection::LocalSetup { .. } => true,
        }
    }

    /// The PascalCase reason on the pod and its containers.
    pub fn reason(&self) -> &'static str {
        match self {
            PodRejection::ImageNotMapped { .. } | PodRejection::NoImage { .. } => "ImageNotMapped",
            PodRejection::Unsupported { .. } => "UnsupportedPodSpec",
            PodRejection::LocalSetup { .. } => "LocalSetupFailed",
        }
    }
}
