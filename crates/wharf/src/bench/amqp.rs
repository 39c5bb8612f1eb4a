//! [`Amqp`]: RabbitMQ itself, without Wharf (`--target amqp://[USER:PASS@]HOST[:PORT][/VHOST]`,
//! e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`), over AMQP 0-9-1 with the `lapin` client —
//! the baseline Wharf-on-RabbitMQ (`wharf serve --engine rabbitmq`) is judged against. The
//! mapping (also in [`Driver::describe`]):
//!
//! - **topic** = one durable stream queue (`x-queue-type: stream`) named `bench.{topic}`.
//!   `--partitions N` gives N stream queues `bench.{topic}.{p}`, and each publisher spreads its
//!   messages over them round-robin, as Wharf does without keys.
//! - **durability**: RabbitMQ confirms a stream publish once the message is written on a
//!   quorum of the stream's replicas (one here), with no fsync per message (streams leave
//!   flushing to the OS); a stream has no setting for it, so every `--durability` maps to the
//!   same stream queue. Compare with Wharf's `none` or `interval`, not `always`.
//! - **publish** = `basic.publish` of every message of the batch to the default exchange
//!   (routing key = the queue; `mandatory`, so a missing queue is an error rather than a
//!   silent drop; `delivery_mode` 2; no headers unless `--header`) on a channel in confirm
//!   mode (`confirm.select`), all of them pipelined (handed to the connection at once; one
//!   write awaited after the other measured 1.3× slower with 16 publishers, 2× with one),
//!   then every publisher confirm awaited; a nack or a returned message is an error. Each
//!   publisher has a channel of its own (channels go round-robin over `--connections`
//!   connections), as a client with one publishing task per channel does. RabbitMQ runs each
//!   channel as an Erlang process; measured on a 2-core machine where the broker is CPU-bound
//!   (16 publishers of 100), one channel per connection shared by all publishers was no
//!   faster (100 B: within noise; 1 KiB: about 20% slower), so a channel each it is.
//! - **stream subscription** = no state on the server (AMQP 0-9-1 has no consumer groups or
//!   stored offsets for streams): a member is a channel with `basic.qos` prefetch = 2 ×
//!   `--batch` (per consumer) and one `basic.consume` per stream queue from
//!   `x-stream-offset: first` (the earliest message, as the trait asks), with manual acks: a
//!   stream consumer needs them as credit. A batch is what has arrived (at most `--batch`),
//!   then settled with one `basic.ack` `multiple=true`: of its last delivery tag, or, with
//!   several partitions, of the highest tag up to which every delivery of the channel was
//!   handed out (a `multiple` ack must not settle what another consumer still buffers).
//! - **queue** = a durable quorum queue (`x-queue-type: quorum`; `--partitions N`: N of them,
//!   `bench.{queue}.{p}`), into which the prefill publishes with confirms as above (a quorum
//!   queue confirms once a quorum wrote the message to its Raft log and fsync'd it, whatever
//!   `--durability`). Each queue consumer is a channel of its own with `basic.qos` prefetch =
//!   its window (split over the partitions, at least 1 each) and a `basic.consume` on every
//!   partition. An ack is one `basic.ack` `multiple=true` when every delivery of the channel
//!   up to the highest tag acked is acked now or was before (the workload's case with one
//!   partition), else a `basic.ack` per delivery tag, all written at once. AMQP 0-9-1 has no
//!   confirmation of acks: [`QueueConsumer::ack`] returns once the client wrote the ack
//!   frames to the connection, earlier in the exchange than the other drivers' acks.
//!
//! AMQP limits a prefetch to 65535: larger windows are cut to it. Every queue this driver
//! declared is deleted at the end of a run whose topic it named itself; every wait is bounded
//! ([`CONNECT_TIMEOUT`], [`ANSWER_TIMEOUT`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::{join_all, poll_fn};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio::time::Instant;

