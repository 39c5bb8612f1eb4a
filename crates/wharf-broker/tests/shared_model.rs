//! Model-based property test of shared subscriptions (queues) on the embedded engine.
//!
//! A random topic (1..=3 partitions) with one shared subscription (random `max_deliveries`,
//! lease, exponential backoff without jitter, `ordered_by_key`, `max_in_flight_per_member`)
//! receives a random sequence of operations: publishes (random keys, some with
//! `wharf-deliver-at` in the past or a few seconds ahead), receives by three members (random
//! `max` and lease), acks / nacks (with or without a delay) / extends / terminates of ack_ids
//! picked from everything ever handed out (live, stale, from before a restart, or malformed),
//! clock moves (so leases expire and delays come due), redrives, and restarts (a clean close,
//! or a power loss of the in-memory file layer). A small reference model mirrors the state
//! machine of `src/embedded/shared.rs`: per queue (each partition, then the private retry log
//! that redrive appends to) and offset, a record is available from a time, leased by a member
//! until a deadline, acked or dead-lettered, with its delivery count and the availability
//! time its last nack made durable; plus the dead-letter topic in order and the redrive
//! cursor. Lease expiry is lazy, as in the engine: a receive first ends every lease whose
//! deadline is `<= now` as a failed delivery (dead letter `lease_expired` after the last
//! allowed delivery, else available again after the backoff). A restart makes every held
//! ack_id stale, drops leases and the backoff of expired leases (not durable), and keeps
//! counts, acks, nacks' availability times, dead letters and the redrive cursor.
//!
//! After every operation the test checks:
//!
//! 1. no message lost: each receive returns exactly the set the model predicts (what is
//!    deliverable now, after the failure handling of expired leases, under the per-key order
//!    and the member's in-flight cap), and `describe_subscription` agrees with the model
//!    (finished prefix per partition, lag, live leases, delayed records, members). At the end
//!    the clock runs far ahead and a member receives and acks everything until the model has
//!    nothing pending and the engine delivers nothing more; then every published message was
//!    acked exactly once (counting acks of redriven copies) or sits in the dead-letter topic
//!    exactly once beyond the redrive cursor, and each redriven dead letter has its copy;
//! 2. nothing is delivered while under a live lease (of any member, this one included);
//! 3. every `delivery_count` is the model's (across restarts; a redriven copy starts over),
//!    every lease deadline is `now + lease`, and each ack / nack / extend / terminate gives
//!    exactly the model's per-ack_id outcome (`lease_expired` for a stale one, `bad_ack_id`
//!    for a malformed one);
//! 4. the dead-letter topic holds exactly, in order, the records that failed their last
//!    allowed delivery (reason `nack` or `lease_expired`) or were terminated (with the given
//!    reason), with the source partition / offset / delivery count, the original key, value and
//!    headers; `dead_lettered` is its size minus what was redriven.
//!
//! Per-key order holds across all queues, the retry queue read first
//! (`redriven_copy_respects_key_order`). Dead letters carry the engine's own
//! `wharf-message-id` (it makes the dead-letter publish idempotent) and keep the producer's in
//! `wharf-dlq-message-id`; redriven copies get the producer's back
//! (`redriven_copy_keeps_its_message_id`); the property compares them without it.
//! Modelled quirk: under `ordered_by_key`, a record that a receive dead-letters (its lease
//! expired on the last allowed delivery) still holds back its key during that receive.
//!
//! Runs on `FaultFs` (in memory) with a `ManualClock`; `WHARF_PROPTEST_CASES` sets the number
//! of cases (default 32).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use wharf_broker::{
    AckOutcome, BrokerError, Delivery, EmbeddedConfig, EmbeddedEngine, Engine, HEADER_MESSAGE_ID,
    Message, Position, ReadRequest, ReceiveRequest, SharedConfig, StoredMessage,
    SubscriptionConfig, TopicConfig,
};
use wharf_log::ManualClock;
use wharf_log::vfs::fault::FaultFs;

const TOPIC: &str = "jobs";
const SUB: &str = "workers";
const START_MS: i64 = 1_700_000_000_000;
/// Receiving members; the last one only drains at the end.
const MEMBERS: [&str; 4] = ["m0", "m1", "m2", "drain"];
const DRAIN: usize = 3;
const DELIVER_AT: &str = "wharf-deliver-at";
const REASONS: [&str; 3] = ["poison", "", "bad input"];

