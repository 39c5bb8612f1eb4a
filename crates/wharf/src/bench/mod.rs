//! `wharf bench`: a load generator against a running Wharf, against the embedded engine in
//! this process (`--target inproc`, the "direct call" baseline), against NATS JetStream
//! itself (`--target nats://HOST:PORT`, to compare with Wharf on NATS), or against RabbitMQ
//! itself (`--target amqp://HOST:PORT`, to compare with Wharf on RabbitMQ).
//!
//! - [`driver`]: the [`driver::Driver`] trait the workloads are written against (so NATS,
//!   RabbitMQ and Redis drivers can be added with the same workload code);
//! - [`wharf_grpc`]: the gRPC driver; [`inproc`]: the in-process driver; [`nats`]: raw NATS
//!   JetStream; [`amqp`]: raw RabbitMQ over AMQP 0-9-1, stream and quorum queues (their module
//!   documentation gives the mapping);
//! - [`workloads`]: publish, consume, queue, latency;
//! - [`report`]: progress line, CPU from `/proc`, the server's pid, table and JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::CliError;

mod amqp;
mod chain;
mod chart;
mod compare;
mod driver;
mod inproc;
mod nats;
mod redis;
mod report;
mod wharf_grpc;
mod workloads;

use driver::{BenchError, Driver, Durability, Result, ServerSide, TopicSpec};
use workloads::{Plan, Workload};

/// Flags of `wharf bench`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Workloads:
  publish   publishers (--in-flight) each with one batch (--batch) in flight; latency = per batch
  consume   drain a topic pre-filled with --count messages through a stream subscription
            (StreamConsumer.Consume), --batch messages per batch at most
  queue     drain a queue pre-filled with --count messages: --in-flight consumers, each a
            SharedConsumer.Process stream holding --batch deliveries, acking each batch
  fanout    --subscriptions stream subscriptions of one topic, a member each, consuming while
            --in-flight publishers publish batches of --batch; msgs/s = deliveries of all
            subscriptions together
  latency   a paced publisher at --rate msg/s (at most --in-flight publishes outstanding, each
            of the messages due, at most --batch) and a concurrent stream consumer;
            latency = delivery - intended send time (no coordinated omission)

Every run stops at --count messages or after --duration, whichever comes first.
Examples:
  wharf bench publish --size 1KiB --batch 100 --in-flight 16
  wharf bench latency --rate 10000 --duration 10s --target inproc
  wharf bench publish --target nats://127.0.0.1:4222   (NATS JetStream itself, no Wharf)")]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, required = true)]
    workload: Option<Workload>,
    /// The server (http://HOST:PORT or https://...), or `inproc`: the embedded engine in this
    /// process on a temporary directory (the same workload through the Engine trait, without
    /// network), or `nats://HOST:PORT`: NATS JetStream itself, without Wharf (streams and pull
    /// consumers; --durability is ignored, NATS has no per-stream fsync; --token is not
    /// used), or `amqp://[USER:PASS@]HOST:PORT[/VHOST]` (e.g.
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`): RabbitMQ itself, without Wharf (topics are
    /// stream queues, queues are quorum queues, publisher confirms; --durability is ignored,
    /// streams have no fsync setting; --connections sets the AMQP connections; --token is not
    /// used).
    #[arg(long, env = "WHARF_SERVER", default_value = "http://127.0.0.1:7400")]
    target: String,
    /// Value size in bytes (`100`, `1KiB`, `4k`, `1MiB`).
    #[arg(long, default_value = "100", value_parser = parse_size)]
    size: usize,
    /// Most messages to measure.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Longest measured phase (`10s`, `500ms`, `2m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishes in flight (publish, latency), or consumers (queue).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Messages per publish (publish); most messages per batch (consume, latency); unsettled
    /// deliveries per consumer (queue).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Messages per second (latency).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// With an `amqp://` target: what a topic is on RabbitMQ — `stream` queues (queues are
    /// quorum queues), or durable `classic` or `quorum` queues behind a fanout exchange
    /// (persistent messages; queues of the same type).
    #[arg(long, value_enum, default_value = "stream")]
    amqp_queues: amqp::QueueType,
    /// Stream subscriptions of the topic (fanout).
    #[arg(long, default_value_t = 4)]
    subscriptions: usize,
    /// Partitions of the topic or queue.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Durability of the topic or queue [default: the server's default, always].
    #[arg(long, value_enum)]
    durability: Option<Durability>,
    /// The topic or queue [default: a fresh name, deleted after the run].
    #[arg(long)]
    topic: Option<String>,
    /// Bearer token for the server.
    #[arg(long, env = "WHARF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the summary as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Untimed warm-up before the measured phase (publish, latency).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections to the server, or NATS connections (requests are spread over
    /// them).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// The server's process id, for its CPU time [default: the process listening on the
    /// target's port, for a loopback target].
    #[arg(long)]
    server_pid: Option<u32>,
    /// Where `--target inproc` makes its temporary data directory [default: the system's
    /// temporary directory].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Worker threads of this process's runtime (the client's; with `--target inproc` also
    /// the engine's) [default: one per CPU].
    #[arg(long)]
    threads: Option<usize>,
    /// A header (`NAME=VALUE`) on every published message; repeat for more [default: none].
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

