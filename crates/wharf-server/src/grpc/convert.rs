//! Between `wharf.v1` messages and the broker's types, through the REST layer's settings
//! types where they exist, so defaults and checks are the same on both surfaces.

use std::collections::HashMap;

use wharf_broker as broker;
use wharf_proto::v1;

use crate::error::{ApiError, ApiResult};
use crate::wire::{
    BackoffSettings, DurabilityMode, FromPosition, RetentionSettings, SubscriptionKind,
    SubscriptionSettings, TopicSettings,
};

/// A read position; unset (or `EDGE_UNSPECIFIED`) is `default`.
pub(crate) fn position(
    field: &str,
    p: Option<&v1::Position>,
    default: broker::Position,
) -> ApiResult<broker::Position> {
    use v1::position::At;
    Ok(match p.and_then(|p| p.at) {
        None => default,
        Some(At::Edge(e)) => match edge(field, e)? {
            Some(p) => p,
            None => default,
        },
        Some(At::Offset(o)) => broker::Position::Offset(o),
        Some(At::TimestampMs(t)) => broker::Position::Timestamp(t),
    })
}

/// An `Edge` value: `None` for unspecified.
pub(crate) fn edge(field: &str, value: i32) -> ApiResult<Option<broker::Position>> {
    match v1::Edge::try_from(value) {
        Ok(v1::Edge::Unspecified) => Ok(None),
        Ok(v1::Edge::Earliest) => Ok(Some(broker::Position::Earliest)),
        Ok(v1::Edge::Latest) => Ok(Some(broker::Position::Latest)),
        Err(_) => Err(ApiError::invalid(field, format!("unknown edge {value}"))),
    }
}

fn position_out(p: broker::Position) -> v1::Position {
    use v1::position::At;
    let at = match p {
        broker::Position::Earliest => At::Edge(v1::Edge::Earliest as i32),
        broker::Position::Latest => At::Edge(v1::Edge::Latest as i32),
        broker::Position::Offset(o) => At::Offset(o),
        broker::Position::Timestamp(t) => At::TimestampMs(t),
    };
    v1::Position { at: Some(at) }
}

/// Position as the REST settings' `start` / `start_offset` / `start_time` fields.
type StartFields = (Option<FromPosition>, Option<u64>, Option<String>);

fn start_fields(p: Option<&v1::Position>) -> ApiResult<StartFields> {
    Ok(match position("start", p, broker::Position::Earliest)? {
        broker::Position::Earliest => (None, None, None),
        broker::Position::Latest => (Some(FromPosition::Latest), None, None),
        broker::Position::Offset(o) => (None, Some(o), None),
        broker::Position::Timestamp(t) => (None, None, Some(t.to_string())),
    })
}

/// A topic's settings as the REST layer's (unset fields stay unset).
pub(crate) fn topic_settings(c: Option<&v1::TopicConfig>) -> ApiResult<TopicSettings> {
    let Some(c) = c else {
        return Ok(TopicSettings::default());
    };
    let durability = match v1::Durability::try_from(c.durability) {
        Ok(v1::Durability::Unspecified) => None,
        Ok(v1::Durability::Always) => Some(DurabilityMode::Always),
        Ok(v1::Durability::Interval) => Some(DurabilityMode::Interval),
        Ok(v1::Durability::None) => Some(DurabilityMode::None),
        Err(_) => {
            return Err(ApiError::invalid(
                "durability",
                format!("unknown durability {}", c.durability),
            ));
        }
    };
    let retention =
        (c.retention_ms.is_some() || c.retention_bytes.is_some()).then_some(RetentionSettings {
            max_age_ms: c.retention_ms,
            max_bytes: c.retention_bytes,
        });
    Ok(TopicSettings {
        partitions: c.partitions,
        durability,
        sync_interval_ms: c.durability_interval_ms,
        retention,
        dedup_window_ms: c.dedup_window_ms,
        max_message_bytes: c.max_message_bytes,
        segment_bytes: c.segment_bytes,
    })
}

