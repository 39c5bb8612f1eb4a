//! The embedded engine: Wharf's semantics on `wharf-log`, one log per partition.
//!
//! On disk, under the data directory:
//! ```text
//! topics/{topic}/topic.json            settings; written last on create, removed first on
//!                                      delete, so the topic exists iff this file does
//! topics/{topic}/p{N}/                 partition N's log
//! topics/{topic}/subs/{sub}/sub.json   subscription settings (same commit-point rule)
//! topics/{topic}/subs/{sub}/state/     the subscription's state log (always-fsync wharf-log)
//! ```

mod dedup;
mod meta;
mod shared;
mod stream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use wharf_log::vfs::{StdFs, Vfs};
use wharf_log::{Clock, Log, LogConfig, NewRecord, Retention, SharedHeaders, SystemClock};

use crate::engine::Engine;
use crate::error::{BrokerError, Result};
use crate::murmur2::partition_for_key;
use crate::names;
use crate::types::{
    AckOutcome, Capabilities, Committed, Delivery, FetchRequest, Health, Membership, Message,
    PartitionInfo, Position, PublishOptions, Published, ReadRequest, ReadResult, ReceiveRequest,
    ResetTo, StorageStats, StoredMessage, SubscriptionConfig, SubscriptionInfo, Support,
    TopicConfig, TopicInfo,
};
use dedup::{Check, Dedup};
use shared::SharedSub;
use stream::StreamGroup;

const TOPIC_FILE: &str = "topic.json";
const SUB_FILE: &str = "sub.json";
/// Longest long-poll wait honoured (longer waits are cut to this).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Most bytes one read or fetch returns (larger limits are cut to this).
pub(crate) const MAX_READ_BYTES: usize = 16 * 1024 * 1024;
/// Most messages one read or fetch returns.
pub(crate) const MAX_READ_MESSAGES: usize = 100_000;

/// Where and how the embedded engine keeps its data.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The file layer (the real file system, or a fault-injecting one in tests).
    pub vfs: Arc<dyn Vfs>,
    /// Time, for timestamps, retention, dedup windows, sessions and leases.
    pub clock: Arc<dyn Clock>,
}

impl EmbeddedConfig {
    /// Real files under `data_dir`, system clock.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            vfs: StdFs::shared(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The embedded engine. Cheap to clone; clones share the engine.
#[derive(Clone)]
pub struct EmbeddedEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedEngine")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: EmbeddedConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation and deletion (they do file I/O).
    admin: Mutex<()>,
}

pub(crate) struct Topic {
    name: String,
    config: TopicConfig,
    dir: PathBuf,
    partitions: Vec<Arc<Log>>,
    next_partition: AtomicU32,
    dedup: Mutex<Dedup>,
    subscriptions: Mutex<BTreeMap<String, Arc<Subscription>>>,
}

pub(crate) enum Subscription {
    Stream(StreamGroup),
    Shared(SharedSub),
}

impl Subscription {
    fn own_logs(&self) -> Vec<&Log> {
        match self {
            Subscription::Stream(g) => g.own_logs(),
            Subscription::Shared(s) => s.own_logs(),
        }
    }

    fn close(&self) -> wharf_log::Result<()> {
        match self {
            Subscription::Stream(g) => g.close(),
            Subscription::Shared(s) => s.close(),
        }
    }

    fn info(&self, topic: &str, now: i64) -> SubscriptionInfo {
        match self {
            Subscription::Stream(g) => g.info(topic, now),
            Subscription::Shared(s) => s.info(now),
        }
    }

    fn config(&self) -> SubscriptionConfig {
        match self {
            Subscription::Stream(g) => SubscriptionConfig::Stream(g.config().clone()),
            Subscription::Shared(s) => SubscriptionConfig::Shared(s.config().clone()),
        }
    }

    fn stream(&self, name: &str) -> Result<&StreamGroup> {
        match self {
            Subscription::Stream(g) => Ok(g),
            Subscription::Shared(_) => Err(BrokerError::invalid(
                "kind",
                format!(
                    "{name:?} is a shared subscription: use receive/ack, not join/fetch/commit"
                ),
            )),
        }
    }

    fn shared(&self, name: &str) -> Result<&SharedSub> {
        match self {
            Subscription::Shared(s) => Ok(s),
            Subscription::Stream(_) => Err(BrokerError::invalid(
                "kind",
                format!(
                    "{name:?} is a stream subscription: use join/fetch/commit, not receive/ack"
                ),
            )),
        }
    }
}

/// Completes when any of the waits completes (never, if there are none).
pub(crate) struct AnyReady(pub(crate) Vec<std::pin::Pin<Box<wharf_log::OffsetWait>>>);

/// Resolves when any of the waits sees a new append (`Ok`), or with `Closed` once a log is
/// closed. A wait on a poisoned log is dropped from the set: no append will ever come, and
/// treating its error as "ready" would make a long-poll spin on the CPU until its deadline.
impl std::future::Future for AnyReady {
    type Output = Result<(), wharf_log::Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut i = 0;
        while i < self.0.len() {
            let Some(w) = self.0.get_mut(i) else { break };
            match w.as_mut().poll(cx) {
                std::task::Poll::Ready(Ok(())) => return std::task::Poll::Ready(Ok(())),
                std::task::Poll::Ready(Err(wharf_log::Error::Closed)) => {
                    return std::task::Poll::Ready(Err(wharf_log::Error::Closed));
                }
                std::task::Poll::Ready(Err(_)) => {
                    self.0.swap_remove(i);
                }
                std::task::Poll::Pending => i += 1,
            }
        }
        std::task::Poll::Pending
    }
}

