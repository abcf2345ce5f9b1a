//! Kubeconfig files for the stack's clients (admin, controller-manager, scheduler) and the kube
//! client built from them. Certificates are referenced by path, not embedded, so a person can
//! inspect them next to the kubeconfig. Must not read the user's own `~/.kube/config`: tests
//! talk to the local stack only.

use std::fs;
use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::{Result, StackError};
use crate::pki::CertFiles;

const CLUSTER: &str = "orderpipe-e2e";

/// Writes a kubeconfig for `user` (a client certificate) against `server`.
pub fn write(
    path: &Path,
    server: &str,
    ca_cert: &Path,
    user: &str,
    cert: &CertFiles,
) -> Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CLUSTER,
            "cluster": {
                "server": server,
                "certificate-authority": ca_cert,
            },
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate": cert.cert,
                "client-key": cert.key,
            },
        }],
        "contexts": [{
            "name": CLUSTER,
            "context": { "cluster": CLUSTER, "user": user },
        }],
        "current-context": CLUSTER,
    });
    let yaml = serde_norway::to_string(&config).map_err(|error| StackError::Yaml {
        path: path.to_path_buf(),
        error,
    })?;
    fs::write(path, yaml).map_err(|e| StackError::io("writing", path, e))
}

/// A kube client for the kubeconfig at `path` (and only that file).
pub async fn client(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|error| StackError::Kubeconfig {
        path: path.to_path_buf(),
        error,
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|error| StackError::Kubeconfig {
            path: path.to_path_buf(),
            error,
        })?;
    Client::try_from(config)
        .map_err(|e| StackError::kube(format!("client for {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn written_kubeconfig_loads_into_a_client_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = crate::pki::Pki::generate(dir.path()).expect("pki");
        let path = dir.path().join("kubeconfig");
        write(
            &path,
            "https://127.0.0.1:6443",
            &pki.ca.cert,
            "admin",
            &pki.admin,
        )
        .expect("write");
        let kubeconfig = Kubeconfig::read_from(&path).expect("read");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("config");
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        assert!(config.root_cert.is_some(), "CA must be loaded");
    }
}
