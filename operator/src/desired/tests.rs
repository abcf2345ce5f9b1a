//! Tests of the desired children: snapshots of the samples, and one test per invariant.
//!
//! Snapshots live in `snapshots/` as the multi-document YAML the operator would apply. After an
//! intended change, regenerate them with `UPDATE_SNAPSHOTS=1 cargo test -p orderpipe-operator
//! desired` and review the diff like code.

use std::collections::BTreeMap;
use std::path::PathBuf;

use orderpipe_api::OrderPipeline;
use orderpipe_api::contract::{self, metrics};
use orderpipe_api::v1alpha1::{
    AutoscalingSpec, CanaryAnalysis, KafkaTls, ScalingBehavior, ScalingRules, SecretName,
};
use serde_json::{Value, json};

use super::*;
use crate::children::{selector_labels, stage_labels};
use crate::model::validate;

const UID: &str = "0b7e3c1a-5d2f-4c8e-9a61-3f0d2c4b5e6f";
const CHECKOUT: &str = include_str!("../../../config/samples/orderpipe_v1alpha1_checkout.yaml");
const CANARY: &str = include_str!("../../../config/samples/orderpipe_v1alpha1_canary.yaml");

const ALL_CRDS: Capabilities = Capabilities {
    rollouts: true,
    service_monitors: true,
};
const NO_CRDS: Capabilities = Capabilities {
    rollouts: false,
    service_monitors: false,
};

fn sample(yaml: &str) -> OrderPipeline {
    let mut pipeline: OrderPipeline = serde_norway::from_str(yaml).expect("sample parses");
    pipeline.metadata.namespace = Some("shop".into());
    pipeline.metadata.uid = Some(UID.into());
    pipeline
}

fn settings() -> OperatorSettings {
    OperatorSettings {
        worker_image: "docker.io/orderpipe/orderpipe-worker:0.1.0".into(),
        prometheus_url: "http://prometheus-operated.monitoring.svc:9090".into(),
        ..OperatorSettings::default()
    }
}

/// Kafka has every topic with the declared partitions.
fn declared_partitions(pipeline: &OrderPipeline) -> BTreeMap<String, i32> {
    pipeline
        .spec
        .topics
        .iter()
        .map(|t| (t.name.clone(), t.partitions))
        .collect()
}

fn render_with(
    pipeline: &OrderPipeline,
    partitions: &BTreeMap<String, i32>,
    capabilities: Capabilities,
) -> Vec<Child> {
    let (validated, _) = validate(pipeline, partitions, capabilities, &settings());
    desired_children(pipeline, &validated, capabilities, &settings()).expect("children build")
}

fn render(pipeline: &OrderPipeline, capabilities: Capabilities) -> Vec<Child> {
    render_with(pipeline, &declared_partitions(pipeline), capabilities)
}

fn object<'a>(children: &'a [Child], kind: ChildKind, name: &str) -> &'a Value {
    &children
        .iter()
        .find(|c| c.kind == kind && c.name == name)
        .unwrap_or_else(|| panic!("no {kind:?} {name} in {children:#?}"))
        .object
}

fn workloads(children: &[Child]) -> impl Iterator<Item = &Child> {
    children
        .iter()
        .filter(|c| matches!(c.kind, ChildKind::Deployment | ChildKind::Rollout))
}

fn env_var<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env list")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no env var {name}"))
}

/// Compares the children with `snapshots/<name>.yaml`, or rewrites it when UPDATE_SNAPSHOTS is set.
fn assert_snapshot(name: &str, children: &[Child]) {
    let rendered: String = children
        .iter()
        .map(|c| format!("---\n{}", serde_norway::to_string(&c.object).expect("yaml")))
        .collect();
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "src/desired/snapshots", name]
        .iter()
        .collect::<PathBuf>()
        .with_extension("yaml");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &rendered).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err}; create it with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    if expected != rendered {
        let line = expected
            .lines()
            .zip(rendered.lines())
            .take_while(|(want, got)| want == got)
            .count();
        panic!(
            "{} differs at line {}:\n  expected: {}\n  rendered: {}\n\
             rerun with UPDATE_SNAPSHOTS=1 and review the diff if the change is intended",
            path.display(),
            line + 1,
            expected.lines().nth(line).unwrap_or("<end of file>"),
            rendered.lines().nth(line).unwrap_or("<end of output>"),
        );
    }
}