/// A random number, different in every call and every process (the standard library's
/// per-instance hash keys are seeded from the OS), so ids minted after a restart never repeat
/// ids from before it — even with a manual clock or a clock that stepped back.
pub(crate) fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> BrokerError {
    BrokerError::StorageUnavailable(format!("{op} {}: {e}", path.display()))
}

fn log_config(config: &TopicConfig, engine: &EmbeddedConfig) -> LogConfig {
    LogConfig {
        durability: config.durability.to_log(),
        segment_max_bytes: config.segment_bytes,
        retention: Retention {
            max_age: config.retention_ms.map(Duration::from_millis),
            max_bytes: config.retention_bytes,
        },
        max_batch_bytes: 64 * 1024 * 1024,
        vfs: engine.vfs.clone(),
        clock: engine.clock.clone(),
        ..LogConfig::default()
    }
}

impl EmbeddedEngine {
    /// Opens (creating if needed) the data directory and recovers every topic and
    /// subscription. Blocking: it runs each log's recovery.
    pub fn open(config: EmbeddedConfig) -> Result<Self> {
        let vfs = &*config.vfs;
        let topics_dir = config.data_dir.join("topics");
        vfs.create_dir_all(&topics_dir)
            .map_err(|e| io_err("create", &topics_dir, e))?;
        let mut topics = BTreeMap::new();
        let mut names_found = vfs
            .list_dir(&topics_dir)
            .map_err(|e| io_err("list", &topics_dir, e))?;
        names_found.sort();
        for name in names_found {
            let dir = topics_dir.join(&name);
            match meta::read_json::<TopicConfig>(vfs, &dir.join(TOPIC_FILE))? {
                Some(topic_config) => {
                    let topic = Topic::open(&name, topic_config, dir, &config)?;
                    topics.insert(name, Arc::new(topic));
                }
                None => {
                    // A creation or deletion that did not complete: the topic never existed
                    // (or no longer does).
                    vfs.remove_dir_all(&dir)
                        .map_err(|e| io_err("remove", &dir, e))?;
                }
            }
        }
        // Second pass: subscriptions (a shared one needs its dead-letter topic open).
        for topic in topics.values() {
            topic.open_subscriptions(&config, &topics)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                topics: RwLock::new(topics),
                admin: Mutex::new(()),
            }),
        })
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_owned()))
    }

    fn now(&self) -> i64 {
        self.inner.config.clock.now_ms()
    }

    /// Closes every log, making everything durable. Idempotent; later calls fail `closed`.
    pub fn close(&self) -> Result<()> {
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut first_error = None;
        for topic in topics {
            for log in &topic.partitions {
                if let Err(e) = log.close() {
                    first_error.get_or_insert(e);
                }
            }
            for sub in lock(&topic.subscriptions).values() {
                if let Err(e) = sub.close() {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Visits every log of the engine: partitions, subscription journals and retry logs.
    fn for_each_log(&self, mut f: impl FnMut(&Log)) {
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for topic in topics {
            for log in &topic.partitions {
                f(log);
            }
            for sub in lock(&topic.subscriptions).values() {
                for log in sub.own_logs() {
                    f(log);
                }
            }
        }
    }

    /// Applies every topic's retention policy (call periodically).
    pub fn enforce_retention(&self) -> Result<u64> {
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut removed = 0;
        for topic in topics {
            for log in &topic.partitions {
                removed += log.enforce_retention()?.removed_segments as u64;
            }
        }
        Ok(removed)
    }

    fn create_topic_blocking(
        &self,
        name: &str,
        config: TopicConfig,
        reserved: bool,
    ) -> Result<Arc<Topic>> {
        names::validate("topic", name, reserved)?;
        config.validate()?;
        let _admin = lock(&self.inner.admin);
        self.create_topic_locked(name, config)
    }

    /// Creates a topic; the caller holds the admin lock and has validated name and config.
    fn create_topic_locked(&self, name: &str, config: TopicConfig) -> Result<Arc<Topic>> {
        if let Ok(existing) = self.topic(name) {
            return if existing.config == config {
                Ok(existing)
            } else {
                Err(BrokerError::TopicExists(name.to_owned()))
            };
        }
        let vfs = &*self.inner.config.vfs;
        let topics_dir = self.inner.config.data_dir.join("topics");
        let dir = topics_dir.join(name);
        // Leftovers of an interrupted creation are not a topic: start clean.
        vfs.remove_dir_all(&dir)
            .map_err(|e| io_err("remove", &dir, e))?;
        vfs.create_dir_all(&dir)
            .map_err(|e| io_err("create", &dir, e))?;
        let topic = Topic::open(name, config.clone(), dir.clone(), &self.inner.config)?;
        // The commit point: the topic exists once its settings file does.
        meta::write_json(vfs, &dir, TOPIC_FILE, &config)?;
        vfs.sync_dir(&topics_dir)
            .map_err(|e| io_err("fsync", &topics_dir, e))?;
        let topic = Arc::new(topic);
        self.inner
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), topic.clone());
        Ok(topic)
    }

    /// Deletes a topic; the caller holds the admin lock.
    fn delete_topic_locked(&self, name: &str) -> Result<()> {
        let Ok(topic) = self.topic(name) else {
            return Ok(());
        };
        let vfs = &*self.inner.config.vfs;
        meta::remove(vfs, &topic.dir, TOPIC_FILE)?;
        self.inner
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        for log in &topic.partitions {
            let _ = log.close();
        }
        vfs.remove_dir_all(&topic.dir)
            .map_err(|e| io_err("remove", &topic.dir, e))?;
        let parent = self.inner.config.data_dir.join("topics");
        vfs.sync_dir(&parent)
            .map_err(|e| io_err("fsync", &parent, e))
    }

    fn info(&self, topic: &Topic) -> TopicInfo {
        TopicInfo {
            name: topic.name.clone(),
            config: topic.config.clone(),
            partitions: topic
                .partitions
                .iter()
                .enumerate()
                .map(|(p, log)| PartitionInfo {
                    partition: p as u32,
                    start_offset: log.start_offset(),
                    high_watermark: log.high_watermark(),
                })
                .collect(),
        }
    }

    fn subscription(&self, topic: &Topic, name: &str) -> Result<Arc<Subscription>> {
        lock(&topic.subscriptions)
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::SubscriptionNotFound {
                topic: topic.name.clone(),
                subscription: name.to_owned(),
            })
    }

    fn stream_group(&self, topic: &str, sub: &str) -> Result<(Arc<Topic>, Arc<Subscription>)> {
        let topic = self.topic(topic)?;
        let sub = self.subscription(&topic, sub)?;
        Ok((topic, sub))
    }
}

