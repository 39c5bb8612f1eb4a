//! The on-disk format: segment file header, record batches and sparse index files.
//!
//! All integers are little-endian; varints are unsigned LEB128. See `docs/ARCHITECTURE.md`
//! for the same layout as tables. Every decoder here takes untrusted bytes and returns a
//! [`FormatError`] — it never panics, never allocates more than the input's size, and never
//! loops more than the input's length.
//!
//! ```text
//! segment file  = segment header (40 B) , batch*
//! segment header = magic "WHARFSEG" (8) | version u16 = 1 | flags u16 | reserved u32
//!                | base_offset u64 | min_timestamp i64 | crc32c(bytes 0..32) u32 | reserved u32
//! batch         = length u32 (whole batch) | crc32c(bytes 8..length) u32
//!               | version u8 = 1 | attributes u8 = 0 | reserved u16
//!               | base_offset u64 | record_count u32 | first_timestamp i64 | last_timestamp i64
//!               | record{record_count}
//! record        = varint length (of the rest of the record) | varint offset_delta
//!               | varint timestamp_delta | varint key_len+1 (0 = no key) | key
//!               | varint value_len | value | varint header_count
//!               | (varint name_len | name utf-8 | varint value_len | value utf-8){header_count}
//! ```

use bytes::{Buf, Bytes};

use crate::error::FormatError;
use crate::record::{NewRecord, Record, SharedHeaders};

/// Magic number at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WHARFSEG";
/// Current segment format version.
pub const SEGMENT_VERSION: u16 = 1;
/// Length of the segment file header.
pub const SEGMENT_HEADER_LEN: u64 = 40;

/// Length of a batch header.
pub const BATCH_HEADER_LEN: usize = 40;
/// Current batch format version.
pub const BATCH_VERSION: u8 = 1;
/// No batch is ever longer than this; a length field above it is corruption.
pub const MAX_BATCH_LEN: u32 = 64 * 1024 * 1024;

/// Magic number at the start of every index file.
pub const INDEX_MAGIC: [u8; 8] = *b"WHARFIDX";
/// Current index format version.
pub const INDEX_VERSION: u16 = 1;
/// Length of the index file header.
pub const INDEX_HEADER_LEN: usize = 56;
/// Length of one index entry.
pub const INDEX_ENTRY_LEN: usize = 16;

