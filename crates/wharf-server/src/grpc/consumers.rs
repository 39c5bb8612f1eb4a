//! `StreamConsumer` (consumer groups) and `SharedConsumer` (queue semantics), unary and
//! streaming.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use wharf_broker::{
    BrokerError, Committed, Delivery, FetchRequest, ReceiveRequest, SubscriptionConfig,
};
use wharf_proto::v1;

use super::convert;
use super::messages::status_to_api;
use super::{Ctx, Grpc, status};
use crate::auth::Scope;
use crate::error::{ApiError, ApiResult};
use crate::routes::subscriptions::{Settle, settle_outcomes};
use crate::state::AppState;
use crate::wire::{AckRequest, ExtendRequest, NackRequest, TerminateRequest};

/// How long a streaming consumer's engine call waits before looking around (heartbeats,
/// shutdown, a closed client).
const POLL: Duration = Duration::from_secs(10);

/// The longest a `Consume` stream goes without a heartbeat.
const MAX_HEARTBEAT: Duration = Duration::from_secs(1);

type Events<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn events<T: Send + 'static>(rx: mpsc::Receiver<Result<T, Status>>) -> Events<T> {
    Box::pin(ReceiverStream::new(rx))
}

fn shutting_down() -> Status {
    status(
        ApiError::new(
            "shutting_down",
            "the server is shutting down; reconnect to another node or after the restart",
        )
        .retry_after(1),
    )
}

#[tonic::async_trait]
impl v1::stream_consumer_server::StreamConsumer for Grpc {
    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::Membership>, Status> {
        self.call(
            "/wharf.v1.StreamConsumer/Join",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Consume, &r.topic)?;
                let m =
                    c.s.engine
                        .join(&r.topic, &r.subscription, r.member_id.as_deref())
                        .await?;
                Ok(convert::membership_out(m))
            },
        )
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<v1::MemberRequest>,
    ) -> Result<Response<v1::Membership>, Status> {
        let route = "/wharf.v1.StreamConsumer/Heartbeat";
        self.call(route, request, |c: Ctx, r| async move {
            c.caller.require(Scope::Consume, &r.topic)?;
            let m =
                c.s.engine
                    .heartbeat(&r.topic, &r.subscription, &r.member_id)
                    .await?;
            Ok(convert::membership_out(m))
        })
        .await
    }

    async fn leave(
        &self,
        request: Request<v1::MemberRequest>,
    ) -> Result<Response<v1::LeaveResponse>, Status> {
        self.call(
            "/wharf.v1.StreamConsumer/Leave",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Consume, &r.topic)?;
                c.s.engine
                    .leave(&r.topic, &r.subscription, &r.member_id)
                    .await?;
                Ok(v1::LeaveResponse {})
            },
        )
        .await
    }

    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        self.call(
            "/wharf.v1.StreamConsumer/Fetch",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Consume, &r.topic)?;
                let max_bytes = r.max_bytes.unwrap_or(1024 * 1024);
                if max_bytes == 0 {
                    return Err(ApiError::invalid("max_bytes", "must be at least 1"));
                }
                let request = FetchRequest {
                    max_messages: c.s.count("max_messages", r.max_messages, 100)?,
                    max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                    wait: c.s.wait(r.wait_ms)?,
                };
                let messages =
                    c.s.unless_shutdown(c.s.engine.fetch(
                        &r.topic,
                        &r.subscription,
                        &r.member_id,
                        request,
                    ))
                    .await?;
                let bytes: usize = messages.iter().map(|m| m.value.len()).sum();
                c.s.metrics.delivered(
                    &r.topic,
                    &r.subscription,
                    messages.len() as u64,
                    bytes as u64,
                );
                Ok(v1::FetchResponse {
                    messages: messages.into_iter().map(convert::message_out).collect(),
                })
            },
        )
        .await
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        self.call(
            "/wharf.v1.StreamConsumer/Commit",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Consume, &r.topic)?;
                if r.offsets.is_empty() {
                    return Err(ApiError::invalid("offsets", "give at least one partition"));
                }
                let offsets = r
                    .offsets
                    .iter()
                    .map(|o| Committed {
                        partition: o.partition,
                        offset: o.offset,
                    })
                    .collect();
                let done =
                    c.s.engine
                        .commit(&r.topic, &r.subscription, &r.member_id, offsets)
                        .await?;
                Ok(convert::committed_out(done))
            },
        )
        .await
    }

    type ConsumeStream = Events<v1::ConsumeResponse>;

    async fn consume(
        &self,
        request: Request<v1::ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        self.call(
            "/wharf.v1.StreamConsumer/Consume",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Consume, &r.topic)?;
                let max = c.s.count("max_messages", r.max_messages, 100)?;
                let info =
                    c.s.engine
                        .describe_subscription(&r.topic, &r.subscription)
                        .await?;
                let SubscriptionConfig::Stream(config) = info.config else {
                    return Err(ApiError::new(
                        "wrong_kind",
                        format!(
                            "{} is a shared subscription: consume it with SharedConsumer",
                            r.subscription
                        ),
                    ));
                };
                let membership = c.s.engine.join(&r.topic, &r.subscription, None).await?;
                let (tx, rx) = mpsc::channel(2);
                // Heartbeats are how a member learns of a rebalance: at least every second, so
                // a new member gets its partitions promptly (they are cheap in-memory calls).
                let heartbeat_every =
                    Duration::from_millis((config.session_timeout_ms / 3).max(100))
                        .min(MAX_HEARTBEAT);
                tokio::spawn(consume_loop(ConsumeTask {
                    s: c.s,
                    topic: r.topic,
                    sub: r.subscription,
                    max,
                    auto_commit: r.auto_commit,
                    heartbeat_every,
                    membership,
                    tx,
                }));
                Ok(events(rx))
            },
        )
        .await
    }
}

