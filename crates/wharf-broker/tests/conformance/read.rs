//! Read: positions (earliest, latest, offset, timestamp), range errors, limits, long-poll,
//! and reads from before the retention point.

use std::time::{Duration, Instant};

use bytes::Bytes;
use wharf_broker::{Engine, Message, Position, ReadRequest, ReadResult, TopicConfig};

use super::Harness;
use super::common::{
    SAFETY, expect_code, fetch_now, fill, high_watermarks, positions, publish_one, read_all,
    stream_from, topic, values,
};

async fn read_at<E: Engine>(e: &E, partition: u32, from: Position) -> ReadResult {
    e.read("t", ReadRequest::new(partition, from))
        .await
        .unwrap()
}

fn offsets(r: &ReadResult) -> Vec<u64> {
    r.messages.iter().map(|m| m.offset).collect()
}

/// Earliest, latest, an offset and a timestamp start where they say.
pub(crate) async fn positions_earliest_latest_offset_timestamp(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    let t0 = h.now_ms();
    fill(&*e, "t", 0, "a", 3).await;
    h.advance_clock(1_000);
    let t1 = h.now_ms();
    fill(&*e, "t", 0, "b", 3).await;
    h.advance_clock(1_000);
    let t2 = h.now_ms();
    fill(&*e, "t", 0, "c", 3).await;

    let r = read_at(&*e, 0, Position::Earliest).await;
    assert_eq!(offsets(&r), (0..9).collect::<Vec<_>>());
    assert_eq!((r.start_offset, r.high_watermark, r.next_offset), (0, 9, 9));
    assert_eq!(r.skipped_to, None);
    assert!(r.messages.iter().all(|m| m.partition == 0));

    let r = read_at(&*e, 0, Position::Latest).await;
    assert!(r.messages.is_empty(), "latest: only new messages");
    assert_eq!((r.next_offset, r.high_watermark), (9, 9));

    let r = read_at(&*e, 0, Position::Offset(4)).await;
    assert_eq!(offsets(&r), (4..9).collect::<Vec<_>>());
    assert_eq!(values(&r.messages[..1]), ["b-1"]);
    let r = read_at(&*e, 0, Position::Offset(9)).await;
    assert!(
        r.messages.is_empty(),
        "the high watermark itself is a valid, empty start"
    );
    assert_eq!(r.next_offset, 9);

    for (at, first) in [
        (t0 - 60_000, Some(0)),
        (t0, Some(0)),
        (t0 + 1, Some(3)),
        (t1, Some(3)),
        (t1 + 999, Some(6)),
        (t2, Some(6)),
        (t2 + 1, None),
    ] {
        let r = read_at(&*e, 0, Position::Timestamp(at)).await;
        match first {
            Some(o) => {
                assert_eq!(
                    offsets(&r),
                    (o..9).collect::<Vec<_>>(),
                    "from timestamp {}",
                    at - t0
                );
                assert!(r.messages.iter().all(|m| m.timestamp >= at));
            }
            None => {
                assert!(r.messages.is_empty(), "nothing at or after {}", at - t0);
                assert_eq!(
                    r.next_offset, 9,
                    "a timestamp past the end reads from the end"
                );
            }
        }
    }
    // The other partition is empty whatever the position.
    for from in [
        Position::Earliest,
        Position::Latest,
        Position::Offset(0),
        Position::Timestamp(t0),
    ] {
        let r = read_at(&*e, 1, from).await;
        assert!(r.messages.is_empty(), "{from:?}");
        assert_eq!((r.next_offset, r.high_watermark), (0, 0));
    }
}

/// An offset past the high watermark is `offset_out_of_range`; a partition the topic lacks
/// is `partition_not_found`.
pub(crate) async fn out_of_range(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    fill(&*e, "t", 0, "m", 3).await;
    expect_code(
        e.read("t", ReadRequest::new(0, Position::Offset(4))).await,
        "offset_out_of_range",
    );
    expect_code(
        e.read("t", ReadRequest::new(0, Position::Offset(u64::MAX)))
            .await,
        "offset_out_of_range",
    );
    expect_code(
        e.read("t", ReadRequest::new(1, Position::Offset(1))).await,
        "offset_out_of_range",
    );
    expect_code(
        e.read("t", ReadRequest::new(2, Position::Earliest)).await,
        "partition_not_found",
    );
    expect_code(
        e.read("nope", ReadRequest::new(0, Position::Earliest))
            .await,
        "topic_not_found",
    );
    // A failed read does not disturb later ones.
    assert_eq!(read_at(&*e, 0, Position::Offset(3)).await.next_offset, 3);
}

