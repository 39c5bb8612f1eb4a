//! Server-Sent Events: live consumption with plain HTTP (`curl -N`, a browser's EventSource).
//!
//! - `GET /v1/topics/{topic}/events` tails partitions. The first event (`ready`) and every
//!   `message` event carry as id the cursor of every tailed partition (`0:12,1:40`: next
//!   offsets); reconnecting with `Last-Event-ID` resumes exactly after the last event received.
//! - `GET /v1/topics/{topic}/subscriptions/{sub}/events`: on a stream subscription the
//!   connection is a group member (first event `assignment` with its `member_id`); event ids
//!   are cursors of its partitions, and reconnecting with `Last-Event-ID` commits that cursor
//!   first, so the group resumes after the last event received. `auto_commit=true` also
//!   commits what was sent before each fetch. On a shared subscription each event is a delivery
//!   (id = its `ack_id`) to ack through `/ack`; `ack=auto` acks once sent (at most once).
//!   Unacked deliveries of a dropped connection come back when their lease ends, so a
//!   reconnect needs no `Last-Event-ID`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;
use wharf_broker::{
    BrokerError, Committed, Delivery, FetchRequest, Membership, Position, ReadRequest,
    ReceiveRequest, StoredMessage, SubscriptionConfig,
};

use crate::auth::{Caller, Scope};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{PathParams, QueryParams};
use crate::state::AppState;
use crate::wire::{DeliveryOut, Encoding, FromPosition, MembershipOut, MessageOut, parse_time};

/// How long one internal long-poll waits before looking again.
const POLL: Duration = Duration::from_secs(10);

/// Query of a topic tail.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TopicEventsQuery {
    /// Only this partition (default: all).
    pub partition: Option<u32>,
    /// `latest` (the default: only new messages) or `earliest`.
    pub from: Option<FromPosition>,
    /// Start every partition at this offset.
    pub offset: Option<u64>,
    /// Start at this time: RFC 3339 or ms since the Unix epoch.
    pub from_time: Option<String>,
    /// Encoding of keys and values.
    pub encoding: Option<Encoding>,
}

/// How deliveries of a shared subscription are settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AckMode {
    /// The client acks through `/ack` (at least once).
    #[default]
    Manual,
    /// Acked once sent (at most once).
    Auto,
}

/// Query of a subscription's event stream.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SubEventsQuery {
    /// Messages per internal fetch or receive (default 100 / 10).
    pub max: Option<u32>,
    /// Shared: `manual` (default) or `auto`.
    pub ack: Option<AckMode>,
    /// Shared: the member name for the in-flight limit (default: one per connection).
    pub member: Option<String>,
    /// Shared: lease of each delivery (default: the subscription's).
    pub lease_ms: Option<u64>,
    /// Stream: commit what was sent before each fetch (default false).
    pub auto_commit: Option<bool>,
    /// Encoding of keys and values.
    pub encoding: Option<Encoding>,
}

enum Item {
    Message(StoredMessage),
    Delivery(Delivery),
    Assignment(Membership),
    Error(ApiError),
}

type Cursor = BTreeMap<u32, u64>;

fn format_cursor(c: &Cursor) -> String {
    c.iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_cursor(headers: &HeaderMap) -> ApiResult<Option<Cursor>> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid(
            "Last-Event-ID",
            "expected partition:offset pairs like \"0:12,1:40\"",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let mut c = Cursor::new();
    for pair in s.split(',') {
        let (p, o) = pair.split_once(':').ok_or_else(bad)?;
        c.insert(
            p.trim().parse().map_err(|_| bad())?,
            o.trim().parse().map_err(|_| bad())?,
        );
    }
    Ok(Some(c))
}

fn json_event(kind: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event("error").data("serialisation failed"))
}

fn error_event(e: ApiError) -> Event {
    json_event(
        "error",
        &ErrorBody {
            code: e.code.to_owned(),
            message: e.message,
        },
    )
}

type EventStream = Sse<
    axum::response::sse::KeepAliveStream<
        std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>,
    >,
>;

fn sse(stream: impl Stream<Item = Event> + Send + 'static) -> EventStream {
    let boxed: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(stream.map(Ok));
    Sse::new(boxed).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Tails a topic's partitions as Server-Sent Events (`event: message`).
#[utoipa::path(get, path = "/v1/topics/{topic}/events", tag = "events",
    params(("topic" = String, Path, description = "Topic name"), TopicEventsQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String)))]
