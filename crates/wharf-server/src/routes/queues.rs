//! Queues: sugar for a topic plus one shared subscription of the same name.

use crate::extract::Json;
use axum::extract::State;
use axum::http::StatusCode;
use wharf_broker::BrokerError;

use super::subscriptions::{Settle, do_dead_letters, do_receive, do_redrive, do_settle};
use super::topics::{do_publish, topic_config};
use crate::auth::{Caller, Scope};
use crate::error::ApiResult;
use crate::extract::{JsonBody, PathParams, QueryParams, RawBody};
use crate::state::AppState;
use crate::trace::RequestTrace;
use crate::wire::{
    AckRequest, AckResponse, DeadLetterQuery, DeliveryList, ExtendRequest, NackRequest,
    PublishRequest, PublishResponse, QueueOut, QueueSettings, ReadResponse, ReceiveRequestIn,
    RedriveRequest, RedriveResponse, TerminateRequest,
};

/// Creates a queue: its topic and its shared subscription (idempotent with the same settings).
#[utoipa::path(put, path = "/v1/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "Queue name (topic and subscription)")),
    request_body = QueueSettings,
    responses((status = 200, description = "The queue", body = QueueOut)))]
pub(crate) async fn put(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<QueueSettings>,
) -> ApiResult<Json<QueueOut>> {
    let (topic, sub) = create_queue(
        &s,
        &caller,
        &queue,
        &body.topic.unwrap_or_default(),
        &body.subscription.unwrap_or_default().to_settings(),
    )
    .await?;
    Ok(Json(QueueOut {
        name: queue,
        topic: topic.into(),
        subscription: sub.into(),
    }))
}

/// A queue's topic and subscription.
#[utoipa::path(get, path = "/v1/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "The queue", body = QueueOut)))]
pub(crate) async fn get(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
) -> ApiResult<Json<QueueOut>> {
    if !caller.sees(&queue) {
        caller.require(Scope::Consume, &queue)?;
    }
    let topic = s.engine.describe_topic(&queue).await?;
    let sub = s.engine.describe_subscription(&queue, &queue).await?;
    Ok(Json(QueueOut {
        name: queue,
        topic: topic.into(),
        subscription: sub.into(),
    }))
}

/// Deletes a queue (its topic, messages and subscriptions).
#[utoipa::path(delete, path = "/v1/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 204, description = "Deleted")))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
) -> ApiResult<StatusCode> {
    caller.require(Scope::Admin, &queue)?;
    // Only a queue: a topic without the same-named shared subscription is not one.
    match s.engine.describe_subscription(&queue, &queue).await {
        Ok(_) => {}
        Err(BrokerError::SubscriptionNotFound { .. }) => {
            return Err(BrokerError::SubscriptionNotFound {
                topic: queue.clone(),
                subscription: queue,
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    }
    s.engine.delete_topic(&queue).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends one message or a batch; an unknown queue is created with defaults.
#[utoipa::path(post, path = "/v1/queues/{queue}/messages", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    request_body(content = PublishRequest, description = "One message, or `{\"messages\": [...]}`"),
    responses((status = 200, description = "Durable", body = PublishResponse)))]
pub(crate) async fn send(
    State(s): State<AppState>,
    caller: Caller,
    axum::Extension(trace): axum::Extension<RequestTrace>,
    PathParams(queue): PathParams<String>,
    RawBody(body): RawBody,
) -> ApiResult<Json<PublishResponse>> {
    caller.require(Scope::Publish, &queue)?;
    Ok(Json(do_publish(&s, &trace, &queue, body, true).await?))
}

/// Receives up to `max` messages under a lease.
#[utoipa::path(post, path = "/v1/queues/{queue}/receive", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = ReceiveRequestIn,
    responses((status = 200, description = "Deliveries", body = DeliveryList)))]
pub(crate) async fn receive(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<ReceiveRequestIn>,
) -> ApiResult<Json<DeliveryList>> {
    Ok(Json(do_receive(&s, &caller, &queue, &queue, body).await?))
}

/// Acknowledges deliveries.
#[utoipa::path(post, path = "/v1/queues/{queue}/ack", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = AckRequest,
    responses((status = 200, description = "Per ack id", body = AckResponse)))]
pub(crate) async fn ack(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<AckRequest>,
) -> ApiResult<Json<AckResponse>> {
    Ok(Json(
        do_settle(&s, &caller, &queue, &queue, Settle::Ack(body)).await?,
    ))
}

/// Gives deliveries back for a later retry.
#[utoipa::path(post, path = "/v1/queues/{queue}/nack", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = NackRequest,
    responses((status = 200, description = "Per ack id", body = AckResponse)))]
pub(crate) async fn nack(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<NackRequest>,
) -> ApiResult<Json<AckResponse>> {
    Ok(Json(
        do_settle(&s, &caller, &queue, &queue, Settle::Nack(body)).await?,
    ))
}

/// Extends leases.
#[utoipa::path(post, path = "/v1/queues/{queue}/extend", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = ExtendRequest,
    responses((status = 200, description = "Per ack id", body = AckResponse)))]
pub(crate) async fn extend(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<ExtendRequest>,
) -> ApiResult<Json<AckResponse>> {
    Ok(Json(
        do_settle(&s, &caller, &queue, &queue, Settle::Extend(body)).await?,
    ))
}

/// Dead-letters deliveries now.
#[utoipa::path(post, path = "/v1/queues/{queue}/terminate", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = TerminateRequest,
    responses((status = 200, description = "Per ack id", body = AckResponse)))]
pub(crate) async fn terminate(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<TerminateRequest>,
) -> ApiResult<Json<AckResponse>> {
    Ok(Json(
        do_settle(&s, &caller, &queue, &queue, Settle::Terminate(body)).await?,
    ))
}

/// Lists the queue's dead letters.
#[utoipa::path(get, path = "/v1/queues/{queue}/dead-letters", tag = "queues",
    params(("queue" = String, Path, description = "Queue name"), DeadLetterQuery),
    responses((status = 200, description = "Dead letters", body = ReadResponse)))]
pub(crate) async fn dead_letters(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    QueryParams(q): QueryParams<DeadLetterQuery>,
) -> ApiResult<Json<ReadResponse>> {
    Ok(Json(do_dead_letters(&s, &caller, &queue, &queue, q).await?))
}

/// Puts dead letters back into the queue.
#[utoipa::path(post, path = "/v1/queues/{queue}/redrive", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = RedriveRequest,
    responses((status = 200, description = "How many", body = RedriveResponse)))]
pub(crate) async fn redrive(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<RedriveRequest>,
) -> ApiResult<Json<RedriveResponse>> {
    Ok(Json(do_redrive(&s, &caller, &queue, &queue, body).await?))
}

/// Creates a queue's topic and shared subscription (REST and gRPC); checks both before
/// creating either, so bad input changes nothing.
pub(crate) async fn create_queue(
    s: &AppState,
    caller: &Caller,
    queue: &str,
    topic: &crate::wire::TopicSettings,
    sub: &crate::wire::SubscriptionSettings,
) -> ApiResult<(wharf_broker::TopicInfo, wharf_broker::SubscriptionInfo)> {
    caller.require(Scope::Admin, queue)?;
    let topic_config = topic_config(s, topic)?;
    let sub_config = sub.to_config()?;
    topic_config.validate()?;
    sub_config.validate()?;
    let topic = s.engine.create_topic(queue, topic_config).await?;
    let sub = s
        .engine
        .create_subscription(queue, queue, sub_config)
        .await?;
    Ok((topic, sub))
}
