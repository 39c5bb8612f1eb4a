//! First-contact tests of the embedded engine: topics, publish, read, dedup, a stream group.

use std::time::Duration;

use wharf_broker::{
    BrokerError, Committed, EmbeddedConfig, EmbeddedEngine, Engine, FetchRequest, Message,
    Position, ReadRequest, StreamConfig, SubscriptionConfig, TopicConfig,
};

fn engine(dir: &std::path::Path) -> EmbeddedEngine {
    EmbeddedEngine::open(EmbeddedConfig::new(dir)).unwrap()
}

#[tokio::test]
async fn publish_read_dedup_and_a_stream_group_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let cfg = TopicConfig {
        partitions: 3,
        ..TopicConfig::default()
    };
    e.create_topic("orders", cfg.clone()).await.unwrap();
    assert_eq!(
        e.create_topic("orders", cfg)
            .await
            .unwrap()
            .partitions
            .len(),
        3,
        "idempotent"
    );
    assert_eq!(
        e.create_topic("orders", TopicConfig::default())
            .await
            .unwrap_err()
            .code(),
        "topic_exists"
    );
    let published = e
        .publish(
            "orders",
            vec![
                Message::new("a").with_key("k1").with_id("id-1"),
                Message::new("b").with_key("k1"),
                Message::new("c").to_partition(2),
                Message::new("a again").with_key("k1").with_id("id-1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        published[0].partition, published[1].partition,
        "same key, same partition"
    );
    assert_eq!(published[2].partition, 2);
    assert!(published[3].duplicate);
    assert_eq!(
        (published[3].partition, published[3].offset),
        (published[0].partition, published[0].offset)
    );

    e.create_subscription(
        "orders",
        "billing",
        SubscriptionConfig::Stream(StreamConfig::default()),
    )
    .await
    .unwrap();
    let m = e.join("orders", "billing", None).await.unwrap();
    assert_eq!(m.partitions, vec![0, 1, 2]);
    let got = e
        .fetch("orders", "billing", &m.member_id, FetchRequest::default())
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let commits: Vec<Committed> = got
        .iter()
        .map(|m| Committed {
            partition: m.partition,
            offset: m.offset + 1,
        })
        .collect();
    e.commit("orders", "billing", &m.member_id, commits)
        .await
        .unwrap();
    e.close().unwrap();
    drop(e);

    let e = engine(dir.path());
    // The dedup index came back from the log.
    let again = e
        .publish("orders", vec![Message::new("x").with_id("id-1")])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    let info = e.describe_subscription("orders", "billing").await.unwrap();
    assert!(info.partitions.iter().all(|p| p.lag == 0), "{info:?}");
    let m = e.join("orders", "billing", None).await.unwrap();
    let got = e
        .fetch(
            "orders",
            "billing",
            &m.member_id,
            FetchRequest {
                wait: Duration::from_millis(10),
                ..FetchRequest::default()
            },
        )
        .await
        .unwrap();
    assert!(got.is_empty(), "resumed after the commits: {got:?}");
    let r = e
        .read("orders", ReadRequest::new(2, Position::Earliest))
        .await
        .unwrap();
    assert!(r.messages.iter().any(|m| &m.value[..] == b"c"));
    assert_eq!(r.messages.len() as u64, r.high_watermark);
    assert!(matches!(
        e.read("nope", ReadRequest::new(0, Position::Earliest))
            .await,
        Err(BrokerError::TopicNotFound(_))
    ));
}

/// A publish whose future is dropped while it waits for its fsync (a client that went away)
/// must not leave its message id reserved: the next publish with that id completes.
#[tokio::test]
async fn a_cancelled_publish_does_not_jam_its_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    for i in 0..20 {
        let id = format!("id-{i}");
        let _ = tokio::time::timeout(
            Duration::ZERO,
            e.publish("t", vec![Message::new("x").with_id(&id)]),
        )
        .await;
        let again = tokio::time::timeout(
            Duration::from_secs(30),
            e.publish("t", vec![Message::new("x").with_id(&id)]),
        )
        .await
        .expect("a publish of a cancelled publish's id hung");
        again.unwrap();
    }
}

/// `wharf.dlq.a.b.c` is the dead-letter topic of both (a, b.c) and (a.b, c): the second
/// subscription is refused instead of sharing (and later deleting) the first one's.
#[tokio::test]
async fn dead_letter_topic_names_cannot_collide() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    e.create_topic("a", TopicConfig::default()).await.unwrap();
    e.create_topic("a.b", TopicConfig::default()).await.unwrap();
    let shared = || SubscriptionConfig::Shared(wharf_broker::SharedConfig::default());
    e.create_subscription("a", "b.c", shared()).await.unwrap();
    let err = e
        .create_subscription("a.b", "c", shared())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_argument", "{err}");
    e.close().unwrap();
    drop(e);
    engine(dir.path());
}

/// A publish whose caller goes away (a dropped connection cancels the request's future) must
/// still record its message ids once its appends are submitted: the caller's retry is then a
/// duplicate, never a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_publish_still_dedups_its_retry() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    for round in 0..20 {
        let id = format!("m-{round}");
        let batch = vec![Message::new(format!("v{round}")).with_id(id.clone())];
        {
            // Poll once (the append is submitted and waits for its fsync), then drop it.
            let mut first = std::pin::pin!(e.publish("t", batch.clone()));
            let _ = futures_poll_once(first.as_mut()).await;
        }
        let retry = e.publish("t", batch).await.unwrap();
        let r = e
            .read("t", ReadRequest::new(0, Position::Earliest))
            .await
            .unwrap();
        let copies = r
            .messages
            .iter()
            .filter(|m| {
                m.headers
                    .iter()
                    .any(|(k, v)| k == "wharf-message-id" && *v == id)
            })
            .count();
        assert_eq!(
            copies, 1,
            "round {round}: retry {retry:?} stored a second copy"
        );
    }
}

/// Polls a future once.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
    let mut f = f;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