#[test]
fn checkout_children_match_the_snapshot() {
    assert_snapshot("checkout", &render(&sample(CHECKOUT), ALL_CRDS));
}

#[test]
fn canary_children_match_the_snapshot() {
    assert_snapshot("canary", &render(&sample(CANARY), ALL_CRDS));
}

#[test]
fn autoscaled_workload_never_carries_replicas() {
    let checkout = render(&sample(CHECKOUT), ALL_CRDS);
    let canary = render(&sample(CANARY), ALL_CRDS);
    let autoscaled = [
        object(&checkout, ChildKind::Deployment, "checkout-validate"),
        object(&canary, ChildKind::Rollout, "canary-validate"),
    ];
    for workload in autoscaled {
        let spec = workload["spec"].as_object().expect("spec");
        assert!(
            !spec.contains_key("replicas"),
            "spec.replicas must be absent (not null) so the HPA owns it: {spec:?}"
        );
    }
    // The fixed stages keep their declared counts.
    let status = object(&checkout, ChildKind::Deployment, "checkout-status");
    assert_eq!(status["spec"]["replicas"], 2);
    let notify = object(&checkout, ChildKind::Deployment, "checkout-notify");
    assert_eq!(notify["spec"]["replicas"], 1);
}

#[test]
fn hpa_max_never_exceeds_input_partitions() {
    let pipeline = sample(CHECKOUT);
    // The validate stage declares maxReplicas 6 on input `orders`.
    for partitions in 1..=8 {
        let mut observed = declared_partitions(&pipeline);
        observed.insert("orders".into(), partitions);
        let children = render_with(&pipeline, &observed, NO_CRDS);
        let hpa = object(
            &children,
            ChildKind::HorizontalPodAutoscaler,
            "checkout-validate",
        );
        assert_eq!(hpa["spec"]["maxReplicas"], partitions.min(6), "{hpa}");
        assert!(hpa["spec"]["minReplicas"].as_i64() <= hpa["spec"]["maxReplicas"].as_i64());
    }
}

#[test]
fn hpa_scales_on_cpu_and_lag_of_its_own_stage() {
    let children = render(&sample(CHECKOUT), NO_CRDS);
    let spec = &object(
        &children,
        ChildKind::HorizontalPodAutoscaler,
        "checkout-validate",
    )["spec"];
    assert_eq!(
        spec["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout-validate"})
    );
    assert_eq!(
        spec["metrics"],
        json!([
            {"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70}}},
            {"type": "External", "external": {
                "metric": {"name": metrics::CONSUMER_LAG,
                    "selector": {"matchLabels": {"pipeline": "checkout", "stage": "validate"}}},
                "target": {"type": "AverageValue", "averageValue": "1000"}}},
        ])
    );
    assert_eq!(
        spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
    // Only the autoscaled stage has an HPA (besides the intake gateway).
    assert_eq!(stage_autoscalers(&children), ["checkout-validate"]);
}

/// The names of the stages' HPAs: every HPA but the intake gateway's.
fn stage_autoscalers(children: &[Child]) -> Vec<&str> {
    children
        .iter()
        .filter(|c| c.kind == ChildKind::HorizontalPodAutoscaler && !c.name.ends_with("-intake"))
        .map(|c| c.name.as_str())
        .collect()
}

/// The checkout sample with its validate stage autoscaled by `autoscaling` instead.
fn checkout_autoscaled(autoscaling: AutoscalingSpec) -> OrderPipeline {
    let mut pipeline = sample(CHECKOUT);
    pipeline.spec.stages[0].autoscaling = Some(autoscaling);
    pipeline
}

fn validate_hpa(pipeline: &OrderPipeline) -> Value {
    object(
        &render(pipeline, NO_CRDS),
        ChildKind::HorizontalPodAutoscaler,
        "checkout-validate",
    )
    .clone()
}

#[test]
fn hpa_behaviour_defaults_are_fast_up_and_slow_down() {
    let hpa = validate_hpa(&sample(CHECKOUT));
    assert_eq!(
        hpa["spec"]["behavior"],
        json!({
            "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 60},
                {"type": "Pods", "value": 4, "periodSeconds": 60}]},
            "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Max", "policies": [
                {"type": "Percent", "value": 50, "periodSeconds": 60}]},
        })
    );
}

