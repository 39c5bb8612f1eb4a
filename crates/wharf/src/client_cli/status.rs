//! `wharf status`: is the server there and writable, and what every topic and subscription
//! holds (the `Operations.GetStats` call: needs the admin or metrics scope).

use std::time::Instant;

use serde_json::{Value, json};

use super::output::{self, Table, fields};
use super::{CmdResult, ConnArgs, Ctx};

async fn fetch(ctx: &Ctx) -> CmdResult<wharf_client::proto::Stats> {
    let client = ctx.connect().await?;
    Ok(client.stats().await?)
}

/// Flags of `wharf status`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exits 1 with `error: ... (transport)` when the server cannot be reached (with --json, a
document with \"reachable\": false is printed too).")]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

pub(crate) async fn run(ctx: &Ctx, _args: StatusArgs) -> CmdResult {
    let started = Instant::now();
    let stats = match fetch(ctx).await {
        Ok(stats) => stats,
        Err(e) => {
            // With --json, a monitoring script gets a document in any case (and exit 1).
            if ctx.json() {
                let reachable = !matches!(e.code(), "transport" | "timeout");
                output::json_document(&json!({
                    "server": ctx.server(),
                    "reachable": reachable,
                    "error": { "code": e.code(), "message": e.message() },
                }))?;
            }
            return Err(e);
        }
    };
    let rtt = started.elapsed();
    let mut topics = stats.topics;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    if ctx.json() {
        let list: Vec<Value> = topics
            .iter()
            .map(|t| {
                let subs: Vec<Value> = t
                    .subscriptions
                    .iter()
                    .map(|s| {
                        json!({
                            "name": s.name,
                            "kind": s.kind,
                            "lag": s.lag,
                            "in_flight": s.in_flight,
                            "delayed": s.delayed,
                            "dead_lettered": s.dead_lettered,
                            "members": s.members,
                        })
                    })
                    .collect();
                json!({
                    "name": t.name,
                    "partitions": t.partitions,
                    "messages": t.messages,
                    "subscriptions": subs,
                })
            })
            .collect();
        return output::json_document(&json!({
            "server": ctx.server(),
            "reachable": true,
            "version": stats.version,
            "engine": stats.engine,
            "writable": stats.writable,
            "topics": list,
        }));
    }
    let subscriptions: usize = topics.iter().map(|t| t.subscriptions.len()).sum();
    let mut text = fields(&[
        (
            "server",
            format!("{} (reachable, {} ms)", ctx.server(), rtt.as_millis()),
        ),
        ("version", stats.version.clone()),
        ("engine", stats.engine.clone()),
        (
            "writable",
            if stats.writable {
                "yes".to_owned()
            } else {
                "NO: storage refuses writes (reads still work)".to_owned()
            },
        ),
        (
            "topics",
            format!("{} ({subscriptions} subscriptions)", topics.len()),
        ),
    ]);
    if !topics.is_empty() {
        text.push('\n');
        let mut t = Table::new([
            "TOPIC",
            "PARTITIONS",
            "MESSAGES",
            "SUBSCRIPTION",
            "KIND",
            "LAG",
            "IN FLIGHT",
            "DELAYED",
            "DEAD LETTERED",
            "MEMBERS",
        ]);
        for topic in &topics {
            let head = vec![
                topic.name.clone(),
                topic.partitions.to_string(),
                topic.messages.to_string(),
            ];
            if topic.subscriptions.is_empty() {
                let mut row = head.clone();
                row.extend(std::iter::repeat_n("-".to_owned(), 7));
                t.row(row);
            }
            for (i, s) in topic.subscriptions.iter().enumerate() {
                let mut row = if i == 0 {
                    head.clone()
                } else {
                    vec![String::new(), String::new(), String::new()]
                };
                row.extend([
                    s.name.clone(),
                    s.kind.clone(),
                    s.lag.to_string(),
                    s.in_flight.to_string(),
                    s.delayed.to_string(),
                    s.dead_lettered.to_string(),
                    s.members.to_string(),
                ]);
                t.row(row);
            }
        }
        text.push_str(&t.render());
    }
    output::write_stdout(&text)
}