pub(crate) async fn topic_events(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(topic): PathParams<String>,
    QueryParams(q): QueryParams<TopicEventsQuery>,
    headers: HeaderMap,
) -> ApiResult<EventStream> {
    caller.require(Scope::Consume, &topic)?;
    let info = s.engine.describe_topic(&topic).await?;
    let count = info.config.partitions;
    let partitions: Vec<u32> = match q.partition {
        Some(p) if p < count => vec![p],
        Some(p) => {
            return Err(BrokerError::PartitionNotFound {
                topic,
                partition: p,
                partitions: count,
            }
            .into());
        }
        None => (0..count).collect(),
    };
    let start = match (q.offset, &q.from_time, q.from) {
        (Some(o), None, None) => Position::Offset(o),
        (None, Some(t), None) => Position::Timestamp(parse_time("from_time", t)?),
        (None, None, None | Some(FromPosition::Latest)) => Position::Latest,
        (None, None, Some(FromPosition::Earliest)) => Position::Earliest,
        _ => {
            return Err(ApiError::invalid(
                "offset",
                "give at most one of offset, from_time and from",
            ));
        }
    };
    let resume = parse_cursor(&headers)?.unwrap_or_default();
    // Where every tailed partition starts, resolved now (before the answer): the first event
    // (`ready`) carries the cursor of all of them, so a reconnect resumes every partition
    // exactly, even those that had no message yet. Cursor entries for partitions not tailed
    // are dropped.
    let mut cursor = Cursor::new();
    for p in &partitions {
        let from = resume.get(p).map_or(start, |o| Position::Offset(*o));
        let probe = ReadRequest {
            partition: *p,
            from,
            max_messages: 1,
            max_bytes: 1,
            wait: Duration::ZERO,
        };
        let r = s.engine.read(&topic, probe).await?;
        cursor.insert(*p, r.messages.first().map_or(r.next_offset, |m| m.offset));
    }
    let (tx, rx) = mpsc::channel::<(u32, Item)>(64);
    for (p, at) in &cursor {
        tokio::spawn(tail(
            s.clone(),
            topic.clone(),
            *p,
            Position::Offset(*at),
            tx.clone(),
        ));
    }
    drop(tx);
    let encoding = q.encoding.unwrap_or_default();
    let ready = json_event(
        "ready",
        &serde_json::json!({ "cursor": format_cursor(&cursor) }),
    )
    .id(format_cursor(&cursor));
    let metrics = s.metrics.clone();
    let stream = ReceiverStream::new(rx).map(move |(p, item)| match item {
        Item::Message(m) => {
            cursor.insert(p, m.offset + 1);
            metrics.delivered(&topic, "", 1, m.value.len() as u64);
            json_event("message", &MessageOut::new(m, encoding)).id(format_cursor(&cursor))
        }
        Item::Error(e) => error_event(e),
        Item::Delivery(_) | Item::Assignment(_) => Event::default().comment("unexpected"),
    });
    let stream = futures_util::stream::once(async move { ready }).chain(stream);
    Ok(sse(stream))
}

async fn tail(
    s: AppState,
    topic: String,
    partition: u32,
    mut from: Position,
    tx: mpsc::Sender<(u32, Item)>,
) {
    loop {
        let request = ReadRequest {
            partition,
            from,
            max_messages: 100,
            max_bytes: 1024 * 1024,
            wait: POLL,
        };
        let r = tokio::select! {
            r = s.engine.read(&topic, request) => r,
            () = tx.closed() => return,
            () = s.shutdown.cancelled() => return,
        };
        match r {
            Ok(r) => {
                for m in r.messages {
                    if tx.send((partition, Item::Message(m))).await.is_err() {
                        return;
                    }
                }
                from = Position::Offset(r.next_offset);
            }
            Err(e) => {
                let _ = tx.send((partition, Item::Error(e.into()))).await;
                return;
            }
        }
    }
}

