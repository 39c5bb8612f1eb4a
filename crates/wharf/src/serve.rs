//! `wharf serve`: configuration, logging, the embedded engine, the server, and signals.

use std::path::PathBuf;
use std::sync::Arc;

use wharf_broker::{EmbeddedConfig, EmbeddedEngine, Engine};
use wharf_engine_nats::NatsConfig;
use wharf_engine_rabbitmq::RabbitConfig;
use wharf_server::{Config, Overrides};

use crate::cli::CliError;

/// Flags of `wharf serve` (they override wharf.toml and WHARF_* variables).
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (see `wharf config default`).
    #[arg(long, env = "WHARF_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7400].
    #[arg(long)]
    listen: Option<String>,
    /// Data directory [default: ./wharf-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Allow a non-loopback listener without tokens.
    #[arg(long)]
    allow_anonymous: bool,
    /// Log filter, e.g. `info` or `wharf_server=debug,info`.
    #[arg(long)]
    log_level: Option<String>,
    /// Message engine: `embedded` (default), `nats` or `rabbitmq`.
    #[arg(long, value_parser = ["embedded", "nats", "rabbitmq"])]
    engine: Option<String>,
    /// NATS server URL for `--engine nats` [default: nats://127.0.0.1:4222].
    #[arg(long)]
    nats_url: Option<String>,
    /// RabbitMQ URL for `--engine rabbitmq`.
    #[arg(long)]
    amqp_url: Option<String>,
}

pub(crate) fn run(args: ServeArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        listen: args.listen,
        data: args.data,
        allow_anonymous: args.allow_anonymous,
        log_level: args.log_level,
        engine: args.engine,
        nats_url: args.nats_url,
        amqp_url: args.amqp_url,
    };
    let config = Config::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wharf")
        .build()
        .map_err(|e| CliError::Serve(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(config))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The engine `wharf serve` runs on, and how to close it.
enum Running {
    Embedded(EmbeddedEngine),
    Nats(wharf_engine_nats::NatsEngine),
    Rabbit(wharf_engine_rabbitmq::RabbitEngine),
}

impl Running {
    async fn open(config: &Config) -> Result<Self, CliError> {
        match config.engine.kind.as_str() {
            "nats" => {
                let engine = wharf_engine_nats::NatsEngine::connect(NatsConfig {
                    prefix: config.engine.nats_prefix.clone(),
                    replicas: usize::try_from(config.engine.nats_replicas).unwrap_or(1),
                    ..NatsConfig::new(config.engine.nats_url.clone())
                })
                .await
                .map_err(|e| CliError::Serve(format!("cannot start on NATS: {e}")))?;
                Ok(Running::Nats(engine))
            }
            "rabbitmq" => {
                let engine = wharf_engine_rabbitmq::RabbitEngine::connect(RabbitConfig {
                    prefix: config.engine.amqp_prefix.clone(),
                    ..RabbitConfig::new(config.engine.amqp_url.clone())
                })
                .await
                .map_err(|e| CliError::Serve(format!("cannot start on RabbitMQ: {e}")))?;
                Ok(Running::Rabbit(engine))
            }
            _ => {
                let data = config.storage.data.clone();
                let engine = tokio::task::spawn_blocking(move || {
                    EmbeddedEngine::open(EmbeddedConfig::new(data))
                })
                .await
                .map_err(|e| CliError::Serve(e.to_string()))?
                .map_err(|e| {
                    CliError::Serve(format!(
                        "cannot open the data directory {}: {e}",
                        config.storage.data.display()
                    ))
                })?;
                Ok(Running::Embedded(engine))
            }
        }
    }

    fn engine(&self) -> Arc<dyn Engine> {
        match self {
            Running::Embedded(e) => Arc::new(e.clone()),
            Running::Nats(e) => Arc::new(e.clone()),
            Running::Rabbit(e) => Arc::new(e.clone()),
        }
    }

    /// Where the data is, for the startup line.
    fn describe(&self, config: &Config) -> String {
        match self {
            Running::Embedded(_) => format!("data {}", config.storage.data.display()),
            Running::Nats(e) => format!(
                "engine nats at {}, server {}, prefix {}",
                config.engine.nats_url,
                e.server_version(),
                config.engine.nats_prefix
            ),
            Running::Rabbit(e) => format!(
                "engine rabbitmq at {}, prefix {}",
                e.url(),
                config.engine.amqp_prefix
            ),
        }
    }

    async fn close(self) -> Result<(), CliError> {
        match self {
            Running::Embedded(engine) => tokio::task::spawn_blocking(move || engine.close())
                .await
                .map_err(|e| CliError::Serve(e.to_string()))?
                .map_err(|e| CliError::Serve(format!("closing the data directory: {e}"))),
            Running::Nats(_) | Running::Rabbit(_) => Ok(()),
        }
    }
}

async fn serve(config: Config) -> Result<(), CliError> {
    let running = Running::open(&config).await?;
    let scheme = if config.tls.cert_file.is_empty() {
        "http"
    } else {
        "https"
    };
    let whereabouts = running.describe(&config);
    let server = match wharf_server::start(config, running.engine()).await {
        Ok(s) => s,
        Err(e) => {
            let _ = running.close().await;
            return Err(CliError::Serve(e.to_string()));
        }
    };
    tracing::info!(
        address = %server.local_addr(),
        engine = %whereabouts,
        version = env!("CARGO_PKG_VERSION"),
        "wharf is serving"
    );
    // A line for people and for scripts that start the server on port 0.
    eprintln!(
        "wharf {} listening on {scheme}://{} ({whereabouts})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
    );
    wait_for_signal().await;
    tracing::info!("signal received: shutting down");
    server.shutdown().await;
    running.close().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