struct ConsumeTask {
    s: AppState,
    topic: String,
    sub: String,
    max: usize,
    auto_commit: bool,
    heartbeat_every: Duration,
    membership: wharf_broker::Membership,
    tx: mpsc::Sender<Result<v1::ConsumeResponse, Status>>,
}

fn assignment(m: &wharf_broker::Membership) -> Result<v1::ConsumeResponse, Status> {
    Ok(v1::ConsumeResponse {
        event: Some(v1::consume_response::Event::Assignment(
            convert::membership_out(m.clone()),
        )),
    })
}

/// A group member's life on one `Consume` stream: assignment, batches, heartbeats,
/// rejoining after a session expiry; it leaves the group when the stream ends.
async fn consume_loop(t: ConsumeTask) {
    let ConsumeTask {
        s,
        topic,
        sub,
        max,
        auto_commit,
        heartbeat_every,
        mut membership,
        tx,
    } = t;
    let mut last_heartbeat = Instant::now();
    let mut sent: BTreeMap<u32, u64> = BTreeMap::new();
    if tx.send(assignment(&membership)).await.is_ok() {
        loop {
            if auto_commit && !sent.is_empty() {
                let offsets = sent
                    .iter()
                    .map(|(p, o)| Committed {
                        partition: *p,
                        offset: *o,
                    })
                    .collect();
                // After a rebalance the partition's new owner starts from the last commit:
                // at-least-once.
                let _ = s
                    .engine
                    .commit(&topic, &sub, &membership.member_id, offsets)
                    .await;
                sent.clear();
            }
            if last_heartbeat.elapsed() >= heartbeat_every {
                last_heartbeat = Instant::now();
                let now = match s
                    .engine
                    .heartbeat(&topic, &sub, &membership.member_id)
                    .await
                {
                    Err(BrokerError::UnknownMember { .. }) => {
                        s.engine.join(&topic, &sub, None).await
                    }
                    r => r,
                };
                match now {
                    Ok(now) if now != membership => {
                        membership = now;
                        if tx.send(assignment(&membership)).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(status(e.into()))).await;
                        break;
                    }
                }
            }
            let request = FetchRequest {
                max_messages: max,
                max_bytes: 1024 * 1024,
                wait: POLL.min(heartbeat_every),
            };
            let fetched = tokio::select! {
                r = s.engine.fetch(&topic, &sub, &membership.member_id, request) => r,
                () = tx.closed() => break,
                () = s.shutdown.cancelled() => {
                    let _ = tx.send(Err(shutting_down())).await;
                    break;
                }
            };
            match fetched {
                Ok(messages) if messages.is_empty() => {}
                Ok(messages) => {
                    let bytes: usize = messages.iter().map(|m| m.value.len()).sum();
                    s.metrics
                        .delivered(&topic, &sub, messages.len() as u64, bytes as u64);
                    for m in &messages {
                        sent.insert(m.partition, m.offset + 1);
                    }
                    let batch = v1::ConsumeResponse {
                        event: Some(v1::consume_response::Event::Messages(v1::MessageBatch {
                            messages: messages.into_iter().map(convert::message_out).collect(),
                        })),
                    };
                    // While the client is slow to take the batch, keep the member alive: its
                    // session must not expire while its stream is open.
                    let permit = loop {
                        tokio::select! {
                            p = tx.reserve() => break p.ok(),
                            () = tokio::time::sleep(heartbeat_every) => {
                                let _ = s.engine.heartbeat(&topic, &sub, &membership.member_id).await;
                            }
                            () = s.shutdown.cancelled() => break None,
                        }
                    };
                    let Some(permit) = permit else { break };
                    permit.send(Ok(batch));
                }
                // Rebalanced or expired: the heartbeat at the top of the loop sorts it out.
                Err(BrokerError::UnknownMember { .. } | BrokerError::NotAssigned { .. }) => {
                    last_heartbeat = Instant::now()
                        .checked_sub(heartbeat_every)
                        .unwrap_or_else(Instant::now);
                }
                Err(e) => {
                    let _ = tx.send(Err(status(e.into()))).await;
                    break;
                }
            }
        }
    }
    let _ = s.engine.leave(&topic, &sub, &membership.member_id).await;
}

