//! Publish: routing (murmur2 key, round-robin, explicit), validation, result order and
//! offsets, round-trip of keys, values and headers, timestamps.

use std::collections::BTreeMap;

use bytes::Bytes;
use wharf_broker::murmur2::partition_for_key;
use wharf_broker::{Engine, Message, PublishOptions, TopicConfig};

use super::Harness;
use super::common::{expect_code, high_watermarks, publish_one, read_all, topic, values};

/// A keyed message goes to `partition_for_key(key, partitions)`, every time.
pub(crate) async fn key_routing(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 8).await;
    let mut expected_counts = vec![0u64; 8];
    for round in 0..2 {
        for k in 0..40 {
            let key = format!("key-{k}");
            let want = partition_for_key(key.as_bytes(), 8);
            let p = publish_one(
                &*e,
                "t",
                Message::new(format!("{round}")).with_key(key.clone()),
            )
            .await;
            assert_eq!(p.partition, want, "key {key:?} (round {round})");
            assert!(!p.duplicate);
            expected_counts[want as usize] += 1;
        }
    }
    assert!(
        expected_counts.iter().filter(|&&c| c > 0).count() > 1,
        "the keys should hash to several partitions: {expected_counts:?}"
    );
    assert_eq!(high_watermarks(&*e, "t").await, expected_counts);
    // A batch with keys routes the same way.
    let batch: Vec<Message> = (0..40)
        .map(|k| Message::new("b").with_key(format!("key-{k}")))
        .collect();
    let r = e.publish("t", batch).await.unwrap();
    for (k, p) in r.iter().enumerate() {
        assert_eq!(
            p.partition,
            partition_for_key(format!("key-{k}").as_bytes(), 8)
        );
    }
    // And the stored message is in that partition.
    let p = publish_one(&*e, "t", Message::new("find me").with_key("needle")).await;
    let stored = read_all(&*e, "t", partition_for_key(b"needle", 8)).await;
    let m = stored.iter().find(|m| m.offset == p.offset).unwrap();
    assert_eq!(&m.value[..], b"find me");
    assert_eq!(m.key.as_deref(), Some(&b"needle"[..]));
}

/// Messages without key or partition go round-robin: as even as possible over every
/// partition, whether published one by one or in a batch.
pub(crate) async fn round_robin(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 4).await;
    let mut counts = [0u64; 4];
    for i in 0..40 {
        let p = publish_one(&*e, "t", Message::new(format!("{i}"))).await;
        counts[p.partition as usize] += 1;
    }
    assert_eq!(counts, [10; 4], "one by one: {counts:?}");
    let r = e
        .publish("t", (0..8).map(|i| Message::new(format!("b{i}"))).collect())
        .await
        .unwrap();
    let mut batch_counts = [0u64; 4];
    for p in &r {
        batch_counts[p.partition as usize] += 1;
    }
    assert_eq!(batch_counts, [2; 4], "a batch: {batch_counts:?}");
    assert_eq!(high_watermarks(&*e, "t").await, [12; 4]);
}

/// An explicit partition wins over the key.
pub(crate) async fn explicit_partition(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 3).await;
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| partition_for_key(k.as_bytes(), 3) != 2)
        .unwrap();
    let p = publish_one(&*e, "t", Message::new("v").with_key(key).to_partition(2)).await;
    assert_eq!(p.partition, 2);
    for part in 0..3 {
        let p = publish_one(&*e, "t", Message::new("w").to_partition(part)).await;
        assert_eq!(p.partition, part);
    }
    assert_eq!(high_watermarks(&*e, "t").await, [1, 1, 2]);
    assert_eq!(values(&read_all(&*e, "t", 2).await), ["v", "w"]);
}

/// A partition the topic does not have is `partition_not_found`, and nothing of the batch is
/// stored.
pub(crate) async fn bad_partition(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 3).await;
    expect_code(
        e.publish("t", vec![Message::new("x").to_partition(3)])
            .await,
        "partition_not_found",
    );
    expect_code(
        e.publish(
            "t",
            vec![
                Message::new("ok").to_partition(0),
                Message::new("bad").to_partition(99),
            ],
        )
        .await,
        "partition_not_found",
    );
    assert_eq!(high_watermarks(&*e, "t").await, [0, 0, 0], "nothing stored");
    expect_code(
        e.publish("nope", vec![Message::new("x")]).await,
        "topic_not_found",
    );
}

