//! Recovery on the real file system: a log is written and closed, its files are damaged with
//! `std::fs` (torn and corrupt tails, flipped bytes, deleted or damaged indexes, leftovers,
//! damage in sealed segments), and reopening must keep every whole batch before the damage,
//! report exactly what it cut or rebuilt, refuse what it may not repair, and carry on appending.
//!
//! Each case starts from a copy of a pristine log directory written once per test, so the
//! cases are independent and cheap. Random bytes come from fixed seeds, printed on failure.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wharf_log::format::{BATCH_HEADER_LEN, BatchHeader, SEGMENT_HEADER_LEN};
use wharf_log::{
    Appended, Clock, Error, Log, LogConfig, ManualClock, NewRecord, Record, RecoveryReport,
};

/// Milliseconds the clock moves between two appends, so every batch has its own timestamp.
const TICK_MS: i64 = 10;
const START_MS: i64 = 1_700_000_000_000;

/// The records of the `b`-th batch a test appends: 1 to 3 records of varying sizes, with and
/// without keys and headers.
fn batch_records(b: u64) -> Vec<NewRecord> {
    let count = 1 + b % 3;
    (0..count)
        .map(|j| {
            let len = 20 + ((b * 37 + j * 11) % 150) as usize;
            let value: Vec<u8> = (0..len)
                .map(|i| (b as usize * 31 + j as usize * 7 + i) as u8)
                .collect();
            let mut r = NewRecord::new(value);
            if !(b + j).is_multiple_of(4) {
                r = r.with_key(format!("key-{b}-{j}"));
            }
            if b.is_multiple_of(2) {
                r = r
                    .with_header("batch", b.to_string())
                    .with_header("record", j.to_string());
            }
            r
        })
        .collect()
}

/// One acknowledged batch.
#[derive(Clone, Debug)]
struct Acked {
    appended: Appended,
    records: Vec<NewRecord>,
}

fn as_records(batches: &[Acked]) -> Vec<Record> {
    batches
        .iter()
        .flat_map(|b| {
            b.records.iter().enumerate().map(move |(i, r)| Record {
                offset: b.appended.base_offset + i as u64,
                timestamp: b.appended.timestamp,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
            })
        })
        .collect()
}

/// A log directory plus everything known to be in it.
struct Fixture {
    dir: tempfile::TempDir,
    clock: ManualClock,
    segment_max_bytes: u64,
    index_interval_bytes: u64,
    batches: Vec<Acked>,
    appended_so_far: u64,
}

