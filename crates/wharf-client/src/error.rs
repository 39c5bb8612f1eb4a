//! [`Error`]: every failure of the client, with the server's stable error code.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

/// What kind of failure an [`Error`] is: the coarse category to branch on. The server's exact
/// reason is [`Error::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No such topic, subscription, partition or route (`topic_not_found`, ...).
    NotFound,
    /// The topic or subscription exists with other settings (`topic_exists`, ...).
    AlreadyExists,
    /// The request was rejected as malformed or out of range (`invalid_name`,
    /// `invalid_argument`, `limit_exceeded`, `message_too_large`, `offset_out_of_range`,
    /// `bad_ack_id`, ...), or the client was given bad options.
    InvalidArgument,
    /// No bearer token, or one the server does not know (`unauthenticated`).
    Unauthenticated,
    /// The token lacks the scope for this name (`forbidden`).
    PermissionDenied,
    /// The request conflicts with the current state (`unknown_member`, `not_assigned`,
    /// `lease_expired`, `wrong_kind`): re-join, heartbeat or receive again.
    Conflict,
    /// The server is out of some resource; retryable only when it says when
    /// ([`Error::retry_after`]).
    ResourceExhausted,
    /// The server cannot serve now (`storage_unavailable`, `shutting_down`,
    /// `too_many_connections`, ...): retry later.
    Unavailable,
    /// A deadline passed (the client's request timeout or the server's `DEADLINE_EXCEEDED`).
    Timeout,
    /// The connection failed or broke (refused, reset, TLS, HTTP/2 errors): retryable.
    Transport,
    /// The server does not support this call (`not_supported`, `UNIMPLEMENTED`).
    Unsupported,
    /// The publisher, consumer or stream this call used has been closed.
    Closed,
    /// The server found its own state inconsistent (`internal`), or answered nonsense.
    Internal,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short lowercase name (`not found`, `timeout`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Conflict => "conflict",
            ErrorKind::ResourceExhausted => "resource exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transport => "transport error",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Closed => "closed",
            ErrorKind::Internal => "internal error",
            ErrorKind::Other => "error",
        }
    }

    /// The kind of a stable Wharf error code (`topic_not_found`, ...), if the code is known.
    pub fn from_code(code: &str) -> Option<ErrorKind> {
        Some(match code {
            "not_found" | "topic_not_found" | "subscription_not_found" | "partition_not_found" => {
                ErrorKind::NotFound
            }
            "topic_exists" | "subscription_exists" => ErrorKind::AlreadyExists,
            "invalid_name"
            | "invalid_argument"
            | "invalid_json"
            | "invalid_query"
            | "limit_exceeded"
            | "bad_ack_id"
            | "payload_too_large"
            | "message_too_large"
            | "unsupported_media_type"
            | "offset_out_of_range"
            | "method_not_allowed" => ErrorKind::InvalidArgument,
            "unauthenticated" => ErrorKind::Unauthenticated,
            "forbidden" => ErrorKind::PermissionDenied,
            "unknown_member" | "not_assigned" | "lease_expired" | "wrong_kind" => {
                ErrorKind::Conflict
            }
            "request_timeout" => ErrorKind::Timeout,
            "internal" => ErrorKind::Internal,
            "not_supported" => ErrorKind::Unsupported,
            "storage_unavailable"
            | "engine_unavailable"
            | "too_many_connections"
            | "shutting_down" => ErrorKind::Unavailable,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every fallible call in this crate.
///
/// Branch on [`kind`](Error::kind) for the category, or on [`code`](Error::code) for the
/// server's stable reason (the codes of the README's error table, carried in the
/// `wharf-error-code` trailing metadata):
///
/// ```
/// use wharf_client::{Error, ErrorKind};
///
/// fn describe(e: &Error) -> &'static str {
///     match (e.kind(), e.code()) {
///         (ErrorKind::NotFound, Some("topic_not_found")) => "create the topic first",
///         (ErrorKind::Conflict, Some("lease_expired")) => "too slow: it will be delivered again",
///         _ if e.is_retryable() => "try again later",
///         _ => "give up",
///     }
/// }
/// # let _ = describe;
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct Error {
    kind: ErrorKind,
    code: Option<String>,
    message: String,
    retry_after: Option<Duration>,
    grpc_code: Option<Code>,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result<T, wharf_client::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of this kind with a message and no server code.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            code: None,
            message: message.into(),
            retry_after: None,
            grpc_code: None,
            source: None,
        }
    }

    /// An error for a stable Wharf code (`lease_expired`, ...) reported outside a status, e.g.
    /// in a per-ack outcome; the kind follows the code.
    pub fn from_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        let kind = ErrorKind::from_code(&code).unwrap_or(ErrorKind::Other);
        Error {
            code: Some(code),
            ..Error::new(kind, message)
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn closed(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Closed, message)
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Timeout, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// The category.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's stable error code (`topic_not_found`, `lease_expired`, ...), if the server
    /// sent one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The human-readable message (the server's, or the client's own).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How long the server asked the client to wait before retrying (`retry-after`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The gRPC status code, if the error came from a gRPC status.
    pub fn grpc_code(&self) -> Option<Code> {
        self.grpc_code
    }

    /// Whether trying the same request again later may work: transport failures, timeouts,
    /// `UNAVAILABLE`, and `RESOURCE_EXHAUSTED` with a `retry-after`. Only safe to act on for
    /// idempotent requests (a publish whose messages carry a `wharf-message-id` is one).
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Transport | ErrorKind::Timeout | ErrorKind::Unavailable => true,
            ErrorKind::ResourceExhausted => self.retry_after.is_some(),
            _ => false,
        }
    }

    fn render(&self) -> String {
        match &self.code {
            Some(code) => format!("{} ({code}): {}", self.kind, self.message),
            None => format!("{}: {}", self.kind, self.message),
        }
    }
}

