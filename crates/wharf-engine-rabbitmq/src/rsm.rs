//! A replicated state machine on one RabbitMQ stream.
//!
//! Every change is a record appended to the stream; every node reads the stream from its
//! first record and applies the records in stream order, so all nodes reach the same state
//! and conflicts are decided by that order. A writer learns what its record did — the
//! machine's *outcome* of applying it, at its place in the order — by waiting until its own
//! node has applied it ([`Rsm::propose`]). Records carry everything the machine needs to
//! apply them (times included: the proposer's clock reading), so applying is deterministic.
//!
//! A node's view may lag the stream by the time a record takes to reach it. [`Rsm::sync`]
//! appends a fence record and waits until it has been applied: after that the view holds
//! every change acknowledged before the call (a linearizable read).
//!
//! **Snapshots** bound what a node reads when it starts. A node that wrote a record which
//! leaves [`Policy::every`] records (or [`Policy::max_age`] of time) since the snapshot it
//! knows writes the state as of that record to the stream `{queue}.snap` (declared then). A
//! node starting up reads the newest snapshot (the snapshot stream's last chunk), restores
//! it, and applies the records after it, checking that the stream still holds the record
//! the snapshot was taken at (and, without a snapshot, the stream's first record). The record
//! stream keeps a week (`x-max-age`), far more than the time between snapshots of a stream
//! in use; a stream idle for longer gets a snapshot from the first record written after the
//! pause, before its old segments can go. A node that finds records missing refuses to
//! serve the state rather than rebuild a wrong one.
//!
//! Used for Wharf's settings (`meta`) and for each subscription's state (`subs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use wharf_broker::{BrokerError, Result};

use crate::amqp::{self, Start, StreamReader, unavailable};

/// A deterministic state machine fed by the stream's records.
pub(crate) trait Machine: Send + 'static {
    /// A change, as written to the stream.
    type Op: Serialize + DeserializeOwned + Send;
    /// What applying a change did, handed to its writer.
    type Outcome: Send + 'static;

    /// The replicated state, as a snapshot holds it.
    type Snap: Serialize + DeserializeOwned + Send;

    /// The record [`Rsm::sync`] writes: changes nothing.
    fn fence() -> Self::Op;

    /// Whether applying `op` may be what a waiting reader waits for ([`Rsm::changes`]): a
    /// record that can only take something away need not wake anyone.
    fn wakes(_op: &Self::Op) -> bool {
        true
    }

    /// Applies the record at `offset`. Must depend only on the state and the record.
    fn apply(&mut self, offset: u64, op: Self::Op) -> Self::Outcome;

    /// The replicated state now.
    fn snapshot(&self) -> Self::Snap;

    /// Replaces the replicated state with a snapshot's (node-local parts start afresh);
    /// false (and nothing changed) if the snapshot does not fit this state.
    fn restore(&mut self, snap: Self::Snap) -> bool;
}

/// What the first record a copy reads must be.
enum Expect {
    /// Anything (checked already).
    Nothing,
    /// Offset 0: the copy replays the whole stream.
    Start,
    /// The record a snapshot was taken at (offset, writer id), which is skipped.
    Record(u64, String),
}

/// Removes a proposal's waiter when the proposal ends, however it ends.
struct Forget<'a, M: Machine> {
    shared: &'a Mutex<Shared<M>>,
    writer: &'a str,
}

impl<M: Machine> Drop for Forget<'_, M> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.lock() {
            s.waiting.remove(self.writer);
        }
    }
}

/// When a node writes a snapshot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// After this many records since the snapshot the node knows.
    pub(crate) every: u64,
    /// Or this long after it (a stream in use always has a recent snapshot).
    pub(crate) max_age: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            every: 10_000,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// How long the record stream keeps records: far longer than [`Policy::max_age`].
const KEEP: &str = "7D";

