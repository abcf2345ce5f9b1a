//! The node agent on the shared stack: pods that tolerate its taint and select its node become
//! real local processes (of the `fake-worker` test binary) with kubelet semantics: env resolved
//! from the pod, Secrets and ConfigMaps; readiness and liveness from probes; crash-loop back-off;
//! graceful deletion; nothing left behind when the agent stops, is dropped or is SIGKILLed. Every
//! other pod still goes to kwok's node. Each test runs its own agent in-process under a unique
//! node name, so tests run in parallel on one stack. Needs `make test-e2e`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use orderpipe_api::contract;
use orderpipe_node_agent::{
    ImageMapping, NODE_AGENT_LABEL, NodeAgent, NodeAgentConfig, local_ports, running_pid,
};
use orderpipe_stack::{NODE_NAME, SharedStack, TestNamespace, pid_alive, unique_name, wait_until};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The test "image"; the agent maps it (any registry, any tag) to the `fake-worker` binary.
const FAKE_WORKER_IMAGE: &str = "docker.io/orderpipe/fake-worker:e2e";
const FAKE_WORKER_BINARY: &str = env!("CARGO_BIN_EXE_fake-worker");
const AGENT_BINARY: &str = env!("CARGO_BIN_EXE_orderpipe-node-agent");
const TIMEOUT: Duration = Duration::from_secs(60);

fn fake_worker_mapping() -> ImageMapping {
    ImageMapping {
        image: "orderpipe/fake-worker".into(),
        binary: PathBuf::from(FAKE_WORKER_BINARY),
    }
}

/// A namespace and an agent of this test's own.
struct Setup {
    ns: TestNamespace,
    agent: NodeAgent,
    pods: Api<Pod>,
    _work: TempDir,
}

impl Setup {
    async fn new(prefix: &str) -> anyhow::Result<Setup> {
        let stack = SharedStack::get()?;
        let ns = stack.namespace(prefix).await?;
        let work = tempfile::tempdir()?;
        let config =
            NodeAgentConfig::new(unique_name("na"), work.path()).image(fake_worker_mapping());
        let agent = NodeAgent::start(stack.kube_client().await?, config)
            .await
            .context("starting the node agent")?;
        Ok(Setup {
            pods: ns.api::<Pod>(),
            ns,
            agent,
            _work: work,
        })
    }

    fn node(&self) -> &str {
        self.agent.node_name()
    }

    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.agent.pod_dir(self.ns.name(), pod)
    }

    async fn create_pod(&self, name: &str, spec: Value) -> anyhow::Result<()> {
        let pod: Pod =
            serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec }))?;
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {name}"))?;
        Ok(())
    }

    /// Creates pod `name` and waits until it is Ready; returns the PID of its container process.
    async fn start_ready_pod(&self, name: &str, spec: Value) -> anyhow::Result<u32> {
        self.create_pod(name, spec).await?;
        let pod = self.wait_pod(name, "Ready", is_ready).await?;
        running_pid(&pod).context("no pid")
    }

    /// Waits until pod `name` exists and satisfies `condition`.
    async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        condition: impl Fn(&Pod) -> bool,
    ) -> anyhow::Result<Pod> {
        let pod = wait_until(&format!("pod {name}: {what}"), TIMEOUT, || async {
            let pod = self.pods.get_opt(name).await.ok()??;
            condition(&pod).then_some(pod)
        })
        .await?;
        Ok(pod)
    }

    async fn wait_gone(&self, name: &str) -> anyhow::Result<()> {
        wait_until(&format!("pod {name} gone"), TIMEOUT, || async {
            matches!(self.pods.get_opt(name).await, Ok(None)).then_some(())
        })
        .await?;
        Ok(())
    }

    /// Stops the agent (a drain) and deletes the namespace.
    async fn teardown(self) -> anyhow::Result<()> {
        self.agent.stop().await.context("stopping the agent")?;
        self.ns.cleanup().await?;
        Ok(())
    }
}

/// A pod spec that lands on the agent's `node`: it selects the node and tolerates its taint.
fn on_agent(node: &str, container: Value) -> Value {
    json!({
        "nodeSelector": { "kubernetes.io/hostname": node },
        "tolerations": [{
            "key": NODE_AGENT_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule",
        }],
        "terminationGracePeriodSeconds": 10,
        "containers": [container],
    })
}

