//! The Kafka half of a stack: KRaft nodes on loopback, formatted once and restartable on the same
//! ports and log dirs. One broker (broker + controller in one process, internal topics without
//! replicas) by default; or a cluster of several brokers, each also a controller or next to
//! dedicated controllers, with Kafka's internal topics and the default for new topics replicated
//! (3 replicas, `min.insync.replicas=2` from three brokers on). Each node can be killed (SIGKILL),
//! paused (SIGSTOP) and resumed, stopped and restarted on its own. Owns the server.properties (as
//! in docs/testing: small internal topics, no auto-created topics) and the readiness checks (a
//! metadata request to a broker's own listener that lists the brokers). Must not create topics:
//! tests and the operator do (only a cluster's internal topics are created at start, so a fault
//! test never finds them missing while a broker is down). Every node serves its metrics through
//! the Prometheus JMX exporter agent, with the rules users get in
//! `config/monitoring/kafka/jmx-exporter.yaml`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;

use rand::distr::{Alphanumeric, SampleString};

use crate::component::{Component, MAX_KAFKA_NODES, Member};
use crate::error::{Result, StackError};
use crate::pki::KafkaTls;
use crate::ports::free_port;
use crate::process::{CommandSpec, Process, describe_exit, log_tail};
use crate::tools::Tools;
use crate::wait::{try_wait_until, wait_until_blocking};

/// The SASL/PLAIN user of the secure listener (its password is random per stack).
pub const SASL_USERNAME: &str = "orderpipe";

/// The broker's second listener, SASL_SSL: TLS with the stack's own Kafka CA, SASL/PLAIN. What
/// clients need to use it; the password stays in the work dir (`kafka-tls/sasl-password`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureKafka {
    pub bootstrap: String,
    pub ca_file: PathBuf,
    pub username: String,
    pub password: String,
}

impl SecureKafka {
    /// The TLS dir of a stack's work dir (see [`KafkaCluster::prepare`]).
    pub(crate) fn tls_dir(work_dir: &Path) -> PathBuf {
        work_dir.join("kafka-tls")
    }

    /// Reads the CA path and the password of the stack in `work_dir`.
    pub(crate) fn load(work_dir: &Path, bootstrap: &str) -> Result<SecureKafka> {
        let dir = Self::tls_dir(work_dir);
        let password_file = dir.join("sasl-password");
        let password = fs::read_to_string(&password_file)
            .map_err(|e| StackError::io("reading", &password_file, e))?;
        Ok(SecureKafka {
            bootstrap: bootstrap.to_owned(),
            ca_file: dir.join(KafkaTls::CA_FILE),
            username: SASL_USERNAME.to_owned(),
            password: password.trim().to_owned(),
        })
    }
}

/// How a multi-broker cluster runs its KRaft controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaControllers {
    /// Every broker is also a controller: the quorum is the brokers (a majority must run).
    Combined,
    /// This many controller-only nodes; the brokers are only brokers. With them, stopping a
    /// majority of the brokers leaves the quorum intact, so the controller can shrink ISRs.
    Dedicated(u8),
}

/// The shape of a stack's Kafka: how many brokers, and where the controllers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaTopology {
    pub brokers: u8,
    pub controllers: KafkaControllers,
}

impl KafkaTopology {
    /// One combined broker and controller, internal topics without replicas (the default).
    pub const SINGLE: KafkaTopology = KafkaTopology {
        brokers: 1,
        controllers: KafkaControllers::Combined,
    };

    /// Three combined brokers and controllers: internal topics and the default for new topics
    /// 3 replicas, `min.insync.replicas=2`.
    pub const HA: KafkaTopology = KafkaTopology {
        brokers: 3,
        controllers: KafkaControllers::Combined,
    };

    /// Replicas of the internal topics and the default of new topics: one per broker, at most 3.
    pub fn replication_factor(self) -> u8 {
        self.brokers.clamp(1, 3)
    }

    /// `min.insync.replicas` of the internal topics and the default of new topics: one fewer than
    /// the replicas (one broker may fail without stopping writes), at least 1.
    pub fn min_insync_replicas(self) -> u8 {
        self.replication_factor().saturating_sub(1).max(1)
    }

