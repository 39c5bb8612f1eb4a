//! The JSON shapes of the REST API (`wharf.v1`), their OpenAPI schemas, and their conversion
//! to and from the broker's types. Kept apart from the broker's types so the wire format is a
//! decision of its own.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wharf_broker as broker;

use crate::error::ApiError;

/// How `key` and `value` are written in JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// UTF-8 text (the default).
    #[default]
    Utf8,
    /// Standard base64 with padding.
    Base64,
}

impl Encoding {
    fn decode(self, field: &str, s: &str) -> Result<Bytes, ApiError> {
        match self {
            Encoding::Utf8 => Ok(Bytes::copy_from_slice(s.as_bytes())),
            Encoding::Base64 => B64
                .decode(s)
                .map(Bytes::from)
                .map_err(|e| ApiError::invalid(field, format!("not base64: {e}"))),
        }
    }
}

/// Bytes as JSON text in the wanted encoding; UTF-8 falls back to base64 for bytes that are
/// not UTF-8 (the message's `encoding` says which was used).
fn encode(
    wanted: Encoding,
    key: Option<&Bytes>,
    value: &Bytes,
) -> (Option<String>, String, Encoding) {
    let utf8_ok = wanted == Encoding::Utf8
        && std::str::from_utf8(value).is_ok()
        && key.is_none_or(|k| std::str::from_utf8(k).is_ok());
    if utf8_ok {
        (
            key.map(|k| String::from_utf8_lossy(k).into_owned()),
            String::from_utf8_lossy(value).into_owned(),
            Encoding::Utf8,
        )
    } else {
        (
            key.map(|k| B64.encode(k)),
            B64.encode(value),
            Encoding::Base64,
        )
    }
}

// ---- messages -------------------------------------------------------------------------------

/// A message to publish.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// Decides the partition (murmur2) unless `partition` is given.
    pub key: Option<String>,
    /// The payload.
    #[serde(default)]
    pub value: String,
    /// Headers. `wharf-message-id` makes the publish idempotent; `wharf-deliver-at`
    /// (RFC 3339) delays delivery on shared subscriptions; `traceparent` is W3C trace context.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// An explicit partition.
    pub partition: Option<u32>,
    /// Encoding of `key` and `value` (overrides the batch's).
    pub encoding: Option<Encoding>,
}

/// Several messages to publish at once (all or none are accepted).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    /// The messages, in order.
    #[schema(min_items = 1)]
    pub messages: Vec<MessageIn>,
    /// Encoding of every message's `key` and `value` unless it sets its own.
    pub encoding: Option<Encoding>,
}

/// One message, or `{"messages": [...]}`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PublishRequest {
    /// A batch.
    Batch(BatchIn),
    /// One message.
    One(MessageIn),
}

impl PublishRequest {
    /// Parses a body. Fast path: straight into the shape the bytes point to (a batch has a
    /// `"messages"` key; that byte sequence cannot occur inside a JSON string). If that fails,
    /// the body is parsed again the exact way, so the error is about the shape meant.
    pub fn from_slice(body: &[u8]) -> Result<Self, ApiError> {
        let batch = body.windows(10).any(|w| w == b"\"messages\"");
        let fast = if batch {
            serde_json::from_slice(body).map(PublishRequest::Batch)
        } else {
            serde_json::from_slice(body).map(PublishRequest::One)
        };
        match fast {
            Ok(r) => Ok(r),
            Err(_) => {
                let value: serde_json::Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::new("invalid_json", format!("invalid body: {e}")))?;
                Self::from_json(value)
            }
        }
    }

    /// Parses a body, telling apart the two shapes by the `messages` field so errors are
    /// about the shape the client meant.
    pub fn from_json(value: serde_json::Value) -> Result<Self, ApiError> {
        let batch = value
            .as_object()
            .is_some_and(|o| o.contains_key("messages"));
        let parsed = if batch {
            serde_json::from_value(value).map(PublishRequest::Batch)
        } else {
            serde_json::from_value(value).map(PublishRequest::One)
        };
        parsed.map_err(|e| ApiError::new("invalid_json", format!("invalid publish body: {e}")))
    }

    /// The messages with their encodings.
    pub fn into_messages(self) -> Vec<(MessageIn, Encoding)> {
        match self {
            PublishRequest::One(m) => {
                let enc = m.encoding.unwrap_or_default();
                vec![(m, enc)]
            }
            PublishRequest::Batch(b) => {
                let batch_enc = b.encoding.unwrap_or_default();
                b.messages
                    .into_iter()
                    .map(|m| {
                        let enc = m.encoding.unwrap_or(batch_enc);
                        (m, enc)
                    })
                    .collect()
            }
        }
    }
}

