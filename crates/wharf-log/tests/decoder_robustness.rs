//! Robustness of the on-disk format decoders (`Batch::decode`, `Batch::from_bytes`,
//! `BatchHeader::parse`, `decode_index`, `decode_segment_header`) against arbitrary and damaged
//! input: they return `Ok` or `Err` and never panic; valid batches round-trip exactly; any
//! single flipped bit and any truncation of a batch is rejected.
//!
//! Also replays the fuzz seed corpus (`fuzz/corpus/<target>/`) and any crash artifacts
//! (`fuzz/artifacts/<target>/`, not checked in) through every decoder. Seeds are named by what
//! they must do: `ok-*` decode, `bad-*` are rejected, `lenient-*` and `other-*` only must not
//! panic. The seeds are written by the ignored test `regenerate_seed_corpus`:
//!
//! ```text
//! WHARF_REGENERATE_FIXTURES=1 cargo test -p wharf-log --test decoder_robustness -- --ignored
//! ```

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use wharf_log::format::{
    BATCH_HEADER_LEN, BatchHeader, EncodedBatch, INDEX_HEADER_LEN, IndexEntry, IndexSummary,
    SEGMENT_HEADER_LEN, SegmentHeader, decode_index, decode_segment_header, encode_batch,
    encode_index, encode_segment_header, encoded_batch_len,
};
use wharf_log::{Batch, NewRecord, Record};

// ---------------------------------------------------------------------------------------------
// Helpers

/// CRC32C (Castagnoli), bit by bit: the tests forge checksums of crafted batches with it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` with its batch length and checksum fields set to match the bytes, so that a crafted
/// or mutated batch gets past the checksum to the record decoder. Shorter input is unchanged.
fn with_fixed_checksum(data: &[u8]) -> Vec<u8> {
    let mut fixed = data.to_vec();
    if fixed.len() >= BATCH_HEADER_LEN {
        let len = u32::try_from(fixed.len()).unwrap_or(u32::MAX);
        fixed[0..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c(&fixed[8..]);
        fixed[4..8].copy_from_slice(&crc.to_le_bytes());
    }
    fixed
}

/// Feeds `data` to every decoder (none may panic) and checks that the batch decoders agree.
/// Returns what `Batch::decode` returned, if it accepted the bytes.
fn decode_all(data: &[u8]) -> Option<(Batch, Vec<Record>)> {
    let _ = decode_segment_header(data);
    let _ = decode_index(data);
    let header = BatchHeader::parse(data);
    let lazy = Batch::from_bytes(Bytes::copy_from_slice(data));
    let lazy_records = lazy.as_ref().ok().map(|b| b.records().collect::<Vec<_>>());
    let (batch, records) = Batch::decode(Bytes::copy_from_slice(data)).ok()?;

    let header = header.expect("Batch::decode accepted a header BatchHeader::parse rejects");
    assert_eq!(batch.header(), &header);
    assert_eq!(lazy.as_ref().ok(), Some(&batch));
    let lazy_records = lazy_records.expect("Batch::from_bytes accepted it");
    assert_eq!(lazy_records.len(), records.len());
    for (l, r) in lazy_records.iter().zip(&records) {
        assert_eq!(l.as_ref().ok(), Some(r));
    }
    assert_eq!(&batch.as_bytes()[..], data);
    assert_eq!(header.length as usize, data.len());
    assert_eq!(records.len(), header.record_count as usize);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, header.base_offset + i as u64);
        assert!(header.first_timestamp <= r.timestamp && r.timestamp <= header.last_timestamp);
    }
    Some((batch, records))
}

fn to_new(r: &Record) -> NewRecord {
    NewRecord {
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r.headers.clone(),
    }
}

