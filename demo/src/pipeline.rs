//! The checkout sample (`config/samples/orderpipe_v1alpha1_checkout.yaml`) made runnable here:
//! topics prefixed (so a run on a shared stack collides with nothing) and deleted with the
//! pipeline, the local broker, the local webhook receiver without Secret-based auth, a fixed
//! replica count for the status stage (the one the demo scales), and validate's autoscaling on lag
//! alone with a quick scale-down (see [`LOCAL_SCALE_DOWN`]). Everything else stays as shipped, so
//! the demo exercises the sample a user would apply. The release scenarios then make a stage a
//! canary stage ([`with_canary`]) and release a new image to it ([`with_image`]). The intake
//! gateway runs [`INTAKE_REPLICAS`] replicas with a token of the run ([`intake_tokens_secret`]).

use serde_json::{Value, json};

use super::DemoError;

/// The sample, compiled in so the demo binary runs from any directory.
const SAMPLE: &str = include_str!("../../config/samples/orderpipe_v1alpha1_checkout.yaml");

/// The stages of the checkout pipeline, in flow order.
pub const STAGES: [&str; 3] = ["validate", "status", "notify"];

/// Validate's scale-down here: 15 s of lower lag, then any number of pods at once. The sample
/// keeps the production default (5 minutes, half the pods a minute), which would make a demo wait
/// minutes to show the stage shrinking back.
const LOCAL_SCALE_DOWN: &str =
    r#"{"stabilizationWindowSeconds": 15, "maxPercentPerPeriod": 100, "periodSeconds": 15}"#;

/// Replicas of a stage released by canary: one pod of each version at the 50% step.
pub const CANARY_REPLICAS: i32 = 2;

/// The canary of `make demo SCENARIO=bad-release|good-release`: half of the pods (and so about half
/// of the input's partitions) on the new version for 40 s, judged every 10 s; one failed
/// measurement aborts. Thresholds of 5 points: the demo's load dead-letters about 1 % (its garbage)
/// on either version, the faulty release everything.
const CANARY: &str = r#"{
    "strategy": "Canary",
    "canary": {
        "steps": [{ "setWeight": 50 }, { "pause": { "duration": "40s" } }],
        "analysis": { "interval": "10s", "failureLimit": 0, "maxErrorPercent": 5, "maxDeadLetterPercent": 5 }
    }
}"#;

/// The pipeline's Kafka topics, as named in this run.
#[derive(Debug, Clone)]
pub struct Topics {
    pub orders: String,
    pub validated: String,
    pub rejected: String,
    pub events: String,
    pub status: String,
    pub audit: String,
    pub dead_letter: String,
}

impl Topics {
    fn new(prefix: &str) -> Topics {
        let name = |topic: &str| format!("{prefix}{topic}");
        Topics {
            orders: name("orders"),
            validated: name("orders.validated"),
            rejected: name("orders.rejected"),
            events: name("order-events"),
            status: name("order-status"),
            audit: name("notifications.audit"),
            dead_letter: name("orders.dlq"),
        }
    }

    /// The input topic of `stage`.
    pub fn input_of(&self, stage: &str) -> Option<&str> {
        match stage {
            "validate" => Some(&self.orders),
            "status" => Some(&self.events),
            "notify" => Some(&self.status),
            _ => None,
        }
    }
}