/// `wharf bench`: one workload (`wharf bench publish ...`) or a comparison (`wharf bench
/// compare ...`).
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct BenchCmd {
    #[command(subcommand)]
    sub: Option<BenchSub>,
    #[command(flatten)]
    args: BenchArgs,
}

#[derive(Debug, clap::Subcommand)]
enum BenchSub {
    /// Runs one suite of workloads against Wharf, NATS JetStream, RabbitMQ and Redis Streams
    /// (each in its durability modes) side by side; writes a markdown table, JSON and PNG
    /// charts to --out.
    Compare(compare::CompareArgs),
}

impl BenchArgs {
    /// The workload (required by clap unless a subcommand is given).
    fn workload(&self) -> Workload {
        self.workload.unwrap_or(Workload::Publish)
    }
}

/// `NAME=VALUE`.
fn parse_header(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?}: give NAME=VALUE")),
    }
}

/// `100`, `1KiB`, `1 KiB`, `4k`, `1MiB`, `2MB` (k/K/KiB = 1024, KB = 1000).
fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 100, 1KiB, 4k)"))?;
    let mult = match unit.trim() {
        "" | "B" | "b" => 1.0,
        "k" | "K" | "KiB" | "kiB" => 1024.0,
        "KB" | "kB" => 1000.0,
        "m" | "M" | "MiB" => 1024.0 * 1024.0,
        "MB" => 1e6,
        u => return Err(format!("unknown size unit {u:?} (B, KiB, MiB, KB, MB)")),
    };
    let bytes = n * mult;
    if !(0.0..=16.0 * 1024.0 * 1024.0).contains(&bytes) || bytes.fract() != 0.0 {
        return Err(format!("{s:?}: a whole number of bytes up to 16 MiB"));
    }
    Ok(bytes as usize)
}

/// `10s`, `500ms`, `2m`, `1.5s`, `10` (seconds).
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown duration unit {u:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// `100` or `1KiB`, as `--size` takes it back.
fn size_flag(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        if bytes.is_multiple_of(1024 * 1024) {
            format!("{}MiB", bytes / (1024 * 1024))
        } else {
            format!("{}KiB", bytes / 1024)
        }
    } else {
        bytes.to_string()
    }
}

