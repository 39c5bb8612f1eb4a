//! Subscriptions: create, describe, list, delete; stream members (join, heartbeat, leave,
//! fetch, commit, reset); shared deliveries (receive, ack, nack, extend, terminate); dead
//! letters and redrive.

use std::time::Duration;

use crate::extract::Json;
use axum::extract::State;
use axum::http::StatusCode;
use wharf_broker::{Committed, FetchRequest, Position, ReadRequest, ReceiveRequest};

use crate::auth::{Caller, Scope};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::state::AppState;
use crate::wire::{
    AckRequest, AckResponse, CommitRequest, DeadLetterQuery, DeliveryList, DeliveryOut,
    ExtendRequest, FetchRequestIn, JoinRequest, MembershipOut, MessageList, MessageOut,
    NackRequest, OffsetList, OffsetOut, ReadResponse, ReceiveRequestIn, RedriveRequest,
    RedriveResponse, ResetRequest, SubscriptionList, SubscriptionOut, SubscriptionSettings,
    TerminateRequest,
};

type TopicSub = PathParams<(String, String)>;

/// Lists a topic's subscriptions.
#[utoipa::path(get, path = "/v1/topics/{topic}/subscriptions", tag = "subscriptions",
    params(("topic" = String, Path, description = "Topic name")),
    responses((status = 200, description = "By name", body = SubscriptionList)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(topic): PathParams<String>,
) -> ApiResult<Json<SubscriptionList>> {
    if !caller.sees(&topic) {
        caller.require(Scope::Consume, &topic)?;
    }
    let subs = s.engine.list_subscriptions(&topic).await?;
    Ok(Json(SubscriptionList {
        subscriptions: subs.into_iter().map(SubscriptionOut::from).collect(),
    }))
}

/// Creates a subscription (idempotent with the same settings).
#[utoipa::path(put, path = "/v1/topics/{topic}/subscriptions/{sub}", tag = "subscriptions",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = SubscriptionSettings,
    responses((status = 200, description = "The subscription", body = SubscriptionOut)))]
pub(crate) async fn put(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<SubscriptionSettings>,
) -> ApiResult<Json<SubscriptionOut>> {
    caller.require(Scope::Admin, &topic)?;
    let config = body.to_config()?;
    let created = s.engine.create_subscription(&topic, &sub, config).await?;
    s.push.poke();
    Ok(Json(created.into()))
}

/// A subscription's settings, progress and members.
#[utoipa::path(get, path = "/v1/topics/{topic}/subscriptions/{sub}", tag = "subscriptions",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    responses((status = 200, description = "The subscription", body = SubscriptionOut)))]
pub(crate) async fn get(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
) -> ApiResult<Json<SubscriptionOut>> {
    if !caller.sees(&topic) {
        caller.require(Scope::Consume, &topic)?;
    }
    Ok(Json(
        s.engine.describe_subscription(&topic, &sub).await?.into(),
    ))
}

/// Deletes a subscription and its state.
#[utoipa::path(delete, path = "/v1/topics/{topic}/subscriptions/{sub}", tag = "subscriptions",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    responses((status = 204, description = "Deleted")))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
) -> ApiResult<StatusCode> {
    caller.require(Scope::Admin, &topic)?;
    s.engine.delete_subscription(&topic, &sub).await?;
    s.push.poke();
    Ok(StatusCode::NO_CONTENT)
}

// ---- stream -------------------------------------------------------------------------------

/// Joins a stream subscription; the group rebalances.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/members", tag = "stream",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = JoinRequest,
    responses((status = 200, description = "This member's assignment", body = MembershipOut)))]
pub(crate) async fn join(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<JoinRequest>,
) -> ApiResult<Json<MembershipOut>> {
    caller.require(Scope::Consume, &topic)?;
    let m = s
        .engine
        .join(&topic, &sub, body.member_id.as_deref())
        .await?;
    Ok(Json(m.into()))
}

/// Keeps a member alive; answers its current assignment.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/members/{member}/heartbeat",
    tag = "stream",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name"),
           ("member" = String, Path, description = "Member id")),
    responses((status = 200, description = "The member's assignment", body = MembershipOut)))]
pub(crate) async fn heartbeat(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub, member)): PathParams<(String, String, String)>,
) -> ApiResult<Json<MembershipOut>> {
    caller.require(Scope::Consume, &topic)?;
    Ok(Json(
        s.engine.heartbeat(&topic, &sub, &member).await?.into(),
    ))
}

