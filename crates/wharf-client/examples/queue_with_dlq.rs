//! A work queue with retries, a dead-letter topic and redrive, over gRPC: a poison message
//! is nacked until it is dead-lettered, a malformed one is terminated, the rest are acked;
//! then the dead letters are listed, redriven and processed.
//!
//! Run against `wharf serve` (default `http://127.0.0.1:7400`; set `WHARF_SERVER` for another
//! address and `WHARF_TOKEN` if the server has tokens):
//!
//! ```sh
//! cargo run -p wharf-client --example queue_with_dlq
//! ```

use std::time::Duration;

use futures_util::StreamExt;
use wharf_client::{
    Client, DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, ErrorKind, Message, QueueConsumer,
    QueueConsumerOptions, SharedConfig, TopicConfig,
};

const QUEUE: &str = "example.emails";
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

async fn next_delivery(
    consumer: &mut QueueConsumer,
) -> Result<wharf_client::Delivery, Box<dyn std::error::Error>> {
    match tokio::time::timeout(PATIENCE, consumer.next()).await {
        Ok(Some(d)) => Ok(d?),
        Ok(None) => Err("the process stream ended".into()),
        Err(_) => Err(format!("no delivery within {PATIENCE:?}").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = connect().await?;

    // A fresh queue: a topic plus a shared subscription of the same name. Two deliveries at
    // most, then the dead-letter topic; redeliveries right away.
    match client.delete_topic(QUEUE).await {
        Ok(()) => println!("deleted the {QUEUE} left by an earlier run"),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let retries = SharedConfig {
        max_deliveries: Some(2),
        backoff_initial: Some(Duration::ZERO),
        backoff_max: Some(Duration::ZERO),
        ..SharedConfig::default()
    };
    client
        .create_queue(QUEUE, TopicConfig::default(), retries)
        .await?;
    println!("queue {QUEUE} created (max 2 deliveries)");

    let sent = client
        .send_to_queue(
            QUEUE,
            [
                Message::new("welcome alice").id("mail-1"),
                Message::new("welcome bob").id("mail-2"),
                Message::new("POISON: crashes the mailer").id("mail-3"),
                Message::new("").id("mail-4"),
                Message::new("welcome carol").id("mail-5"),
            ],
        )
        .await?;
    println!("sent {} messages", sent.len());

    let mut consumer = client
        .queue_consumer(
            QUEUE,
            QUEUE,
            QueueConsumerOptions {
                max_in_flight: Some(4),
                lease: Some(Duration::from_secs(30)),
                member: Some("mailer-1".into()),
            },
        )
        .await?;
    // 3 acked, 1 terminated, 1 nacked twice (then dead-lettered by the server).
    let mut finished = 0;
    while finished < 5 {
        let d = next_delivery(&mut consumer).await?;
        let text = d.record().value_str().unwrap_or_default().to_owned();
        let id = d.record().message_id().unwrap_or("?").to_owned();
        if text.is_empty() {
            d.terminate("empty mail body").await?;
            println!("{id}: terminated (malformed)");
            finished += 1;
        } else if text.starts_with("POISON") {
            d.nack(None).await?;
            println!("{id}: failed on delivery {}, nacked", d.delivery_count());
            if d.delivery_count() >= 2 {
                finished += 1;
            }
        } else {
            d.extend(Duration::from_secs(30)).await?;
            d.ack().await?;
            println!("{id}: sent {text:?}, acked");
            finished += 1;
        }
    }

    let dead = client.dead_letters(QUEUE, QUEUE, None, None).await?;
    println!("{} dead letters:", dead.records.len());
    for r in &dead.records {
        println!(
            "  {:?}: reason {:?} after {} deliveries",
            r.value_str().unwrap_or("<binary>"),
            r.header(DLQ_REASON_HEADER).unwrap_or("?"),
            r.header(DLQ_DELIVERIES_HEADER).unwrap_or("?")
        );
    }

    // The mailer is fixed: redrive and process them for good.
    let redriven = client.redrive(QUEUE, QUEUE, None).await?;
    println!("redrove {redriven} messages");
    for _ in 0..redriven {
        let d = next_delivery(&mut consumer).await?;
        println!(
            "{}: {:?} processed after redrive, acked",
            d.record().message_id().unwrap_or("?"),
            d.record().value_str().unwrap_or("<binary>")
        );
        d.ack().await?;
    }
    drop(consumer);

    let sub = client.get_subscription(QUEUE, QUEUE).await?;
    println!(
        "in flight {}, delayed {}, dead-lettered {}",
        sub.in_flight, sub.delayed, sub.dead_lettered
    );
    client.delete_topic(QUEUE).await?;
    println!("queue {QUEUE} deleted");
    Ok(())
}