impl MessageIn {
    /// To the broker's message, decoding key and value.
    pub fn into_message(self, encoding: Encoding, i: usize) -> Result<broker::Message, ApiError> {
        let key = match &self.key {
            Some(k) => Some(encoding.decode(&format!("messages[{i}].key"), k)?),
            None => None,
        };
        let value = encoding.decode(&format!("messages[{i}].value"), &self.value)?;
        Ok(broker::Message {
            key,
            value,
            headers: self.headers.into_iter().collect(),
            partition: self.partition,
        })
    }
}

/// Where a published message landed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishedOut {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// The broker's append time, ms since the Unix epoch.
    pub timestamp: i64,
    /// True if a message with the same `wharf-message-id` was published within the topic's
    /// dedup window: nothing was stored, and partition/offset are the original's.
    pub duplicate: bool,
}

impl From<broker::Published> for PublishedOut {
    fn from(p: broker::Published) -> Self {
        Self {
            partition: p.partition,
            offset: p.offset,
            timestamp: p.timestamp,
            duplicate: p.duplicate,
        }
    }
}

/// The answer to a publish: one result per message, in order.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishResponse {
    /// Per message.
    pub results: Vec<PublishedOut>,
}

/// A stored message.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageOut {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// The broker's append time, ms since the Unix epoch.
    pub timestamp: i64,
    /// The key, if any.
    pub key: Option<String>,
    /// The payload.
    pub value: String,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// How `key` and `value` are encoded here (base64 when asked, or when not UTF-8).
    pub encoding: Encoding,
}

impl MessageOut {
    /// From a stored message.
    pub fn new(m: broker::StoredMessage, encoding: Encoding) -> Self {
        let (key, value, encoding) = encode(encoding, m.key.as_ref(), &m.value);
        Self {
            partition: m.partition,
            offset: m.offset,
            timestamp: m.timestamp,
            key,
            value,
            headers: m.headers.into_iter().collect(),
            encoding,
        }
    }
}

/// Query of a read or replay.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// The partition (default 0).
    pub partition: Option<u32>,
    /// Start at this offset.
    pub offset: Option<u64>,
    /// Start at the first message appended at or after this time: RFC 3339, or ms since the
    /// Unix epoch.
    pub from_time: Option<String>,
    /// `earliest` (the default) or `latest` when neither `offset` nor `from_time` is given.
    pub from: Option<FromPosition>,
    /// At most this many messages (default 100; at most limits.max_read_messages).
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// About this many bytes at most (default 1 MiB; at least one message is returned).
    #[param(minimum = 1)]
    pub max_bytes: Option<u32>,
    /// If nothing is there yet, wait up to this long for a publish (default 0).
    pub wait_ms: Option<u64>,
    /// Encoding of keys and values in the answer.
    pub encoding: Option<Encoding>,
}

/// A named starting point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FromPosition {
    /// The oldest message held.
    #[default]
    Earliest,
    /// Only messages published from now on.
    Latest,
}

/// Parses a time given as RFC 3339 or as ms since the Unix epoch.
pub fn parse_time(field: &str, s: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    broker::time::parse_rfc3339(s).ok_or_else(|| {
        ApiError::invalid(
            field,
            format!("{s:?} is neither an RFC 3339 time nor milliseconds since the epoch"),
        )
    })
}

/// Messages read from a partition.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadResponse {
    /// In offset order.
    pub messages: Vec<MessageOut>,
    /// Where the next read should start.
    pub next_offset: u64,
    /// The first offset the partition still holds.
    pub start_offset: u64,
    /// One past the last acknowledged offset.
    pub high_watermark: u64,
    /// Set when the requested offset was deleted by retention and the read started here.
    pub skipped_to: Option<u64>,
}

impl ReadResponse {
    /// From the broker's result.
    pub fn new(r: broker::ReadResult, encoding: Encoding) -> Self {
        Self {
            messages: r
                .messages
                .into_iter()
                .map(|m| MessageOut::new(m, encoding))
                .collect(),
            next_offset: r.next_offset,
            start_offset: r.start_offset,
            high_watermark: r.high_watermark,
            skipped_to: r.skipped_to,
        }
    }
}

