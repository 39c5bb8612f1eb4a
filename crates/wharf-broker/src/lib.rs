//! `wharf-broker`: Wharf's messaging semantics behind one trait.
//!
//! Topics split into partitions; every message goes to one partition (Kafka's murmur2 of the
//! key, round-robin without one, or explicit). Subscriptions read a topic independently:
//! **stream** subscriptions are consumer groups with committed offsets and replay; **shared**
//! subscriptions are queues with leases, acks, retries and dead letters. Publishes carrying a
//! `wharf-message-id` are deduplicated within the topic's window. Everything goes through
//! the [`Engine`] trait, implemented here on `wharf-log` by [`EmbeddedEngine`].
//!
//! # Layout
//! - [`engine`]: the [`Engine`] trait.
//! - [`check`]: the publish checks every engine applies.
//! - [`types`]: settings, messages, requests, results, capabilities.
//! - [`error`]: [`BrokerError`] with stable codes.
//! - [`names`]: the naming rule; dead-letter topic names.
//! - [`murmur2`]: Kafka's key hash.
//! - [`time`]: RFC 3339 timestamps of the delay and dead-letter headers.
//! - `embedded`: the engine on `wharf-log` (topics, dedup, stream groups, shared
//!   subscriptions with dead letters and redrive, metadata files).

pub mod check;
pub mod dlq;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod murmur2;
pub mod names;
pub mod time;
pub mod types;

mod embedded;

pub use embedded::{EmbeddedConfig, EmbeddedEngine};
pub use engine::Engine;
pub use error::{BrokerError, Result};
pub use types::*;
