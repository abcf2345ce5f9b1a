//! The validation rules of an `OrderPlaced` object, evaluated all at once.
//!
//! Every field is checked even after a failure, so a shop gets the full list of problems in one
//! rejection. Rules that combine fields (discount ≤ subtotal, total) run only when all their inputs
//! passed, so one bad quantity yields one reason, not a cascade of derived ones. Arithmetic is
//! checked: overflow is a rejection reason, never a panic. This module must not decide duplicates or
//! build output records.

use crate::checks::{Checks, FieldPath, member};
use crate::document::{Json, Object};
use crate::records::{Contact, OrderItem, OrderPlaced, Reason, Rule};
use crate::{currency, ids, rfc3339};

/// An order that passed every rule, with the amounts validation derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedOrder {
    pub order: OrderPlaced,
    pub subtotal_minor: i64,
    pub currency_exponent: u8,
}

const ITEMS: &str = "items";
const CONTACT: &str = "contact";

/// A text format rule: the predicate, the rule code it reports, and the message (which describes the
/// expected format and never quotes the value).
struct Format {
    is_valid: fn(&str) -> bool,
    rule: Rule,
    message: &'static str,
}

const ORDER_ID: Format = Format {
    is_valid: ids::is_order_id,
    rule: Rule::OrderIdFormat,
    message: ids::ORDER_ID_FORMAT_MESSAGE,
};
const CUSTOMER_ID: Format = Format {
    is_valid: ids::is_customer_id,
    rule: Rule::CustomerIdFormat,
    message: "must be 1-128 visible ASCII characters",
};
const SKU: Format = Format {
    is_valid: ids::is_sku,
    rule: Rule::SkuFormat,
    message: "must be 1-64 visible ASCII characters",
};
const EMAIL: Format = Format {
    is_valid: ids::is_email,
    rule: Rule::EmailFormat,
    message: "must be an e-mail address",
};
const WEBHOOK_SUBSCRIPTION_ID: Format = Format {
    is_valid: ids::is_webhook_subscription_id,
    rule: Rule::WebhookSubscriptionIdFormat,
    message: ids::ORDER_ID_FORMAT_MESSAGE,
};

/// Checks `object` against every rule; `key` is the Kafka record key, which must equal orderId.
pub(crate) fn check_order(
    object: &Object<'_>,
    key: Option<&[u8]>,
    max_items: usize,
) -> Result<CheckedOrder, Vec<Reason>> {
    let mut checks = Checks::default();

    let order_id = check_order_id(&mut checks, object, key);
    let customer_id = required_text(
        &mut checks,
        object,
        FieldPath::Root("customerId"),
        &CUSTOMER_ID,
    );
    let created_at =
        required_string(&mut checks, object, FieldPath::Root("createdAt")).and_then(|text| {
            let parsed = rfc3339::parse(text);
            let message = "must be an RFC 3339 date-time, e.g. 2025-03-01T12:30:00Z";
            let path = FieldPath::Root("createdAt");
            checks.ensure(parsed.is_some(), path, Rule::TimestampRfc3339, message);
            parsed
        });
    let currency =
        required_string(&mut checks, object, FieldPath::Root("currency")).and_then(|code| {
            let exponent = currency::minor_unit_exponent(code);
            let message = "must be an active ISO 4217 alpha-3 code in upper case";
            checks.ensure(
                exponent.is_some(),
                FieldPath::Root("currency"),
                Rule::CurrencyKnown,
                message,
            );
            exponent.map(|exponent| (code, exponent))
        });
    let items = check_items(&mut checks, object, max_items);
    let shipping = optional_amount(
        &mut checks,
        object,
        "shippingMinor",
        Rule::ShippingNonNegative,
    );
    let discount = optional_amount(
        &mut checks,
        object,
        "discountMinor",
        Rule::DiscountNonNegative,
    );
    let total_path = FieldPath::Root("totalMinor");
    let declared_total = checks
        .required(member(object, "totalMinor"), total_path)
        .and_then(|value| checks.integer(value, total_path));
    let contact = check_contact(&mut checks, object);

    let subtotal = match (&items, shipping, discount, declared_total) {
        (Some(items), Some(shipping), Some(discount), Some(declared_total)) => check_total(
            &mut checks,
            items.subtotal_minor,
            shipping.unwrap_or(0),
            discount.unwrap_or(0),
            declared_total,
        ),
        _ => None,
    };

    // Built only when every part is present; any `None` here was recorded as a reason above.
    let order = (|| {
        let (currency, currency_exponent) = currency?;
        Some(CheckedOrder {
            order: OrderPlaced {
                order_id: order_id?.to_owned(),
                customer_id: customer_id?.to_owned(),
                created_at: created_at?,
                currency: currency.to_owned(),
                items: items?.items,
                shipping_minor: shipping?,
                discount_minor: discount?,
                total_minor: declared_total?,
                contact: contact?,
            },
            subtotal_minor: subtotal?,
            currency_exponent,
        })
    })();
    checks.finish(order)
}

