//! The records that cross topic boundaries, as serde types with camelCase JSON.
//!
//! These types are the wire contract documented in `docs/orders.md` and `docs/schemas/`. Money is
//! always integer minor units (`i64`), never floating point. Records must not carry behaviour beyond
//! small constructors; the rules live in the stage modules.

mod notification;
mod order;
mod status;

pub use notification::{DispatchResult, Notification, NotificationDispatched};
pub use order::{
    Contact, OrderItem, OrderPlaced, OriginalOrder, REDACTED, Reason, RejectedOrder, Rule,
    ValidatedOrder,
};
pub use status::{EventDetails, EventType, OrderState, StatusChanged, StatusEvent};
