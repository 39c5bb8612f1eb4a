//! The client verbs of the `wharf` binary (`topic`, `publish`, `consume`, `queue`, `sub`,
//! `dlq`, `status`) against a real `wharf serve`, through the binary: `--json` output parsed
//! back, human output spot-checked, errors as `error: <message> (<code>)` with exit status 1.
//!
//! Nothing here sleeps to synchronise: every wait is a server-side long-poll or a consumer
//! that stops at `--count`, each bounded by a generous `--timeout`.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use common::{ChildGuard, GENEROUS, Server, run_to_end, wait_bounded, wharf};
use serde_json::Value;

/// A consumer that has not finished by then has failed (well within [`GENEROUS`]).
const CONSUME_TIMEOUT: &str = "45s";

struct Cli {
    server: String,
    token: Option<String>,
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn new(server: &Server) -> Self {
        Cli {
            server: server.base.clone(),
            token: None,
        }
    }

    /// `wharf ARGS` with WHARF_SERVER (and WHARF_TOKEN) set.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = wharf();
        cmd.args(args).env("WHARF_SERVER", &self.server);
        if let Some(t) = &self.token {
            cmd.env("WHARF_TOKEN", t);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let (status, stdout, stderr) = run_to_end(self.command(args));
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Runs with `input` on stdin.
    fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut cmd = self.command(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wharf");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let stdout = drain(child.stdout.take().expect("stdout"));
        let stderr = drain(child.stderr.take().expect("stderr"));
        let mut guard = ChildGuard(Some(child));
        let status = wait_bounded(guard.0.as_mut().expect("child"), GENEROUS)
            .unwrap_or_else(|| panic!("wharf {args:?} still running after {GENEROUS:?}"));
        guard.0 = None;
        writer.join().expect("stdin writer");
        Output {
            status,
            stdout: stdout.join().expect("stdout"),
            stderr: stderr.join().expect("stderr"),
        }
    }

    /// Runs, asserts success, answers stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "wharf {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// Runs with `--json`, asserts success, parses the one document on stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        parse(&self.ok(&all))
    }

    /// Runs with `--json`, asserts success, parses one JSON object per stdout line.
    fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        self.ok(&all).lines().map(parse).collect()
    }

    /// Runs, asserts exit status 1 with `error: ... (CODE)` on stderr; answers stderr.
    fn fails_with(&self, args: &[&str], code: &str) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "wharf {args:?} should fail with {code}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains(&format!("({code})")),
            "wharf {args:?}: stderr names no {code}:\n{}",
            out.stderr
        );
        out.stderr
    }
}

fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn start(dir: &Path) -> Server {
    Server::start(&dir.join("data"))
}

/// The values of consumed records (JSON lines), in order.
fn values(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["value"].as_str().expect("a text value"))
        .collect()
}

