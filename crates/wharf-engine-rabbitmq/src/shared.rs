//! Shared subscriptions on RabbitMQ: the state machine every node applies from the
//! subscription's state stream (see [`crate::rsm`]).
//!
//! AMQP has no visibility timeout, no delays and no way to settle a delivery but on the
//! channel that received it, so the leases, delivery counts, delays and dead-lettering are
//! Wharf's, kept here; the messages stay in the partition streams (and the subscription's
//! retry topic, which redrive fills), and a node reads them from there.
//!
//! Each *queue* — one per partition, and the retry topic last — has a `start` below which
//! everything is finished. Offsets at or after `start` are fresh (available) unless the
//! state holds an item for them: available from a time (nack, backoff), leased to a member
//! until a deadline, being moved to the dead-letter topic (`Finishing`, until a deadline: if
//! the node moving it dies, another takes over), or done. Only offsets below
//! `start + WINDOW` are ever handed out, which bounds the state.
//!
//! Records carry the proposer's clock reading, and every time-dependent transition is
//! evaluated at a record's time or a reader's time without being written: a lease that ran
//! out is available again after the backoff counted from its deadline (the jitter is a hash
//! of the message's place and count, the same on every node), or due for the dead-letter
//! topic after its last allowed delivery.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use wharf_broker::SharedConfig;

use crate::rsm::Machine;

/// Offsets past a queue's `start` that may be handed out.
pub(crate) const WINDOW: u64 = 2048;
/// How long a node has to move a message to the dead-letter topic before another may.
pub(crate) const FINISH_MS: i64 = 30_000;
/// Messages not available for at least this long are *parked*: they do not hold a place in
/// the window (so a window full of far-future delays does not block the queue).
pub(crate) const PARK_AHEAD_MS: i64 = 1_000;
/// Most parked messages per queue (each is an item of the state); beyond, delayed messages
/// hold their place in the window.
pub(crate) const MAX_PARKED: usize = 200_000;

/// A message's state, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "s", rename_all = "snake_case")]
enum St {
    Available {
        at: i64,
    },
    Leased {
        member: String,
        deadline: i64,
        /// The acquire that leased it (see [`Op::Release`]).
        #[serde(default)]
        lease: u64,
    },
    Finishing {
        deadline: i64,
        reason: String,
    },
    Done,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Item {
    deliveries: u32,
    st: St,
    /// A hash of the message's key (for `ordered_by_key`), once known.
    key: Option<u64>,
}

const FRESH: Item = Item {
    deliveries: 0,
    st: St::Available { at: 0 },
    key: None,
};

/// A message's state at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Now<'a> {
    Available {
        at: i64,
    },
    Leased {
        member: &'a str,
        deadline: i64,
    },
    /// Being moved to the dead-letter topic by someone, until the deadline.
    Finishing,
    /// Due for the dead-letter topic (its last lease ran out, or its mover's time did).
    Dead {
        reason: &'a str,
    },
    Done,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Queue {
    start: u64,
    items: BTreeMap<u64, Item>,
    /// Retention removed messages before they were finished.
    lost: bool,
}

impl Queue {
    /// Moves `start` over the finished prefix.
    fn advance(&mut self) {
        while let Some((&o, item)) = self.items.first_key_value() {
            if o < self.start {
                self.items.remove(&o);
            } else if o == self.start && item.st == St::Done {
                self.items.remove(&o);
                self.start += 1;
            } else {
                break;
            }
        }
    }
}

/// How a settle changes a live lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub(crate) enum Settle {
    Ack,
    /// Available again after `delay` ms (the backoff when `None`), or dead-lettered after
    /// the last allowed delivery.
    Nack {
        delay: Option<i64>,
    },
    /// The lease runs `lease_ms` from the record's time.
    Extend {
        lease_ms: i64,
    },
    /// To the dead-letter topic, moved by the writer (for [`FINISH_MS`] from the record's
    /// time).
    Terminate {
        reason: String,
    },
}

