//! `wharf-engine-nats`: Wharf's [`Engine`] on NATS JetStream.
//!
//! Several `wharf serve` nodes on one NATS system are one Wharf: everything a node needs
//! lives in JetStream, so nodes keep no state of their own (DESIGN.md §3).
//!
//! # Mapping (docs/ENGINES.md has the capability matrix)
//! - A topic's settings live in the KV bucket `{prefix}_meta` under `topic.{name}`; the key is
//!   the topic's commit point (created first, deleted first).
//! - Each partition is its own stream `{prefix}_t_{name}_{p}` (subject `{prefix}.t.{name}.{p}`,
//!   file storage, limits retention), so a partition's offset is the stream sequence − 1 and
//!   offsets are dense. `retention_ms` and `retention_bytes` are the stream's `max_age` and
//!   `max_bytes` (per partition, as on the embedded engine); NATS applies them itself.
//! - A message is stored as an envelope in the payload ([`envelope`]: key, ordered headers,
//!   the publishing node's timestamp), marked by the NATS header `Wharf-Enc: 1`. Messages
//!   published by plain NATS clients on a partition's subject are read too: their payload
//!   is the value and their NATS headers the headers.
//! - Dedup is JetStream's: `wharf-message-id` becomes `Nats-Msg-Id` and the topic's window
//!   the stream's `duplicate_window`. JetStream deduplicates per stream, that is per
//!   partition, so a keyless message with an id is routed by the id's hash (its retries land
//!   where it did); a retry sent to another partition explicitly is stored again.
//! - Reads get messages by sequence; a read that waits listens on the partition's subject.
//! - Subscriptions live in the KV bucket too (`sub/{topic}/{name}`, `subs`). Stream
//!   subscriptions (consumer groups) are Wharf's: the group's members, generation, committed
//!   offsets and fetch positions in one KV document updated by compare-and-set (`groups`).
//!   Shared subscriptions are JetStream pull consumers with explicit acks, one per partition
//!   stream, plus a per-subscription redrive stream (`shared`).

mod cursor;
mod groups;
mod names;
mod shared;
mod subs;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::connection::State;
use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use wharf_broker::envelope;
use wharf_broker::{
    AckOutcome, BrokerError, Capabilities, Committed, Delivery, Engine, FetchRequest, Health,
    Membership, Message, Position, PublishOptions, Published, ReadRequest, ReadResult,
    ReceiveRequest, ResetTo, Result, StoredMessage, SubscriptionConfig, SubscriptionInfo, Support,
    TopicConfig, TopicInfo,
};
use wharf_log::Clock;

use crate::shared::Settle;

/// The longest a read waits for a publish.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most messages one read returns.
const MAX_READ_MESSAGES: usize = 10_000;
/// Most bytes one read returns (whole messages; at least one).
const MAX_READ_BYTES: usize = 16 * 1024 * 1024;
/// Publish acks one node awaits at once (see `connect`).
const MAX_ACKS_IN_FLIGHT: usize = 1 << 20;
/// Messages one publish sends before it awaits the oldest ack.
const PUBLISH_WINDOW: usize = 1024;
/// Message gets in flight at once during a read.
const READ_CONCURRENCY: usize = 64;

/// How to reach NATS and where Wharf keeps its objects there.
#[derive(Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated (`nats://127.0.0.1:4222`).
    pub url: String,
    /// Prefix of every stream, subject and bucket Wharf creates (`[A-Za-z0-9_-]`, 1–32
    /// characters). Nodes with the same prefix are one Wharf.
    pub prefix: String,
    /// Replicas of each stream (1 on a single server; 3 or 5 on a cluster).
    pub replicas: usize,
    /// How long connecting and each JetStream request may take.
    pub timeout: Duration,
    /// The clock stamped on published messages.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("replicas", &self.replicas)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// Defaults for `url`: prefix `wharf`, one replica, 5 s timeout, the system clock.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "wharf".into(),
            replicas: 1,
            timeout: Duration::from_secs(5),
            clock: Arc::new(wharf_log::SystemClock),
        }
    }
}

/// The engine on NATS JetStream. Cheap to clone.
#[derive(Clone)]
pub struct NatsEngine {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    meta: kv::Store,
    /// Extended lease deadlines (`{stream}.{consumer}.{seq}.{delivered}`) and settled markers
    /// (`done.` + the same) of shared deliveries.
    leases: kv::Store,
    names: names::Names,
    replicas: usize,
    clock: Arc<dyn Clock>,
    /// Round-robin counter for keyless messages without an id.
    next_partition: AtomicU32,
    /// The latest timestamp stamped, so this node's stamps never go back.
    last_stamp: AtomicI64,
    /// The NATS server's version, as it announced itself.
    server_version: String,
    /// Read cursors left where reads ended.
    cursors: cursor::Cursors,
}