    pub(crate) fn validate(self) -> Result<()> {
        let controllers = match self.controllers {
            KafkaControllers::Combined => 1,
            KafkaControllers::Dedicated(n) => n,
        };
        let range = 1..=MAX_KAFKA_NODES;
        if range.contains(&self.brokers) && range.contains(&controllers) {
            Ok(())
        } else {
            Err(StackError::InvalidOption {
                reason: format!(
                    "a stack runs 1 to {MAX_KAFKA_NODES} Kafka brokers and 1 to {MAX_KAFKA_NODES} \
                     dedicated controllers, not {self:?}"
                ),
            })
        }
    }
}

/// Dedicated controller `n` has `node.id` `CONTROLLER_ID_BASE + n`.
const CONTROLLER_ID_BASE: u32 = 100;

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Broker and controller in one process.
    Combined,
    Broker,
    Controller,
}

impl Role {
    fn process_roles(self) -> &'static str {
        match self {
            Role::Combined => "broker,controller",
            Role::Broker => "broker",
            Role::Controller => "controller",
        }
    }

    fn is_broker(self) -> bool {
        self != Role::Controller
    }

    fn is_controller(self) -> bool {
        self != Role::Broker
    }
}

/// One broker of a running stack, as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaBrokerInfo {
    /// Its `node.id`, as metadata (and the kit's leader and coordinator helpers) name it.
    pub id: i32,
    pub component: Component,
    /// `127.0.0.1:<port>` of its PLAINTEXT listener.
    pub bootstrap: String,
    /// PID (= process group) while it runs.
    pub pid: Option<u32>,
    /// SIGSTOPped and not resumed yet.
    pub paused: bool,
}

/// One KRaft node: a broker, a controller, or both.
#[derive(Debug)]
struct KafkaNode {
    id: u32,
    role: Role,
    /// `127.0.0.1:<port>` of a broker's PLAINTEXT listener.
    bootstrap: Option<String>,
    /// `127.0.0.1:<port>` of a broker's SASL_SSL listener.
    secure_bootstrap: Option<String>,
    controller_port: u16,
    /// `127.0.0.1:<port>` of its JMX exporter's `/metrics`.
    metrics_address: String,
    data_dir: PathBuf,
    properties: PathBuf,
    member: Member,
}

impl KafkaNode {
    fn broker_id(&self) -> Option<i32> {
        self.role.is_broker().then_some(self.id as i32)
    }

    /// Waits until the node answers: a broker's own listener returns metadata listing `brokers`
    /// (a fresh client per attempt, so the answer comes from this node and no other); a
    /// controller accepts connections on its port.
    async fn wait_ready(&mut self, brokers: &[i32], timeout: Duration) -> Result<()> {
        match self.bootstrap.clone() {
            Some(bootstrap) => {
                let what = format!("metadata from {bootstrap} listing brokers {brokers:?}");
                let brokers = brokers.to_vec();
                self.member
                    .wait_ready(&what, timeout, || {
                        let (bootstrap, brokers) = (bootstrap.clone(), brokers.clone());
                        async move {
                            tokio::task::spawn_blocking(move || lists_brokers(&bootstrap, &brokers))
                                .await
                                .unwrap_or(false)
                        }
                    })
                    .await
            }
            None => {
                let address = format!("127.0.0.1:{}", self.controller_port);
                let what = format!("the controller listener {address} to accept connections");
                self.member
                    .wait_ready(&what, timeout, || {
                        let address = address.clone();
                        async move { tokio::net::TcpStream::connect(address).await.is_ok() }
                    })
                    .await
            }
        }
    }
}

/// Whether a client bootstrapped from `bootstrap` alone gets metadata listing every broker.
fn lists_brokers(bootstrap: &str, brokers: &[i32]) -> bool {
    let Ok(consumer) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "2000")
        .create::<BaseConsumer>()
    else {
        return false;
    };
    consumer
        .fetch_metadata(None, Duration::from_secs(2))
        .is_ok_and(|m| {
            brokers
                .iter()
                .all(|id| m.brokers().iter().any(|b| b.id() == *id))
        })
}

