//! The vocabulary of the [`crate::Engine`] trait: settings, messages, requests and results.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// Header carrying the producer's idempotency key.
pub const HEADER_MESSAGE_ID: &str = "wharf-message-id";
/// Header delaying a message's first delivery on shared subscriptions (RFC 3339 UTC).
pub const HEADER_DELIVER_AT: &str = "wharf-deliver-at";

/// When a publish counts as done (see `wharf_log::Durability`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Durability {
    /// fsync before acknowledging, with group commit. The default.
    #[default]
    Always,
    /// Acknowledge once written to the OS; fsync at most every `ms` milliseconds.
    Interval {
        /// The fsync interval in milliseconds.
        ms: u64,
    },
    /// Acknowledge once written to the OS; never fsync on the publish path.
    None,
}

impl Durability {
    pub(crate) fn to_log(self) -> wharf_log::Durability {
        match self {
            Durability::Always => wharf_log::Durability::Always,
            Durability::Interval { ms } => {
                wharf_log::Durability::Interval(Duration::from_millis(ms.max(1)))
            }
            Durability::None => wharf_log::Durability::None,
        }
    }
}

/// Settings of a topic. Every field has a default, so `{}` is a valid topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions, 1..=1024. Default 1.
    pub partitions: u32,
    /// When a publish is acknowledged. Default `always`.
    pub durability: Durability,
    /// Delete whole segments whose newest message is older than this. Default: keep.
    pub retention_ms: Option<u64>,
    /// Delete the oldest segments while a partition is larger than this. Default: keep.
    pub retention_bytes: Option<u64>,
    /// Publishes with a `wharf-message-id` seen within this window are duplicates.
    /// Default 120000 (2 minutes); 0 turns dedup off.
    pub dedup_window_ms: u64,
    /// Largest message (key + value + headers) accepted. Default 1 MiB, at most 16 MiB.
    pub max_message_bytes: u64,
    /// Size of the partition logs' segment files. Default 128 MiB.
    pub segment_bytes: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            durability: Durability::Always,
            retention_ms: None,
            retention_bytes: None,
            dedup_window_ms: 120_000,
            max_message_bytes: 1024 * 1024,
            segment_bytes: 128 * 1024 * 1024,
        }
    }
}

impl TopicConfig {
    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.partitions) {
            return Err(BrokerError::invalid(
                "partitions",
                format!("{} is outside 1..=1024", self.partitions),
            ));
        }
        if !(1..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(BrokerError::invalid(
                "max_message_bytes",
                format!("{} is outside 1..=16777216", self.max_message_bytes),
            ));
        }
        if !(64 * 1024..=1 << 30).contains(&self.segment_bytes) {
            return Err(BrokerError::invalid(
                "segment_bytes",
                format!("{} is outside 65536..=1073741824", self.segment_bytes),
            ));
        }
        if let Durability::Interval { ms: 0 } = self.durability {
            return Err(BrokerError::invalid(
                "durability",
                "the interval must be at least 1 ms",
            ));
        }
        if self.retention_ms == Some(0) {
            return Err(BrokerError::invalid(
                "retention_ms",
                "must be positive (omit it to keep everything)",
            ));
        }
        Ok(())
    }
}

/// A topic as it exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: TopicConfig,
    /// Per-partition positions.
    pub partitions: Vec<PartitionInfo>,
}

/// Positions of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// The partition number.
    pub partition: u32,
    /// First offset still held (retention deletes older ones).
    pub start_offset: u64,
    /// One past the last acknowledged offset.
    pub high_watermark: u64,
}

/// Options of one publish call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Headers stored with every message of the publish (after its own), except a message
    /// that already has a header of one of these names or that they would push over the
    /// topic's `max_message_bytes` or the header-count limit: the server's trace context.
    /// An engine should store them without a copy per message where it can.
    pub shared_headers: Vec<(String, String)>,
}

/// A message to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Optional key; decides the partition (murmur2) unless `partition` is set.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Headers (`wharf-message-id` makes the publish idempotent within the dedup window).
    pub headers: Vec<(String, String)>,
    /// Explicit partition.
    pub partition: Option<u32>,
}

