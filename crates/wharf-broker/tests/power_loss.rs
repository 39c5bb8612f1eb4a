//! Power-loss tests of the embedded engine on the fault-injecting file layer.
//!
//! Each round runs an [`EmbeddedEngine`] on a [`FaultFs`] with a [`ManualClock`] through
//! several crash/recover cycles on the same file system. In each cycle the engine creates
//! (idempotently) a topic with two partitions, a stream subscription and a shared
//! subscription (60 s leases, which never run out on the manual clock), the power is set to go
//! out after a random number of file operations ([`FaultFs::crash_after`]), and several tasks
//! work concurrently until their operations fail or a bound is reached:
//! - two publishers send batches with unique `wharf-message-id`s and, now and then, an id
//!   acknowledged earlier (whose answer must be `duplicate` with the original's place);
//! - two workers receive from the shared subscription and ack most deliveries, nack a few
//!   (delay 0) and keep a few leased;
//! - one stream member fetches and commits.
//!
//! Only operations that returned `Ok` count as acknowledged. Then the power is cut (if it is
//! not out yet), the engine dropped, [`FaultFs::power_loss`] drops or tears everything that
//! was not synced, and the engine is reopened — which must succeed: a failing open after a
//! power loss is a bug. The checks after every reopen:
//! - the topic and subscriptions exist once their creation returned;
//! - every acknowledged publish is readable at its partition and offset with its content
//!   (derived from its id), every stored message is intact, and no id is stored twice;
//! - republishing every acknowledged id answers `duplicate` with the original's place;
//! - the stream subscription's committed offsets are at least every acknowledged commit and
//!   every offset a successful commit answered as in force, at most the high watermark, and
//!   never go back;
//! - the shared subscription never delivers a message whose ack was acknowledged (checked by
//!   the workers as they go, and by receiving everything available after the reopen — leases
//!   are not durable, so leased messages legitimately come back); the check acks most of what
//!   it receives, and after the last cycle all of it, after which every acknowledged publish
//!   must have been acked or had an ack attempted (a failed ack may still have taken effect).
//!
//! In a quarter of the rounds the power goes out while the topic and subscriptions are being
//! created, so half-created ones are recovered too. Variants: state logs brought close to
//! their snapshot threshold first, so snapshots happen under the power cut; two tasks
//! committing concurrently as one stream member (their answers must be durable too). A last,
//! deterministic test covers dedup when a publish fails on one partition only. (Both found
//! bugs, since fixed.)
//!
//! Seeds are printed; `WHARF_POWER_LOSS_SEED` replays one round's choices (operations, crash
//! point, what the power loss keeps), though not the scheduling of the concurrent tasks and
//! the logs' committer threads, so a replay reproduces a timing-dependent failure only
//! sometimes. Rounds: `WHARF_PROPTEST_CASES / 20`, at least 20 (the snapshot variant:
//! `/ 200`, at least 4; the concurrent-commit variant: `/ 4`, at least 100).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use wharf_broker::{
    BrokerError, Committed, EmbeddedConfig, EmbeddedEngine, Engine, FetchRequest, Message,
    Position, ReadRequest, ReceiveRequest, SharedConfig, StoredMessage, StreamConfig,
    SubscriptionConfig, TopicConfig,
};
use wharf_log::ManualClock;
use wharf_log::vfs::fault::FaultFs;

const TOPIC: &str = "orders";
const STREAM_SUB: &str = "audit";
const SHARED_SUB: &str = "workers";
const PARTITIONS: u32 = 2;
const START_MS: i64 = 1_700_000_000_000;

/// Crash/recover cycles per round (plus a final reopen).
const CYCLES: u64 = 4;
/// Iterations of each task per cycle, at most.
const MAX_STEPS: u64 = 40;
/// The power goes out after 1..this many mutating file operations.
const MAX_OPS_BEFORE_CRASH: u64 = 600;
/// A safety net: a cycle's workload taking longer than this is hung.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(120);

fn topic_config() -> TopicConfig {
    TopicConfig {
        partitions: PARTITIONS,
        dedup_window_ms: 3_600_000,
        // The smallest segments, so rolls happen under the power cut too.
        segment_bytes: 64 * 1024,
        ..TopicConfig::default()
    }
}

fn stream_config() -> SubscriptionConfig {
    SubscriptionConfig::Stream(StreamConfig::default())
}

