//! Records as appended and as read back.

use bytes::Bytes;

/// A record to append. The log assigns its offset and append timestamp.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// Optional key (`None` and an empty key are different).
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Headers, in order; names and values are UTF-8.
    pub headers: Vec<(String, String)>,
}

impl NewRecord {
    /// A record with this value, no key and no headers.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            key: None,
            value: value.into(),
            headers: Vec::new(),
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the partition; dense, starting at 0.
    pub offset: u64,
    /// Append time in milliseconds since the Unix epoch, assigned by the log and never
    /// decreasing within a partition.
    pub timestamp: i64,
    /// The key, if the record has one.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Headers, in the order they were given.
    pub headers: Vec<(String, String)>,
}