fn cases() -> u32 {
    std::env::var("WHARF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

// ---- operations ---------------------------------------------------------------------------

/// Which ack_id an operation names.
#[derive(Clone, Debug)]
enum Pick {
    /// One the model holds live (else as `Any`).
    Live(Index),
    /// Any ack_id ever handed out (else as `Bad`).
    Any(Index),
    /// A malformed one.
    Bad(bool),
}

#[derive(Clone, Debug)]
enum Op {
    /// Messages: key (`k0`..`k3`) or none; `wharf-deliver-at` this many ms from now; a
    /// (unique) `wharf-message-id`.
    Publish(Vec<(Option<u8>, Option<i64>, bool)>),
    Receive {
        member: usize,
        max: usize,
        lease_ms: Option<u64>,
    },
    Ack(Vec<Pick>),
    Nack(Vec<Pick>, Option<u64>),
    Extend(Vec<Pick>, u64),
    Terminate(Vec<Pick>, usize),
    Advance(i64),
    Redrive(usize),
    /// Close and reopen (or lose power, with this seed); advance the clock by `down` ms
    /// meanwhile (0 keeps the engine's incarnation number).
    Restart {
        power_loss: Option<u64>,
        down: i64,
    },
}

fn picks() -> impl Strategy<Value = Vec<Pick>> {
    proptest::collection::vec(
        prop_oneof![
            8 => any::<Index>().prop_map(Pick::Live),
            3 => any::<Index>().prop_map(Pick::Any),
            1 => any::<bool>().prop_map(Pick::Bad),
        ],
        1..4,
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec(
            (
                proptest::option::weighted(0.7, 0u8..4),
                proptest::option::weighted(0.25, -3_000i64..8_000),
                any::<bool>(),
            ),
            1..5,
        )
        .prop_map(Op::Publish),
        6 => (
            0..3usize,
            1usize..=5,
            proptest::option::weighted(0.3, prop_oneof![500u64..10_000, Just(100u64)]),
        )
            .prop_map(|(member, max, lease_ms)| Op::Receive { member, max, lease_ms }),
        3 => picks().prop_map(Op::Ack),
        2 => (picks(), proptest::option::weighted(0.5, prop_oneof![Just(0u64), 1u64..5_000]))
            .prop_map(|(p, d)| Op::Nack(p, d)),
        1 => (picks(), prop_oneof![100u64..10_000, Just(5_000u64)])
            .prop_map(|(p, l)| Op::Extend(p, l)),
        1 => (picks(), 0..REASONS.len()).prop_map(|(p, r)| Op::Terminate(p, r)),
        3 => prop_oneof![0i64..8_000, (0i64..=16).prop_map(|x| x * 500), Just(1i64)]
            .prop_map(Op::Advance),
        1 => (1usize..4).prop_map(Op::Redrive),
        1 => (proptest::option::weighted(0.4, any::<u64>()), prop_oneof![Just(0i64), 1i64..3_000])
            .prop_map(|(power_loss, down)| Op::Restart { power_loss, down }),
    ]
}

#[derive(Clone, Debug)]
struct Setup {
    partitions: u32,
    max_deliveries: u32,
    lease_ms: u64,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    ordered_by_key: bool,
    max_in_flight: u32,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1u32..=3,
        1u32..=4,
        prop_oneof![Just(5_000u64), 1_000u64..6_000],
        prop_oneof![(1u64..=20).prop_map(|x| x * 100), 100u64..=2_000],
        prop_oneof![Just(0u64), 0u64..5_000, Just(u64::MAX)],
        any::<bool>(),
        prop_oneof![1u32..=3, Just(1_000u32)],
    )
        .prop_map(
            |(partitions, max_deliveries, lease_ms, initial, extra, ordered_by_key, cap)| Setup {
                partitions,
                max_deliveries,
                lease_ms,
                backoff_initial_ms: initial,
                // Large: the cap (at most 7 days) rarely binds.
                backoff_max_ms: initial.saturating_add(extra).min(7 * 86_400_000),
                ordered_by_key,
                max_in_flight: cap,
            },
        )
}

// ---- the model ----------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum St {
    Available { at: i64 },
    Leased { member: usize, deadline: i64 },
    Acked,
    Dead,
}

/// A record of a queue (a partition, or the retry log).
#[derive(Clone, Debug)]
struct Rec {
    /// Index into `Model::msgs` (a redriven copy names its original).
    msg: usize,
    deliveries: u32,
    st: St,
    /// The availability time the last nack made durable (0 if none).
    nack_at: i64,
}

impl Rec {
    fn finished(&self) -> bool {
        matches!(self.st, St::Acked | St::Dead)
    }

    fn live_lease(&self, now: i64) -> Option<usize> {
        match self.st {
            St::Leased { member, deadline } if deadline > now => Some(member),
            _ => None,
        }
    }
}

/// A published message.
#[derive(Clone, Debug)]
struct Msg {
    partition: u32,
    offset: u64,
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<(String, String)>,
    /// `wharf-deliver-at` (0 if none).
    deliver_at: i64,
}

/// A dead letter: which message, after how many deliveries, why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DeadLetter {
    partition: u32,
    offset: u64,
    deliveries: u32,
    reason: String,
}

/// An ack_id handed out by a receive.
#[derive(Clone, Debug)]
struct Held {
    ack_id: String,
    q: usize,
    offset: usize,
    deliveries: u32,
    /// The engine incarnation (restart count) that handed it out.
    generation: u32,
}

struct Model {
    s: Setup,
    msgs: Vec<Msg>,
    by_pos: HashMap<(u32, u64), usize>,
    partition_of_key: HashMap<Bytes, u32>,
    /// Per queue: the partitions, then the retry log; records by offset.
    queues: Vec<Vec<Rec>>,
    /// The dead-letter topic, in order, with the message each entry is of.
    dlq: Vec<(usize, DeadLetter)>,
    /// How many dead letters were redriven.
    cursor: usize,
    /// Successful acks per message (its original or a redriven copy).
    acks: Vec<u32>,
    held: Vec<Held>,
    generation: u32,
    next_value: u64,
}

