//! The invocation stack as tower layers, outermost first (DESIGN.md §4):
//! [`DeadlineLayer`] → [`AdmissionLayer`] → retry (`tower::retry` with [`RetryDecider`] and a
//! `TpsBudget`) → [`BalanceLayer`] → [`TryTimeoutLayer`] → the transport.
//!
//! Every service is always ready (`poll_ready` is `Ready`): limits refuse in `call` at once
//! instead of queueing, so a caller is never parked behind a slow app.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service};

use crate::body::{Body, Guarded, ReqBody};
use crate::endpoints::{self, Endpoint, Outcome, Pick};
use crate::error::InvokeError;
use crate::policy::Policy;

/// A boxed future of the stack.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Req = http::Request<ReqBody>;
type Resp = http::Response<Body>;

/// Facts about a call every layer may need (a request extension).
#[derive(Clone, Debug)]
pub(crate) struct CallInfo {
    pub(crate) app: String,
    /// When the call must be done.
    pub(crate) deadline: Instant,
    /// How long it had when it arrived.
    pub(crate) budget: Duration,
    /// Safe to repeat (idempotent method, or marked so).
    pub(crate) idempotent: bool,
    /// A gRPC call (HTTP/2, `grpc-status`).
    pub(crate) grpc: bool,
    /// Read the body whole (up to 64 KiB) once admitted, so that it can be sent again.
    pub(crate) buffer: bool,
    /// The app's policy when the call arrived (so the layers need not lock to read it).
    pub(crate) policy: Arc<Policy>,
}

/// The endpoint the balancer chose (a request extension for the layers below it).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) instance: String,
    pub(crate) address: http::Uri,
    pub(crate) http2: bool,
}

/// One app's runtime state, shared by every clone of its stack.
pub(crate) struct AppRuntime {
    pub(crate) name: String,
    pub(crate) state: Mutex<AppState>,
}

/// What can change while the app runs.
pub(crate) struct AppState {
    pub(crate) policy: Arc<Policy>,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) grpc_services: Vec<String>,
    pub(crate) concurrency: Arc<Semaphore>,
    pub(crate) budget: Arc<TpsBudget>,
    pub(crate) bucket: TokenBucket,
}

impl AppRuntime {
    pub(crate) fn lock(&self) -> MutexGuard<'_, AppState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl AppState {
    pub(crate) fn new(policy: Policy, grpc_services: Vec<String>) -> Self {
        let mut s = Self {
            policy: Arc::new(Policy::default()),
            endpoints: Vec::new(),
            grpc_services,
            concurrency: Arc::new(Semaphore::new(1)),
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            bucket: TokenBucket::new(0, Instant::now()),
        };
        s.set_policy(policy);
        s
    }

    /// Applies a (validated) policy: new limits, budget and bucket; endpoint health is kept.
    pub(crate) fn set_policy(&mut self, policy: Policy) {
        self.concurrency = Arc::new(Semaphore::new(policy.max_concurrency));
        self.budget = Arc::new(TpsBudget::new(
            Duration::from_secs(10),
            policy.retry.budget_min_per_second,
            policy.retry.budget_ratio,
        ));
        self.bucket = TokenBucket::new(policy.rate_limit_per_second, Instant::now());
        self.policy = Arc::new(policy);
    }
}

/// A token bucket refilled continuously at `rate`/s, holding at most `rate` tokens.
pub(crate) struct TokenBucket {
    rate: u32,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate),
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let rate = f64::from(self.rate);
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn info(req: &Req) -> Result<&CallInfo, InvokeError> {
    req.extensions()
        .get::<CallInfo>()
        .ok_or_else(|| InvokeError::invalid("request", "missing call information"))
}

// ---- 1. deadline -------------------------------------------------------------------------

/// Refuses a call whose deadline has passed (nothing is sent) and bounds the rest of the stack
/// by the deadline (until the response headers).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> Service<Req> for Deadline<S>
where
    S: Service<Req, Response = Resp, Error = InvokeError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = InvokeError;
    type Future = BoxFuture<Result<Resp, InvokeError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), InvokeError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let (deadline, time) = {
                let info = info(&req)?;
                (info.deadline, info.budget)
            };
            if Instant::now() >= deadline {
                return Err(InvokeError::DeadlineExpired {
                    app: info(&req)?.app.clone(),
                });
            }
            let app = info(&req)?.app.clone();
            match tokio::time::timeout_at(deadline, inner.call(req)).await {
                Ok(r) => r,
                Err(_) => Err(InvokeError::DeadlineExceeded { app, after: time }),
            }
        })
    }
}

// ---- 2. admission ------------------------------------------------------------------------

/// Rate limit and concurrency limit, both refusing at once (429 / RESOURCE_EXHAUSTED). The
/// concurrency permit is held until the response body ends, so long streams count.
#[derive(Clone)]
pub struct AdmissionLayer {
    app: Arc<AppRuntime>,
}

