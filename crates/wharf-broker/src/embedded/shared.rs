//! Shared subscriptions (queues) on the embedded engine — the KIP-932 model (DESIGN.md §2b).
//!
//! Each *queue* — one per topic partition, plus the subscription's private retry log that
//! redrive appends to — keeps a window `[start, end)` of offsets. Below `start` everything
//! is finished (acknowledged or dead-lettered); records in the window are `Available` (from
//! a time: delays and backoff), `Acquired` by a member until a lease deadline, `Finishing`
//! (being dead-lettered) or `Done`. `start` advances over the finished prefix; the window is
//! capped, which bounds memory and in-flight work.
//!
//! Durability: every change that must survive a crash is appended to the subscription's state
//! log (`always` fsync) *before* the caller is answered — acquisitions (delivery counts),
//! acks, nacks (with their availability time), archives (dead-lettered), the redrive cursor;
//! snapshots compact it. Leases are not persisted: after a restart every leased record is
//! available again (at-least-once) with its delivery count intact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use wharf_log::{Clock, Durability, Log, LogConfig, NewRecord, OffsetWait};

use super::{AnyReady, EmbeddedConfig, Topic};
use crate::error::{BrokerError, Result};
use crate::time::parse_rfc3339;
use crate::types::{
    AckOutcome, Delivery, HEADER_DELIVER_AT, Message, Position, ReceiveRequest, SharedConfig,
    StoredMessage, SubscriptionConfig, SubscriptionInfo, SubscriptionPartition, header,
};

/// Most records a queue keeps in its window.
const WINDOW: usize = 2048;
/// When the window is full, records not due for at least this long are parked outside it
/// (offset, count, time, key only), so far-future delays do not block the queue.
const PARK_AHEAD_MS: i64 = 1_000;
/// While a queue has a record available now, its window is refilled only once this many
/// places are free: a refill reads a chunk of the log, and refilling one place per ack would
/// read (and decode) a whole chunk per message.
const REFILL_STEP: usize = 64;
/// Most parked records per queue (about 64 bytes each); beyond it a full window waits.
const MAX_PARKED: usize = 200_000;
/// Write a snapshot after this many state records.
const SNAPSHOT_EVERY: u64 = 10_000;

