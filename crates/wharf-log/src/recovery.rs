//! Opening a log directory: validate, repair what may be repaired, refuse what may not.
//!
//! The rules (also in `docs/ARCHITECTURE.md`):
//! 1. Leftover `*.tmp` files and index files without a segment are deleted.
//! 2. Segments must be contiguous. Retention deletes from the front only and makes each
//!    deletion durable before the next, so a crash leaves a prefix deleted, never a hole: a gap
//!    or an overlap between segments is [`Error::Corrupt`] (a file was lost or planted outside
//!    the log's control, and acknowledged records may be missing — refuse rather than guess).
//! 3. Sealed segments (all but the last) were fsynced before the next one existed, so they
//!    must be whole: a bad header is [`Error::Corrupt`]. Their index is checked (checksum,
//!    summary, last entry against the data); a missing or damaged index is rebuilt by a full
//!    scan, which must find the segment intact.
//! 4. The last segment is the active one. It is scanned batch by batch (length, checksum,
//!    every record, offsets continuing, timestamps not going back). At the first invalid batch
//!    the file is truncated to the end of the last valid one and the truncation is reported.
//!    A last segment whose header never made it to disk is recreated empty, provided nothing
//!    but zeros follows the header position.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::config::LogConfig;
use crate::error::{Error, FormatError, Result};
use crate::format::{
    self, BATCH_HEADER_LEN, Batch, IndexEntry, IndexSummary, SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::log::SegmentView;
use crate::segment::{self, ActiveSegment, BatchPosition, SegmentReader};
use crate::vfs::{DirLock, OpenMode};

/// What recovery found and did when a log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// First offset held.
    pub start_offset: u64,
    /// Next offset to be assigned.
    pub next_offset: u64,
    /// The torn or corrupt tail that was cut off the last segment, if any.
    pub truncated: Option<Truncation>,
    /// Base offsets of sealed segments whose index was missing or damaged and was rebuilt.
    pub rebuilt_indexes: Vec<u64>,
    /// Files deleted as leftovers (temp files, orphan indexes, segments of an interrupted
    /// retention).
    pub removed_files: Vec<String>,
}

impl RecoveryReport {
    /// True if recovery changed nothing.
    pub fn is_clean(&self) -> bool {
        self.truncated.is_none() && self.rebuilt_indexes.is_empty() && self.removed_files.is_empty()
    }
}

/// A cut-off tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Base offset of the segment that was cut.
    pub segment_base: u64,
    /// The byte position the segment now ends at.
    pub position: u64,
    /// How many bytes were removed.
    pub removed_bytes: u64,
    /// What was wrong at `position`.
    pub reason: String,
}

pub(crate) struct Recovered {
    pub(crate) lock: Box<dyn DirLock>,
    pub(crate) segments: BTreeMap<u64, SegmentView>,
    pub(crate) active: ActiveSegment,
    pub(crate) next_offset: u64,
    pub(crate) start_offset: u64,
    pub(crate) last_timestamp: i64,
    pub(crate) report: RecoveryReport,
}

