//! `wharf sub create|list|describe|reset|delete`: a topic's subscriptions, stream (consumer
//! groups) and shared (queue semantics).

use std::time::Duration;

use serde_json::{Value, json};
use wharf_client::{
    ErrorKind, Position, ResetTo, SharedConfig, StreamConfig, SubscriptionConfig, proto,
};

use super::output::{self, Table, fields, millis_text, position_json, position_text};
use super::{CmdError, CmdResult, ConnArgs, Ctx, parse_position, parse_time};

/// Flags of `wharf sub`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  wharf sub create orders billing --kind stream
  wharf sub create orders shipping --kind shared --max-deliveries 5 --lease-ms 60000
  wharf sub list orders
  wharf sub reset orders billing --to earliest
  wharf sub reset orders billing --to 2026-11-26T00:00:00Z
  wharf sub reset orders billing --to 0:120,1:98")]
pub(crate) struct SubArgs {
    #[command(subcommand)]
    cmd: SubCommand,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

#[derive(Debug, clap::Subcommand)]
enum SubCommand {
    /// Create a subscription (idempotent with the same settings; unset settings take the
    /// server's defaults). Prints it.
    Create(CreateArgs),
    /// List a topic's subscriptions with their lag, in-flight and dead-lettered counts.
    #[command(visible_alias = "ls")]
    List {
        /// The topic.
        topic: String,
    },
    /// Show a subscription: settings, per-partition commits and lag, members.
    #[command(visible_alias = "get")]
    Describe {
        /// The topic.
        topic: String,
        /// The subscription.
        sub: String,
    },
    /// Move a stream subscription's committed offsets: replay (earliest, a time) or skip
    /// (latest). Members fetch from there on. Prints the committed offsets now in force.
    Reset {
        /// The topic.
        topic: String,
        /// The subscription.
        sub: String,
        /// `earliest`, `latest`, a time (RFC 3339, `-1h` for an hour ago, or ms since the
        /// epoch), or offsets per partition `P:OFFSET,P:OFFSET` (others unchanged).
        #[arg(long, value_parser = parse_reset, value_name = "TARGET", allow_hyphen_values = true)]
        to: ResetTo,
    },
    /// Delete a subscription.
    #[command(visible_alias = "rm")]
    Delete {
        /// The topic.
        topic: String,
        /// The subscription.
        sub: String,
        /// Succeed if there is no such subscription.
        #[arg(long)]
        if_exists: bool,
    },
}

/// The kind of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// A consumer group: members own partitions and commit offsets (per-partition order).
    Stream,
    /// Queue semantics: any member gets any message under a lease and acks it.
    Shared,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The topic.
    topic: String,
    /// The subscription.
    sub: String,
    /// Its kind.
    #[arg(long, value_enum, default_value = "stream")]
    kind: Kind,
    /// Stream: drop a member that has not heartbeaten for this many ms.
    #[arg(long, value_name = "MS")]
    session_timeout_ms: Option<u64>,
    #[command(flatten)]
    shared: SharedArgs,
}

/// Settings of a shared subscription (and where any subscription starts).
#[derive(Debug, clap::Args)]
pub(crate) struct SharedArgs {
    /// Where the subscription starts: `earliest`, `latest`, an offset, or a time (RFC 3339,
    /// `-1h`) [server default: earliest].
    #[arg(long, value_parser = parse_position, value_name = "POSITION", allow_hyphen_values = true)]
    start: Option<Position>,
    /// Shared: deliveries before a message goes to the dead-letter topic.
    #[arg(long, value_name = "N")]
    max_deliveries: Option<u32>,
    /// Shared: how long a delivery is leased, in ms.
    #[arg(long, value_name = "MS")]
    lease_ms: Option<u64>,
    /// Shared: the first redelivery delay after a nack or an expired lease, in ms.
    #[arg(long, value_name = "MS")]
    backoff_initial_ms: Option<u64>,
    /// Shared: the longest redelivery delay, in ms.
    #[arg(long, value_name = "MS")]
    backoff_max_ms: Option<u64>,
    /// Shared: the random part of each redelivery delay, in percent.
    #[arg(long, value_name = "PCT")]
    backoff_jitter_pct: Option<u32>,
    /// Shared: at most one delivery per key in flight (per-key order).
    #[arg(long)]
    ordered_by_key: bool,
    /// Shared: most unsettled deliveries per member.
    #[arg(long, value_name = "N")]
    max_in_flight_per_member: Option<u32>,
    /// Shared: push every message to this app (`POST` to --push-route) instead of waiting for
    /// consumers.
    #[arg(long, value_name = "APP")]
    push_app: Option<String>,
    /// Shared: the app route push delivery posts to (default `/`).
    #[arg(long, value_name = "PATH", requires = "push_app")]
    push_route: Option<String>,
}

