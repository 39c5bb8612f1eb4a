//! Malformed gRPC requests never break the server: property tests against one running server.
//!
//! One server (on the in-memory [`FaultFs`], so nothing touches the disk) is started once on
//! a shared multi-thread runtime, with a topic of two partitions holding messages, a stream
//! subscription with a live member, a shared subscription with leased deliveries and a dead
//! letter, and a queue, so that requests reach deep into the handlers. Then the protobuf
//! payload of every unary RPC of every service is sent as raw gRPC frames over HTTP/2 (tonic's
//! client with a codec that passes bytes through):
//! - (a) random bytes;
//! - (b) valid encodings of real requests (real names, member id and ack ids), mutated: bits
//!   flipped, bytes inserted, deleted and overwritten, truncated, and fields appended (known
//!   tags with other values or wire types, unknown tags), so that many still decode but mean
//!   something odd;
//! - (c) fixed edge cases: empty (every field at its default), truncated tags, lengths and
//!   varints, overlong varints, field 0, groups nested past any sane depth.
//!
//! Every answer must be a well-formed gRPC answer: a message that decodes as the method's
//! response type, or a status with a message and a `wharf-error-code`. A payload that does not
//! decode as the method's request type must be `INVALID_ARGUMENT` (`invalid_argument`); one
//! that decodes may get any client-error status. Never `INTERNAL`, `UNKNOWN`, `UNAVAILABLE`,
//! `DATA_LOSS`, `UNIMPLEMENTED`, nor a dropped connection; and after each property the server
//! still answers normal requests.
//!
//! Cases per property: `WHARF_PROPTEST_CASES / 4` if set, else 64. Each case sends its input
//! to every method.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use wharf_log::vfs::fault::FaultFs;
use wharf_proto::v1::*;
use wharf_test::TestServer;

/// Longest long-poll the fuzzed requests may ask for.
const MAX_WAIT_MS: u64 = 20;
/// Per request: generous, for a loaded machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---- a codec that passes bytes through ------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

// ---- the methods ----------------------------------------------------------------------------

/// A unary method: its path, a valid request (encoded), and checks of its request and
/// response types.
struct Method {
    path: &'static str,
    valid: Vec<u8>,
    /// Whether bytes decode as the request type.
    request_decodes: fn(&[u8]) -> bool,
    /// Whether bytes decode as the response type.
    response_decodes: fn(&[u8]) -> bool,
}

