//! [`Client`] and [`ClientBuilder`]: one HTTP/2 channel to a Wharf server, shared by every
//! service, with the admin and data calls as plain async methods.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};
use crate::proto;
use crate::proto::messages_client::MessagesClient;
use crate::proto::operations_client::OperationsClient;
use crate::proto::shared_consumer_client::SharedConsumerClient;
use crate::proto::stream_consumer_client::StreamConsumerClient;
use crate::proto::subscriptions_client::SubscriptionsClient;
use crate::proto::topics_client::TopicsClient;
use crate::publisher::{Publisher, PublisherOptions};
use crate::queue::{Delivery, QueueConsumer, QueueConsumerOptions, SettleKind};
use crate::stream::{StreamConsumer, StreamConsumerOptions};
use crate::types::{
    FetchOptions, Message, PublishResult, ReadOptions, ReadResult, ReceiveOptions, Record, ResetTo,
    SharedConfig, SubscriptionConfig, TopicConfig, committed, millis,
};

/// The largest response message the client accepts (a read or fetch of many big messages).
pub(crate) const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

/// The server address of `wharf serve` with its defaults.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7400";

/// Adds `authorization: Bearer <token>` to every call (when a token is set).
#[derive(Clone, Default)]
pub struct AuthInterceptor {
    header: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for AuthInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthInterceptor")
            .field("token", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// The transport every generated service client of a [`Client`] runs on: the shared channel
/// with the [`AuthInterceptor`].
pub type GrpcChannel = InterceptedService<Channel, AuthInterceptor>;

/// Builds a [`Client`]: URL, bearer token, TLS, timeouts and HTTP/2 keep-alive.
///
/// ```no_run
/// # async fn demo() -> Result<(), wharf_client::Error> {
/// use std::time::Duration;
/// use wharf_client::Client;
///
/// let client = Client::builder("https://wharf.example.com:7400")
///     .token("s3cret-token-of-16+chars")
///     .ca_certificate_pem(std::fs::read("ca.pem").unwrap_or_default())
///     .connect_timeout(Duration::from_secs(5))
///     .request_timeout(Some(Duration::from_secs(10)))
///     .connect()
///     .await?;
/// # let _ = client;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    token: Option<String>,
    ca_pem: Vec<Vec<u8>>,
    tls_domain: Option<String>,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    keepalive_interval: Option<Duration>,
    keepalive_timeout: Duration,
    keepalive_while_idle: bool,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_certificates", &self.ca_pem.len())
            .field("tls_domain", &self.tls_domain)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("keepalive_while_idle", &self.keepalive_while_idle)
            .finish()
    }
}

