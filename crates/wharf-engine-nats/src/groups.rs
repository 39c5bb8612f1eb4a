//! Stream subscriptions (consumer groups) on NATS: built by Wharf, state in the KV bucket.
//!
//! Each stream subscription keeps one JSON document, [`GroupDoc`], in the metadata bucket
//! under `group/{topic}/{sub}` (`/` appears in no topic or subscription name): the generation,
//! the committed offset of every partition, and per member its last-seen time (Wharf's
//! clock) and its fetch positions. Every change is a read-modify-write with the KV
//! revision as compare-and-set, retried on conflict, so any number of stateless Wharf nodes
//! on one NATS agree, and an answer (commit, join, reset, ...) is durable in NATS before it
//! is given.
//!
//! - Assignment is not stored: partition `p` belongs to the `p % n`-th of the `n` member ids
//!   in sorted order ([`owner_of`]), so it follows from the member set. Every membership
//!   change (join of a new id, leave, session expiry) starts a new generation; a reset
//!   starts one too, as on the embedded engine.
//! - A member silent for longer than `session_timeout_ms` is removed by whichever operation
//!   next touches the group (describe included); the removal is written with that
//!   operation's own change, or on its own if the operation changes nothing else.
//! - Fetch positions live in the document, so a member may fetch through any node. A member
//!   without a position on an owned partition reads from the committed offset: after a
//!   rebalance it keeps its positions only on the partitions it keeps, a reset clears every
//!   member's positions, and a join with an id already in the group (a client that
//!   restarted and lost what it fetched but did not commit) clears that member's positions.
//! - Fetch reads the owned partitions without holding anything, then records the new
//!   positions only if the generation and the member's positions are still those it read
//!   from (else it reads again, so nothing is handed out twice to one member and nothing
//!   is handed out under a stale assignment). A fetch that finds nothing listens on the
//!   owned partitions' subjects (subscribed before reading, so no publish is missed) in
//!   slices of at most [`WAIT_SLICE`], re-reading the group between slices to see a
//!   rebalance or reset made on any node. A fetch refreshes the member's last-seen time
//!   when it is older than a quarter of the session timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use wharf_broker::{
    BrokerError, Committed, FetchRequest, Membership, Position, ResetTo, Result, StoredMessage,
    StreamConfig, SubscriptionConfig, SubscriptionInfo, SubscriptionPartition,
};

use crate::{NatsEngine, unavailable};

/// The longest a waiting fetch listens before it looks at the group again (to notice a
/// rebalance or reset made on another node).
const WAIT_SLICE: Duration = Duration::from_secs(1);
/// Read-modify-write attempts on a group document before giving up under contention.
const MAX_ATTEMPTS: u32 = 100;
/// Longest member id a client may choose.
const MAX_MEMBER_ID: usize = 200;

/// The KV key of a stream subscription's group document.
fn group_key(topic: &str, sub: &str) -> String {
    format!("group/{topic}/{sub}")
}

/// `invalid_argument` on `field`.
fn invalid(field: &'static str, reason: impl Into<String>) -> BrokerError {
    BrokerError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

/// A random number, different per call (member ids of a re-created subscription never
/// repeat those of the one before it).
fn nonce() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// The owner of partition `p` among `members` member ids, as an index into the sorted ids:
/// round-robin, `None` when there are no members.
pub(crate) fn owner_of(members: usize, p: u32) -> Option<usize> {
    (members > 0).then(|| p as usize % members)
}

/// The partitions (ascending) the `index`-th of `members` sorted member ids owns among
/// `partitions`: the inverse of [`owner_of`].
pub(crate) fn assigned(index: usize, members: usize, partitions: u32) -> Vec<u32> {
    (0..partitions)
        .filter(|&p| owner_of(members, p) == Some(index))
        .collect()
}

/// One member of a group, as the group document keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberDoc {
    /// When it was last heard from (Wharf's clock, ms).
    pub(crate) last_seen: i64,
    /// How far it has fetched, per owned partition; a partition without an entry is read
    /// from the committed offset.
    #[serde(default)]
    pub(crate) positions: BTreeMap<u32, u64>,
}

