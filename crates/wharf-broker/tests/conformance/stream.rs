//! Stream subscriptions: lifecycle, group membership and assignment, session timeouts,
//! fetch, commit, reset, start positions, lag, long-poll, independence of subscriptions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use wharf_broker::{
    Committed, Engine, FetchRequest, Message, Position, ResetTo, StreamConfig, SubscriptionConfig,
};

use super::Harness;
use super::common::{
    SAFETY, assert_partitioned, expect_code, expect_invalid, fetch_all, fetch_now, fill, positions,
    publish_one, stream_from, stream_session, topic, values,
};

fn committed_of(info: &wharf_broker::SubscriptionInfo) -> Vec<u64> {
    info.partitions.iter().map(|p| p.committed).collect()
}

fn lag_of(info: &wharf_broker::SubscriptionInfo) -> Vec<u64> {
    info.partitions.iter().map(|p| p.lag).collect()
}

fn commit(partition: u32, offset: u64) -> Committed {
    Committed { partition, offset }
}

/// Create, describe, list and delete; the errors of unknown topics, bad names and bad
/// settings.
pub(crate) async fn create_describe_list_delete(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 3).await;
    let config = SubscriptionConfig::Stream(StreamConfig {
        start: Position::Earliest,
        session_timeout_ms: 45_000,
    });
    let info = e
        .create_subscription("t", "billing", config.clone())
        .await
        .unwrap();
    assert_eq!((info.topic.as_str(), info.name.as_str()), ("t", "billing"));
    assert_eq!(info.config, config);
    assert_eq!(info.partitions.len(), 3);
    for (i, p) in info.partitions.iter().enumerate() {
        assert_eq!(p.partition, i as u32);
        assert_eq!((p.committed, p.lag, p.behind_retention), (0, 0, false));
    }
    assert!(info.members.is_empty());
    assert_eq!(e.describe_subscription("t", "billing").await.unwrap(), info);
    e.create_subscription("t", "audit", stream_from(Position::Latest))
        .await
        .unwrap();
    let names: Vec<String> = e
        .list_subscriptions("t")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["audit", "billing"], "listed by name");

    e.delete_subscription("t", "billing").await.unwrap();
    expect_code(
        e.describe_subscription("t", "billing").await,
        "subscription_not_found",
    );
    expect_code(
        e.delete_subscription("t", "billing").await,
        "subscription_not_found",
    );
    let names: Vec<String> = e
        .list_subscriptions("t")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["audit"]);

    expect_code(
        e.create_subscription("nope", "s", stream_from(Position::Earliest))
            .await,
        "topic_not_found",
    );
    expect_code(e.list_subscriptions("nope").await, "topic_not_found");
    for bad in ["Billing", "", "wharf.x", "a b"] {
        expect_code(
            e.create_subscription("t", bad, stream_from(Position::Earliest))
                .await,
            "invalid_name",
        );
    }
    expect_invalid(
        e.create_subscription("t", "s", stream_session(10)).await,
        "session_timeout_ms",
    );
    expect_code(
        e.describe_subscription("t", "s").await,
        "subscription_not_found",
    );

    // Subscriptions and their settings survive a restart; deleted ones stay deleted.
    let audit = e.describe_subscription("t", "audit").await.unwrap();
    drop(e);
    let e = h.restart().await;
    assert_eq!(e.list_subscriptions("t").await.unwrap(), [audit]);
    expect_code(
        e.describe_subscription("t", "billing").await,
        "subscription_not_found",
    );
}

/// Creating again with the same settings succeeds and keeps the progress; other settings
/// are `subscription_exists`.
pub(crate) async fn idempotent_and_conflicting_create(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    fill(&*e, "t", 0, "old", 2).await;
    let config = stream_from(Position::Latest);
    let first = e
        .create_subscription("t", "s", config.clone())
        .await
        .unwrap();
    assert_eq!(committed_of(&first), [2]);
    fill(&*e, "t", 0, "new", 3).await;
    let again = e
        .create_subscription("t", "s", config.clone())
        .await
        .unwrap();
    assert_eq!(again.config, config);
    assert_eq!(
        (committed_of(&again), lag_of(&again)),
        (vec![2], vec![3]),
        "re-creating must not move the subscription"
    );
    for other in [
        stream_from(Position::Earliest),
        stream_session(10_000),
        stream_from(Position::Offset(1)),
    ] {
        expect_code(
            e.create_subscription("t", "s", other).await,
            "subscription_exists",
        );
    }
    assert_eq!(
        e.describe_subscription("t", "s").await.unwrap().config,
        config
    );
}

