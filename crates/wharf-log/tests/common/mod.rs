//! Helpers shared by the integration tests (each test file includes this with `mod common;`).
#![allow(dead_code, unreachable_pub)]

/// Property-test case count: `WHARF_PROPTEST_CASES` (CI sets thousands), else `local_default`
/// (small, so a local `cargo test` stays quick).
pub fn proptest_cases(local_default: u32) -> u32 {
    std::env::var("WHARF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(local_default)
}

/// A scaled count for loops that are not proptest: `WHARF_PROPTEST_CASES / divisor`, at least
/// `local_default`.
pub fn scaled(local_default: u64, divisor: u64) -> u64 {
    std::env::var("WHARF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(local_default, |n| (n / divisor).max(local_default))
}
