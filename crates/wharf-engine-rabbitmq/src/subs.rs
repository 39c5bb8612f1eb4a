//! Subscriptions on RabbitMQ: settings in the settings stream, state in a stream per
//! subscription (`{prefix}.s.{topic}.{topic generation}.{sub}.{generation}`) that every node
//! serving the subscription applies ([`crate::rsm`], machines in [`crate::stream`] and
//! [`crate::shared`]); messages read from the partition streams.
//!
//! A node proposes a change from its view (which may lag) and learns from the applied record
//! what it did: two nodes leasing one message at once both propose it, and the record first
//! in the stream gets it. So members of one shared subscription on several nodes never hold
//! a message at once, and any node settles any delivery (the ack id names the message, its
//! delivery count and the subscription's generation, not a channel).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::select_all;
use wharf_broker::{
    AckOutcome, BrokerError, Committed, Delivery, FetchRequest, HEADER_DELIVER_AT, Membership,
    Message, Position, PublishOptions, ReadRequest, ReadResult, ReceiveRequest, ResetTo, Result,
    StoredMessage, SubscriptionConfig, SubscriptionInfo, SubscriptionPartition, header,
};

use crate::meta::{self, Change, Role, SubState, TopicState};
use crate::rsm::{self, Rsm};
use crate::shared::{self, Now, Outcome as SharedOutcome, SharedMachine};
use crate::stream::{self, GroupMachine, Outcome as GroupOutcome};
use crate::watch::Watcher;
use crate::{MAX_READ_BYTES, RabbitEngine, Session, amqp};

/// Longest a fetch or receive waits.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// How long a state stream's first read may take.
const OPEN_BUDGET: Duration = Duration::from_secs(60);

/// A node's copy of one subscription.
#[derive(Clone)]
pub(crate) enum Handle {
    Stream(Arc<StreamSub>),
    Shared(Arc<SharedSub>),
}

impl Handle {
    fn alive(&self) -> bool {
        match self {
            Handle::Stream(h) => h.rsm.alive(),
            Handle::Shared(h) => h.rsm.alive(),
        }
    }
}

pub(crate) struct StreamSub {
    rsm: Rsm<GroupMachine>,
}

/// Bytes of message bodies a node keeps per queue of a shared subscription; bodies beyond
/// are read again when granted.
const BODY_BUDGET: usize = 8 * 1024 * 1024;

/// What a node knows of one message of a shared subscription's window.
struct Entry {
    key: Option<u64>,
    deliver_at: i64,
    /// The message, while the body budget lasts.
    body: Option<StoredMessage>,
}

/// What a node has read of one queue of a shared subscription: its window's messages
/// (`None`: an offset that holds no message).
#[derive(Default)]
struct QueueCache {
    messages: BTreeMap<u64, Option<Entry>>,
    /// The next offset to read.
    scanned: u64,
    /// The first offset the stream still holds, when last read.
    floor: u64,
    /// Bytes of the bodies kept.
    bytes: usize,
}

impl QueueCache {
    /// Forgets what is below `start`.
    fn trim(&mut self, start: u64) {
        let kept = self.messages.split_off(&start);
        for e in self.messages.values().flatten() {
            if let Some(m) = &e.body {
                self.bytes = self.bytes.saturating_sub(m.size());
            }
        }
        self.messages = kept;
        self.scanned = self.scanned.max(start);
    }

    /// Drops the body of `offset` (read again if it is granted).
    fn drop_body(&mut self, offset: u64) {
        if let Some(Some(e)) = self.messages.get_mut(&offset)
            && let Some(m) = e.body.take()
        {
            self.bytes = self.bytes.saturating_sub(m.size());
        }
    }
}

pub(crate) struct SharedSub {
    rsm: Rsm<SharedMachine>,
    cache: Mutex<Vec<QueueCache>>,
    /// Messages this node's receives are proposing right now: other receives here leave
    /// them alone instead of proposing the same ones and losing the race.
    proposing: Mutex<std::collections::HashSet<(u32, u64)>>,
    /// One redrive at a time on this node.
    redriving: tokio::sync::Mutex<()>,
}

/// Where queue `q` of a shared subscription reads: the topic, its state, the partition.
struct Source {
    topic: String,
    state: TopicState,
    partition: u32,
}

/// A subscription resolved: its topic, its settings and this node's copy.
struct Resolved {
    topic: TopicState,
    sub: SubState,
    handle: Handle,
}

fn wrong_kind(sub: &str, is: &str, wanted: &str) -> BrokerError {
    BrokerError::invalid(
        "subscription",
        format!("{sub:?} is a {is} subscription; this operation needs a {wanted} one"),
    )
}

fn not_found(topic: &str, sub: &str) -> BrokerError {
    BrokerError::SubscriptionNotFound {
        topic: topic.to_owned(),
        subscription: sub.to_owned(),
    }
}

/// `wharf-deliver-at` of a message (0 if none).
fn deliver_at(m: &StoredMessage) -> i64 {
    header(&m.headers, HEADER_DELIVER_AT)
        .and_then(wharf_broker::time::parse_rfc3339)
        .unwrap_or(0)
}

/// Milliseconds from `now` to `at` on Wharf's clock, as a wait.
fn until(now: i64, at: i64) -> Duration {
    Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0).max(1))
}

impl RabbitEngine {
    fn now(&self) -> i64 {
        self.inner.config.clock.now_ms()
    }

    /// A user topic that may have subscriptions.
    async fn subscribable(&self, s: &Session, topic: &str) -> Result<TopicState> {
        let t = self.public_topic(s, topic).await?;
        if t.role != Role::Topic {
            return Err(BrokerError::invalid(
                "topic",
                format!("{topic:?} is a dead-letter topic: it cannot have subscriptions"),
            ));
        }
        Ok(t)
    }

