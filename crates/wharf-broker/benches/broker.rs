//! In-process benchmark of `wharf-broker`'s embedded engine, judged against `wharf-log`
//! measured in the same run, in the same process, on the same directory.
//!
//! ```text
//! cargo bench -p wharf-broker --bench broker              # full run, about 1 minute
//! cargo bench -p wharf-broker --bench broker -- --quick   # smoke run, a few seconds
//! ```
//!
//! What it measures (every broker call goes through the `Engine` trait, on a multi-thread
//! tokio runtime with one worker per core):
//! - **publish**: one topic (1 partition, and 4), `always` durability, single-message
//!   `Engine::publish` calls, N in flight as N tokio tasks that each publish in a loop
//!   (N = 1, 16, 256), 100 B and 1 KiB values. Records/s, payload MB/s, p50/p99 latency of a
//!   publish call. Next to each, the raw `wharf-log` baseline: single-record appends under
//!   `always` with N tickets outstanding from one thread (submit until N are outstanding, then
//!   wait the oldest), as in `crates/wharf-log/benches/log.rs`;
//! - **stream consume**: a topic pre-filled, one member joins, then `fetch` (max 1000
//!   messages) + `commit` of every batch until drained. Messages/s; time split between the two;
//! - **shared receive + ack**: a topic pre-filled, `receive` (max 100) then `ack` of all ids in
//!   one call (batched) or one call per id (single), with 1 and 4 concurrent receivers;
//! - **latency at a fixed rate**: a publisher thread paces single-message `always` publishes
//!   at 10,000 msg/s (each its own task, so publishes overlap as they would from many
//!   clients) while a consumer long-polls — `fetch` with a wait on a stream subscription
//!   (committing each batch in the background), and separately `receive` with a wait on a
//!   shared subscription (acking each batch in the background). Publish→deliver latency from
//!   a timestamp the publish task writes into the payload just before `publish`;
//! - diagnostics per cell, from `/proc`: CPU time and context switches per message of the
//!   runtime's worker threads (or, for the log baseline, the submitting thread) and of the
//!   logs' committer threads;
//! - the target: `always` publish of 100 B at 256 in flight reaches at least 60% of the log's
//!   own `always` records/s at the same batch size (1) and in-flight count. Its verdict is the
//!   median of interleaved rounds (log, broker, log, broker, ...), run after the matrix, so
//!   that the drifting load of a shared machine hits both sides alike.
//!
//! Every cell is bounded by a count and a time limit, whichever comes first. Knobs
//! (environment): `WHARF_BENCH_DIR` (where the data goes; a fresh temporary directory is made
//! inside it; default `<target dir>/wharf-bench`, or `/var/tmp` if that is on tmpfs),
//! `WHARF_BENCH_SECS` (time limit per cell, default 2), `WHARF_BENCH_MAX_RECORDS` (publish
//! limit per cell, default 2000000), `WHARF_BENCH_MD` (also write the results as markdown to
//! this file). Arguments: `--quick` (tiny counts, for smoke runs); `--only=LIST` (a
//! comma-separated subset of `publish,target,consume,shared,latency`, for profiling);
//! unknown arguments (such as the `--bench` that `cargo bench` passes) are ignored.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::Runtime;
use wharf_benchkit::{
    BoxError, BoxResult, LOG_COMMITTER_THREAD, MB, Report, Table, Target, ThreadSnap, ThreadStat,
    bench_base, elapsed_ns, end_lines, env_parse, env_path, env_secs, exit_on_error, fixed,
    grouped, median, micros, payload, percentile_us, reproduce_command, run_header, secs_of,
    size_label, stopped_by, sum_secs, temp_data_dir, write_markdown,
};
use wharf_broker::{
    Committed, EmbeddedConfig, EmbeddedEngine, Engine, FetchRequest, Message, ReceiveRequest,
    SharedConfig, StreamConfig, SubscriptionConfig, TopicConfig,
};
use wharf_log::{Durability, Log, LogConfig, NewRecord};

const RECORD_SIZES: [usize; 2] = [100, 1024];
const IN_FLIGHT: [usize; 3] = [1, 16, 256];
const PARTITIONS: [u32; 2] = [1, 4];
/// The target: broker records/s at 256 in flight, 100 B, >= this share of the log's.
const TARGET_RATIO: f64 = 0.60;
const TARGET_SIZE: usize = 100;
const TARGET_IN_FLIGHT: usize = 256;
/// `max_messages` of the stream consume fetches.
const FETCH_MAX: usize = 1000;
/// `max` of the shared receives.
const RECEIVE_MAX: usize = 100;
/// Publishes per call when pre-filling a topic.
const PREFILL_CHUNK: usize = 1000;
/// Largest pre-fill of a consume cell, in payload bytes.
const PREFILL_MAX_BYTES: u64 = 100_000_000;
/// Rate of the latency cells.
const LATENCY_RATE: f64 = 10_000.0;
/// Value size of the latency cells.
const LATENCY_SIZE: usize = 100;
/// Longest a latency cell publishes.
const LATENCY_MAX_SECS: f64 = 10.0;
const TOPIC: &str = "bench";
const SUB: &str = "sub";
const RT_THREAD: &str = "wharf-bench-rt";
const KNOBS: [&str; 4] = [
    "WHARF_BENCH_DIR",
    "WHARF_BENCH_SECS",
    "WHARF_BENCH_MAX_RECORDS",
    "WHARF_BENCH_MD",
];
const PARTS: [&str; 5] = ["publish", "target", "consume", "shared", "latency"];

// ---------------------------------------------------------------------------------------------
// Settings

