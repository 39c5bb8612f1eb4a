//! Support code of Wharf's benchmark programs (the `harness = false` benches of `wharf-log`,
//! `wharf-broker` and `wharf-server`): one copy of what every one of them needs around its
//! measurements.
//!
//! - [settings](crate#settings): the `WHARF_BENCH_*` knobs read from the environment, the data
//!   directory, the command line that reproduces a run, and a benchmark's exit on error;
//! - [machine](crate#machine): CPU model, memory, kernel, load average, git revision, UTC time
//!   and the mount of the data directory, for the header of a report;
//! - [statistics](crate#statistics): elapsed nanoseconds, nearest-rank percentiles, medians;
//! - [output](crate#output): number formatting, the report [`Table`] (aligned text and
//!   markdown), [`Target`] verdicts and the whole [`Report`];
//! - [threads](crate#threads): per-thread CPU time, context switches and write calls from
//!   `/proc`;
//! - [`payload`]: deterministic pseudo-random bytes.
//!
//! It knows nothing of the other Wharf crates (but the name of `wharf-log`'s committer thread,
//! [`LOG_COMMITTER_THREAD`]), so that every crate's benchmark can use it.
//!
//! # Settings
//!
//! [`env_parse`], [`env_path`], [`env_secs`], [`has_arg`], [`bench_base`], [`temp_data_dir`],
//! [`reproduce_command`], [`exit_on_error`].
//!
//! # Machine
//!
//! [`Mount`], [`mount_of`], [`proc_field`], [`cpu_model`], [`mem_total`], [`loadavg`],
//! [`kernel`], [`git_rev`], [`utc_now`], [`run_header`], [`end_lines`].
//!
//! # Statistics
//!
//! [`elapsed_ns`], [`percentile_us`], [`median`], [`secs_of`], [`sum_secs`].
//!
//! # Output
//!
//! [`grouped`], [`fixed`], [`micros`], [`size_label`], [`stopped_by`], [`Table`], [`Target`],
//! [`Report`], [`write_markdown`].
//!
//! # Threads
//!
//! [`ThreadStat`], [`ThreadSnap`], [`LOG_COMMITTER_THREAD`].

use std::error::Error;

mod machine;
mod output;
mod settings;
mod stats;
mod threads;

pub use machine::{
    Mount, cpu_model, end_lines, git_rev, kernel, loadavg, mem_total, mount_of, proc_field,
    run_header, utc_now,
};
pub use output::{
    Report, Table, Target, fixed, grouped, micros, size_label, stopped_by, write_markdown,
};
pub use settings::{
    bench_base, env_parse, env_path, env_secs, exit_on_error, has_arg, reproduce_command,
    temp_data_dir,
};
pub use stats::{elapsed_ns, median, percentile_us, secs_of, sum_secs};
pub use threads::{LOG_COMMITTER_THREAD, ThreadSnap, ThreadStat};

/// The error of a benchmark run: anything, as long as it can cross threads.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The result of a benchmark step.
pub type BoxResult<T> = Result<T, BoxError>;

/// A megabyte as the reports count it: 10^6 bytes.
pub const MB: f64 = 1e6;

/// `size` deterministic pseudo-random bytes (xorshift64*) from `seed`: the same arguments give
/// the same bytes in every run.
pub fn payload(size: usize, seed: u64) -> bytes::Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(size);
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_sized() {
        assert_eq!(payload(100, 7), payload(100, 7));
        assert_ne!(payload(100, 7), payload(100, 8));
        assert_eq!(payload(13, 1).len(), 13);
        assert!(payload(0, 1).is_empty());
    }
}
