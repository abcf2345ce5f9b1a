//! Hostile input, generated: every processor, fed records nobody here wrote by hand, never panics,
//! decides the same way twice, and emits only records that fit [`MAX_OUTPUT_BYTES`].
//!
//! The records start from realistic ones (the seeded generator) and are then attacked at the byte
//! level: every JSON number form (`1e15`, `-0`, `1E+400`, `0.1e-300`, 20-digit integers) — the form
//! that once made a rejection quoting a re-serialised order three times its input —, deep nesting,
//! huge arrays, invalid UTF-8, lone surrogate escapes, duplicate members, byte-order marks, giant
//! strings and keys, and keys that disagree with `orderId`.
//!
//! `make test` runs [`DEFAULT_CASES`] cases per processor; `ORDERPIPE_HOSTILE_CASES` raises it for
//! the deep run in `make test-faults`.

use chrono::DateTime;
use orderpipe_orders::generator::{EventConfig, EventGenerator, GenConfig, OrderGenerator};
use orderpipe_orders::notify::{AttemptDecision, HttpOutcome, Notifier, NotifyPlan};
use orderpipe_orders::status::StatusMachine;
use orderpipe_orders::validate::Validator;
use orderpipe_orders::{
    Emit, MAX_KEY_BYTES, MAX_OUTPUT_BYTES, MAX_PAYLOAD_BYTES, OrderState, Output, Processor,
    RejectedOrder, StatusChanged,
};
use proptest::prelude::*;
use proptest::sample::select;

use crate::support::{self, input, t0};

/// Cases per processor in `make test`: each case may parse half a megabyte several times.
const DEFAULT_CASES: u32 = 96;

