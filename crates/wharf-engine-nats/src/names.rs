//! Names of what Wharf creates in NATS.
//!
//! Topic names (`[a-z0-9][a-z0-9._-]*`) may hold `.`, which stream names and subject tokens
//! cannot, so they are escaped: `_` becomes `__` and `.` becomes `_d`. The escape is a
//! prefix code, so two topics never share a stream.

use wharf_broker::{BrokerError, Result};

/// KV key prefix of topic settings.
const TOPIC_KEY: &str = "topic.";

#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

/// `name` escaped for a stream name or a subject token.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `name` can be part of a KV key: NATS subjects (and so KV keys) have no empty
/// tokens, so a name ending with `.` or holding `..` cannot be stored on this engine.
pub(crate) fn kv_safe(name: &str) -> bool {
    !name.ends_with('.') && !name.contains("..")
}

/// `invalid_name` for a name [`kv_safe`] refuses.
pub(crate) fn check_kv_safe(what: &'static str, name: &str) -> Result<()> {
    if kv_safe(name) {
        Ok(())
    } else {
        Err(BrokerError::InvalidName {
            what,
            name: name.chars().take(120).collect(),
            reason: "on the NATS engine a name cannot end with '.' or hold '..'",
        })
    }
}

/// The KV key of a topic's settings (KV keys may hold `.`, `_` and `-`).
pub(crate) fn topic_key(topic: &str) -> String {
    format!("{TOPIC_KEY}{topic}")
}

/// The topic of a settings key.
pub(crate) fn topic_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(TOPIC_KEY)
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let ok = (1..=32).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(BrokerError::InvalidArgument {
                field: "nats.prefix",
                reason: format!("{prefix:?} must be 1 to 32 of A-Z, a-z, 0-9, '_' and '-'"),
            });
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What every stream of this prefix starts with.
    pub(crate) fn stream_prefix(&self) -> String {
        format!("{}_t_", self.prefix)
    }

    pub(crate) fn meta_bucket(&self) -> String {
        format!("{}_meta", self.prefix)
    }

    pub(crate) fn leases_bucket(&self) -> String {
        format!("{}_leases", self.prefix)
    }

    /// The stream of a topic's partition.
    pub(crate) fn stream(&self, topic: &str, partition: u32) -> String {
        format!("{}{}_{partition}", self.stream_prefix(), escape(topic))
    }

    /// The subject of a topic's partition.
    pub(crate) fn subject(&self, topic: &str, partition: u32) -> String {
        format!("{}.t.{}.{partition}", self.prefix, escape(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_distinct() {
        let n = Names::new("w").unwrap();
        let all = ["a.b", "a_b", "a__b", "a_db", "a.db", "a_d.b"];
        let mut streams: Vec<String> = all.iter().map(|t| n.stream(t, 0)).collect();
        streams.sort();
        streams.dedup();
        assert_eq!(streams.len(), all.len());
        assert_eq!(n.stream("orders.created", 3), "w_t_orders_dcreated_3");
        assert_eq!(n.subject("orders.created", 3), "w.t.orders_dcreated.3");
        assert!(Names::new("bad.prefix").is_err());
        assert!(Names::new("").is_err());
        assert_eq!(topic_of_key(&topic_key("a.b")), Some("a.b"));
        assert!(kv_safe("a.b") && kv_safe("a_b-c") && !kv_safe("a.") && !kv_safe("a..b"));
        assert_eq!(
            check_kv_safe("topic", "a.").unwrap_err().code(),
            "invalid_name"
        );
    }
}
