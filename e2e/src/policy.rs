//! Admission policies a test installs to make the apiserver refuse what the operator writes.

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use orderpipe_stack::{TestNamespace, wait_until};
use serde_json::json;

use crate::CONVERGE;

/// A ValidatingAdmissionPolicy and its binding that deny every Deployment write in one namespace.
#[derive(Debug)]
pub struct DenyDeployments {
    name: String,
}

impl DenyDeployments {
    pub const MESSAGE: &'static str = "e2e policy: no Deployments here";

    fn resource(kind: &str) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            kind,
        ))
    }

    /// Installs the policy and waits until the apiserver enforces it.
    pub async fn install(ns: &TestNamespace) -> anyhow::Result<DenyDeployments> {
        let name = format!("deny-deployments-{}", ns.name());
        let apply = PatchParams::apply("e2e-test").force();
        let policy = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": ["apps"], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["deployments"],
                }]},
                "validations": [{"expression": "false", "message": Self::MESSAGE}],
            },
        });
        let binding = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": ns.name(),
                }}},
            },
        });
        for (kind, object) in [
            ("ValidatingAdmissionPolicy", policy),
            ("ValidatingAdmissionPolicyBinding", binding),
        ] {
            Api::<DynamicObject>::all_with(ns.client().clone(), &Self::resource(kind))
                .patch(&name, &apply, &Patch::Apply(&object))
                .await
                .with_context(|| format!("applying {kind} {name}"))?;
        }
        // The apiserver loads policies asynchronously: wait until a dry-run create is refused.
        let probe: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "policy-probe"},
            "spec": {
                "selector": {"matchLabels": {"app": "probe"}},
                "template": {
                    "metadata": {"labels": {"app": "probe"}},
                    "spec": {"containers": [{"name": "c", "image": "probe"}]},
                },
            },
        }))?;
        let dry_run = kube::api::PostParams {
            dry_run: true,
            ..kube::api::PostParams::default()
        };
        wait_until("the policy refuses Deployments", CONVERGE, || async {
            match ns.api::<Deployment>().create(&dry_run, &probe).await {
                Err(kube::Error::Api(status)) if status.message.contains(Self::MESSAGE) => Some(()),
                _ => None,
            }
        })
        .await?;
        Ok(DenyDeployments { name })
    }

    pub async fn remove(self, ns: &TestNamespace) -> anyhow::Result<()> {
        for kind in [
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicy",
        ] {
            Api::<DynamicObject>::all_with(ns.client().clone(), &Self::resource(kind))
                .delete(&self.name, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting {kind} {}", self.name))?;
        }
        Ok(())
    }
}
