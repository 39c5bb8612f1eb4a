//! Malformed input never breaks the server: property tests against one running server.
//!
//! One server (on the in-memory [`FaultFs`], so nothing touches the disk) is started once on
//! a shared multi-thread runtime, with a topic of two partitions holding messages, a stream
//! subscription with a live member, a shared subscription with leased deliveries and a dead
//! letter, and a queue — so that requests reach deep into the handlers. Then:
//! - (a) random bytes, under random content types, to every `POST` and `PUT` route;
//! - (b) random JSON values — arbitrary nesting, object keys drawn mostly from the real field
//!   names of the request types in `wire.rs`, holding wrong-typed, huge, negative or unicode
//!   values, plus the real member id and ack ids — to every `POST` and `PUT` route; and
//!   bodies shaped like each route's request type (its own fields only, nested ones too) whose
//!   values are mostly of the right type, often at an edge (0, `u64::MAX`, bad times, unknown
//!   enum names, 257-byte header names, real and fake ack ids), and now and then of any type;
//! - (c) random query strings (real parameter names and junk; huge, negative, unicode and
//!   percent-escaped values) and `Last-Event-ID` headers to every `GET` route with parameters.
//!
//! Every answer must be a 2xx, or a 4xx whose body is `{"code": <non-empty>, "message": ..}`;
//! never a 5xx and never a dropped connection. The one exception is the documented
//! `501 not_supported` for the reserved `push` field of subscription settings.
//!
//! Cases per property: `WHARF_PROPTEST_CASES / 4` if set, else 200. Each case sends its input
//! to every route of its kind.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use wharf_log::vfs::fault::FaultFs;
use wharf_test::TestServer;
use wharf_test::reqwest::{self, Method, header};

/// Longest long-poll the fuzzed requests may ask for.
const MAX_WAIT_MS: u64 = 20;
/// Per request: generous, for a loaded machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: TestServer,
    member: String,
    ack_ids: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (server, member, ack_ids) = rt.block_on(setup());
        Fixture {
            rt,
            server,
            member,
            ack_ids,
        }
    })
}

async fn setup() -> (TestServer, String, Vec<String>) {
    let s = TestServer::builder()
        .vfs(FaultFs::new().shared())
        .data_dir(PathBuf::from("/wharf-fuzz/data"))
        .config(|c| c.limits.max_wait_ms = MAX_WAIT_MS)
        .start()
        .await;
    let ok = |what: &str, (st, body): (reqwest::StatusCode, Value)| {
        assert!(st.is_success(), "setup {what}: {st} {body}");
        body
    };
    ok(
        "topic",
        s.put("/v1/topics/fuzz", json!({"partitions": 2})).await,
    );
    ok(
        "stream subscription",
        s.put(
            "/v1/topics/fuzz/subscriptions/stream",
            json!({"kind": "stream"}),
        )
        .await,
    );
    ok(
        "shared subscription",
        s.put(
            "/v1/topics/fuzz/subscriptions/shared",
            json!({"kind": "shared", "max_deliveries": 3}),
        )
        .await,
    );
    ok("queue", s.put("/v1/queues/fuzzq", json!({})).await);
    let messages: Vec<Value> = (0..20)
        .map(|i| json!({"key": format!("k{}", i % 4), "value": format!("v{i}"), "headers": {"h": "x"}}))
        .collect();
    for path in ["/v1/topics/fuzz/messages", "/v1/queues/fuzzq/messages"] {
        ok(
            "publish",
            s.post(path, json!({ "messages": messages.clone() })).await,
        );
    }
    let joined = ok(
        "join",
        s.post("/v1/topics/fuzz/subscriptions/stream/members", json!({}))
            .await,
    );
    let member = joined["member_id"].as_str().expect("member id").to_owned();
    let mut ack_ids = Vec::new();
    for path in [
        "/v1/topics/fuzz/subscriptions/shared/receive",
        "/v1/queues/fuzzq/receive",
    ] {
        let got = ok(
            "receive",
            s.post(path, json!({"max": 6, "lease_ms": 600_000})).await,
        );
        for d in got["deliveries"].as_array().expect("deliveries") {
            ack_ids.push(d["ack_id"].as_str().expect("ack id").to_owned());
        }
    }
    assert_eq!(ack_ids.len(), 12, "setup: too few deliveries");
    // One dead letter on each, so dead-letter reads and redrives have something to move.
    let first = ack_ids.remove(0);
    ok(
        "terminate",
        s.post(
            "/v1/topics/fuzz/subscriptions/shared/terminate",
            json!({ "ack_ids": [first] }),
        )
        .await,
    );
    let first = ack_ids.remove(5);
    ok(
        "terminate",
        s.post("/v1/queues/fuzzq/terminate", json!({ "ack_ids": [first] }))
            .await,
    );
    (s, member, ack_ids)
}