/// A change to the subscription's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// Leases `items` (queue, offset, key hash) to `member` until `deadline`, those that are
    /// still available at `now`; `floors` move queue starts up (retention removed what was
    /// below), `gaps` are offsets that hold no message (fences).
    Acquire {
        now: i64,
        member: String,
        deadline: i64,
        /// Names this acquire's leases (random), for [`Op::Release`].
        lease: u64,
        items: Vec<(u32, u64, Option<u64>)>,
        floors: Vec<(u32, u64)>,
        gaps: Vec<(u32, u64)>,
        /// Fresh messages not due before the time given (`wharf-deliver-at` far ahead):
        /// recorded as available from then, so they do not hold the window.
        #[serde(default)]
        park: Vec<(u32, u64, i64)>,
    },
    /// Gives back the leases of acquire `lease` that nobody got (the acquiring receive
    /// failed after its record was written): available again, the delivery not counted.
    Release {
        lease: u64,
        items: Vec<(u32, u64)>,
    },
    /// Settles live leases (queue, offset, delivery count).
    Settle {
        now: i64,
        #[serde(flatten)]
        how: Settle,
        items: Vec<(u32, u64, u32)>,
    },
    /// Takes over moving messages due for the dead-letter topic, until `deadline`.
    Claim {
        now: i64,
        deadline: i64,
        items: Vec<(u32, u64)>,
    },
    /// The messages are in the dead-letter topic: done.
    Archive {
        items: Vec<(u32, u64)>,
        /// Gone before they could be moved (retention removed them): done, not counted.
        #[serde(default)]
        gone: Vec<(u32, u64)>,
    },
    /// Dead letters before `cursor` were put back (`moved` of them), if the cursor was at
    /// `from`.
    Redrive {
        from: u64,
        cursor: u64,
        moved: u64,
    },
    Fence,
}

/// A message to move to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finish {
    pub(crate) q: u32,
    pub(crate) offset: u64,
    pub(crate) deliveries: u32,
    pub(crate) reason: String,
}

/// What a record did.
#[derive(Debug)]
pub(crate) enum Outcome {
    Nothing,
    /// (queue, offset, delivery count) leased.
    Acquired(Vec<(u32, u64, u32)>),
    /// Per item: the error code, or what the writer must now move to the dead-letter topic.
    Settled(Vec<Result<Option<Finish>, &'static str>>),
    Claimed(Vec<Finish>),
}

/// Counters for `describe`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) in_flight: u64,
    pub(crate) delayed: u64,
    pub(crate) members: Vec<String>,
}

/// A shared subscription's state, as a snapshot holds it.
#[derive(Serialize, Deserialize)]
pub(crate) struct SharedSnap {
    queues: Vec<Queue>,
    redrive_cursor: u64,
    dead: u64,
}

/// One shared subscription's state.
#[derive(Debug)]
pub(crate) struct SharedMachine {
    config: SharedConfig,
    queues: Vec<Queue>,
    redrive_cursor: u64,
    /// Dead letters not redriven.
    dead: u64,
}

