//! The two calls an aggregated API server makes to kube-apiserver: reading the front proxy's
//! settings (`kube-system/extension-apiserver-authentication`) and posting SubjectAccessReviews.
//!
//! I/O only; what the answers mean is decided in `auth`. [`CachedAuthorizer`] remembers decisions
//! for a few seconds, as kube-apiserver's delegating authorizer does. Needs the RBAC in
//! `config/external-metrics/rbac.yaml`: `extension-apiserver-authentication-reader` in kube-system
//! and `create` on `subjectaccessreviews`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// An [`Authorizer`] that remembers each decision for `ttl`: every HPA of a namespace asks as the
/// same user for the same metric, so one review per namespace per `ttl` answers them all. Errors
/// are not remembered. Same trade-off as kube-apiserver's delegating authorizer (10 s both ways): a
/// revoked permission takes effect within `ttl`.
#[derive(Debug)]
pub struct CachedAuthorizer<A> {
    inner: A,
    ttl: Duration,
    decisions: Mutex<HashMap<ReviewKey, (Instant, Decision)>>,
}

/// Everything a review depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ReviewKey {
    user: String,
    groups: Vec<String>,
    extra: Vec<(String, Vec<String>)>,
    namespace: String,
    metric: String,
}

impl<A: Authorizer> CachedAuthorizer<A> {
    pub fn new(inner: A, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            decisions: Mutex::new(HashMap::new()),
        }
    }
}

impl<A: Authorizer> Authorizer for CachedAuthorizer<A> {
    async fn authorize(
        &self,
        user: &User,
        namespace: &str,
        metric: &str,
    ) -> Result<Decision, String> {
        let key = ReviewKey {
            user: user.name.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone().into_iter().collect(),
            namespace: namespace.to_owned(),
            metric: metric.to_owned(),
        };
        let remembered = {
            let decisions = self
                .decisions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            decisions
                .get(&key)
                .filter(|(at, _)| at.elapsed() < self.ttl)
                .map(|(_, decision)| decision.clone())
        };
        if let Some(decision) = remembered {
            return Ok(decision);
        }
        let decision = self.inner.authorize(user, namespace, metric).await?;
        let mut decisions = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        decisions.retain(|_, (at, _)| at.elapsed() < self.ttl);
        decisions.insert(key, (Instant::now(), decision.clone()));
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Allows alice; counts the reviews it answers.
    #[derive(Default)]
    struct Counting {
        reviews: AtomicU32,
    }

    impl Authorizer for std::sync::Arc<Counting> {
        async fn authorize(&self, user: &User, _: &str, _: &str) -> Result<Decision, String> {
            self.reviews.fetch_add(1, Ordering::SeqCst);
            Ok(if user.name == "alice" {
                Decision::Allowed
            } else {
                Decision::Denied("no".into())
            })
        }
    }

    fn user(name: &str, group: &str) -> User {
        User {
            name: name.into(),
            groups: vec![group.into()],
            extra: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn one_review_answers_the_same_question_within_the_ttl() {
        let counting = std::sync::Arc::new(Counting::default());
        let cached = CachedAuthorizer::new(counting.clone(), Duration::from_secs(3600));
        let alice = user("alice", "dev");
        for _ in 0..3 {
            let decision = cached.authorize(&alice, "shop", "lag").await;
            assert_eq!(decision, Ok(Decision::Allowed));
        }
        assert_eq!(counting.reviews.load(Ordering::SeqCst), 1);

        // Any difference in the question is a new review: user, groups, namespace, metric.
        let bob = cached.authorize(&user("bob", "dev"), "shop", "lag").await;
        assert_eq!(bob, Ok(Decision::Denied("no".into())));
        cached
            .authorize(&user("alice", "ops"), "shop", "lag")
            .await
            .ok();
        cached.authorize(&alice, "other", "lag").await.ok();
        cached.authorize(&alice, "shop", "other").await.ok();
        assert_eq!(counting.reviews.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn an_expired_decision_is_reviewed_again() {
        let counting = std::sync::Arc::new(Counting::default());
        let cached = CachedAuthorizer::new(counting.clone(), Duration::ZERO);
        let alice = user("alice", "dev");
        cached.authorize(&alice, "shop", "lag").await.ok();
        cached.authorize(&alice, "shop", "lag").await.ok();
        assert_eq!(counting.reviews.load(Ordering::SeqCst), 2);
    }
}
