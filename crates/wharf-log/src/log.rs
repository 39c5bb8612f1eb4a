//! The partition log: appends, reads, lookups, retention, and the committer thread.
//!
//! # Concurrency
//! One mutex guards the log's [`State`]. An append encodes its batch outside the lock, then
//! under it assigns offsets and a timestamp, stamps the batch and queues it; it never does
//! I/O. A single committer thread takes everything queued, writes it (rolling segments on the
//! way), fsyncs once if the durability mode asks for it, then publishes the new high watermark
//! and wakes whoever waits. Readers take the lock only to plan a read (which files, which byte
//! ranges below the high watermark) and read without it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Durability, LogConfig};
use crate::error::{Error, Result};
use crate::format::{
    self, Batch, EncodedBatch, IndexEntry, IndexSummary, SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::record::{NewRecord, Record, SharedHeaders};
use crate::recovery::{self, RecoveryReport};
use crate::segment::{self, ActiveSegment, BatchPosition, SegmentReader};
use crate::vfs::DirLock;

/// What the log knows about one segment. Lives in [`State`].
#[derive(Debug)]
pub(crate) struct SegmentView {
    pub(crate) base: u64,
    /// `None` only for a segment the committer has not created yet.
    pub(crate) reader: Option<SegmentReader>,
    pub(crate) sealed: bool,
    pub(crate) entries: Vec<IndexEntry>,
    pub(crate) last_indexed_pos: Option<u64>,
    /// Bytes, including batches queued but not yet written.
    pub(crate) assigned_len: u64,
    /// Bytes readers may read: whole batches below the high watermark.
    pub(crate) readable_len: u64,
    /// One past the last offset assigned to this segment.
    pub(crate) next_offset: u64,
    pub(crate) first_timestamp: Option<i64>,
    pub(crate) last_timestamp: Option<i64>,
    /// From the segment header: no record here is older (see [`format::SegmentHeader`]).
    pub(crate) min_timestamp: i64,
}

impl SegmentView {
    pub(crate) fn new_empty(base: u64, reader: Option<SegmentReader>) -> Self {
        Self {
            base,
            reader,
            sealed: false,
            entries: Vec::new(),
            last_indexed_pos: None,
            assigned_len: SEGMENT_HEADER_LEN,
            readable_len: SEGMENT_HEADER_LEN,
            next_offset: base,
            first_timestamp: None,
            last_timestamp: None,
            min_timestamp: i64::MIN,
        }
    }

    fn is_empty(&self) -> bool {
        self.next_offset == self.base
    }

    /// Where to start reading to find `offset`: the last indexed batch at or before it.
    fn position_for(&self, offset: u64) -> BatchPosition {
        let i = self
            .entries
            .partition_point(|e| self.base + u64::from(e.relative_offset) <= offset);
        self.entry_before(i)
    }

    /// Where to start reading to find the first record at or after `ts`.
    fn position_for_time(&self, ts: i64) -> BatchPosition {
        let i = self.entries.partition_point(|e| e.timestamp < ts);
        self.entry_before(i)
    }

    fn entry_before(&self, i: usize) -> BatchPosition {
        i.checked_sub(1).and_then(|i| self.entries.get(i)).map_or(
            BatchPosition {
                position: SEGMENT_HEADER_LEN,
                base_offset: self.base,
            },
            |e| BatchPosition {
                position: u64::from(e.position),
                base_offset: self.base + u64::from(e.relative_offset),
            },
        )
    }

    fn start(&self) -> BatchPosition {
        BatchPosition {
            position: SEGMENT_HEADER_LEN,
            base_offset: self.base,
        }
    }
}

/// A batch queued for the committer.
#[derive(Debug)]
struct Pending {
    /// The segment it goes to; a different one than the committer's active segment means
    /// "roll first". An empty `bytes` is a pure roll.
    segment: u64,
    bytes: Vec<u8>,
    /// One past the batch's last offset.
    next_offset: u64,
}

#[derive(Debug, Default, Clone)]
struct Counters {
    appends: u64,
    records: u64,
    bytes: u64,
    fsyncs: u64,
    synced_appends: u64,
    fsync_latency: FsyncHistogram,
}

/// What the committer thread is doing, so appenders know whether to wake it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommitterState {
    /// Writing or syncing; it looks at the queue again when done.
    Busy,
    /// Waiting for work.
    Idle,
    /// Waiting (briefly) for the rest of the last group to arrive.
    Lingering,
}

#[derive(Debug)]
pub(crate) struct State {
    next_offset: u64,
    last_timestamp: i64,
    pending: Vec<Pending>,
    pending_appends: u64,
    segments: BTreeMap<u64, SegmentView>,
    /// Active segment as seen by the append path (may be ahead of the committer's).
    active_base: u64,
    start_offset: u64,
    /// One past the last offset written to the OS.
    written_offset: u64,
    /// One past the last offset covered by a completed fsync.
    durable_offset: u64,
    /// One past the last acknowledged (and readable) offset.
    high_watermark: u64,
    poisoned: Option<Arc<str>>,
    closing: bool,
    closed: bool,
    /// Async waiters by the offset the high watermark must pass.
    wakers: BTreeMap<u64, Vec<Waker>>,
    committer: CommitterState,
    last_group: u64,
    last_sync: Duration,
    counters: Counters,
}