fn cases() -> u32 {
    std::env::var("WHARF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(200, |n| (n / 4).max(1))
}

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..RunnerConfig::default()
    })
}

const TOPIC_FIELDS: &[&str] = &[
    "partitions",
    "durability",
    "sync_interval_ms",
    "retention",
    "dedup_window_ms",
    "max_message_bytes",
    "segment_bytes",
];
const MESSAGE_FIELDS: &[&str] = &["key", "value", "headers", "partition", "encoding"];
const BATCH_FIELDS: &[&str] = &["!messages", "encoding"];
const SUBSCRIPTION_FIELDS: &[&str] = &[
    "!kind",
    "start",
    "start_offset",
    "start_time",
    "session_timeout_ms",
    "max_deliveries",
    "lease_ms",
    "backoff",
    "ordered_by_key",
    "max_in_flight_per_member",
    "push",
];
const QUEUE_SUBSCRIPTION_FIELDS: &[&str] = &[
    "max_deliveries",
    "lease_ms",
    "backoff",
    "ordered_by_key",
    "max_in_flight_per_member",
];
const JOIN_FIELDS: &[&str] = &["member_id"];
const FETCH_FIELDS: &[&str] = &[
    "!member_id",
    "max_messages",
    "max_bytes",
    "wait_ms",
    "encoding",
];
const COMMIT_FIELDS: &[&str] = &["!member_id", "!offsets"];
const RESET_FIELDS: &[&str] = &["!to", "timestamp", "offsets"];
const RECEIVE_FIELDS: &[&str] = &["member", "max", "wait_ms", "lease_ms", "encoding"];
const ACK_FIELDS: &[&str] = &["!ack_ids"];
const NACK_FIELDS: &[&str] = &["!ack_ids", "delay_ms"];
const EXTEND_FIELDS: &[&str] = &["!ack_ids", "!lease_ms"];
const TERMINATE_FIELDS: &[&str] = &["!ack_ids", "reason"];
const REDRIVE_FIELDS: &[&str] = &["max"];
const QUEUE_FIELDS: &[&str] = &["topic", "subscription"];