/// Every group operation on a subscription that does not exist is `subscription_not_found`.
pub(crate) async fn unknown_subscription(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    let nf = "subscription_not_found";
    expect_code(e.describe_subscription("t", "s").await, nf);
    expect_code(e.delete_subscription("t", "s").await, nf);
    expect_code(e.join("t", "s", None).await, nf);
    expect_code(e.heartbeat("t", "s", "m").await, nf);
    expect_code(e.leave("t", "s", "m").await, nf);
    expect_code(e.fetch("t", "s", "m", fetch_now()).await, nf);
    expect_code(e.commit("t", "s", "m", vec![commit(0, 0)]).await, nf);
    expect_code(e.reset("t", "s", ResetTo::Earliest).await, nf);
    expect_code(e.join("nope", "s", None).await, "topic_not_found");
}

/// A lone member owns every partition.
pub(crate) async fn one_member_gets_all(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 4).await;
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    let m = e.join("t", "s", None).await.unwrap();
    assert!(!m.member_id.is_empty());
    assert_eq!(m.partitions, [0, 1, 2, 3]);
    let hb = e.heartbeat("t", "s", &m.member_id).await.unwrap();
    assert_eq!(hb, m, "nothing changed");
    let info = e.describe_subscription("t", "s").await.unwrap();
    assert_eq!(info.members, vec![m.member_id.clone()]);
    // Rejoining with the same id keeps the assignment; a member chosen id works too.
    let again = e.join("t", "s", Some(&m.member_id)).await.unwrap();
    assert_eq!(again.partitions, [0, 1, 2, 3]);
    expect_code(e.heartbeat("t", "s", "stranger").await, "unknown_member");
}

/// Two members split the partitions with no overlap and full coverage; with more members
/// than partitions, the extras own nothing.
pub(crate) async fn members_split_partitions(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 5).await;
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    let a = e.join("t", "s", Some("member-a")).await.unwrap();
    assert_eq!(a.partitions.len(), 5);
    let b = e.join("t", "s", Some("member-b")).await.unwrap();
    assert!(
        b.generation > a.generation,
        "a join starts a new generation"
    );
    let a = e.heartbeat("t", "s", "member-a").await.unwrap();
    assert_eq!(a.generation, b.generation);
    assert!(
        !a.partitions.is_empty() && !b.partitions.is_empty(),
        "{a:?} {b:?}"
    );
    assert_partitioned(&[&a.partitions, &b.partitions], 5);
    let mut members = e.describe_subscription("t", "s").await.unwrap().members;
    members.sort();
    assert_eq!(members, ["member-a", "member-b"]);

    // Five more members: seven members, five partitions.
    for i in 0..5 {
        e.join("t", "s", Some(&format!("extra-{i}"))).await.unwrap();
    }
    let ids = [
        "member-a", "member-b", "extra-0", "extra-1", "extra-2", "extra-3", "extra-4",
    ];
    let mut owned = Vec::new();
    for id in ids {
        owned.push(e.heartbeat("t", "s", id).await.unwrap().partitions);
    }
    let views: Vec<&[u32]> = owned.iter().map(Vec::as_slice).collect();
    assert_partitioned(&views, 5);
    assert_eq!(
        owned.iter().filter(|p| p.is_empty()).count(),
        2,
        "{owned:?}"
    );
}

