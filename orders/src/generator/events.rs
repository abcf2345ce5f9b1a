//! Seeded status event sequences: a random legal walk through the transition table per order, with
//! optional duplicate deliveries and one optional illegal event, each labelled with what the status
//! stage must do with it.
//!
//! The labels are computed here from the table and the quarantine rule, independently of the status
//! stage's code, so a test comparing the two is a real cross-check. It must not read the clock.

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::records::{EventDetails, EventType, OrderState, StatusEvent};
use crate::status::transitions;

/// Shares of non-happy-path events, each in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct EventConfig {
    /// Chance, after each accepted event, of re-delivering an earlier accepted one.
    pub duplicate_share: f64,
    /// Chance, per order, of one illegal event somewhere in its sequence.
    pub illegal_share: f64,
    /// Chance of an order stopping before a terminal state (still in flight).
    pub in_flight_share: f64,
}

impl Default for EventConfig {
    fn default() -> Self {
        Self {
            duplicate_share: 0.05,
            illegal_share: 0.02,
            in_flight_share: 0.1,
        }
    }
}

/// What the status stage must do with a generated event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventExpectation {
    Transition {
        from: OrderState,
        to: OrderState,
        version: u64,
    },
    /// Re-delivery of an accepted eventId: ignored.
    Duplicate,
    /// Not in the table: dead-lettered, quarantining the order.
    Illegal,
    /// After an illegal event: dead-lettered as `key_quarantined`.
    Quarantined,
}

/// One status event record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedEvent {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub event: StatusEvent,
    pub expected: EventExpectation,
}

/// Generates the status events of orders.
#[derive(Debug)]
pub struct EventGenerator {
    rng: StdRng,
    config: EventConfig,
}

impl EventGenerator {
    pub fn new(seed: u64, config: EventConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            config,
        }
    }

    /// The events of one order, in the order they are to be produced (all with key `order_id`),
    /// starting at `start` and one minute apart.
    pub fn lifecycle(&mut self, order_id: &str, start: DateTime<Utc>) -> Vec<GeneratedEvent> {
        let mut events = Vec::new();
        let mut accepted: Vec<StatusEvent> = Vec::new();
        let mut state = OrderState::Placed;
        let mut quarantined = false;
        let illegal_at = self
            .rng
            .random_bool(self.config.illegal_share.clamp(0.0, 1.0))
            .then(|| self.rng.random_range(0..4_usize));

        while !transitions::is_terminal(state) {
            if !accepted.is_empty()
                && self
                    .rng
                    .random_bool(self.config.in_flight_share.clamp(0.0, 1.0))
            {
                break;
            }
            let at = start + TimeDelta::minutes(i64::try_from(events.len()).unwrap_or(0));
            let event_id = format!("{order_id}-ev{}", events.len());
            if illegal_at == Some(accepted.len()) && !quarantined {
                let illegal = OrderState::ALL
                    .iter()
                    .copied()
                    .filter(|&to| to != OrderState::Placed && !transitions::is_allowed(state, to))
                    .collect::<Vec<_>>();
                if let Some(&to) = illegal.choose(&mut self.rng) {
                    let event = self.event(order_id, event_id, to, at);
                    events.push(generated(event, EventExpectation::Illegal));
                    quarantined = true;
                    continue;
                }
            }
            let next: Vec<OrderState> = transitions::next_states(state).collect();
            let Some(&to) = next.choose(&mut self.rng) else {
                break;
            };
            let event = self.event(order_id, event_id, to, at);
            let expected = if quarantined {
                EventExpectation::Quarantined
            } else {
                let version = u64::try_from(accepted.len()).unwrap_or(u64::MAX) + 1;
                accepted.push(event.clone());
                EventExpectation::Transition {
                    from: state,
                    to,
                    version,
                }
            };
            events.push(generated(event, expected));
            state = to;

            let redeliver = self
                .rng
                .random_bool(self.config.duplicate_share.clamp(0.0, 1.0));
            if redeliver && let Some(earlier) = accepted.choose(&mut self.rng) {
                events.push(generated(earlier.clone(), EventExpectation::Duplicate));
            }
        }
        events
    }

    fn event(
        &mut self,
        order_id: &str,
        event_id: String,
        to: OrderState,
        at: DateTime<Utc>,
    ) -> StatusEvent {
        let rng = &mut self.rng;
        let details = match to {
            OrderState::Shipped => EventDetails {
                carrier: ["DHL", "UPS", "PostNord"]
                    .choose(rng)
                    .map(|c| (*c).to_owned()),
                tracking_number: Some(format!(
                    "TRK{:012}",
                    rng.random_range(0..1_000_000_000_000_u64)
                )),
                ..EventDetails::default()
            },
            OrderState::PaymentFailed | OrderState::Cancelled | OrderState::Rejected => {
                EventDetails {
                    reason: ["card_declined", "customer_request", "fraud_suspected"]
                        .choose(rng)
                        .map(|r| (*r).to_owned()),
                    ..EventDetails::default()
                }
            }
            OrderState::PaymentAuthorized | OrderState::Refunded => EventDetails {
                amount_minor: Some(rng.random_range(100..100_000)),
                ..EventDetails::default()
            },
            OrderState::Placed | OrderState::Validated | OrderState::Delivered => {
                EventDetails::default()
            }
        };
        StatusEvent {
            order_id: order_id.to_owned(),
            event_id,
            kind: event_type_for(to),
            at,
            details,
        }
    }
}

fn generated(event: StatusEvent, expected: EventExpectation) -> GeneratedEvent {
    GeneratedEvent {
        key: event.order_id.clone().into_bytes(),
        payload: crate::json::encode(&event),
        event,
        expected,
    }
}

/// The event type that asks for a move to `state` (`Placed` has none; never generated).
fn event_type_for(state: OrderState) -> EventType {
    EventType::ALL
        .iter()
        .copied()
        .find(|kind| kind.target_state() == Some(state))
        .unwrap_or(EventType::Validated)
}
