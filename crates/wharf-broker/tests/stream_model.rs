//! Model-based property test of stream subscriptions (consumer groups) on the embedded engine.
//!
//! A random topic (1..=6 partitions) with one stream subscription receives a random sequence
//! of publishes, joins (new members, rejoins of known ids, chosen ids), heartbeats, leaves,
//! clock moves (so sessions expire, some members kept alive halfway), fetches, commits (of
//! what was fetched, or of lower, higher, zero or out-of-range offsets), resets and restarts
//! (clean, or a power loss of the in-memory file layer). An in-memory model mirrors what the
//! group must look like: which members are alive (a member is alive while
//! `now - last_seen <= session_timeout_ms`; every group operation expires the others),
//! the committed offsets, every published message, and where each member's next fetch may
//! start. After every operation the test checks:
//!
//! 1. at most one owner per partition: the assignments of all live members (asked by
//!    heartbeat) are disjoint, belong to one generation, and cover every partition whenever
//!    a member is alive; the member list of `describe_subscription` is the model's;
//! 2. committed offsets never go backwards except right after a reset, and equal the model's
//!    (a commit keeps the larger offset; a commit by a non-owner fails `not_assigned`, one by
//!    an unknown or expired member `unknown_member`, one beyond the high watermark
//!    `invalid_argument`, and none of them changes anything);
//! 3. after a restart the committed offsets are those from before, and a newly joined member
//!    fetches from exactly the committed offsets (a restart can also join such a member
//!    and check it directly);
//! 4. a fetch returns only messages of partitions the member owns, per partition in
//!    consecutive increasing offsets from where it may start (where its previous fetch ended,
//!    also the committed offset after a rebalance, and exactly the committed offset on a
//!    partition it just got or after a reset), each exactly as published; a fetch with room
//!    left drains every owned partition.
//!
//! Also: a join without an id never gets the id of a live member, a rejoin of a live member
//! changes nothing, and every acknowledged message survives restarts and power losses.
//!
//! Restarts may take no time at all on the injected clock (this found member ids reissued after
//! a restart in the same millisecond; fixed). Runs on `FaultFs` (in memory) with a
//! `ManualClock`; `WHARF_PROPTEST_CASES` sets the number of cases (default 32).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use wharf_broker::{
    BrokerError, Committed, EmbeddedConfig, EmbeddedEngine, Engine, FetchRequest, Message,
    Position, ReadRequest, ResetTo, StoredMessage, StreamConfig, SubscriptionConfig, TopicConfig,
};
use wharf_log::ManualClock;
use wharf_log::vfs::fault::FaultFs;

const TOPIC: &str = "orders";
const SUB: &str = "billing";
const TIMEOUT_MS: i64 = 10_000;
const START_MS: i64 = 1_700_000_000_000;

