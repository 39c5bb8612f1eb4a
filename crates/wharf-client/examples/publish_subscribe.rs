//! Publish with the batching [`Publisher`](wharf_client::Publisher), then consume the same
//! messages as a consumer group member and commit them.
//!
//! Run against `wharf serve` (default `http://127.0.0.1:7400`; set `WHARF_SERVER` for another
//! address and `WHARF_TOKEN` if the server has tokens):
//!
//! ```sh
//! cargo run -p wharf-client --example publish_subscribe
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use wharf_client::{
    Client, ErrorKind, Message, Position, PublisherOptions, StreamConfig, StreamConsumerOptions,
    SubscriptionConfig, TopicConfig,
};

const TOPIC: &str = "example.orders";
const MESSAGES: usize = 20;
const PATIENCE: Duration = Duration::from_secs(30);

async fn connect() -> Result<Client, wharf_client::Error> {
    let url = std::env::var("WHARF_SERVER").unwrap_or_else(|_| wharf_client::DEFAULT_URL.into());
    let mut builder = Client::builder(&url);
    if let Ok(token) = std::env::var("WHARF_TOKEN") {
        builder = builder.token(token);
    }
    println!("connecting to {url}");
    builder.connect().await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = connect().await?;

    match client
        .create_topic(TOPIC, TopicConfig::with_partitions(2))
        .await
    {
        Ok(_) => println!("topic {TOPIC} ready (2 partitions)"),
        // It exists with other settings: use it as it is.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => println!("topic {TOPIC} exists: {e}"),
        Err(e) => return Err(e.into()),
    }

    // A subscription of this run only, starting at the end: it sees what we publish next.
    let subscription = format!("example-{:08x}", rand_suffix());
    client
        .create_subscription(
            TOPIC,
            subscription.as_str(),
            SubscriptionConfig::Stream(StreamConfig {
                start: Some(Position::Latest),
                ..StreamConfig::default()
            }),
        )
        .await?;
    println!("subscription {subscription} created (from the latest offset)");

    // Publish: send() queues (waiting if the queue is full) and answers a future per message.
    let publisher = client.publisher(TOPIC, PublisherOptions::default());
    let mut pending = Vec::new();
    for i in 0..MESSAGES {
        let message = Message::new(format!("order {i}"))
            .key(format!("customer-{}", i % 5))
            .header("source", "publish_subscribe example");
        pending.push(publisher.send(message).await?);
    }
    let mut ids = BTreeSet::new();
    for p in pending {
        let id = p.message_id().to_owned();
        let landed = p.await?;
        println!(
            "published {id} -> partition {} offset {}{}",
            landed.partition,
            landed.offset,
            if landed.duplicate { " (duplicate)" } else { "" }
        );
        ids.insert(id);
    }
    publisher.close().await?;

    // Consume them as a group member; commit each one processed.
    let mut consumer = client
        .stream_consumer(
            TOPIC,
            subscription.as_str(),
            StreamConsumerOptions::default(),
        )
        .await?;
    println!(
        "joined as {} with partitions {:?}",
        consumer.member_id(),
        consumer.assignment().partitions
    );
    let mut seen = BTreeSet::new();
    while seen.len() < ids.len() {
        let Ok(next) = tokio::time::timeout(PATIENCE, consumer.next()).await else {
            return Err(format!(
                "only {} of {} messages within {PATIENCE:?}",
                seen.len(),
                ids.len()
            )
            .into());
        };
        let Some(record) = next else {
            return Err("the consume stream ended".into());
        };
        let record = record?;
        println!(
            "consumed {}:{} key={} value={:?}",
            record.partition,
            record.offset,
            record.key_str().unwrap_or("-"),
            record.value_str().unwrap_or("<binary>")
        );
        consumer.commit(&record).await?;
        if let Some(id) = record.message_id() {
            seen.insert(id.to_owned());
        }
    }
    drop(consumer);

    let sub = client
        .get_subscription(TOPIC, subscription.as_str())
        .await?;
    for p in &sub.partitions {
        println!(
            "partition {}: committed {} lag {}",
            p.partition, p.committed, p.lag
        );
    }
    client
        .delete_subscription(TOPIC, subscription.as_str())
        .await?;
    println!(
        "consumed and committed all {} messages; subscription deleted",
        seen.len()
    );
    Ok(())
}

/// A random suffix so runs do not share a subscription.
fn rand_suffix() -> u32 {
    let id = wharf_client::new_message_id();
    u32::from_str_radix(&id[..8], 16).unwrap_or(0)
}
