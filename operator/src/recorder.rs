//! Publishes the operator's Events (events.k8s.io/v1) and folds a repeat of the same Event on the
//! same object within [`SERIES_TTL`] into one series, as kube's `Recorder` does, keeping per Event
//! only what a repeat needs: the Event's name, its count and when it was last seen.
//!
//! Why not kube's `Recorder`: its cache keeps the whole Event and its key for every Event of the
//! last six minutes, in a map that never shrinks. Each reconcile publishes an Event per reason of
//! its changes (the action names the objects changed), so 1,000 new pipelines publish thousands;
//! the heap profile of issue #17 showed that map's table alone at 5.9 MB for 300 new pipelines,
//! still held after the burst (when every change was an Event of its own).
//!
//! I/O only in [`Recorder::publish`]; what a publish becomes (a new Event or a repeat) is decided
//! by the pure [`SeriesMemory`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use serde_json::json;

/// How long a repeat of an Event counts up its series instead of making a new Event (kube's).
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// What makes two Events the same: the object, the type, the reason and the action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    regarding: String,
    warning: bool,
    reason: String,
    action: String,
}

/// A published Event a repeat would count up.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Series {
    name: String,
    count: i32,
    last_seen: Instant,
}

/// What to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Publish {
    /// A new Event.
    New,
    /// The `count`-th occurrence of the Event called `name`.
    Repeat { name: String, count: i32 },
}

/// The Events of the last [`SERIES_TTL`], by [`SeriesKey`].
#[derive(Debug, Default)]
struct SeriesMemory {
    series: HashMap<SeriesKey, Series>,
}

impl SeriesMemory {
    /// Forgets the series not seen for [`SERIES_TTL`] at `now` (giving their memory back once most
    /// are gone), then says whether `key` starts an Event or repeats one.
    fn next(&mut self, key: &SeriesKey, now: Instant) -> Publish {
        self.series
            .retain(|_, s| now.saturating_duration_since(s.last_seen) < SERIES_TTL);
        if self.series.len() < self.series.capacity() / 4 {
            self.series.shrink_to_fit();
        }
        match self.series.get(key) {
            Some(series) => Publish::Repeat {
                name: series.name.clone(),
                count: series.count + 1,
            },
            None => Publish::New,
        }
    }

    /// Remembers that the Event `name` was published for `key` the `count`-th time at `now`.
    fn published(&mut self, key: SeriesKey, name: String, count: i32, now: Instant) {
        let series = Series {
            name,
            count,
            last_seen: now,
        };
        self.series.insert(key, series);
    }
}

/// Publishes Events as one reporter (controller and instance).
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    memory: Mutex<SeriesMemory>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            memory: Mutex::default(),
        }
    }

    /// Publishes `event` about `regarding` (in its namespace): a new Event, or, for a repeat within
    /// [`SERIES_TTL`], one more count of the first.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = SeriesKey {
            regarding: regarding
                .uid
                .clone()
                .or_else(|| regarding.name.clone())
                .unwrap_or_default(),
            warning: matches!(event.type_, EventType::Warning),
            reason: event.reason.clone(),
            action: event.action.clone(),
        };
        let now = Instant::now();
        let next = self.lock().next(&key, now);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let time = Timestamp::now();
        let (name, count) = match next {
            Publish::Repeat { name, count } => {
                let series = json!({
                    "series": { "count": count, "lastObservedTime": MicroTime(time) }
                });
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                    .await?;
                (name, count)
            }
            Publish::New => {
                let created = events
                    .create(
                        &PostParams::default(),
                        &self.new_event(event, regarding, time),
                    )
                    .await?;
                (created.metadata.name.unwrap_or_default(), 1)
            }
        };
        self.lock().published(key, name, count, now);
        Ok(())
    }

    fn new_event(&self, event: &Event, regarding: &ObjectReference, time: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        let object = regarding.name.as_ref().unwrap_or(controller);
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(time)),
            regarding: Some(regarding.clone()),
            note: event.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{object}.{:x}", time.as_nanosecond())),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            related: event.secondary.clone(),
            ..K8sEvent::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeriesMemory> {
        // A poisoned lock only means another thread panicked mid-update of a plain map.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(action: &str) -> SeriesKey {
        SeriesKey {
            regarding: "uid-1".into(),
            warning: false,
            reason: "TopicConfigRestored".into(),
            action: action.into(),
        }
    }

    #[test]
    fn a_repeat_within_the_series_time_counts_up_the_first_event() {
        let t0 = Instant::now();
        let mut memory = SeriesMemory::default();
        let drift = key("restored retention.ms of topic orders");
        assert_eq!(memory.next(&drift, t0), Publish::New);
        memory.published(drift.clone(), "shop.1".into(), 1, t0);

        let soon = t0 + Duration::from_secs(60);
        let repeat = Publish::Repeat {
            name: "shop.1".into(),
            count: 2,
        };
        assert_eq!(memory.next(&drift, soon), repeat);
        memory.published(drift.clone(), "shop.1".into(), 2, soon);
        let other = key("restored retention.ms of topic payments");
        assert_eq!(memory.next(&other, soon), Publish::New, "another object");

        // Counted from the last occurrence.
        let later = soon + SERIES_TTL - Duration::from_secs(1);
        assert!(matches!(
            memory.next(&drift, later),
            Publish::Repeat { count: 3, .. }
        ));
        assert_eq!(memory.next(&drift, soon + SERIES_TTL), Publish::New);
    }

    #[test]
    fn series_past_their_time_are_forgotten_and_their_memory_given_back() {
        let t0 = Instant::now();
        let mut memory = SeriesMemory::default();
        for i in 0..1000 {
            memory.published(key(&format!("created topic t{i}")), format!("e{i}"), 1, t0);
        }
        let grown = memory.series.capacity();
        assert_eq!(
            memory.next(&key("created topic t0"), t0 + SERIES_TTL),
            Publish::New
        );
        assert!(memory.series.is_empty());
        assert!(memory.series.capacity() < grown / 4, "the table shrank");
    }
}