macro_rules! method {
    ($path:literal, $req:ty, $resp:ty, $valid:expr) => {
        Method {
            path: $path,
            valid: {
                let v: $req = $valid;
                v.encode_to_vec()
            },
            request_decodes: |b| <$req>::decode(b).is_ok(),
            response_decodes: |b| <$resp>::decode(b).is_ok(),
        }
    };
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn at(edge: Edge) -> Option<Position> {
    Some(Position {
        at: Some(position::At::Edge(edge as i32)),
    })
}

/// Every unary method of every service, with a valid request on the fixture's names.
fn methods(member: &str, ack_ids: &[String]) -> Vec<Method> {
    let ids = |n: usize| ack_ids.iter().take(n).cloned().collect::<Vec<_>>();
    vec![
        method!(
            "/wharf.v1.Topics/CreateTopic",
            CreateTopicRequest,
            Topic,
            CreateTopicRequest {
                name: s("fuzz"),
                config: Some(TopicConfig {
                    partitions: Some(2),
                    durability: Durability::Always as i32,
                    dedup_window_ms: Some(120_000),
                    ..TopicConfig::default()
                }),
            }
        ),
        method!(
            "/wharf.v1.Topics/GetTopic",
            GetTopicRequest,
            Topic,
            GetTopicRequest { name: s("fuzz") }
        ),
        method!(
            "/wharf.v1.Topics/ListTopics",
            ListTopicsRequest,
            ListTopicsResponse,
            ListTopicsRequest {}
        ),
        method!(
            "/wharf.v1.Topics/DeleteTopic",
            DeleteTopicRequest,
            DeleteTopicResponse,
            DeleteTopicRequest {
                name: s("fuzz-doomed")
            }
        ),
        method!(
            "/wharf.v1.Topics/CreateQueue",
            CreateQueueRequest,
            Queue,
            CreateQueueRequest {
                name: s("fuzzq"),
                topic: None,
                shared: Some(SharedConfig {
                    max_deliveries: Some(3),
                    ..SharedConfig::default()
                }),
            }
        ),
        method!(
            "/wharf.v1.Messages/Publish",
            PublishRequest,
            PublishResponse,
            PublishRequest {
                topic: s("fuzz"),
                messages: vec![PublishMessage {
                    key: Some(Bytes::from_static(b"k1")),
                    value: Bytes::from_static(b"v"),
                    headers: [(s("wharf-message-id"), s("m-1"))].into(),
                    partition: Some(1),
                }],
                create_queue: false,
            }
        ),
        method!(
            "/wharf.v1.Messages/Read",
            ReadRequest,
            ReadResponse,
            ReadRequest {
                topic: s("fuzz"),
                partition: 1,
                from: Some(Position {
                    at: Some(position::At::Offset(2)),
                }),
                max_messages: Some(5),
                max_bytes: Some(4096),
                wait_ms: Some(MAX_WAIT_MS),
            }
        ),
        method!(
            "/wharf.v1.Subscriptions/CreateSubscription",
            CreateSubscriptionRequest,
            Subscription,
            CreateSubscriptionRequest {
                topic: s("fuzz"),
                name: s("shared"),
                config: Some(create_subscription_request::Config::Shared(SharedConfig {
                    max_deliveries: Some(3),
                    lease_ms: Some(10_000),
                    backoff_initial_ms: Some(100),
                    backoff_max_ms: Some(1000),
                    backoff_jitter_pct: Some(10),
                    ordered_by_key: Some(false),
                    max_in_flight_per_member: Some(10),
                    start: at(Edge::Earliest),
                    push: None,
                })),
            }
        ),
        method!(
            "/wharf.v1.Subscriptions/GetSubscription",
            GetSubscriptionRequest,
            Subscription,
            GetSubscriptionRequest {
                topic: s("fuzz"),
                name: s("stream"),
            }
        ),
        method!(
            "/wharf.v1.Subscriptions/ListSubscriptions",
            ListSubscriptionsRequest,
            ListSubscriptionsResponse,
            ListSubscriptionsRequest { topic: s("fuzz") }
        ),
        method!(
            "/wharf.v1.Subscriptions/DeleteSubscription",
            DeleteSubscriptionRequest,
            DeleteSubscriptionResponse,
            DeleteSubscriptionRequest {
                topic: s("fuzz"),
                name: s("doomed"),
            }
        ),
        method!(
            "/wharf.v1.Subscriptions/ResetSubscription",
            ResetSubscriptionRequest,
            CommitResponse,
            ResetSubscriptionRequest {
                topic: s("fuzz"),
                name: s("stream"),
                to: Some(reset_subscription_request::To::Offsets(Offsets {
                    offsets: vec![Committed {
                        partition: 1,
                        offset: 1,
                    }],
                })),
            }
        ),
        method!(
            "/wharf.v1.Subscriptions/ListDeadLetters",
            ListDeadLettersRequest,
            ReadResponse,
            ListDeadLettersRequest {
                topic: s("fuzz"),
                subscription: s("shared"),
                offset: Some(0),
                max_messages: Some(3),
            }
        ),
        method!(
            "/wharf.v1.Subscriptions/Redrive",
            RedriveRequest,
            RedriveResponse,
            RedriveRequest {
                topic: s("fuzz"),
                subscription: s("shared"),
                max: Some(1),
            }
        ),
        method!(
            "/wharf.v1.StreamConsumer/Join",
            JoinRequest,
            Membership,
            JoinRequest {
                topic: s("fuzz"),
                subscription: s("stream"),
                member_id: Some(member.to_owned()),
            }
        ),
        method!(
            "/wharf.v1.StreamConsumer/Heartbeat",
            MemberRequest,
            Membership,
            MemberRequest {
                topic: s("fuzz"),
                subscription: s("stream"),
                member_id: member.to_owned(),
            }
        ),
        method!(
            "/wharf.v1.StreamConsumer/Leave",
            MemberRequest,
            LeaveResponse,
            MemberRequest {
                topic: s("fuzz"),
                subscription: s("stream"),
                member_id: s("fuzz-leaver"),
            }
        ),
        method!(
            "/wharf.v1.StreamConsumer/Fetch",
            FetchRequest,
            FetchResponse,
            FetchRequest {
                topic: s("fuzz"),
                subscription: s("stream"),
                member_id: member.to_owned(),
                max_messages: Some(3),
                max_bytes: Some(4096),
                wait_ms: Some(MAX_WAIT_MS),
            }
        ),
        method!(
            "/wharf.v1.StreamConsumer/Commit",
            CommitRequest,
            CommitResponse,
            CommitRequest {
                topic: s("fuzz"),
                subscription: s("stream"),
                member_id: member.to_owned(),
                offsets: vec![
                    Committed {
                        partition: 0,
                        offset: 1,
                    },
                    Committed {
                        partition: 1,
                        offset: 2,
                    },
                ],
            }
        ),
        method!(
            "/wharf.v1.SharedConsumer/Receive",
            ReceiveRequest,
            ReceiveResponse,
            ReceiveRequest {
                topic: s("fuzz"),
                subscription: s("shared"),
                member: Some(s("fuzzer")),
                max: Some(2),
                lease_ms: Some(600_000),
                wait_ms: Some(MAX_WAIT_MS),
            }
        ),
        method!(
            "/wharf.v1.SharedConsumer/Ack",
            AckRequest,
            SettleResponse,
            AckRequest {
                topic: s("fuzz"),
                subscription: s("shared"),
                ack_ids: ids(2),
            }
        ),
        method!(
            "/wharf.v1.SharedConsumer/Nack",
            NackRequest,
            SettleResponse,
            NackRequest {
                topic: s("fuzz"),
                subscription: s("shared"),
                ack_ids: ids(3),
                delay_ms: Some(1000),
            }
        ),
        method!(
            "/wharf.v1.SharedConsumer/Extend",
            ExtendRequest,
            SettleResponse,
            ExtendRequest {
                topic: s("fuzz"),
                subscription: s("shared"),
                ack_ids: ids(4),
                lease_ms: 60_000,
            }
        ),
        method!(
            "/wharf.v1.SharedConsumer/Terminate",
            TerminateRequest,
            SettleResponse,
            TerminateRequest {
                topic: s("fuzzq"),
                subscription: s("fuzzq"),
                ack_ids: ids(5),
                reason: s("fuzzed"),
            }
        ),
        method!(
            "/wharf.v1.Operations/GetStats",
            GetStatsRequest,
            Stats,
            GetStatsRequest {}
        ),
        method!(
            "/wharf.v1.Apps/PutApp",
            PutAppRequest,
            App,
            PutAppRequest {
                name: s("fuzzapp"),
                policy: Some(AppPolicy {
                    retry_max_attempts: Some(2),
                    ..AppPolicy::default()
                }),
                grpc_services: vec![s("fuzz.Svc")],
                instances: vec![],
            }
        ),
        method!(
            "/wharf.v1.Apps/RegisterInstance",
            RegisterInstanceRequest,
            Instance,
            RegisterInstanceRequest {
                app: s("fuzzapp"),
                id: s("i1"),
                address: s("http://127.0.0.1:9"),
                ttl_ms: 60_000,
                http2: false,
            }
        ),
        method!(
            "/wharf.v1.Apps/GetApp",
            GetAppRequest,
            App,
            GetAppRequest { name: s("fuzzapp") }
        ),
    ]
}

// ---- the fixture ----------------------------------------------------------------------------

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: TestServer,
    channel: Channel,
    methods: Vec<Method>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (server, channel, member, ack_ids) = rt.block_on(setup());
        let methods = methods(&member, &ack_ids);
        Fixture {
            rt,
            server,
            channel,
            methods,
        }
    })
}

