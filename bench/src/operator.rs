//! Operator benchmarks: apply-to-Ready for 1, 100 and 1,000 pipelines, RSS, idle-resync API
//! requests, reconcile latency.

use crate::Context;
use crate::report::Section;

pub async fn run(_ctx: &Context) -> anyhow::Result<Vec<Section>> {
    anyhow::bail!("not written yet")
}
