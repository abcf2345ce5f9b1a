//! Every alert of `config/monitoring/prometheusrule.yaml`, fired on the stack's live Prometheus by
//! making its condition real and resolved by undoing it, with real parts only: the operator binary
//! with the shipped RBAC (scraped as its ServiceMonitor would: job `orderpipe-operator-metrics`),
//! worker processes run by a node agent (scraped through the ServiceMonitors the operator writes),
//! the broker, and a webhook that fails on demand.
//!
//! The broker group (`orderpipe-kafka`) needs more than the shared stack's one broker to become
//! real: `broker_alerts.rs` proves it on a three-broker cluster.
//!
//! The rules are loaded as shipped except for time (`orderpipe_e2e::rules`): every `for` becomes
//! 5 s and every range window 30 s. The expressions, thresholds and labels are the shipped ones.
//!
//! | Alert | made real by | undone by |
//! |---|---|---|
//! | TransactionsAborting | the validated topic's `max.message.bytes` below any order (spec) | the spec restored |
//! | LagGrowingAtReplicaCap, WebhookFailing, Stalled, ConsumerLagHigh | the webhook answering 503 while 15,000 orders arrive and more keep coming; notify's autoscaler is at its maximum (1) | the webhook answering 200 (orders keep coming) |
//! | DeadLetters | records that are not JSON | time: the window passes |
//! | WorkerDown | SIGSTOP of the validate worker | SIGCONT |
//! | NotReady | a pipeline whose Kafka cannot be reached | deleting it |
//! | ReconcileErrors | an admission policy refusing the operator's Deployments | removing it |
//! | OperatorDown | SIGKILL of the operator | a new operator process |
//! | NoLeader | a Lease another holder keeps renewing | the holder stopping: the Lease expires |
//! | GrowthForwarding | proven in `growth.rs`: a producer that keeps the old partition count through a growth's settle window | (not undone there) |
//!
//! Before the faults, after a transactional load has drained: every panel query of the Grafana
//! dashboard returns data (the panel test), Prometheus's active targets are the running pods plus
//! the operator, and no alert fires or pends for the idle pipeline, whose input partitions end in
//! commit markers. Needs `make test-e2e` and the worker binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use orderpipe_api::OrderPipeline;
use orderpipe_api::v1alpha1::Processor;
use orderpipe_demo::WebhookReceiver;
use orderpipe_e2e::deployed::{Replica, delete_cluster_rbac, operator_identity};
use orderpipe_e2e::load::{SteadyProducer, produce_transaction};
use orderpipe_e2e::policy::DenyDeployments;
use orderpipe_e2e::rules::{ALERT_WAIT, AlertWatch, LiveRules, WINDOW};
use orderpipe_e2e::{CONVERGE, apply_pipeline, on_node_agent, wait_ready};
use orderpipe_node_agent::{ImageMapping, NodeAgent, NodeAgentConfig, running_pid};
use orderpipe_stack::prometheus::{self, LocalTarget, Target};
use orderpipe_stack::{
    SharedStack, TestNamespace, caught_up, free_port, tools, unique_name, wait_until,
};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The job the operator's ServiceMonitor gives it (the Service's name in config/manager).
const OPERATOR_JOB: &str = "orderpipe-operator-metrics";
/// The binary's Lease (operator/src/main.rs).
const LEASE: &str = "orderpipe-operator-leader";
const PIPELINE: &str = "shop";
/// Kafka's default.
const ACCEPTING_MAX_MESSAGE_BYTES: &str = "1048588";
/// Fits a transaction marker's control batch, not a validated order.
const REFUSING_MAX_MESSAGE_BYTES: &str = "200";
/// Over the rule's 10,000 records once they reach notify's input.
const BACKLOG: u64 = 15_000;

