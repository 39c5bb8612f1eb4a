//! Every route of the REST router, exercised with real requests against a real server (port 0,
//! temporary data directory): status codes, bodies, and effects observed through other routes.
//!
//! No sleeps synchronise anything here: long-polls are woken by concurrent publishes, SSE
//! readers wait for events with generous timeouts, and the few effects that happen in the
//! background (an SSE connection's auto-ack, a dropped connection leaving its group) are
//! observed by polling a describe route within a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use wharf_test::reqwest::header::HeaderMap;
use wharf_test::reqwest::{Method, StatusCode};
use wharf_test::{SseEvent, TestServer};

/// Generous: the machine is a loaded 2-core box.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A request with extra headers; answers status, headers and the body (JSON, or a string).
async fn raw(
    s: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = s.client.request(method, s.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, value)
}

/// Asserts an error answer: status and stable code.
#[track_caller]
fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "expected {status} {code}, got {}", got.1);
    assert_eq!(
        got.1["code"], code,
        "expected {status} {code}, got {}",
        got.1
    );
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {}",
        got.1
    );
}

/// Asserts a 200 and returns the body.
#[track_caller]
fn ok(got: (StatusCode, Value)) -> Value {
    assert_eq!(got.0, 200, "{}", got.1);
    got.1
}

