//! Property tests: the validator and the state machine hold their invariants for any input.
//!
//! Case counts are capped so the whole suite stays within a few seconds on a 2-core machine.

use std::collections::HashMap;

use chrono::DateTime;
use orderpipe_orders::generator::Mutation;
use orderpipe_orders::notify::{Notifier, RetryPolicy};
use orderpipe_orders::status::transitions::TRANSITIONS;
use orderpipe_orders::status::{OrderStatusState, StatusMachine, StatusOutcome};
use orderpipe_orders::validate::{ValidateOutcome, ValidatePolicy, Validator};
use orderpipe_orders::{
    ChangelogState, Contact, EventDetails, EventType, OrderItem, OrderPlaced, Output, Processor,
    StatusEvent, ValidatedOrder, currency,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

use crate::support::{self, assert_state_invariant, config, input, input_at, only};

const ORDER_FIELDS: &[&str] = &[
    "orderId",
    "customerId",
    "createdAt",
    "currency",
    "items",
    "sku",
    "quantity",
    "unitPriceMinor",
    "shippingMinor",
    "discountMinor",
    "totalMinor",
    "contact",
    "email",
    "webhookSubscriptionId",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN/inf", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        select(ORDER_FIELDS).prop_map(str::to_owned),
        "[a-zA-Z]{0,6}"
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key.clone(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

prop_compose! {
    fn arb_item()(
        sku in "[!-~]{1,64}",
        quantity in 1_i64..10_000,
        unit_price_minor in 0_i64..1_000_000_000,
    ) -> OrderItem {
        OrderItem { sku, quantity, unit_price_minor }
    }
}

prop_compose! {
    fn arb_contact()(
        email in proptest::option::of("[a-z0-9.]{1,12}@[a-z]{1,12}\\.(com|de|co\\.uk)"),
        webhook_subscription_id in proptest::option::of("[A-Za-z0-9_-]{1,64}"),
    ) -> Contact {
        Contact { email, webhook_subscription_id }
    }
}

prop_compose! {
    /// Any order that satisfies every rule, edge values included (1- and 64-char ids, free items,
    /// zero-exponent currencies, no optional fields, discount = subtotal).
    fn arb_valid_order()(
        order_id in "[A-Za-z0-9_-]{1,64}",
        customer_id in "[!-~]{1,128}",
        created_seconds in 0_i64..4_102_444_800,
        created_nanos in prop_oneof![Just(0_u32), 0_u32..1_000_000_000],
        currency in select(currency::active_codes().collect::<Vec<_>>()),
        items in vec(arb_item(), 1..24),
        shipping_minor in proptest::option::of(0_i64..1_000_000_000),
        discount_percent in proptest::option::of(0_i64..=100),
        contact in proptest::option::of(arb_contact()),
    ) -> OrderPlaced {
        let subtotal: i64 = items.iter().map(|item| item.quantity * item.unit_price_minor).sum();
        let discount_minor = discount_percent.map(|percent| subtotal / 100 * percent);
        OrderPlaced {
            order_id,
            customer_id,
            created_at: DateTime::from_timestamp(created_seconds, created_nanos).unwrap_or_default(),
            currency: currency.to_owned(),
            total_minor: subtotal + shipping_minor.unwrap_or(0) - discount_minor.unwrap_or(0),
            items,
            shipping_minor,
            discount_minor,
            contact,
        }
    }
}

fn validate_bytes(
    key: Option<&[u8]>,
    payload: &[u8],
) -> orderpipe_orders::validate::ValidateDecision {
    let decision = Validator::default().process(&input(key, Some(payload)), None);
    assert_state_invariant(&decision);
    decision
}

/// Every decision without prior state is one of the three, with the records that outcome implies.
fn assert_one_of_three(decision: &orderpipe_orders::validate::ValidateDecision, payload: &[u8]) {
    match &decision.outcome {
        ValidateOutcome::Validated => {
            only(&decision.emits, Output::Validated);
        }
        ValidateOutcome::Rejected { reasons } => {
            assert!(!reasons.is_empty(), "a rejection names at least one reason");
            assert_eq!(decision.emits.len(), 1);
            only(&decision.emits, Output::Rejected);
        }
        ValidateOutcome::DeadLettered { .. } => {
            assert_eq!(only(&decision.emits, Output::DeadLetter).payload, payload);
        }
        ValidateOutcome::Duplicate => panic!("no state, so no duplicate"),
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn validator_never_panics_on_arbitrary_bytes(payload in vec(any::<u8>(), 0..512), key in proptest::option::of(vec(any::<u8>(), 0..16))) {
        let decision = validate_bytes(key.as_deref(), &payload);
        assert_one_of_three(&decision, &payload);
    }

    #[test]
    fn validator_never_panics_on_arbitrary_json(value in arb_json()) {
        let payload = support::json(&value);
        let decision = validate_bytes(Some(b"ord-1"), &payload);
        assert_one_of_three(&decision, &payload);
    }

    #[test]
    fn validator_never_panics_on_orders_with_arbitrary_members(
        order in arb_valid_order(),
        replacements in vec((select(ORDER_FIELDS), arb_json()), 1..4),
        item_replacements in vec((select(ORDER_FIELDS), arb_json()), 0..3),
    ) {
        let mut value = serde_json::to_value(&order).expect("json");
        for (field, replacement) in replacements {
            value[field] = replacement;
        }
        if let Some(item) = value.pointer_mut("/items/0").filter(|item| item.is_object()) {
            for (field, replacement) in item_replacements {
                item[field] = replacement;
            }
        }
        let payload = support::json(&value);
        let decision = validate_bytes(Some(order.order_id.as_bytes()), &payload);
        assert_one_of_three(&decision, &payload);
    }

    #[test]
    fn every_valid_order_is_validated_unchanged(order in arb_valid_order()) {
        let decision = validate_bytes(Some(order.order_id.as_bytes()), &support::json(&order));
        prop_assert_eq!(&decision.outcome, &ValidateOutcome::Validated);
        let validated: ValidatedOrder =
            serde_json::from_slice(&only(&decision.emits, Output::Validated).payload).expect("decodes");
        prop_assert_eq!(&validated.order_id, &order.order_id);
        prop_assert_eq!(&validated.items, &order.items);
        prop_assert_eq!(validated.created_at, order.created_at);
        prop_assert_eq!(&validated.contact, &order.contact);
        prop_assert_eq!(validated.total_minor, order.total_minor);
        prop_assert_eq!(
            validated.subtotal_minor + validated.shipping_minor - validated.discount_minor,
            validated.total_minor
        );
    }

    #[test]
    fn every_single_mutation_of_a_valid_order_is_rejected_naming_its_field_and_rule(
        order in arb_valid_order(),
        mutation in select(Mutation::ALL),
        pick in any::<usize>(),
    ) {
        let mutated = mutation.apply(&order, pick, ValidatePolicy::default().max_items);
        let decision = validate_bytes(mutated.key.as_deref(), &support::json(&mutated.order));
        let ValidateOutcome::Rejected { reasons } = &decision.outcome else {
            return Err(TestCaseError::fail(format!("{mutation:?} not rejected: {:?}", decision.outcome)));
        };
        let named: Vec<_> = reasons.iter().map(|reason| (reason.field.as_str(), reason.rule)).collect();
        prop_assert_eq!(named, vec![(mutated.field.as_str(), mutated.rule)], "{:?}", mutation);
    }
}

/// One step of a generated status history.
#[derive(Debug, Clone)]
enum Step {
    Event {
        id: u8,
        kind: EventType,
        keyed_right: bool,
    },
    Garbage,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        30 => (0_u8..12, select(EventType::ALL), prop::bool::weighted(0.95))
            .prop_map(|(id, kind, keyed_right)| Step::Event { id, kind, keyed_right }),
        1 => Just(Step::Garbage),
    ]
}

fn step_bytes(step: &Step) -> (Vec<u8>, Vec<u8>) {
    match step {
        Step::Event {
            id,
            kind,
            keyed_right,
        } => {
            let event = StatusEvent {
                order_id: "ord-1".to_owned(),
                event_id: format!("e{id}"),
                kind: *kind,
                at: support::t0(),
                details: EventDetails::default(),
            };
            let key = if *keyed_right {
                b"ord-1".to_vec()
            } else {
                b"ord-2".to_vec()
            };
            (key, support::json(&event))
        }
        Step::Garbage => (b"ord-1".to_vec(), b"{oops".to_vec()),
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_state_machine_keeps_its_invariants_for_any_event_sequence(steps in vec(arb_step(), 0..40)) {
        let machine = StatusMachine::default();
        // The runtime's store: state per record key (mis-keyed events belong to "ord-2").
        let mut states: HashMap<Vec<u8>, OrderStatusState> = HashMap::new();
        let mut accepted: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();

        for (offset, step) in steps.iter().enumerate() {
            let (key, payload) = step_bytes(step);
            let record = input_at(Some(&key), Some(&payload), offset as i64, support::later(offset as i64));
            let decision = machine.process(&record, states.get(&key));
            assert_state_invariant(&decision);
            let before = states.get(&key).cloned().unwrap_or_else(|| OrderStatusState::initial(support::t0()));
            // The runtime restores state from the changelog record, so continue from the decoded bytes.
            let after = decision.emits.iter()
                .find(|emit| emit.output == Output::Changelog)
                .map(|emit| OrderStatusState::decode(&emit.payload).expect("changelog decodes"));

            match &decision.outcome {
                StatusOutcome::Transitioned { from, to, version } => {
                    prop_assert!(TRANSITIONS.contains(&(*from, *to)), "{} -> {} outside the table", from, to);
                    prop_assert_eq!(*from, before.state);
                    prop_assert_eq!(*version, before.version + 1, "versions grow by exactly one");
                    prop_assert!(before.quarantine.is_none(), "no transition while quarantined");
                    let after = after.clone().expect("a transition changes state");
                    prop_assert_eq!((after.state, after.version), (*to, *version));
                    only(&decision.emits, Output::StatusChanged);
                    accepted.push((key.clone(), payload.clone()));
                }
                StatusOutcome::Released => accepted.push((key.clone(), payload.clone())),
                StatusOutcome::DuplicateEvent | StatusOutcome::NotQuarantined => {
                    prop_assert!(decision.emits.is_empty() && decision.state.is_none());
                }
                StatusOutcome::DeadLettered { quarantined, .. } => {
                    only(&decision.emits, Output::DeadLetter);
                    if let Some(after) = &after {
                        prop_assert!(*quarantined && after.quarantine.is_some());
                        prop_assert_eq!((after.state, after.version), (before.state, before.version));
                    }
                }
            }
            if let Some(after) = after {
                states.insert(key, after);
            }
        }

        // Replaying any accepted event is ignored and changes nothing.
        for (key, payload) in &accepted {
            let record = input(Some(key), Some(payload));
            let decision = machine.process(&record, states.get(key));
            prop_assert_eq!(&decision.outcome, &StatusOutcome::DuplicateEvent);
            prop_assert!(decision.emits.is_empty() && decision.state.is_none());
        }
    }

    #[test]
    fn the_state_machine_never_panics_on_arbitrary_bytes(payload in vec(any::<u8>(), 0..256), keyed in any::<bool>()) {
        let key = keyed.then_some(&b"ord-1"[..]);
        let decision = StatusMachine::default().process(&input(key, Some(&payload)), None);
        assert_state_invariant(&decision);
        prop_assert_eq!(decision.emits.iter().filter(|e| e.output == Output::DeadLetter).count(), 1);
    }

    #[test]
    fn notify_never_panics_on_arbitrary_bytes(payload in vec(any::<u8>(), 0..256)) {
        let _plan = Notifier::default().plan(&input(Some(b"ord-1"), Some(&payload)));
    }

    #[test]
    fn backoff_stays_within_the_doubling_ceiling_and_the_cap(attempt in 0_u32..80, sample in any::<f64>()) {
        let policy = RetryPolicy::default();
        let delay = policy.backoff(attempt, sample);
        prop_assert!(delay <= policy.max_delay);
        prop_assert!(delay <= policy.backoff(attempt, 1.0));
    }
}