#[test]
fn declared_behaviour_overrides_only_the_fields_it_sets() {
    let hpa = validate_hpa(&checkout_autoscaled(AutoscalingSpec {
        target_lag_per_replica: Some(500),
        behavior: Some(ScalingBehavior {
            scale_up: Some(ScalingRules {
                max_pods_per_period: Some(2),
                period_seconds: Some(15),
                ..ScalingRules::default()
            }),
            scale_down: Some(ScalingRules {
                stabilization_window_seconds: Some(60),
                ..ScalingRules::default()
            }),
        }),
        ..AutoscalingSpec::test(6)
    }));
    let behavior = &hpa["spec"]["behavior"];
    // A declared limit replaces both default limits: "2 pods" must not become "2 pods or 100 %".
    assert_eq!(
        behavior["scaleUp"],
        json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
            {"type": "Pods", "value": 2, "periodSeconds": 15}]})
    );
    assert_eq!(
        behavior["scaleDown"],
        json!({"stabilizationWindowSeconds": 60, "selectPolicy": "Max", "policies": [
            {"type": "Percent", "value": 50, "periodSeconds": 60}]})
    );
}

#[test]
fn a_lag_target_without_a_cpu_target_scales_on_lag_alone() {
    // An HPA that cannot read its CPU metric never scales down; CPU only when the user asks.
    let hpa = validate_hpa(&checkout_autoscaled(AutoscalingSpec {
        target_lag_per_replica: Some(500),
        ..AutoscalingSpec::test(6)
    }));
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert_eq!(metrics.len(), 1, "{metrics:?}");
    assert_eq!(metrics[0]["type"], "External");
}

#[test]
fn min_replicas_zero_gives_the_hpa_a_minimum_of_one_and_the_workload_no_replica_count() {
    let pipeline = checkout_autoscaled(AutoscalingSpec {
        min_replicas: 0,
        target_lag_per_replica: Some(500),
        ..AutoscalingSpec::test(6)
    });
    let children = render(&pipeline, NO_CRDS);
    let hpa = object(
        &children,
        ChildKind::HorizontalPodAutoscaler,
        "checkout-validate",
    );
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    let deployment = object(&children, ChildKind::Deployment, "checkout-validate");
    assert_eq!(deployment["spec"].get("replicas"), None);
}

#[test]
fn a_parked_stage_has_zero_replicas_and_no_hpa() {
    let pipeline = checkout_autoscaled(AutoscalingSpec {
        min_replicas: 0,
        target_lag_per_replica: Some(500),
        ..AutoscalingSpec::test(6)
    });
    let (mut validated, _) = validate(
        &pipeline,
        &declared_partitions(&pipeline),
        NO_CRDS,
        &settings(),
    );
    validated.park(|stage| stage == "validate");
    let children =
        desired_children(&pipeline, &validated, NO_CRDS, &settings()).expect("children build");
    assert_eq!(stage_autoscalers(&children), Vec::<&str>::new());
    let deployment = object(&children, ChildKind::Deployment, "checkout-validate");
    assert_eq!(deployment["spec"]["replicas"], 0);
}

#[test]
fn hpa_of_a_canary_stage_scales_the_rollout() {
    let children = render(&sample(CANARY), ALL_CRDS);
    let hpa = object(
        &children,
        ChildKind::HorizontalPodAutoscaler,
        "canary-validate",
    );
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "canary-validate"})
    );
}