impl AdmissionLayer {
    pub(crate) fn new(app: Arc<AppRuntime>) -> Self {
        Self { app }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            app: self.app.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    app: Arc<AppRuntime>,
}

impl<S> Service<Req> for Admission<S>
where
    S: Service<Req, Response = Resp, Error = InvokeError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = InvokeError;
    type Future = BoxFuture<Result<Resp, InvokeError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), InvokeError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let admitted: Result<OwnedSemaphorePermit, InvokeError> = {
            let mut st = self.app.lock();
            let limit = st.policy.max_concurrency;
            let rate = st.policy.rate_limit_per_second;
            match st.concurrency.clone().try_acquire_owned() {
                Err(_) => Err(InvokeError::ConcurrencyLimited {
                    app: self.app.name.clone(),
                    limit,
                }),
                Ok(permit) => {
                    if st.bucket.take(Instant::now()) {
                        Ok(permit)
                    } else {
                        Err(InvokeError::RateLimited {
                            app: self.app.name.clone(),
                            per_second: rate,
                        })
                    }
                }
            }
        };
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let permit = admitted?;
            // Only an admitted call holds a buffered body (memory stays bounded by the limit).
            let buffer = req.extensions().get::<CallInfo>().is_some_and(|i| i.buffer);
            let req = match (buffer, req.into_parts()) {
                (true, (parts, ReqBody::Stream(body))) => {
                    http::Request::from_parts(parts, ReqBody::buffer(body).await?)
                }
                (_, (parts, body)) => http::Request::from_parts(parts, body),
            };
            let resp = inner.call(req).await?;
            let (parts, body) = resp.into_parts();
            Ok(http::Response::from_parts(
                parts,
                Guarded::wrap(body, permit),
            ))
        })
    }
}

// ---- 3. retry ----------------------------------------------------------------------------

/// The retry decision for `tower::retry::Retry`: only safe cases (a connect error — nothing
/// was sent —, or for idempotent calls a 503 / gRPC `UNAVAILABLE`, a per-try timeout or a
/// broken connection), at most `max_attempts`, each retry paid from the app's budget, with
/// exponential backoff and jitter, and never past the deadline. Only whole (buffered) bodies
/// can be sent again.
#[derive(Clone)]
pub struct RetryDecider {
    app: Arc<AppRuntime>,
    attempts: u32,
}

impl RetryDecider {
    pub(crate) fn new(app: Arc<AppRuntime>) -> Self {
        Self { app, attempts: 1 }
    }
}

/// Whether a response says "not processed, try elsewhere": 503, or gRPC UNAVAILABLE (14) in a
/// trailers-only response.
pub(crate) fn is_unavailable(resp: &Resp) -> bool {
    resp.status() == http::StatusCode::SERVICE_UNAVAILABLE
        || resp
            .headers()
            .get("grpc-status")
            .is_some_and(|v| v.as_bytes() == b"14")
}

impl tower::retry::Policy<Req, Resp, InvokeError> for RetryDecider {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Req,
        result: &mut Result<Resp, InvokeError>,
    ) -> Option<Self::Future> {
        let info = req.extensions().get::<CallInfo>()?;
        let safe = match result {
            Ok(resp) => info.idempotent && is_unavailable(resp),
            Err(InvokeError::Connect { .. }) => true,
            Err(InvokeError::TryTimeout { .. } | InvokeError::Upstream { .. }) => info.idempotent,
            Err(_) => false,
        };
        if !safe {
            return None;
        }
        let policy = info.policy.clone();
        let budget = self.app.lock().budget.clone();
        if self.attempts >= policy.retry.max_attempts {
            return None;
        }
        let backoff = policy.retry.backoff(self.attempts);
        let jitter = policy.retry.jitter;
        let backoff = if jitter > 0.0 {
            backoff.mul_f64(1.0 - jitter * rand::random::<f64>())
        } else {
            backoff
        };
        let at = Instant::now() + backoff;
        if at >= info.deadline || !budget.withdraw() {
            return None;
        }
        self.attempts += 1;
        // Later layers add the target again.
        req.extensions_mut().remove::<Target>();
        Some(tokio::time::sleep_until(at))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        let ReqBody::Full(body) = req.body() else {
            return None;
        };
        let mut out = http::Request::new(ReqBody::Full(body.clone()));
        *out.method_mut() = req.method().clone();
        *out.uri_mut() = req.uri().clone();
        *out.version_mut() = req.version();
        *out.headers_mut() = req.headers().clone();
        if let Some(info) = req.extensions().get::<CallInfo>() {
            out.extensions_mut().insert(info.clone());
        }
        Some(out)
    }
}

// ---- 4. balancer -------------------------------------------------------------------------

/// Power of two choices on peak-EWMA latency × load, per-endpoint failure accrual with
/// ejection and half-open probing by real traffic, and the app-level breaker: when every
/// endpoint is ejected the call fails fast (`breaker_open`) without an upstream attempt.
#[derive(Clone)]
pub struct BalanceLayer {
    app: Arc<AppRuntime>,
}

