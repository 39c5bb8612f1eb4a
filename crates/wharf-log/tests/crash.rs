//! Crash test: every acknowledged append survives `SIGKILL` of the appending process.
//!
//! The parent test, `acknowledged_records_survive_sigkill`, re-executes this test binary as a
//! child process that runs only `crash_child`. The child opens a log (durability `always`,
//! small segments so rolls happen under the kill too) in a directory the parent chose, and
//! appends from several threads, each keeping several appends in flight. Only after an append's
//! ticket has completed does it print one line per record, `ack <offset> <tag>`, to stdout.
//!
//! The parent reads those lines and, after a random number of them (chosen from a seeded RNG;
//! the seed is printed and `WHARF_CRASH_SEED` replays the schedule), kills the child with
//! `SIGKILL`. Now and then it kills the child while it is still opening (recovering) the log
//! instead. It then reopens the log itself and checks that
//! - every record ever acknowledged (in any round) is present with the same value,
//! - the readable records are exactly the offsets `0..high_watermark`, densely,
//! - every readable record's value verifies against its own checksum (no garbage), no record
//!   is readable twice, and timestamps never go back,
//! - the high watermark is past the highest acknowledged offset.
//!
//! Recovery may truncate a torn tail: that is expected and only ever removes records that were
//! not acknowledged. The same directory is used for every round, so each child first recovers
//! the previous crash and then continues at the next offset.
//!
//! Each record's value is self-verifying: `crc32c(body)` and `len(body)` (little-endian `u32`s)
//! followed by the body, which is a 16-byte identity (child nonce, thread, sequence number)
//! and 0..=2000 random bytes. The 8-byte prefix, printed in hex, is the record's tag.
//!
//! Rounds: `WHARF_CRASH_ROUNDS` (at least 20, the default).
#![cfg(unix)]

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wharf_log::{AppendTicket, Durability, Error, Log, LogConfig, NewRecord};

/// Tells the child process which log directory to append to.
const CHILD_DIR_ENV: &str = "WHARF_CRASH_CHILD_DIR";
/// Seeds the child's record generator.
const CHILD_SEED_ENV: &str = "WHARF_CRASH_CHILD_SEED";
/// The child prints this line just before it opens the log.
const OPENING_LINE: &str = "opening";

/// `crc32c(body)` and `len(body)`.
const HEADER_LEN: usize = 8;
/// Nonce, thread and sequence number.
const ID_LEN: usize = 16;
/// Random bytes after the identity: 0..=this many.
const MAX_PAYLOAD: usize = 2000;
/// Records per append: 1..=this many.
const MAX_BATCH: usize = 20;
const APPENDER_THREADS: u32 = 4;
/// Appends each appender thread keeps in flight.
const IN_FLIGHT: usize = 4;
/// A child that is never killed stops after this many appends.
const CHILD_MAX_APPENDS: u64 = 200_000;
/// The parent kills the child after 1..=this many acknowledged records.
const MAX_ACKS_BEFORE_KILL: u64 = 400;
/// How long the parent waits for the next line from the child before giving up.
const TIMEOUT: Duration = Duration::from_secs(120);
const MIN_ROUNDS: u64 = 20;