pub(crate) fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered> {
    let vfs = &*config.vfs;
    vfs.create_dir_all(dir)
        .map_err(Error::io("create log directory", dir))?;
    let lock = vfs.lock_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => Error::Locked {
            dir: dir.to_path_buf(),
        },
        _ => Error::io("lock log directory", dir)(e),
    })?;
    let mut report = RecoveryReport::default();

    let names = vfs
        .list_dir(dir)
        .map_err(Error::io("list log directory", dir))?;
    let mut logs = BTreeSet::new();
    let mut indexes = BTreeSet::new();
    for name in &names {
        if let Some(base) = segment::parse_name(name, "log") {
            logs.insert(base);
        } else if let Some(base) = segment::parse_name(name, "idx") {
            indexes.insert(base);
        }
    }
    let remove = |name: &str, report: &mut RecoveryReport| -> Result<()> {
        let path = dir.join(name);
        vfs.remove_file(&path)
            .map_err(Error::io("remove leftover file", &path))?;
        report.removed_files.push(name.to_owned());
        Ok(())
    };
    for name in names.iter().filter(|n| n.ends_with(".tmp")) {
        remove(name, &mut report)?;
    }
    for base in indexes.difference(&logs).copied().collect::<Vec<_>>() {
        remove(&segment::index_name(base), &mut report)?;
        indexes.remove(&base);
    }

    // Rule 2: segments are contiguous.
    let bases: Vec<u64> = logs.iter().copied().collect();
    let mut sealed: BTreeMap<u64, SegmentView> = BTreeMap::new();
    let mut rebuilt = Vec::new();
    let mut last_timestamp = i64::MIN;
    let last = bases.len().checked_sub(1);
    let mut active_at = last;
    for (i, &base) in bases.iter().enumerate() {
        if let Some(prev) = sealed.values().next_back()
            && prev.next_offset != base
        {
            let what = if base > prev.next_offset {
                "missing"
            } else {
                "overlapping"
            };
            return Err(Error::Corrupt {
                path: dir.join(segment::log_name(prev.base)),
                position: prev.readable_len,
                source: FormatError::invalid(
                    "segment sequence",
                    format!(
                        "this segment ends at offset {}, but the next segment file starts at {base}: offsets {} are {what} (a segment file was lost, cut short or added outside the log)",
                        prev.next_offset,
                        if base > prev.next_offset {
                            format!("{}..{base}", prev.next_offset)
                        } else {
                            format!("{base}..{}", prev.next_offset)
                        },
                    ),
                ),
            });
        }
        if Some(i) == active_at {
            break;
        }
        let next_base = bases.get(i + 1).copied().unwrap_or(u64::MAX);
        let successor_is_last = Some(i + 1) == last;
        let lazy = successor_flag(vfs, dir, next_base, successor_is_last)?;
        match open_sealed(
            config,
            dir,
            base,
            indexes.contains(&base),
            lazy.then_some(next_base),
            &mut report,
            &mut rebuilt,
        )? {
            Some(view) => {
                last_timestamp = last_timestamp
                    .max(view.min_timestamp)
                    .max(view.last_timestamp.unwrap_or(i64::MIN));
                sealed.insert(base, view);
            }
            None => {
                // A lazily sealed segment that never reached the disk whole: the log ends in
                // it. It becomes the active segment (its tail is cut below); everything after
                // it was written later and was never durable, so it goes.
                active_at = Some(i);
                break;
            }
        }
    }
    for (summary, entries) in &rebuilt {
        segment::write_index(vfs, dir, summary, entries)?;
    }
    if let Some(cut) = active_at.filter(|&a| Some(a) != last) {
        for &base in bases.get(cut + 1..).unwrap_or_default() {
            remove(&segment::log_name(base), &mut report)?;
            if indexes.contains(&base) {
                remove(&segment::index_name(base), &mut report)?;
            }
        }
    }

    let (active, active_view) = match active_at {
        Some(i) => {
            let base = bases.get(i).copied().unwrap_or_default();
            if indexes.contains(&base) {
                // The active segment's index lives in memory; a file is left over from a roll
                // that did not complete.
                remove(&segment::index_name(base), &mut report)?;
            }
            open_active(config, dir, base, last_timestamp, &mut report)?
        }
        None => {
            let active = ActiveSegment::create(
                vfs,
                dir,
                SegmentHeader {
                    base_offset: 0,
                    min_timestamp: i64::MIN,
                    predecessor_unsynced: false,
                },
            )?;
            let view = SegmentView::new_empty(0, Some(active.reader()));
            (active, view)
        }
    };
    // What a crashed predecessor wrote may still sit in the page cache only: make the
    // directory (and, in `open_active`, the active segment) durable before serving anything,
    // so nothing a reader sees after open can vanish in a later power loss.
    vfs.sync_dir(dir)
        .map_err(Error::io("fsync log directory", dir))?;
    let next_offset = active_view.next_offset;
    last_timestamp = last_timestamp.max(active_view.min_timestamp);
    if let Some(t) = active_view.last_timestamp {
        last_timestamp = last_timestamp.max(t);
    }
    let mut segments = sealed;
    segments.insert(active_view.base, active_view);
    let start_offset = segments.keys().next().copied().unwrap_or(0);
    report.segments = segments.len();
    report.start_offset = start_offset;
    report.next_offset = next_offset;
    Ok(Recovered {
        lock,
        segments,
        active,
        next_offset,
        start_offset,
        last_timestamp,
        report,
    })
}

fn corrupt(path: &Path, position: u64, source: FormatError) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        position,
        source,
    }
}

/// Whether the segment at `base` was created before its predecessor was durable
/// ([`format::FLAG_PREDECESSOR_UNSYNCED`]). A header that cannot be read counts as the flag
/// for the last segment (its creation itself did not reach the disk, so nothing is known of the
/// predecessor) and as no flag otherwise (the strict rules then report the damage).
fn successor_flag(vfs: &dyn crate::vfs::Vfs, dir: &Path, base: u64, is_last: bool) -> Result<bool> {
    let path = dir.join(segment::log_name(base));
    let file = vfs
        .open(&path, OpenMode::Read)
        .map_err(Error::io("open segment", &path))?;
    let reader = SegmentReader::new(file, &path);
    Ok(match segment::check_header(&reader, base)? {
        Ok(header) => header.predecessor_unsynced,
        Err(_) => is_last,
    })
}

