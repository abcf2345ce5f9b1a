//! Who is asking: the front-proxy ("requestheader") authentication of an aggregated API server,
//! and the SubjectAccessReview that delegates the authorization decision to kube-apiserver.
//!
//! Pure: parses the `extension-apiserver-authentication` ConfigMap, checks the verified client
//! certificate's name and reads the user from the headers, builds the review. It must not trust a
//! user header on a connection without a verified front-proxy certificate, and does no I/O (the
//! `delegation` module reads the ConfigMap and posts the review).

use std::collections::BTreeMap;

use http::HeaderMap;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};

use super::api::{GROUP, VERSION};

/// The ConfigMap kube-apiserver publishes for aggregated servers (`kube-system`).
pub const AUTHENTICATION_CONFIG_MAP: &str = "extension-apiserver-authentication";
pub const AUTHENTICATION_NAMESPACE: &str = "kube-system";

/// The front proxy's settings, from that ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// PEM: the CA that signs the front proxy's client certificates.
    pub client_ca_pem: String,
    /// Common names a front-proxy certificate may carry; empty: any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_headers_prefixes: Vec<String>,
}

impl RequestHeaderConfig {
    /// Reads the ConfigMap's data. The list keys hold JSON arrays of strings, as kube-apiserver
    /// writes them.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Self, String> {
        let client_ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|pem| !pem.trim().is_empty())
            .cloned()
            .ok_or_else(|| {
                "it has no requestheader-client-ca-file: kube-apiserver runs without \
                 --requestheader-client-ca-file, so it cannot proxy to aggregated APIs"
                    .to_owned()
            })?;
        let list = |key: &str| -> Result<Vec<String>, String> {
            match data.get(key) {
                None => Ok(Vec::new()),
                Some(json) => serde_json::from_str(json)
                    .map_err(|error| format!("{key} is not a JSON list of strings: {error}")),
            }
        };
        let config = Self {
            client_ca_pem,
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_headers_prefixes: list("requestheader-extra-headers-prefix")?,
        };
        if config.username_headers.is_empty() {
            return Err("requestheader-username-headers is empty".to_owned());
        }
        Ok(config)
    }
}

/// The user the front proxy vouches for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a request is not authenticated (all 401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no front-proxy client certificate: only kube-apiserver's aggregator may call this API"
    )]
    NoClientCertificate,
    #[error("client certificate {0:?} is not one of the front proxy's allowed names")]
    NameNotAllowed(String),
    #[error("the front proxy sent no user")]
    NoUser,
}