async fn settle(c: &Ctx, topic: &str, sub: &str, how: Settle) -> ApiResult<v1::SettleResponse> {
    let outcomes = settle_outcomes(&c.s, &c.caller, topic, sub, &how).await?;
    Ok(v1::SettleResponse {
        outcomes: convert::outcomes_out(outcomes),
    })
}

fn terminate_reason(reason: String) -> Option<String> {
    (!reason.is_empty()).then_some(reason)
}

fn deliveries_out(s: &AppState, topic: &str, sub: &str, d: Vec<Delivery>) -> v1::ReceiveResponse {
    let bytes: usize = d.iter().map(|d| d.message.value.len()).sum();
    s.metrics
        .delivered(topic, sub, d.len() as u64, bytes as u64);
    v1::ReceiveResponse {
        deliveries: d.into_iter().map(convert::delivery_out).collect(),
    }
}

#[tonic::async_trait]
impl v1::shared_consumer_server::SharedConsumer for Grpc {
    async fn receive(
        &self,
        request: Request<v1::ReceiveRequest>,
    ) -> Result<Response<v1::ReceiveResponse>, Status> {
        self.call(
            "/wharf.v1.SharedConsumer/Receive",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Consume, &r.topic)?;
                let request = ReceiveRequest {
                    member: r.member,
                    max: c.s.count("max", r.max, 1)?,
                    lease: r.lease_ms.map(Duration::from_millis),
                    wait: c.s.wait(r.wait_ms)?,
                };
                let d =
                    c.s.unless_shutdown(c.s.engine.receive(&r.topic, &r.subscription, request))
                        .await?;
                Ok(deliveries_out(&c.s, &r.topic, &r.subscription, d))
            },
        )
        .await
    }

    type ReceiveStreamStream = Events<v1::ReceiveResponse>;

    async fn receive_stream(
        &self,
        request: Request<v1::ReceiveStreamRequest>,
    ) -> Result<Response<Self::ReceiveStreamStream>, Status> {
        let route = "/wharf.v1.SharedConsumer/ReceiveStream";
        self.call(route, request, |c: Ctx, r| async move {
            c.caller.require(Scope::Consume, &r.topic)?;
            let max = c.s.count("max", r.max, 10)?;
            // Fail early (not_found, wrong_kind) instead of on the stream.
            shared_only(&c.s, &r.topic, &r.subscription).await?;
            let member = r
                .member
                .unwrap_or_else(|| format!("grpc-{:016x}", rand::random::<u64>()));
            let lease = r.lease_ms.map(Duration::from_millis);
            let (tx, rx) = mpsc::channel(2);
            let s = c.s;
            let (topic, sub) = (r.topic, r.subscription);
            tokio::spawn(async move {
                loop {
                    let request = ReceiveRequest {
                        member: Some(member.clone()),
                        max,
                        lease,
                        wait: POLL,
                    };
                    let r = tokio::select! {
                        r = s.engine.receive(&topic, &sub, request) => r,
                        () = tx.closed() => break,
                        () = s.shutdown.cancelled() => {
                            let _ = tx.send(Err(shutting_down())).await;
                            break;
                        }
                    };
                    match r {
                        Ok(d) if d.is_empty() => {}
                        Ok(d) => {
                            let ids: Vec<String> = d.iter().map(|d| d.ack_id.clone()).collect();
                            if tx
                                .send(Ok(deliveries_out(&s, &topic, &sub, d)))
                                .await
                                .is_err()
                            {
                                // The client went away: give them back at once.
                                let _ = s.engine.nack(&topic, &sub, &ids, Some(0)).await;
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(status(e.into()))).await;
                            break;
                        }
                    }
                }
            });
            Ok(events(rx))
        })
        .await
    }

    async fn ack(
        &self,
        request: Request<v1::AckRequest>,
    ) -> Result<Response<v1::SettleResponse>, Status> {
        self.call(
            "/wharf.v1.SharedConsumer/Ack",
            request,
            |c: Ctx, r| async move {
                let how = Settle::Ack(AckRequest { ack_ids: r.ack_ids });
                settle(&c, &r.topic, &r.subscription, how).await
            },
        )
        .await
    }

    async fn nack(
        &self,
        request: Request<v1::NackRequest>,
    ) -> Result<Response<v1::SettleResponse>, Status> {
        self.call(
            "/wharf.v1.SharedConsumer/Nack",
            request,
            |c: Ctx, r| async move {
                let how = Settle::Nack(NackRequest {
                    ack_ids: r.ack_ids,
                    delay_ms: r.delay_ms,
                });
                settle(&c, &r.topic, &r.subscription, how).await
            },
        )
        .await
    }

    async fn extend(
        &self,
        request: Request<v1::ExtendRequest>,
    ) -> Result<Response<v1::SettleResponse>, Status> {
        self.call(
            "/wharf.v1.SharedConsumer/Extend",
            request,
            |c: Ctx, r| async move {
                let how = Settle::Extend(ExtendRequest {
                    ack_ids: r.ack_ids,
                    lease_ms: r.lease_ms,
                });
                settle(&c, &r.topic, &r.subscription, how).await
            },
        )
        .await
    }

    async fn terminate(
        &self,
        request: Request<v1::TerminateRequest>,
    ) -> Result<Response<v1::SettleResponse>, Status> {
        let route = "/wharf.v1.SharedConsumer/Terminate";
        self.call(route, request, |c: Ctx, r| async move {
            let how = Settle::Terminate(TerminateRequest {
                ack_ids: r.ack_ids,
                reason: terminate_reason(r.reason),
            });
            settle(&c, &r.topic, &r.subscription, how).await
        })
        .await
    }

    type ProcessStream = Events<v1::ProcessResponse>;

    async fn process(
        &self,
        request: Request<Streaming<v1::ProcessRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        self.call(
            "/wharf.v1.SharedConsumer/Process",
            request,
            |c: Ctx, mut inbound| async move {
                let first_within = Duration::from_millis(c.s.config.limits.body_read_timeout_ms);
                let first = tokio::select! {
                    m = inbound.message() => m.map_err(|e| status_to_api(&e))?,
                    () = tokio::time::sleep(first_within) => return Err(ApiError::new(
                        "request_timeout",
                        "the first message (`start`) of a Process stream did not arrive within \
                         limits.body_read_timeout_ms",
                    )),
                    () = c.s.shutdown.cancelled() => return Err(ApiError::new(
                        "shutting_down", "the server is shutting down").retry_after(1)),
                };
                let Some(v1::ProcessRequest {
                    request: Some(v1::process_request::Request::Start(start)),
                }) = first
                else {
                    return Err(ApiError::invalid(
                        "start",
                        "the first message of a Process stream must be `start`",
                    ));
                };
                c.caller.require(Scope::Consume, &start.topic)?;
                let max_in_flight = c.s.count("max_in_flight", start.max_in_flight, 10)?;
                shared_only(&c.s, &start.topic, &start.subscription).await?;
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(process_loop(
                    c,
                    ProcessTask {
                        member: start
                            .member
                            .unwrap_or_else(|| format!("grpc-{:016x}", rand::random::<u64>())),
                        topic: start.topic,
                        sub: start.subscription,
                        lease: start.lease_ms.map(Duration::from_millis),
                        max_in_flight,
                    },
                    inbound,
                    tx,
                ));
                Ok(events(rx))
            },
        )
        .await
    }
}