/// A message over `max_message_bytes` (key + value + headers) is `message_too_large`, and
/// nothing of the batch is stored; one exactly at the limit is accepted.
pub(crate) async fn oversize(mut h: impl Harness) {
    let e = h.start().await;
    e.create_topic(
        "t",
        TopicConfig {
            max_message_bytes: 1024,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    let big = Bytes::from(vec![7u8; 1025]);
    expect_code(
        e.publish("t", vec![Message::new(big)]).await,
        "message_too_large",
    );
    // The key and the headers count too.
    expect_code(
        e.publish(
            "t",
            vec![Message::new(vec![1u8; 1000]).with_key(vec![2u8; 100])],
        )
        .await,
        "message_too_large",
    );
    expect_code(
        e.publish(
            "t",
            vec![Message::new(vec![1u8; 1000]).with_header("h", "x".repeat(100))],
        )
        .await,
        "message_too_large",
    );
    // One bad message fails the whole batch before anything is stored.
    expect_code(
        e.publish(
            "t",
            vec![Message::new("small"), Message::new(vec![0u8; 5000])],
        )
        .await,
        "message_too_large",
    );
    assert_eq!(high_watermarks(&*e, "t").await, [0], "nothing stored");
    let p = publish_one(&*e, "t", Message::new(vec![9u8; 1024])).await;
    assert_eq!(p.offset, 0);
    assert_eq!(read_all(&*e, "t", 0).await[0].value.len(), 1024);
}

/// An empty batch is `invalid_argument`.
pub(crate) async fn empty_batch(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    expect_code(e.publish("t", Vec::new()).await, "invalid_argument");
    assert_eq!(high_watermarks(&*e, "t").await, [0]);
}

/// Results come in input order; offsets are dense per partition and follow input order;
/// the partitions hold exactly what was published, in that order.
pub(crate) async fn results_in_input_order(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 3).await;
    // Some history first, so offsets do not start at 0 everywhere.
    publish_one(&*e, "t", Message::new("pre").to_partition(1)).await;
    let batch: Vec<Message> = (0..30u32)
        .map(|i| Message::new(format!("v{i}")).to_partition((i * 7 + i / 4) % 3))
        .collect();
    let wanted: Vec<u32> = batch.iter().map(|m| m.partition.unwrap()).collect();
    let r = e.publish("t", batch).await.unwrap();
    assert_eq!(r.len(), 30);
    let mut next: BTreeMap<u32, u64> = BTreeMap::from([(0, 0), (1, 1), (2, 0)]);
    for (i, p) in r.iter().enumerate() {
        assert_eq!(p.partition, wanted[i], "result {i} is message {i}'s");
        let n = next.get_mut(&p.partition).unwrap();
        assert_eq!(p.offset, *n, "dense offsets in input order (message {i})");
        *n += 1;
        assert!(!p.duplicate);
    }
    for part in 0..3u32 {
        let stored = read_all(&*e, "t", part).await;
        let mut expected: Vec<String> = if part == 1 {
            vec!["pre".into()]
        } else {
            Vec::new()
        };
        expected.extend(
            (0..30)
                .filter(|&i| wanted[i] == part)
                .map(|i| format!("v{i}")),
        );
        assert_eq!(values(&stored), expected, "partition {part}");
        for (k, m) in stored.iter().enumerate() {
            assert_eq!(m.offset, k as u64);
            assert_eq!(m.partition, part);
        }
    }
}

/// Binary keys and values, empty values and headers come back exactly as published, with
/// the partition, offset and timestamp the publish reported.
pub(crate) async fn headers_and_binary_round_trip(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let key: Vec<u8> = vec![0, 255, 1, 128, 0, 0, 10, 13];
    let headers = vec![
        (
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        ),
        (
            "content-type".to_owned(),
            "application/octet-stream".to_owned(),
        ),
        ("x-empty".to_owned(), String::new()),
        ("x-unicode".to_owned(), "ünïcødé ✓".to_owned()),
    ];
    let messages = vec![
        Message {
            key: Some(Bytes::from(key.clone())),
            value: Bytes::from(all_bytes.clone()),
            headers: headers.clone(),
            partition: Some(1),
        },
        Message::new(Bytes::new()).to_partition(1),
        Message::new("keyless, headerless").to_partition(1),
        Message::new("empty key")
            .with_key(Bytes::new())
            .to_partition(1),
    ];
    let r = e.publish("t", messages.clone()).await.unwrap();
    let stored = read_all(&*e, "t", 1).await;
    assert_eq!(stored.len(), 4);
    for ((m, p), s) in messages.iter().zip(&r).zip(&stored) {
        assert_eq!((s.partition, s.offset), (p.partition, p.offset));
        assert_eq!(s.timestamp, p.timestamp);
        assert_eq!(s.key, m.key, "key of offset {}", s.offset);
        assert_eq!(s.value, m.value, "value of offset {}", s.offset);
        let mut got = s.headers.clone();
        let mut want = m.headers.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "headers of offset {}", s.offset);
    }
}

