//! The machine and the run: what a report's header says about where its numbers come from.

use std::fs;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A mounted file system, from `/proc/mounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The device (or source) mounted, e.g. `/dev/vda`.
    pub device: String,
    /// Where it is mounted.
    pub point: String,
    /// The file system type, e.g. `ext4`.
    pub fstype: String,
    /// The mount options, comma-separated.
    pub options: String,
}

impl Mount {
    /// Whether the file system lives in memory (tmpfs, ramfs), where fsync numbers mean
    /// nothing.
    pub fn is_memory(&self) -> bool {
        matches!(self.fstype.as_str(), "tmpfs" | "ramfs")
    }
}

/// The mount holding `path`: the longest mount point that is a prefix of it.
pub fn mount_of(path: &Path) -> Option<Mount> {
    let path = fs::canonicalize(path).ok()?;
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<Mount> = None;
    for line in mounts.lines() {
        let mut it = line.split_whitespace();
        let (Some(device), Some(point), Some(fstype), Some(options)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let point = point.replace("\\040", " ");
        if path.starts_with(&point) && best.as_ref().is_none_or(|b| point.len() >= b.point.len()) {
            best = Some(Mount {
                device: device.into(),
                point,
                fstype: fstype.into(),
                options: options.into(),
            });
        }
    }
    best
}

/// The value of the first `key: value` line of `file` whose line starts with `key` (as in
/// `/proc/cpuinfo`, `/proc/meminfo`, `/proc/self/status`), trimmed.
pub fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// The CPU's model name, or `unknown`.
pub fn cpu_model() -> String {
    proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into())
}

/// The machine's memory as `23.5 GiB`, or `unknown`.
pub fn mem_total() -> String {
    proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(
            || "unknown".into(),
            |kb| format!("{:.1} GiB", kb / (1024.0 * 1024.0)),
        )
}

/// The 1, 5 and 15 minute load averages, space-separated, or `unknown`.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The kernel release, or `unknown`.
pub fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}

/// The short git revision of `HEAD` of the checkout holding `dir`, if git can tell.
pub fn git_rev(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    utc_of(secs)
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc_of(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The header of a report, at the start of a run, whose data directory is `data`:
/// `command: ...` (the line that reproduces the run, in backticks), `date: ...` (UTC, and the
/// git revision of the checkout holding `repo` if known), `data dir: ...`, `filesystem: ...`
/// (the mount of `data`), `machine: ...` (cores, CPU model, memory, kernel); then the
/// benchmark's own `lines`; then the load average at the start, and a warning if `data` is on
/// a memory file system, where fsync numbers mean nothing.
pub fn run_header(
    command: &str,
    repo: &Path,
    data: &Path,
    lines: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mount = mount_of(data);
    let mut header = vec![
        format!("command: `{command}`"),
        format!(
            "date: {}{}",
            utc_now(),
            git_rev(repo)
                .map(|r| format!(", commit {r}"))
                .unwrap_or_default()
        ),
        format!("data dir: {}", data.display()),
        match &mount {
            Some(m) => format!(
                "filesystem: {} on {} mounted at {} ({})",
                m.fstype, m.device, m.point, m.options
            ),
            None => "filesystem: unknown".into(),
        },
        format!(
            "machine: nproc {}, CPU {}, memory {}, kernel {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model(),
            mem_total(),
            kernel()
        ),
    ];
    header.extend(lines);
    header.push(format!("load average at start: {}", loadavg()));
    if mount.as_ref().is_some_and(Mount::is_memory) {
        header.push(
            "WARNING: the data dir is on a memory file system; fsync numbers mean nothing".into(),
        );
    }
    header
}

/// The last two lines of a report's header, once the run is over: the load average at the end
/// and the wall time since `started`.
pub fn end_lines(started: Instant) -> [String; 2] {
    [
        format!("load average at end: {}", loadavg()),
        format!("wall time: {:.0} s", started.elapsed().as_secs_f64()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_of(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_of(951_782_400 + 3_660), "2000-02-29 01:01 UTC");
        assert_eq!(utc_of(1_795_695_840), "2026-11-26 12:24 UTC");
    }
}