/// A stream subscription's state: what `group/{topic}/{sub}` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupDoc {
    /// Bumped by every membership change and every reset.
    pub(crate) generation: u64,
    /// Committed offset (next to consume) per partition.
    pub(crate) committed: Vec<u64>,
    /// Live members by id (sorted: the assignment follows from this order).
    #[serde(default)]
    pub(crate) members: BTreeMap<String, MemberDoc>,
    /// Counter of minted member ids.
    #[serde(default)]
    pub(crate) next_member: u64,
    /// Random per document, part of minted member ids.
    #[serde(default)]
    pub(crate) nonce: u32,
}

impl GroupDoc {
    /// A group without members, starting at `committed`.
    pub(crate) fn new(committed: Vec<u64>, nonce: u32) -> Self {
        Self {
            generation: 0,
            committed,
            members: BTreeMap::new(),
            next_member: 0,
            nonce,
        }
    }

    fn partitions(&self) -> u32 {
        u32::try_from(self.committed.len()).unwrap_or(u32::MAX)
    }

    /// The member owning partition `p` in the current generation.
    pub(crate) fn owner(&self, p: u32) -> Option<&str> {
        if p >= self.partitions() {
            return None;
        }
        let i = owner_of(self.members.len(), p)?;
        self.members.keys().nth(i).map(String::as_str)
    }

    /// The partitions `member` owns, ascending (none if it is not a member).
    pub(crate) fn owned(&self, member: &str) -> Vec<u32> {
        match self.members.keys().position(|id| id == member) {
            Some(i) => assigned(i, self.members.len(), self.partitions()),
            None => Vec::new(),
        }
    }

    pub(crate) fn membership(&self, member: &str) -> Membership {
        Membership {
            member_id: member.to_owned(),
            generation: self.generation,
            partitions: self.owned(member),
        }
    }

    /// The member, or `unknown_member`.
    fn member_mut(&mut self, sub: &str, member: &str) -> Result<&mut MemberDoc> {
        self.members
            .get_mut(member)
            .ok_or_else(|| BrokerError::UnknownMember {
                subscription: sub.to_owned(),
                member: member.to_owned(),
            })
    }

    /// Where `member` reads partition `p` from: its position, else the committed offset.
    pub(crate) fn position(&self, member: &str, p: u32) -> u64 {
        let committed = self.committed.get(p as usize).copied().unwrap_or(0);
        self.members
            .get(member)
            .and_then(|m| m.positions.get(&p).copied())
            .unwrap_or(committed)
    }

    /// The member's owned partitions with where it reads each from.
    pub(crate) fn plan(&self, member: &str) -> Vec<(u32, u64)> {
        self.owned(member)
            .into_iter()
            .map(|p| (p, self.position(member, p)))
            .collect()
    }

    /// New generation; members keep their positions only on the partitions they keep.
    pub(crate) fn rebalance(&mut self) {
        self.generation += 1;
        let owned: Vec<Vec<u32>> = self.members.keys().map(|id| self.owned(id)).collect();
        for (m, owned) in self.members.values_mut().zip(owned) {
            m.positions.retain(|p, _| owned.contains(p));
        }
    }

    /// Removes the members silent for longer than `timeout_ms` at `now`; rebalances if any
    /// were. True if something changed.
    pub(crate) fn expire(&mut self, now: i64, timeout_ms: u64) -> bool {
        let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
        let before = self.members.len();
        self.members
            .retain(|_, m| now.saturating_sub(m.last_seen) <= timeout);
        let changed = self.members.len() != before;
        if changed {
            self.rebalance();
        }
        changed
    }

    /// Joins `member` (a minted id if `None`); a new member rebalances the group, a known
    /// one restarts from the committed offsets. The joined id.
    pub(crate) fn join(&mut self, member: Option<&str>, now: i64) -> String {
        let id = match member {
            Some(id) => id.to_owned(),
            None => loop {
                self.next_member += 1;
                let id = format!("m-{:08x}-{:x}", self.nonce, self.next_member);
                if !self.members.contains_key(&id) {
                    break id;
                }
            },
        };
        match self.members.get_mut(&id) {
            Some(m) => {
                m.last_seen = now;
                m.positions.clear();
            }
            None => {
                self.members.insert(
                    id.clone(),
                    MemberDoc {
                        last_seen: now,
                        positions: BTreeMap::new(),
                    },
                );
                self.rebalance();
            }
        }
        id
    }

    /// Removes `member` and rebalances, or `unknown_member`.
    pub(crate) fn leave(&mut self, sub: &str, member: &str) -> Result<()> {
        self.member_mut(sub, member)?;
        self.members.remove(member);
        self.rebalance();
        Ok(())
    }