/// A snapshot as the snapshot stream holds it.
#[derive(Serialize, Deserialize)]
struct Snapshot<S> {
    /// The offset of the last record it reflects.
    as_of: u64,
    /// That record's writer id: a starting node checks that the record stream holds it
    /// (and not another stream of the same name, created again).
    writer: String,
    /// When it was taken (ms since the Unix epoch, the node's wall clock).
    at_ms: i64,
    state: S,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A record of the stream: a change and who wrote it.
#[derive(Serialize, Deserialize)]
struct Record<O> {
    /// `{node}.{instance}.{sequence}`: the writer finds its record (and so its place in the
    /// order) by it.
    writer: String,
    #[serde(flatten)]
    op: O,
}

type Waiter<O> = oneshot::Sender<(u64, O)>;

struct Shared<M: Machine> {
    machine: M,
    /// Writers waiting for their record to be applied, by writer id.
    waiting: HashMap<String, Waiter<M::Outcome>>,
    /// Set when the reader stopped (connection lost, stream deleted): waiters fail instead
    /// of hanging.
    failed: Option<String>,
    /// Records applied (snapshots not counted).
    count: u64,
}

/// Copies of state machines opened by this process: part of writer ids, so that a copy
/// opened again (after a reconnect) never takes an earlier copy's record for its own.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// One node's copy of a replicated state machine.
pub(crate) struct Rsm<M: Machine> {
    queue: String,
    /// `{node}.{instance}`: writer ids are `{writer}.{sequence}`, unique in the stream.
    writer: String,
    next: AtomicU64,
    shared: Arc<Mutex<Shared<M>>>,
    channel: Channel,
    timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
    /// One past the offset of the last record applied: changes when the state may have.
    applied: watch::Receiver<u64>,
    syncing: tokio::sync::Mutex<()>,
    syncs_started: AtomicU64,
    syncs_done: AtomicU64,
}

impl<M: Machine> Drop for Rsm<M> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Declares the record stream `queue` of a replicated state machine. (Its snapshot stream
/// is declared when the first snapshot is written: most state streams never need one, and
/// every stream costs RabbitMQ file handles.)
pub(crate) async fn declare_stream(conn: &Connection, queue: &str) -> Result<()> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a channel", e))?;
    let r = declare(&ch, queue, record_args()).await;
    let _ = ch.close(200, "done".into()).await;
    match r {
        // Declared by an earlier build with other arguments (no retention): it is there,
        // and it is used as it is.
        Err(e) if e.to_string().contains("PRECONDITION_FAILED") => {
            let ch = conn
                .create_channel()
                .await
                .map_err(|e| unavailable("opening a channel", e))?;
            let passive = ch
                .queue_declare(
                    queue.into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await;
            let _ = ch.close(200, "done".into()).await;
            passive
                .map(|_| ())
                .map_err(|e| unavailable(&format!("declaring {queue}"), e))
        }
        other => other,
    }
}

fn record_args() -> Vec<(&'static str, AMQPValue)> {
    vec![
        ("x-max-age", AMQPValue::LongString(KEEP.into())),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongLongInt(8 * 1024 * 1024),
        ),
    ]
}

fn snap_args() -> Vec<(&'static str, AMQPValue)> {
    vec![
        (
            "x-max-length-bytes",
            AMQPValue::LongLongInt(1024 * 1024 * 1024),
        ),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongLongInt(64 * 1024 * 1024),
        ),
    ]
}

/// The snapshot stream of record stream `queue`.
pub(crate) fn snap_queue(queue: &str) -> String {
    format!("{queue}.snap")
}

/// Declares `queue` as a stream queue with `args` on `ch` (a refused declare closes the
/// channel: give it one of its own).
async fn declare(ch: &Channel, queue: &str, args: Vec<(&str, AMQPValue)>) -> Result<()> {
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        amqp::table(
            std::iter::once(("x-queue-type", AMQPValue::LongString("stream".into())))
                .chain(args)
                .collect(),
        ),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        BrokerError::EngineUnavailable(format!(
            "rabbitmq: cannot declare the stream queue {queue} \
             (Wharf needs RabbitMQ 3.10 or newer, with stream queues): {e}"
        ))
    })
}

