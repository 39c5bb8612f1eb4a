//! First-contact tests of shared subscriptions on the embedded engine: leases, acks, nacks
//! with backoff, lease expiry, dead letters with their headers, redrive, restart, and a stream
//! and a shared subscription side by side.

use std::sync::Arc;
use std::time::Duration;

use wharf_broker::{
    EmbeddedConfig, EmbeddedEngine, Engine, FetchRequest, Message, Position, ReadRequest,
    ReceiveRequest, SharedConfig, StreamConfig, SubscriptionConfig, TopicConfig,
};
use wharf_log::ManualClock;
use wharf_log::vfs::StdFs;

fn open(dir: &std::path::Path, clock: &ManualClock) -> EmbeddedEngine {
    EmbeddedEngine::open(EmbeddedConfig {
        data_dir: dir.to_path_buf(),
        vfs: StdFs::shared(),
        clock: Arc::new(clock.clone()),
    })
    .unwrap()
}

fn receive(max: usize) -> ReceiveRequest {
    ReceiveRequest {
        member: Some("w1".into()),
        max,
        lease: Some(Duration::from_secs(10)),
        wait: Duration::ZERO,
    }
}

fn config() -> SubscriptionConfig {
    SubscriptionConfig::Shared(SharedConfig {
        max_deliveries: 2,
        backoff_initial_ms: 1_000,
        backoff_max_ms: 1_000,
        backoff_jitter_pct: 0,
        ..SharedConfig::default()
    })
}