    /// Applies a commit by `member` (`high_watermark` of each partition committed): all or
    /// nothing, never moving an offset back. The offsets in force for the partitions asked.
    pub(crate) fn commit(
        &mut self,
        sub: &str,
        member: &str,
        offsets: &[Committed],
        high_watermark: impl Fn(u32) -> u64,
        now: i64,
    ) -> Result<Vec<Committed>> {
        self.member_mut(sub, member)?;
        for c in offsets {
            if self.owner(c.partition) != Some(member) {
                return Err(BrokerError::NotAssigned {
                    member: member.to_owned(),
                    partition: c.partition,
                    generation: self.generation,
                });
            }
            let hw = high_watermark(c.partition);
            if c.offset > hw {
                return Err(invalid(
                    "offset",
                    format!(
                        "{} is beyond partition {}'s high watermark {hw}",
                        c.offset, c.partition
                    ),
                ));
            }
        }
        self.member_mut(sub, member)?.last_seen = now;
        for c in offsets {
            let slot = &mut self.committed[c.partition as usize];
            *slot = (*slot).max(c.offset);
        }
        Ok(offsets
            .iter()
            .map(|c| Committed {
                partition: c.partition,
                offset: self.committed[c.partition as usize],
            })
            .collect())
    }

    /// Sets the committed offsets of the partitions in `targets` (others unchanged), clears
    /// every member's positions and starts a new generation. Every partition's offset.
    pub(crate) fn reset(&mut self, targets: &[(u32, u64)]) -> Vec<Committed> {
        for &(p, o) in targets {
            if let Some(slot) = self.committed.get_mut(p as usize) {
                *slot = o;
            }
        }
        for m in self.members.values_mut() {
            m.positions.clear();
        }
        self.generation += 1;
        self.committed
            .iter()
            .enumerate()
            .map(|(p, &offset)| Committed {
                partition: p as u32,
                offset,
            })
            .collect()
    }
}

/// A stream subscription being operated on.
struct Group<'a> {
    topic: &'a str,
    sub: &'a str,
    config: StreamConfig,
    partitions: u32,
}

/// What a fetch pass reads: the generation and the member's partitions with positions.
struct Plan {
    generation: u64,
    parts: Vec<(u32, u64)>,
}

impl NatsEngine {
    /// The stream subscription's settings and its topic's partition count, or the error
    /// (topic or subscription not found, shared subscription).
    async fn group<'a>(&self, topic: &'a str, sub: &'a str) -> Result<Group<'a>> {
        let config = self.require_stream_sub(topic, sub).await?;
        let partitions = self.require_topic(topic).await?.partitions;
        Ok(Group {
            topic,
            sub,
            config,
            partitions,
        })
    }

    /// The offset `position` designates on partition `p` (an offset is clamped to what
    /// the partition holds).
    async fn resolve(&self, topic: &str, p: u32, position: Position) -> Result<u64> {
        let (start, hw) = self.partition_state(topic, p).await?;
        Ok(match position {
            Position::Earliest => start,
            Position::Latest => hw,
            Position::Offset(o) => o.clamp(start, hw),
            Position::Timestamp(t) => {
                let stream = self.inner.names.stream(topic, p);
                self.offset_for_time(&stream, p, start, hw, t).await?
            }
        })
    }

    /// `position` resolved on every partition.
    async fn resolve_all(
        &self,
        topic: &str,
        partitions: u32,
        position: Position,
    ) -> Result<Vec<u64>> {
        try_join_all((0..partitions).map(|p| self.resolve(topic, p, position))).await
    }

    /// A fresh group document starting where `config` says.
    async fn initial_group(
        &self,
        topic: &str,
        config: &StreamConfig,
        partitions: u32,
    ) -> Result<GroupDoc> {
        let committed = self.resolve_all(topic, partitions, config.start).await?;
        Ok(GroupDoc::new(committed, nonce()))
    }