#[derive(Clone)]
struct Settings {
    quick: bool,
    /// Time limit of one cell.
    secs: Duration,
    /// Publish limit of one publish cell.
    max_records: u64,
    /// Pre-fill of a stream consume cell (capped at `PREFILL_MAX_BYTES`).
    consume_records: u64,
    /// Pre-fill of a shared receive+ack cell.
    shared_records: u64,
    /// Messages published by a latency cell.
    latency_count: u64,
    /// Interleaved rounds of the target check.
    rounds: usize,
    /// Where the temporary data directory is created.
    base: PathBuf,
    md_path: Option<PathBuf>,
    /// Parts to run (all by default).
    only: Vec<String>,
}

impl Settings {
    fn from_env() -> BoxResult<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let only: Vec<String> = args
            .iter()
            .filter_map(|a| a.strip_prefix("--only="))
            .flat_map(|l| l.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        if let Some(bad) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
            return Err(
                format!("--only: unknown part {bad:?} (known: {})", PARTS.join(",")).into(),
            );
        }
        let secs = env_secs(if quick { 0.2 } else { 2.0 })?;
        let max_records: u64 =
            env_parse("WHARF_BENCH_MAX_RECORDS")?.unwrap_or(if quick { 2_000 } else { 2_000_000 });
        Ok(Self {
            quick,
            secs: Duration::from_secs_f64(secs),
            max_records: max_records.max(1),
            consume_records: if quick { 5_000 } else { 200_000 },
            shared_records: if quick { 2_000 } else { 100_000 },
            latency_count: if quick { 1_000 } else { 20_000 },
            rounds: if quick { 1 } else { 3 },
            base: bench_base(),
            md_path: env_path("WHARF_BENCH_MD"),
            only,
        })
    }

    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }

    fn command(&self) -> String {
        let mut args = Vec::new();
        if self.quick {
            args.push("--quick".to_owned());
        }
        if !self.only.is_empty() {
            args.push(format!("--only={}", self.only.join(",")));
        }
        reproduce_command(&KNOBS, "cargo bench -p wharf-broker --bench broker", args)
    }
}

// ---------------------------------------------------------------------------------------------
// Threads: CPU time and context switches from /proc

/// Who does the client's work in a cell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    /// The tokio runtime's worker threads.
    Runtime,
    /// The main thread (the log baseline submits from it).
    Main,
}

/// CPU over a cell, by thread group.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    client: ThreadStat,
    committers: ThreadStat,
    other: ThreadStat,
}

impl Cpu {
    /// Since `before` (threads that appeared since count in full; threads that ended are lost).
    fn since(before: &ThreadSnap, client: Client) -> Self {
        let main_tid = u64::from(std::process::id());
        let mut out = Cpu::default();
        for (tid, comm, delta) in ThreadSnap::take().since(before) {
            let is_client = match client {
                Client::Runtime => comm.starts_with(RT_THREAD),
                Client::Main => tid == main_tid,
            };
            if is_client {
                out.client.add(delta);
            } else if comm.starts_with(LOG_COMMITTER_THREAD) {
                out.committers.add(delta);
            } else {
                out.other.add(delta);
            }
        }
        out
    }

    fn total_ns(&self) -> u64 {
        self.client.cpu_ns + self.committers.cpu_ns + self.other.cpu_ns
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs `fut` as a task on the runtime's workers (not on the thread calling `block_on`), so
/// that its CPU is the workers'.
fn on_rt<T: Send + 'static>(
    rt: &Runtime,
    fut: impl Future<Output = BoxResult<T>> + Send + 'static,
) -> BoxResult<T> {
    rt.block_on(async move { tokio::spawn(fut).await? })
}

async fn open_engine(dir: &Path, partitions: u32) -> BoxResult<EmbeddedEngine> {
    let engine = EmbeddedEngine::open(EmbeddedConfig::new(dir))?;
    engine
        .create_topic(
            TOPIC,
            TopicConfig {
                partitions,
                durability: wharf_broker::Durability::Always,
                ..TopicConfig::default()
            },
        )
        .await?;
    Ok(engine)
}

fn close_engine(engine: EmbeddedEngine, dir: &Path) -> BoxResult<()> {
    engine.close()?;
    drop(engine);
    fs::remove_dir_all(dir)?;
    Ok(())
}

/// Publishes `count` messages of `size` bytes in calls of `PREFILL_CHUNK`, four calls in flight.
async fn prefill(engine: &EmbeddedEngine, count: u64, size: usize) -> BoxResult<()> {
    let value = payload(size, 11);
    let mut left = count;
    let mut calls = Vec::new();
    while left > 0 {
        let n = left.min(PREFILL_CHUNK as u64);
        left -= n;
        let msgs: Vec<Message> = (0..n).map(|_| Message::new(value.clone())).collect();
        let e = engine.clone();
        calls.push(tokio::spawn(async move { e.publish(TOPIC, msgs).await }));
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
// Publish

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Log,
    Broker,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Log => "wharf-log",
            Side::Broker => "broker",
        }
    }
}

struct PublishRun {
    side: Side,
    partitions: u32,
    size: usize,
    in_flight: usize,
    records: u64,
    elapsed: Duration,
    p50_us: f64,
    p99_us: f64,
    by_time: bool,
    cpu: Cpu,
    /// Log baseline only: (synced appends, fsyncs).
    fsyncs: Option<(u64, u64)>,
}

impl PublishRun {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / secs_of(self.elapsed)
    }

    fn mb_per_sec(&self) -> f64 {
        (self.records * self.size as u64) as f64 / MB / secs_of(self.elapsed)
    }

    fn per_msg(&self, ns: u64) -> f64 {
        ns as f64 / 1e3 / self.records.max(1) as f64
    }

    fn summary(&self) -> String {
        format!(
            "{} rec/s, {} MB/s, p50 {} us, p99 {} us",
            grouped(self.records_per_sec()),
            fixed(self.mb_per_sec(), 1),
            micros(self.p50_us),
            micros(self.p99_us)
        )
    }
}

