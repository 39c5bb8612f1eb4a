//! Read cursors: ephemeral pull consumers (no acks) left where a read ended, so that the next
//! read from there — a stream member's next fetch, a reader paging through a partition — is
//! one pull request instead of one get per message.
//!
//! A cursor is taken out of the cache while a read uses it (two reads never share one) and
//! put back under the sequence it stopped at. The cache is bounded; a cursor it forgets is
//! removed by the server after `INACTIVE` without pulls.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use wharf_broker::{Result, StoredMessage};

use crate::NatsEngine;

/// Cursors kept per node.
const MAX_CURSORS: usize = 1024;
/// How long the server keeps a cursor nobody pulls from.
const INACTIVE: Duration = Duration::from_secs(30);

/// (stream, next stream sequence) → consumer name.
#[derive(Default)]
pub(crate) struct Cursors {
    inner: Mutex<CursorMap>,
}

#[derive(Default)]
struct CursorMap {
    by_position: HashMap<(String, u64), String>,
    /// Insertion order, for eviction (entries already taken are skipped).
    order: VecDeque<(String, u64)>,
}

impl Cursors {
    fn take(&self, stream: &str, seq: u64) -> Option<String> {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.by_position.remove(&(stream.to_owned(), seq))
    }

    fn put(&self, stream: &str, seq: u64, consumer: String) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (stream.to_owned(), seq);
        m.by_position.insert(key.clone(), consumer);
        m.order.push_back(key);
        while m.by_position.len() > MAX_CURSORS {
            let Some(oldest) = m.order.pop_front() else {
                break;
            };
            m.by_position.remove(&oldest);
        }
        if m.order.len() > 4 * MAX_CURSORS {
            let CursorMap { by_position, order } = &mut *m;
            order.retain(|k| by_position.contains_key(k));
        }
    }
}

impl NatsEngine {
    async fn new_cursor(&self, stream: &str, seq: u64) -> Result<String> {
        let v = self
            .api(
                &format!("CONSUMER.CREATE.{stream}"),
                json!({
                    "stream_name": stream,
                    "config": {
                        "ack_policy": "none",
                        "deliver_policy": "by_start_sequence",
                        "opt_start_seq": seq,
                        "replay_policy": "instant",
                        "inactive_threshold": INACTIVE.as_nanos() as u64,
                        "mem_storage": true,
                        "num_replicas": 1,
                    }
                }),
            )
            .await?;
        v["name"].as_str().map(str::to_owned).ok_or_else(|| {
            crate::unavailable("creating a read cursor", "the answer has no consumer name")
        })
    }

    /// Messages of partition `partition` (its stream `stream`) from offset `from`, at most
    /// `max` of them and about `max_bytes` (at least one), through a cursor.
    pub(crate) async fn read_through_cursor(
        &self,
        stream: &str,
        partition: u32,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>> {
        let seq = from + 1;
        let consumer = match self.inner.cursors.take(stream, seq) {
            Some(c) => c,
            None => self.new_cursor(stream, seq).await?,
        };
        let pulled = match self.pull(stream, &consumer, max).await {
            Ok(p) => p,
            Err(e) => {
                // Gone (the server dropped it after INACTIVE, or the stream went): never
                // put back.
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(pulled.len());
        let mut used = 0usize;
        // Where the cursor really is: after everything it delivered, returned or not.
        let next = pulled.last().map_or(seq, |p| p.stream_seq + 1);
        for p in &pulled {
            let m = self.decode_pulled(partition, p)?;
            let size = m.size();
            if !out.is_empty() && used + size > max_bytes {
                // The cursor moved past what is returned: it stays where it is, under its
                // real position, and the next read from here makes a new one.
                break;
            }
            used += size;
            out.push(m);
        }
        self.inner.cursors.put(stream, next, consumer);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_once_and_bounded() {
        let c = Cursors::default();
        c.put("s", 5, "a".into());
        assert_eq!(c.take("s", 4), None);
        assert_eq!(c.take("s", 5).as_deref(), Some("a"));
        assert_eq!(
            c.take("s", 5),
            None,
            "a cursor is used by one read at a time"
        );
        for i in 0..(MAX_CURSORS as u64 + 10) {
            c.put("s", i, format!("c{i}"));
        }
        assert_eq!(c.take("s", 0), None, "the oldest were forgotten");
        assert_eq!(
            c.take("s", MAX_CURSORS as u64 + 9).as_deref(),
            Some(format!("c{}", MAX_CURSORS + 9).as_str())
        );
    }
}