impl<M: Machine> Rsm<M> {
    /// Starts applying stream `queue` (declared with [`declare_stream`]) to `machine` from
    /// its newest snapshot, and syncs within `first_sync` (reading the records after the
    /// snapshot may take a while).
    pub(crate) async fn open(
        conn: &Connection,
        queue: String,
        node: String,
        mut machine: M,
        timeout: Duration,
        first_sync: Duration,
        policy: Policy,
    ) -> Result<Self> {
        let node = format!("{node}.{}", INSTANCES.fetch_add(1, Ordering::Relaxed));
        let channel = amqp::confirm_channel(conn).await?;
        let latest = amqp::timed(
            first_sync.max(timeout),
            "reading a snapshot",
            latest_snapshot::<M::Snap>(conn, &queue, timeout),
        )
        .await?;
        let (start, known, expect) = match latest {
            Some(snap) => {
                if !machine.restore(snap.state) {
                    return Err(unavailable(
                        &format!("reading {queue}"),
                        "its newest snapshot does not fit the state it is for",
                    ));
                }
                // Read from the snapshot's own record: the apply loop checks that the
                // stream still holds it (retention took nothing after it) and that it is
                // the record the snapshot names (not another stream of the same name).
                (
                    Start::Offset(snap.as_of),
                    (snap.as_of, snap.at_ms),
                    Expect::Record(snap.as_of, snap.writer),
                )
            }
            // No snapshot: the stream must hold every record (a stream too short to have had
            // a snapshot never rolled a segment over, so retention took nothing).
            None => (Start::First, (0, wall_ms()), Expect::Start),
        };
        let shared = Arc::new(Mutex::new(Shared {
            machine,
            waiting: HashMap::new(),
            failed: None,
            count: 0,
        }));
        let reader = amqp::timed(
            timeout,
            "opening a stream reader",
            StreamReader::open(conn, &queue, start, 1000),
        )
        .await?;
        let (tx, rx) = watch::channel(0);
        let (snaps_tx, snaps_rx) = mpsc::channel::<Snapshot<M::Snap>>(2);
        let snapshots = Snapshots {
            node: format!("{node}."),
            policy,
            as_of: known.0,
            at_ms: known.1,
            out: snaps_tx,
        };
        let snap_channel = amqp::confirm_channel(conn).await?;
        let writer = tokio::spawn(write_snapshots(snap_channel, snap_queue(&queue), snaps_rx));
        let looped = shared.clone();
        let task = tokio::spawn(async move {
            apply_loop(reader, looped, tx, snapshots, expect).await;
            writer.abort();
        });
        let mut rsm = Self {
            queue,
            writer: node,
            next: AtomicU64::new(0),
            shared,
            channel,
            timeout: first_sync.max(timeout),
            reader: task,
            applied: rx,
            syncing: tokio::sync::Mutex::new(()),
            syncs_started: AtomicU64::new(0),
            syncs_done: AtomicU64::new(0),
        };
        rsm.sync().await?;
        rsm.timeout = timeout;
        Ok(rsm)
    }

