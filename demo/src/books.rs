//! The books of a run, counted from what Kafka committed (read_committed readers) and what the
//! webhook received, against what the load sent: orders in = validated + rejected +
//! dead-lettered + duplicates, and every valid order exactly once in each stage's output and
//! exactly one notification per (order, version).

use std::collections::{HashMap, HashSet};
use std::fmt;

use orderpipe_orders::StatusChanged;

use super::DemoError;
use super::load::Tally;
use super::pipeline::Topics;
use orderpipe_stack::{Isolation, Record, StackError, read_all};

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
    pub dead_lettered: usize,
    pub events: PerOrder,
    pub status_changes: PerOrder,
    pub audit: PerOrder,
    /// Distinct idempotency keys delivered for valid orders vs. expected ones.
    pub notifications: PerOrder,
    /// Deliveries beyond the first per idempotency key (the webhook is at-least-once).
    pub redeliveries: u64,
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
        let [validated, rejected, dead_lettered, events, status, audit] =
            tokio::task::spawn_blocking(move || {
                names.map(|topic| read_all(&bootstrap, &topic, Isolation::ReadCommitted))
            })
            .await
            .map_err(|error| StackError::Task {
                what: "reading the books' topics".into(),
                error,
            })?;
        let (validated, events, status, audit) = (validated?, events?, status?, audit?);
        let (rejected, dead_lettered) = (rejected?.len(), dead_lettered?.len());
        let keyed = |records: &[Record]| -> Vec<(Vec<u8>, u64)> {
            records
                .iter()
                .map(|r| (r.key.clone().unwrap_or_default(), 1))
                .collect()
        };
        // order-status is keyed by order id; the version is in the record.
        let versioned: Vec<(Vec<u8>, u64)> = status
            .iter()
            .map(|r| {
                let version = serde_json::from_slice::<StatusChanged>(
                    r.payload.as_deref().unwrap_or_default(),
                )
                .map(|c| c.version)
                .unwrap_or(0);
                (r.key.clone().unwrap_or_default(), version)
            })
            .collect();
        // Valid orders only reach version 1 (Placed -> Validated) in this pipeline: nothing else
        // writes order-events here.
        let notified: Vec<(Vec<u8>, u64)> = deliveries
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
        Ok(Books {
            validated: per_order(&keyed(&validated), &sent.valid_keys),
            rejected,
            dead_lettered,
            events: per_order(&keyed(&events), &sent.valid_keys),
            status_changes: per_order(&versioned, &sent.valid_keys),
            audit: per_order(&keyed(&audit), &sent.valid_keys),
            notifications: per_order(&notified, &sent.valid_keys),
            redeliveries: deliveries.values().map(|n| n.saturating_sub(1)).sum(),
            sent: sent.clone(),
        })
    }

    /// What does not balance, in words; empty when the books balance.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let s = &self.sent;
        let accounted = self.validated.records as u64
            + self.rejected as u64
            + self.dead_lettered as u64
            + s.duplicates;
        if accounted != s.sent {
            problems.push(format!(
                "orders in {} != validated {} + rejected {} + dead-lettered {} + duplicates {}",
                s.sent, self.validated.records, self.rejected, self.dead_lettered, s.duplicates
            ));
        }
        if self.rejected as u64 != s.invalid {
            problems.push(format!(
                "rejected {} != invalid sent {}",
                self.rejected, s.invalid
            ));
        }
        if self.dead_lettered as u64 != s.garbage {
            problems.push(format!(
                "dead-lettered {} != garbage sent {}",
                self.dead_lettered, s.garbage
            ));
        }
        for (what, counts) in [
            ("orders.validated", self.validated),
            ("order-events", self.events),
            ("order-status", self.status_changes),
            ("notifications.audit", self.audit),
            ("webhook deliveries", self.notifications),
        ] {
            if !counts.exact() {
                problems.push(format!(
                    "{what}: {} missing, {} extra for {} valid orders",
                    counts.missing, counts.extra, s.valid
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
            "orders in        {:>8}  (valid {}, invalid {}, garbage {}, duplicates {})",
            s.sent, s.valid, s.invalid, s.garbage, s.duplicates
        )?;
        writeln!(
            f,
            "  = validated    {:>8}\n  + rejected     {:>8}\n  + dead-lettered{:>8}\n  + duplicates   {:>8}",
            self.validated.records, self.rejected, self.dead_lettered, s.duplicates
        )?;
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
