//! Wharf's server: the API surfaces on one listener.
//!
//! REST (axum) with Server-Sent Events, the OpenAPI document at `/openapi.json`, Prometheus
//! metrics at `/metrics`, `/healthz` and `/readyz`, bearer-token auth with scopes, TLS
//! (rustls), CORS, limits on every input, and graceful shutdown. Errors become
//! `{code, message}` in one place ([`error`]). The gRPC API (`wharf.v1`, from `wharf-proto`)
//! and gRPC-Web are served on the same listener, with the same checks and error codes.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use wharf_broker::{EmbeddedConfig, EmbeddedEngine};
//!
//! let engine = EmbeddedEngine::open(EmbeddedConfig::new("./wharf-data"))?;
//! let config = wharf_server::Config::default();
//! let server = wharf_server::start(config, Arc::new(engine.clone())).await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! engine.close()?;
//! # Ok(()) }
//! ```

// Nothing derived from a request may panic the server: no unwrap/expect/panic outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
mod grpc;
pub mod metrics;
pub mod push;
mod routes;
mod server;
pub mod state;
pub mod trace;
pub mod wire;

pub use config::{Config, ConfigError, Overrides};
pub use error::{ApiError, CODES, ErrorBody};
pub use routes::{openapi_json, router};
pub use server::{ServeError, ServerHandle, start};
