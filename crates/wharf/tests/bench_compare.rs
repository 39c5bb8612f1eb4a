//! `wharf bench compare --tiny`: the comparison harness runs a few hundred messages of every
//! case against every system it can have (Wharf, a strict NATS it starts, the running NATS,
//! RabbitMQ classic and quorum, a strict Redis it starts, the running Redis), and writes the
//! markdown report, the JSON and the charts. Under `CI=true` every system must be there
//! (`--require-all`); elsewhere the ones that are not are skipped and named.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::{amqp_queues_left, run_to_end_within, wharf};

/// The whole tiny suite on eight systems, debug build, loaded machine.
const LIMIT: Duration = Duration::from_secs(900);

fn is_png(path: &std::path::Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn tiny_comparison_of_every_system() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let out = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let mut cmd = wharf();
    cmd.args(["bench", "compare", "--tiny", "--out"])
        .arg(out.path())
        .arg("--data-dir")
        .arg(data.path());
    // `wharf()` clears WHARF_* variables: pass the strict NATS's program on.
    if let Ok(bin) = std::env::var("WHARF_BENCH_NATS_SERVER") {
        cmd.arg("--nats-server").arg(bin);
    }
    if let Ok(url) = std::env::var("WHARF_TEST_NATS_URL") {
        cmd.arg("--nats").arg(url);
    }
    if let Ok(url) = std::env::var("WHARF_TEST_AMQP_URL") {
        cmd.arg("--amqp").arg(url);
    }
    if ci {
        cmd.arg("--require-all");
    }
    let (status, stdout, stderr) = run_to_end_within(cmd, LIMIT);
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let v: Value = serde_json::from_str(&json).expect("results.json is JSON");
    assert_eq!(v["mode"], "tiny", "{v}");
    for s in v["skipped"].as_array().expect("skipped") {
        assert!(!ci, "CI must run every system: {s}");
        println!("SKIPPED {}: {}", s["id"], s["reason"]);
    }
    let systems: Vec<String> = v["systems"]
        .as_array()
        .expect("systems")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect();
    // Wharf is started by the command itself: always there.
    assert!(systems.iter().any(|s| s == "wharf-always"), "{systems:?}");
    assert!(systems.iter().any(|s| s == "wharf-interval"), "{systems:?}");
    let cases: Vec<String> = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect();
    for w in ["publish", "drain", "queue", "fanout", "latency"] {
        assert!(
            cases.iter().any(|c| c.starts_with(w)),
            "no {w} case: {cases:?}"
        );
    }
    // Every case ran once on every system, without an error, and moved messages.
    let summaries = v["summaries"].as_array().expect("summaries");
    assert_eq!(summaries.len(), systems.len() * cases.len(), "{v}");
    for s in summaries {
        assert_eq!(s["runs"], 1, "{s}");
        assert_eq!(s["errors"].as_array().map(Vec::len), Some(0), "{s}");
        assert!(s["msgs_per_s"].as_f64().is_some_and(|r| r > 0.0), "{s}");
        if s["case"].as_str().is_some_and(|c| c.starts_with("latency")) {
            let l = &s["latency_ns"];
            let p: Vec<u64> = ["p50", "p90", "p99", "p99_9", "max"]
                .iter()
                .map(|k| l[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}")))
                .collect();
            assert!(p[0] > 0 && p.windows(2).all(|w| w[0] <= w[1]), "{s}");
        }
    }
    let md = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    assert!(md.starts_with("# wharf bench compare"), "{md}");
    for s in v["systems"].as_array().expect("systems") {
        let label = s["label"].as_str().expect("label");
        assert!(md.contains(label), "{label} missing from the report:\n{md}");
    }
    for chart in ["publish-100.png", "drain.png", "fanout.png"] {
        assert!(is_png(&out.path().join(chart)), "{chart}");
        assert!(
            md.contains(&format!("]({chart})")),
            "{chart} not linked:\n{md}"
        );
    }
    let latency_chart = format!(
        "{}.png",
        cases
            .iter()
            .find(|c| c.starts_with("latency"))
            .expect("latency case")
    );
    assert!(is_png(&out.path().join(&latency_chart)), "{latency_chart}");
    // The strict peers are what the report says they are.
    for s in v["systems"].as_array().expect("systems") {
        let describe = s["describe"].as_str().unwrap_or_default();
        match s["id"].as_str() {
            Some("redis-strict") => assert!(describe.contains("appendfsync always"), "{s}"),
            Some("wharf-always") => assert_eq!(s["fsync_before_ack"], true, "{s}"),
            Some("wharf-interval") => assert_eq!(s["fsync_before_ack"], false, "{s}"),
            _ => {}
        }
    }
    // Nothing is left on the shared servers: every run's RabbitMQ queues and Redis keys
    // were deleted.
    let subscriptions = |case: &str| {
        v["cases"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["id"] == case))
            .and_then(|c| c["subscriptions"].as_u64())
            .unwrap_or(1)
    };
    let (mut queues, mut keys) = (Vec::new(), Vec::new());
    for r in v["runs"].as_array().expect("runs") {
        let topic = r["topic"].as_str().expect("topic");
        let case = r["case"].as_str().expect("case");
        match r["system"].as_str() {
            Some("rabbitmq-classic" | "rabbitmq-quorum") => {
                queues.push(format!("bench.{topic}"));
                if case.starts_with("fanout") {
                    // The first subscription takes the topic's queue; the others have their own.
                    for i in 1..subscriptions(case) {
                        queues.push(format!("bench.{topic}.bench-{i}"));
                    }
                }
            }
            Some("redis") => keys.push(format!("bench.{topic}")),
            _ => {}
        }
    }
    if !queues.is_empty() {
        let url = std::env::var("WHARF_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        assert_eq!(amqp_queues_left(&url, &queues), Vec::<String>::new());
    }
    if !keys.is_empty() {
        let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(10))
            .expect("connect to Redis");
        let left: usize = redis::cmd("EXISTS")
            .arg(&keys)
            .query(&mut con)
            .expect("EXISTS");
        assert_eq!(left, 0, "Redis keys left behind among {keys:?}");
    }
    // The started servers are gone with the command: their data directories too.
    let left: Vec<_> = std::fs::read_dir(data.path())
        .expect("data dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind in the data dir: {left:?}");
}
