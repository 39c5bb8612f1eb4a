//! Format guard: a small log written by this code, checked in under `tests/fixtures/v1-log/`,
//! must stay readable — record for record, through `Log::open` and through the raw decoders —
//! so that an accidental change to the on-disk format fails a test instead of shipping.
//!
//! The fixture is three segments (the first two sealed, with index files) holding 50 records
//! with deterministic offsets, timestamps (a `ManualClock`), keys, values and headers, all
//! given by [`plan`]. If the format changes *on purpose* (with a version bump and, for old
//! data, a migration story), write a new fixture next to this one rather than regenerating it
//! in place; to regenerate (e.g. after changing [`plan`] before any release):
//!
//! ```text
//! WHARF_REGENERATE_FIXTURES=1 cargo test -p wharf-log --test format_fixture -- --ignored
//! ```
//!
//! Tests never open the checked-in directory in place: opening a log takes a `LOCK` file and
//! may repair files. They copy it to a temporary directory first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use wharf_log::format::{
    Batch, BatchHeader, INDEX_MAGIC, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, decode_index,
    decode_segment_header,
};
use wharf_log::{Log, LogConfig, ManualClock, NewRecord, Record};

/// Time of the first append.
const T0: i64 = 1_700_000_000_000;
/// Records in the fixture.
const RECORDS: u64 = 50;
/// Segment files in the fixture, by base offset (the last one is the active segment).
const SEGMENT_BASES: [u64; 3] = [0, 22, 42];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-log")
}

fn config(clock: &ManualClock) -> LogConfig {
    LogConfig {
        segment_max_bytes: 2048,
        segment_max_age: None,
        index_interval_bytes: 256,
        clock: Arc::new(clock.clone()),
        ..LogConfig::default()
    }
}

/// Record `i` of the fixture: keys absent, empty, binary or text; values empty, text or
/// binary, up to ~100 bytes; zero to three headers, some empty or non-ASCII.
fn record(i: u64) -> NewRecord {
    let value: Bytes = match i % 4 {
        0 => Bytes::from(format!("event {i}: ünïcødé ✓")),
        1 if i % 8 == 1 => Bytes::new(),
        _ => (0..(i * 37) % 100)
            .map(|j| ((i * 31 + j * 7) % 251) as u8)
            .collect::<Vec<u8>>()
            .into(),
    };
    let mut r = NewRecord::new(value);
    r.key = match i % 5 {
        0 => None,
        1 => Some(Bytes::new()),
        2 => Some(Bytes::from(vec![i as u8, 0, 0xff])),
        _ => Some(Bytes::from(format!("user-{}", i % 7))),
    };
    match i % 3 {
        0 => {}
        1 => r = r.with_header("trace-id", format!("{i:016x}")),
        _ => {
            r = r
                .with_header("content-type", "application/octet-stream")
                .with_header("ünï", "✓")
                .with_header("empty", "");
        }
    }
    r
}

/// The appends that wrote the fixture: (clock time, records) per batch. Batch sizes cycle
/// through 1..=5; the clock steps by 0 (same millisecond), 1 ms, 250 ms or 1 s.
fn plan() -> Vec<(i64, Vec<NewRecord>)> {
    const SIZES: [u64; 7] = [1, 3, 2, 4, 1, 5, 2];
    const STEPS: [i64; 6] = [0, 250, 1, 1_000, 0, 7];
    let mut out = Vec::new();
    let (mut next, mut ts) = (0u64, T0);
    for b in 0.. {
        if next == RECORDS {
            break;
        }
        if b > 0 {
            ts += STEPS[b % STEPS.len()];
        }
        let n = SIZES[b % SIZES.len()].min(RECORDS - next);
        out.push((ts, (next..next + n).map(record).collect()));
        next += n;
    }
    out
}

