//! The four workloads, written once against [`Driver`]:
//!
//! - **publish**: `in_flight` publishers, each with one batch of `batch` messages in flight,
//!   until `count` messages are acknowledged or `duration` has passed. Latency: per batch,
//!   from the call to the acknowledgement.
//! - **consume**: a topic pre-filled with `count` messages (outside the clock), drained by one
//!   member of a new stream subscription, `batch` messages per batch at most. The clock starts
//!   before the member joins. No commits (the delivery path only).
//! - **queue**: a queue pre-filled with `count` messages (outside the clock), drained by
//!   `in_flight` consumers, each holding at most `batch` unsettled deliveries and acking every
//!   batch it receives in one request, waiting for the confirmation before it receives again.
//!   Latency: per ack request.
//! - **fanout**: a topic with `subscriptions` stream subscriptions, one member each, all
//!   joined before the first publish; `in_flight` publishers publish batches of `batch` as in
//!   **publish** while every member consumes concurrently. Throughput: deliveries (all
//!   subscriptions together) per second, from the first publish to the last delivery; each
//!   member stops once it has every acknowledged message or at the time limit plus a grace.
//! - **latency**: a paced publisher at `rate` messages/s and one stream-subscription member
//!   consuming concurrently. At most `in_flight` publishes are outstanding; each carries every
//!   message whose send time has come (at most `batch`), as a batching client library does. Each message carries its sequence number and its *intended* send time (the
//!   schedule's, not the actual one) in its first 16 bytes, so a stalled publisher cannot hide
//!   its stall (no coordinated omission). Latency: delivery time − intended send time.
//!
//! Every loop stops by itself at its count or its time limit, whichever comes first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use super::driver::{AckHandle, Batch, BenchError, Driver, Headers, Publisher, Result, TopicSpec};
use super::report::{CpuSnap, Progress};

/// Spawns a task of a workload, aborted if its handle is dropped before it finishes: a
/// workload abandoned at its time limit (`wharf bench compare` drops it) must not keep loading
/// the system the next case measures.
fn spawn<F>(task: F) -> AbortOnDropHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    AbortOnDropHandle::new(tokio::spawn(task))
}

/// Marks the latency workload failed when dropped (see its use).
struct StopPacer(Arc<Mutex<Option<BenchError>>>);

impl Drop for StopPacer {
    fn drop(&mut self) {
        if let Ok(mut f) = self.0.lock() {
            f.get_or_insert_with(|| BenchError::new("the workload was abandoned"));
        }
    }
}

/// The subscription the consume and latency workloads create.
const SUBSCRIPTION: &str = "bench";
/// How long the prefill of the consume and queue workloads may take at most (on top of
/// `duration`).
const PREFILL_LIMIT: Duration = Duration::from_secs(120);
/// Most bytes per prefill request.
const PREFILL_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// How long the latency workload's consumer waits, after the last send, for stragglers.
const LATENCY_GRACE: Duration = Duration::from_secs(10);
/// The latency stamp: sequence number and intended send time, 8 bytes each.
pub(crate) const STAMP_BYTES: usize = 16;

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Workload {
    /// Publish throughput: publishers with batches in flight.
    Publish,
    /// Drain a pre-filled topic through a stream subscription.
    Consume,
    /// Drain a pre-filled queue: receive and ack.
    Queue,
    /// Fixed-rate publish → deliver latency.
    Latency,
    /// Publish to a topic with several subscriptions consuming concurrently.
    Fanout,
}

impl Workload {
    /// The name on the command line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Consume => "consume",
            Self::Queue => "queue",
            Self::Latency => "latency",
            Self::Fanout => "fanout",
        }
    }
}

