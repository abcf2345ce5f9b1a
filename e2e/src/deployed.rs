//! The operator binary as it is deployed, run by a test: the shipped RBAC of `config/rbac` bound
//! to a ServiceAccount of the test's namespace ([`operator_identity`], so the apiserver enforces
//! exactly the permissions we ship), and operator processes authenticating as it ([`Replica`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use orderpipe_operator::settings::WorkerPlacement;
use orderpipe_stack::{SharedStack, TestNamespace, free_port, tools, unique_name};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

#[cfg(doc)]
use crate::on_node_agent;

pub fn rbac_manifest(file: &str) -> anyhow::Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/rbac")
        .join(file);
    Ok(serde_norway::from_str(&std::fs::read_to_string(&path)?)?)
}

pub async fn apply_dynamic(
    client: &kube::Client,
    namespace: Option<&str>,
    object: &Value,
) -> anyhow::Result<()> {
    let gvk = GroupVersionKind::try_from(&serde_json::from_value::<kube::api::TypeMeta>(
        object.clone(),
    )?)?;
    let plural = format!("{}s", gvk.kind.to_lowercase());
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(object),
    )
    .await
    .with_context(|| format!("applying {} {name}", gvk.kind))?;
    Ok(())
}

/// Deletes a cluster-scoped RBAC object a test created (`kind` ClusterRole or ClusterRoleBinding).
pub async fn delete_cluster_rbac(
    client: &kube::Client,
    kind: &str,
    name: &str,
) -> anyhow::Result<()> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
        &format!("{}s", kind.to_lowercase()),
    );
    Api::<DynamicObject>::all_with(client.clone(), &resource)
        .delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting {kind} {name}"))?;
    Ok(())
}

/// The shipped RBAC, bound to a ServiceAccount of the test namespace (the cluster-scoped objects get
/// a unique name so parallel runs do not collide); returns a kubeconfig authenticating as it, and
/// the names of the cluster-scoped objects to delete afterwards.
pub async fn operator_identity(
    stack: &SharedStack,
    ns: &TestNamespace,
) -> anyhow::Result<(PathBuf, String)> {
    operator_identity_in(ns.client(), stack.kubeconfig()?, ns.name()).await
}

/// [`operator_identity`] on any cluster: `client` and `admin_kubeconfig` are an admin's, the
/// ServiceAccount goes to `namespace` (which exists).
pub async fn operator_identity_in(
    client: &kube::Client,
    admin_kubeconfig: &Path,
    namespace: &str,
) -> anyhow::Result<(PathBuf, String)> {
    let cluster_name = unique_name("orderpipe-operator");
    let mut sa = rbac_manifest("service_account.yaml")?;
    sa["metadata"]["namespace"] = json!(namespace);
    apply_dynamic(client, Some(namespace), &sa).await?;

    let mut role = rbac_manifest("role.yaml")?;
    role["metadata"]["name"] = json!(cluster_name);
    apply_dynamic(client, None, &role).await?;
    let mut binding = rbac_manifest("role_binding.yaml")?;
    binding["metadata"]["name"] = json!(cluster_name);
    binding["roleRef"]["name"] = json!(cluster_name);
    binding["subjects"][0]["namespace"] = json!(namespace);
    apply_dynamic(client, None, &binding).await?;
    for file in [
        "leader_election_role.yaml",
        "leader_election_role_binding.yaml",
    ] {
        let mut object = rbac_manifest(file)?;
        object["metadata"]["namespace"] = json!(namespace);
        if let Some(subjects) = object.get_mut("subjects") {
            subjects[0]["namespace"] = json!(namespace);
        }
        apply_dynamic(client, Some(namespace), &object).await?;
    }

    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request("orderpipe-operator", &PostParams::default(), &request)
        .await?
        .status
        .context("token request has no status")?
        .token;
    let mut kubeconfig: Value =
        serde_norway::from_str(&std::fs::read_to_string(admin_kubeconfig)?)?;
    kubeconfig["users"][0]["user"] = json!({ "token": token });
    let path = std::env::temp_dir().join(format!("{namespace}-operator.kubeconfig"));
    std::fs::write(&path, serde_norway::to_string(&kubeconfig)?)?;
    Ok((path, cluster_name))
}

/// One operator process; killed when dropped.
#[derive(Debug)]
pub struct Replica {
    pub name: &'static str,
    pub child: Child,
    /// `127.0.0.1:<port>` of `/metrics`, `/healthz` and `/readyz`.
    pub metrics_address: String,
    metrics: String,
}

impl Replica {
    /// Starts the binary watching `ns` (its Lease there too), logging to `<tmp>/<ns>-<name>.log`.
    pub fn start(name: &'static str, kubeconfig: &Path, ns: &str) -> anyhow::Result<Self> {
        Replica::start_placed(name, kubeconfig, ns, &WorkerPlacement::default())
    }

    /// As [`Replica::start`], with worker pods placed as `placement` says (e.g. [`on_node_agent`]).
    pub fn start_placed(
        name: &'static str,
        kubeconfig: &Path,
        ns: &str,
        placement: &WorkerPlacement,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log = std::fs::File::create(std::env::temp_dir().join(format!("{ns}-{name}.log")))?;
        // `cargo test --workspace` builds the operator next to this test.
        let child = Command::new(tools::built_binary("orderpipe-operator")?)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("RUST_LOG", "info")
            .args([
                "--watch-namespace",
                ns,
                "--lease-namespace",
                ns,
                "--log-format",
                "text",
            ])
            .args(["--worker-image", "orderpipe/orderpipe-worker:e2e"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(placement_args(placement))
            // The binary logs to stdout.
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self {
            name,
            child,
            metrics_address: format!("127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{port}"),
        })
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("{}{path}", self.metrics)).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    pub async fn is_leader(&self) -> bool {
        self.get("/metrics")
            .await
            .is_some_and(|(_, body)| body.lines().any(|l| l == "orderpipe_operator_leader 1"))
    }

    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGTERM)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self.child.id().context("replica already exited")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }
}

/// The operator's command-line flags that place worker pods as `placement` says.
pub fn placement_args(placement: &WorkerPlacement) -> Vec<String> {
    let selectors = placement.node_selector.iter().flat_map(|(key, value)| {
        [
            "--worker-node-selector".to_owned(),
            format!("{key}={value}"),
        ]
    });
    let tolerations = placement.tolerations.iter().flat_map(|toleration| {
        let key = toleration.key.clone().unwrap_or_default();
        let taint = match &toleration.value {
            Some(value) => format!("{key}={value}"),
            None => key,
        };
        let effect = toleration.effect.clone().unwrap_or_default();
        [
            "--worker-toleration".to_owned(),
            format!("{taint}:{effect}"),
        ]
    });
    selectors.chain(tolerations).collect()
}