/// The records of [`plan`] as the log must return them.
fn expected_records() -> Vec<Record> {
    let mut out = Vec::new();
    for (ts, batch) in plan() {
        for r in batch {
            out.push(Record {
                offset: out.len() as u64,
                timestamp: ts,
                key: r.key,
                value: r.value,
                headers: r.headers,
            });
        }
    }
    out
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn expected_files() -> Vec<String> {
    let mut names = Vec::new();
    for (i, base) in SEGMENT_BASES.iter().enumerate() {
        names.push(format!("{base:020}.log"));
        if i + 1 < SEGMENT_BASES.len() {
            names.push(format!("{base:020}.idx"));
        }
    }
    names.sort();
    names
}

/// A copy of the fixture in a fresh temporary directory.
fn copy_of_fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in list(&fixture_dir()) {
        std::fs::copy(fixture_dir().join(&name), tmp.path().join(&name)).unwrap();
    }
    tmp
}

/// Rewrites the fixture. Ignored, and does nothing unless `WHARF_REGENERATE_FIXTURES=1`
/// (see the module docs): the checked-in bytes are the point of the format guard.
#[test]
#[ignore = "rewrites tests/fixtures/v1-log; run with WHARF_REGENERATE_FIXTURES=1"]
fn regenerate_fixture() {
    if std::env::var("WHARF_REGENERATE_FIXTURES").as_deref() != Ok("1") {
        eprintln!("set WHARF_REGENERATE_FIXTURES=1 to rewrite tests/fixtures/v1-log");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    {
        let (log, report) = Log::open(tmp.path(), config(&clock)).unwrap();
        assert!(report.is_clean());
        for (ts, records) in plan() {
            clock.set(ts);
            let done = log.append_wait(&records).unwrap();
            assert_eq!(done.timestamp, ts);
        }
        log.close().unwrap();
    }
    let dir = fixture_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    for name in list(tmp.path()) {
        // The lock file is the log's, not part of the data.
        if name != "LOCK" {
            std::fs::copy(tmp.path().join(&name), dir.join(&name)).unwrap();
        }
    }
    assert_eq!(
        list(&dir),
        expected_files(),
        "update SEGMENT_BASES to the new layout"
    );
}

#[test]
fn fixture_is_small_and_complete() {
    assert_eq!(list(&fixture_dir()), expected_files());
    let total: u64 = list(&fixture_dir())
        .iter()
        .map(|n| std::fs::metadata(fixture_dir().join(n)).unwrap().len())
        .sum();
    assert!(total < 50 * 1024, "fixture is {total} bytes");
}

#[test]
fn current_code_opens_and_reads_the_fixture() {
    let tmp = copy_of_fixture();
    let expected = expected_records();
    let last_ts = expected.last().unwrap().timestamp;
    let clock = ManualClock::new(last_ts + 60_000);
    {
        let (log, report) = Log::open(tmp.path(), config(&clock)).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.segments, SEGMENT_BASES.len());
        assert_eq!(report.start_offset, 0);
        assert_eq!(report.next_offset, RECORDS);
        assert_eq!(log.high_watermark(), RECORDS);
        assert_eq!(log.start_offset(), 0);
        assert_eq!(log.stats().segments, SEGMENT_BASES.len());

        // Every record, exactly.
        let all = log.read_records(0, usize::MAX).unwrap();
        assert_eq!(all.len(), expected.len());
        for (got, want) in all.iter().zip(&expected) {
            assert_eq!(got, want);
        }
        // From every offset (through the sparse indexes and segment boundaries).
        for want in &expected {
            let got = log.read_records(want.offset, 1).unwrap();
            assert_eq!(got.first(), Some(want), "read from offset {}", want.offset);
        }

        // Time lookups: every batch time, a millisecond either side, before and after all.
        let mut times: Vec<i64> = vec![T0 - 1_000, i64::MIN, last_ts + 1, i64::MAX];
        for (ts, _) in plan() {
            times.extend([ts - 1, ts, ts + 1]);
        }
        for t in times {
            let want = expected.iter().find(|r| r.timestamp >= t).map(|r| r.offset);
            assert_eq!(
                log.offset_for_timestamp(t).unwrap(),
                want,
                "offset_for_timestamp({t})"
            );
        }

        // New appends continue where the fixture ends.
        let done = log.append_wait(&[record(50), record(51)]).unwrap();
        assert_eq!((done.base_offset, done.last_offset), (RECORDS, RECORDS + 1));
        assert_eq!(done.timestamp, last_ts + 60_000);
        clock.advance(5);
        let done = log.append_wait(&[record(52)]).unwrap();
        assert_eq!(done.base_offset, RECORDS + 2);
        let tail = log.read_records(RECORDS - 1, usize::MAX).unwrap();
        let offsets: Vec<u64> = tail.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![49, 50, 51, 52]);
        assert_eq!(tail[0], expected[49]);
        assert_eq!(tail[1].value, record(50).value);
        assert_eq!(tail[3].timestamp, last_ts + 60_005);
        assert_eq!(
            log.offset_for_timestamp(last_ts + 1).unwrap(),
            Some(RECORDS)
        );
    }
    // And the result reopens cleanly.
    let (log, report) = Log::open(tmp.path(), config(&clock)).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.next_offset, RECORDS + 3);
    assert_eq!(log.read_records(0, usize::MAX).unwrap()[..50], expected[..]);
}

