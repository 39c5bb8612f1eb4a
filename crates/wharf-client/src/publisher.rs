//! [`Publisher`]: batches messages, keeps several `Publish` calls in flight, retries transient
//! failures without duplicates (every message carries a `wharf-message-id`).

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::proto;
use crate::retry::RetryPolicy;
use crate::types::{Message, PublishResult};

/// How a [`Publisher`] batches, pipelines and retries.
///
/// ```
/// use std::time::Duration;
/// use wharf_client::PublisherOptions;
///
/// let options = PublisherOptions {
///     linger: Duration::from_millis(5),
///     max_in_flight: 8,
///     ..PublisherOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct PublisherOptions {
    /// How long a batch waits for more messages after its first one (default 2 ms). A full
    /// batch goes at once.
    pub linger: Duration,
    /// Most messages per batch (default 500; the server's `limits.max_batch_messages` is
    /// 1000 by default).
    pub max_batch_messages: usize,
    /// About this many bytes per batch at most (default 1 MiB); a larger message goes alone.
    pub max_batch_bytes: usize,
    /// Most `Publish` calls in flight at once (default 4). With more than one, a retried
    /// batch may land after a later one: use 1 for order across batches.
    pub max_in_flight: usize,
    /// Messages queued before [`Publisher::send`] waits (default 1024).
    pub queue_capacity: usize,
    /// How transient failures are retried (the default policy: 10 attempts within 60 s).
    pub retry: RetryPolicy,
    /// Publish with `create_queue`: an unknown topic is created as a queue first.
    pub create_queue: bool,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            linger: Duration::from_millis(2),
            max_batch_messages: 500,
            max_batch_bytes: 1024 * 1024,
            max_in_flight: 4,
            queue_capacity: 1024,
            retry: RetryPolicy::default(),
            create_queue: false,
        }
    }
}

/// Where the publisher's batches go: the server, or a fake in tests.
pub(crate) trait BatchSink: Send + Sync + 'static {
    /// One `Publish` call with this limit.
    fn publish(
        &self,
        req: proto::PublishRequest,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<Vec<PublishResult>>>;

    /// The per-call limit (the client's request timeout).
    fn call_timeout(&self) -> Option<Duration>;
}

impl BatchSink for Client {
    fn publish(
        &self,
        req: proto::PublishRequest,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<Vec<PublishResult>>> {
        let client = self.clone();
        Box::pin(async move { client.publish_raw(req, timeout).await })
    }

    fn call_timeout(&self) -> Option<Duration> {
        self.request_timeout()
    }
}

struct Pending {
    message: proto::PublishMessage,
    size: usize,
    reply: oneshot::Sender<Result<PublishResult>>,
}

enum Command {
    Send(Pending),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Publishes to one topic in batches, pipelined and retried.
///
/// [`send`](Publisher::send) queues a message (waiting while the queue is full) and returns
/// a [`PublishFuture`] that resolves to where the message landed. A background task collects
/// queued messages into batches of up to `max_batch_messages` / `max_batch_bytes`, sending a
/// batch when it is full or `linger` after its first message, with up to `max_in_flight`
/// `Publish` calls at once. Every message without a `wharf-message-id` header gets a random
/// one, so a batch retried after a lost answer is deduplicated by the server (within the
/// topic's dedup window): each message is stored once. Transient failures are retried under
/// [`PublisherOptions::retry`]; other failures (and retries that give up) resolve each
/// message's future with the error.
///
/// Cheap to clone (clones feed the same task). The task stops once [`close`](Publisher::close)
/// was called or every clone is dropped, after sending what was queued.
///
/// ```no_run
/// # async fn demo() -> Result<(), wharf_client::Error> {
/// use wharf_client::{Client, Message, PublisherOptions};
///
/// let client = Client::connect("http://127.0.0.1:7400").await?;
/// let publisher = client.publisher("orders", PublisherOptions::default());
/// let mut pending = Vec::new();
/// for i in 0..1000 {
///     pending.push(publisher.send(Message::new(format!("order {i}"))).await?);
/// }
/// for p in pending {
///     let landed = p.await?;
///     assert!(!landed.duplicate);
/// }
/// publisher.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Command>,
    topic: Arc<str>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

/// Resolves to where a message sent with [`Publisher::send`] landed, or why it could not be
/// published.
#[derive(Debug)]
#[must_use = "a PublishFuture does nothing unless awaited; drop it to ignore the result"]
pub struct PublishFuture {
    rx: oneshot::Receiver<Result<PublishResult>>,
    message_id: String,
}

impl PublishFuture {
    /// The message's `wharf-message-id` (its own, or the one the publisher gave it).
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
}

impl Future for PublishFuture {
    type Output = Result<PublishResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| Err(Error::closed("the publisher stopped before answering")))
        })
    }
}

