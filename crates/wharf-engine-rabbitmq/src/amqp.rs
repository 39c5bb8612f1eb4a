//! Small helpers over lapin: queue arguments, header values, stream consumers.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use wharf_broker::{BrokerError, Result};

/// `engine_unavailable` with what failed.
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::EngineUnavailable(format!("rabbitmq: {what}: {e}"))
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// The oldest message still held.
    First,
    /// The last chunk written (its messages, then what comes after).
    Last,
    /// This offset (or the oldest held, if retention removed it).
    Offset(u64),
    /// The first chunk written at or after this time (seconds since the Unix epoch, the
    /// broker's clock).
    TimestampSecs(u64),
}

impl Start {
    fn value(self) -> AMQPValue {
        match self {
            Self::First => AMQPValue::LongString("first".into()),
            Self::Last => AMQPValue::LongString("last".into()),
            Self::Offset(o) => AMQPValue::LongLongInt(i64::try_from(o).unwrap_or(i64::MAX)),
            Self::TimestampSecs(s) => AMQPValue::Timestamp(s),
        }
    }
}

/// A table of string arguments plus the given typed ones.
pub(crate) fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(k), v);
    }
    t
}

/// A string header's value.
pub(crate) fn header_str<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// An integer header's value (`x-stream-offset` arrives as a signed 64-bit integer).
pub(crate) fn header_u64(headers: Option<&FieldTable>, name: &str) -> Option<u64> {
    match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

/// A header value as text, for messages published by plain AMQP clients.
pub(crate) fn value_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Timestamp(i) => i.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        _ => return None,
    })
}

/// A new channel with publisher confirms on.
pub(crate) async fn confirm_channel(conn: &Connection) -> Result<Channel> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a channel", e))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| unavailable("turning publisher confirms on", e))?;
    Ok(ch)
}

/// A consumer of stream `queue` from `start`, on a channel of its own, holding at most
/// `prefetch` unacknowledged deliveries (streams require a prefetch and manual acks).
pub(crate) struct StreamReader {
    channel: Channel,
    consumer: Consumer,
    tag: String,
}

impl StreamReader {
    pub(crate) async fn open(
        conn: &Connection,
        queue: &str,
        start: Start,
        prefetch: u16,
    ) -> Result<Self> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(|e| unavailable("setting a prefetch", e))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                table(vec![("x-stream-offset", start.value())]),
            )
            .await
            .map_err(|e| not_found_or_unavailable(queue, e))?;
        let tag = consumer.tag().as_str().to_owned();
        Ok(Self {
            channel,
            consumer,
            tag,
        })
    }

    /// The next delivery, or `None` if none arrives within `wait`.
    pub(crate) async fn next(
        &mut self,
        wait: Duration,
    ) -> Result<Option<lapin::message::Delivery>> {
        match tokio::time::timeout(wait, self.consumer.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(unavailable(
                "reading a stream",
                "the consumer was cancelled",
            )),
            Ok(Some(Err(e))) => Err(unavailable("reading a stream", e)),
            Ok(Some(Ok(d))) => Ok(Some(d)),
        }
    }

    /// Gives credit back for every delivery up to and including `tag`.
    pub(crate) async fn ack_up_to(&self, tag: u64) -> Result<()> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| unavailable("acknowledging stream deliveries", e))
    }

    /// Cancels the consumer and closes its channel (bounded: a blocked connection must not
    /// hold a request; closing the connection frees the channel anyway).
    pub(crate) async fn close(self) {
        let close = async {
            let _ = self
                .channel
                .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
                .await;
            let _ = self.channel.close(200, "done".into()).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
    }
}

/// A consume that failed because the stream is gone is `topic_not_found` (named by the
/// stream here: callers that know the topic rename it, see [`for_topic`]); anything else
/// means RabbitMQ is not answering as it should.
pub(crate) fn not_found_or_unavailable(queue: &str, e: lapin::Error) -> BrokerError {
    let text = e.to_string();
    if text.contains("NOT_FOUND") || text.contains("404") {
        BrokerError::TopicNotFound(queue.to_owned())
    } else {
        unavailable(&format!("using the stream {queue}"), text)
    }
}

/// Names the topic in a `topic_not_found` raised for one of its streams.
pub(crate) fn for_topic(topic: &str) -> impl Fn(BrokerError) -> BrokerError + '_ {
    move |e| match e {
        BrokerError::TopicNotFound(_) => BrokerError::TopicNotFound(topic.to_owned()),
        other => other,
    }
}

/// `f`, or `engine_unavailable` if it takes longer than `limit` (a RabbitMQ that stopped
/// answering without closing the connection must not hang a request).
pub(crate) async fn timed<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(unavailable(what, format!("no answer within {limit:?}"))),
    }
}
