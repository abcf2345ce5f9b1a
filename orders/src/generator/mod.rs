//! Seeded generator of realistic input: `OrderPlaced` records (~1 KB each) with a configurable share of
//! invalid, garbage and duplicate submissions, and status event sequences.
//!
//! Used by the load generator, the benchmarks and the tests; every record carries what the pipeline
//! is expected to do with it, so a test can check outputs against inputs without a second oracle.
//! Output depends only on the seed and the config (and on the `rand` version pinned in Cargo.lock,
//! whose `StdRng` algorithm may change between major versions). It must not read the clock or the
//! environment.

mod events;
mod mutation;

use std::collections::VecDeque;

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

pub use events::{EventConfig, EventExpectation, EventGenerator, GeneratedEvent};
pub use mutation::{Mutated, Mutation};

use crate::dead_letter::DeadLetterReason;
use crate::records::{Contact, OrderItem, OrderPlaced, Rule};
use crate::validate::ValidatePolicy;

/// Shares of the generated stream, each in [0, 1] and together at most 1; the rest are fresh valid
/// orders.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Valid JSON objects that break exactly one rule (→ rejected).
    pub invalid_share: f64,
    /// Bytes that are not a JSON object (→ dead-letter).
    pub garbage_share: f64,
    /// Re-submissions of an earlier valid order (→ dropped as duplicate).
    pub duplicate_share: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            invalid_share: 0.05,
            garbage_share: 0.01,
            duplicate_share: 0.02,
        }
    }
}

/// What the validate stage must do with a generated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Valid,
    /// A re-submission of an earlier `Valid` record with the same key and bytes.
    Duplicate,
    /// Rejected with (at least) this reason.
    Invalid {
        field: String,
        rule: Rule,
    },
    /// Dead-lettered with this reason.
    Garbage {
        reason: DeadLetterReason,
    },
}

/// One Kafka record to produce to the validate stage's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub expected: Expected,
}

/// How many recent valid records a duplicate may repeat.
const DUPLICATE_CANDIDATES: usize = 64;

/// `(currency, price scale)`: prices are drawn in "major units" and multiplied by the scale so that
/// a JPY order costs thousands of yen, not a handful.
const CURRENCIES: &[(&str, i64)] = &[
    ("EUR", 1),
    ("EUR", 1),
    ("EUR", 1),
    ("USD", 1),
    ("USD", 1),
    ("GBP", 1),
    ("CHF", 1),
    ("SEK", 10),
    ("JPY", 150),
    ("KWD", 1),
];
const CATEGORIES: &[&str] = &[
    "APPAREL", "SHOES", "HOME", "GARDEN", "TOYS", "BOOKS", "AUDIO",
];
const VARIANTS: &[&str] = &[
    "BLK-S", "BLK-M", "WHT-L", "RED-M", "BLU-XL", "NAT-OS", "GRY-M",
];

/// Generates `OrderPlaced` records. Also an [`Iterator`] of [`GeneratedRecord`]s (never ends).
#[derive(Debug)]
pub struct OrderGenerator {
    rng: StdRng,
    config: GenConfig,
    seed: u64,
    next_index: u64,
    max_items: usize,
    recent_valid: VecDeque<GeneratedRecord>,
}

