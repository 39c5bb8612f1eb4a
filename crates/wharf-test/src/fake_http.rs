//! A fake HTTP app for invocation and push tests: a hyper server on 127.0.0.1:0 (HTTP/1.1 and
//! h2c on the same port) that can be told to answer, fail, hang, slow down or drop the
//! connection, and that records what reached it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the app answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200, the request body echoed, `x-instance: <instance>`.
    Ok,
    /// This status, body `"<instance> says <status>"`.
    Status(u16),
    /// No answer until the mode changes (then the new mode's answer) or the app is dropped.
    Hang,
    /// Wait this long, then answer like `Ok` (the app's behaviour, not synchronisation).
    Delay(Duration),
    /// The first `n` requests after this mode is set get `status`; later ones `Ok`.
    FailFirst {
        /// How many fail.
        n: u64,
        /// With this status.
        status: u16,
    },
    /// Drop the connection without an answer.
    Close,
}

/// A request as the app saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The method.
    pub method: String,
    /// Path and query.
    pub path_and_query: String,
    /// Headers (names lowercase), in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The status the app answered (0 until it answers, and for a dropped connection).
    pub status: u16,
    /// Arrival number, from 1.
    pub seq: u64,
}

impl Recorded {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Inner {
    instance: String,
    mode: watch::Sender<(Mode, u64)>,
    hits: watch::Sender<u64>,
    in_flight: AtomicU64,
    fail_left: AtomicU64,
    requests: Mutex<Vec<Recorded>>,
}

/// The fake app; stops when dropped.
pub struct HttpApp {
    inner: Arc<Inner>,
    address: String,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for HttpApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApp")
            .field("instance", &self.inner.instance)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl HttpApp {
    /// Starts an app named `instance` on 127.0.0.1:0, answering `Ok`.
    pub async fn start(instance: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let inner = Arc::new(Inner {
            instance: instance.to_owned(),
            mode: watch::channel((Mode::Ok, 0)).0,
            hits: watch::channel(0).0,
            in_flight: AtomicU64::new(0),
            fail_left: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let (stop, mut stopped) = watch::channel(false);
        let app = inner.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.changed() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(app.clone(), req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
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

    /// Changes how it answers (hung requests get the new mode's answer).
    pub fn set_mode(&self, mode: Mode) {
        if let Mode::FailFirst { n, .. } = mode {
            self.inner.fail_left.store(n, Ordering::SeqCst);
        }
        self.inner.mode.send_modify(|(m, generation)| {
            *m = mode;
            *generation += 1;
        });
    }

    /// Requests received so far (counted on arrival).
    pub fn hits(&self) -> u64 {
        *self.inner.hits.borrow()
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// The requests received (the last 1000), in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `n` requests arrived; false on timeout.
    pub async fn wait_for_hits(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.hits.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|h| *h >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn handle(
    app: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut seq = 0;
    app.hits.send_modify(|h| {
        *h += 1;
        seq = *h;
    });
    app.in_flight.fetch_add(1, Ordering::SeqCst);
    {
        let mut r = app
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.len() >= 1000 {
            r.remove(0);
        }
        r.push(Recorded {
            method: parts.method.to_string(),
            path_and_query: path_and_query.clone(),
            headers,
            body: Bytes::new(),
            at,
            status: 0,
            seq,
        });
    }
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut rx = app.mode.subscribe();
    let answer = loop {
        let (mode, _) = rx.borrow_and_update().clone();
        match mode {
            Mode::Hang => {
                if rx.changed().await.is_err() {
                    break None;
                }
            }
            Mode::Close => break None,
            Mode::Delay(d) => {
                tokio::time::sleep(d).await;
                break Some(200);
            }
            Mode::Ok => break Some(200),
            Mode::Status(s) => break Some(s),
            Mode::FailFirst { status, .. } => {
                let failed = app
                    .fail_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                break Some(if failed { status } else { 200 });
            }
        }
    };
    app.in_flight.fetch_sub(1, Ordering::SeqCst);
    let status = answer.unwrap_or(0);
    {
        let mut r = app
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rec) = r.iter_mut().rev().find(|q| q.seq == seq) {
            rec.body = body.clone();
            rec.status = status;
        }
    }
    let Some(status) = answer else {
        return Err(std::io::Error::other("told to drop the connection"));
    };
    let body = if status == 200 {
        body
    } else {
        Bytes::from(format!("{} says {status}", app.instance))
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    let h = resp.headers_mut();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&app.instance) {
        h.insert("x-instance", v);
    }
    if let Ok(v) = hyper::header::HeaderValue::from_str(&path_and_query) {
        h.insert("x-seen-path", v);
    }
    Ok(resp)
}
