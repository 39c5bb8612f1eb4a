//! Throughput and latency benchmark of `wharf-log`, judged against a raw-disk baseline measured
//! in the same run on the same directory.
//!
//! ```text
//! cargo bench -p wharf-log --bench log              # full run, a few minutes
//! cargo bench -p wharf-log --bench log -- --quick   # smoke run, tiny counts
//! ```
//!
//! What it measures:
//! - appends in the `none`, `interval` (10 ms) and `always` durability modes, for 100 B and
//!   1 KiB records, single-record appends and batches of 100 records, with 1, 8 and 64 appends
//!   in flight (one submitting thread keeps that many un-completed tickets outstanding: it
//!   submits until N are outstanding, then waits the oldest). Records/s, MB/s, appends per
//!   fsync, and the latency of an append from submit to `wait()` returned (p50/p99);
//! - sequential reads of a log written earlier, from the page cache, whole batches (MB/s) and
//!   decoded records (records/s);
//! - the raw disk: plain sequential `write_all` of the same chunk sizes as the log's batches
//!   (MB/s), and `write_all` + `fdatasync` of those sizes (ops/s), before and after the log runs;
//! - diagnostics per append cell, from `/proc`: CPU time and context switches per append of the
//!   submitting thread and of the log's committer thread, and segment rolls;
//! - the project's targets, each PASS or MISS with its numbers. Their verdicts come from
//!   interleaved rounds (baseline, log, baseline, log, ...) run after the matrix, so that the
//!   drifting load of a shared machine hits both sides of a ratio alike.
//!
//! Every cell is bounded by a record count, a byte count and a time limit, whichever comes
//! first. Knobs (environment): `WHARF_BENCH_DIR` (where the data goes; a fresh temporary
//! directory is made inside it; default `<target dir>/wharf-bench`, or `/var/tmp` if that is
//! on tmpfs), `WHARF_BENCH_SECS` (time limit per cell, default 2), `WHARF_BENCH_MAX_MB` (byte
//! limit per cell, default 1024), `WHARF_BENCH_MAX_RECORDS` (record limit per cell, default
//! 8000000), `WHARF_BENCH_SEGMENT_MB` (`segment_max_bytes` of the logs, default the log's
//! default), `WHARF_BENCH_MD` (also write the results as markdown to this file). Arguments:
//! `--quick` (tiny counts, for smoke runs); unknown arguments (such as the `--bench` that
//! `cargo bench` passes) are ignored.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wharf_benchkit::{
    BoxResult, LOG_COMMITTER_THREAD, MB, Report, Table, Target, ThreadStat, bench_base, elapsed_ns,
    end_lines, env_parse, env_path, env_secs, exit_on_error, fixed, grouped, has_arg, median,
    micros, payload, percentile_us, reproduce_command, run_header, secs_of, size_label, stopped_by,
    temp_data_dir, write_markdown,
};
use wharf_log::{Durability, Log, LogConfig, NewRecord};

const RECORD_SIZES: [usize; 2] = [100, 1024];
const BATCHES: [usize; 2] = [1, 100];
const IN_FLIGHT: [usize; 3] = [1, 8, 64];
const MODES: [Mode; 3] = [Mode::None, Mode::Interval, Mode::Always];
/// `max_bytes` of each `Log::read` call of the read benchmark.
const READ_CHUNK: usize = 1 << 20;
const INTERVAL: Duration = Duration::from_millis(10);
const KNOBS: [&str; 6] = [
    "WHARF_BENCH_DIR",
    "WHARF_BENCH_SECS",
    "WHARF_BENCH_MAX_MB",
    "WHARF_BENCH_MAX_RECORDS",
    "WHARF_BENCH_SEGMENT_MB",
    "WHARF_BENCH_MD",
];

// ---------------------------------------------------------------------------------------------
// Settings