fn config() -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        segment_max_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// A self-verifying value: header, identity, `payload_len` random bytes. Returns it and its tag.
fn make_value(id: [u8; ID_LEN], payload_len: usize, rng: &mut impl Rng) -> (Vec<u8>, u64) {
    let mut value = vec![0u8; HEADER_LEN + ID_LEN + payload_len];
    value[HEADER_LEN..HEADER_LEN + ID_LEN].copy_from_slice(&id);
    rng.fill(&mut value[HEADER_LEN + ID_LEN..]);
    let body = &value[HEADER_LEN..];
    let crc = crc32c::crc32c(body);
    let len = u32::try_from(body.len()).expect("body length fits in u32");
    value[..4].copy_from_slice(&crc.to_le_bytes());
    value[4..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    let tag = u64::from_le_bytes(value[..HEADER_LEN].try_into().expect("8-byte header"));
    (value, tag)
}

/// Checks a value made by [`make_value`]; returns its tag and identity.
fn check_value(value: &[u8]) -> Result<(u64, [u8; ID_LEN]), String> {
    if value.len() < HEADER_LEN + ID_LEN {
        return Err(format!(
            "value of {} bytes is shorter than header and identity",
            value.len()
        ));
    }
    let (header, body) = value.split_at(HEADER_LEN);
    let crc = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if usize::try_from(len).ok() != Some(body.len()) {
        return Err(format!(
            "header says the body has {len} bytes, it has {}",
            body.len()
        ));
    }
    let actual = crc32c::crc32c(body);
    if actual != crc {
        return Err(format!(
            "header says crc32c {crc:08x}, the body has {actual:08x}"
        ));
    }
    let tag = u64::from_le_bytes(header.try_into().expect("8-byte header"));
    Ok((tag, body[..ID_LEN].try_into().expect("16-byte identity")))
}

/// The child process: appends until it is killed. Run by the parent test only.
#[test]
#[ignore = "child process of the crash test; run by it"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        // Run by hand (e.g. `--include-ignored`) rather than by the parent: nothing to do. The
        // parent notices a child that returns, so this cannot hide a failure.
        eprintln!(
            "crash_child is the child process of acknowledged_records_survive_sigkill; {CHILD_DIR_ENV} is not set, so it does nothing"
        );
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    // libtest has printed "test crash_child ... " without a newline: start a fresh line.
    {
        let mut out = std::io::stdout().lock();
        write!(out, "\n{OPENING_LINE}\n")
            .and_then(|()| out.flush())
            .expect("child: write to stdout");
    }
    let (log, _report) =
        Log::open(&dir, config()).unwrap_or_else(|e| panic!("child: opening the log failed: {e}"));
    let nonce: u64 = rand::random();
    let appends = AtomicU64::new(0);
    std::thread::scope(|s| {
        for thread in 0..APPENDER_THREADS {
            let (log, appends) = (&log, &appends);
            s.spawn(move || appender(log, thread, seed, nonce, appends));
        }
    });
    eprintln!("crash_child: stopped after {CHILD_MAX_APPENDS} appends without being killed");
}

