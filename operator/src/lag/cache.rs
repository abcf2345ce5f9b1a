//! [`LagCache`]: the last lag reading of each stage, shared by every request, refreshed at most
//! once per interval, with the age of what it serves exported.
//!
//! Owns the refresh rule and nothing about Kafka: the measurement comes from a [`LagSource`]. A
//! refresh happens when a request finds the reading older than the interval; concurrent requests
//! for the same stage wait for that one refresh instead of starting their own, so Kafka sees at
//! most one query per stage per interval however many replicas of the HPA controller or kubectl
//! ask. Stages nobody asks about are never queried, and their entries (and the client the source
//! keeps for them) are dropped after a while. The number of entries is capped too: anyone allowed
//! to read external metrics can ask for names that exist nowhere, and each would otherwise hold
//! an entry for the idle period.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::LagError;
use crate::metrics::Metrics;

/// One stage of one pipeline, as the metric's labels and the request's namespace name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StageKey {
    pub namespace: String,
    pub pipeline: String,
    pub stage: String,
}

/// Measures a stage's lag. `client` is the source's per-stage connection, kept between
/// measurements in the stage's cache entry (`None` on the first one) and dropped with it.
pub trait LagSource: Send + Sync + 'static {
    type Client: Send + 'static;

    fn measure<'a>(
        &'a self,
        stage: &'a StageKey,
        client: &'a mut Option<Self::Client>,
    ) -> impl Future<Output = Result<u64, LagError>> + Send + 'a;

    /// Disposes of clients of stages nobody asked about for a while (closing one may block).
    fn close(&self, clients: Vec<Self::Client>);
}

/// How often and how long readings are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// At most one measurement per stage per interval.
    pub interval: Duration,
    /// A reading older than this is not served: the request fails with the last error instead, so
    /// the HPA holds its replicas rather than acting on an old number.
    pub max_age: Duration,
    /// A stage not asked about for this long loses its entry and client.
    pub idle: Duration,
    /// At most this many stages have an entry; a new one evicts the least recently asked.
    pub max_entries: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            max_age: Duration::from_secs(60),
            idle: Duration::from_secs(600),
            // Far above the stages of 1,000 pipelines; a bound on memory, not a working limit.
            max_entries: 10_000,
        }
    }
}

/// One measured lag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LagReading {
    pub records: u64,
    /// When it was measured (the metric's timestamp).
    pub measured_at: SystemTime,
    measured: Instant,
}

struct Slot<C> {
    reading: Option<LagReading>,
    last_attempt: Option<Instant>,
    last_error: Option<Arc<LagError>>,
    client: Option<C>,
}

struct Entry<C> {
    slot: tokio::sync::Mutex<Slot<C>>,
    /// The slot's reading, also readable while a measurement holds the slot.
    last_reading: Mutex<Option<LagReading>>,
    last_asked: Mutex<Instant>,
}

/// The shared lag readings; see the module header.
pub struct LagCache<S: LagSource> {
    source: S,
    settings: CacheSettings,
    metrics: Arc<Metrics>,
    entries: Mutex<HashMap<StageKey, Arc<Entry<S::Client>>>>,
}