#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    config: LogConfig,
    state: Mutex<State>,
    /// The committer waits here for work.
    work: Condvar,
    /// Blocking waiters wait here for the high watermark to move.
    progress: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only mutated in short critical sections that do not panic; if a panic
        // did happen there, the log stays usable for reads and the committer poisons writes.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn poison(&self, err: &Error) {
        let wakers = {
            let mut st = self.lock();
            if st.poisoned.is_none() {
                st.poisoned = Some(err.to_string().into());
            }
            st.pending.clear();
            st.pending_appends = 0;
            std::mem::take(&mut st.wakers)
        };
        self.progress.notify_all();
        wakers.into_values().flatten().for_each(Waker::wake);
    }

    /// Ready when the high watermark passes `target`.
    fn poll_past(&self, target: u64, waker: Option<&Waker>) -> Poll<Result<()>> {
        let mut st = self.lock();
        if st.high_watermark > target {
            return Poll::Ready(Ok(()));
        }
        if let Some(cause) = &st.poisoned {
            return Poll::Ready(Err(Error::Poisoned {
                cause: cause.clone(),
            }));
        }
        if st.closed {
            return Poll::Ready(Err(Error::Closed));
        }
        if let Some(w) = waker {
            let slot = st.wakers.entry(target).or_default();
            if !slot.iter().any(|old| old.will_wake(w)) {
                slot.push(w.clone());
            }
        }
        Poll::Pending
    }

    fn wait_past(&self, target: u64) -> Result<()> {
        let mut st = self.lock();
        loop {
            if st.high_watermark > target {
                return Ok(());
            }
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if st.closed {
                return Err(Error::Closed);
            }
            st = self.progress.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A durable, segmented, append-only log of record batches: one partition.
///
/// `Log` is `Send + Sync`; share it with an `Arc`. Appends from any number of threads or
/// tasks are ordered by the log; see [`Log::append`]. Dropping the log closes it
/// ([`Log::close`]).
#[derive(Debug)]
pub struct Log {
    shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<()>>>,
    _dir_lock: Box<dyn DirLock>,
}

/// Where an append landed, once it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
    /// The append timestamp given to every record of the batch (ms since the Unix epoch).
    pub timestamp: i64,
}

/// An append that has been ordered (its offsets are fixed) and is completing. Wait for it with
/// [`AppendTicket::wait`] or `.await` it: it completes with `Ok` once the batch is durable under
/// the log's [`Durability`], or with an error if the log was poisoned before that.
#[derive(Debug)]
#[must_use = "an append is not acknowledged until its ticket completes"]
pub struct AppendTicket {
    shared: Arc<Shared>,
    appended: Appended,
}

impl AppendTicket {
    /// The offsets and timestamp the batch got (known before it is durable).
    pub fn appended(&self) -> Appended {
        self.appended
    }

    /// True once the append is done (successfully or not).
    pub fn is_done(&self) -> bool {
        self.shared
            .poll_past(self.appended.last_offset, None)
            .is_ready()
    }

    /// Blocks until the append is durable under the log's mode.
    pub fn wait(self) -> Result<Appended> {
        self.shared
            .wait_past(self.appended.last_offset)
            .map(|()| self.appended)
    }
}

impl Future for AppendTicket {
    type Output = Result<Appended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let appended = self.appended;
        self.shared
            .poll_past(appended.last_offset, Some(cx.waker()))
            .map_ok(|()| appended)
    }
}

/// A future that completes when the log holds a readable record at `offset` (its high
/// watermark has passed `offset`). For long-polling readers: woken by appends, not by timers.
#[derive(Debug)]
pub struct OffsetWait {
    shared: Arc<Shared>,
    offset: u64,
}

impl Future for OffsetWait {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.shared.poll_past(self.offset, Some(cx.waker()))
    }
}

/// Counters and positions of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// First offset still held (earlier ones were removed by retention).
    pub start_offset: u64,
    /// One past the last acknowledged, readable offset.
    pub high_watermark: u64,
    /// One past the last offset covered by a completed fsync.
    pub durable_offset: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Total size of the segment files in bytes.
    pub size_bytes: u64,
    /// Appends accepted since the log was opened.
    pub appends: u64,
    /// Records accepted since the log was opened.
    pub records: u64,
    /// Encoded bytes accepted since the log was opened.
    pub bytes: u64,
    /// fsyncs issued on the append path since the log was opened.
    pub fsyncs: u64,
    /// Appends completed by those fsyncs (`synced_appends / fsyncs` = appends per fsync).
    pub synced_appends: u64,
    /// How long the append path's fsyncs took.
    pub fsync_latency: FsyncHistogram,
    /// Why the log refuses writes, if it does.
    pub poisoned: Option<String>,
}

