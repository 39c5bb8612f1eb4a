//! Shared subscriptions: lifecycle, settings and request errors, leases, ack / nack / extend /
//! terminate with per-`ack_id` outcomes, backoff, lease expiry, dead letters and redrive,
//! `wharf-deliver-at` delays, ordering by key, the per-member in-flight cap, durability across
//! restarts, long-poll receives, a stream and a shared subscription on one topic, and several
//! partitions.
//!
//! Timing is exact: the settings have no backoff jitter, and every due time is checked both
//! 1 ms before (nothing) and at the moment itself (delivered).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wharf_broker::{
    AckOutcome, Committed, Delivery, Engine, Message, Position, ReadRequest, ReceiveRequest,
    ResetTo, SharedConfig, StoredMessage, SubscriptionConfig, SubscriptionInfo,
};

use super::Harness;
use super::common::{
    SAFETY, expect_code, expect_invalid, fetch_all, fetch_now, fill, high_watermarks, positions,
    publish_one, read_all, stream_from, topic, values,
};

/// The lease of [`exact`].
const LEASE_MS: i64 = 30_000;
/// The first backoff of [`exact`].
const BACKOFF_MS: i64 = 1_000;
/// Far beyond any lease, delay or backoff of these cases.
const DAY_MS: i64 = 86_400_000;

/// Shared settings with exact timing: 5 deliveries, a 30 s lease, backoff 1 s doubling up to
/// 8 s, no jitter.
fn exact() -> SharedConfig {
    SharedConfig {
        max_deliveries: 5,
        lease_ms: LEASE_MS as u64,
        backoff_initial_ms: BACKOFF_MS as u64,
        backoff_max_ms: 8_000,
        backoff_jitter_pct: 0,
        ..SharedConfig::default()
    }
}

fn shared(config: SharedConfig) -> SubscriptionConfig {
    SubscriptionConfig::Shared(config)
}

/// Creates the shared subscription `sub` on `topic`.
async fn shared_sub<E: Engine>(e: &E, topic: &str, sub: &str, config: SharedConfig) {
    e.create_subscription(topic, sub, shared(config))
        .await
        .unwrap();
}

/// The dead-letter topic of `sub` on `topic`.
fn dlq(topic: &str, sub: &str) -> String {
    format!("wharf.dlq.{topic}.{sub}")
}

/// A receive of up to `max` by `member` with the subscription's lease, not waiting.
fn request(member: &str, max: usize) -> ReceiveRequest {
    ReceiveRequest {
        member: Some(member.to_owned()),
        max,
        lease: None,
        wait: Duration::ZERO,
    }
}

/// Receives up to `max` for `member` without waiting.
async fn receive<E: Engine>(
    e: &E,
    topic: &str,
    sub: &str,
    member: &str,
    max: usize,
) -> Vec<Delivery> {
    e.receive(topic, sub, request(member, max)).await.unwrap()
}

/// Asserts that a receive got nothing; `what` says why nothing was expected.
#[track_caller]
fn assert_none(got: &[Delivery], what: &str) {
    assert!(
        got.is_empty(),
        "{what}: expected nothing, got {:?}",
        summary(got)
    );
}

/// `(value, partition, offset, delivery_count)` of each delivery, for messages.
fn summary(d: &[Delivery]) -> Vec<(String, u32, u64, u32)> {
    d.iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.message.value).into_owned(),
                d.message.partition,
                d.message.offset,
                d.delivery_count,
            )
        })
        .collect()
}

fn ids(d: &[Delivery]) -> Vec<String> {
    d.iter().map(|d| d.ack_id.clone()).collect()
}

fn dvalues(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8_lossy(&d.message.value).into_owned())
        .collect()
}

fn counts(d: &[Delivery]) -> Vec<u32> {
    d.iter().map(|d| d.delivery_count).collect()
}

/// The outcomes' error codes, checking that they answer `ids` in order.
#[track_caller]
fn errors(outcomes: &[AckOutcome], ids: &[String]) -> Vec<Option<String>> {
    let answered: Vec<&str> = outcomes.iter().map(|o| o.ack_id.as_str()).collect();
    assert_eq!(answered, ids, "one outcome per ack_id, in input order");
    outcomes.iter().map(|o| o.error.clone()).collect()
}

/// The outcomes must all be successes.
#[track_caller]
fn all_ok(outcomes: &[AckOutcome], ids: &[String]) {
    assert_eq!(errors(outcomes, ids), vec![None; ids.len()], "{outcomes:?}");
}

fn err(code: &str) -> Option<String> {
    Some(code.to_owned())
}

async fn ack<E: Engine>(e: &E, topic: &str, sub: &str, d: &[Delivery]) {
    let ids = ids(d);
    all_ok(&e.ack(topic, sub, &ids).await.unwrap(), &ids);
}

async fn nack<E: Engine>(e: &E, topic: &str, sub: &str, d: &[Delivery], delay: Option<u64>) {
    let ids = ids(d);
    all_ok(&e.nack(topic, sub, &ids, delay).await.unwrap(), &ids);
}

fn header<'a>(m: &'a StoredMessage, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Every message of the subscription's dead-letter topic, in order.
async fn dead_letters<E: Engine>(e: &E, topic: &str, sub: &str) -> Vec<StoredMessage> {
    let mut out: Vec<StoredMessage> = Vec::new();
    let mut from = Position::Earliest;
    loop {
        let r = e
            .dead_letters(topic, sub, ReadRequest::new(0, from))
            .await
            .unwrap();
        if r.messages.is_empty() {
            return out;
        }
        out.extend(r.messages);
        from = Position::Offset(r.next_offset);
    }
}

/// Checks a dead letter's headers against where it came from and why.
#[track_caller]
fn assert_dead_letter(
    m: &StoredMessage,
    (topic, partition, offset): (&str, u32, u64),
    deliveries: u32,
    reason: &str,
    time: i64,
) {
    let got = |h: &str| header(m, h).map(str::to_owned);
    assert_eq!(
        (
            got("wharf-dlq-source-topic"),
            got("wharf-dlq-source-partition"),
            got("wharf-dlq-source-offset"),
            got("wharf-dlq-deliveries"),
            got("wharf-dlq-reason"),
        ),
        (
            Some(topic.to_owned()),
            Some(partition.to_string()),
            Some(offset.to_string()),
            Some(deliveries.to_string()),
            Some(reason.to_owned()),
        ),
        "dead-letter headers of {m:?}"
    );
    let at = header(m, "wharf-dlq-time").expect("a wharf-dlq-time header");
    assert_eq!(
        wharf_broker::time::parse_rfc3339(at),
        Some(time),
        "wharf-dlq-time {at:?} is the time of dead-lettering"
    );
}

async fn topic_names<E: Engine>(e: &E) -> Vec<String> {
    e.list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect()
}

async fn describe<E: Engine>(e: &E, topic: &str, sub: &str) -> SubscriptionInfo {
    e.describe_subscription(topic, sub).await.unwrap()
}

fn committed_of(info: &SubscriptionInfo) -> Vec<u64> {
    info.partitions.iter().map(|p| p.committed).collect()
}

fn lag_of(info: &SubscriptionInfo) -> Vec<u64> {
    info.partitions.iter().map(|p| p.lag).collect()
}

/// `(in_flight, delayed, dead_lettered)`.
fn counters(info: &SubscriptionInfo) -> (u64, u64, u64) {
    (info.in_flight, info.delayed, info.dead_lettered)
}

/// Moves the clock far ahead twice, receiving in between: anything still pending (whatever
/// backoff it is in) would come out.
async fn assert_nothing_ever<H: Harness>(h: &H, e: &H::E, topic: &str, sub: &str) {
    for _ in 0..2 {
        h.advance_clock(DAY_MS);
        assert_none(
            &receive(e, topic, sub, "late", 100).await,
            "nothing is left to deliver",
        );
    }
}

