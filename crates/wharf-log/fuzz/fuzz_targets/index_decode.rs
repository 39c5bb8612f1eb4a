//! Fuzzes the index-file decoder (`decode_index`) and the segment-header decoder
//! (`decode_segment_header`). Neither may panic.
//!
//! Every input is tried twice: as given, and with its entry count and checksum fixed up to
//! match the bytes, so that mutations reach the entry checks. When an index decodes, its
//! entries must be ordered and in range, and `encode_index` must give back the input when
//! the reserved bytes are zero. Likewise for a decoded segment header.
//!
//! Run: `cd crates/wharf-log && cargo fuzz run index_decode --sanitizer none`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_log::format::{
    INDEX_ENTRY_LEN, INDEX_HEADER_LEN, SEGMENT_HEADER_LEN, decode_index, decode_segment_header,
    encode_index, encode_segment_header,
};

fuzz_target!(|data: &[u8]| {
    check_segment_header(data);
    check_index(data);
    if data.len() >= INDEX_HEADER_LEN {
        let mut fixed = data.to_vec();
        let count = (fixed.len() - INDEX_HEADER_LEN) / INDEX_ENTRY_LEN;
        fixed.truncate(INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN);
        fixed[12..16].copy_from_slice(&(count as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed[..48]), &fixed[52..]);
        fixed[48..52].copy_from_slice(&crc.to_le_bytes());
        check_index(&fixed);
    }
});

fn check_segment_header(data: &[u8]) {
    let Ok(header) = decode_segment_header(data) else {
        return;
    };
    let header_len = SEGMENT_HEADER_LEN as usize;
    // Flags and reserved fields must be zero and the header whole, so a header that decodes
    // re-encodes to exactly its bytes.
    assert!(data.len() >= header_len, "a {}-byte segment header decoded", data.len());
    let encoded = encode_segment_header(header);
    assert_eq!(
        &encoded[..],
        &data[..header_len],
        "segment header did not re-encode to the same bytes"
    );
}

fn check_index(data: &[u8]) {
    let Ok((summary, entries)) = decode_index(data) else {
        return;
    };
    assert_eq!(
        data.len(),
        INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN
    );
    assert!(summary.next_offset >= summary.base_offset);
    for pair in entries.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            a.relative_offset < b.relative_offset
                && a.position < b.position
                && a.timestamp <= b.timestamp
        );
    }
    for e in &entries {
        assert!(
            u64::from(e.position) >= SEGMENT_HEADER_LEN && u64::from(e.position) < summary.data_len
        );
    }
    let encoded = encode_index(&summary, &entries);
    if data[10..12] == [0, 0] && data[52..56] == [0; 4] {
        assert_eq!(
            encoded, data,
            "canonical index did not re-encode to the same bytes"
        );
    }
}
