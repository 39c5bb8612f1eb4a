//! The gRPC API (`wharf.v1`) end to end: every RPC of every service through the generated
//! tonic clients against a real server (port 0, temporary data directory), with its answers
//! and its effects observed through other RPCs.
//!
//! - Topics: create (defaults, settings echoed, idempotent, `ALREADY_EXISTS` otherwise),
//!   get, list, delete, queues.
//! - Messages: publish (partitions, keys, bytes, dedup by `wharf-message-id`, `create_queue`),
//!   publish streams, reads by offset, edge and time, long-polls woken by a publish.
//! - Subscriptions: stream and shared settings, get, list, delete, reset, dead letters,
//!   redrive.
//! - StreamConsumer: join, heartbeat, fetch, commit, leave, and `Consume` (assignment first,
//!   then messages; `auto_commit`).
//! - SharedConsumer: receive, ack, nack, extend, terminate, `ReceiveStream` (flow control by
//!   `max_in_flight_per_member`), `Process` (bidi: start, deliveries, settle, `max_in_flight`).
//! - Operations: stats.
//! - Errors: gRPC code + `wharf-error-code` metadata + a `google.rpc.ErrorInfo` detail; auth
//!   (`UNAUTHENTICATED`, `PERMISSION_DENIED`); `traceparent` continued and stored.
//!
//! No sleeps synchronise anything: streams are read with generous timeouts, long-polls are
//! woken by concurrent publishes, and the few background effects (a closed stream leaving its
//! group, an auto-commit) are observed by polling `GetSubscription` within a deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use wharf_proto::v1::operations_client::OperationsClient;
use wharf_proto::v1::shared_consumer_client::SharedConsumerClient;
use wharf_proto::v1::stream_consumer_client::StreamConsumerClient;
use wharf_proto::v1::subscriptions_client::SubscriptionsClient;
use wharf_proto::v1::topics_client::TopicsClient;
use wharf_proto::v1::*;
use wharf_server::config::TokenConfig;
use wharf_test::TestServer;

/// Generous: the machine is a loaded 2-core box.
const TIMEOUT: Duration = Duration::from_secs(30);

// ---- harness --------------------------------------------------------------------------------

/// One client per service, over one HTTP/2 connection.
#[derive(Clone)]
struct Api {
    topics: TopicsClient<Channel>,
    messages: messages_client::MessagesClient<Channel>,
    subs: SubscriptionsClient<Channel>,
    stream: StreamConsumerClient<Channel>,
    shared: SharedConsumerClient<Channel>,
    ops: OperationsClient<Channel>,
}

async fn api(s: &TestServer) -> Api {
    let channel = Channel::from_shared(s.base.clone())
        .expect("endpoint")
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect()
        .await
        .expect("connect");
    Api {
        topics: TopicsClient::new(channel.clone()),
        messages: messages_client::MessagesClient::new(channel.clone()),
        subs: SubscriptionsClient::new(channel.clone()),
        stream: StreamConsumerClient::new(channel.clone()),
        shared: SharedConsumerClient::new(channel.clone()),
        ops: OperationsClient::new(channel),
    }
}

/// Awaits `f` for at most [`TIMEOUT`].
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The answer of a call that must succeed.
#[track_caller]
fn ok<T>(r: Result<Response<T>, Status>) -> T {
    match r {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("expected OK, got {s:?}"),
    }
}

/// The next message of a stream (which must not end or fail).
async fn next<T>(s: &mut Streaming<T>, what: &str) -> T {
    match within(what, s.message()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("{what}: the stream ended"),
        Err(e) => panic!("{what}: the stream failed: {e:?}"),
    }
}

/// The error of a streaming call that must fail: either the call itself or its first message.
async fn stream_error<T: Debug>(r: Result<Response<Streaming<T>>, Status>) -> Status {
    match r {
        Err(s) => s,
        Ok(resp) => {
            let mut st = resp.into_inner();
            match within("the stream's error", st.message()).await {
                Err(s) => s,
                Ok(m) => panic!("expected an error, got {m:?}"),
            }
        }
    }
}

/// `google.rpc.Status`, as carried in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(map = "string, string", tag = "3")]
    metadata: HashMap<String, String>,
}

/// The `wharf-error-code` of a status.
fn error_code(s: &Status) -> Option<&str> {
    s.metadata()
        .get(wharf_proto::ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
}

/// The `ErrorInfo` in a status's details.
fn error_info(s: &Status) -> Option<ErrorInfo> {
    let st = RpcStatus::decode(s.details()).ok()?;
    assert_eq!(
        st.code,
        s.code() as i32,
        "details disagree with the status: {s:?}"
    );
    st.details
        .iter()
        .find(|a| a.type_url == "type.googleapis.com/google.rpc.ErrorInfo")
        .map(|a| ErrorInfo::decode(a.value.as_slice()).expect("an ErrorInfo"))
}

/// Asserts a status: code, message, `wharf-error-code` and the `ErrorInfo` detail.
#[track_caller]
fn assert_status(s: &Status, code: Code, wharf_code: &str) {
    assert_eq!(s.code(), code, "expected {code:?} {wharf_code}, got {s:?}");
    assert_eq!(
        error_code(s),
        Some(wharf_code),
        "expected {code:?} {wharf_code}, got {s:?}"
    );
    assert!(!s.message().is_empty(), "no message: {s:?}");
    let info = error_info(s).unwrap_or_else(|| panic!("no ErrorInfo detail: {s:?}"));
    assert_eq!(info.reason, wharf_code, "{s:?}");
    assert_eq!(info.domain, wharf_proto::ERROR_DOMAIN, "{s:?}");
    assert!(
        s.metadata().get(wharf_proto::RETRY_AFTER_KEY).is_none(),
        "retry-after on a {code:?}: {s:?}"
    );
}

/// Asserts that a call failed with this code and stable code; answers the status.
#[track_caller]
fn err<T: Debug>(r: Result<Response<T>, Status>, code: Code, wharf_code: &str) -> Status {
    match r {
        Ok(r) => panic!("expected {code:?} {wharf_code}, got OK {:?}", r.get_ref()),
        Err(s) => {
            assert_status(&s, code, wharf_code);
            s
        }
    }
}

/// A request with a bearer token.
fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A message with this value.
fn msg(value: &str) -> PublishMessage {
    PublishMessage {
        value: bytes(value),
        ..PublishMessage::default()
    }
}

/// A message with this value for this partition.
fn msg_to(value: &str, partition: u32) -> PublishMessage {
    PublishMessage {
        partition: Some(partition),
        ..msg(value)
    }
}

/// A message with this value and headers.
fn msg_with(value: &str, headers: &[(&str, &str)]) -> PublishMessage {
    PublishMessage {
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..msg(value)
    }
}

fn publish_req(topic: &str, messages: Vec<PublishMessage>) -> PublishRequest {
    PublishRequest {
        topic: topic.into(),
        messages,
        create_queue: false,
    }
}

async fn publish(api: &mut Api, topic: &str, messages: Vec<PublishMessage>) -> Vec<PublishResult> {
    let n = messages.len();
    let r = ok(api.messages.publish(publish_req(topic, messages)).await);
    assert_eq!(r.results.len(), n, "one result per message: {r:?}");
    r.results
}

fn value(m: &Message) -> &str {
    std::str::from_utf8(&m.value).expect("a UTF-8 value")
}

fn values(ms: &[Message]) -> Vec<&str> {
    ms.iter().map(value).collect()
}

fn delivered(ds: &[Delivery]) -> Vec<&str> {
    ds.iter()
        .map(|d| value(d.message.as_ref().expect("a delivery carries its message")))
        .collect()
}

fn edge(e: Edge) -> Option<Position> {
    Some(Position {
        at: Some(position::At::Edge(e as i32)),
    })
}

fn at_offset(o: u64) -> Option<Position> {
    Some(Position {
        at: Some(position::At::Offset(o)),
    })
}

fn at_time(t: i64) -> Option<Position> {
    Some(Position {
        at: Some(position::At::TimestampMs(t)),
    })
}

fn read_req(topic: &str, partition: u32, from: Option<Position>) -> ReadRequest {
    ReadRequest {
        topic: topic.into(),
        partition,
        from,
        ..ReadRequest::default()
    }
}

async fn create_topic(api: &mut Api, name: &str, config: Option<TopicConfig>) -> Topic {
    ok(api
        .topics
        .create_topic(CreateTopicRequest {
            name: name.into(),
            config,
        })
        .await)
}

fn partitions(n: u32) -> Option<TopicConfig> {
    Some(TopicConfig {
        partitions: Some(n),
        ..TopicConfig::default()
    })
}

fn stream_sub(topic: &str, name: &str, config: StreamConfig) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        topic: topic.into(),
        name: name.into(),
        config: Some(create_subscription_request::Config::Stream(config)),
    }
}

fn shared_sub(topic: &str, name: &str, config: SharedConfig) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        topic: topic.into(),
        name: name.into(),
        config: Some(create_subscription_request::Config::Shared(config)),
    }
}

/// Shared settings without backoff (a nacked message is available again at once).
fn no_backoff() -> SharedConfig {
    SharedConfig {
        backoff_initial_ms: Some(0),
        backoff_max_ms: Some(0),
        ..SharedConfig::default()
    }
}

async fn get_sub(api: &mut Api, topic: &str, name: &str) -> Subscription {
    ok(api
        .subs
        .get_subscription(GetSubscriptionRequest {
            topic: topic.into(),
            name: name.into(),
        })
        .await)
}

