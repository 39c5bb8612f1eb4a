//! Helpers shared by the conformance cases.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Duration;

use wharf_broker::{
    BrokerError, Engine, FetchRequest, Message, Position, Published, ReadRequest, Result,
    StoredMessage, StreamConfig, SubscriptionConfig, TopicConfig,
};

/// Safety net for anything that waits: far longer than any case should take, so a case
/// never depends on it to pass, only to fail instead of hanging.
pub(crate) const SAFETY: Duration = Duration::from_secs(10);

/// The error of `r`, which must have failed with `code`.
#[track_caller]
pub(crate) fn expect_code<T: Debug>(r: Result<T>, code: &str) -> BrokerError {
    match r {
        Ok(v) => panic!("expected error `{code}`, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.code(), code, "wrong error code; the error: {e}");
            e
        }
    }
}

/// `r` must have failed with `invalid_argument` naming `field`.
#[track_caller]
pub(crate) fn expect_invalid<T: Debug>(r: Result<T>, field: &str) {
    match expect_code(r, "invalid_argument") {
        BrokerError::InvalidArgument { field: f, reason } => {
            assert_eq!(
                f, field,
                "invalid_argument names the wrong field ({reason})"
            );
        }
        other => panic!("invalid_argument with an unexpected shape: {other:?}"),
    }
}

/// A topic config with `partitions` partitions, other settings default.
pub(crate) fn partitions(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        ..TopicConfig::default()
    }
}

/// Creates `name` with `partitions` partitions.
pub(crate) async fn topic<E: Engine>(e: &E, name: &str, n: u32) {
    e.create_topic(name, partitions(n)).await.unwrap();
}

/// A stream subscription config starting at `start`, other settings default.
pub(crate) fn stream_from(start: Position) -> SubscriptionConfig {
    SubscriptionConfig::Stream(StreamConfig {
        start,
        ..StreamConfig::default()
    })
}

/// A stream subscription config with this session timeout.
pub(crate) fn stream_session(session_timeout_ms: u64) -> SubscriptionConfig {
    SubscriptionConfig::Stream(StreamConfig {
        session_timeout_ms,
        ..StreamConfig::default()
    })
}

/// Publishes one message.
pub(crate) async fn publish_one<E: Engine>(e: &E, topic: &str, m: Message) -> Published {
    let mut r = e.publish(topic, vec![m]).await.unwrap();
    assert_eq!(r.len(), 1, "one message, one result");
    r.remove(0)
}

/// Publishes `count` messages to `partition`, one publish each, valued `{prefix}-{i}`.
pub(crate) async fn fill<E: Engine>(
    e: &E,
    topic: &str,
    partition: u32,
    prefix: &str,
    count: usize,
) -> Vec<Published> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        out.push(
            publish_one(
                e,
                topic,
                Message::new(format!("{prefix}-{i}")).to_partition(partition),
            )
            .await,
        );
    }
    out
}

/// Every message of a partition, from the earliest held, in order.
pub(crate) async fn read_all<E: Engine>(e: &E, topic: &str, partition: u32) -> Vec<StoredMessage> {
    let mut out: Vec<StoredMessage> = Vec::new();
    let mut from = Position::Earliest;
    loop {
        let r = e
            .read(topic, ReadRequest::new(partition, from))
            .await
            .unwrap();
        if r.messages.is_empty() {
            assert_eq!(
                r.next_offset, r.high_watermark,
                "an empty read is at the end"
            );
            return out;
        }
        if let Some(last) = out.last() {
            assert!(r.messages[0].offset > last.offset, "reads move forward");
        }
        out.extend(r.messages);
        from = Position::Offset(r.next_offset);
    }
}

/// The high watermarks of every partition of `topic`.
pub(crate) async fn high_watermarks<E: Engine>(e: &E, topic: &str) -> Vec<u64> {
    e.describe_topic(topic)
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .collect()
}

/// The values of `messages` as strings.
pub(crate) fn values(messages: &[StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect()
}

/// `(partition, offset)` of each message.
pub(crate) fn positions(messages: &[StoredMessage]) -> Vec<(u32, u64)> {
    messages.iter().map(|m| (m.partition, m.offset)).collect()
}

/// A fetch that does not wait.
pub(crate) fn fetch_now() -> FetchRequest {
    FetchRequest::default()
}

/// Fetches until a fetch returns nothing; everything fetched, in fetch order. Panics if a
/// message comes twice (fetches must move forward).
pub(crate) async fn fetch_all<E: Engine>(
    e: &E,
    topic: &str,
    sub: &str,
    member: &str,
) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    loop {
        let got = e.fetch(topic, sub, member, fetch_now()).await.unwrap();
        if got.is_empty() {
            return out;
        }
        for m in &got {
            assert!(
                seen.insert((m.partition, m.offset)),
                "fetched ({}, {}) twice: fetches must continue after what was fetched",
                m.partition,
                m.offset
            );
        }
        out.extend(got);
    }
}

/// Checks that `parts` (one assignment per member) cover `0..n` exactly once.
#[track_caller]
pub(crate) fn assert_partitioned(parts: &[&[u32]], n: u32) {
    let mut seen = BTreeSet::new();
    for p in parts.iter().flat_map(|ps| ps.iter()) {
        assert!(seen.insert(*p), "partition {p} assigned twice: {parts:?}");
    }
    assert_eq!(
        seen,
        (0..n).collect::<BTreeSet<u32>>(),
        "every partition assigned: {parts:?}"
    );
}