/// Consumes a subscription as Server-Sent Events (stream: `assignment` and `message`
/// events; shared: `delivery` events).
#[utoipa::path(get, path = "/v1/topics/{topic}/subscriptions/{sub}/events", tag = "events",
    params(("topic" = String, Path, description = "Topic name"),
           ("sub" = String, Path, description = "Subscription name"), SubEventsQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Stream: commit this cursor first")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String)))]
pub(crate) async fn subscription_events(
    State(s): State<AppState>,
    caller: Caller,
    PathParams((topic, sub)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<SubEventsQuery>,
    headers: HeaderMap,
) -> ApiResult<EventStream> {
    caller.require(Scope::Consume, &topic)?;
    let info = s.engine.describe_subscription(&topic, &sub).await?;
    match info.config {
        SubscriptionConfig::Stream(c) => {
            if q.ack.is_some() || q.member.is_some() || q.lease_ms.is_some() {
                return Err(ApiError::invalid(
                    "ack",
                    "ack, member and lease_ms apply to shared subscriptions",
                ));
            }
            let resume = parse_cursor(&headers)?;
            stream_events(s, topic, sub, q, resume, c.session_timeout_ms).await
        }
        SubscriptionConfig::Shared(_) => {
            if q.auto_commit.is_some() {
                return Err(ApiError::invalid(
                    "auto_commit",
                    "applies to stream subscriptions",
                ));
            }
            shared_events(s, topic, sub, q).await
        }
    }
}

/// The queue's deliveries as Server-Sent Events.
#[utoipa::path(get, path = "/v1/queues/{queue}/events", tag = "events",
    params(("queue" = String, Path, description = "Queue name"), SubEventsQuery),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String)))]
pub(crate) async fn queue_events(
    State(s): State<AppState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    QueryParams(q): QueryParams<SubEventsQuery>,
) -> ApiResult<EventStream> {
    caller.require(Scope::Consume, &queue)?;
    s.engine.describe_subscription(&queue, &queue).await?;
    if q.auto_commit.is_some() {
        return Err(ApiError::invalid(
            "auto_commit",
            "applies to stream subscriptions",
        ));
    }
    shared_events(s, queue.clone(), queue, q).await
}

