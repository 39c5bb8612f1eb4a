//! Sync vs async (`wharf bench compare`'s `chain` case): one request through a chain of three
//! services, once **by invocation** (the caller calls service 1 through Wharf's
//! `/v1/invoke`, service 1 calls service 2 the same way, service 2 calls service 3) and once
//! **by events** (the caller publishes to topic 1; Wharf pushes it to service 1, which
//! publishes to topic 2, pushed to service 2, which publishes to topic 3, pushed to service
//! 3). Three scenarios for the last service: healthy, slow (it answers after a delay), and
//! down (nothing listens at its address).
//!
//! What is measured: what the **caller** sees (the latency of its call or publish, from the
//! intended send time, and whether it succeeded) and when the **work is done** (service 3 has
//! the request: end-to-end latency, and how many requests got there within the run and a
//! grace period). The services are small HTTP servers in this process on loopback ports; the
//! caller sends at a fixed rate, each request on a task of its own (no coordinated
//! omission). Every call is bounded by the caller's deadline (`wharf-deadline`, which Wharf
//! forwards, shortened, to each hop) plus a margin.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use super::driver::{BenchError, Result};

type Http = Client<HttpConnector, Full<Bytes>>;

/// The header Wharf reads and forwards the remaining deadline in (milliseconds).
const DEADLINE_HEADER: &str = "wharf-deadline";
/// Services in the chain.
const HOPS: usize = 3;

/// What the last service does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// Answers at once.
    Healthy,
    /// Answers after [`Settings::slow`].
    Slow,
    /// Nothing listens at its address.
    Down,
}

impl Scenario {
    pub(crate) const ALL: [Self; 3] = [Self::Healthy, Self::Slow, Self::Down];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Slow => "slow",
            Self::Down => "down",
        }
    }
}

/// How the services talk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// Each calls the next through `/v1/invoke` and waits for its answer.
    Invoke,
    /// Each publishes to the next one's topic; Wharf pushes.
    Events,
}

impl Style {
    pub(crate) const ALL: [Self; 2] = [Self::Invoke, Self::Events];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Invoke => "invoke",
            Self::Events => "events",
        }
    }
}

/// The settings of one chain run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// Requests per second from the caller.
    pub(crate) rate: u64,
    /// How long the caller sends.
    pub(crate) duration: Duration,
    /// The slow service's delay.
    pub(crate) slow: Duration,
    /// The caller's deadline for a call (invoke) or a publish (events).
    pub(crate) deadline: Duration,
    /// How long after the last send the work may still arrive at service 3.
    pub(crate) grace: Duration,
}

/// What one chain run measured.
#[derive(Clone, Debug)]
pub(crate) struct ChainOutcome {
    /// Requests the caller sent.
    pub(crate) sent: u64,
    /// Calls (or publishes) that succeeded.
    pub(crate) caller_ok: u64,
    /// Failed calls by what the caller saw (`503 breaker_open`, `timeout`, ...).
    pub(crate) caller_errors: BTreeMap<String, u64>,
    /// Every call's latency as the caller saw it (successes and failures), ns, sorted.
    pub(crate) caller_latency: Vec<u64>,
    /// Requests that reached service 3 within the run and the grace period.
    pub(crate) done: u64,
    /// Their end-to-end latency (intended send → service 3 has it), ns, sorted.
    pub(crate) end_to_end: Vec<u64>,
}

/// One service of the chain.
struct Service {
    /// 1, 2 or 3.
    hop: usize,
    wharf: String,
    prefix: String,
    http: Http,
    slow: Option<Duration>,
    epoch: Instant,
    /// Service 3: latencies of the requests that arrived (each once).
    arrivals: Mutex<(HashSet<u64>, Vec<u64>)>,
}

fn app(prefix: &str, hop: usize) -> String {
    format!("{prefix}-svc{hop}")
}

fn topic(prefix: &str, hop: usize) -> String {
    format!("{prefix}-t{hop}")
}

/// `seq:intended_ns`.
fn stamp(seq: u64, intended_ns: u64) -> String {
    format!("{seq}:{intended_ns}")
}

fn read_stamp(body: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(body).ok()?;
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Service {
    /// Service 3 got the request in `body`.
    fn arrive(&self, body: &[u8]) {
        let now = nanos(self.epoch.elapsed());
        if let Some((seq, at)) = read_stamp(body)
            && let Ok(mut a) = self.arrivals.lock()
            && a.0.insert(seq)
        {
            a.1.push(now.saturating_sub(at));
        }
    }

    async fn last_hop(&self, body: &[u8]) -> StatusCode {
        if let Some(d) = self.slow {
            tokio::time::sleep(d).await;
        }
        self.arrive(body);
        StatusCode::OK
    }
}

/// `POST /call`: the invocation chain.
async fn on_call(
    State(s): State<Arc<Service>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Bytes) {
    if s.hop == HOPS {
        return (s.last_hop(&body).await, Bytes::new());
    }
    let uri = format!("{}/v1/invoke/{}/call", s.wharf, app(&s.prefix, s.hop + 1));
    let mut req = hyper::Request::post(uri);
    if let Some(v) = headers.get(DEADLINE_HEADER) {
        req = req.header(DEADLINE_HEADER, v);
    }
    let Ok(req) = req.body(Full::new(body)) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, Bytes::new());
    };
    // Wharf bounds the call by the forwarded deadline; this bounds it if Wharf does not.
    match tokio::time::timeout(Duration::from_secs(60), send(&s.http, req)).await {
        Ok(Ok((status, body))) => (status, body),
        Ok(Err(_)) => (StatusCode::BAD_GATEWAY, Bytes::new()),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, Bytes::new()),
    }
}

