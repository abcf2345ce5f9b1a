//! An in-memory broker for the runtime's tests: input partitions, a group's committed offsets, a
//! transactional sink whose commits can be made to fail on cue, and a changelog reader over what
//! committed. Behaves like Kafka where the runtime depends on it (offsets, pause/resume, seek,
//! revocation through the coordinator, only committed records visible). Test-only; must not be
//! used by the binary.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::driver::lock;
use super::growth::Markers;
use super::{
    ApplyChangelog, BrokerError, ChangelogReader, CommittedOffsets, Coordinator, Offsets, Position,
    Refusal, Sink, SinkError, SinkErrorKind, Source,
};
use crate::error::RestoreFailure;
use crate::record::{OutRecord, SourceRecord};
use crate::stage::StageHandler;

/// A record that reached an output topic in a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// A null value: the key's changelog state deleted.
    pub tombstone: bool,
    pub headers: Vec<(String, String)>,
    /// The timestamp it was given (`None`: the broker's time of writing).
    pub timestamp: Option<DateTime<Utc>>,
    /// The input record it was produced for.
    pub from: Position,
}

impl Produced {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The broker's state; tests read it through [`Broker::state`].
#[derive(Debug, Default)]
pub struct BrokerState {
    pub input: BTreeMap<i32, Vec<SourceRecord>>,
    pub committed: Offsets,
    /// The re-shard markers in the committed offsets' metadata.
    pub markers: Markers,
    /// Records of committed transactions, in commit order.
    pub outputs: Vec<Produced>,
    /// Commit attempts so far.
    pub commit_attempts: u64,
    /// Commit attempts (1-based) that fail as abortable.
    pub failing_commits: BTreeSet<u64>,
    /// Commit attempts (1-based) that leave the producer unusable (fatal).
    pub fatal_commits: BTreeSet<u64>,
    /// How many of the next producer re-creations fail (the broker is unreachable).
    pub failing_recreates: u64,
    pub recreates: u64,
    pub aborts: u64,
    /// Topics' `max.message.bytes`: a larger record (key + payload) fails its transaction.
    pub max_record_bytes: BTreeMap<String, usize>,
    pub pauses: u64,
    pub resumes: u64,
}

impl BrokerState {
    /// Whether the group committed every input record.
    pub fn all_committed(&self) -> bool {
        self.input.iter().all(|(partition, records)| {
            self.committed.get(partition).copied().unwrap_or(0) == records.len() as i64
        })
    }

    pub fn outputs_to<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Produced> + 'a {
        self.outputs
            .iter()
            .filter(move |record| record.topic == topic)
    }
}

/// One in-memory cluster with one input topic.
#[derive(Debug, Default)]
pub struct Broker {
    state: Mutex<BrokerState>,
}

impl Broker {
    /// An input topic of `partitions` partitions holding `records` (keyed records by key hash,
    /// keyless ones in partition 0), timestamps one millisecond apart.
    pub fn with_input(
        partitions: i32,
        records: impl IntoIterator<Item = (Option<Vec<u8>>, Vec<u8>)>,
    ) -> Arc<Self> {
        let start = DateTime::<Utc>::from_timestamp(1_750_000_000, 0).unwrap_or_default();
        Self::with_timed_input(
            partitions,
            records
                .into_iter()
                .enumerate()
                .map(|(index, (key, payload))| {
                    (key, payload, start + TimeDelta::milliseconds(index as i64))
                }),
        )
    }