/// Create, describe, list and delete; the dead-letter topic comes and goes with the
/// subscription, cannot be deleted on its own nor subscribed to, and survives a restart.
pub(crate) async fn create_describe_list_delete(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    let config = shared(SharedConfig {
        max_deliveries: 7,
        lease_ms: 45_000,
        backoff_initial_ms: 500,
        backoff_max_ms: 9_000,
        backoff_jitter_pct: 10,
        ordered_by_key: true,
        max_in_flight_per_member: 12,
        start: Position::Earliest,
        // Stored and given back as is (the server's push workers act on it).
        push: Some(wharf_broker::PushConfig {
            app: "billing".into(),
            route: "/hooks/t".into(),
            max_in_flight: 4,
            timeout_ms: 2_000,
        }),
    });
    let info = e
        .create_subscription("t", "s", config.clone())
        .await
        .unwrap();
    assert_eq!((info.topic.as_str(), info.name.as_str()), ("t", "s"));
    assert_eq!(info.config, config);
    assert_eq!(info.partitions.len(), 2);
    for (i, p) in info.partitions.iter().enumerate() {
        assert_eq!(p.partition, i as u32);
        assert_eq!((p.committed, p.lag, p.behind_retention), (0, 0, false));
    }
    assert_eq!(counters(&info), (0, 0, 0));
    assert_eq!(describe(&*e, "t", "s").await, info);

    // Its dead-letter topic: listed, one partition, empty. Stream subscriptions have none.
    let dead = dlq("t", "s");
    assert!(topic_names(&*e).await.contains(&dead), "{dead} is listed");
    let dead_info = e.describe_topic(&dead).await.unwrap();
    assert_eq!(dead_info.partitions.len(), 1);
    assert_eq!(dead_info.partitions[0].high_watermark, 0);
    e.create_subscription("t", "audit", stream_from(Position::Earliest))
        .await
        .unwrap();
    let subs: Vec<String> = e
        .list_subscriptions("t")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(subs, ["audit", "s"], "listed by name");
    assert_eq!(
        topic_names(&*e).await,
        ["t", dead.as_str()],
        "only shared subscriptions have a dead-letter topic"
    );

    // The dead-letter topic belongs to the subscription.
    expect_code(e.delete_topic(&dead).await, "invalid_argument");
    assert!(e.describe_topic(&dead).await.is_ok(), "still there");
    expect_code(
        e.create_subscription(&dead, "x", shared(exact())).await,
        "invalid_argument",
    );
    expect_code(
        e.create_subscription(&dead, "y", stream_from(Position::Earliest))
            .await,
        "invalid_argument",
    );

    // Everything survives a restart.
    drop(e);
    let e = h.restart().await;
    assert_eq!(describe(&*e, "t", "s").await, info);
    assert!(e.describe_topic(&dead).await.is_ok());

    // Dead-letter one message, then delete: the dead-letter topic goes with the subscription.
    publish_one(&*e, "t", Message::new("doomed").to_partition(0)).await;
    let d = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(dvalues(&d), ["doomed"]);
    e.terminate("t", "s", &ids(&d), "poison").await.unwrap();
    assert_eq!(describe(&*e, "t", "s").await.dead_lettered, 1);
    e.delete_subscription("t", "s").await.unwrap();
    expect_code(
        e.describe_subscription("t", "s").await,
        "subscription_not_found",
    );
    expect_code(
        e.delete_subscription("t", "s").await,
        "subscription_not_found",
    );
    expect_code(e.describe_topic(&dead).await, "topic_not_found");
    assert_eq!(topic_names(&*e).await, ["t"]);

    // The same name again starts over: no dead letters, every message available.
    let again = e
        .create_subscription("t", "s", config.clone())
        .await
        .unwrap();
    assert_eq!(counters(&again), (0, 0, 0));
    assert!(dead_letters(&*e, "t", "s").await.is_empty());
    let d = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(summary(&d), [("doomed".to_owned(), 0, 0, 1)]);

    // Deleting the topic deletes its subscriptions' dead-letter topics.
    e.delete_topic("t").await.unwrap();
    assert!(topic_names(&*e).await.is_empty());
    expect_code(e.describe_topic(&dead).await, "topic_not_found");
}

/// Creating again with the same settings succeeds and keeps the progress; other settings
/// (or the other kind) are `subscription_exists`.
pub(crate) async fn idempotent_and_conflicting_create(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    fill(&*e, "t", 0, "m", 3).await;
    let config = shared(exact());
    e.create_subscription("t", "s", config.clone())
        .await
        .unwrap();
    let first = receive(&*e, "t", "s", "a", 1).await;
    ack(&*e, "t", "s", &first).await;
    let again = e
        .create_subscription("t", "s", config.clone())
        .await
        .unwrap();
    assert_eq!(again.config, config);
    assert_eq!(
        (committed_of(&again), lag_of(&again)),
        (vec![1], vec![2]),
        "re-creating must not move the subscription"
    );
    for other in [
        shared(SharedConfig {
            max_deliveries: 6,
            ..exact()
        }),
        shared(SharedConfig {
            ordered_by_key: true,
            ..exact()
        }),
        shared(SharedConfig {
            start: Position::Latest,
            ..exact()
        }),
        stream_from(Position::Earliest),
    ] {
        expect_code(
            e.create_subscription("t", "s", other).await,
            "subscription_exists",
        );
    }
    assert_eq!(describe(&*e, "t", "s").await.config, config);
    let rest = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(dvalues(&rest), ["m-1", "m-2"], "the ack was kept");
}

/// Out-of-range settings are `invalid_argument` naming the field, and create nothing (no
/// subscription, no dead-letter topic).
pub(crate) async fn bad_settings(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    for (config, field) in [
        (
            SharedConfig {
                max_deliveries: 0,
                ..exact()
            },
            "max_deliveries",
        ),
        (
            SharedConfig {
                lease_ms: 50,
                ..exact()
            },
            "lease_ms",
        ),
        (
            SharedConfig {
                backoff_jitter_pct: 101,
                ..exact()
            },
            "backoff_jitter_pct",
        ),
        (
            SharedConfig {
                max_in_flight_per_member: 0,
                ..exact()
            },
            "max_in_flight_per_member",
        ),
    ] {
        expect_invalid(e.create_subscription("t", "s", shared(config)).await, field);
    }
    let inverted = SharedConfig {
        backoff_initial_ms: 10_000,
        backoff_max_ms: 5_000,
        ..exact()
    };
    match expect_code(
        e.create_subscription("t", "s", shared(inverted)).await,
        "invalid_argument",
    ) {
        wharf_broker::BrokerError::InvalidArgument { field, .. } => assert!(
            field == "backoff_initial_ms" || field == "backoff_max_ms",
            "names a backoff field: {field}"
        ),
        other => panic!("invalid_argument with an unexpected shape: {other:?}"),
    }
    expect_code(
        e.describe_subscription("t", "s").await,
        "subscription_not_found",
    );
    assert!(e.list_subscriptions("t").await.unwrap().is_empty());
    assert_eq!(topic_names(&*e).await, ["t"], "no dead-letter topic either");
    expect_code(
        e.create_subscription("t", "wharf.s", shared(exact())).await,
        "invalid_name",
    );
    expect_code(
        e.create_subscription("nope", "s", shared(exact())).await,
        "topic_not_found",
    );
}

