//! Graceful shutdown of the `wharf` process: SIGTERM under publish load loses nothing that was
//! acknowledged and exits 0; long-polls and event streams in flight do not hold the shutdown;
//! consumer state (acks of a queue, commits of a stream subscription) survives the restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::block_in_place;

use common::{GENEROUS, Server};

type Client = wharf_test::reqwest::Client;

async fn send_json(client: &Client, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let method = wharf_test::reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text:?}"))
    };
    (status, value)
}

async fn post(client: &Client, url: &str, body: Value) -> Value {
    let (status, value) = send_json(client, "POST", url, Some(body)).await;
    assert_eq!(status, 200, "POST {url}: {value}");
    value
}

async fn put(client: &Client, url: &str, body: Value) -> Value {
    let (status, value) = send_json(client, "PUT", url, Some(body)).await;
    assert_eq!(status, 200, "PUT {url}: {value}");
    value
}

async fn get(client: &Client, url: &str) -> Value {
    let (status, value) = send_json(client, "GET", url, None).await;
    assert_eq!(status, 200, "GET {url}: {value}");
    value
}

/// Every message of every partition of `topic`, as (partition, offset, value), read page by
/// page until each partition's next offset is its high watermark.
async fn read_all(client: &Client, base: &str, topic: &str) -> Vec<(u64, u64, String)> {
    let info = get(client, &format!("{base}/v1/topics/{topic}")).await;
    let partitions = info["partitions"].as_array().expect("partitions").len() as u64;
    let mut all = Vec::new();
    for p in 0..partitions {
        let mut offset = 0u64;
        for page in 0.. {
            assert!(
                page < 100_000,
                "partition {p} never reaches its high watermark"
            );
            let r = get(
                client,
                &format!(
                    "{base}/v1/topics/{topic}/messages?partition={p}&offset={offset}&limit=1000"
                ),
            )
            .await;
            assert_eq!(r["start_offset"], 0, "{r}");
            for m in r["messages"].as_array().expect("messages") {
                let o = m["offset"].as_u64().expect("offset");
                assert_eq!(o, offset, "offsets in order without gaps");
                offset = o + 1;
                all.push((p, o, m["value"].as_str().expect("value").to_owned()));
            }
            let next = r["next_offset"].as_u64().expect("next_offset");
            let hw = r["high_watermark"].as_u64().expect("high_watermark");
            assert_eq!(next, offset, "{r}");
            if next == hw {
                break;
            }
        }
    }
    all
}

