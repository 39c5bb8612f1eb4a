//! [`StreamConsumer`]: a consumer group member over the server-streaming `Consume` call, as an
//! async [`Stream`] of records.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::BoxStream;
use tokio::time::Instant;
use tonic::codec::Streaming;

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::proto;
use crate::proto::consume_response::Event;
use crate::retry::RetryPolicy;
use crate::types::{Record, committed};

/// How a [`StreamConsumer`] consumes.
#[derive(Clone, Debug, Default)]
pub struct StreamConsumerOptions {
    /// Most messages per batch from the server (default 100).
    pub max_messages: Option<u32>,
    /// Let the server commit what it sent before it fetches more: convenient, but
    /// at-most-once for records still on their way or not yet processed when the consumer
    /// goes away. For at-least-once leave it off and [`StreamConsumer::commit`] after
    /// processing.
    pub auto_commit: bool,
    /// If set, a broken stream (a retryable error, or the server ending it) is reopened under
    /// this policy: the consumer joins again as a new member, and resumes after the committed
    /// offsets (so what was not committed is consumed again). The attempts count from the
    /// last record received. Unset (the default): the stream yields the error and ends.
    pub reconnect: Option<RetryPolicy>,
}

/// The member's current place in its group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    /// The member id (commits use it).
    pub member_id: String,
    /// The group generation.
    pub generation: u64,
    /// The partitions this member owns.
    pub partitions: Vec<u32>,
}

impl From<proto::Membership> for Assignment {
    fn from(m: proto::Membership) -> Self {
        Assignment {
            member_id: m.member_id,
            generation: m.generation,
            partitions: m.partitions,
        }
    }
}

type Shared = Arc<Mutex<Assignment>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Assignment> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A member of a stream subscription (consumer group): an async [`Stream`] of the
/// [`Record`]s of the partitions it owns, in order per partition.
///
/// Opening it joins the group; the server heartbeats for it while the stream is open and the
/// member leaves when it is dropped. Rebalances are followed: [`assignment`](Self::assignment)
/// is always the latest. Commit what was processed with [`commit`](Self::commit) (or set
/// [`StreamConsumerOptions::auto_commit`]). After an error item the stream ends, unless
/// [`StreamConsumerOptions::reconnect`] is set.
///
/// ```no_run
/// # async fn demo() -> Result<(), wharf_client::Error> {
/// use futures_util::StreamExt;
/// use wharf_client::{Client, StreamConsumerOptions};
///
/// let client = Client::connect("http://127.0.0.1:7400").await?;
/// let mut consumer = client
///     .stream_consumer("orders", "billing", StreamConsumerOptions::default())
///     .await?;
/// println!("member {} owns {:?}", consumer.member_id(), consumer.assignment().partitions);
/// while let Some(record) = consumer.next().await {
///     let record = record?;
///     println!("{}:{} {:?}", record.partition, record.offset, record.value_str());
///     consumer.commit(&record).await?;
/// }
/// # Ok(()) }
/// ```
pub struct StreamConsumer {
    // In a mutex only to make the consumer `Sync` (polling uses `get_mut`, never locks).
    records: Mutex<BoxStream<'static, Result<Record>>>,
    shared: Shared,
    client: Client,
    topic: Arc<str>,
    subscription: Arc<str>,
}

impl fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("topic", &self.topic)
            .field("subscription", &self.subscription)
            .field("assignment", &*lock(&self.shared))
            .finish_non_exhaustive()
    }
}

/// The state the record stream runs on.
struct State {
    client: Client,
    request: proto::ConsumeRequest,
    reconnect: Option<RetryPolicy>,
    streaming: Option<Streaming<proto::ConsumeResponse>>,
    buffer: VecDeque<Record>,
    shared: Shared,
    /// Reconnect attempts since the last record, and when the first of them started.
    failures: u32,
    failing_since: Option<Instant>,
    done: bool,
}

/// Opens `Consume` and reads up to the first assignment.
async fn open(
    client: &Client,
    request: &proto::ConsumeRequest,
) -> Result<(
    Streaming<proto::ConsumeResponse>,
    Assignment,
    VecDeque<Record>,
)> {
    let t = client.call_timeout(Duration::ZERO);
    let mut svc = client.stream_consumer_service();
    let mut streaming = Client::run(t, svc.consume(client.request(request.clone(), None))).await?;
    let mut buffer = VecDeque::new();
    let first = async {
        loop {
            match streaming.message().await? {
                Some(proto::ConsumeResponse {
                    event: Some(Event::Assignment(m)),
                }) => return Ok(Assignment::from(m)),
                Some(proto::ConsumeResponse {
                    event: Some(Event::Messages(batch)),
                }) => buffer.extend(batch.messages.into_iter().map(Record::from)),
                Some(proto::ConsumeResponse { event: None }) => {}
                None => {
                    return Err(tonic::Status::unavailable(
                        "the server ended the stream before the assignment",
                    ));
                }
            }
        }
    };
    let assignment = match t {
        Some(t) => tokio::time::timeout(t, first)
            .await
            .map_err(|_| Error::timeout(format!("no assignment within {t:?}")))?,
        None => first.await,
    }
    .map_err(Error::from)?;
    Ok((streaming, assignment, buffer))
}

