//! The four processes compared on the validate stage, and how each is started against one set of
//! topics: our worker exactly-once and at-least-once (the release binary, configured through the
//! worker contract's environment), the raw librdkafka copy (`orderpipe-bench raw-copy`) and the
//! Kafka Streams application (`bench/streams`, compiled here against the broker's own jars).
//! Must not measure anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use orderpipe_api::contract::env;

/// A process the validate stage could be run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    ExactlyOnce,
    AtLeastOnce,
    RawCopy,
    Streams,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::ExactlyOnce,
        Variant::AtLeastOnce,
        Variant::RawCopy,
        Variant::Streams,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::ExactlyOnce => "(a) worker exactly-once",
            Variant::AtLeastOnce => "(b) worker at-least-once",
            Variant::RawCopy => "(c) raw librdkafka copy",
            Variant::Streams => "(d) Kafka Streams exactly_once_v2",
        }
    }

    /// Its name in topics, groups and logs.
    pub fn slug(self) -> &'static str {
        match self {
            Variant::ExactlyOnce => "eos",
            Variant::AtLeastOnce => "alo",
            Variant::RawCopy => "raw",
            Variant::Streams => "streams",
        }
    }
}

/// The topics and group of one run of one variant; the input may be shared between runs.
#[derive(Debug, Clone)]
pub struct Run {
    pub variant: Variant,
    pub input: String,
    pub partitions: i32,
    pub commit_interval: Duration,
    /// `<run>.validated`, `.rejected`, `.events`, `.dlq`, `.state`; also the group id.
    pub name: String,
}

impl Run {
    pub fn new(
        variant: Variant,
        input: &str,
        partitions: i32,
        commit_interval: Duration,
        tag: &str,
    ) -> Self {
        Self {
            variant,
            input: input.to_owned(),
            partitions,
            commit_interval,
            name: format!("{tag}.{}", variant.slug()),
        }
    }

    pub fn topic(&self, output: &str) -> String {
        format!("{}.{output}", self.name)
    }

    pub fn group(&self) -> &str {
        &self.name
    }

    /// The topics this run writes (Kafka Streams creates its own changelog topic).
    pub fn outputs(&self) -> Vec<(String, i32)> {
        let per_partition = ["validated", "events", "state"];
        let single = ["rejected", "dlq"];
        per_partition
            .iter()
            .map(|name| (self.topic(name), self.partitions))
            .chain(single.iter().map(|name| (self.topic(name), 1)))
            .collect()
    }
}

/// What every worker stage is told through the contract's environment.
#[derive(Debug, Clone, Copy)]
pub struct StageEnv<'a> {
    /// Stage and processor name: `validate`, `status` or `notify`.
    pub stage: &'a str,
    pub input: &'a str,
    /// `ORDERPIPE_OUTPUTS`, e.g. `changes=<topic>`.
    pub outputs: &'a str,
    pub dead_letter: &'a str,
    pub group: &'a str,
    pub commit_interval: Duration,
}

/// Where the programs under test are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub bench: PathBuf,
    pub worker: PathBuf,
    /// `<classes dir>:<Kafka classpath>` of the Streams app.
    pub streams_classpath: String,
    pub work_dir: PathBuf,
    pub bootstrap: String,
}

impl Programs {
    /// The release binaries next to this one, and the Streams app compiled into `work_dir`.
    pub fn prepare(
        kafka_classpath: &str,
        work_dir: &Path,
        bootstrap: &str,
    ) -> anyhow::Result<Self> {
        let bench = std::env::current_exe().context("locating orderpipe-bench")?;
        let worker = bench.with_file_name("orderpipe-worker");
        ensure!(
            worker.exists(),
            "{} is missing: make bench builds it",
            worker.display()
        );
        let classes = work_dir.join("streams-classes");
        compile_streams(kafka_classpath, &classes)?;
        Ok(Self {
            bench,
            worker,
            streams_classpath: format!("{}:{kafka_classpath}", classes.display()),
            work_dir: work_dir.to_owned(),
            bootstrap: bootstrap.to_owned(),
        })
    }