impl std::fmt::Debug for NatsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEngine")
            .field("prefix", &self.inner.names.prefix())
            .field("server_version", &self.inner.server_version)
            .finish_non_exhaustive()
    }
}

/// Opens a KV bucket, creating its stream as `create_key_value` would, without the account
/// query whose answer from a 2.9 server this client version cannot parse.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
    max_bytes: Option<i64>,
    description: &str,
) -> Result<kv::Store> {
    // A server under load can fail a stream's creation once ("error creating store"): a few
    // tries before giving up.
    let mut tries = 0;
    while js.get_key_value(bucket).await.is_err() {
        tries += 1;
        let made = js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                description: Some(description.to_owned()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_bytes: max_bytes.unwrap_or(-1),
                max_messages: -1,
                max_age,
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                num_replicas: replicas.max(1),
                // A bounded bucket (the leases) forgets its oldest entries; the settings bucket
                // is unbounded and refuses nothing.
                discard: if max_bytes.is_some() {
                    stream::DiscardPolicy::Old
                } else {
                    stream::DiscardPolicy::New
                },
                duplicate_window: Duration::from_secs(120).min(if max_age.is_zero() {
                    Duration::MAX
                } else {
                    max_age
                }),
                ..stream::Config::default()
            })
            .await;
        match made {
            Ok(_) => break,
            Err(e) if tries >= 3 => {
                return Err(unavailable(&format!("creating the KV bucket {bucket}"), e));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200 * tries)).await,
        }
    }
    js.get_key_value(bucket)
        .await
        .map_err(|e| unavailable(&format!("opening the KV bucket {bucket}"), e))
}

async fn await_ack(
    ack: jetstream::context::PublishAckFuture,
    topic: &str,
) -> Result<jetstream::publish::PublishAck> {
    ack.await
        .map_err(|e| unavailable(&format!("publishing to {topic}"), e))
}

/// `engine_unavailable` with what failed.
fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::EngineUnavailable(format!("nats: {what}: {e}"))
}