pub(crate) fn topic_config_out(c: &broker::TopicConfig) -> v1::TopicConfig {
    let (durability, interval) = match c.durability {
        broker::Durability::Always => (v1::Durability::Always, None),
        broker::Durability::Interval { ms } => (v1::Durability::Interval, Some(ms)),
        broker::Durability::None => (v1::Durability::None, None),
    };
    v1::TopicConfig {
        partitions: Some(c.partitions),
        durability: durability as i32,
        durability_interval_ms: interval,
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        dedup_window_ms: Some(c.dedup_window_ms),
        max_message_bytes: Some(c.max_message_bytes),
        segment_bytes: Some(c.segment_bytes),
    }
}

pub(crate) fn topic_out(t: broker::TopicInfo) -> v1::Topic {
    v1::Topic {
        config: Some(topic_config_out(&t.config)),
        partitions: t
            .partitions
            .iter()
            .map(|p| v1::PartitionInfo {
                partition: p.partition,
                start_offset: p.start_offset,
                high_watermark: p.high_watermark,
            })
            .collect(),
        name: t.name,
    }
}

/// A stream subscription's settings as the REST layer's.
pub(crate) fn stream_settings(c: &v1::StreamConfig) -> ApiResult<SubscriptionSettings> {
    let (start, start_offset, start_time) = start_fields(c.start.as_ref())?;
    Ok(SubscriptionSettings {
        kind: SubscriptionKind::Stream,
        start,
        start_offset,
        start_time,
        session_timeout_ms: c.session_timeout_ms,
        max_deliveries: None,
        lease_ms: None,
        backoff: None,
        ordered_by_key: None,
        max_in_flight_per_member: None,
        push: None,
    })
}

/// A shared subscription's settings as the REST layer's.
pub(crate) fn shared_settings(c: &v1::SharedConfig) -> ApiResult<SubscriptionSettings> {
    let (start, start_offset, start_time) = start_fields(c.start.as_ref())?;
    let backoff = (c.backoff_initial_ms.is_some()
        || c.backoff_max_ms.is_some()
        || c.backoff_jitter_pct.is_some())
    .then_some(BackoffSettings {
        initial_ms: c.backoff_initial_ms,
        max_ms: c.backoff_max_ms,
        jitter_pct: c.backoff_jitter_pct,
    });
    Ok(SubscriptionSettings {
        kind: SubscriptionKind::Shared,
        start,
        start_offset,
        start_time,
        session_timeout_ms: None,
        max_deliveries: c.max_deliveries,
        lease_ms: c.lease_ms,
        backoff,
        ordered_by_key: c.ordered_by_key,
        max_in_flight_per_member: c.max_in_flight_per_member,
        push: c.push.as_ref().map(|p| crate::wire::PushSettings {
            app: p.app.clone(),
            route: p.route.clone(),
            max_in_flight: p.max_in_flight,
            timeout_ms: p.timeout_ms,
        }),
    })
}

pub(crate) fn subscription_out(i: broker::SubscriptionInfo) -> v1::Subscription {
    use v1::subscription::Config;
    let config = match &i.config {
        broker::SubscriptionConfig::Stream(s) => Config::Stream(v1::StreamConfig {
            start: Some(position_out(s.start)),
            session_timeout_ms: Some(s.session_timeout_ms),
        }),
        broker::SubscriptionConfig::Shared(s) => Config::Shared(shared_config_out(s)),
    };
    v1::Subscription {
        topic: i.topic,
        name: i.name,
        config: Some(config),
        partitions: i
            .partitions
            .iter()
            .map(|p| v1::SubscriptionPartition {
                partition: p.partition,
                committed: p.committed,
                lag: p.lag,
                behind_retention: p.behind_retention,
            })
            .collect(),
        members: i.members,
        generation: i.generation,
        in_flight: i.in_flight,
        delayed: i.delayed,
        dead_lettered: i.dead_lettered,
    }
}

fn shared_config_out(s: &broker::SharedConfig) -> v1::SharedConfig {
    v1::SharedConfig {
        max_deliveries: Some(s.max_deliveries),
        lease_ms: Some(s.lease_ms),
        backoff_initial_ms: Some(s.backoff_initial_ms),
        backoff_max_ms: Some(s.backoff_max_ms),
        backoff_jitter_pct: Some(s.backoff_jitter_pct),
        ordered_by_key: Some(s.ordered_by_key),
        max_in_flight_per_member: Some(s.max_in_flight_per_member),
        start: Some(position_out(s.start)),
        push: s.push.as_ref().map(|p| v1::PushConfig {
            app: p.app.clone(),
            route: Some(p.route.clone()),
            max_in_flight: Some(p.max_in_flight),
            timeout_ms: Some(p.timeout_ms),
        }),
    }
}