/// Every route that takes a body, with the fields of its request type. `{member}` is the
/// fixture's stream member.
const BODY_ROUTES: &[(&str, &str, &[&str])] = &[
    ("PUT", "/v1/topics/fuzz", TOPIC_FIELDS),
    ("POST", "/v1/topics/fuzz/messages", MESSAGE_FIELDS),
    ("POST", "/v1/topics/fuzz/messages", BATCH_FIELDS),
    (
        "PUT",
        "/v1/topics/fuzz/subscriptions/stream",
        SUBSCRIPTION_FIELDS,
    ),
    (
        "PUT",
        "/v1/topics/fuzz/subscriptions/shared",
        SUBSCRIPTION_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/stream/members",
        JOIN_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/stream/members/{member}/heartbeat",
        &[],
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/stream/fetch",
        FETCH_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/stream/commit",
        COMMIT_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/stream/reset",
        RESET_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/receive",
        RECEIVE_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/ack",
        ACK_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/nack",
        NACK_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/extend",
        EXTEND_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/terminate",
        TERMINATE_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/redrive",
        REDRIVE_FIELDS,
    ),
    // The wrong kind of subscription for the operation.
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/stream/receive",
        RECEIVE_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/stream/ack",
        ACK_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/stream/redrive",
        REDRIVE_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/fetch",
        FETCH_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/commit",
        COMMIT_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/members",
        JOIN_FIELDS,
    ),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/shared/reset",
        RESET_FIELDS,
    ),
    // Queues.
    ("PUT", "/v1/queues/fuzzq", QUEUE_FIELDS),
    ("POST", "/v1/queues/fuzzq/messages", MESSAGE_FIELDS),
    ("POST", "/v1/queues/fuzzq/messages", BATCH_FIELDS),
    ("POST", "/v1/queues/fuzzq/receive", RECEIVE_FIELDS),
    ("POST", "/v1/queues/fuzzq/ack", ACK_FIELDS),
    ("POST", "/v1/queues/fuzzq/nack", NACK_FIELDS),
    ("POST", "/v1/queues/fuzzq/extend", EXTEND_FIELDS),
    ("POST", "/v1/queues/fuzzq/terminate", TERMINATE_FIELDS),
    ("POST", "/v1/queues/fuzzq/redrive", REDRIVE_FIELDS),
    // Things that do not exist.
    ("POST", "/v1/topics/nope/messages", MESSAGE_FIELDS),
    (
        "POST",
        "/v1/topics/fuzz/subscriptions/nope/receive",
        RECEIVE_FIELDS,
    ),
    ("POST", "/v1/queues/fuzz/receive", RECEIVE_FIELDS),
];

/// Every route that takes query parameters.
const QUERY_ROUTES: &[&str] = &[
    "/v1/topics/fuzz/messages",
    "/v1/topics/fuzz/events",
    "/v1/topics/fuzz/subscriptions/stream/events",
    "/v1/topics/fuzz/subscriptions/shared/events",
    "/v1/topics/fuzz/subscriptions/shared/dead-letters",
    "/v1/topics/fuzz/subscriptions/stream/dead-letters",
    "/v1/queues/fuzzq/dead-letters",
    "/v1/queues/fuzzq/events",
    "/v1/topics/nope/messages",
];

/// The field names of the request types in `wire.rs`.
const FIELDS: &[&str] = &[
    "key",
    "value",
    "headers",
    "partition",
    "encoding",
    "messages",
    "partitions",
    "durability",
    "sync_interval_ms",
    "retention",
    "max_age_ms",
    "max_bytes",
    "dedup_window_ms",
    "max_message_bytes",
    "segment_bytes",
    "kind",
    "start",
    "start_offset",
    "start_time",
    "session_timeout_ms",
    "max_deliveries",
    "lease_ms",
    "backoff",
    "initial_ms",
    "max_ms",
    "jitter_pct",
    "ordered_by_key",
    "max_in_flight_per_member",
    "push",
    "member_id",
    "max_messages",
    "wait_ms",
    "offsets",
    "offset",
    "to",
    "timestamp",
    "member",
    "max",
    "ack_ids",
    "delay_ms",
    "reason",
    "topic",
    "subscription",
    "wharf-message-id",
    "wharf-deliver-at",
    "traceparent",
];

/// The query parameter names of the `GET` routes.
const PARAMS: &[&str] = &[
    "partition",
    "offset",
    "from_time",
    "from",
    "limit",
    "max_bytes",
    "wait_ms",
    "encoding",
    "max",
    "ack",
    "member",
    "lease_ms",
    "auto_commit",
];