impl ClientBuilder {
    /// A builder for the server at `url` (`http://host:port`, or `https://` for TLS) with the
    /// defaults: no token, 10 s connect timeout, 30 s request timeout, HTTP/2 pings every
    /// 30 s while calls are open (20 s to answer).
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            token: None,
            ca_pem: Vec::new(),
            tls_domain: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(30)),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(20),
            keepalive_while_idle: false,
        }
    }

    /// Sends `authorization: Bearer <token>` with every call.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts this CA (PEM) in addition to the system's roots (`https://` URLs only). May be
    /// called more than once.
    #[must_use]
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem.push(pem.into());
        self
    }

    /// Verifies the server's certificate for this name instead of the URL's host.
    #[must_use]
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }

    /// How long opening a connection may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a unary call may take (a long-poll's wait is added); `None` = no limit.
    /// Streaming calls use it for opening the stream only.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// HTTP/2 keep-alive: send a PING every `interval` (`None` = never) and drop the
    /// connection if it is not answered within `timeout`.
    #[must_use]
    pub fn http2_keepalive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// Whether keep-alive PINGs are also sent while no call is open (default false).
    #[must_use]
    pub fn keepalive_while_idle(mut self, enabled: bool) -> Self {
        self.keepalive_while_idle = enabled;
        self
    }

    fn endpoint(&self) -> Result<(Endpoint, Option<MetadataValue<Ascii>>)> {
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| Error::invalid(format!("bad server URL {:?}: {e}", self.url)))?
            .user_agent(concat!("wharf-client/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| Error::invalid(format!("user agent: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(self.keepalive_while_idle);
        if let Some(interval) = self.keepalive_interval {
            endpoint = endpoint.http2_keep_alive_interval(interval);
        }
        let https = endpoint.uri().scheme_str() == Some("https");
        if https {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            for pem in &self.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(Error::from)?;
        } else if !self.ca_pem.is_empty() || self.tls_domain.is_some() {
            return Err(Error::invalid(format!(
                "TLS options need an https:// URL, not {:?}",
                self.url
            )));
        }
        let header = match &self.token {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| Error::invalid("the token is not printable ASCII"))?,
            ),
            None => None,
        };
        Ok((endpoint, header))
    }

    fn client(&self, channel: Channel, header: Option<MetadataValue<Ascii>>) -> Client {
        Client {
            inner: Arc::new(Inner {
                url: self.url.clone(),
                channel,
                auth: AuthInterceptor { header },
                request_timeout: self.request_timeout,
            }),
        }
    }

    /// Connects now: fails if the server cannot be reached. (Later calls reconnect on their
    /// own if the connection breaks.)
    pub async fn connect(self) -> Result<Client> {
        let (endpoint, header) = self.endpoint()?;
        let channel = endpoint.connect().await?;
        Ok(self.client(channel, header))
    }

    /// A client that connects on its first call. Fails only for bad options.
    pub fn connect_lazy(self) -> Result<Client> {
        let (endpoint, header) = self.endpoint()?;
        let channel = endpoint.connect_lazy();
        Ok(self.client(channel, header))
    }
}

struct Inner {
    url: String,
    channel: Channel,
    auth: AuthInterceptor,
    request_timeout: Option<Duration>,
}