fn shared_config() -> SubscriptionConfig {
    SubscriptionConfig::Shared(SharedConfig {
        // Nothing is dead-lettered: every message stays deliverable until acked.
        max_deliveries: 1000,
        lease_ms: 60_000,
        backoff_jitter_pct: 0,
        max_in_flight_per_member: 100_000,
        ..SharedConfig::default()
    })
}

/// Which of the topic and subscriptions were created (creation returned `Ok`).
#[derive(Default, Clone, Copy)]
struct Created {
    topic: bool,
    stream: bool,
    shared: bool,
}

/// Creates the topic and both subscriptions, or finds them; notes what was created.
async fn setup(engine: &EmbeddedEngine, created: &mut Created) -> Result<(), BrokerError> {
    engine.create_topic(TOPIC, topic_config()).await?;
    created.topic = true;
    engine
        .create_subscription(TOPIC, STREAM_SUB, stream_config())
        .await?;
    created.stream = true;
    engine
        .create_subscription(TOPIC, SHARED_SUB, shared_config())
        .await?;
    created.shared = true;
    Ok(())
}

/// FNV-1a of `s`.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The payload of the message with id `id`: the id, then 0..600 filler bytes derived from it.
fn value_of(id: &str) -> Bytes {
    let h = hash(id);
    let filler = (h % 600) as usize;
    let mut v = format!("value of {id}:").into_bytes();
    v.extend((0..filler).map(|i| b'a' + ((h >> (i % 50)) as u8 % 26)));
    Bytes::from(v)
}

/// The message with id `id`; routed by key, by explicit partition or round-robin, by its hash.
fn message(id: &str) -> Message {
    let h = hash(id);
    let m = Message::new(value_of(id)).with_id(id);
    match (h >> 32) % 3 {
        0 => m.with_key(format!("key-{}", h % 7)),
        1 => m.to_partition(((h >> 16) % u64::from(PARTITIONS)) as u32),
        _ => m,
    }
}

/// Checks a stored message against its own id; returns the id.
fn check_content(m: &StoredMessage) -> Result<String, String> {
    let id = m
        .headers
        .iter()
        .find(|(k, _)| k == "wharf-message-id")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            format!(
                "partition {} offset {} has no wharf-message-id",
                m.partition, m.offset
            )
        })?;
    if m.value != value_of(&id) {
        return Err(format!(
            "partition {} offset {} (id {id}) holds another value than its id's: {:?}",
            m.partition,
            m.offset,
            String::from_utf8_lossy(&m.value[..m.value.len().min(80)])
        ));
    }
    let want = message(&id);
    if m.key != want.key {
        return Err(format!(
            "partition {} offset {} (id {id}) has key {:?}, not {:?}",
            m.partition, m.offset, m.key, want.key
        ));
    }
    Ok(id)
}

/// Everything acknowledged so far in a round.
#[derive(Default)]
struct Ledger {
    /// Acknowledged publishes: id -> (partition, offset).
    pubs: BTreeMap<String, (u32, u64)>,
    /// The same, by place.
    at: BTreeMap<(u32, u64), String>,
    /// Messages whose ack was acknowledged.
    acked: BTreeSet<(u32, u64)>,
    /// Messages an ack was attempted for (it may have taken effect even if it failed).
    ack_attempts: BTreeSet<(u32, u64)>,
    /// Highest acknowledged commit per partition.
    commits: BTreeMap<u32, u64>,
    /// Highest offset per partition that a successful commit answered as in force.
    in_force: BTreeMap<u32, u64>,
    /// Committed offsets seen by the last verification.
    committed_seen: BTreeMap<u32, u64>,
    /// Duplicate answers checked.
    dups: u64,
}

impl Ledger {
    fn publish(&mut self, ctx: &str, id: &str, partition: u32, offset: u64) {
        if let Some(earlier) = self.pubs.get(id) {
            panic!(
                "{ctx}: id {id} acknowledged twice as a fresh publish: at {earlier:?} and at {:?}",
                (partition, offset)
            );
        }
        if let Some(other) = self.at.get(&(partition, offset)) {
            panic!(
                "{ctx}: partition {partition} offset {offset} acknowledged for {other} and again for {id}: an acknowledged publish was lost and its offset reused"
            );
        }
        self.pubs.insert(id.to_owned(), (partition, offset));
        self.at.insert((partition, offset), id.to_owned());
    }

    fn ack(&mut self, ctx: &str, partition: u32, offset: u64) {
        assert!(
            self.acked.insert((partition, offset)),
            "{ctx}: partition {partition} offset {offset} was acked twice: an acknowledged ack was lost and the message redelivered"
        );
    }

