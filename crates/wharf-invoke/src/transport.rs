//! The innermost layer: pooled hyper clients, HTTP/1.1 and HTTP/2 (h2c with prior knowledge:
//! gRPC, and instances registered with `http2`). Streams bodies both ways, trailers included.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::Service;

use crate::body::{Body, ReqBody};
use crate::deadline::{GRPC_TIMEOUT, WHARF_DEADLINE, format_grpc_timeout};
use crate::error::InvokeError;
use crate::stack::{CallInfo, Target};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus Wharf's own.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
    "wharf-idempotent",
];

/// Sends a request to the endpoint its [`Target`] names.
#[derive(Clone)]
pub(crate) struct Transport {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl Transport {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self { http1, http2 }
    }
}

impl Service<http::Request<ReqBody>> for Transport {
    type Response = http::Response<Body>;
    type Error = InvokeError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, InvokeError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), InvokeError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let (Some(target), Some((app, deadline, grpc))) = (
                parts.extensions.remove::<Target>(),
                parts
                    .extensions
                    .get::<CallInfo>()
                    .map(|i| (i.app.clone(), i.deadline, i.grpc)),
            ) else {
                return Err(InvokeError::invalid("request", "no endpoint was chosen"));
            };
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str);
            let mut uri = http::uri::Builder::new();
            if let Some(scheme) = target.address.scheme() {
                uri = uri.scheme(scheme.clone());
            }
            if let Some(authority) = target.address.authority() {
                uri = uri.authority(authority.clone());
            }
            parts.uri = uri
                .path_and_query(path)
                .build()
                .map_err(|e| InvokeError::invalid("path", e.to_string()))?;
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            if grpc {
                // gRPC needs `te: trailers` end to end.
                parts
                    .headers
                    .insert("te", http::HeaderValue::from_static("trailers"));
            }
            // The remaining time travels with the call (the caller's own values are replaced).
            let remaining = deadline.saturating_duration_since(Instant::now());
            let millis = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
            parts
                .headers
                .insert(WHARF_DEADLINE, http::HeaderValue::from(millis));
            parts.headers.remove(GRPC_TIMEOUT);
            if grpc && let Ok(v) = http::HeaderValue::from_str(&format_grpc_timeout(remaining)) {
                parts.headers.insert(GRPC_TIMEOUT, v);
            }
            let http2 = grpc || target.http2;
            parts.version = if http2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            };
            let req = http::Request::from_parts(parts, body.into_body());
            let client = if http2 { &this.http2 } else { &this.http1 };
            match client.request(req).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    for name in HOP_BY_HOP {
                        parts.headers.remove(name);
                    }
                    let body: Body = body.map_err(Into::into).boxed_unsync();
                    Ok(http::Response::from_parts(parts, body))
                }
                Err(e) if e.is_connect() => Err(InvokeError::Connect {
                    app: app.clone(),
                    instance: target.instance,
                    source: Box::new(e),
                }),
                Err(e) => Err(InvokeError::Upstream {
                    app: app.clone(),
                    instance: target.instance,
                    source: Box::new(e),
                }),
            }
        })
    }
}

/// A body of exactly these bytes.
pub(crate) fn full(bytes: Bytes) -> Body {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}