/// The Kafka of a stack: its nodes and how to reach its brokers.
#[derive(Debug)]
pub(crate) struct KafkaCluster {
    topology: KafkaTopology,
    nodes: Vec<KafkaNode>,
    /// Every broker's PLAINTEXT listener, comma-separated: the bootstrap list clients get.
    bootstrap: String,
    /// Every broker's SASL_SSL listener, comma-separated.
    secure_bootstrap: String,
    cluster_id: String,
    dir: PathBuf,
    java: PathBuf,
    classpath: String,
    timeout: Duration,
}

impl KafkaCluster {
    pub fn prepare(
        tools: &Tools,
        dir: &Path,
        topology: KafkaTopology,
        timeout: Duration,
    ) -> Result<KafkaCluster> {
        topology.validate()?;
        let logs = dir.join("logs");
        fs::create_dir_all(&logs).map_err(|e| StackError::io("creating", &logs, e))?;
        let tls_dir = SecureKafka::tls_dir(dir);
        let tls = KafkaTls::generate(&tls_dir)?;
        let password = Alphanumeric.sample_string(&mut rand::rng(), 24);
        let password_file = tls_dir.join("sasl-password");
        fs::write(&password_file, &password)
            .map_err(|e| StackError::io("writing", &password_file, e))?;
        let secure = SecureListener {
            keystore: &tls.keystore,
            password: &password,
        };
        let classpath = tools.kafka_classpath()?;
        let java = java();

        let shape = node_shape(topology);
        let mut ports = Vec::new();
        for (_, _, role) in &shape {
            let (plaintext, sasl_ssl) = if role.is_broker() {
                (free_port()?, free_port()?)
            } else {
                (0, 0)
            };
            ports.push(Ports {
                plaintext,
                sasl_ssl,
                controller: free_port()?,
            });
        }
        let voters = shape
            .iter()
            .zip(&ports)
            .filter(|((_, _, role), _)| role.is_controller())
            .map(|((_, id, _), ports)| format!("{id}@127.0.0.1:{}", ports.controller))
            .collect::<Vec<_>>()
            .join(",");

        let single = topology == KafkaTopology::SINGLE;
        let mut nodes = Vec::new();
        for ((component, id, role), ports) in shape.into_iter().zip(ports) {
            // The one-broker stack keeps the file names it always had.
            let (data_dir, properties) = if single {
                (dir.join("kafka-data"), dir.join("server.properties"))
            } else {
                (
                    dir.join("kafka-data").join(component.name()),
                    dir.join(format!("{}.properties", component.name())),
                )
            };
            let node = NodeConfig {
                id,
                role,
                ports,
                voters: &voters,
                topology,
            };
            fs::write(&properties, server_properties(&node, &secure, &data_dir))
                .map_err(|e| StackError::io("writing", &properties, e))?;
            let metrics_address = format!("127.0.0.1:{}", free_port()?);
            // `-javaagent:<jar>=<host>:<port>:<rules>`: the agent serves /metrics from the JVM.
            let agent = format!(
                "-javaagent:{}={metrics_address}:{}",
                tools.jmx_exporter_agent()?.display(),
                jmx_exporter_rules().display()
            );
            let spec = CommandSpec::new(java.clone(), dir)
                .arg(agent)
                .args(jvm_args(&classpath))
                .args(["kafka.Kafka".to_owned(), properties.display().to_string()]);
            let listener = |port: u16| role.is_broker().then(|| format!("127.0.0.1:{port}"));
            nodes.push(KafkaNode {
                id,
                role,
                bootstrap: listener(ports.plaintext),
                secure_bootstrap: listener(ports.sasl_ssl),
                controller_port: ports.controller,
                metrics_address,
                data_dir,
                properties,
                member: Member::new(component, spec, &logs),
            });
        }
        let joined = |listener: fn(&KafkaNode) -> Option<&String>| {
            nodes
                .iter()
                .filter_map(listener)
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        };
        Ok(KafkaCluster {
            topology,
            bootstrap: joined(|n| n.bootstrap.as_ref()),
            secure_bootstrap: joined(|n| n.secure_bootstrap.as_ref()),
            nodes,
            cluster_id: random_cluster_id(),
            dir: dir.to_path_buf(),
            java,
            classpath,
            timeout,
        })
    }

