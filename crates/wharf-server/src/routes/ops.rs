//! Operations: liveness, readiness, metrics, stats and the OpenAPI document.

use crate::extract::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::wire::{HealthOut, StatsOut, SubscriptionKind, SubscriptionStats, TopicStats};

fn health(s: &AppState, ready: bool, reason: Option<String>) -> HealthOut {
    HealthOut {
        status: if ready { "ok" } else { "unavailable" }.into(),
        reason,
        engine: s.engine.name().into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = HealthOut)))]
pub(crate) async fn healthz(State(s): State<AppState>) -> Json<HealthOut> {
    Json(health(&s, true, None))
}

/// Readiness: the engine accepts writes and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = HealthOut),
              (status = 503, description = "Not ready (storage poisoned or full, or shutting down)", body = HealthOut)))]
pub(crate) async fn readyz(State(s): State<AppState>) -> Response {
    let h = s.engine.health();
    let (ready, reason) = if s.shutdown.is_cancelled() {
        (false, Some("shutting down".to_owned()))
    } else {
        (h.writable, h.reason)
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, Json(health(&s, ready, reason))).into_response();
    if !ready {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
    }
    response
}

/// Prometheus metrics (text format). Needs the `metrics` or `admin` scope when auth is on.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require_metrics()?;
    let text = s.metrics.render(&*s.engine, &s.invoker.list()).await;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Every topic and subscription at a glance. Needs the `metrics` or `admin` scope when auth
/// is on.
#[utoipa::path(get, path = "/v1/stats", tag = "operations",
    responses((status = 200, description = "Stats", body = StatsOut)))]
pub(crate) async fn stats(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<StatsOut>> {
    caller.require_metrics()?;
    Ok(Json(collect_stats(&s).await?))
}

/// Every topic and subscription at a glance (REST and gRPC).
pub(crate) async fn collect_stats(s: &AppState) -> ApiResult<StatsOut> {
    let mut topics = Vec::new();
    for t in s.engine.list_topics().await? {
        let subs = s
            .engine
            .list_subscriptions(&t.name)
            .await
            .unwrap_or_default();
        topics.push(TopicStats {
            partitions: t.config.partitions,
            messages: t
                .partitions
                .iter()
                .map(|p| p.high_watermark.saturating_sub(p.start_offset))
                .sum(),
            subscriptions: subs
                .into_iter()
                .map(|sub| SubscriptionStats {
                    kind: match sub.config {
                        wharf_broker::SubscriptionConfig::Stream(_) => SubscriptionKind::Stream,
                        wharf_broker::SubscriptionConfig::Shared(_) => SubscriptionKind::Shared,
                    },
                    lag: sub.partitions.iter().map(|p| p.lag).sum(),
                    in_flight: sub.in_flight,
                    delayed: sub.delayed,
                    dead_lettered: sub.dead_lettered,
                    members: sub.members.len() as u64,
                    name: sub.name,
                })
                .collect(),
            name: t.name,
        });
    }
    Ok(StatsOut {
        engine: s.engine.name().into(),
        writable: s.engine.health().writable,
        topics,
    })
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(&s.config),
    )
        .into_response()
}
