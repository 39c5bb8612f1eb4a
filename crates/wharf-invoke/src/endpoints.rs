//! One app's instances as the balancer sees them: peak-EWMA latency, calls in flight, failure
//! accrual with ejection and half-open probing. Pure state and decisions over an explicit
//! `now`, so the model test drives it without a runtime.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::BreakerPolicy;

/// How fast a latency estimate forgets: the weight of an old sample halves about every 7 s.
const DECAY: Duration = Duration::from_secs(10);
/// The estimate of an instance nothing is known about yet.
const INITIAL_RTT: Duration = Duration::from_millis(1);

/// An instance: where it is, and what the balancer knows about it.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) id: String,
    pub(crate) address: http::Uri,
    pub(crate) http2: bool,
    /// When it stops counting unless renewed (`None`: never expires).
    pub(crate) expires_at: Option<Instant>,
    /// Registered through the API or the SDK (kept when the app's config is replaced), as
    /// opposed to listed in the app's config.
    pub(crate) registered: bool,
    pub(crate) health: Health,
}

/// The balancer's view of one endpoint.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    /// Peak-EWMA round-trip estimate, in nanoseconds, as of `updated`.
    rtt_ns: f64,
    updated: Instant,
    pub(crate) in_flight: u32,
    pub(crate) consecutive_failures: u32,
    /// Ejected until then; a probe may go out once it has passed.
    pub(crate) ejected_until: Option<Instant>,
    /// Ejections in a row (the next lasts twice as long).
    pub(crate) ejections: u32,
    /// A probe is out.
    pub(crate) probing: bool,
    /// Changes at every ejection and every restore: an attempt started under another epoch
    /// (before the instance was ejected, or before it came back) does not move the breaker.
    pub(crate) epoch: u64,
    pub(crate) calls: u64,
    pub(crate) failures: u64,
}

impl Health {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            rtt_ns: INITIAL_RTT.as_nanos() as f64,
            updated: now,
            in_flight: 0,
            consecutive_failures: 0,
            ejected_until: None,
            ejections: 0,
            probing: false,
            epoch: 0,
            calls: 0,
            failures: 0,
        }
    }

    /// The latency estimate now (decayed since the last sample).
    pub(crate) fn rtt(&self, now: Instant) -> Duration {
        let age = now.saturating_duration_since(self.updated).as_secs_f64();
        let w = (-age / DECAY.as_secs_f64()).exp();
        Duration::from_nanos((self.rtt_ns * w) as u64)
    }

    /// Load as the balancer compares it: latency × (calls in flight + 1).
    fn cost(&self, now: Instant) -> f64 {
        self.rtt(now).as_nanos() as f64 * f64::from(self.in_flight + 1)
    }

    fn sample(&mut self, now: Instant, rtt: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let current = self.rtt(now).as_nanos() as f64;
        // Peak-sensitive: a slower sample replaces the estimate at once, faster ones blend in.
        self.rtt_ns = if rtt > current {
            rtt
        } else {
            let age = now.saturating_duration_since(self.updated).as_secs_f64();
            let w = (-age / DECAY.as_secs_f64()).exp();
            current * w + rtt * (1.0 - w)
        };
        self.updated = now;
    }
}

/// What the balancer picked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Send to this endpoint (index), as a probe if it was ejected.
    Endpoint { index: usize, probe: bool },
    /// No live endpoint at all.
    NoInstances,
    /// Every live endpoint is ejected and no probe is due.
    AllEjected {
        endpoints: usize,
        retry_in: Duration,
    },
}

/// How an attempt ended, for failure accrual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
    /// The caller went away or its deadline passed first: says nothing about the instance.
    Cancelled,
}

/// Drops expired endpoints.
pub(crate) fn expire(endpoints: &mut Vec<Endpoint>, now: Instant) {
    endpoints.retain(|e| e.expires_at.is_none_or(|t| t > now));
}