    /// The command that runs `run`'s variant (not started yet).
    pub fn command(&self, run: &Run) -> Command {
        let interval = run.commit_interval.as_millis().to_string();
        match run.variant {
            Variant::ExactlyOnce | Variant::AtLeastOnce => {
                let delivery = if run.variant == Variant::ExactlyOnce {
                    "exactly-once"
                } else {
                    "at-least-once"
                };
                let outputs = format!(
                    "validated={},rejected={},events={}",
                    run.topic("validated"),
                    run.topic("rejected"),
                    run.topic("events")
                );
                let mut command = self.worker(&StageEnv {
                    stage: "validate",
                    input: &run.input,
                    outputs: &outputs,
                    dead_letter: &run.topic("dlq"),
                    group: run.group(),
                    commit_interval: run.commit_interval,
                });
                command
                    .env(env::STATE_TOPIC, run.topic("state"))
                    .env(env::DELIVERY, delivery);
                command
            }
            Variant::RawCopy => {
                let mut command = Command::new(&self.bench);
                command
                    .arg("raw-copy")
                    .args(["--bootstrap", &self.bootstrap, "--input", &run.input])
                    .args(["--output", &run.topic("validated"), "--group", run.group()])
                    .args(["--commit-interval-ms", &interval]);
                command
            }
            Variant::Streams => {
                let currencies: Vec<String> = orderpipe_orders::currency::active_codes()
                    .filter_map(|code| {
                        orderpipe_orders::currency::minor_unit_exponent(code)
                            .map(|exponent| format!("{code}:{exponent}"))
                    })
                    .collect();
                let mut command = Command::new("java");
                command
                    .args(["-cp", &self.streams_classpath, "ValidateOrders"])
                    .env("BENCH_BOOTSTRAP", &self.bootstrap)
                    .env("BENCH_GROUP", run.group())
                    .env("BENCH_INPUT", &run.input)
                    .env("BENCH_VALIDATED", run.topic("validated"))
                    .env("BENCH_EVENTS", run.topic("events"))
                    .env("BENCH_REJECTED", run.topic("rejected"))
                    .env("BENCH_DLQ", run.topic("dlq"))
                    .env("BENCH_COMMIT_INTERVAL_MS", interval)
                    .env("BENCH_STATE_DIR", self.work_dir.join("streams-state"))
                    .env("BENCH_CURRENCIES", currencies.join(","));
                command
            }
        }
    }

    /// The release worker running `stage` per the worker contract's environment (exactly-once
    /// unless the caller sets `ORDERPIPE_DELIVERY`); callers add the stage's own variables.
    pub fn worker(&self, stage: &StageEnv<'_>) -> Command {
        let mut command = Command::new(&self.worker);
        command
            .arg("run")
            // ORDERPIPE_BENCH_WORKER_LOG=info,orderpipe_worker=debug logs the loop's spans (the
            // logs stay in the bench's work dir).
            .env(
                "RUST_LOG",
                std::env::var("ORDERPIPE_BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .env(env::PIPELINE, "bench")
            .env(env::NAMESPACE, "bench")
            .env(env::STAGE, stage.stage)
            .env(env::POD_NAME, "bench-0")
            .env(env::PROCESSOR, stage.stage)
            .env(env::BOOTSTRAP_SERVERS, &self.bootstrap)
            .env(env::INPUT_TOPIC, stage.input)
            .env(env::OUTPUTS, stage.outputs)
            .env(env::DEAD_LETTER_TOPIC, stage.dead_letter)
            .env(env::CONSUMER_GROUP, stage.group)
            .env(env::METRICS_PORT, "0")
            .env(
                env::COMMIT_INTERVAL_MS,
                stage.commit_interval.as_millis().to_string(),
            );
        command
    }

    pub fn log(&self, run: &Run, kind: &str) -> PathBuf {
        self.work_dir.join(format!("{}.{kind}.log", run.name))
    }
}

/// `javac` of bench/streams against the broker's classpath (which has kafka-streams and Jackson).
fn compile_streams(kafka_classpath: &str, classes: &Path) -> anyhow::Result<()> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("streams/ValidateOrders.java");
    let output = Command::new("javac")
        .arg("-d")
        .arg(classes)
        .args(["-cp", kafka_classpath])
        .arg(&source)
        .output()
        .context("running javac (Java 17 is needed for the Kafka Streams baseline)")?;
    ensure!(
        output.status.success(),
        "javac {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
