//! The router: every REST route, the layers around them (trace context, metrics, auth, body
//! limits, CORS), the JSON 404/405 answers, the gRPC fallback, and the OpenAPI document.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use serde_json::{Value, json};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;
use utoipa::OpenApi;

use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;
use crate::trace::RequestTrace;

pub(crate) mod apps;
pub(crate) mod events;
pub(crate) mod ops;
pub(crate) mod queues;
pub(crate) mod subscriptions;
pub(crate) mod topics;

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    use subscriptions as subs;
    let limits = &state.config.limits;
    let api = Router::new()
        .route("/v1/topics", get(topics::list_topics))
        .route(
            "/v1/topics/{topic}",
            put(topics::put_topic)
                .get(topics::get_topic)
                .delete(topics::delete_topic),
        )
        .route(
            "/v1/topics/{topic}/messages",
            post(topics::publish).get(topics::read),
        )
        .route("/v1/topics/{topic}/events", get(events::topic_events))
        .route("/v1/topics/{topic}/subscriptions", get(subs::list))
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}",
            put(subs::put).get(subs::get).delete(subs::delete),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/members",
            post(subs::join),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/members/{member}",
            axum::routing::delete(subs::leave),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/members/{member}/heartbeat",
            post(subs::heartbeat),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/fetch",
            post(subs::fetch),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/commit",
            post(subs::commit),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/reset",
            post(subs::reset),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/receive",
            post(subs::receive),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/ack",
            post(subs::ack),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/nack",
            post(subs::nack),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/extend",
            post(subs::extend),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/terminate",
            post(subs::terminate),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/dead-letters",
            get(subs::dead_letters),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/redrive",
            post(subs::redrive),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{sub}/events",
            get(events::subscription_events),
        )
        .route(
            "/v1/queues/{queue}",
            put(queues::put).get(queues::get).delete(queues::delete),
        )
        .route("/v1/queues/{queue}/messages", post(queues::send))
        .route("/v1/queues/{queue}/receive", post(queues::receive))
        .route("/v1/queues/{queue}/ack", post(queues::ack))
        .route("/v1/queues/{queue}/nack", post(queues::nack))
        .route("/v1/queues/{queue}/extend", post(queues::extend))
        .route("/v1/queues/{queue}/terminate", post(queues::terminate))
        .route("/v1/queues/{queue}/dead-letters", get(queues::dead_letters))
        .route("/v1/queues/{queue}/redrive", post(queues::redrive))
        .route("/v1/queues/{queue}/events", get(events::queue_events))
        .route("/v1/apps", get(apps::list))
        .route(
            "/v1/apps/{app}",
            put(apps::put).get(apps::get).delete(apps::delete),
        )
        .route(
            "/v1/apps/{app}/instances/{id}",
            put(apps::put_instance).delete(apps::delete_instance),
        )
        .route("/v1/invoke/{app}", any(apps::invoke))
        .route("/v1/invoke/{app}/", any(apps::invoke))
        .route("/v1/invoke/{app}/{*path}", any(apps::invoke))
        .route("/v1/stats", get(ops::stats))
        .route("/metrics", get(ops::metrics))
        .route_layer(from_fn_with_state(state.clone(), authenticate));
    let open = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi));
    let app = api
        .merge(open)
        .route_layer(from_fn_with_state(state.clone(), observe))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_request_bytes))
        .layer(tower_http::timeout::RequestBodyDeadlineLayer::new(
            Duration::from_millis(limits.body_read_timeout_ms),
        ));
    let cors = cors(&state.config);
    // gRPC and gRPC-Web on the same listener, outside the REST layers (its streams outlive
    // body deadlines; tonic enforces its own message size limit).
    let mut app = app
        .with_state(state.clone())
        .merge(crate::grpc::routes(state.clone()))
        // gRPC calls for other services go to the apps that serve them, outside the REST
        // layers (their streams outlive body deadlines and size limits).
        .layer(from_fn_with_state(state, grpc_apps));
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app
}

/// Sends gRPC calls that are not for Wharf's own `wharf.v1` services to apps (`wharf-invoke`).
async fn grpc_apps(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct == "application/grpc" || ct.starts_with("application/grpc+"));
    if !grpc || req.uri().path().starts_with("/wharf.v1.") {
        return next.run(req).await;
    }
    match apps::grpc_passthrough(&s, req).await {
        Ok(response) => response,
        Err(req) => next.run(req).await,
    }
}

fn cors(config: &Config) -> Option<CorsLayer> {
    let origins = &config.cors.allowed_origins;
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers(
                [
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::HeaderName::from_static("last-event-id"),
                    header::HeaderName::from_static("traceparent"),
                    header::HeaderName::from_static("tracestate"),
                ]
                .into_iter()
                .chain(crate::grpc::header_names(crate::grpc::WEB_REQUEST_HEADERS))
                .collect::<Vec<_>>(),
            )
            .expose_headers(
                [
                    header::RETRY_AFTER,
                    header::HeaderName::from_static("traceparent"),
                ]
                .into_iter()
                .chain(crate::grpc::header_names(crate::grpc::WEB_EXPOSED_HEADERS))
                .collect::<Vec<_>>(),
            )
            .max_age(Duration::from_secs(600)),
    )
}