#[tokio::test]
#[ignore = "needs the local stack: make test-e2e"]
async fn every_alert_fires_when_its_condition_is_real_and_resolves_when_it_is_undone()
-> anyhow::Result<()> {
    let stack = SharedStack::get()?;
    let ns = stack.namespace("alerts").await?;
    let node = unique_name("alerts-node");
    let work = tempfile::tempdir()?;
    let agent = NodeAgent::start(
        ns.client().clone(),
        NodeAgentConfig::new(&node, work.path()).image(ImageMapping {
            image: "orderpipe/orderpipe-worker".into(),
            binary: tools::built_binary("orderpipe-worker")?,
        }),
    )
    .await?;
    let (kubeconfig, cluster_rbac) = operator_identity(&stack, &ns).await?;
    let prometheus_url = stack.prometheus_url()?.to_owned();
    let rules =
        LiveRules::install(stack.prometheus_rules_dir()?, &prometheus_url, ns.name()).await?;
    let webhook = WebhookReceiver::start().await?;
    let run = Run {
        alerts: AlertWatch::new(&prometheus_url, Some(ns.name())),
        prometheus: prometheus_url.clone(),
        webhook_url: webhook.url().to_owned(),
        bootstrap: stack.kafka_bootstrap()?.to_owned(),
        targets_dir: stack.prometheus_targets_dir()?.to_path_buf(),
        kubeconfig,
        node,
        ns,
    };
    let proven = run.prove(&webhook).await;
    rules.remove().await?;
    agent.stop().await?;
    for kind in ["ClusterRoleBinding", "ClusterRole"] {
        delete_cluster_rbac(run.ns.client(), kind, &cluster_rbac).await?;
    }
    proven?;
    run.ns.cleanup().await?;
    Ok(())
}

/// What the phases share.
struct Run {
    alerts: AlertWatch,
    prometheus: String,
    webhook_url: String,
    bootstrap: String,
    targets_dir: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    node: String,
    ns: TestNamespace,
}

impl Run {
    async fn prove(&self, webhook: &WebhookReceiver) -> anyhow::Result<()> {
        let mut operator = self.start_operator("op-a")?;
        apply_pipeline(
            &self.ns,
            &self.pipeline(webhook.url(), ACCEPTING_MAX_MESSAGE_BYTES)?,
        )
        .await?;
        wait_ready(&self.ns, PIPELINE).await?;
        self.targets_are_the_running_pods().await?;

        // A drained transactional load: the dashboard has data, and the idle pipeline no alert.
        let input = format!("{}.orders", self.ns.name());
        produce_transaction(&self.bootstrap, &input, 3_000).await?;
        self.drained().await?;
        self.every_panel_returns_data().await?;
        self.quiet_while_idle(Duration::from_secs(20)).await?;

        // The workers' alerts and the operator's at once; the operator track kills the operator
        // only once the worker track no longer needs spec changes applied.
        let spec_changes_done = Notify::new();
        let workers = async {
            let result = self.transactions_abort(webhook.url()).await;
            spec_changes_done.notify_one();
            result?;
            self.webhook_fails(webhook, &input).await?;
            self.dead_letters(&input).await?;
            self.worker_stops().await
        };
        let operators = async {
            spec_changes_done.notified().await;
            self.not_ready_and_failing().await?;
            self.operator_gone_then_standby(&mut operator).await
        };
        let (workers, operators) = tokio::join!(workers, operators);
        workers?;
        operators?;
        // After every fault is undone, each stage catches up with all of its input (committed
        // offsets at the end); the books themselves are the canary and demo tests' to check.
        self.drained().await?;
        Ok(())
    }

