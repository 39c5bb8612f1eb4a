//! Wharf's [`Engine`] on RabbitMQ (3.10 or newer, AMQP 0.9.1 through lapin).
//!
//! # What is built
//! Topics, publishing (with dedup), reading by offset or time, stream and shared
//! subscriptions with dead letters, redrive and delays (docs/ENGINES.md has the mapping and
//! where this engine differs).
//!
//! # Mapping
//! - A topic partition is a RabbitMQ stream queue `{prefix}.t.{topic}.{generation}.{p}`;
//!   a Wharf offset is the stream offset. Retention maps to the stream's `x-max-age` and
//!   `x-max-length-bytes` (applied by RabbitMQ per segment, `x-stream-max-segment-size-bytes`
//!   = the topic's `segment_bytes`).
//! - Settings live in the Wharf-owned stream `{prefix}.meta`, applied in order by every node
//!   (module `meta`): nodes keep nothing of their own and agree on every change.
//! - A message is stored as an envelope in the body ([`wharf_broker::envelope`]: key,
//!   ordered headers, the node's timestamp), marked by its `content-type`; messages published to the
//!   stream by plain AMQP clients are read too (body = value, string-able headers).
//! - Publisher confirms give no offset, so each node reads the tail of the partitions it
//!   serves (module `watch`; each message's `message-id` is unique) and learns its
//!   messages' offsets there; the same reader gives the
//!   high watermark and the dedup index. RabbitMQ has no dedup: Wharf's covers the whole
//!   topic (an id is looked up in every partition), exact for publishes through one node,
//!   and across nodes once the earlier publish has reached the other node's watcher
//!   (milliseconds).
//! - Offsets increase but have gaps: a node that starts watching a partition it did not
//!   create (first use, or after a reconnect) writes a fence record there (skipped by reads),
//!   and RabbitMQ starts each stream segment with a record of its own.
//! - Subscriptions are replicated state machines (module `rsm`): their settings are records
//!   of the settings stream, their state (groups and commits; leases, delivery counts,
//!   delays, dead-letter accounting) a stream per subscription that every node applies in
//!   order, with times from Wharf's clock (modules `stream`, `shared`, `subs`).

mod amqp;
mod meta;
mod rsm;
mod shared;
mod stream;
mod subs;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use wharf_broker::envelope;
use wharf_broker::{
    AckOutcome, BrokerError, Capabilities, Committed, Delivery, Engine, FetchRequest, Health,
    Membership, Message, PartitionInfo, Position, PublishOptions, Published, ReadRequest,
    ReadResult, ReceiveRequest, ResetTo, Result, StoredMessage, SubscriptionConfig,
    SubscriptionInfo, Support, TopicConfig, TopicInfo,
};
use wharf_log::Clock;

use amqp::{Start, StreamReader, unavailable};
use meta::{Change, Meta, Role, TopicState};
use watch::Watcher;

/// Most bytes one read returns (whole messages; at least one).
const MAX_READ_BYTES: usize = 16 * 1024 * 1024;
/// Channels publishes are spread over (more than one measured slower: 2 and 8 channels
/// gave 35–39% of raw RabbitMQ's publish rate against 45% with one).
const PUBLISH_CHANNELS: usize = 1;
/// How often a lost connection is retried in the background.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// How long a start-offset probe is trusted.
const START_CACHE: Duration = Duration::from_secs(1);

/// How to reach RabbitMQ and where Wharf keeps its queues there.
#[derive(Clone)]
pub struct RabbitConfig {
    /// AMQP URL (`amqp://guest:guest@127.0.0.1:5672/%2f`).
    pub url: String,
    /// Prefix of every queue Wharf declares (`[a-z0-9_-]`, 1–32 characters). Nodes with the
    /// same prefix are one Wharf.
    pub prefix: String,
    /// How long connecting and each RabbitMQ round trip Wharf waits on may take.
    pub timeout: Duration,
    /// The clock stamped on published messages (and that leases, delays and sessions run
    /// on).
    pub clock: Arc<dyn Clock>,
    /// Records between snapshots of Wharf's state streams (settings, subscriptions): a node
    /// starting up reads the newest snapshot and at most about this many records after it.
    pub snapshot_every: u64,
}

impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RabbitConfig {
    /// Defaults for `url`: prefix `wharf`, 5 s timeout, the system clock.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "wharf".into(),
            timeout: Duration::from_secs(5),
            clock: Arc::new(wharf_log::SystemClock),
            snapshot_every: 10_000,
        }
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The engine on RabbitMQ. Cheap to clone.
#[derive(Clone)]
pub struct RabbitEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RabbitEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitEngine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: RabbitConfig,
    /// This node's id (in message ids, fence ids and settings records).
    node: String,
    /// The live session; replaced after the connection is lost.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// The last session handed out, for `health` (which cannot wait on the lock).
    current: Mutex<Option<Arc<Session>>>,
    next_pub: AtomicU64,
    /// Set by `destroy_everything`: no reconnecting afterwards.
    closed: std::sync::atomic::AtomicBool,
    next_partition: AtomicU32,
    last_stamp: AtomicI64,
    /// Records of state streams replayed when they were opened (see [`RabbitEngine::replayed`]).
    replayed: AtomicU64,
}

/// Held by a publish that carries message ids (one per topic generation).
type DedupLock = Arc<tokio::sync::Mutex<()>>;

/// One connection and what lives on it.
struct Session {
    conn: Connection,
    /// Declares, deletes and fences.
    publish: Channel,
    /// Publish channels, one per publish call in turn: RabbitMQ runs each channel in a
    /// process of its own, so concurrent publishes use more than one core.
    publishers: Vec<Channel>,
    next_publisher: AtomicUsize,
    /// Held while one call hands its messages to the publish channels: lapin numbers a
    /// publish (its confirm's tag) and queues its frames under separate locks, so two calls
    /// sending at once on one channel could get each other's confirms.
    sending: tokio::sync::Mutex<()>,
    meta: Meta,
    watchers: Mutex<HashMap<String, Arc<Watcher>>>,
    /// Streams this session declared when it created their topic: their watchers start at
    /// the beginning and need no fence.
    fresh: Mutex<HashSet<String>>,
    /// One per topic (and generation): held by publishes that carry message ids.
    dedup_locks: Mutex<HashMap<(String, u64), DedupLock>>,
    /// Serialises attaching watchers (one per stream).
    attach: tokio::sync::Mutex<()>,
    /// Start offsets probed recently, by stream.
    starts: Mutex<HashMap<String, (u64, Instant)>>,
    /// This node's copies of the subscriptions' state, by state stream.
    subs: Mutex<HashMap<String, subs::Handle>>,
    /// Serialises opening each subscription's state (one lock per state stream).
    sub_attach: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Stream consumers kept open between reads.
    cursors: Mutex<Vec<Cursor>>,
}

