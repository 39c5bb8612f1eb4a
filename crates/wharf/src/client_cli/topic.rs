//! `wharf topic create|list|describe|delete`.

use std::time::Duration;

use serde_json::{Value, json};
use wharf_client::{Durability, ErrorKind, TopicConfig, proto};

use super::output::{self, Table, bytes_text, fields, millis_text};
use super::{CmdResult, ConnArgs, Ctx};

/// Flags of `wharf topic`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopicArgs {
    #[command(subcommand)]
    cmd: TopicCommand,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

#[derive(Debug, clap::Subcommand)]
enum TopicCommand {
    /// Create a topic (idempotent: succeeds if it exists with the same settings; unset
    /// settings take the server's defaults). Prints the topic.
    Create(CreateArgs),
    /// List every topic with its partitions, messages, durability and retention.
    #[command(visible_alias = "ls")]
    List,
    /// Show a topic's settings and its partitions' offsets.
    #[command(visible_alias = "get")]
    Describe {
        /// The topic.
        topic: String,
    },
    /// Delete a topic with its messages and subscriptions.
    #[command(visible_alias = "rm")]
    Delete {
        /// The topic.
        topic: String,
        /// Succeed if there is no such topic.
        #[arg(long)]
        if_exists: bool,
    },
}

/// When a publish counts as done.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DurabilityArg {
    /// fsync before acknowledging (group commit); nothing acknowledged is lost on power loss.
    Always,
    /// Acknowledge once written; fsync at most every --sync-interval-ms.
    Interval,
    /// Acknowledge once written; never fsync on the publish path.
    None,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The topic.
    topic: String,
    /// Number of partitions [server default: 1].
    #[arg(long, short = 'p')]
    partitions: Option<u32>,
    /// When a publish counts as done [server default: always].
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// With `--durability interval`: the longest time between fsyncs, in ms [default: 100].
    #[arg(long, value_name = "MS")]
    sync_interval_ms: Option<u64>,
    /// Delete messages older than this many ms [default: keep].
    #[arg(long, value_name = "MS")]
    retention_ms: Option<u64>,
    /// Delete a partition's oldest messages beyond this many bytes [default: keep].
    #[arg(long, value_name = "BYTES")]
    retention_bytes: Option<u64>,
    /// How long a `wharf-message-id` is remembered for deduplication, in ms.
    #[arg(long, value_name = "MS")]
    dedup_window_ms: Option<u64>,
    /// The largest message (key + value + headers) in bytes.
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<u64>,
    /// The size of a log segment in bytes.
    #[arg(long, value_name = "BYTES")]
    segment_bytes: Option<u64>,
}

pub(crate) async fn run(ctx: &Ctx, args: TopicArgs) -> CmdResult {
    let client = ctx.connect().await?;
    match args.cmd {
        TopicCommand::Create(c) => {
            let config = TopicConfig {
                partitions: c.partitions,
                durability: c.durability.map(|d| match d {
                    DurabilityArg::Always => Durability::Always,
                    DurabilityArg::Interval => Durability::Interval,
                    DurabilityArg::None => Durability::None,
                }),
                durability_interval: c.sync_interval_ms.map(Duration::from_millis),
                retention: c.retention_ms.map(Duration::from_millis),
                retention_bytes: c.retention_bytes,
                dedup_window: c.dedup_window_ms.map(Duration::from_millis),
                max_message_bytes: c.max_message_bytes,
                segment_bytes: c.segment_bytes,
            };
            let topic = client.create_topic(c.topic, config).await?;
            print_topic(ctx, &topic)
        }
        TopicCommand::List => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            if ctx.json() {
                let list: Vec<Value> = topics.iter().map(topic_json).collect();
                return output::json_document(&json!({ "topics": list }));
            }
            let mut t = Table::new(["TOPIC", "PARTITIONS", "MESSAGES", "DURABILITY", "RETENTION"]);
            for topic in &topics {
                let config = topic.config.unwrap_or_default();
                t.row(vec![
                    topic.name.clone(),
                    topic.partitions.len().to_string(),
                    messages(topic).to_string(),
                    durability_text(&config),
                    retention_text(&config),
                ]);
            }
            t.print()
        }
        TopicCommand::Describe { topic } => {
            let topic = client.get_topic(topic).await?;
            print_topic(ctx, &topic)
        }
        TopicCommand::Delete { topic, if_exists } => {
            let deleted = match client.delete_topic(topic.clone()).await {
                Ok(()) => true,
                Err(e) if if_exists && e.kind() == ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            };
            if ctx.json() {
                output::json_document(&json!({ "topic": topic, "deleted": deleted }))
            } else if deleted {
                output::line(&format!("deleted topic {topic}"))
            } else {
                output::line(&format!("no topic {topic}"))
            }
        }
    }
}

