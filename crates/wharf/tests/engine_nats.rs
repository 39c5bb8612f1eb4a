//! `wharf serve --engine nats` as real processes: two nodes on one NATS are one Wharf, a
//! killed node loses nothing acknowledged, and a NATS server stopped and started mid-run
//! makes requests answer `503 engine_unavailable` until it is back, with nothing
//! acknowledged lost.
//!
//! The multi-node test uses the NATS on `WHARF_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`) under a prefix of its own; the restart test runs its own
//! `nats-server` (from PATH) on a free port. Without them the tests print that they were
//! skipped, except under `CI=true`, where they fail.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::engine::{self, call, cleanup, ok, prefix, read_all};
use common::{ChildGuard, GENEROUS, Server, client};
use serde_json::{Value, json};

fn nats_url() -> String {
    std::env::var("WHARF_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// `nats://HOST:PORT` → whether it accepts a connection.
fn reachable(url: &str) -> bool {
    engine::reachable(url.trim_start_matches("nats://"))
}

fn skip(why: &str) -> bool {
    engine::skip("NATS", why)
}

/// A node on the NATS at `url` under `prefix`.
fn node(dir: &Path, name: &str, url: &str, prefix: &str) -> Server {
    engine::node(
        dir,
        name,
        &format!("kind = \"nats\"\nnats_url = \"{url}\"\nnats_prefix = \"{prefix}\""),
    )
}

/// Two nodes on one NATS: what node A publishes node B reads; members of one shared
/// subscription on both nodes never hold the same message at once and settle each other's
/// deliveries; killing node A mid-publish loses nothing it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_are_one_wharf() {
    let url = nats_url();
    if !reachable(&url) && skip(&format!("no NATS at {url}")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pre = prefix("pm");
    let mut a = node(dir.path(), "a", &url, &pre);
    let b = node(dir.path(), "b", &url, &pre);
    let c = client();

    ok(
        &c,
        "PUT",
        format!("{}/v1/topics/t", a.base),
        Some(json!({"partitions": 2})),
    )
    .await;
    ok(
        &c,
        "PUT",
        format!("{}/v1/topics/t/subscriptions/q", b.base),
        Some(json!({"kind": "shared"})),
    )
    .await;
    let described = ok(&c, "GET", format!("{}/v1/topics/t", b.base), None).await;
    assert_eq!(
        described["partitions"].as_array().map(Vec::len),
        Some(2),
        "B sees A's topic"
    );

    // Published through A, consumed through B.
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"value": format!("m{i}")}))
        .collect();
    ok(
        &c,
        "POST",
        format!("{}/v1/topics/t/messages", a.base),
        Some(json!({"messages": batch})),
    )
    .await;
    let mut seen: Vec<String> = Vec::new();
    for p in 0..2 {
        seen.extend(read_all(&c, &b.base, "t", p).await);
    }
    seen.sort();
    let mut want: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(seen, want, "B reads everything A published");

    // Members on both nodes: a message is leased to one of them at a time; each node acks
    // what the other received.
    engine::drain_on_both_nodes(&c, &a.base, &b.base, "t", "q", 100).await;

    // Kill A while it publishes: every message A acknowledged is there, read through B.
    let acknowledged = engine::kill_while_publishing(&c, &mut a, &b.base, "t").await;
    let stored = engine::stored(&c, &b.base, "t", 2).await;
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(lost.is_empty(), "acknowledged by A but missing: {lost:?}");
    cleanup(&c, &b.base, "t").await;
    drop(b);
    // The prefix's buckets too: the shared NATS keeps nothing of this test.
    let engine = wharf_engine_nats::NatsEngine::connect(wharf_engine_nats::NatsConfig {
        prefix: pre,
        ..wharf_engine_nats::NatsConfig::new(url)
    })
    .await
    .expect("connect for cleanup");
    engine.destroy_everything().await.expect("cleanup");
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_nats(port: u16, store: &Path) -> ChildGuard {
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nats-server");
    let url = format!("127.0.0.1:{port}");
    let until = Instant::now() + GENEROUS;
    while !reachable(&url) {
        assert!(
            Instant::now() < until,
            "nats-server did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ChildGuard(Some(child))
}

/// NATS stopped mid-run: publishes answer `503 engine_unavailable` and `/readyz` says not
/// ready; once NATS is back the node reconnects by itself, and everything acknowledged
/// before is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_run() {
    let have = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have && skip("nats-server is not on PATH") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("nats");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut nats = start_nats(port, &store);
    let n = node(dir.path(), "n", &url, "wr");
    let c = client();
    ok(
        &c,
        "PUT",
        format!("{}/v1/topics/t", n.base),
        Some(json!({"partitions": 1})),
    )
    .await;
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        ok(
            &c,
            "POST",
            format!("{}/v1/topics/t/messages", n.base),
            Some(json!({"messages": [{"value": format!("before{i}")}]})),
        )
        .await;
        acknowledged.push(format!("before{i}"));
    }

    // Stop NATS.
    if let Some(mut child) = nats.0.take() {
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        common::wait_bounded(&mut child, GENEROUS).expect("nats-server stops");
    }
    let until = Instant::now() + GENEROUS;
    loop {
        let (status, v) = call(
            &c,
            "POST",
            format!("{}/v1/topics/t/messages", n.base),
            Some(json!({"messages": [{"value": "during"}]})),
        )
        .await;
        if status == 503 {
            assert_eq!(v["code"], "engine_unavailable", "{v}");
            break;
        }
        assert!(
            Instant::now() < until,
            "publishes kept working without NATS: {status} {v}"
        );
    }
    let (ready, _) = call(&c, "GET", format!("{}/readyz", n.base), None).await;
    assert_eq!(ready, 503, "not ready without its engine");

    // Start it again on the same port and store: the node reconnects by itself.
    nats = start_nats(port, &store);
    let until = Instant::now() + GENEROUS;
    loop {
        let (status, _) = call(
            &c,
            "POST",
            format!("{}/v1/topics/t/messages", n.base),
            Some(json!({"messages": [{"value": "after"}]})),
        )
        .await;
        if status == 200 {
            acknowledged.push("after".into());
            break;
        }
        assert!(
            Instant::now() < until,
            "no publish succeeded after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ready, _) = call(&c, "GET", format!("{}/readyz", n.base), None).await;
    assert_eq!(ready, 200);
    let stored: BTreeSet<String> = read_all(&c, &n.base, "t", 0).await.into_iter().collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but missing after the NATS restart: {lost:?}"
    );
    drop(n);
    drop(nats);
}
