//! `config/external-metrics` hangs together and matches the code: the APIService names the group
//! and version the server serves and the Service that exists, the certificate covers the name the
//! aggregator verifies and lands where the operator reads it, and the RBAC is exactly what the
//! server calls. Reads the YAML files; needs no cluster.

use std::path::Path;

use orderpipe_operator::external_metrics::api::{GROUP, VERSION};
use orderpipe_operator::external_metrics::auth::{
    AUTHENTICATION_CONFIG_MAP, AUTHENTICATION_NAMESPACE,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// Every document of `config/<path>`.
fn documents(path: &str) -> Vec<Value> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(path);
    let text = std::fs::read_to_string(&file).expect("manifest readable");
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .collect()
}

fn one(path: &str, kind: &str) -> Value {
    let mut found = documents(path).into_iter().filter(|d| d["kind"] == kind);
    let document = found
        .next()
        .unwrap_or_else(|| panic!("no {kind} in {path}"));
    assert!(found.next().is_none(), "one {kind} in {path}");
    document
}

#[test]
fn the_apiservice_routes_the_served_group_to_the_operators_service() {
    let api_service = one("external-metrics/apiservice.yaml", "APIService");
    let service = one("external-metrics/service.yaml", "Service");
    assert_eq!(
        api_service["metadata"]["name"],
        format!("{VERSION}.{GROUP}")
    );
    assert_eq!(api_service["spec"]["group"], GROUP);
    assert_eq!(api_service["spec"]["version"], VERSION);
    assert_eq!(
        api_service["spec"]["service"]["name"],
        service["metadata"]["name"]
    );
    assert_eq!(
        api_service["spec"]["service"]["namespace"],
        service["metadata"]["namespace"]
    );
    assert_eq!(
        api_service["spec"]["service"]["port"],
        service["spec"]["ports"][0]["port"]
    );
    assert_eq!(
        api_service["spec"].get("insecureSkipTLSVerify"),
        None,
        "the serving certificate is verified"
    );
}

#[test]
fn the_certificate_covers_the_service_and_reaches_the_operator() {
    let api_service = one("external-metrics/apiservice.yaml", "APIService");
    let service = one("external-metrics/service.yaml", "Service");
    let certificate = one("external-metrics/certificate.yaml", "Certificate");
    let patch = one("external-metrics/manager_patch.yaml", "Deployment");

    // The aggregator verifies <service>.<namespace>.svc.
    let verified = format!(
        "{}.{}.svc",
        service["metadata"]["name"].as_str().expect("name"),
        service["metadata"]["namespace"]
            .as_str()
            .expect("namespace")
    );
    let dns_names = certificate["spec"]["dnsNames"]
        .as_array()
        .expect("dnsNames");
    assert!(dns_names.contains(&json!(verified)), "{dns_names:?}");
    assert_eq!(
        api_service["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!(
            "{}/{}",
            certificate["metadata"]["namespace"]
                .as_str()
                .expect("namespace"),
            certificate["metadata"]["name"].as_str().expect("name")
        )
    );

    let pod = &patch["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let volume = &pod["volumes"][0];
    assert_eq!(
        volume["secret"]["secretName"],
        certificate["spec"]["secretName"]
    );
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["name"], volume["name"]);
    assert_eq!(
        container["env"][0],
        json!({"name": "ORDERPIPE_EXTERNAL_METRICS_CERT_DIR", "value": mount["mountPath"]})
    );
    // The Service's target port is the container's, which is --external-metrics-addr's default.
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        container["ports"][0]["name"]
    );
    assert_eq!(container["ports"][0]["containerPort"], 6443);
}

#[test]
fn the_rbac_is_what_the_server_calls_and_no_more() {
    let rbac = documents("external-metrics/rbac.yaml");
    let account = one("rbac/service_account.yaml", "ServiceAccount");
    let of_kind = |kind: &str| rbac.iter().find(|d| d["kind"] == kind).expect(kind);

    assert_eq!(
        of_kind("ClusterRole")["rules"],
        json!([{
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        }])
    );
    let reader = of_kind("RoleBinding");
    assert_eq!(reader["metadata"]["namespace"], AUTHENTICATION_NAMESPACE);
    assert_eq!(
        reader["roleRef"]["name"], "extension-apiserver-authentication-reader",
        "the bootstrap Role that reads {AUTHENTICATION_CONFIG_MAP}"
    );
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let subject = &of_kind(binding)["subjects"][0];
        assert_eq!(subject["kind"], "ServiceAccount");
        assert_eq!(subject["name"], account["metadata"]["name"], "{binding}");
        assert_eq!(subject["namespace"], "orderpipe-system", "{binding}");
    }
}