/// Shared headers (the server's trace context) are stored with every message of the publish
/// after its own headers, except on a message that sets one of them itself or that they would
/// push over the topic's size limit; each such message is stored as given.
pub(crate) async fn shared_headers(mut h: impl Harness) {
    let e = h.start().await;
    e.create_topic(
        "t",
        TopicConfig {
            partitions: 2,
            max_message_bytes: 200,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let shared = vec![("traceparent".to_owned(), tp.to_owned())];
    let messages = vec![
        Message::new("plain").to_partition(0),
        Message::new("own")
            .with_header("traceparent", "00-mine")
            .to_partition(1),
        // 200 bytes: at the limit without the shared header, over it with it.
        Message::new(vec![b'x'; 200]).to_partition(0),
        Message::new("keyed")
            .with_key("k")
            .with_header("a", "1")
            .to_partition(1),
    ];
    let r = e
        .publish_with(
            "t",
            messages,
            PublishOptions {
                shared_headers: shared.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 4);
    let p0 = read_all(&*e, "t", 0).await;
    let p1 = read_all(&*e, "t", 1).await;
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(p0[0].headers, vec![pair("traceparent", tp)]);
    assert_eq!(p0[1].headers, Vec::new(), "no room for the shared header");
    assert_eq!(p0[1].value.len(), 200);
    assert_eq!(p1[0].headers, vec![pair("traceparent", "00-mine")]);
    assert_eq!(
        p1[1].headers,
        vec![pair("a", "1"), pair("traceparent", tp)],
        "own headers first"
    );
    // Without options nothing is added.
    publish_one(&*e, "t", Message::new("bare").to_partition(0)).await;
    assert_eq!(read_all(&*e, "t", 0).await[2].headers, Vec::new());
}

/// Timestamps are the broker's append time and never decrease within a partition, even when
/// the clock steps back.
pub(crate) async fn timestamps_non_decreasing(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    let mut published: Vec<wharf_broker::Published> = Vec::new();
    let mut latest_clock = i64::MIN;
    for step in [0, 1_000, 0, 5, -10_000, 3, 20_000, -1] {
        h.advance_clock(step);
        let before = h.now_ms();
        let r = e
            .publish(
                "t",
                vec![
                    Message::new("a").to_partition(0),
                    Message::new("b").to_partition(1),
                ],
            )
            .await
            .unwrap();
        latest_clock = latest_clock.max(h.now_ms());
        let previous = published.iter().map(|p| p.timestamp).max();
        for p in &r {
            assert!(
                p.timestamp <= latest_clock,
                "timestamp {} is later than the clock ever was ({latest_clock})",
                p.timestamp
            );
            if previous.is_none_or(|prev| before >= prev) {
                assert!(
                    p.timestamp >= before,
                    "timestamp {} is before the publish ({before})",
                    p.timestamp
                );
            }
        }
        published.extend(r);
    }
    for part in 0..2 {
        let stamps: Vec<i64> = published
            .iter()
            .filter(|p| p.partition == part)
            .map(|p| p.timestamp)
            .collect();
        assert!(
            stamps.windows(2).all(|w| w[0] <= w[1]),
            "partition {part}: {stamps:?}"
        );
        let stored: Vec<i64> = read_all(&*e, "t", part)
            .await
            .iter()
            .map(|m| m.timestamp)
            .collect();
        assert_eq!(stored, stamps, "stored timestamps are the published ones");
    }
    // Time moved forward overall: the last timestamp reflects it.
    let first = published[0].timestamp;
    let last = published.last().unwrap().timestamp;
    assert!(last >= first + 11_000, "{first} .. {last}");
}