impl Message {
    /// A message with this value.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            value: value.into(),
            ..Self::default()
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the idempotency key (`wharf-message-id`).
    #[must_use]
    pub fn with_id(self, id: impl Into<String>) -> Self {
        self.with_header(HEADER_MESSAGE_ID, id)
    }

    /// Sends to this partition.
    #[must_use]
    pub fn to_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The `wharf-message-id` header, if any.
    pub fn id(&self) -> Option<&str> {
        header(&self.headers, HEADER_MESSAGE_ID)
    }
}

/// The value of the first header named `name`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Where a published message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// The broker's append time (ms since the Unix epoch).
    pub timestamp: i64,
    /// True if this was a duplicate of an earlier publish with the same `wharf-message-id`
    /// (nothing was stored; partition and offset are the original's).
    pub duplicate: bool,
}

/// A stored message, as read or delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// The broker's append time (ms since the Unix epoch).
    pub timestamp: i64,
    /// The key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// The headers.
    pub headers: Vec<(String, String)>,
}

impl StoredMessage {
    /// Its size as the byte limits of reads count it: key, value and headers.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    pub(crate) fn from_record(partition: u32, r: wharf_log::Record) -> Self {
        Self {
            partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r.headers,
        }
    }
}

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// The first offset still held.
    Earliest,
    /// The next offset to be written (only new messages).
    Latest,
    /// This offset.
    Offset(u64),
    /// The first message appended at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

/// A read of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The partition.
    pub partition: u32,
    /// Where to start.
    pub from: Position,
    /// At most this many messages (at least one is returned if any is available).
    pub max_messages: usize,
    /// About this many bytes at most (whole messages; at least one).
    pub max_bytes: usize,
    /// If nothing is available, wait up to this long for a publish.
    pub wait: Duration,
}

impl ReadRequest {
    /// A read of `partition` from `from`, 100 messages / 1 MiB, no waiting.
    pub fn new(partition: u32, from: Position) -> Self {
        Self {
            partition,
            from,
            max_messages: 100,
            max_bytes: 1024 * 1024,
            wait: Duration::ZERO,
        }
    }
}

/// The result of a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// The messages, in offset order.
    pub messages: Vec<StoredMessage>,
    /// Where the next read should start.
    pub next_offset: u64,
    /// First offset held by the partition.
    pub start_offset: u64,
    /// One past the last acknowledged offset of the partition.
    pub high_watermark: u64,
    /// Set when the requested offset had already been deleted by retention: the read started
    /// at this, the earliest offset still held, instead.
    pub skipped_to: Option<u64>,
}

/// Settings of a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SubscriptionConfig {
    /// A consumer group: partitions assigned to live members, committed offsets.
    Stream(StreamConfig),
    /// Queue semantics: any member receives any available message under a lease.
    Shared(SharedConfig),
}

/// Settings of a stream subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Where a partition without a committed offset starts. Default `earliest`.
    pub start: Position,
    /// A member that sends no heartbeat for this long is removed and its partitions
    /// reassigned. Default 30000.
    pub session_timeout_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            start: Position::Earliest,
            session_timeout_ms: 30_000,
        }
    }
}

/// Settings of a shared subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedConfig {
    /// Deliveries before a message goes to the dead-letter topic. Default 5.
    pub max_deliveries: u32,
    /// Default lease (visibility timeout) of a delivery. Default 30000.
    pub lease_ms: u64,
    /// First retry delay after a nack or an expired lease. Default 1000.
    pub backoff_initial_ms: u64,
    /// Longest retry delay. Default 60000.
    pub backoff_max_ms: u64,
    /// Random spread of each delay in percent, 0..=100 (0 = exact). Default 20.
    pub backoff_jitter_pct: u32,
    /// Deliver at most one message per key at a time, in offset order. Default false.
    pub ordered_by_key: bool,
    /// Most deliveries one member may hold at once. Default 1000.
    pub max_in_flight_per_member: u32,
    /// Where the subscription starts on the topic. Default `earliest`.
    pub start: Position,
    /// Deliver to an app instead of waiting for consumers to receive (the server's push
    /// workers do it through the invocation stack). Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushConfig>,
}

