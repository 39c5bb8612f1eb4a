//! The subscription registry: each subscription's settings in the KV bucket, under
//! `sub/{topic}/{name}` (`/` appears in no topic or subscription name, so the key parses back
//! unambiguously).

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use wharf_broker::{BrokerError, Result, SharedConfig, StreamConfig, SubscriptionConfig};

use crate::{NatsEngine, unavailable};

/// What the registry keeps per subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubRecord {
    /// Its settings.
    pub(crate) config: SubscriptionConfig,
    /// When it was created (Wharf's clock, ms): tells a re-created subscription from the
    /// one before it.
    pub(crate) created_ms: i64,
}

pub(crate) fn key(topic: &str, name: &str) -> String {
    format!("sub/{topic}/{name}")
}

fn prefix(topic: &str) -> String {
    format!("sub/{topic}/")
}

impl NatsEngine {
    /// The subscription's record, if it exists.
    pub(crate) async fn sub_record(&self, topic: &str, name: &str) -> Result<Option<SubRecord>> {
        if !crate::names::kv_safe(topic) || !crate::names::kv_safe(name) {
            // Never created here (see `names::kv_safe`).
            return Ok(None);
        }
        let raw = self
            .inner
            .meta
            .get(key(topic, name))
            .await
            .map_err(|e| unavailable("reading subscription settings", e))?;
        raw.map(|b| {
            serde_json::from_slice(&b).map_err(|e| {
                BrokerError::Internal(format!(
                    "subscription {topic}/{name}: unreadable settings in NATS KV: {e}"
                ))
            })
        })
        .transpose()
    }

    /// The subscription's record, or `subscription_not_found` (`topic_not_found` first).
    pub(crate) async fn require_sub(&self, topic: &str, name: &str) -> Result<SubRecord> {
        match self.sub_record(topic, name).await? {
            Some(r) => Ok(r),
            None => {
                self.require_topic(topic).await?;
                Err(BrokerError::SubscriptionNotFound {
                    topic: topic.to_owned(),
                    subscription: name.to_owned(),
                })
            }
        }
    }

    /// A stream subscription's settings, or the error for a shared one.
    pub(crate) async fn require_stream_sub(&self, topic: &str, name: &str) -> Result<StreamConfig> {
        match self.require_sub(topic, name).await?.config {
            SubscriptionConfig::Stream(c) => Ok(c),
            SubscriptionConfig::Shared(_) => Err(BrokerError::InvalidArgument {
                field: "kind",
                reason: format!(
                    "{name:?} is a shared subscription: use receive/ack, not join/fetch/commit"
                ),
            }),
        }
    }

    /// A shared subscription's record and settings, or the error for a stream one.
    pub(crate) async fn require_shared_sub(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<(SubRecord, SharedConfig)> {
        let record = self.require_sub(topic, name).await?;
        match &record.config {
            SubscriptionConfig::Shared(c) => {
                let c = c.clone();
                Ok((record, c))
            }
            SubscriptionConfig::Stream(_) => Err(BrokerError::InvalidArgument {
                field: "kind",
                reason: format!(
                    "{name:?} is a stream subscription: use join/fetch/commit, not receive/ack"
                ),
            }),
        }
    }

    /// Claims the subscription's key. `Ok(true)` if this call created it, `Ok(false)` if it
    /// existed with the same settings.
    pub(crate) async fn claim_sub(
        &self,
        topic: &str,
        name: &str,
        config: &SubscriptionConfig,
    ) -> Result<(bool, SubRecord)> {
        let record = SubRecord {
            config: config.clone(),
            created_ms: self.inner.clock.now_ms(),
        };
        let value = Bytes::from(
            serde_json::to_vec(&record).map_err(|e| BrokerError::Internal(e.to_string()))?,
        );
        match self.inner.meta.create(key(topic, name), value).await {
            Ok(_) => Ok((true, record)),
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                let existing = self.require_sub(topic, name).await?;
                if existing.config != *config {
                    return Err(BrokerError::SubscriptionExists {
                        topic: topic.to_owned(),
                        subscription: name.to_owned(),
                    });
                }
                Ok((false, existing))
            }
            Err(e) => Err(unavailable(&format!("creating subscription {name}"), e)),
        }
    }

    /// Removes the subscription's key (its commit point).
    pub(crate) async fn unclaim_sub(&self, topic: &str, name: &str) -> Result<()> {
        self.inner
            .meta
            .purge(key(topic, name))
            .await
            .map_err(|e| unavailable(&format!("deleting subscription {name}"), e))
    }

    /// The names of the topic's subscriptions, sorted.
    pub(crate) async fn sub_names(&self, topic: &str) -> Result<Vec<String>> {
        let p = prefix(topic);
        let keys: Vec<String> = self
            .inner
            .meta
            .keys()
            .await
            .map_err(|e| unavailable("listing subscriptions", e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("listing subscriptions", e))?;
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&p))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect();
        names.sort();
        Ok(names)
    }
}
