//! Poisoning on the fault-injecting file layer ([`FaultFs`]): when a write or an fsync fails,
//! the log is poisoned — the append in flight fails, later appends (and rolls) fail at once
//! with [`Error::Poisoned`], reads of what was acknowledged keep working — until the log is
//! reopened, and recovery then takes appends again. Nothing is ever acknowledged that is not
//! durable under the log's mode: under `always`, an acknowledged append survives a power loss
//! ([`FaultFs::power_loss`]) after the failure, a failed one never shows up torn, and what a
//! reopened log serves survives a power loss too.
//!
//! Concurrency is synchronised by tickets, never by sleeping. Every random choice comes from a
//! seed named in the failure message.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wharf_log::vfs::Vfs;
use wharf_log::vfs::fault::FaultFs;
use wharf_log::{Appended, Durability, Error, Log, LogConfig, NewRecord, Record, RecoveryReport};

const DIR: &str = "/wharf/partition-0";

fn dir() -> &'static Path {
    Path::new(DIR)
}

fn config(fs: &FaultFs, durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        vfs: fs.shared(),
        ..LogConfig::default()
    }
}

/// `n` records tagged `tag`, with keys and headers.
fn records(tag: &str, n: usize) -> Vec<NewRecord> {
    (0..n)
        .map(|i| {
            NewRecord::new(format!("{tag}/{i}/{}", "v".repeat(i * 13 % 50)))
                .with_key(tag.to_owned())
                .with_header("i", i.to_string())
        })
        .collect()
}

/// Every record that got an offset, and which offsets were acknowledged.
#[derive(Debug, Default)]
struct Ledger {
    submitted: BTreeMap<u64, NewRecord>,
    acked: BTreeSet<u64>,
}

impl Ledger {
    fn submit(&mut self, a: Appended, records: &[NewRecord]) {
        for (i, r) in records.iter().enumerate() {
            let previous = self.submitted.insert(a.base_offset + i as u64, r.clone());
            assert!(
                previous.is_none(),
                "offset {} was given out twice",
                a.base_offset + i as u64
            );
        }
    }

    fn ack(&mut self, a: Appended) {
        self.acked.extend(a.base_offset..=a.last_offset);
    }

    /// One past the last acknowledged offset.
    fn acked_end(&self) -> u64 {
        self.acked.last().map_or(0, |o| o + 1)
    }

    /// After recovery, offsets from `end` on are given out again: forget what was there.
    fn forget_from(&mut self, end: u64) {
        self.submitted.retain(|o, _| *o < end);
        self.acked.retain(|o| *o < end);
    }

    fn expected(&self, end: u64) -> Vec<(u64, NewRecord)> {
        self.submitted
            .range(..end)
            .map(|(o, r)| (*o, r.clone()))
            .collect()
    }
}

fn same(got: &Record, offset: u64, want: &NewRecord) -> bool {
    got.offset == offset
        && got.key == want.key
        && got.value == want.value
        && got.headers == want.headers
}

/// Appends and waits; records the outcome in `ledger`.
fn append_and_wait(
    log: &Log,
    ledger: &Mutex<Ledger>,
    records: &[NewRecord],
) -> wharf_log::Result<Appended> {
    let ticket = log.append(records)?;
    ledger.lock().unwrap().submit(ticket.appended(), records);
    let done = ticket.wait()?;
    ledger.lock().unwrap().ack(done);
    Ok(done)
}

/// The cause of a poisoning error; panics on anything else.
fn poisoned<T: Debug>(result: wharf_log::Result<T>, what: &str) -> String {
    match result {
        Err(Error::Poisoned { cause }) => cause.to_string(),
        other => panic!("{what}: expected Error::Poisoned, got {other:?}"),
    }
}