/// Push delivery of a shared subscription to an app route: `POST {route}` on an instance of
/// `app`, the message as the body. 2xx acks; 408, 429, 5xx, timeouts and connection errors
/// nack with the subscription's backoff; any other answer dead-letters at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// The app (see the app registry).
    pub app: String,
    /// The path to `POST` to, starting with `/`.
    pub route: String,
    /// Deliveries in flight at once. Default 16.
    pub max_in_flight: u32,
    /// How long the app has to answer one delivery, in milliseconds. Default 10000.
    pub timeout_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            app: String::new(),
            route: "/".into(),
            max_in_flight: 16,
            timeout_ms: 10_000,
        }
    }
}

impl SharedConfig {
    /// The backoff after `deliveries` failed deliveries without jitter: exponential from
    /// `backoff_initial_ms`, capped at `backoff_max_ms`.
    pub fn backoff_base_ms(&self, deliveries: u32) -> u64 {
        let exp = deliveries.saturating_sub(1).min(40);
        self.backoff_initial_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_max_ms)
    }

    /// [`SharedConfig::backoff_base_ms`] spread by `backoff_jitter_pct` with `random`
    /// (called only when there is a spread: each engine chooses its source).
    pub fn backoff_ms(&self, deliveries: u32, random: impl FnOnce() -> u64) -> u64 {
        let base = self.backoff_base_ms(deliveries);
        let spread = base.saturating_mul(u64::from(self.backoff_jitter_pct)) / 100;
        if spread == 0 {
            return base;
        }
        (base - spread + random() % (2 * spread).saturating_add(1)).min(self.backoff_max_ms)
    }
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            max_deliveries: 5,
            lease_ms: 30_000,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            backoff_jitter_pct: 20,
            ordered_by_key: false,
            max_in_flight_per_member: 1_000,
            start: Position::Earliest,
            push: None,
        }
    }
}

impl SubscriptionConfig {
    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<()> {
        match self {
            SubscriptionConfig::Stream(s) => {
                if !(1_000..=3_600_000).contains(&s.session_timeout_ms) {
                    return Err(BrokerError::invalid(
                        "session_timeout_ms",
                        format!("{} is outside 1000..=3600000", s.session_timeout_ms),
                    ));
                }
            }
            SubscriptionConfig::Shared(s) => {
                if !(1..=1000).contains(&s.max_deliveries) {
                    return Err(BrokerError::invalid(
                        "max_deliveries",
                        format!("{} is outside 1..=1000", s.max_deliveries),
                    ));
                }
                if !(100..=12 * 3_600_000).contains(&s.lease_ms) {
                    return Err(BrokerError::invalid(
                        "lease_ms",
                        format!("{} is outside 100..=43200000", s.lease_ms),
                    ));
                }
                if s.backoff_max_ms > 7 * 86_400_000 {
                    return Err(BrokerError::invalid(
                        "backoff_max_ms",
                        "at most 604800000 (7 days)",
                    ));
                }
                if s.backoff_initial_ms > s.backoff_max_ms {
                    return Err(BrokerError::invalid(
                        "backoff_initial_ms",
                        "is larger than backoff_max_ms",
                    ));
                }
                if s.backoff_jitter_pct > 100 {
                    return Err(BrokerError::invalid(
                        "backoff_jitter_pct",
                        "must be within 0..=100",
                    ));
                }
                if let Some(p) = &s.push {
                    if p.app.is_empty() || p.app.len() > 128 {
                        return Err(BrokerError::invalid("push.app", "must name an app"));
                    }
                    if !p.route.starts_with('/') || p.route.len() > 2048 {
                        return Err(BrokerError::invalid(
                            "push.route",
                            "must be a path starting with '/' (at most 2048 bytes)",
                        ));
                    }
                    if !(1..=10_000).contains(&p.max_in_flight) {
                        return Err(BrokerError::invalid(
                            "push.max_in_flight",
                            "must be within 1..=10000",
                        ));
                    }
                    if !(1..=3_600_000).contains(&p.timeout_ms) {
                        return Err(BrokerError::invalid(
                            "push.timeout_ms",
                            "must be within 1..=3600000",
                        ));
                    }
                }
                if s.max_in_flight_per_member == 0 {
                    return Err(BrokerError::invalid(
                        "max_in_flight_per_member",
                        "must be at least 1",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A subscription as it exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// The topic.
    pub topic: String,
    /// The subscription's name.
    pub name: String,
    /// Its settings.
    pub config: SubscriptionConfig,
    /// Per-partition progress.
    pub partitions: Vec<SubscriptionPartition>,
    /// Live members (stream subscriptions).
    pub members: Vec<String>,
    /// Current group generation (stream subscriptions).
    pub generation: u64,
    /// Deliveries under a live lease (shared subscriptions).
    pub in_flight: u64,
    /// Messages waiting for a delay or a retry backoff (shared subscriptions).
    pub delayed: u64,
    /// Messages in the dead-letter topic not yet redriven (shared subscriptions).
    pub dead_lettered: u64,
}

/// Progress of a subscription on one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionPartition {
    /// The partition.
    pub partition: u32,
    /// Stream: the committed offset (next to consume). Shared: everything below is finished.
    pub committed: u64,
    /// Messages between `committed` and the partition's high watermark.
    pub lag: u64,
    /// True when retention deleted messages the subscription had not consumed.
    pub behind_retention: bool,
}

/// What a member of a stream subscription owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The member's id (give it back on heartbeat, fetch, commit and leave).
    pub member_id: String,
    /// The group generation this assignment belongs to.
    pub generation: u64,
    /// The partitions this member owns, ascending.
    pub partitions: Vec<u32>,
}

/// A fetch by a stream member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// At most this many messages.
    pub max_messages: usize,
    /// About this many bytes at most.
    pub max_bytes: usize,
    /// If nothing is available, wait up to this long.
    pub wait: Duration,
}

impl Default for FetchRequest {
    fn default() -> Self {
        Self {
            max_messages: 100,
            max_bytes: 1024 * 1024,
            wait: Duration::ZERO,
        }
    }
}

/// Where a reset moves a stream subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetTo {
    /// Every partition to its earliest held offset.
    Earliest,
    /// Every partition to its high watermark.
    Latest,
    /// Every partition to the first message at or after this time.
    Timestamp(i64),
    /// Explicit offsets per partition (others unchanged).
    Offsets(Vec<(u32, u64)>),
}

/// A partition's committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The partition.
    pub partition: u32,
    /// The committed offset (next to consume).
    pub offset: u64,
}

/// A receive by a shared-subscription member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// Who receives (for the per-member in-flight limit); any string the client chooses.
    pub member: Option<String>,
    /// At most this many deliveries.
    pub max: usize,
    /// Lease of these deliveries; `None` = the subscription's default.
    pub lease: Option<Duration>,
    /// If nothing is available, wait up to this long.
    pub wait: Duration,
}