/// A member that leaves hands its partitions to the others, which continue them from the
/// committed offsets; the member is unknown from then on.
pub(crate) async fn leave_rebalances(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 4).await;
    for p in 0..4 {
        fill(&*e, "t", p, &format!("p{p}"), 3).await;
    }
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    let a = e.join("t", "s", None).await.unwrap();
    let b = e.join("t", "s", None).await.unwrap();
    assert_ne!(a.member_id, b.member_id, "fresh ids are distinct");
    let a_split = e.heartbeat("t", "s", &a.member_id).await.unwrap();
    assert!(a_split.partitions.len() < 4);
    assert_partitioned(&[&a_split.partitions, &b.partitions], 4);
    // b consumes its partitions but commits only the first message of each.
    let got = fetch_all(&*e, "t", "s", &b.member_id).await;
    assert_eq!(got.len(), 3 * b.partitions.len());
    let commits = b.partitions.iter().map(|&p| commit(p, 1)).collect();
    e.commit("t", "s", &b.member_id, commits).await.unwrap();

    e.leave("t", "s", &b.member_id).await.unwrap();
    let a_all = e.heartbeat("t", "s", &a.member_id).await.unwrap();
    assert_eq!(a_all.partitions, [0, 1, 2, 3]);
    assert!(a_all.generation > a_split.generation);
    // a gets its own partitions from the start and b's from b's commits (at least once).
    let mut got = positions(&fetch_all(&*e, "t", "s", &a.member_id).await);
    got.sort();
    let mut want: Vec<(u32, u64)> = Vec::new();
    for p in 0..4 {
        let from = if b.partitions.contains(&p) { 1 } else { 0 };
        want.extend((from..3).map(|o| (p, o)));
    }
    assert_eq!(
        got, want,
        "taken-over partitions resume at the committed offsets"
    );

    expect_code(e.heartbeat("t", "s", &b.member_id).await, "unknown_member");
    expect_code(e.leave("t", "s", &b.member_id).await, "unknown_member");
    expect_code(
        e.fetch("t", "s", &b.member_id, fetch_now()).await,
        "unknown_member",
    );
    assert_eq!(
        e.describe_subscription("t", "s").await.unwrap().members,
        vec![a.member_id.clone()]
    );
    // The last member leaving leaves an empty group that can be joined again.
    e.leave("t", "s", &a.member_id).await.unwrap();
    assert!(
        e.describe_subscription("t", "s")
            .await
            .unwrap()
            .members
            .is_empty()
    );
    let c = e.join("t", "s", None).await.unwrap();
    assert_eq!(c.partitions, [0, 1, 2, 3]);
}

/// A member silent for longer than the session timeout is removed at the next group
/// operation; the live member then owns everything.
pub(crate) async fn session_timeout(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 4).await;
    e.create_subscription("t", "s", stream_session(10_000))
        .await
        .unwrap();
    let a = e.join("t", "s", Some("alive")).await.unwrap();
    e.join("t", "s", Some("silent")).await.unwrap();
    let split = e.heartbeat("t", "s", "alive").await.unwrap();
    assert!(split.partitions.len() < 4);
    assert_eq!(a.member_id, "alive");

    h.advance_clock(6_000);
    let still = e.heartbeat("t", "s", "alive").await.unwrap();
    assert_eq!(
        still.partitions, split.partitions,
        "within the timeout nobody is removed"
    );
    assert_eq!(
        e.heartbeat("t", "s", "silent").await.unwrap().generation,
        split.generation
    );

    // "silent" last spoke at +6 s; "alive" keeps heartbeating.
    h.advance_clock(6_000);
    e.heartbeat("t", "s", "alive").await.unwrap();
    h.advance_clock(6_000);
    e.heartbeat("t", "s", "alive").await.unwrap();
    // Now "silent" has been quiet for 12 s > 10 s.
    let all = e.heartbeat("t", "s", "alive").await.unwrap();
    assert_eq!(
        all.partitions,
        [0, 1, 2, 3],
        "the live member owns everything"
    );
    assert!(all.generation > split.generation);
    expect_code(e.heartbeat("t", "s", "silent").await, "unknown_member");
    expect_code(
        e.fetch("t", "s", "silent", fetch_now()).await,
        "unknown_member",
    );
    expect_code(
        e.commit("t", "s", "silent", vec![commit(0, 0)]).await,
        "unknown_member",
    );
    assert_eq!(
        e.describe_subscription("t", "s").await.unwrap().members,
        ["alive"]
    );
    // It may join again.
    let back = e.join("t", "s", Some("silent")).await.unwrap();
    assert!(!back.partitions.is_empty());
}