impl Session {
    fn alive(&self) -> bool {
        self.conn.status().connected()
            && self.meta.alive()
            && self.publish.status().connected()
            && self.publishers.iter().all(|c| c.status().connected())
    }
}

/// Credit of a [`Cursor`]'s consumer: what RabbitMQ may push ahead of the reads.
const CURSOR_PREFETCH: u16 = 256;
/// Most cursors a session keeps open between reads.
const MAX_CURSORS: usize = 32;
/// A cursor unused for this long is closed.
const CURSOR_IDLE: Duration = Duration::from_secs(30);
/// Most bytes a kept cursor may hold pushed ahead (its credit times its messages' size):
/// cursors on streams of large messages are not kept, which bounds the pool's memory.
const CURSOR_BYTES: u64 = 8 * 1024 * 1024;

/// A stream consumer kept open between reads of one stream, positioned at `next`.
struct Cursor {
    reader: StreamReader,
    queue: String,
    /// Where the next read continues.
    next: u64,
    /// A delivery read ahead (at or past `next`) and not returned yet.
    pending: Option<lapin::message::Delivery>,
    /// Deliveries not yet acknowledged (credit).
    unacked: u32,
    used: Instant,
    /// The largest message body read through it.
    largest: u64,
}

impl Session {
    /// A cursor on `queue` positioned at `from`, if one is open; closes idle ones.
    fn take_cursor(&self, queue: &str, from: u64) -> Option<Cursor> {
        let mut cursors = self.cursors.lock().expect("cursors");
        let (idle, keep): (Vec<Cursor>, Vec<Cursor>) = std::mem::take(&mut *cursors)
            .into_iter()
            .partition(|c| c.used.elapsed() > CURSOR_IDLE);
        *cursors = keep;
        for c in idle {
            tokio::spawn(c.reader.close());
        }
        let i = cursors
            .iter()
            .position(|c| c.queue == queue && c.next == from)?;
        Some(cursors.swap_remove(i))
    }

    /// Keeps `c` for the next read of its stream (closing the oldest if there are many),
    /// unless what it may hold pushed ahead is too large to keep.
    fn put_cursor(&self, mut c: Cursor) {
        if c.largest.saturating_mul(u64::from(CURSOR_PREFETCH)) > CURSOR_BYTES {
            tokio::spawn(c.reader.close());
            return;
        }
        c.used = Instant::now();
        let mut cursors = self.cursors.lock().expect("cursors");
        if cursors.len() >= MAX_CURSORS
            && let Some(oldest) = cursors
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.used)
                .map(|(i, _)| i)
        {
            let old = cursors.swap_remove(oldest);
            tokio::spawn(old.reader.close());
        }
        cursors.push(c);
    }
}

/// A stream message as Wharf reads it: a data message, or a fence to skip.
enum Read {
    Data(StoredMessage),
    Fence,
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = (1..=32).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BrokerError::InvalidArgument {
            field: "rabbitmq.prefix",
            reason: format!("{prefix:?} must be 1 to 32 of a-z, 0-9, '_' and '-'"),
        })
    }
}

fn node_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// Decodes a delivery of partition `p`. Never fails: a body marked as an envelope that does
/// not decode (written by something else than Wharf) is read as a plain message, so one bad
/// message cannot make a partition unreadable.
fn decode(p: u32, offset: u64, d: lapin::message::Delivery) -> Read {
    if watch::is_fence(&d) {
        return Read::Fence;
    }
    let enveloped = watch::is_envelope(&d);
    // `Bytes` clones share the buffer: the fallback below keeps the body without a copy.
    let body = Bytes::from(d.data);
    if enveloped && let Ok(e) = envelope::decode(body.clone()) {
        return Read::Data(StoredMessage {
            partition: p,
            offset,
            timestamp: e.timestamp,
            key: e.key,
            value: e.value,
            headers: e.headers,
        });
    }
    // A plain AMQP publisher's message: its string-able headers, its timestamp property.
    let plain: Vec<(String, String)> = d
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !k.as_str().starts_with("x-"))
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), amqp::value_text(v)?)))
                .collect()
        })
        .unwrap_or_default();
    let timestamp = d
        .properties
        .timestamp()
        .and_then(|s| i64::try_from(s).ok())
        .map_or(0, |s| s.saturating_mul(1000));
    Read::Data(StoredMessage {
        partition: p,
        offset,
        timestamp,
        key: None,
        value: body,
        headers: plain,
    })
}

