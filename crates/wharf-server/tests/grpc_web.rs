//! gRPC-Web on the REST listener, through a plain HTTP/1.1 client (what a browser has): the
//! request body is a gRPC frame (flag 0, big-endian length, the protobuf message); the answer
//! is data frames and a trailer frame (flag 0x80) holding `grpc-status`, `grpc-message` and
//! the server's metadata. A trailers-only answer (an error before any message) may carry them
//! as HTTP headers instead; both are accepted.
//!
//! - Unary calls (CreateTopic, Publish, Read) in `application/grpc-web+proto`, cross-checked
//!   with the REST API.
//! - Errors: `grpc-status` 5 + `wharf-error-code` for a missing topic; 3 for bytes that are
//!   no protobuf message.
//! - `application/grpc-web-text` (base64 both ways).
//! - Server streams over HTTP/1.1 (Consume, ReceiveStream: the browser paths), settled with
//!   unary calls.
//! - CORS for browsers: the gRPC-Web request headers are allowed, the status headers exposed.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::json;
use wharf_proto::v1::*;
use wharf_test::TestServer;
use wharf_test::reqwest::{self, StatusCode, header};

/// Generous: the machine is a loaded 2-core box.
const TIMEOUT: Duration = Duration::from_secs(30);

const PROTO: &str = "application/grpc-web+proto";
const TEXT: &str = "application/grpc-web-text";

/// An HTTP/1.1-only client.
fn http1() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(TIMEOUT)
        .build()
        .expect("client")
}

/// One gRPC frame holding `msg`.
fn frame(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut f = vec![0u8];
    f.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    f.extend_from_slice(&body);
    f
}

/// Decodes base64 that may be several padded chunks one after the other (each 4-character
/// group decodes on its own).
fn unbase64(text: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    assert_eq!(
        clean.len() % 4,
        0,
        "not base64: {:?}",
        String::from_utf8_lossy(text)
    );
    let mut out = Vec::new();
    for quad in clean.chunks(4) {
        out.extend(B64.decode(quad).expect("base64"));
    }
    out
}

/// Frames parsed off a byte buffer.
#[derive(Debug, Default)]
struct Frames {
    data: Vec<Bytes>,
    trailers: Option<BTreeMap<String, String>>,
}

/// Takes every complete frame off the front of `buf`.
fn take_frames(buf: &mut Vec<u8>, out: &mut Frames) {
    loop {
        if buf.len() < 5 {
            return;
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            return;
        }
        let flag = buf[0];
        let payload: Vec<u8> = buf[5..5 + len].to_vec();
        buf.drain(..5 + len);
        assert!(
            out.trailers.is_none(),
            "a frame after the trailers (flag {flag:#x})"
        );
        match flag {
            0x00 => out.data.push(Bytes::from(payload)),
            0x80 => {
                let text = String::from_utf8(payload).expect("trailers are text");
                let mut map = BTreeMap::new();
                for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                    let (k, v) = line
                        .split_once(':')
                        .unwrap_or_else(|| panic!("a trailer line without ':': {line:?}"));
                    map.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
                out.trailers = Some(map);
            }
            other => panic!("unexpected frame flag {other:#x}"),
        }
    }
}

/// A complete gRPC-Web answer.
#[derive(Debug)]
struct WebAnswer {
    version: reqwest::Version,
    status: StatusCode,
    headers: header::HeaderMap,
    frames: Frames,
}

impl WebAnswer {
    /// A trailer, from the trailer frame, else (trailers-only answer) the HTTP headers.
    fn trailer(&self, key: &str) -> Option<String> {
        match &self.frames.trailers {
            Some(t) => t.get(key).cloned(),
            None => self
                .headers
                .get(key)
                .map(|v| v.to_str().expect("ascii").to_owned()),
        }
    }

    fn grpc_status(&self) -> u32 {
        self.trailer("grpc-status")
            .unwrap_or_else(|| panic!("no grpc-status: {self:?}"))
            .parse()
            .expect("a number")
    }

    /// The one message of a successful unary answer.
    fn message<M: prost::Message + Default>(&self) -> M {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        assert_eq!(self.grpc_status(), 0, "{self:?}");
        assert!(
            self.frames.trailers.is_some(),
            "a successful answer ends with a trailer frame: {self:?}"
        );
        assert_eq!(self.frames.data.len(), 1, "{self:?}");
        M::decode(self.frames.data[0].clone()).expect("the answer decodes")
    }
}

