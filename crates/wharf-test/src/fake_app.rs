//! Fake apps for service-invocation tests, in one place: [`HttpApp`] (HTTP/1.1 and h2c on one
//! port) and [`GrpcEchoApp`] (`wharf.testing.v1.Echo`, see [`wharf_proto::testing::v1`]).
//!
//! Both listen on `127.0.0.1:0`, count and record what reaches them, can be told how to answer
//! ([`Mode`], [`GrpcMode`]) and stop when dropped. They are the same types as
//! [`crate::fake_http`] and [`crate::fake_grpc`], re-exported here.
//!
//! ```no_run
//! # async fn t() {
//! use std::time::Duration;
//! use wharf_test::fake_app::{HttpApp, Mode};
//!
//! let app = HttpApp::start("a1").await;
//! app.set_mode(Mode::Status(503));
//! let resp = wharf_test::reqwest::get(format!("{}/orders?id=7", app.address())).await.unwrap();
//! assert_eq!(resp.status(), 503);
//! assert!(app.wait_for_hits(1, Duration::from_secs(30)).await);
//! assert_eq!(app.requests()[0].path_and_query, "/orders?id=7");
//! # }
//! ```

pub use crate::fake_grpc::{GrpcEchoApp, GrpcMode};
pub use crate::fake_http::{HttpApp, Mode, Recorded};
