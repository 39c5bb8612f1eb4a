//! Wharf's Rust SDK: a client for `wharf serve` over gRPC (`wharf.v1`).
//!
//! # A quick tour
//!
//! Connect once; a [`Client`] is cheap to clone and every clone shares one HTTP/2 connection.
//!
//! ```no_run
//! # async fn tour() -> Result<(), wharf_client::Error> {
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use wharf_client::{
//!     Client, Message, PublisherOptions, QueueConsumerOptions, SharedConfig,
//!     StreamConsumerOptions, SubscriptionConfig, TopicConfig,
//! };
//!
//! let client = Client::builder("http://127.0.0.1:7400")
//!     .token("my-token-with-16-chars") // if the server has [[auth.tokens]]
//!     .connect()
//!     .await?;
//!
//! // Admin: a topic with two partitions and a consumer group on it.
//! client.create_topic("orders", TopicConfig::with_partitions(2)).await?;
//! client.create_subscription("orders", "billing", SubscriptionConfig::stream()).await?;
//!
//! // Publish: batched, pipelined, retried without duplicates.
//! let publisher = client.publisher("orders", PublisherOptions::default());
//! let pending = publisher.send(Message::new("order 1").key("customer-7")).await?;
//! let landed = pending.await?;
//! println!("partition {} offset {}", landed.partition, landed.offset);
//! publisher.close().await?;
//!
//! // Consume as a group member: a Stream of records; commit what is done.
//! let mut group = client
//!     .stream_consumer("orders", "billing", StreamConsumerOptions::default())
//!     .await?;
//! if let Some(record) = group.next().await {
//!     let record = record?;
//!     group.commit(&record).await?;
//! }
//!
//! // Queues: a topic plus a shared subscription; deliveries are acked, nacked, extended or
//! // terminated (dead-lettered).
//! let dlq = SharedConfig { max_deliveries: Some(3), ..SharedConfig::default() };
//! client.create_queue("emails", TopicConfig::default(), dlq).await?;
//! client.send_to_queue("emails", ["welcome mail"]).await?;
//! let mut queue = client
//!     .queue_consumer("emails", "emails", QueueConsumerOptions::default())
//!     .await?;
//! if let Some(delivery) = queue.next().await {
//!     let delivery = delivery?;
//!     match delivery.record().value_str() {
//!         Some(_) => delivery.ack().await?,
//!         None => delivery.nack(Some(Duration::from_secs(1))).await?,
//!     }
//! }
//! let dead = client.dead_letters("emails", "emails", None, None).await?;
//! println!("{} dead letters", dead.records.len());
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! Every call fails with an [`Error`]: [`Error::kind`] is the category ([`ErrorKind`]),
//! [`Error::code`] the server's stable code (`topic_not_found`, `lease_expired`, ... — the
//! README's table), [`Error::retry_after`] the server's hint, [`Error::is_retryable`] whether
//! trying again may help.
//!
//! # Timeouts and retries
//!
//! Unary calls are bounded by the [request timeout](ClientBuilder::request_timeout) (plus the
//! wait of a long-poll). Only the [`Publisher`] retries on its own (every message it sends has
//! a `wharf-message-id`, so a retried batch is deduplicated by the server); see
//! [`RetryPolicy`]. A [`StreamConsumer`] can reopen its stream under one
//! ([`StreamConsumerOptions::reconnect`]).
//!
//! # The generated API
//!
//! [`proto`] is the generated `wharf.v1` package; the raw tonic clients on the client's
//! connection (with its token) are [`Client::topics_service`] and friends, for fields the
//! helpers do not cover.

mod apps;
mod client;
mod error;
mod publisher;
mod queue;
mod retry;
mod stream;
mod types;

/// The generated `wharf.v1` messages and tonic clients (re-exported from `wharf-proto`).
pub use wharf_proto::v1 as proto;

pub use apps::{Instance, Registration};
pub use client::{AuthInterceptor, Client, ClientBuilder, DEFAULT_URL, GrpcChannel};
pub use error::{Error, ErrorKind, Result};
pub use publisher::{PublishFuture, Publisher, PublisherOptions};
pub use queue::{Delivery, QueueConsumer, QueueConsumerOptions};
pub use retry::RetryPolicy;
pub use stream::{Assignment, StreamConsumer, StreamConsumerOptions};
pub use types::{
    DELIVER_AT_HEADER, DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER,
    DLQ_SOURCE_PARTITION_HEADER, DLQ_SOURCE_TOPIC_HEADER, Durability, FetchOptions,
    MESSAGE_ID_HEADER, Message, Position, PublishResult, Push, ReadOptions, ReadResult,
    ReceiveOptions, Record, ResetTo, SharedConfig, StreamConfig, SubscriptionConfig, TopicConfig,
    new_message_id,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}

    /// Everything can move between tasks, and the futures of the async methods are `Send`
    /// (so they can be awaited inside `tokio::spawn`).
    #[tokio::test]
    async fn public_types_and_futures_are_send() {
        send_sync::<Client>();
        send_sync::<Publisher>();
        send_sync::<PublishFuture>();
        send_sync::<StreamConsumer>();
        send_sync::<QueueConsumer>();
        send_sync::<Delivery>();
        send_sync::<Error>();
        let client = ClientBuilder::new("http://127.0.0.1:1")
            .connect_lazy()
            .expect("lazy");
        send(&client.list_topics());
        send(&client.publish("t", ["x"]));
        send(&client.read("t", 0, ReadOptions::default()));
        send(&client.receive("t", "s", ReceiveOptions::default()));
        send(&client.stream_consumer("t", "s", StreamConsumerOptions::default()));
        send(&client.queue_consumer("t", "s", QueueConsumerOptions::default()));
        send(&client.ack("t", "s", ["a"]));
        let publisher = client.publisher("t", PublisherOptions::default());
        send(&publisher.send("x"));
        send(&publisher.flush());
    }
}