const STRINGS: &[&str] = &[
    "",
    "x",
    "utf8",
    "base64",
    "stream",
    "shared",
    "earliest",
    "latest",
    "timestamp",
    "offsets",
    "always",
    "interval",
    "none",
    "auto",
    "manual",
    "true",
    "2024-01-01T00:00:00Z",
    "2024-02-30T25:61:61Z",
    "9999-12-31T23:59:59.999999999+23:59",
    "0",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e400",
    "aGVsbG8=",
    "!!not base64",
    "wharf-message-id",
    "wharf-deliver-at",
    "traceparent",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-00000000000000000000000000000000-0000000000000000-00",
    "fuzz",
    "fuzzq",
    "\u{0}",
    "é漢🦀",
    "\u{feff}\u{202e}",
];

const NUMBERS: &[f64] = &[0.5, -0.0, 1e308, -1e308, 1e-300, 4.294_967_296e9, 1.8e19];

fn string_value(extra: Vec<String>) -> BoxedStrategy<String> {
    let pool: Vec<String> = STRINGS
        .iter()
        .map(|s| (*s).to_owned())
        .chain(extra)
        .chain(["a".repeat(300), "x".repeat(5000)])
        .collect();
    prop_oneof![
        4 => prop::sample::select(pool),
        2 => ".{0,24}",
        1 => "[a-z0-9._-]{1,12}",
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0i128,
            1,
            -1,
            2,
            100,
            1000,
            1024,
            100_000,
            100_001,
            i128::from(u32::MAX),
            i128::from(u32::MAX) + 1,
            i128::from(i64::MAX),
            i128::from(i64::MIN),
            i128::from(u64::MAX),
        ])
        .prop_map(|n| {
            u64::try_from(n)
                .map(Value::from)
                .or_else(|_| i64::try_from(n).map(Value::from))
                .unwrap_or(Value::Null)
        }),
        2 => any::<i64>().prop_map(Value::from),
        2 => any::<u64>().prop_map(Value::from),
        1 => (0u64..3_600_000).prop_map(Value::from),
        1 => prop::sample::select(NUMBERS.to_vec()).prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
    ]
    .boxed()
}

