//! `orderpipe-bench` (`make bench`): measures the worker, the operator and the intake gateway on the
//! local real stack, side by side with the baselines a user would pick instead, in one run on one
//! broker, and writes a markdown report (also printed) with the machine's core count and the versions involved.
//! Ratios measured in one run are the numbers that count on a shared, noisy machine.

mod autoscale;
mod intake;
mod operator;
mod raw_copy;
mod report;
mod stage_cost;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use report::Section;

#[derive(Debug, Parser)]
#[command(name = "orderpipe-bench", about = "Benchmarks on the local real stack")]
struct Cli {
    /// Sections to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Smaller runs (fewer orders, fewer pipelines): a smoke test of the benchmarks themselves.
    #[arg(long)]
    quick: bool,
    /// Worker side-by-side variants to run (default: all four); a focused run for working on one
    /// of them, not a report to compare baselines with.
    #[arg(long, value_enum, value_delimiter = ',')]
    variants: Vec<worker::VariantArg>,
    /// Partition counts of the worker side-by-side runs (default: 1,4,8; --quick: 1).
    #[arg(long, value_delimiter = ',')]
    partitions: Vec<i32>,
    /// Pipeline counts of the operator section (default: 1,100,1000; --quick: 1,20).
    #[arg(long, value_delimiter = ',')]
    pipelines: Vec<usize>,
    /// Skip the whole-pipeline and commit-interval sweep sections of `--only worker`.
    #[arg(long)]
    side_by_side_only: bool,
    /// Where the report goes (also printed).
    #[arg(long, default_value = "bench/results/latest.md")]
    out: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Helper processes the benchmarks start (each measured on its own).
#[derive(Debug, Subcommand)]
enum Command {
    /// The raw librdkafka consume -> produce copy (the worker benchmarks' ceiling).
    #[command(hide = true)]
    RawCopy(raw_copy::Args),
    /// The validate stage's own work per order, without Kafka (for callgrind).
    #[command(hide = true)]
    StageCost(stage_cost::Args),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Worker,
    /// The whole-pipeline section of the worker benchmarks alone.
    Pipeline,
    Operator,
    /// Lag autoscaling: a burst, autoscaled against one fixed replica.
    Autoscale,
    /// The intake gateway under an independent HTTP load generator (oha).
    Intake,
}

/// What every section gets.
#[derive(Debug, Clone)]
pub struct Context {
    pub quick: bool,
    pub worker: worker::Focus,
    /// The operator section's sizes; empty: its defaults.
    pub pipelines: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::RawCopy(args)) => return raw_copy::run(args),
        Some(Command::StageCost(args)) => return stage_cost::run(args),
        None => {}
    }
    let parts = if cli.only.is_empty() {
        vec![Part::Worker, Part::Operator, Part::Autoscale, Part::Intake]
    } else {
        cli.only.clone()
    };
    let ctx = Context {
        quick: cli.quick,
        worker: worker::Focus {
            variants: cli.variants.clone(),
            partitions: cli.partitions.clone(),
            side_by_side_only: cli.side_by_side_only,
        },
        pipelines: cli.pipelines.clone(),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for part in parts {
        let result = runtime.block_on(async {
            match part {
                Part::Worker => worker::run(&ctx, worker::Scope::All).await,
                Part::Pipeline => worker::run(&ctx, worker::Scope::PipelineOnly).await,
                Part::Operator => operator::run(&ctx).await,
                Part::Autoscale => autoscale::run(&ctx).await,
                Part::Intake => intake::run(&ctx).await,
            }
        });
        match result {
            Ok(mut done) => sections.append(&mut done),
            Err(error) => {
                eprintln!("[bench] {part:?} failed: {error:#}");
                failed.push(Section {
                    title: format!("{part:?}: failed"),
                    notes: vec![format!("{error:#}")],
                    ..Section::default()
                });
            }
        }
    }
    let failures = failed.len();
    sections.append(&mut failed);
    let report = render(&header(), &sections);
    if let Some(dir) = cli.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cli.out, &report)?;
    println!("{report}");
    eprintln!("[bench] report written to {}", cli.out.display());
    anyhow::ensure!(failures == 0, "{failures} benchmark part(s) failed");
    Ok(())
}

/// The machine and the versions, so a number is never read without its context.
fn header() -> Vec<String> {
    let versions = include_str!("../../e2e/tools/versions.env");
    let pinned = |key: &str| {
        versions
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or("?")
            .to_owned()
    };
    vec![
        format!("date: {}", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")),
        format!(
            "cores: {}",
            std::thread::available_parallelism().map_or(0, usize::from)
        ),
        format!("orderpipe: {}", env!("CARGO_PKG_VERSION")),
        format!("Kafka: {}", pinned("KAFKA_VERSION")),
        format!("Kubernetes: {}", pinned("K8S_VERSION")),
    ]
}

fn render(header: &[String], sections: &[Section]) -> String {
    let mut out = String::from("# orderpipe benchmarks\n\n");
    for line in header {
        out.push_str(&format!("- {line}\n"));
    }
    out.push('\n');
    for section in sections {
        out.push_str(&section.to_markdown());
        out.push('\n');
    }
    out
}
