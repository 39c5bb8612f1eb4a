//! The client against a real server (`wharf_test::TestServer`) over gRPC:
//!
//! - errors carry their kind and the server's stable code (`topic_not_found` → `NotFound`, ...);
//! - the admin calls round-trip (topics, queues, subscriptions, stats, reset);
//! - read, join/fetch/commit/heartbeat/leave;
//! - the stream consumer yields what was published, commits, and a new member resumes after
//!   the commit;
//! - the queue consumer acks, nacks (redelivered) and terminates (a dead letter listed by
//!   `dead_letters`, then redriven); unary receive and settle;
//! - a bearer token is sent on every call; TLS with a private CA.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use wharf_client::{
    Client, ErrorKind, FetchOptions, Message, Position, PublisherOptions, QueueConsumerOptions,
    ReadOptions, ReceiveOptions, ResetTo, SharedConfig, StreamConsumerOptions, SubscriptionConfig,
    TopicConfig,
};
use wharf_server::config::TokenConfig;
use wharf_test::TestServer;

/// Every wait is bounded by this (generous: a loaded 2-core machine).
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
}

async fn client(server: &TestServer) -> Client {
    Client::connect(server.base.clone()).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_kind_and_code() {
    let server = TestServer::start().await;
    let c = client(&server).await;

    let e = c.get_topic("nope").await.expect_err("no topic");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(e.code(), Some("topic_not_found"));
    assert_eq!(e.grpc_code(), Some(tonic::Code::NotFound));
    assert!(!e.is_retryable());
    assert!(!e.message().is_empty());

    let e = c
        .publish("nope", [Message::new("x")])
        .await
        .expect_err("no topic");
    assert_eq!(e.code(), Some("topic_not_found"));

    c.create_topic("t", TopicConfig::with_partitions(2))
        .await
        .expect("create");
    // Idempotent with the same settings; a conflict with others.
    c.create_topic("t", TopicConfig::with_partitions(2))
        .await
        .expect("same settings");
    let e = c
        .create_topic("t", TopicConfig::with_partitions(3))
        .await
        .expect_err("other settings");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(e.code(), Some("topic_exists"));

    let e = c
        .create_topic("bad name!", TopicConfig::default())
        .await
        .expect_err("bad name");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(e.code(), Some("invalid_name"));

    let e = c
        .get_subscription("t", "none")
        .await
        .expect_err("no subscription");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.code(), Some("subscription_not_found"));

    let e = c
        .read("t", 7, ReadOptions::default())
        .await
        .expect_err("no partition");
    assert_eq!(e.code(), Some("partition_not_found"));

    // A stream operation on a shared subscription.
    c.create_subscription("t", "work", SubscriptionConfig::shared())
        .await
        .expect("shared");
    let e = c
        .stream_consumer("t", "work", StreamConsumerOptions::default())
        .await
        .expect_err("wrong kind");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(e.code(), Some("wrong_kind"));
    let e = c
        .queue_consumer("t", "none", QueueConsumerOptions::default())
        .await
        .expect_err("no subscription");
    assert_eq!(e.code(), Some("subscription_not_found"));

    let e = c
        .commit("t", "work", "nobody", &[(0, 1)])
        .await
        .expect_err("not a member");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.code().is_some());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_round_trip() {
    let server = TestServer::start().await;
    let c = client(&server).await;

    let t = c
        .create_topic(
            "orders",
            TopicConfig {
                dedup_window: Some(Duration::from_secs(600)),
                ..TopicConfig::with_partitions(2)
            },
        )
        .await
        .expect("create");
    assert_eq!(t.name, "orders");
    assert_eq!(t.partitions.len(), 2);
    let config = t.config.expect("config");
    assert_eq!(config.partitions, Some(2));
    assert_eq!(config.dedup_window_ms, Some(600_000));
    assert_eq!(c.get_topic("orders").await.expect("get").name, "orders");

    c.create_queue("emails", TopicConfig::default(), SharedConfig::default())
        .await
        .expect("queue");
    let names: BTreeSet<String> = c
        .list_topics()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(
        names.contains("orders") && names.contains("emails"),
        "{names:?}"
    );

    let sub = c
        .create_subscription("orders", "billing", SubscriptionConfig::stream())
        .await
        .expect("subscription");
    assert_eq!(sub.name, "billing");
    assert!(matches!(
        sub.config,
        Some(wharf_client::proto::subscription::Config::Stream(_))
    ));
    c.create_subscription(
        "orders",
        "audit",
        SubscriptionConfig::Shared(SharedConfig {
            max_deliveries: Some(2),
            ..SharedConfig::default()
        }),
    )
    .await
    .expect("shared");
    let subs: BTreeSet<String> = c
        .list_subscriptions("orders")
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        subs,
        BTreeSet::from(["audit".to_owned(), "billing".to_owned()])
    );

    let results = c
        .publish(
            "orders",
            [
                Message::new("a").partition(0),
                Message::new("b").partition(0),
                Message::new("c").partition(1),
            ],
        )
        .await
        .expect("publish");
    assert_eq!(
        results
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>(),
        vec![(0, 0), (0, 1), (1, 0)]
    );

    let stats = c.stats().await.expect("stats");
    assert!(stats.writable);
    let orders = stats
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .expect("orders in stats");
    assert_eq!(orders.messages, 3);
    assert_eq!(orders.subscriptions.len(), 2);

    // Skip everything, then replay partition 0 from offset 1.
    let committed = c
        .reset_subscription("orders", "billing", ResetTo::Latest)
        .await
        .expect("reset");
    let at: BTreeMap<u32, u64> = committed.iter().map(|c| (c.partition, c.offset)).collect();
    assert_eq!(at, BTreeMap::from([(0, 2), (1, 1)]));
    let committed = c
        .reset_subscription("orders", "billing", ResetTo::Offsets(vec![(0, 1)]))
        .await
        .expect("reset");
    let at: BTreeMap<u32, u64> = committed.iter().map(|c| (c.partition, c.offset)).collect();
    assert_eq!(at, BTreeMap::from([(0, 1), (1, 1)]));

    c.delete_subscription("orders", "audit")
        .await
        .expect("delete subscription");
    assert_eq!(c.list_subscriptions("orders").await.expect("list").len(), 1);
    c.delete_topic("orders").await.expect("delete");
    let e = c.get_topic("orders").await.expect_err("deleted");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_group_membership_calls() {
    let server = TestServer::start().await;
    let c = client(&server).await;
    c.create_topic("t", TopicConfig::default())
        .await
        .expect("create");
    let msgs: Vec<Message> = (0..5)
        .map(|i| {
            Message::new(format!("v{i}"))
                .key("k")
                .header("n", i.to_string())
        })
        .collect();
    c.publish("t", msgs).await.expect("publish");

    let read = c
        .read(
            "t",
            0,
            ReadOptions {
                from: Position::Offset(2),
                max_messages: Some(2),
                ..ReadOptions::default()
            },
        )
        .await
        .expect("read");
    let values: Vec<&str> = read.records.iter().filter_map(|r| r.value_str()).collect();
    assert_eq!(values, ["v2", "v3"]);
    assert_eq!(read.next_offset, 4);
    assert_eq!(read.high_watermark, 5);
    assert_eq!(read.records[0].key_str(), Some("k"));
    assert_eq!(read.records[0].header("n"), Some("2"));

    // A long-poll at the next offset answers once something arrives there (whether the read
    // starts before or after the publish).
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.read(
                "t",
                0,
                ReadOptions {
                    from: Position::Offset(5),
                    wait: Some(PATIENCE),
                    ..ReadOptions::default()
                },
            )
            .await
        })
    };
    c.publish("t", [Message::new("late")])
        .await
        .expect("publish");
    let read = within("long-poll", waiter)
        .await
        .expect("join")
        .expect("read");
    assert_eq!(read.records[0].value_str(), Some("late"));

    c.create_subscription("t", "g", SubscriptionConfig::stream())
        .await
        .expect("subscription");
    let m = c.join("t", "g", None).await.expect("join");
    assert_eq!(m.partitions, vec![0]);
    let fetched = c
        .fetch(
            "t",
            "g",
            m.member_id.clone(),
            FetchOptions {
                max_messages: Some(3),
                ..FetchOptions::default()
            },
        )
        .await
        .expect("fetch");
    assert_eq!(fetched.len(), 3);
    assert_eq!(fetched[0].value_str(), Some("v0"));
    let committed = c
        .commit("t", "g", m.member_id.clone(), &[(0, 3)])
        .await
        .expect("commit");
    assert_eq!(committed[0].offset, 3);
    let again = c
        .heartbeat("t", "g", m.member_id.clone())
        .await
        .expect("heartbeat");
    assert_eq!(again.member_id, m.member_id);
    c.leave("t", "g", m.member_id.clone()).await.expect("leave");
    let e = c
        .heartbeat("t", "g", m.member_id.clone())
        .await
        .expect_err("left");
    assert_eq!(e.code(), Some("unknown_member"));
    let sub = c.get_subscription("t", "g").await.expect("get");
    assert_eq!(sub.partitions[0].committed, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_consumer_receives_what_was_published_and_commits() {
    let server = TestServer::start().await;
    let c = client(&server).await;
    c.create_topic("events", TopicConfig::with_partitions(2))
        .await
        .expect("create");
    c.create_subscription("events", "g", SubscriptionConfig::stream())
        .await
        .expect("subscription");

    let publisher = c.publisher("events", PublisherOptions::default());
    let mut sent = BTreeSet::new();
    let mut pending = Vec::new();
    for i in 0..40 {
        let p = publisher
            .send(Message::new(format!("e{i}")).key(format!("k{}", i % 7)))
            .await
            .expect("send");
        sent.insert(p.message_id().to_owned());
        pending.push(p);
    }
    for p in pending {
        within("publish", p).await.expect("published");
    }

    let mut consumer = c
        .stream_consumer(
            "events",
            "g",
            StreamConsumerOptions {
                max_messages: Some(7),
                ..StreamConsumerOptions::default()
            },
        )
        .await
        .expect("consumer");
    assert!(!consumer.member_id().is_empty());
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    while seen.len() < sent.len() {
        let record = within("records", consumer.next())
            .await
            .expect("stream open")
            .expect("record");
        // In order per partition.
        if let Some(prev) = last.insert(record.partition, record.offset) {
            assert!(record.offset > prev);
        }
        assert!(
            seen.insert(record.message_id().expect("id").to_owned()),
            "delivered twice: {record:?}"
        );
        consumer.commit(&record).await.expect("commit");
    }
    assert_eq!(seen, sent);
    let assignment = consumer.assignment();
    assert_eq!(assignment.partitions.len(), 2, "{assignment:?}");

    let sub = c.get_subscription("events", "g").await.expect("get");
    for p in &sub.partitions {
        assert_eq!(p.committed, last[&p.partition] + 1, "{sub:?}");
        assert_eq!(p.lag, 0);
    }

    // A new member resumes after the commits: the first record it sees is a new one.
    drop(consumer);
    let mut next = c
        .stream_consumer(
            "events",
            "g",
            StreamConsumerOptions {
                auto_commit: true,
                ..StreamConsumerOptions::default()
            },
        )
        .await
        .expect("consumer");
    let landed = c
        .publish("events", [Message::new("fresh").id("fresh-1")])
        .await
        .expect("publish");
    let record = within("the new record", next.next())
        .await
        .expect("open")
        .expect("record");
    assert_eq!(record.message_id(), Some("fresh-1"));
    assert_eq!(
        (record.partition, record.offset),
        (landed[0].partition, landed[0].offset)
    );
    // commit_offsets answers what is in force.
    let committed = next
        .commit_offsets(&[(record.partition, record.offset + 1)])
        .await
        .expect("commit");
    assert!(
        committed
            .iter()
            .any(|c| c.partition == record.partition && c.offset == record.offset + 1)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_consumer_acks_nacks_and_terminates() {
    let server = TestServer::start().await;
    let c = client(&server).await;
    c.create_queue(
        "jobs",
        TopicConfig::default(),
        SharedConfig {
            max_deliveries: Some(5),
            backoff_initial: Some(Duration::ZERO),
            backoff_max: Some(Duration::ZERO),
            ..SharedConfig::default()
        },
    )
    .await
    .expect("queue");
    c.send_to_queue(
        "jobs",
        [
            Message::new("ack me"),
            Message::new("nack me once"),
            Message::new("terminate me"),
            Message::new("extend me"),
        ],
    )
    .await
    .expect("send");

    let mut consumer = c
        .queue_consumer(
            "jobs",
            "jobs",
            QueueConsumerOptions {
                max_in_flight: Some(10),
                lease: Some(Duration::from_secs(60)),
                member: Some("worker-1".into()),
            },
        )
        .await
        .expect("consumer");
    let mut finished = BTreeSet::new();
    let mut nacked = 0;
    while finished.len() < 4 {
        let d = within("deliveries", consumer.next())
            .await
            .expect("open")
            .expect("delivery");
        let value = d.record().value_str().expect("text").to_owned();
        match value.as_str() {
            "ack me" => {
                assert_eq!(d.delivery_count(), 1);
                d.ack().await.expect("ack");
                // Settling it again: the server says why not.
                let e = d.ack().await.expect_err("acked already");
                assert!(e.code().is_some(), "{e:?}");
            }
            "nack me once" if d.delivery_count() == 1 => {
                d.nack(Some(Duration::ZERO)).await.expect("nack");
                nacked += 1;
                continue;
            }
            "nack me once" => {
                assert_eq!(d.delivery_count(), 2);
                d.ack().await.expect("ack");
            }
            "terminate me" => d.terminate("bad input").await.expect("terminate"),
            "extend me" => {
                d.extend(Duration::from_secs(120)).await.expect("extend");
                d.ack().await.expect("ack");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(finished.insert(value), "finished twice");
    }
    assert_eq!(nacked, 1);

    let dead = c
        .dead_letters("jobs", "jobs", None, None)
        .await
        .expect("dead letters");
    assert_eq!(dead.records.len(), 1);
    let letter = &dead.records[0];
    assert_eq!(letter.value_str(), Some("terminate me"));
    assert_eq!(
        letter.header(wharf_client::DLQ_REASON_HEADER),
        Some("bad input")
    );
    assert_eq!(
        letter.header(wharf_client::DLQ_SOURCE_TOPIC_HEADER),
        Some("jobs")
    );

    // Redrive: it comes back to the consumer.
    assert_eq!(c.redrive("jobs", "jobs", None).await.expect("redrive"), 1);
    let d = within("the redriven message", consumer.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(d.record().value_str(), Some("terminate me"));
    let outcomes = consumer.ack_all(&[d]).await.expect("ack");
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].error.is_none(), "{outcomes:?}");

    let sub = c.get_subscription("jobs", "jobs").await.expect("get");
    assert_eq!(sub.in_flight, 0, "{sub:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_receive_and_settle() {
    let server = TestServer::start().await;
    let c = client(&server).await;
    // Publishing to an unknown queue creates it.
    c.send_to_queue("q", [Message::new("one"), Message::new("two")])
        .await
        .expect("send");
    let got = c
        .receive(
            "q",
            "q",
            ReceiveOptions {
                max: Some(2),
                wait: Some(PATIENCE),
                ..ReceiveOptions::default()
            },
        )
        .await
        .expect("receive");
    assert!(!got.is_empty());
    let mut values = Vec::new();
    for d in &got {
        values.push(d.record().value_str().expect("text").to_owned());
        d.extend(Duration::from_secs(30)).await.expect("extend");
        d.ack().await.expect("ack");
    }
    // The rest, if the first receive had only one.
    while values.len() < 2 {
        let more = c
            .receive(
                "q",
                "q",
                ReceiveOptions {
                    wait: Some(PATIENCE),
                    ..ReceiveOptions::default()
                },
            )
            .await
            .expect("receive");
        for d in more {
            values.push(d.record().value_str().expect("text").to_owned());
            let outcomes = c.ack("q", "q", [d.ack_id()]).await.expect("ack");
            assert!(outcomes[0].error.is_none());
        }
    }
    values.sort();
    assert_eq!(values, ["one", "two"]);

    // Unary terminate lands in the dead letters.
    c.send_to_queue("q", [Message::new("poison")])
        .await
        .expect("send");
    let got = c
        .receive(
            "q",
            "q",
            ReceiveOptions {
                wait: Some(PATIENCE),
                ..ReceiveOptions::default()
            },
        )
        .await
        .expect("receive");
    got[0].terminate("poison").await.expect("terminate");
    let dead = c.dead_letters("q", "q", None, None).await.expect("dlq");
    assert_eq!(dead.records[0].value_str(), Some("poison"));
    let e = c
        .ack("q", "q", ["not-an-ack-id"])
        .await
        .map(|o| o[0].error.clone());
    match e {
        Ok(Some(code)) => assert_eq!(code, "bad_ack_id"),
        Ok(None) => panic!("a made-up ack id was accepted"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_token_goes_with_every_call() {
    const TOKEN: &str = "client-test-token-0123456789";
    let server = TestServer::builder()
        .config(|c| {
            c.auth.tokens.push(TokenConfig {
                name: "all".into(),
                token: TOKEN.into(),
                scopes: vec!["admin".into(), "publish".into(), "consume".into()],
            });
        })
        .start()
        .await;
    let anonymous = client(&server).await;
    let e = anonymous.list_topics().await.expect_err("no token");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(e.code(), Some("unauthenticated"));
    let wrong = Client::builder(server.base.clone())
        .token("wrong-token-0123456789")
        .connect()
        .await
        .expect("connect");
    assert_eq!(
        wrong.list_topics().await.expect_err("bad token").kind(),
        ErrorKind::Unauthenticated
    );

    let c = Client::builder(server.base.clone())
        .token(TOKEN)
        .connect()
        .await
        .expect("connect");
    c.create_topic("t", TopicConfig::default())
        .await
        .expect("admin");
    let publisher = c.publisher("t", PublisherOptions::default());
    within("publish", publisher.publish("x"))
        .await
        .expect("publish");
    c.create_subscription("t", "g", SubscriptionConfig::stream())
        .await
        .expect("subscription");
    let mut consumer = c
        .stream_consumer("t", "g", StreamConsumerOptions::default())
        .await
        .expect("consume");
    let r = within("consume", consumer.next())
        .await
        .expect("open")
        .expect("record");
    assert_eq!(r.value_str(), Some("x"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    wharf_test::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_pem = certified.cert.pem();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, &cert_pem).expect("write cert");
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("write key");
    let server = TestServer::builder()
        .config(|c| {
            c.tls.cert_file = cert_file.display().to_string();
            c.tls.key_file = key_file.display().to_string();
        })
        .start()
        .await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let c = Client::builder(server.base.clone())
        .ca_certificate_pem(cert_pem.as_bytes())
        .tls_domain("localhost")
        .connect()
        .await
        .expect("connect over TLS");
    c.create_topic("secure", TopicConfig::default())
        .await
        .expect("create");
    assert_eq!(c.get_topic("secure").await.expect("get").name, "secure");

    // Without the CA the server's certificate is not trusted.
    let untrusting = Client::builder(server.base.clone())
        .tls_domain("localhost")
        .connect_timeout(PATIENCE)
        .connect()
        .await;
    match untrusting {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Transport, "{e}"),
        Ok(c) => {
            let e = c.list_topics().await.expect_err("untrusted");
            assert!(e.is_retryable(), "{e}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settles_on_one_stream_get_their_own_answers() {
    const N: usize = 40;
    let server = TestServer::start().await;
    let c = client(&server).await;
    c.create_queue("q", TopicConfig::default(), SharedConfig::default())
        .await
        .expect("queue");
    let messages: Vec<Message> = (0..N).map(|i| Message::new(format!("m{i}"))).collect();
    c.send_to_queue("q", messages).await.expect("send");
    let mut consumer = c
        .queue_consumer(
            "q",
            "q",
            QueueConsumerOptions {
                max_in_flight: Some(N as u32),
                ..QueueConsumerOptions::default()
            },
        )
        .await
        .expect("consumer");
    let mut deliveries = Vec::new();
    while deliveries.len() < N {
        deliveries.push(
            within("deliveries", consumer.next())
                .await
                .expect("open")
                .expect("delivery"),
        );
    }
    // Mixed actions at once: every settle must get its own outcome (matched per action in
    // order), so none reports a missing or foreign outcome.
    let settles = deliveries.iter().enumerate().map(|(i, d)| async move {
        match i % 3 {
            0 => d.ack().await,
            1 => {
                d.extend(Duration::from_secs(60)).await?;
                d.ack().await
            }
            _ => d.terminate("test").await,
        }
    });
    let results = within("settles", futures_util::future::join_all(settles)).await;
    for r in results {
        r.expect("settled");
    }
    let dead = c
        .dead_letters("q", "q", None, Some(1000))
        .await
        .expect("dead letters");
    assert_eq!(dead.records.len(), N / 3);
    let sub = c.get_subscription("q", "q").await.expect("get");
    assert_eq!(sub.in_flight, 0, "{sub:?}");
    server.stop().await;
}

/// The app registry: an instance kept registered by heartbeats, visible with its health,
/// deregistered on close; and one whose heartbeats stop expires.
#[tokio::test]
async fn instances_stay_registered_while_renewed() {
    let server = TestServer::start().await;
    let c = client(&server).await;
    let me = wharf_client::Instance::new("http://127.0.0.1:9", Duration::from_millis(600));
    let reg = within("register", c.keep_registered("orders", "o1", me.clone()))
        .await
        .unwrap();
    let app = c.get_app("orders").await.unwrap();
    assert_eq!(app.instances.len(), 1);
    assert_eq!(app.instances[0].id, "o1");
    assert_eq!(app.breaker, "closed");
    // Renewals keep it there well past its TTL (each answer says it has most of a TTL left).
    let start = std::time::Instant::now();
    let mut renewed = false;
    while start.elapsed() < Duration::from_secs(30) {
        let app = c.get_app("orders").await.unwrap();
        assert_eq!(app.instances.len(), 1, "still registered");
        if start.elapsed() > Duration::from_millis(1500) {
            renewed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(renewed);
    within("close", reg.close()).await.unwrap();
    assert!(c.get_app("orders").await.unwrap().instances.is_empty());
    // Dropped without close: the server drops it after the TTL.
    let reg = c.keep_registered("orders", "o2", me).await.unwrap();
    drop(reg);
    let start = std::time::Instant::now();
    while !c.get_app("orders").await.unwrap().instances.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "never expired");
        tokio::task::yield_now().await;
    }
    assert_eq!(c.list_apps().await.unwrap().len(), 1);
    c.delete_app("orders").await.unwrap();
    let e = c.get_app("orders").await.unwrap_err();
    assert_eq!(e.code(), Some("app_not_found"));
}
