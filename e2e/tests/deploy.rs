//! `kubectl apply -k config/default` and `config/namespaced` for real: the rendered manifests (ServiceAccount, shipped RBAC,
//! Service, Deployment) applied server-side, the operator started as a pod by a node agent from
//! the built binary standing in for its image, reaching the apiserver as its ServiceAccount (so
//! the shipped RBAC is what it runs with), serving its probes on the port the agent mapped; then the
//! checkout sample (made runnable here as `make demo` does: local broker, prefixed topics, a local
//! webhook receiver) becomes Ready through it, and the stack's Prometheus scrapes it through
//! `config/monitoring/servicemonitor.yaml`. Needs `make test-e2e`.
//!
//! Adjusted for a shared stack: everything namespaced goes to the test's namespace (which the
//! operator watches and holds its Lease in), cluster-scoped RBAC gets the namespace as a name
//! suffix and is deleted afterwards, the CRD (the stack's, installed from the same files) and the
//! Namespace are left out, one replica, pinned with its workers to the test's node agent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::Kubeconfig;
use orderpipe_api::OrderPipeline;
use orderpipe_demo::{WebhookReceiver, checkout, intake_tokens_secret, new_token};
use orderpipe_e2e::deployed::{apply_dynamic, delete_cluster_rbac, placement_args};
use orderpipe_e2e::{CONVERGE, apply_pipeline, on_node_agent, pod_ready, wait_ready};
use orderpipe_node_agent::{
    ImageMapping, NodeAgent, NodeAgentConfig, OPERATOR_IMAGE, WORKER_IMAGE, local_ports,
};
use orderpipe_stack::prometheus::wait_for_targets;
use orderpipe_stack::tools::{self, Tools};
use orderpipe_stack::{SharedStack, TestNamespace, kube_client_for, unique_name, wait_until};
use serde_json::{Value, json};

/// The operator's pods, as config/manager labels them.
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=orderpipe-operator";
/// The checkout sample's name (config/samples/orderpipe_v1alpha1_checkout.yaml).
const SAMPLE: &str = "checkout";
/// Scraped every 5 s by the stack, discovered within 2 s more.
const SCRAPED: Duration = Duration::from_secs(30);

fn config_dir(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(dir)
}

/// The two ways to install the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Install {
    /// config/default: a ClusterRole; the test adds `--watch-namespace` to confine it.
    Default,
    /// config/namespaced: Roles only, watching the namespace it runs in by itself.
    Namespaced,
}

impl Install {
    fn dir(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Namespaced => "namespaced",
        }
    }
}

/// `kubectl kustomize config/<install>` with the stack's pinned kubectl, one object per document.
fn render(install: Install) -> anyhow::Result<Vec<Value>> {
    let output = Command::new(Tools::locate()?.bin("kubectl")?)
        .arg("kustomize")
        .arg(config_dir(install.dir()))
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl kustomize config/{}: {}",
        install.dir(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_slice(&output.stdout) {
        let object: Value = serde::Deserialize::deserialize(document)?;
        if !object.is_null() {
            objects.push(object);
        }
    }
    Ok(objects)
}

/// What the test applies.
struct Manifests {
    /// In the order kustomize rendered them (ServiceAccount and RBAC before the Deployment).
    objects: Vec<Value>,
    /// (kind, name) of the cluster-scoped ones, to delete afterwards.
    cluster_scoped: Vec<(String, String)>,
}

/// The rendered objects as this test applies them (see the module doc).
fn for_the_test(install: Install, ns: &str, node: &str) -> anyhow::Result<Manifests> {
    let rendered = render(install)?;
    if install == Install::Namespaced {
        // kustomize puts the install namespace on every namespaced kind it knows and on no
        // cluster-scoped one, so an object without a namespace would be installed cluster-wide.
        let cluster_wide: Vec<String> = rendered
            .iter()
            .filter(|o| o["metadata"]["namespace"].as_str().is_none())
            .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
            .collect();
        anyhow::ensure!(
            cluster_wide.is_empty(),
            "config/namespaced installs cluster-scoped {cluster_wide:?}"
        );
    }
    let placement = on_node_agent(node);
    let mut objects = Vec::new();
    let mut cluster_scoped = Vec::new();
    for mut object in rendered {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" | "CustomResourceDefinition" => continue,
            "ClusterRole" | "ClusterRoleBinding" => {
                let name = format!(
                    "{}-{ns}",
                    object["metadata"]["name"].as_str().unwrap_or_default()
                );
                object["metadata"]["name"] = json!(name);
                if kind == "ClusterRoleBinding" {
                    let role = object["roleRef"]["name"].as_str().unwrap_or_default();
                    object["roleRef"]["name"] = json!(format!("{role}-{ns}"));
                }
                cluster_scoped.push((kind.clone(), name));
            }
            _ => object["metadata"]["namespace"] = json!(ns),
        }
        // `get_mut`: indexing a Value mutably would add `subjects: null` to every other kind.
        let subjects = object.get_mut("subjects").and_then(Value::as_array_mut);
        for subject in subjects.into_iter().flatten() {
            subject["namespace"] = json!(ns);
        }
        if kind == "Deployment" {
            object["spec"]["replicas"] = json!(1);
            let pod = &mut object["spec"]["template"]["spec"];
            pod["nodeSelector"] = serde_json::to_value(&placement.node_selector)?;
            pod["tolerations"] = serde_json::to_value(&placement.tolerations)?;
            let args = pod["containers"][0]["args"]
                .as_array_mut()
                .context("the operator container has args")?;
            let watch = match install {
                Install::Default => vec!["--watch-namespace".to_owned(), ns.to_owned()],
                Install::Namespaced => Vec::new(),
            };
            args.extend(
                watch
                    .into_iter()
                    .chain(placement_args(&placement))
                    .map(Value::from),
            );
        }
        objects.push(object);
    }
    Ok(Manifests {
        objects,
        cluster_scoped,
    })
}

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn kustomize_default_runs_the_operator_as_a_pod_that_makes_the_sample_ready()
-> anyhow::Result<()> {
    install_and_run(Install::Default).await
}

