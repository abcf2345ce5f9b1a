//! Secret rotation: a pod restarts when a Secret it uses changes.
//!
//! Workers read their Secrets once, at start: the SASL password and webhook token from environment
//! variables, the TLS files when they connect, the gateway's tokens when it starts. So a rotated
//! Secret reaches them through a rolling restart. The operator stamps every pod template that uses
//! Secrets with [`SECRET_VERSIONS_ANNOTATION`], `name=resourceVersion` for each of them; when a
//! Secret changes, its `resourceVersion` changes, the template changes, and the Deployment (or the
//! Argo Rollout, through its canary steps) rolls the pods.
//!
//! Why the resourceVersion and not a hash of the content, as Helm charts do: the annotation is
//! readable by anyone who may read Deployments, and a hash of a short password can be brute-forced
//! offline. The price is a restart for a change to the Secret's metadata alone (a new label).
//!
//! Pure: which Secrets a template uses is read from the built objects themselves (environment
//! `secretKeyRef`s and Secret volumes), so there is one source of truth for it. The versions come
//! from `secrets` (I/O, cached) and are found again within one refresh period (see `controller`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::children::Child;

/// Pod template annotation: the versions of the Secrets the pod uses, `name=version,...`.
pub const SECRET_VERSIONS_ANNOTATION: &str = "orderpipe.dev/secret-versions";

/// The names of the Secrets the pod templates among `children` use.
pub fn secrets_used(children: &[Child]) -> BTreeSet<String> {
    children
        .iter()
        .filter_map(|child| pod_spec(&child.object))
        .flat_map(secrets_of)
        .collect()
}

/// Stamps each pod template among `children` that uses Secrets with their versions (a Secret
/// missing from `versions` is left out). Templates without Secrets are left as built.
pub fn stamp(children: &mut [Child], versions: &BTreeMap<String, String>) {
    for child in children {
        let Some(used) = pod_spec(&child.object).map(secrets_of) else {
            continue;
        };
        let stamped: Vec<String> = used
            .iter()
            .filter_map(|name| Some(format!("{name}={}", versions.get(name)?)))
            .collect();
        if stamped.is_empty() {
            continue;
        }
        let Some(template) = child.object.pointer_mut("/spec/template") else {
            continue;
        };
        let metadata = ensure_object(template, "metadata");
        let annotations = ensure_object(metadata, "annotations");
        annotations[SECRET_VERSIONS_ANNOTATION] = Value::String(stamped.join(","));
    }
}

/// The pod spec of a workload's template (Deployment, Rollout), if the object has one.
fn pod_spec(object: &Value) -> Option<&Value> {
    object.pointer("/spec/template/spec")
}

/// Secrets named by a pod spec: its containers' `env[].valueFrom.secretKeyRef` and `envFrom[]
/// .secretRef`, and its `secret` volumes.
fn secrets_of(pod: &Value) -> BTreeSet<String> {
    let names = |value: &Value, pointer: &str| -> Option<String> {
        Some(value.pointer(pointer)?.as_str()?.to_owned())
    };
    let containers = pod["containers"].as_array().into_iter().flatten();
    let from_env = containers.clone().flat_map(|container| {
        let env = container["env"].as_array().into_iter().flatten();
        env.filter_map(move |var| names(var, "/valueFrom/secretKeyRef/name"))
    });
    let from_env_from = containers.flat_map(|container| {
        let env_from = container["envFrom"].as_array().into_iter().flatten();
        env_from.filter_map(move |source| names(source, "/secretRef/name"))
    });
    let volumes = pod["volumes"].as_array().into_iter().flatten();
    let from_volumes = volumes.filter_map(|volume| names(volume, "/secret/secretName"));
    from_env.chain(from_env_from).chain(from_volumes).collect()
}

/// `value[key]`, made an object if it is absent or null.
fn ensure_object<'a>(value: &'a mut Value, key: &str) -> &'a mut Value {
    let slot = &mut value[key];
    if !slot.is_object() {
        *slot = Value::Object(serde_json::Map::new());
    }
    slot
}

#[cfg(test)]
mod tests {
    use orderpipe_api::OrderPipeline;

