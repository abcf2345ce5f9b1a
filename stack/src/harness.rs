//! What an end-to-end test uses: the shared stack (found through `target/e2e/env`, or the file
//! named by `ORDERPIPE_E2E_ENV`), clients for it, unique names, and a namespace per test that is
//! deleted afterwards and, when the test failed, dumped (events, pods, deployments) to stderr
//! first. Must not start a stack: a missing shared stack is an error telling how to start one.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rand::distr::{Alphanumeric, SampleString};

use crate::envfile::StackEnv;
use crate::error::{Result, StackError};
use crate::kafka::SecureKafka;
use crate::kubeconfig;
use crate::process::pid_alive;
use crate::tools;

/// Overrides where tests look for the shared stack's env file.
pub const ENV_FILE_VAR: &str = "ORDERPIPE_E2E_ENV";

/// `$ORDERPIPE_E2E_ENV`, else `target/e2e/env`.
pub fn shared_env_file() -> PathBuf {
    match env::var_os(ENV_FILE_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => tools::e2e_root().join("env"),
    }
}

/// The stack started by `make e2e-up` / `make test-e2e`, shared by all tests of a run.
#[derive(Debug, Clone)]
pub struct SharedStack {
    env: StackEnv,
}

impl SharedStack {
    /// The shared stack named by [`shared_env_file`].
    pub fn get() -> Result<SharedStack> {
        SharedStack::from_env_file(&shared_env_file())
    }

    /// Loads an env file and checks that the stack's supervisor still runs.
    pub fn from_env_file(path: &Path) -> Result<SharedStack> {
        if !path.exists() {
            return Err(StackError::NoSharedStack {
                reason: format!("{} does not exist", path.display()),
            });
        }
        let env = StackEnv::load(path)?;
        if !pid_alive(env.supervisor_pid) {
            return Err(StackError::NoSharedStack {
                reason: format!(
                    "{} names supervisor pid {}, which is not running",
                    path.display(),
                    env.supervisor_pid
                ),
            });
        }
        Ok(SharedStack { env })
    }

    pub fn env(&self) -> &StackEnv {
        &self.env
    }

    pub fn kubeconfig(&self) -> Result<&Path> {
        self.env
            .kubeconfig
            .as_deref()
            .ok_or_else(|| StackError::NoSharedStack {
                reason: "the shared stack runs without Kubernetes".into(),
            })
    }

    pub fn kafka_bootstrap(&self) -> Result<&str> {
        self.env
            .kafka_bootstrap
            .as_deref()
            .ok_or_else(|| StackError::NoSharedStack {
                reason: "the shared stack runs without Kafka".into(),
            })
    }

    /// The shared broker's SASL_SSL listener and its credentials.
    pub fn kafka_secure(&self) -> Result<SecureKafka> {
        let bootstrap = self.env.kafka_secure_bootstrap.as_deref().ok_or_else(|| {
            StackError::NoSharedStack {
                reason: "the shared stack runs without Kafka".into(),
            }
        })?;
        SecureKafka::load(&self.env.work_dir, bootstrap)
    }

    /// `http://127.0.0.1:<port>` of the shared stack's Prometheus.
    pub fn prometheus_url(&self) -> Result<&str> {
        self.env
            .prometheus_url
            .as_deref()
            .ok_or_else(|| StackError::NoSharedStack {
                reason: "the shared stack runs without Prometheus".into(),
            })
    }

    /// Where alert rule files go (then [`crate::prometheus::reload`]).
    pub fn prometheus_rules_dir(&self) -> Result<&Path> {
        self.env
            .prometheus_rules_dir
            .as_deref()
            .ok_or_else(|| StackError::NoSharedStack {
                reason: "the shared stack runs without Prometheus".into(),
            })
    }

    /// Where [`crate::prometheus::LocalTarget`]s go.
    pub fn prometheus_targets_dir(&self) -> Result<&Path> {
        self.env
            .prometheus_targets_dir
            .as_deref()
            .ok_or_else(|| StackError::NoSharedStack {
                reason: "the shared stack runs without Prometheus".into(),
            })
    }

    /// An admin client for the shared apiserver.
    pub async fn kube_client(&self) -> Result<Client> {
        kubeconfig::client(self.kubeconfig()?).await
    }

    /// A fresh namespace on the shared apiserver; see [`TestNamespace`].
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        TestNamespace::create(self.kubeconfig()?, prefix).await
    }
}

/// Admin client for the shared stack.
pub async fn kube_client() -> Result<Client> {
    SharedStack::get()?.kube_client().await
}

/// `host:port` of the shared stack's broker.
pub fn kafka_bootstrap() -> Result<String> {
    SharedStack::get()?.kafka_bootstrap().map(str::to_owned)
}

/// The shared broker's SASL_SSL listener and its credentials.
pub fn kafka_secure() -> Result<SecureKafka> {
    SharedStack::get()?.kafka_secure()
}

/// `<prefix>-<8 random lowercase alphanumerics>`: a valid namespace, topic or object name that
/// no other test (or earlier run on the same stack) uses.
pub fn unique_name(prefix: &str) -> String {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rng(), 8)
        .to_ascii_lowercase();
    format!("{prefix}-{suffix}")
}