// ---- topics ---------------------------------------------------------------------------------

/// When a publish is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    /// fsync before the acknowledgement (group commit). The default.
    #[default]
    Always,
    /// Acknowledge when written; fsync every `sync_interval_ms`.
    Interval,
    /// Acknowledge when written; leave syncing to the OS.
    None,
}

/// Retention of a topic (whole segments are deleted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Delete segments whose newest message is older than this.
    #[schema(minimum = 1)]
    pub max_age_ms: Option<u64>,
    /// Delete the oldest segments while a partition is larger than this.
    pub max_bytes: Option<u64>,
}

/// Settings of a topic (`PUT` body; every field optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Partitions, 1..=1024 (default 1).
    #[schema(minimum = 1, maximum = 1024)]
    pub partitions: Option<u32>,
    /// Default `always`.
    pub durability: Option<DurabilityMode>,
    /// The fsync interval of `interval` durability (default 100).
    #[schema(minimum = 1)]
    pub sync_interval_ms: Option<u64>,
    /// Default: keep everything.
    pub retention: Option<RetentionSettings>,
    /// Window of `wharf-message-id` dedup (default 120000; 0 = off).
    pub dedup_window_ms: Option<u64>,
    /// Largest message (default 1 MiB, at most 16 MiB).
    // No maximum in the schema: reserved dead-letter topics hold a little more than 16 MiB
    // (a dead letter carries extra headers); PUT is capped by limits.max_message_bytes.
    #[schema(minimum = 1)]
    pub max_message_bytes: Option<u64>,
    /// Segment file size (default 128 MiB).
    #[schema(minimum = 65536, maximum = 1073741824)]
    pub segment_bytes: Option<u64>,
}

impl TopicSettings {
    /// To the broker's config (defaults filled in).
    pub fn to_config(&self) -> Result<broker::TopicConfig, ApiError> {
        let d = broker::TopicConfig::default();
        let durability = match (self.durability.unwrap_or_default(), self.sync_interval_ms) {
            (DurabilityMode::Interval, ms) => broker::Durability::Interval {
                ms: ms.unwrap_or(100),
            },
            (_, Some(_)) => {
                return Err(ApiError::invalid(
                    "sync_interval_ms",
                    "applies to \"interval\" durability only",
                ));
            }
            (DurabilityMode::Always, None) => broker::Durability::Always,
            (DurabilityMode::None, None) => broker::Durability::None,
        };
        let retention = self.retention.clone().unwrap_or_default();
        Ok(broker::TopicConfig {
            partitions: self.partitions.unwrap_or(d.partitions),
            durability,
            retention_ms: retention.max_age_ms,
            retention_bytes: retention.max_bytes,
            dedup_window_ms: self.dedup_window_ms.unwrap_or(d.dedup_window_ms),
            max_message_bytes: self.max_message_bytes.unwrap_or(d.max_message_bytes),
            segment_bytes: self.segment_bytes.unwrap_or(d.segment_bytes),
        })
    }

    /// From the broker's config (every field set).
    pub fn from_config(c: &broker::TopicConfig) -> Self {
        let (durability, sync_interval_ms) = match c.durability {
            broker::Durability::Always => (DurabilityMode::Always, None),
            broker::Durability::Interval { ms } => (DurabilityMode::Interval, Some(ms)),
            broker::Durability::None => (DurabilityMode::None, None),
        };
        Self {
            partitions: Some(c.partitions),
            durability: Some(durability),
            sync_interval_ms,
            retention: Some(RetentionSettings {
                max_age_ms: c.retention_ms,
                max_bytes: c.retention_bytes,
            }),
            dedup_window_ms: Some(c.dedup_window_ms),
            max_message_bytes: Some(c.max_message_bytes),
            segment_bytes: Some(c.segment_bytes),
        }
    }
}

/// Positions of one partition.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionOut {
    /// The partition.
    pub partition: u32,
    /// First offset still held.
    pub start_offset: u64,
    /// One past the last acknowledged offset.
    pub high_watermark: u64,
}

