//! The OrderPipeline CRD on a real kube-apiserver: every sample is accepted, and invalid objects are
//! rejected at admission with a message naming the offending field. The same rules are unit-tested
//! client-side in `api/tests/cel_rules.rs`; these tests prove the apiserver enforces them (CEL cost
//! budget, structural schema, list-map keys, pruning of unknown fields). Needs `make test-e2e`.

use std::path::Path;

use anyhow::Context;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use orderpipe_stack::{SharedStack, TestNamespace};
use serde_json::{Value, json};

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("orderpipe.dev", "v1alpha1", "OrderPipeline"),
        "orderpipelines",
    )
}

fn api(ns: &TestNamespace) -> Api<DynamicObject> {
    Api::namespaced_with(ns.client().clone(), ns.name(), &resource())
}

/// A valid pipeline, as JSON so each test can break it in ways the Rust types cannot express.
fn minimal(name: &str) -> Value {
    serde_json::to_value(orderpipe_api::OrderPipeline::test(name)).expect("fixture serializes")
}

/// Server-side apply with strict field validation, as `kubectl apply --server-side` does.
fn strict_apply() -> PatchParams {
    PatchParams::apply("e2e-user").force().validation_strict()
}

/// Creates the object (as `kubectl create` or a client-side `kubectl apply` does) and returns the
/// apiserver's rejection message, or fails the test when it was accepted.
async fn rejection(api: &Api<DynamicObject>, object: Value) -> anyhow::Result<String> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let object: DynamicObject = serde_json::from_value(object)?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => anyhow::bail!("{name} was accepted but must be rejected"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(
                status.code, 422,
                "rejection must be a validation error: {status:?}"
            );
            Ok(status.message)
        }
        Err(other) => Err(other).context("creating the object"),
    }
}

