//! Push delivery: for every shared subscription with a `push` setting, a worker receives
//! deliveries (as member `wharf-push`) and `POST`s each to the app route through the
//! invocation stack (deadline = the push timeout, the app's concurrency limit, balancer and
//! breaker), then settles it by the answer: 2xx acks; 408, 429, 5xx, timeouts and connection
//! errors nack (the subscription's backoff decides when it comes back, and `max_deliveries`
//! sends it to the dead-letter topic as usual); any other answer terminates it to the
//! dead-letter topic at once with the answer as the reason.
//!
//! Workers follow the subscriptions: [`PushWorkers::reconcile`] runs at start, every two
//! seconds, and right after a subscription or topic changes through the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use wharf_broker::{Delivery, PushConfig, ReceiveRequest, SubscriptionConfig};

use crate::state::AppState;
use crate::trace::TraceParent;

/// The member name push workers receive as.
pub const PUSH_MEMBER: &str = "wharf-push";
/// How much of an app's refusal is kept as the dead-letter reason.
const REASON_BYTES: usize = 512;

/// The running push workers of one server.
#[derive(Default)]
pub struct PushWorkers {
    running: Mutex<HashMap<(String, String), (PushConfig, CancellationToken)>>,
    changed: Notify,
}

impl std::fmt::Debug for PushWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushWorkers").finish_non_exhaustive()
    }
}

impl PushWorkers {
    /// Asks for a reconcile now (after a subscription or topic changed).
    pub fn poke(&self) {
        self.changed.notify_one();
    }

    /// Runs until shutdown: reconciles at start, on [`PushWorkers::poke`], and every 2 s.
    pub async fn run(state: AppState) {
        let workers = state.push.clone();
        loop {
            workers.reconcile(&state).await;
            tokio::select! {
                () = workers.changed.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                () = state.shutdown.cancelled() => break,
            }
        }
        let running = std::mem::take(&mut *lock(&workers.running));
        for (_, (_, stop)) in running {
            stop.cancel();
        }
    }