impl SharedArgs {
    /// The shared subscription's settings.
    pub(crate) fn config(&self) -> CmdResult<SharedConfig> {
        Ok(SharedConfig {
            max_deliveries: self.max_deliveries,
            lease: self.lease_ms.map(Duration::from_millis),
            backoff_initial: self.backoff_initial_ms.map(Duration::from_millis),
            backoff_max: self.backoff_max_ms.map(Duration::from_millis),
            backoff_jitter_pct: self.backoff_jitter_pct,
            ordered_by_key: self.ordered_by_key.then_some(true),
            max_in_flight_per_member: self.max_in_flight_per_member,
            start: self.start,
            push: self.push_app.clone().map(|app| wharf_client::Push {
                app,
                route: self.push_route.clone(),
                ..wharf_client::Push::default()
            }),
        })
    }

    /// The first shared-only flag that was given.
    fn shared_only_flag(&self) -> Option<&'static str> {
        [
            (self.max_deliveries.is_some(), "--max-deliveries"),
            (self.push_app.is_some(), "--push-app"),
            (self.lease_ms.is_some(), "--lease-ms"),
            (self.backoff_initial_ms.is_some(), "--backoff-initial-ms"),
            (self.backoff_max_ms.is_some(), "--backoff-max-ms"),
            (self.backoff_jitter_pct.is_some(), "--backoff-jitter-pct"),
            (self.ordered_by_key, "--ordered-by-key"),
            (
                self.max_in_flight_per_member.is_some(),
                "--max-in-flight-per-member",
            ),
        ]
        .into_iter()
        .find_map(|(set, flag)| set.then_some(flag))
    }
}

/// `earliest`, `latest`, `P:OFFSET,...`, or a time.
fn parse_reset(s: &str) -> Result<ResetTo, String> {
    let t = s.trim();
    match t {
        "earliest" | "beginning" | "start" => return Ok(ResetTo::Earliest),
        "latest" | "end" => return Ok(ResetTo::Latest),
        _ => {}
    }
    let is_offsets = t.split(',').all(|pair| {
        pair.split_once(':')
            .is_some_and(|(p, o)| is_number(p) && is_number(o))
    });
    if is_offsets {
        let mut offsets = Vec::new();
        for pair in t.split(',') {
            let (p, o) = pair.split_once(':').unwrap_or_default();
            let p = p
                .trim()
                .parse()
                .map_err(|_| format!("bad partition in {pair:?}"))?;
            let o = o
                .trim()
                .parse()
                .map_err(|_| format!("bad offset in {pair:?}"))?;
            offsets.push((p, o));
        }
        return Ok(ResetTo::Offsets(offsets));
    }
    parse_time(t.strip_prefix("time:").unwrap_or(t))
        .map(ResetTo::TimestampMs)
        .map_err(|_| {
            format!(
                "{s:?}: give earliest, latest, a time (RFC 3339, -1h, ms since the epoch) or \
                 offsets P:OFFSET,P:OFFSET"
            )
        })
}

