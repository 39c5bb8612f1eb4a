//! Bearer-token authentication and scopes, end to end over HTTP.
//!
//! - A request without a token, with an unknown token, or with a malformed `Authorization`
//!   header answers `401 unauthenticated` with a `WWW-Authenticate` header, and changes nothing.
//! - Every route needing `publish`, `consume` or `admin` answers `403 forbidden` to tokens
//!   without that scope (changing nothing) and succeeds with it; scopes are independent. The
//!   table covers every route of the router, event streams included (only the response head).
//! - `GET` of one topic, subscription or queue, and the subscription list, take any scope on
//!   the name and refuse a token with none.
//! - Pattern scopes (`publish:orders.*`) allow matching names only.
//! - `/healthz`, `/readyz` and `/openapi.json` need no token; `/metrics` and `/v1/stats` need
//!   `admin`; `GET /v1/topics` lists only the topics the token has some scope on.
//! - Configuration: a non-loopback listener without tokens is refused unless
//!   `server.allow_anonymous`.

use std::sync::Arc;

use serde_json::{Value, json};
use wharf_server::config::TokenConfig;
use wharf_server::{Config, Overrides};
use wharf_test::TestServer;
use wharf_test::reqwest::{Method, StatusCode, header};

const ADMIN: &str = "admin-secret-0123456789";
const PUBLISHER: &str = "publisher-secret-0123456789";
const CONSUMER: &str = "consumer-secret-0123456789";
const ORDERS: &str = "orders-secret-0123456789";
const PAYMENTS_READER: &str = "payments-reader-0123456789";

