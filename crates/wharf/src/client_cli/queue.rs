//! `wharf queue create|send|receive|ack|nack|extend|terminate`: a queue is a topic plus a shared
//! subscription of the same name (`--sub` reaches any other shared subscription of the topic).

use std::time::Duration;

use serde_json::{Value, json};
use wharf_client::{Delivery, ReceiveOptions, TopicConfig, proto};

use super::output::{self, Table};
use super::publish::{self, InputArgs};
use super::sub::{SharedArgs, subscription_json};
use super::{CmdError, CmdResult, ConnArgs, Ctx};

/// Flags of `wharf queue`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  wharf queue create emails --max-deliveries 3 --lease-ms 30000
  wharf queue send emails 'welcome mail for ada@example.com'
  wharf queue receive emails --max 10 --wait-ms 5000
  wharf queue ack emails ACK_ID...
  wharf queue nack emails ACK_ID --delay-ms 60000")]
pub(crate) struct QueueArgs {
    #[command(subcommand)]
    cmd: QueueCommand,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

#[derive(Debug, clap::Subcommand)]
enum QueueCommand {
    /// Create a queue (idempotent with the same settings): a topic and a shared subscription,
    /// both named QUEUE. Prints the subscription.
    Create(CreateArgs),
    /// Send messages to a queue (values as arguments, or lines of stdin or a file), creating
    /// it with the default settings if it does not exist.
    Send {
        /// The queue.
        queue: String,
        #[command(flatten)]
        input: InputArgs,
    },
    /// Receive deliveries under a lease; prints each with its ack id. Settle them with `ack`,
    /// `nack`, `extend` or `terminate` (or --ack), or they come back after the lease.
    Receive(ReceiveArgs),
    /// Ack deliveries: done, never delivered again.
    Ack(SettleArgs),
    /// Nack deliveries: delivered again after a delay (default: the subscription's backoff),
    /// or dead-lettered once they reached max deliveries.
    Nack {
        #[command(flatten)]
        settle: SettleArgs,
        /// Deliver again after this many ms [default: the subscription's backoff].
        #[arg(long, value_name = "MS")]
        delay_ms: Option<u64>,
    },
    /// Extend the leases of deliveries.
    Extend {
        #[command(flatten)]
        settle: SettleArgs,
        /// The new lease, from now, in ms.
        #[arg(long, value_name = "MS", required = true)]
        lease_ms: u64,
    },
    /// Terminate deliveries: straight to the dead-letter topic.
    Terminate {
        #[command(flatten)]
        settle: SettleArgs,
        /// Why (the dead letter's `wharf-dlq-reason` header).
        #[arg(long, default_value = "terminated")]
        reason: String,
    },
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The queue.
    queue: String,
    /// Number of partitions of its topic [server default: 1].
    #[arg(long, short = 'p')]
    partitions: Option<u32>,
    #[command(flatten)]
    shared: SharedArgs,
}

#[derive(Debug, clap::Args)]
struct ReceiveArgs {
    /// The queue (or the topic, with --sub).
    queue: String,
    /// The shared subscription to receive from [default: the queue's, named like it].
    #[arg(long, value_name = "SUBSCRIPTION")]
    sub: Option<String>,
    /// Most deliveries.
    #[arg(long, default_value_t = 1, value_name = "N")]
    max: u32,
    /// Wait up to this many ms when nothing is available.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    wait_ms: u64,
    /// The lease in ms [default: the subscription's].
    #[arg(long, value_name = "MS")]
    lease_ms: Option<u64>,
    /// Ack each delivery once printed (at-most-once: for draining or peeking a queue).
    #[arg(long)]
    ack: bool,
}

#[derive(Debug, clap::Args)]
struct SettleArgs {
    /// The queue (or the topic, with --sub).
    queue: String,
    /// Ack ids, as `receive` printed them.
    #[arg(required = true, value_name = "ACK_ID")]
    ack_ids: Vec<String>,
    /// The shared subscription [default: the queue's, named like it].
    #[arg(long, value_name = "SUBSCRIPTION")]
    sub: Option<String>,
}

pub(crate) async fn run(ctx: &Ctx, args: QueueArgs) -> CmdResult {
    match args.cmd {
        QueueCommand::Create(c) => {
            let shared = c.shared.config()?;
            let client = ctx.connect().await?;
            let topic = TopicConfig {
                partitions: c.partitions,
                ..TopicConfig::default()
            };
            let queue = client.create_queue(c.queue, topic, shared).await?;
            if ctx.json() {
                return output::json_document(&queue_json(&queue));
            }
            let sub = queue
                .subscription
                .ok_or_else(|| CmdError::new("internal", "the server answered no subscription"))?;
            super::sub::print_subscription(ctx, &sub)
        }
        QueueCommand::Send { queue, input } => publish::publish(ctx, queue, input, true).await,
        QueueCommand::Receive(r) => receive(ctx, r).await,
        QueueCommand::Ack(s) => settle(ctx, s, "acked", Settle::Ack).await,
        QueueCommand::Nack {
            settle: s,
            delay_ms,
        } => {
            settle(
                ctx,
                s,
                "nacked",
                Settle::Nack(delay_ms.map(Duration::from_millis)),
            )
            .await
        }
        QueueCommand::Extend {
            settle: s,
            lease_ms,
        } => {
            settle(
                ctx,
                s,
                "extended",
                Settle::Extend(Duration::from_millis(lease_ms)),
            )
            .await
        }
        QueueCommand::Terminate { settle: s, reason } => {
            settle(ctx, s, "terminated", Settle::Terminate(reason)).await
        }
    }
}

/// A delivery as JSON: its ack id, delivery count, lease deadline and message.
fn delivery_json(d: &Delivery) -> Value {
    json!({
        "ack_id": d.ack_id(),
        "delivery_count": d.delivery_count(),
        "lease_deadline": d.lease_deadline_ms(),
        "message": output::record_json(d.record()),
    })
}

async fn receive(ctx: &Ctx, r: ReceiveArgs) -> CmdResult {
    let client = ctx.connect().await?;
    let sub = r.sub.unwrap_or_else(|| r.queue.clone());
    let options = ReceiveOptions {
        max: Some(r.max),
        wait: Some(Duration::from_millis(r.wait_ms)),
        lease: r.lease_ms.map(Duration::from_millis),
        member: None,
    };
    let deliveries = client
        .receive(r.queue.clone(), sub.clone(), options)
        .await?;
    if ctx.json() {
        let list: Vec<Value> = deliveries.iter().map(delivery_json).collect();
        output::json_document(&json!({ "deliveries": list }))?;
    } else if deliveries.is_empty() {
        output::line("no deliveries")?;
    } else {
        let mut t = Table::new(["ACK_ID", "DELIVERY", "MESSAGE", "KEY", "VALUE"]);
        for d in &deliveries {
            let rec = d.record();
            t.row(vec![
                d.ack_id().to_owned(),
                d.delivery_count().to_string(),
                format!("{}:{}", rec.partition, rec.offset),
                rec.key
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), output::printable),
                output::printable(&rec.value),
            ]);
        }
        t.print()?;
    }
    if r.ack && !deliveries.is_empty() {
        output::flush()?;
        let ids: Vec<String> = deliveries.iter().map(|d| d.ack_id().to_owned()).collect();
        let outcomes = client.ack(r.queue, sub, ids).await?;
        failed_outcomes(&outcomes)?;
    }
    Ok(())
}