/// Bad receive / ack / extend / redrive requests are `invalid_argument`; shared operations
/// on a subscription or topic that does not exist are `subscription_not_found` /
/// `topic_not_found`. None of them disturbs a live lease.
pub(crate) async fn bad_requests(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    publish_one(&*e, "t", Message::new("m")).await;
    for max in [0, 1001] {
        expect_invalid(e.receive("t", "s", request("a", max)).await, "max");
    }
    let short = ReceiveRequest {
        lease: Some(Duration::from_millis(50)),
        ..request("a", 1)
    };
    expect_invalid(e.receive("t", "s", short).await, "lease_ms");
    let d = receive(&*e, "t", "s", "a", 1).await;
    assert_eq!(dvalues(&d), ["m"], "the bad receives took nothing");
    expect_invalid(e.extend("t", "s", &ids(&d), 50).await, "lease_ms");
    expect_invalid(e.ack("t", "s", &[]).await, "ack_ids");
    expect_invalid(e.nack("t", "s", &[], None).await, "ack_ids");
    expect_invalid(e.extend("t", "s", &[], 1_000).await, "ack_ids");
    expect_invalid(e.terminate("t", "s", &[], "r").await, "ack_ids");
    expect_invalid(e.redrive("t", "s", 0).await, "max");

    let nf = "subscription_not_found";
    let any = ["x".to_owned()];
    expect_code(e.receive("t", "nope", request("a", 1)).await, nf);
    expect_code(e.ack("t", "nope", &any).await, nf);
    expect_code(e.nack("t", "nope", &any, None).await, nf);
    expect_code(e.extend("t", "nope", &any, 1_000).await, nf);
    expect_code(e.terminate("t", "nope", &any, "r").await, nf);
    expect_code(
        e.dead_letters("t", "nope", ReadRequest::new(0, Position::Earliest))
            .await,
        nf,
    );
    expect_code(e.redrive("t", "nope", 1).await, nf);
    expect_code(
        e.receive("nope", "s", request("a", 1)).await,
        "topic_not_found",
    );

    ack(&*e, "t", "s", &d).await;
}

/// Stream operations on a shared subscription, and shared operations on a stream
/// subscription, are `invalid_argument`; neither subscription is disturbed.
pub(crate) async fn wrong_kind(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "q", exact()).await;
    e.create_subscription("t", "st", stream_from(Position::Earliest))
        .await
        .unwrap();
    publish_one(&*e, "t", Message::new("m")).await;
    let bad = "invalid_argument";
    let c = vec![Committed {
        partition: 0,
        offset: 1,
    }];
    expect_code(e.join("t", "q", None).await, bad);
    expect_code(e.join("t", "q", Some("m")).await, bad);
    expect_code(e.heartbeat("t", "q", "m").await, bad);
    expect_code(e.leave("t", "q", "m").await, bad);
    expect_code(e.fetch("t", "q", "m", fetch_now()).await, bad);
    expect_code(e.commit("t", "q", "m", c).await, bad);
    expect_code(e.reset("t", "q", ResetTo::Latest).await, bad);

    let any = ["x".to_owned()];
    expect_code(e.receive("t", "st", request("a", 1)).await, bad);
    expect_code(e.ack("t", "st", &any).await, bad);
    expect_code(e.nack("t", "st", &any, None).await, bad);
    expect_code(e.extend("t", "st", &any, 1_000).await, bad);
    expect_code(e.terminate("t", "st", &any, "r").await, bad);
    expect_code(
        e.dead_letters("t", "st", ReadRequest::new(0, Position::Earliest))
            .await,
        bad,
    );
    expect_code(e.redrive("t", "st", 1).await, bad);

    // Both still work from the start.
    let d = receive(&*e, "t", "q", "a", 10).await;
    assert_eq!(summary(&d), [("m".to_owned(), 0, 0, 1)]);
    e.join("t", "st", Some("m")).await.unwrap();
    assert_eq!(values(&fetch_all(&*e, "t", "st", "m").await), ["m"]);
    assert_eq!(committed_of(&describe(&*e, "t", "st").await), [0]);
}

/// A receive leases each message to one member: nobody (the same member included) gets it
/// again while the lease lasts. A delivery counts 1 and its deadline is now + the lease (the
/// subscription's, or the request's).
pub(crate) async fn receive_leases_to_one_member(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    fill(&*e, "t", 0, "m", 3).await;
    let now = h.now_ms();
    let a = receive(&*e, "t", "s", "a", 2).await;
    assert_eq!(
        summary(&a),
        [("m-0".to_owned(), 0, 0, 1), ("m-1".to_owned(), 0, 1, 1)],
        "offset order, up to max, delivery count 1"
    );
    for d in &a {
        assert_eq!(d.lease_deadline, now + LEASE_MS, "the subscription's lease");
    }
    let b = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(dvalues(&b), ["m-2"], "only what is not leased");
    for member in ["a", "b", "c"] {
        assert_none(
            &receive(&*e, "t", "s", member, 10).await,
            "everything is leased",
        );
    }
    let all: BTreeSet<String> = ids(&a).into_iter().chain(ids(&b)).collect();
    assert_eq!(all.len(), 3, "distinct ack_ids");
    let info = describe(&*e, "t", "s").await;
    assert_eq!(counters(&info), (3, 0, 0));
    assert_eq!((committed_of(&info), lag_of(&info)), (vec![0], vec![3]));

    // A lease given with the request.
    publish_one(&*e, "t", Message::new("m-3")).await;
    let r = e
        .receive(
            "t",
            "s",
            ReceiveRequest {
                lease: Some(Duration::from_secs(5)),
                ..request("c", 10)
            },
        )
        .await
        .unwrap();
    assert_eq!(dvalues(&r), ["m-3"]);
    assert_eq!(r[0].lease_deadline, now + 5_000, "the request's lease");
    assert_eq!(r[0].delivery_count, 1);
    ack(&*e, "t", "s", &r).await;

    // The leases hold until their deadline.
    h.advance_clock(LEASE_MS - 1);
    assert_none(
        &receive(&*e, "t", "s", "c", 10).await,
        "1 ms before the deadline",
    );
    ack(&*e, "t", "s", &a).await;
    ack(&*e, "t", "s", &b).await;
    assert_eq!(committed_of(&describe(&*e, "t", "s").await), [4]);
}

/// An ack is final: never delivered again. A second ack of the same ack_id is
/// `lease_expired`, a malformed one `bad_ack_id`; a batch answers per ack_id and acks the
/// good ones.
pub(crate) async fn ack_is_final(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    fill(&*e, "t", 0, "m", 4).await;
    let d = receive(&*e, "t", "s", "a", 4).await;
    assert_eq!(d.len(), 4);
    let first = vec![d[0].ack_id.clone()];
    assert_eq!(
        errors(&e.ack("t", "s", &first).await.unwrap(), &first),
        [None]
    );
    assert_eq!(
        errors(&e.ack("t", "s", &first).await.unwrap(), &first),
        [err("lease_expired")],
        "a second ack of the same ack_id"
    );
    let garbage = vec!["garbage".to_owned(), "not an ack id".to_owned()];
    assert_eq!(
        errors(&e.ack("t", "s", &garbage).await.unwrap(), &garbage),
        [err("bad_ack_id"), err("bad_ack_id")]
    );
    let batch = vec![
        d[0].ack_id.clone(),
        d[1].ack_id.clone(),
        "garbage".to_owned(),
        d[2].ack_id.clone(),
    ];
    assert_eq!(
        errors(&e.ack("t", "s", &batch).await.unwrap(), &batch),
        [err("lease_expired"), None, err("bad_ack_id"), None],
        "per-ack_id outcomes"
    );
    let info = describe(&*e, "t", "s").await;
    assert_eq!(
        (committed_of(&info), info.in_flight),
        (vec![3], 1),
        "the good ones of the batch were acked"
    );
    ack(&*e, "t", "s", &d[3..]).await;
    let info = describe(&*e, "t", "s").await;
    assert_eq!((committed_of(&info), lag_of(&info)), (vec![4], vec![0]));
    assert_eq!(counters(&info), (0, 0, 0));
    assert_nothing_ever(&h, &*e, "t", "s").await;
    let all = ids(&d);
    assert_eq!(
        errors(&e.ack("t", "s", &all).await.unwrap(), &all),
        vec![err("lease_expired"); 4],
        "every ack_id is stale once acked"
    );
}

