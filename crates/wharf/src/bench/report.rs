//! What a run prints: the live progress line, CPU time from `/proc`, the server's process
//! (found by its listening socket), the summary table and the `--json` summary.

use std::fs;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wharf_benchkit::{Table, fixed, grouped, micros, percentile_us, size_label};

use super::workloads::{Outcome, Plan};

/// Clock ticks per second of `/proc/.../stat` times (`USER_HZ`, 100 on every Linux
/// architecture Wharf builds for).
const TICKS_PER_SEC: f64 = 100.0;

/// `ns` for a person: `850 ns`, `12.3 µs`, `4.56 ms`, `1.2 s`.
pub(crate) fn human_ns(ns: u64) -> String {
    match ns {
        n if n < 1_000 => format!("{n} ns"),
        n if n < 1_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2} ms", n as f64 / 1e6),
        n => format!("{:.1} s", n as f64 / 1e9),
    }
}

/// User + system CPU time of a process, in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's CPU pressure so far: µs during which some runnable task waited for a CPU
/// (`some total` of `/proc/pressure/cpu`), if the kernel tells.
fn cpu_pressure_us() -> Option<u64> {
    let text = fs::read_to_string("/proc/pressure/cpu").ok()?;
    let line = text.lines().find(|l| l.starts_with("some"))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// CPU time of this process and of the server process, and the machine's CPU pressure, at
/// one moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuSnap {
    at: Instant,
    client: Option<u64>,
    server: Option<u64>,
    pressure: Option<u64>,
}

impl CpuSnap {
    /// Reads this process's CPU time and `server`'s, if given.
    pub(crate) fn take(server: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            client: cpu_ticks("self"),
            server: server.and_then(|p| cpu_ticks(&p.to_string())),
            pressure: cpu_pressure_us(),
        }
    }
}

/// The share of a measured phase during which some task on the machine waited for a CPU
/// (`/proc/pressure/cpu`), in percent: how contended the machine was.
pub(crate) fn pressure_of(o: &Outcome) -> Option<f64> {
    let (before, after) = o.cpu?;
    let waited = after.pressure?.checked_sub(before.pressure?)?;
    let secs = after.at.duration_since(before.at).as_secs_f64();
    Some(100.0 * waited as f64 / 1e6 / secs.max(1e-9))
}

/// CPU used over an interval by one process: percent of one core, and µs per message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuUse {
    /// Percent of one core.
    pub(crate) pct: f64,
    /// µs of CPU per message.
    pub(crate) us_per_msg: f64,
}

fn cpu_use(before: Option<u64>, after: Option<u64>, secs: f64, msgs: u64) -> Option<CpuUse> {
    let ticks = after?.checked_sub(before?)?;
    let cpu_secs = ticks as f64 / TICKS_PER_SEC;
    Some(CpuUse {
        pct: 100.0 * cpu_secs / secs.max(1e-9),
        us_per_msg: if msgs == 0 {
            f64::NAN
        } else {
            cpu_secs * 1e6 / msgs as f64
        },
    })
}

/// (client, server) CPU use over a measured phase.
pub(crate) fn cpu_of(o: &Outcome) -> (Option<CpuUse>, Option<CpuUse>) {
    let Some((before, after)) = o.cpu else {
        return (None, None);
    };
    let secs = after.at.duration_since(before.at).as_secs_f64();
    (
        cpu_use(before.client, after.client, secs, o.msgs),
        cpu_use(before.server, after.server, secs, o.msgs),
    )
}

