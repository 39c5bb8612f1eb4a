//! Per-thread CPU time, context switches and write calls, from `/proc`.

use std::fs;
use std::path::Path;

/// The name `wharf-log`'s committer threads show in `/proc/.../comm`: `wharf-log-commit`, cut
/// by the kernel to 15 bytes. A thread names itself only once it runs, so a thread just
/// spawned may not show it yet.
pub const LOG_COMMITTER_THREAD: &str = "wharf-log-comm";

/// What one thread (or a group of threads, summed) has used, from `/proc/.../task/<tid>/`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStat {
    /// CPU time on the CPU, ns (first field of `schedstat`).
    pub cpu_ns: u64,
    /// Voluntary and involuntary context switches (`ctxt_switches` of `status`).
    pub switches: u64,
    /// Write-family system calls (`syscw` of `io`; 0 if it cannot be read): `wharf-log`'s
    /// committers issue one `pwrite` per group commit (two when a group exceeds 256 KiB).
    pub writes: u64,
}

impl ThreadStat {
    /// The stats of the thread whose `/proc` directory is `task` (e.g. `/proc/thread-self`),
    /// if its CPU time and context switches can be read.
    pub fn read(task: &Path) -> Option<Self> {
        let sched = fs::read_to_string(task.join("schedstat")).ok()?;
        let cpu_ns = sched.split_whitespace().next()?.parse().ok()?;
        let status = fs::read_to_string(task.join("status")).ok()?;
        let switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        let writes = fs::read_to_string(task.join("io"))
            .ok()
            .and_then(|io| {
                io.lines()
                    .find_map(|l| l.strip_prefix("syscw:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        Some(Self {
            cpu_ns,
            switches,
            writes,
        })
    }

    /// Adds `other` to this one (to sum a group of threads).
    pub fn add(&mut self, other: Self) {
        self.cpu_ns += other.cpu_ns;
        self.switches += other.switches;
        self.writes += other.writes;
    }

    /// What was used between `before` and this reading of the same thread.
    #[must_use]
    pub fn since(self, before: Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            switches: self.switches.saturating_sub(before.switches),
            writes: self.writes.saturating_sub(before.writes),
        }
    }
}

/// Every thread of the process at one moment: (tid, name, stats).
#[derive(Clone, Debug, Default)]
pub struct ThreadSnap(Vec<(u64, String, ThreadStat)>);

impl ThreadSnap {
    /// Reads every thread of this process from `/proc/self/task` (none if it cannot).
    pub fn take() -> Self {
        let mut out = Vec::new();
        let Ok(dir) = fs::read_dir("/proc/self/task") else {
            return Self(out);
        };
        for e in dir.filter_map(|e| e.ok()) {
            let path = e.path();
            let Some(tid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let comm = fs::read_to_string(path.join("comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_default();
            if let Some(stat) = ThreadStat::read(&path) {
                out.push((tid, comm, stat));
            }
        }
        Self(out)
    }

    /// Each thread of this snapshot, (tid, name, what it used since `before`): a thread that
    /// appeared since counts in full (one that changed its name too); threads that ended
    /// since are lost.
    pub fn since<'a>(
        &'a self,
        before: &'a ThreadSnap,
    ) -> impl Iterator<Item = (u64, &'a str, ThreadStat)> + 'a {
        self.0.iter().map(|(tid, comm, stat)| {
            let old = before
                .0
                .iter()
                .find(|(t, c, _)| t == tid && c == comm)
                .map(|(_, _, s)| *s)
                .unwrap_or_default();
            (*tid, comm.as_str(), stat.since(old))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_uses_cpu() {
        let before = ThreadSnap::take();
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let now = ThreadSnap::take();
        let used: u64 = now.since(&before).map(|(_, _, s)| s.cpu_ns).sum();
        assert!(used > 0, "{x}");
        assert!(ThreadStat::read(Path::new("/proc/thread-self")).is_some());
    }
}