#[derive(Clone)]
struct Settings {
    quick: bool,
    /// Time limit of one cell.
    secs: Duration,
    /// Record limit of one cell.
    max_records: u64,
    /// Byte limit (encoded bytes) of one cell.
    max_bytes: u64,
    /// Whole-log passes of one read cell, at most.
    max_read_passes: u32,
    /// `LogConfig::segment_max_bytes`, if not the default.
    segment_max_bytes: Option<u64>,
    /// Where the temporary data directory is created.
    base: PathBuf,
    md_path: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> BoxResult<Self> {
        let quick = has_arg("--quick");
        let secs = env_secs(if quick { 0.2 } else { 2.0 })?;
        let max_mb: f64 =
            env_parse("WHARF_BENCH_MAX_MB")?.unwrap_or(if quick { 4.0 } else { 1024.0 });
        let max_records: u64 =
            env_parse("WHARF_BENCH_MAX_RECORDS")?.unwrap_or(if quick { 2_000 } else { 8_000_000 });
        let segment_mb: Option<u64> = env_parse("WHARF_BENCH_SEGMENT_MB")?;
        Ok(Self {
            quick,
            secs: Duration::from_secs_f64(secs),
            max_records: max_records.max(1),
            max_bytes: ((max_mb * MB) as u64).max(1),
            max_read_passes: if quick { 1 } else { 20 },
            segment_max_bytes: segment_mb.map(|mb| mb << 20),
            base: bench_base(),
            md_path: env_path("WHARF_BENCH_MD"),
        })
    }

    fn command(&self) -> String {
        let args = self.quick.then_some("--quick");
        reproduce_command(&KNOBS, "cargo bench -p wharf-log --bench log", args)
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    None,
    Interval,
    Always,
}

impl Mode {
    fn durability(self) -> Durability {
        match self {
            Mode::None => Durability::None,
            Mode::Interval => Durability::Interval(INTERVAL),
            Mode::Always => Durability::Always,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Interval => "interval",
            Mode::Always => "always",
        }
    }
}

fn make_batch(record_size: usize, batch: usize) -> Vec<NewRecord> {
    (0..batch)
        .map(|i| NewRecord::new(payload(record_size, 0x9e37_79b9 + i as u64)))
        .collect()
}

struct AppendRun {
    record_size: usize,
    batch: usize,
    mode: Mode,
    in_flight: usize,
    appends: u64,
    records: u64,
    /// Encoded bytes (batch headers, record framing and payload).
    bytes: u64,
    elapsed: Duration,
    fsyncs: u64,
    synced_appends: u64,
    p50_us: f64,
    p99_us: f64,
    by_time: bool,
    /// The submitting thread over the cell.
    submitter: Option<ThreadStat>,
    /// The committer thread over the cell.
    committer: Option<ThreadStat>,
    segments_added: usize,
}

impl AppendRun {
    fn secs(&self) -> f64 {
        secs_of(self.elapsed)
    }

    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs()
    }

    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / MB / self.secs()
    }

    /// `always`: appends completed by fsyncs / fsyncs; `interval`: appends / fsyncs.
    fn appends_per_fsync(&self) -> Option<f64> {
        let appends = match self.mode {
            Mode::None => return None,
            Mode::Interval => self.appends,
            Mode::Always => self.synced_appends,
        };
        (self.fsyncs > 0).then(|| appends as f64 / self.fsyncs as f64)
    }
}