impl Model {
    fn retry(&self) -> usize {
        self.s.partitions as usize
    }

    /// The backoff after `deliveries` failed attempts (no jitter).
    fn backoff(&self, deliveries: u32) -> i64 {
        let exp = deliveries.saturating_sub(1).min(40);
        let base = self
            .s
            .backoff_initial_ms
            .saturating_mul(1u64 << exp)
            .min(self.s.backoff_max_ms);
        i64::try_from(base).unwrap()
    }

    /// A failed delivery (nack or lease expiry) of a record: dead letter after the last
    /// allowed delivery, else available again after `delay` or the backoff. Only a nack's
    /// availability time is durable.
    fn fail(&mut self, q: usize, o: usize, delay: Option<i64>, reason: &str, now: i64) {
        let deliveries = self.queues[q][o].deliveries;
        if deliveries >= self.s.max_deliveries {
            self.dead_letter(q, o, reason);
            return;
        }
        let at = now + delay.unwrap_or_else(|| self.backoff(deliveries));
        let rec = &mut self.queues[q][o];
        rec.st = St::Available { at };
        if reason == "nack" {
            rec.nack_at = at;
        }
    }

    fn dead_letter(&mut self, q: usize, o: usize, reason: &str) {
        let rec = &mut self.queues[q][o];
        rec.st = St::Dead;
        let m = &self.msgs[rec.msg];
        let letter = DeadLetter {
            partition: m.partition,
            offset: m.offset,
            deliveries: rec.deliveries,
            reason: reason.to_owned(),
        };
        self.dlq.push((rec.msg, letter));
    }

    /// Ends expired leases (in queue and offset order); the backoff counts from the
    /// deadline. Returns the records this dead-lettered.
    fn expire(&mut self, now: i64) -> BTreeSet<(usize, usize)> {
        let mut finishing = BTreeSet::new();
        for q in 0..self.queues.len() {
            for o in 0..self.queues[q].len() {
                if let St::Leased { deadline, .. } = self.queues[q][o].st
                    && deadline <= now
                {
                    self.fail(q, o, None, "lease_expired", deadline);
                    if self.queues[q][o].st == St::Dead {
                        finishing.insert((q, o));
                    }
                }
            }
        }
        finishing
    }

    /// A receive: expired leases fail first (in queue and offset order); then, per queue in
    /// offset order, available records are leased up to the room the member has, skipping
    /// keys with an earlier unfinished record when ordered. Returns (queue, offset) leased.
    fn receive(
        &mut self,
        now: i64,
        member: usize,
        max: usize,
        lease_ms: u64,
    ) -> Vec<(usize, usize)> {
        // Records dead-lettered by this expiry are still being finished while the receive
        // picks: under `ordered_by_key` they hold back their key until the next receive.
        let finishing = self.expire(now);
        let in_flight = self
            .queues
            .iter()
            .flatten()
            .filter(|r| matches!(r.st, St::Leased { member: m, .. } if m == member))
            .count();
        let room = max.min((self.s.max_in_flight as usize).saturating_sub(in_flight));
        let mut out = Vec::new();
        // The retry queue first (it holds the oldest messages), then the partitions; per-key
        // order holds across all of them.
        let n = self.queues.len();
        // A key with a delivery in flight (or being dead-lettered) anywhere waits.
        let mut blocked: BTreeSet<Bytes> = BTreeSet::new();
        if self.s.ordered_by_key {
            for q in 0..n {
                for o in 0..self.queues[q].len() {
                    let r = &self.queues[q][o];
                    if (matches!(r.st, St::Leased { .. }) || finishing.contains(&(q, o)))
                        && let Some(k) = self.msgs[r.msg].key.clone()
                    {
                        blocked.insert(k);
                    }
                }
            }
        }
        for q in std::iter::once(n - 1).chain(0..n - 1) {
            for o in 0..self.queues[q].len() {
                let key = self.msgs[self.queues[q][o].msg].key.clone();
                let ordered = self.s.ordered_by_key && key.is_some();
                if ordered && key.as_ref().is_some_and(|k| blocked.contains(k)) {
                    continue;
                }
                let rec = &mut self.queues[q][o];
                if rec.finished() && !finishing.contains(&(q, o)) {
                    continue;
                }
                if matches!(rec.st, St::Available { at } if at <= now) && out.len() < room {
                    rec.deliveries += 1;
                    rec.st = St::Leased {
                        member,
                        deadline: now + lease_ms as i64,
                    };
                    out.push((q, o));
                }
                if let (true, Some(k)) = (ordered, key) {
                    blocked.insert(k);
                }
            }
        }
        out
    }

    /// Whether the engine should take this ack_id now.
    fn live(&self, h: &Held, now: i64) -> bool {
        let rec = &self.queues[h.q][h.offset];
        h.generation == self.generation
            && rec.deliveries == h.deliveries
            && rec.live_lease(now).is_some()
    }