fn take<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], FormatError> {
    bytes
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(FormatError::Truncated {
            needed: (at + N) as u64,
            available: bytes.len() as u64,
        })
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, FormatError> {
    take::<2>(b, at).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, FormatError> {
    take::<4>(b, at).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, FormatError> {
    take::<8>(b, at).map(u64::from_le_bytes)
}
fn i64_at(b: &[u8], at: usize) -> Result<i64, FormatError> {
    take::<8>(b, at).map(i64::from_le_bytes)
}

// ---------------------------------------------------------------------------------------------
// Segment header

/// Segment header flag: this segment was created before its predecessor had been fsynced
/// and sealed (durability `none` seals in the background). If the predecessor has no valid
/// index, recovery may find it torn and then cuts the log there. Without the flag the
/// predecessor is known to be whole, and damage in it is corruption.
pub const FLAG_PREDECESSOR_UNSYNCED: u16 = 0x0001;

/// What a segment file header says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Offset of the segment's first record.
    pub base_offset: u64,
    /// No record in this segment (or after it) is older: the log's last append timestamp when
    /// the segment was created (`i64::MIN` for a log's first segment). Keeps timestamps
    /// monotonic even after retention has deleted every earlier record.
    pub min_timestamp: i64,
    /// [`FLAG_PREDECESSOR_UNSYNCED`].
    pub predecessor_unsynced: bool,
}

/// Encodes the header of a segment file.
pub fn encode_segment_header(header: SegmentHeader) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    let flags = if header.predecessor_unsynced {
        FLAG_PREDECESSOR_UNSYNCED
    } else {
        0
    };
    h[10..12].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&header.base_offset.to_le_bytes());
    h[24..32].copy_from_slice(&header.min_timestamp.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment file header.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
    let magic = take::<8>(bytes, 0)?;
    if magic != SEGMENT_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let stored = u32_at(bytes, 32)?;
    let computed = crc32c::crc32c(bytes.get(0..32).unwrap_or_default());
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    let version = u16_at(bytes, 8)?;
    if version != SEGMENT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    // Unknown flags and non-zero reserved fields are from a newer writer or damage. (Also
    // makes a header cut short by its last bytes fail.)
    let flags = u16_at(bytes, 10)?;
    if flags & !FLAG_PREDECESSOR_UNSYNCED != 0 || u32_at(bytes, 12)? != 0 || u32_at(bytes, 36)? != 0
    {
        return Err(FormatError::invalid(
            "segment header",
            "non-zero flags or reserved bytes",
        ));
    }
    Ok(SegmentHeader {
        base_offset: u64_at(bytes, 16)?,
        min_timestamp: i64_at(bytes, 24)?,
        predecessor_unsynced: flags & FLAG_PREDECESSOR_UNSYNCED != 0,
    })
}

// ---------------------------------------------------------------------------------------------
// Varints

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Reads a varint from the front of `buf`, advancing it.
fn get_varint(buf: &mut &[u8], field: &'static str) -> Result<u64, FormatError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(FormatError::Truncated {
                needed: 1,
                available: 0,
            });
        };
        *buf = rest;
        let bits = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err(FormatError::invalid(field, "varint overflows 64 bits"));
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(FormatError::invalid(field, "varint longer than 10 bytes"))
}

fn get_len(buf: &mut &[u8], field: &'static str) -> Result<usize, FormatError> {
    let v = get_varint(buf, field)?;
    let n = usize::try_from(v)
        .map_err(|_| FormatError::invalid(field, format!("length {v} too large")))?;
    if n > buf.len() {
        return Err(FormatError::Truncated {
            needed: v,
            available: buf.len() as u64,
        });
    }
    Ok(n)
}

fn get_slice<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], FormatError> {
    if n > buf.len() {
        return Err(FormatError::Truncated {
            needed: n as u64,
            available: buf.len() as u64,
        });
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

// ---------------------------------------------------------------------------------------------
// Batches

/// The fixed-size header of a record batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Length of the whole batch in bytes, header included.
    pub length: u32,
    /// CRC32C of bytes `8..length`.
    pub crc: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Number of records (at least one).
    pub record_count: u32,
    /// Append time of the first record, ms since the Unix epoch.
    pub first_timestamp: i64,
    /// Append time of the last record, ms since the Unix epoch.
    pub last_timestamp: i64,
}

impl BatchHeader {
    /// Parses and sanity-checks a batch header (not the checksum: that needs the whole batch).
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let length = u32_at(bytes, 0)?;
        if (length as usize) < BATCH_HEADER_LEN || length > MAX_BATCH_LEN {
            return Err(FormatError::invalid("batch length", length.to_string()));
        }
        let version = take::<1>(bytes, 8)?[0];
        if version != BATCH_VERSION {
            return Err(FormatError::UnsupportedVersion(u16::from(version)));
        }
        let attributes = take::<1>(bytes, 9)?[0];
        if attributes != 0 || u16_at(bytes, 10)? != 0 {
            return Err(FormatError::invalid(
                "batch attributes",
                format!("{attributes:#04x}"),
            ));
        }
        let header = BatchHeader {
            length,
            crc: u32_at(bytes, 4)?,
            base_offset: u64_at(bytes, 12)?,
            record_count: u32_at(bytes, 20)?,
            first_timestamp: i64_at(bytes, 24)?,
            last_timestamp: i64_at(bytes, 32)?,
        };
        if header.record_count == 0 {
            return Err(FormatError::invalid("record count", "0"));
        }
        // Every record takes at least 6 bytes (six one-byte varints).
        if u64::from(header.record_count) * 6 > u64::from(length) - BATCH_HEADER_LEN as u64 {
            return Err(FormatError::invalid(
                "record count",
                format!("{} records in {length} bytes", header.record_count),
            ));
        }
        if header.last_timestamp < header.first_timestamp {
            return Err(FormatError::invalid("timestamps", "last before first"));
        }
        if header
            .base_offset
            .checked_add(u64::from(header.record_count))
            .is_none()
        {
            return Err(FormatError::invalid("base offset", "overflows"));
        }
        Ok(header)
    }

    /// One past the offset of the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.next_offset() - 1
    }
}

