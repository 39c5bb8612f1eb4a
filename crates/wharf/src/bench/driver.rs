//! The [`Driver`] trait: what the workloads need from a message system.
//!
//! The workloads ([`super::workloads`]) are written once against this trait; a driver adapts
//! one system and one way of reaching it. Today: [`super::wharf_grpc::WharfGrpc`] (a Wharf
//! server over gRPC) and [`super::inproc::InProc`] (Wharf's embedded engine in this process,
//! through the `Engine` trait: the "direct call" baseline). A NATS JetStream, RabbitMQ or Redis
//! Streams driver implements the same five operations and gets every workload for free:
//!
//! | operation | Wharf | NATS JetStream | RabbitMQ | Redis Streams |
//! | --- | --- | --- | --- | --- |
//! | [`Driver::create_topic`] | topic | stream | stream queue per partition | stream key |
//! | [`Driver::create_queue`] | queue (topic + shared subscription) | work-queue stream + pull consumer | quorum queue | stream + group |
//! | [`Driver::create_subscription`] | stream subscription | durable consumer | a consumer from `x-stream-offset` (no server state) | consumer group |
//! | [`Driver::publisher`] | `Publish` | `js.publish` (await acks) | publisher confirms | `XADD` (pipelined) |
//! | [`Driver::subscribe`] | `Consume` stream | pull/ordered consumer | `basic.consume` | `XREADGROUP` |
//! | [`Driver::queue_consumer`] | `Process` bidi stream | pull consumer + `ack` | `basic.consume` + `basic.ack` | `XREADGROUP` + `XACK` |
//!
//! Contracts the workloads rely on (a new driver must keep them, or the numbers are not
//! comparable):
//!
//! - [`Publisher::publish`] returns only once the system acknowledged every message of the batch
//!   under the topic's durability (for Wharf `always`: fsync'd). Nothing is published that the
//!   workload did not hand over (no extra headers, no message ids: what a plain SDK user sends;
//!   a Wharf server adds its `traceparent` header to each message itself).
//! - [`Subscriber::next_batch`] and [`QueueConsumer::receive`] hand over the message values
//!   exactly as published (the latency workload reads its send stamp from the value's first 16
//!   bytes).
//! - [`QueueConsumer::ack`] returns only once the system confirmed the acks.
//! - Every wait is bounded by the `timeout` the workload passes: a driver never blocks longer.
//! - A driver value is shared by all tasks of a run (`Arc<dyn Driver>`); each task gets its own
//!   publisher or consumer, so those need not be `Sync` and may keep buffers between calls.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// The error of a benchmark step, in words for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BenchError(pub(crate) String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl BenchError {
    /// An error with this text.
    pub(crate) fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// This error with `what` in front: `what: error`.
    #[must_use]
    pub(crate) fn context(self, what: &str) -> Self {
        Self(format!("{what}: {}", self.0))
    }
}

/// The result of a benchmark step.
pub(crate) type Result<T> = std::result::Result<T, BenchError>;

/// `f`'s answer, its error turned into ours by `error(what, e)`, or an error saying that
/// `system` did not answer within `limit` (every call of a driver to its system is bounded).
pub(crate) async fn timed<T, E>(
    limit: Duration,
    what: &str,
    system: &str,
    f: impl Future<Output = std::result::Result<T, E>>,
    error: impl FnOnce(&str, E) -> BenchError,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(what, e)),
        Err(_) => Err(BenchError(format!(
            "{what}: no answer from {system} within {limit:?}"
        ))),
    }
}

/// `url` with its password (if any) replaced by `***`, for messages and the report.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_owned(),
    }
}

/// When the system acknowledges a publish (Wharf's three modes; other systems map them as
/// closely as they can and say so in [`Driver::describe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Durability {
    /// fsync before acknowledging (group commit).
    Always,
    /// Acknowledge once written; fsync periodically.
    Interval,
    /// Acknowledge once written; never fsync on the publish path.
    None,
}

impl Durability {
    /// The flag's spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Interval => "interval",
            Self::None => "none",
        }
    }
}

/// The settings of a topic (or queue) a run creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TopicSpec {
    /// Partitions.
    pub(crate) partitions: u32,
    /// `None`: the system's default (Wharf: `always`).
    pub(crate) durability: Option<Durability>,
}

/// Where the broker's work runs, for the CPU columns of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ServerSide {
    /// In another process reached over TCP at this host and port.
    Remote {
        /// The host of the target URL.
        host: String,
        /// The port of the target URL.
        port: u16,
    },
    /// In this process: the client's CPU includes the broker's.
    InProcess,
}

/// An opaque handle to settle one delivery (Wharf: the `ack_id`; RabbitMQ: the delivery tag;
/// NATS: the reply subject; Redis: the entry id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AckHandle {
    /// A textual handle.
    Text(String),
    /// A numeric handle (RabbitMQ's delivery tags).
    Number(u64),
}