fn required_string<'v>(
    checks: &mut Checks,
    object: &'v Object<'_>,
    path: FieldPath,
) -> Option<&'v str> {
    checks
        .required(member(object, leaf_name(path)), path)
        .and_then(|value| checks.string(value, path))
}

fn required_text<'v>(
    checks: &mut Checks,
    object: &'v Object<'_>,
    path: FieldPath,
    format: &Format,
) -> Option<&'v str> {
    required_string(checks, object, path)
        .filter(|text| checks.ensure((format.is_valid)(text), path, format.rule, format.message))
}

/// `Some(None)` when absent, `Some(Some(text))` when valid, `None` when invalid (reason recorded).
fn optional_text(
    checks: &mut Checks,
    object: &Object<'_>,
    path: FieldPath,
    format: &Format,
) -> Option<Option<String>> {
    let Some(value) = member(object, leaf_name(path)) else {
        return Some(None);
    };
    checks
        .string(value, path)
        .filter(|text| checks.ensure((format.is_valid)(text), path, format.rule, format.message))
        .map(|text| Some(text.to_owned()))
}

/// The member name a path ends in, i.e. the key to look up in the object that holds it.
fn leaf_name(path: FieldPath) -> &'static str {
    match path {
        FieldPath::Root(name)
        | FieldPath::Member { field: name, .. }
        | FieldPath::Element {
            field: Some(name), ..
        } => name,
        FieldPath::Element {
            array, field: None, ..
        } => array,
    }
}

fn check_order_id<'v>(
    checks: &mut Checks,
    object: &'v Object<'_>,
    key: Option<&[u8]>,
) -> Option<&'v str> {
    let path = FieldPath::Root("orderId");
    let order_id = required_text(checks, object, path, &ORDER_ID)?;
    // The key decides the partition, and with it per-order ordering and the dedup state: an order
    // keyed differently would be deduplicated and ordered under the wrong id.
    match key {
        Some(key) if key == order_id.as_bytes() => Some(order_id),
        Some(_) => {
            checks.fail(
                path,
                Rule::KeyMatchesOrderId,
                "must equal the Kafka record key",
            );
            None
        }
        None => {
            checks.fail(path, Rule::KeyMatchesOrderId, "the Kafka record has no key");
            None
        }
    }
}

/// Items that passed every per-item rule, with their checked subtotal.
#[derive(Debug)]
struct CheckedItems {
    items: Vec<OrderItem>,
    subtotal_minor: i64,
}

fn check_items(checks: &mut Checks, object: &Object<'_>, max_items: usize) -> Option<CheckedItems> {
    let items_path = FieldPath::Root(ITEMS);
    let elements = checks
        .required(member(object, ITEMS), items_path)
        .and_then(|value| checks.array(value, items_path))?;
    if !checks.ensure(
        !elements.is_empty(),
        items_path,
        Rule::ItemsNonEmpty,
        "must not be empty",
    ) {
        return None;
    }
    if elements.len() > max_items {
        // Checking each element of an oversized list would make the rejection as big as the input.
        let message = format!("must have at most {max_items} items");
        checks.fail(items_path, Rule::ItemsMax, message);
        return None;
    }

    let mut items = Vec::with_capacity(elements.len());
    let mut subtotal = Some(0_i64);
    for (index, element) in elements.iter().enumerate() {
        let item = check_item(checks, element, index);
        let line = item.as_ref().and_then(|item| {
            let line = item.quantity.checked_mul(item.unit_price_minor);
            let path = FieldPath::Element {
                array: ITEMS,
                index,
                field: None,
            };
            let message = "quantity x unitPriceMinor overflows a 64-bit integer";
            checks.ensure(line.is_some(), path, Rule::AmountOverflow, message);
            line
        });
        subtotal = match (subtotal, line) {
            (Some(sum), Some(line)) => {
                let next = sum.checked_add(line);
                let message = "the subtotal overflows a 64-bit integer";
                checks.ensure(next.is_some(), items_path, Rule::AmountOverflow, message);
                next
            }
            _ => None,
        };
        items.extend(item);
    }
    subtotal.map(|subtotal_minor| CheckedItems {
        items,
        subtotal_minor,
    })
}

