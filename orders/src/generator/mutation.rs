//! Single-rule mutations of a valid order: each breaks exactly one validation rule and says which.
//!
//! Shared by the generator (invalid share of the load) and the property tests ("for any valid order
//! and any mutation, validation rejects naming that field and rule"), so both exercise the same list.
//! This module must not judge orders; the validator does.

use serde_json::{Value, json};

use crate::records::{OrderPlaced, Rule};

/// One way to break one rule of a valid order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutation {
    OrderIdMalformed,
    OrderIdMissing,
    KeyMismatch,
    KeyMissing,
    CustomerIdMalformed,
    CreatedAtNotRfc3339,
    CurrencyUnknown,
    ItemsEmpty,
    ItemsTooMany,
    SkuMalformed,
    QuantityZero,
    QuantityDecimal,
    QuantityBeyondI64,
    UnitPriceNegative,
    ShippingNegative,
    DiscountNegative,
    DiscountExceedsSubtotal,
    TotalMismatch,
    TotalMissing,
    TotalAsString,
    LineOverflow,
    SubtotalOverflow,
    TotalOverflow,
    EmailMalformed,
    WebhookSubscriptionIdMalformed,
}

/// A mutated submission and the one reason validation must give for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutated {
    pub key: Option<Vec<u8>>,
    pub order: Value,
    pub field: String,
    pub rule: Rule,
}

impl Mutation {
    pub const ALL: &[Mutation] = &[
        Self::OrderIdMalformed,
        Self::OrderIdMissing,
        Self::KeyMismatch,
        Self::KeyMissing,
        Self::CustomerIdMalformed,
        Self::CreatedAtNotRfc3339,
        Self::CurrencyUnknown,
        Self::ItemsEmpty,
        Self::ItemsTooMany,
        Self::SkuMalformed,
        Self::QuantityZero,
        Self::QuantityDecimal,
        Self::QuantityBeyondI64,
        Self::UnitPriceNegative,
        Self::ShippingNegative,
        Self::DiscountNegative,
        Self::DiscountExceedsSubtotal,
        Self::TotalMismatch,
        Self::TotalMissing,
        Self::TotalAsString,
        Self::LineOverflow,
        Self::SubtotalOverflow,
        Self::TotalOverflow,
        Self::EmailMalformed,
        Self::WebhookSubscriptionIdMalformed,
    ];