/// Encoded size of a record, without its leading length varint.
fn record_body_len(r: &NewRecord, offset_delta: u64, shared: &[(String, String)]) -> usize {
    let key_len = r.key.as_ref().map_or(0, |k| k.len());
    let mut n = varint_len(offset_delta)
        + varint_len(0)
        + varint_len(r.key.as_ref().map_or(0, |k| k.len() as u64 + 1))
        + key_len;
    n += varint_len(r.value.len() as u64) + r.value.len();
    n += varint_len((r.headers.len() + shared.len()) as u64);
    for (k, v) in r.headers.iter().chain(shared) {
        n += varint_len(k.len() as u64) + k.len() + varint_len(v.len() as u64) + v.len();
    }
    n
}

/// The shared headers record `i` gets.
fn shared_for<'a>(shared: &SharedHeaders<'a>, i: usize) -> &'a [(String, String)] {
    if shared.applies_to(i) {
        shared.headers
    } else {
        &[]
    }
}

/// Size of the batch [`encode_batch`] would produce for `records`.
pub fn encoded_batch_len(records: &[NewRecord]) -> u64 {
    encoded_batch_len_shared(records, &SharedHeaders::NONE)
}

/// Size of the batch [`EncodedBatch::encode_shared`] would produce.
pub fn encoded_batch_len_shared(records: &[NewRecord], shared: &SharedHeaders<'_>) -> u64 {
    let mut n = BATCH_HEADER_LEN as u64;
    for (i, r) in records.iter().enumerate() {
        let body = record_body_len(r, i as u64, shared_for(shared, i));
        n += (varint_len(body as u64) + body) as u64;
    }
    n
}

/// Why [`EncodedBatch::encode_within`] encoded nothing.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The records cannot form a batch (none, or too many).
    Invalid(FormatError),
    /// The batch would be this many bytes, over the limit.
    TooLarge(u64),
}

/// A batch encoded before its offset and timestamp are known (so that the copying part of
/// encoding happens outside the log's lock). [`EncodedBatch::stamp`] then fills in the header
/// and the checksum (hardware CRC32C: ~30 GB/s, so a 100 KB batch takes a few microseconds —
/// cheaper than `crc32c_combine`, whose matrix method costs ~5 µs at any size).
#[derive(Clone, Debug)]
pub struct EncodedBatch {
    bytes: Vec<u8>,
}

impl EncodedBatch {
    /// Encodes `records` (at least one) into a batch with base offset 0 and timestamp 0.
    pub fn encode(records: &[NewRecord]) -> Result<Self, FormatError> {
        Self::encode_shared(records, &SharedHeaders::NONE)
    }

    /// Encodes `records`, each followed by the `shared` headers that apply to it.
    pub fn encode_shared(
        records: &[NewRecord],
        shared: &SharedHeaders<'_>,
    ) -> Result<Self, FormatError> {
        Self::encode_within(records, shared, u64::from(MAX_BATCH_LEN)).map_err(|e| match e {
            Refused::Invalid(e) => e,
            Refused::TooLarge(size) => FormatError::invalid("batch length", size.to_string()),
        })
    }