impl Publisher {
    pub(crate) fn new(client: Client, topic: String, options: PublisherOptions) -> Self {
        Self::with_sink(Arc::new(client), topic, options)
    }

    pub(crate) fn with_sink(
        sink: Arc<dyn BatchSink>,
        topic: String,
        options: PublisherOptions,
    ) -> Self {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let topic: Arc<str> = topic.into();
        tokio::spawn(run(rx, sink, topic.clone(), options));
        Publisher { tx, topic }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queues a message, waiting while the queue is full; answers a [`PublishFuture`] for
    /// its result. Fails (`Closed`) only if the publisher was closed.
    pub async fn send(&self, message: impl Into<Message>) -> Result<PublishFuture> {
        let mut message = message.into();
        let message_id = message.ensure_id().to_owned();
        let size = message.encoded_len();
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            message: message.into_proto(),
            size,
            reply,
        };
        self.tx
            .send(Command::Send(pending))
            .await
            .map_err(|_| Error::closed("the publisher is closed"))?;
        Ok(PublishFuture { rx, message_id })
    }

    /// Sends a message and waits for its result (one round trip per call unless other
    /// tasks send at the same time: for throughput, [`send`](Publisher::send) many first).
    pub async fn publish(&self, message: impl Into<Message>) -> Result<PublishResult> {
        self.send(message).await?.await
    }

    /// Sends what is queued now without waiting for `linger`, and waits until every message
    /// queued before this call has its result.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(tx))
            .await
            .map_err(|_| Error::closed("the publisher is closed"))?;
        rx.await
            .map_err(|_| Error::closed("the publisher stopped while flushing"))
    }

    /// Stops taking messages (later sends, by any clone, fail with `Closed`), sends what
    /// was queued, and waits until every message has its result.
    pub async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Close(tx))
            .await
            .map_err(|_| Error::closed("the publisher is closed"))?;
        rx.await
            .map_err(|_| Error::closed("the publisher stopped while closing"))
    }
}

/// A sealed batch, numbered in sealing order (from 1).
struct Batch {
    seq: u64,
    items: Vec<Pending>,
}

/// The open batch and the sealed ones waiting for a free call.
struct Batcher {
    max_messages: usize,
    max_bytes: usize,
    open: Vec<Pending>,
    open_bytes: usize,
    /// When the open batch's linger ends.
    linger_at: Option<Instant>,
    linger: Duration,
    ready: VecDeque<Batch>,
    last_seq: u64,
}

impl Batcher {
    fn fits(&self, p: &Pending) -> bool {
        self.open.is_empty()
            || (self.open.len() < self.max_messages
                && self.open_bytes.saturating_add(p.size) <= self.max_bytes)
    }

    fn full(&self) -> bool {
        self.open.len() >= self.max_messages || self.open_bytes >= self.max_bytes
    }

    fn push(&mut self, p: Pending) {
        if self.open.is_empty() {
            self.linger_at = Some(Instant::now() + self.linger);
        }
        self.open_bytes = self.open_bytes.saturating_add(p.size);
        self.open.push(p);
    }

    /// Seals the open batch (if it has anything); answers its number.
    fn seal(&mut self) -> Option<u64> {
        if self.open.is_empty() {
            return None;
        }
        self.last_seq += 1;
        let items = std::mem::take(&mut self.open);
        self.open_bytes = 0;
        self.linger_at = None;
        self.ready.push_back(Batch {
            seq: self.last_seq,
            items,
        });
        Some(self.last_seq)
    }
}