/// Leaves the group.
#[utoipa::path(delete, path = "/v1/topics/{topic}/subscriptions/{sub}/members/{member}",
    tag = "stream",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name"),
           ("member" = String, Path, description = "Member id")),
    responses((status = 204, description = "Left")))]
pub(crate) async fn leave(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub, member)): PathParams<(String, String, String)>,
) -> ApiResult<StatusCode> {
    caller.require(Scope::Consume, &topic)?;
    s.engine.leave(&topic, &sub, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Messages from the member's partitions; waits up to `wait_ms` if none.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/fetch", tag = "stream",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = FetchRequestIn,
    responses((status = 200, description = "Messages", body = MessageList)))]
pub(crate) async fn fetch(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<FetchRequestIn>,
) -> ApiResult<Json<MessageList>> {
    caller.require(Scope::Consume, &topic)?;
    let max_bytes = body.max_bytes.unwrap_or(1024 * 1024);
    if max_bytes == 0 {
        return Err(ApiError::invalid("max_bytes", "must be at least 1"));
    }
    let request = FetchRequest {
        max_messages: s.count("max_messages", body.max_messages, 100)?,
        max_bytes: max_bytes as usize,
        wait: s.wait(body.wait_ms)?,
    };
    let messages = s
        .unless_shutdown(s.engine.fetch(&topic, &sub, &body.member_id, request))
        .await?;
    let bytes: usize = messages.iter().map(|m| m.value.len()).sum();
    s.metrics
        .delivered(&topic, &sub, messages.len() as u64, bytes as u64);
    let encoding = body.encoding.unwrap_or_default();
    Ok(Json(MessageList {
        messages: messages
            .into_iter()
            .map(|m| MessageOut::new(m, encoding))
            .collect(),
    }))
}

/// Commits offsets (next to consume) of partitions the member owns; durable on return.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/commit", tag = "stream",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = CommitRequest,
    responses((status = 200, description = "Offsets in force", body = OffsetList)))]
pub(crate) async fn commit(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<CommitRequest>,
) -> ApiResult<Json<OffsetList>> {
    caller.require(Scope::Consume, &topic)?;
    let offsets = body
        .offsets
        .iter()
        .map(|o| Committed {
            partition: o.partition,
            offset: o.offset,
        })
        .collect();
    let done = s
        .engine
        .commit(&topic, &sub, &body.member_id, offsets)
        .await?;
    Ok(Json(offsets_out(done)))
}

fn offsets_out(c: Vec<Committed>) -> OffsetList {
    OffsetList {
        offsets: c
            .into_iter()
            .map(|c| OffsetOut {
                partition: c.partition,
                offset: c.offset,
            })
            .collect(),
    }
}

/// Moves a stream subscription's committed offsets (replay or skip).
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/reset", tag = "stream",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = ResetRequest,
    responses((status = 200, description = "Offsets in force", body = OffsetList)))]
pub(crate) async fn reset(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<ResetRequest>,
) -> ApiResult<Json<OffsetList>> {
    caller.require(Scope::Admin, &topic)?;
    let to = body.to_reset()?;
    Ok(Json(offsets_out(s.engine.reset(&topic, &sub, to).await?)))
}

// ---- shared -------------------------------------------------------------------------------

/// Receives up to `max` messages under a lease; waits up to `wait_ms` if none.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/receive", tag = "shared",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = ReceiveRequestIn,
    responses((status = 200, description = "Deliveries", body = DeliveryList)))]
pub(crate) async fn receive(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<ReceiveRequestIn>,
) -> ApiResult<Json<DeliveryList>> {
    Ok(Json(do_receive(&s, &caller, &topic, &sub, body).await?))
}

pub(crate) async fn do_receive(
    s: &AppState,
    caller: &Caller,
    topic: &str,
    sub: &str,
    body: ReceiveRequestIn,
) -> ApiResult<DeliveryList> {
    caller.require(Scope::Consume, topic)?;
    let request = ReceiveRequest {
        member: body.member,
        max: s.count("max", body.max, 1)?,
        lease: body.lease_ms.map(Duration::from_millis),
        wait: s.wait(body.wait_ms)?,
    };
    let deliveries = s
        .unless_shutdown(s.engine.receive(topic, sub, request))
        .await?;
    let bytes: usize = deliveries.iter().map(|d| d.message.value.len()).sum();
    s.metrics
        .delivered(topic, sub, deliveries.len() as u64, bytes as u64);
    let encoding = body.encoding.unwrap_or_default();
    Ok(DeliveryList {
        deliveries: deliveries
            .into_iter()
            .map(|d| DeliveryOut::new(d, encoding))
            .collect(),
    })
}

