//! Everyday behaviour of the log on the real file system.

use std::time::Duration;

use wharf_log::{Durability, Error, Log, LogConfig, ManualClock, NewRecord, Retention};

fn rec(i: u64) -> NewRecord {
    NewRecord::new(format!("value-{i}"))
        .with_key(format!("key-{}", i % 7))
        .with_header("n", i.to_string())
}

fn config_with(clock: &ManualClock) -> LogConfig {
    LogConfig {
        clock: std::sync::Arc::new(clock.clone()),
        ..LogConfig::default()
    }
}

#[test]
fn append_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    {
        let (log, report) = Log::open(dir.path(), config_with(&clock)).unwrap();
        assert!(report.is_clean());
        for i in 0..10u64 {
            let a = log.append_wait(&[rec(i * 2), rec(i * 2 + 1)]).unwrap();
            assert_eq!(a.base_offset, i * 2);
            assert_eq!(a.last_offset, i * 2 + 1);
            clock.advance(10);
        }
        assert_eq!(log.high_watermark(), 20);
        assert_eq!(log.durable_offset(), 20);
        let records = log.read_records(5, 1 << 20).unwrap();
        assert_eq!(records.len(), 15);
        assert_eq!(records[0].offset, 5);
        assert_eq!(records[0].value, format!("value-5"));
        assert_eq!(records[0].headers, vec![("n".to_string(), "5".to_string())]);
        assert_eq!(log.read(20, 1000).unwrap().len(), 0);
        assert!(matches!(
            log.read(21, 1000),
            Err(Error::OffsetOutOfRange { .. })
        ));
    }
    let (log, report) = Log::open(dir.path(), config_with(&clock)).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.next_offset, 20);
    let records = log.read_records(0, 1 << 20).unwrap();
    assert_eq!(records.len(), 20);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.timestamp, 1_000 + (i as i64 / 2) * 10);
    }
    assert_eq!(log.offset_for_timestamp(1_045).unwrap(), Some(10));
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(5_000).unwrap(), None);
}

#[test]
fn rolls_segments_and_applies_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        segment_max_bytes: 4096,
        retention: Retention {
            max_age: Some(Duration::from_secs(60)),
            max_bytes: None,
        },
        ..config_with(&clock)
    };
    let (log, _) = Log::open(dir.path(), config.clone()).unwrap();
    for i in 0..200 {
        log.append_wait(&[NewRecord::new(vec![i as u8; 100])])
            .unwrap();
        clock.advance(1_000);
    }
    let stats = log.stats();
    assert!(stats.segments > 5, "{stats:?}");
    let outcome = log.enforce_retention().unwrap();
    assert!(outcome.removed_segments > 0);
    assert!(outcome.start_offset > 0 && outcome.start_offset < 200 - 60);
    assert!(matches!(
        log.read(0, 100),
        Err(Error::OffsetOutOfRange { .. })
    ));
    let records = log.read_records(outcome.start_offset, usize::MAX).unwrap();
    assert_eq!(records.len() as u64, 200 - outcome.start_offset);
    drop(log);
    let (log, report) = Log::open(dir.path(), config).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(log.start_offset(), outcome.start_offset);
    assert_eq!(log.high_watermark(), 200);
}

#[test]
fn all_modes_round_trip() {
    for durability in [
        Durability::Always,
        Durability::Interval(Duration::from_millis(5)),
        Durability::None,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            durability,
            segment_max_bytes: 64 * 1024,
            ..LogConfig::default()
        };
        {
            let (log, _) = Log::open(dir.path(), config.clone()).unwrap();
            let tickets: Vec<_> = (0..500).map(|i| log.append(&[rec(i)]).unwrap()).collect();
            for (i, t) in tickets.into_iter().enumerate() {
                assert_eq!(t.wait().unwrap().base_offset, i as u64);
            }
            log.close().unwrap();
            assert!(matches!(log.append(&[rec(0)]), Err(Error::Closed)));
        }
        let (log, report) = Log::open(dir.path(), config).unwrap();
        assert!(report.is_clean(), "{durability}: {report:?}");
        assert_eq!(log.read_records(0, usize::MAX).unwrap().len(), 500);
    }
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _) = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert!(matches!(
        Log::open(dir.path(), LogConfig::default()),
        Err(Error::Locked { .. })
    ));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_batch_bytes: 1024,
        ..LogConfig::default()
    };
    let (log, _) = Log::open(dir.path(), config).unwrap();
    assert!(matches!(log.append(&[]), Err(Error::EmptyBatch)));
    assert!(matches!(
        log.append(&[NewRecord::new(vec![0u8; 2000])]),
        Err(Error::BatchTooLarge { .. })
    ));
    assert_eq!(log.high_watermark(), 0);
    assert_eq!(log.append_wait(&[rec(1)]).unwrap().base_offset, 0);
    let bad = LogConfig {
        segment_max_bytes: 1,
        ..LogConfig::default()
    };
    let err = Log::open(dir.path().join("x"), bad).unwrap_err();
    assert!(err.to_string().contains("segment_max_bytes"), "{err}");
}
