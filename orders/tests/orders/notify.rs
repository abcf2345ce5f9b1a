//! The notify stage: which transitions notify, the request, and the attempt → decision flow.

use std::collections::BTreeSet;
use std::time::Duration;

use orderpipe_orders::notify::{
    AttemptDecision, Dispatch, HttpOutcome, Notifier, NotifyPlan, NotifyPolicy, RetryPolicy,
    idempotency_key,
};
use orderpipe_orders::{
    DeadLetterReason, DispatchResult, Emit, EventDetails, Notification, NotificationDispatched,
    OrderState, Output, StatusChanged, headers,
};

use crate::support::{self, input};

fn changed(to: OrderState, version: u64) -> StatusChanged {
    StatusChanged {
        order_id: "ord-1".to_owned(),
        from: OrderState::PaymentAuthorized,
        to,
        version,
        at: support::at("2025-03-01T12:30:00Z"),
        event_id: "ev-9".to_owned(),
        details: EventDetails {
            carrier: Some("DHL".to_owned()),
            ..EventDetails::default()
        },
    }
}

fn dispatch_for(notifier: &Notifier, to: OrderState) -> Dispatch {
    let payload = support::json(&changed(to, 3));
    match notifier.plan(&input(Some(b"ord-1"), Some(&payload))) {
        NotifyPlan::Dispatch(dispatch) => *dispatch,
        other => panic!("expected a dispatch, got {other:?}"),
    }
}

fn response(status: u16) -> HttpOutcome {
    HttpOutcome::Response {
        status,
        retry_after: None,
    }
}

fn audit_of(emit: &Emit) -> NotificationDispatched {
    assert_eq!(emit.output, Output::NotificationAudit);
    assert_eq!(emit.key.as_deref(), Some(&b"ord-1"[..]));
    serde_json::from_slice(&emit.payload).expect("audit decodes")
}

/// The reason, audit record and dead letter of a decision that must be a give-up.
fn given_up(decision: AttemptDecision) -> (DeadLetterReason, Emit, Emit) {
    match decision {
        AttemptDecision::GiveUp {
            reason,
            audit,
            dead_letter,
        } => (reason, audit, dead_letter),
        other => panic!("expected give-up, got {other:?}"),
    }
}

#[test]
fn the_default_set_notifies_customer_facing_states_only() {
    let notifier = Notifier::default();
    for &to in OrderState::ALL {
        let payload = support::json(&changed(to, 3));
        let plan = notifier.plan(&input(Some(b"ord-1"), Some(&payload)));
        let notifies = matches!(plan, NotifyPlan::Dispatch(_));
        let expected = matches!(
            to,
            OrderState::Validated
                | OrderState::Rejected
                | OrderState::Shipped
                | OrderState::Delivered
                | OrderState::Cancelled
                | OrderState::Refunded
        );
        assert_eq!(notifies, expected, "{to}");
        if !notifies {
            assert!(matches!(plan, NotifyPlan::Skip { to: skipped } if skipped == to));
        }
    }
}

#[test]
fn the_set_and_channel_are_configurable() {
    let policy = NotifyPolicy {
        notify_on: BTreeSet::from([OrderState::PaymentFailed]),
        channel: "sms".to_owned(),
        retry: RetryPolicy::default(),
    };
    let notifier = Notifier::new(policy);
    let dispatch = dispatch_for(&notifier, OrderState::PaymentFailed);
    assert_eq!(dispatch.idempotency_key(), "ord-1:3:sms");
    let payload = support::json(&changed(OrderState::Shipped, 3));
    assert!(matches!(
        notifier.plan(&input(Some(b"ord-1"), Some(&payload))),
        NotifyPlan::Skip { .. }
    ));
}

#[test]
fn the_request_carries_the_idempotency_key_in_header_and_body() {
    let dispatch = dispatch_for(&Notifier::default(), OrderState::Shipped);
    assert_eq!(idempotency_key("ord-1", 3, "webhook"), "ord-1:3:webhook");
    assert_eq!(dispatch.idempotency_key(), "ord-1:3:webhook");
    assert_eq!(
        dispatch.http_headers(),
        [
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "ord-1:3:webhook")
        ]
    );
    let body: Notification = serde_json::from_slice(dispatch.body()).expect("body decodes");
    assert_eq!(&body, dispatch.notification());
    assert_eq!(body.notification_id, "ord-1:3:webhook");
    assert_eq!(
        (body.status, body.previous_status),
        (OrderState::Shipped, OrderState::PaymentAuthorized)
    );
    assert_eq!(body.details.carrier.as_deref(), Some("DHL"));
}

#[test]
fn redelivery_of_the_same_status_changed_yields_the_same_request() {
    let notifier = Notifier::default();
    let first = dispatch_for(&notifier, OrderState::Delivered);
    let second = dispatch_for(&notifier, OrderState::Delivered);
    assert_eq!(first.body(), second.body());
    assert_eq!(first.idempotency_key(), second.idempotency_key());
}

