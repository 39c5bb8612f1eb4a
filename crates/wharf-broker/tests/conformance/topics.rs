//! Topics: create (idempotent, conflicting), naming and settings rules, describe, list,
//! delete, durability across a restart.

use wharf_broker::{Durability, Engine, Message, Position, ReadRequest, TopicConfig};

use super::Harness;
use super::common::{
    expect_code, expect_invalid, fill, partitions, read_all, stream_from, topic, values,
};

/// Settings that differ from the defaults in every field.
fn custom() -> TopicConfig {
    TopicConfig {
        partitions: 4,
        durability: Durability::Interval { ms: 50 },
        retention_ms: Some(3_600_000),
        retention_bytes: Some(10 * 1024 * 1024),
        dedup_window_ms: 5_000,
        max_message_bytes: 4096,
        segment_bytes: 1024 * 1024,
    }
}

/// A topic created with `{}` has the documented defaults and empty partitions.
pub(crate) async fn create_defaults(mut h: impl Harness) {
    let e = h.start().await;
    let info = e
        .create_topic("orders", TopicConfig::default())
        .await
        .unwrap();
    assert_eq!(info.name, "orders");
    assert_eq!(info.config, TopicConfig::default());
    assert_eq!(info.config.partitions, 1);
    assert_eq!(info.config.durability, Durability::Always);
    assert_eq!(info.config.dedup_window_ms, 120_000);
    assert_eq!(info.config.max_message_bytes, 1024 * 1024);
    assert_eq!(info.partitions.len(), 1);
    assert_eq!(info.partitions[0].partition, 0);
    assert_eq!(info.partitions[0].start_offset, 0);
    assert_eq!(info.partitions[0].high_watermark, 0);
    assert_eq!(e.describe_topic("orders").await.unwrap(), info);
}

/// Every setting given on create comes back from create, describe and list.
pub(crate) async fn settings_round_trip(mut h: impl Harness) {
    let e = h.start().await;
    let info = e.create_topic("orders.created", custom()).await.unwrap();
    assert_eq!(info.name, "orders.created");
    assert_eq!(info.config, custom());
    assert_eq!(info.partitions.len(), 4);
    for (i, p) in info.partitions.iter().enumerate() {
        assert_eq!(p.partition, i as u32);
        assert_eq!((p.start_offset, p.high_watermark), (0, 0));
    }
    assert_eq!(e.describe_topic("orders.created").await.unwrap(), info);
    assert_eq!(e.list_topics().await.unwrap(), vec![info]);
}

/// Creating a topic again with the same settings succeeds and keeps its messages.
pub(crate) async fn idempotent_create(mut h: impl Harness) {
    let e = h.start().await;
    let first = e.create_topic("orders", custom()).await.unwrap();
    fill(&*e, "orders", 1, "m", 2).await;
    let again = e.create_topic("orders", custom()).await.unwrap();
    assert_eq!(again.config, first.config);
    assert_eq!(
        again.partitions[1].high_watermark, 2,
        "re-creating must not wipe the topic"
    );
    assert_eq!(values(&read_all(&*e, "orders", 1).await), ["m-0", "m-1"]);
    assert_eq!(e.list_topics().await.unwrap().len(), 1);
}

/// Creating a topic that exists with other settings is `topic_exists`; the topic keeps its
/// settings.
pub(crate) async fn conflicting_create(mut h: impl Harness) {
    let e = h.start().await;
    e.create_topic("orders", custom()).await.unwrap();
    let changes = [
        TopicConfig {
            partitions: 5,
            ..custom()
        },
        TopicConfig {
            dedup_window_ms: 1,
            ..custom()
        },
        TopicConfig {
            max_message_bytes: 8192,
            ..custom()
        },
        TopicConfig::default(),
    ];
    for other in changes {
        expect_code(e.create_topic("orders", other).await, "topic_exists");
    }
    assert_eq!(
        e.describe_topic("orders").await.unwrap().config,
        custom(),
        "a refused create changes nothing"
    );
}

/// Names outside `[a-z0-9][a-z0-9._-]{0,99}`, and reserved `wharf.` names, are
/// `invalid_name`; nothing is created.
pub(crate) async fn bad_names(mut h: impl Harness) {
    let e = h.start().await;
    let long = "x".repeat(101);
    for bad in [
        "Orders",
        "orderS",
        "",
        long.as_str(),
        "wharf.x",
        "wharf.dlq.a.b",
        "-orders",
        ".orders",
        "or ders",
        "or/ders",
        "ördérs",
    ] {
        let r = e.create_topic(bad, TopicConfig::default()).await;
        expect_code(r, "invalid_name");
    }
    assert!(e.list_topics().await.unwrap().is_empty(), "nothing created");
    // The edges of the rule are accepted.
    let longest = "x".repeat(100);
    for ok in [
        longest.as_str(),
        "0",
        "a",
        "a.b_c-d",
        "wharf",
        "wharfx.y",
        "9lives",
    ] {
        e.create_topic(ok, TopicConfig::default())
            .await
            .unwrap_or_else(|err| panic!("{ok:?} is a valid name: {err}"));
    }
    assert_eq!(e.list_topics().await.unwrap().len(), 7);
}