/// Authenticates a request. `verified_common_name` is the common name of the client certificate
/// the TLS layer verified against the front-proxy CA (`None`: no certificate); only then are the
/// user headers trusted.
pub fn authenticate(
    config: &RequestHeaderConfig,
    verified_common_name: Option<&str>,
    headers: &HeaderMap,
) -> Result<User, AuthError> {
    let name = verified_common_name.ok_or(AuthError::NoClientCertificate)?;
    if !config.allowed_names.is_empty() && !config.allowed_names.iter().any(|n| n == name) {
        return Err(AuthError::NameNotAllowed(name.to_owned()));
    }
    let values = |header: &str| {
        headers
            .get_all(header)
            .into_iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let user = config
        .username_headers
        .iter()
        .flat_map(|header| values(header))
        .find(|user| !user.is_empty())
        .ok_or(AuthError::NoUser)?;
    let groups = config
        .group_headers
        .iter()
        .flat_map(|header| values(header))
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (header, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        // Header names arrive lower-cased; the prefixes are configured in any case.
        let key = config.extra_headers_prefixes.iter().find_map(|prefix| {
            let prefix = prefix.to_ascii_lowercase();
            header.as_str().strip_prefix(prefix.as_str())
        });
        if let Some(key) = key.filter(|key| !key.is_empty()) {
            // The proxy escapes extra keys (they may hold characters headers cannot).
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .to_lowercase();
            extra.entry(key).or_default().push(value.to_owned());
        }
    }
    Ok(User {
        name: user,
        groups,
        extra,
    })
}

/// The review asking whether `user` may read `metric` in `namespace`. The verb is `list`: what
/// kube-apiserver's request info makes of a GET on a collection path, and what the HPA
/// controller's bootstrap role grants on `external.metrics.k8s.io`.
pub fn access_review(user: &User, namespace: &str, metric: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some("list".into()),
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some(metric.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn data(allowed: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "requestheader-client-ca-file".into(),
                "-----BEGIN CERTIFICATE-----\n...".into(),
            ),
            ("requestheader-allowed-names".into(), allowed.into()),
            (
                "requestheader-username-headers".into(),
                r#"["X-Remote-User"]"#.into(),
            ),
            (
                "requestheader-group-headers".into(),
                r#"["X-Remote-Group"]"#.into(),
            ),
            (
                "requestheader-extra-headers-prefix".into(),
                r#"["X-Remote-Extra-"]"#.into(),
            ),
            ("client-ca-file".into(), "not ours".into()),
        ])
    }

    fn config() -> RequestHeaderConfig {
        RequestHeaderConfig::from_config_map(&data(r#"["front-proxy-client"]"#)).expect("valid")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_config_map_lists_are_json_arrays() {
        let config = config();
        assert_eq!(config.allowed_names, ["front-proxy-client"]);
        assert_eq!(config.username_headers, ["X-Remote-User"]);
        assert_eq!(config.extra_headers_prefixes, ["X-Remote-Extra-"]);

        let broken = RequestHeaderConfig::from_config_map(&data("front-proxy-client"));
        assert!(
            broken
                .expect_err("not JSON")
                .contains("requestheader-allowed-names")
        );
        let mut no_ca = data("[]");
        no_ca.remove("requestheader-client-ca-file");
        let error = RequestHeaderConfig::from_config_map(&no_ca).expect_err("no CA");
        assert!(error.contains("--requestheader-client-ca-file"), "{error}");
    }

    #[test]
    fn the_user_comes_from_the_headers_of_a_verified_front_proxy() {
        let request = headers(&[
            (
                "x-remote-user",
                "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            ),
            ("x-remote-group", "system:serviceaccounts"),
            ("x-remote-group", "system:authenticated"),
            (
                "x-remote-extra-authentication.kubernetes.io%2fpod-name",
                "hpa-0",
            ),
        ]);
        let user = authenticate(&config(), Some("front-proxy-client"), &request).expect("user");
        assert_eq!(
            user.name,
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
        );
        assert_eq!(
            user.groups,
            ["system:serviceaccounts", "system:authenticated"]
        );
        assert_eq!(
            user.extra,
            BTreeMap::from([(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec!["hpa-0".to_owned()]
            )])
        );
    }

    #[test]
    fn user_headers_without_a_front_proxy_certificate_are_not_trusted() {
        let request = headers(&[("x-remote-user", "system:admin")]);
        assert_eq!(
            authenticate(&config(), None, &request),
            Err(AuthError::NoClientCertificate)
        );
        assert_eq!(
            authenticate(&config(), Some("some-client"), &request),
            Err(AuthError::NameNotAllowed("some-client".into()))
        );
        assert_eq!(
            authenticate(&config(), Some("front-proxy-client"), &HeaderMap::new()),
            Err(AuthError::NoUser)
        );
    }

    #[test]
    fn an_empty_allowed_names_list_accepts_any_certificate_of_the_ca() {
        let any = RequestHeaderConfig::from_config_map(&data("[]")).expect("valid");
        let request = headers(&[("x-remote-user", "alice")]);
        assert!(authenticate(&any, Some("whoever"), &request).is_ok());
    }

    #[test]
    fn the_review_asks_to_list_the_metric_in_the_namespace() {
        let user = User {
            name: "alice".into(),
            groups: vec!["dev".into()],
            extra: BTreeMap::new(),
        };
        let review = access_review(&user, "shop", "orderpipe_consumer_lag");
        let attributes = review.spec.resource_attributes.expect("resource");
        assert_eq!(attributes.verb.as_deref(), Some("list"));
        assert_eq!(attributes.group.as_deref(), Some("external.metrics.k8s.io"));
        assert_eq!(
            attributes.resource.as_deref(),
            Some("orderpipe_consumer_lag")
        );
        assert_eq!(attributes.namespace.as_deref(), Some("shop"));
        assert_eq!(review.spec.user.as_deref(), Some("alice"));
        assert_eq!(review.spec.extra, None);
    }
}