fn is_number(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

pub(crate) async fn run(ctx: &Ctx, args: SubArgs) -> CmdResult {
    match args.cmd {
        SubCommand::Create(c) => {
            let config = match c.kind {
                Kind::Stream => {
                    if let Some(flag) = c.shared.shared_only_flag() {
                        return Err(CmdError::usage(format!(
                            "{flag} applies to shared subscriptions only (--kind shared)"
                        )));
                    }
                    SubscriptionConfig::Stream(StreamConfig {
                        start: c.shared.start,
                        session_timeout: c.session_timeout_ms.map(Duration::from_millis),
                    })
                }
                Kind::Shared => {
                    if c.session_timeout_ms.is_some() {
                        return Err(CmdError::usage(
                            "--session-timeout-ms applies to stream subscriptions only",
                        ));
                    }
                    SubscriptionConfig::Shared(c.shared.config()?)
                }
            };
            let client = ctx.connect().await?;
            let sub = client.create_subscription(c.topic, c.sub, config).await?;
            print_subscription(ctx, &sub)
        }
        SubCommand::List { topic } => {
            let client = ctx.connect().await?;
            let mut subs = client.list_subscriptions(topic).await?;
            subs.sort_by(|a, b| a.name.cmp(&b.name));
            if ctx.json() {
                let list: Vec<Value> = subs.iter().map(subscription_json).collect();
                return output::json_document(&json!({ "subscriptions": list }));
            }
            let mut t = Table::new([
                "SUBSCRIPTION",
                "KIND",
                "LAG",
                "IN FLIGHT",
                "DELAYED",
                "DEAD LETTERED",
                "MEMBERS",
            ]);
            for s in &subs {
                t.row(vec![
                    s.name.clone(),
                    kind_name(s).to_owned(),
                    lag(s).to_string(),
                    s.in_flight.to_string(),
                    s.delayed.to_string(),
                    s.dead_lettered.to_string(),
                    s.members.len().to_string(),
                ]);
            }
            t.print()
        }
        SubCommand::Describe { topic, sub } => {
            let client = ctx.connect().await?;
            let s = client.get_subscription(topic, sub).await?;
            print_subscription(ctx, &s)
        }
        SubCommand::Reset { topic, sub, to } => {
            let client = ctx.connect().await?;
            let mut offsets = client
                .reset_subscription(topic.clone(), sub.clone(), to)
                .await?;
            offsets.sort_by_key(|c| c.partition);
            if ctx.json() {
                let list: Vec<Value> = offsets
                    .iter()
                    .map(|c| json!({ "partition": c.partition, "offset": c.offset }))
                    .collect();
                return output::json_document(&json!({
                    "topic": topic,
                    "subscription": sub,
                    "offsets": list,
                }));
            }
            let mut t = Table::new(["PARTITION", "COMMITTED"]);
            for c in &offsets {
                t.row(vec![c.partition.to_string(), c.offset.to_string()]);
            }
            output::line(&format!("reset {topic}/{sub}"))?;
            t.print()
        }
        SubCommand::Delete {
            topic,
            sub,
            if_exists,
        } => {
            let client = ctx.connect().await?;
            let deleted = match client.delete_subscription(topic.clone(), sub.clone()).await {
                Ok(()) => true,
                Err(e) if if_exists && e.kind() == ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            };
            if ctx.json() {
                output::json_document(
                    &json!({ "topic": topic, "subscription": sub, "deleted": deleted }),
                )
            } else if deleted {
                output::line(&format!("deleted subscription {topic}/{sub}"))
            } else {
                output::line(&format!("no subscription {topic}/{sub}"))
            }
        }
    }
}

fn kind_name(s: &proto::Subscription) -> &'static str {
    match s.config {
        Some(proto::subscription::Config::Shared(_)) => "shared",
        _ => "stream",
    }
}

fn lag(s: &proto::Subscription) -> u64 {
    s.partitions.iter().map(|p| p.lag).sum()
}

