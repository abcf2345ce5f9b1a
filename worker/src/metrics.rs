//! The worker's Prometheus metrics, registered once under the names of the worker contract
//! (`orderpipe_api::contract::metrics`), which the operator's canary analysis and autoscaler query.
//! Every series carries the constant `pipeline` and `stage` labels; other labels are bounded
//! (outcome, dead-letter reason code, result, partition number) — never an order id.
//! This module must not decide what to count; the runtime and the stages call it.

use std::borrow::Cow;
use std::time::Duration;

use orderpipe_api::contract::metrics::{self as names, labels};
use orderpipe_orders::DeadLetterReason;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];
type PartitionLabel = [(&'static str, i32); 1];

/// Every metric the worker exports.
#[derive(Debug)]
pub struct Metrics {
    consumed: Counter,
    processed: Family<Label, Counter>,
    dead_letters: Family<Label, Counter>,
    transactions: Family<Label, Counter>,
    retries: Counter,
    webhook_requests: Family<Label, Counter>,
    rebalances: Family<Label, Counter>,
    assigned_partitions: Gauge,
    consumer_lag: Family<PartitionLabel, Gauge>,
    state_entries: Family<PartitionLabel, Gauge>,
    state_bytes: Family<PartitionLabel, Gauge>,
    processing_duration: Histogram,
    pipeline_latency: Histogram,
    partitions_held: Gauge,
    reshard_keys_moved: Counter,
    growth_forwarded: Counter,
}

/// Result label values of [`names::TRANSACTIONS`].
pub mod transaction {
    pub const COMMITTED: &str = "committed";
    pub const ABORTED: &str = "aborted";
}

/// Kind label values of [`names::REBALANCES`].
pub mod rebalance {
    pub const ASSIGNED: &str = "assigned";
    pub const REVOKED: &str = "revoked";
    pub const LOST: &str = "lost";
}

/// prometheus-client appends `_total` to counters itself.
fn counter_name(full: &'static str) -> &'static str {
    full.strip_suffix("_total").unwrap_or(full)
}

impl Metrics {
    /// A registry whose series all carry `pipeline` and `stage`, with the worker's metrics in it.
    pub fn registry(pipeline: &str, stage: &str) -> (Registry, Self) {
        let mut registry = Registry::with_labels(
            [
                (
                    Cow::Borrowed(labels::PIPELINE),
                    Cow::Owned(pipeline.to_owned()),
                ),
                (Cow::Borrowed(labels::STAGE), Cow::Owned(stage.to_owned())),
            ]
            .into_iter(),
        );
        let metrics = Self::register(&mut registry);
        (registry, metrics)
    }

    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            consumed: Counter::default(),
            processed: Family::default(),
            dead_letters: Family::default(),
            transactions: Family::default(),
            retries: Counter::default(),
            webhook_requests: Family::default(),
            rebalances: Family::default(),
            assigned_partitions: Gauge::default(),
            consumer_lag: Family::default(),
            state_entries: Family::default(),
            state_bytes: Family::default(),
            // 50 µs (a validation) to ~14 min (a notification's worst-case retries).
            processing_duration: Histogram::new(exponential_buckets(0.000_05, 4.0, 12)),
            // 1 ms (a record decided as it arrives) to ~2.5 h (a backlog worked off).
            pipeline_latency: Histogram::new(exponential_buckets(0.001, 3.0, 16)),
            partitions_held: Gauge::default(),
            reshard_keys_moved: Counter::default(),
            growth_forwarded: Counter::default(),
        };
        // The series rate() alerts and panels read exist from the start, at 0: a counter series
        // that appears with its first increment hides that increment from rate(), so a lone dead
        // letter or a first burst of aborts would never alert.
        for reason in DeadLetterReason::ALL {
            let _ = metrics
                .dead_letters
                .get_or_create(&[(labels::REASON, reason.code())]);
        }
        for result in [transaction::COMMITTED, transaction::ABORTED] {
            let _ = metrics
                .transactions
                .get_or_create(&[(labels::RESULT, result)]);
        }
        let r = registry;
        r.register(
            counter_name(names::RECORDS_CONSUMED),
            "Records handed to the processor, re-deliveries after an aborted transaction included",
            metrics.consumed.clone(),
        );
        r.register(
            counter_name(names::RECORDS_PROCESSED),
            "Records whose transaction committed (or aborted: outcome error), by outcome",
            metrics.processed.clone(),
        );
        r.register(
            counter_name(names::DEAD_LETTERS),
            "Records committed to the dead-letter topic, by reason code",
            metrics.dead_letters.clone(),
        );
        r.register(
            counter_name(names::TRANSACTIONS),
            "Transactions (offset commits when at-least-once) by result",
            metrics.transactions.clone(),
        );
        r.register(
            counter_name(names::RETRIES),
            "Blocking retries of transient failures",
            metrics.retries.clone(),
        );
        r.register(
            counter_name(names::WEBHOOK_REQUESTS),
            "Webhook attempts by result",
            metrics.webhook_requests.clone(),
        );
        r.register(
            counter_name(names::REBALANCES),
            "Consumer group rebalances by kind",
            metrics.rebalances.clone(),
        );
        r.register(
            names::ASSIGNED_PARTITIONS,
            "Input partitions assigned to this worker",
            metrics.assigned_partitions.clone(),
        );
        r.register(
            names::CONSUMER_LAG,
            "Records on the input partition after the last committed offset",
            metrics.consumer_lag.clone(),
        );
        r.register(
            names::STATE_ENTRIES,
            "Per-key states held for the input partition (stateful stages)",
            metrics.state_entries.clone(),
        );
        r.register(
            names::STATE_BYTES,
            "Bytes of the per-key states held for the input partition: keys plus changelog records",
            metrics.state_bytes.clone(),
        );
        r.register(
            names::PROCESSING_DURATION,
            "Seconds from handing a record to the processor to its decision",
            metrics.processing_duration.clone(),
        );
        r.register(
            names::PIPELINE_LATENCY,
            "Seconds from the order entering the pipeline (its input record's timestamp, which every stage passes on) to this stage's decision",
            metrics.pipeline_latency.clone(),
        );
        r.register(
            names::PARTITIONS_HELD,
            "Assigned input partitions a growth of the input holds until it is released",
            metrics.partitions_held.clone(),
        );
        r.register(
            counter_name(names::RESHARD_KEYS_MOVED),
            "Keys whose state a committed re-shard moved from an old partition to a new one",
            metrics.reshard_keys_moved.clone(),
        );
        r.register(
            counter_name(names::GROWTH_FORWARDED),
            "Records forwarded to their key's new partition after a re-shard (a producer broke the settle window)",
            metrics.growth_forwarded.clone(),
        );
        metrics
    }

    pub fn consumed(&self) {
        self.consumed.inc();
    }

    /// Counts `count` records of one outcome whose transaction ended.
    pub fn processed(&self, outcome: &'static str, count: u64) {
        self.processed
            .get_or_create(&[(labels::OUTCOME, outcome)])
            .inc_by(count);
    }

    pub fn dead_lettered(&self, reason: &'static str, count: u64) {
        self.dead_letters
            .get_or_create(&[(labels::REASON, reason)])
            .inc_by(count);
    }

    pub fn transaction(&self, result: &'static str) {
        self.transactions
            .get_or_create(&[(labels::RESULT, result)])
            .inc();
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn webhook_request(&self, result: &'static str) {
        self.webhook_requests
            .get_or_create(&[(labels::RESULT, result)])
            .inc();
    }

    pub fn rebalance(&self, kind: &'static str) {
        self.rebalances.get_or_create(&[(labels::KIND, kind)]).inc();
    }

    pub fn set_assigned_partitions(&self, count: usize) {
        self.assigned_partitions
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn set_partitions_held(&self, count: usize) {
        self.partitions_held
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn reshard_keys_moved(&self, count: u64) {
        self.reshard_keys_moved.inc_by(count);
    }

    pub fn growth_forwarded(&self, count: u64) {
        self.growth_forwarded.inc_by(count);
    }

    pub fn set_consumer_lag(&self, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&[(labels::PARTITION, partition)])
            .set(lag.max(0));
    }

    /// The gauges of a partition's state size; the partition worker sets them as its state
    /// changes (a handle, so the per-record cost is two stores).
    pub fn state_gauges(&self, partition: i32) -> (Gauge, Gauge) {
        let label = [(labels::PARTITION, partition)];
        (
            self.state_entries.get_or_create(&label).clone(),
            self.state_bytes.get_or_create(&label).clone(),
        )
    }

    /// Drops the per-partition series of a partition this worker no longer owns, so a sum over
    /// workers does not count it twice.
    pub fn forget_partition(&self, partition: i32) {
        let label = [(labels::PARTITION, partition)];
        self.consumer_lag.remove(&label);
        self.state_entries.remove(&label);
        self.state_bytes.remove(&label);
    }

    pub fn observe_processing(&self, took: Duration) {
        self.processing_duration.observe(took.as_secs_f64());
    }

    /// `since_entry`: now minus the input record's timestamp; a producer's clock ahead of ours
    /// counts as 0.
    pub fn observe_pipeline_latency(&self, since_entry: chrono::TimeDelta) {
        let seconds = since_entry.as_seconds_f64().max(0.0);
        self.pipeline_latency.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_names_and_labels_are_the_contracts() {
        let (registry, metrics) = Metrics::registry("checkout", "validate");
        metrics.consumed();
        metrics.processed(names::outcome::PROCESSED, 3);
        metrics.dead_lettered("not_json", 1);
        metrics.transaction(transaction::COMMITTED);
        metrics.set_consumer_lag(2, 40);
        metrics.observe_processing(Duration::from_millis(1));
        metrics.observe_pipeline_latency(chrono::TimeDelta::milliseconds(1_500));
        // A producer clock ahead of ours: no negative latency.
        metrics.observe_pipeline_latency(chrono::TimeDelta::milliseconds(-20));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");

        for expected in [
            r#"orderpipe_records_consumed_total{pipeline="checkout",stage="validate"} 1"#,
            // Present before their first increment, so rate() sees that increment.
            r#"orderpipe_dead_letters_total{pipeline="checkout",stage="validate",reason="output_refused"} 0"#,
            r#"orderpipe_transactions_total{pipeline="checkout",stage="validate",result="aborted"} 0"#,
            r#"orderpipe_records_processed_total{pipeline="checkout",stage="validate",outcome="processed"} 3"#,
            r#"orderpipe_dead_letters_total{pipeline="checkout",stage="validate",reason="not_json"} 1"#,
            r#"orderpipe_transactions_total{pipeline="checkout",stage="validate",result="committed"} 1"#,
            r#"orderpipe_consumer_lag{pipeline="checkout",stage="validate",partition="2"} 40"#,
            "orderpipe_processing_duration_seconds_count{",
            r#"orderpipe_pipeline_latency_seconds_sum{pipeline="checkout",stage="validate"} 1.5"#,
            r#"orderpipe_pipeline_latency_seconds_count{pipeline="checkout",stage="validate"} 2"#,
            // Growth: present at 0 so alerts on forwarded records see the first one.
            r#"orderpipe_partitions_held{pipeline="checkout",stage="validate"} 0"#,
            r#"orderpipe_reshard_keys_moved_total{pipeline="checkout",stage="validate"} 0"#,
            r#"orderpipe_growth_forwarded_total{pipeline="checkout",stage="validate"} 0"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }

        metrics.forget_partition(2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(!text.contains(r#"partition="2""#), "{text}");
    }
}