    /// Like [`Broker::with_input`], with each record's timestamp given.
    pub fn with_timed_input(
        partitions: i32,
        records: impl IntoIterator<Item = (Option<Vec<u8>>, Vec<u8>, DateTime<Utc>)>,
    ) -> Arc<Self> {
        let mut input: BTreeMap<i32, Vec<SourceRecord>> =
            (0..partitions).map(|p| (p, Vec::new())).collect();
        for (key, payload, timestamp) in records {
            let partition = key.as_ref().map_or(0, |key| {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                i32::try_from(hasher.finish() % partitions.unsigned_abs() as u64).unwrap_or(0)
            });
            let log = input.entry(partition).or_default();
            log.push(SourceRecord {
                partition,
                offset: log.len() as i64,
                key,
                payload: Some(payload),
                timestamp,
                headers: Vec::new(),
            });
        }
        Arc::new(Self {
            state: Mutex::new(BrokerState {
                input,
                ..BrokerState::default()
            }),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, BrokerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Grows the input to `partitions` (partition growth); the group member assigns the new
    /// partitions at its next poll, as a consumer does after its metadata refresh.
    pub fn grow(&self, partitions: i32) {
        let mut state = self.state();
        for partition in 0..partitions {
            state.input.entry(partition).or_default();
        }
    }

    /// Appends a record where a producer that knows `partitions` partitions puts it (murmur2, like
    /// Kafka's clients); returns its partition.
    pub fn produce(&self, partitions: i32, key: &[u8], payload: &[u8]) -> i32 {
        let count =
            orderpipe_growth::Partitions::new(partitions).expect("a positive partition count");
        let partition = orderpipe_growth::partition_for(key, count);
        let mut state = self.state();
        let log = state.input.entry(partition).or_default();
        log.push(SourceRecord {
            partition,
            offset: log.len() as i64,
            key: Some(key.to_vec()),
            payload: Some(payload.to_vec()),
            timestamp: DateTime::<Utc>::from_timestamp(1_750_000_000, 0).unwrap_or_default(),
            headers: vec![crate::record::RawHeader {
                name: "traceparent".to_owned(),
                value: Some(b"00-trace".to_vec()),
            }],
        });
        partition
    }

    /// Makes commit attempts `attempts` (1-based) fail as abortable.
    pub fn fail_commits(&self, attempts: impl IntoIterator<Item = u64>) {
        self.state().failing_commits.extend(attempts);
    }

    /// Waits until `condition` holds, failing the test after `timeout`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&BrokerState) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !condition(&self.state()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A transactional producer into the broker.
#[derive(Debug)]
pub struct MemorySink {
    broker: Arc<Broker>,
    open: Vec<Produced>,
    /// Records of the open transaction over their topic's limit, by the input that made them.
    refused: Vec<Refusal>,
}

impl MemorySink {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            open: Vec::new(),
            refused: Vec::new(),
        }
    }
}

impl Sink for MemorySink {
    /// An in-memory commit needs nothing from the group.
    type Group = ();

    fn begin(&mut self) -> Result<(), SinkError> {
        self.open.clear();
        Ok(())
    }

    fn send(&mut self, from: Position, record: OutRecord<'_>) -> Result<(), SinkError> {
        let payload = record.payload.unwrap_or_default();
        let size = record.key.map_or(0, <[u8]>::len) + payload.len();
        let limit = self
            .broker
            .state()
            .max_record_bytes
            .get(record.topic)
            .copied();
        if limit.is_some_and(|limit| size > limit) {
            // Like the broker: the send is accepted, its delivery fails, and so does the commit. The
            // broker refuses a whole batch: every record of the transaction to the same topic is
            // reported with it (the innocent ones too, as a real broker may).
            let error = format!(
                "Broker: Message size too large ({size} bytes to {})",
                record.topic
            );
            let batch = self
                .open
                .iter()
                .filter(|sent| sent.topic == record.topic)
                .map(|sent| sent.from);
            let blamed: Vec<Position> = batch.chain([from]).collect();
            self.refused.extend(blamed.into_iter().map(|from| Refusal {
                from,
                error: error.clone(),
            }));
            return Ok(());
        }
        self.open.push(Produced {
            topic: record.topic.to_owned(),
            partition: record.partition,
            key: record.key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            tombstone: record.payload.is_none(),
            timestamp: record.timestamp,
            from,
            headers: record
                .headers
                .iter()
                .map(|header| (header.name.to_owned(), header.value.clone()))
                .chain(record.passthrough.iter().map(|header| {
                    let value = header.value.as_deref().unwrap_or_default();
                    (
                        header.name.clone(),
                        String::from_utf8_lossy(value).into_owned(),
                    )
                }))
                .collect(),
        });
        Ok(())
    }

    fn commit(
        &mut self,
        _input_topic: &str,
        offsets: &Offsets,
        markers: &Markers,
        (): &(),
    ) -> Result<(), SinkError> {
        let mut state = self.broker.state();
        state.commit_attempts += 1;
        let attempt = state.commit_attempts;
        if !self.refused.is_empty() {
            return Err(SinkError {
                kind: SinkErrorKind::Abortable,
                operation: "committing the transaction",
                cause: BrokerError::new("a record of the transaction was refused"),
            });
        }
        for (failing, kind) in [
            (&state.failing_commits, SinkErrorKind::Abortable),
            (&state.fatal_commits, SinkErrorKind::Fatal),
        ] {
            if failing.contains(&attempt) {
                return Err(SinkError {
                    kind,
                    operation: "committing the transaction",
                    cause: BrokerError::new(format!("commit attempt {attempt} fails on cue")),
                });
            }
        }
        state.outputs.append(&mut self.open);
        state.committed.extend(offsets);
        // Like Kafka: a commit without metadata for a partition clears what it had.
        for partition in offsets.keys() {
            match markers.get(partition) {
                Some(marker) => state.markers.insert(*partition, *marker),
                None => state.markers.remove(partition),
            };
        }
        Ok(())
    }

    fn abort(&mut self) -> Result<(), SinkError> {
        self.open.clear();
        self.broker.state().aborts += 1;
        Ok(())
    }

    fn recreate(&mut self) -> Result<(), SinkError> {
        self.open.clear();
        let mut state = self.broker.state();
        if state.failing_recreates > 0 {
            state.failing_recreates -= 1;
            return Err(SinkError {
                kind: SinkErrorKind::Fatal,
                operation: "initialising transactions",
                cause: BrokerError::new("the broker is unreachable, on cue"),
            });
        }
        state.recreates += 1;
        Ok(())
    }

    fn take_refusals(&mut self) -> Vec<Refusal> {
        std::mem::take(&mut self.refused)
    }
}

/// A scripted rebalance: after `after_records` polled records (and, with `while_paused`, once
/// one of the partitions is paused), revoke `partitions`; after `reassign_after` records, assign
/// them again (as another member taking them over would).
#[derive(Debug, Clone)]
pub struct Rebalance {
    pub after_records: u64,
    pub partitions: Vec<i32>,
    pub reassign_after: u64,
    pub while_paused: bool,
}

/// The group member over the broker's input.
pub struct MemorySource<H: StageHandler, K: Sink> {
    broker: Arc<Broker>,
    coordinator: Arc<Mutex<Coordinator<H, K>>>,
    assigned: BTreeSet<i32>,
    positions: BTreeMap<i32, i64>,
    paused: BTreeSet<i32>,
    polled: u64,
    rebalance: Option<Rebalance>,
    revoked: bool,
    next: usize,
    /// Partitions this member has seen in the topic; new ones (growth) are assigned to it.
    known: BTreeSet<i32>,
}

impl<H: StageHandler, K: Sink<Group = ()>> MemorySource<H, K> {
    pub fn new(
        broker: Arc<Broker>,
        coordinator: Arc<Mutex<Coordinator<H, K>>>,
        rebalance: Option<Rebalance>,
    ) -> Self {
        Self {
            broker,
            coordinator,
            assigned: BTreeSet::new(),
            positions: BTreeMap::new(),
            paused: BTreeSet::new(),
            polled: 0,
            rebalance,
            revoked: false,
            next: 0,
            known: BTreeSet::new(),
        }
    }

    fn assign(&mut self, partitions: &[i32]) {
        let (committed, markers): (CommittedOffsets, Markers) = {
            let state = self.broker.state();
            (
                partitions
                    .iter()
                    .map(|p| (*p, state.committed.get(p).copied()))
                    .collect(),
                partitions
                    .iter()
                    .filter_map(|p| Some((*p, *state.markers.get(p)?)))
                    .collect(),
            )
        };
        for (&partition, &offset) in &committed {
            // Like a Kafka consumer, a pause outlives revocation and re-assignment.
            self.assigned.insert(partition);
            self.positions.insert(partition, offset.unwrap_or(0));
        }
        lock(&self.coordinator).assign(&committed, &markers);
    }

    /// Runs the scripted rebalance when its time has come, as a Kafka consumer runs callbacks in poll.
    fn rebalance(&mut self) {
        let Some(script) = self.rebalance.clone() else {
            return;
        };
        let paused = script.partitions.iter().any(|p| self.paused.contains(p));
        if !self.revoked && self.polled >= script.after_records && (paused || !script.while_paused)
        {
            self.revoked = true;
            lock(&self.coordinator).revoke(&script.partitions, false, &());
            for partition in &script.partitions {
                self.assigned.remove(partition);
            }
        } else if self.revoked && self.polled >= script.reassign_after {
            self.rebalance = None;
            self.assign(&script.partitions);
        }
    }
}

impl<H: StageHandler, K: Sink<Group = ()>> Source for MemorySource<H, K> {
    type Group = ();

    fn poll(&mut self, timeout: Duration) -> Option<Result<SourceRecord, BrokerError>> {
        let added: Vec<i32> = self
            .broker
            .state()
            .input
            .keys()
            .copied()
            .filter(|p| !self.known.contains(p))
            .collect();
        if !added.is_empty() {
            self.known.extend(&added);
            self.assign(&added);
        }
        self.rebalance();
        let partitions: Vec<i32> = self.assigned.iter().copied().collect();
        let state = self.broker.state();
        for step in 0..partitions.len() {
            let partition = partitions[(self.next + step) % partitions.len()];
            if self.paused.contains(&partition) {
                continue;
            }
            let position = self.positions.get(&partition).copied().unwrap_or(0);
            let record = state
                .input
                .get(&partition)
                .and_then(|log| log.get(usize::try_from(position).ok()?));
            if let Some(record) = record {
                self.next = self.next.wrapping_add(step + 1);
                self.positions.insert(partition, position + 1);
                self.polled += 1;
                return Some(Ok(record.clone()));
            }
        }
        drop(state);
        // Nothing to fetch: block like a real poll would, briefly.
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
        None
    }

    fn pause(&mut self, partition: i32) -> Result<(), BrokerError> {
        self.paused.insert(partition);
        self.broker.state().pauses += 1;
        Ok(())
    }

    fn resume(&mut self, partition: i32) -> Result<(), BrokerError> {
        self.paused.remove(&partition);
        self.broker.state().resumes += 1;
        Ok(())
    }

    fn committed(&mut self, partitions: &[i32]) -> Result<CommittedOffsets, BrokerError> {
        let state = self.broker.state();
        Ok(partitions
            .iter()
            .map(|p| (*p, state.committed.get(p).copied()))
            .collect())
    }

    fn seek(&mut self, partition: i32, offset: Option<i64>) -> Result<(), BrokerError> {
        self.positions.insert(partition, offset.unwrap_or(0));
        Ok(())
    }

    fn positions(&mut self, partitions: &[i32]) -> BTreeMap<i32, i64> {
        partitions
            .iter()
            .filter_map(|p| Some((*p, *self.positions.get(p)?)))
            .collect()
    }

    fn group(&self) -> &() {
        &()
    }

    fn close(&mut self, _deadline: Instant) {
        let assigned: Vec<i32> = std::mem::take(&mut self.assigned).into_iter().collect();
        lock(&self.coordinator).revoke(&assigned, false, &());
    }
}

/// The stage's state topic as committed to the broker.
#[derive(Debug)]
pub struct MemoryChangelog {
    pub broker: Arc<Broker>,
    pub topic: String,
}

impl ChangelogReader for MemoryChangelog {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn read(
        &self,
        partition: i32,
        _stop: &CancellationToken,
        apply: &mut ApplyChangelog<'_>,
    ) -> Result<u64, RestoreFailure> {
        let records: Vec<Produced> = self
            .broker
            .state()
            .outputs_to(&self.topic)
            .filter(|record| record.partition == Some(partition))
            .cloned()
            .collect();
        for (offset, record) in records.iter().enumerate() {
            if let Some(key) = &record.key {
                let value = (!record.tombstone).then_some(record.payload.as_slice());
                apply(offset as i64, key, value)?;
            }
        }
        Ok(records.len() as u64)
    }
}