fn json_value(extra: Vec<String>) -> BoxedStrategy<Value> {
    let key = prop_oneof![
        4 => prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
        1 => ".{0,10}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string_value(extra).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A JSON body: mostly objects, so the handlers' field checks are reached.
fn json_body(extra: Vec<String>) -> BoxedStrategy<Value> {
    let value = json_value(extra.clone());
    let field = prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned);
    prop_oneof![
        4 => prop::collection::vec((field, value.clone()), 0..5)
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        1 => prop::collection::vec(json_value(extra), 0..4)
            .prop_map(|msgs| json!({ "messages": msgs })),
        1 => value,
    ]
    .boxed()
}

/// A value of the right type for `field` (often in range, sometimes at an edge), or now and
/// then any JSON value.
fn plausible(field: &'static str, extra: Vec<String>) -> BoxedStrategy<Value> {
    let edge = prop::sample::select(vec![
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        1 << 53,
        i64::MAX as u64,
        u64::MAX,
    ])
    .prop_map(Value::from);
    let small = prop_oneof![
        4 => (0u64..5).prop_map(Value::from),
        3 => (0u64..100_001).prop_map(Value::from),
        1 => edge.clone(),
        1 => number(),
    ]
    .boxed();
    let ms = prop_oneof![
        3 => (0u64..MAX_WAIT_MS * 2).prop_map(Value::from),
        3 => (0u64..86_400_000).prop_map(Value::from),
        1 => edge,
        1 => number(),
    ]
    .boxed();
    let one_of = |names: &[&'static str]| {
        let mut v: Vec<Value> = names.iter().map(|n| Value::from(*n)).collect();
        v.push(Value::from("nonsense"));
        prop::sample::select(v).boxed()
    };
    let string = string_value(extra.clone()).prop_map(Value::String).boxed();
    let time = prop_oneof![
        prop::sample::select(vec![
            "2024-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "0",
            "-1",
            "99999999999999999999",
            "-9223372036854775808",
            "9223372036854775807",
            "tomorrow",
        ])
        .prop_map(Value::from),
        any::<i64>().prop_map(|n| Value::from(n.to_string())),
    ]
    .boxed();
    let sub =
        |fields: &'static [&'static str], extra: Vec<String>| object_of(fields, extra).boxed();
    let right: BoxedStrategy<Value> = match field {
        "partitions"
        | "partition"
        | "max_deliveries"
        | "jitter_pct"
        | "max_in_flight_per_member"
        | "max_messages"
        | "max"
        | "max_bytes" => small,
        "sync_interval_ms" | "dedup_window_ms" | "max_message_bytes" | "segment_bytes"
        | "max_age_ms" | "session_timeout_ms" | "lease_ms" | "initial_ms" | "max_ms"
        | "wait_ms" | "delay_ms" | "start_offset" | "offset" => ms,
        "encoding" => one_of(&["utf8", "base64"]),
        "durability" => one_of(&["always", "interval", "none"]),
        "kind" => one_of(&["stream", "shared"]),
        "start" => one_of(&["earliest", "latest"]),
        "to" => one_of(&["earliest", "latest", "timestamp", "offsets"]),
        "start_time" | "timestamp" => time,
        "ordered_by_key" => any::<bool>().prop_map(Value::Bool).boxed(),
        "push" => prop_oneof![Just(Value::Null), Just(json!({"url": "http://x"}))].boxed(),
        "headers" => {
            let name = prop_oneof![
                prop::sample::select(vec![
                    "wharf-message-id",
                    "wharf-deliver-at",
                    "traceparent",
                    "tracestate",
                    "h",
                    "",
                ])
                .prop_map(str::to_owned),
                ".{0,8}",
                Just("n".repeat(257)),
            ];
            let value = prop_oneof![time.clone(), string.clone()];
            prop::collection::vec((name, value), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect()))
                .boxed()
        }
        "retention" => sub(&["max_age_ms", "max_bytes"], extra),
        "backoff" => sub(&["initial_ms", "max_ms", "jitter_pct"], extra),
        "topic" => sub(TOPIC_FIELDS, extra),
        "subscription" => sub(QUEUE_SUBSCRIPTION_FIELDS, extra),
        "messages" => prop::collection::vec(sub(MESSAGE_FIELDS, extra), 0..4)
            .prop_map(Value::Array)
            .boxed(),
        "offsets" => prop::collection::vec(sub(&["!partition", "!offset"], extra), 0..3)
            .prop_map(Value::Array)
            .boxed(),
        "member_id" | "member" => {
            let member = extra.last().cloned().unwrap_or_default();
            prop_oneof![
                2 => Just(Value::String(member)),
                1 => string,
            ]
            .boxed()
        }
        "ack_ids" => {
            let id = prop_oneof![
                3 => prop::sample::select(extra.clone()),
                1 => string_value(extra),
            ];
            prop::collection::vec(id.prop_map(Value::String), 0..4)
                .prop_map(Value::Array)
                .boxed()
        }
        _ => string,
    };
    prop_oneof![14 => right, 1 => json_value(Vec::new())].boxed()
}

/// An object with some of `fields` (always those marked `!`), each of about the right type.
fn object_of(fields: &'static [&'static str], extra: Vec<String>) -> impl Strategy<Value = Value> {
    let entries: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .iter()
        .map(|f| {
            let (name, required) = match f.strip_prefix('!') {
                Some(name) => (name, true),
                None => (*f, false),
            };
            let entry = plausible(name, extra.clone()).prop_map(move |v| (name.to_owned(), v));
            if required {
                entry.prop_map(Some).boxed()
            } else {
                prop::option::of(entry).boxed()
            }
        })
        .collect();
    entries.prop_map(|kv| Value::Object(kv.into_iter().flatten().collect()))
}