/// A message system reached one way: creates what a run needs and hands out publishers and
/// consumers. See the [module documentation](self) for the contracts.
#[async_trait]
pub(crate) trait Driver: Send + Sync {
    /// One line for the report: the system, how it is reached, and anything that differs from
    /// a plain client (connections, flow-control settings).
    fn describe(&self) -> String;

    /// Where the broker's work runs.
    fn server_side(&self) -> ServerSide;

    /// Creates a topic for publish/subscribe; succeeds if it already exists with these
    /// settings.
    async fn create_topic(&self, topic: &str, spec: TopicSpec) -> Result<()>;

    /// Creates a queue named `queue` (Wharf: a topic plus a shared subscription of the same
    /// name); succeeds if it already exists with these settings.
    async fn create_queue(&self, queue: &str, spec: TopicSpec) -> Result<()>;

    /// Creates a stream subscription (a consumer group) `sub` on `topic` that starts at the
    /// earliest message.
    async fn create_subscription(&self, topic: &str, sub: &str) -> Result<()>;

    /// Deletes a topic or queue with everything in it (the end of a run).
    async fn delete_topic(&self, topic: &str) -> Result<()>;

    /// A publisher to `topic` for one task. Publishers of one driver may share connections.
    async fn publisher(&self, topic: &str) -> Result<Box<dyn Publisher>>;

    /// Joins the stream subscription `sub` of `topic` as a new member and starts receiving,
    /// at most `max_batch` messages per batch. Returns once the member holds its assignment.
    async fn subscribe(
        &self,
        topic: &str,
        sub: &str,
        max_batch: usize,
    ) -> Result<Box<dyn Subscriber>>;

    /// A consumer of `queue` that holds at most `window` unsettled deliveries.
    async fn queue_consumer(&self, queue: &str, window: usize) -> Result<Box<dyn QueueConsumer>>;

    /// Releases what the driver holds (for the embedded engine: closes it, syncing its logs).
    async fn close(&self) -> Result<()>;
}

/// An immutable batch of message values. Each batch gets an id of its own, so a driver may
/// keep an encoding of the batch it publishes again and again (the values never change).
#[derive(Debug)]
pub(crate) struct Batch {
    id: u64,
    values: Vec<Bytes>,
    headers: Headers,
}

/// Headers every message of a batch carries (`--header`; none by default).
pub(crate) type Headers = Arc<[(String, String)]>;

impl Batch {
    /// A batch of these values, each message with `headers`.
    pub(crate) fn new(values: Vec<Bytes>, headers: Headers) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            values,
            headers,
        }
    }

    /// The headers of every message.
    pub(crate) fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Unique among the batches of this process.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The values.
    pub(crate) fn values(&self) -> &[Bytes] {
        &self.values
    }

    /// How many values.
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

/// Publishes batches to one topic, one batch at a time (a workload runs several publishers
/// for more in flight).
#[async_trait]
pub(crate) trait Publisher: Send {
    /// Publishes the first `n` values of `batch` (at most its length) as one batch (one
    /// request where the system has batches), without key or partition and with the batch's
    /// headers (none unless `--header` is given); returns once
    /// the system acknowledged every message, and how many it acknowledged.
    async fn publish(&mut self, batch: &Batch, n: usize) -> Result<usize>;
}

/// A member of a stream subscription receiving batches.
#[async_trait]
pub(crate) trait Subscriber: Send {
    /// Waits up to `timeout` for the next batch; clears `out` and fills it with the values of
    /// the batch's messages. Returns how many there are (0: nothing came within `timeout`).
    /// Does not commit offsets.
    async fn next_batch(&mut self, out: &mut Vec<Bytes>, timeout: Duration) -> Result<usize>;

    /// Leaves the subscription.
    async fn close(self: Box<Self>) -> Result<()>;
}

/// A consumer of a queue: receives under a lease, acknowledges.
#[async_trait]
pub(crate) trait QueueConsumer: Send {
    /// Waits up to `timeout` for deliveries; clears `values` and `acks` and fills them, one
    /// entry per delivery. Returns how many (0: nothing came within `timeout`).
    async fn receive(
        &mut self,
        values: &mut Vec<Bytes>,
        acks: &mut Vec<AckHandle>,
        timeout: Duration,
    ) -> Result<usize>;

    /// Acknowledges the deliveries of `acks` (all in one request where the system can);
    /// returns once the system confirmed, and how many it confirmed as done.
    async fn ack(&mut self, acks: &[AckHandle]) -> Result<usize>;

    /// Stops consuming; what was left unsettled goes back to the queue.
    async fn close(self: Box<Self>) -> Result<()>;
}
