//! Command-line interface.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use wharf_log::{Log, LogConfig};

/// Wharf: durable queues and event streams, and resilient service calls, in one binary.
#[derive(Debug, Parser)]
#[command(name = "wharf", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Wharf server (REST + SSE, metrics, health on one port) on embedded storage.
    Serve(crate::serve::ServeArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect a partition log directory on disk (offline: the server must not be running).
    #[command(subcommand)]
    Log(LogCommand),
    /// Load-test a running Wharf (or the in-process engine, NATS, RabbitMQ, Redis): publish,
    /// consume, queue, fanout and latency workloads, with throughput, latency percentiles and
    /// CPU; `wharf bench compare` runs a suite against several systems side by side.
    Bench(crate::bench::BenchCmd),
    /// Client verbs against a running server: topic, publish, consume, queue, sub, dlq,
    /// status.
    #[command(flatten)]
    Client(crate::client_cli::ClientCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default wharf.toml, every key documented.
    Default,
    /// Load and validate a configuration (file < WHARF_* env), then print it resolved.
    Check {
        /// The file (default: $WHARF_CONFIG, else the defaults alone).
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Open (and so recover) a log directory and print what recovery did and what it holds.
    Check {
        /// The partition log directory.
        dir: PathBuf,
    },
    /// Print records of a log directory.
    Dump {
        /// The partition log directory.
        dir: PathBuf,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many records to print at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Errors the CLI reports (already in words for a person).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Log(#[from] wharf_log::Error),
    #[error("{0}")]
    Config(#[from] wharf_server::ConfigError),
    #[error("{0}")]
    Serve(String),
}

/// Warnings of the libraries under the client verbs and `wharf bench` go to stderr (`WHARF_LOG`
/// overrides the `warn` filter; not `RUST_LOG`, which a shell may have set for something else).
/// Installing a subscriber also matters for speed: with none, every span the HTTP/2 stack opens
/// falls back to the `log` crate (~80 such calls per request, 17% of the client's instructions
/// in the latency benchmark); with one, a span below its level costs one comparison.
fn init_client_logging() {
    let filter = std::env::var("WHARF_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub(crate) fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => crate::serve::run(args),
        Command::Bench(args) => {
            init_client_logging();
            crate::bench::run(args)
        }
        Command::Client(cmd) => {
            init_client_logging();
            crate::client_cli::run(cmd)
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", wharf_server::config::DEFAULT_TOML);
            Ok(())
        }
        Command::Config(ConfigCommand::Check { config }) => {
            let mut c = wharf_server::Config::load(
                config.as_deref(),
                std::env::vars(),
                &wharf_server::Overrides::default(),
            )?;
            // The resolved config may be pasted into a ticket: never print secrets.
            for t in &mut c.auth.tokens {
                t.token = "<redacted>".into();
            }
            let text = toml::to_string_pretty(&c)
                .map_err(|e| CliError::Serve(format!("cannot print the config: {e}")))?;
            print!("{text}");
            Ok(())
        }
        Command::Log(LogCommand::Check { dir }) => {
            let (log, report) = Log::open(&dir, LogConfig::default())?;
            let stats = log.stats();
            let mut out = String::new();
            let _ = writeln!(out, "log {}", dir.display());
            let _ = writeln!(out, "  segments:     {}", stats.segments);
            let _ = writeln!(
                out,
                "  offsets:      [{}, {})",
                stats.start_offset, stats.high_watermark
            );
            let _ = writeln!(out, "  bytes:        {}", stats.size_bytes);
            match &report.truncated {
                None => {
                    let _ = writeln!(out, "  tail:         intact");
                }
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "  tail:         TRUNCATED segment {} at byte {} ({} bytes removed): {}",
                        t.segment_base, t.position, t.removed_bytes, t.reason
                    );
                }
            }
            let _ = writeln!(out, "  indexes rebuilt: {:?}", report.rebuilt_indexes);
            let _ = writeln!(out, "  leftovers removed: {:?}", report.removed_files);
            print!("{out}");
            log.close()?;
            Ok(())
        }
        Command::Log(LogCommand::Dump { dir, from, limit }) => {
            let (log, _) = Log::open(&dir, LogConfig::default())?;
            let mut next = from.max(log.start_offset());
            let mut printed = 0;
            while printed < limit && next < log.high_watermark() {
                let records = log.read_records(next, 1 << 20)?;
                let Some(last) = records.last() else { break };
                next = last.offset + 1;
                for r in records.into_iter().take(limit - printed) {
                    let key = r
                        .key
                        .as_ref()
                        .map(|k| String::from_utf8_lossy(k).into_owned());
                    println!(
                        "{}\t{}\t{}\t{}\t{:?}",
                        r.offset,
                        r.timestamp,
                        key.as_deref().unwrap_or("-"),
                        String::from_utf8_lossy(&r.value),
                        r.headers
                    );
                    printed += 1;
                }
            }
            log.close()?;
            Ok(())
        }
    }
}