/// The OrderPipeline manifest for this run and its topics.
pub fn checkout(
    namespace: &str,
    topic_prefix: &str,
    bootstrap: &str,
    webhook_url: &str,
) -> Result<(Value, Topics), DemoError> {
    let mut manifest: Value =
        serde_norway::from_str(SAMPLE).map_err(|e| DemoError::Sample(e.to_string()))?;
    manifest["metadata"]["namespace"] = json!(namespace);
    let spec = manifest
        .get_mut("spec")
        .ok_or_else(|| DemoError::Sample("no spec".into()))?;
    spec["kafka"]["bootstrapServers"] = json!([bootstrap]);
    let rename = |name: &mut Value| {
        if let Some(text) = name.as_str() {
            *name = json!(format!("{topic_prefix}{text}"));
        }
    };
    for topic in spec["topics"].as_array_mut().into_iter().flatten() {
        rename(&mut topic["name"]);
        // The run's topics go with its pipeline: a shared stack keeps no leftovers.
        topic["deletionPolicy"] = json!("Delete");
    }
    for stage in spec["stages"].as_array_mut().into_iter().flatten() {
        rename(&mut stage["input"]);
        rename(&mut stage["deadLetter"]);
        for output in stage["outputs"]
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            rename(output);
        }
        if stage["name"] == "status" {
            stage["replicas"] = json!(1);
        }
        if let Some(autoscaling) = stage.get_mut("autoscaling").and_then(Value::as_object_mut) {
            // The local stack serves no resource metrics (no metrics-server, no kubelet), and an
            // HPA that cannot read one of its metrics never scales down: lag is the only one here.
            autoscaling.remove("targetCpuUtilization");
            let scale_down: Value = serde_json::from_str(LOCAL_SCALE_DOWN)
                .map_err(|e| DemoError::Sample(e.to_string()))?;
            autoscaling.insert("behavior".into(), json!({ "scaleDown": scale_down }));
        }
        if let Some(webhook) = stage.pointer_mut("/notify/webhook") {
            webhook["url"] = json!(webhook_url);
            // The receiver checks nothing, so no Secret is needed.
            if let Some(webhook) = webhook.as_object_mut() {
                webhook.remove("authSecretRef");
            }
        }
    }
    if let Some(intake) = spec.get_mut("intake") {
        rename(&mut intake["ordersTopic"]);
        rename(&mut intake["statusTopic"]);
        // Two replicas, each a process here: the load spreads over both. Without resource metrics
        // the autoscaler could not move them anyway; minimum = maximum says so.
        intake["minReplicas"] = json!(INTAKE_REPLICAS);
        intake["maxReplicas"] = json!(INTAKE_REPLICAS);
    }
    Ok((manifest, Topics::new(topic_prefix)))
}

/// Replicas of the intake gateway here.
pub const INTAKE_REPLICAS: i32 = 2;

/// The Secret `manifest`'s intake gateway reads its tokens from, holding `token` (both scopes).
pub fn intake_tokens_secret(manifest: &Value, token: &str) -> Result<Value, DemoError> {
    let reference = manifest
        .pointer("/spec/intake/tokensSecretRef")
        .ok_or_else(|| DemoError::Sample("no spec.intake.tokensSecretRef".into()))?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": reference["name"],
            "namespace": manifest["metadata"]["namespace"],
        },
        "stringData": { reference["key"].as_str().unwrap_or("tokens"): format!("{token}\n") },
    }))
}

/// A fresh bearer token for this run, from the standard library's randomly keyed hasher: not a
/// cryptographic generator, which a gateway on this machine's loopback does not need.
pub fn new_token() -> String {
    use std::hash::{BuildHasher, RandomState};
    let half = || RandomState::new().hash_one(std::time::SystemTime::now());
    format!("demo-{:016x}{:016x}", half(), half())
}

/// `manifest` with `stage` at a fixed replica count (its autoscaling, if any, removed).
pub fn with_replicas(manifest: &Value, stage: &str, replicas: i32) -> Value {
    with_stage(manifest, stage, |spec| {
        spec["replicas"] = json!(replicas);
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("autoscaling");
        }
    })
}