impl BalanceLayer {
    pub(crate) fn new(app: Arc<AppRuntime>) -> Self {
        Self { app }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            app: self.app.clone(),
        }
    }
}

/// See [`BalanceLayer`].
#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
    app: Arc<AppRuntime>,
}

/// Whether an attempt's result counts against the endpoint.
fn outcome(result: &Result<Resp, InvokeError>) -> Outcome {
    match result {
        Ok(resp) if resp.status().is_server_error() || is_unavailable(resp) => Outcome::Failure,
        Ok(resp)
            if resp
                .headers()
                .get("grpc-status")
                .is_some_and(|v| matches!(v.as_bytes(), b"2" | b"4" | b"13")) =>
        {
            Outcome::Failure
        }
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

impl<S> Service<Req> for Balance<S>
where
    S: Service<Req, Response = Resp, Error = InvokeError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = InvokeError;
    type Future = BoxFuture<Result<Resp, InvokeError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), InvokeError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let app = self.app.clone();
        let now = Instant::now();
        let chosen = {
            let mut st = app.lock();
            endpoints::expire(&mut st.endpoints, now);
            let (r1, r2) = (
                rand::random::<u32>() as usize,
                rand::random::<u32>() as usize,
            );
            match endpoints::pick(&st.endpoints, now, r1, r2) {
                Pick::NoInstances => Err(InvokeError::NoInstances(app.name.clone())),
                Pick::AllEjected {
                    endpoints,
                    retry_in,
                } => Err(InvokeError::BreakerOpen {
                    app: app.name.clone(),
                    endpoints,
                    retry_in,
                }),
                Pick::Endpoint { index, probe } => match st.endpoints.get_mut(index) {
                    Some(e) => {
                        let epoch = endpoints::start(&mut e.health, probe);
                        Ok((
                            Target {
                                instance: e.id.clone(),
                                address: e.address.clone(),
                                http2: e.http2,
                            },
                            probe,
                            epoch,
                        ))
                    }
                    None => Err(InvokeError::NoInstances(app.name.clone())),
                },
            }
        };
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let (target, probe, epoch) = chosen?;
            let instance = target.instance.clone();
            req.extensions_mut().insert(target);
            // Finished even if this future is dropped (the caller's deadline passed or the
            // caller went away): then it says nothing about the instance.
            let mut guard = Attempt {
                app: app.clone(),
                instance,
                probe,
                epoch,
                started: Instant::now(),
                outcome: Outcome::Cancelled,
            };
            let result = inner.call(req).await;
            guard.outcome = outcome(&result);
            result
        })
    }
}

/// Records an attempt's end on drop.
struct Attempt {
    app: Arc<AppRuntime>,
    instance: String,
    probe: bool,
    epoch: u64,
    started: Instant,
    outcome: Outcome,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut st = self.app.lock();
        let policy = st.policy.clone();
        if let Some(e) = st.endpoints.iter_mut().find(|e| e.id == self.instance) {
            endpoints::finish(
                &mut e.health,
                now,
                now.saturating_duration_since(self.started),
                self.outcome,
                self.probe,
                self.epoch,
                &policy.breaker,
            );
        }
    }
}

// ---- 5. per-try timeout ------------------------------------------------------------------

/// Bounds one attempt (until its response headers) by the app's per-try timeout.
#[derive(Clone)]
pub struct TryTimeoutLayer {
    app: Arc<AppRuntime>,
}

impl TryTimeoutLayer {
    pub(crate) fn new(app: Arc<AppRuntime>) -> Self {
        Self { app }
    }
}

impl<S> Layer<S> for TryTimeoutLayer {
    type Service = TryTimeout<S>;
    fn layer(&self, inner: S) -> TryTimeout<S> {
        TryTimeout {
            inner,
            app: self.app.clone(),
        }
    }
}

/// See [`TryTimeoutLayer`].
#[derive(Clone)]
pub struct TryTimeout<S> {
    inner: S,
    app: Arc<AppRuntime>,
}

impl<S> Service<Req> for TryTimeout<S>
where
    S: Service<Req, Response = Resp, Error = InvokeError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = InvokeError;
    type Future = BoxFuture<Result<Resp, InvokeError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), InvokeError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let after = req.extensions().get::<CallInfo>().map_or_else(
            || self.app.lock().policy.per_try_timeout(),
            |i| i.policy.per_try_timeout(),
        );
        let instance = req
            .extensions()
            .get::<Target>()
            .map(|t| t.instance.clone())
            .unwrap_or_default();
        let app = self.app.name.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(after, fut).await {
                Ok(r) => r,
                Err(_) => Err(InvokeError::TryTimeout {
                    app,
                    instance,
                    after,
                }),
            }
        })
    }
}
