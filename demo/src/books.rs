//! The books of a run, counted from what Kafka committed (read_committed readers) and what the
//! webhook received, against what the load sent through the intake gateway (what it accepted into
//! Kafka; what it refused or answered from its ledger is counted apart): orders in = validated + rejected +
//! dead-lettered + duplicates dropped, and every valid order exactly once in each stage's output and
//! exactly one notification per (order, version).
//!
//! A faulty release (`make demo SCENARIO=bad-release`) dead-letters whatever its pods take, with
//! reason `fault_injected`; its dead letters are told apart by their keys (order ids). A valid order
//! all of whose copies (the order and its re-submissions) went to it is accounted as dead-lettered,
//! not owed downstream; one with a copy that reached a sound pod must be validated exactly once (a
//! re-submission that follows a dead-lettered original is the first the sound version sees). Without
//! a fault this is the plain rule above.

use std::collections::{HashMap, HashSet};
use std::fmt;

use orderpipe_orders::dead_letter::DeadLetterReason;
use orderpipe_orders::{StatusChanged, headers};

use super::DemoError;
use super::load::Tally;
use super::pipeline::Topics;
use orderpipe_stack::{Isolation, Record, StackError, read_all};

/// The reason `orderpipe-worker-faulty` gives every record it dead-letters.
const FAULT_INJECTED: DeadLetterReason = DeadLetterReason::FaultInjected;

/// Counts of one topic's committed records against the valid orders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerOrder {
    pub records: usize,
    /// Valid orders with no record.
    pub missing: usize,
    /// Records beyond the first for the same (order, version), plus records of unknown orders.
    pub extra: usize,
}

impl PerOrder {
    fn exact(&self) -> bool {
        self.missing == 0 && self.extra == 0
    }
}

/// What the run produced.
#[derive(Debug, Clone)]
pub struct Books {
    pub sent: Tally,
    pub validated: PerOrder,
    pub rejected: usize,
    /// Every dead letter, those of a faulty release included.
    pub dead_lettered: usize,
    /// Dead letters of a faulty release (reason `fault_injected`), by what they were.
    pub faulted: Faulted,
    /// Re-submissions dropped as duplicates: those that followed their validated order.
    pub duplicates_dropped: u64,
    /// Valid orders with more outcomes than copies sent (validated and dead-lettered every copy).
    pub overcounted: usize,
    pub events: PerOrder,
    pub status_changes: PerOrder,
    pub audit: PerOrder,
    /// Distinct idempotency keys delivered for valid orders vs. expected ones.
    pub notifications: PerOrder,
    /// Deliveries beyond the first per idempotency key (the webhook is at-least-once).
    pub redeliveries: u64,
}

/// Dead letters with reason `fault_injected`, by the key of the record they copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faulted {
    /// Copies of valid orders: the orders and their re-submissions.
    pub valid_copies: usize,
    /// Valid orders none of whose copies reached a sound pod: accounted as dead-lettered.
    pub orders_lost_to_fault: usize,
    /// Copies of orders that a sound pod validated (from another copy) all the same.
    pub copies_of_validated: usize,
    pub invalid: usize,
    pub garbage: usize,
    /// Keys the load never sent.
    pub unknown: usize,
}

impl Faulted {
    pub fn total(&self) -> usize {
        self.valid_copies + self.invalid + self.garbage + self.unknown
    }
}

/// What Kafka and the webhook hold after a run, for [`Books::tally`].
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub validated: Vec<Record>,
    pub rejected: usize,
    pub dead_letters: Vec<Record>,
    pub events: Vec<Record>,
    pub status: Vec<Record>,
    pub audit: Vec<Record>,
    /// The webhook receiver's deliveries per idempotency key.
    pub deliveries: HashMap<String, u64>,
}

impl Books {
    /// Counts everything now. `deliveries` are the webhook receiver's counts per key.
    pub async fn count(
        bootstrap: &str,
        topics: &Topics,
        sent: &Tally,
        deliveries: &HashMap<String, u64>,
    ) -> Result<Books, DemoError> {
        // The reads block; meanwhile the runtime keeps serving the webhook receiver.
        let bootstrap = bootstrap.to_owned();
        let names = [
            &topics.validated,
            &topics.rejected,
            &topics.dead_letter,
            &topics.events,
            &topics.status,
            &topics.audit,
        ]
        .map(String::clone);
        let [validated, rejected, dead_letters, events, status, audit] =
            tokio::task::spawn_blocking(move || {
                names.map(|topic| read_all(&bootstrap, &topic, Isolation::ReadCommitted))
            })
            .await
            .map_err(|error| StackError::Task {
                what: "reading the books' topics".into(),
                error,
            })?;
        Ok(Books::tally(
            sent,
            Outputs {
                validated: validated?,
                rejected: rejected?.len(),
                dead_letters: dead_letters?,
                events: events?,
                status: status?,
                audit: audit?,
                deliveries: deliveries.clone(),
            },
        ))
    }