async fn run(
    mut rx: mpsc::Receiver<Command>,
    sink: Arc<dyn BatchSink>,
    topic: Arc<str>,
    options: PublisherOptions,
) {
    let max_in_flight = options.max_in_flight.max(1);
    let retry = Arc::new(options.retry);
    let mut b = Batcher {
        max_messages: options.max_batch_messages.max(1),
        max_bytes: options.max_batch_bytes.max(1),
        open: Vec::new(),
        open_bytes: 0,
        linger_at: None,
        linger: options.linger,
        ready: VecDeque::new(),
        last_seq: 0,
    };
    // A message that did not fit the open batch while no batch could be sealed.
    let mut held: Option<Pending> = None;
    let mut in_flight: FuturesUnordered<BoxFuture<'static, u64>> = FuturesUnordered::new();
    // Sealed batches without their results yet.
    let mut outstanding: BTreeSet<u64> = BTreeSet::new();
    let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    let mut closers: Vec<oneshot::Sender<()>> = Vec::new();
    let mut input_closed = false;
    loop {
        if let Some(p) = held.take() {
            if b.fits(&p) {
                b.push(p);
            } else if b.ready.is_empty() || input_closed {
                outstanding.extend(b.seal());
                b.push(p);
            } else {
                held = Some(p);
            }
        }
        if b.full() && b.ready.is_empty() {
            outstanding.extend(b.seal());
        }
        if input_closed && held.is_none() {
            outstanding.extend(b.seal());
        }
        while in_flight.len() < max_in_flight {
            let Some(batch) = b.ready.pop_front() else {
                break;
            };
            in_flight.push(Box::pin(send_batch(
                sink.clone(),
                topic.clone(),
                batch,
                retry.clone(),
                options.create_queue,
            )));
        }
        // A flush is done once every batch sealed before it has its results.
        let first_outstanding = outstanding.first().copied().unwrap_or(u64::MAX);
        let (done, waiting): (Vec<_>, Vec<_>) = flushes
            .drain(..)
            .partition(|(upto, _)| *upto < first_outstanding);
        flushes = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
        if input_closed
            && held.is_none()
            && b.open.is_empty()
            && b.ready.is_empty()
            && in_flight.is_empty()
        {
            break;
        }
        let can_receive = !input_closed && held.is_none() && !b.full();
        let linger_armed = !b.open.is_empty() && b.ready.is_empty();
        let linger_at = b.linger_at.unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            Some(seq) = in_flight.next(), if !in_flight.is_empty() => {
                outstanding.remove(&seq);
            }
            () = tokio::time::sleep_until(linger_at), if linger_armed => {
                outstanding.extend(b.seal());
            }
            cmd = rx.recv(), if can_receive => match cmd {
                None => input_closed = true,
                Some(Command::Send(p)) => {
                    if b.fits(&p) {
                        b.push(p);
                    } else {
                        held = Some(p);
                    }
                }
                Some(Command::Flush(tx)) => {
                    outstanding.extend(b.seal());
                    flushes.push((b.last_seq, tx));
                }
                Some(Command::Close(tx)) => {
                    rx.close();
                    outstanding.extend(b.seal());
                    closers.push(tx);
                }
            },
        }
    }
    for (_, tx) in flushes {
        let _ = tx.send(());
    }
    for tx in closers {
        let _ = tx.send(());
    }
}

