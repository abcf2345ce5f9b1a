//! `crds/` holds the CRD generated from the Rust types, `docs/api.md` the reference rendered from it;
//! this fails when someone changes the types and forgets `make manifests`, or edits a generated file by
//! hand.

use std::path::Path;

/// Fails unless the file at `relative` (from the workspace root) holds exactly `generated`.
#[track_caller]
fn assert_checked_in(relative: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is stale: run `make manifests` and commit the result",
        path.display()
    );
}

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let generated = orderpipe_api::crd_yaml().expect("CRD serializes");
    assert_checked_in("crds/orderpipe.dev_orderpipelines.yaml", &generated);
}

#[test]
fn checked_in_api_reference_matches_the_crd() {
    let generated = orderpipe_api::api_reference().expect("CRD serializes");
    assert_checked_in("docs/api.md", &generated);
}

#[test]
fn crd_declares_unique_names_as_list_map_keys() {
    let crd: serde_json::Value =
        serde_norway::from_str(&orderpipe_api::crd_yaml().expect("CRD serializes")).expect("YAML");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for list in ["topics", "stages"] {
        let schema = &spec["properties"][list];
        assert_eq!(schema["x-kubernetes-list-type"], "map", "{list}");
        assert_eq!(
            schema["x-kubernetes-list-map-keys"],
            serde_json::json!(["name"]),
            "{list}"
        );
        assert!(
            schema["maxItems"].is_u64(),
            "{list} must be bounded for the CEL cost budget"
        );
    }
    let topic_name = &spec["properties"]["topics"]["items"]["properties"]["name"];
    assert_eq!(topic_name["pattern"], "^[a-zA-Z0-9._-]+$");
    assert_eq!(topic_name["maxLength"], 249);
}

/// The apiserver refuses the whole CRD when a messageExpression's estimated cost is unbounded, which
/// kube's client-side CEL validator does not check (found on a real kube-apiserver 1.37). List
/// macros and `string()` of numbers are what makes the estimate unbounded.
#[test]
fn message_expressions_stay_within_the_apiserver_cost_budget() {
    let crd = orderpipe_api::crd_yaml().expect("CRD serializes");
    for line in crd.lines().filter(|l| l.contains("messageExpression")) {
        for unbounded in [".filter(", ".map(", ".join(", "string("] {
            assert!(
                !line.contains(unbounded),
                "{unbounded} in a messageExpression: {line}"
            );
        }
    }
}
