//! Topics and their messages: create, describe, list, delete; publish; read and replay.

use crate::extract::Json;
use axum::extract::State;
use axum::http::StatusCode;
use wharf_broker::{BrokerError, Position, PublishOptions, ReadRequest, TopicConfig};

use crate::auth::{Caller, Scope};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParams, QueryParams, RawBody};
use crate::state::AppState;
use crate::trace::RequestTrace;
use crate::wire::{
    FromPosition, PublishRequest, PublishResponse, PublishedOut, ReadQuery, ReadResponse,
    TopicList, TopicOut, TopicSettings, parse_time,
};

/// Lists the topics the caller can see.
#[utoipa::path(get, path = "/v1/topics", tag = "topics",
    responses((status = 200, description = "The topics, by name", body = TopicList)))]
pub(crate) async fn list_topics(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<TopicList>> {
    let topics = s.engine.list_topics().await?;
    Ok(Json(TopicList {
        topics: topics
            .into_iter()
            .filter(|t| caller.sees(&t.name))
            .map(TopicOut::from)
            .collect(),
    }))
}

/// Creates a topic (idempotent with the same settings; `409 topic_exists` otherwise).
#[utoipa::path(put, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name: [a-z0-9][a-z0-9._-]{0,99}")),
    request_body(content = TopicSettings, description = "Settings; `{}` or no body for defaults"),
    responses((status = 200, description = "The topic", body = TopicOut)))]
pub(crate) async fn put_topic(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(topic): PathParams<String>,
    JsonBody(body): JsonBody<TopicSettings>,
) -> ApiResult<Json<TopicOut>> {
    caller.require(Scope::Admin, &topic)?;
    let config = topic_config(&s, &body)?;
    Ok(Json(s.engine.create_topic(&topic, config).await?.into()))
}

/// A topic's config from its settings, within this server's limits: an unset
/// `max_message_bytes` is the topic default capped at `limits.max_message_bytes`; a set one
/// above that limit is refused.
pub(crate) fn topic_config(s: &AppState, settings: &TopicSettings) -> ApiResult<TopicConfig> {
    let mut config = settings.to_config()?;
    let limit = s.config.limits.max_message_bytes;
    match settings.max_message_bytes {
        None => config.max_message_bytes = config.max_message_bytes.min(limit),
        Some(max) => limit_topic_message_size(s, max)?,
    }
    Ok(config)
}

fn limit_topic_message_size(s: &AppState, max: u64) -> ApiResult<()> {
    let limit = s.config.limits.max_message_bytes;
    if max > limit {
        return Err(ApiError::limit(
            format!("max_message_bytes {max}"),
            "limits.max_message_bytes",
            limit,
        ));
    }
    Ok(())
}

/// A topic's settings and positions.
#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses((status = 200, description = "The topic", body = TopicOut)))]
pub(crate) async fn get_topic(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(topic): PathParams<String>,
) -> ApiResult<Json<TopicOut>> {
    if !caller.sees(&topic) {
        caller.require(Scope::Consume, &topic)?;
    }
    Ok(Json(s.engine.describe_topic(&topic).await?.into()))
}

/// Deletes a topic with its messages and subscriptions.
#[utoipa::path(delete, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, description = "Topic name")),
    responses((status = 204, description = "Deleted")))]
pub(crate) async fn delete_topic(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(topic): PathParams<String>,
) -> ApiResult<StatusCode> {
    caller.require(Scope::Admin, &topic)?;
    s.engine.delete_topic(&topic).await?;
    s.push.poke();
    Ok(StatusCode::NO_CONTENT)
}

/// Publishes one message or a batch; answers where each landed, once durable.
#[utoipa::path(post, path = "/v1/topics/{topic}/messages", tag = "messages",
    params(("topic" = String, Path, description = "Topic name")),
    request_body(content = PublishRequest, description = "One message, or `{\"messages\": [...]}`"),
    responses((status = 200, description = "Durable under the topic's mode", body = PublishResponse)))]
pub(crate) async fn publish(
    State(s): State<AppState>,
    caller: Caller,
    axum::Extension(trace): axum::Extension<RequestTrace>,
    PathParams(topic): PathParams<String>,
    RawBody(body): RawBody,
) -> ApiResult<Json<PublishResponse>> {
    caller.require(Scope::Publish, &topic)?;
    Ok(Json(do_publish(&s, &trace, &topic, body, false).await?))
}

/// Checks a publish body against the limits, adds trace context, and publishes. With
/// `create_queue`, an unknown topic is created as a queue (topic + shared subscription of the
/// same name, defaults) first.
pub(crate) async fn do_publish(
    s: &AppState,
    trace: &RequestTrace,
    topic: &str,
    body: bytes::Bytes,
    create_queue: bool,
) -> ApiResult<PublishResponse> {
    let request = PublishRequest::from_slice(&body)?;
    let messages = request
        .into_messages()
        .into_iter()
        .enumerate()
        .map(|(i, (m, encoding))| m.into_message(encoding, i))
        .collect::<ApiResult<Vec<_>>>()?;
    let results = publish_messages(s, trace, topic, messages, create_queue).await?;
    Ok(PublishResponse {
        results: results.into_iter().map(PublishedOut::from).collect(),
    })
}

