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
use tokio::sync::{oneshot, watch};
use wharf_broker::{BrokerError, Result};

use crate::amqp::{self, Start, StreamReader, unavailable};

/// A deterministic state machine fed by the stream's records.
pub(crate) trait Machine: Send + 'static {
    /// A change, as written to the stream.
    type Op: Serialize + DeserializeOwned + Send;
    /// What applying a change did, handed to its writer.
    type Outcome: Send + 'static;

    /// The record [`Rsm::sync`] writes: changes nothing.
    fn fence() -> Self::Op;

    /// Applies the record at `offset`. Must depend only on the state and the record.
    fn apply(&mut self, offset: u64, op: Self::Op) -> Self::Outcome;
}

/// A record of the stream: a change and who wrote it.
#[derive(Serialize, Deserialize)]
struct Record<O> {
    /// `{node}.{sequence}`: the writer finds its record (and so its place in the order) by it.
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
}

/// One node's copy of a replicated state machine.
pub(crate) struct Rsm<M: Machine> {
    queue: String,
    node: String,
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

/// Declares `queue` as a stream queue (on a channel of its own: a refused declare closes its
/// channel).
pub(crate) async fn declare_stream(conn: &Connection, queue: &str) -> Result<()> {
    let declaring = conn
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a channel", e))?;
    let r = declaring
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            amqp::table(vec![(
                "x-queue-type",
                AMQPValue::LongString("stream".into()),
            )]),
        )
        .await;
    let _ = declaring.close(200, "done".into()).await;
    r.map(|_| ()).map_err(|e| {
        BrokerError::EngineUnavailable(format!(
            "rabbitmq: cannot declare the stream queue {queue} \
             (Wharf needs RabbitMQ 3.10 or newer, with stream queues): {e}"
        ))
    })
}

impl<M: Machine> Rsm<M> {
    /// Starts applying stream `queue` (which must exist) to `machine`, and syncs within
    /// `first_sync` (reading the stream from its start may take a while).
    pub(crate) async fn open(
        conn: &Connection,
        queue: String,
        node: String,
        machine: M,
        timeout: Duration,
        first_sync: Duration,
    ) -> Result<Self> {
        let channel = amqp::confirm_channel(conn).await?;
        let shared = Arc::new(Mutex::new(Shared {
            machine,
            waiting: HashMap::new(),
            failed: None,
        }));
        let reader = amqp::timed(
            timeout,
            "opening a stream reader",
            StreamReader::open(conn, &queue, Start::First, 1000),
        )
        .await?;
        let (tx, rx) = watch::channel(0);
        let task = tokio::spawn(apply_loop(reader, shared.clone(), tx));
        let mut rsm = Self {
            queue,
            node,
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
            self.node,
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
        let result = match amqp::timed(self.timeout, &what, sent).await {
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
        };
        self.shared
            .lock()
            .expect("rsm state")
            .waiting
            .remove(&writer);
        result
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

    /// A receiver that changes whenever a record is applied.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Whether the reader still runs and the writing channel is open.
    pub(crate) fn alive(&self) -> bool {
        self.channel.status().connected() && self.shared.lock().expect("rsm state").failed.is_none()
    }
}

/// Applies the stream's records in order, for as long as the connection lives.
async fn apply_loop<M: Machine>(
    mut reader: StreamReader,
    shared: Arc<Mutex<Shared<M>>>,
    applied: watch::Sender<u64>,
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
        // A record that does not parse was not written by this version of Wharf: skipped
        // (every node skips it alike).
        let Ok(record) = serde_json::from_slice::<Record<M::Op>>(&delivery.data) else {
            continue;
        };
        {
            let mut s = shared.lock().expect("rsm state");
            let outcome = s.machine.apply(offset, record.op);
            if let Some(tx) = s.waiting.remove(&record.writer) {
                let _ = tx.send((offset, outcome));
            }
        }
        applied.send_replace(offset + 1);
    };
    let mut s = shared.lock().expect("rsm state");
    s.failed = Some(why);
    s.waiting.clear();
    drop(s);
    // Wakes whoever waits for a change: the next look finds the failure.
    applied.send_modify(|_| {});
}
