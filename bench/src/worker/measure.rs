//! One measured run of one variant: throughput over a pre-produced backlog, and end-to-end latency
//! under a paced load. Waits are on conditions (committed offsets, records seen) with timeouts.
//! Must not render the report.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::kafka::{self, GroupProgress};
use super::process::{CpuSample, Measured, cpu_share};
use super::stats;
use super::variant::{Programs, Run};

/// How often the group's committed offsets are read.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Share of the backlog committed before the clock starts: start-up, group join and state restore
/// are left out of the rate (they are the same few seconds whatever the backlog).
const WARM_SHARE: f64 = 0.1;

/// What a throughput run measured.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Orders per second between 10 % and 100 % of the backlog committed.
    pub rate: Option<f64>,
    /// Cores busy over the same interval.
    pub cpu: Option<f64>,
    /// Peak RSS of the whole run, bytes.
    pub peak_rss: u64,
}

/// Starts `run`'s variant on its input, which holds `backlog` records, and times its group's
/// committed offsets from 10 % to 100 % of the backlog.
pub fn throughput(programs: &Programs, run: &Run, backlog: u64) -> anyhow::Result<Throughput> {
    let progress =
        GroupProgress::new(&programs.bootstrap, run.group(), &run.input, run.partitions)?;
    let mut process = Measured::spawn(
        run.variant.label(),
        programs.command(run),
        &programs.log(run, "throughput"),
    )?;
    // Slower than 100 orders/s is a broken run, not a measurement.
    let timeout = Duration::from_secs(120 + backlog / 100);
    let deadline = Instant::now() + timeout;
    let warm = (backlog as f64 * WARM_SHARE).ceil() as u64;
    let mut start: Option<(u64, CpuSample)> = None;
    let mut last_report = Instant::now();
    loop {
        process.ensure_running()?;
        let committed = progress.committed()?;
        if start.is_none() && committed >= warm {
            start = Some((committed, process.cpu()?));
        }
        if committed >= backlog {
            let end = process.cpu()?;
            let (from, from_cpu) = start.unwrap_or((committed, end));
            let elapsed = end.at().duration_since(from_cpu.at());
            return Ok(Throughput {
                // One probe from 10 % to all: too fast to time at this backlog.
                rate: (committed > from)
                    .then(|| stats::rate(committed - from, elapsed))
                    .flatten(),
                cpu: cpu_share(from_cpu, end),
                peak_rss: process.peak_rss()?,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "{}: {committed} of {backlog} orders committed after {timeout:?}",
                run.variant.label()
            );
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!("[bench]   {committed} of {backlog} committed");
            last_report = Instant::now();
        }
        std::thread::sleep(PROBE_EVERY);
    }
}

/// Latency settings.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub rate: u32,
    pub seconds: u32,
}

/// Starts `run`'s variant on its own (empty) input, waits until it has committed a warm-up batch,
/// then measures the end-to-end latency of a paced load of valid orders to `validated`.
pub fn latency(programs: &Programs, run: &Run, pace: Pace) -> anyhow::Result<Vec<Duration>> {
    const WARM_UP: u64 = 100;
    let progress =
        GroupProgress::new(&programs.bootstrap, run.group(), &run.input, run.partitions)?;
    let mut process = Measured::spawn(
        run.variant.label(),
        programs.command(run),
        &programs.log(run, "latency"),
    )?;
    kafka::fill(
        &programs.bootstrap,
        &run.input,
        &kafka::valid_orders(WARM_UP, 10_000, 11),
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.committed()? < WARM_UP {
        process.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "{}: the warm-up batch was not committed in 120 s",
                run.variant.label()
            );
        }
        std::thread::sleep(PROBE_EVERY);
    }
    let count = u64::from(pace.rate) * u64::from(pace.seconds);
    let samples = kafka::latencies(
        &programs.bootstrap,
        &run.input,
        &run.topic("validated"),
        run.partitions,
        &kafka::valid_orders(count, pace.rate, 13),
        Duration::from_secs(u64::from(pace.seconds) + 120),
    )?;
    process.ensure_running()?;
    Ok(samples)
}