#[tokio::test]
async fn leases_acks_nacks_dead_letters_redrive_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let e = open(dir.path(), &clock);
    e.create_topic("jobs", TopicConfig::default())
        .await
        .unwrap();
    e.create_subscription("jobs", "workers", config())
        .await
        .unwrap();
    e.create_subscription(
        "jobs",
        "audit",
        SubscriptionConfig::Stream(StreamConfig::default()),
    )
    .await
    .unwrap();
    e.publish(
        "jobs",
        vec![Message::new("a"), Message::new("b"), Message::new("c")],
    )
    .await
    .unwrap();

    let d = e.receive("jobs", "workers", receive(10)).await.unwrap();
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|d| d.delivery_count == 1));
    assert!(
        e.receive("jobs", "workers", receive(10))
            .await
            .unwrap()
            .is_empty(),
        "all leased"
    );

    // ack a; nack b (backoff 1 s); let c's lease expire.
    let acked = e
        .ack("jobs", "workers", &[d[0].ack_id.clone()])
        .await
        .unwrap();
    assert_eq!(acked[0].error, None);
    let again = e
        .ack("jobs", "workers", &[d[0].ack_id.clone()])
        .await
        .unwrap();
    assert_eq!(
        again[0].error.as_deref(),
        Some("lease_expired"),
        "stale ack_id"
    );
    e.nack("jobs", "workers", &[d[1].ack_id.clone()], None)
        .await
        .unwrap();
    assert!(
        e.receive("jobs", "workers", receive(10))
            .await
            .unwrap()
            .is_empty(),
        "b backs off"
    );
    clock.advance(10_001);
    // c's lease expired (delivery 1 of 2): it backs off too; b is due.
    let d2 = e.receive("jobs", "workers", receive(10)).await.unwrap();
    assert_eq!(d2.len(), 1);
    assert_eq!(&d2[0].message.value[..], b"b");
    assert_eq!(d2[0].delivery_count, 2);
    clock.advance(1_000);
    let d3 = e.receive("jobs", "workers", receive(10)).await.unwrap();
    assert_eq!(&d3[0].message.value[..], b"c");
    assert_eq!(d3[0].delivery_count, 2);
    // b fails its last delivery: dead-lettered. c is terminated.
    e.nack("jobs", "workers", &[d2[0].ack_id.clone()], Some(0))
        .await
        .unwrap();
    e.terminate("jobs", "workers", &[d3[0].ack_id.clone()], "poison")
        .await
        .unwrap();
    let info = e.describe_subscription("jobs", "workers").await.unwrap();
    assert_eq!(info.dead_lettered, 2, "{info:?}");
    assert_eq!(
        info.partitions[0].committed, 3,
        "everything finished: {info:?}"
    );
    let dl = e
        .dead_letters("jobs", "workers", ReadRequest::new(0, Position::Earliest))
        .await
        .unwrap();
    assert_eq!(dl.messages.len(), 2);
    let h = |m: &wharf_broker::StoredMessage, k: &str| {
        m.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        h(&dl.messages[0], "wharf-dlq-reason").as_deref(),
        Some("nack")
    );
    assert_eq!(
        h(&dl.messages[0], "wharf-dlq-source-offset").as_deref(),
        Some("1")
    );
    assert_eq!(
        h(&dl.messages[0], "wharf-dlq-deliveries").as_deref(),
        Some("2")
    );
    assert_eq!(
        h(&dl.messages[1], "wharf-dlq-reason").as_deref(),
        Some("poison")
    );
    assert!(h(&dl.messages[1], "wharf-dlq-time").is_some());

    // The stream subscription saw everything, unaffected.
    let m = e.join("jobs", "audit", None).await.unwrap();
    let seen = e
        .fetch("jobs", "audit", &m.member_id, FetchRequest::default())
        .await
        .unwrap();
    assert_eq!(seen.len(), 3);

    // Redrive b back; restart before receiving it.
    assert_eq!(e.redrive("jobs", "workers", 1).await.unwrap(), 1);
    e.close().unwrap();
    drop(e);
    let e = open(dir.path(), &clock);
    let info = e.describe_subscription("jobs", "workers").await.unwrap();
    assert_eq!(info.dead_lettered, 1, "{info:?}");
    let d4 = e.receive("jobs", "workers", receive(10)).await.unwrap();
    assert_eq!(d4.len(), 1, "{d4:?}");
    assert_eq!(&d4[0].message.value[..], b"b");
    assert_eq!(d4[0].message.offset, 1, "presented as the original message");
    assert_eq!(d4[0].delivery_count, 1, "a redriven message starts over");
    e.ack("jobs", "workers", &[d4[0].ack_id.clone()])
        .await
        .unwrap();
    assert!(
        e.receive("jobs", "workers", receive(10))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn leased_messages_come_back_after_a_restart_with_their_counts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let e = open(dir.path(), &clock);
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("t", "s", config()).await.unwrap();
    e.publish("t", vec![Message::new("x"), Message::new("y")])
        .await
        .unwrap();
    let d = e.receive("t", "s", receive(10)).await.unwrap();
    e.ack("t", "s", &[d[0].ack_id.clone()]).await.unwrap();
    drop(e);
    let e = open(dir.path(), &clock);
    let d = e.receive("t", "s", receive(10)).await.unwrap();
    assert_eq!(d.len(), 1, "the acked one stays acked");
    assert_eq!(&d[0].message.value[..], b"y");
    assert_eq!(d[0].delivery_count, 2, "the count survived");
    // A long-poll receive is woken by a publish.
    let e2 = e.clone();
    let waiter = tokio::spawn(async move {
        e2.receive(
            "t",
            "s",
            ReceiveRequest {
                wait: Duration::from_secs(30),
                ..receive(1)
            },
        )
        .await
    });
    tokio::task::yield_now().await;
    e.publish("t", vec![Message::new("z")]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&got[0].message.value[..], b"z");
    // Delays: a message with wharf-deliver-at in the future waits for it.
    let at = wharf_broker::time::format_rfc3339(clock_now(&clock) + 60_000);
    e.publish(
        "t",
        vec![Message::new("later").with_header("wharf-deliver-at", at)],
    )
    .await
    .unwrap();
    assert!(e.receive("t", "s", receive(10)).await.unwrap().is_empty());
    clock.advance(60_000);
    let d = e.receive("t", "s", receive(10)).await.unwrap();
    assert!(d.iter().any(|d| &d.message.value[..] == b"later"), "{d:?}");
    assert_eq!(
        e.publish(
            "t",
            vec![Message::new("bad").with_header("wharf-deliver-at", "tomorrow")]
        )
        .await
        .unwrap_err()
        .code(),
        "invalid_argument"
    );
}