/// A connection to a Wharf server: admin calls, publish and read, consumer groups and
/// queues. Cheap to clone; every clone shares one HTTP/2 channel.
///
/// ```no_run
/// # async fn demo() -> Result<(), wharf_client::Error> {
/// use wharf_client::{Client, Message, ReadOptions, TopicConfig};
///
/// let client = Client::connect("http://127.0.0.1:7400").await?;
/// client.create_topic("orders", TopicConfig::with_partitions(2)).await?;
/// let results = client
///     .publish("orders", [Message::new("order 1").key("customer-7")])
///     .await?;
/// let read = client
///     .read("orders", results[0].partition, ReadOptions::default())
///     .await?;
/// for record in read.records {
///     println!("{}: {:?}", record.offset, record.value_str());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url)
            .field("auth", &self.inner.auth)
            .field("request_timeout", &self.inner.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` with the defaults (see [`ClientBuilder::new`]).
    pub async fn connect(url: impl Into<String>) -> Result<Client> {
        ClientBuilder::new(url).connect().await
    }

    /// A [`ClientBuilder`] for `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// The URL this client was built for.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The request timeout (see [`ClientBuilder::request_timeout`]).
    pub fn request_timeout(&self) -> Option<Duration> {
        self.inner.request_timeout
    }

    // ---- raw generated clients ------------------------------------------------------------

    /// The generated `Topics` client on this connection (for fields the helpers do not cover).
    pub fn topics_service(&self) -> TopicsClient<GrpcChannel> {
        TopicsClient::with_interceptor(self.inner.channel.clone(), self.inner.auth.clone())
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// The generated `Messages` client on this connection.
    pub fn messages_service(&self) -> MessagesClient<GrpcChannel> {
        MessagesClient::with_interceptor(self.inner.channel.clone(), self.inner.auth.clone())
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// The generated `Subscriptions` client on this connection.
    pub fn subscriptions_service(&self) -> SubscriptionsClient<GrpcChannel> {
        SubscriptionsClient::with_interceptor(self.inner.channel.clone(), self.inner.auth.clone())
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// The generated `StreamConsumer` client on this connection.
    pub fn stream_consumer_service(&self) -> StreamConsumerClient<GrpcChannel> {
        StreamConsumerClient::with_interceptor(self.inner.channel.clone(), self.inner.auth.clone())
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// The generated `SharedConsumer` client on this connection.
    pub fn shared_consumer_service(&self) -> SharedConsumerClient<GrpcChannel> {
        SharedConsumerClient::with_interceptor(self.inner.channel.clone(), self.inner.auth.clone())
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// The generated `Operations` client on this connection.
    pub fn operations_service(&self) -> OperationsClient<GrpcChannel> {
        OperationsClient::with_interceptor(self.inner.channel.clone(), self.inner.auth.clone())
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    // ---- call plumbing --------------------------------------------------------------------

    pub(crate) fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    pub(crate) fn auth(&self) -> AuthInterceptor {
        self.inner.auth.clone()
    }

    /// The limit for a call that may wait `extra` on the server (a long-poll).
    pub(crate) fn call_timeout(&self, extra: Duration) -> Option<Duration> {
        self.inner.request_timeout.map(|t| t.saturating_add(extra))
    }

    /// A request carrying `grpc-timeout` for the call's limit.
    pub(crate) fn request<T>(&self, msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    }

    /// Runs a call under `timeout`, mapping its status into [`Error`].
    pub(crate) async fn run<T>(
        timeout: Option<Duration>,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        let res = match timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .map_err(|_| Error::timeout(format!("no answer within {t:?}")))?,
            None => call.await,
        };
        res.map(tonic::Response::into_inner).map_err(Error::from)
    }

    // ---- topics ---------------------------------------------------------------------------

    /// Creates a topic; idempotent with the same settings (`AlreadyExists`, `topic_exists`,
    /// with others). Needs the admin scope.
    pub async fn create_topic(
        &self,
        name: impl Into<String>,
        config: TopicConfig,
    ) -> Result<proto::Topic> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::CreateTopicRequest {
            name: name.into(),
            config: Some(config.into()),
        };
        Self::run(t, self.topics_service().create_topic(self.request(req, t))).await
    }

    /// A topic's settings and partitions (`NotFound`, `topic_not_found`, if there is none).
    pub async fn get_topic(&self, name: impl Into<String>) -> Result<proto::Topic> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::GetTopicRequest { name: name.into() };
        Self::run(t, self.topics_service().get_topic(self.request(req, t))).await
    }

    /// Every topic the caller can see.
    pub async fn list_topics(&self) -> Result<Vec<proto::Topic>> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::ListTopicsRequest {};
        let resp = Self::run(t, self.topics_service().list_topics(self.request(req, t))).await?;
        Ok(resp.topics)
    }

    /// Deletes a topic with its messages and subscriptions.
    pub async fn delete_topic(&self, name: impl Into<String>) -> Result<()> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::DeleteTopicRequest { name: name.into() };
        Self::run(t, self.topics_service().delete_topic(self.request(req, t))).await?;
        Ok(())
    }

    /// Creates a queue: a topic and a shared subscription, both named `name`; idempotent.
    pub async fn create_queue(
        &self,
        name: impl Into<String>,
        topic: TopicConfig,
        shared: SharedConfig,
    ) -> Result<proto::Queue> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::CreateQueueRequest {
            name: name.into(),
            topic: Some(topic.into()),
            shared: Some(shared.into()),
        };
        Self::run(t, self.topics_service().create_queue(self.request(req, t))).await
    }

    // ---- messages -------------------------------------------------------------------------

    /// Publishes one batch now, in one call, and answers where each message landed (in
    /// order). No retry and no message ids are added: for throughput, retries and
    /// deduplication use a [`Publisher`].
    pub async fn publish<M: Into<Message>>(
        &self,
        topic: impl Into<String>,
        messages: impl IntoIterator<Item = M>,
    ) -> Result<Vec<PublishResult>> {
        self.publish_request(topic.into(), messages, false).await
    }

    /// Like [`publish`](Client::publish), but an unknown topic is first created as a queue
    /// (topic + shared subscription of the same name), like REST's queue send; needs only
    /// the publish scope.
    pub async fn send_to_queue<M: Into<Message>>(
        &self,
        queue: impl Into<String>,
        messages: impl IntoIterator<Item = M>,
    ) -> Result<Vec<PublishResult>> {
        self.publish_request(queue.into(), messages, true).await
    }

    async fn publish_request<M: Into<Message>>(
        &self,
        topic: String,
        messages: impl IntoIterator<Item = M>,
        create_queue: bool,
    ) -> Result<Vec<PublishResult>> {
        let req = proto::PublishRequest {
            topic,
            messages: messages
                .into_iter()
                .map(|m| m.into().into_proto())
                .collect(),
            create_queue,
        };
        self.publish_raw(req, self.call_timeout(Duration::ZERO))
            .await
    }

    /// One `Publish` call; checks there is one result per message.
    pub(crate) async fn publish_raw(
        &self,
        req: proto::PublishRequest,
        timeout: Option<Duration>,
    ) -> Result<Vec<PublishResult>> {
        let sent = req.messages.len();
        let resp = Self::run(
            timeout,
            self.messages_service().publish(self.request(req, timeout)),
        )
        .await?;
        if resp.results.len() != sent {
            return Err(Error::internal(format!(
                "the server answered {} results for {sent} messages",
                resp.results.len()
            )));
        }
        Ok(resp.results.into_iter().map(PublishResult::from).collect())
    }

    /// A [`Publisher`] to `topic`: batches, pipelines and retries. Must be called within a
    /// Tokio runtime (it spawns the batching task).
    pub fn publisher(&self, topic: impl Into<String>, options: PublisherOptions) -> Publisher {
        Publisher::new(self.clone(), topic.into(), options)
    }

    /// Reads a partition from a position (offset, time, earliest or latest), waiting up to
    /// `options.wait` if nothing is there yet.
    pub async fn read(
        &self,
        topic: impl Into<String>,
        partition: u32,
        options: ReadOptions,
    ) -> Result<ReadResult> {
        let wait = options.wait.unwrap_or_default();
        let t = self.call_timeout(wait);
        let req = proto::ReadRequest {
            topic: topic.into(),
            partition,
            from: Some(options.from.into()),
            max_messages: options.max_messages,
            max_bytes: options.max_bytes,
            wait_ms: options.wait.map(millis),
        };
        let resp = Self::run(t, self.messages_service().read(self.request(req, t))).await?;
        Ok(resp.into())
    }

    // ---- subscriptions --------------------------------------------------------------------

    /// Creates a subscription; idempotent with the same settings. Needs the admin scope.
    pub async fn create_subscription(
        &self,
        topic: impl Into<String>,
        name: impl Into<String>,
        config: SubscriptionConfig,
    ) -> Result<proto::Subscription> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::CreateSubscriptionRequest {
            topic: topic.into(),
            name: name.into(),
            config: Some(config.into()),
        };
        Self::run(
            t,
            self.subscriptions_service()
                .create_subscription(self.request(req, t)),
        )
        .await
    }

    /// A subscription's settings, positions, lag and members.
    pub async fn get_subscription(
        &self,
        topic: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<proto::Subscription> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::GetSubscriptionRequest {
            topic: topic.into(),
            name: name.into(),
        };
        Self::run(
            t,
            self.subscriptions_service()
                .get_subscription(self.request(req, t)),
        )
        .await
    }

    /// The subscriptions of a topic.
    pub async fn list_subscriptions(
        &self,
        topic: impl Into<String>,
    ) -> Result<Vec<proto::Subscription>> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::ListSubscriptionsRequest {
            topic: topic.into(),
        };
        let resp = Self::run(
            t,
            self.subscriptions_service()
                .list_subscriptions(self.request(req, t)),
        )
        .await?;
        Ok(resp.subscriptions)
    }

    /// Deletes a subscription.
    pub async fn delete_subscription(
        &self,
        topic: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<()> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::DeleteSubscriptionRequest {
            topic: topic.into(),
            name: name.into(),
        };
        Self::run(
            t,
            self.subscriptions_service()
                .delete_subscription(self.request(req, t)),
        )
        .await?;
        Ok(())
    }

    /// Moves a stream subscription's committed offsets (replay or skip); answers the
    /// committed offsets now in force. Needs the admin scope.
    pub async fn reset_subscription(
        &self,
        topic: impl Into<String>,
        name: impl Into<String>,
        to: ResetTo,
    ) -> Result<Vec<proto::Committed>> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::ResetSubscriptionRequest {
            topic: topic.into(),
            name: name.into(),
            to: Some(to.into()),
        };
        let resp = Self::run(
            t,
            self.subscriptions_service()
                .reset_subscription(self.request(req, t)),
        )
        .await?;
        Ok(resp.offsets)
    }

    /// Reads a shared subscription's dead letters (its topic `wharf.dlq.{topic}.{sub}`), from
    /// `offset` (default earliest), at most `max_messages`.
    pub async fn dead_letters(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        offset: Option<u64>,
        max_messages: Option<u32>,
    ) -> Result<ReadResult> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::ListDeadLettersRequest {
            topic: topic.into(),
            subscription: subscription.into(),
            offset,
            max_messages,
        };
        let resp = Self::run(
            t,
            self.subscriptions_service()
                .list_dead_letters(self.request(req, t)),
        )
        .await?;
        Ok(resp.into())
    }

    /// Puts up to `max` (server default and limit 100000) dead letters back into this subscription only;
    /// answers how many.
    pub async fn redrive(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        max: Option<u32>,
    ) -> Result<u64> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::RedriveRequest {
            topic: topic.into(),
            subscription: subscription.into(),
            max,
        };
        let resp = Self::run(
            t,
            self.subscriptions_service().redrive(self.request(req, t)),
        )
        .await?;
        Ok(resp.redriven)
    }

    // ---- stream subscriptions: members ----------------------------------------------------

    /// Joins a stream subscription as a new member (or rejoins as `member_id`); answers the
    /// member id and its partitions. For a managed member, see
    /// [`stream_consumer`](Client::stream_consumer).
    pub async fn join(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        member_id: Option<String>,
    ) -> Result<proto::Membership> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::JoinRequest {
            topic: topic.into(),
            subscription: subscription.into(),
            member_id,
        };
        Self::run(t, self.stream_consumer_service().join(self.request(req, t))).await
    }

    /// Keeps a member alive; answers its current assignment.
    pub async fn heartbeat(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        member_id: impl Into<String>,
    ) -> Result<proto::Membership> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::MemberRequest {
            topic: topic.into(),
            subscription: subscription.into(),
            member_id: member_id.into(),
        };
        Self::run(
            t,
            self.stream_consumer_service()
                .heartbeat(self.request(req, t)),
        )
        .await
    }

    /// Leaves the group (its partitions go to the other members).
    pub async fn leave(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        member_id: impl Into<String>,
    ) -> Result<()> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::MemberRequest {
            topic: topic.into(),
            subscription: subscription.into(),
            member_id: member_id.into(),
        };
        Self::run(
            t,
            self.stream_consumer_service().leave(self.request(req, t)),
        )
        .await?;
        Ok(())
    }

    /// Fetches the next messages of the member's partitions (after their committed offsets
    /// and what this member fetched before).
    pub async fn fetch(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        member_id: impl Into<String>,
        options: FetchOptions,
    ) -> Result<Vec<Record>> {
        let t = self.call_timeout(options.wait.unwrap_or_default());
        let req = proto::FetchRequest {
            topic: topic.into(),
            subscription: subscription.into(),
            member_id: member_id.into(),
            max_messages: options.max_messages,
            max_bytes: options.max_bytes,
            wait_ms: options.wait.map(millis),
        };
        let resp = Self::run(
            t,
            self.stream_consumer_service().fetch(self.request(req, t)),
        )
        .await?;
        Ok(resp.messages.into_iter().map(Record::from).collect())
    }

    /// Commits `(partition, next offset to consume)` pairs of partitions the member owns;
    /// durable when answered. Answers the committed offsets in force.
    pub async fn commit(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        member_id: impl Into<String>,
        offsets: &[(u32, u64)],
    ) -> Result<Vec<proto::Committed>> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::CommitRequest {
            topic: topic.into(),
            subscription: subscription.into(),
            member_id: member_id.into(),
            offsets: committed(offsets),
        };
        let resp = Self::run(
            t,
            self.stream_consumer_service().commit(self.request(req, t)),
        )
        .await?;
        Ok(resp.offsets)
    }

    /// A [`StreamConsumer`]: joins the group over the `Consume` stream and yields its
    /// messages. Answers once the first assignment arrived.
    pub async fn stream_consumer(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        options: StreamConsumerOptions,
    ) -> Result<StreamConsumer> {
        StreamConsumer::open(self.clone(), topic.into(), subscription.into(), options).await
    }

    // ---- shared subscriptions -------------------------------------------------------------

    /// Receives up to `options.max` deliveries under a lease (waiting up to `options.wait`).
    /// Settle each with [`Delivery::ack`] and friends (unary calls), or with
    /// [`ack`](Client::ack) by ack id.
    pub async fn receive(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        options: ReceiveOptions,
    ) -> Result<Vec<Delivery>> {
        let topic: Arc<str> = topic.into().into();
        let subscription: Arc<str> = subscription.into().into();
        let t = self.call_timeout(options.wait.unwrap_or_default());
        let req = proto::ReceiveRequest {
            topic: topic.to_string(),
            subscription: subscription.to_string(),
            member: options.member,
            max: options.max,
            lease_ms: options.lease.map(millis),
            wait_ms: options.wait.map(millis),
        };
        let resp = Self::run(
            t,
            self.shared_consumer_service().receive(self.request(req, t)),
        )
        .await?;
        resp.deliveries
            .into_iter()
            .map(|d| Delivery::unary(d, self.clone(), topic.clone(), subscription.clone()))
            .collect()
    }

    /// Acks deliveries by ack id: done, never delivered again. One outcome per id (its
    /// `error` is `lease_expired` or `bad_ack_id` if that one failed).
    pub async fn ack(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        ack_ids: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Vec<proto::AckOutcome>> {
        let ack_ids = ack_ids.into_iter().map(Into::into).collect();
        self.settle(topic.into(), subscription.into(), ack_ids, SettleKind::Ack)
            .await
    }

    /// Nacks deliveries: delivered again after `delay` (default: the subscription's
    /// backoff), or dead-lettered after the subscription's `max_deliveries`.
    pub async fn nack(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        ack_ids: impl IntoIterator<Item = impl Into<String>>,
        delay: Option<Duration>,
    ) -> Result<Vec<proto::AckOutcome>> {
        self.settle(
            topic.into(),
            subscription.into(),
            ack_ids.into_iter().map(Into::into).collect(),
            SettleKind::Nack(delay),
        )
        .await
    }

    /// Extends the leases of deliveries to `lease` from now.
    pub async fn extend(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        ack_ids: impl IntoIterator<Item = impl Into<String>>,
        lease: Duration,
    ) -> Result<Vec<proto::AckOutcome>> {
        self.settle(
            topic.into(),
            subscription.into(),
            ack_ids.into_iter().map(Into::into).collect(),
            SettleKind::Extend(lease),
        )
        .await
    }

    /// Terminates deliveries: straight to the dead-letter topic with this reason.
    pub async fn terminate(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        ack_ids: impl IntoIterator<Item = impl Into<String>>,
        reason: impl Into<String>,
    ) -> Result<Vec<proto::AckOutcome>> {
        self.settle(
            topic.into(),
            subscription.into(),
            ack_ids.into_iter().map(Into::into).collect(),
            SettleKind::Terminate(reason.into()),
        )
        .await
    }

    pub(crate) async fn settle(
        &self,
        topic: String,
        subscription: String,
        ack_ids: Vec<String>,
        kind: SettleKind,
    ) -> Result<Vec<proto::AckOutcome>> {
        let t = self.call_timeout(Duration::ZERO);
        let mut svc = self.shared_consumer_service();
        let resp = match kind {
            SettleKind::Ack => {
                let req = proto::AckRequest {
                    topic,
                    subscription,
                    ack_ids,
                };
                Self::run(t, svc.ack(self.request(req, t))).await?
            }
            SettleKind::Nack(delay) => {
                let req = proto::NackRequest {
                    topic,
                    subscription,
                    ack_ids,
                    delay_ms: delay.map(millis),
                };
                Self::run(t, svc.nack(self.request(req, t))).await?
            }
            SettleKind::Extend(lease) => {
                let req = proto::ExtendRequest {
                    topic,
                    subscription,
                    ack_ids,
                    lease_ms: millis(lease),
                };
                Self::run(t, svc.extend(self.request(req, t))).await?
            }
            SettleKind::Terminate(reason) => {
                let req = proto::TerminateRequest {
                    topic,
                    subscription,
                    ack_ids,
                    reason,
                };
                Self::run(t, svc.terminate(self.request(req, t))).await?
            }
        };
        Ok(resp.outcomes)
    }

    /// A [`QueueConsumer`]: deliveries of a shared subscription over one `Process` stream,
    /// settled on the same stream.
    pub async fn queue_consumer(
        &self,
        topic: impl Into<String>,
        subscription: impl Into<String>,
        options: QueueConsumerOptions,
    ) -> Result<QueueConsumer> {
        QueueConsumer::open(self.clone(), topic.into(), subscription.into(), options).await
    }

    // ---- operations -----------------------------------------------------------------------

    /// Every topic and subscription at a glance (needs the admin or metrics scope).
    pub async fn stats(&self) -> Result<proto::Stats> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::GetStatsRequest {};
        Self::run(t, self.operations_service().get_stats(self.request(req, t))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use tonic::service::Interceptor as _;

    #[test]
    fn the_interceptor_adds_the_bearer_token() {
        let (_, header) = ClientBuilder::new("http://127.0.0.1:1")
            .token("abc")
            .endpoint()
            .expect("endpoint");
        let mut auth = AuthInterceptor { header };
        let req = auth.call(tonic::Request::new(())).expect("ok");
        assert_eq!(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer abc")
        );
        let mut none = AuthInterceptor::default();
        let req = none.call(tonic::Request::new(())).expect("ok");
        assert!(req.metadata().get("authorization").is_none());
        assert!(
            !format!("{auth:?}").contains("abc"),
            "the token is redacted"
        );
    }

    #[test]
    fn bad_options_are_invalid_arguments() {
        let e = ClientBuilder::new("not a url").connect_lazy().err();
        assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
        let e = ClientBuilder::new("http://127.0.0.1:1")
            .tls_domain("x")
            .connect_lazy()
            .err();
        assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
        let e = ClientBuilder::new("http://127.0.0.1:1")
            .token("bad\ntoken")
            .connect_lazy()
            .err();
        assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
    }

    #[tokio::test]
    async fn lazy_clients_fail_calls_as_transport_errors() {
        // Port 1 on loopback: nothing listens (connection refused).
        let client = ClientBuilder::new("http://127.0.0.1:1")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy()
            .expect("lazy");
        let e = client.list_topics().await.expect_err("refused");
        assert!(e.is_retryable(), "{e:?}");
        let e = Client::connect("http://127.0.0.1:1")
            .await
            .expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::Transport, "{e:?}");
    }
}