/// The log baseline: single-record `always` appends, `in_flight` tickets outstanding from the
/// calling thread.
fn log_cell(s: &Settings, dir: &Path, size: usize, in_flight: usize) -> BoxResult<PublishRun> {
    let config = LogConfig {
        durability: Durability::Always,
        ..LogConfig::default()
    };
    let (log, _report) = Log::open(dir, config)?;
    let records = [NewRecord::new(payload(size, 7))];
    let mut latencies: Vec<u64> = Vec::with_capacity(s.max_records.min(1 << 22) as usize);
    let mut queue = std::collections::VecDeque::with_capacity(in_flight + 1);
    let before = log.stats();
    let threads = ThreadSnap::take();
    let start = Instant::now();
    let deadline = start + s.secs;
    let mut submitted = 0u64;
    let mut by_time = false;
    while submitted < s.max_records {
        if queue.len() >= in_flight
            && let Some((t0, ticket)) = queue.pop_front()
        {
            wharf_log::AppendTicket::wait(ticket)?;
            latencies.push(elapsed_ns(t0));
        }
        let now = Instant::now();
        if now >= deadline {
            by_time = true;
            break;
        }
        queue.push_back((now, log.append(&records)?));
        submitted += 1;
    }
    while let Some((t0, ticket)) = queue.pop_front() {
        ticket.wait()?;
        latencies.push(elapsed_ns(t0));
    }
    let elapsed = start.elapsed();
    let cpu = Cpu::since(&threads, Client::Main);
    let after = log.stats();
    log.close()?;
    drop(log);
    fs::remove_dir_all(dir)?;
    latencies.sort_unstable();
    Ok(PublishRun {
        side: Side::Log,
        partitions: 1,
        size,
        in_flight,
        records: after.records - before.records,
        elapsed,
        p50_us: percentile_us(&latencies, 0.50),
        p99_us: percentile_us(&latencies, 0.99),
        by_time,
        cpu,
        fsyncs: Some((
            after.synced_appends - before.synced_appends,
            after.fsyncs - before.fsyncs,
        )),
    })
}