/// A message to publish.
pub(crate) fn message_in(m: v1::PublishMessage) -> broker::Message {
    let headers = if m.headers.is_empty() {
        Vec::new()
    } else {
        let mut headers: Vec<(String, String)> = m.headers.into_iter().collect();
        // A map has no order; keep the stored order stable.
        headers.sort_unstable();
        headers
    };
    broker::Message {
        key: m.key,
        value: m.value,
        headers,
        partition: m.partition,
    }
}

pub(crate) fn message_out(m: broker::StoredMessage) -> v1::Message {
    v1::Message {
        partition: m.partition,
        offset: m.offset,
        timestamp_ms: m.timestamp,
        key: m.key,
        value: m.value,
        headers: m.headers.into_iter().collect::<HashMap<_, _>>(),
    }
}

pub(crate) fn published_out(p: broker::Published) -> v1::PublishResult {
    v1::PublishResult {
        partition: p.partition,
        offset: p.offset,
        timestamp_ms: p.timestamp,
        duplicate: p.duplicate,
    }
}

pub(crate) fn read_out(r: broker::ReadResult) -> v1::ReadResponse {
    v1::ReadResponse {
        messages: r.messages.into_iter().map(message_out).collect(),
        next_offset: r.next_offset,
        start_offset: r.start_offset,
        high_watermark: r.high_watermark,
        skipped_to: r.skipped_to,
    }
}

pub(crate) fn membership_out(m: broker::Membership) -> v1::Membership {
    v1::Membership {
        member_id: m.member_id,
        generation: m.generation,
        partitions: m.partitions,
    }
}

pub(crate) fn committed_out(c: Vec<broker::Committed>) -> v1::CommitResponse {
    v1::CommitResponse {
        offsets: c
            .into_iter()
            .map(|c| v1::Committed {
                partition: c.partition,
                offset: c.offset,
            })
            .collect(),
    }
}

pub(crate) fn delivery_out(d: broker::Delivery) -> v1::Delivery {
    v1::Delivery {
        ack_id: d.ack_id,
        message: Some(message_out(d.message)),
        delivery_count: d.delivery_count,
        lease_deadline_ms: d.lease_deadline,
    }
}

pub(crate) fn outcomes_out(o: Vec<broker::AckOutcome>) -> Vec<v1::AckOutcome> {
    o.into_iter()
        .map(|o| v1::AckOutcome {
            ack_id: o.ack_id,
            error: o.error,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_topic_config_is_the_rest_default() {
        let a = topic_settings(None).unwrap().to_config().unwrap();
        let b = topic_settings(Some(&v1::TopicConfig::default()))
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(a, broker::TopicConfig::default());
        assert_eq!(b, broker::TopicConfig::default());
    }

    #[test]
    fn topic_config_round_trips() {
        let c = broker::TopicConfig {
            partitions: 3,
            durability: broker::Durability::Interval { ms: 7 },
            retention_ms: Some(1000),
            retention_bytes: None,
            dedup_window_ms: 0,
            max_message_bytes: 4096,
            segment_bytes: 1 << 20,
        };
        let back = topic_settings(Some(&topic_config_out(&c)))
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_enum_values_are_invalid_arguments() {
        let c = v1::TopicConfig {
            durability: 99,
            ..Default::default()
        };
        assert_eq!(
            topic_settings(Some(&c)).unwrap_err().code,
            "invalid_argument"
        );
        assert_eq!(edge("from", 7).unwrap_err().code, "invalid_argument");
    }

    #[test]
    fn shared_config_round_trips() {
        let s = broker::SharedConfig {
            max_deliveries: 3,
            lease_ms: 500,
            backoff_initial_ms: 10,
            backoff_max_ms: 20,
            backoff_jitter_pct: 0,
            ordered_by_key: true,
            max_in_flight_per_member: 9,
            start: broker::Position::Offset(4),
            push: Some(broker::PushConfig {
                app: "billing".into(),
                route: "/in".into(),
                max_in_flight: 3,
                timeout_ms: 700,
            }),
        };
        let back = shared_settings(&shared_config_out(&s))
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(back, broker::SubscriptionConfig::Shared(s));
    }
}