    /// Applies the mutation to `order`, which must be valid and keyed by its id. `pick` chooses the
    /// item an item mutation targets (modulo the item count); `max_items` is the validator's limit.
    pub fn apply(self, order: &OrderPlaced, pick: usize, max_items: usize) -> Mutated {
        let mut value = crate::json::to_value(order);
        let mut key = Some(order.order_id.clone().into_bytes());
        let index = pick % order.items.len().max(1);
        let item = |field: &str| format!("items[{index}].{field}");
        let subtotal = order.subtotal_minor().unwrap_or(0);
        let shipping = order.shipping_minor.unwrap_or(0);

        let (field, rule) = match self {
            Self::OrderIdMalformed => {
                set(&mut value, "orderId", json!("not a valid id!"));
                ("orderId".to_owned(), Rule::OrderIdFormat)
            }
            Self::OrderIdMissing => {
                remove(&mut value, "orderId");
                ("orderId".to_owned(), Rule::Required)
            }
            Self::KeyMismatch => {
                key = Some(format!("{}-other", order.order_id).into_bytes());
                ("orderId".to_owned(), Rule::KeyMatchesOrderId)
            }
            Self::KeyMissing => {
                key = None;
                ("orderId".to_owned(), Rule::KeyMatchesOrderId)
            }
            Self::CustomerIdMalformed => {
                set(&mut value, "customerId", json!("has spaces"));
                ("customerId".to_owned(), Rule::CustomerIdFormat)
            }
            Self::CreatedAtNotRfc3339 => {
                set(&mut value, "createdAt", json!("01/03/2025 12:00"));
                ("createdAt".to_owned(), Rule::TimestampRfc3339)
            }
            Self::CurrencyUnknown => {
                set(&mut value, "currency", json!("XYZ"));
                ("currency".to_owned(), Rule::CurrencyKnown)
            }
            Self::ItemsEmpty => {
                set(&mut value, "items", json!([]));
                ("items".to_owned(), Rule::ItemsNonEmpty)
            }
            Self::ItemsTooMany => {
                let first = value.pointer("/items/0").cloned().unwrap_or(Value::Null);
                set(
                    &mut value,
                    "items",
                    Value::Array(vec![first; max_items + 1]),
                );
                ("items".to_owned(), Rule::ItemsMax)
            }
            Self::SkuMalformed => {
                set_item(&mut value, index, "sku", json!(""));
                (item("sku"), Rule::SkuFormat)
            }
            Self::QuantityZero => {
                set_item(&mut value, index, "quantity", json!(0));
                (item("quantity"), Rule::QuantityPositive)
            }
            Self::QuantityDecimal => {
                set_item(&mut value, index, "quantity", json!(1.5));
                (item("quantity"), Rule::WrongType)
            }
            Self::QuantityBeyondI64 => {
                set_item(&mut value, index, "quantity", json!(u64::MAX));
                (item("quantity"), Rule::IntegerRange)
            }
            Self::UnitPriceNegative => {
                set_item(&mut value, index, "unitPriceMinor", json!(-1));
                (item("unitPriceMinor"), Rule::UnitPriceNonNegative)
            }
            Self::ShippingNegative => {
                set(&mut value, "shippingMinor", json!(-1));
                ("shippingMinor".to_owned(), Rule::ShippingNonNegative)
            }
            Self::DiscountNegative => {
                set(&mut value, "discountMinor", json!(-1));
                ("discountMinor".to_owned(), Rule::DiscountNonNegative)
            }
            Self::DiscountExceedsSubtotal => {
                // The total stays consistent with the oversized discount, so only this rule breaks.
                let discount = subtotal.saturating_add(1);
                set(&mut value, "discountMinor", json!(discount));
                set(&mut value, "totalMinor", json!(shipping - 1));
                ("discountMinor".to_owned(), Rule::DiscountWithinSubtotal)
            }
            Self::TotalMismatch => {
                let wrong = order
                    .total_minor
                    .checked_add(1)
                    .unwrap_or(order.total_minor - 1);
                set(&mut value, "totalMinor", json!(wrong));
                ("totalMinor".to_owned(), Rule::TotalMatches)
            }
            Self::TotalMissing => {
                remove(&mut value, "totalMinor");
                ("totalMinor".to_owned(), Rule::Required)
            }
            Self::TotalAsString => {
                set(
                    &mut value,
                    "totalMinor",
                    json!(order.total_minor.to_string()),
                );
                ("totalMinor".to_owned(), Rule::WrongType)
            }
            Self::LineOverflow => {
                set_item(&mut value, index, "quantity", json!(i64::MAX));
                set_item(&mut value, index, "unitPriceMinor", json!(2));
                (format!("items[{index}]"), Rule::AmountOverflow)
            }
            Self::SubtotalOverflow => {
                let items = json!([
                    {"sku": "BIG-1", "quantity": 1, "unitPriceMinor": i64::MAX},
                    {"sku": "BIG-2", "quantity": 1, "unitPriceMinor": 1},
                ]);
                set(&mut value, "items", items);
                ("items".to_owned(), Rule::AmountOverflow)
            }
            Self::TotalOverflow => {
                let items = json!([{"sku": "BIG-1", "quantity": 1, "unitPriceMinor": i64::MAX}]);
                set(&mut value, "items", items);
                set(&mut value, "shippingMinor", json!(1));
                remove(&mut value, "discountMinor");
                ("totalMinor".to_owned(), Rule::AmountOverflow)
            }
            Self::EmailMalformed => {
                set(&mut value, "contact", json!({"email": "not-an-address"}));
                ("contact.email".to_owned(), Rule::EmailFormat)
            }
            Self::WebhookSubscriptionIdMalformed => {
                set(
                    &mut value,
                    "contact",
                    json!({"webhookSubscriptionId": "has spaces"}),
                );
                (
                    "contact.webhookSubscriptionId".to_owned(),
                    Rule::WebhookSubscriptionIdFormat,
                )
            }
        };
        Mutated {
            key,
            order: value,
            field,
            rule,
        }
    }
}

fn set(order: &mut Value, name: &str, new: Value) {
    if let Some(object) = order.as_object_mut() {
        object.insert(name.to_owned(), new);
    }
}

fn remove(order: &mut Value, name: &str) {
    if let Some(object) = order.as_object_mut() {
        object.remove(name);
    }
}

fn set_item(order: &mut Value, index: usize, name: &str, new: Value) {
    if let Some(item) = order.pointer_mut(&format!("/items/{index}")) {
        set(item, name, new);
    }
}