/// A nack gives the message back after its delay (0 = at once), or after the backoff:
/// initial, 2 × initial, … capped at the maximum. Redelivered exactly when due, never 1 ms
/// before, with the delivery count one higher each time.
pub(crate) async fn nack_delay_and_backoff(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    let config = SharedConfig {
        max_deliveries: 10,
        backoff_initial_ms: 1_000,
        backoff_max_ms: 4_000,
        ..exact()
    };
    shared_sub(&*e, "t", "s", config).await;

    // Explicit delays.
    publish_one(&*e, "t", Message::new("a")).await;
    let d = receive(&*e, "t", "s", "m", 10).await;
    assert_eq!(counts(&d), [1]);
    nack(&*e, "t", "s", &d, Some(5_000)).await;
    assert_eq!(
        errors(&e.nack("t", "s", &ids(&d), None).await.unwrap(), &ids(&d)),
        [err("lease_expired")],
        "a nacked ack_id is stale"
    );
    let info = describe(&*e, "t", "s").await;
    assert_eq!(counters(&info), (0, 1, 0), "waiting for its delay");
    assert_eq!(committed_of(&info), [0], "a nacked message is not finished");
    assert_none(
        &receive(&*e, "t", "s", "m", 10).await,
        "right after the nack",
    );
    h.advance_clock(4_999);
    assert_none(
        &receive(&*e, "t", "s", "m", 10).await,
        "1 ms before the delay",
    );
    h.advance_clock(1);
    let d = receive(&*e, "t", "s", "other", 10).await;
    assert_eq!((dvalues(&d), counts(&d)), (vec!["a".to_owned()], vec![2]));
    nack(&*e, "t", "s", &d, Some(0)).await;
    let d = receive(&*e, "t", "s", "m", 10).await;
    assert_eq!(counts(&d), [3], "a delay of 0 is at once");
    ack(&*e, "t", "s", &d).await;

    // The backoff, from the first delivery on.
    publish_one(&*e, "t", Message::new("b")).await;
    for (n, delay) in [1_000, 2_000, 4_000, 4_000].into_iter().enumerate() {
        let d = receive(&*e, "t", "s", "m", 10).await;
        assert_eq!(
            (dvalues(&d), counts(&d)),
            (vec!["b".to_owned()], vec![n as u32 + 1])
        );
        nack(&*e, "t", "s", &d, None).await;
        h.advance_clock(delay - 1);
        assert_none(
            &receive(&*e, "t", "s", "m", 10).await,
            &format!(
                "1 ms before the backoff of {delay} ms after delivery {}",
                n + 1
            ),
        );
        h.advance_clock(1);
    }
    let d = receive(&*e, "t", "s", "m", 10).await;
    assert_eq!((dvalues(&d), counts(&d)), (vec!["b".to_owned()], vec![5]));
    ack(&*e, "t", "s", &d).await;
    assert_eq!(counters(&describe(&*e, "t", "s").await), (0, 0, 0));
}

/// Extending a lease keeps the message past the old deadline; after the new deadline the
/// ack_id is stale.
pub(crate) async fn extend_lease(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    publish_one(&*e, "t", Message::new("slow")).await;
    let d = receive(&*e, "t", "s", "a", 1).await;
    let id = ids(&d);
    h.advance_clock(20_000);
    all_ok(&e.extend("t", "s", &id, 30_000).await.unwrap(), &id);
    let garbage = vec!["garbage".to_owned()];
    assert_eq!(
        errors(
            &e.extend("t", "s", &garbage, 30_000).await.unwrap(),
            &garbage
        ),
        [err("bad_ack_id")]
    );
    // The old deadline (30 s) passes; the new one is at 50 s.
    h.advance_clock(15_000);
    assert_none(
        &receive(&*e, "t", "s", "b", 10).await,
        "past the old deadline",
    );
    h.advance_clock(14_999);
    assert_none(
        &receive(&*e, "t", "s", "b", 10).await,
        "1 ms before the new deadline",
    );
    assert_eq!(describe(&*e, "t", "s").await.in_flight, 1);
    h.advance_clock(2);
    assert_eq!(
        errors(&e.ack("t", "s", &id).await.unwrap(), &id),
        [err("lease_expired")],
        "an ack after the new deadline"
    );
    assert_eq!(
        errors(&e.extend("t", "s", &id, 30_000).await.unwrap(), &id),
        [err("lease_expired")],
        "an expired lease cannot be extended"
    );
}

/// A lease that runs out is a failed delivery: the message comes back after the backoff with
/// count 2 (to anyone), and the old ack_id is stale.
pub(crate) async fn lease_expiry_redelivers(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    publish_one(&*e, "t", Message::new("lost")).await;
    let d1 = receive(&*e, "t", "s", "a", 1).await;
    h.advance_clock(LEASE_MS - 1);
    assert_none(&receive(&*e, "t", "s", "b", 10).await, "still leased");
    h.advance_clock(1);
    assert_none(
        &receive(&*e, "t", "s", "b", 10).await,
        "expired, backing off",
    );
    let id = ids(&d1);
    assert_eq!(
        errors(&e.ack("t", "s", &id).await.unwrap(), &id),
        [err("lease_expired")],
        "the expired lease's ack_id"
    );
    h.advance_clock(BACKOFF_MS - 1);
    assert_none(
        &receive(&*e, "t", "s", "b", 10).await,
        "1 ms before the backoff",
    );
    h.advance_clock(1);
    let d2 = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(summary(&d2), [("lost".to_owned(), 0, 0, 2)]);
    assert_ne!(d2[0].ack_id, d1[0].ack_id, "a new ack_id");
    for stale in [
        e.ack("t", "s", &id).await.unwrap(),
        e.nack("t", "s", &id, Some(0)).await.unwrap(),
        e.terminate("t", "s", &id, "r").await.unwrap(),
    ] {
        assert_eq!(errors(&stale, &id), [err("lease_expired")]);
    }
    ack(&*e, "t", "s", &d2).await;
    assert_nothing_ever(&h, &*e, "t", "s").await;
}

/// The backoff after an expired lease counts from the lease's deadline, whether or not
/// anyone received at that moment: a receive exactly one backoff after the deadline gets the
/// message.
pub(crate) async fn lease_expiry_backoff_counts_from_deadline(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    publish_one(&*e, "t", Message::new("lost")).await;
    let d1 = receive(&*e, "t", "s", "a", 1).await;
    assert_eq!(counts(&d1), [1]);
    // Nobody receives between the deadline (30 s) and 1 ms before it is due again (31 s).
    h.advance_clock(LEASE_MS + BACKOFF_MS - 1);
    assert_none(
        &receive(&*e, "t", "s", "b", 10).await,
        "1 ms before deadline + backoff",
    );
    h.advance_clock(1);
    let d2 = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(
        summary(&d2),
        [("lost".to_owned(), 0, 0, 2)],
        "due at deadline + backoff"
    );
}

/// An expired lease is accounted for at its deadline, not only once someone receives:
/// `describe` shows the message as delayed (backing off), and after the last allowed
/// delivery it is in the dead-letter topic, counted, and passed by the low watermark.
pub(crate) async fn expired_lease_accounted_without_receive(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    let config = SharedConfig {
        max_deliveries: 2,
        ..exact()
    };
    shared_sub(&*e, "t", "s", config).await;
    publish_one(&*e, "t", Message::new("lost")).await;
    let d = receive(&*e, "t", "s", "a", 1).await;
    assert_eq!(counts(&d), [1]);
    h.advance_clock(LEASE_MS);
    assert_eq!(
        counters(&describe(&*e, "t", "s").await),
        (0, 1, 0),
        "(in_flight, delayed, dead_lettered) right after the lease ran out"
    );
    h.advance_clock(BACKOFF_MS);
    let d = receive(&*e, "t", "s", "a", 1).await;
    assert_eq!(counts(&d), [2]);
    h.advance_clock(LEASE_MS);
    let info = describe(&*e, "t", "s").await;
    assert_eq!(
        (counters(&info), committed_of(&info)),
        ((0, 0, 1), vec![1]),
        "the last lease ran out: dead-lettered"
    );
    let dl = dead_letters(&*e, "t", "s").await;
    assert_eq!(values(&dl), ["lost"]);
    assert_eq!(header(&dl[0], "wharf-dlq-reason"), Some("lease_expired"));
    assert_eq!(header(&dl[0], "wharf-dlq-deliveries"), Some("2"));
}

