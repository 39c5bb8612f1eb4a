//! Shared subscriptions (queues) on NATS: a durable pull consumer with explicit acks on each
//! partition's stream, plus a per-subscription redrive stream.
//!
//! - The consumer's `ack_wait` is the lease and its `backoff` list `lease + backoff(n)`, so a
//!   delivery whose lease expires comes back after the subscription's backoff (without
//!   jitter: JetStream's backoff is exact). `max_deliver` is `max_deliveries + 100`: a
//!   delivery past the limit is never handed out; Wharf moves it to the dead-letter topic
//!   (reason `lease_expired`) and terminates it (`+TERM`), and if the move fails JetStream
//!   delivers it again and Wharf retries.
//! - An `ack_id` is the delivery's JetStream ack subject plus the lease deadline Wharf gave it
//!   and the subscription's creation time (`{subject}#{deadline_ms}#{created_ms}`): any node can settle it, and a settle after the deadline is
//!   `lease_expired` unless an `extend` (kept in the `{prefix}_leases` bucket) moved it.
//! - A nack is `-NAK` with the delay (the given one, or the subscription's backoff with
//!   jitter); on the last allowed delivery it dead-letters at once (reason `nack`), as on the
//!   embedded engine. `terminate` dead-letters, then `+TERM`.
//! - `wharf-deliver-at` in the future: the delivery is given back with `-NAK` and that delay
//!   instead of being handed out (each deferral counts as a JetStream delivery).
//! - Redrive copies dead letters (producer id restored, `wharf-dlq-*` dropped) into the
//!   redrive stream, which only this subscription's consumer reads; a cursor in KV says how
//!   far the dead-letter topic has been redriven.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use wharf_broker::{
    AckOutcome, BrokerError, Delivery, HEADER_DELIVER_AT, Position, PublishOptions, ReadRequest,
    ReadResult, ReceiveRequest, Result, SharedConfig, StoredMessage, SubscriptionConfig,
    SubscriptionInfo, SubscriptionPartition,
};

use wharf_broker::envelope;

use crate::{NatsEngine, names, unavailable};

use wharf_broker::dlq::{
    SOURCE_OFFSET as DLQ_SOURCE_OFFSET, SOURCE_PARTITION as DLQ_SOURCE_PARTITION,
};
/// NATS headers of a redriven copy: where the message first was.
const SRC_PARTITION: &str = "Wharf-Src-Partition";
const SRC_OFFSET: &str = "Wharf-Src-Offset";
/// Most deliveries one receive returns.
const MAX_RECEIVE: usize = 1000;
/// Most `ack_id`s one settle takes.
const MAX_ACK_IDS: usize = 10_000;
/// Settles in flight at once.
const SETTLE_CONCURRENCY: usize = 64;

fn check_lease(lease_ms: u64) -> Result<()> {
    if (100..=12 * 3_600_000).contains(&lease_ms) {
        Ok(())
    } else {
        Err(BrokerError::InvalidArgument {
            field: "lease_ms",
            reason: "must be within 100..=43200000".into(),
        })
    }
}
/// A long-poll looks again this often for redeliveries (expired leases, nack delays), which
/// no publish announces.
const RECHECK: Duration = Duration::from_millis(100);
/// The longest a receive waits.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The consumer of a shared subscription (on every partition stream and the redrive stream).
fn consumer_name(sub: &str) -> String {
    format!("s_{}", names::escape(sub))
}

/// Exponential backoff after `deliveries` failed attempts, with the subscription's jitter.
fn backoff(c: &SharedConfig, deliveries: u32, jitter: bool) -> u64 {
    if jitter {
        c.backoff_ms(deliveries, || u64::from(rand_u32()))
    } else {
        c.backoff_base_ms(deliveries)
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u32
}

/// `-NAK` redelivering after `ms` (a bare `-NAK`, at once, for 0: JetStream would read a
/// zero delay as "use the consumer's backoff").
fn nak(ms: u64) -> Bytes {
    if ms == 0 {
        Bytes::from_static(b"-NAK")
    } else {
        Bytes::from(format!(
            "-NAK {{\"delay\": {}}}",
            ms.saturating_mul(1_000_000)
        ))
    }
}

/// A delivery's JetStream ack subject, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AckToken {
    subject: String,
    stream: String,
    consumer: String,
    delivered: u32,
    stream_seq: u64,
    /// The lease deadline Wharf gave the delivery (ms).
    deadline: i64,
    /// The subscription's creation time: an id from an earlier subscription of the same
    /// name is not this one's.
    incarnation: i64,
}