/// A subscription as JSON: kind, settings, total lag, per-partition commits, members and the
/// shared counters.
pub(crate) fn subscription_json(s: &proto::Subscription) -> Value {
    let settings = match &s.config {
        Some(proto::subscription::Config::Shared(c)) => json!({
            "start": position_json(output::position_from_proto(c.start.as_ref())),
            "max_deliveries": c.max_deliveries,
            "lease_ms": c.lease_ms,
            "backoff_initial_ms": c.backoff_initial_ms,
            "backoff_max_ms": c.backoff_max_ms,
            "backoff_jitter_pct": c.backoff_jitter_pct,
            "ordered_by_key": c.ordered_by_key,
            "max_in_flight_per_member": c.max_in_flight_per_member,
        }),
        Some(proto::subscription::Config::Stream(c)) => json!({
            "start": position_json(output::position_from_proto(c.start.as_ref())),
            "session_timeout_ms": c.session_timeout_ms,
        }),
        None => json!({}),
    };
    let partitions: Vec<Value> = s
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "committed": p.committed,
                "lag": p.lag,
                "behind_retention": p.behind_retention,
            })
        })
        .collect();
    json!({
        "topic": s.topic,
        "name": s.name,
        "kind": kind_name(s),
        "settings": settings,
        "lag": lag(s),
        "partitions": partitions,
        "members": s.members,
        "generation": s.generation,
        "in_flight": s.in_flight,
        "delayed": s.delayed,
        "dead_lettered": s.dead_lettered,
    })
}

/// Prints a subscription (JSON, or its settings and a table of partitions).
pub(crate) fn print_subscription(ctx: &Ctx, s: &proto::Subscription) -> CmdResult {
    if ctx.json() {
        return output::json_document(&subscription_json(s));
    }
    let opt_ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), millis_text);
    let mut pairs: Vec<(&str, String)> = vec![
        ("topic", s.topic.clone()),
        ("subscription", s.name.clone()),
        ("kind", kind_name(s).to_owned()),
        ("lag", lag(s).to_string()),
    ];
    match &s.config {
        Some(proto::subscription::Config::Shared(c)) => {
            let opt = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            pairs.extend([
                ("in flight", s.in_flight.to_string()),
                ("delayed", s.delayed.to_string()),
                ("dead lettered", s.dead_lettered.to_string()),
                (
                    "start",
                    position_text(output::position_from_proto(c.start.as_ref())),
                ),
                ("max deliveries", opt(c.max_deliveries)),
                ("lease", opt_ms(c.lease_ms)),
                (
                    "backoff",
                    format!(
                        "{} .. {} (jitter {}%)",
                        opt_ms(c.backoff_initial_ms),
                        opt_ms(c.backoff_max_ms),
                        opt(c.backoff_jitter_pct)
                    ),
                ),
                (
                    "ordered by key",
                    c.ordered_by_key
                        .map_or_else(|| "-".to_owned(), |b| b.to_string()),
                ),
                ("max in flight/member", opt(c.max_in_flight_per_member)),
            ]);
        }
        Some(proto::subscription::Config::Stream(c)) => {
            pairs.extend([
                (
                    "members",
                    format!("{} (generation {})", s.members.len(), s.generation),
                ),
                (
                    "start",
                    position_text(output::position_from_proto(c.start.as_ref())),
                ),
                ("session timeout", opt_ms(c.session_timeout_ms)),
            ]);
        }
        None => {}
    }
    let mut text = fields(&pairs);
    text.push('\n');
    let mut t = Table::new(["PARTITION", "COMMITTED", "LAG", "BEHIND RETENTION"]);
    for p in &s.partitions {
        t.row(vec![
            p.partition.to_string(),
            p.committed.to_string(),
            p.lag.to_string(),
            if p.behind_retention { "yes" } else { "no" }.to_owned(),
        ]);
    }
    text.push_str(&t.render());
    if !s.members.is_empty() {
        text.push('\n');
        let mut m = Table::new(["MEMBER"]);
        for id in &s.members {
            m.row(vec![id.clone()]);
        }
        text.push_str(&m.render());
    }
    output::write_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets() {
        assert_eq!(parse_reset("earliest"), Ok(ResetTo::Earliest));
        assert_eq!(parse_reset("latest"), Ok(ResetTo::Latest));
        assert_eq!(
            parse_reset("0:5, 1:7"),
            Ok(ResetTo::Offsets(vec![(0, 5), (1, 7)]))
        );
        assert_eq!(
            parse_reset("1970-01-01T00:00:01Z"),
            Ok(ResetTo::TimestampMs(1000))
        );
        assert_eq!(parse_reset("time:1000"), Ok(ResetTo::TimestampMs(1000)));
        assert!(parse_reset("0:x").is_err());
        assert!(parse_reset("whenever").is_err());
    }
}
