//! Service invocation for Wharf: calls to apps (HTTP and gRPC) that survive slow or failing
//! neighbours.
//!
//! - [`Invoker`]: the app registry (apps from config, instances registered with a TTL renewed
//!   by heartbeat) and [`Invoker::call`], which sends a request through the app's stack.
//! - The stack ([`stack`]), tower layers outermost first (DESIGN.md §4): the propagated
//!   deadline; admission (rate limit, concurrency limit: refused at once); retry (safe cases
//!   only, per-call cap and a retry budget, exponential backoff with jitter); the balancer
//!   (power of two choices on peak-EWMA latency, failure accrual with ejection and half-open
//!   probing, and an app-level breaker when every endpoint is out); the per-try timeout; the
//!   transport (pooled hyper clients, HTTP/1.1 and HTTP/2).
//! - [`Policy`]: the knobs per app, all bounded, with safe defaults.
//! - [`InvokeError`]: what went wrong and in which [`Layer`], with a stable code.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod body;
pub mod deadline;
mod endpoints;
mod error;
mod policy;
pub mod stack;
mod transport;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::retry::RetryLayer;
use tower::retry::budget::Budget;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

pub use body::{Body, RETRY_BUFFER_BYTES, ReqBody};
pub use error::{BoxError, InvokeError, Layer};
pub use policy::{BreakerPolicy, Policy, RetryPolicy};

use crate::endpoints::{Endpoint, Health};
use crate::stack::{
    AdmissionLayer, AppRuntime, AppState, BalanceLayer, CallInfo, DeadlineLayer, RetryDecider,
    TryTimeoutLayer,
};
use crate::transport::Transport;

/// The header a caller sets to mark one call safe to repeat.
pub const IDEMPOTENT_HEADER: &str = "wharf-idempotent";

type AppService = BoxCloneSyncService<http::Request<ReqBody>, http::Response<Body>, InvokeError>;

/// An app as configured (wharf.toml, `PUT /v1/apps/{app}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// How calls to it are made.
    pub policy: Policy,
    /// gRPC services it serves (`shop.Orders`): calls to them are routed to this app.
    pub grpc_services: Vec<String>,
    /// Instances that never expire (from config).
    pub instances: Vec<InstanceConfig>,
}

impl AppConfig {
    /// Checks the app's name, policy and static instances; the error names the key.
    pub fn validate(&self, name: &str) -> Result<(), InvokeError> {
        validate_name("app", name)?;
        self.policy.validate()?;
        for s in &self.grpc_services {
            validate_name("grpc_services", s)?;
        }
        for i in &self.instances {
            validate_name("instance id", &i.id)?;
            parse_address(&i.address)?;
        }
        Ok(())
    }
}

/// A static instance of an app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Its id, unique within the app.
    pub id: String,
    /// `http://host:port`.
    pub address: String,
    /// Speak HTTP/2 (h2c) to it for plain HTTP calls too (gRPC always uses HTTP/2).
    #[serde(default)]
    pub http2: bool,
}

/// An instance registration (`PUT /v1/apps/{app}/instances/{id}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// `http://host:port`.
    pub address: String,
    /// Dropped unless renewed within this time; `None` for never.
    pub ttl: Option<Duration>,
    /// Speak HTTP/2 (h2c) to it for plain HTTP calls too.
    pub http2: bool,
}

/// An app as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppStatus {
    /// Its name.
    pub name: String,
    /// Its policy.
    pub policy: Policy,
    /// gRPC services routed to it.
    pub grpc_services: Vec<String>,
    /// `closed` (calls flow), `open` (every instance ejected: failing fast), or `empty`
    /// (no live instance).
    pub breaker: &'static str,
    /// Its live instances.
    pub instances: Vec<InstanceStatus>,
}

