//! Stream subscriptions (consumer groups) on the embedded engine.
//!
//! Membership and assignment live in memory: members join, heartbeat and leave; a member
//! silent for longer than the session timeout is removed when the group is next touched
//! (time comes from the injected clock). Every membership change starts a new generation and
//! reassigns partitions round-robin over the sorted member ids, so a partition has exactly
//! one owner per generation, and the broker refuses fetches and commits for partitions a
//! member does not own in the current generation.
//!
//! Committed offsets are durable: each commit is appended to the subscription's own state
//! log (a `wharf-log` with `always` durability) and acknowledged only after its fsync. The
//! state log holds `snapshot` records (all committed offsets: on creation, on reset, and every
//! `SNAPSHOT_EVERY` commits, after which older segments are deleted) and `commit` records.
//! Replaying it on open restores the offsets; a commit never moves an offset back, a reset
//! may.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wharf_log::{Clock, Durability, Log, LogConfig, NewRecord, OffsetWait};

use super::{AnyReady, EmbeddedConfig};
use crate::error::{BrokerError, Result};
use crate::types::{
    Committed, FetchRequest, Membership, Position, ResetTo, StoredMessage, StreamConfig,
    SubscriptionConfig, SubscriptionInfo, SubscriptionPartition,
};

/// Write a full snapshot after this many commit records, then drop older state segments.
const SNAPSHOT_EVERY: u64 = 10_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum StateRecord {
    Snapshot { committed: Vec<u64> },
    Commit { partition: u32, offset: u64 },
}

struct Member {
    last_seen: i64,
    /// Fetch position per owned partition.
    positions: BTreeMap<u32, u64>,
}

struct GroupState {
    /// Durable committed offsets: what is reported.
    committed: Vec<u64>,
    /// Committed offsets including commits queued but not yet durable: what a snapshot
    /// records (a snapshot is queued after them, so it is durable only after them).
    queued: Vec<u64>,
    members: BTreeMap<String, Member>,
    generation: u64,
    owner: Vec<Option<String>>,
    next_member: u64,
    /// Random per open: member ids minted after a restart never repeat earlier ones.
    incarnation: u64,
    /// Bumped by every reset: a commit queued before a reset must not raise the offsets the
    /// reset set (the journal replays it before the reset's snapshot).
    resets: u64,
    commits_since_snapshot: u64,
}

pub(crate) struct StreamGroup {
    name: String,
    config: StreamConfig,
    partitions: Vec<Arc<Log>>,
    state_log: Log,
    state: Mutex<GroupState>,
    /// Woken on every rebalance and reset, so a waiting fetch sees its new assignment.
    changed: tokio::sync::Notify,
    /// Per partition, the batch the last fetch stopped inside (`read_limited_cached`).
    batches: Mutex<Vec<Option<wharf_log::Batch>>>,
}

fn resolve(log: &Log, position: &Position) -> Result<u64> {
    Ok(match position {
        Position::Earliest => log.start_offset(),
        Position::Latest => log.high_watermark(),
        Position::Offset(o) => (*o).clamp(log.start_offset(), log.high_watermark()),
        Position::Timestamp(t) => log
            .offset_for_timestamp(*t)?
            .unwrap_or(log.high_watermark()),
    })
}

fn encode(record: &StateRecord) -> Result<NewRecord> {
    serde_json::to_vec(record)
        .map(|v| NewRecord::new(Bytes::from(v)))
        .map_err(|e| BrokerError::Internal(e.to_string()))
}

impl StreamGroup {
    /// Forgets every partition's cached batch (positions moved: a rebalance or a reset). A
    /// fetch running across it may put its batch back: harmless, a cached batch is used only
    /// for the offset it holds.
    fn drop_batches(&self) {
        self.batch_slots().iter_mut().for_each(|slot| *slot = None);
    }