/// `manifest` with `stage` released by canary ([`CANARY`]) on [`CANARY_REPLICAS`] replicas: the
/// analysis compares the canary's pods with the stable ones, so each version needs one, which an
/// autoscaler at its minimum of one would not leave. An autoscaled stage keeps its autoscaler,
/// pinned at that count (minimum = maximum), so the release shows on the autoscaler's panels too.
pub fn with_canary(manifest: &Value, stage: &str) -> Result<Value, DemoError> {
    let rollout: Value =
        serde_json::from_str(CANARY).map_err(|e| DemoError::Sample(e.to_string()))?;
    Ok(with_stage(manifest, stage, |spec| {
        spec["rollout"] = rollout.clone();
        match spec.get_mut("autoscaling").and_then(Value::as_object_mut) {
            Some(autoscaling) => {
                autoscaling.insert("minReplicas".into(), json!(CANARY_REPLICAS));
                autoscaling.insert("maxReplicas".into(), json!(CANARY_REPLICAS));
            }
            None => spec["replicas"] = json!(CANARY_REPLICAS),
        }
    }))
}

/// `manifest` with `stage` running `image`: a new release of the stage.
pub fn with_image(manifest: &Value, stage: &str, image: &str) -> Value {
    with_stage(manifest, stage, |spec| spec["image"] = json!(image))
}

fn with_stage(manifest: &Value, stage: &str, edit: impl Fn(&mut Value)) -> Value {
    let mut manifest = manifest.clone();
    for spec in manifest["spec"]["stages"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if spec["name"] == stage {
            edit(spec);
        }
    }
    manifest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_rewired_to_the_local_run() {
        let (manifest, topics) =
            checkout("ns1", "ns1.", "127.0.0.1:9092", "http://127.0.0.1:1/hook")
                .expect("the sample parses");
        assert_eq!(
            manifest["spec"]["kafka"]["bootstrapServers"][0],
            "127.0.0.1:9092"
        );
        let stages = manifest["spec"]["stages"].as_array().expect("stages");
        assert_eq!(stages[0]["input"], "ns1.orders");
        assert_eq!(stages[0]["outputs"]["events"], "ns1.order-events");
        assert_eq!(stages[1]["replicas"], 1);
        let autoscaling = &stages[0]["autoscaling"];
        assert!(autoscaling.get("targetCpuUtilization").is_none());
        assert_eq!(autoscaling["targetLagPerReplica"], 1000);
        assert_eq!(
            autoscaling["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            15
        );
        assert_eq!(
            stages[2]["notify"]["webhook"]["url"],
            "http://127.0.0.1:1/hook"
        );
        assert!(
            stages[2]["notify"]["webhook"]
                .get("authSecretRef")
                .is_none()
        );
        assert_eq!(topics.input_of("notify"), Some("ns1.order-status"));
        assert_eq!(manifest["spec"]["intake"]["ordersTopic"], "ns1.orders");
        assert_eq!(
            manifest["spec"]["intake"]["statusTopic"],
            "ns1.order-status"
        );
        let secret = intake_tokens_secret(&manifest, "t0k").expect("the sample has an intake");
        assert_eq!(secret["metadata"]["name"], "checkout-intake-tokens");
        assert_eq!(secret["metadata"]["namespace"], "ns1");
        assert_eq!(secret["stringData"]["tokens"], "t0k\n");
        let replicas = with_replicas(&manifest, "status", 3);
        assert_eq!(replicas["spec"]["stages"][1]["replicas"], 3);
        let fixed = with_replicas(&manifest, "validate", 1);
        assert_eq!(fixed["spec"]["stages"][0]["replicas"], 1);
        assert!(fixed["spec"]["stages"][0].get("autoscaling").is_none());
        let canary = with_canary(&manifest, "validate").expect("the canary parses");
        let validate = &canary["spec"]["stages"][0];
        assert_eq!(validate["autoscaling"]["minReplicas"], CANARY_REPLICAS);
        assert_eq!(validate["autoscaling"]["maxReplicas"], CANARY_REPLICAS);
        assert_eq!(validate["rollout"]["strategy"], "Canary");
        assert_eq!(validate["rollout"]["canary"]["analysis"]["failureLimit"], 0);
        let released = with_image(&canary, "validate", "orderpipe/orderpipe-worker:faulty");
        assert_eq!(
            released["spec"]["stages"][0]["image"],
            "orderpipe/orderpipe-worker:faulty"
        );
        assert!(released["spec"]["stages"][1].get("image").is_none());
    }
}