/// One shaped body per body route (in `BODY_ROUTES` order).
fn shaped_bodies(extra: Vec<String>) -> impl Strategy<Value = Vec<Value>> {
    BODY_ROUTES
        .iter()
        .map(|(_, _, fields)| object_of(fields, extra.clone()).boxed())
        .collect::<Vec<_>>()
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/octet-stream"),
        Some("application/cloudevents+json"),
        Some("multipart/form-data; boundary=x"),
        Some("text/html"),
        Some(""),
        Some(";;;"),
    ])
}

/// Random bytes, or JSON text cut short or with a byte changed.
fn body_bytes() -> BoxedStrategy<Vec<u8>> {
    let damaged = (
        json_body(Vec::new()),
        any::<prop::sample::Index>(),
        any::<u8>(),
    )
        .prop_map(|(v, at, b)| {
            let mut text = serde_json::to_vec(&v).expect("serialises");
            if !text.is_empty() {
                let i = at.index(text.len());
                if b % 2 == 0 {
                    text.truncate(i);
                } else {
                    text[i] = b;
                }
            }
            text
        });
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..300),
        2 => damaged,
        1 => prop::sample::select(vec![
            b"".to_vec(),
            b"   ".to_vec(),
            b"null".to_vec(),
            b"[]".to_vec(),
            b"\"\"".to_vec(),
            b"{\"messages\":[]}".to_vec(),
            b"{\"value\":\"\\ud800\"}".to_vec(),
            b"\xef\xbb\xbf{}".to_vec(),
            b"{\"a\":".repeat(200),
            b"[".repeat(5000),
        ]),
    ]
    .boxed()
}

fn query_value(extra: Vec<String>) -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "", "0", "1", "-1", "2", "earliest", "latest", "utf8", "base64", "auto", "manual",
            "true", "false", "1.5", "1e3", "NaN", "+5", " 5", "0x10", "%", "%zz", "%FF%FE",
            "%00", "%2B", "%26", "%3D", "a&b=c", "2024-01-01T00:00:00Z", "=", "&&", "+",
        ])
        .prop_map(str::to_owned),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => Just("9".repeat(40)),
        1 => "(%[0-9A-Fa-f]{2}){1,6}",
        1 => ".{0,16}",
        1 => string_value(extra),
    ]
    .boxed()
}

fn query_string(extra: Vec<String>) -> BoxedStrategy<String> {
    let key = prop_oneof![
        5 => prop::sample::select(PARAMS.to_vec()).prop_map(str::to_owned),
        1 => "[a-z_%0-9]{0,10}",
        1 => ".{0,6}",
    ];
    prop::collection::vec((key, query_value(extra), any::<bool>()), 0..5)
        .prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(k, v, with_eq)| if with_eq { format!("{k}={v}") } else { k })
                .collect::<Vec<_>>()
                .join("&")
        })
        .boxed()
}