/// One appender thread of the child: keeps [`IN_FLIGHT`] appends submitted, waits for the oldest,
/// then prints its records' offsets and tags.
fn appender(log: &Log, thread: u32, seed: u64, nonce: u64, appends: &AtomicU64) {
    let mut rng =
        StdRng::seed_from_u64(seed ^ (u64::from(thread) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut seq = 0u32;
    let mut in_flight: VecDeque<(AppendTicket, Vec<u64>)> = VecDeque::with_capacity(IN_FLIGHT);
    loop {
        while in_flight.len() < IN_FLIGHT
            && appends.fetch_add(1, Ordering::Relaxed) < CHILD_MAX_APPENDS
        {
            let n = rng.random_range(1..=MAX_BATCH);
            let mut records = Vec::with_capacity(n);
            let mut tags = Vec::with_capacity(n);
            for _ in 0..n {
                let mut id = [0u8; ID_LEN];
                id[..8].copy_from_slice(&nonce.to_le_bytes());
                id[8..12].copy_from_slice(&thread.to_le_bytes());
                id[12..].copy_from_slice(&seq.to_le_bytes());
                seq += 1;
                let (value, tag) = make_value(id, rng.random_range(0..=MAX_PAYLOAD), &mut rng);
                records.push(NewRecord::new(value));
                tags.push(tag);
            }
            let ticket = log
                .append(&records)
                .unwrap_or_else(|e| panic!("child: append failed: {e}"));
            in_flight.push_back((ticket, tags));
        }
        let Some((ticket, tags)) = in_flight.pop_front() else {
            return;
        };
        let done = ticket
            .wait()
            .unwrap_or_else(|e| panic!("child: waiting for an append failed: {e}"));
        assert_eq!(
            done.last_offset - done.base_offset + 1,
            tags.len() as u64,
            "child: append of {} records got offsets {done:?}",
            tags.len()
        );
        // Acknowledged: only now may the parent learn about these records.
        let mut lines = String::new();
        for (offset, tag) in (done.base_offset..).zip(&tags) {
            writeln!(lines, "ack {offset} {tag:016x}").expect("writing to a String");
        }
        let mut out = std::io::stdout().lock();
        out.write_all(lines.as_bytes())
            .and_then(|()| out.flush())
            .expect("child: write to stdout");
    }
}

/// A line the child printed.
enum Line {
    Opening,
    Ack {
        offset: u64,
        tag: u64,
    },
    /// libtest's own output.
    Other,
}

fn parse_line(line: &str) -> Line {
    let line = line.trim_end_matches('\n');
    if line == OPENING_LINE {
        return Line::Opening;
    }
    let Some(rest) = line.strip_prefix("ack ") else {
        return Line::Other;
    };
    let parsed = rest
        .split_once(' ')
        .and_then(|(o, t)| Some((o.parse().ok()?, u64::from_str_radix(t, 16).ok()?)));
    match parsed {
        Some((offset, tag)) => Line::Ack { offset, tag },
        None => panic!("the child printed a malformed ack line: {line:?}"),
    }
}

/// Remembers an acknowledgement; an offset acknowledged twice means an acknowledged record was
/// lost and its offset handed out again.
fn record_ack(acked: &mut BTreeMap<u64, u64>, round: u64, offset: u64, tag: u64) {
    if let Some(earlier) = acked.insert(offset, tag) {
        panic!(
            "round {round}: offset {offset} was acknowledged twice (tags {earlier:016x} and {tag:016x}): an acknowledged record was lost and its offset reused"
        );
    }
}

/// Runs one child, kills it with `SIGKILL` after `kill_after` acknowledged records (0: as soon as
/// it starts opening the log), collects every acknowledgement it fully printed into `acked`,
/// and returns how many there were.
fn run_and_kill(
    exe: &Path,
    dir: &Path,
    round: u64,
    child_seed: u64,
    kill_after: u64,
    acked: &mut BTreeMap<u64, u64>,
) -> u64 {
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

    let mut acks = 0u64;
    let mut reached = false;
    while !reached {
        match rx.recv_timeout(TIMEOUT) {
            Ok(line) => match parse_line(&line) {
                Line::Opening => reached = kill_after == 0,
                Line::Ack { offset, tag } => {
                    record_ack(acked, round, offset, tag);
                    acks += 1;
                    reached = acks >= kill_after;
                }
                Line::Other => {}
            },
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "round {round}: the child printed nothing for {TIMEOUT:?} ({acks} acks so far, waiting for {kill_after})"
                );
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.wait();
                panic!(
                    "round {round}: the child exited on its own ({status:?}) after {acks} acks, before being killed; see its stderr above"
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
                if let Line::Ack { offset, tag } = parse_line(&line) {
                    record_ack(acked, round, offset, tag);
                    acks += 1;
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
    acks
}

/// Reopens the log after a crash and checks it against everything acknowledged so far. Returns
/// the high watermark.
fn verify(dir: &Path, round: u64, acked: &BTreeMap<u64, u64>) -> u64 {
    let (log, report) = Log::open(dir, config())
        .unwrap_or_else(|e| panic!("round {round}: reopening the log after SIGKILL failed: {e}"));
    if let Some(truncation) = &report.truncated {
        eprintln!("round {round}: recovery truncated a torn tail: {truncation:?} ({report:?})");
    } else if !report.is_clean() {
        eprintln!("round {round}: recovery: {report:?}");
    }
    let start = log.start_offset();
    let hw = log.high_watermark();
    assert_eq!(
        start, 0,
        "round {round}: the log starts at {start}, not 0 (nothing is ever deleted here)"
    );
    if let Some((&last, _)) = acked.last_key_value() {
        assert!(
            hw > last,
            "round {round}: high watermark {hw} after recovery, but offset {last} was acknowledged"
        );
    }

    let mut next = start;
    let mut ids = HashSet::new();
    let mut last_timestamp = i64::MIN;
    let mut acked_seen = 0usize;
    while next < hw {
        let records = log.read_records(next, 1 << 20).unwrap_or_else(|e| {
            panic!("round {round}: reading at offset {next} (high watermark {hw}) failed: {e}")
        });
        assert!(
            !records.is_empty(),
            "round {round}: nothing readable at offset {next}, below the high watermark {hw}"
        );
        for r in records {
            assert_eq!(
                r.offset, next,
                "round {round}: offsets are not dense: expected {next}, read {}",
                r.offset
            );
            assert!(
                r.offset < hw,
                "round {round}: read offset {} at or past the high watermark {hw}",
                r.offset
            );
            let (tag, id) = check_value(&r.value).unwrap_or_else(|why| {
                panic!("round {round}: garbage at offset {}: {why}", r.offset)
            });
            if let Some(&want) = acked.get(&r.offset) {
                assert_eq!(
                    tag, want,
                    "round {round}: acknowledged offset {} holds a different record (tag {tag:016x}, acknowledged {want:016x})",
                    r.offset
                );
                acked_seen += 1;
            }
            assert!(
                ids.insert(id),
                "round {round}: the record at offset {} is a copy of an earlier one",
                r.offset
            );
            assert!(
                r.timestamp >= last_timestamp,
                "round {round}: timestamp goes back at offset {}: {} after {last_timestamp}",
                r.offset,
                r.timestamp
            );
            last_timestamp = r.timestamp;
            next += 1;
        }
    }
    assert_eq!(
        acked_seen,
        acked.len(),
        "round {round}: only {acked_seen} of {} acknowledged records were read back",
        acked.len()
    );
    let past_end = log
        .read_records(hw, 1 << 20)
        .unwrap_or_else(|e| panic!("round {round}: reading at the high watermark failed: {e}"));
    assert!(
        past_end.is_empty(),
        "round {round}: {} records readable at or past the high watermark {hw}",
        past_end.len()
    );
    assert!(
        matches!(
            log.read(hw + 1, 1 << 20),
            Err(Error::OffsetOutOfRange { .. })
        ),
        "round {round}: reading past the high watermark did not fail"
    );
    // Unlock the directory for the next child.
    log.close()
        .unwrap_or_else(|e| panic!("round {round}: closing the log failed: {e}"));
    hw
}

#[test]
fn acknowledged_records_survive_sigkill() {
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
        "crash test: {rounds} rounds, seed {seed} (WHARF_CRASH_SEED={seed} replays the kill schedule)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut acked = BTreeMap::new();
    let started = Instant::now();
    for round in 0..rounds {
        // Mostly after a random number of acknowledged records; sometimes while it is opening
        // (recovering from the previous kill).
        let kill_after = if rng.random_ratio(1, 8) {
            0
        } else {
            rng.random_range(1..=MAX_ACKS_BEFORE_KILL)
        };
        let round_started = Instant::now();
        let acks = run_and_kill(
            &exe,
            dir.path(),
            round,
            rng.random(),
            kill_after,
            &mut acked,
        );
        let hw = verify(dir.path(), round, &acked);
        eprintln!(
            "round {round}: killed after {acks} acks (target {kill_after}); the log holds {hw} records, {} acknowledged in all rounds ({:?})",
            acked.len(),
            round_started.elapsed()
        );
    }
    assert!(!acked.is_empty(), "no child acknowledged anything");
    eprintln!(
        "crash test: {rounds} rounds, {} acknowledged records, all intact, in {:?}",
        acked.len(),
        started.elapsed()
    );
}
