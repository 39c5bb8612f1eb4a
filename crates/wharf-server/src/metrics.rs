//! Prometheus metrics. Counters and histograms of the request path live in a recorder owned by
//! the server (not the process-global one, so several servers in one process keep their own);
//! the state of topics, subscriptions and storage is read from the engine at scrape time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::RwLock;
use std::time::Duration;

use metrics::{Counter, Histogram, Key, Label, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use wharf_broker::Engine;

/// Latency buckets of request histograms, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    /// The request counter and histogram of each (method, route, status) seen, by a hash of
    /// the three: a request looks its handles up instead of building label strings and
    /// registry keys (a few allocations and hashes per request otherwise).
    requests: RwLock<HashMap<u64, Vec<RequestHandles>>>,
    /// The message and byte counters of each (topic, subscription) that published (subscription
    /// `None`) or delivered messages, looked up the same way.
    flows: RwLock<HashMap<u64, Vec<FlowHandles>>>,
}

/// The counters of one topic's publishes, or of one (topic, subscription)'s deliveries.
struct FlowHandles {
    topic: Box<str>,
    subscription: Option<Box<str>>,
    messages: Counter,
    bytes: Counter,
}

/// The handles of one (method, route, status).
struct RequestHandles {
    method: Box<str>,
    route: Box<str>,
    status: u16,
    count: Counter,
    duration: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new("wharf_server", metrics::Level::INFO, Some("wharf_server"));

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, (*v).to_owned()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let this = Self {
            recorder,
            requests: RwLock::new(HashMap::new()),
            flows: RwLock::new(HashMap::new()),
        };
        this.describe();
        this
    }

    fn describe(&self) {
        let r = &self.recorder;
        for (name, help) in [
            (
                "wharf_http_requests_total",
                "HTTP requests by method, route and status.",
            ),
            (
                "wharf_messages_published_total",
                "Messages published, per topic (duplicates excluded).",
            ),
            (
                "wharf_published_bytes_total",
                "Key + value bytes published, per topic.",
            ),
            (
                "wharf_messages_delivered_total",
                "Messages handed to consumers, per topic and subscription (reads: subscription \"\").",
            ),
            (
                "wharf_delivered_bytes_total",
                "Key + value bytes handed to consumers.",
            ),
        ] {
            r.describe_counter(name.into(), None, help.into());
        }
        r.describe_histogram(
            "wharf_http_request_duration_seconds".into(),
            Some(metrics::Unit::Seconds),
            "Time to the response head, by method, route and status.".into(),
        );
    }

    /// One finished request.
    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((method, route, status));
        let matches =
            |h: &RequestHandles| h.status == status && *h.method == *method && *h.route == *route;
        {
            let known = self.requests.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = known.get(&hash).and_then(|v| v.iter().find(|h| matches(h))) {
                h.count.increment(1);
                h.duration.record(took.as_secs_f64());
                return;
            }
        }
        let code = status.to_string();
        let l = labels(&[("method", method), ("route", route), ("status", &code)]);
        let key = Key::from_parts("wharf_http_requests_total", l.clone());
        let count = self.recorder.register_counter(&key, &METADATA);
        let key = Key::from_parts("wharf_http_request_duration_seconds", l);
        let duration = self.recorder.register_histogram(&key, &METADATA);
        count.increment(1);
        duration.record(took.as_secs_f64());
        let mut known = self.requests.write().unwrap_or_else(|p| p.into_inner());
        let same = known.entry(hash).or_default();
        if !same.iter().any(matches) {
            same.push(RequestHandles {
                method: method.into(),
                route: route.into(),
                status,
                count,
                duration,
            });
        }
    }

    /// Messages stored by a publish.
    pub fn published(&self, topic: &str, messages: u64, bytes: u64) {
        self.flow(topic, None, messages, bytes);
    }

    /// Messages handed to a consumer.
    pub fn delivered(&self, topic: &str, subscription: &str, messages: u64, bytes: u64) {
        if messages == 0 {
            return;
        }
        self.flow(topic, Some(subscription), messages, bytes);
    }

    /// Adds to the message and byte counters of a publish (`subscription` `None`) or a
    /// delivery, registering them the first time the pair is seen.
    fn flow(&self, topic: &str, subscription: Option<&str>, messages: u64, bytes: u64) {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((topic, subscription));
        let matches =
            |h: &FlowHandles| *h.topic == *topic && h.subscription.as_deref() == subscription;
        {
            let known = self.flows.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = known.get(&hash).and_then(|v| v.iter().find(|h| matches(h))) {
                h.messages.increment(messages);
                h.bytes.increment(bytes);
                return;
            }
        }
        let (l, names) = match subscription {
            None => (
                labels(&[("topic", topic)]),
                (
                    "wharf_messages_published_total",
                    "wharf_published_bytes_total",
                ),
            ),
            Some(sub) => (
                labels(&[("topic", topic), ("subscription", sub)]),
                (
                    "wharf_messages_delivered_total",
                    "wharf_delivered_bytes_total",
                ),
            ),
        };
        let key = Key::from_parts(names.0, l.clone());
        let message_counter = self.recorder.register_counter(&key, &METADATA);
        let key = Key::from_parts(names.1, l);
        let byte_counter = self.recorder.register_counter(&key, &METADATA);
        message_counter.increment(messages);
        byte_counter.increment(bytes);
        let mut known = self.flows.write().unwrap_or_else(|p| p.into_inner());
        let same = known.entry(hash).or_default();
        if !same.iter().any(matches) {
            same.push(FlowHandles {
                topic: topic.into(),
                subscription: subscription.map(Into::into),
                messages: message_counter,
                bytes: byte_counter,
            });
        }
    }

    /// The outcome label of an app's HTTP answer: its status class.
    pub fn status_class(status: u16) -> &'static str {
        match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "1xx",
        }
    }

    /// One call through the invocation stack (HTTP invoke, gRPC passthrough, push):
    /// `outcome` is the app's status class (`2xx`, `5xx`, ...) or Wharf's error code.
    pub fn invoked(&self, app: &str, kind: &str, outcome: &str, took: Duration) {
        let l = labels(&[("app", app), ("kind", kind), ("outcome", outcome)]);
        self.counter("wharf_invoke_calls_total", l.clone(), 1);
        let key = Key::from_parts("wharf_invoke_duration_seconds", l);
        self.recorder
            .register_histogram(&key, &METADATA)
            .record(took.as_secs_f64());
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>, n: u64) {
        let key = Key::from_parts(name, labels);
        self.recorder.register_counter(&key, &METADATA).increment(n);
    }

    /// Folds recorded histogram samples into their buckets, so memory stays bounded when
    /// nobody scrapes (the server calls it every few seconds).
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    /// The text exposition: recorded metrics plus the engine's state now.
    pub async fn render(&self, engine: &dyn Engine, apps: &[wharf_invoke::AppStatus]) -> String {
        let mut out = self.recorder.handle().render();
        render_apps(&mut out, apps);
        let health = engine.health();
        gauge_header(
            &mut out,
            "wharf_storage_writable",
            "1 if the engine accepts writes.",
        );
        let _ = writeln!(out, "wharf_storage_writable {}", u8::from(health.writable));
        if let Some(stats) = engine.storage_stats() {
            gauge_header(
                &mut out,
                "wharf_storage_bytes",
                "Bytes held in segment files.",
            );
            let _ = writeln!(out, "wharf_storage_bytes {}", stats.size_bytes);
            let h = &stats.fsync_latency;
            let _ = writeln!(
                out,
                "# HELP wharf_fsync_duration_seconds Duration of fsyncs on the write path (all logs)."
            );
            let _ = writeln!(out, "# TYPE wharf_fsync_duration_seconds histogram");
            let mut cumulative = 0;
            for (i, bound) in wharf_log::FSYNC_BUCKETS_US.iter().enumerate() {
                cumulative += h.counts.get(i).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "wharf_fsync_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                    *bound as f64 / 1e6
                );
            }
            let _ = writeln!(
                out,
                "wharf_fsync_duration_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count()
            );
            let _ = writeln!(
                out,
                "wharf_fsync_duration_seconds_sum {}",
                h.sum_nanos as f64 / 1e9
            );
            let _ = writeln!(out, "wharf_fsync_duration_seconds_count {}", h.count());
        }
        let Ok(topics) = engine.list_topics().await else {
            return out;
        };
        let mut held = String::new();
        let mut subs = [
            (
                "wharf_subscription_lag",
                "Messages not yet consumed.",
                String::new(),
            ),
            (
                "wharf_subscription_in_flight",
                "Deliveries under a live lease.",
                String::new(),
            ),
            (
                "wharf_subscription_delayed",
                "Messages waiting for a delay or backoff.",
                String::new(),
            ),
            (
                "wharf_subscription_dead_lettered",
                "Messages in the dead-letter topic.",
                String::new(),
            ),
        ];
        for t in &topics {
            let messages: u64 = t
                .partitions
                .iter()
                .map(|p| p.high_watermark.saturating_sub(p.start_offset))
                .sum();
            let _ = writeln!(
                held,
                "wharf_topic_messages{{topic=\"{}\"}} {messages}",
                esc(&t.name)
            );
            let Ok(list) = engine.list_subscriptions(&t.name).await else {
                continue;
            };
            for s in list {
                let lag: u64 = s.partitions.iter().map(|p| p.lag).sum();
                let l = format!(
                    "topic=\"{}\",subscription=\"{}\"",
                    esc(&t.name),
                    esc(&s.name)
                );
                for (i, v) in [lag, s.in_flight, s.delayed, s.dead_lettered]
                    .into_iter()
                    .enumerate()
                {
                    if let Some((name, _, text)) = subs.get_mut(i) {
                        let _ = writeln!(text, "{name}{{{l}}} {v}");
                    }
                }
            }
        }
        gauge_header(&mut out, "wharf_topic_messages", "Messages held per topic.");
        out.push_str(&held);
        for (name, help, text) in &subs {
            gauge_header(&mut out, name, help);
            out.push_str(text);
        }
        out
    }
}

