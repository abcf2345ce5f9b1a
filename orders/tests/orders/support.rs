//! Fixtures: input records, a known-valid order, and a fold that plays a stage like the runtime does.

use chrono::{DateTime, TimeDelta, Utc};
use orderpipe_orders::{
    ChangelogState, Contact, Decision, InputRecord, OrderItem, OrderPlaced, Origin, Output,
};

pub const TOPIC: &str = "orders.in";

pub fn at(text: &str) -> DateTime<Utc> {
    orderpipe_orders::rfc3339::parse(text).expect("fixture timestamps are RFC 3339")
}

pub fn t0() -> DateTime<Utc> {
    at("2025-03-01T12:00:00Z")
}

pub fn input<'a>(key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> InputRecord<'a> {
    input_at(key, payload, 7, t0())
}

pub fn input_at<'a>(
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    offset: i64,
    timestamp: DateTime<Utc>,
) -> InputRecord<'a> {
    InputRecord {
        key,
        payload,
        origin: Origin {
            topic: TOPIC,
            partition: 3,
            offset,
        },
        timestamp,
    }
}

pub fn later(minutes: i64) -> DateTime<Utc> {
    t0() + TimeDelta::minutes(minutes)
}

/// A valid order: 2 × 1999 + 1 × 500 + 495 shipping − 498 discount = 4495 EUR cents.
pub fn order() -> OrderPlaced {
    OrderPlaced {
        order_id: "ord-1".to_owned(),
        customer_id: "cus-42".to_owned(),
        created_at: at("2025-03-01T11:59:00Z"),
        currency: "EUR".to_owned(),
        items: vec![
            OrderItem {
                sku: "SHOES-BLK-42".to_owned(),
                quantity: 2,
                unit_price_minor: 1999,
            },
            OrderItem {
                sku: "SOCKS-WHT-M".to_owned(),
                quantity: 1,
                unit_price_minor: 500,
            },
        ],
        shipping_minor: Some(495),
        discount_minor: Some(498),
        total_minor: 4495,
        contact: Some(Contact {
            email: Some("secret.person@example.com".to_owned()),
            webhook_subscription_id: Some("wh_secret_subscription".to_owned()),
        }),
    }
}

pub fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("fixtures serialise")
}

/// The changelog emit of a decision, which must exist exactly when the decision carries state.
pub fn assert_state_invariant<O, S: ChangelogState + PartialEq + std::fmt::Debug>(
    decision: &Decision<O, S>,
) {
    let changelogs: Vec<_> = decision
        .emits
        .iter()
        .filter(|emit| emit.output == Output::Changelog)
        .collect();
    match &decision.state {
        Some(state) => {
            assert_eq!(changelogs.len(), 1, "one changelog record per state change");
            assert_eq!(changelogs[0].payload, state.encode());
            let decoded = S::decode(&changelogs[0].payload).expect("changelog decodes");
            assert_eq!(&decoded, state, "changelog round-trips");
        }
        None => assert!(
            changelogs.is_empty(),
            "no changelog record without a state change"
        ),
    }
}

/// The only emit with `output`.
pub fn only(emits: &[orderpipe_orders::Emit], output: Output) -> &orderpipe_orders::Emit {
    let matching: Vec<_> = emits.iter().filter(|emit| emit.output == output).collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one {output:?} emit in {emits:?}"
    );
    matching[0]
}

/// A property-test configuration of `cases` cases that writes no regression files.
pub fn config(cases: u32) -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    }
}