impl State {
    /// The next record, error, or the end.
    async fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if let Some(r) = self.buffer.pop_front() {
                self.failures = 0;
                self.failing_since = None;
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            let failure = match self.streaming.as_mut() {
                Some(s) => match s.message().await {
                    Ok(Some(resp)) => {
                        match resp.event {
                            Some(Event::Assignment(m)) => *lock(&self.shared) = m.into(),
                            Some(Event::Messages(batch)) => self
                                .buffer
                                .extend(batch.messages.into_iter().map(Record::from)),
                            None => {}
                        }
                        continue;
                    }
                    Ok(None) => Error::closed("the server ended the consume stream"),
                    Err(status) => Error::from(status),
                },
                None => Error::closed("the consume stream is closed"),
            };
            self.streaming = None;
            match self.reconnect_after(failure).await {
                Ok(()) => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Reopens the stream under the reconnect policy, or answers why not.
    async fn reconnect_after(&mut self, mut failure: Error) -> Result<()> {
        let Some(policy) = self.reconnect.clone() else {
            return Err(failure);
        };
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        loop {
            // A stream the server ended is worth reopening like a broken one.
            let retryable = failure.is_retryable() || failure.kind() == ErrorKind::Closed;
            let probe = if retryable {
                Error::new(ErrorKind::Unavailable, failure.message())
            } else {
                failure.clone()
            };
            self.failures = self.failures.saturating_add(1);
            let unit: f64 = rand::random();
            let Some(delay) = policy.next_delay(&probe, self.failures, since.elapsed(), unit)
            else {
                return Err(failure);
            };
            tokio::time::sleep(delay).await;
            match open(&self.client, &self.request).await {
                Ok((streaming, assignment, buffer)) => {
                    self.streaming = Some(streaming);
                    *lock(&self.shared) = assignment;
                    self.buffer.extend(buffer);
                    return Ok(());
                }
                Err(e) => failure = e,
            }
        }
    }
}

impl StreamConsumer {
    pub(crate) async fn open(
        client: Client,
        topic: String,
        subscription: String,
        options: StreamConsumerOptions,
    ) -> Result<StreamConsumer> {
        let request = proto::ConsumeRequest {
            topic: topic.clone(),
            subscription: subscription.clone(),
            max_messages: options.max_messages,
            auto_commit: options.auto_commit,
        };
        let (streaming, assignment, buffer) = open(&client, &request).await?;
        let shared = Arc::new(Mutex::new(assignment));
        let state = State {
            client: client.clone(),
            request,
            reconnect: options.reconnect,
            streaming: Some(streaming),
            buffer,
            shared: shared.clone(),
            failures: 0,
            failing_since: None,
            done: false,
        };
        let records = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        });
        Ok(StreamConsumer {
            records: Mutex::new(Box::pin(records)),
            shared,
            client,
            topic: topic.into(),
            subscription: subscription.into(),
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The subscription.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The latest assignment.
    pub fn assignment(&self) -> Assignment {
        lock(&self.shared).clone()
    }

    /// The member id of the latest assignment.
    pub fn member_id(&self) -> String {
        lock(&self.shared).member_id.clone()
    }

    /// Commits `record` as processed: its partition's next offset to consume becomes
    /// `record.offset + 1`. Durable when answered. Fails with `Conflict` (`not_assigned`) if
    /// a rebalance took the partition away.
    pub async fn commit(&self, record: &Record) -> Result<()> {
        self.commit_offsets(&[(record.partition, record.offset.saturating_add(1))])
            .await
            .map(drop)
    }

    /// Commits `(partition, next offset to consume)` pairs with the latest member id; answers
    /// the committed offsets in force.
    pub async fn commit_offsets(&self, offsets: &[(u32, u64)]) -> Result<Vec<proto::Committed>> {
        let member_id = self.member_id();
        let t = self.client.call_timeout(Duration::ZERO);
        let req = proto::CommitRequest {
            topic: self.topic.to_string(),
            subscription: self.subscription.to_string(),
            member_id,
            offsets: committed(offsets),
        };
        let mut svc = self.client.stream_consumer_service();
        let resp = Client::run(t, svc.commit(self.client.request(req, t))).await?;
        Ok(resp.offsets)
    }
}

impl Stream for StreamConsumer {
    type Item = Result<Record>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.records
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .poll_next(cx)
    }
}