/// POSTs one gRPC-Web call (`text` = `application/grpc-web-text`) and reads the whole answer.
async fn call(
    client: &reqwest::Client,
    s: &TestServer,
    path: &str,
    msg: &impl prost::Message,
    text: bool,
) -> WebAnswer {
    let body = frame(msg);
    call_raw(client, s, path, body, text).await
}

async fn call_raw(
    client: &reqwest::Client,
    s: &TestServer,
    path: &str,
    body: Vec<u8>,
    text: bool,
) -> WebAnswer {
    let (ct, body) = if text {
        (TEXT, B64.encode(&body).into_bytes())
    } else {
        (PROTO, body)
    };
    let resp = client
        .post(s.url(path))
        .header(header::CONTENT_TYPE, ct)
        .header(header::ACCEPT, ct)
        .header("x-grpc-web", "1")
        .body(body)
        .send()
        .await
        .expect("request");
    let version = resp.version();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    if status == StatusCode::OK {
        let got = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_default();
        assert!(got.starts_with(ct), "content-type {got:?} for {ct}");
    }
    let mut buf = if text {
        unbase64(&bytes)
    } else {
        bytes.to_vec()
    };
    let mut frames = Frames::default();
    take_frames(&mut buf, &mut frames);
    assert!(buf.is_empty(), "a partial frame at the end: {buf:?}");
    WebAnswer {
        version,
        status,
        headers,
        frames,
    }
}

fn msg_to(value: &str, partition: u32) -> PublishMessage {
    PublishMessage {
        value: Bytes::copy_from_slice(value.as_bytes()),
        partition: Some(partition),
        ..PublishMessage::default()
    }
}