/// A unary call with a typed request on the raw channel (for the setup and the checks).
async fn typed<Req: prost::Message, Resp: prost::Message + Default>(
    ch: &Channel,
    path: &'static str,
    req: Req,
) -> Result<Resp, Status> {
    let bytes = call(ch, path, Bytes::from(req.encode_to_vec())).await?;
    Ok(Resp::decode(bytes).expect("the answer decodes"))
}

async fn setup() -> (TestServer, Channel, String, Vec<String>) {
    let server = TestServer::builder()
        .vfs(FaultFs::new().shared())
        .data_dir(PathBuf::from("/wharf-grpc-fuzz/data"))
        .config(|c| c.limits.max_wait_ms = MAX_WAIT_MS)
        .start()
        .await;
    let ch = Channel::from_shared(server.base.clone())
        .expect("endpoint")
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .expect("connect");
    let create = |name: &str, partitions: u32| CreateTopicRequest {
        name: name.into(),
        config: Some(TopicConfig {
            partitions: Some(partitions),
            ..TopicConfig::default()
        }),
    };
    let _: Topic = typed(&ch, "/wharf.v1.Topics/CreateTopic", create("fuzz", 2))
        .await
        .expect("topic");
    let _: Topic = typed(
        &ch,
        "/wharf.v1.Topics/CreateTopic",
        create("fuzz-doomed", 1),
    )
    .await
    .expect("topic");
    for (name, config) in [
        (
            "stream",
            create_subscription_request::Config::Stream(StreamConfig::default()),
        ),
        (
            "shared",
            create_subscription_request::Config::Shared(SharedConfig {
                max_deliveries: Some(3),
                ..SharedConfig::default()
            }),
        ),
        (
            "doomed",
            create_subscription_request::Config::Stream(StreamConfig::default()),
        ),
    ] {
        let _: Subscription = typed(
            &ch,
            "/wharf.v1.Subscriptions/CreateSubscription",
            CreateSubscriptionRequest {
                topic: "fuzz".into(),
                name: name.into(),
                config: Some(config),
            },
        )
        .await
        .expect("subscription");
    }
    for name in ["fuzzq", "fuzz-streams"] {
        let _: Queue = typed(
            &ch,
            "/wharf.v1.Topics/CreateQueue",
            CreateQueueRequest {
                name: name.into(),
                ..CreateQueueRequest::default()
            },
        )
        .await
        .expect("queue");
    }
    let messages: Vec<PublishMessage> = (0..20)
        .map(|i| PublishMessage {
            key: Some(Bytes::from(format!("k{}", i % 4))),
            value: Bytes::from(format!("v{i}")),
            headers: [("h".to_owned(), "x".to_owned())].into(),
            partition: None,
        })
        .collect();
    for topic in ["fuzz", "fuzzq"] {
        let _: PublishResponse = typed(
            &ch,
            "/wharf.v1.Messages/Publish",
            PublishRequest {
                topic: topic.into(),
                messages: messages.clone(),
                create_queue: false,
            },
        )
        .await
        .expect("publish");
    }
    let m: Membership = typed(
        &ch,
        "/wharf.v1.StreamConsumer/Join",
        JoinRequest {
            topic: "fuzz".into(),
            subscription: "stream".into(),
            member_id: None,
        },
    )
    .await
    .expect("join");
    let _: Membership = typed(
        &ch,
        "/wharf.v1.StreamConsumer/Join",
        JoinRequest {
            topic: "fuzz".into(),
            subscription: "stream".into(),
            member_id: Some("fuzz-leaver".into()),
        },
    )
    .await
    .expect("join");
    let mut ack_ids = Vec::new();
    for (topic, sub) in [("fuzz", "shared"), ("fuzzq", "fuzzq")] {
        let r: ReceiveResponse = typed(
            &ch,
            "/wharf.v1.SharedConsumer/Receive",
            ReceiveRequest {
                topic: topic.into(),
                subscription: sub.into(),
                max: Some(6),
                lease_ms: Some(600_000),
                ..ReceiveRequest::default()
            },
        )
        .await
        .expect("receive");
        ack_ids.extend(r.deliveries.into_iter().map(|d| d.ack_id));
    }
    assert_eq!(ack_ids.len(), 12, "setup: too few deliveries");
    // One dead letter, so dead-letter reads and redrives have something to move.
    let first = ack_ids.remove(0);
    let r: SettleResponse = typed(
        &ch,
        "/wharf.v1.SharedConsumer/Terminate",
        TerminateRequest {
            topic: "fuzz".into(),
            subscription: "shared".into(),
            ack_ids: vec![first],
            reason: "setup".into(),
        },
    )
    .await
    .expect("terminate");
    assert_eq!(r.outcomes[0].error, None);
    (server, ch, m.member_id, ack_ids)
}