use crate::dlq::{SOURCE_OFFSET as DLQ_SOURCE_OFFSET, SOURCE_PARTITION as DLQ_SOURCE_PARTITION};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct QueueSnap {
    start: u64,
    /// (offset, deliveries, available_at, done) for offsets at or after `start` that are
    /// not in their initial state.
    items: Vec<(u64, u32, i64, bool)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum StateRecord {
    Snapshot {
        queues: Vec<QueueSnap>,
        redrive_cursor: u64,
    },
    Acquire {
        q: u32,
        items: Vec<(u64, u32)>,
    },
    Ack {
        q: u32,
        offsets: Vec<u64>,
    },
    Nack {
        q: u32,
        items: Vec<(u64, i64)>,
    },
    Archive {
        q: u32,
        offsets: Vec<u64>,
    },
    Redrive {
        cursor: u64,
    },
}

/// What recovery knows of a record not (yet) in the window.
#[derive(Debug, Default, Clone, Copy)]
struct Persisted {
    deliveries: u32,
    available_at: i64,
    done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RecState {
    Available {
        at: i64,
    },
    /// The member is shared by every delivery of one receive (a reference count, not a copy).
    Acquired {
        member: Arc<str>,
        deadline: i64,
    },
    Finishing,
    Done,
}

#[derive(Debug)]
struct Rec {
    msg: StoredMessage,
    deliveries: u32,
    state: RecState,
}

/// A parked record: everything but its content, which stays in the log.
#[derive(Debug, Clone)]
struct Parked {
    deliveries: u32,
    at: i64,
    key: Option<Bytes>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Unfinished records retention deleted before the subscription finished them (since
    /// open).
    lost: u64,
    start: u64,
    end: u64,
    window: BTreeMap<u64, Rec>,
    /// Delayed records taken out of a full window; reloaded from the log when due.
    parked: BTreeMap<u64, Parked>,
    persisted: BTreeMap<u64, Persisted>,
    /// The batch the last refill read from the log: the next refill usually continues in it
    /// (a publish batch can hold thousands of records), so it is not read and checked again.
    cached: Vec<wharf_log::Batch>,
    /// No `Available` record in the window is due later than this (an upper bound, raised
    /// wherever a record becomes available and made exact by the parking scan): a full window
    /// is scanned for records to park only when one may be due far enough ahead.
    latest_at: i64,
}

impl Queue {
    /// Puts `rec` in the window at `offset`.
    fn insert(&mut self, offset: u64, rec: Rec) {
        if let RecState::Available { at } = rec.state {
            self.latest_at = self.latest_at.max(at);
        }
        self.window.insert(offset, rec);
    }

    /// Makes the record at `offset` available again at `at` (after a failed delivery, or a
    /// dead-lettering that did not happen); `None` if it is not in the window.
    fn make_available(&mut self, offset: u64, at: i64) -> Option<()> {
        self.window.get_mut(&offset)?.state = RecState::Available { at };
        self.latest_at = self.latest_at.max(at);
        Some(())
    }
}

struct State {
    queues: Vec<Queue>,
    redrive_cursor: u64,
    records_since_snapshot: u64,
    rng: u64,
    /// No lease expires before this (ms): `expire_leases` skips its scan of the windows
    /// until then. Lowered by every new or shortened lease; `i64::MIN` = unknown.
    lease_check_at: i64,
}

/// A record to move to the dead-letter topic.
struct DeadLetter {
    q: usize,
    offset: u64,
    msg: StoredMessage,
    deliveries: u32,
    reason: String,
}

pub(crate) struct SharedSub {
    name: String,
    topic: String,
    config: SharedConfig,
    /// The topic's partitions, then the retry log.
    logs: Vec<Arc<Log>>,
    dlq: Arc<Topic>,
    state_log: Log,
    state: Mutex<State>,
    /// Wakes long-polling receivers when something may have become available.
    changed: Notify,
    /// Part of every ack_id: ack_ids from before a restart are stale.
    incarnation: u64,
    /// `{incarnation:x}.`, the start of every ack id.
    ack_prefix: String,
    /// One redrive at a time (two would copy the same dead letters twice).
    redriving: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
}

/// One `ack` and one `nack` record per queue instead of one per ack_id (they commute).
fn coalesce(records: Vec<StateRecord>) -> Vec<StateRecord> {
    let mut acks: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut nacks: BTreeMap<u32, Vec<(u64, i64)>> = BTreeMap::new();
    let mut out = Vec::new();
    for r in records {
        match r {
            StateRecord::Ack { q, offsets } => acks.entry(q).or_default().extend(offsets),
            StateRecord::Nack { q, items } => nacks.entry(q).or_default().extend(items),
            other => out.push(other),
        }
    }
    out.extend(
        acks.into_iter()
            .map(|(q, offsets)| StateRecord::Ack { q, offsets }),
    );
    out.extend(
        nacks
            .into_iter()
            .map(|(q, items)| StateRecord::Nack { q, items }),
    );
    out
}

/// Puts records that were being dead-lettered back to `Available` (after the longest
/// backoff, so a failing dead-letter path does not spin) unless disarmed.
struct FinishingGuard<'a> {
    sub: &'a SharedSub,
    items: Vec<(usize, u64)>,
}

impl Drop for FinishingGuard<'_> {
    fn drop(&mut self) {
        if self.items.is_empty() {
            return;
        }
        let at = self
            .sub
            .clock
            .now_ms()
            .saturating_add(i64::try_from(self.sub.config.backoff_max_ms).unwrap_or(0));
        let mut st = self.sub.lock();
        for &(q, offset) in &self.items {
            if let Some(queue) = st.queues.get_mut(q)
                && queue
                    .window
                    .get(&offset)
                    .is_some_and(|rec| rec.state == RecState::Finishing)
            {
                queue.make_available(offset, at);
            }
        }
    }
}

fn encode(record: &StateRecord) -> Result<NewRecord> {
    serde_json::to_vec(record)
        .map(|v| NewRecord::new(Bytes::from(v)))
        .map_err(|e| BrokerError::Internal(e.to_string()))
}

fn lock_config(engine: &EmbeddedConfig, segment: u64) -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        segment_max_bytes: segment,
        // Snapshots of many busy partitions can be large.
        max_batch_bytes: 64 * 1024 * 1024,
        segment_max_age: None,
        vfs: engine.vfs.clone(),
        clock: engine.clock.clone(),
        ..LogConfig::default()
    }
}