/// GETs `path` until `pred` holds (bounded by [`TIMEOUT`]), for effects that happen in the
/// background.
async fn wait_until(
    s: &TestServer,
    path: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let body = ok(s.get(path).await);
        if pred(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last answer {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_topic(s: &TestServer, name: &str, settings: Value) -> Value {
    ok(s.put(&format!("/v1/topics/{name}"), settings).await)
}

async fn publish(s: &TestServer, topic: &str, body: Value) -> Value {
    ok(s.post(&format!("/v1/topics/{topic}/messages"), body).await)
}

/// The `results` of a publish.
fn results(v: &Value) -> &Vec<Value> {
    v["results"].as_array().expect("results")
}

fn messages(v: &Value) -> &Vec<Value> {
    v["messages"].as_array().expect("messages")
}

fn values(v: &Value) -> Vec<&str> {
    messages(v)
        .iter()
        .map(|m| m["value"].as_str().expect("value"))
        .collect()
}

fn deliveries(v: &Value) -> &Vec<Value> {
    v["deliveries"].as_array().expect("deliveries")
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

/// What a topic event stream's cursor says after these events: `p:next,...`.
/// The first event of a topic stream: `ready`, with the cursor of every tailed partition.
async fn ready(r: &mut wharf_test::SseReader, id: &str) {
    let e = r.take(1, TIMEOUT).await.remove(0);
    assert_eq!(e.event, "ready", "{e:?}");
    assert_eq!(e.id.as_deref(), Some(id), "{e:?}");
}

/// The cursor after `events`, starting from every partition at offset 0.
fn cursor_after(events: &[SseEvent]) -> String {
    let mut c = BTreeMap::from([(0, 0), (1, 0)]);
    for e in events {
        let m = e.json();
        c.insert(
            m["partition"].as_u64().expect("partition"),
            m["offset"].as_u64().expect("offset") + 1,
        );
    }
    c.iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn partition_offset(e: &SseEvent) -> (u64, u64) {
    let m = e.json();
    (
        m["partition"].as_u64().expect("partition"),
        m["offset"].as_u64().expect("offset"),
    )
}

// ---- topics ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_describe_list_delete() {
    let s = TestServer::start().await;

    // No body: defaults, every field set.
    let (st, body) = s.call(Method::PUT, "/v1/topics/orders", None).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "name": "orders",
            "settings": {
                "partitions": 1,
                "durability": "always",
                "sync_interval_ms": null,
                "retention": {"max_age_ms": null, "max_bytes": null},
                "dedup_window_ms": 120000,
                "max_message_bytes": 1048576,
                "segment_bytes": 134217728
            },
            "partitions": [{"partition": 0, "start_offset": 0, "high_watermark": 0}]
        })
    );
    // Same settings, given explicitly this time: idempotent.
    let again = create_topic(
        &s,
        "orders",
        json!({"partitions": 1, "durability": "always"}),
    )
    .await;
    assert_eq!(again, body);

    // Settings are echoed back.
    let settings = json!({
        "partitions": 3,
        "durability": "interval",
        "sync_interval_ms": 50,
        "retention": {"max_age_ms": 3600000, "max_bytes": 10485760},
        "dedup_window_ms": 5000,
        "max_message_bytes": 65536,
        "segment_bytes": 1048576
    });
    let t = create_topic(&s, "metrics.cpu", settings.clone()).await;
    assert_eq!(t["name"], "metrics.cpu");
    assert_eq!(t["settings"], settings);
    assert_eq!(
        t["partitions"],
        json!([
            {"partition": 0, "start_offset": 0, "high_watermark": 0},
            {"partition": 1, "start_offset": 0, "high_watermark": 0},
            {"partition": 2, "start_offset": 0, "high_watermark": 0}
        ])
    );
    assert_eq!(ok(s.put("/v1/topics/metrics.cpu", settings).await), t);

    // Different settings: 409.
    assert_error(
        &s.put("/v1/topics/orders", json!({"partitions": 2})).await,
        409,
        "topic_exists",
    );
    // Bad names: 400 invalid_name.
    for bad in ["Orders", "-x", "a%20b", "wharf.mine", &"x".repeat(101)] {
        assert_error(
            &s.put(&format!("/v1/topics/{bad}"), json!({})).await,
            400,
            "invalid_name",
        );
    }
    // Bad settings: 400 invalid_argument (and nothing created).
    for bad in [
        json!({"partitions": 0}),
        json!({"partitions": 1025}),
        json!({"sync_interval_ms": 10}),
        json!({"durability": "interval", "sync_interval_ms": 0}),
        json!({"segment_bytes": 1}),
        json!({"retention": {"max_age_ms": 0}}),
    ] {
        assert_error(
            &s.put("/v1/topics/bad-settings", bad).await,
            400,
            "invalid_argument",
        );
    }
    // Over the server's message size limit.
    assert_error(
        &s.put(
            "/v1/topics/bad-settings",
            json!({"max_message_bytes": 2097152}),
        )
        .await,
        400,
        "limit_exceeded",
    );
    // Not the expected shape.
    assert_error(
        &s.put("/v1/topics/bad-settings", json!({"partition": 2}))
            .await,
        400,
        "invalid_json",
    );
    assert_error(
        &s.put(
            "/v1/topics/bad-settings",
            json!({"durability": "sometimes"}),
        )
        .await,
        400,
        "invalid_json",
    );
    assert_error(
        &s.get("/v1/topics/bad-settings").await,
        404,
        "topic_not_found",
    );

    // GET one.
    assert_eq!(ok(s.get("/v1/topics/orders").await), body);
    assert_error(&s.get("/v1/topics/nope").await, 404, "topic_not_found");

    // A shared subscription brings its dead-letter topic; the list is by name.
    ok(s.put(
        "/v1/topics/orders/subscriptions/billing",
        json!({"kind": "shared"}),
    )
    .await);
    let list = ok(s.get("/v1/topics").await);
    let names: Vec<&str> = list["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["metrics.cpu", "orders", "wharf.dlq.orders.billing"]);
    assert_eq!(list["topics"][1], body);

    // Dead-letter topics are Wharf's: not deleted nor written directly.
    assert_error(
        &s.delete("/v1/topics/wharf.dlq.orders.billing").await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.post(
            "/v1/topics/wharf.dlq.orders.billing/messages",
            json!({"value": "x"}),
        )
        .await,
        400,
        "invalid_argument",
    );

    // DELETE: 204, then gone (with its subscriptions and their dead-letter topics).
    let (st, _) = s.delete("/v1/topics/orders").await;
    assert_eq!(st, 204);
    assert_error(&s.get("/v1/topics/orders").await, 404, "topic_not_found");
    assert_error(
        &s.get("/v1/topics/orders/subscriptions/billing").await,
        404,
        "topic_not_found",
    );
    assert_error(
        &s.post("/v1/topics/orders/messages", json!({"value": "x"}))
            .await,
        404,
        "topic_not_found",
    );
    assert_error(&s.delete("/v1/topics/orders").await, 404, "topic_not_found");
    let list = ok(s.get("/v1/topics").await);
    assert_eq!(list["topics"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["topics"][0]["name"], "metrics.cpu");

    // Recreated with other settings after the delete: a new, empty topic.
    let t = create_topic(&s, "orders", json!({"partitions": 2})).await;
    assert_eq!(t["settings"]["partitions"], 2);
    s.stop().await;
}

// ---- messages -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_one_batch_encodings_partitions_and_keys() {
    let s = TestServer::start().await;
    create_topic(&s, "events", json!({"partitions": 4})).await;

    // One message, explicit partition.
    let r = publish(
        &s,
        "events",
        json!({"key": "k1", "value": "hello", "partition": 2, "headers": {"app": "test"}}),
    )
    .await;
    let r = results(&r);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["partition"], 2);
    assert_eq!(r[0]["offset"], 0);
    assert_eq!(r[0]["duplicate"], false);
    assert!(r[0]["timestamp"].as_i64().expect("timestamp") > 1_600_000_000_000);

    // A batch: results in order, offsets consecutive per partition.
    let r = publish(
        &s,
        "events",
        json!({"messages": [
            {"value": "b0", "partition": 1},
            {"value": "b1", "partition": 1},
            {"value": "b2", "partition": 2},
            {"value": "b3", "partition": 1}
        ]}),
    )
    .await;
    let got: Vec<(u64, u64)> = results(&r)
        .iter()
        .map(|x| {
            assert_eq!(x["duplicate"], false);
            (
                x["partition"].as_u64().expect("p"),
                x["offset"].as_u64().expect("o"),
            )
        })
        .collect();
    assert_eq!(got, [(1, 0), (1, 1), (2, 1), (1, 2)]);
    let read = ok(s.get("/v1/topics/events/messages?partition=1").await);
    assert_eq!(values(&read), ["b0", "b1", "b3"]);
    assert_eq!(read["next_offset"], 3);
    assert_eq!(read["high_watermark"], 3);
    assert_eq!(read["start_offset"], 0);
    assert_eq!(read["skipped_to"], Value::Null);
    let read = ok(s.get("/v1/topics/events/messages?partition=2").await);
    assert_eq!(values(&read), ["hello", "b2"]);
    let m = &messages(&read)[0];
    assert_eq!(m["key"], "k1");
    assert_eq!(m["encoding"], "utf8");
    assert_eq!(m["partition"], 2);
    assert_eq!(m["offset"], 0);
    assert_eq!(m["headers"]["app"], "test");

    // Partition out of range: 404, nothing stored.
    assert_error(
        &s.post(
            "/v1/topics/events/messages",
            json!({"value": "x", "partition": 4}),
        )
        .await,
        404,
        "partition_not_found",
    );
    assert_error(
        &s.post(
            "/v1/topics/events/messages",
            json!({"messages": [{"value": "ok", "partition": 0}, {"value": "x", "partition": 9}]}),
        )
        .await,
        404,
        "partition_not_found",
    );
    let p0 = ok(s.get("/v1/topics/events/messages?partition=0").await);
    assert_eq!(messages(&p0).len(), 0, "{p0}");

    // Key routing: Kafka's murmur2, stable across publishes.
    for key in ["customer-7", "customer-8", "a", "zz-top"] {
        let want = wharf_broker::murmur2::partition_for_key(key.as_bytes(), 4);
        for _ in 0..2 {
            let r = publish(&s, "events", json!({"key": key, "value": "k"})).await;
            assert_eq!(results(&r)[0]["partition"], want, "key {key}");
        }
    }

    // base64 in, base64 out; non-UTF-8 bytes come back base64 even when utf8 is asked.
    create_topic(&s, "bin", json!({})).await;
    let r = publish(
        &s,
        "bin",
        json!({"key": "AP8=", "value": "3q2+7w==", "encoding": "base64"}),
    )
    .await;
    assert_eq!(results(&r)[0]["offset"], 0);
    // A batch's encoding applies unless a message sets its own.
    publish(
        &s,
        "bin",
        json!({"encoding": "base64", "messages": [
            {"value": "aGk="},
            {"value": "plain text", "encoding": "utf8"}
        ]}),
    )
    .await;
    let read = ok(s.get("/v1/topics/bin/messages").await);
    let ms = messages(&read);
    assert_eq!(ms.len(), 3);
    assert_eq!(ms[0]["encoding"], "base64");
    assert_eq!(ms[0]["value"], "3q2+7w==");
    assert_eq!(ms[0]["key"], "AP8=");
    assert_eq!(ms[1]["encoding"], "utf8");
    assert_eq!(ms[1]["value"], "hi");
    assert_eq!(ms[2]["encoding"], "utf8");
    assert_eq!(ms[2]["value"], "plain text");
    let read = ok(s.get("/v1/topics/bin/messages?encoding=base64").await);
    let ms = messages(&read);
    assert_eq!(ms[0]["value"], "3q2+7w==");
    assert_eq!(ms[1]["encoding"], "base64");
    assert_eq!(ms[1]["value"], "aGk=");
    assert_eq!(ms[2]["value"], "cGxhaW4gdGV4dA==");
    // A UTF-8 key with a non-UTF-8 value: both base64 (one encoding covers both).
    publish(
        &s,
        "bin",
        json!({"key": "a2V5", "value": "/w==", "encoding": "base64"}),
    )
    .await;
    let read = ok(s.get("/v1/topics/bin/messages?offset=3").await);
    assert_eq!(messages(&read)[0]["encoding"], "base64");
    assert_eq!(messages(&read)[0]["key"], "a2V5");
    assert_eq!(messages(&read)[0]["value"], "/w==");

    // Bad bodies.
    assert_error(
        &s.post(
            "/v1/topics/bin/messages",
            json!({"value": "not base64!", "encoding": "base64"}),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.post("/v1/topics/bin/messages", json!({"messages": []}))
            .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.post("/v1/topics/bin/messages", json!({"valeu": "typo"}))
            .await,
        400,
        "invalid_json",
    );
    assert_error(
        &s.post(
            "/v1/topics/bin/messages",
            json!({"value": "x", "headers": {"": "empty name"}}),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.post(
            "/v1/topics/bin/messages",
            json!({"value": "x", "headers": {"wharf-deliver-at": "tomorrow"}}),
        )
        .await,
        400,
        "invalid_argument",
    );
    let (st, _, body) = raw(
        &s,
        Method::POST,
        "/v1/topics/bin/messages",
        &[("content-type", "multipart/form-data; boundary=x")],
        None,
    )
    .await;
    assert_error(&(st, body), 415, "unsupported_media_type");
    // Nothing of the above was stored.
    let t = ok(s.get("/v1/topics/bin").await);
    assert_eq!(t["partitions"][0]["high_watermark"], 4);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_id_dedup() {
    let s = TestServer::start().await;
    create_topic(&s, "pay", json!({"partitions": 2})).await;
    let first = publish(
        &s,
        "pay",
        json!({"key": "c1", "value": "charge", "headers": {"wharf-message-id": "pay-1"}}),
    )
    .await;
    let first = &results(&first)[0];
    assert_eq!(first["duplicate"], false);
    // Something else in between.
    publish(&s, "pay", json!({"key": "c1", "value": "other"})).await;
    // The retry: duplicate, the original's partition, offset and time, nothing stored.
    let again = publish(
        &s,
        "pay",
        json!({"key": "c1", "value": "charge", "headers": {"wharf-message-id": "pay-1"}}),
    )
    .await;
    let again = &results(&again)[0];
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["partition"], first["partition"]);
    assert_eq!(again["offset"], first["offset"]);
    assert_eq!(again["timestamp"], first["timestamp"]);
    // In a batch too, and twice in one batch.
    let batch = publish(
        &s,
        "pay",
        json!({"messages": [
            {"key": "c1", "value": "charge", "headers": {"wharf-message-id": "pay-1"}},
            {"key": "c1", "value": "new", "headers": {"wharf-message-id": "pay-2"}},
            {"key": "c1", "value": "new", "headers": {"wharf-message-id": "pay-2"}}
        ]}),
    )
    .await;
    let b = results(&batch);
    assert_eq!(b[0]["duplicate"], true);
    assert_eq!(b[0]["offset"], first["offset"]);
    assert_eq!(b[1]["duplicate"], false);
    assert_eq!(b[2]["duplicate"], true);
    assert_eq!(b[2]["offset"], b[1]["offset"]);
    assert_eq!(b[2]["partition"], b[1]["partition"]);
    let p = first["partition"].as_u64().expect("partition");
    let read = ok(s
        .get(&format!("/v1/topics/pay/messages?partition={p}"))
        .await);
    assert_eq!(values(&read), ["charge", "other", "new"]);
    // The metric counts stored messages only.
    let (st, text) = s.get("/metrics").await;
    assert_eq!(st, 200);
    let text = text.as_str().expect("text");
    assert!(
        text.lines()
            .any(|l| l == "wharf_messages_published_total{topic=\"pay\"} 3"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_positions_limits_and_errors() {
    let s = TestServer::start().await;
    create_topic(&s, "log", json!({"partitions": 2})).await;
    // Five messages in one append (one batch on disk), then three more one by one.
    let values_in = [
        "v0-aaaaaa",
        "v1-bbbbbb",
        "v2-cccccc",
        "v3-dddddd",
        "v4-eeeeee",
    ];
    publish(
        &s,
        "log",
        json!({"messages": values_in.iter().map(|v| json!({"value": v, "partition": 0})).collect::<Vec<_>>()}),
    )
    .await;
    for v in ["v5", "v6", "v7"] {
        publish(&s, "log", json!({"value": v, "partition": 0})).await;
    }
    let all = ok(s.get("/v1/topics/log/messages").await);
    assert_eq!(
        values(&all),
        [
            "v0-aaaaaa",
            "v1-bbbbbb",
            "v2-cccccc",
            "v3-dddddd",
            "v4-eeeeee",
            "v5",
            "v6",
            "v7"
        ]
    );
    assert_eq!(all["next_offset"], 8);
    assert_eq!(all["high_watermark"], 8);

    // By offset, with a limit.
    let r = ok(s.get("/v1/topics/log/messages?offset=2&limit=2").await);
    assert_eq!(values(&r), ["v2-cccccc", "v3-dddddd"]);
    assert_eq!(r["next_offset"], 4);
    let r = ok(s.get("/v1/topics/log/messages?offset=8").await);
    assert_eq!(messages(&r).len(), 0);
    assert_eq!(r["next_offset"], 8);
    // from=latest: nothing yet, positioned at the end; from=earliest: everything.
    let r = ok(s.get("/v1/topics/log/messages?from=latest").await);
    assert_eq!(messages(&r).len(), 0);
    assert_eq!(r["next_offset"], 8);
    let r = ok(s.get("/v1/topics/log/messages?from=earliest&limit=1").await);
    assert_eq!(values(&r), ["v0-aaaaaa"]);
    // Another partition.
    let r = ok(s.get("/v1/topics/log/messages?partition=1").await);
    assert_eq!(messages(&r).len(), 0);
    assert_eq!(r["high_watermark"], 0);

    // max_bytes counts key + value + headers, whole messages, at least one.
    let size = |m: &Value| {
        m["value"].as_str().expect("value").len()
            + m["headers"]
                .as_object()
                .expect("headers")
                .iter()
                .map(|(k, v)| k.len() + v.as_str().expect("header").len())
                .sum::<usize>()
    };
    let ms = messages(&all);
    let two = size(&ms[0]) + size(&ms[1]);
    let r = ok(s
        .get(&format!("/v1/topics/log/messages?max_bytes={two}"))
        .await);
    assert_eq!(values(&r), ["v0-aaaaaa", "v1-bbbbbb"]);
    assert_eq!(r["next_offset"], 2);
    let r = ok(s
        .get(&format!("/v1/topics/log/messages?max_bytes={}", two - 1))
        .await);
    assert_eq!(values(&r), ["v0-aaaaaa"]);
    let r = ok(s.get("/v1/topics/log/messages?max_bytes=1").await);
    assert_eq!(values(&r), ["v0-aaaaaa"]);

    // from_time: the first message appended at or after the time, RFC 3339 or ms.
    let ts: Vec<i64> = ms
        .iter()
        .map(|m| m["timestamp"].as_i64().expect("timestamp"))
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    let t = ts[6];
    let want = ts.iter().position(|x| *x >= t).expect("some") as u64;
    let r = ok(s
        .get(&format!("/v1/topics/log/messages?from_time={t}&limit=1"))
        .await);
    assert_eq!(messages(&r)[0]["offset"], want);
    let rfc = wharf_broker::time::format_rfc3339(t);
    let r = ok(s
        .get(&format!("/v1/topics/log/messages?from_time={rfc}&limit=1"))
        .await);
    assert_eq!(messages(&r)[0]["offset"], want, "{rfc}");
    let r = ok(s
        .get("/v1/topics/log/messages?from_time=2000-01-01T00:00:00Z")
        .await);
    assert_eq!(messages(&r).len(), 8);
    let r = ok(s
        .get("/v1/topics/log/messages?from_time=2999-01-01T00:00:00Z")
        .await);
    assert_eq!(messages(&r).len(), 0);
    assert_eq!(r["next_offset"], 8);
    let r = ok(s
        .get(&format!("/v1/topics/log/messages?from_time={}", ts[7] + 1))
        .await);
    assert_eq!(messages(&r).len(), 0);

    // Errors.
    assert_error(
        &s.get("/v1/topics/log/messages?partition=2").await,
        404,
        "partition_not_found",
    );
    assert_error(
        &s.get("/v1/topics/nope/messages").await,
        404,
        "topic_not_found",
    );
    assert_error(
        &s.get("/v1/topics/log/messages?offset=9").await,
        416,
        "offset_out_of_range",
    );
    assert_error(
        &s.get("/v1/topics/log/messages?offset=1&from=latest").await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.get("/v1/topics/log/messages?from_time=yesterday").await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.get("/v1/topics/log/messages?limit=0").await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.get("/v1/topics/log/messages?max_bytes=0").await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.get("/v1/topics/log/messages?limit=1001").await,
        400,
        "limit_exceeded",
    );
    assert_error(
        &s.get("/v1/topics/log/messages?wait_ms=30001").await,
        400,
        "limit_exceeded",
    );
    assert_error(
        &s.get("/v1/topics/log/messages?ofset=1").await,
        400,
        "invalid_query",
    );
    assert_error(
        &s.get("/v1/topics/log/messages?offset=-1").await,
        400,
        "invalid_query",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_woken_by_a_publish() {
    let s = TestServer::start().await;
    create_topic(&s, "lp", json!({})).await;
    publish(&s, "lp", json!({"value": "first"})).await;
    ok(
        s.put("/v1/topics/lp/subscriptions/q", json!({"kind": "shared"}))
            .await,
    );
    ok(s.put(
        "/v1/topics/lp/subscriptions/g",
        json!({"kind": "stream", "start": "latest"}),
    )
    .await);
    let member = ok(s
        .post("/v1/topics/lp/subscriptions/g/members", json!({}))
        .await);
    let member_id = member["member_id"].as_str().expect("member_id").to_owned();
    // Take "first" off the shared subscription so its long-poll has to wait too.
    let d = ok(s
        .post("/v1/topics/lp/subscriptions/q/receive", json!({}))
        .await);
    let ack_id = deliveries(&d)[0]["ack_id"].clone();
    ok(s.post(
        "/v1/topics/lp/subscriptions/q/ack",
        json!({"ack_ids": [ack_id]}),
    )
    .await);

    // Three long-polls in flight: a read at the end of the log, a fetch, a receive.
    let spawn = |method: Method, path: &str, body: Option<Value>| {
        let client = s.client.clone();
        let url = s.url(path);
        tokio::spawn(async move {
            let mut req = client.request(method, url);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.expect("request");
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.expect("json")
        })
    };
    let read = spawn(
        Method::GET,
        "/v1/topics/lp/messages?offset=1&wait_ms=20000",
        None,
    );
    let fetch = spawn(
        Method::POST,
        "/v1/topics/lp/subscriptions/g/fetch",
        Some(json!({"member_id": member_id, "wait_ms": 20000})),
    );
    let receive = spawn(
        Method::POST,
        "/v1/topics/lp/subscriptions/q/receive",
        Some(json!({"wait_ms": 20000})),
    );
    let started = tokio::time::Instant::now();
    let p = publish(&s, "lp", json!({"value": "second"})).await;
    assert_eq!(results(&p)[0]["offset"], 1);

    let read = tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("read returns")
        .expect("join");
    assert_eq!(values(&read), ["second"]);
    assert_eq!(read["messages"][0]["offset"], 1);
    assert_eq!(read["next_offset"], 2);
    let fetch = tokio::time::timeout(TIMEOUT, fetch)
        .await
        .expect("fetch returns")
        .expect("join");
    assert_eq!(values(&fetch), ["second"]);
    let receive = tokio::time::timeout(TIMEOUT, receive)
        .await
        .expect("receive returns")
        .expect("join");
    assert_eq!(deliveries(&receive).len(), 1, "{receive}");
    assert_eq!(receive["deliveries"][0]["message"]["value"], "second");
    // Woken, not timed out.
    assert!(started.elapsed() < Duration::from_secs(19));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_and_stored() {
    let s = TestServer::start().await;
    create_topic(&s, "traced", json!({})).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (st, headers, body) = raw(
        &s,
        Method::POST,
        "/v1/topics/traced/messages",
        &[("traceparent", incoming)],
        Some(json!({"value": "with"})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let answered = headers
        .get("traceparent")
        .expect("traceparent answered")
        .to_str()
        .expect("ascii")
        .to_owned();
    let (trace, span) = traceparent(&answered);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(span, "00f067aa0ba902b7");
    assert!(answered.ends_with("-01"));

    // Without one: a fresh trace.
    let (st, headers, body) = raw(
        &s,
        Method::POST,
        "/v1/topics/traced/messages",
        &[],
        Some(json!({"value": "without"})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let fresh = headers
        .get("traceparent")
        .expect("traceparent answered")
        .to_str()
        .expect("ascii")
        .to_owned();
    let (fresh_trace, _) = traceparent(&fresh);
    assert_ne!(fresh_trace, trace);

    // A malformed one is ignored: a fresh trace too.
    let (st, headers, _) = raw(
        &s,
        Method::POST,
        "/v1/topics/traced/messages",
        &[("traceparent", "00-zz-00f067aa0ba902b7-01")],
        Some(json!({"value": "malformed"})),
    )
    .await;
    assert_eq!(st, 200);
    let (other_trace, _) = traceparent(
        headers
            .get("traceparent")
            .expect("traceparent")
            .to_str()
            .expect("ascii"),
    );
    assert_ne!(other_trace, trace);

    // A message that brings its own traceparent header keeps it.
    let own = "00-11111111111111111111111111111111-2222222222222222-00";
    publish(
        &s,
        "traced",
        json!({"value": "own", "headers": {"traceparent": own}}),
    )
    .await;

    let read = ok(s.get("/v1/topics/traced/messages").await);
    let ms = messages(&read);
    assert_eq!(values(&read), ["with", "without", "malformed", "own"]);
    // Stored: the server's span in the caller's trace — what the response announced.
    assert_eq!(ms[0]["headers"]["traceparent"], answered.as_str());
    assert_eq!(ms[1]["headers"]["traceparent"], fresh.as_str());
    traceparent(ms[2]["headers"]["traceparent"].as_str().expect("stored"));
    assert_eq!(ms[3]["headers"]["traceparent"], own);

    // Every answer carries one, reads included.
    let (_, headers, _) = raw(&s, Method::GET, "/v1/topics/traced", &[], None).await;
    traceparent(
        headers
            .get("traceparent")
            .expect("traceparent")
            .to_str()
            .expect("ascii"),
    );
    s.stop().await;
}

// ---- subscriptions --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_create_describe_list_delete_and_kind_mismatch() {
    let s = TestServer::start().await;
    create_topic(&s, "t", json!({"partitions": 2})).await;

    let stream = ok(s
        .put(
            "/v1/topics/t/subscriptions/audit",
            json!({"kind": "stream"}),
        )
        .await);
    assert_eq!(
        stream,
        json!({
            "topic": "t",
            "name": "audit",
            "settings": {
                "kind": "stream",
                "start": "earliest",
                "start_offset": null,
                "start_time": null,
                "session_timeout_ms": 30000,
                "max_deliveries": null,
                "lease_ms": null,
                "backoff": null,
                "ordered_by_key": null,
                "max_in_flight_per_member": null
            },
            "partitions": [
                {"partition": 0, "committed": 0, "lag": 0, "behind_retention": false},
                {"partition": 1, "committed": 0, "lag": 0, "behind_retention": false}
            ],
            "members": [],
            "generation": 0,
            "in_flight": 0,
            "delayed": 0,
            "dead_lettered": 0
        })
    );
    let shared_settings = json!({
        "kind": "shared",
        "max_deliveries": 3,
        "lease_ms": 10000,
        "backoff": {"initial_ms": 500, "max_ms": 5000, "jitter_pct": 10},
        "ordered_by_key": true,
        "max_in_flight_per_member": 7
    });
    let shared = ok(s
        .put("/v1/topics/t/subscriptions/work", shared_settings.clone())
        .await);
    assert_eq!(
        shared["settings"],
        json!({
            "kind": "shared",
            "start": "earliest",
            "start_offset": null,
            "start_time": null,
            "session_timeout_ms": null,
            "max_deliveries": 3,
            "lease_ms": 10000,
            "backoff": {"initial_ms": 500, "max_ms": 5000, "jitter_pct": 10},
            "ordered_by_key": true,
            "max_in_flight_per_member": 7
        })
    );
    // Starting points.
    let late = ok(s
        .put(
            "/v1/topics/t/subscriptions/late",
            json!({"kind": "stream", "start_offset": 0, "session_timeout_ms": 5000}),
        )
        .await);
    assert_eq!(late["settings"]["start_offset"], 0);
    assert_eq!(late["settings"]["start"], Value::Null);
    assert_eq!(late["settings"]["session_timeout_ms"], 5000);
    let timed = ok(s
        .put(
            "/v1/topics/t/subscriptions/timed",
            json!({"kind": "shared", "start_time": "2020-01-01T00:00:00Z"}),
        )
        .await);
    assert_eq!(timed["settings"]["start_time"], "1577836800000");

    // Idempotent with the same settings; 409 with others.
    assert_eq!(
        ok(s.put("/v1/topics/t/subscriptions/work", shared_settings)
            .await),
        shared
    );
    assert_error(
        &s.put(
            "/v1/topics/t/subscriptions/work",
            json!({"kind": "shared", "max_deliveries": 4}),
        )
        .await,
        409,
        "subscription_exists",
    );
    assert_error(
        &s.put("/v1/topics/t/subscriptions/work", json!({"kind": "stream"}))
            .await,
        409,
        "subscription_exists",
    );
    // Bad input.
    assert_error(
        &s.put("/v1/topics/t/subscriptions/Bad", json!({"kind": "stream"}))
            .await,
        400,
        "invalid_name",
    );
    for bad in [
        json!({"kind": "stream", "lease_ms": 1000}),
        json!({"kind": "shared", "session_timeout_ms": 1000}),
        json!({"kind": "shared", "max_deliveries": 0}),
        json!({"kind": "shared", "lease_ms": 10}),
        json!({"kind": "shared", "backoff": {"initial_ms": 10, "max_ms": 1}}),
        json!({"kind": "stream", "session_timeout_ms": 10}),
        json!({"kind": "stream", "start": "latest", "start_offset": 3}),
        json!({"kind": "stream", "start_time": "soon"}),
    ] {
        assert_error(
            &s.put("/v1/topics/t/subscriptions/bad", bad).await,
            400,
            "invalid_argument",
        );
    }
    assert_error(
        &s.put("/v1/topics/t/subscriptions/bad", json!({})).await,
        400,
        "invalid_json",
    );
    // Push settings: unknown keys and bad values are refused; a stream cannot push.
    assert_error(
        &s.put(
            "/v1/topics/t/subscriptions/bad",
            json!({"kind": "shared", "push": {"url": "http://x"}}),
        )
        .await,
        400,
        "invalid_json",
    );
    for bad in [
        json!({"kind": "shared", "push": {"app": "a", "route": "no-slash"}}),
        json!({"kind": "shared", "push": {"app": "a", "max_in_flight": 0}}),
        json!({"kind": "shared", "push": {"app": ""}}),
        json!({"kind": "stream", "push": {"app": "a"}}),
    ] {
        assert_error(
            &s.put("/v1/topics/t/subscriptions/bad", bad).await,
            400,
            "invalid_argument",
        );
    }
    let (st, body) = s
        .put(
            "/v1/topics/t/subscriptions/pushed",
            json!({"kind": "shared", "push": {"app": "billing", "route": "/in"}}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body["settings"]["push"],
        json!({"app": "billing", "route": "/in", "max_in_flight": 16, "timeout_ms": 10000})
    );
    assert_eq!(s.delete("/v1/topics/t/subscriptions/pushed").await.0, 204);
    assert_error(
        &s.put("/v1/topics/nope/subscriptions/x", json!({"kind": "stream"}))
            .await,
        404,
        "topic_not_found",
    );

    // GET one, list by name.
    assert_eq!(ok(s.get("/v1/topics/t/subscriptions/audit").await), stream);
    assert_error(
        &s.get("/v1/topics/t/subscriptions/nope").await,
        404,
        "subscription_not_found",
    );
    let list = ok(s.get("/v1/topics/t/subscriptions").await);
    let names: Vec<&str> = list["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|x| x["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["audit", "late", "timed", "work"]);
    assert_eq!(list["subscriptions"][0], stream);
    assert_error(
        &s.get("/v1/topics/nope/subscriptions").await,
        404,
        "topic_not_found",
    );

    // Stream operations on a shared subscription and the reverse: 409 wrong_kind.
    let sub = "/v1/topics/t/subscriptions";
    let ack = json!({"ack_ids": ["0.0.0.1"]});
    for (method, path, body) in [
        (Method::POST, format!("{sub}/work/members"), json!({})),
        (
            Method::POST,
            format!("{sub}/work/members/m/heartbeat"),
            json!({}),
        ),
        (Method::DELETE, format!("{sub}/work/members/m"), json!({})),
        (
            Method::POST,
            format!("{sub}/work/fetch"),
            json!({"member_id": "m"}),
        ),
        (
            Method::POST,
            format!("{sub}/work/commit"),
            json!({"member_id": "m", "offsets": [{"partition": 0, "offset": 0}]}),
        ),
        (
            Method::POST,
            format!("{sub}/work/reset"),
            json!({"to": "earliest"}),
        ),
        (Method::POST, format!("{sub}/audit/receive"), json!({})),
        (Method::POST, format!("{sub}/audit/ack"), ack.clone()),
        (Method::POST, format!("{sub}/audit/nack"), ack.clone()),
        (
            Method::POST,
            format!("{sub}/audit/extend"),
            json!({"ack_ids": ["0.0.0.1"], "lease_ms": 1000}),
        ),
        (Method::POST, format!("{sub}/audit/terminate"), ack.clone()),
        (
            Method::GET,
            format!("{sub}/audit/dead-letters"),
            Value::Null,
        ),
        (Method::POST, format!("{sub}/audit/redrive"), json!({})),
    ] {
        let body = (!body.is_null()).then_some(body);
        let got = s.call(method.clone(), &path, body).await;
        assert_eq!(got.0, 409, "{method} {path}: {}", got.1);
        assert_eq!(got.1["code"], "wrong_kind", "{method} {path}: {}", got.1);
    }
    // Unknown subscription on those routes: 404.
    assert_error(
        &s.post(&format!("{sub}/nope/receive"), json!({})).await,
        404,
        "subscription_not_found",
    );
    assert_error(
        &s.post(&format!("{sub}/nope/members"), json!({})).await,
        404,
        "subscription_not_found",
    );

    // DELETE: 204, gone, and a shared one takes its dead-letter topic along.
    let dlq = ok(s.get("/v1/topics/wharf.dlq.t.work").await);
    assert_eq!(dlq["name"], "wharf.dlq.t.work");
    let (st, _) = s.delete("/v1/topics/t/subscriptions/work").await;
    assert_eq!(st, 204);
    assert_error(
        &s.get("/v1/topics/t/subscriptions/work").await,
        404,
        "subscription_not_found",
    );
    assert_error(
        &s.get("/v1/topics/wharf.dlq.t.work").await,
        404,
        "topic_not_found",
    );
    assert_error(
        &s.delete("/v1/topics/t/subscriptions/work").await,
        404,
        "subscription_not_found",
    );
    let (st, _) = s.delete("/v1/topics/t/subscriptions/audit").await;
    assert_eq!(st, 204);
    let list = ok(s.get("/v1/topics/t/subscriptions").await);
    assert_eq!(list["subscriptions"].as_array().map(Vec::len), Some(2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_topic_name_collision_is_an_invalid_argument() {
    // Shared subscription `b.c` of topic `a` and `c` of topic `a.b` would both dead-letter
    // to `wharf.dlq.a.b.c`; the second is refused. That is a bad argument (400), not a
    // stream/shared kind mismatch (`wrong_kind` is documented as exactly that).
    let s = TestServer::start().await;
    create_topic(&s, "a", json!({})).await;
    create_topic(&s, "a.b", json!({})).await;
    ok(
        s.put("/v1/topics/a/subscriptions/b.c", json!({"kind": "shared"}))
            .await,
    );
    assert_error(
        &s.put("/v1/topics/a.b/subscriptions/c", json!({"kind": "shared"}))
            .await,
        400,
        "invalid_argument",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_members_fetch_commit_reset() {
    let s = TestServer::start().await;
    create_topic(&s, "st", json!({"partitions": 2})).await;
    let first = publish(
        &s,
        "st",
        json!({"messages": [
            {"value": "p0-0", "partition": 0},
            {"value": "p0-1", "partition": 0},
            {"value": "p1-0", "partition": 1},
            {"value": "p1-1", "partition": 1}
        ]}),
    )
    .await;
    ok(
        s.put("/v1/topics/st/subscriptions/g", json!({"kind": "stream"}))
            .await,
    );
    let base = "/v1/topics/st/subscriptions/g";

    // Join: a new member owns everything.
    let m = ok(s.post(&format!("{base}/members"), json!({})).await);
    let a = m["member_id"].as_str().expect("member_id").to_owned();
    assert!(!a.is_empty());
    assert_eq!(m["partitions"], json!([0, 1]));
    let g1 = m["generation"].as_u64().expect("generation");
    let d = ok(s.get(base).await);
    assert_eq!(d["members"], json!([a]));
    assert_eq!(d["generation"], g1);
    // Joining again with the same id changes nothing.
    let again = ok(s
        .post(&format!("{base}/members"), json!({"member_id": a}))
        .await);
    assert_eq!(again, m);

    // A second member (named): a rebalance, partitions round-robin over sorted ids.
    let m2 = ok(s
        .post(
            &format!("{base}/members"),
            json!({"member_id": "zz-worker"}),
        )
        .await);
    assert_eq!(m2["member_id"], "zz-worker");
    assert_eq!(m2["generation"], g1 + 1);
    assert_eq!(m2["partitions"], json!([1]));
    let hb = ok(s
        .post(&format!("{base}/members/{a}/heartbeat"), json!({}))
        .await);
    assert_eq!(
        hb,
        json!({"member_id": a, "generation": g1 + 1, "partitions": [0]})
    );
    let d = ok(s.get(base).await);
    let mut members = vec![a.clone(), "zz-worker".to_owned()];
    members.sort();
    assert_eq!(d["members"], json!(members));

    // Each fetches its own partitions.
    let f = ok(s
        .post(
            &format!("{base}/fetch"),
            json!({"member_id": "zz-worker", "max_messages": 10}),
        )
        .await);
    assert_eq!(values(&f), ["p1-0", "p1-1"]);
    assert!(messages(&f).iter().all(|m| m["partition"] == 1));
    // Committing a partition it does not own: 409 not_assigned.
    assert_error(
        &s.post(
            &format!("{base}/commit"),
            json!({"member_id": "zz-worker", "offsets": [{"partition": 0, "offset": 1}]}),
        )
        .await,
        409,
        "not_assigned",
    );

    // Leave: 204; then the member is unknown everywhere.
    let (st, _) = s.delete(&format!("{base}/members/zz-worker")).await;
    assert_eq!(st, 204);
    for got in [
        s.post(&format!("{base}/members/zz-worker/heartbeat"), json!({}))
            .await,
        s.delete(&format!("{base}/members/zz-worker")).await,
        s.post(&format!("{base}/fetch"), json!({"member_id": "zz-worker"}))
            .await,
        s.post(
            &format!("{base}/commit"),
            json!({"member_id": "zz-worker", "offsets": [{"partition": 1, "offset": 1}]}),
        )
        .await,
    ] {
        assert_error(&got, 409, "unknown_member");
    }

    // The remaining member owns both again; nothing was committed, so it reads everything.
    let hb = ok(s
        .post(&format!("{base}/members/{a}/heartbeat"), json!({}))
        .await);
    assert_eq!(hb["partitions"], json!([0, 1]));
    let f = ok(s
        .post(
            &format!("{base}/fetch"),
            json!({"member_id": a, "max_messages": 3}),
        )
        .await);
    assert_eq!(values(&f), ["p0-0", "p0-1", "p1-0"]);
    let f = ok(s
        .post(&format!("{base}/fetch"), json!({"member_id": a}))
        .await);
    assert_eq!(values(&f), ["p1-1"]);
    let f = ok(s
        .post(&format!("{base}/fetch"), json!({"member_id": a}))
        .await);
    assert_eq!(messages(&f).len(), 0);

    // Commit: answered with the offsets in force; describe shows committed and lag.
    let c = ok(s
        .post(
            &format!("{base}/commit"),
            json!({"member_id": a, "offsets": [{"partition": 0, "offset": 2}, {"partition": 1, "offset": 1}]}),
        )
        .await);
    assert_eq!(
        c,
        json!({"offsets": [{"partition": 0, "offset": 2}, {"partition": 1, "offset": 1}]})
    );
    let d = ok(s.get(base).await);
    assert_eq!(
        d["partitions"],
        json!([
            {"partition": 0, "committed": 2, "lag": 0, "behind_retention": false},
            {"partition": 1, "committed": 1, "lag": 1, "behind_retention": false}
        ])
    );
    assert_error(
        &s.post(
            &format!("{base}/commit"),
            json!({"member_id": a, "offsets": [{"partition": 0, "offset": 3}]}),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.post(
            &format!("{base}/commit"),
            json!({"member_id": a, "offsets": []}),
        )
        .await,
        400,
        "invalid_argument",
    );

    // Reset to earliest: replay from the start (members continue from there).
    let r = ok(s
        .post(&format!("{base}/reset"), json!({"to": "earliest"}))
        .await);
    assert_eq!(
        r,
        json!({"offsets": [{"partition": 0, "offset": 0}, {"partition": 1, "offset": 0}]})
    );
    let d = ok(s.get(base).await);
    assert_eq!(d["partitions"][0]["committed"], 0);
    assert_eq!(d["partitions"][0]["lag"], 2);
    assert_eq!(d["partitions"][1]["lag"], 2);
    let f = ok(s
        .post(
            &format!("{base}/fetch"),
            json!({"member_id": a, "max_messages": 10}),
        )
        .await);
    assert_eq!(values(&f), ["p0-0", "p0-1", "p1-0", "p1-1"]);
    // To latest.
    let r = ok(s
        .post(&format!("{base}/reset"), json!({"to": "latest"}))
        .await);
    assert_eq!(
        r,
        json!({"offsets": [{"partition": 0, "offset": 2}, {"partition": 1, "offset": 2}]})
    );
    let d = ok(s.get(base).await);
    assert_eq!(d["partitions"][0]["lag"], 0);
    assert_eq!(d["partitions"][1]["lag"], 0);
    // To given offsets (the others stay).
    let r = ok(s
        .post(
            &format!("{base}/reset"),
            json!({"to": "offsets", "offsets": [{"partition": 1, "offset": 1}]}),
        )
        .await);
    assert_eq!(
        r,
        json!({"offsets": [{"partition": 0, "offset": 2}, {"partition": 1, "offset": 1}]})
    );
    let f = ok(s
        .post(&format!("{base}/fetch"), json!({"member_id": a}))
        .await);
    assert_eq!(values(&f), ["p1-1"]);
    // To a time: the first message at or after it, per partition.
    let r = ok(s
        .post(
            &format!("{base}/reset"),
            json!({"to": "timestamp", "timestamp": "2000-01-01T00:00:00Z"}),
        )
        .await);
    assert_eq!(
        r,
        json!({"offsets": [{"partition": 0, "offset": 0}, {"partition": 1, "offset": 0}]})
    );
    let r = ok(s
        .post(
            &format!("{base}/reset"),
            json!({"to": "timestamp", "timestamp": "2999-01-01T00:00:00Z"}),
        )
        .await);
    assert_eq!(
        r,
        json!({"offsets": [{"partition": 0, "offset": 2}, {"partition": 1, "offset": 2}]})
    );
    let t0 = results(&first)[0]["timestamp"].as_i64().expect("timestamp");
    let r = ok(s
        .post(
            &format!("{base}/reset"),
            json!({"to": "timestamp", "timestamp": t0.to_string()}),
        )
        .await);
    assert_eq!(r["offsets"][0], json!({"partition": 0, "offset": 0}));
    for bad in [
        json!({"to": "timestamp"}),
        json!({"to": "offsets"}),
        json!({"to": "earliest", "timestamp": "0"}),
        json!({"to": "timestamp", "timestamp": "noon"}),
        json!({"to": "offsets", "offsets": [{"partition": 0, "offset": 99}]}),
        json!({"to": "offsets", "offsets": [{"partition": 7, "offset": 0}]}),
    ] {
        assert_error(
            &s.post(&format!("{base}/reset"), bad).await,
            400,
            "invalid_argument",
        );
    }

    // The last member leaves.
    let (st, _) = s.delete(&format!("{base}/members/{a}")).await;
    assert_eq!(st, 204);
    let d = ok(s.get(base).await);
    assert_eq!(d["members"], json!([]));
    assert_error(
        &s.post(&format!("{base}/members/{a}/heartbeat"), json!({}))
            .await,
        409,
        "unknown_member",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_receive_ack_nack_extend_terminate_dead_letters_redrive() {
    let s = TestServer::start().await;
    create_topic(&s, "sh", json!({})).await;
    let created = ok(s
        .put(
            "/v1/topics/sh/subscriptions/work",
            json!({"kind": "shared", "backoff": {"initial_ms": 0, "max_ms": 0}}),
        )
        .await);
    assert_eq!(
        created["settings"],
        json!({
            "kind": "shared",
            "start": "earliest",
            "start_offset": null,
            "start_time": null,
            "session_timeout_ms": null,
            "max_deliveries": 5,
            "lease_ms": 30000,
            "backoff": {"initial_ms": 0, "max_ms": 0, "jitter_pct": 20},
            "ordered_by_key": false,
            "max_in_flight_per_member": 1000
        })
    );
    let base = "/v1/topics/sh/subscriptions/work";
    publish(
        &s,
        "sh",
        json!({"messages": [{"value": "a"}, {"value": "b", "key": "kb"}, {"value": "c"}]}),
    )
    .await;

    // Receive two under a lease.
    let r = ok(s
        .post(
            &format!("{base}/receive"),
            json!({"max": 2, "member": "w1"}),
        )
        .await);
    let ds = deliveries(&r);
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[0]["message"]["value"], "a");
    assert_eq!(ds[0]["message"]["offset"], 0);
    assert_eq!(ds[1]["message"]["value"], "b");
    assert_eq!(ds[1]["message"]["key"], "kb");
    assert_eq!(ds[0]["delivery_count"], 1);
    assert_eq!(ds[1]["delivery_count"], 1);
    let ts = ds[0]["message"]["timestamp"].as_i64().expect("timestamp");
    let deadline = ds[0]["lease_deadline"].as_i64().expect("lease_deadline");
    assert!(
        deadline >= ts + 30_000 - 1000 && deadline <= ts + 30_000 + TIMEOUT.as_millis() as i64,
        "deadline {deadline} vs message time {ts}"
    );
    let (a, b) = (ds[0]["ack_id"].clone(), ds[1]["ack_id"].clone());
    assert_ne!(a, b);
    let d = ok(s.get(base).await);
    assert_eq!(d["in_flight"], 2);
    assert_eq!(d["members"], json!(["w1"]));
    assert_eq!(d["partitions"][0]["committed"], 0);
    assert_eq!(d["partitions"][0]["lag"], 3);

    // Ack: per-id results in request order.
    let r = ok(s
        .post(&format!("{base}/ack"), json!({"ack_ids": [a]}))
        .await);
    assert_eq!(r, json!({"results": [{"ack_id": a, "error": null}]}));
    let d = ok(s.get(base).await);
    assert_eq!(d["in_flight"], 1);
    assert_eq!(d["partitions"][0]["committed"], 1);
    assert_eq!(d["partitions"][0]["lag"], 2);
    // Stale (already acked) and malformed ack ids: per-id errors, the request itself is fine.
    let r = ok(s
        .post(
            &format!("{base}/ack"),
            json!({"ack_ids": [a, "not-an-ack-id", "ffff.0.0.1"]}),
        )
        .await);
    assert_eq!(
        r,
        json!({"results": [
            {"ack_id": a, "error": "lease_expired"},
            {"ack_id": "not-an-ack-id", "error": "bad_ack_id"},
            {"ack_id": "ffff.0.0.1", "error": "lease_expired"}
        ]})
    );
    assert_error(
        &s.post(&format!("{base}/ack"), json!({"ack_ids": []})).await,
        400,
        "invalid_argument",
    );
    let many: Vec<String> = (0..1001).map(|i| format!("x{i}")).collect();
    assert_error(
        &s.post(&format!("{base}/ack"), json!({"ack_ids": many}))
            .await,
        400,
        "invalid_argument",
    );

    // Nack with no delay: delivered again at once, with delivery_count 2.
    let r = ok(s
        .post(
            &format!("{base}/nack"),
            json!({"ack_ids": [b], "delay_ms": 0}),
        )
        .await);
    assert_eq!(r, json!({"results": [{"ack_id": b, "error": null}]}));
    let r = ok(s.post(&format!("{base}/receive"), json!({"max": 10})).await);
    let ds = deliveries(&r);
    assert_eq!(ds.len(), 2, "{r}");
    assert_eq!(ds[0]["message"]["value"], "b");
    assert_eq!(ds[0]["delivery_count"], 2);
    assert_eq!(ds[1]["message"]["value"], "c");
    assert_eq!(ds[1]["delivery_count"], 1);
    let (b2, c) = (ds[0]["ack_id"].clone(), ds[1]["ack_id"].clone());
    // The old ack id of b is stale now.
    let r = ok(s
        .post(&format!("{base}/ack"), json!({"ack_ids": [b]}))
        .await);
    assert_eq!(r["results"][0]["error"], "lease_expired");

    // Extend.
    let r = ok(s
        .post(
            &format!("{base}/extend"),
            json!({"ack_ids": [b2, c, "junk"], "lease_ms": 60000}),
        )
        .await);
    assert_eq!(
        r,
        json!({"results": [
            {"ack_id": b2, "error": null},
            {"ack_id": c, "error": null},
            {"ack_id": "junk", "error": "bad_ack_id"}
        ]})
    );
    assert_error(
        &s.post(
            &format!("{base}/extend"),
            json!({"ack_ids": [c], "lease_ms": 5}),
        )
        .await,
        400,
        "invalid_argument",
    );

    // Terminate b: straight to the dead-letter topic with the wharf-dlq-* headers.
    let r = ok(s
        .post(
            &format!("{base}/terminate"),
            json!({"ack_ids": [b2], "reason": "poison pill"}),
        )
        .await);
    assert_eq!(r, json!({"results": [{"ack_id": b2, "error": null}]}));
    ok(s.post(&format!("{base}/ack"), json!({"ack_ids": [c]}))
        .await);
    let d = ok(s.get(base).await);
    assert_eq!(d["in_flight"], 0);
    assert_eq!(d["dead_lettered"], 1);
    assert_eq!(d["partitions"][0]["committed"], 3);
    assert_eq!(d["partitions"][0]["lag"], 0);
    let dl = ok(s.get(&format!("{base}/dead-letters")).await);
    let ms = messages(&dl);
    assert_eq!(ms.len(), 1, "{dl}");
    let h = &ms[0]["headers"];
    assert_eq!(ms[0]["value"], "b");
    assert_eq!(ms[0]["key"], "kb");
    assert_eq!(h["wharf-dlq-source-topic"], "sh");
    assert_eq!(h["wharf-dlq-source-partition"], "0");
    assert_eq!(h["wharf-dlq-source-offset"], "1");
    assert_eq!(h["wharf-dlq-deliveries"], "2");
    assert_eq!(h["wharf-dlq-reason"], "poison pill");
    let at = wharf_broker::time::parse_rfc3339(h["wharf-dlq-time"].as_str().expect("time"))
        .expect("an RFC 3339 time");
    assert!(at >= ts, "{at} {ts}");
    assert!(h["traceparent"].is_string());
    let dl = ok(s
        .get(&format!(
            "{base}/dead-letters?offset=1&limit=5&encoding=base64"
        ))
        .await);
    assert_eq!(messages(&dl).len(), 0);
    let dl = ok(s.get(&format!("{base}/dead-letters?encoding=base64")).await);
    assert_eq!(dl["messages"][0]["value"], "Yg==");
    assert_error(
        &s.get(&format!("{base}/dead-letters?limit=0")).await,
        400,
        "invalid_argument",
    );
    assert_error(
        &s.get(&format!("{base}/dead-letters?bogus=1")).await,
        400,
        "invalid_query",
    );
    // Other subscriptions of the topic are untouched by it.
    assert_error(
        &s.post(&format!("{base}/redrive"), json!({"max": 0})).await,
        400,
        "invalid_argument",
    );

    // Redrive: receivable again (original partition and offset, a fresh delivery count).
    let r = ok(s.post(&format!("{base}/redrive"), json!({})).await);
    assert_eq!(r, json!({"redriven": 1}));
    let d = ok(s.get(base).await);
    assert_eq!(d["dead_lettered"], 0);
    let r = ok(s.post(&format!("{base}/receive"), json!({"max": 10})).await);
    let ds = deliveries(&r);
    assert_eq!(ds.len(), 1, "{r}");
    assert_eq!(ds[0]["message"]["value"], "b");
    assert_eq!(ds[0]["message"]["key"], "kb");
    assert_eq!(ds[0]["message"]["partition"], 0);
    assert_eq!(ds[0]["message"]["offset"], 1);
    assert_eq!(ds[0]["delivery_count"], 1);
    let r = ok(s
        .post(
            &format!("{base}/ack"),
            json!({"ack_ids": [ds[0]["ack_id"]]}),
        )
        .await);
    assert_eq!(r["results"][0]["error"], Value::Null);
    let r = ok(s.post(&format!("{base}/receive"), json!({})).await);
    assert_eq!(deliveries(&r).len(), 0);
    let r = ok(s.post(&format!("{base}/redrive"), json!({"max": 10})).await);
    assert_eq!(r, json!({"redriven": 0}));

    // wharf-deliver-at delays the first delivery.
    publish(
        &s,
        "sh",
        json!({"value": "later", "headers": {"wharf-deliver-at": "2999-01-01T00:00:00Z"}}),
    )
    .await;
    let r = ok(s.post(&format!("{base}/receive"), json!({})).await);
    assert_eq!(deliveries(&r).len(), 0, "{r}");
    let d = ok(s.get(base).await);
    assert_eq!(d["delayed"], 1);
    assert_eq!(d["in_flight"], 0);

    // Receive limits.
    for bad in [json!({"max": 0}), json!({"lease_ms": 5})] {
        assert_error(
            &s.post(&format!("{base}/receive"), bad).await,
            400,
            "invalid_argument",
        );
    }
    assert_error(
        &s.post(&format!("{base}/receive"), json!({"wait_ms": 30001}))
            .await,
        400,
        "limit_exceeded",
    );
    assert_error(
        &s.post(&format!("{base}/receive"), json!({"max": 1001}))
            .await,
        400,
        "limit_exceeded",
    );
    assert_error(
        &s.post(&format!("{base}/receive"), json!({"maximum": 1}))
            .await,
        400,
        "invalid_json",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_keeps_a_delivery_leased() {
    let s = TestServer::start().await;
    create_topic(&s, "ext", json!({})).await;
    let base = "/v1/topics/ext/subscriptions/w";
    ok(s.put(
        base,
        json!({"kind": "shared", "backoff": {"initial_ms": 0, "max_ms": 0}}),
    )
    .await);
    publish(&s, "ext", json!({"value": "slow job"})).await;
    let r = ok(s
        .post(&format!("{base}/receive"), json!({"lease_ms": 1000}))
        .await);
    let id = r["deliveries"][0]["ack_id"].clone();
    let r = ok(s
        .post(
            &format!("{base}/extend"),
            json!({"ack_ids": [id], "lease_ms": 60000}),
        )
        .await);
    // Extended while the 1 s lease was live: now it runs 60 s from here.
    assert_eq!(r["results"][0]["error"], Value::Null, "{r}");
    // Without the extension the lease would end within this wait, and (no backoff) the
    // message would be delivered again.
    let r = ok(s
        .post(&format!("{base}/receive"), json!({"wait_ms": 1500}))
        .await);
    assert_eq!(deliveries(&r).len(), 0, "{r}");
    let d = ok(s.get(base).await);
    assert_eq!(d["in_flight"], 1);
    let r = ok(s
        .post(&format!("{base}/ack"), json!({"ack_ids": [id]}))
        .await);
    assert_eq!(r["results"][0]["error"], Value::Null, "{r}");
    s.stop().await;
}

// ---- queues ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_create_send_receive_dead_letter_redrive_delete() {
    let s = TestServer::start().await;
    let settings =
        json!({"subscription": {"max_deliveries": 2, "backoff": {"initial_ms": 0, "max_ms": 0}}});
    let q = ok(s.put("/v1/queues/jobs", settings.clone()).await);
    assert_eq!(q["name"], "jobs");
    assert_eq!(q["topic"]["name"], "jobs");
    assert_eq!(q["topic"]["settings"]["partitions"], 1);
    assert_eq!(q["subscription"]["topic"], "jobs");
    assert_eq!(q["subscription"]["name"], "jobs");
    assert_eq!(q["subscription"]["settings"]["kind"], "shared");
    assert_eq!(q["subscription"]["settings"]["max_deliveries"], 2);
    assert_eq!(
        q["subscription"]["settings"]["backoff"],
        json!({"initial_ms": 0, "max_ms": 0, "jitter_pct": 20})
    );
    // Idempotent; other settings conflict; bad settings change nothing.
    assert_eq!(ok(s.put("/v1/queues/jobs", settings).await), q);
    assert_error(
        &s.put(
            "/v1/queues/jobs",
            json!({"subscription": {"max_deliveries": 3}}),
        )
        .await,
        409,
        "subscription_exists",
    );
    assert_error(
        &s.put("/v1/queues/jobs", json!({"topic": {"partitions": 2}}))
            .await,
        409,
        "topic_exists",
    );
    assert_error(
        &s.put(
            "/v1/queues/fresh",
            json!({"subscription": {"max_deliveries": 0}}),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(&s.get("/v1/queues/fresh").await, 404, "topic_not_found");
    assert_error(
        &s.put(
            "/v1/queues/fresh",
            json!({"subscription": {"kind": "stream"}}),
        )
        .await,
        400,
        "invalid_json",
    );
    assert_error(
        &s.put("/v1/queues/Fresh", json!({})).await,
        400,
        "invalid_name",
    );
    assert_eq!(ok(s.get("/v1/queues/jobs").await), q);

    // Send, then nack until max_deliveries: dead-lettered.
    let r = ok(s
        .post("/v1/queues/jobs/messages", json!({"value": "j1"}))
        .await);
    assert_eq!(results(&r)[0]["offset"], 0);
    let r = ok(s.post("/v1/queues/jobs/receive", json!({})).await);
    assert_eq!(r["deliveries"][0]["message"]["value"], "j1");
    assert_eq!(r["deliveries"][0]["delivery_count"], 1);
    let id = r["deliveries"][0]["ack_id"].clone();
    let r = ok(s
        .post("/v1/queues/jobs/nack", json!({"ack_ids": [id]}))
        .await);
    assert_eq!(r["results"][0]["error"], Value::Null);
    let r = ok(s.post("/v1/queues/jobs/receive", json!({})).await);
    assert_eq!(r["deliveries"][0]["delivery_count"], 2, "{r}");
    let id = r["deliveries"][0]["ack_id"].clone();
    let r = ok(s
        .post("/v1/queues/jobs/nack", json!({"ack_ids": [id]}))
        .await);
    assert_eq!(r["results"][0]["error"], Value::Null);
    let r = ok(s.post("/v1/queues/jobs/receive", json!({})).await);
    assert_eq!(deliveries(&r).len(), 0, "{r}");
    let q = ok(s.get("/v1/queues/jobs").await);
    assert_eq!(q["subscription"]["dead_lettered"], 1);
    assert_eq!(q["subscription"]["in_flight"], 0);
    assert_eq!(q["subscription"]["partitions"][0]["committed"], 1);
    let dl = ok(s.get("/v1/queues/jobs/dead-letters").await);
    assert_eq!(values(&dl), ["j1"]);
    let h = &dl["messages"][0]["headers"];
    assert_eq!(h["wharf-dlq-source-topic"], "jobs");
    assert_eq!(h["wharf-dlq-source-offset"], "0");
    assert_eq!(h["wharf-dlq-deliveries"], "2");
    assert_eq!(h["wharf-dlq-reason"], "nack");

    // Redrive, then extend and terminate through the queue routes.
    let r = ok(s.post("/v1/queues/jobs/redrive", json!({})).await);
    assert_eq!(r, json!({"redriven": 1}));
    let r = ok(s.post("/v1/queues/jobs/receive", json!({"max": 5})).await);
    assert_eq!(deliveries(&r).len(), 1, "{r}");
    assert_eq!(r["deliveries"][0]["message"]["value"], "j1");
    assert_eq!(r["deliveries"][0]["delivery_count"], 1);
    let id = r["deliveries"][0]["ack_id"].clone();
    let r = ok(s
        .post(
            "/v1/queues/jobs/extend",
            json!({"ack_ids": [id], "lease_ms": 60000}),
        )
        .await);
    assert_eq!(r["results"][0]["error"], Value::Null);
    let r = ok(s
        .post("/v1/queues/jobs/terminate", json!({"ack_ids": [id]}))
        .await);
    assert_eq!(r["results"][0]["error"], Value::Null);
    let dl = ok(s.get("/v1/queues/jobs/dead-letters").await);
    assert_eq!(values(&dl), ["j1", "j1"]);
    assert_eq!(
        dl["messages"][1]["headers"]["wharf-dlq-reason"],
        "terminated by the consumer"
    );
    assert_eq!(dl["messages"][1]["headers"]["wharf-dlq-deliveries"], "1");
    let dl = ok(s.get("/v1/queues/jobs/dead-letters?offset=1&limit=1").await);
    assert_eq!(messages(&dl).len(), 1);
    assert_eq!(dl["messages"][0]["offset"], 1);
    // Acking what was terminated: stale.
    let r = ok(s
        .post("/v1/queues/jobs/ack", json!({"ack_ids": [id]}))
        .await);
    assert_eq!(r["results"][0]["error"], "lease_expired");

    // Send a batch; ack through the queue route.
    let r = ok(s
        .post(
            "/v1/queues/jobs/messages",
            json!({"messages": [{"value": "j2"}, {"value": "j3"}]}),
        )
        .await);
    assert_eq!(results(&r).len(), 2);
    let r = ok(s.post("/v1/queues/jobs/receive", json!({"max": 5})).await);
    let ids: Vec<Value> = deliveries(&r).iter().map(|d| d["ack_id"].clone()).collect();
    assert_eq!(ids.len(), 2, "{r}");
    let r = ok(s.post("/v1/queues/jobs/ack", json!({"ack_ids": ids})).await);
    assert!(
        r["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|x| x["error"].is_null()),
        "{r}"
    );
    let q = ok(s.get("/v1/queues/jobs").await);
    assert_eq!(q["subscription"]["partitions"][0]["committed"], 3);
    assert_eq!(q["subscription"]["partitions"][0]["lag"], 0);
    assert_eq!(q["subscription"]["dead_lettered"], 1);

    // Sending to an unknown queue creates it with defaults.
    let r = ok(s
        .post("/v1/queues/auto-q/messages", json!({"value": "hello"}))
        .await);
    assert_eq!(results(&r)[0]["offset"], 0);
    let auto = ok(s.get("/v1/queues/auto-q").await);
    assert_eq!(auto["subscription"]["settings"]["max_deliveries"], 5);
    assert_eq!(auto["subscription"]["settings"]["lease_ms"], 30000);
    assert_eq!(auto["topic"]["settings"]["partitions"], 1);
    let r = ok(s.post("/v1/queues/auto-q/receive", json!({})).await);
    assert_eq!(r["deliveries"][0]["message"]["value"], "hello");
    // ...but a bad name does not.
    assert_error(
        &s.post("/v1/queues/Auto/messages", json!({"value": "x"}))
            .await,
        400,
        "invalid_name",
    );
    // Unknown queue on the other routes: 404.
    assert_error(
        &s.post("/v1/queues/nope/receive", json!({})).await,
        404,
        "topic_not_found",
    );
    assert_error(
        &s.get("/v1/queues/nope/dead-letters").await,
        404,
        "topic_not_found",
    );

    // DELETE: the queue (topic and subscription) is gone.
    let (st, _) = s.delete("/v1/queues/jobs").await;
    assert_eq!(st, 204);
    assert_error(&s.get("/v1/queues/jobs").await, 404, "topic_not_found");
    assert_error(&s.get("/v1/topics/jobs").await, 404, "topic_not_found");
    assert_error(
        &s.get("/v1/topics/wharf.dlq.jobs.jobs").await,
        404,
        "topic_not_found",
    );
    assert_error(&s.delete("/v1/queues/jobs").await, 404, "topic_not_found");
    // A plain topic is not a queue: not deleted through the queue route.
    create_topic(&s, "plain", json!({})).await;
    assert_error(
        &s.delete("/v1/queues/plain").await,
        404,
        "subscription_not_found",
    );
    assert_error(
        &s.get("/v1/queues/plain").await,
        404,
        "subscription_not_found",
    );
    ok(s.get("/v1/topics/plain").await);
    s.stop().await;
}

// ---- Server-Sent Events ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_events_resume_exactly_after_last_event_id() {
    let s = TestServer::start().await;
    create_topic(&s, "feed", json!({"partitions": 2})).await;
    let batch: Vec<Value> = (0..6)
        .map(|i| json!({"value": format!("m{i}"), "partition": i % 2}))
        .collect();
    publish(&s, "feed", json!({"messages": batch})).await;
    let all: BTreeSet<(u64, u64)> = (0..6).map(|i| (i % 2, i / 2)).collect();

    let mut r = s.events("/v1/topics/feed/events?from=earliest", None).await;
    ready(&mut r, "0:0,1:0").await;
    let first = r.take(6, TIMEOUT).await;
    for (i, e) in first.iter().enumerate() {
        assert_eq!(e.event, "message", "{e:?}");
        // The id is the cursor of every partition seen so far.
        assert_eq!(e.id.as_deref(), Some(cursor_after(&first[..=i]).as_str()));
        let m = e.json();
        assert_eq!(m["encoding"], "utf8");
        let (p, o) = partition_offset(e);
        assert_eq!(m["value"], format!("m{}", o * 2 + p));
    }
    let got: BTreeSet<(u64, u64)> = first.iter().map(partition_offset).collect();
    assert_eq!(got, all);
    // Per-partition order.
    for p in 0..2 {
        let offsets: Vec<u64> = first
            .iter()
            .map(partition_offset)
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| o)
            .collect();
        assert_eq!(offsets, [0, 1, 2]);
    }
    assert_eq!(first[5].id.as_deref(), Some("0:3,1:3"));
    // Live: a publish arrives on the open stream.
    publish(&s, "feed", json!({"value": "live", "partition": 1})).await;
    let live = r.take(1, TIMEOUT).await;
    assert_eq!(live[0].json()["value"], "live");
    assert_eq!(live[0].id.as_deref(), Some("0:3,1:4"));
    drop(r);

    // Reconnect after each k-th event: exactly the rest, no gap, no repeat.
    let mut seen: Vec<SseEvent> = first.clone();
    seen.extend(live);
    for k in [0usize, 2, 4] {
        let id = seen[k].id.clone().expect("id");
        let mut r = s
            .events("/v1/topics/feed/events?from=earliest", Some(&id))
            .await;
        ready(&mut r, &id).await;
        let rest = r.take(seen.len() - k - 1, TIMEOUT).await;
        let before: BTreeSet<(u64, u64)> = seen[..=k].iter().map(partition_offset).collect();
        let after: Vec<(u64, u64)> = rest.iter().map(partition_offset).collect();
        let after_set: BTreeSet<(u64, u64)> = after.iter().copied().collect();
        assert_eq!(
            after.len(),
            after_set.len(),
            "repeats after {id}: {after:?}"
        );
        assert!(before.is_disjoint(&after_set), "repeats {id}: {after:?}");
        let mut union = before.clone();
        union.extend(after_set);
        let mut everything = all.clone();
        everything.insert((1, 3));
        assert_eq!(union, everything, "gap after {id}");
        // Ids continue from the resumed cursor.
        let last = rest.last().expect("some").id.clone();
        assert_eq!(last.as_deref(), Some("0:3,1:4"));
        // Nothing else is pending.
        assert!(r.next(Duration::from_millis(300)).await.is_none());
    }
    // With one partition the order is total: event k+1 exactly.
    let mut r = s
        .events("/v1/topics/feed/events?partition=0&from=earliest", None)
        .await;
    ready(&mut r, "0:0").await;
    let p0 = r.take(3, TIMEOUT).await;
    assert_eq!(
        p0.iter()
            .map(|e| e.id.clone().expect("id"))
            .collect::<Vec<_>>(),
        ["0:1", "0:2", "0:3"]
    );
    drop(r);
    let mut r = s
        .events("/v1/topics/feed/events?partition=0", Some("0:1"))
        .await;
    ready(&mut r, "0:1").await;
    let next = r.take(2, TIMEOUT).await;
    assert_eq!(next[0].json()["offset"], 1);
    assert_eq!(next[0].json()["value"], "m2");
    assert_eq!(next[0].id.as_deref(), Some("0:2"));
    assert_eq!(next[1].json()["offset"], 2);
    drop(r);
    // Default start is latest: only what is published after connecting.
    let mut r = s.events("/v1/topics/feed/events?partition=0", None).await;
    ready(&mut r, "0:3").await;
    publish(&s, "feed", json!({"value": "newest", "partition": 0})).await;
    let e = r.take(1, TIMEOUT).await;
    assert_eq!(e[0].json()["value"], "newest");
    assert_eq!(e[0].id.as_deref(), Some("0:4"));
    drop(r);
    // base64 on request.
    let mut r = s
        .events(
            "/v1/topics/feed/events?partition=1&offset=3&encoding=base64",
            None,
        )
        .await;
    ready(&mut r, "1:3").await;
    let e = r.take(1, TIMEOUT).await;
    assert_eq!(e[0].json()["value"], "bGl2ZQ==");
    drop(r);

    // A partition that had no event yet is in the cursor too: tail from latest, see one event
    // on partition 0, reconnect after a publish to partition 1 made while disconnected.
    let mut r = s.events("/v1/topics/feed/events", None).await;
    ready(&mut r, "0:4,1:4").await;
    publish(&s, "feed", json!({"value": "p0", "partition": 0})).await;
    let e = r.take(1, TIMEOUT).await.remove(0);
    assert_eq!(e.id.as_deref(), Some("0:5,1:4"));
    drop(r);
    publish(
        &s,
        "feed",
        json!({"value": "missed-while-away", "partition": 1}),
    )
    .await;
    let mut r = s.events("/v1/topics/feed/events", Some("0:5,1:4")).await;
    ready(&mut r, "0:5,1:4").await;
    let e = r.take(1, TIMEOUT).await.remove(0);
    assert_eq!(e.json()["value"], "missed-while-away");
    assert_eq!(e.id.as_deref(), Some("0:5,1:5"));
    drop(r);
    // Cursor entries for partitions not tailed are dropped.
    let mut r = s
        .events("/v1/topics/feed/events?partition=0", Some("0:5,1:5,7:9"))
        .await;
    ready(&mut r, "0:5").await;
    drop(r);

    // Refusals are plain JSON errors.
    let (st, _, body) = raw(
        &s,
        Method::GET,
        "/v1/topics/feed/events?partition=2",
        &[],
        None,
    )
    .await;
    assert_error(&(st, body), 404, "partition_not_found");
    let (st, _, body) = raw(
        &s,
        Method::GET,
        "/v1/topics/feed/events",
        &[("last-event-id", "zero:one")],
        None,
    )
    .await;
    assert_error(&(st, body), 400, "invalid_argument");
    let (st, _, body) = raw(
        &s,
        Method::GET,
        "/v1/topics/feed/events?from=earliest&offset=1",
        &[],
        None,
    )
    .await;
    assert_error(&(st, body), 400, "invalid_argument");
    let (st, _, body) = raw(&s, Method::GET, "/v1/topics/nope/events", &[], None).await;
    assert_error(&(st, body), 404, "topic_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscription_events_assignment_messages_and_resume() {
    let s = TestServer::start().await;
    create_topic(&s, "ev", json!({})).await;
    let base = "/v1/topics/ev/subscriptions/g";
    ok(s.put(base, json!({"kind": "stream"})).await);
    publish(
        &s,
        "ev",
        json!({"messages": [{"value": "e0"}, {"value": "e1"}, {"value": "e2"}]}),
    )
    .await;

    let mut r = s.events(&format!("{base}/events"), None).await;
    let evs = r.take(4, TIMEOUT).await;
    assert_eq!(evs[0].event, "assignment", "{evs:?}");
    let a = evs[0].json();
    let member = a["member_id"].as_str().expect("member_id").to_owned();
    assert_eq!(a["partitions"], json!([0]));
    for (i, e) in evs[1..].iter().enumerate() {
        assert_eq!(e.event, "message");
        assert_eq!(e.json()["value"], format!("e{i}"));
        assert_eq!(e.id.as_deref(), Some(format!("0:{}", i + 1).as_str()));
    }
    // The connection is a member of the group.
    let d = ok(s.get(base).await);
    assert_eq!(d["members"], json!([member]));
    // Nothing committed without auto_commit.
    assert_eq!(d["partitions"][0]["committed"], 0);
    drop(r);
    // The dropped connection leaves the group.
    wait_until(&s, base, "the SSE member to leave", |d| {
        d["members"] == json!([])
    })
    .await;

    // Reconnect with the id of the 2nd message: that cursor is committed first, and the
    // group resumes right after it.
    let id = evs[2].id.clone().expect("id");
    assert_eq!(id, "0:2");
    let mut r = s.events(&format!("{base}/events"), Some(&id)).await;
    let d = ok(s.get(base).await);
    assert_eq!(d["partitions"][0]["committed"], 2);
    assert_eq!(d["partitions"][0]["lag"], 1);
    let evs = r.take(2, TIMEOUT).await;
    assert_eq!(evs[0].event, "assignment");
    assert_ne!(evs[0].json()["member_id"], member.as_str());
    assert_eq!(evs[1].event, "message");
    assert_eq!(evs[1].json()["value"], "e2", "resumed at the wrong place");
    assert_eq!(evs[1].json()["offset"], 2);
    assert_eq!(evs[1].id.as_deref(), Some("0:3"));
    // Live messages follow.
    publish(&s, "ev", json!({"value": "e3"})).await;
    let e = r.take(1, TIMEOUT).await;
    assert_eq!(e[0].json()["value"], "e3");
    assert_eq!(e[0].id.as_deref(), Some("0:4"));
    drop(r);
    wait_until(&s, base, "the SSE member to leave", |d| {
        d["members"] == json!([])
    })
    .await;
    let d = ok(s.get(base).await);
    assert_eq!(
        d["partitions"][0]["committed"], 2,
        "no auto_commit: unchanged"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscription_events_auto_commit_and_refusals() {
    let s = TestServer::start().await;
    create_topic(&s, "ev", json!({"partitions": 2})).await;
    let base = "/v1/topics/ev/subscriptions/g";
    ok(s.put(base, json!({"kind": "stream"})).await);
    publish(
        &s,
        "ev",
        json!({"messages": [
            {"value": "a0", "partition": 0},
            {"value": "a1", "partition": 0},
            {"value": "b0", "partition": 1}
        ]}),
    )
    .await;

    // auto_commit: what was sent is committed before the next fetch.
    let mut r = s
        .events(&format!("{base}/events?auto_commit=true"), None)
        .await;
    let evs = r.take(4, TIMEOUT).await;
    assert_eq!(evs[0].event, "assignment");
    assert_eq!(evs[0].json()["partitions"], json!([0, 1]));
    let got: Vec<&str> = evs[1..]
        .iter()
        .map(|e| e.id.as_deref().expect("id"))
        .collect();
    assert_eq!(got, ["0:1", "0:2", "0:2,1:1"]);
    wait_until(&s, base, "the auto-commit", |d| {
        d["partitions"][0]["committed"] == 2 && d["partitions"][1]["committed"] == 1
    })
    .await;
    // Live messages are committed too.
    publish(&s, "ev", json!({"value": "b1", "partition": 1})).await;
    let e = r.take(1, TIMEOUT).await;
    assert_eq!(e[0].json()["value"], "b1");
    assert_eq!(e[0].id.as_deref(), Some("0:2,1:2"));
    wait_until(&s, base, "the auto-commit", |d| {
        d["partitions"][1]["committed"] == 2 && d["partitions"][1]["lag"] == 0
    })
    .await;
    drop(r);

    // Shared-only options on a stream subscription: 400.
    for q in ["ack=auto", "member=m", "lease_ms=1000"] {
        let (st, _, body) = raw(&s, Method::GET, &format!("{base}/events?{q}"), &[], None).await;
        assert_error(&(st, body), 400, "invalid_argument");
    }
    let (st, _, body) = raw(
        &s,
        Method::GET,
        &format!("{base}/events"),
        &[("last-event-id", "0-1")],
        None,
    )
    .await;
    assert_error(&(st, body), 400, "invalid_argument");
    let (st, _, body) = raw(&s, Method::GET, &format!("{base}/events?max=0"), &[], None).await;
    assert_error(&(st, body), 400, "invalid_argument");
    let (st, _, body) = raw(
        &s,
        Method::GET,
        "/v1/topics/ev/subscriptions/nope/events",
        &[],
        None,
    )
    .await;
    assert_error(&(st, body), 404, "subscription_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_queue_events_deliver_and_ack() {
    let s = TestServer::start().await;
    create_topic(&s, "jobs", json!({})).await;
    ok(s.put(
        "/v1/topics/jobs/subscriptions/manual",
        json!({"kind": "shared"}),
    )
    .await);
    ok(s.put(
        "/v1/topics/jobs/subscriptions/auto",
        json!({"kind": "shared"}),
    )
    .await);
    publish(
        &s,
        "jobs",
        json!({"messages": [{"value": "x0"}, {"value": "x1"}]}),
    )
    .await;

    // Manual: each event is a delivery whose id is its ack_id; ack it through /ack.
    let manual = "/v1/topics/jobs/subscriptions/manual";
    let mut r = s.events(&format!("{manual}/events"), None).await;
    let evs = r.take(2, TIMEOUT).await;
    let mut ids = Vec::new();
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e.event, "delivery", "{e:?}");
        let d = e.json();
        assert_eq!(d["message"]["value"], format!("x{i}"));
        assert_eq!(d["delivery_count"], 1);
        assert_eq!(e.id.as_deref(), d["ack_id"].as_str());
        ids.push(d["ack_id"].clone());
    }
    let d = ok(s.get(manual).await);
    assert_eq!(d["in_flight"], 2);
    let acked = ok(s
        .post(&format!("{manual}/ack"), json!({"ack_ids": ids}))
        .await);
    assert_eq!(
        acked,
        json!({"results": [{"ack_id": ids[0], "error": null}, {"ack_id": ids[1], "error": null}]})
    );
    let d = ok(s.get(manual).await);
    assert_eq!(d["in_flight"], 0);
    assert_eq!(d["partitions"][0]["committed"], 2);
    drop(r);

    // ack=auto: acked once sent.
    let auto = "/v1/topics/jobs/subscriptions/auto";
    let mut r = s.events(&format!("{auto}/events?ack=auto"), None).await;
    let evs = r.take(2, TIMEOUT).await;
    assert!(evs.iter().all(|e| e.event == "delivery"), "{evs:?}");
    assert_eq!(evs[0].json()["message"]["value"], "x0");
    assert_eq!(evs[1].json()["message"]["value"], "x1");
    let d = wait_until(&s, auto, "the auto-acks", |d| {
        d["in_flight"] == 0 && d["partitions"][0]["committed"] == 2
    })
    .await;
    assert_eq!(d["partitions"][0]["lag"], 0);
    // Their ack ids are spent.
    let id = evs[0].json()["ack_id"].clone();
    let r2 = ok(s
        .post(&format!("{auto}/ack"), json!({"ack_ids": [id]}))
        .await);
    assert_eq!(r2["results"][0]["error"], "lease_expired");
    drop(r);

    // Stream-only options on a shared subscription: 400.
    let (st, _, body) = raw(
        &s,
        Method::GET,
        &format!("{auto}/events?auto_commit=true"),
        &[],
        None,
    )
    .await;
    assert_error(&(st, body), 400, "invalid_argument");

    // Queues too.
    ok(s.put("/v1/queues/mail", json!({})).await);
    ok(s.post(
        "/v1/queues/mail/messages",
        json!({"messages": [{"value": "q0"}, {"value": "q1"}]}),
    )
    .await);
    let mut r = s
        .events("/v1/queues/mail/events?ack=auto&max=1", None)
        .await;
    let evs = r.take(2, TIMEOUT).await;
    assert_eq!(evs[0].event, "delivery");
    assert_eq!(evs[0].json()["message"]["value"], "q0");
    assert_eq!(evs[1].json()["message"]["value"], "q1");
    assert_eq!(evs[1].id.as_deref(), evs[1].json()["ack_id"].as_str());
    wait_until(&s, "/v1/queues/mail", "the queue's auto-acks", |q| {
        q["subscription"]["in_flight"] == 0 && q["subscription"]["partitions"][0]["committed"] == 2
    })
    .await;
    drop(r);
    // (Another queue: the dropped connection above may still be polling this one.)
    ok(s.put("/v1/queues/mail2", json!({})).await);
    let mut r = s.events("/v1/queues/mail2/events", None).await;
    ok(s.post("/v1/queues/mail2/messages", json!({"value": "q2"}))
        .await);
    let e = r.take(1, TIMEOUT).await;
    let d = e[0].json();
    assert_eq!(d["message"]["value"], "q2");
    assert_eq!(e[0].id.as_deref(), d["ack_id"].as_str());
    let acked = ok(s
        .post("/v1/queues/mail2/ack", json!({"ack_ids": [d["ack_id"]]}))
        .await);
    assert_eq!(acked["results"][0]["error"], Value::Null);
    drop(r);
    let (st, _, body) = raw(&s, Method::GET, "/v1/queues/nope/events", &[], None).await;
    assert_error(&(st, body), 404, "topic_not_found");
    s.stop().await;
}

// ---- operations -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_stats() {
    let s = TestServer::start().await;
    let h = ok(s.get("/healthz").await);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["engine"], "embedded");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    let r = ok(s.get("/readyz").await);
    assert_eq!(r["status"], "ok");
    assert_eq!(r["reason"], Value::Null);

    create_topic(&s, "m1", json!({"partitions": 2})).await;
    publish(
        &s,
        "m1",
        json!({"messages": [{"value": "aa"}, {"value": "bb"}, {"value": "cc"}]}),
    )
    .await;
    ok(
        s.put("/v1/topics/m1/subscriptions/s", json!({"kind": "stream"}))
            .await,
    );
    ok(
        s.put("/v1/topics/m1/subscriptions/q", json!({"kind": "shared"}))
            .await,
    );
    let r = ok(s
        .post(
            "/v1/topics/m1/subscriptions/q/receive",
            json!({"member": "w"}),
        )
        .await);
    assert_eq!(deliveries(&r).len(), 1);
    ok(s.post("/v1/topics/m1/subscriptions/s/members", json!({}))
        .await);

    let (st, text) = s.get("/metrics").await;
    assert_eq!(st, 200);
    let text = text.as_str().expect("text exposition");
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_owned()
    };
    assert_eq!(
        line("wharf_messages_published_total{topic=\"m1\"}"),
        "wharf_messages_published_total{topic=\"m1\"} 3"
    );
    assert_eq!(
        line("wharf_published_bytes_total{topic=\"m1\"}"),
        "wharf_published_bytes_total{topic=\"m1\"} 6"
    );
    assert_eq!(
        line("wharf_subscription_lag{topic=\"m1\",subscription=\"s\"}"),
        "wharf_subscription_lag{topic=\"m1\",subscription=\"s\"} 3"
    );
    assert_eq!(
        line("wharf_subscription_in_flight{topic=\"m1\",subscription=\"q\"}"),
        "wharf_subscription_in_flight{topic=\"m1\",subscription=\"q\"} 1"
    );
    assert_eq!(
        line("wharf_topic_messages{topic=\"m1\"}"),
        "wharf_topic_messages{topic=\"m1\"} 3"
    );
    assert_eq!(line("wharf_storage_writable "), "wharf_storage_writable 1");
    assert!(text.contains("# TYPE wharf_http_request_duration_seconds histogram"));
    assert!(
        text.lines().any(
            |l| l.starts_with("wharf_http_request_duration_seconds_bucket{")
                && l.contains("method=\"POST\"")
                && l.contains("route=\"/v1/topics/{topic}/messages\"")
                && l.contains("status=\"200\"")
        ),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("wharf_http_requests_total{")
                && l.contains("route=\"/v1/topics/{topic}\"")
                && l.contains("method=\"PUT\"")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("wharf_messages_delivered_total{")
                && l.contains("topic=\"m1\"")
                && l.contains("subscription=\"q\"")
                && l.ends_with(" 1")),
        "{text}"
    );
    assert!(text.contains("wharf_fsync_duration_seconds_count"));

    let stats = ok(s.get("/v1/stats").await);
    assert_eq!(stats["engine"], "embedded");
    assert_eq!(stats["writable"], true);
    let topics = stats["topics"].as_array().expect("topics");
    let names: Vec<&str> = topics
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["m1", "wharf.dlq.m1.q"]);
    assert_eq!(
        topics[0],
        json!({
            "name": "m1",
            "partitions": 2,
            "messages": 3,
            "subscriptions": [
                {"name": "q", "kind": "shared", "lag": 3, "in_flight": 1, "delayed": 0,
                 "dead_lettered": 0, "members": 1},
                {"name": "s", "kind": "stream", "lag": 3, "in_flight": 0, "delayed": 0,
                 "dead_lettered": 0, "members": 1}
            ]
        })
    );
    assert_eq!(topics[1]["messages"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route() {
    let s = TestServer::start().await;
    let (st, headers, doc) = raw(&s, Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(st, 200);
    assert_eq!(
        headers
            .get("content-type")
            .map(|v| v.to_str().expect("ascii")),
        Some("application/json")
    );
    assert!(doc.is_object(), "not JSON: {doc}");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    // Every route of the router, with its methods.
    let t = "/v1/topics/{topic}/subscriptions/{sub}";
    let routes: Vec<(&str, String)> = vec![
        ("get", "/v1/topics".into()),
        ("put", "/v1/topics/{topic}".into()),
        ("get", "/v1/topics/{topic}".into()),
        ("delete", "/v1/topics/{topic}".into()),
        ("post", "/v1/topics/{topic}/messages".into()),
        ("get", "/v1/topics/{topic}/messages".into()),
        ("get", "/v1/topics/{topic}/events".into()),
        ("get", "/v1/topics/{topic}/subscriptions".into()),
        ("put", t.into()),
        ("get", t.into()),
        ("delete", t.into()),
        ("post", format!("{t}/members")),
        ("delete", format!("{t}/members/{{member}}")),
        ("post", format!("{t}/members/{{member}}/heartbeat")),
        ("post", format!("{t}/fetch")),
        ("post", format!("{t}/commit")),
        ("post", format!("{t}/reset")),
        ("post", format!("{t}/receive")),
        ("post", format!("{t}/ack")),
        ("post", format!("{t}/nack")),
        ("post", format!("{t}/extend")),
        ("post", format!("{t}/terminate")),
        ("get", format!("{t}/dead-letters")),
        ("post", format!("{t}/redrive")),
        ("get", format!("{t}/events")),
        ("put", "/v1/queues/{queue}".into()),
        ("get", "/v1/queues/{queue}".into()),
        ("delete", "/v1/queues/{queue}".into()),
        ("post", "/v1/queues/{queue}/messages".into()),
        ("post", "/v1/queues/{queue}/receive".into()),
        ("post", "/v1/queues/{queue}/ack".into()),
        ("post", "/v1/queues/{queue}/nack".into()),
        ("post", "/v1/queues/{queue}/extend".into()),
        ("post", "/v1/queues/{queue}/terminate".into()),
        ("get", "/v1/queues/{queue}/dead-letters".into()),
        ("post", "/v1/queues/{queue}/redrive".into()),
        ("get", "/v1/queues/{queue}/events".into()),
        ("get", "/v1/apps".into()),
        ("put", "/v1/apps/{app}".into()),
        ("get", "/v1/apps/{app}".into()),
        ("delete", "/v1/apps/{app}".into()),
        ("put", "/v1/apps/{app}/instances/{id}".into()),
        ("delete", "/v1/apps/{app}/instances/{id}".into()),
        ("post", "/v1/invoke/{app}/{path}".into()),
        ("get", "/v1/stats".into()),
        ("get", "/metrics".into()),
        ("get", "/healthz".into()),
        ("get", "/readyz".into()),
        ("get", "/openapi.json".into()),
    ];
    let paths = doc["paths"].as_object().expect("paths");
    let missing: Vec<String> = routes
        .iter()
        .filter(|(m, p)| {
            paths
                .get(p.as_str())
                .and_then(|item| item.get(*m))
                .is_none()
        })
        .map(|(m, p)| format!("{} {p}", m.to_uppercase()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the OpenAPI document: {missing:?}"
    );
    // Nothing documented that the router does not serve.
    let served: BTreeSet<&str> = routes.iter().map(|(_, p)| p.as_str()).collect();
    let extra: Vec<&String> = paths
        .keys()
        .filter(|p| !served.contains(p.as_str()))
        .collect();
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    // The server's limits are filled in.
    let read = &paths["/v1/topics/{topic}/messages"]["get"]["parameters"];
    let wait = read
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "wait_ms")
        .expect("wait_ms parameter");
    assert!(
        wait.to_string().contains("\"maximum\":30000"),
        "wait_ms without its cap: {wait}"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_grpc() {
    let s = TestServer::start().await;
    let got = s.get("/v1/nope").await;
    assert_error(&got, 404, "not_found");
    assert_error(&s.get("/").await, 404, "not_found");
    assert_error(
        &s.post("/v1/topics/a/b/c/d", json!({})).await,
        404,
        "not_found",
    );

    for (method, path) in [
        (Method::DELETE, "/v1/topics"),
        (Method::PATCH, "/v1/topics/x"),
        (Method::POST, "/v1/topics/x"),
        (Method::PUT, "/v1/topics/x/messages"),
        (Method::GET, "/v1/topics/x/subscriptions/y/ack"),
        (Method::POST, "/healthz"),
        (Method::DELETE, "/v1/queues/x/messages"),
    ] {
        let got = s.call(method.clone(), path, None).await;
        assert_eq!(got.0, 405, "{method} {path}: {}", got.1);
        assert_eq!(got.1["code"], "method_not_allowed", "{method} {path}");
    }

    // A gRPC call to a service this server does not have: HTTP 200 with grpc-status
    // UNIMPLEMENTED.
    let (st, headers, body) = raw(
        &s,
        Method::POST,
        "/wharf.v1.NoSuchService/Publish",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        headers
            .get("grpc-status")
            .map(|v| v.to_str().expect("ascii")),
        Some("12")
    );
    assert_eq!(
        headers
            .get("content-type")
            .map(|v| v.to_str().expect("ascii")),
        Some("application/grpc")
    );
    assert!(headers.get("grpc-message").is_some());
    assert_eq!(body, Value::String(String::new()));
    // Without the gRPC content type the same path is a plain 404.
    let (st, _, body) = raw(
        &s,
        Method::POST,
        "/wharf.v1.NoSuchService/Publish",
        &[],
        None,
    )
    .await;
    assert_error(&(st, body), 404, "not_found");

    // A body that is not JSON.
    let resp = s
        .client
        .put(s.url("/v1/topics/x"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("request");
    let st = resp.status();
    let body: Value = resp.json().await.expect("JSON error body");
    assert_error(&(st, body), 400, "invalid_json");
    assert_error(&s.get("/v1/topics/x").await, 404, "topic_not_found");
    s.stop().await;
}
