//! API access for a pod's processes, as the kubelet gives it through the projected token volume
//! and `KUBERNETES_SERVICE_*`: a process here sees no volumes and cannot reach a Service IP, so the
//! agent requests a token of the pod's ServiceAccount (TokenRequest, bound to the pod) and writes a
//! kubeconfig into the pod's directory that names the agent's own API server and CA with that
//! token; `KUBECONFIG` points to it (kube-rs, client-go and kubectl all honour it). The apiserver
//! then authorises the pod's requests as its ServiceAccount, so the RBAC it is bound to applies
//! for real. Only [`request_token`] and [`write_kubeconfig`] do I/O.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{Cluster, Kubeconfig};
use serde_json::{Value, json};

use super::error::{ConfigError, NodeAgentError};

/// The kubelet's own request: with the apiserver's default `--service-account-extend-token-expiration`
/// a pod-bound token asked for 3607 s is valid for a year (the apiserver only warns about its use
/// after an hour), so a long-running pod needs no rotation, which this agent does not do.
const TOKEN_SECONDS: i64 = 3607;

/// The cluster entry (server, CA, TLS settings) that pods' kubeconfigs copy: the current
/// context's cluster of the agent's own kubeconfig.
#[derive(Debug, Clone)]
pub(crate) struct ApiServer {
    cluster: Cluster,
}

impl ApiServer {
    /// The current context's cluster of `kubeconfig`. Its CA must be embedded or an absolute
    /// path: the pods' kubeconfigs live elsewhere.
    pub fn of(kubeconfig: &Kubeconfig) -> Result<ApiServer, NodeAgentError> {
        let context = kubeconfig
            .current_context
            .as_deref()
            .and_then(|name| kubeconfig.contexts.iter().find(|c| c.name == name))
            .and_then(|c| c.context.as_ref())
            .ok_or(NodeAgentError::NoCluster {
                reason: "no current context",
            })?;
        let cluster = kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .and_then(|c| c.cluster.clone())
            .ok_or(NodeAgentError::NoCluster {
                reason: "the current context's cluster is not defined",
            })?;
        if cluster
            .certificate_authority
            .as_deref()
            .is_some_and(|ca| Path::new(ca).is_relative())
        {
            return Err(NodeAgentError::NoCluster {
                reason: "its certificate-authority is a relative path",
            });
        }
        Ok(ApiServer { cluster })
    }
}

/// The ServiceAccount whose token the pod's processes get; `None` when the pod opts out with
/// `automountServiceAccountToken: false`. Like the admission plugin, no name means `default`.
pub(crate) fn token_account(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if spec.automount_service_account_token == Some(false) {
        return None;
    }
    let name = spec
        .service_account_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    Some(name.to_owned())
}

/// A kubeconfig for the pod's processes: the agent's cluster, the token, the pod's namespace as
/// the default one (as in-cluster configuration has it). JSON, which every kubeconfig reader
/// accepts as YAML.
pub(crate) fn kubeconfig(api: &ApiServer, namespace: &str, token: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "cluster", "cluster": api.cluster }],
        "users": [{ "name": "service-account", "user": { "token": token } }],
        "contexts": [{
            "name": "in-pod",
            "context": { "cluster": "cluster", "user": "service-account", "namespace": namespace },
        }],
        "current-context": "in-pod",
    })
}

/// A fresh token of `account` bound to the pod: it stops working when the pod is deleted.
pub(crate) async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    account: &str,
) -> Result<String, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token_error = |error| ConfigError::Token {
        namespace: namespace.to_owned(),
        account: account.to_owned(),
        error,
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(token_error)?;
    Ok(response.status.map(|s| s.token).unwrap_or_default())
}

