//! Apps: the registry (`/v1/apps`) and invocation (`ANY /v1/invoke/{app}/{path}`, and gRPC
//! calls to services that are not Wharf's own). The resiliency stack is `wharf-invoke`'s;
//! this module reads requests, checks scopes, passes trace context, and maps errors.

use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::Value;
use wharf_invoke::{AppConfig, AppStatus, InstanceStatus, Registration};

use crate::auth::{Caller, Scope};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, JsonBody, PathParams};
use crate::state::AppState;
use crate::trace::RequestTrace;

/// The metadata key that routes a gRPC call to an app by name.
pub(crate) const APP_METADATA: &str = "wharf-app";

/// An instance registration.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstanceIn {
    /// `http://host:port`.
    address: String,
    /// Dropped unless registered again within this many milliseconds (100..=86400000);
    /// absent: until deleted.
    #[serde(default)]
    ttl_ms: Option<u64>,
    /// Speak HTTP/2 (h2c) to it for plain HTTP calls too (gRPC always uses HTTP/2).
    #[serde(default)]
    http2: bool,
}

/// Seeing an app (its policy and instance addresses) takes `admin` or `invoke` on it.
fn may_read(caller: &Caller, app: &str) -> ApiResult<()> {
    if caller.allows(Scope::Invoke, app) {
        Ok(())
    } else {
        caller.require(Scope::Admin, app)
    }
}

fn sees(caller: &Caller, app: &str) -> bool {
    caller.allows(Scope::Invoke, app) || caller.allows(Scope::Admin, app)
}

/// Every app with its instances, their health and the breaker state.
#[utoipa::path(get, path = "/v1/apps", tag = "apps",
    responses((status = 200, description = "Apps", body = Object)))]
pub(crate) async fn list(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let apps: Vec<AppStatus> = s
        .invoker
        .list()
        .into_iter()
        .filter(|a| sees(&caller, &a.name))
        .collect();
    Ok(Json(serde_json::json!({ "apps": apps })))
}

/// One app.
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses((status = 200, description = "The app", body = Object)))]
pub(crate) async fn get(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(app): PathParams<String>,
) -> ApiResult<Json<AppStatus>> {
    may_read(&caller, &app)?;
    Ok(Json(s.invoker.get(&app)?))
}

/// Creates an app or replaces its policy, gRPC services and static instances (registered
/// instances and their health are kept).
#[utoipa::path(put, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    request_body = Object,
    responses((status = 200, description = "The app", body = Object)))]
pub(crate) async fn put(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(app): PathParams<String>,
    JsonBody(config): JsonBody<AppConfig>,
) -> ApiResult<Json<AppStatus>> {
    caller.require(Scope::Admin, &app)?;
    Ok(Json(s.invoker.put_app(&app, config)?))
}

/// Deletes an app and its instances.
#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses((status = 204, description = "Deleted")))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(app): PathParams<String>,
) -> ApiResult<StatusCode> {
    caller.require(Scope::Admin, &app)?;
    if s.invoker.delete_app(&app) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(wharf_invoke::InvokeError::UnknownApp(app).into())
    }
}

/// Registers an instance, or renews its TTL (the heartbeat is the same call). Creates the app
/// with the default policy if it does not exist.
#[utoipa::path(put, path = "/v1/apps/{app}/instances/{id}", tag = "apps",
    params(("app" = String, Path, description = "App name"),
           ("id" = String, Path, description = "Instance id")),
    request_body = InstanceIn,
    responses((status = 200, description = "The instance", body = Object)))]
pub(crate) async fn put_instance(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((app, id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<InstanceIn>,
) -> ApiResult<Json<InstanceStatus>> {
    caller.require(Scope::Admin, &app)?;
    let registration = Registration {
        address: body.address,
        ttl: body.ttl_ms.map(std::time::Duration::from_millis),
        http2: body.http2,
    };
    Ok(Json(s.invoker.register(&app, &id, registration)?))
}

/// Removes an instance.
#[utoipa::path(delete, path = "/v1/apps/{app}/instances/{id}", tag = "apps",
    params(("app" = String, Path, description = "App name"),
           ("id" = String, Path, description = "Instance id")),
    responses((status = 204, description = "Removed")))]
pub(crate) async fn delete_instance(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((app, id)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require(Scope::Admin, &app)?;
    if s.invoker.deregister(&app, &id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            "app_not_found",
            format!("app {app:?} has no instance {id:?}"),
        ))
    }
}

