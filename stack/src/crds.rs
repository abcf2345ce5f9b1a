//! Installs CustomResourceDefinitions from YAML files (ours from `crds/`, third-party ones from
//! the tools dir) with server-side apply under one field manager, then waits until each is
//! Established. Server-side apply because the Argo Rollouts CRDs are too big for client-side
//! apply's last-applied annotation. Must not install anything that is not a CRD.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;

use crate::error::{Result, StackError};
use crate::wait::wait_until;

/// The field manager of every object the harness applies.
pub const FIELD_MANAGER: &str = "orderpipe-e2e";

/// Every CRD document in `files`, in file order. Empty documents are skipped; anything that is
/// not an `apiextensions.k8s.io/v1` CRD is an error naming the file.
pub fn load(files: &[PathBuf]) -> Result<Vec<serde_json::Value>> {
    let mut crds = Vec::new();
    for path in files {
        let text = fs::read_to_string(path).map_err(|e| StackError::io("reading", path, e))?;
        for document in serde_norway::Deserializer::from_str(&text) {
            let value =
                serde_json::Value::deserialize(document).map_err(|error| StackError::Yaml {
                    path: path.clone(),
                    error,
                })?;
            if value.is_null() {
                continue;
            }
            check_is_crd(path, &value)?;
            crds.push(value);
        }
    }
    Ok(crds)
}

fn check_is_crd(path: &Path, value: &serde_json::Value) -> Result<()> {
    let kind = value["kind"].as_str().unwrap_or_default();
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    if kind != "CustomResourceDefinition" || api_version != "apiextensions.k8s.io/v1" {
        return Err(StackError::Manifest {
            path: path.to_path_buf(),
            reason: format!(
                "expected apiextensions.k8s.io/v1 CustomResourceDefinition, found {api_version} {kind}"
            ),
        });
    }
    if value["metadata"]["name"].as_str().is_none() {
        return Err(StackError::Manifest {
            path: path.to_path_buf(),
            reason: "CRD without metadata.name".into(),
        });
    }
    Ok(())
}

/// Applies every CRD in `files` and waits until all are Established; returns their names.
pub async fn install(client: &Client, files: &[PathBuf], timeout: Duration) -> Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in load(files)? {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|e| StackError::kube(format!("apply CRD {name}"), e))?;
        names.push(name);
    }
    for name in &names {
        wait_until(&format!("CRD {name} Established"), timeout, || async {
            let crd = api.get_opt(name).await.ok()??;
            is_established(&crd).then_some(())
        })
        .await?;
    }
    Ok(names)
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\n";

    #[test]
    fn loads_every_document_and_skips_empty_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crds.yaml");
        let second = CRD.replace("widgets", "gadgets");
        fs::write(&path, format!("---\n{CRD}---\n{second}---\n")).expect("write");
        let names: Vec<String> = load(&[path])
            .expect("load")
            .iter()
            .map(|v| {
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(names, ["widgets.example.com", "gadgets.example.com"]);
    }

    #[test]
    fn refuses_objects_that_are_not_crds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cm.yaml");
        fs::write(
            &path,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
        )
        .expect("write");
        let err = load(&[path]).expect_err("must refuse").to_string();
        assert!(
            err.contains("cm.yaml") && err.contains("ConfigMap"),
            "{err}"
        );
    }
}
