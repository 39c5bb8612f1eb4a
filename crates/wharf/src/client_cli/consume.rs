//! `wharf consume TOPIC`: tail a topic's partitions (reads with long-polls), or consume as a
//! member of a stream subscription (`--group`) and commit what was printed.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use wharf_client::{
    Client, ErrorKind, Position, ReadOptions, Record, RetryPolicy, StreamConfig, StreamConsumer,
    StreamConsumerOptions, SubscriptionConfig,
};

use super::output;
use super::{CmdError, CmdResult, ConnArgs, Ctx, parse_duration, parse_position};

/// How long one read waits for new messages before asking again.
const POLL: Duration = Duration::from_secs(5);

/// Flags of `wharf consume`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints one line per message: `PARTITION:OFFSET KEY VALUE` (`-` for no key), or with --json one
JSON object per line. Runs until --count messages, --timeout, or Ctrl-C.

Examples:
  wharf consume orders                            # new messages, as they arrive
  wharf consume orders --from earliest --count 10
  wharf consume orders --partition 1 --from 42 --json
  wharf consume orders --from -15m --timeout 30s  # the last 15 minutes, for 30 s at most
  wharf consume orders --group billing --count 100")]
pub(crate) struct ConsumeArgs {
    /// The topic.
    topic: String,
    /// Where to start: `earliest`, `latest`, an offset (`42` or `offset:42`), or a time (RFC
    /// 3339, `-5m` for five minutes ago, `time:MS`) [default: latest]. With --group: where a
    /// subscription created by this command starts (an existing one resumes from its commits).
    #[arg(long, value_parser = parse_position, value_name = "POSITION", allow_hyphen_values = true)]
    from: Option<Position>,
    /// Only this partition [default: every partition].
    #[arg(long, short = 'p', conflicts_with = "group")]
    partition: Option<u32>,
    /// Stop after this many messages.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Stop after this long (`30s`, `5m`) [default: until --count or Ctrl-C].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Consume as a member of this stream subscription (a consumer group): its partitions are
    /// shared with the other members, and what is printed is committed. Created (a stream
    /// subscription starting at --from) if it does not exist.
    #[arg(long, short = 'g', value_name = "SUBSCRIPTION")]
    group: Option<String>,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

pub(crate) async fn run(ctx: &Ctx, args: ConsumeArgs) -> CmdResult {
    let client = ctx.connect().await?;
    let deadline = args.timeout.map(|t| Instant::now() + t);
    if args.count == Some(0) {
        return Ok(());
    }
    match args.group.clone() {
        Some(group) => consume_group(ctx, &client, &args, group, deadline).await,
        None => tail(ctx, &client, &args, deadline).await,
    }
}

/// Resolves when Ctrl-C is pressed (never, if the handler cannot be installed).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves at the deadline, if there is one.
async fn expired(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn print(ctx: &Ctx, r: &Record) -> CmdResult {
    if ctx.json() {
        output::json_line(&output::record_json(r))
    } else {
        output::line(&output::record_line(r))
    }
}

fn batch_size(count: Option<u64>) -> u32 {
    count.map_or(500, |n| u32::try_from(n.min(500)).unwrap_or(500))
}

async fn tail(
    ctx: &Ctx,
    client: &Client,
    args: &ConsumeArgs,
    deadline: Option<Instant>,
) -> CmdResult {
    let topic = client.get_topic(args.topic.clone()).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if topic.partitions.iter().any(|i| i.partition == p) => vec![p],
        Some(p) => {
            return Err(CmdError::new(
                "partition_not_found",
                format!(
                    "topic {} has no partition {p} (it has {})",
                    topic.name,
                    topic.partitions.len()
                ),
            ));
        }
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    let from = args.from.unwrap_or(Position::Latest);
    let (tx, mut rx) = mpsc::channel(1024);
    let mut readers = JoinSet::new();
    for p in partitions {
        readers.spawn(read_partition(
            client.clone(),
            topic.name.clone(),
            p,
            from,
            batch_size(args.count),
            tx.clone(),
        ));
    }
    drop(tx);
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let timeout = expired(deadline);
    tokio::pin!(timeout);
    let mut printed = 0u64;
    let result = loop {
        let item = tokio::select! {
            biased;
            () = &mut interrupt => break Ok(()),
            () = &mut timeout => break Ok(()),
            item = rx.recv() => item,
        };
        match item {
            None => break Ok(()),
            Some(Err(e)) => break Err(CmdError::from(e)),
            Some(Ok(record)) => {
                if let Err(e) = print(ctx, &record) {
                    break Err(e);
                }
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    break Ok(());
                }
            }
        }
    };
    readers.abort_all();
    output::flush()?;
    result
}

/// Reads one partition from `from` on, forever (until the receiver is gone or a call fails).
async fn read_partition(
    client: Client,
    topic: String,
    partition: u32,
    from: Position,
    batch: u32,
    tx: mpsc::Sender<Result<Record, wharf_client::Error>>,
) {
    let mut position = from;
    // Transient failures (the server restarting, a broken connection) are retried for as
    // long as the SDK's default policy allows: when they began, and how many in a row.
    let policy = RetryPolicy::default();
    let mut failing: Option<(Instant, u32)> = None;
    loop {
        let options = ReadOptions {
            from: position,
            max_messages: Some(batch),
            max_bytes: None,
            wait: Some(POLL),
        };
        match client.read(topic.clone(), partition, options).await {
            Ok(read) => {
                failing = None;
                position = Position::Offset(read.next_offset);
                for record in read.records {
                    if tx.send(Ok(record)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.is_retryable() => {
                let (since, attempts) = failing.get_or_insert_with(|| (Instant::now(), 0));
                *attempts += 1;
                if since.elapsed() >= policy.deadline {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                if *attempts == 1 {
                    eprintln!("warning: reading partition {partition}: {e}; retrying");
                }
                tokio::time::sleep(policy.backoff(*attempts, rand::random())).await;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Joins `group`, creating it as a stream subscription if it does not exist.
async fn join(client: &Client, args: &ConsumeArgs, group: &str) -> CmdResult<StreamConsumer> {
    let options = StreamConsumerOptions {
        max_messages: Some(batch_size(args.count)),
        // A broken stream rejoins as a new member and resumes after the last commit (what
        // was printed and not yet committed is printed again: at-least-once).
        reconnect: Some(RetryPolicy::default()),
        ..StreamConsumerOptions::default()
    };
    let first = client
        .stream_consumer(args.topic.clone(), group.to_owned(), options.clone())
        .await;
    let e = match first {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    match e.code() {
        Some("subscription_not_found") => {
            let config = SubscriptionConfig::Stream(StreamConfig {
                start: args.from,
                session_timeout: None,
            });
            match client
                .create_subscription(args.topic.clone(), group.to_owned(), config)
                .await
            {
                Ok(_) => {}
                // Created by someone else meanwhile (with other settings): join that one.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(CmdError::from(e).context(format!(
                        "cannot create the stream subscription {group} on {}",
                        args.topic
                    )));
                }
            }
            Ok(client
                .stream_consumer(args.topic.clone(), group.to_owned(), options)
                .await?)
        }
        Some("wrong_kind") => Err(CmdError::new(
            "wrong_kind",
            format!(
                "{group} is a shared subscription, not a consumer group: receive from it with \
                 `wharf queue receive {} --sub {group}`",
                args.topic
            ),
        )),
        _ => Err(e.into()),
    }
}

async fn consume_group(
    ctx: &Ctx,
    client: &Client,
    args: &ConsumeArgs,
    group: String,
    deadline: Option<Instant>,
) -> CmdResult {
    let mut consumer = join(client, args, &group).await?;
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let timeout = expired(deadline);
    tokio::pin!(timeout);
    let mut printed = 0u64;
    // Next offsets of what was printed and not committed yet.
    let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
    let mut ready = None;
    let result = loop {
        let item = match ready.take() {
            Some(item) => item,
            None => {
                tokio::select! {
                    biased;
                    () = &mut interrupt => break Ok(()),
                    () = &mut timeout => break Ok(()),
                    item = consumer.next() => item,
                }
            }
        };
        let record = match item {
            None => break Ok(()),
            Some(Err(e)) => break Err(CmdError::from(e)),
            Some(Ok(r)) => r,
        };
        if let Err(e) = print(ctx, &record) {
            break Err(e);
        }
        printed += 1;
        pending.insert(record.partition, record.offset.saturating_add(1));
        if args.count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        // Commit once what has arrived is printed.
        ready = consumer.next().now_or_never();
        if ready.is_none()
            && let Err(e) = commit(&consumer, &mut pending, false).await
        {
            break Err(e);
        }
    };
    // What was printed is committed even when the command ends with an error.
    let committed = commit(&consumer, &mut pending, true).await;
    result.and(committed)
}

/// Commits the printed offsets (stdout flushed first: a commit means "printed"). A partition
/// lost to a rebalance meanwhile is only a warning: its new owner consumes from the last
/// commit.
async fn commit(
    consumer: &StreamConsumer,
    pending: &mut BTreeMap<u32, u64>,
    last: bool,
) -> CmdResult {
    if pending.is_empty() {
        return output::flush();
    }
    output::flush()?;
    let offsets: Vec<(u32, u64)> = std::mem::take(pending).into_iter().collect();
    match consumer.commit_offsets(&offsets).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Conflict && !last => {
            eprintln!(
                "warning: commit of {offsets:?} not taken ({e}); they will be consumed again"
            );
            Ok(())
        }
        Err(e) => Err(CmdError::from(e).context(format!("committing {offsets:?}"))),
    }
}