/// One append cell: a fresh log in `dir`, one submitting thread keeping `in_flight` tickets
/// outstanding. Returns the log still open (for the read benchmark).
fn run_append(
    s: &Settings,
    dir: &Path,
    record_size: usize,
    batch: usize,
    mode: Mode,
    in_flight: usize,
) -> BoxResult<(AppendRun, Log)> {
    let mut config = LogConfig {
        durability: mode.durability(),
        ..LogConfig::default()
    };
    if let Some(max) = s.segment_max_bytes {
        config.segment_max_bytes = max;
    }
    let old_tasks = tasks();
    let (log, _report) = Log::open(dir, config)?;
    let committer = committer_task(&old_tasks);
    let records = make_batch(record_size, batch);
    let batch_bytes = wharf_log::format::encoded_batch_len(&records);
    let max_appends = (s.max_records / batch as u64)
        .min(s.max_bytes / batch_bytes)
        .max(1);
    let mut latencies: Vec<u64> = Vec::with_capacity(max_appends.min(1 << 22) as usize);
    let mut queue = VecDeque::with_capacity(in_flight + 1);
    let before = log.stats();
    let threads_before = thread_stats(committer.as_deref());
    let start = Instant::now();
    let deadline = start + s.secs;
    let mut submitted = 0u64;
    let mut by_time = false;
    while submitted < max_appends {
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
    let threads_after = thread_stats(committer.as_deref());
    let after = log.stats();
    latencies.sort_unstable();
    let run = AppendRun {
        record_size,
        batch,
        mode,
        in_flight,
        appends: after.appends - before.appends,
        records: after.records - before.records,
        bytes: after.bytes - before.bytes,
        elapsed,
        fsyncs: after.fsyncs - before.fsyncs,
        synced_appends: after.synced_appends - before.synced_appends,
        p50_us: percentile_us(&latencies, 0.50),
        p99_us: percentile_us(&latencies, 0.99),
        by_time,
        submitter: threads_after
            .0
            .zip(threads_before.0)
            .map(|(a, b)| a.since(b)),
        committer: threads_after
            .1
            .zip(threads_before.1)
            .map(|(a, b)| a.since(b)),
        segments_added: after.segments.saturating_sub(before.segments),
    };
    Ok((run, log))
}

fn tasks() -> Vec<PathBuf> {
    fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The `/proc` directory of the committer thread of a log just opened: the thread that did not
/// exist before (`old`). The thread names itself only once running, so the name
/// ("wharf-log-commit", which the kernel cuts to 15 bytes) is not a reliable way to find it.
fn committer_task(old: &[PathBuf]) -> Option<PathBuf> {
    let new: Vec<PathBuf> = tasks().into_iter().filter(|t| !old.contains(t)).collect();
    let named = new.iter().find(|p| {
        fs::read_to_string(p.join("comm")).is_ok_and(|c| c.starts_with(LOG_COMMITTER_THREAD))
    });
    match (named, new.as_slice()) {
        (Some(p), _) => Some(p.clone()),
        (None, [only]) => Some(only.clone()),
        _ => None,
    }
}

/// Both threads' stats: (submitter, committer).
fn thread_stats(committer: Option<&Path>) -> (Option<ThreadStat>, Option<ThreadStat>) {
    (
        ThreadStat::read(Path::new("/proc/thread-self")),
        committer.and_then(ThreadStat::read),
    )
}

struct ReadRun {
    record_size: usize,
    batch: usize,
    decode: bool,
    log_bytes: u64,
    passes: u32,
    bytes: u64,
    records: u64,
    elapsed: Duration,
}

impl ReadRun {
    fn secs(&self) -> f64 {
        secs_of(self.elapsed)
    }

    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / MB / self.secs()
    }

    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs()
    }
}

/// Reads the whole log with `read(offset, 1 MiB)`; returns (batch bytes, records).
fn read_whole(log: &Log, decode: bool) -> BoxResult<(u64, u64)> {
    let end = log.high_watermark();
    let mut offset = log.start_offset();
    let (mut bytes, mut records) = (0u64, 0u64);
    while offset < end {
        let batches = log.read(offset, READ_CHUNK)?;
        let Some(last) = batches.last() else { break };
        offset = last.next_offset();
        for b in &batches {
            bytes += b.as_bytes().len() as u64;
            if decode {
                for r in b.records() {
                    black_box(r?);
                    records += 1;
                }
            } else {
                records += u64::from(b.header().record_count);
            }
        }
        black_box(batches);
    }
    Ok((bytes, records))
}