/// The files decoded with the raw format functions, without `Log`: a change to the layout of
/// segment headers, batches or index files breaks this even if `Log` is changed to match.
#[test]
fn fixture_files_decode_with_the_format_functions() {
    let dir = fixture_dir();
    let expected = expected_records();
    let mut records = Vec::new();
    for (i, &base) in SEGMENT_BASES.iter().enumerate() {
        let bytes = std::fs::read(dir.join(format!("{base:020}.log"))).unwrap();
        // Magic and version, spelled out.
        assert_eq!(&bytes[0..8], b"WHARFSEG");
        assert_eq!(&bytes[0..8], &SEGMENT_MAGIC);
        assert_eq!(
            u16::from_le_bytes([bytes[8], bytes[9]]),
            1,
            "segment version"
        );
        let header = decode_segment_header(&bytes).unwrap();
        assert_eq!(header.base_offset, base);
        if i == 0 {
            assert_eq!(header.min_timestamp, i64::MIN);
        } else {
            assert_eq!(
                header.min_timestamp,
                records.last().map_or(0, |r: &Record| r.timestamp)
            );
        }

        // Walk the batches.
        let mut pos = SEGMENT_HEADER_LEN as usize;
        let mut batch_starts = Vec::new();
        while pos < bytes.len() {
            let h = BatchHeader::parse(&bytes[pos..]).unwrap();
            assert_eq!(bytes[pos + 8], 1, "batch version");
            let end = pos + h.length as usize;
            let (batch, batch_records) = Batch::decode(Bytes::copy_from_slice(&bytes[pos..end]))
                .unwrap_or_else(|e| panic!("segment {base}, batch at {pos}: {e}"));
            assert_eq!(batch.base_offset(), records.len() as u64);
            batch_starts.push((pos, batch.base_offset(), h.first_timestamp));
            records.extend(batch_records);
            pos = end;
        }
        assert_eq!(pos, bytes.len(), "segment {base} ends in a partial batch");
        let next_base = SEGMENT_BASES.get(i + 1).copied().unwrap_or(RECORDS);
        assert_eq!(records.len() as u64, next_base);

        // Sealed segments have an index that agrees with the data.
        if i + 1 < SEGMENT_BASES.len() {
            let idx = std::fs::read(dir.join(format!("{base:020}.idx"))).unwrap();
            assert_eq!(&idx[0..8], &INDEX_MAGIC);
            assert_eq!(u16::from_le_bytes([idx[8], idx[9]]), 1, "index version");
            let (summary, entries) = decode_index(&idx).unwrap();
            assert_eq!(summary.base_offset, base);
            assert_eq!(summary.next_offset, next_base);
            assert_eq!(summary.data_len, bytes.len() as u64);
            assert_eq!(summary.last_timestamp, records.last().unwrap().timestamp);
            assert!(entries.len() >= 2, "segment {base}: {entries:?}");
            assert_eq!(entries[0].position as u64, SEGMENT_HEADER_LEN);
            for e in &entries {
                let at = batch_starts
                    .iter()
                    .find(|(p, _, _)| *p == e.position as usize)
                    .unwrap_or_else(|| panic!("index entry {e:?} is not at a batch"));
                assert_eq!(base + u64::from(e.relative_offset), at.1);
                assert_eq!(e.timestamp, at.2);
            }
        }
    }
    assert_eq!(records, expected);
}
