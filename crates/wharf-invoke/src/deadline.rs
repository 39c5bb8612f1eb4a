//! Deadlines on the wire: `grpc-timeout` (gRPC's format: up to 8 digits and a unit) and
//! `wharf-deadline` (milliseconds remaining, for plain HTTP). Relative times, so the clocks of
//! caller, Wharf and app need not agree.

use std::time::Duration;

/// The header Wharf reads and forwards on HTTP calls: milliseconds remaining.
pub const WHARF_DEADLINE: &str = "wharf-deadline";
/// gRPC's deadline header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value (`"100m"`, `"5S"`, `"250000u"`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a `grpc-timeout` value (at most 8 digits, the finest unit that fits).
pub fn format_grpc_timeout(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 100_000_000 {
        format!("{micros}u")
    } else if d.as_millis() < 100_000_000 {
        format!("{}m", d.as_millis())
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

/// Parses a `wharf-deadline` value: whole milliseconds remaining.
pub fn parse_wharf_deadline(v: &str) -> Option<Duration> {
    if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().map(Duration::from_millis)
}

/// The time a request's headers give it, if any (the smaller of the two headers). `Err` with
/// the header's name if one is malformed.
pub fn from_headers(headers: &http::HeaderMap) -> Result<Option<Duration>, &'static str> {
    let mut out: Option<Duration> = None;
    for (name, parse) in [
        (
            GRPC_TIMEOUT,
            parse_grpc_timeout as fn(&str) -> Option<Duration>,
        ),
        (WHARF_DEADLINE, parse_wharf_deadline),
    ] {
        if let Some(v) = headers.get(name) {
            let d = v.to_str().ok().and_then(parse).ok_or(name)?;
            out = Some(out.map_or(d, |o| o.min(d)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips() {
        for d in [
            Duration::from_millis(1),
            Duration::from_millis(1500),
            Duration::from_secs(3 * 3600),
            Duration::from_micros(7),
        ] {
            let s = format_grpc_timeout(d);
            assert!(s.len() <= 9, "{s}");
            assert_eq!(parse_grpc_timeout(&s), Some(d), "{s}");
        }
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        for bad in ["", "m", "10", "123456789m", "-1m", "1x", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_take_the_smaller() {
        let mut h = http::HeaderMap::new();
        assert_eq!(from_headers(&h), Ok(None));
        h.insert(GRPC_TIMEOUT, "2S".parse().unwrap());
        h.insert(WHARF_DEADLINE, "1500".parse().unwrap());
        assert_eq!(from_headers(&h), Ok(Some(Duration::from_millis(1500))));
        h.insert(WHARF_DEADLINE, "soon".parse().unwrap());
        assert_eq!(from_headers(&h), Err(WHARF_DEADLINE));
    }
}
