//! Crash test of the embedded engine: acknowledged publishes, acks and commits survive
//! `SIGKILL` of the broker process.
//!
//! The parent test, `acknowledged_work_survives_sigkill`, re-executes this test binary as a
//! child process that runs only `crash_child`. The child opens an [`EmbeddedEngine`] (real
//! files, real clock) in a directory the parent chose, creates (idempotently) a topic with two
//! partitions, a stream subscription and a shared subscription (60 s leases, so no lease
//! expires within a round), and then works on a tokio runtime with several concurrent tasks:
//! - two publishers send batches of messages with unique `wharf-message-id`s and, now and
//!   then, a copy of an id acknowledged earlier (in this round or, passed in by the parent,
//!   in an earlier one) in the same batch;
//! - two workers receive from the shared subscription and ack most deliveries, nack a few
//!   (delay 0) and leave a few leased;
//! - one stream member fetches and commits.
//!
//! Only once an operation has returned does the child print what it acknowledged, one line
//! each: `pub <id> <partition> <offset>`, `dup <id> <partition> <offset> <duplicate>` (the
//! answer to a republished id), `ack <partition> <offset>` (an ack whose outcome had no
//! error) and `commit <partition> <offset>` (the offset asked for). The parent reads those
//! lines and, after a random number of them (from a seeded RNG; the seed is printed and
//! `WHARF_CRASH_SEED` replays the schedule), kills the child with `SIGKILL`; now and then
//! while it is still opening (recovering) the engine instead. It checks each line as it comes
//! (an id answered as a duplicate must name the original's place; an offset acknowledged for
//! two ids, or acked twice, is a bug), then opens the engine itself and checks that
//! - the topic and both subscriptions exist once a child printed `ready` (after creating them);
//! - every acknowledged publish is readable at its partition and offset with its content (which
//!   is derived from its id), every stored message is intact, and no id is stored twice;
//! - republishing every acknowledged id answers `duplicate` with the original's place;
//! - the stream subscription's committed offsets are at least every acknowledged commit, at
//!   most the high watermark, and never went back;
//! - the shared subscription delivers no message that was acked: it receives everything
//!   available (leases are not durable, so messages leased but not acked when the child died
//!   legitimately come back) and acks most of it; in the last round all of it, after which
//!   every acknowledged publish must have been acked (or been about to be: before each ack
//!   the child prints `acking <partition> <offset>`, because it may die after the ack took
//!   effect and before it printed the outcome).
//!
//! The same directory is used for every round, so each child first recovers the previous
//! crash. The seed fixes the kill schedule and every child's choices, not the timing of its
//! tasks, so a replay reproduces a timing-dependent failure only sometimes. Rounds:
//! `WHARF_CRASH_ROUNDS` (at least 20, the default).
#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use wharf_broker::{
    BrokerError, Committed, EmbeddedConfig, EmbeddedEngine, Engine, FetchRequest, Message,
    Position, ReadRequest, ReceiveRequest, SharedConfig, StoredMessage, StreamConfig,
    SubscriptionConfig, TopicConfig,
};

/// Tells the child process which data directory to use.
const CHILD_DIR_ENV: &str = "WHARF_BROKER_CRASH_CHILD_DIR";
/// Seeds the child's choices.
const CHILD_SEED_ENV: &str = "WHARF_BROKER_CRASH_CHILD_SEED";
/// The round, part of every message id the child makes (so ids never repeat).
const CHILD_ROUND_ENV: &str = "WHARF_BROKER_CRASH_CHILD_ROUND";
/// Ids acknowledged in earlier rounds, comma-separated: the child republishes some.
const CHILD_OLD_IDS_ENV: &str = "WHARF_BROKER_CRASH_CHILD_OLD_IDS";
/// The child prints this line just before it opens the engine.
const OPENING_LINE: &str = "opening";
/// The child prints this line once the topic and subscriptions exist.
const READY_LINE: &str = "ready";

const TOPIC: &str = "orders";
const STREAM_SUB: &str = "audit";
const SHARED_SUB: &str = "workers";
const PARTITIONS: u32 = 2;