impl SharedSub {
    /// Opens (or, with `init`, creates) the subscription's state under `dir`.
    pub(crate) fn open(
        name: &str,
        topic: &Topic,
        config: SharedConfig,
        dir: &Path,
        dlq: Arc<Topic>,
        engine: &EmbeddedConfig,
        init: bool,
    ) -> Result<Self> {
        let (state_log, _) = Log::open(dir.join("state"), lock_config(engine, 4 << 20))?;
        let (retry_log, _) = Log::open(dir.join("retry"), lock_config(engine, 64 << 20))?;
        let mut logs: Vec<Arc<Log>> = topic.partitions.clone();
        logs.push(Arc::new(retry_log));
        let n = logs.len();
        // Replay the state log.
        let mut snaps: Vec<QueueSnap> = Vec::new();
        let mut redrive_cursor = 0;
        let mut persisted: Vec<BTreeMap<u64, Persisted>> = vec![BTreeMap::new(); n];
        let mut records_since_snapshot = 0;
        let mut seen_snapshot = false;
        super::replay(&state_log, name, |record: StateRecord| {
            records_since_snapshot += 1;
            let slot = |q: u32, persisted: &mut Vec<BTreeMap<u64, Persisted>>| {
                let q = q as usize;
                if persisted.len() <= q {
                    persisted.resize(q + 1, BTreeMap::new());
                }
                q
            };
            match record {
                StateRecord::Snapshot {
                    queues,
                    redrive_cursor: c,
                } => {
                    persisted = vec![BTreeMap::new(); n.max(queues.len())];
                    for (q, snap) in queues.iter().enumerate() {
                        for &(o, deliveries, available_at, done) in &snap.items {
                            persisted[q].insert(
                                o,
                                Persisted {
                                    deliveries,
                                    available_at,
                                    done,
                                },
                            );
                        }
                    }
                    snaps = queues;
                    redrive_cursor = c;
                    records_since_snapshot = 0;
                    seen_snapshot = true;
                }
                StateRecord::Acquire { q, items } => {
                    let q = slot(q, &mut persisted);
                    for (o, d) in items {
                        let p = persisted[q].entry(o).or_default();
                        p.deliveries = p.deliveries.max(d);
                    }
                }
                StateRecord::Ack { q, offsets } | StateRecord::Archive { q, offsets } => {
                    let q = slot(q, &mut persisted);
                    for o in offsets {
                        persisted[q].entry(o).or_default().done = true;
                    }
                }
                StateRecord::Nack { q, items } => {
                    let q = slot(q, &mut persisted);
                    for (o, at) in items {
                        persisted[q].entry(o).or_default().available_at = at;
                    }
                }
                StateRecord::Redrive { cursor } => redrive_cursor = redrive_cursor.max(cursor),
            }
            Ok(())
        })?;
        let mut queues: Vec<Queue> = Vec::with_capacity(n);
        for (q, log) in logs.iter().enumerate() {
            let start = match snaps.get(q) {
                Some(s) => s.start,
                None if q + 1 == n => 0,
                None => {
                    let from = if seen_snapshot {
                        Position::Earliest
                    } else {
                        config.start
                    };
                    match from {
                        Position::Earliest => log.start_offset(),
                        Position::Latest => log.high_watermark(),
                        Position::Offset(o) => o.clamp(log.start_offset(), log.high_watermark()),
                        Position::Timestamp(t) => {
                            log.offset_for_timestamp(t)?.unwrap_or(log.high_watermark())
                        }
                    }
                }
            };
            let start = start.max(log.start_offset());
            let mut p = persisted.get_mut(q).map(std::mem::take).unwrap_or_default();
            p.retain(|o, _| *o >= start);
            queues.push(Queue {
                lost: 0,
                parked: BTreeMap::new(),
                start,
                end: start,
                window: BTreeMap::new(),
                persisted: p,
                cached: Vec::new(),
                latest_at: i64::MIN,
            });
        }
        let incarnation = super::nonce();
        let sub = Self {
            name: name.to_owned(),
            topic: topic.name.clone(),
            config,
            logs,
            dlq,
            state_log,
            state: Mutex::new(State {
                queues,
                redrive_cursor,
                records_since_snapshot,
                rng: incarnation | 1,
                lease_check_at: i64::MIN,
            }),
            changed: Notify::new(),
            redriving: tokio::sync::Mutex::new(()),
            incarnation: incarnation & 0xffff_ffff,
            ack_prefix: format!("{:x}.", incarnation & 0xffff_ffff),
            clock: engine.clock.clone(),
        };
        if init || !seen_snapshot {
            // Fix the starting positions durably.
            let snapshot = sub.snapshot(&sub.lock());
            sub.state_log.append_wait(&[encode(&snapshot)?])?;
        }
        Ok(sub)
    }

    pub(crate) fn config(&self) -> &SharedConfig {
        &self.config
    }

    /// The subscription's own logs (state journal, retry log), for health and metrics.
    pub(crate) fn own_logs(&self) -> Vec<&Log> {
        let mut logs = vec![&self.state_log];
        logs.extend(self.logs.last().map(|l| &**l));
        logs
    }

    pub(crate) fn close(&self) -> wharf_log::Result<()> {
        let retry = self.logs.last().map(|l| l.close());
        self.state_log.close()?;
        retry.unwrap_or(Ok(()))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self, st: &State) -> StateRecord {
        let queues = st
            .queues
            .iter()
            .map(|q| {
                let mut items: Vec<(u64, u32, i64, bool)> = q
                    .persisted
                    .iter()
                    .map(|(o, p)| (*o, p.deliveries, p.available_at, p.done))
                    .collect();
                for (o, p) in &q.parked {
                    items.push((*o, p.deliveries, p.at, false));
                }
                for (o, r) in &q.window {
                    let (at, done) = match &r.state {
                        RecState::Available { at } => (*at, false),
                        RecState::Done => (0, true),
                        _ => (0, false),
                    };
                    if r.deliveries > 0 || done || at > 0 {
                        items.push((*o, r.deliveries, at, done));
                    }
                }
                items.sort_unstable_by_key(|i| i.0);
                QueueSnap {
                    start: q.start,
                    items,
                }
            })
            .collect();
        StateRecord::Snapshot {
            queues,
            redrive_cursor: st.redrive_cursor,
        }
    }

    /// Exponential backoff after `deliveries` failed attempts, with jitter.
    fn backoff(&self, st: &mut State, deliveries: u32) -> i64 {
        let delay = self.config.backoff_ms(deliveries, || {
            // xorshift64*
            st.rng ^= st.rng >> 12;
            st.rng ^= st.rng << 25;
            st.rng ^= st.rng >> 27;
            st.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        });
        i64::try_from(delay).unwrap_or(i64::MAX)
    }