/// Calls an app: the method, the path after `/v1/invoke/{app}`, the query, the headers and
/// the body (streamed) go to one of its instances through the resiliency stack, and its
/// response comes back as it is. Errors of the stack are Wharf's JSON errors.
#[utoipa::path(post, path = "/v1/invoke/{app}/{path}", tag = "apps",
    params(("app" = String, Path, description = "App name"),
           ("path" = String, Path, description = "Path to call on the app")),
    responses((status = 200, description = "The app's response, whatever its status")))]
pub(crate) async fn invoke(
    State(s): State<AppState>,
    caller: Caller,
    axum::Extension(trace): axum::Extension<RequestTrace>,
    req: Request,
) -> Response {
    let (mut parts, body) = req.into_parts();
    // `/v1/invoke/{app}/{path...}`: the app is the third segment; the rest goes on.
    let path = parts.uri.path();
    let rest = path.strip_prefix("/v1/invoke/").unwrap_or_default();
    let (app, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let app = app.to_owned();
    if let Err(e) = caller.require(Scope::Invoke, &app) {
        return e.into_response();
    }
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("/{tail}?{q}"),
        None => format!("/{tail}"),
    };
    parts.uri = match path_and_query.parse() {
        Ok(u) => u,
        Err(e) => return ApiError::invalid("path", e).into_response(),
    };
    forward(&s, &app, parts, body, trace, false).await
}

/// Routes a gRPC request that is not for Wharf's own services: to the app named by the
/// `wharf-app` metadata, or to the app that registered the call's service. `None` if no app
/// claims it (the caller answers UNIMPLEMENTED).
pub(crate) async fn grpc_passthrough(s: &AppState, req: Request) -> Result<Response, Request> {
    let service = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let app = match req
        .headers()
        .get(APP_METADATA)
        .and_then(|v| v.to_str().ok())
    {
        Some(app) => app.to_owned(),
        None => match s.invoker.app_for_grpc_service(&service) {
            Some(app) => app,
            None => return Err(req),
        },
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let trace = RequestTrace::from_header(
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let caller = match s.tokens.authenticate(header.as_deref()) {
        Ok(c) => c,
        Err(e) => return Ok(grpc_error(e)),
    };
    if let Err(e) = caller.require(Scope::Invoke, &app) {
        return Ok(grpc_error(e));
    }
    let (parts, body) = req.into_parts();
    Ok(forward(s, &app, parts, body, trace, true).await)
}

async fn forward(
    s: &AppState,
    app: &str,
    mut parts: axum::http::request::Parts,
    body: AxumBody,
    trace: RequestTrace,
    grpc: bool,
) -> Response {
    // A Wharf token is for Wharf, not for the app.
    if s.tokens.enabled() {
        parts.headers.remove(header::AUTHORIZATION);
    }
    parts.headers.remove(APP_METADATA);
    if let Some(v) = trace.span.header_value() {
        parts.headers.insert("traceparent", v);
    }
    let body = body.map_err(Into::into).boxed_unsync();
    let request = axum::http::Request::from_parts(parts, body);
    let start = std::time::Instant::now();
    let kind = if grpc { "grpc" } else { "http" };
    match s.invoker.call(app, request).await {
        Ok(resp) => {
            // gRPC: the status of a trailers-only answer (an error); a streamed answer's status
            // is in its trailers, counted as "ok".
            let grpc_status = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(|v| match v {
                    "0" => "ok",
                    "4" => "grpc_deadline_exceeded",
                    "8" => "grpc_resource_exhausted",
                    "13" => "grpc_internal",
                    "14" => "grpc_unavailable",
                    _ => "grpc_error",
                });
            let class = match (grpc, grpc_status, resp.status().as_u16()) {
                (true, Some(s), _) => s,
                (true, None, 200) => "ok",
                (_, _, status) => crate::metrics::Metrics::status_class(status),
            };
            s.metrics.invoked(app, kind, class, start.elapsed());
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, AxumBody::new(body))
        }
        Err(e) => {
            // An unknown name is not a series of its own (callers choose it).
            let label = if matches!(e, wharf_invoke::InvokeError::UnknownApp(_)) {
                "(unknown)"
            } else {
                app
            };
            s.metrics.invoked(label, kind, e.code(), start.elapsed());
            let e = ApiError::from(e);
            if grpc {
                grpc_error(e)
            } else {
                e.into_response()
            }
        }
    }
}

/// A trailers-only gRPC answer carrying the error (same mapping as Wharf's own gRPC API).
fn grpc_error(e: ApiError) -> Response {
    let status = crate::grpc::status(e);
    let (parts, ()) = status.into_http::<()>().into_parts();
    Response::from_parts(parts, AxumBody::empty())
}
