//! `wharf dlq list|redrive TOPIC [SUB]`: a shared subscription's dead letters (the topic
//! `wharf.dlq.{topic}.{sub}`).

use serde_json::{Value, json};
use wharf_client::{
    DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER, DLQ_SOURCE_PARTITION_HEADER,
};

use super::output::{self, Table};
use super::{CmdResult, ConnArgs, Ctx};

/// Flags of `wharf dlq`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
SUB defaults to TOPIC: a queue's subscription has the queue's name.

Examples:
  wharf dlq list emails
  wharf dlq list orders shipping --json
  wharf dlq redrive emails")]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    cmd: DlqCommand,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// List dead letters with why they died (`wharf-dlq-reason`), their delivery count and
    /// where they came from.
    #[command(visible_alias = "ls")]
    List {
        /// The topic (or queue).
        topic: String,
        /// The shared subscription [default: TOPIC, a queue's].
        sub: Option<String>,
        /// Start at this offset of the dead-letter topic [default: the first one held].
        #[arg(long, value_name = "OFFSET")]
        offset: Option<u64>,
        /// Most dead letters to list.
        #[arg(long, default_value_t = 100, value_name = "N")]
        max: u32,
    },
    /// Put dead letters back into the subscription (only that one): they are delivered again.
    Redrive {
        /// The topic (or queue).
        topic: String,
        /// The shared subscription [default: TOPIC, a queue's].
        sub: Option<String>,
        /// Most dead letters to redrive [default: the server's, 100000].
        #[arg(long, value_name = "N")]
        max: Option<u32>,
    },
}

pub(crate) async fn run(ctx: &Ctx, args: DlqArgs) -> CmdResult {
    let client = ctx.connect().await?;
    match args.cmd {
        DlqCommand::List {
            topic,
            sub,
            offset,
            max,
        } => {
            let sub = sub.unwrap_or_else(|| topic.clone());
            let read = client
                .dead_letters(topic.clone(), sub.clone(), offset, Some(max))
                .await?;
            if ctx.json() {
                let list: Vec<Value> = read.records.iter().map(output::record_json).collect();
                return output::json_document(&json!({
                    "topic": topic,
                    "subscription": sub,
                    "dead_letters": list,
                    "next_offset": read.next_offset,
                    "high_watermark": read.high_watermark,
                }));
            }
            if read.records.is_empty() {
                return output::line(&format!("no dead letters for {topic}/{sub}"));
            }
            let mut t = Table::new(["OFFSET", "REASON", "DELIVERIES", "FROM", "KEY", "VALUE"]);
            for r in &read.records {
                let h = |name: &str| r.header(name).unwrap_or("-").to_owned();
                t.row(vec![
                    r.offset.to_string(),
                    h(DLQ_REASON_HEADER),
                    h(DLQ_DELIVERIES_HEADER),
                    format!(
                        "{}:{}",
                        h(DLQ_SOURCE_PARTITION_HEADER),
                        h(DLQ_SOURCE_OFFSET_HEADER)
                    ),
                    r.key
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), output::printable),
                    output::printable(&r.value),
                ]);
            }
            t.print()?;
            if read.next_offset < read.high_watermark {
                output::line(&format!(
                    "(more from --offset {}: {} held in all)",
                    read.next_offset,
                    read.high_watermark.saturating_sub(read.start_offset)
                ))?;
            }
            Ok(())
        }
        DlqCommand::Redrive { topic, sub, max } => {
            let sub = sub.unwrap_or_else(|| topic.clone());
            let n = client.redrive(topic.clone(), sub.clone(), max).await?;
            if ctx.json() {
                output::json_document(&json!({
                    "topic": topic,
                    "subscription": sub,
                    "redriven": n,
                }))
            } else {
                output::line(&format!(
                    "redrove {n} dead letter{} into {topic}/{sub}",
                    if n == 1 { "" } else { "s" }
                ))
            }
        }
    }
}