/// Each member fetches only its own partitions, together everything exactly once; fetches
/// continue after what was fetched, across small `max_messages`.
pub(crate) async fn fetch_owned_partitions_and_continue(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 4).await;
    for p in 0..4 {
        fill(&*e, "t", p, &format!("p{p}"), 6).await;
    }
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    e.join("t", "s", Some("a")).await.unwrap();
    e.join("t", "s", Some("b")).await.unwrap();
    let a = e.heartbeat("t", "s", "a").await.unwrap();
    let b = e.heartbeat("t", "s", "b").await.unwrap();

    let mut everything = BTreeSet::new();
    for m in [&a, &b] {
        let mut got = Vec::new();
        loop {
            let batch = e
                .fetch(
                    "t",
                    "s",
                    &m.member_id,
                    FetchRequest {
                        max_messages: 4,
                        ..FetchRequest::default()
                    },
                )
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 4, "max_messages: {}", batch.len());
            got.extend(batch);
            assert!(got.len() <= 24, "fetches must move forward");
        }
        assert_eq!(got.len(), 6 * m.partitions.len(), "member {}", m.member_id);
        for msg in &got {
            assert!(
                m.partitions.contains(&msg.partition),
                "{} got partition {} it does not own",
                m.member_id,
                msg.partition
            );
            assert_eq!(
                values(std::slice::from_ref(msg)),
                [format!("p{}-{}", msg.partition, msg.offset)]
            );
            assert!(
                everything.insert((msg.partition, msg.offset)),
                "fetched twice"
            );
        }
        // In offset order within each partition.
        for p in &m.partitions {
            let offs: Vec<u64> = got
                .iter()
                .filter(|x| x.partition == *p)
                .map(|x| x.offset)
                .collect();
            assert_eq!(offs, (0..6).collect::<Vec<_>>(), "partition {p}");
        }
    }
    assert_eq!(everything.len(), 24);

    // New messages: each member gets only the new ones of its partitions.
    for p in 0..4 {
        publish_one(&*e, "t", Message::new(format!("p{p}-6")).to_partition(p)).await;
    }
    for m in [&a, &b] {
        let got = fetch_all(&*e, "t", "s", &m.member_id).await;
        let mut want: Vec<(u32, u64)> = m.partitions.iter().map(|&p| (p, 6)).collect();
        let mut have = positions(&got);
        want.sort();
        have.sort();
        assert_eq!(have, want, "member {}", m.member_id);
    }
    // Fetching does not commit.
    let info = e.describe_subscription("t", "s").await.unwrap();
    assert_eq!(committed_of(&info), [0; 4]);
    assert_eq!(lag_of(&info), [7; 4]);
}

/// `max_messages` and `max_bytes` cap a fetch (whole messages, at least one), whether the
/// messages were published one by one or in one batch; nothing is skipped or repeated.
pub(crate) async fn fetch_limits(mut h: impl Harness) {
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
    for (sub, max_messages, max_bytes) in [
        ("few", 3, 1024 * 1024),
        ("one", 0, 1024 * 1024),
        ("tiny", 100, 1),
        ("small", 100, 250),
    ] {
        e.create_subscription("t", sub, stream_from(Position::Earliest))
            .await
            .unwrap();
        e.join("t", sub, Some("m")).await.unwrap();
        let mut got = Vec::new();
        loop {
            let batch = e
                .fetch(
                    "t",
                    sub,
                    "m",
                    FetchRequest {
                        max_messages,
                        max_bytes,
                        wait: Duration::ZERO,
                    },
                )
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            let bytes: usize = batch.iter().map(|m| m.value.len()).sum();
            assert!(
                n <= max_messages.max(1),
                "{sub}: {n} messages for max_messages {max_messages}"
            );
            assert!(
                n == 1 || bytes <= max_bytes,
                "{sub}: {n} messages of {bytes} bytes for max_bytes {max_bytes}"
            );
            got.extend(batch);
            assert!(got.len() <= 20, "{sub}: fetches must move forward");
        }
        let mut have = positions(&got);
        have.sort();
        let want: Vec<(u32, u64)> = (0..2).flat_map(|p| (0..10).map(move |o| (p, o))).collect();
        assert_eq!(have, want, "{sub}: everything exactly once");
    }
}