fn check_ack_ids(ids: &[String]) -> ApiResult<()> {
    if ids.is_empty() || ids.len() > 1000 {
        return Err(ApiError::invalid("ack_ids", "give 1..=1000 ack ids"));
    }
    Ok(())
}

/// What to do with deliveries.
pub(crate) enum Settle {
    Ack(AckRequest),
    Nack(NackRequest),
    Extend(ExtendRequest),
    Terminate(TerminateRequest),
}

impl Settle {
    /// What the broker would refuse as bad input before touching any delivery: 1..=1000 ack
    /// ids, a terminate reason of at most 1024 bytes.
    pub(crate) fn check(&self) -> ApiResult<()> {
        match self {
            Self::Ack(b) => check_ack_ids(&b.ack_ids),
            Self::Nack(b) => check_ack_ids(&b.ack_ids),
            Self::Extend(b) => check_ack_ids(&b.ack_ids),
            Self::Terminate(b) => {
                check_ack_ids(&b.ack_ids)?;
                if b.reason.as_ref().is_some_and(|r| r.len() > 1024) {
                    return Err(ApiError::invalid("reason", "at most 1024 bytes"));
                }
                Ok(())
            }
        }
    }

    /// The ack ids it names.
    pub(crate) fn ack_ids(&self) -> &[String] {
        match self {
            Self::Ack(b) => &b.ack_ids,
            Self::Nack(b) => &b.ack_ids,
            Self::Extend(b) => &b.ack_ids,
            Self::Terminate(b) => &b.ack_ids,
        }
    }

    /// The ack ids it names, owned.
    pub(crate) fn into_ack_ids(self) -> Vec<String> {
        match self {
            Self::Ack(b) => b.ack_ids,
            Self::Nack(b) => b.ack_ids,
            Self::Extend(b) => b.ack_ids,
            Self::Terminate(b) => b.ack_ids,
        }
    }
}

pub(crate) async fn do_settle(
    s: &AppState,
    caller: &Caller,
    topic: &str,
    sub: &str,
    settle: Settle,
) -> ApiResult<AckResponse> {
    Ok(AckResponse::new(
        settle_outcomes(s, caller, topic, sub, &settle).await?,
    ))
}

/// Settles deliveries (REST and gRPC): per-`ack_id` outcomes.
pub(crate) async fn settle_outcomes(
    s: &AppState,
    caller: &Caller,
    topic: &str,
    sub: &str,
    settle: &Settle,
) -> ApiResult<Vec<wharf_broker::AckOutcome>> {
    caller.require(Scope::Consume, topic)?;
    settle.check()?;
    let e = &s.engine;
    let outcomes = match settle {
        Settle::Ack(b) => e.ack(topic, sub, &b.ack_ids).await?,
        Settle::Nack(b) => e.nack(topic, sub, &b.ack_ids, b.delay_ms).await?,
        Settle::Extend(b) => e.extend(topic, sub, &b.ack_ids, b.lease_ms).await?,
        Settle::Terminate(b) => {
            let reason = b.reason.as_deref().unwrap_or("terminated by the consumer");
            e.terminate(topic, sub, &b.ack_ids, reason).await?
        }
    };
    Ok(outcomes)
}

/// Acknowledges deliveries: done, never delivered again.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/ack", tag = "shared",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = AckRequest,
    responses((status = 200, description = "Per ack id: null or an error code", body = AckResponse)))]
pub(crate) async fn ack(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<AckRequest>,
) -> ApiResult<Json<AckResponse>> {
    Ok(Json(
        do_settle(&s, &caller, &topic, &sub, Settle::Ack(body)).await?,
    ))
}

/// Gives deliveries back, to be delivered again after `delay_ms` or the backoff.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/nack", tag = "shared",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = NackRequest,
    responses((status = 200, description = "Per ack id: null or an error code", body = AckResponse)))]