/// How a publisher stopped.
#[derive(Debug)]
enum Stop {
    /// An answer other than 200.
    Status(u16, String),
    /// The connection failed or closed.
    Connection(String),
    /// It ran out of time without seeing the shutdown.
    Deadline,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_publish_load_loses_no_acknowledged_message() {
    const PUBLISHERS: usize = 8;
    const ACKS_BEFORE_SIGTERM: usize = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = block_in_place(|| Server::start(&data));
    let base = server.base.clone();
    let client = common::client();
    put(
        &client,
        &format!("{base}/v1/topics/load"),
        json!({"partitions": 2}),
    )
    .await;

    let acks = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let attempted = Arc::new(Mutex::new(HashSet::<String>::new()));
    let deadline = Instant::now() + GENEROUS;
    let mut publishers = Vec::new();
    for id in 0..PUBLISHERS {
        let (client, url) = (client.clone(), format!("{base}/v1/topics/load/messages"));
        let (acks, acked, attempted) = (acks.clone(), acked.clone(), attempted.clone());
        publishers.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                n += 1;
                if Instant::now() >= deadline {
                    return Stop::Deadline;
                }
                let value = format!("p{id}-m{n}");
                attempted.lock().expect("attempted").insert(value.clone());
                let resp = match client
                    .post(&url)
                    .json(&json!({"value": value}))
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(e) => return Stop::Connection(format!("{e:?}")),
                };
                let status = resp.status().as_u16();
                let body = match resp.text().await {
                    Ok(b) => b,
                    // The answer did not arrive whole: not acknowledged.
                    Err(e) => return Stop::Connection(format!("reading the answer: {e:?}")),
                };
                if status != 200 {
                    return Stop::Status(status, body);
                }
                let v: Value = serde_json::from_str(&body).expect("publish answer is JSON");
                assert_eq!(v["results"][0]["duplicate"], false, "{v}");
                acked.lock().expect("acked").push(value);
                acks.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    // Wait for acknowledged publishes (the condition, bounded), then SIGTERM mid-load.
    let wait_start = Instant::now();
    while acks.load(Ordering::SeqCst) < ACKS_BEFORE_SIGTERM {
        assert!(
            wait_start.elapsed() < GENEROUS,
            "only {} acks after {GENEROUS:?}",
            acks.load(Ordering::SeqCst)
        );
        assert!(
            publishers.iter().all(|p| !p.is_finished()),
            "a publisher stopped before the shutdown"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acks_at_signal = acks.load(Ordering::SeqCst);
    let signalled = Instant::now();
    server.sigterm();

    let mut stops = Vec::new();
    for p in publishers {
        let stop = tokio::time::timeout(GENEROUS, p)
            .await
            .expect("publisher still running a minute after SIGTERM")
            .expect("publisher task");
        stops.push(stop);
    }
    let status = block_in_place(|| server.wait_exit(GENEROUS)).unwrap_or_else(|| {
        panic!(
            "still running {GENEROUS:?} after SIGTERM; stderr:\n{}",
            server.stderr_text()
        )
    });
    let exit_took = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status} after SIGTERM; stderr:\n{}",
        server.stderr_text()
    );
    let mut connection_errors = Vec::new();
    for stop in &stops {
        match stop {
            Stop::Connection(e) => connection_errors.push(e.as_str()),
            Stop::Status(503, body) if body.contains("\"code\":\"shutting_down\"") => {}
            other => panic!("publisher stopped by {other:?}"),
        }
    }
    let acked = acked.lock().expect("acked").clone();
    let attempted = attempted.lock().expect("attempted").clone();
    eprintln!(
        "{} acked ({acks_at_signal} before SIGTERM), {} attempted; exit {exit_took:?} after \
         SIGTERM; {} publishers stopped by a connection error, e.g. {:?}",
        acked.len(),
        attempted.len(),
        connection_errors.len(),
        connection_errors.first()
    );

    // Restart over the same data: every acknowledged value is there exactly once.
    let mut server = block_in_place(|| Server::start(&data));
    let client = common::client();
    let stored = read_all(&client, &server.base, "load").await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, _, v) in &stored {
        *count.entry(v.as_str()).or_default() += 1;
    }
    for (v, n) in &count {
        assert_eq!(*n, 1, "{v} stored {n} times");
        assert!(attempted.contains(*v), "{v} stored but never published");
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|v| !count.contains_key(v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(stored.len() >= acked.len());
    block_in_place(|| server.stop_cleanly());
}

/// Whether the server has read everything the client sent on the connection from `client_port`
/// to `server_port`: the client's send queue is empty (the server's kernel has it) and the
/// server socket's receive queue is empty (the server process read it). Linux `/proc/net/tcp`.
fn server_read_all(server_port: u16, client_port: u16) -> bool {
    let mut client_tx = None;
    let mut server_rx = None;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let Some((tx, rx)) = f[4].split_once(':') else {
                continue;
            };
            let (tx, rx) = (
                u64::from_str_radix(tx, 16).unwrap_or(u64::MAX),
                u64::from_str_radix(rx, 16).unwrap_or(u64::MAX),
            );
            if port(f[1]) == Some(client_port) && port(f[2]) == Some(server_port) {
                client_tx = Some(tx);
            }
            if port(f[1]) == Some(server_port) && port(f[2]) == Some(client_port) {
                server_rx = Some(rx);
            }
        }
    }
    client_tx == Some(0) && server_rx == Some(0)
}

