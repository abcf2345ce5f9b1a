//! Exactly once through failures: every output once although transactions abort and a producer
//! cannot be re-created at once, per-key order through aborts and revocations, and back-pressure
//! that pauses and resumes partitions without losing or reordering records.

use std::collections::BTreeMap;
use std::time::Duration;

use orderpipe_orders::generator::{EventExpectation, Expected};
use orderpipe_orders::{OrderState, StatusChanged, headers};

use super::{TestStage, WAIT, count_by_key, fast_tuning, input_of, load, original, valid_orders};
use crate::loadgen::{Expectation, LoadMode, LoadRecord, LoadSpec};
use crate::runtime::Tuning;
use crate::runtime::memory::{Broker, BrokerState, Produced, Rebalance};

#[test]
fn validate_writes_each_order_exactly_once_although_transactions_abort() {
    let spec = LoadSpec {
        invalid_share: 0.05,
        garbage_share: 0.02,
        duplicate_share: 0.03,
        ..valid_orders(3_000, 11)
    };
    let load = load(&spec);
    let broker = Broker::with_input(4, input_of(&load));
    broker.fail_commits([2, 5, 9]);
    let running = TestStage::validate().start(&broker);
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    let metrics = running.metrics();
    running.stop().expect("clean shutdown");

    let state = broker.state();
    let expected_of = |pick: fn(&Expected) -> bool| {
        load.iter()
            .filter(|r| matches!(&r.expectation, Expectation::Order(e) if pick(e)))
            .collect::<Vec<_>>()
    };
    let valid = expected_of(|e| matches!(e, Expected::Valid));
    let invalid = expected_of(|e| matches!(e, Expected::Invalid { .. }));
    let garbage = expected_of(|e| matches!(e, Expected::Garbage { .. }));
    assert!(!valid.is_empty() && !invalid.is_empty() && !garbage.is_empty());

    let validated = count_by_key(state.outputs_to("orders.validated"));
    assert_eq!(
        validated.len(),
        valid.len(),
        "one validated record per valid order"
    );
    for record in &valid {
        let key = record.key.clone().expect("valid orders are keyed");
        assert_eq!(validated.get(&key), Some(&1), "validated exactly once");
    }
    assert_eq!(state.outputs_to("orders.rejected").count(), invalid.len());
    let changelog = count_by_key(state.outputs_to("state"));
    assert_eq!(
        changelog.len(),
        valid.len(),
        "one dedup record per valid order"
    );

    let dead_letters: Vec<&Produced> = state.outputs_to("orders.dlq").collect();
    assert_eq!(dead_letters.len(), garbage.len());
    for dead in dead_letters {
        let original = original(&state, dead);
        assert_eq!(
            original.payload.as_deref(),
            Some(dead.payload.as_slice()),
            "original bytes"
        );
        assert_eq!(original.key, dead.key, "original key");
        assert_eq!(dead.header(headers::ERROR_STAGE), Some("validate"));
        assert_eq!(dead.header(headers::ORIGINAL_TOPIC), Some("orders"));
        let load_record = garbage
            .iter()
            .find(|r| r.payload == dead.payload && r.key == dead.key)
            .expect("a garbage input");
        let Expectation::Order(Expected::Garbage { reason }) = &load_record.expectation else {
            unreachable!("filtered above");
        };
        assert_eq!(dead.header(headers::ERROR_REASON), Some(reason.code()));
    }
    assert!(state.aborts >= 3, "the failed commits were aborted");
    assert!(
        metrics.contains(
            r#"orderpipe_transactions_total{pipeline="shop",stage="validate",result="aborted"} 3"#
        ),
        "{metrics}"
    );
}

#[test]
fn a_producer_that_cannot_be_recreated_at_once_is_retried_and_nothing_is_lost_or_doubled() {
    let spec = valid_orders(1_500, 21);
    let load = load(&spec);
    let broker = Broker::with_input(3, input_of(&load));
    {
        let mut state = broker.state();
        state.fatal_commits.insert(3);
        state.failing_recreates = 2;
    }
    let tuning = Tuning {
        recreate_backoff: Duration::from_millis(10),
        ..fast_tuning()
    };
    let running = TestStage::validate().tuning(tuning).start(&broker);
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    running
        .stop()
        .expect("the worker kept running through the outage");

    let state = broker.state();
    assert_eq!(
        state.recreates, 1,
        "re-created once the broker was reachable again"
    );
    assert_eq!(state.failing_recreates, 0, "both failed attempts were made");
    let validated = count_by_key(state.outputs_to("orders.validated"));
    assert_eq!(validated.len(), load.len());
    assert!(validated.values().all(|count| *count == 1), "exactly once");
}

