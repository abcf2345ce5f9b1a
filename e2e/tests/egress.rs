//! `--allowed-hosts` against the real apiserver and broker: a pipeline whose bootstrap servers are
//! outside the operator's allow-list is not dialled (no topic appears in Kafka) and every stage is
//! held at zero replicas, with `HostNotAllowed` in its conditions; a pipeline naming the same
//! broker by a name that resolves inside an allowed CIDR (`localhost`) is reconciled to Ready.
//! Needs `make test-e2e`.

use k8s_openapi::api::apps::v1::Deployment;
use orderpipe_api::OrderPipeline;
use orderpipe_e2e::{CONVERGE, OperatorTest, apply_pipeline, condition, wait_ready};
use orderpipe_operator::egress::{AllowList, AllowedHost};
use orderpipe_stack::{partition_count, wait_until};

/// A one-stage pipeline named `name` on `bootstrap`, its topics prefixed with `<ns>.<name>`.
fn pipeline(ns: &str, name: &str, bootstrap: &str) -> serde_json::Value {
    let pipeline = OrderPipeline::test(name)
        .bootstrap(bootstrap)
        .topic_prefix(&format!("{ns}.{name}"));
    serde_json::to_value(pipeline).expect("fixture serializes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local stack: make test-e2e"]
async fn brokers_outside_the_allow_list_are_never_dialled_and_allowed_ones_are()
-> anyhow::Result<()> {
    let allowed: Vec<AllowedHost> = ["127.0.0.0/8", "::1"]
        .iter()
        .map(|entry| entry.parse().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let OperatorTest {
        bootstrap,
        ns,
        operator,
        ..
    } = OperatorTest::start_with("egress", |settings| {
        settings.allowed_hosts = AllowList(allowed);
    })
    .await?;
    let port = bootstrap
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned())
        .unwrap_or_default();

    // TEST-NET-1: outside the allow-list, and nothing would answer there anyway.
    apply_pipeline(
        &ns,
        &pipeline(ns.name(), "outside", &format!("192.0.2.1:{port}")),
    )
    .await?;
    // The shared broker by a name: allowed because it resolves into 127.0.0.0/8 (and ::1).
    apply_pipeline(
        &ns,
        &pipeline(ns.name(), "inside", &format!("localhost:{port}")),
    )
    .await?;

    let pipelines = ns.api::<OrderPipeline>();
    let refused = wait_until("pipeline outside says HostNotAllowed", CONVERGE, || async {
        let p = pipelines.get("outside").await.ok()?;
        let topics = condition(&p, "TopicsReady")?;
        let stages = condition(&p, "StagesReady")?;
        (topics.1 == "HostNotAllowed" && stages.1 == "HostNotAllowed").then_some(p)
    })
    .await?;
    let message = refused
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "TopicsReady")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    anyhow::ensure!(
        message.contains("192.0.2.1") && message.contains("--allowed-hosts"),
        "TopicsReady names the host and the flag: {message}"
    );
    let deployments = ns.api::<Deployment>();
    let held = deployments.get("outside-validate").await?;
    anyhow::ensure!(
        held.spec.and_then(|s| s.replicas) == Some(0),
        "the stage of the refused pipeline is held at 0 replicas"
    );

    wait_ready(&ns, "inside").await?;
    eprintln!("measured: pipeline inside Ready via localhost:{port}; outside refused: {message}");
    // The refused pipeline's topics were never created on the broker both name.
    let orders = format!("{}.outside.orders", ns.name());
    anyhow::ensure!(
        partition_count(&bootstrap, &orders)?.is_none(),
        "{orders} exists: the refused pipeline was dialled"
    );
    let allowed = format!("{}.inside.orders", ns.name());
    anyhow::ensure!(
        partition_count(&bootstrap, &allowed)?.is_some(),
        "{allowed} is missing: the allowed pipeline's topics were not created"
    );
    OperatorTest::finish(operator, ns).await
}