    /// The books of `outputs` against `sent`.
    pub fn tally(sent: &Tally, outputs: Outputs) -> Books {
        let key = |r: &Record| r.key.clone().unwrap_or_default();
        let keyed = |records: &[Record]| -> Vec<(Vec<u8>, u64)> {
            records.iter().map(|r| (key(r), 1)).collect()
        };
        // The faulty release's dead letters, by the key of the record each copies.
        let mut faulted = Faulted::default();
        let mut faulted_copies: HashMap<Vec<u8>, u64> = HashMap::new();
        for record in outputs
            .dead_letters
            .iter()
            .filter(|r| r.header(headers::ERROR_REASON) == Some(FAULT_INJECTED.code()))
        {
            let key = key(record);
            if sent.valid_keys.contains(&key) {
                faulted.valid_copies += 1;
                *faulted_copies.entry(key).or_default() += 1;
            } else if sent.invalid_keys.contains(&key) {
                faulted.invalid += 1;
            } else if sent.garbage_keys.contains(&key) {
                faulted.garbage += 1;
            } else {
                faulted.unknown += 1;
            }
        }
        let mut validated_per_order: HashMap<&[u8], u64> = HashMap::new();
        for record in &outputs.validated {
            *validated_per_order
                .entry(record.key.as_deref().unwrap_or_default())
                .or_default() += 1;
        }
        // Each valid order: its copies, how many were validated and how many dead-lettered by
        // the fault; the rest of its copies were dropped as duplicates.
        let mut owed = HashSet::new();
        let (mut dropped, mut overcounted) = (0, 0);
        for order in &sent.valid_keys {
            let copies = 1 + sent.resubmitted.get(order).copied().unwrap_or(0);
            let validated = validated_per_order
                .get(order.as_slice())
                .copied()
                .unwrap_or(0);
            let dead = faulted_copies.get(order).copied().unwrap_or(0);
            if validated == 0 && dead == copies {
                faulted.orders_lost_to_fault += 1;
                continue;
            }
            owed.insert(order.clone());
            if validated > 0 {
                faulted.copies_of_validated += usize::try_from(dead).unwrap_or(usize::MAX);
            }
            match copies.checked_sub(validated.min(1) + dead) {
                Some(rest) if validated > 0 => dropped += rest,
                Some(_) => {}
                None => overcounted += 1,
            }
        }
        // order-status is keyed by order id; the version is in the record.
        let versioned: Vec<(Vec<u8>, u64)> = outputs
            .status
            .iter()
            .map(|r| {
                let version = serde_json::from_slice::<StatusChanged>(
                    r.payload.as_deref().unwrap_or_default(),
                )
                .map(|c| c.version)
                .unwrap_or(0);
                (key(r), version)
            })
            .collect();
        // Valid orders only reach version 1 (Placed -> Validated) in this pipeline: nothing else
        // writes order-events here.
        let notified: Vec<(Vec<u8>, u64)> = outputs
            .deliveries
            .keys()
            .map(|key| {
                let mut parts = key.rsplitn(3, ':');
                let (_channel, version, order) = (parts.next(), parts.next(), parts.next());
                (
                    order.unwrap_or_default().as_bytes().to_vec(),
                    version.and_then(|v| v.parse().ok()).unwrap_or(0),
                )
            })
            .collect();
        Books {
            validated: per_order(&keyed(&outputs.validated), &owed),
            rejected: outputs.rejected,
            dead_lettered: outputs.dead_letters.len(),
            faulted,
            duplicates_dropped: dropped,
            overcounted,
            events: per_order(&keyed(&outputs.events), &owed),
            status_changes: per_order(&versioned, &owed),
            audit: per_order(&keyed(&outputs.audit), &owed),
            notifications: per_order(&notified, &owed),
            redeliveries: outputs
                .deliveries
                .values()
                .map(|n| n.saturating_sub(1))
                .sum(),
            sent: sent.clone(),
        }
    }

