//! The wire format of `external.metrics.k8s.io/v1beta1` as kube-apiserver's aggregator, the HPA
//! controller and kubectl expect it: routes, the label selector, discovery documents, the
//! `ExternalMetricValueList` and `Status` errors.
//!
//! Pure: parses and renders, never authenticates, authorizes or measures anything.

use std::collections::BTreeMap;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, GroupVersionForDiscovery, ListMeta,
    Status,
};
use orderpipe_api::contract::metrics::{CONSUMER_LAG, labels};
use serde_json::{Value, json};

pub const GROUP: &str = "external.metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

/// What a request path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/apis`: the group list.
    Groups,
    /// `/apis/external.metrics.k8s.io`: the group.
    Group,
    /// `/apis/external.metrics.k8s.io/v1beta1`: the resources (metrics) served.
    Resources,
    /// `/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}`.
    Metric { namespace: &'a str, metric: &'a str },
    /// Anything else (e.g. `/openapi/v2`, which the aggregator accepts a 404 for).
    Unknown,
}

/// The route of a request path (without its query).
pub fn route(path: &str) -> Route<'_> {
    let path = path.trim_end_matches('/');
    let Some(rest) = path.strip_prefix("/apis") else {
        return Route::Unknown;
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match segments.as_slice() {
        [] => Route::Groups,
        [GROUP] => Route::Group,
        [GROUP, VERSION] => Route::Resources,
        [GROUP, VERSION, "namespaces", namespace, metric]
            if !namespace.is_empty() && !metric.is_empty() =>
        {
            Route::Metric { namespace, metric }
        }
        _ => Route::Unknown,
    }
}

/// The stage a metric request selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageSelector {
    pub pipeline: String,
    pub stage: String,
}

/// Parses the `labelSelector` query parameter. The HPA renders its `matchLabels` as
/// `pipeline=<p>,stage=<s>` (in key order); `==` is accepted as well. Anything else is refused
/// with a message saying what is supported: the metric has exactly these two labels.
pub fn stage_selector(query: Option<&str>) -> Result<StageSelector, String> {
    let usage = || {
        format!(
            "labelSelector must be {}=<pipeline>,{}=<stage>",
            labels::PIPELINE,
            labels::STAGE
        )
    };
    let selector = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "labelSelector")
        .map(|(_, value)| value.into_owned())
        .ok_or_else(usage)?;
    let mut pipeline = None;
    let mut stage = None;
    for requirement in selector.split(',').map(str::trim) {
        let (key, value) = requirement
            .split_once("==")
            .or_else(|| requirement.split_once('='))
            .filter(|(key, _)| !key.ends_with('!'))
            .ok_or_else(|| format!("unsupported requirement {requirement:?}: {}", usage()))?;
        let (key, value) = (key.trim(), value.trim());
        let slot = match key {
            labels::PIPELINE => &mut pipeline,
            labels::STAGE => &mut stage,
            other => {
                return Err(format!(
                    "{CONSUMER_LAG} has no label {other:?}: {}",
                    usage()
                ));
            }
        };
        if value.is_empty() || slot.replace(value.to_owned()).is_some() {
            return Err(format!(
                "{key} must be given once, with a value: {}",
                usage()
            ));
        }
    }
    match (pipeline, stage) {
        (Some(pipeline), Some(stage)) => Ok(StageSelector { pipeline, stage }),
        _ => Err(usage()),
    }
}

fn group_version() -> GroupVersionForDiscovery {
    GroupVersionForDiscovery {
        group_version: GROUP_VERSION.into(),
        version: VERSION.into(),
    }
}

fn group() -> APIGroup {
    APIGroup {
        name: GROUP.into(),
        versions: vec![group_version()],
        preferred_version: Some(group_version()),
        server_address_by_client_cidrs: None,
    }
}

/// `/apis`.
pub fn group_list() -> Value {
    to_json(&APIGroupList {
        groups: vec![group()],
    })
}

/// `/apis/external.metrics.k8s.io`.
pub fn group_document() -> Value {
    to_json(&group())
}

/// `/apis/external.metrics.k8s.io/v1beta1`: the one metric, listed as a namespaced resource with
/// the verb `get`, as external metrics adapters list theirs.
pub fn resource_list() -> Value {
    to_json(&APIResourceList {
        group_version: GROUP_VERSION.into(),
        resources: vec![APIResource {
            name: CONSUMER_LAG.into(),
            singular_name: String::new(),
            namespaced: true,
            kind: "ExternalMetricValueList".into(),
            verbs: vec!["get".into()],
            ..APIResource::default()
        }],
    })
}

/// The `ExternalMetricValueList` with the stage's lag (records), measured at `at`.
pub fn value_list(selector: &StageSelector, records: u64, at: SystemTime) -> Value {
    let metric_labels = BTreeMap::from([
        (labels::PIPELINE, selector.pipeline.as_str()),
        (labels::STAGE, selector.stage.as_str()),
    ]);
    // metav1.Time: RFC 3339 in UTC, whole seconds.
    let timestamp = DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": [{
            "metricName": CONSUMER_LAG,
            "metricLabels": metric_labels,
            "timestamp": timestamp,
            // A Quantity: an integer renders as itself.
            "value": records.to_string(),
        }],
    })
}

