//! The gRPC API (`wharf.v1`, see `wharf-proto`) on the REST listener, and gRPC-Web on the same
//! routes (tonic-web), so browsers need no proxy.
//!
//! Every handler goes through [`Grpc::call`]: bearer token from the `authorization` metadata,
//! `traceparent` continued like on REST (returned in the response metadata), a `request` span,
//! the same request metrics as REST (method `GRPC`, route = the gRPC path), and errors mapped
//! in one place ([`status`]) to a gRPC code plus the REST API's stable code in the
//! `wharf-error-code` metadata and a `google.rpc.ErrorInfo` detail.
//!
//! The handlers reuse the REST layer's conversions and checks (settings → broker configs,
//! limits, publish), so both surfaces keep the same semantics.

use std::future::Future;
use std::time::Instant;

use axum::Router;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::Instrument;
use wharf_proto::v1;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::trace::RequestTrace;

mod admin;
mod apps;
mod consumers;
pub(crate) mod convert;
mod messages;

/// The shared state of every gRPC service.
#[derive(Clone, Debug)]
pub(crate) struct Grpc {
    pub(crate) state: AppState,
}

/// What a handler knows about its call.
pub(crate) struct Ctx {
    pub(crate) s: AppState,
    pub(crate) caller: Caller,
    pub(crate) trace: RequestTrace,
}

impl Grpc {
    /// Runs a handler: authenticates, traces, measures, and maps its error.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        route: &'static str,
        request: Request<Req>,
        handler: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Ctx, Req) -> Fut,
        Fut: Future<Output = ApiResult<Resp>>,
    {
        let start = Instant::now();
        let trace = RequestTrace::from_header(
            request
                .metadata()
                .get("traceparent")
                .and_then(|v| v.to_str().ok()),
        );
        let span = crate::trace::request_span("GRPC", route, &trace);
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        let s = self.state.clone();
        // The error becomes a `Status` inside the span, so the warning `status` logs for a
        // server-side failure carries the request's fields like every other log line.
        let result = async move {
            let result = async {
                let caller = s.tokens.authenticate(authorization.as_deref())?;
                handler(Ctx { s, caller, trace }, request.into_inner()).await
            }
            .await;
            result.map_err(|e| (e.status.as_u16(), status(e)))
        }
        .instrument(span)
        .await;
        let http_status = match &result {
            Ok(_) => 200,
            Err((code, _)) => *code,
        };
        self.state
            .metrics
            .request("GRPC", route, http_status, start.elapsed());
        // Never indexed by HPACK, like the REST header (`TraceParent::header_value`).
        let traceparent = MetadataValue::try_from(trace.span.header().as_str())
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        match result {
            Ok(body) => {
                let mut response = Response::new(body);
                if let Some(v) = traceparent {
                    response.metadata_mut().insert("traceparent", v);
                }
                Ok(response)
            }
            Err((_, mut status)) => {
                if let Some(v) = traceparent {
                    status.metadata_mut().insert("traceparent", v);
                }
                Err(status)
            }
        }
    }
}

/// The gRPC code of an API error (its stable code decides; the HTTP status otherwise).
pub(crate) fn code_of(e: &ApiError) -> Code {
    match e.code {
        "topic_exists" | "subscription_exists" => Code::AlreadyExists,
        "unknown_member" | "not_assigned" | "lease_expired" | "wrong_kind" => {
            Code::FailedPrecondition
        }
        "offset_out_of_range" => Code::OutOfRange,
        "request_timeout" | "deadline_exceeded" | "upstream_timeout" => Code::DeadlineExceeded,
        "rate_limited" | "concurrency_limited" => Code::ResourceExhausted,
        _ => match e.status.as_u16() {
            400 | 413 | 415 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            405 | 501 => Code::Unimplemented,
            409 => Code::Aborted,
            429 => Code::ResourceExhausted,
            502 | 503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Internal,
        },
    }
}

/// An API error as a gRPC status: the code, the message, `wharf-error-code` and
/// `retry-after` metadata, and an `ErrorInfo` (+ `RetryInfo`) detail.
pub(crate) fn status(e: ApiError) -> Status {
    if e.status.is_server_error() {
        tracing::warn!(code = e.code, message = %e.message, "gRPC request failed");
    }
    let mut metadata = MetadataMap::new();
    metadata.insert(
        wharf_proto::ERROR_CODE_KEY,
        MetadataValue::from_static(e.code),
    );
    let mut details = ErrorDetails::with_error_info(
        e.code,
        wharf_proto::ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    if let Some(secs) = e.retry_after {
        metadata.insert(wharf_proto::RETRY_AFTER_KEY, MetadataValue::from(secs));
        details.set_retry_info(Some(std::time::Duration::from_secs(secs)));
    }
    Status::with_error_details_and_metadata(code_of(&e), e.message, details, metadata)
}

/// The gRPC services as axum routes (`/wharf.v1.Service/{method}`), each also answering
/// gRPC-Web.
pub(crate) fn routes(state: AppState) -> Router {
    let max = state.config.limits.max_request_bytes;
    let g = Grpc { state };
    let router = Router::new();
    let router = add(
        router,
        v1::topics_server::TopicsServer::new(g.clone()).max_decoding_message_size(max),
    );
    let router = add(
        router,
        v1::messages_server::MessagesServer::new(g.clone()).max_decoding_message_size(max),
    );
    let router = add(
        router,
        v1::subscriptions_server::SubscriptionsServer::new(g.clone())
            .max_decoding_message_size(max),
    );
    let router = add(
        router,
        v1::stream_consumer_server::StreamConsumerServer::new(g.clone())
            .max_decoding_message_size(max),
    );
    let router = add(
        router,
        v1::shared_consumer_server::SharedConsumerServer::new(g.clone())
            .max_decoding_message_size(max),
    );
    let router = add(
        router,
        v1::apps_server::AppsServer::new(g.clone()).max_decoding_message_size(max),
    );
    add(
        router,
        v1::operations_server::OperationsServer::new(g).max_decoding_message_size(max),
    )
}

fn add<S>(router: Router, service: S) -> Router
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let web = tower::Layer::layer(&tonic_web::GrpcWebLayer::new(), service);
    router.route_service(&format!("/{}/{{*method}}", S::NAME), web)
}

/// The CORS headers gRPC-Web clients send and read.
pub(crate) const WEB_REQUEST_HEADERS: &[&str] = &["x-grpc-web", "x-user-agent", "grpc-timeout"];
/// The response headers gRPC-Web clients must be able to read.
pub(crate) const WEB_EXPOSED_HEADERS: &[&str] = &[
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "wharf-error-code",
];

/// A header value from a static string (for the CORS lists).
pub(crate) fn header_names(names: &[&'static str]) -> Vec<http::HeaderName> {
    names
        .iter()
        .map(|n| http::HeaderName::from_static(n))
        .collect()
}