/// Opens a sealed segment. `lazy_successor` is the next segment's base offset when that
/// segment was created before this one was durable: then, if this one has no valid index and
/// is not whole up to that offset, it was torn by a crash before its seal completed and `None`
/// is returned (the caller ends the log here).
fn open_sealed(
    config: &LogConfig,
    dir: &Path,
    base: u64,
    has_index: bool,
    lazy_successor: Option<u64>,
    report: &mut RecoveryReport,
    rebuilt: &mut Vec<(IndexSummary, Vec<IndexEntry>)>,
) -> Result<Option<SegmentView>> {
    let vfs = &*config.vfs;
    let path = dir.join(segment::log_name(base));
    let file = vfs
        .open(&path, OpenMode::Read)
        .map_err(Error::io("open segment", &path))?;
    let file_len = file.len().map_err(Error::io("stat segment", &path))?;
    let reader = SegmentReader::new(file, &path);
    let header = segment::check_header(&reader, base)?.map_err(|e| corrupt(&path, 0, e))?;

    let loaded = if has_index {
        load_index(vfs, dir, base)?
    } else {
        None
    };
    let (summary, entries) = match loaded {
        Some((summary, entries)) => {
            // The index is intact (its checksum holds), so it tells the truth about the
            // segment as it was sealed: where they disagree, the segment is damaged.
            verify_against_index(&reader, base, file_len, &summary, &entries)?;
            (summary, entries)
        }
        None => {
            let scan = segment::scan(
                &reader,
                base,
                file_len,
                header.min_timestamp,
                config.index_interval_bytes,
            )?;
            if let Some(next_base) = lazy_successor
                && (scan.damage.is_some()
                    || scan.valid_len != file_len
                    || scan.next_offset != next_base)
            {
                return Ok(None);
            }
            if let Some((position, err)) = scan.damage {
                return Err(corrupt(&path, position, err));
            }
            let summary = IndexSummary {
                base_offset: base,
                next_offset: scan.next_offset,
                data_len: scan.valid_len,
                last_timestamp: scan.last_timestamp.unwrap_or(i64::MIN),
            };
            // Written only once the whole directory has been accepted.
            rebuilt.push((summary, scan.entries.clone()));
            report.rebuilt_indexes.push(base);
            (summary, scan.entries)
        }
    };
    Ok(Some(SegmentView {
        base,
        reader: Some(reader),
        sealed: true,
        last_indexed_pos: None,
        assigned_len: summary.data_len,
        readable_len: summary.data_len,
        next_offset: summary.next_offset,
        first_timestamp: entries.first().map(|e| e.timestamp),
        last_timestamp: (summary.next_offset > base).then_some(summary.last_timestamp),
        min_timestamp: header.min_timestamp,
        entries,
    }))
}