/// Upper bounds, in microseconds, of the buckets of [`FsyncHistogram`].
pub const FSYNC_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// A histogram of fsync durations: `counts[i]` fsyncs took at most `FSYNC_BUCKETS_US[i]`
/// microseconds (and more than the bucket before); the last count is everything slower.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsyncHistogram {
    /// Per-bucket counts (not cumulative), one more than [`FSYNC_BUCKETS_US`].
    pub counts: [u64; FSYNC_BUCKETS_US.len() + 1],
    /// Sum of all durations in nanoseconds.
    pub sum_nanos: u64,
}

impl FsyncHistogram {
    /// Records one fsync.
    pub fn record(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = FSYNC_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(FSYNC_BUCKETS_US.len());
        if let Some(c) = self.counts.get_mut(bucket) {
            *c += 1;
        }
        self.sum_nanos = self
            .sum_nanos
            .saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &FsyncHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
    }

    /// Number of fsyncs recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What [`Log::enforce_retention`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub removed_segments: usize,
    /// Bytes deleted.
    pub removed_bytes: u64,
    /// The log's first offset afterwards.
    pub start_offset: u64,
    /// Whether the active segment was rolled first because it had outlived
    /// `segment_max_age` (the new, empty segment's header then counts towards `max_bytes`).
    pub rolled: bool,
}

