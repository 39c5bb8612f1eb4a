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

/// Headers stored with every record of one append, except the records listed: how the broker
/// gives a whole publish the same trace context without a copy of it per record. They are
/// encoded after each record's own headers, so a stored record cannot tell them apart from
/// its own (the on-disk format does not change).
#[derive(Clone, Copy, Debug, Default)]
pub struct SharedHeaders<'a> {
    /// The headers, in order.
    pub headers: &'a [(String, String)],
    /// Indexes of the records that do not get them, ascending.
    pub except: &'a [usize],
}

impl SharedHeaders<'_> {
    /// No shared headers.
    pub const NONE: SharedHeaders<'static> = SharedHeaders {
        headers: &[],
        except: &[],
    };

    /// Whether record `index` gets the shared headers.
    pub fn applies_to(&self, index: usize) -> bool {
        !self.headers.is_empty() && self.except.binary_search(&index).is_err()
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