    pub fn topology(&self) -> KafkaTopology {
        self.topology
    }

    /// Every broker's `127.0.0.1:<port>`, comma-separated.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Every broker's SASL_SSL `127.0.0.1:<port>`, comma-separated.
    pub fn secure_bootstrap(&self) -> &str {
        &self.secure_bootstrap
    }

    /// `127.0.0.1:<port>` of every node's JMX exporter `/metrics`.
    pub fn metrics_addresses(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .map(|n| n.metrics_address.as_str())
            .collect()
    }

    pub fn members(&self) -> Vec<&Member> {
        self.nodes.iter().map(|n| &n.member).collect()
    }

    pub fn members_mut(&mut self) -> Vec<&mut Member> {
        self.nodes.iter_mut().map(|n| &mut n.member).collect()
    }

    pub fn broker_ids(&self) -> Vec<i32> {
        self.nodes.iter().filter_map(KafkaNode::broker_id).collect()
    }

    pub fn brokers(&self) -> Vec<KafkaBrokerInfo> {
        self.nodes
            .iter()
            .filter_map(|node| {
                Some(KafkaBrokerInfo {
                    id: node.broker_id()?,
                    component: node.member.component(),
                    bootstrap: node.bootstrap.clone()?,
                    pid: node.member.pid(),
                    paused: node.member.is_paused(),
                })
            })
            .collect()
    }

    /// Formats the log dirs on first start, then starts every node that is not running and
    /// waits until each broker lists all brokers; a fresh multi-broker cluster then creates its
    /// internal topics (replicated while every broker runs).
    pub async fn start(&mut self) -> Result<()> {
        let first_start = self
            .nodes
            .iter()
            .any(|n| !n.data_dir.join("meta.properties").exists());
        let formats = self
            .nodes
            .iter()
            .filter(|n| !n.data_dir.join("meta.properties").exists())
            .map(|n| self.format(n));
        futures::future::try_join_all(formats).await?;
        // Controllers first: brokers register with them.
        for node in self.nodes.iter_mut().filter(|n| !n.role.is_broker()) {
            node.member.spawn()?;
        }
        for node in self.nodes.iter_mut().filter(|n| n.role.is_broker()) {
            node.member.spawn()?;
        }
        let brokers = self.broker_ids();
        let timeout = self.timeout;
        for node in &mut self.nodes {
            node.wait_ready(&brokers, timeout).await?;
        }
        if first_start && self.topology.brokers > 1 {
            let bootstrap = self.bootstrap.clone();
            let replicas = usize::from(self.topology.replication_factor());
            tokio::task::spawn_blocking(move || create_internal_topics(&bootstrap, replicas))
                .await
                .map_err(|error| StackError::Task {
                    what: "creating the internal topics".to_owned(),
                    error,
                })??;
        }
        Ok(())
    }