impl RabbitEngine {
    /// Connects, checks that RabbitMQ has stream queues (3.9+; Wharf is designed for 3.10),
    /// and reads Wharf's settings stream. Fails with `engine_unavailable` and the reason
    /// when RabbitMQ cannot be reached or lacks what Wharf needs.
    pub async fn connect(config: RabbitConfig) -> Result<Self> {
        validate_prefix(&config.prefix)?;
        if config.url.starts_with("amqps://") {
            return Err(BrokerError::NotSupported {
                what: "amqps:// (TLS to RabbitMQ)",
                engine: "rabbitmq",
            });
        }
        let engine = Self {
            inner: Arc::new(Inner {
                node: node_id(),
                config,
                session: tokio::sync::Mutex::new(None),
                current: Mutex::new(None),
                next_pub: AtomicU64::new(0),
                closed: std::sync::atomic::AtomicBool::new(false),
                next_partition: AtomicU32::new(0),
                last_stamp: AtomicI64::new(i64::MIN),
                replayed: AtomicU64::new(0),
            }),
        };
        engine.session().await?;
        // Reconnects in the background after the connection is lost, so `/readyz` recovers
        // without waiting for a request to try.
        let weak = Arc::downgrade(&engine.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECONNECT_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.closed.load(Ordering::Acquire) {
                    return;
                }
                let engine = Self { inner };
                let _ = engine.session().await;
            }
        });
        Ok(engine)
    }

    /// How many records of Wharf's state streams (settings, subscriptions) this engine read
    /// when it opened them: with snapshots, about what was written since the newest one.
    pub fn replayed(&self) -> u64 {
        self.inner.replayed.load(Ordering::Relaxed)
    }

    /// The AMQP URL, password hidden.
    pub fn url(&self) -> String {
        redact(&self.inner.config.url)
    }

    /// Deletes every topic's streams and the settings stream under this engine's prefix
    /// (tests use a prefix of their own and clean up with this).
    pub async fn destroy_everything(&self) -> Result<()> {
        let s = self.session().await?;
        s.meta.sync().await?;
        for (name, t) in s.meta.topics() {
            for p in 0..t.config.partitions {
                self.delete_queue(&s, &self.stream(&name, t.generation, p))
                    .await?;
            }
            for (sub, state) in &t.subs {
                let queue = self.sub_stream(&name, t.generation, sub, state.generation);
                self.delete_queue(&s, &rsm::snap_queue(&queue)).await?;
                self.delete_queue(&s, &queue).await?;
            }
        }
        self.delete_queue(&s, &rsm::snap_queue(&self.meta_queue()))
            .await?;
        self.delete_queue(&s, &self.meta_queue()).await?;
        self.inner.closed.store(true, Ordering::Release);
        let _ = s.conn.close(200, "destroyed".into()).await;
        *self.inner.session.lock().await = None;
        Ok(())
    }

    fn meta_queue(&self) -> String {
        format!("{}.meta", self.inner.config.prefix)
    }

    fn stream(&self, topic: &str, generation: u64, p: u32) -> String {
        format!("{}.t.{topic}.{generation}.{p}", self.inner.config.prefix)
    }

    /// The state stream of subscription `sub` (of that generation) of `topic`.
    fn sub_stream(&self, topic: &str, topic_generation: u64, sub: &str, generation: u64) -> String {
        format!(
            "{}.s.{topic}.{topic_generation}.{sub}.{generation}",
            self.inner.config.prefix
        )
    }

    /// The live session, connecting (again) if there is none or it was lost.
    async fn session(&self) -> Result<Arc<Session>> {
        let mut slot = self.inner.session.lock().await;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        if let Some(s) = slot.as_ref()
            && s.alive()
        {
            return Ok(s.clone());
        }
        *slot = None;
        // Opening reads the settings stream from its start: a budget of its own.
        let timeout = self.inner.config.timeout + meta::OPEN_BUDGET;
        let s = tokio::time::timeout(timeout, self.open_session())
            .await
            .map_err(|_| {
                unavailable(
                    &format!("connecting to {}", redact(&self.inner.config.url)),
                    "timed out",
                )
            })??;
        let s = Arc::new(s);
        *slot = Some(s.clone());
        *self.inner.current.lock().expect("current session") = Some(s.clone());
        Ok(s)
    }

    async fn open_session(&self) -> Result<Session> {
        let url = &self.inner.config.url;
        let conn = Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name(
                format!("wharf {} {}", self.inner.config.prefix, self.inner.node).into(),
            ),
        )
        .await
        .map_err(|e| unavailable(&format!("cannot connect to {}", redact(url)), e))?;
        let publish = amqp::confirm_channel(&conn).await?;
        let mut publishers = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            publishers.push(amqp::confirm_channel(&conn).await?);
        }
        let meta = Meta::open(
            &conn,
            self.meta_queue(),
            self.inner.node.clone(),
            self.inner.config.timeout,
            self.snapshot_policy(),
        )
        .await?;
        self.inner
            .replayed
            .fetch_add(meta.applied(), Ordering::Relaxed);
        Ok(Session {
            conn,
            publish,
            publishers,
            next_publisher: AtomicUsize::new(0),
            sending: tokio::sync::Mutex::new(()),
            meta,
            watchers: Mutex::new(HashMap::new()),
            fresh: Mutex::new(HashSet::new()),
            dedup_locks: Mutex::new(HashMap::new()),
            attach: tokio::sync::Mutex::new(()),
            starts: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            sub_attach: Mutex::new(HashMap::new()),
            cursors: Mutex::new(Vec::new()),
        })
    }

    fn snapshot_policy(&self) -> rsm::Policy {
        rsm::Policy {
            every: self.inner.config.snapshot_every.max(1),
            ..rsm::Policy::default()
        }
    }

    fn stamp(&self) -> i64 {
        let now = self.inner.config.clock.now_ms();
        let prev = self.inner.last_stamp.fetch_max(now, Ordering::AcqRel);
        now.max(prev)
    }

    fn next_pub(&self) -> String {
        format!(
            "{}.{}",
            self.inner.node,
            self.inner.next_pub.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A topic users may see (not a subscription's hidden retry topic).
    async fn public_topic(&self, s: &Session, name: &str) -> Result<TopicState> {
        match self.require_topic(s, name).await? {
            t if t.role == Role::Retry => Err(BrokerError::TopicNotFound(name.to_owned())),
            t => Ok(t),
        }
    }

    /// The topic's state: this node's view, or after a sync if the view does not have it.
    async fn require_topic(&self, s: &Session, name: &str) -> Result<TopicState> {
        if let Some(t) = s.meta.topic(name) {
            return Ok(t);
        }
        s.meta.sync().await?;
        s.meta
            .topic(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_owned()))
    }

    fn stream_args(config: &TopicConfig) -> FieldTable {
        let mut args = vec![
            ("x-queue-type", AMQPValue::LongString("stream".into())),
            (
                "x-stream-max-segment-size-bytes",
                AMQPValue::LongLongInt(i64::try_from(config.segment_bytes).unwrap_or(i64::MAX)),
            ),
        ];
        if let Some(ms) = config.retention_ms {
            args.push((
                "x-max-age",
                AMQPValue::LongString(format!("{}s", ms.div_ceil(1000).max(1)).into()),
            ));
        }
        if let Some(bytes) = config.retention_bytes {
            args.push((
                "x-max-length-bytes",
                AMQPValue::LongLongInt(i64::try_from(bytes).unwrap_or(i64::MAX)),
            ));
        }
        amqp::table(args)
    }

    async fn declare_stream(&self, s: &Session, queue: &str, config: &TopicConfig) -> Result<()> {
        // A channel of its own: a refused declare (arguments changed by hand, a policy)
        // closes the channel it was made on.
        let ch = s
            .conn
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        let r = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                Self::stream_args(config),
            )
            .await;
        let _ = ch.close(200, "done".into()).await;
        r.map(|_| ())
            .map_err(|e| unavailable(&format!("declaring the stream {queue}"), e))
    }

    async fn delete_queue(&self, s: &Session, queue: &str) -> Result<()> {
        // A channel of its own: deleting a queue that is not there closes the channel.
        let ch = s
            .conn
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        let r = ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        let _ = ch.close(200, "done".into()).await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("NOT_FOUND") => Ok(()),
            Err(e) => Err(unavailable(&format!("deleting the stream {queue}"), e)),
        }
    }

    /// This node's watcher of a partition, started (and caught up) if it has none.
    async fn watcher(
        &self,
        s: &Session,
        topic: &str,
        t: &TopicState,
        p: u32,
    ) -> Result<Arc<Watcher>> {
        let queue = self.stream(topic, t.generation, p);
        if let Some(w) = s.watchers.lock().expect("watchers").get(&queue)
            && !w.progress().failed
        {
            return Ok(w.clone());
        }
        let _attaching = s.attach.lock().await;
        if let Some(w) = s.watchers.lock().expect("watchers").get(&queue)
            && !w.progress().failed
        {
            return Ok(w.clone());
        }
        // This node's view may lag a delete by another node: declaring the stream of a topic
        // deleted meanwhile would bring it back. Attaching is rare; a sync settles it.
        s.meta.sync().await?;
        if s.meta
            .topic(topic)
            .is_none_or(|now| now.generation != t.generation)
        {
            return Err(BrokerError::TopicNotFound(topic.to_owned()));
        }
        // Idempotent: the creating node may not have declared it yet (or crashed before).
        amqp::timed(
            self.inner.config.timeout,
            "declaring a stream",
            self.declare_stream(s, &queue, &t.config),
        )
        .await?;
        let fresh = s.fresh.lock().expect("fresh").remove(&queue);
        let window = t.config.dedup_window_ms;
        let (start, fence) = if fresh {
            (Start::First, None)
        } else {
            // Far enough back for the dedup window (on RabbitMQ's clock, with a minute to
            // spare for clocks that differ).
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let back = window.div_ceil(1000) + 60;
            (
                Start::TimestampSecs(now.saturating_sub(back)),
                Some(self.next_pub()),
            )
        };
        let reader = amqp::timed(
            self.inner.config.timeout,
            "opening a stream reader",
            StreamReader::open(&s.conn, &queue, start, 1000),
        )
        .await?;
        let w = Arc::new(Watcher::start(reader, fence.clone(), window));
        if let Some(fence) = fence {
            self.write_fence(s, &queue, &w, fence).await?;
            if !w.progress().ready {
                return Err(unavailable(
                    &format!("reading {queue}"),
                    "the watcher missed its fence",
                ));
            }
        }
        s.watchers
            .lock()
            .expect("watchers")
            .insert(queue, w.clone());
        Ok(w)
    }

    /// Writes a fence record with id `fence` to `queue` and waits until `w` has read it:
    /// `w`'s progress then holds everything acknowledged before. Returns the fence's offset.
    async fn write_fence(
        &self,
        s: &Session,
        queue: &str,
        w: &Watcher,
        fence: String,
    ) -> Result<u64> {
        let seen = w.expect(fence.clone());
        let sent = async {
            s.publish
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &[],
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_type(watch::FENCE.into())
                        .with_message_id(fence.as_str().into()),
                )
                .await
                .map_err(|e| unavailable(&format!("writing a fence to {queue}"), e))?
                .await
                .map_err(|e| unavailable(&format!("writing a fence to {queue}"), e))
        };
        let confirm = amqp::timed(self.inner.config.timeout, "writing a fence", sent).await;
        if !matches!(confirm, Ok(Confirmation::Ack(None))) {
            w.forget(&fence);
            return Err(confirm.err().unwrap_or_else(|| {
                unavailable(
                    &format!("writing a fence to {queue}"),
                    "RabbitMQ refused it",
                )
            }));
        }
        match tokio::time::timeout(self.inner.config.timeout, seen).await {
            Ok(Ok(offset)) => Ok(offset),
            _ => {
                w.forget(&fence);
                Err(unavailable(
                    &format!("reading {queue}"),
                    "the fence written did not come back in time",
                ))
            }
        }
    }

    /// The first message at or after `from` (fences skipped), if any before `end`.
    async fn first_from(
        &self,
        s: &Session,
        queue: &str,
        p: u32,
        from: Start,
        end: u64,
    ) -> Result<Option<StoredMessage>> {
        let mut reader = amqp::timed(
            self.inner.config.timeout,
            "opening a stream reader",
            StreamReader::open(&s.conn, queue, from, 16),
        )
        .await?;
        let timeout = self.inner.config.timeout;
        let result: Result<Option<StoredMessage>> = async {
            loop {
                let Some(d) = reader.next(timeout).await? else {
                    return Err(unavailable(
                        &format!("reading {queue}"),
                        "messages below the high watermark did not arrive in time",
                    ));
                };
                let tag = d.delivery_tag;
                let Some(offset) =
                    amqp::header_u64(d.properties.headers().as_ref(), "x-stream-offset")
                else {
                    reader.ack_up_to(tag).await?;
                    continue;
                };
                if offset >= end {
                    return Ok(None);
                }
                match decode(p, offset, d) {
                    Read::Data(m) => return Ok(Some(m)),
                    Read::Fence if offset + 1 >= end => return Ok(None),
                    // Credit back for what is skipped, or a run of fences stalls the reader.
                    Read::Fence => reader.ack_up_to(tag).await?,
                }
            }
        }
        .await;
        reader.close().await;
        result
    }

    /// The first offset the stream still holds (probed; trusted for a second).
    async fn start_offset(&self, s: &Session, queue: &str, end: u64) -> Result<u64> {
        if end == 0 {
            return Ok(0);
        }
        if let Some(&(start, at)) = s.starts.lock().expect("starts").get(queue)
            && at.elapsed() < START_CACHE
        {
            return Ok(start);
        }
        let mut reader = amqp::timed(
            self.inner.config.timeout,
            "opening a stream reader",
            StreamReader::open(&s.conn, queue, Start::First, 1),
        )
        .await?;
        let first = reader.next(self.inner.config.timeout).await;
        reader.close().await;
        // The stream holds messages below `end`: no answer is a RabbitMQ that does not
        // answer, not an empty stream.
        let start = first?
            .and_then(|d| amqp::header_u64(d.properties.headers().as_ref(), "x-stream-offset"))
            .ok_or_else(|| unavailable(&format!("reading {queue}"), "no first message in time"))?
            .min(end);
        s.starts
            .lock()
            .expect("starts")
            .insert(queue.to_owned(), (start, Instant::now()));
        Ok(start)
    }

    /// The first offset whose message is at or after `t` (the end if none), by binary
    /// search over the messages' Wharf timestamps.
    async fn offset_for_time(
        &self,
        s: &Session,
        queue: &str,
        p: u32,
        start: u64,
        end: u64,
        t: i64,
    ) -> Result<u64> {
        let (mut lo, mut hi) = (start, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.first_from(s, queue, p, Start::Offset(mid), hi).await? {
                Some(m) if m.timestamp >= t => hi = mid,
                Some(m) => lo = m.offset + 1,
                None => hi = mid,
            }
        }
        Ok(lo)
    }

    async fn partition_info(
        &self,
        s: &Session,
        topic: &str,
        t: &TopicState,
        p: u32,
    ) -> Result<PartitionInfo> {
        let w = self.watcher(s, topic, t, p).await?;
        let end = w.progress().end;
        let start = self
            .start_offset(s, &self.stream(topic, t.generation, p), end)
            .await?;
        Ok(PartitionInfo {
            partition: p,
            start_offset: start,
            high_watermark: end,
        })
    }

    async fn info(&self, s: &Session, name: &str, t: &TopicState) -> Result<TopicInfo> {
        let mut partitions = Vec::with_capacity(t.config.partitions as usize);
        for p in 0..t.config.partitions {
            partitions.push(self.partition_info(s, name, t, p).await?);
        }
        Ok(TopicInfo {
            name: name.to_owned(),
            config: t.config.clone(),
            partitions,
        })
    }

    /// Publishes to `topic`; `internal` publishes (dead letters, redrive) may write the
    /// topics Wharf keeps for a subscription.
    async fn publish_inner(
        &self,
        topic: &str,
        messages: Vec<Message>,
        options: PublishOptions,
        internal: bool,
    ) -> Result<Vec<Published>> {
        let s = self.session().await?;
        let t = if internal {
            self.require_topic(&s, topic).await?
        } else {
            let t = self.public_topic(&s, topic).await?;
            if t.role != Role::Topic {
                return Err(BrokerError::invalid(
                    "topic",
                    format!(
                        "{topic:?} is a dead-letter topic: only its subscription writes to it \
                         (redrive puts its messages back)"
                    ),
                ));
            }
            t
        };
        let config = &t.config;
        // Internal publishes carry stored messages (dead letters, redriven copies): checked
        // when they were first published; their Wharf headers may exceed a user's limits.
        if !internal {
            wharf_broker::check::publish(&messages, config)?;
        }
        let routes = messages
            .iter()
            .map(|m| {
                wharf_broker::check::route(m, topic, config.partitions, &self.inner.next_partition)
            })
            .collect::<Result<Vec<u32>>>()?;
        let unshared = wharf_broker::check::unshared(&messages, &options.shared_headers, config);
        let dedup = config.dedup_window_ms > 0 && messages.iter().any(|m| m.id().is_some());
        // An id is looked up in every partition (the id alone decides, whatever the key or
        // partition of the retry), so a publish with ids watches them all.
        // By partition: an id is looked up in partition order, so every node answers alike.
        let mut watchers: std::collections::BTreeMap<u32, Arc<Watcher>> =
            std::collections::BTreeMap::new();
        let needed: Vec<u32> = if dedup {
            (0..config.partitions).collect()
        } else {
            routes.clone()
        };
        for p in needed {
            if let std::collections::btree_map::Entry::Vacant(slot) = watchers.entry(p) {
                slot.insert(self.watcher(&s, topic, &t, p).await?);
            }
        }
        // Publishes with ids take the topic's dedup lock: the check and the store cannot
        // interleave with another such publish on this node.
        let _dedup_guard = if dedup {
            let lock = s
                .dedup_locks
                .lock()
                .expect("dedup locks")
                .entry((topic.to_owned(), t.generation))
                .or_default()
                .clone();
            Some(lock.lock_owned().await)
        } else {
            None
        };
        let stamp = self.stamp();
        let window = i64::try_from(config.dedup_window_ms).unwrap_or(i64::MAX);
        enum Plan {
            Send,
            Duplicate(u64, i64),
            SameAs(usize),
        }
        let mut plans = Vec::with_capacity(messages.len());
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut routes = routes;
        for (i, m) in messages.iter().enumerate() {
            let plan = match m.id().filter(|_| dedup) {
                Some(id) => {
                    let earlier = watchers
                        .iter()
                        .find_map(|(&q, w)| w.lookup(id, stamp - window).map(|(o, ts)| (q, o, ts)));
                    if let Some((q, offset, ts)) = earlier {
                        routes[i] = q;
                        Plan::Duplicate(offset, ts)
                    } else if let Some(&j) = first_of.get(id) {
                        routes[i] = routes[j];
                        Plan::SameAs(j)
                    } else {
                        first_of.insert(id, i);
                        Plan::Send
                    }
                }
                None => Plan::Send,
            };
            plans.push(plan);
        }
        // Encode everything, then hand every message to the connection at once (lapin queues
        // a publish's frames when its future is first polled, so `join_all` keeps the input
        // order), then wait for the confirms and the offsets.
        let mut outgoing = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            if !matches!(plans[i], Plan::Send) {
                continue;
            }
            let shared: &[(String, String)] = if unshared.binary_search(&i).is_ok() {
                &[]
            } else {
                &options.shared_headers
            };
            let body = envelope::encode(stamp, m.key.as_deref(), &m.headers, shared, &m.value);
            let pub_id = self.next_pub();
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(watch::ENVELOPE.into())
                .with_message_id(pub_id.as_str().into());
            if dedup && let Some(id) = m.id() {
                properties = properties.with_headers(amqp::table(vec![(
                    watch::ID,
                    AMQPValue::LongString(id.into()),
                )]));
            }
            outgoing.push((i, pub_id, body, properties));
        }
        let queues: Vec<String> = (0..config.partitions)
            .map(|p| self.stream(topic, t.generation, p))
            .collect();
        let mut seen = Vec::with_capacity(outgoing.len());
        for (i, pub_id, _, _) in &outgoing {
            seen.push(watchers[&routes[*i]].expect(pub_id.clone()));
        }
        // One channel for the whole call: its messages keep their order.
        let channel =
            &s.publishers[s.next_publisher.fetch_add(1, Ordering::Relaxed) % s.publishers.len()];
        let sends = outgoing.iter().map(|(i, _, body, properties)| {
            channel.basic_publish(
                "".into(),
                queues[routes[*i] as usize].as_str().into(),
                // Mandatory: a stream deleted meanwhile returns the message instead of
                // dropping it with an ack.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties.clone(),
            )
        });
        let sent = {
            let _sending = s.sending.lock().await;
            tokio::time::timeout(
                self.inner.config.timeout,
                futures_util::future::join_all(sends),
            )
            .await
        };
        let Ok(sent) = sent else {
            for (i, pub_id, _, _) in &outgoing {
                watchers[&routes[*i]].forget(pub_id);
            }
            return Err(unavailable(
                &format!("publishing to {topic}"),
                "RabbitMQ did not take the messages in time (some may be stored)",
            ));
        };
        let mut pending = Vec::with_capacity(outgoing.len());
        let mut send_error = None;
        for (((i, pub_id, _, _), sent), seen) in outgoing.into_iter().zip(sent).zip(seen) {
            match sent {
                Ok(confirm) if send_error.is_none() => pending.push((i, pub_id, confirm, seen)),
                Ok(_) => watchers[&routes[i]].forget(&pub_id),
                Err(e) => {
                    watchers[&routes[i]].forget(&pub_id);
                    send_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = send_error {
            for (j, id, _, _) in &pending {
                watchers[&routes[*j]].forget(id);
            }
            return Err(unavailable(
                &format!("publishing to {topic} (some messages may be stored)"),
                e,
            ));
        }
        let timeout = self.inner.config.timeout;
        let mut offsets: HashMap<usize, u64> = HashMap::with_capacity(pending.len());
        let mut failure = None;
        for (i, pub_id, confirm, seen) in pending {
            let w = &watchers[&routes[i]];
            if failure.is_some() {
                w.forget(&pub_id);
                continue;
            }
            let Ok(confirm) = tokio::time::timeout(timeout, confirm).await else {
                failure = Some(unavailable(
                    &format!("publishing to {topic}"),
                    format!("no publisher confirm within {timeout:?}"),
                ));
                w.forget(&pub_id);
                continue;
            };
            match confirm {
                Ok(Confirmation::Ack(None)) => {}
                Ok(Confirmation::Ack(Some(_))) => {
                    // Returned: the stream is gone. The topic was deleted (or is being).
                    w.forget(&pub_id);
                    s.watchers.lock().expect("watchers").retain(|q, _| {
                        !q.starts_with(&format!(
                            "{}.t.{topic}.{}.",
                            self.inner.config.prefix, t.generation
                        ))
                    });
                    // (No early return: the remaining messages' waiters must be forgotten.)
                    failure = Some(match s.meta.sync().await.map(|()| s.meta.topic(topic)) {
                        Err(e) => e,
                        Ok(Some(now)) if now.generation == t.generation => unavailable(
                            &format!("publishing to {topic}"),
                            "a partition's stream is missing",
                        ),
                        Ok(_) => BrokerError::TopicNotFound(topic.to_owned()),
                    });
                    continue;
                }
                Ok(_) => {
                    failure = Some(unavailable(
                        &format!("publishing to {topic}"),
                        "RabbitMQ refused a message (negative confirm)",
                    ));
                    w.forget(&pub_id);
                    continue;
                }
                Err(e) => {
                    failure = Some(unavailable(&format!("publishing to {topic}"), e));
                    w.forget(&pub_id);
                    continue;
                }
            }
            match tokio::time::timeout(timeout, seen).await {
                Ok(Ok(offset)) => {
                    offsets.insert(i, offset);
                }
                _ => {
                    w.forget(&pub_id);
                    failure = Some(unavailable(
                        &format!("publishing to {topic}"),
                        "a confirmed message was not read back in time (its offset is unknown)",
                    ));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let mut out = Vec::with_capacity(messages.len());
        for (i, plan) in plans.iter().enumerate() {
            let p = routes[i];
            out.push(match *plan {
                Plan::Send => Published {
                    partition: p,
                    offset: offsets[&i],
                    timestamp: stamp,
                    duplicate: false,
                },
                Plan::Duplicate(offset, ts) => Published {
                    partition: p,
                    offset,
                    timestamp: ts,
                    duplicate: true,
                },
                Plan::SameAs(j) => Published {
                    partition: p,
                    offset: offsets[&j],
                    timestamp: stamp,
                    duplicate: true,
                },
            });
        }
        Ok(out)
    }

    /// Reads stream `queue` (partition `p`'s messages) from `from` up to `end`: at most
    /// `max` messages and about `max_bytes` (whole messages, at least one). Fences are
    /// skipped; returns the messages and the offset after the last one looked at.
    ///
    /// Reads continue on a [`Cursor`] left by an earlier read that ended at `from` (a
    /// consumer fetching on, a receive filling its window), so a read is usually no more than
    /// the deliveries RabbitMQ has already pushed.
    #[allow(clippy::too_many_arguments)]
    async fn read_range(
        &self,
        s: &Session,
        queue: &str,
        p: u32,
        from: u64,
        end: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredMessage>, u64)> {
        self.read_range_with(s, queue, p, (from, end), max, max_bytes, true)
            .await
    }

    /// [`RabbitEngine::read_range`]; `keep` says whether the cursor is kept for a read that
    /// continues (not for one-off reads of scattered messages: they would crowd the pool).
    #[allow(clippy::too_many_arguments)]
    async fn read_range_with(
        &self,
        s: &Session,
        queue: &str,
        p: u32,
        (from, end): (u64, u64),
        max: usize,
        max_bytes: usize,
        keep: bool,
    ) -> Result<(Vec<StoredMessage>, u64)> {
        if from >= end {
            return Ok((Vec::new(), from));
        }
        let max = max.max(1);
        let max_bytes = max_bytes.clamp(1, MAX_READ_BYTES);
        let mut cur = match s.take_cursor(queue, from) {
            Some(c) => c,
            None => Cursor {
                reader: amqp::timed(
                    self.inner.config.timeout,
                    "opening a stream reader",
                    StreamReader::open(&s.conn, queue, Start::Offset(from), CURSOR_PREFETCH),
                )
                .await?,
                queue: queue.to_owned(),
                next: from,
                pending: None,
                unacked: 0,
                used: Instant::now(),
                largest: 0,
            },
        };
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let mut next = from;
        let timeout = self.inner.config.timeout;
        let outcome: Result<()> = async {
            while next < end && messages.len() < max {
                let d = match cur.pending.take() {
                    Some(d) => d,
                    None => {
                        let Some(d) = cur.reader.next(timeout).await? else {
                            return Err(unavailable(
                                &format!("reading {queue}"),
                                "messages below the high watermark did not arrive in time",
                            ));
                        };
                        cur.unacked += 1;
                        // Credit back as it goes: fences and skipped messages take credit too.
                        if cur.unacked * 2 >= u32::from(CURSOR_PREFETCH) {
                            cur.reader.ack_up_to(d.delivery_tag).await?;
                            cur.unacked = 0;
                        }
                        d
                    }
                };
                let Some(offset) =
                    amqp::header_u64(d.properties.headers().as_ref(), "x-stream-offset")
                else {
                    continue;
                };
                if offset < from {
                    continue;
                }
                if offset >= end {
                    // Nothing readable is left below the end (retention, fences); this one
                    // is the next read's.
                    cur.pending = Some(d);
                    next = end;
                    break;
                }
                if !messages.is_empty() && bytes + d.data.len() > max_bytes {
                    cur.pending = Some(d);
                    break;
                }
                bytes += d.data.len();
                cur.largest = cur.largest.max(d.data.len() as u64);
                if let Read::Data(m) = decode(p, offset, d) {
                    messages.push(m);
                }
                next = offset + 1;
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                cur.next = next;
                if keep {
                    s.put_cursor(cur);
                } else {
                    tokio::spawn(cur.reader.close());
                }
                Ok((messages, next))
            }
            Err(e) => {
                tokio::spawn(cur.reader.close());
                Err(e)
            }
        }
    }

    async fn read_inner(&self, topic: &str, request: ReadRequest) -> Result<ReadResult> {
        let s = self.session().await?;
        let t = self.public_topic(&s, topic).await?;
        let p = request.partition;
        if p >= t.config.partitions {
            return Err(BrokerError::PartitionNotFound {
                topic: topic.to_owned(),
                partition: p,
                partitions: t.config.partitions,
            });
        }
        let queue = self.stream(topic, t.generation, p);
        let w = self.watcher(&s, topic, &t, p).await?;
        let mut end = w.progress().end;
        let start = self.start_offset(&s, &queue, end).await?;
        if let Position::Offset(o) = request.from
            && o > end
            && !request.wait.is_zero()
        {
            // Published through another node and not read here yet? A waiting read gives
            // this node's watcher the time to catch up before the offset is judged.
            end = w
                .wait_for(request.wait, |pr| pr.end >= o || pr.failed)
                .await
                .end;
        }
        let (from, skipped_to) = match request.from {
            Position::Earliest => (start, None),
            Position::Latest => (end, None),
            Position::Timestamp(ts) => (
                self.offset_for_time(&s, &queue, p, start, end, ts).await?,
                None,
            ),
            Position::Offset(o) if o < start => (start, Some(start)),
            Position::Offset(o) if o > end => {
                return Err(BrokerError::OffsetOutOfRange {
                    topic: topic.to_owned(),
                    partition: p,
                    requested: o,
                    start,
                    end,
                });
            }
            Position::Offset(o) => (o, None),
        };
        let empty = |next: u64, end: u64| ReadResult {
            messages: Vec::new(),
            next_offset: next,
            start_offset: start,
            high_watermark: end,
            skipped_to,
        };
        if from >= end {
            if request.wait.is_zero() {
                return Ok(empty(from, end));
            }
            let progress = w
                .wait_for(request.wait, |pr| pr.end > from || pr.failed)
                .await;
            end = progress.end;
            if from >= end {
                return Ok(empty(from, end));
            }
        }
        let (messages, next) = self
            .read_range(
                &s,
                &queue,
                p,
                from,
                end,
                request.max_messages,
                request.max_bytes,
            )
            .await?;
        Ok(ReadResult {
            messages,
            next_offset: next,
            start_offset: start,
            high_watermark: end,
            skipped_to,
        })
    }

    async fn create_topic_inner(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        let s = self.session().await?;
        // Creates are rare: decide on a fresh view (the topic may have been deleted or
        // created through another node a moment ago).
        s.meta.sync().await?;
        let existing = match s.meta.topic(name) {
            Some(t) => Some(t),
            None => {
                let offset = s
                    .meta
                    .append(Change::CreateTopic {
                        name: name.to_owned(),
                        config: config.clone(),
                        created_ms: self.inner.config.clock.now_ms(),
                    })
                    .await?;
                match s.meta.topic(name) {
                    Some(t) if t.generation == offset => {
                        // Ours: declare its streams; this node's watchers start at their
                        // beginning (nothing can be in them before they exist).
                        for p in 0..config.partitions {
                            let queue = self.stream(name, offset, p);
                            amqp::timed(
                                self.inner.config.timeout,
                                "declaring a stream",
                                self.declare_stream(&s, &queue, &config),
                            )
                            .await?;
                            s.fresh.lock().expect("fresh").insert(queue);
                        }
                        return self.info(&s, name, &t).await;
                    }
                    other => other,
                }
            }
        };
        match existing {
            Some(t) if t.config == config => self.info(&s, name, &t).await,
            Some(_) => Err(BrokerError::TopicExists(name.to_owned())),
            // Created and deleted again by others meanwhile.
            None => Err(unavailable(
                &format!("creating {name}"),
                "the topic was deleted while it was created; try again",
            )),
        }
    }

    async fn delete_topic_inner(&self, name: &str) -> Result<()> {
        let s = self.session().await?;
        let t = self.public_topic(&s, name).await?;
        if let Role::DeadLetters { topic, sub } = &t.role {
            return Err(BrokerError::invalid(
                "topic",
                format!(
                    "{name:?} is the dead-letter topic of subscription {sub:?} of {topic:?}: \
                     it goes when the subscription is deleted"
                ),
            ));
        }
        s.meta
            .append(Change::DeleteTopic {
                name: name.to_owned(),
                generation: t.generation,
            })
            .await?;
        for (sub, state) in &t.subs {
            self.drop_subscription_streams(&s, name, &t, sub, state)
                .await?;
        }
        self.drop_topic_streams(&s, name, &t).await
    }

    /// Deletes a topic's streams (its settings record is gone already).
    async fn drop_topic_streams(&self, s: &Session, name: &str, t: &TopicState) -> Result<()> {
        s.dedup_locks
            .lock()
            .expect("dedup locks")
            .remove(&(name.to_owned(), t.generation));
        for p in 0..t.config.partitions {
            let queue = self.stream(name, t.generation, p);
            s.watchers.lock().expect("watchers").remove(&queue);
            s.fresh.lock().expect("fresh").remove(&queue);
            amqp::timed(
                self.inner.config.timeout,
                "deleting a stream",
                self.delete_queue(s, &queue),
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Engine for RabbitEngine {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            stream_subscriptions: Support::Wharf,
            shared_subscriptions: Support::Wharf,
            dead_letters: Support::Wharf,
            delays: Support::Wharf,
            dedup: Support::Wharf,
            time_lookup: Support::Wharf,
            retention: Support::Native,
        }
    }

    fn health(&self) -> Health {
        let current = self.inner.current.lock().expect("current session").clone();
        match current {
            Some(s) if s.alive() => Health {
                writable: true,
                reason: None,
            },
            _ => Health {
                writable: false,
                reason: Some("rabbitmq: not connected".into()),
            },
        }
    }

    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        wharf_broker::names::validate("topic", name, false)?;
        config.validate()?;
        self.create_topic_inner(name, config).await
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let s = self.session().await?;
        let t = self.public_topic(&s, name).await?;
        self.info(&s, name, &t).await.map_err(amqp::for_topic(name))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let s = self.session().await?;
        s.meta.sync().await?;
        let mut out = Vec::new();
        for (name, t) in s.meta.topics() {
            if t.role != Role::Retry {
                out.push(self.info(&s, &name, &t).await?);
            }
        }
        Ok(out)
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        self.delete_topic_inner(name).await
    }

    async fn max_message_bytes(&self, name: &str) -> Result<u64> {
        let s = self.session().await?;
        Ok(self.public_topic(&s, name).await?.config.max_message_bytes)
    }

    async fn publish_with(
        &self,
        topic: &str,
        messages: Vec<Message>,
        options: PublishOptions,
    ) -> Result<Vec<Published>> {
        self.publish_inner(topic, messages, options, false)
            .await
            .map_err(amqp::for_topic(topic))
    }

    async fn read(&self, topic: &str, request: ReadRequest) -> Result<ReadResult> {
        self.read_inner(topic, request)
            .await
            .map_err(amqp::for_topic(topic))
    }

    async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo> {
        wharf_broker::names::validate("subscription", name, false)?;
        config.validate()?;
        self.create_subscription_inner(topic, name, config)
            .await
            .map_err(amqp::for_topic(topic))
    }

    async fn describe_subscription(&self, topic: &str, name: &str) -> Result<SubscriptionInfo> {
        self.describe_subscription_inner(topic, name)
            .await
            .map_err(amqp::for_topic(topic))
    }

    async fn list_subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>> {
        self.list_subscriptions_inner(topic)
            .await
            .map_err(amqp::for_topic(topic))
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<()> {
        self.delete_subscription_inner(topic, name).await
    }

    async fn join(&self, topic: &str, sub: &str, member: Option<&str>) -> Result<Membership> {
        self.join_inner(topic, sub, member).await
    }

    async fn heartbeat(&self, topic: &str, sub: &str, member: &str) -> Result<Membership> {
        self.heartbeat_inner(topic, sub, member).await
    }

    async fn leave(&self, topic: &str, sub: &str, member: &str) -> Result<()> {
        self.leave_inner(topic, sub, member).await
    }

    async fn fetch(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        request: FetchRequest,
    ) -> Result<Vec<StoredMessage>> {
        self.fetch_inner(topic, sub, member, request)
            .await
            .map_err(amqp::for_topic(topic))
    }

    async fn commit(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        offsets: Vec<Committed>,
    ) -> Result<Vec<Committed>> {
        self.commit_inner(topic, sub, member, offsets).await
    }

    async fn reset(&self, topic: &str, sub: &str, to: ResetTo) -> Result<Vec<Committed>> {
        self.reset_inner(topic, sub, to)
            .await
            .map_err(amqp::for_topic(topic))
    }

    async fn receive(
        &self,
        topic: &str,
        sub: &str,
        request: ReceiveRequest,
    ) -> Result<Vec<Delivery>> {
        self.receive_inner(topic, sub, request)
            .await
            .map_err(amqp::for_topic(topic))
    }

    async fn ack(&self, topic: &str, sub: &str, ack_ids: &[String]) -> Result<Vec<AckOutcome>> {
        self.settle(topic, sub, ack_ids, shared::Settle::Ack).await
    }

    async fn nack(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        delay_ms: Option<u64>,
    ) -> Result<Vec<AckOutcome>> {
        let delay = delay_ms.map(|d| i64::try_from(d.min(7 * 86_400_000)).unwrap_or(0));
        self.settle(topic, sub, ack_ids, shared::Settle::Nack { delay })
            .await
    }

    async fn extend(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        lease_ms: u64,
    ) -> Result<Vec<AckOutcome>> {
        if !(100..=12 * 3_600_000).contains(&lease_ms) {
            return Err(BrokerError::invalid(
                "lease_ms",
                "must be within 100..=43200000",
            ));
        }
        let lease_ms = i64::try_from(lease_ms).unwrap_or(i64::MAX);
        self.settle(topic, sub, ack_ids, shared::Settle::Extend { lease_ms })
            .await
    }

    async fn terminate(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        reason: &str,
    ) -> Result<Vec<AckOutcome>> {
        let reason = if reason.is_empty() {
            "terminated"
        } else {
            reason
        };
        self.settle(
            topic,
            sub,
            ack_ids,
            shared::Settle::Terminate {
                reason: reason.chars().take(1000).collect(),
            },
        )
        .await
    }

    async fn dead_letters(
        &self,
        topic: &str,
        sub: &str,
        request: ReadRequest,
    ) -> Result<ReadResult> {
        self.dead_letters_inner(topic, sub, request).await
    }

    async fn redrive(&self, topic: &str, sub: &str, max: usize) -> Result<u64> {
        self.redrive_inner(topic, sub, max)
            .await
            .map_err(amqp::for_topic(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("wharf").is_ok());
        assert!(validate_prefix("w_1-x").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("Wharf").is_err());
        assert!(validate_prefix("a.b").is_err());
        assert!(validate_prefix(&"x".repeat(33)).is_err());
    }
}