    fn duplicate(&mut self, ctx: &str, id: &str, partition: u32, offset: u64, duplicate: bool) {
        let original = self.pubs[id];
        assert!(
            duplicate && original == (partition, offset),
            "{ctx}: republishing acknowledged id {id} (at {original:?}) answered partition {partition} offset {offset} duplicate {duplicate}: its dedup entry was lost"
        );
        self.dups += 1;
    }

    fn commit(&mut self, partition: u32, offset: u64) {
        let c = self.commits.entry(partition).or_default();
        *c = (*c).max(offset);
    }

    /// Panics if a delivery is of a message whose ack was acknowledged.
    fn check_delivery(&self, ctx: &str, m: &StoredMessage, delivery_count: u32) {
        assert!(
            !self.acked.contains(&(m.partition, m.offset)),
            "{ctx}: partition {} offset {} was delivered again (delivery {delivery_count}) after its ack was acknowledged",
            m.partition,
            m.offset
        );
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn ledger(l: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- the workload ---------------------------------------------------------------------------

/// Publishes batches with fresh ids, sometimes with an acknowledged id among them, until an
/// operation fails or `MAX_STEPS`.
async fn publisher(
    engine: EmbeddedEngine,
    ctx: String,
    mut rng: StdRng,
    prefix: String,
    ledger_: Shared,
    stop: Arc<AtomicBool>,
) {
    for step in 0..MAX_STEPS {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let n = rng.random_range(1..=5);
        let mut ids: Vec<(String, bool)> = (0..n)
            .map(|i| (format!("{prefix}-{step}-{i}"), false))
            .collect();
        if rng.random_ratio(1, 3) {
            let l = ledger(&ledger_);
            let known: Vec<&String> = l.pubs.keys().collect();
            if let Some(old) = known.choose(&mut rng) {
                let at = rng.random_range(0..=ids.len());
                ids.insert(at, ((*old).clone(), true));
            }
        }
        let messages = ids.iter().map(|(id, _)| message(id)).collect();
        match engine.publish(TOPIC, messages).await {
            Ok(published) => {
                assert_eq!(published.len(), ids.len(), "{ctx}: one result per message");
                let mut l = ledger(&ledger_);
                for ((id, old), p) in ids.iter().zip(&published) {
                    if *old {
                        l.duplicate(&ctx, id, p.partition, p.offset, p.duplicate);
                    } else {
                        assert!(!p.duplicate, "{ctx}: fresh id {id} came back a duplicate");
                        l.publish(&ctx, id, p.partition, p.offset);
                    }
                }
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return;
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Receives from the shared subscription; acks most deliveries, nacks or keeps a few.
async fn worker(
    engine: EmbeddedEngine,
    ctx: String,
    mut rng: StdRng,
    member: String,
    ledger_: Shared,
    stop: Arc<AtomicBool>,
) {
    for _ in 0..MAX_STEPS {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let request = ReceiveRequest {
            member: Some(member.clone()),
            max: rng.random_range(1..=10),
            lease: None,
            wait: Duration::ZERO,
        };
        let deliveries = match engine.receive(TOPIC, SHARED_SUB, request).await {
            Ok(d) => d,
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return;
            }
        };
        let mut ack = Vec::new();
        let mut nack = Vec::new();
        let mut place = BTreeMap::new();
        {
            let mut l = ledger(&ledger_);
            for d in deliveries {
                if let Err(why) = check_content(&d.message) {
                    panic!("{ctx}: delivered garbage: {why}");
                }
                l.check_delivery(&ctx, &d.message, d.delivery_count);
                let key = (d.message.partition, d.message.offset);
                place.insert(d.ack_id.clone(), key);
                match rng.random_range(0..20) {
                    0 => nack.push(d.ack_id),
                    1 => {} // Keep the lease until the power goes out.
                    _ => {
                        l.ack_attempts.insert(key);
                        ack.push(d.ack_id);
                    }
                }
            }
        }
        if !ack.is_empty() {
            match engine.ack(TOPIC, SHARED_SUB, &ack).await {
                Ok(outcomes) => {
                    let mut l = ledger(&ledger_);
                    for o in outcomes {
                        assert_eq!(o.error, None, "{ctx}: ack of a fresh delivery failed");
                        let (p, offset) = place[&o.ack_id];
                        l.ack(&ctx, p, offset);
                    }
                }
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        if !nack.is_empty() {
            match engine.nack(TOPIC, SHARED_SUB, &nack, Some(0)).await {
                Ok(outcomes) => {
                    if let Some(o) = outcomes.iter().find(|o| o.error.is_some()) {
                        panic!("{ctx}: nack of a fresh delivery failed: {o:?}");
                    }
                }
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Fetches from the stream subscription and commits, sometimes short of what it fetched.
async fn stream_member(
    engine: EmbeddedEngine,
    ctx: String,
    mut rng: StdRng,
    member: &'static str,
    ledger_: Shared,
    stop: Arc<AtomicBool>,
) {
    let m = engine
        .join(TOPIC, STREAM_SUB, Some(member))
        .await
        .unwrap_or_else(|e| panic!("{ctx}: join failed: {e}"));
    assert_eq!(
        m.partitions,
        (0..PARTITIONS).collect::<Vec<_>>(),
        "{ctx}: the only member owns every partition"
    );
    for _ in 0..MAX_STEPS {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let request = FetchRequest {
            max_messages: rng.random_range(1..=30),
            ..FetchRequest::default()
        };
        let fetched = match engine.fetch(TOPIC, STREAM_SUB, &m.member_id, request).await {
            Ok(f) => f,
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return;
            }
        };
        let mut ends: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for msg in &fetched {
            if let Err(why) = check_content(msg) {
                panic!("{ctx}: fetched garbage: {why}");
            }
            ends.entry(msg.partition).or_default().push(msg.offset + 1);
        }
        let offsets: Vec<Committed> = ends
            .into_iter()
            .map(|(partition, ends)| Committed {
                partition,
                offset: if rng.random_ratio(1, 4) {
                    *ends.choose(&mut rng).expect("non-empty")
                } else {
                    *ends.last().expect("non-empty")
                },
            })
            .collect();
        if !offsets.is_empty() {
            match engine
                .commit(TOPIC, STREAM_SUB, &m.member_id, offsets.clone())
                .await
            {
                Ok(answer) => {
                    let mut l = ledger(&ledger_);
                    for c in offsets {
                        l.commit(c.partition, c.offset);
                    }
                    for c in answer {
                        let f = l.in_force.entry(c.partition).or_default();
                        *f = (*f).max(c.offset);
                    }
                }
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Variants of a round.
#[derive(Clone, Copy, Default)]
struct Mode {
    /// Bring the subscriptions' state logs close to a snapshot first (see [`preload`]).
    near_snapshot: bool,
    /// Tasks fetching and committing as the same stream member (concurrent commits).
    stream_tasks: usize,
}

/// Runs the tasks until their operations fail (the power is out) or they are done.
async fn workload(
    engine: &EmbeddedEngine,
    ctx: &str,
    seed: u64,
    cycle: u64,
    mode: Mode,
    l: &Shared,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let rng = |k: u64| StdRng::seed_from_u64(seed ^ (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut tasks = Vec::new();
    for t in 0..2u64 {
        tasks.push(tokio::spawn(publisher(
            engine.clone(),
            ctx.to_owned(),
            rng(t),
            format!("c{cycle}-p{t}"),
            l.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(worker(
            engine.clone(),
            ctx.to_owned(),
            rng(10 + t),
            format!("w{t}"),
            l.clone(),
            stop.clone(),
        )));
    }
    for t in 0..mode.stream_tasks as u64 {
        tasks.push(tokio::spawn(stream_member(
            engine.clone(),
            ctx.to_owned(),
            rng(20 + t),
            "m1",
            l.clone(),
            stop.clone(),
        )));
    }
    let all = async {
        for t in tasks {
            if let Err(e) = t.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    };
    tokio::time::timeout(WORKLOAD_TIMEOUT, all)
        .await
        .unwrap_or_else(|_| panic!("{ctx}: the workload hung for {WORKLOAD_TIMEOUT:?}"));
}

// ---- verification ---------------------------------------------------------------------------

/// Every message of partition `p`, by offset; checks that the partition is dense from 0.
async fn read_partition(
    engine: &EmbeddedEngine,
    ctx: &str,
    p: u32,
) -> BTreeMap<u64, StoredMessage> {
    let mut out = BTreeMap::new();
    let mut next = 0;
    loop {
        let r = engine
            .read(
                TOPIC,
                ReadRequest {
                    max_messages: 1000,
                    max_bytes: 4 << 20,
                    ..ReadRequest::new(p, Position::Offset(next))
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{ctx}: reading partition {p} at {next} failed: {e}"));
        assert_eq!(r.start_offset, 0, "{ctx}: nothing is ever deleted here");
        for m in r.messages {
            assert_eq!(
                m.offset, next,
                "{ctx}: partition {p} is not dense: expected offset {next}, read {}",
                m.offset
            );
            next += 1;
            out.insert(m.offset, m);
        }
        if next >= r.high_watermark {
            assert_eq!(
                next, r.high_watermark,
                "{ctx}: partition {p} read past its high watermark"
            );
            return out;
        }
    }
}

/// Checks the reopened engine against the ledger: publishes, dedup, stream commits, shared
/// acks. `ack_all`: ack everything the shared subscription still delivers, then require every
/// acknowledged publish to have been acked (or attempted).
async fn verify(
    engine: &EmbeddedEngine,
    ctx: &str,
    l: &mut Ledger,
    created: Created,
    rng: &mut StdRng,
    ack_all: bool,
) {
    match engine.describe_topic(TOPIC).await {
        Ok(_) => {}
        Err(e) => {
            assert!(
                !created.topic,
                "{ctx}: topic {TOPIC} is gone after a power loss: {e}"
            );
            assert!(l.pubs.is_empty(), "{ctx}: a topic never created has data");
            return;
        }
    }
    for (sub, needed) in [(STREAM_SUB, created.stream), (SHARED_SUB, created.shared)] {
        if let Err(e) = engine.describe_subscription(TOPIC, sub).await {
            assert!(
                !needed,
                "{ctx}: subscription {sub} is gone after a power loss: {e}"
            );
        }
    }

    // Publishes: every acknowledged one is there, intact; nothing is stored twice.
    let mut stored: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let mut hw = BTreeMap::new();
    for p in 0..PARTITIONS {
        let messages = read_partition(engine, ctx, p).await;
        hw.insert(p, messages.len() as u64);
        for (o, m) in messages {
            let id = check_content(&m).unwrap_or_else(|why| panic!("{ctx}: garbage: {why}"));
            stored.insert((p, o), id);
        }
    }
    let mut ids = HashSet::new();
    for ((p, o), id) in &stored {
        assert!(
            ids.insert(id.as_str()),
            "{ctx}: id {id} is stored twice (again at partition {p} offset {o}): a dedup entry was lost"
        );
    }
    for (id, &(p, o)) in &l.pubs {
        match stored.get(&(p, o)) {
            Some(found) => assert_eq!(
                found, id,
                "{ctx}: acknowledged publish {id} at partition {p} offset {o} was replaced by {found}"
            ),
            None => panic!(
                "{ctx}: acknowledged publish {id} at partition {p} offset {o} is missing (high watermark {})",
                hw[&p]
            ),
        }
    }

    // Dedup: every acknowledged id is still known, with its original place.
    let all: Vec<String> = l.pubs.keys().cloned().collect();
    for chunk in all.chunks(500) {
        let answers = engine
            .publish(TOPIC, chunk.iter().map(|id| message(id)).collect())
            .await
            .unwrap_or_else(|e| panic!("{ctx}: republishing acknowledged ids failed: {e}"));
        for (id, a) in chunk.iter().zip(answers) {
            l.duplicate(ctx, id, a.partition, a.offset, a.duplicate);
        }
    }

    // Stream commits: durable, never back, never past the data.
    if created.stream
        || engine
            .describe_subscription(TOPIC, STREAM_SUB)
            .await
            .is_ok()
    {
        let info = engine
            .describe_subscription(TOPIC, STREAM_SUB)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: describing {STREAM_SUB} failed: {e}"));
        for sp in &info.partitions {
            let p = sp.partition;
            let acked = l.commits.get(&p).copied().unwrap_or(0);
            assert!(
                sp.committed >= acked,
                "{ctx}: partition {p}'s committed offset is {}, but a commit of {acked} was acknowledged",
                sp.committed
            );
            let in_force = l.in_force.get(&p).copied().unwrap_or(0);
            assert!(
                sp.committed >= in_force,
                "{ctx}: partition {p}'s committed offset is {}, but a successful commit answered {in_force} as in force",
                sp.committed
            );
            let seen = l.committed_seen.get(&p).copied().unwrap_or(0);
            assert!(
                sp.committed >= seen,
                "{ctx}: partition {p}'s committed offset went back from {seen} to {}",
                sp.committed
            );
            assert!(
                sp.committed <= hw[&p],
                "{ctx}: partition {p}'s committed offset {} is past its high watermark {}",
                sp.committed,
                hw[&p]
            );
            l.committed_seen.insert(p, sp.committed);
        }
    }

    // Shared acks: nothing acked comes back.
    if !created.shared
        && engine
            .describe_subscription(TOPIC, SHARED_SUB)
            .await
            .is_err()
    {
        return;
    }
    loop {
        let deliveries = engine
            .receive(
                TOPIC,
                SHARED_SUB,
                ReceiveRequest {
                    member: Some("verifier".into()),
                    max: 1000,
                    lease: None,
                    wait: Duration::ZERO,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{ctx}: receive failed: {e}"));
        if deliveries.is_empty() {
            break;
        }
        let mut ack = Vec::new();
        let mut place = BTreeMap::new();
        for d in deliveries {
            l.check_delivery(ctx, &d.message, d.delivery_count);
            let key = (d.message.partition, d.message.offset);
            let id = check_content(&d.message)
                .unwrap_or_else(|why| panic!("{ctx}: delivered garbage: {why}"));
            assert_eq!(
                stored.get(&key),
                Some(&id),
                "{ctx}: the delivery of partition {} offset {} is not the stored message",
                key.0,
                key.1
            );
            place.insert(d.ack_id.clone(), key);
            if ack_all || rng.random_ratio(3, 4) {
                ack.push(d.ack_id);
            }
        }
        if ack.is_empty() {
            continue;
        }
        let outcomes = engine
            .ack(TOPIC, SHARED_SUB, &ack)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: ack failed: {e}"));
        for o in outcomes {
            assert_eq!(o.error, None, "{ctx}: ack of a fresh delivery failed");
            let (p, offset) = place[&o.ack_id];
            l.ack(ctx, p, offset);
        }
    }
    if ack_all {
        for (id, place) in &l.pubs {
            assert!(
                l.acked.contains(place) || l.ack_attempts.contains(place),
                "{ctx}: acknowledged publish {id} at {place:?} was never acked on {SHARED_SUB}, nor is it delivered any more"
            );
        }
    }
}

// ---- rounds ---------------------------------------------------------------------------------

fn open(fs: &FaultFs, clock: &ManualClock) -> Result<EmbeddedEngine, BrokerError> {
    EmbeddedEngine::open(EmbeddedConfig {
        data_dir: PathBuf::from("/data"),
        vfs: fs.shared(),
        clock: Arc::new(clock.clone()),
    })
}

/// What one round did, for the summary.
#[derive(Default)]
struct Totals {
    pubs: u64,
    acks: u64,
    dups: u64,
    commits: u64,
    /// Crash/recover cycles.
    cycles: u64,
    /// Cycles in which the power went out while the workload ran (not after it).
    cut_during_work: u64,
}

impl Totals {
    fn add(&mut self, t: &Totals) {
        self.pubs += t.pubs;
        self.acks += t.acks;
        self.dups += t.dups;
        self.commits += t.commits;
        self.cycles += t.cycles;
        self.cut_during_work += t.cut_during_work;
    }
}

/// Brings both subscriptions' state logs to just short of their snapshot threshold (10 000
/// records, fixed in the engine), so the workload that follows writes the snapshot and drops
/// the journal before it (or the power goes out around that): publishes `messages` to
/// partition 0, receives and acks them all (one record per receive and per ack call), and commits
/// `commit_calls` times on both partitions (one record per partition).
async fn preload(engine: &EmbeddedEngine, ctx: &str, l: &Shared, messages: u64, commit_calls: u64) {
    let ids: Vec<String> = (0..messages).map(|i| format!("pre-{i}")).collect();
    for chunk in ids.chunks(500) {
        let batch = chunk
            .iter()
            .map(|id| Message {
                partition: Some(0),
                ..message(id)
            })
            .collect();
        let published = engine
            .publish(TOPIC, batch)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: preload: publish failed: {e}"));
        let mut l = ledger(l);
        for (id, p) in chunk.iter().zip(published) {
            l.publish(ctx, id, p.partition, p.offset);
        }
    }
    loop {
        let deliveries = engine
            .receive(
                TOPIC,
                SHARED_SUB,
                ReceiveRequest {
                    member: Some("preload".into()),
                    max: 1000,
                    lease: None,
                    wait: Duration::ZERO,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{ctx}: preload: receive failed: {e}"));
        if deliveries.is_empty() {
            break;
        }
        let place: BTreeMap<String, (u32, u64)> = deliveries
            .iter()
            .map(|d| (d.ack_id.clone(), (d.message.partition, d.message.offset)))
            .collect();
        let ack: Vec<String> = place.keys().cloned().collect();
        ledger(l).ack_attempts.extend(place.values().copied());
        // One call per ack: the engine writes one journal record per call and queue.
        let mut outcomes = Vec::with_capacity(ack.len());
        for id in &ack {
            outcomes.extend(
                engine
                    .ack(TOPIC, SHARED_SUB, std::slice::from_ref(id))
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: preload: ack failed: {e}")),
            );
        }
        let mut l = ledger(l);
        for o in outcomes {
            assert_eq!(o.error, None, "{ctx}: preload: ack failed");
            let (p, offset) = place[&o.ack_id];
            l.ack(ctx, p, offset);
        }
    }
    let m = engine
        .join(TOPIC, STREAM_SUB, Some("preload"))
        .await
        .unwrap_or_else(|e| panic!("{ctx}: preload: join failed: {e}"));
    let hw: Vec<u64> = engine
        .describe_topic(TOPIC)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: preload: describe failed: {e}"))
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .collect();
    for i in 0..commit_calls {
        let offsets: Vec<Committed> = (0..PARTITIONS)
            .map(|p| Committed {
                partition: p,
                offset: hw[p as usize] * (i + 1) / commit_calls,
            })
            .collect();
        engine
            .commit(TOPIC, STREAM_SUB, &m.member_id, offsets.clone())
            .await
            .unwrap_or_else(|e| panic!("{ctx}: preload: commit failed: {e}"));
        let mut l = ledger(l);
        for c in offsets {
            l.commit(c.partition, c.offset);
        }
    }
    engine
        .leave(TOPIC, STREAM_SUB, &m.member_id)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: preload: leave failed: {e}"));
}

/// Runs one round: `CYCLES` crash/recover cycles on a fresh file system, then a final check.
fn run_round(seed: u64, rt: &tokio::runtime::Runtime, mode: Mode) -> Totals {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cut_during_work = 0;
    let fs = FaultFs::new();
    let clock = ManualClock::new(START_MS);
    let l: Shared = Arc::default();
    let mut created = Created::default();
    for cycle in 0..=CYCLES {
        let ctx = format!("seed {seed} cycle {cycle}");
        let engine = open(&fs, &clock).unwrap_or_else(|e| {
            panic!("{ctx}: EmbeddedEngine::open failed after a power loss: {e}")
        });
        let last = cycle == CYCLES;
        rt.block_on(verify(
            &engine,
            &ctx,
            &mut ledger(&l),
            created,
            &mut rng,
            last,
        ));
        if last {
            break;
        }
        // Sometimes the power goes out while the topic and subscriptions are created.
        let during_setup = cycle == 0 && !mode.near_snapshot && rng.random_ratio(1, 4);
        if during_setup {
            fs.crash_after(rng.random_range(0..40));
        }
        match rt.block_on(setup(&engine, &mut created)) {
            Ok(()) => {}
            Err(e) if during_setup => {
                // Expected: the power went out.
                assert!(
                    fs.is_crashed(),
                    "{ctx}: creation failed without a crash: {e}"
                );
            }
            Err(e) => panic!("{ctx}: creating the topic and subscriptions failed: {e}"),
        }
        if cycle == 0 && mode.near_snapshot {
            // 10 000 minus a few records to go in each state log (fewer than a cycle's
            // workload writes, unless the power goes out first).
            let messages = (10_000 - rng.random_range(1..=200u64)) * 1000 / 1001;
            let shared_records = messages + messages.div_ceil(1000);
            let commit_calls = (10_000 - rng.random_range(1..=60u64)) / u64::from(PARTITIONS);
            rt.block_on(preload(&engine, &ctx, &l, messages, commit_calls));
            assert!(shared_records < 10_000, "{ctx}: preload overshot");
        }
        if !fs.is_crashed() {
            if !during_setup {
                fs.crash_after(rng.random_range(1..MAX_OPS_BEFORE_CRASH));
            }
            rt.block_on(workload(&engine, &ctx, rng.random(), cycle, mode, &l));
            cut_during_work += u64::from(fs.is_crashed());
        }
        if !fs.is_crashed() {
            fs.crash();
        }
        drop(engine);
        fs.power_loss(rng.random());
        clock.advance(1_000);
    }
    let l = ledger(&l);
    Totals {
        pubs: l.pubs.len() as u64,
        acks: l.acked.len() as u64,
        dups: l.dups,
        commits: l.commits.values().sum(),
        cycles: CYCLES,
        cut_during_work,
    }
}

/// `WHARF_PROPTEST_CASES / divisor`, at least `min`.
fn rounds(divisor: u64, min: u64) -> u64 {
    std::env::var("WHARF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(min, |n| (n / divisor).max(min))
}

/// Runs `rounds` rounds from a random base seed (or the one round `WHARF_POWER_LOSS_SEED`).
fn run(name: &str, rounds: u64, mode: Mode) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (seeds, label): (Vec<u64>, String) = match std::env::var("WHARF_POWER_LOSS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(seed) => (vec![seed], format!("seed {seed} (replay)")),
        None => {
            let base: u64 = rand::random();
            (
                (0..rounds).map(|i| base.wrapping_add(i)).collect(),
                format!(
                    "{rounds} rounds, seeds {base}.. (WHARF_POWER_LOSS_SEED=<seed> replays one)"
                ),
            )
        }
    };
    eprintln!("{name}: {label}");
    let started = Instant::now();
    let mut totals = Totals::default();
    for seed in seeds {
        totals.add(&run_round(seed, &rt, mode));
    }
    assert!(totals.pubs > 0, "{name}: nothing was ever acknowledged");
    assert!(
        totals.cut_during_work > 0,
        "{name}: the power never went out while the workload ran"
    );
    eprintln!(
        "{name}: {} publishes, {} acks, {} duplicate answers, commits up to {} in all; the power went out during the work in {} of {} cycles; {:?}",
        totals.pubs,
        totals.acks,
        totals.dups,
        totals.commits,
        totals.cut_during_work,
        totals.cycles,
        started.elapsed()
    );
}

#[test]
fn acknowledged_work_survives_power_loss() {
    let mode = Mode {
        stream_tasks: 1,
        ..Mode::default()
    };
    run("power loss", rounds(20, 20), mode);
}

/// The same with both subscriptions' state logs brought close to a snapshot first, so that
/// snapshots and the removal of the journal before them happen under the power cut.
#[test]
fn acknowledged_work_survives_power_loss_around_snapshots() {
    let mode = Mode {
        near_snapshot: true,
        stream_tasks: 1,
    };
    run("power loss around snapshots", rounds(200, 4), mode);
}

/// The same with two tasks committing concurrently as one stream member: a commit's answer
/// (the offsets in force) must be durable too.
#[test]
fn commit_answers_survive_power_loss_with_concurrent_commits() {
    let mode = Mode {
        stream_tasks: 2,
        ..Mode::default()
    };
    run("power loss, concurrent commits", rounds(4, 100), mode);
}

/// A publish whose messages go to two partitions, one of which refuses writes (its fsync
/// failed, so the log is poisoned until reopened), fails as a whole; the message that the
/// healthy partition stored durably keeps its dedup entry, so retrying the publish (what a
/// producer does after an error) does not store it again, and republishing its id alone
/// answers `duplicate`.
#[test]
fn a_publish_retried_after_a_partial_failure_is_not_stored_twice() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let fs = FaultFs::new();
        let engine = open(&fs, &ManualClock::new(START_MS)).expect("open");
        let mut created = Created::default();
        setup(&engine, &mut created).await.expect("setup");
        // Poison partition 1: a failed fsync.
        fs.set_fail_sync(true);
        let poisoned = engine
            .publish(TOPIC, vec![Message::new("z").to_partition(1)])
            .await;
        fs.set_fail_sync(false);
        assert!(poisoned.is_err(), "a failed fsync fails the publish");
        let batch = || {
            vec![
                Message::new("x").with_id("id-x").to_partition(0),
                Message::new("y").with_id("id-y").to_partition(1),
            ]
        };
        for attempt in 0..3 {
            let r = engine.publish(TOPIC, batch()).await;
            assert!(
                r.is_err(),
                "attempt {attempt}: partition 1 refuses writes, so the publish fails: {r:?}"
            );
        }
        let stored = read_partition(&engine, "partial failure", 0).await;
        let copies = stored
            .values()
            .filter(|m| {
                m.headers
                    .iter()
                    .any(|(k, v)| k == "wharf-message-id" && v == "id-x")
            })
            .count();
        let again = engine
            .publish(
                TOPIC,
                vec![Message::new("x").with_id("id-x").to_partition(0)],
            )
            .await
            .expect("partition 0 is healthy");
        assert!(
            copies <= 1 && again[0].duplicate,
            "id-x is stored {copies} times on partition 0, and republishing it alone answered {:?}",
            again[0]
        );
    });
}