impl Fixture {
    fn new(segment_max_bytes: u64, index_interval_bytes: u64) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            clock: ManualClock::new(START_MS),
            segment_max_bytes,
            index_interval_bytes,
            batches: Vec::new(),
            appended_so_far: 0,
        }
    }

    /// A single-segment log.
    fn single() -> Self {
        Self::new(
            LogConfig::default().segment_max_bytes,
            LogConfig::default().index_interval_bytes,
        )
    }

    /// A log of many small segments with several index entries each.
    fn multi() -> Self {
        Self::new(2048, 256)
    }

    fn config(&self) -> LogConfig {
        LogConfig {
            segment_max_bytes: self.segment_max_bytes,
            index_interval_bytes: self.index_interval_bytes,
            clock: Arc::new(self.clock.clone()),
            ..LogConfig::default()
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn open(&self) -> (Log, RecoveryReport) {
        match Log::open(self.path(), self.config()) {
            Ok(opened) => opened,
            Err(e) => panic!("reopening {} failed: {e}", self.path().display()),
        }
    }

    /// Appends `n` batches and remembers them.
    fn append(&mut self, log: &Log, n: u64) {
        for _ in 0..n {
            let records = batch_records(self.appended_so_far);
            self.appended_so_far += 1;
            let appended = log.append_wait(&records).unwrap();
            if let Some(prev) = self.batches.last() {
                assert_eq!(appended.base_offset, prev.appended.last_offset + 1);
            }
            self.batches.push(Acked { appended, records });
            self.clock.advance(TICK_MS);
        }
    }

    /// Writes a fresh log of `n` batches and closes it.
    fn write(mut self, n: u64) -> Self {
        let (log, report) = self.open();
        assert!(report.is_clean(), "{report:?}");
        self.append(&log, n);
        log.close().unwrap();
        self
    }

    /// A copy of this (closed) log in a new directory, for one damage case.
    fn copy(&self) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for entry in fs::read_dir(self.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "LOCK" {
                fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
        Self {
            dir,
            clock: ManualClock::new(self.clock.now_ms()),
            segment_max_bytes: self.segment_max_bytes,
            index_interval_bytes: self.index_interval_bytes,
            batches: self.batches.clone(),
            appended_so_far: self.appended_so_far,
        }
    }

    fn seg(&self, base: u64) -> PathBuf {
        self.path().join(format!("{base:020}.log"))
    }

    fn idx(&self, base: u64) -> PathBuf {
        self.path().join(format!("{base:020}.idx"))
    }

    /// Base offsets of the segment files, ascending.
    fn segments(&self) -> Vec<u64> {
        let mut bases: Vec<u64> = fs::read_dir(self.path())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".log")
                    .filter(|s| s.len() == 20)
                    .and_then(|s| s.parse().ok())
            })
            .collect();
        bases.sort_unstable();
        bases
    }

    fn last_segment(&self) -> u64 {
        *self.segments().last().unwrap()
    }

    /// The batches of a segment file, as (start position, length, index in `self.batches`).
    fn spans(&self, base: u64) -> Vec<Span> {
        let bytes = fs::read(self.seg(base)).unwrap();
        let mut pos = SEGMENT_HEADER_LEN as usize;
        let mut out = Vec::new();
        while pos < bytes.len() {
            let h = BatchHeader::parse(&bytes[pos..]).unwrap();
            let batch = self
                .batches
                .iter()
                .position(|b| b.appended.base_offset == h.base_offset)
                .unwrap();
            out.push(Span {
                start: pos as u64,
                len: u64::from(h.length),
                batch,
            });
            pos += h.length as usize;
        }
        assert_eq!(
            pos,
            bytes.len(),
            "segment {base} does not end at a batch boundary"
        );
        out
    }

    /// The offset that follows batch `i - 1` (the base offset of batch `i`, if it exists).
    fn offset_of_batch(&self, i: usize) -> u64 {
        self.batches.get(i).map_or_else(
            || {
                self.batches
                    .last()
                    .map_or(0, |b| b.appended.last_offset + 1)
            },
            |b| b.appended.base_offset,
        )
    }

    fn expected(&self) -> Vec<Record> {
        as_records(&self.batches)
    }
}

#[derive(Clone, Copy, Debug)]
struct Span {
    start: u64,
    len: u64,
    batch: usize,
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip(path: &Path, at: u64, mask: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= mask;
    fs::write(path, bytes).unwrap();
}

fn append_bytes(path: &Path, extra: &[u8]) {
    let mut bytes = fs::read(path).unwrap();
    bytes.extend_from_slice(extra);
    fs::write(path, bytes).unwrap();
}

fn all_records(log: &Log) -> Vec<Record> {
    log.read_records(0, usize::MAX).unwrap()
}

fn assert_records(log: &Log, expected: &[Record], what: &str) {
    let got = all_records(log);
    assert_eq!(got.len(), expected.len(), "{what}: record count");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g, e, "{what}: record at offset {}", e.offset);
    }
    assert_eq!(
        log.high_watermark(),
        expected.last().map_or(log.start_offset(), |r| r.offset + 1),
        "{what}: high watermark"
    );
}

/// Every batch can be found by time and by each of its offsets.
fn assert_lookups(log: &Log, fx: &Fixture, batches: std::ops::Range<usize>, what: &str) {
    let expected = fx.expected();
    for b in &fx.batches[batches] {
        let a = b.appended;
        assert_eq!(
            log.offset_for_timestamp(a.timestamp).unwrap(),
            Some(a.base_offset),
            "{what}: time lookup of {a:?}"
        );
        assert_eq!(
            log.offset_for_timestamp(a.timestamp - TICK_MS / 2).unwrap(),
            Some(a.base_offset),
            "{what}: time lookup just before {a:?}"
        );
        for offset in a.base_offset..=a.last_offset {
            let got = log.read_records(offset, 1).unwrap();
            assert_eq!(
                got.first(),
                expected.get(offset as usize),
                "{what}: read at {offset}"
            );
        }
    }
}