fn cases() -> u32 {
    std::env::var("WHARF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(64, |n| (n / 4).max(1))
}

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..RunnerConfig::default()
    })
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

// ---- calls and checks -----------------------------------------------------------------------

/// One unary call with a raw payload.
async fn call(ch: &Channel, path: &'static str, body: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the channel is not ready: {e}")))?;
    grpc.unary(
        Request::new(body),
        PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Codes that mean the server (or the connection) broke, never an answer to bad input.
const BROKEN: &[Code] = &[
    Code::Internal,
    Code::Unknown,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unimplemented,
    Code::Cancelled,
    Code::DeadlineExceeded,
    Code::Ok,
];

/// Sends `body` to `m` and checks the answer.
async fn check(fx: &Fixture, m: &Method, body: &[u8]) -> Result<(), TestCaseError> {
    let what = format!("{} with {} bytes {body:02x?}", m.path, body.len());
    let answer = tokio::time::timeout(
        REQUEST_TIMEOUT,
        call(&fx.channel, m.path, Bytes::copy_from_slice(body)),
    )
    .await
    .map_err(|_| fail(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")))?;
    let decodes = (m.request_decodes)(body);
    tally(match &answer {
        Ok(_) => "OK".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    });
    match answer {
        Ok(resp) => {
            if !decodes {
                return Err(fail(format!(
                    "{what}: does not decode as the request type, yet answered OK"
                )));
            }
            if !(m.response_decodes)(&resp) {
                return Err(fail(format!(
                    "{what}: OK with an answer that does not decode: {resp:02x?}"
                )));
            }
            Ok(())
        }
        Err(status) => {
            let code = status.code();
            let wharf_code = status
                .metadata()
                .get(wharf_proto::ERROR_CODE_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if BROKEN.contains(&code) {
                return Err(fail(format!("{what}: {status:?}")));
            }
            if wharf_code.is_empty() || status.message().is_empty() {
                return Err(fail(format!(
                    "{what}: a status without wharf-error-code or message: {status:?}"
                )));
            }
            if !decodes && (code != Code::InvalidArgument || wharf_code != "invalid_argument") {
                return Err(fail(format!(
                    "{what}: undecodable, expected INVALID_ARGUMENT invalid_argument, got \
                     {status:?}"
                )));
            }
            Ok(())
        }
    }
}

/// How many answers of each kind, printed after each property (see them with
/// `--nocapture`): a check that the inputs reach past the decoder.
static TALLY: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

fn tally(kind: String) {
    let mut t = TALLY.lock().unwrap_or_else(PoisonError::into_inner);
    *t.entry(kind).or_default() += 1;
}

fn print_tally(what: &str) {
    let t = TALLY.lock().unwrap_or_else(PoisonError::into_inner);
    eprintln!("{what}: answers so far (all properties): {t:?}");
}

fn run<S>(name: &str, strategy: S, test: impl Fn(&Fixture, S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let fx = fixture();
    let result = runner().run(&strategy, |input| test(fx, input));
    if let Err(e) = result {
        panic!("{e}");
    }
    print_tally(name);
    still_fine(fx);
}

/// The server still answers normal requests, over gRPC and REST.
fn still_fine(fx: &Fixture) {
    fx.rt.block_on(async {
        let t: Topic = typed(
            &fx.channel,
            "/wharf.v1.Topics/GetTopic",
            GetTopicRequest {
                name: "fuzz".into(),
            },
        )
        .await
        .expect("GetTopic after the fuzzing");
        assert_eq!(t.name, "fuzz");
        let _: PublishResponse = typed(
            &fx.channel,
            "/wharf.v1.Messages/Publish",
            PublishRequest {
                topic: "fuzz".into(),
                messages: vec![PublishMessage {
                    value: Bytes::from_static(b"still fine"),
                    ..PublishMessage::default()
                }],
                create_queue: false,
            },
        )
        .await
        .expect("Publish after the fuzzing");
        // A fresh connection too.
        let ch = Channel::from_shared(fx.server.base.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("a new connection");
        let _: Stats = typed(&ch, "/wharf.v1.Operations/GetStats", GetStatsRequest {})
            .await
            .expect("GetStats on a new connection");
        let (st, body) = fx.server.get("/healthz").await;
        assert_eq!(st, 200, "{body}");
    });
}

// ---- inputs ---------------------------------------------------------------------------------

/// A change to an encoding. Positions are taken modulo the length.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    Overwrite(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    /// A field appended: a tag (field number and wire type) and a payload for that wire type
    /// (or a mismatched one).
    Append(u32, u8, Vec<u8>),
    /// The whole encoding again (repeated fields grow, scalars are overwritten, messages
    /// merge).
    Repeat,
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn apply(base: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in mutations {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match m {
            Mutation::FlipBit(i, bit) => {
                if !b.is_empty() {
                    let i = at(*i, b.len());
                    b[i] ^= 1 << (bit % 8);
                }
            }
            Mutation::Overwrite(i, v) => {
                if !b.is_empty() {
                    let i = at(*i, b.len());
                    b[i] = *v;
                }
            }
            Mutation::Insert(i, bytes) => {
                let i = at(*i, b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if !b.is_empty() {
                    let i = at(*i, b.len());
                    let end = (i + n).min(b.len());
                    b.drain(i..end);
                }
            }
            Mutation::Truncate(i) => {
                let i = at(*i, b.len() + 1);
                b.truncate(i);
            }
            Mutation::Append(field, wire, payload) => {
                varint((u64::from(*field) << 3) | u64::from(wire % 8), &mut b);
                match wire % 8 {
                    0 => {
                        let mut v = 0u64;
                        for (k, byte) in payload.iter().take(8).enumerate() {
                            v |= u64::from(*byte) << (8 * k);
                        }
                        varint(v, &mut b);
                    }
                    1 => b.extend(payload.iter().copied().chain([0; 8]).take(8)),
                    2 => {
                        varint(payload.len() as u64, &mut b);
                        b.extend_from_slice(payload);
                    }
                    5 => b.extend(payload.iter().copied().chain([0; 4]).take(4)),
                    // Groups and invalid wire types: whatever follows.
                    _ => b.extend_from_slice(payload),
                }
            }
            Mutation::Repeat => {
                let again = b.clone();
                b.extend(again);
            }
        }
    }
    b
}

/// Payloads for appended fields: small numbers, huge numbers, text (often a real name) and
/// bytes.
fn payload() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => any::<u64>().prop_map(|v| v.to_le_bytes().to_vec()),
        2 => (0u64..2000).prop_map(|v| v.to_le_bytes().to_vec()),
        3 => prop::sample::select(vec![
            "fuzz", "fuzzq", "stream", "shared", "", "Bad", "wharf.dlq.fuzz.shared", "x.y-z_0",
            "wharf-message-id", "wharf-deliver-at", "traceparent",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => "\\PC{0,40}".prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..40),
        1 => (1u32..12, 0u8..6, prop::collection::vec(any::<u8>(), 0..10)).prop_map(
            |(f, w, p)| apply(&[], &[Mutation::Append(f, w, p)])
        ),
    ]
    .boxed()
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        2 => (any::<usize>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        5 => (0u32..16, prop_oneof![4 => Just(0u8), 4 => Just(2u8), 1 => 0u8..8], payload())
            .prop_map(|(f, w, p)| Mutation::Append(f, w, p)),
        1 => Just(Mutation::Repeat),
    ]
}

// ---- the properties -------------------------------------------------------------------------

#[test]
fn random_bytes_to_every_unary_method() {
    let bytes = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(any::<u8>(), 64..1024),
    ];
    run("random bytes", bytes, |fx, body| {
        fx.rt.block_on(async {
            for m in &fx.methods {
                check(fx, m, &body).await?;
            }
            Ok(())
        })
    });
}

#[test]
fn mutated_valid_requests_to_every_unary_method() {
    run(
        "mutated valid requests",
        prop::collection::vec(mutation(), 1..5),
        |fx, mutations| {
            fx.rt.block_on(async {
                for m in &fx.methods {
                    let body = apply(&m.valid, &mutations);
                    check(fx, m, &body).await?;
                }
                Ok(())
            })
        },
    );
}

#[test]
fn edge_cases_to_every_unary_method() {
    let fx = fixture();
    let mut deep_groups = vec![0x0b; 200];
    deep_groups.extend([0x0c; 200]);
    let mut overlong = vec![0x08];
    overlong.extend([0xff; 11]);
    let cases: Vec<Vec<u8>> = vec![
        vec![],                       // every field at its default
        vec![0x0a],                   // field 1, length-delimited, no length
        vec![0x0a, 0x05],             // length past the end
        vec![0x0a, 0x02, 0xc3, 0x28], // a string that is no UTF-8
        vec![0x08],                   // a varint field without its value
        overlong,                     // a varint longer than ten bytes
        vec![0x00, 0x00],             // field number 0
        vec![0x0b],                   // a group that never ends
        deep_groups,                  // groups nested 200 deep
        vec![0x0f, 0x00],             // wire type 7
        vec![0xff; 16],
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // a 4 GiB length
    ];
    fx.rt.block_on(async {
        for body in &cases {
            for m in &fx.methods {
                // The valid request, with the edge case appended, and the edge case alone.
                let mut appended = m.valid.clone();
                appended.extend_from_slice(body);
                for b in [body.as_slice(), appended.as_slice()] {
                    if let Err(e) = check(fx, m, b).await {
                        panic!("{e}");
                    }
                }
            }
        }
    });
    // The valid requests themselves are answered too (the setup makes them meaningful).
    fx.rt.block_on(async {
        for m in &fx.methods {
            if let Err(e) = check(fx, m, &m.valid).await {
                panic!("{e}");
            }
        }
    });
    print_tally("edge cases");
    still_fine(fx);
}

// ---- streams --------------------------------------------------------------------------------

/// A message that does not decode as any request type (field 1, length past the end).
const GARBAGE: &[u8] = &[0x0a, 0xff, 0x01, 0x00];

/// Asserts a status is `INVALID_ARGUMENT` with `wharf-error-code: invalid_argument`.
#[track_caller]
fn assert_invalid(what: &str, s: &Status) {
    assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
    assert_eq!(
        s.metadata()
            .get(wharf_proto::ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("invalid_argument"),
        "{what}: {s:?}"
    );
}

/// Reads a raw response stream to its end; answers the final status (`Ok` if it ended
/// cleanly) and how many messages came before it.
async fn drain(mut st: tonic::Streaming<Bytes>) -> (Result<(), Status>, usize) {
    let mut n = 0;
    loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, st.message()).await {
            Err(_) => panic!("the stream neither ended nor failed within {REQUEST_TIMEOUT:?}"),
            Ok(Ok(Some(_))) => n += 1,
            Ok(Ok(None)) => return (Ok(()), n),
            Ok(Err(s)) => return (Err(s), n),
        }
    }
}

#[test]
fn malformed_messages_on_streams_are_invalid_arguments() {
    let fx = fixture();
    fx.rt.block_on(async {
        let mut grpc = tonic::client::Grpc::new(fx.channel.clone());

        // PublishStream: a good batch, then garbage. The call fails; the good batch stays.
        let hw = |t: &Topic| t.partitions[0].high_watermark;
        let before: Topic = typed(
            &fx.channel,
            "/wharf.v1.Topics/GetTopic",
            GetTopicRequest {
                name: "fuzz-streams".into(),
            },
        )
        .await
        .expect("topic");
        let good = PublishRequest {
            topic: "fuzz-streams".into(),
            messages: vec![PublishMessage {
                value: Bytes::from_static(b"good"),
                ..PublishMessage::default()
            }],
            create_queue: false,
        };
        let frames = vec![
            Bytes::from(good.encode_to_vec()),
            Bytes::from_static(GARBAGE),
        ];
        grpc.ready().await.expect("ready");
        let got = grpc
            .client_streaming(
                Request::new(tokio_stream::iter(frames)),
                PathAndQuery::from_static("/wharf.v1.Messages/PublishStream"),
                RawCodec,
            )
            .await;
        let e = got.expect_err("a publish stream with a malformed batch fails");
        assert_invalid("PublishStream", &e);
        let after: Topic = typed(
            &fx.channel,
            "/wharf.v1.Topics/GetTopic",
            GetTopicRequest {
                name: "fuzz-streams".into(),
            },
        )
        .await
        .expect("topic");
        assert_eq!(hw(&after), hw(&before) + 1, "the batch before it is stored");

        // Server streams: a request that does not decode.
        for path in [
            "/wharf.v1.StreamConsumer/Consume",
            "/wharf.v1.SharedConsumer/ReceiveStream",
        ] {
            grpc.ready().await.expect("ready");
            let r = grpc
                .server_streaming(
                    Request::new(Bytes::from_static(GARBAGE)),
                    PathAndQuery::from_static(path),
                    RawCodec,
                )
                .await;
            let e = match r {
                Err(e) => e,
                Ok(st) => match drain(st.into_inner()).await {
                    (Err(e), _) => e,
                    (Ok(()), n) => panic!("{path}: ended cleanly after {n} messages"),
                },
            };
            assert_invalid(path, &e);
        }

        // Process: garbage first, and garbage after a good start. The stream must end with
        // INVALID_ARGUMENT, not cleanly as if the client had closed it.
        let start = ProcessRequest {
            request: Some(process_request::Request::Start(ProcessStart {
                topic: "fuzz-streams".into(),
                subscription: "fuzz-streams".into(),
                member: Some("fuzz-proc".into()),
                max_in_flight: Some(1),
                lease_ms: None,
            })),
        };
        let cases = [
            ("garbage first", vec![Bytes::from_static(GARBAGE)]),
            (
                "garbage after start",
                vec![
                    Bytes::from(start.encode_to_vec()),
                    Bytes::from_static(GARBAGE),
                ],
            ),
        ];
        for (what, frames) in cases {
            // Keep our side open after the frames, so only the garbage can end the call.
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            for f in frames {
                tx.send(f).await.expect("send");
            }
            grpc.ready().await.expect("ready");
            let r = grpc
                .streaming(
                    Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                    PathAndQuery::from_static("/wharf.v1.SharedConsumer/Process"),
                    RawCodec,
                )
                .await;
            let e = match r {
                Err(e) => e,
                Ok(st) => match drain(st.into_inner()).await {
                    (Err(e), _) => e,
                    (Ok(()), n) => {
                        panic!("Process, {what}: ended cleanly (OK) after {n} messages")
                    }
                },
            };
            assert_invalid(&format!("Process, {what}"), &e);
            drop(tx);
        }
        // What that Process stream may have leased is back: the queue still delivers it.
        let r: ReceiveResponse = typed(
            &fx.channel,
            "/wharf.v1.SharedConsumer/Receive",
            ReceiveRequest {
                topic: "fuzz-streams".into(),
                subscription: "fuzz-streams".into(),
                max: Some(10),
                wait_ms: Some(MAX_WAIT_MS),
                ..ReceiveRequest::default()
            },
        )
        .await
        .expect("receive");
        assert!(!r.deliveries.is_empty(), "nothing to receive");
    });
    still_fine(fx);
}
