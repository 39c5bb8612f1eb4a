//! `wharf-log`: the durable partition log under Wharf's topics, queues and streams.
//!
//! A [`Log`] is one partition: an ordered set of segment files holding checksummed record
//! batches. It assigns dense offsets and monotonic append timestamps, fsyncs before it
//! acknowledges (by default, with group commit), reads by offset or by time, rolls and retires
//! segments, and on open recovers from a crash by truncating a torn tail to the last whole
//! batch. No async runtime and no networking: appends return an [`AppendTicket`] that can be
//! waited on from a thread or `.await`ed from any executor.
//!
//! ```
//! use wharf_log::{Log, LogConfig, NewRecord};
//!
//! # fn main() -> Result<(), wharf_log::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let (log, report) = Log::open(dir.path(), LogConfig::default())?;
//! assert!(report.is_clean());
//! let done = log.append(&[NewRecord::new("hello").with_key("k1")])?.wait()?;
//! assert_eq!(done.base_offset, 0);
//! let records = log.read_records(0, 1 << 20)?;
//! assert_eq!(&records[0].value[..], b"hello");
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`log`](crate::Log): appends, reads, time lookup, retention, the committer thread.
//! - `recovery`: what happens on open ([`RecoveryReport`]).
//! - `segment`: active (writable) and sealed (read-only) segment files, the validating scan.
//! - [`format`](mod@format): the byte layout of segment headers, batches, records and index files.
//! - [`vfs`]: the file layer ([`vfs::StdFs`]; [`vfs::fault::FaultFs`] for power-loss tests).
//! - [`clock`]: injectable time.
//! - [`config`](LogConfig), [`error`](Error), [`record`](Record).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod clock;
mod config;
mod error;
pub mod format;
mod log;
mod record;
mod recovery;
mod segment;
pub mod vfs;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Durability, LogConfig, Retention};
pub use error::{Error, FormatError, Result};
pub use format::{Batch, Records};
pub use log::{
    AppendTicket, Appended, FSYNC_BUCKETS_US, FsyncHistogram, Log, LogStats, OffsetWait,
    RetentionOutcome,
};
pub use record::{NewRecord, Record, SharedHeaders};
pub use recovery::{RecoveryReport, Truncation};