    /// The cached batch slot of partition `p`.
    fn batch_slot(&self, p: u32, f: impl FnOnce(&mut Option<wharf_log::Batch>)) {
        if let Some(slot) = self.batch_slots().get_mut(p as usize) {
            f(slot);
        }
    }

    fn batch_slots(&self) -> MutexGuard<'_, Vec<Option<wharf_log::Batch>>> {
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the group's state in `dir`; `init` (on creation) says where partitions start.
    pub(crate) fn open(
        name: &str,
        config: StreamConfig,
        dir: &Path,
        partitions: Vec<Arc<Log>>,
        engine: &EmbeddedConfig,
        init: Option<&Position>,
    ) -> Result<Self> {
        let log_config = LogConfig {
            durability: Durability::Always,
            segment_max_bytes: 1024 * 1024,
            segment_max_age: None,
            vfs: engine.vfs.clone(),
            clock: engine.clock.clone(),
            ..LogConfig::default()
        };
        let (state_log, _report) = Log::open(dir.join("state"), log_config)?;
        let n = partitions.len();
        let mut committed = Vec::new();
        let mut commits_since_snapshot = 0;
        super::replay(&state_log, name, |record: StateRecord| {
            match record {
                StateRecord::Snapshot { committed: c } => {
                    committed = c;
                    commits_since_snapshot = 0;
                }
                StateRecord::Commit { partition, offset } => {
                    if let Some(slot) = committed.get_mut(partition as usize) {
                        *slot = (*slot).max(offset);
                    }
                    commits_since_snapshot += 1;
                }
            }
            Ok(())
        })?;
        let fresh = committed.is_empty();
        if fresh {
            let start = init.cloned().unwrap_or(config.start);
            committed = partitions
                .iter()
                .map(|log| resolve(log, &start))
                .collect::<Result<_>>()?;
        }
        committed.resize(n, 0);
        if fresh {
            state_log.append_wait(&[encode(&StateRecord::Snapshot {
                committed: committed.clone(),
            })?])?;
        }
        Ok(Self {
            name: name.to_owned(),
            config,
            partitions,
            state_log,
            changed: tokio::sync::Notify::new(),
            batches: Mutex::new(vec![None; n]),
            state: Mutex::new(GroupState {
                queued: committed.clone(),
                committed,
                members: BTreeMap::new(),
                generation: 0,
                owner: vec![None; n],
                next_member: 0,
                incarnation: super::nonce() & 0xffff_ffff,
                resets: 0,
                commits_since_snapshot,
            }),
        })
    }

    pub(crate) fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// The group's own log (its state journal), for health and metrics.
    pub(crate) fn own_logs(&self) -> Vec<&Log> {
        vec![&self.state_log]
    }