impl<S: LagSource> std::fmt::Debug for LagCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: LagSource> LagCache<S> {
    pub fn new(source: S, settings: CacheSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            source,
            settings,
            metrics,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> CacheSettings {
        self.settings
    }

    /// The stage's lag: the cached reading, or a fresh one when the interval has passed.
    pub async fn get(&self, stage: &StageKey) -> Result<LagReading, Arc<LagError>> {
        let entry = self.entry(stage);
        let mut slot = entry.slot.lock().await;
        let due = slot
            .last_attempt
            .is_none_or(|at| at.elapsed() >= self.settings.interval);
        if due {
            slot.last_attempt = Some(Instant::now());
            let result = self.source.measure(stage, &mut slot.client).await;
            self.metrics.lag_query(result.is_ok());
            match result {
                Ok(records) => {
                    let reading = LagReading {
                        records,
                        measured_at: SystemTime::now(),
                        measured: Instant::now(),
                    };
                    slot.reading = Some(reading);
                    *entry
                        .last_reading
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(reading);
                    slot.last_error = None;
                }
                Err(error) => {
                    tracing::warn!(
                        namespace = %stage.namespace,
                        pipeline = %stage.pipeline,
                        stage = %stage.stage,
                        %error,
                        "measuring consumer lag failed"
                    );
                    slot.last_error = Some(Arc::new(error));
                }
            }
        }
        let fresh = slot
            .reading
            .filter(|reading| reading.measured.elapsed() <= self.settings.max_age);
        match (fresh, &slot.last_error) {
            (Some(reading), _) => {
                self.metrics.lag_served(reading.measured.elapsed());
                Ok(reading)
            }
            (None, Some(error)) => Err(Arc::clone(error)),
            // Unreachable in practice (a refresh runs every interval, well within max_age), but an
            // old number is never served.
            (None, None) => Err(Arc::new(LagError::Stale {
                max_age: self.settings.max_age,
            })),
        }
    }

    /// The stage's last reading if it is young enough to serve, without waiting for a measurement
    /// in progress and without starting one.
    pub fn last(&self, stage: &StageKey) -> Option<LagReading> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let reading = *entries
            .get(stage)?
            .last_reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        reading.filter(|r| r.measured.elapsed() <= self.settings.max_age)
    }