fn cases() -> u32 {
    std::env::var("WHARF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

// ---- operations ---------------------------------------------------------------------------

/// Which member an operation is for.
#[derive(Clone, Debug)]
enum Who {
    /// One the model believes alive (else as `Known`).
    Alive(usize),
    /// Any id ever seen, alive or not (else as `Stranger`).
    Known(usize),
    /// An id that never joined.
    Stranger,
}

/// Which partition a commit entry is for.
#[derive(Clone, Debug)]
enum Part {
    /// One the member owns (any partition if it owns none).
    Owned(usize),
    /// Any partition.
    Any(usize),
}

/// Which offset a commit entry gives.
#[derive(Clone, Debug)]
enum Target {
    /// Where the member has fetched up to (the committed offset if it never fetched).
    Fetched,
    /// That, moved by this much (may go below the committed offset or beyond the end).
    Delta(i64),
    /// The partition's high watermark.
    End,
    /// Beyond the high watermark by 1 + this.
    Beyond(u64),
    /// Zero.
    Zero,
}

#[derive(Clone, Debug)]
enum ResetPick {
    Earliest,
    Latest,
    /// (partition pick, offset pick, fault): fault 0 = a partition that does not exist,
    /// 1 = an offset beyond the high watermark, else valid.
    Offsets(Vec<(usize, u64, u8)>),
}

#[derive(Clone, Debug)]
enum Op {
    /// Messages: explicit partition pick (else keyed or round-robin), keyed.
    Publish(Vec<(Option<usize>, bool)>),
    JoinNew,
    /// Rejoin with a known id (alive or not).
    Rejoin(usize),
    /// Join with a chosen id `c{n}`.
    JoinNamed(u8),
    Heartbeat(Who),
    Leave(Who),
    /// Advance the clock by `first` ms, heartbeat the live members picked by `keep` (bit
    /// `i % 8` for the i-th in id order), advance by `then` ms.
    Clock {
        first: i64,
        keep: u8,
        then: i64,
    },
    Fetch(Who, usize),
    Commit(Who, Vec<(Part, Target)>),
    Reset(ResetPick),
    /// Close (or lose power: `crash` is the power-loss seed), let the clock move by `down_ms`,
    /// reopen; with `probe`, a new member joins and fetches everything right away.
    Restart {
        crash: Option<u64>,
        down_ms: i64,
        probe: bool,
    },
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        10 => any::<usize>().prop_map(Who::Alive),
        2 => any::<usize>().prop_map(Who::Known),
        1 => Just(Who::Stranger),
    ]
}

fn ms() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => 0i64..3_000,
        3 => 4_000i64..8_000,
        1 => 0i64..15_000,
        1 => Just(TIMEOUT_MS),
        1 => Just(TIMEOUT_MS + 1),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => Just(Target::Fetched),
        3 => (-4i64..=4).prop_map(Target::Delta),
        1 => Just(Target::End),
        1 => (0u64..3).prop_map(Target::Beyond),
        1 => Just(Target::Zero),
    ]
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        4 => any::<usize>().prop_map(Part::Owned),
        1 => any::<usize>().prop_map(Part::Any),
    ]
}

/// Operations; restarts take `0..5000` ms, or at least 1 ms unless `instant_restarts`.
fn op(instant_restarts: bool) -> impl Strategy<Value = Op> {
    let down = if instant_restarts {
        prop_oneof![Just(0i64), 1i64..5_000].boxed()
    } else {
        (1i64..5_000).boxed()
    };
    prop_oneof![
        4 => proptest::collection::vec((proptest::option::of(any::<usize>()), any::<bool>()), 1..6)
            .prop_map(Op::Publish),
        3 => Just(Op::JoinNew),
        1 => any::<usize>().prop_map(Op::Rejoin),
        1 => (0u8..4).prop_map(Op::JoinNamed),
        1 => who().prop_map(Op::Heartbeat),
        1 => who().prop_map(Op::Leave),
        2 => (ms(), any::<u8>(), ms()).prop_map(|(first, keep, then)| Op::Clock { first, keep, then }),
        5 => (who(), prop_oneof![3 => 1usize..6, 1 => 1usize..1_000]).prop_map(|(w, max)| Op::Fetch(w, max)),
        5 => (who(), proptest::collection::vec((part(), target()), 1..4))
            .prop_map(|(w, entries)| Op::Commit(w, entries)),
        1 => prop_oneof![
            Just(ResetPick::Earliest),
            Just(ResetPick::Latest),
            proptest::collection::vec((any::<usize>(), any::<u64>(), 0u8..12), 1..4)
                .prop_map(ResetPick::Offsets),
        ]
        .prop_map(Op::Reset),
        1 => (proptest::option::weighted(0.3, any::<u64>()), down, any::<bool>())
            .prop_map(|(crash, down_ms, probe)| Op::Restart { crash, down_ms, probe }),
    ]
}

#[derive(Clone, Debug)]
struct Setup {
    partitions: u32,
    /// Messages published before the subscription exists.
    before: usize,
    /// The subscription starts at `latest` (else `earliest`).
    start_latest: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    (1u32..=6, 0usize..6, any::<bool>()).prop_map(|(partitions, before, start_latest)| Setup {
        partitions,
        before,
        start_latest,
    })
}