    /// Stops every node and waits for each to exit: brokers first, one at a time, each with a
    /// controlled shutdown (up to `grace`, then SIGKILL) while the controllers still have a
    /// quorum to grant it; a controller left without a quorum can never finish one and is
    /// SIGKILLed at once instead of waiting out the grace period. One broker: a plain stop.
    pub async fn stop(&mut self, grace: Duration) -> Result<()> {
        let voters = self.nodes.iter().filter(|n| n.role.is_controller()).count();
        let majority = voters / 2 + 1;
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|i| !self.nodes[*i].role.is_broker());
        for index in order {
            let running_voters = self
                .nodes
                .iter()
                .filter(|n| n.role.is_controller() && n.member.pid().is_some())
                .count();
            let node = &mut self.nodes[index];
            if node.role.is_controller() && running_voters < majority {
                node.member.kill()?;
            } else {
                node.member.stop(grace).await?;
            }
        }
        Ok(())
    }

    /// Starts broker `id` again (same ports, same log dir) and waits until its own listener
    /// lists it. Whether it has caught up with its partitions is the ISR's business
    /// (`crate::in_sync`).
    pub async fn start_broker(&mut self, id: i32) -> Result<()> {
        let timeout = self.timeout;
        let node = self.broker_mut(id)?;
        node.member.spawn()?;
        node.wait_ready(&[id], timeout).await
    }

    /// Stops broker `id` gracefully (controlled shutdown: it hands its leaderships over first).
    pub async fn stop_broker(&mut self, id: i32, grace: Duration) -> Result<()> {
        self.broker_mut(id)?.member.stop(grace).await
    }

    /// SIGKILLs broker `id`: no controlled shutdown, no flush.
    pub fn kill_broker(&mut self, id: i32) -> Result<()> {
        self.broker_mut(id)?.member.kill()
    }

    /// SIGSTOPs broker `id`: its connections stay open, it answers nothing.
    pub fn pause_broker(&mut self, id: i32) -> Result<()> {
        self.broker_mut(id)?.member.pause()
    }

    /// SIGCONTs broker `id` after [`KafkaCluster::pause_broker`].
    pub fn resume_broker(&mut self, id: i32) -> Result<()> {
        self.broker_mut(id)?.member.resume()
    }

    fn broker_mut(&mut self, id: i32) -> Result<&mut KafkaNode> {
        let brokers = self.broker_ids();
        self.nodes
            .iter_mut()
            .find(|n| n.broker_id() == Some(id))
            .ok_or(StackError::NoSuchBroker { id, brokers })
    }

    /// `StorageTool format`, run as a supervised component so even this short JVM cannot orphan.
    async fn format(&self, node: &KafkaNode) -> Result<()> {
        let spec = CommandSpec::new(self.java.clone(), &self.dir)
            .args(jvm_args(&self.classpath))
            .args([
                "kafka.tools.StorageTool".to_owned(),
                "format".to_owned(),
                "-t".to_owned(),
                self.cluster_id.clone(),
                "-c".to_owned(),
                node.properties.display().to_string(),
            ]);
        let log = self
            .dir
            .join("logs")
            .join(format!("{}-format.log", node.member.component().name()));
        let mut process = Process::spawn("kafka storage format", &spec, &log)?;
        let status = try_wait_until("kafka storage format to finish", self.timeout, || {
            let status = process.exit_status();
            async move { Ok(status) }
        })
        .await?;
        if status.success() {
            Ok(())
        } else {
            Err(StackError::ExitedEarly {
                component: "kafka storage format",
                status: describe_exit(status),
                log: log.clone(),
                tail: log_tail(&log, 40),
            })
        }
    }
}

/// `(component, node id, role)` of every node of `topology`; the one-broker stack keeps its
/// component name `kafka`.
fn node_shape(topology: KafkaTopology) -> Vec<(Component, u32, Role)> {
    let single = topology == KafkaTopology::SINGLE;
    let broker_role = match topology.controllers {
        KafkaControllers::Combined => Role::Combined,
        KafkaControllers::Dedicated(_) => Role::Broker,
    };
    let mut shape: Vec<(Component, u32, Role)> = (1..=topology.brokers)
        .map(|n| {
            let component = if single {
                Component::Kafka
            } else {
                Component::KafkaBroker(n)
            };
            (component, u32::from(n), broker_role)
        })
        .collect();
    if let KafkaControllers::Dedicated(count) = topology.controllers {
        shape.extend((1..=count).map(|n| {
            (
                Component::KafkaController(n),
                CONTROLLER_ID_BASE + u32::from(n),
                Role::Controller,
            )
        }));
    }
    shape
}