/// A topic.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicOut {
    /// Its name.
    pub name: String,
    /// Its settings, every field set.
    pub settings: TopicSettings,
    /// Its partitions.
    pub partitions: Vec<PartitionOut>,
}

impl From<broker::TopicInfo> for TopicOut {
    fn from(t: broker::TopicInfo) -> Self {
        Self {
            settings: TopicSettings::from_config(&t.config),
            name: t.name,
            partitions: t
                .partitions
                .into_iter()
                .map(|p| PartitionOut {
                    partition: p.partition,
                    start_offset: p.start_offset,
                    high_watermark: p.high_watermark,
                })
                .collect(),
        }
    }
}

/// The topics.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicList {
    /// By name.
    pub topics: Vec<TopicOut>,
}

// ---- subscriptions --------------------------------------------------------------------------

/// The two kinds of subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionKind {
    /// A consumer group: partitions assigned to members, committed offsets, replay.
    Stream,
    /// Queue semantics: any member receives any message under a lease; ack/nack.
    Shared,
}

/// Retry backoff of a shared subscription.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffSettings {
    /// First retry delay (default 1000).
    #[schema(maximum = 604800000)]
    pub initial_ms: Option<u64>,
    /// Longest retry delay (default 60000).
    #[schema(maximum = 604800000)]
    pub max_ms: Option<u64>,
    /// Random spread in percent, 0..=100 (default 20).
    #[schema(maximum = 100)]
    pub jitter_pct: Option<u32>,
}

/// Settings of a subscription (`PUT` body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSettings {
    /// `stream` or `shared`.
    pub kind: SubscriptionKind,
    /// Where the subscription starts: `earliest` (default) or `latest`.
    pub start: Option<FromPosition>,
    /// Start at this offset instead (every partition).
    pub start_offset: Option<u64>,
    /// Start at this time instead: RFC 3339 or ms since the Unix epoch.
    pub start_time: Option<String>,
    /// Stream: a member silent this long is removed (default 30000).
    #[schema(minimum = 1000, maximum = 3600000)]
    pub session_timeout_ms: Option<u64>,
    /// Shared: deliveries before dead-lettering (default 5).
    #[schema(minimum = 1, maximum = 1000)]
    pub max_deliveries: Option<u32>,
    /// Shared: default lease of a delivery (default 30000).
    #[schema(minimum = 100, maximum = 43200000)]
    pub lease_ms: Option<u64>,
    /// Shared: retry backoff.
    pub backoff: Option<BackoffSettings>,
    /// Shared: one message in flight per key, in order (default false).
    pub ordered_by_key: Option<bool>,
    /// Shared: most deliveries one member holds at once (default 1000).
    #[schema(minimum = 1)]
    pub max_in_flight_per_member: Option<u32>,
    /// Shared: deliver to an app route instead of waiting for consumers to receive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushSettings>,
}

/// Push delivery to an app: `POST {route}` on an instance of `app`, the message as the body
/// and its headers as headers. 2xx acks; 408, 429, 5xx, timeouts and connection errors nack
/// with the subscription's backoff; any other answer dead-letters the message at once with
/// the answer as the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    /// The app (`/v1/apps`).
    pub app: String,
    /// The path to `POST` to (default `/`).
    pub route: Option<String>,
    /// Deliveries in flight at once (default 16).
    #[schema(minimum = 1, maximum = 10000)]
    pub max_in_flight: Option<u32>,
    /// How long the app has to answer one delivery, in milliseconds (default 10000).
    #[schema(minimum = 1, maximum = 3600000)]
    pub timeout_ms: Option<u64>,
}

impl PushSettings {
    fn to_config(&self) -> broker::PushConfig {
        let d = broker::PushConfig::default();
        broker::PushConfig {
            app: self.app.clone(),
            route: self.route.clone().unwrap_or(d.route),
            max_in_flight: self.max_in_flight.unwrap_or(d.max_in_flight),
            timeout_ms: self.timeout_ms.unwrap_or(d.timeout_ms),
        }
    }

    fn from_config(c: &broker::PushConfig) -> Self {
        Self {
            app: c.app.clone(),
            route: Some(c.route.clone()),
            max_in_flight: Some(c.max_in_flight),
            timeout_ms: Some(c.timeout_ms),
        }
    }
}