#[test]
fn pod_security_is_restricted() {
    let mut children = render(&sample(CHECKOUT), ALL_CRDS);
    children.extend(render(&sample(CANARY), ALL_CRDS));
    for workload in workloads(&children) {
        let pod = &workload.object["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"],
            json!({
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            }),
            "{}",
            workload.name
        );
        assert_eq!(pod["automountServiceAccountToken"], false);
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1);
        assert_eq!(
            containers[0]["securityContext"],
            json!({
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            }),
            "{}",
            workload.name
        );
        // The read-only root needs a writable /tmp.
        assert!(
            containers[0]["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .any(|m| m["mountPath"] == "/tmp")
        );
    }
}

#[test]
fn secrets_are_referenced_never_inlined() {
    let mut pipeline = sample(CANARY);
    // Exercise every Secret reference the spec has: CA, client certificate, SASL credentials.
    pipeline.spec.kafka.tls = Some(KafkaTls {
        client_cert_secret_name: Some(SecretName("orderpipe-client-tls".into())),
        ..pipeline.spec.kafka.tls.clone().expect("sample uses TLS")
    });
    let children = render(&pipeline, ALL_CRDS);
    let text = serde_json::to_string(&children.iter().map(|c| &c.object).collect::<Vec<_>>())
        .expect("json");
    assert!(!text.contains("\"kind\":\"Secret\""), "no Secret objects");
    assert!(!text.contains("\"stringData\""), "no Secret data");

    let rollout = object(&children, ChildKind::Rollout, "canary-validate");
    for (var, key) in [
        (contract::env::SASL_USERNAME, "username"),
        (contract::env::SASL_PASSWORD, "password"),
    ] {
        let var = env_var(rollout, var);
        assert_eq!(var.get("value"), None, "{var}");
        assert_eq!(
            var["valueFrom"]["secretKeyRef"],
            json!({"name": "orderpipe-kafka-user", "key": key, "optional": false})
        );
    }

    let pod = &rollout["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            {"name": "kafka-ca", "secret": {"secretName": "kafka-ca", "defaultMode": 0o440,
                "optional": false, "items": [{"key": "ca.crt", "path": contract::TLS_CA_FILE}]}},
            {"name": "kafka-client-tls", "secret": {"secretName": "orderpipe-client-tls",
                "defaultMode": 0o440, "optional": false,
                "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}},
        ])
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"],
        json!([
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "kafka-ca", "mountPath": contract::TLS_MOUNT_DIR, "readOnly": true},
            {"name": "kafka-client-tls", "mountPath": contract::TLS_CLIENT_MOUNT_DIR, "readOnly": true},
        ])
    );
    // The env points the worker at exactly those mounts.
    assert_eq!(
        env_var(rollout, contract::env::TLS_CA_FILE)["value"],
        format!("{}/{}", contract::TLS_MOUNT_DIR, contract::TLS_CA_FILE)
    );
}