/// Polls `GetSubscription` until `pred` holds (bounded by [`TIMEOUT`]), for effects that
/// happen in the background.
async fn wait_sub(
    api: &Api,
    topic: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&Subscription) -> bool,
) -> Subscription {
    let mut api = api.clone();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let s = get_sub(&mut api, topic, name).await;
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last answer {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn committed(s: &Subscription) -> Vec<(u64, u64)> {
    s.partitions.iter().map(|p| (p.committed, p.lag)).collect()
}

fn offsets(pairs: &[(u32, u64)]) -> Vec<Committed> {
    pairs
        .iter()
        .map(|&(partition, offset)| Committed { partition, offset })
        .collect()
}

fn receive_req(topic: &str, sub: &str) -> ReceiveRequest {
    ReceiveRequest {
        topic: topic.into(),
        subscription: sub.into(),
        ..ReceiveRequest::default()
    }
}

async fn receive(api: &mut Api, topic: &str, sub: &str, max: u32) -> Vec<Delivery> {
    ok(api
        .shared
        .receive(ReceiveRequest {
            max: Some(max),
            ..receive_req(topic, sub)
        })
        .await)
    .deliveries
}

fn ack_req(topic: &str, sub: &str, ids: &[&str]) -> AckRequest {
    AckRequest {
        topic: topic.into(),
        subscription: sub.into(),
        ack_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Outcomes as `(ack_id, error)`.
fn outcomes(r: &[AckOutcome]) -> Vec<(&str, Option<&str>)> {
    r.iter()
        .map(|o| (o.ack_id.as_str(), o.error.as_deref()))
        .collect()
}

/// Checks a W3C `traceparent` (version 00, lowercase hex, non-zero ids); answers trace id
/// and span id.
#[track_caller]
fn traceparent(s: &str) -> (String, String) {
    let parts: Vec<&str> = s.split('-').collect();
    assert_eq!(parts.len(), 4, "{s}");
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert_eq!(parts[0], "00", "{s}");
    assert!(hex(parts[1], 32) && parts[1] != "0".repeat(32), "{s}");
    assert!(hex(parts[2], 16) && parts[2] != "0".repeat(16), "{s}");
    assert!(hex(parts[3], 2), "{s}");
    (parts[1].to_owned(), parts[2].to_owned())
}

// ---- topics ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_get_list_delete() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;

    // No settings: the defaults, set in the answer.
    let t = create_topic(&mut api, "orders", None).await;
    assert_eq!(t.name, "orders");
    let c = t.config.expect("config");
    assert_eq!(c.partitions, Some(1));
    assert_eq!(c.durability(), Durability::Always);
    assert_eq!(c.dedup_window_ms, Some(120_000));
    assert_eq!(c.max_message_bytes, Some(1_048_576));
    assert_eq!(c.segment_bytes, Some(134_217_728));
    assert_eq!(
        t.partitions,
        [PartitionInfo {
            partition: 0,
            start_offset: 0,
            high_watermark: 0
        }]
    );
    // The same settings, given explicitly: idempotent.
    let again = create_topic(
        &mut api,
        "orders",
        Some(TopicConfig {
            partitions: Some(1),
            durability: Durability::Always as i32,
            ..TopicConfig::default()
        }),
    )
    .await;
    assert_eq!(again, t);
    // Other settings: ALREADY_EXISTS.
    err(
        api.topics
            .create_topic(CreateTopicRequest {
                name: "orders".into(),
                config: partitions(2),
            })
            .await,
        Code::AlreadyExists,
        "topic_exists",
    );

    // Every setting is echoed back.
    let settings = TopicConfig {
        partitions: Some(3),
        durability: Durability::Interval as i32,
        durability_interval_ms: Some(50),
        retention_ms: Some(3_600_000),
        retention_bytes: Some(10_485_760),
        dedup_window_ms: Some(5000),
        max_message_bytes: Some(65_536),
        segment_bytes: Some(1_048_576),
    };
    let cpu = create_topic(&mut api, "metrics.cpu", Some(settings)).await;
    assert_eq!(cpu.name, "metrics.cpu");
    assert_eq!(cpu.config, Some(settings));
    assert_eq!(
        cpu.partitions,
        (0..3)
            .map(|p| PartitionInfo {
                partition: p,
                start_offset: 0,
                high_watermark: 0
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        create_topic(&mut api, "metrics.cpu", Some(settings)).await,
        cpu
    );

    // Bad names: INVALID_ARGUMENT invalid_name.
    for bad in [
        "Orders",
        "-x",
        "a b",
        "a/b",
        "wharf.mine",
        "",
        &"x".repeat(101),
    ] {
        err(
            api.topics
                .create_topic(CreateTopicRequest {
                    name: bad.into(),
                    config: None,
                })
                .await,
            Code::InvalidArgument,
            "invalid_name",
        );
    }
    // Bad settings: INVALID_ARGUMENT invalid_argument, and nothing created.
    for bad in [
        TopicConfig {
            partitions: Some(0),
            ..TopicConfig::default()
        },
        TopicConfig {
            partitions: Some(1025),
            ..TopicConfig::default()
        },
        TopicConfig {
            durability: Durability::Interval as i32,
            durability_interval_ms: Some(0),
            ..TopicConfig::default()
        },
        TopicConfig {
            segment_bytes: Some(1),
            ..TopicConfig::default()
        },
        TopicConfig {
            retention_ms: Some(0),
            ..TopicConfig::default()
        },
        // An enum value this version does not know.
        TopicConfig {
            durability: 7,
            ..TopicConfig::default()
        },
    ] {
        let got = api
            .topics
            .create_topic(CreateTopicRequest {
                name: "bad-settings".into(),
                config: Some(bad),
            })
            .await;
        assert!(
            got.is_err(),
            "{bad:?} was accepted: {:?}",
            got.map(Response::into_inner)
        );
        err(got, Code::InvalidArgument, "invalid_argument");
    }
    // Over the server's message size limit.
    err(
        api.topics
            .create_topic(CreateTopicRequest {
                name: "bad-settings".into(),
                config: Some(TopicConfig {
                    max_message_bytes: Some(2 * 1_048_576),
                    ..TopicConfig::default()
                }),
            })
            .await,
        Code::InvalidArgument,
        "limit_exceeded",
    );
    err(
        api.topics
            .get_topic(GetTopicRequest {
                name: "bad-settings".into(),
            })
            .await,
        Code::NotFound,
        "topic_not_found",
    );

    // Get one.
    let got = ok(api
        .topics
        .get_topic(GetTopicRequest {
            name: "orders".into(),
        })
        .await);
    assert_eq!(got, t);
    err(
        api.topics
            .get_topic(GetTopicRequest {
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        "topic_not_found",
    );

    // A shared subscription brings its dead-letter topic; the list is by name.
    ok(api
        .subs
        .create_subscription(shared_sub("orders", "billing", SharedConfig::default()))
        .await);
    let list = ok(api.topics.list_topics(ListTopicsRequest {}).await);
    let names: Vec<&str> = list.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["metrics.cpu", "orders", "wharf.dlq.orders.billing"]);
    assert_eq!(list.topics[1], t);

    // Dead-letter topics are Wharf's: not deleted nor written directly.
    err(
        api.topics
            .delete_topic(DeleteTopicRequest {
                name: "wharf.dlq.orders.billing".into(),
            })
            .await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    err(
        api.messages
            .publish(publish_req("wharf.dlq.orders.billing", vec![msg("x")]))
            .await,
        Code::InvalidArgument,
        "invalid_argument",
    );

    // Delete: gone, with its subscriptions and their dead-letter topics.
    let _: DeleteTopicResponse = ok(api
        .topics
        .delete_topic(DeleteTopicRequest {
            name: "orders".into(),
        })
        .await);
    err(
        api.topics
            .get_topic(GetTopicRequest {
                name: "orders".into(),
            })
            .await,
        Code::NotFound,
        "topic_not_found",
    );
    err(
        api.subs
            .get_subscription(GetSubscriptionRequest {
                topic: "orders".into(),
                name: "billing".into(),
            })
            .await,
        Code::NotFound,
        "topic_not_found",
    );
    err(
        api.topics
            .delete_topic(DeleteTopicRequest {
                name: "orders".into(),
            })
            .await,
        Code::NotFound,
        "topic_not_found",
    );
    let list = ok(api.topics.list_topics(ListTopicsRequest {}).await);
    let names: Vec<&str> = list.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["metrics.cpu"]);

    // Recreated with other settings after the delete: a new topic.
    let t = create_topic(&mut api, "orders", partitions(2)).await;
    assert_eq!(t.partitions.len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_create_publish_receive_ack() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    let req = CreateQueueRequest {
        name: "jobs".into(),
        topic: None,
        shared: Some(SharedConfig {
            max_deliveries: Some(2),
            ..no_backoff()
        }),
    };
    let q = ok(api.topics.create_queue(req.clone()).await);
    let topic = q.topic.clone().expect("topic");
    assert_eq!(topic.name, "jobs");
    assert_eq!(topic.config.as_ref().and_then(|c| c.partitions), Some(1));
    let sub = q.subscription.clone().expect("subscription");
    assert_eq!((sub.topic.as_str(), sub.name.as_str()), ("jobs", "jobs"));
    let Some(subscription::Config::Shared(shared)) = &sub.config else {
        panic!("a queue's subscription is shared: {sub:?}");
    };
    assert_eq!(shared.max_deliveries, Some(2));
    assert_eq!(shared.backoff_initial_ms, Some(0));
    assert_eq!(shared.backoff_max_ms, Some(0));
    assert_eq!(shared.backoff_jitter_pct, Some(20));
    assert_eq!(shared.lease_ms, Some(30_000));
    // Idempotent; other settings conflict; bad settings change nothing.
    assert_eq!(ok(api.topics.create_queue(req.clone()).await), q);
    err(
        api.topics
            .create_queue(CreateQueueRequest {
                shared: Some(SharedConfig {
                    max_deliveries: Some(3),
                    ..no_backoff()
                }),
                ..req.clone()
            })
            .await,
        Code::AlreadyExists,
        "subscription_exists",
    );
    err(
        api.topics
            .create_queue(CreateQueueRequest {
                topic: partitions(2),
                ..req.clone()
            })
            .await,
        Code::AlreadyExists,
        "topic_exists",
    );
    err(
        api.topics
            .create_queue(CreateQueueRequest {
                name: "fresh".into(),
                topic: None,
                shared: Some(SharedConfig {
                    max_deliveries: Some(0),
                    ..SharedConfig::default()
                }),
            })
            .await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    err(
        api.topics
            .get_topic(GetTopicRequest {
                name: "fresh".into(),
            })
            .await,
        Code::NotFound,
        "topic_not_found",
    );
    err(
        api.topics
            .create_queue(CreateQueueRequest {
                name: "Jobs".into(),
                ..req.clone()
            })
            .await,
        Code::InvalidArgument,
        "invalid_name",
    );
    assert_eq!(get_sub(&mut api, "jobs", "jobs").await, sub);

    // Send, receive, ack.
    let r = publish(&mut api, "jobs", vec![msg("j1")]).await;
    assert_eq!((r[0].partition, r[0].offset), (0, 0));
    let ds = receive(&mut api, "jobs", "jobs", 5).await;
    assert_eq!(delivered(&ds), ["j1"]);
    let acked = ok(api
        .shared
        .ack(ack_req("jobs", "jobs", &[&ds[0].ack_id]))
        .await);
    assert_eq!(outcomes(&acked.outcomes), [(ds[0].ack_id.as_str(), None)]);
    let sub = get_sub(&mut api, "jobs", "jobs").await;
    assert_eq!(committed(&sub), [(1, 0)]);
    assert_eq!(sub.in_flight, 0);

    // Publishing with create_queue creates an unknown queue first (defaults).
    let r = ok(api
        .messages
        .publish(PublishRequest {
            topic: "mails".into(),
            messages: vec![msg("m1")],
            create_queue: true,
        })
        .await);
    assert_eq!(r.results.len(), 1);
    let mails = get_sub(&mut api, "mails", "mails").await;
    assert!(
        matches!(mails.config, Some(subscription::Config::Shared(_))),
        "{mails:?}"
    );
    assert_eq!(
        delivered(&receive(&mut api, "mails", "mails", 5).await),
        ["m1"]
    );
    // Without it, an unknown topic is NOT_FOUND.
    err(
        api.messages
            .publish(publish_req("mails2", vec![msg("m1")]))
            .await,
        Code::NotFound,
        "topic_not_found",
    );
    s.stop().await;
}

// ---- messages -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_partitions_keys_bytes_and_errors() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "bin", partitions(2)).await;

    // Explicit partitions; offsets per partition.
    let r = publish(
        &mut api,
        "bin",
        vec![msg_to("a", 0), msg_to("b", 1), msg_to("c", 0)],
    )
    .await;
    let placed: Vec<(u32, u64)> = r.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(placed, [(0, 0), (1, 0), (0, 1)]);
    assert!(
        r.iter().all(|r| !r.duplicate && r.timestamp_ms > 0),
        "{r:?}"
    );
    // A key picks the partition: the same key, the same partition.
    let keyed: Vec<PublishMessage> = (0..4)
        .map(|i| PublishMessage {
            key: Some(bytes("customer-7")),
            ..msg(&format!("k{i}"))
        })
        .collect();
    let r = publish(&mut api, "bin", keyed).await;
    assert!(r.iter().all(|x| x.partition == r[0].partition), "{r:?}");
    // Bytes are bytes: a non-UTF-8 key and value come back unchanged, headers too.
    let raw = PublishMessage {
        key: Some(Bytes::from_static(&[0xff, 0x00, 0xfe])),
        value: Bytes::from_static(&[0x80, 0x81, 0x00, 0xff]),
        headers: HashMap::from([("h1".to_owned(), "v1".to_owned())]),
        partition: Some(1),
    };
    let r = publish(&mut api, "bin", vec![raw.clone()]).await;
    assert_eq!(r[0].partition, 1);
    let read = ok(api
        .messages
        .read(read_req("bin", 1, at_offset(r[0].offset)))
        .await);
    let m = &read.messages[0];
    assert_eq!((m.partition, m.offset), (1, r[0].offset));
    assert_eq!(m.key, raw.key);
    assert_eq!(m.value, raw.value);
    assert_eq!(m.headers.get("h1").map(String::as_str), Some("v1"));
    assert_eq!(m.timestamp_ms, r[0].timestamp_ms);

    // Bad batches: nothing stored.
    let before = ok(api
        .topics
        .get_topic(GetTopicRequest { name: "bin".into() })
        .await);
    err(
        api.messages.publish(publish_req("bin", vec![])).await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    err(
        api.messages
            .publish(publish_req("bin", vec![msg("ok"), msg_to("x", 2)]))
            .await,
        Code::NotFound,
        "partition_not_found",
    );
    err(
        api.messages
            .publish(publish_req(
                "bin",
                vec![msg_with("x", &[("", "empty name")])],
            ))
            .await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    err(
        api.messages
            .publish(publish_req(
                "bin",
                vec![msg_with("x", &[("wharf-deliver-at", "tomorrow")])],
            ))
            .await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    err(
        api.messages
            .publish(publish_req(
                "bin",
                vec![PublishMessage {
                    value: Bytes::from(vec![b'x'; 1_048_577]),
                    ..PublishMessage::default()
                }],
            ))
            .await,
        Code::InvalidArgument,
        "message_too_large",
    );
    let many: Vec<PublishMessage> = (0..1001).map(|_| msg("x")).collect();
    err(
        api.messages.publish(publish_req("bin", many)).await,
        Code::InvalidArgument,
        "limit_exceeded",
    );
    err(
        api.messages
            .publish(publish_req("nope", vec![msg("x")]))
            .await,
        Code::NotFound,
        "topic_not_found",
    );
    err(
        api.messages
            .publish(PublishRequest {
                topic: "No".into(),
                messages: vec![msg("x")],
                create_queue: true,
            })
            .await,
        Code::InvalidArgument,
        "invalid_name",
    );
    let after = ok(api
        .topics
        .get_topic(GetTopicRequest { name: "bin".into() })
        .await);
    assert_eq!(after.partitions, before.partitions);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_dedups_by_message_id() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "pay", partitions(2)).await;
    let charge = || PublishMessage {
        key: Some(bytes("c1")),
        ..msg_with("charge", &[("wharf-message-id", "pay-1")])
    };
    let first = publish(&mut api, "pay", vec![charge()]).await.remove(0);
    assert!(!first.duplicate);
    // Something else in between.
    publish(
        &mut api,
        "pay",
        vec![PublishMessage {
            key: Some(bytes("c1")),
            ..msg("other")
        }],
    )
    .await;
    // The retry: duplicate, the original's partition, offset and time, nothing stored.
    let again = publish(&mut api, "pay", vec![charge()]).await.remove(0);
    assert!(again.duplicate, "{again:?}");
    assert_eq!(
        (again.partition, again.offset, again.timestamp_ms),
        (first.partition, first.offset, first.timestamp_ms)
    );
    // In a batch too, and twice in one batch.
    let new = || PublishMessage {
        key: Some(bytes("c1")),
        ..msg_with("new", &[("wharf-message-id", "pay-2")])
    };
    let b = publish(&mut api, "pay", vec![charge(), new(), new()]).await;
    let dups: Vec<bool> = b.iter().map(|r| r.duplicate).collect();
    assert_eq!(dups, [true, false, true]);
    assert_eq!(b[0].offset, first.offset);
    assert_eq!((b[2].partition, b[2].offset), (b[1].partition, b[1].offset));
    let read = ok(api
        .messages
        .read(read_req("pay", first.partition, None))
        .await);
    assert_eq!(values(&read.messages), ["charge", "other", "new"]);
    assert_eq!(
        read.messages[0]
            .headers
            .get("wharf-message-id")
            .map(String::as_str),
        Some("pay-1")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stream_answers_every_batch_in_order() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "ps", None).await;
    let batches = vec![
        publish_req("ps", vec![msg("s0"), msg("s1")]),
        publish_req("ps", vec![msg("s2")]),
        publish_req(
            "ps",
            vec![
                msg("s3"),
                msg_with("s4", &[("wharf-message-id", "once")]),
                msg_with("s4", &[("wharf-message-id", "once")]),
            ],
        ),
    ];
    let r = ok(api
        .messages
        .publish_stream(tokio_stream::iter(batches))
        .await);
    let got: Vec<Vec<(u64, bool)>> = r
        .responses
        .iter()
        .map(|b| b.results.iter().map(|x| (x.offset, x.duplicate)).collect())
        .collect();
    assert_eq!(
        got,
        [
            vec![(0, false), (1, false)],
            vec![(2, false)],
            vec![(3, false), (4, false), (4, true)]
        ]
    );
    let read = ok(api.messages.read(read_req("ps", 0, None)).await);
    assert_eq!(values(&read.messages), ["s0", "s1", "s2", "s3", "s4"]);

    // Batches are sent while the stream is open: one at a time over a channel.
    let (tx, rx) = mpsc::channel(4);
    let mut messages = api.messages.clone();
    let call = tokio::spawn(async move { messages.publish_stream(ReceiverStream::new(rx)).await });
    for i in 5..9 {
        tx.send(publish_req("ps", vec![msg(&format!("s{i}"))]))
            .await
            .expect("the call is open");
    }
    drop(tx);
    let r = ok(within("publish stream", call).await.expect("join"));
    let got: Vec<u64> = r
        .responses
        .iter()
        .flat_map(|b| b.results.iter().map(|x| x.offset))
        .collect();
    assert_eq!(got, [5, 6, 7, 8]);

    // A failing batch fails the call; the batches before it are stored.
    let batches = vec![
        publish_req("ps", vec![msg("before")]),
        publish_req("nope", vec![msg("lost")]),
        publish_req("ps", vec![msg("after")]),
    ];
    err(
        api.messages
            .publish_stream(tokio_stream::iter(batches))
            .await,
        Code::NotFound,
        "topic_not_found",
    );
    let read = ok(api.messages.read(read_req("ps", 0, at_offset(9))).await);
    assert_eq!(
        values(&read.messages).first().copied(),
        Some("before"),
        "{read:?}"
    );
    // An empty stream answers nothing.
    let r = ok(api
        .messages
        .publish_stream(tokio_stream::iter(Vec::<PublishRequest>::new()))
        .await);
    assert!(r.responses.is_empty(), "{r:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_by_offset_edge_and_time() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "log", partitions(2)).await;
    let first: Vec<PublishMessage> = (0..5).map(|i| msg_to(&format!("v{i}"), 0)).collect();
    publish(&mut api, "log", first).await;
    for v in ["v5", "v6", "v7"] {
        publish(&mut api, "log", vec![msg_to(v, 0)]).await;
    }
    let all = ok(api.messages.read(read_req("log", 0, None)).await);
    assert_eq!(
        values(&all.messages),
        ["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7"]
    );
    let offs: Vec<u64> = all.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offs, (0..8).collect::<Vec<_>>());
    assert_eq!(
        (all.next_offset, all.start_offset, all.high_watermark),
        (8, 0, 8)
    );
    assert_eq!(all.skipped_to, None);

    // By offset, with a limit.
    let r = ok(api
        .messages
        .read(ReadRequest {
            max_messages: Some(2),
            ..read_req("log", 0, at_offset(2))
        })
        .await);
    assert_eq!(values(&r.messages), ["v2", "v3"]);
    assert_eq!(r.next_offset, 4);
    let r = ok(api.messages.read(read_req("log", 0, at_offset(8))).await);
    assert!(r.messages.is_empty());
    assert_eq!(r.next_offset, 8);
    // Edges: latest is nothing yet, positioned at the end; earliest is everything.
    let r = ok(api
        .messages
        .read(read_req("log", 0, edge(Edge::Latest)))
        .await);
    assert!(r.messages.is_empty());
    assert_eq!(r.next_offset, 8);
    let r = ok(api
        .messages
        .read(ReadRequest {
            max_messages: Some(1),
            ..read_req("log", 0, edge(Edge::Earliest))
        })
        .await);
    assert_eq!(values(&r.messages), ["v0"]);
    // Another partition.
    let r = ok(api.messages.read(read_req("log", 1, None)).await);
    assert!(r.messages.is_empty());
    assert_eq!(r.high_watermark, 0);
    // max_bytes: whole messages, at least one.
    let r = ok(api
        .messages
        .read(ReadRequest {
            max_bytes: Some(1),
            ..read_req("log", 0, None)
        })
        .await);
    assert_eq!(values(&r.messages), ["v0"]);

    // By time: the first message appended at or after it.
    let ts: Vec<i64> = all.messages.iter().map(|m| m.timestamp_ms).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    let t = ts[6];
    let want = ts.iter().position(|x| *x >= t).expect("some") as u64;
    let r = ok(api
        .messages
        .read(ReadRequest {
            max_messages: Some(1),
            ..read_req("log", 0, at_time(t))
        })
        .await);
    assert_eq!(r.messages[0].offset, want);
    let r = ok(api.messages.read(read_req("log", 0, at_time(0))).await);
    assert_eq!(r.messages.len(), 8);
    let r = ok(api
        .messages
        .read(read_req("log", 0, at_time(32_503_680_000_000)))
        .await);
    assert!(r.messages.is_empty());
    assert_eq!(r.next_offset, 8);
    let r = ok(api
        .messages
        .read(read_req("log", 0, at_time(ts[7] + 1)))
        .await);
    assert!(r.messages.is_empty());

    // Errors.
    err(
        api.messages.read(read_req("log", 2, None)).await,
        Code::NotFound,
        "partition_not_found",
    );
    err(
        api.messages.read(read_req("nope", 0, None)).await,
        Code::NotFound,
        "topic_not_found",
    );
    err(
        api.messages.read(read_req("log", 0, at_offset(9))).await,
        Code::OutOfRange,
        "offset_out_of_range",
    );
    for (bad, code) in [
        (
            ReadRequest {
                max_messages: Some(0),
                ..read_req("log", 0, None)
            },
            "invalid_argument",
        ),
        (
            ReadRequest {
                max_bytes: Some(0),
                ..read_req("log", 0, None)
            },
            "invalid_argument",
        ),
        (read_req("log", 0, edge_raw(9)), "invalid_argument"),
        (
            ReadRequest {
                max_messages: Some(1001),
                ..read_req("log", 0, None)
            },
            "limit_exceeded",
        ),
        (
            ReadRequest {
                wait_ms: Some(30_001),
                ..read_req("log", 0, None)
            },
            "limit_exceeded",
        ),
    ] {
        err(api.messages.read(bad).await, Code::InvalidArgument, code);
    }
    s.stop().await;
}

/// A position with a raw (possibly unknown) edge value.
fn edge_raw(e: i32) -> Option<Position> {
    Some(Position {
        at: Some(position::At::Edge(e)),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_woken_by_a_publish() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "lp", None).await;
    publish(&mut api, "lp", vec![msg("first")]).await;
    ok(api
        .subs
        .create_subscription(shared_sub("lp", "q", SharedConfig::default()))
        .await);
    ok(api
        .subs
        .create_subscription(stream_sub(
            "lp",
            "g",
            StreamConfig {
                start: edge(Edge::Latest),
                session_timeout_ms: None,
            },
        ))
        .await);
    let member = ok(api
        .stream
        .join(JoinRequest {
            topic: "lp".into(),
            subscription: "g".into(),
            member_id: None,
        })
        .await);
    // Take "first" off the shared subscription so its long-poll has to wait too.
    let ds = receive(&mut api, "lp", "q", 1).await;
    ok(api.shared.ack(ack_req("lp", "q", &[&ds[0].ack_id])).await);

    // Three long-polls in flight: a read at the end of the log, a fetch, a receive.
    let mut a = api.clone();
    let read = tokio::spawn(async move {
        a.messages
            .read(ReadRequest {
                wait_ms: Some(20_000),
                ..read_req("lp", 0, at_offset(1))
            })
            .await
    });
    let mut a = api.clone();
    let member_id = member.member_id.clone();
    let fetch = tokio::spawn(async move {
        a.stream
            .fetch(FetchRequest {
                topic: "lp".into(),
                subscription: "g".into(),
                member_id,
                wait_ms: Some(20_000),
                ..FetchRequest::default()
            })
            .await
    });
    let mut a = api.clone();
    let recv = tokio::spawn(async move {
        a.shared
            .receive(ReceiveRequest {
                wait_ms: Some(20_000),
                ..receive_req("lp", "q")
            })
            .await
    });
    let started = tokio::time::Instant::now();
    let r = publish(&mut api, "lp", vec![msg("second")]).await;
    assert_eq!(r[0].offset, 1);

    let read = ok(within("read", read).await.expect("join"));
    assert_eq!(values(&read.messages), ["second"]);
    assert_eq!(read.messages[0].offset, 1);
    assert_eq!(read.next_offset, 2);
    let fetch = ok(within("fetch", fetch).await.expect("join"));
    assert_eq!(values(&fetch.messages), ["second"]);
    let recv = ok(within("receive", recv).await.expect("join"));
    assert_eq!(delivered(&recv.deliveries), ["second"]);
    // Woken, not timed out.
    assert!(started.elapsed() < Duration::from_secs(19));
    s.stop().await;
}

// ---- subscriptions --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_create_get_list_delete() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "t", partitions(2)).await;

    // Stream: defaults filled in.
    let audit = ok(api
        .subs
        .create_subscription(stream_sub("t", "audit", StreamConfig::default()))
        .await);
    assert_eq!(
        audit,
        Subscription {
            topic: "t".into(),
            name: "audit".into(),
            config: Some(subscription::Config::Stream(StreamConfig {
                start: edge(Edge::Earliest),
                session_timeout_ms: Some(30_000),
            })),
            partitions: (0..2)
                .map(|p| SubscriptionPartition {
                    partition: p,
                    committed: 0,
                    lag: 0,
                    behind_retention: false,
                })
                .collect(),
            members: vec![],
            generation: 0,
            in_flight: 0,
            delayed: 0,
            dead_lettered: 0,
        }
    );
    // Shared: every setting echoed.
    let settings = SharedConfig {
        max_deliveries: Some(3),
        lease_ms: Some(10_000),
        backoff_initial_ms: Some(500),
        backoff_max_ms: Some(5000),
        backoff_jitter_pct: Some(10),
        ordered_by_key: Some(true),
        max_in_flight_per_member: Some(7),
        start: None,
        push: Some(wharf_proto::v1::PushConfig {
            app: "billing".into(),
            route: Some("/hooks".into()),
            max_in_flight: Some(2),
            timeout_ms: Some(1500),
        }),
    };
    let work = ok(api
        .subs
        .create_subscription(shared_sub("t", "work", settings.clone()))
        .await);
    assert_eq!(
        work.config,
        Some(subscription::Config::Shared(SharedConfig {
            start: edge(Edge::Earliest),
            ..settings.clone()
        }))
    );
    // Shared defaults.
    let plain = ok(api
        .subs
        .create_subscription(shared_sub("t", "plain", SharedConfig::default()))
        .await);
    assert_eq!(
        plain.config,
        Some(subscription::Config::Shared(SharedConfig {
            max_deliveries: Some(5),
            lease_ms: Some(30_000),
            backoff_initial_ms: plain_backoff(&plain).0,
            backoff_max_ms: plain_backoff(&plain).1,
            backoff_jitter_pct: Some(20),
            ordered_by_key: Some(false),
            max_in_flight_per_member: Some(1000),
            start: edge(Edge::Earliest),
            push: None,
        }))
    );
    // Starting points.
    let late = ok(api
        .subs
        .create_subscription(stream_sub(
            "t",
            "late",
            StreamConfig {
                start: at_offset(0),
                session_timeout_ms: Some(5000),
            },
        ))
        .await);
    assert_eq!(
        late.config,
        Some(subscription::Config::Stream(StreamConfig {
            start: at_offset(0),
            session_timeout_ms: Some(5000),
        }))
    );
    let timed = ok(api
        .subs
        .create_subscription(shared_sub(
            "t",
            "timed",
            SharedConfig {
                start: at_time(1_577_836_800_000),
                ..SharedConfig::default()
            },
        ))
        .await);
    let Some(subscription::Config::Shared(c)) = &timed.config else {
        panic!("{timed:?}");
    };
    assert_eq!(c.start, at_time(1_577_836_800_000));

    // Idempotent with the same settings; ALREADY_EXISTS with others.
    assert_eq!(
        ok(api
            .subs
            .create_subscription(shared_sub("t", "work", settings.clone()))
            .await),
        work
    );
    err(
        api.subs
            .create_subscription(shared_sub(
                "t",
                "work",
                SharedConfig {
                    max_deliveries: Some(4),
                    ..settings
                },
            ))
            .await,
        Code::AlreadyExists,
        "subscription_exists",
    );
    err(
        api.subs
            .create_subscription(stream_sub("t", "work", StreamConfig::default()))
            .await,
        Code::AlreadyExists,
        "subscription_exists",
    );
    // Bad input.
    err(
        api.subs
            .create_subscription(stream_sub("t", "Bad", StreamConfig::default()))
            .await,
        Code::InvalidArgument,
        "invalid_name",
    );
    for bad in [
        shared_sub(
            "t",
            "bad",
            SharedConfig {
                max_deliveries: Some(0),
                ..SharedConfig::default()
            },
        ),
        shared_sub(
            "t",
            "bad",
            SharedConfig {
                lease_ms: Some(10),
                ..SharedConfig::default()
            },
        ),
        shared_sub(
            "t",
            "bad",
            SharedConfig {
                backoff_initial_ms: Some(10),
                backoff_max_ms: Some(1),
                ..SharedConfig::default()
            },
        ),
        stream_sub(
            "t",
            "bad",
            StreamConfig {
                start: None,
                session_timeout_ms: Some(10),
            },
        ),
        stream_sub(
            "t",
            "bad",
            StreamConfig {
                start: edge_raw(9),
                session_timeout_ms: None,
            },
        ),
        // No kind at all.
        CreateSubscriptionRequest {
            topic: "t".into(),
            name: "bad".into(),
            config: None,
        },
    ] {
        let got = api.subs.create_subscription(bad.clone()).await;
        assert!(got.is_err(), "{bad:?} was accepted");
        err(got, Code::InvalidArgument, "invalid_argument");
    }
    err(
        api.subs
            .create_subscription(stream_sub("nope", "x", StreamConfig::default()))
            .await,
        Code::NotFound,
        "topic_not_found",
    );

    // Get one, list by name.
    assert_eq!(get_sub(&mut api, "t", "audit").await, audit);
    err(
        api.subs
            .get_subscription(GetSubscriptionRequest {
                topic: "t".into(),
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        "subscription_not_found",
    );
    let list = ok(api
        .subs
        .list_subscriptions(ListSubscriptionsRequest { topic: "t".into() })
        .await);
    let names: Vec<&str> = list.subscriptions.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["audit", "late", "plain", "timed", "work"]);
    assert_eq!(list.subscriptions[0], audit);
    err(
        api.subs
            .list_subscriptions(ListSubscriptionsRequest {
                topic: "nope".into(),
            })
            .await,
        Code::NotFound,
        "topic_not_found",
    );

    // Delete: gone, and a shared one takes its dead-letter topic along.
    ok(api
        .topics
        .get_topic(GetTopicRequest {
            name: "wharf.dlq.t.work".into(),
        })
        .await);
    let _: DeleteSubscriptionResponse = ok(api
        .subs
        .delete_subscription(DeleteSubscriptionRequest {
            topic: "t".into(),
            name: "work".into(),
        })
        .await);
    err(
        api.subs
            .get_subscription(GetSubscriptionRequest {
                topic: "t".into(),
                name: "work".into(),
            })
            .await,
        Code::NotFound,
        "subscription_not_found",
    );
    err(
        api.topics
            .get_topic(GetTopicRequest {
                name: "wharf.dlq.t.work".into(),
            })
            .await,
        Code::NotFound,
        "topic_not_found",
    );
    err(
        api.subs
            .delete_subscription(DeleteSubscriptionRequest {
                topic: "t".into(),
                name: "work".into(),
            })
            .await,
        Code::NotFound,
        "subscription_not_found",
    );
    let list = ok(api
        .subs
        .list_subscriptions(ListSubscriptionsRequest { topic: "t".into() })
        .await);
    assert_eq!(list.subscriptions.len(), 4);
    s.stop().await;
}

/// The default backoff of a shared subscription, as answered (its exact values are the
/// broker's business; they must be set).
fn plain_backoff(s: &Subscription) -> (Option<u64>, Option<u64>) {
    let Some(subscription::Config::Shared(c)) = &s.config else {
        panic!("not shared: {s:?}");
    };
    assert!(
        c.backoff_initial_ms.is_some() && c.backoff_max_ms.is_some(),
        "{c:?}"
    );
    (c.backoff_initial_ms, c.backoff_max_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_operations_on_shared_subscriptions_and_the_reverse_are_refused() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "t", None).await;
    ok(api
        .subs
        .create_subscription(shared_sub("t", "work", SharedConfig::default()))
        .await);
    ok(api
        .subs
        .create_subscription(stream_sub("t", "audit", StreamConfig::default()))
        .await);
    let member = |sub: &str| MemberRequest {
        topic: "t".into(),
        subscription: sub.into(),
        member_id: "m".into(),
    };
    let wrong = |got: Status| assert_status(&got, Code::FailedPrecondition, "wrong_kind");
    let join = JoinRequest {
        topic: "t".into(),
        subscription: "work".into(),
        member_id: None,
    };
    wrong(api.stream.join(join).await.expect_err("join"));
    wrong(
        api.stream
            .heartbeat(member("work"))
            .await
            .expect_err("heartbeat"),
    );
    wrong(api.stream.leave(member("work")).await.expect_err("leave"));
    wrong(
        api.stream
            .fetch(FetchRequest {
                topic: "t".into(),
                subscription: "work".into(),
                member_id: "m".into(),
                ..FetchRequest::default()
            })
            .await
            .expect_err("fetch"),
    );
    wrong(
        api.stream
            .commit(CommitRequest {
                topic: "t".into(),
                subscription: "work".into(),
                member_id: "m".into(),
                offsets: offsets(&[(0, 0)]),
            })
            .await
            .expect_err("commit"),
    );
    wrong(
        api.subs
            .reset_subscription(ResetSubscriptionRequest {
                topic: "t".into(),
                name: "work".into(),
                to: Some(reset_subscription_request::To::Edge(Edge::Earliest as i32)),
            })
            .await
            .expect_err("reset"),
    );
    wrong(
        stream_error(
            api.stream
                .consume(ConsumeRequest {
                    topic: "t".into(),
                    subscription: "work".into(),
                    ..ConsumeRequest::default()
                })
                .await,
        )
        .await,
    );
    wrong(
        api.shared
            .receive(receive_req("t", "audit"))
            .await
            .expect_err("receive"),
    );
    let ids = ["0.0.0.1"];
    wrong(
        api.shared
            .ack(ack_req("t", "audit", &ids))
            .await
            .expect_err("ack"),
    );
    wrong(
        api.shared
            .nack(NackRequest {
                topic: "t".into(),
                subscription: "audit".into(),
                ack_ids: vec![ids[0].into()],
                delay_ms: None,
            })
            .await
            .expect_err("nack"),
    );
    wrong(
        api.shared
            .extend(ExtendRequest {
                topic: "t".into(),
                subscription: "audit".into(),
                ack_ids: vec![ids[0].into()],
                lease_ms: 1000,
            })
            .await
            .expect_err("extend"),
    );
    wrong(
        api.shared
            .terminate(TerminateRequest {
                topic: "t".into(),
                subscription: "audit".into(),
                ack_ids: vec![ids[0].into()],
                reason: String::new(),
            })
            .await
            .expect_err("terminate"),
    );
    wrong(
        api.subs
            .list_dead_letters(ListDeadLettersRequest {
                topic: "t".into(),
                subscription: "audit".into(),
                ..ListDeadLettersRequest::default()
            })
            .await
            .expect_err("dead letters"),
    );
    wrong(
        api.subs
            .redrive(RedriveRequest {
                topic: "t".into(),
                subscription: "audit".into(),
                max: None,
            })
            .await
            .expect_err("redrive"),
    );
    wrong(
        stream_error(
            api.shared
                .receive_stream(ReceiveStreamRequest {
                    topic: "t".into(),
                    subscription: "audit".into(),
                    ..ReceiveStreamRequest::default()
                })
                .await,
        )
        .await,
    );
    s.stop().await;
}

// ---- stream consumption ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_join_heartbeat_fetch_commit_reset_leave() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "st", partitions(2)).await;
    let first = publish(
        &mut api,
        "st",
        vec![
            msg_to("p0-0", 0),
            msg_to("p0-1", 0),
            msg_to("p1-0", 1),
            msg_to("p1-1", 1),
        ],
    )
    .await;
    ok(api
        .subs
        .create_subscription(stream_sub("st", "g", StreamConfig::default()))
        .await);
    let join = |member_id: Option<&str>| JoinRequest {
        topic: "st".into(),
        subscription: "g".into(),
        member_id: member_id.map(str::to_owned),
    };
    let member = |id: &str| MemberRequest {
        topic: "st".into(),
        subscription: "g".into(),
        member_id: id.into(),
    };
    let fetch = |id: &str, max: Option<u32>| FetchRequest {
        topic: "st".into(),
        subscription: "g".into(),
        member_id: id.into(),
        max_messages: max,
        ..FetchRequest::default()
    };
    let commit = |id: &str, pairs: &[(u32, u64)]| CommitRequest {
        topic: "st".into(),
        subscription: "g".into(),
        member_id: id.into(),
        offsets: offsets(pairs),
    };
    let reset = |to: reset_subscription_request::To| ResetSubscriptionRequest {
        topic: "st".into(),
        name: "g".into(),
        to: Some(to),
    };
    use reset_subscription_request::To;

    // Join: a new member owns everything.
    let m = ok(api.stream.join(join(None)).await);
    let a = m.member_id.clone();
    assert!(!a.is_empty());
    assert_eq!(m.partitions, [0, 1]);
    let g1 = m.generation;
    let d = get_sub(&mut api, "st", "g").await;
    assert_eq!(d.members, std::slice::from_ref(&a));
    assert_eq!(d.generation, g1);
    // Joining again with the same id changes nothing.
    assert_eq!(ok(api.stream.join(join(Some(&a))).await), m);

    // A second member (named): a rebalance.
    let m2 = ok(api.stream.join(join(Some("zz-worker"))).await);
    assert_eq!(m2.member_id, "zz-worker");
    assert_eq!(m2.generation, g1 + 1);
    assert_eq!(m2.partitions, [1]);
    let hb = ok(api.stream.heartbeat(member(&a)).await);
    assert_eq!(
        hb,
        Membership {
            member_id: a.clone(),
            generation: g1 + 1,
            partitions: vec![0]
        }
    );
    let d = get_sub(&mut api, "st", "g").await;
    let mut members = vec![a.clone(), "zz-worker".to_owned()];
    members.sort();
    assert_eq!(d.members, members);

    // Each fetches its own partitions.
    let f = ok(api.stream.fetch(fetch("zz-worker", Some(10))).await);
    assert_eq!(values(&f.messages), ["p1-0", "p1-1"]);
    assert!(f.messages.iter().all(|m| m.partition == 1));
    // Committing a partition it does not own.
    err(
        api.stream.commit(commit("zz-worker", &[(0, 1)])).await,
        Code::FailedPrecondition,
        "not_assigned",
    );

    // Leave; then the member is unknown everywhere.
    let _: LeaveResponse = ok(api.stream.leave(member("zz-worker")).await);
    for got in [
        api.stream
            .heartbeat(member("zz-worker"))
            .await
            .map(|_| ())
            .expect_err("heartbeat"),
        api.stream
            .leave(member("zz-worker"))
            .await
            .map(|_| ())
            .expect_err("leave"),
        api.stream
            .fetch(fetch("zz-worker", None))
            .await
            .map(|_| ())
            .expect_err("fetch"),
        api.stream
            .commit(commit("zz-worker", &[(1, 1)]))
            .await
            .map(|_| ())
            .expect_err("commit"),
    ] {
        assert_status(&got, Code::FailedPrecondition, "unknown_member");
    }

    // The remaining member owns both again; nothing was committed, so it reads everything.
    let hb = ok(api.stream.heartbeat(member(&a)).await);
    assert_eq!(hb.partitions, [0, 1]);
    let f = ok(api.stream.fetch(fetch(&a, Some(3))).await);
    assert_eq!(values(&f.messages), ["p0-0", "p0-1", "p1-0"]);
    let f = ok(api.stream.fetch(fetch(&a, None)).await);
    assert_eq!(values(&f.messages), ["p1-1"]);
    let f = ok(api.stream.fetch(fetch(&a, None)).await);
    assert!(f.messages.is_empty());

    // Commit: answered with the offsets in force; GetSubscription shows committed and lag.
    let c = ok(api.stream.commit(commit(&a, &[(0, 2), (1, 1)])).await);
    assert_eq!(c.offsets, offsets(&[(0, 2), (1, 1)]));
    let d = get_sub(&mut api, "st", "g").await;
    assert_eq!(committed(&d), [(2, 0), (1, 1)]);
    err(
        api.stream.commit(commit(&a, &[(0, 3)])).await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    err(
        api.stream.commit(commit(&a, &[])).await,
        Code::InvalidArgument,
        "invalid_argument",
    );

    // Reset to earliest: replay from the start (members continue from there).
    let r = ok(api
        .subs
        .reset_subscription(reset(To::Edge(Edge::Earliest as i32)))
        .await);
    assert_eq!(r.offsets, offsets(&[(0, 0), (1, 0)]));
    let d = get_sub(&mut api, "st", "g").await;
    assert_eq!(committed(&d), [(0, 2), (0, 2)]);
    let f = ok(api.stream.fetch(fetch(&a, Some(10))).await);
    assert_eq!(values(&f.messages), ["p0-0", "p0-1", "p1-0", "p1-1"]);
    // To latest.
    let r = ok(api
        .subs
        .reset_subscription(reset(To::Edge(Edge::Latest as i32)))
        .await);
    assert_eq!(r.offsets, offsets(&[(0, 2), (1, 2)]));
    // To given offsets (the others stay).
    let r = ok(api
        .subs
        .reset_subscription(reset(To::Offsets(Offsets {
            offsets: offsets(&[(1, 1)]),
        })))
        .await);
    assert_eq!(r.offsets, offsets(&[(0, 2), (1, 1)]));
    let f = ok(api.stream.fetch(fetch(&a, None)).await);
    assert_eq!(values(&f.messages), ["p1-1"]);
    // To a time: the first message at or after it, per partition.
    let r = ok(api
        .subs
        .reset_subscription(reset(To::TimestampMs(946_684_800_000)))
        .await);
    assert_eq!(r.offsets, offsets(&[(0, 0), (1, 0)]));
    let r = ok(api
        .subs
        .reset_subscription(reset(To::TimestampMs(32_503_680_000_000)))
        .await);
    assert_eq!(r.offsets, offsets(&[(0, 2), (1, 2)]));
    let r = ok(api
        .subs
        .reset_subscription(reset(To::TimestampMs(first[0].timestamp_ms)))
        .await);
    assert_eq!(
        r.offsets[0],
        Committed {
            partition: 0,
            offset: 0
        }
    );
    for bad in [
        ResetSubscriptionRequest {
            topic: "st".into(),
            name: "g".into(),
            to: None,
        },
        reset(To::Edge(9)),
        reset(To::Offsets(Offsets { offsets: vec![] })),
        reset(To::Offsets(Offsets {
            offsets: offsets(&[(0, 99)]),
        })),
        reset(To::Offsets(Offsets {
            offsets: offsets(&[(7, 0)]),
        })),
    ] {
        let got = api.subs.reset_subscription(bad.clone()).await;
        assert!(got.is_err(), "{bad:?} was accepted");
        err(got, Code::InvalidArgument, "invalid_argument");
    }
    err(
        api.subs
            .reset_subscription(ResetSubscriptionRequest {
                topic: "st".into(),
                name: "nope".into(),
                to: Some(To::Edge(Edge::Earliest as i32)),
            })
            .await,
        Code::NotFound,
        "subscription_not_found",
    );

    // The last member leaves.
    ok(api.stream.leave(member(&a)).await);
    let d = get_sub(&mut api, "st", "g").await;
    assert!(d.members.is_empty(), "{d:?}");
    err(
        api.stream.heartbeat(member(&a)).await,
        Code::FailedPrecondition,
        "unknown_member",
    );
    err(
        api.stream
            .join(JoinRequest {
                topic: "st".into(),
                subscription: "nope".into(),
                member_id: None,
            })
            .await,
        Code::NotFound,
        "subscription_not_found",
    );
    s.stop().await;
}

/// Reads a `Consume` stream until `n` messages arrived; answers them (assignments in between
/// fail the test).
async fn consume_messages(st: &mut Streaming<ConsumeResponse>, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    while got.len() < n {
        match next(st, "consume").await.event {
            Some(consume_response::Event::Messages(b)) => {
                assert!(!b.messages.is_empty(), "an empty batch");
                got.extend(b.messages);
            }
            other => panic!("expected messages, got {other:?} after {got:?}"),
        }
    }
    assert_eq!(got.len(), n, "more than asked for: {got:?}");
    got
}

/// The first event of a `Consume` stream: the assignment.
async fn assignment(st: &mut Streaming<ConsumeResponse>) -> Membership {
    match next(st, "the assignment").await.event {
        Some(consume_response::Event::Assignment(m)) => m,
        other => panic!("the first event must be the assignment, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_streams_the_assignment_then_messages() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "ev", None).await;
    ok(api
        .subs
        .create_subscription(stream_sub("ev", "g", StreamConfig::default()))
        .await);
    publish(&mut api, "ev", vec![msg("e0"), msg("e1"), msg("e2")]).await;
    let consume = |sub: &str, auto_commit: bool| ConsumeRequest {
        topic: "ev".into(),
        subscription: sub.into(),
        max_messages: None,
        auto_commit,
    };

    let mut st = ok(api.stream.consume(consume("g", false)).await);
    let a = assignment(&mut st).await;
    assert!(!a.member_id.is_empty());
    assert_eq!(a.partitions, [0]);
    let ms = consume_messages(&mut st, 3).await;
    assert_eq!(values(&ms), ["e0", "e1", "e2"]);
    let offs: Vec<u64> = ms.iter().map(|m| m.offset).collect();
    assert_eq!(offs, [0, 1, 2]);
    // The stream is a member of the group; nothing committed without auto_commit.
    let d = get_sub(&mut api, "ev", "g").await;
    assert_eq!(d.members, std::slice::from_ref(&a.member_id));
    assert_eq!(committed(&d), [(0, 3)]);
    // Commit with the assignment's member id.
    let c = ok(api
        .stream
        .commit(CommitRequest {
            topic: "ev".into(),
            subscription: "g".into(),
            member_id: a.member_id.clone(),
            offsets: offsets(&[(0, 2)]),
        })
        .await);
    assert_eq!(c.offsets, offsets(&[(0, 2)]));
    assert_eq!(committed(&get_sub(&mut api, "ev", "g").await), [(2, 1)]);
    // Live messages follow.
    publish(&mut api, "ev", vec![msg("e3")]).await;
    let ms = consume_messages(&mut st, 1).await;
    assert_eq!(values(&ms), ["e3"]);
    assert_eq!(ms[0].offset, 3);
    // Closing the stream leaves the group.
    drop(st);
    wait_sub(&api, "ev", "g", "the stream's member to leave", |d| {
        d.members.is_empty()
    })
    .await;

    // Again: a new member resumes at the committed offset.
    let mut st = ok(api.stream.consume(consume("g", false)).await);
    let b = assignment(&mut st).await;
    assert_ne!(b.member_id, a.member_id);
    let ms = consume_messages(&mut st, 2).await;
    assert_eq!(values(&ms), ["e2", "e3"]);
    drop(st);
    wait_sub(&api, "ev", "g", "the stream's member to leave", |d| {
        d.members.is_empty()
    })
    .await;
    assert_eq!(
        committed(&get_sub(&mut api, "ev", "g").await),
        [(2, 2)],
        "no auto_commit: unchanged"
    );

    // auto_commit: what was sent is committed before the next fetch, live messages too.
    ok(api
        .subs
        .create_subscription(stream_sub("ev", "auto", StreamConfig::default()))
        .await);
    let mut st = ok(api
        .stream
        .consume(ConsumeRequest {
            max_messages: Some(2),
            ..consume("auto", true)
        })
        .await);
    assignment(&mut st).await;
    let ms = consume_messages(&mut st, 4).await;
    assert_eq!(values(&ms), ["e0", "e1", "e2", "e3"]);
    wait_sub(&api, "ev", "auto", "the auto-commit", |d| {
        committed(d) == [(4, 0)]
    })
    .await;
    publish(&mut api, "ev", vec![msg("e4")]).await;
    assert_eq!(values(&consume_messages(&mut st, 1).await), ["e4"]);
    wait_sub(&api, "ev", "auto", "the auto-commit", |d| {
        committed(d) == [(5, 0)]
    })
    .await;
    drop(st);

    // Refusals.
    let e = stream_error(api.stream.consume(consume("nope", false)).await).await;
    assert_status(&e, Code::NotFound, "subscription_not_found");
    let e = stream_error(
        api.stream
            .consume(ConsumeRequest {
                topic: "nope".into(),
                ..consume("g", false)
            })
            .await,
    )
    .await;
    assert_status(&e, Code::NotFound, "topic_not_found");
    let e = stream_error(
        api.stream
            .consume(ConsumeRequest {
                max_messages: Some(0),
                ..consume("g", false)
            })
            .await,
    )
    .await;
    assert_status(&e, Code::InvalidArgument, "invalid_argument");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_is_rebalanced_when_a_second_member_joins() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "rb", partitions(2)).await;
    ok(api
        .subs
        .create_subscription(stream_sub("rb", "g", StreamConfig::default()))
        .await);
    let mut st = ok(api
        .stream
        .consume(ConsumeRequest {
            topic: "rb".into(),
            subscription: "g".into(),
            ..ConsumeRequest::default()
        })
        .await);
    let a = assignment(&mut st).await;
    assert_eq!(a.partitions, [0, 1]);
    // A second member takes a partition: the stream is told with a new assignment.
    let other = ok(api
        .stream
        .join(JoinRequest {
            topic: "rb".into(),
            subscription: "g".into(),
            member_id: Some("zz-other".into()),
        })
        .await);
    assert_eq!(other.partitions, [1]);
    // A message for the partition the stream no longer owns: not for the stream. The next
    // event is the new assignment.
    publish(&mut api, "rb", vec![msg_to("x1", 1)]).await;
    let m = assignment(&mut st).await;
    assert_eq!(m.member_id, a.member_id);
    assert!(m.generation > a.generation, "{m:?} after {a:?}");
    assert_eq!(m.partitions, [0]);
    // Its messages: partition 0 only.
    publish(&mut api, "rb", vec![msg_to("y1", 1), msg_to("x0", 0)]).await;
    let ms = consume_messages(&mut st, 1).await;
    assert_eq!(values(&ms), ["x0"]);
    s.stop().await;
}

// ---- shared consumption ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_receive_ack_nack_extend_terminate_dead_letters_redrive() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "sh", None).await;
    ok(api
        .subs
        .create_subscription(shared_sub("sh", "work", no_backoff()))
        .await);
    publish(
        &mut api,
        "sh",
        vec![
            msg("a"),
            PublishMessage {
                key: Some(bytes("kb")),
                ..msg("b")
            },
            msg("c"),
        ],
    )
    .await;

    // Receive two under a lease.
    let ds = ok(api
        .shared
        .receive(ReceiveRequest {
            max: Some(2),
            member: Some("w1".into()),
            ..receive_req("sh", "work")
        })
        .await)
    .deliveries;
    assert_eq!(delivered(&ds), ["a", "b"]);
    let m0 = ds[0].message.clone().expect("message");
    let m1 = ds[1].message.clone().expect("message");
    assert_eq!((m0.offset, m1.offset), (0, 1));
    assert_eq!(m1.key, Some(bytes("kb")));
    assert_eq!((ds[0].delivery_count, ds[1].delivery_count), (1, 1));
    let deadline = ds[0].lease_deadline_ms;
    assert!(
        deadline >= m0.timestamp_ms + 30_000 - 1000
            && deadline <= m0.timestamp_ms + 30_000 + TIMEOUT.as_millis() as i64,
        "deadline {deadline} vs message time {}",
        m0.timestamp_ms
    );
    let (a, b) = (ds[0].ack_id.clone(), ds[1].ack_id.clone());
    assert_ne!(a, b);
    let d = get_sub(&mut api, "sh", "work").await;
    assert_eq!(d.in_flight, 2);
    assert_eq!(committed(&d), [(0, 3)]);

    // Ack: per-id outcomes in request order.
    let r = ok(api.shared.ack(ack_req("sh", "work", &[&a])).await);
    assert_eq!(outcomes(&r.outcomes), [(a.as_str(), None)]);
    let d = get_sub(&mut api, "sh", "work").await;
    assert_eq!(d.in_flight, 1);
    assert_eq!(committed(&d), [(1, 2)]);
    // Stale and malformed ack ids: per-id errors, the call itself is fine.
    let r = ok(api
        .shared
        .ack(ack_req("sh", "work", &[&a, "not-an-ack-id"]))
        .await);
    assert_eq!(
        outcomes(&r.outcomes),
        [
            (a.as_str(), Some("lease_expired")),
            ("not-an-ack-id", Some("bad_ack_id"))
        ]
    );
    err(
        api.shared.ack(ack_req("sh", "work", &[])).await,
        Code::InvalidArgument,
        "invalid_argument",
    );

    // Nack with no delay: delivered again at once, with delivery_count 2.
    let r = ok(api
        .shared
        .nack(NackRequest {
            topic: "sh".into(),
            subscription: "work".into(),
            ack_ids: vec![b.clone()],
            delay_ms: Some(0),
        })
        .await);
    assert_eq!(outcomes(&r.outcomes), [(b.as_str(), None)]);
    let ds = receive(&mut api, "sh", "work", 10).await;
    assert_eq!(delivered(&ds), ["b", "c"]);
    assert_eq!((ds[0].delivery_count, ds[1].delivery_count), (2, 1));
    let (b2, c) = (ds[0].ack_id.clone(), ds[1].ack_id.clone());
    // The old ack id of b is stale now.
    let r = ok(api.shared.ack(ack_req("sh", "work", &[&b])).await);
    assert_eq!(outcomes(&r.outcomes), [(b.as_str(), Some("lease_expired"))]);

    // Extend.
    let extend = |ids: &[&str], lease_ms: u64| ExtendRequest {
        topic: "sh".into(),
        subscription: "work".into(),
        ack_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        lease_ms,
    };
    let r = ok(api.shared.extend(extend(&[&b2, &c, "junk"], 60_000)).await);
    assert_eq!(
        outcomes(&r.outcomes),
        [
            (b2.as_str(), None),
            (c.as_str(), None),
            ("junk", Some("bad_ack_id"))
        ]
    );
    err(
        api.shared.extend(extend(&[&c], 5)).await,
        Code::InvalidArgument,
        "invalid_argument",
    );

    // Terminate b: straight to the dead-letter topic with the wharf-dlq-* headers.
    let r = ok(api
        .shared
        .terminate(TerminateRequest {
            topic: "sh".into(),
            subscription: "work".into(),
            ack_ids: vec![b2.clone()],
            reason: "poison pill".into(),
        })
        .await);
    assert_eq!(outcomes(&r.outcomes), [(b2.as_str(), None)]);
    ok(api.shared.ack(ack_req("sh", "work", &[&c])).await);
    let d = get_sub(&mut api, "sh", "work").await;
    assert_eq!(d.in_flight, 0);
    assert_eq!(d.dead_lettered, 1);
    assert_eq!(committed(&d), [(3, 0)]);
    let dead = |offset: Option<u64>, max: Option<u32>| ListDeadLettersRequest {
        topic: "sh".into(),
        subscription: "work".into(),
        offset,
        max_messages: max,
    };
    let dl = ok(api.subs.list_dead_letters(dead(None, None)).await);
    assert_eq!(values(&dl.messages), ["b"]);
    let m = &dl.messages[0];
    assert_eq!(m.key, Some(bytes("kb")));
    let h = |k: &str| m.headers.get(k).map(String::as_str);
    assert_eq!(h("wharf-dlq-source-topic"), Some("sh"));
    assert_eq!(h("wharf-dlq-source-partition"), Some("0"));
    assert_eq!(h("wharf-dlq-source-offset"), Some("1"));
    assert_eq!(h("wharf-dlq-deliveries"), Some("2"));
    assert_eq!(h("wharf-dlq-reason"), Some("poison pill"));
    assert!(h("wharf-dlq-time").is_some(), "{m:?}");
    assert_eq!(dl.next_offset, 1);
    let dl = ok(api.subs.list_dead_letters(dead(Some(1), Some(5))).await);
    assert!(dl.messages.is_empty(), "{dl:?}");
    err(
        api.subs.list_dead_letters(dead(None, Some(0))).await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    err(
        api.subs
            .list_dead_letters(ListDeadLettersRequest {
                subscription: "nope".into(),
                ..dead(None, None)
            })
            .await,
        Code::NotFound,
        "subscription_not_found",
    );

    // Redrive: receivable again (original partition and offset, a fresh delivery count).
    let redrive = |max: Option<u32>| RedriveRequest {
        topic: "sh".into(),
        subscription: "work".into(),
        max,
    };
    err(
        api.subs.redrive(redrive(Some(0))).await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    let r = ok(api.subs.redrive(redrive(None)).await);
    assert_eq!(r.redriven, 1);
    assert_eq!(get_sub(&mut api, "sh", "work").await.dead_lettered, 0);
    let ds = receive(&mut api, "sh", "work", 10).await;
    assert_eq!(delivered(&ds), ["b"]);
    let m = ds[0].message.as_ref().expect("message");
    assert_eq!((m.partition, m.offset), (0, 1));
    assert_eq!(m.key, Some(bytes("kb")));
    assert_eq!(ds[0].delivery_count, 1);
    let r = ok(api
        .shared
        .ack(ack_req("sh", "work", &[&ds[0].ack_id]))
        .await);
    assert_eq!(outcomes(&r.outcomes), [(ds[0].ack_id.as_str(), None)]);
    assert!(receive(&mut api, "sh", "work", 10).await.is_empty());
    assert_eq!(ok(api.subs.redrive(redrive(Some(10))).await).redriven, 0);

    // wharf-deliver-at delays the first delivery.
    publish(
        &mut api,
        "sh",
        vec![msg_with(
            "later",
            &[("wharf-deliver-at", "2999-01-01T00:00:00Z")],
        )],
    )
    .await;
    assert!(receive(&mut api, "sh", "work", 10).await.is_empty());
    let d = get_sub(&mut api, "sh", "work").await;
    assert_eq!((d.delayed, d.in_flight), (1, 0));

    // Receive limits.
    for (bad, code) in [
        (
            ReceiveRequest {
                max: Some(0),
                ..receive_req("sh", "work")
            },
            "invalid_argument",
        ),
        (
            ReceiveRequest {
                lease_ms: Some(5),
                ..receive_req("sh", "work")
            },
            "invalid_argument",
        ),
        (
            ReceiveRequest {
                wait_ms: Some(30_001),
                ..receive_req("sh", "work")
            },
            "limit_exceeded",
        ),
        (
            ReceiveRequest {
                max: Some(1001),
                ..receive_req("sh", "work")
            },
            "limit_exceeded",
        ),
    ] {
        err(api.shared.receive(bad).await, Code::InvalidArgument, code);
    }
    err(
        api.shared.receive(receive_req("sh", "nope")).await,
        Code::NotFound,
        "subscription_not_found",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_deliveries_dead_letters_a_message() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    let q = ok(api
        .topics
        .create_queue(CreateQueueRequest {
            name: "emails".into(),
            topic: None,
            shared: Some(SharedConfig {
                max_deliveries: Some(2),
                ..no_backoff()
            }),
        })
        .await);
    assert!(q.subscription.is_some());
    publish(&mut api, "emails", vec![msg("welcome")]).await;
    for attempt in 1..=2 {
        let ds = ok(api
            .shared
            .receive(ReceiveRequest {
                max: Some(1),
                wait_ms: Some(20_000),
                ..receive_req("emails", "emails")
            })
            .await)
        .deliveries;
        assert_eq!(delivered(&ds), ["welcome"]);
        assert_eq!(ds[0].delivery_count, attempt);
        let r = ok(api
            .shared
            .nack(NackRequest {
                topic: "emails".into(),
                subscription: "emails".into(),
                ack_ids: vec![ds[0].ack_id.clone()],
                delay_ms: None,
            })
            .await);
        assert_eq!(r.outcomes[0].error, None);
    }
    let d = get_sub(&mut api, "emails", "emails").await;
    assert_eq!(d.dead_lettered, 1, "{d:?}");
    let dl = ok(api
        .subs
        .list_dead_letters(ListDeadLettersRequest {
            topic: "emails".into(),
            subscription: "emails".into(),
            ..ListDeadLettersRequest::default()
        })
        .await);
    assert_eq!(values(&dl.messages), ["welcome"]);
    assert_eq!(
        dl.messages[0]
            .headers
            .get("wharf-dlq-deliveries")
            .map(String::as_str),
        Some("2")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_stream_is_flow_controlled_by_max_in_flight_per_member() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "rs", None).await;
    ok(api
        .subs
        .create_subscription(shared_sub(
            "rs",
            "w",
            SharedConfig {
                max_in_flight_per_member: Some(2),
                ..no_backoff()
            },
        ))
        .await);
    publish(&mut api, "rs", vec![msg("m0"), msg("m1"), msg("m2")]).await;
    let mut st = ok(api
        .shared
        .receive_stream(ReceiveStreamRequest {
            topic: "rs".into(),
            subscription: "w".into(),
            member: Some("rs-1".into()),
            max: Some(10),
            lease_ms: Some(60_000),
        })
        .await);
    // The member's limit: two, then nothing more while both are leased.
    let mut got = Vec::new();
    while got.len() < 2 {
        let r = next(&mut st, "deliveries").await;
        assert!(!r.deliveries.is_empty(), "an empty response");
        got.extend(r.deliveries);
    }
    assert_eq!(delivered(&got), ["m0", "m1"], "over the member's limit");
    let d = get_sub(&mut api, "rs", "w").await;
    assert_eq!(d.in_flight, 2);
    // Settled with the unary call: the next one comes.
    let r = ok(api.shared.ack(ack_req("rs", "w", &[&got[0].ack_id])).await);
    assert_eq!(r.outcomes[0].error, None);
    let r = next(&mut st, "the third delivery").await;
    assert_eq!(delivered(&r.deliveries), ["m2"]);
    let ids: Vec<&str> = [&got[1], &r.deliveries[0]]
        .iter()
        .map(|d| d.ack_id.as_str())
        .collect();
    let r = ok(api.shared.ack(ack_req("rs", "w", &ids)).await);
    assert!(r.outcomes.iter().all(|o| o.error.is_none()), "{r:?}");
    let d = get_sub(&mut api, "rs", "w").await;
    assert_eq!(committed(&d), [(3, 0)]);
    assert_eq!(d.in_flight, 0);
    // Live: a new message arrives on the open stream.
    publish(&mut api, "rs", vec![msg("m3")]).await;
    let r = next(&mut st, "a live delivery").await;
    assert_eq!(delivered(&r.deliveries), ["m3"]);
    drop(st);

    let e = stream_error(
        api.shared
            .receive_stream(ReceiveStreamRequest {
                topic: "rs".into(),
                subscription: "nope".into(),
                ..ReceiveStreamRequest::default()
            })
            .await,
    )
    .await;
    assert_status(&e, Code::NotFound, "subscription_not_found");
    let e = stream_error(
        api.shared
            .receive_stream(ReceiveStreamRequest {
                topic: "rs".into(),
                subscription: "w".into(),
                max: Some(0),
                ..ReceiveStreamRequest::default()
            })
            .await,
    )
    .await;
    assert_status(&e, Code::InvalidArgument, "invalid_argument");
    s.stop().await;
}

fn start(topic: &str, sub: &str, max_in_flight: u32, lease_ms: Option<u64>) -> ProcessRequest {
    ProcessRequest {
        request: Some(process_request::Request::Start(ProcessStart {
            topic: topic.into(),
            subscription: sub.into(),
            member: Some("proc-1".into()),
            max_in_flight: Some(max_in_flight),
            lease_ms,
        })),
    }
}

fn settle(action: SettleAction, ids: &[&str]) -> ProcessRequest {
    ProcessRequest {
        request: Some(process_request::Request::Settle(Settle {
            action: action as i32,
            ack_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            delay_ms: (action == SettleAction::Nack).then_some(0),
            lease_ms: (action == SettleAction::Extend).then_some(60_000),
            reason: if action == SettleAction::Terminate {
                "bad input".into()
            } else {
                String::new()
            },
        })),
    }
}

/// One side of a `Process` stream, checking `max_in_flight` on everything it receives.
struct Processor {
    tx: mpsc::Sender<ProcessRequest>,
    rx: Streaming<ProcessResponse>,
    max_in_flight: usize,
    /// Deliveries received and not yet settled (ack, nack or terminate) by us.
    unsettled: BTreeMap<String, Delivery>,
    settled: Vec<Settled>,
}

impl Processor {
    async fn open(api: &mut Api, start: ProcessRequest, max_in_flight: usize) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(start).await.expect("send start");
        let rx = ok(api.shared.process(ReceiverStream::new(rx)).await);
        Processor {
            tx,
            rx,
            max_in_flight,
            unsettled: BTreeMap::new(),
            settled: Vec::new(),
        }
    }

    /// Handles one response.
    async fn step(&mut self) {
        match next(&mut self.rx, "process").await.response {
            Some(process_response::Response::Deliveries(r)) => {
                assert!(!r.deliveries.is_empty(), "an empty deliveries response");
                for d in r.deliveries {
                    self.unsettled.insert(d.ack_id.clone(), d);
                }
                assert!(
                    self.unsettled.len() <= self.max_in_flight,
                    "max_in_flight {} exceeded: {:?}",
                    self.max_in_flight,
                    self.unsettled
                        .values()
                        .map(|d| &d.message)
                        .collect::<Vec<_>>()
                );
            }
            Some(process_response::Response::Settled(s)) => self.settled.push(s),
            None => panic!("an empty ProcessResponse"),
        }
    }

    /// Reads until at least `n` deliveries are unsettled.
    async fn until_unsettled(&mut self, n: usize) {
        while self.unsettled.len() < n {
            self.step().await;
        }
    }

    /// Sends a settle and reads until its answer; answers the outcomes.
    async fn settle(&mut self, action: SettleAction, ids: &[&str]) -> Settled {
        self.tx
            .send(settle(action, ids))
            .await
            .expect("the stream is open");
        if action != SettleAction::Extend {
            for id in ids {
                self.unsettled.remove(*id);
            }
        }
        while self.settled.is_empty() {
            self.step().await;
        }
        let s = self.settled.remove(0);
        assert_eq!(s.action, action as i32, "{s:?}");
        s
    }

    /// The oldest unsettled delivery.
    fn first(&self) -> Delivery {
        self.unsettled
            .values()
            .min_by_key(|d| d.message.as_ref().map(|m| m.offset))
            .cloned()
            .expect("an unsettled delivery")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_streams_deliveries_and_settles_within_max_in_flight() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "pr", None).await;
    ok(api
        .subs
        .create_subscription(shared_sub("pr", "w", no_backoff()))
        .await);
    publish(
        &mut api,
        "pr",
        (0..5).map(|i| msg(&format!("p{i}"))).collect(),
    )
    .await;

    let mut p = Processor::open(&mut api, start("pr", "w", 2, None), 2).await;
    p.until_unsettled(2).await;
    let first_two: BTreeSet<String> = p
        .unsettled
        .values()
        .map(|d| value(d.message.as_ref().expect("message")).to_owned())
        .collect();
    assert_eq!(first_two, BTreeSet::from(["p0".into(), "p1".into()]));
    // Exactly two leased while both are unsettled.
    assert_eq!(get_sub(&mut api, "pr", "w").await.in_flight, 2);

    // Ack one: the outcome comes back as `settled`, and the next delivery follows.
    let d0 = p.first();
    let r = p.settle(SettleAction::Ack, &[&d0.ack_id]).await;
    assert_eq!(outcomes(&r.outcomes), [(d0.ack_id.as_str(), None)]);
    p.until_unsettled(2).await;
    // Extend one (still unsettled).
    let d1 = p.first();
    let r = p.settle(SettleAction::Extend, &[&d1.ack_id]).await;
    assert_eq!(outcomes(&r.outcomes), [(d1.ack_id.as_str(), None)]);
    // Nack one with no delay: delivered again on the stream, delivery_count 2.
    let r = p.settle(SettleAction::Nack, &[&d1.ack_id]).await;
    assert_eq!(outcomes(&r.outcomes), [(d1.ack_id.as_str(), None)]);
    let mut redelivered = None;
    let mut done: BTreeSet<String> = BTreeSet::from(["p0".to_owned()]);
    // Ack everything else as it comes; terminate p4.
    while done.len() < 5 {
        p.until_unsettled(1).await;
        let d = p.first();
        let m = d.message.clone().expect("message");
        let v = value(&m).to_owned();
        if v == value(d1.message.as_ref().expect("message")) {
            assert_eq!(d.delivery_count, 2, "{d:?}");
            redelivered = Some(d.clone());
        } else {
            assert_eq!(d.delivery_count, 1, "{d:?}");
        }
        let action = if v == "p4" {
            SettleAction::Terminate
        } else {
            SettleAction::Ack
        };
        let r = p.settle(action, &[&d.ack_id]).await;
        assert_eq!(outcomes(&r.outcomes), [(d.ack_id.as_str(), None)]);
        assert!(done.insert(v.clone()), "{v} delivered twice: {d:?}");
    }
    assert!(redelivered.is_some(), "the nacked message came back");
    let d = get_sub(&mut api, "pr", "w").await;
    assert_eq!(d.in_flight, 0);
    assert_eq!(committed(&d), [(5, 0)]);
    assert_eq!(d.dead_lettered, 1);
    let dl = ok(api
        .subs
        .list_dead_letters(ListDeadLettersRequest {
            topic: "pr".into(),
            subscription: "w".into(),
            ..ListDeadLettersRequest::default()
        })
        .await);
    assert_eq!(values(&dl.messages), ["p4"]);
    assert_eq!(
        dl.messages[0]
            .headers
            .get("wharf-dlq-reason")
            .map(String::as_str),
        Some("bad input")
    );
    // Unknown and stale ack ids: per-id outcomes, the stream stays open.
    let r = p
        .settle(SettleAction::Ack, &["not-an-ack-id", &d0.ack_id])
        .await;
    assert_eq!(
        outcomes(&r.outcomes),
        [
            ("not-an-ack-id", Some("bad_ack_id")),
            (d0.ack_id.as_str(), Some("lease_expired"))
        ]
    );
    // Live messages arrive on the open stream.
    publish(&mut api, "pr", vec![msg("p5")]).await;
    p.until_unsettled(1).await;
    let d = p.first();
    assert_eq!(value(d.message.as_ref().expect("message")), "p5");
    p.settle(SettleAction::Ack, &[&d.ack_id]).await;
    // Closing our side ends the call.
    let Processor { tx, mut rx, .. } = p;
    drop(tx);
    match within("the end of the stream", rx.message()).await {
        Ok(None) => {}
        other => panic!("expected the stream to end cleanly, got {other:?}"),
    }
    s.stop().await;
}

/// Settles sent back to back, without waiting for answers, then the request half closed:
/// every settle takes effect and is answered, in the order sent, before the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_answers_pipelined_settles_in_order_before_the_stream_ends() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "pp", None).await;
    ok(api
        .subs
        .create_subscription(shared_sub("pp", "w", no_backoff()))
        .await);
    publish(
        &mut api,
        "pp",
        (0..4).map(|i| msg(&format!("p{i}"))).collect(),
    )
    .await;
    let mut p = Processor::open(&mut api, start("pp", "w", 4, None), 4).await;
    p.until_unsettled(4).await;
    let mut ds: Vec<Delivery> = p.unsettled.values().cloned().collect();
    ds.sort_by_key(|d| d.message.as_ref().map(|m| m.offset));
    let id = |i: usize| ds[i].ack_id.as_str();
    let sent = [
        (SettleAction::Ack, vec![id(0)]),
        (SettleAction::Extend, vec![id(1)]),
        (SettleAction::Terminate, vec![id(2)]),
        (SettleAction::Ack, vec![id(1), id(3)]),
    ];
    for (action, ids) in &sent {
        p.tx.send(settle(*action, ids))
            .await
            .expect("the stream is open");
    }
    let Processor { tx, mut rx, .. } = p;
    drop(tx);
    let mut answers = Vec::new();
    loop {
        match within("the answers, then the end", rx.message()).await {
            Ok(Some(ProcessResponse {
                response: Some(process_response::Response::Settled(r)),
            })) => answers.push(r),
            Ok(Some(other)) => panic!("only settle answers were due, got {other:?}"),
            Ok(None) => break,
            Err(e) => panic!("the stream failed: {e:?}"),
        }
    }
    assert_eq!(answers.len(), sent.len(), "{answers:?}");
    for (r, (action, ids)) in answers.iter().zip(&sent) {
        assert_eq!(r.action, *action as i32, "{answers:?}");
        let want: Vec<(&str, Option<&str>)> = ids.iter().map(|i| (*i, None)).collect();
        assert_eq!(outcomes(&r.outcomes), want);
    }
    let d = get_sub(&mut api, "pp", "w").await;
    assert_eq!(d.in_flight, 0);
    assert_eq!(committed(&d), [(4, 0)]);
    assert_eq!(d.dead_lettered, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_deliveries_left_unsettled_come_back_after_their_lease() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "pl", None).await;
    ok(api
        .subs
        .create_subscription(shared_sub("pl", "w", no_backoff()))
        .await);
    publish(&mut api, "pl", vec![msg("left")]).await;
    let mut p = Processor::open(&mut api, start("pl", "w", 1, Some(1000)), 1).await;
    p.until_unsettled(1).await;
    let d = p.first();
    assert_eq!(d.delivery_count, 1);
    drop(p);
    // Back after the 1 s lease: a long-poll picks it up.
    let ds = ok(api
        .shared
        .receive(ReceiveRequest {
            wait_ms: Some(20_000),
            ..receive_req("pl", "w")
        })
        .await)
    .deliveries;
    assert_eq!(delivered(&ds), ["left"]);
    assert_eq!(ds[0].delivery_count, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_refuses_a_bad_start() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "pb", None).await;
    ok(api
        .subs
        .create_subscription(shared_sub("pb", "w", SharedConfig::default()))
        .await);
    let call = |first: ProcessRequest| {
        let mut api = api.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            tx.send(first).await.expect("send");
            let r = api.shared.process(ReceiverStream::new(rx)).await;
            let e = stream_error(r).await;
            drop(tx);
            e
        }
    };
    // Settle before start.
    let e = call(settle(SettleAction::Ack, &["x"])).await;
    assert_status(&e, Code::InvalidArgument, "invalid_argument");
    let e = call(ProcessRequest { request: None }).await;
    assert_status(&e, Code::InvalidArgument, "invalid_argument");
    let e = call(start("pb", "nope", 1, None)).await;
    assert_status(&e, Code::NotFound, "subscription_not_found");
    let e = call(start("pb", "w", 0, None)).await;
    assert_status(&e, Code::InvalidArgument, "invalid_argument");
    let e = call(start("pb", "w", 1, Some(5))).await;
    assert_status(&e, Code::InvalidArgument, "invalid_argument");
    // A second start, or a settle without an action, ends the stream with INVALID_ARGUMENT.
    for second in [
        start("pb", "w", 1, None),
        settle(SettleAction::Unspecified, &["x"]),
        ProcessRequest { request: None },
    ] {
        let (tx, rx) = mpsc::channel(2);
        tx.send(start("pb", "w", 1, None)).await.expect("send");
        let mut st = ok(api.shared.process(ReceiverStream::new(rx)).await);
        tx.send(second.clone()).await.expect("send");
        let e = loop {
            match within("the stream's error", st.message()).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended cleanly after {second:?}"),
                Err(e) => break e,
            }
        };
        assert_status(&e, Code::InvalidArgument, "invalid_argument");
        drop(tx);
    }
    s.stop().await;
}

// ---- operations -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_topics_and_subscriptions() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "m1", partitions(2)).await;
    publish(&mut api, "m1", vec![msg("aa"), msg("bb"), msg("cc")]).await;
    ok(api
        .subs
        .create_subscription(stream_sub("m1", "s", StreamConfig::default()))
        .await);
    ok(api
        .subs
        .create_subscription(shared_sub("m1", "q", SharedConfig::default()))
        .await);
    let ds = ok(api
        .shared
        .receive(ReceiveRequest {
            member: Some("w".into()),
            max: Some(1),
            ..receive_req("m1", "q")
        })
        .await)
    .deliveries;
    assert_eq!(ds.len(), 1);
    ok(api
        .stream
        .join(JoinRequest {
            topic: "m1".into(),
            subscription: "s".into(),
            member_id: None,
        })
        .await);

    let stats = ok(api.ops.get_stats(GetStatsRequest {}).await);
    assert_eq!(stats.engine, "embedded");
    assert!(stats.writable);
    assert_eq!(stats.version, env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> = stats.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["m1", "wharf.dlq.m1.q"]);
    let sub = |name: &str, kind: &str, in_flight: u64| SubscriptionStats {
        name: name.into(),
        kind: kind.into(),
        lag: 3,
        in_flight,
        delayed: 0,
        dead_lettered: 0,
        members: 1,
    };
    assert_eq!(
        stats.topics[0],
        TopicStats {
            name: "m1".into(),
            partitions: 2,
            messages: 3,
            subscriptions: vec![sub("q", "shared", 1), sub("s", "stream", 0)],
        }
    );
    assert_eq!(stats.topics[1].messages, 0);
    s.stop().await;
}

// ---- errors, auth, trace context ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_and_bad_names_across_services() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    // A missing topic: NOT_FOUND topic_not_found from every service.
    {
        let topic = "nope";
        let check = |what: &str, got: Result<(), Status>| {
            let e = got.expect_err(what);
            assert_status(&e, Code::NotFound, "topic_not_found");
        };
        check(
            "get topic",
            api.topics
                .get_topic(GetTopicRequest { name: topic.into() })
                .await
                .map(|_| ()),
        );
        check(
            "delete topic",
            api.topics
                .delete_topic(DeleteTopicRequest { name: topic.into() })
                .await
                .map(|_| ()),
        );
        check(
            "publish",
            api.messages
                .publish(publish_req(topic, vec![msg("x")]))
                .await
                .map(|_| ()),
        );
        check(
            "read",
            api.messages
                .read(read_req(topic, 0, None))
                .await
                .map(|_| ()),
        );
        check(
            "create subscription",
            api.subs
                .create_subscription(stream_sub(topic, "s", StreamConfig::default()))
                .await
                .map(|_| ()),
        );
        check(
            "list subscriptions",
            api.subs
                .list_subscriptions(ListSubscriptionsRequest {
                    topic: topic.into(),
                })
                .await
                .map(|_| ()),
        );
        check(
            "join",
            api.stream
                .join(JoinRequest {
                    topic: topic.into(),
                    subscription: "s".into(),
                    member_id: None,
                })
                .await
                .map(|_| ()),
        );
        check(
            "receive",
            api.shared
                .receive(receive_req(topic, "s"))
                .await
                .map(|_| ()),
        );
        check(
            "ack",
            api.shared
                .ack(ack_req(topic, "s", &["0.0.0.1"]))
                .await
                .map(|_| ()),
        );
        check(
            "dead letters",
            api.subs
                .list_dead_letters(ListDeadLettersRequest {
                    topic: topic.into(),
                    subscription: "s".into(),
                    ..ListDeadLettersRequest::default()
                })
                .await
                .map(|_| ()),
        );
    }
    // Names are checked where things are created (lookups of a name that cannot exist are
    // NOT_FOUND, as on REST): INVALID_ARGUMENT invalid_name.
    create_topic(&mut api, "t", None).await;
    for bad in ["Bad", "a b", "wharf.x", ""] {
        let check = |what: &str, got: Result<(), Status>| {
            let e = got.expect_err(what);
            assert_status(&e, Code::InvalidArgument, "invalid_name");
        };
        check(
            "create topic",
            api.topics
                .create_topic(CreateTopicRequest {
                    name: bad.into(),
                    config: None,
                })
                .await
                .map(|_| ()),
        );
        check(
            "create queue",
            api.topics
                .create_queue(CreateQueueRequest {
                    name: bad.into(),
                    ..CreateQueueRequest::default()
                })
                .await
                .map(|_| ()),
        );
        check(
            "publish creating a queue",
            api.messages
                .publish(PublishRequest {
                    topic: bad.into(),
                    messages: vec![msg("x")],
                    create_queue: true,
                })
                .await
                .map(|_| ()),
        );
        check(
            "create subscription",
            api.subs
                .create_subscription(stream_sub("t", bad, StreamConfig::default()))
                .await
                .map(|_| ()),
        );
    }
    let list = ok(api.topics.list_topics(ListTopicsRequest {}).await);
    let names: Vec<&str> = list.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["t"], "nothing was created");
    s.stop().await;
}

const ADMIN: &str = "admin-secret-0123456789";
const PUBLISHER: &str = "publisher-secret-0123456789";
const CONSUMER: &str = "consumer-secret-0123456789";
const METRICS: &str = "metrics-secret-0123456789";
const ORDERS: &str = "orders-secret-0123456789";

fn token(name: &str, token: &str, scopes: &[&str]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        token: token.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_unauthenticated_and_permission_denied() {
    let s = TestServer::builder()
        .config(|c| {
            c.auth.tokens.push(token("admin", ADMIN, &["admin"]));
            c.auth.tokens.push(token("pub", PUBLISHER, &["publish"]));
            c.auth.tokens.push(token("con", CONSUMER, &["consume"]));
            c.auth.tokens.push(token("metrics", METRICS, &["metrics"]));
            c.auth
                .tokens
                .push(token("orders", ORDERS, &["publish:orders.*"]));
        })
        .token(ADMIN)
        .start()
        .await;
    let mut api = api(&s).await;
    let create = |name: &str| CreateTopicRequest {
        name: name.into(),
        config: None,
    };

    // No token, an unknown token, a malformed header: UNAUTHENTICATED, nothing created.
    err(
        api.topics.create_topic(create("t")).await,
        Code::Unauthenticated,
        "unauthenticated",
    );
    err(
        api.topics
            .create_topic(authed(create("t"), "not-a-known-token-0123456789"))
            .await,
        Code::Unauthenticated,
        "unauthenticated",
    );
    let mut basic = Request::new(create("t"));
    basic.metadata_mut().insert(
        "authorization",
        "Basic YWRtaW46YWRtaW4=".parse().expect("ascii"),
    );
    err(
        api.topics.create_topic(basic).await,
        Code::Unauthenticated,
        "unauthenticated",
    );
    err(
        api.ops.get_stats(GetStatsRequest {}).await,
        Code::Unauthenticated,
        "unauthenticated",
    );
    // Streams too.
    let e = stream_error(
        api.stream
            .consume(ConsumeRequest {
                topic: "t".into(),
                subscription: "g".into(),
                ..ConsumeRequest::default()
            })
            .await,
    )
    .await;
    assert_status(&e, Code::Unauthenticated, "unauthenticated");

    // The wrong scope: PERMISSION_DENIED, nothing created.
    err(
        api.topics.create_topic(authed(create("t"), CONSUMER)).await,
        Code::PermissionDenied,
        "forbidden",
    );
    err(
        api.topics
            .create_topic(authed(create("t"), PUBLISHER))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );
    err(
        api.topics
            .get_topic(authed(GetTopicRequest { name: "t".into() }, ADMIN))
            .await,
        Code::NotFound,
        "topic_not_found",
    );

    // The right scope.
    ok(api.topics.create_topic(authed(create("t"), ADMIN)).await);
    ok(api
        .subs
        .create_subscription(authed(stream_sub("t", "g", StreamConfig::default()), ADMIN))
        .await);
    // Scopes are independent: admin does not publish.
    err(
        api.messages
            .publish(authed(publish_req("t", vec![msg("x")]), ADMIN))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );
    err(
        api.messages
            .publish(authed(publish_req("t", vec![msg("x")]), CONSUMER))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );
    ok(api
        .messages
        .publish(authed(publish_req("t", vec![msg("x")]), PUBLISHER))
        .await);
    // Reading needs consume.
    err(
        api.messages
            .read(authed(read_req("t", 0, None), PUBLISHER))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );
    let r = ok(api
        .messages
        .read(authed(read_req("t", 0, None), CONSUMER))
        .await);
    assert_eq!(values(&r.messages), ["x"]);
    // Consume (a stream) with consume; reset needs admin.
    let e = stream_error(
        api.stream
            .consume(authed(
                ConsumeRequest {
                    topic: "t".into(),
                    subscription: "g".into(),
                    ..ConsumeRequest::default()
                },
                PUBLISHER,
            ))
            .await,
    )
    .await;
    assert_status(&e, Code::PermissionDenied, "forbidden");
    let mut st = ok(api
        .stream
        .consume(authed(
            ConsumeRequest {
                topic: "t".into(),
                subscription: "g".into(),
                ..ConsumeRequest::default()
            },
            CONSUMER,
        ))
        .await);
    assignment(&mut st).await;
    assert_eq!(values(&consume_messages(&mut st, 1).await), ["x"]);
    drop(st);
    let reset = ResetSubscriptionRequest {
        topic: "t".into(),
        name: "g".into(),
        to: Some(reset_subscription_request::To::Edge(Edge::Earliest as i32)),
    };
    err(
        api.subs
            .reset_subscription(authed(reset.clone(), CONSUMER))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );
    ok(api.subs.reset_subscription(authed(reset, ADMIN)).await);
    // Publishing with create_queue needs the publish scope only.
    ok(api
        .messages
        .publish(authed(
            PublishRequest {
                topic: "jobs".into(),
                messages: vec![msg("j")],
                create_queue: true,
            },
            PUBLISHER,
        ))
        .await);
    // Creating a queue outright is admin's.
    err(
        api.topics
            .create_queue(authed(
                CreateQueueRequest {
                    name: "jobs2".into(),
                    ..CreateQueueRequest::default()
                },
                PUBLISHER,
            ))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );
    // Stats: admin or metrics.
    err(
        api.ops
            .get_stats(authed(GetStatsRequest {}, CONSUMER))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );
    ok(api.ops.get_stats(authed(GetStatsRequest {}, METRICS)).await);
    ok(api.ops.get_stats(authed(GetStatsRequest {}, ADMIN)).await);

    // Pattern scopes: matching names only; the list shows only what the token may see.
    ok(api
        .topics
        .create_topic(authed(create("orders.eu"), ADMIN))
        .await);
    ok(api
        .messages
        .publish(authed(publish_req("orders.eu", vec![msg("o")]), ORDERS))
        .await);
    err(
        api.messages
            .publish(authed(publish_req("t", vec![msg("o")]), ORDERS))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );
    let list = ok(api
        .topics
        .list_topics(authed(ListTopicsRequest {}, ORDERS))
        .await);
    let names: Vec<&str> = list.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["orders.eu"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_and_stored() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "traced", None).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answered = |r: &Response<PublishResponse>| {
        r.metadata()
            .get("traceparent")
            .expect("traceparent answered")
            .to_str()
            .expect("ascii")
            .to_owned()
    };

    let mut req = Request::new(publish_req("traced", vec![msg("with")]));
    req.metadata_mut()
        .insert("traceparent", incoming.parse().expect("ascii"));
    let with = answered(&api.messages.publish(req).await.expect("publish"));
    let (trace, span) = traceparent(&with);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(span, "00f067aa0ba902b7");
    assert!(with.ends_with("-01"), "{with}");

    // Without one: a fresh trace.
    let without = answered(
        &api.messages
            .publish(publish_req("traced", vec![msg("without")]))
            .await
            .expect("publish"),
    );
    let (fresh, _) = traceparent(&without);
    assert_ne!(fresh, trace);

    // A malformed one is ignored: a fresh trace too.
    let mut req = Request::new(publish_req("traced", vec![msg("malformed")]));
    req.metadata_mut().insert(
        "traceparent",
        "00-zz-00f067aa0ba902b7-01".parse().expect("ascii"),
    );
    let malformed = answered(&api.messages.publish(req).await.expect("publish"));
    assert_ne!(traceparent(&malformed).0, trace);

    // A message with its own traceparent header keeps it.
    let own = "00-11111111111111111111111111111111-2222222222222222-00";
    publish(
        &mut api,
        "traced",
        vec![msg_with("own", &[("traceparent", own)])],
    )
    .await;

    // A publish stream continues the call's trace on every message.
    let mut req = Request::new(tokio_stream::iter(vec![
        publish_req("traced", vec![msg("stream-1")]),
        publish_req("traced", vec![msg("stream-2")]),
    ]));
    req.metadata_mut()
        .insert("traceparent", incoming.parse().expect("ascii"));
    let r = api.messages.publish_stream(req).await.expect("stream");
    let streamed = r
        .metadata()
        .get("traceparent")
        .expect("traceparent answered")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(traceparent(&streamed).0, trace);

    let read = ok(api.messages.read(read_req("traced", 0, None)).await);
    let ms = &read.messages;
    assert_eq!(
        values(ms),
        [
            "with",
            "without",
            "malformed",
            "own",
            "stream-1",
            "stream-2"
        ]
    );
    let stored = |i: usize| {
        ms[i]
            .headers
            .get("traceparent")
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no traceparent stored on {:?}", ms[i]))
    };
    // Stored: the server's span in the caller's trace, as the response announced it.
    assert_eq!(stored(0), with);
    assert_eq!(stored(1), without);
    assert_eq!(stored(2), malformed);
    assert_eq!(stored(3), own);
    assert_eq!(stored(4), streamed);
    assert_eq!(stored(5), streamed);

    // Every answer carries one: reads, errors and streams too.
    let mut req = Request::new(GetTopicRequest {
        name: "traced".into(),
    });
    req.metadata_mut()
        .insert("traceparent", incoming.parse().expect("ascii"));
    let r = api.topics.get_topic(req).await.expect("get");
    let got = r
        .metadata()
        .get("traceparent")
        .expect("traceparent")
        .to_str()
        .expect("ascii");
    assert_eq!(traceparent(got).0, trace);
    let mut req = Request::new(GetTopicRequest {
        name: "nope".into(),
    });
    req.metadata_mut()
        .insert("traceparent", incoming.parse().expect("ascii"));
    let e = api.topics.get_topic(req).await.expect_err("missing");
    let got = e
        .metadata()
        .get("traceparent")
        .expect("traceparent on an error")
        .to_str()
        .expect("ascii");
    assert_eq!(traceparent(got).0, trace);
    s.stop().await;
}

/// A delivery the client neither settles nor extends stops counting against `max_in_flight`
/// when its lease ends (the broker delivers it again), so a `Process` stream never stalls; and
/// a settle with bad values is answered per id without ending the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_frees_slots_of_expired_leases_and_survives_bad_settles() {
    let s = TestServer::start().await;
    let mut api = api(&s).await;
    create_topic(&mut api, "px", None).await;
    // Long enough that the settles below come back well within the second lease on a loaded
    // machine (200 ms was not: the lease ran out again before the extend was answered).
    let config = SharedConfig {
        lease_ms: Some(1_500),
        backoff_initial_ms: Some(0),
        backoff_jitter_pct: Some(0),
        max_deliveries: Some(10),
        ..SharedConfig::default()
    };
    ok(api
        .subs
        .create_subscription(shared_sub("px", "w", config))
        .await);
    publish(&mut api, "px", vec![msg("only")]).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(start("px", "w", 1, None)).await.expect("send");
    let mut st = ok(api.shared.process(ReceiverStream::new(rx)).await);
    let first = match next(&mut st, "first delivery").await.response {
        Some(process_response::Response::Deliveries(r)) => r.deliveries,
        other => panic!("expected deliveries, got {other:?}"),
    };
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].delivery_count, 1);
    // Never settled: after its lease the stream's only slot is free and it comes again.
    let again = match next(&mut st, "redelivery after the lease").await.response {
        Some(process_response::Response::Deliveries(r)) => r.deliveries,
        other => panic!("expected deliveries, got {other:?}"),
    };
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_count, 2);
    let id = again[0].ack_id.clone();
    // An extend to a lease out of range: answered per id; the stream goes on.
    let mut bad = settle(SettleAction::Extend, &[&id]);
    if let Some(process_request::Request::Settle(x)) = &mut bad.request {
        x.lease_ms = Some(5);
    }
    tx.send(bad).await.expect("send");
    let settled = match next(&mut st, "the refused extend").await.response {
        Some(process_response::Response::Settled(s)) => s,
        other => panic!("expected settled, got {other:?}"),
    };
    assert_eq!(settled.outcomes.len(), 1);
    assert_eq!(
        settled.outcomes[0].error.as_deref(),
        Some("invalid_argument")
    );
    // The delivery is still ours: ack it.
    tx.send(settle(SettleAction::Ack, &[&id]))
        .await
        .expect("send");
    let settled = match next(&mut st, "the ack").await.response {
        Some(process_response::Response::Settled(s)) => s,
        other => panic!("expected settled, got {other:?}"),
    };
    assert_eq!(settled.outcomes[0].error, None, "{settled:?}");
    drop(tx);
    s.stop().await;
}

// ---- apps -----------------------------------------------------------------------------------

/// `Apps`: every RPC, the defaults filled in, bad input refused without a change.
#[tokio::test]
async fn apps_registry_over_grpc() {
    use wharf_proto::v1::apps_client::AppsClient;
    use wharf_proto::v1::{
        AppPolicy, DeleteAppRequest, DeregisterInstanceRequest, GetAppRequest, ListAppsRequest,
        PutAppRequest, RegisterInstanceRequest, StaticInstance,
    };
    let s = TestServer::start().await;
    let channel = Channel::from_shared(s.base.clone())
        .expect("endpoint")
        .timeout(TIMEOUT)
        .connect()
        .await
        .expect("connect");
    let mut apps = AppsClient::new(channel);
    let app = ok(apps
        .put_app(PutAppRequest {
            name: "orders".into(),
            policy: Some(AppPolicy {
                max_concurrency: Some(7),
                retry_max_attempts: Some(2),
                ..AppPolicy::default()
            }),
            grpc_services: vec!["shop.Orders".into()],
            instances: vec![StaticInstance {
                id: "s1".into(),
                address: "http://127.0.0.1:9".into(),
                http2: true,
            }],
        })
        .await);
    let policy = app.policy.expect("policy");
    assert_eq!(policy.max_concurrency, Some(7));
    assert_eq!(policy.retry_max_attempts, Some(2));
    assert_eq!(policy.timeout_ms, Some(15_000), "defaults filled in");
    assert_eq!(app.breaker, "closed");
    let i = ok(apps
        .register_instance(RegisterInstanceRequest {
            app: "orders".into(),
            id: "r1".into(),
            address: "http://127.0.0.1:10".into(),
            ttl_ms: 60_000,
            http2: false,
        })
        .await);
    assert_eq!(i.state, "healthy");
    assert!(i.expires_in_ms > 0 && i.expires_in_ms <= 60_000);
    let got = ok(apps
        .get_app(GetAppRequest {
            name: "orders".into(),
        })
        .await);
    let ids: Vec<&str> = got.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["s1", "r1"]);
    assert_eq!(got.instances[0].expires_in_ms, 0, "static");
    let list = ok(apps.list_apps(ListAppsRequest {}).await);
    assert_eq!(list.apps.len(), 1);
    // Bad input: a clear error, nothing changed.
    err(
        apps.register_instance(RegisterInstanceRequest {
            app: "orders".into(),
            id: "bad".into(),
            address: "ftp://x".into(),
            ttl_ms: 0,
            http2: false,
        })
        .await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    err(
        apps.put_app(PutAppRequest {
            name: "orders".into(),
            policy: Some(AppPolicy {
                retry_max_attempts: Some(0),
                ..AppPolicy::default()
            }),
            ..PutAppRequest::default()
        })
        .await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    assert_eq!(
        ok(apps
            .get_app(GetAppRequest {
                name: "orders".into()
            })
            .await)
        .instances
        .len(),
        2
    );
    ok(apps
        .deregister_instance(DeregisterInstanceRequest {
            app: "orders".into(),
            id: "r1".into(),
        })
        .await);
    ok(apps
        .delete_app(DeleteAppRequest {
            name: "orders".into(),
        })
        .await);
    err(
        apps.get_app(GetAppRequest {
            name: "orders".into(),
        })
        .await,
        Code::NotFound,
        "app_not_found",
    );
}