impl SubscriptionSettings {
    /// To the broker's config.
    pub fn to_config(&self) -> Result<broker::SubscriptionConfig, ApiError> {
        let start = match (self.start, self.start_offset, &self.start_time) {
            (None, None, None) | (Some(FromPosition::Earliest), None, None) => {
                broker::Position::Earliest
            }
            (Some(FromPosition::Latest), None, None) => broker::Position::Latest,
            (None, Some(o), None) => broker::Position::Offset(o),
            (None, None, Some(t)) => broker::Position::Timestamp(parse_time("start_time", t)?),
            _ => {
                return Err(ApiError::invalid(
                    "start",
                    "give at most one of start, start_offset and start_time",
                ));
            }
        };
        let only = |field: &str, set: bool, kind: &str| {
            if set {
                Err(ApiError::invalid(
                    field,
                    format!("applies to {kind} subscriptions only"),
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            SubscriptionKind::Stream => {
                only("max_deliveries", self.max_deliveries.is_some(), "shared")?;
                only("push", self.push.is_some(), "shared")?;
                only("lease_ms", self.lease_ms.is_some(), "shared")?;
                only("backoff", self.backoff.is_some(), "shared")?;
                only("ordered_by_key", self.ordered_by_key.is_some(), "shared")?;
                only(
                    "max_in_flight_per_member",
                    self.max_in_flight_per_member.is_some(),
                    "shared",
                )?;
                let d = broker::StreamConfig::default();
                Ok(broker::SubscriptionConfig::Stream(broker::StreamConfig {
                    start,
                    session_timeout_ms: self.session_timeout_ms.unwrap_or(d.session_timeout_ms),
                }))
            }
            SubscriptionKind::Shared => {
                only(
                    "session_timeout_ms",
                    self.session_timeout_ms.is_some(),
                    "stream",
                )?;
                let d = broker::SharedConfig::default();
                let b = self.backoff.clone().unwrap_or_default();
                Ok(broker::SubscriptionConfig::Shared(broker::SharedConfig {
                    max_deliveries: self.max_deliveries.unwrap_or(d.max_deliveries),
                    lease_ms: self.lease_ms.unwrap_or(d.lease_ms),
                    backoff_initial_ms: b.initial_ms.unwrap_or(d.backoff_initial_ms),
                    backoff_max_ms: b.max_ms.unwrap_or(d.backoff_max_ms),
                    backoff_jitter_pct: b.jitter_pct.unwrap_or(d.backoff_jitter_pct),
                    ordered_by_key: self.ordered_by_key.unwrap_or(d.ordered_by_key),
                    max_in_flight_per_member: self
                        .max_in_flight_per_member
                        .unwrap_or(d.max_in_flight_per_member),
                    start,
                    push: self.push.as_ref().map(PushSettings::to_config),
                }))
            }
        }
    }

    /// From the broker's config (every field of its kind set).
    pub fn from_config(c: &broker::SubscriptionConfig) -> Self {
        let start_fields = |p: &broker::Position| match *p {
            broker::Position::Earliest => (Some(FromPosition::Earliest), None, None),
            broker::Position::Latest => (Some(FromPosition::Latest), None, None),
            broker::Position::Offset(o) => (None, Some(o), None),
            broker::Position::Timestamp(t) => (None, None, Some(t.to_string())),
        };
        match c {
            broker::SubscriptionConfig::Stream(s) => {
                let (start, start_offset, start_time) = start_fields(&s.start);
                Self {
                    kind: SubscriptionKind::Stream,
                    start,
                    start_offset,
                    start_time,
                    session_timeout_ms: Some(s.session_timeout_ms),
                    max_deliveries: None,
                    lease_ms: None,
                    backoff: None,
                    ordered_by_key: None,
                    max_in_flight_per_member: None,
                    push: None,
                }
            }
            broker::SubscriptionConfig::Shared(s) => {
                let (start, start_offset, start_time) = start_fields(&s.start);
                Self {
                    kind: SubscriptionKind::Shared,
                    start,
                    start_offset,
                    start_time,
                    session_timeout_ms: None,
                    max_deliveries: Some(s.max_deliveries),
                    lease_ms: Some(s.lease_ms),
                    backoff: Some(BackoffSettings {
                        initial_ms: Some(s.backoff_initial_ms),
                        max_ms: Some(s.backoff_max_ms),
                        jitter_pct: Some(s.backoff_jitter_pct),
                    }),
                    ordered_by_key: Some(s.ordered_by_key),
                    max_in_flight_per_member: Some(s.max_in_flight_per_member),
                    push: s.push.as_ref().map(PushSettings::from_config),
                }
            }
        }
    }
}

/// Progress of a subscription on one partition.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionPartitionOut {
    /// The partition.
    pub partition: u32,
    /// Stream: committed offset (next to consume). Shared: everything below is finished.
    pub committed: u64,
    /// Messages between `committed` and the high watermark.
    pub lag: u64,
    /// True when retention deleted messages the subscription had not consumed.
    pub behind_retention: bool,
}

/// A subscription.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionOut {
    /// The topic.
    pub topic: String,
    /// The subscription's name.
    pub name: String,
    /// Its settings, every field of its kind set.
    pub settings: SubscriptionSettings,
    /// Per partition.
    pub partitions: Vec<SubscriptionPartitionOut>,
    /// Live members (stream).
    pub members: Vec<String>,
    /// Group generation (stream).
    pub generation: u64,
    /// Deliveries under a live lease (shared).
    pub in_flight: u64,
    /// Messages waiting for a delay or backoff (shared).
    pub delayed: u64,
    /// Messages in the dead-letter topic not yet redriven (shared).
    pub dead_lettered: u64,
}

impl From<broker::SubscriptionInfo> for SubscriptionOut {
    fn from(s: broker::SubscriptionInfo) -> Self {
        Self {
            settings: SubscriptionSettings::from_config(&s.config),
            topic: s.topic,
            name: s.name,
            partitions: s
                .partitions
                .into_iter()
                .map(|p| SubscriptionPartitionOut {
                    partition: p.partition,
                    committed: p.committed,
                    lag: p.lag,
                    behind_retention: p.behind_retention,
                })
                .collect(),
            members: s.members,
            generation: s.generation,
            in_flight: s.in_flight,
            delayed: s.delayed,
            dead_lettered: s.dead_lettered,
        }
    }
}

/// The subscriptions of a topic.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionList {
    /// By name.
    pub subscriptions: Vec<SubscriptionOut>,
}