/// The parameters of a run (resolved flags).
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// The workload.
    pub(crate) workload: Workload,
    /// Value size in bytes.
    pub(crate) size: usize,
    /// Most messages measured.
    pub(crate) count: u64,
    /// Longest measured phase.
    pub(crate) duration: Duration,
    /// Concurrent publishers (publish, latency) or consumers (queue).
    pub(crate) in_flight: usize,
    /// Messages per publish (publish), per consumed batch (consume, latency), or the window
    /// of a queue consumer (queue).
    pub(crate) batch: usize,
    /// Messages per second (latency).
    pub(crate) rate: u64,
    /// Untimed warm-up before the measured phase (publish, latency).
    pub(crate) warmup: Duration,
    /// The topic or queue's settings.
    pub(crate) spec: TopicSpec,
    /// The topic or queue.
    pub(crate) topic: String,
    /// The broker's process, for its CPU time (none: in this process or unknown).
    pub(crate) server_pid: Option<u32>,
    /// Headers of every published message (`--header`).
    pub(crate) headers: Headers,
    /// Stream subscriptions of the topic (fanout).
    pub(crate) subscriptions: usize,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome {
    /// Messages done in the measured phase (acknowledged, delivered, or acked).
    pub(crate) msgs: u64,
    /// The measured phase's wall time.
    pub(crate) elapsed: Duration,
    /// What `latencies` measure; empty if nothing.
    pub(crate) latency_of: String,
    /// Latency samples in ns, sorted.
    pub(crate) latencies: Vec<u64>,
    /// `count` or `time`.
    pub(crate) stopped_by: &'static str,
    /// CPU over the measured phase: (start, end).
    pub(crate) cpu: Option<(CpuSnap, CpuSnap)>,
    /// Further facts for the report (name, value).
    pub(crate) notes: Vec<(String, String)>,
    /// A second latency series (the latency workload's publish acknowledgements), sorted.
    pub(crate) ack_latencies: Vec<u64>,
}

