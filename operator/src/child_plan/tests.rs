use serde_json::json;

use super::*;
use crate::model::Scaling;

fn child(kind: ChildKind, name: &str, spec: Value) -> Child {
    with_desired_hash(Child {
        kind,
        name: name.into(),
        object: json!({ "metadata": { "name": name, "labels": { "a": "b" } }, "spec": spec }),
    })
}

#[test]
fn unchanged_live_object_is_not_applied_again() {
    let desired = child(
        ChildKind::Service,
        "s",
        json!({ "ports": [{ "port": 9090 }] }),
    );
    let mut live = desired.object.clone();
    live["spec"]["clusterIP"] = json!("10.0.0.1");
    live["metadata"]["resourceVersion"] = json!("42");
    live["spec"]["ports"][0]["protocol"] = json!("TCP");
    assert!(!needs_apply(&desired.object, Some(&live)));
}

#[test]
fn out_of_band_edit_of_an_owned_field_is_applied_back() {
    let desired = child(
        ChildKind::Deployment,
        "d",
        json!({ "template": { "image": "w:1" } }),
    );
    let mut live = desired.object.clone();
    live["spec"]["template"]["image"] = json!("w:evil");
    assert!(needs_apply(&desired.object, Some(&live)));
}

#[test]
fn removing_a_field_from_the_desired_object_is_applied() {
    let before = child(
        ChildKind::Deployment,
        "d",
        json!({ "replicas": 3, "paused": false }),
    );
    let after = child(ChildKind::Deployment, "d", json!({ "paused": false }));
    // The live object still has replicas (it is a superset of `after`), but the hash differs.
    assert!(needs_apply(&after.object, Some(&before.object)));
}

#[test]
fn missing_live_object_is_applied() {
    let desired = child(ChildKind::Service, "s", json!({}));
    assert!(needs_apply(&desired.object, None));
}

#[test]
fn numbers_compare_by_value_not_representation() {
    assert!(is_subset(&json!({ "n": 1 }), &json!({ "n": 1.0 })));
    assert!(!is_subset(&json!({ "n": 1 }), &json!({ "n": 2 })));
}

#[test]
fn autoscaled_rollout_without_replicas_gets_a_seed_once() {
    let rollout = child(ChildKind::Rollout, "r", json!({ "strategy": {} }));
    let seed = replica_seed(&rollout, None, 2).expect("a new rollout is seeded");
    assert_eq!(seed["spec"]["replicas"], 2);
    let mut live = rollout.object.clone();
    live["spec"]["replicas"] = json!(5);
    assert_eq!(
        replica_seed(&rollout, Some(&live), 2),
        None,
        "the HPA's count is never touched"
    );
    let deployment = child(ChildKind::Deployment, "d", json!({}));
    assert_eq!(
        replica_seed(&deployment, None, 2),
        None,
        "the apiserver defaults Deployments"
    );
    let fixed = child(ChildKind::Rollout, "r", json!({ "replicas": 3 }));
    assert_eq!(
        replica_seed(&fixed, None, 2),
        None,
        "fixed replicas are applied normally"
    );
}

#[test]
fn undesired_children_are_orphans() {
    let desired = vec![child(ChildKind::Deployment, "p-a", json!({}))];
    let observed = BTreeMap::from([
        ((ChildKind::Deployment, "p-a".to_string()), json!({})),
        ((ChildKind::Deployment, "p-gone".to_string()), json!({})),
        (
            (ChildKind::HorizontalPodAutoscaler, "p-a".to_string()),
            json!({}),
        ),
    ]);
    let got = orphans(&desired, &observed, |_| true);
    assert_eq!(
        got,
        vec![
            (ChildKind::Deployment, "p-gone".to_string()),
            (ChildKind::HorizontalPodAutoscaler, "p-a".to_string())
        ]
    );
}

#[test]
fn replaced_workload_is_kept_until_its_replacement_is_ready() {
    let desired = vec![child(ChildKind::Rollout, "p-a", json!({}))];
    let observed = BTreeMap::from([((ChildKind::Deployment, "p-a".to_string()), json!({}))]);
    assert!(orphans(&desired, &observed, |_| false).is_empty());
    assert_eq!(
        orphans(&desired, &observed, |_| true),
        vec![(ChildKind::Deployment, "p-a".to_string())]
    );
}

/// The canary sample as validated on a cluster with Argo Rollouts: one stage `validate`, run by the
/// Rollout `canary-validate`, autoscaled from 2 replicas.
fn canary() -> ValidatedPipeline {
    let text = include_str!("../../../config/samples/orderpipe_v1alpha1_canary.yaml");
    let pipeline = serde_norway::from_str(text).expect("sample parses");
    let capabilities = crate::capabilities::Capabilities {
        rollouts: true,
        service_monitors: true,
    };
    let settings = crate::settings::OperatorSettings::default();
    crate::model::validate(&pipeline, &BTreeMap::new(), capabilities, &settings).0
}