pub(crate) async fn nack(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<NackRequest>,
) -> ApiResult<Json<AckResponse>> {
    Ok(Json(
        do_settle(&s, &caller, &topic, &sub, Settle::Nack(body)).await?,
    ))
}

/// Extends the leases of deliveries to `lease_ms` from now.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/extend", tag = "shared",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = ExtendRequest,
    responses((status = 200, description = "Per ack id: null or an error code", body = AckResponse)))]
pub(crate) async fn extend(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<ExtendRequest>,
) -> ApiResult<Json<AckResponse>> {
    Ok(Json(
        do_settle(&s, &caller, &topic, &sub, Settle::Extend(body)).await?,
    ))
}

/// Sends deliveries straight to the dead-letter topic.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/terminate", tag = "shared",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = TerminateRequest,
    responses((status = 200, description = "Per ack id: null or an error code", body = AckResponse)))]
pub(crate) async fn terminate(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<TerminateRequest>,
) -> ApiResult<Json<AckResponse>> {
    Ok(Json(
        do_settle(&s, &caller, &topic, &sub, Settle::Terminate(body)).await?,
    ))
}

// ---- dead letters -------------------------------------------------------------------------

/// Lists the subscription's dead letters (topic `wharf.dlq.{topic}.{sub}`).
#[utoipa::path(get, path = "/v1/topics/{topic}/subscriptions/{sub}/dead-letters",
    tag = "shared",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name"), DeadLetterQuery),
    responses((status = 200, description = "Dead letters with their wharf-dlq-* headers", body = ReadResponse)))]
pub(crate) async fn dead_letters(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    QueryParams(q): QueryParams<DeadLetterQuery>,
) -> ApiResult<Json<ReadResponse>> {
    Ok(Json(do_dead_letters(&s, &caller, &topic, &sub, q).await?))
}

pub(crate) async fn do_dead_letters(
    s: &AppState,
    caller: &Caller,
    topic: &str,
    sub: &str,
    q: DeadLetterQuery,
) -> ApiResult<ReadResponse> {
    let r = read_dead_letters(s, caller, topic, sub, q.offset, ("limit", q.limit)).await?;
    Ok(ReadResponse::new(r, q.encoding.unwrap_or_default()))
}

/// Reads a subscription's dead letters from `offset` (REST and gRPC).
pub(crate) async fn read_dead_letters(
    s: &AppState,
    caller: &Caller,
    topic: &str,
    sub: &str,
    offset: Option<u64>,
    (limit_field, limit): (&str, Option<u32>),
) -> ApiResult<wharf_broker::ReadResult> {
    caller.require(Scope::Consume, topic)?;
    let request = ReadRequest {
        partition: 0,
        from: offset.map_or(Position::Earliest, Position::Offset),
        max_messages: s.count(limit_field, limit, 100)?,
        max_bytes: 16 * 1024 * 1024,
        wait: Duration::ZERO,
    };
    Ok(s.engine.dead_letters(topic, sub, request).await?)
}

/// Puts dead-lettered messages back into this subscription only.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscriptions/{sub}/redrive", tag = "shared",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name")),
    request_body = RedriveRequest,
    responses((status = 200, description = "How many", body = RedriveResponse)))]
pub(crate) async fn redrive(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): TopicSub,
    JsonBody(body): JsonBody<RedriveRequest>,
) -> ApiResult<Json<RedriveResponse>> {
    Ok(Json(do_redrive(&s, &caller, &topic, &sub, body).await?))
}

pub(crate) async fn do_redrive(
    s: &AppState,
    caller: &Caller,
    topic: &str,
    sub: &str,
    body: RedriveRequest,
) -> ApiResult<RedriveResponse> {
    Ok(RedriveResponse {
        redriven: redrive_checked(s, caller, topic, sub, body.max).await?,
    })
}

/// Redrives up to `max` (default and at most 100000) dead letters (REST and gRPC).
pub(crate) async fn redrive_checked(
    s: &AppState,
    caller: &Caller,
    topic: &str,
    sub: &str,
    max: Option<u32>,
) -> ApiResult<u64> {
    caller.require(Scope::Admin, topic)?;
    let max = max.unwrap_or(100_000);
    if max == 0 || max > 100_000 {
        return Err(ApiError::invalid("max", "must be within 1..=100000"));
    }
    Ok(s.engine.redrive(topic, sub, max as usize).await?)
}