/// Creates `__consumer_offsets` (a consumer asking for its group's coordinator) and
/// `__transaction_state` (a transactional producer initialising), then waits until every
/// partition of both has `replicas` replicas in sync. Internal topics are otherwise created on
/// first use, which fails for a replicated one while a broker is down: a fault test must not
/// depend on which came first.
fn create_internal_topics(bootstrap: &str, replicas: usize) -> Result<()> {
    const WARM_UP: Duration = Duration::from_secs(60);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", "orderpipe-stack-warm-up")
        .create()
        .map_err(|e| StackError::kafka("warm-up producer", e))?;
    producer
        .init_transactions(WARM_UP)
        .map_err(|e| StackError::kafka("initialising a transactional producer", e))?;
    drop(producer);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "orderpipe-stack-warm-up")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| StackError::kafka("warm-up consumer", e))?;
    let mut probe = TopicPartitionList::new();
    probe.add_partition("__consumer_offsets", 0);
    // The group's coordinator lookup is what creates the topic; the answer does not matter.
    let _ = consumer.committed_offsets(probe, WARM_UP);
    for topic in ["__consumer_offsets", "__transaction_state"] {
        wait_until_blocking(
            &format!("{topic} with {replicas} in-sync replicas per partition"),
            WARM_UP,
            || {
                consumer
                    .fetch_metadata(Some(topic), Duration::from_secs(5))
                    .is_ok_and(|m| {
                        m.topics().iter().any(|t| {
                            t.name() == topic
                                && t.error().is_none()
                                && !t.partitions().is_empty()
                                && t.partitions().iter().all(|p| {
                                    p.leader() >= 0
                                        && p.replicas().len() == replicas
                                        && p.isr().len() == replicas
                                })
                        })
                    })
            },
        )?;
    }
    Ok(())
}

/// `$JAVA_HOME/bin/java` when set, else `java` from PATH.
fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .filter(|home| !home.is_empty())
        .map_or_else(
            || PathBuf::from("java"),
            |home| PathBuf::from(home).join("bin").join("java"),
        )
}

/// The exporter rules shipped for users' brokers (Strimzi's `metricsConfig`, a Confluent or
/// plain broker's agent); the local broker uses the very same file.
fn jmx_exporter_rules() -> PathBuf {
    crate::tools::workspace_root().join("config/monitoring/kafka/jmx-exporter.yaml")
}

/// A small heap and the serial collector start in seconds and leave the 2 cores to the tests.
fn jvm_args(classpath: &str) -> Vec<String> {
    vec![
        "-Xmx512m".to_owned(),
        "-XX:+UseSerialGC".to_owned(),
        "-Djava.awt.headless=true".to_owned(),
        "-cp".to_owned(),
        classpath.to_owned(),
    ]
}

/// A node's listener ports (the broker ones are 0 on a controller-only node).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub plaintext: u16,
    pub sasl_ssl: u16,
    pub controller: u16,
}

/// What the SASL_SSL listener needs.
#[derive(Debug)]
pub(crate) struct SecureListener<'a> {
    pub keystore: &'a Path,
    pub password: &'a str,
}

/// One node's place in the cluster.
#[derive(Debug)]
pub(crate) struct NodeConfig<'a> {
    pub id: u32,
    pub role: Role,
    pub ports: Ports,
    /// `controller.quorum.voters`: `id@127.0.0.1:port` of every controller.
    pub voters: &'a str,
    pub topology: KafkaTopology,
}