/// What the builders would produce for the canary stage: an autoscaled Rollout (no replicas), its
/// autoscaler and its metrics Service.
fn canary_children() -> Vec<Child> {
    let object = |kind: &str, spec: Value| {
        let metadata = json!({ "name": "canary-validate" });
        json!({ "kind": kind, "metadata": metadata, "spec": spec })
    };
    vec![
        Child {
            kind: ChildKind::Rollout,
            name: "canary-validate".into(),
            object: object("Rollout", json!({ "strategy": { "canary": {} } })),
        },
        Child {
            kind: ChildKind::HorizontalPodAutoscaler,
            name: "canary-validate".into(),
            object: object("HorizontalPodAutoscaler", json!({ "minReplicas": 2 })),
        },
        Child {
            kind: ChildKind::Service,
            name: "canary-validate".into(),
            object: object("Service", json!({ "ports": [{ "port": 9090 }] })),
        },
    ]
}

/// The cluster once every planned apply and seed has been made.
fn converged(writes: &[ChildWrite]) -> BTreeMap<ChildKey, Value> {
    written(BTreeMap::new(), writes)
}

/// `live` once the planned writes have been made.
fn written(
    mut live: BTreeMap<ChildKey, Value>,
    writes: &[ChildWrite],
) -> BTreeMap<ChildKey, Value> {
    for write in writes {
        let key = (write.kind(), write.name().to_owned());
        match write {
            ChildWrite::Apply { child, .. } => {
                live.insert(key, child.object.clone());
            }
            ChildWrite::SeedReplicas { seed, .. } => {
                if let Some(object) = live.get_mut(&key) {
                    object["spec"]["replicas"] = seed["spec"]["replicas"].clone();
                }
            }
            ChildWrite::Delete { .. } => {
                live.remove(&key);
            }
        }
    }
    live
}

fn summary(writes: &[ChildWrite]) -> Vec<String> {
    writes
        .iter()
        .map(|write| match write {
            ChildWrite::Apply { created: true, .. } => format!("create {}", write.kind()),
            ChildWrite::Apply { created: false, .. } => format!("update {}", write.kind()),
            ChildWrite::SeedReplicas { seed, .. } => {
                format!("seed {} {}", write.kind(), seed["spec"]["replicas"])
            }
            ChildWrite::Delete { .. } => format!("delete {} {}", write.kind(), write.name()),
        })
        .collect()
}

#[test]
fn a_new_pipeline_creates_every_child_and_seeds_its_autoscaled_rollout_after_creating_it() {
    let writes = plan(canary_children(), &BTreeMap::new(), &canary());
    assert_eq!(
        summary(&writes),
        [
            "create Rollout",
            "seed Rollout 2",
            "create HorizontalPodAutoscaler",
            "create Service"
        ]
    );
    let changes: Vec<Change> = writes.iter().filter_map(ChildWrite::change).collect();
    assert_eq!(changes.len(), 3, "a seed is not news: {changes:?}");
    assert_eq!(changes[0].reason, "ChildCreated");
    assert_eq!(changes[0].note, "Created Rollout canary-validate");
}

#[test]
fn a_rollout_that_may_be_parked_is_seeded_with_one_replica() {
    // minReplicas 0: an HPA at 0 replicas never scales, so the seed (on creation and on
    // activation, when the parked count of 0 was dropped) is 1.
    let mut pipeline = canary();
    if let Scaling::Auto { min, .. } = &mut pipeline.stages[0].scaling {
        *min = 0;
    }
    let writes = plan(canary_children(), &BTreeMap::new(), &pipeline);
    assert!(summary(&writes).contains(&"seed Rollout 1".to_string()));
}

#[test]
fn every_applied_child_carries_its_desired_hash() {
    let writes = plan(canary_children(), &BTreeMap::new(), &canary());
    for write in &writes {
        if let ChildWrite::Apply { child, .. } = write {
            let hash = child
                .object
                .pointer("/metadata/annotations/orderpipe.dev~1desired-hash");
            assert!(hash.is_some(), "{child:?}");
        }
    }
}

#[test]
fn a_converged_pipeline_plans_no_write() {
    let live = converged(&plan(canary_children(), &BTreeMap::new(), &canary()));
    assert_eq!(plan(canary_children(), &live, &canary()), []);
}