// ---- the model ----------------------------------------------------------------------------

#[derive(Default)]
struct Model {
    /// Every published message (key, value), per partition, by offset.
    messages: Vec<Vec<(Option<Bytes>, Bytes)>>,
    committed: Vec<u64>,
    /// Live members and when they were last seen.
    alive: BTreeMap<String, i64>,
    /// Every id ever seen, first-seen order.
    known: Vec<String>,
    /// Owners as observed by the last check.
    owner: Vec<Option<String>>,
    /// Where each live member's next fetch of each owned partition may start.
    starts: BTreeMap<String, BTreeMap<u32, BTreeSet<u64>>>,
    /// The generation observed by the last check (`None` after a restart).
    generation: Option<u64>,
    /// Committed offsets observed by the last check.
    observed_committed: Vec<u64>,
    /// The assignment answered by a join, to compare with the next check's.
    reply: Option<(String, u64, Vec<u32>)>,
    next_value: u64,
}

impl Model {
    fn n(&self) -> usize {
        self.messages.len()
    }

    fn hw(&self, p: usize) -> u64 {
        self.messages[p].len() as u64
    }

    /// The expiry every group operation does first.
    fn expire(&mut self, now: i64) {
        self.alive.retain(|_, seen| now - *seen <= TIMEOUT_MS);
        let alive = &self.alive;
        self.starts.retain(|id, _| alive.contains_key(id));
    }

    fn know(&mut self, id: &str) {
        if !self.known.iter().any(|k| k == id) {
            self.known.push(id.to_owned());
        }
    }

    fn who(&self, w: &Who) -> String {
        let alive: Vec<&String> = self.alive.keys().collect();
        match w {
            Who::Alive(k) if !alive.is_empty() => alive[k % alive.len()].clone(),
            Who::Alive(k) | Who::Known(k) if !self.known.is_empty() => {
                self.known[k % self.known.len()].clone()
            }
            _ => "stranger".to_owned(),
        }
    }

    fn owned(&self, id: &str) -> Vec<u32> {
        (0..self.n())
            .filter(|&p| self.owner[p].as_deref() == Some(id))
            .map(|p| p as u32)
            .collect()
    }
}

fn expect_err<T: Debug>(
    r: Result<T, BrokerError>,
    code: &str,
    what: &str,
) -> Result<(), TestCaseError> {
    match r {
        Err(e) if e.code() == code => Ok(()),
        other => Err(TestCaseError::fail(format!(
            "{what}: expected `{code}`, got {other:?}"
        ))),
    }
}

fn ok<T>(r: Result<T, BrokerError>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: unexpected error {e:?}")))
}

// ---- the harness --------------------------------------------------------------------------

struct Harness {
    fs: FaultFs,
    clock: ManualClock,
    engine: Option<EmbeddedEngine>,
    model: Model,
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

    async fn publish(&mut self, spec: &[(Option<usize>, bool)]) -> Result<(), TestCaseError> {
        let n = self.model.n();
        let messages: Vec<Message> = spec
            .iter()
            .map(|(p, keyed)| {
                self.model.next_value += 1;
                let v = self.model.next_value;
                let mut m = Message::new(format!("v{v}"));
                if *keyed {
                    m = m.with_key(format!("k{}", v % 5));
                }
                if let Some(p) = p {
                    m = m.to_partition((p % n) as u32);
                }
                m
            })
            .collect();
        let published = ok(self.e().publish(TOPIC, messages.clone()).await, "publish")?;
        prop_assert_eq!(published.len(), messages.len());
        for (m, r) in messages.iter().zip(&published) {
            if let Some(p) = m.partition {
                prop_assert_eq!(r.partition, p);
            }
            prop_assert!(!r.duplicate);
            let p = r.partition as usize;
            prop_assert!(p < n, "published to partition {} of {}", p, n);
            prop_assert_eq!(r.offset, self.model.hw(p), "offset of a publish to {}", p);
            self.model.messages[p].push((m.key.clone(), m.value.clone()));
        }
        Ok(())
    }