/// Settings out of range are `invalid_argument` naming the field; nothing is created.
pub(crate) async fn bad_settings(mut h: impl Harness) {
    let e = h.start().await;
    expect_invalid(e.create_topic("t", partitions(0)).await, "partitions");
    expect_invalid(e.create_topic("t", partitions(1025)).await, "partitions");
    expect_invalid(e.create_topic("t", partitions(2000)).await, "partitions");
    expect_invalid(
        e.create_topic(
            "t",
            TopicConfig {
                max_message_bytes: 0,
                ..TopicConfig::default()
            },
        )
        .await,
        "max_message_bytes",
    );
    expect_invalid(
        e.create_topic(
            "t",
            TopicConfig {
                max_message_bytes: 16 * 1024 * 1024 + 1,
                ..TopicConfig::default()
            },
        )
        .await,
        "max_message_bytes",
    );
    expect_code(e.describe_topic("t").await, "topic_not_found");
    assert!(e.list_topics().await.unwrap().is_empty(), "nothing created");
    // The lower edges are accepted (1024 partitions would be too, but is slow to create).
    let info = e
        .create_topic(
            "t1",
            TopicConfig {
                partitions: 1,
                max_message_bytes: 1,
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(info.config.max_message_bytes, 1);
}

/// Describe and list show what exists; delete removes the topic with its messages and
/// subscriptions; a topic created again under the same name starts empty.
pub(crate) async fn describe_list_delete(mut h: impl Harness) {
    let e = h.start().await;
    expect_code(e.describe_topic("a").await, "topic_not_found");
    topic(&*e, "b", 2).await;
    topic(&*e, "a", 1).await;
    topic(&*e, "a.c", 3).await;
    let names: Vec<String> = e
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a", "a.c", "b"], "listed by name");
    let b = e.describe_topic("b").await.unwrap();
    assert_eq!((b.name.as_str(), b.partitions.len()), ("b", 2));

    fill(&*e, "a", 0, "old", 3).await;
    e.create_subscription("a", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    e.delete_topic("a").await.unwrap();
    expect_code(e.describe_topic("a").await, "topic_not_found");
    expect_code(e.delete_topic("a").await, "topic_not_found");
    expect_code(
        e.publish("a", vec![Message::new("x")]).await,
        "topic_not_found",
    );
    expect_code(
        e.read("a", ReadRequest::new(0, Position::Earliest)).await,
        "topic_not_found",
    );
    expect_code(e.list_subscriptions("a").await, "topic_not_found");
    let names: Vec<String> = e
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a.c", "b"]);

    // Same name again: a new, empty topic without the old subscriptions.
    let again = e.create_topic("a", partitions(1)).await.unwrap();
    assert_eq!(again.partitions[0].high_watermark, 0);
    assert_eq!(again.partitions[0].start_offset, 0);
    assert!(read_all(&*e, "a", 0).await.is_empty(), "old messages gone");
    assert!(e.list_subscriptions("a").await.unwrap().is_empty());
    expect_code(
        e.describe_subscription("a", "s").await,
        "subscription_not_found",
    );
    let p = fill(&*e, "a", 0, "new", 1).await;
    assert_eq!(p[0].offset, 0, "offsets start over");
    // The other topics were not touched.
    assert_eq!(e.describe_topic("b").await.unwrap(), b);
}

/// Topics, their settings and their messages survive a restart; deleted topics stay deleted.
pub(crate) async fn survives_restart(mut h: impl Harness) {
    let e = h.start().await;
    e.create_topic("orders", custom()).await.unwrap();
    e.create_topic("plain", TopicConfig::default())
        .await
        .unwrap();
    e.create_topic("doomed", TopicConfig::default())
        .await
        .unwrap();
    fill(&*e, "orders", 3, "o", 3).await;
    fill(&*e, "plain", 0, "p", 2).await;
    e.delete_topic("doomed").await.unwrap();
    let before = e.list_topics().await.unwrap();
    drop(e);

    let e = h.restart().await;
    assert_eq!(e.list_topics().await.unwrap(), before);
    assert_eq!(e.describe_topic("orders").await.unwrap().config, custom());
    expect_code(e.describe_topic("doomed").await, "topic_not_found");
    assert_eq!(
        values(&read_all(&*e, "orders", 3).await),
        ["o-0", "o-1", "o-2"]
    );
    assert_eq!(values(&read_all(&*e, "plain", 0).await), ["p-0", "p-1"]);
    // Offsets continue after the restart.
    let p = fill(&*e, "plain", 0, "q", 1).await;
    assert_eq!(p[0].offset, 2);
}