/// Trace context, a span per request, and request metrics.
async fn observe(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let trace = RequestTrace::from_header(
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    req.extensions_mut().insert(trace);
    let span = crate::trace::request_span(method.as_str(), &route, &trace);
    let mut response = next.run(req).instrument(span).await;
    let status = response.status().as_u16();
    s.metrics
        .request(method_label(&method), &route, status, start.elapsed());
    if let Some(v) = trace.span.header_value() {
        response.headers_mut().insert("traceparent", v);
    }
    response
}

/// Resolves the bearer token into a [`crate::auth::Caller`] for the handlers.
async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    match s.tokens.authenticate(header.as_deref()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Unknown routes: JSON 404, or a gRPC `UNIMPLEMENTED` for gRPC requests to a service this
/// server does not have (the invocation proxy will route those to apps).
async fn fallback(req: Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        let mut r = Response::new(axum::body::Body::empty());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("12"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("no%20such%20gRPC%20service%20here"),
        );
        return r;
    }
    ApiError::new(
        "not_found",
        format!("no route {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::new(
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Wharf",
        description = "Durable queues and event streams over HTTP. Errors are `{code, message}` with stable codes.",
        license(name = "Apache-2.0")
    ),
    paths(
        topics::list_topics, topics::put_topic, topics::get_topic, topics::delete_topic,
        topics::publish, topics::read,
        events::topic_events, events::subscription_events, events::queue_events,
        subscriptions::list, subscriptions::put, subscriptions::get, subscriptions::delete,
        subscriptions::join, subscriptions::heartbeat, subscriptions::leave,
        subscriptions::fetch, subscriptions::commit, subscriptions::reset,
        subscriptions::receive, subscriptions::ack, subscriptions::nack,
        subscriptions::extend, subscriptions::terminate,
        subscriptions::dead_letters, subscriptions::redrive,
        queues::put, queues::get, queues::delete, queues::send, queues::receive,
        queues::ack, queues::nack, queues::extend, queues::terminate,
        queues::dead_letters, queues::redrive,
        apps::list, apps::get, apps::put, apps::delete, apps::put_instance,
        apps::delete_instance, apps::invoke,
        ops::healthz, ops::readyz, ops::metrics, ops::stats, ops::openapi,
    ),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "topics", description = "Named, partitioned, durable logs"),
        (name = "messages", description = "Publish; read and replay"),
        (name = "subscriptions", description = "Named cursors over a topic: stream or shared"),
        (name = "stream", description = "Consumer groups: members, fetch, commit, reset"),
        (name = "shared", description = "Queue semantics: receive under a lease, ack, nack, dead letters"),
        (name = "queues", description = "A topic plus one shared subscription of the same name"),
        (name = "events", description = "Server-Sent Events for live consumption"),
        (name = "apps", description = "The app registry and service invocation through the resiliency stack"),
        (name = "operations", description = "Health, readiness, metrics, stats"),
    )
)]
struct ApiDoc;

/// Error statuses any operation may answer (beyond its own).
const ERROR_STATUSES: &[&str] = &[
    "400", "401", "403", "404", "408", "409", "413", "415", "416", "501", "503",
];

/// The OpenAPI document, with the shared error answers, the bearer scheme and this server's
/// limits filled in (so a generated client, or a fuzzer, knows e.g. the longest `wait_ms`).
pub fn openapi_json(config: &Config) -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    *field(&mut doc, &["servers"]) = json!([{ "url": "/" }]);
    *field(&mut doc, &["components", "responses", "Error"]) = json!({
        "description": "An error: see the code list in the README",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
    });
    *field(&mut doc, &["components", "securitySchemes", "bearer"]) =
        json!({ "type": "http", "scheme": "bearer" });
    *field(&mut doc, &["security"]) = json!([{}, { "bearer": [] }]);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                for status in ERROR_STATUSES {
                    responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| json!({ "$ref": "#/components/responses/Error" }));
                }
            }
        }
    }
    let l = &config.limits;
    let caps = [
        ("wait_ms", l.max_wait_ms),
        ("limit", l.max_read_messages as u64),
        ("max", l.max_read_messages as u64),
        ("max_messages", l.max_read_messages as u64),
    ];
    cap_fields(&mut doc, &caps);
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_owned())
}

/// The value at `path`, creating objects on the way (replacing non-objects).
fn field<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    let mut cur = v;
    for key in path {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Value::Object(map) = cur else {
            unreachable!("made an object above")
        };
        cur = map.entry((*key).to_owned()).or_insert(Value::Null);
    }
    cur
}

/// Sets `maximum` on every property or parameter named like a capped field.
fn cap_fields(v: &mut Value, caps: &[(&str, u64)]) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for (name, max) in caps {
                    if let Some(schema) = props.get_mut(*name) {
                        set_maximum(schema, *max);
                    }
                }
            }
            let is_param = map.get("in").is_some_and(|i| i == "query");
            if is_param {
                let name = map.get("name").and_then(Value::as_str).map(str::to_owned);
                if let (Some(name), Some(schema)) = (name, map.get_mut("schema"))
                    && let Some((_, max)) = caps.iter().find(|(n, _)| *n == name)
                {
                    set_maximum(schema, *max);
                }
            }
            for child in map.values_mut() {
                cap_fields(child, caps);
            }
        }
        Value::Array(items) => {
            for child in items {
                cap_fields(child, caps);
            }
        }
        _ => {}
    }
}

/// Sets `maximum` on a schema, or on the non-null branch of an `Option`'s `oneOf`.
fn set_maximum(schema: &mut Value, max: u64) {
    if let Some(branches) = schema.get_mut("oneOf").and_then(Value::as_array_mut) {
        for b in branches {
            if b.get("type").is_some_and(|t| t != "null") {
                *field(b, &["maximum"]) = json!(max);
            }
        }
    } else if schema.is_object() {
        *field(schema, &["maximum"]) = json!(max);
    }
}

/// The method label of request metrics: the standard methods by name, any other (a client
/// may send any token) as `OTHER`, so clients cannot create series without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