    async fn join(&mut self, id: Option<String>) -> Result<(), TestCaseError> {
        let r = self.e().join(TOPIC, SUB, id.as_deref()).await;
        let now = self.now();
        self.model.expire(now);
        let m = ok(r, "join")?;
        if let Some(id) = &id {
            prop_assert_eq!(&m.member_id, id);
        }
        prop_assert!(!m.member_id.is_empty());
        let requested = id;
        let id = m.member_id.clone();
        let was_alive = self.model.alive.contains_key(&id);
        prop_assert!(
            !(requested.is_none() && was_alive),
            "a new member got the id of live {}",
            id
        );
        if was_alive {
            // A rejoin of a live member changes nothing.
            prop_assert_eq!(Some(m.generation), self.model.generation, "rejoin");
            prop_assert_eq!(&m.partitions, &self.model.owned(&id), "rejoin of {}", id);
        }
        self.model.alive.insert(id.clone(), now);
        self.model.know(&id);
        self.model.reply = Some((id, m.generation, m.partitions));
        Ok(())
    }

    async fn heartbeat(&mut self, who: &Who) -> Result<(), TestCaseError> {
        let id = self.model.who(who);
        let r = self.e().heartbeat(TOPIC, SUB, &id).await;
        let now = self.now();
        self.model.expire(now);
        if !self.model.alive.contains_key(&id) {
            return expect_err(r, "unknown_member", &format!("heartbeat of {id}"));
        }
        let m = ok(r, "heartbeat")?;
        prop_assert_eq!(&m.member_id, &id);
        prop_assert_eq!(Some(m.generation), self.model.generation, "heartbeat");
        prop_assert_eq!(&m.partitions, &self.model.owned(&id), "heartbeat of {}", id);
        self.model.alive.insert(id, now);
        Ok(())
    }

    async fn leave(&mut self, who: &Who) -> Result<(), TestCaseError> {
        let id = self.model.who(who);
        let r = self.e().leave(TOPIC, SUB, &id).await;
        let now = self.now();
        self.model.expire(now);
        if !self.model.alive.contains_key(&id) {
            return expect_err(r, "unknown_member", &format!("leave of {id}"));
        }
        ok(r, "leave")?;
        self.model.alive.remove(&id);
        self.model.starts.remove(&id);
        Ok(())
    }

    async fn clock(&mut self, first: i64, keep: u8, then: i64) -> Result<(), TestCaseError> {
        let members: Vec<String> = self.model.alive.keys().cloned().collect();
        self.clock.advance(first);
        let now = self.now();
        for (i, id) in members.iter().enumerate() {
            if keep & (1 << (i % 8)) == 0 {
                continue;
            }
            let r = self.e().heartbeat(TOPIC, SUB, id).await;
            self.model.expire(now);
            if self.model.alive.contains_key(id) {
                ok(r, "heartbeat halfway")?;
                self.model.alive.insert(id.clone(), now);
            } else {
                expect_err(r, "unknown_member", &format!("heartbeat of expired {id}"))?;
            }
        }
        self.clock.advance(then);
        Ok(())
    }

    async fn fetch(&mut self, who: &Who, max: usize) -> Result<(), TestCaseError> {
        let id = self.model.who(who);
        let r = self
            .e()
            .fetch(
                TOPIC,
                SUB,
                &id,
                FetchRequest {
                    max_messages: max,
                    max_bytes: 1 << 20,
                    wait: Duration::ZERO,
                },
            )
            .await;
        let now = self.now();
        self.model.expire(now);
        if !self.model.alive.contains_key(&id) {
            return expect_err(r, "unknown_member", &format!("fetch by {id}"));
        }
        let got = ok(r, "fetch")?;
        self.model.alive.insert(id.clone(), now);
        self.check_fetch(&id, max, &got)
    }

