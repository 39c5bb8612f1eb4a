//! [`Amqp`]: RabbitMQ itself, without Wharf (`--target amqp://[USER:PASS@]HOST[:PORT][/VHOST]`,
//! e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`), over AMQP 0-9-1 with the `lapin` client —
//! the baseline Wharf-on-RabbitMQ (`wharf serve --engine rabbitmq`) is judged against. It maps
//! RabbitMQ one of three ways ([`QueueType`], given to [`Amqp::connect_with`]; `--amqp-queues`
//! defaults to [`QueueType::Stream`]), each said in [`Driver::describe`]. [`QueueType::Stream`]:
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
//! [`QueueType::Classic`] and [`QueueType::Quorum`], the mappings RabbitMQ users pick for
//! durable messaging, differ from it in topics and subscriptions (`{type}` below: `classic`
//! or `quorum`):
//!
//! - **topic** = a durable fanout exchange `bench.{topic}` and a durable queue
//!   (`x-queue-type: {type}`) `bench.{topic}` bound to it, so a publish with no subscription
//!   is still stored (and a `mandatory` publish is not returned). One partition only: a
//!   topic with `--partitions` above 1 is refused.
//! - **durability**: every `--durability` maps to the same queues. A classic queue confirms
//!   a persistent message (`delivery_mode` 2) once it is fsync'd to disk (or, if every queue
//!   it went to had it consumed and acked before that, once acked); a quorum queue once a
//!   quorum of replicas (one here) wrote it to its Raft log and fsync'd it. Compare with
//!   Wharf's `always`.
//! - **publish** = as above, to the exchange `bench.{topic}` (routing key empty).
//! - **stream subscription** = a queue: the first subscription created on a topic takes the
//!   topic's own queue `bench.{topic}` (with everything published to the topic before, which
//!   the consume workload drains); each further subscription `{sub}` gets a durable queue
//!   `bench.{topic}.{sub}` of the same type bound to the exchange, which receives what is
//!   published after it was created (the fan-out workload creates its subscriptions before
//!   publishing). A member is a channel consuming the subscription's queue with prefetch and
//!   acks as above, but no `x-stream-offset`, and the acks remove the messages from the
//!   queue: a subscription is **destructive** here (drained as a RabbitMQ user drains a
//!   queue, not replayed; two members of one subscription share its messages).
//! - **queue** = as above with durable queues of the mode's type (`x-queue-type: classic`
//!   with [`QueueType::Classic`]; a classic queue confirms a persistent message once it is
//!   fsync'd).
//!
//! AMQP limits a prefetch to 65535: larger windows are cut to it. Every queue and exchange
//! this driver declared for a topic (or queue) is deleted at the end of a run whose topic it
//! named itself; every wait is bounded ([`CONNECT_TIMEOUT`], [`ANSWER_TIMEOUT`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::{join_all, poll_fn};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use tokio::time::Instant;

