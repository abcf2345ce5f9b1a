//! Settings of the notify processor: the webhook, the channel and the retry policy.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::hosts::WEBHOOK_URL_RULE;
use super::{Duration, SecretKeyRef};

/// Settings of the notify processor.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotifySpec {
    /// Where notifications are POSTed.
    pub webhook: WebhookSpec,

    /// Channel name, part of the idempotency key `<orderId>:<version>:<channel>` (default `webhook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z0-9-]+$"))]
    pub channel: Option<String>,

    /// Retries of transient failures (timeouts, 5xx, 429) before the record is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// The notification webhook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(WEBHOOK_URL_RULE)
        .message("spec.stages[].notify.webhook.url must not name a link-local or cloud-metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254, metadata.google.internal): the worker would POST to the node's metadata service")
        .field_path(".url")
        .reason(Reason::FieldValueForbidden),
)]
pub struct WebhookSpec {
    /// URL to POST to (http or https; https when `authSecretRef` is set, unless the operator runs
    /// with `--allow-insecure-webhooks`). Link-local and cloud-metadata addresses are refused.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,

    /// Value of the `Authorization` header, read from a Secret key (e.g. `Bearer ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,

    /// Timeout of one delivery attempt (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Capped exponential backoff with jitter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Attempts in total, including the first (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<i32>,

    /// Backoff before the second attempt (default `200ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff: Option<Duration>,

    /// Longest backoff between two attempts (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
}
