//! The log's error types.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why bytes could not be decoded. Produced by the decoders in [`crate::format`]; never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the structure needs.
        needed: u64,
        /// Bytes that were there.
        available: u64,
    },
    /// The magic number does not match.
    #[error("bad magic number")]
    BadMagic,
    /// A format version this code does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// The stored checksum does not match the bytes.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The checksum found in the data.
        stored: u32,
        /// The checksum of the data as read.
        computed: u32,
    },
    /// A field holds a value that cannot be right.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

impl FormatError {
    pub(crate) fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            detail: detail.into(),
        }
    }
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the log was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Data on disk that the log cannot accept and cannot safely truncate (for example damage
    /// inside a sealed segment, whose records were acknowledged).
    #[error("corrupt log data in {} at byte {position}: {source}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in the file.
        position: u64,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// An earlier write or fsync failed, so the log refuses writes until it is reopened (and
    /// recovery has re-established what is on disk). Reads keep working.
    #[error("the log is poisoned and refuses writes until reopened: {cause}")]
    Poisoned {
        /// The failure that poisoned the log.
        cause: Arc<str>,
    },
    /// The log is closed (or closing).
    #[error("the log is closed")]
    Closed,
    /// A read asked for an offset the log no longer (or does not yet) hold.
    #[error("offset {requested} is out of range: the log holds [{start}, {end})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// The first offset still held.
        start: u64,
        /// One past the last readable offset.
        end: u64,
    },
    /// An append with no records.
    #[error("a batch needs at least one record")]
    EmptyBatch,
    /// An append whose encoded batch exceeds the configured limit.
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge {
        /// Encoded size of the batch.
        size: u64,
        /// The configured limit ([`crate::LogConfig::max_batch_bytes`]).
        limit: u64,
    },
    /// A configuration value out of range.
    #[error("invalid log config `{key}`: {reason}")]
    InvalidConfig {
        /// The configuration key.
        key: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// Another process (or log instance) has the directory open.
    #[error("the log directory {} is in use by another process", dir.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// True for errors caused by the storage device (I/O failure, full disk, poisoned log),
    /// as opposed to bad input or a closed log.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Corrupt { .. } | Error::Poisoned { .. }
        )
    }
}

/// The log's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
