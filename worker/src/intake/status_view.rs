//! The gateway's read model for `GET /v1/orders/{id}`: each order's current status, version and
//! recent history, folded from the status stage's committed `StatusChanged` records. Bounded: at
//! most `capacity` orders (least recently read or changed forgotten first), each with at most
//! [`HISTORY`] transitions. Pure: the Kafka consumer feeding it lives in `kafka`.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use chrono::{DateTime, Utc};
use lru::LruCache;
use orderpipe_orders::{OrderState, StatusChanged};

/// Transitions kept per order. The longest path through the transition table with one payment
/// failure has 6, so this keeps every transition of all but pathological orders.
pub const HISTORY: usize = 16;

/// What the gateway knows of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub state: OrderState,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
    /// Oldest first; the latest [`HISTORY`] transitions.
    pub history: VecDeque<StatusChanged>,
}

/// The orders the gateway can answer for.
#[derive(Debug)]
pub struct StatusView {
    orders: LruCache<String, OrderView>,
}

impl StatusView {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            orders: LruCache::new(capacity),
        }
    }

    /// Folds one committed transition in. A version at or below the known one is a replay (the
    /// topic re-read from its start, or a record the stage wrote twice in aborted transactions
    /// that read_committed hides anyway) and changes nothing.
    pub fn apply(&mut self, change: StatusChanged) {
        let order_id = change.order_id.clone();
        match self.orders.get_mut(&order_id) {
            Some(view) if change.version <= view.version => {}
            Some(view) => {
                view.state = change.to;
                view.version = change.version;
                view.updated_at = change.at;
                if view.history.len() == HISTORY {
                    view.history.pop_front();
                }
                view.history.push_back(change);
            }
            None => {
                let view = OrderView {
                    state: change.to,
                    version: change.version,
                    updated_at: change.at,
                    history: VecDeque::from([change]),
                };
                self.orders.put(order_id, view);
            }
        }
    }

    /// The order's view, marking it recently used.
    pub fn get(&mut self, order_id: &str) -> Option<&OrderView> {
        self.orders.get(order_id)
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use orderpipe_orders::EventDetails;

    use super::*;

    fn change(order: &str, version: u64, from: OrderState, to: OrderState) -> StatusChanged {
        StatusChanged {
            order_id: order.to_owned(),
            from,
            to,
            version,
            at: DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::seconds(version as i64),
            event_id: format!("e{version}"),
            details: EventDetails::default(),
        }
    }

    #[test]
    fn transitions_fold_into_the_latest_state_and_replays_change_nothing() {
        let mut view = StatusView::new(NonZeroUsize::MIN.saturating_add(7));
        view.apply(change("o1", 1, OrderState::Placed, OrderState::Validated));
        view.apply(change("o1", 2, OrderState::Validated, OrderState::Shipped));
        view.apply(change("o1", 1, OrderState::Placed, OrderState::Validated));
        let order = view.get("o1").expect("known");
        assert_eq!((order.state, order.version), (OrderState::Shipped, 2));
        let versions: Vec<u64> = order.history.iter().map(|c| c.version).collect();
        assert_eq!(versions, [1, 2]);
    }

    #[test]
    fn memory_is_bounded_in_orders_and_in_history_per_order() {
        let mut view = StatusView::new(NonZeroUsize::MIN.saturating_add(1));
        for version in 1..=(HISTORY as u64 + 5) {
            view.apply(change(
                "o1",
                version,
                OrderState::Placed,
                OrderState::Validated,
            ));
        }
        let order = view.get("o1").expect("known");
        assert_eq!(order.history.len(), HISTORY);
        assert_eq!(order.history.front().map(|c| c.version), Some(6));
        view.apply(change("o2", 1, OrderState::Placed, OrderState::Validated));
        view.apply(change("o3", 1, OrderState::Placed, OrderState::Validated));
        assert_eq!(view.len(), 2);
        assert!(
            view.get("o1").is_none(),
            "the least recently used order is forgotten"
        );
    }
}