/// Major and minor of a `2.9.10`-style version.
fn version_of(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

impl NatsEngine {
    /// Connects, checks that the server has JetStream (2.9 or newer), and opens or creates
    /// Wharf's metadata bucket. Fails with `engine_unavailable` and the reason when NATS
    /// cannot be reached or lacks what Wharf needs.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        let names = names::Names::new(&config.prefix)?;
        let client = async_nats::ConnectOptions::new()
            .name("wharf")
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout))
            .connect(config.url.as_str())
            .await
            .map_err(|e| unavailable(&format!("cannot connect to {}", config.url), e))?;
        let info = client.server_info();
        match version_of(&info.version) {
            Some(v) if v >= (2, 9) => {}
            _ => {
                return Err(BrokerError::EngineUnavailable(format!(
                    "nats: server {} at {} is too old: Wharf needs NATS 2.9 or newer",
                    info.version, config.url
                )));
            }
        }
        // Publish acks outstanding at once, over every publish of this node: a publish past it
        // fails (`engine_unavailable`, retryable) instead of waiting. Waiting would deadlock:
        // a permit is released only when its ack is awaited, and a publish awaits its acks
        // after it has sent (up to `PUBLISH_WINDOW` of) its messages.
        let js = jetstream::ContextBuilder::new()
            .timeout(config.timeout)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .backpressure_on_inflight(false)
            .build(client.clone());
        // `$JS.API.INFO` answers with the account's JetStream limits, or an error (or no
        // responder at all) when JetStream is off.
        let no_js = |why: String| {
            BrokerError::EngineUnavailable(format!(
                "nats: JetStream is not available on {} (start nats-server with -js): {why}",
                config.url
            ))
        };
        let answer = client
            .request("$JS.API.INFO", Bytes::new())
            .await
            .map_err(|e| no_js(e.to_string()))?;
        let js_info: serde_json::Value =
            serde_json::from_slice(&answer.payload).map_err(|e| no_js(e.to_string()))?;
        if let Some(error) = js_info.get("error") {
            return Err(no_js(error.to_string()));
        }
        let bucket = names.meta_bucket();
        let meta = open_bucket(
            &js,
            &bucket,
            config.replicas,
            Duration::ZERO,
            None,
            "Wharf's topic and subscription settings",
        )
        .await?;
        let leases = open_bucket(
            &js,
            &names.leases_bucket(),
            config.replicas,
            // Longer than any lease (12 h): an extension is only read while it can matter.
            Duration::from_secs(13 * 3600),
            // Extensions and settled markers are small; at 256 MiB the oldest go first.
            Some(256 * 1024 * 1024),
            "Wharf's extended leases",
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                meta,
                leases,
                names,
                replicas: config.replicas.max(1),
                clock: config.clock,
                next_partition: AtomicU32::new(0),
                last_stamp: AtomicI64::new(i64::MIN),
                server_version: info.version,
                cursors: cursor::Cursors::default(),
            }),
        })
    }

    /// The NATS server's version.
    pub fn server_version(&self) -> &str {
        &self.inner.server_version
    }

    /// Deletes every stream and the bucket under this engine's prefix (tests use a prefix
    /// of their own and clean up with this).
    pub async fn destroy_everything(&self) -> Result<()> {
        let prefix = format!("{}_", self.inner.names.prefix());
        let names: Vec<String> = self
            .inner
            .js
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| unavailable("listing streams", e))?;
        for name in names.into_iter().filter(|n| n.starts_with(&prefix)) {
            let _ = self.inner.js.delete_stream(&name).await;
        }
        for bucket in [
            self.inner.names.meta_bucket(),
            self.inner.names.leases_bucket(),
        ] {
            let _ = self.inner.js.delete_key_value(bucket).await;
        }
        Ok(())
    }

    fn stamp(&self) -> i64 {
        let now = self.inner.clock.now_ms();
        let prev = self.inner.last_stamp.fetch_max(now, Ordering::AcqRel);
        now.max(prev)
    }

    /// The topic's settings, if it exists.
    async fn topic_config(&self, name: &str) -> Result<Option<TopicConfig>> {
        if !names::kv_safe(name) {
            // Never created here (see `names::kv_safe`).
            return Ok(None);
        }
        let raw = self
            .inner
            .meta
            .get(names::topic_key(name))
            .await
            .map_err(|e| unavailable("reading topic settings", e))?;
        raw.map(|b| {
            serde_json::from_slice(&b).map_err(|e| {
                BrokerError::Internal(format!("topic {name}: unreadable settings in NATS KV: {e}"))
            })
        })
        .transpose()
    }

    async fn require_topic(&self, name: &str) -> Result<TopicConfig> {
        self.topic_config(name)
            .await?
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_owned()))
    }

    fn stream_config(&self, topic: &str, p: u32, config: &TopicConfig) -> stream::Config {
        let max_age = config
            .retention_ms
            .map_or(Duration::ZERO, Duration::from_millis);
        // JetStream's smallest window is 100 ms; with a window of 0 Wharf sends no ids.
        let mut window = Duration::from_millis(config.dedup_window_ms.max(100));
        if !max_age.is_zero() {
            // JetStream refuses a window longer than the stream's max age.
            window = window.min(max_age);
        }
        stream::Config {
            name: self.inner.names.stream(topic, p),
            subjects: vec![self.inner.names.subject(topic, p)],
            description: Some(format!("Wharf topic {topic}, partition {p}")),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age,
            max_bytes: config
                .retention_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            max_messages: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            duplicate_window: window,
            num_replicas: self.inner.replicas,
            allow_direct: true,
            ..stream::Config::default()
        }
    }

    async fn ensure_streams(&self, topic: &str, config: &TopicConfig) -> Result<()> {
        for p in 0..config.partitions {
            // Never deleted here: a stream that exists was made by a concurrent create of
            // this topic (a delete removes the streams before the settings key, so none is
            // left over from an earlier topic of the name unless a delete raced a create).
            let sc = self.stream_config(topic, p, config);
            self.inner
                .js
                .get_or_create_stream(sc)
                .await
                .map_err(|e| unavailable(&format!("creating the streams of {topic}"), e))?;
        }
        Ok(())
    }

    async fn partition_state(&self, topic: &str, p: u32) -> Result<(u64, u64)> {
        let name = self.inner.names.stream(topic, p);
        let s =
            self.inner.js.get_stream_no_info(&name).await.map_err(|e| {
                unavailable(&format!("topic {topic} partition {p} (stream {name})"), e)
            })?;
        let info = s.get_info().await.map_err(|e| {
            // JetStream's 10059: deleted meanwhile (by another node), the topic is going.
            if e.to_string().contains("stream not found") {
                BrokerError::TopicNotFound(topic.to_owned())
            } else {
                unavailable(&format!("stream {name}"), e)
            }
        })?;
        let st = &info.state;
        let hw = st.last_sequence;
        let start = if st.messages == 0 {
            hw
        } else {
            st.first_sequence.saturating_sub(1)
        };
        Ok((start, hw))
    }

    /// After a publish on a partition's subject woke a waiter: the partition's state once the
    /// stream holds more than `from` (JetStream stores a message just after its subscribers
    /// see it), looking again with growing pauses — normally once or twice, at most for 2 s
    /// — before letting the caller wait for the next publish.
    pub(crate) async fn wait_stored(
        &self,
        topic: &str,
        p: u32,
        from: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(u64, u64)> {
        let mut state = self.partition_state(topic, p).await?;
        let mut pause = Duration::from_micros(200);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(2);
        while state.1 <= from {
            let now = tokio::time::Instant::now();
            if now >= deadline || now >= give_up {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
            state = self.partition_state(topic, p).await?;
        }
        Ok(state)
    }

    async fn info(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for p in 0..config.partitions {
            let (start_offset, high_watermark) = self.partition_state(name, p).await?;
            partitions.push(wharf_broker::PartitionInfo {
                partition: p,
                start_offset,
                high_watermark,
            });
        }
        Ok(TopicInfo {
            name: name.to_owned(),
            config,
            partitions,
        })
    }

    /// The stored message at `offset` of the stream, `None` if retention removed it.
    async fn get(
        &self,
        stream: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Option<StoredMessage>> {
        let request = serde_json::json!({ "seq": offset + 1 });
        let subject = format!("STREAM.MSG.GET.{stream}");
        let response: jetstream::response::Response<RawGet> = self
            .inner
            .js
            .request(subject, &request)
            .await
            .map_err(|e| unavailable(&format!("reading {stream}"), e))?;
        match response {
            jetstream::response::Response::Ok(raw) => decode_raw(partition, raw.message).map(Some),
            jetstream::response::Response::Err { error } => {
                if error.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND {
                    Ok(None)
                } else {
                    Err(unavailable(&format!("reading {stream}"), error))
                }
            }
        }
    }

    /// Messages of a partition from offset `from`, below `hw` (the high watermark the caller
    /// looked up): at most `max_messages`, about `max_bytes` (at least one). No settings or
    /// state lookups: the caller has done them.
    pub(crate) async fn read_known(
        &self,
        topic: &str,
        p: u32,
        from: u64,
        hw: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>> {
        let stream = self.inner.names.stream(topic, p);
        let end = hw.min(from.saturating_add(max_messages as u64));
        if end <= from {
            return Ok(Vec::new());
        }
        if end - from > 1 {
            // More than one message: through a cursor (one pull), or message by message if
            // the cursor fails.
            if let Ok(m) = self
                .read_through_cursor(&stream, p, from, (end - from) as usize, max_bytes)
                .await
            {
                return Ok(m);
            }
        }
        self.read_by_gets(&stream, p, from, end, max_bytes).await
    }

    /// Messages `[from, end)` of a partition, one get each (pipelined), about `max_bytes`
    /// (at least one); messages retention removed meanwhile are skipped.
    async fn read_by_gets(
        &self,
        stream: &str,
        p: u32,
        from: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>> {
        let mut gets = futures_util::stream::iter(from..end)
            .map(|o| async move { self.get(stream, p, o).await })
            .buffered(READ_CONCURRENCY);
        let mut messages: Vec<StoredMessage> = Vec::new();
        let mut used = 0usize;
        while let Some(m) = gets.next().await {
            let Some(m) = m? else {
                if messages.is_empty() {
                    continue;
                }
                break;
            };
            let size = m.size();
            if !messages.is_empty() && used + size > max_bytes {
                break;
            }
            used += size;
            messages.push(m);
        }
        Ok(messages)
    }

    /// The first offset in `[start, hw)` whose message is stamped at or after `t` (`hw` if
    /// none): a binary search, stamps being non-decreasing within a partition.
    async fn offset_for_time(
        &self,
        stream: &str,
        partition: u32,
        mut lo: u64,
        mut hi: u64,
        t: i64,
    ) -> Result<u64> {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(stream, partition, mid).await? {
                Some(m) if m.timestamp >= t => hi = mid,
                Some(_) => lo = mid + 1,
                // Removed by retention while we searched: everything before is gone too.
                None => lo = mid + 1,
            }
        }
        Ok(lo)
    }
}

/// `$JS.API.STREAM.MSG.GET` answer.
#[derive(serde::Deserialize)]
struct RawGet {
    message: RawMsg,
}

#[derive(serde::Deserialize)]
struct RawMsg {
    seq: u64,
    #[serde(default)]
    data: String,
    #[serde(default)]
    hdrs: Option<String>,
    time: String,
}

fn decode_raw(partition: u32, raw: RawMsg) -> Result<StoredMessage> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = Bytes::from(
        b64.decode(raw.data.as_bytes())
            .map_err(|e| BrokerError::Internal(format!("nats: undecodable payload: {e}")))?,
    );
    let headers = match raw.hdrs {
        Some(h) if !h.is_empty() => {
            let bytes = b64
                .decode(h.as_bytes())
                .map_err(|e| BrokerError::Internal(format!("nats: undecodable headers: {e}")))?;
            parse_headers(&bytes)
        }
        _ => Vec::new(),
    };
    let offset = raw.seq.saturating_sub(1);
    let time = wharf_broker::time::parse_rfc3339(&raw.time).unwrap_or(0);
    // A redriven copy says where the message first was.
    let source = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let (src_partition, src_offset) = (source("Wharf-Src-Partition"), source("Wharf-Src-Offset"));
    let mut m = decode_message(partition, offset, payload, headers, time)?;
    if let (Some(p), Some(o)) = (src_partition, src_offset) {
        m.partition = u32::try_from(p).unwrap_or(m.partition);
        m.offset = o;
    }
    Ok(m)
}

/// A stored JetStream message as Wharf's: from the envelope when marked, else (plain NATS
/// publishers) the payload as the value and the NATS headers, except `Nats-*`, as headers.
pub(crate) fn decode_message(
    partition: u32,
    offset: u64,
    payload: Bytes,
    headers: Vec<(String, String)>,
    time: i64,
) -> Result<StoredMessage> {
    let enveloped = headers
        .iter()
        .any(|(k, v)| k == envelope::MARKER && v == envelope::MARKER_VALUE);
    if enveloped {
        let e = envelope::decode(payload).map_err(|e| {
            BrokerError::Internal(format!("partition {partition} offset {offset}: {e}"))
        })?;
        return Ok(StoredMessage {
            partition,
            offset,
            timestamp: e.timestamp,
            key: e.key,
            value: e.value,
            headers: e.headers,
        });
    }
    Ok(StoredMessage {
        partition,
        offset,
        timestamp: time,
        key: None,
        value: payload,
        headers: headers
            .into_iter()
            .filter(|(k, _)| !k.starts_with("Nats-") && !k.starts_with("Wharf-"))
            .collect(),
    })
}

/// The headers of a `NATS/1.0\r\nName: value\r\n...` block, in order.
fn parse_headers(block: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(block);
    text.split("\r\n")
        .skip(1)
        .filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

impl NatsEngine {
    /// Creates a topic without the name and settings checks (dead-letter topics).
    pub(crate) async fn create_topic_inner(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<TopicInfo> {
        let value = Bytes::from(
            serde_json::to_vec(&config).map_err(|e| BrokerError::Internal(e.to_string()))?,
        );
        match self.inner.meta.create(names::topic_key(name), value).await {
            Ok(_) => {
                self.ensure_streams(name, &config).await?;
                self.info(name, config).await
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let existing = self.require_topic(name).await?;
                if existing != config {
                    return Err(BrokerError::TopicExists(name.to_owned()));
                }
                // Created by another call (perhaps on another node, perhaps unfinished).
                self.ensure_streams(name, &config).await?;
                self.info(name, config).await
            }
            Err(e) => Err(unavailable(&format!("creating topic {name}"), e)),
        }
    }

    /// Deletes a topic with its subscriptions (and their dead-letter topics).
    pub(crate) async fn delete_topic_inner(&self, name: &str) -> Result<()> {
        let config = self.require_topic(name).await?;
        for sub in self.sub_names(name).await? {
            match self.delete_subscription(name, &sub).await {
                Ok(()) | Err(BrokerError::SubscriptionNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // The streams first, the settings key last: a delete cut short leaves a topic that
        // exists with streams missing (a create of it makes them again), never streams
        // without a topic that a later topic of the name would inherit.
        for p in 0..config.partitions {
            let stream = self.inner.names.stream(name, p);
            if let Err(e) = self.inner.js.delete_stream(&stream).await {
                let missing = matches!(
                    e.kind(),
                    jetstream::context::DeleteStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                );
                if !missing {
                    return Err(unavailable(&format!("deleting stream {stream}"), e));
                }
            }
        }
        self.inner
            .meta
            .purge(names::topic_key(name))
            .await
            .map_err(|e| unavailable(&format!("deleting topic {name}"), e))?;
        Ok(())
    }

    /// Publishes without the reserved-name check (dead letters).
    pub(crate) async fn publish_inner(
        &self,
        topic: &str,
        messages: Vec<Message>,
        options: PublishOptions,
    ) -> Result<Vec<Published>> {
        let config = self.require_topic(topic).await?;
        wharf_broker::check::publish(&messages, &config)?;
        let routes = messages
            .iter()
            .map(|m| {
                wharf_broker::check::route(m, topic, config.partitions, &self.inner.next_partition)
            })
            .collect::<Result<Vec<u32>>>()?;
        let unshared = wharf_broker::check::unshared(&messages, &options.shared_headers, &config);
        let stamp = self.stamp();
        // Encode everything first: a message the NATS server would refuse (its max_payload,
        // 1 MiB by default) fails the whole publish before anything is sent.
        let max_payload = self.inner.client.server_info().max_payload;
        let mut encoded = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let shared: &[(String, String)] = if unshared.binary_search(&i).is_ok() {
                &[]
            } else {
                &options.shared_headers
            };
            let payload = envelope::encode(stamp, m.key.as_deref(), &m.headers, shared, &m.value);
            let mut headers = HeaderMap::new();
            headers.insert(envelope::MARKER, envelope::MARKER_VALUE);
            let mut header_bytes = 32;
            if config.dedup_window_ms > 0
                && let Some(id) = m.id()
            {
                headers.insert("Nats-Msg-Id", id);
                header_bytes += id.len() + 16;
            }
            if payload.len() + header_bytes > max_payload {
                let overhead =
                    (payload.len() + header_bytes) as u64 - wharf_broker::check::message_size(m);
                return Err(BrokerError::MessageTooLarge {
                    size: wharf_broker::check::message_size(m),
                    limit: (max_payload as u64).saturating_sub(overhead),
                });
            }
            encoded.push((payload, headers));
        }
        // Sent in order with at most PUBLISH_WINDOW acks outstanding; the acks come back in
        // order of sending.
        let mut pending = std::collections::VecDeque::with_capacity(PUBLISH_WINDOW);
        let mut acks = Vec::with_capacity(messages.len());
        for ((payload, headers), &p) in encoded.into_iter().zip(&routes) {
            if pending.len() >= PUBLISH_WINDOW
                && let Some(oldest) = pending.pop_front()
            {
                acks.push(await_ack(oldest, topic).await?);
            }
            let ack = self
                .inner
                .js
                .send_publish(
                    self.inner.names.subject(topic, p),
                    jetstream::message::PublishMessage::build()
                        .payload(payload)
                        .headers(headers),
                )
                .await
                .map_err(|e| unavailable(&format!("publishing to {topic}"), e))?;
            pending.push_back(ack);
        }
        for ack in pending {
            acks.push(await_ack(ack, topic).await?);
        }
        let mut out = Vec::with_capacity(acks.len());
        for (ack, &p) in acks.into_iter().zip(&routes) {
            let offset = ack.sequence.saturating_sub(1);
            let timestamp = if ack.duplicate {
                let stream = self.inner.names.stream(topic, p);
                match self.get(&stream, p, offset).await? {
                    Some(original) => original.timestamp,
                    None => stamp,
                }
            } else {
                stamp
            };
            out.push(Published {
                partition: p,
                offset,
                timestamp,
                duplicate: ack.duplicate,
            });
        }
        Ok(out)
    }

    pub(crate) async fn read_inner(&self, topic: &str, request: ReadRequest) -> Result<ReadResult> {
        let config = self.require_topic(topic).await?;
        let p = request.partition;
        if p >= config.partitions {
            return Err(BrokerError::PartitionNotFound {
                topic: topic.to_owned(),
                partition: p,
                partitions: config.partitions,
            });
        }
        let stream = self.inner.names.stream(topic, p);
        let (start, hw) = self.partition_state(topic, p).await?;
        let (mut from, mut skipped_to) = match request.from {
            Position::Earliest => (start, None),
            Position::Latest => (hw, None),
            Position::Timestamp(t) => (self.offset_for_time(&stream, p, start, hw, t).await?, None),
            Position::Offset(o) if o < start => (start, Some(start)),
            Position::Offset(o) if o > hw => {
                return Err(BrokerError::OffsetOutOfRange {
                    topic: topic.to_owned(),
                    partition: p,
                    requested: o,
                    start,
                    end: hw,
                });
            }
            Position::Offset(o) => (o, None),
        };
        let (mut start, mut hw) = (start, hw);
        if from >= hw && !request.wait.is_zero() {
            // Listen first, then look again, so a publish between the two is not missed.
            let mut sub = self
                .inner
                .client
                .subscribe(self.inner.names.subject(topic, p))
                .await
                .map_err(|e| unavailable("waiting for a publish", e))?;
            (start, hw) = self.partition_state(topic, p).await?;
            let deadline = tokio::time::Instant::now() + request.wait.min(MAX_WAIT);
            while from >= hw {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                if let Ok(Some(_)) = tokio::time::timeout(left, sub.next()).await {
                    (start, hw) = self.wait_stored(topic, p, from, deadline).await?;
                } else {
                    break;
                }
            }
            let _ = sub.unsubscribe().await;
        }
        if from < start {
            from = start;
            skipped_to = Some(start);
        }
        let max_messages = request.max_messages.clamp(1, MAX_READ_MESSAGES);
        let max_bytes = request.max_bytes.clamp(1, MAX_READ_BYTES);
        let messages = self
            .read_known(topic, p, from, hw, max_messages, max_bytes)
            .await?;
        if let Some(first) = messages.first()
            && first.offset > from
        {
            skipped_to = Some(first.offset);
            from = first.offset;
        }
        let (start_offset, high_watermark) = self.partition_state(topic, p).await?;
        Ok(ReadResult {
            next_offset: messages.last().map_or(from, |m| m.offset + 1),
            messages,
            start_offset,
            high_watermark,
            skipped_to,
        })
    }
}

#[async_trait]
impl Engine for NatsEngine {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            stream_subscriptions: Support::Wharf,
            shared_subscriptions: Support::Wharf,
            dead_letters: Support::Wharf,
            delays: Support::Wharf,
            dedup: Support::Native,
            time_lookup: Support::Wharf,
            retention: Support::Native,
        }
    }

    fn health(&self) -> Health {
        match self.inner.client.connection_state() {
            State::Connected => Health {
                writable: true,
                reason: None,
            },
            other => Health {
                writable: false,
                reason: Some(format!("nats: connection {other}")),
            },
        }
    }

    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        wharf_broker::names::validate("topic", name, false)?;
        names::check_kv_safe("topic", name)?;
        config.validate()?;
        self.create_topic_inner(name, config).await
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let config = self.require_topic(name).await?;
        self.info(name, config).await
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let keys: Vec<String> = self
            .inner
            .meta
            .keys()
            .await
            .map_err(|e| unavailable("listing topics", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("listing topics", e))?;
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|k| names::topic_of_key(k))
            .map(str::to_owned)
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.describe_topic(&name).await {
                Ok(info) => out.push(info),
                // Deleted since we listed it.
                Err(BrokerError::TopicNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        if name.starts_with(wharf_broker::names::RESERVED_PREFIX) {
            self.require_topic(name).await?;
            return Err(BrokerError::InvalidArgument {
                field: "topic",
                reason: format!(
                    "{name:?} is a dead-letter topic: it goes with its subscription (delete that)"
                ),
            });
        }
        self.delete_topic_inner(name).await
    }

    async fn max_message_bytes(&self, name: &str) -> Result<u64> {
        Ok(self.require_topic(name).await?.max_message_bytes)
    }

    async fn publish_with(
        &self,
        topic: &str,
        messages: Vec<Message>,
        options: PublishOptions,
    ) -> Result<Vec<Published>> {
        if topic.starts_with(wharf_broker::names::RESERVED_PREFIX) {
            self.require_topic(topic).await?;
            return Err(BrokerError::InvalidArgument {
                field: "topic",
                reason: format!(
                    "{topic:?} is a dead-letter topic: only its subscription writes to it"
                ),
            });
        }
        self.publish_inner(topic, messages, options).await
    }

    async fn read(&self, topic: &str, request: ReadRequest) -> Result<ReadResult> {
        self.read_inner(topic, request).await
    }

    async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo> {
        wharf_broker::names::validate("subscription", name, false)?;
        names::check_kv_safe("subscription", name)?;
        config.validate()?;
        let topic_config = self.require_topic(topic).await?;
        if topic.starts_with(wharf_broker::names::RESERVED_PREFIX) {
            return Err(BrokerError::InvalidArgument {
                field: "topic",
                reason: format!("{topic:?} is a dead-letter topic: read it with dead_letters"),
            });
        }
        let (fresh, _) = self.claim_sub(topic, name, &config).await?;
        let made = match &config {
            SubscriptionConfig::Stream(c) => {
                self.group_create(topic, name, c, topic_config.partitions, fresh)
                    .await
            }
            SubscriptionConfig::Shared(c) => {
                self.shared_create(topic, name, c, topic_config.partitions, fresh)
                    .await
            }
        };
        if let Err(e) = made {
            if fresh {
                // Leave nothing half-made behind a name that would then look taken.
                let _ = match &config {
                    SubscriptionConfig::Stream(_) => self.group_delete(topic, name).await,
                    SubscriptionConfig::Shared(_) => {
                        self.shared_delete(topic, name, topic_config.partitions)
                            .await
                    }
                };
                let _ = self.unclaim_sub(topic, name).await;
            }
            return Err(e);
        }
        self.describe_subscription(topic, name).await
    }

    async fn describe_subscription(&self, topic: &str, name: &str) -> Result<SubscriptionInfo> {
        let record = self.require_sub(topic, name).await?;
        match &record.config {
            SubscriptionConfig::Stream(c) => self.group_info(topic, name, c).await,
            SubscriptionConfig::Shared(c) => self.shared_info(topic, name, c).await,
        }
    }

    async fn list_subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>> {
        self.require_topic(topic).await?;
        let mut out = Vec::new();
        for name in self.sub_names(topic).await? {
            match self.describe_subscription(topic, &name).await {
                Ok(info) => out.push(info),
                Err(BrokerError::SubscriptionNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<()> {
        let record = self.require_sub(topic, name).await?;
        let partitions = self.require_topic(topic).await?.partitions;
        // Its state first, the registry key last: a delete cut short leaves a subscription
        // that still exists (delete it again), never state a later one of the name inherits.
        match &record.config {
            SubscriptionConfig::Stream(_) => self.group_delete(topic, name).await?,
            SubscriptionConfig::Shared(_) => self.shared_delete(topic, name, partitions).await?,
        }
        self.unclaim_sub(topic, name).await
    }

    async fn join(&self, topic: &str, sub: &str, member: Option<&str>) -> Result<Membership> {
        self.group_join(topic, sub, member).await
    }

    async fn heartbeat(&self, topic: &str, sub: &str, member: &str) -> Result<Membership> {
        self.group_heartbeat(topic, sub, member).await
    }

    async fn leave(&self, topic: &str, sub: &str, member: &str) -> Result<()> {
        self.group_leave(topic, sub, member).await
    }

    async fn fetch(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        request: FetchRequest,
    ) -> Result<Vec<StoredMessage>> {
        self.group_fetch(topic, sub, member, request).await
    }

    async fn commit(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        offsets: Vec<Committed>,
    ) -> Result<Vec<Committed>> {
        self.group_commit(topic, sub, member, offsets).await
    }

    async fn reset(&self, topic: &str, sub: &str, to: ResetTo) -> Result<Vec<Committed>> {
        self.group_reset(topic, sub, to).await
    }

    async fn receive(
        &self,
        topic: &str,
        sub: &str,
        request: ReceiveRequest,
    ) -> Result<Vec<Delivery>> {
        self.shared_receive(topic, sub, request).await
    }

    async fn ack(&self, topic: &str, sub: &str, ack_ids: &[String]) -> Result<Vec<AckOutcome>> {
        self.shared_settle(topic, sub, ack_ids, Settle::Ack).await
    }

    async fn nack(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        delay_ms: Option<u64>,
    ) -> Result<Vec<AckOutcome>> {
        self.shared_settle(topic, sub, ack_ids, Settle::Nack(delay_ms))
            .await
    }

    async fn extend(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        lease_ms: u64,
    ) -> Result<Vec<AckOutcome>> {
        self.shared_settle(topic, sub, ack_ids, Settle::Extend(lease_ms))
            .await
    }

    async fn terminate(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        reason: &str,
    ) -> Result<Vec<AckOutcome>> {
        self.shared_settle(topic, sub, ack_ids, Settle::Terminate(reason))
            .await
    }

    async fn dead_letters(
        &self,
        topic: &str,
        sub: &str,
        request: ReadRequest,
    ) -> Result<ReadResult> {
        self.shared_dead_letters(topic, sub, request).await
    }

    async fn redrive(&self, topic: &str, sub: &str, max: usize) -> Result<u64> {
        self.shared_redrive(topic, sub, max).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_of("2.9.10"), Some((2, 9)));
        assert_eq!(version_of("v2.12.0-beta"), Some((2, 12)));
        assert!(version_of("2.8.4").unwrap() < (2, 9));
        assert_eq!(version_of("x"), None);
    }

    #[test]
    fn header_block() {
        let h = parse_headers(b"NATS/1.0\r\nWharf-Enc: 1\r\nNats-Msg-Id: a:b\r\n\r\n");
        assert_eq!(
            h,
            vec![
                ("Wharf-Enc".to_owned(), "1".to_owned()),
                ("Nats-Msg-Id".to_owned(), "a:b".to_owned())
            ]
        );
    }
}
