//! `wharf publish TOPIC [VALUE...]` (and `wharf queue send`): messages from arguments, stdin or
//! a file, through the SDK's batching, retrying [`Publisher`](wharf_client::Publisher).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal as _, Read};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::sync::mpsc;
use wharf_client::{Message, PublishFuture, PublisherOptions};

use super::output::{self, Table};
use super::{CmdError, CmdResult, ConnArgs, Ctx, parse_duration, parse_header};

/// Flags of `wharf publish`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  wharf publish orders 'order 1' 'order 2' --key customer-7
  wharf publish orders --file orders.txt --header source=import
  tail -f app.log | wharf publish logs -
  printf 'k1:v1\\nk2:v2\\n' | wharf publish orders --stdin --key-separator :")]
pub(crate) struct PublishArgs {
    /// The topic.
    topic: String,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

/// What to publish and how: shared by `publish` and `queue send`.
#[derive(Debug, clap::Args)]
pub(crate) struct InputArgs {
    /// Message values, one message each. `-` alone reads lines of stdin.
    #[arg(value_name = "VALUE")]
    values: Vec<String>,
    /// Read the messages from stdin, one per line (until end of input).
    #[arg(long, conflicts_with_all = ["values", "file"])]
    stdin: bool,
    /// Read the messages from a file, one per line.
    #[arg(long, short = 'f', value_name = "PATH", conflicts_with = "values")]
    file: Option<PathBuf>,
    /// The key of every message (it picks the partition).
    #[arg(long, short = 'k')]
    key: Option<String>,
    /// Split every input line at the first SEP into key and value (a line without SEP has no
    /// key).
    #[arg(long, value_name = "SEP", conflicts_with = "key")]
    key_separator: Option<String>,
    /// A header on every message, NAME=VALUE (repeatable). `wharf-message-id=ID` makes a
    /// repeated publish a no-op within the topic's dedup window.
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Publish to this partition (instead of the key's).
    #[arg(long, short = 'p')]
    partition: Option<u32>,
    /// Deliver on shared subscriptions (queues) only after this delay (`30s`, `5m`).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    delay: Option<Duration>,
    /// Publish calls in flight at once. 1 (the default) keeps the input's order even when a
    /// batch is retried; more is faster.
    #[arg(long, default_value_t = 1, value_name = "N")]
    in_flight: usize,
    /// No progress bar (it is shown on stderr for --stdin and --file when stderr is a
    /// terminal).
    #[arg(long)]
    no_progress: bool,
}

pub(crate) async fn run(ctx: &Ctx, args: PublishArgs) -> CmdResult {
    publish(ctx, args.topic, args.input, false).await
}

/// Where lines come from.
enum Source {
    Values(Vec<String>),
    Stdin,
    File(PathBuf),
}

/// One input item: the line (without its line ending) and the input bytes read so far.
type Line = std::io::Result<(Vec<u8>, u64)>;

/// Per-partition tally of what landed.
#[derive(Debug, Default)]
struct Landed {
    count: u64,
    first: u64,
    last: u64,
}

#[derive(Debug, Default)]
struct Summary {
    count: u64,
    duplicates: u64,
    partitions: BTreeMap<u32, Landed>,
}

/// Publishes the input to `topic`; with `create_queue`, an unknown topic is created as a queue
/// first (`queue send`).
pub(crate) async fn publish(
    ctx: &Ctx,
    topic: String,
    input: InputArgs,
    create_queue: bool,
) -> CmdResult {
    let source = match (&input.file, input.stdin, input.values.as_slice()) {
        (Some(path), _, _) => Source::File(path.clone()),
        (None, true, _) => Source::Stdin,
        (None, false, [dash]) if dash == "-" => Source::Stdin,
        (None, false, []) => {
            return Err(CmdError::usage(
                "nothing to publish: give values, `-` or --stdin (lines of stdin), or --file PATH",
            ));
        }
        (None, false, values) => Source::Values(values.to_vec()),
    };
    let file_len = match &source {
        Source::File(path) => Some(
            std::fs::metadata(path)
                .map_err(|e| CmdError::new("io", format!("cannot read {}: {e}", path.display())))?
                .len(),
        ),
        _ => None,
    };
    let bar = progress_bar(&source, file_len, input.no_progress);
    let client = ctx.connect().await?;
    let (line_tx, mut lines) = mpsc::channel::<Line>(1024);
    spawn_reader(source, line_tx)?;

    let publisher = client.publisher(
        topic.clone(),
        PublisherOptions {
            max_in_flight: input.in_flight.max(1),
            create_queue,
            ..PublisherOptions::default()
        },
    );
    let (fut_tx, fut_rx) = mpsc::channel::<PublishFuture>(4096);
    let collector = tokio::spawn(collect(fut_rx, bar.clone(), file_len.is_some()));
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupt);
    let mut failure: Option<CmdError> = None;
    loop {
        let item = tokio::select! {
            biased;
            () = &mut interrupt => {
                failure = Some(CmdError::new("interrupted", "interrupted: stopped reading input"));
                break;
            }
            item = lines.recv() => item,
        };
        let Some(item) = item else { break };
        let (line, read) = match item {
            Ok(v) => v,
            Err(e) => {
                failure = Some(CmdError::new("io", format!("reading the input: {e}")));
                break;
            }
        };
        if file_len.is_some() {
            bar.set_position(read);
        }
        let future = match publisher.send(message(&input, line)).await {
            Ok(f) => f,
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        };
        if fut_tx.send(future).await.is_err() {
            // The collector stopped at a failed message: it reports that.
            break;
        }
    }
    drop(fut_tx);
    // Sends what is queued and waits for every result (a Closed error means the task already
    // stopped: the collector has every answer there is).
    let _ = publisher.close().await;
    let (summary, publish_error) = collector
        .await
        .map_err(|e| CmdError::new("internal", format!("the result collector failed: {e}")))?;
    bar.finish_and_clear();
    let failure = publish_error.map(CmdError::from).or(failure);
    if failure.is_none() || summary.count > 0 {
        print_summary(ctx, &topic, &summary)?;
    }
    match failure {
        Some(e) if summary.count > 0 => {
            Err(e.context(format!("stopped after {} messages", summary.count)))
        }
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn progress_bar(source: &Source, file_len: Option<u64>, disabled: bool) -> ProgressBar {
    let from_input = !matches!(source, Source::Values(_));
    if disabled || !from_input || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match file_len {
        Some(len) => (
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()),
            "{spinner} {bytes}/{total_bytes} [{wide_bar}] {msg}, eta {eta}",
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            "{spinner} {human_pos} published ({per_sec}, {elapsed})",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Reads the source on a thread of its own (stdin and files block), line by line.
fn spawn_reader(source: Source, tx: mpsc::Sender<Line>) -> CmdResult {
    let reader: Box<dyn Read + Send> = match source {
        Source::Values(values) => {
            std::thread::spawn(move || {
                for v in values {
                    if tx.blocking_send(Ok((v.into_bytes(), 0))).is_err() {
                        return;
                    }
                }
            });
            return Ok(());
        }
        Source::Stdin => Box::new(std::io::stdin()),
        Source::File(path) => Box::new(
            std::fs::File::open(&path)
                .map_err(|e| CmdError::new("io", format!("cannot open {}: {e}", path.display())))?,
        ),
    };
    std::thread::Builder::new()
        .name("wharf-cli-input".into())
        .spawn(move || {
            let mut r = BufReader::with_capacity(256 * 1024, reader);
            let mut read = 0u64;
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(n) => {
                        read += n as u64;
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                        }
                        if tx.blocking_send(Ok((line, read))).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        })
        .map_err(|e| CmdError::new("io", format!("cannot start the input reader: {e}")))?;
    Ok(())
}

/// The message for one input line.
fn message(input: &InputArgs, line: Vec<u8>) -> Message {
    let mut m = match input.key_separator.as_deref().map(str::as_bytes) {
        Some(sep) if !sep.is_empty() => match find(&line, sep) {
            Some(at) => {
                let value = line[at + sep.len()..].to_vec();
                let key = line[..at].to_vec();
                Message::new(value).key(key)
            }
            None => Message::new(line),
        },
        _ => Message::new(line),
    };
    if let Some(k) = &input.key {
        m = m.key(k.clone().into_bytes());
    }
    for (name, value) in &input.headers {
        m = m.header(name.clone(), value.clone());
    }
    if let Some(p) = input.partition {
        m = m.partition(p);
    }
    if let Some(d) = input.delay {
        m = m.deliver_at(SystemTime::now() + d);
    }
    m
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Awaits every message's result in order; stops at the first failure (answering it).
async fn collect(
    mut futures: mpsc::Receiver<PublishFuture>,
    bar: ProgressBar,
    bar_counts_bytes: bool,
) -> (Summary, Option<wharf_client::Error>) {
    let mut s = Summary::default();
    while let Some(f) = futures.recv().await {
        match f.await {
            Ok(r) => {
                s.count += 1;
                if r.duplicate {
                    s.duplicates += 1;
                }
                let p = s.partitions.entry(r.partition).or_insert(Landed {
                    count: 0,
                    first: r.offset,
                    last: r.offset,
                });
                p.count += 1;
                p.first = p.first.min(r.offset);
                p.last = p.last.max(r.offset);
                if bar_counts_bytes {
                    if s.count.is_multiple_of(100) {
                        bar.set_message(format!("{} published", s.count));
                    }
                } else {
                    bar.inc(1);
                }
            }
            Err(e) => return (s, Some(e)),
        }
    }
    (s, None)
}

fn print_summary(ctx: &Ctx, topic: &str, s: &Summary) -> CmdResult {
    if ctx.json() {
        let partitions: Vec<_> = s
            .partitions
            .iter()
            .map(|(p, l)| {
                json!({
                    "partition": p,
                    "count": l.count,
                    "first_offset": l.first,
                    "last_offset": l.last,
                })
            })
            .collect();
        return output::json_document(&json!({
            "topic": topic,
            "count": s.count,
            "duplicates": s.duplicates,
            "partitions": partitions,
        }));
    }
    let noun = if s.count == 1 { "message" } else { "messages" };
    let mut text = format!("published {} {noun} to {topic}", s.count);
    if s.duplicates > 0 {
        text.push_str(&format!(
            " ({} duplicate{}: already published, not stored again)",
            s.duplicates,
            if s.duplicates == 1 { "" } else { "s" }
        ));
    }
    text.push('\n');
    if !s.partitions.is_empty() {
        let mut t = Table::new(["PARTITION", "MESSAGES", "FIRST OFFSET", "LAST OFFSET"]);
        for (p, l) in &s.partitions {
            t.row(vec![
                p.to_string(),
                l.count.to_string(),
                l.first.to_string(),
                l.last.to_string(),
            ]);
        }
        text.push_str(&t.render());
    }
    output::write_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> InputArgs {
        InputArgs {
            values: Vec::new(),
            stdin: false,
            file: None,
            key: None,
            key_separator: Some("::".into()),
            headers: vec![("h".into(), "v".into())],
            partition: Some(1),
            delay: None,
            in_flight: 1,
            no_progress: true,
        }
    }

    #[test]
    fn lines_become_messages() {
        let m = message(&input(), b"k::v::w".to_vec());
        assert_eq!(m.key_ref().map(|k| &k[..]), Some(&b"k"[..]));
        assert_eq!(&m.value_ref()[..], b"v::w");
        assert_eq!(m.headers().get("h").map(String::as_str), Some("v"));
        assert_eq!(m.partition_ref(), Some(1));
        let m = message(&input(), b"no separator".to_vec());
        assert_eq!(m.key_ref(), None);
        assert_eq!(&m.value_ref()[..], b"no separator");
    }
}
