//! Per-app resiliency policy: every knob bounded, with defaults that are safe for an app nobody
//! configured (bounded retries under a budget, a deadline, a concurrency limit, a breaker).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::InvokeError;

/// How calls to one app are made. Serialised as the `policy` of an app (wharf.toml, REST).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The deadline of a call that brings none (`grpc-timeout` / `wharf-deadline`), and the
    /// upper bound of one that does, in milliseconds.
    pub timeout_ms: u64,
    /// Each attempt's own timeout (until the response headers), in milliseconds.
    pub per_try_timeout_ms: u64,
    /// Retries.
    pub retry: RetryPolicy,
    /// Calls in flight at once; more are refused at once (`concurrency_limited`).
    pub max_concurrency: usize,
    /// Calls per second (token bucket with a burst of the same size); 0 = no rate limit.
    pub rate_limit_per_second: u32,
    /// Failure accrual per instance, and probing.
    pub breaker: BreakerPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            timeout_ms: 15_000,
            per_try_timeout_ms: 5_000,
            retry: RetryPolicy::default(),
            max_concurrency: 1_000,
            rate_limit_per_second: 0,
            breaker: BreakerPolicy::default(),
        }
    }
}

/// When and how often a call is tried again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1 = never retry); at most 10.
    pub max_attempts: u32,
    /// Backoff before the first retry, in milliseconds; doubles each retry.
    pub backoff_base_ms: u64,
    /// Upper bound of the backoff, in milliseconds.
    pub backoff_max_ms: u64,
    /// Random fraction taken off each backoff: 0 = exact schedule, 1 = "full jitter".
    pub jitter: f64,
    /// Retries allowed as a fraction of calls, over a 10 s window (0.2 = 20%).
    pub budget_ratio: f32,
    /// Retries per second always allowed, whatever the ratio (the budget's floor).
    pub budget_min_per_second: u32,
    /// Routes whose calls are safe to repeat although their method is not idempotent:
    /// `"POST /orders/*"` (method, space, path or prefix ending in `*`) or a gRPC method
    /// `"/shop.Orders/Get"` (or `"/shop.Orders/*"`). A caller can also mark one call with the
    /// header `wharf-idempotent: true`.
    pub idempotent_routes: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base_ms: 25,
            backoff_max_ms: 1_000,
            jitter: 1.0,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            idempotent_routes: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1 = the first retry), before jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(20);
        let ms = self
            .backoff_base_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms);
        Duration::from_millis(ms)
    }

    /// Whether `method path` is marked idempotent by [`RetryPolicy::idempotent_routes`].
    pub fn marks_idempotent(&self, method: &http::Method, path: &str) -> bool {
        self.idempotent_routes.iter().any(|route| {
            let (m, p) = match route.split_once(' ') {
                Some((m, p)) => (Some(m), p),
                None => (None, route.as_str()),
            };
            if m.is_some_and(|m| !m.eq_ignore_ascii_case(method.as_str())) {
                return false;
            }
            match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == p,
            }
        })
    }
}

/// Failure accrual: when an instance is ejected, and how it comes back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Consecutive failures (connect errors, timeouts, 5xx, gRPC UNAVAILABLE) that eject an
    /// instance.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts, in milliseconds; each failed probe doubles it.
    pub ejection_ms: u64,
    /// Upper bound of an ejection, in milliseconds.
    pub max_ejection_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection_ms: 5_000,
            max_ejection_ms: 60_000,
        }
    }
}

impl Policy {
    /// Checks every field; the error names the key.
    pub fn validate(&self) -> Result<(), InvokeError> {
        let bad = |field: &str, reason: &str| Err(InvokeError::invalid(field, reason));
        if self.timeout_ms == 0 || self.timeout_ms > 3_600_000 {
            return bad("policy.timeout_ms", "must be 1..=3600000");
        }
        if self.per_try_timeout_ms == 0 || self.per_try_timeout_ms > 3_600_000 {
            return bad("policy.per_try_timeout_ms", "must be 1..=3600000");
        }
        if self.max_concurrency == 0 || self.max_concurrency > 1_000_000 {
            return bad("policy.max_concurrency", "must be 1..=1000000");
        }
        if self.rate_limit_per_second > 10_000_000 {
            return bad(
                "policy.rate_limit_per_second",
                "must be at most 10000000 (0 = no limit)",
            );
        }
        let r = &self.retry;
        if r.max_attempts == 0 || r.max_attempts > 10 {
            return bad("policy.retry.max_attempts", "must be 1..=10");
        }
        if r.backoff_max_ms < r.backoff_base_ms || r.backoff_max_ms > 60_000 {
            return bad(
                "policy.retry.backoff_max_ms",
                "must be at least backoff_base_ms and at most 60000",
            );
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            return bad("policy.retry.jitter", "must be between 0 and 1");
        }
        if !(0.0..=10.0).contains(&r.budget_ratio) {
            return bad("policy.retry.budget_ratio", "must be between 0 and 10");
        }
        if r.budget_min_per_second > 100_000 {
            return bad(
                "policy.retry.budget_min_per_second",
                "must be at most 100000",
            );
        }
        if let Some(route) = r
            .idempotent_routes
            .iter()
            .find(|route| route.is_empty() || !route.contains('/'))
        {
            return Err(InvokeError::invalid(
                "policy.retry.idempotent_routes",
                format!("{route:?} is not \"METHOD /path\", \"/path*\" or \"/pkg.Service/Method\""),
            ));
        }
        let b = &self.breaker;
        if b.consecutive_failures == 0 || b.consecutive_failures > 1_000 {
            return bad("policy.breaker.consecutive_failures", "must be 1..=1000");
        }
        if b.ejection_ms == 0 || b.max_ejection_ms < b.ejection_ms || b.max_ejection_ms > 3_600_000
        {
            return bad(
                "policy.breaker.ejection_ms",
                "must be at least 1, and max_ejection_ms at least ejection_ms and at most 3600000",
            );
        }
        Ok(())
    }

    /// [`Policy::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// [`Policy::per_try_timeout_ms`] as a duration.
    pub fn per_try_timeout(&self) -> Duration {
        Duration::from_millis(self.per_try_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounded() {
        let p = Policy::default();
        p.validate().unwrap();
        assert!(p.retry.max_attempts > 1 && p.retry.max_attempts <= 10);
        assert_eq!(p.retry.backoff(1), Duration::from_millis(25));
        assert_eq!(p.retry.backoff(2), Duration::from_millis(50));
        assert_eq!(p.retry.backoff(30), Duration::from_millis(1_000));
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut p = Policy::default();
        p.retry.max_attempts = 0;
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("max_attempts")
        );
        let mut p = Policy::default();
        p.retry.jitter = 2.0;
        assert!(p.validate().unwrap_err().to_string().contains("jitter"));
        let p: Result<Policy, _> = serde_json::from_str(r#"{"retries": 3}"#);
        assert!(p.is_err(), "unknown keys are refused");
    }

    #[test]
    fn idempotent_routes_match_method_and_prefix() {
        let r = RetryPolicy {
            idempotent_routes: vec!["POST /orders/*".into(), "/shop.Orders/Get".into()],
            ..RetryPolicy::default()
        };
        assert!(r.marks_idempotent(&http::Method::POST, "/orders/17"));
        assert!(!r.marks_idempotent(&http::Method::PATCH, "/orders/17"));
        assert!(!r.marks_idempotent(&http::Method::POST, "/order"));
        assert!(r.marks_idempotent(&http::Method::POST, "/shop.Orders/Get"));
        assert!(!r.marks_idempotent(&http::Method::POST, "/shop.Orders/GetAll"));
    }
}