/// The dead-letter topic belongs to its subscription: a direct publish to it is refused
/// (`invalid_argument`) and stores nothing — otherwise redrive would deliver a message that
/// never was in the topic.
pub(crate) async fn dead_letter_topic_refuses_publish(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    let dead = dlq("t", "s");
    expect_code(
        e.publish(&dead, vec![Message::new("injected")]).await,
        "invalid_argument",
    );
    assert_eq!(high_watermarks(&*e, &dead).await, [0], "nothing stored");
    assert_eq!(describe(&*e, "t", "s").await.dead_lettered, 0);
    assert_eq!(e.redrive("t", "s", 10).await.unwrap(), 0);
    assert_none(&receive(&*e, "t", "s", "a", 10).await, "nothing to deliver");
}

/// After `max_deliveries` failed deliveries — by nack or by lease expiry — the message goes
/// to the dead-letter topic with the headers saying why, is never delivered again, is counted
/// in `dead_lettered`, and the subscription's low watermark passes it.
pub(crate) async fn max_deliveries_dead_letters(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    let config = SharedConfig {
        max_deliveries: 2,
        ..exact()
    };
    shared_sub(&*e, "t", "s", config).await;

    // By nack.
    publish_one(
        &*e,
        "t",
        Message::new("poisoned")
            .with_key("k0")
            .with_header("x-trace", "abc"),
    )
    .await;
    let d = receive(&*e, "t", "s", "a", 10).await;
    nack(&*e, "t", "s", &d, None).await;
    h.advance_clock(BACKOFF_MS);
    let d = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(counts(&d), [2]);
    nack(&*e, "t", "s", &d, None).await;
    let nacked_at = h.now_ms();
    let dl = dead_letters(&*e, "t", "s").await;
    assert_eq!(values(&dl), ["poisoned"]);
    assert_eq!(dl[0].key.as_deref(), Some(&b"k0"[..]), "the key is kept");
    assert_eq!(header(&dl[0], "x-trace"), Some("abc"), "headers are kept");
    assert_dead_letter(&dl[0], ("t", 0, 0), 2, "nack", nacked_at);
    let info = describe(&*e, "t", "s").await;
    assert_eq!(counters(&info), (0, 0, 1));
    assert_eq!((committed_of(&info), lag_of(&info)), (vec![1], vec![0]));
    let id = ids(&d);
    assert_eq!(
        errors(&e.ack("t", "s", &id).await.unwrap(), &id),
        [err("lease_expired")],
        "the last delivery's ack_id is stale"
    );

    // By lease expiry.
    publish_one(&*e, "t", Message::new("slow")).await;
    let d = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(summary(&d), [("slow".to_owned(), 0, 1, 1)]);
    h.advance_clock(LEASE_MS);
    assert_none(&receive(&*e, "t", "s", "a", 10).await, "backing off");
    h.advance_clock(BACKOFF_MS);
    let d = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(summary(&d), [("slow".to_owned(), 0, 1, 2)]);
    h.advance_clock(LEASE_MS);
    assert_none(
        &receive(&*e, "t", "s", "a", 10).await,
        "the last lease expired",
    );
    let expired_at = h.now_ms();
    let dl = dead_letters(&*e, "t", "s").await;
    assert_eq!(values(&dl), ["poisoned", "slow"]);
    assert_dead_letter(&dl[1], ("t", 0, 1), 2, "lease_expired", expired_at);
    let info = describe(&*e, "t", "s").await;
    assert_eq!(counters(&info), (0, 0, 2));
    assert_eq!((committed_of(&info), lag_of(&info)), (vec![2], vec![0]));

    // The dead-letter topic is a topic like any other to read.
    let dead = dlq("t", "s");
    assert_eq!(read_all(&*e, &dead, 0).await, dl);
    assert_eq!(high_watermarks(&*e, &dead).await, [2]);
    assert_nothing_ever(&h, &*e, "t", "s").await;
    assert_eq!(dead_letters(&*e, "t", "s").await.len(), 2);
}

/// Terminate sends a delivery straight to the dead-letter topic with the given reason,
/// whatever its count.
pub(crate) async fn terminate_dead_letters(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    fill(&*e, "t", 0, "m", 2).await;
    let d = receive(&*e, "t", "s", "a", 10).await;
    let first = ids(&d[..1]);
    all_ok(
        &e.terminate("t", "s", &first, "poison").await.unwrap(),
        &first,
    );
    let t1 = h.now_ms();
    assert_eq!(
        errors(
            &e.terminate("t", "s", &first, "again").await.unwrap(),
            &first
        ),
        [err("lease_expired")]
    );
    let garbage = vec!["garbage".to_owned()];
    assert_eq!(
        errors(
            &e.terminate("t", "s", &garbage, "x").await.unwrap(),
            &garbage
        ),
        [err("bad_ack_id")]
    );
    // The second message after a retry.
    nack(&*e, "t", "s", &d[1..], Some(0)).await;
    h.advance_clock(10);
    let d2 = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(summary(&d2), [("m-1".to_owned(), 0, 1, 2)]);
    let second = ids(&d2);
    all_ok(
        &e.terminate("t", "s", &second, "gave up").await.unwrap(),
        &second,
    );
    let dl = dead_letters(&*e, "t", "s").await;
    assert_eq!(values(&dl), ["m-0", "m-1"]);
    assert_dead_letter(&dl[0], ("t", 0, 0), 1, "poison", t1);
    assert_dead_letter(&dl[1], ("t", 0, 1), 2, "gave up", t1 + 10);
    let info = describe(&*e, "t", "s").await;
    assert_eq!(counters(&info), (0, 0, 2));
    assert_eq!(committed_of(&info), [2]);
    assert_nothing_ever(&h, &*e, "t", "s").await;
}

