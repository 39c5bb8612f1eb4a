//! Helpers of the external-engine process tests (`engine_nats.rs`, `engine_rabbitmq.rs`):
//! skipping without the engine (failing under `CI=true`), nodes configured for an engine,
//! REST calls that treat a killed node as a failed request, and killing a node mid-publish.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{GENEROUS, Server};

pub type Client = wharf_test::reqwest::Client;

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `host:port` accepts a connection.
pub fn reachable(addr: &str) -> bool {
    std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// Says that the test is skipped (true), or fails it under `CI=true`.
pub fn skip(engine: &str, why: &str) -> bool {
    assert!(
        !ci(),
        "{why}, and CI=true: the {engine} engine must be tested"
    );
    eprintln!("SKIPPED: {why}");
    true
}

/// A `wharf serve` node with this `[engine]` section (TOML lines) on a port of its own.
pub fn node(dir: &Path, name: &str, engine: &str) -> Server {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("[engine]\n{engine}\n\n[server]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .expect("write config");
    let cfg = path.display().to_string();
    Server::start_with(&dir.join(name), &["--config", &cfg])
}

pub async fn call(c: &Client, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
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

pub async fn ok(c: &Client, method: &str, url: String, body: Option<Value>) -> Value {
    let (status, v) = call(c, method, url.clone(), body).await;
    assert!((200..300).contains(&status), "{method} {url}: {status} {v}");
    v
}

/// A prefix of its own for a test's objects in the engine (`tag` names the test).
pub fn prefix(tag: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("w{tag}{}x{nonce}", std::process::id())
}

/// Everything in partition `p` of `topic`, read through `base`.
pub async fn read_all(c: &Client, base: &str, topic: &str, p: u32) -> Vec<String> {
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

/// Everything in partitions `0..partitions` of `topic`, read through `base`.
pub async fn stored(c: &Client, base: &str, topic: &str, partitions: u32) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in 0..partitions {
        out.extend(read_all(c, base, topic, p).await);
    }
    out
}

pub async fn cleanup(c: &Client, base: &str, topic: &str) {
    let _ = call(c, "DELETE", format!("{base}/v1/topics/{topic}"), None).await;
}

/// Publishes `k0, k1, …` (one per request, keyed) through `a` to `topic` while watching the
/// topic grow through `b`, SIGKILLs `a` once 150 are there, and returns what `a`
/// acknowledged before it died.
pub async fn kill_while_publishing(
    c: &Client,
    a: &mut Server,
    b_base: &str,
    topic: &str,
) -> Vec<String> {
    let publisher = {
        let (c, base, topic) = (c.clone(), a.base.clone(), topic.to_owned());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..100_000 {
                let (status, _) = call(
                    &c,
                    "POST",
                    format!("{base}/v1/topics/{topic}/messages"),
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
    // Let some publishes land, then kill A.
    let until = Instant::now() + GENEROUS;
    loop {
        let v = ok(c, "GET", format!("{b_base}/v1/topics/{topic}"), None).await;
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
    Command::new("kill")
        .arg("-KILL")
        .arg(a.pid().to_string())
        .status()
        .expect("kill");
    a.wait_exit(GENEROUS).expect("A exits after SIGKILL");
    let acknowledged = publisher.await.expect("publisher");
    assert!(
        !acknowledged.is_empty(),
        "A acknowledged publishes before it died"
    );
    acknowledged
}

/// Drains `n` messages of shared subscription `sub` with members on two nodes (`a`, `b`):
/// a message is leased to one of them at a time (panics otherwise), each delivery is acked
/// through the other node, nothing comes after its ack, and nothing is left in flight.
pub async fn drain_on_both_nodes(c: &Client, a: &str, b: &str, topic: &str, sub: &str, n: usize) {
    let mut held: BTreeMap<String, &str> = BTreeMap::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + GENEROUS;
    while acked.len() < n {
        assert!(Instant::now() < deadline, "drained {} of {n}", acked.len());
        let mut round: Vec<(String, String, &str)> = Vec::new();
        for (name, base) in [("a", a), ("b", b)] {
            let v = ok(
                c,
                "POST",
                format!("{base}/v1/topics/{topic}/subscriptions/{sub}/receive"),
                Some(json!({"max": 7, "wait_ms": 200})),
            )
            .await;
            for d in v["deliveries"].as_array().cloned().unwrap_or_default() {
                let value = d["message"]["value"].as_str().expect("value").to_owned();
                if let Some(other) = held.insert(value.clone(), name) {
                    panic!("{value} leased to {other} and to {name} at once");
                }
                round.push((
                    value,
                    d["ack_id"].as_str().expect("ack_id").to_owned(),
                    name,
                ));
            }
        }
        for (value, ack_id, by) in round {
            // Settled through the other node.
            let other = if by == "a" { b } else { a };
            let v = ok(
                c,
                "POST",
                format!("{other}/v1/topics/{topic}/subscriptions/{sub}/ack"),
                Some(json!({"ack_ids": [ack_id]})),
            )
            .await;
            assert!(
                v["results"][0]["error"].is_null(),
                "ack of {value} through the other node: {v}"
            );
            held.remove(&value);
            assert!(
                acked.insert(value.clone()),
                "{value} delivered after its ack"
            );
        }
    }
    let info = ok(
        c,
        "GET",
        format!("{a}/v1/topics/{topic}/subscriptions/{sub}"),
        None,
    )
    .await;
    assert_eq!(info["in_flight"], 0, "{info}");
}