/// Runs `plan` on `driver`.
pub(crate) async fn run(
    driver: Arc<dyn Driver>,
    plan: &Plan,
    progress: &Progress,
) -> Result<Outcome> {
    match plan.workload {
        Workload::Publish => publish(driver, plan, progress).await,
        Workload::Consume => consume(driver, plan, progress).await,
        Workload::Queue => queue(driver, plan, progress).await,
        Workload::Latency => latency(driver, plan, progress).await,
        Workload::Fanout => fanout(driver, plan, progress).await,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What [`run_publishers`] did.
struct PublishRun {
    publishers: Vec<Box<dyn Publisher>>,
    acked: u64,
    latencies: Vec<u64>,
    by_time: bool,
    /// When the last acknowledgement came.
    end: Instant,
}

/// Runs `publishers` concurrently, each publishing `batch` (cut short at the end) in a loop,
/// until `count` messages are claimed or `deadline` passes; every task stops by itself.
async fn run_publishers(
    publishers: Vec<Box<dyn Publisher>>,
    batch: Arc<Batch>,
    count: u64,
    deadline: Instant,
    progress: Option<&Progress>,
) -> Result<PublishRun> {
    let claimed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = progress.map(Progress::counter);
    let mut tasks = Vec::with_capacity(publishers.len());
    for mut p in publishers {
        let (batch, claimed, stop, counter) = (
            batch.clone(),
            claimed.clone(),
            stop.clone(),
            counter.clone(),
        );
        tasks.push(spawn(async move {
            let mut latencies = Vec::new();
            let mut acked = 0u64;
            let mut by_time = false;
            let size = batch.len() as u64;
            let result = loop {
                if stop.load(Ordering::Relaxed) {
                    break Ok(());
                }
                if Instant::now() >= deadline {
                    by_time = true;
                    break Ok(());
                }
                let first = claimed.fetch_add(size, Ordering::Relaxed);
                if first >= count {
                    break Ok(());
                }
                let n = usize::try_from(size.min(count - first)).unwrap_or(batch.len());
                let t = Instant::now();
                match p.publish(&batch, n).await {
                    Ok(done) if done == n => {}
                    Ok(done) => {
                        break Err(BenchError(format!(
                            "a publish of {n} messages was acknowledged for {done}"
                        )));
                    }
                    Err(e) => break Err(e),
                }
                latencies.push(nanos(t.elapsed()));
                acked += n as u64;
                if let Some(c) = &counter {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
            };
            if result.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            (p, result, acked, latencies, by_time, Instant::now())
        }));
    }
    let mut run = PublishRun {
        publishers: Vec::new(),
        acked: 0,
        latencies: Vec::new(),
        by_time: false,
        end: Instant::now(),
    };
    let mut first_error = None;
    for t in tasks {
        let (p, result, acked, latencies, by_time, end) = t
            .await
            .map_err(|e| BenchError(format!("a publisher task failed: {e}")))?;
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
        run.publishers.push(p);
        run.acked += acked;
        run.latencies.extend(latencies);
        run.by_time |= by_time;
        run.end = run.end.max(end);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(run),
    }
}

async fn publishers(driver: &dyn Driver, topic: &str, n: usize) -> Result<Vec<Box<dyn Publisher>>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(driver.publisher(topic).await?);
    }
    Ok(out)
}

async fn publish(driver: Arc<dyn Driver>, plan: &Plan, progress: &Progress) -> Result<Outcome> {
    driver.create_topic(&plan.topic, plan.spec).await?;
    let value = wharf_benchkit::payload(plan.size, 1);
    let batch = Arc::new(Batch::new(
        vec![value; plan.batch.max(1)],
        plan.headers.clone(),
    ));
    let mut pubs = publishers(&*driver, &plan.topic, plan.in_flight).await?;
    if !plan.warmup.is_zero() {
        progress.phase("warm-up");
        let warm = run_publishers(
            pubs,
            batch.clone(),
            plan.count,
            Instant::now() + plan.warmup,
            Some(progress),
        )
        .await
        .map_err(|e| e.context("warm-up"))?;
        pubs = warm.publishers;
    }
    progress.phase("publish");
    let before = CpuSnap::take(plan.server_pid);
    let t0 = Instant::now();
    let run = run_publishers(pubs, batch, plan.count, t0 + plan.duration, Some(progress)).await?;
    let after = CpuSnap::take(plan.server_pid);
    let mut latencies = run.latencies;
    latencies.sort_unstable();
    Ok(Outcome {
        msgs: run.acked,
        elapsed: run.end.duration_since(t0),
        latency_of: format!("publish → ack, per batch of {}", plan.batch),
        latencies,
        stopped_by: if run.by_time { "time" } else { "count" },
        cpu: Some((before, after)),
        notes: Vec::new(),
        ack_latencies: Vec::new(),
    })
}

/// Publishes `plan.count` messages of `plan.size` bytes to `topic`, outside the clock; returns
/// how many were acknowledged (fewer only if [`PREFILL_LIMIT`] passed).
async fn prefill(driver: &dyn Driver, plan: &Plan, progress: &Progress) -> Result<u64> {
    progress.phase("prefill");
    let per_request = (PREFILL_REQUEST_BYTES / plan.size.max(1)).clamp(1, 1000);
    let value = wharf_benchkit::payload(plan.size, 1);
    let batch = Arc::new(Batch::new(vec![value; per_request], plan.headers.clone()));
    let pubs = publishers(driver, &plan.topic, plan.in_flight.clamp(1, 8)).await?;
    let run = run_publishers(
        pubs,
        batch,
        plan.count,
        Instant::now() + PREFILL_LIMIT + plan.duration,
        Some(progress),
    )
    .await
    .map_err(|e| e.context("prefill"))?;
    Ok(run.acked)
}

fn prefill_note(filled: u64, count: u64) -> (String, String) {
    let text = if filled < count {
        format!("{filled} of {count} messages (stopped by its time limit)")
    } else {
        format!("{filled} messages, outside the clock")
    };
    ("prefill".into(), text)
}

async fn consume(driver: Arc<dyn Driver>, plan: &Plan, progress: &Progress) -> Result<Outcome> {
    driver.create_topic(&plan.topic, plan.spec).await?;
    driver
        .create_subscription(&plan.topic, SUBSCRIPTION)
        .await?;
    let filled = prefill(&*driver, plan, progress).await?;
    progress.phase("consume");
    let counter = progress.counter();
    let before = CpuSnap::take(plan.server_pid);
    let t0 = Instant::now();
    let deadline = t0 + plan.duration;
    let mut sub = driver
        .subscribe(&plan.topic, SUBSCRIPTION, plan.batch.max(1))
        .await?;
    let mut got = 0u64;
    let mut end = Instant::now();
    let mut out = Vec::with_capacity(plan.batch);
    let mut by_time = false;
    while got < filled {
        let now = Instant::now();
        if now >= deadline {
            by_time = true;
            break;
        }
        let wait = (deadline - now).min(Duration::from_secs(1));
        let n = sub.next_batch(&mut out, wait).await?;
        if n > 0 {
            got += n as u64;
            end = Instant::now();
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let after = CpuSnap::take(plan.server_pid);
    sub.close().await?;
    Ok(Outcome {
        msgs: got,
        elapsed: end.duration_since(t0),
        latency_of: String::new(),
        latencies: Vec::new(),
        stopped_by: if by_time { "time" } else { "count" },
        cpu: Some((before, after)),
        notes: vec![prefill_note(filled, plan.count)],
        ack_latencies: Vec::new(),
    })
}

async fn queue(driver: Arc<dyn Driver>, plan: &Plan, progress: &Progress) -> Result<Outcome> {
    driver.create_queue(&plan.topic, plan.spec).await?;
    let filled = prefill(&*driver, plan, progress).await?;
    progress.phase("queue");
    let counter = progress.counter();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let before = CpuSnap::take(plan.server_pid);
    let t0 = Instant::now();
    let deadline = t0 + plan.duration;
    let mut tasks = Vec::new();
    for _ in 0..plan.in_flight.max(1) {
        let (driver, acked, stop, counter) =
            (driver.clone(), acked.clone(), stop.clone(), counter.clone());
        let (topic, window) = (plan.topic.clone(), plan.batch.max(1));
        tasks.push(spawn(async move {
            let mut latencies = Vec::new();
            let mut end = None;
            let mut by_time = false;
            let result: Result<()> = async {
                let mut c = driver.queue_consumer(&topic, window).await?;
                let mut values = Vec::with_capacity(window);
                let mut acks: Vec<AckHandle> = Vec::with_capacity(window);
                while acked.load(Ordering::Relaxed) < filled && !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= deadline {
                        by_time = true;
                        break;
                    }
                    let wait = (deadline - now).min(Duration::from_millis(200));
                    if c.receive(&mut values, &mut acks, wait).await? == 0 {
                        continue;
                    }
                    let t = Instant::now();
                    let done = c.ack(&acks).await? as u64;
                    latencies.push(nanos(t.elapsed()));
                    counter.fetch_add(done, Ordering::Relaxed);
                    if acked.fetch_add(done, Ordering::Relaxed) + done >= filled {
                        end = Some(Instant::now());
                    }
                }
                c.close().await
            }
            .await;
            if result.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            (result, latencies, end, by_time)
        }));
    }
    let mut latencies = Vec::new();
    let mut end = None;
    let mut by_time = false;
    let mut first_error = None;
    for t in tasks {
        let (result, l, e, b) = t
            .await
            .map_err(|e| BenchError(format!("a consumer task failed: {e}")))?;
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
        latencies.extend(l);
        end = end.max(e);
        by_time |= b;
    }
    let after = CpuSnap::take(plan.server_pid);
    if let Some(e) = first_error {
        return Err(e);
    }
    latencies.sort_unstable();
    let msgs = acked.load(Ordering::Relaxed);
    Ok(Outcome {
        msgs,
        elapsed: end.unwrap_or_else(Instant::now).duration_since(t0),
        latency_of: format!("ack request (up to {} deliveries) → confirmed", plan.batch),
        latencies,
        stopped_by: if by_time && msgs < filled {
            "time"
        } else {
            "count"
        },
        cpu: Some((before, after)),
        notes: vec![prefill_note(filled, plan.count)],
        ack_latencies: Vec::new(),
    })
}

/// The subscriptions of the fanout workload: `bench-0`, `bench-1`, ...
fn fanout_subscription(i: usize) -> String {
    format!("{SUBSCRIPTION}-{i}")
}

async fn fanout(driver: Arc<dyn Driver>, plan: &Plan, progress: &Progress) -> Result<Outcome> {
    let k = plan.subscriptions.max(1);
    driver.create_topic(&plan.topic, plan.spec).await?;
    for i in 0..k {
        driver
            .create_subscription(&plan.topic, &fanout_subscription(i))
            .await?;
    }
    let mut members = Vec::with_capacity(k);
    for i in 0..k {
        members.push(
            driver
                .subscribe(&plan.topic, &fanout_subscription(i), plan.batch.max(1))
                .await?,
        );
    }
    let value = wharf_benchkit::payload(plan.size, 1);
    let batch = Arc::new(Batch::new(
        vec![value; plan.batch.max(1)],
        plan.headers.clone(),
    ));
    let pubs = publishers(&*driver, &plan.topic, plan.in_flight).await?;
    progress.phase("fanout");
    let counter = progress.counter();
    // What each member must receive: unknown (u64::MAX) until the publishers are done.
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let before = CpuSnap::take(plan.server_pid);
    let t0 = Instant::now();
    let deadline = t0 + plan.duration;
    let hard_end = deadline + LATENCY_GRACE;
    let mut tasks = Vec::with_capacity(k);
    for mut m in members {
        let (expected, stop, counter) = (expected.clone(), stop.clone(), counter.clone());
        tasks.push(spawn(async move {
            let mut got = 0u64;
            let mut end = t0;
            let mut out = Vec::new();
            let result: Result<()> = async {
                while got < expected.load(Ordering::Acquire) && !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= hard_end {
                        break;
                    }
                    let wait = (hard_end - now).min(Duration::from_millis(200));
                    let n = m.next_batch(&mut out, wait).await? as u64;
                    if n > 0 {
                        got += n;
                        end = Instant::now();
                        counter.fetch_add(n, Ordering::Relaxed);
                    }
                }
                m.close().await
            }
            .await;
            if result.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            (result, got, end)
        }));
    }
    let published = run_publishers(pubs, batch, plan.count, deadline, None).await;
    let published = match published {
        Ok(run) => {
            expected.store(run.acked, Ordering::Release);
            Ok(run)
        }
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            Err(e)
        }
    };
    let mut delivered = Vec::with_capacity(k);
    let mut end = t0;
    let mut first_error = None;
    for t in tasks {
        let (result, got, e) = t
            .await
            .map_err(|e| BenchError(format!("a subscriber task failed: {e}")))?;
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
        delivered.push(got);
        end = end.max(e);
    }
    let after = CpuSnap::take(plan.server_pid);
    let run = published?;
    if let Some(e) = first_error {
        return Err(e);
    }
    let total: u64 = delivered.iter().sum();
    let fewest = delivered.iter().copied().min().unwrap_or(0);
    let publish_secs = run.end.duration_since(t0).as_secs_f64().max(1e-9);
    let mut latencies = run.latencies;
    latencies.sort_unstable();
    Ok(Outcome {
        msgs: total,
        elapsed: end.max(run.end).duration_since(t0),
        latency_of: format!("publish → ack, per batch of {}", plan.batch),
        latencies,
        stopped_by: if fewest < run.acked {
            "time"
        } else if run.by_time {
            "time (publishing)"
        } else {
            "count"
        },
        cpu: Some((before, after)),
        notes: vec![
            (
                "published".into(),
                format!(
                    "{} messages acknowledged at {:.0} msg/s, to {k} subscriptions",
                    run.acked,
                    run.acked as f64 / publish_secs
                ),
            ),
            (
                "delivered".into(),
                format!(
                    "{total} deliveries in all; the member with fewest got {fewest} of {}",
                    run.acked
                ),
            ),
        ],
        ack_latencies: Vec::new(),
    })
}

