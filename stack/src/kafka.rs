//! The Kafka half of a stack: one KRaft node (broker + controller) on loopback, formatted once and
//! restartable on the same ports and log dirs. Owns server.properties (as in
//! docs/testing: small internal topics, no auto-created topics) and the readiness check
//! (a metadata request that lists our broker). The broker serves its metrics through the Prometheus
//! JMX exporter agent, with the rules users get in `config/monitoring/kafka/jmx-exporter.yaml`.
//! Must not create topics: tests and the operator do.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use rand::distr::{Alphanumeric, SampleString};

use crate::component::{Component, Member};
use crate::error::{Result, StackError};
use crate::pki::KafkaTls;
use crate::ports::free_port;
use crate::process::{CommandSpec, Process, describe_exit, log_tail};
use crate::tools::Tools;
use crate::wait::try_wait_until;

const NODE_ID: u32 = 1;

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
    /// The TLS dir of a stack's work dir (see [`KafkaBroker::prepare`]).
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

#[derive(Debug)]
pub(crate) struct KafkaBroker {
    bootstrap: String,
    secure_bootstrap: String,
    metrics_address: String,
    dir: PathBuf,
    data_dir: PathBuf,
    properties: PathBuf,
    java: PathBuf,
    classpath: String,
    timeout: Duration,
    member: Member,
}