/// Commits are durable: after a restart a member resumes after the committed offsets.
pub(crate) async fn commit_durable_across_restart(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    fill(&*e, "t", 0, "a", 5).await;
    fill(&*e, "t", 1, "b", 5).await;
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    let m = e.join("t", "s", Some("m")).await.unwrap();
    assert_eq!(fetch_all(&*e, "t", "s", &m.member_id).await.len(), 10);
    let answer = e
        .commit("t", "s", "m", vec![commit(0, 3), commit(1, 5)])
        .await
        .unwrap();
    assert_eq!(answer, [commit(0, 3), commit(1, 5)]);
    let info = e.describe_subscription("t", "s").await.unwrap();
    assert_eq!(
        (committed_of(&info), lag_of(&info)),
        (vec![3, 5], vec![2, 0])
    );
    drop(e);

    let e = h.restart().await;
    let info = e.describe_subscription("t", "s").await.unwrap();
    assert_eq!(
        (committed_of(&info), lag_of(&info)),
        (vec![3, 5], vec![2, 0])
    );
    let m = e.join("t", "s", Some("m")).await.unwrap();
    assert_eq!(m.partitions, [0, 1]);
    let got = fetch_all(&*e, "t", "s", &m.member_id).await;
    assert_eq!(positions(&got), [(0, 3), (0, 4)]);
    assert_eq!(values(&got), ["a-3", "a-4"]);
    // Another commit, another restart, another member.
    e.commit("t", "s", "m", vec![commit(0, 5)]).await.unwrap();
    drop(e);
    let e = h.restart().await;
    let m = e.join("t", "s", None).await.unwrap();
    assert!(fetch_all(&*e, "t", "s", &m.member_id).await.is_empty());
    assert_eq!(
        committed_of(&e.describe_subscription("t", "s").await.unwrap()),
        [5, 5]
    );
}

/// A commit for a partition the member does not own is `not_assigned` and changes nothing;
/// a commit past the high watermark is `invalid_argument`.
pub(crate) async fn commit_not_owned(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    fill(&*e, "t", 0, "a", 3).await;
    fill(&*e, "t", 1, "b", 3).await;
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    e.join("t", "s", Some("a")).await.unwrap();
    e.join("t", "s", Some("b")).await.unwrap();
    let a = e.heartbeat("t", "s", "a").await.unwrap();
    let b = e.heartbeat("t", "s", "b").await.unwrap();
    assert_eq!((a.partitions.len(), b.partitions.len()), (1, 1));
    let theirs = b.partitions[0];
    let mine = a.partitions[0];
    expect_code(
        e.commit("t", "s", "a", vec![commit(theirs, 2)]).await,
        "not_assigned",
    );
    // Mixed with an owned partition: refused as a whole.
    expect_code(
        e.commit("t", "s", "a", vec![commit(mine, 2), commit(theirs, 2)])
            .await,
        "not_assigned",
    );
    assert_eq!(
        committed_of(&e.describe_subscription("t", "s").await.unwrap()),
        [0, 0],
        "refused commits change nothing"
    );
    expect_invalid(
        e.commit("t", "s", "a", vec![commit(mine, 4)]).await,
        "offset",
    );
    // Its own partition works.
    assert_eq!(
        e.commit("t", "s", "a", vec![commit(mine, 3)])
            .await
            .unwrap(),
        [commit(mine, 3)]
    );
    expect_code(
        e.commit("t", "s", "nobody", vec![commit(mine, 1)]).await,
        "unknown_member",
    );
}

/// A commit below the committed offset leaves it unchanged (and says so), durably.
pub(crate) async fn commit_below_current(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    fill(&*e, "t", 0, "m", 8).await;
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    e.join("t", "s", Some("m")).await.unwrap();
    assert_eq!(
        e.commit("t", "s", "m", vec![commit(0, 6)]).await.unwrap(),
        [commit(0, 6)]
    );
    assert_eq!(
        e.commit("t", "s", "m", vec![commit(0, 2)]).await.unwrap(),
        [commit(0, 6)],
        "the answer gives the offset in force"
    );
    assert_eq!(
        committed_of(&e.describe_subscription("t", "s").await.unwrap()),
        [6]
    );
    drop(e);
    let e = h.restart().await;
    assert_eq!(
        committed_of(&e.describe_subscription("t", "s").await.unwrap()),
        [6],
        "still after a restart"
    );
    e.join("t", "s", Some("m")).await.unwrap();
    let got = fetch_all(&*e, "t", "s", "m").await;
    assert_eq!(positions(&got), [(0, 6), (0, 7)]);
}