/// One KRaft node on loopback (see docs/testing: every line matters). Tests use the PLAINTEXT
/// listener; the SASL_SSL one (TLS + SASL/PLAIN, user [`SASL_USERNAME`]) proves the clients' TLS
/// and SASL settings against a real broker.
pub(crate) fn server_properties(
    node: &NodeConfig<'_>,
    secure: &SecureListener<'_>,
    data_dir: &Path,
) -> String {
    let Ports {
        plaintext: port,
        sasl_ssl: secure_port,
        controller: controller_port,
    } = node.ports;
    let replicas = node.topology.replication_factor();
    let min_isr = node.topology.min_insync_replicas();
    // One partition per broker: 50 are slow to create and load, one would put every group's
    // and every transactional id's coordinator on the same broker.
    let internal_partitions = node.topology.brokers;
    let mut lines = vec![
        format!("process.roles={}", node.role.process_roles()),
        format!("node.id={}", node.id),
        format!("controller.quorum.voters={}", node.voters),
        "controller.listener.names=CONTROLLER".to_owned(),
        format!("log.dirs={}", data_dir.display()),
    ];
    let mut listeners = Vec::new();
    if node.role.is_broker() {
        listeners.push(format!("PLAINTEXT://127.0.0.1:{port}"));
        listeners.push(format!("SASL_SSL://127.0.0.1:{secure_port}"));
    }
    if node.role.is_controller() {
        listeners.push(format!("CONTROLLER://127.0.0.1:{controller_port}"));
    }
    lines.push(format!("listeners={}", listeners.join(",")));
    if node.role.is_broker() {
        lines.extend([
            format!(
                "advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure_port}"
            ),
            "inter.broker.listener.name=PLAINTEXT".to_owned(),
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL"
                .to_owned(),
            "listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN".to_owned(),
            format!(
                "listener.name.sasl_ssl.plain.sasl.jaas.config=\
                 org.apache.kafka.common.security.plain.PlainLoginModule required \
                 user_{SASL_USERNAME}=\"{}\";",
                secure.password
            ),
            "listener.name.sasl_ssl.ssl.keystore.type=PEM".to_owned(),
            format!(
                "listener.name.sasl_ssl.ssl.keystore.location={}",
                secure.keystore.display()
            ),
            // Internal topics: as many replicas as the cluster allows (one broker: none).
            format!("offsets.topic.replication.factor={replicas}"),
            format!("offsets.topic.num.partitions={internal_partitions}"),
            format!("transaction.state.log.replication.factor={replicas}"),
            format!("transaction.state.log.min.isr={min_isr}"),
            format!("transaction.state.log.num.partitions={internal_partitions}"),
            // Consumer groups in tests should not wait 3 s for more members.
            "group.initial.rebalance.delay.ms=0".to_owned(),
            // The operator must create topics; a typo in a test must not silently create one.
            "auto.create.topics.enable=false".to_owned(),
        ]);
    } else {
        lines.push("listener.security.protocol.map=CONTROLLER:PLAINTEXT".to_owned());
    }
    // Every node: in KRaft the controller applies the defaults of a topic created without its
    // own settings (what production recommends), the brokers enforce them.
    lines.extend([
        format!("default.replication.factor={replicas}"),
        format!("min.insync.replicas={min_isr}"),
        // A replica that was out of the ISR never becomes leader: no silent loss.
        "unclean.leader.election.enable=false".to_owned(),
    ]);
    let mut props = String::new();
    for line in lines {
        let _ = writeln!(props, "{line}");
    }
    props
}

