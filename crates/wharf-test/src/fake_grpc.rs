//! A fake gRPC app: `wharf.testing.v1.Echo` (one RPC of each kind) served by tonic on
//! 127.0.0.1:0, that can be told to answer `UNAVAILABLE` or to hang, and records what reached
//! it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};
use wharf_proto::testing::v1::echo_server::{Echo, EchoServer};
use wharf_proto::testing::v1::{EchoReply, EchoRequest};

/// How the app answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcMode {
    /// Echo.
    Ok,
    /// `UNAVAILABLE` (a trailers-only answer).
    Unavailable,
    /// No answer until the mode changes.
    Hang,
}

struct Inner {
    instance: String,
    mode: watch::Sender<GrpcMode>,
    hits: watch::Sender<u64>,
    metadata: Mutex<Vec<(String, String)>>,
}

/// The fake gRPC app; stops when dropped.
pub struct GrpcEchoApp {
    inner: Arc<Inner>,
    address: String,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for GrpcEchoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcEchoApp")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for GrpcEchoApp {
    fn drop(&mut self) {
        // Release hung calls too (tonic's graceful shutdown waits for them).
        self.inner.mode.send_replace(GrpcMode::Unavailable);
        let _ = self.stop.send(true);
    }
}

#[derive(Clone)]
struct Svc(Arc<Inner>);

impl Svc {
    /// Counts the call, records its metadata, and waits out `Hang`.
    async fn enter<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let md: Vec<(String, String)> = req
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )),
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        *self
            .0
            .metadata
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = md;
        self.0.hits.send_modify(|h| *h += 1);
        let mut rx = self.0.mode.subscribe();
        loop {
            let mode = *rx.borrow_and_update();
            match mode {
                GrpcMode::Ok => return Ok(()),
                GrpcMode::Unavailable => {
                    return Err(Status::unavailable(format!(
                        "{} unavailable",
                        self.0.instance
                    )));
                }
                GrpcMode::Hang => {
                    if rx.changed().await.is_err() {
                        return Err(Status::cancelled("app stopped"));
                    }
                }
            }
        }
    }

    fn reply(&self, payload: Vec<u8>, count: u32) -> EchoReply {
        EchoReply {
            payload,
            count,
            instance: self.0.instance.clone(),
        }
    }

    fn with_instance<T>(&self, body: T) -> Response<T> {
        let mut r = Response::new(body);
        if let Ok(v) = self.0.instance.parse() {
            r.metadata_mut().insert("x-instance", v);
        }
        r
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Svc {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.enter(&req).await?;
        let r = req.into_inner();
        let mut resp = self.with_instance(self.reply(r.payload, 1));
        resp.metadata_mut()
            .insert("x-echo", tonic::metadata::MetadataValue::from_static("1"));
        Ok(resp)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.enter(&req).await?;
        let r = req.into_inner();
        let me = self.clone();
        let replies: Vec<Result<EchoReply, Status>> = (1..=r.count)
            .map(|i| Ok(me.reply(r.payload.clone(), i)))
            .collect();
        Ok(self.with_instance(Box::pin(futures_util::stream::iter(replies)) as ReplyStream))
    }

    async fn client_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.enter(&req).await?;
        let mut stream = req.into_inner();
        let mut all = Vec::new();
        let mut n = 0;
        while let Some(m) = stream.next().await {
            all.extend_from_slice(&m?.payload);
            n += 1;
        }
        Ok(self.with_instance(self.reply(all, n)))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.enter(&req).await?;
        let me = self.clone();
        let mut n = 0;
        let out = req.into_inner().map(move |m| {
            n += 1;
            m.map(|m| me.reply(m.payload, n))
        });
        Ok(self.with_instance(Box::pin(out) as ReplyStream))
    }
}

impl GrpcEchoApp {
    /// Starts an app named `instance` on 127.0.0.1:0, answering `Ok`.
    pub async fn start(instance: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let inner = Arc::new(Inner {
            instance: instance.to_owned(),
            mode: watch::channel(GrpcMode::Ok).0,
            hits: watch::channel(0).0,
            metadata: Mutex::new(Vec::new()),
        });
        let (stop, mut stopped) = watch::channel(false);
        let svc = Svc(inner.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(EchoServer::new(svc))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.changed().await;
                })
                .await;
        });
        Self {
            inner,
            address: format!("http://{addr}"),
            stop,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// Changes how it answers (hung calls get the new mode's answer).
    pub fn set_mode(&self, mode: GrpcMode) {
        self.inner.mode.send_replace(mode);
    }

    /// Calls received so far.
    pub fn hits(&self) -> u64 {
        *self.inner.hits.borrow()
    }

    /// Waits until at least `n` calls arrived; false on timeout.
    pub async fn wait_for_hits(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.hits.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|h| *h >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The ASCII metadata of the last call.
    pub fn last_metadata(&self) -> Vec<(String, String)> {
        self.inner
            .metadata
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