impl AckToken {
    fn parse(ack_id: &str) -> Option<Self> {
        let mut parts = ack_id.splitn(3, '#');
        let subject = parts.next()?;
        let deadline = parts.next()?.parse().ok()?;
        let incarnation = match parts.next() {
            Some(i) => i.parse().ok()?,
            None => 0,
        };
        let t: Vec<&str> = subject.split('.').collect();
        // v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        // v2: $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<token>
        let base = match (t.first(), t.get(1), t.len()) {
            (Some(&"$JS"), Some(&"ACK"), 9) => 2,
            (Some(&"$JS"), Some(&"ACK"), 12) => 4,
            _ => return None,
        };
        Some(Self {
            subject: subject.to_owned(),
            stream: t[base].to_owned(),
            consumer: t[base + 1].to_owned(),
            delivered: t[base + 2].parse().ok()?,
            stream_seq: t[base + 3].parse().ok()?,
            deadline,
            incarnation,
        })
    }

    fn lease_key(&self) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.incarnation, self.stream, self.consumer, self.stream_seq, self.delivered
        )
    }
}

/// A message pulled from a consumer.
pub(crate) struct Pulled {
    pub(crate) token_subject: String,
    pub(crate) delivered: u32,
    pub(crate) stream_seq: u64,
    pub(crate) payload: Bytes,
    pub(crate) headers: Option<HeaderMap>,
}

fn header_of<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

impl NatsEngine {
    fn redrive_stream(&self, topic: &str, sub: &str) -> String {
        format!(
            "{}_r_{}_s_{}",
            self.inner.names.prefix(),
            names::escape(topic),
            names::escape(sub)
        )
    }

    fn redrive_subject(&self, topic: &str, sub: &str) -> String {
        format!(
            "{}.r.{}.{}",
            self.inner.names.prefix(),
            names::escape(topic),
            names::escape(sub)
        )
    }

    fn redrive_key(topic: &str, sub: &str) -> String {
        format!("redrive/{topic}/{sub}")
    }

    /// A JetStream API request with a JSON body; the answer as JSON, or the API's error.
    pub(crate) async fn api(
        &self,
        subject: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let answer = self
            .inner
            .client
            .request(
                format!("$JS.API.{subject}"),
                Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            )
            .await
            .map_err(|e| unavailable(subject, e))?;
        let v: serde_json::Value = serde_json::from_slice(&answer.payload)
            .map_err(|e| unavailable(subject, format!("unreadable answer: {e}")))?;
        if let Some(err) = v.get("error") {
            return Err(BrokerError::EngineUnavailable(format!(
                "nats: {subject}: {}",
                err.get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("error")
            )));
        }
        Ok(v)
    }

    fn consumer_config(
        &self,
        name: &str,
        c: &SharedConfig,
        start_seq: Option<u64>,
    ) -> serde_json::Value {
        let lease_ns = c.lease_ms.saturating_mul(1_000_000);
        // Delivery n (1-based) that is not settled comes back after lease + backoff(n).
        let backoff: Vec<u64> = (1..=c.max_deliveries)
            .map(|n| lease_ns.saturating_add(backoff(c, n, false).saturating_mul(1_000_000)))
            .collect();
        let mut config = json!({
            "durable_name": name,
            "ack_policy": "explicit",
            "ack_wait": lease_ns,
            // Past the limit: JetStream keeps redelivering (after the backoff list's last
            // delay) a message over it until Wharf has moved it to the dead-letter topic and
            // terminated it, so a move that fails is tried again (up to 100 times) rather
            // than lost. (2.9 refuses -1, "unlimited", together with a backoff list.)
            "max_deliver": i64::from(c.max_deliveries) + 100,
            "backoff": backoff,
            "max_ack_pending": 1_000_000,
            "max_waiting": 512,
            "replay_policy": "instant",
            "deliver_policy": "all",
        });
        if let Some(seq) = start_seq {
            config["deliver_policy"] = json!("by_start_sequence");
            config["opt_start_seq"] = json!(seq);
        }
        config
    }

    async fn create_consumer(
        &self,
        stream: &str,
        name: &str,
        config: serde_json::Value,
    ) -> Result<()> {
        // Made once and never replaced: one that exists was made by a concurrent create of
        // this subscription (a delete removes consumers before the registry key), and its
        // start position must not move.
        if self
            .api(&format!("CONSUMER.INFO.{stream}.{name}"), json!({}))
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.api(
            &format!("CONSUMER.DURABLE.CREATE.{stream}.{name}"),
            json!({ "stream_name": stream, "config": config }),
        )
        .await
        .map(|_| ())
    }