#[test]
fn rollout_and_deployment_share_the_pod_template() {
    let pipeline = sample(CANARY);
    let as_rollout = render(&pipeline, ALL_CRDS);
    let as_deployment = render(&pipeline, NO_CRDS);
    let rollout = object(&as_rollout, ChildKind::Rollout, "canary-validate");
    let deployment = object(&as_deployment, ChildKind::Deployment, "canary-validate");
    for field in [
        "template",
        "selector",
        "revisionHistoryLimit",
        "progressDeadlineSeconds",
        "minReadySeconds",
    ] {
        assert_eq!(rollout["spec"][field], deployment["spec"][field], "{field}");
    }
    assert!(!rollout["spec"]["template"]["spec"].is_null());
    // Both replace one pod at a time and never run a consumer beyond the count.
    let canary = &rollout["spec"]["strategy"]["canary"];
    let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(
        (&canary["maxSurge"], &canary["maxUnavailable"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(
        (&rolling["maxSurge"], &rolling["maxUnavailable"]),
        (&json!(0), &json!(1))
    );
}

#[test]
fn pod_template_speaks_the_worker_contract() {
    let children = render(&sample(CHECKOUT), NO_CRDS);
    let deployment = object(&children, ChildKind::Deployment, "checkout-notify");
    let template = &deployment["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    assert_eq!(container["name"], "worker");
    assert_eq!(container["image"], settings().worker_image);
    assert_eq!(container["args"], json!(contract::WORKER_ARGS));
    assert_eq!(
        container["ports"],
        json!([{"name": "metrics", "containerPort": contract::METRICS_PORT, "protocol": "TCP"}])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(env_var(deployment, contract::env::STAGE)["value"], "notify");
    assert_eq!(
        template["spec"]["terminationGracePeriodSeconds"],
        contract::defaults::SHUTDOWN_GRACE.as_secs() + 5
    );
    assert_eq!(
        template["metadata"]["labels"],
        json!(stage_labels("checkout", "notify", "notify"))
    );
    assert_eq!(
        template["metadata"]["annotations"]["prometheus.io/port"],
        contract::METRICS_PORT.to_string()
    );
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!(selector_labels("checkout", "notify"))
    );
    // No declared resources: the modest default.
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
}

#[test]
fn no_rollout_or_servicemonitor_without_their_crds() {
    for pipeline in [sample(CHECKOUT), sample(CANARY)] {
        let children = render(&pipeline, NO_CRDS);
        assert!(
            children.iter().all(|c| c.kind.is_served(NO_CRDS)),
            "{:?}",
            children.iter().map(|c| c.kind).collect::<Vec<_>>()
        );
    }
    let with_crds = render(&sample(CANARY), ALL_CRDS);
    for kind in [
        ChildKind::Rollout,
        ChildKind::AnalysisTemplate,
        ChildKind::ServiceMonitor,
    ] {
        assert!(with_crds.iter().any(|c| c.kind == kind), "{kind:?}");
    }
}

#[test]
fn a_rollout_the_cluster_does_not_serve_is_an_error_not_a_missing_workload() {
    let pipeline = sample(CANARY);
    let (validated, _) = validate(
        &pipeline,
        &declared_partitions(&pipeline),
        ALL_CRDS,
        &settings(),
    );
    let err = desired_children(&pipeline, &validated, NO_CRDS, &settings())
        .expect_err("stale capabilities");
    assert_eq!(
        err.to_string(),
        "stage validate: Rollout is not served by the cluster"
    );
}

#[test]
fn every_child_has_owner_reference_and_labels() {
    let mut children = render(&sample(CHECKOUT), ALL_CRDS);
    children.extend(render(&sample(CANARY), ALL_CRDS));
    for child in &children {
        let object = &child.object;
        let (pipeline, stage) = child.name.split_once('-').expect("<pipeline>-<stage>");
        let meta = &object["metadata"];
        assert!(object["apiVersion"].is_string(), "{}", child.name);
        assert_eq!(object["kind"], format!("{:?}", child.kind));
        assert_eq!(
            object["apiVersion"],
            child.kind.api_resource().api_version,
            "{:?}",
            child.kind
        );
        assert_eq!(meta["name"], child.name);
        assert_eq!(meta["namespace"], "shop");
        let processor = meta["labels"]["app.kubernetes.io/component"]
            .as_str()
            .expect("component label");
        assert_eq!(
            meta["labels"],
            json!(stage_labels(pipeline, stage, processor))
        );
        assert_eq!(
            meta["ownerReferences"],
            json!([{
                "apiVersion": "orderpipe.dev/v1alpha1",
                "kind": "OrderPipeline",
                "name": pipeline,
                "uid": UID,
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
            "{:?} {}",
            child.kind,
            child.name
        );
    }
}

#[test]
fn a_pipeline_without_uid_cannot_own_children() {
    let mut pipeline = sample(CHECKOUT);
    pipeline.metadata.uid = None;
    let (validated, _) = validate(&pipeline, &BTreeMap::new(), NO_CRDS, &settings());
    let err = desired_children(&pipeline, &validated, NO_CRDS, &settings())
        .expect_err("no owner reference");
    assert!(matches!(err, DesiredError::MissingUid { ref name } if name == "checkout"));
}

#[test]
fn paused_pipeline_has_no_hpa_and_zero_replicas() {
    for yaml in [CHECKOUT, CANARY] {
        let mut pipeline = sample(yaml);
        pipeline.spec.paused = true;
        let children = render(&pipeline, ALL_CRDS);
        assert_eq!(stage_autoscalers(&children), Vec::<&str>::new());
        let mut count = 0;
        for workload in workloads(&children).filter(|w| !w.name.ends_with("-intake")) {
            assert_eq!(workload.object["spec"]["replicas"], 0, "{}", workload.name);
            count += 1;
        }
        assert_eq!(count, pipeline.spec.stages.len());
        // Metrics and the disruption budget stay while paused.
        assert!(children.iter().any(|c| c.kind == ChildKind::Service));
        assert!(
            children
                .iter()
                .any(|c| c.kind == ChildKind::PodDisruptionBudget)
        );
    }
}

#[test]
fn analysis_template_compares_the_canary_pods_error_and_dead_letter_share_with_stable() {
    let children = render(&sample(CANARY), ALL_CRDS);
    let template = object(&children, ChildKind::AnalysisTemplate, "canary-validate");
    let rollout = object(&children, ChildKind::Rollout, "canary-validate");
    // Argo fills in the pod hashes of both versions when it starts the AnalysisRun.
    assert_eq!(
        rollout["spec"]["strategy"]["canary"]["analysis"],
        json!({
            "templates": [{"templateName": "canary-validate"}],
            "startingStep": 1,
            "args": [
                {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
                {"name": "stable-hash", "valueFrom": {"podTemplateHashValue": "Stable"}},
            ],
        })
    );
    assert_eq!(
        template["spec"]["args"],
        json!([{"name": "canary-hash"}, {"name": "stable-hash"}])
    );

    let version_share = |hash_arg: &str, outcomes: &str| {
        let pods = format!(
            r#"namespace="shop",pipeline="canary",stage="validate",rollouts_pod_template_hash="{{{{args.{hash_arg}}}}}""#
        );
        format!(
            "(clamp_max(sum(rate({}{{{pods},outcome=~\"{outcomes}\"}}[2m])) / \
             (sum(rate({}{{{pods}}}[2m])) > 0), 1) or vector(0))",
            metrics::RECORDS_PROCESSED,
            metrics::RECORDS_CONSUMED,
        )
    };
    let share = |outcomes: &str| {
        format!(
            "{} - {}",
            version_share("canary-hash", outcomes),
            version_share("stable-hash", outcomes)
        )
    };
    assert!(
        share("dead_lettered").contains(r#"rollouts_pod_template_hash="{{args.canary-hash}}""#),
        "Argo's placeholder syntax"
    );
    let prometheus = |query: String| json!({"prometheus": {"address": settings().prometheus_url, "query": query}});
    // The sample allows 1% errors and 2% dead letters, measured every minute, one failure aborts.
    assert_eq!(
        template["spec"]["metrics"],
        json!([
            {"name": "error-share", "interval": "1m", "failureLimit": 1,
             "successCondition": "result[0] <= 0.01",
             "provider": prometheus(share("error|dead_lettered"))},
            {"name": "dead-letter-share", "interval": "1m", "failureLimit": 1,
             "successCondition": "result[0] <= 0.02",
             "provider": prometheus(share("dead_lettered"))},
        ])
    );
    // The outcomes queried are ones the worker contract defines.
    for outcome in [metrics::outcome::ERROR, metrics::outcome::DEAD_LETTERED] {
        assert!(metrics::outcome::ALL.contains(&outcome));
    }
}

#[test]
fn analysis_uses_the_stage_prometheus_when_it_names_one() {
    let mut pipeline = sample(CANARY);
    let analysis = pipeline.spec.stages[0]
        .rollout
        .as_mut()
        .and_then(|r| r.canary.as_mut())
        .and_then(|c| c.analysis.as_mut())
        .expect("sample analysis");
    analysis.prometheus_url = Some("https://thanos.example:9091".into());
    let children = render(&pipeline, ALL_CRDS);
    let template = object(&children, ChildKind::AnalysisTemplate, "canary-validate");
    for metric in template["spec"]["metrics"].as_array().expect("metrics") {
        assert_eq!(
            metric["provider"]["prometheus"]["address"],
            "https://thanos.example:9091"
        );
    }
}

#[test]
fn default_analysis_matches_the_crd_defaults() {
    let from_crd: CanaryAnalysis = serde_json::from_value(json!({})).expect("defaults");
    assert_eq!(analysis::default_analysis(), from_crd);
}

#[test]
fn canary_without_steps_gets_the_default_plan() {
    let mut pipeline = sample(CANARY);
    if let Some(canary) = pipeline.spec.stages[0]
        .rollout
        .as_mut()
        .and_then(|r| r.canary.as_mut())
    {
        canary.steps.clear();
        canary.analysis = None;
    }
    let children = render(&pipeline, ALL_CRDS);
    let rollout = object(&children, ChildKind::Rollout, "canary-validate");
    assert_eq!(
        rollout["spec"]["strategy"]["canary"]["steps"],
        json!([
            {"setWeight": 25}, {"pause": {"duration": "1m"}},
            {"setWeight": 50}, {"pause": {"duration": "1m"}},
        ])
    );
    let template = object(&children, ChildKind::AnalysisTemplate, "canary-validate");
    assert_eq!(
        template["spec"]["metrics"][1]["successCondition"],
        "result[0] <= 0.01"
    );
}

#[test]
fn an_unparsable_duration_names_the_stage_and_field() {
    let mut pipeline = sample(CANARY);
    if let Some(canary) = pipeline.spec.stages[0]
        .rollout
        .as_mut()
        .and_then(|r| r.canary.as_mut())
    {
        canary.steps[1].pause = Some(orderpipe_api::v1alpha1::CanaryPause {
            duration: Some(orderpipe_api::v1alpha1::Duration(
                "99999999999999999999h".into(),
            )),
        });
    }
    let (validated, _) = validate(
        &pipeline,
        &declared_partitions(&pipeline),
        ALL_CRDS,
        &settings(),
    );
    let err = desired_children(&pipeline, &validated, ALL_CRDS, &settings())
        .expect_err("overflowing duration");
    assert!(
        err.to_string()
            .starts_with("stage validate: rollout.canary.steps[1].pause.duration is invalid"),
        "{err}"
    );
}

#[test]
fn service_and_monitor_expose_the_metrics_port_of_their_stage_only_without_a_virtual_ip() {
    let children = render(&sample(CHECKOUT), ALL_CRDS);
    let service = object(&children, ChildKind::Service, "checkout-status");
    assert_eq!(
        service["spec"],
        json!({
            "type": "ClusterIP",
            "clusterIP": "None",
            "selector": selector_labels("checkout", "status"),
            "ports": [{"name": "metrics", "port": contract::METRICS_PORT,
                       "targetPort": "metrics", "protocol": "TCP"}],
        })
    );
    let monitor = object(&children, ChildKind::ServiceMonitor, "checkout-status");
    assert_eq!(
        monitor["spec"],
        json!({
            "selector": {"matchLabels": selector_labels("checkout", "status")},
            "podTargetLabels": ["rollouts-pod-template-hash"],
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        })
    );
}

#[test]
fn every_stage_gets_a_pdb_allowing_one_disruption() {
    let children = render(&sample(CHECKOUT), NO_CRDS);
    for name in ["checkout-validate", "checkout-status", "checkout-notify"] {
        let pdb = object(&children, ChildKind::PodDisruptionBudget, name);
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    }
}

#[test]
fn rendering_is_deterministic() {
    let pipeline = sample(CANARY);
    assert_eq!(render(&pipeline, ALL_CRDS), render(&pipeline, ALL_CRDS));
}

#[test]
fn worker_placement_applies_to_every_worker_pod_and_is_absent_by_default() {
    let pipeline = sample(CHECKOUT);
    let partitions = declared_partitions(&pipeline);
    let mut placed = settings();
    placed.worker_placement.node_selector =
        BTreeMap::from([("pool".to_string(), "kafka".to_string())]);
    placed.worker_placement.tolerations = vec![k8s_openapi::api::core::v1::Toleration {
        key: Some("dedicated".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    let (validated, _) = validate(&pipeline, &partitions, ALL_CRDS, &placed);
    let children =
        desired_children(&pipeline, &validated, ALL_CRDS, &placed).expect("children build");
    for workload in workloads(&children) {
        let pod = &workload.object["spec"]["template"]["spec"];
        assert_eq!(
            pod["nodeSelector"],
            json!({ "pool": "kafka" }),
            "{}",
            workload.name
        );
        assert_eq!(
            pod["tolerations"][0]["key"], "dedicated",
            "{}",
            workload.name
        );
    }
    for workload in workloads(&render(&pipeline, ALL_CRDS)) {
        let pod = &workload.object["spec"]["template"]["spec"];
        assert!(pod.get("nodeSelector").is_none() && pod.get("tolerations").is_none());
    }
}

#[test]
fn the_intake_gateway_is_a_deployment_with_autoscaler_service_monitor_and_budget() {
    let mut pipeline = sample(CHECKOUT);
    // A paused pipeline stops its stages, not its gateway: orders wait in Kafka.
    pipeline.spec.paused = true;
    let children = render(&pipeline, ALL_CRDS);
    let gateway: Vec<ChildKind> = children
        .iter()
        .filter(|c| c.name == "checkout-intake")
        .map(|c| c.kind)
        .collect();
    assert_eq!(
        gateway,
        [
            ChildKind::Deployment,
            ChildKind::HorizontalPodAutoscaler,
            ChildKind::Service,
            ChildKind::ServiceMonitor,
            ChildKind::PodDisruptionBudget,
        ]
    );

    let deployment = object(&children, ChildKind::Deployment, "checkout-intake");
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the autoscaler owns the count"
    );
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"],
        json!({ "maxSurge": 1, "maxUnavailable": 0 })
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], settings().worker_image);
    assert_eq!(container["args"], json!(contract::INTAKE_ARGS));
    assert_eq!(
        container["ports"],
        json!([
            { "name": "http", "containerPort": 8080, "protocol": "TCP" },
            { "name": "metrics", "containerPort": 9090, "protocol": "TCP" },
        ])
    );
    assert_eq!(
        env_var(deployment, contract::env::INTAKE_ORDERS_TOPIC)["value"],
        "orders"
    );
    assert_eq!(
        env_var(deployment, contract::env::INTAKE_STATUS_TOPIC)["value"],
        "order-status"
    );
    assert_eq!(
        env_var(deployment, contract::env::INTAKE_TOKENS)["valueFrom"],
        json!({ "secretKeyRef": { "name": "checkout-intake-tokens", "key": "tokens", "optional": false } })
    );
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["orderpipe.dev/stage"],
        "intake"
    );

    let hpa = object(
        &children,
        ChildKind::HorizontalPodAutoscaler,
        "checkout-intake",
    );
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 6);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "checkout-intake");
    assert_eq!(
        hpa["spec"]["metrics"],
        json!([{ "type": "Resource", "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 70 } } }])
    );

    let service = object(&children, ChildKind::Service, "checkout-intake");
    let ports: Vec<(&str, i64)> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name"),
                p["port"].as_i64().expect("port"),
            )
        })
        .collect();
    assert_eq!(ports, [("http", 8080), ("metrics", 9090)]);
    // Clients call the gateway through its virtual IP, which the apiserver allocates.
    assert_eq!(service["spec"].get("clusterIP"), None);
    assert_eq!(
        service["spec"]["selector"],
        json!(selector_labels("checkout", "intake"))
    );
}

#[test]
fn a_pipeline_without_intake_has_no_gateway() {
    let mut pipeline = sample(CHECKOUT);
    pipeline.spec.intake = None;
    let children = render(&pipeline, ALL_CRDS);
    assert!(children.iter().all(|c| c.name != "checkout-intake"));
}