    /// A restart: ack_ids go stale; leased records and those backing off after an expired
    /// lease are available from their durable time (the last nack's, or `wharf-deliver-at`).
    fn restart(&mut self) {
        self.generation += 1;
        for q in &mut self.queues {
            for rec in q.iter_mut() {
                if !rec.finished() {
                    let deliver_at = self.msgs[rec.msg].deliver_at;
                    rec.st = St::Available {
                        at: rec.nack_at.max(deliver_at),
                    };
                }
            }
        }
    }

    fn pending(&self) -> usize {
        self.queues
            .iter()
            .flatten()
            .filter(|r| !r.finished())
            .count()
    }

    fn resolve(&self, pick: &Pick, now: i64) -> (String, Option<usize>) {
        let bad = |b: bool| {
            if b {
                "nonsense".to_owned()
            } else {
                // Well-formed, but no such queue.
                "1.99.0.1".to_owned()
            }
        };
        match pick {
            Pick::Live(i) => {
                let live: Vec<usize> = (0..self.held.len())
                    .filter(|&k| self.live(&self.held[k], now))
                    .collect();
                if live.is_empty() {
                    return self.resolve(&Pick::Any(*i), now);
                }
                let k = live[i.index(live.len())];
                (self.held[k].ack_id.clone(), Some(k))
            }
            Pick::Any(i) if !self.held.is_empty() => {
                let k = i.index(self.held.len());
                (self.held[k].ack_id.clone(), Some(k))
            }
            Pick::Any(_) => (bad(true), None),
            Pick::Bad(b) => (bad(*b), None),
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Every published header is there (the message id of dead letters and copies is checked by
/// `redriven_copy_keeps_its_message_id`).
fn same_headers(got: &[(String, String)], want: &[(String, String)]) -> Result<(), TestCaseError> {
    let copy = header(got, "wharf-dlq-source-offset").is_some();
    for (k, v) in want {
        if copy && k == HEADER_MESSAGE_ID {
            continue;
        }
        prop_assert_eq!(header(got, k), Some(v.as_str()), "header {}", k);
    }
    Ok(())
}

fn ok<T>(r: Result<T, BrokerError>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: unexpected error {e:?}")))
}

// ---- the harness --------------------------------------------------------------------------

struct Harness {
    fs: FaultFs,
    clock: ManualClock,
    engine: Option<EmbeddedEngine>,
    m: Model,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    Ack,
    Nack(Option<u64>),
    Extend(u64),
    Terminate(usize),
}

impl Harness {
    fn open(fs: &FaultFs, clock: &ManualClock) -> Result<EmbeddedEngine, TestCaseError> {
        ok(
            EmbeddedEngine::open(EmbeddedConfig {
                data_dir: Path::new("/data").to_path_buf(),
                vfs: fs.shared(),
                clock: Arc::new(clock.clone()),
            }),
            "open",
        )
    }

    fn e(&self) -> &EmbeddedEngine {
        self.engine.as_ref().expect("the engine is open")
    }

    fn now(&self) -> i64 {
        wharf_log::Clock::now_ms(&self.clock)
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Publish(spec) => self.publish(spec).await,
            Op::Receive {
                member,
                max,
                lease_ms,
            } => self.receive(*member, *max, *lease_ms).await.map(|_| ()),
            Op::Ack(p) => self.settle(p, Settle::Ack).await,
            Op::Nack(p, d) => self.settle(p, Settle::Nack(*d)).await,
            Op::Extend(p, l) => self.settle(p, Settle::Extend(*l)).await,
            Op::Terminate(p, r) => self.settle(p, Settle::Terminate(*r)).await,
            Op::Advance(ms) => {
                self.clock.advance(*ms);
                Ok(())
            }
            Op::Redrive(max) => self.redrive(*max).await,
            Op::Restart { power_loss, down } => self.restart(*power_loss, *down).await,
        }
    }

    async fn publish(
        &mut self,
        spec: &[(Option<u8>, Option<i64>, bool)],
    ) -> Result<(), TestCaseError> {
        let now = self.now();
        let mut wanted = Vec::new();
        let messages: Vec<Message> = spec
            .iter()
            .map(|(key, deliver_in, with_id)| {
                self.m.next_value += 1;
                let mut m = Message::new(format!("v{}", self.m.next_value));
                if *with_id {
                    m = m.with_id(format!("id{}", self.m.next_value));
                }
                if let Some(k) = key {
                    m = m.with_key(format!("k{k}"));
                }
                let mut deliver_at = 0;
                if let Some(d) = deliver_in {
                    deliver_at = now + d;
                    m = m.with_header(DELIVER_AT, wharf_broker::time::format_rfc3339(deliver_at));
                }
                wanted.push(deliver_at);
                m
            })
            .collect();
        let published = ok(self.e().publish(TOPIC, messages.clone()).await, "publish")?;
        prop_assert_eq!(published.len(), messages.len());
        for ((p, m), deliver_at) in published.iter().zip(messages).zip(wanted) {
            prop_assert!(!p.duplicate);
            let part = p.partition as usize;
            prop_assert!(part < self.m.retry(), "partition {}", p.partition);
            prop_assert_eq!(
                p.offset,
                self.m.queues[part].len() as u64,
                "offsets are dense"
            );
            if let Some(k) = &m.key {
                let first = *self
                    .m
                    .partition_of_key
                    .entry(k.clone())
                    .or_insert(p.partition);
                prop_assert_eq!(first, p.partition, "one partition per key");
            }
            let i = self.m.msgs.len();
            self.m.msgs.push(Msg {
                partition: p.partition,
                offset: p.offset,
                key: m.key,
                value: m.value,
                headers: m.headers,
                deliver_at,
            });
            self.m.by_pos.insert((p.partition, p.offset), i);
            self.m.acks.push(0);
            self.m.queues[part].push(Rec {
                msg: i,
                deliveries: 0,
                st: St::Available { at: deliver_at },
                nack_at: 0,
            });
        }
        Ok(())
    }

    /// Which model record a delivery is: an original by its partition and offset; a redriven
    /// copy (it carries the dead-letter headers) is the unfinished retry record of its
    /// original, of which there is at most one.
    fn locate(&self, d: &Delivery) -> Result<(usize, usize), TestCaseError> {
        let m = &d.message;
        let Some(&i) = self.m.by_pos.get(&(m.partition, m.offset)) else {
            return Err(TestCaseError::fail(format!(
                "delivered an unknown message {m:?}"
            )));
        };
        if header(&m.headers, "wharf-dlq-source-offset").is_none() {
            return Ok((m.partition as usize, m.offset as usize));
        }
        let retry = self.m.retry();
        let copies: Vec<usize> = (0..self.m.queues[retry].len())
            .filter(|&o| {
                let r = &self.m.queues[retry][o];
                r.msg == i && !r.finished()
            })
            .collect();
        prop_assert_eq!(
            copies.len(),
            1,
            "a delivered copy of {:?} must be the one unfinished copy",
            (m.partition, m.offset)
        );
        prop_assert_eq!(
            header(&m.headers, "wharf-dlq-source-partition"),
            Some(&*m.partition.to_string())
        );
        prop_assert_eq!(
            header(&m.headers, "wharf-dlq-source-offset"),
            Some(&*m.offset.to_string())
        );
        Ok((retry, copies[0]))
    }

    /// The message is as published (a copy also carries dead-letter headers).
    fn same_message(&self, got: &StoredMessage, i: usize) -> Result<(), TestCaseError> {
        let want = &self.m.msgs[i];
        prop_assert_eq!(&got.value, &want.value);
        prop_assert_eq!(&got.key, &want.key);
        prop_assert_eq!(got.partition, want.partition);
        prop_assert_eq!(got.offset, want.offset);
        same_headers(&got.headers, &want.headers)
    }

    async fn receive(
        &mut self,
        member: usize,
        max: usize,
        lease_ms: Option<u64>,
    ) -> Result<usize, TestCaseError> {
        let now = self.now();
        let got = ok(
            self.e()
                .receive(
                    TOPIC,
                    SUB,
                    ReceiveRequest {
                        member: Some(MEMBERS[member].to_owned()),
                        max,
                        lease: lease_ms.map(Duration::from_millis),
                        wait: Duration::ZERO,
                    },
                )
                .await,
            "receive",
        )?;
        // Check 2, against the state before the receive: nothing under a live lease.
        let mut located = Vec::new();
        for d in &got {
            let (q, o) = self.locate(d)?;
            let rec = &self.m.queues[q][o];
            prop_assert!(
                !rec.finished(),
                "delivered a finished record {:?}: {:?}",
                (q, o),
                rec
            );
            if let Some(holder) = rec.live_lease(now) {
                return Err(TestCaseError::fail(format!(
                    "{:?} delivered to {} while leased to {} ({rec:?})",
                    (q, o),
                    MEMBERS[member],
                    MEMBERS[holder]
                )));
            }
            self.same_message(&d.message, rec.msg)?;
            located.push((q, o));
        }
        let lease = lease_ms.unwrap_or(self.m.s.lease_ms);
        let before = self.m.dlq.len();
        let mut expected = self.m.receive(now, member, max, lease);
        expected.sort_unstable();
        let mut actual = located.clone();
        actual.sort_unstable();
        prop_assert_eq!(&actual, &expected, "received set (queue, offset)");
        // Check 3: delivery counts and deadlines.
        for (d, &(q, o)) in got.iter().zip(&located) {
            let rec = &self.m.queues[q][o];
            prop_assert_eq!(
                d.delivery_count,
                rec.deliveries,
                "delivery count of {:?}",
                (q, o)
            );
            prop_assert_eq!(d.lease_deadline, now + lease as i64);
            self.m.held.push(Held {
                ack_id: d.ack_id.clone(),
                q,
                offset: o,
                deliveries: rec.deliveries,
                generation: self.m.generation,
            });
        }
        if self.m.dlq.len() != before {
            self.check_dlq().await?;
        }
        Ok(got.len())
    }

    async fn settle(&mut self, picks: &[Pick], what: Settle) -> Result<(), TestCaseError> {
        let now = self.now();
        let resolved: Vec<(String, Option<usize>)> =
            picks.iter().map(|p| self.m.resolve(p, now)).collect();
        let ids: Vec<String> = resolved.iter().map(|(id, _)| id.clone()).collect();
        let e = self.e();
        let outcomes: Vec<AckOutcome> = match what {
            Settle::Ack => ok(e.ack(TOPIC, SUB, &ids).await, "ack")?,
            Settle::Nack(d) => ok(e.nack(TOPIC, SUB, &ids, d).await, "nack")?,
            Settle::Extend(l) => ok(e.extend(TOPIC, SUB, &ids, l).await, "extend")?,
            Settle::Terminate(r) => {
                ok(e.terminate(TOPIC, SUB, &ids, REASONS[r]).await, "terminate")?
            }
        };
        prop_assert_eq!(outcomes.len(), ids.len());
        let before = self.m.dlq.len();
        // In ack_id order, each seeing the effect of the ones before it.
        for ((id, k), out) in resolved.iter().zip(&outcomes) {
            prop_assert_eq!(&out.ack_id, id);
            let expected = match k {
                None => Some("bad_ack_id"),
                Some(k) if !self.m.live(&self.m.held[*k], now) => Some("lease_expired"),
                Some(k) => {
                    let (q, o) = (self.m.held[*k].q, self.m.held[*k].offset);
                    match what {
                        Settle::Ack => {
                            self.m.queues[q][o].st = St::Acked;
                            self.m.acks[self.m.queues[q][o].msg] += 1;
                        }
                        Settle::Nack(d) => {
                            self.m.fail(q, o, d.map(|d| d as i64), "nack", now);
                        }
                        Settle::Extend(l) => {
                            if let St::Leased { deadline, .. } = &mut self.m.queues[q][o].st {
                                *deadline = now + l as i64;
                            }
                        }
                        Settle::Terminate(r) => {
                            let reason = if REASONS[r].is_empty() {
                                "terminated"
                            } else {
                                REASONS[r]
                            };
                            self.m.dead_letter(q, o, reason);
                        }
                    }
                    None
                }
            };
            prop_assert_eq!(
                out.error.as_deref(),
                expected,
                "outcome of {} ({:?})",
                id,
                what
            );
        }
        if self.m.dlq.len() != before {
            self.check_dlq().await?;
        }
        Ok(())
    }

    async fn redrive(&mut self, max: usize) -> Result<(), TestCaseError> {
        let moved = ok(self.e().redrive(TOPIC, SUB, max).await, "redrive")?;
        let expected = max.min(self.m.dlq.len() - self.m.cursor);
        prop_assert_eq!(moved, expected as u64, "redriven");
        let retry = self.m.retry();
        for k in self.m.cursor..self.m.cursor + expected {
            let msg = self.m.dlq[k].0;
            let at = self.m.msgs[msg].deliver_at;
            self.m.queues[retry].push(Rec {
                msg,
                deliveries: 0,
                st: St::Available { at },
                nack_at: 0,
            });
        }
        self.m.cursor += expected;
        Ok(())
    }

    async fn restart(&mut self, power_loss: Option<u64>, down: i64) -> Result<(), TestCaseError> {
        let engine = self.engine.take().expect("open");
        match power_loss {
            None => ok(engine.close(), "close")?,
            Some(seed) => self.fs.power_loss(seed),
        }
        drop(engine);
        self.clock.advance(down);
        self.engine = Some(Self::open(&self.fs, &self.clock)?);
        self.m.restart();
        self.check_dlq().await
    }

    /// Check 4: the dead-letter topic is the model's, in order.
    async fn check_dlq(&self) -> Result<(), TestCaseError> {
        let r = ok(
            self.e()
                .dead_letters(
                    TOPIC,
                    SUB,
                    ReadRequest {
                        max_messages: 100_000,
                        max_bytes: 64 << 20,
                        ..ReadRequest::new(0, Position::Offset(0))
                    },
                )
                .await,
            "dead_letters",
        )?;
        let mut got = Vec::new();
        for m in &r.messages {
            let h = |k: &str| header(&m.headers, k).map(str::to_owned);
            let (Some(p), Some(o), Some(d), Some(reason)) = (
                h("wharf-dlq-source-partition").and_then(|v| v.parse().ok()),
                h("wharf-dlq-source-offset").and_then(|v| v.parse().ok()),
                h("wharf-dlq-deliveries").and_then(|v| v.parse().ok()),
                h("wharf-dlq-reason"),
            ) else {
                return Err(TestCaseError::fail(format!(
                    "dead letter without its headers: {m:?}"
                )));
            };
            prop_assert_eq!(header(&m.headers, "wharf-dlq-source-topic"), Some(TOPIC));
            prop_assert!(h("wharf-dlq-time").is_some());
            let letter = DeadLetter {
                partition: p,
                offset: o,
                deliveries: d,
                reason,
            };
            if let Some(&i) = self.m.by_pos.get(&(p, o)) {
                let want = &self.m.msgs[i];
                prop_assert_eq!(&m.value, &want.value);
                prop_assert_eq!(&m.key, &want.key);
                same_headers(&m.headers, &want.headers)?;
            }
            got.push(letter);
        }
        let want: Vec<DeadLetter> = self.m.dlq.iter().map(|(_, d)| d.clone()).collect();
        prop_assert_eq!(got, want, "dead-letter topic");
        Ok(())
    }

    /// Check 1 (and more) through `describe_subscription`.
    async fn check_describe(&mut self) -> Result<(), TestCaseError> {
        let now = self.now();
        let info = ok(self.e().describe_subscription(TOPIC, SUB).await, "describe")?;
        // Describing ends expired leases, as a receive does.
        self.m.expire(now);
        let m = &self.m;
        prop_assert_eq!(
            info.dead_lettered,
            (m.dlq.len() - m.cursor) as u64,
            "dead_lettered"
        );
        let all = || m.queues.iter().flatten();
        let in_flight = all().filter(|r| r.live_lease(now).is_some()).count();
        prop_assert_eq!(info.in_flight, in_flight as u64, "in_flight");
        let delayed = all()
            .filter(|r| matches!(r.st, St::Available { at } if at > now))
            .count();
        prop_assert_eq!(info.delayed, delayed as u64, "delayed");
        let members: BTreeSet<&str> = all()
            .filter_map(|r| r.live_lease(now))
            .map(|k| MEMBERS[k])
            .collect();
        let got: Vec<&str> = info.members.iter().map(String::as_str).collect();
        prop_assert_eq!(got, members.into_iter().collect::<Vec<_>>(), "members");
        prop_assert_eq!(info.partitions.len(), m.retry());
        for (p, sp) in info.partitions.iter().enumerate() {
            let q = &m.queues[p];
            let committed = q.iter().position(|r| !r.finished()).unwrap_or(q.len()) as u64;
            prop_assert_eq!(sp.partition, p as u32);
            prop_assert_eq!(
                sp.committed,
                committed,
                "finished prefix of partition {}",
                p
            );
            prop_assert_eq!(sp.lag, q.len() as u64 - committed, "lag of partition {}", p);
        }
        Ok(())
    }

    /// Lets time run and drains everything; then every message is acked or dead-lettered
    /// exactly once.
    async fn drain(&mut self) -> Result<(), TestCaseError> {
        let mut idle = 0;
        for _ in 0..10_000 {
            let n = self.receive(DRAIN, 1_000, None).await?;
            if n == 0 {
                if self.m.pending() == 0 {
                    idle += 1;
                    if idle == 2 {
                        break;
                    }
                }
                self.clock.advance(1_000_000);
                continue;
            }
            idle = 0;
            // Ack what was just received (the newest held ack_ids).
            let first = self.m.held.len() - n;
            let ids: Vec<String> = self.m.held[first..]
                .iter()
                .map(|h| h.ack_id.clone())
                .collect();
            let outcomes = ok(self.e().ack(TOPIC, SUB, &ids).await, "drain ack")?;
            for (k, out) in (first..).zip(&outcomes) {
                prop_assert_eq!(out.error.as_deref(), None, "drain ack");
                let (q, o) = (self.m.held[k].q, self.m.held[k].offset);
                self.m.queues[q][o].st = St::Acked;
                self.m.acks[self.m.queues[q][o].msg] += 1;
            }
            self.check_describe().await?;
        }
        prop_assert_eq!(self.m.pending(), 0, "drained");
        self.check_dlq().await?;
        self.check_describe().await?;
        // Exactly once: acked, or dead-lettered beyond the redrive cursor.
        let mut unredriven: BTreeMap<usize, u32> = BTreeMap::new();
        let mut redriven: BTreeMap<usize, u32> = BTreeMap::new();
        for (k, (i, _)) in self.m.dlq.iter().enumerate() {
            let into = if k < self.m.cursor {
                &mut redriven
            } else {
                &mut unredriven
            };
            *into.entry(*i).or_default() += 1;
        }
        let retry = self.m.retry();
        for i in 0..self.m.msgs.len() {
            let acks = self.m.acks[i];
            let dead = unredriven.get(&i).copied().unwrap_or(0);
            prop_assert_eq!(
                acks + dead,
                1,
                "message {:?}: {} acks, {} dead letters",
                i,
                acks,
                dead
            );
            let copies = self.m.queues[retry].iter().filter(|r| r.msg == i).count() as u32;
            prop_assert_eq!(
                redriven.get(&i).copied().unwrap_or(0),
                copies,
                "copies of {}",
                i
            );
        }
        Ok(())
    }
}

fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let fs = FaultFs::new();
        let clock = ManualClock::new(START_MS);
        let engine = Harness::open(&fs, &clock)?;
        let n = setup.partitions as usize;
        let config = SharedConfig {
            max_deliveries: setup.max_deliveries,
            lease_ms: setup.lease_ms,
            backoff_initial_ms: setup.backoff_initial_ms,
            backoff_max_ms: setup.backoff_max_ms,
            backoff_jitter_pct: 0,
            ordered_by_key: setup.ordered_by_key,
            max_in_flight_per_member: setup.max_in_flight,
            start: Position::Earliest,
            push: None,
        };
        let mut h = Harness {
            fs,
            clock,
            engine: Some(engine),
            m: Model {
                s: setup.clone(),
                msgs: Vec::new(),
                by_pos: HashMap::new(),
                partition_of_key: HashMap::new(),
                queues: vec![Vec::new(); n + 1],
                dlq: Vec::new(),
                cursor: 0,
                acks: Vec::new(),
                held: Vec::new(),
                generation: 0,
                next_value: 0,
            },
        };
        ok(
            h.e()
                .create_topic(
                    TOPIC,
                    TopicConfig {
                        partitions: setup.partitions,
                        segment_bytes: 64 * 1024,
                        ..TopicConfig::default()
                    },
                )
                .await,
            "create topic",
        )?;
        ok(
            h.e()
                .create_subscription(TOPIC, SUB, SubscriptionConfig::Shared(config))
                .await,
            "create subscription",
        )?;
        for (i, op) in ops.iter().enumerate() {
            h.step(op)
                .await
                .map_err(|e| TestCaseError::fail(format!("op {i} {op:?}: {e}")))?;
            h.check_describe()
                .await
                .map_err(|e| TestCaseError::fail(format!("after op {i} {op:?}: {e}")))?;
        }
        h.drain()
            .await
            .map_err(|e| TestCaseError::fail(format!("drain: {e}")))?;
        if let Some(engine) = h.engine.take() {
            ok(engine.close(), "close")?;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn shared_subscriptions_match_the_model(
        setup in setup(),
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        run(setup, ops)?;
    }
}

/// DESIGN.md §1: "optional ordering by key (one in flight per key)". The engine orders keys
/// per queue, and a redriven copy lives in the retry queue: it is delivered while a later
/// message of its key is still leased (found while writing the model above, which models
/// the per-queue behaviour so that it can keep checking everything else).
#[test]
fn redriven_copy_respects_key_order() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fs = FaultFs::new();
        let clock = ManualClock::new(START_MS);
        let e = Harness::open(&fs, &clock).expect("open");
        e.create_topic(TOPIC, TopicConfig::default()).await.unwrap();
        let config = SharedConfig {
            ordered_by_key: true,
            backoff_jitter_pct: 0,
            ..SharedConfig::default()
        };
        e.create_subscription(TOPIC, SUB, SubscriptionConfig::Shared(config))
            .await
            .unwrap();
        e.publish(
            TOPIC,
            vec![
                Message::new("a").with_key("k"),
                Message::new("b").with_key("k"),
            ],
        )
        .await
        .unwrap();
        let receive = |member: &str| ReceiveRequest {
            member: Some(member.to_owned()),
            max: 10,
            lease: None,
            wait: Duration::ZERO,
        };
        let a = e.receive(TOPIC, SUB, receive("m0")).await.unwrap();
        assert_eq!(a.len(), 1, "one in flight per key");
        e.terminate(TOPIC, SUB, &[a[0].ack_id.clone()], "poison")
            .await
            .unwrap();
        let b = e.receive(TOPIC, SUB, receive("m0")).await.unwrap();
        assert_eq!(&b[0].message.value[..], b"b");
        assert_eq!(e.redrive(TOPIC, SUB, 1).await.unwrap(), 1);
        // b (key k) is in flight: a's copy (key k) must wait.
        let again = e.receive(TOPIC, SUB, receive("m1")).await.unwrap();
        assert!(
            again.is_empty(),
            "delivered while b (same key) is leased: {again:?}"
        );
    });
}

