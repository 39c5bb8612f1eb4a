//! The publisher's retry after a dropped connection produces no duplicate.
//!
//! A TCP proxy sits between the client and a real server. On each of its first `DROPS`
//! connections it forwards everything the client sends, but cuts the connection at the
//! server's first response HEADERS frame: the server has stored that batch (a unary gRPC
//! answer's headers go out only once the handler finished, i.e. once the publish is durable)
//! and the client never hears so. The publisher retries the batch with the same
//! `wharf-message-id`s on a new connection; the server answers "duplicate". Reading the topic
//! back finds every message exactly once, and every send resolved.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wharf_client::{
    Client, ErrorKind, Message, Position, PublisherOptions, ReadOptions, RetryPolicy, TopicConfig,
};
use wharf_test::TestServer;

const PATIENCE: Duration = Duration::from_secs(30);

/// HTTP/2 frame type of HEADERS.
const HEADERS: u8 = 0x1;

/// A proxy to `upstream` that cuts its first `drops` connections at the server's first
/// response HEADERS frame (on a stream, not the connection-level frames). Answers its address
/// and the number of connections it cut so far.
async fn cutting_proxy(upstream: SocketAddr, drops: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cut = Arc::new(AtomicUsize::new(0));
    let cut_count = cut.clone();
    tokio::spawn(async move {
        let mut accepted = 0usize;
        while let Ok((client, _)) = listener.accept().await {
            accepted += 1;
            let sabotage = accepted <= drops;
            let cut = cut_count.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if !sabotage {
                    let (mut client, mut server) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upstream_copy = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    let _ = server_write.shutdown().await;
                });
                if forward_until_response_headers(&mut server_read, &mut client_write).await {
                    cut.fetch_add(1, Ordering::SeqCst);
                }
                // Dropping both halves of both sockets closes the connections.
                upstream_copy.abort();
            });
        }
    });
    (addr, cut)
}

/// Forwards HTTP/2 frames from the server until a HEADERS frame on a stream, which it drops;
/// answers whether it found one (false: the connection ended first).
async fn forward_until_response_headers(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
) -> bool {
    let mut pending: Vec<u8> = Vec::new();
    // Payload bytes of the current frame still to forward.
    let mut in_payload = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Forward what can be forwarded.
        loop {
            if in_payload > 0 {
                let n = in_payload.min(pending.len());
                if n == 0 {
                    break;
                }
                if to.write_all(&pending[..n]).await.is_err() {
                    return false;
                }
                pending.drain(..n);
                in_payload -= n;
            } else if pending.len() >= 9 {
                let len = usize::from(pending[0]) << 16
                    | usize::from(pending[1]) << 8
                    | usize::from(pending[2]);
                let kind = pending[3];
                let stream = u32::from_be_bytes([pending[5], pending[6], pending[7], pending[8]])
                    & 0x7fff_ffff;
                if kind == HEADERS && stream != 0 {
                    return true;
                }
                if to.write_all(&pending[..9]).await.is_err() {
                    return false;
                }
                pending.drain(..9);
                in_payload = len;
            } else {
                break;
            }
        }
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// The required property with one batch in flight: a batch stored before its answer was lost
/// comes back as duplicates; everything is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_retry_after_a_dropped_connection_produces_no_duplicate() {
    publish_through_cuts(1).await;
}

/// The same with four batches in flight. When the connection drops, the server cancels the
/// other in-flight `Publish` handlers; the broker runs each publish in its own task, so the
/// cancelled ones still record their ids and their retries are answered as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publisher_retry_after_a_dropped_connection_produces_no_duplicate() {
    publish_through_cuts(4).await;
}

async fn publish_through_cuts(max_in_flight: usize) {
    const N: usize = 300;
    const DROPS: usize = 3;
    let server = TestServer::start().await;
    let direct = Client::connect(server.base.clone()).await.expect("connect");
    direct
        .create_topic("orders", TopicConfig::with_partitions(2))
        .await
        .expect("create");

    let (proxy, cut) = cutting_proxy(server.addr, DROPS).await;
    let through_proxy = Client::builder(format!("http://{proxy}"))
        .request_timeout(Some(PATIENCE))
        .connect()
        .await
        .expect("connect through the proxy");
    let publisher = through_proxy.publisher(
        "orders",
        PublisherOptions {
            linger: Duration::from_millis(1),
            max_batch_messages: 25,
            max_in_flight,
            retry: RetryPolicy {
                max_attempts: 20,
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(100),
                deadline: Duration::from_secs(60),
                ..RetryPolicy::default()
            },
            ..PublisherOptions::default()
        },
    );
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        let m = Message::new(format!("order {i}")).key(format!("customer-{}", i % 13));
        pending.push(publisher.send(m).await.expect("send"));
    }
    let ids: BTreeSet<String> = pending.iter().map(|p| p.message_id().to_owned()).collect();
    assert_eq!(ids.len(), N, "every message got its own id");

    let mut duplicates = 0;
    let mut places = BTreeSet::new();
    for p in pending {
        let r = tokio::time::timeout(PATIENCE * 2, p)
            .await
            .expect("every send resolves")
            .expect("published");
        if r.duplicate {
            duplicates += 1;
        }
        assert!(
            places.insert((r.partition, r.offset)),
            "two messages at {r:?}"
        );
    }
    publisher.close().await.expect("close");
    assert_eq!(
        cut.load(Ordering::SeqCst),
        DROPS,
        "the proxy cut its connections"
    );
    assert!(
        duplicates > 0,
        "a batch stored before its answer was lost must come back as duplicates"
    );

    // Read everything back: each message exactly once.
    let mut stored = Vec::new();
    for partition in 0..2 {
        let mut next = 0;
        loop {
            let read = direct
                .read(
                    "orders",
                    partition,
                    ReadOptions {
                        from: Position::Offset(next),
                        max_messages: Some(1000),
                        ..ReadOptions::default()
                    },
                )
                .await
                .expect("read");
            stored.extend(
                read.records
                    .iter()
                    .map(|r| r.message_id().expect("id").to_owned()),
            );
            next = read.next_offset;
            if next >= read.high_watermark {
                break;
            }
        }
    }
    assert_eq!(
        stored.len(),
        N,
        "stored {} messages for {N} sends",
        stored.len()
    );
    let unique: BTreeSet<String> = stored.into_iter().collect();
    assert_eq!(unique, ids);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_the_send_reports_the_transport_error() {
    let server = TestServer::start().await;
    let direct = Client::connect(server.base.clone()).await.expect("connect");
    direct
        .create_topic("t", TopicConfig::default())
        .await
        .expect("create");
    let (proxy, cut) = cutting_proxy(server.addr, 1).await;
    let c = Client::connect(format!("http://{proxy}"))
        .await
        .expect("connect");
    let publisher = c.publisher(
        "t",
        PublisherOptions {
            retry: RetryPolicy::none(),
            ..PublisherOptions::default()
        },
    );
    let message = Message::new("lost answer").id("order-1");
    let e = tokio::time::timeout(PATIENCE, publisher.publish(message.clone()))
        .await
        .expect("resolves")
        .expect_err("the answer was cut");
    assert_eq!(e.kind(), ErrorKind::Transport, "{e:?}");
    assert!(e.is_retryable());
    assert_eq!(cut.load(Ordering::SeqCst), 1);
    // It had been stored: the same message again (on a new connection) is a duplicate.
    let again = tokio::time::timeout(PATIENCE, publisher.publish(message))
        .await
        .expect("resolves")
        .expect("the next connection is not cut");
    assert!(again.duplicate);
    server.stop().await;
}
