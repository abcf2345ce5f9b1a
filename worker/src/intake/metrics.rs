//! The gateway's Prometheus metrics, registered once; every series carries the constant `pipeline`
//! label, other labels are bounded (route name, status code) — never an order id or a token.
//! Must not decide what to count; the handlers and the Kafka feed call it.

use std::borrow::Cow;
use std::time::Duration;

use orderpipe_api::contract::metrics::labels;
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Names of the series (prometheus-client appends `_total` to counters).
pub mod names {
    pub const REQUESTS: &str = "orderpipe_intake_requests";
    pub const REQUEST_DURATION: &str = "orderpipe_intake_request_duration_seconds";
    pub const STATUS_ENTRIES: &str = "orderpipe_intake_status_entries";
    pub const IDEMPOTENCY_ENTRIES: &str = "orderpipe_intake_idempotency_entries";
    pub const KAFKA_UP: &str = "orderpipe_intake_kafka_up";
}

/// `route` and `code` of one answered request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Answered {
    route: &'static str,
    code: u16,
}

impl EncodeLabelSet for Answered {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("route", self.route).encode(encoder.encode_label())?;
        ("code", self.code).encode(encoder.encode_label())
    }
}

type RouteLabel = [(&'static str, &'static str); 1];

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct IntakeMetrics {
    requests: Family<Answered, Counter>,
    duration: Family<RouteLabel, Histogram>,
    status_entries: Gauge,
    idempotency_entries: Gauge,
    kafka_up: Gauge,
}

impl IntakeMetrics {
    /// A registry whose series all carry `pipeline`, with the gateway's metrics in it.
    pub fn registry(pipeline: &str) -> (Registry, Self) {
        let mut registry = Registry::with_labels(
            [(
                Cow::Borrowed(labels::PIPELINE),
                Cow::Owned(pipeline.to_owned()),
            )]
            .into_iter(),
        );
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                // 0.5 ms .. ~4 s: an acknowledged produce takes a few ms, a broker outage seconds.
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
            status_entries: Gauge::default(),
            idempotency_entries: Gauge::default(),
            kafka_up: Gauge::default(),
        };
        registry.register(
            names::REQUESTS,
            "HTTP requests answered, by route and status code",
            metrics.requests.clone(),
        );
        registry.register(
            names::REQUEST_DURATION,
            "Time to answer a request, by route (POST includes the broker's acknowledgement)",
            metrics.duration.clone(),
        );
        registry.register(
            names::STATUS_ENTRIES,
            "Orders held in the status view (bounded by --status-entries)",
            metrics.status_entries.clone(),
        );
        registry.register(
            names::IDEMPOTENCY_ENTRIES,
            "Orders and idempotency keys held in the ledger (bounded by twice --idempotency-entries)",
            metrics.idempotency_entries.clone(),
        );
        registry.register(
            names::KAFKA_UP,
            "1 while the broker answers, 0 while POST is answered 503",
            metrics.kafka_up.clone(),
        );
        (registry, metrics)
    }

    pub fn answered(&self, route: &'static str, code: u16, took: Duration) {
        self.requests.get_or_create(&Answered { route, code }).inc();
        self.duration
            .get_or_create(&[("route", route)])
            .observe(took.as_secs_f64());
    }

    pub fn status_entries(&self, entries: usize) {
        self.status_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn idempotency_entries(&self, entries: usize) {
        self.idempotency_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn kafka_up(&self, up: bool) {
        self.kafka_up.set(i64::from(up));
    }
}