    /// The group document and its revision, `None` if there is none.
    async fn load_group(&self, key: &str) -> Result<Option<(GroupDoc, u64)>> {
        let entry = self
            .inner
            .meta
            .entry(key)
            .await
            .map_err(|e| unavailable("reading a stream subscription's state", e))?;
        match entry {
            Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
                let doc = serde_json::from_slice(&e.value).map_err(|err| {
                    BrokerError::Internal(format!(
                        "{key}: unreadable group state in NATS KV: {err}"
                    ))
                })?;
                Ok(Some((doc, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Read-modify-write of the group document: expires silent members, applies `f` (given
    /// the clock's time), and writes the result back if anything changed, with the read
    /// revision as compare-and-set, retrying from a fresh read on conflict. `f` may run
    /// several times; when it fails nothing is written. A missing document (a creation
    /// that stopped halfway, or one still under way) is created as creation would; one
    /// made this way for a subscription being deleted is left behind, and replaced when a
    /// subscription of that name is created again (`group_create` with `fresh`).
    async fn update_group<T>(
        &self,
        g: &Group<'_>,
        mut f: impl FnMut(&mut GroupDoc, i64) -> Result<T>,
    ) -> Result<T> {
        let key = group_key(g.topic, g.sub);
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 2 {
                tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)))).await;
            }
            let (mut doc, revision) = match self.load_group(&key).await? {
                Some(found) => found,
                None => {
                    let doc = self.initial_group(g.topic, &g.config, g.partitions).await?;
                    match self.inner.meta.create(&key, encode(&doc)?).await {
                        Ok(revision) => (doc, revision),
                        Err(e)
                            if e.kind()
                                == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists =>
                        {
                            continue;
                        }
                        Err(e) => {
                            return Err(unavailable("creating a stream subscription's state", e));
                        }
                    }
                }
            };
            let before = doc.clone();
            doc.committed.resize(g.partitions as usize, 0);
            let now = self.inner.clock.now_ms();
            doc.expire(now, g.config.session_timeout_ms);
            let out = f(&mut doc, now)?;
            if doc == before {
                return Ok(out);
            }
            match self.inner.meta.update(&key, encode(&doc)?, revision).await {
                Ok(_) => return Ok(out),
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(unavailable("writing a stream subscription's state", e)),
            }
        }
        Err(unavailable(
            &format!("updating subscription {}/{}", g.topic, g.sub),
            "too many concurrent changes",
        ))
    }

    /// Creates the group's state. `fresh`: this call created the subscription, so state
    /// left behind by an earlier subscription of that name is replaced; otherwise existing
    /// state is kept.
    pub(crate) async fn group_create(
        &self,
        topic: &str,
        name: &str,
        config: &StreamConfig,
        partitions: u32,
        fresh: bool,
    ) -> Result<()> {
        let key = group_key(topic, name);
        if !fresh && self.load_group(&key).await?.is_some() {
            return Ok(());
        }
        let value = encode(&self.initial_group(topic, config, partitions).await?)?;
        // Created, never overwritten: a document that exists was made by a concurrent create
        // (or a first touch) of this subscription — a delete removes it before the registry
        // key, so none is left over from an earlier subscription of the name.
        let _ = fresh;
        match self.inner.meta.create(&key, value).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                Ok(())
            }
            Err(e) => Err(unavailable(&format!("creating subscription {name}"), e)),
        }
    }

    /// Removes the group's state (before the subscription's registry key).
    pub(crate) async fn group_delete(&self, topic: &str, name: &str) -> Result<()> {
        self.inner
            .meta
            .purge(group_key(topic, name))
            .await
            .map_err(|e| unavailable(&format!("deleting subscription {name}"), e))
    }

    /// The subscription as it is: committed offsets, lag, members, generation.
    pub(crate) async fn group_info(
        &self,
        topic: &str,
        name: &str,
        config: &StreamConfig,
    ) -> Result<SubscriptionInfo> {
        let g = Group {
            topic,
            sub: name,
            config: config.clone(),
            partitions: self.require_topic(topic).await?.partitions,
        };
        let doc = self.update_group(&g, |doc, _| Ok(doc.clone())).await?;
        let states =
            try_join_all((0..g.partitions).map(|p| self.partition_state(topic, p))).await?;
        Ok(SubscriptionInfo {
            topic: topic.to_owned(),
            name: name.to_owned(),
            config: SubscriptionConfig::Stream(config.clone()),
            partitions: states
                .iter()
                .enumerate()
                .map(|(p, &(start, hw))| {
                    let committed = doc.committed.get(p).copied().unwrap_or(0);
                    SubscriptionPartition {
                        partition: p as u32,
                        committed,
                        lag: hw.saturating_sub(committed.max(start)),
                        behind_retention: committed < start,
                    }
                })
                .collect(),
            members: doc.members.keys().cloned().collect(),
            generation: doc.generation,
            in_flight: 0,
            delayed: 0,
            dead_lettered: 0,
        })
    }

    /// Joins (or rejoins) the group.
    pub(crate) async fn group_join(
        &self,
        topic: &str,
        sub: &str,
        member: Option<&str>,
    ) -> Result<Membership> {
        let g = self.group(topic, sub).await?;
        if let Some(id) = member
            && (id.is_empty() || id.len() > MAX_MEMBER_ID)
        {
            return Err(invalid(
                "member_id",
                format!("must be 1 to {MAX_MEMBER_ID} characters"),
            ));
        }
        self.update_group(&g, |doc, now| {
            let id = doc.join(member, now);
            Ok(doc.membership(&id))
        })
        .await
    }

    /// Keeps a member alive; its current assignment.
    pub(crate) async fn group_heartbeat(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
    ) -> Result<Membership> {
        let g = self.group(topic, sub).await?;
        self.update_group(&g, |doc, now| {
            doc.member_mut(sub, member)?.last_seen = now;
            Ok(doc.membership(member))
        })
        .await
    }

    /// Leaves the group; the others get its partitions.
    pub(crate) async fn group_leave(&self, topic: &str, sub: &str, member: &str) -> Result<()> {
        let g = self.group(topic, sub).await?;
        self.update_group(&g, |doc, _| doc.leave(sub, member)).await
    }

    /// Reads the member's partitions from `plan` without waiting: up to `max_messages`
    /// and about `max_bytes` (whole messages, at least one) across them, in partition
    /// order. The messages and the new position of each partition read.
    async fn read_plan(
        &self,
        topic: &str,
        plan: &[(u32, u64)],
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredMessage>, Vec<(u32, u64)>)> {
        let states =
            try_join_all(plan.iter().map(|&(p, _)| self.partition_state(topic, p))).await?;
        let mut out: Vec<StoredMessage> = Vec::new();
        let mut advanced = Vec::new();
        let mut budget = max_bytes;
        'partitions: for (&(p, pos), &(_, hw)) in plan.iter().zip(&states) {
            if out.len() >= max_messages || budget == 0 {
                break;
            }
            if pos >= hw {
                continue;
            }
            // The high watermark was just looked up: read without looking again.
            let read = self
                .read_known(topic, p, pos, hw, max_messages - out.len(), budget)
                .await?;
            let mut next = pos;
            for m in read {
                let size = m.size();
                // Whole messages up to about max_bytes, but always at least one.
                if !out.is_empty() && size > budget {
                    if next > pos {
                        advanced.push((p, next));
                    }
                    break 'partitions;
                }
                budget = budget.saturating_sub(size);
                next = m.offset + 1;
                out.push(m);
            }
            if next > pos {
                advanced.push((p, next));
            }
        }
        Ok((out, advanced))
    }

    /// Messages from the member's partitions after what it fetched, waiting up to
    /// `request.wait` if there are none.
    pub(crate) async fn group_fetch(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        request: FetchRequest,
    ) -> Result<Vec<StoredMessage>> {
        let g = self.group(topic, sub).await?;
        let deadline = tokio::time::Instant::now() + request.wait.min(crate::MAX_WAIT);
        let max_messages = request.max_messages.clamp(1, crate::MAX_READ_MESSAGES);
        let max_bytes = request.max_bytes.clamp(1, crate::MAX_READ_BYTES);
        let refresh = i64::try_from(g.config.session_timeout_ms / 4).unwrap_or(i64::MAX);
        let slice = WAIT_SLICE.min(Duration::from_millis(g.config.session_timeout_ms / 4));
        loop {
            let plan = self
                .update_group(&g, |doc, now| {
                    let generation = doc.generation;
                    let m = doc.member_mut(sub, member)?;
                    if now.saturating_sub(m.last_seen) >= refresh {
                        m.last_seen = now;
                    }
                    Ok(Plan {
                        generation,
                        parts: doc.plan(member),
                    })
                })
                .await?;
            // Listen before reading, so a publish after the read is not missed.
            let mut listening = Vec::new();
            if tokio::time::Instant::now() < deadline {
                for &(p, _) in &plan.parts {
                    let subject = self.inner.names.subject(topic, p);
                    listening.push(
                        self.inner
                            .client
                            .subscribe(subject)
                            .await
                            .map_err(|e| unavailable("waiting for a publish", e))?,
                    );
                }
            }
            let (messages, advanced) = self
                .read_plan(topic, &plan.parts, max_messages, max_bytes)
                .await?;
            if !messages.is_empty() {
                let recorded = self
                    .update_group(&g, |doc, now| {
                        let current = doc.generation == plan.generation
                            && doc.members.contains_key(member)
                            && plan
                                .parts
                                .iter()
                                .all(|&(p, pos)| doc.position(member, p) == pos);
                        if !current {
                            return Ok(false);
                        }
                        let m = doc.member_mut(sub, member)?;
                        m.positions.extend(advanced.iter().copied());
                        m.last_seen = now;
                        Ok(true)
                    })
                    .await?;
                if recorded {
                    return Ok(messages);
                }
                // The group rebalanced or was reset, or another fetch of this member moved
                // on while we read: nothing was handed out; read again.
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(messages);
            }
            let wait = (deadline - now).min(slice);
            if listening.is_empty() {
                tokio::time::sleep(wait).await;
            } else {
                let mut any = futures_util::stream::select_all(listening);
                let _ = tokio::time::timeout(wait, any.next()).await;
            }
        }
    }

    /// Commits offsets of partitions the member owns, durably; the offsets in force.
    pub(crate) async fn group_commit(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        offsets: Vec<Committed>,
    ) -> Result<Vec<Committed>> {
        let g = self.group(topic, sub).await?;
        if offsets.is_empty() {
            return Err(invalid("offsets", "at least one partition is required"));
        }
        let mut asked: Vec<u32> = offsets
            .iter()
            .map(|c| c.partition)
            .filter(|&p| p < g.partitions)
            .collect();
        asked.sort_unstable();
        asked.dedup();
        let states = try_join_all(asked.iter().map(|&p| self.partition_state(topic, p))).await?;
        let hws: BTreeMap<u32, u64> = asked
            .iter()
            .zip(&states)
            .map(|(&p, &(_, hw))| (p, hw))
            .collect();
        let hw = |p: u32| hws.get(&p).copied().unwrap_or(0);
        self.update_group(&g, |doc, now| doc.commit(sub, member, &offsets, hw, now))
            .await
    }

    /// Moves the committed offsets; members continue from there.
    pub(crate) async fn group_reset(
        &self,
        topic: &str,
        sub: &str,
        to: ResetTo,
    ) -> Result<Vec<Committed>> {
        let g = self.group(topic, sub).await?;
        let position = match &to {
            ResetTo::Earliest => Some(Position::Earliest),
            ResetTo::Latest => Some(Position::Latest),
            ResetTo::Timestamp(t) => Some(Position::Timestamp(*t)),
            ResetTo::Offsets(_) => None,
        };
        let targets: Vec<(u32, u64)> = match (position, to) {
            (Some(position), _) => (0..g.partitions)
                .zip(self.resolve_all(topic, g.partitions, position).await?)
                .collect(),
            (None, ResetTo::Offsets(list)) => {
                for &(p, o) in &list {
                    if p >= g.partitions {
                        return Err(invalid("partition", format!("{p} does not exist")));
                    }
                    let (_, hw) = self.partition_state(topic, p).await?;
                    if o > hw {
                        return Err(invalid(
                            "offset",
                            format!("{o} is beyond partition {p}'s high watermark {hw}"),
                        ));
                    }
                }
                list
            }
            (None, _) => Vec::new(),
        };
        self.update_group(&g, |doc, _| Ok(doc.reset(&targets)))
            .await
    }
}