use super::driver::{
    self, AckHandle, Batch, BenchError, Driver, Publisher, QueueConsumer, Result, ServerSide,
    Subscriber, TopicSpec, redact,
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
    driver::timed(limit, what, "RabbitMQ", f, amqp_error).await
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

/// How the driver maps topics (queues always follow the same choice except Stream, which keeps
/// quorum queues for queues as today). See the [module documentation](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum QueueType {
    /// A topic is a stream queue per partition, read from `first` (no fsync per message);
    /// a queue is a quorum queue.
    Stream,
    /// A topic is a durable fanout exchange with a durable classic queue bound to it per
    /// subscription (persistent messages, confirmed once fsync'd; subscriptions are
    /// destructive); a queue is a durable classic queue.
    Classic,
    /// As `classic` with quorum queues (confirmed once the Raft log is fsync'd).
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` of its queues (and the flag's spelling).
    fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// What a topic or queue is on RabbitMQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Stream queues (a topic with [`QueueType::Stream`]).
    Stream,
    /// A durable fanout exchange with a queue of this type bound to it per subscription (a
    /// topic with [`QueueType::Classic`] or [`QueueType::Quorum`]).
    Fanout(QueueType),
    /// Queues of this type (a queue: quorum, or classic with [`QueueType::Classic`]).
    Queue(QueueType),
}

impl Kind {
    /// The `x-queue-type` of its queues.
    fn queue_type(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Fanout(t) | Self::Queue(t) => t.as_str(),
        }
    }

    /// What it is, for messages.
    fn noun(self) -> String {
        match self {
            Self::Fanout(t) => format!("{} topic (a fanout exchange)", t.as_str()),
            Self::Stream | Self::Queue(_) => format!("{} queue", self.queue_type()),
        }
    }
}

/// What this driver declared for one topic or queue.
#[derive(Clone, Debug)]
struct Declared {
    kind: Kind,
    /// The queues: of a stream topic or a queue, one per partition; of a fanout topic, its own
    /// queue, then one per further subscription (listed before it is declared, so that the
    /// clean-up deletes whatever a failed declaration left).
    queues: Vec<String>,
    /// The exchange of a fanout topic, which publishes go to.
    exchange: Option<String>,
    /// The subscriptions of a fanout topic → their queues (the first one created: the topic's
    /// own queue).
    subs: HashMap<String, String>,
}

impl Declared {
    /// Queues of this kind, no exchange, no subscriptions.
    fn queues(kind: Kind, queues: Vec<String>) -> Self {
        Self {
            kind,
            queues,
            exchange: None,
            subs: HashMap::new(),
        }
    }
}

/// Something to delete at the end of a run.
enum Declaration {
    Queue(String),
    Exchange(String),
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
    /// How topics (and queues) are mapped.
    topics: QueueType,
    conns: Vec<Connection>,
    /// Round-robin over the connections for publishers and consumers.
    next: AtomicUsize,
    /// Topic or queue name → the queues declared for it.
    declared: Mutex<HashMap<String, Declared>>,
}

impl Amqp {
    /// Opens `connections` AMQP connections to `url` (`amqp://[USER:PASS@]HOST[:PORT][/VHOST]`);
    /// topics are mapped as `topics` says.
    pub(crate) async fn connect_with(
        url: &str,
        connections: usize,
        topics: QueueType,
    ) -> Result<Self> {
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
            topics,
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

    /// What a queue ([`Driver::create_queue`]) is.
    fn queue_kind(&self) -> Kind {
        match self.topics {
            QueueType::Stream | QueueType::Quorum => Kind::Queue(QueueType::Quorum),
            QueueType::Classic => Kind::Queue(QueueType::Classic),
        }
    }

    /// Topic or queue name → what was declared for it.
    fn state(&self) -> Result<MutexGuard<'_, HashMap<String, Declared>>> {
        self.declared
            .lock()
            .map_err(|_| BenchError::new("the driver's state is poisoned"))
    }

    /// Declares the durable queue `q` of this `x-queue-type` on `ch`.
    async fn declare_queue(ch: &Channel, q: &str, queue_type: &str) -> Result<()> {
        timed(
            ANSWER_TIMEOUT,
            &format!("declaring the {queue_type} queue {q}"),
            ch.queue_declare(
                q.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                table(vec![(
                    "x-queue-type",
                    AMQPValue::LongString(queue_type.into()),
                )]),
            ),
        )
        .await
        .map(|_| ())
    }

    /// Declares the queues of `name` (durable, of this kind: stream or queue) and remembers
    /// them.
    async fn declare(&self, name: &str, spec: TopicSpec, kind: Kind) -> Result<()> {
        let queues = queue_names(name, spec.partitions);
        for q in &queues {
            // A channel each: a refused declare (a queue of another type with this name)
            // closes the channel.
            let ch = self.channel().await?;
            let r = Self::declare_queue(&ch, q, kind.queue_type()).await;
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, ch.close(200, "done".into())).await;
            r?;
        }
        self.state()?
            .insert(name.to_owned(), Declared::queues(kind, queues));
        Ok(())
    }

    /// Declares the fanout topic `topic` with `t` queues: the durable fanout exchange
    /// `bench.{topic}` and the durable queue `bench.{topic}` bound to it.
    async fn declare_fanout(&self, topic: &str, spec: TopicSpec, t: QueueType) -> Result<()> {
        if spec.partitions > 1 {
            return Err(BenchError(format!(
                "{topic}: classic/quorum topics take one partition here (--partitions 1), not {}",
                spec.partitions
            )));
        }
        let name = format!("bench.{topic}");
        let kind = Kind::Fanout(t);
        // Remembered first (keeping the subscriptions of a topic declared again), so that
        // the clean-up deletes whatever a failed declaration left.
        {
            let mut state = self.state()?;
            let d = state
                .entry(topic.to_owned())
                .or_insert_with(|| Declared::queues(kind, Vec::new()));
            if d.kind != kind {
                *d = Declared::queues(kind, Vec::new());
            }
            if d.queues.is_empty() {
                d.queues.push(name.clone());
            }
            d.exchange = Some(name.clone());
        }
        let ch = self.channel().await?;
        let r = async {
            timed(
                ANSWER_TIMEOUT,
                &format!("declaring the fanout exchange {name}"),
                ch.exchange_declare(
                    name.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            Self::declare_queue(&ch, &name, t.as_str()).await?;
            Self::bind(&ch, &name, &name).await
        }
        .await;
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, ch.close(200, "done".into())).await;
        r
    }

    /// Binds the queue `q` to the fanout exchange `exchange` on `ch`.
    async fn bind(ch: &Channel, q: &str, exchange: &str) -> Result<()> {
        timed(
            ANSWER_TIMEOUT,
            &format!("binding the queue {q} to the exchange {exchange}"),
            ch.queue_bind(
                q.into(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    }

    /// Creates the subscription `sub` of the fanout topic `topic` (with `t` queues): the first
    /// one takes the topic's own queue, a further one gets the durable queue
    /// `bench.{topic}.{sub}` bound to the topic's exchange.
    async fn create_fanout_subscription(&self, topic: &str, sub: &str, t: QueueType) -> Result<()> {
        let queue = format!("bench.{topic}.{sub}");
        let exchange = {
            let mut state = self.state()?;
            let d = state
                .get_mut(topic)
                .ok_or_else(|| BenchError(format!("{topic} was not declared by this run")))?;
            let kind = Kind::Fanout(t);
            if d.kind != kind {
                return Err(BenchError(format!(
                    "{topic} is a {}, not a {}",
                    d.kind.noun(),
                    kind.noun()
                )));
            }
            if d.subs.contains_key(sub) {
                return Ok(());
            }
            let (Some(exchange), Some(own)) = (d.exchange.clone(), d.queues.first().cloned())
            else {
                return Err(BenchError(format!("{topic} was not declared by this run")));
            };
            if d.subs.is_empty() {
                d.subs.insert(sub.to_owned(), own);
                return Ok(());
            }
            if !d.queues.contains(&queue) {
                d.queues.push(queue.clone());
            }
            exchange
        };
        let ch = self.channel().await?;
        let r = async {
            Self::declare_queue(&ch, &queue, t.as_str()).await?;
            Self::bind(&ch, &queue, &exchange).await
        }
        .await;
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, ch.close(200, "done".into())).await;
        r?;
        if let Some(d) = self.state()?.get_mut(topic) {
            d.subs.insert(sub.to_owned(), queue);
        }
        Ok(())
    }

    /// What was declared for `name`, which must be of this kind.
    fn declared(&self, name: &str, kind: Kind) -> Result<Declared> {
        let d = self
            .state()?
            .get(name)
            .cloned()
            .ok_or_else(|| BenchError(format!("{name} was not declared by this run")))?;
        if d.kind != kind {
            return Err(BenchError(format!(
                "{name} is a {}, not a {}",
                d.kind.noun(),
                kind.noun()
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
        let t = self.topics;
        if t != QueueType::Stream {
            let durability = if t == QueueType::Classic {
                "persistent messages (delivery_mode 2) with publisher confirms: a durable \
                 classic queue fsyncs a message before its confirm"
            } else {
                "a quorum queue confirms once its Raft log is fsync'd on a quorum of \
                 replicas, 1 here"
            };
            return format!(
                "RabbitMQ directly (no Wharf): lapin 4.12, AMQP 0-9-1, {} connection{} to {}; \
                 {t} mapping: topic = a durable fanout exchange and a durable {t} queue bound \
                 to it (one partition); --durability ignored ({durability}); publish = \
                 basic.publish of each message to the exchange, pipelined on a confirm \
                 channel per publisher, every confirm awaited; subscription = the topic's \
                 queue for the first one, a durable {t} queue of its own bound to the exchange \
                 for each further one (what is published after it was created); subscribe = \
                 basic.consume on the subscription's queue, prefetch 2 × --batch, one \
                 multiple ack per batch, which removes the messages (destructive); queue = \
                 durable {t} queue, a channel per consumer with prefetch = its window, \
                 basic.ack (multiple when contiguous) returns once written (AMQP does not \
                 confirm acks)",
                self.conns.len(),
                if self.conns.len() == 1 { "" } else { "s" },
                self.url,
                t = t.as_str(),
            );
        }
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
        match self.topics {
            QueueType::Stream => self.declare(topic, spec, Kind::Stream).await,
            t => self.declare_fanout(topic, spec, t).await,
        }
    }

    async fn create_queue(&self, queue: &str, spec: TopicSpec) -> Result<()> {
        self.declare(queue, spec, self.queue_kind()).await
    }

    async fn create_subscription(&self, topic: &str, sub: &str) -> Result<()> {
        if self.topics != QueueType::Stream {
            return self
                .create_fanout_subscription(topic, sub, self.topics)
                .await;
        }
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
        let declared = self.state()?.remove(topic);
        // The queues first (which drops their bindings), then the exchange. Not declared by
        // this run: what a topic of one partition would be.
        let declarations: Vec<Declaration> = match declared {
            Some(d) => d
                .queues
                .into_iter()
                .map(Declaration::Queue)
                .chain(d.exchange.map(Declaration::Exchange))
                .collect(),
            None if self.topics == QueueType::Stream => queue_names(topic, 1)
                .into_iter()
                .map(Declaration::Queue)
                .collect(),
            None => vec![
                Declaration::Queue(format!("bench.{topic}")),
                Declaration::Exchange(format!("bench.{topic}")),
            ],
        };
        let mut first_error = None;
        // A run that failed may have left the connections broken: the clean-up then opens
        // one of its own.
        let mut spare: Option<Connection> = None;
        for declaration in declarations {
            let what = match &declaration {
                Declaration::Queue(q) => format!("deleting the queue {q}"),
                Declaration::Exchange(x) => format!("deleting the exchange {x}"),
            };
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
            let r = match &declaration {
                Declaration::Queue(q) => timed(
                    ANSWER_TIMEOUT,
                    &what,
                    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
                )
                .await
                .map(|_| ()),
                Declaration::Exchange(x) => {
                    timed(
                        ANSWER_TIMEOUT,
                        &what,
                        ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()),
                    )
                    .await
                }
            };
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
        let d = self
            .state()?
            .get(topic)
            .cloned()
            .ok_or_else(|| BenchError(format!("{topic} was not declared by this run")))?;
        // To the fanout exchange of a classic/quorum topic (routing key empty), else through
        // the default exchange to the queues, round-robin.
        let (exchange, routes, what) = match &d.exchange {
            Some(x) => (
                ShortString::from(x.as_str()),
                vec![ShortString::from("")],
                format!("publishing to the exchange {x}"),
            ),
            None => (
                ShortString::from(""),
                d.queues
                    .iter()
                    .map(|q| ShortString::from(q.as_str()))
                    .collect(),
                format!("publishing to {}", listed(&d.queues)),
            ),
        };
        let channel = self.channel().await?;
        timed(
            ANSWER_TIMEOUT,
            &what,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Box::new(AmqpPublisher {
            channel,
            exchange,
            routes,
            next: 0,
            cached: None,
            properties: BasicProperties::default(),
            what,
        }))
    }

    async fn subscribe(
        &self,
        topic: &str,
        sub: &str,
        max_batch: usize,
    ) -> Result<Box<dyn Subscriber>> {
        let max_batch = max_batch.max(1);
        let (channel, deliveries) = if self.topics == QueueType::Stream {
            let d = self.declared(topic, Kind::Stream)?;
            let args = table(vec![(
                "x-stream-offset",
                AMQPValue::LongString("first".into()),
            )]);
            self.consume(&d.queues, max_batch.saturating_mul(2), &args)
                .await?
        } else {
            // The subscription's own queue, from where it is (what is there is not yet acked
            // by a member of this subscription).
            let d = self.declared(topic, Kind::Fanout(self.topics))?;
            let queue = d.subs.get(sub).cloned().ok_or_else(|| {
                BenchError(format!(
                    "the subscription {sub} of {topic} was not created by this run"
                ))
            })?;
            self.consume(
                &[queue],
                max_batch.saturating_mul(2),
                &FieldTable::default(),
            )
            .await?
        };
        Ok(Box::new(AmqpSubscriber {
            channel,
            deliveries,
            max_batch,
            acked: 0,
            handed: BTreeSet::new(),
        }))
    }

    async fn queue_consumer(&self, queue: &str, window: usize) -> Result<Box<dyn QueueConsumer>> {
        let d = self.declared(queue, self.queue_kind())?;
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
    /// Where messages go: the default exchange (empty) or a fanout topic's exchange.
    exchange: ShortString,
    /// The routing keys, used round-robin: the queues of the topic (its partitions), or the
    /// empty key for a fanout exchange.
    routes: Vec<ShortString>,
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
            routes.push(self.routes[self.next % self.routes.len()].clone());
            self.next = self.next.wrapping_add(1);
        }
        // Every publish handed to the connection at once (lapin's publish future resolves
        // once its frames are written): the batch goes out as one burst.
        let sends = batch.values()[..n]
            .iter()
            .zip(routes)
            .map(|(v, route)| {
                self.channel.basic_publish(
                    self.exchange.clone(),
                    route,
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
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;

    use super::*;
    use crate::bench::driver::Headers;

    /// The RabbitMQ the live tests use.
    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    /// How long a live test waits for what it expects.
    const WAIT: Duration = Duration::from_secs(20);
    const ONE: TopicSpec = TopicSpec {
        partitions: 1,
        durability: None,
    };

    /// A driver mapping topics as `topics` says, or `None` (the test is skipped) when
    /// RabbitMQ is not reachable, unless `CI=true`.
    async fn live(topics: QueueType) -> Option<Amqp> {
        match Amqp::connect_with(URL, 1, topics).await {
            Ok(d) => Some(d),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("no RabbitMQ at {URL}: {e}")
            }
            Err(e) => {
                println!("skipped: no RabbitMQ at {URL}: {e}");
                None
            }
        }
    }

    /// A topic name no other test (or run) uses.
    fn unique(what: &str) -> String {
        format!("test-{what}-{:016x}", rand::random::<u64>())
    }

    /// `n` distinct values.
    fn values(n: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(format!("value {i}"))).collect()
    }

    /// `values` published to `topic` by a new publisher.
    async fn publish(d: &Amqp, topic: &str, values: &[Bytes]) {
        let headers: Headers = Arc::from(Vec::new());
        let batch = Batch::new(values.to_vec(), headers);
        let mut p = d.publisher(topic).await.unwrap();
        assert_eq!(p.publish(&batch, values.len()).await.unwrap(), values.len());
    }

    /// Batches of `sub` until `n` values came (or [`WAIT`] passed: a failure).
    async fn receive(sub: &mut dyn Subscriber, n: usize) -> Vec<Bytes> {
        let deadline = Instant::now() + WAIT;
        let (mut got, mut out) = (Vec::new(), Vec::new());
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} of {n} messages within {WAIT:?}",
                got.len()
            );
            sub.next_batch(&mut out, left).await.unwrap();
            got.append(&mut out);
        }
        got
    }

    /// Deliveries of `c` until `n` came (or [`WAIT`] passed: a failure).
    async fn deliveries(c: &mut dyn QueueConsumer, n: usize) -> (Vec<Bytes>, Vec<AckHandle>) {
        let deadline = Instant::now() + WAIT;
        let (mut got, mut handles) = (Vec::new(), Vec::new());
        let (mut values, mut acks) = (Vec::new(), Vec::new());
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} of {n} deliveries within {WAIT:?}",
                got.len()
            );
            c.receive(&mut values, &mut acks, left).await.unwrap();
            got.append(&mut values);
            handles.append(&mut acks);
        }
        (got, handles)
    }

    /// Whether the queue (or, with `exchange`, the exchange) `name` exists: a passive
    /// declare on a fresh channel (a failed one closes it).
    async fn exists(d: &Amqp, name: &str, exchange: bool) -> bool {
        let ch = d.channel().await.unwrap();
        let r = if exchange {
            timed(
                WAIT,
                "passive exchange.declare",
                ch.exchange_declare(
                    name.into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
        } else {
            timed(
                WAIT,
                "passive queue.declare",
                ch.queue_declare(
                    name.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            .map(|_| ())
        };
        match r {
            Ok(()) => {
                timed(WAIT, "closing", ch.close(200, "done".into()))
                    .await
                    .unwrap();
                true
            }
            Err(e) if e.0.contains("NOT_FOUND") => false,
            Err(e) => panic!("{name}: {e}"),
        }
    }

    /// Runs `body`, then deletes `names` (whatever happened) and closes the driver; the
    /// clean-up must succeed.
    async fn cleaned(d: &Amqp, names: &[&str], body: impl Future<Output = ()>) {
        let r = AssertUnwindSafe(body).catch_unwind().await;
        let mut deleted = Ok(());
        for n in names {
            if let Err(e) = d.delete_topic(n).await {
                deleted = deleted.and(Err(e));
            }
        }
        let closed = d.close().await;
        if let Err(panic) = r {
            std::panic::resume_unwind(panic);
        }
        deleted.unwrap();
        closed.unwrap();
    }

    /// A batch published with no subscription is stored in the topic's queue and drained by
    /// the first subscription, which takes that queue.
    async fn published_then_drained_by_the_first_subscription(t: QueueType) {
        let Some(d) = live(t).await else { return };
        let topic = unique(t.as_str());
        cleaned(&d, &[&topic], async {
            d.create_topic(&topic, ONE).await.unwrap();
            let sent = values(50);
            publish(&d, &topic, &sent).await;
            d.create_subscription(&topic, "s").await.unwrap();
            let mut sub = d.subscribe(&topic, "s", 16).await.unwrap();
            assert_eq!(receive(&mut *sub, sent.len()).await, sent);
            sub.close().await.unwrap();
        })
        .await;
    }

    /// Subscriptions created before publishing each receive everything.
    async fn every_subscription_receives_everything(t: QueueType) {
        let Some(d) = live(t).await else { return };
        let topic = unique(t.as_str());
        cleaned(&d, &[&topic], async {
            d.create_topic(&topic, ONE).await.unwrap();
            d.create_subscription(&topic, "a").await.unwrap();
            d.create_subscription(&topic, "b").await.unwrap();
            let sent = values(40);
            publish(&d, &topic, &sent).await;
            for s in ["a", "b"] {
                let mut sub = d.subscribe(&topic, s, 16).await.unwrap();
                assert_eq!(
                    receive(&mut *sub, sent.len()).await,
                    sent,
                    "subscription {s}"
                );
                sub.close().await.unwrap();
            }
        })
        .await;
    }

    /// A queue consumer receives what was published; what it acked is gone, what it did not
    /// comes to the next consumer.
    async fn queue_receive_and_ack(t: QueueType) {
        let Some(d) = live(t).await else { return };
        let queue = unique(t.as_str());
        cleaned(&d, &[&queue], async {
            d.create_queue(&queue, ONE).await.unwrap();
            let sent = values(20);
            publish(&d, &queue, &sent).await;
            let mut c = d.queue_consumer(&queue, 64).await.unwrap();
            let (got, acks) = deliveries(&mut *c, sent.len()).await;
            assert_eq!(got, sent);
            assert_eq!(c.ack(&acks[..10]).await.unwrap(), 10);
            c.close().await.unwrap();
            // Had the acks been lost, the first ten would come (again) first.
            let mut c = d.queue_consumer(&queue, 64).await.unwrap();
            let (mut got, acks) = deliveries(&mut *c, 10).await;
            got.sort();
            let mut rest = sent[10..].to_vec();
            rest.sort();
            assert_eq!(got, rest);
            assert_eq!(c.ack(&acks).await.unwrap(), 10);
            c.close().await.unwrap();
        })
        .await;
    }

    /// delete_topic deletes the exchange and every queue of a topic, and a queue.
    async fn delete_leaves_nothing(t: QueueType) {
        let Some(d) = live(t).await else { return };
        let (topic, queue) = (unique(t.as_str()), unique(t.as_str()));
        let own = format!("bench.{topic}");
        let sub_b = format!("bench.{topic}.b");
        let queue_q = format!("bench.{queue}");
        cleaned(&d, &[&topic, &queue], async {
            d.create_topic(&topic, ONE).await.unwrap();
            d.create_subscription(&topic, "a").await.unwrap();
            d.create_subscription(&topic, "b").await.unwrap();
            d.create_queue(&queue, ONE).await.unwrap();
            publish(&d, &topic, &values(5)).await;
            publish(&d, &queue, &values(5)).await;
            let all = [
                (&own, false),
                (&own, true),
                (&sub_b, false),
                (&queue_q, false),
            ];
            for (name, exchange) in all {
                assert!(exists(&d, name, exchange).await, "{name} was not declared");
            }
            d.delete_topic(&topic).await.unwrap();
            d.delete_topic(&queue).await.unwrap();
            for (name, exchange) in all {
                assert!(!exists(&d, name, exchange).await, "{name} is still there");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn classic_published_then_drained_by_the_first_subscription() {
        published_then_drained_by_the_first_subscription(QueueType::Classic).await;
    }

    #[tokio::test]
    async fn quorum_published_then_drained_by_the_first_subscription() {
        published_then_drained_by_the_first_subscription(QueueType::Quorum).await;
    }

    #[tokio::test]
    async fn classic_every_subscription_receives_everything() {
        every_subscription_receives_everything(QueueType::Classic).await;
    }

    #[tokio::test]
    async fn quorum_every_subscription_receives_everything() {
        every_subscription_receives_everything(QueueType::Quorum).await;
    }

    #[tokio::test]
    async fn classic_queue_receive_and_ack() {
        queue_receive_and_ack(QueueType::Classic).await;
    }

    #[tokio::test]
    async fn quorum_queue_receive_and_ack() {
        queue_receive_and_ack(QueueType::Quorum).await;
    }

    #[tokio::test]
    async fn classic_delete_leaves_nothing() {
        delete_leaves_nothing(QueueType::Classic).await;
    }

    #[tokio::test]
    async fn quorum_delete_leaves_nothing() {
        delete_leaves_nothing(QueueType::Quorum).await;
    }

    /// The stream mapping (of `connect`) is as before: a stream queue per topic, read from the
    /// first message by every subscription; deleting it leaves nothing.
    #[tokio::test]
    async fn stream_topics_are_stream_queues() {
        let d = match Amqp::connect_with(URL, 1, QueueType::Stream).await {
            Ok(d) => d,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("no RabbitMQ at {URL}: {e}")
            }
            Err(e) => {
                println!("skipped: no RabbitMQ at {URL}: {e}");
                return;
            }
        };
        assert!(d.describe().contains("topic = a durable stream queue"));
        let topic = unique("stream");
        let own = format!("bench.{topic}");
        cleaned(&d, &[&topic], async {
            d.create_topic(&topic, ONE).await.unwrap();
            let sent = values(30);
            publish(&d, &topic, &sent).await;
            for s in ["a", "b"] {
                d.create_subscription(&topic, s).await.unwrap();
                let mut sub = d.subscribe(&topic, s, 8).await.unwrap();
                assert_eq!(
                    receive(&mut *sub, sent.len()).await,
                    sent,
                    "subscription {s}"
                );
                sub.close().await.unwrap();
            }
            assert!(exists(&d, &own, false).await);
            assert!(
                !exists(&d, &own, true).await,
                "a stream topic has no exchange"
            );
            d.delete_topic(&topic).await.unwrap();
            assert!(!exists(&d, &own, false).await);
        })
        .await;
    }

    #[tokio::test]
    async fn classic_and_quorum_topics_take_one_partition() {
        for t in [QueueType::Classic, QueueType::Quorum] {
            let Some(d) = live(t).await else { return };
            let topic = unique(t.as_str());
            let spec = TopicSpec {
                partitions: 2,
                durability: None,
            };
            let e = d.create_topic(&topic, spec).await.unwrap_err();
            assert!(e.0.contains("--partitions 1"), "{e}");
            assert!(d.describe().contains(&format!("{} mapping", t.as_str())));
            // Nothing was declared: deleting what a topic would be finds nothing.
            d.delete_topic(&topic).await.unwrap();
            assert!(!exists(&d, &format!("bench.{topic}"), true).await);
            d.close().await.unwrap();
        }
    }

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
