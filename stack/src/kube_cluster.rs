//! The Kubernetes half of a stack: etcd, kube-apiserver and, in full mode, kube-controller-manager,
//! kube-scheduler and kwok with one fake Node, plus the CRDs. Owns the command lines (each flag
//! says why below) and the readiness checks. Must not start Kafka or know about tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::component::{Component, Member, stop_members};
use crate::crds;
use crate::error::{Result, StackError};
use crate::kubeconfig;
use crate::pki::{FRONT_PROXY_CLIENT_CN, Pki, SERVICE_CLUSTER_IP_RANGE};
use crate::ports::free_port;
use crate::process::CommandSpec;
use crate::tools::Tools;

/// The fake node kwok keeps Ready; pods land here.
pub const NODE_NAME: &str = "kwok-node-0";
/// kwok manages only nodes carrying this annotation, so a stray Node is never faked.
const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// Which part of Kubernetes a stack runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kubernetes {
    /// No Kubernetes at all (e.g. Kafka-only tests).
    Off,
    /// etcd + kube-apiserver: API objects and CRDs, but nothing reconciles Deployments.
    ApiServer,
    /// Also kube-controller-manager, kube-scheduler and kwok with one Ready Node: Deployments
    /// get ReplicaSets, pods get scheduled and become Ready. (Plus the Argo Rollouts controller
    /// when the stack asks for it.)
    #[default]
    Full,
}

/// What `KubeCluster::prepare` builds.
#[derive(Debug, Clone)]
pub(crate) struct KubeOptions {
    pub mode: Kubernetes,
    pub crd_files: Vec<PathBuf>,
    /// Also run the Argo Rollouts controller (needs `Kubernetes::Full` and the Argo CRDs).
    pub argo_rollouts: bool,
    /// The controller-manager's and scheduler's client rate limit; `None`: their defaults.
    pub controller_api_qps: Option<u32>,
    pub timeout: Duration,
}

pub(crate) struct KubeCluster {
    admin_kubeconfig: PathBuf,
    apiserver_url: String,
    full: bool,
    crd_files: Vec<PathBuf>,
    timeout: Duration,
    etcd_health: String,
    controller_manager_health: String,
    scheduler_health: String,
    kwok_health: String,
    rollouts_health: String,
    /// `127.0.0.1:<port>` of the Argo Rollouts controller's `/metrics`, when it runs.
    rollouts_metrics: Option<String>,
    http: reqwest::Client,
    client: Option<Client>,
    etcd: Member,
    apiserver: Member,
    controller_manager: Option<Member>,
    scheduler: Option<Member>,
    kwok: Option<Member>,
    rollouts: Option<Member>,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("apiserver_url", &self.apiserver_url)
            .field("admin_kubeconfig", &self.admin_kubeconfig)
            .field("members", &self.members())
            .finish_non_exhaustive()
    }
}

