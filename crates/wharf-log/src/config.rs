//! Log configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::format::{BATCH_HEADER_LEN, MAX_BATCH_LEN, SEGMENT_HEADER_LEN};
use crate::vfs::{StdFs, Vfs};

/// When an append counts as done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// An append completes only after an `fdatasync` that covers it has returned. Appends
    /// submitted while an fsync is in flight share the next one (group commit). Nothing
    /// acknowledged is lost on power failure. The default.
    #[default]
    Always,
    /// An append completes once written to the operating system; the log fsyncs at most this
    /// long after the first unsynced append. A process crash loses nothing acknowledged; a
    /// power loss or kernel crash can lose the appends acknowledged since the start of the
    /// last completed fsync — normally at most one interval plus one fsync's duration of
    /// appends. [`crate::Log::durable_offset`] tells what is certainly on disk.
    Interval(Duration),
    /// An append completes once written to the operating system, and the log never fsyncs on
    /// the append path (a background thread syncs each segment after it is rolled; close syncs
    /// the rest). A process crash
    /// loses nothing acknowledged; a power loss can lose everything the OS had not yet written
    /// back (on Linux typically up to 30 s of appends). Recovery still yields a consistent
    /// prefix.
    None,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Interval(d) => write!(f, "interval({}ms)", d.as_millis()),
            Durability::None => f.write_str("none"),
        }
    }
}

/// Retention: which sealed segments [`crate::Log::enforce_retention`] deletes. Only whole
/// sealed segments are ever deleted; the active segment is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Delete a sealed segment once its newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while the log is larger than this many bytes.
    pub max_bytes: Option<u64>,
}

/// Settings of one partition log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// When appends complete. Default [`Durability::Always`].
    pub durability: Durability,
    /// Roll to a new segment before an append would make the active one larger than this.
    /// Default 128 MiB; at most 1 GiB.
    pub segment_max_bytes: u64,
    /// Roll to a new segment when the active one's first record is older than this.
    /// Default 1 day.
    pub segment_max_age: Option<Duration>,
    /// What to delete. Default: keep everything.
    pub retention: Retention,
    /// Bytes of log between sparse index entries. Default 4 KiB.
    pub index_interval_bytes: u64,
    /// Largest encoded batch an append may submit. Default 8 MiB; at most 64 MiB.
    pub max_batch_bytes: u64,
    /// Under [`Durability::Always`], how long the committer may wait for more appends to join
    /// an fsync when fewer arrived than joined the last one (never longer than the last fsync
    /// took). Lets a steady group of concurrent appenders share every fsync instead of
    /// alternating between small and large groups. Zero disables it. Default 1 ms.
    pub group_commit_max_linger: Duration,
    /// The file layer. Default: the real file system.
    pub vfs: Arc<dyn Vfs>,
    /// The time source. Default: the system clock.
    pub clock: Arc<dyn Clock>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Always,
            segment_max_bytes: 128 * 1024 * 1024,
            segment_max_age: Some(Duration::from_secs(24 * 3600)),
            retention: Retention::default(),
            index_interval_bytes: 4096,
            max_batch_bytes: 8 * 1024 * 1024,
            group_commit_max_linger: Duration::from_millis(1),
            vfs: StdFs::shared(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl LogConfig {
    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key, reason: String| Err(Error::InvalidConfig { key, reason });
        let min_segment = SEGMENT_HEADER_LEN + BATCH_HEADER_LEN as u64;
        if !(min_segment..=1 << 30).contains(&self.segment_max_bytes) {
            return bad(
                "segment_max_bytes",
                format!(
                    "{} is outside {min_segment}..=1073741824",
                    self.segment_max_bytes
                ),
            );
        }
        if !(BATCH_HEADER_LEN as u64 + 6..=u64::from(MAX_BATCH_LEN)).contains(&self.max_batch_bytes)
        {
            return bad(
                "max_batch_bytes",
                format!("{} is outside 46..={MAX_BATCH_LEN}", self.max_batch_bytes),
            );
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes", "must be at least 1".into());
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return bad("durability", "the fsync interval must be positive".into());
        }
        if self.segment_max_age.is_some_and(|d| d.is_zero()) {
            return bad("segment_max_age", "must be positive".into());
        }
        Ok(())
    }
}