    /// [`EncodedBatch::encode_shared`], refusing a batch over `max_len` bytes (or the format's
    /// own limit) before anything is copied.
    pub(crate) fn encode_within(
        records: &[NewRecord],
        shared: &SharedHeaders<'_>,
        max_len: u64,
    ) -> Result<Self, Refused> {
        let count = u32::try_from(records.len()).map_err(|_| {
            Refused::Invalid(FormatError::invalid(
                "record count",
                records.len().to_string(),
            ))
        })?;
        if count == 0 {
            return Err(Refused::Invalid(FormatError::invalid("record count", "0")));
        }
        // Each record's length is computed once (it heads the record and sizes the buffer).
        let bodies: Vec<usize> = records
            .iter()
            .enumerate()
            .map(|(i, r)| record_body_len(r, i as u64, shared_for(shared, i)))
            .collect();
        let total = BATCH_HEADER_LEN as u64
            + bodies
                .iter()
                .map(|&b| (varint_len(b as u64) + b) as u64)
                .sum::<u64>();
        if total > max_len.min(u64::from(MAX_BATCH_LEN)) {
            return Err(Refused::TooLarge(total));
        }
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&[0u8; BATCH_HEADER_LEN]);
        for (i, (r, &body)) in records.iter().zip(&bodies).enumerate() {
            let extra = shared_for(shared, i);
            put_varint(&mut out, body as u64);
            put_varint(&mut out, i as u64);
            put_varint(&mut out, 0); // every record of a batch gets the batch's append time
            match &r.key {
                None => put_varint(&mut out, 0),
                Some(k) => {
                    put_varint(&mut out, k.len() as u64 + 1);
                    out.extend_from_slice(k);
                }
            }
            put_varint(&mut out, r.value.len() as u64);
            out.extend_from_slice(&r.value);
            put_varint(&mut out, (r.headers.len() + extra.len()) as u64);
            for (k, v) in r.headers.iter().chain(extra) {
                put_varint(&mut out, k.len() as u64);
                out.extend_from_slice(k.as_bytes());
                put_varint(&mut out, v.len() as u64);
                out.extend_from_slice(v.as_bytes());
            }
        }
        let length = out.len() as u32; // bounded by MAX_BATCH_LEN above
        if let Some(h) = out.get_mut(0..4) {
            h.copy_from_slice(&length.to_le_bytes());
        }
        if let Some(h) = out.get_mut(8..9) {
            h.copy_from_slice(&[BATCH_VERSION]);
        }
        if let Some(h) = out.get_mut(20..24) {
            h.copy_from_slice(&count.to_le_bytes());
        }
        Ok(Self { bytes: out })
    }

    /// Length of the encoded batch in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a batch has at least one record.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Number of records in the batch.
    pub fn record_count(&self) -> u32 {
        u32_at(&self.bytes, 20).unwrap_or(0)
    }

    /// Sets the base offset and the (single) append timestamp, and the checksum.
    pub fn stamp(&mut self, base_offset: u64, timestamp: i64) {
        if let Some(h) = self.bytes.get_mut(12..20) {
            h.copy_from_slice(&base_offset.to_le_bytes());
        }
        if let Some(h) = self.bytes.get_mut(24..32) {
            h.copy_from_slice(&timestamp.to_le_bytes());
        }
        if let Some(h) = self.bytes.get_mut(32..40) {
            h.copy_from_slice(&timestamp.to_le_bytes());
        }
        let crc = crc32c::crc32c(self.bytes.get(8..).unwrap_or_default());
        if let Some(h) = self.bytes.get_mut(4..8) {
            h.copy_from_slice(&crc.to_le_bytes());
        }
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Appends one batch holding `records` (all stamped `timestamp`) to `out`; returns its length.
pub fn encode_batch(
    out: &mut Vec<u8>,
    base_offset: u64,
    timestamp: i64,
    records: &[NewRecord],
) -> Result<u32, FormatError> {
    let mut batch = EncodedBatch::encode(records)?;
    batch.stamp(base_offset, timestamp);
    out.extend_from_slice(batch.as_bytes());
    Ok(batch.len() as u32)
}

/// A whole record batch whose header and checksum have been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// The same batch in a buffer of its own: a batch read from the log is a slice of the
    /// whole read buffer, which it keeps alive; keep a detached copy when holding one for
    /// long. (Already verified: not checked again.)
    pub fn detached(&self) -> Batch {
        Batch {
            header: self.header,
            bytes: Bytes::copy_from_slice(&self.bytes),
        }
    }

    /// Verifies `bytes` as exactly one batch: header, length and checksum. Record contents
    /// are decoded lazily by [`Batch::records`]; [`Batch::decode`] checks them all.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, FormatError> {
        let header = BatchHeader::parse(&bytes)?;
        if bytes.len() != header.length as usize {
            return Err(FormatError::Truncated {
                needed: u64::from(header.length),
                available: bytes.len() as u64,
            });
        }
        let computed = crc32c::crc32c(bytes.get(8..).unwrap_or_default());
        if computed != header.crc {
            return Err(FormatError::Checksum {
                stored: header.crc,
                computed,
            });
        }
        Ok(Batch { header, bytes })
    }

    /// Verifies `bytes` as one batch and decodes every record; the strictest check there is.
    pub fn decode(bytes: Bytes) -> Result<(Self, Vec<Record>), FormatError> {
        let batch = Self::from_bytes(bytes)?;
        let records = batch.records().collect::<Result<Vec<_>, _>>()?;
        if records.len() != batch.header.record_count as usize {
            return Err(FormatError::invalid(
                "record count",
                format!(
                    "header says {}, found {}",
                    batch.header.record_count,
                    records.len()
                ),
            ));
        }
        Ok((batch, records))
    }

    /// The batch header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The raw bytes of the batch, exactly as stored.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }

    /// One past the offset of the last record.
    pub fn next_offset(&self) -> u64 {
        self.header.next_offset()
    }

    /// Decodes the records one by one. Stops after the first error.
    pub fn records(&self) -> Records {
        Records {
            header: self.header,
            rest: self.bytes.slice(BATCH_HEADER_LEN.min(self.bytes.len())..),
            index: 0,
            failed: false,
        }
    }
}

