//! The listener: accepts connections (TCP or TLS), caps how many are open, serves HTTP/1.1
//! and HTTP/2 on each, applies retention on a timer, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use wharf_broker::Engine;

use crate::auth::Tokens;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::routes;
use crate::state::AppState;

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS files could not be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address it listens on (with the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Begins shutdown without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts down gracefully: stops accepting, ends event streams and long-polls, lets
    /// in-flight requests finish (up to `server.shutdown_grace_ms`), and returns when every
    /// connection is closed. The caller then closes the engine.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Waits until the server stops (after [`ServerHandle::begin_shutdown`] from elsewhere).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Binds the configured address and starts serving `engine`.
pub async fn start(config: Config, engine: Arc<dyn Engine>) -> Result<ServerHandle, ServeError> {
    config.validate()?;
    let addr = config.listen_addr()?;
    let tls = tls_acceptor(&config)?;
    let tokens =
        Tokens::new(&config.auth.tokens).map_err(|m| crate::config::ConfigError::Invalid {
            key: "auth.tokens".into(),
            message: m,
        })?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let shutdown = CancellationToken::new();
    let invoker = wharf_invoke::Invoker::new();
    for (name, app) in &config.apps {
        invoker
            .put_app(name, app.clone())
            .map_err(|e| crate::config::ConfigError::Invalid {
                key: format!("apps.{name}"),
                message: e.to_string(),
            })?;
    }
    let state = AppState {
        engine,
        config: Arc::new(config),
        tokens: Arc::new(tokens),
        metrics: Arc::new(Metrics::new()),
        shutdown: shutdown.clone(),
        invoker,
        push: Arc::new(crate::push::PushWorkers::default()),
    };
    let task = tokio::spawn(run(listener, tls, state));
    Ok(ServerHandle {
        local_addr,
        shutdown,
        task,
    })
}

fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if config.tls.cert_file.is_empty() {
        return Ok(None);
    }
    let certs = CertificateDer::pem_file_iter(&config.tls.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServeError::Tls(format!("tls.cert_file {}: {e}", config.tls.cert_file)))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "tls.cert_file {}: no certificate in it",
            config.tls.cert_file
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&config.tls.key_file)
        .map_err(|e| ServeError::Tls(format!("tls.key_file {}: {e}", config.tls.key_file)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(format!("certificate and key do not fit: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Largest HTTP/2 frame this server accepts (SETTINGS_MAX_FRAME_SIZE). h2 reserves a
/// frame's announced length as soon as its 9-byte header arrives (for every frame type), so
/// this is also what a client that stalls mid-frame makes a connection hold: 64 KiB, four
/// times the default, not more.
const HTTP2_MAX_FRAME: u32 = 64 << 10;
/// HTTP/2 receive window of a whole connection: sixteen 100 KiB publishes in flight fit.
const HTTP2_CONN_WINDOW: u32 = 2 << 20;

async fn run(listener: TcpListener, tls: Option<TlsAcceptor>, state: AppState) {
    let limits = state.config.limits.clone();
    let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
    let shutdown = state.shutdown.clone();
    let retention = tokio::spawn(retention_loop(state.clone()));
    tokio::spawn(crate::push::PushWorkers::run(state.clone()));
    let app = routes::router(state);
    let service = TowerToHyperService::new(app);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .keep_alive(true);
    // Pings find dead HTTP/2 peers (a half-open connection would otherwise hold its slot).
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        // Large messages and batches move in few frames: with 16 KiB frames (the default)
        // a 160 KiB publish is ten DATA frames, each read, parsed and copied on its own.
        .max_frame_size(HTTP2_MAX_FRAME)
        // Publishes in flight on one connection should not wait for window updates
        // (hyper's default is 1 MiB for the whole connection).
        .initial_connection_window_size(HTTP2_CONN_WINDOW);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let handshake_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, tls.is_none()));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, service, tls) = (builder.clone(), service.clone(), tls.clone());
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let io = OpeningDeadline::new(stream, handshake_timeout);
                    serve_io(builder, service, watcher, io).await;
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let io = OpeningDeadline::new(stream, handshake_timeout);
                    serve_io(builder, service, watcher, io).await;
                }
            }
        });
    }
    drop(listener);
    retention.abort();
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "shutdown grace period over: closing the remaining connections"
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_io<I>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: TowerToHyperService<axum::Router>,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    let _ = watcher.watch(conn).await;
}

/// The bytes hyper reads to tell HTTP/1.1 from HTTP/2 (the length of the HTTP/2 preface).
const OPENING_BYTES: usize = 24;

/// A connection must send its opening bytes within the header read timeout: hyper's own
/// timers start only once it has read enough to tell HTTP/1.1 from HTTP/2, so without this a
/// client that connects and sends nothing (or a trickle of the HTTP/2 preface) would hold a
/// connection slot forever. Disarmed once [`OPENING_BYTES`] have arrived.
struct OpeningDeadline<I> {
    inner: I,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    read: usize,
}

impl<I> OpeningDeadline<I> {
    fn new(inner: I, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            read: 0,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for OpeningDeadline<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read += buf.filled().len() - before;
                if this.read >= OPENING_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within limits.header_read_timeout_ms",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for OpeningDeadline<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Answers a connection over the limit with `503 too_many_connections` (plain HTTP only; a
/// TLS connection is just closed) and closes it.
async fn refuse(mut stream: TcpStream, plain: bool) {
    if plain {
        let body = r#"{"code":"too_many_connections","message":"the server has limits.max_connections open connections; retry"}"#;
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

/// Housekeeping: expired app instances every second, metrics upkeep every 5 s, retention
/// every `storage.retention_check_ms`.
async fn retention_loop(state: AppState) {
    let metrics = state.metrics.clone();
    let shutdown = state.shutdown.clone();
    let invoker = state.invoker.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Instances that stopped heart-beating leave the registry within a second.
                    let gone = invoker.expire();
                    if gone > 0 {
                        tracing::info!(instances = gone, "app instances expired (no heartbeat)");
                    }
                    n += 1;
                    if n.is_multiple_of(5) {
                        metrics.upkeep();
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    });
    let every = Duration::from_millis(state.config.storage.retention_check_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        match state.engine.apply_retention().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(segments = n, "retention deleted old segments"),
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}