impl OrderGenerator {
    pub fn new(seed: u64, config: GenConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            config,
            seed,
            next_index: 0,
            max_items: ValidatePolicy::default().max_items,
            recent_valid: VecDeque::with_capacity(DUPLICATE_CANDIDATES),
        }
    }

    /// A fresh valid order with an id unique within this generator's seed.
    pub fn valid_order(&mut self) -> OrderPlaced {
        let index = self.next_index;
        self.next_index += 1;
        let rng = &mut self.rng;

        let &(currency, scale) = CURRENCIES.choose(rng).unwrap_or(&("EUR", 1));
        let exponent = crate::currency::minor_unit_exponent(currency).unwrap_or(2);
        let minor_per_major = 10_i64.pow(u32::from(exponent));
        let items: Vec<OrderItem> = (0..rng.random_range(6..=18))
            .map(|_| OrderItem {
                sku: format!(
                    "{}-{}-{:06}",
                    CATEGORIES.choose(rng).unwrap_or(&"MISC"),
                    VARIANTS.choose(rng).unwrap_or(&"OS"),
                    rng.random_range(0..1_000_000)
                ),
                quantity: if rng.random_bool(0.8) {
                    1
                } else {
                    rng.random_range(2..=5)
                },
                unit_price_minor: rng.random_range(1..=250) * scale * minor_per_major
                    + rng.random_range(0..minor_per_major),
            })
            .collect();
        let subtotal: i64 = items
            .iter()
            .map(|item| item.quantity * item.unit_price_minor)
            .sum();
        let shipping_minor = rng
            .random_bool(0.7)
            .then(|| rng.random_range(3..=15) * scale * minor_per_major);
        let discount_minor = rng
            .random_bool(0.2)
            .then(|| subtotal * rng.random_range(5..=20) / 100);
        let customer = rng.random_range(0..10_000_000_u32);
        let contact = rng.random_bool(0.8).then(|| Contact {
            email: Some(format!("customer{customer}@example.com")),
            webhook_subscription_id: rng
                .random_bool(0.5)
                .then(|| format!("wh_{:016x}", rng.random::<u64>())),
        });
        // Deterministic business time: one order per second from a fixed epoch, plus jitter.
        let created_at = epoch()
            + TimeDelta::seconds(i64::try_from(index).unwrap_or(i64::MAX / 2))
            + TimeDelta::milliseconds(rng.random_range(0..1000));

        OrderPlaced {
            order_id: format!("ord-{:012x}-{index:08}", self.seed & 0xffff_ffff_ffff),
            customer_id: format!("cus-{customer:08}"),
            created_at,
            currency: currency.to_owned(),
            total_minor: subtotal + shipping_minor.unwrap_or(0) - discount_minor.unwrap_or(0),
            items,
            shipping_minor,
            discount_minor,
            contact,
        }
    }

    /// The next record of the configured mix.
    pub fn next_record(&mut self) -> GeneratedRecord {
        let draw: f64 = self.rng.random();
        let GenConfig {
            invalid_share,
            garbage_share,
            duplicate_share,
        } = self.config;
        // A re-submission drawn before any valid order exists becomes a valid order, never one of
        // the other kinds: with no garbage or invalid share configured, none may appear.
        let resubmission = draw < duplicate_share;
        if resubmission && !self.recent_valid.is_empty() {
            let pick = self.rng.random_range(0..self.recent_valid.len());
            if let Some(original) = self.recent_valid.get(pick) {
                return GeneratedRecord {
                    expected: Expected::Duplicate,
                    ..original.clone()
                };
            }
        }
        if !resubmission && draw < duplicate_share + garbage_share {
            return self.garbage();
        }
        let order = self.valid_order();
        if !resubmission && draw < duplicate_share + garbage_share + invalid_share {
            let mutation = *Mutation::ALL
                .choose(&mut self.rng)
                .unwrap_or(&Mutation::TotalMismatch);
            let pick = self.rng.random_range(0..order.items.len().max(1));
            let mutated = mutation.apply(&order, pick, self.max_items);
            return GeneratedRecord {
                key: mutated.key,
                payload: crate::json::encode(&mutated.order),
                expected: Expected::Invalid {
                    field: mutated.field,
                    rule: mutated.rule,
                },
            };
        }
        let record = GeneratedRecord {
            key: Some(order.order_id.clone().into_bytes()),
            payload: crate::json::encode(&order),
            expected: Expected::Valid,
        };
        if self.recent_valid.len() == DUPLICATE_CANDIDATES {
            self.recent_valid.pop_front();
        }
        self.recent_valid.push_back(record.clone());
        record
    }

    /// Not-an-order bytes, keyed like a real submission: cut JSON, non-UTF-8 bytes, or JSON that is
    /// not an object.
    fn garbage(&mut self) -> GeneratedRecord {
        let order = self.valid_order();
        let json = crate::json::encode(&order);
        let (payload, reason) = match self.rng.random_range(0..3) {
            0 => {
                // Cutting an object anywhere before its closing brace leaves it unterminated.
                let cut = self.rng.random_range(1..json.len().max(2) - 1);
                (json[..cut].to_vec(), DeadLetterReason::NotJson)
            }
            1 => {
                let mut bytes = vec![0xff];
                bytes.extend((0..self.rng.random_range(0..64)).map(|_| self.rng.random::<u8>()));
                (bytes, DeadLetterReason::NotUtf8)
            }
            _ => {
                let not_objects: [&[u8]; 4] = [b"[1,2,3]", b"\"order\"", b"42", b"null"];
                let pick = not_objects.choose(&mut self.rng).copied().unwrap_or(b"42");
                (pick.to_vec(), DeadLetterReason::NotAnObject)
            }
        };
        GeneratedRecord {
            key: Some(order.order_id.into_bytes()),
            payload,
            expected: Expected::Garbage { reason },
        }
    }
}

impl Iterator for OrderGenerator {
    type Item = GeneratedRecord;

    fn next(&mut self) -> Option<GeneratedRecord> {
        Some(self.next_record())
    }
}

/// 2025-01-01T00:00:00Z, the generators' fixed start of business time.
fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_735_689_600, 0).unwrap_or_default()
}
