//! Wharf's gRPC API, `wharf.v1`: the messages, tonic clients and tonic servers generated from
//! [`PROTO`] (compiled with protox, so building needs no system `protoc`).
//!
//! The server side lives in `wharf-server`; the friendly client is `wharf-client`. Use this
//! crate directly for the raw generated API, e.g. `v1::topics_client::TopicsClient`.

pub mod codec;
mod publish;

/// The `wharf.v1` package.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("wharf.v1");
    // Written by hand for speed (the build maps them with `extern_path`); the same types and
    // wire format as generated ones.
    pub use crate::publish::{PublishMessage, PublishRequest, PublishResponse};
}

/// A small service for tests and benchmarks of gRPC invocation (one RPC of each kind); not
/// part of Wharf's API.
pub mod testing {
    /// The `wharf.testing.v1` package.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("wharf.testing.v1");
    }
}

/// The source of `wharf/v1/wharf.proto`, for tools that generate clients in other languages.
pub const PROTO: &str = include_str!("../proto/wharf/v1/wharf.proto");

/// The source of `wharf/testing/v1/echo.proto`, the test service in [`testing::v1`] (for
/// clients and fake apps written in other languages).
pub const ECHO_PROTO: &str = include_str!("../proto/wharf/testing/v1/echo.proto");

/// The metadata key carrying the stable error code (`topic_not_found`, ...) on every error.
pub const ERROR_CODE_KEY: &str = "wharf-error-code";
/// The metadata key saying, in seconds, when to retry (on `UNAVAILABLE`).
pub const RETRY_AFTER_KEY: &str = "retry-after";
/// The `google.rpc.ErrorInfo` domain of Wharf's errors.
pub const ERROR_DOMAIN: &str = "wharf.dev";