fn cases() -> u32 {
    std::env::var("ORDERPIPE_HOSTILE_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Number forms JSON allows (and a few it does not) that serde may widen, narrow or refuse.
const NUMBERS: &[&str] = &[
    "1e15",
    "1E+400",
    "-0",
    "0.1e-300",
    "12345678901234567890",
    "-12345678901234567890",
    "1e-400",
    "9223372036854775808",
    "-9223372036854775809",
    "1.0",
    "0e0",
    "01",
    "1.",
    ".5",
    "+1",
    "NaN",
    "Infinity",
];

/// One attack on a record's bytes.
#[derive(Debug, Clone)]
enum Attack {
    /// Replace the n-th number with a hostile form.
    Number { nth: usize, form: &'static str },
    /// Set `totalMinor` (the last member wins) to `count` copies of a compact number: small in, long
    /// when re-serialised, and a rejection (wrong type), which quotes the submission.
    NumberFlood { form: &'static str, count: usize },
    /// Wrap the record in `depth` arrays.
    Nest { depth: usize },
    /// Add a member holding a huge array of empty objects (items_max, many reasons).
    HugeArray { count: usize },
    /// Put `byte` (not valid UTF-8 on its own) at `at`.
    InvalidUtf8 { at: usize, byte: u8 },
    /// Add a member whose string holds a lone surrogate escape.
    LoneSurrogate { escape: &'static str },
    /// Repeat the first member with another value.
    DuplicateMember,
    /// Prefix a UTF-8 byte-order mark.
    Bom,
    /// Add a member holding a string of `len` bytes (escapes included).
    GiantString { len: usize, escaped: bool },
    /// Replace the key: none, another order's, or a giant one.
    Key(KeyAttack),
    /// Cut the record at `at`.
    Truncate { at: usize },
}

#[derive(Debug, Clone)]
enum KeyAttack {
    Missing,
    Other,
    Giant,
}

/// Numbers that serde re-serialises longer than written (`1e15` is `1000000000000000.0`).
const WIDENING_NUMBERS: &[&str] = &["1e15", "12345678901234567890", "-0", "0e0", "1E2"];

fn arb_attack() -> impl Strategy<Value = Attack> {
    let form = || select(NUMBERS);
    let widening = prop_oneof![3 => select(WIDENING_NUMBERS), 1 => select(NUMBERS)];
    // Weighted toward the attacks that make outputs large, the failure this suite exists for.
    prop_oneof![
        2 => (0_usize..40, form()).prop_map(|(nth, form)| Attack::Number { nth, form }),
        4 => (widening, 1_usize..120_000)
            .prop_map(|(form, count)| Attack::NumberFlood { form, count }),
        1 => (1_usize..400).prop_map(|depth| Attack::Nest { depth }),
        1 => (400_usize..100_000).prop_map(|count| Attack::HugeArray { count }),
        1 => (0_usize..400, 0x80_u8..=0xff)
            .prop_map(|(at, byte)| Attack::InvalidUtf8 { at, byte }),
        1 => select(&["\\ud800", "\\udfff", "\\ud800\\u0041", "\\udc00\\ud800"][..])
            .prop_map(|escape| Attack::LoneSurrogate { escape }),
        1 => Just(Attack::DuplicateMember),
        1 => Just(Attack::Bom),
        2 => (1_usize..600_000, any::<bool>())
            .prop_map(|(len, escaped)| Attack::GiantString { len, escaped }),
        2 => prop_oneof![
            Just(KeyAttack::Missing),
            Just(KeyAttack::Other),
            Just(KeyAttack::Giant)
        ]
        .prop_map(Attack::Key),
        1 => (0_usize..400).prop_map(|at| Attack::Truncate { at }),
    ]
}

/// A record under attack: key and payload bytes.
#[derive(Debug, Clone)]
struct Hostile {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl Hostile {
    fn new(key: &str, payload: Vec<u8>) -> Self {
        Self {
            key: Some(key.as_bytes().to_vec()),
            payload,
        }
    }

    /// Inserts `member` (`"name":value`) right after the opening brace of an object payload.
    fn add_member(&mut self, member: &[u8]) {
        if let Some(brace) = self.payload.iter().position(|&b| b == b'{') {
            let mut with = member.to_vec();
            with.push(b',');
            self.payload.splice(brace + 1..brace + 1, with);
        }
    }

    fn apply(&mut self, attack: &Attack) {
        match *attack {
            Attack::Number { nth, form } => {
                // On the bytes: an earlier attack may have made them invalid UTF-8.
                let numbers: Vec<(usize, usize)> = number_spans(&self.payload);
                if let Some(&(start, end)) = numbers.get(nth % numbers.len().max(1)) {
                    self.payload.splice(start..end, form.bytes());
                }
            }
            Attack::NumberFlood { form, count } => {
                let mut member = b",\"totalMinor\":[".to_vec();
                member.extend(vec![form; count].join(",").bytes());
                member.push(b']');
                if let Some(brace) = self.payload.iter().rposition(|&b| b == b'}') {
                    self.payload.splice(brace..brace, member);
                }
            }
            Attack::Nest { depth } => {
                let mut nested = "[".repeat(depth).into_bytes();
                nested.append(&mut self.payload);
                nested.extend("]".repeat(depth).bytes());
                self.payload = nested;
            }
            Attack::HugeArray { count } => {
                let mut member = b"\"items\":[".to_vec();
                member.extend(vec!["{}"; count].join(",").bytes());
                member.push(b']');
                self.add_member(&member);
            }
            Attack::InvalidUtf8 { at, byte } => {
                let at = at.min(self.payload.len());
                self.payload.insert(at, byte);
            }
            Attack::LoneSurrogate { escape } => {
                self.add_member(format!("\"reason\":\"{escape}\"").as_bytes());
            }
            Attack::DuplicateMember => {
                self.add_member(b"\"orderId\":\"someone-else\"");
            }
            Attack::Bom => self.payload.splice(0..0, [0xEF, 0xBB, 0xBF]).for_each(drop),
            Attack::GiantString { len, escaped } => {
                let body = if escaped {
                    "\\u00e9".repeat(len / 6)
                } else {
                    "x".repeat(len)
                };
                self.add_member(format!("\"reason\":\"{body}\"").as_bytes());
            }
            Attack::Key(KeyAttack::Missing) => self.key = None,
            Attack::Key(KeyAttack::Other) => self.key = Some(b"someone-else".to_vec()),
            Attack::Key(KeyAttack::Giant) => self.key = Some(vec![b'k'; MAX_KEY_BYTES * 3]),
            Attack::Truncate { at } => self.payload.truncate(at.min(self.payload.len())),
        }
    }
}

/// Byte spans of the JSON numbers in `bytes` outside strings (good enough for generated records).
fn number_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let (mut in_string, mut index) = (false, 0);
    while index < bytes.len() {
        match bytes[index] {
            b'\\' if in_string => index += 1,
            b'"' => in_string = !in_string,
            b'-' | b'0'..=b'9' if !in_string => {
                let start = index;
                while index < bytes.len() && b"+-.eE0123456789".contains(&bytes[index]) {
                    index += 1;
                }
                spans.push((start, index));
                continue;
            }
            _ => {}
        }
        index += 1;
    }
    spans
}

fn emitted_size(emit: &Emit) -> usize {
    emit.key.as_ref().map_or(0, Vec::len)
        + emit.payload.len()
        + emit
            .headers
            .iter()
            .map(|header| header.name.len() + header.value.len())
            .sum::<usize>()
}

fn assert_bounded(emits: &[Emit], what: &str) {
    for emit in emits {
        let size = emitted_size(emit);
        assert!(
            size <= MAX_OUTPUT_BYTES,
            "{what}: a {:?} record of {size} bytes exceeds {MAX_OUTPUT_BYTES}",
            emit.output
        );
    }
}

fn arb_order(attacks: usize) -> impl Strategy<Value = (Hostile, Vec<Attack>)> {
    (
        any::<u64>(),
        proptest::collection::vec(arb_attack(), 1..=attacks),
    )
        .prop_map(|(seed, attacks)| {
            let order = OrderGenerator::new(seed, GenConfig::default()).valid_order();
            let record = Hostile::new(&order.order_id, support::json(&order));
            (record, attacks)
        })
}

fn arb_event(attacks: usize) -> impl Strategy<Value = (Hostile, Vec<Attack>)> {
    (
        any::<u64>(),
        proptest::collection::vec(arb_attack(), 1..=attacks),
    )
        .prop_map(|(seed, attacks)| {
            let mut events = EventGenerator::new(seed, EventConfig::default());
            let event = events
                .lifecycle("ord-hostile", t0())
                .into_iter()
                .next()
                .expect("a life cycle has events");
            (Hostile::new("ord-hostile", event.payload), attacks)
        })
}

fn arb_status_changed(attacks: usize) -> impl Strategy<Value = (Hostile, Vec<Attack>)> {
    (
        select(&[OrderState::Shipped, OrderState::Cancelled][..]),
        proptest::collection::vec(arb_attack(), 1..=attacks),
    )
        .prop_map(|(to, attacks)| {
            let changed = StatusChanged {
                order_id: "ord-hostile".to_owned(),
                from: OrderState::Validated,
                to,
                version: 2,
                at: t0(),
                event_id: "ev-1".to_owned(),
                details: Default::default(),
            };
            (
                Hostile::new("ord-hostile", support::json(&changed)),
                attacks,
            )
        })
}

fn attacked((mut record, attacks): (Hostile, Vec<Attack>)) -> Hostile {
    for attack in &attacks {
        record.apply(attack);
    }
    record
}

proptest! {
    #![proptest_config(support::config(cases()))]

    #[test]
    fn validate_survives_hostile_orders(case in arb_order(3)) {
        let record = attacked(case);
        let validator = Validator::default();
        let record_input = input(record.key.as_deref(), Some(&record.payload));
        let first = validator.process(&record_input, None);
        let again = validator.process(&record_input, None);
        prop_assert_eq!(&first, &again, "same input, same decision");
        assert_bounded(&first.emits, "validate");
    }

    #[test]
    fn status_survives_hostile_events(case in arb_event(3)) {
        let record = attacked(case);
        let machine = StatusMachine::default();
        let record_input = input(record.key.as_deref(), Some(&record.payload));
        let first = machine.process(&record_input, None);
        prop_assert_eq!(&first, &machine.process(&record_input, None), "same input, same decision");
        assert_bounded(&first.emits, "status");
    }

    #[test]
    fn notify_survives_hostile_status_changes(case in arb_status_changed(3)) {
        let record = attacked(case);
        let notifier = Notifier::default();
        let record_input = input(record.key.as_deref(), Some(&record.payload));
        let plan = notifier.plan(&record_input);
        prop_assert_eq!(&plan, &notifier.plan(&record_input), "same input, same plan");
        let now = DateTime::UNIX_EPOCH;
        match plan {
            NotifyPlan::Skip { .. } => {}
            NotifyPlan::DeadLetter { dead_letter, .. } => assert_bounded(&[dead_letter], "notify"),
            NotifyPlan::Dispatch(dispatch) => {
                prop_assert!(dispatch.body().len() <= MAX_OUTPUT_BYTES, "webhook body");
                let refused = HttpOutcome::Response { status: 400, retry_after: None };
                match notifier.after_attempt(&dispatch, 1, &refused, now, 0.5) {
                    AttemptDecision::GiveUp { audit, dead_letter, .. } => {
                        assert_bounded(&[audit, dead_letter], "notify give-up");
                    }
                    other => prop_assert!(false, "400 must give up, got {other:?}"),
                }
                let delivered = HttpOutcome::Response { status: 200, retry_after: None };
                match notifier.after_attempt(&dispatch, 1, &delivered, now, 0.5) {
                    AttemptDecision::Delivered { audit } => assert_bounded(&[audit], "notify audit"),
                    other => prop_assert!(false, "200 must deliver, got {other:?}"),
                }
            }
        }
    }
}

/// The record that stalled a partition: a valid-looking order padded with compact numbers to just
/// under the input limit. Its rejection used to quote the re-serialised object (`1e15` becomes
/// `1000000000000000.0`), three times the input and over the broker's 1 MiB.
#[test]
fn a_rejection_quotes_the_submission_verbatim_so_compact_numbers_stay_compact() {
    let order = support::order();
    let mut record = Hostile::new(&order.order_id, support::json(&order));
    let count = (MAX_PAYLOAD_BYTES - record.payload.len() - 64) / "1e15,".len();
    record.apply(&Attack::NumberFlood {
        form: "1e15",
        count,
    });
    record.apply(&Attack::Key(KeyAttack::Other));
    assert!(record.payload.len() <= MAX_PAYLOAD_BYTES);

    let decision =
        Validator::default().process(&input(record.key.as_deref(), Some(&record.payload)), None);
    let rejected = support::only(&decision.emits, Output::Rejected);
    assert_bounded(&decision.emits, "validate");
    let quoted: RejectedOrder = serde_json::from_slice(&rejected.payload).expect("decodes");
    assert_eq!(
        quoted.order.json().as_bytes(),
        &record.payload[..],
        "the quote is the submission"
    );
}

/// An order with thousands of broken items lists the first hundred reasons and counts the rest.
#[test]
fn a_rejection_lists_at_most_a_hundred_reasons_and_counts_the_rest() {
    let items: Vec<serde_json::Value> = (0..500)
        .map(|_| serde_json::json!({"quantity": -1}))
        .collect();
    let mut order = serde_json::to_value(support::order()).expect("json");
    order["items"] = serde_json::Value::Array(items);
    let payload = support::json(&order);
    let decision = Validator::default().process(&input(Some(b"ord-1"), Some(&payload)), None);
    let rejected = support::only(&decision.emits, Output::Rejected);
    let rejected: RejectedOrder = serde_json::from_slice(&rejected.payload).expect("decodes");
    assert_eq!(rejected.reasons.len(), RejectedOrder::MAX_REASONS);
    assert!(
        rejected.reasons_omitted > 1000,
        "{} omitted",
        rejected.reasons_omitted
    );
}