impl Topic {
    fn open(
        name: &str,
        config: TopicConfig,
        dir: PathBuf,
        engine: &EmbeddedConfig,
    ) -> Result<Self> {
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for p in 0..config.partitions {
            let (log, _report) = Log::open(dir.join(format!("p{p}")), log_config(&config, engine))?;
            partitions.push(Arc::new(log));
        }
        let mut topic = Topic {
            name: name.to_owned(),
            config,
            dir,
            partitions,
            next_partition: AtomicU32::new(0),
            dedup: Mutex::new(Dedup::default()),
            subscriptions: Mutex::new(BTreeMap::new()),
        };
        topic.rebuild_dedup(engine.clock.now_ms())?;
        Ok(topic)
    }

    /// Rebuilds the dedup index from the message ids stored within the window.
    fn rebuild_dedup(&mut self, now: i64) -> Result<()> {
        let window = self.config.dedup_window_ms;
        if window == 0 {
            return Ok(());
        }
        let since = now.saturating_sub(i64::try_from(window).unwrap_or(i64::MAX));
        let mut dedup = Dedup::default();
        for (p, log) in self.partitions.iter().enumerate() {
            let Some(from) = log.offset_for_timestamp(since)? else {
                continue;
            };
            for_each_record(log, from, |r| {
                if let Some(id) = crate::types::header(&r.headers, crate::types::HEADER_MESSAGE_ID)
                {
                    dedup.record(
                        id.to_owned(),
                        Published {
                            partition: p as u32,
                            offset: r.offset,
                            timestamp: r.timestamp,
                            duplicate: false,
                        },
                    );
                }
                Ok(())
            })?;
        }
        dedup.expire(now, window);
        self.dedup = Mutex::new(dedup);
        Ok(())
    }

    fn open_subscriptions(
        &self,
        engine: &EmbeddedConfig,
        topics: &BTreeMap<String, Arc<Topic>>,
    ) -> Result<()> {
        let vfs = &*engine.vfs;
        let subs_dir = self.dir.join("subs");
        vfs.create_dir_all(&subs_dir)
            .map_err(|e| io_err("create", &subs_dir, e))?;
        let mut names_found = vfs
            .list_dir(&subs_dir)
            .map_err(|e| io_err("list", &subs_dir, e))?;
        names_found.sort();
        let mut subs = BTreeMap::new();
        for name in names_found {
            let dir = subs_dir.join(&name);
            match meta::read_json::<SubscriptionConfig>(vfs, &dir.join(SUB_FILE))? {
                Some(SubscriptionConfig::Stream(config)) => {
                    let group = StreamGroup::open(
                        &name,
                        config,
                        &dir,
                        self.partitions.clone(),
                        engine,
                        None,
                    )?;
                    subs.insert(name, Arc::new(Subscription::Stream(group)));
                }
                Some(SubscriptionConfig::Shared(config)) => {
                    let dlq_name = names::dlq_topic(&self.name, &name);
                    let dlq = topics.get(&dlq_name).cloned().ok_or_else(|| {
                        BrokerError::StorageUnavailable(format!(
                            "shared subscription {name:?} of {:?}: its dead-letter topic {dlq_name:?} is missing",
                            self.name
                        ))
                    })?;
                    let sub = SharedSub::open(&name, self, config, &dir, dlq, engine, false)?;
                    subs.insert(name, Arc::new(Subscription::Shared(sub)));
                }
                None => vfs
                    .remove_dir_all(&dir)
                    .map_err(|e| io_err("remove", &dir, e))?,
            }
        }
        *lock(&self.subscriptions) = subs;
        Ok(())
    }

    fn partition(&self, p: u32) -> Result<&Arc<Log>> {
        self.partitions
            .get(p as usize)
            .ok_or(BrokerError::PartitionNotFound {
                topic: self.name.clone(),
                partition: p,
                partitions: self.config.partitions,
            })
    }

