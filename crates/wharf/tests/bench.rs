//! `wharf bench`: every workload, with a tiny count, against the in-process engine, against
//! a real `wharf serve` process, against NATS JetStream itself (`--target nats://`, when a
//! NATS server is reachable) and against RabbitMQ itself (`--target amqp://`, when a RabbitMQ
//! is reachable), checked through the `--json` summary; and its refusals.

mod common;

use serde_json::Value;

use common::{Server, amqp_queues_left, run_to_end, wharf};

const WORKLOADS: [&str; 5] = ["publish", "consume", "queue", "latency", "fanout"];
/// Subscriptions of the fanout workload: every one gets every message.
const SUBSCRIPTIONS: u64 = 2;
/// Messages per run: small enough for a debug build on a loaded machine.
const COUNT: u64 = 300;

/// Runs `wharf bench WORKLOAD --target TARGET` with a tiny count and returns its JSON summary.
fn bench(workload: &str, target: &str, extra: &[&str]) -> Value {
    let mut cmd = wharf();
    cmd.args(["bench", workload, "--target", target, "--json"])
        .args(["--count", &COUNT.to_string()])
        // Generous: the count ends every run long before.
        .args(["--duration", "40s", "--warmup", "0s"])
        .args(["--in-flight", "4", "--batch", "50", "--rate", "3000"])
        .args(["--subscriptions", &SUBSCRIPTIONS.to_string()])
        .args(extra);
    let (status, out, err) = run_to_end(cmd);
    assert!(
        status.success(),
        "wharf bench {workload} {target}: {status}\n{err}"
    );
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}\nstderr:\n{err}"));
    // The human summary goes to stderr with --json, and names the command that reproduces it.
    assert!(err.contains("command: wharf bench"), "{err}");
    v
}

fn check(v: &Value, workload: &str, target: &str) {
    assert_eq!(v["workload"], workload, "{v}");
    assert_eq!(v["target"], target, "{v}");
    let expected = if workload == "fanout" {
        COUNT * SUBSCRIPTIONS
    } else {
        COUNT
    };
    assert_eq!(v["msgs"], expected, "{v}");
    assert_eq!(v["stopped_by"], "count", "{v}");
    assert!(v["msgs_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{v}");
    assert!(
        // Rounded to milliseconds: a fast in-process run of a few hundred messages can be 0.
        v["secs"].as_f64().is_some_and(|s| (0.0..40.0).contains(&s)),
        "{v}"
    );
    assert!(
        v["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("wharf bench ")),
        "{v}"
    );
    let l = &v["latency_us"];
    if workload == "consume" {
        assert!(l.is_null(), "{v}");
    } else {
        let p: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
            .iter()
            .map(|k| l[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}")))
            .collect();
        assert!(p[0] > 0.0, "{v}");
        assert!(
            p.windows(2).all(|w| w[0] <= w[1]),
            "percentiles out of order: {v}"
        );
        // Nothing on loopback takes 30 s.
        assert!(p[4] < 30e6, "{v}");
        let samples = l["samples"].as_u64().unwrap_or(0);
        match workload {
            "latency" => assert_eq!(samples, COUNT, "{v}"),
            // One sample per batch (publish) or per ack request (queue).
            _ => assert!((COUNT / 50..=COUNT).contains(&samples), "{v}"),
        }
    }
    assert!(v["client_cpu"]["pct_core"].as_f64().is_some(), "{v}");
}

#[test]
fn every_workload_in_process() {
    for w in WORKLOADS {
        let v = bench(w, "inproc", &[]);
        check(&v, w, "inproc");
        assert_eq!(v["in_process"], true, "{v}");
        assert!(v["server_cpu"].is_null(), "{v}");
    }
}

#[test]
fn every_workload_against_a_server() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&data.path().join("data"));
    for w in WORKLOADS {
        let v = bench(w, &server.base, &["--connections", "2"]);
        check(&v, w, &server.base);
        assert_eq!(v["in_process"], false, "{v}");
        // The server's process is found by its listening socket.
        assert_eq!(v["server_pid"], server.pid(), "{v}");
        assert!(v["server_cpu"]["pct_core"].as_f64().is_some(), "{v}");
    }
    // The runs deleted the topics they created.
    let mut cmd = wharf();
    cmd.args(["bench", "publish", "--target", &server.base, "--json"])
        .args([
            "--count",
            "10",
            "--batch",
            "10",
            "--warmup",
            "0s",
            "--durability",
            "none",
        ])
        .args(["--topic", "kept", "--partitions", "2"]);
    let (status, out, err) = run_to_end(cmd);
    assert!(status.success(), "{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["msgs"], 10, "{v}");
    assert_eq!(v["durability"], "none", "{v}");
    assert!(
        v["command"]
            .as_str()
            .is_some_and(|c| c.contains("--topic kept")),
        "{v}"
    );
    server.stop_cleanly();
}

/// The NATS server of [`every_workload_against_nats_jetstream`]: `WHARF_TEST_NATS_URL`, or
/// the local default.
fn nats_url() -> String {
    std::env::var("WHARF_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Whether the host and port of a `SCHEME://[USER:PASS@]HOST[:PORT][/PATH]` URL accept a
/// connection (`default_port` when the URL has none).
fn reachable(url: &str, default_port: u16) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_owned()
    } else {
        format!("{hostport}:{default_port}")
    };
    hostport.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok())
    })
}

