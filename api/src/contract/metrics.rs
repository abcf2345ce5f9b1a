//! Metric and label names the worker exports and the operator's children query: the canary
//! analysis (error and dead-letter share) and the autoscaler (consumer lag). Renaming one silently
//! breaks canaries and autoscaling, so both sides use these constants.
//!
//! Names are as Prometheus stores them; prometheus-client appends `_total` to a counter's name, so
//! the worker registers counters without that suffix. Every series carries [`labels::PIPELINE`] and
//! [`labels::STAGE`] (the pipeline and stage names, bounded by the CRD); `outcome` takes only the
//! values in [`outcome`]. Prometheus adds the `namespace` target label when it scrapes.

/// Counter: records handed to the processor, re-deliveries after an aborted transaction included.
pub const RECORDS_CONSUMED: &str = "orderpipe_records_consumed_total";
/// Counter: records finished, by [`labels::OUTCOME`].
pub const RECORDS_PROCESSED: &str = "orderpipe_records_processed_total";
/// Gauge: records on the stage's input topic its consumer group has not consumed yet (high
/// watermark minus committed offset), per worker. The autoscaler does not read it: the operator
/// measures each stage's lag in Kafka and serves it under this name through the External metrics
/// API (also while the stage has no pods).
pub const CONSUMER_LAG: &str = "orderpipe_consumer_lag";
/// Counter: records written to the dead-letter topic, by [`labels::REASON`] (the stable
/// dead-letter reason codes of `orderpipe-orders`).
pub const DEAD_LETTERS: &str = "orderpipe_dead_letters_total";
/// Counter: transactions (or, at-least-once, offset commits) by [`labels::RESULT`]:
/// `committed` or `aborted`.
pub const TRANSACTIONS: &str = "orderpipe_transactions_total";
/// Counter: blocking retries of a transient failure (webhook attempts after the first).
pub const RETRIES: &str = "orderpipe_retries_total";
/// Counter: webhook attempts by [`labels::RESULT`] (`2xx`, `4xx`, `429`, `5xx`, `timeout`...).
pub const WEBHOOK_REQUESTS: &str = "orderpipe_webhook_requests_total";
/// Counter: consumer group rebalances by [`labels::KIND`]: `assigned`, `revoked`, `lost`.
pub const REBALANCES: &str = "orderpipe_rebalances_total";
/// Gauge: per-key states a stateful stage holds for an input partition, by
/// [`labels::PARTITION`] (validate: live dedup records; status: orders not yet forgotten).
pub const STATE_ENTRIES: &str = "orderpipe_state_entries";
/// Gauge: bytes of those states (keys plus changelog records), by [`labels::PARTITION`].
pub const STATE_BYTES: &str = "orderpipe_state_bytes";
/// Gauge: input partitions currently assigned to this worker.
pub const ASSIGNED_PARTITIONS: &str = "orderpipe_assigned_partitions";
/// Histogram: seconds from handing a record to the processor to its decision (webhook
/// attempts and retry waits included).
pub const PROCESSING_DURATION: &str = "orderpipe_processing_duration_seconds";
/// Histogram: seconds from the order entering the pipeline to this stage's decision. Every stage
/// gives the records it passes on its input's timestamp (as Kafka Streams does), so the input's
/// timestamp is the first topic's: the last stage's latency is the pipeline's end to end.
pub const PIPELINE_LATENCY: &str = "orderpipe_pipeline_latency_seconds";
/// Gauge: input partitions assigned to this worker that a growth of the input holds (new
/// partitions before the growth is released; `docs/partition-growth.md`).
pub const PARTITIONS_HELD: &str = "orderpipe_partitions_held";
/// Counter: keys whose state a re-shard moved from an old partition to a new one.
pub const RESHARD_KEYS_MOVED: &str = "orderpipe_reshard_keys_moved_total";
/// Counter: records of moved keys that still arrived on their old partition after the re-shard and
/// were forwarded to their new partition (a producer broke the settle window).
pub const GROWTH_FORWARDED: &str = "orderpipe_growth_forwarded_total";

/// Label names.
pub mod labels {
    pub const PIPELINE: &str = "pipeline";
    pub const STAGE: &str = "stage";
    pub const OUTCOME: &str = "outcome";
    /// Input partition number (bounded by the topic's partition count).
    pub const PARTITION: &str = "partition";
    pub const REASON: &str = "reason";
    pub const RESULT: &str = "result";
    pub const KIND: &str = "kind";
}

/// Values of [`labels::OUTCOME`]: what became of a record. Processors' finer outcomes map onto
/// these (e.g. validate's `validated` and status's `transitioned` are `processed`).
pub mod outcome {
    /// Handled and its outputs written.
    pub const PROCESSED: &str = "processed";
    /// Refused on business grounds and written to the stage's rejected output.
    pub const REJECTED: &str = "rejected";
    /// Written to the dead-letter topic.
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// Processing failed and the transaction was aborted; the record is consumed again.
    pub const ERROR: &str = "error";
    /// Already processed (same order id, or an event seen before); nothing written.
    pub const DUPLICATE: &str = "duplicate";
    /// Not for this stage (e.g. an event type it does not handle); nothing written.
    pub const IGNORED: &str = "ignored";

    pub const ALL: [&str; 6] = [
        PROCESSED,
        REJECTED,
        DEAD_LETTERED,
        ERROR,
        DUPLICATE,
        IGNORED,
    ];
}