/// The broker: a fresh engine and topic; `in_flight` tasks each publishing one message per
/// call in a loop, until the shared count or the time limit runs out.
async fn broker_cell(
    s: Settings,
    dir: PathBuf,
    partitions: u32,
    size: usize,
    in_flight: usize,
) -> BoxResult<PublishRun> {
    let engine = open_engine(&dir, partitions).await?;
    let value = payload(size, 7);
    let issued = Arc::new(AtomicU64::new(0));
    let by_time = Arc::new(AtomicBool::new(false));
    let threads = ThreadSnap::take();
    let start = Instant::now();
    let deadline = start + s.secs;
    let mut tasks = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let (engine, value, issued, by_time) = (
            engine.clone(),
            value.clone(),
            issued.clone(),
            by_time.clone(),
        );
        let max = s.max_records;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while issued.fetch_add(1, Ordering::Relaxed) < max {
                let t0 = Instant::now();
                if t0 >= deadline {
                    by_time.store(true, Ordering::Relaxed);
                    break;
                }
                engine
                    .publish(TOPIC, vec![Message::new(value.clone())])
                    .await?;
                latencies.push(elapsed_ns(t0));
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let cpu = Cpu::since(&threads, Client::Runtime);
    close_engine(engine, &dir)?;
    latencies.sort_unstable();
    Ok(PublishRun {
        side: Side::Broker,
        partitions,
        size,
        in_flight,
        records: latencies.len() as u64,
        elapsed,
        p50_us: percentile_us(&latencies, 0.50),
        p99_us: percentile_us(&latencies, 0.99),
        by_time: by_time.load(Ordering::Relaxed),
        cpu,
        fsyncs: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Stream consume

struct ConsumeRun {
    size: usize,
    max_bytes: usize,
    messages: u64,
    elapsed: Duration,
    fetches: u64,
    fetch_ns: Vec<u64>,
    commit_ns: Vec<u64>,
    by_time: bool,
    cpu: Cpu,
}

impl ConsumeRun {
    fn per_sec(&self) -> f64 {
        self.messages as f64 / secs_of(self.elapsed)
    }
}

async fn consume_cell(
    s: Settings,
    dir: PathBuf,
    size: usize,
    max_bytes: usize,
) -> BoxResult<ConsumeRun> {
    let engine = open_engine(&dir, 1).await?;
    let n = s
        .consume_records
        .min(PREFILL_MAX_BYTES / size as u64)
        .max(1);
    prefill(&engine, n, size).await?;
    engine
        .create_subscription(
            TOPIC,
            SUB,
            SubscriptionConfig::Stream(StreamConfig::default()),
        )
        .await?;
    let member = engine.join(TOPIC, SUB, None).await?.member_id;
    let request = FetchRequest {
        max_messages: FETCH_MAX,
        max_bytes,
        wait: Duration::ZERO,
    };
    let (mut fetch_ns, mut commit_ns) = (Vec::new(), Vec::new());
    let mut messages = 0u64;
    let mut by_time = false;
    let threads = ThreadSnap::take();
    let start = Instant::now();
    let deadline = start + s.secs;
    while messages < n {
        let t0 = Instant::now();
        if t0 >= deadline {
            by_time = true;
            break;
        }
        let got = engine.fetch(TOPIC, SUB, &member, request).await?;
        fetch_ns.push(elapsed_ns(t0));
        let Some(last) = got.last() else {
            return Err(format!("fetch returned nothing after {messages} of {n} messages").into());
        };
        let next = last.offset + 1;
        messages += got.len() as u64;
        let t1 = Instant::now();
        engine
            .commit(
                TOPIC,
                SUB,
                &member,
                vec![Committed {
                    partition: 0,
                    offset: next,
                }],
            )
            .await?;
        commit_ns.push(elapsed_ns(t1));
    }
    let elapsed = start.elapsed();
    let cpu = Cpu::since(&threads, Client::Runtime);
    close_engine(engine, &dir)?;
    Ok(ConsumeRun {
        size,
        max_bytes,
        messages,
        elapsed,
        fetches: fetch_ns.len() as u64,
        fetch_ns,
        commit_ns,
        by_time,
        cpu,
    })
}

// ---------------------------------------------------------------------------------------------
// Shared receive + ack

struct SharedRun {
    size: usize,
    receivers: usize,
    batched: bool,
    messages: u64,
    elapsed: Duration,
    receives: u64,
    ack_calls: u64,
    /// Per receive call.
    receive_ns: Vec<u64>,
    /// Per batch: all the ack calls of one received batch.
    ack_ns: Vec<u64>,
    by_time: bool,
    cpu: Cpu,
}

impl SharedRun {
    fn per_sec(&self) -> f64 {
        self.messages as f64 / secs_of(self.elapsed)
    }
}

struct ReceiverOut {
    receive_ns: Vec<u64>,
    ack_ns: Vec<u64>,
    ack_calls: u64,
    last_done: Option<Instant>,
}

async fn shared_cell(
    s: Settings,
    dir: PathBuf,
    size: usize,
    receivers: usize,
    batched: bool,
) -> BoxResult<SharedRun> {
    let engine = open_engine(&dir, 1).await?;
    engine
        .create_subscription(
            TOPIC,
            SUB,
            SubscriptionConfig::Shared(SharedConfig::default()),
        )
        .await?;
    let n = s.shared_records.min(PREFILL_MAX_BYTES / size as u64).max(1);
    prefill(&engine, n, size).await?;
    let done = Arc::new(AtomicU64::new(0));
    let by_time = Arc::new(AtomicBool::new(false));
    let threads = ThreadSnap::take();
    let start = Instant::now();
    let deadline = start + s.secs;
    let mut tasks = Vec::new();
    for r in 0..receivers {
        let (engine, done, by_time) = (engine.clone(), done.clone(), by_time.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = ReceiverOut {
                receive_ns: Vec::new(),
                ack_ns: Vec::new(),
                ack_calls: 0,
                last_done: None,
            };
            let request = ReceiveRequest {
                member: Some(format!("r{r}")),
                max: RECEIVE_MAX,
                lease: None,
                wait: Duration::from_millis(20),
            };
            while done.load(Ordering::Relaxed) < n {
                let t0 = Instant::now();
                if t0 >= deadline {
                    by_time.store(true, Ordering::Relaxed);
                    break;
                }
                let got = engine.receive(TOPIC, SUB, request.clone()).await?;
                out.receive_ns.push(elapsed_ns(t0));
                if got.is_empty() {
                    continue;
                }
                let ids: Vec<String> = got.into_iter().map(|d| d.ack_id).collect();
                let t1 = Instant::now();
                let mut failed = 0;
                if batched {
                    let outcomes = engine.ack(TOPIC, SUB, &ids).await?;
                    out.ack_calls += 1;
                    failed += outcomes.iter().filter(|o| o.error.is_some()).count();
                } else {
                    for id in &ids {
                        let outcomes = engine.ack(TOPIC, SUB, std::slice::from_ref(id)).await?;
                        out.ack_calls += 1;
                        failed += outcomes.iter().filter(|o| o.error.is_some()).count();
                    }
                }
                out.ack_ns.push(elapsed_ns(t1));
                if failed > 0 {
                    return Err(format!("{failed} acks failed").into());
                }
                done.fetch_add(ids.len() as u64, Ordering::Relaxed);
                out.last_done = Some(Instant::now());
            }
            Ok::<_, BoxError>(out)
        }));
    }
    let (mut receive_ns, mut ack_ns, mut ack_calls, mut last) = (Vec::new(), Vec::new(), 0, start);
    for t in tasks {
        let out = t.await??;
        receive_ns.extend(out.receive_ns);
        ack_ns.extend(out.ack_ns);
        ack_calls += out.ack_calls;
        if let Some(l) = out.last_done {
            last = last.max(l);
        }
    }
    let cpu = Cpu::since(&threads, Client::Runtime);
    close_engine(engine, &dir)?;
    Ok(SharedRun {
        size,
        receivers,
        batched,
        messages: done.load(Ordering::Relaxed),
        elapsed: last - start,
        receives: receive_ns.len() as u64,
        ack_calls,
        receive_ns,
        ack_ns,
        by_time: by_time.load(Ordering::Relaxed),
        cpu,
    })
}

// ---------------------------------------------------------------------------------------------
// Latency at a fixed rate

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    Shared,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Stream => "stream (fetch, wait 200 ms; commit each batch in the background)",
            Kind::Shared => "shared (receive, wait 200 ms; ack each batch in the background)",
        }
    }
}

struct LatencyRun {
    kind: Kind,
    sent: u64,
    delivered: u64,
    /// From the first publish to the last one issued.
    publish_span: Duration,
    /// Publish→deliver, sorted ns.
    deliver_ns: Vec<u64>,
    /// Slot→deliver (from the message's place in the schedule, so that a late publisher or a
    /// late-starting publish task counts too), sorted ns.
    slot_ns: Vec<u64>,
    /// Publish call latency, sorted ns.
    publish_ns: Vec<u64>,
    /// How late each publish was issued against its schedule, sorted ns.
    lag_ns: Vec<u64>,
    /// Deliveries per consumer call (mean).
    per_call: f64,
    cpu: Cpu,
    elapsed: Duration,
}

/// Nanoseconds since `epoch`, as written into and read from the payloads.
fn stamp(epoch: Instant) -> u64 {
    elapsed_ns(epoch)
}