fn check_item(checks: &mut Checks, element: &Json<'_>, index: usize) -> Option<OrderItem> {
    let item = checks.object(
        element,
        FieldPath::Element {
            array: ITEMS,
            index,
            field: None,
        },
    )?;
    let path = |name| FieldPath::element_field(ITEMS, index, name);

    let sku = required_text(checks, item, path("sku"), &SKU);
    let quantity = required_integer(checks, item, path("quantity")).filter(|&quantity| {
        let message = "must be greater than 0";
        checks.ensure(
            quantity > 0,
            path("quantity"),
            Rule::QuantityPositive,
            message,
        )
    });
    let unit_price_minor =
        required_integer(checks, item, path("unitPriceMinor")).filter(|&price| {
            let rule = Rule::UnitPriceNonNegative;
            checks.ensure(
                price >= 0,
                path("unitPriceMinor"),
                rule,
                "must be 0 or more",
            )
        });
    Some(OrderItem {
        sku: sku?.to_owned(),
        quantity: quantity?,
        unit_price_minor: unit_price_minor?,
    })
}

fn required_integer(checks: &mut Checks, object: &Object<'_>, path: FieldPath) -> Option<i64> {
    checks
        .required(member(object, leaf_name(path)), path)
        .and_then(|value| checks.integer(value, path))
}

/// `Some(None)` when absent, `Some(Some(amount))` when valid, `None` when invalid (reason recorded).
fn optional_amount(
    checks: &mut Checks,
    object: &Object<'_>,
    name: &'static str,
    non_negative: Rule,
) -> Option<Option<i64>> {
    let path = FieldPath::Root(name);
    let Some(value) = member(object, name) else {
        return Some(None);
    };
    checks
        .integer(value, path)
        .filter(|&amount| checks.ensure(amount >= 0, path, non_negative, "must be 0 or more"))
        .map(Some)
}

/// Checks discount ≤ subtotal and total = subtotal + shipping − discount; returns the subtotal when
/// both hold.
fn check_total(
    checks: &mut Checks,
    subtotal: i64,
    shipping: i64,
    discount: i64,
    declared_total: i64,
) -> Option<i64> {
    if discount > subtotal {
        let message = format!("must be at most the subtotal ({subtotal})");
        checks.fail(
            FieldPath::Root("discountMinor"),
            Rule::DiscountWithinSubtotal,
            message,
        );
        return None;
    }
    let total_path = FieldPath::Root("totalMinor");
    // All three are non-negative and discount ≤ subtotal, so only the addition can overflow.
    let Some(expected) = subtotal
        .checked_add(shipping)
        .and_then(|sum| sum.checked_sub(discount))
    else {
        let message = "subtotal + shippingMinor overflows a 64-bit integer";
        checks.fail(total_path, Rule::AmountOverflow, message);
        return None;
    };
    if expected != declared_total {
        let message = format!(
            "must equal subtotal + shippingMinor - discountMinor = {expected}, got {declared_total}"
        );
        checks.fail(total_path, Rule::TotalMatches, message);
        return None;
    }
    Some(subtotal)
}

/// `Some(None)` when there is no contact, `None` when it is invalid (reason recorded).
fn check_contact(checks: &mut Checks, object: &Object<'_>) -> Option<Option<Contact>> {
    let Some(value) = member(object, CONTACT) else {
        return Some(None);
    };
    let contact = checks.object(value, FieldPath::Root(CONTACT))?;
    let path = |field| FieldPath::Member {
        object: CONTACT,
        field,
    };
    let email = optional_text(checks, contact, path("email"), &EMAIL);
    let webhook_subscription_id = optional_text(
        checks,
        contact,
        path("webhookSubscriptionId"),
        &WEBHOOK_SUBSCRIPTION_ID,
    );
    Some(Some(Contact {
        email: email?,
        webhook_subscription_id: webhook_subscription_id?,
    }))
}
