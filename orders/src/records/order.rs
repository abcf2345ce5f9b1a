//! Order records: what a shop submits (`OrderPlaced`) and what validation turns it into.
//!
//! Contact data (e-mail, webhook subscription) is personal data: every `Debug` impl here redacts it,
//! and rejection messages never quote field values. This module must not validate; see
//! [`crate::validate`].

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What `Debug` prints instead of contact data.
pub const REDACTED: &str = "<redacted>";

/// The input of the validate stage, as submitted by the shop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    pub order_id: String,
    pub customer_id: String,
    #[serde(with = "crate::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// ISO 4217 alpha-3, upper case.
    pub currency: String,
    pub items: Vec<OrderItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount_minor: Option<i64>,
    /// Must equal Σ quantity × unitPriceMinor + shipping − discount.
    pub total_minor: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
}

impl OrderPlaced {
    /// Σ quantity × unitPriceMinor, or `None` on overflow.
    pub fn subtotal_minor(&self) -> Option<i64> {
        self.items.iter().try_fold(0_i64, |sum, item| {
            item.quantity
                .checked_mul(item.unit_price_minor)
                .and_then(|line| sum.checked_add(line))
        })
    }
}

/// One order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub sku: String,
    /// Greater than zero.
    pub quantity: i64,
    /// Zero or more (free items exist).
    pub unit_price_minor: i64,
}

/// How the shop reaches the customer; personal data.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_subscription_id: Option<String>,
}

// By hand: shows which contact fields are present, never their values.
impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contact")
            .field("email", &self.email.as_ref().map(|_| REDACTED))
            .field(
                "webhook_subscription_id",
                &self.webhook_subscription_id.as_ref().map(|_| REDACTED),
            )
            .finish()
    }
}

/// The output of validate for an order that passed every rule; amounts are resolved (no optional
/// money fields) so consumers need no defaulting logic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidatedOrder {
    pub order_id: String,
    pub customer_id: String,
    #[serde(with = "crate::rfc3339")]
    pub created_at: DateTime<Utc>,
    pub currency: String,
    /// Digits after the decimal point of `currency` (EUR 2, JPY 0, KWD 3), for display.
    pub currency_exponent: u8,
    pub items: Vec<OrderItem>,
    pub subtotal_minor: i64,
    pub shipping_minor: i64,
    pub discount_minor: i64,
    pub total_minor: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
    /// The input record's timestamp (not the wall clock), so a replay produces identical bytes.
    #[serde(with = "crate::rfc3339")]
    pub validated_at: DateTime<Utc>,
}

/// The output of validate for a JSON object that broke at least one rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedOrder {
    /// The submitted orderId when it was well-formed, so consumers can correlate; otherwise absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The violated rules, in field order; never empty. At most [`RejectedOrder::MAX_REASONS`]:
    /// the rest are counted in `reasonsOmitted`, so a rejection stays small whatever the input.
    pub reasons: Vec<Reason>,
    /// How many more rules were violated than `reasons` lists; absent when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasons_omitted: u32,
    /// The submitted object, quoted byte for byte (numbers, escapes, duplicate members and all).
    pub order: OriginalOrder,
    /// The input record's timestamp.
    #[serde(with = "crate::rfc3339")]
    pub rejected_at: DateTime<Utc>,
}

impl RejectedOrder {
    /// Most reasons one rejection lists. An order of 500 broken items could otherwise list
    /// thousands; the first hundred say what to fix.
    pub const MAX_REASONS: usize = 100;

    /// Keeps the first [`Self::MAX_REASONS`] of `reasons` and counts the rest.
    pub fn bounded_reasons(mut reasons: Vec<Reason>) -> (Vec<Reason>, u32) {
        let omitted = reasons.len().saturating_sub(Self::MAX_REASONS);
        reasons.truncate(Self::MAX_REASONS);
        (reasons, u32::try_from(omitted).unwrap_or(u32::MAX))
    }
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

/// A submitted order object quoted verbatim inside a [`RejectedOrder`]: the submitted JSON text
/// itself, not a re-serialisation, so the quote is never longer than the submission (re-serialising
/// turns `1e15` into `1000000000000000.0`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OriginalOrder(pub Box<RawValue>);

impl OriginalOrder {
    /// The quoted JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for OriginalOrder {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

// By hand: the raw object may carry a `contact` member, which must never reach logs.
impl fmt::Debug for OriginalOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OriginalOrder({} bytes, {REDACTED})", self.json().len())
    }
}

/// One violated rule: where, which rule (stable code), and a message for humans that never quotes
/// the submitted value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// JSON path into the submitted order, e.g. `items[2].quantity`.
    pub field: String,
    pub rule: Rule,
    pub message: String,
}

stable_codes! {
    /// A validation rule; its code is what `RejectedOrder.reasons[].rule` carries.
    pub enum Rule {
        /// A required field is missing or null.
        Required = "required",
        /// A field has the wrong JSON type (e.g. a decimal where integer minor units are expected).
        WrongType = "wrong_type",
        /// An integer does not fit a signed 64-bit value.
        IntegerRange = "integer_range",
        /// orderId is 1–64 characters of `[A-Za-z0-9_-]`.
        OrderIdFormat = "order_id_format",
        /// customerId is 1–128 visible ASCII characters.
        CustomerIdFormat = "customer_id_format",
        /// A timestamp is an RFC 3339 date-time.
        TimestampRfc3339 = "timestamp_rfc3339",
        /// currency is an active ISO 4217 alpha-3 code.
        CurrencyKnown = "currency_known",
        /// items has at least one element.
        ItemsNonEmpty = "items_non_empty",
        /// items has at most the configured maximum (default 500).
        ItemsMax = "items_max",
        /// sku is 1–64 visible ASCII characters.
        SkuFormat = "sku_format",
        /// quantity is greater than zero.
        QuantityPositive = "quantity_positive",
        /// unitPriceMinor is zero or more.
        UnitPriceNonNegative = "unit_price_non_negative",
        /// shippingMinor is zero or more.
        ShippingNonNegative = "shipping_non_negative",
        /// discountMinor is zero or more.
        DiscountNonNegative = "discount_non_negative",
        /// discountMinor is at most the subtotal.
        DiscountWithinSubtotal = "discount_within_subtotal",
        /// totalMinor equals subtotal + shipping − discount.
        TotalMatches = "total_matches",
        /// A line, the subtotal or the total overflows a signed 64-bit integer.
        AmountOverflow = "amount_overflow",
        /// The Kafka record key equals orderId.
        KeyMatchesOrderId = "key_matches_order_id",
        /// contact.email looks like an e-mail address.
        EmailFormat = "email_format",
        /// contact.webhookSubscriptionId is 1–64 characters of `[A-Za-z0-9_-]`.
        WebhookSubscriptionIdFormat = "webhook_subscription_id_format",
        /// The orderId was already validated, within the dedup window, with different content.
        OrderIdReused = "order_id_reused",
    }
}
