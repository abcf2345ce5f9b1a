//! The operator's Prometheus metrics, registered once. Labels are bounded: results, error
//! categories, kinds and verbs — never a pipeline name, which would grow without bound.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tower::util::MapRequestLayer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub condition: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminLabels {
    pub operation: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
}

/// An HTTP status code: a bounded set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
    pub verb: String,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    errors: Family<CategoryLabels, Counter>,
    pipelines: Family<ConditionLabels, Gauge>,
    admin_operations: Family<AdminLabels, Counter>,
    api_writes: Family<WriteLabels, Counter>,
    api_requests: Family<RequestLabels, Counter>,
    leader: Gauge,
    lag_queries: Family<ResultLabels, Counter>,
    lag_age: Histogram,
    metrics_api_requests: Family<CodeLabels, Counter>,
    /// Ready status per pipeline, to recompute the `pipelines` gauge without a label per pipeline.
    readiness: Mutex<BTreeMap<String, String>>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `orderpipe_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            errors: Family::default(),
            pipelines: Family::default(),
            admin_operations: Family::default(),
            api_writes: Family::default(),
            api_requests: Family::default(),
            leader: Gauge::default(),
            lag_queries: Family::default(),
            // From fresh (a refresh in this request) to the oldest reading the cache serves.
            lag_age: Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0]),
            metrics_api_requests: Family::default(),
            readiness: Mutex::new(BTreeMap::new()),
        };
        // Every category exists from the start, at 0: a series that appears with its first error
        // hides that error from rate(), and the error alert and panel read rate().
        for category in crate::error::Error::CATEGORIES {
            let _ = metrics.errors.get_or_create(&CategoryLabels {
                category: category.into(),
            });
        }
        let r = registry.sub_registry_with_prefix("orderpipe_operator");
        r.register(
            "reconciles",
            "Reconciles by result",
            metrics.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            metrics.reconcile_duration.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            metrics.errors.clone(),
        );
        r.register(
            "pipelines",
            "OrderPipelines by Ready condition status",
            metrics.pipelines.clone(),
        );
        r.register(
            "kafka_admin_operations",
            "Kafka admin operations by operation and result",
            metrics.admin_operations.clone(),
        );
        r.register(
            "api_writes",
            "Kubernetes API writes by kind and verb (a no-op resync makes none)",
            metrics.api_writes.clone(),
        );
        r.register(
            "api_requests",
            "Requests the Kubernetes client sent, by verb (watch, read, or the HTTP method of a write)",
            metrics.api_requests.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        r.register(
            "lag_queries",
            "Consumer lag measurements in Kafka (one per stage per interval at most), by result",
            metrics.lag_queries.clone(),
        );
        r.register(
            "lag_age_seconds",
            "Age of the consumer lag readings the external metrics API served",
            metrics.lag_age.clone(),
        );
        r.register(
            "external_metrics_requests",
            "Requests to the external metrics API, by HTTP status code",
            metrics.metrics_api_requests.clone(),
        );
        // Zero series from the start, so dashboards and alerts see 0 rather than "no data".
        metrics.refresh_pipelines(&BTreeMap::new());
        metrics
    }

    /// Starts timing a reconcile; the time is recorded when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }

    pub fn reconciled(&self) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: "success".into(),
            })
            .inc();
    }

    pub fn failed(&self, category: &str) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: "error".into(),
            })
            .inc();
        self.errors
            .get_or_create(&CategoryLabels {
                category: category.into(),
            })
            .inc();
    }

    pub fn admin_operation(&self, operation: &str, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.admin_operations
            .get_or_create(&AdminLabels {
                operation: operation.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn api_write(&self, kind: &str, verb: &str) {
        self.api_writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                verb: verb.into(),
            })
            .inc();
    }

    /// A client layer counting every request the operator's Kubernetes client sends, whoever makes
    /// it (reconciles, watches, the lease, events), so an idle resync can be shown to write nothing.
    pub fn api_request_counter<B>(
        &self,
    ) -> MapRequestLayer<impl Fn(http::Request<B>) -> http::Request<B> + Clone + use<B>> {
        let family = self.api_requests.clone();
        MapRequestLayer::new(move |request: http::Request<B>| {
            let verb = request_verb(request.method(), request.uri().query());
            family
                .get_or_create(&RequestLabels { verb: verb.into() })
                .inc();
            request
        })
    }

    /// One lag measurement in Kafka.
    pub fn lag_query(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.lag_queries
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// A lag reading was served; `age` is how old it was.
    pub fn lag_served(&self, age: std::time::Duration) {
        self.lag_age.observe(age.as_secs_f64());
    }

    /// One answer of the external metrics API.
    pub fn metrics_api_request(&self, code: http::StatusCode) {
        self.metrics_api_requests
            .get_or_create(&CodeLabels {
                code: code.as_u16().to_string(),
            })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Records a pipeline's Ready status (`None` when it was deleted) and refreshes the gauge.
    pub fn set_pipeline_ready(&self, key: &str, status: Option<&str>) {
        let Ok(mut readiness) = self.readiness.lock() else {
            return;
        };
        match status {
            Some(s) => readiness.insert(key.to_string(), s.to_string()),
            None => readiness.remove(key),
        };
        self.refresh_pipelines(&readiness);
    }

    /// Forgets every pipeline `is_live` rejects and refreshes the gauge. A pipeline deleted without
    /// a finalizer is never reconciled again, so only the watch can say it is gone.
    pub fn retain_pipelines(&self, is_live: impl Fn(&str) -> bool) {
        let Ok(mut readiness) = self.readiness.lock() else {
            return;
        };
        readiness.retain(|key, _| is_live(key));
        self.refresh_pipelines(&readiness);
    }

    fn refresh_pipelines(&self, readiness: &BTreeMap<String, String>) {
        for status in ["True", "False", "Unknown"] {
            let count = readiness.values().filter(|s| *s == status).count();
            self.pipelines
                .get_or_create(&ConditionLabels {
                    condition: "Ready".into(),
                    status: status.into(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// The verb label of one API request: `watch` and `read` for GETs, else the write's HTTP method.
pub fn request_verb(method: &http::Method, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET | http::Method::HEAD => "read",
        http::Method::POST => "post",
        http::Method::PUT => "put",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// Observes the reconcile duration when dropped, also on early return.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn exported_names_carry_the_orderpipe_operator_prefix() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.reconciled();
        metrics.failed("kafka");
        metrics.api_write("Deployment", "apply");
        metrics.set_pipeline_ready("shop/checkout", Some("True"));
        drop(metrics.reconcile_timer());
        metrics.lag_query(true);
        metrics.lag_served(std::time::Duration::from_secs(3));
        metrics.metrics_api_request(http::StatusCode::FORBIDDEN);
        let counter = metrics.api_request_counter::<()>();
        let mut count = tower::Layer::layer(
            &counter,
            tower::service_fn(|_| async { Ok::<_, std::convert::Infallible>(()) }),
        );
        let request = http::Request::patch("/apis/x").body(()).expect("request");
        futures::executor::block_on(tower::ServiceExt::oneshot(&mut count, request))
            .expect("counted");
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        for name in [
            "orderpipe_operator_reconciles_total{result=\"success\"} 1",
            "orderpipe_operator_reconcile_errors_total{category=\"kafka\"} 1",
            "orderpipe_operator_api_writes_total{kind=\"Deployment\",verb=\"apply\"} 1",
            "orderpipe_operator_pipelines{condition=\"Ready\",status=\"True\"} 1",
            "orderpipe_operator_reconcile_duration_seconds_count 1",
            "orderpipe_operator_api_requests_total{verb=\"patch\"} 1",
            "orderpipe_operator_lag_queries_total{result=\"success\"} 1",
            "orderpipe_operator_lag_age_seconds_bucket{le=\"5.0\"} 1",
            "orderpipe_operator_external_metrics_requests_total{code=\"403\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).expect("encodes");
        text
    }

    #[test]
    fn the_pipelines_gauge_forgets_pipelines_that_are_gone() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.set_pipeline_ready("shop/checkout", Some("True"));
        metrics.set_pipeline_ready("shop/returns", Some("False"));
        metrics.set_pipeline_ready("eu/checkout", Some("True"));

        metrics.retain_pipelines(|key| key == "shop/checkout");
        let text = encoded(&registry);
        for series in [
            "orderpipe_operator_pipelines{condition=\"Ready\",status=\"True\"} 1",
            "orderpipe_operator_pipelines{condition=\"Ready\",status=\"False\"} 0",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }

        // Finalized: the reconcile removes it itself.
        metrics.set_pipeline_ready("shop/checkout", None);
        let text = encoded(&registry);
        let series = "orderpipe_operator_pipelines{condition=\"Ready\",status=\"True\"} 0";
        assert!(text.contains(series), "missing {series} in\n{text}");
    }

    #[test]
    fn a_get_with_watch_is_a_watch_and_writes_are_named_by_method() {
        let verb = |method: http::Method, query: Option<&str>| request_verb(&method, query);
        assert_eq!(
            verb(http::Method::GET, Some("labelSelector=a&watch=true")),
            "watch"
        );
        assert_eq!(verb(http::Method::GET, Some("watch=1")), "watch");
        assert_eq!(verb(http::Method::GET, Some("resourceVersion=0")), "read");
        assert_eq!(verb(http::Method::GET, Some("nowatch=true")), "read");
        assert_eq!(verb(http::Method::GET, None), "read");
        assert_eq!(verb(http::Method::PATCH, None), "patch");
        assert_eq!(verb(http::Method::PUT, None), "put");
        assert_eq!(verb(http::Method::POST, None), "post");
        assert_eq!(verb(http::Method::DELETE, None), "delete");
    }
}