    /// Loads records from the logs into the windows.
    /// Turns a record read from queue `q`'s log into a window entry.
    fn rec_from(&self, q: usize, mut r: wharf_log::Record, p: Persisted) -> Rec {
        // A record may wait in the window for hours. Its key and value are slices of the
        // buffer the read decoded them from (up to 256 KiB, shared by every record of that
        // read), so one record refilled alone would keep the whole buffer alive: 2,048 slots
        // could pin half a gigabyte. Copy them out.
        r.key = r.key.map(|k| Bytes::copy_from_slice(&k));
        r.value = Bytes::copy_from_slice(&r.value);
        let deliver_at = header(&r.headers, HEADER_DELIVER_AT)
            .and_then(parse_rfc3339)
            .unwrap_or(0);
        let mut msg = StoredMessage::from_record(q as u32, r);
        if q == self.logs.len() - 1 {
            // A redriven copy: present it as the original message.
            if let (Some(p), Some(o)) = (
                header(&msg.headers, DLQ_SOURCE_PARTITION).and_then(|v| v.parse().ok()),
                header(&msg.headers, DLQ_SOURCE_OFFSET).and_then(|v| v.parse().ok()),
            ) {
                msg.partition = p;
                msg.offset = o;
            }
        }
        let state = if p.done {
            RecState::Done
        } else {
            RecState::Available {
                at: p.available_at.max(deliver_at),
            }
        };
        Rec {
            msg,
            deliveries: p.deliveries,
            state,
        }
    }