impl KafkaBroker {
    pub fn prepare(tools: &Tools, dir: &Path, timeout: Duration) -> Result<KafkaBroker> {
        let logs = dir.join("logs");
        fs::create_dir_all(&logs).map_err(|e| StackError::io("creating", &logs, e))?;
        let port = free_port()?;
        let secure_port = free_port()?;
        let controller_port = free_port()?;
        let metrics_port = free_port()?;
        let data_dir = dir.join("kafka-data");
        let tls_dir = SecureKafka::tls_dir(dir);
        let tls = KafkaTls::generate(&tls_dir)?;
        let password = Alphanumeric.sample_string(&mut rand::rng(), 24);
        let password_file = tls_dir.join("sasl-password");
        fs::write(&password_file, &password)
            .map_err(|e| StackError::io("writing", &password_file, e))?;
        let properties = dir.join("server.properties");
        let ports = Ports {
            plaintext: port,
            sasl_ssl: secure_port,
            controller: controller_port,
        };
        let secure = SecureListener {
            keystore: &tls.keystore,
            password: &password,
        };
        fs::write(&properties, server_properties(ports, &secure, &data_dir))
            .map_err(|e| StackError::io("writing", &properties, e))?;
        let classpath = tools.kafka_classpath()?;
        let java = java();
        let metrics_address = format!("127.0.0.1:{metrics_port}");
        // `-javaagent:<jar>=<host>:<port>:<rules>`: the agent serves /metrics from inside the JVM.
        let agent = format!(
            "-javaagent:{}={metrics_address}:{}",
            tools.jmx_exporter_agent()?.display(),
            jmx_exporter_rules().display()
        );
        let spec = CommandSpec::new(java.clone(), dir)
            .arg(agent)
            .args(jvm_args(&classpath))
            .args(["kafka.Kafka".to_owned(), properties.display().to_string()]);
        Ok(KafkaBroker {
            bootstrap: format!("127.0.0.1:{port}"),
            secure_bootstrap: format!("127.0.0.1:{secure_port}"),
            metrics_address,
            dir: dir.to_path_buf(),
            data_dir,
            properties,
            java,
            classpath,
            timeout,
            member: Member::new(Component::Kafka, spec, &logs),
        })
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// `127.0.0.1:<port>` of the SASL_SSL listener.
    pub fn secure_bootstrap(&self) -> &str {
        &self.secure_bootstrap
    }

    /// `127.0.0.1:<port>` of the JMX exporter's `/metrics`.
    pub fn metrics_address(&self) -> &str {
        &self.metrics_address
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    pub fn member_mut(&mut self) -> &mut Member {
        &mut self.member
    }

    /// Formats the log dir on first start, then starts the broker and waits for it.
    pub async fn start(&mut self) -> Result<()> {
        if !self.data_dir.join("meta.properties").exists() {
            self.format().await?;
        }
        self.member.spawn()?;
        let consumer: Arc<BaseConsumer> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", &self.bootstrap)
                .set("socket.timeout.ms", "2000")
                .create()
                .map_err(|e| StackError::kafka("readiness client", e))?,
        );
        self.member
            .wait_ready(
                &format!("metadata from {} listing broker {NODE_ID}", self.bootstrap),
                self.timeout,
                || {
                    let consumer = Arc::clone(&consumer);
                    async move {
                        tokio::task::spawn_blocking(move || {
                            consumer
                                .fetch_metadata(None, Duration::from_secs(2))
                                .is_ok_and(|m| m.brokers().iter().any(|b| b.id() == NODE_ID as i32))
                        })
                        .await
                        .unwrap_or(false)
                    }
                },
            )
            .await
    }

    /// `StorageTool format`, run as a supervised component so even this short JVM cannot orphan.
    async fn format(&self) -> Result<()> {
        let cluster_id = random_cluster_id();
        let spec = CommandSpec::new(self.java.clone(), &self.dir)
            .args(jvm_args(&self.classpath))
            .args([
                "kafka.tools.StorageTool".to_owned(),
                "format".to_owned(),
                "-t".to_owned(),
                cluster_id,
                "-c".to_owned(),
                self.properties.display().to_string(),
            ]);
        let log = self.dir.join("logs").join("kafka-format.log");
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

/// The broker's listener ports.
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

/// One combined broker+controller on loopback (see docs/testing: every line matters). Tests use
/// the PLAINTEXT listener; the SASL_SSL one (TLS + SASL/PLAIN, user [`SASL_USERNAME`]) proves the
/// clients' TLS and SASL settings against a real broker.
pub(crate) fn server_properties(
    ports: Ports,
    secure: &SecureListener<'_>,
    data_dir: &Path,
) -> String {
    let Ports {
        plaintext: port,
        sasl_ssl: secure_port,
        controller: controller_port,
    } = ports;
    let mut props = String::new();
    let lines = [
        "process.roles=broker,controller".to_owned(),
        format!("node.id={NODE_ID}"),
        format!("controller.quorum.voters={NODE_ID}@127.0.0.1:{controller_port}"),
        format!(
            "listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure_port},\
             CONTROLLER://127.0.0.1:{controller_port}"
        ),
        format!(
            "advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure_port}"
        ),
        "controller.listener.names=CONTROLLER".to_owned(),
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
        format!("log.dirs={}", data_dir.display()),
        // One broker: internal topics cannot have more replicas, and 50 partitions are slow.
        "offsets.topic.replication.factor=1".to_owned(),
        "offsets.topic.num.partitions=1".to_owned(),
        "transaction.state.log.replication.factor=1".to_owned(),
        "transaction.state.log.min.isr=1".to_owned(),
        "transaction.state.log.num.partitions=1".to_owned(),
        // Consumer groups in tests should not wait 3 s for more members.
        "group.initial.rebalance.delay.ms=0".to_owned(),
        // The operator must create topics; a typo in a test must not silently create one.
        "auto.create.topics.enable=false".to_owned(),
    ];
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

    #[test]
    fn server_properties_use_the_given_ports_and_no_auto_topics() {
        let ports = Ports {
            plaintext: 9092,
            sasl_ssl: 9094,
            controller: 9093,
        };
        let secure = SecureListener {
            keystore: Path::new("/tls/server-keystore.pem"),
            password: "pw",
        };
        let props = server_properties(ports, &secure, Path::new("/data"));
        assert!(props.contains(
            "listeners=PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094,CONTROLLER://127.0.0.1:9093\n"
        ));
        assert!(props.contains("controller.quorum.voters=1@127.0.0.1:9093\n"));
        assert!(props.contains("auto.create.topics.enable=false\n"));
        assert!(props.contains("log.dirs=/data\n"));
        assert!(props.contains("user_orderpipe=\"pw\";\n"));
        assert!(props.contains("ssl.keystore.location=/tls/server-keystore.pem\n"));
    }
}