    /// Publishes to this topic (see [`Engine::publish`]).
    pub(crate) async fn publish(
        &self,
        mut messages: Vec<Message>,
        shared_headers: &[(String, String)],
        clock: &dyn Clock,
    ) -> Result<Vec<Published>> {
        let topic = self;
        // Validate everything before storing anything.
        crate::check::publish(&messages, &topic.config)?;
        let routes = messages
            .iter()
            .map(|m| topic.route(m))
            .collect::<Result<Vec<u32>>>()?;
        let unshared = crate::check::unshared(&messages, shared_headers, &topic.config);
        let window = topic.config.dedup_window_ms;
        let mut results: Vec<Option<Published>> = vec![None; messages.len()];
        // Indexes of messages to store; ids this publish reserved; the channel that tells
        // waiting duplicates we are done (dropped at the end of this function).
        let mut to_store: Vec<usize> = Vec::new();
        // Same id twice in one publish: the later ones are duplicates of the first.
        let mut first_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut dup_of: Vec<(usize, usize)> = Vec::new();
        let dedup_needed = window > 0 && messages.iter().any(|m| m.id().is_some());
        // Tells concurrent publishes of our ids that we are done (when dropped).
        let (done_tx, done_rx) = if dedup_needed {
            let (tx, rx) = watch::channel(());
            (Some(tx), Some(rx))
        } else {
            to_store.extend(0..messages.len());
            (None, None)
        };
        // Declared after the channel so it is dropped first: if this publish is cancelled
        // (its future dropped), the reservations are released before waiters wake.
        let mut reserved = Reservations {
            dedup: &topic.dedup,
            ids: Vec::new(),
        };
        while let Some(done_rx) = &done_rx {
            let in_flight = {
                let mut dedup = lock(&topic.dedup);
                if window > 0 {
                    dedup.expire(clock.now_ms(), window);
                }
                // Another publish of one of our ids is in flight: wait for its outcome, then
                // look again (it either stored the message — we are a duplicate — or failed).
                let in_flight = messages
                    .iter()
                    .filter_map(|m| m.id().filter(|_| window > 0))
                    .find_map(|id| match dedup.check(id) {
                        Check::Wait(rx) => Some(rx),
                        _ => None,
                    });
                if in_flight.is_none() {
                    for (i, m) in messages.iter().enumerate() {
                        let Some(id) = m.id().filter(|_| window > 0) else {
                            to_store.push(i);
                            continue;
                        };
                        if let Some(&first) = first_of.get(id) {
                            dup_of.push((i, first));
                            continue;
                        }
                        first_of.insert(id.to_owned(), i);
                        match dedup.check(id) {
                            Check::Duplicate(p) => results[i] = Some(p),
                            Check::New | Check::Wait(_) => {
                                dedup.reserve(id.to_owned(), done_rx.clone());
                                reserved.ids.push(id.to_owned());
                                to_store.push(i);
                            }
                        }
                    }
                }
                in_flight
            };
            match in_flight {
                Some(mut rx) => {
                    if rx.changed().await.is_err() {
                        // The other publish is gone; its reservation is being released.
                        tokio::task::yield_now().await;
                    }
                }
                None => break,
            }
        }
        // Store: one append per partition.
        let mut per_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for &i in &to_store {
            per_partition.entry(routes[i]).or_default().push(i);
        }
        let mut tickets = Vec::new();
        let mut failure = None;
        for (p, idxs) in &per_partition {
            // Each message is appended once (one partition each): move its parts into the
            // record instead of copying its headers.
            let mut records: Vec<NewRecord> = Vec::with_capacity(idxs.len());
            let mut except = Vec::new();
            for (k, &i) in idxs.iter().enumerate() {
                if !shared_headers.is_empty() && unshared.binary_search(&i).is_ok() {
                    except.push(k);
                }
                if let Some(m) = messages.get_mut(i) {
                    records.push(NewRecord {
                        key: m.key.take(),
                        value: std::mem::take(&mut m.value),
                        headers: std::mem::take(&mut m.headers),
                    });
                }
            }
            match topic.partition(*p).and_then(|log| {
                log.append_shared(
                    &records,
                    &SharedHeaders {
                        headers: shared_headers,
                        except: &except,
                    },
                )
                .map_err(BrokerError::from)
            }) {
                Ok(ticket) => tickets.push((*p, idxs.clone(), ticket)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        for (p, idxs, ticket) in tickets {
            match ticket.await {
                Ok(done) => {
                    for (k, &i) in idxs.iter().enumerate() {
                        results[i] = Some(Published {
                            partition: p,
                            offset: done.base_offset + k as u64,
                            timestamp: done.timestamp,
                            duplicate: false,
                        });
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e.into());
                }
            }
        }
        {
            let mut dedup = lock(&topic.dedup);
            for id in std::mem::take(&mut reserved.ids) {
                // A message whose partition stored it is stored, even if another partition
                // of the same publish failed: a retry must find it as a duplicate.
                match first_of.get(&id).and_then(|&i| results[i]) {
                    Some(p) => dedup.record(id, p),
                    None => dedup.release(&id),
                }
            }
        }
        drop(done_tx);
        if let Some(e) = failure {
            return Err(e);
        }
        for (dup, original) in dup_of {
            results[dup] = results[original].map(|p| Published {
                duplicate: true,
                ..p
            });
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| BrokerError::Internal("a message got no result".into())))
            .collect()
    }

    fn route(&self, m: &Message) -> Result<u32> {
        let n = self.config.partitions;
        match (m.partition, &m.key) {
            (Some(p), _) => self.partition(p).map(|_| p),
            (None, Some(key)) => Ok(partition_for_key(key, n)),
            (None, None) => Ok(self.next_partition.fetch_add(1, Ordering::Relaxed) % n),
        }
    }
}

/// Dedup reservations of a publish in flight; released on drop unless taken over.
struct Reservations<'a> {
    dedup: &'a Mutex<Dedup>,
    ids: Vec<String>,
}

impl Drop for Reservations<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let mut dedup = lock(self.dedup);
            for id in &self.ids {
                dedup.release(id);
            }
        }
    }
}