#[track_caller]
fn assert_names(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "expected {needle:?} in the rejection: {message}"
        );
    }
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn every_sample_is_accepted() -> anyhow::Result<()> {
    let ns = SharedStack::get()?.namespace("admit").await?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut accepted = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("orderpipe_"))
        {
            continue;
        }
        let object: Value = serde_norway::from_str(&std::fs::read_to_string(&path)?)?;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api(&ns)
            .patch(&name, &strict_apply(), &Patch::Apply(&object))
            .await
            .with_context(|| format!("{} must be accepted", path.display()))?;
        accepted += 1;
    }
    assert!(
        accepted >= 3,
        "expected the checkout, minimal and canary samples, found {accepted}"
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn invalid_pipelines_are_rejected_naming_the_field() -> anyhow::Result<()> {
    let ns = SharedStack::get()?.namespace("reject").await?;
    let api = api(&ns);

    // A stage reading an undeclared topic.
    let mut p = minimal("undeclared");
    p["spec"]["stages"][0]["input"] = json!("orders.typo");
    assert_names(
        &rejection(&api, p).await?,
        &[
            "spec.stages",
            "input must name a topic declared in spec.topics",
        ],
    );

    // An illegal topic name (pattern), and the forbidden names "." and "..".
    let mut p = minimal("illegal-topic");
    p["spec"]["topics"][0]["name"] = json!("orders/eu");
    p["spec"]["stages"][0]["input"] = json!("orders/eu");
    assert_names(&rejection(&api, p).await?, &["spec.topics[0].name"]);
    let mut p = minimal("dot-topic");
    p["spec"]["topics"][3]["name"] = json!("..");
    p["spec"]["stages"][0]["deadLetter"] = json!("..");
    assert_names(
        &rejection(&api, p).await?,
        &["spec.topics[3].name", "must not be '.' or '..'"],
    );

    // Kafka's internal topic names, and link-local or cloud-metadata hosts for Kafka and the
    // webhook (tenancy rules of issue #15).
    let mut p = minimal("internal-topic");
    if let Some(topics) = p["spec"]["topics"].as_array_mut() {
        topics.push(json!({ "name": "__consumer_offsets", "partitions": 1 }));
    }
    assert_names(
        &rejection(&api, p).await?,
        &["spec.topics[4].name", "must not start with '__'"],
    );
    let mut p = minimal("metadata-bootstrap");
    p["spec"]["kafka"]["bootstrapServers"] = json!(["169.254.169.254:80"]);
    assert_names(
        &rejection(&api, p).await?,
        &[
            "spec.kafka.bootstrapServers",
            "must not name a link-local or cloud-metadata address",
        ],
    );
    let mut p = minimal("metadata-webhook");
    p["spec"]["stages"][0]["processor"] = json!("notify");
    p["spec"]["stages"][0]["outputs"] = json!({ "audit": "orders.validated" });
    p["spec"]["stages"][0]["notify"] =
        json!({ "webhook": { "url": "http://metadata.google.internal/computeMetadata/v1/" } });
    assert_names(
        &rejection(&api, p).await?,
        &[
            "spec.stages[0].notify.webhook.url",
            "must not name a link-local or cloud-metadata address",
        ],
    );

    // The intake gateway (issue #19): its topics must be a validate stage's input and a status
    // stage's changes, its objects' name must not collide with a stage's, min <= max.
    let with_intake = |name: &str| {
        serde_json::to_value(orderpipe_api::OrderPipeline::test(name).with_intake())
            .expect("fixture serializes")
    };
    let mut p = with_intake("intake-orders");
    p["spec"]["intake"]["ordersTopic"] = json!("orders.rejected");
    assert_names(
        &rejection(&api, p).await?,
        &[
            "spec.intake.ordersTopic",
            "must be the input topic of a validate stage",
        ],
    );
    let mut p = with_intake("intake-status");
    p["spec"]["intake"]["statusTopic"] = json!("orders.validated");
    assert_names(
        &rejection(&api, p).await?,
        &[
            "spec.intake.statusTopic",
            "'changes' output of a status stage",
        ],
    );
    let mut p = with_intake("intake-name");
    p["spec"]["stages"][1]["name"] = json!("intake");
    assert_names(&rejection(&api, p).await?, &["must not be 'intake'"]);
    let mut p = with_intake("intake-bounds");
    p["spec"]["intake"]["minReplicas"] = json!(5);
    p["spec"]["intake"]["maxReplicas"] = json!(3);
    assert_names(
        &rejection(&api, p).await?,
        &["spec.intake.minReplicas", "must not exceed maxReplicas"],
    );

    // Duplicate stage names (list-map key).
    let mut p = minimal("duplicate-stage");
    let stage = p["spec"]["stages"][0].clone();
    if let Some(stages) = p["spec"]["stages"].as_array_mut() {
        stages.push(stage);
    }
    assert_names(
        &rejection(&api, p).await?,
        &["spec.stages[1]", "Duplicate value"],
    );

    // minReplicas above maxReplicas.
    let mut p = minimal("min-over-max");
    p["spec"]["stages"][0]["autoscaling"] = json!({ "minReplicas": 5, "maxReplicas": 2 });
    assert_names(
        &rejection(&api, p).await?,
        &[
            "spec.stages[0].autoscaling.minReplicas",
            "must not exceed maxReplicas",
        ],
    );

    // A custom stage without an image.
    let mut p = minimal("custom-no-image");
    p["spec"]["stages"][0]["processor"] = json!("custom");
    assert_names(
        &rejection(&api, p).await?,
        &["spec.stages[0].image", "required when processor is custom"],
    );

    // A stage whose dead letters or outputs would come back as its input, and an image that is no
    // image reference.
    let mut p = minimal("dead-letter-loop");
    p["spec"]["stages"][0]["deadLetter"] = json!("orders");
    assert_names(
        &rejection(&api, p).await?,
        &[
            "spec.stages[0].deadLetter",
            "must not be the stage's input topic",
        ],
    );
    let mut p = minimal("output-loop");
    p["spec"]["stages"][0]["outputs"]["validated"] = json!("orders");
    assert_names(
        &rejection(&api, p).await?,
        &[
            "spec.stages[0].outputs",
            "must not name the stage's input topic",
        ],
    );
    let mut p = minimal("bad-image");
    p["spec"]["stages"][0]["image"] = json!("Registry/Worker:latest ");
    assert_names(
        &rejection(&api, p).await?,
        &["spec.stages[0].image", "must be an image reference"],
    );

    // A missing required field.
    let mut p = minimal("no-kafka");
    if let Some(spec) = p["spec"].as_object_mut() {
        spec.remove("kafka");
    }
    assert_names(
        &rejection(&api, p).await?,
        &["spec.kafka", "Required value"],
    );

    // An unknown field, with strict field validation (kubectl's default).
    let mut p = minimal("unknown-field");
    p["spec"]["stages"][0]["replicaCount"] = json!(3);
    let message = match api
        .patch("unknown-field", &strict_apply(), &Patch::Apply(&p))
        .await
    {
        Ok(_) => anyhow::bail!("an unknown field was accepted"),
        Err(kube::Error::Api(status)) => status.message,
        Err(other) => return Err(other).context("applying"),
    };
    assert_names(
        &message,
        &[
            ".spec.stages[name=\"validate\"].replicaCount",
            "field not declared in schema",
        ],
    );

    // Both replicas and autoscaling.
    let mut p = minimal("replicas-and-hpa");
    p["spec"]["stages"][0]["replicas"] = json!(2);
    p["spec"]["stages"][0]["autoscaling"] = json!({ "maxReplicas": 3 });
    assert_names(
        &rejection(&api, p).await?,
        &[
            "spec.stages[0].autoscaling",
            "either replicas or autoscaling",
        ],
    );

    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn partitions_may_grow_but_a_decrease_is_rejected_on_update() -> anyhow::Result<()> {
    let ns = SharedStack::get()?.namespace("shrink").await?;
    let api = api(&ns);
    let params = PatchParams::apply("e2e-test").force();
    let mut p = minimal("shrink");
    api.patch("shrink", &params, &Patch::Apply(&p))
        .await
        .context("creating")?;

    p["spec"]["topics"][0]["partitions"] = json!(6);
    api.patch("shrink", &params, &Patch::Apply(&p))
        .await
        .context("growing must be accepted")?;

    p["spec"]["topics"][0]["partitions"] = json!(2);
    let message = match api.patch("shrink", &params, &Patch::Apply(&p)).await {
        Ok(_) => anyhow::bail!("a partition decrease was accepted"),
        Err(kube::Error::Api(status)) => status.message,
        Err(other) => return Err(other).context("patching"),
    };
    assert_names(&message, &["spec.topics[0].partitions", "may only grow"]);
    ns.cleanup().await?;
    Ok(())
}