// ---- stream consumption ---------------------------------------------------------------------

/// Join a stream subscription.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Rejoin with this id (omit for a new one).
    pub member_id: Option<String>,
}

/// A member's assignment.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MembershipOut {
    /// The member's id.
    pub member_id: String,
    /// The group generation.
    pub generation: u64,
    /// The partitions it owns.
    pub partitions: Vec<u32>,
}

impl From<broker::Membership> for MembershipOut {
    fn from(m: broker::Membership) -> Self {
        Self {
            member_id: m.member_id,
            generation: m.generation,
            partitions: m.partitions,
        }
    }
}

/// Fetch as a stream member.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchRequestIn {
    /// The member.
    pub member_id: String,
    /// At most this many messages (default 100).
    #[schema(minimum = 1)]
    pub max_messages: Option<u32>,
    /// About this many bytes at most (default 1 MiB).
    #[schema(minimum = 1)]
    pub max_bytes: Option<u32>,
    /// Wait up to this long if nothing is there (default 0).
    pub wait_ms: Option<u64>,
    /// Encoding of keys and values in the answer.
    pub encoding: Option<Encoding>,
}

/// Messages for a member.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageList {
    /// In offset order per partition.
    pub messages: Vec<MessageOut>,
}

/// A partition's offset.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OffsetOut {
    /// The partition.
    pub partition: u32,
    /// The offset (next to consume).
    pub offset: u64,
}

/// Commit offsets.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// The member.
    pub member_id: String,
    /// Next offset to consume, per partition it owns.
    pub offsets: Vec<OffsetOut>,
}

/// Offsets in force.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct OffsetList {
    /// Per partition.
    pub offsets: Vec<OffsetOut>,
}

/// Where a reset moves a stream subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetTarget {
    /// The oldest held messages.
    Earliest,
    /// The high watermarks.
    Latest,
    /// The first messages at or after `timestamp`.
    Timestamp,
    /// The given `offsets`.
    Offsets,
}

/// Reset a stream subscription.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Where to.
    pub to: ResetTarget,
    /// With `timestamp`: RFC 3339 or ms since the Unix epoch.
    pub timestamp: Option<String>,
    /// With `offsets`: per partition.
    pub offsets: Option<Vec<OffsetOut>>,
}