/// A `Status` failure as the apiserver renders one (`reason` from the status code).
pub fn status(code: StatusCode, message: &str) -> Value {
    let reason = match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    };
    to_json(&Status {
        code: Some(i32::from(code.as_u16())),
        message: Some(message.into()),
        metadata: ListMeta::default(),
        reason: Some(reason.into()),
        status: Some("Failure".into()),
        details: None,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    // These k8s-openapi types always serialize: no maps with non-string keys, no floats.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn routes_cover_discovery_and_the_metric() {
        assert_eq!(route("/apis"), Route::Groups);
        assert_eq!(route("/apis/"), Route::Groups);
        assert_eq!(route("/apis/external.metrics.k8s.io"), Route::Group);
        assert_eq!(
            route("/apis/external.metrics.k8s.io/v1beta1"),
            Route::Resources
        );
        assert_eq!(
            route("/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/orderpipe_consumer_lag"),
            Route::Metric {
                namespace: "shop",
                metric: "orderpipe_consumer_lag"
            }
        );
        for unknown in [
            "/openapi/v2",
            "/apis/custom.metrics.k8s.io/v1beta1",
            "/apis/external.metrics.k8s.io/v1beta2",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces//x",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/lag/extra",
            "/",
        ] {
            assert_eq!(route(unknown), Route::Unknown, "{unknown}");
        }
    }

    #[test]
    fn the_hpas_selector_names_the_stage() {
        let expected = StageSelector {
            pipeline: "checkout".into(),
            stage: "validate".into(),
        };
        // As the HPA controller sends it (url-encoded), and as a person types it.
        for query in [
            "labelSelector=pipeline%3Dcheckout%2Cstage%3Dvalidate",
            "labelSelector=stage==validate,pipeline=checkout",
            "labelSelector=pipeline%3D%3Dcheckout%2C%20stage%3Dvalidate&limit=1",
        ] {
            assert_eq!(stage_selector(Some(query)), Ok(expected.clone()), "{query}");
        }
    }

    #[test]
    fn selectors_other_than_both_labels_by_equality_are_refused() {
        for query in [
            None,
            Some("limit=1"),
            Some("labelSelector=pipeline%3Dcheckout"),
            Some("labelSelector=pipeline!%3Dcheckout,stage%3Dx"),
            Some("labelSelector=pipeline%20in%20(a),stage%3Dx"),
            Some("labelSelector=pipeline%3Da,pipeline%3Db,stage%3Dx"),
            Some("labelSelector=pipeline%3D,stage%3Dx"),
            Some("labelSelector=pipeline%3Da,stage%3Dx,topic%3Dorders"),
        ] {
            let error = stage_selector(query).expect_err("refused");
            assert!(
                error.contains("pipeline=<pipeline>,stage=<stage>"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_value_list_has_the_upstream_shape() {
        let selector = StageSelector {
            pipeline: "checkout".into(),
            stage: "validate".into(),
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_806_400);
        assert_eq!(
            value_list(&selector, 1234, at),
            json!({
                "kind": "ExternalMetricValueList",
                "apiVersion": "external.metrics.k8s.io/v1beta1",
                "metadata": {},
                "items": [{
                    "metricName": "orderpipe_consumer_lag",
                    "metricLabels": {"pipeline": "checkout", "stage": "validate"},
                    "timestamp": "2025-12-04T00:00:00Z",
                    "value": "1234",
                }],
            })
        );
    }

    #[test]
    fn discovery_documents_carry_their_kinds() {
        let resources = resource_list();
        assert_eq!(resources["kind"], "APIResourceList");
        assert_eq!(resources["apiVersion"], "v1");
        assert_eq!(resources["groupVersion"], "external.metrics.k8s.io/v1beta1");
        assert_eq!(
            resources["resources"],
            json!([{
                "name": "orderpipe_consumer_lag",
                "singularName": "",
                "namespaced": true,
                "kind": "ExternalMetricValueList",
                "verbs": ["get"],
            }])
        );
        let groups = group_list();
        assert_eq!(groups["kind"], "APIGroupList");
        assert_eq!(groups["groups"][0]["name"], GROUP);
        assert_eq!(
            groups["groups"][0]["preferredVersion"],
            json!({"groupVersion": GROUP_VERSION, "version": "v1beta1"})
        );
        assert_eq!(group_document()["kind"], "APIGroup");
    }

    #[test]
    fn errors_are_status_objects() {
        let forbidden = status(StatusCode::FORBIDDEN, "no");
        assert_eq!(forbidden["kind"], "Status");
        assert_eq!(forbidden["status"], "Failure");
        assert_eq!(forbidden["reason"], "Forbidden");
        assert_eq!(forbidden["code"], 403);
    }
}
