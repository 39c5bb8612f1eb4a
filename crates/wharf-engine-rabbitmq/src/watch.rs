//! A node's watcher of one partition stream: where the stream ends, which offsets this node's
//! publishes got, and which message ids were published within the dedup window.
//!
//! RabbitMQ's publisher confirms say that a message is stored, not where: AMQP 0.9.1 has no
//! way to learn a stream message's offset but to read it back. So each node reads the tail of
//! every partition it serves. Each message Wharf publishes carries a `message-id` unique
//! to its publish; the watcher sees it with its `x-stream-offset` and hands the offset to the
//! waiting publish. The same reading gives the partition's end (the high watermark reads and
//! `describe` answer, and the wake-up of waiting reads) and the index of `wharf-id` headers
//! that dedup checks.
//!
//! A watcher starts reading far enough back to cover the dedup window. It cannot tell by
//! itself when it has reached the end (a stream consumer just waits for more), so a node that
//! did not create the partition itself writes a fence record (`type` `wharf-fence`, skipped by reads)
//! and the watcher is ready when it reads it back: everything acknowledged before has then
//! been seen. A fence takes an offset: offsets on this engine increase but have gaps (one per
//! watcher start of a node that did not create the partition).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::amqp::{self, StreamReader};

// Wharf marks its messages with AMQP properties, which RabbitMQ carries at less cost than
// headers: `message-id` = `{node}.{sequence}` (unique per message; a fence's id for fences),
// `content-type` = [`ENVELOPE`] for enveloped messages (the Wharf timestamp is then the
// envelope's bytes 1..9), `type` = [`FENCE`] for fences. The one header is `wharf-id`.

/// `content-type` of enveloped messages.
pub(crate) const ENVELOPE: &str = "application/x-wharf-envelope";
/// `type` of fence records.
pub(crate) const FENCE: &str = "wharf-fence";
/// Header carrying the message's `wharf-message-id`, for the dedup index.
pub(crate) const ID: &str = "wharf-id";

/// Whether a delivery is a fence.
pub(crate) fn is_fence(d: &lapin::message::Delivery) -> bool {
    d.properties
        .kind()
        .as_ref()
        .is_some_and(|k| k.as_str() == FENCE)
}

/// Whether a delivery holds a Wharf envelope.
pub(crate) fn is_envelope(d: &lapin::message::Delivery) -> bool {
    d.properties
        .content_type()
        .as_ref()
        .is_some_and(|k| k.as_str() == ENVELOPE)
}

/// The Wharf timestamp of an enveloped message (the envelope's version byte, then the
/// timestamp, big-endian).
fn envelope_ts(d: &lapin::message::Delivery) -> i64 {
    d.data
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, i64::from_be_bytes)
}

/// What waiters watch: the end and whether the watcher is caught up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// One past the newest offset seen.
    pub(crate) end: u64,
    /// One past the newest data message (fences are not data); before any data is seen,
    /// the offset of the first fence (what is before it may be data). Subscriptions count
    /// their lag to it, so a fence at the end is not something to consume.
    pub(crate) data_end: u64,
    /// True once the watcher has seen everything acknowledged before it started.
    pub(crate) ready: bool,
    /// True once the watcher stopped (connection lost).
    pub(crate) failed: bool,
}

#[derive(Default)]
struct Index {
    /// Message id → (offset, Wharf timestamp) within the window.
    ids: HashMap<String, (u64, i64)>,
    /// The ids in the order seen, for pruning.
    order: VecDeque<(i64, String)>,
    /// Publishes waiting for their offset, by message id.
    pubs: HashMap<String, oneshot::Sender<u64>>,
    /// The fence this watcher waits for, if any.
    fence: Option<String>,
    /// The newest Wharf timestamp seen.
    newest_ts: i64,
}