/// The fake worker with the worker's port contract and fast probes.
fn fake_worker(env: Value) -> Value {
    json!({
        "name": "worker",
        "image": FAKE_WORKER_IMAGE,
        "env": env,
        "ports": [{ "name": "metrics", "containerPort": contract::METRICS_PORT, "protocol": "TCP" }],
        "readinessProbe": {
            "httpGet": { "path": "/readyz", "port": "metrics" },
            "periodSeconds": 1, "failureThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": { "path": "/healthz", "port": "metrics" },
            "periodSeconds": 1, "failureThreshold": 2,
        },
    })
}

fn status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn waiting_reason(pod: &Pod) -> Option<&str> {
    status(pod)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .as_deref()
}

/// What the fake worker recorded about its start (pid, args, env) in its pod directory.
fn start_record(pod_dir: &Path) -> anyhow::Result<Value> {
    let path = pod_dir.join("fake-worker.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The PID the fake worker wrote when it exited gracefully on SIGTERM.
fn sigterm_marker(pod_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(pod_dir.join("fake-worker.sigterm"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn deployment(name: &str, replicas: i32, spec: Value) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": spec },
        },
    }))?)
}

async fn wait_available(
    deployments: &Api<Deployment>,
    name: &str,
    replicas: i32,
) -> anyhow::Result<()> {
    wait_until(
        &format!("deployment {name} Available with {replicas}/{replicas} ready"),
        TIMEOUT,
        || async {
            let status = deployments.get(name).await.ok()?.status?;
            let available = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available && status.ready_replicas == Some(replicas)).then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn deployment_replicas_are_ready_processes_and_scaling_to_zero_stops_them()
-> anyhow::Result<()> {
    let setup = Setup::new("na-deploy").await?;
    let deployments = setup.ns.api::<Deployment>();
    // Like the operator: the contract's literal 9090, which the agent must override.
    let env = json!([{ "name": contract::env::METRICS_PORT, "value": contract::METRICS_PORT.to_string() }]);
    let spec = on_agent(setup.node(), fake_worker(env));
    deployments
        .create(&PostParams::default(), &deployment("web", 2, spec)?)
        .await?;
    wait_available(&deployments, "web", 2).await?;

    let pods = setup
        .pods
        .list(&ListParams::default().labels("app=web"))
        .await?;
    assert_eq!(pods.items.len(), 2);
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut seen = Vec::new();
    for pod in &pods.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        assert_eq!(
            node,
            Some(setup.node()),
            "pod {name} not on the agent's node"
        );
        let pid = running_pid(pod).with_context(|| format!("pod {name} has no running pid"))?;
        assert!(pid_alive(pid), "pod {name}: process {pid} is not running");
        let port = *local_ports(pod)
            .get("metrics")
            .with_context(|| format!("pod {name} has no metrics host port"))?;
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await?;
        assert!(
            ready.status().is_success(),
            "pod {name}: /readyz on {port}: {}",
            ready.status()
        );
        let record = start_record(&setup.pod_dir(&name))?;
        assert_eq!(
            record["pid"], pid,
            "pod {name}: the PID in its status is the process"
        );
        assert_eq!(
            record["env"][contract::env::METRICS_PORT],
            port.to_string(),
            "pod {name}: the worker is told its host port through the contract variable"
        );
        seen.push((name, pid, port));
    }
    assert_ne!(seen[0].2, seen[1].2, "two workers, two ports: {seen:?}");
    assert_ne!(seen[0].1, seen[1].1, "two workers, two processes: {seen:?}");

    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 0 } })),
        )
        .await?;
    wait_until("no web pods left", TIMEOUT, || async {
        let pods = setup
            .pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        pods.items.is_empty().then_some(())
    })
    .await?;
    for (name, pid, _) in &seen {
        assert!(
            !pid_alive(*pid),
            "pod {name}: process {pid} survived scale-down"
        );
        assert_eq!(
            sigterm_marker(&setup.pod_dir(name)),
            Some(*pid),
            "pod {name}: no graceful exit on SIGTERM"
        );
    }
    setup.teardown().await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn env_is_resolved_from_field_refs_secrets_and_config_maps() -> anyhow::Result<()> {
    let setup = Setup::new("na-env").await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "creds" }, "stringData": { "password": "s3cret" },
    }))?;
    setup
        .ns
        .api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "settings" }, "data": { "mode": "fast", "port": "8080" },
    }))?;
    setup
        .ns
        .api::<ConfigMap>()
        .create(&PostParams::default(), &config_map)
        .await?;
    let field = |path: &str| json!({ "fieldRef": { "fieldPath": path } });
    let mut container = fake_worker(json!([
        { "name": "POD_NAME", "valueFrom": field("metadata.name") },
        { "name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace") },
        { "name": "POD_UID", "valueFrom": field("metadata.uid") },
        { "name": "NODE_NAME", "valueFrom": field("spec.nodeName") },
        { "name": "POD_IP", "valueFrom": field("status.podIP") },
        { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } },
        { "name": "MODE", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "mode" } } },
        { "name": "ABSENT", "valueFrom": { "secretKeyRef": { "name": "nope", "key": "k", "optional": true } } },
        { "name": "URL", "value": "http://$(POD_IP):$(CFG_port)/$(POD_NAME)" },
    ]));
    container["envFrom"] = json!([{ "configMapRef": { "name": "settings" }, "prefix": "CFG_" }]);
    container["args"] = json!([
        "run",
        "--pod=$(POD_NAME)",
        "--metrics=$(ORDERPIPE_METRICS_PORT)",
        "$$(POD_NAME)"
    ]);
    setup
        .create_pod("env", on_agent(setup.node(), container))
        .await?;
    let pod = setup.wait_pod("env", "Ready", is_ready).await?;

    let record = start_record(&setup.pod_dir("env"))?;
    let env = &record["env"];
    let port = local_ports(&pod)
        .get("metrics")
        .copied()
        .context("no metrics port")?;
    let expected = [
        ("POD_NAME", "env".to_owned()),
        ("POD_NAMESPACE", setup.ns.name().to_owned()),
        ("POD_UID", pod.metadata.uid.clone().unwrap_or_default()),
        ("NODE_NAME", setup.node().to_owned()),
        ("POD_IP", "127.0.0.1".to_owned()),
        ("PASSWORD", "s3cret".to_owned()),
        ("MODE", "fast".to_owned()),
        ("CFG_mode", "fast".to_owned()),
        ("CFG_port", "8080".to_owned()),
        ("URL", "http://127.0.0.1:8080/env".to_owned()),
        ("HOSTNAME", "env".to_owned()),
        (contract::env::METRICS_PORT, port.to_string()),
    ];
    for (name, value) in expected {
        assert_eq!(env[name], value, "env {name} in {env:#}");
    }
    assert!(
        env.get("ABSENT").is_none(),
        "an optional missing Secret leaves the variable unset"
    );
    assert_eq!(
        record["args"],
        json!([
            "run",
            "--pod=env",
            format!("--metrics={port}"),
            "$(POD_NAME)"
        ])
    );
    setup.teardown().await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_missing_secret_key_is_a_create_container_config_error_until_it_exists()