/// Power of two choices over the endpoints that are not ejected; a due probe first.
/// `r1`, `r2` are uniform random numbers (injected for tests).
pub(crate) fn pick(endpoints: &[Endpoint], now: Instant, r1: usize, r2: usize) -> Pick {
    let live: Vec<(usize, &Health)> = endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.expires_at.is_none_or(|t| t > now))
        .map(|(i, e)| (i, &e.health))
        .collect();
    if live.is_empty() {
        return Pick::NoInstances;
    }
    // A probe is due: the endpoint ejected longest ago goes first.
    if let Some((i, _)) = live
        .iter()
        .filter(|(_, h)| !h.probing && h.ejected_until.is_some_and(|t| t <= now))
        .min_by_key(|(_, h)| h.ejected_until)
    {
        return Pick::Endpoint {
            index: *i,
            probe: true,
        };
    }
    let ready: Vec<(usize, &Health)> = live
        .iter()
        .copied()
        .filter(|(_, h)| h.ejected_until.is_none())
        .collect();
    let n = ready.len();
    let first = ready.get(r1 % n.max(1));
    // The second choice is any other ready endpoint.
    let second = if n > 1 {
        let k = r2 % (n - 1);
        let k = if k >= r1 % n { k + 1 } else { k };
        ready.get(k)
    } else {
        None
    };
    match (first, second) {
        (None, _) => {
            // The next probe: the earliest ejection end not being probed right now (if every
            // one is being probed, its answer decides soon).
            let retry_in = live
                .iter()
                .filter(|(_, h)| !h.probing)
                .filter_map(|(_, h)| h.ejected_until)
                .min()
                .map_or(Duration::from_millis(100), |t| {
                    t.saturating_duration_since(now)
                        .max(Duration::from_millis(1))
                });
            Pick::AllEjected {
                endpoints: live.len(),
                retry_in,
            }
        }
        (Some((a, _)), None) => Pick::Endpoint {
            index: *a,
            probe: false,
        },
        (Some((a, ha)), Some((b, hb))) => Pick::Endpoint {
            index: if hb.cost(now) < ha.cost(now) { *b } else { *a },
            probe: false,
        },
    }
}

/// Marks an attempt as started; returns the epoch to give back to [`finish`].
pub(crate) fn start(h: &mut Health, probe: bool) -> u64 {
    h.in_flight += 1;
    h.calls += 1;
    if probe {
        h.probing = true;
    }
    h.epoch
}