    /// Loads records from the logs into the windows; parks far-future records out of a full
    /// window and brings parked ones back when due.
    fn fill(&self, st: &mut State) -> Result<()> {
        let now = self.clock.now_ms();
        for (q, log) in self.logs.iter().enumerate() {
            let queue = &mut st.queues[q];
            let log_start = log.start_offset();
            if queue.end < log_start {
                // Retention deleted records the subscription had not finished.
                queue.lost += queue
                    .window
                    .iter()
                    .filter(|(o, r)| **o < log_start && r.state != RecState::Done)
                    .count() as u64
                    + (log_start - queue.end);
                queue.window.retain(|o, _| *o >= log_start);
                queue.start = queue.start.max(log_start);
                queue.end = log_start;
            }
            let before = queue.parked.len();
            queue.parked.retain(|o, _| *o >= log_start);
            queue.lost += (before - queue.parked.len()) as u64;
            // Parked records that are due come back (their content re-read from the log).
            let due: Vec<u64> = queue
                .parked
                .iter()
                .filter(|(_, p)| p.at <= now)
                .map(|(o, _)| *o)
                .take(WINDOW / 2)
                .collect();
            for o in due {
                let Some(parked) = queue.parked.remove(&o) else {
                    continue;
                };
                match super::read_limited(log, o, 1, 1) {
                    Ok(records) => {
                        if let Some(r) = records.into_iter().find(|r| r.offset == o) {
                            let p = Persisted {
                                deliveries: parked.deliveries,
                                available_at: parked.at,
                                done: false,
                            };
                            let rec = self.rec_from(q, r, p);
                            queue.insert(o, rec);
                        } else {
                            queue.lost += 1;
                        }
                    }
                    Err(wharf_log::Error::OffsetOutOfRange { .. }) => queue.lost += 1,
                    Err(e) => {
                        queue.parked.insert(o, parked);
                        return Err(e.into());
                    }
                }
            }
            loop {
                if queue.window.len() >= WINDOW {
                    // Full: park what is not due soon, to make room for what is.
                    if queue.parked.len() >= MAX_PARKED {
                        break;
                    }
                    if queue.latest_at <= now + PARK_AHEAD_MS {
                        break;
                    }
                    let mut far = Vec::new();
                    let mut latest = i64::MIN;
                    for (o, r) in &queue.window {
                        match r.state {
                            RecState::Available { at } if at > now + PARK_AHEAD_MS => far.push(*o),
                            RecState::Available { at } => latest = latest.max(at),
                            _ => {}
                        }
                    }
                    // What stays is due within PARK_AHEAD_MS.
                    queue.latest_at = latest;
                    if far.is_empty() {
                        break;
                    }
                    for o in far {
                        if let Some(r) = queue.window.remove(&o)
                            && let RecState::Available { at } = r.state
                        {
                            queue.parked.insert(
                                o,
                                Parked {
                                    deliveries: r.deliveries,
                                    at,
                                    key: r.msg.key,
                                },
                            );
                        }
                    }
                }
                if queue.end >= log.high_watermark() {
                    break;
                }
                let room = WINDOW - queue.window.len();
                // Ordered subscriptions refill eagerly: their available records may all be
                // held back by keys in flight.
                if room < REFILL_STEP
                    && !self.config.ordered_by_key
                    && queue
                        .window
                        .values()
                        .any(|r| matches!(r.state, RecState::Available { at } if at <= now))
                {
                    break;
                }
                let records = match super::read_cached(log, &mut queue.cached, queue.end, room) {
                    Ok(r) => r,
                    Err(wharf_log::Error::OffsetOutOfRange { start, .. }) => {
                        queue.end = start;
                        queue.start = queue.start.max(start);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if records.is_empty() {
                    break;
                }
                for r in records {
                    let offset = r.offset;
                    queue.end = offset + 1;
                    let p = queue.persisted.remove(&offset).unwrap_or_default();
                    let rec = self.rec_from(q, r, p);
                    queue.insert(offset, rec);
                }
                // Finished records (acked before a restart) must not hold window places.
                Self::advance(queue);
            }
            Self::advance(queue);
        }
        Ok(())
    }

    /// Moves `start` over the finished prefix of the window.
    fn advance(queue: &mut Queue) {
        while let Some((&o, r)) = queue.window.first_key_value() {
            if r.state != RecState::Done {
                break;
            }
            queue.window.remove(&o);
        }
        let first_window = queue.window.keys().next().copied();
        let first_parked = queue.parked.keys().next().copied();
        queue.start = first_window
            .into_iter()
            .chain(first_parked)
            .min()
            .unwrap_or(queue.end);
    }

    /// Ends failed deliveries (expired leases, nacks): back to available after the backoff
    /// (or `delay`), or to the dead-letter topic after the last allowed delivery.
    fn fail(
        &self,
        st: &mut State,
        (q, offset): (usize, u64),
        delay: Option<i64>,
        reason: &str,
        now: i64,
        dead: &mut Vec<DeadLetter>,
    ) -> Option<(u64, i64)> {
        let deliveries = st.queues[q].window.get(&offset)?.deliveries;
        if deliveries >= self.config.max_deliveries {
            let rec = st.queues[q].window.get_mut(&offset)?;
            rec.state = RecState::Finishing;
            dead.push(DeadLetter {
                q,
                offset,
                msg: rec.msg.clone(),
                deliveries,
                reason: reason.to_owned(),
            });
            return None;
        }
        let at = now.saturating_add(delay.unwrap_or_else(|| self.backoff(st, deliveries)));
        st.queues[q].make_available(offset, at)?;
        Some((offset, at))
    }

    fn expire_leases(&self, st: &mut State, now: i64, dead: &mut Vec<DeadLetter>) {
        if now < st.lease_check_at {
            return;
        }
        let mut next = i64::MAX;
        for q in 0..st.queues.len() {
            let mut expired: Vec<(u64, i64)> = Vec::new();
            for (o, r) in &st.queues[q].window {
                if let RecState::Acquired { deadline, .. } = &r.state {
                    if *deadline <= now {
                        expired.push((*o, *deadline));
                    } else {
                        next = next.min(*deadline);
                    }
                }
            }
            for (o, deadline) in expired {
                // The backoff counts from the deadline, not from when the expiry is noticed.
                // Not persisted: after a restart the record is available at once anyway.
                let _ = self.fail(st, (q, o), None, "lease_expired", deadline, dead);
            }
        }
        st.lease_check_at = next;
    }

    /// `{incarnation:x}.{q}.{offset}.{deliveries}` (one per delivery: written without the
    /// formatting machinery).
    fn ack_id(&self, q: usize, offset: u64, deliveries: u32) -> String {
        let mut s = String::with_capacity(self.ack_prefix.len() + 32);
        s.push_str(&self.ack_prefix);
        push_decimal(&mut s, q as u64);
        s.push('.');
        push_decimal(&mut s, offset);
        s.push('.');
        push_decimal(&mut s, u64::from(deliveries));
        s
    }

    fn parse_ack_id(&self, id: &str) -> std::result::Result<(usize, u64, u32), BrokerError> {
        let bad = || BrokerError::BadAckId(id.chars().take(100).collect());
        let mut parts = id.split('.');
        let inc = u64::from_str_radix(parts.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
        let q: usize = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let offset: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let deliveries: u32 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        if parts.next().is_some() || q >= self.logs.len() {
            return Err(bad());
        }
        if inc != self.incarnation {
            return Err(BrokerError::LeaseExpired);
        }
        Ok((q, offset, deliveries))
    }

    /// Finds the live lease an ack_id names.
    fn leased<'a>(
        &self,
        st: &'a mut State,
        id: &str,
        now: i64,
    ) -> std::result::Result<(usize, u64, &'a mut Rec), BrokerError> {
        let (q, offset, deliveries) = self.parse_ack_id(id)?;
        let rec = st.queues[q]
            .window
            .get_mut(&offset)
            .ok_or(BrokerError::LeaseExpired)?;
        match &rec.state {
            RecState::Acquired { deadline, .. }
                if rec.deliveries == deliveries && *deadline > now =>
            {
                Ok((q, offset, rec))
            }
            _ => Err(BrokerError::LeaseExpired),
        }
    }

    /// Appends state records and waits until they are durable.
    async fn persist(&self, records: Vec<StateRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let encoded = records.iter().map(encode).collect::<Result<Vec<_>>>()?;
        let ticket = self.state_log.append(&encoded)?;
        ticket.await?;
        let snapshot = {
            let mut st = self.lock();
            st.records_since_snapshot += records.len() as u64;
            if st.records_since_snapshot >= SNAPSHOT_EVERY {
                st.records_since_snapshot = 0;
                // Taken and queued under the lock: every state change is made in memory
                // before its record is appended, so every record queued before the snapshot
                // is reflected in it, and the journal before it can go.
                Some(self.state_log.append(&[encode(&self.snapshot(&st))?])?)
            } else {
                None
            }
        };
        if let Some(ticket) = snapshot {
            let done = ticket.await?;
            self.state_log.remove_before(done.base_offset)?;
        }
        Ok(())
    }

    /// Moves records to the dead-letter topic, then records that durably.
    async fn dead_letter(&self, dead: Vec<DeadLetter>) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        // If this future is dropped or the publish fails, the records must not stay
        // `Finishing` (they would block their key and the window forever).
        let mut guard = FinishingGuard {
            sub: self,
            items: dead.iter().map(|d| (d.q, d.offset)).collect(),
        };
        let now = self.clock.now_ms();
        let messages: Vec<Message> = dead
            .iter()
            .map(|d| {
                // The move's own id makes a retry after a crash between the two steps below
                // idempotent.
                let move_id = format!(
                    "dlq/{}/{}/{}/{}/{}",
                    self.name, d.q, d.offset, d.deliveries, self.topic
                );
                crate::dlq::dead_letter(&d.msg, &self.topic, d.deliveries, &d.reason, now, move_id)
            })
            .collect();
        let published = self.dlq.publish(messages, &[], self.clock.as_ref()).await;
        if let Err(e) = published {
            // The guard puts the records back (after a backoff) for another try.
            drop(guard);
            self.changed.notify_waiters();
            return Err(e);
        }
        let mut by_queue: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for d in &dead {
            by_queue.entry(d.q).or_default().push(d.offset);
        }
        // Done in memory before the archive is journaled, so a snapshot queued meanwhile
        // records them as done (the dead letters are durable already). If the journal write
        // fails, a restart delivers them again: at-least-once, never lost.
        {
            let mut st = self.lock();
            for d in &dead {
                if let Some(rec) = st.queues[d.q].window.get_mut(&d.offset) {
                    rec.state = RecState::Done;
                }
            }
            for q in by_queue.keys() {
                Self::advance(&mut st.queues[*q]);
            }
        }
        guard.items.clear();
        self.changed.notify_waiters();
        let records = by_queue
            .into_iter()
            .map(|(q, offsets)| StateRecord::Archive {
                q: q as u32,
                offsets,
            })
            .collect();
        self.persist(records).await
    }

    /// Ends expired leases (dead-lettering last deliveries) so that what `describe` and the
    /// dead-letter listing report is current even when nobody is receiving.
    pub(crate) async fn maintain(&self) -> Result<()> {
        let mut dead = Vec::new();
        {
            let mut st = self.lock();
            self.fill(&mut st)?;
            self.expire_leases(&mut st, self.clock.now_ms(), &mut dead);
        }
        // Best effort: a describe or a listing must keep working when writes fail; the
        // records go back for another try.
        let _ = self.dead_letter(dead).await;
        Ok(())
    }

    pub(crate) async fn receive(&self, request: ReceiveRequest) -> Result<Vec<Delivery>> {
        if request.max == 0 || request.max > 1000 {
            return Err(BrokerError::invalid("max", "must be within 1..=1000"));
        }
        let lease_ms = request.lease.map_or(self.config.lease_ms, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        });
        if !(100..=12 * 3_600_000).contains(&lease_ms) {
            return Err(BrokerError::invalid(
                "lease_ms",
                "must be within 100..=43200000",
            ));
        }
        let member: Arc<str> = Arc::from(request.member.as_deref().unwrap_or_default());
        let deadline = tokio::time::Instant::now() + request.wait.min(super::MAX_WAIT);
        loop {
            let notified = self.changed.notified();
            let now = self.clock.now_ms();
            let mut dead = Vec::new();
            let (deliveries, records, wake_at, waits) = {
                let mut st = self.lock();
                self.fill(&mut st)?;
                self.expire_leases(&mut st, now, &mut dead);
                let in_flight = st
                    .queues
                    .iter()
                    .flat_map(|q| q.window.values())
                    .filter(|r| matches!(&r.state, RecState::Acquired { member: m, .. } if **m == *member))
                    .count();
                let room = request
                    .max
                    .min((self.config.max_in_flight_per_member as usize).saturating_sub(in_flight));
                let mut out = Vec::new();
                let mut records = Vec::new();
                let mut wake_at: Option<i64> = None;
                let mut earliest_lease = i64::MAX;
                // The retry log (redriven messages, older than anything still in the
                // partitions) is read first; per-key order holds across all queues.
                let n = st.queues.len();
                let order = std::iter::once(n - 1).chain(0..n - 1);
                // A key with a delivery in flight anywhere waits, whatever queue it is in.
                let mut blocked: HashSet<Bytes> = if self.config.ordered_by_key {
                    st.queues
                        .iter()
                        .flat_map(|q| q.window.values())
                        .filter(|r| {
                            matches!(r.state, RecState::Acquired { .. } | RecState::Finishing)
                        })
                        .filter_map(|r| r.msg.key.clone())
                        .collect()
                } else {
                    HashSet::new()
                };
                for q in order {
                    let mut acquired = Vec::new();
                    let queue = &mut st.queues[q];
                    // Parked (delayed) records hold back the later records of their key.
                    let mut parked_first: HashMap<&Bytes, u64> = HashMap::new();
                    if self.config.ordered_by_key {
                        for (o, p) in &queue.parked {
                            if let Some(k) = &p.key {
                                parked_first.entry(k).or_insert(*o);
                            }
                        }
                    }
                    let parked_keys: Vec<Bytes> =
                        parked_first.keys().map(|k| (*k).clone()).collect();
                    for (o, rec) in queue.window.iter_mut() {
                        if !out.is_empty() && out.len() >= room {
                            // Nothing more will be taken, and something was: this receive
                            // returns now (the wake-up time only matters when nothing was).
                            break;
                        }
                        let ordered = self.config.ordered_by_key && rec.msg.key.is_some();
                        let key = if ordered { rec.msg.key.clone() } else { None };
                        if ordered
                            && key.as_ref().is_some_and(|k| {
                                blocked.contains(k) || parked_first.get(k).is_some_and(|p| *p < *o)
                            })
                        {
                            continue;
                        }
                        match &rec.state {
                            RecState::Available { at } if *at <= now && out.len() < room => {
                                rec.deliveries += 1;
                                let lease_deadline = now + lease_ms as i64;
                                earliest_lease = earliest_lease.min(lease_deadline);
                                rec.state = RecState::Acquired {
                                    member: Arc::clone(&member),
                                    deadline: lease_deadline,
                                };
                                acquired.push((*o, rec.deliveries));
                                out.push(Delivery {
                                    ack_id: self.ack_id(q, *o, rec.deliveries),
                                    message: rec.msg.clone(),
                                    delivery_count: rec.deliveries,
                                    lease_deadline,
                                });
                            }
                            RecState::Available { at } => {
                                if *at > now {
                                    wake_at = Some(wake_at.map_or(*at, |w| w.min(*at)));
                                }
                            }
                            RecState::Acquired { deadline, .. } => {
                                wake_at = Some(wake_at.map_or(*deadline, |w| w.min(*deadline)));
                            }
                            RecState::Finishing | RecState::Done => {}
                        }
                        if ordered && rec.state != RecState::Done {
                            // Later records of this key wait until this one is finished.
                            if let Some(k) = key {
                                blocked.insert(k);
                            }
                        }
                    }
                    // ...and, like any unfinished record, those of the queues read after it.
                    blocked.extend(parked_keys);
                    if !acquired.is_empty() {
                        records.push(StateRecord::Acquire {
                            q: q as u32,
                            items: acquired,
                        });
                    }
                }
                st.lease_check_at = st.lease_check_at.min(earliest_lease);
                // Parked records coming due wake a waiting receive too.
                for queue in &st.queues {
                    if let Some(at) = queue.parked.values().map(|p| p.at).min() {
                        wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                    }
                }
                let waits: Vec<Pin<Box<OffsetWait>>> = self
                    .logs
                    .iter()
                    .zip(&st.queues)
                    .filter(|(_, q)| q.window.len() < WINDOW)
                    .map(|(log, q)| Box::pin(log.wait_for(q.end)))
                    .collect();
                (out, records, wake_at, waits)
            };
            // Dead letters found on the way (leases that expired on a last delivery). Their
            // failure is not this receiver's: the records go back for another try.
            let _ = self.dead_letter(dead).await;
            if !deliveries.is_empty() {
                // Delivery counts must survive a crash before anyone sees the delivery.
                self.persist(records).await?;
                return Ok(deliveries);
            }
            let now_instant = tokio::time::Instant::now();
            if now_instant >= deadline {
                return Ok(Vec::new());
            }
            // Sleep until: a publish, an ack/nack/release, a delay or lease coming due, or
            // the deadline.
            let due = wake_at.map(|at| {
                let ms = u64::try_from(at.saturating_sub(self.clock.now_ms())).unwrap_or(0);
                now_instant + Duration::from_millis(ms.max(1))
            });
            let until = due.map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = notified => {}
                r = AnyReady(waits) => r?,
            }
        }
    }

    /// Applies `f` to each live lease named by `ack_ids`; persists what `f` returns.
    async fn settle(
        &self,
        ack_ids: &[String],
        mut f: impl FnMut(
            &Self,
            &mut State,
            usize,
            u64,
            i64,
            &mut Vec<DeadLetter>,
        ) -> Option<StateRecord>,
    ) -> Result<Vec<AckOutcome>> {
        if ack_ids.is_empty() || ack_ids.len() > 10_000 {
            return Err(BrokerError::invalid("ack_ids", "give 1 to 10000 ack_ids"));
        }
        let now = self.clock.now_ms();
        let mut dead = Vec::new();
        let mut records = Vec::new();
        let outcomes: Vec<AckOutcome> = {
            let mut st = self.lock();
            ack_ids
                .iter()
                .map(|id| {
                    let error = match self.leased(&mut st, id, now) {
                        Ok((q, offset, _)) => {
                            if let Some(r) = f(self, &mut st, q, offset, now, &mut dead) {
                                records.push(r);
                            }
                            None
                        }
                        Err(e) => Some(e.code().to_owned()),
                    };
                    AckOutcome {
                        ack_id: id.clone(),
                        error,
                    }
                })
                .collect()
        };
        // Dead-letter first: its guard covers the `Finishing` records from here on.
        let dead_lettered = self.dead_letter(dead).await;
        self.persist(coalesce(records)).await?;
        {
            let mut st = self.lock();
            for q in &mut st.queues {
                Self::advance(q);
            }
        }
        dead_lettered?;
        self.changed.notify_waiters();
        Ok(outcomes)
    }

    pub(crate) async fn ack(&self, ack_ids: &[String]) -> Result<Vec<AckOutcome>> {
        self.settle(ack_ids, |_, st, q, offset, _, _| {
            st.queues[q].window.get_mut(&offset)?.state = RecState::Done;
            Some(StateRecord::Ack {
                q: q as u32,
                offsets: vec![offset],
            })
        })
        .await
    }

    pub(crate) async fn nack(
        &self,
        ack_ids: &[String],
        delay_ms: Option<u64>,
    ) -> Result<Vec<AckOutcome>> {
        let delay = delay_ms.map(|d| i64::try_from(d.min(7 * 86_400_000)).unwrap_or(0));
        self.settle(ack_ids, |this, st, q, offset, now, dead| {
            let (o, at) = this.fail(st, (q, offset), delay, "nack", now, dead)?;
            Some(StateRecord::Nack {
                q: q as u32,
                items: vec![(o, at)],
            })
        })
        .await
    }

    pub(crate) async fn extend(
        &self,
        ack_ids: &[String],
        lease_ms: u64,
    ) -> Result<Vec<AckOutcome>> {
        if !(100..=12 * 3_600_000).contains(&lease_ms) {
            return Err(BrokerError::invalid(
                "lease_ms",
                "must be within 100..=43200000",
            ));
        }
        self.settle(ack_ids, |_, st, q, offset, now, _| {
            if let RecState::Acquired { deadline, .. } =
                &mut st.queues[q].window.get_mut(&offset)?.state
            {
                *deadline = now + lease_ms as i64;
                // A shorter lease may expire before any other.
                let at = *deadline;
                st.lease_check_at = st.lease_check_at.min(at);
            }
            None
        })
        .await
    }

    pub(crate) async fn terminate(
        &self,
        ack_ids: &[String],
        reason: &str,
    ) -> Result<Vec<AckOutcome>> {
        let reason = if reason.is_empty() {
            "terminated"
        } else {
            reason
        };
        let reason: String = reason.chars().take(1000).collect();
        self.settle(ack_ids, |_, st, q, offset, _, dead| {
            let rec = st.queues[q].window.get_mut(&offset)?;
            rec.state = RecState::Finishing;
            dead.push(DeadLetter {
                q,
                offset,
                msg: rec.msg.clone(),
                deliveries: rec.deliveries,
                reason: reason.clone(),
            });
            None
        })
        .await
    }

    /// The dead-letter topic's log (one partition).
    pub(crate) fn dlq_log(&self) -> Result<&Arc<Log>> {
        self.dlq.partition(0)
    }

    /// The first dead letter not yet redriven (what `dead_lettered` counts from).
    pub(crate) fn redrive_cursor(&self) -> u64 {
        self.lock().redrive_cursor
    }

    pub(crate) async fn redrive(&self, max: usize) -> Result<u64> {
        if max == 0 || max > 100_000 {
            return Err(BrokerError::invalid("max", "must be within 1..=100000"));
        }
        let _one_at_a_time = self.redriving.lock().await;
        let dlq = self.dlq_log()?.clone();
        let retry = self
            .logs
            .last()
            .cloned()
            .ok_or_else(|| BrokerError::Internal("no retry log".into()))?;
        let mut cursor = self.redrive_cursor().max(dlq.start_offset());
        let mut moved = 0u64;
        while (moved as usize) < max && cursor < dlq.high_watermark() {
            let records = dlq.read_records(cursor, 1 << 20)?;
            if records.is_empty() {
                break;
            }
            let take: Vec<_> = records.into_iter().take(max - moved as usize).collect();
            let next = take.last().map_or(cursor, |r| r.offset + 1);
            let copies: Vec<NewRecord> = take
                .into_iter()
                .map(|r| {
                    // The copy gets its producer's id back (the dead-letter topic's own id is
                    // internal).
                    let headers = crate::dlq::redriven(&r.headers);
                    NewRecord {
                        key: r.key,
                        value: r.value,
                        headers,
                    }
                })
                .collect();
            moved += copies.len() as u64;
            // The copies are durable before the cursor moves past them: a crash in between
            // redrives them twice (at-least-once), never zero times.
            retry.append(&copies)?.await?;
            // In memory first (the copies are durable), so a snapshot taken meanwhile has it.
            self.lock().redrive_cursor = next;
            self.persist(vec![StateRecord::Redrive { cursor: next }])
                .await?;
            cursor = next;
        }
        self.changed.notify_waiters();
        Ok(moved)
    }

    pub(crate) fn info(&self, now: i64) -> SubscriptionInfo {
        let mut st = self.lock();
        let _ = self.fill(&mut st);
        let n_partitions = self.logs.len() - 1;
        let mut in_flight = 0;
        let mut delayed = 0;
        for q in &st.queues {
            for r in q.window.values() {
                match &r.state {
                    RecState::Acquired { deadline, .. } if *deadline > now => in_flight += 1,
                    RecState::Available { at } if *at > now => delayed += 1,
                    _ => {}
                }
            }
            delayed += q.parked.values().filter(|p| p.at > now).count() as u64;
        }
        let dead_lettered = self.dlq_log().map_or(0, |l| {
            l.high_watermark()
                .saturating_sub(st.redrive_cursor.max(l.start_offset()))
        });
        SubscriptionInfo {
            topic: self.topic.clone(),
            name: self.name.clone(),
            config: SubscriptionConfig::Shared(self.config.clone()),
            partitions: self
                .logs
                .iter()
                .zip(&st.queues)
                .take(n_partitions)
                .enumerate()
                .map(|(p, (log, q))| SubscriptionPartition {
                    partition: p as u32,
                    committed: q.start,
                    lag: log.high_watermark().saturating_sub(q.start),
                    behind_retention: q.lost > 0 || q.start < log.start_offset(),
                })
                .collect(),
            members: {
                let mut m: Vec<String> = st
                    .queues
                    .iter()
                    .flat_map(|q| q.window.values())
                    .filter_map(|r| match &r.state {
                        RecState::Acquired { member, deadline } if *deadline > now => {
                            Some(member.to_string())
                        }
                        _ => None,
                    })
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                m.sort();
                m
            },
            generation: 0,
            in_flight,
            delayed,
            dead_lettered,
        }
    }
}

/// Appends `n` in decimal.
fn push_decimal(s: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        s.push(char::from(b));
    }
}

#[cfg(test)]
mod tests {
    use super::push_decimal;

    #[test]
    fn decimals_are_written_like_display() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }
}