/// The watcher of one partition stream.
pub(crate) struct Watcher {
    index: Arc<Mutex<Index>>,
    progress: watch::Receiver<Progress>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Starts reading `reader`; `fence` is the fence id the caller will write (`None` when
    /// the reader starts at the stream's beginning, created by this node: ready at once).
    pub(crate) fn start(reader: StreamReader, fence: Option<String>, window_ms: u64) -> Self {
        let ready = fence.is_none();
        let index = Arc::new(Mutex::new(Index {
            fence,
            ..Index::default()
        }));
        let (tx, rx) = watch::channel(Progress {
            end: 0,
            data_end: 0,
            ready,
            failed: false,
        });
        let task = tokio::spawn(watch_loop(reader, index.clone(), tx, window_ms));
        Self {
            index,
            progress: rx,
            task,
        }
    }

    /// The current progress.
    pub(crate) fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Waits (up to `wait`) until `done` holds for the progress; returns the last progress.
    pub(crate) async fn wait_for(
        &self,
        wait: Duration,
        done: impl FnMut(&Progress) -> bool,
    ) -> Progress {
        let mut rx = self.progress.clone();
        match tokio::time::timeout(wait, rx.wait_for(done)).await {
            Ok(Ok(p)) => *p,
            _ => *self.progress.borrow(),
        }
    }

    /// Registers a message id before it is sent; the receiver gets its offset.
    pub(crate) fn expect(&self, pub_id: String) -> oneshot::Receiver<u64> {
        let (tx, rx) = oneshot::channel();
        self.index
            .lock()
            .expect("watch index")
            .pubs
            .insert(pub_id, tx);
        rx
    }

    /// Forgets a publish that will not be seen (its send failed).
    pub(crate) fn forget(&self, pub_id: &str) {
        self.index.lock().expect("watch index").pubs.remove(pub_id);
    }

    /// The offset and timestamp of `id` if it was published at or after `since_ms`.
    pub(crate) fn lookup(&self, id: &str, since_ms: i64) -> Option<(u64, i64)> {
        let index = self.index.lock().expect("watch index");
        index.ids.get(id).copied().filter(|&(_, ts)| ts >= since_ms)
    }
}

async fn watch_loop(
    mut reader: StreamReader,
    index: Arc<Mutex<Index>>,
    progress: watch::Sender<Progress>,
    window_ms: u64,
) {
    let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
    let mut unacked = 0u32;
    let mut seen_data = false;
    loop {
        let delivery = match reader.next(Duration::from_secs(3600)).await {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(_) => break,
        };
        unacked += 1;
        if unacked >= 256 {
            unacked = 0;
            if reader.ack_up_to(delivery.delivery_tag).await.is_err() {
                break;
            }
        }
        let headers = delivery.properties.headers().as_ref();
        let Some(offset) = amqp::header_u64(headers, "x-stream-offset") else {
            continue;
        };
        let mut became_ready = false;
        let waiter;
        {
            let mut ix = index.lock().expect("watch index");
            if let Some(id) = amqp::header_str(headers, ID) {
                let ts = if is_envelope(&delivery) {
                    envelope_ts(&delivery)
                } else {
                    0
                };
                ix.newest_ts = ix.newest_ts.max(ts);
                // The first store of an id is the original: a later copy (two nodes racing)
                // does not replace it, unless the original's window had passed.
                let expired = ix
                    .ids
                    .get(id)
                    .is_none_or(|&(_, t)| t < ts.saturating_sub(window));
                if expired {
                    ix.ids.insert(id.to_owned(), (offset, ts));
                }
                ix.order.push_back((ts, id.to_owned()));
            }
            let horizon = ix.newest_ts.saturating_sub(window);
            while ix.order.front().is_some_and(|(ts, _)| *ts < horizon) {
                if let Some((ts, id)) = ix.order.pop_front()
                    && ix.ids.get(&id).is_some_and(|&(_, t)| t == ts)
                {
                    ix.ids.remove(&id);
                }
            }
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str());
            waiter = message_id.and_then(|p| ix.pubs.remove(p));
            if is_fence(&delivery)
                && let Some(f) = message_id
                && ix.fence.as_deref() == Some(f)
            {
                ix.fence = None;
                became_ready = true;
            }
        }
        let fence = is_fence(&delivery);
        progress.send_modify(|p| {
            p.end = p.end.max(offset + 1);
            if !fence {
                seen_data = true;
                p.data_end = offset + 1;
            } else if !seen_data {
                p.data_end = offset;
            }
            p.ready |= became_ready;
        });
        // After the progress: a publish that learns its offset finds the end past it.
        if let Some(tx) = waiter {
            let _ = tx.send(offset);
        }
    }
    index.lock().expect("watch index").pubs.clear();
    progress.send_modify(|p| p.failed = true);
}