/// The transitions each order must go through, in order, as the generator labelled them.
fn expected_transitions(
    load: &[LoadRecord],
) -> BTreeMap<Vec<u8>, Vec<(OrderState, OrderState, u64)>> {
    let mut expected: BTreeMap<Vec<u8>, Vec<_>> = BTreeMap::new();
    for record in load {
        if let Expectation::Event(EventExpectation::Transition { from, to, version }) =
            record.expectation
        {
            let key = record.key.clone().expect("events are keyed");
            expected.entry(key).or_default().push((from, to, version));
        }
    }
    expected
}

#[test]
fn status_changes_keep_each_orders_order_through_aborts_and_a_revocation() {
    let spec = LoadSpec {
        mode: LoadMode::StatusEvents,
        keys: 100,
        invalid_share: 0.05,
        duplicate_share: 0.05,
        ..valid_orders(3_000, 5)
    };
    let load = load(&spec);
    let broker = Broker::with_input(3, input_of(&load));
    broker.fail_commits([3, 8]);
    let rebalance = Rebalance {
        after_records: 1_000,
        partitions: vec![1],
        reassign_after: 1_600,
        while_paused: false,
    };
    let running = TestStage::status().rebalance(rebalance).start(&broker);
    broker.wait_until("every event committed", WAIT, BrokerState::all_committed);
    running.stop().expect("clean shutdown");

    let state = broker.state();
    let mut changes: BTreeMap<Vec<u8>, Vec<(OrderState, OrderState, u64)>> = BTreeMap::new();
    for record in state.outputs_to("order-status") {
        let changed: StatusChanged =
            serde_json::from_slice(&record.payload).expect("StatusChanged");
        changes
            .entry(changed.order_id.into_bytes())
            .or_default()
            .push((changed.from, changed.to, changed.version));
    }
    assert_eq!(
        changes,
        expected_transitions(&load),
        "every transition once, in order per order"
    );

    let refused = load
        .iter()
        .filter(|r| {
            matches!(
                r.expectation,
                Expectation::Event(EventExpectation::Illegal | EventExpectation::Quarantined)
            )
        })
        .count();
    assert!(refused > 0);
    assert_eq!(state.outputs_to("orders.dlq").count(), refused);
}

#[test]
fn a_full_partition_is_paused_and_resumed_without_losing_or_reordering_records_across_a_rebalance()
{
    let spec = valid_orders(600, 3);
    let load = load(&spec);
    let broker = Broker::with_input(2, input_of(&load));
    let tuning = Tuning {
        partition_queue: 2,
        max_in_flight_bytes: 4 * 1024,
        ..fast_tuning()
    };
    // Revoked while paused and assigned again: the partitions must be fetched again.
    let rebalance = Rebalance {
        after_records: 150,
        partitions: vec![0, 1],
        reassign_after: 150,
        while_paused: true,
    };
    let running = TestStage::validate()
        .tuning(tuning)
        .rebalance(rebalance)
        .start(&broker);
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    running.stop().expect("clean shutdown");

    let state = broker.state();
    assert!(
        state.pauses > 0 && state.resumes > 0,
        "the bounds were hit and released"
    );
    let validated: Vec<Vec<u8>> = state
        .outputs_to("orders.validated")
        .map(|r| r.key.clone().unwrap_or_default())
        .collect();
    assert_eq!(validated.len(), load.len());
    for partition in [0, 1] {
        let input_order: Vec<Vec<u8>> = state.input[&partition]
            .iter()
            .map(|r| r.key.clone().unwrap_or_default())
            .collect();
        let output_order: Vec<Vec<u8>> = validated
            .iter()
            .filter(|key| input_order.contains(key))
            .cloned()
            .collect();
        assert_eq!(
            output_order, input_order,
            "partition {partition} in offset order"
        );
    }
}

#[test]
fn records_carried_on_keep_their_inputs_timestamp_and_the_stages_own_records_do_not() {
    let spec = LoadSpec {
        invalid_share: 0.1,
        garbage_share: 0.1,
        ..valid_orders(300, 5)
    };
    let broker = Broker::with_input(2, input_of(&load(&spec)));
    let running = TestStage::validate().start(&broker);
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    running.stop().expect("clean shutdown");

    let state = broker.state();
    for topic in ["orders.validated", "orders.rejected"] {
        let records: Vec<&Produced> = state.outputs_to(topic).collect();
        assert!(!records.is_empty(), "{topic} has records");
        for record in records {
            let offset = usize::try_from(record.from.offset).expect("an offset");
            let input = &state.input[&record.from.partition][offset];
            assert_eq!(record.timestamp, Some(input.timestamp), "{topic}");
        }
    }
    for topic in ["orders.dlq", "state"] {
        assert!(
            state.outputs_to(topic).next().is_some(),
            "{topic} has records"
        );
        assert!(
            state.outputs_to(topic).all(|r| r.timestamp.is_none()),
            "{topic}: stamped when written"
        );
    }
}
