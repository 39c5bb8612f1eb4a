//! Dead letters: the headers a dead letter carries (DESIGN.md §1) and the two header
//! transforms every engine applies — moving a message to a dead-letter topic, and putting a
//! dead letter back (redrive).

use crate::types::{HEADER_MESSAGE_ID, Message, StoredMessage, TopicConfig, header};

/// The topic the message was dead-lettered from.
pub const SOURCE_TOPIC: &str = "wharf-dlq-source-topic";
/// Its partition there.
pub const SOURCE_PARTITION: &str = "wharf-dlq-source-partition";
/// Its offset there.
pub const SOURCE_OFFSET: &str = "wharf-dlq-source-offset";
/// How many deliveries it had.
pub const DELIVERIES: &str = "wharf-dlq-deliveries";
/// Why it was dead-lettered (`lease_expired`, `nack`, or the reason a terminate gave).
pub const REASON: &str = "wharf-dlq-reason";
/// When (RFC 3339).
pub const TIME: &str = "wharf-dlq-time";
/// The producer's `wharf-message-id`, kept aside on a dead letter and restored on redrive.
pub const MESSAGE_ID: &str = "wharf-dlq-message-id";

/// Settings of a dead-letter topic: one partition, room for the largest message any topic
/// takes plus the dead-letter headers (so a poison message can always be moved out of the
/// way), and the default dedup window (for the ids that make moving a message idempotent).
pub fn topic_config() -> TopicConfig {
    TopicConfig {
        partitions: 1,
        max_message_bytes: 16 * 1024 * 1024 + 64 * 1024,
        ..TopicConfig::default()
    }
}

/// Longest reason kept, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// The dead letter of `m` (from `topic`), for partition 0 of the dead-letter topic.
///
/// The `wharf-dlq-*` headers say where it came from and why; the producer's
/// `wharf-message-id` is kept aside in [`MESSAGE_ID`], and `move_id` becomes the dead
/// letter's own id, so that moving it again after a crash is a duplicate, not a second dead
/// letter. Headers of an earlier dead-lettering (a redriven message failing again) are
/// replaced.
pub fn dead_letter(
    m: &StoredMessage,
    topic: &str,
    deliveries: u32,
    reason: &str,
    now_ms: i64,
    move_id: String,
) -> Message {
    let mut headers: Vec<(String, String)> = m
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("wharf-dlq-") && k != HEADER_MESSAGE_ID)
        .cloned()
        .collect();
    if let Some(id) = header(&m.headers, HEADER_MESSAGE_ID) {
        headers.push((MESSAGE_ID.to_owned(), id.to_owned()));
    }
    headers.extend([
        (SOURCE_TOPIC.to_owned(), topic.to_owned()),
        (SOURCE_PARTITION.to_owned(), m.partition.to_string()),
        (SOURCE_OFFSET.to_owned(), m.offset.to_string()),
        (DELIVERIES.to_owned(), deliveries.to_string()),
        (
            REASON.to_owned(),
            reason.chars().take(MAX_REASON_CHARS).collect(),
        ),
        (TIME.to_owned(), crate::time::format_rfc3339(now_ms)),
        (HEADER_MESSAGE_ID.to_owned(), move_id),
    ]);
    Message {
        key: m.key.clone(),
        value: m.value.clone(),
        headers,
        partition: Some(0),
    }
}

/// The headers of a dead letter put back: the dead-letter topic's own id goes, the
/// producer's comes back. The `wharf-dlq-source-*` headers stay (they say which message the
/// copy stands for: see [`as_original`]).
pub fn redriven(headers: &[(String, String)]) -> Vec<(String, String)> {
    let original = header(headers, MESSAGE_ID).map(str::to_owned);
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k != HEADER_MESSAGE_ID && k != MESSAGE_ID)
        .cloned()
        .collect();
    if let Some(id) = original {
        out.push((HEADER_MESSAGE_ID.to_owned(), id));
    }
    out
}

/// A redriven copy presented as the message it stands for: the partition and offset it was
/// dead-lettered from, without the `wharf-dlq-*` headers.
pub fn as_original(mut m: StoredMessage) -> StoredMessage {
    if let (Some(p), Some(o)) = (
        header(&m.headers, SOURCE_PARTITION).and_then(|v| v.parse().ok()),
        header(&m.headers, SOURCE_OFFSET).and_then(|v| v.parse().ok()),
    ) {
        m.partition = p;
        m.offset = o;
    }
    m.headers.retain(|(k, _)| !k.starts_with("wharf-dlq-"));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(headers: &[(&str, &str)]) -> StoredMessage {
        StoredMessage {
            partition: 3,
            offset: 42,
            timestamp: 7,
            key: Some("k".into()),
            value: "v".into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_dead_letter_goes_back_as_it_was() {
        let m = stored(&[("a", "1"), (HEADER_MESSAGE_ID, "producer-7")]);
        let dead = dead_letter(&m, "orders", 5, "nack", 0, "move-1".into());
        assert_eq!(header(&dead.headers, HEADER_MESSAGE_ID), Some("move-1"));
        assert_eq!(header(&dead.headers, MESSAGE_ID), Some("producer-7"));
        assert_eq!(header(&dead.headers, SOURCE_OFFSET), Some("42"));
        assert_eq!(header(&dead.headers, REASON), Some("nack"));
        let back = redriven(&dead.headers);
        assert_eq!(header(&back, HEADER_MESSAGE_ID), Some("producer-7"));
        assert_eq!(header(&back, MESSAGE_ID), None);
        let copy = StoredMessage {
            partition: 0,
            offset: 0,
            headers: back,
            ..m.clone()
        };
        let original = as_original(copy);
        assert_eq!((original.partition, original.offset), (3, 42));
        assert_eq!(
            original.headers,
            [
                ("a".to_owned(), "1".to_owned()),
                (HEADER_MESSAGE_ID.to_owned(), "producer-7".to_owned())
            ]
        );
    }

    #[test]
    fn dead_again_replaces_the_earlier_headers() {
        let m = stored(&[(REASON, "old"), (SOURCE_OFFSET, "1")]);
        let dead = dead_letter(&m, "t", 1, &"x".repeat(5000), 0, "id".into());
        assert_eq!(dead.headers.iter().filter(|(k, _)| k == REASON).count(), 1);
        assert_eq!(header(&dead.headers, REASON).map(str::len), Some(1000));
    }
}
