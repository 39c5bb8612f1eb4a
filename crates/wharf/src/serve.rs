//! `wharf serve`: configuration, logging, the embedded engine, the server, and signals.

use std::path::PathBuf;
use std::sync::Arc;

use wharf_broker::{EmbeddedConfig, EmbeddedEngine};
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
}

pub(crate) fn run(args: ServeArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        listen: args.listen,
        data: args.data,
        allow_anonymous: args.allow_anonymous,
        log_level: args.log_level,
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

async fn serve(config: Config) -> Result<(), CliError> {
    let data = config.storage.data.clone();
    let engine =
        tokio::task::spawn_blocking(move || EmbeddedEngine::open(EmbeddedConfig::new(data)))
            .await
            .map_err(|e| CliError::Serve(e.to_string()))?
            .map_err(|e| {
                CliError::Serve(format!(
                    "cannot open the data directory {}: {e}",
                    config.storage.data.display()
                ))
            })?;
    let scheme = if config.tls.cert_file.is_empty() {
        "http"
    } else {
        "https"
    };
    let data = config.storage.data.clone();
    let server = match wharf_server::start(config, Arc::new(engine.clone())).await {
        Ok(s) => s,
        Err(e) => {
            let _ = engine.close();
            return Err(CliError::Serve(e.to_string()));
        }
    };
    tracing::info!(
        address = %server.local_addr(),
        data = %data.display(),
        version = env!("CARGO_PKG_VERSION"),
        "wharf is serving"
    );
    // A line for people and for scripts that start the server on port 0.
    eprintln!(
        "wharf {} listening on {scheme}://{} (data {})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        data.display()
    );
    wait_for_signal().await;
    tracing::info!("signal received: shutting down");
    server.shutdown().await;
    let closed = tokio::task::spawn_blocking(move || engine.close())
        .await
        .map_err(|e| CliError::Serve(e.to_string()))?;
    closed.map_err(|e| CliError::Serve(format!("closing the data directory: {e}")))?;
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