impl ResetRequest {
    /// To the broker's reset.
    pub fn to_reset(&self) -> Result<broker::ResetTo, ApiError> {
        match (self.to, &self.timestamp, &self.offsets) {
            (ResetTarget::Earliest, None, None) => Ok(broker::ResetTo::Earliest),
            (ResetTarget::Latest, None, None) => Ok(broker::ResetTo::Latest),
            (ResetTarget::Timestamp, Some(t), None) => {
                Ok(broker::ResetTo::Timestamp(parse_time("timestamp", t)?))
            }
            (ResetTarget::Offsets, None, Some(o)) => Ok(broker::ResetTo::Offsets(
                o.iter().map(|o| (o.partition, o.offset)).collect(),
            )),
            _ => Err(ApiError::invalid(
                "to",
                "\"timestamp\" needs `timestamp`, \"offsets\" needs `offsets`, others neither",
            )),
        }
    }
}

// ---- shared consumption ---------------------------------------------------------------------

/// Receive from a shared subscription.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveRequestIn {
    /// Who receives (for the per-member in-flight limit).
    pub member: Option<String>,
    /// At most this many deliveries (default 1).
    #[schema(minimum = 1, maximum = 1000)]
    pub max: Option<u32>,
    /// Wait up to this long if nothing is available (default 0).
    pub wait_ms: Option<u64>,
    /// Lease of these deliveries (default: the subscription's).
    #[schema(minimum = 100, maximum = 43200000)]
    pub lease_ms: Option<u64>,
    /// Encoding of keys and values in the answer.
    pub encoding: Option<Encoding>,
}

/// A message delivered under a lease.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryOut {
    /// Pass to ack, nack, extend or terminate.
    pub ack_id: String,
    /// 1 on the first delivery.
    pub delivery_count: u32,
    /// When the lease ends, ms since the Unix epoch.
    pub lease_deadline: i64,
    /// The message.
    pub message: MessageOut,
}

impl DeliveryOut {
    /// From the broker's delivery.
    pub fn new(d: broker::Delivery, encoding: Encoding) -> Self {
        Self {
            ack_id: d.ack_id,
            delivery_count: d.delivery_count,
            lease_deadline: d.lease_deadline,
            message: MessageOut::new(d.message, encoding),
        }
    }
}

/// Deliveries.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    /// The deliveries.
    pub deliveries: Vec<DeliveryOut>,
}

/// Acknowledge deliveries.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// 1..=1000 ack ids.
    #[schema(min_items = 1, max_items = 1000)]
    pub ack_ids: Vec<String>,
}

/// Give deliveries back.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    /// 1..=1000 ack ids.
    #[schema(min_items = 1, max_items = 1000)]
    pub ack_ids: Vec<String>,
    /// Deliver again after this long (default: the subscription's backoff).
    pub delay_ms: Option<u64>,
}

/// Extend leases.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// 1..=1000 ack ids.
    #[schema(min_items = 1, max_items = 1000)]
    pub ack_ids: Vec<String>,
    /// The new lease, from now.
    pub lease_ms: u64,
}

/// Dead-letter deliveries now.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminateRequest {
    /// 1..=1000 ack ids.
    #[schema(min_items = 1, max_items = 1000)]
    pub ack_ids: Vec<String>,
    /// Why (goes into the `wharf-dlq-reason` header).
    pub reason: Option<String>,
}

/// Per-ack-id outcome.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AckResultOut {
    /// The ack id.
    pub ack_id: String,
    /// `null` if it worked, else the code (`lease_expired`, `bad_ack_id`).
    pub error: Option<String>,
}

/// Outcomes, in request order.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AckResponse {
    /// Per ack id.
    pub results: Vec<AckResultOut>,
}

impl AckResponse {
    /// From the broker's outcomes.
    pub fn new(outcomes: Vec<broker::AckOutcome>) -> Self {
        Self {
            results: outcomes
                .into_iter()
                .map(|o| AckResultOut {
                    ack_id: o.ack_id,
                    error: o.error,
                })
                .collect(),
        }
    }
}

/// Query of the dead-letter listing.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Start at this offset of the dead-letter topic (default: the oldest held).
    pub offset: Option<u64>,
    /// At most this many (default 100).
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// Encoding of keys and values in the answer.
    pub encoding: Option<Encoding>,
}