/// Whether `host` is this machine's loopback interface.
pub(crate) fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The process listening on TCP `port` on this machine: the socket inode from
/// `/proc/net/tcp` and `/proc/net/tcp6` (state `0A`, LISTEN), then the process holding a file
/// descriptor on `socket:[inode]`. `None` if it cannot be told (e.g. another user's process).
pub(crate) fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening = *state == "0A";
            let on_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && on_port && *inode != "0" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let me = std::process::id();
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path())
                && inodes.iter().any(|i| link.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// The live progress line: the phase, messages so far and the rate, redrawn on stderr every
/// 250 ms while stderr is a terminal (nothing otherwise).
#[derive(Debug)]
pub(crate) struct Progress {
    state: Arc<ProgressState>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct ProgressState {
    count: Arc<AtomicU64>,
    phase: Mutex<(&'static str, Instant, Arc<AtomicU64>)>,
}

impl Progress {
    /// Starts drawing if stderr is a terminal and `quiet` is false.
    pub(crate) fn start(quiet: bool) -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let state = Arc::new(ProgressState {
            count: count.clone(),
            phase: Mutex::new(("start", Instant::now(), count)),
        });
        let task = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    let (phase, since, count) = match state.phase.lock() {
                        Ok(p) => (p.0, p.1, p.2.load(Ordering::Relaxed)),
                        Err(_) => return,
                    };
                    let secs = since.elapsed().as_secs_f64().max(1e-3);
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[K{phase}: {} msgs, {} msg/s",
                        grouped(count as f64),
                        grouped(count as f64 / secs)
                    );
                    let _ = err.flush();
                }
            })
        });
        Self { state, task }
    }

    /// Starts a new phase: the count starts again from 0.
    pub(crate) fn phase(&self, name: &'static str) {
        let count = Arc::new(AtomicU64::new(0));
        if let Ok(mut p) = self.state.phase.lock() {
            *p = (name, Instant::now(), count);
        }
    }

    /// The counter of the current phase, to add done messages to.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.state
            .phase
            .lock()
            .map(|p| p.2.clone())
            .unwrap_or_else(|_| self.state.count.clone())
    }

    /// Stops drawing and clears the line.
    pub(crate) fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// Everything the summary says about a run besides the [`Outcome`].
#[derive(Debug)]
pub(crate) struct RunInfo {
    /// `inproc` or the URL.
    pub(crate) target: String,
    /// [`super::driver::Driver::describe`].
    pub(crate) driver: String,
    /// The broker's process: `Some(pid)`, or `None` with why in `server_note`.
    pub(crate) server_pid: Option<u32>,
    /// How the server process was found (or why there is none).
    pub(crate) server_note: String,
    /// The command line that reproduces the run.
    pub(crate) command: String,
    /// Whether the broker runs in this process.
    pub(crate) in_process: bool,
}

fn pcts(sorted: &[u64]) -> [f64; 5] {
    [
        percentile_us(sorted, 0.50),
        percentile_us(sorted, 0.90),
        percentile_us(sorted, 0.99),
        percentile_us(sorted, 0.999),
        percentile_us(sorted, 1.0),
    ]
}

