//! The engine conformance suite: Wharf's semantics (DESIGN.md §1–2), written once against the
//! [`Engine`] trait and run against every engine.
//!
//! # How it fits together
//! - A [`Harness`] gives a case a fresh engine on fresh data ([`Harness::start`]), reopens it
//!   on the same data ([`Harness::restart`], for durability), moves its clock
//!   ([`Harness::advance_clock`]) and applies retention on demand
//!   ([`Harness::enforce_retention`]).
//! - Each case is a `pub(crate) async fn(impl Harness)` in one of the group modules below
//!   ([`topics`], [`publish`], [`dedup`], [`read`], [`stream`], [`shared`]). A case asserts
//!   real behaviour and panics (naming what differed) when the engine does not conform.
//! - An engine's test file (`tests/conformance_{engine}.rs`) declares `mod conformance;`,
//!   implements [`Harness`], and lists the cases with [`conformance_tests!`], which
//!   generates one `#[tokio::test]` per case, so a failure names the group and the case
//!   (`stream::commit_durable_across_restart`). An engine that cannot pass a case yet marks it
//!   there with `#[ignore = "..."]`.
//! - Every case must be listed by every engine: a case an engine's file leaves out is dead
//!   code in that test crate, which `clippy -D warnings` refuses.
//!
//! Cases are fast and deterministic: time moves only through the harness clock, waits for a
//! publish are woken by the publish (long timeouts are safety nets only), and nothing sleeps
//! to synchronise.

pub(crate) mod common;
pub(crate) mod dedup;
pub(crate) mod publish;
pub(crate) mod read;
pub(crate) mod shared;
pub(crate) mod stream;
pub(crate) mod topics;

use std::sync::Arc;

use wharf_broker::Engine;

/// What the suite needs from an engine under test, beyond the [`Engine`] trait.
///
/// A harness is made fresh for each case and owns the engine's data (a temporary directory,
/// a namespace on a server). Time-dependent cases use [`Harness::advance_clock`]; an engine
/// on the real clock would have to wait instead.
pub(crate) trait Harness {
    /// The engine under test.
    type E: Engine;

    /// Opens the engine on this harness's (initially empty) data.
    async fn start(&mut self) -> Arc<Self::E>;

    /// Closes the engine and opens it again on the same data, as after a clean shutdown.
    /// The engine returned earlier must not be used afterwards.
    async fn restart(&mut self) -> Arc<Self::E>;

    /// Moves the engine's clock by `ms` milliseconds (negative moves it back).
    fn advance_clock(&self, ms: i64);

    /// The engine's current time (ms since the Unix epoch).
    fn now_ms(&self) -> i64;

    /// Applies every topic's retention policy now.
    async fn enforce_retention(&self);
}

/// Generates one `#[tokio::test]` per case, grouped in modules named like the case groups
/// (with `skip_if = path`, each case first calls that `fn() -> bool` and passes without
/// running when it says so: an external engine that is not there):
///
/// ```ignore
/// mod conformance;
/// fn harness() -> MyHarness { ... }
/// conformance::conformance_tests! { crate::harness;
///     topics { create_defaults, #[ignore = "BUG: ..."] bad_names }
///     publish { key_routing }
/// }
/// ```
macro_rules! conformance_tests {
    (
        $harness:path, skip_if = $skip:path;
        $( $group:ident { $( $(#[$attr:meta])* $case:ident ),* $(,)? } )*
    ) => {
        $(
            mod $group {
                $(
                    $(#[$attr])*
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        if $skip() {
                            return;
                        }
                        crate::conformance::$group::$case($harness()).await;
                    }
                )*
            }
        )*
    };
    (
        $harness:path;
        $( $group:ident { $( $(#[$attr:meta])* $case:ident ),* $(,)? } )*
    ) => {
        $(
            mod $group {
                $(
                    $(#[$attr])*
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        crate::conformance::$group::$case($harness()).await;
                    }
                )*
            }
        )*
    };
}

pub(crate) use conformance_tests;