#[test]
fn every_workload_against_nats_jetstream() {
    let url = nats_url();
    if !reachable(&url, 4222) {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "no NATS server at {url}: CI must run this test (set WHARF_TEST_NATS_URL)"
        );
        println!("SKIPPED: no NATS server at {url} (set WHARF_TEST_NATS_URL)");
        return;
    }
    for w in WORKLOADS {
        let v = bench(w, &url, &["--connections", "2"]);
        check(&v, w, &url);
        assert_eq!(v["in_process"], false, "{v}");
        assert!(
            v["driver"]
                .as_str()
                .is_some_and(|d| d.starts_with("NATS JetStream")),
            "{v}"
        );
    }
    // Partitions are subjects of one stream; a durability is accepted (and ignored).
    let v = bench(
        "queue",
        &url,
        &["--partitions", "3", "--durability", "always"],
    );
    check(&v, "queue", &url);
}

/// The RabbitMQ of [`every_workload_against_rabbitmq`]: `WHARF_TEST_AMQP_URL`, or the local
/// default.
fn amqp_url() -> String {
    std::env::var("WHARF_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The queues the amqp driver declares for the run summarised in `v`.
fn amqp_queues_of(v: &Value) -> Vec<String> {
    let topic = v["topic"].as_str().expect("topic");
    match v["partitions"].as_u64().expect("partitions") {
        1 => vec![format!("bench.{topic}")],
        n => (0..n).map(|p| format!("bench.{topic}.{p}")).collect(),
    }
}

#[test]
fn every_workload_against_rabbitmq() {
    let url = amqp_url();
    if !reachable(&url, 5672) {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "no RabbitMQ at {url}: CI must run this test (set WHARF_TEST_AMQP_URL)"
        );
        println!("SKIPPED: no RabbitMQ at {url} (set WHARF_TEST_AMQP_URL)");
        return;
    }
    let mut created = Vec::new();
    for w in WORKLOADS {
        let v = bench(w, &url, &["--connections", "2"]);
        check(&v, w, &url);
        assert_eq!(v["in_process"], false, "{v}");
        assert!(
            v["driver"]
                .as_str()
                .is_some_and(|d| d.starts_with("RabbitMQ directly")),
            "{v}"
        );
        created.extend(amqp_queues_of(&v));
    }
    // Partitions are queues of their own, consumed over one channel; a durability is accepted
    // (and ignored).
    for w in ["consume", "queue"] {
        let v = bench(w, &url, &["--partitions", "3", "--durability", "always"]);
        check(&v, w, &url);
        created.extend(amqp_queues_of(&v));
    }
    // The runs deleted the queues they declared.
    assert_eq!(amqp_queues_left(&url, &created), Vec::<String>::new());
}

#[test]
fn refusals_name_the_problem() {
    let cases: [(&[&str], &str); 7] = [
        (
            &["--target", "http://127.0.0.1:1"],
            "cannot connect to http://127.0.0.1:1",
        ),
        (
            &["--target", "nats://127.0.0.1:1"],
            "cannot connect to nats://127.0.0.1:1",
        ),
        (
            &["--target", "amqp://127.0.0.1:1"],
            "cannot connect to amqp://127.0.0.1:1",
        ),
        (
            &["--target", "amqps://127.0.0.1:1"],
            "amqps:// is not supported",
        ),
        (&["--target", "ftp://x"], "give http://HOST:PORT"),
        (&["--count", "0"], "--count must be at least 1"),
        (&["--size", "1 parsec"], "unknown size unit"),
    ];
    for (args, want) in cases {
        let mut cmd = wharf();
        cmd.args(["bench", "publish"]).args(args);
        let (status, _, err) = run_to_end(cmd);
        assert!(!status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let mut cmd = wharf();
    cmd.args([
        "bench", "latency", "--target", "inproc", "--size", "8", "--warmup", "0s",
    ]);
    let (status, _, err) = run_to_end(cmd);
    assert!(!status.success());
    assert!(err.contains("at least 16 bytes"), "{err}");
}
