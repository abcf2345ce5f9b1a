//! The contract end to end: what the operator renders, a kubelet resolves and the worker reads back.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use k8s_openapi::api::core::v1::EnvVar;

use super::*;
use crate::v1alpha1::{Duration, OrderPipeline, Processor, StageSpec};

fn checkout() -> OrderPipeline {
    let text = include_str!("../../../config/samples/orderpipe_v1alpha1_checkout.yaml");
    let mut pipeline: OrderPipeline = serde_norway::from_str(text).expect("sample parses");
    pipeline.metadata.namespace = Some("shop".into());
    pipeline
}

fn stage<'a>(pipeline: &'a OrderPipeline, name: &str) -> &'a StageSpec {
    pipeline
        .spec
        .stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("the sample has no stage {name:?}"))
}

/// What a kubelet does with the rendered env: substitute field and Secret references.
fn resolve(
    vars: &[EnvVar],
    pod: &str,
    secrets: &BTreeMap<(&str, &str), &str>,
) -> BTreeMap<String, String> {
    vars.iter()
        .map(|var| {
            let resolved = match (&var.value, &var.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => match (&from.field_ref, &from.secret_key_ref) {
                    (Some(f), _) if f.field_path == "metadata.name" => pod.to_string(),
                    (Some(f), _) if f.field_path == "metadata.namespace" => "shop".into(),
                    (_, Some(s)) => secrets[&(s.name.as_str(), s.key.as_str())].to_string(),
                    _ => panic!("unexpected reference in {}", var.name),
                },
                (None, None) => String::new(),
            };
            (var.name.clone(), resolved)
        })
        .collect()
}

#[test]
fn rendered_env_reads_back_into_the_config_the_stage_declares() {
    let pipeline = checkout();
    let stage = stage(&pipeline, "notify");
    let secrets = BTreeMap::from([(("notify-webhook", "authorization"), "Bearer s3cret")]);
    let env = resolve(
        &render_env(&pipeline, stage).expect("renders"),
        "checkout-notify-7d9f",
        &secrets,
    );
    let config = WorkerConfig::from_env(|k| env.get(k).cloned()).expect("contract holds");

    assert_eq!(config.processor, Processor::Notify);
    assert_eq!(config.namespace, "shop");
    assert_eq!(config.input_topic, "order-status");
    assert_eq!(config.output("audit"), Some("notifications.audit"));
    assert_eq!(config.dead_letter_topic, "orders.dlq");
    assert_eq!(config.consumer_group, "orderpipe.shop.checkout.notify");
    assert_eq!(
        config.transactional_id(),
        "orderpipe.shop.checkout.notify.checkout-notify-7d9f"
    );
    assert_eq!(config.state_topic, None);
    let notify = config.notify.expect("notify settings");
    assert_eq!(
        notify.url,
        "https://notifications.shop.svc:8443/order-updates"
    );
    assert_eq!(
        notify.authorization,
        Some(SecretString::new("Bearer s3cret"))
    );
    assert_eq!(notify.max_backoff, StdDuration::from_secs(30));
    assert_eq!(notify.initial_backoff, StdDuration::from_millis(200));
}

#[test]
fn stateful_stages_get_an_operator_managed_state_topic() {
    let pipeline = checkout();
    let stage = stage(&pipeline, "status");
    let env = resolve(
        &render_env(&pipeline, stage).expect("renders"),
        "p",
        &BTreeMap::new(),
    );
    let config = WorkerConfig::from_env(|k| env.get(k).cloned()).expect("contract holds");
    assert_eq!(
        config.state_topic.as_deref(),
        Some("orderpipe.shop.checkout.status.state")
    );
}

#[test]
fn secrets_are_references_in_the_pod_spec_and_redacted_in_debug_output() {
    let pipeline = checkout();
    let stage = stage(&pipeline, "notify");
    let vars = render_env(&pipeline, stage).expect("renders");
    let auth = vars
        .iter()
        .find(|v| v.name == env::WEBHOOK_AUTHORIZATION)
        .expect("auth var");
    assert_eq!(auth.value, None, "the Secret's value must never be inlined");

    let secrets = BTreeMap::from([(("notify-webhook", "authorization"), "Bearer s3cret")]);
    let env = resolve(&vars, "p", &secrets);
    let config = WorkerConfig::from_env(|k| env.get(k).cloned()).expect("contract holds");
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn missing_and_invalid_variables_are_named_in_the_error() {
    let pipeline = checkout();
    let stage = stage(&pipeline, "validate");
    let mut env = resolve(
        &render_env(&pipeline, stage).expect("renders"),
        "p",
        &BTreeMap::new(),
    );

    env.remove(env::INPUT_TOPIC);
    let err = WorkerConfig::from_env(|k| env.get(k).cloned()).expect_err("input missing");
    assert!(
        err.to_string()
            .starts_with("ORDERPIPE_INPUT_TOPIC is not set"),
        "{err}"
    );

    env.insert(env::INPUT_TOPIC.into(), "orders".into());
    env.insert(env::COMMIT_INTERVAL_MS.into(), "soon".into());
    let err = WorkerConfig::from_env(|k| env.get(k).cloned()).expect_err("bad interval");
    assert_eq!(
        err.to_string(),
        "ORDERPIPE_COMMIT_INTERVAL_MS is invalid: \"soon\" is not a whole number of milliseconds"
    );

    env.remove(env::COMMIT_INTERVAL_MS);
    env.insert(env::OUTPUTS.into(), "validated=orders.validated".into());
    let err = WorkerConfig::from_env(|k| env.get(k).cloned()).expect_err("output missing");
    assert!(
        err.to_string()
            .contains("needs an output named \"rejected\""),
        "{err}"
    );
}

#[test]
fn an_unrenderable_duration_is_named_by_its_field() {
    let pipeline = checkout();
    let mut stage = stage(&pipeline, "notify").clone();
    let retry = stage
        .notify
        .as_mut()
        .and_then(|n| n.retry.as_mut())
        .expect("retry settings");
    retry.max_backoff = Some(Duration("99999999999999999999h".into()));
    let err = render_env(&pipeline, &stage).expect_err("overflowing backoff");
    assert_eq!(
        err.to_string(),
        "notify.retry.maxBackoff is invalid: \"99999999999999999999h\" is too long"
    );
}

#[test]
fn an_unknown_name_is_refused_with_the_names_the_variable_takes() {
    let pipeline = checkout();
    let mut env = resolve(
        &render_env(&pipeline, stage(&pipeline, "status")).expect("renders"),
        "p",
        &BTreeMap::new(),
    );
    env.insert(env::PROCESSOR.into(), "fraud".into());
    let err = WorkerConfig::from_env(|k| env.get(k).cloned()).expect_err("unknown processor");
    assert_eq!(
        err.to_string(),
        "ORDERPIPE_PROCESSOR is invalid: \"fraud\" is not one of validate, status, notify, custom"
    );
}
