//! `PublishRequest`, `PublishMessage` and `PublishResponse`, written by hand instead of
//! generated: the publish path carries most of Wharf's traffic, and prost's generic decoding
//! and encoding cost more per 100-byte message than the broker's own append (every varint and
//! every field goes through `Buf`/`BufMut` trait calls on tonic's buffer wrappers).
//!
//! The wire format and the Rust types are exactly what `prost-build` generates for these
//! messages in `wharf.proto` (the build maps them here with `extern_path`, and [`crate::v1`]
//! re-exports them), and so is the behaviour on any input, canonical or not:
//! - decoding a whole `PublishRequest` takes the received buffer as one [`Bytes`] and reads it
//!   as a slice: values and keys become sub-slices of it (no copy), and each field costs a
//!   few comparisons. Anything outside the canonical encoding of these messages (unknown
//!   fields, unusual wire types, groups, malformed input) makes that path give up and the
//!   message is decoded again by the generic path, which follows prost's derived code field
//!   by field and so gives prost's result and prost's error;
//! - encoding a `PublishResponse` writes each result into a small stack buffer and copies it
//!   out once, byte for byte what prost writes.
//!
//! The tests below check both against structs derived by prost from the same definitions, on
//! arbitrary messages and on arbitrary bytes.

use std::collections::HashMap;

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    self, DecodeContext, WireType, bool as pbool, encoded_len_varint, message, skip_field, string,
};
use prost::{DecodeError, Message};

use crate::v1::PublishResult;

/// A message to publish.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PublishMessage {
    /// Decides the partition (Kafka-compatible murmur2) unless `partition` is set.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub key: Option<Bytes>,
    /// The payload.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// `wharf-message-id` makes the publish idempotent; `wharf-deliver-at` (RFC 3339) delays
    /// delivery on shared subscriptions.
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    /// The partition to append to; unset: by key, or round robin.
    #[prost(uint32, optional, tag = "4")]
    pub partition: Option<u32>,
}

/// A batch of messages for one topic.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct PublishRequest {
    /// The topic.
    pub topic: String,
    /// The messages, stored in this order.
    pub messages: Vec<PublishMessage>,
    /// If the topic does not exist, create it as a queue (topic + shared subscription of the
    /// same name, defaults) first. Needs the publish scope only, like REST's queue send.
    pub create_queue: bool,
}

/// One result per published message, in order.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct PublishResponse {
    /// The results.
    pub results: Vec<PublishResult>,
}

