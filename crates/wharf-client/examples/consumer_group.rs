//! Two members of one consumer group share a topic's partitions: each consumes and commits
//! its own; a rebalance moves partitions when the second joins. Then a replay: the group is
//! reset to the start and one member reads everything again.
//!
//! Run against `wharf serve` (default `http://127.0.0.1:7400`; set `WHARF_SERVER` for another
//! address and `WHARF_TOKEN` if the server has tokens):
//!
//! ```sh
//! cargo run -p wharf-client --example consumer_group
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use wharf_client::{
    Client, ErrorKind, Message, Position, ResetTo, StreamConfig, StreamConsumerOptions,
    SubscriptionConfig, TopicConfig,
};

const TOPIC: &str = "example.events";
const MESSAGES: usize = 30;
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

/// One group member: consumes until told to stop, committing each record; reports what it
/// got.
async fn member(
    client: Client,
    group: String,
    name: &'static str,
    seen: mpsc::UnboundedSender<(String, &'static str)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), wharf_client::Error> {
    let mut consumer = client
        .stream_consumer(TOPIC, group, StreamConsumerOptions::default())
        .await?;
    println!(
        "{name}: joined as {} with partitions {:?}",
        consumer.member_id(),
        consumer.assignment().partitions
    );
    let mut partitions = consumer.assignment().partitions;
    loop {
        let record = tokio::select! {
            r = consumer.next() => r,
            _ = stop.changed() => break,
        };
        let Some(record) = record else { break };
        let record = record?;
        let now = consumer.assignment().partitions;
        if now != partitions {
            println!("{name}: rebalanced, now owns {now:?}");
            partitions = now;
        }
        match consumer.commit(&record).await {
            Ok(()) => {}
            // A rebalance took the partition away: its new owner starts from the last commit.
            Err(e) if e.kind() == ErrorKind::Conflict => {
                println!(
                    "{name}: commit of {}:{} refused: {e}",
                    record.partition, record.offset
                );
            }
            Err(e) => return Err(e),
        }
        let id = record.message_id().unwrap_or_default().to_owned();
        println!(
            "{name}: {}:{} {:?}",
            record.partition,
            record.offset,
            record.value_str().unwrap_or("<binary>")
        );
        if seen.send((id, name)).is_err() {
            break;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = connect().await?;
    match client
        .create_topic(TOPIC, TopicConfig::with_partitions(3))
        .await
    {
        Ok(_) => println!("topic {TOPIC} ready (3 partitions)"),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => println!("topic {TOPIC} exists: {e}"),
        Err(e) => return Err(e.into()),
    }
    let id = wharf_client::new_message_id();
    let group = format!("example-group-{}", &id[..8]);
    client
        .create_subscription(
            TOPIC,
            group.as_str(),
            SubscriptionConfig::Stream(StreamConfig {
                start: Some(Position::Latest),
                ..StreamConfig::default()
            }),
        )
        .await?;
    println!("group {group} created (from the latest offsets)");

    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut members = Vec::new();
    for name in ["member-a", "member-b"] {
        members.push(tokio::spawn(member(
            client.clone(),
            group.clone(),
            name,
            seen_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(seen_tx);

    // Publish in one batch call: keys spread the messages over the partitions.
    let messages: Vec<Message> = (0..MESSAGES)
        .map(|i| {
            Message::new(format!("event {i}"))
                .key(format!("device-{i}"))
                .id(format!("{group}-{i}"))
        })
        .collect();
    let published = client.publish(TOPIC, messages).await?;
    println!("published {} messages", published.len());

    // At-least-once: after a rebalance a message may come twice; count distinct ids.
    let mut distinct = BTreeSet::new();
    let mut per_member = std::collections::BTreeMap::<&str, usize>::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while distinct.len() < MESSAGES {
        match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
            Ok(Some((id, name))) => {
                distinct.insert(id);
                *per_member.entry(name).or_default() += 1;
            }
            Ok(None) => return Err("both members stopped".into()),
            Err(_) => {
                return Err(
                    format!("only {} of {MESSAGES} within {PATIENCE:?}", distinct.len()).into(),
                );
            }
        }
    }
    let _ = stop_tx.send(true);
    for m in members {
        m.await??;
    }
    println!("all {MESSAGES} consumed: {per_member:?}");
    let sub = client.get_subscription(TOPIC, group.as_str()).await?;
    for p in &sub.partitions {
        println!(
            "partition {}: committed {} lag {}",
            p.partition, p.committed, p.lag
        );
    }

    // Replay: back to the start of this run's messages, and read them again with one member.
    let offsets: Vec<(u32, u64)> = {
        let mut first = std::collections::BTreeMap::new();
        for r in &published {
            let o = first.entry(r.partition).or_insert(r.offset);
            *o = (*o).min(r.offset);
        }
        first.into_iter().collect()
    };
    client
        .reset_subscription(TOPIC, group.as_str(), ResetTo::Offsets(offsets))
        .await?;
    println!("group reset to the first offsets of this run: replaying");
    let mut replay = client
        .stream_consumer(
            TOPIC,
            group.as_str(),
            StreamConsumerOptions {
                auto_commit: true,
                ..StreamConsumerOptions::default()
            },
        )
        .await?;
    let mut replayed = BTreeSet::new();
    while replayed.len() < MESSAGES {
        let Ok(Some(record)) = tokio::time::timeout(PATIENCE, replay.next()).await else {
            return Err(format!("replayed only {} of {MESSAGES}", replayed.len()).into());
        };
        let record = record?;
        if let Some(id) = record.message_id() {
            replayed.insert(id.to_owned());
        }
    }
    println!(
        "replayed {} messages with auto-commit (at-most-once: fine for a replay)",
        replayed.len()
    );
    drop(replay);
    client.delete_subscription(TOPIC, group.as_str()).await?;
    println!("group {group} deleted");
    Ok(())
}