    /// The stage's entry, created on first use; entries idle for too long are dropped here.
    fn entry(&self, stage: &StageKey) -> Arc<Entry<S::Client>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = self.settings.idle;
        let last_asked = |entry: &Entry<S::Client>| {
            *entry
                .last_asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        let mut expired: Vec<Arc<Entry<S::Client>>> = entries
            .extract_if(|key, entry| key != stage && now.duration_since(last_asked(entry)) >= idle)
            .map(|(_, entry)| entry)
            .collect();
        if !entries.contains_key(stage) && entries.len() >= self.settings.max_entries.max(1) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, entry)| last_asked(entry))
                .map(|(key, _)| key.clone());
            expired.extend(oldest.and_then(|key| entries.remove(&key)));
        }
        let entry = Arc::clone(entries.entry(stage.clone()).or_insert_with(|| {
            Arc::new(Entry {
                slot: tokio::sync::Mutex::new(Slot {
                    reading: None,
                    last_attempt: None,
                    last_error: None,
                    client: None,
                }),
                last_reading: Mutex::new(None),
                last_asked: Mutex::new(now),
            })
        }));
        drop(entries);
        *entry
            .last_asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now;
        // An expired entry whose refresh is still running keeps its client until that ends.
        let clients: Vec<S::Client> = expired
            .into_iter()
            .filter_map(|entry| Arc::into_inner(entry)?.slot.into_inner().client)
            .collect();
        if !clients.is_empty() {
            self.source.close(clients);
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use prometheus_client::registry::Registry;

    use super::*;

    /// Counts measurements; fails while `failing` is set; its client is the measurement number.
    #[derive(Default)]
    struct Counting {
        calls: AtomicU32,
        failing: std::sync::atomic::AtomicBool,
        closed: Mutex<Vec<u32>>,
    }

    impl LagSource for Arc<Counting> {
        type Client = u32;

        async fn measure(&self, _: &StageKey, client: &mut Option<u32>) -> Result<u64, LagError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            *client = Some(n);
            // Long enough for concurrent requests to pile up behind this one.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.failing.load(Ordering::SeqCst) {
                Err(LagError::TopicMissing {
                    topic: "orders".into(),
                })
            } else {
                Ok(u64::from(n) * 10)
            }
        }

        fn close(&self, clients: Vec<u32>) {
            self.closed.lock().expect("not poisoned").extend(clients);
        }
    }

    fn cache(source: &Arc<Counting>, settings: CacheSettings) -> LagCache<Arc<Counting>> {
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        LagCache::new(Arc::clone(source), settings, metrics)
    }

    fn stage(name: &str) -> StageKey {
        StageKey {
            namespace: "shop".into(),
            pipeline: "checkout".into(),
            stage: name.into(),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn settings(interval: Duration, max_age: Duration, idle: Duration) -> CacheSettings {
        CacheSettings {
            interval,
            max_age,
            idle,
            ..CacheSettings::default()
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_measurement_per_interval() {
        let source = Arc::new(Counting::default());
        let cache = Arc::new(cache(&source, settings(HOUR, HOUR, HOUR)));
        let requests: Vec<_> = (0..8)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.get(&stage("validate")).await })
            })
            .collect();
        for request in requests {
            let reading = request.await.expect("joined").expect("measured");
            assert_eq!(reading.records, 10);
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);

        // Another stage is measured on its own.
        cache.get(&stage("notify")).await.expect("measured");
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_due_refresh_measures_again() {
        let source = Arc::new(Counting::default());
        let cache = cache(&source, settings(Duration::ZERO, HOUR, HOUR));
        cache.get(&stage("validate")).await.expect("measured");
        let second = cache.get(&stage("validate")).await.expect("measured");
        assert_eq!(second.records, 20);
    }

    #[tokio::test]
    async fn a_failed_refresh_serves_the_last_reading_until_it_is_too_old() {
        let source = Arc::new(Counting::default());
        let max_age = Duration::from_millis(200);
        let cache = cache(&source, settings(Duration::ZERO, max_age, HOUR));
        cache.get(&stage("validate")).await.expect("measured");
        source.failing.store(true, Ordering::SeqCst);
        let served = cache.get(&stage("validate")).await.expect("last reading");
        assert_eq!(served.records, 10, "the reading before the failure");

        tokio::time::sleep(max_age).await;
        let error = cache
            .get(&stage("validate"))
            .await
            .expect_err("too old to serve");
        assert!(
            error.to_string().contains("orders"),
            "the last error: {error}"
        );
    }

    #[tokio::test]
    async fn stages_nobody_asks_about_lose_their_client() {
        let source = Arc::new(Counting::default());
        let cache = cache(&source, settings(HOUR, HOUR, Duration::ZERO));
        cache.get(&stage("validate")).await.expect("measured");
        cache.get(&stage("notify")).await.expect("measured");
        assert_eq!(*source.closed.lock().expect("not poisoned"), vec![1]);
    }

    #[tokio::test]
    async fn the_least_recently_asked_stage_makes_room_when_the_cache_is_full() {
        let source = Arc::new(Counting::default());
        let cache = cache(
            &source,
            CacheSettings {
                max_entries: 2,
                ..settings(HOUR, HOUR, HOUR)
            },
        );
        for name in ["validate", "status", "validate", "notify"] {
            cache.get(&stage(name)).await.expect("measured");
        }
        assert_eq!(
            *source.closed.lock().expect("not poisoned"),
            vec![2],
            "status (measurement 2) was asked least recently"
        );
        assert_eq!(cache.entries.lock().expect("not poisoned").len(), 2);
    }

    #[tokio::test]
    async fn the_last_reading_is_served_without_waiting_for_a_measurement_in_progress() {
        let source = Arc::new(Counting::default());
        let cache = Arc::new(cache(&source, settings(Duration::ZERO, HOUR, HOUR)));
        assert_eq!(cache.last(&stage("validate")), None, "never measured");
        cache.get(&stage("validate")).await.expect("measured");
        let measuring = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.get(&stage("validate")).await })
        };
        // The second measurement holds the slot for 20 ms; the last reading is there meanwhile.
        assert_eq!(cache.last(&stage("validate")).map(|r| r.records), Some(10));
        let second = measuring.await.expect("joined").expect("measured");
        assert_eq!(cache.last(&stage("validate")), Some(second));
    }
}
