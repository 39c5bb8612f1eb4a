//! `wharf serve --engine rabbitmq` as real processes: two nodes on one RabbitMQ are one
//! Wharf, a killed node loses nothing acknowledged, and a connection RabbitMQ closes mid-run
//! makes requests answer `503 engine_unavailable` until the node has reconnected by itself,
//! with nothing acknowledged lost.
//!
//! The tests use the RabbitMQ on `WHARF_TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`) under a prefix of their own; the connection test
//! closes the node's connection with `rabbitmqctl`. Without them the tests print that they
//! were skipped, except under `CI=true`, where they fail.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::engine::{self, Client, call, cleanup, ok, prefix, read_all};
use common::{GENEROUS, Server, client};
use serde_json::{Value, json};

fn amqp_url() -> String {
    std::env::var("WHARF_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `amqp://[USER:PASS@]HOST[:PORT][/VHOST]` → whether it accepts a connection.
fn reachable(url: &str) -> bool {
    let hostport = url
        .trim_start_matches("amqp://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default();
    if hostport.contains(':') {
        engine::reachable(hostport)
    } else {
        engine::reachable(&format!("{hostport}:5672"))
    }
}

fn skip(why: &str) -> bool {
    engine::skip("RabbitMQ", why)
}

/// A node on the RabbitMQ at `url` under `prefix`.
fn node(dir: &Path, name: &str, url: &str, prefix: &str) -> Server {
    engine::node(
        dir,
        name,
        &format!("kind = \"rabbitmq\"\namqp_url = \"{url}\"\namqp_prefix = \"{prefix}\""),
    )
}

/// Reads partition `p` through `base` until `n` messages came (a publish through another
/// node shows there once that node's watcher has read it: milliseconds).
async fn read_n(c: &Client, base: &str, topic: &str, p: u32, n: usize) -> Vec<String> {
    let until = Instant::now() + GENEROUS;
    loop {
        let got = read_all(c, base, topic, p).await;
        if got.len() >= n || Instant::now() > until {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn destroy(url: String, prefix: String) {
    let engine =
        wharf_engine_rabbitmq::RabbitEngine::connect(wharf_engine_rabbitmq::RabbitConfig {
            prefix,
            ..wharf_engine_rabbitmq::RabbitConfig::new(url)
        })
        .await
        .expect("connect for cleanup");
    engine.destroy_everything().await.expect("cleanup");
}

/// Two nodes on one RabbitMQ: a topic created through A is known to B, what A publishes B
/// reads, members of one shared subscription on both nodes never hold the same message at
/// once and settle each other's deliveries, and killing A mid-publish loses nothing it
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_are_one_wharf() {
    let url = amqp_url();
    if !reachable(&url) && skip(&format!("no RabbitMQ at {url}")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pre = prefix("rm");
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
    let described = ok(&c, "GET", format!("{}/v1/topics/t", b.base), None).await;
    assert_eq!(
        described["partitions"].as_array().map(Vec::len),
        Some(2),
        "B sees A's topic"
    );
    ok(
        &c,
        "PUT",
        format!("{}/v1/topics/t/subscriptions/q", b.base),
        Some(json!({"kind": "shared"})),
    )
    .await;
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"value": format!("m{i}"), "partition": i % 2}))
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
        seen.extend(read_n(&c, &b.base, "t", p, 50).await);
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
    let acknowledged: BTreeSet<String> = acknowledged.into_iter().collect();
    let until = Instant::now() + GENEROUS;
    let lost = loop {
        let stored = engine::stored(&c, &b.base, "t", 2).await;
        let lost: Vec<String> = acknowledged.difference(&stored).cloned().collect();
        if lost.is_empty() || Instant::now() > until {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(lost.is_empty(), "acknowledged by A but missing: {lost:?}");
    cleanup(&c, &b.base, "t").await;
    drop(b);
    destroy(url, pre).await;
}

/// The connection names of `prefix`'s nodes, with their RabbitMQ pids.
fn connections_of(prefix: &str) -> Vec<String> {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "--quiet"])
        .stderr(Stdio::null())
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("wharf {prefix} ")))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// RabbitMQ closes the node's connection mid-run (as on a broker restart or a network cut):
/// requests answer `503 engine_unavailable` or succeed after a reconnect, `/readyz` recovers
/// by itself, and everything acknowledged before and after is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_closed_mid_run() {
    let url = amqp_url();
    if !reachable(&url) && skip(&format!("no RabbitMQ at {url}")) {
        return;
    }
    let have = Command::new("rabbitmqctl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have && skip("rabbitmqctl is not on PATH (needed to close a connection)") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pre = prefix("rc");
    let n = node(dir.path(), "n", &url, &pre);
    let c = client();
    ok(
        &c,
        "PUT",
        format!("{}/v1/topics/t", n.base),
        Some(json!({})),
    )
    .await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        ok(
            &c,
            "POST",
            format!("{}/v1/topics/t/messages", n.base),
            Some(json!({"messages": [{"value": format!("before{i}")}]})),
        )
        .await;
        acknowledged.push(format!("before{i}"));
    }
    let pids = connections_of(&pre);
    assert_eq!(pids.len(), 1, "the node's one connection: {pids:?}");
    let closed = Command::new("rabbitmqctl")
        .args([
            "close_connection",
            &pids[0],
            "test: connection closed mid-run",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("rabbitmqctl close_connection");
    assert!(closed.success());
    // The node reconnects by itself: a publish succeeds again (some may answer 503 first,
    // never anything else).
    let until = Instant::now() + GENEROUS;
    let mut unavailable = 0;
    loop {
        let (status, v) = call(
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
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["code"], "engine_unavailable", "{v}");
        unavailable += 1;
        assert!(
            Instant::now() < until,
            "no publish succeeded after the reconnect ({unavailable} answered 503)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let until = Instant::now() + GENEROUS;
    loop {
        let (ready, _) = call(&c, "GET", format!("{}/readyz", n.base), None).await;
        if ready == 200 {
            break;
        }
        assert!(Instant::now() < until, "/readyz did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        connections_of(&pre).len(),
        1,
        "one new connection, the old one gone"
    );
    let stored: BTreeSet<String> = read_all(&c, &n.base, "t", 0).await.into_iter().collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(lost.is_empty(), "acknowledged but missing: {lost:?}");
    cleanup(&c, &n.base, "t").await;
    drop(n);
    destroy(url, pre).await;
}