/// `max_messages` caps a read (0 still returns one); successive reads continue without gaps
/// or repeats, whether the messages were published one by one or in one batch.
pub(crate) async fn max_messages(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    fill(&*e, "t", 0, "one", 10).await;
    e.publish(
        "t",
        (0..10)
            .map(|i| Message::new(format!("batch-{i}")).to_partition(1))
            .collect(),
    )
    .await
    .unwrap();
    for part in 0..2 {
        let mut from = 0;
        let mut seen = Vec::new();
        while from < 10 {
            let r = e
                .read(
                    "t",
                    ReadRequest {
                        max_messages: 3,
                        ..ReadRequest::new(part, Position::Offset(from))
                    },
                )
                .await
                .unwrap();
            assert!(
                !r.messages.is_empty() && r.messages.len() <= 3,
                "partition {part} from {from}: {} messages",
                r.messages.len()
            );
            assert_eq!(r.messages[0].offset, from);
            seen.extend(offsets(&r));
            from = r.next_offset;
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>(), "partition {part}");
        let r = e
            .read(
                "t",
                ReadRequest {
                    max_messages: 0,
                    ..ReadRequest::new(part, Position::Earliest)
                },
            )
            .await
            .unwrap();
        assert_eq!(offsets(&r), [0], "max_messages 0 still returns one message");
    }
}

/// `max_bytes` caps a read at whole messages (at least one, even if it alone is larger),
/// whether the messages were published one by one or in one batch.
pub(crate) async fn max_bytes(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    let value = Bytes::from(vec![b'v'; 100]);
    for _ in 0..10 {
        publish_one(&*e, "t", Message::new(value.clone()).to_partition(0)).await;
    }
    e.publish(
        "t",
        (0..10)
            .map(|_| Message::new(value.clone()).to_partition(1))
            .collect(),
    )
    .await
    .unwrap();
    for part in 0..2 {
        for max_bytes in [1usize, 99, 250, 550] {
            let r = e
                .read(
                    "t",
                    ReadRequest {
                        max_bytes,
                        ..ReadRequest::new(part, Position::Earliest)
                    },
                )
                .await
                .unwrap();
            let n = r.messages.len();
            let bytes: usize = r.messages.iter().map(|m| m.value.len()).sum();
            assert!(
                n >= 1,
                "partition {part}, max_bytes {max_bytes}: at least one"
            );
            assert!(
                n == 1 || bytes <= max_bytes,
                "partition {part}, max_bytes {max_bytes}: {n} messages of {bytes} bytes"
            );
            assert_eq!(r.next_offset, n as u64);
        }
        // A generous limit reads everything.
        let r = read_at(&*e, part, Position::Earliest).await;
        assert_eq!(r.messages.len(), 10);
    }
}

/// A read waiting on an empty partition returns with the message as soon as another task
/// publishes it — long before its wait — and is not woken by other partitions' messages.
pub(crate) async fn long_poll_woken_by_publish(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    let wait = Duration::from_secs(30);
    let reader = {
        let e = e.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = e
                .read(
                    "t",
                    ReadRequest {
                        wait,
                        ..ReadRequest::new(1, Position::Offset(0))
                    },
                )
                .await;
            (r, started.elapsed())
        })
    };
    // Another partition first: must not satisfy (or break) the read of partition 1.
    publish_one(&*e, "t", Message::new("elsewhere").to_partition(0)).await;
    publish_one(&*e, "t", Message::new("hello").to_partition(1)).await;
    let (r, elapsed) = tokio::time::timeout(SAFETY, reader)
        .await
        .expect("the waiting read was not woken by the publish")
        .unwrap();
    let r = r.unwrap();
    assert_eq!(values(&r.messages), ["hello"]);
    assert_eq!(positions(&r.messages), [(1, 0)]);
    assert_eq!(r.next_offset, 1);
    assert!(elapsed < wait / 2, "returned after {elapsed:?}");
}

