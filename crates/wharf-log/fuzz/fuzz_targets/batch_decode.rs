//! Fuzzes the batch decoder (`Batch::decode`, `Batch::from_bytes`, `BatchHeader::parse`) and,
//! on the same bytes, the segment-header and index decoders. None of them may panic.
//!
//! Every input is tried twice: as given, and with its length and checksum fields fixed up to
//! match the bytes, so that mutations reach the record decoder instead of all dying at the
//! checksum check. When a batch decodes, it is checked against the encoder:
//! - the decoded records are consistent with the header (offsets, timestamps, count);
//! - re-encoding them with `encode_batch(base_offset, first_timestamp)` gives a batch that
//!   decodes to the same records and is no longer than the input;
//! - if the input is in canonical form (all records at the batch's single timestamp, reserved
//!   bytes zero, minimal varints — i.e. the re-encoding is as long as the input), the
//!   re-encoding reproduces the input byte for byte.
//!
//! Run: `cd crates/wharf-log && cargo fuzz run batch_decode --sanitizer none`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wharf_log::format::{
    BATCH_HEADER_LEN, BatchHeader, decode_index, decode_segment_header, encode_batch,
};
use wharf_log::{Batch, NewRecord, Record};

fuzz_target!(|data: &[u8]| {
    let _ = decode_segment_header(data);
    let _ = decode_index(data);
    check_batch(data);
    if data.len() >= BATCH_HEADER_LEN {
        let mut fixed = data.to_vec();
        let len = u32::try_from(fixed.len()).unwrap_or(u32::MAX);
        fixed[0..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c(&fixed[8..]);
        fixed[4..8].copy_from_slice(&crc.to_le_bytes());
        check_batch(&fixed);
    }
});

fn check_batch(data: &[u8]) {
    let header = BatchHeader::parse(data);
    let lazy = Batch::from_bytes(Bytes::copy_from_slice(data));
    let lazy_records = lazy.as_ref().ok().map(|b| b.records().collect::<Vec<_>>());
    let Ok((batch, records)) = Batch::decode(Bytes::copy_from_slice(data)) else {
        return;
    };

    // The layers agree with each other.
    let header = header.expect("Batch::decode accepted a header that BatchHeader::parse rejects");
    assert_eq!(batch.header(), &header);
    assert_eq!(
        lazy.as_ref().ok(),
        Some(&batch),
        "Batch::from_bytes disagrees with Batch::decode"
    );
    let lazy_records = lazy_records.expect("from_bytes succeeded");
    assert_eq!(
        lazy_records.len(),
        records.len(),
        "Batch::records yields something after the last record"
    );
    for (l, r) in lazy_records.iter().zip(&records) {
        assert_eq!(l.as_ref().ok(), Some(r));
    }
    assert_eq!(&batch.as_bytes()[..], data);

    // The records are consistent with the header.
    assert_eq!(header.length as usize, data.len());
    assert_eq!(records.len(), header.record_count as usize);
    assert_eq!(
        batch.next_offset(),
        header.base_offset + u64::from(header.record_count)
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, header.base_offset + i as u64);
        assert!(header.first_timestamp <= r.timestamp && r.timestamp <= header.last_timestamp);
    }

    // Re-encoding gives the same records (all at the first timestamp).
    let new: Vec<NewRecord> = records
        .iter()
        .map(|r| NewRecord {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        })
        .collect();
    let mut again = Vec::new();
    let len = encode_batch(&mut again, header.base_offset, header.first_timestamp, &new)
        .expect("decoded records re-encode");
    assert_eq!(len as usize, again.len());
    assert!(
        again.len() <= data.len(),
        "re-encoding is longer than the input ({} > {})",
        again.len(),
        data.len()
    );
    let (batch2, records2) =
        Batch::decode(Bytes::from(again.clone())).expect("re-encoded batch decodes");
    assert_eq!(batch2.base_offset(), header.base_offset);
    assert_eq!(records2.len(), records.len());
    for (a, b) in records.iter().zip(&records2) {
        let a_at_first = Record {
            timestamp: header.first_timestamp,
            ..a.clone()
        };
        assert_eq!(&a_at_first, b);
    }

    // Canonical input: byte-identical round trip.
    let single_timestamp = header.last_timestamp == header.first_timestamp
        && records
            .iter()
            .all(|r| r.timestamp == header.first_timestamp);
    let reserved_zero = data[10..12] == [0, 0];
    if single_timestamp && reserved_zero && again.len() == data.len() {
        assert_eq!(
            again, data,
            "canonical batch did not re-encode to the same bytes"
        );
    }
}
