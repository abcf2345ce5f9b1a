//! The Kafka half of a stack: one KRaft node (broker + controller) on loopback, formatted once and
//! restartable on the same ports and log dirs. Owns server.properties (as in
//! docs/testing: small internal topics, no auto-created topics) and the readiness check
//! (a metadata request that lists our broker). Must not create topics: tests and the operator do.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::component::{Component, Member};
use crate::error::{E2eError, Result};
use crate::ports::free_port;
use crate::process::{CommandSpec, Process, describe_exit, log_tail};
use crate::tools::Tools;
use crate::wait::try_wait_until;

const NODE_ID: u32 = 1;

#[derive(Debug)]
pub(crate) struct KafkaBroker {
    bootstrap: String,
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
        fs::create_dir_all(&logs).map_err(|e| E2eError::io("creating", &logs, e))?;
        let port = free_port()?;
        let controller_port = free_port()?;
        let data_dir = dir.join("kafka-data");
        let properties = dir.join("server.properties");
        fs::write(
            &properties,
            server_properties(port, controller_port, &data_dir),
        )
        .map_err(|e| E2eError::io("writing", &properties, e))?;
        let classpath = tools.kafka_classpath()?;
        let java = java();
        let spec = CommandSpec::new(java.clone(), dir)
            .args(jvm_args(&classpath))
            .args(["kafka.Kafka".to_owned(), properties.display().to_string()]);
        Ok(KafkaBroker {
            bootstrap: format!("127.0.0.1:{port}"),
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
                .map_err(|e| E2eError::kafka("readiness client", e))?,
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
            Err(E2eError::ExitedEarly {
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

/// One combined broker+controller on loopback (see docs/testing: every line matters).
pub(crate) fn server_properties(port: u16, controller_port: u16, data_dir: &Path) -> String {
    let mut props = String::new();
    let lines = [
        "process.roles=broker,controller".to_owned(),
        format!("node.id={NODE_ID}"),
        format!("controller.quorum.voters={NODE_ID}@127.0.0.1:{controller_port}"),
        format!("listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"),
        format!("advertised.listeners=PLAINTEXT://127.0.0.1:{port}"),
        "controller.listener.names=CONTROLLER".to_owned(),
        "inter.broker.listener.name=PLAINTEXT".to_owned(),
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".to_owned(),
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
        let props = server_properties(9092, 9093, Path::new("/data"));
        assert!(
            props.contains("listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n")
        );
        assert!(props.contains("controller.quorum.voters=1@127.0.0.1:9093\n"));
        assert!(props.contains("auto.create.topics.enable=false\n"));
        assert!(props.contains("log.dirs=/data\n"));
    }
}