use super::driver::{
    AckHandle, Batch, BenchError, Driver, Publisher, QueueConsumer, Result, ServerSide, Subscriber,
    TopicSpec,
};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a declare, a delete, a publisher confirm or writing an ack may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest prefetch AMQP 0-9-1 can express (`basic.qos` takes a 16-bit count).
const MAX_PREFETCH: usize = u16::MAX as usize;

fn amqp_error(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError(format!("{what}: {e}"))
}

/// `f`, or an error naming `what` if it takes longer than `limit`.
async fn timed<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = lapin::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(amqp_error(what, e)),
        Err(_) => Err(BenchError(format!(
            "{what}: no answer from RabbitMQ within {limit:?}"
        ))),
    }
}

/// `url` with its password (if any) replaced by `***`, for messages and the report.
fn redact(url: &str) -> String {
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

/// The queue names of a topic (or queue) with `partitions` partitions: `bench.{name}` for
/// one, `bench.{name}.{p}` for more.
fn queue_names(name: &str, partitions: u32) -> Vec<String> {
    if partitions <= 1 {
        vec![format!("bench.{name}")]
    } else {
        (0..partitions)
            .map(|p| format!("bench.{name}.{p}"))
            .collect()
    }
}

/// `queues` for a message: all of them, or the first and the last of many.
fn listed(queues: &[String]) -> String {
    match queues {
        [first, .., last] if queues.len() > 3 => {
            format!("{first} … {last} ({} queues)", queues.len())
        }
        _ => queues.join(", "),
    }
}

/// A table of these arguments.
fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(k), v);
    }
    t
}

/// What a topic or queue is on RabbitMQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Stream queues (a topic).
    Stream,
    /// Quorum queues (a queue).
    Quorum,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Quorum => "quorum",
        }
    }
}

/// The queues this driver declared for one topic or queue.
#[derive(Clone, Debug)]
struct Declared {
    kind: Kind,
    queues: Vec<String>,
}

