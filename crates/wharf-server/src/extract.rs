//! Extractors whose rejections are API errors (`{code, message}`), never plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. An empty body is read as `{}`; the content type is not required (curl's
/// default form type is accepted), but a declared non-JSON type such as
/// `multipart/form-data` is refused with `415 unsupported_media_type`.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<bytes::Bytes, ApiError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        let ok = essence.is_empty()
            || essence == "application/json"
            || essence.ends_with("+json")
            || essence == "text/plain"
            || essence == "application/x-www-form-urlencoded"
            || essence == "application/octet-stream";
        if !ok {
            return Err(ApiError::new(
                "unsupported_media_type",
                format!("bodies are JSON; got content-type {essence:?}"),
            ));
        }
    }
    bytes::Bytes::from_request(req, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                return ApiError::new(
                    "payload_too_large",
                    "the request body exceeds limits.max_request_bytes",
                );
            }
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
            while let Some(e) = source {
                if e.is::<tower_http::timeout::TimeoutError>() {
                    return ApiError::new(
                        "request_timeout",
                        "the request body did not arrive within limits.body_read_timeout_ms",
                    );
                }
                source = e.source();
            }
            ApiError::new("invalid_json", format!("cannot read the body: {rejection}"))
        })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::new("invalid_json", format!("invalid body: {e}")))
    }
}

/// The raw body bytes, with the same content-type, size and deadline checks as [`JsonBody`]
/// (for bodies parsed by the handler).
#[derive(Debug, Clone)]
pub struct RawBody(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        body_bytes(req, state).await.map(RawBody)
    }
}

/// Query parameters; unknown or malformed ones are `400 invalid_query`.
#[derive(Debug, Clone)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::new("invalid_query", e.body_text()))
    }
}

/// Path parameters; malformed ones (bad percent-encoding) are `400 invalid_argument`.
#[derive(Debug, Clone)]
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError::new("invalid_argument", e.body_text()))
    }
}

/// A JSON response body, ending with a newline (so `curl` output stays readable).
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        let mut buf = Vec::with_capacity(128);
        match serde_json::to_writer(&mut buf, &self.0) {
            Ok(()) => {
                buf.push(b'\n');
                (
                    [(
                        header::CONTENT_TYPE,
                        axum::http::HeaderValue::from_static("application/json"),
                    )],
                    buf,
                )
                    .into_response()
            }
            Err(e) => ApiError::new("internal", format!("cannot serialise the answer: {e}"))
                .into_response(),
        }
    }
}
