//! The status stage: the transition table, versions, idempotency, quarantine and the state codec.

use orderpipe_orders::status::transitions::{self, TRANSITIONS};
use orderpipe_orders::status::{
    OrderStatusState, StatusDecision, StatusMachine, StatusOutcome, StatusPolicy,
};
use orderpipe_orders::{
    ChangelogState, DeadLetterReason, EventDetails, EventType, OrderState, Output, Processor,
    StatusChanged, StatusEvent, headers,
};
use serde_json::{Value, json};

use crate::support::{self, assert_state_invariant, input_at, only};

const ORDER: &[u8] = b"ord-1";

fn event(event_id: &str, kind: EventType) -> StatusEvent {
    StatusEvent {
        order_id: "ord-1".to_owned(),
        event_id: event_id.to_owned(),
        kind,
        at: support::at("2025-03-01T12:30:00Z"),
        details: EventDetails::default(),
    }
}

/// Plays events through the machine like the runtime: state in, state out.
struct Order {
    machine: StatusMachine,
    state: Option<OrderStatusState>,
    offset: i64,
}

impl Order {
    fn new() -> Self {
        Self::with(StatusMachine::default())
    }

    fn with(machine: StatusMachine) -> Self {
        Self {
            machine,
            state: None,
            offset: 0,
        }
    }

    fn send_bytes(&mut self, key: Option<&[u8]>, payload: &[u8]) -> StatusDecision {
        self.offset += 1;
        let record = input_at(key, Some(payload), self.offset, support::later(self.offset));
        let decision = self.machine.process(&record, self.state.as_ref());
        assert_state_invariant(&decision);
        if let Some(state) = &decision.state {
            self.state = Some(state.clone());
        }
        decision
    }

    fn send(&mut self, event: &StatusEvent) -> StatusDecision {
        self.send_bytes(Some(ORDER), &support::json(event))
    }

    fn send_kind(&mut self, event_id: &str, kind: EventType) -> StatusDecision {
        self.send(&event(event_id, kind))
    }

    fn state(&self) -> OrderState {
        self.state
            .as_ref()
            .map_or(OrderState::Placed, |state| state.state)
    }

    /// Drives the order into `target` along a shortest legal path.
    fn reach(target: OrderState) -> Self {
        let mut order = Self::new();
        for (index, step) in path_to(target).into_iter().enumerate() {
            let decision = order.send_kind(&format!("setup-{index}"), kind_for(step));
            assert!(matches!(
                decision.outcome,
                StatusOutcome::Transitioned { .. }
            ));
        }
        assert_eq!(order.state(), target);
        order
    }
}

fn kind_for(state: OrderState) -> EventType {
    *EventType::ALL
        .iter()
        .find(|kind| kind.target_state() == Some(state))
        .expect("every state but Placed has an event type")
}

/// Breadth-first shortest path from Placed to `target` through the table.
fn path_to(target: OrderState) -> Vec<OrderState> {
    let mut paths = vec![(OrderState::Placed, Vec::new())];
    let mut index = 0;
    while let Some((state, path)) = paths.get(index).cloned() {
        if state == target {
            return path;
        }
        for next in transitions::next_states(state) {
            if !paths.iter().any(|(seen, _)| *seen == next) {
                let mut longer = path.clone();
                longer.push(next);
                paths.push((next, longer));
            }
        }
        index += 1;
    }
    panic!("{target} is unreachable from Placed");
}

/// The transition table as the product owner specified it, written independently of the code's
/// table: rows are the current state, columns the event, `x` = allowed.
const EXPECTED_TABLE: &str = "
                    Validated Rejected PaymentAuthorized PaymentFailed Shipped Delivered Cancelled Refunded