    /// What does not balance, in words; empty when the books balance.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let s = &self.sent;
        let f = &self.faulted;
        let accounted = self.validated.records as u64
            + self.rejected as u64
            + self.dead_lettered as u64
            + self.duplicates_dropped;
        if accounted != s.sent {
            problems.push(format!(
                "orders in {} != validated {} + rejected {} + dead-lettered {} + duplicates dropped {}",
                s.sent,
                self.validated.records,
                self.rejected,
                self.dead_lettered,
                self.duplicates_dropped
            ));
        }
        if self.rejected as u64 + f.invalid as u64 != s.invalid {
            problems.push(format!(
                "rejected {} + invalid dead-lettered by the fault {} != invalid sent {}",
                self.rejected, f.invalid, s.invalid
            ));
        }
        let not_faulted = self.dead_lettered - f.total().min(self.dead_lettered);
        if not_faulted as u64 + f.garbage as u64 != s.garbage {
            problems.push(format!(
                "dead-lettered {not_faulted} (fault aside) + garbage dead-lettered by the fault {} != garbage sent {}",
                f.garbage, s.garbage
            ));
        }
        if f.unknown > 0 {
            problems.push(format!(
                "{} dead letters of the fault copy records the load never sent",
                f.unknown
            ));
        }
        if self.overcounted > 0 {
            problems.push(format!(
                "{} valid orders have more outcomes than copies sent",
                self.overcounted
            ));
        }
        let owed = s.valid as usize - f.orders_lost_to_fault;
        for (what, counts) in [
            ("orders.validated", self.validated),
            ("order-events", self.events),
            ("order-status", self.status_changes),
            ("notifications.audit", self.audit),
            ("webhook deliveries", self.notifications),
        ] {
            if !counts.exact() {
                problems.push(format!(
                    "{what}: {} missing, {} extra for {owed} valid orders",
                    counts.missing, counts.extra
                ));
            }
        }
        if self.redeliveries > 0 {
            problems.push(format!(
                "{} notifications delivered more than once",
                self.redeliveries
            ));
        }
        problems
    }
}

/// `records` (order key, version) against the valid orders: exactly one per valid order expected.
fn per_order(records: &[(Vec<u8>, u64)], valid: &HashSet<Vec<u8>>) -> PerOrder {
    let mut seen = HashSet::new();
    let mut extra = 0;
    for (key, version) in records {
        if !valid.contains(key) || !seen.insert((key.as_slice(), *version)) {
            extra += 1;
        }
    }
    let present: HashSet<&[u8]> = seen.iter().map(|(key, _)| *key).collect();
    PerOrder {
        records: records.len(),
        missing: valid.len() - present.len(),
        extra,
    }
}

impl fmt::Display for Books {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.sent;
        writeln!(
            f,
            "posted           {:>8}  to the intake gateway: refused {} (400), re-submissions answered from its ledger {}",
            s.posted, s.refused, s.replayed
        )?;
        writeln!(
            f,
            "orders in        {:>8}  (valid {}, invalid {}, garbage {}, duplicates {})",
            s.sent, s.valid, s.invalid, s.garbage, s.duplicates
        )?;
        writeln!(
            f,
            "  = validated    {:>8}\n  + rejected     {:>8}\n  + dead-lettered{:>8}\n  + duplicates   {:>8}  (re-submissions dropped)",
            self.validated.records, self.rejected, self.dead_lettered, self.duplicates_dropped
        )?;
        let faulted = &self.faulted;
        if faulted.total() > 0 {
            writeln!(
                f,
                "dead letters: {} not orders (the load's garbage) + {} with reason fault_injected, \
                 written by the faulty canary for every record it took: {} records of {} valid \
                 orders that never reached the stable version (not owed downstream), {} copies of \
                 orders the stable version validated from another copy, {} invalid orders, {} garbage",
                self.dead_lettered - faulted.total().min(self.dead_lettered),
                faulted.total(),
                faulted.valid_copies - faulted.copies_of_validated.min(faulted.valid_copies),
                faulted.orders_lost_to_fault,
                faulted.copies_of_validated,
                faulted.invalid,
                faulted.garbage
            )?;
        }
        for (what, counts) in [
            ("orders.validated", self.validated),
            ("order-events", self.events),
            ("order-status", self.status_changes),
            ("notifications.audit", self.audit),
        ] {
            writeln!(
                f,
                "{what:<20} {:>8} records, {} missing, {} duplicated or unknown",
                counts.records, counts.missing, counts.extra
            )?;
        }
        write!(
            f,
            "notifications        {:>8} distinct (order, version), {} missing, {} unknown, {} redelivered",
            self.notifications.records,
            self.notifications.missing,
            self.notifications.extra,
            self.redeliveries
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, reason: Option<&str>) -> Record {
        Record {
            partition: 0,
            offset: 0,
            key: Some(key.as_bytes().to_vec()),
            payload: None,
            headers: reason
                .map(|r| (headers::ERROR_REASON.to_owned(), r.to_owned()))
                .into_iter()
                .collect(),
        }
    }

