//! A work queue with retries, a dead-letter topic and redrive, on the embedded engine.
//! Run: `cargo run -p wharf-broker --example queue_with_dlq -- [DATA_DIR]`
//! (default `./wharf-data/example`; run it twice to see that state survives a restart).

use std::time::Duration;

use wharf_broker::{
    EmbeddedConfig, EmbeddedEngine, Engine, Message, Position, ReadRequest, ReceiveRequest,
    SharedConfig, SubscriptionConfig, TopicConfig,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./wharf-data/example".into());
    let engine = EmbeddedEngine::open(EmbeddedConfig::new(&dir))?;

    engine
        .create_topic("emails", TopicConfig::default())
        .await?;
    let retries = SharedConfig {
        max_deliveries: 2,
        backoff_initial_ms: 100,
        backoff_max_ms: 100,
        backoff_jitter_pct: 0,
        ..SharedConfig::default()
    };
    engine
        .create_subscription("emails", "senders", SubscriptionConfig::Shared(retries))
        .await?;

    let published = engine
        .publish(
            "emails",
            vec![
                Message::new("welcome alice")
                    .with_key("alice")
                    .with_id("mail-1"),
                Message::new("welcome bob")
                    .with_key("bob")
                    .with_id("mail-2"),
                // Retried by a producer after a timeout: stored once.
                Message::new("welcome alice")
                    .with_key("alice")
                    .with_id("mail-1"),
            ],
        )
        .await?;
    for p in &published {
        println!(
            "published at partition {} offset {} (duplicate: {})",
            p.partition, p.offset, p.duplicate
        );
    }

    let receive = ReceiveRequest {
        member: Some("worker-1".into()),
        max: 10,
        lease: Some(Duration::from_secs(30)),
        wait: Duration::from_millis(500),
    };
    // Bob's mailbox is broken: his message fails every time and ends up dead-lettered.
    for round in 1..=3 {
        for d in engine.receive("emails", "senders", receive.clone()).await? {
            let text = String::from_utf8_lossy(&d.message.value).into_owned();
            if text.contains("bob") {
                println!(
                    "round {round}: '{text}' failed (delivery {}), nack",
                    d.delivery_count
                );
                engine.nack("emails", "senders", &[d.ack_id], None).await?;
            } else {
                println!("round {round}: '{text}' sent, ack");
                engine.ack("emails", "senders", &[d.ack_id]).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await; // let the backoff pass
    }

    let info = engine.describe_subscription("emails", "senders").await?;
    println!(
        "dead-lettered: {}, in flight: {}, delayed: {}",
        info.dead_lettered, info.in_flight, info.delayed
    );
    let dead = engine
        .dead_letters("emails", "senders", ReadRequest::new(0, Position::Earliest))
        .await?;
    for m in &dead.messages {
        let reason = m
            .headers
            .iter()
            .find(|(k, _)| k == "wharf-dlq-reason")
            .map(|(_, v)| v.as_str());
        println!(
            "dead letter: '{}' reason {:?}",
            String::from_utf8_lossy(&m.value),
            reason
        );
    }

    // Bob fixed his mailbox: put his message back into this subscription only.
    let moved = engine.redrive("emails", "senders", 10).await?;
    println!("redrove {moved}");
    for d in engine.receive("emails", "senders", receive).await? {
        println!(
            "after redrive: '{}' sent, ack",
            String::from_utf8_lossy(&d.message.value)
        );
        engine.ack("emails", "senders", &[d.ack_id]).await?;
    }
    engine.close()?;
    Ok(())
}
