//! [`QueueConsumer`] and [`Delivery`]: a shared subscription's deliveries over the bidi
//! `Process` stream, each settled (ack, nack, extend, terminate) on the same stream.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::proto;
use crate::proto::process_request::Request as ProcessRequestKind;
use crate::proto::process_response::Response as ProcessResponseKind;
use crate::types::{Record, millis};

/// How a [`QueueConsumer`] receives.
#[derive(Clone, Debug, Default)]
pub struct QueueConsumerOptions {
    /// Most unsettled deliveries on the stream (server default 10).
    pub max_in_flight: Option<u32>,
    /// The lease of each delivery (default: the subscription's).
    pub lease: Option<Duration>,
    /// Who receives (for the subscription's per-member in-flight limit).
    pub member: Option<String>,
}

/// How a delivery is settled.
#[derive(Clone, Debug)]
pub(crate) enum SettleKind {
    Ack,
    Nack(Option<Duration>),
    Extend(Duration),
    Terminate(String),
}

impl SettleKind {
    fn action(&self) -> proto::SettleAction {
        match self {
            SettleKind::Ack => proto::SettleAction::Ack,
            SettleKind::Nack(_) => proto::SettleAction::Nack,
            SettleKind::Extend(_) => proto::SettleAction::Extend,
            SettleKind::Terminate(_) => proto::SettleAction::Terminate,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<proto::AckOutcome>>>;

/// Settles waiting for their `Settled`, per action in the order they were sent (the server
/// answers settles in the order it receives them).
#[derive(Default)]
struct Waiters {
    queues: HashMap<i32, VecDeque<Reply>>,
    /// Set once the stream ended: why.
    closed: Option<Error>,
}

fn lock(w: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sending half of a `Process` stream. Held by the consumer and its deliveries: the
/// request stream ends when the last of them is dropped.
struct StreamSettler {
    tx: mpsc::UnboundedSender<proto::ProcessRequest>,
    waiters: Arc<Mutex<Waiters>>,
    timeout: Option<Duration>,
}

impl StreamSettler {
    async fn settle(
        &self,
        ack_ids: Vec<String>,
        kind: SettleKind,
    ) -> Result<Vec<proto::AckOutcome>> {
        let action = kind.action();
        let (delay_ms, lease_ms, reason) = match kind {
            SettleKind::Ack => (None, None, String::new()),
            SettleKind::Nack(delay) => (delay.map(millis), None, String::new()),
            SettleKind::Extend(lease) => (None, Some(millis(lease)), String::new()),
            SettleKind::Terminate(reason) => (None, None, reason),
        };
        let req = proto::ProcessRequest {
            request: Some(ProcessRequestKind::Settle(proto::Settle {
                action: action as i32,
                ack_ids,
                delay_ms,
                lease_ms,
                reason,
            })),
        };
        let (reply, rx) = oneshot::channel();
        {
            // Queue the waiter and send under one lock, so the waiters' order is the order
            // the settles go out in.
            let mut w = lock(&self.waiters);
            if let Some(e) = &w.closed {
                return Err(e.clone());
            }
            self.tx
                .send(req)
                .map_err(|_| Error::closed("the process stream is closed"))?;
            w.queues.entry(action as i32).or_default().push_back(reply);
        }
        let answer = async {
            rx.await
                .unwrap_or_else(|_| Err(Error::closed("the process stream ended")))
        };
        match self.timeout {
            Some(t) => tokio::time::timeout(t, answer)
                .await
                .map_err(|_| Error::timeout(format!("no settle answer within {t:?}")))?,
            None => answer.await,
        }
    }
}

#[derive(Clone)]
enum Settler {
    Stream(Arc<StreamSettler>),
    Unary {
        client: Client,
        topic: Arc<str>,
        subscription: Arc<str>,
    },
}

/// A message delivered from a shared subscription under a lease. Settle it with
/// [`ack`](Delivery::ack) (done), [`nack`](Delivery::nack) (deliver again later),
/// [`extend`](Delivery::extend) (more time) or [`terminate`](Delivery::terminate) (straight to
/// the dead-letter topic). One left unsettled comes back after its lease.
///
/// A delivery from a [`QueueConsumer`] settles on its `Process` stream; one from
/// [`Client::receive`] with the unary calls.
#[derive(Clone)]
pub struct Delivery {
    record: Record,
    ack_id: String,
    delivery_count: u32,
    lease_deadline_ms: i64,
    settler: Settler,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("ack_id", &self.ack_id)
            .field("delivery_count", &self.delivery_count)
            .field("lease_deadline_ms", &self.lease_deadline_ms)
            .field("record", &self.record)
            .finish()
    }
}

impl Delivery {
    fn new(d: proto::Delivery, settler: Settler) -> Result<Delivery> {
        let message = d
            .message
            .ok_or_else(|| Error::internal("a delivery without its message"))?;
        Ok(Delivery {
            record: message.into(),
            ack_id: d.ack_id,
            delivery_count: d.delivery_count,
            lease_deadline_ms: d.lease_deadline_ms,
            settler,
        })
    }

    pub(crate) fn unary(
        d: proto::Delivery,
        client: Client,
        topic: Arc<str>,
        subscription: Arc<str>,
    ) -> Result<Delivery> {
        Delivery::new(
            d,
            Settler::Unary {
                client,
                topic,
                subscription,
            },
        )
    }

    /// The message.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The message, by value.
    pub fn into_record(self) -> Record {
        self.record
    }

    /// The opaque handle the server settles it by.
    pub fn ack_id(&self) -> &str {
        &self.ack_id
    }

    /// How many times it has been delivered (1 on the first delivery).
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// When the lease ends, ms since the Unix epoch, as the server said at delivery (an
    /// [`extend`](Delivery::extend) moves it on the server, not here).
    pub fn lease_deadline_ms(&self) -> i64 {
        self.lease_deadline_ms
    }

    /// When the lease ends.
    pub fn lease_deadline(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.lease_deadline_ms).unwrap_or(0))
    }

    async fn settle(&self, kind: SettleKind) -> Result<()> {
        let ids = vec![self.ack_id.clone()];
        let outcomes = match &self.settler {
            Settler::Stream(s) => s.settle(ids, kind).await?,
            Settler::Unary {
                client,
                topic,
                subscription,
            } => {
                client
                    .settle(topic.to_string(), subscription.to_string(), ids, kind)
                    .await?
            }
        };
        let outcome = outcomes.into_iter().find(|o| o.ack_id == self.ack_id);
        match outcome {
            Some(proto::AckOutcome { error: None, .. }) => Ok(()),
            Some(proto::AckOutcome {
                error: Some(code), ..
            }) => Err(Error::from_code(
                code.clone(),
                format!("delivery {}: {code}", self.ack_id),
            )),
            None => Err(Error::internal(format!(
                "the server answered no outcome for {}",
                self.ack_id
            ))),
        }
    }

    /// Done: it will not be delivered again. Fails with `Conflict` (`lease_expired`) if the
    /// lease had ended (it may have been delivered again since).
    pub async fn ack(&self) -> Result<()> {
        self.settle(SettleKind::Ack).await
    }

    /// Not done: deliver it again after `delay` (`None`: the subscription's backoff), or
    /// dead-letter it once it reached the subscription's `max_deliveries`.
    pub async fn nack(&self, delay: Option<Duration>) -> Result<()> {
        self.settle(SettleKind::Nack(delay)).await
    }

    /// Still working on it: the lease ends `lease` from now.
    pub async fn extend(&self, lease: Duration) -> Result<()> {
        self.settle(SettleKind::Extend(lease)).await
    }

    /// Never going to work: straight to the dead-letter topic with this reason (the
    /// `wharf-dlq-reason` header).
    pub async fn terminate(&self, reason: impl Into<String>) -> Result<()> {
        self.settle(SettleKind::Terminate(reason.into())).await
    }
}

/// A consumer of a shared subscription (a queue): an async [`Stream`] of [`Delivery`]s over
/// one bidi `Process` stream, on which each delivery is also settled. The server keeps at most
/// `max_in_flight` unsettled deliveries on the stream, so settle what is received (a delivery
/// that is dropped unsettled holds its slot until its lease ends, then comes again).
///
/// The stream ends after an error item. Dropping the consumer and every delivery closes the
/// stream; the server then gives unsettled deliveries back at once (for another member).
///
/// ```no_run
/// # async fn demo() -> Result<(), wharf_client::Error> {
/// use futures_util::StreamExt;
/// use wharf_client::{Client, QueueConsumerOptions};
///
/// let client = Client::connect("http://127.0.0.1:7400").await?;
/// let mut consumer = client
///     .queue_consumer("emails", "emails", QueueConsumerOptions::default())
///     .await?;
/// while let Some(delivery) = consumer.next().await {
///     let delivery = delivery?;
///     match delivery.record().value_str() {
///         Some(text) if !text.is_empty() => delivery.ack().await?,
///         _ => delivery.terminate("empty or not text").await?,
///     }
/// }
/// # Ok(()) }
/// ```
pub struct QueueConsumer {
    deliveries: mpsc::UnboundedReceiver<Result<Delivery>>,
    settler: Arc<StreamSettler>,
    topic: Arc<str>,
    subscription: Arc<str>,
}

impl fmt::Debug for QueueConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConsumer")
            .field("topic", &self.topic)
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

impl QueueConsumer {
    pub(crate) async fn open(
        client: Client,
        topic: String,
        subscription: String,
        options: QueueConsumerOptions,
    ) -> Result<QueueConsumer> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = proto::ProcessRequest {
            request: Some(ProcessRequestKind::Start(proto::ProcessStart {
                topic: topic.clone(),
                subscription: subscription.clone(),
                member: options.member,
                max_in_flight: options.max_in_flight,
                lease_ms: options.lease.map(millis),
            })),
        };
        tx.send(start)
            .map_err(|_| Error::closed("the process stream is closed"))?;
        let requests = async_stream(move |cx| rx.poll_recv(cx));
        let t = client.call_timeout(Duration::ZERO);
        let mut svc = client.shared_consumer_service();
        let streaming = Client::run(t, svc.process(client.request(requests, None))).await?;
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let settler = Arc::new(StreamSettler {
            tx,
            waiters: waiters.clone(),
            timeout: t,
        });
        let (deliver_tx, deliveries) = mpsc::unbounded_channel();
        tokio::spawn(read_responses(
            streaming,
            Arc::downgrade(&settler),
            waiters,
            deliver_tx,
        ));
        Ok(QueueConsumer {
            deliveries,
            settler,
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

    /// Settles several deliveries of this consumer at once with one ack; answers one outcome
    /// per ack id (its `error` is set if that one failed).
    pub async fn ack_all(&self, deliveries: &[Delivery]) -> Result<Vec<proto::AckOutcome>> {
        let ids = deliveries.iter().map(|d| d.ack_id.clone()).collect();
        self.settler.settle(ids, SettleKind::Ack).await
    }
}

impl Stream for QueueConsumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.deliveries.poll_recv(cx)
    }
}

/// A `Stream` from a poll function.
fn async_stream<T, F>(f: F) -> PollStream<F>
where
    F: FnMut(&mut Context<'_>) -> Poll<Option<T>>,
{
    PollStream(f)
}

struct PollStream<F>(F);

impl<T, F> Stream for PollStream<F>
where
    F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin,
{
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        (self.0)(cx)
    }
}

/// Reads the `Process` responses: deliveries to the consumer, `Settled` answers to their
/// waiters. On the end of the stream, every waiter and the consumer learn why.
async fn read_responses(
    mut streaming: tonic::codec::Streaming<proto::ProcessResponse>,
    settler: Weak<StreamSettler>,
    waiters: Arc<Mutex<Waiters>>,
    deliver: mpsc::UnboundedSender<Result<Delivery>>,
) {
    let end = loop {
        match streaming.message().await {
            Ok(Some(resp)) => match resp.response {
                Some(ProcessResponseKind::Deliveries(r)) => {
                    let Some(settler) = settler.upgrade() else {
                        // The consumer and every delivery are gone: these come back after
                        // their lease.
                        continue;
                    };
                    for d in r.deliveries {
                        let _ = deliver.send(Delivery::new(d, Settler::Stream(settler.clone())));
                    }
                }
                Some(ProcessResponseKind::Settled(s)) => {
                    let reply = lock(&waiters)
                        .queues
                        .get_mut(&s.action)
                        .and_then(VecDeque::pop_front);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(s.outcomes));
                    }
                }
                None => {}
            },
            Ok(None) => break Error::closed("the server ended the process stream"),
            Err(status) => break Error::from(status),
        }
    };
    let pending = {
        let mut w = lock(&waiters);
        w.closed = Some(end.clone());
        std::mem::take(&mut w.queues)
    };
    for reply in pending.into_values().flatten() {
        let _ = reply.send(Err(end.clone()));
    }
    if end.kind() != ErrorKind::Closed {
        let _ = deliver.send(Err(end));
    }
}