fn batch_bytes(base_offset: u64, timestamp: i64, records: &[NewRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_batch(&mut out, base_offset, timestamp, records).expect("encodable batch");
    out
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// A record body (everything after its length varint), field by field, for crafting batches
/// the encoder would never write.
fn raw_record(
    offset_delta: u64,
    ts_delta: u64,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let mut b = varint(offset_delta);
    b.extend(varint(ts_delta));
    match key {
        None => b.push(0),
        Some(k) => {
            b.extend(varint(k.len() as u64 + 1));
            b.extend_from_slice(k);
        }
    }
    b.extend(varint(value.len() as u64));
    b.extend_from_slice(value);
    b.extend(varint(headers.len() as u64));
    for (n, v) in headers {
        b.extend(varint(n.len() as u64));
        b.extend_from_slice(n);
        b.extend(varint(v.len() as u64));
        b.extend_from_slice(v);
    }
    b
}

/// Fields of a crafted batch header.
#[derive(Clone, Copy)]
struct RawHeader {
    version: u8,
    attributes: u8,
    reserved: u16,
    base_offset: u64,
    record_count: u32,
    first_timestamp: i64,
    last_timestamp: i64,
}

impl RawHeader {
    fn new(base_offset: u64, record_count: u32, timestamp: i64) -> Self {
        Self {
            version: 1,
            attributes: 0,
            reserved: 0,
            base_offset,
            record_count,
            first_timestamp: timestamp,
            last_timestamp: timestamp,
        }
    }
}

/// A crafted batch: `bodies` each get their length varint; length and checksum are correct.
fn raw_batch(h: RawHeader, bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0u8; 8];
    out.push(h.version);
    out.push(h.attributes);
    out.extend_from_slice(&h.reserved.to_le_bytes());
    out.extend_from_slice(&h.base_offset.to_le_bytes());
    out.extend_from_slice(&h.record_count.to_le_bytes());
    out.extend_from_slice(&h.first_timestamp.to_le_bytes());
    out.extend_from_slice(&h.last_timestamp.to_le_bytes());
    for body in bodies {
        out.extend(varint(body.len() as u64));
        out.extend_from_slice(body);
    }
    with_fixed_checksum(&out)
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

// ---------------------------------------------------------------------------------------------
// Seeds

const TS: i64 = 1_700_000_000_000;

/// A mix of record shapes, used for the bigger seeds and the damaged variants.
fn mixed_records(n: usize) -> Vec<NewRecord> {
    (0..n)
        .map(|i| {
            let value: Vec<u8> = (0..(i * 13) % 90).map(|j| (i * 7 + j) as u8).collect();
            let mut r = NewRecord::new(value);
            r.key = match i % 4 {
                0 => None,
                1 => Some(Bytes::new()),
                _ => Some(Bytes::from(format!("key-{i}"))),
            };
            if i % 3 == 1 {
                r = r.with_header("trace", format!("t-{i}"));
            }
            if i % 5 == 2 {
                r = r.with_header("", "").with_header("ünïcødé", "✓");
            }
            r
        })
        .collect()
}

fn with_headers() -> Vec<NewRecord> {
    vec![
        NewRecord::new("payload")
            .with_key("user-42")
            .with_header("content-type", "application/json")
            .with_header("traceparent", "00-4bf92f3577b34da6-00f067aa0ba902b7-01"),
    ]
}

/// The `batch_decode` seed corpus, by file name.
fn batch_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| seeds.push((name.to_owned(), bytes));
    let all_bytes: Vec<u8> = (0..=255u8).collect();

    // Valid batches of different shapes.
    add(
        "ok-one-record-value-only",
        batch_bytes(0, TS, &[NewRecord::new("hello")]),
    );
    add(
        "ok-one-record-key",
        batch_bytes(7, TS, &[NewRecord::new("hello").with_key("k1")]),
    );
    add(
        "ok-empty-key-empty-value",
        batch_bytes(8, TS, &[NewRecord::new("").with_key("")]),
    );
    add(
        "ok-no-key-empty-value",
        batch_bytes(9, TS, &[NewRecord::new("")]),
    );
    add("ok-headers", batch_bytes(10, TS, &with_headers()));
    add(
        "ok-headers-empty-and-unicode",
        batch_bytes(
            11,
            TS,
            &[NewRecord::new("v")
                .with_header("", "")
                .with_header("ünïcødé", "日本語 ✓")
                .with_header("x", "")],
        ),
    );
    let mut many_headers = NewRecord::new("v").with_key("k");
    for i in 0..20 {
        many_headers = many_headers.with_header(format!("h{i}"), "x".repeat(i));
    }
    add("ok-20-headers", batch_bytes(12, TS, &[many_headers]));
    add(
        "ok-binary-key-and-value",
        batch_bytes(
            13,
            TS,
            &[NewRecord::new(all_bytes.clone()).with_key(all_bytes.clone())],
        ),
    );
    add(
        "ok-value-127-bytes",
        batch_bytes(14, TS, &[NewRecord::new(vec![b'a'; 127])]),
    );
    add(
        "ok-key-127-bytes-value-128-bytes",
        batch_bytes(
            15,
            TS,
            &[NewRecord::new(vec![b'v'; 128]).with_key(vec![b'k'; 127])],
        ),
    );
    add(
        "ok-value-2k",
        batch_bytes(
            16,
            TS,
            &[NewRecord::new(all_bytes.repeat(8)).with_key("big")],
        ),
    );
    add(
        "ok-mixed-30-records",
        batch_bytes(1_000, TS, &mixed_records(30)),
    );
    let hundred: Vec<NewRecord> = (0..100).map(|i| NewRecord::new(format!("m{i}"))).collect();
    add("ok-100-small-records", batch_bytes(5_000, TS, &hundred));
    add(
        "ok-150-empty-records",
        batch_bytes(0, TS, &vec![NewRecord::new(""); 150]),
    );
    add(
        "ok-base-offset-near-max",
        batch_bytes(u64::MAX - 3, TS, &mixed_records(3)),
    );
    add(
        "ok-timestamp-negative",
        batch_bytes(1, -1, &mixed_records(2)),
    );
    add(
        "ok-timestamp-min",
        batch_bytes(2, i64::MIN, &mixed_records(2)),
    );
    add(
        "ok-timestamp-max",
        batch_bytes(3, i64::MAX, &mixed_records(2)),
    );
    // The format allows records of one batch to have different timestamps (the log never
    // writes such batches, but the decoder reads them).
    let mut h = RawHeader::new(100, 3, TS);
    h.last_timestamp = TS + 10;
    add(
        "ok-per-record-timestamp-deltas",
        raw_batch(
            h,
            &[
                raw_record(0, 0, None, b"a", &[]),
                raw_record(1, 5, Some(b"k"), b"b", &[]),
                raw_record(2, 10, None, b"c", &[(b"h", b"v")]),
            ],
        ),
    );

    // Damaged copies of valid batches.
    let mixed = batch_bytes(1_000, TS, &mixed_records(30));
    let small = batch_bytes(10, TS, &with_headers());
    add("bad-empty", Vec::new());
    add("bad-truncated-in-header", small[..20].to_vec());
    add(
        "bad-truncated-header-only",
        small[..BATCH_HEADER_LEN].to_vec(),
    );
    add(
        "bad-truncated-mid-record",
        mixed[..mixed.len() / 2].to_vec(),
    );
    add("bad-truncated-last-byte", small[..small.len() - 1].to_vec());
    add("bad-trailing-byte", [&small[..], &[0]].concat());
    add("bad-two-batches", [&small[..], &small[..]].concat());
    add("bad-bitflip-length", flip(&small, 3));
    add("bad-bitflip-crc", flip(&small, 4 * 8 + 1));
    add("bad-bitflip-version", flip(&small, 8 * 8 + 1));
    add("bad-bitflip-record-count", flip(&small, 20 * 8));
    add("bad-bitflip-timestamp", flip(&small, 24 * 8 + 5));
    add(
        "bad-bitflip-value",
        flip(&mixed, (mixed.len() - 30) * 8 + 6),
    );

    // Crafted with a correct checksum, so that the record decoder has to catch them.
    let rec = |i| raw_record(i, 0, Some(b"key"), b"value", &[(b"h", b"v")]);
    add(
        "bad-record-count-zero",
        raw_batch(RawHeader::new(0, 0, TS), &[rec(0)]),
    );
    add(
        "bad-record-count-above-records",
        raw_batch(RawHeader::new(0, 3, TS), &[rec(0), rec(1)]),
    );
    add(
        "bad-record-count-below-records",
        raw_batch(RawHeader::new(0, 1, TS), &[rec(0), rec(1)]),
    );
    add(
        "bad-offset-delta",
        raw_batch(RawHeader::new(0, 2, TS), &[rec(0), rec(5)]),
    );
    add(
        "bad-timestamp-delta-past-last",
        raw_batch(
            RawHeader::new(0, 1, TS),
            &[raw_record(0, 1, None, b"v", &[])],
        ),
    );
    let mut h = RawHeader::new(0, 1, TS);
    h.last_timestamp = TS - 1;
    add("bad-last-timestamp-before-first", raw_batch(h, &[rec(0)]));
    add(
        "bad-base-offset-overflows",
        raw_batch(RawHeader::new(u64::MAX, 2, TS), &[rec(0), rec(1)]),
    );
    let mut h = RawHeader::new(0, 1, TS);
    h.version = 2;
    add("bad-version-2", raw_batch(h, &[rec(0)]));
    let mut h = RawHeader::new(0, 1, TS);
    h.attributes = 1;
    add("bad-attributes-set", raw_batch(h, &[rec(0)]));
    add(
        "bad-header-name-not-utf8",
        raw_batch(
            RawHeader::new(0, 1, TS),
            &[raw_record(0, 0, None, b"v", &[(b"\xff\xfe", b"v")])],
        ),
    );
    let mut body = raw_record(0, 0, None, b"v", &[]);
    *body.last_mut().unwrap() = 100; // header count 100, no headers follow
    add(
        "bad-header-count-too-large",
        raw_batch(RawHeader::new(0, 1, TS), &[body]),
    );
    let mut body = rec(0);
    body.push(0);
    add(
        "bad-record-trailing-byte",
        raw_batch(RawHeader::new(0, 1, TS), &[body]),
    );
    let mut body = vec![0, 0, 100]; // key of 99 bytes, only 3 there
    body.extend_from_slice(&[0, 0, 0]);
    add(
        "bad-key-past-record-end",
        raw_batch(RawHeader::new(0, 1, TS), &[body]),
    );
    let mut body = vec![0, 0];
    body.extend([0xff; 10]); // 10-byte varint whose last byte overflows 64 bits
    body.extend([0, 0, 0]);
    add(
        "bad-varint-overflow",
        raw_batch(RawHeader::new(0, 1, TS), &[body]),
    );

    // Accepted today although not what the encoder writes: non-minimal varints, reserved
    // bytes set, a last timestamp later than every record's. Must not panic either way.
    let mut body = vec![0x80, 0x00, 0]; // offset delta 0 in two bytes
    body.extend([0, 1, b'v', 0]);
    add(
        "lenient-non-minimal-varint",
        raw_batch(RawHeader::new(0, 1, TS), &[body]),
    );
    let mut h = RawHeader::new(0, 1, TS);
    h.reserved = 0xbeef;
    add("lenient-reserved-bytes-set", raw_batch(h, &[rec(0)]));
    let mut h = RawHeader::new(0, 1, TS);
    h.last_timestamp = TS + 1;
    add(
        "lenient-last-timestamp-after-records",
        raw_batch(h, &[rec(0)]),
    );

    // Other structures, for the other decoders the target also feeds.
    add("other-segment-header", segment_header_seed().to_vec());
    add("other-index", index_seed());
    seeds
}

fn segment_header_seed() -> [u8; SEGMENT_HEADER_LEN as usize] {
    encode_segment_header(SegmentHeader {
        base_offset: 1_000,
        min_timestamp: TS,
        predecessor_unsynced: false,
    })
}

fn index_seed() -> Vec<u8> {
    let summary = IndexSummary {
        base_offset: 1_000,
        next_offset: 1_050,
        data_len: 9_000,
        last_timestamp: TS + 500,
    };
    let entries = [
        IndexEntry {
            relative_offset: 0,
            position: SEGMENT_HEADER_LEN as u32,
            timestamp: TS,
        },
        IndexEntry {
            relative_offset: 20,
            position: 4_200,
            timestamp: TS + 100,
        },
        IndexEntry {
            relative_offset: 41,
            position: 8_500,
            timestamp: TS + 500,
        },
    ];
    encode_index(&summary, &entries)
}

/// The `index_decode` seed corpus, by file name.
fn index_seeds() -> Vec<(String, Vec<u8>)> {
    let index = index_seed();
    let empty = encode_index(
        &IndexSummary {
            base_offset: 0,
            next_offset: 0,
            data_len: SEGMENT_HEADER_LEN,
            last_timestamp: i64::MIN,
        },
        &[],
    );
    let header = segment_header_seed();
    let mut unordered = index.clone();
    unordered[INDEX_HEADER_LEN..INDEX_HEADER_LEN + 4].copy_from_slice(&30u32.to_le_bytes());
    let crc = crc32c(&[&unordered[..48], &unordered[52..]].concat());
    unordered[48..52].copy_from_slice(&crc.to_le_bytes());
    vec![
        ("ok-index-3-entries".into(), index.clone()),
        ("ok-index-empty".into(), empty),
        ("ok-segment-header".into(), header.to_vec()),
        (
            "bad-index-truncated".into(),
            index[..index.len() - 1].to_vec(),
        ),
        ("bad-index-bitflip".into(), flip(&index, 20 * 8 + 3)),
        ("bad-index-entries-out-of-order".into(), unordered),
        ("bad-segment-header-bitflip".into(), flip(&header, 17 * 8)),
        ("bad-segment-header-truncated".into(), header[..30].to_vec()),
        // Found by the index_decode fuzz target: once accepted because the decoder did not
        // read the trailing reserved u32 (bytes 36..40).
        ("bad-segment-header-36-bytes".into(), header[..36].to_vec()),
    ]
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted by name; none if it does not exist.
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read corpus file"))
        })
        .collect();
    files.sort();
    files
}

