//! REST benchmark of `wharf-server`: publish and queue receive+ack over HTTP/1.1 keep-alive on
//! loopback, next to the same workloads called in-process on `wharf_broker::EmbeddedEngine`,
//! in the same run, so that each row shows REST, in-process, and their ratio (the REST
//! overhead).
//!
//! ```text
//! cargo bench -p wharf-server --bench rest                        # full run, about 2 minutes
//! WHARF_BENCH_QUICK=1 cargo bench -p wharf-server --bench rest    # smoke run, a few seconds
//! ```
//!
//! What it measures (100 B values; topics and queues with default settings, so `always`
//! durability, 1 partition):
//! - **publish**: N workers (N = 1, 16, 64), each a tokio task publishing in a loop, one
//!   request in flight per worker. REST: `POST /v1/topics/bench/messages` with one message
//!   (`{"value": ...}`) or a batch of 100 (`{"messages": [...]}`); every worker has its own
//!   `reqwest` client (`http1_only`, a pool of one keep-alive connection, opened before the
//!   clock starts). In-process: `Engine::publish` with 1 or 100 messages per call, N tasks.
//! - **queue receive + ack**: a queue pre-filled with M messages (through the engine, outside
//!   the clock), then K consumers (K = 1, 16), each looping `receive` of at most B (B = 1, 100;
//!   `wait_ms` 20, its own `member`) then one `ack` of every id it got. REST:
//!   `POST /v1/queues/bench-q/receive` and `/ack`; in-process: `Engine::receive` / `Engine::ack`.
//! - per row: messages/s and request latency p50/p99 (REST: from `send` to the whole answer
//!   read and parsed); medians over interleaved rounds (each round runs every row, REST and
//!   in-process back to back, alternating which goes first), and the REST / in-process ratio
//!   (median of the rounds' ratios, with each round's ratio shown);
//! - diagnostics from `/proc`: CPU per message of the client runtime's threads, the server
//!   runtime's threads and the logs' committer threads; growth of anonymous memory over the
//!   cell; and the time of the first `GET /metrics` after a REST cell.
//!
//! The server is the real one (`wharf_test::TestServer`: `wharf_server::start`, default
//! `Config`, listening on `127.0.0.1:0`) on its own tokio runtime; the clients, and the
//! in-process calls, run on another runtime. Both share the machine's cores.
//!
//! Every cell is a fresh server or engine over a fresh directory, and stops after its message
//! count or its time limit, whichever comes first (the time limit is at most 10 s). Knobs
//! (environment): `WHARF_BENCH_QUICK=1` (tiny counts, 1 round: checks that the bench works);
//! `WHARF_BENCH_SECS` (time limit per cell, default 2, at most 10); `WHARF_BENCH_DIR` (where
//! the data goes; default `<target dir>/wharf-bench`, or `/var/tmp` if that is on tmpfs);
//! `WHARF_BENCH_MD` (also write the markdown report to this file). Arguments: `--quick` is the
//! same as `WHARF_BENCH_QUICK=1`; others (such as the `--bench` that `cargo bench` passes) are
//! ignored.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use wharf_benchkit::{
    BoxError, BoxResult, LOG_COMMITTER_THREAD, MB, Report, Table, ThreadSnap, ThreadStat,
    bench_base, elapsed_ns, end_lines, env_path, env_secs, exit_on_error, fixed, grouped, has_arg,
    median, micros, percentile_us, proc_field, reproduce_command, run_header, secs_of,
    temp_data_dir, write_markdown,
};
use wharf_broker::{
    EmbeddedConfig, EmbeddedEngine, Engine, Message, ReceiveRequest, SharedConfig,
    SubscriptionConfig, TopicConfig,
};
use wharf_test::TestServer;
use wharf_test::reqwest;

/// Value size of every message.
const VALUE_SIZE: usize = 100;
/// Workers (= requests in flight) of the publish rows.
const IN_FLIGHT: [usize; 3] = [1, 16, 64];
/// Messages per publish request.
const BATCHES: [usize; 2] = [1, 100];
/// Consumers of the receive+ack rows.
const CONSUMERS: [usize; 2] = [1, 16];
/// `max` of the receives.
const RECEIVE_MAX: [usize; 2] = [1, 100];
/// `wait_ms` of the receives (they only wait once the queue is empty or all leased).
const RECEIVE_WAIT_MS: u64 = 20;
/// Messages per publish call when pre-filling a queue.
const PREFILL_CHUNK: usize = 1000;
/// Longest time limit of a cell.
const MAX_SECS: f64 = 10.0;
const TOPIC: &str = "bench";
const QUEUE: &str = "bench-q";
/// Thread names (at most 15 bytes: `/proc/.../comm`).
const CLIENT_THREAD: &str = "rest-bench-cli";
const SERVER_THREAD: &str = "rest-bench-srv";
const KNOBS: [&str; 4] = [
    "WHARF_BENCH_QUICK",
    "WHARF_BENCH_SECS",
    "WHARF_BENCH_DIR",
    "WHARF_BENCH_MD",
];