/// `subscription_not_found` or `wrong_kind` unless it is a shared subscription.
async fn shared_only(s: &AppState, topic: &str, sub: &str) -> ApiResult<()> {
    match s.engine.describe_subscription(topic, sub).await?.config {
        SubscriptionConfig::Shared(_) => Ok(()),
        SubscriptionConfig::Stream(_) => Err(ApiError::new(
            "wrong_kind",
            format!("{sub} is a stream subscription: consume it with StreamConsumer"),
        )),
    }
}

/// The wall clock in ms since the Unix epoch (what lease deadlines are in).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct ProcessTask {
    topic: String,
    sub: String,
    member: String,
    lease: Option<Duration>,
    max_in_flight: usize,
}

type Receiving = Pin<Box<dyn Future<Output = Result<Vec<Delivery>, BrokerError>> + Send>>;

/// A settle in progress (a task of its own, so it finishes and wakes other members' receives
/// even while this stream waits on a slow client): its answer, and the lease an `extend`
/// asked for.
type Settling = tokio::task::JoinHandle<(v1::Settled, Option<u64>)>;

/// How long the end of a `Process` stream waits, in all, for the settles in progress and to
/// hand their answers to the client.
const LAST_ANSWER: Duration = Duration::from_secs(5);

/// One `Process` stream: receives while fewer than `max_in_flight` deliveries are unsettled,
/// settles what the client sends (answering in order), and when the stream ends gives back
/// what was left unsettled (nack without delay) so another member gets it at once.
///
/// Settles run concurrently with the receive they make room for: an acked, nacked or
/// terminated delivery frees its slot when the request arrives, so the next receive starts
/// at once and its lease record joins the settle's record in one group commit instead of
/// waiting for the settle's fsync. Settles themselves run one at a time (the stream reads
/// its next request when the last settle is answered): they apply in the order sent (an
/// extend, then an ack of the same delivery, must not race on any engine) and are answered
/// in that order.
async fn process_loop(
    c: Ctx,
    t: ProcessTask,
    mut inbound: Streaming<v1::ProcessRequest>,
    tx: mpsc::Sender<Result<v1::ProcessResponse, Status>>,
) {
    let s = c.s.clone();
    let (c, t) = (Arc::new(c), Arc::new(t));
    // Unsettled deliveries and their lease deadlines (ms since the Unix epoch). A delivery
    // whose lease ended is no longer the client's (the broker delivers it again), so it frees
    // its slot even if the client never settles it.
    let mut unsettled: HashMap<String, i64> = HashMap::new();
    // The pending receive, and whether it has been polled yet (one never polled has leased
    // nothing and is dropped as it is when the stream ends).
    let mut receiving: Option<(Receiving, Arc<AtomicBool>)> = None;
    let mut settling: Option<Settling> = None;
    // Why the stream ends, if it is an error the client should see (after the answers to
    // the settles in progress).
    let mut end: Option<Status> = None;
    loop {
        let now = now_ms();
        unsettled.retain(|_, deadline| *deadline > now);
        // At capacity: wake when the next lease ends.
        let next_expiry = (receiving.is_none() && unsettled.len() >= t.max_in_flight)
            .then(|| unsettled.values().min().copied())
            .flatten()
            .map(|d| Duration::from_millis(u64::try_from(d - now).unwrap_or(0).max(1)));
        if receiving.is_none() && unsettled.len() < t.max_in_flight {
            let engine = s.engine.clone();
            let (topic, sub) = (t.topic.clone(), t.sub.clone());
            let request = ReceiveRequest {
                member: Some(t.member.clone()),
                max: t.max_in_flight - unsettled.len(),
                lease: t.lease,
                wait: POLL,
            };
            let polled = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&polled);
            let f: Receiving = Box::pin(async move {
                flag.store(true, Ordering::Relaxed);
                engine.receive(&topic, &sub, request).await
            });
            receiving = Some((f, polled));
        }
        tokio::select! {
            // In this order: a busy stream still notices a shutdown, and settle answers go
            // out before more deliveries.
            biased;
            () = s.shutdown.cancelled() => {
                end = Some(shutting_down());
                break;
            }
            joined = async { match settling.as_mut() {
                Some(h) => h.await,
                None => std::future::pending().await,
            } } => {
                settling = None;
                let Ok((settled, extend_ms)) = joined else {
                    end = Some(Status::internal("a settle failed inside the server"));
                    break;
                };
                if settled.action == v1::SettleAction::Extend as i32 {
                    for o in &settled.outcomes {
                        match &o.error {
                            None => {
                                let lease = i64::try_from(extend_ms.unwrap_or(0)).unwrap_or(i64::MAX);
                                if let Some(d) = unsettled.get_mut(&o.ack_id) {
                                    *d = now_ms().saturating_add(lease);
                                }
                            }
                            // Extending a delivery that is not ours any more (`lease_expired`,
                            // `bad_ack_id`) frees its slot; a refused extend of bad input does
                            // not.
                            Some(code) if code == "invalid_argument" => {}
                            Some(_) => {
                                unsettled.remove(&o.ack_id);
                            }
                        }
                    }
                }
                let out = v1::ProcessResponse {
                    response: Some(v1::process_response::Response::Settled(settled)),
                };
                if tx.send(Ok(out)).await.is_err() {
                    break;
                }
            }
            // A pending receive is never dropped while the stream lives: what it leases is
            // always handed to the client.
            r = async { match receiving.as_mut() {
                Some((f, _)) => f.await,
                None => std::future::pending().await,
            } } => {
                receiving = None;
                match r {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => {
                        unsettled.extend(d.iter().map(|d| (d.ack_id.clone(), d.lease_deadline)));
                        let out = v1::ProcessResponse {
                            response: Some(v1::process_response::Response::Deliveries(
                                deliveries_out(&s, &t.topic, &t.sub, d),
                            )),
                        };
                        if tx.send(Ok(out)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        end = Some(status(e.into()));
                        break;
                    }
                }
            }
            m = inbound.message(), if settling.is_none() => {
                let settle = match m {
                    Ok(Some(v1::ProcessRequest {
                        request: Some(v1::process_request::Request::Settle(settle)),
                    })) => settle,
                    Ok(None) => break,
                    Ok(Some(_)) => {
                        end = Some(status(ApiError::invalid(
                            "settle",
                            "only the first message may be `start`",
                        )));
                        break;
                    }
                    Err(e) => {
                        // A malformed message is the client's error: say so. (A reset stream
                        // has no one left to tell; the send fails quietly.)
                        end = Some(status(status_to_api(&e)));
                        break;
                    }
                };
                // An unknown action is a broken client: end the stream. Bad values within a
                // known action are answered per id below, and the stream goes on.
                let action = v1::SettleAction::try_from(settle.action);
                if !matches!(
                    action,
                    Ok(v1::SettleAction::Ack
                        | v1::SettleAction::Nack
                        | v1::SettleAction::Extend
                        | v1::SettleAction::Terminate)
                ) {
                    end = Some(status(ApiError::invalid(
                        "action",
                        "must be ack, nack, extend or terminate",
                    )));
                    break;
                }
                let (action, extend_ms) = (settle.action, settle.lease_ms);
                let how = settle_request(settle);
                // An ack, nack or terminate the broker will take frees its slots now: done, or
                // not ours any more, the deliveries are no longer the client's to hold. One it
                // refuses as bad input frees nothing: the broker still leases those to this
                // member.
                if let Ok(how) = &how
                    && !matches!(how, Settle::Extend(_))
                    && how.check().is_ok()
                {
                    for id in how.ack_ids() {
                        unsettled.remove(id);
                    }
                }
                let (c, t) = (Arc::clone(&c), Arc::clone(&t));
                settling = Some(tokio::spawn(async move {
                    (process_settle(&c, &t, action, how).await, extend_ms)
                }));
            }
            () = async { match next_expiry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            } } => {}
        }
    }
    // The settles in progress are answered, in order, before the stream ends (within
    // LAST_ANSWER in all; they finish on their own tasks either way).
    let until = tokio::time::Instant::now() + LAST_ANSWER;
    if let Some(h) = settling.take()
        && let Ok(Ok((settled, _))) = tokio::time::timeout_at(until, h).await
    {
        let out = v1::ProcessResponse {
            response: Some(v1::process_response::Response::Settled(settled)),
        };
        let _ = tokio::time::timeout_at(until, tx.send(Ok(out))).await;
    }
    if let Some(e) = end {
        let within = until.max(tokio::time::Instant::now() + Duration::from_secs(1));
        let _ = tokio::time::timeout_at(within, tx.send(Err(e))).await;
    }
    // Deliveries a pending receive leased are given back too.
    if let Some((f, polled)) = receiving.take()
        && polled.load(Ordering::Relaxed)
    {
        let leftover = tokio::time::timeout(Duration::from_millis(1), f).await;
        if let Ok(Ok(d)) = leftover {
            unsettled.extend(d.into_iter().map(|d| (d.ack_id, 0)));
        }
    }
    if !unsettled.is_empty() {
        let ids: Vec<String> = unsettled.into_keys().collect();
        for chunk in ids.chunks(1000) {
            let _ = s.engine.nack(&t.topic, &t.sub, chunk, Some(0)).await;
        }
    }
}

