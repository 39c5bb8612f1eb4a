//! Why a call was refused or failed: one error type for the whole stack, each variant naming
//! the layer that produced it. The server maps it to an HTTP or gRPC status in one place
//! (`wharf-server`'s error module), using [`InvokeError::code`] as the stable machine-readable
//! code.

use std::time::Duration;

/// A boxed error, as hyper and tower produce them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The layer of the invocation stack that produced an error (DESIGN.md §4, outermost first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Looking the app up in the registry, reading the request.
    Registry,
    /// The propagated deadline.
    Deadline,
    /// Rate limit and concurrency limit.
    Admission,
    /// The retry policy and budget.
    Retry,
    /// Endpoint choice, failure accrual and the app-level breaker.
    Balancer,
    /// The per-try timeout.
    Timeout,
    /// The connection to the instance.
    Transport,
}

impl Layer {
    /// The layer's name, as it appears in errors and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Deadline => "deadline",
            Self::Admission => "admission",
            Self::Retry => "retry",
            Self::Balancer => "balancer",
            Self::Timeout => "timeout",
            Self::Transport => "transport",
        }
    }
}

/// An invocation that did not produce an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// No app of that name is known.
    #[error("no app named {0:?} is registered")]
    UnknownApp(String),
    /// The app is known but has no live instance.
    #[error(
        "app {0:?} has no live instances (none registered, or every one stopped heart-beating)"
    )]
    NoInstances(String),
    /// Bad input: an app name, instance address, policy or header that cannot be used.
    #[error("{field}: {reason}")]
    Invalid {
        /// What was wrong.
        field: String,
        /// Why.
        reason: String,
    },
    /// The caller's deadline had passed before the call was sent; nothing was sent.
    #[error("the deadline had already passed when the call arrived; it was not sent to {app:?}")]
    DeadlineExpired {
        /// The app.
        app: String,
    },
    /// The deadline passed while the call was in progress.
    #[error("the call to {app:?} did not complete within its deadline of {after:?}")]
    DeadlineExceeded {
        /// The app.
        app: String,
        /// The time the call had.
        after: Duration,
    },
    /// Over the app's rate limit.
    #[error("app {app:?} is over its rate limit of {per_second} calls/s")]
    RateLimited {
        /// The app.
        app: String,
        /// The configured rate.
        per_second: u32,
    },
    /// Over the app's concurrency limit; refused at once rather than queued.
    #[error("app {app:?} already has {limit} calls in flight (its concurrency limit)")]
    ConcurrencyLimited {
        /// The app.
        app: String,
        /// The configured limit.
        limit: usize,
    },
    /// Every endpoint of the app is ejected after failures: failing fast without an upstream
    /// attempt until a probe is due.
    #[error(
        "app {app:?} is failing: all {endpoints} instances are ejected after repeated failures \
         (next probe in {retry_in:?})"
    )]
    BreakerOpen {
        /// The app.
        app: String,
        /// How many instances are ejected.
        endpoints: usize,
        /// When the next instance may be probed.
        retry_in: Duration,
    },
    /// One attempt took longer than the per-try timeout.
    #[error(
        "instance {instance:?} of {app:?} did not answer within the per-try timeout of {after:?}"
    )]
    TryTimeout {
        /// The app.
        app: String,
        /// The instance.
        instance: String,
        /// The timeout.
        after: Duration,
    },
    /// Could not connect to the instance (nothing was sent).
    #[error("cannot connect to instance {instance:?} of {app:?}: {source}")]
    Connect {
        /// The app.
        app: String,
        /// The instance.
        instance: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The connection failed during the exchange (the request may have been processed).
    #[error("instance {instance:?} of {app:?} failed during the call: {source}")]
    Upstream {
        /// The app.
        app: String,
        /// The instance.
        instance: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Reading the caller's request body failed.
    #[error("reading the request body failed: {0}")]
    Body(#[source] BoxError),
}

impl InvokeError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownApp(_) => "app_not_found",
            Self::NoInstances(_) => "no_instances",
            Self::Invalid { .. } => "invalid_argument",
            Self::DeadlineExpired { .. } | Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::RateLimited { .. } => "rate_limited",
            Self::ConcurrencyLimited { .. } => "concurrency_limited",
            Self::BreakerOpen { .. } => "breaker_open",
            Self::TryTimeout { .. } => "upstream_timeout",
            Self::Connect { .. } => "upstream_unreachable",
            Self::Upstream { .. } => "upstream_failed",
            Self::Body(_) => "bad_request_body",
        }
    }

    /// The layer that produced the error.
    pub fn layer(&self) -> Layer {
        match self {
            Self::UnknownApp(_) | Self::NoInstances(_) | Self::Invalid { .. } | Self::Body(_) => {
                Layer::Registry
            }
            Self::DeadlineExpired { .. } | Self::DeadlineExceeded { .. } => Layer::Deadline,
            Self::RateLimited { .. } | Self::ConcurrencyLimited { .. } => Layer::Admission,
            Self::BreakerOpen { .. } => Layer::Balancer,
            Self::TryTimeout { .. } => Layer::Timeout,
            Self::Connect { .. } | Self::Upstream { .. } => Layer::Transport,
        }
    }

    /// When the caller may try again, if the error says (breaker and limits).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::BreakerOpen { retry_in, .. } => Some(*retry_in),
            Self::RateLimited { .. } | Self::ConcurrencyLimited { .. } => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