/// Reset moves the committed offsets (earliest, latest, timestamp, explicit), durably, and
/// members continue from there.
pub(crate) async fn reset_positions(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    fill(&*e, "t", 0, "a", 5).await;
    fill(&*e, "t", 1, "b", 5).await;
    h.advance_clock(1_000);
    let t1 = h.now_ms();
    fill(&*e, "t", 0, "c", 5).await;
    fill(&*e, "t", 1, "d", 5).await;
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    e.join("t", "s", Some("m")).await.unwrap();
    assert_eq!(fetch_all(&*e, "t", "s", "m").await.len(), 20);
    e.commit("t", "s", "m", vec![commit(0, 10), commit(1, 10)])
        .await
        .unwrap();

    let sorted = |mut v: Vec<(u32, u64)>| {
        v.sort();
        v
    };
    let expect_fetch = |from0: u64, from1: u64| -> Vec<(u32, u64)> {
        (from0..10)
            .map(|o| (0, o))
            .chain((from1..10).map(|o| (1, o)))
            .collect()
    };

    // Earliest: replay everything.
    let r = e.reset("t", "s", ResetTo::Earliest).await.unwrap();
    assert_eq!(r, [commit(0, 0), commit(1, 0)]);
    assert_eq!(
        committed_of(&e.describe_subscription("t", "s").await.unwrap()),
        [0, 0]
    );
    let got = fetch_all(&*e, "t", "s", "m").await;
    assert_eq!(
        sorted(positions(&got)),
        expect_fetch(0, 0),
        "replay after reset to earliest"
    );

    // Latest: skip everything.
    let r = e.reset("t", "s", ResetTo::Latest).await.unwrap();
    assert_eq!(r, [commit(0, 10), commit(1, 10)]);
    assert!(fetch_all(&*e, "t", "s", "m").await.is_empty());

    // Timestamp: from the first message at or after t1.
    let r = e.reset("t", "s", ResetTo::Timestamp(t1)).await.unwrap();
    assert_eq!(r, [commit(0, 5), commit(1, 5)]);
    let got = fetch_all(&*e, "t", "s", "m").await;
    assert_eq!(sorted(positions(&got)), expect_fetch(5, 5));

    // Explicit offsets: the others keep their committed offset.
    e.commit("t", "s", "m", vec![commit(1, 8)]).await.unwrap();
    let r = e
        .reset("t", "s", ResetTo::Offsets(vec![(0, 7)]))
        .await
        .unwrap();
    assert_eq!(r, [commit(0, 7), commit(1, 8)]);
    let got = fetch_all(&*e, "t", "s", "m").await;
    let from0: Vec<u64> = got
        .iter()
        .filter(|m| m.partition == 0)
        .map(|m| m.offset)
        .collect();
    assert_eq!(from0, [7, 8, 9], "member continues from the reset offset");
    expect_invalid(
        e.reset("t", "s", ResetTo::Offsets(vec![(0, 11)])).await,
        "offset",
    );

    // A reset may move back, and it is durable.
    e.reset("t", "s", ResetTo::Offsets(vec![(0, 2), (1, 3)]))
        .await
        .unwrap();
    drop(e);
    let e = h.restart().await;
    assert_eq!(
        committed_of(&e.describe_subscription("t", "s").await.unwrap()),
        [2, 3]
    );
    e.join("t", "s", Some("m")).await.unwrap();
    let got = fetch_all(&*e, "t", "s", "m").await;
    assert_eq!(sorted(positions(&got)), expect_fetch(2, 3));
}

/// The start position of a new subscription: latest skips earlier messages; an offset or a
/// timestamp starts there.
pub(crate) async fn start_positions(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    fill(&*e, "t", 0, "early", 3).await;
    h.advance_clock(1_000);
    let t1 = h.now_ms();
    fill(&*e, "t", 0, "mid", 2).await;

    e.create_subscription("t", "latest", stream_from(Position::Latest))
        .await
        .unwrap();
    e.create_subscription("t", "offset", stream_from(Position::Offset(1)))
        .await
        .unwrap();
    e.create_subscription("t", "time", stream_from(Position::Timestamp(t1)))
        .await
        .unwrap();
    e.create_subscription("t", "earliest", stream_from(Position::Earliest))
        .await
        .unwrap();
    let committed = |name: &'static str| {
        let e = e.clone();
        async move { committed_of(&e.describe_subscription("t", name).await.unwrap()) }
    };
    assert_eq!(committed("latest").await, [5]);
    assert_eq!(committed("offset").await, [1]);
    assert_eq!(committed("time").await, [3]);
    assert_eq!(committed("earliest").await, [0]);

    publish_one(&*e, "t", Message::new("late").to_partition(0)).await;
    for (sub, want) in [
        ("latest", vec!["late"]),
        (
            "offset",
            vec!["early-1", "early-2", "mid-0", "mid-1", "late"],
        ),
        ("time", vec!["mid-0", "mid-1", "late"]),
        (
            "earliest",
            vec!["early-0", "early-1", "early-2", "mid-0", "mid-1", "late"],
        ),
    ] {
        let m = e.join("t", sub, None).await.unwrap();
        let got = fetch_all(&*e, "t", sub, &m.member_id).await;
        assert_eq!(values(&got), want, "subscription {sub}");
    }
}