/// Whole-log read passes until the time limit (at least one, at most `max_read_passes`).
fn run_read(
    s: &Settings,
    log: &Log,
    record_size: usize,
    batch: usize,
    decode: bool,
) -> BoxResult<ReadRun> {
    // An untimed pass: the log was just written, so this only makes sure it is all cached.
    let (log_bytes, _) = read_whole(log, false)?;
    let start = Instant::now();
    let (mut passes, mut bytes, mut records) = (0u32, 0u64, 0u64);
    while passes < s.max_read_passes.max(1) && (passes == 0 || start.elapsed() < s.secs) {
        let (b, r) = read_whole(log, decode)?;
        bytes += b;
        records += r;
        passes += 1;
    }
    Ok(ReadRun {
        record_size,
        batch,
        decode,
        log_bytes,
        passes,
        bytes,
        records,
        elapsed: start.elapsed(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RawKind {
    /// `write_all`, no sync.
    Write,
    /// `write_all` then `fdatasync`, every time.
    WriteSync,
}

struct RawRun {
    kind: RawKind,
    size: usize,
    ops: u64,
    elapsed: Duration,
    /// Per-op latency percentiles (write + fdatasync runs only).
    p50_us: f64,
    p99_us: f64,
}

impl RawRun {
    fn secs(&self) -> f64 {
        secs_of(self.elapsed)
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs()
    }

    fn mb_per_sec(&self) -> f64 {
        (self.ops * self.size as u64) as f64 / MB / self.secs()
    }
}

/// Appends `size`-byte chunks to a new file in `dir` (synced empty first, as the log's segments
/// are), with or without an `fdatasync` after each; bounded like the log cells.
fn run_raw(s: &Settings, dir: &Path, kind: RawKind, size: usize) -> BoxResult<RawRun> {
    let path = dir.join(format!("raw-{size}.dat"));
    let mut file = File::create(&path)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    let chunk = payload(size, 42);
    let max_ops = (s.max_records).min(s.max_bytes / size as u64).max(1);
    let start = Instant::now();
    let deadline = start + s.secs;
    let mut ops = 0u64;
    let mut latencies = Vec::new();
    loop {
        let t0 = Instant::now();
        if ops >= max_ops || t0 >= deadline {
            break;
        }
        file.write_all(&chunk)?;
        if kind == RawKind::WriteSync {
            file.sync_data()?;
            latencies.push(elapsed_ns(t0));
        }
        ops += 1;
    }
    let elapsed = start.elapsed();
    drop(file);
    fs::remove_file(&path)?;
    latencies.sort_unstable();
    Ok(RawRun {
        kind,
        size,
        ops,
        elapsed,
        p50_us: percentile_us(&latencies, 0.50),
        p99_us: percentile_us(&latencies, 0.99),
    })
}

/// Encoded size of a batch of `batch` records of `record_size` bytes.
fn batch_len(record_size: usize, batch: usize) -> usize {
    wharf_log::format::encoded_batch_len(&make_batch(record_size, batch)) as usize
}

/// One append cell on a fresh log, which is closed and deleted afterwards.
fn append_cell(
    s: &Settings,
    dir: &Path,
    record_size: usize,
    batch: usize,
    mode: Mode,
    in_flight: usize,
) -> BoxResult<AppendRun> {
    let (run, log) = run_append(s, dir, record_size, batch, mode, in_flight)?;
    log.close()?;
    drop(log);
    fs::remove_dir_all(dir)?;
    Ok(run)
}

/// Results of the interleaved rounds behind the target verdicts.
#[derive(Default)]
struct Pairs {
    /// Target 1: log MB/s / raw write MB/s, per round.
    t1_ratio: Vec<f64>,
    /// Target 2, per record size: records/s at 64 in flight / at 1 in flight, per round.
    t2_speedup: Vec<Vec<f64>>,
    /// Target 2, per record size: (synced appends, fsyncs) at 64 in flight, all rounds.
    t2_fsyncs: Vec<(u64, u64)>,
    /// Target 3: log records/s / raw write+fdatasync ops/s, per round.
    t3_ratio: Vec<f64>,
    /// Target 3: (raw p50 µs, log p50 µs), per round.
    t3_p50: Vec<(f64, f64)>,
}

/// The target checks as interleaved rounds: each round measures the baseline and the log back
/// to back, so that a change in the machine's load affects both.
fn run_pairs(s: &Settings, dir: &Path) -> BoxResult<(Pairs, Table)> {
    fs::create_dir_all(dir)?;
    let rounds = if s.quick { 1 } else { 3 };
    let half = Settings {
        secs: s.secs / 2,
        ..s.clone()
    };
    let mut out = Pairs::default();
    let mut table = Table::new(
        "Target checks: interleaved rounds (baseline and log back to back)",
        &["check", "round", "baseline", "log", "ratio"],
        2,
    );
    let log_dir = |name: String| dir.join(name);

    let chunk = batch_len(1024, 100);
    for round in 1..=rounds {
        let raw = run_raw(s, dir, RawKind::Write, chunk)?;
        let log = append_cell(
            s,
            &log_dir(format!("t1-{round}")),
            1024,
            100,
            Mode::None,
            64,
        )?;
        let ratio = log.mb_per_sec() / raw.mb_per_sec();
        eprintln!("[target 1, round {round}] {:.0}%", ratio * 100.0);
        table.row(vec![
            "1. none 1 KiB x100 @64 vs raw write".into(),
            round.to_string(),
            format!("{} MB/s", fixed(raw.mb_per_sec(), 0)),
            format!("{} MB/s", fixed(log.mb_per_sec(), 0)),
            format!("{:.0}%", ratio * 100.0),
        ]);
        out.t1_ratio.push(ratio);
    }

    for &size in &RECORD_SIZES {
        let (mut speedups, mut synced, mut fsyncs) = (Vec::new(), 0, 0);
        for round in 1..=rounds {
            let one = append_cell(
                &half,
                &log_dir(format!("t2-{size}-{round}-1")),
                size,
                1,
                Mode::Always,
                1,
            )?;
            let many = append_cell(
                &half,
                &log_dir(format!("t2-{size}-{round}-64")),
                size,
                1,
                Mode::Always,
                64,
            )?;
            let speedup = many.records_per_sec() / one.records_per_sec();
            eprintln!("[target 2, {size} B, round {round}] {speedup:.1}x");
            table.row(vec![
                format!("2. always {} x1 @64 vs @1", size_label(size)),
                round.to_string(),
                format!("{} rec/s", grouped(one.records_per_sec())),
                format!(
                    "{} rec/s, {} appends/fsync",
                    grouped(many.records_per_sec()),
                    many.appends_per_fsync()
                        .map_or_else(|| "-".into(), |a| fixed(a, 1))
                ),
                format!("{speedup:.1}x"),
            ]);
            speedups.push(speedup);
            synced += many.synced_appends;
            fsyncs += many.fsyncs;
        }
        out.t2_speedup.push(speedups);
        out.t2_fsyncs.push((synced, fsyncs));
    }

    let chunk = batch_len(100, 100);
    for round in 1..=rounds {
        let raw = run_raw(&half, dir, RawKind::WriteSync, chunk)?;
        let log = append_cell(
            &half,
            &log_dir(format!("t3-{round}")),
            100,
            100,
            Mode::Always,
            1,
        )?;
        let ratio = log.records_per_sec() / raw.ops_per_sec();
        eprintln!("[target 3, round {round}] {ratio:.1}x");
        table.row(vec![
            "3. always 100 B x100 @1 vs raw write+fdatasync".into(),
            round.to_string(),
            format!(
                "{} ops/s, p50 {} µs",
                grouped(raw.ops_per_sec()),
                micros(raw.p50_us)
            ),
            format!(
                "{} rec/s, p50 {} µs",
                grouped(log.records_per_sec()),
                micros(log.p50_us)
            ),
            format!("{ratio:.1}x"),
        ]);
        out.t3_ratio.push(ratio);
        out.t3_p50.push((raw.p50_us, log.p50_us));
    }
    fs::remove_dir_all(dir)?;
    Ok((out, table))
}

// ---------------------------------------------------------------------------------------------
// Main

fn main() {
    exit_on_error("wharf-log bench", run());
}

#[allow(clippy::too_many_lines)]
fn run() -> BoxResult<()> {
    let s = Settings::from_env()?;
    let root = temp_data_dir(&s.base, "wharf-log-bench-")?;
    let data = root.path().to_path_buf();
    let started = Instant::now();

    // --- Header ---------------------------------------------------------------------------
    let mut header = run_header(
        &s.command(),
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &data,
        [
            format!(
                "limits per cell: {:.1} s, {} records, {:.0} MB{}",
                s.secs.as_secs_f64(),
                grouped(s.max_records as f64),
                s.max_bytes as f64 / MB,
                if s.quick { " (--quick)" } else { "" }
            ),
            format!(
                "log config: LogConfig::default() but durability; segment_max_bytes {} MiB{}",
                s.segment_max_bytes
                    .unwrap_or(LogConfig::default().segment_max_bytes)
                    >> 20,
                if s.segment_max_bytes.is_some() {
                    ""
                } else {
                    " (default)"
                }
            ),
        ],
    );
    println!("wharf-log benchmark");
    for h in &header {
        println!("  {h}");
    }
    println!();

    let cell_dir = |name: &str| data.join(name);

    // --- Raw baseline, pass 1 -------------------------------------------------------------
    let mut chunk_sizes: Vec<usize> = RECORD_SIZES
        .iter()
        .flat_map(|&r| {
            BATCHES
                .iter()
                .map(move |&b| wharf_log::format::encoded_batch_len(&make_batch(r, b)) as usize)
        })
        .collect();
    chunk_sizes.sort_unstable();
    let raw_pass = |pass: u32| -> BoxResult<Vec<RawRun>> {
        let dir = cell_dir(&format!("raw-{pass}"));
        fs::create_dir_all(&dir)?;
        let mut out = Vec::new();
        for kind in [RawKind::Write, RawKind::WriteSync] {
            for &size in &chunk_sizes {
                let r = run_raw(&s, &dir, kind, size)?;
                eprintln!(
                    "[raw pass {pass}] {} {size} B: {} ops/s, {} MB/s",
                    if kind == RawKind::Write {
                        "write"
                    } else {
                        "write+fdatasync"
                    },
                    grouped(r.ops_per_sec()),
                    fixed(r.mb_per_sec(), 1)
                );
                out.push(r);
            }
        }
        fs::remove_dir_all(&dir)?;
        Ok(out)
    };
    let raw1 = raw_pass(1)?;

    // --- Appends (and reads of the `none`, 64-in-flight logs) -------------------------------
    let mut appends: Vec<AppendRun> = Vec::new();
    let mut reads: Vec<ReadRun> = Vec::new();
    let total = RECORD_SIZES.len() * BATCHES.len() * MODES.len() * IN_FLIGHT.len();
    for &record_size in &RECORD_SIZES {
        for &batch in &BATCHES {
            for &mode in &MODES {
                for &in_flight in &IN_FLIGHT {
                    let dir = cell_dir(&format!(
                        "{}-{record_size}-x{batch}-f{in_flight}",
                        mode.label()
                    ));
                    let (run, log) = run_append(&s, &dir, record_size, batch, mode, in_flight)?;
                    eprintln!(
                        "[{}/{total}] {} {} x{batch} @{in_flight}: {} rec/s, {} MB/s, {} appends/fsync, p50 {} us, p99 {} us",
                        appends.len() + 1,
                        mode.label(),
                        size_label(record_size),
                        grouped(run.records_per_sec()),
                        fixed(run.mb_per_sec(), 1),
                        run.appends_per_fsync()
                            .map_or_else(|| "-".into(), |a| fixed(a, 1)),
                        micros(run.p50_us),
                        micros(run.p99_us),
                    );
                    appends.push(run);
                    if mode == Mode::None && in_flight == *IN_FLIGHT.last().unwrap_or(&1) {
                        for decode in [false, true] {
                            let r = run_read(&s, &log, record_size, batch, decode)?;
                            eprintln!(
                                "[read] {} x{batch} {}: {} MB/s, {} rec/s",
                                size_label(record_size),
                                if decode { "records" } else { "batches" },
                                fixed(r.mb_per_sec(), 0),
                                grouped(r.records_per_sec())
                            );
                            reads.push(r);
                        }
                    }
                    log.close()?;
                    drop(log);
                    fs::remove_dir_all(&dir)?;
                }
            }
        }
    }

    // --- Target checks: interleaved rounds ---------------------------------------------------
    let (pairs, pair_table) = run_pairs(&s, &cell_dir("pairs"))?;

    // --- Raw baseline, pass 2 -------------------------------------------------------------
    let raw2 = raw_pass(2)?;
    header.extend(end_lines(started));

    // --- Tables ----------------------------------------------------------------------------
    let best_raw = |kind: RawKind, size: usize| -> Option<&RawRun> {
        raw1.iter()
            .chain(&raw2)
            .filter(|r| r.kind == kind && r.size == size)
            .max_by(|a, b| a.ops_per_sec().total_cmp(&b.ops_per_sec()))
    };
    let mut raw_table = Table::new(
        "Raw disk baseline (same directory; pass 1 before the log runs, pass 2 after; the matrix context of the targets uses the better pass)",
        &[
            "operation",
            "write size",
            "pass 1 ops/s",
            "pass 1 MB/s",
            "p50 µs",
            "p99 µs",
            "pass 2 ops/s",
            "pass 2 MB/s",
            "p50 µs",
            "p99 µs",
        ],
        2,
    );
    for kind in [RawKind::Write, RawKind::WriteSync] {
        for &size in &chunk_sizes {
            let find = |v: &[RawRun]| v.iter().position(|r| r.kind == kind && r.size == size);
            let (Some(a), Some(b)) = (
                find(&raw1).and_then(|i| raw1.get(i)),
                find(&raw2).and_then(|i| raw2.get(i)),
            ) else {
                continue;
            };
            raw_table.row(vec![
                if kind == RawKind::Write {
                    "write".into()
                } else {
                    "write + fdatasync".into()
                },
                format!("{size} B"),
                grouped(a.ops_per_sec()),
                fixed(a.mb_per_sec(), 1),
                micros(a.p50_us),
                micros(a.p99_us),
                grouped(b.ops_per_sec()),
                fixed(b.mb_per_sec(), 1),
                micros(b.p50_us),
                micros(b.p99_us),
            ]);
        }
    }

    let mut append_table = Table::new(
        "Appends (one submitting thread; MB = 10^6 encoded bytes; latency = submit to wait() returned)",
        &[
            "record",
            "batch",
            "mode",
            "in flight",
            "records",
            "secs",
            "records/s",
            "MB/s",
            "appends/fsync",
            "p50 µs",
            "p99 µs",
            "stopped by",
        ],
        3,
    );
    for r in &appends {
        append_table.row(vec![
            size_label(r.record_size),
            r.batch.to_string(),
            r.mode.label().into(),
            r.in_flight.to_string(),
            grouped(r.records as f64),
            fixed(r.secs(), 2),
            grouped(r.records_per_sec()),
            fixed(r.mb_per_sec(), 1),
            r.appends_per_fsync()
                .map_or_else(|| "-".into(), |a| fixed(a, 1)),
            micros(r.p50_us),
            micros(r.p99_us),
            stopped_by(r.by_time),
        ]);
    }

    let mut diag_table = Table::new(
        "Diagnostics of the append cells (from /proc: thread CPU time and context switches over the cell)",
        &[
            "record",
            "batch",
            "mode",
            "in flight",
            "appends",
            "submitter cpu µs/append",
            "committer cpu µs/append",
            "submitter switches/append",
            "committer switches/append",
            "cpu busy %",
            "segment rolls",
        ],
        3,
    );
    for r in &appends {
        let per_append = |t: Option<ThreadStat>, f: fn(ThreadStat) -> f64| {
            t.map_or_else(|| "-".into(), |t| fixed(f(t) / r.appends.max(1) as f64, 2))
        };
        let busy = r
            .submitter
            .zip(r.committer)
            .map(|(a, b)| (a.cpu_ns + b.cpu_ns) as f64 / 1e9 / r.secs() * 100.0);
        diag_table.row(vec![
            size_label(r.record_size),
            r.batch.to_string(),
            r.mode.label().into(),
            r.in_flight.to_string(),
            grouped(r.appends as f64),
            per_append(r.submitter, |t| t.cpu_ns as f64 / 1e3),
            per_append(r.committer, |t| t.cpu_ns as f64 / 1e3),
            per_append(r.submitter, |t| t.switches as f64),
            per_append(r.committer, |t| t.switches as f64),
            busy.map_or_else(|| "-".into(), |b| fixed(b, 0)),
            r.segments_added.to_string(),
        ]);
    }

    let mut read_table = Table::new(
        "Sequential reads from the page cache (the `none`, 64-in-flight logs; read(offset, 1 MiB) in a loop)",
        &[
            "record",
            "batch",
            "variant",
            "log MB",
            "passes",
            "MB/s",
            "records/s",
        ],
        3,
    );
    for r in &reads {
        read_table.row(vec![
            size_label(r.record_size),
            r.batch.to_string(),
            if r.decode {
                "decode records".into()
            } else {
                "batches".into()
            },
            fixed(r.log_bytes as f64 / MB, 1),
            r.passes.to_string(),
            fixed(r.mb_per_sec(), 0),
            grouped(r.records_per_sec()),
        ]);
    }

    // --- Targets ---------------------------------------------------------------------------
    let find = |size: usize, batch: usize, mode: Mode, in_flight: usize| {
        appends.iter().find(|r| {
            r.record_size == size && r.batch == batch && r.mode == mode && r.in_flight == in_flight
        })
    };
    let mut targets: Vec<Target> = Vec::new();
    let rounds = |v: &[f64], f: &dyn Fn(f64) -> String| {
        v.iter().map(|&x| f(x)).collect::<Vec<_>>().join(", ")
    };
    // 1. none, 1 KiB x 100 >= 70% of raw sequential writes of the same chunk size.
    {
        let chunk = batch_len(1024, 100);
        let med = median(&pairs.t1_ratio);
        let matrix = IN_FLIGHT
            .iter()
            .filter_map(|&f| find(1024, 100, Mode::None, f))
            .max_by(|a, b| a.mb_per_sec().total_cmp(&b.mb_per_sec()))
            .zip(best_raw(RawKind::Write, chunk))
            .map_or_else(String::new, |(r, raw)| {
                format!(
                    "; matrix: best {} MB/s (@{}) = {:.0}% of the better raw pass {} MB/s",
                    fixed(r.mb_per_sec(), 0),
                    r.in_flight,
                    r.mb_per_sec() / raw.mb_per_sec() * 100.0,
                    fixed(raw.mb_per_sec(), 0)
                )
            });
        targets.push(Target {
            pass: med >= 0.70,
            text: format!(
                "1. none, 1 KiB records, batches of 100 (64 in flight): {:.0}% of raw sequential write MB/s at {chunk} B writes (median of interleaved rounds: {}) (target >= 70%){matrix}",
                med * 100.0,
                rounds(&pairs.t1_ratio, &|x| format!("{:.0}%", x * 100.0)),
            ),
        });
    }
    // 2. always, 64 single-record appends in flight: >= 32 appends/fsync and >= 20x of 1 in flight.
    for (k, &size) in RECORD_SIZES.iter().enumerate() {
        let (Some(speedups), Some(&(synced, fsyncs))) =
            (pairs.t2_speedup.get(k), pairs.t2_fsyncs.get(k))
        else {
            continue;
        };
        let per_fsync = synced as f64 / fsyncs.max(1) as f64;
        let med = median(speedups);
        let matrix = find(size, 1, Mode::Always, 64)
            .zip(find(size, 1, Mode::Always, 1))
            .map_or_else(String::new, |(r64, r1)| {
                format!(
                    "; matrix: {} vs {} rec/s = {:.1}x, {} appends/fsync",
                    grouped(r64.records_per_sec()),
                    grouped(r1.records_per_sec()),
                    r64.records_per_sec() / r1.records_per_sec(),
                    r64.appends_per_fsync()
                        .map_or_else(|| "-".into(), |a| fixed(a, 1))
                )
            });
        targets.push(Target {
            pass: per_fsync >= 32.0 && med >= 20.0,
            text: format!(
                "2. always, {} single-record appends, 64 vs 1 in flight: {per_fsync:.1} appends/fsync (target >= 32: {}); records/s {med:.1}x (median of interleaved rounds: {}) (target >= 20x: {}){matrix}",
                size_label(size),
                if per_fsync >= 32.0 { "ok" } else { "short" },
                rounds(speedups, &|x| format!("{x:.1}x")),
                if med >= 20.0 { "ok" } else { "short" },
            ),
        });
    }
    // 3. always, 100 B x 100, 1 in flight: >= 80x the raw write+fdatasync ops/s at that size.
    {
        let chunk = batch_len(100, 100);
        let med = median(&pairs.t3_ratio);
        let matrix = find(100, 100, Mode::Always, 1)
            .zip(best_raw(RawKind::WriteSync, chunk))
            .map_or_else(String::new, |(r, raw)| {
                format!(
                    "; matrix: {} rec/s = {:.1}x the better raw pass {} ops/s",
                    grouped(r.records_per_sec()),
                    r.records_per_sec() / raw.ops_per_sec(),
                    grouped(raw.ops_per_sec())
                )
            });
        targets.push(Target {
            pass: med >= 80.0,
            text: format!(
                "3. always, batches of 100 x 100 B, 1 in flight: records/s = {med:.1}x the raw write+fdatasync ops/s at {chunk} B (median of interleaved rounds: {}) (target >= 80x, i.e. appends at >= 80% of the raw fsync rate); p50 latency log {} µs vs raw {} µs{matrix}",
                rounds(&pairs.t3_ratio, &|x| format!("{x:.0}x")),
                micros(median(&pairs.t3_p50.iter().map(|p| p.1).collect::<Vec<_>>())),
                micros(median(&pairs.t3_p50.iter().map(|p| p.0).collect::<Vec<_>>())),
            ),
        });
    }
    // 4. Reads from the page cache >= 1 GB/s (whole batches, logs of 100-record batches).
    for r in reads.iter().filter(|r| !r.decode && r.batch == 100) {
        let gbps = r.mb_per_sec() / 1000.0;
        targets.push(Target {
            pass: gbps >= 1.0,
            text: format!(
                "4. page-cache reads, {} records in batches of 100: {gbps:.2} GB/s (target >= 1 GB/s)",
                size_label(r.record_size)
            ),
        });
    }

    // --- Print -----------------------------------------------------------------------------
    let notes = [
        "appends/fsync: `always` = Δsynced_appends/Δfsyncs, `interval` = Δappends/Δfsyncs, `none` never fsyncs on the append path.",
        "records/s and MB/s count from the first submit until the last ticket completed (the final close/fsync is not included).",
        "latency includes waiting behind the other appends in flight; with N in flight it is at least N appends' worth.",
        "raw write sizes are the log's encoded batch sizes: one 100 B / 1 KiB record, and 100 of them.",
        "target verdicts use interleaved rounds (raw, log, raw, log, ...; or 1 in flight, 64 in flight, ...) so that the machine's drifting load hits both sides alike; the matrix numbers are given for context.",
    ];
    let report = Report {
        header: &header,
        tables: &[
            &raw_table,
            &append_table,
            &read_table,
            &diag_table,
            &pair_table,
        ],
        notes: &notes,
        targets_about: "ratios to the raw baseline of this run; verdicts from the interleaved rounds",
        targets: &targets,
    };
    print!("{}", report.text());
    write_markdown(s.md_path.as_deref(), &report.markdown())?;
    Ok(())
}
