//! Friendly inputs and outputs: messages to publish, stored records, topic and subscription
//! settings, read positions.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::proto;

/// The header that makes a publish idempotent within the topic's dedup window.
pub const MESSAGE_ID_HEADER: &str = "wharf-message-id";
/// The header (RFC 3339 time) that delays delivery on shared subscriptions.
pub const DELIVER_AT_HEADER: &str = "wharf-deliver-at";
/// On a dead letter: why it was dead-lettered (`max_deliveries` or the terminate reason).
pub const DLQ_REASON_HEADER: &str = "wharf-dlq-reason";
/// On a dead letter: how many times it had been delivered.
pub const DLQ_DELIVERIES_HEADER: &str = "wharf-dlq-deliveries";
/// On a dead letter: the topic it came from.
pub const DLQ_SOURCE_TOPIC_HEADER: &str = "wharf-dlq-source-topic";
/// On a dead letter: the partition it came from.
pub const DLQ_SOURCE_PARTITION_HEADER: &str = "wharf-dlq-source-partition";
/// On a dead letter: the offset it had in its partition.
pub const DLQ_SOURCE_OFFSET_HEADER: &str = "wharf-dlq-source-offset";

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn system_time_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A fresh random message id: 128 random bits as 32 lowercase hex digits.
pub fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

// ---- publishing -----------------------------------------------------------------------------

/// A message to publish: a value with an optional key (which picks the partition), headers
/// and an explicit partition.
///
/// ```
/// use wharf_client::Message;
///
/// let m = Message::new("order 1")
///     .key("customer-7")
///     .header("source", "web")
///     .id("order-1"); // the wharf-message-id: a repeat within the dedup window is a no-op
/// assert_eq!(m.message_id(), Some("order-1"));
/// let plain: Message = "hello".into();
/// assert_eq!(plain.value_ref(), &b"hello"[..]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    key: Option<Bytes>,
    value: Bytes,
    headers: HashMap<String, String>,
    partition: Option<u32>,
}

impl Message {
    /// A message with this value.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Message {
            value: value.into(),
            ..Message::default()
        }
    }

    /// Sets the key (the partition is the murmur2 hash of it, as in Kafka).
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds (or replaces) a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Publishes to this partition (overrides the key's).
    #[must_use]
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the `wharf-message-id` header: publishing the same id again within the topic's
    /// dedup window stores nothing and answers the original's place, marked duplicate. The
    /// [`Publisher`](crate::Publisher) sets a random one on messages without one.
    #[must_use]
    pub fn id(self, id: impl Into<String>) -> Self {
        self.header(MESSAGE_ID_HEADER, id)
    }

    /// Delays delivery on shared subscriptions until `at` (the `wharf-deliver-at` header).
    #[must_use]
    pub fn deliver_at(self, at: SystemTime) -> Self {
        self.header(DELIVER_AT_HEADER, rfc3339_millis(system_time_millis(at)))
    }

    /// The key.
    pub fn key_ref(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The value.
    pub fn value_ref(&self) -> &Bytes {
        &self.value
    }

    /// The headers.
    pub fn headers(&self) -> &HashMap<String, String> {
        &self.headers
    }

    /// The explicit partition, if set.
    pub fn partition_ref(&self) -> Option<u32> {
        self.partition
    }

    /// The `wharf-message-id` header, if set.
    pub fn message_id(&self) -> Option<&str> {
        self.headers.get(MESSAGE_ID_HEADER).map(String::as_str)
    }

    /// About how many bytes this message takes in a batch (key, value, headers).
    pub fn encoded_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum();
        self.key.as_ref().map_or(0, Bytes::len) + self.value.len() + headers + 16
    }

    pub(crate) fn ensure_id(&mut self) -> &str {
        self.headers
            .entry(MESSAGE_ID_HEADER.to_owned())
            .or_insert_with(new_message_id)
    }

    pub(crate) fn into_proto(self) -> proto::PublishMessage {
        proto::PublishMessage {
            key: self.key,
            value: self.value,
            headers: self.headers,
            partition: self.partition,
        }
    }
}

impl From<&'static str> for Message {
    fn from(s: &'static str) -> Self {
        Message::new(s)
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::new(s)
    }
}

impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::new(v)
    }
}

