//! The server on a failing disk ([`FaultFs`]): once fsync fails or the disk is full, writes
//! answer `503 storage_unavailable` with `Retry-After`, `/readyz` answers 503 with a reason,
//! `/healthz` stays 200, messages stored before are still read back intact, and the metrics
//! show `wharf_storage_writable 0`.

use std::path::PathBuf;

use serde_json::{Value, json};
use wharf_log::vfs::fault::FaultFs;
use wharf_test::TestServer;
use wharf_test::reqwest::{Method, StatusCode, header};

/// A server whose engine keeps its data in `fs` (nothing on the real disk).
async fn on(fs: &FaultFs) -> TestServer {
    TestServer::builder()
        .vfs(fs.shared())
        .data_dir(PathBuf::from("/wharf-fault/data"))
        .start()
        .await
}

/// Status, `Retry-After`, and the body as JSON (or a string).
async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = s.client.request(method, s.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().expect("ascii").to_owned());
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, retry_after, value)
}

fn assert_unavailable(st: StatusCode, retry_after: Option<&str>, body: &Value, what: &str) {
    assert_eq!(st, 503, "{what}: {body}");
    assert_eq!(body["code"], "storage_unavailable", "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    let secs: u64 = retry_after
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: Retry-After is not seconds: {e}"));
    assert!(secs >= 1, "{what}: Retry-After {secs}");
}

async fn metrics(s: &TestServer) -> String {
    let (st, body) = s.get("/metrics").await;
    assert_eq!(st, 200, "{body}");
    body.as_str().expect("text").to_owned()
}

fn writable_gauge(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("wharf_storage_writable "))
}

/// Creates `t` and publishes `a`, `b`, `c`; checks the server is ready and writable.
async fn healthy_start(s: &TestServer) {
    let (st, body) = s.put("/v1/topics/t", json!({})).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = s
        .put(
            "/v1/topics/t/subscriptions/workers",
            json!({"kind": "shared"}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    for v in ["a", "b", "c"] {
        let (st, body) = s
            .post("/v1/topics/t/messages", json!({"key": "k", "value": v}))
            .await;
        assert_eq!(st, 200, "{body}");
    }
    let (st, body) = s.get("/readyz").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(writable_gauge(&metrics(s).await), Some("1"));
}

/// Everything a broken disk should look like from outside.
async fn assert_broken_but_readable(s: &TestServer, what: &str) {
    // Writes keep failing.
    let (st, ra, body) = call(
        s,
        Method::POST,
        "/v1/topics/t/messages",
        Some(json!({"value": "again"})),
    )
    .await;
    assert_unavailable(st, ra.as_deref(), &body, &format!("{what}: second publish"));

    // Not ready, with a reason; alive.
    let (st, body) = s.get("/readyz").await;
    assert_eq!(st, 503, "{what}: {body}");
    assert_eq!(body["status"], "unavailable", "{what}: {body}");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{what}: no reason: {body}"
    );
    let (st, body) = s.get("/healthz").await;
    assert_eq!(st, 200, "{what}: {body}");
    assert_eq!(body["status"], "ok", "{what}: {body}");

    // The messages acknowledged before are read back, and nothing else.
    let (st, body) = s.get("/v1/topics/t/messages?offset=0").await;
    assert_eq!(st, 200, "{what}: {body}");
    let values: Vec<&str> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["value"].as_str().expect("value"))
        .collect();
    assert_eq!(values, ["a", "b", "c"], "{what}: {body}");
    assert_eq!(body["high_watermark"], 3, "{what}: {body}");
    for m in body["messages"].as_array().expect("messages") {
        assert_eq!(m["key"], "k", "{what}: {body}");
    }
    let (st, body) = s.get("/v1/topics/t").await;
    assert_eq!(st, 200, "{what}: {body}");

    // Metrics and stats say so.
    let text = metrics(s).await;
    assert_eq!(writable_gauge(&text), Some("0"), "{what}: {text}");
    let (st, body) = s.get("/v1/stats").await;
    assert_eq!(st, 200, "{what}: {body}");
    assert_eq!(body["writable"], false, "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_fsync_makes_writes_unavailable_and_reads_keep_working() {
    let fs = FaultFs::new();
    let s = on(&fs).await;
    healthy_start(&s).await;

    fs.set_fail_sync(true);
    let (st, ra, body) = call(
        &s,
        Method::POST,
        "/v1/topics/t/messages",
        Some(json!({"key": "k", "value": "lost"})),
    )
    .await;
    assert_unavailable(st, ra.as_deref(), &body, "publish with failing fsync");
    assert_broken_but_readable(&s, "failing fsync").await;

    // A batch and a queue send fail the same way.
    let (st, ra, body) = call(
        &s,
        Method::POST,
        "/v1/topics/t/messages",
        Some(json!({"messages": [{"value": "x"}, {"value": "y"}]})),
    )
    .await;
    assert_unavailable(st, ra.as_deref(), &body, "batch");

    // Still unavailable once fsync works again: the log stays poisoned until reopened.
    fs.set_fail_sync(false);
    let (st, ra, body) = call(
        &s,
        Method::POST,
        "/v1/topics/t/messages",
        Some(json!({"value": "after"})),
    )
    .await;
    assert_unavailable(st, ra.as_deref(), &body, "publish after the fault cleared");
    assert_broken_but_readable(&s, "after the fault cleared").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_writes_unavailable_and_reads_keep_working() {
    let fs = FaultFs::new();
    let s = on(&fs).await;
    healthy_start(&s).await;

    fs.set_no_space(true);
    let (st, ra, body) = call(
        &s,
        Method::POST,
        "/v1/topics/t/messages",
        Some(json!({"key": "k", "value": "lost"})),
    )
    .await;
    assert_unavailable(st, ra.as_deref(), &body, "publish on a full disk");
    assert_broken_but_readable(&s, "full disk").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_writes_on_a_broken_disk_answer_storage_unavailable() {
    let fs = FaultFs::new();
    let s = on(&fs).await;
    healthy_start(&s).await;
    let (st, body) = s
        .post(
            "/v1/topics/t/subscriptions/workers/receive",
            json!({"max": 1}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let ack_id = body["deliveries"][0]["ack_id"]
        .as_str()
        .expect("a delivery")
        .to_owned();

    fs.set_fail_sync(true);
    fs.set_no_space(true);
    for (method, path, body) in [
        (Method::PUT, "/v1/topics/new", json!({})),
        (Method::PUT, "/v1/queues/newq", json!({})),
        (
            Method::POST,
            "/v1/queues/newq2/messages",
            json!({"value": "x"}),
        ),
        (
            Method::PUT,
            "/v1/topics/t/subscriptions/late",
            json!({"kind": "stream"}),
        ),
        (
            Method::POST,
            "/v1/topics/t/subscriptions/workers/ack",
            json!({ "ack_ids": [ack_id] }),
        ),
    ] {
        let (st, ra, resp) = call(&s, method.clone(), path, Some(body)).await;
        let what = format!("{method} {path}");
        assert!(
            !st.is_success(),
            "{what} succeeded on a broken disk: {resp}"
        );
        assert_unavailable(st, ra.as_deref(), &resp, &what);
    }
    // Reads still work.
    let (st, body) = s.get("/v1/topics/t/messages?offset=0").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(3), "{body}");
    let (st, body) = s.get("/healthz").await;
    assert_eq!(st, 200, "{body}");
    s.stop().await;
}