/// Settles what a `Process` stream sent. A settle refused as a whole (bad input: an empty
/// list, a lease out of range) is answered with the error for every id; the stream goes on,
/// and nothing the client holds is given away.
async fn process_settle(
    c: &Ctx,
    t: &ProcessTask,
    action: i32,
    how: Result<Settle, (ApiError, Vec<String>)>,
) -> v1::Settled {
    let (error, ids) = match how {
        Ok(how) => match settle_outcomes(&c.s, &c.caller, &t.topic, &t.sub, &how).await {
            Ok(outcomes) => {
                return v1::Settled {
                    action,
                    outcomes: convert::outcomes_out(outcomes),
                };
            }
            Err(e) => (e, how.into_ack_ids()),
        },
        Err(refused) => refused,
    };
    v1::Settled {
        action,
        outcomes: ids
            .into_iter()
            .map(|ack_id| v1::AckOutcome {
                ack_id,
                error: Some(error.code.to_owned()),
            })
            .collect(),
    }
}

/// The broker request a `Process` stream's settle asks for, or why it cannot be one (with
/// the ids it named).
fn settle_request(settle: v1::Settle) -> Result<Settle, (ApiError, Vec<String>)> {
    let ids = settle.ack_ids;
    Ok(match v1::SettleAction::try_from(settle.action) {
        Ok(v1::SettleAction::Ack) => Settle::Ack(AckRequest { ack_ids: ids }),
        Ok(v1::SettleAction::Nack) => Settle::Nack(NackRequest {
            ack_ids: ids,
            delay_ms: settle.delay_ms,
        }),
        Ok(v1::SettleAction::Extend) => match settle.lease_ms {
            Some(lease_ms) => Settle::Extend(ExtendRequest {
                ack_ids: ids,
                lease_ms,
            }),
            None => {
                return Err((
                    ApiError::invalid("lease_ms", "extend needs the new lease"),
                    ids,
                ));
            }
        },
        Ok(v1::SettleAction::Terminate) => Settle::Terminate(TerminateRequest {
            ack_ids: ids,
            reason: terminate_reason(settle.reason),
        }),
        Ok(v1::SettleAction::Unspecified) | Err(_) => {
            return Err((
                ApiError::invalid("action", "must be ack, nack, extend or terminate"),
                ids,
            ));
        }
    })
}