    /// The subscription and this node's copy of its state (opened if there is none).
    async fn resolve(&self, s: &Session, topic: &str, name: &str) -> Result<Resolved> {
        let mut t = self.subscribable(s, topic).await?;
        if !t.subs.contains_key(name) {
            s.meta.sync().await?;
            t = self.subscribable(s, topic).await?;
        }
        let sub = t
            .subs
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(topic, name))?;
        let queue = self.sub_stream(topic, t.generation, name, sub.generation);
        if let Some(h) = s.subs.lock().expect("subs").get(&queue)
            && h.alive()
        {
            return Ok(Resolved {
                topic: t,
                sub,
                handle: h.clone(),
            });
        }
        // One opening per subscription at a time (opening reads its state: not under the
        // session's lock, which publishes and reads of new partitions wait on).
        let lock = s
            .sub_attach
            .lock()
            .expect("sub attach")
            .entry(queue.clone())
            .or_default()
            .clone();
        let _attaching = lock.lock().await;
        if let Some(h) = s.subs.lock().expect("subs").get(&queue)
            && h.alive()
        {
            return Ok(Resolved {
                topic: t,
                sub,
                handle: h.clone(),
            });
        }
        // A lagging view must not declare the state stream of a deleted subscription again.
        s.meta.sync().await?;
        let current = s.meta.topic(topic).and_then(|now| {
            (now.generation == t.generation)
                .then(|| now.subs.get(name).cloned())
                .flatten()
        });
        if current
            .as_ref()
            .is_none_or(|c| c.generation != sub.generation)
        {
            return Err(not_found(topic, name));
        }
        rsm::declare_stream(&s.conn, &queue).await?;
        let timeout = self.inner.config.timeout;
        let node = self.inner.node.clone();
        let handle = match &sub.config {
            SubscriptionConfig::Stream(c) => Handle::Stream(Arc::new(StreamSub {
                rsm: Rsm::open(
                    &s.conn,
                    queue.clone(),
                    node,
                    GroupMachine::new(name, c.clone(), &sub.initial),
                    timeout,
                    OPEN_BUDGET,
                    self.snapshot_policy(),
                )
                .await?,
            })),
            SubscriptionConfig::Shared(c) => {
                let machine = SharedMachine::new(c.clone(), &sub.initial);
                let queues = machine.queues();
                Handle::Shared(Arc::new(SharedSub {
                    rsm: Rsm::open(
                        &s.conn,
                        queue.clone(),
                        node,
                        machine,
                        timeout,
                        OPEN_BUDGET,
                        self.snapshot_policy(),
                    )
                    .await?,
                    cache: Mutex::new((0..queues).map(|_| QueueCache::default()).collect()),
                    proposing: Mutex::new(std::collections::HashSet::new()),
                    redriving: tokio::sync::Mutex::new(()),
                }))
            }
        };
        let replayed = match &handle {
            Handle::Stream(h) => h.rsm.applied(),
            Handle::Shared(h) => h.rsm.applied(),
        };
        self.inner.replayed.fetch_add(replayed, Ordering::Relaxed);
        s.subs.lock().expect("subs").insert(queue, handle.clone());
        Ok(Resolved {
            topic: t,
            sub,
            handle,
        })
    }

    async fn stream_sub(
        &self,
        s: &Session,
        topic: &str,
        name: &str,
    ) -> Result<(TopicState, Arc<StreamSub>)> {
        let r = self.resolve(s, topic, name).await?;
        match r.handle {
            Handle::Stream(h) => Ok((r.topic, h)),
            Handle::Shared(_) => Err(wrong_kind(name, "shared", "stream")),
        }
    }

    async fn shared_sub(
        &self,
        s: &Session,
        topic: &str,
        name: &str,
    ) -> Result<(TopicState, SubState, Arc<SharedSub>)> {
        let r = self.resolve(s, topic, name).await?;
        match r.handle {
            Handle::Shared(h) => Ok((r.topic, r.sub, h)),
            Handle::Stream(_) => Err(wrong_kind(name, "stream", "shared")),
        }
    }

    /// One past the last data message of a partition (see [`crate::watch::Progress`]).
    async fn data_end(&self, s: &Session, topic: &str, t: &TopicState, p: u32) -> Result<u64> {
        Ok(self.watcher(s, topic, t, p).await?.progress().data_end)
    }

    /// Where `position` is in each partition of `topic` now.
    async fn resolve_positions(
        &self,
        s: &Session,
        topic: &str,
        t: &TopicState,
        position: &Position,
    ) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(t.config.partitions as usize);
        for p in 0..t.config.partitions {
            let info = self.partition_info(s, topic, t, p).await?;
            let (start, end) = (info.start_offset, info.high_watermark);
            out.push(match position {
                Position::Earliest => start,
                Position::Latest => end,
                Position::Offset(o) => (*o).clamp(start, end),
                Position::Timestamp(ts) => {
                    self.offset_for_time(
                        s,
                        &self.stream(topic, t.generation, p),
                        p,
                        start,
                        end,
                        *ts,
                    )
                    .await?
                }
            });
        }
        Ok(out)
    }

    // ---- lifecycle --------------------------------------------------------------------

    pub(crate) async fn create_subscription_inner(
        &self,
        topic: &str,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo> {
        let s = self.session().await?;
        // Creates are rare: decide on a fresh view.
        s.meta.sync().await?;
        let t = self.subscribable(&s, topic).await?;
        if let Some(existing) = t.subs.get(name) {
            return if existing.config == config {
                self.describe_subscription_inner(topic, name).await
            } else {
                Err(BrokerError::SubscriptionExists {
                    topic: topic.to_owned(),
                    subscription: name.to_owned(),
                })
            };
        }
        let start = match &config {
            SubscriptionConfig::Stream(c) => c.start,
            SubscriptionConfig::Shared(c) => c.start,
        };
        let initial = self.resolve_positions(&s, topic, &t, &start).await?;
        let offset = s
            .meta
            .append(Change::CreateSubscription {
                topic: topic.to_owned(),
                topic_generation: t.generation,
                name: name.to_owned(),
                config: config.clone(),
                initial,
                created_ms: self.now(),
            })
            .await?;
        let now = s
            .meta
            .topic(topic)
            .filter(|now| now.generation == t.generation);
        match now.as_ref().and_then(|now| now.subs.get(name)) {
            Some(sub) if sub.generation == offset => {
                // Ours: its state stream, and a shared one's topics (whose watchers on this
                // node start at their beginning).
                rsm::declare_stream(&s.conn, &self.sub_stream(topic, t.generation, name, offset))
                    .await?;
                if matches!(config, SubscriptionConfig::Shared(_)) {
                    for side in [
                        wharf_broker::names::dlq_topic(topic, name),
                        meta::retry_topic(topic, name),
                    ] {
                        if let Some(st) = s.meta.topic(&side) {
                            let queue = self.stream(&side, st.generation, 0);
                            amqp::timed(
                                self.inner.config.timeout,
                                "declaring a stream",
                                self.declare_stream(&s, &queue, &st.config),
                            )
                            .await?;
                            s.fresh.lock().expect("fresh").insert(queue);
                        }
                    }
                }
                self.describe_subscription_inner(topic, name).await
            }
            Some(sub) if sub.config == config => {
                self.describe_subscription_inner(topic, name).await
            }
            Some(_) => Err(BrokerError::SubscriptionExists {
                topic: topic.to_owned(),
                subscription: name.to_owned(),
            }),
            None if now.is_some() && matches!(config, SubscriptionConfig::Shared(_)) => {
                let dlq = wharf_broker::names::dlq_topic(topic, name);
                Err(BrokerError::invalid(
                    "subscription",
                    format!(
                        "its dead-letter topic {dlq:?} already belongs to another subscription; \
                         choose another name"
                    ),
                ))
            }
            None => Err(amqp::unavailable(
                &format!("creating {name}"),
                "the topic was deleted meanwhile; try again",
            )),
        }
    }

    /// Deletes a subscription's streams (its settings record is gone already).
    pub(crate) async fn drop_subscription_streams(
        &self,
        s: &Session,
        topic: &str,
        t: &TopicState,
        name: &str,
        sub: &SubState,
    ) -> Result<()> {
        let queue = self.sub_stream(topic, t.generation, name, sub.generation);
        s.subs.lock().expect("subs").remove(&queue);
        s.sub_attach.lock().expect("sub attach").remove(&queue);
        for q in [queue.clone(), rsm::snap_queue(&queue)] {
            amqp::timed(
                self.inner.config.timeout,
                "deleting a stream",
                self.delete_queue(s, &q),
            )
            .await?;
        }
        if matches!(sub.config, SubscriptionConfig::Shared(_)) {
            for side in [
                wharf_broker::names::dlq_topic(topic, name),
                meta::retry_topic(topic, name),
            ] {
                // Their settings went with the subscription's: named by its generation.
                let side_state = TopicState {
                    config: meta::side_topic_config(&Role::Retry),
                    generation: sub.generation,
                    created_ms: 0,
                    role: Role::Retry,
                    subs: BTreeMap::new(),
                };
                self.drop_topic_streams(s, &side, &side_state).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn delete_subscription_inner(&self, topic: &str, name: &str) -> Result<()> {
        let s = self.session().await?;
        let mut t = self.subscribable(&s, topic).await?;
        if !t.subs.contains_key(name) {
            s.meta.sync().await?;
            t = self.subscribable(&s, topic).await?;
        }
        let sub = t
            .subs
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(topic, name))?;
        s.meta
            .append(Change::DeleteSubscription {
                topic: topic.to_owned(),
                name: name.to_owned(),
                generation: sub.generation,
            })
            .await?;
        self.drop_subscription_streams(&s, topic, &t, name, &sub)
            .await
    }

    pub(crate) async fn list_subscriptions_inner(
        &self,
        topic: &str,
    ) -> Result<Vec<SubscriptionInfo>> {
        let s = self.session().await?;
        s.meta.sync().await?;
        let t = self.subscribable(&s, topic).await?;
        let mut out = Vec::with_capacity(t.subs.len());
        for name in t.subs.keys() {
            match self.describe_subscription_inner(topic, name).await {
                Ok(info) => out.push(info),
                // Deleted meanwhile.
                Err(BrokerError::SubscriptionNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub(crate) async fn describe_subscription_inner(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionInfo> {
        let s = self.session().await?;
        let r = self.resolve(&s, topic, name).await?;
        let t = &r.topic;
        let now = self.now();
        match &r.handle {
            Handle::Stream(h) => {
                h.rsm.sync().await?;
                let (committed, members, generation) = h
                    .rsm
                    .view(|g| (g.committed().to_vec(), g.members_at(now), g.generation()));
                let mut partitions = Vec::with_capacity(committed.len());
                for (p, committed) in committed.into_iter().enumerate() {
                    let info = self.partition_info(&s, topic, t, p as u32).await?;
                    let data_end = self.data_end(&s, topic, t, p as u32).await?;
                    partitions.push(SubscriptionPartition {
                        partition: p as u32,
                        committed,
                        lag: data_end.saturating_sub(committed.max(info.start_offset)),
                        behind_retention: committed < info.start_offset,
                    });
                }
                Ok(SubscriptionInfo {
                    topic: topic.to_owned(),
                    name: name.to_owned(),
                    config: r.sub.config.clone(),
                    partitions,
                    members,
                    generation,
                    in_flight: 0,
                    delayed: 0,
                    dead_lettered: 0,
                })
            }
            Handle::Shared(h) => {
                h.rsm.sync().await?;
                self.fill(&s, topic, name, h).await?;
                // What ran out while nobody looked is accounted for now (best effort: a
                // describe must answer even when a dead letter cannot move now).
                let _ = self.move_due(&s, topic, name, &r.sub, h, now).await;
                let counts = h.rsm.view(|m| m.counts(now));
                // Fresh messages whose own time is still ahead count as delayed too.
                let waiting = {
                    let cache = h.cache.lock().expect("cache");
                    h.rsm.view(|m| {
                        cache
                            .iter()
                            .enumerate()
                            .flat_map(|(q, c)| c.messages.iter().map(move |(o, msg)| (q, *o, msg)))
                            .filter(|(q, o, msg)| {
                                msg.as_ref().is_some_and(|e| e.deliver_at > now)
                                    && matches!(
                                        m.state_at(*q, *o, now),
                                        Some((Now::Available { at }, _)) if at <= now
                                    )
                            })
                            .count() as u64
                    })
                };
                let mut partitions = Vec::with_capacity(t.config.partitions as usize);
                for p in 0..t.config.partitions {
                    let info = self.partition_info(&s, topic, t, p).await?;
                    let data_end = self.data_end(&s, topic, t, p).await?;
                    let (start, lost) = h.rsm.view(|m| (m.start(p as usize), m.lost(p as usize)));
                    partitions.push(SubscriptionPartition {
                        partition: p,
                        committed: start,
                        lag: data_end.saturating_sub(start),
                        behind_retention: lost || start < info.start_offset,
                    });
                }
                Ok(SubscriptionInfo {
                    topic: topic.to_owned(),
                    name: name.to_owned(),
                    config: r.sub.config.clone(),
                    partitions,
                    members: counts.members,
                    generation: 0,
                    in_flight: counts.in_flight,
                    delayed: counts.delayed + waiting,
                    dead_lettered: h.rsm.view(|m| m.dead_lettered()),
                })
            }
        }
    }

    // ---- stream subscriptions ---------------------------------------------------------

    async fn group_op(
        &self,
        topic: &str,
        name: &str,
        op: stream::Op,
    ) -> Result<(TopicState, GroupOutcome)> {
        let s = self.session().await?;
        let (t, h) = self.stream_sub(&s, topic, name).await?;
        let (_, outcome) = h.rsm.propose(op).await?;
        Ok((t, outcome))
    }

    fn membership(outcome: GroupOutcome) -> Result<Membership> {
        match outcome {
            GroupOutcome::Membership(r) => r,
            other => Err(BrokerError::Internal(format!(
                "a group record answered {other:?}"
            ))),
        }
    }

    pub(crate) async fn join_inner(
        &self,
        topic: &str,
        name: &str,
        member: Option<&str>,
    ) -> Result<Membership> {
        if let Some(id) = member
            && (id.is_empty() || id.len() > 200)
        {
            return Err(BrokerError::invalid(
                "member_id",
                "must be 1 to 200 characters",
            ));
        }
        let member = member.map_or_else(|| format!("m-{}", self.next_pub()), str::to_owned);
        let op = stream::Op::Join {
            now: self.now(),
            member,
        };
        Self::membership(self.group_op(topic, name, op).await?.1)
    }

    pub(crate) async fn heartbeat_inner(
        &self,
        topic: &str,
        name: &str,
        member: &str,
    ) -> Result<Membership> {
        let op = stream::Op::Heartbeat {
            now: self.now(),
            member: member.to_owned(),
        };
        Self::membership(self.group_op(topic, name, op).await?.1)
    }

    pub(crate) async fn leave_inner(&self, topic: &str, name: &str, member: &str) -> Result<()> {
        let op = stream::Op::Leave {
            now: self.now(),
            member: member.to_owned(),
        };
        match self.group_op(topic, name, op).await?.1 {
            GroupOutcome::Left(r) => r,
            other => Err(BrokerError::Internal(format!("a leave answered {other:?}"))),
        }
    }

    pub(crate) async fn commit_inner(
        &self,
        topic: &str,
        name: &str,
        member: &str,
        offsets: Vec<Committed>,
    ) -> Result<Vec<Committed>> {
        if offsets.is_empty() {
            return Err(BrokerError::invalid(
                "offsets",
                "at least one partition is required",
            ));
        }
        let s = self.session().await?;
        let (t, h) = self.stream_sub(&s, topic, name).await?;
        for c in &offsets {
            if c.partition >= t.config.partitions {
                continue; // not owned by anyone: the record answers not_assigned
            }
            let hw = self
                .high_watermark_at_least(&s, topic, &t, c.partition, c.offset)
                .await?;
            if c.offset > hw {
                return Err(BrokerError::invalid(
                    "offset",
                    format!(
                        "{} is beyond partition {}'s high watermark {hw}",
                        c.offset, c.partition
                    ),
                ));
            }
        }
        let op = stream::Op::Commit {
            now: self.now(),
            member: member.to_owned(),
            offsets: offsets.iter().map(|c| (c.partition, c.offset)).collect(),
        };
        match h.rsm.propose(op).await?.1 {
            GroupOutcome::Committed(r) => r,
            other => Err(BrokerError::Internal(format!(
                "a commit answered {other:?}"
            ))),
        }
    }

    pub(crate) async fn reset_inner(
        &self,
        topic: &str,
        name: &str,
        to: ResetTo,
    ) -> Result<Vec<Committed>> {
        let s = self.session().await?;
        let (t, h) = self.stream_sub(&s, topic, name).await?;
        let target: Vec<(u32, u64)> = match &to {
            ResetTo::Earliest | ResetTo::Latest | ResetTo::Timestamp(_) => {
                let position = match to {
                    ResetTo::Latest => Position::Latest,
                    ResetTo::Timestamp(ts) => Position::Timestamp(ts),
                    _ => Position::Earliest,
                };
                self.resolve_positions(&s, topic, &t, &position)
                    .await?
                    .into_iter()
                    .enumerate()
                    .map(|(p, o)| (p as u32, o))
                    .collect()
            }
            ResetTo::Offsets(list) => {
                for &(p, o) in list {
                    if p >= t.config.partitions {
                        return Err(BrokerError::invalid(
                            "partition",
                            format!("{p} does not exist"),
                        ));
                    }
                    let hw = self.high_watermark_at_least(&s, topic, &t, p, o).await?;
                    if o > hw {
                        return Err(BrokerError::invalid(
                            "offset",
                            format!("{o} is beyond partition {p}'s high watermark"),
                        ));
                    }
                }
                list.clone()
            }
        };
        match h
            .rsm
            .propose(stream::Op::Reset { committed: target })
            .await?
            .1
        {
            GroupOutcome::Committed(r) => r,
            other => Err(BrokerError::Internal(format!("a reset answered {other:?}"))),
        }
    }

    /// A partition's high watermark as this node's watcher knows it, waiting (up to the
    /// timeout) for it to reach `offset`: an offset learned through another node may not
    /// have reached this one yet.
    async fn high_watermark_at_least(
        &self,
        s: &Session,
        topic: &str,
        t: &TopicState,
        p: u32,
        offset: u64,
    ) -> Result<u64> {
        let w = self.watcher(s, topic, t, p).await?;
        if w.progress().end >= offset {
            return Ok(w.progress().end);
        }
        Ok(w.wait_for(self.inner.config.timeout, |pr| {
            pr.end >= offset || pr.failed
        })
        .await
        .end)
    }

    pub(crate) async fn fetch_inner(
        &self,
        topic: &str,
        name: &str,
        member: &str,
        request: FetchRequest,
    ) -> Result<Vec<StoredMessage>> {
        let s = self.session().await?;
        let (t, h) = self.stream_sub(&s, topic, name).await?;
        let deadline = tokio::time::Instant::now() + request.wait.min(MAX_WAIT);
        let max = request.max_messages.clamp(1, 10_000);
        let mut synced = false;
        loop {
            let mut changes = h.rsm.changes();
            changes.borrow_and_update();
            let now = self.now();
            let (generation, plan) = match h.rsm.view(|g| g.positions(member, now)) {
                Ok(p) => p,
                // Joined through another node a moment ago?
                Err(_) if !synced => {
                    synced = true;
                    h.rsm.sync().await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Fetching keeps a member alive: a heartbeat once a third of the timeout passed.
            let (last_seen, timeout) = h.rsm.view(|g| {
                (
                    g.last_seen(member, now).unwrap_or(now),
                    i64::try_from(g.config().session_timeout_ms).unwrap_or(i64::MAX),
                )
            });
            if now.saturating_sub(last_seen) > timeout / 3 {
                h.rsm
                    .propose(stream::Op::Heartbeat {
                        now,
                        member: member.to_owned(),
                    })
                    .await?;
            }
            let mut out: Vec<StoredMessage> = Vec::new();
            let mut advanced = Vec::new();
            let mut budget = request.max_bytes.clamp(1, MAX_READ_BYTES);
            let mut watchers = Vec::with_capacity(plan.len());
            for &(p, pos) in &plan {
                let w = self.watcher(&s, topic, &t, p).await?;
                let end = w.progress().end;
                watchers.push((w, pos));
                if out.len() >= max || budget == 0 || pos >= end {
                    continue;
                }
                let (messages, next) = self
                    .read_range(
                        &s,
                        &self.stream(topic, t.generation, p),
                        p,
                        pos,
                        end,
                        max - out.len(),
                        budget,
                    )
                    .await?;
                let returned = messages.len();
                let mut taken_to = None;
                for m in messages {
                    let size = m.size();
                    if !out.is_empty() && size > budget {
                        break;
                    }
                    budget = budget.saturating_sub(size);
                    taken_to = Some(m.offset + 1);
                    out.push(m);
                }
                // Up to what was taken; past fences only when nothing was left behind.
                let next = match taken_to {
                    Some(n) => n,
                    None if returned == 0 => next,
                    None => pos,
                };
                if next > pos {
                    advanced.push((p, next));
                }
            }
            if !advanced.is_empty() {
                let kept = h.rsm.view(|g| g.advance(member, generation, &advanced));
                if kept && !out.is_empty() {
                    return Ok(out);
                }
                if kept {
                    // Only fences were read: look again.
                    continue;
                }
                // The group rebalanced while we read: start over with the new assignment.
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            // Woken by a publish to an owned partition, a group change, or the deadline.
            let mut waits: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
                watchers
                    .into_iter()
                    .map(|(w, pos)| {
                        Box::pin(async move {
                            w.wait_for(MAX_WAIT, |pr| pr.end > pos || pr.failed).await;
                        }) as _
                    })
                    .collect();
            waits.push(Box::pin(async move {
                let _ = changes.changed().await;
            }));
            tokio::select! {
                _ = select_all(waits) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    // ---- shared subscriptions ---------------------------------------------------------

    /// Where each queue of a shared subscription reads.
    fn sources(&self, s: &Session, topic: &str, t: &TopicState, name: &str) -> Result<Vec<Source>> {
        let mut out: Vec<Source> = (0..t.config.partitions)
            .map(|p| Source {
                topic: topic.to_owned(),
                state: t.clone(),
                partition: p,
            })
            .collect();
        let retry = meta::retry_topic(topic, name);
        let state = s.meta.topic(&retry).ok_or_else(|| not_found(topic, name))?;
        out.push(Source {
            topic: retry,
            state,
            partition: 0,
        });
        Ok(out)
    }

    /// Reads each queue's window into the node's cache; returns each queue's end as seen
    /// (a waiting receive waits for messages past it).
    async fn fill(&self, s: &Session, topic: &str, name: &str, h: &SharedSub) -> Result<Vec<u64>> {
        let t = self.subscribable(s, topic).await?;
        let sources = self.sources(s, topic, &t, name)?;
        let now = self.now();
        let mut ends = Vec::with_capacity(sources.len());
        for (q, src) in sources.iter().enumerate() {
            let w = self
                .watcher(s, &src.topic, &src.state, src.partition)
                .await?;
            let end = w.progress().end;
            ends.push(end);
            let (start, window_end) = h.rsm.view(|m| (m.start(q), m.window_end(q, now)));
            let window_end = end.min(window_end);
            let mut from = {
                let mut cache = h.cache.lock().expect("cache");
                let c = &mut cache[q];
                c.trim(start);
                c.scanned
            };
            let queue = self.stream(&src.topic, src.state.generation, src.partition);
            // Retention may have passed the window's start even when there is nothing to
            // read (the probe is cached): the next acquire then moves the start up.
            let stream_start = self.start_offset(s, &queue, end).await?;
            {
                let mut cache = h.cache.lock().expect("cache");
                let c = &mut cache[q];
                c.floor = c.floor.max(stream_start);
            }
            if from >= window_end {
                continue;
            }
            while from < window_end {
                let (messages, next) = self
                    .read_range(
                        s,
                        &queue,
                        src.partition,
                        from,
                        window_end,
                        (window_end - from) as usize,
                        MAX_READ_BYTES,
                    )
                    .await?;
                let mut cache = h.cache.lock().expect("cache");
                let c = &mut cache[q];
                if c.scanned != from {
                    break; // another fill got there first
                }
                c.floor = c.floor.max(stream_start);
                let mut expected = from.max(stream_start);
                for m in messages {
                    for gap in expected..m.offset {
                        c.messages.insert(gap, None);
                    }
                    expected = m.offset + 1;
                    let size = m.size();
                    let entry = Entry {
                        key: m.key.as_deref().map(shared::key_hash),
                        deliver_at: deliver_at(&m),
                        body: (c.bytes + size <= BODY_BUDGET).then(|| {
                            c.bytes += size;
                            m
                        }),
                    };
                    c.messages.insert(expected - 1, Some(entry));
                }
                for gap in expected..next {
                    c.messages.insert(gap, None);
                }
                c.scanned = next;
                if next <= from {
                    break;
                }
                from = next;
            }
        }
        Ok(ends)
    }

    /// The messages at `wanted` (queue, offset): from the cache, the rest read (one read
    /// per queue over the span asked for).
    async fn bodies(
        &self,
        s: &Session,
        sources: &[Source],
        h: &SharedSub,
        wanted: &[(u32, u64)],
    ) -> Result<std::collections::HashMap<(u32, u64), StoredMessage>> {
        let mut out = std::collections::HashMap::new();
        let mut missing: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        {
            // The bodies leave the cache: what is granted or dead-lettered is read again if
            // it is ever available again.
            let mut cache = h.cache.lock().expect("cache");
            for &(q, o) in wanted {
                let c = &mut cache[q as usize];
                match c.messages.get_mut(&o) {
                    Some(Some(e)) => match e.body.take() {
                        Some(m) => {
                            c.bytes = c.bytes.saturating_sub(m.size());
                            out.insert((q, o), m);
                        }
                        None => missing.entry(q).or_default().push(o),
                    },
                    Some(None) => {}
                    None => missing.entry(q).or_default().push(o),
                }
            }
        }
        for (q, offsets) in missing {
            let (Some(&lo), Some(&hi)) = (offsets.iter().min(), offsets.iter().max()) else {
                continue;
            };
            let src = &sources[q as usize];
            let queue = self.stream(&src.topic, src.state.generation, src.partition);
            let mut from = lo;
            while from <= hi {
                let (messages, next) = self
                    .read_range_with(
                        s,
                        &queue,
                        src.partition,
                        (from, hi + 1),
                        (hi + 1 - from) as usize,
                        MAX_READ_BYTES,
                        false,
                    )
                    .await?;
                for m in messages {
                    if offsets.contains(&m.offset) {
                        out.insert((q, m.offset), m);
                    }
                }
                if next <= from {
                    break;
                }
                from = next;
            }
        }
        Ok(out)
    }

    /// Moves what is due for the dead-letter topic at `now` (claimed first, so one node
    /// moves each).
    async fn move_due(
        &self,
        s: &Session,
        topic: &str,
        name: &str,
        sub: &SubState,
        h: &SharedSub,
        now: i64,
    ) -> Result<()> {
        let due = h.rsm.view(|m| m.dead_at(now));
        if due.is_empty() {
            return Ok(());
        }
        let op = shared::Op::Claim {
            now,
            deadline: now.saturating_add(shared::FINISH_MS),
            items: due,
        };
        match h.rsm.propose(op).await?.1 {
            SharedOutcome::Claimed(finishes) => {
                self.move_to_dead_letters(s, topic, name, sub, h, finishes)
                    .await
            }
            other => Err(BrokerError::Internal(format!("a claim answered {other:?}"))),
        }
    }

    /// Publishes `finishes` to the dead-letter topic (in batches that fit a publish), then
    /// archives them.
    async fn move_to_dead_letters(
        &self,
        s: &Session,
        topic: &str,
        name: &str,
        sub: &SubState,
        h: &SharedSub,
        finishes: Vec<shared::Finish>,
    ) -> Result<()> {
        if finishes.is_empty() {
            return Ok(());
        }
        let t = self.subscribable(s, topic).await?;
        let sources = self.sources(s, topic, &t, name)?;
        let retry_q = sources.len() - 1;
        let now = self.now();
        let wanted: Vec<(u32, u64)> = finishes.iter().map(|f| (f.q, f.offset)).collect();
        let mut found = self.bodies(s, &sources, h, &wanted).await?;
        let dlq = wharf_broker::names::dlq_topic(topic, name);
        let mut batch: Vec<Message> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut archived = Vec::with_capacity(finishes.len());
        let mut gone = Vec::new();
        for f in &finishes {
            // Gone (retention) if not found: nothing to move.
            let Some(m) = found.remove(&(f.q, f.offset)) else {
                gone.push((f.q, f.offset));
                continue;
            };
            archived.push((f.q, f.offset));
            let m = if f.q as usize == retry_q {
                wharf_broker::dlq::as_original(m)
            } else {
                m
            };
            let letter = wharf_broker::dlq::dead_letter(
                &m,
                topic,
                f.deliveries,
                &f.reason,
                now,
                format!(
                    "dlq/{name}/{}/{}/{}/{}",
                    sub.generation, f.q, f.offset, f.deliveries
                ),
            );
            let size = letter.value.len()
                + letter.key.as_ref().map_or(0, |k| k.len())
                + letter
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            if !batch.is_empty() && (batch_bytes + size > MAX_READ_BYTES || batch.len() >= 500) {
                self.publish_inner(
                    &dlq,
                    std::mem::take(&mut batch),
                    PublishOptions::default(),
                    true,
                )
                .await?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(letter);
        }
        if !batch.is_empty() {
            self.publish_inner(&dlq, batch, PublishOptions::default(), true)
                .await?;
        }
        h.rsm
            .propose(shared::Op::Archive {
                items: archived,
                gone,
            })
            .await?;
        Ok(())
    }

    pub(crate) async fn receive_inner(
        &self,
        topic: &str,
        name: &str,
        request: ReceiveRequest,
    ) -> Result<Vec<Delivery>> {
        if request.max == 0 || request.max > 1000 {
            return Err(BrokerError::invalid("max", "must be within 1..=1000"));
        }
        let s = self.session().await?;
        let (t, sub, h) = self.shared_sub(&s, topic, name).await?;
        let config = h.rsm.view(|m| m.config().clone());
        let lease_ms = request.lease.map_or(config.lease_ms, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        });
        if !(100..=12 * 3_600_000).contains(&lease_ms) {
            return Err(BrokerError::invalid(
                "lease_ms",
                "must be within 100..=43200000",
            ));
        }
        let lease_ms = i64::try_from(lease_ms).unwrap_or(i64::MAX);
        let member = request.member.clone().unwrap_or_default();
        let sources = self.sources(&s, topic, &t, name)?;
        let retry_q = sources.len() - 1;
        let deadline = tokio::time::Instant::now() + request.wait.min(MAX_WAIT);
        loop {
            let mut changes = h.rsm.changes();
            changes.borrow_and_update();
            let now = self.now();
            // Best effort: a receive must not fail because a dead letter could not move now.
            let _ = self.move_due(&s, topic, name, &sub, &h, now).await;
            let ends = self.fill(&s, topic, name, &h).await?;
            let plan = self.plan(&h, retry_q, &member, request.max, now);
            if !plan.is_empty() {
                let lease = rand_u64();
                let op = shared::Op::Acquire {
                    now,
                    member: member.clone(),
                    deadline: now.saturating_add(lease_ms),
                    lease,
                    items: plan.items.clone(),
                    floors: plan.floors,
                    gaps: plan.gaps,
                    park: plan.park,
                };
                let reserved = Proposing {
                    sub: &h,
                    items: plan.items.iter().map(|&(q, o, _)| (q, o)).collect(),
                };
                let proposed = h.rsm.propose(op).await;
                drop(reserved);
                let granted = match proposed {
                    Ok((_, SharedOutcome::Acquired(g))) => g,
                    Ok((_, other)) => {
                        return Err(BrokerError::Internal(format!(
                            "an acquire answered {other:?}"
                        )));
                    }
                    Err(e) => {
                        // The record may have been written: give back what it leased.
                        self.release(&h, lease, &plan.items).await;
                        return Err(e);
                    }
                };
                if !granted.is_empty() {
                    return self
                        .deliver(&s, &sources, &h, &sub, granted, lease, now + lease_ms)
                        .await;
                }
                if !plan.items.is_empty() && tokio::time::Instant::now() < deadline {
                    // Others got there first: look again.
                    continue;
                }
            }
            let now_instant = tokio::time::Instant::now();
            if now_instant >= deadline {
                return Ok(Vec::new());
            }
            // Woken by a publish, a change of the state (an ack, a nack), something coming
            // due, or the deadline.
            let mut until_at = deadline;
            if let Some(at) = plan.wake_at {
                until_at = until_at.min(now_instant + until(self.now(), at));
            }
            let mut waits: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
                Vec::new();
            for (q, src) in sources.iter().enumerate() {
                let w: Arc<Watcher> = self
                    .watcher(&s, &src.topic, &src.state, src.partition)
                    .await?;
                // New messages past what this receive's fill saw (not past what it read: a
                // full window leaves messages unread, and they must not wake this at once).
                let seen = ends[q];
                waits.push(Box::pin(async move {
                    w.wait_for(MAX_WAIT, |pr| pr.end > seen || pr.failed).await;
                }));
            }
            waits.push(Box::pin(async move {
                let _ = changes.changed().await;
            }));
            tokio::select! {
                _ = select_all(waits) => {}
                _ = tokio::time::sleep_until(until_at) => {}
            }
        }
    }

    /// Gives back the leases of acquire `lease` (best effort: if this fails too, they run
    /// out at their deadline).
    async fn release(&self, h: &SharedSub, lease: u64, items: &[(u32, u64, Option<u64>)]) {
        let op = shared::Op::Release {
            lease,
            items: items.iter().map(|&(q, o, _)| (q, o)).collect(),
        };
        let _ = h.rsm.propose(op).await;
    }

    /// The deliveries of what an acquire granted.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &self,
        s: &Session,
        sources: &[Source],
        h: &SharedSub,
        sub: &SubState,
        granted: Vec<(u32, u64, u32)>,
        lease: u64,
        lease_deadline: i64,
    ) -> Result<Vec<Delivery>> {
        let retry_q = sources.len() - 1;
        let wanted: Vec<(u32, u64)> = granted.iter().map(|&(q, o, _)| (q, o)).collect();
        let mut found = match self.bodies(s, sources, h, &wanted).await {
            Ok(f) => f,
            Err(e) => {
                let items: Vec<_> = wanted.iter().map(|&(q, o)| (q, o, None)).collect();
                self.release(h, lease, &items).await;
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(granted.len());
        let mut lost = Vec::new();
        for (q, offset, deliveries) in granted {
            let Some(m) = found.remove(&(q, offset)) else {
                // Gone meanwhile (retention): give it back, the next fill records the gap.
                lost.push((q, offset, None));
                continue;
            };
            let message = if q as usize == retry_q {
                wharf_broker::dlq::as_original(m)
            } else {
                m
            };
            out.push(Delivery {
                ack_id: format!("{:x}.{q}.{offset}.{deliveries}", sub.generation),
                message,
                delivery_count: deliveries,
                lease_deadline,
            });
        }
        if !lost.is_empty() {
            // Gone (retention): recorded as holding nothing, so the next acquire finishes
            // them instead of proposing them again.
            {
                let mut cache = h.cache.lock().expect("cache");
                for &(q, o, _) in &lost {
                    cache[q as usize].messages.insert(o, None);
                }
            }
            self.release(h, lease, &lost).await;
        }
        Ok(out)
    }

    /// What a receive proposes from this node's view and cache.
    fn plan(&self, h: &SharedSub, retry_q: usize, member: &str, max: usize, now: i64) -> Plan {
        let mut cache = h.cache.lock().expect("cache");
        let mut proposing = h.proposing.lock().expect("proposing");
        let plan = h.rsm.view(|m| {
            let config = m.config();
            let held = m.held_by(member, now);
            let room = max.min((config.max_in_flight_per_member as usize).saturating_sub(held));
            let ordered = config.ordered_by_key;
            let mut keys = if ordered {
                m.keys_at(now)
            } else {
                Default::default()
            };
            let mut plan = Plan::default();
            let wake = |plan: &mut Plan, at: i64| {
                plan.wake_at = Some(plan.wake_at.map_or(at, |w| w.min(at)));
            };
            // The retry queue first: redriven messages are older than the partitions'.
            let order = std::iter::once(retry_q).chain(0..retry_q);
            for q in order {
                let c = &mut cache[q];
                if c.floor > m.start(q) {
                    plan.floors.push((q as u32, c.floor));
                }
                let may_park = m.may_park(q);
                let window_end = m.window_end(q, now);
                let mut unburden = Vec::new();
                for (&offset, entry) in &c.messages {
                    if offset >= window_end || (plan.items.len() >= room && !ordered) {
                        break;
                    }
                    if proposing.contains(&(q as u32, offset)) {
                        // Another receive here proposes it: it holds its key meanwhile.
                        if ordered
                            && let Some(Some(e)) = c.messages.get(&offset)
                            && let Some(k) = e.key
                        {
                            keys.entry(k).or_default().push((q as u32, offset, true));
                        }
                        continue;
                    }
                    let Some((state, deliveries)) = m.state_at(q, offset, now) else {
                        continue;
                    };
                    let Some(entry) = entry else {
                        if state != Now::Done {
                            plan.gaps.push((q as u32, offset));
                        }
                        continue;
                    };
                    match state {
                        Now::Available { at } => {
                            let due = at.max(entry.deliver_at);
                            let far = due > now.saturating_add(shared::PARK_AHEAD_MS);
                            if far
                                && at == 0
                                && deliveries == 0
                                && may_park
                                && plan.park.len() < 1000
                            {
                                // Fresh and far ahead: parked, out of the window.
                                plan.park.push((q as u32, offset, due));
                            }
                            if far {
                                unburden.push(offset);
                            }
                            let mut take = due <= now && plan.items.len() < room;
                            if due > now {
                                wake(&mut plan, due);
                            }
                            if ordered && let Some(k) = entry.key {
                                if SharedMachine::key_blocked(
                                    &keys,
                                    retry_q as u32,
                                    k,
                                    q as u32,
                                    offset,
                                ) {
                                    take = false;
                                }
                                keys.entry(k).or_default().push((q as u32, offset, take));
                            }
                            if take {
                                plan.items.push((q as u32, offset, entry.key));
                            }
                        }
                        Now::Leased { deadline, .. } => wake(&mut plan, deadline),
                        Now::Finishing | Now::Dead { .. } | Now::Done => {}
                    }
                }
                // Bodies of what waits long are read again when due.
                for offset in unburden {
                    c.drop_body(offset);
                }
            }
            plan
        });
        proposing.extend(plan.items.iter().map(|&(q, o, _)| (q, o)));
        plan
    }

    /// Parses an ack id of the subscription of generation `generation` with `queues` queues.
    fn parse_ack_id(
        id: &str,
        generation: u64,
        queues: usize,
    ) -> std::result::Result<(u32, u64, u32), &'static str> {
        let mut parts = id.split('.');
        let mut next = || parts.next().ok_or("bad_ack_id");
        let g = u64::from_str_radix(next()?, 16).map_err(|_| "bad_ack_id")?;
        let q: u32 = next()?.parse().map_err(|_| "bad_ack_id")?;
        let offset: u64 = next()?.parse().map_err(|_| "bad_ack_id")?;
        let deliveries: u32 = next()?.parse().map_err(|_| "bad_ack_id")?;
        if parts.next().is_some() || q as usize >= queues {
            return Err("bad_ack_id");
        }
        if g != generation {
            // An earlier subscription of the same name.
            return Err("lease_expired");
        }
        Ok((q, offset, deliveries))
    }

    pub(crate) async fn settle(
        &self,
        topic: &str,
        name: &str,
        ack_ids: &[String],
        how: shared::Settle,
    ) -> Result<Vec<AckOutcome>> {
        if ack_ids.is_empty() || ack_ids.len() > 10_000 {
            return Err(BrokerError::invalid("ack_ids", "give 1 to 10000 ack_ids"));
        }
        let s = self.session().await.map_err(amqp::for_topic(topic))?;
        let (_, sub, h) = self
            .shared_sub(&s, topic, name)
            .await
            .map_err(amqp::for_topic(topic))?;
        let queues = h.rsm.view(|m| m.queues());
        let parsed: Vec<_> = ack_ids
            .iter()
            .map(|id| Self::parse_ack_id(id, sub.generation, queues))
            .collect();
        let items: Vec<(u32, u64, u32)> = parsed.iter().filter_map(|p| p.ok()).collect();
        let mut settled = Vec::new();
        if !items.is_empty() {
            let op = shared::Op::Settle {
                now: self.now(),
                how,
                items,
            };
            settled = match h.rsm.propose(op).await?.1 {
                SharedOutcome::Settled(r) => r,
                other => {
                    return Err(BrokerError::Internal(format!(
                        "a settle answered {other:?}"
                    )));
                }
            };
        }
        let mut settled = settled.into_iter();
        let mut finishes = Vec::new();
        let outcomes = ack_ids
            .iter()
            .zip(parsed)
            .map(|(id, p)| {
                let error = match p {
                    Err(code) => Some(code.to_owned()),
                    Ok(_) => match settled.next() {
                        Some(Ok(finish)) => {
                            finishes.extend(finish);
                            None
                        }
                        Some(Err(code)) => Some(code.to_owned()),
                        None => Some("lease_expired".to_owned()),
                    },
                };
                AckOutcome {
                    ack_id: id.clone(),
                    error,
                }
            })
            .collect();
        self.move_to_dead_letters(&s, topic, name, &sub, &h, finishes)
            .await
            .map_err(amqp::for_topic(topic))?;
        Ok(outcomes)
    }

    pub(crate) async fn dead_letters_inner(
        &self,
        topic: &str,
        name: &str,
        request: ReadRequest,
    ) -> Result<ReadResult> {
        let s = self.session().await.map_err(amqp::for_topic(topic))?;
        self.shared_sub(&s, topic, name)
            .await
            .map_err(amqp::for_topic(topic))?;
        self.read_inner(&wharf_broker::names::dlq_topic(topic, name), request)
            .await
    }

    pub(crate) async fn redrive_inner(&self, topic: &str, name: &str, max: usize) -> Result<u64> {
        if max == 0 || max > 100_000 {
            return Err(BrokerError::invalid("max", "must be within 1..=100000"));
        }
        let s = self.session().await?;
        let (_, _, h) = self.shared_sub(&s, topic, name).await?;
        let _one_at_a_time = h.redriving.lock().await;
        h.rsm.sync().await?;
        let dlq = wharf_broker::names::dlq_topic(topic, name);
        let retry = meta::retry_topic(topic, name);
        let mut moved = 0u64;
        while (moved as usize) < max {
            let cursor = h.rsm.view(|m| m.redrive_cursor());
            let r = self
                .read_inner(
                    &dlq,
                    ReadRequest {
                        max_messages: (max - moved as usize).min(1000),
                        ..ReadRequest::new(0, Position::Offset(cursor))
                    },
                )
                .await?;
            if r.messages.is_empty() {
                if r.next_offset > cursor {
                    // Only fences: move past them.
                    h.rsm
                        .propose(shared::Op::Redrive {
                            from: cursor,
                            cursor: r.next_offset,
                            moved: 0,
                        })
                        .await?;
                    continue;
                }
                break;
            }
            let copies: Vec<Message> = r
                .messages
                .iter()
                .map(|m| Message {
                    key: m.key.clone(),
                    value: m.value.clone(),
                    headers: wharf_broker::dlq::redriven(&m.headers),
                    partition: Some(0),
                })
                .collect();
            let n = copies.len() as u64;
            // The copies are stored before the cursor moves past them: a crash in between
            // puts them back twice (at-least-once), never zero times.
            self.publish_inner(&retry, copies, PublishOptions::default(), true)
                .await?;
            h.rsm
                .propose(shared::Op::Redrive {
                    from: cursor,
                    cursor: r.next_offset,
                    moved: n,
                })
                .await?;
            moved += n;
        }
        Ok(moved)
    }
}

/// Messages a receive of this node is proposing (see [`SharedSub::proposing`]), released
/// when the proposal is decided or the receive is dropped.
struct Proposing<'a> {
    sub: &'a SharedSub,
    items: Vec<(u32, u64)>,
}

impl Drop for Proposing<'_> {
    fn drop(&mut self) {
        let mut proposing = self.sub.proposing.lock().expect("proposing");
        for item in &self.items {
            proposing.remove(item);
        }
    }
}

/// What a receive proposes.
#[derive(Default)]
struct Plan {
    items: Vec<(u32, u64, Option<u64>)>,
    park: Vec<(u32, u64, i64)>,
    floors: Vec<(u32, u64)>,
    gaps: Vec<(u32, u64)>,
    wake_at: Option<i64>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.items.is_empty()
            && self.park.is_empty()
            && self.gaps.is_empty()
            && self.floors.is_empty()
    }
}

/// A random 64-bit value (lease ids).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