/// config/namespaced: nothing cluster-scoped is installed, the operator's ServiceAccount may read
/// Secrets in its own namespace and not in another, and with that it makes the sample Ready (its
/// webhook and intake Secrets included), is scraped, and finalizes it.
#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn kustomize_namespaced_runs_the_operator_on_roles_alone_that_cannot_read_other_namespaces()
-> anyhow::Result<()> {
    install_and_run(Install::Namespaced).await
}

async fn install_and_run(install: Install) -> anyhow::Result<()> {
    let began = Instant::now();
    let stack = SharedStack::get()?;
    let ns = stack.namespace("deploy").await?;
    let node = unique_name("deploy-node");
    let Manifests {
        objects,
        cluster_scoped,
    } = for_the_test(install, ns.name(), &node)?;
    let work = tempfile::tempdir()?;
    let kubeconfig = Kubeconfig::read_from(stack.kubeconfig()?)?;
    let agent = NodeAgent::start(
        ns.client().clone(),
        NodeAgentConfig::new(&node, work.path())
            .image(ImageMapping {
                image: OPERATOR_IMAGE.into(),
                binary: tools::built_binary("orderpipe-operator")?,
            })
            .image(ImageMapping {
                image: WORKER_IMAGE.into(),
                binary: tools::built_binary("orderpipe-worker")?,
            })
            .service_account_tokens(&kubeconfig)?,
    )
    .await?;
    let proven = deploy_and_run(&stack, &ns, &agent, &objects, install).await;
    // The pipeline is gone (or the test failed): stop the operator pod before its RBAC goes. The
    // test's own failure comes first; a failed test may not have created every object.
    let stopped = agent.stop().await;
    let mut deleted = Vec::new();
    for (kind, name) in &cluster_scoped {
        deleted.push(delete_cluster_rbac(ns.client(), kind, name).await);
    }
    proven?;
    stopped?;
    deleted.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    ns.cleanup().await?;
    eprintln!("measured: the whole test took {:?}", began.elapsed());
    Ok(())
}