/// Loads a sealed segment's index; `None` if it is missing or itself damaged (bad checksum,
/// wrong segment, entries that cannot describe a segment) and must be rebuilt.
fn load_index(
    vfs: &dyn crate::vfs::Vfs,
    dir: &Path,
    base: u64,
) -> Result<Option<(IndexSummary, Vec<IndexEntry>)>> {
    const MAX_INDEX_LEN: u64 = format::INDEX_HEADER_LEN as u64
        + (1 << 30) / BATCH_HEADER_LEN as u64 * format::INDEX_ENTRY_LEN as u64;
    let path = dir.join(segment::index_name(base));
    let file = match vfs.open(&path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open index", &path)(e)),
    };
    let len = file.len().map_err(Error::io("stat index", &path))?;
    if len > MAX_INDEX_LEN {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(Error::io("read index", &path))?;
    let Ok((summary, entries)) = format::decode_index(&bytes) else {
        return Ok(None);
    };
    let plausible = summary.base_offset == base
        && (summary.next_offset == base) == entries.is_empty()
        && entries
            .first()
            .is_none_or(|e| e.relative_offset == 0 && u64::from(e.position) == SEGMENT_HEADER_LEN);
    Ok(plausible.then_some((summary, entries)))
}

/// Checks a sealed segment against its intact index: same length, and the batches from the
/// last index entry to the end verify (checksums, continuing offsets) and end exactly at the
/// index's next offset. Any disagreement is damage to the segment: [`Error::Corrupt`], at the
/// first bad byte a full scan finds.
fn verify_against_index(
    reader: &SegmentReader,
    base: u64,
    file_len: u64,
    summary: &IndexSummary,
    entries: &[IndexEntry],
) -> Result<()> {
    if file_len == summary.data_len && tail_matches(reader, base, summary, entries)? {
        return Ok(());
    }
    // Slow path, only for a damaged segment: find where the damage starts.
    let scan = segment::scan(reader, base, file_len, i64::MIN, u64::MAX)?;
    let (position, source) = match scan.damage {
        Some(found) => found,
        None => (
            scan.valid_len,
            FormatError::invalid(
                "segment length",
                format!(
                    "{file_len} bytes holding offsets {base}..{}, but its index says the sealed segment had {} bytes holding offsets {base}..{}",
                    scan.next_offset, summary.data_len, summary.next_offset
                ),
            ),
        ),
    };
    Err(corrupt(reader.path(), position, source))
}

fn tail_matches(
    reader: &SegmentReader,
    base: u64,
    summary: &IndexSummary,
    entries: &[IndexEntry],
) -> Result<bool> {
    let Some(last) = entries.last() else {
        return Ok(summary.data_len == SEGMENT_HEADER_LEN);
    };
    let start = BatchPosition {
        position: u64::from(last.position),
        base_offset: base + u64::from(last.relative_offset),
    };
    let mut tail = Vec::new();
    match reader.read_batches(start, summary.data_len, 0, u64::MAX, usize::MAX, &mut tail) {
        Ok(_) => {}
        Err(Error::Corrupt { .. }) => return Ok(false),
        Err(e) => return Err(e),
    }
    let end = start.position + tail.iter().map(|b| b.as_bytes().len() as u64).sum::<u64>();
    let next = tail.last().map_or(start.base_offset, Batch::next_offset);
    let first_ts = tail.first().map(|b| b.header().first_timestamp);
    Ok(end == summary.data_len && next == summary.next_offset && first_ts == Some(last.timestamp))
}

fn open_active(
    config: &LogConfig,
    dir: &Path,
    base: u64,
    min_timestamp: i64,
    report: &mut RecoveryReport,
) -> Result<(ActiveSegment, SegmentView)> {
    let vfs = &*config.vfs;
    let path: PathBuf = dir.join(segment::log_name(base));
    let file = vfs
        .open(&path, OpenMode::ReadWrite)
        .map_err(Error::io("open segment", &path))?;
    let file_len = file.len().map_err(Error::io("stat segment", &path))?;
    let reader = SegmentReader::new(file.clone(), &path);

    let header = match segment::check_header(&reader, base)? {
        Ok(header) => header,
        Err(why) => {
            // A segment is fsynced with its header before anything is appended to it, so a bad
            // header is either a creation that did not reach the disk (nothing after it but
            // zeros) or damage we must not paper over.
            let rest = reader.read(
                SEGMENT_HEADER_LEN,
                file_len.saturating_sub(SEGMENT_HEADER_LEN) as usize,
            )?;
            if rest.iter().any(|&b| b != 0) {
                return Err(corrupt(&path, 0, why));
            }
            file.set_len(0)
                .map_err(Error::io("truncate segment", &path))?;
            let header = SegmentHeader {
                base_offset: base,
                min_timestamp,
                predecessor_unsynced: false,
            };
            file.write_all_at(&format::encode_segment_header(header), 0)
                .map_err(Error::io("write segment header", &path))?;
            file.sync_all().map_err(Error::io("fsync segment", &path))?;
            if file_len > 0 {
                report.truncated = Some(Truncation {
                    segment_base: base,
                    position: 0,
                    removed_bytes: file_len,
                    reason: why.to_string(),
                });
            }
            let active = ActiveSegment::resume(file, path, base, SEGMENT_HEADER_LEN);
            let mut view = SegmentView::new_empty(base, Some(reader));
            view.min_timestamp = min_timestamp;
            return Ok((active, view));
        }
    };

    let floor = min_timestamp.max(header.min_timestamp);
    let scan = segment::scan(&reader, base, file_len, floor, config.index_interval_bytes)?;
    if scan.valid_len < file_len {
        let reason = match &scan.damage {
            Some((_, e)) => e.to_string(),
            None => "trailing bytes".to_owned(),
        };
        file.set_len(scan.valid_len)
            .map_err(Error::io("truncate torn tail", &path))?;
        report.truncated = Some(Truncation {
            segment_base: base,
            position: scan.valid_len,
            removed_bytes: file_len - scan.valid_len,
            reason,
        });
    }
    // Always: the predecessor may have crashed between a write and its fsync.
    file.sync_all().map_err(Error::io("fsync segment", &path))?;
    let last_indexed_pos = scan.entries.last().map(|e| u64::from(e.position));
    let view = SegmentView {
        base,
        reader: Some(reader),
        sealed: false,
        entries: scan.entries,
        last_indexed_pos,
        assigned_len: scan.valid_len,
        readable_len: scan.valid_len,
        next_offset: scan.next_offset,
        first_timestamp: scan.first_timestamp,
        last_timestamp: scan.last_timestamp,
        min_timestamp: header.min_timestamp,
    };
    Ok((
        ActiveSegment::resume(file, path, base, scan.valid_len),
        view,
    ))
}
