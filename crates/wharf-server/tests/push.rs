//! Push delivery of shared subscriptions to fake apps, through a real server on port 0:
//! the backoff schedule of a failing app, dead-lettering by max deliveries and by a 4xx
//! answer, and recovery. Checked with counts and the apps' own arrival clocks.

use std::time::Duration;

use serde_json::{Value, json};
use wharf_test::TestServer;
use wharf_test::fake_http::{HttpApp, Mode};
use wharf_test::reqwest::StatusCode;

const WAIT: Duration = Duration::from_secs(60);

async fn setup(server: &TestServer, app: &HttpApp, topic: &str, sub: Value) {
    let (status, body) = server
        .put(
            "/v1/apps/hooks/instances/a",
            json!({ "address": app.address() }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.put(&format!("/v1/topics/{topic}"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .put(&format!("/v1/topics/{topic}/subscriptions/push"), sub)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn publish(server: &TestServer, topic: &str, values: &[&str]) {
    let messages: Vec<Value> = values
        .iter()
        .map(|v| json!({ "value": v, "headers": { "x-order": *v } }))
        .collect();
    let (status, body) = server
        .post(
            &format!("/v1/topics/{topic}/messages"),
            json!({ "messages": messages }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn dead_letters(server: &TestServer, topic: &str) -> Vec<Value> {
    let (status, body) = server
        .get(&format!(
            "/v1/topics/{topic}/subscriptions/push/dead-letters?limit=100"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["messages"].as_array().cloned().unwrap_or_default()
}

/// Waits until `f` holds (each check is a real request or a count), up to [`WAIT`].
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_failing_app_sees_the_backoff_schedule_then_the_message_is_dead_lettered() {
    let server = TestServer::start().await;
    let app = HttpApp::start("a").await;
    app.set_mode(Mode::Status(503));
    let sub = json!({
        "kind": "shared", "max_deliveries": 4,
        "backoff": { "initial_ms": 200, "max_ms": 800, "jitter_pct": 0 },
        "push": { "app": "hooks", "route": "/orders", "timeout_ms": 5000 }
    });
    setup(&server, &app, "orders", sub).await;
    publish(&server, "orders", &["m1"]).await;
    assert!(app.wait_for_hits(4, WAIT).await, "four deliveries");
    until("the dead letter", || async {
        dead_letters(&server, "orders").await.len() == 1
    })
    .await;
    let seen = app.requests();
    assert_eq!(seen.len(), 4, "max_deliveries = 4, then the DLQ");
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path_and_query, "/orders");
        assert_eq!(r.body, "m1");
        let h = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            h("wharf-delivery-count"),
            Some((i + 1).to_string().as_str())
        );
        assert_eq!(h("x-order"), Some("m1"));
        assert_eq!(h("wharf-topic"), Some("orders"));
        assert!(h("traceparent").is_some());
    }
    // The schedule: 200, 400, 800 ms between deliveries (jitter 0), never earlier.
    for (i, want) in [200u64, 400, 800].into_iter().enumerate() {
        let gap = seen[i + 1].at.duration_since(seen[i].at);
        assert!(
            gap >= Duration::from_millis(want) - Duration::from_millis(5),
            "gap {i} was {gap:?}, the backoff is {want} ms"
        );
        assert!(
            gap < Duration::from_millis(want) + Duration::from_secs(10),
            "{gap:?}"
        );
    }
    assert_eq!(app.hits(), 4, "nothing after the dead letter");
}

#[tokio::test]
async fn a_4xx_answer_dead_letters_at_once_with_the_reason() {
    let server = TestServer::start().await;
    let app = HttpApp::start("a").await;
    app.set_mode(Mode::Status(400));
    let sub = json!({
        "kind": "shared", "max_deliveries": 5,
        "push": { "app": "hooks", "route": "/bad" }
    });
    setup(&server, &app, "bad", sub).await;
    publish(&server, "bad", &["x"]).await;
    until("the dead letter", || async {
        dead_letters(&server, "bad").await.len() == 1
    })
    .await;
    assert_eq!(app.hits(), 1, "dead-lettered at the first answer");
    let dl = dead_letters(&server, "bad").await;
    let text = dl[0].to_string();
    assert!(
        text.contains("400") && text.contains("a says 400"),
        "{text}"
    );
}

#[tokio::test]
async fn an_app_that_recovers_receives_everything_pending() {
    let server = TestServer::start().await;
    let app = HttpApp::start("a").await;
    app.set_mode(Mode::Status(500));
    let sub = json!({
        "kind": "shared", "max_deliveries": 100,
        "backoff": { "initial_ms": 50, "max_ms": 200, "jitter_pct": 0 },
        "push": { "app": "hooks", "route": "/in", "max_in_flight": 4 }
    });
    setup(&server, &app, "work", sub).await;
    // The app's breaker ejects it after 5 failures in a row; probes come back quickly here.
    let (status, body) = server
        .put(
            "/v1/apps/hooks",
            json!({ "policy": { "breaker": { "ejection_ms": 200, "max_ejection_ms": 400 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let values: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    publish(&server, "work", &refs).await;
    assert!(app.wait_for_hits(8, WAIT).await, "attempts while failing");
    app.set_mode(Mode::Ok);
    // Every message is acknowledged once the app answers 2xx.
    until("every message acknowledged", || async {
        let (_, s) = server.get("/v1/topics/work/subscriptions/push").await;
        let lag: u64 = s["partitions"]
            .as_array()
            .map(|p| p.iter().map(|p| p["lag"].as_u64().unwrap_or(1)).sum())
            .unwrap_or(1);
        lag == 0 && s["in_flight"].as_u64() == Some(0)
    })
    .await;
    let ok: std::collections::BTreeSet<String> = app
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(ok.len(), 20, "each message delivered successfully: {ok:?}");
    assert!(dead_letters(&server, "work").await.is_empty());
}