/// An instance as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceStatus {
    /// Its id.
    pub id: String,
    /// Its address.
    pub address: String,
    /// HTTP/2 for plain HTTP calls.
    pub http2: bool,
    /// Milliseconds until it expires unless renewed (`None`: static).
    pub expires_in_ms: Option<u64>,
    /// `healthy`, `ejected` (after failures; `ejected_for_ms` says how long) or `probing`.
    pub state: &'static str,
    /// Milliseconds the ejection still lasts.
    pub ejected_for_ms: Option<u64>,
    /// Peak-EWMA latency estimate, in milliseconds.
    pub latency_ewma_ms: f64,
    /// Attempts in flight.
    pub in_flight: u32,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Attempts sent to it.
    pub attempts: u64,
    /// Attempts that failed.
    pub failures: u64,
}

struct App {
    runtime: Arc<AppRuntime>,
    service: AppService,
}

/// The app registry and the way to call its apps. Cheap to clone.
#[derive(Clone)]
pub struct Invoker {
    inner: Arc<Inner>,
}

struct Inner {
    apps: Mutex<BTreeMap<String, App>>,
    transport: Transport,
}

impl Default for Invoker {
    fn default() -> Self {
        Self::new()
    }
}

impl Invoker {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                apps: Mutex::new(BTreeMap::new()),
                transport: Transport::new(),
            }),
        }
    }

    fn apps(&self) -> MutexGuard<'_, BTreeMap<String, App>> {
        self.inner
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn build(&self, runtime: &Arc<AppRuntime>) -> AppService {
        let svc = ServiceBuilder::new()
            .layer(DeadlineLayer)
            .layer(AdmissionLayer::new(runtime.clone()))
            .layer(RetryLayer::new(RetryDecider::new(runtime.clone())))
            .layer(BalanceLayer::new(runtime.clone()))
            .layer(TryTimeoutLayer::new(runtime.clone()))
            .service(self.inner.transport.clone());
        BoxCloneSyncService::new(svc)
    }

    /// Creates an app or replaces its settings (its registered instances and their health
    /// are kept; static instances are replaced by the config's).
    pub fn put_app(&self, name: &str, config: AppConfig) -> Result<AppStatus, InvokeError> {
        config.validate(name)?;
        let mut statics = Vec::new();
        for i in &config.instances {
            validate_name("instance id", &i.id)?;
            statics.push((i.id.clone(), parse_address(&i.address)?, i.http2));
        }
        let now = Instant::now();
        let mut apps = self.apps();
        let app = self.app_entry(&mut apps, name);
        {
            let mut st = app.runtime.lock();
            st.set_policy(config.policy);
            st.grpc_services = config.grpc_services;
            // Config instances are replaced; registered ones (and their health) stay.
            st.endpoints.retain(|e| e.registered);
            for (id, address, http2) in statics {
                st.endpoints.retain(|e| e.id != id);
                st.endpoints.push(Endpoint {
                    id,
                    address,
                    http2,
                    expires_at: None,
                    registered: false,
                    health: Health::new(now),
                });
            }
        }
        Ok(status(&app.runtime, now))
    }

    fn app_entry<'a>(&self, apps: &'a mut BTreeMap<String, App>, name: &str) -> &'a App {
        apps.entry(name.to_owned()).or_insert_with(|| {
            let runtime = Arc::new(AppRuntime {
                name: name.to_owned(),
                state: Mutex::new(AppState::new(Policy::default(), Vec::new())),
            });
            let service = self.build(&runtime);
            App { runtime, service }
        })
    }

    /// Deletes an app and its instances; false if there was none.
    pub fn delete_app(&self, name: &str) -> bool {
        self.apps().remove(name).is_some()
    }

    /// Registers (or renews) an instance; the app is created with the default policy if it
    /// does not exist.
    pub fn register(
        &self,
        app: &str,
        id: &str,
        registration: Registration,
    ) -> Result<InstanceStatus, InvokeError> {
        validate_name("app", app)?;
        validate_name("instance id", id)?;
        let address = parse_address(&registration.address)?;
        if let Some(ttl) = registration.ttl
            && (ttl < Duration::from_millis(100) || ttl > Duration::from_secs(86_400))
        {
            return Err(InvokeError::invalid("ttl_ms", "must be 100..=86400000"));
        }
        let now = Instant::now();
        let mut apps = self.apps();
        let entry = self.app_entry(&mut apps, app);
        let mut st = entry.runtime.lock();
        let expires_at = registration.ttl.map(|t| now + t);
        match st.endpoints.iter_mut().find(|e| e.id == id) {
            Some(e) => {
                if e.address != address || e.http2 != registration.http2 {
                    e.health = Health::new(now);
                }
                e.address = address;
                e.http2 = registration.http2;
                e.expires_at = expires_at;
                e.registered = true;
            }
            None => st.endpoints.push(Endpoint {
                id: id.to_owned(),
                address,
                http2: registration.http2,
                expires_at,
                registered: true,
                health: Health::new(now),
            }),
        }
        let policy = st.policy.clone();
        st.endpoints
            .iter()
            .find(|e| e.id == id)
            .map(|e| instance_status(e, now, &policy))
            .ok_or_else(|| InvokeError::NoInstances(app.to_owned()))
    }

    /// Removes an instance; false if there was none.
    pub fn deregister(&self, app: &str, id: &str) -> bool {
        let apps = self.apps();
        let Some(entry) = apps.get(app) else {
            return false;
        };
        let mut st = entry.runtime.lock();
        let before = st.endpoints.len();
        st.endpoints.retain(|e| e.id != id);
        st.endpoints.len() != before
    }

    /// Drops instances that stopped heart-beating; returns how many.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let apps = self.apps();
        let mut n = 0;
        for app in apps.values() {
            let mut st = app.runtime.lock();
            let before = st.endpoints.len();
            endpoints::expire(&mut st.endpoints, now);
            n += before - st.endpoints.len();
        }
        n
    }

    /// Every app with its instances' health.
    pub fn list(&self) -> Vec<AppStatus> {
        let now = Instant::now();
        self.apps()
            .values()
            .map(|a| status(&a.runtime, now))
            .collect()
    }

    /// One app with its instances' health.
    pub fn get(&self, name: &str) -> Result<AppStatus, InvokeError> {
        let now = Instant::now();
        self.apps()
            .get(name)
            .map(|a| status(&a.runtime, now))
            .ok_or_else(|| InvokeError::UnknownApp(name.to_owned()))
    }

    /// Whether calls to `app` would fail fast now (unknown app, no live instance, every
    /// instance ejected), and if so for about how long: push delivery waits instead of
    /// spending a delivery attempt on a call that cannot be sent.
    pub fn unavailable_for(&self, app: &str) -> Option<Duration> {
        let now = Instant::now();
        let apps = self.apps();
        let Some(entry) = apps.get(app) else {
            return Some(Duration::from_secs(1));
        };
        let st = entry.runtime.lock();
        match endpoints::pick(&st.endpoints, now, 0, 1) {
            endpoints::Pick::Endpoint { .. } => None,
            endpoints::Pick::NoInstances => Some(Duration::from_secs(1)),
            endpoints::Pick::AllEjected { retry_in, .. } => Some(retry_in),
        }
    }

    /// The app serving gRPC service `service` (`pkg.Service`), if one registered it.
    pub fn app_for_grpc_service(&self, service: &str) -> Option<String> {
        self.apps()
            .iter()
            .find(|(_, a)| a.runtime.lock().grpc_services.iter().any(|s| s == service))
            .map(|(name, _)| name.clone())
    }

    /// Calls `app` with `request` (its URI holds the path and query to send; the method,
    /// headers and body are forwarded) through the app's stack. `Ok` is the instance's
    /// response, whatever its status; `Err` says which layer refused or failed, and why.
    ///
    /// The deadline is the smaller of the request's `grpc-timeout` / `wharf-deadline` and the
    /// policy's `timeout_ms`; the instance receives what remains of it in the same headers.
    pub async fn call(
        &self,
        app: &str,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, InvokeError> {
        let arrived = Instant::now();
        let (service, runtime) = {
            let apps = self.apps();
            let entry = apps
                .get(app)
                .ok_or_else(|| InvokeError::UnknownApp(app.to_owned()))?;
            (entry.service.clone(), entry.runtime.clone())
        };
        let (policy, budget) = {
            let st = runtime.lock();
            (st.policy.clone(), st.budget.clone())
        };
        let (mut parts, body) = request.into_parts();
        let asked = deadline::from_headers(&parts.headers).map_err(|name| {
            InvokeError::invalid(
                name,
                "is not a valid deadline (grpc-timeout: digits and a unit such as 100m; \
                 wharf-deadline: milliseconds)",
            )
        })?;
        let time = asked.map_or(policy.timeout(), |d| d.min(policy.timeout()));
        if asked.is_some_and(|d| d.is_zero()) {
            return Err(InvokeError::DeadlineExpired {
                app: app.to_owned(),
            });
        }
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let marked = parts
            .headers
            .get(IDEMPOTENT_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let path = parts.uri.path().to_owned();
        let idempotent = marked
            || policy.retry.marks_idempotent(&parts.method, &path)
            || (!grpc && parts.method.is_idempotent());
        // A body that may be sent again is read whole once the call is admitted (if it is
        // small): when the call is idempotent, or when its length is known and small (a
        // connect error can then be retried for any method). A gRPC call not marked
        // idempotent may be a stream and is never held back.
        let small = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n <= RETRY_BUFFER_BYTES);
        parts.extensions.insert(CallInfo {
            app: app.to_owned(),
            deadline: arrived + time,
            budget: time,
            idempotent,
            grpc,
            buffer: idempotent || (!grpc && small),
            policy,
        });
        let body = ReqBody::Stream(body);
        budget.deposit();
        service
            .oneshot(http::Request::from_parts(parts, body))
            .await
    }
}

