//! [`WharfGrpc`]: a Wharf server over gRPC (`wharf.v1`), with the tonic clients of
//! `wharf-proto` — the requests a plain user of the raw API sends: `Publish` with a batch per
//! request (no `wharf-message-id`, no headers unless `--header`), `StreamConsumer.Consume` for
//! stream subscriptions (no commits), the bidi `SharedConsumer.Process` stream for queues
//! (each received batch acked with one `settle`, waiting for its confirmation).
//!
//! What differs from a plain client, to leave the machine's CPU to the server: a publisher
//! encodes a batch it publishes again and again once (the bytes on the wire are those of the
//! generated `MessagesClient::publish`), and counts the results of the answer without building
//! them (`RawCodec`, `CountResults`); this took the client from ~0.62 to ~0.43 µs of CPU per
//! 100 B message in batches of 100. Consumers use the generated clients as they are.
//!
//! Requests are spread round-robin over `--connections` HTTP/2 connections (default 2); on two
//! cores, 1, 2 or 4 connections made no difference beyond noise.

use std::collections::VecDeque;
use std::time::Duration;

use std::marker::PhantomData;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost::encoding::decode_varint;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};
use wharf_proto::v1;
use wharf_proto::v1::shared_consumer_client::SharedConsumerClient;
use wharf_proto::v1::stream_consumer_client::StreamConsumerClient;
use wharf_proto::v1::subscriptions_client::SubscriptionsClient;
use wharf_proto::v1::topics_client::TopicsClient;

use super::driver::{
    AckHandle, Batch, BenchError, Driver, Durability, Publisher, QueueConsumer, Result, ServerSide,
    Subscriber, TopicSpec,
};

