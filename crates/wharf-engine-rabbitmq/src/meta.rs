//! Wharf's settings on RabbitMQ: a replicated state machine on one stream.
//!
//! AMQP 0.9.1 cannot list queues or read a queue's arguments back, and RabbitMQ has no
//! key-value store, so the topics' settings live in a Wharf-owned stream `{prefix}.meta`.
//! Every change is a record appended to it; every node reads the stream from its first
//! record and applies the records in stream order, so all nodes reach the same state, and
//! conflicts are decided by that order (the first create of a name wins; a later create of
//! the same name finds it taken).
//!
//! A node's view may lag the stream by the time a record takes to reach it. [`Meta::sync`]
//! appends a fence record and waits until it has been applied: after that the view holds
//! every change acknowledged before the call (a linearizable read, used when a node does not
//! know a topic it is asked about, and before listing).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use wharf_broker::{BrokerError, Result, TopicConfig};

use crate::amqp::{self, Start, StreamReader, unavailable};

/// How long opening may take to read the settings stream up to now.
pub(crate) const OPEN_BUDGET: Duration = Duration::from_secs(60);

/// One change to the settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Change {
    /// Creates a topic unless one of that name exists.
    CreateTopic {
        name: String,
        config: TopicConfig,
        created_ms: i64,
    },
    /// Deletes the topic of that generation (a later one of the same name stays).
    DeleteTopic { name: String, generation: u64 },
    /// Changes nothing: marks a point in the stream (see [`Meta::sync`]).
    Fence,
}

/// A record of the stream: a change and who wrote it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// `{node}.{sequence}`: the writer finds its record (and so its place in the order) by it.
    writer: String,
    #[serde(flatten)]
    change: Change,
}

/// A topic as the settings stream knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TopicState {
    pub(crate) config: TopicConfig,
    /// The stream offset of the record that created it: part of its streams' names, so a
    /// topic deleted and created again never shares a stream with its earlier self.
    pub(crate) generation: u64,
    pub(crate) created_ms: i64,
}

#[derive(Default)]
struct State {
    topics: BTreeMap<String, TopicState>,
    /// Writers waiting for their record to be applied, by writer id.
    waiting: HashMap<String, oneshot::Sender<u64>>,
    /// Set when the reader stopped (connection lost): waiters fail instead of hanging.
    failed: Option<String>,
}

/// The settings stream of one node's session.
pub(crate) struct Meta {
    queue: String,
    node: String,
    next: AtomicU64,
    state: Arc<Mutex<State>>,
    channel: Channel,
    timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
    syncing: tokio::sync::Mutex<()>,
    syncs_started: AtomicU64,
    syncs_done: AtomicU64,
}

impl Drop for Meta {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Meta {
    /// Declares the settings stream (a stream queue: this is where a RabbitMQ without
    /// streams, older than 3.9, is refused), starts applying it, and syncs.
    pub(crate) async fn open(
        conn: &Connection,
        queue: String,
        node: String,
        timeout: Duration,
    ) -> Result<Self> {
        let channel = amqp::confirm_channel(conn).await?;
        // Declared on a channel of its own: a refused declare closes its channel.
        let declaring = conn
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        declaring
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                amqp::table(vec![(
                    "x-queue-type",
                    AMQPValue::LongString("stream".into()),
                )]),
            )
            .await
            .map_err(|e| {
                BrokerError::EngineUnavailable(format!(
                    "rabbitmq: cannot declare the stream queue {queue} \
                     (Wharf needs RabbitMQ 3.10 or newer, with stream queues): {e}"
                ))
            })?;
        let _ = declaring.close(200, "done".into()).await;
        let state = Arc::new(Mutex::new(State::default()));
        let reader = StreamReader::open(conn, &queue, Start::First, 1000).await?;
        let task = tokio::spawn(apply_loop(reader, state.clone()));
        let mut meta = Self {
            queue,
            node,
            next: AtomicU64::new(0),
            state,
            channel,
            // Reading the stream from its start may take a while: the first sync waits longer.
            timeout: timeout.max(OPEN_BUDGET),
            reader: task,
            syncing: tokio::sync::Mutex::new(()),
            syncs_started: AtomicU64::new(0),
            syncs_done: AtomicU64::new(0),
        };
        meta.sync().await?;
        meta.timeout = timeout;
        Ok(meta)
    }

    /// Appends a change; returns its offset in the stream once this node has applied it
    /// (and every record before it).
    pub(crate) async fn append(&self, change: Change) -> Result<u64> {
        let writer = format!(
            "{}.{}",
            self.node,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let body = serde_json::to_vec(&Record {
            writer: writer.clone(),
            change,
        })
        .map_err(|e| BrokerError::Internal(format!("encoding a settings record: {e}")))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.state.lock().expect("meta state");
            if let Some(why) = &s.failed {
                return Err(unavailable("reading the settings stream", why));
            }
            s.waiting.insert(writer.clone(), tx);
        }
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
                .map_err(|e| unavailable("writing the settings stream", e))?
                .await
                .map_err(|e| unavailable("writing the settings stream", e))?;
            if confirm.is_nack() {
                return Err(unavailable(
                    "writing the settings stream",
                    "RabbitMQ refused the record",
                ));
            }
            Ok(())
        };
        let result = match amqp::timed(self.timeout, "writing the settings stream", sent).await {
            Ok(()) => match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(offset)) => Ok(offset),
                Ok(Err(_)) => Err(unavailable(
                    "reading the settings stream",
                    "the reader stopped",
                )),
                Err(_) => Err(unavailable(
                    "reading the settings stream",
                    "a written record did not come back in time",
                )),
            },
            Err(e) => Err(e),
        };
        self.state
            .lock()
            .expect("meta state")
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
        self.append(Change::Fence).await?;
        self.syncs_done.store(id, Ordering::Release);
        Ok(())
    }

    /// The topic's settings as this node knows them (see [`Meta::sync`]).
    pub(crate) fn topic(&self, name: &str) -> Option<TopicState> {
        self.state
            .lock()
            .expect("meta state")
            .topics
            .get(name)
            .cloned()
    }

    /// Every topic this node knows, by name.
    pub(crate) fn topics(&self) -> Vec<(String, TopicState)> {
        let s = self.state.lock().expect("meta state");
        s.topics
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether the reader still runs and the writing channel is open.
    pub(crate) fn alive(&self) -> bool {
        self.channel.status().connected() && self.state.lock().expect("meta state").failed.is_none()
    }
}

/// Applies the stream's records in order, for as long as the connection lives.
async fn apply_loop(mut reader: StreamReader, state: Arc<Mutex<State>>) {
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
        let Ok(record) = serde_json::from_slice::<Record>(&delivery.data) else {
            continue;
        };
        let mut s = state.lock().expect("meta state");
        match record.change {
            Change::CreateTopic {
                name,
                config,
                created_ms,
            } => {
                s.topics.entry(name).or_insert(TopicState {
                    config,
                    generation: offset,
                    created_ms,
                });
            }
            Change::DeleteTopic { name, generation } => {
                if s.topics
                    .get(&name)
                    .is_some_and(|t| t.generation == generation)
                {
                    s.topics.remove(&name);
                }
            }
            Change::Fence => {}
        }
        if let Some(tx) = s.waiting.remove(&record.writer) {
            let _ = tx.send(offset);
        }
    };
    let mut s = state.lock().expect("meta state");
    s.failed = Some(why);
    s.waiting.clear();
}
