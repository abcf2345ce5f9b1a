//! The seeded generators: deterministic, realistic, and labelled with what the pipeline must do —
//! checked here against the real stages, so the load generator's expectations can be trusted.

use std::collections::{HashMap, HashSet};

use orderpipe_orders::generator::{
    EventConfig, EventExpectation, EventGenerator, Expected, GenConfig, OrderGenerator,
};
use orderpipe_orders::status::{OrderStatusState, StatusMachine, StatusOutcome};
use orderpipe_orders::validate::{SeenOrder, ValidateOutcome, Validator};
use orderpipe_orders::{DeadLetterReason, Processor};

use crate::support::{self, input_at};

fn heavy_mix() -> GenConfig {
    GenConfig {
        invalid_share: 0.2,
        garbage_share: 0.1,
        duplicate_share: 0.1,
    }
}

#[test]
fn the_same_seed_yields_the_same_records_and_another_seed_does_not() {
    let first: Vec<_> = OrderGenerator::new(7, heavy_mix()).take(300).collect();
    let again: Vec<_> = OrderGenerator::new(7, heavy_mix()).take(300).collect();
    let other: Vec<_> = OrderGenerator::new(8, heavy_mix()).take(300).collect();
    assert_eq!(first, again);
    assert_ne!(first, other);
}

#[test]
fn only_valid_orders_and_resubmissions_come_from_a_mix_of_only_those() {
    let resubmissions_only = GenConfig {
        invalid_share: 0.0,
        garbage_share: 0.0,
        duplicate_share: 0.5,
    };
    // Many seeds, so some draw a re-submission first, before any order exists to re-submit.
    for seed in 0..64 {
        let kinds: Vec<_> = OrderGenerator::new(seed, resubmissions_only.clone())
            .take(20)
            .map(|record| record.expected)
            .collect();
        assert!(
            kinds
                .iter()
                .all(|e| matches!(e, Expected::Valid | Expected::Duplicate)),
            "seed {seed}: {kinds:?}"
        );
        assert_eq!(kinds[0], Expected::Valid, "seed {seed}");
    }
}

#[test]
fn valid_orders_are_about_one_kilobyte_with_unique_ids() {
    let mut generator = OrderGenerator::new(1, GenConfig::default());
    let orders: Vec<_> = (0..500).map(|_| generator.valid_order()).collect();
    let sizes: Vec<usize> = orders
        .iter()
        .map(|order| support::json(order).len())
        .collect();
    let mean = sizes.iter().sum::<usize>() / sizes.len();
    assert!((800..=1300).contains(&mean), "mean size {mean} bytes");
    let ids: HashSet<_> = orders.iter().map(|order| &order.order_id).collect();
    assert_eq!(ids.len(), orders.len());
}

#[test]
fn the_mix_follows_the_configured_shares() {
    let records: Vec<_> = OrderGenerator::new(3, heavy_mix()).take(4000).collect();
    let share = |wanted: fn(&Expected) -> bool| {
        records
            .iter()
            .filter(|record| wanted(&record.expected))
            .count() as f64
            / 4000.0
    };
    let invalid = share(|e| matches!(e, Expected::Invalid { .. }));
    let garbage = share(|e| matches!(e, Expected::Garbage { .. }));
    let duplicate = share(|e| matches!(e, Expected::Duplicate));
    assert!((0.16..0.24).contains(&invalid), "invalid {invalid}");
    assert!((0.07..0.13).contains(&garbage), "garbage {garbage}");
    assert!((0.07..0.13).contains(&duplicate), "duplicate {duplicate}");
}

#[test]
fn every_generated_record_gets_the_outcome_its_label_promises() {
    let validator = Validator::default();
    let mut seen: HashMap<Vec<u8>, SeenOrder> = HashMap::new();
    for (offset, record) in OrderGenerator::new(11, heavy_mix()).take(3000).enumerate() {
        let input = input_at(
            record.key.as_deref(),
            Some(&record.payload),
            offset as i64,
            support::t0(),
        );
        let state = record.key.as_ref().and_then(|key| seen.get(key));
        let decision = validator.process(&input, state);
        match (&record.expected, &decision.outcome) {
            (Expected::Valid, ValidateOutcome::Validated)
            | (Expected::Duplicate, ValidateOutcome::Duplicate) => {}
            (Expected::Invalid { field, rule }, ValidateOutcome::Rejected { reasons }) => {
                assert!(
                    reasons.iter().any(|r| &r.field == field && r.rule == *rule),
                    "{reasons:?}"
                );
            }
            (Expected::Garbage { reason }, ValidateOutcome::DeadLettered { reason: actual }) => {
                assert_eq!(reason, actual);
            }
            (expected, actual) => panic!("record {offset}: expected {expected:?}, got {actual:?}"),
        }
        if let (Some(key), Some(state)) = (record.key, decision.state) {
            seen.insert(key, state);
        }
    }
}

#[test]
fn generated_garbage_covers_every_undecodable_kind() {
    let config = GenConfig {
        invalid_share: 0.0,
        garbage_share: 1.0,
        duplicate_share: 0.0,
    };
    let reasons: HashSet<_> = OrderGenerator::new(5, config)
        .take(100)
        .filter_map(|record| match record.expected {
            Expected::Garbage { reason } => Some(reason),
            _ => None,
        })
        .collect();
    let expected = [
        DeadLetterReason::NotJson,
        DeadLetterReason::NotUtf8,
        DeadLetterReason::NotAnObject,
    ];
    assert_eq!(reasons, expected.into_iter().collect());
}

#[test]
fn generated_event_sequences_get_the_outcomes_their_labels_promise() {
    let config = EventConfig {
        duplicate_share: 0.2,
        illegal_share: 0.3,
        in_flight_share: 0.1,
    };
    let mut generator = EventGenerator::new(21, config);
    let machine = StatusMachine::default();
    let mut labels = HashSet::new();
    for order in 0..400 {
        let order_id = format!("ord-{order}");
        let mut state: Option<OrderStatusState> = None;
        for (offset, generated) in generator
            .lifecycle(&order_id, support::t0())
            .iter()
            .enumerate()
        {
            let input = input_at(
                Some(&generated.key),
                Some(&generated.payload),
                offset as i64,
                support::t0(),
            );
            let decision = machine.process(&input, state.as_ref());
            let matches = match (generated.expected, &decision.outcome) {
                (
                    EventExpectation::Transition { from, to, version },
                    StatusOutcome::Transitioned {
                        from: f,
                        to: t,
                        version: v,
                    },
                ) => (from, to, version) == (*f, *t, *v),
                (EventExpectation::Duplicate, StatusOutcome::DuplicateEvent) => true,
                (
                    EventExpectation::Illegal,
                    StatusOutcome::DeadLettered {
                        reason,
                        quarantined: true,
                    },
                ) => *reason == DeadLetterReason::IllegalTransition,
                (
                    EventExpectation::Quarantined,
                    StatusOutcome::DeadLettered {
                        reason,
                        quarantined: false,
                    },
                ) => *reason == DeadLetterReason::KeyQuarantined,
                _ => false,
            };
            assert!(
                matches,
                "{order_id} #{offset}: expected {:?}, got {:?}",
                generated.expected, decision.outcome
            );
            labels.insert(std::mem::discriminant(&generated.expected));
            if let Some(next) = decision.state {
                state = Some(next);
            }
        }
    }
    assert_eq!(labels.len(), 4, "every kind of event was generated");
}
