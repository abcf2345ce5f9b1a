//! Format rules for identifiers and short text fields, shared by validation, decoding and generators.
//!
//! Identifiers are restricted to ASCII so they are safe as Kafka keys, in header values, in file names
//! of tools and in the `Idempotency-Key` HTTP header without escaping. This module must not report
//! errors; callers turn a `false` into the rule code that fits their record.

/// Longest order id; also the bound of webhook subscription ids.
pub const ORDER_ID_MAX_LEN: usize = 64;
/// Longest customer id.
pub const CUSTOMER_ID_MAX_LEN: usize = 128;
/// Longest SKU.
pub const SKU_MAX_LEN: usize = 64;
/// Longest status event id.
pub const EVENT_ID_MAX_LEN: usize = 128;
/// Longest free text of a status event (`reason`, `carrier`, `trackingNumber`), in bytes: it is
/// copied into `StatusChanged` and the notification, which must stay small.
pub const EVENT_DETAIL_MAX_LEN: usize = 1024;
/// Longest e-mail address (RFC 5321 path limit).
pub const EMAIL_MAX_LEN: usize = 254;

/// How rejections and dead-letter messages describe the order id format (also used for webhook
/// subscription ids, which share it).
pub(crate) const ORDER_ID_FORMAT_MESSAGE: &str = "must be 1-64 characters of [A-Za-z0-9_-]";

/// How dead-letter messages describe the event id format.
pub(crate) const EVENT_ID_FORMAT_MESSAGE: &str = "must be 1-128 visible ASCII characters";

/// 1–64 characters of `[A-Za-z0-9_-]`.
pub fn is_order_id(text: &str) -> bool {
    is_token(text, ORDER_ID_MAX_LEN)
}

/// Same alphabet and bound as an order id.
pub fn is_webhook_subscription_id(text: &str) -> bool {
    is_token(text, ORDER_ID_MAX_LEN)
}

/// 1–128 visible ASCII characters (no spaces or control characters).
pub fn is_customer_id(text: &str) -> bool {
    is_visible_ascii(text, CUSTOMER_ID_MAX_LEN)
}

/// 1–64 visible ASCII characters.
pub fn is_sku(text: &str) -> bool {
    is_visible_ascii(text, SKU_MAX_LEN)
}

/// 1–128 visible ASCII characters.
pub fn is_event_id(text: &str) -> bool {
    is_visible_ascii(text, EVENT_ID_MAX_LEN)
}

/// A deliberately shallow address check (`local@domain.tld`, no whitespace or control characters,
/// one `@`): the shop's mail system is the real judge, this only catches data put in the wrong field.
pub fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    text.len() <= EMAIL_MAX_LEN
        && !local.is_empty()
        && !domain.contains('@')
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| !label.is_empty())
}

fn is_token(text: &str, max_len: usize) -> bool {
    (1..=max_len).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_visible_ascii(text: &str, max_len: usize) -> bool {
    (1..=max_len).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_are_1_to_64_url_safe_characters() {
        for good in ["a", "ORD-2025_0001", &"x".repeat(64)] {
            assert!(is_order_id(good), "{good}");
        }
        for bad in [
            "",
            "has space",
            "slash/no",
            "ümlaut",
            &"x".repeat(65),
            "dot.no",
        ] {
            assert!(!is_order_id(bad), "{bad}");
        }
    }

    #[test]
    fn visible_ascii_fields_refuse_spaces_controls_and_overlong_text() {
        assert!(is_sku("SKU-1/RED.M"));
        assert!(!is_sku(""));
        assert!(!is_sku("SKU 1"));
        assert!(!is_event_id("ev\n1"));
        assert!(!is_customer_id(&"c".repeat(CUSTOMER_ID_MAX_LEN + 1)));
    }

    #[test]
    fn email_check_catches_obvious_non_addresses_only() {
        for good in ["a@example.com", "first.last+tag@mail.example.co.uk"] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "",
            "no-at",
            "@example.com",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@b..com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }
}
