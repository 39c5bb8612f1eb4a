//! Statistics of a cell's samples.

use std::time::{Duration, Instant};

/// Nanoseconds since `t0` (saturating at `u64::MAX`).
pub fn elapsed_ns(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile `q` (0 to 1) of sorted nanoseconds, in microseconds; NaN if there
/// are none.
pub fn percentile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).map_or(f64::NAN, |&ns| ns as f64 / 1e3)
}

/// The median of the numbers that are not NaN (the mean of the middle two of an even count);
/// NaN if there are none.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let at = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
    match n {
        0 => f64::NAN,
        n if n % 2 == 1 => at(n / 2),
        n => (at(n / 2 - 1) + at(n / 2)) / 2.0,
    }
}

/// `d` in seconds, at least 1 ns, so that rates over it stay finite.
pub fn secs_of(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// The sum of nanoseconds, in seconds.
pub fn sum_secs(ns: &[u64]) -> f64 {
    ns.iter().sum::<u64>() as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_us(&ns, 0.5), 50.0);
        assert_eq!(percentile_us(&ns, 0.99), 99.0);
        assert_eq!(percentile_us(&ns, 1.0), 100.0);
        assert_eq!(percentile_us(&ns, 0.0), 1.0);
        assert!(percentile_us(&[], 0.5).is_nan());
    }

    #[test]
    fn medians_skip_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 1.0, 5.0]), 3.0);
        assert!(median(&[]).is_nan());
        assert!(median(&[f64::NAN]).is_nan());
    }
}