/// `10s` or `250ms`, as `--duration` takes it back.
fn duration_flag(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

/// The command line that runs the same thing again (the token redacted).
fn command_line(a: &BenchArgs, topic_given: bool, topic: &str) -> String {
    let mut c = format!(
        "wharf bench {} --target {} --size {} --count {} --duration {} --in-flight {} \
         --batch {} --partitions {} --warmup {}",
        a.workload().as_str(),
        a.target,
        size_flag(a.size),
        a.count,
        duration_flag(a.duration),
        a.in_flight,
        a.batch,
        a.partitions,
        duration_flag(a.warmup),
    );
    if a.workload() == Workload::Latency {
        c.push_str(&format!(" --rate {}", a.rate));
    }
    if a.workload() == Workload::Fanout {
        c.push_str(&format!(" --subscriptions {}", a.subscriptions));
    }
    if let Some(d) = a.durability {
        c.push_str(&format!(" --durability {}", d.as_str()));
    }
    if a.target != "inproc" {
        c.push_str(&format!(" --connections {}", a.connections));
    }
    if a.amqp_queues != amqp::QueueType::Stream
        && a.target.starts_with("amqp")
        && let Some(v) = clap::ValueEnum::to_possible_value(&a.amqp_queues)
    {
        c.push_str(&format!(" --amqp-queues {}", v.get_name()));
    }
    if topic_given {
        c.push_str(&format!(" --topic {topic}"));
    }
    if a.token.is_some() {
        c.push_str(" --token <redacted>");
    }
    if let Some(n) = a.threads {
        c.push_str(&format!(" --threads {n}"));
    }
    if let Some(p) = a.server_pid {
        c.push_str(&format!(" --server-pid {p}"));
    }
    if let Some(d) = &a.data_dir {
        c.push_str(&format!(" --data-dir {}", d.display()));
    }
    for (k, v) in &a.headers {
        c.push_str(&format!(" --header {k}={v}"));
    }
    if a.json {
        c.push_str(" --json");
    }
    c
}

fn check(a: &BenchArgs) -> Result<()> {
    let bad = |m: &str| Err(BenchError::new(m));
    if a.count == 0 {
        return bad("--count must be at least 1");
    }
    if a.duration.is_zero() {
        return bad("--duration must be positive");
    }
    if a.in_flight == 0 || a.in_flight > 10_000 {
        return bad("--in-flight must be within 1..=10000");
    }
    if a.batch == 0 || a.batch > 100_000 {
        return bad("--batch must be within 1..=100000");
    }
    if a.threads.is_some_and(|n| n == 0 || n > 256) {
        return bad("--threads must be within 1..=256");
    }
    if a.connections == 0 || a.connections > 64 {
        return bad("--connections must be within 1..=64");
    }
    if !(1..=1000).contains(&a.subscriptions) {
        return bad("--subscriptions must be within 1..=1000");
    }
    if !(1..=1024).contains(&a.partitions) {
        return bad("--partitions must be within 1..=1024");
    }
    if a.workload() == Workload::Latency && a.rate == 0 {
        return bad("--rate must be at least 1");
    }
    if a.workload() == Workload::Latency && a.size < workloads::STAMP_BYTES {
        return Err(BenchError(format!(
            "the latency workload needs --size of at least {} bytes (the send stamp)",
            workloads::STAMP_BYTES
        )));
    }
    Ok(())
}

/// Runs `wharf bench`.
pub(crate) fn run(cmd: BenchCmd) -> std::result::Result<(), CliError> {
    if let Some(BenchSub::Compare(c)) = cmd.sub {
        // The command line, for the report, without a token's value.
        let mut line = Vec::new();
        let mut hide = false;
        for arg in std::env::args() {
            if hide {
                line.push("<redacted>".to_owned());
                hide = false;
            } else if arg == "--token" {
                hide = true;
                line.push(arg);
            } else if arg.starts_with("--token=") {
                line.push("--token=<redacted>".to_owned());
            } else {
                line.push(arg);
            }
        }
        let line = line.join(" ");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("wharf-bench")
            .build()
            .map_err(|e| CliError::Serve(format!("cannot start the runtime: {e}")))?;
        return runtime
            .block_on(compare::compare(c, line))
            .map_err(|e| CliError::Serve(e.0));
    }
    let args = cmd.args;
    if args.workload.is_none() {
        return Err(CliError::Serve(
            "give a workload or `compare` (see --help)".into(),
        ));
    }
    check(&args).map_err(|e| CliError::Serve(e.0))?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .thread_name("wharf-bench")
        .build()
        .map_err(|e| CliError::Serve(format!("cannot start the runtime: {e}")))?;
    runtime
        .block_on(bench(args))
        .map_err(|e| CliError::Serve(e.0))
}

/// Opens the driver for `target` (see `--target`).
pub(crate) async fn open_driver(
    target: &str,
    connections: usize,
    token: Option<&str>,
    data_dir: Option<PathBuf>,
    amqp_queues: amqp::QueueType,
) -> Result<Arc<dyn Driver>> {
    Ok(if target == "inproc" {
        Arc::new(inproc::InProc::open(data_dir).await?)
    } else if target.starts_with("nats://") {
        Arc::new(nats::Nats::connect(target, connections).await?)
    } else if target.starts_with("amqp://") || target.starts_with("amqps://") {
        Arc::new(amqp::Amqp::connect_with(target, connections, amqp_queues).await?)
    } else if target.starts_with("redis://") || target.starts_with("rediss://") {
        Arc::new(redis::Redis::connect(target, connections).await?)
    } else {
        Arc::new(wharf_grpc::WharfGrpc::connect(target, connections, token).await?)
    })
}

/// The broker's process for the CPU columns: `explicit` (`--server-pid`), or the process
/// listening on a loopback target's port; and how it was found or why there is none.
pub(crate) fn server_process(driver: &dyn Driver, explicit: Option<u32>) -> (Option<u32>, String) {
    match (driver.server_side(), explicit) {
        (ServerSide::InProcess, _) => (
            None,
            "this process (the in-process engine): its CPU is in the client's columns".to_owned(),
        ),
        (ServerSide::Remote { .. }, Some(pid)) => (Some(pid), format!("pid {pid} (--server-pid)")),
        (ServerSide::Remote { host, port }, None) if report::is_loopback(&host) => {
            match report::listener_pid(port) {
                Some(pid) => (
                    Some(pid),
                    format!("pid {pid}, the process listening on port {port}"),
                ),
                None => (
                    None,
                    format!(
                        "CPU not measured: no process found listening on port {port} \
                         (give --server-pid)"
                    ),
                ),
            }
        }
        (ServerSide::Remote { host, .. }, None) => (
            None,
            format!("CPU not measured: {host} is not this machine (give --server-pid)"),
        ),
    }
}

async fn bench(a: BenchArgs) -> Result<()> {
    let inproc = a.target == "inproc";
    let driver = open_driver(
        &a.target,
        a.connections,
        a.token.as_deref(),
        a.data_dir.clone(),
        a.amqp_queues,
    )
    .await?;
    let (server_pid, server_note) = server_process(&*driver, a.server_pid);
    let generated = a.topic.is_none();
    let topic = a.topic.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!(
            "bench-{}-{ms}-{:08x}",
            a.workload().as_str(),
            rand::random::<u32>()
        )
    });
    let plan = Plan {
        workload: a.workload(),
        size: a.size,
        count: a.count,
        duration: a.duration,
        in_flight: a.in_flight,
        batch: a.batch,
        rate: a.rate,
        warmup: a.warmup,
        spec: TopicSpec {
            partitions: a.partitions,
            durability: a.durability,
        },
        topic: topic.clone(),
        server_pid,
        headers: a.headers.clone().into(),
        subscriptions: a.subscriptions,
    };
    let info = report::RunInfo {
        target: a.target.clone(),
        driver: driver.describe(),
        server_pid,
        server_note,
        command: command_line(&a, !generated, &topic),
        in_process: inproc,
    };
    let progress = report::Progress::start(false);
    let outcome = workloads::run(driver.clone(), &plan, &progress).await;
    progress.finish();
    // A topic the run named itself is deleted, whatever happened.
    if generated && let Err(e) = driver.delete_topic(&topic).await {
        eprintln!("wharf bench: could not delete {topic}: {e}");
    }
    let closed = driver.close().await;
    let outcome = outcome?;
    closed?;
    let text = report::text(&plan, &info, &outcome);
    if a.json {
        eprint!("{text}");
        println!("{}", report::json(&plan, &info, &outcome));
    } else {
        print!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1 KiB"), Ok(1024));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("17MiB").is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1 fortnight").is_err());
        assert_eq!(size_flag(100), "100");
        assert_eq!(size_flag(1024), "1KiB");
        assert_eq!(size_flag(1 << 20), "1MiB");
        assert_eq!(duration_flag(Duration::from_secs(10)), "10s");
        assert_eq!(duration_flag(Duration::from_millis(250)), "250ms");
    }
}