fn latency_cell(rt: &Runtime, s: &Settings, dir: &Path, kind: Kind) -> BoxResult<LatencyRun> {
    let epoch = Instant::now();
    let engine = rt.block_on(open_engine(dir, 1))?;
    let config = match kind {
        Kind::Stream => SubscriptionConfig::Stream(StreamConfig::default()),
        Kind::Shared => SubscriptionConfig::Shared(SharedConfig::default()),
    };
    rt.block_on(engine.create_subscription(TOPIC, SUB, config))?;
    let member = match kind {
        Kind::Stream => Some(rt.block_on(engine.join(TOPIC, SUB, None))?.member_id),
        Kind::Shared => None,
    };
    // Messages the consumer must see before it stops (set once publishing ends), and a stop.
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (engine, expected, stop) = (engine.clone(), expected.clone(), stop.clone());
        rt.spawn(async move {
            let mut deliver_ns: Vec<u64> = Vec::new();
            let mut slot_ns: Vec<u64> = Vec::new();
            let mut calls = 0u64;
            let mut background = Vec::new();
            let mut last_commit: Option<tokio::task::JoinHandle<()>> = None;
            let wait = Duration::from_millis(200);
            while (deliver_ns.len() as u64) < expected.load(Ordering::Acquire)
                && !stop.load(Ordering::Acquire)
            {
                match &member {
                    Some(member) => {
                        let request = FetchRequest {
                            max_messages: FETCH_MAX,
                            max_bytes: 1 << 20,
                            wait,
                        };
                        let got = engine.fetch(TOPIC, SUB, member, request).await?;
                        calls += 1;
                        let now = stamp(epoch);
                        let Some(last) = got.last() else { continue };
                        let next = last.offset + 1;
                        for m in &got {
                            deliver_ns.push(now.saturating_sub(read_stamp(&m.value, 0)));
                            slot_ns.push(now.saturating_sub(read_stamp(&m.value, 8)));
                        }
                        // One commit in flight at most; the next batch's covers this one.
                        if last_commit.as_ref().is_none_or(|h| h.is_finished()) {
                            let (engine, member) = (engine.clone(), member.clone());
                            last_commit = Some(tokio::spawn(async move {
                                let _ = engine
                                    .commit(
                                        TOPIC,
                                        SUB,
                                        &member,
                                        vec![Committed {
                                            partition: 0,
                                            offset: next,
                                        }],
                                    )
                                    .await;
                            }));
                        }
                    }
                    None => {
                        let request = ReceiveRequest {
                            member: Some("lat".into()),
                            max: FETCH_MAX,
                            lease: None,
                            wait,
                        };
                        let got = engine.receive(TOPIC, SUB, request).await?;
                        calls += 1;
                        let now = stamp(epoch);
                        if got.is_empty() {
                            continue;
                        }
                        for d in &got {
                            deliver_ns.push(now.saturating_sub(read_stamp(&d.message.value, 0)));
                            slot_ns.push(now.saturating_sub(read_stamp(&d.message.value, 8)));
                        }
                        let ids: Vec<String> = got.into_iter().map(|d| d.ack_id).collect();
                        let engine = engine.clone();
                        background.push(tokio::spawn(async move {
                            let _ = engine.ack(TOPIC, SUB, &ids).await;
                        }));
                    }
                }
            }
            background.extend(last_commit);
            for b in background {
                let _ = b.await;
            }
            Ok::<_, BoxError>((deliver_ns, slot_ns, calls))
        })
    };
    // The publisher: this thread, sleeping until each message's slot, spawning one publish
    // task per message.
    let handle = rt.handle().clone();
    let count = s.latency_count;
    let threads = ThreadSnap::take();
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(LATENCY_MAX_SECS);
    let mut publishes = Vec::with_capacity(count as usize);
    let mut lag_ns = Vec::with_capacity(count as usize);
    let filler = payload(LATENCY_SIZE, 3);
    let mut sent = 0u64;
    while sent < count {
        let slot = start + Duration::from_secs_f64(sent as f64 / LATENCY_RATE);
        let now = Instant::now();
        if now < slot {
            std::thread::sleep(slot - now);
            continue;
        }
        if now >= stop_at {
            break;
        }
        lag_ns.push(u64::try_from((now - slot).as_nanos()).unwrap_or(u64::MAX));
        let engine = engine.clone();
        let filler = filler.clone();
        let slot_stamp = u64::try_from((slot - epoch).as_nanos()).unwrap_or(u64::MAX);
        publishes.push(handle.spawn(async move {
            let mut value = filler.to_vec();
            let t0 = Instant::now();
            value[..8].copy_from_slice(&stamp(epoch).to_le_bytes());
            value[8..16].copy_from_slice(&slot_stamp.to_le_bytes());
            engine
                .publish(TOPIC, vec![Message::new(Bytes::from(value))])
                .await?;
            Ok::<_, BoxError>(elapsed_ns(t0))
        }));
        sent += 1;
    }
    let publish_span = start.elapsed();
    let mut publish_ns = Vec::with_capacity(publishes.len());
    for p in publishes {
        publish_ns.push(rt.block_on(p)??);
    }
    expected.store(sent, Ordering::Release);
    // Grace for the last deliveries; then give up (whatever was not delivered is reported).
    let grace = Instant::now() + Duration::from_secs(5);
    while !consumer.is_finished() && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Release);
    let (mut deliver_ns, mut slot_ns, calls) = rt.block_on(consumer)??;
    let elapsed = start.elapsed();
    let cpu = Cpu::since(&threads, Client::Runtime);
    rt.block_on(async { close_engine(engine, dir) })?;
    deliver_ns.sort_unstable();
    slot_ns.sort_unstable();
    publish_ns.sort_unstable();
    lag_ns.sort_unstable();
    Ok(LatencyRun {
        kind,
        sent,
        delivered: deliver_ns.len() as u64,
        publish_span,
        per_call: deliver_ns.len() as f64 / calls.max(1) as f64,
        deliver_ns,
        slot_ns,
        publish_ns,
        lag_ns,
        cpu,
        elapsed,
    })
}