/// A connection to `url` (`shown`: the same, redacted) named `name`.
async fn open(url: &str, shown: &str, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(BenchError(format!("cannot connect to {shown}: {e}"))),
        Err(_) => Err(BenchError(format!(
            "cannot connect to {shown}: no answer within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// RabbitMQ reached over `connections` AMQP connections.
pub(crate) struct Amqp {
    /// The target as given (to reconnect for the clean-up).
    target: String,
    /// The target, its password redacted.
    url: String,
    host: String,
    port: u16,
    conns: Vec<Connection>,
    /// Round-robin over the connections for publishers and consumers.
    next: AtomicUsize,
    /// Topic or queue name → the queues declared for it.
    declared: Mutex<HashMap<String, Declared>>,
}

impl Amqp {
    /// Opens `connections` AMQP connections to `url` (`amqp://[USER:PASS@]HOST[:PORT][/VHOST]`).
    pub(crate) async fn connect(url: &str, connections: usize) -> Result<Self> {
        let shown = redact(url);
        let uri: AMQPUri = url
            .parse()
            .map_err(|e| BenchError(format!("--target {shown:?} is not an AMQP URL: {e}")))?;
        if uri.scheme != AMQPScheme::AMQP {
            return Err(BenchError(format!(
                "--target {shown:?}: amqps:// is not supported by this build (give \
                 amqp://HOST:PORT)"
            )));
        }
        let host = uri
            .authority
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.authority.port;
        let mut conns = Vec::with_capacity(connections.max(1));
        for i in 0..connections.max(1) {
            conns.push(open(url, &shown, &format!("wharf-bench {i}")).await?);
        }
        Ok(Self {
            target: url.to_owned(),
            url: shown,
            host,
            port,
            conns,
            next: AtomicUsize::new(0),
            declared: Mutex::new(HashMap::new()),
        })
    }

    /// The next connection, round-robin.
    fn pick(&self) -> &Connection {
        &self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()]
    }

    /// A new channel on the next connection.
    async fn channel(&self) -> Result<Channel> {
        timed(
            ANSWER_TIMEOUT,
            &format!("opening a channel to {}", self.url),
            self.pick().create_channel(),
        )
        .await
    }

    /// Declares the queues of `name` (durable, of this kind) and remembers them.
    async fn declare(&self, name: &str, spec: TopicSpec, kind: Kind) -> Result<()> {
        let queues = queue_names(name, spec.partitions);
        for q in &queues {
            // A channel each: a refused declare (a queue of another type with this name)
            // closes the channel.
            let ch = self.channel().await?;
            let what = format!("declaring the {} queue {q}", kind.as_str());
            let r = timed(
                ANSWER_TIMEOUT,
                &what,
                ch.queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    table(vec![(
                        "x-queue-type",
                        AMQPValue::LongString(kind.as_str().into()),
                    )]),
                ),
            )
            .await;
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, ch.close(200, "done".into())).await;
            r?;
        }
        self.declared
            .lock()
            .map_err(|_| BenchError::new("the driver's state is poisoned"))?
            .insert(name.to_owned(), Declared { kind, queues });
        Ok(())
    }

    /// The queues of `name`, which must be of this kind.
    fn declared(&self, name: &str, kind: Kind) -> Result<Declared> {
        let d = self
            .declared
            .lock()
            .map_err(|_| BenchError::new("the driver's state is poisoned"))?
            .get(name)
            .cloned()
            .ok_or_else(|| BenchError(format!("{name} was not declared by this run")))?;
        if d.kind != kind {
            return Err(BenchError(format!(
                "{name} is a {} queue, not a {} queue",
                d.kind.as_str(),
                kind.as_str()
            )));
        }
        Ok(d)
    }

    /// A channel with this per-consumer prefetch and a consumer on each of `queues`, each
    /// with `arguments`.
    async fn consume(
        &self,
        queues: &[String],
        prefetch: usize,
        arguments: &FieldTable,
    ) -> Result<(Channel, Deliveries)> {
        let ch = self.channel().await?;
        let what = format!("consuming from {}", listed(queues));
        let prefetch = u16::try_from(prefetch.clamp(1, MAX_PREFETCH)).unwrap_or(u16::MAX);
        timed(
            ANSWER_TIMEOUT,
            &what,
            ch.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        let mut consumers = Vec::with_capacity(queues.len());
        for q in queues {
            let c = timed(
                ANSWER_TIMEOUT,
                &what,
                ch.basic_consume(
                    q.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    arguments.clone(),
                ),
            )
            .await?;
            consumers.push(c);
        }
        Ok((
            ch,
            Deliveries {
                tags: consumers.iter().map(Consumer::tag).collect(),
                consumers,
                next: 0,
                what,
            },
        ))
    }
}

#[async_trait]
impl Driver for Amqp {
    fn describe(&self) -> String {
        format!(
            "RabbitMQ directly (no Wharf): lapin 4.12, AMQP 0-9-1, {} connection{} to {}; \
             topic = a durable stream queue (--partitions N = N stream queues, publishers \
             round-robin); --durability ignored (a stream confirms once written on a quorum \
             of replicas, 1 here, no fsync per message); publish = basic.publish of each \
             message pipelined on a confirm channel per publisher, every confirm awaited; \
             subscribe = basic.consume per stream from x-stream-offset first, prefetch \
             2 × --batch, one multiple ack per batch; queue = durable quorum queue, a channel \
             per consumer with prefetch = its window, basic.ack (multiple when contiguous) \
             returns once written (AMQP does not confirm acks)",
            self.conns.len(),
            if self.conns.len() == 1 { "" } else { "s" },
            self.url
        )
    }

    fn server_side(&self) -> ServerSide {
        ServerSide::Remote {
            host: self.host.clone(),
            port: self.port,
        }
    }

    async fn create_topic(&self, topic: &str, spec: TopicSpec) -> Result<()> {
        self.declare(topic, spec, Kind::Stream).await
    }

    async fn create_queue(&self, queue: &str, spec: TopicSpec) -> Result<()> {
        self.declare(queue, spec, Kind::Quorum).await
    }

    async fn create_subscription(&self, topic: &str, _sub: &str) -> Result<()> {
        // AMQP 0-9-1 keeps no subscription state for a stream: each member reads from
        // `first`. Only check that the streams are there.
        let d = self.declared(topic, Kind::Stream)?;
        for q in &d.queues {
            let ch = self.channel().await?;
            let r = timed(
                ANSWER_TIMEOUT,
                &format!("checking the stream queue {q}"),
                ch.queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await;
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, ch.close(200, "done".into())).await;
            r?;
        }
        Ok(())
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        let declared = self
            .declared
            .lock()
            .map_err(|_| BenchError::new("the driver's state is poisoned"))?
            .remove(topic);
        let queues = declared.map_or_else(|| queue_names(topic, 1), |d| d.queues);
        let mut first_error = None;
        // A run that failed may have left the connections broken: the clean-up then opens
        // one of its own.
        let mut spare: Option<Connection> = None;
        for q in queues {
            let what = format!("deleting the queue {q}");
            // A channel each: deleting a queue that is not there closes the channel.
            let ch = match &spare {
                None => self.channel().await,
                Some(c) => timed(ANSWER_TIMEOUT, &what, c.create_channel()).await,
            };
            let ch = match ch {
                Ok(ch) => ch,
                Err(_) if spare.is_none() => {
                    let opened = match open(&self.target, &self.url, "wharf-bench clean-up").await {
                        Ok(c) => c,
                        Err(e) => {
                            first_error.get_or_insert(e.context(&what));
                            break;
                        }
                    };
                    let ch = timed(ANSWER_TIMEOUT, &what, opened.create_channel()).await;
                    spare = Some(opened);
                    match ch {
                        Ok(ch) => ch,
                        Err(e) => {
                            first_error.get_or_insert(e);
                            continue;
                        }
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e.context(&what));
                    continue;
                }
            };
            let r = timed(
                ANSWER_TIMEOUT,
                &what,
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
            )
            .await;
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, ch.close(200, "done".into())).await;
            match r {
                Ok(_) => {}
                Err(e) if e.0.contains("NOT_FOUND") => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(c) = spare {
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, c.close(200, "done".into())).await;
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn publisher(&self, topic: &str) -> Result<Box<dyn Publisher>> {
        let d = {
            let map = self
                .declared
                .lock()
                .map_err(|_| BenchError::new("the driver's state is poisoned"))?;
            map.get(topic)
                .cloned()
                .ok_or_else(|| BenchError(format!("{topic} was not declared by this run")))?
        };
        let what = format!("publishing to {}", listed(&d.queues));
        let channel = self.channel().await?;
        timed(
            ANSWER_TIMEOUT,
            &what,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Box::new(AmqpPublisher {
            channel,
            queues: d
                .queues
                .iter()
                .map(|q| ShortString::from(q.as_str()))
                .collect(),
            next: 0,
            cached: None,
            properties: BasicProperties::default(),
            what,
        }))
    }

    async fn subscribe(
        &self,
        topic: &str,
        _sub: &str,
        max_batch: usize,
    ) -> Result<Box<dyn Subscriber>> {
        let d = self.declared(topic, Kind::Stream)?;
        let max_batch = max_batch.max(1);
        let args = table(vec![(
            "x-stream-offset",
            AMQPValue::LongString("first".into()),
        )]);
        let (channel, deliveries) = self
            .consume(&d.queues, max_batch.saturating_mul(2), &args)
            .await?;
        Ok(Box::new(AmqpSubscriber {
            channel,
            deliveries,
            max_batch,
            acked: 0,
            handed: BTreeSet::new(),
        }))
    }

    async fn queue_consumer(&self, queue: &str, window: usize) -> Result<Box<dyn QueueConsumer>> {
        let d = self.declared(queue, Kind::Quorum)?;
        let window = window.max(1);
        // The window split over the partitions (per-consumer prefetch; quorum queues have no
        // per-channel one), at least 1 each.
        let each = (window / d.queues.len()).max(1);
        let (channel, deliveries) = self
            .consume(&d.queues, each, &FieldTable::default())
            .await?;
        Ok(Box::new(AmqpQueueConsumer {
            channel,
            deliveries,
            window,
            floor: 0,
            unsettled: BTreeSet::new(),
            settled: BTreeSet::new(),
        }))
    }

    async fn close(&self) -> Result<()> {
        for c in &self.conns {
            if c.status().connected() {
                timed(
                    ANSWER_TIMEOUT,
                    &format!("closing the connection to {}", self.url),
                    c.close(200, "done".into()),
                )
                .await?;
            }
        }
        Ok(())
    }
}

struct AmqpPublisher {
    /// A channel in confirm mode, this publisher's own.
    channel: Channel,
    /// The queues of the topic (its partitions), used round-robin.
    queues: Vec<ShortString>,
    next: usize,
    /// The batch id of `properties`.
    cached: Option<u64>,
    /// `delivery_mode` 2 and the batch's headers.
    properties: BasicProperties,
    what: String,
}

#[async_trait]
impl Publisher for AmqpPublisher {
    async fn publish(&mut self, batch: &Batch, n: usize) -> Result<usize> {
        let n = n.min(batch.len());
        if self.cached != Some(batch.id()) {
            let mut p = BasicProperties::default().with_delivery_mode(2);
            if !batch.headers().is_empty() {
                p = p.with_headers(table(
                    batch
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str(), AMQPValue::LongString(v.as_str().into())))
                        .collect(),
                ));
            }
            self.properties = p;
            self.cached = Some(batch.id());
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut routes = Vec::with_capacity(n);
        for _ in 0..n {
            routes.push(self.queues[self.next % self.queues.len()].clone());
            self.next = self.next.wrapping_add(1);
        }
        // Every publish handed to the connection at once (lapin's publish future resolves
        // once its frames are written): the batch goes out as one burst.
        let sends = batch.values()[..n]
            .iter()
            .zip(routes)
            .map(|(v, queue)| {
                self.channel.basic_publish(
                    "".into(),
                    queue,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    v,
                    self.properties.clone(),
                )
            })
            .collect::<Vec<_>>();
        let sent = tokio::time::timeout_at(deadline, join_all(sends))
            .await
            .map_err(|_| {
                BenchError(format!(
                    "{}: the messages were not written within {ANSWER_TIMEOUT:?}",
                    self.what
                ))
            })?;
        let mut confirms = Vec::with_capacity(n);
        for s in sent {
            confirms.push(s.map_err(|e| amqp_error(&self.what, e))?);
        }
        let mut done = 0;
        for c in confirms {
            let confirmation = tokio::time::timeout_at(deadline, c)
                .await
                .map_err(|_| {
                    BenchError(format!(
                        "{}: {done} of {n} publisher confirms within {ANSWER_TIMEOUT:?}",
                        self.what
                    ))
                })?
                .map_err(|e| amqp_error(&self.what, e))?;
            match confirmation {
                Confirmation::Ack(None) => done += 1,
                Confirmation::Ack(Some(m)) => {
                    return Err(BenchError(format!(
                        "{}: RabbitMQ returned a message: {} {} (is the queue gone?)",
                        self.what, m.reply_code, m.reply_text
                    )));
                }
                Confirmation::Nack(_) => {
                    return Err(BenchError(format!(
                        "{}: RabbitMQ refused a message (negative confirm)",
                        self.what
                    )));
                }
                Confirmation::NotRequested => {
                    return Err(BenchError(format!(
                        "{}: the channel is not in confirm mode",
                        self.what
                    )));
                }
            }
        }
        Ok(done)
    }
}

/// The deliveries of the consumers of one channel, taken in turn.
struct Deliveries {
    consumers: Vec<Consumer>,
    /// The consumer tags, to cancel them.
    tags: Vec<ShortString>,
    /// The consumer polled first next time (so partitions take turns).
    next: usize,
    what: String,
}

impl Deliveries {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Delivery>> {
        let n = self.consumers.len();
        for i in 0..n {
            let k = (self.next + i) % n;
            match self.consumers[k].poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    self.next = (k + 1) % n;
                    return Poll::Ready(Ok(d));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(amqp_error(&self.what, e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(BenchError(format!(
                        "{}: RabbitMQ cancelled the consumer of {} (was the queue deleted?)",
                        self.what,
                        self.consumers[k].queue()
                    ))));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// The next delivery, or `None` at `deadline`.
    async fn next(&mut self, deadline: Instant) -> Result<Option<Delivery>> {
        match tokio::time::timeout_at(deadline, poll_fn(|cx| self.poll(cx))).await {
            Err(_) => Ok(None),
            Ok(r) => r.map(Some),
        }
    }

    /// The next delivery if one is already here.
    fn try_next(&mut self) -> Result<Option<Delivery>> {
        poll_fn(|cx| self.poll(cx)).now_or_never().transpose()
    }

    /// Cancels the consumers and closes the channel: what was not acked goes back.
    async fn close(self, channel: Channel) -> Result<()> {
        for tag in &self.tags {
            timed(
                ANSWER_TIMEOUT,
                &self.what,
                channel.basic_cancel(tag.clone(), BasicCancelOptions::default()),
            )
            .await?;
        }
        drop(self.consumers);
        timed(
            ANSWER_TIMEOUT,
            &self.what,
            channel.close(200, "done".into()),
        )
        .await
    }
}

struct AmqpSubscriber {
    channel: Channel,
    deliveries: Deliveries,
    max_batch: usize,
    /// Every delivery tag up to this one was handed out and acked (tags of a channel count
    /// from 1, over all its consumers).
    acked: u64,
    /// Tags above `acked` handed out: with several partitions, a later tag of one consumer
    /// can be handed out before an earlier one of another, still in the client's buffer.
    handed: BTreeSet<u64>,
}

#[async_trait]
impl Subscriber for AmqpSubscriber {
    async fn next_batch(&mut self, out: &mut Vec<Bytes>, timeout: Duration) -> Result<usize> {
        out.clear();
        let Some(first) = self.deliveries.next(Instant::now() + timeout).await? else {
            return Ok(0);
        };
        let mut next = Some(first);
        while let Some(d) = next {
            self.handed.insert(d.delivery_tag);
            out.push(Bytes::from(d.data));
            next = if out.len() < self.max_batch {
                self.deliveries.try_next()?
            } else {
                None
            };
        }
        // Credit back for the batch: a stream consumer gets no more than its prefetch of
        // unacked deliveries. One `multiple` ack up to the highest tag below which every
        // delivery was handed out (with one partition: the batch's last).
        let before = self.acked;
        while self.handed.remove(&(self.acked + 1)) {
            self.acked += 1;
        }
        if self.acked > before {
            timed(
                ANSWER_TIMEOUT,
                &self.deliveries.what,
                self.channel
                    .basic_ack(self.acked, BasicAckOptions { multiple: true }),
            )
            .await?;
        }
        Ok(out.len())
    }

    async fn close(self: Box<Self>) -> Result<()> {
        let this = *self;
        this.deliveries.close(this.channel).await
    }
}

struct AmqpQueueConsumer {
    channel: Channel,
    deliveries: Deliveries,
    window: usize,
    /// Every delivery tag up to this one is acked (tags of a channel count from 1, over all
    /// its consumers).
    floor: u64,
    /// Tags above `floor` handed out and not acked.
    unsettled: BTreeSet<u64>,
    /// Tags above `floor` acked one by one.
    settled: BTreeSet<u64>,
}

#[async_trait]
impl QueueConsumer for AmqpQueueConsumer {
    async fn receive(
        &mut self,
        values: &mut Vec<Bytes>,
        acks: &mut Vec<AckHandle>,
        timeout: Duration,
    ) -> Result<usize> {
        values.clear();
        acks.clear();
        let Some(first) = self.deliveries.next(Instant::now() + timeout).await? else {
            return Ok(0);
        };
        let mut next = Some(first);
        while let Some(d) = next {
            self.unsettled.insert(d.delivery_tag);
            acks.push(AckHandle::Number(d.delivery_tag));
            values.push(Bytes::from(d.data));
            next = if values.len() < self.window {
                self.deliveries.try_next()?
            } else {
                None
            };
        }
        Ok(values.len())
    }

    async fn ack(&mut self, acks: &[AckHandle]) -> Result<usize> {
        let mut tags = Vec::with_capacity(acks.len());
        for a in acks {
            let AckHandle::Number(tag) = a else {
                return Err(BenchError(format!(
                    "ack handle {a:?} is not an AMQP delivery tag"
                )));
            };
            if !self.unsettled.contains(tag) {
                return Err(BenchError(format!(
                    "{}: delivery tag {tag} is not an unsettled delivery of this consumer",
                    self.deliveries.what
                )));
            }
            tags.push(*tag);
        }
        tags.sort_unstable();
        tags.dedup();
        let Some(&highest) = tags.last() else {
            return Ok(0);
        };
        let what = &self.deliveries.what;
        // One `multiple` ack when every tag up to the highest is acked already or now (a
        // tag missing may be a delivery of another partition's consumer still in the
        // client's buffer: a `multiple` ack would settle it unseen).
        let acked_before = self.settled.range(..=highest).count() as u64;
        if tags.len() as u64 + acked_before == highest - self.floor {
            timed(
                ANSWER_TIMEOUT,
                what,
                self.channel
                    .basic_ack(highest, BasicAckOptions { multiple: true }),
            )
            .await?;
            for t in &tags {
                self.unsettled.remove(t);
            }
            self.settled = self.settled.split_off(&(highest + 1));
            self.floor = highest;
        } else {
            let sends = tags
                .iter()
                .map(|t| {
                    self.channel
                        .basic_ack(*t, BasicAckOptions { multiple: false })
                })
                .collect::<Vec<_>>();
            let sent = tokio::time::timeout(ANSWER_TIMEOUT, join_all(sends))
                .await
                .map_err(|_| {
                    BenchError(format!(
                        "{what}: the acks were not written within {ANSWER_TIMEOUT:?}"
                    ))
                })?;
            for s in sent {
                s.map_err(|e| amqp_error(what, e))?;
            }
            for t in &tags {
                self.unsettled.remove(t);
                self.settled.insert(*t);
            }
            while self.settled.remove(&(self.floor + 1)) {
                self.floor += 1;
            }
        }
        Ok(tags.len())
    }

    async fn close(self: Box<Self>) -> Result<()> {
        let this = *self;
        this.deliveries.close(this.channel).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:1"), "amqp://127.0.0.1:1");
        assert_eq!(redact("amqp://user@h/v"), "amqp://user@h/v");
    }

    #[test]
    fn queue_names_per_partition() {
        assert_eq!(queue_names("t", 1), ["bench.t"]);
        assert_eq!(queue_names("t", 3), ["bench.t.0", "bench.t.1", "bench.t.2"]);
        assert_eq!(
            listed(&queue_names("t", 3)),
            "bench.t.0, bench.t.1, bench.t.2"
        );
        assert_eq!(
            listed(&queue_names("t", 8)),
            "bench.t.0 … bench.t.7 (8 queues)"
        );
    }
}