/// Whether the operator's ServiceAccount in `ns` may `get` Secrets in `namespace`.
async fn operator_may_read_secrets_in(ns: &TestNamespace, namespace: &str) -> anyhow::Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!(
                "system:serviceaccount:{}:orderpipe-operator",
                ns.name()
            )),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", ns.name()),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some("get".into()),
                resource: Some("secrets".into()),
                name: Some("anything".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(ns.client().clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn deploy_and_run(
    stack: &SharedStack,
    ns: &TestNamespace,
    agent: &NodeAgent,
    objects: &[Value],
    install: Install,
) -> anyhow::Result<()> {
    let began = Instant::now();
    for object in objects {
        let namespace = object["metadata"]["namespace"].as_str();
        apply_dynamic(ns.client(), namespace, object).await?;
    }
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    eprintln!("measured: applied from config/{}: {kinds:?}", install.dir());
    if install == Install::Namespaced {
        anyhow::ensure!(
            operator_may_read_secrets_in(ns, ns.name()).await?,
            "the operator cannot read the Secrets of its own namespace"
        );
        anyhow::ensure!(
            !operator_may_read_secrets_in(ns, "kube-system").await?,
            "the namespaced operator can read kube-system's Secrets"
        );
    }

    let pods: Api<Pod> = ns.api();
    let operator_pods = ListParams::default().labels(OPERATOR_SELECTOR);
    let ready = wait_until("the operator pod Running and Ready", CONVERGE, || async {
        let list = pods.list(&operator_pods).await.ok()?;
        list.items.into_iter().find(pod_ready)
    })
    .await;
    let pod = match ready {
        Ok(pod) => pod,
        Err(error) => return Err(with_operator_log(agent, &pods, error.into()).await),
    };
    let ports = local_ports(&pod);
    eprintln!(
        "measured: operator pod {} Ready on {} after {:?}, /metrics, /healthz and /readyz on host \
         port {:?} (container port 8080)",
        pod.name_any(),
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        began.elapsed(),
        ports.get("metrics"),
    );

    let identity = pod_identity(agent, &pod).await?;
    eprintln!("measured: the operator container's KUBECONFIG authenticates as {identity}");
    anyhow::ensure!(
        identity.starts_with(&format!(
            "system:serviceaccount:{}:orderpipe-operator ",
            ns.name()
        )),
        "the operator pod runs as {identity}, not as its ServiceAccount"
    );

    let applied = Instant::now();
    let webhook = WebhookReceiver::start().await?;
    let (sample, _topics) = checkout(
        ns.name(),
        &format!("{}.", ns.name()),
        stack.kafka_bootstrap()?,
        webhook.url(),
    )?;
    // The intake gateway's tokens: without them its pods would wait for the Secret, unready.
    let tokens = intake_tokens_secret(&sample, &new_token())?;
    apply_dynamic(ns.client(), Some(ns.name()), &tokens).await?;
    apply_pipeline(ns, &sample).await?;
    if let Err(error) = wait_ready(ns, SAMPLE).await {
        return Err(with_operator_log(agent, &pods, error).await);
    }
    eprintln!(
        "measured: the checkout sample Ready=True {:?} after it was applied, reconciled by the pod",
        applied.elapsed()
    );

    let mut monitor: Value = serde_norway::from_str(&std::fs::read_to_string(
        config_dir("monitoring").join("servicemonitor.yaml"),
    )?)?;
    monitor["metadata"]["namespace"] = json!(ns.name());
    apply_dynamic(ns.client(), Some(ns.name()), &monitor).await?;
    let pod_name = pod.name_any();
    let targets = wait_for_targets(
        stack.prometheus_url()?,
        "the operator pod scraped through its ServiceMonitor",
        SCRAPED,
        |targets| {
            targets
                .iter()
                .any(|t| t.labels.get("pod") == Some(&pod_name) && t.health == "up")
        },
    )
    .await?;
    let target = targets
        .iter()
        .find(|t| t.labels.get("pod") == Some(&pod_name))
        .context("the operator's target")?;
    eprintln!(
        "measured: Prometheus scrapes {} (job {:?}) up",
        target.scrape_url,
        target.labels.get("job")
    );

    // Deleted while the operator runs, so its finalizer removes the topics.
    Api::<OrderPipeline>::namespaced(ns.client().clone(), ns.name())
        .delete(SAMPLE, &DeleteParams::default())
        .await?;
    wait_until("the pipeline finalized by the pod", CONVERGE, || async {
        let api = ns.api::<OrderPipeline>();
        api.get_opt(SAMPLE).await.ok()?.is_none().then_some(())
    })
    .await?;
    Ok(())
}

/// Who the apiserver takes the operator container of `pod` for (SelfSubjectReview with the
/// kubeconfig the agent wrote for it): user name and the pod the token is bound to.
async fn pod_identity(agent: &NodeAgent, pod: &Pod) -> anyhow::Result<String> {
    let dir = agent.pod_dir(&pod.namespace().unwrap_or_default(), &pod.name_any());
    let client = kube_client_for(&dir.join("operator.kubeconfig")).await?;
    let review = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    let bound_pod = user
        .extra
        .unwrap_or_default()
        .remove("authentication.kubernetes.io/pod-name")
        .unwrap_or_default();
    Ok(format!(
        "{} (token bound to pod {bound_pod:?})",
        user.username.unwrap_or_default()
    ))
}

/// `error` with the operator containers' logs, from their pod directories on the node agent.
async fn with_operator_log(
    agent: &NodeAgent,
    pods: &Api<Pod>,
    error: anyhow::Error,
) -> anyhow::Error {
    let listed = pods
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await
        .map(|list| list.items)
        .unwrap_or_default();
    let logs: Vec<String> = listed
        .iter()
        .map(|pod| {
            let dir = agent.pod_dir(&pod.namespace().unwrap_or_default(), &pod.name_any());
            let log = std::fs::read_to_string(dir.join("operator.log")).unwrap_or_default();
            format!("---- {} ----\n{log}", pod.name_any())
        })
        .collect();
    error.context(format!("operator logs:\n{}", logs.join("\n")))
}