/// Checks a poisoned log: every operation that writes fails, reads of what was acknowledged
/// work, and the state says why.
fn assert_poisoned_state(log: &Log, ledger: &Mutex<Ledger>, cause_has: &str, what: &str) {
    let cause = log
        .poisoned()
        .unwrap_or_else(|| panic!("{what}: the log is not poisoned"));
    assert!(
        cause.contains(cause_has),
        "{what}: cause {cause:?} does not mention {cause_has:?}"
    );
    assert_eq!(
        log.stats().poisoned.as_deref(),
        Some(&*cause),
        "{what}: stats"
    );
    poisoned(log.append(&records("after", 1)), &format!("{what}: append"));
    poisoned(
        log.append_wait(&records("after", 2)),
        &format!("{what}: append_wait"),
    );
    poisoned(log.roll(), &format!("{what}: roll"));
    let ledger = ledger.lock().unwrap();
    let hw = log.high_watermark();
    assert!(
        hw >= ledger.acked_end(),
        "{what}: high watermark {hw} below what was acknowledged"
    );
    let got = log.read_records(0, usize::MAX).unwrap();
    assert_eq!(
        got.len() as u64,
        hw,
        "{what}: reads up to the high watermark"
    );
    for (r, (offset, want)) in got.iter().zip(ledger.expected(hw)) {
        assert!(
            same(r, offset, &want),
            "{what}: offset {offset} reads {r:?}, want {want:?}"
        );
    }
}

/// Reopens; checks that the log is a dense prefix of what was submitted holding at least
/// everything below `must_hold`; returns the log and its report and forgets what was lost.
fn reopen(
    cfg: &LogConfig,
    ledger: &Mutex<Ledger>,
    must_hold: u64,
    what: &str,
) -> (Log, RecoveryReport) {
    let (log, report) =
        Log::open(dir(), cfg.clone()).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    assert!(
        log.poisoned().is_none(),
        "{what}: a reopened log starts unpoisoned"
    );
    let got = log
        .read_records(0, usize::MAX)
        .unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
    let hw = log.high_watermark();
    assert_eq!(report.next_offset, hw, "{what}: {report:?}");
    assert_eq!(
        got.len() as u64,
        hw,
        "{what}: records are not dense up to the high watermark"
    );
    let mut ledger = ledger.lock().unwrap();
    for (i, r) in got.iter().enumerate() {
        let want = ledger
            .submitted
            .get(&(i as u64))
            .unwrap_or_else(|| panic!("{what}: offset {i} holds {r:?}, which was never submitted"));
        assert!(
            same(r, i as u64, want),
            "{what}: offset {i} holds {r:?}, submitted {want:?}"
        );
    }
    assert!(
        hw >= must_hold,
        "{what}: acknowledged records lost: the log ends at {hw}, {must_hold} were required ({report:?})"
    );
    ledger.forget_from(hw);
    (log, report)
}

/// After recovery the log takes appends again, at the recovered end, and the next reopen is
/// clean.
fn appends_work_again(log: Log, cfg: &LogConfig, ledger: &Mutex<Ledger>, what: &str) {
    let end = log.high_watermark();
    let done = append_and_wait(&log, ledger, &records("again", 3))
        .unwrap_or_else(|e| panic!("{what}: append after reopen: {e}"));
    assert_eq!(done.base_offset, end, "{what}");
    log.close()
        .unwrap_or_else(|e| panic!("{what}: close after reopen: {e}"));
    drop(log);
    let must_hold = ledger.lock().unwrap().acked_end();
    let (_log, report) = reopen(cfg, ledger, must_hold, what);
    assert!(report.is_clean(), "{what}: second reopen: {report:?}");
}