/// Calls `f` with every acknowledged record of `log` from `from` on.
pub(crate) fn for_each_record(
    log: &Log,
    from: u64,
    mut f: impl FnMut(wharf_log::Record) -> Result<()>,
) -> Result<()> {
    let mut offset = from.max(log.start_offset());
    let end = log.high_watermark();
    while offset < end {
        let records = log.read_records(offset, 1 << 20)?;
        let Some(last) = records.last() else { break };
        offset = last.offset + 1;
        for r in records {
            f(r)?;
        }
    }
    Ok(())
}

/// Replays a subscription's state journal: every record, decoded from JSON.
pub(crate) fn replay<T: serde::de::DeserializeOwned>(
    journal: &Log,
    subscription: &str,
    mut f: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    for_each_record(journal, journal.start_offset(), |r| {
        let record = serde_json::from_slice(&r.value).map_err(|e| {
            BrokerError::StorageUnavailable(format!(
                "subscription {subscription}: bad state record at {}: {e}",
                r.offset
            ))
        })?;
        f(record)
    })
}

/// Size of a record as the byte limits of reads count it: key, value and headers.
pub(crate) fn record_size(r: &wharf_log::Record) -> usize {
    r.key.as_ref().map_or(0, Bytes::len)
        + r.value.len()
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// Records from `from` on, at most `max_messages` and about `max_bytes` (always at least one
/// if any is there: a message larger than the limit still comes, alone). Batches are decoded
/// lazily, so a small `max_messages` does not pay for decoding a whole megabyte of records.
pub(crate) fn read_limited(
    log: &Log,
    from: u64,
    max_messages: usize,
    max_bytes: usize,
) -> wharf_log::Result<Vec<wharf_log::Record>> {
    read_limited_cached(log, &mut None, from, max_messages, max_bytes)
}

/// [`read_limited`] with a one-batch cache: a read that stops inside a batch keeps it in
/// `cache`, and the next read from an offset within it starts there instead of reading (and
/// checking) the whole batch from the log again. A consumer fetching 100 messages at a time
/// from batches of 1,000 reads each batch once instead of ten times. The cache is used only
/// for offsets the log still holds (at or above its start).
pub(crate) fn read_limited_cached(
    log: &Log,
    cache: &mut Option<wharf_log::Batch>,
    from: u64,
    max_messages: usize,
    max_bytes: usize,
) -> wharf_log::Result<Vec<wharf_log::Record>> {
    let holds = |b: &wharf_log::Batch, o: u64| b.base_offset() <= o && o < b.next_offset();
    // Never below the log's start (retention may have moved it since the caller looked):
    // then the log answers, as without a cache.
    let mut cached = cache
        .take()
        .filter(|b| holds(b, from) && from >= log.start_offset());
    let mut from_cache = cached.is_some();
    let mut out = Vec::new();
    let mut used = 0usize;
    let corrupt = |source| wharf_log::Error::Corrupt {
        path: log.dir().to_path_buf(),
        position: 0,
        source,
    };
    let max_bytes = max_bytes.max(1);
    // The log is read in growing steps, not `max_bytes` at once: a fetch of 100 small
    // messages with the default 1 MiB limit used to read (allocate, zero, copy and
    // CRC-check) a whole megabyte of log to use 20 KiB of it.
    let mut next = from;
    let mut step = max_messages
        .saturating_mul(FIRST_READ_PER_MESSAGE)
        .clamp(FIRST_READ_MIN, max_bytes.max(FIRST_READ_MIN))
        .min(max_bytes);
    let mut read = 0usize;
    loop {
        let batches = match cached.take() {
            Some(batch) => vec![batch],
            None => match log.read(next, step).inspect(|_| from_cache = false) {
                Ok(batches) => batches,
                // A later step found its offset gone (retention): what was read stands.
                Err(wharf_log::Error::OffsetOutOfRange { .. }) if next > from => {
                    return Ok(out);
                }
                Err(e) => return Err(e),
            },
        };
        let Some(after) = batches.last().map(wharf_log::Batch::next_offset) else {
            return Ok(out);
        };
        for batch in &batches {
            read += batch.as_bytes().len();
            let mut records = batch.records();
            records.skip_to(next).map_err(corrupt)?;
            for record in records {
                let record = record.map_err(corrupt)?;
                if record.offset < next {
                    continue;
                }
                let size = record_size(&record);
                if !out.is_empty() && (out.len() >= max_messages || used + size > max_bytes) {
                    // A batch read now is a slice of the whole read buffer (up to
                    // `max_bytes`): keep a copy of just the batch.
                    *cache = Some(if from_cache {
                        batch.clone()
                    } else {
                        batch.detached()
                    });
                    return Ok(out);
                }
                used += size;
                out.push(record);
            }
        }
        let room = max_bytes.saturating_sub(read);
        if out.len() >= max_messages || room == 0 || after <= next || after >= log.high_watermark()
        {
            return Ok(out);
        }
        // The next step: what the records still wanted take at the size seen so far (one
        // more for luck), but at least as much as the last step.
        let per_record = read / out.len().max(1) + 1;
        let wanted = (max_messages - out.len() + 1).saturating_mul(per_record);
        next = after;
        step = wanted.max(step).min(room);
    }
}

/// The first step of [`read_limited`] reads this much log per message asked for (a small
/// message with a trace context takes about 150 bytes), at least [`FIRST_READ_MIN`].
const FIRST_READ_PER_MESSAGE: usize = 256;
const FIRST_READ_MIN: usize = 4 * 1024;

/// Up to `max_messages` records from offset `from`: from `cached` when one of its batches
/// holds `from` (what a previous call read), else from the log (up to 256 KiB of batches,
/// kept in `cached`). Returns fewer records than asked at the end of a batch; the caller
/// asks again.
pub(crate) fn read_cached(
    log: &Log,
    cached: &mut Vec<wharf_log::Batch>,
    from: u64,
    max_messages: usize,
) -> wharf_log::Result<Vec<wharf_log::Record>> {
    let corrupt = |source| wharf_log::Error::Corrupt {
        path: log.dir().to_path_buf(),
        position: 0,
        source,
    };
    let holds = |b: &wharf_log::Batch| b.base_offset() <= from && from < b.next_offset();
    if !cached.iter().any(holds) {
        *cached = log.read(from, 256 * 1024)?;
    }
    let Some(batch) = cached.iter().find(|b| holds(b)) else {
        // `from` is in none of the batches read (a gap in the log): the general path.
        cached.clear();
        return read_limited(log, from, max_messages, 256 * 1024);
    };
    let mut records = batch.records();
    records.skip_to(from).map_err(corrupt)?;
    let mut out = Vec::with_capacity(max_messages.min(1024));
    for record in records {
        if out.len() >= max_messages {
            break;
        }
        out.push(record.map_err(corrupt)?);
    }
    Ok(out)
}

/// Reads from `log` per `request`, optionally waiting for new data.
pub(crate) async fn read_partition(
    topic: &str,
    partition: u32,
    log: &Log,
    request: &ReadRequest,
) -> Result<ReadResult> {
    let start = log.start_offset();
    let hw = log.high_watermark();
    let (mut from, mut skipped_to) = match request.from {
        Position::Earliest => (start, None),
        Position::Latest => (hw, None),
        Position::Timestamp(t) => (log.offset_for_timestamp(t)?.unwrap_or(hw), None),
        Position::Offset(o) if o < start => (start, Some(start)),
        Position::Offset(o) if o > hw => {
            return Err(BrokerError::OffsetOutOfRange {
                topic: topic.to_owned(),
                partition,
                requested: o,
                start,
                end: hw,
            });
        }
        Position::Offset(o) => (o, None),
    };
    if from >= log.high_watermark() && !request.wait.is_zero() {
        // Woken by the append that makes `from` readable, not by polling.
        let _ = tokio::time::timeout(request.wait.min(MAX_WAIT), log.wait_for(from)).await;
    }
    let max_messages = request.max_messages.clamp(1, MAX_READ_MESSAGES);
    let max_bytes = request.max_bytes.clamp(1, MAX_READ_BYTES);
    let records = loop {
        match read_limited(log, from, max_messages, max_bytes) {
            Ok(r) => break r,
            Err(wharf_log::Error::OffsetOutOfRange { start, .. }) if from < start => {
                // Retention removed it between our look and the read.
                from = start;
                skipped_to = Some(start);
            }
            Err(e) => return Err(e.into()),
        }
    };
    let messages = records
        .into_iter()
        .map(|r| StoredMessage::from_record(partition, r))
        .collect::<Vec<_>>();
    Ok(ReadResult {
        next_offset: messages.last().map_or(from, |m| m.offset + 1),
        messages,
        start_offset: log.start_offset(),
        high_watermark: log.high_watermark(),
        skipped_to,
    })
}

#[async_trait]
impl Engine for EmbeddedEngine {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn health(&self) -> Health {
        let mut reason = None;
        self.for_each_log(|log| {
            if reason.is_none() {
                reason = log.stats().poisoned;
            }
        });
        Health {
            writable: reason.is_none(),
            reason,
        }
    }

    async fn apply_retention(&self) -> Result<u64> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.enforce_retention())
            .await
            .map_err(|e| BrokerError::Internal(e.to_string()))?
    }

    fn storage_stats(&self) -> Option<StorageStats> {
        let mut stats = StorageStats::default();
        self.for_each_log(|log| {
            let s = log.stats();
            stats.logs += 1;
            stats.size_bytes += s.size_bytes;
            stats.fsync_latency.merge(&s.fsync_latency);
        });
        Some(stats)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            stream_subscriptions: Support::Native,
            shared_subscriptions: Support::Native,
            dead_letters: Support::Native,
            delays: Support::Native,
            dedup: Support::Native,
            time_lookup: Support::Native,
            retention: Support::Native,
        }
    }

    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        let this = self.clone();
        let name = name.to_owned();
        let topic =
            tokio::task::spawn_blocking(move || this.create_topic_blocking(&name, config, false))
                .await
                .map_err(|e| BrokerError::Internal(e.to_string()))??;
        Ok(self.info(&topic))
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        Ok(self.info(&*self.topic(name)?))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        Ok(topics.iter().map(|t| self.info(t)).collect())
    }

    async fn max_message_bytes(&self, name: &str) -> Result<u64> {
        Ok(self.topic(name)?.config.max_message_bytes)
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let this = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            if name.starts_with(names::RESERVED_PREFIX) && this.topic(&name).is_ok() {
                return Err(BrokerError::invalid(
                    "topic",
                    format!("{name:?} belongs to a subscription; it is deleted with it"),
                ));
            }
            let _admin = lock(&this.inner.admin);
            let topic = this.topic(&name)?;
            let vfs = &*this.inner.config.vfs;
            // The commit point first: without its settings file the topic is gone, even if
            // we crash before the data is removed (recovery removes the rest).
            meta::remove(vfs, &topic.dir, TOPIC_FILE)?;
            this.inner
                .topics
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            for log in &topic.partitions {
                let _ = log.close();
            }
            let dlqs: Vec<String> = lock(&topic.subscriptions)
                .iter()
                .filter(|(_, sub)| matches!(&***sub, Subscription::Shared(_)))
                .map(|(name, _)| names::dlq_topic(&topic.name, name))
                .collect();
            for sub in lock(&topic.subscriptions).values() {
                let _ = sub.close();
            }
            vfs.remove_dir_all(&topic.dir)
                .map_err(|e| io_err("remove", &topic.dir, e))?;
            for dlq in dlqs {
                this.delete_topic_locked(&dlq)?;
            }
            let parent = this.inner.config.data_dir.join("topics");
            vfs.sync_dir(&parent)
                .map_err(|e| io_err("fsync", &parent, e))
        })
        .await
        .map_err(|e| BrokerError::Internal(e.to_string()))?
    }

    async fn publish_with(
        &self,
        topic_name: &str,
        messages: Vec<Message>,
        options: PublishOptions,
    ) -> Result<Vec<Published>> {
        let topic = self.topic(topic_name)?;
        if topic_name.starts_with(names::RESERVED_PREFIX) {
            return Err(BrokerError::invalid(
                "topic",
                format!("{topic_name:?} is written by Wharf only (dead letters)"),
            ));
        }
        // The publish runs in its own task, so a caller that goes away (a dropped connection,
        // a cancelled request) cannot cancel it half-way: once appends are submitted, their
        // message ids are recorded as published, and the caller's retry is answered as a
        // duplicate instead of being stored twice.
        let clock = self.inner.config.clock.clone();
        tokio::spawn(async move {
            topic
                .publish(messages, &options.shared_headers, clock.as_ref())
                .await
        })
        .await
        .map_err(|e| BrokerError::Internal(format!("the publish task failed: {e}")))?
    }

    async fn read(&self, topic: &str, request: ReadRequest) -> Result<ReadResult> {
        let t = self.topic(topic)?;
        let log = t.partition(request.partition)?;
        read_partition(topic, request.partition, log, &request).await
    }

    async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo> {
        names::validate("subscription", name, false)?;
        config.validate()?;
        let t = self.topic(topic)?;
        if topic.starts_with(names::RESERVED_PREFIX) {
            return Err(BrokerError::invalid(
                "topic",
                "dead-letter topics cannot have subscriptions; redrive instead",
            ));
        }
        let this = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let _admin = lock(&this.inner.admin);
            // The topic may have been deleted (or recreated) since we looked it up.
            if !this.topic(&t.name).is_ok_and(|now| Arc::ptr_eq(&now, &t)) {
                return Err(BrokerError::TopicNotFound(t.name.clone()));
            }
            let now = this.now();
            if let Some(existing) = lock(&t.subscriptions).get(&name).cloned() {
                return if existing.config() == config {
                    Ok(existing.info(&t.name, now))
                } else {
                    Err(BrokerError::SubscriptionExists {
                        topic: t.name.clone(),
                        subscription: name,
                    })
                };
            }
            let vfs = &*this.inner.config.vfs;
            let dir = t.dir.join("subs").join(&name);
            vfs.remove_dir_all(&dir)
                .map_err(|e| io_err("remove", &dir, e))?;
            vfs.create_dir_all(&dir)
                .map_err(|e| io_err("create", &dir, e))?;
            let sub = match &config {
                SubscriptionConfig::Stream(c) => Subscription::Stream(StreamGroup::open(
                    &name,
                    c.clone(),
                    &dir,
                    t.partitions.clone(),
                    &this.inner.config,
                    Some(&c.start),
                )?),
                SubscriptionConfig::Shared(c) => {
                    let dlq_name = names::dlq_topic(&t.name, &name);
                    if this.topic(&dlq_name).is_ok() {
                        // `wharf.dlq.a.b.c` is both (a, b.c) and (a.b, c).
                        return Err(BrokerError::invalid(
                            "subscription",
                            format!("its dead-letter topic {dlq_name:?} already belongs to another subscription; choose another name"),
                        ));
                    }
                    let dlq = this.create_topic_locked(&dlq_name, crate::dlq::topic_config())?;
                    Subscription::Shared(SharedSub::open(
                        &name,
                        &t,
                        c.clone(),
                        &dir,
                        dlq,
                        &this.inner.config,
                        true,
                    )?)
                }
            };
            // The commit point: the subscription exists once its settings file does — and
            // its directory's entry in `subs/` (and that of `subs/` in the topic) is durable.
            meta::write_json(vfs, &dir, SUB_FILE, &config)?;
            let subs_dir = t.dir.join("subs");
            vfs.sync_dir(&subs_dir)
                .map_err(|e| io_err("fsync", &subs_dir, e))?;
            vfs.sync_dir(&t.dir)
                .map_err(|e| io_err("fsync", &t.dir, e))?;
            let info = sub.info(&t.name, now);
            lock(&t.subscriptions).insert(name, Arc::new(sub));
            Ok(info)
        })
        .await
        .map_err(|e| BrokerError::Internal(e.to_string()))?
    }

    async fn describe_subscription(&self, topic: &str, name: &str) -> Result<SubscriptionInfo> {
        let (t, sub) = self.stream_group(topic, name)?;
        if let Subscription::Shared(shared) = &*sub {
            // Expired leases end now, so the counts are current without a receive.
            shared.maintain().await?;
        }
        Ok(sub.info(&t.name, self.now()))
    }

    async fn list_subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>> {
        let t = self.topic(topic)?;
        let subs: Vec<Arc<Subscription>> = lock(&t.subscriptions).values().cloned().collect();
        let now = self.now();
        Ok(subs.iter().map(|s| s.info(&t.name, now)).collect())
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<()> {
        let t = self.topic(topic)?;
        let this = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let _admin = lock(&this.inner.admin);
            let sub = this.subscription(&t, &name)?;
            let vfs = &*this.inner.config.vfs;
            let dir = t.dir.join("subs").join(&name);
            meta::remove(vfs, &dir, SUB_FILE)?;
            lock(&t.subscriptions).remove(&name);
            let _ = sub.close();
            vfs.remove_dir_all(&dir)
                .map_err(|e| io_err("remove", &dir, e))?;
            if matches!(&*sub, Subscription::Shared(_)) {
                this.delete_topic_locked(&names::dlq_topic(&t.name, &name))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| BrokerError::Internal(e.to_string()))?
    }

    async fn join(&self, topic: &str, sub: &str, member: Option<&str>) -> Result<Membership> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.stream(sub)?.join(member, self.now())
    }

    async fn heartbeat(&self, topic: &str, sub: &str, member: &str) -> Result<Membership> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.stream(sub)?.heartbeat(member, self.now())
    }

    async fn leave(&self, topic: &str, sub: &str, member: &str) -> Result<()> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.stream(sub)?.leave(member, self.now())
    }

    async fn fetch(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        request: FetchRequest,
    ) -> Result<Vec<StoredMessage>> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.stream(sub)?
            .fetch(member, request, self.inner.config.clock.as_ref())
            .await
    }

    async fn commit(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        offsets: Vec<Committed>,
    ) -> Result<Vec<Committed>> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.stream(sub)?.commit(member, offsets, self.now()).await
    }

    async fn reset(&self, topic: &str, sub: &str, to: ResetTo) -> Result<Vec<Committed>> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.stream(sub)?.reset(to).await
    }

    async fn receive(
        &self,
        topic: &str,
        sub: &str,
        request: ReceiveRequest,
    ) -> Result<Vec<Delivery>> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.shared(sub)?.receive(request).await
    }

    async fn ack(&self, topic: &str, sub: &str, ack_ids: &[String]) -> Result<Vec<AckOutcome>> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.shared(sub)?.ack(ack_ids).await
    }

    async fn nack(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        delay_ms: Option<u64>,
    ) -> Result<Vec<AckOutcome>> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.shared(sub)?.nack(ack_ids, delay_ms).await
    }

    async fn extend(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        lease_ms: u64,
    ) -> Result<Vec<AckOutcome>> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.shared(sub)?.extend(ack_ids, lease_ms).await
    }

    async fn terminate(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        reason: &str,
    ) -> Result<Vec<AckOutcome>> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.shared(sub)?.terminate(ack_ids, reason).await
    }

    async fn dead_letters(
        &self,
        topic: &str,
        sub: &str,
        request: ReadRequest,
    ) -> Result<ReadResult> {
        let (_, s) = self.stream_group(topic, sub)?;
        let shared = s.shared(sub)?;
        shared.maintain().await?;
        let log = shared.dlq_log()?;
        let request = ReadRequest {
            partition: 0,
            ..request
        };
        read_partition(&names::dlq_topic(topic, sub), 0, log, &request).await
    }

    async fn redrive(&self, topic: &str, sub: &str, max: usize) -> Result<u64> {
        let (_, s) = self.stream_group(topic, sub)?;
        s.shared(sub)?.redrive(max).await
    }
}