    /// Claims the dead-letter topic's name for this subscription (`wharf.dlq.a.b.c` is both
    /// (a, b.c) and (a.b, c)): an owner key `dlqowner/{dlq}` made with a create. Another
    /// subscription that owns it and still exists makes this one's name unusable; an owner
    /// that no longer exists (a delete cut short) is replaced.
    async fn own_dead_letter_topic(&self, topic: &str, name: &str, dlq: &str) -> Result<()> {
        let key = format!("dlqowner/{dlq}");
        let me = format!("{topic}/{name}");
        loop {
            match self.inner.meta.create(&key, Bytes::from(me.clone())).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                }
                Err(e) => return Err(unavailable("claiming the dead-letter topic", e)),
            }
            let Some(entry) = self
                .inner
                .meta
                .entry(&key)
                .await
                .map_err(|e| unavailable("reading the dead-letter topic's owner", e))?
            else {
                continue;
            };
            let owner = String::from_utf8_lossy(&entry.value).into_owned();
            if owner == me {
                return Ok(());
            }
            let alive = match owner.split_once('/') {
                Some((t, s)) => self.sub_record(t, s).await?.is_some(),
                None => false,
            };
            if alive {
                return Err(BrokerError::InvalidArgument {
                    field: "subscription",
                    reason: format!(
                        "its dead-letter topic {dlq:?} already belongs to subscription {owner:?}; choose another name"
                    ),
                });
            }
            // Left by a delete cut short: its dead letters are not ours.
            let _ = self.delete_topic_inner(dlq).await;
            if self
                .inner
                .meta
                .update(&key, Bytes::from(me.clone()), entry.revision)
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    pub(crate) async fn shared_create(
        &self,
        topic: &str,
        name: &str,
        config: &SharedConfig,
        partitions: u32,
        fresh: bool,
    ) -> Result<()> {
        if config.ordered_by_key {
            return Err(BrokerError::NotSupported {
                what: "ordered_by_key",
                engine: "nats",
            });
        }
        let dlq = wharf_broker::names::dlq_topic(topic, name);
        let _ = fresh;
        self.own_dead_letter_topic(topic, name, &dlq).await?;
        self.create_topic_inner(&dlq, wharf_broker::dlq::topic_config())
            .await?;
        let consumer = consumer_name(name);
        for p in 0..partitions {
            let stream = self.inner.names.stream(topic, p);
            let (start, hw) = self.partition_state(topic, p).await?;
            let from = match config.start {
                Position::Earliest => None,
                Position::Latest => Some(hw),
                Position::Offset(o) => Some(o.max(start)),
                Position::Timestamp(t) => {
                    Some(self.offset_for_time(&stream, p, start, hw, t).await?)
                }
            };
            let cfg = self.consumer_config(&consumer, config, from.map(|o| o + 1));
            self.create_consumer(&stream, &consumer, cfg).await?;
        }
        let redrive = self.redrive_stream(topic, name);
        self.inner
            .js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: redrive.clone(),
                subjects: vec![self.redrive_subject(topic, name)],
                description: Some(format!("Wharf redrive of {topic}/{name}")),
                // One consumer reads it: a redriven copy is removed once acked or terminated.
                retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
                storage: async_nats::jetstream::stream::StorageType::File,
                num_replicas: self.inner.replicas,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&format!("creating {redrive}"), e))?;
        let cfg = self.consumer_config(&consumer, config, None);
        self.create_consumer(&redrive, &consumer, cfg).await?;
        Ok(())
    }

    pub(crate) async fn shared_delete(
        &self,
        topic: &str,
        name: &str,
        partitions: u32,
    ) -> Result<()> {
        let consumer = consumer_name(name);
        for p in 0..partitions {
            let stream = self.inner.names.stream(topic, p);
            let _ = self
                .api(&format!("CONSUMER.DELETE.{stream}.{consumer}"), json!({}))
                .await;
        }
        let _ = self
            .inner
            .js
            .delete_stream(self.redrive_stream(topic, name))
            .await;
        let _ = self.inner.meta.purge(Self::redrive_key(topic, name)).await;
        let dlq = wharf_broker::names::dlq_topic(topic, name);
        self.delete_topic_inner(&dlq).await.or_else(|e| match e {
            BrokerError::TopicNotFound(_) => Ok(()),
            e => Err(e),
        })?;
        let _ = self.inner.meta.purge(format!("dlqowner/{dlq}")).await;
        Ok(())
    }

    /// Next DLQ offset to redrive, and the KV revision it was read at (0 = never written).
    async fn redrive_cursor(&self, topic: &str, name: &str) -> Result<(u64, u64)> {
        let entry = self
            .inner
            .meta
            .entry(Self::redrive_key(topic, name))
            .await
            .map_err(|e| unavailable("reading the redrive cursor", e))?;
        Ok(match entry {
            Some(e) if !e.value.is_empty() => (
                std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                e.revision,
            ),
            Some(e) => (0, e.revision),
            None => (0, 0),
        })
    }

    pub(crate) async fn shared_info(
        &self,
        topic: &str,
        name: &str,
        config: &SharedConfig,
    ) -> Result<SubscriptionInfo> {
        let partitions = self.require_topic(topic).await?.partitions;
        let consumer = consumer_name(name);
        let mut parts = Vec::with_capacity(partitions as usize);
        let mut in_flight = 0;
        for p in 0..partitions {
            let stream = self.inner.names.stream(topic, p);
            let info = self
                .api(&format!("CONSUMER.INFO.{stream}.{consumer}"), json!({}))
                .await?;
            let (start, hw) = self.partition_state(topic, p).await?;
            let floor = info["ack_floor"]["stream_seq"].as_u64().unwrap_or(0);
            // Before the first ack the floor is where the consumer started.
            let started = info["config"]["opt_start_seq"]
                .as_u64()
                .map_or(0, |s| s.saturating_sub(1));
            let committed = floor.max(started);
            in_flight += info["num_ack_pending"].as_u64().unwrap_or(0);
            parts.push(SubscriptionPartition {
                partition: p,
                committed,
                lag: hw.saturating_sub(committed),
                behind_retention: committed < start,
            });
        }
        let redrive = self.redrive_stream(topic, name);
        if let Ok(info) = self
            .api(&format!("CONSUMER.INFO.{redrive}.{consumer}"), json!({}))
            .await
        {
            in_flight += info["num_ack_pending"].as_u64().unwrap_or(0);
        }
        let (cursor, _) = self.redrive_cursor(topic, name).await?;
        let dlq = wharf_broker::names::dlq_topic(topic, name);
        let dlq_hw = self.partition_state(&dlq, 0).await.map_or(0, |(_, hw)| hw);
        Ok(SubscriptionInfo {
            topic: topic.to_owned(),
            name: name.to_owned(),
            config: SubscriptionConfig::Shared(config.clone()),
            partitions: parts,
            members: Vec::new(),
            generation: 0,
            in_flight,
            delayed: 0,
            dead_lettered: dlq_hw.saturating_sub(cursor),
        })
    }

    /// Up to `max` messages available now on `stream` for `consumer` (a no-wait pull).
    pub(crate) async fn pull(
        &self,
        stream: &str,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<Pulled>> {
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("pulling", e))?;
        client
            .publish_with_reply(
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                inbox,
                Bytes::from(
                    serde_json::to_vec(&json!({ "batch": max, "no_wait": true }))
                        .unwrap_or_default(),
                ),
            )
            .await
            .map_err(|e| unavailable("pulling", e))?;
        let mut out = Vec::new();
        while out.len() < max {
            let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .map_err(|_| unavailable("pulling", format!("no answer from {stream}")))?;
            let Some(m) = next else { break };
            if let Some(status) = m.status {
                // 404 no messages, 408 the no-wait request ended; anything else is an error.
                if status.as_u16() == 404 || status.as_u16() == 408 {
                    break;
                }
                if status.as_u16() == 503 {
                    return Err(BrokerError::EngineUnavailable(
                        "nats: JetStream has no responders".into(),
                    ));
                }
                return Err(unavailable(
                    &format!("pulling from {stream}"),
                    format!("status {status} {}", m.description.unwrap_or_default()),
                ));
            }
            let Some(reply) = m.reply else { continue };
            let token = AckToken::parse(&format!("{reply}#0"));
            let Some(token) = token else { continue };
            out.push(Pulled {
                token_subject: token.subject,
                delivered: token.delivered,
                stream_seq: token.stream_seq,
                payload: m.payload,
                headers: m.headers,
            });
        }
        let _ = sub.unsubscribe().await;
        Ok(out)
    }

    /// A pulled message as Wharf's: from the envelope, or (plain NATS publishers) the payload
    /// and headers as they are. Redriven copies report where the message first was.
    pub(crate) fn decode_pulled(&self, partition: u32, p: &Pulled) -> Result<StoredMessage> {
        let headers: Vec<(String, String)> = p
            .headers
            .iter()
            .flat_map(|h| {
                h.iter().flat_map(|(k, vs)| {
                    vs.iter()
                        .map(move |v| (k.to_string(), v.as_str().to_owned()))
                })
            })
            .collect();
        // A plain NATS message's time: the ack subject's timestamp token (ns; token 7 of
        // the 9-token form, 9 of the 12-token form).
        let tokens: Vec<&str> = p.token_subject.split('.').collect();
        let ts_index = if tokens.len() == 12 { 9 } else { 7 };
        let time = tokens
            .get(ts_index)
            .and_then(|t| t.parse::<i64>().ok())
            .map_or(0, |ns| ns / 1_000_000);
        let mut m = crate::decode_message(
            partition,
            p.stream_seq.saturating_sub(1),
            p.payload.clone(),
            headers.clone(),
            time,
        )?;
        if let (Some(part), Some(off)) = (
            header_of(&headers, SRC_PARTITION),
            header_of(&headers, SRC_OFFSET),
        ) {
            m.partition = part.parse().unwrap_or(m.partition);
            m.offset = off.parse().unwrap_or(m.offset);
        }
        Ok(m)
    }

    /// Moves a message to the subscription's dead-letter topic.
    async fn dead_letter(
        &self,
        topic: &str,
        sub: &str,
        m: &StoredMessage,
        (stream, seq): (&str, u64),
        deliveries: u32,
        reason: &str,
    ) -> Result<()> {
        let now = self.inner.clock.now_ms();
        // A retry after a crash between this and the +TERM is a duplicate. The id names the
        // stored copy's stream and sequence: a redriven copy dead-lettered again is another
        // dead letter, not a duplicate of the first.
        let letter = wharf_broker::dlq::dead_letter(
            m,
            topic,
            deliveries,
            reason,
            now,
            format!("dlq/{sub}/{stream}/{seq}/{deliveries}/{topic}"),
        );
        let dlq = wharf_broker::names::dlq_topic(topic, sub);
        self.publish_inner(&dlq, vec![letter], PublishOptions::default())
            .await
            .map(|_| ())
    }

    /// Sends an ack kind (`+ACK`, `-NAK …`, `+WPI`, `+TERM`) and waits for the server.
    async fn ack_kind(&self, subject: &str, body: Bytes) -> Result<()> {
        self.inner
            .client
            .request(subject.to_owned(), body)
            .await
            .map(|_| ())
            .map_err(|e| unavailable("settling a delivery", e))
    }

    pub(crate) async fn shared_receive(
        &self,
        topic: &str,
        sub: &str,
        request: ReceiveRequest,
    ) -> Result<Vec<Delivery>> {
        let (record, config) = self.require_shared_sub(topic, sub).await?;
        if request.max == 0 || request.max > MAX_RECEIVE {
            return Err(BrokerError::InvalidArgument {
                field: "max",
                reason: format!("must be within 1..={MAX_RECEIVE}"),
            });
        }
        let requested = request.lease.map_or(config.lease_ms, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        });
        check_lease(requested)?;
        // JetStream redelivers after the consumer's ack wait: a longer lease cannot be kept.
        let lease_ms = requested.min(config.lease_ms);
        let partitions = self.require_topic(topic).await?.partitions;
        let max = request.max;
        let consumer = consumer_name(sub);
        let mut sources: Vec<(String, u32)> = (0..partitions)
            .map(|p| (self.inner.names.stream(topic, p), p))
            .collect();
        // Redriven messages first: they have waited longest.
        sources.insert(0, (self.redrive_stream(topic, sub), u32::MAX));
        let until = tokio::time::Instant::now() + request.wait.min(MAX_WAIT);
        // Listen for publishes before the first look, so one in between is not missed.
        let mut wake = if request.wait.is_zero() {
            None
        } else {
            let mut subs = Vec::new();
            for p in 0..partitions {
                subs.push(
                    self.inner
                        .client
                        .subscribe(self.inner.names.subject(topic, p))
                        .await
                        .map_err(|e| unavailable("waiting for a publish", e))?,
                );
            }
            Some(futures_util::stream::select_all(subs))
        };
        let start = self
            .inner
            .next_partition
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
        let mut out = Vec::new();
        loop {
            for i in 0..sources.len() {
                if out.len() >= max {
                    break;
                }
                // The redrive stream first, then the partitions from a rotating start.
                let (stream, p) = if i == 0 {
                    &sources[0]
                } else {
                    &sources[1 + (start + i - 1) % (sources.len() - 1)]
                };
                // What is already collected is leased to the caller: a later failure ends
                // the receive with it rather than dropping it (it would stay leased to nobody).
                let pulled = match self.pull(stream, &consumer, max - out.len()).await {
                    Ok(p) => p,
                    Err(_) if !out.is_empty() => return Ok(out),
                    Err(e) => return Err(e),
                };
                for pulled in pulled {
                    let m = self.decode_pulled(if *p == u32::MAX { 0 } else { *p }, &pulled)?;
                    let now = self.inner.clock.now_ms();
                    if pulled.delivered > config.max_deliveries {
                        // The last lease expired: dead-letter it, as the embedded engine does.
                        self.dead_letter(
                            topic,
                            sub,
                            &m,
                            (stream, pulled.stream_seq),
                            config.max_deliveries,
                            "lease_expired",
                        )
                        .await?;
                        self.ack_kind(&pulled.token_subject, Bytes::from_static(b"+TERM"))
                            .await?;
                        continue;
                    }
                    if let Some(at) = header_of(&m.headers, HEADER_DELIVER_AT)
                        .and_then(wharf_broker::time::parse_rfc3339)
                        && at > now
                    {
                        let ms = u64::try_from(at - now).unwrap_or(0);
                        self.ack_kind(&pulled.token_subject, nak(ms)).await?;
                        continue;
                    }
                    let deadline = now.saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX));
                    out.push(Delivery {
                        ack_id: format!(
                            "{}#{deadline}#{}",
                            pulled.token_subject, record.created_ms
                        ),
                        message: m,
                        delivery_count: pulled.delivered,
                        lease_deadline: deadline,
                    });
                }
            }
            let now = tokio::time::Instant::now();
            if !out.is_empty() || now >= until {
                return Ok(out);
            }
            let step = (until - now).min(RECHECK);
            match &mut wake {
                Some(w) => {
                    let _ = tokio::time::timeout(step, w.next()).await;
                }
                None => return Ok(out),
            }
        }
    }

    /// Checks an `ack_id` against the subscription; `Err(code)` is the per-id outcome.
    async fn check_token(
        &self,
        topic: &str,
        sub: &str,
        partitions: u32,
        incarnation: i64,
        ack_id: &str,
    ) -> std::result::Result<AckToken, String> {
        let Some(t) = AckToken::parse(ack_id) else {
            return Err("bad_ack_id".into());
        };
        if t.incarnation != incarnation {
            // Issued by an earlier subscription of this name.
            return Err("lease_expired".into());
        }
        let ours = t.consumer == consumer_name(sub)
            && (t.stream == self.redrive_stream(topic, sub)
                || (0..partitions).any(|p| self.inner.names.stream(topic, p) == t.stream));
        if !ours {
            return Err("bad_ack_id".into());
        }
        // Nacked or terminated already (by any node): stale.
        match self
            .inner
            .leases
            .get(format!("done.{}", t.lease_key()))
            .await
        {
            Ok(Some(_)) => return Err("lease_expired".into()),
            Ok(None) => {}
            Err(e) => return Err(format!("engine_unavailable: {e}")),
        }
        let now = self.inner.clock.now_ms();
        if now <= t.deadline {
            return Ok(t);
        }
        // Past the deadline it was given: an extend may have moved it.
        match self.inner.leases.get(t.lease_key()).await {
            Ok(Some(v)) => {
                let extended: i64 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if now <= extended {
                    Ok(t)
                } else {
                    Err("lease_expired".into())
                }
            }
            Ok(None) => Err("lease_expired".into()),
            Err(e) => Err(format!("engine_unavailable: {e}")),
        }
    }

    /// Settles deliveries; one outcome per `ack_id`, in order.
    pub(crate) async fn shared_settle(
        &self,
        topic: &str,
        sub: &str,
        ack_ids: &[String],
        how: Settle<'_>,
    ) -> Result<Vec<AckOutcome>> {
        if ack_ids.is_empty() || ack_ids.len() > MAX_ACK_IDS {
            return Err(BrokerError::InvalidArgument {
                field: "ack_ids",
                reason: format!("give 1 to {MAX_ACK_IDS} ack_ids"),
            });
        }
        if let Settle::Extend(lease_ms) = how {
            check_lease(lease_ms)?;
        }
        let (record, config) = self.require_shared_sub(topic, sub).await?;
        let partitions = self.require_topic(topic).await?.partitions;
        let (config, how, incarnation) = (&config, &how, record.created_ms);
        let out = futures_util::stream::iter(ack_ids.iter().cloned())
            .map(|id: String| async move {
                let error = match self
                    .check_token(topic, sub, partitions, incarnation, &id)
                    .await
                {
                    Err(code) => Some(code),
                    Ok(t) => match self.settle_one(topic, sub, config, &t, how).await {
                        Ok(()) => None,
                        Err(e) => Some(e.code().to_owned()),
                    },
                };
                AckOutcome { ack_id: id, error }
            })
            .buffered(SETTLE_CONCURRENCY)
            .collect()
            .await;
        Ok(out)
    }

    /// Marks a delivery finished by a nack or terminate, so that its `ack_id` is stale from
    /// now on; `false` if it already was.
    async fn mark_settled(&self, t: &AckToken) -> Result<bool> {
        match self
            .inner
            .leases
            .create(format!("done.{}", t.lease_key()), Bytes::from_static(b"1"))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                Ok(false)
            }
            Err(e) => Err(unavailable("recording a settled delivery", e)),
        }
    }

    async fn message_of(
        &self,
        topic: &str,
        sub: &str,
        t: &AckToken,
    ) -> Result<Option<StoredMessage>> {
        if t.stream == self.redrive_stream(topic, sub) {
            let Some(copy) = self.get(&t.stream, 0, t.stream_seq - 1).await? else {
                return Ok(None);
            };
            return Ok(Some(copy));
        }
        let p = t
            .stream
            .rsplit('_')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        self.get(&t.stream, p, t.stream_seq - 1).await
    }

    async fn settle_one(
        &self,
        topic: &str,
        sub: &str,
        config: &SharedConfig,
        t: &AckToken,
        how: &Settle<'_>,
    ) -> Result<()> {
        match how {
            Settle::Ack => self.ack_kind(&t.subject, Bytes::from_static(b"+ACK")).await,
            Settle::Nack(delay) => {
                if !self.mark_settled(t).await? {
                    return Err(BrokerError::LeaseExpired);
                }
                if t.delivered >= config.max_deliveries {
                    if let Some(m) = self.message_of(topic, sub, t).await? {
                        self.dead_letter(
                            topic,
                            sub,
                            &m,
                            (&t.stream, t.stream_seq),
                            t.delivered,
                            "nack",
                        )
                        .await?;
                    }
                    return self
                        .ack_kind(&t.subject, Bytes::from_static(b"+TERM"))
                        .await;
                }
                let ms = delay.unwrap_or_else(|| backoff(config, t.delivered, true));
                self.ack_kind(&t.subject, nak(ms)).await
            }
            Settle::Extend(lease_ms) => {
                // JetStream's `+WPI` restarts the ack wait: a longer lease cannot be kept.
                let lease = (*lease_ms).min(config.lease_ms);
                let until = self
                    .inner
                    .clock
                    .now_ms()
                    .saturating_add(i64::try_from(lease).unwrap_or(i64::MAX));
                self.ack_kind(&t.subject, Bytes::from_static(b"+WPI"))
                    .await?;
                self.inner
                    .leases
                    .put(t.lease_key(), Bytes::from(until.to_string()))
                    .await
                    .map(|_| ())
                    .map_err(|e| unavailable("recording an extended lease", e))
            }
            Settle::Terminate(reason) => {
                if !self.mark_settled(t).await? {
                    return Err(BrokerError::LeaseExpired);
                }
                let reason = if reason.is_empty() {
                    "terminated"
                } else {
                    reason
                };
                if let Some(m) = self.message_of(topic, sub, t).await? {
                    self.dead_letter(
                        topic,
                        sub,
                        &m,
                        (&t.stream, t.stream_seq),
                        t.delivered,
                        reason,
                    )
                    .await?;
                }
                self.ack_kind(&t.subject, Bytes::from_static(b"+TERM"))
                    .await
            }
        }
    }

    pub(crate) async fn shared_dead_letters(
        &self,
        topic: &str,
        sub: &str,
        request: ReadRequest,
    ) -> Result<ReadResult> {
        self.require_shared_sub(topic, sub).await?;
        self.read_inner(&wharf_broker::names::dlq_topic(topic, sub), request)
            .await
    }

    pub(crate) async fn shared_redrive(&self, topic: &str, sub: &str, max: usize) -> Result<u64> {
        if max == 0 || max > 100_000 {
            return Err(BrokerError::InvalidArgument {
                field: "max",
                reason: "must be within 1..=100000".into(),
            });
        }
        self.require_shared_sub(topic, sub).await?;
        let dlq = wharf_broker::names::dlq_topic(topic, sub);
        let (cursor, revision) = self.redrive_cursor(topic, sub).await?;
        let r = self
            .read_inner(
                &dlq,
                ReadRequest {
                    max_messages: max.min(10_000),
                    ..ReadRequest::new(0, Position::Offset(cursor))
                },
            )
            .await?;
        if r.messages.is_empty() {
            return Ok(0);
        }
        let subject = self.redrive_subject(topic, sub);
        let stamp = self.inner.clock.now_ms();
        let mut acks = Vec::with_capacity(r.messages.len());
        for m in &r.messages {
            // The producer's id back; the `wharf-dlq-*` headers stay out of the copy (its
            // source travels in NATS headers).
            let mut headers = wharf_broker::dlq::redriven(&m.headers);
            headers.retain(|(k, _)| !k.starts_with("wharf-dlq-"));
            let source_partition = header_of(&m.headers, DLQ_SOURCE_PARTITION)
                .unwrap_or("0")
                .to_owned();
            let source_offset = header_of(&m.headers, DLQ_SOURCE_OFFSET)
                .unwrap_or("0")
                .to_owned();
            let payload = envelope::encode(stamp, m.key.as_deref(), &headers, &[], &m.value);
            let mut nats_headers = HeaderMap::new();
            nats_headers.insert(envelope::MARKER, envelope::MARKER_VALUE);
            nats_headers.insert(SRC_PARTITION, source_partition.as_str());
            nats_headers.insert(SRC_OFFSET, source_offset.as_str());
            // A redrive retried after a crash before the cursor moved is a duplicate.
            nats_headers.insert("Nats-Msg-Id", format!("redrive/{}", m.offset).as_str());
            acks.push(
                self.inner
                    .js
                    .send_publish(
                        subject.clone(),
                        async_nats::jetstream::message::PublishMessage::build()
                            .payload(payload)
                            .headers(nats_headers),
                    )
                    .await
                    .map_err(|e| unavailable("redriving", e))?,
            );
        }
        for ack in acks {
            ack.await.map_err(|e| unavailable("redriving", e))?;
        }
        // The copies are durable before the cursor moves past them: a crash in between
        // redrives them again, and the stream's dedup drops the second copy.
        let value = Bytes::from(r.next_offset.to_string());
        let key = Self::redrive_key(topic, sub);
        let moved = if revision == 0 {
            self.inner
                .meta
                .create(&key, value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            self.inner
                .meta
                .update(&key, value, revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        moved.map_err(|e| unavailable("moving the redrive cursor (a concurrent redrive?)", e))?;
        Ok(r.next_offset.saturating_sub(cursor))
    }
}

/// What to do with a delivery.
#[derive(Clone, Copy)]
pub(crate) enum Settle<'a> {
    Ack,
    Nack(Option<u64>),
    Extend(u64),
    Terminate(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = AckToken::parse("$JS.ACK.w_t_a_0.s_q.3.17.20.1795748479509047176.0#123").unwrap();
        assert_eq!(
            (
                t.stream.as_str(),
                t.consumer.as_str(),
                t.delivered,
                t.stream_seq,
                t.deadline
            ),
            ("w_t_a_0", "s_q", 3, 17, 123)
        );
        let v2 = AckToken::parse("$JS.ACK.hub.ACC.w_t_a_0.s_q.1.2.3.4.5.tok#9").unwrap();
        assert_eq!(
            (v2.stream.as_str(), v2.delivered, v2.stream_seq),
            ("w_t_a_0", 1, 2)
        );
        for bad in [
            "",
            "#1",
            "$JS.ACK.a.b.c#1",
            "$JS.ACK.a.b.x.1.2.3.4#1",
            "$JS.ACK.a.b.1.1.2.3.4#x",
            "x.ACK.a.b.1.1.2.3.4#1",
        ] {
            assert!(AckToken::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn backoff_schedule() {
        let c = SharedConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            backoff_jitter_pct: 0,
            ..SharedConfig::default()
        };
        let s: Vec<u64> = (1..=6).map(|n| backoff(&c, n, true)).collect();
        assert_eq!(s, [100, 200, 400, 800, 1000, 1000]);
        let j = SharedConfig {
            backoff_jitter_pct: 50,
            ..c
        };
        for n in 1..=6 {
            let b = backoff(&j, n, true);
            assert!(b <= 1000 && b >= backoff(&j, n, false) / 2, "{n}: {b}");
        }
    }
}