    /// Starts a worker for each push subscription without one (or whose settings changed)
    /// and stops the workers of subscriptions that are gone.
    pub async fn reconcile(&self, state: &AppState) {
        let Ok(topics) = state.engine.list_topics().await else {
            return;
        };
        let mut wanted: HashMap<(String, String), PushConfig> = HashMap::new();
        for t in topics {
            let Ok(subs) = state.engine.list_subscriptions(&t.name).await else {
                continue;
            };
            for s in subs {
                if let SubscriptionConfig::Shared(c) = &s.config
                    && let Some(push) = &c.push
                {
                    wanted.insert((s.topic.clone(), s.name.clone()), push.clone());
                }
            }
        }
        let mut running = lock(&self.running);
        running.retain(|key, (config, stop)| {
            let keep = wanted.get(key) == Some(config);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (key, config) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let stop = state.shutdown.child_token();
            let (topic, sub) = key.clone();
            tokio::spawn(worker(
                state.clone(),
                topic,
                sub,
                config.clone(),
                stop.clone(),
            ));
            running.insert(key, (config, stop));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn worker(
    state: AppState,
    topic: String,
    sub: String,
    config: PushConfig,
    stop: CancellationToken,
) {
    tracing::info!(%topic, subscription = %sub, app = %config.app, route = %config.route, "push delivery started");
    let slots = Arc::new(Semaphore::new(config.max_in_flight as usize));
    // The lease covers the app's time plus the settle, so a delivery is not handed out
    // twice while its push is still running.
    let lease = Duration::from_millis(config.timeout_ms) + Duration::from_secs(5);
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        // A call that would fail fast (app unknown, no instance, breaker open) would still
        // spend one of the message's deliveries: wait for the app instead of receiving.
        if let Some(wait) = state.invoker.unavailable_for(&config.app) {
            tokio::select! {
                () = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
                () = stop.cancelled() => break,
            }
            continue;
        }
        let Ok(first) = slots.clone().acquire_owned().await else {
            break;
        };
        let extra = slots.available_permits();
        let request = ReceiveRequest {
            member: Some(PUSH_MEMBER.to_owned()),
            max: 1 + extra,
            lease: Some(lease),
            wait: Duration::from_secs(1),
        };
        let received = tokio::select! {
            r = state.engine.receive(&topic, &sub, request) => r,
            () = stop.cancelled() => break,
        };
        let deliveries = match received {
            Ok(d) => {
                failures = 0;
                d
            }
            Err(e) => {
                // The subscription may be gone (the reconcile stops us) or the engine may be
                // unavailable: back off, bounded.
                failures = failures.saturating_add(1);
                tracing::warn!(%topic, subscription = %sub, error = %e, "push: receive failed");
                let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
        };
        let mut permits = vec![first];
        for _ in 1..deliveries.len() {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        for (delivery, permit) in deliveries.into_iter().zip(permits) {
            let (state, topic, sub, config) =
                (state.clone(), topic.clone(), sub.clone(), config.clone());
            tokio::spawn(async move {
                push_one(&state, &topic, &sub, &config, delivery).await;
                drop(permit);
            });
        }
    }
    tracing::info!(%topic, subscription = %sub, "push delivery stopped");
}

/// What to do with a delivery after its push.
#[derive(Debug, PartialEq, Eq)]
enum Settle {
    Ack,
    Nack,
    Terminate(String),
}

async fn push_one(state: &AppState, topic: &str, sub: &str, config: &PushConfig, d: Delivery) {
    let request = match build_request(topic, sub, config, &d) {
        Ok(r) => r,
        Err(reason) => {
            settle(state, topic, sub, &d, Settle::Terminate(reason)).await;
            return;
        }
    };
    let start = std::time::Instant::now();
    let outcome = match state.invoker.call(&config.app, request).await {
        Ok(resp) => {
            let status = resp.status();
            let class = crate::metrics::Metrics::status_class(status.as_u16());
            state
                .metrics
                .invoked(&config.app, "push", class, start.elapsed());
            if status.is_success() {
                Settle::Ack
            } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
                Settle::Nack
            } else {
                let body = read_prefix(resp.into_body()).await;
                Settle::Terminate(format!(
                    "push to app {:?} route {:?} answered {}: {}",
                    config.app,
                    config.route,
                    status.as_u16(),
                    body
                ))
            }
        }
        Err(e) => {
            state
                .metrics
                .invoked(&config.app, "push", e.code(), start.elapsed());
            tracing::debug!(%topic, subscription = %sub, error = %e, "push failed; nacking");
            Settle::Nack
        }
    };
    settle(state, topic, sub, &d, outcome).await;
}

async fn settle(state: &AppState, topic: &str, sub: &str, d: &Delivery, outcome: Settle) {
    let ids = std::slice::from_ref(&d.ack_id);
    let r = match &outcome {
        Settle::Ack => state.engine.ack(topic, sub, ids).await,
        Settle::Nack => state.engine.nack(topic, sub, ids, None).await,
        Settle::Terminate(reason) => state.engine.terminate(topic, sub, ids, reason).await,
    };
    match r {
        Ok(_) => {
            if outcome == Settle::Ack {
                state
                    .metrics
                    .delivered(topic, sub, 1, d.message.value.len() as u64);
            }
        }
        // The lease may have run out (the app took longer than the lease): the message is
        // delivered again; nothing is lost.
        Err(e) => tracing::warn!(%topic, subscription = %sub, error = %e, "push: settling failed"),
    }
}

/// The `POST` for one delivery: the value as the body, the message's headers as headers
/// (those that are valid HTTP headers), Wharf's facts as `wharf-*` headers, the push timeout
/// as the deadline, and the message's trace continued.
fn build_request(
    topic: &str,
    sub: &str,
    config: &PushConfig,
    d: &Delivery,
) -> Result<http::Request<wharf_invoke::Body>, String> {
    let m = &d.message;
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(config.route.as_str());
    let headers = builder
        .headers_mut()
        .ok_or_else(|| format!("push route {:?} is not a valid path", config.route))?;
    for (k, v) in &m.headers {
        // Wharf's and gRPC's own headers (and hop-by-hop ones) are not the publisher's to
        // set on the push: they would change how the call is made.
        let lower = k.to_ascii_lowercase();
        if lower == "traceparent"
            || lower.starts_with("wharf-")
            || lower.starts_with("grpc-")
            || matches!(
                lower.as_str(),
                "te" | "connection"
                    | "keep-alive"
                    | "host"
                    | "content-length"
                    | "transfer-encoding"
                    | "upgrade"
                    | "authorization"
            )
            || (lower == "content-type" && v.starts_with("application/grpc"))
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.append(name, value);
        }
    }
    if !headers.contains_key(http::header::CONTENT_TYPE) {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
    }
    let trace = m
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        .and_then(|(_, v)| TraceParent::parse(v))
        .map_or_else(TraceParent::new_root, |p| p.child());
    if let Some(v) = trace.header_value() {
        headers.insert("traceparent", v);
    }
    let facts = [
        ("wharf-topic", topic.to_owned()),
        ("wharf-subscription", sub.to_owned()),
        ("wharf-partition", m.partition.to_string()),
        ("wharf-offset", m.offset.to_string()),
        ("wharf-delivery-count", d.delivery_count.to_string()),
        ("wharf-deadline", config.timeout_ms.to_string()),
    ];
    for (k, v) in facts {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    }
    if let Some(key) = m.key.as_ref().and_then(|k| std::str::from_utf8(k).ok())
        && let Ok(v) = http::HeaderValue::from_str(key)
    {
        headers.insert("wharf-key", v);
    }
    let body = Full::new(m.value.clone())
        .map_err(|never| match never {})
        .boxed_unsync();
    builder
        .body(body)
        .map_err(|e| format!("push route {:?}: {e}", config.route))
}

async fn read_prefix(mut body: wharf_invoke::Body) -> String {
    let mut bytes = Vec::new();
    let read = async {
        while bytes.len() < REASON_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        bytes.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let text = String::from_utf8_lossy(&bytes);
    let mut end = text.len().min(REASON_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().trim().to_owned()
}