fn status(runtime: &AppRuntime, now: Instant) -> AppStatus {
    let st = runtime.lock();
    let instances: Vec<InstanceStatus> = st
        .endpoints
        .iter()
        .filter(|e| e.expires_at.is_none_or(|t| t > now))
        .map(|e| instance_status(e, now, &st.policy))
        .collect();
    let breaker = if instances.is_empty() {
        "empty"
    } else if instances.iter().all(|i| i.state != "healthy") {
        "open"
    } else {
        "closed"
    };
    AppStatus {
        name: runtime.name.clone(),
        policy: (*st.policy).clone(),
        grpc_services: st.grpc_services.clone(),
        breaker,
        instances,
    }
}

fn instance_status(e: &Endpoint, now: Instant, _policy: &Policy) -> InstanceStatus {
    let h = &e.health;
    let state = if h.probing {
        "probing"
    } else if h.ejected_until.is_some() {
        "ejected"
    } else {
        "healthy"
    };
    InstanceStatus {
        id: e.id.clone(),
        address: e.address.to_string().trim_end_matches('/').to_owned(),
        http2: e.http2,
        expires_in_ms: e
            .expires_at
            .map(|t| t.saturating_duration_since(now).as_millis() as u64),
        state,
        ejected_for_ms: h
            .ejected_until
            .map(|t| t.saturating_duration_since(now).as_millis() as u64),
        latency_ewma_ms: h.rtt(now).as_secs_f64() * 1000.0,
        in_flight: h.in_flight,
        consecutive_failures: h.consecutive_failures,
        attempts: h.calls,
        failures: h.failures,
    }
}

fn validate_name(what: &str, name: &str) -> Result<(), InvokeError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvokeError::invalid(
            what,
            format!("{name:?} must be 1-128 characters of letters, digits, '-', '_' and '.'"),
        ))
    }
}

fn parse_address(address: &str) -> Result<http::Uri, InvokeError> {
    let uri: http::Uri = address
        .parse()
        .map_err(|e| InvokeError::invalid("address", format!("{address:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(InvokeError::invalid(
                "address",
                "https instances are not supported yet; use http:// (a TLS sidecar or a \
                 private network)",
            ));
        }
        _ => {
            return Err(InvokeError::invalid(
                "address",
                format!("{address:?} must be http://host:port"),
            ));
        }
    }
    if uri.authority().is_none() || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(InvokeError::invalid(
            "address",
            format!("{address:?} must be http://host:port, without a path"),
        ));
    }
    Ok(uri)
}