fn values(ms: &[Message]) -> Vec<&str> {
    ms.iter()
        .map(|m| std::str::from_utf8(&m.value).expect("utf-8"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_over_http1() {
    let s = TestServer::start().await;
    let c = http1();

    let a = call(
        &c,
        &s,
        "/wharf.v1.Topics/CreateTopic",
        &CreateTopicRequest {
            name: "web".into(),
            config: Some(TopicConfig {
                partitions: Some(2),
                ..TopicConfig::default()
            }),
        },
        false,
    )
    .await;
    assert_eq!(a.version, reqwest::Version::HTTP_11);
    let t: Topic = a.message();
    assert_eq!(t.name, "web");
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(t.config.and_then(|c| c.partitions), Some(2));
    // The server's metadata rides in the trailer frame or the headers.
    assert!(
        a.headers.contains_key("traceparent") || a.trailer("traceparent").is_some(),
        "{a:?}"
    );

    let a = call(
        &c,
        &s,
        "/wharf.v1.Messages/Publish",
        &PublishRequest {
            topic: "web".into(),
            messages: vec![
                msg_to("w0", 1),
                PublishMessage {
                    headers: [("app".to_owned(), "browser".to_owned())].into(),
                    ..msg_to("w1", 1)
                },
            ],
            create_queue: false,
        },
        false,
    )
    .await;
    let p: PublishResponse = a.message();
    let placed: Vec<(u32, u64, bool)> = p
        .results
        .iter()
        .map(|r| (r.partition, r.offset, r.duplicate))
        .collect();
    assert_eq!(placed, [(1, 0, false), (1, 1, false)]);

    let a = call(
        &c,
        &s,
        "/wharf.v1.Messages/Read",
        &ReadRequest {
            topic: "web".into(),
            partition: 1,
            ..ReadRequest::default()
        },
        false,
    )
    .await;
    let r: ReadResponse = a.message();
    assert_eq!(values(&r.messages), ["w0", "w1"]);
    assert_eq!(
        r.messages[1].headers.get("app").map(String::as_str),
        Some("browser")
    );
    assert_eq!((r.next_offset, r.high_watermark), (2, 2));

    // The same data through REST.
    let (st, body) = s.get("/v1/topics/web/messages?partition=1").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["messages"][0]["value"], "w0");
    assert_eq!(body["messages"][1]["headers"]["app"], "browser");
    let (st, body) = s.get("/v1/topics/web").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["settings"]["partitions"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_grpc_status_and_the_stable_code() {
    let s = TestServer::start().await;
    let c = http1();
    let a = call(
        &c,
        &s,
        "/wharf.v1.Topics/GetTopic",
        &GetTopicRequest {
            name: "missing".into(),
        },
        false,
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "gRPC-Web errors are HTTP 200: {a:?}"
    );
    assert_eq!(a.grpc_status(), 5, "{a:?}");
    assert!(a.frames.data.is_empty(), "{a:?}");
    assert_eq!(
        a.trailer("wharf-error-code").as_deref(),
        Some("topic_not_found"),
        "{a:?}"
    );
    assert!(
        a.trailer("grpc-message").is_some_and(|m| !m.is_empty()),
        "{a:?}"
    );
    // Over the text encoding too.
    let a = call(
        &c,
        &s,
        "/wharf.v1.Messages/Read",
        &ReadRequest {
            topic: "missing".into(),
            ..ReadRequest::default()
        },
        true,
    )
    .await;
    assert_eq!(a.grpc_status(), 5, "{a:?}");
    assert_eq!(
        a.trailer("wharf-error-code").as_deref(),
        Some("topic_not_found"),
        "{a:?}"
    );
    // Bytes that are no protobuf message: INVALID_ARGUMENT.
    let mut body = vec![0u8, 0, 0, 0, 3];
    body.extend_from_slice(&[0x0a, 0xff, 0xff]);
    let a = call_raw(&c, &s, "/wharf.v1.Topics/GetTopic", body, false).await;
    assert_eq!(a.grpc_status(), 3, "{a:?}");
    assert_eq!(
        a.trailer("wharf-error-code").as_deref(),
        Some("invalid_argument"),
        "{a:?}"
    );
    // An unknown method: UNIMPLEMENTED.
    let a = call(
        &c,
        &s,
        "/wharf.v1.Topics/NoSuchMethod",
        &GetTopicRequest::default(),
        false,
    )
    .await;
    assert_eq!(a.grpc_status(), 12, "{a:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_text_is_base64_both_ways() {
    let s = TestServer::start().await;
    let c = http1();
    let t: Topic = call(
        &c,
        &s,
        "/wharf.v1.Topics/CreateTopic",
        &CreateTopicRequest {
            name: "text".into(),
            config: None,
        },
        true,
    )
    .await
    .message();
    assert_eq!(t.name, "text");
    // A binary value survives the text encoding.
    let value = Bytes::from_static(&[0x00, 0xff, 0x80, b'\r', b'\n']);
    let p: PublishResponse = call(
        &c,
        &s,
        "/wharf.v1.Messages/Publish",
        &PublishRequest {
            topic: "text".into(),
            messages: vec![PublishMessage {
                value: value.clone(),
                ..PublishMessage::default()
            }],
            create_queue: false,
        },
        true,
    )
    .await
    .message();
    assert_eq!(p.results.len(), 1);
    let r: ReadResponse = call(
        &c,
        &s,
        "/wharf.v1.Messages/Read",
        &ReadRequest {
            topic: "text".into(),
            ..ReadRequest::default()
        },
        true,
    )
    .await
    .message();
    assert_eq!(r.messages.len(), 1);
    assert_eq!(r.messages[0].value, value);
    s.stop().await;
}

/// An open gRPC-Web server stream, read frame by frame.
struct WebStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    frames: Frames,
}

impl WebStream {
    async fn open(s: &TestServer, path: &str, msg: &impl prost::Message) -> Self {
        let resp = reqwest::Client::builder()
            .http1_only()
            .build()
            .expect("client")
            .post(s.url(path))
            .header(header::CONTENT_TYPE, PROTO)
            .header("x-grpc-web", "1")
            .body(frame(msg))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        assert_eq!(resp.status(), StatusCode::OK, "{resp:?}");
        assert!(
            resp.headers().get("grpc-status").is_none(),
            "the stream failed at once: {resp:?}"
        );
        WebStream {
            resp,
            buf: Vec::new(),
            frames: Frames::default(),
        }
    }

    /// The next message (the stream must not end).
    async fn next<M: prost::Message + Default>(&mut self) -> M {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if !self.frames.data.is_empty() {
                let f = self.frames.data.remove(0);
                return M::decode(f).expect("a message");
            }
            assert!(
                self.frames.trailers.is_none(),
                "the stream ended: {:?}",
                self.frames.trailers
            );
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .expect("timed out waiting for a frame")
                .expect("the stream broke")
                .expect("the stream ended without trailers");
            self.buf.extend_from_slice(&chunk);
            take_frames(&mut self.buf, &mut self.frames);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streams_over_http1() {
    let s = TestServer::start().await;
    let c = http1();
    let (st, body) = s.put("/v1/topics/ev", json!({})).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = s
        .put("/v1/topics/ev/subscriptions/g", json!({"kind": "stream"}))
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = s
        .put(
            "/v1/topics/ev/subscriptions/q",
            json!({"kind": "shared", "max_in_flight_per_member": 1}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = s
        .post(
            "/v1/topics/ev/messages",
            json!({"messages": [{"value": "e0"}, {"value": "e1"}]}),
        )
        .await;
    assert_eq!(st, 200, "{body}");

    // Consume: the assignment, then the messages.
    let mut consume = WebStream::open(
        &s,
        "/wharf.v1.StreamConsumer/Consume",
        &ConsumeRequest {
            topic: "ev".into(),
            subscription: "g".into(),
            ..ConsumeRequest::default()
        },
    )
    .await;
    let first: ConsumeResponse = consume.next().await;
    let Some(consume_response::Event::Assignment(a)) = first.event else {
        panic!("the first event must be the assignment: {first:?}");
    };
    assert_eq!(a.partitions, [0]);
    let mut got = Vec::new();
    while got.len() < 2 {
        let r: ConsumeResponse = consume.next().await;
        match r.event {
            Some(consume_response::Event::Messages(b)) => got.extend(b.messages),
            other => panic!("expected messages: {other:?}"),
        }
    }
    assert_eq!(values(&got), ["e0", "e1"]);
    // Committed with a unary call, by the assignment's member id.
    let commit: CommitResponse = call(
        &c,
        &s,
        "/wharf.v1.StreamConsumer/Commit",
        &CommitRequest {
            topic: "ev".into(),
            subscription: "g".into(),
            member_id: a.member_id.clone(),
            offsets: vec![Committed {
                partition: 0,
                offset: 2,
            }],
        },
        false,
    )
    .await
    .message();
    assert_eq!(commit.offsets.len(), 1);
    let (st, body) = s.get("/v1/topics/ev/subscriptions/g").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["partitions"][0]["committed"], 2);
    drop(consume);

    // ReceiveStream (the browser's Process): deliveries settled with unary Ack.
    let mut recv = WebStream::open(
        &s,
        "/wharf.v1.SharedConsumer/ReceiveStream",
        &ReceiveStreamRequest {
            topic: "ev".into(),
            subscription: "q".into(),
            member: Some("browser".into()),
            ..ReceiveStreamRequest::default()
        },
    )
    .await;
    for want in ["e0", "e1"] {
        let r: ReceiveResponse = recv.next().await;
        assert_eq!(
            r.deliveries.len(),
            1,
            "max_in_flight_per_member is 1: {r:?}"
        );
        let d = &r.deliveries[0];
        let m = d.message.as_ref().expect("message");
        assert_eq!(m.value, want.as_bytes());
        let acked: SettleResponse = call(
            &c,
            &s,
            "/wharf.v1.SharedConsumer/Ack",
            &AckRequest {
                topic: "ev".into(),
                subscription: "q".into(),
                ack_ids: vec![d.ack_id.clone()],
            },
            false,
        )
        .await
        .message();
        assert_eq!(acked.outcomes.len(), 1);
        assert_eq!(acked.outcomes[0].error, None, "{acked:?}");
    }
    drop(recv);
    let (st, body) = s.get("/v1/topics/ev/subscriptions/q").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["partitions"][0]["committed"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_may_call_from_an_allowed_origin() {
    let s = TestServer::builder()
        .config(|c| c.cors.allowed_origins = vec!["https://app.example".into()])
        .start()
        .await;
    let c = http1();
    let path = "/wharf.v1.Topics/CreateTopic";
    // The preflight allows the gRPC-Web request headers.
    let resp = c
        .request(reqwest::Method::OPTIONS, s.url(path))
        .header(header::ORIGIN, "https://app.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type,x-grpc-web,x-user-agent,authorization",
        )
        .send()
        .await
        .expect("preflight");
    assert!(resp.status().is_success(), "{resp:?}");
    assert_eq!(
        resp.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().expect("ascii")),
        Some("https://app.example")
    );
    let allowed = resp
        .headers()
        .get_all(header::ACCESS_CONTROL_ALLOW_HEADERS)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    for h in [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "authorization",
    ] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    // The call itself exposes the status headers to the page.
    let resp = c
        .post(s.url(path))
        .header(header::ORIGIN, "https://app.example")
        .header(header::CONTENT_TYPE, PROTO)
        .header("x-grpc-web", "1")
        .body(frame(&CreateTopicRequest {
            name: "from-browser".into(),
            config: None,
        }))
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().expect("ascii")),
        Some("https://app.example")
    );
    let exposed = resp
        .headers()
        .get_all(header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    for h in ["grpc-status", "grpc-message", "wharf-error-code"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    let (st, body) = s.get("/v1/topics/from-browser").await;
    assert_eq!(st, 200, "{body}");
    s.stop().await;
}
