//! `orderpipe-bench stage-cost` (hidden): the validate stage's own work per order, without Kafka —
//! the worker's `Stateful(Validator)` handler (parse, check, dedup lookup, encode the outputs) over
//! the benchmark backlog's orders, in this process. Prints nanoseconds per order; under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=*handle_all*` the instruction
//! count of `handle_all` divided by `--orders` is a CPU cost per order that other processes on the
//! machine cannot disturb.

use std::time::Instant;

use orderpipe_api::contract::DEDUP_WINDOW;
use orderpipe_orders::validate::{ValidatePolicy, Validator};
use orderpipe_worker::loadgen;
use orderpipe_worker::record::SourceRecord;
use orderpipe_worker::stage::{Handling, KeyStates, StageHandler, Stateful};
use tokio_util::sync::CancellationToken;

use crate::worker::kafka;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Orders to handle (the backlog's mix: 2 % invalid, 1 % re-submitted).
    #[arg(long, default_value_t = 20_000)]
    orders: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let records: Vec<SourceRecord> = loadgen::generate(&kafka::orders(args.orders, None, 7))
        .zip(0_i64..)
        .map(|(record, offset)| SourceRecord {
            partition: 0,
            offset,
            key: record.key,
            payload: Some(record.payload),
            timestamp: chrono::Utc::now(),
            headers: Vec::new(),
        })
        .collect();
    let stage = Stateful(Validator::new(ValidatePolicy {
        dedup_window: DEDUP_WINDOW,
        ..ValidatePolicy::default()
    }));
    let started = Instant::now();
    let emitted = handle_all(&stage, &records)?;
    let took = started.elapsed();
    println!(
        "{} orders, {emitted} records to produce, {:.0} ns per order",
        records.len(),
        took.as_nanos() as f64 / records.len().max(1) as f64
    );
    Ok(())
}

/// Handles every record in order, as one partition worker would; returns how many records the
/// handler asked to produce. Not inlined: callgrind collects exactly this function.
#[inline(never)]
fn handle_all(stage: &Stateful<Validator>, records: &[SourceRecord]) -> anyhow::Result<usize> {
    let mut states = KeyStates::default();
    let stop = CancellationToken::new();
    let mut emitted = 0;
    for record in records {
        // The validate handler never waits: its future is ready at once.
        let handling =
            futures::executor::block_on(stage.handle(record, "orders", &mut states, &stop));
        match handling {
            Handling::Done(handled) => emitted += handled.emits.len(),
            Handling::Waiting(_) | Handling::Interrupted => {
                anyhow::bail!("the validate handler did not decide at once, which it always does")
            }
        }
    }
    Ok(emitted)
}
