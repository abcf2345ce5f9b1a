//! What the operator puts into a worker container's environment: [`render_env`] for a stage,
//! [`render_intake_env`] for the intake gateway. Secrets stay
//! references the kubelet resolves; nothing here reads a Secret or talks to the apiserver.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector};

use super::container::{
    INTAKE_PORT, METRICS_PORT, TLS_CA_FILE, TLS_CLIENT_MOUNT_DIR, TLS_MOUNT_DIR,
};
use super::duration::{DurationError, parse_duration};
use super::env::format_outputs;
use super::processors::is_stateful;
use super::{defaults, env, naming};
use crate::v1alpha1::{Duration, IntakeSpec, KafkaSpec, OrderPipeline, StageSpec};

/// A stage setting the worker environment cannot carry, named by its path inside the stage spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} is invalid: {reason}")]
pub struct RenderError {
    pub field: &'static str,
    pub reason: DurationError,
}

/// The environment of a stage's worker container. Secrets stay references (resolved by the kubelet);
/// pod identity comes from the downward API.
pub fn render_env(pipeline: &OrderPipeline, stage: &StageSpec) -> Result<Vec<EnvVar>, RenderError> {
    let name = pipeline.metadata.name.as_deref().unwrap_or_default();
    let namespace = pipeline.metadata.namespace.as_deref().unwrap_or_default();
    let kafka = &pipeline.spec.kafka;
    let outputs: BTreeMap<String, String> = stage
        .outputs
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();

    let mut vars = vec![
        value(env::PIPELINE, name),
        value(
            env::PIPELINE_UID,
            pipeline.metadata.uid.as_deref().unwrap_or_default(),
        ),
        field(env::NAMESPACE, "metadata.namespace"),
        value(env::STAGE, &stage.name),
        field(env::POD_NAME, "metadata.name"),
        value(env::PROCESSOR, stage.processor.as_str()),
        value(env::BOOTSTRAP_SERVERS, &bootstrap_servers(kafka)),
        value(env::INPUT_TOPIC, &stage.input),
        value(env::OUTPUTS, &format_outputs(&outputs)),
        value(env::DEAD_LETTER_TOPIC, &stage.dead_letter),
        value(
            env::CONSUMER_GROUP,
            &naming::consumer_group(namespace, name, &stage.name),
        ),
        value(env::CONTROL_TOPIC, &naming::control_topic(namespace, name)),
        value(env::METRICS_PORT, &METRICS_PORT.to_string()),
        value(
            env::SHUTDOWN_GRACE_SECONDS,
            &defaults::SHUTDOWN_GRACE.as_secs().to_string(),
        ),
    ];
    if is_stateful(stage.processor) {
        vars.push(value(
            env::STATE_TOPIC,
            &naming::state_topic(namespace, name, &stage.name),
        ));
    }
    vars.extend(kafka_security_env(kafka));
    if let Some(notify) = &stage.notify {
        let retry = notify.retry.as_ref();
        let millis = |field: &'static str,
                      d: Option<&Duration>,
                      default: StdDuration|
         -> Result<String, RenderError> {
            Ok(d.map(parse_duration)
                .transpose()
                .map_err(|reason| RenderError { field, reason })?
                .unwrap_or(default)
                .as_millis()
                .to_string())
        };
        vars.push(value(env::WEBHOOK_URL, &notify.webhook.url));
        if let Some(auth) = &notify.webhook.auth_secret_ref {
            vars.push(secret(
                env::WEBHOOK_AUTHORIZATION,
                &auth.name.0,
                &auth.key.0,
            ));
        }
        vars.push(value(
            env::WEBHOOK_TIMEOUT_MS,
            &millis(
                "notify.webhook.timeout",
                notify.webhook.timeout.as_ref(),
                defaults::WEBHOOK_TIMEOUT,
            )?,
        ));
        vars.push(value(
            env::NOTIFY_CHANNEL,
            notify
                .channel
                .as_deref()
                .unwrap_or(defaults::NOTIFY_CHANNEL),
        ));
        let attempts = retry
            .and_then(|r| r.max_attempts)
            .map_or(defaults::RETRY_MAX_ATTEMPTS, |n| {
                u32::try_from(n).unwrap_or(defaults::RETRY_MAX_ATTEMPTS)
            });
        vars.push(value(env::RETRY_MAX_ATTEMPTS, &attempts.to_string()));
        vars.push(value(
            env::RETRY_INITIAL_BACKOFF_MS,
            &millis(
                "notify.retry.initialBackoff",
                retry.and_then(|r| r.initial_backoff.as_ref()),
                defaults::RETRY_INITIAL_BACKOFF,
            )?,
        ));
        vars.push(value(
            env::RETRY_MAX_BACKOFF_MS,
            &millis(
                "notify.retry.maxBackoff",
                retry.and_then(|r| r.max_backoff.as_ref()),
                defaults::RETRY_MAX_BACKOFF,
            )?,
        ));
    }
    Ok(vars)
}

/// The environment of the intake gateway's container (`orderpipe-worker intake`): the Kafka
/// connection as a stage's, its two topics, and the bearer tokens as a Secret reference.
pub fn render_intake_env(pipeline: &OrderPipeline, intake: &IntakeSpec) -> Vec<EnvVar> {
    let name = pipeline.metadata.name.as_deref().unwrap_or_default();
    let kafka = &pipeline.spec.kafka;
    let mut vars = vec![
        value(env::PIPELINE, name),
        field(env::NAMESPACE, "metadata.namespace"),
        field(env::POD_NAME, "metadata.name"),
        value(env::BOOTSTRAP_SERVERS, &bootstrap_servers(kafka)),
        value(env::INTAKE_ORDERS_TOPIC, &intake.orders_topic),
        value(env::INTAKE_STATUS_TOPIC, &intake.status_topic),
        value(env::INTAKE_PORT, &INTAKE_PORT.to_string()),
        secret(
            env::INTAKE_TOKENS,
            &intake.tokens_secret_ref.name.0,
            &intake.tokens_secret_ref.key.0,
        ),
        value(env::METRICS_PORT, &METRICS_PORT.to_string()),
    ];
    vars.extend(kafka_security_env(kafka));
    vars
}

fn bootstrap_servers(kafka: &KafkaSpec) -> String {
    let servers: Vec<&str> = kafka
        .bootstrap_servers
        .iter()
        .map(|s| s.0.as_str())
        .collect();
    servers.join(",")
}

/// TLS and SASL settings, shared by the stages and the gateway: file locations where the pod
/// mounts the TLS Secrets, and SASL credentials as Secret references.
fn kafka_security_env(kafka: &KafkaSpec) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    if let Some(tls) = &kafka.tls {
        vars.push(value(env::TLS_ENABLED, "true"));
        if tls.ca_secret_ref.is_some() {
            vars.push(value(
                env::TLS_CA_FILE,
                &format!("{TLS_MOUNT_DIR}/{TLS_CA_FILE}"),
            ));
        }
        if tls.client_cert_secret_name.is_some() {
            vars.push(value(env::TLS_CLIENT_DIR, TLS_CLIENT_MOUNT_DIR));
        }
    }
    if let Some(sasl) = &kafka.sasl {
        let creds = &sasl.credentials_secret_ref;
        vars.push(value(env::SASL_MECHANISM, sasl.mechanism.as_kafka_str()));
        vars.push(secret(
            env::SASL_USERNAME,
            &creds.name.0,
            &creds.username_key.0,
        ));
        vars.push(secret(
            env::SASL_PASSWORD,
            &creds.name.0,
            &creds.password_key.0,
        ));
    }
    vars
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}
