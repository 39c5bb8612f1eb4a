//! W3C trace context (`traceparent`): parsed from each request, continued by the request's
//! span, and stored on published messages so every consumer sees the producer's trace.

use std::fmt;

/// A parsed `traceparent` (version 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id.
    pub trace_id: u128,
    /// 8-byte id of the parent span.
    pub span_id: u64,
    /// Trace flags (bit 0 = sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; `None` if malformed or all-zero ids (the W3C
    /// rule: such a header is ignored and a new trace starts).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let lower_hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2)
            || version == "ff"
            || !lower_hex(trace, 32)
            || !lower_hex(span, 16)
            || !lower_hex(flags, 2)
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// A child of this context with a new span id (the server's span).
    pub fn child(&self) -> Self {
        Self {
            span_id: random_nonzero_u64(),
            ..*self
        }
    }

    /// A new trace (sampled), for requests that bring none.
    pub fn new_root() -> Self {
        let hi = u128::from(random_nonzero_u64());
        let lo = u128::from(random_nonzero_u64());
        Self {
            trace_id: (hi << 64) | lo,
            span_id: random_nonzero_u64(),
            flags: 1,
        }
    }
}

impl TraceParent {
    /// The trace id as 32 lowercase hex digits.
    pub fn trace_hex(&self) -> Hex<32> {
        Hex::of(self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_hex(&self) -> Hex<16> {
        Hex::of(u128::from(self.span_id))
    }

    /// The `traceparent` header value, `00-{trace}-{span}-{flags}`, built without the
    /// formatting machinery (it is written on every request and every publish).
    pub fn header(&self) -> Hex<55> {
        let mut out = *b"00-________________________________-________________-__";
        let (trace, rest) = out.split_at_mut(3).1.split_at_mut(32);
        put_hex(trace, self.trace_id);
        let (span, rest) = rest.split_at_mut(1).1.split_at_mut(16);
        put_hex(span, u128::from(self.span_id));
        put_hex(rest.split_at_mut(1).1, u128::from(self.flags));
        Hex(out)
    }
}

impl TraceParent {
    /// The `traceparent` header value as an HTTP header value, marked never-indexed: every span
    /// id is new, so letting HPACK index it only fills HTTP/2's dynamic table with values that
    /// never repeat (and h2 compares a new value with every indexed one of the same name, ~4k
    /// instructions per response when the table is full of them).
    pub fn header_value(&self) -> Option<http::HeaderValue> {
        let mut v = http::HeaderValue::from_str(self.header().as_str()).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.header().as_str())
    }
}

/// Text of a fixed length made of ASCII characters (lowercase hex digits and dashes), on the
/// stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    fn of(v: u128) -> Self {
        let mut out = [0; N];
        put_hex(&mut out, v);
        Self(out)
    }

    /// As a string.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Writes the low `4 * out.len()` bits of `v` into `out` as lowercase hex, most significant
/// digit first.
fn put_hex(out: &mut [u8], mut v: u128) {
    for b in out.iter_mut().rev() {
        let digit = (v & 0xf) as u8;
        *b = if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        };
        v >>= 4;
    }
}

fn random_nonzero_u64() -> u64 {
    loop {
        let v = rand::random::<u64>();
        if v != 0 {
            return v;
        }
    }
}

/// The `tracing` span of one request (level `info`): `method`, `route`, and `trace` (the
/// server's span as a `traceparent`: its trace id and span id), plus `parent_span_id` when the
/// caller sent a trace context. Every log line written while the request is handled carries
/// them. Few fields, each written with `Display`: at the default `info` level the log
/// subscriber formats a span's fields when the span opens, once per request (the span had six
/// fields, two of them written with `Debug` escaping: ~8k instructions per request).
pub fn request_span(method: &str, route: &str, trace: &RequestTrace) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        trace = %trace.span.header().as_str(),
        parent_span_id = tracing::field::Empty,
    );
    if let Some(parent) = trace.parent {
        span.record(
            "parent_span_id",
            tracing::field::display(parent.span_hex().as_str()),
        );
    }
    span
}

/// The trace context of one request: the incoming parent (if any) and the server's span.
#[derive(Clone, Copy, Debug)]
pub struct RequestTrace {
    /// The caller's context, if it sent a valid `traceparent`.
    pub parent: Option<TraceParent>,
    /// The server's own span in that trace (or in a new one).
    pub span: TraceParent,
}

impl RequestTrace {
    /// From the request's `traceparent` header.
    pub fn from_header(value: Option<&str>) -> Self {
        let parent = value.and_then(TraceParent::parse);
        let span = parent.map_or_else(TraceParent::new_root, |p| p.child());
        Self { parent, span }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_the_formatting_machinery() {
        for (trace_id, span_id, flags) in [
            (1u128, 1u64, 0u8),
            (u128::MAX, u64::MAX, 0xff),
            (
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                1,
            ),
        ] {
            let t = TraceParent {
                trace_id,
                span_id,
                flags,
            };
            let want = format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}");
            assert_eq!(t.header().as_str(), want);
            assert_eq!(t.to_string(), want);
            assert_eq!(t.trace_hex().as_str(), format!("{trace_id:032x}"));
            assert_eq!(t.span_hex().as_str(), format!("{span_id:016x}"));
        }
    }

    #[test]
    fn parses_and_prints() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(s).expect("valid");
        assert_eq!(t.to_string(), s);
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceParent::parse(s).is_none(), "{s:?}");
        }
    }
}