/// A redriven message is "presented as the original message", but its `wharf-message-id`
/// (the producer's idempotency key, which consumers also use to drop duplicates) is replaced
/// by the engine's internal dead-letter id `dlq/{sub}/{queue}/{offset}/{deliveries}/{topic}`;
/// the producer's id is in neither the dead letter nor the copy.
#[test]
fn redriven_copy_keeps_its_message_id() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fs = FaultFs::new();
        let clock = ManualClock::new(START_MS);
        let e = Harness::open(&fs, &clock).expect("open");
        e.create_topic(TOPIC, TopicConfig::default()).await.unwrap();
        e.create_subscription(
            TOPIC,
            SUB,
            SubscriptionConfig::Shared(SharedConfig::default()),
        )
        .await
        .unwrap();
        e.publish(TOPIC, vec![Message::new("a").with_id("order-17")])
            .await
            .unwrap();
        let receive = ReceiveRequest {
            member: None,
            max: 10,
            lease: None,
            wait: Duration::ZERO,
        };
        let d = e.receive(TOPIC, SUB, receive.clone()).await.unwrap();
        assert_eq!(
            d[0].message.headers,
            vec![(HEADER_MESSAGE_ID.to_owned(), "order-17".to_owned())]
        );
        e.terminate(TOPIC, SUB, &[d[0].ack_id.clone()], "poison")
            .await
            .unwrap();
        assert_eq!(e.redrive(TOPIC, SUB, 1).await.unwrap(), 1);
        let copy = e.receive(TOPIC, SUB, receive).await.unwrap();
        assert_eq!(copy.len(), 1);
        assert_eq!(
            header(&copy[0].message.headers, HEADER_MESSAGE_ID),
            Some("order-17"),
            "{:?}",
            copy[0].message.headers
        );
    });
}