Placed              x         x        .                 .             .       .         x         .
Validated           .         .        x                 x             .       .         x         .
Rejected            .         .        .                 .             .       .         .         .
PaymentAuthorized   .         .        .                 .             x       .         x         x
PaymentFailed       .         .        x                 x             .       .         x         .
Shipped             .         .        .                 .             .       x         .         x
Delivered           .         .        .                 .             .       .         .         x
Cancelled           .         .        .                 .             .       .         .         .
Refunded            .         .        .                 .             .       .         .         .
";

fn expected_transitions() -> Vec<(OrderState, OrderState)> {
    let mut lines = EXPECTED_TABLE.trim_matches('\n').lines();
    let header: Vec<OrderState> = lines
        .next()
        .expect("header")
        .split_whitespace()
        .map(|code| OrderState::from_code(code).expect("state"))
        .collect();
    let mut allowed = Vec::new();
    for line in lines {
        let mut cells = line.split_whitespace();
        let from = OrderState::from_code(cells.next().expect("row")).expect("state");
        for (to, cell) in header.iter().zip(cells) {
            if cell == "x" {
                allowed.push((from, *to));
            }
        }
    }
    allowed
}

#[test]
fn the_code_table_is_exactly_the_specified_table() {
    let mut expected = expected_transitions();
    let mut actual = TRANSITIONS.to_vec();
    expected.sort();
    actual.sort();
    assert_eq!(actual, expected);
}

#[test]
fn every_state_event_pair_is_accepted_or_dead_lettered_as_the_table_says() {
    let expected = expected_transitions();
    for &from in OrderState::ALL {
        for &kind in EventType::ALL {
            let Some(to) = kind.target_state() else {
                continue;
            };
            let mut order = Order::reach(from);
            let version_before = order.state.as_ref().map_or(0, |state| state.version);
            let decision = order.send_kind("probe", kind);
            if expected.contains(&(from, to)) {
                let version = version_before + 1;
                assert_eq!(
                    decision.outcome,
                    StatusOutcome::Transitioned { from, to, version }
                );
                let emit = only(&decision.emits, Output::StatusChanged);
                assert_eq!(emit.key.as_deref(), Some(ORDER));
                let changed: StatusChanged =
                    serde_json::from_slice(&emit.payload).expect("decodes");
                assert_eq!(
                    (changed.from, changed.to, changed.version),
                    (from, to, version)
                );
                assert_eq!(changed.event_id, "probe");
            } else {
                let reason = DeadLetterReason::IllegalTransition;
                assert_eq!(
                    decision.outcome,
                    StatusOutcome::DeadLettered {
                        reason,
                        quarantined: true
                    },
                    "{from} -> {to}"
                );
                let emit = only(&decision.emits, Output::DeadLetter);
                let message = emit.header(headers::ERROR_MESSAGE).expect("message");
                assert!(
                    message.contains(from.code()) && message.contains(to.code()),
                    "{message}"
                );
                assert_eq!(emit.header(headers::ERROR_FIELD), Some("type"));
            }
        }
    }
}

#[test]
fn terminal_states_are_exactly_rejected_cancelled_and_refunded() {
    let terminal: Vec<OrderState> = OrderState::ALL
        .iter()
        .copied()
        .filter(|s| transitions::is_terminal(*s))
        .collect();
    assert_eq!(
        terminal,
        [
            OrderState::Rejected,
            OrderState::Cancelled,
            OrderState::Refunded
        ]
    );
}

#[test]
fn the_happy_path_counts_versions_from_one() {
    let mut order = Order::new();
    let path = [
        EventType::Validated,
        EventType::PaymentAuthorized,
        EventType::Shipped,
        EventType::Delivered,
    ];
    for (index, kind) in path.into_iter().enumerate() {
        let decision = order.send_kind(&format!("e{index}"), kind);
        let StatusOutcome::Transitioned { version, .. } = decision.outcome else {
            panic!("{kind} refused: {:?}", decision.outcome);
        };
        assert_eq!(version, index as u64 + 1);
    }
    let state = order.state.expect("state");
    assert_eq!((state.state, state.version), (OrderState::Delivered, 4));
    assert_eq!(state.recent_event_ids, ["e0", "e1", "e2", "e3"]);
}