/// Publishes decoded messages (REST and gRPC): checks them against the server's limits, adds
/// the request's trace context to those without one, publishes, and counts them. With
/// `create_queue`, an unknown topic is created as a queue (topic + shared subscription of the
/// same name, defaults) first.
pub(crate) async fn publish_messages(
    s: &AppState,
    trace: &RequestTrace,
    topic: &str,
    messages: Vec<wharf_broker::Message>,
    create_queue: bool,
) -> ApiResult<Vec<wharf_broker::Published>> {
    let limits = &s.config.limits;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "must hold at least one message",
        ));
    }
    if messages.len() > limits.max_batch_messages {
        return Err(ApiError::limit(
            format!("a batch of {} messages", messages.len()),
            "limits.max_batch_messages",
            limits.max_batch_messages,
        ));
    }
    let mut bytes = 0u64;
    for (i, msg) in messages.iter().enumerate() {
        if msg.headers.len() > limits.max_headers {
            return Err(ApiError::limit(
                format!("messages[{i}] with {} headers", msg.headers.len()),
                "limits.max_headers",
                limits.max_headers,
            ));
        }
        let header_bytes: usize = msg.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > limits.max_header_bytes {
            return Err(ApiError::limit(
                format!("messages[{i}] with {header_bytes} bytes of headers"),
                "limits.max_header_bytes",
                limits.max_header_bytes,
            ));
        }
        if let Some((k, _)) = msg
            .headers
            .iter()
            .find(|(k, _)| k.is_empty() || k.len() > 256)
        {
            return Err(ApiError::invalid(
                &format!("messages[{i}].headers"),
                format!("header name {k:?} must be 1..=256 bytes"),
            ));
        }
        let size = msg.key.as_ref().map_or(0, |k| k.len()) + msg.value.len() + header_bytes;
        if size as u64 > limits.max_message_bytes {
            return Err(ApiError::new(
                "message_too_large",
                format!(
                    "messages[{i}] is {size} bytes; the server accepts at most {} \
                     (config key limits.max_message_bytes)",
                    limits.max_message_bytes
                ),
            ));
        }
        bytes += (msg.key.as_ref().map_or(0, |k| k.len()) + msg.value.len()) as u64;
    }
    // Bad input changed nothing so far. An unknown queue is created now.
    if create_queue
        && let Err(BrokerError::TopicNotFound(_)) = s.engine.max_message_bytes(topic).await
    {
        create_queue_with_defaults(s, topic).await?;
    }
    // The trace context goes with every message that has none of its own and has room for
    // it under the topic's limit; the engine stores it once per publish, not per message.
    let options = PublishOptions {
        shared_headers: vec![("traceparent".to_owned(), trace.span.to_string())],
    };
    let results = s.engine.publish_with(topic, messages, options).await?;
    let stored = results.iter().filter(|r| !r.duplicate).count() as u64;
    let stored_bytes = if stored == results.len() as u64 {
        bytes
    } else {
        bytes * stored / (results.len() as u64).max(1)
    };
    s.metrics.published(topic, stored, stored_bytes);
    Ok(results)
}

/// Creates the topic and the shared subscription of a queue, with defaults.
pub(crate) async fn create_queue_with_defaults(s: &AppState, name: &str) -> ApiResult<()> {
    let topic = topic_config(s, &TopicSettings::default())?;
    match s.engine.create_topic(name, topic).await {
        Ok(_) | Err(BrokerError::TopicExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = crate::wire::QueueSubscriptionSettings::default()
        .to_settings()
        .to_config()?;
    match s.engine.create_subscription(name, name, sub).await {
        Ok(_) | Err(BrokerError::SubscriptionExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads a partition from an offset, a time, or the earliest/latest message; waits up to
/// `wait_ms` for new ones.
#[utoipa::path(get, path = "/v1/topics/{topic}/messages", tag = "messages",
    params(("topic" = String, Path, description = "Topic name"), ReadQuery),
    responses((status = 200, description = "Messages in offset order", body = ReadResponse)))]
pub(crate) async fn read(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(topic): PathParams<String>,
    QueryParams(q): QueryParams<ReadQuery>,
) -> ApiResult<Json<ReadResponse>> {
    caller.require(Scope::Consume, &topic)?;
    let request = read_request(&s, &q)?;
    let encoding = q.encoding.unwrap_or_default();
    let r = s.unless_shutdown(s.engine.read(&topic, request)).await?;
    let bytes: usize = r.messages.iter().map(|m| m.value.len()).sum();
    s.metrics
        .delivered(&topic, "", r.messages.len() as u64, bytes as u64);
    Ok(Json(ReadResponse::new(r, encoding)))
}

pub(crate) fn read_request(s: &AppState, q: &ReadQuery) -> ApiResult<ReadRequest> {
    let from = match (q.offset, &q.from_time, q.from) {
        (Some(o), None, None) => Position::Offset(o),
        (None, Some(t), None) => Position::Timestamp(parse_time("from_time", t)?),
        (None, None, None | Some(FromPosition::Earliest)) => Position::Earliest,
        (None, None, Some(FromPosition::Latest)) => Position::Latest,
        _ => {
            return Err(ApiError::invalid(
                "offset",
                "give at most one of offset, from_time and from",
            ));
        }
    };
    let max_bytes = q.max_bytes.unwrap_or(1024 * 1024);
    if max_bytes == 0 {
        return Err(ApiError::invalid("max_bytes", "must be at least 1"));
    }
    Ok(ReadRequest {
        partition: q.partition.unwrap_or(0),
        from,
        max_messages: s.count("limit", q.limit, 100)?,
        max_bytes: max_bytes as usize,
        wait: s.wait(q.wait_ms)?,
    })
}
