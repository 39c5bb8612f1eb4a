//! Dedup: a publish whose `wharf-message-id` was published within the topic's window is not
//! stored again and answers the original's partition and offset.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::Barrier;
use wharf_broker::{Engine, Message, Published, TopicConfig};

use super::Harness;
use super::common::{SAFETY, high_watermarks, publish_one, read_all, topic, values};

fn window(partitions: u32, dedup_window_ms: u64) -> TopicConfig {
    TopicConfig {
        partitions,
        dedup_window_ms,
        ..TopicConfig::default()
    }
}

#[track_caller]
fn assert_duplicate_of(dup: &Published, original: &Published) {
    assert!(dup.duplicate, "expected a duplicate: {dup:?}");
    assert!(!original.duplicate, "the original is not a duplicate");
    assert_eq!(
        (dup.partition, dup.offset),
        (original.partition, original.offset),
        "a duplicate answers the original's partition and offset"
    );
}

/// The same id twice: the second is a duplicate of the first, nothing more is stored, and
/// other ids are unaffected.
pub(crate) async fn duplicate_returns_original(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 3).await;
    let first = publish_one(&*e, "t", Message::new("original").with_id("m-1")).await;
    let hw = high_watermarks(&*e, "t").await;
    // Different value, key and partition: the id alone decides.
    let second = publish_one(
        &*e,
        "t",
        Message::new("retry")
            .with_key("other-key")
            .with_id("m-1")
            .to_partition((first.partition + 1) % 3),
    )
    .await;
    assert_duplicate_of(&second, &first);
    assert_eq!(high_watermarks(&*e, "t").await, hw, "nothing stored");
    let stored = read_all(&*e, "t", first.partition).await;
    assert_eq!(values(&stored), ["original"]);
    // Another id is stored; a third try of the first is still a duplicate.
    let other = publish_one(&*e, "t", Message::new("other").with_id("m-2")).await;
    assert!(!other.duplicate);
    let third = publish_one(&*e, "t", Message::new("again").with_id("m-1")).await;
    assert_duplicate_of(&third, &first);
    let total: u64 = high_watermarks(&*e, "t").await.iter().sum();
    assert_eq!(total, 2);
}

/// The same id twice in one batch: the later one is a duplicate of the earlier one.
pub(crate) async fn duplicate_within_batch(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    let r = e
        .publish(
            "t",
            vec![
                Message::new("x1").with_id("x"),
                Message::new("y").with_id("y"),
                Message::new("x2").with_id("x"),
                Message::new("plain"),
                Message::new("x3").with_id("x"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 5);
    assert!(!r[0].duplicate && !r[1].duplicate && !r[3].duplicate);
    assert_duplicate_of(&r[2], &r[0]);
    assert_duplicate_of(&r[4], &r[0]);
    assert_eq!(
        values(&read_all(&*e, "t", 0).await),
        ["x1", "y", "plain"],
        "only the first of each id is stored"
    );
    let offsets: BTreeSet<u64> = [r[0].offset, r[1].offset, r[3].offset].into();
    assert_eq!(offsets, BTreeSet::from([0, 1, 2]));
}

/// Dedup holds across a restart.
pub(crate) async fn duplicate_after_restart(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    let first = publish_one(&*e, "t", Message::new("a").with_id("id-a")).await;
    let second = publish_one(&*e, "t", Message::new("b").with_id("id-b")).await;
    drop(e);
    let e = h.restart().await;
    h.advance_clock(1_000);
    let again = e
        .publish(
            "t",
            vec![
                Message::new("a'").with_id("id-a"),
                Message::new("b'").with_id("id-b"),
                Message::new("c").with_id("id-c"),
            ],
        )
        .await
        .unwrap();
    assert_duplicate_of(&again[0], &first);
    assert_duplicate_of(&again[1], &second);
    assert!(!again[2].duplicate);
    let total: u64 = high_watermarks(&*e, "t").await.iter().sum();
    assert_eq!(total, 3);
}

/// Once the window has passed, the same id is stored again (and then deduplicated against
/// the new copy); within the window it is not.
pub(crate) async fn window_expiry(mut h: impl Harness) {
    let e = h.start().await;
    e.create_topic("t", window(1, 10_000)).await.unwrap();
    let first = publish_one(&*e, "t", Message::new("1").with_id("m")).await;
    h.advance_clock(9_000);
    let inside = publish_one(&*e, "t", Message::new("2").with_id("m")).await;
    assert_duplicate_of(&inside, &first);
    h.advance_clock(1_500); // 10.5 s after the first publish
    let after = publish_one(&*e, "t", Message::new("3").with_id("m")).await;
    assert!(!after.duplicate, "the window passed: stored again");
    assert_eq!(after.offset, first.offset + 1);
    let next = publish_one(&*e, "t", Message::new("4").with_id("m")).await;
    assert_duplicate_of(&next, &after);
    assert_eq!(values(&read_all(&*e, "t", 0).await), ["1", "3"]);

    // A restart after the window does not resurrect expired ids.
    drop(e);
    let e = h.restart().await;
    h.advance_clock(10_001);
    let later = publish_one(&*e, "t", Message::new("5").with_id("m")).await;
    assert!(!later.duplicate, "expired before the restart");
    assert_eq!(values(&read_all(&*e, "t", 0).await), ["1", "3", "5"]);
}

/// `dedup_window_ms: 0` turns dedup off: every publish is stored.
pub(crate) async fn window_zero_disables(mut h: impl Harness) {
    let e = h.start().await;
    e.create_topic("t", window(1, 0)).await.unwrap();
    let a = publish_one(&*e, "t", Message::new("a").with_id("same")).await;
    let b = publish_one(&*e, "t", Message::new("b").with_id("same")).await;
    let r = e
        .publish(
            "t",
            vec![
                Message::new("c").with_id("same"),
                Message::new("d").with_id("same"),
            ],
        )
        .await
        .unwrap();
    for p in [&a, &b, &r[0], &r[1]] {
        assert!(!p.duplicate);
    }
    let offsets: Vec<u64> = [a, b, r[0], r[1]].iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3]);
    assert_eq!(values(&read_all(&*e, "t", 0).await), ["a", "b", "c", "d"]);
}

/// Many concurrent publishes of one id store exactly one copy, and every publish answers
/// its partition and offset.
pub(crate) async fn concurrent_same_id(mut h: impl Harness) {
    const TASKS: usize = 16;
    const ROUNDS: usize = 8;
    let e = h.start().await;
    topic(&*e, "t", 4).await;
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let e = e.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    // No key: without dedup these would spread over every partition.
                    e.publish(
                        "t",
                        vec![Message::new(format!("{round}-{i}")).with_id(format!("id-{round}"))],
                    )
                    .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            let r = tokio::time::timeout(SAFETY, t)
                .await
                .expect("a publish hung")
                .unwrap()
                .unwrap();
            results.push(r[0]);
        }
        let originals = results.iter().filter(|p| !p.duplicate).count();
        assert_eq!(
            originals, 1,
            "round {round}: exactly one stored: {results:?}"
        );
        let places: BTreeSet<(u32, u64)> =
            results.iter().map(|p| (p.partition, p.offset)).collect();
        assert_eq!(places.len(), 1, "round {round}: one place: {results:?}");
        let total: u64 = high_watermarks(&*e, "t").await.iter().sum();
        assert_eq!(total, round as u64 + 1, "round {round}: one copy stored");
    }
}
