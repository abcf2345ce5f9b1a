//! The `orderpipe-worker` binary: `run` (one pipeline stage, configured by the worker contract's
//! environment), `intake` (the pipeline's HTTP gateway), `openapi` (the gateway's API document)
//! and `loadgen` (seeded input for a stage). Owns the command line, logging, signals
//! and exit codes; must not contain stage or loop logic.
//!
//! The same source builds the test binary `orderpipe-worker-faulty`, a deliberately bad release
//! for the canary tests (`stage::fault`): the binary's name, fixed at compile time, is the only
//! switch, so a renamed file or any environment leaves `orderpipe-worker` sound.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use orderpipe_api::contract::{KafkaConnection, WorkerConfig};
use orderpipe_orders::generator::{EventConfig, GenConfig};
use orderpipe_worker::WorkerError;
use orderpipe_worker::intake::{self, IntakeArgs};
use orderpipe_worker::loadgen::{self, LoadMode, LoadSpec};
use orderpipe_worker::stage::fault::Release;
use tokio_util::sync::CancellationToken;

// glibc's malloc took a fifth of the worker's CPU on the validate benchmark (perf: _int_malloc,
// unlink_chunk, _int_free, malloc_consolidate): records and their outputs are allocated on one
// thread and freed on another (driver, partition workers, librdkafka's threads). It also replaces
// malloc/free for the C libraries (the workspace's `override` feature): librdkafka copies every
// produced record into a malloc'd message that its broker thread frees. Built without its
// transparent-huge-page requests (`no_thp`): they inflated peak RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "orderpipe-worker",
    version,
    about = "One stage of an order pipeline"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "ORDERPIPE_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the stage described by the ORDERPIPE_* environment (the operator-to-worker contract).
    Run,
    /// Run the intake gateway: shops POST orders and GET their status (docs/intake.md).
    Intake(IntakeArgs),
    /// Print the intake gateway's OpenAPI document (committed as docs/intake.openapi.json).
    Openapi,
    /// Produce seeded orders or status events to a topic.
    Loadgen(LoadgenArgs),
}

#[derive(Debug, Args)]
struct LoadgenArgs {
    #[arg(long)]
    bootstrap_servers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, value_enum, default_value = "orders")]
    mode: LoadMode,
    /// Records per second; 0 for as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Records to produce.
    #[arg(long)]
    count: u64,
    /// status-events: orders whose life cycles are interleaved at any time.
    #[arg(long)]
    keys: Option<usize>,
    /// orders: invalid submissions; status-events: orders with an illegal event.
    #[arg(long, value_parser = share)]
    invalid_share: Option<f64>,
    /// orders: payloads that are not an order (status-events: not supported).
    #[arg(long, value_parser = share)]
    garbage_share: Option<f64>,
    /// orders: re-submissions; status-events: re-deliveries of an accepted event.
    #[arg(long, value_parser = share)]
    duplicate_share: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn share(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{value:?} is not a share between 0 and 1")),
    }
}

impl LoadgenArgs {
    fn spec(&self) -> Result<LoadSpec, String> {
        let (keys, invalid, garbage, duplicate) = match self.mode {
            LoadMode::Orders => {
                if self.keys.is_some() {
                    return Err(
                        "--keys applies to --mode status-events (orders are keyed by \
                                their unique order id)"
                            .to_owned(),
                    );
                }
                let defaults = GenConfig::default();
                (
                    1,
                    self.invalid_share.unwrap_or(defaults.invalid_share),
                    self.garbage_share.unwrap_or(defaults.garbage_share),
                    self.duplicate_share.unwrap_or(defaults.duplicate_share),
                )
            }
            LoadMode::StatusEvents => {
                if self.garbage_share.is_some_and(|share| share > 0.0) {
                    return Err("--garbage-share applies to --mode orders".to_owned());
                }
                let defaults = EventConfig::default();
                (
                    self.keys.unwrap_or(1_000),
                    self.invalid_share.unwrap_or(defaults.illegal_share),
                    0.0,
                    self.duplicate_share.unwrap_or(defaults.duplicate_share),
                )
            }
        };
        Ok(LoadSpec {
            mode: self.mode,
            count: self.count,
            rate: (self.rate > 0).then_some(self.rate),
            keys,
            invalid_share: invalid,
            garbage_share: garbage,
            duplicate_share: duplicate,
            seed: self.seed,
        })
    }
}

/// `pub` for `orderpipe-worker-faulty`, which compiles this file as a module.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run => run(),
        Command::Intake(args) => run_intake(args),
        Command::Openapi => {
            print!("{}", intake::http::openapi_document());
            ExitCode::SUCCESS
        }
        Command::Loadgen(args) => loadgen(&args),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    // Spans log their busy and idle time when they close. The loop's spans (poll, process,
    // produce, send_offsets, commit...) are at debug and trace level, off by default: e.g.
    // RUST_LOG=info,orderpipe_worker=debug shows where a transaction's time goes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn async_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orderpipe-worker")
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("error: starting the async runtime failed: {error}");
            None
        }
    }
}

fn run_intake(args: IntakeArgs) -> ExitCode {
    let kafka = match KafkaConnection::from_env(|name| std::env::var(name).ok()) {
        Ok(kafka) => kafka,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = async_runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async { intake::run(args, kafka, shutdown_on_signals()).await });
    match result {
        Ok(()) => {
            tracing::info!("intake gateway stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "intake gateway failed");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> ExitCode {
    let config = match WorkerConfig::from_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => return fail(&WorkerError::from(error)),
    };
    let Some(runtime) = async_runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_on_signals();
        let release = Release::of_binary(env!("CARGO_BIN_NAME"));
        orderpipe_worker::app::run(config, release, shutdown).await
    });
    match result {
        Ok(()) => {
            tracing::info!("worker stopped");
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

fn fail(error: &WorkerError) -> ExitCode {
    tracing::error!(%error, "worker failed");
    eprintln!("error: {error}");
    ExitCode::from(error.exit_code())
}

/// Cancelled on SIGTERM (Kubernetes stopping the pod) or SIGINT.
fn shutdown_on_signals() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = terminate => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    shutdown
}

fn loadgen(args: &LoadgenArgs) -> ExitCode {
    let spec = match args.spec() {
        Ok(spec) => spec,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let connection = KafkaConnection::plaintext(&args.bootstrap_servers);
    let result = loadgen::produce(&connection, &args.topic, &spec, |progress| {
        let seconds = progress.elapsed.as_secs_f64().max(0.001);
        eprintln!(
            "produced {}/{} (acknowledged {}, failed {}) in {:.1}s, {:.0} records/s",
            progress.sent,
            spec.count,
            progress.acknowledged,
            progress.failed,
            seconds,
            progress.acknowledged as f64 / seconds,
        );
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