// ---------------------------------------------------------------------------------------------
// Settings

#[derive(Clone)]
struct Settings {
    quick: bool,
    quick_arg: bool,
    /// Time limit of one cell.
    secs: Duration,
    /// Message limit of one publish cell.
    max_publish: u64,
    /// Pre-fill (and message limit) of a receive+ack cell with `max` 1.
    prefill_single: u64,
    /// Pre-fill (and message limit) of a receive+ack cell with `max` 100.
    prefill_batch: u64,
    /// Interleaved rounds.
    rounds: usize,
    /// Where the temporary data directory is created.
    base: PathBuf,
    md_path: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> BoxResult<Self> {
        let quick_arg = has_arg("--quick");
        let quick_env = std::env::var("WHARF_BENCH_QUICK")
            .is_ok_and(|v| !v.trim().is_empty() && v.trim() != "0");
        let quick = quick_arg || quick_env;
        let secs = env_secs(if quick { 0.3 } else { 2.0 })?;
        Ok(Self {
            quick,
            quick_arg,
            secs: Duration::from_secs_f64(secs.min(MAX_SECS)),
            max_publish: if quick { 2_000 } else { 2_000_000 },
            prefill_single: if quick { 500 } else { 100_000 },
            prefill_batch: if quick { 2_000 } else { 400_000 },
            rounds: if quick { 1 } else { 3 },
            base: bench_base(),
            md_path: env_path("WHARF_BENCH_MD"),
        })
    }

    fn prefill(&self, max: usize) -> u64 {
        if max == 1 {
            self.prefill_single
        } else {
            self.prefill_batch
        }
    }

    fn command(&self) -> String {
        let args = self.quick_arg.then_some("--quick");
        reproduce_command(&KNOBS, "cargo bench -p wharf-server --bench rest", args)
    }
}

// ---------------------------------------------------------------------------------------------
// Machine

/// Anonymous resident memory of this process, in MB (10^6 bytes).
fn rss_anon_mb() -> f64 {
    proc_field("/proc/self/status", "RssAnon")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0 / MB)
}

// ---------------------------------------------------------------------------------------------
// Threads: CPU time from /proc

/// CPU over a cell, by thread group.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    /// The client runtime (REST clients, or the in-process caller).
    client: ThreadStat,
    /// The server runtime.
    server: ThreadStat,
    /// The logs' committer threads.
    committers: ThreadStat,
    other: ThreadStat,
}

impl Cpu {
    /// Since `before` (threads that appeared since count in full; threads that ended are lost).
    fn since(before: &ThreadSnap) -> Self {
        let mut out = Cpu::default();
        for (_, comm, delta) in ThreadSnap::take().since(before) {
            if comm.starts_with(CLIENT_THREAD) {
                out.client.add(delta);
            } else if comm.starts_with(SERVER_THREAD) {
                out.server.add(delta);
            } else if comm.starts_with(LOG_COMMITTER_THREAD) {
                out.committers.add(delta);
            } else {
                out.other.add(delta);
            }
        }
        out
    }