/// The kind of a gRPC status that carries no Wharf error code.
fn kind_of_grpc(code: Code, has_wharf_code: bool, message: &str) -> ErrorKind {
    match code {
        Code::Ok => ErrorKind::Other,
        // A status the server did not answer (no Wharf code) is the client's transport saying
        // the call broke: reset streams, closed connections, hyper's "operation was canceled".
        Code::Cancelled | Code::Unknown if !has_wharf_code => ErrorKind::Transport,
        Code::Internal if !has_wharf_code && is_transport_message(message) => ErrorKind::Transport,
        Code::Cancelled | Code::Unknown => ErrorKind::Other,
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
        Code::DeadlineExceeded => ErrorKind::Timeout,
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::FailedPrecondition | Code::Aborted => ErrorKind::Conflict,
        Code::Unimplemented => ErrorKind::Unsupported,
        Code::Internal | Code::DataLoss => ErrorKind::Internal,
        Code::Unavailable => ErrorKind::Unavailable,
    }
}

/// Messages tonic gives statuses it makes from HTTP/2 and connection failures.
fn is_transport_message(message: &str) -> bool {
    message.starts_with("h2 protocol error")
        || message.contains("transport error")
        || message.contains("connection")
}

/// Parses `retry-after`: whole seconds (as the server sends), or fractional seconds.
fn parse_retry_after(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let secs = s.parse::<f64>().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let meta = status.metadata();
        let code = meta
            .get(wharf_proto::ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .filter(|c| !c.is_empty());
        let retry_after = meta
            .get(wharf_proto::RETRY_AFTER_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let kind = code
            .as_deref()
            .and_then(ErrorKind::from_code)
            .unwrap_or_else(|| kind_of_grpc(status.code(), code.is_some(), status.message()));
        let message = if status.message().is_empty() {
            format!("gRPC status {:?}", status.code())
        } else {
            status.message().to_owned()
        };
        let grpc_code = Some(status.code());
        Error {
            kind,
            code,
            message,
            retry_after,
            grpc_code,
            source: Some(Arc::new(status)),
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        let mut message = e.to_string();
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Error {
            source: Some(Arc::new(e)),
            ..Error::new(ErrorKind::Transport, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    fn status(code: Code, msg: &str, meta: &[(&'static str, &str)]) -> tonic::Status {
        let mut map = MetadataMap::new();
        for (k, v) in meta {
            map.insert(*k, v.parse().expect("ascii"));
        }
        tonic::Status::with_metadata(code, msg, map)
    }

    #[test]
    fn the_wharf_code_decides_the_kind() {
        let e = Error::from(status(
            Code::NotFound,
            "no topic \"x\"",
            &[("wharf-error-code", "topic_not_found")],
        ));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.code(), Some("topic_not_found"));
        assert_eq!(e.message(), "no topic \"x\"");
        assert_eq!(e.grpc_code(), Some(Code::NotFound));
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "not found (topic_not_found): no topic \"x\"");

        // The code wins over the gRPC status the server chose.
        let e = Error::from(status(
            Code::FailedPrecondition,
            "gone",
            &[("wharf-error-code", "lease_expired")],
        ));
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let e = Error::from(status(
            Code::ResourceExhausted,
            "big",
            &[("wharf-error-code", "message_too_large")],
        ));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(!e.is_retryable());
        let e = Error::from(status(
            Code::AlreadyExists,
            "x",
            &[("wharf-error-code", "topic_exists")],
        ));
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let e = Error::from(status(
            Code::PermissionDenied,
            "x",
            &[("wharf-error-code", "forbidden")],
        ));
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }

    #[test]
    fn unknown_codes_fall_back_to_the_grpc_code() {
        let e = Error::from(status(
            Code::NotFound,
            "x",
            &[("wharf-error-code", "some_future_code")],
        ));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.code(), Some("some_future_code"));
        let e = Error::from(status(Code::Unauthenticated, "who?", &[]));
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert_eq!(e.code(), None);
        assert_eq!(
            Error::from(status(Code::DeadlineExceeded, "", &[])).kind(),
            ErrorKind::Timeout
        );
        assert_eq!(
            Error::from(status(Code::Unimplemented, "", &[])).kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            Error::from(status(Code::Aborted, "", &[])).kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            Error::from(status(
                Code::Internal,
                "bug",
                &[("wharf-error-code", "internal")]
            ))
            .kind(),
            ErrorKind::Internal
        );
    }

    #[test]
    fn transport_failures_are_retryable() {
        let e = Error::from(status(Code::Unknown, "transport error", &[]));
        assert_eq!(e.kind(), ErrorKind::Transport);
        assert!(e.is_retryable());
        let e = Error::from(status(Code::Cancelled, "operation was canceled", &[]));
        assert_eq!(e.kind(), ErrorKind::Transport);
        let e = Error::from(status(
            Code::Internal,
            "h2 protocol error: broken pipe",
            &[],
        ));
        assert_eq!(e.kind(), ErrorKind::Transport);
        assert!(e.is_retryable());
        let e = Error::from(status(Code::Internal, "Missing response message.", &[]));
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(!e.is_retryable());
        let e = Error::from(status(Code::Unavailable, "tcp connect error", &[]));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
    }

    #[test]
    fn retry_after_is_read_and_makes_resource_exhausted_retryable() {
        let e = Error::from(status(
            Code::Unavailable,
            "busy",
            &[("wharf-error-code", "shutting_down"), ("retry-after", "3")],
        ));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.is_retryable());

        let e = Error::from(status(Code::ResourceExhausted, "slow down", &[]));
        assert!(!e.is_retryable());
        let e = Error::from(status(
            Code::ResourceExhausted,
            "slow down",
            &[("retry-after", "0.5")],
        ));
        assert_eq!(e.retry_after(), Some(Duration::from_millis(500)));
        assert!(e.is_retryable());
        let e = Error::from(status(Code::Unavailable, "x", &[("retry-after", "soon")]));
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn per_ack_codes_and_client_errors() {
        let e = Error::from_code("lease_expired", "ack abc");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(e.code(), Some("lease_expired"));
        assert_eq!(
            Error::from_code("bad_ack_id", "").kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(Error::from_code("??", "").kind(), ErrorKind::Other);
        let e = Error::closed("publisher closed");
        assert_eq!(e.kind(), ErrorKind::Closed);
        assert_eq!(e.to_string(), "closed: publisher closed");
        assert!(Error::timeout("t").is_retryable());
    }
}