#[test]
fn details_pass_through_to_status_changed() {
    let mut order = Order::reach(OrderState::PaymentAuthorized);
    let mut shipped = event("ship", EventType::Shipped);
    shipped.details.carrier = Some("DHL".to_owned());
    shipped.details.tracking_number = Some("TRK1".to_owned());
    let decision = order.send(&shipped);
    let changed: StatusChanged =
        serde_json::from_slice(&only(&decision.emits, Output::StatusChanged).payload)
            .expect("json");
    assert_eq!(changed.details, shipped.details);
    assert_eq!(changed.at, shipped.at, "business time of the event");
}

mod idempotency {
    use super::*;

    #[test]
    fn a_repeated_event_id_is_ignored_and_changes_nothing() {
        let mut order = Order::new();
        order.send_kind("e1", EventType::Validated);
        let before = order.state.clone();
        let decision = order.send_kind("e1", EventType::Validated);
        assert_eq!(decision.outcome, StatusOutcome::DuplicateEvent);
        assert!(decision.emits.is_empty() && decision.state.is_none());
        assert_eq!(order.state, before);
    }

    #[test]
    fn a_repeated_event_id_is_ignored_whatever_its_type() {
        let mut order = Order::new();
        order.send_kind("e1", EventType::Validated);
        let decision = order.send_kind("e1", EventType::Shipped);
        assert_eq!(decision.outcome, StatusOutcome::DuplicateEvent);
    }

    #[test]
    fn the_event_id_window_is_bounded() {
        let machine = StatusMachine::new(StatusPolicy {
            recent_event_ids: 2,
            ..StatusPolicy::default()
        });
        let mut order = Order::with(machine);
        order.send_kind("e1", EventType::Validated);
        order.send_kind("e2", EventType::PaymentFailed);
        order.send_kind("e3", EventType::PaymentFailed);
        let state = order.state.clone().expect("state");
        assert_eq!(state.recent_event_ids, ["e2", "e3"]);
        // Forgotten beyond the window: judged as a new event (and refused here, Validated twice).
        let decision = order.send_kind("e1", EventType::Validated);
        assert!(matches!(
            decision.outcome,
            StatusOutcome::DeadLettered { .. }
        ));
    }
}

mod quarantine {
    use super::*;

    fn quarantined_order() -> Order {
        let mut order = Order::reach(OrderState::Validated);
        let decision = order.send_kind("early-ship", EventType::Shipped);
        assert!(matches!(
            decision.outcome,
            StatusOutcome::DeadLettered {
                quarantined: true,
                ..
            }
        ));
        order
    }

    #[test]
    fn a_dead_lettered_event_quarantines_the_order_and_records_where_it_went() {
        let order = quarantined_order();
        let state = order.state.expect("state");
        assert_eq!(
            (state.state, state.version),
            (OrderState::Validated, 1),
            "last good state kept"
        );
        let quarantine = state.quarantine.expect("quarantined");
        assert_eq!(quarantine.reason, DeadLetterReason::IllegalTransition);
        assert_eq!(quarantine.event_id.as_deref(), Some("early-ship"));
        assert_eq!(
            (
                quarantine.topic.as_str(),
                quarantine.partition,
                quarantine.offset
            ),
            (support::TOPIC, 3, 2)
        );
    }

    #[test]
    fn later_events_follow_to_the_dead_letter_topic_even_if_they_would_be_legal() {
        let mut order = quarantined_order();
        let before = order.state.clone();
        let decision = order.send_kind("pay", EventType::PaymentAuthorized);
        let reason = DeadLetterReason::KeyQuarantined;
        assert_eq!(
            decision.outcome,
            StatusOutcome::DeadLettered {
                reason,
                quarantined: false
            }
        );
        let emit = only(&decision.emits, Output::DeadLetter);
        assert_eq!(emit.header(headers::ERROR_REASON), Some("key_quarantined"));
        assert!(decision.state.is_none(), "the first cause stays recorded");
        assert_eq!(order.state, before);
    }