/// Operations a child that is never killed performs before it stops (and the parent fails).
const CHILD_MAX_OPS: u64 = 100_000;
/// The parent kills the child after 1..=this many lines.
const MAX_LINES_BEFORE_KILL: u64 = 1000;
/// How long the parent waits for the next line from the child before giving up.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Ids of earlier rounds handed to a child to republish.
const OLD_IDS_PER_CHILD: usize = 32;
const MIN_ROUNDS: u64 = 20;

fn topic_config() -> TopicConfig {
    TopicConfig {
        partitions: PARTITIONS,
        // Far longer than the test runs: every acknowledged id stays deduplicated.
        dedup_window_ms: 3_600_000,
        // Small segments, so rolls happen under the kill too.
        segment_bytes: 64 * 1024,
        ..TopicConfig::default()
    }
}

fn stream_config() -> SubscriptionConfig {
    SubscriptionConfig::Stream(StreamConfig::default())
}

fn shared_config() -> SubscriptionConfig {
    SubscriptionConfig::Shared(SharedConfig {
        // Nothing is dead-lettered: every message stays deliverable until acked.
        max_deliveries: 1000,
        // No lease expires within a round.
        lease_ms: 60_000,
        backoff_jitter_pct: 0,
        max_in_flight_per_member: 100_000,
        ..SharedConfig::default()
    })
}

/// Creates the topic and both subscriptions, or finds them.
async fn setup(engine: &EmbeddedEngine) -> Result<(), BrokerError> {
    engine.create_topic(TOPIC, topic_config()).await?;
    engine
        .create_subscription(TOPIC, STREAM_SUB, stream_config())
        .await?;
    engine
        .create_subscription(TOPIC, SHARED_SUB, shared_config())
        .await?;
    Ok(())
}

/// FNV-1a of `s`.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The payload of the message with id `id`: the id, then 0..600 filler bytes derived from it.
fn value_of(id: &str) -> Bytes {
    let h = hash(id);
    let filler = (h % 600) as usize;
    let mut v = format!("value of {id}:").into_bytes();
    v.extend((0..filler).map(|i| b'a' + ((h >> (i % 50)) as u8 % 26)));
    Bytes::from(v)
}

/// The message with id `id`; routed by key, by explicit partition or round-robin, by its hash.
fn message(id: &str) -> Message {
    let h = hash(id);
    let m = Message::new(value_of(id)).with_id(id);
    match (h >> 32) % 3 {
        0 => m.with_key(format!("key-{}", h % 7)),
        1 => m.to_partition(((h >> 16) % u64::from(PARTITIONS)) as u32),
        _ => m,
    }
}

/// Checks a stored message against its own id; returns the id.
fn check_content(m: &StoredMessage) -> Result<String, String> {
    let id = m
        .headers
        .iter()
        .find(|(k, _)| k == "wharf-message-id")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            format!(
                "partition {} offset {} has no wharf-message-id",
                m.partition, m.offset
            )
        })?;
    if m.value != value_of(&id) {
        return Err(format!(
            "partition {} offset {} (id {id}) holds another value than its id's: {:?}",
            m.partition,
            m.offset,
            String::from_utf8_lossy(&m.value[..m.value.len().min(80)])
        ));
    }
    let want = message(&id);
    if m.key != want.key {
        return Err(format!(
            "partition {} offset {} (id {id}) has key {:?}, not {:?}",
            m.partition, m.offset, m.key, want.key
        ));
    }
    Ok(id)
}

// ---- the child ------------------------------------------------------------------------------

/// Writes `lines` (complete lines) to stdout at once and flushes.
fn emit(lines: &str) {
    if lines.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(lines.as_bytes())
        .and_then(|()| out.flush())
        .expect("child: write to stdout");
}