async fn stream_events(
    s: AppState,
    topic: String,
    sub: String,
    q: SubEventsQuery,
    resume: Option<Cursor>,
    session_timeout_ms: u64,
) -> ApiResult<EventStream> {
    let max = s.count("max", q.max, 100)?;
    let membership = s.engine.join(&topic, &sub, None).await?;
    if let Some(cursor) = &resume {
        let owned: Vec<Committed> = cursor
            .iter()
            .filter(|(p, _)| membership.partitions.contains(p))
            .map(|(p, o)| Committed {
                partition: *p,
                offset: *o,
            })
            .collect();
        if !owned.is_empty()
            && let Err(e) = s
                .engine
                .commit(&topic, &sub, &membership.member_id, owned)
                .await
        {
            let _ = s.engine.leave(&topic, &sub, &membership.member_id).await;
            return Err(e.into());
        }
    }
    let (tx, rx) = mpsc::channel::<Item>(1);
    let auto_commit = q.auto_commit.unwrap_or(false);
    let heartbeat_every = Duration::from_millis((session_timeout_ms / 3).max(100));
    let task_state = s.clone();
    let (t, n) = (topic.clone(), sub.clone());
    let floor = resume.clone().unwrap_or_default();
    tokio::spawn(async move {
        let s = task_state;
        let mut m = membership;
        let _ = tx.send(Item::Assignment(m.clone())).await;
        let mut last_heartbeat = Instant::now();
        let mut sent: BTreeMap<u32, u64> = BTreeMap::new();
        loop {
            if auto_commit && !sent.is_empty() {
                let offsets = sent
                    .iter()
                    .map(|(p, o)| Committed {
                        partition: *p,
                        offset: *o,
                    })
                    .collect();
                // A rebalance may have moved a partition away: its new owner starts from the
                // last commit, which is at-least-once.
                let _ = s.engine.commit(&t, &n, &m.member_id, offsets).await;
                sent.clear();
            }
            if last_heartbeat.elapsed() >= heartbeat_every {
                last_heartbeat = Instant::now();
                match s.engine.heartbeat(&t, &n, &m.member_id).await {
                    Ok(now) if now.generation != m.generation => {
                        m = now;
                        if tx.send(Item::Assignment(m.clone())).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(BrokerError::UnknownMember { .. }) => {
                        match s.engine.join(&t, &n, None).await {
                            Ok(now) => {
                                m = now;
                                if tx.send(Item::Assignment(m.clone())).await.is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Item::Error(e.into())).await;
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Item::Error(e.into())).await;
                        break;
                    }
                }
            }
            let request = FetchRequest {
                max_messages: max,
                max_bytes: 1024 * 1024,
                wait: POLL.min(heartbeat_every),
            };
            let r = tokio::select! {
                r = s.engine.fetch(&t, &n, &m.member_id, request) => r,
                () = tx.closed() => break,
                () = s.shutdown.cancelled() => break,
            };
            match r {
                Ok(messages) => {
                    for msg in messages {
                        // After a resume, the member's first fetch starts at the commit it
                        // joined with; what the client already saw is skipped.
                        if floor.get(&msg.partition).is_some_and(|f| msg.offset < *f) {
                            continue;
                        }
                        sent.insert(msg.partition, msg.offset + 1);
                        if tx.send(Item::Message(msg)).await.is_err() {
                            break;
                        }
                    }
                }
                // Rebalanced or expired: the heartbeat at the top of the loop sorts it out.
                Err(BrokerError::UnknownMember { .. } | BrokerError::NotAssigned { .. }) => {
                    last_heartbeat = Instant::now() - heartbeat_every;
                }
                Err(e) => {
                    let _ = tx.send(Item::Error(e.into())).await;
                    break;
                }
            }
            if tx.is_closed() {
                break;
            }
        }
        let _ = s.engine.leave(&t, &n, &m.member_id).await;
    });
    let encoding = q.encoding.unwrap_or_default();
    let mut cursor = resume.unwrap_or_default();
    let metrics = s.metrics.clone();
    let stream = ReceiverStream::new(rx).map(move |item| match item {
        Item::Message(m) => {
            cursor.insert(m.partition, m.offset + 1);
            metrics.delivered(&topic, &sub, 1, m.value.len() as u64);
            json_event("message", &MessageOut::new(m, encoding)).id(format_cursor(&cursor))
        }
        Item::Assignment(m) => json_event("assignment", &MembershipOut::from(m)),
        Item::Error(e) => error_event(e),
        Item::Delivery(_) => Event::default().comment("unexpected"),
    });
    Ok(sse(stream))
}

async fn shared_events(
    s: AppState,
    topic: String,
    sub: String,
    q: SubEventsQuery,
) -> ApiResult<EventStream> {
    let max = s.count("max", q.max, 10)?;
    let auto = q.ack.unwrap_or_default() == AckMode::Auto;
    let member = q
        .member
        .clone()
        .unwrap_or_else(|| format!("sse-{:016x}", rand::random::<u64>()));
    let lease = q.lease_ms.map(Duration::from_millis);
    let (tx, rx) = mpsc::channel::<Item>(1);
    let task_state = s.clone();
    let (t, n) = (topic.clone(), sub.clone());
    tokio::spawn(async move {
        let s = task_state;
        let mut sent: Vec<String> = Vec::new();
        loop {
            if auto && !sent.is_empty() {
                let _ = s.engine.ack(&t, &n, &sent).await;
                sent.clear();
            }
            let request = ReceiveRequest {
                member: Some(member.clone()),
                max,
                lease,
                wait: POLL,
            };
            let r = tokio::select! {
                r = s.engine.receive(&t, &n, request) => r,
                () = tx.closed() => break,
                () = s.shutdown.cancelled() => break,
            };
            match r {
                Ok(deliveries) => {
                    for d in deliveries {
                        let id = d.ack_id.clone();
                        if tx.send(Item::Delivery(d)).await.is_err() {
                            break;
                        }
                        if auto {
                            sent.push(id);
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Item::Error(e.into())).await;
                    break;
                }
            }
            if tx.is_closed() {
                break;
            }
        }
    });
    let encoding = q.encoding.unwrap_or_default();
    let metrics = s.metrics.clone();
    let stream = ReceiverStream::new(rx).map(move |item| match item {
        Item::Delivery(d) => {
            metrics.delivered(&topic, &sub, 1, d.message.value.len() as u64);
            let id = d.ack_id.clone();
            json_event("delivery", &DeliveryOut::new(d, encoding)).id(id)
        }
        Item::Error(e) => error_event(e),
        Item::Message(_) | Item::Assignment(_) => Event::default().comment("unexpected"),
    });
    Ok(sse(stream))
}
