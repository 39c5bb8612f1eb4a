//! The one place where errors become HTTP answers: status + `{"code", "message"}`.
//!
//! Every code is stable and listed in [`CODES`] (and in the README); clients branch on the
//! code, people read the message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wharf_broker::BrokerError;

/// The JSON body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable, snake_case (see the README's list).
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// An error on its way to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// Seconds for a `Retry-After` header, if the client should come back later.
    pub retry_after: Option<u64>,
}

/// Every code the server answers with, its HTTP status, and when it happens.
pub const CODES: &[(&str, u16, &str)] = &[
    (
        "invalid_name",
        400,
        "a topic or subscription name breaks the naming rule",
    ),
    (
        "invalid_argument",
        400,
        "a field is out of range or inconsistent",
    ),
    (
        "invalid_json",
        400,
        "the body is not JSON of the expected shape",
    ),
    (
        "invalid_query",
        400,
        "the query string has an unknown or malformed parameter",
    ),
    (
        "limit_exceeded",
        400,
        "a request exceeds a configured limit (batch size, headers, wait)",
    ),
    ("bad_ack_id", 400, "an ack_id the broker never issued"),
    (
        "unauthenticated",
        401,
        "no bearer token, or one the server does not know",
    ),
    ("forbidden", 403, "the token lacks the scope for this name"),
    ("not_found", 404, "no such route"),
    ("topic_not_found", 404, "no such topic"),
    ("subscription_not_found", 404, "no such subscription"),
    (
        "partition_not_found",
        404,
        "the topic has no such partition",
    ),
    (
        "method_not_allowed",
        405,
        "the route exists but not with this method",
    ),
    (
        "request_timeout",
        408,
        "the client sent its body too slowly",
    ),
    ("topic_exists", 409, "the topic exists with other settings"),
    (
        "subscription_exists",
        409,
        "the subscription exists with other settings",
    ),
    (
        "unknown_member",
        409,
        "the stream member left or timed out: join again",
    ),
    (
        "not_assigned",
        409,
        "the stream member does not own that partition now: heartbeat",
    ),
    (
        "lease_expired",
        409,
        "the delivery's lease ended or it was delivered again since",
    ),
    (
        "wrong_kind",
        409,
        "a stream operation on a shared subscription or the reverse",
    ),
    (
        "payload_too_large",
        413,
        "the request body exceeds limits.max_request_bytes",
    ),
    (
        "message_too_large",
        413,
        "a message exceeds the topic's or the server's size limit",
    ),
    (
        "unsupported_media_type",
        415,
        "a body that is not application/json",
    ),
    (
        "offset_out_of_range",
        416,
        "an offset the partition does not hold",
    ),
    (
        "internal",
        500,
        "a bug: the server found its own state inconsistent",
    ),
    (
        "not_supported",
        501,
        "a feature this engine or version does not support yet",
    ),
    (
        "storage_unavailable",
        503,
        "writes fail (full disk, failed fsync); reads still work",
    ),
    (
        "engine_unavailable",
        503,
        "the external engine cannot be reached; retry",
    ),
    (
        "too_many_connections",
        503,
        "limits.max_connections reached; retry",
    ),
    ("shutting_down", 503, "the server is shutting down"),
    ("app_not_found", 404, "no app of that name is registered"),
    (
        "no_instances",
        503,
        "the app has no live instance (none registered, or none heart-beating)",
    ),
    (
        "deadline_exceeded",
        504,
        "the call's deadline passed (before it was sent, or while waiting for the app)",
    ),
    (
        "rate_limited",
        429,
        "over the app's rate limit; retry later",
    ),
    (
        "concurrency_limited",
        429,
        "the app already has its maximum of calls in flight; retry later",
    ),
    (
        "breaker_open",
        503,
        "every instance of the app is ejected after failures; failing fast until a probe",
    ),
    (
        "upstream_timeout",
        504,
        "the app's instance did not answer within the per-try timeout",
    ),
    (
        "upstream_unreachable",
        502,
        "cannot connect to the app's instance",
    ),
    (
        "upstream_failed",
        502,
        "the connection to the app's instance failed during the call",
    ),
    ("bad_request_body", 400, "reading the request body failed"),
];

impl ApiError {
    /// An error with this code; the status comes from [`CODES`].
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        let status = CODES
            .iter()
            .find(|(c, _, _)| *c == code)
            .and_then(|(_, s, _)| StatusCode::from_u16(*s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `invalid_argument` naming the field.
    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::new("invalid_argument", format!("invalid {field}: {reason}"))
    }

    /// `limit_exceeded` naming the limit's config key.
    pub fn limit(what: impl std::fmt::Display, key: &str, limit: impl std::fmt::Display) -> Self {
        Self::new(
            "limit_exceeded",
            format!("{what} exceeds the limit of {limit} (config key {key})"),
        )
    }

    /// Adds a `Retry-After`.
    #[must_use]
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let message = e.to_string();
        match &e {
            // The broker says "invalid_argument" (field "kind") for a stream operation on a
            // shared subscription or the reverse; give it its own code.
            BrokerError::InvalidArgument { field, .. } if *field == "kind" => {
                ApiError::new("wrong_kind", message)
            }
            BrokerError::StorageUnavailable(_) => ApiError::new(e.code(), message).retry_after(5),
            BrokerError::EngineUnavailable(_) => ApiError::new(e.code(), message).retry_after(1),
            BrokerError::Closed => ApiError::new("shutting_down", message).retry_after(1),
            _ => ApiError::new(e.code(), message),
        }
    }
}

impl From<wharf_invoke::InvokeError> for ApiError {
    fn from(e: wharf_invoke::InvokeError) -> Self {
        let retry_after = e
            .retry_after()
            .map(|d| d.as_secs_f64().ceil().max(1.0) as u64);
        let message = format!("{e} (layer: {})", e.layer().as_str());
        let mut out = ApiError::new(e.code(), message);
        out.retry_after = retry_after;
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        let mut response = (self.status, crate::extract::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wharf\""),
            );
        }
        response
    }
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_broker_code_is_listed() {
        for e in [
            BrokerError::TopicNotFound("t".into()),
            BrokerError::LeaseExpired,
            BrokerError::StorageUnavailable("disk".into()),
            BrokerError::Internal("x".into()),
            BrokerError::BadAckId("x".into()),
        ] {
            let code = e.code();
            assert!(CODES.iter().any(|(c, _, _)| *c == code), "{code} missing");
        }
    }

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for (code, status, _) in CODES {
            assert!(seen.insert(*code), "{code} twice");
            assert!(code.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert!(StatusCode::from_u16(*status).is_ok());
        }
    }

    #[test]
    fn statuses_follow_the_table() {
        assert_eq!(
            ApiError::from(BrokerError::LeaseExpired).status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::from(BrokerError::StorageUnavailable("x".into())).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ApiError::new("nonexistent_code", "").status, 500);
    }
}