impl From<Bytes> for Message {
    fn from(v: Bytes) -> Self {
        Message::new(v)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch (proleptic Gregorian).
fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Where a published message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublishResult {
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The broker's append time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// True if its `wharf-message-id` had been published before (within the dedup window):
    /// nothing was stored, and partition and offset are the original's.
    pub duplicate: bool,
}

impl From<proto::PublishResult> for PublishResult {
    fn from(r: proto::PublishResult) -> Self {
        PublishResult {
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            duplicate: r.duplicate,
        }
    }
}

// ---- reading --------------------------------------------------------------------------------

/// A stored message, as read, fetched, consumed or delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The broker's append time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key, if it had one.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Bytes,
    /// The headers.
    pub headers: HashMap<String, String>,
}

impl Record {
    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// The key as UTF-8 text, if there is one and it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// A header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The `wharf-message-id` header.
    pub fn message_id(&self) -> Option<&str> {
        self.header(MESSAGE_ID_HEADER)
    }

    /// The append time.
    pub fn timestamp(&self) -> SystemTime {
        match u64::try_from(self.timestamp_ms) {
            Ok(ms) => UNIX_EPOCH + Duration::from_millis(ms),
            Err(_) => UNIX_EPOCH - Duration::from_millis(self.timestamp_ms.unsigned_abs()),
        }
    }
}

impl From<proto::Message> for Record {
    fn from(m: proto::Message) -> Self {
        Record {
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
            key: m.key,
            value: m.value,
            headers: m.headers,
        }
    }
}

/// Where a read or a subscription starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Position {
    /// The first offset still held.
    #[default]
    Earliest,
    /// The next offset to be written: only new messages.
    Latest,
    /// This offset.
    Offset(u64),
    /// The first message appended at or after this time, ms since the Unix epoch.
    TimestampMs(i64),
}

impl Position {
    /// The first message appended at or after `t`.
    pub fn at(t: SystemTime) -> Self {
        Position::TimestampMs(system_time_millis(t))
    }
}

impl From<Position> for proto::Position {
    fn from(p: Position) -> Self {
        use proto::position::At;
        let at = match p {
            Position::Earliest => At::Edge(proto::Edge::Earliest as i32),
            Position::Latest => At::Edge(proto::Edge::Latest as i32),
            Position::Offset(o) => At::Offset(o),
            Position::TimestampMs(t) => At::TimestampMs(t),
        };
        proto::Position { at: Some(at) }
    }
}

/// How to [`read`](crate::Client::read) a partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Where to start (default earliest).
    pub from: Position,
    /// Most messages (server default 100).
    pub max_messages: Option<u32>,
    /// About this many bytes at most (whole messages, at least one; server default 1 MiB).
    pub max_bytes: Option<u64>,
    /// If nothing is available, wait up to this long (long-poll).
    pub wait: Option<Duration>,
}

/// What a [`read`](crate::Client::read) or [`dead_letters`](crate::Client::dead_letters)
/// answered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadResult {
    /// The messages, in offset order.
    pub records: Vec<Record>,
    /// Where the next read should start.
    pub next_offset: u64,
    /// The partition's first offset still held.
    pub start_offset: u64,
    /// One past the partition's last acknowledged offset.
    pub high_watermark: u64,
    /// Set when the requested offset had been deleted by retention: the read started here.
    pub skipped_to: Option<u64>,
}

impl From<proto::ReadResponse> for ReadResult {
    fn from(r: proto::ReadResponse) -> Self {
        ReadResult {
            records: r.messages.into_iter().map(Record::from).collect(),
            next_offset: r.next_offset,
            start_offset: r.start_offset,
            high_watermark: r.high_watermark,
            skipped_to: r.skipped_to,
        }
    }
}

/// How a consumer group member [`fetch`](crate::Client::fetch)es.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// Most messages.
    pub max_messages: Option<u32>,
    /// About this many bytes at most.
    pub max_bytes: Option<u64>,
    /// If nothing is available, wait up to this long.
    pub wait: Option<Duration>,
}

/// How to [`receive`](crate::Client::receive) from a shared subscription.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// Most deliveries (server default 1).
    pub max: Option<u32>,
    /// If nothing is available, wait up to this long.
    pub wait: Option<Duration>,
    /// The lease (default: the subscription's).
    pub lease: Option<Duration>,
    /// Who receives (for the subscription's per-member in-flight limit).
    pub member: Option<String>,
}

// ---- topics ---------------------------------------------------------------------------------

/// When a publish counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync before acknowledging (group commit). The default.
    Always,
    /// Acknowledge once written; fsync at most every `durability_interval`.
    Interval,
    /// Acknowledge once written; never fsync on the publish path.
    None,
}

impl From<Durability> for proto::Durability {
    fn from(d: Durability) -> Self {
        match d {
            Durability::Always => proto::Durability::Always,
            Durability::Interval => proto::Durability::Interval,
            Durability::None => proto::Durability::None,
        }
    }
}

