//! The Argo CD health check of `config/argocd/health-check.yaml`, run by a real Lua 5.4 interpreter
//! (Argo CD runs these scripts in gopher-lua, a Lua 5.1 dialect; the script uses only what both
//! share) against OrderPipeline objects the operator writes. Needs `lua5.4` (`make e2e-setup`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn health_script() -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/argocd/health-check.yaml");
    let config: Value = serde_norway::from_str(&std::fs::read_to_string(path)?)?;
    let script = config["data"]["resource.customizations.health.orderpipe.dev_OrderPipeline"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("health check missing from argocd-cm"))?;
    Ok(script.to_string())
}

/// A JSON value as a Lua table constructor (what Argo CD hands the script as `obj`).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the health check on `object` and returns (status, message).
fn health(object: &Value) -> anyhow::Result<(String, String)> {
    let program = format!(
        "obj = {}\nlocal hs = (function()\n{}\nend)()\nio.write(hs.status, \"\\n\", hs.message or \"\")",
        lua_literal(object),
        health_script()?
    );
    let mut child = Command::new("lua5.4")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdin"))?
        .write_all(program.as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    Ok((status.to_string(), message.to_string()))
}

fn pipeline(generation: i64, observed: i64, ready: &str, reason: &str) -> Value {
    json!({
        "metadata": { "name": "checkout", "generation": generation },
        "status": {
            "observedGeneration": observed,
            "conditions": [
                { "type": "Ready", "status": ready, "reason": reason, "message": "details" },
                { "type": "TopicsReady", "status": "True", "reason": "AllTopicsReady", "message": "" }
            ]
        }
    })
}

#[test]
#[ignore = "needs lua5.4: make test-e2e"]
fn orderpipeline_health_follows_the_ready_condition() -> anyhow::Result<()> {
    assert_eq!(
        health(&pipeline(3, 3, "True", "PipelineReady"))?.0,
        "Healthy"
    );
    assert_eq!(
        health(&pipeline(3, 3, "False", "ReplicasNotReady"))?.0,
        "Progressing"
    );
    assert_eq!(health(&pipeline(3, 3, "False", "Paused"))?.0, "Suspended");
    let (status, message) = health(&pipeline(3, 3, "False", "Conflict"))?;
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Degraded", "Conflict: details")
    );
    assert_eq!(
        health(&pipeline(3, 3, "False", "CanaryDegraded"))?.0,
        "Degraded"
    );
    Ok(())
}

#[test]
#[ignore = "needs lua5.4: make test-e2e"]
fn stale_or_missing_status_is_progressing_never_healthy() -> anyhow::Result<()> {
    assert_eq!(
        health(&pipeline(4, 3, "True", "PipelineReady"))?.0,
        "Progressing"
    );
    assert_eq!(
        health(&json!({ "metadata": { "generation": 1 } }))?.0,
        "Progressing"
    );
    Ok(())
}