#[test]
fn an_unreadable_record_is_dead_lettered_at_plan_time() {
    let plan = Notifier::default().plan(&input(Some(b"ord-1"), Some(b"{}")));
    let NotifyPlan::DeadLetter {
        reason,
        dead_letter,
    } = plan
    else {
        panic!("expected a dead letter");
    };
    assert_eq!(reason, DeadLetterReason::InvalidRecord);
    assert_eq!(dead_letter.header(headers::ERROR_STAGE), Some("notify"));
    assert_eq!(dead_letter.payload, b"{}");
}

#[test]
fn a_2xx_is_delivered_with_an_audit_record() {
    let notifier = Notifier::default();
    let dispatch = dispatch_for(&notifier, OrderState::Shipped);
    let now = support::later(5);
    let decision = notifier.after_attempt(&dispatch, 2, &response(204), now, 0.5);
    let AttemptDecision::Delivered { audit } = decision else {
        panic!("expected delivered, got {decision:?}");
    };
    let audit = audit_of(&audit);
    assert_eq!(audit.result, DispatchResult::Delivered);
    assert_eq!(
        (audit.attempts, audit.http_status, audit.finished_at),
        (2, Some(204), now)
    );
    assert_eq!(audit.idempotency_key, "ord-1:3:webhook");
}

#[test]
fn transient_failures_retry_with_backoff_then_give_up_after_max_attempts() {
    let notifier = Notifier::default();
    let dispatch = dispatch_for(&notifier, OrderState::Shipped);
    let max = notifier.policy().retry.max_attempts;
    let outcomes = [
        response(503),
        HttpOutcome::Timeout,
        HttpOutcome::ConnectionFailed,
        response(429),
    ];
    for attempt in 1..max {
        let outcome = &outcomes[attempt as usize % outcomes.len()];
        let decision = notifier.after_attempt(&dispatch, attempt, outcome, support::t0(), 1.0);
        let expected = notifier.policy().retry.backoff(attempt, 1.0);
        assert_eq!(
            decision,
            AttemptDecision::Retry { after: expected },
            "attempt {attempt}"
        );
    }
    let decision = notifier.after_attempt(&dispatch, max, &response(503), support::t0(), 1.0);
    let (reason, audit, dead_letter) = given_up(decision);
    assert_eq!(reason, DeadLetterReason::RetriesExhausted);
    assert_eq!(audit_of(&audit).result, DispatchResult::RetriesExhausted);
    assert_eq!(dead_letter.output, Output::DeadLetter);
    assert_eq!(
        dead_letter.header(headers::ERROR_REASON),
        Some("retries_exhausted")
    );
    assert_eq!(
        dead_letter.header(headers::NOTIFY_ATTEMPTS),
        Some(max.to_string().as_str())
    );
    assert_eq!(dead_letter.header(headers::NOTIFY_HTTP_STATUS), Some("503"));
    assert_eq!(
        dead_letter.payload,
        support::json(&changed(OrderState::Shipped, 3)),
        "input kept"
    );
}

#[test]
fn retry_after_is_honoured_up_to_its_cap() {
    let notifier = Notifier::default();
    let dispatch = dispatch_for(&notifier, OrderState::Shipped);
    let outcome = |value: &str| HttpOutcome::Response {
        status: 429,
        retry_after: Some(value.to_owned()),
    };
    let short = notifier.after_attempt(&dispatch, 1, &outcome("7"), support::t0(), 0.0);
    assert_eq!(
        short,
        AttemptDecision::Retry {
            after: Duration::from_secs(7)
        }
    );
    let long = notifier.after_attempt(&dispatch, 1, &outcome("86400"), support::t0(), 0.0);
    let cap = notifier.policy().retry.max_retry_after;
    assert_eq!(long, AttemptDecision::Retry { after: cap });
}

#[test]
fn a_permanent_failure_is_dead_lettered_on_the_first_attempt() {
    let notifier = Notifier::default();
    let dispatch = dispatch_for(&notifier, OrderState::Shipped);
    let decision = notifier.after_attempt(&dispatch, 1, &response(422), support::t0(), 0.5);
    let (reason, audit, dead_letter) = given_up(decision);
    assert_eq!(reason, DeadLetterReason::WebhookRejected);
    let audit = audit_of(&audit);
    assert_eq!(
        (audit.result, audit.attempts, audit.http_status),
        (DispatchResult::Rejected, 1, Some(422))
    );
    assert_eq!(dead_letter.header(headers::NOTIFY_HTTP_STATUS), Some("422"));
    assert_eq!(
        dead_letter.header(headers::ORIGINAL_TOPIC),
        Some(support::TOPIC)
    );
}

#[test]
fn a_given_up_timeout_has_no_http_status_header() {
    let notifier = Notifier::new(NotifyPolicy {
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        ..NotifyPolicy::default()
    });
    let dispatch = dispatch_for(&notifier, OrderState::Shipped);
    let decision = notifier.after_attempt(&dispatch, 1, &HttpOutcome::Timeout, support::t0(), 0.5);
    let (_, audit, dead_letter) = given_up(decision);
    assert_eq!(dead_letter.header(headers::NOTIFY_HTTP_STATUS), None);
    assert_eq!(audit_of(&audit).http_status, None);
}