/// The human summary: a table and the lines that explain it.
pub(crate) fn text(plan: &Plan, info: &RunInfo, o: &Outcome) -> String {
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let rate = o.msgs as f64 / secs;
    let mbps = o.msgs as f64 * plan.size as f64 / 1e6 / secs;
    let (client, server) = cpu_of(o);
    let p = pcts(&o.latencies);
    let cpu_cells = |c: Option<CpuUse>| match c {
        Some(c) => (fixed(c.pct, 0), fixed(c.us_per_msg, 2)),
        None => ("-".into(), "-".into()),
    };
    let (ccpu, cus) = cpu_cells(client);
    let (scpu, sus) = if info.in_process {
        ("(in client)".into(), "(in client)".into())
    } else {
        cpu_cells(server)
    };
    let mut t = Table::new(
        &format!("wharf bench {}", plan.workload.as_str()),
        &[
            "workload",
            "target",
            "size",
            "msgs",
            "secs",
            "msgs/s",
            "MB/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "client cpu %",
            "client µs/msg",
            "server cpu %",
            "server µs/msg",
        ],
        2,
    );
    t.row(vec![
        plan.workload.as_str().into(),
        info.target.clone(),
        size_label(plan.size),
        grouped(o.msgs as f64),
        fixed(secs, 2),
        grouped(rate),
        fixed(mbps, 1),
        micros(p[0]),
        micros(p[1]),
        micros(p[2]),
        micros(p[3]),
        micros(p[4]),
        ccpu,
        cus,
        scpu,
        sus,
    ]);
    let mut out = t.text();
    let mut line = |k: &str, v: &str| out.push_str(&format!("  {k}: {v}\n"));
    line("driver", &info.driver);
    line(
        "latency",
        if o.latency_of.is_empty() {
            "none measured (throughput only)"
        } else {
            &o.latency_of
        },
    );
    if !o.ack_latencies.is_empty() {
        let a = pcts(&o.ack_latencies);
        line(
            "publish → ack (from the intended send time)",
            &format!(
                "p50 {} / p90 {} / p99 {} / p99.9 {} / max {} µs",
                micros(a[0]),
                micros(a[1]),
                micros(a[2]),
                micros(a[3]),
                micros(a[4])
            ),
        );
    }
    line("stopped by", o.stopped_by);
    for (k, v) in &o.notes {
        line(k, v);
    }
    line(
        "cpu",
        "from /proc/<pid>/stat utime+stime over the measured phase (10 ms ticks); % of one core",
    );
    if let Some(p) = pressure_of(o) {
        line(
            "cpu pressure",
            &format!(
                "some task waited for a CPU {p:.0}% of the measured phase (/proc/pressure/cpu): \
                 the higher, the noisier"
            ),
        );
    }
    line("server", &info.server_note);
    line(
        "settings",
        &format!(
            "durability {}, {} partition{}, topic {}",
            plan.spec.durability.map_or(
                "the system's default (Wharf: always; others: see the driver line)",
                |d| d.as_str()
            ),
            plan.spec.partitions,
            if plan.spec.partitions == 1 { "" } else { "s" },
            plan.topic
        ),
    );
    line("command", &info.command);
    out
}

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn latency_json(sorted: &[u64]) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let p = pcts(sorted);
    json!({
        "samples": sorted.len(),
        "p50": num(p[0]),
        "p90": num(p[1]),
        "p99": num(p[2]),
        "p99_9": num(p[3]),
        "max": num(p[4]),
    })
}

fn cpu_json(c: Option<CpuUse>) -> Value {
    match c {
        Some(c) => json!({"pct_core": num(c.pct), "us_per_msg": num(c.us_per_msg)}),
        None => Value::Null,
    }
}

/// The machine-readable summary (`--json`); latencies in µs.
pub(crate) fn json(plan: &Plan, info: &RunInfo, o: &Outcome) -> Value {
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let (client, server) = cpu_of(o);
    json!({
        "workload": plan.workload.as_str(),
        "target": info.target,
        "driver": info.driver,
        "size": plan.size,
        "count": plan.count,
        "duration_s": plan.duration.as_secs_f64(),
        "in_flight": plan.in_flight,
        "batch": plan.batch,
        "rate": (plan.workload == super::workloads::Workload::Latency).then_some(plan.rate),
        "partitions": plan.spec.partitions,
        "durability": plan.spec.durability.map_or("default", |d| d.as_str()),
        "topic": plan.topic,
        "msgs": o.msgs,
        "secs": num(secs),
        "msgs_per_sec": num(o.msgs as f64 / secs),
        "mb_per_sec": num(o.msgs as f64 * plan.size as f64 / 1e6 / secs),
        "latency_of": (!o.latency_of.is_empty()).then_some(o.latency_of.as_str()),
        "latency_us": latency_json(&o.latencies),
        "publish_ack_latency_us": latency_json(&o.ack_latencies),
        "stopped_by": o.stopped_by,
        "client_cpu": cpu_json(client),
        "server_cpu": if info.in_process { Value::Null } else { cpu_json(server) },
        "server_pid": info.server_pid,
        "cpu_pressure_pct": pressure_of(o).map(num),
        "server": info.server_note,
        "in_process": info.in_process,
        "notes": o.notes.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "command": info.command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_and_loopback() {
        assert!(cpu_ticks("self").is_some());
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("example.com"));
        assert_eq!(human_ns(1_500), "1.5 µs");
        assert_eq!(human_ns(2_000_000), "2.00 ms");
    }

    #[test]
    fn finds_the_process_listening_on_a_port() {
        // A listener in this process is skipped (it is never the server of a bench run), so
        // look for one in a child: none here, but the socket table must parse.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(listener_pid(port), None);
    }
}