    use super::*;
    use crate::capabilities::Capabilities;
    use crate::desired::desired_children;
    use crate::model;
    use crate::settings::OperatorSettings;

    const CHECKOUT: &str = include_str!("../../config/samples/orderpipe_v1alpha1_checkout.yaml");
    const CANARY: &str = include_str!("../../config/samples/orderpipe_v1alpha1_canary.yaml");

    /// The checkout sample (an authenticated notify webhook, an intake gateway) on the canary
    /// sample's Kafka (a TLS CA and SASL credentials): every kind of Secret a pod can use.
    fn children() -> Vec<Child> {
        let parse = |yaml: &str| -> OrderPipeline { serde_norway::from_str(yaml).expect("parses") };
        let mut pipeline = parse(CHECKOUT);
        pipeline.spec.kafka = parse(CANARY).spec.kafka;
        pipeline.metadata.namespace = Some("shop".into());
        pipeline.metadata.uid = Some("0b7e3c1a-5d2f-4c8e-9a61-3f0d2c4b5e6f".into());
        let partitions = pipeline
            .spec
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.partitions))
            .collect();
        let settings = OperatorSettings::default();
        let capabilities = Capabilities::default();
        let (validated, _) = model::validate(&pipeline, &partitions, capabilities, &settings);
        desired_children(&pipeline, &validated, capabilities, &settings).expect("builds")
    }

    fn stamp_of<'a>(children: &'a [Child], name: &str) -> Option<&'a str> {
        let child = children
            .iter()
            .find(|c| c.name == name && c.object["kind"] == "Deployment")?;
        child
            .object
            .pointer("/spec/template/metadata/annotations")?
            .get(SECRET_VERSIONS_ANNOTATION)?
            .as_str()
    }

    fn versions(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_secret_a_pod_uses_is_found_in_its_built_template() {
        let used = secrets_used(&children());
        let expected: BTreeSet<String> = [
            "checkout-intake-tokens",
            "kafka-ca",
            "notify-webhook",
            "orderpipe-kafka-user",
        ]
        .map(String::from)
        .into();
        assert_eq!(used, expected);
    }

    #[test]
    fn a_changed_secret_changes_exactly_the_templates_that_use_it() {
        let before = versions(&[
            ("checkout-intake-tokens", "10"),
            ("kafka-ca", "20"),
            ("notify-webhook", "30"),
            ("orderpipe-kafka-user", "40"),
        ]);
        let mut old = children();
        stamp(&mut old, &before);
        assert_eq!(
            stamp_of(&old, "checkout-notify"),
            Some("kafka-ca=20,notify-webhook=30,orderpipe-kafka-user=40")
        );
        assert_eq!(
            stamp_of(&old, "checkout-intake"),
            Some("checkout-intake-tokens=10,kafka-ca=20,orderpipe-kafka-user=40")
        );

        let mut rotated = before.clone();
        rotated.insert("notify-webhook".into(), "31".into());
        let mut new = children();
        stamp(&mut new, &rotated);
        let changed: Vec<&str> = old
            .iter()
            .zip(&new)
            .filter(|(o, n)| o.object != n.object)
            .map(|(o, _)| o.name.as_str())
            .collect();
        assert_eq!(changed, ["checkout-notify"]);

        let mut again = children();
        stamp(&mut again, &rotated);
        assert_eq!(
            new.iter().map(|c| &c.object).collect::<Vec<_>>(),
            again.iter().map(|c| &c.object).collect::<Vec<_>>(),
            "the same versions stamp the same objects: no rollout without a change"
        );
    }

    #[test]
    fn the_existing_scrape_annotations_are_kept() {
        let mut stamped = children();
        stamp(&mut stamped, &versions(&[("notify-webhook", "1")]));
        let child = stamped
            .iter()
            .find(|c| c.name == "checkout-notify" && c.object["kind"] == "Deployment")
            .expect("notify deployment");
        let annotations = &child.object["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations[SECRET_VERSIONS_ANNOTATION], "notify-webhook=1");
        assert!(
            annotations.as_object().is_some_and(|a| a.len() > 1),
            "{annotations}"
        );
    }
}