/// Settings of a new topic; unset fields take the server's defaults.
///
/// ```
/// use std::time::Duration;
/// use wharf_client::TopicConfig;
///
/// let config = TopicConfig {
///     retention: Some(Duration::from_secs(7 * 86_400)),
///     ..TopicConfig::with_partitions(4)
/// };
/// # let _ = config;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicConfig {
    /// Number of partitions (default 1).
    pub partitions: Option<u32>,
    /// When a publish counts as done (default always).
    pub durability: Option<Durability>,
    /// With [`Durability::Interval`]: the most time between fsyncs.
    pub durability_interval: Option<Duration>,
    /// Delete messages older than this.
    pub retention: Option<Duration>,
    /// Delete the oldest messages of a partition beyond this many bytes.
    pub retention_bytes: Option<u64>,
    /// How long a `wharf-message-id` is remembered for deduplication.
    pub dedup_window: Option<Duration>,
    /// The largest message (key + value + headers).
    pub max_message_bytes: Option<u64>,
    /// The size of a log segment.
    pub segment_bytes: Option<u64>,
}

impl TopicConfig {
    /// The defaults with this many partitions.
    pub fn with_partitions(partitions: u32) -> Self {
        TopicConfig {
            partitions: Some(partitions),
            ..TopicConfig::default()
        }
    }
}

impl From<TopicConfig> for proto::TopicConfig {
    fn from(c: TopicConfig) -> Self {
        proto::TopicConfig {
            partitions: c.partitions,
            durability: c
                .durability
                .map_or(proto::Durability::Unspecified, Into::into) as i32,
            durability_interval_ms: c.durability_interval.map(millis),
            retention_ms: c.retention.map(millis),
            retention_bytes: c.retention_bytes,
            dedup_window_ms: c.dedup_window.map(millis),
            max_message_bytes: c.max_message_bytes,
            segment_bytes: c.segment_bytes,
        }
    }
}

// ---- subscriptions --------------------------------------------------------------------------

/// Settings of a stream subscription (a consumer group); unset fields take the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamConfig {
    /// Where a partition without a committed offset starts (default earliest).
    pub start: Option<Position>,
    /// A member that has not heartbeaten for this long is dropped from the group.
    pub session_timeout: Option<Duration>,
}

/// Settings of a shared subscription (queue semantics); unset fields take the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedConfig {
    /// Deliveries before a message goes to the dead-letter topic.
    pub max_deliveries: Option<u32>,
    /// How long a delivery is leased to its consumer.
    pub lease: Option<Duration>,
    /// The first redelivery delay after a nack or an expired lease.
    pub backoff_initial: Option<Duration>,
    /// The longest redelivery delay.
    pub backoff_max: Option<Duration>,
    /// Random part of each redelivery delay, in percent.
    pub backoff_jitter_pct: Option<u32>,
    /// At most one delivery per key in flight (per-key order).
    pub ordered_by_key: Option<bool>,
    /// Most unsettled deliveries per member.
    pub max_in_flight_per_member: Option<u32>,
    /// Where the subscription starts (default earliest).
    pub start: Option<Position>,
    /// Deliver to an app instead of waiting for consumers (see [`Push`]).
    pub push: Option<Push>,
}

/// Push delivery of a shared subscription: Wharf `POST`s each message to `route` on an
/// instance of `app` (registered with [`crate::Client::register_instance`] or in the
/// server's config). 2xx acks; 408, 429, 5xx, timeouts and connection errors nack with the
/// subscription's backoff; any other answer dead-letters the message at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Push {
    /// The app.
    pub app: String,
    /// The path (default `/`).
    pub route: Option<String>,
    /// Deliveries in flight at once (default 16).
    pub max_in_flight: Option<u32>,
    /// How long the app has per delivery (default 10 s).
    pub timeout: Option<Duration>,
}

impl From<SharedConfig> for proto::SharedConfig {
    fn from(c: SharedConfig) -> Self {
        proto::SharedConfig {
            max_deliveries: c.max_deliveries,
            lease_ms: c.lease.map(millis),
            backoff_initial_ms: c.backoff_initial.map(millis),
            backoff_max_ms: c.backoff_max.map(millis),
            backoff_jitter_pct: c.backoff_jitter_pct,
            ordered_by_key: c.ordered_by_key,
            max_in_flight_per_member: c.max_in_flight_per_member,
            start: c.start.map(Into::into),
            push: c.push.map(|p| proto::PushConfig {
                app: p.app,
                route: p.route,
                max_in_flight: p.max_in_flight,
                timeout_ms: p.timeout.map(millis),
            }),
        }
    }
}

impl From<StreamConfig> for proto::StreamConfig {
    fn from(c: StreamConfig) -> Self {
        proto::StreamConfig {
            start: c.start.map(Into::into),
            session_timeout_ms: c.session_timeout.map(millis),
        }
    }
}