/// A message delivered to a shared-subscription member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Opaque handle for ack, nack, extend and terminate.
    pub ack_id: String,
    /// The message.
    pub message: StoredMessage,
    /// 1 on the first delivery.
    pub delivery_count: u32,
    /// When the lease ends (ms since the Unix epoch).
    pub lease_deadline: i64,
}

/// Per-`ack_id` outcome of ack, nack, extend and terminate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckOutcome {
    /// The `ack_id`.
    pub ack_id: String,
    /// `None` if it worked, else the stable error code (`lease_expired`, `bad_ack_id`).
    pub error: Option<String>,
}

/// What an engine supports natively, is built by Wharf on top, or lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Support {
    /// The engine does it.
    Native,
    /// Wharf's layer does it on top of the engine.
    Wharf,
    /// Not available on this engine (yet).
    Unavailable,
}

/// The capability set of an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Stream subscriptions (consumer groups, committed offsets, replay).
    pub stream_subscriptions: Support,
    /// Shared subscriptions (leases, acks, nacks).
    pub shared_subscriptions: Support,
    /// Dead-letter topics and redrive.
    pub dead_letters: Support,
    /// `wharf-deliver-at` delays and nack delays.
    pub delays: Support,
    /// Dedup by `wharf-message-id`.
    pub dedup: Support,
    /// Reads by timestamp.
    pub time_lookup: Support,
    /// Retention by age and size.
    pub retention: Support,
}

/// Whether an engine accepts writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// True when publishes, acks and commits can be made durable.
    pub writable: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// Counters of an engine's own storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Number of logs (partitions, subscription journals, retry logs).
    pub logs: u64,
    /// Bytes held in segment files.
    pub size_bytes: u64,
    /// Durations of the fsyncs on the write path, over all logs.
    pub fsync_latency: wharf_log::FsyncHistogram,
}