/// Iterator over the records of a [`Batch`].
#[derive(Debug)]
pub struct Records {
    header: BatchHeader,
    rest: Bytes,
    index: u32,
    failed: bool,
}

impl Records {
    /// Steps over the records before `offset` without decoding them (only their length
    /// prefixes are read; the batch's checksum already covered their bytes), so a read that
    /// starts in the middle of a large batch does not pay for the records it does not want.
    /// The next record yielded is the one at `offset` (or the batch ends).
    pub fn skip_to(&mut self, offset: u64) -> Result<(), FormatError> {
        while !self.failed
            && self.index < self.header.record_count
            && self.header.base_offset + u64::from(self.index) < offset
        {
            let step = {
                let all: &[u8] = &self.rest;
                let mut buf = all;
                let len = match get_len(&mut buf, "record length") {
                    Ok(len) => len,
                    Err(e) => {
                        self.failed = true;
                        return Err(e);
                    }
                };
                all.len() - buf.len() + len
            };
            self.rest.advance(step);
            self.index += 1;
        }
        Ok(())
    }

    fn decode_next(&mut self) -> Result<Record, FormatError> {
        let all: &[u8] = &self.rest;
        let mut buf = all;
        let len = get_len(&mut buf, "record length")?;
        let mut body = get_slice(&mut buf, len)?;
        let consumed_prefix = all.len() - buf.len() - len;
        let body_start = consumed_prefix;

        let delta = get_varint(&mut body, "offset delta")?;
        if delta != u64::from(self.index) {
            return Err(FormatError::invalid(
                "offset delta",
                format!("expected {}, found {delta}", self.index),
            ));
        }
        let ts_delta = get_varint(&mut body, "timestamp delta")?;
        let timestamp = i64::try_from(ts_delta)
            .ok()
            .and_then(|d| self.header.first_timestamp.checked_add(d))
            .filter(|t| *t <= self.header.last_timestamp)
            .ok_or_else(|| FormatError::invalid("timestamp delta", ts_delta.to_string()))?;

        let key_tag = get_varint(&mut body, "key length")?;
        let key_range = if key_tag == 0 {
            None
        } else {
            let n = usize::try_from(key_tag - 1)
                .map_err(|_| FormatError::invalid("key length", key_tag.to_string()))?;
            let start = len - body.len();
            get_slice(&mut body, n)?;
            Some(start..start + n)
        };
        let vlen = get_len(&mut body, "value length")?;
        let vstart = len - body.len();
        get_slice(&mut body, vlen)?;
        let header_count = get_varint(&mut body, "header count")?;
        // Each header takes at least two bytes; bound the allocation by the input.
        if header_count > (body.len() / 2) as u64 {
            return Err(FormatError::invalid(
                "header count",
                header_count.to_string(),
            ));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let n = get_len(&mut body, "header name length")?;
            let name = std::str::from_utf8(get_slice(&mut body, n)?)
                .map_err(|_| FormatError::invalid("header name", "not UTF-8"))?;
            let n = get_len(&mut body, "header value length")?;
            let value = std::str::from_utf8(get_slice(&mut body, n)?)
                .map_err(|_| FormatError::invalid("header value", "not UTF-8"))?;
            headers.push((name.to_owned(), value.to_owned()));
        }
        if !body.is_empty() {
            return Err(FormatError::invalid(
                "record",
                format!("{} trailing bytes", body.len()),
            ));
        }
        let body_bytes = self.rest.slice(body_start..body_start + len);
        let record = Record {
            offset: self.header.base_offset + u64::from(self.index),
            timestamp,
            key: key_range.map(|r| body_bytes.slice(r)),
            value: body_bytes.slice(vstart..vstart + vlen),
            headers,
        };
        self.rest.advance(body_start + len);
        self.index += 1;
        Ok(record)
    }
}