    /// The operator binary as process `name` (its log: `<tmp>/<namespace>-<name>.log`), scraped as
    /// its ServiceMonitor would.
    fn start_operator(&self, name: &'static str) -> anyhow::Result<(Replica, LocalTarget)> {
        let replica = Replica::start_placed(
            name,
            &self.kubeconfig,
            self.ns.name(),
            &on_node_agent(&self.node),
        )?;
        let labels: BTreeMap<String, String> = [
            ("job", OPERATOR_JOB),
            ("namespace", self.ns.name()),
            ("service", OPERATOR_JOB),
            ("endpoint", "metrics"),
            ("pod", replica.name),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // One file per process: replacing a process must not delete its successor's target.
        let target = LocalTarget::register(
            &self.targets_dir,
            &format!("{}-{name}", self.ns.name()),
            &replica.metrics_address,
            &labels,
        )?;
        Ok((replica, target))
    }

    /// validate → status → notify, on the node agent's node, notify posting to `webhook` with
    /// many quick retries (a failing webhook holds its partition for about a minute and a half)
    /// and an autoscaler fixed at one replica, the validated topic at `max_message_bytes`.
    fn pipeline(&self, webhook: &str, max_message_bytes: &str) -> anyhow::Result<Value> {
        let t = |name: &str| format!("{}.{name}", self.ns.name());
        let pipeline = OrderPipeline::test(PIPELINE)
            .bootstrap(&self.bootstrap)
            .topic_prefix(self.ns.name())
            .topic(&t("events"), 3)
            .topic(&t("status"), 3)
            .topic(&t("audit"), 1)
            .output("validate", "events", &t("events"))
            .topic_config(&t("validated"), "max.message.bytes", max_message_bytes)
            .stage(
                "status",
                Processor::Status,
                &t("events"),
                &[("changes", &t("status"))],
            )
            .stage(
                "notify",
                Processor::Notify,
                &t("status"),
                &[("audit", &t("audit"))],
            );
        let mut manifest = serde_json::to_value(pipeline)?;
        manifest["spec"]["stages"][2]["notify"] = json!({
            "webhook": { "url": webhook, "timeout": "2s" },
            "retry": { "maxAttempts": 100, "initialBackoff": "100ms", "maxBackoff": "1s" },
        });
        // An autoscaler already at its maximum: LagGrowingAtReplicaCap's condition.
        manifest["spec"]["stages"][2]["autoscaling"] =
            json!({ "minReplicas": 1, "maxReplicas": 1 });
        Ok(manifest)
    }

    async fn worker_pods(&self) -> anyhow::Result<Vec<Pod>> {
        let pods = self.ns.api::<Pod>().list(&ListParams::default()).await?;
        Ok(pods
            .items
            .into_iter()
            .filter(|pod| running_pid(pod).is_some())
            .collect())
    }

    /// Prometheus scrapes exactly the running worker pods of the namespace, and the operator.
    async fn targets_are_the_running_pods(&self) -> anyhow::Result<()> {
        let ns = self.ns.name();
        let in_ns = |targets: &[Target]| -> BTreeSet<String> {
            targets
                .iter()
                .filter(|t| t.labels.get("namespace").map(String::as_str) == Some(ns))
                .filter(|t| t.health == "up")
                .filter_map(|t| t.labels.get("pod").cloned())
                .collect()
        };
        let (targets, expected) = wait_until(
            "Prometheus's active targets are the running pods and the operator",
            CONVERGE,
            || async {
                let pods = self.worker_pods().await.ok()?;
                let expected: BTreeSet<String> = pods
                    .iter()
                    .filter_map(|pod| pod.metadata.name.clone())
                    .chain(["op-a".to_owned()])
                    .collect();
                let targets = prometheus::active_targets(&self.prometheus).await.ok()?;
                (pods.len() == 3 && in_ns(&targets) == expected).then_some((targets, expected))
            },
        )
        .await?;
        for target in targets
            .iter()
            .filter(|t| t.labels.get("namespace").map(String::as_str) == Some(ns))
        {
            eprintln!(
                "measured: active target {} {} (job {}, pod {})",
                target.scrape_url,
                target.health,
                target.labels.get("job").map_or("", String::as_str),
                target.labels.get("pod").map_or("", String::as_str),
            );
        }
        eprintln!("measured: the running pods and the operator: {expected:?}");
        Ok(())
    }

    /// Every stage has committed all of its input.
    async fn drained(&self) -> anyhow::Result<()> {
        let ns = self.ns.name().to_owned();
        for (stage, input) in [
            ("validate", "orders"),
            ("status", "events"),
            ("notify", "status"),
        ] {
            let (bootstrap, ns) = (self.bootstrap.clone(), ns.clone());
            let group = orderpipe_api::contract::naming::consumer_group(&ns, PIPELINE, stage);
            let topic = format!("{ns}.{input}");
            wait_until(&format!("{stage} drains {topic}"), ALERT_WAIT, || {
                let (bootstrap, group, topic) = (bootstrap.clone(), group.clone(), topic.clone());
                async move {
                    let done =
                        tokio::task::spawn_blocking(move || caught_up(&bootstrap, &group, &topic));
                    done.await.ok()?.ok()?.then_some(())
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Each panel query of the Grafana dashboard, with the dashboard's variables set to this
    /// pipeline, returns at least one series.
    async fn every_panel_returns_data(&self) -> anyhow::Result<()> {
        let dashboard = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config/monitoring/grafana/orderpipe.json");
        let variables = [("namespace", self.ns.name()), ("pipeline", PIPELINE)];
        prometheus::every_panel_returns_data(&self.prometheus, &dashboard, &variables, ALERT_WAIT)
            .await?;
        Ok(())
    }

    /// For `span`, no alert of this run pends or fires: none for the namespace, none of the
    /// operator's (the only operator Prometheus scrapes is this test's).
    async fn quiet_while_idle(&self, span: Duration) -> anyhow::Result<()> {
        // Idle in Kafka and in the apiserver is not yet idle in Prometheus: it holds each
        // target's last scrape (every 5 s) and the alerts of its last rule evaluation. The
        // operator's gauge may still read the pipeline not Ready from before it was, and the
        // rules' window still holds the load's lag (and "lag grew over the window" with it).
        // Idle starts once Prometheus has scraped the operator's Ready pipeline and only zero lag
        // over the whole window (series that exist: no sample is not a zero), and its rules have
        // let every alert of ours go since.
        let ns = self.ns.name();
        let settled = [
            format!("max(max_over_time(orderpipe_consumer_lag{{namespace=\"{ns}\"}}[{WINDOW}]))"),
            format!(
                "sum(orderpipe_operator_pipelines{{namespace=\"{ns}\",condition=\"Ready\",\
                 status=\"False\"}})"
            ),
        ];
        wait_until(
            "Prometheus holds the idle pipeline: zero lag over the window, the pipeline Ready, \
             no alert of ours",
            ALERT_WAIT,
            || async {
                for promql in &settled {
                    let samples = prometheus::query(&self.prometheus, promql).await.ok()?;
                    let zero = !samples.is_empty() && samples.iter().all(|s| s.value == 0.0);
                    zero.then_some(())?;
                }
                self.alerts.ours().await.ok()?.is_empty().then_some(())
            },
        )
        .await?;
        let until = Instant::now() + span;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while Instant::now() < until {
            tick.tick().await;
            let ours = self.alerts.ours().await?;
            ensure!(ours.is_empty(), "alerts on the idle pipeline: {ours:?}");
        }
        eprintln!("measured: no alert pended or fired in {span:?} of the drained pipeline");
        Ok(())
    }

    /// The validated topic refuses every order: validate's transactions abort (the refused
    /// records are then dead-lettered by the worker's refusal handling); the spec restored, they
    /// commit again.
    /// Not below a control batch (about 80 bytes): the transaction coordinator could then not
    /// write its abort markers, and every later transaction of the stage waits until the config
    /// is fixed (CONCURRENT_TRANSACTIONS).
    async fn transactions_abort(&self, webhook: &str) -> anyhow::Result<()> {
        let producer =
            SteadyProducer::start(&self.bootstrap, &format!("{}.orders", self.ns.name()), 20);
        apply_pipeline(
            &self.ns,
            &self.pipeline(webhook, REFUSING_MAX_MESSAGE_BYTES)?,
        )
        .await?;
        let proven = self
            .alerts
            .fired_and_resolved(
                &[(
                    "OrderPipelineTransactionsAborting",
                    &[("stage", "validate")],
                )],
                "max.message.bytes 200 on the validated topic",
                async || {
                    let restored = self.pipeline(webhook, ACCEPTING_MAX_MESSAGE_BYTES)?;
                    apply_pipeline(&self.ns, &restored).await
                },
            )
            .await;
        producer.stop().await?;
        proven
    }

    /// The webhook answers 503 while a backlog arrives and orders keep coming: notify retries,
    /// holds its partitions and falls further behind, its autoscaler at its maximum; the webhook
    /// healed and the orders stopped, it catches up.
    async fn webhook_fails(&self, webhook: &WebhookReceiver, input: &str) -> anyhow::Result<()> {
        webhook.set_failing(true);
        produce_transaction(&self.bootstrap, input, BACKLOG).await?;
        let producer = SteadyProducer::start(&self.bootstrap, input, 50);
        let notify: &[(&str, &str)] = &[("stage", "notify")];
        let proven = self
            .alerts
            .fired_and_resolved(
                &[
                    ("OrderPipelineLagGrowingAtReplicaCap", notify),
                    ("OrderPipelineWebhookFailing", notify),
                    ("OrderPipelineStalled", notify),
                    ("OrderPipelineConsumerLagHigh", notify),
                ],
                "the webhook began answering 503",
                async || {
                    webhook.set_failing(false);
                    Ok(())
                },
            )
            .await;
        producer.stop().await?;
        proven?;
        eprintln!(
            "measured: the webhook answered 503 {} times and 200 {} times",
            webhook.refused(),
            webhook.counts().1
        );
        Ok(())
    }

    /// Records that are not JSON are dead-lettered; once the window has passed without more,
    /// the alert resolves.
    async fn dead_letters(&self, input: &str) -> anyhow::Result<()> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        for n in 0..20 {
            let key = format!("garbage-{n}");
            producer
                .send(BaseRecord::to(input).key(&key).payload("{not json"))
                .map_err(|(error, _)| error)?;
        }
        producer.flush(Duration::from_secs(30))?;
        self.alerts
            .fired_and_resolved(
                &[(
                    "OrderPipelineDeadLetters",
                    &[("stage", "validate"), ("reason", "not_json")],
                )],
                "20 records that are not JSON",
                async || Ok(()),
            )
            .await
    }

    /// SIGSTOP of the validate worker: it answers no scrape while its pod runs; SIGCONT (or the
    /// liveness probe's restart, whichever comes first) ends it.
    async fn worker_stops(&self) -> anyhow::Result<()> {
        let pods = self.worker_pods().await?;
        let pod = pods
            .iter()
            .find(|pod| {
                pod.metadata
                    .name
                    .as_deref()
                    .is_some_and(|name| name.starts_with("shop-validate"))
            })
            .context("no running validate pod")?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(
            running_pid(pod).context("validate pod without a pid")?,
        )?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
        let proven = self
            .alerts
            .fired_and_resolved(
                &[("OrderPipelineWorkerDown", &[("pod", &name)])],
                "SIGSTOP of the validate worker",
                async || {
                    // Already restarted by its liveness probe is as good.
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                    Ok(())
                },
            )
            .await;
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        proven
    }

    /// A pipeline on a broker nobody listens on is not Ready (TopicsReady=False,
    /// KafkaUnavailable: a reconcile that succeeds in saying so, not an error). An admission
    /// policy refusing the namespace's Deployments makes every reconcile of `shop` fail (category
    /// `apply`). The pipeline deleted and the policy removed, both alerts end.
    async fn not_ready_and_failing(&self) -> anyhow::Result<()> {
        let unreachable = OrderPipeline::test("unreachable")
            .bootstrap(&format!("127.0.0.1:{}", free_port()?))
            .topic_prefix(&format!("{}.unreachable", self.ns.name()));
        apply_pipeline(&self.ns, &serde_json::to_value(unreachable)?).await?;
        let policy = DenyDeployments::install(&self.ns).await?;
        // A spec change, so the operator writes the Deployments again (a resync would too).
        let mut changed = self.pipeline(&self.webhook_url, ACCEPTING_MAX_MESSAGE_BYTES)?;
        changed["spec"]["stages"][0]["replicas"] = json!(2);
        apply_pipeline(&self.ns, &changed).await?;
        let api = self.ns.api::<OrderPipeline>();
        self.alerts
            .fired_and_resolved(
                &[
                    ("OrderPipelineNotReady", &[]),
                    ("OrderPipelineReconcileErrors", &[("category", "apply")]),
                ],
                "a pipeline on an unreachable broker and a policy refusing Deployments",
                async || {
                    api.delete("unreachable", &DeleteParams::default()).await?;
                    policy.remove(&self.ns).await
                },
            )
            .await
    }

    /// SIGKILL: nothing to scrape. A new operator process finds the Lease held by another
    /// holder that keeps renewing it and stays a standby: scraped, but no leader. Once the other
    /// holder stops renewing, the Lease expires and the standby leads.
    async fn operator_gone_then_standby(
        &self,
        operator: &mut (Replica, LocalTarget),
    ) -> anyhow::Result<()> {
        operator.0.signal(nix::sys::signal::Signal::SIGKILL)?;
        operator.0.child.wait().await?;
        let killed = Instant::now();
        self.alerts.fires("OrderPipelineOperatorDown", &[]).await?;
        let down = killed.elapsed();
        let ghost =
            GhostHolder::start(Api::namespaced(self.ns.client().clone(), self.ns.name())).await?;
        *operator = self.start_operator("op-b")?;
        let started = Instant::now();
        self.alerts
            .resolves("OrderPipelineOperatorDown", &[])
            .await?;
        let up = started.elapsed();
        eprintln!(
            "measured: OrderPipelineOperatorDown fired {down:.1?} after the SIGKILL, resolved \
             {up:.1?} after a new operator process started"
        );
        self.alerts
            .fired_and_resolved(
                &[("OrderPipelineOperatorNoLeader", &[])],
                "the Lease held by another holder",
                async || ghost.stop().await,
            )
            .await
    }
}

/// Another holder of the operator's Lease, renewing it every [`GhostHolder::RENEW`] for
/// [`GhostHolder::DURATION`] until stopped.
struct GhostHolder {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl GhostHolder {
    const RENEW: Duration = Duration::from_secs(2);
    const DURATION: i32 = 10;

    /// Takes the Lease (the killed operator's is not expired yet, so it is forced) and keeps it.
    async fn start(leases: Api<Lease>) -> anyhow::Result<GhostHolder> {
        let renew = move |leases: Api<Lease>| async move {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(LEASE.to_owned()),
                    ..kube::api::ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("someone-else".to_owned()),
                    lease_duration_seconds: Some(GhostHolder::DURATION),
                    renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                    ..LeaseSpec::default()
                }),
            };
            leases
                .patch(
                    LEASE,
                    &PatchParams::apply("e2e-ghost").force(),
                    &Patch::Apply(&lease),
                )
                .await?;
            anyhow::Ok(())
        };
        renew(leases.clone()).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(GhostHolder::RENEW);
            loop {
                tokio::select! {
                    _ = tick.tick() => renew(leases.clone()).await?,
                    () = stopped.cancelled() => return Ok(()),
                }
            }
        });
        Ok(GhostHolder { stop, task })
    }

    /// Stops renewing: the Lease expires [`GhostHolder::DURATION`] seconds after the last renewal.
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}
