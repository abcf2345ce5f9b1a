//! The validate stage: every rule, dead-letter causes, dedup, and redaction of contact data.

use std::time::Duration;

use orderpipe_orders::generator::Mutation;
use orderpipe_orders::validate::{SeenOrder, ValidateOutcome, ValidatePolicy, Validator};
use orderpipe_orders::{
    ChangelogState, DeadLetterReason, MAX_PAYLOAD_BYTES, Output, Processor, RejectedOrder, Rule,
    ValidatedOrder, headers,
};
use serde_json::{Value, json};

use crate::support::{self, assert_state_invariant, input, input_at, only, order};

fn validate(key: Option<&[u8]>, payload: &[u8]) -> orderpipe_orders::validate::ValidateDecision {
    let decision = Validator::default().process(&input(key, Some(payload)), None);
    assert_state_invariant(&decision);
    decision
}

fn validate_value(value: &Value) -> orderpipe_orders::validate::ValidateDecision {
    validate(Some(b"ord-1"), &support::json(value))
}

fn reasons(decision: &orderpipe_orders::validate::ValidateDecision) -> Vec<(String, Rule)> {
    match &decision.outcome {
        ValidateOutcome::Rejected { reasons } => reasons
            .iter()
            .map(|reason| (reason.field.clone(), reason.rule))
            .collect(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut value = serde_json::to_value(order()).expect("fixture serialises");
    edit(&mut value);
    value
}

#[test]
fn a_valid_order_is_validated_with_resolved_amounts_and_remembered_for_dedup() {
    let decision = validate(Some(b"ord-1"), &support::json(&order()));
    assert_eq!(decision.outcome, ValidateOutcome::Validated);
    let emit = only(&decision.emits, Output::Validated);
    assert_eq!(emit.key.as_deref(), Some(&b"ord-1"[..]));
    let validated: ValidatedOrder = serde_json::from_slice(&emit.payload).expect("decodes");
    assert_eq!(
        (
            validated.subtotal_minor,
            validated.shipping_minor,
            validated.discount_minor
        ),
        (4498, 495, 498)
    );
    assert_eq!(validated.total_minor, 4495);
    assert_eq!(validated.currency_exponent, 2);
    assert_eq!(
        validated.validated_at,
        support::t0(),
        "record time, not wall clock"
    );
    assert_eq!(
        only(&decision.emits, Output::Changelog).key.as_deref(),
        Some(&b"ord-1"[..])
    );
    assert!(decision.state.is_some());
}

#[test]
fn every_single_rule_mutation_is_rejected_with_exactly_that_reason() {
    let policy = ValidatePolicy::default();
    for &mutation in Mutation::ALL {
        for pick in 0..2 {
            let mutated = mutation.apply(&order(), pick, policy.max_items);
            let decision = validate(mutated.key.as_deref(), &support::json(&mutated.order));
            assert_eq!(
                reasons(&decision),
                vec![(mutated.field.clone(), mutated.rule)],
                "{mutation:?} pick {pick}"
            );
        }
    }
}

#[test]
fn every_rule_code_except_order_id_reused_is_reachable_by_a_mutation() {
    let reached: Vec<Rule> = Mutation::ALL
        .iter()
        .map(|mutation| mutation.apply(&order(), 0, 500).rule)
        .collect();
    for rule in Rule::ALL {
        if *rule != Rule::OrderIdReused {
            assert!(reached.contains(rule), "no mutation breaks {rule}");
        }
    }
}

#[test]
fn all_violations_are_reported_together_in_field_order() {
    let value = with(|order| {
        order["customerId"] = Value::Null;
        order["currency"] = json!("usd");
        order["items"][1]["quantity"] = json!(0);
        order["items"][1]["sku"] = json!(17);
        order["contact"]["email"] = json!("nope");
    });
    assert_eq!(
        reasons(&validate_value(&value)),
        vec![
            ("customerId".to_owned(), Rule::Required),
            ("currency".to_owned(), Rule::CurrencyKnown),
            ("items[1].sku".to_owned(), Rule::WrongType),
            ("items[1].quantity".to_owned(), Rule::QuantityPositive),
            ("contact.email".to_owned(), Rule::EmailFormat),
        ]
    );
}

#[test]
fn wrong_json_types_are_reported_per_field() {
    let cases = [
        (with(|o| o["orderId"] = json!(1)), "orderId"),
        (with(|o| o["items"] = json!({"sku": "A"})), "items"),
        (with(|o| o["items"][0] = json!("A x2")), "items[0]"),
        (with(|o| o["contact"] = json!("a@example.com")), "contact"),
        (with(|o| o["shippingMinor"] = json!("495")), "shippingMinor"),
        (with(|o| o["createdAt"] = json!(1_740_830_400)), "createdAt"),
    ];
    for (value, field) in cases {
        assert_eq!(
            reasons(&validate_value(&value)),
            vec![(field.to_owned(), Rule::WrongType)]
        );
    }
}

#[test]
fn null_optional_fields_count_as_absent() {
    let value = with(|order| {
        order["shippingMinor"] = Value::Null;
        order["discountMinor"] = Value::Null;
        order["contact"] = Value::Null;
        order["totalMinor"] = json!(4498);
    });
    assert_eq!(validate_value(&value).outcome, ValidateOutcome::Validated);
}

#[test]
fn free_items_zero_exponent_currencies_and_offsets_are_valid() {
    let value = with(|order| {
        order["currency"] = json!("JPY");
        order["items"][1]["unitPriceMinor"] = json!(0);
        order["totalMinor"] = json!(3998 + 495 - 498);
        order["createdAt"] = json!("2025-03-01T13:59:00+02:00");
    });
    let decision = validate_value(&value);
    let emit = only(&decision.emits, Output::Validated);
    let validated: ValidatedOrder = serde_json::from_slice(&emit.payload).expect("decodes");
    assert_eq!(validated.currency_exponent, 0);
    assert_eq!(validated.created_at, support::at("2025-03-01T11:59:00Z"));
    let raw: Value = serde_json::from_slice(&emit.payload).expect("json");
    assert_eq!(
        raw["createdAt"],
        json!("2025-03-01T11:59:00Z"),
        "normalised to UTC"
    );
}

#[test]
fn unknown_members_are_ignored_and_not_forwarded() {
    let value = with(|order| order["giftWrap"] = json!(true));
    let decision = validate_value(&value);
    let raw: Value =
        serde_json::from_slice(&only(&decision.emits, Output::Validated).payload).expect("json");
    assert!(raw.get("giftWrap").is_none());
}

#[test]
fn the_item_limit_is_inclusive_and_configurable() {
    let item = json!({"sku": "A", "quantity": 1, "unitPriceMinor": 1});
    let value = with(|order| {
        order["items"] = Value::Array(vec![item; 3]);
        order["shippingMinor"] = json!(0);
        order["discountMinor"] = json!(0);
        order["totalMinor"] = json!(3);
    });
    let payload = support::json(&value);
    let record = input(Some(b"ord-1"), Some(&payload));
    let at_limit = Validator::new(ValidatePolicy {
        max_items: 3,
        ..ValidatePolicy::default()
    });
    assert_eq!(
        at_limit.process(&record, None).outcome,
        ValidateOutcome::Validated
    );
    let below = Validator::new(ValidatePolicy {
        max_items: 2,
        ..ValidatePolicy::default()
    });
    let decision = below.process(&record, None);
    assert_eq!(
        reasons(&decision),
        vec![("items".to_owned(), Rule::ItemsMax)]
    );
}

#[test]
fn the_rejection_keeps_the_original_object_and_the_input_key() {
    let value = with(|order| {
        order["giftWrap"] = json!(true);
        order["totalMinor"] = json!(1);
    });
    let decision = validate_value(&value);
    let emit = only(&decision.emits, Output::Rejected);
    assert_eq!(emit.key.as_deref(), Some(&b"ord-1"[..]));
    let rejected: RejectedOrder = serde_json::from_slice(&emit.payload).expect("decodes");
    assert_eq!(rejected.order_id.as_deref(), Some("ord-1"));
    assert_eq!(serde_json::to_value(&rejected.order).expect("json"), value);
    let raw: Value = serde_json::from_slice(&emit.payload).expect("json");
    assert_eq!(raw["reasons"][0]["rule"], json!("total_matches"));
    assert_eq!(raw["reasons"][0]["field"], json!("totalMinor"));
    assert!(
        raw["reasons"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("4495")),
        "the message states the expected total"
    );
}

#[test]
fn a_malformed_order_id_is_not_copied_into_the_rejection() {
    let value = with(|order| order["orderId"] = json!("x".repeat(10_000)));
    let decision = validate_value(&value);
    let rejected: RejectedOrder =
        serde_json::from_slice(&only(&decision.emits, Output::Rejected).payload).expect("decodes");
    assert_eq!(rejected.order_id, None);
}

#[test]
fn bytes_that_are_not_a_json_object_are_dead_lettered_unchanged_with_headers() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: [(Option<&[u8]>, DeadLetterReason); 8] = [
        (None, DeadLetterReason::NullPayload),
        (Some(b"\xff\xfe{}"), DeadLetterReason::NotUtf8),
        (Some(b"{\"orderId\": \"ord-1\""), DeadLetterReason::NotJson),
        (Some(b""), DeadLetterReason::NotJson),
        (Some(deep.as_bytes()), DeadLetterReason::NotJson),
        (Some(b"[1, 2]"), DeadLetterReason::NotAnObject),
        (Some(b"\"ord-1\""), DeadLetterReason::NotAnObject),
        (Some(b"null"), DeadLetterReason::NotAnObject),
    ];
    for (payload, reason) in cases {
        let record = input_at(Some(b"ord-1"), payload, 41, support::t0());
        let decision = Validator::default().process(&record, None);
        assert_eq!(decision.outcome, ValidateOutcome::DeadLettered { reason });
        assert!(decision.state.is_none());
        let emit = only(&decision.emits, Output::DeadLetter);
        assert_eq!(
            emit.payload,
            payload.unwrap_or_default(),
            "original bytes kept"
        );
        assert_eq!(emit.key.as_deref(), Some(&b"ord-1"[..]));
        assert_eq!(emit.header(headers::ERROR_REASON), Some(reason.code()));
        assert_eq!(emit.header(headers::ERROR_STAGE), Some("validate"));
        assert_eq!(emit.header(headers::ORIGINAL_TOPIC), Some(support::TOPIC));
        assert_eq!(emit.header(headers::ORIGINAL_PARTITION), Some("3"));
        assert_eq!(emit.header(headers::ORIGINAL_OFFSET), Some("41"));
        assert_eq!(
            emit.header(headers::ORIGINAL_TIMESTAMP),
            Some("2025-03-01T12:00:00Z")
        );
        assert!(
            emit.header(headers::ERROR_MESSAGE)
                .is_some_and(|m| !m.is_empty())
        );
    }
}

#[test]
fn a_payload_over_512_kib_is_dead_lettered_cut_to_the_limit_with_its_size() {
    // A valid order made huge by an unknown member: judged by size before anything else, so
    // neither its rejection nor its dead letter can outgrow what the broker takes.
    let mut order = serde_json::to_value(order()).expect("order json");
    order["padding"] = Value::String("x".repeat(MAX_PAYLOAD_BYTES));
    let payload = serde_json::to_vec(&order).expect("encodes");
    let record = input(Some(b"ord-1"), Some(&payload));
    let decision = Validator::default().process(&record, None);
    assert_eq!(
        decision.outcome,
        ValidateOutcome::DeadLettered {
            reason: DeadLetterReason::PayloadTooLarge
        }
    );
    let emit = only(&decision.emits, Output::DeadLetter);
    assert_eq!(
        emit.payload,
        payload[..MAX_PAYLOAD_BYTES],
        "the first 512 KiB"
    );
    let size = payload.len().to_string();
    assert_eq!(emit.header(headers::ORIGINAL_SIZE), Some(size.as_str()));
    assert_eq!(
        emit.header(headers::ERROR_REASON),
        Some("payload_too_large")
    );

    let just_fits = input(Some(b"ord-1"), Some(&payload[..MAX_PAYLOAD_BYTES]));
    let decision = Validator::default().process(&just_fits, None);
    let emit = only(&decision.emits, Output::DeadLetter);
    assert_eq!(
        emit.header(headers::ERROR_REASON),
        Some("not_json"),
        "judged, not cut"
    );
    assert_eq!(emit.header(headers::ORIGINAL_SIZE), None);
}

mod dedup {
    use super::*;

    fn first_seen() -> SeenOrder {
        let payload = support::json(&order());
        let decision = Validator::default().process(&input(Some(b"ord-1"), Some(&payload)), None);
        decision.state.expect("a validated order is remembered")
    }

    #[test]
    fn resubmitting_the_same_order_is_a_duplicate_that_produces_nothing() {
        let seen = first_seen();
        // Same content, different bytes: members reordered and spaced differently.
        let mut members: Vec<(String, Value)> = serde_json::to_value(order())
            .expect("json")
            .as_object()
            .expect("object")
            .clone()
            .into_iter()
            .collect();
        members.reverse();
        let reordered =
            serde_json::to_vec_pretty(&members.into_iter().collect::<serde_json::Map<_, _>>())
                .expect("json");
        let record = input_at(Some(b"ord-1"), Some(&reordered), 8, support::later(60));
        let decision = Validator::default().process(&record, Some(&seen));
        assert_eq!(decision.outcome, ValidateOutcome::Duplicate);
        assert!(decision.emits.is_empty());
        assert!(
            decision.state.is_none(),
            "the first validation stays the reference"
        );
    }

    #[test]
    fn reusing_an_order_id_with_different_content_is_rejected() {
        let seen = first_seen();
        let mut changed = order();
        changed.items[0].quantity = 3;
        changed.total_minor += 1999;
        let payload = support::json(&changed);
        let decision =
            Validator::default().process(&input(Some(b"ord-1"), Some(&payload)), Some(&seen));
        assert_eq!(
            reasons(&decision),
            vec![("orderId".to_owned(), Rule::OrderIdReused)]
        );
        assert!(decision.state.is_none());
    }

    #[test]
    fn after_the_window_the_same_order_is_validated_again_and_its_record_may_be_forgotten() {
        let seen = first_seen();
        let window = Duration::from_secs(3600);
        let policy = ValidatePolicy {
            dedup_window: window,
            ..ValidatePolicy::default()
        };
        let payload = support::json(&order());
        let inside = input_at(Some(b"ord-1"), Some(&payload), 8, support::later(59));
        let validator = Validator::new(policy);
        assert_eq!(
            validator.process(&inside, Some(&seen)).outcome,
            ValidateOutcome::Duplicate
        );
        let outside = input_at(Some(b"ord-1"), Some(&payload), 9, support::later(60));
        let decision = validator.process(&outside, Some(&seen));
        assert_eq!(decision.outcome, ValidateOutcome::Validated);
        let renewed = decision.state.clone().expect("remembered again");
        assert_eq!(renewed.first_validated_at, support::later(60));
        assert!(!seen.is_live(support::later(60), window));
        // So the runtime may forget it then, and not before: forgetting changes no decision.
        assert!(!validator.is_expired(&seen, support::later(59)));
        assert!(validator.is_expired(&seen, support::later(60)));
        assert_eq!(validator.process(&outside, None), decision);
    }

    #[test]
    fn a_rejected_submission_does_not_block_a_corrected_one() {
        let mut broken = order();
        broken.total_minor = 1;
        let payload = support::json(&broken);
        let decision = Validator::default().process(&input(Some(b"ord-1"), Some(&payload)), None);
        assert!(decision.state.is_none(), "rejections are not remembered");
    }

    #[test]
    fn the_dedup_record_round_trips_and_refuses_unknown_format_versions() {
        let seen = first_seen();
        let bytes = seen.encode();
        let raw: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(raw["v"], json!(1));
        assert_eq!(SeenOrder::decode(&bytes).expect("decodes"), seen);
        let future = String::from_utf8(bytes)
            .expect("utf8")
            .replace("\"v\":1", "\"v\":2");
        assert!(SeenOrder::decode(future.as_bytes()).is_err());
        assert!(SeenOrder::decode(b"garbage").is_err());
    }
}

mod redaction {
    use super::*;

    const SECRETS: [&str; 2] = ["secret.person", "wh_secret_subscription"];

    fn assert_redacted(text: &str) {
        for secret in SECRETS {
            assert!(!text.contains(secret), "contact data leaked: {text}");
        }
    }

    #[test]
    fn debug_output_of_every_record_and_decision_hides_contact_data() {
        let payload = support::json(&order());
        let record = input(Some(b"ord-1"), Some(&payload));
        let validated = Validator::default().process(&record, None);
        let validated_order: ValidatedOrder =
            serde_json::from_slice(&only(&validated.emits, Output::Validated).payload)
                .expect("decodes");
        let rejected = validate_value(&with(|order| order["totalMinor"] = json!(1)));
        let rejected_order: RejectedOrder =
            serde_json::from_slice(&only(&rejected.emits, Output::Rejected).payload)
                .expect("decodes");

        assert_redacted(&format!("{:?}", order()));
        assert_redacted(&format!("{:#?}", order()));
        assert_redacted(&format!("{record:?}"));
        assert_redacted(&format!("{validated:?}"));
        assert_redacted(&format!("{validated_order:?}"));
        assert_redacted(&format!("{rejected:?}"));
        assert_redacted(&format!("{rejected_order:?}"));
        assert!(
            format!("{:?}", order()).contains("<redacted>"),
            "presence is still visible"
        );
    }

    #[test]
    fn invalid_contact_values_are_not_quoted_in_reasons() {
        let value = with(|order| {
            order["contact"]["email"] = json!("secret.person at example");
            order["contact"]["webhookSubscriptionId"] = json!("wh_secret_subscription!");
        });
        let decision = validate_value(&value);
        let ValidateOutcome::Rejected { reasons } = &decision.outcome else {
            panic!("expected a rejection");
        };
        assert_eq!(reasons.len(), 2);
        assert_redacted(&format!("{reasons:?}"));
    }
}

#[test]
fn a_validated_order_starts_its_life_cycle_with_a_replay_safe_status_event() {
    use orderpipe_orders::StatusEvent;
    use orderpipe_orders::status::StatusMachine;

    let first = validate(Some(b"ord-1"), &support::json(&order()));
    let again = validate(Some(b"ord-1"), &support::json(&order()));
    let event_bytes = &only(&first.emits, Output::StatusEvent).payload;
    assert_eq!(
        event_bytes,
        &only(&again.emits, Output::StatusEvent).payload,
        "re-processing yields the same event"
    );
    let event: StatusEvent = serde_json::from_slice(event_bytes).expect("decodes");
    assert_eq!(
        (event.order_id.as_str(), event.event_id.as_str()),
        ("ord-1", "validate:ord-1")
    );

    // The status stage accepts it as the order's first transition.
    let status = StatusMachine::default().process(&input(Some(b"ord-1"), Some(event_bytes)), None);
    assert_eq!(status.outcome.label(), "transitioned");
}

#[test]
fn a_rejected_order_emits_no_status_event() {
    let decision = validate_value(&with(|v| v["items"][0]["quantity"] = json!(0)));
    assert!(
        decision
            .emits
            .iter()
            .all(|e| e.output != Output::StatusEvent)
    );
}

mod admit {
    use orderpipe_orders::validate::{Admitted, Inadmissible};

    use super::*;

    #[test]
    fn a_valid_order_is_admitted_with_the_fingerprint_the_stage_remembers() {
        let payload = support::json(&order());
        let admitted = Validator::default().admit(&payload).expect("admitted");
        let decision = validate(Some(b"ord-1"), &payload);
        let seen = SeenOrder::decode(&only(&decision.emits, Output::Changelog).payload)
            .expect("dedup record");
        assert_eq!(
            admitted,
            Admitted {
                order_id: "ord-1".to_owned(),
                fingerprint: seen.fingerprint
            }
        );
    }

    #[test]
    fn admission_refuses_with_the_same_reasons_as_the_stage_for_every_rule_but_the_key() {
        let policy = ValidatePolicy::default();
        for &mutation in Mutation::ALL {
            for pick in 0..2 {
                let mutated = mutation.apply(&order(), pick, policy.max_items);
                if mutated.rule == Rule::KeyMatchesOrderId {
                    // The gateway keys the record by the payload's orderId: it cannot differ.
                    continue;
                }
                let payload = support::json(&mutated.order);
                let Err(Inadmissible::Rejected { reasons, .. }) =
                    Validator::default().admit(&payload)
                else {
                    panic!("{mutation:?} pick {pick} was not rejected");
                };
                let stage = validate(mutated.key.as_deref(), &payload);
                assert_eq!(
                    reasons
                        .iter()
                        .map(|r| (r.field.clone(), r.rule))
                        .collect::<Vec<_>>(),
                    super::reasons(&stage),
                    "{mutation:?} pick {pick}"
                );
            }
        }
    }

    #[test]
    fn bytes_that_are_not_a_json_object_are_refused_with_the_dead_letter_reason() {
        for (payload, reason) in [
            (&b"[1]"[..], DeadLetterReason::NotAnObject),
            (b"{", DeadLetterReason::NotJson),
            (b"\xff", DeadLetterReason::NotUtf8),
        ] {
            match Validator::default().admit(payload) {
                Err(Inadmissible::Undecodable { reason: got, .. }) => assert_eq!(got, reason),
                other => panic!("{payload:?}: {other:?}"),
            }
        }
    }
}