fn env_string(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// The child process: works until it is killed. Run by the parent test only.
#[test]
#[ignore = "child process of the crash test; run by it"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        // Run by hand (e.g. `--include-ignored`) rather than by the parent: nothing to do. The
        // parent notices a child that returns, so this cannot hide a failure.
        eprintln!(
            "crash_child is the child process of acknowledged_work_survives_sigkill; {CHILD_DIR_ENV} is not set, so it does nothing"
        );
        return;
    };
    // A panic in any task ends the process at once (the parent then fails the round), rather
    // than leaving the other tasks running.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(101);
    }));
    let seed: u64 = env_string(CHILD_SEED_ENV)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let round: u64 = env_string(CHILD_ROUND_ENV)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let old_ids: Vec<String> = env_string(CHILD_OLD_IDS_ENV)
        .map(|s| {
            s.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    // libtest has printed "test crash_child ... " without a newline: start a fresh line.
    emit(&format!("\n{OPENING_LINE}\n"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("child: a tokio runtime");
    rt.block_on(child_main(dir, seed, round, old_ids));
    eprintln!("crash_child: stopped after {CHILD_MAX_OPS} operations without being killed");
}

async fn child_main(dir: OsString, seed: u64, round: u64, old_ids: Vec<String>) {
    let engine = EmbeddedEngine::open(EmbeddedConfig::new(&dir))
        .unwrap_or_else(|e| panic!("child: opening the engine failed: {e}"));
    setup(&engine)
        .await
        .unwrap_or_else(|e| panic!("child: creating the topic and subscriptions failed: {e}"));
    emit(&format!("{READY_LINE}\n"));
    let acked_ids = Arc::new(Mutex::new(old_ids));
    let ops = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..2u64 {
        let rng = StdRng::seed_from_u64(seed ^ (task + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.push(tokio::spawn(publisher(
            engine.clone(),
            rng,
            format!("r{round}-p{task}"),
            acked_ids.clone(),
            ops.clone(),
        )));
        let rng = StdRng::seed_from_u64(seed ^ (task + 11).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.push(tokio::spawn(worker(
            engine.clone(),
            rng,
            format!("w{task}"),
            ops.clone(),
        )));
    }
    let rng = StdRng::seed_from_u64(seed ^ 0x5EED);
    tasks.push(tokio::spawn(stream_member(
        engine.clone(),
        rng,
        ops.clone(),
    )));
    for t in tasks {
        t.await.expect("child: a task panicked");
    }
}

fn more(ops: &AtomicU64) -> bool {
    ops.fetch_add(1, Ordering::Relaxed) < CHILD_MAX_OPS
}

/// Publishes batches with fresh ids, sometimes with an acknowledged id among them.
async fn publisher(
    engine: EmbeddedEngine,
    mut rng: StdRng,
    prefix: String,
    acked_ids: Arc<Mutex<Vec<String>>>,
    ops: Arc<AtomicU64>,
) {
    let mut seq = 0u64;
    while more(&ops) {
        let n = rng.random_range(1..=8);
        let mut ids: Vec<(String, bool)> = (0..n)
            .map(|_| {
                seq += 1;
                (format!("{prefix}-{seq}"), false)
            })
            .collect();
        if rng.random_ratio(1, 3) {
            let old = acked_ids.lock().unwrap().choose(&mut rng).cloned();
            if let Some(old) = old {
                let at = rng.random_range(0..=ids.len());
                ids.insert(at, (old, true));
            }
        }
        let messages = ids.iter().map(|(id, _)| message(id)).collect();
        let published = engine
            .publish(TOPIC, messages)
            .await
            .unwrap_or_else(|e| panic!("child: publish failed: {e}"));
        assert_eq!(published.len(), ids.len(), "child: one result per message");
        let mut lines = String::new();
        for ((id, old), p) in ids.iter().zip(&published) {
            if *old {
                lines.push_str(&format!(
                    "dup {id} {} {} {}\n",
                    p.partition, p.offset, p.duplicate
                ));
            } else {
                assert!(!p.duplicate, "child: fresh id {id} came back a duplicate");
                lines.push_str(&format!("pub {id} {} {}\n", p.partition, p.offset));
            }
        }
        // Acknowledged: only now may the parent learn about them (and only then may they be
        // republished).
        emit(&lines);
        acked_ids
            .lock()
            .unwrap()
            .extend(ids.into_iter().filter(|(_, old)| !old).map(|(id, _)| id));
    }
}

/// Receives from the shared subscription; acks most deliveries, nacks or keeps a few.
async fn worker(engine: EmbeddedEngine, mut rng: StdRng, member: String, ops: Arc<AtomicU64>) {
    while more(&ops) {
        let deliveries = engine
            .receive(
                TOPIC,
                SHARED_SUB,
                ReceiveRequest {
                    member: Some(member.clone()),
                    max: rng.random_range(1..=20),
                    lease: None,
                    // A long poll, woken by publishes; not a synchronisation.
                    wait: Duration::from_millis(100),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("child: receive failed: {e}"));
        let mut ack = Vec::new();
        let mut nack = Vec::new();
        let mut place = BTreeMap::new();
        for d in deliveries {
            if let Err(why) = check_content(&d.message) {
                panic!("child: delivered garbage: {why}");
            }
            place.insert(d.ack_id.clone(), (d.message.partition, d.message.offset));
            match rng.random_range(0..20) {
                0 => nack.push(d.ack_id),
                1 => {} // Keep the lease until the process dies.
                _ => ack.push(d.ack_id),
            }
        }
        if !ack.is_empty() {
            // Not an acknowledgement: tells the parent these may be acked unbeknownst to it
            // (if the process dies before it prints the outcome).
            let intent: String = ack
                .iter()
                .map(|id| {
                    let (p, offset) = place[id];
                    format!("acking {p} {offset}\n")
                })
                .collect();
            emit(&intent);
            let outcomes = engine
                .ack(TOPIC, SHARED_SUB, &ack)
                .await
                .unwrap_or_else(|e| panic!("child: ack failed: {e}"));
            let mut lines = String::new();
            for o in outcomes {
                if let Some(code) = &o.error {
                    panic!("child: ack of a fresh delivery failed: {code}");
                }
                let (p, offset) = place[&o.ack_id];
                lines.push_str(&format!("ack {p} {offset}\n"));
            }
            emit(&lines);
        }
        if !nack.is_empty() {
            let outcomes = engine
                .nack(TOPIC, SHARED_SUB, &nack, Some(0))
                .await
                .unwrap_or_else(|e| panic!("child: nack failed: {e}"));
            if let Some(o) = outcomes.iter().find(|o| o.error.is_some()) {
                panic!("child: nack of a fresh delivery failed: {o:?}");
            }
        }
    }
}

/// Fetches from the stream subscription and commits, sometimes short of what it fetched.
async fn stream_member(engine: EmbeddedEngine, mut rng: StdRng, ops: Arc<AtomicU64>) {
    let m = engine
        .join(TOPIC, STREAM_SUB, None)
        .await
        .unwrap_or_else(|e| panic!("child: join failed: {e}"));
    assert_eq!(
        m.partitions,
        (0..PARTITIONS).collect::<Vec<_>>(),
        "child: the only member owns every partition"
    );
    while more(&ops) {
        let fetched = engine
            .fetch(
                TOPIC,
                STREAM_SUB,
                &m.member_id,
                FetchRequest {
                    max_messages: rng.random_range(1..=50),
                    wait: Duration::from_millis(100),
                    ..FetchRequest::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("child: fetch failed: {e}"));
        let mut ends: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for msg in &fetched {
            if let Err(why) = check_content(msg) {
                panic!("child: fetched garbage: {why}");
            }
            ends.entry(msg.partition).or_default().push(msg.offset + 1);
        }
        let offsets: Vec<Committed> = ends
            .into_iter()
            .map(|(partition, ends)| Committed {
                partition,
                // Usually everything fetched; sometimes less (a later commit covers it).
                offset: if rng.random_ratio(1, 4) {
                    *ends.choose(&mut rng).expect("non-empty")
                } else {
                    *ends.last().expect("non-empty")
                },
            })
            .collect();
        if offsets.is_empty() {
            continue;
        }
        engine
            .commit(TOPIC, STREAM_SUB, &m.member_id, offsets.clone())
            .await
            .unwrap_or_else(|e| panic!("child: commit failed: {e}"));
        let lines: String = offsets
            .iter()
            .map(|c| format!("commit {} {}\n", c.partition, c.offset))
            .collect();
        emit(&lines);
    }
}

// ---- the parent -----------------------------------------------------------------------------

/// Everything the children (and the parent's own checks) acknowledged, over all rounds.
#[derive(Default)]
struct Ledger {
    /// Acknowledged publishes: id -> (partition, offset).
    pubs: BTreeMap<String, (u32, u64)>,
    /// The same, by place.
    at: BTreeMap<(u32, u64), String>,
    /// Messages whose ack was acknowledged.
    acked: BTreeSet<(u32, u64)>,
    /// Messages a child was about to ack (it may have, without printing so).
    ack_attempts: BTreeSet<(u32, u64)>,
    /// Highest acknowledged commit per partition.
    commits: BTreeMap<u32, u64>,
    /// Committed offsets seen by the last verification.
    committed_seen: BTreeMap<u32, u64>,
    /// Acknowledged duplicates answers checked.
    dups: u64,
    /// A child created the topic and both subscriptions.
    created: bool,
}

impl Ledger {
    fn publish(&mut self, ctx: &str, id: &str, partition: u32, offset: u64) {
        if let Some(earlier) = self.pubs.get(id) {
            panic!(
                "{ctx}: id {id} acknowledged twice as a fresh publish: at {earlier:?} and at {:?}",
                (partition, offset)
            );
        }
        if let Some(other) = self.at.get(&(partition, offset)) {
            panic!(
                "{ctx}: partition {partition} offset {offset} acknowledged for {other} and again for {id}: an acknowledged publish was lost and its offset reused"
            );
        }
        self.pubs.insert(id.to_owned(), (partition, offset));
        self.at.insert((partition, offset), id.to_owned());
    }

    fn ack(&mut self, ctx: &str, partition: u32, offset: u64) {
        assert!(
            self.acked.insert((partition, offset)),
            "{ctx}: partition {partition} offset {offset} was acked twice: an acknowledged ack was lost and the message redelivered"
        );
    }

    fn duplicate(&mut self, ctx: &str, id: &str, partition: u32, offset: u64, duplicate: bool) {
        let Some(&original) = self.pubs.get(id) else {
            panic!("{ctx}: the child republished {id}, which was never acknowledged");
        };
        assert!(
            duplicate && original == (partition, offset),
            "{ctx}: republishing acknowledged id {id} (at {original:?}) answered partition {partition} offset {offset} duplicate {duplicate}: its dedup entry was lost"
        );
        self.dups += 1;
    }

    fn commit(&mut self, partition: u32, offset: u64) {
        let c = self.commits.entry(partition).or_default();
        *c = (*c).max(offset);
    }
}

/// A line the child printed.
enum Line {
    Opening,
    Ready,
    Pub(String, u32, u64),
    Dup(String, u32, u64, bool),
    Ack(u32, u64),
    Acking(u32, u64),
    Commit(u32, u64),
    /// libtest's own output.
    Other,
}

fn malformed(line: &str) -> ! {
    panic!("the child printed a malformed line: {line:?}")
}

fn parse_line(line: &str) -> Line {
    let line = line.trim_end_matches('\n');
    if line == OPENING_LINE {
        return Line::Opening;
    }
    if line == READY_LINE {
        return Line::Ready;
    }
    let words: Vec<&str> = line.split(' ').collect();
    let num = |s: &str| -> u64 { s.parse().unwrap_or_else(|_| malformed(line)) };
    let part = |s: &str| -> u32 { s.parse().unwrap_or_else(|_| malformed(line)) };
    match words.as_slice() {
        ["pub", id, p, o] => Line::Pub((*id).to_owned(), part(p), num(o)),
        ["dup", id, p, o, d] => Line::Dup(
            (*id).to_owned(),
            part(p),
            num(o),
            d.parse().unwrap_or_else(|_| malformed(line)),
        ),
        ["ack", p, o] => Line::Ack(part(p), num(o)),
        ["acking", p, o] => Line::Acking(part(p), num(o)),
        ["commit", p, o] => Line::Commit(part(p), num(o)),
        [first, ..] if ["pub", "dup", "ack", "acking", "commit"].contains(first) => malformed(line),
        _ => Line::Other,
    }
}

/// Records one line; true if it acknowledged something.
fn record(ledger: &mut Ledger, ctx: &str, line: &str) -> bool {
    match parse_line(line) {
        Line::Opening | Line::Other => false,
        Line::Ready => {
            ledger.created = true;
            false
        }
        Line::Pub(id, p, o) => {
            ledger.publish(ctx, &id, p, o);
            true
        }
        Line::Dup(id, p, o, d) => {
            ledger.duplicate(ctx, &id, p, o, d);
            true
        }
        Line::Ack(p, o) => {
            ledger.ack(ctx, p, o);
            true
        }
        Line::Acking(p, o) => {
            ledger.ack_attempts.insert((p, o));
            false
        }
        Line::Commit(p, o) => {
            ledger.commit(p, o);
            true
        }
    }
}

/// Runs one child, kills it with `SIGKILL` after `kill_after` acknowledgement lines (0: as soon
/// as it starts opening the engine), records every line it fully printed, and returns how many
/// acknowledgement lines there were.
fn run_and_kill(
    exe: &Path,
    dir: &Path,
    round: u64,
    child_seed: u64,
    kill_after: u64,
    old_ids: &[String],
    ledger: &mut Ledger,
) -> u64 {
    let ctx = format!("round {round} (child)");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, child_seed.to_string())
        .env(CHILD_ROUND_ENV, round.to_string())
        .env(CHILD_OLD_IDS_ENV, old_ids.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("round {round}: spawning the child failed: {e}"));
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut buf = Vec::new();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => return,
                // A last line without its newline was cut off by the kill: it acknowledges
                // nothing (and nothing can follow it).
                Ok(_) if !buf.ends_with(b"\n") => return,
                Ok(_) => {
                    let line = String::from_utf8(buf).unwrap_or_else(|e| {
                        panic!("the child printed a line that is not UTF-8: {e}")
                    });
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                Err(e) => panic!("reading the child's stdout failed: {e}"),
            }
        }
    });

    let mut lines = 0u64;
    let mut reached = false;
    while !reached {
        match rx.recv_timeout(TIMEOUT) {
            Ok(line) => {
                if matches!(parse_line(&line), Line::Opening) {
                    reached = kill_after == 0;
                } else if record(ledger, &ctx, &line) {
                    lines += 1;
                    reached = lines >= kill_after;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "round {round}: the child printed nothing for {TIMEOUT:?} ({lines} lines so far, waiting for {kill_after})"
                );
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.wait();
                panic!(
                    "round {round}: the child exited on its own ({status:?}) after {lines} lines, before being killed; see its stderr above"
                );
            }
        }
    }

    // `Child::kill` sends SIGKILL on Unix.
    child
        .kill()
        .unwrap_or_else(|e| panic!("round {round}: killing the child failed: {e}"));
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("round {round}: reaping the child failed: {e}"));
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: the child was not ended by SIGKILL but {status:?}; see its stderr above"
    );

    // Whatever the child printed completely before it died was acknowledged too.
    loop {
        match rx.recv_timeout(TIMEOUT) {
            Ok(line) => {
                if record(ledger, &ctx, &line) {
                    lines += 1;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!(
                "round {round}: the child's stdout stayed open {TIMEOUT:?} after it was killed"
            ),
        }
    }
    reader
        .join()
        .unwrap_or_else(|_| panic!("round {round}: the stdout reader thread panicked"));
    lines
}

/// Every message of partition `p`, by offset; checks that the partition is dense from 0.
async fn read_partition(
    engine: &EmbeddedEngine,
    ctx: &str,
    p: u32,
) -> BTreeMap<u64, StoredMessage> {
    let mut out = BTreeMap::new();
    let mut next = 0;
    loop {
        let r = engine
            .read(
                TOPIC,
                ReadRequest {
                    max_messages: 1000,
                    max_bytes: 4 << 20,
                    ..ReadRequest::new(p, Position::Offset(next))
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{ctx}: reading partition {p} at {next} failed: {e}"));
        assert_eq!(r.start_offset, 0, "{ctx}: nothing is ever deleted here");
        for m in r.messages {
            assert_eq!(
                m.offset, next,
                "{ctx}: partition {p} is not dense: expected offset {next}, read {}",
                m.offset
            );
            next += 1;
            out.insert(m.offset, m);
        }
        if next >= r.high_watermark {
            assert_eq!(
                next, r.high_watermark,
                "{ctx}: partition {p} read past its high watermark"
            );
            return out;
        }
    }
}

/// Checks the engine's state against the ledger: publishes, dedup, stream commits, shared
/// acks. `ack_all`: ack everything the shared subscription still delivers, then require every
/// acknowledged publish to have been acked.
async fn verify(
    engine: &EmbeddedEngine,
    ctx: &str,
    ledger: &mut Ledger,
    rng: &mut StdRng,
    ack_all: bool,
) {
    // Once created (by a child that printed `ready`, or by an earlier check), the topic and
    // subscriptions exist.
    if let Err(e) = engine.describe_topic(TOPIC).await {
        assert!(
            !ledger.created,
            "{ctx}: topic {TOPIC} is gone after a crash: {e}"
        );
    }
    for sub in [STREAM_SUB, SHARED_SUB] {
        if let Err(e) = engine.describe_subscription(TOPIC, sub).await {
            assert!(
                !ledger.created,
                "{ctx}: subscription {sub} is gone after a crash: {e}"
            );
        }
    }
    setup(engine)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: creating the topic and subscriptions failed: {e}"));
    ledger.created = true;

    // Publishes: every acknowledged one is there, intact; nothing is stored twice.
    let mut stored: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let mut hw = BTreeMap::new();
    for p in 0..PARTITIONS {
        let messages = read_partition(engine, ctx, p).await;
        hw.insert(p, messages.len() as u64);
        for (o, m) in messages {
            let id = check_content(&m).unwrap_or_else(|why| panic!("{ctx}: garbage: {why}"));
            stored.insert((p, o), id);
        }
    }
    let mut ids = HashSet::new();
    for ((p, o), id) in &stored {
        assert!(
            ids.insert(id.as_str()),
            "{ctx}: id {id} is stored twice (again at partition {p} offset {o}): a dedup entry was lost"
        );
    }
    for (id, &(p, o)) in &ledger.pubs {
        match stored.get(&(p, o)) {
            Some(found) => assert_eq!(
                found, id,
                "{ctx}: acknowledged publish {id} at partition {p} offset {o} was replaced by {found}"
            ),
            None => panic!(
                "{ctx}: acknowledged publish {id} at partition {p} offset {o} is missing (high watermark {})",
                hw[&p]
            ),
        }
    }

    // Dedup: every acknowledged id is still known, with its original place.
    let all: Vec<&String> = ledger.pubs.keys().collect();
    for chunk in all.chunks(500) {
        let answers = engine
            .publish(TOPIC, chunk.iter().map(|id| message(id)).collect())
            .await
            .unwrap_or_else(|e| panic!("{ctx}: republishing acknowledged ids failed: {e}"));
        for (id, a) in chunk.iter().zip(answers) {
            let original = ledger.pubs[*id];
            assert!(
                a.duplicate && (a.partition, a.offset) == original,
                "{ctx}: republishing acknowledged id {id} (at {original:?}) answered partition {} offset {} duplicate {}: its dedup entry was lost",
                a.partition,
                a.offset,
                a.duplicate
            );
        }
    }

    // Stream commits: durable, never back, never past the data.
    let info = engine
        .describe_subscription(TOPIC, STREAM_SUB)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: describing {STREAM_SUB} failed: {e}"));
    for sp in &info.partitions {
        let p = sp.partition;
        let acked = ledger.commits.get(&p).copied().unwrap_or(0);
        assert!(
            sp.committed >= acked,
            "{ctx}: partition {p}'s committed offset is {}, but a commit of {acked} was acknowledged",
            sp.committed
        );
        let seen = ledger.committed_seen.get(&p).copied().unwrap_or(0);
        assert!(
            sp.committed >= seen,
            "{ctx}: partition {p}'s committed offset went back from {seen} to {}",
            sp.committed
        );
        assert!(
            sp.committed <= hw[&p],
            "{ctx}: partition {p}'s committed offset {} is past its high watermark {}",
            sp.committed,
            hw[&p]
        );
        ledger.committed_seen.insert(p, sp.committed);
    }

    // Shared acks: nothing acked comes back.
    loop {
        let deliveries = engine
            .receive(
                TOPIC,
                SHARED_SUB,
                ReceiveRequest {
                    member: Some("verifier".into()),
                    max: 1000,
                    lease: None,
                    wait: Duration::ZERO,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{ctx}: receive failed: {e}"));
        if deliveries.is_empty() {
            break;
        }
        let mut ack = Vec::new();
        let mut place = BTreeMap::new();
        for d in deliveries {
            let key = (d.message.partition, d.message.offset);
            assert!(
                !ledger.acked.contains(&key),
                "{ctx}: partition {} offset {} was delivered again (delivery {}) after its ack was acknowledged",
                key.0,
                key.1,
                d.delivery_count
            );
            let id = check_content(&d.message)
                .unwrap_or_else(|why| panic!("{ctx}: delivered garbage: {why}"));
            assert_eq!(
                stored.get(&key),
                Some(&id),
                "{ctx}: the delivery of partition {} offset {} is not the stored message",
                key.0,
                key.1
            );
            place.insert(d.ack_id.clone(), key);
            if ack_all || rng.random_ratio(3, 4) {
                ack.push(d.ack_id);
            }
        }
        if ack.is_empty() {
            continue;
        }
        let outcomes = engine
            .ack(TOPIC, SHARED_SUB, &ack)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: ack failed: {e}"));
        for o in outcomes {
            assert_eq!(o.error, None, "{ctx}: ack of a fresh delivery failed");
            let (p, offset) = place[&o.ack_id];
            ledger.ack(ctx, p, offset);
        }
    }
    if ack_all {
        for (id, place) in &ledger.pubs {
            assert!(
                ledger.acked.contains(place) || ledger.ack_attempts.contains(place),
                "{ctx}: acknowledged publish {id} at {place:?} was never acked on {SHARED_SUB}, nor is it delivered any more"
            );
        }
    }
}

#[test]
fn acknowledged_work_survives_sigkill() {
    let rounds = std::env::var("WHARF_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_ROUNDS)
        .max(MIN_ROUNDS);
    let seed: u64 = std::env::var("WHARF_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "broker crash test: {rounds} rounds, seed {seed} (WHARF_CRASH_SEED={seed} replays the kill schedule)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut ledger = Ledger::default();
    let started = Instant::now();
    for round in 0..rounds {
        // Mostly after a random number of lines; sometimes while it is opening (recovering from
        // the previous kill).
        let kill_after = if rng.random_ratio(1, 8) {
            0
        } else {
            rng.random_range(1..=MAX_LINES_BEFORE_KILL)
        };
        let ids: Vec<String> = ledger.pubs.keys().cloned().collect();
        let old_ids: Vec<String> = ids
            .choose_multiple(&mut rng, OLD_IDS_PER_CHILD)
            .cloned()
            .collect();
        let round_started = Instant::now();
        let lines = run_and_kill(
            &exe,
            dir.path(),
            round,
            rng.random(),
            kill_after,
            &old_ids,
            &mut ledger,
        );
        let ctx = format!("seed {seed} round {round}");
        let engine = EmbeddedEngine::open(EmbeddedConfig::new(dir.path()))
            .unwrap_or_else(|e| panic!("{ctx}: reopening the engine after SIGKILL failed: {e}"));
        rt.block_on(verify(
            &engine,
            &ctx,
            &mut ledger,
            &mut rng,
            round + 1 == rounds,
        ));
        engine
            .close()
            .unwrap_or_else(|e| panic!("{ctx}: closing the engine failed: {e}"));
        drop(engine);
        eprintln!(
            "round {round}: killed after {lines} lines (target {kill_after}); {} publishes, {} duplicate answers, {} acks, commits {:?} acknowledged in all ({:?})",
            ledger.pubs.len(),
            ledger.dups,
            ledger.acked.len(),
            ledger.commits,
            round_started.elapsed()
        );
    }
    assert!(!ledger.pubs.is_empty(), "no child acknowledged a publish");
    assert!(!ledger.commits.is_empty(), "no child acknowledged a commit");
    eprintln!(
        "broker crash test: {rounds} rounds, {} publishes, {} acks, all intact, in {:?}",
        ledger.pubs.len(),
        ledger.acked.len(),
        started.elapsed()
    );
}