enum Settle {
    Ack,
    Nack(Option<Duration>),
    Extend(Duration),
    Terminate(String),
}

async fn settle(ctx: &Ctx, s: SettleArgs, done: &str, how: Settle) -> CmdResult {
    let client = ctx.connect().await?;
    let sub = s.sub.unwrap_or_else(|| s.queue.clone());
    let ids = s.ack_ids;
    let outcomes = match how {
        Settle::Ack => client.ack(s.queue, sub, ids).await?,
        Settle::Nack(delay) => client.nack(s.queue, sub, ids, delay).await?,
        Settle::Extend(lease) => client.extend(s.queue, sub, ids, lease).await?,
        Settle::Terminate(reason) => client.terminate(s.queue, sub, ids, reason).await?,
    };
    if ctx.json() {
        let list: Vec<Value> = outcomes
            .iter()
            .map(|o| json!({ "ack_id": o.ack_id, "ok": o.error.is_none(), "error": o.error }))
            .collect();
        output::json_document(&json!({ "outcomes": list }))?;
    } else {
        let mut t = Table::new(["ACK_ID", "RESULT"]);
        for o in &outcomes {
            t.row(vec![
                o.ack_id.clone(),
                o.error.clone().unwrap_or_else(|| done.to_owned()),
            ]);
        }
        t.print()?;
    }
    failed_outcomes(&outcomes)
}

/// An error naming the first failed outcome's code, if any failed.
fn failed_outcomes(outcomes: &[proto::AckOutcome]) -> CmdResult {
    let failed: Vec<&proto::AckOutcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    match failed.first() {
        None => Ok(()),
        Some(first) => {
            let code = first.error.clone().unwrap_or_default();
            Err(CmdError::new(
                &code,
                format!(
                    "{} of {} ack ids failed (first: {})",
                    failed.len(),
                    outcomes.len(),
                    first.ack_id
                ),
            ))
        }
    }
}

/// A queue as JSON: its topic and its subscription.
fn queue_json(q: &proto::Queue) -> Value {
    json!({
        "topic": q.topic.as_ref().map(super::topic::topic_json),
        "subscription": q.subscription.as_ref().map(subscription_json),
    })
}