/// Reopens a log whose last segment was damaged so that batches `first_lost..` must go, the
/// segment being cut at `position` with `removed` bytes removed; checks the report, the data,
/// that appends continue at the cut, and that the next reopen is clean.
fn expect_tail_truncated(
    mut fx: Fixture,
    first_lost: usize,
    position: u64,
    removed: u64,
    what: &str,
) {
    let base = fx.last_segment();
    let (log, report) = fx.open();
    let cut = report
        .truncated
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no truncation reported: {report:?}"));
    assert_eq!(cut.segment_base, base, "{what}: {report:?}");
    assert_eq!(cut.position, position, "{what}: {report:?}");
    assert_eq!(cut.removed_bytes, removed, "{what}: {report:?}");
    assert!(!cut.reason.is_empty(), "{what}: {report:?}");
    assert!(report.rebuilt_indexes.is_empty(), "{what}: {report:?}");
    assert!(report.removed_files.is_empty(), "{what}: {report:?}");
    let resume_at = fx.offset_of_batch(first_lost);
    assert_eq!(report.next_offset, resume_at, "{what}: {report:?}");
    assert_eq!(log.high_watermark(), resume_at, "{what}");
    assert_eq!(
        file_len(&fx.seg(base)),
        position,
        "{what}: segment length after recovery"
    );

    fx.batches.truncate(first_lost);
    assert_records(&log, &fx.expected(), what);
    assert_lookups(&log, &fx, 0..fx.batches.len(), what);

    // Appends continue exactly where the whole batches ended.
    fx.append(&log, 3);
    assert_eq!(
        fx.batches[first_lost].appended.base_offset, resume_at,
        "{what}"
    );
    assert_records(&log, &fx.expected(), what);
    log.close().unwrap();
    drop(log);

    let (log, report) = fx.open();
    assert!(report.is_clean(), "{what}: second reopen: {report:?}");
    assert_records(&log, &fx.expected(), &format!("{what}, second reopen"));
    assert_lookups(&log, &fx, 0..fx.batches.len(), what);
}

