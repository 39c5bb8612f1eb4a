//! [`Nats`]: NATS JetStream itself, without Wharf (`--target nats://HOST:PORT`), with the
//! `async-nats` client — the baseline Wharf-on-NATS (`wharf serve --engine nats`) is judged
//! against. The mapping (also in [`Driver::describe`]):
//!
//! - **topic** = one stream, file storage, one replica, limits retention. `--partitions N`
//!   gives the stream N subjects `bench.{name}.{p}` and publishers spread messages over them
//!   round-robin, as Wharf does without keys; JetStream stores and orders a stream as one unit,
//!   so this gains no parallelism (it only keeps such runs possible). The stream's name is the
//!   topic's with every character other than `A-Z a-z 0-9 _ -` turned into `_`.
//! - **durability**: NATS 2.9 has no per-stream fsync setting. The server acknowledges a
//!   publish once the message is written to its file store (no fsync on the publish path) and
//!   syncs on its own timer; every `--durability` maps to the same stream. Compare with Wharf's
//!   `none` or `interval`, not `always`.
//! - **publish** = `js.publish` of every message of the batch, pipelined, then every
//!   `PublishAckFuture` awaited (no message ids, no headers unless `--header`).
//! - **stream subscription** = a durable pull consumer with `ack_policy: none`; the member
//!   keeps up to two pull requests of `--batch` messages outstanding, as a pull client does, so
//!   the server never waits for the next request.
//! - **queue** = a work-queue stream (`retention: workqueue`) and one durable pull consumer with
//!   explicit acks (30 s ack wait) shared by all consumers; a consumer asks for at most its
//!   window of deliveries. An ack publishes `+ACK` with a reply subject for each delivery, asks
//!   for as many deliveries as it freed, and returns once the server confirmed every ack.
//!
//! Consumers use raw JetStream API requests (`$JS.API.CONSUMER.DURABLE.CREATE`,
//! `$JS.API.CONSUMER.MSG.NEXT`) over the core client: they are known to work on 2.9, where
//! async-nats 0.51 cannot read some of the server's answers. What differs from a plain client:
//! the JetStream context allows [`MAX_ACKS_IN_FLIGHT`] outstanding publish acks instead of
//! async-nats's 5000, so large batches are not throttled by the client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap, Message, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;

