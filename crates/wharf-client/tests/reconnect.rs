//! Consumers whose connection breaks, through a TCP proxy that can cut every open connection:
//!
//! - a stream consumer with a reconnect policy joins again and goes on receiving;
//! - without one, it yields the (retryable) transport error and ends;
//! - a queue consumer's settle waiting on a broken stream fails instead of hanging, and a
//!   new consumer gets the unsettled deliveries again.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use wharf_client::{
    Client, Message, QueueConsumerOptions, RetryPolicy, SharedConfig, StreamConsumerOptions,
    SubscriptionConfig, TopicConfig,
};
use wharf_test::TestServer;

const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
}

/// A pass-through proxy whose open connections can all be cut at once.
struct Proxy {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let tracked = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                tracked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(task.abort_handle());
            }
        });
        Proxy { addr, open }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection open now (dropping both sockets).
    fn cut_all(&self) {
        for h in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

async fn publish_ids(c: &Client, topic: &str, ids: &[String]) {
    let messages: Vec<Message> = ids
        .iter()
        .map(|id| Message::new(format!("value of {id}")).id(id.clone()))
        .collect();
    c.publish(topic, messages).await.expect("publish");
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_consumer_with_a_reconnect_policy_joins_again() {
    let server = TestServer::start().await;
    let direct = Client::connect(server.base.clone()).await.expect("connect");
    direct
        .create_topic("t", TopicConfig::default())
        .await
        .expect("topic");
    direct
        .create_subscription("t", "g", SubscriptionConfig::stream())
        .await
        .expect("subscription");
    let proxy = Proxy::start(server.addr).await;
    let c = Client::connect(proxy.url()).await.expect("connect");
    let mut consumer = c
        .stream_consumer(
            "t",
            "g",
            StreamConsumerOptions {
                reconnect: Some(RetryPolicy {
                    initial_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(200),
                    max_attempts: 50,
                    deadline: PATIENCE,
                    ..RetryPolicy::default()
                }),
                ..StreamConsumerOptions::default()
            },
        )
        .await
        .expect("consumer");
    let first_member = consumer.member_id();

    let before = ids("before", 5);
    publish_ids(&direct, "t", &before).await;
    for id in &before {
        let r = within("records", consumer.next())
            .await
            .expect("open")
            .expect("record");
        assert_eq!(r.message_id(), Some(id.as_str()));
        consumer.commit(&r).await.expect("commit");
    }

    proxy.cut_all();
    let after = ids("after", 5);
    publish_ids(&direct, "t", &after).await;
    let mut seen = BTreeSet::new();
    while seen.len() < after.len() {
        let r = within("records after the cut", consumer.next())
            .await
            .expect("the stream goes on")
            .expect("reconnected");
        let id = r.message_id().expect("id").to_owned();
        assert!(!before.contains(&id), "{id} was committed before the cut");
        seen.insert(id);
    }
    assert_eq!(seen, after.into_iter().collect::<BTreeSet<_>>());
    assert_ne!(consumer.member_id(), first_member, "joined as a new member");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reconnect_policy_the_stream_ends_with_the_error() {
    let server = TestServer::start().await;
    let direct = Client::connect(server.base.clone()).await.expect("connect");
    direct
        .create_topic("t", TopicConfig::default())
        .await
        .expect("topic");
    direct
        .create_subscription("t", "g", SubscriptionConfig::stream())
        .await
        .expect("subscription");
    let proxy = Proxy::start(server.addr).await;
    let c = Client::connect(proxy.url()).await.expect("connect");
    let mut consumer = c
        .stream_consumer("t", "g", StreamConsumerOptions::default())
        .await
        .expect("consumer");
    proxy.cut_all();
    let e = within("the error", consumer.next())
        .await
        .expect("an item")
        .expect_err("the connection was cut");
    assert!(e.is_retryable(), "{e:?}");
    assert!(within("the end", consumer.next()).await.is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_consumer_on_a_cut_connection_fails_and_its_deliveries_come_back() {
    let server = TestServer::start().await;
    let direct = Client::connect(server.base.clone()).await.expect("connect");
    direct
        .create_queue("q", TopicConfig::default(), SharedConfig::default())
        .await
        .expect("queue");
    direct
        .send_to_queue("q", [Message::new("job").id("job-1")])
        .await
        .expect("send");
    let proxy = Proxy::start(server.addr).await;
    let c = Client::connect(proxy.url()).await.expect("connect");
    let mut consumer = c
        .queue_consumer("q", "q", QueueConsumerOptions::default())
        .await
        .expect("consumer");
    let d = within("a delivery", consumer.next())
        .await
        .expect("open")
        .expect("delivery");
    proxy.cut_all();
    // The stream is gone: the consumer ends with the error, and a settle fails.
    let end = within("the end", consumer.next()).await;
    if let Some(item) = end {
        let e = item.expect_err("only an error after the cut");
        assert!(e.is_retryable(), "{e:?}");
    }
    let e = within("the ack", d.ack()).await.expect_err("no stream");
    assert!(
        e.is_retryable() || e.kind() == wharf_client::ErrorKind::Closed,
        "{e:?}"
    );
    // The server gives back what the stream left unsettled: a new consumer gets it.
    let mut again = c
        .queue_consumer("q", "q", QueueConsumerOptions::default())
        .await
        .expect("consumer");
    let d = within("the redelivery", again.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(d.record().message_id(), Some("job-1"));
    assert_eq!(d.delivery_count(), 2);
    d.ack().await.expect("ack");
    server.stop().await;
}
