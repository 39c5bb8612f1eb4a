//! How an external engine stores a Wharf message: an envelope in the engine message's payload.
//!
//! Neither JetStream headers nor AMQP header tables carry Wharf's headers faithfully (their
//! order, repeated names, values with line breaks) or have a place for a binary key, so the
//! engines on NATS and RabbitMQ store the message as an envelope in the payload and mark it
//! with the header `Wharf-Enc: 1` (NATS) or the `content-type` `application/x-wharf-envelope`
//! (AMQP):
//!
//! ```text
//! version: u8 = 1
//! timestamp: i64, big-endian (ms since the Unix epoch; the publishing node's clock)
//! key: varint(len + 1), 0 = no key; then the key's bytes
//! headers: varint(count); per header varint(len) name, varint(len) value (UTF-8)
//! value: the rest of the payload
//! ```
//!
//! A message without the marker was published by a plain client of the engine: its payload is
//! the value, its engine headers are the headers, and its time is the engine's.

use bytes::{BufMut, Bytes, BytesMut};

/// NATS header marking an enveloped payload.
pub const MARKER: &str = "Wharf-Enc";
/// The marker's value (the envelope's format).
pub const MARKER_VALUE: &str = "1";
const VERSION: u8 = 1;

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Publish time (ms since the Unix epoch).
    pub timestamp: i64,
    /// The key.
    pub key: Option<Bytes>,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub value: Bytes,
}

/// Why an envelope could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Wharf envelope: {0}")]
pub struct DecodeError(&'static str);

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Encodes a message: `own` headers, then `shared` ones.
pub fn encode(
    timestamp: i64,
    key: Option<&[u8]>,
    own: &[(String, String)],
    shared: &[(String, String)],
    value: &[u8],
) -> Bytes {
    let headers_len: usize = own
        .iter()
        .chain(shared)
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum();
    let mut out = BytesMut::with_capacity(
        1 + 8 + 5 + key.map_or(0, <[u8]>::len) + 5 + headers_len + value.len(),
    );
    out.put_u8(VERSION);
    out.put_i64(timestamp);
    match key {
        Some(k) => {
            put_varint(&mut out, k.len() as u64 + 1);
            out.put_slice(k);
        }
        None => put_varint(&mut out, 0),
    }
    put_varint(&mut out, (own.len() + shared.len()) as u64);
    for (k, v) in own.iter().chain(shared) {
        put_varint(&mut out, k.len() as u64);
        out.put_slice(k.as_bytes());
        put_varint(&mut out, v.len() as u64);
        out.put_slice(v.as_bytes());
    }
    out.put_slice(value);
    out.freeze()
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }

    fn take(&mut self, len: u64) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError("length overflows"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError("length past the end"))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.varint()?;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError("header is not UTF-8"))
    }
}

/// Decodes an enveloped payload. Never panics, whatever the input.
pub fn decode(payload: Bytes) -> Result<Envelope, DecodeError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    if r.u8()? != VERSION {
        return Err(DecodeError("unknown version"));
    }
    let ts = r.take(8)?;
    let timestamp = i64::from_be_bytes(
        ts.as_ref()
            .try_into()
            .map_err(|_| DecodeError("truncated timestamp"))?,
    );
    let key = match r.varint()? {
        0 => None,
        n => Some(r.take(n - 1)?),
    };
    let count = r.varint()?;
    // Each header takes at least two bytes: a count past that is malformed, and checking it
    // first keeps a hostile count from reserving memory.
    let left = (r.buf.len() - r.pos) as u64;
    if count > left / 2 {
        return Err(DecodeError("more headers than bytes"));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let k = r.string()?;
        let v = r.string()?;
        headers.push((k, v));
    }
    let value = r.buf.slice(r.pos..);
    Ok(Envelope {
        timestamp,
        key,
        headers,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let own = vec![
            ("b".to_owned(), "x\r\ny".to_owned()),
            ("a".into(), "".into()),
        ];
        let shared = vec![("traceparent".to_owned(), "00-1".to_owned())];
        for key in [None, Some(&b""[..]), Some(&[0u8, 255, 7][..])] {
            let e = encode(-5, key, &own, &shared, b"\x00value");
            let d = decode(e).unwrap();
            assert_eq!(d.timestamp, -5);
            assert_eq!(d.key.as_deref(), key);
            assert_eq!(d.headers.len(), 3);
            assert_eq!(d.headers[0], own[0]);
            assert_eq!(d.headers[2], shared[0]);
            assert_eq!(&d.value[..], b"\x00value");
        }
    }

    #[test]
    fn malformed_is_an_error() {
        let good = encode(1, Some(b"k"), &[("h".into(), "v".into())], &[], b"v");
        // Cutting anywhere before the value must fail (the value is the last byte).
        for cut in 0..good.len() - 1 {
            let r = decode(good.slice(..cut));
            assert!(r.is_err(), "cut {cut}: {r:?}");
        }
        assert!(decode(Bytes::from_static(&[2])).is_err());
        assert!(decode(Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff])).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..2000usize {
            let mut v = Vec::with_capacity(len % 64);
            for _ in 0..len % 64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push(seed as u8);
            }
            if let Some(b) = v.first_mut() {
                *b = 1;
            }
            let _ = decode(Bytes::from(v));
        }
    }
}