use super::driver::{
    AckHandle, Batch, BenchError, Driver, Publisher, QueueConsumer, Result, ServerSide, Subscriber,
    TopicSpec,
};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an API request, a publish ack or an ack confirmation may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pull request stays open on the server (a new one is sent when it ends).
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The ack wait of a queue's consumer (Wharf's default lease).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Outstanding publish acks a JetStream context allows (async-nats's default is 5000).
const MAX_ACKS_IN_FLIGHT: usize = 1 << 20;
/// Messages a subscription buffers in the client (two pulls of the largest `--batch`).
const SUBSCRIPTION_CAPACITY: usize = 1 << 18;

fn nats_error(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError(format!("{what}: {e}"))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The stream (and consumer) name for a Wharf topic (or subscription) name: JetStream names
/// take no `.`, `*`, `>`, whitespace or path separators.
fn stream_name(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A JetStream API request with a JSON body over the core client; the answer, or the API's
/// error.
async fn api(client: &Client, subject: &str, body: serde_json::Value) -> Result<serde_json::Value> {
    let answer = client
        .request(
            format!("$JS.API.{subject}"),
            Bytes::from(body.to_string().into_bytes()),
        )
        .await
        .map_err(|e| nats_error(subject, e))?;
    let v: serde_json::Value = serde_json::from_slice(&answer.payload)
        .map_err(|e| nats_error(subject, format!("unreadable answer: {e}")))?;
    if let Some(err) = v.get("error") {
        return Err(BenchError(format!(
            "{subject}: {} (JetStream error {})",
            err.get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("error"),
            err.get("err_code").unwrap_or(&serde_json::Value::Null)
        )));
    }
    Ok(v)
}

/// NATS JetStream reached over `connections` client connections.
pub(crate) struct Nats {
    url: String,
    host: String,
    port: u16,
    version: String,
    clients: Vec<Client>,
    contexts: Vec<jetstream::Context>,
    /// Round-robin over the connections for publishers and consumers.
    next: AtomicUsize,
}

impl Nats {
    /// Connects `connections` clients to `url` (`nats://HOST:PORT`) and checks that JetStream
    /// is enabled.
    pub(crate) async fn connect(url: &str, connections: usize) -> Result<Self> {
        let uri: tonic::codegen::http::Uri = url
            .parse()
            .map_err(|e| BenchError(format!("--target {url:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("nats") {
            return Err(BenchError(format!(
                "--target {url:?}: give nats://HOST:PORT"
            )));
        }
        let host = uri
            .host()
            .ok_or_else(|| BenchError(format!("--target {url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(4222);
        let mut clients = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let client = async_nats::ConnectOptions::new()
                .name("wharf-bench")
                .connection_timeout(CONNECT_TIMEOUT)
                .request_timeout(Some(ANSWER_TIMEOUT))
                .subscription_capacity(SUBSCRIPTION_CAPACITY)
                .connect(url)
                .await
                .map_err(|e| BenchError(format!("cannot connect to {url}: {e}")))?;
            clients.push(client);
        }
        let version = clients[0].server_info().version;
        // `$JS.API.INFO` answers with the account's limits, or an error (or nobody answers)
        // when JetStream is off.
        api(&clients[0], "INFO", json!({})).await.map_err(|e| {
            BenchError(format!(
                "JetStream is not available on {url} (start nats-server with -js): {e}"
            ))
        })?;
        let contexts = clients
            .iter()
            .map(|c| {
                jetstream::ContextBuilder::new()
                    .timeout(ANSWER_TIMEOUT)
                    .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
                    .build(c.clone())
            })
            .collect();
        Ok(Self {
            url: url.to_owned(),
            host,
            port,
            version,
            clients,
            contexts,
            next: AtomicUsize::new(0),
        })
    }

    /// The next connection, round-robin.
    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()
    }

    async fn create_stream(
        &self,
        topic: &str,
        spec: TopicSpec,
        retention: stream::RetentionPolicy,
    ) -> Result<()> {
        let name = stream_name(topic);
        let config = stream::Config {
            subjects: (0..spec.partitions.max(1))
                .map(|p| format!("bench.{name}.{p}"))
                .collect(),
            name,
            description: Some(format!("wharf bench: {topic}")),
            storage: stream::StorageType::File,
            retention,
            discard: stream::DiscardPolicy::Old,
            num_replicas: 1,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            ..stream::Config::default()
        };
        // Succeeds if the stream exists with this configuration.
        self.contexts[0]
            .create_stream(config)
            .await
            .map_err(|e| nats_error(&format!("creating stream {}", stream_name(topic)), e))?;
        Ok(())
    }

    async fn create_consumer(&self, topic: &str, name: &str, ack: &str) -> Result<()> {
        let (stream, name) = (stream_name(topic), stream_name(name));
        let mut config = json!({
            "durable_name": name,
            "ack_policy": ack,
            "deliver_policy": "all",
            "replay_policy": "instant",
        });
        if ack == "explicit" {
            config["ack_wait"] = json!(nanos(ACK_WAIT));
            config["max_ack_pending"] = json!(1_000_000);
        }
        api(
            &self.clients[0],
            &format!("CONSUMER.DURABLE.CREATE.{stream}.{name}"),
            json!({ "stream_name": stream, "config": config }),
        )
        .await
        .map_err(|e| e.context(&format!("creating consumer {name} on stream {stream}")))?;
        Ok(())
    }

    async fn puller(&self, topic: &str, consumer: &str) -> Result<Puller> {
        let client = self.clients[self.pick()].clone();
        let (stream, consumer) = (stream_name(topic), stream_name(consumer));
        let what = format!("pulling from consumer {consumer} of stream {stream}");
        // A clear error now rather than pulls nobody answers.
        api(
            &client,
            &format!("CONSUMER.INFO.{stream}.{consumer}"),
            json!({}),
        )
        .await
        .map_err(|e| e.context(&what))?;
        let inbox = client.new_inbox();
        let sub = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| nats_error(&what, e))?;
        Ok(Puller {
            next_subject: Subject::from(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")),
            ack_reply: Subject::from(format!("{inbox}.a")),
            client,
            inbox,
            sub,
            next_id: 0,
            open: VecDeque::new(),
            credit: 0,
            answered: 0,
            confirmed: 0,
            what,
        })
    }
}

#[async_trait]
impl Driver for Nats {
    fn describe(&self) -> String {
        format!(
            "NATS JetStream {} directly (no Wharf): async-nats 0.51, {} connection{} to {}; \
             topic = a file-storage stream (R1; --partitions N = N subjects of one stream); \
             --durability ignored (no per-stream fsync setting: the server's sync_interval \
             decides; by default acks once written and syncs on a timer, with \
             `sync_interval: always` (2.10+) fsyncs before the ack); publish = js.publish of each message pipelined, every ack \
             awaited; subscribe = durable pull consumer, ack_policy none, 2 pulls of --batch \
             outstanding; queue = work-queue stream + durable pull consumer, explicit +ACK per \
             message, confirmed",
            self.version,
            self.clients.len(),
            if self.clients.len() == 1 { "" } else { "s" },
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
        self.create_stream(topic, spec, stream::RetentionPolicy::Limits)
            .await
    }

    async fn create_queue(&self, queue: &str, spec: TopicSpec) -> Result<()> {
        self.create_stream(queue, spec, stream::RetentionPolicy::WorkQueue)
            .await?;
        self.create_consumer(queue, queue, "explicit").await
    }

    async fn create_subscription(&self, topic: &str, sub: &str) -> Result<()> {
        self.create_consumer(topic, sub, "none").await
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        let name = stream_name(topic);
        self.contexts[0]
            .delete_stream(&name)
            .await
            .map_err(|e| nats_error(&format!("deleting stream {name}"), e))?;
        Ok(())
    }

    async fn publisher(&self, topic: &str) -> Result<Box<dyn Publisher>> {
        let js = self.contexts[self.pick()].clone();
        let name = stream_name(topic);
        // The stream's own subjects: a stream given with --topic keeps its partitions.
        let stream = js
            .get_stream(&name)
            .await
            .map_err(|e| nats_error(&format!("opening stream {name}"), e))?;
        let info = stream.cached_info();
        let subjects: Vec<Subject> = info
            .config
            .subjects
            .iter()
            .map(|s| Subject::from(s.as_str()))
            .collect();
        if subjects.is_empty() || subjects.iter().any(|s| s.contains(['*', '>'])) {
            return Err(BenchError(format!(
                "stream {name} has the subjects {:?}: the bench publishes to literal subjects",
                info.config.subjects
            )));
        }
        Ok(Box::new(NatsPublisher {
            js,
            subjects,
            next: 0,
            cached: None,
            headers: None,
            what: format!("publishing to stream {name}"),
            acks: Vec::new(),
        }))
    }

    async fn subscribe(
        &self,
        topic: &str,
        sub: &str,
        max_batch: usize,
    ) -> Result<Box<dyn Subscriber>> {
        let mut puller = self.puller(topic, sub).await?;
        let max_batch = max_batch.max(1);
        puller.top_up(2 * max_batch, max_batch).await?;
        Ok(Box::new(NatsSubscriber { puller, max_batch }))
    }

    async fn queue_consumer(&self, queue: &str, window: usize) -> Result<Box<dyn QueueConsumer>> {
        Ok(Box::new(NatsQueueConsumer {
            puller: self.puller(queue, queue).await?,
            window: window.max(1),
            held: 0,
            buffered: VecDeque::new(),
        }))
    }

    async fn close(&self) -> Result<()> {
        for c in &self.clients {
            c.flush()
                .await
                .map_err(|e| nats_error(&format!("flushing the connection to {}", self.url), e))?;
        }
        Ok(())
    }
}

struct NatsPublisher {
    js: jetstream::Context,
    /// The stream's subjects (its partitions), used round-robin.
    subjects: Vec<Subject>,
    next: usize,
    /// The batch id of `headers`.
    cached: Option<u64>,
    /// The batch's headers as NATS headers (none: the batch has none).
    headers: Option<HeaderMap>,
    what: String,
    /// Reused for the ack futures of a batch.
    acks: Vec<jetstream::context::PublishAckFuture>,
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&mut self, batch: &Batch, n: usize) -> Result<usize> {
        let n = n.min(batch.len());
        if self.cached != Some(batch.id()) {
            self.headers = (!batch.headers().is_empty()).then(|| {
                let mut h = HeaderMap::new();
                for (k, v) in batch.headers() {
                    h.append(k.as_str(), v.as_str());
                }
                h
            });
            self.cached = Some(batch.id());
        }
        self.acks.clear();
        for v in &batch.values()[..n] {
            let subject = self.subjects[self.next % self.subjects.len()].clone();
            self.next = self.next.wrapping_add(1);
            let mut m = jetstream::message::PublishMessage::build().payload(v.clone());
            if let Some(h) = &self.headers {
                m = m.headers(h.clone());
            }
            let ack = self
                .js
                .send_publish(subject, m)
                .await
                .map_err(|e| nats_error(&self.what, e))?;
            self.acks.push(ack);
        }
        let mut done = 0;
        for ack in self.acks.drain(..) {
            ack.await.map_err(|e| nats_error(&self.what, e))?;
            done += 1;
        }
        Ok(done)
    }
}

/// Pulls from one durable consumer into one inbox subscription (`{inbox}.*`). Pull request
/// `n` replies to `{inbox}.{n}`: deliveries come with their stream subject, but the status
/// that ends a request (408 expired, 404 nothing) comes to that subject and says how many
/// messages it still owed. Ack confirmations come to `{inbox}.a`.
struct Puller {
    client: Client,
    next_subject: Subject,
    ack_reply: Subject,
    inbox: String,
    sub: async_nats::Subscriber,
    next_id: u64,
    /// Pull requests not known to have ended: (id, messages asked for, when it was sent).
    open: VecDeque<(u64, usize, Instant)>,
    /// Messages the open pull requests still owe (the server serves them in turn, so which
    /// request a delivery answers is not known: only the total is kept).
    credit: usize,
    /// Ack answers received (confirmations or errors) since the counters were reset.
    answered: usize,
    /// Ack confirmations received since the counters were reset.
    confirmed: usize,
    what: String,
}

impl Puller {
    /// Keeps `credit` within what the open requests asked for.
    fn clamp(&mut self) {
        let asked: usize = self.open.iter().map(|(_, n, _)| n).sum();
        self.credit = self.credit.min(asked);
    }

    /// Forgets pull requests past their expiry whose end the server did not report.
    fn sweep(&mut self) {
        let now = Instant::now();
        let before = self.open.len();
        self.open.retain(|(_, _, sent)| {
            now.duration_since(*sent) < PULL_EXPIRES + Duration::from_secs(1)
        });
        if self.open.len() != before {
            self.clamp();
        }
    }

    /// Sends pull requests of `each` messages (at most) until `target` messages are owed.
    async fn top_up(&mut self, target: usize, each: usize) -> Result<()> {
        self.sweep();
        while self.credit < target {
            let n = (target - self.credit).min(each.max(1));
            let id = self.next_id;
            self.next_id += 1;
            let body = format!(r#"{{"batch":{n},"expires":{}}}"#, nanos(PULL_EXPIRES));
            self.client
                .publish_with_reply(
                    self.next_subject.clone(),
                    format!("{}.{id}", self.inbox),
                    Bytes::from(body.into_bytes()),
                )
                .await
                .map_err(|e| nats_error(&self.what, e))?;
            self.open.push_back((id, n, Instant::now()));
            self.credit += n;
        }
        Ok(())
    }

    /// Pull request `id` ended (`m` is its status message).
    fn end_pull(&mut self, m: &Message) {
        let id: Option<u64> = m.subject.rsplit('.').next().and_then(|t| t.parse().ok());
        let Some(pos) = self.open.iter().position(|(i, _, _)| Some(*i) == id) else {
            return;
        };
        let Some((_, asked, _)) = self.open.remove(pos) else {
            return;
        };
        let owed = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Pending-Messages"))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(asked);
        self.credit = self.credit.saturating_sub(owed);
        self.clamp();
    }

    /// Takes in one message of the inbox: a delivery is handed back; an ack answer or the
    /// end of a pull request only updates the counters.
    fn handle(&mut self, m: Message) -> Result<Option<Message>> {
        if let Some(status) = m.status {
            if m.subject == self.ack_reply {
                self.answered += 1;
                return Ok(None);
            }
            return match status.as_u16() {
                // An idle heartbeat.
                100 => Ok(None),
                404 | 408 => {
                    self.end_pull(&m);
                    Ok(None)
                }
                _ => Err(BenchError(format!(
                    "{}: status {} {}",
                    self.what,
                    status.as_u16(),
                    m.description.unwrap_or_default()
                ))),
            };
        }
        if m.reply.is_none() && m.subject == self.ack_reply {
            self.answered += 1;
            self.confirmed += 1;
            return Ok(None);
        }
        // A delivery (its reply subject is the ack subject).
        self.credit = self.credit.saturating_sub(1);
        if self.credit == 0 {
            // Every open request was served in full: none sends a status.
            self.open.clear();
        }
        Ok(Some(m))
    }

    /// The next message of the inbox, or `None` at `deadline`.
    async fn recv(&mut self, deadline: Instant) -> Result<Option<Message>> {
        match tokio::time::timeout_at(deadline, self.sub.next()).await {
            Err(_) => Ok(None),
            Ok(Some(m)) => Ok(Some(m)),
            Ok(None) => Err(BenchError(format!("{}: the subscription ended", self.what))),
        }
    }

    /// The next message of the inbox if one is already here.
    fn try_recv(&mut self) -> Option<Message> {
        self.sub.next().now_or_never().flatten()
    }

    async fn close(mut self) -> Result<()> {
        self.sub
            .unsubscribe()
            .await
            .map_err(|e| nats_error(&self.what, e))
    }
}

struct NatsSubscriber {
    puller: Puller,
    max_batch: usize,
}

#[async_trait]
impl Subscriber for NatsSubscriber {
    async fn next_batch(&mut self, out: &mut Vec<Bytes>, timeout: Duration) -> Result<usize> {
        out.clear();
        let deadline = Instant::now() + timeout;
        loop {
            // Two batches requested: the server never waits for the next request.
            self.puller
                .top_up(2 * self.max_batch, self.max_batch)
                .await?;
            let Some(m) = self.puller.recv(deadline).await? else {
                return Ok(0);
            };
            if let Some(d) = self.puller.handle(m)? {
                out.push(d.payload);
                break;
            }
        }
        while out.len() < self.max_batch {
            let Some(m) = self.puller.try_recv() else {
                break;
            };
            if let Some(d) = self.puller.handle(m)? {
                out.push(d.payload);
            }
        }
        Ok(out.len())
    }

    async fn close(self: Box<Self>) -> Result<()> {
        // With `ack_policy: none` nothing is left to settle; open pulls expire on the server.
        self.puller.close().await
    }
}

struct NatsQueueConsumer {
    puller: Puller,
    window: usize,
    /// Deliveries received and not acked (handed out or buffered).
    held: usize,
    /// Deliveries that arrived while an ack waited for its confirmations.
    buffered: VecDeque<Message>,
}

impl NatsQueueConsumer {
    /// Asks for as many deliveries as the window has room for.
    async fn top_up(&mut self) -> Result<()> {
        self.puller.sweep();
        let room = self.window.saturating_sub(self.held);
        self.puller.top_up(room, room).await
    }

    fn take(values: &mut Vec<Bytes>, acks: &mut Vec<AckHandle>, m: Message) -> Result<()> {
        let reply = m
            .reply
            .ok_or_else(|| BenchError::new("a JetStream delivery without its ack subject"))?;
        values.push(m.payload);
        acks.push(AckHandle::Text(reply.to_string()));
        Ok(())
    }
}

#[async_trait]
impl QueueConsumer for NatsQueueConsumer {
    async fn receive(
        &mut self,
        values: &mut Vec<Bytes>,
        acks: &mut Vec<AckHandle>,
        timeout: Duration,
    ) -> Result<usize> {
        values.clear();
        acks.clear();
        if !self.buffered.is_empty() {
            for m in self.buffered.drain(..) {
                Self::take(values, acks, m)?;
            }
            return Ok(values.len());
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.top_up().await?;
            let Some(m) = self.puller.recv(deadline).await? else {
                return Ok(0);
            };
            if let Some(d) = self.puller.handle(m)? {
                self.held += 1;
                Self::take(values, acks, d)?;
                break;
            }
        }
        while values.len() < self.window {
            let Some(m) = self.puller.try_recv() else {
                break;
            };
            if let Some(d) = self.puller.handle(m)? {
                self.held += 1;
                Self::take(values, acks, d)?;
            }
        }
        Ok(values.len())
    }

    async fn ack(&mut self, acks: &[AckHandle]) -> Result<usize> {
        self.puller.answered = 0;
        self.puller.confirmed = 0;
        for a in acks {
            let AckHandle::Text(subject) = a else {
                return Err(BenchError(format!(
                    "ack handle {a:?} is not a NATS reply subject"
                )));
            };
            self.puller
                .client
                .publish_with_reply(
                    subject.clone(),
                    self.puller.ack_reply.clone(),
                    Bytes::from_static(b"+ACK"),
                )
                .await
                .map_err(|e| nats_error(&self.puller.what, e))?;
        }
        self.held = self.held.saturating_sub(acks.len());
        // The window has room again: ask for more now, as a server pushing deliveries would.
        self.top_up().await?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while self.puller.answered < acks.len() {
            let Some(m) = self.puller.recv(deadline).await? else {
                return Err(BenchError(format!(
                    "{}: {} of {} acks confirmed within {ANSWER_TIMEOUT:?}",
                    self.puller.what,
                    self.puller.confirmed,
                    acks.len()
                )));
            };
            if let Some(d) = self.puller.handle(m)? {
                self.held += 1;
                self.buffered.push_back(d);
            }
        }
        Ok(self.puller.confirmed)
    }

    async fn close(self: Box<Self>) -> Result<()> {
        // Deliveries taken in but never handed out go back to the queue now (the rest at
        // the end of their ack wait).
        for m in &self.buffered {
            if let Some(reply) = &m.reply {
                self.puller
                    .client
                    .publish(reply.clone(), Bytes::from_static(b"-NAK"))
                    .await
                    .map_err(|e| nats_error(&self.puller.what, e))?;
            }
        }
        self.puller.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_take_only_allowed_characters() {
        assert_eq!(stream_name("bench-publish-1_a"), "bench-publish-1_a");
        assert_eq!(stream_name("orders.v1 x>*/"), "orders_v1_x___");
    }
}