/// Messages held: the sum over partitions of `high_watermark - start_offset`.
fn messages(t: &proto::Topic) -> u64 {
    t.partitions
        .iter()
        .map(|p| p.high_watermark.saturating_sub(p.start_offset))
        .sum()
}

fn durability_name(d: i32) -> &'static str {
    match proto::Durability::try_from(d) {
        Ok(proto::Durability::Always) => "always",
        Ok(proto::Durability::Interval) => "interval",
        Ok(proto::Durability::None) => "none",
        _ => "default",
    }
}

fn durability_text(c: &proto::TopicConfig) -> String {
    match (durability_name(c.durability), c.durability_interval_ms) {
        ("interval", Some(ms)) => format!("interval {}", millis_text(ms)),
        (name, _) => name.to_owned(),
    }
}

fn retention_text(c: &proto::TopicConfig) -> String {
    let age = c.retention_ms.filter(|&ms| ms > 0).map(millis_text);
    let size = c.retention_bytes.filter(|&b| b > 0).map(bytes_text);
    match (age, size) {
        (None, None) => "forever".into(),
        (Some(a), None) => a,
        (None, Some(s)) => s,
        (Some(a), Some(s)) => format!("{a}, {s}"),
    }
}

/// A topic as JSON: name, partition count, messages held, settings, and every partition's
/// offsets.
pub(crate) fn topic_json(t: &proto::Topic) -> Value {
    let c = t.config.unwrap_or_default();
    let offsets: Vec<Value> = t
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "start_offset": p.start_offset,
                "high_watermark": p.high_watermark,
            })
        })
        .collect();
    json!({
        "name": t.name,
        "partitions": t.partitions.len(),
        "messages": messages(t),
        "settings": {
            "partitions": c.partitions,
            "durability": durability_name(c.durability),
            "sync_interval_ms": c.durability_interval_ms,
            "retention_ms": c.retention_ms,
            "retention_bytes": c.retention_bytes,
            "dedup_window_ms": c.dedup_window_ms,
            "max_message_bytes": c.max_message_bytes,
            "segment_bytes": c.segment_bytes,
        },
        "offsets": offsets,
    })
}

fn print_topic(ctx: &Ctx, t: &proto::Topic) -> CmdResult {
    if ctx.json() {
        return output::json_document(&topic_json(t));
    }
    let c = t.config.unwrap_or_default();
    let opt = |v: Option<u64>, f: fn(u64) -> String| v.map_or_else(|| "-".to_owned(), f);
    let mut text = fields(&[
        ("topic", t.name.clone()),
        ("partitions", t.partitions.len().to_string()),
        ("messages", messages(t).to_string()),
        ("durability", durability_text(&c)),
        ("retention", retention_text(&c)),
        ("dedup window", opt(c.dedup_window_ms, millis_text)),
        ("max message", opt(c.max_message_bytes, bytes_text)),
        ("segment size", opt(c.segment_bytes, bytes_text)),
    ]);
    text.push('\n');
    let mut table = Table::new(["PARTITION", "START", "END", "MESSAGES"]);
    for p in &t.partitions {
        table.row(vec![
            p.partition.to_string(),
            p.start_offset.to_string(),
            p.high_watermark.to_string(),
            p.high_watermark.saturating_sub(p.start_offset).to_string(),
        ]);
    }
    text.push_str(&table.render());
    output::write_stdout(&text)
}