/// Redrive moves exactly `max` dead letters (in dead-letter order) back to this subscription
/// only: they are delivered again with count 1 and their original partition and offset;
/// other subscriptions of the topic see nothing new. `dead_lettered` drops; a redriven
/// message that fails again is dead-lettered again; redriving an empty backlog returns 0.
pub(crate) async fn redrive(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    shared_sub(&*e, "t", "s", exact()).await;
    shared_sub(&*e, "t", "other", exact()).await;
    e.create_subscription("t", "audit", stream_from(Position::Earliest))
        .await
        .unwrap();
    fill(&*e, "t", 0, "a", 2).await;
    fill(&*e, "t", 1, "b", 2).await;

    // s dead-letters all four, in the order a-1, b-0, a-0, b-1.
    let d = receive(&*e, "t", "s", "w", 10).await;
    assert_eq!(d.len(), 4);
    let by_value = |v: &str| d.iter().find(|d| d.message.value == v.as_bytes()).unwrap();
    for v in ["a-1", "b-0", "a-0", "b-1"] {
        let id = vec![by_value(v).ack_id.clone()];
        all_ok(&e.terminate("t", "s", &id, "poison").await.unwrap(), &id);
    }
    let info = describe(&*e, "t", "s").await;
    assert_eq!((committed_of(&info), info.dead_lettered), (vec![2, 2], 4));
    // other acks everything; audit consumes and commits everything.
    let o = receive(&*e, "t", "other", "w", 10).await;
    assert_eq!(o.len(), 4);
    ack(&*e, "t", "other", &o).await;
    e.join("t", "audit", Some("m")).await.unwrap();
    assert_eq!(fetch_all(&*e, "t", "audit", "m").await.len(), 4);
    let all = vec![
        Committed {
            partition: 0,
            offset: 2,
        },
        Committed {
            partition: 1,
            offset: 2,
        },
    ];
    e.commit("t", "audit", "m", all).await.unwrap();

    assert_eq!(e.redrive("t", "s", 3).await.unwrap(), 3, "exactly max");
    assert_eq!(describe(&*e, "t", "s").await.dead_lettered, 1);
    let r = receive(&*e, "t", "s", "w", 10).await;
    let mut got = summary(&r);
    got.sort();
    assert_eq!(
        got,
        [
            ("a-0".to_owned(), 0, 0, 1),
            ("a-1".to_owned(), 0, 1, 1),
            ("b-0".to_owned(), 1, 0, 1),
        ],
        "the first three dead letters, as the original messages, starting over"
    );
    assert_none(&receive(&*e, "t", "s", "w", 10).await, "b-1 stays dead");
    // Nobody else sees them.
    assert_none(
        &receive(&*e, "t", "other", "w", 10).await,
        "another shared subscription",
    );
    assert_eq!(describe(&*e, "t", "other").await.dead_lettered, 0);
    assert!(
        fetch_all(&*e, "t", "audit", "m").await.is_empty(),
        "a stream subscription sees nothing new"
    );
    assert_eq!(
        high_watermarks(&*e, "t").await,
        [2, 2],
        "the topic is untouched"
    );
    ack(&*e, "t", "s", &r).await;
    assert_eq!(committed_of(&describe(&*e, "t", "s").await), [2, 2]);

    // The rest; a redriven message that fails again goes back to the dead-letter topic.
    assert_eq!(e.redrive("t", "s", 10).await.unwrap(), 1);
    assert_eq!(describe(&*e, "t", "s").await.dead_lettered, 0);
    let r = receive(&*e, "t", "s", "w", 10).await;
    assert_eq!(summary(&r), [("b-1".to_owned(), 1, 1, 1)]);
    let id = ids(&r);
    all_ok(&e.terminate("t", "s", &id, "again").await.unwrap(), &id);
    assert_eq!(describe(&*e, "t", "s").await.dead_lettered, 1);
    let dl = dead_letters(&*e, "t", "s").await;
    let last = dl.last().expect("the new dead letter");
    assert_eq!(&last.value[..], b"b-1");
    assert_dead_letter(last, ("t", 1, 1), 1, "again", h.now_ms());
    assert_eq!(e.redrive("t", "s", 10).await.unwrap(), 1);
    let r = receive(&*e, "t", "s", "w", 10).await;
    assert_eq!(summary(&r), [("b-1".to_owned(), 1, 1, 1)]);
    ack(&*e, "t", "s", &r).await;

    assert_eq!(e.redrive("t", "s", 10).await.unwrap(), 0, "nothing left");
    assert_eq!(e.redrive("t", "other", 10).await.unwrap(), 0, "never any");
    assert_eq!(counters(&describe(&*e, "t", "s").await), (0, 0, 0));
    assert_nothing_ever(&h, &*e, "t", "s").await;
    assert_nothing_ever(&h, &*e, "t", "other").await;
}

/// `wharf-deliver-at` delays a message's first delivery on shared subscriptions until that
/// time (any RFC 3339 offset); a time in the past is at once; a malformed one fails the
/// publish with `invalid_argument` and stores nothing. A stream subscription reads delayed
/// messages at once.
pub(crate) async fn deliver_at_delays(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    e.create_subscription("t", "st", stream_from(Position::Earliest))
        .await
        .unwrap();
    let t0 = h.now_ms();
    let rfc = wharf_broker::time::format_rfc3339;
    // t0 + 30 s, written as the local time of a zone one hour ahead of UTC.
    let plus_one_hour = rfc(t0 + 30_000 + 3_600_000).replace('Z', "+01:00");
    let at =
        |v: &str, when: String| Message::new(v.to_owned()).with_header("wharf-deliver-at", when);
    e.publish(
        "t",
        vec![
            Message::new("now"),
            at("future", rfc(t0 + 60_000)),
            at("past", rfc(t0 - 60_000)),
            at("zoned", plus_one_hour),
        ],
    )
    .await
    .unwrap();

    e.join("t", "st", Some("m")).await.unwrap();
    assert_eq!(
        values(&fetch_all(&*e, "t", "st", "m").await),
        ["now", "future", "past", "zoned"],
        "a stream subscription ignores delays"
    );

    let d = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(dvalues(&d), ["now", "past"]);
    ack(&*e, "t", "s", &d).await;
    let info = describe(&*e, "t", "s").await;
    assert_eq!(counters(&info), (0, 2, 0));
    assert_eq!(committed_of(&info), [1], "future is not finished");
    h.advance_clock(29_999);
    assert_none(&receive(&*e, "t", "s", "a", 10).await, "1 ms before zoned");
    h.advance_clock(1);
    let d = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(summary(&d), [("zoned".to_owned(), 0, 3, 1)]);
    ack(&*e, "t", "s", &d).await;
    h.advance_clock(29_999);
    assert_none(&receive(&*e, "t", "s", "a", 10).await, "1 ms before future");
    h.advance_clock(1);
    let d = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(summary(&d), [("future".to_owned(), 0, 1, 1)]);
    ack(&*e, "t", "s", &d).await;
    assert_eq!(committed_of(&describe(&*e, "t", "s").await), [4]);

    // Malformed times store nothing, alone or in a batch.
    for bad in ["tomorrow", "1700000000000", "2026-11-26 10:00"] {
        expect_invalid(
            e.publish("t", vec![at("bad", bad.to_owned())]).await,
            "wharf-deliver-at",
        );
        expect_invalid(
            e.publish("t", vec![Message::new("good"), at("bad", bad.to_owned())])
                .await,
            "wharf-deliver-at",
        );
    }
    assert_eq!(high_watermarks(&*e, "t").await, [4], "nothing stored");
    assert_nothing_ever(&h, &*e, "t", "s").await;
}

/// With `ordered_by_key`, a key has one message in flight at a time, in offset order:
/// while one is leased (or waiting after a nack) the next of its key waits; other keys and
/// keyless messages do not.
pub(crate) async fn ordered_by_key(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    let config = SharedConfig {
        ordered_by_key: true,
        ..exact()
    };
    shared_sub(&*e, "t", "s", config).await;
    let keyed = |k: &str, v: &str| Message::new(v.to_owned()).with_key(k.to_owned());
    e.publish(
        "t",
        vec![
            keyed("K", "k0"),
            keyed("K", "k1"),
            keyed("L", "l0"),
            keyed("K", "k2"),
            Message::new("n0"),
            keyed("L", "l1"),
            Message::new("n1"),
        ],
    )
    .await
    .unwrap();
    let first = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(dvalues(&first), ["k0", "l0", "n0", "n1"]);
    assert_none(
        &receive(&*e, "t", "s", "b", 10).await,
        "k1, k2 and l1 wait for their keys",
    );
    let (k0, l0) = (&first[..1], &first[1..2]);
    ack(&*e, "t", "s", k0).await;
    let k1 = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(dvalues(&k1), ["k1"], "the next of K, not k2 nor l1");
    nack(&*e, "t", "s", &k1, Some(5_000)).await;
    assert_none(
        &receive(&*e, "t", "s", "b", 10).await,
        "k2 waits behind the nacked k1",
    );
    ack(&*e, "t", "s", l0).await;
    let l1 = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(dvalues(&l1), ["l1"]);
    ack(&*e, "t", "s", &l1).await;
    h.advance_clock(5_000);
    let k1 = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(
        (dvalues(&k1), counts(&k1)),
        (vec!["k1".to_owned()], vec![2]),
        "k1 again, before k2"
    );
    ack(&*e, "t", "s", &k1).await;
    let k2 = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(dvalues(&k2), ["k2"]);
    ack(&*e, "t", "s", &k2).await;
    ack(&*e, "t", "s", &first[2..]).await;
    assert_eq!(committed_of(&describe(&*e, "t", "s").await), [7]);
}