#[test]
fn topics_publish_and_consume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let cli = Cli::new(&server);

    // topic create (idempotent), list, describe.
    let created = cli.json(&[
        "topic",
        "create",
        "orders",
        "--partitions",
        "2",
        "--retention-ms",
        "3600000",
        "--durability",
        "interval",
        "--sync-interval-ms",
        "50",
    ]);
    assert_eq!(created["name"], "orders");
    assert_eq!(created["partitions"], 2);
    assert_eq!(created["settings"]["retention_ms"], 3_600_000);
    assert_eq!(created["settings"]["durability"], "interval");
    assert_eq!(created["settings"]["sync_interval_ms"], 50);
    let human = cli.ok(&[
        "topic",
        "create",
        "orders",
        "--partitions",
        "2",
        "--retention-ms",
        "3600000",
        "--durability",
        "interval",
        "--sync-interval-ms",
        "50",
    ]);
    assert!(human.contains("partitions    2"), "{human}");
    cli.ok(&["topic", "create", "audit"]);
    let list = cli.json(&["topic", "list"]);
    let topics = list["topics"].as_array().expect("topics");
    let orders = topics
        .iter()
        .find(|t| t["name"] == "orders")
        .unwrap_or_else(|| panic!("no orders in {list}"));
    assert_eq!(orders["partitions"], 2);
    assert_eq!(orders["messages"], 0);
    assert!(topics.iter().any(|t| t["name"] == "audit"), "{list}");
    let table = cli.ok(&["topic", "list"]);
    assert!(table.starts_with("TOPIC "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("orders") && l.contains(" 2 ")),
        "{table}"
    );
    let described = cli.ok(&["topic", "describe", "orders"]);
    assert!(
        described.contains("durability    interval 50ms"),
        "{described}"
    );
    assert!(described.contains("PARTITION"), "{described}");

    // publish: arguments, stdin (`-` and --stdin), a file.
    let published = cli.json(&["publish", "orders", "a", "b", "c", "--partition", "0"]);
    assert_eq!(published["topic"], "orders");
    assert_eq!(published["count"], 3);
    assert_eq!(published["duplicates"], 0);
    let parts = published["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 1, "{published}");
    assert_eq!(parts[0]["partition"], 0);
    assert_eq!(parts[0]["first_offset"], 0);
    assert_eq!(parts[0]["last_offset"], 2);

    let out = cli.run_with_stdin(
        &["publish", "orders", "-", "--partition", "0", "--json"],
        b"d\ne\n",
    );
    assert!(out.status.success(), "{}", out.stderr);
    let from_stdin = parse(&out.stdout);
    assert_eq!(from_stdin["count"], 2);
    assert_eq!(from_stdin["partitions"][0]["first_offset"], 3);
    assert_eq!(from_stdin["partitions"][0]["last_offset"], 4);

    let file = dir.path().join("lines.txt");
    std::fs::write(&file, "f\r\ng\nh").expect("write lines");
    let file_arg = file.to_str().expect("utf-8 path");
    let from_file = cli.json(&[
        "publish",
        "orders",
        "--file",
        file_arg,
        "--partition",
        "0",
        "--key",
        "kf",
        "--header",
        "source=file",
    ]);
    assert_eq!(from_file["count"], 3);
    assert_eq!(from_file["partitions"][0]["last_offset"], 7);

    // A repeated wharf-message-id is reported as a duplicate.
    let once = cli.json(&[
        "publish",
        "orders",
        "x",
        "--partition",
        "1",
        "-H",
        "wharf-message-id=order-x",
    ]);
    assert_eq!(once["duplicates"], 0);
    let twice = cli.ok(&[
        "publish",
        "orders",
        "x",
        "--partition",
        "1",
        "-H",
        "wharf-message-id=order-x",
    ]);
    assert!(twice.contains("(1 duplicate"), "{twice}");
    let out = cli.run_with_stdin(
        &["publish", "orders", "--stdin", "--key-separator", ":"],
        b"",
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("published 0 messages"),
        "{}",
        out.stdout
    );

    // consume: one partition from the start, in order, as JSON lines.
    let records = cli.json_lines(&[
        "consume",
        "orders",
        "--partition",
        "0",
        "--from",
        "earliest",
        "--count",
        "8",
        "--timeout",
        CONSUME_TIMEOUT,
    ]);
    assert_eq!(values(&records), ["a", "b", "c", "d", "e", "f", "g", "h"]);
    let offsets: Vec<u64> = records
        .iter()
        .map(|r| r["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, (0..8).collect::<Vec<u64>>());
    assert_eq!(records[7]["key"], "kf");
    assert_eq!(records[7]["headers"]["source"], "file");
    assert_eq!(records[0]["key"], Value::Null);
    // The human form, from an offset.
    let lines = cli.ok(&[
        "consume",
        "orders",
        "--partition",
        "0",
        "--from",
        "6",
        "--count",
        "2",
        "--timeout",
        CONSUME_TIMEOUT,
    ]);
    assert_eq!(lines, "0:6 kf g\n0:7 kf h\n");
    // Every partition: all nine, in order within each partition.
    let all = cli.json_lines(&[
        "consume",
        "orders",
        "--from",
        "earliest",
        "--count",
        "9",
        "--timeout",
        CONSUME_TIMEOUT,
    ]);
    assert_eq!(all.len(), 9);
    for p in [0, 1] {
        let offsets: Vec<u64> = all
            .iter()
            .filter(|r| r["partition"] == p)
            .map(|r| r["offset"].as_u64().expect("offset"))
            .collect();
        assert!(offsets.is_sorted(), "partition {p}: {offsets:?}");
    }
    // Nothing new: --timeout ends it, successfully and silently.
    let nothing = cli.ok(&["consume", "orders", "--from", "latest", "--timeout", "1s"]);
    assert_eq!(nothing, "");

    let described = cli.json(&["topic", "describe", "orders"]);
    assert_eq!(described["messages"], 9);
    assert_eq!(described["offsets"][0]["high_watermark"], 8);

    // delete, then it is gone.
    let deleted = cli.json(&["topic", "delete", "orders"]);
    assert_eq!(deleted["deleted"], true);
    cli.fails_with(&["topic", "describe", "orders"], "topic_not_found");
    cli.fails_with(&["topic", "delete", "orders"], "topic_not_found");
    let again = cli.json(&["topic", "delete", "orders", "--if-exists"]);
    assert_eq!(again["deleted"], false);
}

#[test]
fn consumer_groups_commit_what_they_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let cli = Cli::new(&server);
    cli.ok(&["topic", "create", "events"]);
    cli.ok(&["publish", "events", "1", "2", "3", "4", "5"]);

    let group = |n: &str| {
        cli.json_lines(&[
            "consume",
            "events",
            "--group",
            "g",
            "--count",
            n,
            "--timeout",
            CONSUME_TIMEOUT,
        ])
    };
    // The group is created on first use (stream, from the start) and commits what it printed.
    assert_eq!(values(&group("3")), ["1", "2", "3"]);
    let sub = cli.json(&["sub", "describe", "events", "g"]);
    assert_eq!(sub["kind"], "stream");
    assert_eq!(sub["partitions"][0]["committed"], 3);
    assert_eq!(sub["lag"], 2);
    // A second run of the same group goes on after the commit; a third sees only what is new.
    assert_eq!(values(&group("2")), ["4", "5"]);
    cli.ok(&["publish", "events", "6"]);
    assert_eq!(values(&group("1")), ["6"]);

    // reset: replay from the start, or skip to an offset.
    let reset = cli.json(&["sub", "reset", "events", "g", "--to", "earliest"]);
    assert_eq!(reset["offsets"][0]["partition"], 0);
    assert_eq!(reset["offsets"][0]["offset"], 0);
    assert_eq!(values(&group("1")), ["1"]);
    let reset = cli.json(&["sub", "reset", "events", "g", "--to", "0:4"]);
    assert_eq!(reset["offsets"][0]["offset"], 4);
    assert_eq!(values(&group("1")), ["5"]);
    let reset = cli.json(&["sub", "reset", "events", "g", "--to", "latest"]);
    assert_eq!(reset["offsets"][0]["offset"], 6);
    // An hour ago: before every message.
    let reset = cli.json(&["sub", "reset", "events", "g", "--to", "-1h"]);
    assert_eq!(reset["offsets"][0]["offset"], 0);
    let human = cli.ok(&["sub", "reset", "events", "g", "--to", "latest"]);
    assert!(human.starts_with("reset events/g\nPARTITION"), "{human}");

    // create, list, describe.
    let shared = cli.json(&[
        "sub",
        "create",
        "events",
        "work",
        "--kind",
        "shared",
        "--max-deliveries",
        "3",
        "--lease-ms",
        "60000",
        "--ordered-by-key",
    ]);
    assert_eq!(shared["kind"], "shared");
    assert_eq!(shared["settings"]["max_deliveries"], 3);
    assert_eq!(shared["settings"]["lease_ms"], 60_000);
    assert_eq!(shared["settings"]["ordered_by_key"], true);
    let stream = cli.json(&[
        "sub",
        "create",
        "events",
        "audit",
        "--kind",
        "stream",
        "--start",
        "latest",
        "--session-timeout-ms",
        "20000",
    ]);
    assert_eq!(stream["settings"]["start"], "latest");
    assert_eq!(stream["settings"]["session_timeout_ms"], 20_000);
    let list = cli.json(&["sub", "list", "events"]);
    let names: Vec<&str> = list["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["audit", "g", "work"]);
    let table = cli.ok(&["sub", "list", "events"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("work") && l.contains("shared")),
        "{table}"
    );
    let described = cli.ok(&["sub", "describe", "events", "work"]);
    assert!(described.contains("max deliveries"), "{described}");

    // Settings of the other kind, and consuming a shared subscription as a group, are refused.
    cli.fails_with(
        &[
            "sub",
            "create",
            "events",
            "x",
            "--kind",
            "stream",
            "--lease-ms",
            "5",
        ],
        "invalid_argument",
    );
    cli.fails_with(
        &["consume", "events", "--group", "work", "--timeout", "5s"],
        "wrong_kind",
    );
    cli.fails_with(
        &["sub", "describe", "events", "nope"],
        "subscription_not_found",
    );
    let deleted = cli.json(&["sub", "delete", "events", "audit"]);
    assert_eq!(deleted["deleted"], true);
}

#[test]
fn queues_and_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let cli = Cli::new(&server);

    // send creates the queue; receive, ack.
    let sent = cli.json(&["queue", "send", "jobs", "hello"]);
    assert_eq!(sent["count"], 1);
    let received = cli.json(&["queue", "receive", "jobs", "--wait-ms", "10000"]);
    let deliveries = received["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1, "{received}");
    assert_eq!(deliveries[0]["message"]["value"], "hello");
    assert_eq!(deliveries[0]["delivery_count"], 1);
    let ack_id = deliveries[0]["ack_id"].as_str().expect("ack_id");
    let acked = cli.json(&["queue", "ack", "jobs", ack_id]);
    assert_eq!(acked["outcomes"][0]["ok"], true);
    let none = cli.json(&["queue", "receive", "jobs", "--wait-ms", "0"]);
    assert_eq!(none["deliveries"].as_array().map(Vec::len), Some(0));
    // Acking it again: the lease is gone.
    let err = cli.fails_with(&["queue", "ack", "jobs", ack_id], "lease_expired");
    assert!(err.contains("1 of 1"), "{err}");
    cli.fails_with(&["queue", "ack", "jobs", "bogus"], "bad_ack_id");

    // A queue that dead-letters at the first nack.
    let created = cli.json(&[
        "queue",
        "create",
        "mails",
        "--max-deliveries",
        "1",
        "--backoff-initial-ms",
        "0",
        "--backoff-max-ms",
        "0",
    ]);
    assert_eq!(created["subscription"]["settings"]["max_deliveries"], 1);
    assert_eq!(created["topic"]["name"], "mails");
    let out = cli.run_with_stdin(&["queue", "send", "mails", "--stdin"], b"welcome\n");
    assert!(out.status.success(), "{}", out.stderr);
    // The human form prints the ack id first.
    let table = cli.ok(&["queue", "receive", "mails", "--wait-ms", "10000"]);
    let row = table.lines().nth(1).unwrap_or_else(|| panic!("{table}"));
    assert!(row.ends_with(" welcome"), "{table}");
    let ack_id = row.split_whitespace().next().expect("ack id");
    let nacked = cli.ok(&["queue", "nack", "mails", ack_id]);
    assert!(nacked.contains("nacked"), "{nacked}");

    let dead = cli.json(&["dlq", "list", "mails"]);
    let letters = dead["dead_letters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), 1, "{dead}");
    assert_eq!(letters[0]["value"], "welcome");
    assert!(
        letters[0]["headers"]["wharf-dlq-reason"].is_string(),
        "{dead}"
    );
    let status = cli.json(&["status"]);
    let mails = status["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .find(|t| t["name"] == "mails")
        .unwrap_or_else(|| panic!("no mails in {status}"));
    assert_eq!(mails["subscriptions"][0]["dead_lettered"], 1);
    assert_eq!(mails["subscriptions"][0]["kind"], "shared");

    // Redrive: back in the queue; receive (and ack at once).
    let redriven = cli.json(&["dlq", "redrive", "mails", "mails"]);
    assert_eq!(redriven["redriven"], 1);
    let again = cli.json(&["queue", "receive", "mails", "--wait-ms", "10000", "--ack"]);
    assert_eq!(again["deliveries"][0]["message"]["value"], "welcome");
    let none = cli.json(&["queue", "receive", "mails", "--wait-ms", "0"]);
    assert_eq!(none["deliveries"].as_array().map(Vec::len), Some(0));

    // terminate: straight to the dead letters, with its reason.
    cli.ok(&["queue", "send", "mails", "poison"]);
    let received = cli.json(&["queue", "receive", "mails", "--wait-ms", "10000"]);
    let ack_id = received["deliveries"][0]["ack_id"]
        .as_str()
        .expect("ack_id");
    cli.ok(&[
        "queue",
        "terminate",
        "mails",
        ack_id,
        "--reason",
        "unparseable",
    ]);
    let dead = cli.ok(&["dlq", "list", "mails"]);
    assert!(
        dead.lines()
            .any(|l| l.contains("unparseable") && l.ends_with("poison")),
        "{dead}"
    );
}

#[test]
fn status_tokens_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wharf.toml");
    std::fs::write(
        &config,
        "[[auth.tokens]]\nname = \"ops\"\ntoken = \"ops-token-0123456789\"\n\
         scopes = [\"admin\", \"publish\", \"consume\"]\n",
    )
    .expect("write config");
    let config_arg = config.to_str().expect("utf-8 path");
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--config", config_arg],
    );
    let mut cli = Cli::new(&server);

    // No token: refused with the server's code.
    cli.fails_with(&["status"], "unauthenticated");
    // --token, then WHARF_TOKEN.
    let status = cli.json(&["status", "--token", "ops-token-0123456789"]);
    assert_eq!(status["reachable"], true);
    assert_eq!(status["writable"], true);
    assert!(
        status["engine"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );
    assert_eq!(status["topics"], Value::Array(Vec::new()));
    cli.token = Some("ops-token-0123456789".into());
    cli.ok(&["topic", "create", "t"]);
    let human = cli.ok(&["status"]);
    assert!(human.contains("writable  yes"), "{human}");
    assert!(human.lines().any(|l| l.starts_with("t ")), "{human}");

    // Errors: a missing topic, nothing to publish, a bad flag value, a server not there.
    let err = cli.fails_with(&["topic", "describe", "missing"], "topic_not_found");
    assert!(err.contains("missing"), "{err}");
    cli.fails_with(&["consume", "missing", "--count", "1"], "topic_not_found");
    cli.fails_with(&["publish", "missing", "x"], "topic_not_found");
    cli.fails_with(&["publish", "t"], "invalid_argument");
    cli.fails_with(
        &["consume", "t", "--partition", "3", "--timeout", "5s"],
        "partition_not_found",
    );
    let usage = cli.run(&["consume", "t", "--from", "someday"]);
    assert_eq!(usage.status.code(), Some(2), "{}", usage.stderr);
    let usage = cli.run(&["topic", "create"]);
    assert_eq!(usage.status.code(), Some(2), "{}", usage.stderr);
    // --server wins over WHARF_SERVER; port 1 on loopback refuses connections. With --json
    // a document says so too.
    let down = [
        "status",
        "--server",
        "http://127.0.0.1:1",
        "--connect-timeout",
        "5s",
    ];
    cli.fails_with(&down, "transport");
    let out = cli.run(&[&down[..], &["--json"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let doc = parse(&out.stdout);
    assert_eq!(doc["reachable"], false);
    assert_eq!(doc["error"]["code"], "transport");
}

// ---- apps and call ----------------------------------------------------------------------------

/// A runtime for the fake apps: their tasks run on its worker while the test thread runs the
/// binary.
fn app_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The app named `name` in a `wharf apps list --json` document.
fn find_app<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no app {name} in {list}"))
}

#[test]
fn apps_register_list_describe_put_deregister() {
    use wharf_test::fake_http::HttpApp;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let cli = Cli::new(&server);
    let rt = app_runtime();
    let app = rt.block_on(HttpApp::start("a"));
    let address = app.address();

    // Nothing yet: `wharf apps` is `wharf apps list`, a header and no rows.
    assert_eq!(cli.json(&["apps"])["apps"], Value::Array(Vec::new()));
    let human = cli.ok(&["apps"]);
    assert_eq!(human.lines().count(), 1, "{human}");
    assert!(human.starts_with("APP "), "{human}");

    // register (with a TTL, and one without), printed back.
    let instance = cli.json(&[
        "apps", "register", "shop", "a", &address, "--ttl-ms", "60000",
    ]);
    assert_eq!(instance["app"], "shop");
    assert_eq!(instance["id"], "a");
    assert_eq!(instance["address"], address.as_str());
    assert_eq!(instance["state"], "healthy");
    let expires = instance["expires_in_ms"].as_u64().expect("a TTL");
    assert!(expires > 0 && expires <= 60_000, "{instance}");
    let human = cli.ok(&["apps", "register", "shop", "b", "http://127.0.0.1:1"]);
    assert!(human.lines().any(|l| l == "expires   static"), "{human}");

    // list --json: the app, its breaker, its instances and their health.
    let list = cli.json(&["apps", "list"]);
    let shop = find_app(&list, "shop");
    assert_eq!(shop["breaker"], "closed");
    let instances = shop["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2, "{shop}");
    let a = instances.iter().find(|i| i["id"] == "a").expect("a");
    assert_eq!(a["state"], "healthy");
    assert_eq!(a["address"], address.as_str());
    assert_eq!(a["failures"], 0);
    let b = instances.iter().find(|i| i["id"] == "b").expect("b");
    assert_eq!(b["expires_in_ms"], Value::Null);
    assert_eq!(shop["policy"]["retry"]["max_attempts"], 3);
    // The table: one row per instance.
    let human = cli.ok(&["apps", "ls"]);
    let row = human
        .lines()
        .find(|l| l.starts_with("shop ") && l.contains(&address))
        .unwrap_or_else(|| panic!("no row for instance a:\n{human}"));
    assert!(
        row.contains(" closed ") && row.contains(" healthy "),
        "{row}"
    );
    assert!(row.ends_with('s'), "{row}");
    let row = human
        .lines()
        .find(|l| l.contains("http://127.0.0.1:1 "))
        .unwrap_or_else(|| panic!("no row for instance b:\n{human}"));
    assert!(row.ends_with(" static"), "{row}");

    // put: the policy replaced (unset settings at the defaults), the instances kept.
    let put = cli.json(&[
        "apps",
        "put",
        "shop",
        "--max-attempts",
        "2",
        "--timeout-ms",
        "4000",
        "--grpc-service",
        "shop.Orders",
        "--idempotent-route",
        "POST /orders/*",
        "--idempotent-route",
        "PUT /carts/*",
        "--breaker-failures",
        "7",
        "--ejection-ms",
        "2500",
        "--rate-limit",
        "100",
        "--max-concurrency",
        "50",
        "--per-try-timeout-ms",
        "1500",
    ]);
    let policy = &put["policy"];
    assert_eq!(policy["timeout_ms"], 4000);
    assert_eq!(policy["per_try_timeout_ms"], 1500);
    assert_eq!(policy["max_concurrency"], 50);
    assert_eq!(policy["rate_limit_per_second"], 100);
    assert_eq!(policy["retry"]["max_attempts"], 2);
    assert_eq!(policy["retry"]["backoff_base_ms"], 25);
    assert_eq!(policy["retry"]["budget_ratio"], 0.2);
    assert_eq!(
        policy["retry"]["idempotent_routes"],
        serde_json::json!(["POST /orders/*", "PUT /carts/*"])
    );
    assert_eq!(policy["breaker"]["consecutive_failures"], 7);
    assert_eq!(policy["breaker"]["ejection_ms"], 2500);
    assert_eq!(policy["breaker"]["max_ejection_ms"], 60_000);
    assert_eq!(put["grpc_services"], serde_json::json!(["shop.Orders"]));
    assert_eq!(put["instances"].as_array().map(Vec::len), Some(2), "{put}");

    // describe: the same document; for people, every setting and the instance table.
    let described = cli.json(&["apps", "describe", "shop"]);
    assert_eq!(described["policy"], put["policy"]);
    assert_eq!(described["name"], "shop");
    let human = cli.ok(&["apps", "describe", "shop"]);
    for (key, value) in [
        ("app", "shop"),
        ("breaker", "closed"),
        ("grpc services", "shop.Orders"),
        ("timeout", "4s"),
        ("per-try timeout", "1500ms"),
        ("max concurrency", "50"),
        ("rate limit", "100/s"),
        ("max attempts", "2"),
        ("retry budget", "20% of calls + 10/s"),
        ("idempotent routes", "POST /orders/*, PUT /carts/*"),
        ("breaker failures", "7"),
        ("ejection", "2500ms"),
        ("max ejection", "1m"),
    ] {
        assert!(
            human
                .lines()
                .any(|l| l.starts_with(&format!("{key} ")) && l.ends_with(&format!(" {value}"))),
            "no {key} {value} in:\n{human}"
        );
    }
    assert!(human.contains("INSTANCE  ADDRESS"), "{human}");
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("a ") && l.contains(" healthy ")),
        "{human}"
    );

    // deregister: gone; again is app_not_found unless --if-exists.
    let out = cli.ok(&["apps", "deregister", "shop", "a"]);
    assert_eq!(out.trim(), "deregistered instance a of app shop");
    let doc = cli.json(&["apps", "deregister", "shop", "b"]);
    assert_eq!(doc["deregistered"], true);
    let shop = cli.json(&["apps", "describe", "shop"]);
    assert_eq!(shop["instances"], Value::Array(Vec::new()));
    assert_eq!(shop["breaker"], "empty");
    let human = cli.ok(&["apps"]);
    let row = human
        .lines()
        .find(|l| l.starts_with("shop "))
        .unwrap_or_else(|| panic!("no row for shop:\n{human}"));
    assert!(row.ends_with(" -"), "{row}");
    assert!(
        cli.ok(&["apps", "describe", "shop"])
            .contains("no instances")
    );
    cli.fails_with(&["apps", "deregister", "shop", "a"], "app_not_found");
    let doc = cli.json(&["apps", "deregister", "shop", "a", "--if-exists"]);
    assert_eq!(doc["deregistered"], false);

    // delete.
    assert_eq!(
        cli.ok(&["apps", "delete", "shop"]).trim(),
        "deleted app shop"
    );
    cli.fails_with(&["apps", "describe", "shop"], "app_not_found");
    cli.fails_with(&["apps", "delete", "shop"], "app_not_found");
    cli.ok(&["apps", "rm", "shop", "--if-exists"]);
    assert_eq!(cli.json(&["apps"])["apps"], Value::Array(Vec::new()));
    // Nothing was called.
    assert_eq!(app.hits(), 0);
}

#[test]
fn call_apps_through_wharf() {
    use wharf_test::fake_http::{HttpApp, Mode};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wharf.toml");
    std::fs::write(
        &config,
        "[[auth.tokens]]\nname = \"ops\"\ntoken = \"ops-token-0123456789\"\n\
         scopes = [\"admin\", \"invoke\"]\n",
    )
    .expect("write config");
    let config_arg = config.to_str().expect("utf-8 path");
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--config", config_arg],
    );
    let mut cli = Cli::new(&server);
    cli.token = Some("ops-token-0123456789".into());
    let rt = app_runtime();
    let app = rt.block_on(HttpApp::start("a"));
    cli.ok(&["apps", "register", "shop", "a", &app.address()]);

    // POST with a body, a header, a query and a deadline: the app gets them; its answer's
    // body comes back as it is, exit status 0.
    let out = cli.run(&[
        "call",
        "shop",
        "/orders/17?expand=lines",
        "-d",
        "hello",
        "-H",
        "x-trace: t1",
        "--deadline-ms",
        "20000",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "hello");
    assert_eq!(out.stderr, "");
    let seen = app.requests().pop().expect("a request");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path_and_query, "/orders/17?expand=lines");
    assert_eq!(seen.header("x-trace"), Some("t1"));
    assert_eq!(&seen.body[..], b"hello");
    let deadline: u64 = seen
        .header("wharf-deadline")
        .and_then(|v| v.parse().ok())
        .expect("a wharf-deadline");
    assert!(deadline <= 20_000, "{deadline}");
    // Wharf's token is for Wharf, not for the app.
    assert_eq!(seen.header("authorization"), None);

    // -i: the status line and headers first, like curl -i; GET by default.
    let out = cli.ok(&["call", "shop", "/x", "-i"]);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("\r\nx-instance: a\r\n"), "{out}");
    assert!(out.contains("\r\nx-seen-path: /x\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "{out:?}");
    assert_eq!(app.requests().pop().expect("a request").method, "GET");

    // A body from a file, another method; --json prints the answer as a document.
    let file = dir.path().join("body.txt");
    std::fs::write(&file, "line 1\nline 2\n").expect("write body");
    let out = cli.ok(&[
        "call",
        "shop",
        "/carts/9",
        "-X",
        "put",
        "--data-file",
        file.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out, "line 1\nline 2\n");
    assert_eq!(app.requests().pop().expect("a request").method, "PUT");
    let doc = cli.json(&["call", "shop", "/j", "-d", "{\"n\":1}"]);
    assert_eq!(doc["status"], 200);
    assert_eq!(doc["body"], "{\"n\":1}");
    assert_eq!(doc["encoding"], "utf8");
    assert_eq!(doc["headers"]["x-instance"], "a");

    // The app answers 503: its body still printed, exit status 1. A POST is not retried.
    app.set_mode(Mode::Status(503));
    let before = app.hits();
    let out = cli.run(&["call", "shop", "/pay", "-d", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stdout, "a says 503");
    assert!(
        out.stderr.starts_with("error: ") && out.stderr.contains("503"),
        "{}",
        out.stderr
    );
    assert_eq!(app.hits(), before + 1);
    // --idempotent: the same POST may be retried, and is, past one 503.
    app.set_mode(Mode::FailFirst { n: 1, status: 503 });
    let before = app.hits();
    let out = cli.ok(&["call", "shop", "/pay", "-d", "y", "--idempotent"]);
    assert_eq!(out, "y");
    assert_eq!(app.hits(), before + 2);
    app.set_mode(Mode::Ok);

    // Wharf's own errors: `error: <message> (<code>)`, exit status 1.
    let err = cli.fails_with(&["call", "nope", "/x"], "app_not_found");
    assert!(err.contains("nope"), "{err}");
    let mut anonymous = Cli::new(&server);
    anonymous.token = None;
    anonymous.fails_with(&["call", "shop", "/x"], "unauthenticated");
    cli.fails_with(
        &["call", "shop", "/x", "--server", "http://127.0.0.1:1"],
        "transport",
    );
    // A path that does not start with '/' is a usage error.
    let usage = cli.run(&["call", "shop", "x"]);
    assert_eq!(usage.status.code(), Some(2), "{}", usage.stderr);

    // Deregistered: calls fail without reaching the app.
    cli.ok(&["apps", "deregister", "shop", "a"]);
    let before = app.hits();
    let out = cli.run(&["call", "shop", "/x"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert_eq!(app.hits(), before);
}