/// Redrive dead letters.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// At most this many (default: all, up to 100000).
    #[schema(minimum = 1, maximum = 100000)]
    pub max: Option<u32>,
}

/// How many were redriven.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RedriveResponse {
    /// Messages put back into the subscription.
    pub redriven: u64,
}

// ---- queues ---------------------------------------------------------------------------------

/// Settings of a queue (`PUT` body): its topic and its shared subscription.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// The topic's settings.
    pub topic: Option<TopicSettings>,
    /// The shared subscription's settings (`kind` may be omitted; it is `shared`).
    pub subscription: Option<QueueSubscriptionSettings>,
}

/// A queue's subscription settings (shared only).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSubscriptionSettings {
    /// Deliveries before dead-lettering (default 5).
    #[schema(minimum = 1, maximum = 1000)]
    pub max_deliveries: Option<u32>,
    /// Default lease of a delivery (default 30000).
    #[schema(minimum = 100, maximum = 43200000)]
    pub lease_ms: Option<u64>,
    /// Retry backoff.
    pub backoff: Option<BackoffSettings>,
    /// One message in flight per key, in order (default false).
    pub ordered_by_key: Option<bool>,
    /// Most deliveries one member holds at once (default 1000).
    #[schema(minimum = 1)]
    pub max_in_flight_per_member: Option<u32>,
}

impl QueueSubscriptionSettings {
    /// As subscription settings.
    pub fn to_settings(&self) -> SubscriptionSettings {
        SubscriptionSettings {
            kind: SubscriptionKind::Shared,
            start: None,
            start_offset: None,
            start_time: None,
            session_timeout_ms: None,
            max_deliveries: self.max_deliveries,
            lease_ms: self.lease_ms,
            backoff: self.backoff.clone(),
            ordered_by_key: self.ordered_by_key,
            max_in_flight_per_member: self.max_in_flight_per_member,
            push: None,
        }
    }
}

/// A queue.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueOut {
    /// Its name (of the topic and of the subscription).
    pub name: String,
    /// The topic.
    pub topic: TopicOut,
    /// The shared subscription.
    pub subscription: SubscriptionOut,
}

// ---- operations -----------------------------------------------------------------------------

/// Liveness or readiness.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthOut {
    /// `ok`, or `unavailable` (readiness only).
    pub status: String,
    /// Why not ready.
    pub reason: Option<String>,
    /// The engine.
    pub engine: String,
    /// The server's version.
    pub version: String,
}

/// A subscription's numbers in the stats.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionStats {
    /// The name.
    pub name: String,
    /// `stream` or `shared`.
    pub kind: SubscriptionKind,
    /// Messages not yet consumed, over all partitions.
    pub lag: u64,
    /// Deliveries under a live lease.
    pub in_flight: u64,
    /// Messages waiting for a delay or a backoff.
    pub delayed: u64,
    /// Messages in the dead-letter topic.
    pub dead_lettered: u64,
    /// Live members (stream).
    pub members: u64,
}

/// A topic's numbers in the stats.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicStats {
    /// The name.
    pub name: String,
    /// Partitions.
    pub partitions: u32,
    /// Messages held (high watermark minus start offset, over all partitions).
    pub messages: u64,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionStats>,
}

/// Everything at a glance.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsOut {
    /// The engine.
    pub engine: String,
    /// Whether writes work.
    pub writable: bool,
    /// Topics (reserved dead-letter topics included).
    pub topics: Vec<TopicStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bodies_parse_by_shape() {
        let one = PublishRequest::from_slice(br#"{"value":"v","headers":{"messages":"x"}}"#)
            .expect("one message whose header is named messages");
        assert!(matches!(one, PublishRequest::One(ref m) if m.value == "v"));
        let batch = PublishRequest::from_slice(br#"{"messages":[{"value":"a"},{"value":"b"}]}"#)
            .expect("batch");
        assert_eq!(batch.into_messages().len(), 2);
        let quoted = PublishRequest::from_slice(br#"{"value":"say \"messages\""}"#)
            .expect("a value mentioning messages");
        assert!(matches!(quoted, PublishRequest::One(_)));
        let e = PublishRequest::from_slice(br#"{"messages":[{"valu":"a"}]}"#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert!(e.message.contains("valu"), "{}", e.message);
        let e = PublishRequest::from_slice(b"[1,2]").unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }
}
