//! What each built-in processor needs from its pipeline: the outputs it cannot run without and the
//! state topic a stateful one keeps. The operator creates what these say; the worker refuses to start
//! without it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::v1alpha1::Processor;

/// Whether a stage keeps per-key state in a changelog topic.
pub fn is_stateful(processor: Processor) -> bool {
    matches!(processor, Processor::Validate | Processor::Status)
}

/// Validate's dedup window, in record time: how long a validated orderId turns a re-submission into
/// a duplicate. The worker's validator uses it, and the operator keeps validate's state topic that
/// long (see [`state_topic_config`]).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Topic config of a stateful stage's state topic. Compacted: a restore only needs each key's
/// latest state. Validate's dedup records also expire after [`DEDUP_WINDOW`], so its topic deletes
/// segments older than that (`compact,delete`) and stays bounded however many orders pass; status
/// keeps an order's state as long as the order lives, so compaction alone.
pub fn state_topic_config(processor: Processor) -> BTreeMap<String, String> {
    let mut config = BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]);
    if processor == Processor::Validate {
        config.insert("cleanup.policy".to_owned(), "compact,delete".to_owned());
        config.insert(
            "retention.ms".to_owned(),
            DEDUP_WINDOW.as_millis().to_string(),
        );
    }
    config
}

/// Outputs a built-in processor cannot run without (mirrors the CRD's CEL rules).
pub fn required_outputs(processor: Processor) -> &'static [&'static str] {
    match processor {
        Processor::Validate => &["validated", "rejected"],
        Processor::Status => &["changes"],
        Processor::Notify => &["audit"],
        Processor::Custom => &[],
    }
}