/// Writes the seed corpora. Ignored; only does anything with `WHARF_REGENERATE_FIXTURES=1`:
/// `WHARF_REGENERATE_FIXTURES=1 cargo test -p wharf-log --test decoder_robustness -- --ignored`.
/// Files of the same name are overwritten; others (e.g. saved crashes) are kept.
#[test]
#[ignore = "writes the checked-in seed corpus; run with WHARF_REGENERATE_FIXTURES=1"]
fn regenerate_seed_corpus() {
    if std::env::var("WHARF_REGENERATE_FIXTURES").as_deref() != Ok("1") {
        eprintln!("set WHARF_REGENERATE_FIXTURES=1 to rewrite fuzz/corpus/");
        return;
    }
    for (target, seeds) in [
        ("batch_decode", batch_seeds()),
        ("index_decode", index_seeds()),
    ] {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Corpus replay

#[test]
fn batch_corpus_and_artifacts_replay_without_panics() {
    let corpus = files_in(&fuzz_dir().join("corpus/batch_decode"));
    let mut decoded_ok = 0;
    for (name, bytes) in &corpus {
        let result = decode_all(bytes);
        decode_all(&with_fixed_checksum(bytes));
        if name.starts_with("ok-") {
            let (_, records) = result.unwrap_or_else(|| panic!("seed {name} does not decode"));
            // A canonical batch re-encodes to the same bytes.
            if !name.contains("per-record-timestamp") {
                let h = BatchHeader::parse(bytes).unwrap();
                let new: Vec<NewRecord> = records.iter().map(to_new).collect();
                assert_eq!(
                    batch_bytes(h.base_offset, h.first_timestamp, &new),
                    *bytes,
                    "{name}"
                );
            }
            decoded_ok += 1;
        } else if name.starts_with("bad-") {
            assert!(result.is_none(), "seed {name} decodes, but must not");
        }
    }
    assert!(
        decoded_ok >= 15,
        "only {decoded_ok} valid seeds in fuzz/corpus/batch_decode ({} files)",
        corpus.len()
    );
    for target in ["batch_decode", "index_decode"] {
        for (_, bytes) in files_in(&fuzz_dir().join("artifacts").join(target)) {
            decode_all(&bytes);
            decode_all(&with_fixed_checksum(&bytes));
        }
    }
}

#[test]
fn index_corpus_replays_without_panics() {
    let corpus = files_in(&fuzz_dir().join("corpus/index_decode"));
    let mut ok = 0;
    for (name, bytes) in &corpus {
        decode_all(bytes);
        let index = decode_index(bytes);
        let header = decode_segment_header(bytes);
        if name.starts_with("ok-index") {
            let (summary, entries) = index.unwrap_or_else(|e| panic!("seed {name}: {e}"));
            assert_eq!(encode_index(&summary, &entries), *bytes, "{name}");
            ok += 1;
        } else if name.starts_with("ok-segment-header") {
            let h = header.unwrap_or_else(|e| panic!("seed {name}: {e}"));
            assert_eq!(encode_segment_header(h)[..], bytes[..], "{name}");
            ok += 1;
        } else if name.starts_with("bad-") {
            assert!(index.is_err() && header.is_err(), "seed {name} decodes");
        }
    }
    assert!(ok >= 3, "only {ok} valid seeds in fuzz/corpus/index_decode");
}

/// The crafted seeds must be exactly what they claim: the raw builder agrees with the encoder.
#[test]
fn raw_builder_matches_encoder() {
    let records = mixed_records(12);
    let bodies: Vec<Vec<u8>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let headers: Vec<(&[u8], &[u8])> = r
                .headers
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect();
            raw_record(i as u64, 0, r.key.as_deref(), &r.value, &headers)
        })
        .collect();
    assert_eq!(
        raw_batch(RawHeader::new(77, 12, TS), &bodies),
        batch_bytes(77, TS, &records)
    );
}

