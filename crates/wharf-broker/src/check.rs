//! Checks every engine applies to a publish before storing anything, so that bad input gets
//! the same error whatever the engine.

use bytes::Bytes;

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{BrokerError, Result};
use crate::types::{HEADER_DELIVER_AT, Message, TopicConfig, header};

/// Most headers on one message.
pub const MAX_HEADERS: usize = 100;
/// Most messages in one publish.
pub const MAX_PUBLISH_MESSAGES: usize = 100_000;
/// Most bytes (keys, values and headers) in one publish.
pub const MAX_PUBLISH_BYTES: u64 = 32 * 1024 * 1024;

/// The partition of `m` on an external engine: its explicit partition (checked against
/// `partitions`), else its key's hash (murmur2), else — since such engines deduplicate per
/// partition or look ids up by partition — its `wharf-message-id`'s hash, so a retry lands where
/// the original did; else the next partition of `round_robin`.
pub fn route(m: &Message, topic: &str, partitions: u32, round_robin: &AtomicU32) -> Result<u32> {
    let n = partitions;
    match (m.partition, &m.key) {
        (Some(p), _) if p < n => Ok(p),
        (Some(p), _) => Err(BrokerError::PartitionNotFound {
            topic: topic.to_owned(),
            partition: p,
            partitions: n,
        }),
        (None, Some(key)) => Ok(crate::murmur2::partition_for_key(key, n)),
        (None, None) => Ok(match m.id() {
            Some(id) => crate::murmur2::partition_for_key(id.as_bytes(), n),
            None => round_robin.fetch_add(1, Ordering::Relaxed) % n,
        }),
    }
}

/// Size of a message as the topic's `max_message_bytes` counts it: key, value and headers.
pub fn message_size(m: &Message) -> u64 {
    let headers: usize = m.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    (m.key.as_ref().map_or(0, Bytes::len) + m.value.len() + headers) as u64
}

/// Checks a publish of `messages` to a topic with `config`: at least one message, the batch
/// limits, each message's size and headers, and `wharf-deliver-at`. Partitions are the
/// engine's to check.
pub fn publish(messages: &[Message], config: &TopicConfig) -> Result<()> {
    if messages.is_empty() {
        return Err(BrokerError::invalid(
            "messages",
            "at least one message is required",
        ));
    }
    if messages.len() > MAX_PUBLISH_MESSAGES {
        return Err(BrokerError::invalid(
            "messages",
            format!("at most {MAX_PUBLISH_MESSAGES} messages per publish"),
        ));
    }
    let total: u64 = messages.iter().map(message_size).sum();
    if total > MAX_PUBLISH_BYTES {
        return Err(BrokerError::invalid(
            "messages",
            format!("{total} bytes in one publish; at most {MAX_PUBLISH_BYTES}"),
        ));
    }
    for m in messages {
        let size = message_size(m);
        if size > config.max_message_bytes {
            return Err(BrokerError::MessageTooLarge {
                size,
                limit: config.max_message_bytes,
            });
        }
        if m.headers.len() > MAX_HEADERS {
            return Err(BrokerError::invalid(
                "headers",
                format!(
                    "{} headers; at most {MAX_HEADERS} are allowed",
                    m.headers.len()
                ),
            ));
        }
        if let Some((name, _)) = m
            .headers
            .iter()
            .find(|(k, _)| k.is_empty() || k.len() > 256 || k.chars().any(char::is_control))
        {
            return Err(BrokerError::invalid(
                "headers",
                format!(
                    "header name {:?} must be 1 to 256 characters without control characters",
                    name.chars().take(40).collect::<String>()
                ),
            ));
        }
        if let Some(at) = header(&m.headers, HEADER_DELIVER_AT)
            && crate::time::parse_rfc3339(at).is_none()
        {
            return Err(BrokerError::invalid(
                "wharf-deliver-at",
                format!("{at:?} is not an RFC 3339 time such as 2026-11-26T10:00:00Z"),
            ));
        }
    }
    Ok(())
}

/// Indexes (ascending) of the messages that do not get the publish's shared headers: they
/// set one of them themselves, or the headers would take them over the topic's
/// `max_message_bytes` or [`MAX_HEADERS`].
pub fn unshared(
    messages: &[Message],
    shared_headers: &[(String, String)],
    config: &TopicConfig,
) -> Vec<usize> {
    if shared_headers.is_empty() {
        return Vec::new();
    }
    let shared_size: u64 = shared_headers
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    messages
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            message_size(m) + shared_size > config.max_message_bytes
                || m.headers.len() + shared_headers.len() > MAX_HEADERS
                || m.headers
                    .iter()
                    .any(|(k, _)| shared_headers.iter().any(|(s, _)| s == k))
        })
        .map(|(i, _)| i)
        .collect()
}