/// The value of message `seq` of the latency workload: its sequence number and intended send
/// time (ns since the run's epoch), then the payload's bytes.
fn stamped(buf: &mut BytesMut, payload: &[u8], seq: u64, intended_ns: u64) -> Bytes {
    if buf.capacity() < payload.len().max(STAMP_BYTES) {
        // One allocation for many messages; each value is a slice of it.
        buf.reserve((payload.len().max(STAMP_BYTES)) * 256);
    }
    buf.put_u64_le(seq);
    buf.put_u64_le(intended_ns);
    if payload.len() > STAMP_BYTES {
        buf.put_slice(&payload[STAMP_BYTES..]);
    }
    buf.split().freeze()
}

/// The stamp of a latency message: (sequence number, intended send time in ns).
fn read_stamp(value: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(value.get(0..8)?.try_into().ok()?);
    let at = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
    Some((seq, at))
}

async fn latency(driver: Arc<dyn Driver>, plan: &Plan, progress: &Progress) -> Result<Outcome> {
    if plan.size < STAMP_BYTES {
        return Err(BenchError(format!(
            "the latency workload needs --size of at least {STAMP_BYTES} bytes (the send stamp)"
        )));
    }
    if plan.rate == 0 {
        return Err(BenchError::new(
            "--rate must be at least 1 message per second",
        ));
    }
    driver.create_topic(&plan.topic, plan.spec).await?;
    driver
        .create_subscription(&plan.topic, SUBSCRIPTION)
        .await?;
    let warm = u64::try_from(plan.warmup.as_nanos() * u128::from(plan.rate) / 1_000_000_000)
        .unwrap_or(u64::MAX);
    let by_time_count =
        u64::try_from(plan.duration.as_nanos() * u128::from(plan.rate) / 1_000_000_000)
            .unwrap_or(u64::MAX);
    let measured = plan.count.min(by_time_count);
    let total = warm.saturating_add(measured);
    let mut sub = driver
        .subscribe(&plan.topic, SUBSCRIPTION, plan.batch.max(1))
        .await?;
    let pubs = publishers(&*driver, &plan.topic, plan.in_flight).await?;
    // Messages whose send time has come, not yet taken by a publisher.
    let pending: Arc<Mutex<Vec<Bytes>>> = Arc::new(Mutex::new(Vec::new()));
    let wake = Arc::new(Notify::new());
    let paced_out = Arc::new(AtomicBool::new(false));
    let failed: Arc<Mutex<Option<BenchError>>> = Arc::new(Mutex::new(None));
    // The pacer is a thread (it cannot be aborted like the tasks): if this workload is
    // abandoned at its time limit, the failure this guard records stops it at its next message.
    let _stop_pacer = StopPacer(failed.clone());
    let epoch = Instant::now();
    // The schedule starts a little later, once the pacer thread runs.
    let start_ns = nanos(Duration::from_millis(20));
    let interval_ns = 1e9 / plan.rate as f64;
    let intended = move |seq: u64| start_ns + (seq as f64 * interval_ns) as u64;
    let measure_from = epoch + Duration::from_nanos(intended(warm));
    progress.phase(if warm > 0 { "warm-up" } else { "latency" });

    // The consumer: one member, concurrently.
    let counter = progress.counter();
    let schedule_end = epoch + Duration::from_nanos(intended(total));
    let consumer = spawn(async move {
        let mut latencies = Vec::with_capacity(usize::try_from(measured).unwrap_or(0));
        let mut out = Vec::new();
        let mut seen = 0u64;
        let mut end = Instant::now();
        let result: Result<()> = async {
            while seen < total {
                let now = Instant::now();
                if now >= schedule_end + LATENCY_GRACE {
                    break;
                }
                let wait = (schedule_end + LATENCY_GRACE - now).min(Duration::from_millis(200));
                if sub.next_batch(&mut out, wait).await? == 0 {
                    continue;
                }
                let at = Instant::now();
                let now_ns = nanos(at.duration_since(epoch));
                for v in &out {
                    let (seq, sent) = read_stamp(v).ok_or_else(|| {
                        BenchError::new("a delivered message without the send stamp")
                    })?;
                    if seq >= warm {
                        latencies.push(now_ns.saturating_sub(sent));
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                seen += out.len() as u64;
                end = at;
            }
            sub.close().await
        }
        .await;
        (result, latencies, end)
    });

    // The publishers: each takes every message whose send time has come (at most `batch`) and
    // publishes them in one call, so at most `in_flight` publishes are outstanding; a slow
    // publish makes the next one larger, as a batching client library does.
    let mut pub_tasks = Vec::with_capacity(pubs.len());
    for mut p in pubs {
        let (pending, wake, paced_out, failed) = (
            pending.clone(),
            wake.clone(),
            paced_out.clone(),
            failed.clone(),
        );
        let (headers, max) = (plan.headers.clone(), plan.batch.max(1));
        pub_tasks.push(spawn(async move {
            let mut acks = Vec::new();
            let mut take = Vec::with_capacity(max);
            loop {
                {
                    let Ok(mut q) = pending.lock() else { break };
                    let n = q.len().min(max);
                    take.extend(q.drain(..n));
                }
                if take.is_empty() {
                    if paced_out.load(Ordering::Acquire)
                        && pending.lock().map(|q| q.is_empty()).unwrap_or(true)
                    {
                        break;
                    }
                    // Bounded, so the end of the schedule is seen even without a wake-up.
                    let _ = tokio::time::timeout(Duration::from_millis(50), wake.notified()).await;
                    continue;
                }
                let n = take.len();
                let batch = Batch::new(std::mem::take(&mut take), headers.clone());
                match p.publish(&batch, n).await {
                    Ok(done) if done == n => {}
                    r => {
                        let e = match r {
                            Err(e) => e,
                            Ok(done) => BenchError(format!(
                                "a publish of {n} messages was acknowledged for {done}"
                            )),
                        };
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                }
                let done = nanos(epoch.elapsed());
                for v in batch.values() {
                    if let Some((seq, at)) = read_stamp(v)
                        && seq >= warm
                    {
                        acks.push(done.saturating_sub(at));
                    }
                }
                take = Vec::with_capacity(max);
            }
            acks
        }));
    }

    // The pacer: a thread of its own, sleeping until each intended send time (a runtime timer
    // has 1 ms granularity), then handing the message to the publishers.
    let payload = wharf_benchkit::payload(plan.size, 1);
    let (pending2, wake2, paced_out2, failed2) = (
        pending.clone(),
        wake.clone(),
        paced_out.clone(),
        failed.clone(),
    );
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            let mut buf = BytesMut::new();
            let mut max_lag = 0u64;
            for seq in 0..total {
                if failed2.lock().map(|f| f.is_some()).unwrap_or(true) {
                    break;
                }
                let at = intended(seq);
                let now = nanos(epoch.elapsed());
                if at > now {
                    std::thread::sleep(Duration::from_nanos(at - now));
                } else {
                    max_lag = max_lag.max(now - at);
                }
                let value = stamped(&mut buf, &payload, seq, at);
                match pending2.lock() {
                    Ok(mut q) => q.push(value),
                    Err(_) => break,
                }
                wake2.notify_one();
            }
            paced_out2.store(true, Ordering::Release);
            wake2.notify_waiters();
            max_lag
        })
        .map_err(|e| BenchError(format!("cannot start the pacer thread: {e}")))?;
    // Switch the progress line to the measured phase once it starts.
    if warm > 0 {
        tokio::time::sleep_until(measure_from.into()).await;
        progress.phase("latency");
    }
    let before = CpuSnap::take(plan.server_pid);
    let max_lag = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .map_err(|e| BenchError(format!("the pacer thread: {e}")))?
        .map_err(|_| BenchError::new("the pacer thread panicked"))?;
    let mut acks = Vec::new();
    for t in pub_tasks {
        acks.extend(
            t.await
                .map_err(|e| BenchError(format!("a publisher task failed: {e}")))?,
        );
    }
    let (result, mut latencies, end) = consumer
        .await
        .map_err(|e| BenchError(format!("the consumer task failed: {e}")))?;
    let after = CpuSnap::take(plan.server_pid);
    if let Some(e) = failed.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    result?;
    latencies.sort_unstable();
    acks.sort_unstable();
    let msgs = latencies.len() as u64;
    Ok(Outcome {
        msgs,
        elapsed: end.saturating_duration_since(measure_from),
        latency_of: "publish → deliver, from the intended send time".into(),
        latencies,
        stopped_by: if measured < plan.count {
            "time"
        } else {
            "count"
        },
        cpu: Some((before, after)),
        notes: vec![
            (
                "schedule".into(),
                format!(
                    "{} msg/s, {warm} warm-up + {measured} measured messages; at most {} \
                     publishes outstanding, each of the messages due (at most {})",
                    plan.rate, plan.in_flight, plan.batch
                ),
            ),
            (
                "publisher lag".into(),
                format!(
                    "the pacer was at most {} behind its schedule",
                    super::report::human_ns(max_lag)
                ),
            ),
            (
                "delivered".into(),
                format!("{msgs} of {measured} measured messages"),
            ),
        ],
        ack_latencies: acks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_keep_the_size() {
        let payload = wharf_benchkit::payload(100, 1);
        let mut buf = BytesMut::new();
        let a = stamped(&mut buf, &payload, 7, 123_456);
        let b = stamped(&mut buf, &payload, 8, 9);
        assert_eq!(a.len(), 100);
        assert_eq!(read_stamp(&a), Some((7, 123_456)));
        assert_eq!(read_stamp(&b), Some((8, 9)));
        assert_eq!(&a[16..], &payload[16..]);
        let small = stamped(&mut buf, &payload[..16], 1, 2);
        assert_eq!(small.len(), 16);
        assert_eq!(read_stamp(&small[..8]), None);
    }
}