    fn total_ns(&self) -> u64 {
        self.client.cpu_ns + self.server.cpu_ns + self.committers.cpu_ns + self.other.cpu_ns
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// `VALUE_SIZE` bytes of ASCII letters (JSON needs no escaping, UTF-8 needs no base64).
fn value() -> Bytes {
    Bytes::from(
        (0..VALUE_SIZE)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// The REST publish body: one message, or `{"messages": [...]}` of `batch`.
fn publish_body(value: &[u8], batch: usize) -> BoxResult<Bytes> {
    let text = std::str::from_utf8(value)?;
    let body = if batch == 1 {
        serde_json::json!({ "value": text })
    } else {
        let one = serde_json::json!({ "value": text });
        serde_json::json!({ "messages": vec![one; batch] })
    };
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}

/// Runs `fut` as a task on the runtime's workers (not on the thread calling `block_on`), so
/// that its CPU is the workers'.
fn on_rt<T: Send + 'static>(
    rt: &Runtime,
    fut: impl Future<Output = BoxResult<T>> + Send + 'static,
) -> BoxResult<T> {
    rt.block_on(async move { tokio::spawn(fut).await? })
}

/// Publishes `count` messages of `VALUE_SIZE` into the queue, in calls of `PREFILL_CHUNK`,
/// four calls in flight.
async fn prefill(engine: EmbeddedEngine, count: u64) -> BoxResult<()> {
    let value = value();
    let mut left = count;
    let mut calls = Vec::new();
    while left > 0 {
        let n = left.min(PREFILL_CHUNK as u64);
        left -= n;
        let msgs: Vec<Message> = (0..n).map(|_| Message::new(value.clone())).collect();
        let e = engine.clone();
        calls.push(tokio::spawn(async move { e.publish(QUEUE, msgs).await }));
        if calls.len() >= 4 {
            calls.remove(0).await??;
        }
    }
    for c in calls {
        c.await??;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// REST clients

/// One HTTP/1.1 client per worker, each with a single keep-alive connection.
struct RestClients {
    base: String,
    clients: Vec<reqwest::Client>,
    publish_url: reqwest::Url,
    receive_url: reqwest::Url,
    ack_url: reqwest::Url,
}

/// The parts of answers the workers check.
#[derive(Deserialize)]
struct PublishAnswer {
    results: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ReceiveAnswer {
    deliveries: Vec<DeliveryId>,
}

#[derive(Deserialize)]
struct DeliveryId {
    ack_id: String,
}

#[derive(Deserialize)]
struct AckAnswer {
    results: Vec<AckResult>,
}

#[derive(Deserialize)]
struct AckResult {
    error: Option<String>,
}

#[derive(Serialize)]
struct ReceiveBody<'a> {
    max: usize,
    wait_ms: u64,
    member: &'a str,
}

#[derive(Serialize)]
struct AckBody<'a> {
    ack_ids: &'a [String],
}

impl RestClients {
    /// `n` clients, each with its connection open (a `GET /healthz` each).
    async fn connect(base: String, n: usize) -> BoxResult<Self> {
        let url = |path: &str| reqwest::Url::parse(&format!("{base}{path}"));
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let client = reqwest::Client::builder()
                .http1_only()
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()?;
            let resp = client.get(url("/healthz")?).send().await?;
            let status = resp.status();
            resp.bytes().await?;
            if !status.is_success() {
                return Err(format!("GET /healthz: {status}").into());
            }
            clients.push(client);
        }
        Ok(Self {
            publish_url: url(&format!("/v1/topics/{TOPIC}/messages"))?,
            receive_url: url(&format!("/v1/queues/{QUEUE}/receive"))?,
            ack_url: url(&format!("/v1/queues/{QUEUE}/ack"))?,
            base,
            clients,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> BoxResult<Bytes> {
        let resp = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            return Err(format!("{what}: {status}: {}", String::from_utf8_lossy(&bytes)).into());
        }
        Ok(bytes)
    }

    fn client(&self, worker: usize) -> BoxResult<&reqwest::Client> {
        self.clients
            .get(worker)
            .ok_or_else(|| format!("no client for worker {worker}").into())
    }

    async fn post(&self, worker: usize, url: &reqwest::Url, body: Bytes) -> BoxResult<Bytes> {
        let req = self.client(worker)?.post(url.clone()).body(body);
        self.send(req, url.path()).await
    }

    async fn put(&self, path: &str) -> BoxResult<()> {
        let url = reqwest::Url::parse(&format!("{}{path}", self.base))?;
        let req = self.client(0)?.put(url).body("{}");
        self.send(req, path).await.map(drop)
    }

    /// Time of one `GET /metrics`, in ms.
    async fn scrape_ms(&self) -> BoxResult<f64> {
        let url = reqwest::Url::parse(&format!("{}/metrics", self.base))?;
        let t0 = Instant::now();
        let resp = self.client(0)?.get(url).send().await?;
        let status = resp.status();
        resp.bytes().await?;
        if !status.is_success() {
            return Err(format!("GET /metrics: {status}").into());
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }
}

// ---------------------------------------------------------------------------------------------
// Cells

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Rest,
    InProc,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Rest => "REST",
            Side::InProc => "in-process",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Spec {
    Publish { in_flight: usize, batch: usize },
    Receive { consumers: usize, max: usize },
}

impl Spec {
    fn workers(self) -> usize {
        match self {
            Spec::Publish { in_flight, .. } => in_flight,
            Spec::Receive { consumers, .. } => consumers,
        }
    }

    fn label(self) -> String {
        match self {
            Spec::Publish { in_flight, batch } => format!(
                "publish {} @{in_flight}",
                if batch == 1 {
                    "1 msg".to_owned()
                } else {
                    format!("{batch} msgs")
                }
            ),
            Spec::Receive { consumers, max } => format!(
                "receive max {max} + ack, {consumers} consumer{}",
                if consumers == 1 { "" } else { "s" }
            ),
        }
    }
}

/// What the workers call.
#[derive(Clone)]
enum Backend {
    Rest(Arc<RestClients>),
    InProc(EmbeddedEngine),
}

struct Run {
    messages: u64,
    requests: u64,
    elapsed: Duration,
    /// Per publish request, or per receive request that returned deliveries; sorted ns.
    lat: Vec<u64>,
    /// Per ack request; sorted ns.
    ack_lat: Vec<u64>,
    /// Receives that returned nothing (they waited up to `RECEIVE_WAIT_MS`).
    empty_receives: u64,
    by_time: bool,
    cpu: Cpu,
    /// Growth of anonymous resident memory over the cell, MB.
    rss_growth_mb: f64,
    /// The first `GET /metrics` after a REST cell, ms.
    scrape_ms: Option<f64>,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.messages as f64 / secs_of(self.elapsed)
    }

    fn per_msg_us(&self, ns: u64) -> f64 {
        ns as f64 / 1e3 / self.messages.max(1) as f64
    }
}

async fn publish_cell(
    s: Settings,
    backend: Backend,
    in_flight: usize,
    batch: usize,
) -> BoxResult<Run> {
    let value = value();
    let body = publish_body(&value, batch)?;
    let messages: Vec<Message> = (0..batch).map(|_| Message::new(value.clone())).collect();
    let issued = Arc::new(AtomicU64::new(0));
    let by_time = Arc::new(AtomicBool::new(false));
    let rss0 = rss_anon_mb();
    let threads = ThreadSnap::take();
    let start = Instant::now();
    let deadline = start + s.secs;
    let mut tasks = Vec::with_capacity(in_flight);
    for w in 0..in_flight {
        let (backend, body, messages) = (backend.clone(), body.clone(), messages.clone());
        let (issued, by_time) = (issued.clone(), by_time.clone());
        let max = s.max_publish;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while issued.fetch_add(batch as u64, Ordering::Relaxed) < max {
                let t0 = Instant::now();
                if t0 >= deadline {
                    by_time.store(true, Ordering::Relaxed);
                    break;
                }
                let n = match &backend {
                    Backend::Rest(r) => {
                        let answer = r.post(w, &r.publish_url, body.clone()).await?;
                        serde_json::from_slice::<PublishAnswer>(&answer)?
                            .results
                            .len()
                    }
                    Backend::InProc(e) => e.publish(TOPIC, messages.clone()).await?.len(),
                };
                if n != batch {
                    return Err(format!("published {n} of {batch}").into());
                }
                lat.push(elapsed_ns(t0));
            }
            Ok::<_, BoxError>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let cpu = Cpu::since(&threads);
    lat.sort_unstable();
    Ok(Run {
        messages: lat.len() as u64 * batch as u64,
        requests: lat.len() as u64,
        elapsed,
        lat,
        ack_lat: Vec::new(),
        empty_receives: 0,
        by_time: by_time.load(Ordering::Relaxed),
        cpu,
        rss_growth_mb: rss_anon_mb() - rss0,
        scrape_ms: None,
    })
}

struct ConsumerOut {
    lat: Vec<u64>,
    ack_lat: Vec<u64>,
    empty: u64,
    last_done: Option<Instant>,
}

async fn receive_cell(
    s: Settings,
    backend: Backend,
    consumers: usize,
    max: usize,
    total: u64,
) -> BoxResult<Run> {
    let done = Arc::new(AtomicU64::new(0));
    let by_time = Arc::new(AtomicBool::new(false));
    let rss0 = rss_anon_mb();
    let threads = ThreadSnap::take();
    let start = Instant::now();
    let deadline = start + s.secs;
    let mut tasks = Vec::with_capacity(consumers);
    for w in 0..consumers {
        let (backend, done, by_time) = (backend.clone(), done.clone(), by_time.clone());
        tasks.push(tokio::spawn(async move {
            let member = format!("c{w}");
            let receive_body = Bytes::from(serde_json::to_vec(&ReceiveBody {
                max,
                wait_ms: RECEIVE_WAIT_MS,
                member: &member,
            })?);
            let request = ReceiveRequest {
                member: Some(member.clone()),
                max,
                lease: None,
                wait: Duration::from_millis(RECEIVE_WAIT_MS),
            };
            let mut out = ConsumerOut {
                lat: Vec::new(),
                ack_lat: Vec::new(),
                empty: 0,
                last_done: None,
            };
            while done.load(Ordering::Relaxed) < total {
                let t0 = Instant::now();
                if t0 >= deadline {
                    by_time.store(true, Ordering::Relaxed);
                    break;
                }
                let ids: Vec<String> = match &backend {
                    Backend::Rest(r) => {
                        let answer = r.post(w, &r.receive_url, receive_body.clone()).await?;
                        serde_json::from_slice::<ReceiveAnswer>(&answer)?
                            .deliveries
                            .into_iter()
                            .map(|d| d.ack_id)
                            .collect()
                    }
                    Backend::InProc(e) => e
                        .receive(QUEUE, QUEUE, request.clone())
                        .await?
                        .into_iter()
                        .map(|d| d.ack_id)
                        .collect(),
                };
                if ids.is_empty() {
                    out.empty += 1;
                    continue;
                }
                out.lat.push(elapsed_ns(t0));
                let t1 = Instant::now();
                let failed = match &backend {
                    Backend::Rest(r) => {
                        let body = Bytes::from(serde_json::to_vec(&AckBody { ack_ids: &ids })?);
                        let answer = r.post(w, &r.ack_url, body).await?;
                        let results = serde_json::from_slice::<AckAnswer>(&answer)?.results;
                        if results.len() != ids.len() {
                            return Err(format!(
                                "ack answered {} results for {} ids",
                                results.len(),
                                ids.len()
                            )
                            .into());
                        }
                        results.iter().filter(|r| r.error.is_some()).count()
                    }
                    Backend::InProc(e) => e
                        .ack(QUEUE, QUEUE, &ids)
                        .await?
                        .iter()
                        .filter(|o| o.error.is_some())
                        .count(),
                };
                out.ack_lat.push(elapsed_ns(t1));
                if failed > 0 {
                    return Err(format!("{failed} of {} acks failed", ids.len()).into());
                }
                done.fetch_add(ids.len() as u64, Ordering::Relaxed);
                out.last_done = Some(Instant::now());
            }
            Ok::<_, BoxError>(out)
        }));
    }
    let (mut lat, mut ack_lat, mut empty, mut last) = (Vec::new(), Vec::new(), 0, start);
    for t in tasks {
        let out = t.await??;
        lat.extend(out.lat);
        ack_lat.extend(out.ack_lat);
        empty += out.empty;
        if let Some(l) = out.last_done {
            last = last.max(l);
        }
    }
    let cpu = Cpu::since(&threads);
    lat.sort_unstable();
    ack_lat.sort_unstable();
    Ok(Run {
        messages: done.load(Ordering::Relaxed),
        requests: (lat.len() + ack_lat.len()) as u64 + empty,
        elapsed: last - start,
        lat,
        ack_lat,
        empty_receives: empty,
        by_time: by_time.load(Ordering::Relaxed),
        cpu,
        rss_growth_mb: rss_anon_mb() - rss0,
        scrape_ms: None,
    })
}

/// One cell: a fresh server (REST) or engine (in-process) over `dir`, the topic or the
/// pre-filled queue, the measurement, and the teardown (the directory is removed).
fn cell(
    cli: &Runtime,
    srv: &Runtime,
    s: &Settings,
    dir: &Path,
    side: Side,
    spec: Spec,
) -> BoxResult<Run> {
    let workers = spec.workers();
    let queue = matches!(spec, Spec::Receive { .. });
    let (backend, engine, server) = match side {
        Side::Rest => {
            let server = srv.block_on(TestServer::builder().data_dir(dir.to_path_buf()).start());
            let engine = server.engine.clone();
            let base = server.base.clone();
            let clients = on_rt(cli, async move {
                let clients = RestClients::connect(base, workers).await?;
                let path = if queue {
                    format!("/v1/queues/{QUEUE}")
                } else {
                    format!("/v1/topics/{TOPIC}")
                };
                clients.put(&path).await?;
                Ok(clients)
            })?;
            (Backend::Rest(Arc::new(clients)), engine, Some(server))
        }
        Side::InProc => {
            let engine = EmbeddedEngine::open(EmbeddedConfig::new(dir))?;
            let e = engine.clone();
            on_rt(cli, async move {
                if queue {
                    e.create_topic(QUEUE, TopicConfig::default()).await?;
                    e.create_subscription(
                        QUEUE,
                        QUEUE,
                        SubscriptionConfig::Shared(SharedConfig::default()),
                    )
                    .await?;
                } else {
                    e.create_topic(TOPIC, TopicConfig::default()).await?;
                }
                Ok(())
            })?;
            (Backend::InProc(engine.clone()), engine, None)
        }
    };
    let run = match spec {
        Spec::Publish { in_flight, batch } => on_rt(
            cli,
            publish_cell(s.clone(), backend.clone(), in_flight, batch),
        ),
        Spec::Receive { consumers, max } => {
            let total = s.prefill(max);
            on_rt(cli, prefill(engine.clone(), total)).and_then(|()| {
                on_rt(
                    cli,
                    receive_cell(s.clone(), backend.clone(), consumers, max, total),
                )
            })
        }
    };
    let scrape = match (&run, &backend) {
        (Ok(_), Backend::Rest(r)) => {
            let r = r.clone();
            Some(on_rt(cli, async move { r.scrape_ms().await })?)
        }
        _ => None,
    };
    cli.block_on(async move { drop(backend) });
    match server {
        Some(server) => {
            drop(engine);
            srv.block_on(server.stop());
        }
        None => {
            engine.close()?;
            drop(engine);
        }
    }
    fs::remove_dir_all(dir)?;
    let mut run = run?;
    run.scrape_ms = scrape;
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// Output

fn pct(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x < 0.1 {
        format!("{:.1}%", x * 100.0)
    } else {
        format!("{:.0}%", x * 100.0)
    }
}

/// The runs of one row and side, across rounds.
struct Runs<'a>(Vec<&'a Run>);

impl Runs<'_> {
    fn med(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(&self.0.iter().map(|r| f(r)).collect::<Vec<_>>())
    }

    /// Median over rounds of a percentile of the main latency, "p50 / p99".
    fn lat(&self) -> String {
        format!(
            "{} / {}",
            micros(self.med(|r| percentile_us(&r.lat, 0.5))),
            micros(self.med(|r| percentile_us(&r.lat, 0.99)))
        )
    }

    fn ack_lat(&self) -> String {
        format!(
            "{} / {}",
            micros(self.med(|r| percentile_us(&r.ack_lat, 0.5))),
            micros(self.med(|r| percentile_us(&r.ack_lat, 0.99)))
        )
    }

    fn stopped_by(&self) -> String {
        let by: Vec<&str> = self
            .0
            .iter()
            .map(|r| if r.by_time { "time" } else { "count" })
            .collect();
        if by.iter().all(|b| *b == by[0]) {
            by[0].to_owned()
        } else {
            by.join(", ")
        }
    }
}

struct Record {
    spec: Spec,
    side: Side,
    run: Run,
}

fn runs_of(records: &[Record], spec: Spec, side: Side) -> Runs<'_> {
    Runs(
        records
            .iter()
            .filter(|r| r.spec == spec && r.side == side)
            .map(|r| &r.run)
            .collect(),
    )
}

/// Per round: REST msg/s over in-process msg/s (records are in round order).
fn round_ratios(records: &[Record], spec: Spec) -> Vec<f64> {
    let rest = runs_of(records, spec, Side::Rest).0;
    let inproc = runs_of(records, spec, Side::InProc).0;
    rest.iter()
        .zip(&inproc)
        .map(|(r, i)| r.per_sec() / i.per_sec())
        .collect()
}

fn ratio_cells(records: &[Record], spec: Spec) -> (String, String) {
    let ratios = round_ratios(records, spec);
    (
        format!("**{}**", pct(median(&ratios))),
        ratios
            .iter()
            .map(|r| pct(*r))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

// ---------------------------------------------------------------------------------------------
// Main

/// The allocator `wharf serve` runs with (crates/wharf/src/main.rs), so the server measured here
/// is the one users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Like `wharf serve`: its allocator (above) and a log subscriber at `info` (without one,
    // every span of the HTTP/2 stack would fall back to the `log` crate, a cost the server
    // does not have).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    exit_on_error("wharf-server rest bench", run());
}

fn runtime(name: &str, workers: usize) -> BoxResult<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()?)
}

#[allow(clippy::too_many_lines)]
fn run() -> BoxResult<()> {
    let s = Settings::from_env()?;
    let root = temp_data_dir(&s.base, "wharf-rest-bench-")?;
    let data = root.path().to_path_buf();
    let started = Instant::now();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cli = runtime(CLIENT_THREAD, workers)?;
    let srv = runtime(SERVER_THREAD, workers)?;

    let mut specs = Vec::new();
    for &batch in &BATCHES {
        for &in_flight in &IN_FLIGHT {
            specs.push(Spec::Publish { in_flight, batch });
        }
    }
    for &max in &RECEIVE_MAX {
        for &consumers in &CONSUMERS {
            specs.push(Spec::Receive { consumers, max });
        }
    }

    // --- Header ---------------------------------------------------------------------------
    let mut header = run_header(
        &s.command(),
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &data,
        [
            format!(
                "server: wharf_test::TestServer (wharf_server::start, default Config, 127.0.0.1:0, plain HTTP, no auth) on its own tokio runtime ({workers} workers); clients: reqwest, HTTP/1.1 only, one client with one keep-alive connection per worker, on a second runtime ({workers} workers), which also runs the in-process calls"
            ),
            format!(
                "workloads: {VALUE_SIZE} B values; topic/queue defaults (`always`, 1 partition); publish with {IN_FLIGHT:?} workers x {BATCHES:?} messages per request; receive+ack with {CONSUMERS:?} consumers x receive max {RECEIVE_MAX:?} (wait_ms {RECEIVE_WAIT_MS}, one member per consumer, one ack request per receive)"
            ),
            format!(
                "limits per cell: {:.1} s, {} published messages; queue pre-fill (= receive limit) {} for max 1, {} for max 100; {} interleaved round(s){}",
                s.secs.as_secs_f64(),
                grouped(s.max_publish as f64),
                grouped(s.prefill_single as f64),
                grouped(s.prefill_batch as f64),
                s.rounds,
                if s.quick { " (quick mode)" } else { "" }
            ),
        ],
    );
    eprintln!("wharf-server REST benchmark");
    for h in &header {
        eprintln!("  {h}");
    }

    // --- Rounds -----------------------------------------------------------------------------
    let mut records: Vec<Record> = Vec::new();
    let mut cell_no = 0u32;
    for round in 1..=s.rounds {
        for &spec in &specs {
            let order = if round % 2 == 1 {
                [Side::Rest, Side::InProc]
            } else {
                [Side::InProc, Side::Rest]
            };
            for side in order {
                cell_no += 1;
                let dir = data.join(format!("{cell_no:03}"));
                let run = cell(&cli, &srv, &s, &dir, side, spec)?;
                eprintln!(
                    "[round {round}] {} {}: {} msg/s, p50 {} µs, p99 {} µs ({} messages in {:.2} s)",
                    spec.label(),
                    side.label(),
                    grouped(run.per_sec()),
                    micros(percentile_us(&run.lat, 0.5)),
                    micros(percentile_us(&run.lat, 0.99)),
                    grouped(run.messages as f64),
                    run.elapsed.as_secs_f64()
                );
                records.push(Record { spec, side, run });
            }
        }
    }
    header.extend(end_lines(started));
    drop(cli);
    drop(srv);

    // --- Tables -------------------------------------------------------------------------------
    let mut publish = Table::new(
        "Publish (100 B values, `always`; msg/s and request latency are medians over the rounds; latency = one request, p50 / p99 µs)",
        &[
            "messages per request",
            "in flight",
            "REST msg/s",
            "in-process msg/s",
            "REST / in-process",
            "per round",
            "REST p50 / p99 µs",
            "in-process p50 / p99 µs",
        ],
        1,
    );
    let mut receive = Table::new(
        "Queue receive + ack (100 B values; each consumer: receive max B, then one ack of what it got; receive latency counts non-empty receives; p50 / p99 µs)",
        &[
            "receive max",
            "consumers",
            "REST msg/s",
            "in-process msg/s",
            "REST / in-process",
            "per round",
            "REST receive",
            "REST ack",
            "in-process receive",
            "in-process ack",
        ],
        1,
    );
    let mut diag = Table::new(
        "Diagnostics (medians over the rounds; CPU from /proc per message: client = the client runtime's threads, i.e. the REST clients or the in-process caller; server = the server runtime's threads; committer = the logs' committer threads)",
        &[
            "row",
            "side",
            "requests/s",
            "client cpu µs/msg",
            "server cpu µs/msg",
            "committer cpu µs/msg",
            "other cpu µs/msg",
            "cpu busy %",
            "msgs/commit write",
            "anon RSS growth MB",
            "first /metrics ms",
            "empty receives",
            "stopped by",
        ],
        2,
    );
    for &spec in &specs {
        let rest = runs_of(&records, spec, Side::Rest);
        let inproc = runs_of(&records, spec, Side::InProc);
        let (ratio, per_round) = ratio_cells(&records, spec);
        match spec {
            Spec::Publish { in_flight, batch } => publish.row(vec![
                batch.to_string(),
                in_flight.to_string(),
                grouped(rest.med(Run::per_sec)),
                grouped(inproc.med(Run::per_sec)),
                ratio,
                per_round,
                rest.lat(),
                inproc.lat(),
            ]),
            Spec::Receive { consumers, max } => receive.row(vec![
                max.to_string(),
                consumers.to_string(),
                grouped(rest.med(Run::per_sec)),
                grouped(inproc.med(Run::per_sec)),
                ratio,
                per_round,
                rest.lat(),
                rest.ack_lat(),
                inproc.lat(),
                inproc.ack_lat(),
            ]),
        }
        for (side, runs) in [(Side::Rest, &rest), (Side::InProc, &inproc)] {
            diag.row(vec![
                spec.label(),
                side.label().into(),
                grouped(runs.med(|r| r.requests as f64 / secs_of(r.elapsed))),
                fixed(runs.med(|r| r.per_msg_us(r.cpu.client.cpu_ns)), 2),
                fixed(runs.med(|r| r.per_msg_us(r.cpu.server.cpu_ns)), 2),
                fixed(runs.med(|r| r.per_msg_us(r.cpu.committers.cpu_ns)), 2),
                fixed(runs.med(|r| r.per_msg_us(r.cpu.other.cpu_ns)), 2),
                fixed(
                    runs.med(|r| r.cpu.total_ns() as f64 / 1e9 / secs_of(r.elapsed) * 100.0),
                    0,
                ),
                fixed(
                    runs.med(|r| r.messages as f64 / r.cpu.committers.writes.max(1) as f64),
                    1,
                ),
                fixed(runs.med(|r| r.rss_growth_mb), 1),
                fixed(runs.med(|r| r.scrape_ms.unwrap_or(f64::NAN)), 1),
                match spec {
                    Spec::Receive { .. } => grouped(runs.med(|r| r.empty_receives as f64)),
                    Spec::Publish { .. } => "-".into(),
                },
                runs.stopped_by(),
            ]);
        }
    }

    // --- Print --------------------------------------------------------------------------------
    let notes = [
        "msg/s count from the first request until the last one completed (receive+ack: until the last ack); server start, topic/queue creation, connection set-up, queue pre-fill and teardown are outside the clock.",
        "REST / in-process: REST msg/s over in-process msg/s of the same round (median of the rounds; each round listed). Sides run back to back in every round, alternating which goes first.",
        "REST latency runs from sending the request to having read and parsed the whole answer (the client's JSON work included); the request bodies of publishes are built once per cell, the ack bodies per request.",
        "The server adds a `traceparent` header to every message it stores (the in-process side stores none), so REST-published messages are larger on disk; the queue pre-fill is the same on both sides.",
        "cpu busy % = CPU time of every thread of the process over the cell's wall time (100% per core). msgs/commit write = messages over the committer threads' write system calls.",
        "anon RSS growth = RssAnon at the end of the cell minus at its start; first /metrics ms = one GET /metrics right after a REST cell (the Prometheus recorder keeps every request's latency sample until a scrape drains it).",
    ];
    let md = Report {
        header: &header,
        tables: &[&publish, &receive, &diag],
        notes: &notes,
        targets_about: "",
        targets: &[],
    }
    .markdown();
    println!("{md}");
    write_markdown(s.md_path.as_deref(), &md)?;
    drop(root);
    Ok(())
}
