//! Consumer lag per assigned partition: the input's high watermark (from the consumer's
//! statistics) minus the offset this worker last committed for it. Both halves arrive at
//! different times from different threads; whichever arrives updates the gauge. Must not fetch
//! anything itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::Metrics;

#[derive(Debug, Default, Clone, Copy)]
struct Ends {
    high_watermark: Option<i64>,
    committed: Option<i64>,
}

/// The two halves of each partition's lag.
#[derive(Debug)]
pub struct LagBook {
    partitions: Mutex<HashMap<i32, Ends>>,
    metrics: Arc<Metrics>,
}

impl LagBook {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            partitions: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Records the committed offset of an assigned partition (`None`: nothing committed yet, so
    /// everything from the log start counts).
    pub fn committed(&self, partition: i32, offset: Option<i64>) {
        self.update(partition, |ends| ends.committed = Some(offset.unwrap_or(0)));
    }

    /// Records the high watermark of a partition, if this worker tracks it.
    pub fn high_watermark(&self, partition: i32, offset: i64) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(ends) = partitions.get_mut(&partition) {
            ends.high_watermark = Some(offset);
            self.publish(partition, *ends);
        }
    }

    /// Stops tracking a partition this worker no longer owns.
    pub fn forget(&self, partition: i32) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        partitions.remove(&partition);
        self.metrics.forget_partition(partition);
    }

    fn update(&self, partition: i32, change: impl FnOnce(&mut Ends)) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ends = partitions.entry(partition).or_default();
        change(ends);
        self.publish(partition, *ends);
    }

    fn publish(&self, partition: i32, ends: Ends) {
        if let (Some(high), Some(committed)) = (ends.high_watermark, ends.committed) {
            self.metrics
                .set_consumer_lag(partition, high.saturating_sub(committed));
        }
    }
}