/// A 64-bit mix (splitmix64's finalizer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash `ordered_by_key` compares keys by.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl SharedMachine {
    /// A new subscription's state: partition `p` starts at `initial[p]`; the retry queue
    /// (last) at 0.
    pub(crate) fn new(config: SharedConfig, initial: &[u64]) -> Self {
        let mut queues: Vec<Queue> = initial
            .iter()
            .map(|&start| Queue {
                start,
                ..Queue::default()
            })
            .collect();
        queues.push(Queue::default());
        Self {
            config,
            queues,
            redrive_cursor: 0,
            dead: 0,
        }
    }

    pub(crate) fn config(&self) -> &SharedConfig {
        &self.config
    }

    /// The number of queues (partitions + the retry queue).
    pub(crate) fn queues(&self) -> usize {
        self.queues.len()
    }

    /// Queue `q`'s start.
    pub(crate) fn start(&self, q: usize) -> u64 {
        self.queues[q].start
    }

    /// Whether retention removed messages of partition `q` before they were finished.
    pub(crate) fn lost(&self, q: usize) -> bool {
        self.queues[q].lost
    }

    pub(crate) fn redrive_cursor(&self) -> u64 {
        self.redrive_cursor
    }

    pub(crate) fn dead_lettered(&self) -> u64 {
        self.dead
    }

    /// The backoff after `deliveries` failed deliveries of `(q, offset)`: exponential, with
    /// a jitter every node computes alike.
    fn backoff(&self, q: u32, offset: u64, deliveries: u32) -> i64 {
        let delay = self.config.backoff_ms(deliveries, || {
            mix(offset ^ (u64::from(q) << 48) ^ (u64::from(deliveries) << 40))
        });
        i64::try_from(delay).unwrap_or(i64::MAX)
    }

    fn effective<'a>(&self, q: u32, offset: u64, item: &'a Item, now: i64) -> Now<'a> {
        match &item.st {
            St::Available { at } => Now::Available { at: *at },
            St::Leased {
                member, deadline, ..
            } if *deadline > now => Now::Leased {
                member,
                deadline: *deadline,
            },
            St::Leased { deadline, .. } => {
                if item.deliveries >= self.config.max_deliveries {
                    Now::Dead {
                        reason: "lease_expired",
                    }
                } else {
                    Now::Available {
                        at: deadline.saturating_add(self.backoff(q, offset, item.deliveries)),
                    }
                }
            }
            St::Finishing { deadline, .. } if *deadline > now => Now::Finishing,
            St::Finishing { reason, .. } => Now::Dead { reason },
            St::Done => Now::Done,
        }
    }

    /// The state of `(q, offset)` at `now` (fresh if the state holds nothing for it), with
    /// its delivery count; `None` below the queue's start (finished).
    pub(crate) fn state_at(&self, q: usize, offset: u64, now: i64) -> Option<(Now<'_>, u32)> {
        let queue = self.queues.get(q)?;
        if offset < queue.start {
            return None;
        }
        let item = queue.items.get(&offset).unwrap_or(&FRESH);
        Some((self.effective(q as u32, offset, item, now), item.deliveries))
    }

    /// Messages due for the dead-letter topic at `now`.
    pub(crate) fn dead_at(&self, now: i64) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        for (q, queue) in self.queues.iter().enumerate() {
            for (o, item) in &queue.items {
                if matches!(self.effective(q as u32, *o, item, now), Now::Dead { .. }) {
                    out.push((q as u32, *o));
                }
            }
        }
        out
    }

    /// How many live leases `member` holds at `now`.
    pub(crate) fn held_by(&self, member: &str, now: i64) -> usize {
        self.queues
            .iter()
            .enumerate()
            .flat_map(|(q, queue)| {
                queue
                    .items
                    .iter()
                    .map(move |(o, item)| (q as u32, *o, item))
            })
            .filter(|(q, o, item)| {
                matches!(self.effective(*q, *o, item, now), Now::Leased { member: m, .. } if m == member)
            })
            .count()
    }

    /// Key hashes of messages not finished, with where they are and whether they hold
    /// their key now (leased, or on their way to the dead-letter topic).
    pub(crate) fn keys_at(&self, now: i64) -> HashMap<u64, Vec<(u32, u64, bool)>> {
        let mut keys: HashMap<u64, Vec<(u32, u64, bool)>> = HashMap::new();
        for (q, queue) in self.queues.iter().enumerate() {
            for (o, item) in &queue.items {
                let Some(k) = item.key else { continue };
                let holding = match self.effective(q as u32, *o, item, now) {
                    Now::Done => continue,
                    Now::Available { .. } => false,
                    _ => true,
                };
                keys.entry(k).or_default().push((q as u32, *o, holding));
            }
        }
        keys
    }

    /// Whether a message of key hash `k` at `(q, offset)` must wait for another of its key:
    /// one that holds its key, an earlier one in its queue, or one in the retry queue
    /// (redriven messages are older than anything in the partitions).
    pub(crate) fn key_blocked(
        keys: &HashMap<u64, Vec<(u32, u64, bool)>>,
        retry_q: u32,
        k: u64,
        q: u32,
        offset: u64,
    ) -> bool {
        keys.get(&k).is_some_and(|list| {
            list.iter().any(|&(oq, oo, holding)| {
                (oq, oo) != (q, offset)
                    && (holding || (oq == q && oo < offset) || (oq == retry_q && q != retry_q))
            })
        })
    }

    /// Counters at `now`; `delayed_extra` counts fresh messages whose `wharf-deliver-at` is
    /// still ahead (the state does not see message contents).
    pub(crate) fn counts(&self, now: i64) -> Counts {
        let mut c = Counts::default();
        let mut members = std::collections::BTreeSet::new();
        for (q, queue) in self.queues.iter().enumerate() {
            for (o, item) in &queue.items {
                match self.effective(q as u32, *o, item, now) {
                    Now::Leased { member, .. } => {
                        c.in_flight += 1;
                        members.insert(member.to_owned());
                    }
                    Now::Available { at } if at > now => c.delayed += 1,
                    _ => {}
                }
            }
        }
        c.members = members.into_iter().collect();
        c
    }

    /// Whether `item` is parked at `now`.
    fn parked(item: &Item, now: i64) -> bool {
        matches!(item.st, St::Available { at } if at > now.saturating_add(PARK_AHEAD_MS))
    }

    /// One past the last offset of queue `q` that may be handed out at `now`: [`WINDOW`]
    /// places past the start, not counting parked messages.
    pub(crate) fn window_end(&self, q: usize, now: i64) -> u64 {
        let Some(queue) = self.queues.get(q) else {
            return 0;
        };
        let mut end = queue.start.saturating_add(WINDOW);
        for (o, item) in queue.items.range(queue.start..) {
            if *o >= end {
                break;
            }
            if Self::parked(item, now) {
                end += 1;
            }
        }
        end
    }

    /// Whether queue `q` may park more messages.
    pub(crate) fn may_park(&self, q: usize) -> bool {
        self.queues
            .get(q)
            .is_some_and(|queue| queue.items.len() < MAX_PARKED)
    }

    fn park(&mut self, park: Vec<(u32, u64, i64)>) {
        for (q, offset, at) in park {
            if !self.may_park(q as usize) {
                continue;
            }
            let queue = &mut self.queues[q as usize];
            if offset >= queue.start && !queue.items.contains_key(&offset) {
                queue.items.insert(
                    offset,
                    Item {
                        deliveries: 0,
                        st: St::Available { at },
                        key: None,
                    },
                );
            }
        }
    }

    fn release(&mut self, lease: u64, items: Vec<(u32, u64)>) {
        for (q, offset) in items {
            if let Some(item) = self
                .queues
                .get_mut(q as usize)
                .and_then(|queue| queue.items.get_mut(&offset))
                && matches!(item.st, St::Leased { lease: l, .. } if l == lease)
            {
                item.deliveries = item.deliveries.saturating_sub(1);
                item.st = St::Available { at: 0 };
            }
        }
    }

    fn acquire(
        &mut self,
        now: i64,
        member: &str,
        (deadline, lease): (i64, u64),
        items: Vec<(u32, u64, Option<u64>)>,
    ) -> Vec<(u32, u64, u32)> {
        let ends: Vec<u64> = (0..self.queues.len())
            .map(|q| self.window_end(q, now))
            .collect();
        let retry_q = (self.queues.len() - 1) as u32;
        let cap = self.config.max_in_flight_per_member as usize;
        let mut held = self.held_by(member, now);
        let mut keys = if self.config.ordered_by_key {
            self.keys_at(now)
        } else {
            HashMap::new()
        };
        let mut granted = Vec::new();
        for (q, offset, key) in items {
            if held >= cap {
                break;
            }
            let Some(queue) = self.queues.get(q as usize) else {
                continue;
            };
            if offset < queue.start || offset >= ends[q as usize] {
                continue;
            }
            let item = queue.items.get(&offset).unwrap_or(&FRESH);
            let available = matches!(
                self.effective(q, offset, item, now),
                Now::Available { at } if at <= now
            );
            if !available || item.deliveries >= self.config.max_deliveries {
                continue;
            }
            if self.config.ordered_by_key
                && let Some(k) = key
                && Self::key_blocked(&keys, retry_q, k, q, offset)
            {
                continue;
            }
            let deliveries = item.deliveries + 1;
            self.queues[q as usize].items.insert(
                offset,
                Item {
                    deliveries,
                    st: St::Leased {
                        member: member.to_owned(),
                        deadline,
                        lease,
                    },
                    key,
                },
            );
            if let Some(k) = key {
                keys.entry(k).or_default().push((q, offset, true));
            }
            held += 1;
            granted.push((q, offset, deliveries));
        }
        granted
    }

    fn settle(
        &mut self,
        now: i64,
        how: &Settle,
        items: Vec<(u32, u64, u32)>,
    ) -> Vec<Result<Option<Finish>, &'static str>> {
        let mut out = Vec::with_capacity(items.len());
        for (q, offset, deliveries) in items {
            let live = self
                .queues
                .get(q as usize)
                .and_then(|queue| queue.items.get(&offset))
                .is_some_and(|item| {
                    item.deliveries == deliveries
                        && matches!(item.st, St::Leased { deadline, .. } if deadline > now)
                });
            if !live {
                out.push(Err("lease_expired"));
                continue;
            }
            let backoff = self.backoff(q, offset, deliveries);
            let max = self.config.max_deliveries;
            let Some(item) = self.queues[q as usize].items.get_mut(&offset) else {
                out.push(Err("lease_expired"));
                continue;
            };
            let finish = |reason: &str| Finish {
                q,
                offset,
                deliveries,
                reason: reason.to_owned(),
            };
            out.push(Ok(match how {
                Settle::Ack => {
                    item.st = St::Done;
                    None
                }
                Settle::Nack { .. } if deliveries >= max => {
                    item.st = St::Finishing {
                        deadline: now.saturating_add(FINISH_MS),
                        reason: "nack".into(),
                    };
                    Some(finish("nack"))
                }
                Settle::Nack { delay } => {
                    item.st = St::Available {
                        at: now.saturating_add(delay.unwrap_or(backoff)),
                    };
                    None
                }
                Settle::Extend { lease_ms } => {
                    if let St::Leased { deadline: d, .. } = &mut item.st {
                        *d = now.saturating_add(*lease_ms);
                    }
                    None
                }
                Settle::Terminate { reason } => {
                    item.st = St::Finishing {
                        deadline: now.saturating_add(FINISH_MS),
                        reason: reason.clone(),
                    };
                    Some(finish(reason))
                }
            }));
        }
        for queue in &mut self.queues {
            queue.advance();
        }
        out
    }

    fn claim(&mut self, now: i64, deadline: i64, items: Vec<(u32, u64)>) -> Vec<Finish> {
        let mut out = Vec::new();
        for (q, offset) in items {
            let Some(item) = self
                .queues
                .get(q as usize)
                .and_then(|queue| queue.items.get(&offset))
            else {
                continue;
            };
            let Now::Dead { reason } = self.effective(q, offset, item, now) else {
                continue;
            };
            let reason = reason.to_owned();
            let deliveries = item.deliveries;
            if let Some(item) = self.queues[q as usize].items.get_mut(&offset) {
                item.st = St::Finishing {
                    deadline,
                    reason: reason.clone(),
                };
            }
            out.push(Finish {
                q,
                offset,
                deliveries,
                reason,
            });
        }
        out
    }
}

