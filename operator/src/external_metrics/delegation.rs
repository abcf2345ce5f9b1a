//! The two calls an aggregated API server makes to kube-apiserver: reading the front proxy's
//! settings (`kube-system/extension-apiserver-authentication`) and posting SubjectAccessReviews.
//!
//! I/O only; what the answers mean is decided in `auth`. Needs the RBAC in `config/rbac`:
//! `extension-apiserver-authentication-reader` in kube-system and `system:auth-delegator`.

use std::future::Future;

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

use super::auth::{
    AUTHENTICATION_CONFIG_MAP, AUTHENTICATION_NAMESPACE, RequestHeaderConfig, User, access_review,
};

/// Reads the front proxy's settings once; the caller decides what to do when they are missing.
pub async fn request_header_config(client: &kube::Client) -> Result<RequestHeaderConfig, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), AUTHENTICATION_NAMESPACE);
    let config_map = api.get(AUTHENTICATION_CONFIG_MAP).await.map_err(|error| {
        format!("reading {AUTHENTICATION_NAMESPACE}/{AUTHENTICATION_CONFIG_MAP}: {error}")
    })?;
    RequestHeaderConfig::from_config_map(&config_map.data.unwrap_or_default())
        .map_err(|why| format!("{AUTHENTICATION_NAMESPACE}/{AUTHENTICATION_CONFIG_MAP}: {why}"))
}

/// Kube-apiserver's answer to "may this user read this metric here?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Denied, with the authorizer's reason when it gave one.
    Denied(String),
}

/// Decides whether a user may read a metric in a namespace.
pub trait Authorizer: Send + Sync + 'static {
    fn authorize(
        &self,
        user: &User,
        namespace: &str,
        metric: &str,
    ) -> impl Future<Output = Result<Decision, String>> + Send;
}

/// [`Authorizer`] by SubjectAccessReview: kube-apiserver's authorizers (RBAC) decide.
#[derive(Clone)]
pub struct SubjectAccessReviewer {
    client: kube::Client,
}

impl std::fmt::Debug for SubjectAccessReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectAccessReviewer")
    }
}

impl SubjectAccessReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Authorizer for SubjectAccessReviewer {
    async fn authorize(
        &self,
        user: &User,
        namespace: &str,
        metric: &str,
    ) -> Result<Decision, String> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = api
            .create(
                &PostParams::default(),
                &access_review(user, namespace, metric),
            )
            .await
            .map_err(|error| format!("SubjectAccessReview failed: {error}"))?;
        let status = review.status.unwrap_or_default();
        Ok(if status.allowed {
            Decision::Allowed
        } else {
            Decision::Denied(status.reason.unwrap_or_default())
        })
    }
}