    pub(crate) fn close(&self) -> wharf_log::Result<()> {
        self.state_log.close()
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes members whose session expired; rebalances if any did.
    fn expire(&self, st: &mut GroupState, now: i64) {
        let timeout = i64::try_from(self.config.session_timeout_ms).unwrap_or(i64::MAX);
        let before = st.members.len();
        st.members
            .retain(|_, m| now.saturating_sub(m.last_seen) <= timeout);
        if st.members.len() != before {
            self.rebalance(st);
        }
    }

    /// New generation: partitions round-robin over the sorted member ids. Members keep their
    /// fetch position on partitions they keep; new owners start at the committed offset.
    fn rebalance(&self, st: &mut GroupState) {
        st.generation += 1;
        // A partition may change owner: its next fetch may start anywhere.
        self.drop_batches();
        self.changed.notify_waiters();
        let ids: Vec<String> = st.members.keys().cloned().collect();
        for (p, owner) in st.owner.iter_mut().enumerate() {
            *owner = (!ids.is_empty()).then(|| ids[p % ids.len()].clone());
        }
        let owner = st.owner.clone();
        let committed = st.committed.clone();
        for (id, member) in st.members.iter_mut() {
            member
                .positions
                .retain(|p, _| owner.get(*p as usize).and_then(Option::as_ref) == Some(id));
            for (p, o) in owner.iter().enumerate() {
                if o.as_ref() == Some(id) {
                    member.positions.entry(p as u32).or_insert(committed[p]);
                }
            }
        }
    }

    fn membership(&self, st: &GroupState, member: &str) -> Membership {
        Membership {
            member_id: member.to_owned(),
            generation: st.generation,
            partitions: st
                .owner
                .iter()
                .enumerate()
                .filter(|(_, o)| o.as_deref() == Some(member))
                .map(|(p, _)| p as u32)
                .collect(),
        }
    }

    fn known<'a>(&self, st: &'a mut GroupState, member: &str) -> Result<&'a mut Member> {
        st.members
            .get_mut(member)
            .ok_or_else(|| BrokerError::UnknownMember {
                subscription: self.name.clone(),
                member: member.to_owned(),
            })
    }

    pub(crate) fn join(&self, member: Option<&str>, now: i64) -> Result<Membership> {
        if let Some(id) = member
            && (id.is_empty() || id.len() > 200)
        {
            return Err(BrokerError::invalid(
                "member_id",
                "must be 1 to 200 characters",
            ));
        }
        let mut st = self.lock();
        self.expire(&mut st, now);
        let id = match member {
            Some(id) => id.to_owned(),
            None => loop {
                st.next_member += 1;
                let id = format!("m-{:08x}-{:x}", st.incarnation, st.next_member);
                if !st.members.contains_key(&id) {
                    break id;
                }
            },
        };
        let is_new = !st.members.contains_key(&id);
        st.members
            .entry(id.clone())
            .or_insert_with(|| Member {
                last_seen: now,
                positions: BTreeMap::new(),
            })
            .last_seen = now;
        if is_new {
            self.rebalance(&mut st);
        }
        Ok(self.membership(&st, &id))
    }

    pub(crate) fn heartbeat(&self, member: &str, now: i64) -> Result<Membership> {
        let mut st = self.lock();
        self.expire(&mut st, now);
        self.known(&mut st, member)?.last_seen = now;
        Ok(self.membership(&st, member))
    }

    pub(crate) fn leave(&self, member: &str, now: i64) -> Result<()> {
        let mut st = self.lock();
        self.expire(&mut st, now);
        if st.members.remove(member).is_none() {
            return Err(BrokerError::UnknownMember {
                subscription: self.name.clone(),
                member: member.to_owned(),
            });
        }
        self.rebalance(&mut st);
        Ok(())
    }

    pub(crate) async fn fetch(
        &self,
        member: &str,
        request: FetchRequest,
        clock: &dyn Clock,
    ) -> Result<Vec<StoredMessage>> {
        let deadline = tokio::time::Instant::now() + request.wait.min(super::MAX_WAIT);
        let request = FetchRequest {
            max_messages: request.max_messages.clamp(1, super::MAX_READ_MESSAGES),
            max_bytes: request.max_bytes.clamp(1, super::MAX_READ_BYTES),
            ..request
        };
        loop {
            let notified = self.changed.notified();
            let (generation, plan) = {
                let mut st = self.lock();
                self.expire(&mut st, clock.now_ms());
                let generation = st.generation;
                let m = self.known(&mut st, member)?;
                m.last_seen = clock.now_ms();
                (
                    generation,
                    m.positions
                        .iter()
                        .map(|(p, o)| (*p, *o))
                        .collect::<Vec<_>>(),
                )
            };
            let mut out = Vec::new();
            let mut advanced = Vec::new();
            let mut budget = request.max_bytes.max(1);
            for &(p, pos) in &plan {
                if out.len() >= request.max_messages.max(1) || budget == 0 {
                    break;
                }
                let Some(log) = self.partitions.get(p as usize) else {
                    continue;
                };
                let from = pos.max(log.start_offset());
                if from >= log.high_watermark() {
                    continue;
                }
                let room = request.max_messages.max(1) - out.len();
                // Taken out of the shared slot for the read (another fetch of the partition
                // meanwhile reads from the log).
                let mut cache = None;
                self.batch_slot(p, |slot| cache = slot.take());
                let read = super::read_limited_cached(log, &mut cache, from, room, budget);
                self.batch_slot(p, |slot| *slot = cache);
                let records = match read {
                    Ok(r) => r,
                    Err(wharf_log::Error::OffsetOutOfRange { .. }) => continue,
                    Err(e) => return Err(e.into()),
                };
                let mut next = from;
                for r in records {
                    let size = super::record_size(&r);
                    // Whole messages up to about max_bytes, but always at least one.
                    if !out.is_empty() && size > budget {
                        break;
                    }
                    budget = budget.saturating_sub(size);
                    next = r.offset + 1;
                    out.push(StoredMessage::from_record(p, r));
                }
                if next > from {
                    advanced.push((p, next));
                }
            }
            if !out.is_empty() {
                let mut st = self.lock();
                if st.generation == generation
                    && let Some(m) = st.members.get_mut(member)
                {
                    for (p, next) in advanced {
                        m.positions.insert(p, next);
                    }
                    return Ok(out);
                }
                // The group rebalanced while we read: what we read may belong to another
                // member now. Nothing was handed out; start over with the new assignment.
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            // Wait for an append to any owned partition (or the deadline).
            let waits: Vec<Pin<Box<OffsetWait>>> = plan
                .iter()
                .filter_map(|&(p, pos)| {
                    self.partitions
                        .get(p as usize)
                        .map(|log| Box::pin(log.wait_for(pos)))
                })
                .collect();
            // Woken by an append to an owned partition, a rebalance or reset, or the deadline.
            tokio::select! {
                r = AnyReady(waits) => r?,
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    pub(crate) async fn commit(
        &self,
        member: &str,
        offsets: Vec<Committed>,
        now: i64,
    ) -> Result<Vec<Committed>> {
        if offsets.is_empty() {
            return Err(BrokerError::invalid(
                "offsets",
                "at least one partition is required",
            ));
        }
        let ticket = {
            let mut st = self.lock();
            self.expire(&mut st, now);
            let generation = st.generation;
            self.known(&mut st, member)?.last_seen = now;
            let mut records = Vec::with_capacity(offsets.len());
            for c in &offsets {
                if st
                    .owner
                    .get(c.partition as usize)
                    .and_then(Option::as_deref)
                    != Some(member)
                {
                    return Err(BrokerError::NotAssigned {
                        member: member.to_owned(),
                        partition: c.partition,
                        generation,
                    });
                }
                let hw = self
                    .partitions
                    .get(c.partition as usize)
                    .map_or(0, |l| l.high_watermark());
                if c.offset > hw {
                    return Err(BrokerError::invalid(
                        "offset",
                        format!(
                            "{} is beyond partition {}'s high watermark {hw}",
                            c.offset, c.partition
                        ),
                    ));
                }
                records.push(encode(&StateRecord::Commit {
                    partition: c.partition,
                    offset: c.offset,
                })?);
            }
            let ticket = self.state_log.append(&records)?;
            // Recorded as queued now, so that a snapshot queued after them reflects them;
            // reported as committed only once durable (below).
            for c in &offsets {
                if let Some(slot) = st.queued.get_mut(c.partition as usize) {
                    *slot = (*slot).max(c.offset);
                }
            }
            st.commits_since_snapshot += records.len() as u64;
            (ticket, st.resets)
        };
        let (ticket, resets) = ticket;
        ticket.await?;
        let (result, snapshot) = {
            let mut st = self.lock();
            // Durable now: this commit, and every commit queued before it — unless a reset
            // came in between, whose snapshot (later in the journal) overrides it.
            if st.resets == resets {
                for c in &offsets {
                    if let Some(slot) = st.committed.get_mut(c.partition as usize) {
                        *slot = (*slot).max(c.offset);
                    }
                }
            }
            let result = offsets
                .iter()
                .map(|c| Committed {
                    partition: c.partition,
                    offset: st.committed[c.partition as usize],
                })
                .collect();
            let snapshot = if st.commits_since_snapshot >= SNAPSHOT_EVERY {
                st.commits_since_snapshot = 0;
                // Queued under the lock: every commit queued before it is reflected in it.
                let record = encode(&StateRecord::Snapshot {
                    committed: st.queued.clone(),
                })?;
                Some(self.state_log.append(&[record])?)
            } else {
                None
            };
            (result, snapshot)
        };
        if let Some(ticket) = snapshot {
            let done = ticket.await?;
            // Everything before the snapshot is now redundant.
            self.state_log.remove_before(done.base_offset)?;
        }
        Ok(result)
    }

    pub(crate) async fn reset(&self, to: ResetTo) -> Result<Vec<Committed>> {
        let mut target = self.lock().committed.clone();
        match &to {
            ResetTo::Earliest | ResetTo::Latest | ResetTo::Timestamp(_) => {
                let position = match to {
                    ResetTo::Earliest => Position::Earliest,
                    ResetTo::Latest => Position::Latest,
                    ResetTo::Timestamp(t) => Position::Timestamp(t),
                    ResetTo::Offsets(_) => Position::Earliest,
                };
                for (p, log) in self.partitions.iter().enumerate() {
                    target[p] = resolve(log, &position)?;
                }
            }
            ResetTo::Offsets(list) => {
                for &(p, o) in list {
                    let log = self.partitions.get(p as usize).ok_or_else(|| {
                        BrokerError::invalid("partition", format!("{p} does not exist"))
                    })?;
                    if o > log.high_watermark() {
                        return Err(BrokerError::invalid(
                            "offset",
                            format!("{o} is beyond partition {p}'s high watermark"),
                        ));
                    }
                    target[p as usize] = o;
                }
            }
        }
        let ticket = {
            // Queued and applied under the lock, so concurrent commits order the same way in
            // memory and in the journal.
            let mut st = self.lock();
            let ticket = self.state_log.append(&[encode(&StateRecord::Snapshot {
                committed: target.clone(),
            })?])?;
            st.committed = target.clone();
            st.queued = target.clone();
            st.resets += 1;
            st.commits_since_snapshot = 0;
            // Members continue from the new offsets.
            for member in st.members.values_mut() {
                for (p, pos) in member.positions.iter_mut() {
                    *pos = target[*p as usize];
                }
            }
            st.generation += 1;
            self.drop_batches();
            self.changed.notify_waiters();
            ticket
        };
        ticket.await?;
        Ok(target
            .iter()
            .enumerate()
            .map(|(p, &offset)| Committed {
                partition: p as u32,
                offset,
            })
            .collect())
    }

    pub(crate) fn info(&self, topic: &str, now: i64) -> SubscriptionInfo {
        let mut st = self.lock();
        self.expire(&mut st, now);
        SubscriptionInfo {
            topic: topic.to_owned(),
            name: self.name.clone(),
            config: SubscriptionConfig::Stream(self.config.clone()),
            partitions: self
                .partitions
                .iter()
                .enumerate()
                .map(|(p, log)| {
                    let committed = st.committed[p];
                    let start = log.start_offset();
                    SubscriptionPartition {
                        partition: p as u32,
                        committed,
                        lag: log.high_watermark().saturating_sub(committed.max(start)),
                        behind_retention: committed < start,
                    }
                })
                .collect(),
            members: st.members.keys().cloned().collect(),
            generation: st.generation,
            in_flight: 0,
            delayed: 0,
            dead_lettered: 0,
        }
    }
}
