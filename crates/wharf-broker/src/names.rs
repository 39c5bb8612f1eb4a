//! The naming rule for topics and subscriptions (DESIGN.md §1).

use crate::error::{BrokerError, Result};

/// Prefix of names the broker reserves for itself (dead-letter topics and the like).
pub const RESERVED_PREFIX: &str = "wharf.";

/// Checks `name` against `[a-z0-9][a-z0-9._-]{0,99}`. Reserved `wharf.` names are refused
/// unless `allow_reserved` (the broker's own dead-letter topics).
pub fn validate(what: &'static str, name: &str, allow_reserved: bool) -> Result<()> {
    let bad = |reason| {
        Err(BrokerError::InvalidName {
            what,
            name: name.chars().take(120).collect(),
            reason,
        })
    };
    let bytes = name.as_bytes();
    let Some(&first) = bytes.first() else {
        return bad("it is empty");
    };
    if bytes.len() > 100 {
        return bad("it is longer than 100 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("it must start with a lowercase letter or a digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only a-z, 0-9, '.', '_' and '-' are allowed");
    }
    if !allow_reserved && name.starts_with(RESERVED_PREFIX) {
        return bad("names starting with \"wharf.\" are reserved");
    }
    Ok(())
}

/// The dead-letter topic of subscription `sub` on topic `topic`: `wharf.dlq.{topic}.{sub}`.
pub fn dlq_topic(topic: &str, sub: &str) -> String {
    format!("{RESERVED_PREFIX}dlq.{topic}.{sub}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for ok in ["a", "0", "orders.created", "a_b-c.d", &"x".repeat(100)] {
            assert!(validate("topic", ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-a",
            ".a",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(101),
            "wharf.x",
        ] {
            assert_eq!(
                validate("topic", bad, false).unwrap_err().code(),
                "invalid_name",
                "{bad}"
            );
        }
        assert!(validate("topic", "wharf.dlq.a.b", true).is_ok());
        assert_eq!(dlq_topic("orders", "billing"), "wharf.dlq.orders.billing");
    }
}
