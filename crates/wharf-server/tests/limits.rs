//! Every `[limits]` key, configured small, answering its documented error and leaving state
//! unchanged (read back after each refusal); plus TLS and CORS.
//!
//! - Per message and per request: `max_message_bytes` (`413 message_too_large`, decoded bytes
//!   of key + value + headers), `max_batch_messages`, `max_headers`, `max_header_bytes`,
//!   `max_wait_ms`, `max_read_messages` (`400 limit_exceeded`), `max_request_bytes`
//!   (`413 payload_too_large`, with and without a content length), and a topic's or queue's
//!   `max_message_bytes` above the server's (`400 limit_exceeded` at `PUT`).
//! - Per connection, over raw TCP: `max_connections` (the next connection gets a raw
//!   `503 too_many_connections`; closing one frees a slot), `header_read_timeout_ms` (a client
//!   that stalls mid-request-line, or sends nothing, is disconnected), `body_read_timeout_ms`
//!   (a stalled body answers `408 request_timeout`, storing nothing).
//! - TLS with a self-signed certificate (`https` works; plain HTTP to the TLS port fails) and
//!   CORS (allowed origin echoed; other origins and an empty list get no CORS headers).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wharf_test::TestServer;
use wharf_test::reqwest::{self, Method, StatusCode, header};

const MAX_MESSAGE: usize = 100;
const MAX_BATCH: usize = 3;
const MAX_HEADERS: usize = 2;
const MAX_HEADER_BYTES: usize = 20;
const MAX_WAIT: u64 = 500;
const MAX_READ: usize = 5;
const MAX_REQUEST: usize = 2048;

/// A generous bound for anything the server should do "soon" on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// A server with small per-request limits, a topic `lim` (1 partition) with a stream
/// subscription `st` and a shared one `sh`, and a queue `q`.
async fn limited() -> TestServer {
    let s = TestServer::builder()
        .config(|c| {
            let l = &mut c.limits;
            l.max_message_bytes = MAX_MESSAGE as u64;
            l.max_batch_messages = MAX_BATCH;
            l.max_headers = MAX_HEADERS;
            l.max_header_bytes = MAX_HEADER_BYTES;
            l.max_wait_ms = MAX_WAIT;
            l.max_read_messages = MAX_READ;
            l.max_request_bytes = MAX_REQUEST;
        })
        .start()
        .await;
    // Explicit sizes: a PUT with the default size (1 MiB) is refused by this server (see
    // `topic_max_message_bytes_above_the_server_limit_is_refused_at_put`).
    let size = json!({ "max_message_bytes": MAX_MESSAGE });
    for (path, body) in [
        ("/v1/topics/lim", size.clone()),
        ("/v1/topics/lim/subscriptions/st", json!({"kind": "stream"})),
        ("/v1/topics/lim/subscriptions/sh", json!({"kind": "shared"})),
        ("/v1/queues/q", json!({ "topic": size })),
    ] {
        let (st, resp) = s.put(path, body).await;
        assert_eq!(st, 200, "{path}: {resp}");
    }
    s
}