impl KubeCluster {
    /// Allocates ports, generates the PKI and kubeconfigs, and prepares every command line.
    pub fn prepare(tools: &Tools, dir: &Path, options: KubeOptions) -> Result<KubeCluster> {
        let KubeOptions {
            mode,
            crd_files,
            argo_rollouts,
            controller_api_qps,
            timeout,
        } = options;
        let rate_limit = |qps: Option<u32>| -> Vec<String> {
            qps.map(|qps| {
                vec![
                    format!("--kube-api-qps={qps}"),
                    format!("--kube-api-burst={}", qps * 2),
                ]
            })
            .unwrap_or_default()
        };
        let full = mode == Kubernetes::Full;
        let logs = dir.join("logs");
        fs::create_dir_all(&logs).map_err(|e| StackError::io("creating", &logs, e))?;
        let pki = Pki::generate(&dir.join("pki"))?;
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let apiserver_port = free_port()?;
        let apiserver_url = format!("https://127.0.0.1:{apiserver_port}");

        let admin_kubeconfig = dir.join("kubeconfig");
        kubeconfig::write(
            &admin_kubeconfig,
            &apiserver_url,
            &pki.ca.cert,
            "admin",
            &pki.admin,
        )?;

        let etcd_url = |port: u16| format!("http://127.0.0.1:{port}");
        let etcd = CommandSpec::new(tools.bin("etcd")?, dir).args([
            "--name=e2e".to_owned(),
            format!("--data-dir={}", dir.join("etcd-data").display()),
            // Explicit client AND peer URLs: the defaults (2379/2380) collide between stacks.
            format!("--listen-client-urls={}", etcd_url(etcd_client)),
            format!("--advertise-client-urls={}", etcd_url(etcd_client)),
            format!("--listen-peer-urls={}", etcd_url(etcd_peer)),
            format!("--initial-advertise-peer-urls={}", etcd_url(etcd_peer)),
            format!("--initial-cluster=e2e={}", etcd_url(etcd_peer)),
            "--initial-cluster-state=new".to_owned(),
            // Test data is disposable; fsync would dominate the apiserver's write latency.
            "--unsafe-no-fsync".to_owned(),
            "--log-level=warn".to_owned(),
        ]);

        let path = |p: &Path| p.display().to_string();
        let apiserver = CommandSpec::new(tools.bin("kube-apiserver")?, dir).args([
            format!("--etcd-servers={}", etcd_url(etcd_client)),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={apiserver_port}"),
            // No kubelet/endpoint controller to keep the `kubernetes` Endpoints right anyway,
            // and the lease reconciler would publish 127.0.0.1 as a cluster endpoint.
            "--endpoint-reconciler-type=none".to_owned(),
            format!("--cert-dir={}", path(&dir.join("kube-apiserver"))),
            format!("--tls-cert-file={}", path(&pki.apiserver.cert)),
            format!("--tls-private-key-file={}", path(&pki.apiserver.key)),
            // Client certificates are the authentication: admin = O=system:masters.
            format!("--client-ca-file={}", path(&pki.ca.cert)),
            // RBAC (not AlwaysAllow) so our RBAC manifests are really exercised.
            "--authorization-mode=RBAC".to_owned(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!(
                "--service-account-key-file={}",
                path(&pki.service_account_pub)
            ),
            format!(
                "--service-account-signing-key-file={}",
                path(&pki.service_account_key)
            ),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // The aggregation layer (APIServices such as the operator's external metrics API):
            // the apiserver proxies to them with the front-proxy client certificate and the user
            // in these headers, and publishes all of it in kube-system/
            // extension-apiserver-authentication, where the aggregated servers read whom to trust.
            // An APIService's Service of type ExternalName `localhost` makes the aggregator dial
            // a server on this machine (as kwok's binary runtime does); no routing flag is needed.
            format!(
                "--requestheader-client-ca-file={}",
                path(&pki.front_proxy_ca.cert)
            ),
            format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}"),
            "--requestheader-username-headers=X-Remote-User".to_owned(),
            "--requestheader-group-headers=X-Remote-Group".to_owned(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_owned(),
            format!(
                "--proxy-client-cert-file={}",
                path(&pki.front_proxy_client.cert)
            ),
            format!(
                "--proxy-client-key-file={}",
                path(&pki.front_proxy_client.key)
            ),
            "--allow-privileged=true".to_owned(),
            "--profiling=false".to_owned(),
        ]);

        let mut cluster = KubeCluster {
            admin_kubeconfig: admin_kubeconfig.clone(),
            apiserver_url: apiserver_url.clone(),
            full,
            crd_files,
            timeout,
            etcd_health: format!("{}/health", etcd_url(etcd_client)),
            controller_manager_health: String::new(),
            scheduler_health: String::new(),
            kwok_health: String::new(),
            rollouts_health: String::new(),
            rollouts_metrics: None,
            http: probe_client()?,
            client: None,
            etcd: Member::new(Component::Etcd, etcd, &logs),
            apiserver: Member::new(Component::KubeApiserver, apiserver, &logs),
            controller_manager: None,
            scheduler: None,
            kwok: None,
            rollouts: None,
        };
        if !full {
            return Ok(cluster);
        }

        let kcm_port = free_port()?;
        let kcm_kubeconfig = dir.join("kube-controller-manager.kubeconfig");
        kubeconfig::write(
            &kcm_kubeconfig,
            &apiserver_url,
            &pki.ca.cert,
            "system:kube-controller-manager",
            &pki.controller_manager,
        )?;
        let kcm = CommandSpec::new(tools.bin("kube-controller-manager")?, dir).args([
            format!("--kubeconfig={}", path(&kcm_kubeconfig)),
            // Delegated authn/authz for its own /metrics; /healthz stays anonymous.
            format!("--authentication-kubeconfig={}", path(&kcm_kubeconfig)),
            format!("--authorization-kubeconfig={}", path(&kcm_kubeconfig)),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={kcm_port}"),
            format!("--cert-dir={}", path(&dir.join("kube-controller-manager"))),
            // One instance per stack: a leader election would only delay the start.
            "--leader-elect=false".to_owned(),
            // Each controller acts as its own RBAC-bootstrapped service account (as in kubeadm),
            // which needs the token signer key and the CA published to namespaces.
            "--use-service-account-credentials=true".to_owned(),
            format!(
                "--service-account-private-key-file={}",
                path(&pki.service_account_key)
            ),
            format!("--root-ca-file={}", path(&pki.ca.cert)),
            format!("--cluster-signing-cert-file={}", path(&pki.ca.cert)),
            format!("--cluster-signing-key-file={}", path(&pki.ca.key)),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--cluster-name=orderpipe-e2e".to_owned(),
            // The node lifecycle controller lifts the new node's not-ready taint on its next
            // pass; every 5 s (the default) makes each stack start ~4 s slower.
            "--node-monitor-period=1s".to_owned(),
            // HPAs (reading the operator's lag metric) re-evaluate every 5 s instead of 15 s, so
            // a test sees a scale decision within seconds of the metric changing.
            "--horizontal-pod-autoscaler-sync-period=5s".to_owned(),
        ]);
        let kcm = kcm.args(rate_limit(controller_api_qps));

        let scheduler_port = free_port()?;
        let scheduler_kubeconfig = dir.join("kube-scheduler.kubeconfig");
        kubeconfig::write(
            &scheduler_kubeconfig,
            &apiserver_url,
            &pki.ca.cert,
            "system:kube-scheduler",
            &pki.scheduler,
        )?;
        let scheduler = CommandSpec::new(tools.bin("kube-scheduler")?, dir).args([
            format!("--kubeconfig={}", path(&scheduler_kubeconfig)),
            format!(
                "--authentication-kubeconfig={}",
                path(&scheduler_kubeconfig)
            ),
            format!("--authorization-kubeconfig={}", path(&scheduler_kubeconfig)),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={scheduler_port}"),
            "--leader-elect=false".to_owned(),
        ]);
        let scheduler = scheduler.args(rate_limit(controller_api_qps));

        let kwok_port = free_port()?;
        let mut kwok = CommandSpec::new(tools.bin("kwok")?, dir).args([
            format!("--kubeconfig={}", path(&admin_kubeconfig)),
            format!(
                "--manage-nodes-with-annotation-selector={}={}",
                KWOK_NODE_ANNOTATION.0, KWOK_NODE_ANNOTATION.1
            ),
            // Serves /healthz, our readiness probe.
            format!("--server-address=127.0.0.1:{kwok_port}"),
            "--node-ip=127.0.0.1".to_owned(),
            "--node-lease-duration-seconds=40".to_owned(),
        ]);
        // Without stages kwok fails with "no stages found"; they make nodes and pods Ready.
        for config in tools.kwok_configs()? {
            kwok = kwok.arg(format!("--config={}", path(&config)));
        }

        cluster.controller_manager_health = format!("https://127.0.0.1:{kcm_port}/healthz");
        cluster.scheduler_health = format!("https://127.0.0.1:{scheduler_port}/healthz");
        cluster.kwok_health = format!("http://127.0.0.1:{kwok_port}/healthz");
        cluster.controller_manager =
            Some(Member::new(Component::KubeControllerManager, kcm, &logs));
        cluster.scheduler = Some(Member::new(Component::KubeScheduler, scheduler, &logs));
        cluster.kwok = Some(Member::new(Component::Kwok, kwok, &logs));
        if argo_rollouts {
            let healthz_port = free_port()?;
            let metrics_port = free_port()?;
            let rollouts = CommandSpec::new(tools.bin("rollouts-controller")?, dir).args([
                format!("--kubeconfig={}", path(&admin_kubeconfig)),
                "--leader-elect=false".to_owned(),
                // The defaults (8080/8090) would collide between stacks.
                format!("--healthzPort={healthz_port}"),
                format!("--metricsPort={metrics_port}"),
                "--loglevel=warn".to_owned(),
            ]);
            cluster.rollouts_health = format!("http://127.0.0.1:{healthz_port}/healthz");
            cluster.rollouts_metrics = Some(format!("127.0.0.1:{metrics_port}"));
            cluster.rollouts = Some(Member::new(Component::RolloutsController, rollouts, &logs));
        }
        Ok(cluster)
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// `127.0.0.1:<port>` of the Argo Rollouts controller's `/metrics`, when it runs.
    pub fn rollouts_metrics_address(&self) -> Option<&str> {
        self.rollouts_metrics.as_deref()
    }

    pub fn apiserver_url(&self) -> &str {
        &self.apiserver_url
    }

    /// Starts everything in dependency order and waits until it all works.
    pub async fn start(&mut self) -> Result<()> {
        // Created before the apiserver runs (no connection yet); it reconnects across restarts.
        let client = kubeconfig::client(&self.admin_kubeconfig).await?;
        self.client = Some(client.clone());
        self.etcd.spawn()?;
        let (http, url) = (&self.http, &self.etcd_health);
        self.etcd
            .wait_ready("GET /health", self.timeout, || {
                http_ok(http, url, Some("\"health\":\"true\""))
            })
            .await?;
        self.start_apiserver().await?;

        if self.full {
            for member in [
                &mut self.controller_manager,
                &mut self.scheduler,
                &mut self.kwok,
            ]
            .into_iter()
            .flatten()
            {
                member.spawn()?;
            }
            let checks = [
                (
                    &mut self.controller_manager,
                    &self.controller_manager_health,
                ),
                (&mut self.scheduler, &self.scheduler_health),
                (&mut self.kwok, &self.kwok_health),
            ];
            for (member, url) in checks {
                if let Some(member) = member {
                    let http = &self.http;
                    member
                        .wait_ready("GET /healthz", self.timeout, || http_ok(http, url, None))
                        .await?;
                }
            }
            apply_node(&client).await?;
            let nodes: Api<Node> = Api::all(client.clone());
            if let Some(kwok) = self.kwok.as_mut() {
                kwok.wait_ready(
                    &format!("node {NODE_NAME} Ready without taints"),
                    self.timeout,
                    || async {
                        nodes
                            .get_opt(NODE_NAME)
                            .await
                            .ok()
                            .flatten()
                            .is_some_and(|n| node_schedulable(&n))
                    },
                )
                .await?;
            }
        }
        crds::install(&client, &self.crd_files, self.timeout).await?;
        // After the CRDs: the controller watches Rollouts and exits without their CRD.
        if let Some(rollouts) = self.rollouts.as_mut() {
            rollouts.spawn()?;
            let (http, url) = (&self.http, &self.rollouts_health);
            rollouts
                .wait_ready("GET /healthz", self.timeout, || http_ok(http, url, None))
                .await?;
        }
        Ok(())
    }

    /// The admin client.
    pub fn client(&self) -> Option<Client> {
        self.client.clone()
    }

    pub async fn start_apiserver(&mut self) -> Result<()> {
        let Some(client) = self.client.clone() else {
            return Err(StackError::NotInStack {
                component: "kube-apiserver client",
            });
        };
        self.apiserver.spawn()?;
        self.apiserver
            .wait_ready(
                "GET /readyz with the admin certificate",
                self.timeout,
                || {
                    let client = client.clone();
                    async move { readyz(&client).await }
                },
            )
            .await
    }

    pub async fn stop_apiserver(&mut self, grace: Duration) -> Result<()> {
        self.apiserver.stop(grace).await
    }

    pub fn members_mut(&mut self) -> Vec<&mut Member> {
        // Reverse start order: clients of the apiserver first, etcd last.
        let mut members: Vec<&mut Member> = Vec::new();
        members.extend(self.rollouts.as_mut());
        members.extend(self.kwok.as_mut());
        members.extend(self.scheduler.as_mut());
        members.extend(self.controller_manager.as_mut());
        members.push(&mut self.apiserver);
        members.push(&mut self.etcd);
        members
    }

    pub fn members(&self) -> Vec<&Member> {
        let mut members = vec![&self.etcd, &self.apiserver];
        members.extend(self.controller_manager.as_ref());
        members.extend(self.scheduler.as_ref());
        members.extend(self.kwok.as_ref());
        members.extend(self.rollouts.as_ref());
        members
    }

    pub async fn stop(&mut self, grace: Duration) -> Result<()> {
        // Dependents first, so they do not spend the grace period retrying a dead apiserver.
        let mut members = self.members_mut();
        let core_start = members.len() - 2;
        let (dependents, core) = members.split_at_mut(core_start);
        stop_members(dependents, grace).await?;
        stop_members(core, grace).await
    }
}

/// For local health endpoints only: the controller-manager and scheduler serve /healthz with
/// self-signed certificates, and a proxy from the environment must never see loopback traffic.
pub(crate) fn probe_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|error| StackError::Http {
            component: "health probe",
            error,
        })
}

pub(crate) async fn http_ok(
    http: &reqwest::Client,
    url: &str,
    body_contains: Option<&str>,
) -> bool {
    let Ok(response) = http.get(url).send().await else {
        return false;
    };
    if !response.status().is_success() {
        return false;
    }
    match body_contains {
        None => true,
        Some(needle) => response
            .text()
            .await
            .is_ok_and(|body| body.replace(' ', "").contains(needle)),
    }
}

async fn readyz(client: &Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client
        .request_text(request)
        .await
        .is_ok_and(|body| body.trim() == "ok")
}

async fn apply_node(client: &Client) -> Result<()> {
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {
                KWOK_NODE_ANNOTATION.0: KWOK_NODE_ANNOTATION.1,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        // No taints: every pod may land here. kwok fills in the status (capacity, Ready).
        "spec": {},
    });
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            NODE_NAME,
            &PatchParams::apply(crds::FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .map_err(|e| StackError::kube(format!("apply node {NODE_NAME}"), e))?;
    Ok(())
}

/// Ready, and the controller-manager has lifted its not-ready taints.
fn node_schedulable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let untainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_none_or(Vec::is_empty);
    ready && untainted
}
