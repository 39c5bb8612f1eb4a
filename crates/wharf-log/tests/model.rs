//! Model-based property test: random sequences of appends, reads, time lookups, clock moves,
//! rolls, retention passes and reopens, checked step by step against an in-memory model of
//! what the log must hold. Runs on the in-memory file layer so thousands of cases fit in CI
//! (`WHARF_PROPTEST_CASES`).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use wharf_log::vfs::fault::FaultFs;
use wharf_log::{Durability, Error, Log, LogConfig, ManualClock, NewRecord, Record, Retention};

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<NewRecord>),
    /// Move the clock by this many ms (may be negative: timestamps must not go back anyway).
    Clock(i64),
    /// Read from `start + pick % (len + 2)` (so just past the end and beyond are covered).
    Read {
        pick: u64,
        max_bytes: usize,
    },
    /// Look up the first record at or after `first_ts + delta`.
    Time {
        delta: i64,
    },
    Roll,
    Retention,
    Reopen,
}

fn record() -> impl Strategy<Value = NewRecord> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(("[a-z-]{1,6}", "\\PC{0,6}"), 0..3),
    )
        .prop_map(|(key, value, headers)| NewRecord {
            key: key.map(Bytes::from),
            value: Bytes::from(value),
            headers,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(record(), 1..6).prop_map(Op::Append),
        3 => (-500i64..3_000).prop_map(Op::Clock),
        3 => (any::<u64>(), 1usize..3_000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        2 => (-1_000i64..200_000).prop_map(|delta| Op::Time { delta }),
        1 => Just(Op::Roll),
        1 => Just(Op::Retention),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Settings {
    durability: Durability,
    segment_max_bytes: u64,
    index_interval_bytes: u64,
    retention: Retention,
    segment_max_age: Option<Duration>,
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![
            Just(Durability::Always),
            Just(Durability::Interval(Duration::from_millis(1))),
            Just(Durability::None)
        ],
        300u64..4_000,
        1u64..600,
        proptest::option::of(1_000u64..60_000),
        proptest::option::of(500u64..6_000),
        proptest::option::of(2_000u64..50_000),
    )
        .prop_map(
            |(durability, segment_max_bytes, index_interval_bytes, age, bytes, seg_age)| Settings {
                durability,
                segment_max_bytes,
                index_interval_bytes,
                retention: Retention {
                    max_age: age.map(Duration::from_millis),
                    max_bytes: bytes,
                },
                segment_max_age: seg_age.map(Duration::from_millis),
            },
        )
}

fn config(s: &Settings, fs: &FaultFs, clock: &ManualClock) -> LogConfig {
    LogConfig {
        durability: s.durability,
        segment_max_bytes: s.segment_max_bytes,
        index_interval_bytes: s.index_interval_bytes,
        retention: s.retention,
        segment_max_age: s.segment_max_age,
        vfs: fs.shared(),
        clock: Arc::new(clock.clone()),
        ..LogConfig::default()
    }
}

/// What the log must hold.
#[derive(Default)]
struct Model {
    /// Records from `start` on, by offset - start.
    records: Vec<Record>,
    start: u64,
    last_ts: i64,
}

impl Model {
    fn next(&self) -> u64 {
        self.start + self.records.len() as u64
    }
}

fn same(got: &Record, want: &Record) -> Result<(), TestCaseError> {
    prop_assert_eq!(got, want);
    Ok(())
}

fn run(settings: Settings, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fs = FaultFs::new();
    let clock = ManualClock::new(1_700_000_000_000);
    let dir = Path::new("/log");
    let cfg = config(&settings, &fs, &clock);
    let (mut log, report) =
        Log::open(dir, cfg.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.is_clean());
    let mut model = Model {
        last_ts: i64::MIN,
        ..Model::default()
    };

    for op in ops {
        match op {
            Op::Append(records) => {
                let done = log
                    .append_wait(&records)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(done.base_offset, model.next());
                prop_assert_eq!(done.last_offset, model.next() + records.len() as u64 - 1);
                let want_ts = clock.now().max(model.last_ts);
                prop_assert_eq!(done.timestamp, want_ts);
                model.last_ts = want_ts;
                for (i, r) in records.into_iter().enumerate() {
                    model.records.push(Record {
                        offset: done.base_offset + i as u64,
                        timestamp: want_ts,
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                    });
                }
            }
            Op::Clock(ms) => clock.advance(ms),
            Op::Read { pick, max_bytes } => {
                let offset =
                    model.start.saturating_sub(1) + pick % (model.records.len() as u64 + 3);
                match log.read(offset, max_bytes) {
                    Err(Error::OffsetOutOfRange { start, end, .. }) => {
                        prop_assert!(
                            offset < model.start || offset > model.next(),
                            "offset {} refused",
                            offset
                        );
                        prop_assert_eq!((start, end), (model.start, model.next()));
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    Ok(batches) => {
                        prop_assert!(offset >= model.start && offset <= model.next());
                        if offset == model.next() {
                            prop_assert!(batches.is_empty());
                            continue;
                        }
                        prop_assert!(!batches.is_empty(), "nothing read at {}", offset);
                        let total: usize = batches.iter().map(|b| b.as_bytes().len()).sum();
                        prop_assert!(
                            batches.len() == 1 || total <= max_bytes,
                            "{} bytes for a limit of {}",
                            total,
                            max_bytes
                        );
                        prop_assert!(
                            batches[0].base_offset() <= offset && batches[0].next_offset() > offset
                        );
                        let mut expect = batches[0].base_offset();
                        for batch in &batches {
                            prop_assert_eq!(batch.base_offset(), expect);
                            for record in batch.records() {
                                let record =
                                    record.map_err(|e| TestCaseError::fail(e.to_string()))?;
                                let idx = (record.offset - model.start) as usize;
                                same(&record, &model.records[idx])?;
                            }
                            expect = batch.next_offset();
                        }
                    }
                }
            }
            Op::Time { delta } => {
                let t = model
                    .records
                    .first()
                    .map_or(1_700_000_000_000, |r| r.timestamp)
                    + delta;
                let want = model
                    .records
                    .iter()
                    .find(|r| r.timestamp >= t)
                    .map(|r| r.offset);
                let got = log
                    .offset_for_timestamp(t)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got, want, "time lookup of {}", t);
            }
            Op::Roll => log.roll().map_err(|e| TestCaseError::fail(e.to_string()))?,
            Op::Retention => {
                let before = log.stats();
                let now = clock.now();
                let outcome = log
                    .enforce_retention()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(
                    outcome.start_offset >= model.start && outcome.start_offset <= model.next()
                );
                prop_assert_eq!(outcome.start_offset, log.start_offset());
                let removed = (outcome.start_offset - model.start) as usize;
                prop_assert_eq!(removed > 0, outcome.removed_segments > 0);
                if removed > 0 {
                    let age_ok = |r: &Record| {
                        settings
                            .retention
                            .max_age
                            .is_some_and(|a| now - r.timestamp > a.as_millis() as i64)
                    };
                    // An age roll first adds the new segment's header to the total.
                    let header = if outcome.rolled { 40 } else { 0 };
                    let too_big = settings
                        .retention
                        .max_bytes
                        .is_some_and(|m| before.size_bytes + header > m);
                    prop_assert!(
                        too_big || model.records[..removed].iter().all(age_ok),
                        "retention removed records it should have kept"
                    );
                }
                if let Some(max) = settings.retention.max_bytes {
                    let after = log.stats();
                    // Only the active segment may keep the log above its byte limit.
                    prop_assert!(
                        after.size_bytes <= max || after.segments == 1,
                        "{:?} over {}",
                        after,
                        max
                    );
                }
                model.records.drain(..removed);
                model.start = outcome.start_offset;
            }
            Op::Reopen => {
                log.close()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                drop(log);
                let (reopened, report) =
                    Log::open(dir, cfg.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(report.is_clean(), "{:?}", report);
                prop_assert_eq!(report.next_offset, model.next());
                prop_assert_eq!(report.start_offset, model.start);
                log = reopened;
            }
        }
        prop_assert_eq!(log.high_watermark(), model.next());
        prop_assert_eq!(log.start_offset(), model.start);
    }
    // Finally everything the model holds is readable, in order, from the start.
    let all = log
        .read_records(model.start, usize::MAX)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(all.len(), model.records.len());
    for (got, want) in all.iter().zip(&model.records) {
        same(got, want)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::proptest_cases(64)))]

    #[test]
    fn log_matches_model(settings in settings(), ops in proptest::collection::vec(op(), 1..120)) {
        run(settings, ops)?;
    }
}

trait Now {
    fn now(&self) -> i64;
}

impl Now for ManualClock {
    fn now(&self) -> i64 {
        wharf_log::Clock::now_ms(self)
    }
}
