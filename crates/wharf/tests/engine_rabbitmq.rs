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

use common::{GENEROUS, Server, client};
use serde_json::{Value, json};

type Client = wharf_test::reqwest::Client;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn amqp_url() -> String {
    std::env::var("WHARF_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn reachable(url: &str) -> bool {
    let hostport = url
        .trim_start_matches("amqp://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default();
    let addr = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5672")
    };
    std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

fn skip(why: &str) -> bool {
    assert!(
        !ci(),
        "{why}, and CI=true: the RabbitMQ engine must be tested"
    );
    eprintln!("SKIPPED: {why}");
    true
}

/// A config file for a node on `url` under `prefix`.
fn config(dir: &Path, name: &str, url: &str, prefix: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[engine]\nkind = \"rabbitmq\"\namqp_url = \"{url}\"\namqp_prefix = \"{prefix}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("write config");
    path.display().to_string()
}

fn node(dir: &Path, name: &str, url: &str, prefix: &str) -> Server {
    let cfg = config(dir, name, url, prefix);
    Server::start_with(&dir.join(name), &["--config", &cfg])
}

async fn call(c: &Client, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let method = wharf_test::reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = c.request(method, &url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        // The node is gone (killed): like any failed request, not acknowledged.
        Err(_) => (0, Value::Null),
    }
}

async fn ok(c: &Client, method: &str, url: String, body: Option<Value>) -> Value {
    let (status, v) = call(c, method, url.clone(), body).await;
    assert!((200..300).contains(&status), "{method} {url}: {status} {v}");
    v
}

fn prefix(tag: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("wr{tag}{}x{nonce}", std::process::id())
}

/// Everything in partition `p` of `topic`, read through `base`.
async fn read_all(c: &Client, base: &str, topic: &str, p: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let v = ok(
            c,
            "GET",
            format!("{base}/v1/topics/{topic}/messages?partition={p}&offset={offset}&limit=1000"),
            None,
        )
        .await;
        let msgs = v["messages"].as_array().cloned().unwrap_or_default();
        if msgs.is_empty() {
            return out;
        }
        out.extend(
            msgs.iter()
                .map(|m| m["value"].as_str().unwrap_or("").to_owned()),
        );
        offset = v["next_offset"].as_u64().expect("next_offset");
    }
}

async fn cleanup(c: &Client, base: &str, topic: &str) {
    let _ = call(c, "DELETE", format!("{base}/v1/topics/{topic}"), None).await;
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
/// reads, and killing A mid-publish loses nothing it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_are_one_wharf() {
    let url = amqp_url();
    if !reachable(&url) && skip(&format!("no RabbitMQ at {url}")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pre = prefix("m");
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

    // Kill A while it publishes: every message A acknowledged is there, read through B.
    let publisher = {
        let (c, base) = (c.clone(), a.base.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..100_000 {
                let (status, _) = call(
                    &c,
                    "POST",
                    format!("{base}/v1/topics/t/messages"),
                    Some(json!({"messages": [{"value": format!("k{i}"), "key": format!("k{i}")}]})),
                )
                .await;
                if status != 200 {
                    break;
                }
                acknowledged.push(format!("k{i}"));
            }
            acknowledged
        })
    };
    let until = Instant::now() + GENEROUS;
    loop {
        let v = ok(&c, "GET", format!("{}/v1/topics/t", b.base), None).await;
        let total: u64 = v["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|p| p["high_watermark"].as_u64().unwrap_or(0))
            .sum();
        if total >= 150 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = a.pid();
    Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    a.wait_exit(GENEROUS).expect("A exits after SIGKILL");
    let acknowledged = publisher.await.expect("publisher");
    assert!(
        !acknowledged.is_empty(),
        "A acknowledged publishes before it died"
    );
    let acknowledged: BTreeSet<String> = acknowledged.into_iter().collect();
    let until = Instant::now() + GENEROUS;
    let lost = loop {
        let mut stored: BTreeSet<String> = BTreeSet::new();
        for p in 0..2 {
            stored.extend(read_all(&c, &b.base, "t", p).await);
        }
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
    let pre = prefix("c");
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