/// Records how an attempt ended: latency, failure accrual, ejection, probe result. An
/// attempt from an earlier epoch (in flight when the instance was ejected or restored) only
/// updates the latency and the in-flight count; a cancelled one only the in-flight count.
pub(crate) fn finish(
    h: &mut Health,
    now: Instant,
    elapsed: Duration,
    outcome: Outcome,
    probe: bool,
    epoch: u64,
    policy: &BreakerPolicy,
) {
    h.in_flight = h.in_flight.saturating_sub(1);
    if probe {
        h.probing = false;
    }
    if outcome == Outcome::Cancelled {
        return;
    }
    h.sample(now, elapsed);
    if epoch != h.epoch {
        return;
    }
    match outcome {
        Outcome::Success => {
            h.consecutive_failures = 0;
            if probe {
                h.ejected_until = None;
                h.ejections = 0;
                h.epoch += 1;
            }
        }
        Outcome::Failure => {
            h.failures += 1;
            h.consecutive_failures += 1;
            if probe || h.consecutive_failures >= policy.consecutive_failures {
                let base = Duration::from_millis(policy.ejection_ms);
                let max = Duration::from_millis(policy.max_ejection_ms);
                let factor = 1u32 << h.ejections.min(16);
                h.ejected_until = Some(now + base.saturating_mul(factor).min(max));
                h.ejections = h.ejections.saturating_add(1);
                h.consecutive_failures = 0;
                h.epoch += 1;
            }
        }
        Outcome::Cancelled => {}
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn endpoint(id: &str, now: Instant) -> Endpoint {
        Endpoint {
            id: id.into(),
            address: "http://127.0.0.1:1".parse().unwrap(),
            http2: false,
            expires_at: None,
            registered: true,
            health: Health::new(now),
        }
    }

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            ejection_ms: 1_000,
            max_ejection_ms: 4_000,
        }
    }

    #[test]
    fn the_faster_of_two_wins() {
        let now = Instant::now();
        let mut e = vec![endpoint("fast", now), endpoint("slow", now)];
        finish(
            &mut e[0].health,
            now,
            Duration::from_millis(1),
            Outcome::Success,
            false,
            0,
            &policy(),
        );
        finish(
            &mut e[1].health,
            now,
            Duration::from_millis(50),
            Outcome::Success,
            false,
            0,
            &policy(),
        );
        for r in 0..10 {
            assert_eq!(
                pick(&e, now, r, r + 1),
                Pick::Endpoint {
                    index: 0,
                    probe: false
                }
            );
        }
        // Load counts: with many calls in flight the fast one costs more.
        e[0].health.in_flight = 100;
        assert_eq!(
            pick(&e, now, 0, 0),
            Pick::Endpoint {
                index: 1,
                probe: false
            }
        );
    }

    #[test]
    fn ejection_probe_and_recovery() {
        let t0 = Instant::now();
        let p = policy();
        let mut e = vec![endpoint("a", t0)];
        for _ in 0..3 {
            let epoch = start(&mut e[0].health, false);
            finish(
                &mut e[0].health,
                t0,
                Duration::from_millis(1),
                Outcome::Failure,
                false,
                epoch,
                &p,
            );
        }
        assert_eq!(
            pick(&e, t0, 0, 0),
            Pick::AllEjected {
                endpoints: 1,
                retry_in: Duration::from_secs(1)
            }
        );
        // The probe is due after the ejection; only one goes out.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            pick(&e, t1, 0, 0),
            Pick::Endpoint {
                index: 0,
                probe: true
            }
        );
        let epoch = start(&mut e[0].health, true);
        assert!(matches!(pick(&e, t1, 0, 0), Pick::AllEjected { .. }));
        // A failed probe ejects for twice as long.
        finish(
            &mut e[0].health,
            t1,
            Duration::from_millis(1),
            Outcome::Failure,
            true,
            epoch,
            &p,
        );
        assert_eq!(
            pick(&e, t1, 0, 0),
            Pick::AllEjected {
                endpoints: 1,
                retry_in: Duration::from_secs(2)
            }
        );
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(
            pick(&e, t2, 0, 0),
            Pick::Endpoint {
                index: 0,
                probe: true
            }
        );
        let epoch = start(&mut e[0].health, true);
        finish(
            &mut e[0].health,
            t2,
            Duration::from_millis(1),
            Outcome::Success,
            true,
            epoch,
            &p,
        );
        assert_eq!(
            pick(&e, t2, 0, 0),
            Pick::Endpoint {
                index: 0,
                probe: false
            }
        );
        assert_eq!(e[0].health.ejections, 0);
    }

    #[test]
    fn expired_endpoints_do_not_count() {
        let now = Instant::now();
        let mut e = vec![endpoint("a", now)];
        e[0].expires_at = Some(now + Duration::from_secs(1));
        assert!(matches!(pick(&e, now, 0, 0), Pick::Endpoint { .. }));
        let later = now + Duration::from_secs(1);
        assert_eq!(pick(&e, later, 0, 0), Pick::NoInstances);
        expire(&mut e, later);
        assert!(e.is_empty());
    }

    #[test]
    fn attempts_from_before_an_ejection_do_not_move_the_breaker() {
        let t0 = Instant::now();
        let p = policy();
        let mut e = vec![endpoint("a", t0)];
        // Ten calls in flight when the instance dies.
        let epochs: Vec<u64> = (0..10).map(|_| start(&mut e[0].health, false)).collect();
        for &epoch in &epochs[..3] {
            finish(
                &mut e[0].health,
                t0,
                Duration::from_millis(1),
                Outcome::Failure,
                false,
                epoch,
                &p,
            );
        }
        let ejected = e[0].health.ejected_until;
        assert!(ejected.is_some());
        // The other seven fail (or one succeeds late): the ejection stays as it was.
        for &epoch in &epochs[3..9] {
            finish(
                &mut e[0].health,
                t0,
                Duration::from_millis(1),
                Outcome::Failure,
                false,
                epoch,
                &p,
            );
        }
        finish(
            &mut e[0].health,
            t0,
            Duration::from_millis(1),
            Outcome::Success,
            false,
            epochs[9],
            &p,
        );
        assert_eq!(e[0].health.ejected_until, ejected);
        assert_eq!(e[0].health.ejections, 1);
        assert_eq!(e[0].health.in_flight, 0);
        // A cancelled probe lets another probe go out, and changes nothing else.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            pick(&e, t1, 0, 0),
            Pick::Endpoint {
                index: 0,
                probe: true
            }
        );
        let epoch = start(&mut e[0].health, true);
        finish(
            &mut e[0].health,
            t1,
            Duration::from_millis(1),
            Outcome::Cancelled,
            true,
            epoch,
            &p,
        );
        assert_eq!(
            pick(&e, t1, 0, 0),
            Pick::Endpoint {
                index: 0,
                probe: true
            }
        );
        assert_eq!(e[0].health.ejections, 1);
    }

    /// One step of the model: start an attempt (the balancer picks), or finish an outstanding
    /// one with an outcome, after some time passes.
    #[derive(Clone, Debug)]
    enum Op {
        Start(usize),
        Finish(usize, u8),
    }

    fn op() -> impl Strategy<Value = (Op, u64)> {
        (
            prop_oneof![
                (0usize..3).prop_map(Op::Start),
                (0usize..16, 0u8..3).prop_map(|(i, o)| Op::Finish(i, o)),
            ],
            0u64..1_500,
        )
    }

    proptest! {
        /// Model test with concurrent attempts: the balancer never sends to an ejected
        /// endpoint except as its single probe; in-flight counts match the outstanding
        /// attempts; an ejection never exceeds the maximum; only attempts of the current
        /// epoch move the breaker, and a success restores only through a probe.
        #[test]
        fn breaker_model(ops in proptest::collection::vec(op(), 1..300)) {
            let p = policy();
            let mut now = Instant::now();
            let mut e = vec![endpoint("a", now), endpoint("b", now), endpoint("c", now)];
            // Outstanding attempts: (endpoint, probe, epoch).
            let mut out: Vec<(usize, bool, u64)> = Vec::new();
            for (op, advance) in ops {
                now += Duration::from_millis(advance);
                match op {
                    Op::Start(r) => match pick(&e, now, r, r + 1) {
                        Pick::Endpoint { index, probe } => {
                            let h = &e[index].health;
                            if probe {
                                prop_assert!(h.ejected_until.is_some_and(|t| t <= now) && !h.probing);
                            } else {
                                prop_assert!(h.ejected_until.is_none());
                            }
                            let epoch = start(&mut e[index].health, probe);
                            out.push((index, probe, epoch));
                        }
                        Pick::AllEjected { endpoints, retry_in } => {
                            prop_assert_eq!(endpoints, 3);
                            prop_assert!(retry_in > Duration::ZERO);
                            prop_assert!(e.iter().all(|x| x.health.ejected_until.is_some_and(|t| t > now) || x.health.probing));
                        }
                        Pick::NoInstances => prop_assert!(false, "three endpoints never expire"),
                    },
                    Op::Finish(i, o) => {
                        if out.is_empty() {
                            continue;
                        }
                        let (index, probe, epoch) = out.remove(i % out.len());
                        let outcome = [Outcome::Success, Outcome::Failure, Outcome::Cancelled][usize::from(o)];
                        let before = (e[index].health.ejected_until, e[index].health.ejections);
                        let current = e[index].health.epoch;
                        finish(&mut e[index].health, now, Duration::from_millis(1), outcome, probe, epoch, &p);
                        let h = &e[index].health;
                        if outcome == Outcome::Cancelled || epoch != current {
                            prop_assert_eq!((h.ejected_until, h.ejections), before);
                        }
                        if outcome == Outcome::Success && !probe {
                            prop_assert_eq!(h.ejected_until.is_some(), before.0.is_some());
                        }
                        if let Some(t) = h.ejected_until {
                            prop_assert!(t <= now + Duration::from_millis(p.max_ejection_ms));
                        }
                    }
                }
                for (k, x) in e.iter().enumerate() {
                    let n = out.iter().filter(|(i, _, _)| *i == k).count() as u32;
                    prop_assert_eq!(x.health.in_flight, n);
                    let probes = out.iter().filter(|(i, pr, _)| *i == k && *pr).count();
                    prop_assert!(probes <= 1);
                    prop_assert_eq!(x.health.probing, probes == 1);
                }
            }
        }
    }
}