impl Machine for SharedMachine {
    type Op = Op;
    type Outcome = Outcome;
    type Snap = SharedSnap;

    fn fence() -> Op {
        Op::Fence
    }

    /// Leasing takes messages away: it wakes no waiting receive (unless it also moved the
    /// window: finished gaps, a floor, parked messages). Everything else may make messages
    /// available (settles, releases, claims and archives moving the window, redrives).
    fn wakes(op: &Op) -> bool {
        match op {
            Op::Acquire {
                floors, gaps, park, ..
            } => !(floors.is_empty() && gaps.is_empty() && park.is_empty()),
            Op::Fence => false,
            _ => true,
        }
    }

    fn snapshot(&self) -> SharedSnap {
        SharedSnap {
            queues: self.queues.clone(),
            redrive_cursor: self.redrive_cursor,
            dead: self.dead,
        }
    }

    fn restore(&mut self, snap: SharedSnap) -> bool {
        if snap.queues.len() != self.queues.len() {
            return false;
        }
        self.queues = snap.queues;
        self.redrive_cursor = snap.redrive_cursor;
        self.dead = snap.dead;
        true
    }

    fn apply(&mut self, _offset: u64, op: Op) -> Outcome {
        match op {
            Op::Acquire {
                now,
                member,
                deadline,
                lease,
                items,
                floors,
                gaps,
                park,
            } => {
                for (q, floor) in floors {
                    if let Some(queue) = self.queues.get_mut(q as usize)
                        && floor > queue.start
                    {
                        let unfinished = (queue.start..floor)
                            .any(|o| queue.items.get(&o).is_none_or(|i| i.st != St::Done));
                        queue.lost |= unfinished;
                        queue.start = floor;
                        queue.advance();
                    }
                }
                for (q, offset) in gaps {
                    if let Some(queue) = self.queues.get_mut(q as usize)
                        && offset >= queue.start
                    {
                        queue.items.insert(
                            offset,
                            Item {
                                deliveries: 0,
                                st: St::Done,
                                key: None,
                            },
                        );
                    }
                }
                self.park(park);
                let granted = self.acquire(now, &member, (deadline, lease), items);
                for queue in &mut self.queues {
                    queue.advance();
                }
                Outcome::Acquired(granted)
            }
            Op::Settle { now, how, items } => Outcome::Settled(self.settle(now, &how, items)),
            Op::Claim {
                now,
                deadline,
                items,
            } => Outcome::Claimed(self.claim(now, deadline, items)),
            Op::Archive { items, gone } => {
                let moved = items.into_iter().map(|i| (i, true));
                for ((q, offset), counted) in moved.chain(gone.into_iter().map(|i| (i, false))) {
                    if let Some(queue) = self.queues.get_mut(q as usize)
                        && let Some(item) = queue.items.get_mut(&offset)
                        && matches!(item.st, St::Finishing { .. })
                    {
                        item.st = St::Done;
                        if counted {
                            self.dead += 1;
                        }
                    }
                }
                for queue in &mut self.queues {
                    queue.advance();
                }
                Outcome::Nothing
            }
            Op::Redrive {
                from,
                cursor,
                moved,
            } => {
                if from == self.redrive_cursor && cursor > from {
                    self.redrive_cursor = cursor;
                    self.dead = self.dead.saturating_sub(moved);
                }
                Outcome::Nothing
            }
            Op::Release { lease, items } => {
                self.release(lease, items);
                Outcome::Nothing
            }
            Op::Fence => Outcome::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SharedConfig {
        SharedConfig {
            max_deliveries: 2,
            lease_ms: 1_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
            backoff_jitter_pct: 0,
            ..SharedConfig::default()
        }
    }

    fn acquire(m: &mut SharedMachine, now: i64, member: &str, items: &[(u32, u64)]) -> Outcome {
        m.apply(
            0,
            Op::Acquire {
                now,
                member: member.into(),
                deadline: now + 1_000,
                lease: 7,
                items: items.iter().map(|&(q, o)| (q, o, None)).collect(),
                floors: vec![],
                gaps: vec![],
                park: vec![],
            },
        )
    }

    fn granted(o: Outcome) -> Vec<(u32, u64, u32)> {
        match o {
            Outcome::Acquired(g) => g,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_first_acquire_in_the_order_wins() {
        let mut m = SharedMachine::new(config(), &[0]);
        assert_eq!(
            granted(acquire(&mut m, 0, "a", &[(0, 0), (0, 1)])),
            [(0, 0, 1), (0, 1, 1)]
        );
        assert_eq!(
            granted(acquire(&mut m, 0, "b", &[(0, 0), (0, 2)])),
            [(0, 2, 1)]
        );
        // The lease runs out at 1000; the backoff (100 ms) counts from there.
        assert!(granted(acquire(&mut m, 1_099, "b", &[(0, 0)])).is_empty());
        assert_eq!(granted(acquire(&mut m, 1_100, "b", &[(0, 0)])), [(0, 0, 2)]);
    }

    #[test]
    fn settles_need_the_live_lease() {
        let mut m = SharedMachine::new(config(), &[0]);
        granted(acquire(&mut m, 0, "a", &[(0, 0), (0, 1)]));
        let o = m.apply(
            0,
            Op::Settle {
                now: 10,
                how: Settle::Ack,
                items: vec![(0, 0, 1), (0, 1, 2), (0, 0, 1)],
            },
        );
        let Outcome::Settled(r) = o else { panic!() };
        assert_eq!(r, [Ok(None), Err("lease_expired"), Err("lease_expired")]);
        assert_eq!(m.start(0), 1, "the acked prefix is finished");
    }

    #[test]
    fn last_delivery_goes_to_the_dead_letter_topic_once() {
        let mut m = SharedMachine::new(config(), &[0]);
        granted(acquire(&mut m, 0, "a", &[(0, 0)]));
        granted(acquire(&mut m, 1_100, "a", &[(0, 0)]));
        // The second (last) lease runs out at 2100.
        assert!(m.dead_at(2_099).is_empty());
        assert_eq!(m.dead_at(2_100), [(0, 0)]);
        let Outcome::Claimed(c) = m.apply(
            0,
            Op::Claim {
                now: 2_100,
                deadline: 2_100 + FINISH_MS,
                items: vec![(0, 0)],
            },
        ) else {
            panic!()
        };
        assert_eq!(c[0].reason, "lease_expired");
        assert_eq!(c[0].deliveries, 2);
        let Outcome::Claimed(again) = m.apply(
            0,
            Op::Claim {
                now: 2_100,
                deadline: 2_100 + FINISH_MS,
                items: vec![(0, 0)],
            },
        ) else {
            panic!()
        };
        assert!(again.is_empty(), "one mover at a time");
        m.apply(
            0,
            Op::Archive {
                items: vec![(0, 0)],
                gone: vec![],
            },
        );
        m.apply(
            0,
            Op::Archive {
                items: vec![(0, 0)],
                gone: vec![],
            },
        );
        assert_eq!((m.start(0), m.dead_lettered()), (1, 1));
    }

    #[test]
    fn a_mover_that_dies_is_replaced() {
        let mut m = SharedMachine::new(config(), &[0]);
        granted(acquire(&mut m, 0, "a", &[(0, 0)]));
        let Outcome::Settled(r) = m.apply(
            0,
            Op::Settle {
                now: 1,
                how: Settle::Terminate {
                    reason: "poison".into(),
                },
                items: vec![(0, 0, 1)],
            },
        ) else {
            panic!()
        };
        assert_eq!(r[0].as_ref().unwrap().as_ref().unwrap().reason, "poison");
        assert!(m.dead_at(FINISH_MS).is_empty());
        assert_eq!(m.dead_at(FINISH_MS + 1), [(0, 0)]);
    }

    #[test]
    fn in_flight_cap_and_key_order() {
        let mut m = SharedMachine::new(
            SharedConfig {
                ordered_by_key: true,
                max_in_flight_per_member: 2,
                ..config()
            },
            &[0],
        );
        let k = Some(key_hash(b"k"));
        let o = m.apply(
            0,
            Op::Acquire {
                now: 0,
                member: "a".into(),
                deadline: 1_000,
                lease: 1,
                items: vec![(0, 0, k), (0, 1, k), (0, 2, None), (0, 3, None)],
                floors: vec![],
                gaps: vec![],
                park: vec![],
            },
        );
        assert_eq!(granted(o), [(0, 0, 1), (0, 2, 1)]);
    }

    #[test]
    fn gaps_and_floors_move_the_start() {
        let mut m = SharedMachine::new(config(), &[0]);
        m.apply(
            0,
            Op::Acquire {
                now: 0,
                member: "a".into(),
                deadline: 1_000,
                lease: 1,
                items: vec![],
                floors: vec![(0, 5)],
                gaps: vec![(0, 5), (0, 6)],
                park: vec![],
            },
        );
        assert_eq!(m.start(0), 7);
        assert!(m.lost(0));
    }

    #[test]
    fn a_snapshot_restores_the_state() {
        let mut m = SharedMachine::new(config(), &[0, 0]);
        granted(acquire(&mut m, 0, "a", &[(0, 0), (1, 0), (1, 1)]));
        m.apply(
            0,
            Op::Settle {
                now: 1,
                how: Settle::Nack { delay: Some(500) },
                items: vec![(1, 0, 1)],
            },
        );
        let json = serde_json::to_vec(&m.snapshot()).unwrap();
        let mut copy = SharedMachine::new(config(), &[0, 0]);
        assert!(copy.restore(serde_json::from_slice(&json).unwrap()));
        for now in [0, 1, 500, 501, 1_000, 5_000] {
            assert_eq!(copy.counts(now), m.counts(now), "at {now}");
            assert_eq!(copy.dead_at(now), m.dead_at(now));
        }
        assert_eq!(
            granted(acquire(&mut copy, 501, "b", &[(1, 0)])),
            granted(acquire(&mut m, 501, "b", &[(1, 0)]))
        );
    }

    #[test]
    fn parked_messages_leave_the_window() {
        let mut m = SharedMachine::new(config(), &[0]);
        let park: Vec<(u32, u64, i64)> = (0..WINDOW).map(|o| (0, o, 1_000_000)).collect();
        m.apply(
            0,
            Op::Acquire {
                now: 0,
                member: "a".into(),
                deadline: 1_000,
                lease: 1,
                items: vec![(0, WINDOW, None)],
                floors: vec![],
                gaps: vec![],
                park,
            },
        );
        assert_eq!(m.window_end(0, 0), 2 * WINDOW);
        assert_eq!(m.counts(0).in_flight, 1, "past a window of parked messages");
        assert_eq!(m.counts(0).delayed, WINDOW);
        assert_eq!(
            m.window_end(0, 1_000_000),
            WINDOW,
            "due: back in the window"
        );
    }

    #[test]
    fn a_release_gives_back_what_nobody_got() {
        let mut m = SharedMachine::new(config(), &[0]);
        granted(acquire(&mut m, 0, "a", &[(0, 0)]));
        m.apply(
            0,
            Op::Release {
                lease: 8,
                items: vec![(0, 0)],
            },
        );
        assert_eq!(m.counts(0).in_flight, 1, "another acquire's lease stays");
        m.apply(
            0,
            Op::Release {
                lease: 7,
                items: vec![(0, 0)],
            },
        );
        assert_eq!(
            granted(acquire(&mut m, 0, "b", &[(0, 0)])),
            [(0, 0, 1)],
            "count not bumped"
        );
    }

    #[test]
    fn redrive_moves_the_cursor_once() {
        let mut m = SharedMachine::new(config(), &[0]);
        m.dead = 3;
        m.apply(
            0,
            Op::Redrive {
                from: 0,
                cursor: 2,
                moved: 2,
            },
        );
        m.apply(
            0,
            Op::Redrive {
                from: 0,
                cursor: 2,
                moved: 2,
            },
        );
        assert_eq!((m.redrive_cursor(), m.dead_lettered()), (2, 1));
    }
}
