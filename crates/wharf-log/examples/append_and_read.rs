//! Appends records to a log with many appends in flight, reads them back, and prints what
//! group commit did. Run: `cargo run --release -p wharf-log --example append_and_read -- [DIR] [COUNT]`
//! (default `./wharf-data/demo-log`, 10000), then `wharf log check DIR`.

use std::collections::VecDeque;
use std::time::Instant;

use wharf_log::{Log, LogConfig, NewRecord};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "./wharf-data/demo-log".into());
    let count: u64 = args
        .next()
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(10_000);

    let (log, report) = Log::open(&dir, LogConfig::default())?;
    println!(
        "opened {dir}: offsets [{}, {}), recovery clean: {}",
        report.start_offset,
        report.next_offset,
        report.is_clean()
    );

    let start = Instant::now();
    let first = log.high_watermark();
    let mut in_flight = VecDeque::new();
    for i in 0..count {
        let record = NewRecord::new(format!("event {i}"))
            .with_key(format!("user-{}", i % 10))
            .with_header("source", "example");
        in_flight.push_back(log.append(&[record])?);
        if in_flight.len() >= 64 {
            in_flight.pop_front().map(|t| t.wait()).transpose()?;
        }
    }
    for ticket in in_flight {
        ticket.wait()?;
    }
    let elapsed = start.elapsed();
    let stats = log.stats();
    println!(
        "appended {count} records durably in {elapsed:.2?} ({:.0}/s): {} fsyncs, {:.1} appends per fsync",
        count as f64 / elapsed.as_secs_f64(),
        stats.fsyncs,
        stats.synced_appends as f64 / stats.fsyncs.max(1) as f64
    );

    let records = log.read_records(first, 4096)?;
    for r in records.iter().take(3) {
        println!(
            "  offset {} at {} ms: {}",
            r.offset,
            r.timestamp,
            String::from_utf8_lossy(&r.value)
        );
    }
    let at = records.first().map_or(0, |r| r.timestamp);
    println!(
        "first offset at or after {at} ms: {:?}",
        log.offset_for_timestamp(at)?
    );
    log.close()?;
    Ok(())
}