fn active_segment(fs: &FaultFs) -> PathBuf {
    let mut logs: Vec<String> = fs
        .list_dir(dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    logs.sort();
    dir().join(logs.last().unwrap())
}

#[test]
fn a_failed_fsync_poisons_the_log_until_it_is_reopened() {
    // `None`: reopen right away; `Some(seed)`: after a power loss.
    let mut cases: Vec<Option<u64>> = vec![None];
    cases.extend((0..common::scaled(8, 100)).map(|i| Some(0xF5_0000 + i)));
    for power_loss in cases {
        let what = format!("fsync failure, power loss {power_loss:?}");
        let fs = FaultFs::new();
        let cfg = config(&fs, Durability::Always);
        let ledger = Mutex::new(Ledger::default());
        let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
        for i in 0..5 {
            append_and_wait(&log, &ledger, &records(&format!("ok{i}"), 1 + i % 3)).unwrap();
        }
        let acked = ledger.lock().unwrap().acked_end();
        assert_eq!(log.durable_offset(), acked, "{what}");

        fs.set_fail_sync(true);
        let first = log.append(&records("doomed-1", 2)).unwrap();
        let second = log.append(&records("doomed-2", 1));
        ledger
            .lock()
            .unwrap()
            .submit(first.appended(), &records("doomed-1", 2));
        let cause = poisoned(first.wait(), &what);
        assert!(cause.contains("fsync"), "{what}: {cause}");
        // Whatever was queued with it fails too (or was refused at once).
        match second {
            Ok(ticket) => {
                ledger
                    .lock()
                    .unwrap()
                    .submit(ticket.appended(), &records("doomed-2", 1));
                assert!(
                    ticket.is_done(),
                    "{what}: a ticket of a poisoned log is done"
                );
                poisoned(ticket.wait(), &what);
            }
            Err(e) => {
                poisoned::<()>(Err(e), &what);
            }
        }
        assert_eq!(
            log.high_watermark(),
            acked,
            "{what}: nothing more was acknowledged"
        );
        assert_eq!(log.durable_offset(), acked, "{what}");
        assert_poisoned_state(&log, &ledger, "fsync", &what);

        // The file system works again, but the log stays poisoned until it is reopened.
        fs.set_fail_sync(false);
        assert_poisoned_state(&log, &ledger, "fsync", &format!("{what}, fault cleared"));
        poisoned(log.close(), &format!("{what}: close"));
        drop(log);

        if let Some(seed) = power_loss {
            fs.power_loss(seed);
        }
        let (log, _) = reopen(&cfg, &ledger, acked, &what);
        appends_work_again(log, &cfg, &ledger, &what);
    }
}

#[test]
fn a_failed_write_poisons_the_log_and_its_batch_never_appears() {
    let mut cases: Vec<Option<u64>> = vec![None];
    cases.extend((0..common::scaled(8, 100)).map(|i| Some(0x5A_0000 + i)));
    for power_loss in cases {
        let what = format!("no space, power loss {power_loss:?}");
        let fs = FaultFs::new();
        let cfg = config(&fs, Durability::Always);
        let ledger = Mutex::new(Ledger::default());
        let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
        for i in 0..5 {
            append_and_wait(&log, &ledger, &records(&format!("ok{i}"), 2)).unwrap();
        }
        let acked = ledger.lock().unwrap().acked_end();

        fs.set_no_space(true);
        let doomed = records("doomed", 3);
        let ticket = log.append(&doomed).unwrap();
        let cause = poisoned(ticket.wait(), &what);
        assert!(cause.contains("no space"), "{what}: {cause}");
        assert_eq!(log.high_watermark(), acked, "{what}");
        assert_poisoned_state(&log, &ledger, "no space", &what);
        fs.set_no_space(false);
        poisoned(
            log.append(&records("x", 1)),
            &format!("{what}, fault cleared"),
        );
        drop(log);

        if let Some(seed) = power_loss {
            fs.power_loss(seed);
        }
        // The failed batch was never written, so there is nothing to cut, and it is not there.
        let (log, report) = reopen(&cfg, &ledger, acked, &what);
        assert!(report.is_clean(), "{what}: {report:?}");
        assert_eq!(
            log.high_watermark(),
            acked,
            "{what}: the failed batch must not appear"
        );
        appends_work_again(log, &cfg, &ledger, &what);
    }
}

/// A write that fails after putting part of the batch on disk (a short write) leaves a torn
/// batch: recovery cuts it and reports it, and the batch never appears.
#[test]
fn a_failed_write_that_left_part_of_its_batch_is_cut() {
    for keep in [1usize, 20, 39, 40, 41] {
        let what = format!("no space after {keep} bytes of the batch");
        let fs = FaultFs::new();
        let cfg = config(&fs, Durability::Always);
        let ledger = Mutex::new(Ledger::default());
        let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
        for i in 0..4 {
            append_and_wait(&log, &ledger, &records(&format!("ok{i}"), 2)).unwrap();
        }
        let acked = ledger.lock().unwrap().acked_end();
        fs.set_no_space(true);
        let doomed = records("doomed", 2);
        let ticket = log.append(&doomed).unwrap();
        let assigned = ticket.appended();
        poisoned(ticket.wait(), &what);
        drop(log);
        fs.set_no_space(false);

        // What a short write would have left: the start of the batch, as the log encodes it.
        let seg = active_segment(&fs);
        let mut bytes = fs.read_file(&seg).unwrap();
        let clean_len = bytes.len() as u64;
        let mut batch = Vec::new();
        wharf_log::format::encode_batch(
            &mut batch,
            assigned.base_offset,
            assigned.timestamp,
            &doomed,
        )
        .unwrap();
        let keep = keep.min(batch.len() - 1);
        bytes.extend_from_slice(&batch[..keep]);
        fs.write_file(&seg, &bytes).unwrap();

        let (log, report) = reopen(&cfg, &ledger, acked, &what);
        let cut = report
            .truncated
            .clone()
            .unwrap_or_else(|| panic!("{what}: no truncation reported: {report:?}"));
        assert_eq!(
            (cut.position, cut.removed_bytes),
            (clean_len, keep as u64),
            "{what}: {report:?}"
        );
        assert_eq!(
            log.high_watermark(),
            acked,
            "{what}: the torn batch must not appear"
        );
        assert_eq!(
            fs.read_file(&seg).unwrap().len() as u64,
            clean_len,
            "{what}"
        );
        appends_work_again(log, &cfg, &ledger, &what);
    }
}

/// Threads append with several appends in flight each; after a random number of successful
/// appends every fsync starts failing. Each ticket either succeeds — and its records survive a
/// power loss — or fails with `Poisoned`.
#[test]
fn concurrent_appenders_lose_no_acknowledged_append_when_fsync_fails() {
    let (mut acked, mut failed) = (0, 0);
    for round in 0..common::scaled(12, 50) {
        let (a, f) = concurrent_round(0xC0_FFEE_0000 + round);
        acked += a;
        failed += f;
    }
    eprintln!("{acked} records acknowledged, {failed} appends failed");
    assert!(acked > 0 && failed > 0, "the rounds must see both outcomes");
}

/// Returns how many records were acknowledged and how many appends failed.
fn concurrent_round(seed: u64) -> (usize, usize) {
    let what = format!("seed {seed:#x}");
    let mut rng = StdRng::seed_from_u64(seed);
    let fs = FaultFs::new();
    let cfg = LogConfig {
        segment_max_bytes: rng.random_range(1_500..10_000),
        index_interval_bytes: rng.random_range(1..2_000),
        ..config(&fs, Durability::Always)
    };
    let ledger = Mutex::new(Ledger::default());
    let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
    let threads = 4;
    let trip_after = rng.random_range(0..40);
    let in_flight: Vec<usize> = (0..threads).map(|_| rng.random_range(1..6)).collect();
    let failed_tickets = Mutex::new(Vec::<Appended>::new());
    std::thread::scope(|s| {
        for (t, &in_flight) in in_flight.iter().enumerate() {
            let (log, ledger, failed_tickets) = (&log, &ledger, &failed_tickets);
            s.spawn(move || appender(log, ledger, failed_tickets, t, in_flight));
        }
        for i in 0..trip_after {
            append_and_wait(&log, &ledger, &records(&format!("main-{i}"), 1))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        fs.set_fail_sync(true);
        // An append submitted from now on needs an fsync that starts after the fault: it fails.
        let late = records("main-late", 1);
        match log.append(&late) {
            Ok(ticket) => {
                ledger.lock().unwrap().submit(ticket.appended(), &late);
                poisoned(ticket.wait(), &what);
            }
            Err(e) => {
                poisoned::<()>(Err(e), &what);
            }
        }
    });
    assert!(log.poisoned().is_some(), "{what}");
    let hw = log.high_watermark();
    let durable = log.durable_offset();
    {
        let l = ledger.lock().unwrap();
        assert!(
            durable >= l.acked_end(),
            "{what}: acknowledged past the durable offset {durable}"
        );
        assert_eq!(
            hw, durable,
            "{what}: under `always` the high watermark is the durable offset"
        );
        // Every offset below the high watermark was acknowledged to whoever waited for it.
        for a in failed_tickets.lock().unwrap().iter() {
            assert!(
                a.last_offset >= hw,
                "{what}: {a:?} failed although the high watermark is {hw}"
            );
        }
    }
    let acked = ledger.lock().unwrap().acked.len();
    let failed = failed_tickets.lock().unwrap().len();
    drop(log);
    fs.power_loss(seed);
    let must_hold = ledger.lock().unwrap().acked_end();
    let (log, _) = reopen(&cfg, &ledger, must_hold, &what);
    appends_work_again(log, &cfg, &ledger, &what);
    (acked, failed)
}

fn appender(
    log: &Log,
    ledger: &Mutex<Ledger>,
    failed: &Mutex<Vec<Appended>>,
    t: usize,
    in_flight: usize,
) {
    const MAX_APPENDS: usize = 20_000;
    let mut tickets = VecDeque::new();
    let settle = |(ticket, _): (wharf_log::AppendTicket, Vec<NewRecord>)| -> bool {
        let assigned = ticket.appended();
        match ticket.wait() {
            Ok(done) => {
                ledger.lock().unwrap().ack(done);
                true
            }
            Err(Error::Poisoned { .. }) => {
                failed.lock().unwrap().push(assigned);
                false
            }
            Err(e) => panic!("thread {t}: unexpected error {e}"),
        }
    };
    for i in 0..MAX_APPENDS {
        let recs = records(&format!("t{t}-{i}"), 1 + i % 3);
        match log.append(&recs) {
            Ok(ticket) => {
                ledger.lock().unwrap().submit(ticket.appended(), &recs);
                tickets.push_back((ticket, recs));
            }
            Err(Error::Poisoned { .. }) => break,
            Err(e) => panic!("thread {t}: unexpected error {e}"),
        }
        if tickets.len() >= in_flight && !settle(tickets.pop_front().unwrap()) {
            break;
        }
    }
    for ticket in tickets {
        settle(ticket);
    }
}

/// Under `interval` and `none` an append is acknowledged once written; a write that fails
/// poisons the log all the same, and its batch never appears.
#[test]
fn a_failed_write_poisons_under_interval_and_none() {
    for durability in [
        Durability::Interval(Duration::from_millis(5)),
        Durability::None,
    ] {
        for power_loss in [None, Some(0x1D_0001u64), Some(0x1D_0002), Some(0x1D_0003)] {
            let what = format!("{durability}, no space, power loss {power_loss:?}");
            let fs = FaultFs::new();
            let cfg = config(&fs, durability);
            let ledger = Mutex::new(Ledger::default());
            let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
            for i in 0..6 {
                append_and_wait(&log, &ledger, &records(&format!("ok{i}"), 2)).unwrap();
            }
            let acked = ledger.lock().unwrap().acked_end();
            assert_eq!(log.high_watermark(), acked, "{what}");

            fs.set_no_space(true);
            let ticket = log.append(&records("doomed", 2)).unwrap();
            let cause = poisoned(ticket.wait(), &what);
            assert!(cause.contains("no space"), "{what}: {cause}");
            assert_poisoned_state(&log, &ledger, "no space", &what);
            assert_eq!(log.high_watermark(), acked, "{what}");
            let durable = log.durable_offset();
            fs.set_no_space(false);
            drop(log);

            // Without a power loss every acknowledged append is there (it was written); after
            // one, at least what the log had reported durable.
            let must_hold = match power_loss {
                None => acked,
                Some(seed) => {
                    fs.power_loss(seed);
                    durable
                }
            };
            let (log, _) = reopen(&cfg, &ledger, must_hold, &what);
            assert!(
                log.high_watermark() <= acked,
                "{what}: the failed batch must not appear"
            );
            appends_work_again(log, &cfg, &ledger, &what);
        }
    }
}

/// Under `interval` the fsync that fails is the periodic one (or the one at close); under
/// `none` the one at close or at a roll. Each poisons the log.
#[test]
fn a_failed_fsync_poisons_under_interval_and_none() {
    // Interval: appends keep being acknowledged until the periodic fsync fails.
    {
        let what = "interval, periodic fsync fails";
        let fs = FaultFs::new();
        let cfg = config(&fs, Durability::Interval(Duration::from_millis(1)));
        let ledger = Mutex::new(Ledger::default());
        let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
        append_and_wait(&log, &ledger, &records("first", 1)).unwrap();
        fs.set_fail_sync(true);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 0;
        let cause = loop {
            match append_and_wait(&log, &ledger, &records(&format!("n{i}"), 1)) {
                Ok(_) => i += 1,
                Err(Error::Poisoned { cause }) => break cause.to_string(),
                Err(e) => panic!("{what}: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no fsync was attempted within 60 s"
            );
        };
        assert!(cause.contains("fsync"), "{what}: {cause}");
        assert_poisoned_state(&log, &ledger, "fsync", what);
        let durable = log.durable_offset();
        fs.set_fail_sync(false);
        drop(log);
        fs.power_loss(0x1F_0001);
        let (log, _) = reopen(&cfg, &ledger, durable, what);
        appends_work_again(log, &cfg, &ledger, what);
    }
    // Interval and none: the fsync at close fails.
    for durability in [
        Durability::Interval(Duration::from_secs(3600)),
        Durability::None,
    ] {
        let what = format!("{durability}, fsync at close fails");
        let fs = FaultFs::new();
        let cfg = config(&fs, durability);
        let ledger = Mutex::new(Ledger::default());
        let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
        for i in 0..4 {
            append_and_wait(&log, &ledger, &records(&format!("ok{i}"), 2)).unwrap();
        }
        let acked = ledger.lock().unwrap().acked_end();
        fs.set_fail_sync(true);
        let cause = poisoned(log.close(), &what);
        assert!(cause.contains("fsync"), "{what}: {cause}");
        assert!(log.poisoned().is_some(), "{what}");
        assert!(
            matches!(
                log.append(&records("late", 1)),
                Err(Error::Poisoned { .. } | Error::Closed)
            ),
            "{what}"
        );
        fs.set_fail_sync(false);
        drop(log);
        // No power loss: everything acknowledged was written and is there.
        let (log, _) = reopen(&cfg, &ledger, acked, &what);
        appends_work_again(log, &cfg, &ledger, &what);
    }
    // None: the fsync that seals a segment on a roll fails.
    {
        let what = "none, fsync at roll fails";
        let fs = FaultFs::new();
        let cfg = config(&fs, Durability::None);
        let ledger = Mutex::new(Ledger::default());
        let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
        for i in 0..4 {
            append_and_wait(&log, &ledger, &records(&format!("ok{i}"), 2)).unwrap();
        }
        let acked = ledger.lock().unwrap().acked_end();
        fs.set_fail_sync(true);
        let cause = poisoned(log.roll(), what);
        assert!(cause.contains("fsync"), "{what}: {cause}");
        assert_poisoned_state(&log, &ledger, "fsync", what);
        fs.set_fail_sync(false);
        drop(log);
        // Under `none` the new segment may already exist (sealing runs in the background):
        // either way nothing acknowledged is lost and the log takes appends again.
        let (log, report) = reopen(&cfg, &ledger, acked, what);
        assert!((1..=2).contains(&report.segments), "{what}: {report:?}");
        appends_work_again(log, &cfg, &ledger, what);
    }
}

/// A write failure in the middle of a roll (the sealed segment's index cannot be written)
/// poisons the log; reopening cleans up the half-written index and loses nothing.
#[test]
fn a_failed_write_during_a_roll_leaves_a_recoverable_log() {
    for power_loss in [None, Some(0x20_0001u64), Some(0x20_0002)] {
        let what = format!("no space during a roll, power loss {power_loss:?}");
        let fs = FaultFs::new();
        let cfg = config(&fs, Durability::Always);
        let ledger = Mutex::new(Ledger::default());
        let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
        for i in 0..5 {
            append_and_wait(&log, &ledger, &records(&format!("ok{i}"), 2)).unwrap();
        }
        let acked = ledger.lock().unwrap().acked_end();
        fs.set_no_space(true);
        let cause = poisoned(log.roll(), &what);
        assert!(cause.contains("no space"), "{what}: {cause}");
        assert_poisoned_state(&log, &ledger, "no space", &what);
        fs.set_no_space(false);
        drop(log);
        if let Some(seed) = power_loss {
            fs.power_loss(seed);
        }
        let (log, report) = reopen(&cfg, &ledger, acked, &what);
        assert!(report.truncated.is_none(), "{what}: {report:?}");
        assert!(
            report.removed_files.iter().all(|f| f.ends_with(".tmp")),
            "{what}: only the unfinished index may be removed: {report:?}"
        );
        assert_eq!(log.high_watermark(), acked, "{what}");
        appends_work_again(log, &cfg, &ledger, &what);
    }
}

/// After a poisoning the segment may hold a batch that was written but never synced (its
/// append failed). Whatever a reopened log then serves — its high watermark, which under
/// `always` is also its durable offset — must survive a power loss, or readers would see
/// records that later vanish.
#[test]
fn what_a_reopened_log_serves_survives_a_power_loss() {
    for seed in 0..common::scaled(12, 100) {
        let seed = 0x0E_0000 + seed;
        let what = format!("seed {seed:#x}");
        let fs = FaultFs::new();
        let cfg = config(&fs, Durability::Always);
        let ledger = Mutex::new(Ledger::default());
        let (log, _) = Log::open(dir(), cfg.clone()).unwrap();
        for i in 0..3 {
            append_and_wait(&log, &ledger, &records(&format!("ok{i}"), 2)).unwrap();
        }
        let acked = ledger.lock().unwrap().acked_end();
        fs.set_fail_sync(true);
        let doomed = records("written-not-synced", 2);
        let ticket = log.append(&doomed).unwrap();
        ledger.lock().unwrap().submit(ticket.appended(), &doomed);
        poisoned(ticket.wait(), &what);
        fs.set_fail_sync(false);
        drop(log);

        // A restart without a power loss: the unsynced batch is still in the file.
        let (log, _) = reopen(&cfg, &ledger, acked, &what);
        let served = log.high_watermark();
        let claimed_durable = log.durable_offset();
        let visible = log.read_records(0, usize::MAX).unwrap();
        drop(log);

        fs.power_loss(seed);
        let (log, report) = Log::open(dir(), cfg.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let after = log.read_records(0, usize::MAX).unwrap();
        assert!(
            after.len() >= visible.len() && after[..visible.len()] == visible[..],
            "{what}: the reopened log served offsets [0, {served}) and called [0, {claimed_durable}) durable, \
             but after a power loss only [0, {}) remain ({report:?})",
            after.len()
        );
    }
}