    #[test]
    fn accepted_events_replayed_during_quarantine_are_still_just_duplicates() {
        let mut order = quarantined_order();
        assert_eq!(
            order.send_kind("setup-0", EventType::Validated).outcome,
            StatusOutcome::DuplicateEvent
        );
    }

    #[test]
    fn quarantine_released_lifts_it_and_the_repaired_sequence_proceeds() {
        let mut order = quarantined_order();
        let decision = order.send_kind("release-1", EventType::QuarantineReleased);
        assert_eq!(decision.outcome, StatusOutcome::Released);
        assert!(
            decision
                .emits
                .iter()
                .all(|emit| emit.output == Output::Changelog)
        );
        assert_eq!(
            order.state.as_ref().and_then(|s| s.quarantine.clone()),
            None
        );
        // The operator replays the repaired sequence from the dead-letter topic, in order.
        let pay = order.send_kind("pay", EventType::PaymentAuthorized);
        assert!(matches!(
            pay.outcome,
            StatusOutcome::Transitioned { version: 2, .. }
        ));
        let ship = order.send_kind("early-ship", EventType::Shipped);
        assert!(matches!(
            ship.outcome,
            StatusOutcome::Transitioned { version: 3, .. }
        ));
        assert_eq!(
            order
                .send_kind("release-1", EventType::QuarantineReleased)
                .outcome,
            StatusOutcome::DuplicateEvent
        );
    }

    #[test]
    fn quarantine_released_on_a_healthy_order_is_a_no_op() {
        let mut order = Order::reach(OrderState::Validated);
        let decision = order.send_kind("release", EventType::QuarantineReleased);
        assert_eq!(decision.outcome, StatusOutcome::NotQuarantined);
        assert!(decision.emits.is_empty() && decision.state.is_none());
    }