    /// Check (4), and the start positions that (3) is about.
    fn check_fetch(
        &mut self,
        id: &str,
        max: usize,
        got: &[StoredMessage],
    ) -> Result<(), TestCaseError> {
        let owned = self.model.owned(id);
        prop_assert!(
            got.len() <= max.max(1),
            "fetch of at most {} gave {}",
            max,
            got.len()
        );
        let mut per_partition: BTreeMap<u32, Vec<&StoredMessage>> = BTreeMap::new();
        for m in got {
            prop_assert!(
                owned.contains(&m.partition),
                "{} fetched partition {} but owns {:?}",
                id,
                m.partition,
                owned
            );
            per_partition.entry(m.partition).or_default().push(m);
        }
        let room_left = got.len() < max.max(1);
        let starts = self.model.starts.entry(id.to_owned()).or_default();
        for &p in &owned {
            let pu = p as usize;
            let hw = self.model.messages[pu].len() as u64;
            let may_start = starts.get(&p).cloned().unwrap_or_default();
            match per_partition.get(&p) {
                Some(ms) => {
                    let first = ms[0].offset;
                    prop_assert!(
                        may_start.contains(&first),
                        "{}'s fetch of partition {} started at {}, expected one of {:?}",
                        id,
                        p,
                        first,
                        may_start
                    );
                    for (k, m) in ms.iter().enumerate() {
                        prop_assert_eq!(
                            m.offset,
                            first + k as u64,
                            "offsets of partition {} not consecutive",
                            p
                        );
                        prop_assert!(m.offset < hw, "offset {} beyond the end", m.offset);
                        let (key, value) = &self.model.messages[pu][m.offset as usize];
                        prop_assert_eq!(&m.value, value, "value at {}/{}", p, m.offset);
                        prop_assert_eq!(&m.key, key, "key at {}/{}", p, m.offset);
                        prop_assert!(m.headers.is_empty());
                    }
                    let next = first + ms.len() as u64;
                    prop_assert!(
                        !room_left || next == hw,
                        "fetch had room but left partition {} at {} of {}",
                        p,
                        next,
                        hw
                    );
                    starts.insert(p, BTreeSet::from([next]));
                }
                None if room_left => {
                    prop_assert!(
                        may_start.contains(&hw),
                        "fetch had room but gave nothing of partition {} (start {:?}, end {})",
                        p,
                        may_start,
                        hw
                    );
                    starts.insert(p, BTreeSet::from([hw]));
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn commit(&mut self, who: &Who, entries: &[(Part, Target)]) -> Result<(), TestCaseError> {
        let id = self.model.who(who);
        let n = self.model.n();
        let owned = self.model.owned(&id);
        let offsets: Vec<Committed> = entries
            .iter()
            .map(|(part, target)| {
                let p = match part {
                    Part::Owned(k) if !owned.is_empty() => owned[k % owned.len()] as usize,
                    Part::Owned(k) | Part::Any(k) => k % n,
                };
                let fetched = self
                    .model
                    .starts
                    .get(&id)
                    .and_then(|s| s.get(&(p as u32)))
                    .and_then(|s| s.first().copied())
                    .unwrap_or(self.model.committed[p]);
                let hw = self.model.hw(p);
                let offset = match target {
                    Target::Fetched => fetched,
                    Target::Delta(d) => fetched.saturating_add_signed(*d),
                    Target::End => hw,
                    Target::Beyond(k) => hw + 1 + k,
                    Target::Zero => 0,
                };
                Committed {
                    partition: p as u32,
                    offset,
                }
            })
            .collect();
        let r = self.e().commit(TOPIC, SUB, &id, offsets.clone()).await;
        let now = self.now();
        self.model.expire(now);
        if !self.model.alive.contains_key(&id) {
            return expect_err(r, "unknown_member", &format!("commit by {id}"));
        }
        self.model.alive.insert(id.clone(), now);
        for c in &offsets {
            if !owned.contains(&c.partition) {
                return expect_err(r, "not_assigned", &format!("commit {c:?} by {id}"));
            }
            if c.offset > self.model.hw(c.partition as usize) {
                return expect_err(r, "invalid_argument", &format!("commit {c:?} by {id}"));
            }
        }
        let answer = ok(r, &format!("commit {offsets:?} by {id}"))?;
        for c in &offsets {
            let slot = &mut self.model.committed[c.partition as usize];
            *slot = (*slot).max(c.offset);
        }
        let expected: Vec<Committed> = offsets
            .iter()
            .map(|c| Committed {
                partition: c.partition,
                offset: self.model.committed[c.partition as usize],
            })
            .collect();
        prop_assert_eq!(answer, expected, "commit answer");
        Ok(())
    }

    async fn reset(&mut self, pick: &ResetPick) -> Result<(), TestCaseError> {
        let n = self.model.n();
        let mut target = self.model.committed.clone();
        let mut valid = true;
        let to = match pick {
            ResetPick::Earliest => {
                target = vec![0; n];
                ResetTo::Earliest
            }
            ResetPick::Latest => {
                target = (0..n).map(|p| self.model.hw(p)).collect();
                ResetTo::Latest
            }
            ResetPick::Offsets(list) => ResetTo::Offsets(
                list.iter()
                    .map(|&(p, o, fault)| {
                        let p = p % n;
                        let hw = self.model.hw(p);
                        match fault {
                            0 => {
                                valid = false;
                                (n as u32 + (o % 3) as u32, 0)
                            }
                            1 => {
                                valid = false;
                                (p as u32, hw + 1 + o % 3)
                            }
                            _ => {
                                let o = o % (hw + 1);
                                target[p] = o;
                                (p as u32, o)
                            }
                        }
                    })
                    .collect(),
            ),
        };
        let r = self.e().reset(TOPIC, SUB, to.clone()).await;
        if !valid {
            return expect_err(r, "invalid_argument", &format!("reset {to:?}"));
        }
        let answer = ok(r, &format!("reset {to:?}"))?;
        let expected: Vec<Committed> = target
            .iter()
            .enumerate()
            .map(|(p, &offset)| Committed {
                partition: p as u32,
                offset,
            })
            .collect();
        prop_assert_eq!(answer, expected, "reset answer");
        self.model.committed = target.clone();
        // Members continue from the new offsets.
        for starts in self.model.starts.values_mut() {
            for (p, s) in starts.iter_mut() {
                *s = BTreeSet::from([target[*p as usize]]);
            }
        }
        Ok(())
    }

    async fn restart(
        &mut self,
        crash: Option<u64>,
        down_ms: i64,
        probe: bool,
    ) -> Result<(), TestCaseError> {
        let engine = self.engine.take().expect("open");
        match crash {
            None => ok(engine.close(), "close")?,
            Some(seed) => self.fs.power_loss(seed),
        }
        drop(engine);
        self.clock.advance(down_ms);
        self.engine = Some(Self::open(&self.fs, &self.clock)?);
        // Membership lives in memory: everyone is gone.
        let n = self.model.n();
        self.model.alive.clear();
        self.model.starts.clear();
        self.model.owner = vec![None; n];
        self.model.generation = None;
        // Every acknowledged message survived.
        for p in 0..n {
            let mut got = Vec::new();
            let mut from = 0;
            loop {
                let r = ok(
                    self.e()
                        .read(TOPIC, ReadRequest::new(p as u32, Position::Offset(from)))
                        .await,
                    "read after restart",
                )?;
                if r.messages.is_empty() {
                    break;
                }
                from = r.next_offset;
                got.extend(r.messages.into_iter().map(|m| (m.key, m.value)));
            }
            prop_assert_eq!(
                &got,
                &self.model.messages[p],
                "partition {} after restart",
                p
            );
        }
        let info = ok(
            self.e().describe_subscription(TOPIC, SUB).await,
            "describe after restart",
        )?;
        let committed: Vec<u64> = info.partitions.iter().map(|p| p.committed).collect();
        prop_assert_eq!(
            &committed,
            &self.model.committed,
            "committed offsets after restart"
        );
        if probe {
            let m = ok(self.e().join(TOPIC, SUB, None).await, "join after restart")?;
            let all: Vec<u32> = (0..n as u32).collect();
            prop_assert_eq!(&m.partitions, &all, "the only member owns everything");
            let id = m.member_id.clone();
            self.model.alive.insert(id.clone(), self.now());
            self.model.know(&id);
            self.model.owner = vec![Some(id.clone()); n];
            self.model.starts.insert(
                id.clone(),
                (0..n)
                    .map(|p| (p as u32, BTreeSet::from([self.model.committed[p]])))
                    .collect(),
            );
            self.model.reply = Some((id.clone(), m.generation, m.partitions));
            let max = 100_000;
            let got = ok(
                self.e()
                    .fetch(
                        TOPIC,
                        SUB,
                        &id,
                        FetchRequest {
                            max_messages: max,
                            max_bytes: 1 << 20,
                            wait: Duration::ZERO,
                        },
                    )
                    .await,
                "fetch after restart",
            )?;
            // Resumes from exactly the last commit, and reads on to the end.
            for p in 0..n {
                let first = got.iter().find(|m| m.partition == p as u32);
                let c = self.model.committed[p];
                prop_assert_eq!(
                    first.map(|m| m.offset),
                    (c < self.model.hw(p)).then_some(c),
                    "first offset of partition {} after restart",
                    p
                );
            }
            self.check_fetch(&id, max, &got)?;
        }
        Ok(())
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Publish(spec) => self.publish(spec).await,
            Op::JoinNew => self.join(None).await,
            Op::Rejoin(k) => {
                let id = if self.model.known.is_empty() {
                    "c0".to_owned()
                } else {
                    self.model.known[k % self.model.known.len()].clone()
                };
                self.join(Some(id)).await
            }
            Op::JoinNamed(k) => self.join(Some(format!("c{k}"))).await,
            Op::Heartbeat(w) => self.heartbeat(w).await,
            Op::Leave(w) => self.leave(w).await,
            Op::Clock { first, keep, then } => self.clock(*first, *keep, *then).await,
            Op::Fetch(w, max) => self.fetch(w, *max).await,
            Op::Commit(w, entries) => self.commit(w, entries).await,
            Op::Reset(pick) => self.reset(pick).await,
            Op::Restart {
                crash,
                down_ms,
                probe,
            } => self.restart(*crash, *down_ms, *probe).await,
        }
    }

    /// Checks (1) and (2) and records what the group looks like now.
    async fn check(&mut self, after_reset: bool) -> Result<(), TestCaseError> {
        let n = self.model.n();
        let info = ok(self.e().describe_subscription(TOPIC, SUB).await, "describe")?;
        let now = self.now();
        self.model.expire(now);
        let members: Vec<String> = self.model.alive.keys().cloned().collect();
        prop_assert_eq!(&info.members, &members, "live members");

        // (2) committed offsets.
        let committed: Vec<u64> = info.partitions.iter().map(|p| p.committed).collect();
        prop_assert_eq!(&committed, &self.model.committed, "committed offsets");
        if !after_reset {
            for (p, (after, before)) in committed
                .iter()
                .zip(&self.model.observed_committed)
                .enumerate()
            {
                prop_assert!(
                    after >= before,
                    "partition {}'s committed offset went back from {} to {}",
                    p,
                    before,
                    after
                );
            }
        }
        self.model.observed_committed = committed;
        for sp in &info.partitions {
            let hw = self.model.hw(sp.partition as usize);
            prop_assert_eq!(sp.lag, hw - sp.committed, "lag of {}", sp.partition);
            prop_assert!(!sp.behind_retention);
        }
        let topic = ok(self.e().describe_topic(TOPIC).await, "describe topic")?;
        let hws: Vec<u64> = topic.partitions.iter().map(|p| p.high_watermark).collect();
        let expected: Vec<u64> = (0..n).map(|p| self.model.hw(p)).collect();
        prop_assert_eq!(hws, expected, "high watermarks");

        // (1) one owner per partition.
        let mut owner: Vec<Option<String>> = vec![None; n];
        for id in &members {
            let m = ok(
                self.e().heartbeat(TOPIC, SUB, id).await,
                &format!("heartbeat of live {id}"),
            )?;
            self.model.alive.insert(id.clone(), now);
            prop_assert_eq!(&m.member_id, id);
            prop_assert_eq!(m.generation, info.generation, "generation of {}", id);
            prop_assert!(
                m.partitions.windows(2).all(|w| w[0] < w[1]),
                "partitions not ascending: {:?}",
                m.partitions
            );
            for &p in &m.partitions {
                prop_assert!((p as usize) < n, "{} owns partition {} of {}", id, p, n);
                if let Some(other) = &owner[p as usize] {
                    prop_assert!(
                        false,
                        "partition {} owned by both {} and {} in generation {}",
                        p,
                        other,
                        id,
                        m.generation
                    );
                }
                owner[p as usize] = Some(id.clone());
            }
        }
        if !members.is_empty() {
            prop_assert!(
                owner.iter().all(Option::is_some),
                "partitions without an owner while {:?} are alive: {:?}",
                members,
                owner
            );
        }
        if let Some((id, generation, partitions)) = self.model.reply.take()
            && generation == info.generation
            && self.model.alive.contains_key(&id)
        {
            let now_owned: Vec<u32> = (0..n as u32)
                .filter(|&p| owner[p as usize].as_ref() == Some(&id))
                .collect();
            prop_assert_eq!(partitions, now_owned, "join answer of {}", id);
        }

        // Where each member's next fetch may start: where it left off on a partition it kept
        // (after a rebalance, possibly the committed offset instead); the committed offset on
        // a partition it just got.
        let rebalanced = self.model.generation != Some(info.generation);
        let mut starts: BTreeMap<String, BTreeMap<u32, BTreeSet<u64>>> = BTreeMap::new();
        for (p, o) in owner.iter().enumerate() {
            let Some(id) = o else { continue };
            let c = self.model.committed[p];
            let s = match self.model.starts.get(id).and_then(|s| s.get(&(p as u32))) {
                Some(s) => {
                    let mut s = s.clone();
                    if rebalanced {
                        s.insert(c);
                    }
                    s
                }
                _ => BTreeSet::from([c]),
            };
            starts.entry(id.clone()).or_default().insert(p as u32, s);
        }
        self.model.starts = starts;
        self.model.owner = owner;
        self.model.generation = Some(info.generation);
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
        let mut h = Harness {
            fs,
            clock,
            engine: Some(engine),
            model: Model {
                messages: vec![Vec::new(); n],
                owner: vec![None; n],
                ..Model::default()
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
        if setup.before > 0 {
            h.publish(&vec![(None, false); setup.before]).await?;
        }
        let start = if setup.start_latest {
            Position::Latest
        } else {
            Position::Earliest
        };
        ok(
            h.e()
                .create_subscription(
                    TOPIC,
                    SUB,
                    SubscriptionConfig::Stream(StreamConfig {
                        start,
                        session_timeout_ms: TIMEOUT_MS as u64,
                    }),
                )
                .await,
            "create subscription",
        )?;
        h.model.committed = (0..n)
            .map(|p| if setup.start_latest { h.model.hw(p) } else { 0 })
            .collect();
        h.model.observed_committed = h.model.committed.clone();
        h.check(false).await?;
        for (i, op) in ops.iter().enumerate() {
            h.step(op)
                .await
                .map_err(|e| TestCaseError::fail(format!("op {i} {op:?}: {e}")))?;
            h.check(matches!(op, Op::Reset(_)))
                .await
                .map_err(|e| TestCaseError::fail(format!("after op {i} {op:?}: {e}")))?;
        }
        if let Some(engine) = h.engine.take() {
            ok(engine.close(), "close")?;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// The property, with restarts that may take no time at all on the injected clock.
    #[test]
    fn stream_subscriptions_match_the_model(
        setup in setup(),
        ops in proptest::collection::vec(op(true), 1..80),
    ) {
        run(setup, ops)?;
    }
}
