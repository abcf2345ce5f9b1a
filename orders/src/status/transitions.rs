//! The order state machine as data: the set of legal (from, to) transitions.
//!
//! Kept as a table, not as match arms, so docs, tests and generators can enumerate it and a review of
//! a rule change is a one-line diff. This module must not hold per-order state.

use crate::records::OrderState::{self, *};

/// Every legal transition. An order starts in `Placed`; states without outgoing transitions are
/// terminal (`Rejected`, `Cancelled`, `Refunded`).
///
/// - Cancelling is possible until shipment; after that, money goes back through `Refunded`.
/// - `PaymentFailed` may repeat and may still be followed by a successful authorisation (the customer
///   retries with another card).
/// - Refunds are whole-order; partial refunds are not modelled as transitions.
pub const TRANSITIONS: &[(OrderState, OrderState)] = &[
    (Placed, Validated),
    (Placed, Rejected),
    (Placed, Cancelled),
    (Validated, PaymentAuthorized),
    (Validated, PaymentFailed),
    (Validated, Cancelled),
    (PaymentFailed, PaymentAuthorized),
    (PaymentFailed, PaymentFailed),
    (PaymentFailed, Cancelled),
    (PaymentAuthorized, Shipped),
    (PaymentAuthorized, Cancelled),
    (PaymentAuthorized, Refunded),
    (Shipped, Delivered),
    (Shipped, Refunded),
    (Delivered, Refunded),
];

/// Whether `from → to` is in [`TRANSITIONS`].
pub fn is_allowed(from: OrderState, to: OrderState) -> bool {
    TRANSITIONS.contains(&(from, to))
}

/// The states reachable from `from` in one transition, in table order.
pub fn next_states(from: OrderState) -> impl Iterator<Item = OrderState> {
    TRANSITIONS
        .iter()
        .filter(move |(source, _)| *source == from)
        .map(|(_, target)| *target)
}

/// Whether no transition leaves `state`.
pub fn is_terminal(state: OrderState) -> bool {
    next_states(state).next().is_none()
}
