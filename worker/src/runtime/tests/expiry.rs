//! Expiry: finished orders are forgotten after their window with tombstones, so the state a
//! restart restores holds only what was not forgotten.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orderpipe_orders::status::StatusPolicy;
use orderpipe_orders::{EventDetails, EventType, StatusEvent};

use super::{TestStage, WAIT};
use crate::runtime::memory::{Broker, BrokerState, Produced};

/// A status event as JSON, keyed by its order.
fn status_event(
    order: &str,
    id: &str,
    kind: EventType,
    at: DateTime<Utc>,
) -> (Option<Vec<u8>>, Vec<u8>, DateTime<Utc>) {
    let event = StatusEvent {
        order_id: order.to_owned(),
        event_id: id.to_owned(),
        kind,
        at,
        details: EventDetails::default(),
    };
    let payload = serde_json::to_vec(&event).expect("json");
    (Some(order.as_bytes().to_vec()), payload, at)
}

#[test]
fn finished_orders_are_forgotten_after_the_window_with_tombstones_so_a_restore_stays_small() {
    let start = DateTime::<Utc>::from_timestamp(1_750_000_000, 0).unwrap_or_default();
    let window = StatusPolicy::default().forget_finished_after;
    let later =
        start + chrono::TimeDelta::from_std(window).expect("fits") + chrono::TimeDelta::hours(1);
    let mut input = Vec::new();
    for index in 0..50 {
        let order = format!("done-{index}");
        input.push(status_event(&order, "v", EventType::Validated, start));
        input.push(status_event(&order, "c", EventType::Cancelled, start));
    }
    input.push(status_event("open-0", "v", EventType::Validated, start));
    input.push(status_event("late-0", "v", EventType::Validated, later));
    let broker = Broker::with_timed_input(1, input);
    let running = TestStage::status().start(&broker);
    broker.wait_until("every event committed", WAIT, BrokerState::all_committed);
    let metrics = running.metrics();
    running.stop().expect("clean shutdown");

    let entries = |count: usize| {
        format!(
            r#"orderpipe_state_entries{{pipeline="shop",stage="status",partition="0"}} {count}"#
        )
    };
    assert!(
        metrics.contains(&entries(2)),
        "the open and the late order remain: {metrics}"
    );
    {
        let state = broker.state();
        let tombstones: Vec<&Produced> =
            state.outputs_to("state").filter(|r| r.tombstone).collect();
        assert_eq!(tombstones.len(), 50, "one tombstone per forgotten order");
        assert!(
            tombstones
                .iter()
                .all(|r| r.key.as_ref().is_some_and(|k| k.starts_with(b"done-")))
        );
        assert_eq!(
            state.outputs_to("order-status").count(),
            102,
            "every transition written"
        );
    }

    // A restart restores only what was not forgotten.
    let running = TestStage::status().start(&broker);
    let deadline = Instant::now() + WAIT;
    while !running.metrics().contains(&entries(2)) {
        assert!(
            Instant::now() < deadline,
            "restored state: {}",
            running.metrics()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    running.stop().expect("clean shutdown");
}