#[test]
fn seeds_match_the_generator() {
    // Not a format guard (that is tests/format_fixture.rs), just a reminder to regenerate
    // the corpus after changing the seeds above.
    for (target, seeds) in [
        ("batch_decode", batch_seeds()),
        ("index_decode", index_seeds()),
    ] {
        let dir = fuzz_dir().join("corpus").join(target);
        for (name, bytes) in seeds {
            let on_disk = std::fs::read(dir.join(&name)).unwrap_or_else(|e| {
                panic!("{target}/{name}: {e}; regenerate the corpus (see the module docs)")
            });
            assert!(
                on_disk == bytes,
                "{target}/{name} differs from the generator; regenerate the corpus (see the module docs)"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

fn arb_record() -> impl Strategy<Value = NewRecord> {
    (
        prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        prop_oneof![
            6 => prop::collection::vec(any::<u8>(), 0..200),
            1 => prop::collection::vec(any::<u8>(), 0..3000),
        ],
        prop::collection::vec((".{0,12}", ".{0,24}"), 0..4),
    )
        .prop_map(|(key, value, headers)| NewRecord {
            key: key.map(Bytes::from),
            value: Bytes::from(value),
            headers,
        })
}

/// A base offset, a timestamp and 1..16 records.
fn arb_batch() -> impl Strategy<Value = (u64, i64, Vec<NewRecord>)> {
    (
        prop_oneof![0..1_000_000u64, (u64::MAX - 1_000)..=(u64::MAX - 16)],
        any::<i64>(),
        prop::collection::vec(arb_record(), 1..16),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::proptest_cases(64)))]

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        decode_all(&data);
        decode_all(&with_fixed_checksum(&data));
    }

    /// Random bytes behind a plausible header (version 1, sane counts), checksum fixed: this
    /// gets deep into the record decoder, which plain random bytes rarely reach.
    #[test]
    fn random_records_behind_a_valid_header_never_panic(
        count in 1u32..8,
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut data = Vec::new();
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&[1, 0, 0, 0]);
        data.extend_from_slice(&5u64.to_le_bytes());
        data.extend_from_slice(&count.to_le_bytes());
        data.extend_from_slice(&TS.to_le_bytes());
        data.extend_from_slice(&TS.to_le_bytes());
        data.extend_from_slice(&body);
        decode_all(&with_fixed_checksum(&data));
    }

    /// A valid batch with a few bytes overwritten and the checksum fixed up: never panics,
    /// and whatever still decodes is consistent (checked by `decode_all`).
    #[test]
    fn mutated_valid_batches_never_panic(
        (base, ts, records) in arb_batch(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = batch_bytes(base, ts, &records);
        for (at, value) in edits {
            // Leave the length and checksum alone: they are fixed up below anyway.
            let i = 8 + at.index(bytes.len() - 8);
            bytes[i] = value;
        }
        decode_all(&with_fixed_checksum(&bytes));
    }

    #[test]
    fn valid_batches_round_trip_exactly((base, ts, records) in arb_batch()) {
        let bytes = batch_bytes(base, ts, &records);
        prop_assert_eq!(bytes.len() as u64, encoded_batch_len(&records));
        let mut stamped = EncodedBatch::encode(&records).unwrap();
        stamped.stamp(base, ts);
        prop_assert_eq!(stamped.as_bytes(), &bytes[..]);

        let (batch, decoded) = decode_all(&bytes).expect("a valid batch decodes");
        prop_assert_eq!(batch.base_offset(), base);
        prop_assert_eq!(batch.next_offset(), base + records.len() as u64);
        prop_assert_eq!(batch.header().first_timestamp, ts);
        prop_assert_eq!(batch.header().last_timestamp, ts);
        prop_assert_eq!(decoded.len(), records.len());
        for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(got.offset, base + i as u64);
            prop_assert_eq!(got.timestamp, ts);
            prop_assert_eq!(&got.key, &want.key);
            prop_assert_eq!(&got.value, &want.value);
            prop_assert_eq!(&got.headers, &want.headers);
        }
        // And back: the decoded records encode to the same bytes.
        let again: Vec<NewRecord> = decoded.iter().map(to_new).collect();
        prop_assert_eq!(batch_bytes(base, ts, &again), bytes);
    }

    #[test]
    fn any_single_bit_flip_is_rejected(
        (base, ts, records) in arb_batch(),
        bits in prop::collection::vec(any::<Index>(), 1..32),
    ) {
        let bytes = batch_bytes(base, ts, &records);
        for bit in bits {
            let bit = bit.index(bytes.len() * 8);
            let bad = flip(&bytes, bit);
            prop_assert!(decode_all(&bad).is_none(), "flip of bit {} went unnoticed", bit);
        }
    }

    #[test]
    fn any_truncation_or_extension_is_rejected(
        (base, ts, records) in arb_batch(),
        extra in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let bytes = Bytes::from(batch_bytes(base, ts, &records));
        for n in 0..bytes.len() {
            // Slicing a `Bytes` is free: every prefix is checked, however long the batch.
            prop_assert!(Batch::decode(bytes.slice(..n)).is_err(), "prefix of {} bytes decodes", n);
            prop_assert!(BatchHeader::parse(&bytes[..n]).is_err() || n >= BATCH_HEADER_LEN);
        }
        let longer = [&bytes[..], &extra[..]].concat();
        prop_assert!(decode_all(&longer).is_none());
    }
}