/// Publishes one batch under the retry policy, answers every message, returns the batch's
/// number.
async fn send_batch(
    sink: Arc<dyn BatchSink>,
    topic: Arc<str>,
    batch: Batch,
    retry: Arc<RetryPolicy>,
    create_queue: bool,
) -> u64 {
    let (messages, replies): (Vec<_>, Vec<_>) = batch
        .items
        .into_iter()
        .map(|p| (p.message, p.reply))
        .unzip();
    let req = proto::PublishRequest {
        topic: topic.to_string(),
        messages,
        create_queue,
    };
    let call_timeout = sink.call_timeout();
    let result = retry
        .run(|_, left| {
            // Each attempt ends by the deadline (but gets at least a moment).
            let left = left.max(Duration::from_millis(500));
            let timeout = Some(call_timeout.map_or(left, |t| t.min(left)));
            sink.publish(req.clone(), timeout)
        })
        .await;
    match result {
        Ok(results) => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    batch.seq
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::ErrorKind;

    const WAIT: Duration = Duration::from_secs(30);

    /// Stores batches like the server: offsets in order, a repeated message id answers the
    /// original's place as a duplicate. Can fail attempts and hold calls.
    #[derive(Default)]
    struct Fake {
        state: Mutex<FakeState>,
        /// Calls wait for a permit here when `gate` is set.
        gate: Option<Semaphore>,
        calls: AtomicUsize,
        concurrent: AtomicUsize,
        max_concurrent: AtomicUsize,
        called: tokio::sync::Notify,
    }

    #[derive(Default)]
    struct FakeState {
        /// Batches as received (message ids), one per attempt.
        attempts: Vec<Vec<String>>,
        stored: Vec<String>,
        ids: HashMap<String, u64>,
        /// Errors for the next attempts; an attempt "lost after storing" stores then fails.
        fail_next: VecDeque<(Error, bool)>,
    }

    impl Fake {
        fn gated() -> Self {
            Fake {
                gate: Some(Semaphore::new(0)),
                ..Fake::default()
            }
        }

        fn fail(&self, e: Error, after_storing: bool) {
            self.lock().fail_next.push_back((e, after_storing));
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        async fn wait_calls(&self, n: usize) {
            tokio::time::timeout(WAIT, async {
                loop {
                    let notified = self.called.notified();
                    if self.calls.load(Ordering::SeqCst) >= n {
                        return;
                    }
                    notified.await;
                }
            })
            .await
            .expect("calls in time");
        }
    }

    struct FakeSink(Arc<Fake>);

    impl BatchSink for FakeSink {
        fn publish(
            &self,
            req: proto::PublishRequest,
            _timeout: Option<Duration>,
        ) -> BoxFuture<'static, Result<Vec<PublishResult>>> {
            let fake = self.0.clone();
            Box::pin(async move {
                let now = fake.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
                fake.max_concurrent.fetch_max(now, Ordering::SeqCst);
                fake.calls.fetch_add(1, Ordering::SeqCst);
                fake.called.notify_waiters();
                if let Some(gate) = &fake.gate {
                    gate.acquire().await.expect("gate").forget();
                }
                let result = {
                    let mut st = fake.lock();
                    let ids: Vec<String> = req
                        .messages
                        .iter()
                        .map(|m| {
                            m.headers
                                .get("wharf-message-id")
                                .cloned()
                                .unwrap_or_default()
                        })
                        .collect();
                    st.attempts.push(ids.clone());
                    let failure = st.fail_next.pop_front();
                    match failure {
                        Some((e, false)) => Err(e),
                        other => {
                            let mut results = Vec::new();
                            for id in ids {
                                let (offset, duplicate) = match st.ids.get(&id) {
                                    Some(&o) => (o, true),
                                    None => {
                                        let o = st.stored.len() as u64;
                                        st.stored.push(id.clone());
                                        st.ids.insert(id, o);
                                        (o, false)
                                    }
                                };
                                results.push(PublishResult {
                                    partition: 0,
                                    offset,
                                    timestamp_ms: 0,
                                    duplicate,
                                });
                            }
                            match other {
                                Some((e, true)) => Err(e),
                                _ => Ok(results),
                            }
                        }
                    }
                };
                fake.concurrent.fetch_sub(1, Ordering::SeqCst);
                result
            })
        }

        fn call_timeout(&self) -> Option<Duration> {
            Some(WAIT)
        }
    }

    fn publisher(fake: &Arc<Fake>, options: PublisherOptions) -> Publisher {
        Publisher::with_sink(Arc::new(FakeSink(fake.clone())), "t".into(), options)
    }

    fn quick_retry() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RetryPolicy::default()
        }
    }

    #[tokio::test]
    async fn full_batches_go_at_once_and_flush_sends_the_rest() {
        let fake = Arc::new(Fake::default());
        let p = publisher(
            &fake,
            PublisherOptions {
                linger: Duration::from_secs(3600),
                max_batch_messages: 3,
                ..PublisherOptions::default()
            },
        );
        let mut futures = Vec::new();
        for i in 0..7 {
            futures.push(p.send(format!("m{i}")).await.expect("send"));
        }
        fake.wait_calls(2).await;
        {
            let st = fake.lock();
            let sizes: Vec<usize> = st.attempts.iter().map(Vec::len).collect();
            assert_eq!(sizes, vec![3, 3], "the seventh waits for linger or flush");
        }
        tokio::time::timeout(WAIT, p.flush())
            .await
            .expect("flush in time")
            .expect("flush");
        let sizes: Vec<usize> = fake.lock().attempts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        let mut offsets = Vec::new();
        for f in futures {
            let id = f.message_id().to_owned();
            let r = f.await.expect("published");
            assert_eq!(fake.lock().stored[r.offset as usize], id);
            offsets.push(r.offset);
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (0..7).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn batches_are_bounded_by_bytes() {
        let fake = Arc::new(Fake::default());
        let one = {
            let mut m = Message::new(vec![0u8; 100]);
            m.ensure_id();
            m.encoded_len()
        };
        let p = publisher(
            &fake,
            PublisherOptions {
                linger: Duration::from_secs(3600),
                max_batch_bytes: one * 2 + one / 2,
                ..PublisherOptions::default()
            },
        );
        let mut futures = Vec::new();
        for _ in 0..5 {
            futures.push(p.send(vec![0u8; 100]).await.expect("send"));
        }
        // A message bigger than a batch goes alone.
        futures.push(p.send(vec![0u8; 10 * one]).await.expect("send"));
        p.flush().await.expect("flush");
        let sizes: Vec<usize> = fake.lock().attempts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2, 1, 1]);
        for f in futures {
            f.await.expect("published");
        }
    }

    #[tokio::test]
    async fn linger_sends_a_lone_message() {
        let fake = Arc::new(Fake::default());
        let p = publisher(
            &fake,
            PublisherOptions {
                linger: Duration::from_millis(1),
                ..PublisherOptions::default()
            },
        );
        let r = tokio::time::timeout(WAIT, p.publish("alone"))
            .await
            .expect("in time")
            .expect("published");
        assert_eq!(r.offset, 0);
        assert_eq!(fake.lock().attempts.len(), 1);
    }

    #[tokio::test]
    async fn at_most_max_in_flight_calls_at_once() {
        let fake = Arc::new(Fake::gated());
        let p = publisher(
            &fake,
            PublisherOptions {
                linger: Duration::ZERO,
                max_batch_messages: 1,
                max_in_flight: 2,
                ..PublisherOptions::default()
            },
        );
        let mut futures = Vec::new();
        for i in 0..6 {
            futures.push(p.send(format!("m{i}")).await.expect("send"));
        }
        fake.wait_calls(2).await;
        for _ in 0..6 {
            fake.gate.as_ref().expect("gated").add_permits(1);
        }
        for f in futures {
            tokio::time::timeout(WAIT, f)
                .await
                .expect("in time")
                .expect("published");
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 6);
        assert_eq!(fake.max_concurrent.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn send_waits_while_the_queue_is_full() {
        let fake = Arc::new(Fake::gated());
        let p = publisher(
            &fake,
            PublisherOptions {
                linger: Duration::ZERO,
                max_batch_messages: 1,
                max_in_flight: 1,
                queue_capacity: 1,
                ..PublisherOptions::default()
            },
        );
        let accepted = Arc::new(AtomicUsize::new(0));
        let producer = {
            let p = p.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut futures = Vec::new();
                for i in 0..100 {
                    futures.push(p.send(format!("m{i}")).await.expect("send"));
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
                futures
            })
        };
        fake.wait_calls(1).await;
        // One runtime thread: these yields let the producer and the publisher run as far as
        // they can. Without backpressure all 100 would be accepted.
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        let n = accepted.load(Ordering::SeqCst);
        assert!(n < 10, "{n} messages accepted while one call is stuck");
        fake.gate.as_ref().expect("gated").add_permits(1000);
        let futures = tokio::time::timeout(WAIT, producer)
            .await
            .expect("in time")
            .expect("join");
        for f in futures {
            f.await.expect("published");
        }
        assert_eq!(fake.lock().stored.len(), 100);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_with_the_same_ids() {
        let fake = Arc::new(Fake::default());
        fake.fail(Error::new(ErrorKind::Unavailable, "down"), false);
        // The answer is lost after the batch was stored: the retry is a duplicate.
        fake.fail(Error::new(ErrorKind::Transport, "reset"), true);
        let p = publisher(
            &fake,
            PublisherOptions {
                linger: Duration::from_secs(3600),
                retry: quick_retry(),
                ..PublisherOptions::default()
            },
        );
        let a = p.send(Message::new("a").id("id-a")).await.expect("send");
        let b = p.send("b").await.expect("send");
        assert_eq!(a.message_id(), "id-a");
        p.flush().await.expect("flush");
        let ra = a.await.expect("a");
        let rb = b.await.expect("b");
        assert!(ra.duplicate && rb.duplicate, "stored by the lost attempt");
        let st = fake.lock();
        assert_eq!(st.attempts.len(), 3);
        assert!(st.attempts.iter().all(|ids| ids == &st.attempts[0]));
        assert_eq!(st.stored.len(), 2);
    }

    #[tokio::test]
    async fn permanent_failures_reach_every_message_of_the_batch() {
        let fake = Arc::new(Fake::default());
        let mut meta = tonic::metadata::MetadataMap::new();
        meta.insert(
            "wharf-error-code",
            "topic_not_found".parse().expect("ascii"),
        );
        fake.fail(
            Error::from(tonic::Status::with_metadata(
                tonic::Code::NotFound,
                "no topic",
                meta,
            )),
            false,
        );
        let p = publisher(
            &fake,
            PublisherOptions {
                linger: Duration::from_secs(3600),
                retry: quick_retry(),
                ..PublisherOptions::default()
            },
        );
        let a = p.send("a").await.expect("send");
        let b = p.send("b").await.expect("send");
        p.flush().await.expect("flush");
        for f in [a, b] {
            let e = f.await.expect_err("failed");
            assert_eq!(e.kind(), ErrorKind::NotFound);
            assert_eq!(e.code(), Some("topic_not_found"));
        }
        assert_eq!(fake.lock().attempts.len(), 1, "not retried");
        // The publisher goes on.
        let c = p.send("c").await.expect("send");
        p.flush().await.expect("flush");
        assert!(!c.await.expect("c").duplicate);
    }

    #[tokio::test]
    async fn retries_give_up_after_max_attempts() {
        let fake = Arc::new(Fake::default());
        for _ in 0..3 {
            fake.fail(Error::new(ErrorKind::Unavailable, "down"), false);
        }
        let p = publisher(
            &fake,
            PublisherOptions {
                retry: RetryPolicy {
                    max_attempts: 3,
                    ..quick_retry()
                },
                ..PublisherOptions::default()
            },
        );
        let e = p.publish("a").await.expect_err("gave up");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(fake.lock().attempts.len(), 3);
    }

    #[tokio::test]
    async fn close_sends_what_was_queued_then_refuses() {
        let fake = Arc::new(Fake::default());
        let p = publisher(
            &fake,
            PublisherOptions {
                linger: Duration::from_secs(3600),
                ..PublisherOptions::default()
            },
        );
        let other = p.clone();
        let a = p.send("a").await.expect("send");
        tokio::time::timeout(WAIT, p.close())
            .await
            .expect("in time")
            .expect("close");
        assert!(!a.await.expect("a").duplicate);
        let e = other.send("late").await.expect_err("closed");
        assert_eq!(e.kind(), ErrorKind::Closed);
        assert!(p.flush().await.is_err());
    }

    #[tokio::test]
    async fn dropping_every_clone_still_sends_what_was_queued() {
        let fake = Arc::new(Fake::default());
        let p = publisher(
            &fake,
            PublisherOptions {
                linger: Duration::from_secs(3600),
                ..PublisherOptions::default()
            },
        );
        let a = p.send("a").await.expect("send");
        drop(p);
        let r = tokio::time::timeout(WAIT, a)
            .await
            .expect("in time")
            .expect("a");
        assert_eq!(r.offset, 0);
    }
}