/// Cut points inside a batch of `len` bytes: inside its header, just after it, in the body.
fn cut_points(len: u64) -> Vec<u64> {
    let header = BATCH_HEADER_LEN as u64;
    let mut cuts = vec![
        1,
        2,
        3,
        4,
        7,
        8,
        12,
        20,
        24,
        32,
        header - 1,
        header,
        header + 1,
        len / 2,
        len - 1,
    ];
    cuts.retain(|&c| c > 0 && c < len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[test]
fn truncating_the_last_batch_keeps_every_batch_before_it() {
    let pristine = Fixture::single().write(6);
    let spans = pristine.spans(pristine.last_segment());
    assert_eq!(spans.len(), 6);
    let last = *spans.last().unwrap();
    for cut in cut_points(last.len) {
        let fx = pristine.copy();
        truncate(&fx.seg(fx.last_segment()), last.start + cut);
        expect_tail_truncated(
            fx,
            last.batch,
            last.start,
            cut,
            &format!("cut {cut} bytes into the last batch"),
        );
    }
}

#[test]
fn truncating_the_only_batch_of_the_last_of_several_segments() {
    // Several sealed segments, then a roll, then one batch alone in the active segment.
    let mut pristine = Fixture::multi();
    {
        let (log, _) = pristine.open();
        pristine.append(&log, 30);
        log.roll().unwrap();
        pristine.append(&log, 1);
        log.close().unwrap();
    }
    let bases = pristine.segments();
    assert!(bases.len() >= 3, "{bases:?}");
    let spans = pristine.spans(pristine.last_segment());
    assert_eq!(spans.len(), 1);
    let only = spans[0];
    assert_eq!(only.start, SEGMENT_HEADER_LEN);
    for cut in cut_points(only.len) {
        let fx = pristine.copy();
        truncate(&fx.seg(fx.last_segment()), only.start + cut);
        expect_tail_truncated(
            fx,
            only.batch,
            only.start,
            cut,
            &format!("cut {cut} bytes into the only batch of the last segment"),
        );
    }
    // The same in a last segment of several batches, after sealed segments.
    let pristine = Fixture::multi().write(33);
    let spans = pristine.spans(pristine.last_segment());
    assert!(spans.len() >= 2, "{spans:?}");
    let last = *spans.last().unwrap();
    for cut in [1, 39, 40, last.len - 1] {
        let fx = pristine.copy();
        truncate(&fx.seg(fx.last_segment()), last.start + cut);
        expect_tail_truncated(
            fx,
            last.batch,
            last.start,
            cut,
            &format!("multi-segment: cut {cut} bytes into the last batch"),
        );
    }
}

/// Byte positions in a batch to damage: every header field, and the body.
fn damage_points(len: u64) -> Vec<u64> {
    let mut points = vec![
        0,
        1,
        2,
        3,
        4,
        7,
        8,
        9,
        10,
        11,
        12,
        19,
        20,
        23,
        24,
        31,
        32,
        39,
        40,
        41,
        len / 2,
        len - 2,
        len - 1,
    ];
    points.retain(|&p| p < len);
    points.sort_unstable();
    points.dedup();
    points
}

#[test]
fn a_flipped_byte_in_the_last_batch_cuts_just_that_batch() {
    let pristine = Fixture::single().write(6);
    let last = *pristine.spans(pristine.last_segment()).last().unwrap();
    for at in damage_points(last.len) {
        for mask in [0x01u8, 0x80, 0xff] {
            let fx = pristine.copy();
            let seg = fx.seg(fx.last_segment());
            let len = file_len(&seg);
            flip(&seg, last.start + at, mask);
            let what = format!("byte {at} of the last batch xor {mask:#04x}");
            expect_tail_truncated(fx, last.batch, last.start, len - last.start, &what);
        }
    }
}

#[test]
fn a_flipped_byte_in_a_middle_batch_of_the_active_segment_cuts_from_there() {
    let pristine = Fixture::single().write(10);
    let seg_len = file_len(&pristine.seg(0));
    let spans = pristine.spans(0);
    assert_eq!(spans.len(), 10);
    for victim in [0usize, 1, 4, 8] {
        let span = spans[victim];
        for at in [0, 5, 13, 21, 26, 33, 40, span.len / 2, span.len - 1] {
            let fx = pristine.copy();
            flip(&fx.seg(0), span.start + at, 0x10);
            let what = format!("byte {at} of batch {victim} of 10 flipped");
            expect_tail_truncated(fx, span.batch, span.start, seg_len - span.start, &what);
        }
    }
}

#[test]
fn garbage_after_the_last_batch_is_cut() {
    let pristine = Fixture::single().write(5);
    let seg_len = file_len(&pristine.seg(0));
    let whole = pristine.batches.len();
    let lens = [1usize, 2, 3, 4, 39, 40, 41, 100, 512, 5000];
    let rounds = common::scaled(lens.len() as u64, 100);
    for round in 0..rounds {
        let seed = 0x5eed_0000 + round;
        let mut rng = StdRng::seed_from_u64(seed);
        let len = lens
            .get(round as usize)
            .copied()
            .unwrap_or_else(|| rng.random_range(1..=10_000));
        let garbage: Vec<u8> = (0..len).map(|_| rng.random_range(1..=255u8)).collect();
        let fx = pristine.copy();
        append_bytes(&fx.seg(0), &garbage);
        let what = format!("{len} random non-zero bytes (seed {seed:#x}) after the last batch");
        expect_tail_truncated(fx, whole, seg_len, len as u64, &what);
    }
    // A zero-filled tail (for example space a file system allocated but never wrote).
    for len in [1usize, 8, 40, 4096] {
        let fx = pristine.copy();
        append_bytes(&fx.seg(0), &vec![0u8; len]);
        expect_tail_truncated(
            fx,
            whole,
            seg_len,
            len as u64,
            &format!("{len} zero bytes after the last batch"),
        );
    }
    // A copy of a whole valid batch, which does not continue the offsets.
    let spans = pristine.spans(0);
    let first = spans[0];
    let bytes = fs::read(pristine.seg(0)).unwrap();
    let fx = pristine.copy();
    append_bytes(
        &fx.seg(0),
        &bytes[first.start as usize..(first.start + first.len) as usize],
    );
    expect_tail_truncated(
        fx,
        whole,
        seg_len,
        first.len,
        "a replayed copy of the first batch after the last one",
    );
}

/// Reopens a log whose sealed segments `rebuilt` had a missing or damaged index; checks that
/// exactly those were rebuilt, identical to the originals, and that everything reads.
fn expect_indexes_rebuilt(fx: &Fixture, rebuilt: &[u64], originals: &IndexFiles, what: &str) {
    let (log, report) = fx.open();
    let mut got = report.rebuilt_indexes.clone();
    got.sort_unstable();
    assert_eq!(got, rebuilt, "{what}: {report:?}");
    assert_eq!(report.truncated, None, "{what}: {report:?}");
    assert!(report.removed_files.is_empty(), "{what}: {report:?}");
    assert_eq!(report.segments, fx.segments().len(), "{what}: {report:?}");
    assert_records(&log, &fx.expected(), what);
    assert_lookups(&log, fx, 0..fx.batches.len(), what);
    for (base, bytes) in originals {
        let now = fs::read(fx.idx(*base))
            .unwrap_or_else(|e| panic!("{what}: index {base} after reopen: {e}"));
        assert!(
            now == *bytes,
            "{what}: the index of segment {base} differs from the one the log wrote"
        );
    }
    drop(log);
    let (log, report) = fx.open();
    assert!(report.is_clean(), "{what}: second reopen: {report:?}");
    assert_records(&log, &fx.expected(), what);
}

/// The bytes of the index files the log wrote, by segment base.
type IndexFiles = Vec<(u64, Vec<u8>)>;

fn multi_segment_pristine() -> (Fixture, Vec<u64>, IndexFiles) {
    let pristine = Fixture::multi().write(60);
    let bases = pristine.segments();
    assert!(bases.len() >= 5, "{bases:?}");
    let sealed = bases[..bases.len() - 1].to_vec();
    let originals: IndexFiles = sealed
        .iter()
        .map(|&b| (b, fs::read(pristine.idx(b)).unwrap()))
        .collect();
    assert!(
        !pristine.idx(*bases.last().unwrap()).exists(),
        "the active segment has no index file"
    );
    (pristine, sealed, originals)
}

#[test]
fn a_deleted_index_is_rebuilt() {
    let (pristine, sealed, originals) = multi_segment_pristine();
    for &victim in &[sealed[0], sealed[1], *sealed.last().unwrap()] {
        let fx = pristine.copy();
        fs::remove_file(fx.idx(victim)).unwrap();
        expect_indexes_rebuilt(
            &fx,
            &[victim],
            &originals,
            &format!("index of segment {victim} deleted"),
        );
    }
    let fx = pristine.copy();
    for &base in &sealed {
        fs::remove_file(fx.idx(base)).unwrap();
    }
    expect_indexes_rebuilt(&fx, &sealed, &originals, "every index deleted");
}

#[test]
fn a_damaged_index_is_rebuilt() {
    let (pristine, sealed, originals) = multi_segment_pristine();
    let victim = sealed[1];
    let idx_len = file_len(&pristine.idx(victim));
    assert!(
        idx_len > 56 + 16,
        "the index of segment {victim} should have several entries ({idx_len} bytes)"
    );
    // Every field of the header (magic, version, count, base, next, data length, last
    // timestamp, checksum, reserved) and the entries.
    for at in [0, 7, 8, 12, 16, 24, 32, 40, 48, 52, 56, 60, 64, idx_len - 1] {
        let fx = pristine.copy();
        flip(&fx.idx(victim), at, 0x04);
        expect_indexes_rebuilt(
            &fx,
            &[victim],
            &originals,
            &format!("byte {at} of the index flipped"),
        );
    }
    for len in [0, 10, 55, 56, idx_len - 16, idx_len - 1] {
        let fx = pristine.copy();
        truncate(&fx.idx(victim), len);
        expect_indexes_rebuilt(
            &fx,
            &[victim],
            &originals,
            &format!("index truncated to {len} bytes"),
        );
    }
    let fx = pristine.copy();
    append_bytes(&fx.idx(victim), &[0xAB; 16]);
    expect_indexes_rebuilt(&fx, &[victim], &originals, "16 bytes appended to the index");
    // A valid index, but another segment's.
    let fx = pristine.copy();
    fs::copy(fx.idx(sealed[2]), fx.idx(victim)).unwrap();
    expect_indexes_rebuilt(&fx, &[victim], &originals, "the index of another segment");
}

/// Every file in the log directory but the lock file, with its contents.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "LOCK")
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Expects `Log::open` to refuse with [`Error::Corrupt`] naming `damaged` (at `position`, if
/// given), twice in a row, and to leave every file in the directory as it was.
fn expect_refused(fx: &Fixture, damaged: &Path, position: Option<u64>, what: &str) {
    let before = snapshot(fx.path());
    for attempt in 0..2 {
        match Log::open(fx.path(), fx.config()) {
            Ok((_, report)) => panic!(
                "{what}: the log opened instead of refusing (attempt {attempt}); report: {report:?}"
            ),
            Err(err) => {
                let Error::Corrupt {
                    path, position: at, ..
                } = &err
                else {
                    panic!("{what}: expected Error::Corrupt, got {err}");
                };
                assert_eq!(path, damaged, "{what}: {err}");
                if let Some(p) = position {
                    assert_eq!(*at, p, "{what}: {err}");
                }
                let name = damaged.file_name().unwrap().to_str().unwrap();
                assert!(
                    err.to_string().contains(name),
                    "{what}: the message does not name the file: {err}"
                );
                assert!(err.is_storage_failure());
            }
        }
        let after = snapshot(fx.path());
        for (name, bytes) in &before {
            let now = after.iter().find(|(n, _)| n == name).map(|(_, b)| b);
            assert!(
                now == Some(bytes),
                "{what}: the refused open (attempt {attempt}) modified or removed {name}"
            );
        }
        assert_eq!(
            after.len(),
            before.len(),
            "{what}: the refused open (attempt {attempt}) created files"
        );
    }
}

#[test]
fn damage_in_a_sealed_segment_is_refused() {
    let (pristine, sealed, _) = multi_segment_pristine();
    for &victim in &[sealed[0], sealed[2]] {
        let spans = pristine.spans(victim);
        assert!(spans.len() >= 3, "{spans:?}");
        let last = *spans.last().unwrap();
        let middle = spans[spans.len() / 2];

        for at in [0u64, 3, 8, 17, 24, 32] {
            let fx = pristine.copy();
            flip(&fx.seg(victim), at, 0x20);
            expect_refused(
                &fx,
                &fx.seg(victim),
                Some(0),
                &format!("segment {victim}: byte {at} of its file header flipped"),
            );
        }
        for cut in [1, 39, 40, last.len - 1] {
            let fx = pristine.copy();
            truncate(&fx.seg(victim), last.start + cut);
            expect_refused(
                &fx,
                &fx.seg(victim),
                Some(last.start),
                &format!("segment {victim}: cut {cut} bytes into its last batch"),
            );
        }
        for at in [5, 13, 40, middle.len / 2] {
            let fx = pristine.copy();
            flip(&fx.seg(victim), middle.start + at, 0x01);
            fs::remove_file(fx.idx(victim)).unwrap();
            expect_refused(
                &fx,
                &fx.seg(victim),
                Some(middle.start),
                &format!("segment {victim}: byte {at} of a middle batch flipped, index deleted"),
            );
        }
        let fx = pristine.copy();
        append_bytes(&fx.seg(victim), &[0x5a; 100]);
        expect_refused(
            &fx,
            &fx.seg(victim),
            None,
            &format!("segment {victim}: garbage after its last batch"),
        );
    }
}

/// A sealed segment that lost whole batches at its end still holds acknowledged data that is
/// now missing: its index says how long it was. Recovery must refuse, not treat the hole as an
/// interrupted retention and delete the segments before it.
#[test]
fn a_sealed_segment_cut_at_a_batch_boundary_is_refused() {
    let (pristine, sealed, _) = multi_segment_pristine();
    for &victim in &[sealed[0], sealed[2]] {
        let spans = pristine.spans(victim);
        let last = *spans.last().unwrap();
        for keep in [last.start, SEGMENT_HEADER_LEN] {
            let fx = pristine.copy();
            truncate(&fx.seg(victim), keep);
            expect_refused(
                &fx,
                &fx.seg(victim),
                None,
                &format!("segment {victim} cut to {keep} bytes (a batch boundary)"),
            );
        }
    }
}

/// A flipped byte inside a sealed segment whose index is intact may go unnoticed when the log
/// opens (opening checks the index, not every batch). Then reading it must fail with
/// [`Error::Corrupt`] naming the file: the damaged batch is never served and nothing is cut.
#[test]
fn damage_in_a_sealed_segment_with_an_intact_index_is_never_served_or_dropped() {
    let (pristine, sealed, _) = multi_segment_pristine();
    let victim = sealed[1];
    let spans = pristine.spans(victim);
    let middle = spans[spans.len() / 2];
    let batch = pristine.batches[middle.batch].appended;
    // The highest set bit of the base offset's low byte: clearing it makes the stored base
    // offset smaller, as setting bit 6 of its second byte makes it larger.
    let lower_base = 0x80u8 >> (batch.base_offset as u8).leading_zeros();
    assert!(batch.base_offset as u8 & lower_base != 0);
    let cases = [
        (4, 0x40),
        (12, lower_base),
        (13, 0x40),
        (21, 0x40),
        (26, 0x40),
        (40, 0x40),
        (middle.len / 2, 0x40),
        (middle.len - 1, 0x40),
    ];
    let expected = pristine.expected();
    let mut wrong = Vec::new();
    for (at, mask) in cases {
        let fx = pristine.copy();
        let seg = fx.seg(victim);
        flip(&seg, middle.start + at, mask);
        let damaged_bytes = fs::read(&seg).unwrap();
        let what = format!(
            "segment {victim}: byte {at} of the batch at offset {} xor {mask:#04x}, index intact",
            batch.base_offset
        );
        match Log::open(fx.path(), fx.config()) {
            Err(err @ Error::Corrupt { .. }) => {
                assert!(
                    err.to_string()
                        .contains(seg.file_name().unwrap().to_str().unwrap()),
                    "{what}: {err}"
                );
            }
            Err(other) => panic!("{what}: expected Error::Corrupt, got {other}"),
            Ok((log, report)) => {
                assert!(
                    report.truncated.is_none() && report.removed_files.is_empty(),
                    "{what}: {report:?}"
                );
                assert_eq!(
                    report.next_offset,
                    fx.offset_of_batch(fx.batches.len()),
                    "{what}: {report:?}"
                );
                // Reading the damaged batch must fail, naming the file; it must not return
                // nothing (as if the log ended there) or skip to later records.
                for offset in batch.base_offset..=batch.last_offset {
                    match log.read_records(offset, 1) {
                        Err(Error::Corrupt { path, .. }) => assert_eq!(path, seg, "{what}"),
                        Err(other) => panic!("{what}: expected Error::Corrupt, got {other}"),
                        Ok(records) => wrong.push(format!(
                            "{what}: read_records({offset}) with the high watermark at {} returned Ok with offsets {:?}",
                            log.high_watermark(),
                            records.iter().map(|r| r.offset).collect::<Vec<_>>()
                        )),
                    }
                }
                // What lies before the damaged batch still reads.
                let got = log.read_records(0, 1).unwrap();
                assert_eq!(got.first(), expected.first(), "{what}");
            }
        }
        assert!(
            fs::read(&seg).unwrap() == damaged_bytes,
            "{what}: the damaged sealed segment was modified"
        );
    }
    assert!(
        wrong.is_empty(),
        "damaged batches were read without an error:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn leftover_temp_files_and_orphan_indexes_are_removed() {
    let (pristine, sealed, originals) = multi_segment_pristine();
    let fx = pristine.copy();
    let active = fx.last_segment();
    let leftovers = [
        format!("{:020}.idx.tmp", sealed[1]),
        format!("{active:020}.idx.tmp"),
        // An index whose segment retention already deleted, and one far beyond the log.
        format!("{:020}.idx", 0u64.wrapping_sub(1) / 2),
        // The active segment has no index file; one left over from an unfinished roll goes.
        format!("{active:020}.idx"),
    ];
    for name in &leftovers {
        fs::write(fx.path().join(name), b"leftover bytes").unwrap();
    }
    // An orphan index of a segment before the first one (retention deleted the segment).
    fs::rename(fx.seg(sealed[0]), fx.path().join("moved-away")).unwrap();
    let orphan = format!("{:020}.idx", sealed[0]);

    let (log, report) = fx.open();
    let mut removed = report.removed_files.clone();
    removed.sort();
    let mut want: Vec<String> = leftovers.to_vec();
    want.push(orphan);
    want.sort();
    assert_eq!(removed, want, "{report:?}");
    assert_eq!(report.truncated, None, "{report:?}");
    assert!(report.rebuilt_indexes.is_empty(), "{report:?}");
    for name in &want {
        assert!(!fx.path().join(name).exists(), "{name} is still there");
    }
    // Everything from the second segment on is intact; the moved-away segment's records are
    // gone with it.
    let first_kept = fx
        .batches
        .iter()
        .position(|b| b.appended.base_offset == sealed[1])
        .unwrap();
    let kept = as_records(&fx.batches[first_kept..]);
    assert_eq!(log.start_offset(), sealed[1]);
    assert_eq!(log.read_records(sealed[1], usize::MAX).unwrap(), kept);
    assert!(
        fs::read(fx.path().join("moved-away")).is_ok(),
        "unrelated files are left alone"
    );
    for (base, bytes) in &originals[1..] {
        assert!(
            fs::read(fx.idx(*base)).unwrap() == *bytes,
            "index {base} was touched"
        );
    }
    drop(log);
    let (_log, report) = fx.open();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn an_empty_next_segment_file_is_recreated() {
    let pristine = Fixture::multi().write(25);
    let bases = pristine.segments();
    assert!(bases.len() >= 2, "{bases:?}");
    let active = *bases.last().unwrap();
    assert!(
        !pristine.spans(active).is_empty(),
        "the active segment must hold records"
    );
    let next = pristine.offset_of_batch(pristine.batches.len());

    for (fill, what) in [
        (0usize, "an empty file"),
        (SEGMENT_HEADER_LEN as usize, "a zeroed header"),
        (4096, "4 KiB of zeros"),
    ] {
        let mut fx = pristine.copy();
        fs::write(fx.seg(next), vec![0u8; fill]).unwrap();
        let what = format!("next segment {next} created as {what}");
        let (log, report) = fx.open();
        // The segment that was active is now sealed and had no index yet.
        assert_eq!(report.rebuilt_indexes, vec![active], "{what}: {report:?}");
        assert!(report.removed_files.is_empty(), "{what}: {report:?}");
        match (&report.truncated, fill) {
            (None, 0) => {}
            (Some(t), f) if f > 0 => assert_eq!(
                (t.segment_base, t.position),
                (next, 0),
                "{what}: {report:?}"
            ),
            _ => panic!("{what}: unexpected truncation report: {report:?}"),
        }
        assert_eq!(report.segments, bases.len() + 1, "{what}: {report:?}");
        assert_eq!(report.next_offset, next, "{what}: {report:?}");
        assert_records(&log, &fx.expected(), &what);
        assert_lookups(&log, &fx, 0..fx.batches.len(), &what);
        assert_eq!(
            file_len(&fx.seg(next)),
            SEGMENT_HEADER_LEN,
            "{what}: recreated with just its header"
        );
        assert!(fx.idx(active).exists(), "{what}");

        fx.append(&log, 2);
        assert_eq!(
            fx.batches[fx.batches.len() - 2].appended.base_offset,
            next,
            "{what}"
        );
        assert!(
            file_len(&fx.seg(next)) > SEGMENT_HEADER_LEN,
            "{what}: appends go to the recreated segment"
        );
        drop(log);
        let (log, report) = fx.open();
        assert!(report.is_clean(), "{what}: second reopen: {report:?}");
        assert_records(&log, &fx.expected(), &what);
    }

    // The only segment of a log, empty: a log that was created but whose first segment never
    // reached the disk.
    let fx = Fixture::single();
    fs::write(fx.seg(0), b"").unwrap();
    let (log, report) = fx.open();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.next_offset, 0);
    assert_eq!(log.append_wait(&batch_records(0)).unwrap().base_offset, 0);
}