/// The registry's state: breakers, instance health, latency estimates, in-flight attempts.
fn render_apps(out: &mut String, apps: &[wharf_invoke::AppStatus]) {
    if apps.is_empty() {
        return;
    }
    gauge_header(
        out,
        "wharf_app_breaker_open",
        "1 while every instance of the app is ejected (calls fail fast).",
    );
    for a in apps {
        let _ = writeln!(
            out,
            "wharf_app_breaker_open{{app=\"{}\"}} {}",
            esc(&a.name),
            u8::from(a.breaker == "open")
        );
    }
    type Series = (
        &'static str,
        &'static str,
        fn(&wharf_invoke::InstanceStatus) -> f64,
    );
    let series: [Series; 5] = [
        (
            "wharf_app_instance_healthy",
            "1 if the instance takes traffic (not ejected).",
            |i| f64::from(u8::from(i.state == "healthy")),
        ),
        (
            "wharf_app_instance_latency_ewma_seconds",
            "Peak-EWMA latency estimate the balancer uses.",
            |i| i.latency_ewma_ms / 1000.0,
        ),
        (
            "wharf_app_instance_in_flight",
            "Attempts in flight to the instance.",
            |i| f64::from(i.in_flight),
        ),
        (
            "wharf_app_instance_attempts",
            "Attempts sent to the instance since it registered.",
            |i| i.attempts as f64,
        ),
        (
            "wharf_app_instance_failures",
            "Attempts to the instance that failed since it registered.",
            |i| i.failures as f64,
        ),
    ];
    for (name, help, value) in series {
        gauge_header(out, name, help);
        for a in apps {
            for i in &a.instances {
                let _ = writeln!(
                    out,
                    "{name}{{app=\"{}\",instance=\"{}\"}} {}",
                    esc(&a.name),
                    esc(&i.id),
                    value(i)
                );
            }
        }
    }
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

/// Escapes a label value (names are restricted already; this keeps it true for any input).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series of `name` whose labels include all of `labels`.
    fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|want| l.contains(want)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn requests_count_per_method_route_and_status() {
        let m = Metrics::new();
        let took = Duration::from_millis(1);
        m.request("GRPC", "/wharf.v1.Messages/Publish", 200, took);
        m.request("GRPC", "/wharf.v1.Messages/Publish", 200, took);
        m.request("GRPC", "/wharf.v1.Messages/Publish", 404, took);
        m.request("POST", "/v1/topics/{topic}/messages", 200, took);
        let text = m.recorder.handle().render();
        let count = |labels: &[&str]| value(&text, "wharf_http_requests_total", labels);
        let publish = r#"route="/wharf.v1.Messages/Publish""#;
        assert_eq!(count(&[publish, r#"status="200""#]), Some(2.0), "{text}");
        assert_eq!(count(&[publish, r#"status="404""#]), Some(1.0), "{text}");
        assert_eq!(
            count(&[r#"method="POST""#, r#"status="200""#]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "wharf_http_request_duration_seconds_count",
                &[publish, r#"status="200""#]
            ),
            Some(2.0),
            "{text}"
        );
    }

    #[test]
    fn published_and_delivered_count_per_topic_and_subscription() {
        let m = Metrics::new();
        m.published("orders", 3, 300);
        m.published("orders", 2, 200);
        m.published("audit", 1, 10);
        m.delivered("orders", "billing", 4, 400);
        m.delivered("orders", "billing", 0, 0);
        m.delivered("orders", "", 1, 100);
        let text = m.recorder.handle().render();
        let get = |name: &str, labels: &[&str]| value(&text, name, labels);
        let published = "wharf_messages_published_total";
        assert_eq!(get(published, &[r#"topic="orders""#]), Some(5.0), "{text}");
        assert_eq!(get(published, &[r#"topic="audit""#]), Some(1.0), "{text}");
        assert_eq!(
            get("wharf_published_bytes_total", &[r#"topic="orders""#]),
            Some(500.0),
            "{text}"
        );
        let delivered = "wharf_messages_delivered_total";
        let billing = [r#"topic="orders""#, r#"subscription="billing""#];
        assert_eq!(get(delivered, &billing), Some(4.0), "{text}");
        assert_eq!(
            get("wharf_delivered_bytes_total", &billing),
            Some(400.0),
            "{text}"
        );
        assert_eq!(
            get(delivered, &[r#"topic="orders""#, r#"subscription="""#]),
            Some(1.0),
            "{text}"
        );
    }
}