/// `POST /event`: the event chain (Wharf pushes here).
async fn on_event(State(s): State<Arc<Service>>, body: Bytes) -> StatusCode {
    if s.hop == HOPS {
        return s.last_hop(&body).await;
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let uri = format!(
        "{}/v1/topics/{}/messages",
        s.wharf,
        topic(&s.prefix, s.hop + 1)
    );
    match tokio::time::timeout(
        Duration::from_secs(30),
        post_json(&s.http, &uri, &json!({ "value": text })),
    )
    .await
    {
        // Acked by the next topic: this delivery is done.
        Ok(Ok((status, _))) if status.is_success() => StatusCode::OK,
        // Not stored: let Wharf deliver it again later.
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Sends `req` and reads the whole answer.
async fn send(
    http: &Http,
    req: hyper::Request<Full<Bytes>>,
) -> std::result::Result<(StatusCode, Bytes), String> {
    let resp = http.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

async fn post_json(
    http: &Http,
    uri: &str,
    body: &serde_json::Value,
) -> std::result::Result<(StatusCode, Bytes), String> {
    request_json(http, hyper::Method::POST, uri, body).await
}

async fn request_json(
    http: &Http,
    method: hyper::Method,
    uri: &str,
    body: &serde_json::Value,
) -> std::result::Result<(StatusCode, Bytes), String> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    send(http, req).await
}

/// A set-up call to Wharf that must succeed.
async fn must(
    http: &Http,
    method: hyper::Method,
    uri: &str,
    body: serde_json::Value,
) -> Result<()> {
    match tokio::time::timeout(
        Duration::from_secs(30),
        request_json(http, method.clone(), uri, &body),
    )
    .await
    {
        Ok(Ok((status, _))) if status.is_success() => Ok(()),
        Ok(Ok((status, b))) => Err(BenchError(format!(
            "{method} {uri}: {status} {}",
            String::from_utf8_lossy(&b)
        ))),
        Ok(Err(e)) => Err(BenchError(format!("{method} {uri}: {e}"))),
        Err(_) => Err(BenchError(format!("{method} {uri}: no answer within 30 s"))),
    }
}

/// What a failed call looks like to the caller: `503 breaker_open`, `timeout`, ...
fn error_kind(status: StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    match code {
        Some(c) => format!("{} {c}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

fn http_client() -> Http {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(c)
}

/// Runs one scenario in one style against the Wharf at `wharf` (`http://HOST:PORT`).
pub(crate) async fn run(
    wharf: &str,
    scenario: Scenario,
    style: Style,
    s: Settings,
) -> Result<ChainOutcome> {
    let prefix = format!(
        "chain-{}-{}-{:06x}",
        style.as_str(),
        scenario.as_str(),
        rand::random::<u32>() >> 8
    );
    let http = http_client();
    let epoch = Instant::now();
    // The three services; the last one's address holds nothing when it is down.
    let mut services = Vec::new();
    let mut servers = Vec::new();
    let mut addresses = Vec::new();
    for hop in 1..=HOPS {
        let svc = Arc::new(Service {
            hop,
            wharf: wharf.to_owned(),
            prefix: prefix.clone(),
            http: http.clone(),
            slow: (hop == HOPS && scenario == Scenario::Slow).then_some(s.slow),
            epoch,
            arrivals: Mutex::new((HashSet::new(), Vec::new())),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| BenchError(format!("cannot listen for service {hop}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| BenchError(format!("service {hop}: {e}")))?
            .port();
        if hop == HOPS && scenario == Scenario::Down {
            // Bound, then closed: a port nothing listens on.
            drop(listener);
        } else {
            let router = Router::new()
                .route("/call", post(on_call))
                .route("/event", post(on_event))
                .with_state(svc.clone());
            servers.push(tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            }));
        }
        addresses.push(format!("http://127.0.0.1:{port}"));
        services.push(svc);
    }
    let result = drive(wharf, &prefix, &http, &services, &addresses, style, s).await;
    // Clean up whatever happened: the topics (and their push subscriptions) and the apps.
    if style == Style::Events {
        for hop in 1..=HOPS {
            let uri = format!("{wharf}/v1/topics/{}", topic(&prefix, hop));
            let _ = must(&http, hyper::Method::DELETE, &uri, json!({})).await;
        }
    }
    for hop in 1..=HOPS {
        let uri = format!("{wharf}/v1/apps/{}/instances/a", app(&prefix, hop));
        let _ = must(&http, hyper::Method::DELETE, &uri, json!({})).await;
    }
    for s in servers {
        s.abort();
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    wharf: &str,
    prefix: &str,
    http: &Http,
    services: &[Arc<Service>],
    addresses: &[String],
    style: Style,
    s: Settings,
) -> Result<ChainOutcome> {
    for (i, address) in addresses.iter().enumerate() {
        let uri = format!("{wharf}/v1/apps/{}/instances/a", app(prefix, i + 1));
        must(
            http,
            hyper::Method::PUT,
            &uri,
            json!({ "address": address, "ttl_ms": 600_000 }),
        )
        .await?;
    }
    if style == Style::Events {
        for hop in 1..=HOPS {
            let t = topic(prefix, hop);
            must(
                http,
                hyper::Method::PUT,
                &format!("{wharf}/v1/topics/{t}"),
                json!({}),
            )
            .await?;
            must(
                http,
                hyper::Method::PUT,
                &format!("{wharf}/v1/topics/{t}/subscriptions/push"),
                json!({
                    "kind": "shared",
                    "max_deliveries": 100,
                    "backoff": { "initial_ms": 100, "max_ms": 1000 },
                    "push": {
                        "app": app(prefix, hop),
                        "route": "/event",
                        "max_in_flight": 64,
                        "timeout_ms": u64::try_from(s.deadline.as_millis()).unwrap_or(u64::MAX),
                    }
                }),
            )
            .await?;
        }
    }
    let total = (s.duration.as_secs_f64() * s.rate as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / s.rate.max(1) as f64);
    let deadline_ms = u64::try_from(s.deadline.as_millis()).unwrap_or(u64::MAX);
    let bound = s.deadline + Duration::from_secs(5);
    let epoch = services[0].epoch;
    let start = Instant::now() + Duration::from_millis(20);
    let mut calls = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for seq in 0..total {
        let intended = start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(intended.into()).await;
        let intended_ns = nanos(intended.duration_since(epoch));
        let body = stamp(seq, intended_ns);
        let req = match style {
            Style::Invoke => {
                hyper::Request::post(format!("{wharf}/v1/invoke/{}/call", app(prefix, 1)))
                    .header(DEADLINE_HEADER, deadline_ms)
                    .body(Full::new(Bytes::from(body)))
            }
            Style::Events => {
                hyper::Request::post(format!("{wharf}/v1/topics/{}/messages", topic(prefix, 1)))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(json!({ "value": body }).to_string())))
            }
        }
        .map_err(|e| BenchError(format!("a request: {e}")))?;
        let http = http.clone();
        calls.push(tokio::spawn(async move {
            let r = tokio::time::timeout(bound, send(&http, req)).await;
            let latency = nanos(intended.elapsed());
            let outcome = match r {
                Ok(Ok((status, _))) if status.is_success() => None,
                Ok(Ok((status, body))) => Some(error_kind(status, &body)),
                Ok(Err(_)) => Some("connection error".to_owned()),
                Err(_) => Some("timeout".to_owned()),
            };
            (latency, outcome)
        }));
    }
    let sent_end = Instant::now();
    let mut caller_latency = Vec::with_capacity(calls.len());
    let mut caller_errors = BTreeMap::new();
    let mut caller_ok = 0u64;
    for c in calls {
        let (latency, outcome) = c
            .await
            .map_err(|e| BenchError(format!("a caller task failed: {e}")))?;
        caller_latency.push(latency);
        match outcome {
            None => caller_ok += 1,
            Some(kind) => *caller_errors.entry(kind).or_insert(0) += 1,
        }
    }
    caller_latency.sort_unstable();
    // Let the work arrive: until every acknowledged request has reached service 3, or the
    // grace period is over (polling a counter the services fill; nothing else to wait on).
    // When service 3 is down, the events wait in Wharf (retried with backoff) and arrive
    // once it is back; within this run they count as not done.
    let last = &services[HOPS - 1];
    let grace_end = sent_end + s.grace;
    loop {
        let arrived = last.arrivals.lock().map(|a| a.1.len() as u64).unwrap_or(0);
        if arrived >= caller_ok || Instant::now() >= grace_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut end_to_end = last
        .arrivals
        .lock()
        .map(|a| a.1.clone())
        .unwrap_or_default();
    end_to_end.sort_unstable();
    Ok(ChainOutcome {
        sent: total,
        caller_ok,
        caller_errors,
        caller_latency,
        done: end_to_end.len() as u64,
        end_to_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        assert_eq!(read_stamp(stamp(7, 123).as_bytes()), Some((7, 123)));
        assert_eq!(read_stamp(b"x"), None);
        assert_eq!(read_stamp(b"1:"), None);
        assert_eq!(
            error_kind(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"code":"breaker_open","message":"m"}"#
            ),
            "503 breaker_open"
        );
        assert_eq!(error_kind(StatusCode::BAD_GATEWAY, b""), "502");
    }
}