fn last_event_id() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        1 => prop::sample::select(vec![
            "", "0:0", "0:1,1:1", "0:5", "1:18446744073709551615", "99:1", "0:-1", "garbage",
            ",", "0:", ":0", "0:1,0:2", "4294967296:0",
        ])
        .prop_map(|s| Some(s.to_owned())),
        1 => "[0-9:,]{0,12}".prop_map(Some),
    ]
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// Sends one request and checks the answer's shape.
async fn check(req: reqwest::RequestBuilder, what: &str) -> Result<(), TestCaseError> {
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, req.send())
        .await
        .map_err(|_| fail(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| fail(format!("{what}: connection failed: {e:?}")))?;
    let status = resp.status();
    let event_stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if status.is_success() && event_stream {
        // An open event stream: it answered; hang up.
        return Ok(());
    }
    let text = tokio::time::timeout(REQUEST_TIMEOUT, resp.text())
        .await
        .map_err(|_| {
            fail(format!(
                "{what}: {status}: body not within {REQUEST_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| fail(format!("{what}: {status}: body cut off: {e:?}")))?;
    if status.is_success() {
        return Ok(());
    }
    let body: Value = serde_json::from_str(&text)
        .map_err(|_| fail(format!("{what}: {status} with a non-JSON body: {text:?}")))?;
    let code = body["code"].as_str().unwrap_or_default();
    let shaped = !code.is_empty() && body["message"].is_string();
    if !shaped {
        return Err(fail(format!(
            "{what}: {status} without code/message: {text}"
        )));
    }
    let documented_501 = status == 501 && code == "not_supported";
    if status.is_client_error() || documented_501 {
        Ok(())
    } else {
        Err(fail(format!("{what}: {status}: {text}")))
    }
}

fn route_path(path: &str, member: &str) -> String {
    path.replace("{member}", member)
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).expect("method")
}

/// Real ack ids, then the real member id (last).
fn extra_strings(fx: &Fixture) -> Vec<String> {
    let mut v = fx.ack_ids.clone();
    v.push(fx.member.clone());
    v
}

fn run<S>(strategy: S, test: impl Fn(&Fixture, S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let fx = fixture();
    let result = runner().run(&strategy, |input| test(fx, input));
    if let Err(e) = result {
        panic!("{e}");
    }
    // The server is still fine.
    fx.rt.block_on(async {
        let (st, body) = fx.server.get("/healthz").await;
        assert_eq!(st, 200, "{body}");
        let (st, body) = fx.server.get("/v1/topics/fuzz").await;
        assert_eq!(st, 200, "{body}");
    });
}

#[test]
fn random_bytes_to_every_body_route() {
    run((body_bytes(), content_type()), |fx, (bytes, ct)| {
        fx.rt.block_on(async {
            for (m, path, _) in BODY_ROUTES {
                let path = route_path(path, &fx.member);
                let mut req = fx
                    .server
                    .client
                    .request(method(m), fx.server.url(&path))
                    .body(bytes.clone());
                if let Some(ct) = ct {
                    req = req.header(header::CONTENT_TYPE, ct);
                }
                check(req, &format!("{m} {path} ({ct:?})")).await?;
            }
            Ok(())
        })
    });
}

#[test]
fn random_json_to_every_body_route() {
    let fx = fixture();
    run(json_body(extra_strings(fx)), |fx, body| {
        fx.rt.block_on(async {
            for (m, path, _) in BODY_ROUTES {
                let path = route_path(path, &fx.member);
                let req = fx
                    .server
                    .client
                    .request(method(m), fx.server.url(&path))
                    .json(&body);
                check(req, &format!("{m} {path}")).await?;
            }
            Ok(())
        })
    });
}

#[test]
fn shaped_json_with_wrong_values_to_every_body_route() {
    let fx = fixture();
    run(shaped_bodies(extra_strings(fx)), |fx, bodies| {
        fx.rt.block_on(async {
            for ((m, path, _), body) in BODY_ROUTES.iter().zip(&bodies) {
                let path = route_path(path, &fx.member);
                let req = fx
                    .server
                    .client
                    .request(method(m), fx.server.url(&path))
                    .json(body);
                check(req, &format!("{m} {path} {body}")).await?;
            }
            Ok(())
        })
    });
}

#[test]
fn random_query_strings_to_every_get_route() {
    let fx = fixture();
    run(
        (query_string(extra_strings(fx)), last_event_id()),
        |fx, (query, event_id)| {
            fx.rt.block_on(async {
                for path in QUERY_ROUTES {
                    let url = format!("{}?{query}", fx.server.url(path));
                    let Ok(url) = reqwest::Url::parse(&url) else {
                        // Not a URL a client could send.
                        continue;
                    };
                    let mut req = fx.server.client.get(url).timeout(REQUEST_TIMEOUT);
                    if let Some(id) = &event_id {
                        req = req.header("last-event-id", id);
                    }
                    check(
                        req,
                        &format!("GET {path}?{query} (Last-Event-ID {event_id:?})"),
                    )
                    .await?;
                }
                Ok(())
            })
        },
    );
}