/// Largest message the clients accept (a `Consume` batch is at most ~1 MiB of values).
const MAX_DECODE: usize = 64 * 1024 * 1024;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first answer of a stream (the assignment, the stream's headers) and the
/// confirmation of an ack may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A gRPC status in words: the message, the gRPC code and Wharf's stable error code.
fn status_error(what: &str, s: &Status) -> BenchError {
    let code = s
        .metadata()
        .get(wharf_proto::ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|c| format!(", {c}"))
        .unwrap_or_default();
    BenchError(format!("{what}: {} ({:?}{code})", s.message(), s.code()))
}

/// Adds the bearer token, if there is one, to every request.
#[derive(Clone, Debug)]
pub(crate) struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Auth>;

/// A Wharf server reached over gRPC on `connections` HTTP/2 connections.
pub(crate) struct WharfGrpc {
    url: String,
    host: String,
    port: u16,
    channels: Vec<Channel>,
    auth: Auth,
    /// Round-robin over `channels` for publishers and consumers.
    next: std::sync::atomic::AtomicUsize,
}

impl WharfGrpc {
    /// Connects `connections` HTTP/2 connections to `url` (`http://host:port` or `https://`).
    pub(crate) async fn connect(
        url: &str,
        connections: usize,
        token: Option<&str>,
    ) -> Result<Self> {
        let uri: http_uri::Uri = url
            .parse()
            .map_err(|e| BenchError(format!("--target {url:?} is not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(BenchError(format!(
                    "--target {url:?}: give http://HOST:PORT, https://HOST:PORT or inproc"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| BenchError(format!("--target {url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| BenchError(format!("--target {url:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if https {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_enabled_roots())
                .map_err(|e| BenchError(format!("TLS for {url}: {e}")))?;
        }
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let channel = endpoint.connect().await.map_err(|e| {
                BenchError(format!("cannot connect to {url}: {}", source_chain(&e)))
            })?;
            channels.push(channel);
        }
        let auth = match token {
            None => Auth(None),
            Some(t) => Auth(Some(format!("Bearer {t}").parse().map_err(|_| {
                BenchError::new("--token holds characters a header cannot")
            })?)),
        };
        Ok(Self {
            url: url.to_owned(),
            host,
            port,
            channels,
            auth,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.channels[i % self.channels.len()].clone()
    }

    fn topics(&self) -> TopicsClient<Svc> {
        TopicsClient::with_interceptor(self.channel(), self.auth.clone())
    }

    fn topic_config(spec: TopicSpec) -> v1::TopicConfig {
        let durability = match spec.durability {
            None => v1::Durability::Unspecified,
            Some(Durability::Always) => v1::Durability::Always,
            Some(Durability::Interval) => v1::Durability::Interval,
            Some(Durability::None) => v1::Durability::None,
        };
        v1::TopicConfig {
            partitions: Some(spec.partitions),
            durability: durability as i32,
            ..v1::TopicConfig::default()
        }
    }
}

/// An error and its sources, `: `-separated (tonic's transport errors say little on their own).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The `http::Uri` tonic re-exports (no direct dependency on `http`).
mod http_uri {
    pub(crate) use tonic::codegen::http::Uri;
}

#[async_trait]
impl Driver for WharfGrpc {
    fn describe(&self) -> String {
        format!(
            "gRPC: wharf-proto's tonic clients, {} HTTP/2 connection{} to {}",
            self.channels.len(),
            if self.channels.len() == 1 { "" } else { "s" },
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
        self.topics()
            .create_topic(v1::CreateTopicRequest {
                name: topic.to_owned(),
                config: Some(Self::topic_config(spec)),
            })
            .await
            .map_err(|s| status_error(&format!("creating topic {topic}"), &s))?;
        Ok(())
    }

    async fn create_queue(&self, queue: &str, spec: TopicSpec) -> Result<()> {
        self.topics()
            .create_queue(v1::CreateQueueRequest {
                name: queue.to_owned(),
                topic: Some(Self::topic_config(spec)),
                shared: None,
            })
            .await
            .map_err(|s| status_error(&format!("creating queue {queue}"), &s))?;
        Ok(())
    }

    async fn create_subscription(&self, topic: &str, sub: &str) -> Result<()> {
        SubscriptionsClient::with_interceptor(self.channel(), self.auth.clone())
            .create_subscription(v1::CreateSubscriptionRequest {
                topic: topic.to_owned(),
                name: sub.to_owned(),
                config: Some(v1::create_subscription_request::Config::Stream(
                    v1::StreamConfig::default(),
                )),
            })
            .await
            .map_err(|s| status_error(&format!("creating subscription {sub} on {topic}"), &s))?;
        Ok(())
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.topics()
            .delete_topic(v1::DeleteTopicRequest {
                name: topic.to_owned(),
            })
            .await
            .map_err(|s| status_error(&format!("deleting topic {topic}"), &s))?;
        Ok(())
    }

    async fn publisher(&self, topic: &str) -> Result<Box<dyn Publisher>> {
        let svc = InterceptedService::new(self.channel(), self.auth.clone());
        Ok(Box::new(GrpcPublisher {
            grpc: tonic::client::Grpc::new(svc)
                .max_decoding_message_size(MAX_DECODE)
                .max_encoding_message_size(MAX_DECODE),
            topic: topic.to_owned(),
            cached: None,
            encoded: Bytes::new(),
            buf: BytesMut::new(),
        }))
    }

    async fn subscribe(
        &self,
        topic: &str,
        sub: &str,
        max_batch: usize,
    ) -> Result<Box<dyn Subscriber>> {
        let mut client = StreamConsumerClient::with_interceptor(self.channel(), self.auth.clone())
            .max_decoding_message_size(MAX_DECODE);
        let what = format!("consuming {sub} on {topic}");
        let request = v1::ConsumeRequest {
            topic: topic.to_owned(),
            subscription: sub.to_owned(),
            max_messages: Some(u32::try_from(max_batch).unwrap_or(u32::MAX)),
            auto_commit: false,
        };
        let mut stream = tokio::time::timeout(ANSWER_TIMEOUT, client.consume(request))
            .await
            .map_err(|_| BenchError(format!("{what}: no answer within {ANSWER_TIMEOUT:?}")))?
            .map_err(|s| status_error(&what, &s))?
            .into_inner();
        // The first event is the assignment: the member has joined.
        match tokio::time::timeout(ANSWER_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(v1::ConsumeResponse {
                event: Some(v1::consume_response::Event::Assignment(_)),
            }))) => {}
            Ok(Ok(other)) => {
                return Err(BenchError(format!(
                    "{what}: expected the assignment first, got {other:?}"
                )));
            }
            Ok(Err(s)) => return Err(status_error(&what, &s)),
            Err(_) => {
                return Err(BenchError(format!(
                    "{what}: no assignment within {ANSWER_TIMEOUT:?}"
                )));
            }
        }
        Ok(Box::new(GrpcSubscriber { stream, what }))
    }

    async fn queue_consumer(&self, queue: &str, window: usize) -> Result<Box<dyn QueueConsumer>> {
        let mut client = SharedConsumerClient::with_interceptor(self.channel(), self.auth.clone())
            .max_decoding_message_size(MAX_DECODE);
        let what = format!("processing queue {queue}");
        let (tx, rx) = mpsc::channel(16);
        let start = v1::ProcessRequest {
            request: Some(v1::process_request::Request::Start(v1::ProcessStart {
                topic: queue.to_owned(),
                subscription: queue.to_owned(),
                member: None,
                max_in_flight: Some(u32::try_from(window).unwrap_or(u32::MAX)),
                lease_ms: None,
            })),
        };
        // The server answers the call once it has read `start`: send it first.
        tx.send(start)
            .await
            .map_err(|_| BenchError(format!("{what}: the request stream closed")))?;
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, client.process(ReceiverStream::new(rx)))
            .await
            .map_err(|_| BenchError(format!("{what}: no answer within {ANSWER_TIMEOUT:?}")))?
            .map_err(|s| status_error(&what, &s))?
            .into_inner();
        Ok(Box::new(GrpcQueueConsumer {
            tx,
            stream,
            buffered: VecDeque::new(),
            what,
        }))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Publishes with the generated request type, but sends it through [`RawCodec`]: a batch
/// published again and again is encoded once (the encoding of the last batch is kept), and
/// the answer's results are counted without being built. What goes over the wire is exactly
/// what the generated `MessagesClient::publish` sends.
struct GrpcPublisher {
    grpc: tonic::client::Grpc<Svc>,
    topic: String,
    /// (batch id, values) of `encoded`.
    cached: Option<(u64, usize)>,
    encoded: Bytes,
    buf: BytesMut,
}

impl GrpcPublisher {
    fn encode(&mut self, batch: &Batch, n: usize) -> Bytes {
        if self.cached == Some((batch.id(), n)) {
            return self.encoded.clone();
        }
        let request = v1::PublishRequest {
            topic: self.topic.clone(),
            messages: batch.values()[..n]
                .iter()
                .map(|v| v1::PublishMessage {
                    key: None,
                    value: v.clone(),
                    headers: batch.headers().iter().cloned().collect(),
                    partition: None,
                })
                .collect(),
            create_queue: false,
        };
        self.buf.reserve(request.encoded_len());
        // Cannot fail: the buffer has room for the whole message.
        let _ = request.encode(&mut self.buf);
        let encoded = self.buf.split().freeze();
        self.cached = Some((batch.id(), n));
        self.encoded = encoded.clone();
        encoded
    }
}

#[async_trait]
impl Publisher for GrpcPublisher {
    async fn publish(&mut self, batch: &Batch, n: usize) -> Result<usize> {
        let n = n.min(batch.len());
        let body = self.encode(batch, n);
        let what = || format!("publishing to {}", self.topic);
        self.grpc
            .ready()
            .await
            .map_err(|e| BenchError(format!("{}: connection not ready: {e}", what())))?;
        let mut request = Request::new(body);
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new("wharf.v1.Messages", "Publish"));
        let response = self
            .grpc
            .unary(
                request,
                PathAndQuery::from_static("/wharf.v1.Messages/Publish"),
                RawCodec::<CountResults>::default(),
            )
            .await
            .map_err(|s| status_error(&what(), &s))?;
        Ok(response.into_inner())
    }
}

/// A codec that sends protobuf bytes encoded by the caller and decodes answers with `D`.
#[derive(Debug)]
struct RawCodec<D>(PhantomData<D>);

impl<D> Default for RawCodec<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<D> Codec for RawCodec<D>
where
    D: Decoder<Error = Status> + Default + Send + 'static,
    D::Item: Send + 'static,
{
    type Encode = Bytes;
    type Decode = D::Item;
    type Encoder = RawEncoder;
    type Decoder = D;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> D {
        D::default()
    }
}

/// Copies already encoded protobuf bytes into the frame.
#[derive(Debug)]
struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> std::result::Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

/// Decodes a `PublishResponse` into how many results it holds (field 1, repeated), checking
/// the wire format but building nothing.
#[derive(Debug, Default)]
struct CountResults;

impl Decoder for CountResults {
    type Item = usize;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> std::result::Result<Option<usize>, Status> {
        let bad = |e: &dyn std::fmt::Display| Status::internal(format!("bad PublishResponse: {e}"));
        let mut results = 0;
        while buf.has_remaining() {
            let key = decode_varint(buf).map_err(|e| bad(&e))?;
            match key & 7 {
                0 => {
                    decode_varint(buf).map_err(|e| bad(&e))?;
                }
                1 | 5 => {
                    let len = if key & 7 == 1 { 8 } else { 4 };
                    if buf.remaining() < len {
                        return Err(bad(&"truncated"));
                    }
                    buf.advance(len);
                }
                2 => {
                    let len = decode_varint(buf).map_err(|e| bad(&e))?;
                    let len = usize::try_from(len).map_err(|e| bad(&e))?;
                    if buf.remaining() < len {
                        return Err(bad(&"truncated"));
                    }
                    buf.advance(len);
                    if key >> 3 == 1 {
                        results += 1;
                    }
                }
                w => return Err(bad(&format!("wire type {w}"))),
            }
        }
        Ok(Some(results))
    }
}

struct GrpcSubscriber {
    stream: Streaming<v1::ConsumeResponse>,
    what: String,
}

#[async_trait]
impl Subscriber for GrpcSubscriber {
    async fn next_batch(&mut self, out: &mut Vec<Bytes>, timeout: Duration) -> Result<usize> {
        out.clear();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Err(_) => return Ok(0),
                Ok(Err(s)) => return Err(status_error(&self.what, &s)),
                Ok(Ok(None)) => {
                    return Err(BenchError(format!(
                        "{}: the server ended the stream",
                        self.what
                    )));
                }
                Ok(Ok(Some(v1::ConsumeResponse { event }))) => match event {
                    Some(v1::consume_response::Event::Messages(batch)) => {
                        out.extend(batch.messages.into_iter().map(|m| m.value));
                        return Ok(out.len());
                    }
                    // A rebalance: this run has one member, so it keeps every partition.
                    Some(v1::consume_response::Event::Assignment(_)) | None => {}
                },
            }
        }
    }

    async fn close(self: Box<Self>) -> Result<()> {
        // Dropping the stream ends the call; the server leaves the group for this member.
        Ok(())
    }
}

struct GrpcQueueConsumer {
    tx: mpsc::Sender<v1::ProcessRequest>,
    stream: Streaming<v1::ProcessResponse>,
    /// Deliveries that arrived while an ack waited for its confirmation.
    buffered: VecDeque<v1::Delivery>,
    what: String,
}

impl GrpcQueueConsumer {
    fn take(values: &mut Vec<Bytes>, acks: &mut Vec<AckHandle>, d: v1::Delivery) {
        values.push(d.message.map(|m| m.value).unwrap_or_default());
        acks.push(AckHandle::Text(d.ack_id));
    }
}

#[async_trait]
impl QueueConsumer for GrpcQueueConsumer {
    async fn receive(
        &mut self,
        values: &mut Vec<Bytes>,
        acks: &mut Vec<AckHandle>,
        timeout: Duration,
    ) -> Result<usize> {
        values.clear();
        acks.clear();
        if !self.buffered.is_empty() {
            for d in self.buffered.drain(..) {
                Self::take(values, acks, d);
            }
            return Ok(values.len());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Err(_) => return Ok(0),
                Ok(Err(s)) => return Err(status_error(&self.what, &s)),
                Ok(Ok(None)) => {
                    return Err(BenchError(format!(
                        "{}: the server ended the stream",
                        self.what
                    )));
                }
                Ok(Ok(Some(v1::ProcessResponse { response }))) => match response {
                    Some(v1::process_response::Response::Deliveries(r)) => {
                        for d in r.deliveries {
                            Self::take(values, acks, d);
                        }
                        return Ok(values.len());
                    }
                    Some(v1::process_response::Response::Settled(_)) => {
                        return Err(BenchError(format!(
                            "{}: a settle confirmation nobody waited for",
                            self.what
                        )));
                    }
                    None => {}
                },
            }
        }
    }

    async fn ack(&mut self, acks: &[AckHandle]) -> Result<usize> {
        let mut ids = Vec::with_capacity(acks.len());
        for a in acks {
            match a {
                AckHandle::Text(id) => ids.push(id.clone()),
                AckHandle::Number(n) => {
                    return Err(BenchError(format!("ack handle {n} is not Wharf's")));
                }
            }
        }
        let settle = v1::ProcessRequest {
            request: Some(v1::process_request::Request::Settle(v1::Settle {
                action: v1::SettleAction::Ack as i32,
                ack_ids: ids,
                ..v1::Settle::default()
            })),
        };
        self.tx
            .send(settle)
            .await
            .map_err(|_| BenchError(format!("{}: the request stream closed", self.what)))?;
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Err(_) => {
                    return Err(BenchError(format!(
                        "{}: no ack confirmation within {ANSWER_TIMEOUT:?}",
                        self.what
                    )));
                }
                Ok(Err(s)) => return Err(status_error(&self.what, &s)),
                Ok(Ok(None)) => {
                    return Err(BenchError(format!(
                        "{}: the server ended the stream",
                        self.what
                    )));
                }
                Ok(Ok(Some(v1::ProcessResponse { response }))) => match response {
                    Some(v1::process_response::Response::Settled(s)) => {
                        return Ok(s.outcomes.iter().filter(|o| o.error.is_none()).count());
                    }
                    Some(v1::process_response::Response::Deliveries(r)) => {
                        self.buffered.extend(r.deliveries);
                    }
                    None => {}
                },
            }
        }
    }

    async fn close(self: Box<Self>) -> Result<()> {
        // Ending the request stream ends the call; the server gives back what is unsettled.
        drop(self.tx);
        Ok(())
    }
}
