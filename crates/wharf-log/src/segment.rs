//! Segment files: the writable active segment, read-only sealed segments, and the scan that
//! validates a segment and rebuilds its index.
//!
//! Only [`ActiveSegment`] has a write path, and only the committer thread owns one. Sealing
//! consumes it ([`ActiveSegment::seal`]) and gives back a [`SegmentReader`] on a file reopened
//! read-only, so a sealed segment cannot be written by construction.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, FormatError, Result};
use crate::format::{
    self, BATCH_HEADER_LEN, Batch, BatchHeader, IndexEntry, IndexSummary, SEGMENT_HEADER_LEN,
    SegmentHeader,
};
use crate::vfs::{OpenMode, Vfs, VfsFile};

/// File name of the segment whose first offset is `base`.
pub(crate) fn log_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// File name of the index of the segment whose first offset is `base`.
pub(crate) fn index_name(base: u64) -> String {
    format!("{base:020}.idx")
}

/// Parses `{base:020}.{ext}`.
pub(crate) fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A read-only view of a segment file, shared by readers.
#[derive(Clone, Debug)]
pub(crate) struct SegmentReader {
    file: Arc<dyn VfsFile>,
    path: Arc<Path>,
}

impl SegmentReader {
    pub(crate) fn new(file: Arc<dyn VfsFile>, path: &Path) -> Self {
        Self {
            file,
            path: path.into(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads up to `len` bytes at `pos` (fewer at end of file).
    pub(crate) fn read(&self, pos: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = self
            .file
            .read_up_to(&mut buf, pos)
            .map_err(Error::io("read", &*self.path))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn corrupt(&self, position: u64, source: FormatError) -> Error {
        Error::Corrupt {
            path: self.path.to_path_buf(),
            position,
            source,
        }
    }

    /// Reads whole, verified batches starting at byte `start.position`, where a batch with
    /// base offset `start.base_offset` must begin. Every batch's checksum is checked, and its
    /// base offset must continue from the previous one, before any of its fields is trusted.
    /// Stops before `end` (a batch boundary), at the first batch at or past offset `hw`, or
    /// before a batch that would take the total past `max_bytes` (but always returns at least
    /// one batch if there is one). Batches ending at or before `from_offset` are skipped.
    /// Returns true when it stopped at `hw`.
    pub(crate) fn read_batches(
        &self,
        start: BatchPosition,
        end: u64,
        from_offset: u64,
        hw: u64,
        max_bytes: usize,
        out: &mut Vec<Batch>,
    ) -> Result<bool> {
        const MIN_READ: usize = 64 * 1024;
        let mut total: usize = out.iter().map(|b| b.as_bytes().len()).sum();
        let mut pos = start.position;
        let mut expected = start.base_offset;
        let mut buf = Bytes::new();
        let mut buf_pos = pos;
        while pos < end {
            if expected >= hw {
                return Ok(true);
            }
            // Have the header in `buf`.
            if pos + BATCH_HEADER_LEN as u64 > buf_pos + buf.len() as u64 {
                let want = (end - pos).min(max_bytes.saturating_sub(total).max(MIN_READ) as u64);
                buf = Bytes::from(self.read(pos, want as usize)?);
                buf_pos = pos;
            }
            let rel = (pos - buf_pos) as usize;
            let header = BatchHeader::parse(buf.get(rel..).unwrap_or_default())
                .map_err(|e| self.corrupt(pos, e))?;
            let len = header.length as usize;
            if pos + len as u64 > end {
                return Err(self.corrupt(
                    pos,
                    FormatError::Truncated {
                        needed: len as u64,
                        available: end - pos,
                    },
                ));
            }
            let wanted = header.next_offset() > from_offset;
            if wanted && !out.is_empty() && total + len > max_bytes {
                return Ok(false);
            }
            // Have the whole batch in `buf`.
            if pos + len as u64 > buf_pos + buf.len() as u64 {
                let want = (end - pos).min(len.max(MIN_READ) as u64);
                buf = Bytes::from(self.read(pos, want as usize)?);
                buf_pos = pos;
            }
            let rel = (pos - buf_pos) as usize;
            let Some(bytes) = buf.get(rel..rel + len).map(|_| buf.slice(rel..rel + len)) else {
                return Err(self.corrupt(
                    pos,
                    FormatError::Truncated {
                        needed: len as u64,
                        available: (buf.len() - rel) as u64,
                    },
                ));
            };
            let batch = Batch::from_bytes(bytes).map_err(|e| self.corrupt(pos, e))?;
            if batch.base_offset() != expected {
                return Err(self.corrupt(
                    pos,
                    FormatError::invalid(
                        "base offset",
                        format!("expected {expected}, found {}", batch.base_offset()),
                    ),
                ));
            }
            pos += len as u64;
            expected = batch.next_offset();
            if wanted {
                total += len;
                out.push(batch);
                if total >= max_bytes {
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }
}

/// Where a batch starts: its byte position in the segment and its base offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchPosition {
    pub(crate) position: u64,
    pub(crate) base_offset: u64,
}

/// The segment being appended to. Owned by the committer thread alone.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub(crate) base: u64,
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    /// Bytes written so far (the next write position).
    pub(crate) len: u64,
}

impl ActiveSegment {
    /// Creates a new, empty segment file with its header, and makes both the file and its
    /// directory entry durable.
    pub(crate) fn create(vfs: &dyn Vfs, dir: &Path, header: SegmentHeader) -> Result<Self> {
        let base = header.base_offset;
        let path = dir.join(log_name(base));
        let file = vfs
            .open(&path, OpenMode::CreateNew)
            .map_err(Error::io("create segment", &path))?;
        file.write_all_at(&format::encode_segment_header(header), 0)
            .map_err(Error::io("write segment header", &path))?;
        file.sync_all()
            .map_err(Error::io("fsync new segment", &path))?;
        vfs.sync_dir(dir)
            .map_err(Error::io("fsync directory", dir))?;
        Ok(Self {
            base,
            path,
            file,
            len: SEGMENT_HEADER_LEN,
        })
    }

    /// Continues an existing segment whose valid data ends at `len` (recovery truncated it).
    pub(crate) fn resume(file: Arc<dyn VfsFile>, path: PathBuf, base: u64, len: u64) -> Self {
        Self {
            base,
            path,
            file,
            len,
        }
    }

    pub(crate) fn reader(&self) -> SegmentReader {
        SegmentReader::new(self.file.clone(), &self.path)
    }

    /// Appends `bytes` at the end. Not durable until [`ActiveSegment::sync`].
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, self.len)
            .map_err(Error::io("write", &self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// `fdatasync`.
    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(Error::io("fsync", &self.path))
    }

    /// Makes the segment durable, writes its index (atomically: temp file, fsync, rename) and
    /// reopens it read-only. The directory is synced by the caller, once, after it has also
    /// created the next segment.
    pub(crate) fn seal(
        self,
        vfs: &dyn Vfs,
        dir: &Path,
        summary: &IndexSummary,
        entries: &[IndexEntry],
    ) -> Result<SegmentReader> {
        self.file
            .sync_all()
            .map_err(Error::io("fsync segment before sealing", &self.path))?;
        write_index(vfs, dir, summary, entries)?;
        let ro = vfs
            .open(&self.path, OpenMode::Read)
            .map_err(Error::io("reopen sealed segment", &self.path))?;
        Ok(SegmentReader::new(ro, &self.path))
    }
}

/// Writes the index file of a sealed segment: temp file, fsync, rename. The caller syncs the
/// directory.
pub(crate) fn write_index(
    vfs: &dyn Vfs,
    dir: &Path,
    summary: &IndexSummary,
    entries: &[IndexEntry],
) -> Result<()> {
    let bytes = format::encode_index(summary, entries);
    let final_path = dir.join(index_name(summary.base_offset));
    let tmp = dir.join(format!("{}.tmp", index_name(summary.base_offset)));
    let _ = vfs.remove_file(&tmp);
    let file = vfs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(Error::io("create index", &tmp))?;
    file.write_all_at(&bytes, 0)
        .map_err(Error::io("write index", &tmp))?;
    file.sync_all().map_err(Error::io("fsync index", &tmp))?;
    vfs.rename(&tmp, &final_path)
        .map_err(Error::io("rename index", &final_path))?;
    Ok(())
}

/// What a full scan of a segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// End of the last valid batch (or of the header, if none).
    pub(crate) valid_len: u64,
    /// One past the last valid offset.
    pub(crate) next_offset: u64,
    pub(crate) first_timestamp: Option<i64>,
    pub(crate) last_timestamp: Option<i64>,
    pub(crate) entries: Vec<IndexEntry>,
    /// The first invalid batch, if the scan stopped before the end of the file.
    pub(crate) damage: Option<(u64, FormatError)>,
}

/// Reads a segment from its header to `file_len`, verifying every batch: length, checksum,
/// every record, offsets continuing from `base` and timestamps never going back (starting
/// from `min_timestamp`). Stops at the first invalid batch. Builds the sparse index.
pub(crate) fn scan(
    reader: &SegmentReader,
    base: u64,
    file_len: u64,
    min_timestamp: i64,
    index_interval: u64,
) -> Result<Scan> {
    const CHUNK: usize = 4 * 1024 * 1024;
    let mut out = Scan {
        valid_len: SEGMENT_HEADER_LEN,
        next_offset: base,
        first_timestamp: None,
        last_timestamp: None,
        entries: Vec::new(),
        damage: None,
    };
    let mut last_indexed: Option<u64> = None;
    let mut prev_ts = min_timestamp;
    let mut pos = SEGMENT_HEADER_LEN;
    let mut buf = Bytes::new();
    let mut buf_pos = pos;
    while pos < file_len {
        // Make sure the header (and then the whole batch) is in `buf`.
        let need_header = (BATCH_HEADER_LEN as u64).min(file_len - pos);
        if pos + need_header > buf_pos + buf.len() as u64 {
            buf = Bytes::from(reader.read(pos, CHUNK.min((file_len - pos) as usize))?);
            buf_pos = pos;
        }
        let rel = (pos - buf_pos) as usize;
        let header = match BatchHeader::parse(buf.get(rel..).unwrap_or_default()) {
            Ok(h) => h,
            Err(e) => {
                out.damage = Some((pos, e));
                break;
            }
        };
        let len = u64::from(header.length);
        if pos + len > file_len {
            out.damage = Some((
                pos,
                FormatError::Truncated {
                    needed: len,
                    available: file_len - pos,
                },
            ));
            break;
        }
        if pos + len > buf_pos + buf.len() as u64 {
            buf = Bytes::from(reader.read(
                pos,
                (len as usize).max(CHUNK.min((file_len - pos) as usize)),
            )?);
            buf_pos = pos;
        }
        let rel = (pos - buf_pos) as usize;
        let bytes = buf.slice(rel..(rel + len as usize).min(buf.len()));
        let checked = Batch::decode(bytes).and_then(|(batch, _)| {
            let h = batch.header();
            if h.base_offset != out.next_offset {
                return Err(FormatError::invalid(
                    "base offset",
                    format!("expected {}, found {}", out.next_offset, h.base_offset),
                ));
            }
            if h.first_timestamp < prev_ts {
                return Err(FormatError::invalid(
                    "timestamp",
                    format!("{} goes back from {prev_ts}", h.first_timestamp),
                ));
            }
            if h.next_offset() - base > u64::from(u32::MAX) || pos + len > u64::from(u32::MAX) {
                return Err(FormatError::invalid("segment", "too large for its index"));
            }
            Ok(*h)
        });
        let h = match checked {
            Ok(h) => h,
            Err(e) => {
                out.damage = Some((pos, e));
                break;
            }
        };
        if last_indexed.is_none_or(|p| pos - p >= index_interval) {
            out.entries.push(IndexEntry {
                relative_offset: (h.base_offset - base) as u32,
                position: pos as u32,
                timestamp: h.first_timestamp,
            });
            last_indexed = Some(pos);
        }
        out.first_timestamp.get_or_insert(h.first_timestamp);
        out.last_timestamp = Some(h.last_timestamp);
        prev_ts = h.last_timestamp;
        out.next_offset = h.next_offset();
        pos += len;
        out.valid_len = pos;
    }
    Ok(out)
}

/// Reads and checks a segment file header; the inner `Err` says what is wrong with it.
pub(crate) fn check_header(
    reader: &SegmentReader,
    expected_base: u64,
) -> Result<std::result::Result<SegmentHeader, FormatError>> {
    let bytes = reader.read(0, SEGMENT_HEADER_LEN as usize)?;
    Ok(format::decode_segment_header(&bytes).and_then(|h| {
        if h.base_offset == expected_base {
            Ok(h)
        } else {
            Err(FormatError::invalid(
                "segment base offset",
                format!(
                    "file name says {expected_base}, header says {}",
                    h.base_offset
                ),
            ))
        }
    }))
}
