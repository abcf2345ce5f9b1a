//! The shipped kustomize overlays against the real apiserver: each one builds with the pinned
//! kubectl and passes a server-side dry-run (schema, CRD validation, admission, RBAC objects), so a
//! manifest the cluster would refuse fails here rather than at deploy time. `make lint` builds the
//! same overlays without an apiserver. Needs `make test-e2e`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::Context;
use orderpipe_stack::SharedStack;
use orderpipe_stack::tools::Tools;
use serde_json::{Value, json};

/// API groups the local stack does not serve, so the server cannot judge their objects:
/// cert-manager's Issuer and Certificate (config/external-metrics needs cert-manager, which the
/// stack does not run).
const NOT_SERVED: &[&str] = &["cert-manager.io"];

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// Every directory of config/ with a kustomization.yaml (config/deploy holds only a template).
fn overlays() -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(config_dir())?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    dirs.retain(|dir| dir.join("kustomization.yaml").is_file());
    dirs.sort();
    Ok(dirs)
}

fn kubectl(stack: &SharedStack, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Output> {
    let mut child = Command::new(Tools::locate()?.bin("kubectl")?)
        .env("KUBECONFIG", stack.kubeconfig()?)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(input)?;
    }
    Ok(child.wait_with_output()?)
}

fn api_group(object: &Value) -> &str {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    api_version
        .rsplit_once('/')
        .map_or("", |(group, _version)| group)
}

#[test]
#[ignore = "needs the local stack: make test-e2e"]
fn every_overlay_passes_a_server_side_dry_run() -> anyhow::Result<()> {
    let stack = SharedStack::get()?;
    let mut failures = Vec::new();
    let overlays = overlays()?;
    assert!(overlays.len() >= 6, "found only {overlays:?}");
    for dir in overlays {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let built = kubectl(&stack, &["kustomize", &dir.to_string_lossy()], None)?;
        if !built.status.success() {
            failures.push(format!(
                "{name}: kustomize: {}",
                String::from_utf8_lossy(&built.stderr)
            ));
            continue;
        }
        let mut items = Vec::new();
        for document in serde_norway::Deserializer::from_slice(&built.stdout) {
            let object: Value = serde::Deserialize::deserialize(document)?;
            if !object.is_null() && !NOT_SERVED.contains(&api_group(&object)) {
                items.push(object);
            }
        }
        // A dry-run creates nothing, so the overlay's namespaced objects need their namespace for
        // real (config/default ships its own Namespace; config/namespaced installs into one that
        // exists).
        let namespaces: BTreeSet<&str> = items
            .iter()
            .filter_map(|object| object["metadata"]["namespace"].as_str())
            .collect();
        for namespace in namespaces {
            let object = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace } });
            let created = kubectl(
                &stack,
                &["apply", "--server-side", "-f", "-"],
                Some(object.to_string().as_bytes()),
            )?;
            anyhow::ensure!(
                created.status.success(),
                "creating namespace {namespace}: {}",
                String::from_utf8_lossy(&created.stderr)
            );
        }
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": items });
        let dry_run = kubectl(
            &stack,
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=delivery-dry-run",
                "-f",
                "-",
            ],
            Some(list.to_string().as_bytes()),
        )?;
        if !dry_run.status.success() {
            failures.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&dry_run.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
