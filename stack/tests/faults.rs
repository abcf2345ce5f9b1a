//! The harness's own fault handling, on private stacks: components restart on the same ports
//! with their data, and a killed stack owner leaves no process behind. Needs the tools
//! (`make e2e-tools`); run with `make test-e2e`.

use std::fs;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use orderpipe_stack::{
    Isolation, Kubernetes, Stack, StackEnv, create_topics, pid_alive, read_all, tools, wait_until,
};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Kills the stack owner if the test fails before it does (its watchdogs then clean up).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alive(pids: &[(String, u32)]) -> Vec<String> {
    pids.iter()
        .filter(|(_, pid)| pid_alive(*pid))
        .map(|(component, pid)| format!("{component}={pid}"))
        .collect()
}

#[tokio::test]
#[ignore = "needs the e2e tools: make test-e2e"]
async fn apiserver_and_kafka_restart_keep_data_and_ports() -> anyhow::Result<()> {
    let mut stack = Stack::builder("restart")
        .kubernetes(Kubernetes::ApiServer)
        .install_crds(false)
        .start()
        .await?;
    let client = stack.kube_client()?;
    let apiserver_url = stack.apiserver_url().map(str::to_owned);
    let bootstrap = stack.kafka_bootstrap()?.to_owned();

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let probe: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "restart-probe" },
        "data": { "order": "42" },
    }))?;
    config_maps.create(&PostParams::default(), &probe).await?;
    create_topics(&bootstrap, &[("restart-probe", 2)])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    for i in 0..3 {
        let payload = format!("before-restart-{i}");
        producer
            .send(
                FutureRecord::to("restart-probe").key("k").payload(&payload),
                TIMEOUT,
            )
            .await
            .map_err(|(error, _)| error)?;
    }
    drop(producer);

    stack.stop_apiserver().await?;
    stack.stop_kafka().await?;
    // Both really were down: the same client fails and nothing listens on the broker port.
    ensure!(
        config_maps.get("restart-probe").await.is_err(),
        "apiserver still answering"
    );
    ensure!(
        TcpStream::connect(&bootstrap).is_err(),
        "something still listens on {bootstrap}"
    );

    stack.start_apiserver().await?;
    stack.start_kafka().await?;
    assert_eq!(stack.apiserver_url().map(str::to_owned), apiserver_url);
    assert_eq!(stack.kafka_bootstrap()?, bootstrap);

    // The client built before the restart (same URL, same CA) reads the object back from etcd.
    let restored = config_maps.get("restart-probe").await?;
    assert_eq!(
        restored
            .data
            .and_then(|d| d.get("order").cloned())
            .as_deref(),
        Some("42")
    );
    let records = read_all(&bootstrap, "restart-probe", Isolation::ReadCommitted)?;
    let payloads: Vec<String> = records.iter().map(|r| r.payload_str()).collect();
    assert_eq!(
        payloads,
        ["before-restart-0", "before-restart-1", "before-restart-2"]
    );

    stack.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the e2e tools: make test-e2e"]
async fn killing_the_stack_owner_leaves_no_orphans() -> anyhow::Result<()> {
    let root = tools::e2e_root();
    let env_file = root.join("orphans.env");
    let log = root.join("orphans-supervisor.log");
    fs::create_dir_all(&root)?;
    let _ = fs::remove_file(&env_file);

    // The owner is a separate process holding a full stack, as `make e2e-up` runs it.
    let log_file = fs::File::create(&log)?;
    let mut owner = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_orderpipe-stack"))
            .arg("--env-file")
            .arg(&env_file)
            .args(["serve", "--name", "orphans", "--no-crds"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting the stack owner")?,
    );
    let owner_pid = owner.0.id();

    let env = wait_until(
        "the stack owner to report ready",
        Duration::from_secs(240),
        || {
            let exited = owner.0.try_wait().ok().flatten();
            let env = StackEnv::load(&env_file).ok();
            async move {
                match (exited, env) {
                    (Some(status), _) => Some(Err(status)),
                    (None, Some(env)) if env.supervisor_pid == owner_pid => Some(Ok(env)),
                    _ => None,
                }
            }
        },
    )
    .await?
    .map_err(|status| {
        anyhow::anyhow!(
            "stack owner exited ({status}):\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    let components: Vec<&str> = env.pids.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        components,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "kafka",
            "prometheus",
            "kube-state-metrics",
            "node-exporter"
        ],
        "expected every component of a full stack"
    );
    assert_eq!(
        alive(&env.pids).len(),
        9,
        "not all components running before the kill"
    );

    owner.0.kill().context("SIGKILL to the stack owner")?;
    owner.0.wait().context("reaping the stack owner")?;

    let gone = wait_until(
        "every component to be gone",
        Duration::from_secs(45),
        || {
            let survivors = alive(&env.pids);
            async move { survivors.is_empty().then_some(()) }
        },
    )
    .await;
    ensure!(gone.is_ok(), "orphans left behind: {:?}", alive(&env.pids));
    let _ = fs::remove_file(&env_file);
    Ok(())
}