/// A group document as stored.
fn encode(doc: &GroupDoc) -> Result<Bytes> {
    serde_json::to_vec(doc)
        .map(Bytes::from)
        .map_err(|e| BrokerError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(partitions: usize) -> GroupDoc {
        GroupDoc::new(vec![0; partitions], 7)
    }

    #[test]
    fn round_robin_covers_every_partition_once() {
        for members in 1..8 {
            for partitions in 0..12u32 {
                let mut seen: Vec<u32> = (0..members)
                    .flat_map(|i| assigned(i, members, partitions))
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..partitions).collect::<Vec<_>>());
                let busy = (0..members)
                    .filter(|&i| !assigned(i, members, partitions).is_empty())
                    .count();
                assert_eq!(busy, members.min(partitions as usize));
            }
        }
        assert_eq!(owner_of(0, 3), None);
        assert_eq!(assigned(1, 2, 5), [1, 3]);
    }

    #[test]
    fn assignment_follows_sorted_ids() {
        let mut g = doc(5);
        g.join(Some("b"), 0);
        g.join(Some("a"), 0);
        assert_eq!(g.owned("a"), [0, 2, 4]);
        assert_eq!(g.owned("b"), [1, 3]);
        assert_eq!(g.owner(1), Some("b"));
        assert_eq!(g.owner(5), None);
        assert_eq!(g.owned("stranger"), Vec::<u32>::new());
        assert_eq!(g.generation, 2);
    }

    #[test]
    fn join_mints_distinct_ids_and_rejoin_keeps_generation() {
        let mut g = doc(2);
        let a = g.join(None, 0);
        let b = g.join(None, 0);
        assert_ne!(a, b);
        assert!(a.starts_with("m-00000007-"));
        let generation = g.generation;
        g.members.get_mut(&a).unwrap().positions.insert(0, 5);
        g.join(Some(&a), 10);
        assert_eq!(g.generation, generation, "a rejoin is no membership change");
        assert!(
            g.members[&a].positions.is_empty(),
            "a rejoin restarts at the commit"
        );
        assert_eq!(g.members[&a].last_seen, 10);
    }

    #[test]
    fn expiry_and_leave_rebalance_and_keep_positions_of_kept_partitions() {
        let mut g = doc(4);
        g.join(Some("a"), 0);
        g.join(Some("b"), 5);
        g.members.get_mut("a").unwrap().positions.insert(0, 3);
        assert!(!g.expire(10, 10));
        let generation = g.generation;
        assert!(g.expire(11, 10), "a was silent for 11 ms > 10");
        assert_eq!(g.generation, generation + 1);
        assert_eq!(g.owned("b"), [0, 1, 2, 3]);
        assert_eq!(g.position("b", 0), 0, "new owners start at the commit");
        g.join(Some("a"), 11);
        g.members.get_mut("b").unwrap().positions.insert(1, 4);
        g.members.get_mut("b").unwrap().positions.insert(0, 4);
        g.join(Some("c"), 11);
        // a: 0, 3; b: 1; c: 2.
        assert_eq!(g.members["b"].positions, BTreeMap::from([(1, 4)]));
        assert!(g.leave("s", "nobody").is_err());
        g.leave("s", "c").unwrap();
        assert_eq!(g.owned("a"), [0, 2]);
    }

    #[test]
    fn commit_checks_and_never_moves_back() {
        let mut g = doc(2);
        g.join(Some("a"), 0);
        g.join(Some("b"), 0);
        let hw = |_| 10;
        let c = |partition, offset| Committed { partition, offset };
        assert!(matches!(
            g.commit("s", "a", &[c(0, 1), c(1, 1)], hw, 1),
            Err(BrokerError::NotAssigned { partition: 1, .. })
        ));
        assert!(matches!(
            g.commit("s", "x", &[c(0, 1)], hw, 1),
            Err(BrokerError::UnknownMember { .. })
        ));
        assert!(matches!(
            g.commit("s", "a", &[c(0, 11)], hw, 1),
            Err(BrokerError::InvalidArgument {
                field: "offset",
                ..
            })
        ));
        assert_eq!(g.committed, [0, 0], "refused commits change nothing");
        assert_eq!(g.commit("s", "a", &[c(0, 6)], hw, 2).unwrap(), [c(0, 6)]);
        assert_eq!(g.commit("s", "a", &[c(0, 2)], hw, 3).unwrap(), [c(0, 6)]);
        assert_eq!(g.members["a"].last_seen, 3);
    }

    #[test]
    fn reset_clears_positions_and_starts_a_generation() {
        let mut g = doc(3);
        g.join(Some("a"), 0);
        g.members.get_mut("a").unwrap().positions.insert(1, 9);
        g.committed = vec![4, 4, 4];
        let generation = g.generation;
        let all = g.reset(&[(1, 2)]);
        assert_eq!(all.iter().map(|c| c.offset).collect::<Vec<_>>(), [4, 2, 4]);
        assert_eq!(g.plan("a"), [(0, 4), (1, 2), (2, 4)]);
        assert_eq!(g.generation, generation + 1);
    }

    #[test]
    fn document_round_trips_as_json() {
        let mut g = doc(2);
        g.join(Some("a"), 1);
        g.members.get_mut("a").unwrap().positions.insert(1, 3);
        let back: GroupDoc = serde_json::from_slice(&encode(&g).unwrap()).unwrap();
        assert_eq!(back, g);
    }
}