    /// Appends a change; returns its offset and outcome once this node has applied it (and
    /// every record before it).
    pub(crate) async fn propose(&self, op: M::Op) -> Result<(u64, M::Outcome)> {
        let writer = format!(
            "{}.{}",
            self.writer,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let body = serde_json::to_vec(&Record {
            writer: writer.clone(),
            op,
        })
        .map_err(|e| BrokerError::Internal(format!("encoding a state record: {e}")))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.shared.lock().expect("rsm state");
            if let Some(why) = &s.failed {
                return Err(unavailable(&format!("reading {}", self.queue), why));
            }
            s.waiting.insert(writer.clone(), tx);
        }
        let what = format!("writing {}", self.queue);
        let sent = async {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map_err(|e| unavailable(&what, e))?
                .await
                .map_err(|e| unavailable(&what, e))?;
            if confirm.is_nack() {
                return Err(unavailable(&what, "RabbitMQ refused the record"));
            }
            Ok(())
        };
        // If this call is dropped, its waiter goes too.
        let _forget = Forget {
            shared: &self.shared,
            writer: &writer,
        };
        match amqp::timed(self.timeout, &what, sent).await {
            Ok(()) => match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(applied)) => Ok(applied),
                Ok(Err(_)) => Err(unavailable(
                    &format!("reading {}", self.queue),
                    "the reader stopped",
                )),
                Err(_) => Err(unavailable(
                    &format!("reading {}", self.queue),
                    "a written record did not come back in time",
                )),
            },
            Err(e) => Err(e),
        }
    }

    /// Waits until this node's view holds every change acknowledged before the call.
    ///
    /// Single-flight: syncs run one at a time, and a caller that arrives while one runs
    /// waits for the next one to start and complete, which it may share with every other
    /// caller that arrived meanwhile (each sync appends one fence record).
    pub(crate) async fn sync(&self) -> Result<()> {
        let ticket = self.syncs_started.load(Ordering::Acquire);
        let _one_at_a_time = self.syncing.lock().await;
        if self.syncs_done.load(Ordering::Acquire) > ticket {
            // A sync that started after this call arrived has completed.
            return Ok(());
        }
        let id = self.syncs_started.fetch_add(1, Ordering::AcqRel) + 1;
        self.propose(M::fence()).await?;
        self.syncs_done.store(id, Ordering::Release);
        Ok(())
    }

    /// Reads (or changes node-local parts of) this node's view.
    pub(crate) fn view<R>(&self, f: impl FnOnce(&mut M) -> R) -> R {
        f(&mut self.shared.lock().expect("rsm state").machine)
    }

    /// How many records this copy has applied (after the snapshot it started from).
    pub(crate) fn applied(&self) -> u64 {
        self.shared.lock().expect("rsm state").count
    }

    /// A receiver that changes whenever a record that may matter to a waiting reader is
    /// applied (see [`Machine::wakes`]), and when the copy stops.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Whether the reader still runs and the writing channel is open.
    pub(crate) fn alive(&self) -> bool {
        self.channel.status().connected() && self.shared.lock().expect("rsm state").failed.is_none()
    }
}

/// What the apply loop needs to write snapshots.
struct Snapshots<S> {
    /// `{writer}.`: the writer ids of this copy's records start with it.
    node: String,
    policy: Policy,
    /// The newest snapshot this node knows: its offset and time.
    as_of: u64,
    at_ms: i64,
    out: mpsc::Sender<Snapshot<S>>,
}

impl<S> Snapshots<S> {
    /// Whether this node writes a snapshot after its record at `offset`.
    fn due(&self, writer: &str, offset: u64, now_ms: i64) -> bool {
        let max_age = i64::try_from(self.policy.max_age.as_millis()).unwrap_or(i64::MAX);
        writer.starts_with(&self.node)
            && (offset.saturating_sub(self.as_of) >= self.policy.every
                || now_ms.saturating_sub(self.at_ms) >= max_age)
    }
}