    #[test]
    fn undecodable_and_mismatched_records_with_a_key_quarantine_it() {
        let cases: [(&[u8], &[u8], DeadLetterReason); 4] = [
            (ORDER, b"{not json", DeadLetterReason::NotJson),
            (ORDER, b"\xff", DeadLetterReason::NotUtf8),
            (ORDER, br#"{"orderId":"ord-1","eventId":"e","type":"Teleported","at":"2025-03-01T00:00:00Z"}"#, DeadLetterReason::InvalidRecord),
            (b"ord-2", br#"{"orderId":"ord-1","eventId":"e","type":"Shipped","at":"2025-03-01T00:00:00Z"}"#, DeadLetterReason::KeyMismatch),
        ];
        for (key, payload, reason) in cases {
            let mut order = Order::new();
            let decision = order.send_bytes(Some(key), payload);
            assert_eq!(
                decision.outcome,
                StatusOutcome::DeadLettered {
                    reason,
                    quarantined: true
                },
                "{reason}"
            );
            let emit = only(&decision.emits, Output::DeadLetter);
            assert_eq!(emit.payload, payload, "original bytes kept");
            assert_eq!(emit.header(headers::ERROR_STAGE), Some("status"));
            let changelog = only(&decision.emits, Output::Changelog);
            assert_eq!(
                changelog.key.as_deref(),
                Some(key),
                "the record's key is quarantined"
            );
        }
    }

    #[test]
    fn a_keyless_record_is_dead_lettered_without_state() {
        let mut order = Order::new();
        let decision = order.send_bytes(None, &support::json(&event("e1", EventType::Validated)));
        let reason = DeadLetterReason::KeyMissing;
        assert_eq!(
            decision.outcome,
            StatusOutcome::DeadLettered {
                reason,
                quarantined: false
            }
        );
        assert!(decision.state.is_none());
    }
}

#[test]
fn malformed_ids_and_negative_amounts_are_invalid_records_naming_the_field() {
    let base = serde_json::to_value(event("e1", EventType::Validated)).expect("json");
    let cases = [
        ("orderId", json!("bad id"), "orderId"),
        ("eventId", json!(""), "eventId"),
        ("amountMinor", json!(-5), "amountMinor"),
    ];
    for (member, value, field) in cases {
        let mut broken = base.clone();
        broken[member] = value;
        let mut order = Order::new();
        let decision = order.send_bytes(Some(ORDER), &support::json(&broken));
        let emit = only(&decision.emits, Output::DeadLetter);
        assert_eq!(
            emit.header(headers::ERROR_REASON),
            Some("invalid_record"),
            "{member}"
        );
        assert_eq!(emit.header(headers::ERROR_FIELD), Some(field));
    }
}

mod state_codec {
    use super::*;

    #[test]
    fn state_round_trips_with_a_format_version() {
        let mut order = Order::reach(OrderState::Shipped);
        order.send_kind("bad", EventType::Validated);
        let state = order.state.expect("state");
        assert!(state.quarantine.is_some());
        let bytes = state.encode();
        let raw: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(raw["v"], json!(1));
        assert_eq!(raw["state"], json!("Shipped"));
        assert_eq!(raw["quarantine"]["reason"], json!("illegal_transition"));
        assert_eq!(OrderStatusState::decode(&bytes).expect("decodes"), state);
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused_not_guessed() {
        let state = Order::reach(OrderState::Validated).state.expect("state");
        let newer = String::from_utf8(state.encode())
            .expect("utf8")
            .replace("\"v\":1", "\"v\":9");
        let error = OrderStatusState::decode(newer.as_bytes()).expect_err("v9 refused");
        assert!(error.to_string().contains("v9"), "{error}");
        assert!(OrderStatusState::decode(b"{}").is_err());
        assert!(OrderStatusState::decode(b"\x00").is_err());
    }
}

/// Finished orders (terminal or delivered, not quarantined) are forgotten after the policy's window
/// of record time, and a forgotten state is judged exactly like no state; anything else is kept.
#[test]
fn finished_orders_are_forgotten_after_the_window_and_judged_as_unknown() {
    let machine = StatusMachine::default();
    let window = StatusPolicy::default().forget_finished_after;
    let finished_at = |target| {
        let order = Order::reach(target);
        order.state.expect("reached a state")
    };
    let after = |state: &OrderStatusState, extra: i64| {
        state.updated_at
            + chrono::TimeDelta::from_std(window).expect("window fits")
            + chrono::TimeDelta::seconds(extra)
    };
    for target in [
        OrderState::Delivered,
        OrderState::Cancelled,
        OrderState::Refunded,
        OrderState::Rejected,
    ] {
        let state = finished_at(target);
        assert!(
            !machine.is_expired(&state, after(&state, -1)),
            "{target} kept within the window"
        );
        assert!(
            machine.is_expired(&state, after(&state, 0)),
            "{target} forgotten after it"
        );
        // A replayed event after the window: judged as for an unknown order.
        let late = support::json(&event("late", EventType::Delivered));
        let record = input_at(Some(ORDER), Some(&late), 99, after(&state, 0));
        assert_eq!(
            machine.process(&record, Some(&state)),
            machine.process(&record, None),
            "{target}: an expired state is no state"
        );
    }
    for target in [
        OrderState::Validated,
        OrderState::Shipped,
        OrderState::PaymentFailed,
    ] {
        let state = finished_at(target);
        assert!(
            !machine.is_expired(&state, after(&state, 3600)),
            "{target} is not finished"
        );
    }
    let mut quarantined = finished_at(OrderState::Delivered);
    let mut order = Order::reach(OrderState::Delivered);
    order.send_kind("illegal", EventType::Validated);
    quarantined.quarantine = order.state.and_then(|state| state.quarantine);
    assert!(quarantined.quarantine.is_some());
    assert!(
        !machine.is_expired(&quarantined, after(&quarantined, 3600)),
        "quarantined orders wait for an operator"
    );
}