-> anyhow::Result<()> {
    let setup = Setup::new("na-secret").await?;
    let secrets = setup.ns.api::<Secret>();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "creds" }, "stringData": { "user": "orders" },
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let container = fake_worker(json!([
        { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } },
    ]));
    setup
        .create_pod("needs-password", on_agent(setup.node(), container))
        .await?;
    let pod = setup
        .wait_pod(
            "needs-password",
            "waiting with CreateContainerConfigError",
            |pod| waiting_reason(pod) == Some("CreateContainerConfigError"),
        )
        .await?;
    let message = status(&pod)
        .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("password") && message.contains("creds"),
        "the message names the Secret and the key: {message}"
    );
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    // The agent retries: once the key exists the container starts with it.
    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "password": "s3cret" } })),
        )
        .await?;
    setup.wait_pod("needs-password", "Ready", is_ready).await?;
    let record = start_record(&setup.pod_dir("needs-password"))?;
    assert_eq!(record["env"]["PASSWORD"], "s3cret");
    setup.teardown().await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_crashing_container_restarts_with_crash_loop_back_off() -> anyhow::Result<()> {
    let setup = Setup::new("na-crash").await?;
    let container = fake_worker(json!([{ "name": "FAKE_WORKER_CRASH_AFTER_MS", "value": "300" }]));
    setup
        .create_pod("crasher", on_agent(setup.node(), container))
        .await?;
    // Like the kubelet: the first restart is immediate, the second waits 10 s.
    let pod = setup
        .wait_pod("crasher", "in CrashLoopBackOff after a restart", |pod| {
            waiting_reason(pod) == Some("CrashLoopBackOff")
                && status(pod).is_some_and(|s| s.restart_count >= 1)
        })
        .await?;
    let container = status(&pod).context("no container status")?;
    let last = container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("no last termination")?;
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    let message = container
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref()?.message.clone())
        .unwrap_or_default();
    assert!(message.contains("back-off 10s"), "{message}");
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running"),
        "restartPolicy Always: a backing-off pod is Running"
    );
    let restarts = container.restart_count;
    setup
        .wait_pod("crasher", "restarted after the back-off", |pod| {
            status(pod).is_some_and(|s| s.restart_count > restarts)
        })
        .await?;
    setup.teardown().await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn deleting_a_pod_stops_its_process_gracefully_before_the_object_goes() -> anyhow::Result<()>
{
    let setup = Setup::new("na-delete").await?;
    // The worker takes 1.5 s to exit after SIGTERM: an agent that deleted the object without
    // waiting would be caught with no marker yet.
    let container = fake_worker(json!([{ "name": "FAKE_WORKER_TERM_DELAY_MS", "value": "1500" }]));
    let pid = setup
        .start_ready_pod("graceful", on_agent(setup.node(), container))
        .await?;
    setup
        .pods
        .delete("graceful", &DeleteParams::default())
        .await?;
    setup.wait_gone("graceful").await?;
    assert_eq!(sigterm_marker(&setup.pod_dir("graceful")), Some(pid));
    assert!(!pid_alive(pid));
    setup.teardown().await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() -> anyhow::Result<()> {
    let setup = Setup::new("na-kill").await?;
    let container = fake_worker(json!([{ "name": "FAKE_WORKER_IGNORE_SIGTERM", "value": "1" }]));
    let mut spec = on_agent(setup.node(), container);
    spec["terminationGracePeriodSeconds"] = json!(2);
    let pid = setup.start_ready_pod("stubborn", spec).await?;
    let deleted = Instant::now();
    setup
        .pods
        .delete("stubborn", &DeleteParams::default())
        .await?;
    setup.wait_gone("stubborn").await?;
    let took = deleted.elapsed();
    assert!(!pid_alive(pid));
    assert_eq!(sigterm_marker(&setup.pod_dir("stubborn")), None);
    assert!(
        took >= Duration::from_millis(1900),
        "SIGKILL came before the grace period: {took:?}"
    );
    let log = std::fs::read_to_string(setup.pod_dir("stubborn").join("worker.log"))?;
    assert!(log.contains("ignoring SIGTERM"), "{log}");
    setup.teardown().await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn readiness_follows_the_probe_and_a_failing_liveness_probe_restarts_the_container()
-> anyhow::Result<()> {
    let setup = Setup::new("na-probes").await?;
    let container = fake_worker(json!([{ "name": "FAKE_WORKER_UNREADY_AT_START", "value": "1" }]));
    setup
        .create_pod("probed", on_agent(setup.node(), container))
        .await?;
    let dir = setup.pod_dir("probed");
    let log = dir.join("worker.log");
    wait_until("three failed readiness probes", TIMEOUT, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.matches("GET /readyz 503").count() >= 3).then_some(())
    })
    .await?;
    let pod = setup.pods.get("probed").await?;
    assert!(!is_ready(&pod), "ready although /readyz fails");
    assert!(running_pid(&pod).is_some(), "running, just not ready");

    std::fs::remove_file(dir.join("unready"))?;
    let pod = setup
        .wait_pod("probed", "Ready once /readyz passes", is_ready)
        .await?;
    let pid = running_pid(&pod).context("no pid")?;

    std::fs::write(dir.join("unhealthy"), "")?;
    let pod = setup
        .wait_pod("probed", "restarted after failing liveness", |pod| {
            status(pod).is_some_and(|s| s.restart_count == 1) && running_pid(pod).is_some()
        })
        .await?;
    // The new process starts unready again (FAKE_WORKER_UNREADY_AT_START): readiness is per run.
    assert!(
        !is_ready(&pod),
        "ready before its first readiness probe passed"
    );
    let container = status(&pod).context("no container status")?;
    let last = container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("no last termination")?;
    assert_eq!(last.exit_code, 0, "stopped with SIGTERM, exited gracefully");
    assert!(
        last.message
            .as_deref()
            .is_some_and(|m| m.contains("liveness probe failed")),
        "{last:?}"
    );
    assert_ne!(running_pid(&pod), Some(pid));
    assert!(!pid_alive(pid));
    setup.teardown().await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn an_unmapped_image_keeps_the_pod_pending_with_image_not_mapped() -> anyhow::Result<()> {
    let setup = Setup::new("na-image").await?;
    let deployments = setup.ns.api::<Deployment>();
    let mut container = fake_worker(json!([]));
    container["image"] = json!("example.invalid/unmapped:1");
    deployments
        .create(
            &PostParams::default(),
            &deployment("unmapped", 1, on_agent(setup.node(), container))?,
        )
        .await?;
    let pod = wait_until(
        "the unmapped pod waiting with ImageNotMapped",
        TIMEOUT,
        || async {
            let pods = setup
                .pods
                .list(&ListParams::default().labels("app=unmapped"))
                .await
                .ok()?;
            pods.items
                .into_iter()
                .find(|pod| waiting_reason(pod) == Some("ImageNotMapped"))
        },
    )
    .await?;
    let status = pod.status.clone().unwrap_or_default();
    // Pending, not Failed: a failed pod would be replaced at once, again and again.
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(status.reason.as_deref(), Some("ImageNotMapped"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("example.invalid/unmapped:1") && message.contains("--image"),
        "{message}"
    );
    let pods = setup
        .pods
        .list(&ListParams::default().labels("app=unmapped"))
        .await?;
    assert_eq!(pods.items.len(), 1, "no replacement pods");

    // The agent also finishes the deletion of a pod whose containers never ran.
    let name = pod.metadata.name.clone().unwrap_or_default();
    deployments
        .delete("unmapped", &DeleteParams::foreground())
        .await?;
    setup.wait_gone(&name).await?;
    setup.teardown().await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn pods_without_the_toleration_still_go_to_kwoks_node() -> anyhow::Result<()> {
    let setup = Setup::new("na-kwok").await?;
    let deployments = setup.ns.api::<Deployment>();
    // The agent's image, but no toleration: the agent's taint keeps these pods away.
    let spec = json!({ "containers": [fake_worker(json!([]))] });
    deployments
        .create(&PostParams::default(), &deployment("elsewhere", 2, spec)?)
        .await?;
    wait_available(&deployments, "elsewhere", 2).await?;
    let pods = setup
        .pods
        .list(&ListParams::default().labels("app=elsewhere"))
        .await?;
    for pod in &pods.items {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        assert_eq!(node, Some(NODE_NAME));
        assert!(local_ports(pod).is_empty(), "the agent touched a kwok pod");
    }
    setup.teardown().await
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn stopping_the_agent_drains_its_pods_and_removes_its_node() -> anyhow::Result<()> {
    let setup = Setup::new("na-stop").await?;
    let pid = setup
        .start_ready_pod("drained", on_agent(setup.node(), fake_worker(json!([]))))
        .await?;
    let dir = setup.pod_dir("drained");
    let node = setup.node().to_owned();
    let Setup {
        ns,
        agent,
        pods,
        _work: work,
    } = setup;
    agent.stop().await?;
    assert!(!pid_alive(pid));
    assert_eq!(sigterm_marker(&dir), Some(pid), "SIGTERM first");
    assert!(
        pods.get_opt("drained").await?.is_none(),
        "the drain deletes the pod"
    );
    let nodes: Api<Node> = Api::all(ns.client().clone());
    assert!(
        nodes.get_opt(&node).await?.is_none(),
        "the node is deregistered"
    );
    ns.cleanup().await?;
    drop(work);
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn dropping_the_agent_handle_stops_its_processes() -> anyhow::Result<()> {
    let setup = Setup::new("na-drop").await?;
    let pid = setup
        .start_ready_pod("dropped", on_agent(setup.node(), fake_worker(json!([]))))
        .await?;
    let dir = setup.pod_dir("dropped");
    let node = setup.node().to_owned();
    let Setup {
        ns,
        agent,
        _work: work,
        ..
    } = setup;
    drop(agent);
    assert!(
        !pid_alive(pid),
        "the drop returns once the processes are gone"
    );
    assert_eq!(sigterm_marker(&dir), Some(pid), "SIGTERM first");
    // A dropped agent leaves its node behind (nothing async can run in Drop).
    Api::<Node>::all(ns.client().clone())
        .delete(&node, &DeleteParams::default())
        .await?;
    ns.cleanup().await?;
    drop(work);
    Ok(())
}

/// The agent binary as a child process, SIGKILLed if the test ends early.
struct AgentProcess(tokio::process::Child);

impl AgentProcess {
    fn spawn(stack: &SharedStack, node: &str, work: &Path) -> anyhow::Result<AgentProcess> {
        let child = tokio::process::Command::new(AGENT_BINARY)
            .arg("--kubeconfig")
            .arg(stack.kubeconfig()?)
            .args(["--node-name", node])
            .arg("--work-dir")
            .arg(work)
            .arg("--image")
            .arg(fake_worker_mapping().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(work.join("agent.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting orderpipe-node-agent")?;
        Ok(AgentProcess(child))
    }

    fn pid(&self) -> anyhow::Result<i32> {
        let pid = self.0.id().context("the agent has exited")?;
        Ok(i32::try_from(pid)?)
    }
}

async fn wait_node_ready(nodes: &Api<Node>, node: &str) -> anyhow::Result<()> {
    wait_until(&format!("node {node} Ready"), TIMEOUT, || async {
        let node = nodes.get_opt(node).await.ok()??;
        let conditions = node.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await?;
    Ok(())
}

/// The agent binary on a node of this test's own, running one fake worker pod `w`. Destructure it
/// in field order and keep `_work` bound: bindings drop in reverse order, so the agent (killed on
/// drop) still goes before its work directory.
struct BinarySetup {
    ns: TestNamespace,
    _work: TempDir,
    node: String,
    agent: AgentProcess,
    nodes: Api<Node>,
    pods: Api<Pod>,
    /// The process of pod `w`.
    pid: u32,
}

impl BinarySetup {
    /// `prefix` names both the namespace and the node.
    async fn start(prefix: &str) -> anyhow::Result<BinarySetup> {
        let stack = SharedStack::get()?;
        let ns = stack.namespace(prefix).await?;
        let work = tempfile::tempdir()?;
        let node = unique_name(prefix);
        let agent = AgentProcess::spawn(&stack, &node, work.path())?;
        let nodes: Api<Node> = Api::all(ns.client().clone());
        wait_node_ready(&nodes, &node).await?;
        let pods = ns.api::<Pod>();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "w" }, "spec": on_agent(&node, fake_worker(json!([]))),
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        let pid = wait_until("pod w running", TIMEOUT, || async {
            let pod = pods.get_opt("w").await.ok()??;
            running_pid(&pod)
        })
        .await?;
        Ok(BinarySetup {
            ns,
            _work: work,
            node,
            agent,
            nodes,
            pods,
            pid,
        })
    }
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn the_agent_binary_drains_on_sigterm() -> anyhow::Result<()> {
    let BinarySetup {
        ns,
        _work: work,
        node,
        mut agent,
        nodes,
        pods,
        pid,
    } = BinarySetup::start("na-bin").await?;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let exit = tokio::time::timeout(TIMEOUT, agent.0.wait()).await??;
    if !exit.success() {
        bail!(
            "orderpipe-node-agent exited with {exit}: {}",
            std::fs::read_to_string(work.path().join("agent.log")).unwrap_or_default()
        );
    }
    assert!(!pid_alive(pid));
    assert!(
        pods.get_opt("w").await?.is_none(),
        "the drain deletes the pod"
    );
    assert!(
        nodes.get_opt(&node).await?.is_none(),
        "the node is deregistered"
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn killing_the_agent_binary_leaves_no_orphans() -> anyhow::Result<()> {
    let BinarySetup {
        ns,
        _work,
        node,
        mut agent,
        nodes,
        pid,
        ..
    } = BinarySetup::start("na-orphans").await?;

    agent.0.kill().await?;
    // The watchdog polls once a second and gives SIGTERM 5 s before SIGKILL.
    wait_until(
        &format!("worker {pid} gone after the agent's SIGKILL"),
        Duration::from_secs(20),
        || async { (!pid_alive(pid)).then_some(()) },
    )
    .await?;
    nodes.delete(&node, &DeleteParams::default()).await?;
    ns.cleanup().await?;
    Ok(())
}