/// Writes `kubeconfig` for `container` to the pod directory `dir`, as `<container>.kubeconfig`
/// next to its log (one per container: their starts do not race), owner-only as it holds a token;
/// returns its path. Through a rename: a process never reads half a file.
pub(crate) fn write_kubeconfig(
    dir: &Path,
    container: &str,
    kubeconfig: &Value,
) -> Result<PathBuf, ConfigError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let path = dir.join(format!("{container}.kubeconfig"));
    let partial = dir.join(format!(".{container}.kubeconfig.partial"));
    let io_error = |error| ConfigError::Kubeconfig {
        path: path.clone(),
        error,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io_error)?;
    file.write_all(kubeconfig.to_string().as_bytes())
        .map_err(io_error)?;
    std::fs::rename(&partial, &path).map_err(io_error)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::config::KubeConfigOptions;

    fn agent_kubeconfig(ca: &str) -> Kubeconfig {
        serde_json::from_value(json!({
            "clusters": [
                { "name": "other", "cluster": { "server": "https://10.0.0.1" } },
                { "name": "local", "cluster": {
                    "server": "https://127.0.0.1:6443", "certificate-authority": ca } },
            ],
            "users": [{ "name": "admin", "user": { "client-certificate": "/pki/admin.crt" } }],
            "contexts": [{ "name": "admin@local", "context": { "cluster": "local", "user": "admin" } }],
            "current-context": "admin@local",
        }))
        .expect("kubeconfig")
    }

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({ "metadata": { "name": "p" }, "spec": spec })).expect("pod")
    }

    #[test]
    fn the_pod_gets_its_service_account_unless_it_opts_out() {
        let named = json!({ "containers": [], "serviceAccountName": "orderpipe-operator" });
        assert_eq!(
            token_account(&pod(named)).as_deref(),
            Some("orderpipe-operator")
        );
        assert_eq!(
            token_account(&pod(json!({ "containers": [] }))).as_deref(),
            Some("default")
        );
        let opted_out = json!({ "containers": [], "automountServiceAccountToken": false });
        assert_eq!(token_account(&pod(opted_out)), None);
    }

    #[test]
    fn the_pod_kubeconfig_names_the_agents_server_and_ca_and_the_token() {
        let api = ApiServer::of(&agent_kubeconfig("/pki/ca.crt")).expect("cluster");
        let written: Kubeconfig =
            serde_json::from_value(kubeconfig(&api, "shop", "t0ken")).expect("a kubeconfig");
        let cluster = written.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/pki/ca.crt")
        );
        let user = written.auth_infos[0].auth_info.as_ref().expect("user");
        assert!(
            user.client_certificate.is_none(),
            "not the agent's identity"
        );
        let text = kubeconfig(&api, "shop", "t0ken").to_string();
        assert!(text.contains("\"token\":\"t0ken\""), "{text}");
    }

    #[tokio::test]
    async fn kube_rs_reads_the_pod_kubeconfig() {
        let mut agent = agent_kubeconfig("/pki/ca.crt");
        // No CA file here: a cluster that needs none.
        agent.clusters[1].cluster = Some(Cluster {
            server: Some("https://127.0.0.1:6443".into()),
            insecure_skip_tls_verify: Some(true),
            ..Cluster::default()
        });
        let api = ApiServer::of(&agent).expect("cluster");
        let written: Kubeconfig =
            serde_json::from_value(kubeconfig(&api, "shop", "t0ken")).expect("a kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(written, &KubeConfigOptions::default())
            .await
            .expect("kube-rs loads it");
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        assert_eq!(config.default_namespace, "shop");
    }

    #[test]
    fn a_relative_ca_or_a_missing_context_is_refused() {
        assert!(ApiServer::of(&agent_kubeconfig("pki/ca.crt")).is_err());
        assert!(ApiServer::of(&Kubeconfig::default()).is_err());
    }

    #[test]
    fn the_kubeconfig_is_private_to_the_user() {
        use std::os::unix::fs::PermissionsExt as _;

        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_kubeconfig(dir.path(), "operator", &json!({ "kind": "Config" }))
            .expect("written");
        assert_eq!(path, dir.path().join("operator.kubeconfig"));
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