/// Describe reports the lag per partition: messages between the committed offset and the
/// high watermark.
pub(crate) async fn lag(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    fill(&*e, "t", 0, "a", 4).await;
    fill(&*e, "t", 1, "b", 2).await;
    let lag_now = || {
        let e = e.clone();
        async move { lag_of(&e.describe_subscription("t", "s").await.unwrap()) }
    };
    assert_eq!(lag_now().await, [4, 2]);
    e.join("t", "s", Some("m")).await.unwrap();
    fetch_all(&*e, "t", "s", "m").await;
    assert_eq!(lag_now().await, [4, 2], "fetching is not committing");
    e.commit("t", "s", "m", vec![commit(0, 3)]).await.unwrap();
    assert_eq!(lag_now().await, [1, 2]);
    publish_one(&*e, "t", Message::new("b").to_partition(1)).await;
    assert_eq!(lag_now().await, [1, 3]);
    e.commit("t", "s", "m", vec![commit(0, 4), commit(1, 3)])
        .await
        .unwrap();
    assert_eq!(lag_now().await, [0, 0]);
    let listed = e.list_subscriptions("t").await.unwrap();
    assert_eq!(lag_of(&listed[0]), [0, 0], "list reports lag too");
}

/// A fetch waiting on an empty subscription returns as soon as a message is published.
pub(crate) async fn long_poll_fetch(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 3).await;
    e.create_subscription("t", "s", stream_from(Position::Earliest))
        .await
        .unwrap();
    e.join("t", "s", Some("m")).await.unwrap();
    let wait = Duration::from_secs(30);
    let fetcher = {
        let e = e.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = e
                .fetch(
                    "t",
                    "s",
                    "m",
                    FetchRequest {
                        wait,
                        ..FetchRequest::default()
                    },
                )
                .await;
            (r, started.elapsed())
        })
    };
    publish_one(&*e, "t", Message::new("wake up").to_partition(2)).await;
    let (r, elapsed) = tokio::time::timeout(SAFETY, fetcher)
        .await
        .expect("the waiting fetch was not woken by the publish")
        .unwrap();
    let got = r.unwrap();
    assert_eq!(values(&got), ["wake up"]);
    assert_eq!(positions(&got), [(2, 0)]);
    assert!(elapsed < wait / 2, "returned after {elapsed:?}");
}

/// Two stream subscriptions of one topic each see every message, with their own progress.
pub(crate) async fn subscriptions_are_independent(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    for sub in ["one", "two"] {
        e.create_subscription("t", sub, stream_from(Position::Earliest))
            .await
            .unwrap();
    }
    let r = e
        .publish("t", (0..6).map(|i| Message::new(format!("m{i}"))).collect())
        .await
        .unwrap();
    let mut all: Vec<(u32, u64)> = r.iter().map(|p| (p.partition, p.offset)).collect();
    all.sort();
    for sub in ["one", "two"] {
        let member = e.join("t", sub, Some("same-id")).await.unwrap();
        assert_eq!(member.partitions, [0, 1], "members are per subscription");
        let mut got = positions(&fetch_all(&*e, "t", sub, "same-id").await);
        got.sort();
        assert_eq!(got, all, "subscription {sub} sees every message");
    }
    e.commit("t", "one", "same-id", vec![commit(0, 3), commit(1, 3)])
        .await
        .unwrap();
    assert_eq!(
        committed_of(&e.describe_subscription("t", "two").await.unwrap()),
        [0, 0],
        "a commit on one does not move the other"
    );
    e.reset("t", "two", ResetTo::Latest).await.unwrap();
    assert_eq!(
        committed_of(&e.describe_subscription("t", "one").await.unwrap()),
        [3, 3],
        "a reset of one does not move the other"
    );
    e.leave("t", "one", "same-id").await.unwrap();
    assert_eq!(
        e.describe_subscription("t", "two").await.unwrap().members,
        ["same-id"]
    );
    e.delete_subscription("t", "one").await.unwrap();
    publish_one(&*e, "t", Message::new("after").to_partition(0)).await;
    let got = fetch_all(&*e, "t", "two", "same-id").await;
    assert_eq!(values(&got), ["after"]);
}