    fn keys(keys: &[&str]) -> HashSet<Vec<u8>> {
        keys.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    /// Orders a, b, c (a and b re-submitted once), invalid i, garbage g.
    fn sent() -> Tally {
        Tally {
            posted: 7,
            sent: 7,
            valid: 3,
            invalid: 1,
            garbage: 1,
            duplicates: 2,
            valid_keys: keys(&["a", "b", "c"]),
            resubmitted: [(b"a".to_vec(), 1), (b"b".to_vec(), 1)].into(),
            invalid_keys: keys(&["i"]),
            garbage_keys: keys(&["g"]),
            ..Tally::default()
        }
    }

    /// Everything downstream of validate for the orders `validated`.
    fn downstream(validated: &[&str], dead_letters: Vec<Record>) -> Outputs {
        let records = |keys: &[&str]| keys.iter().map(|k| record(k, None)).collect::<Vec<_>>();
        Outputs {
            validated: records(validated),
            rejected: 0,
            dead_letters,
            events: records(validated),
            status: records(validated),
            audit: records(validated),
            deliveries: validated
                .iter()
                .map(|k| (format!("{k}:0:webhook"), 1))
                .collect(),
        }
    }

    #[test]
    fn what_a_faulty_canary_dead_lettered_is_accounted_and_the_books_balance() {
        let fault = Some("fault_injected");
        // a and its re-submission both went to the faulty canary; b's original too, its
        // re-submission to the stable version, which validated it; the canary also took i.
        let dead_letters = vec![
            record("a", fault),
            record("a", fault),
            record("b", fault),
            record("i", fault),
            record("g", Some("not_json")),
        ];
        let books = Books::tally(&sent(), downstream(&["b", "c"], dead_letters));
        assert_eq!(books.problems(), Vec::<String>::new(), "{books}");
        assert_eq!(
            books.faulted,
            Faulted {
                valid_copies: 3,
                orders_lost_to_fault: 1,
                copies_of_validated: 1,
                invalid: 1,
                garbage: 0,
                unknown: 0,
            }
        );
        assert_eq!(books.duplicates_dropped, 0);
        assert!(books.to_string().contains(
            "1 not orders (the load's garbage) + 4 with reason fault_injected, written by the \
             faulty canary for every record it took: 2 records of 1 valid orders"
        ));
    }

    #[test]
    fn an_order_whose_copy_reached_the_stable_version_unvalidated_is_missing() {
        let fault = Some("fault_injected");
        // b's original was dead-lettered, its re-submission processed by nobody.
        let dead_letters = vec![record("b", fault), record("i", fault), record("g", None)];
        let books = Books::tally(&sent(), downstream(&["a", "c"], dead_letters));
        let problems = books.problems();
        assert!(
            problems
                .iter()
                .any(|p| p == "orders.validated: 1 missing, 0 extra for 3 valid orders"),
            "{problems:?}"
        );
    }

    #[test]
    fn without_a_fault_every_re_submission_is_dropped() {
        let dead_letters = vec![record("g", Some("not_json"))];
        let mut outputs = downstream(&["a", "b", "c"], dead_letters);
        outputs.rejected = 1;
        let books = Books::tally(&sent(), outputs);
        assert_eq!(books.problems(), Vec::<String>::new(), "{books}");
        assert_eq!(books.duplicates_dropped, 2);
        assert!(!books.to_string().contains("fault_injected"));
    }

    #[test]
    fn per_order_counts_missing_duplicates_and_strangers() {
        let valid: HashSet<Vec<u8>> = [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()].into();
        let records = vec![
            (b"a".to_vec(), 1),
            (b"a".to_vec(), 1),
            (b"b".to_vec(), 1),
            (b"x".to_vec(), 1),
        ];
        assert_eq!(
            per_order(&records, &valid),
            PerOrder {
                records: 4,
                missing: 1,
                extra: 2
            }
        );
    }
}