impl Iterator for Records {
    type Item = Result<Record, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.index >= self.header.record_count {
            if !self.rest.is_empty() {
                self.failed = true;
                return Some(Err(FormatError::invalid(
                    "batch",
                    format!("{} bytes after the last record", self.rest.len()),
                )));
            }
            return None;
        }
        let r = self.decode_next();
        self.failed = r.is_err();
        Some(r)
    }
}

// ---------------------------------------------------------------------------------------------
// Index files

/// One sparse index entry: where a batch starts and when it was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
    /// First timestamp of the batch.
    pub timestamp: i64,
}

/// What an index file says about its (sealed) segment, besides the entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexSummary {
    /// Base offset of the segment.
    pub base_offset: u64,
    /// One past the last offset in the segment.
    pub next_offset: u64,
    /// Length of the segment file in bytes.
    pub data_len: u64,
    /// Last timestamp in the segment (`i64::MIN` when it holds no records).
    pub last_timestamp: i64,
}

/// Encodes an index file.
pub fn encode_index(summary: &IndexSummary, entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&summary.base_offset.to_le_bytes());
    out.extend_from_slice(&summary.next_offset.to_le_bytes());
    out.extend_from_slice(&summary.data_len.to_le_bytes());
    out.extend_from_slice(&summary.last_timestamp.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]); // crc + reserved, filled below
    for e in entries {
        out.extend_from_slice(&e.relative_offset.to_le_bytes());
        out.extend_from_slice(&e.position.to_le_bytes());
        out.extend_from_slice(&e.timestamp.to_le_bytes());
    }
    let crc = index_crc(&out);
    if let Some(c) = out.get_mut(48..52) {
        c.copy_from_slice(&crc.to_le_bytes());
    }
    out
}