/// A read with a short wait and no publish returns empty once the wait is over.
pub(crate) async fn short_wait_returns_empty(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    fill(&*e, "t", 0, "m", 2).await;
    let wait = Duration::from_millis(150);
    for from in [Position::Latest, Position::Offset(2)] {
        let started = Instant::now();
        let r = tokio::time::timeout(
            SAFETY,
            e.read(
                "t",
                ReadRequest {
                    wait,
                    ..ReadRequest::new(0, from)
                },
            ),
        )
        .await
        .expect("the wait was not honoured")
        .unwrap();
        let elapsed = started.elapsed();
        assert!(r.messages.is_empty());
        assert_eq!((r.next_offset, r.high_watermark), (2, 2));
        assert!(
            elapsed >= wait - Duration::from_millis(10),
            "returned early, after {elapsed:?}"
        );
    }
    // With messages available, a waiting read does not wait.
    let started = Instant::now();
    let r = e
        .read(
            "t",
            ReadRequest {
                wait: Duration::from_secs(30),
                ..ReadRequest::new(0, Position::Earliest)
            },
        )
        .await
        .unwrap();
    assert_eq!(r.messages.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// After retention deleted the oldest segments, a read from offset 0 starts at the first
/// offset still held and says so; stream subscriptions behind it report it and continue
/// from there.
pub(crate) async fn retention_skips_to_start(mut h: impl Harness) {
    let e = h.start().await;
    e.create_topic(
        "t",
        TopicConfig {
            retention_bytes: Some(70_000),
            segment_bytes: 65_536,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    e.create_subscription("t", "behind", stream_from(Position::Earliest))
        .await
        .unwrap();
    let value = Bytes::from(vec![b'r'; 4_000]);
    for batch in 0..10 {
        let messages = (0..4)
            .map(|i| {
                Message::new(value.clone())
                    .with_header("n", format!("{}", batch * 4 + i))
                    .to_partition(0)
            })
            .collect();
        e.publish("t", messages).await.unwrap();
    }
    assert_eq!(high_watermarks(&*e, "t").await, [40]);
    h.enforce_retention().await;

    let info = e.describe_topic("t").await.unwrap();
    let start = info.partitions[0].start_offset;
    assert!(start > 0, "retention removed something: {info:?}");
    assert!(start < 40, "retention keeps the newest: {info:?}");
    assert_eq!(info.partitions[0].high_watermark, 40);

    let r = read_at(&*e, 0, Position::Offset(0)).await;
    assert_eq!(r.skipped_to, Some(start));
    assert_eq!(r.start_offset, start);
    assert_eq!(r.messages[0].offset, start);
    let r = read_at(&*e, 0, Position::Earliest).await;
    assert_eq!(r.skipped_to, None, "earliest is not a skip");
    assert_eq!(r.messages[0].offset, start);
    let r = read_at(&*e, 0, Position::Offset(start)).await;
    assert_eq!(r.skipped_to, None);
    assert_eq!(r.messages[0].offset, start);
    let all = read_all(&*e, "t", 0).await;
    assert_eq!(
        all.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (start..40).collect::<Vec<_>>()
    );

    let sub = e.describe_subscription("t", "behind").await.unwrap();
    let p = sub.partitions[0];
    assert!(p.behind_retention, "{sub:?}");
    assert_eq!(p.lag, 40 - start, "lag counts what is still held: {sub:?}");
    let m = e.join("t", "behind", None).await.unwrap();
    let got = e
        .fetch("t", "behind", &m.member_id, fetch_now())
        .await
        .unwrap();
    assert_eq!(
        got[0].offset, start,
        "a member behind retention starts at the start"
    );
}

/// Age retention: once the clock passes `retention_ms` beyond the newest message of a
/// segment, that segment goes (the active one is rolled first when it is old enough), and
/// newer messages stay.
pub(crate) async fn age_retention(mut h: impl Harness) {
    let e = h.start().await;
    e.create_topic(
        "t",
        TopicConfig {
            retention_ms: Some(60_000),
            segment_bytes: 65_536,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    let value = Bytes::from(vec![b'a'; 4_000]);
    for _ in 0..40 {
        e.publish("t", vec![Message::new(value.clone())])
            .await
            .unwrap();
    }
    h.enforce_retention().await;
    assert_eq!(
        e.describe_topic("t").await.unwrap().partitions[0].start_offset,
        0,
        "nothing is old yet"
    );
    h.advance_clock(120_000);
    e.publish("t", vec![Message::new("fresh")]).await.unwrap();
    h.enforce_retention().await;
    let info = e.describe_topic("t").await.unwrap();
    let start = info.partitions[0].start_offset;
    assert!(start > 0, "old segments were removed: {info:?}");
    assert_eq!(info.partitions[0].high_watermark, 41);
    let last = read_at(&*e, 0, Position::Offset(40)).await;
    assert_eq!(
        &last.messages[0].value[..],
        b"fresh",
        "the fresh message stays"
    );
}
