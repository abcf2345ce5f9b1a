//! Secret rotation on real parts: the checkout sample's intake gateway runs as real worker
//! processes (a node agent runs the operator's pods), its bearer tokens come from a Secret, and the
//! Secret is rotated while the gateway serves. The operator finds the new version within its
//! refresh period, stamps it on the gateway's pod template, the Deployment rolls, and the new
//! processes accept the new token and refuse the old one. Needs `make test-e2e` and the worker
//! binary (`cargo build -p orderpipe-worker`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ListParams;
use orderpipe_demo::{WebhookReceiver, checkout, intake_tokens_secret, new_token};
use orderpipe_e2e::deployed::apply_dynamic;
use orderpipe_e2e::{CONVERGE, OperatorTest, apply_pipeline, on_node_agent, pod_ready, wait_ready};
use orderpipe_node_agent::{ImageMapping, NodeAgent, NodeAgentConfig, local_ports};
use orderpipe_operator::children::{PIPELINE_LABEL, STAGE_LABEL};
use orderpipe_operator::rotation::SECRET_VERSIONS_ANNOTATION;
use orderpipe_stack::tools;
use orderpipe_stack::{TestNamespace, unique_name, wait_until};

/// The checkout sample's name and its gateway's Deployment.
const PIPELINE: &str = "checkout";
const GATEWAY: &str = "checkout-intake";
/// How often the operator here looks at the Secrets again (30 s by default).
const REFRESH: Duration = Duration::from_secs(2);

/// The gateway's ready pods and the host port each serves its API on.
async fn gateway_ports(ns: &TestNamespace) -> Vec<(String, u16)> {
    let selector = format!("{PIPELINE_LABEL}={PIPELINE},{STAGE_LABEL}=intake");
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&selector))
        .await
        .map(|list| list.items)
        .unwrap_or_default();
    pods.iter()
        .filter(|pod| pod_ready(pod) && pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| Some((pod.name_any(), *local_ports(pod).get("http")?)))
        .collect()
}

/// Whether the gateway on `port` takes `token`: an order lookup is answered (404 for an order it
/// never saw) rather than refused with 401.
async fn accepts(port: u16, token: &str) -> Option<bool> {
    let status = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/orders/rotation-probe"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .status()
        .as_u16();
    Some(status != 401)
}

/// The pods, when every ready gateway pod (and at least `replicas` of them) takes `new` and
/// refuses `old`.
async fn all_switched(
    ns: &TestNamespace,
    replicas: usize,
    old: &str,
    new: &str,
) -> Option<BTreeSet<String>> {
    let ports = gateway_ports(ns).await;
    if ports.len() < replicas {
        return None;
    }
    for (_, port) in &ports {
        if !accepts(*port, new).await? || accepts(*port, old).await? {
            return None;
        }
    }
    Some(ports.into_iter().map(|(pod, _)| pod).collect())
}

async fn stamped_versions(ns: &TestNamespace) -> Option<String> {
    let gateway = ns.api::<Deployment>().get(GATEWAY).await.ok()?;
    gateway
        .spec?
        .template
        .metadata?
        .annotations?
        .remove(SECRET_VERSIONS_ANNOTATION)
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn a_rotated_token_secret_rolls_the_gateway_which_then_takes_only_the_new_token()
-> anyhow::Result<()> {
    let node = unique_name("rotate-node");
    let placement = on_node_agent(&node);
    let test = OperatorTest::start_with("rotate", |settings| {
        settings.worker_placement = placement;
        settings.secret_refresh = Some(REFRESH);
    })
    .await?;
    let work = tempfile::tempdir()?;
    let agent = NodeAgent::start(
        test.ns.client().clone(),
        NodeAgentConfig::new(&node, work.path()).image(ImageMapping {
            image: "orderpipe/orderpipe-worker".into(),
            binary: tools::built_binary("orderpipe-worker")?,
        }),
    )
    .await?;
    let proven = rotate(&test).await;
    agent.stop().await?;
    proven?;
    let OperatorTest { ns, operator, .. } = test;
    OperatorTest::finish(operator, ns).await
}

async fn rotate(test: &OperatorTest) -> anyhow::Result<()> {
    let ns = &test.ns;
    let webhook = WebhookReceiver::start().await?;
    let (manifest, _topics) = checkout(
        ns.name(),
        &format!("{}.", ns.name()),
        &test.bootstrap,
        webhook.url(),
    )?;
    let replicas = manifest["spec"]["intake"]["minReplicas"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(1);
    let (old, new) = (new_token(), new_token());
    apply_dynamic(
        ns.client(),
        Some(ns.name()),
        &intake_tokens_secret(&manifest, &old)?,
    )
    .await?;
    apply_pipeline(ns, &manifest).await?;
    wait_ready(ns, PIPELINE).await?;
    let before = wait_until("the gateway takes the first token", CONVERGE, || {
        all_switched(ns, replicas, &new, &old)
    })
    .await?;
    let stamp_before = stamped_versions(ns).await;
    anyhow::ensure!(
        stamp_before
            .as_deref()
            .is_some_and(|s| s.contains("checkout-intake-tokens=")),
        "the gateway's template names the version of its token Secret: {stamp_before:?}"
    );

    let rotated = Instant::now();
    apply_dynamic(
        ns.client(),
        Some(ns.name()),
        &intake_tokens_secret(&manifest, &new)?,
    )
    .await?;
    let after = wait_until(
        "every gateway pod takes the new token and refuses the old one",
        CONVERGE,
        || all_switched(ns, replicas, &old, &new),
    )
    .await?;
    eprintln!(
        "measured: {replicas} gateway pods rolled to the rotated token {:?} after the Secret \
         changed (refresh period {REFRESH:?})",
        rotated.elapsed()
    );
    anyhow::ensure!(
        before.is_disjoint(&after),
        "new processes serve the new token: before {before:?}, after {after:?}"
    );
    anyhow::ensure!(
        stamped_versions(ns).await != stamp_before,
        "the template's stamp changed"
    );
    Ok(())
}
