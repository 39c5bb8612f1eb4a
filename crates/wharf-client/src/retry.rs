//! [`RetryPolicy`]: how the publisher (and a reconnecting stream consumer) retries transient
//! failures: exponential backoff with jitter, the server's `retry-after`, bounded by a number
//! of attempts and an overall deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// How transient failures ([`Error::is_retryable`]) are retried.
///
/// The delay before attempt `n + 1` is `initial_backoff * multiplier^(n - 1)`, capped at
/// `max_backoff`, minus a random part of up to `jitter` of it (so clients that failed together
/// do not come back together). A `retry-after` from the server replaces the computed delay.
/// Retrying stops after `max_attempts` attempts in all, or when the next attempt would start
/// after `deadline` (counted from the first attempt); the last error is then returned.
///
/// ```
/// use std::time::Duration;
/// use wharf_client::RetryPolicy;
///
/// let patient = RetryPolicy {
///     max_attempts: 20,
///     deadline: Duration::from_secs(120),
///     ..RetryPolicy::default()
/// };
/// assert!(patient.max_attempts > RetryPolicy::none().max_attempts);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (`1` = no retry).
    pub max_attempts: u32,
    /// The delay after the first failure.
    pub initial_backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
    /// Growth of the delay per attempt (≥ 1).
    pub multiplier: f64,
    /// The fraction of each delay that is random, in `[0, 1]`.
    pub jitter: f64,
    /// No attempt starts later than this after the first.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts within 60 s; delays from 50 ms doubling to 5 s, 20 % jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.2,
            deadline: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The delay after failed attempt `attempt` (1-based), given a uniform random number
    /// `unit` in `[0, 1)` for the jitter.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(capped * (1.0 - jitter)).unwrap_or(self.max_backoff)
    }

    /// The delay before retrying after `error` failed attempt `attempt`, or `None` if it
    /// must not be retried (not retryable, attempts used up, or past the deadline at
    /// `elapsed` since the first attempt).
    pub(crate) fn next_delay(
        &self,
        error: &Error,
        attempt: u32,
        elapsed: Duration,
        unit: f64,
    ) -> Option<Duration> {
        if !error.is_retryable() || attempt >= self.max_attempts {
            return None;
        }
        let delay = error
            .retry_after()
            .unwrap_or_else(|| self.backoff(attempt, unit));
        if elapsed.saturating_add(delay) > self.deadline {
            return None;
        }
        Some(delay)
    }

    /// Runs `op` (given the attempt number and the time left before the deadline) until it
    /// succeeds, fails for good, or the policy gives up.
    pub(crate) async fn run<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(u32, Duration) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut attempt = 1u32;
        loop {
            let left = self.deadline.saturating_sub(start.elapsed());
            match op(attempt, left).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let unit: f64 = rand::random();
                    match self.next_delay(&e, attempt, start.elapsed(), unit) {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => return Err(e),
                    }
                }
            }
            attempt = attempt.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
            deadline: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 0.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 0.0), Duration::from_millis(400));
        assert_eq!(p.backoff(4, 0.0), Duration::from_millis(800));
        assert_eq!(p.backoff(5, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff(500, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff(u32::MAX, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_takes_off_up_to_its_fraction() {
        let p = policy();
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(50));
        assert_eq!(p.backoff(2, 0.5), Duration::from_millis(150));
        for i in 0..100 {
            let d = p.backoff(3, f64::from(i) / 100.0);
            assert!(d <= Duration::from_millis(400) && d > Duration::from_millis(200));
        }
        let none = RetryPolicy {
            jitter: 0.0,
            ..policy()
        };
        assert_eq!(none.backoff(2, 0.99), Duration::from_millis(200));
    }

    #[test]
    fn only_retryable_errors_within_attempts_and_deadline_are_retried() {
        let p = policy();
        let transient = Error::new(ErrorKind::Unavailable, "down");
        let permanent = Error::new(ErrorKind::NotFound, "no");
        assert_eq!(
            p.next_delay(&transient, 1, Duration::ZERO, 0.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(p.next_delay(&permanent, 1, Duration::ZERO, 0.0), None);
        // The fifth attempt was the last.
        assert!(p.next_delay(&transient, 4, Duration::ZERO, 0.0).is_some());
        assert_eq!(p.next_delay(&transient, 5, Duration::ZERO, 0.0), None);
        // The next attempt would start after the deadline.
        assert_eq!(
            p.next_delay(&transient, 2, Duration::from_millis(9_900), 0.0),
            None
        );
        assert!(
            p.next_delay(&transient, 2, Duration::from_millis(9_700), 0.0)
                .is_some()
        );
        assert_eq!(
            RetryPolicy::none().next_delay(&transient, 1, Duration::ZERO, 0.0),
            None
        );
    }

    #[test]
    fn retry_after_replaces_the_backoff() {
        let p = policy();
        let mut map = tonic::metadata::MetadataMap::new();
        map.insert("retry-after", "2".parse().expect("ascii"));
        let e = Error::from(tonic::Status::with_metadata(
            tonic::Code::Unavailable,
            "later",
            map,
        ));
        assert_eq!(
            p.next_delay(&e, 1, Duration::ZERO, 0.9),
            Some(Duration::from_secs(2))
        );
        assert_eq!(p.next_delay(&e, 1, Duration::from_secs(9), 0.0), None);
    }

    #[tokio::test]
    async fn run_retries_then_succeeds_or_gives_up() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..policy()
        };
        let mut calls = 0;
        let v = p
            .run(|attempt, _| {
                calls += 1;
                async move {
                    if attempt < 3 {
                        Err(Error::new(ErrorKind::Transport, "reset"))
                    } else {
                        Ok(attempt)
                    }
                }
            })
            .await;
        assert_eq!(v.ok(), Some(3));
        assert_eq!(calls, 3);

        let mut calls = 0;
        let e = p
            .run(|_, _| {
                calls += 1;
                async { Err::<(), _>(Error::new(ErrorKind::Transport, "reset")) }
            })
            .await;
        assert_eq!(e.err().map(|e| e.kind()), Some(ErrorKind::Transport));
        assert_eq!(calls, 5);

        let mut calls = 0;
        let e = p
            .run(|_, _| {
                calls += 1;
                async { Err::<(), _>(Error::new(ErrorKind::InvalidArgument, "bad")) }
            })
            .await;
        assert!(e.is_err());
        assert_eq!(calls, 1);
    }
}