/// A Kafka cluster ID: 16 random bytes, URL-safe base64 without padding (22 characters), never
/// starting with `-`: StorageTool's argument parser would read such an ID as an option (and Kafka's
/// own `Uuid.randomUuid` avoids it for the same reason).
fn random_cluster_id() -> String {
    loop {
        let id = encode_cluster_id(rand::random());
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn encode_cluster_id(bytes: [u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = String::with_capacity(22);
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(char::from(ALPHABET[((bits >> nbits) & 63) as usize]));
        }
    }
    if nbits > 0 {
        out.push(char::from(ALPHABET[((bits << (6 - nbits)) & 63) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_is_22_url_safe_characters() {
        let id = random_cluster_id();
        assert_eq!(id.len(), 22, "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(id, random_cluster_id());
    }

    #[test]
    fn cluster_id_never_starts_with_a_dash() {
        // 0xF8 in the first byte encodes to '-' (62) as the first character.
        assert!(encode_cluster_id([0xF8; 16]).starts_with('-'));
        assert!((0..500).all(|_| !random_cluster_id().starts_with('-')));
    }

    fn secure() -> SecureListener<'static> {
        SecureListener {
            keystore: Path::new("/tls/server-keystore.pem"),
            password: "pw",
        }
    }

    #[test]
    fn server_properties_use_the_given_ports_and_no_auto_topics() {
        let node = NodeConfig {
            id: 1,
            role: Role::Combined,
            ports: Ports {
                plaintext: 9092,
                sasl_ssl: 9094,
                controller: 9093,
            },
            voters: "1@127.0.0.1:9093",
            topology: KafkaTopology::SINGLE,
        };
        let props = server_properties(&node, &secure(), Path::new("/data"));
        assert!(props.contains(
            "listeners=PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094,CONTROLLER://127.0.0.1:9093\n"
        ));
        assert!(props.contains("process.roles=broker,controller\n"));
        assert!(props.contains("controller.quorum.voters=1@127.0.0.1:9093\n"));
        assert!(props.contains("auto.create.topics.enable=false\n"));
        assert!(props.contains("log.dirs=/data\n"));
        assert!(props.contains("user_orderpipe=\"pw\";\n"));
        assert!(props.contains("ssl.keystore.location=/tls/server-keystore.pem\n"));
        // One broker: nothing can be replicated.
        assert!(props.contains("offsets.topic.replication.factor=1\n"));
        assert!(props.contains("transaction.state.log.min.isr=1\n"));
        assert!(props.contains("min.insync.replicas=1\n"));
    }

    #[test]
    fn a_three_broker_cluster_replicates_internal_topics_and_new_topics_by_default() {
        let node = NodeConfig {
            id: 2,
            role: Role::Combined,
            ports: Ports {
                plaintext: 9192,
                sasl_ssl: 9194,
                controller: 9193,
            },
            voters: "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293",
            topology: KafkaTopology::HA,
        };
        let props = server_properties(&node, &secure(), Path::new("/data/kafka-2"));
        for line in [
            "node.id=2",
            "controller.quorum.voters=1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293",
            "offsets.topic.replication.factor=3",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=3",
            "transaction.state.log.min.isr=2",
            "default.replication.factor=3",
            "min.insync.replicas=2",
            "unclean.leader.election.enable=false",
        ] {
            assert!(props.contains(&format!("{line}\n")), "{line} in\n{props}");
        }
    }

    #[test]
    fn dedicated_controllers_listen_only_on_the_controller_listener() {
        let topology = KafkaTopology {
            brokers: 3,
            controllers: KafkaControllers::Dedicated(1),
        };
        let shape = node_shape(topology);
        assert_eq!(
            shape,
            [
                (Component::KafkaBroker(1), 1, Role::Broker),
                (Component::KafkaBroker(2), 2, Role::Broker),
                (Component::KafkaBroker(3), 3, Role::Broker),
                (Component::KafkaController(1), 101, Role::Controller),
            ]
        );
        let controller = NodeConfig {
            id: 101,
            role: Role::Controller,
            ports: Ports {
                plaintext: 0,
                sasl_ssl: 0,
                controller: 9393,
            },
            voters: "101@127.0.0.1:9393",
            topology,
        };
        let props = server_properties(&controller, &secure(), Path::new("/c"));
        assert!(props.contains("process.roles=controller\n"));
        assert!(props.contains("default.replication.factor=3\n"));
        assert!(props.contains("min.insync.replicas=2\n"));
        assert!(props.contains("listeners=CONTROLLER://127.0.0.1:9393\n"));
        assert!(!props.contains("advertised.listeners"));
        let broker = NodeConfig {
            id: 1,
            role: Role::Broker,
            ports: Ports {
                plaintext: 9092,
                sasl_ssl: 9094,
                controller: 9093,
            },
            voters: "101@127.0.0.1:9393",
            topology,
        };
        let props = server_properties(&broker, &secure(), Path::new("/b"));
        assert!(props.contains("process.roles=broker\n"));
        assert!(props.contains("listeners=PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094\n"));
    }

    #[test]
    fn the_one_broker_stack_keeps_its_component_name_and_topologies_are_bounded() {
        assert_eq!(
            node_shape(KafkaTopology::SINGLE),
            [(Component::Kafka, 1, Role::Combined)]
        );
        assert_eq!(KafkaTopology::HA.replication_factor(), 3);
        assert_eq!(KafkaTopology::HA.min_insync_replicas(), 2);
        let two = KafkaTopology {
            brokers: 2,
            controllers: KafkaControllers::Combined,
        };
        assert_eq!(
            (two.replication_factor(), two.min_insync_replicas()),
            (2, 1)
        );
        let five = KafkaTopology {
            brokers: 5,
            controllers: KafkaControllers::Combined,
        };
        assert_eq!(
            (five.replication_factor(), five.min_insync_replicas()),
            (3, 2)
        );
        assert!(KafkaTopology::SINGLE.validate().is_ok());
        for bad in [
            KafkaTopology {
                brokers: 0,
                controllers: KafkaControllers::Combined,
            },
            KafkaTopology {
                brokers: 10,
                controllers: KafkaControllers::Combined,
            },
            KafkaTopology {
                brokers: 3,
                controllers: KafkaControllers::Dedicated(0),
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
