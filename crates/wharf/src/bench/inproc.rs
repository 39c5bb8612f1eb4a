//! [`InProc`]: Wharf's embedded engine in this process, called through the `Engine` trait —
//! the "direct call" baseline the network drivers are judged against. The same calls the
//! server makes for each gRPC request, without the network, the protocol or the server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tempfile::TempDir;
use wharf_broker::{
    BrokerError, EmbeddedConfig, EmbeddedEngine, Engine, FetchRequest, Message, ReceiveRequest,
    SharedConfig, StreamConfig, SubscriptionConfig, TopicConfig,
};

use super::driver::{
    AckHandle, Batch, BenchError, Driver, Durability, Publisher, QueueConsumer, Result, ServerSide,
    Subscriber, TopicSpec,
};

/// How often a stream member heartbeats (the default session timeout is 30 s; the server's
/// `Consume` loop heartbeats every third of it).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// The fetch byte budget the server's `Consume` loop uses.
const FETCH_MAX_BYTES: usize = 1024 * 1024;

fn broker(what: &str, e: BrokerError) -> BenchError {
    BenchError(format!("{what}: {e}"))
}

/// The embedded engine on a fresh directory in this process.
pub(crate) struct InProc {
    engine: Arc<EmbeddedEngine>,
    dir: PathBuf,
    /// Removed when the driver is dropped.
    _temp: TempDir,
}

impl InProc {
    /// Opens the engine on a new temporary directory inside `base` (or the system's temporary
    /// directory).
    pub(crate) async fn open(base: Option<PathBuf>) -> Result<Self> {
        let temp = match &base {
            Some(base) => {
                std::fs::create_dir_all(base)
                    .map_err(|e| BenchError(format!("cannot create {}: {e}", base.display())))?;
                tempfile::Builder::new()
                    .prefix("wharf-bench-")
                    .tempdir_in(base)
            }
            None => tempfile::Builder::new().prefix("wharf-bench-").tempdir(),
        }
        .map_err(|e| BenchError(format!("cannot create a temporary data directory: {e}")))?;
        let dir = temp.path().join("data");
        let open_dir = dir.clone();
        let engine = tokio::task::spawn_blocking(move || {
            EmbeddedEngine::open(EmbeddedConfig::new(open_dir))
        })
        .await
        .map_err(|e| BenchError(format!("opening the engine: {e}")))?
        .map_err(|e| broker(&format!("cannot open the engine on {}", dir.display()), e))?;
        Ok(Self {
            engine: Arc::new(engine),
            dir,
            _temp: temp,
        })
    }

    fn topic_config(spec: TopicSpec) -> TopicConfig {
        let mut config = TopicConfig {
            partitions: spec.partitions,
            ..TopicConfig::default()
        };
        if let Some(d) = spec.durability {
            config.durability = match d {
                Durability::Always => wharf_broker::Durability::Always,
                // The server's default interval when a request names the mode only.
                Durability::Interval => wharf_broker::Durability::Interval { ms: 100 },
                Durability::None => wharf_broker::Durability::None,
            };
        }
        config
    }
}

#[async_trait]
impl Driver for InProc {
    fn describe(&self) -> String {
        format!(
            "in-process: wharf_broker::EmbeddedEngine through the Engine trait (data {})",
            self.dir.display()
        )
    }

    fn server_side(&self) -> ServerSide {
        ServerSide::InProcess
    }

    async fn create_topic(&self, topic: &str, spec: TopicSpec) -> Result<()> {
        self.engine
            .create_topic(topic, Self::topic_config(spec))
            .await
            .map_err(|e| broker(&format!("creating topic {topic}"), e))?;
        Ok(())
    }

    async fn create_queue(&self, queue: &str, spec: TopicSpec) -> Result<()> {
        self.create_topic(queue, spec).await?;
        self.engine
            .create_subscription(
                queue,
                queue,
                SubscriptionConfig::Shared(SharedConfig::default()),
            )
            .await
            .map_err(|e| broker(&format!("creating the subscription of queue {queue}"), e))?;
        Ok(())
    }

    async fn create_subscription(&self, topic: &str, sub: &str) -> Result<()> {
        self.engine
            .create_subscription(
                topic,
                sub,
                SubscriptionConfig::Stream(StreamConfig::default()),
            )
            .await
            .map_err(|e| broker(&format!("creating subscription {sub} on {topic}"), e))?;
        Ok(())
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.engine
            .delete_topic(topic)
            .await
            .map_err(|e| broker(&format!("deleting topic {topic}"), e))
    }