/// Polls (bounded) until the server has read the request sent on `stream`.
fn wait_until_read(server_port: u16, stream: &TcpStream) {
    let client_port = stream.local_addr().expect("local addr").port();
    let start = Instant::now();
    while !server_read_all(server_port, client_port) {
        assert!(
            start.elapsed() < GENEROUS,
            "the server never read the request (port {client_port})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads an HTTP/1.1 answer to the end (the request said `Connection: close`): the status
/// (`None` if the server closed without answering) and the whole text.
fn read_answer(mut stream: TcpStream) -> (Option<u16>, String) {
    stream
        .set_read_timeout(Some(GENEROUS))
        .expect("read timeout");
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_event_streams_do_not_hold_the_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = block_in_place(|| Server::start(&dir.path().join("data")));
    let (base, port) = (server.base.clone(), server.port);
    let client = common::client();
    put(&client, &format!("{base}/v1/topics/quiet"), json!({})).await;
    put(&client, &format!("{base}/v1/queues/idle"), json!({})).await;

    // An event stream: in flight once its answer's head arrived.
    let events = client
        .get(format!("{base}/v1/topics/quiet/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), 200);

    let (long_poll, receive) = block_in_place(|| {
        // A read long-poll of 30 s, in flight once the server has read it.
        let mut long_poll = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            long_poll,
            "GET /v1/topics/quiet/messages?from=latest&wait_ms=30000 HTTP/1.1\r\n\
             Host: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("send long-poll");
        wait_until_read(port, &long_poll);

        // A queue receive of 30 s, in flight once the handler asked for its body (the server
        // then sends 100 Continue).
        let mut receive = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let body = r#"{"max":1,"wait_ms":30000}"#;
        write!(
            receive,
            "POST /v1/queues/idle/receive HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .expect("send receive head");
        receive
            .set_read_timeout(Some(GENEROUS))
            .expect("read timeout");
        let mut head = [0u8; 25];
        receive.read_exact(&mut head).expect("100 Continue");
        assert_eq!(&head, b"HTTP/1.1 100 Continue\r\n\r\n");
        receive.write_all(body.as_bytes()).expect("send body");
        wait_until_read(port, &receive);
        (long_poll, receive)
    });

    let signalled = Instant::now();
    server.sigterm();
    let long_poll = std::thread::spawn(move || {
        let (status, text) = read_answer(long_poll);
        (status, text, signalled.elapsed())
    });
    let receive = std::thread::spawn(move || {
        let (status, text) = read_answer(receive);
        (status, text, signalled.elapsed())
    });
    // The event stream ends.
    let mut events = events;
    let ended = tokio::time::timeout(GENEROUS, async {
        // Until the end of the body, or an error (the connection closed).
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    let events_took = signalled.elapsed();
    assert!(
        ended.is_ok(),
        "the event stream still open after {GENEROUS:?}"
    );

    let status = block_in_place(|| server.wait_exit(GENEROUS)).unwrap_or_else(|| {
        panic!(
            "still running {GENEROUS:?} after SIGTERM; stderr:\n{}",
            server.stderr_text()
        )
    });
    let exit_took = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        server.stderr_text()
    );
    assert!(
        exit_took < Duration::from_secs(20),
        "exit took {exit_took:?} with a 30 s long-poll in flight"
    );
    assert!(events_took < Duration::from_secs(20), "{events_took:?}");
    for (what, answer) in [("read long-poll", long_poll), ("receive", receive)] {
        let (status, text, took) = answer.join().expect("reader");
        // The server read the request: it owes an answer, and it is "shutting down".
        assert_eq!(status, Some(503), "{what}: {text:?}");
        assert!(
            text.contains("\"code\":\"shutting_down\""),
            "{what}: {text:?}"
        );
        assert!(
            took < Duration::from_secs(20),
            "{what} answered after {took:?}"
        );
    }
    eprintln!("exit {exit_took:?} after SIGTERM, events ended after {events_took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_state_survives_sigterm_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = block_in_place(|| Server::start(&data));
    let base = server.base.clone();
    let client = common::client();

    // A queue: six jobs, all received, three acknowledged.
    put(&client, &format!("{base}/v1/queues/jobs"), json!({})).await;
    let jobs: Vec<Value> = (0..6)
        .map(|i| json!({"value": format!("job {i}")}))
        .collect();
    post(
        &client,
        &format!("{base}/v1/queues/jobs/messages"),
        json!({"messages": jobs}),
    )
    .await;
    let mut leased: HashMap<String, String> = HashMap::new();
    for _ in 0..20 {
        let r = post(
            &client,
            &format!("{base}/v1/queues/jobs/receive"),
            json!({"max": 6, "wait_ms": 5000}),
        )
        .await;
        for d in r["deliveries"].as_array().expect("deliveries") {
            assert_eq!(d["delivery_count"], 1, "{d}");
            let value = d["message"]["value"].as_str().expect("value").to_owned();
            let ack_id = d["ack_id"].as_str().expect("ack_id").to_owned();
            assert!(leased.insert(value, ack_id).is_none(), "delivered twice");
        }
        if leased.len() == 6 {
            break;
        }
    }
    assert_eq!(leased.len(), 6, "{leased:?}");
    let acked = ["job 0", "job 2", "job 4"];
    let ack_ids: Vec<&String> = acked.iter().map(|v| &leased[*v]).collect();
    let r = post(
        &client,
        &format!("{base}/v1/queues/jobs/ack"),
        json!({"ack_ids": ack_ids}),
    )
    .await;
    for res in r["results"].as_array().expect("results") {
        assert_eq!(res["error"], Value::Null, "{r}");
    }

    // A stream subscription: five events, all fetched, committed up to offset 3.
    put(&client, &format!("{base}/v1/topics/ledger"), json!({})).await;
    let events: Vec<Value> = (0..5)
        .map(|i| json!({"value": format!("entry {i}")}))
        .collect();
    post(
        &client,
        &format!("{base}/v1/topics/ledger/messages"),
        json!({"messages": events}),
    )
    .await;
    let sub = format!("{base}/v1/topics/ledger/subscriptions/audit");
    put(&client, &sub, json!({"kind": "stream"})).await;
    let member = post(&client, &format!("{sub}/members"), json!({})).await;
    let member = member["member_id"].as_str().expect("member_id").to_owned();
    let fetched = post(
        &client,
        &format!("{sub}/fetch"),
        json!({"member_id": member, "wait_ms": 5000}),
    )
    .await;
    assert_eq!(
        fetched["messages"].as_array().map(Vec::len),
        Some(5),
        "{fetched}"
    );
    post(
        &client,
        &format!("{sub}/commit"),
        json!({"member_id": member, "offsets": [{"partition": 0, "offset": 3}]}),
    )
    .await;

    let took = block_in_place(|| server.stop_cleanly());
    eprintln!("stopped in {took:?}");

    let mut server = block_in_place(|| Server::start(&data));
    let base = server.base.clone();
    let client = common::client();

    // The unacknowledged jobs come back (second delivery); the acknowledged ones never do.
    let mut again: HashMap<String, String> = HashMap::new();
    for _ in 0..20 {
        let r = post(
            &client,
            &format!("{base}/v1/queues/jobs/receive"),
            json!({"max": 6, "wait_ms": 5000}),
        )
        .await;
        for d in r["deliveries"].as_array().expect("deliveries") {
            assert_eq!(d["delivery_count"], 2, "{d}");
            let value = d["message"]["value"].as_str().expect("value").to_owned();
            let ack_id = d["ack_id"].as_str().expect("ack_id").to_owned();
            assert!(again.insert(value, ack_id).is_none(), "delivered twice");
        }
        if again.len() >= 3 {
            break;
        }
    }
    let mut values: Vec<&str> = again.keys().map(String::as_str).collect();
    values.sort_unstable();
    assert_eq!(values, ["job 1", "job 3", "job 5"]);
    let r = post(
        &client,
        &format!("{base}/v1/queues/jobs/ack"),
        json!({"ack_ids": again.values().collect::<Vec<_>>()}),
    )
    .await;
    for res in r["results"].as_array().expect("results") {
        assert_eq!(res["error"], Value::Null, "{r}");
    }
    let r = post(
        &client,
        &format!("{base}/v1/queues/jobs/receive"),
        json!({"max": 6, "wait_ms": 500}),
    )
    .await;
    assert_eq!(r["deliveries"], json!([]), "nothing left to deliver");
    let q = get(&client, &format!("{base}/v1/queues/jobs")).await;
    assert_eq!(q["subscription"]["in_flight"], 0, "{q}");
    assert_eq!(q["subscription"]["partitions"][0]["lag"], 0, "{q}");

    // The stream subscription resumes at its committed offset.
    let sub = format!("{base}/v1/topics/ledger/subscriptions/audit");
    let info = get(&client, &sub).await;
    assert_eq!(info["partitions"][0]["committed"], 3, "{info}");
    let member = post(&client, &format!("{sub}/members"), json!({})).await;
    let member = member["member_id"].as_str().expect("member_id").to_owned();
    let fetched = post(
        &client,
        &format!("{sub}/fetch"),
        json!({"member_id": member, "wait_ms": 5000}),
    )
    .await;
    let got: Vec<(u64, &str)> = fetched["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().expect("offset"),
                m["value"].as_str().expect("value"),
            )
        })
        .collect();
    assert_eq!(got, [(3, "entry 3"), (4, "entry 4")]);
    block_in_place(|| server.stop_cleanly());
}