/// A member holding `max_in_flight_per_member` deliveries gets nothing more until it
/// finishes one; other members still receive.
pub(crate) async fn max_in_flight_per_member(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    let config = SharedConfig {
        max_in_flight_per_member: 2,
        ..exact()
    };
    shared_sub(&*e, "t", "s", config).await;
    fill(&*e, "t", 0, "m", 6).await;
    let a = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(dvalues(&a), ["m-0", "m-1"], "capped at 2");
    assert_none(&receive(&*e, "t", "s", "a", 10).await, "a is at its cap");
    let b = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(dvalues(&b), ["m-2", "m-3"], "another member still receives");
    ack(&*e, "t", "s", &a[..1]).await;
    let a2 = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(dvalues(&a2), ["m-4"], "one slot freed");
    assert_none(
        &receive(&*e, "t", "s", "a", 10).await,
        "a is at its cap again",
    );
    nack(&*e, "t", "s", &a[1..], Some(0)).await;
    let a3 = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(
        summary(&a3),
        [("m-1".to_owned(), 0, 1, 2)],
        "a nack frees a slot too (offset order: m-1 before m-5)"
    );
    let c = receive(&*e, "t", "s", "c", 10).await;
    assert_eq!(dvalues(&c), ["m-5"]);
    for d in [&b, &a2, &a3, &c] {
        ack(&*e, "t", "s", d).await;
    }
    assert_eq!(committed_of(&describe(&*e, "t", "s").await), [6]);
}

/// Across restarts: acks stay (never redelivered), delivery counts continue, leased messages
/// are available again at once, old ack_ids are `lease_expired`, and a nack's delay still
/// holds.
pub(crate) async fn restart_keeps_acks_counts_and_delays(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    fill(&*e, "t", 0, "m", 5).await;
    let d = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(d.len(), 5);
    ack(&*e, "t", "s", &d[0..1]).await;
    nack(&*e, "t", "s", &d[1..2], Some(60_000)).await;
    // m-3 delivered three times in all.
    nack(&*e, "t", "s", &d[3..4], Some(0)).await;
    let m3 = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(summary(&m3), [("m-3".to_owned(), 0, 3, 2)]);
    nack(&*e, "t", "s", &m3, Some(0)).await;
    let m3 = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(summary(&m3), [("m-3".to_owned(), 0, 3, 3)]);
    // Leased at the restart: m-2 and m-4 (count 1), m-3 (count 3).
    let held: Vec<String> = [&d[2], &m3[0], &d[4]]
        .iter()
        .map(|d| d.ack_id.clone())
        .collect();

    drop(e);
    let e = h.restart().await;
    assert_eq!(
        errors(&e.ack("t", "s", &held).await.unwrap(), &held),
        vec![err("lease_expired"); 3],
        "ack_ids from before the restart are stale"
    );
    let r = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(
        summary(&r),
        [
            ("m-2".to_owned(), 0, 2, 2),
            ("m-3".to_owned(), 0, 3, 4),
            ("m-4".to_owned(), 0, 4, 2),
        ],
        "leased messages at once, with their counts continued; m-0 acked, m-1 delayed"
    );
    let info = describe(&*e, "t", "s").await;
    assert_eq!(counters(&info), (3, 1, 0));
    assert_eq!(committed_of(&info), [1]);
    ack(&*e, "t", "s", &r).await;
    h.advance_clock(59_999);
    assert_none(
        &receive(&*e, "t", "s", "b", 10).await,
        "the nack's 60 s delay survived the restart",
    );
    h.advance_clock(1);
    let m1 = receive(&*e, "t", "s", "b", 10).await;
    assert_eq!(summary(&m1), [("m-1".to_owned(), 0, 1, 2)]);
    ack(&*e, "t", "s", &m1).await;

    // Acks made after a restart survive the next one.
    drop(e);
    let e = h.restart().await;
    let info = describe(&*e, "t", "s").await;
    assert_eq!((committed_of(&info), counters(&info)), (vec![5], (0, 0, 0)));
    assert_nothing_ever(&h, &*e, "t", "s").await;
}

/// Across restarts: the dead letters stay, and the redrive cursor too (nothing is redriven
/// twice, nothing redriven is lost, and redriven copies keep their counts).
pub(crate) async fn restart_keeps_dead_letters_and_redrive(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    fill(&*e, "t", 0, "x", 3).await;
    let d = receive(&*e, "t", "s", "a", 10).await;
    let all = ids(&d);
    all_ok(&e.terminate("t", "s", &all, "poison").await.unwrap(), &all);
    let dead_at = h.now_ms();
    assert_eq!(e.redrive("t", "s", 1).await.unwrap(), 1);

    drop(e);
    let e = h.restart().await;
    let info = describe(&*e, "t", "s").await;
    assert_eq!((committed_of(&info), counters(&info)), (vec![3], (0, 0, 2)));
    let dl = dead_letters(&*e, "t", "s").await;
    assert_eq!(values(&dl), ["x-0", "x-1", "x-2"]);
    for (i, m) in dl.iter().enumerate() {
        assert_dead_letter(m, ("t", 0, i as u64), 1, "poison", dead_at);
    }
    let r = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(
        summary(&r),
        [("x-0".to_owned(), 0, 0, 1)],
        "the redriven copy survived"
    );
    ack(&*e, "t", "s", &r).await;
    assert_eq!(e.redrive("t", "s", 10).await.unwrap(), 2, "not x-0 again");
    let r = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(
        summary(&r),
        [("x-1".to_owned(), 0, 1, 1), ("x-2".to_owned(), 0, 2, 1)]
    );

    // Leased redriven copies come back after a restart with their counts.
    drop(e);
    let e = h.restart().await;
    let r = receive(&*e, "t", "s", "a", 10).await;
    assert_eq!(
        summary(&r),
        [("x-1".to_owned(), 0, 1, 2), ("x-2".to_owned(), 0, 2, 2)]
    );
    ack(&*e, "t", "s", &r).await;

    drop(e);
    let e = h.restart().await;
    assert_eq!(e.redrive("t", "s", 10).await.unwrap(), 0);
    assert_eq!(counters(&describe(&*e, "t", "s").await), (0, 0, 0));
    assert_eq!(dead_letters(&*e, "t", "s").await.len(), 3);
    assert_nothing_ever(&h, &*e, "t", "s").await;
}

/// A receive with a long wait returns as soon as a publish arrives (on any partition).
pub(crate) async fn long_poll_woken_by_publish(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    shared_sub(&*e, "t", "s", exact()).await;
    let wait = Duration::from_secs(30);
    let receiver = {
        let e = e.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = e
                .receive(
                    "t",
                    "s",
                    ReceiveRequest {
                        wait,
                        ..request("a", 10)
                    },
                )
                .await;
            (r, started.elapsed())
        })
    };
    publish_one(&*e, "t", Message::new("hello").to_partition(1)).await;
    let (r, elapsed) = tokio::time::timeout(SAFETY, receiver)
        .await
        .expect("the waiting receive was not woken by the publish")
        .unwrap();
    let r = r.unwrap();
    assert_eq!(summary(&r), [("hello".to_owned(), 1, 0, 1)]);
    assert!(elapsed < wait / 2, "returned after {elapsed:?}");
}