impl Message for PublishRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.topic.is_empty() {
            string::encode(1, &self.topic, buf);
        }
        message::encode_repeated(2, &self.messages, buf);
        if self.create_queue {
            pbool::encode(3, &self.create_queue, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        const STRUCT_NAME: &str = "PublishRequest";
        let (result, field) = match tag {
            1 => (string::merge(wire_type, &mut self.topic, buf, ctx), "topic"),
            2 => (
                message::merge_repeated(wire_type, &mut self.messages, buf, ctx),
                "messages",
            ),
            3 => (
                pbool::merge(wire_type, &mut self.create_queue, buf, ctx),
                "create_queue",
            ),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        result.map_err(|mut error| {
            error.push(STRUCT_NAME, field);
            error
        })
    }

    fn encoded_len(&self) -> usize {
        (if self.topic.is_empty() {
            0
        } else {
            string::encoded_len(1, &self.topic)
        }) + message::encoded_len_repeated(2, &self.messages)
            + if self.create_queue {
                pbool::encoded_len(3, &self.create_queue)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        self.topic.clear();
        self.messages.clear();
        self.create_queue = false;
    }

    fn merge(&mut self, mut buf: impl Buf) -> Result<(), DecodeError> {
        // One `Bytes` for the whole message: free for tonic's buffer (`BytesMut::split_to`),
        // a copy for other buffers.
        let bytes = buf.copy_to_bytes(buf.remaining());
        if *self == Self::default()
            && let Some(decoded) = fast::request(&bytes)
        {
            *self = decoded;
            return Ok(());
        }
        generic_merge(self, bytes)
    }
}

impl Message for PublishResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for result in &self.results {
            let mut out = [0u8; fast::MAX_RESULT_LEN];
            let len = fast::result(result, &mut out);
            buf.put_slice(&out[..len]);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            message::merge_repeated(wire_type, &mut self.results, buf, ctx).map_err(|mut error| {
                error.push("PublishResponse", "results");
                error
            })
        } else {
            skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.results
            .iter()
            .map(|r| {
                let inner = fast::result_body_len(r);
                1 + encoded_len_varint(inner as u64) + inner
            })
            .sum()
    }

    fn clear(&mut self) {
        self.results.clear();
    }
}

/// prost's `Message::merge`: field after field through `merge_field`.
fn generic_merge(message: &mut impl Message, mut buf: Bytes) -> Result<(), DecodeError> {
    let ctx = DecodeContext::default();
    while buf.has_remaining() {
        let (tag, wire_type) = encoding::decode_key(&mut buf)?;
        message.merge_field(tag, wire_type, &mut buf, ctx.clone())?;
    }
    Ok(())
}

/// The slice decoder of canonical requests and the encoder of results.
mod fast {
    use super::{Bytes, HashMap, PublishMessage, PublishRequest, PublishResult};

    /// Field keys (field number << 3 | wire type) of the canonical encoding.
    const LEN_1: u64 = 1 << 3 | 2;
    const LEN_2: u64 = 2 << 3 | 2;
    const LEN_3: u64 = 3 << 3 | 2;
    const VARINT_3: u64 = 3 << 3;
    const VARINT_4: u64 = 4 << 3;

    /// What the message vector's first reservation assumes a message takes at least, and
    /// how many messages it reserves for at most (it grows as usual past that).
    const MIN_RESERVE_PER_MESSAGE: usize = 32;
    const MAX_RESERVE_MESSAGES: usize = 1024;

    /// The longest encoded `PublishResult` with its key and length: key 1 + length 1 +
    /// (1 + 5) + (1 + 10) + (1 + 10) + (1 + 1) = 32, plus room for a 10-byte varint written
    /// from the last byte (`put_varint` writes into a fixed window).
    pub(super) const MAX_RESULT_LEN: usize = 32 + 10;

    /// A cursor over one message's bytes; every read stays within `end`.
    struct Cursor<'a> {
        all: &'a Bytes,
        at: usize,
        end: usize,
    }

    impl<'a> Cursor<'a> {
        fn done(&self) -> bool {
            self.at >= self.end
        }

        /// A varint as prost reads it: at most 10 bytes, the tenth at most 1.
        #[inline]
        fn varint(&mut self) -> Option<u64> {
            let s = &self.all[..self.end];
            // Keys and short lengths: one byte.
            let first = *s.get(self.at)?;
            if first < 0x80 {
                self.at += 1;
                return Some(u64::from(first));
            }
            self.long_varint()
        }

        #[cold]
        fn long_varint(&mut self) -> Option<u64> {
            let s = &self.all[..self.end];
            let mut value = 0u64;
            for i in 0..10 {
                let byte = *s.get(self.at + i)?;
                if i == 9 && byte > 1 {
                    return None;
                }
                value |= u64::from(byte & 0x7f) << (7 * i);
                if byte < 0x80 {
                    self.at += i + 1;
                    return Some(value);
                }
            }
            None
        }

        /// The bounds of a length-delimited value.
        fn delimited(&mut self) -> Option<(usize, usize)> {
            let len = usize::try_from(self.varint()?).ok()?;
            let start = self.at;
            let end = start.checked_add(len).filter(|&e| e <= self.end)?;
            self.at = end;
            Some((start, end))
        }

        fn bytes(&mut self) -> Option<Bytes> {
            let (start, end) = self.delimited()?;
            Some(self.all.slice(start..end))
        }

        fn string(&mut self) -> Option<String> {
            let (start, end) = self.delimited()?;
            std::str::from_utf8(&self.all[start..end])
                .ok()
                .map(str::to_owned)
        }

        fn within(&mut self) -> Option<Cursor<'a>> {
            let (at, end) = self.delimited()?;
            Some(Cursor {
                all: self.all,
                at,
                end,
            })
        }
    }

    /// A request in the canonical encoding, or `None` (then the generic path decides).
    pub(super) fn request(all: &Bytes) -> Option<PublishRequest> {
        let mut c = Cursor {
            all,
            at: 0,
            end: all.len(),
        };
        let mut r = PublishRequest::default();
        while !c.done() {
            match c.varint()? {
                LEN_1 => r.topic = c.string()?,
                LEN_2 => {
                    let m = c.within()?;
                    if r.messages.is_empty() {
                        // The messages of a batch are mostly alike: size the vector once,
                        // from the first one's length (bounded: the input is untrusted,
                        // and a tiny first message must not reserve for millions).
                        let per = (m.end - m.at + 2).max(MIN_RESERVE_PER_MESSAGE);
                        r.messages
                            .reserve(((all.len() - m.at) / per + 1).min(MAX_RESERVE_MESSAGES));
                    }
                    r.messages.push(publish_message(m)?);
                }
                VARINT_3 => r.create_queue = c.varint()? != 0,
                _ => return None,
            }
        }
        Some(r)
    }

    fn publish_message(mut c: Cursor<'_>) -> Option<PublishMessage> {
        let mut m = PublishMessage {
            key: None,
            value: Bytes::new(),
            headers: HashMap::new(),
            partition: None,
        };
        while !c.done() {
            match c.varint()? {
                LEN_1 => m.key = Some(c.bytes()?),
                LEN_2 => m.value = c.bytes()?,
                LEN_3 => {
                    let mut entry = c.within()?;
                    let (mut key, mut value) = (String::new(), String::new());
                    while !entry.done() {
                        match entry.varint()? {
                            LEN_1 => key = entry.string()?,
                            LEN_2 => value = entry.string()?,
                            _ => return None,
                        }
                    }
                    m.headers.insert(key, value);
                }
                // prost reads a uint32 as a varint cut to its low 32 bits.
                #[allow(clippy::cast_possible_truncation)]
                VARINT_4 => m.partition = Some(c.varint()? as u32),
                _ => return None,
            }
        }
        Some(m)
    }

    /// Writes `v` as a varint at `out[*at..]`; the caller leaves room for 10 bytes.
    #[inline]
    fn put_varint(out: &mut [u8; MAX_RESULT_LEN], at: &mut usize, mut v: u64) {
        let Some(room) = out.get_mut(*at..*at + 10) else {
            unreachable!("MAX_RESULT_LEN leaves room for every field");
        };
        let mut i = 0;
        while v >= 0x80 {
            // Truncation intended: the low 7 bits, with the continuation bit.
            #[allow(clippy::cast_possible_truncation)]
            let low = (v as u8) | 0x80;
            room[i] = low;
            i += 1;
            v >>= 7;
        }
        #[allow(clippy::cast_possible_truncation)]
        let last = v as u8;
        room[i] = last;
        *at += i + 1;
    }

    /// The encoded length of a result's fields (what prost's `encoded_len` gives).
    pub(super) fn result_body_len(r: &PublishResult) -> usize {
        use prost::encoding::encoded_len_varint as len;
        (if r.partition == 0 {
            0
        } else {
            1 + len(u64::from(r.partition))
        }) + if r.offset == 0 { 0 } else { 1 + len(r.offset) }
            // int64 is encoded as the two's complement u64, like prost does.
            + if r.timestamp_ms == 0 {
                0
            } else {
                #[allow(clippy::cast_sign_loss)]
                let t = r.timestamp_ms as u64;
                1 + len(t)
            }
            + if r.duplicate { 2 } else { 0 }
    }

    /// Writes `r` as field 1 of a `PublishResponse` (key, length, fields) into `out`; returns
    /// the length written.
    pub(super) fn result(r: &PublishResult, out: &mut [u8; MAX_RESULT_LEN]) -> usize {
        let mut at = 0;
        put_varint(out, &mut at, LEN_1);
        // At most 30 bytes: the length is one byte.
        put_varint(out, &mut at, result_body_len(r) as u64);
        if r.partition != 0 {
            put_varint(out, &mut at, 1 << 3);
            put_varint(out, &mut at, u64::from(r.partition));
        }
        if r.offset != 0 {
            put_varint(out, &mut at, 2 << 3);
            put_varint(out, &mut at, r.offset);
        }
        if r.timestamp_ms != 0 {
            put_varint(out, &mut at, 3 << 3);
            #[allow(clippy::cast_sign_loss)]
            put_varint(out, &mut at, r.timestamp_ms as u64);
        }
        if r.duplicate {
            put_varint(out, &mut at, 4 << 3);
            put_varint(out, &mut at, 1);
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use prost::Message;
    use prost::bytes::Bytes;

    use super::{PublishMessage, PublishRequest, PublishResponse, fast};
    use crate::v1::PublishResult;

    /// What prost derives for `wharf.v1.PublishRequest`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    struct DerivedRequest {
        #[prost(string, tag = "1")]
        topic: String,
        #[prost(message, repeated, tag = "2")]
        messages: Vec<PublishMessage>,
        #[prost(bool, tag = "3")]
        create_queue: bool,
    }

    /// What prost derives for `wharf.v1.PublishResponse`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    struct DerivedResponse {
        #[prost(message, repeated, tag = "1")]
        results: Vec<PublishResult>,
    }

    fn same(a: &PublishRequest, b: &DerivedRequest) -> bool {
        a.topic == b.topic && a.messages == b.messages && a.create_queue == b.create_queue
    }

    fn message() -> impl Strategy<Value = PublishMessage> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::hash_map(".{0,6}", ".{0,6}", 0..3),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(key, value, headers, partition)| PublishMessage {
                key: key.map(Bytes::from),
                value: Bytes::from(value),
                headers,
                partition,
            })
    }

    fn request() -> impl Strategy<Value = PublishRequest> {
        (
            ".{0,12}",
            proptest::collection::vec(message(), 0..12),
            any::<bool>(),
        )
            .prop_map(|(topic, messages, create_queue)| PublishRequest {
                topic,
                messages,
                create_queue,
            })
    }

    /// Decodes with both, asserting they agree; returns ours.
    fn both(bytes: &[u8]) -> Result<PublishRequest, prost::DecodeError> {
        let ours = PublishRequest::decode(bytes);
        let derived = DerivedRequest::decode(bytes);
        match (&ours, &derived) {
            (Ok(a), Ok(b)) => assert!(same(a, b), "{a:?} != {b:?}"),
            (Err(a), Err(b)) => assert_eq!(
                a.to_string(),
                b.to_string().replace("DerivedRequest", "PublishRequest")
            ),
            _ => panic!("disagree on {bytes:?}: {ours:?} vs {derived:?}"),
        }
        ours
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
        ))]

        /// Well-formed requests: the same bytes as prost's, decoded by the fast path to the
        /// same value.
        #[test]
        fn requests_round_trip(r in request()) {
            let derived = DerivedRequest {
                topic: r.topic.clone(),
                messages: r.messages.clone(),
                create_queue: r.create_queue,
            };
            let bytes = r.encode_to_vec();
            prop_assert_eq!(&bytes, &derived.encode_to_vec());
            prop_assert_eq!(r.encoded_len(), bytes.len());
            prop_assert_eq!(fast::request(&Bytes::from(bytes.clone())), Some(r.clone()));
            prop_assert_eq!(both(&bytes).unwrap(), r);
        }

        /// Arbitrary bytes: the same value or the same error as prost.
        #[test]
        fn arbitrary_bytes_decode_like_prost(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = both(&bytes);
        }

        /// A valid request with bytes changed, inserted or cut: the same as prost.
        #[test]
        fn damaged_requests_decode_like_prost(
            r in request(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let mut bytes = r.encode_to_vec();
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            let _ = both(&bytes);
        }

        /// Results: the same bytes as prost's and a round trip.
        #[test]
        fn responses_encode_like_prost(
            results in proptest::collection::vec(
                (any::<u32>(), any::<u64>(), any::<i64>(), any::<bool>(), 0u8..4),
                0..20,
            ),
        ) {
            let results: Vec<PublishResult> = results
                .into_iter()
                .map(|(partition, offset, timestamp_ms, duplicate, zero)| PublishResult {
                    // Zeros are skipped on the wire: make them common.
                    partition: if zero == 0 { 0 } else { partition },
                    offset: if zero == 1 { 0 } else { offset },
                    timestamp_ms: if zero == 2 { 0 } else { timestamp_ms },
                    duplicate,
                })
                .collect();
            let ours = PublishResponse { results: results.clone() };
            let derived = DerivedResponse { results };
            let bytes = ours.encode_to_vec();
            prop_assert_eq!(&bytes, &derived.encode_to_vec());
            prop_assert_eq!(ours.encoded_len(), bytes.len());
            prop_assert_eq!(PublishResponse::decode(&bytes[..]).unwrap(), ours);
        }
    }

    /// Non-canonical inputs go to the generic path: an unknown field is skipped, a repeated
    /// scalar field keeps its last value, a map entry with its value first still counts.
    #[test]
    fn non_canonical_requests_decode_like_prost() {
        let cases: Vec<Vec<u8>> = vec![
            // topic "a", unknown varint field 9, topic "b"
            vec![0x0a, 1, b'a', 0x48, 5, 0x0a, 1, b'b'],
            // a message whose map entry has value before key, and an unknown fixed32 field
            vec![
                0x12, 13, 0x1a, 6, 0x12, 1, b'v', 0x0a, 1, b'k', 0x2d, 1, 2, 3, 4,
            ],
            // create_queue as a 10-byte varint
            vec![
                0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ],
            // create_queue as an 11-byte varint: invalid
            vec![
                0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ],
            // the map field with a varint wire type (prost ignores a map's wire type)
            vec![0x12, 2, 0x18, 0],
            // a topic that is not UTF-8
            vec![0x0a, 1, 0xff],
            // a message that runs past the end
            vec![0x12, 5, 0x12, 1],
        ];
        for bytes in cases {
            let _ = both(&bytes);
        }
        let r = both(&[0x0a, 1, b'a', 0x48, 5, 0x0a, 1, b'b']).unwrap();
        assert_eq!(r.topic, "b");
        let r = both(&[
            0x12, 13, 0x1a, 6, 0x12, 1, b'v', 0x0a, 1, b'k', 0x2d, 1, 2, 3, 4,
        ])
        .unwrap();
        assert_eq!(
            r.messages[0].headers,
            HashMap::from([("k".to_owned(), "v".to_owned())])
        );
    }

    /// Values decoded from a tonic-like buffer share it: no copy per value.
    #[test]
    fn values_are_slices_of_the_received_buffer() {
        let r = PublishRequest {
            topic: "t".into(),
            messages: vec![PublishMessage {
                key: Some(Bytes::from_static(b"key")),
                value: Bytes::from(vec![7u8; 100]),
                headers: HashMap::new(),
                partition: Some(3),
            }],
            create_queue: false,
        };
        let received = Bytes::from(r.encode_to_vec());
        let range = received.as_ptr_range();
        let decoded = PublishRequest::decode(received.clone()).unwrap();
        assert_eq!(decoded, r);
        let value = decoded.messages[0].value.as_ptr();
        assert!(range.contains(&value));
    }

    /// Merging into a request that is not empty follows protobuf's merge rules.
    #[test]
    fn merge_into_a_non_empty_request_appends_messages() {
        let one = PublishRequest {
            topic: "t".into(),
            messages: vec![PublishMessage {
                key: None,
                value: Bytes::from_static(b"1"),
                headers: HashMap::new(),
                partition: None,
            }],
            create_queue: true,
        };
        let mut merged = one.clone();
        merged.merge(&one.encode_to_vec()[..]).unwrap();
        assert_eq!(merged.messages.len(), 2);
        assert_eq!(merged.topic, "t");
        assert!(merged.create_queue);
    }
}
