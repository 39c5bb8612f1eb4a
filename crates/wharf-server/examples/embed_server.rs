//! Embeds a Wharf server in your own program: open the embedded engine, start the REST API on
//! a port of your choosing, stop it cleanly on Ctrl-C.
//!
//! ```sh
//! cargo run -p wharf-server --example embed_server -- 127.0.0.1:7401 ./embedded-data
//! curl -s -X PUT localhost:7401/v1/queues/jobs
//! curl -s localhost:7401/v1/queues/jobs/messages -d '{"value":"hello"}'
//! curl -s localhost:7401/v1/queues/jobs/receive -d '{"max":1}'
//! ```

use std::sync::Arc;

use wharf_broker::{EmbeddedConfig, EmbeddedEngine};
use wharf_server::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7401".into());
    let data = args.next().unwrap_or_else(|| "./embedded-data".into());

    let engine =
        tokio::task::spawn_blocking(move || EmbeddedEngine::open(EmbeddedConfig::new(data)))
            .await??;
    let mut config = Config::default();
    config.server.listen = listen;
    config.limits.max_wait_ms = 10_000;
    let server = wharf_server::start(config, Arc::new(engine.clone())).await?;
    println!("serving on http://{} — Ctrl-C stops", server.local_addr());

    tokio::signal::ctrl_c().await?;
    server.shutdown().await; // finish in-flight requests
    tokio::task::spawn_blocking(move || engine.close()).await??; // make everything durable
    Ok(())
}
