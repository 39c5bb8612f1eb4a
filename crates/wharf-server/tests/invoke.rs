//! Invocation through a real server on port 0 to real fake apps (axum and tonic servers on
//! port 0 that can be told to fail, hang, slow down or answer 503). Everything is checked
//! with counts (the apps count what reaches them) and conditions, never with sleeps.

use std::time::Duration;

use serde_json::{Value, json};
use wharf_server::config::TokenConfig;
use wharf_test::TestServer;
use wharf_test::fake_http::{HttpApp, Mode};
use wharf_test::reqwest::{self, Method, StatusCode};

const WAIT: Duration = Duration::from_secs(30);

/// Registers `apps` (id, address) under `app` with `policy`.
async fn app(server: &TestServer, app: &str, policy: Value, instances: &[(&str, &HttpApp)]) {
    let (status, body) = server
        .put(&format!("/v1/apps/{app}"), json!({ "policy": policy }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (id, a) in instances {
        let (status, body) = server
            .put(
                &format!("/v1/apps/{app}/instances/{id}"),
                json!({ "address": a.address() }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// Calls `path` on `app` through Wharf; returns the status, the body text and the headers.
async fn call(
    server: &TestServer,
    method: Method,
    app: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String, reqwest::header::HeaderMap) {
    let mut req = server
        .client
        .request(method, server.url(&format!("/v1/invoke/{app}{path}")))
        .body("hello");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, resp.text().await.expect("body"), headers)
}

fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let server = TestServer::start().await;
    let a = HttpApp::start("a").await;
    app(&server, "shop", json!({}), &[("a", &a)]).await;
    let (status, body, headers) = call(
        &server,
        Method::PUT,
        "shop",
        "/orders/7?expand=lines",
        &[
            ("x-custom", "yes"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "hello");
    assert_eq!(headers["x-instance"], "a");
    let seen = a.requests();
    let r = seen.last().expect("the app saw the call");
    assert_eq!(r.method, "PUT");
    assert_eq!(r.path_and_query, "/orders/7?expand=lines");
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-custom").as_deref(), Some("yes"));
    // The trace continues: same trace id, Wharf's span as the parent.
    let tp = header("traceparent").expect("traceparent forwarded");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(
        !tp.contains("b7ad6b7169203331"),
        "Wharf's own span is the parent: {tp}"
    );
    // Unknown app: a clear error, nothing sent.
    let (status, body, _) = call(&server, Method::GET, "nope", "/x", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "app_not_found");
}

#[tokio::test]
async fn breaker_fails_fast_then_a_probe_restores_traffic() {
    let server = TestServer::start().await;
    let a = HttpApp::start("a").await;
    a.set_mode(Mode::Status(500));
    app(
        &server,
        "dead",
        json!({ "breaker": { "consecutive_failures": 3, "ejection_ms": 3000, "max_ejection_ms": 3000 },
                "retry": { "max_attempts": 1 } }),
        &[("a", &a)],
    )
    .await;
    for _ in 0..3 {
        let (status, _, _) = call(&server, Method::GET, "dead", "/", &[]).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "the app's own answer"
        );
    }
    assert_eq!(a.hits(), 3);
    // Ejected: calls fail fast with a clear error and no upstream attempt.
    for _ in 0..5 {
        let (status, body, headers) = call(&server, Method::GET, "dead", "/", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(code(&body), "breaker_open", "{body}");
        assert!(body.contains("ejected"), "{body}");
        assert!(headers.contains_key("retry-after"));
    }
    assert_eq!(a.hits(), 3, "no upstream attempt while the breaker is open");
    let (_, status) = server.get("/v1/apps/dead").await;
    assert_eq!(status["breaker"], "open", "{status}");
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("wharf_app_breaker_open{app=\"dead\"} 1"),
        "the breaker is visible in /metrics"
    );
    assert!(
        metrics.contains(
            "wharf_invoke_calls_total{app=\"dead\",kind=\"http\",outcome=\"breaker_open\"}"
        ),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("invoke"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The app recovers; once the ejection ends, a real call probes it and traffic flows.
    a.set_mode(Mode::Ok);
    let start = std::time::Instant::now();
    loop {
        let (status, _, _) = call(&server, Method::GET, "dead", "/", &[]).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(start.elapsed() < WAIT, "traffic never came back");
        tokio::task::yield_now().await;
    }
    assert_eq!(a.hits(), 4, "exactly one probe restored it");
    let (status, _, _) = call(&server, Method::GET, "dead", "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (_, status) = server.get("/v1/apps/dead").await;
    assert_eq!(status["breaker"], "closed", "{status}");
}

#[tokio::test]
async fn retries_are_bounded_by_the_budget_and_post_is_not_retried() {
    let server = TestServer::start().await;
    let a = HttpApp::start("a").await;
    a.set_mode(Mode::Status(503));
    let policy = json!({
        "retry": { "max_attempts": 3, "backoff_base_ms": 1, "backoff_max_ms": 2, "jitter": 0.0,
                   "budget_ratio": 0.2, "budget_min_per_second": 1 },
        "breaker": { "consecutive_failures": 1000 }
    });
    app(&server, "flaky", policy.clone(), &[("a", &a)]).await;
    let calls = 100u64;
    for _ in 0..calls {
        let (status, _, _) = call(&server, Method::GET, "flaky", "/", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Budget: 20% of calls plus a floor of 1/s over its 10 s window.
    let floor = 10;
    let attempts = a.hits();
    assert!(
        attempts <= calls + calls / 5 + floor,
        "{attempts} attempts for {calls} calls"
    );
    assert!(attempts > calls, "some calls were retried ({attempts})");

    // POST is not retried...
    let b = HttpApp::start("b").await;
    b.set_mode(Mode::Status(503));
    app(&server, "orders", policy, &[("b", &b)]).await;
    let (status, _, _) = call(&server, Method::POST, "orders", "/orders", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.hits(), 1);
    // ...unless the caller marks it idempotent.
    let (status, _, _) = call(
        &server,
        Method::POST,
        "orders",
        "/orders",
        &[("wharf-idempotent", "true")],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.hits(), 1 + 3, "max_attempts = 3");
}

#[tokio::test]
async fn the_deadline_travels_and_an_expired_call_is_not_sent() {
    let server = TestServer::start().await;
    let a = HttpApp::start("a").await;
    app(&server, "slow", json!({}), &[("a", &a)]).await;
    let (status, _, _) = call(
        &server,
        Method::GET,
        "slow",
        "/",
        &[("wharf-deadline", "5000")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let r = a.requests();
    let seen: u64 = r
        .last()
        .and_then(|r| r.headers.iter().find(|(k, _)| k == "wharf-deadline"))
        .map(|(_, v)| v.parse().expect("milliseconds"))
        .expect("the app sees the remaining deadline");
    assert!(seen <= 5000 && seen > 0, "{seen}");
    // gRPC's header is read too (and the smaller wins).
    let (status, _, _) = call(&server, Method::GET, "slow", "/", &[("grpc-timeout", "2S")]).await;
    assert_eq!(status, StatusCode::OK);
    let seen: u64 = a
        .requests()
        .last()
        .and_then(|r| r.headers.iter().find(|(k, _)| k == "wharf-deadline"))
        .map(|(_, v)| v.parse().expect("milliseconds"))
        .expect("remaining deadline");
    assert!(seen <= 2000, "{seen}");
    // Already expired: refused, nothing sent.
    let before = a.hits();
    let (status, body, _) = call(
        &server,
        Method::GET,
        "slow",
        "/",
        &[("wharf-deadline", "0")],
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(code(&body), "deadline_exceeded");
    assert_eq!(a.hits(), before);
    // A hung app: the call ends at its deadline.
    a.set_mode(Mode::Hang);
    let (status, body, _) = call(
        &server,
        Method::GET,
        "slow",
        "/",
        &[("wharf-deadline", "300")],
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(code(&body), "deadline_exceeded");
    a.set_mode(Mode::Ok);
}

#[tokio::test]
async fn excess_calls_are_refused_at_once() {
    let server = TestServer::start().await;
    let a = HttpApp::start("a").await;
    a.set_mode(Mode::Hang);
    app(
        &server,
        "busy",
        json!({ "max_concurrency": 2, "timeout_ms": 60000, "per_try_timeout_ms": 60000 }),
        &[("a", &a)],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let client = server.client.clone();
        let url = server.url("/v1/invoke/busy/hold");
        held.push(tokio::spawn(async move {
            client.get(url).send().await.expect("request").status()
        }));
    }
    assert!(a.wait_for_hits(2, WAIT).await);
    let (status, body, headers) = call(&server, Method::GET, "busy", "/more", &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(code(&body), "concurrency_limited");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(a.hits(), 2, "the excess call never reached the app");
    a.set_mode(Mode::Ok);
    for h in held {
        assert_eq!(h.await.expect("task"), StatusCode::OK);
    }
    let (status, _, _) = call(&server, Method::GET, "busy", "/more", &[]).await;
    assert_eq!(status, StatusCode::OK, "permits come back");
}

#[tokio::test]
async fn the_balancer_prefers_the_fast_instance_ejects_a_failing_one_and_probes_it_back() {
    let server = TestServer::start().await;
    let fast = HttpApp::start("fast").await;
    let slow = HttpApp::start("slow").await;
    slow.set_mode(Mode::Delay(Duration::from_millis(100)));
    app(
        &server,
        "pair",
        json!({ "breaker": { "ejection_ms": 3000, "max_ejection_ms": 3000 } }),
        &[("fast", &fast), ("slow", &slow)],
    )
    .await;
    for _ in 0..100 {
        let (status, _, _) = call(&server, Method::GET, "pair", "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        fast.hits() >= 80,
        "fast {} vs slow {}",
        fast.hits(),
        slow.hits()
    );
    // The fast one starts failing: ejected after 5 failures, the slow one takes the traffic.
    fast.set_mode(Mode::Status(500));
    let before = fast.hits();
    let mut errors = 0;
    for _ in 0..10 {
        let (status, _, _) = call(&server, Method::GET, "pair", "/", &[]).await;
        if status != StatusCode::OK {
            errors += 1;
        }
    }
    assert_eq!(fast.hits() - before, 5, "ejected after 5 failures in a row");
    assert_eq!(errors, 5);
    let (_, status) = server.get("/v1/apps/pair").await;
    let state = status["instances"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["id"] == "fast"))
        .map(|i| i["state"].clone());
    assert_eq!(state, Some(json!("ejected")), "{status}");
    // It recovers: once its ejection ends, a real call probes it, and it is back.
    fast.set_mode(Mode::Ok);
    let recovered = fast.hits();
    let start = std::time::Instant::now();
    while fast.hits() == recovered {
        assert!(start.elapsed() < WAIT, "never probed back");
        let (status, _, _) = call(&server, Method::GET, "pair", "/", &[]).await;
        assert_eq!(status, StatusCode::OK, "the slow one answers meanwhile");
    }
    let (_, status) = server.get("/v1/apps/pair").await;
    let state = status["instances"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["id"] == "fast"))
        .map(|i| i["state"].clone());
    assert_eq!(state, Some(json!("healthy")), "{status}");
}

#[tokio::test]
async fn no_retry_past_the_deadline() {
    let server = TestServer::start().await;
    let a = HttpApp::start("a").await;
    a.set_mode(Mode::Status(503));
    app(
        &server,
        "late",
        json!({ "retry": { "max_attempts": 3, "backoff_base_ms": 5000, "backoff_max_ms": 5000, "jitter": 0.0 } }),
        &[("a", &a)],
    )
    .await;
    // The backoff would end after the deadline: the 503 comes back at once, tried once.
    let (status, _, _) = call(
        &server,
        Method::GET,
        "late",
        "/",
        &[("wharf-deadline", "1000")],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn invoke_needs_the_invoke_scope_for_that_app() {
    const ADMIN: &str = "admin-token-0123456789";
    const SHOP: &str = "shop-caller-0123456789";
    let server = TestServer::builder()
        .config(|c| {
            for (name, token, scopes) in [
                ("admin", ADMIN, vec!["admin".to_owned()]),
                ("shop", SHOP, vec!["invoke:shop".to_owned()]),
            ] {
                c.auth.tokens.push(TokenConfig {
                    name: name.into(),
                    token: token.into(),
                    scopes,
                });
            }
        })
        .token(ADMIN)
        .start()
        .await;
    let a = HttpApp::start("a").await;
    let b = HttpApp::start("b").await;
    app(&server, "shop", json!({}), &[("a", &a)]).await;
    app(&server, "billing", json!({}), &[("b", &b)]).await;
    let send = |app: &'static str, token: Option<&'static str>| {
        let mut req = server
            .client
            .get(server.url(&format!("/v1/invoke/{app}/x")));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.expect("request") }
    };
    assert_eq!(
        send("billing", Some(SHOP)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(send("shop", None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        b.hits() + a.hits(),
        0,
        "refused before any upstream attempt"
    );
    let ok = send("shop", Some(SHOP)).await;
    assert_eq!(ok.status(), StatusCode::OK);
    // Wharf's token is not passed on to the app.
    let r = a.requests();
    assert!(
        r.last()
            .is_some_and(|r| r.headers.iter().all(|(k, _)| k != "authorization"))
    );
    // Registering needs admin.
    let (status, _) = server
        .call_with_token(
            Method::PUT,
            "/v1/apps/shop/instances/z",
            Some(json!({ "address": "http://127.0.0.1:9" })),
            Some(SHOP),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn instances_expire_without_heartbeats() {
    let server = TestServer::start().await;
    let a = HttpApp::start("a").await;
    let (status, body) = server
        .put(
            "/v1/apps/ttl/instances/a",
            json!({ "address": a.address(), "ttl_ms": 300 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = call(&server, Method::GET, "ttl", "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    // Without a renewal the instance goes away.
    let start = std::time::Instant::now();
    loop {
        let (_, app) = server.get("/v1/apps/ttl").await;
        if app["instances"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(start.elapsed() < WAIT, "never expired: {app}");
        tokio::task::yield_now().await;
    }
    let (status, body, _) = call(&server, Method::GET, "ttl", "/", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&body), "no_instances");
    // Bad input changes nothing.
    for bad in [
        json!({ "address": "ftp://x" }),
        json!({ "address": "https://127.0.0.1:1" }),
        json!({ "address": "http://127.0.0.1:1", "ttl_ms": 1 }),
        json!({ "address": "http://127.0.0.1:1", "weight": 3 }),
    ] {
        let (status, body) = server.put("/v1/apps/ttl/instances/b", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (_, app) = server.get("/v1/apps/ttl").await;
    assert_eq!(app["instances"], json!([]));
}

#[tokio::test]
async fn apps_from_the_config_file_are_callable() {
    let a = HttpApp::start("static").await;
    let address = a.address();
    let server = TestServer::builder()
        .config(move |c| {
            c.apps.insert(
                "inventory".into(),
                wharf_invoke::AppConfig {
                    instances: vec![wharf_invoke::InstanceConfig {
                        id: "s1".into(),
                        address,
                        http2: true,
                    }],
                    ..wharf_invoke::AppConfig::default()
                },
            );
        })
        .start()
        .await;
    let (status, body, headers) = call(&server, Method::POST, "inventory", "/stock", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-instance"], "static");
    let (_, app) = server.get("/v1/apps/inventory").await;
    assert_eq!(
        app["instances"][0]["expires_in_ms"],
        Value::Null,
        "static: {app}"
    );
    assert_eq!(app["instances"][0]["http2"], true);
}