fn token(name: &str, token: &str, scopes: &[&str]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        token: token.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// A server with one token per scope (no patterns).
async fn scoped_server() -> TestServer {
    TestServer::builder()
        .config(|c| {
            c.auth.tokens.push(token("admin", ADMIN, &["admin"]));
            c.auth.tokens.push(token("pub", PUBLISHER, &["publish"]));
            c.auth.tokens.push(token("con", CONSUMER, &["consume"]));
        })
        .token(ADMIN)
        .start()
        .await
}

/// A server with an admin and tokens limited by name patterns.
async fn pattern_server() -> TestServer {
    TestServer::builder()
        .config(|c| {
            c.auth.tokens.push(token("admin", ADMIN, &["admin"]));
            c.auth
                .tokens
                .push(token("orders", ORDERS, &["publish:orders.*"]));
            c.auth.tokens.push(token(
                "payments-reader",
                PAYMENTS_READER,
                &["consume:payments"],
            ));
        })
        .token(ADMIN)
        .start()
        .await
}

/// Sends a request with a raw `Authorization` header (or none); returns status, headers, body.
async fn raw_auth(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
    authorization: Option<&str>,
) -> (StatusCode, header::HeaderMap, Value) {
    let mut req = s.client.request(method, s.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, value)
}

async fn high_watermark(s: &TestServer, topic: &str) -> u64 {
    let (st, body) = s
        .call_with_token(
            Method::GET,
            &format!("/v1/topics/{topic}"),
            None,
            Some(ADMIN),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    body["partitions"][0]["high_watermark"]
        .as_u64()
        .expect("high watermark")
}

fn assert_code(st: StatusCode, body: &Value, status: u16, code: &str, what: &str) {
    assert_eq!(st.as_u16(), status, "{what}: {body}");
    assert_eq!(body["code"], code, "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_or_malformed_tokens_are_unauthenticated() {
    let s = scoped_server().await;
    let (st, body) = s.put("/v1/topics/t", json!({})).await;
    assert_eq!(st, 200, "{body}");

    let bad: &[(&str, Option<&str>)] = &[
        ("no header", None),
        ("unknown token", Some("Bearer unknown-secret-0123456789")),
        ("basic scheme", Some("Basic x")),
        (
            "basic with a real token",
            Some("Basic admin-secret-0123456789"),
        ),
        ("bare token", Some("admin-secret-0123456789")),
        ("empty bearer", Some("Bearer ")),
        ("token prefix", Some("Bearer admin-secret-012345678")),
        ("token plus suffix", Some("Bearer admin-secret-01234567890")),
        ("padded token", Some("Bearer  admin-secret-0123456789")),
    ];
    let routes: &[(Method, &str, Option<Value>)] = &[
        (Method::GET, "/v1/topics", None),
        (Method::GET, "/v1/topics/t", None),
        (
            Method::POST,
            "/v1/topics/t/messages",
            Some(json!({"value": "sneaky"})),
        ),
        (Method::PUT, "/v1/topics/other", Some(json!({}))),
        (Method::DELETE, "/v1/topics/t", None),
        (
            Method::POST,
            "/v1/queues/q/messages",
            Some(json!({"value": "x"})),
        ),
        (Method::GET, "/metrics", None),
        (Method::GET, "/v1/stats", None),
    ];
    for (what, authorization) in bad {
        for (method, path, body) in routes {
            let (st, headers, resp) =
                raw_auth(&s, method.clone(), path, body.clone(), *authorization).await;
            let ctx = format!("{what}: {method} {path}");
            assert_code(st, &resp, 401, "unauthenticated", &ctx);
            let www = headers
                .get(header::WWW_AUTHENTICATE)
                .unwrap_or_else(|| panic!("{ctx}: no WWW-Authenticate header"));
            assert!(
                www.to_str().expect("ascii").starts_with("Bearer"),
                "{ctx}: {www:?}"
            );
        }
    }
    // Nothing changed: no message stored, no topic created or deleted, no queue created.
    assert_eq!(high_watermark(&s, "t").await, 0);
    let (st, body) = s.get("/v1/topics/other").await;
    assert_code(
        st,
        &body,
        404,
        "topic_not_found",
        "PUT without a valid token",
    );
    let (st, body) = s.get("/v1/queues/q").await;
    assert_eq!(
        st, 404,
        "send without a valid token created the queue: {body}"
    );

    // The right token works (lower-case scheme too).
    let (st, _, body) = raw_auth(
        &s,
        Method::GET,
        "/v1/topics",
        None,
        Some("bearer admin-secret-0123456789"),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    s.stop().await;
}

/// One request per route; `scope` is what it needs (`ANY`: any scope on the name).
struct Case {
    scope: &'static str,
    method: Method,
    path: &'static str,
    body: Option<Value>,
    ok: u16,
    /// A Server-Sent Events route: only the status of the response head is checked.
    sse: bool,
    /// A settle route: every ack id must settle (a refused attempt settled none).
    settles: bool,
}

/// The scope of routes that any scope on the name may use (`GET` of one topic, subscription or
/// queue, and the lists).
const ANY: &str = "any";

fn case(scope: &'static str, method: Method, path: &'static str, body: Option<Value>) -> Case {
    let ok = if method == Method::DELETE { 204 } else { 200 };
    Case {
        scope,
        method,
        path,
        body,
        ok,
        sse: false,
        settles: false,
    }
}

impl Case {
    fn sse(self) -> Self {
        Self { sse: true, ..self }
    }

    fn settles(self) -> Self {
        Self {
            settles: true,
            ..self
        }
    }
}

/// Sends a case's request with `tok`; an event stream's body is not read (the response is
/// dropped, closing the stream), so its body is `Value::Null`.
async fn send_case(s: &TestServer, c: &Case, tok: &str) -> (StatusCode, Value) {
    if !c.sse {
        return s
            .call_with_token(c.method.clone(), c.path, c.body.clone(), Some(tok))
            .await;
    }
    let resp = s
        .client
        .request(c.method.clone(), s.url(c.path))
        .bearer_auth(tok)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let event_stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if event_stream {
        return (status, Value::Null);
    }
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// The ack ids of `n` deliveries received (with `consume`) from `path`.
async fn receive_ids(s: &TestServer, path: &str, n: usize) -> Vec<String> {
    let (st, body) = s
        .call_with_token(
            Method::POST,
            path,
            Some(json!({"max": n, "wait_ms": 1000, "lease_ms": 600_000})),
            Some(CONSUMER),
        )
        .await;
    assert_eq!(st, 200, "{path}: {body}");
    let ids: Vec<String> = body["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: {body}"))
        .iter()
        .map(|d| d["ack_id"].as_str().expect("ack id").to_owned())
        .collect();
    assert_eq!(ids.len(), n, "{path}: {body}");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scope_is_needed_by_its_routes_and_suffices() {
    let s = scoped_server().await;
    for (path, body) in [
        ("/v1/topics/events", json!({})),
        (
            "/v1/topics/events/subscriptions/audit",
            json!({"kind": "stream"}),
        ),
        (
            "/v1/topics/events/subscriptions/workers",
            json!({"kind": "shared"}),
        ),
        ("/v1/queues/jobs", json!({})),
        ("/v1/topics/doomed", json!({})),
        (
            "/v1/topics/events/subscriptions/tail",
            json!({"kind": "stream"}),
        ),
        (
            "/v1/topics/events/subscriptions/watch",
            json!({"kind": "stream"}),
        ),
        ("/v1/topics/tasks", json!({})),
        (
            "/v1/topics/tasks/subscriptions/workers",
            json!({"kind": "shared"}),
        ),
        ("/v1/queues/work", json!({})),
        ("/v1/queues/doomed-queue", json!({})),
    ] {
        let (st, resp) = s.put(path, body).await;
        assert_eq!(st, 200, "{path}: {resp}");
    }
    // Deliveries to settle (one ack id per settle route) and a stream member `m1`.
    let four =
        json!({"messages": [{"value": "1"}, {"value": "2"}, {"value": "3"}, {"value": "4"}]});
    for path in ["/v1/topics/tasks/messages", "/v1/queues/work/messages"] {
        let (st, body) = s
            .call_with_token(Method::POST, path, Some(four.clone()), Some(PUBLISHER))
            .await;
        assert_eq!(st, 200, "{path}: {body}");
    }
    let sub_ids = receive_ids(&s, "/v1/topics/tasks/subscriptions/workers/receive", 4).await;
    let queue_ids = receive_ids(&s, "/v1/queues/work/receive", 4).await;
    let (st, body) = s
        .call_with_token(
            Method::POST,
            "/v1/topics/events/subscriptions/tail/members",
            Some(json!({"member_id": "m1"})),
            Some(CONSUMER),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["partitions"], json!([0]), "{body}");
    let tokens = [
        ("admin", ADMIN),
        ("publish", PUBLISHER),
        ("consume", CONSUMER),
    ];
    let cases = vec![
        case(
            "publish",
            Method::POST,
            "/v1/topics/events/messages",
            Some(json!({"value": "e"})),
        ),
        case(
            "publish",
            Method::POST,
            "/v1/queues/jobs/messages",
            Some(json!({"value": "j"})),
        ),
        case(
            "publish",
            Method::POST,
            "/v1/queues/fresh-queue/messages",
            Some(json!({"value": "f"})),
        ),
        case("consume", Method::GET, "/v1/topics/events/messages", None),
        case(
            "consume",
            Method::POST,
            "/v1/topics/events/subscriptions/audit/members",
            Some(json!({})),
        ),
        case(
            "consume",
            Method::POST,
            "/v1/topics/events/subscriptions/workers/receive",
            Some(json!({})),
        ),
        case(
            "consume",
            Method::GET,
            "/v1/topics/events/subscriptions/workers/dead-letters",
            None,
        ),
        case(
            "consume",
            Method::POST,
            "/v1/queues/jobs/receive",
            Some(json!({})),
        ),
        case("consume", Method::GET, "/v1/queues/jobs/dead-letters", None),
        case(
            "admin",
            Method::PUT,
            "/v1/topics/created",
            Some(json!({"partitions": 2})),
        ),
        case(
            "admin",
            Method::PUT,
            "/v1/topics/events/subscriptions/late",
            Some(json!({"kind": "stream"})),
        ),
        case(
            "admin",
            Method::POST,
            "/v1/topics/events/subscriptions/audit/reset",
            Some(json!({"to": "latest"})),
        ),
        case(
            "admin",
            Method::POST,
            "/v1/topics/events/subscriptions/workers/redrive",
            Some(json!({})),
        ),
        case("admin", Method::PUT, "/v1/queues/jobs2", Some(json!({}))),
        case(
            "admin",
            Method::DELETE,
            "/v1/topics/events/subscriptions/late",
            None,
        ),
        case("admin", Method::DELETE, "/v1/topics/doomed", None),
        case("admin", Method::GET, "/v1/stats", None),
        // Stream members: `m1` owns the only partition of `events`.
        case(
            "consume",
            Method::POST,
            "/v1/topics/events/subscriptions/tail/members/m1/heartbeat",
            None,
        ),
        case(
            "consume",
            Method::POST,
            "/v1/topics/events/subscriptions/tail/fetch",
            Some(json!({"member_id": "m1", "wait_ms": 0})),
        ),
        case(
            "consume",
            Method::POST,
            "/v1/topics/events/subscriptions/tail/commit",
            Some(json!({"member_id": "m1", "offsets": [{"partition": 0, "offset": 1}]})),
        ),
        // A refused leave removed nothing: leaving an unknown member is an error.
        case(
            "consume",
            Method::DELETE,
            "/v1/topics/events/subscriptions/tail/members/m1",
            None,
        ),
        // Shared settles: a refused attempt settled nothing, so the allowed one settles all.
        case(
            "consume",
            Method::POST,
            "/v1/topics/tasks/subscriptions/workers/ack",
            Some(json!({"ack_ids": [sub_ids[0]]})),
        )
        .settles(),
        case(
            "consume",
            Method::POST,
            "/v1/topics/tasks/subscriptions/workers/nack",
            Some(json!({"ack_ids": [sub_ids[1]], "delay_ms": 60_000})),
        )
        .settles(),
        case(
            "consume",
            Method::POST,
            "/v1/topics/tasks/subscriptions/workers/extend",
            Some(json!({"ack_ids": [sub_ids[2]], "lease_ms": 60_000})),
        )
        .settles(),
        case(
            "consume",
            Method::POST,
            "/v1/topics/tasks/subscriptions/workers/terminate",
            Some(json!({"ack_ids": [sub_ids[3]], "reason": "test"})),
        )
        .settles(),
        case(
            "consume",
            Method::POST,
            "/v1/queues/work/ack",
            Some(json!({"ack_ids": [queue_ids[0]]})),
        )
        .settles(),
        case(
            "consume",
            Method::POST,
            "/v1/queues/work/nack",
            Some(json!({"ack_ids": [queue_ids[1]], "delay_ms": 60_000})),
        )
        .settles(),
        case(
            "consume",
            Method::POST,
            "/v1/queues/work/extend",
            Some(json!({"ack_ids": [queue_ids[2]], "lease_ms": 60_000})),
        )
        .settles(),
        case(
            "consume",
            Method::POST,
            "/v1/queues/work/terminate",
            Some(json!({"ack_ids": [queue_ids[3]], "reason": "test"})),
        )
        .settles(),
        case("consume", Method::GET, "/v1/queues/work/dead-letters", None),
        case(
            "admin",
            Method::POST,
            "/v1/queues/work/redrive",
            Some(json!({})),
        ),
        // Reads of one thing and the lists: any scope on the name.
        case(ANY, Method::GET, "/v1/topics", None),
        case(ANY, Method::GET, "/v1/topics/events", None),
        case(ANY, Method::GET, "/v1/topics/events/subscriptions", None),
        case(
            ANY,
            Method::GET,
            "/v1/topics/events/subscriptions/audit",
            None,
        ),
        case(ANY, Method::GET, "/v1/queues/jobs", None),
        case("admin", Method::DELETE, "/v1/queues/doomed-queue", None),
        // Event streams: the allowed one opens (200 and an event stream), then is dropped.
        case("consume", Method::GET, "/v1/topics/events/events", None).sse(),
        case(
            "consume",
            Method::GET,
            "/v1/topics/events/subscriptions/watch/events",
            None,
        )
        .sse(),
        case(
            "consume",
            Method::GET,
            "/v1/topics/tasks/subscriptions/workers/events",
            None,
        )
        .sse(),
        case("consume", Method::GET, "/v1/queues/jobs/events", None).sse(),
    ];
    for c in &cases {
        for (scope, tok) in tokens {
            let ctx = format!("{} {} with only {scope}", c.method, c.path);
            if c.scope == ANY {
                let (st, body) = send_case(&s, c, tok).await;
                assert_eq!(st.as_u16(), c.ok, "{ctx}: {body}");
                continue;
            }
            if scope == c.scope {
                continue;
            }
            let (st, body) = send_case(&s, c, tok).await;
            assert_code(st, &body, 403, "forbidden", &ctx);
        }
        if c.scope == ANY {
            continue;
        }
        // Refused attempts changed nothing that the allowed one would then trip over.
        let tok = tokens
            .iter()
            .find(|(scope, _)| *scope == c.scope)
            .map(|(_, t)| *t)
            .expect("a token with the scope");
        let (st, body) = send_case(&s, c, tok).await;
        let ctx = format!("{} {} with {}", c.method, c.path, c.scope);
        assert_eq!(st.as_u16(), c.ok, "{ctx}: {body}");
        if c.settles {
            let results = body["results"]
                .as_array()
                .unwrap_or_else(|| panic!("{ctx}: {body}"));
            assert_eq!(results.len(), 1, "{ctx}: {body}");
            assert!(
                results.iter().all(|r| r["error"].is_null()),
                "{ctx}: {body}"
            );
        }
    }
    // The allowed commit and leave took effect.
    let (st, body) = s.get("/v1/topics/events/subscriptions/tail").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["members"], json!([]), "{body}");
    assert_eq!(body["partitions"][0]["committed"], 1, "{body}");
    // Each settle happened once: one acked, one delayed, one in flight, one dead-lettered.
    let (st, body) = s.get("/v1/topics/tasks/subscriptions/workers").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        (&body["in_flight"], &body["delayed"], &body["dead_lettered"]),
        (&json!(1), &json!(1), &json!(1)),
        "{body}"
    );
    // The refused queue deletes removed nothing; the allowed one did.
    let (st, body) = s.get("/v1/queues/doomed-queue").await;
    assert_eq!(st, 404, "{body}");
    // The metrics need admin too (text, not JSON).
    for tok in [PUBLISHER, CONSUMER] {
        let (st, body) = s
            .call_with_token(Method::GET, "/metrics", None, Some(tok))
            .await;
        assert_code(st, &body, 403, "forbidden", "/metrics without admin");
    }
    let (st, body) = s
        .call_with_token(Method::GET, "/metrics", None, Some(ADMIN))
        .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.as_str()
            .is_some_and(|t| t.contains("wharf_storage_writable")),
        "{body}"
    );
    // Exactly the allowed publishes are stored: one on events.
    assert_eq!(high_watermark(&s, "events").await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_change_nothing() {
    let s = scoped_server().await;
    for (path, body) in [
        ("/v1/topics/keep", json!({})),
        (
            "/v1/topics/keep/subscriptions/audit",
            json!({"kind": "stream"}),
        ),
    ] {
        let (st, resp) = s.put(path, body).await;
        assert_eq!(st, 200, "{path}: {resp}");
    }
    let (st, body) = s
        .call_with_token(
            Method::POST,
            "/v1/topics/keep/messages",
            Some(json!({"value": "1"})),
            Some(PUBLISHER),
        )
        .await;
    assert_eq!(st, 200, "{body}");

    // Publish without publish: not stored, not even as a queue.
    for tok in [ADMIN, CONSUMER] {
        let (st, body) = s
            .call_with_token(
                Method::POST,
                "/v1/topics/keep/messages",
                Some(json!({"value": "2"})),
                Some(tok),
            )
            .await;
        assert_code(st, &body, 403, "forbidden", "publish");
        let (st, body) = s
            .call_with_token(
                Method::POST,
                "/v1/queues/new-queue/messages",
                Some(json!({"value": "2"})),
                Some(tok),
            )
            .await;
        assert_code(st, &body, 403, "forbidden", "send");
    }
    assert_eq!(high_watermark(&s, "keep").await, 1);
    let (st, body) = s.get("/v1/queues/new-queue").await;
    assert_eq!(st, 404, "a refused send created a queue: {body}");

    // Admin operations without admin.
    for tok in [PUBLISHER, CONSUMER] {
        let (st, body) = s
            .call_with_token(Method::PUT, "/v1/topics/new", Some(json!({})), Some(tok))
            .await;
        assert_code(st, &body, 403, "forbidden", "create topic");
        let (st, body) = s
            .call_with_token(Method::DELETE, "/v1/topics/keep", None, Some(tok))
            .await;
        assert_code(st, &body, 403, "forbidden", "delete topic");
        let (st, body) = s
            .call_with_token(
                Method::DELETE,
                "/v1/topics/keep/subscriptions/audit",
                None,
                Some(tok),
            )
            .await;
        assert_code(st, &body, 403, "forbidden", "delete subscription");
        let (st, body) = s
            .call_with_token(
                Method::PUT,
                "/v1/topics/keep/subscriptions/other",
                Some(json!({"kind": "shared"})),
                Some(tok),
            )
            .await;
        assert_code(st, &body, 403, "forbidden", "create subscription");
    }
    let (st, body) = s.get("/v1/topics/new").await;
    assert_code(st, &body, 404, "topic_not_found", "refused create");
    assert_eq!(high_watermark(&s, "keep").await, 1);
    let (st, body) = s.get("/v1/topics/keep/subscriptions").await;
    assert_eq!(st, 200, "{body}");
    let names: Vec<&str> = body["subscriptions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, ["audit"], "{body}");

    // Consume without consume: a join adds no member.
    for tok in [ADMIN, PUBLISHER] {
        let (st, body) = s
            .call_with_token(
                Method::POST,
                "/v1/topics/keep/subscriptions/audit/members",
                Some(json!({})),
                Some(tok),
            )
            .await;
        assert_code(st, &body, 403, "forbidden", "join");
    }
    let (st, body) = s.get("/v1/topics/keep/subscriptions/audit").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["members"], json!([]), "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_scopes_allow_matching_names_only() {
    let s = pattern_server().await;
    for t in ["orders.created", "orders.shipped", "orders", "payments"] {
        let (st, body) = s.put(&format!("/v1/topics/{t}"), json!({})).await;
        assert_eq!(st, 200, "{t}: {body}");
    }
    for t in ["orders.created", "orders.shipped"] {
        let (st, body) = s
            .call_with_token(
                Method::POST,
                &format!("/v1/topics/{t}/messages"),
                Some(json!({"value": t})),
                Some(ORDERS),
            )
            .await;
        assert_eq!(st, 200, "{t}: {body}");
    }
    // `orders.*` does not match `orders` or `payments`; publish is not consume or admin.
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/topics/payments/messages",
            Some(json!({"value": "x"})),
        ),
        (
            Method::POST,
            "/v1/topics/orders/messages",
            Some(json!({"value": "x"})),
        ),
        (
            Method::POST,
            "/v1/topics/orders-created/messages",
            Some(json!({"value": "x"})),
        ),
        (Method::GET, "/v1/topics/orders.created/messages", None),
        (Method::PUT, "/v1/topics/orders.new", Some(json!({}))),
        (Method::DELETE, "/v1/topics/orders.created", None),
        (Method::GET, "/v1/topics/payments", None),
        // GET of one subscription or queue, and the subscription list, need some scope on
        // the name too.
        (Method::GET, "/v1/topics/payments/subscriptions", None),
        (
            Method::GET,
            "/v1/topics/payments/subscriptions/billing",
            None,
        ),
        (Method::GET, "/v1/queues/payments", None),
        (Method::GET, "/v1/topics/payments/events", None),
        (Method::GET, "/v1/queues/payments/events", None),
    ] {
        let (st, resp) = s
            .call_with_token(method.clone(), path, body, Some(ORDERS))
            .await;
        assert_code(st, &resp, 403, "forbidden", &format!("{method} {path}"));
    }
    // A token sees the topics it has a scope on.
    let (st, body) = s
        .call_with_token(Method::GET, "/v1/topics/orders.created", None, Some(ORDERS))
        .await;
    assert_eq!(st, 200, "{body}");
    // `consume:payments` reads payments, nothing else.
    let (st, body) = s
        .call_with_token(
            Method::GET,
            "/v1/topics/payments/messages",
            None,
            Some(PAYMENTS_READER),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = s
        .call_with_token(
            Method::GET,
            "/v1/topics/orders.created/messages",
            None,
            Some(PAYMENTS_READER),
        )
        .await;
    assert_code(st, &body, 403, "forbidden", "consume outside the pattern");
    let (st, body) = s
        .call_with_token(
            Method::POST,
            "/v1/topics/payments/messages",
            Some(json!({"value": "x"})),
            Some(PAYMENTS_READER),
        )
        .await;
    assert_code(st, &body, 403, "forbidden", "publish with consume only");

    assert_eq!(high_watermark(&s, "orders.created").await, 1);
    assert_eq!(high_watermark(&s, "orders.shipped").await, 1);
    assert_eq!(high_watermark(&s, "orders").await, 0);
    assert_eq!(high_watermark(&s, "payments").await, 0);
    let (st, body) = s.get("/v1/topics/orders.new").await;
    assert_code(st, &body, 404, "topic_not_found", "refused create");
    s.stop().await;
}

fn topic_names(body: &Value) -> Vec<String> {
    let mut names: Vec<String> = body["topics"]
        .as_array()
        .unwrap_or_else(|| panic!("no topics list: {body}"))
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_list_shows_only_topics_the_token_has_a_scope_on() {
    let s = pattern_server().await;
    for t in [
        "orders.created",
        "orders.shipped",
        "orders",
        "payments",
        "audit",
    ] {
        let (st, body) = s.put(&format!("/v1/topics/{t}"), json!({})).await;
        assert_eq!(st, 200, "{t}: {body}");
    }
    let list = |tok: &'static str| {
        let s = &s;
        async move {
            let (st, body) = s
                .call_with_token(Method::GET, "/v1/topics", None, Some(tok))
                .await;
            assert_eq!(st, 200, "{body}");
            topic_names(&body)
        }
    };
    assert_eq!(list(ORDERS).await, ["orders.created", "orders.shipped"]);
    assert_eq!(list(PAYMENTS_READER).await, ["payments"]);
    assert_eq!(
        list(ADMIN).await,
        [
            "audit",
            "orders",
            "orders.created",
            "orders.shipped",
            "payments"
        ]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_openapi_are_open_metrics_and_stats_need_admin() {
    let s = pattern_server().await;
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let (st, body) = s.call_with_token(Method::GET, path, None, None).await;
        assert_eq!(st, 200, "{path}: {body}");
        assert!(body.is_object(), "{path}: {body}");
    }
    let (_, body) = s
        .call_with_token(Method::GET, "/openapi.json", None, None)
        .await;
    assert!(body["openapi"].is_string(), "{body}");
    let (_, body) = s.call_with_token(Method::GET, "/readyz", None, None).await;
    assert_eq!(body["status"], "ok", "{body}");

    for path in ["/metrics", "/v1/stats"] {
        let (st, body) = s.call_with_token(Method::GET, path, None, None).await;
        assert_code(st, &body, 401, "unauthenticated", path);
        for tok in [ORDERS, PAYMENTS_READER] {
            let (st, body) = s.call_with_token(Method::GET, path, None, Some(tok)).await;
            assert_code(st, &body, 403, "forbidden", path);
        }
        let (st, body) = s
            .call_with_token(Method::GET, path, None, Some(ADMIN))
            .await;
        assert_eq!(st, 200, "{path}: {body}");
    }
    s.stop().await;
}

#[test]
fn open_listener_without_tokens_is_refused_unless_anonymous() {
    for listen in ["0.0.0.0:7400", "[::]:7400", "192.0.2.10:7400", "10.1.2.3:0"] {
        let mut c = Config::default();
        c.server.listen = listen.into();
        let e = c.validate().expect_err(listen);
        assert!(e.to_string().contains("server.listen"), "{listen}: {e}");

        let mut anonymous = c.clone();
        anonymous.server.allow_anonymous = true;
        anonymous
            .validate()
            .unwrap_or_else(|e| panic!("{listen}: {e}"));

        let mut with_tokens = c.clone();
        with_tokens
            .auth
            .tokens
            .push(token("svc", "0123456789abcdef", &["publish:orders.*"]));
        with_tokens
            .validate()
            .unwrap_or_else(|e| panic!("{listen}: {e}"));
    }
    for listen in ["127.0.0.1:7400", "[::1]:7400", "127.0.0.2:0"] {
        let mut c = Config::default();
        c.server.listen = listen.into();
        c.validate().unwrap_or_else(|e| panic!("{listen}: {e}"));
    }

    // The same through Config::load: flag, environment and file.
    let open = Overrides {
        listen: Some("0.0.0.0:7400".into()),
        ..Overrides::default()
    };
    let e = Config::load(None, Vec::new(), &open).expect_err("refused");
    assert!(e.to_string().contains("server.listen"), "{e}");
    Config::load(
        None,
        vec![("WHARF_SERVER_ALLOW_ANONYMOUS".into(), "true".into())],
        &open,
    )
    .expect("allowed by the environment");
    Config::load(
        None,
        Vec::new(),
        &Overrides {
            allow_anonymous: true,
            ..open.clone()
        },
    )
    .expect("allowed by the flag");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wharf.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"0.0.0.0:7400\"\n\n[[auth.tokens]]\nname = \"svc\"\n\
         token = \"0123456789abcdef\"\nscopes = [\"admin\"]\n",
    )
    .expect("write");
    let c = Config::load(Some(&path), Vec::new(), &Overrides::default()).expect("tokens");
    assert_eq!(c.auth.tokens.len(), 1);
    std::fs::write(&path, "[server]\nlisten = \"0.0.0.0:7400\"\n").expect("write");
    let e = Config::load(Some(&path), Vec::new(), &Overrides::default()).expect_err("refused");
    assert!(e.to_string().contains("server.listen"), "{e}");

    // Short or blank secrets are refused.
    let mut c = Config::default();
    c.auth
        .tokens
        .push(token("short", "fifteen-chars!!", &["admin"]));
    let e = c.validate().expect_err("short token");
    assert!(e.to_string().contains("auth.tokens[0].token"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_to_start_open_on_a_public_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let engine_config = wharf_broker::EmbeddedConfig::new(&data);
    let engine = tokio::task::spawn_blocking(move || {
        wharf_broker::EmbeddedEngine::open(engine_config).expect("engine")
    })
    .await
    .expect("join");
    let mut config = Config::default();
    config.server.listen = "0.0.0.0:0".into();
    config.storage.data.clone_from(&data);
    let r = wharf_server::start(config, Arc::new(engine.clone())).await;
    match r {
        Err(wharf_server::ServeError::Config(e)) => {
            assert!(e.to_string().contains("server.listen"), "{e}");
        }
        Err(e) => panic!("refused for the wrong reason: {e}"),
        Ok(h) => {
            let addr = h.local_addr();
            h.shutdown().await;
            panic!("started open on {addr}");
        }
    }
    let _ = tokio::task::spawn_blocking(move || engine.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_reads_metrics_and_stats_and_nothing_else() {
    let scraper = "prometheus-scraper-token";
    let s = wharf_test::TestServer::builder()
        .config(|c| {
            c.auth.tokens.push(wharf_server::config::TokenConfig {
                name: "prometheus".into(),
                token: scraper.into(),
                scopes: vec!["metrics".into()],
            });
        })
        .start()
        .await;
    for path in ["/metrics", "/v1/stats"] {
        let (st, body) = s
            .call_with_token(Method::GET, path, None, Some(scraper))
            .await;
        assert_eq!(st, 200, "{path}: {body}");
    }
    let (st, body) = s
        .call_with_token(Method::PUT, "/v1/topics/t", Some(json!({})), Some(scraper))
        .await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["code"], "forbidden");
    let (st, body) = s
        .call_with_token(Method::GET, "/v1/topics/t/messages", None, Some(scraper))
        .await;
    assert_eq!(st, 403, "{body}");
    let (st, _) = s
        .call_with_token(Method::GET, "/v1/topics", None, Some(scraper))
        .await;
    assert_eq!(st, 200);
    s.stop().await;
}