    async fn publisher(&self, topic: &str) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(InProcPublisher {
            engine: self.engine.clone(),
            topic: topic.to_owned(),
        }))
    }

    async fn subscribe(
        &self,
        topic: &str,
        sub: &str,
        max_batch: usize,
    ) -> Result<Box<dyn Subscriber>> {
        let m = self
            .engine
            .join(topic, sub, None)
            .await
            .map_err(|e| broker(&format!("joining {sub} on {topic}"), e))?;
        Ok(Box::new(InProcSubscriber {
            engine: self.engine.clone(),
            topic: topic.to_owned(),
            sub: sub.to_owned(),
            member: m.member_id,
            max_batch,
            last_heartbeat: Instant::now(),
        }))
    }

    async fn queue_consumer(&self, queue: &str, window: usize) -> Result<Box<dyn QueueConsumer>> {
        Ok(Box::new(InProcQueueConsumer {
            engine: self.engine.clone(),
            queue: queue.to_owned(),
            member: format!("bench-{:016x}", rand::random::<u64>()),
            window,
            ids: Vec::new(),
        }))
    }

    async fn close(&self) -> Result<()> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.close())
            .await
            .map_err(|e| BenchError(format!("closing the engine: {e}")))?
            .map_err(|e| broker("closing the engine", e))
    }
}

struct InProcPublisher {
    engine: Arc<EmbeddedEngine>,
    topic: String,
}

#[async_trait]
impl Publisher for InProcPublisher {
    async fn publish(&mut self, batch: &Batch, n: usize) -> Result<usize> {
        // `Engine::publish` takes its batch by value: one vector per call, the values shared
        // (reference-counted), as a server handler hands it over.
        let messages: Vec<Message> = batch.values()[..n.min(batch.len())]
            .iter()
            .map(|v| Message {
                value: v.clone(),
                headers: batch.headers().to_vec(),
                ..Message::default()
            })
            .collect();
        let done = self
            .engine
            .publish(&self.topic, messages)
            .await
            .map_err(|e| broker(&format!("publishing to {}", self.topic), e))?;
        Ok(done.len())
    }
}

struct InProcSubscriber {
    engine: Arc<EmbeddedEngine>,
    topic: String,
    sub: String,
    member: String,
    max_batch: usize,
    last_heartbeat: Instant,
}

#[async_trait]
impl Subscriber for InProcSubscriber {
    async fn next_batch(&mut self, out: &mut Vec<Bytes>, timeout: Duration) -> Result<usize> {
        out.clear();
        if self.last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            self.last_heartbeat = Instant::now();
            self.engine
                .heartbeat(&self.topic, &self.sub, &self.member)
                .await
                .map_err(|e| broker("heartbeat", e))?;
        }
        let request = FetchRequest {
            max_messages: self.max_batch,
            max_bytes: FETCH_MAX_BYTES,
            wait: timeout,
        };
        let messages = self
            .engine
            .fetch(&self.topic, &self.sub, &self.member, request)
            .await
            .map_err(|e| broker(&format!("fetching from {}", self.topic), e))?;
        out.extend(messages.into_iter().map(|m| m.value));
        Ok(out.len())
    }

    async fn close(self: Box<Self>) -> Result<()> {
        self.engine
            .leave(&self.topic, &self.sub, &self.member)
            .await
            .map_err(|e| broker("leaving the subscription", e))
    }
}

struct InProcQueueConsumer {
    engine: Arc<EmbeddedEngine>,
    queue: String,
    member: String,
    window: usize,
    /// Reused for the ack call.
    ids: Vec<String>,
}

#[async_trait]
impl QueueConsumer for InProcQueueConsumer {
    async fn receive(
        &mut self,
        values: &mut Vec<Bytes>,
        acks: &mut Vec<AckHandle>,
        timeout: Duration,
    ) -> Result<usize> {
        values.clear();
        acks.clear();
        let request = ReceiveRequest {
            member: Some(self.member.clone()),
            max: self.window,
            lease: None,
            wait: timeout,
        };
        let deliveries = self
            .engine
            .receive(&self.queue, &self.queue, request)
            .await
            .map_err(|e| broker(&format!("receiving from {}", self.queue), e))?;
        for d in deliveries {
            values.push(d.message.value);
            acks.push(AckHandle::Text(d.ack_id));
        }
        Ok(values.len())
    }

    async fn ack(&mut self, acks: &[AckHandle]) -> Result<usize> {
        self.ids.clear();
        for a in acks {
            match a {
                AckHandle::Text(id) => self.ids.push(id.clone()),
                AckHandle::Number(n) => {
                    return Err(BenchError(format!("ack handle {n} is not Wharf's")));
                }
            }
        }
        let outcomes = self
            .engine
            .ack(&self.queue, &self.queue, &self.ids)
            .await
            .map_err(|e| broker(&format!("acking on {}", self.queue), e))?;
        Ok(outcomes.iter().filter(|o| o.error.is_none()).count())
    }

    async fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