/// The kind and settings of a new subscription.
///
/// ```
/// use std::time::Duration;
/// use wharf_client::{SharedConfig, SubscriptionConfig};
///
/// let group = SubscriptionConfig::stream();
/// let work = SubscriptionConfig::Shared(SharedConfig {
///     max_deliveries: Some(3),
///     lease: Some(Duration::from_secs(30)),
///     ..SharedConfig::default()
/// });
/// # let _ = (group, work);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionConfig {
    /// A stream subscription: a consumer group whose members own partitions and commit
    /// offsets.
    Stream(StreamConfig),
    /// A shared subscription: any member receives any message under a lease and settles it.
    Shared(SharedConfig),
}

impl SubscriptionConfig {
    /// A stream subscription with the defaults.
    pub fn stream() -> Self {
        SubscriptionConfig::Stream(StreamConfig::default())
    }

    /// A shared subscription with the defaults.
    pub fn shared() -> Self {
        SubscriptionConfig::Shared(SharedConfig::default())
    }
}

impl From<SubscriptionConfig> for proto::create_subscription_request::Config {
    fn from(c: SubscriptionConfig) -> Self {
        use proto::create_subscription_request::Config;
        match c {
            SubscriptionConfig::Stream(s) => Config::Stream(s.into()),
            SubscriptionConfig::Shared(s) => Config::Shared(s.into()),
        }
    }
}

/// Where [`reset_subscription`](crate::Client::reset_subscription) moves a stream
/// subscription's committed offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// Every partition to its first offset (replay everything).
    Earliest,
    /// Every partition to its end (skip everything).
    Latest,
    /// Every partition to the first message at or after this time (ms since the epoch).
    TimestampMs(i64),
    /// These `(partition, next offset)` pairs; other partitions unchanged.
    Offsets(Vec<(u32, u64)>),
}

impl From<ResetTo> for proto::reset_subscription_request::To {
    fn from(r: ResetTo) -> Self {
        use proto::reset_subscription_request::To;
        match r {
            ResetTo::Earliest => To::Edge(proto::Edge::Earliest as i32),
            ResetTo::Latest => To::Edge(proto::Edge::Latest as i32),
            ResetTo::TimestampMs(t) => To::TimestampMs(t),
            ResetTo::Offsets(o) => To::Offsets(proto::Offsets {
                offsets: committed(&o),
            }),
        }
    }
}

pub(crate) fn committed(offsets: &[(u32, u64)]) -> Vec<proto::Committed> {
    offsets
        .iter()
        .map(|&(partition, offset)| proto::Committed { partition, offset })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_builder_and_ids() {
        let mut m = Message::new("v").key("k").header("a", "b").partition(3);
        assert_eq!(m.message_id(), None);
        let id = m.ensure_id().to_owned();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(m.ensure_id(), id, "an existing id is kept");
        let p = m.into_proto();
        assert_eq!(p.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(p.partition, Some(3));
        assert_eq!(p.headers.get("a").map(String::as_str), Some("b"));
        assert_eq!(p.headers.get(MESSAGE_ID_HEADER), Some(&id));
        assert_ne!(new_message_id(), new_message_id());
    }

    #[test]
    fn deliver_at_is_rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
        let m = Message::new("x").deliver_at(UNIX_EPOCH + Duration::from_secs(86_400));
        assert_eq!(
            m.headers().get(DELIVER_AT_HEADER).map(String::as_str),
            Some("1970-01-02T00:00:00.000Z")
        );
    }

    #[test]
    fn conversions() {
        let c: proto::TopicConfig = TopicConfig {
            durability: Some(Durability::None),
            retention: Some(Duration::from_secs(2)),
            ..TopicConfig::with_partitions(2)
        }
        .into();
        assert_eq!(c.partitions, Some(2));
        assert_eq!(c.durability, proto::Durability::None as i32);
        assert_eq!(c.retention_ms, Some(2000));
        assert_eq!(
            proto::TopicConfig::from(TopicConfig::default()).durability,
            0
        );
        let p: proto::Position = Position::Offset(7).into();
        assert_eq!(p.at, Some(proto::position::At::Offset(7)));
        let p: proto::Position = Position::Latest.into();
        assert_eq!(
            p.at,
            Some(proto::position::At::Edge(proto::Edge::Latest as i32))
        );
        let r = Record::from(proto::Message {
            partition: 1,
            offset: 2,
            timestamp_ms: 1000,
            key: None,
            value: Bytes::from_static(b"hi"),
            headers: HashMap::from([(MESSAGE_ID_HEADER.to_owned(), "x".to_owned())]),
        });
        assert_eq!(r.value_str(), Some("hi"));
        assert_eq!(r.message_id(), Some("x"));
        assert_eq!(r.timestamp(), UNIX_EPOCH + Duration::from_secs(1));
    }
}
