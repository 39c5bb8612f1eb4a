//! The dedup index of a topic: `wharf-message-id` → where the first publish landed.
//!
//! Not persisted on its own: the ids ride in the messages' headers, so on startup the index
//! is rebuilt by reading each partition from the start of the window. A publish in flight
//! holds a `Pending` entry, so a concurrent duplicate waits for it instead of racing it.

use std::collections::{HashMap, VecDeque};

use tokio::sync::watch;

use crate::types::Published;

pub(crate) enum Entry {
    /// A publish with this id is in flight; its outcome is announced on the channel
    /// (the sender is dropped when it completes either way).
    Pending(watch::Receiver<()>),
    /// Stored.
    Done(Published),
}

/// What to do with one message id.
pub(crate) enum Check {
    /// Not seen: publish it.
    New,
    /// A duplicate of this.
    Duplicate(Published),
    /// In flight elsewhere: wait on this, then check again.
    Wait(watch::Receiver<()>),
}

#[derive(Default)]
pub(crate) struct Dedup {
    entries: HashMap<String, Entry>,
    /// Ids of `Done` entries in publish-time order, for expiry.
    order: VecDeque<(i64, String)>,
}

impl Dedup {
    pub(crate) fn expire(&mut self, now: i64, window_ms: u64) {
        let cutoff = now.saturating_sub(i64::try_from(window_ms).unwrap_or(i64::MAX));
        while let Some((ts, _)) = self.order.front() {
            if *ts >= cutoff {
                break;
            }
            if let Some((_, id)) = self.order.pop_front()
                && matches!(self.entries.get(&id), Some(Entry::Done(p)) if p.timestamp < cutoff)
            {
                self.entries.remove(&id);
            }
        }
    }

    pub(crate) fn check(&self, id: &str) -> Check {
        match self.entries.get(id) {
            None => Check::New,
            Some(Entry::Done(p)) => Check::Duplicate(Published {
                duplicate: true,
                ..*p
            }),
            Some(Entry::Pending(rx)) => Check::Wait(rx.clone()),
        }
    }

    pub(crate) fn reserve(&mut self, id: String, rx: watch::Receiver<()>) {
        self.entries.insert(id, Entry::Pending(rx));
    }

    pub(crate) fn release(&mut self, id: &str) {
        if matches!(self.entries.get(id), Some(Entry::Pending(_))) {
            self.entries.remove(id);
        }
    }

    pub(crate) fn record(&mut self, id: String, published: Published) {
        self.order.push_back((published.timestamp, id.clone()));
        self.entries.insert(id, Entry::Done(published));
    }
}