/// Reads the newest snapshot of `queue`, if any. The snapshot stream holds snapshots only,
/// so its last chunk holds the newest: the reader attaches there and takes the last
/// snapshot of the burst RabbitMQ delivers (waiting `timeout` for the first, then until
/// the deliveries pause). Stopping early can only give an older snapshot, which is as
/// valid (its records follow it in the record stream, which [`Rsm::open`] checks).
async fn latest_snapshot<S: DeserializeOwned>(
    conn: &Connection,
    queue: &str,
    timeout: Duration,
) -> Result<Option<Snapshot<S>>> {
    let snaps = snap_queue(queue);
    let mut reader = match StreamReader::open(conn, &snaps, Start::Last, 16).await {
        Ok(r) => r,
        // No snapshot was ever written.
        Err(BrokerError::TopicNotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut latest = None;
    let mut wait = timeout;
    let result = loop {
        let d = match reader.next(wait).await {
            Ok(Some(d)) => d,
            Ok(None) => break Ok(latest),
            Err(e) => break Err(e),
        };
        wait = Duration::from_millis(200);
        if let Err(e) = reader.ack_up_to(d.delivery_tag).await {
            break Err(e);
        }
        match serde_json::from_slice::<Snapshot<S>>(&d.data) {
            Ok(snap) => latest = Some(snap),
            Err(e) => {
                break Err(unavailable(
                    &format!("reading {snaps}"),
                    format!(
                        "a snapshot written by another version of Wharf ({e}); upgrade this node"
                    ),
                ));
            }
        }
    };
    reader.close().await;
    result
}

/// Publishes the snapshots the apply loop takes (best effort: a lost one is taken again
/// after the next [`Policy::every`] records), declaring the snapshot stream first.
async fn write_snapshots<S: Serialize>(
    channel: Channel,
    queue: String,
    mut rx: mpsc::Receiver<Snapshot<S>>,
) {
    let mut declared = false;
    while let Some(snap) = rx.recv().await {
        // Encoded here, not in the apply loop: a large state must not hold the state's lock.
        let Ok(body) = serde_json::to_vec(&snap) else {
            continue;
        };
        if !declared {
            // A refused declare closes this channel: snapshots stop, the records stay.
            if declare(&channel, &queue, snap_args()).await.is_err() {
                return;
            }
            declared = true;
        }
        let sent = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await;
        if let Ok(confirm) = sent {
            let _ = confirm.await;
        }
    }
}

/// Applies the stream's records in order, for as long as the connection lives.
async fn apply_loop<M: Machine>(
    mut reader: StreamReader,
    shared: Arc<Mutex<Shared<M>>>,
    applied: watch::Sender<u64>,
    mut snapshots: Snapshots<M::Snap>,
    mut expect: Expect,
) {
    let mut unacked = 0u32;
    let why = loop {
        let delivery = match reader.next(Duration::from_secs(3600)).await {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => break e.to_string(),
        };
        unacked += 1;
        if unacked >= 200 {
            unacked = 0;
            if let Err(e) = reader.ack_up_to(delivery.delivery_tag).await {
                break e.to_string();
            }
        }
        let Some(offset) =
            amqp::header_u64(delivery.properties.headers().as_ref(), "x-stream-offset")
        else {
            continue;
        };
        // A record that does not parse was written by another version of Wharf (a rolling
        // upgrade): applying the others without it would let this copy diverge from the
        // nodes that understood it, so this copy stops (its node answers
        // `engine_unavailable` for it) until it runs the version that wrote it.
        let record = match serde_json::from_slice::<Record<M::Op>>(&delivery.data) {
            Ok(r) => r,
            Err(e) => {
                break format!(
                    "record {offset} was written by another version of Wharf ({e}); \
                     upgrade this node"
                );
            }
        };
        // The first record read must be where the state starts (see [`Expect`]).
        match std::mem::replace(&mut expect, Expect::Nothing) {
            Expect::Nothing => {}
            Expect::Start if offset != 0 => {
                break format!(
                    "it starts at offset {offset} and has no snapshot: its first records are \
                     gone and the state cannot be rebuilt"
                );
            }
            Expect::Start => {}
            Expect::Record(as_of, writer) => {
                if offset < as_of {
                    // Before the snapshot's record (its chunk starts earlier): skipped.
                    expect = Expect::Record(as_of, writer);
                    continue;
                }
                if offset > as_of || record.writer != writer {
                    break format!(
                        "the newest snapshot was taken at record {as_of}, which this stream \
                         does not hold (retention took it, or the stream was created again)"
                    );
                }
                continue;
            }
        }
        let wakes = M::wakes(&record.op);
        let snapshot = {
            let mut s = shared.lock().expect("rsm state");
            let outcome = s.machine.apply(offset, record.op);
            s.count += 1;
            if let Some(tx) = s.waiting.remove(&record.writer) {
                let _ = tx.send((offset, outcome));
            }
            let now = wall_ms();
            if snapshots.due(&record.writer, offset, now) {
                snapshots.as_of = offset;
                snapshots.at_ms = now;
                Some(Snapshot {
                    as_of: offset,
                    writer: record.writer.clone(),
                    at_ms: now,
                    state: s.machine.snapshot(),
                })
            } else {
                None
            }
        };
        if let Some(snap) = snapshot {
            // Full (the writer is behind): skip this one; the next is due soon.
            let _ = snapshots.out.try_send(snap);
        }
        if wakes {
            applied.send_replace(offset + 1);
        }
    };
    let mut s = shared.lock().expect("rsm state");
    s.failed = Some(why);
    s.waiting.clear();
    drop(s);
    // Wakes whoever waits for a change: the next look finds the failure.
    applied.send_modify(|_| {});
}