#[test]
fn a_child_edited_out_of_band_is_updated_and_reported_as_such() {
    let mut live = converged(&plan(canary_children(), &BTreeMap::new(), &canary()));
    let service = (ChildKind::Service, "canary-validate".to_owned());
    live.get_mut(&service).expect("applied")["spec"]["ports"][0]["port"] = json!(9999);
    let writes = plan(canary_children(), &live, &canary());
    assert_eq!(summary(&writes), ["update Service"]);
    let change = writes[0].change().expect("an update is reported");
    assert_eq!(change.reason, "ChildUpdated");
    assert_eq!(change.note, "Updated Service canary-validate");
}

#[test]
fn a_service_with_a_virtual_ip_where_a_headless_one_is_desired_is_deleted_then_created() {
    let headless = || {
        let mut children = canary_children();
        children[2].object["spec"]["clusterIP"] = json!("None");
        children
    };
    let mut live = converged(&plan(canary_children(), &BTreeMap::new(), &canary()));
    let service = (ChildKind::Service, "canary-validate".to_owned());
    // As an older operator left it: the apiserver allocated a virtual IP.
    live.get_mut(&service).expect("applied")["spec"]["clusterIP"] = json!("10.96.0.12");
    let writes = plan(headless(), &live, &canary());
    assert_eq!(
        summary(&writes),
        ["delete Service canary-validate", "create Service"]
    );
    let reasons: Vec<&str> = writes
        .iter()
        .filter_map(ChildWrite::change)
        .map(|change| change.reason)
        .collect();
    assert_eq!(reasons, ["ChildDeleted", "ChildCreated"]);
    // Once replaced, the headless Service is left alone.
    let live = written(live, &writes);
    assert_eq!(plan(headless(), &live, &canary()), []);
}

#[test]
fn an_edit_that_leaves_immutable_fields_alone_is_an_update_in_place() {
    let mut live = converged(&plan(canary_children(), &BTreeMap::new(), &canary()));
    let service = (ChildKind::Service, "canary-validate".to_owned());
    // A virtual IP the desired object does not name is the apiserver's to keep.
    live.get_mut(&service).expect("applied")["spec"]["clusterIP"] = json!("10.96.0.12");
    live.get_mut(&service).expect("applied")["spec"]["ports"][0]["port"] = json!(9999);
    assert_eq!(
        summary(&plan(canary_children(), &live, &canary())),
        ["update Service"]
    );
}

#[test]
fn the_autoscaler_keeps_the_replica_count_once_the_rollout_has_one() {
    let mut live = converged(&plan(canary_children(), &BTreeMap::new(), &canary()));
    let rollout = (ChildKind::Rollout, "canary-validate".to_owned());
    live.get_mut(&rollout).expect("applied")["spec"]["replicas"] = json!(7);
    assert_eq!(plan(canary_children(), &live, &canary()), []);
}

#[test]
fn children_that_left_the_spec_are_deleted_after_every_apply() {
    let mut live = BTreeMap::new();
    let gone = (ChildKind::ServiceMonitor, "canary-old".to_owned());
    live.insert(gone, json!({ "kind": "ServiceMonitor" }));
    let writes = plan(canary_children(), &live, &canary());
    assert_eq!(
        summary(&writes).last().map(String::as_str),
        Some("delete ServiceMonitor canary-old")
    );
    let change = writes
        .last()
        .and_then(ChildWrite::change)
        .expect("reported");
    assert_eq!(
        (change.reason, change.note.as_str()),
        ("ChildDeleted", "Deleted ServiceMonitor canary-old")
    );
}

#[test]
fn a_deployment_replaced_by_a_rollout_is_deleted_once_the_rollout_is_ready() {
    let mut live = converged(&plan(canary_children(), &BTreeMap::new(), &canary()));
    let deployment = (ChildKind::Deployment, "canary-validate".to_owned());
    live.insert(deployment, json!({ "kind": "Deployment" }));
    assert_eq!(
        plan(canary_children(), &live, &canary()),
        [],
        "the Rollout has no ready replica yet"
    );

    let rollout = (ChildKind::Rollout, "canary-validate".to_owned());
    live.get_mut(&rollout).expect("applied")["status"] =
        json!({ "phase": "Healthy", "readyReplicas": 2, "updatedReplicas": 2 });
    assert_eq!(
        summary(&plan(canary_children(), &live, &canary())),
        ["delete Deployment canary-validate"]
    );
}

#[test]
fn the_status_sees_each_stage_through_the_workload_kind_it_runs_as_now() {
    let mut live = converged(&plan(canary_children(), &BTreeMap::new(), &canary()));
    let old = (ChildKind::Deployment, "canary-validate".to_owned());
    live.insert(old, json!({ "kind": "Deployment" }));
    let workloads = live_workloads(&canary(), &live);
    assert_eq!(workloads.keys().collect::<Vec<_>>(), ["validate"]);
    assert_eq!(workloads["validate"]["kind"], "Rollout");
}