fn clock_now(c: &ManualClock) -> i64 {
    wharf_log::Clock::now_ms(c)
}

/// More acknowledged messages than the window holds, then a restart: the finished prefix is
/// skipped, not mistaken for an empty queue.
#[tokio::test]
async fn a_long_acknowledged_prefix_does_not_hide_new_messages_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let e = open(dir.path(), &clock);
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("t", "s", config()).await.unwrap();
    let batch: Vec<Message> = (0..5_000).map(|i| Message::new(format!("m{i}"))).collect();
    e.publish("t", batch).await.unwrap();
    loop {
        let d = e.receive("t", "s", receive(1000)).await.unwrap();
        if d.is_empty() {
            break;
        }
        let ids: Vec<String> = d.into_iter().map(|d| d.ack_id).collect();
        e.ack("t", "s", &ids).await.unwrap();
    }
    e.close().unwrap();
    drop(e);
    let e = open(dir.path(), &clock);
    e.publish("t", vec![Message::new("new")]).await.unwrap();
    let d = e.receive("t", "s", receive(10)).await.unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(&d[0].message.value[..], b"new");
}

/// More far-future delayed messages than the window holds, at the head of a partition, do not
/// block the messages behind them; they are delivered when due — also after a restart.
#[tokio::test]
async fn a_full_window_of_delayed_messages_does_not_block_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let e = open(dir.path(), &clock);
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("t", "s", config()).await.unwrap();
    let later = wharf_broker::time::format_rfc3339(clock_now(&clock) + 3_600_000);
    let delayed: Vec<Message> = (0..3_000)
        .map(|i| Message::new(format!("later-{i}")).with_header("wharf-deliver-at", later.clone()))
        .collect();
    e.publish("t", delayed).await.unwrap();
    e.publish("t", vec![Message::new("now-1"), Message::new("now-2")])
        .await
        .unwrap();
    let d = e.receive("t", "s", receive(10)).await.unwrap();
    let values: Vec<&[u8]> = d.iter().map(|d| &d.message.value[..]).collect();
    assert_eq!(
        values,
        vec![&b"now-1"[..], b"now-2"],
        "the undelayed messages come first"
    );
    let ids: Vec<String> = d.into_iter().map(|d| d.ack_id).collect();
    e.ack("t", "s", &ids).await.unwrap();
    let info = e.describe_subscription("t", "s").await.unwrap();
    assert_eq!(info.delayed, 3_000, "{info:?}");
    assert_eq!(
        info.partitions[0].committed, 0,
        "the delayed head is unfinished"
    );
    e.close().unwrap();
    drop(e);
    let e = open(dir.path(), &clock);
    assert!(
        e.receive("t", "s", receive(10)).await.unwrap().is_empty(),
        "still delayed after a restart"
    );
    clock.advance(3_600_000);
    let mut got = 0;
    loop {
        let d = e.receive("t", "s", receive(1000)).await.unwrap();
        if d.is_empty() {
            break;
        }
        assert!(d.iter().all(|d| d.message.value.starts_with(b"later-")));
        got += d.len();
        let ids: Vec<String> = d.into_iter().map(|d| d.ack_id).collect();
        e.ack("t", "s", &ids).await.unwrap();
    }
    assert_eq!(got, 3_000);
    let info = e.describe_subscription("t", "s").await.unwrap();
    assert_eq!(info.partitions[0].committed, 3_002, "{info:?}");
    assert_eq!(info.partitions[0].lag, 0);
}