#[cfg(test)]
mod read_tests {
    use bytes::Bytes;
    use wharf_log::{Log, LogConfig, NewRecord};

    use super::{read_limited, read_limited_cached};

    /// 5 batches of 10 records, values "0".."49".
    async fn log_of_batches() -> (tempfile::TempDir, Log) {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path().join("p0"), LogConfig::default()).unwrap();
        for b in 0..5 {
            let records: Vec<NewRecord> = (0..10)
                .map(|i| NewRecord::new(Bytes::from((b * 10 + i).to_string())))
                .collect();
            log.append(&records).unwrap().await.unwrap();
        }
        (dir, log)
    }

    fn values(records: &[wharf_log::Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn cached_reads_return_every_record_once_in_order() {
        let (_dir, log) = log_of_batches().await;
        let mut cache = None;
        let mut from = 0;
        let mut seen = Vec::new();
        while from < 50 {
            let records = read_limited_cached(&log, &mut cache, from, 3, 1 << 20).unwrap();
            assert!(!records.is_empty() && records.len() <= 3);
            assert_eq!(records[0].offset, from);
            // A read that stopped inside a batch keeps exactly that batch.
            let last = records.last().unwrap().offset;
            match &cache {
                Some(b) => assert!(b.base_offset() <= last + 1 && last + 1 < b.next_offset()),
                None => assert_eq!((last + 1) % 10, 0),
            }
            from = last + 1;
            seen.extend(values(&records));
        }
        let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        assert_eq!(seen, expected);
        // Reading again from an earlier offset (a reset) gives the log's records, whatever
        // the cache holds.
        let again = read_limited_cached(&log, &mut cache, 4, 8, 1 << 20).unwrap();
        assert_eq!(
            values(&again),
            (4..12).map(|i| i.to_string()).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn stepped_reads_cross_batches_up_to_the_limits() {
        let (_dir, log) = log_of_batches().await;
        // More messages than one step reads: the steps go on until max_messages.
        let all = read_limited(&log, 5, 40, 1 << 20).unwrap();
        assert_eq!(
            values(&all),
            (5..45).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        // The byte limit counts values: "10".."19" are 2 bytes each.
        let few = read_limited(&log, 10, 100, 7).unwrap();
        assert_eq!(values(&few), vec!["10", "11", "12"]);
        // Always at least one record, even over the byte limit.
        let one = read_limited(&log, 20, 100, 1).unwrap();
        assert_eq!(values(&one), vec!["20"]);
    }
}
