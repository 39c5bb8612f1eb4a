//! Test harness for Wharf: [`TestServer`] runs the real server on `127.0.0.1:0` over a
//! temporary data directory (or a fault-injecting file layer), with an HTTP client, JSON
//! helpers and a Server-Sent Events reader.
//!
//! ```no_run
//! # async fn t() {
//! let server = wharf_test::TestServer::start().await;
//! let (status, body) = server.put("/v1/topics/orders", serde_json::json!({})).await;
//! assert_eq!(status, 200, "{body}");
//! server.stop().await;
//! # }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use wharf_broker::{EmbeddedConfig, EmbeddedEngine};
use wharf_log::Clock;
use wharf_log::vfs::Vfs;
use wharf_server::{Config, ServerHandle};

pub use reqwest;

pub mod fake_grpc;
pub mod fake_http;

/// Installs the ring crypto provider for rustls once per process (the client and the server
/// are built without a default provider).
pub fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    });
}

/// Builds a [`TestServer`].
pub struct Builder {
    config: Config,
    vfs: Option<Arc<dyn Vfs>>,
    clock: Option<Arc<dyn Clock>>,
    data_dir: Option<PathBuf>,
    token: Option<String>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").finish_non_exhaustive()
    }
}

impl Builder {
    /// Changes the configuration (it starts as the default, listening on `127.0.0.1:0`).
    #[must_use]
    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Uses this file layer (e.g. `wharf_log::vfs::fault::FaultFs`).
    #[must_use]
    pub fn vfs(mut self, vfs: Arc<dyn Vfs>) -> Self {
        self.vfs = Some(vfs);
        self
    }

    /// Uses this clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Uses this data directory instead of a new temporary one (to restart over old data).
    #[must_use]
    pub fn data_dir(mut self, dir: PathBuf) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// Sends this bearer token with every helper request.
    #[must_use]
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Opens the engine and starts the server.
    pub async fn start(self) -> TestServer {
        install_crypto();
        let (tempdir, data_dir) = match self.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let p = t.path().join("data");
                (Some(t), p)
            }
        };
        let mut engine_config = EmbeddedConfig::new(&data_dir);
        if let Some(vfs) = self.vfs {
            engine_config.vfs = vfs;
        }
        if let Some(clock) = self.clock {
            engine_config.clock = clock;
        }
        let engine = tokio::task::spawn_blocking(move || EmbeddedEngine::open(engine_config))
            .await
            .expect("join")
            .expect("open engine");
        let mut config = self.config;
        if config.server.listen == Config::default().server.listen {
            config.server.listen = "127.0.0.1:0".into();
        }
        config.storage.data.clone_from(&data_dir);
        let tls = !config.tls.cert_file.is_empty();
        let handle = wharf_server::start(config, Arc::new(engine.clone()))
            .await
            .expect("server starts");
        let addr = handle.local_addr();
        let scheme = if tls { "https" } else { "http" };
        TestServer {
            addr,
            base: format!("{scheme}://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            engine,
            handle: Some(handle),
            _tempdir: tempdir,
            data_dir,
            token: self.token,
        }
    }
}

/// A running server with a client.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client (keep-alive, 120 s timeout).
    pub client: reqwest::Client,
    /// The engine behind it.
    pub engine: EmbeddedEngine,
    /// Its data directory.
    pub data_dir: PathBuf,
    handle: Option<ServerHandle>,
    _tempdir: Option<tempfile::TempDir>,
    token: Option<String>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// A builder.
    pub fn builder() -> Builder {
        Builder {
            config: Config::default(),
            vfs: None,
            clock: None,
            data_dir: None,
            token: None,
        }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with an optional JSON body and the harness token (if any); returns the
    /// status and the body as JSON (`Value::String` if it is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with_token(method, path, body, self.token.as_deref())
            .await
    }

    /// Like [`TestServer::call`] with an explicit token (`None` = no Authorization header).
    pub async fn call_with_token(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// `GET`.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// `PUT` with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// `POST` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `DELETE`.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Opens a Server-Sent Events stream (`GET path`, with `Last-Event-ID` if given).
    pub async fn events(&self, path: &str, last_event_id: Option<&str>) -> SseReader {
        let mut req = self
            .client
            .get(self.url(path))
            .timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), 200, "event stream refused");
        SseReader {
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// Begins shutdown and returns without waiting (for tests that race it).
    pub fn begin_shutdown(&self) {
        if let Some(h) = &self.handle {
            h.begin_shutdown();
        }
    }

    /// Shuts the server down gracefully and closes the engine; returns the data directory's
    /// temporary owner so a test can restart over the same data.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
        let engine = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.close()).await;
        self._tempdir.take()
    }
}

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty = `message`).
    pub event: String,
    /// `id:`.
    pub id: Option<String>,
    /// `data:` lines joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// The data parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Reads events from a Server-Sent Events response.
pub struct SseReader {
    stream: ByteStream,
    buf: String,
}

impl std::fmt::Debug for SseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseReader").finish_non_exhaustive()
    }
}

impl SseReader {
    /// The next event (comments skipped), or `None` if the stream ended or nothing came
    /// within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if data.is_empty() && ev.event.is_empty() && ev.id.is_none() {
                    continue; // a comment (keep-alive)
                }
                ev.data = data.join("\n");
                return Some(ev);
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next()).await;
            match chunk {
                Ok(Some(Ok(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next `n` events, panicking if they do not come within `timeout` in total.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(e) => out.push(e),
                None => panic!("only {} of {n} events arrived: {out:?}", out.len()),
            }
        }
        out
    }
}