/// A namespace owned by one test. Call [`TestNamespace::cleanup`] at the end of a passing test;
/// if it is dropped without that (the test panicked or returned an error early), it prints the
/// namespace's events, pods and deployments to stderr and then deletes it.
pub struct TestNamespace {
    name: String,
    client: Client,
    kubeconfig: PathBuf,
    armed: bool,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` with its own client from `kubeconfig`.
    pub async fn create(kubeconfig: &Path, prefix: &str) -> Result<TestNamespace> {
        let client = kubeconfig::client(kubeconfig).await?;
        let name = unique_name(prefix);
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "orderpipe.dev/e2e": "true" } },
        }))
        .map_err(|e| StackError::Manifest {
            path: PathBuf::from("namespace"),
            reason: e.to_string(),
        })?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(|e| StackError::kube(format!("create namespace {name}"), e))?;
        Ok(TestNamespace {
            name,
            client,
            kubeconfig: kubeconfig.to_path_buf(),
            armed: true,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `Api<K>` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// A readable summary of what happened in the namespace (for failure messages).
    pub async fn dump(&self) -> String {
        dump_namespace(&self.client, &self.name).await
    }

    /// Deletes the namespace (without waiting for its finalization) and disarms the failure dump.
    pub async fn cleanup(mut self) -> Result<()> {
        self.armed = false;
        delete_namespace(&self.client, &self.name).await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The test's runtime may be a current-thread one blocked right here, and the client is
        // bound to it; so a fresh thread with its own runtime and client does the work.
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async {
                let Ok(client) = kubeconfig::client(&kubeconfig).await else {
                    return;
                };
                eprintln!(
                    "---- e2e namespace {name} (test failed) ----\n{}",
                    dump_namespace(&client, &name).await
                );
                let _ = delete_namespace(&client, &name).await;
            });
        });
        let _ = worker.join();
    }
}

async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(StackError::kube(format!("delete namespace {name}"), e)),
    }
}

async fn dump_namespace(client: &Client, namespace: &str) -> String {
    let mut out = String::new();
    dump_kind(&mut out, client, namespace, "events", |e: Event| {
        let object = &e.involved_object;
        format!(
            "{} {} {}/{}: {}",
            e.type_.unwrap_or_default(),
            e.reason.unwrap_or_default(),
            object.kind.clone().unwrap_or_default(),
            object.name.clone().unwrap_or_default(),
            e.message.unwrap_or_default(),
        )
    })
    .await;
    dump_kind(
        &mut out,
        client,
        namespace,
        "deployments",
        |d: Deployment| {
            let status = d.status.unwrap_or_default();
            format!(
                "{}: replicas={} ready={} available={} conditions={:?}",
                d.metadata.name.unwrap_or_default(),
                status.replicas.unwrap_or(0),
                status.ready_replicas.unwrap_or(0),
                status.available_replicas.unwrap_or(0),
                status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| format!("{}={}", c.type_, c.status))
                    .collect::<Vec<_>>(),
            )
        },
    )
    .await;
    dump_kind(&mut out, client, namespace, "pods", |p: Pod| {
        let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
        let status = p.status.unwrap_or_default();
        format!(
            "{}: phase={} node={} conditions={:?}",
            p.metadata.name.unwrap_or_default(),
            status.phase.unwrap_or_default(),
            node,
            status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(|c| format!("{}={}", c.type_, c.status))
                .collect::<Vec<_>>(),
        )
    })
    .await;
    out
}

/// Appends `<heading>:` and one indented `line` per object of kind `K` in the namespace, or
/// `<heading>: <error>` when listing fails: a dump is best effort and goes on with the next kind.
async fn dump_kind<K>(
    out: &mut String,
    client: &Client,
    namespace: &str,
    heading: &str,
    line: impl Fn(K) -> String,
) where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    match Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(objects) => {
            let _ = writeln!(out, "{heading}:");
            for object in objects.items {
                let _ = writeln!(out, "  {}", line(object));
            }
        }
        Err(error) => {
            let _ = writeln!(out, "{heading}: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_dns_labels_and_differ() {
        let a = unique_name("deploy");
        let b = unique_name("deploy");
        assert_ne!(a, b);
        assert!(
            a.starts_with("deploy-") && a.len() == "deploy-".len() + 8,
            "{a}"
        );
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn a_missing_env_file_explains_how_to_start_the_stack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = SharedStack::from_env_file(&dir.path().join("env")).expect_err("no stack");
        let message = err.to_string();
        assert!(
            message.contains("make test-e2e") && message.contains("make e2e-up"),
            "{message}"
        );
    }

    #[test]
    fn a_stale_env_file_is_not_a_running_stack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("/bin/true")
            .spawn()
            .expect("spawn");
        let dead_pid = child.id();
        child.wait().expect("wait");
        let path = dir.path().join("env");
        StackEnv {
            supervisor_pid: dead_pid,
            ..StackEnv::default()
        }
        .write(&path)
        .expect("write");
        let err = SharedStack::from_env_file(&path).expect_err("stale");
        assert!(err.to_string().contains("not running"), "{err}");
    }
}
