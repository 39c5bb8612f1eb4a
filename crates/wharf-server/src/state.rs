//! What every handler shares.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wharf_broker::Engine;

use crate::auth::Tokens;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;

/// Shared state of the server (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    /// The message engine.
    pub engine: Arc<dyn Engine>,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Bearer tokens.
    pub tokens: Arc<Tokens>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins: long-polls return early, event streams end.
    pub shutdown: CancellationToken,
    /// The app registry and invocation stack.
    pub invoker: wharf_invoke::Invoker,
    /// Push delivery workers.
    pub push: Arc<crate::push::PushWorkers>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("engine", &self.engine.name())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Checks a requested long-poll wait against `limits.max_wait_ms`.
    pub fn wait(&self, wait_ms: Option<u64>) -> ApiResult<Duration> {
        let ms = wait_ms.unwrap_or(0);
        let max = self.config.limits.max_wait_ms;
        if ms > max {
            return Err(ApiError::limit(
                format!("wait_ms {ms}"),
                "limits.max_wait_ms",
                max,
            ));
        }
        Ok(Duration::from_millis(ms))
    }

    /// Checks a requested count against `limits.max_read_messages`.
    pub fn count(&self, field: &str, n: Option<u32>, default: u32) -> ApiResult<usize> {
        let n = n.unwrap_or(default);
        let max = self.config.limits.max_read_messages;
        if n == 0 {
            return Err(ApiError::invalid(field, "must be at least 1"));
        }
        if n as usize > max {
            return Err(ApiError::limit(
                format!("{field} {n}"),
                "limits.max_read_messages",
                max,
            ));
        }
        Ok(n as usize)
    }

    /// Runs a (possibly long-polling) engine call, answering `503 shutting_down` instead if
    /// the server starts shutting down first. Dropping an engine call is safe (as when a client
    /// disconnects): deliveries it had leased come back when their lease ends.
    pub async fn unless_shutdown<T>(
        &self,
        call: impl Future<Output = Result<T, wharf_broker::BrokerError>>,
    ) -> ApiResult<T> {
        tokio::select! {
            r = call => Ok(r?),
            () = self.shutdown.cancelled() => Err(ApiError::new(
                "shutting_down",
                "the server is shutting down; retry on another node or after the restart",
            )
            .retry_after(1)),
        }
    }
}