fn assert_error(st: StatusCode, body: &Value, status: u16, code: &str, what: &str) {
    assert_eq!(st.as_u16(), status, "{what}: {body}");
    assert_eq!(body["code"], code, "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

/// The values stored in partition 0 of `topic`, in order.
async fn stored(s: &TestServer, topic: &str) -> Vec<String> {
    let (st, body) = s
        .get(&format!(
            "/v1/topics/{topic}/messages?offset=0&limit={MAX_READ}"
        ))
        .await;
    assert_eq!(st, 200, "{body}");
    let hw = body["high_watermark"].as_u64().expect("high watermark");
    assert!(
        hw <= MAX_READ as u64,
        "more stored than one read shows: {body}"
    );
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["value"].as_str().expect("value").to_owned())
        .collect()
}

async fn publish(s: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    s.post(path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_bytes_refuses_larger_messages() {
    let s = limited().await;
    let topic = "/v1/topics/lim/messages";
    let x = |n: usize| "x".repeat(n);
    for v in ["a", "b"] {
        let (st, body) = publish(&s, topic, json!({ "value": v })).await;
        assert_eq!(st, 200, "{body}");
    }
    let before = stored(&s, "lim").await;
    assert_eq!(before, ["a", "b"]);

    // One byte over, counting key + value + header names and values (decoded, for base64).
    let too_big = [
        ("value", json!({"value": x(101)})),
        ("key + value", json!({"key": x(50), "value": x(51)})),
        (
            "headers + value",
            json!({"value": x(90), "headers": {"h": "0123456789"}}),
        ),
        (
            "base64",
            json!({"value": "eHh4".repeat(33) + "eHg=", "encoding": "base64"}),
        ),
        (
            "one of a batch",
            json!({"messages": [{"value": "fine"}, {"value": x(101)}]}),
        ),
    ];
    for (what, body) in &too_big {
        for path in [topic, "/v1/queues/q/messages", "/v1/queues/q2/messages"] {
            let (st, resp) = publish(&s, path, body.clone()).await;
            let ctx = format!("{what} {path}");
            assert_error(st, &resp, 413, "message_too_large", &ctx);
            assert!(
                resp["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("limits.max_message_bytes")),
                "{ctx}: not refused by the server's limit: {resp}"
            );
        }
    }
    assert_eq!(stored(&s, "lim").await, before, "a refused publish stored");
    assert_eq!(stored(&s, "q").await, Vec::<String>::new());
    let (st, body) = s.get("/v1/queues/q2").await;
    assert_eq!(st, 404, "a refused send created a queue: {body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_exactly_max_message_bytes_is_accepted() {
    // The topic allows as much as the server: 100 bytes of key + value + headers.
    let s = limited().await;
    let x = |n: usize| "x".repeat(n);
    // 100 bytes decoded (136 characters of base64).
    let b64_100 = "eHh4".repeat(33) + "eA==";
    for (what, body) in [
        ("key + value", json!({"key": "k", "value": x(99)})),
        (
            "headers + value",
            json!({"value": x(89), "headers": {"h": "0123456789"}}),
        ),
        ("base64", json!({"value": b64_100, "encoding": "base64"})),
    ] {
        for path in ["/v1/topics/lim/messages", "/v1/queues/q/messages"] {
            let (st, resp) = publish(&s, path, body.clone()).await;
            assert_eq!(st, 200, "{what} {path}: {resp}");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_and_header_limits() {
    let s = limited().await;
    let batch = |n: usize| json!({"messages": (0..n).map(|i| json!({"value": format!("b{i}")})).collect::<Vec<_>>()});
    let (st, body) = publish(&s, "/v1/topics/lim/messages", batch(MAX_BATCH)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(MAX_BATCH));

    let headers = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("h{i}"), Value::String("v".into())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    // 20 bytes of header names and values is fine, 21 is not.
    let (st, body) = publish(
        &s,
        "/v1/topics/lim/messages",
        json!({"value": "h", "headers": {"abcdefghij": "0123456789"}}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = publish(
        &s,
        "/v1/topics/lim/messages",
        json!({"value": "h", "headers": headers(MAX_HEADERS)}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let before = stored(&s, "lim").await;
    assert_eq!(before.len(), 5);

    let refused = [
        ("batch", batch(MAX_BATCH + 1)),
        (
            "header count",
            json!({"value": "h", "headers": headers(MAX_HEADERS + 1)}),
        ),
        (
            "header count in a batch",
            json!({"messages": [{"value": "ok"}, {"value": "h", "headers": headers(MAX_HEADERS + 1)}]}),
        ),
        (
            "header bytes",
            json!({"value": "h", "headers": {"abcdefghij": "0123456789a"}}),
        ),
        (
            "header bytes over two headers",
            json!({"value": "h", "headers": {"abcde": "01234", "fghij": "567890"}}),
        ),
    ];
    for (what, body) in &refused {
        for path in [
            "/v1/topics/lim/messages",
            "/v1/queues/q/messages",
            "/v1/queues/q2/messages",
        ] {
            let (st, resp) = publish(&s, path, body.clone()).await;
            assert_error(st, &resp, 400, "limit_exceeded", &format!("{what} {path}"));
        }
    }
    assert_eq!(stored(&s, "lim").await, before, "a refused publish stored");
    assert_eq!(stored(&s, "q").await, Vec::<String>::new());
    let (st, body) = s.get("/v1/queues/q2").await;
    assert_eq!(st, 404, "a refused send created a queue: {body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_and_read_count_limits_refuse_without_side_effects() {
    let s = limited().await;
    let batch = json!({"messages": [{"value": "a"}, {"value": "b"}, {"value": "c"}]});
    let (st, body) = publish(&s, "/v1/topics/lim/messages", batch.clone()).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = publish(&s, "/v1/queues/q/messages", batch).await;
    assert_eq!(st, 200, "{body}");
    let (st, member) = s
        .post("/v1/topics/lim/subscriptions/st/members", json!({}))
        .await;
    assert_eq!(st, 200, "{member}");
    let member_id = member["member_id"].as_str().expect("member id").to_owned();

    let over_wait = MAX_WAIT + 1;
    let over_read = MAX_READ + 1;
    let gets = [
        format!("/v1/topics/lim/messages?wait_ms={over_wait}"),
        format!("/v1/topics/lim/messages?offset=0&wait_ms={}", u64::MAX),
        format!("/v1/topics/lim/messages?limit={over_read}"),
        format!("/v1/topics/lim/messages?limit={}", u32::MAX),
        format!("/v1/topics/lim/subscriptions/sh/dead-letters?limit={over_read}"),
        format!("/v1/queues/q/dead-letters?limit={over_read}"),
        format!("/v1/topics/lim/subscriptions/sh/events?max={over_read}"),
        format!("/v1/topics/lim/subscriptions/st/events?max={over_read}"),
        format!("/v1/queues/q/events?max={over_read}"),
    ];
    for path in &gets {
        let (st, body) = s.get(path).await;
        assert_error(st, &body, 400, "limit_exceeded", path);
    }
    let posts = [
        (
            "/v1/topics/lim/subscriptions/st/fetch",
            json!({"member_id": member_id, "wait_ms": over_wait}),
        ),
        (
            "/v1/topics/lim/subscriptions/st/fetch",
            json!({"member_id": member_id, "max_messages": over_read}),
        ),
        (
            "/v1/topics/lim/subscriptions/sh/receive",
            json!({"wait_ms": over_wait}),
        ),
        (
            "/v1/topics/lim/subscriptions/sh/receive",
            json!({"max": over_read}),
        ),
        ("/v1/queues/q/receive", json!({"wait_ms": over_wait})),
        ("/v1/queues/q/receive", json!({"max": over_read})),
    ];
    for (path, body) in &posts {
        let (st, resp) = s.post(path, body.clone()).await;
        assert_error(st, &resp, 400, "limit_exceeded", &format!("{path} {body}"));
    }

    // Nothing was leased, fetched or joined by the refused requests.
    let (st, sub) = s.get("/v1/topics/lim/subscriptions/st").await;
    assert_eq!(st, 200, "{sub}");
    assert_eq!(sub["members"], json!([member_id]), "{sub}");
    for path in [
        "/v1/topics/lim/subscriptions/sh/receive",
        "/v1/queues/q/receive",
    ] {
        let (st, body) = s
            .post(path, json!({"max": MAX_READ, "wait_ms": MAX_WAIT}))
            .await;
        assert_eq!(st, 200, "{path}: {body}");
        let deliveries = body["deliveries"].as_array().expect("deliveries");
        let values: Vec<&str> = deliveries
            .iter()
            .map(|d| d["message"]["value"].as_str().expect("value"))
            .collect();
        assert_eq!(values, ["a", "b", "c"], "{path}: {body}");
        for d in deliveries {
            assert_eq!(d["delivery_count"], 1, "{path}: {body}");
        }
    }
    let (st, body) = s
        .post(
            "/v1/topics/lim/subscriptions/st/fetch",
            json!({"member_id": member_id, "max_messages": MAX_READ, "wait_ms": MAX_WAIT}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(3), "{body}");

    // At the limits: accepted.
    let (st, body) = s
        .get(&format!(
            "/v1/topics/lim/messages?offset=0&limit={MAX_READ}&wait_ms={MAX_WAIT}"
        ))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(3), "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_max_message_bytes_above_the_server_limit_is_refused_at_put() {
    let s = limited().await;
    let over = MAX_MESSAGE as u64 + 1;
    let (st, body) = s
        .put("/v1/topics/big", json!({"max_message_bytes": over}))
        .await;
    assert_error(st, &body, 400, "limit_exceeded", "topic");
    let (st, body) = s.get("/v1/topics/big").await;
    assert_error(st, &body, 404, "topic_not_found", "after a refused PUT");

    let (st, body) = s
        .put(
            "/v1/queues/bigq",
            json!({"topic": {"max_message_bytes": over}}),
        )
        .await;
    assert_error(st, &body, 400, "limit_exceeded", "queue");
    let (st, body) = s.get("/v1/topics/bigq").await;
    assert_error(
        st,
        &body,
        404,
        "topic_not_found",
        "after a refused queue PUT",
    );

    let (st, body) = s
        .put("/v1/topics/big", json!({"max_message_bytes": MAX_MESSAGE}))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["settings"]["max_message_bytes"], MAX_MESSAGE);

    // A PUT that asks for no size gets the topic default (1 MiB), which is above this
    // server's limit; it must not be refused for a value the client never sent (a send to a
    // new queue creates a default topic without complaint).
    for path in ["/v1/topics/default-size", "/v1/queues/default-queue"] {
        let (st, body) = s.put(path, json!({})).await;
        assert_eq!(st, 200, "{path}: refused for the default size: {body}");
    }
    s.stop().await;
}

/// A publish body of exactly `len` bytes: a small message padded with JSON whitespace.
fn padded_body(len: usize) -> String {
    let mut b = String::from(r#"{"value":"padded"}"#);
    assert!(b.len() <= len);
    b.push_str(&" ".repeat(len - b.len()));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_request_bytes_refuses_large_bodies() {
    let s = limited().await;
    let send = |path: String, body: reqwest::Body, method: Method| {
        let req = s
            .client
            .request(method, s.url(&path))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status();
            let text = resp.text().await.expect("body");
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
            )
        }
    };

    // At the limit: read and accepted.
    let (st, body) = send(
        "/v1/topics/lim/messages".into(),
        padded_body(MAX_REQUEST).into(),
        Method::POST,
    )
    .await;
    assert_eq!(st, 200, "{body}");

    for len in [MAX_REQUEST + 1, 3 * MAX_REQUEST] {
        for (method, path) in [
            (Method::POST, "/v1/topics/lim/messages"),
            (Method::POST, "/v1/queues/q/messages"),
            (Method::POST, "/v1/queues/q2/messages"),
            (Method::PUT, "/v1/topics/t2"),
            (Method::PUT, "/v1/queues/q3"),
            (Method::POST, "/v1/topics/lim/subscriptions/sh/receive"),
        ] {
            // With a content length.
            let (st, body) = send(path.into(), padded_body(len).into(), method.clone()).await;
            assert_error(
                st,
                &body,
                413,
                "payload_too_large",
                &format!("{method} {path} {len} bytes"),
            );
            // Chunked, without one.
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = padded_body(len)
                .into_bytes()
                .chunks(512)
                .map(|c| Ok(c.to_vec()))
                .collect();
            let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
            let (st, body) = send(path.into(), body, method.clone()).await;
            assert_error(
                st,
                &body,
                413,
                "payload_too_large",
                &format!("chunked {method} {path} {len} bytes"),
            );
        }
    }
    assert_eq!(stored(&s, "lim").await, ["padded"]);
    for path in ["/v1/topics/t2", "/v1/topics/q2", "/v1/topics/q3"] {
        let (st, body) = s.get(path).await;
        assert_error(st, &body, 404, "topic_not_found", path);
    }
    let (st, body) = s.get("/v1/topics/lim/subscriptions/sh").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["in_flight"], 0, "a refused receive leased: {body}");
    s.stop().await;
}

// ---- raw connections ----------------------------------------------------------------------

/// A raw HTTP/1.1 response.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response (head, then `content-length` bytes, or to EOF without one).
async fn read_response(stream: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "closed before a whole response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            stream.read_to_end(&mut body).await?;
        }
    }
    Ok(RawResponse { status, head, body })
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
}

const HEALTH_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: wharf\r\n\r\n";

/// A keep-alive connection that has completed one request (so the server has accepted it
/// and counts it).
async fn open_counted(s: &TestServer) -> TcpStream {
    let mut c = TcpStream::connect(s.addr).await.expect("connect");
    c.write_all(HEALTH_REQUEST).await.expect("write");
    let r = timed("health over a fresh connection", read_response(&mut c))
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_the_next_connection_until_one_closes() {
    const MAX: usize = 3;
    let s = TestServer::builder()
        .config(|c| {
            c.limits.max_connections = MAX;
            // Long, so the idle keep-alive connections below stay open on their own.
            c.limits.header_read_timeout_ms = 120_000;
        })
        .start()
        .await;
    let mut open = Vec::new();
    for _ in 0..MAX {
        open.push(open_counted(&s).await);
    }
    // The next one: a raw 503 with the code, then closed (it sends nothing, so nothing is
    // left unread to turn the close into a reset).
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        let r = timed("refusal", read_response(&mut c))
            .await
            .expect("refusal");
        assert_eq!(r.status, 503, "{r:?}");
        let body: Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(body["code"], "too_many_connections", "{r:?}");
        assert!(
            r.head.to_ascii_lowercase().contains("retry-after:"),
            "{r:?}"
        );
        let mut rest = Vec::new();
        let n = timed("close after the refusal", c.read_to_end(&mut rest))
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "more after the refusal: {rest:?}");
    }
    // The counted connections still work.
    for c in &mut open {
        c.write_all(HEALTH_REQUEST).await.expect("write");
        let r = timed("keep-alive request", read_response(c))
            .await
            .expect("response");
        assert_eq!(r.status, 200, "{r:?}");
    }
    // Closing one frees a slot (once the server has noticed).
    drop(open.pop());
    let deadline = Instant::now() + PATIENCE;
    let freed = loop {
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        let ok = c
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: wharf\r\nconnection: close\r\n\r\n")
            .await
            .is_ok();
        let r = if ok {
            tokio::time::timeout(PATIENCE, read_response(&mut c)).await
        } else {
            Ok(Err(std::io::ErrorKind::BrokenPipe.into()))
        };
        match r {
            Ok(Ok(r)) if r.status == 200 => break true,
            // Refused (503, or a reset because our request went unread): not yet.
            Ok(Ok(r)) if r.status == 503 => {}
            Ok(Err(_)) => {}
            other => panic!("unexpected answer while waiting for a free slot: {other:?}"),
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(freed, "closing a connection never freed its slot");
    drop(open);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_disconnected() {
    let s = TestServer::builder()
        .config(|c| c.limits.header_read_timeout_ms = 300)
        .start()
        .await;
    for partial in [
        &b"GET /hea"[..],
        b"POST /v1/topics/x/messages HTTP/1.1\r\nhost: w",
    ] {
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        c.write_all(partial).await.expect("write");
        let start = Instant::now();
        let mut got = Vec::new();
        let r = timed("a stalled head", c.read_to_end(&mut got)).await;
        let elapsed = start.elapsed();
        // EOF or a reset, possibly after an error answer, but never a 5xx.
        if let Ok(n) = r {
            let text = String::from_utf8_lossy(&got[..n]);
            assert!(
                !text.starts_with("HTTP/1.1 5"),
                "{partial:?}: server error on a slow client: {text}"
            );
        }
        assert!(
            elapsed >= Duration::from_millis(200),
            "{partial:?}: closed after {elapsed:?}, before the timeout"
        );
    }
    // The server is fine afterwards.
    let (st, body) = s.get("/healthz").await;
    assert_eq!(st, 200, "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_disconnected() {
    // Otherwise idle connections hold max_connections slots forever.
    let s = TestServer::builder()
        .config(|c| c.limits.header_read_timeout_ms = 300)
        .start()
        .await;
    // Nothing at all, one byte, and a trickle of the HTTP/2 preface (hyper reads 24 bytes
    // to tell HTTP/1.1 from HTTP/2 before its own timers start).
    for opening in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n"] {
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        c.write_all(opening).await.expect("write");
        let mut got = Vec::new();
        let r = tokio::time::timeout(PATIENCE, c.read_to_end(&mut got)).await;
        assert!(
            r.is_ok(),
            "a connection that sent {opening:?} was still open after {PATIENCE:?} \
             (header_read_timeout_ms = 300)"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_answers_request_timeout() {
    let s = TestServer::builder()
        .config(|c| c.limits.body_read_timeout_ms = 300)
        .start()
        .await;
    let (st, body) = s.put("/v1/topics/slow", json!({})).await;
    assert_eq!(st, 200, "{body}");
    for (method, path) in [
        ("POST", "/v1/topics/slow/messages"),
        ("POST", "/v1/queues/slowq/messages"),
        ("PUT", "/v1/topics/never"),
    ] {
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: wharf\r\ncontent-type: application/json\r\n\
             content-length: 100\r\n\r\n"
        );
        c.write_all(head.as_bytes()).await.expect("write head");
        c.write_all(br#"{"value":"#)
            .await
            .expect("write part of the body");
        let start = Instant::now();
        let r = timed("a stalled body", read_response(&mut c)).await;
        let elapsed = start.elapsed();
        // What the server does: 408 with the code (then it closes the connection).
        let r = r.unwrap_or_else(|e| panic!("{method} {path}: no answer but {e}"));
        assert_eq!(r.status, 408, "{method} {path}: {r:?}");
        let body: Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(body["code"], "request_timeout", "{method} {path}: {body}");
        assert!(
            elapsed >= Duration::from_millis(200),
            "{method} {path}: answered after {elapsed:?}, before the timeout"
        );
    }
    let (st, body) = s.get("/v1/topics/slow/messages").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body["high_watermark"], 0,
        "a timed-out publish stored: {body}"
    );
    for path in ["/v1/topics/never", "/v1/topics/slowq"] {
        let (st, body) = s.get(path).await;
        assert_error(st, &body, 404, "topic_not_found", path);
    }
    s.stop().await;
}

// ---- TLS and CORS -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_refuses_plain_http() {
    wharf_test::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_pem = certified.cert.pem();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, &cert_pem).expect("write cert");
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("write key");
    let s = TestServer::builder()
        .config(|c| {
            c.tls.cert_file = cert_file.display().to_string();
            c.tls.key_file = key_file.display().to_string();
        })
        .start()
        .await;
    let port = s.addr.port();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("pem")])
        .resolve("localhost", s.addr)
        .timeout(PATIENCE)
        .build()
        .expect("client");
    let resp = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["status"], "ok", "{body}");
    // The API works over TLS too.
    let resp = client
        .put(format!("https://localhost:{port}/v1/topics/secure"))
        .json(&json!({}))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status(), 200);

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("client");
    let r = plain
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP to the TLS port answered: {r:?}");
    // An https client that does not trust the certificate fails too.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("certificate")
        .cert
        .pem();
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(stranger.as_bytes()).expect("pem")])
        .resolve("localhost", s.addr)
        .timeout(PATIENCE)
        .build()
        .expect("client");
    let r = untrusting
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(r.is_err(), "an untrusted certificate was accepted: {r:?}");
    s.stop().await;
}

async fn preflight(s: &TestServer, origin: &str) -> reqwest::Response {
    s.client
        .request(Method::OPTIONS, s.url("/v1/topics/x/messages"))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization, content-type",
        )
        .send()
        .await
        .expect("preflight")
}

async fn simple_get(s: &TestServer, origin: &str) -> reqwest::Response {
    s.client
        .get(s.url("/healthz"))
        .header(header::ORIGIN, origin)
        .send()
        .await
        .expect("get")
}

fn cors_headers(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_configured_origins_only() {
    let s = TestServer::builder()
        .config(|c| c.cors.allowed_origins = vec!["https://app.example".into()])
        .start()
        .await;
    let resp = preflight(&s, "https://app.example").await;
    assert!(resp.status().is_success(), "{resp:?}");
    let h = resp.headers();
    assert_eq!(
        h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().expect("ascii")),
        Some("https://app.example"),
        "{h:?}"
    );
    let methods = h
        .get(header::ACCESS_CONTROL_ALLOW_METHODS)
        .map(|v| v.to_str().expect("ascii").to_ascii_uppercase())
        .unwrap_or_default();
    assert!(methods.contains("POST"), "{h:?}");
    let allowed_headers = h
        .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
        .map(|v| v.to_str().expect("ascii").to_ascii_lowercase())
        .unwrap_or_default();
    assert!(allowed_headers.contains("authorization"), "{h:?}");

    let resp = simple_get(&s, "https://app.example").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().expect("ascii")),
        Some("https://app.example")
    );

    for other in [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil",
    ] {
        let resp = preflight(&s, other).await;
        assert!(
            resp.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "{other}: {resp:?}"
        );
        let resp = simple_get(&s, other).await;
        assert!(
            resp.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "{other}: {resp:?}"
        );
    }
    s.stop().await;

    // No origins configured: no CORS headers at all.
    let s = TestServer::start().await;
    let resp = preflight(&s, "https://app.example").await;
    assert!(cors_headers(&resp).is_empty(), "{resp:?}");
    assert!(!resp.status().is_server_error(), "{resp:?}");
    let resp = simple_get(&s, "https://app.example").await;
    assert_eq!(resp.status(), 200);
    assert!(cors_headers(&resp).is_empty(), "{resp:?}");
    s.stop().await;
}