impl Log {
    /// Opens the log in `dir`, creating it if needed, and recovers it: checks every segment,
    /// truncates a torn or corrupt tail of the last segment to its last whole batch, rebuilds
    /// missing or damaged indexes, and reports what it did.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<(Self, RecoveryReport)> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let recovered = recovery::recover(&dir, &config)?;
        let next = recovered.next_offset;
        let state = State {
            next_offset: next,
            last_timestamp: recovered.last_timestamp,
            pending: Vec::new(),
            pending_appends: 0,
            active_base: recovered.active.base,
            segments: recovered.segments,
            start_offset: recovered.start_offset,
            written_offset: next,
            durable_offset: next,
            high_watermark: next,
            poisoned: None,
            closing: false,
            closed: false,
            wakers: BTreeMap::new(),
            committer: CommitterState::Busy,
            last_group: 0,
            last_sync: Duration::ZERO,
            counters: Counters::default(),
        };
        let shared = Arc::new(Shared {
            dir,
            config,
            state: Mutex::new(state),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        let committer = {
            let for_thread = shared.clone();
            let active = recovered.active;
            std::thread::Builder::new()
                .name("wharf-log-commit".into())
                .spawn(move || Committer::new(for_thread, active).run())
                .map_err(Error::io("spawn committer thread", &shared.dir))?
        };
        Ok((
            Log {
                shared,
                committer: Mutex::new(Some(committer)),
                _dir_lock: recovered.lock,
            },
            recovered.report,
        ))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The log's configuration.
    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    /// Submits one batch of records. Returns as soon as the batch is ordered — its offsets
    /// and timestamp are fixed — without waiting for I/O; the [`AppendTicket`] completes when
    /// the batch is durable under the log's [`Durability`]. Under [`Durability::Always`],
    /// batches submitted while an fsync is in flight share the next one.
    ///
    /// Fails at once if the batch is empty or too large, or the log is poisoned or closed.
    pub fn append(&self, records: &[NewRecord]) -> Result<AppendTicket> {
        self.append_shared(records, &SharedHeaders::NONE)
    }

    /// [`Log::append`], storing the `shared` headers with every record they apply to (after
    /// the record's own headers) without a copy of them per record.
    pub fn append_shared(
        &self,
        records: &[NewRecord],
        shared: &SharedHeaders<'_>,
    ) -> Result<AppendTicket> {
        if records.is_empty() {
            return Err(Error::EmptyBatch);
        }
        // Measured once, while encoding: a batch over the limit is refused before its bytes
        // are copied.
        let limit = self.shared.config.max_batch_bytes;
        let mut batch = EncodedBatch::encode_within(records, shared, limit).map_err(|e| {
            let size = match e {
                format::Refused::TooLarge(size) => size,
                format::Refused::Invalid(_) => format::encoded_batch_len_shared(records, shared),
            };
            Error::BatchTooLarge { size, limit }
        })?;
        let len = batch.len() as u64;
        let count = u64::from(batch.record_count());
        let config = &self.shared.config;
        let appended = {
            let mut st = self.shared.lock();
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if st.closing {
                return Err(Error::Closed);
            }
            let now = config.clock.now_ms();
            let timestamp = now.max(st.last_timestamp);
            let base_offset = st.next_offset;
            if needs_roll(&st, config, len, count, now) {
                start_segment(&mut st, base_offset);
            }
            batch.stamp(base_offset, timestamp);
            let active_base = st.active_base;
            let index_interval = config.index_interval_bytes;
            let Some(view) = st.segments.get_mut(&active_base) else {
                return Err(Error::Poisoned {
                    cause: "internal: active segment missing".into(),
                });
            };
            let position = view.assigned_len;
            if view
                .last_indexed_pos
                .is_none_or(|p| position - p >= index_interval)
            {
                view.entries.push(IndexEntry {
                    relative_offset: (base_offset - view.base) as u32,
                    position: position as u32,
                    timestamp,
                });
                view.last_indexed_pos = Some(position);
            }
            view.assigned_len += len;
            view.next_offset = base_offset + count;
            view.first_timestamp.get_or_insert(timestamp);
            view.last_timestamp = Some(timestamp);
            st.next_offset = base_offset + count;
            st.last_timestamp = timestamp;
            st.pending.push(Pending {
                segment: active_base,
                bytes: batch.into_bytes(),
                next_offset: base_offset + count,
            });
            st.pending_appends += 1;
            st.counters.appends += 1;
            st.counters.records += count;
            st.counters.bytes += len;
            // Wake the committer only when it is asleep with nothing to do, or lingering and
            // its group is now complete: a futex wake per append would cost more than it buys.
            let wake = match st.committer {
                CommitterState::Idle => true,
                CommitterState::Lingering => st.pending_appends >= st.last_group,
                CommitterState::Busy => false,
            };
            (
                Appended {
                    base_offset,
                    last_offset: base_offset + count - 1,
                    timestamp,
                },
                wake,
            )
        };
        let (appended, wake) = appended;
        if wake {
            self.shared.work.notify_one();
        }
        Ok(AppendTicket {
            shared: self.shared.clone(),
            appended,
        })
    }

    /// Appends and blocks until the batch is durable under the log's mode.
    pub fn append_wait(&self, records: &[NewRecord]) -> Result<Appended> {
        self.append(records)?.wait()
    }

    /// Reads whole batches starting with the one that holds `offset`, up to about `max_bytes`
    /// (at least one batch if there is one, even if it is larger). Only acknowledged records
    /// are returned. The first batch may start before `offset`: use [`Log::read_records`] for
    /// records from `offset` exactly.
    ///
    /// `offset` equal to the high watermark gives an empty result; an offset below the start
    /// (removed by retention) or above the high watermark is [`Error::OffsetOutOfRange`].
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        let (plan, hw) = {
            let st = self.shared.lock();
            if offset < st.start_offset || offset > st.high_watermark {
                return Err(Error::OffsetOutOfRange {
                    requested: offset,
                    start: st.start_offset,
                    end: st.high_watermark,
                });
            }
            let mut plan = Vec::new();
            let mut planned = 0u64;
            let first = st
                .segments
                .range(..=offset)
                .next_back()
                .map_or(st.start_offset, |(b, _)| *b);
            for view in st.segments.range(first..).map(|(_, v)| v) {
                if view.base >= st.high_watermark || planned >= max_bytes as u64 {
                    break;
                }
                let Some(reader) = view.reader.clone() else {
                    break;
                };
                let start = if view.base <= offset {
                    view.position_for(offset)
                } else {
                    view.start()
                };
                planned += view.readable_len.saturating_sub(start.position);
                plan.push((reader, start, view.readable_len));
            }
            (plan, st.high_watermark)
        };
        let mut out = Vec::new();
        for (reader, start, end) in plan {
            let at_hw = reader.read_batches(start, end, offset, hw, max_bytes, &mut out)?;
            let total: usize = out.iter().map(|b| b.as_bytes().len()).sum();
            if at_hw || total >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Like [`Log::read`], decoded: the records from `offset` on, in whole batches up to
    /// about `max_bytes`.
    pub fn read_records(&self, offset: u64, max_bytes: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for batch in self.read(offset, max_bytes)? {
            for record in batch.records() {
                let record = record.map_err(|source| Error::Corrupt {
                    path: self.dir().to_path_buf(),
                    position: 0,
                    source,
                })?;
                if record.offset >= offset {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// The first offset whose record was appended at or after `timestamp` (ms since the Unix
    /// epoch), or `None` if every acknowledged record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        let (plan, hw) = {
            let st = self.shared.lock();
            let hw = st.high_watermark;
            let mut plan = Vec::new();
            for view in st.segments.values() {
                if view.base >= hw {
                    break;
                }
                if view.last_timestamp.is_none_or(|t| t < timestamp) {
                    continue;
                }
                let Some(reader) = view.reader.clone() else {
                    break;
                };
                plan.push((reader, view.position_for_time(timestamp), view.readable_len));
            }
            (plan, hw)
        };
        const STEP: usize = 256 * 1024;
        for (reader, mut pos, end) in plan {
            while pos.position < end {
                let mut batches = Vec::new();
                reader.read_batches(pos, end, 0, hw, STEP, &mut batches)?;
                if batches.is_empty() {
                    break;
                }
                for batch in &batches {
                    let at = pos.position;
                    pos = BatchPosition {
                        position: at + u64::from(batch.header().length),
                        base_offset: batch.next_offset(),
                    };
                    if batch.header().last_timestamp < timestamp {
                        continue;
                    }
                    for record in batch.records() {
                        let record = record.map_err(|source| Error::Corrupt {
                            path: reader.path().to_path_buf(),
                            position: at,
                            source,
                        })?;
                        if record.offset >= hw {
                            return Ok(None);
                        }
                        if record.timestamp >= timestamp {
                            return Ok(Some(record.offset));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// A future that completes once a record at `offset` is readable (or the log is closed
    /// or poisoned). Completes at once if it already is.
    pub fn wait_for(&self, offset: u64) -> OffsetWait {
        OffsetWait {
            shared: self.shared.clone(),
            offset,
        }
    }

    /// One past the last acknowledged, readable offset (the next offset a reader waits for).
    pub fn high_watermark(&self) -> u64 {
        self.shared.lock().high_watermark
    }

    /// The first offset still held.
    pub fn start_offset(&self) -> u64 {
        self.shared.lock().start_offset
    }

    /// One past the last offset covered by a completed fsync: what survives a power loss.
    pub fn durable_offset(&self) -> u64 {
        self.shared.lock().durable_offset
    }

    /// Why the log refuses writes, if it does.
    pub fn poisoned(&self) -> Option<Arc<str>> {
        self.shared.lock().poisoned.clone()
    }

    /// Positions and counters.
    pub fn stats(&self) -> LogStats {
        let st = self.shared.lock();
        LogStats {
            start_offset: st.start_offset,
            high_watermark: st.high_watermark,
            durable_offset: st.durable_offset,
            segments: st.segments.len(),
            size_bytes: st.segments.values().map(|v| v.readable_len).sum(),
            appends: st.counters.appends,
            records: st.counters.records,
            bytes: st.counters.bytes,
            fsyncs: st.counters.fsyncs,
            synced_appends: st.counters.synced_appends,
            fsync_latency: st.counters.fsync_latency.clone(),
            poisoned: st.poisoned.as_deref().map(str::to_owned),
        }
    }

    /// Starts a new segment now if the active one holds any records, and waits until the
    /// committer has sealed the old one (in order with the appends before it).
    pub fn roll(&self) -> Result<()> {
        let old_base = {
            let mut st = self.shared.lock();
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if st.closing {
                return Err(Error::Closed);
            }
            let old_base = st.active_base;
            if st.segments.get(&old_base).is_none_or(SegmentView::is_empty) {
                return Ok(());
            }
            let base = st.next_offset;
            start_segment(&mut st, base);
            st.pending.push(Pending {
                segment: base,
                bytes: Vec::new(),
                next_offset: base,
            });
            old_base
        };
        self.shared.work.notify_one();
        let mut st = self.shared.lock();
        loop {
            if st.segments.get(&old_base).is_none_or(|v| v.sealed) {
                return Ok(());
            }
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if st.closed {
                return Err(Error::Closed);
            }
            st = self
                .shared
                .progress
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until every segment before the active one is sealed (under
    /// [`Durability::None`] the sealer works in the background).
    fn wait_for_seals(&self) -> Result<()> {
        let mut st = self.shared.lock();
        loop {
            let active = st.active_base;
            if st.segments.range(..active).all(|(_, v)| v.sealed) {
                return Ok(());
            }
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if st.closed {
                return Err(Error::Closed);
            }
            st = self
                .shared
                .progress
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Applies the retention policy: deletes whole sealed segments that are too old, then the
    /// oldest sealed segments while the log is over its byte limit. Also rolls an active
    /// segment that has outlived `segment_max_age`, so an idle log's data can expire. Call
    /// it periodically.
    pub fn enforce_retention(&self) -> Result<RetentionOutcome> {
        let config = &self.shared.config;
        let now = config.clock.now_ms();
        let aged = {
            let st = self.shared.lock();
            st.segments.get(&st.active_base).is_some_and(|v| {
                !v.is_empty()
                    && config.segment_max_age.is_some_and(|age| {
                        v.first_timestamp
                            .is_some_and(|t| now.saturating_sub(t) >= millis(age))
                    })
            })
        };
        if aged {
            self.roll()?;
        }
        self.wait_for_seals()?;
        let removed = self.delete_front(|view, total| {
            let too_old = config.retention.max_age.is_some_and(|age| {
                view.last_timestamp
                    .is_none_or(|t| now.saturating_sub(t) > millis(age))
            });
            let too_big = config.retention.max_bytes.is_some_and(|max| total > max);
            too_old || too_big
        })?;
        Ok(RetentionOutcome {
            removed_segments: removed.len(),
            removed_bytes: removed.iter().map(|(_, b)| b).sum(),
            start_offset: self.start_offset(),
            rolled: aged,
        })
    }

    /// Deletes the sealed segments that hold only offsets below `offset` (for logs used as
    /// a journal, whose owner has snapshotted everything before `offset`). Same durability
    /// rules as retention.
    pub fn remove_before(&self, offset: u64) -> Result<RetentionOutcome> {
        self.wait_for_seals()?;
        let removed = self.delete_front(|view, _| view.next_offset <= offset)?;
        Ok(RetentionOutcome {
            removed_segments: removed.len(),
            removed_bytes: removed.iter().map(|(_, b)| b).sum(),
            start_offset: self.start_offset(),
            rolled: false,
        })
    }

    /// Deletes sealed segments from the front while `doomed(segment, total bytes)` says so.
    fn delete_front(
        &self,
        mut doomed: impl FnMut(&SegmentView, u64) -> bool,
    ) -> Result<Vec<(u64, u64)>> {
        let removed: Vec<(u64, u64)> = {
            let mut st = self.shared.lock();
            let mut total: u64 = st.segments.values().map(|v| v.assigned_len).sum();
            let mut chosen = Vec::new();
            for view in st.segments.values() {
                if !view.sealed || !doomed(view, total) {
                    break;
                }
                total -= view.assigned_len;
                chosen.push((view.base, view.assigned_len));
            }
            for (base, _) in &chosen {
                st.segments.remove(base);
            }
            if let Some((&first, _)) = st.segments.first_key_value() {
                st.start_offset = first;
            }
            chosen
        };
        let vfs = &self.shared.config.vfs;
        let dir = &self.shared.dir;
        // Oldest first, each deletion durable before the next: a crash leaves a deleted
        // prefix, never a hole (recovery refuses holes).
        for (base, _) in &removed {
            let log = dir.join(segment::log_name(*base));
            vfs.remove_file(&log)
                .map_err(Error::io("delete segment", &log))?;
            let idx = dir.join(segment::index_name(*base));
            match vfs.remove_file(&idx) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("delete index", &idx)(e)),
            }
            vfs.sync_dir(dir)
                .map_err(Error::io("fsync directory", dir))?;
        }
        Ok(removed)
    }

    /// Writes and syncs everything queued, stops the committer and closes the log. Appends
    /// after this fail with [`Error::Closed`]; reads keep working. Returns the poisoning error
    /// if the log is (or became) poisoned. Idempotent.
    pub fn close(&self) -> Result<()> {
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            self.shared.poison(&Error::Poisoned {
                cause: "the committer thread panicked".into(),
            });
        }
        match self.poisoned() {
            Some(cause) => Err(Error::Poisoned { cause }),
            None => Ok(()),
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a batch of `len` bytes and `count` records must go to a new segment.
fn needs_roll(st: &State, config: &LogConfig, len: u64, count: u64, now: i64) -> bool {
    let Some(view) = st.segments.get(&st.active_base) else {
        return false;
    };
    if view.is_empty() {
        return false;
    }
    let too_big = view.assigned_len + len > config.segment_max_bytes;
    let too_old = config.segment_max_age.is_some_and(|age| {
        view.first_timestamp
            .is_some_and(|t| now.saturating_sub(t) >= millis(age))
    });
    // Relative offsets and positions in the index are 32-bit.
    let too_many = st.next_offset + count - view.base > u64::from(u32::MAX);
    too_big || too_old || too_many
}

fn start_segment(st: &mut State, base: u64) {
    if let Some(old) = st.segments.get_mut(&st.active_base) {
        // From now on nothing more is assigned to it; the committer seals it.
        old.last_indexed_pos = None;
    }
    st.segments.insert(base, SegmentView::new_empty(base, None));
    st.active_base = base;
}

/// The committer thread: writes queued batches, rolls segments, fsyncs, publishes progress.
struct Committer {
    shared: Arc<Shared>,
    active: Option<ActiveSegment>,
    /// Seals segments in the background under [`Durability::None`].
    sealer: Option<Sealer>,
    /// Interval mode: when the oldest unsynced write happened.
    unsynced_since: Option<Instant>,
    scratch: Vec<u8>,
}

/// Writes smaller than this are coalesced into one `write` call.
const COALESCE: usize = 256 * 1024;

impl Committer {
    fn new(shared: Arc<Shared>, active: ActiveSegment) -> Self {
        Self {
            shared,
            active: Some(active),
            sealer: None,
            unsynced_since: None,
            scratch: Vec::new(),
        }
    }

    fn run(mut self) {
        let result = self.run_inner();
        if let Err(e) = &result {
            self.shared.poison(e);
        }
        // Poisoned or closed: let the sealer finish what it has (it stops at a poisoning).
        if let Some(sealer) = self.sealer.take() {
            sealer.finish();
        }
        let wakers = {
            let mut st = self.shared.lock();
            st.closed = true;
            std::mem::take(&mut st.wakers)
        };
        self.shared.progress.notify_all();
        wakers.into_values().flatten().for_each(Waker::wake);
    }

    fn run_inner(&mut self) -> Result<()> {
        let durability = self.shared.config.durability;
        let linger_cap = self.shared.config.group_commit_max_linger;
        loop {
            let (batch, appends, closing) = {
                let mut st = self.shared.lock();
                loop {
                    if st.poisoned.is_some() {
                        return Ok(());
                    }
                    if !st.pending.is_empty() || st.closing {
                        break;
                    }
                    st.committer = CommitterState::Idle;
                    match (durability, self.unsynced_since) {
                        (Durability::Interval(every), Some(since)) => {
                            let now = Instant::now();
                            if now >= since + every {
                                break;
                            }
                            st = self
                                .shared
                                .work
                                .wait_timeout(st, since + every - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        _ => st = self.shared.work.wait(st).unwrap_or_else(|p| p.into_inner()),
                    }
                }
                st.committer = CommitterState::Busy;
                // Group commit: if fewer appends are queued than shared the last fsync, give the
                // rest of that group a moment (bounded by the last fsync's duration) to arrive.
                if durability == Durability::Always
                    && !linger_cap.is_zero()
                    && st.pending_appends < st.last_group
                    && !st.closing
                {
                    let deadline = Instant::now() + linger_cap.min(st.last_sync);
                    st.committer = CommitterState::Lingering;
                    while st.pending_appends < st.last_group && !st.closing && st.poisoned.is_none()
                    {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        st = self
                            .shared
                            .work
                            .wait_timeout(st, deadline - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    st.committer = CommitterState::Busy;
                }
                let appends = std::mem::take(&mut st.pending_appends);
                (std::mem::take(&mut st.pending), appends, st.closing)
            };
            let wrote = !batch.is_empty();
            let written_to = batch.last().map(|p| p.next_offset);
            self.write_all(batch)?;
            if wrote && self.unsynced_since.is_none() {
                self.unsynced_since = Some(Instant::now());
            }
            let must_sync = match durability {
                Durability::Always => wrote,
                Durability::Interval(every) => {
                    closing || self.unsynced_since.is_some_and(|t| t.elapsed() >= every)
                }
                Durability::None => closing,
            };
            if closing {
                // Everything before the active segment must be durable before we say the
                // whole log is.
                self.finish_sealing()?;
            }
            let mut sync_time = None;
            if must_sync && self.unsynced_since.is_some() {
                let start = Instant::now();
                self.active()?.sync()?;
                sync_time = Some(start.elapsed());
                self.unsynced_since = None;
            }
            self.publish(written_to, sync_time, appends);
            if closing {
                let st = self.shared.lock();
                if st.pending.is_empty() {
                    return Ok(());
                }
            }
        }
    }

    fn active(&mut self) -> Result<&mut ActiveSegment> {
        self.active.as_mut().ok_or_else(|| Error::Poisoned {
            cause: "internal: no active segment".into(),
        })
    }

    fn write_all(&mut self, batch: Vec<Pending>) -> Result<()> {
        for p in batch {
            if p.segment != self.active()?.base {
                self.flush_scratch()?;
                self.roll(p.segment)?;
            }
            if p.bytes.len() >= COALESCE {
                self.flush_scratch()?;
                self.active()?.write(&p.bytes)?;
            } else {
                self.scratch.extend_from_slice(&p.bytes);
                if self.scratch.len() >= COALESCE {
                    self.flush_scratch()?;
                }
            }
        }
        self.flush_scratch()
    }

    fn flush_scratch(&mut self) -> Result<()> {
        if self.scratch.is_empty() {
            return Ok(());
        }
        let scratch = std::mem::take(&mut self.scratch);
        let result = self.active()?.write(&scratch);
        self.scratch = scratch;
        self.scratch.clear();
        result
    }

    /// Seals the active segment and starts the one at `new_base`.
    fn roll(&mut self, new_base: u64) -> Result<()> {
        let shared = self.shared.clone();
        let (vfs, dir) = (&*shared.config.vfs, &shared.dir);
        let old = self.active.take().ok_or_else(|| Error::Poisoned {
            cause: "internal: no active segment".into(),
        })?;
        let (summary, entries) = {
            let st = shared.lock();
            let view = st.segments.get(&old.base).ok_or_else(|| Error::Poisoned {
                cause: "internal: sealed segment missing".into(),
            })?;
            (
                IndexSummary {
                    base_offset: old.base,
                    next_offset: view.next_offset,
                    data_len: old.len,
                    last_timestamp: view.last_timestamp.unwrap_or(i64::MIN),
                },
                view.entries.clone(),
            )
        };
        if summary.data_len
            != self
                .shared
                .lock()
                .segments
                .get(&old.base)
                .map_or(0, |v| v.assigned_len)
        {
            return Err(Error::Poisoned {
                cause: "internal: segment length disagrees with what was assigned".into(),
            });
        }
        let lazy = shared.config.durability == Durability::None;
        let header = SegmentHeader {
            base_offset: new_base,
            min_timestamp: summary.last_timestamp,
            predecessor_unsynced: lazy,
        };
        if lazy {
            // `none` promises nothing on the append path, so the committer does not wait for
            // the old segment to reach the disk: the sealer thread syncs and indexes it while
            // appends go on in the new one (whose header says its predecessor may be torn).
            let new = ActiveSegment::create(vfs, dir, header)?;
            let new_reader = new.reader();
            self.active = Some(new);
            {
                let mut st = shared.lock();
                if let Some(v) = st.segments.get_mut(&old.base) {
                    // Written in full; readers are bounded by the high watermark anyway.
                    v.readable_len = summary.data_len;
                }
                if let Some(v) = st.segments.get_mut(&new_base) {
                    v.reader = Some(new_reader);
                }
            }
            self.sealer()?.send(SealJob {
                segment: old,
                summary,
                entries,
            });
            return Ok(());
        }
        let sealed = old.seal(vfs, dir, &summary, &entries)?;
        let new = ActiveSegment::create(vfs, dir, header)?;
        let new_reader = new.reader();
        self.active = Some(new);
        let mut st = shared.lock();
        mark_sealed(&mut st, &summary, sealed);
        if let Some(v) = st.segments.get_mut(&new_base) {
            v.reader = Some(new_reader);
        }
        Ok(())
    }

    fn sealer(&mut self) -> Result<&Sealer> {
        if self.sealer.is_none() {
            self.sealer = Some(Sealer::start(self.shared.clone())?);
        }
        self.sealer.as_ref().ok_or_else(|| Error::Poisoned {
            cause: "internal: no sealer".into(),
        })
    }

    /// Waits until every segment handed to the sealer is sealed (or the sealer failed).
    fn finish_sealing(&mut self) -> Result<()> {
        if let Some(sealer) = self.sealer.take() {
            sealer.finish();
        }
        match self.shared.lock().poisoned.clone() {
            Some(cause) => Err(Error::Poisoned { cause }),
            None => Ok(()),
        }
    }

    /// Publishes what was written (and synced) and wakes waiters.
    fn publish(&mut self, written_to: Option<u64>, sync_time: Option<Duration>, appends: u64) {
        let durability = self.shared.config.durability;
        let active = self.active.as_ref().map(|a| (a.base, a.len));
        let wakers = {
            let mut st = self.shared.lock();
            if let Some(n) = written_to {
                st.written_offset = n;
            }
            if let Some(t) = sync_time {
                st.durable_offset = st.written_offset;
                st.counters.fsyncs += 1;
                st.counters.fsync_latency.record(t);
                st.last_sync = t;
                if durability == Durability::Always {
                    st.counters.synced_appends += appends;
                    st.last_group = appends;
                }
            }
            let hw = match durability {
                Durability::Always => st.durable_offset,
                _ => st.written_offset,
            };
            if hw == st.high_watermark {
                // Nothing new to read, but a roll may have completed: let `roll` waiters look.
                drop(st);
                self.shared.progress.notify_all();
                return;
            }
            st.high_watermark = hw;
            if let Some((base, len)) = active
                && let Some(v) = st.segments.get_mut(&base)
            {
                v.readable_len = len;
            }
            // Everything waiting for an offset below the new high watermark is done.
            let waiting = st.wakers.split_off(&hw);
            std::mem::replace(&mut st.wakers, waiting)
        };
        self.shared.progress.notify_all();
        wakers.into_values().flatten().for_each(Waker::wake);
    }
}

fn mark_sealed(st: &mut State, summary: &IndexSummary, reader: SegmentReader) {
    if let Some(v) = st.segments.get_mut(&summary.base_offset) {
        v.reader = Some(reader);
        v.sealed = true;
        v.readable_len = summary.data_len;
    }
}

/// A segment for the sealer thread.
struct SealJob {
    segment: ActiveSegment,
    summary: IndexSummary,
    entries: Vec<IndexEntry>,
}

/// The background sealer used under [`Durability::None`]: syncs each rolled segment, writes
/// its index, reopens it read-only, in roll order. A failure poisons the log.
struct Sealer {
    jobs: std::sync::mpsc::Sender<SealJob>,
    thread: JoinHandle<()>,
}

impl Sealer {
    fn start(shared: Arc<Shared>) -> Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<SealJob>();
        let dir = shared.dir.clone();
        let thread = std::thread::Builder::new()
            .name("wharf-log-seal".into())
            .spawn(move || {
                for job in rx {
                    if shared.lock().poisoned.is_some() {
                        break;
                    }
                    let (vfs, dir) = (&*shared.config.vfs, &shared.dir);
                    let sealed = job
                        .segment
                        .seal(vfs, dir, &job.summary, &job.entries)
                        .and_then(|reader| {
                            vfs.sync_dir(dir)
                                .map_err(Error::io("fsync directory", dir))?;
                            Ok(reader)
                        });
                    match sealed {
                        Ok(reader) => {
                            {
                                let mut st = shared.lock();
                                mark_sealed(&mut st, &job.summary, reader);
                                st.durable_offset = st.durable_offset.max(job.summary.next_offset);
                            }
                            shared.progress.notify_all();
                        }
                        Err(e) => {
                            shared.poison(&e);
                            break;
                        }
                    }
                }
            })
            .map_err(Error::io("spawn sealer thread", &dir))?;
        Ok(Self { jobs, thread })
    }

    fn send(&self, job: SealJob) {
        // The sealer only stops early after poisoning the log, which the committer notices.
        let _ = self.jobs.send(job);
    }

    fn finish(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}
