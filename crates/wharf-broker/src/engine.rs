//! The `Engine` trait: everything the server needs from a message engine.
//!
//! Implemented by the embedded engine on `wharf-log` ([`crate::EmbeddedEngine`]) and, later,
//! by engines on NATS JetStream and RabbitMQ. Kept small enough that an external engine can
//! implement it, with what it lacks built by Wharf's layer; [`Engine::capabilities`] says
//! which is which.

use async_trait::async_trait;

use crate::error::Result;
use crate::types::{
    AckOutcome, Capabilities, Committed, Delivery, FetchRequest, Health, Membership, Message,
    PublishOptions, Published, ReadRequest, ReadResult, ReceiveRequest, ResetTo, StorageStats,
    SubscriptionConfig, SubscriptionInfo, TopicConfig, TopicInfo,
};

/// A message engine with Wharf's semantics (DESIGN.md §1–2b).
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// The engine's name (`"embedded"`, `"nats"`, `"rabbitmq"`).
    fn name(&self) -> &'static str;

    /// What this engine supports natively, through Wharf's layer, or not at all.
    fn capabilities(&self) -> Capabilities;

    /// Whether the engine accepts writes right now (cheap; polled by `/readyz`). The embedded
    /// engine refuses writes for good once a write or fsync failed or the disk filled up
    /// (until a restart recovers); reads keep working.
    fn health(&self) -> Health;

    /// Applies every topic's retention policy now; returns how many segments were deleted.
    /// The server calls it periodically. Engines whose storage applies retention itself keep
    /// this default.
    async fn apply_retention(&self) -> Result<u64> {
        Ok(0)
    }

    /// Storage counters for metrics, if the engine keeps its own storage.
    fn storage_stats(&self) -> Option<StorageStats> {
        None
    }

    // ---- topics -------------------------------------------------------------------------

    /// Creates a topic; idempotent when it exists with the same settings
    /// (`topic_exists` otherwise).
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo>;

    /// A topic's settings and positions.
    async fn describe_topic(&self, name: &str) -> Result<TopicInfo>;

    /// All topics (including the reserved `wharf.` dead-letter topics), by name.
    async fn list_topics(&self) -> Result<Vec<TopicInfo>>;

    /// Deletes a topic with its messages and subscriptions.
    async fn delete_topic(&self, name: &str) -> Result<()>;

    /// The largest message (key + value + headers) the topic accepts; `topic_not_found` if
    /// there is no such topic. The server calls it on every queue send (to create an unknown
    /// queue first), so engines should answer it cheaply.
    async fn max_message_bytes(&self, name: &str) -> Result<u64> {
        Ok(self.describe_topic(name).await?.config.max_message_bytes)
    }

    // ---- messages -----------------------------------------------------------------------

    /// Publishes messages; returns where each landed, in input order. Acknowledged only once
    /// every message is durable under the topic's mode. A message whose `wharf-message-id`
    /// was published within the dedup window is not stored again: its result is the
    /// original's, marked `duplicate`.
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Published>> {
        self.publish_with(topic, messages, PublishOptions::default())
            .await
    }

    /// [`Engine::publish`] with options: headers shared by every message (trace context).
    async fn publish_with(
        &self,
        topic: &str,
        messages: Vec<Message>,
        options: PublishOptions,
    ) -> Result<Vec<Published>>;

    /// Reads a partition by offset or time, optionally waiting for new messages.
    async fn read(&self, topic: &str, request: ReadRequest) -> Result<ReadResult>;

    // ---- subscriptions ------------------------------------------------------------------

    /// Creates a subscription; idempotent with the same settings.
    async fn create_subscription(
        &self,
        topic: &str,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo>;

    /// A subscription's settings, progress and members.
    async fn describe_subscription(&self, topic: &str, name: &str) -> Result<SubscriptionInfo>;

    /// The subscriptions of a topic, by name.
    async fn list_subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>>;

    /// Deletes a subscription and its state.
    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<()>;

    // ---- stream subscriptions -----------------------------------------------------------

    /// Joins a stream subscription (a new member id if `member` is `None`, or rejoins with
    /// the given one). The group rebalances; the answer is this member's assignment.
    async fn join(&self, topic: &str, sub: &str, member: Option<&str>) -> Result<Membership>;

    /// Keeps a member alive and tells it its current assignment.
    async fn heartbeat(&self, topic: &str, sub: &str, member: &str) -> Result<Membership>;

    /// Leaves the group; its partitions go to the others.
    async fn leave(&self, topic: &str, sub: &str, member: &str) -> Result<()>;

    /// Messages from the member's partitions after what it has fetched (or, after a
    /// rebalance or reset, after the committed offsets). Waits up to `wait` if none.
    async fn fetch(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        request: FetchRequest,
    ) -> Result<Vec<crate::types::StoredMessage>>;

    /// Commits offsets (the next offset to consume) for partitions the member owns. Durable
    /// when this returns. A commit below the current committed offset leaves it unchanged
    /// (use [`Engine::reset`] to move back); the answer gives the offsets in force.
    async fn commit(
        &self,
        topic: &str,
        sub: &str,
        member: &str,
        offsets: Vec<Committed>,
    ) -> Result<Vec<Committed>>;

    /// Moves a stream subscription's committed offsets (to replay or to skip); members
    /// continue from there.
    async fn reset(&self, topic: &str, sub: &str, to: ResetTo) -> Result<Vec<Committed>>;

    // ---- shared subscriptions -----------------------------------------------------------

    /// Receives up to `max` available messages under a lease.
    async fn receive(
        &self,
        topic: &str,
        sub: &str,
        request: ReceiveRequest,
    ) -> Result<Vec<Delivery>>;

    /// Acknowledges deliveries: they are done and never delivered again.
    async fn ack(&self, topic: &str, sub: &str, ack_ids: &[String]) -> Result<Vec<AckOutcome>>;

    /// Gives deliveries back, to be delivered again after `delay_ms` (or the subscription's
    /// backoff when `None`).
    async fn nack(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        delay_ms: Option<u64>,
    ) -> Result<Vec<AckOutcome>>;

    /// Extends the leases of deliveries to `lease_ms` from now.
    async fn extend(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        lease_ms: u64,
    ) -> Result<Vec<AckOutcome>>;

    /// Sends deliveries straight to the dead-letter topic with `reason`.
    async fn terminate(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        reason: &str,
    ) -> Result<Vec<AckOutcome>>;

    /// Reads the subscription's dead-letter topic (`wharf.dlq.{topic}.{sub}`).
    async fn dead_letters(
        &self,
        topic: &str,
        sub: &str,
        request: ReadRequest,
    ) -> Result<ReadResult>;

    /// Puts up to `max` dead-lettered messages back into this subscription only; returns how
    /// many.
    async fn redrive(&self, topic: &str, sub: &str, max: usize) -> Result<u64>;
}