/// The stamp at byte `at` of a payload.
fn read_stamp(value: &[u8], at: usize) -> u64 {
    value
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

// ---------------------------------------------------------------------------------------------
// Main

fn main() {
    exit_on_error("wharf-broker bench", run());
}

#[allow(clippy::too_many_lines)]
fn run() -> BoxResult<()> {
    let s = Settings::from_env()?;
    let root = temp_data_dir(&s.base, "wharf-broker-bench-")?;
    let data = root.path().to_path_buf();
    let started = Instant::now();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(RT_THREAD)
        .enable_all()
        .build()?;

    // --- Header ---------------------------------------------------------------------------
    let mut header = run_header(
        &s.command(),
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &data,
        [
            format!(
                "runtime: tokio multi-thread, {workers} workers; engine: EmbeddedEngine, topics `always`, TopicConfig::default() otherwise; log baseline: LogConfig::default() but `always`"
            ),
            format!(
                "limits per cell: {:.1} s, {} publishes; consume pre-fill {} messages (at most {:.0} MB), shared pre-fill {}; latency {} messages at {} msg/s (at most {:.0} s){}",
                s.secs.as_secs_f64(),
                grouped(s.max_records as f64),
                grouped(s.consume_records as f64),
                PREFILL_MAX_BYTES as f64 / MB,
                grouped(s.shared_records as f64),
                grouped(s.latency_count as f64),
                grouped(LATENCY_RATE),
                LATENCY_MAX_SECS,
                if s.quick { " (--quick)" } else { "" }
            ),
        ],
    );
    println!("wharf-broker benchmark");
    for h in &header {
        println!("  {h}");
    }
    println!();

    let mut cell_no = 0u32;
    let mut cell_dir = |name: &str| {
        cell_no += 1;
        data.join(format!("{cell_no:03}-{name}"))
    };
    let mut tables: Vec<Table> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();

    // --- Publish matrix --------------------------------------------------------------------
    if s.runs("publish") {
        let mut runs: Vec<PublishRun> = Vec::new();
        for &size in &RECORD_SIZES {
            for &in_flight in &IN_FLIGHT {
                let log = log_cell(
                    &s,
                    &cell_dir(&format!("log-{size}-f{in_flight}")),
                    size,
                    in_flight,
                )?;
                eprintln!(
                    "[publish] wharf-log {} @{in_flight}: {}",
                    size_label(size),
                    log.summary()
                );
                runs.push(log);
                for &partitions in &PARTITIONS {
                    let dir = cell_dir(&format!("broker-{size}-p{partitions}-f{in_flight}"));
                    let r = on_rt(
                        &rt,
                        broker_cell(s.clone(), dir, partitions, size, in_flight),
                    )?;
                    eprintln!(
                        "[publish] broker {} p{partitions} @{in_flight}: {}",
                        size_label(size),
                        r.summary()
                    );
                    runs.push(r);
                }
            }
        }
        let mut table = Table::new(
            "Publish, `always` (single-message publishes / single-record appends; MB = 10^6 payload bytes; latency = one call, including the wait behind the others in flight)",
            &[
                "engine",
                "record",
                "partitions",
                "in flight",
                "records",
                "secs",
                "records/s",
                "MB/s",
                "vs log",
                "p50 µs",
                "p99 µs",
                "appends/fsync",
                "appends/commit write",
                "stopped by",
            ],
            2,
        );
        let mut diag = Table::new(
            "Diagnostics of the publish cells (from /proc over the cell; client = the runtime's worker threads for the broker, the submitting thread for the log)",
            &[
                "engine",
                "record",
                "partitions",
                "in flight",
                "client cpu µs/msg",
                "committer cpu µs/msg",
                "other cpu µs/msg",
                "client switches/msg",
                "committer switches/msg",
                "cpu busy %",
            ],
            2,
        );
        for r in &runs {
            let base = runs
                .iter()
                .find(|b| b.side == Side::Log && b.size == r.size && b.in_flight == r.in_flight);
            let vs = match (r.side, base) {
                (Side::Broker, Some(b)) => {
                    format!("{:.0}%", r.records_per_sec() / b.records_per_sec() * 100.0)
                }
                _ => "-".into(),
            };
            table.row(vec![
                r.side.label().into(),
                size_label(r.size),
                r.partitions.to_string(),
                r.in_flight.to_string(),
                grouped(r.records as f64),
                fixed(secs_of(r.elapsed), 2),
                grouped(r.records_per_sec()),
                fixed(r.mb_per_sec(), 1),
                vs,
                micros(r.p50_us),
                micros(r.p99_us),
                r.fsyncs
                    .map_or_else(|| "-".into(), |(a, f)| fixed(a as f64 / f.max(1) as f64, 1)),
                fixed(r.records as f64 / r.cpu.committers.writes.max(1) as f64, 1),
                stopped_by(r.by_time),
            ]);
            let per = |x: u64| fixed(r.per_msg(x * 1000), 2);
            diag.row(vec![
                r.side.label().into(),
                size_label(r.size),
                r.partitions.to_string(),
                r.in_flight.to_string(),
                fixed(r.per_msg(r.cpu.client.cpu_ns), 2),
                fixed(r.per_msg(r.cpu.committers.cpu_ns), 2),
                fixed(r.per_msg(r.cpu.other.cpu_ns), 2),
                per(r.cpu.client.switches),
                per(r.cpu.committers.switches),
                fixed(
                    r.cpu.total_ns() as f64 / 1e9 / secs_of(r.elapsed) * 100.0,
                    0,
                ),
            ]);
        }
        tables.push(table);
        tables.push(diag);
    }

    // --- Target: interleaved rounds ---------------------------------------------------------
    if s.runs("target") {
        let mut table = Table::new(
            "Target check: interleaved rounds (log and broker back to back; 100 B, 256 in flight, 1 partition)",
            &["round", "wharf-log", "broker", "broker / log"],
            1,
        );
        let mut ratios = Vec::new();
        let (mut log_rates, mut broker_rates) = (Vec::new(), Vec::new());
        for round in 1..=s.rounds {
            let log = log_cell(
                &s,
                &cell_dir(&format!("target-log-{round}")),
                TARGET_SIZE,
                TARGET_IN_FLIGHT,
            )?;
            let dir = cell_dir(&format!("target-broker-{round}"));
            let broker = on_rt(
                &rt,
                broker_cell(s.clone(), dir, 1, TARGET_SIZE, TARGET_IN_FLIGHT),
            )?;
            let ratio = broker.records_per_sec() / log.records_per_sec();
            eprintln!(
                "[target, round {round}] log {}, broker {}: {:.0}%",
                grouped(log.records_per_sec()),
                grouped(broker.records_per_sec()),
                ratio * 100.0
            );
            table.row(vec![
                round.to_string(),
                format!(
                    "{} rec/s, p50 {} µs, {} appends/fsync",
                    grouped(log.records_per_sec()),
                    micros(log.p50_us),
                    log.fsyncs
                        .map_or_else(|| "-".into(), |(a, f)| fixed(a as f64 / f.max(1) as f64, 1))
                ),
                format!(
                    "{} rec/s, p50 {} µs, ~{} appends/commit write, worker cpu {} µs/msg",
                    grouped(broker.records_per_sec()),
                    micros(broker.p50_us),
                    fixed(
                        broker.records as f64 / broker.cpu.committers.writes.max(1) as f64,
                        1
                    ),
                    fixed(broker.per_msg(broker.cpu.client.cpu_ns), 2)
                ),
                format!("{:.0}%", ratio * 100.0),
            ]);
            ratios.push(ratio);
            log_rates.push(log.records_per_sec());
            broker_rates.push(broker.records_per_sec());
        }
        let med = median(&ratios);
        targets.push(Target {
            pass: med >= TARGET_RATIO,
            text: format!(
                "`always` publish, 100 B, 256 in flight, 1 partition: broker {} rec/s = **{:.0}%** of wharf-log's {} rec/s (medians; ratio median of interleaved rounds: {}) (target >= {:.0}%)",
                grouped(median(&broker_rates)),
                med * 100.0,
                grouped(median(&log_rates)),
                ratios
                    .iter()
                    .map(|r| format!("{:.0}%", r * 100.0))
                    .collect::<Vec<_>>()
                    .join(", "),
                TARGET_RATIO * 100.0
            ),
        });
        tables.push(table);
    }

    // --- Stream consume -----------------------------------------------------------------------
    if s.runs("consume") {
        let mut table = Table::new(
            "Stream consume (one member; fetch max 1000 messages, then commit, until drained; fetch p50/p99 per call)",
            &[
                "record",
                "fetch max_bytes",
                "messages",
                "secs",
                "messages/s",
                "MB/s",
                "msgs/fetch",
                "fetch time %",
                "commit time %",
                "fetch p50 µs",
                "fetch p99 µs",
                "commit p50 µs",
                "worker cpu µs/msg",
                "committer cpu µs/msg",
                "stopped by",
            ],
            2,
        );
        for &size in &RECORD_SIZES {
            for max_bytes in [1 << 20, FETCH_MAX * size] {
                let dir = cell_dir(&format!("consume-{size}-{max_bytes}"));
                let mut r = on_rt(&rt, consume_cell(s.clone(), dir, size, max_bytes))?;
                r.fetch_ns.sort_unstable();
                r.commit_ns.sort_unstable();
                eprintln!(
                    "[consume] {} max_bytes {max_bytes}: {} msg/s",
                    size_label(size),
                    grouped(r.per_sec())
                );
                let secs = secs_of(r.elapsed);
                let per_msg = |ns: u64| fixed(ns as f64 / 1e3 / r.messages.max(1) as f64, 2);
                table.row(vec![
                    size_label(r.size),
                    if r.max_bytes == 1 << 20 {
                        "1 MiB (default)".into()
                    } else {
                        format!("{} B (1000 x record)", grouped(r.max_bytes as f64))
                    },
                    grouped(r.messages as f64),
                    fixed(secs, 2),
                    grouped(r.per_sec()),
                    fixed((r.messages * r.size as u64) as f64 / MB / secs, 1),
                    fixed(r.messages as f64 / r.fetches.max(1) as f64, 0),
                    fixed(sum_secs(&r.fetch_ns) / secs * 100.0, 0),
                    fixed(sum_secs(&r.commit_ns) / secs * 100.0, 0),
                    micros(percentile_us(&r.fetch_ns, 0.5)),
                    micros(percentile_us(&r.fetch_ns, 0.99)),
                    micros(percentile_us(&r.commit_ns, 0.5)),
                    per_msg(r.cpu.client.cpu_ns),
                    per_msg(r.cpu.committers.cpu_ns),
                    stopped_by(r.by_time),
                ]);
            }
        }
        tables.push(table);
    }

    // --- Shared receive + ack -----------------------------------------------------------------
    if s.runs("shared") {
        let mut table = Table::new(
            "Shared receive + ack (receive max 100, then ack the batch in one call or one call per id; time % summed over receivers)",
            &[
                "record",
                "receivers",
                "ack",
                "messages",
                "secs",
                "messages/s",
                "receives",
                "ack calls",
                "receive time %",
                "ack time %",
                "receive p50 µs",
                "ack p50 µs/batch",
                "worker cpu µs/msg",
                "committer cpu µs/msg",
                "stopped by",
            ],
            3,
        );
        for receivers in [1, 4] {
            for batched in [true, false] {
                let size = 100;
                let dir = cell_dir(&format!(
                    "shared-{size}-r{receivers}-{}",
                    if batched { "batched" } else { "single" }
                ));
                let mut r = on_rt(&rt, shared_cell(s.clone(), dir, size, receivers, batched))?;
                r.receive_ns.sort_unstable();
                r.ack_ns.sort_unstable();
                eprintln!(
                    "[shared] {} receivers {receivers} {}: {} msg/s",
                    size_label(size),
                    if batched { "batched" } else { "single" },
                    grouped(r.per_sec())
                );
                let secs = secs_of(r.elapsed);
                let busy = secs * r.receivers as f64;
                let per_msg = |ns: u64| fixed(ns as f64 / 1e3 / r.messages.max(1) as f64, 2);
                table.row(vec![
                    size_label(r.size),
                    r.receivers.to_string(),
                    if r.batched {
                        "batched".into()
                    } else {
                        "single".into()
                    },
                    grouped(r.messages as f64),
                    fixed(secs, 2),
                    grouped(r.per_sec()),
                    grouped(r.receives as f64),
                    grouped(r.ack_calls as f64),
                    fixed(sum_secs(&r.receive_ns) / busy * 100.0, 0),
                    fixed(sum_secs(&r.ack_ns) / busy * 100.0, 0),
                    micros(percentile_us(&r.receive_ns, 0.5)),
                    micros(percentile_us(&r.ack_ns, 0.5)),
                    per_msg(r.cpu.client.cpu_ns),
                    per_msg(r.cpu.committers.cpu_ns),
                    stopped_by(r.by_time),
                ]);
            }
        }
        tables.push(table);
    }

    // --- Latency at a fixed rate ----------------------------------------------------------------
    if s.runs("latency") {
        let mut table = Table::new(
            "Publish→deliver latency at a fixed rate (100 B, `always`, one publish task per message, paced by a thread; latency from the stamp written just before publish to the consumer call's return)",
            &[
                "subscription",
                "target msg/s",
                "achieved msg/s",
                "sent",
                "delivered",
                "msgs/call",
                "p50 µs",
                "p90 µs",
                "p99 µs",
                "max µs",
                "p99 from slot µs",
                "publish p50 µs",
                "publish p99 µs",
                "pacing lag p99 µs",
                "cpu busy %",
            ],
            1,
        );
        for kind in [Kind::Stream, Kind::Shared] {
            let dir = cell_dir(match kind {
                Kind::Stream => "latency-stream",
                Kind::Shared => "latency-shared",
            });
            let r = latency_cell(&rt, &s, &dir, kind)?;
            eprintln!(
                "[latency] {}: p50 {} us, p99 {} us, max {} us ({} of {} delivered)",
                match kind {
                    Kind::Stream => "stream",
                    Kind::Shared => "shared",
                },
                micros(percentile_us(&r.deliver_ns, 0.5)),
                micros(percentile_us(&r.deliver_ns, 0.99)),
                micros(percentile_us(&r.deliver_ns, 1.0)),
                r.delivered,
                r.sent
            );
            table.row(vec![
                r.kind.label().into(),
                grouped(LATENCY_RATE),
                grouped(r.sent as f64 / secs_of(r.publish_span)),
                grouped(r.sent as f64),
                grouped(r.delivered as f64),
                fixed(r.per_call, 1),
                micros(percentile_us(&r.deliver_ns, 0.5)),
                micros(percentile_us(&r.deliver_ns, 0.9)),
                micros(percentile_us(&r.deliver_ns, 0.99)),
                micros(percentile_us(&r.deliver_ns, 1.0)),
                micros(percentile_us(&r.slot_ns, 0.99)),
                micros(percentile_us(&r.publish_ns, 0.5)),
                micros(percentile_us(&r.publish_ns, 0.99)),
                micros(percentile_us(&r.lag_ns, 0.99)),
                fixed(
                    r.cpu.total_ns() as f64 / 1e9 / secs_of(r.elapsed) * 100.0,
                    0,
                ),
            ]);
        }
        tables.push(table);
    }

    header.extend(end_lines(started));
    drop(rt);

    // --- Print -----------------------------------------------------------------------------
    let notes = [
        "records/s count from the first call until the last one completed; the engine's open, topic creation and close are outside the cell.",
        "`vs log`: broker records/s over the wharf-log row of the same record size and in-flight count in the matrix (context only; the verdict uses the interleaved rounds).",
        "appends/fsync (log only) = Δsynced_appends/Δfsyncs. The broker's logs are not reachable from outside the engine, so `appends/commit write` estimates its group size from the committer threads' write calls (`syscw` in /proc: one `pwrite` per group commit, two when a group passes 256 KiB, so 1 KiB rows above ~250 read about half); the wharf-log rows show how well it matches.",
        "cpu busy % = CPU time of every thread of the process over the cell's wall time (200% = both cores).",
        "pacing lag: how late the publisher thread issued a message against its slot (start + i/rate); `p99 from slot` measures delivery from the slot instead of from the publish call, so it also counts that lag and any delay before the publish task ran (no coordinated omission).",
    ];
    let tables: Vec<&Table> = tables.iter().collect();
    let report = Report {
        header: &header,
        tables: &tables,
        notes: &notes,
        targets_about: "verdicts from the interleaved rounds",
        targets: &targets,
    };
    print!("{}", report.text());
    write_markdown(s.md_path.as_deref(), &report.markdown())?;
    Ok(())
}