fn index_crc(bytes: &[u8]) -> u32 {
    // Everything but the checksum field itself (bytes 48..52).
    let head = bytes.get(..48).unwrap_or_default();
    let tail = bytes.get(52..).unwrap_or_default();
    crc32c::crc32c_append(crc32c::crc32c(head), tail)
}

/// Decodes and checks an index file (magic, version, checksum, entry order).
pub fn decode_index(bytes: &[u8]) -> Result<(IndexSummary, Vec<IndexEntry>), FormatError> {
    if take::<8>(bytes, 0)? != INDEX_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u16_at(bytes, 8)?;
    if version != INDEX_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let count = u32_at(bytes, 12)? as usize;
    let expected = INDEX_HEADER_LEN as u64 + count as u64 * INDEX_ENTRY_LEN as u64;
    if bytes.len() as u64 != expected {
        return Err(FormatError::Truncated {
            needed: expected,
            available: bytes.len() as u64,
        });
    }
    let stored = u32_at(bytes, 48)?;
    let computed = index_crc(bytes);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    let summary = IndexSummary {
        base_offset: u64_at(bytes, 16)?,
        next_offset: u64_at(bytes, 24)?,
        data_len: u64_at(bytes, 32)?,
        last_timestamp: i64_at(bytes, 40)?,
    };
    if summary.next_offset < summary.base_offset {
        return Err(FormatError::invalid(
            "index next offset",
            "before base offset",
        ));
    }
    let mut entries = Vec::with_capacity(count);
    let mut prev: Option<IndexEntry> = None;
    for i in 0..count {
        let at = INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
        let e = IndexEntry {
            relative_offset: u32_at(bytes, at)?,
            position: u32_at(bytes, at + 4)?,
            timestamp: i64_at(bytes, at + 8)?,
        };
        let ordered = prev.is_none_or(|p| {
            e.relative_offset > p.relative_offset
                && e.position > p.position
                && e.timestamp >= p.timestamp
        });
        if !ordered
            || u64::from(e.position) >= summary.data_len
            || u64::from(e.position) < SEGMENT_HEADER_LEN
        {
            return Err(FormatError::invalid(
                "index entry",
                format!("entry {i} out of order or range"),
            ));
        }
        prev = Some(e);
        entries.push(e);
    }
    Ok((summary, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<NewRecord> {
        vec![
            NewRecord::new("v1"),
            NewRecord::new("").with_key("k"),
            NewRecord::new(vec![0u8; 300])
                .with_key("")
                .with_header("traceparent", "00-abc")
                .with_header("x", ""),
        ]
    }

    #[test]
    fn batch_round_trip() {
        let mut buf = vec![1, 2, 3];
        let len = encode_batch(&mut buf, 42, 1_700_000_000_000, &sample()).unwrap();
        assert_eq!(len as usize, buf.len() - 3);
        assert_eq!(u64::from(len), encoded_batch_len(&sample()));
        let (batch, records) = Batch::decode(Bytes::from(buf.split_off(3))).unwrap();
        assert_eq!(batch.base_offset(), 42);
        assert_eq!(batch.next_offset(), 45);
        assert_eq!(records.len(), 3);
        for (i, (r, want)) in records.iter().zip(sample()).enumerate() {
            assert_eq!(r.offset, 42 + i as u64);
            assert_eq!(r.timestamp, 1_700_000_000_000);
            assert_eq!(r.key, want.key);
            assert_eq!(r.value, want.value);
            assert_eq!(r.headers, want.headers);
        }
    }

    #[test]
    fn skipping_yields_the_same_records_as_decoding() {
        let mut buf = Vec::new();
        encode_batch(&mut buf, 42, 1_700_000_000_000, &sample()).unwrap();
        let (batch, all) = Batch::decode(Bytes::from(buf)).unwrap();
        for from in 0..=46 {
            let mut it = batch.records();
            it.skip_to(from).unwrap();
            let rest: Vec<Record> = it.collect::<Result<_, _>>().unwrap();
            let want: Vec<Record> = all.iter().filter(|r| r.offset >= from).cloned().collect();
            assert_eq!(rest, want, "from {from}");
        }
        // A corrupt length prefix is an error, and the iterator stops.
        let mut it = batch.records();
        it.rest = Bytes::from_static(&[0xff, 0xff, 0xff]);
        assert!(it.skip_to(45).is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn shared_headers_are_stored_as_the_records_own() {
        let shared = vec![("traceparent".to_owned(), "00-shared".to_owned())];
        let with = SharedHeaders {
            headers: &shared,
            except: &[1],
        };
        let mut batch = EncodedBatch::encode_shared(&sample(), &with).unwrap();
        assert_eq!(
            batch.len() as u64,
            encoded_batch_len_shared(&sample(), &with)
        );
        batch.stamp(0, 9);
        let (_, records) = Batch::decode(Bytes::from(batch.into_bytes())).unwrap();
        // The same records with the header added by hand encode to the same bytes.
        let mut by_hand = sample();
        for i in [0, 2] {
            by_hand[i].headers.extend(shared.iter().cloned());
        }
        let mut expected = EncodedBatch::encode(&by_hand).unwrap();
        expected.stamp(0, 9);
        let (_, want) = Batch::decode(Bytes::from(expected.into_bytes())).unwrap();
        assert_eq!(records, want);
        assert_eq!(records[1].headers, Vec::new());
        assert_eq!(records[2].headers.last(), shared.last());
        assert_eq!(
            encoded_batch_len_shared(&sample(), &SharedHeaders::NONE),
            encoded_batch_len(&sample())
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_batch(&mut buf, 7, 5, &sample()).unwrap();
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                Batch::decode(Bytes::from(bad)).is_err(),
                "flip of bit {i} went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut buf = Vec::new();
        encode_batch(&mut buf, 7, 5, &sample()).unwrap();
        for n in 0..buf.len() {
            assert!(Batch::decode(Bytes::copy_from_slice(&buf[..n])).is_err());
        }
    }

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            let mut s = &out[..];
            assert_eq!(get_varint(&mut s, "t").unwrap(), v);
            assert!(s.is_empty());
        }
        let mut s: &[u8] = &[0xff; 11];
        assert!(get_varint(&mut s, "t").is_err());
        let mut s: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(get_varint(&mut s, "t").is_err());
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let header = SegmentHeader {
            base_offset: 99,
            min_timestamp: -5,
            predecessor_unsynced: true,
        };
        let h = encode_segment_header(header);
        assert_eq!(decode_segment_header(&h).unwrap(), header);
        let mut bad = h;
        bad[17] ^= 1;
        assert!(matches!(
            decode_segment_header(&bad),
            Err(FormatError::Checksum { .. })
        ));
        assert!(decode_segment_header(&h[..20]).is_err());
    }

    #[test]
    fn index_round_trip_and_damage() {
        let summary = IndexSummary {
            base_offset: 10,
            next_offset: 20,
            data_len: 5000,
            last_timestamp: 9,
        };
        let entries = vec![
            IndexEntry {
                relative_offset: 0,
                position: 40,
                timestamp: 1,
            },
            IndexEntry {
                relative_offset: 5,
                position: 4000,
                timestamp: 9,
            },
        ];
        let bytes = encode_index(&summary, &entries);
        assert_eq!(decode_index(&bytes).unwrap(), (summary, entries));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode_index(&bad).is_err(), "byte {i}");
        }
        assert!(decode_index(&bytes[..bytes.len() - 1]).is_err());
    }
}