/// A receive waiting while the only message is leased returns as soon as the holder nacks
/// it with delay 0.
pub(crate) async fn long_poll_woken_by_nack(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 1).await;
    shared_sub(&*e, "t", "s", exact()).await;
    publish_one(&*e, "t", Message::new("only")).await;
    let held = receive(&*e, "t", "s", "a", 1).await;
    let wait = Duration::from_secs(30);
    let receiver = {
        let e = e.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = e
                .receive(
                    "t",
                    "s",
                    ReceiveRequest {
                        wait,
                        ..request("b", 10)
                    },
                )
                .await;
            (r, started.elapsed())
        })
    };
    // Lets the receive start waiting first, so the nack's wake-up is what is tested; if it
    // has not, it finds the message at once — the outcome is the same either way.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    nack(&*e, "t", "s", &held, Some(0)).await;
    let (r, elapsed) = tokio::time::timeout(SAFETY, receiver)
        .await
        .expect("the waiting receive was not woken by the nack")
        .unwrap();
    let r = r.unwrap();
    assert_eq!(summary(&r), [("only".to_owned(), 0, 0, 2)]);
    assert!(elapsed < wait / 2, "returned after {elapsed:?}");
}

/// A stream and a shared subscription on one topic each see every message, and neither's
/// progress moves the other: shared acks do not touch the stream's fetch positions or
/// commits, and stream commits do not touch the shared deliveries.
pub(crate) async fn stream_and_shared_on_one_topic_are_independent(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 2).await;
    shared_sub(&*e, "t", "work", exact()).await;
    e.create_subscription("t", "audit", stream_from(Position::Earliest))
        .await
        .unwrap();
    let published = e
        .publish("t", (0..6).map(|i| Message::new(format!("m{i}"))).collect())
        .await
        .unwrap();
    let mut all: Vec<(u32, u64)> = published.iter().map(|p| (p.partition, p.offset)).collect();
    all.sort();

    // The stream subscription consumes and commits everything first.
    e.join("t", "audit", Some("m")).await.unwrap();
    let mut seen = positions(&fetch_all(&*e, "t", "audit", "m").await);
    seen.sort();
    assert_eq!(seen, all, "the stream subscription sees every message");
    let ends: Vec<Committed> = (0..2)
        .map(|p| Committed {
            partition: p,
            offset: 3,
        })
        .collect();
    e.commit("t", "audit", "m", ends.clone()).await.unwrap();

    // The shared subscription still gets every message.
    let info = describe(&*e, "t", "work").await;
    assert_eq!(
        (committed_of(&info), lag_of(&info)),
        (vec![0, 0], vec![3, 3]),
        "a stream commit does not move the shared subscription"
    );
    let d = receive(&*e, "t", "work", "w", 100).await;
    let mut got: Vec<(u32, u64)> = d
        .iter()
        .map(|d| (d.message.partition, d.message.offset))
        .collect();
    got.sort();
    assert_eq!(got, all, "the shared subscription sees every message");
    assert!(d.iter().all(|d| d.delivery_count == 1));
    ack(&*e, "t", "work", &d).await;
    assert_eq!(committed_of(&describe(&*e, "t", "work").await), [3, 3]);

    // The shared acks left the stream subscription where it was.
    let audit = describe(&*e, "t", "audit").await;
    assert_eq!(committed_of(&audit), [3, 3]);
    assert!(fetch_all(&*e, "t", "audit", "m").await.is_empty());
    e.reset("t", "audit", ResetTo::Earliest).await.unwrap();
    let mut again = positions(&fetch_all(&*e, "t", "audit", "m").await);
    again.sort();
    assert_eq!(
        again, all,
        "acked messages are still in the log for the stream"
    );

    // New messages: the stream commits them before the shared subscription receives them.
    let more = e
        .publish(
            "t",
            vec![
                Message::new("n0").to_partition(0),
                Message::new("n1").to_partition(1),
            ],
        )
        .await
        .unwrap();
    assert!(more.iter().all(|p| p.offset == 3));
    let mut fetched = values(&fetch_all(&*e, "t", "audit", "m").await);
    fetched.sort();
    assert_eq!(
        fetched,
        ["n0", "n1"],
        "the stream continues after the replay"
    );
    let ends: Vec<Committed> = (0..2)
        .map(|p| Committed {
            partition: p,
            offset: 4,
        })
        .collect();
    assert_eq!(
        e.commit("t", "audit", "m", ends.clone()).await.unwrap(),
        ends
    );
    let d = receive(&*e, "t", "work", "w", 100).await;
    let mut got = dvalues(&d);
    got.sort();
    assert_eq!(got, ["n0", "n1"], "only the new ones, each once");
    // And a shared nack / dead letter does not show in the stream either.
    let id = ids(&d[..1]);
    all_ok(&e.terminate("t", "work", &id, "poison").await.unwrap(), &id);
    nack(&*e, "t", "work", &d[1..], Some(0)).await;
    assert!(fetch_all(&*e, "t", "audit", "m").await.is_empty());
    assert_eq!(committed_of(&describe(&*e, "t", "audit").await), [4, 4]);
    assert_eq!(high_watermarks(&*e, "t").await, [4, 4]);
}

/// With several partitions, a receive spans them, and `describe` reports each partition's
/// low watermark (everything below finished) and lag.
pub(crate) async fn multiple_partitions(mut h: impl Harness) {
    let e = h.start().await;
    topic(&*e, "t", 3).await;
    shared_sub(&*e, "t", "s", exact()).await;
    for p in 0..3 {
        fill(&*e, "t", p, &format!("p{p}"), 3).await;
    }
    let d = receive(&*e, "t", "s", "a", 100).await;
    let mut got: Vec<(u32, u64)> = d
        .iter()
        .map(|d| (d.message.partition, d.message.offset))
        .collect();
    got.sort();
    let want: Vec<(u32, u64)> = (0..3).flat_map(|p| (0..3).map(move |o| (p, o))).collect();
    assert_eq!(
        got, want,
        "one receive spans every partition, each message once"
    );
    let at = |p: u32, o: u64| -> Vec<Delivery> {
        d.iter()
            .filter(|d| (d.message.partition, d.message.offset) == (p, o))
            .cloned()
            .collect()
    };
    for (p, o) in [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 0)] {
        ack(&*e, "t", "s", &at(p, o)).await;
    }
    let info = describe(&*e, "t", "s").await;
    assert_eq!(
        (committed_of(&info), lag_of(&info)),
        (vec![3, 0, 1], vec![0, 3, 2]),
        "per-partition low watermarks"
    );
    assert_eq!(info.in_flight, 3);
    ack(&*e, "t", "s", &at(1, 0)).await;
    nack(&*e, "t", "s", &at(2, 1), Some(5_000)).await;
    ack(&*e, "t", "s", &at(2, 2)).await;
    let info = describe(&*e, "t", "s").await;
    assert_eq!(
        (committed_of(&info), lag_of(&info)),
        (vec![3, 3, 1], vec![0, 0, 2]),
        "p2 waits for its nacked offset 1"
    );
    assert_eq!(counters(&info), (0, 1, 0));
    h.advance_clock(5_000);
    let r = receive(&*e, "t", "s", "a", 100).await;
    assert_eq!(summary(&r), [("p2-1".to_owned(), 2, 1, 2)]);
    ack(&*e, "t", "s", &r).await;
    assert_eq!(committed_of(&describe(&*e, "t", "s").await), [3, 3, 3]);

    // One message per partition: a receive of 3 takes one from each.
    for p in 0..3 {
        publish_one(&*e, "t", Message::new(format!("late-{p}")).to_partition(p)).await;
    }
    let r = receive(&*e, "t", "s", "a", 3).await;
    let mut parts: Vec<u32> = r.iter().map(|d| d.message.partition).collect();
    parts.sort();
    assert_eq!(parts, [0, 1, 2]);
    assert!(r.iter().all(|d| d.message.offset == 3));
    ack(&*e, "t", "s", &r).await;
    let info = describe(&*e, "t", "s").await;
    assert_eq!(
        (committed_of(&info), lag_of(&info)),
        (vec![4, 4, 4], vec![0, 0, 0])
    );
}
