//! Shared helpers of the process tests: run the `wharf` binary as a child process (killed when
//! the guard drops, so a failing test leaves nothing behind), find its port from the
//! `listening on` line, send it SIGTERM, and wait for it with a bound.

#![allow(dead_code, unreachable_pub)]

pub mod engine;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the server may take to start or to stop on a loaded machine.
pub const GENEROUS: Duration = Duration::from_secs(60);

/// The binary under test.
pub const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

/// A `wharf` command with no `WHARF_*` configuration and no proxy variables inherited from the
/// environment running the tests.
pub fn wharf() -> Command {
    let mut cmd = Command::new(WHARF);
    for (name, _) in std::env::vars() {
        if name.starts_with("WHARF_") || name.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs a `wharf` command that must end by itself (within [`GENEROUS`]) and returns its exit
/// status, stdout and stderr. A command still running at the deadline is killed and the test
/// fails.
pub fn run_to_end(cmd: Command) -> (ExitStatus, String, String) {
    run_to_end_within(cmd, GENEROUS)
}

/// [`run_to_end`] with a bound of `limit`.
pub fn run_to_end_within(mut cmd: Command, limit: Duration) -> (ExitStatus, String, String) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharf");
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.as_mut().expect("child");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let status = wait_bounded(child, limit)
        .unwrap_or_else(|| panic!("{cmd:?} still running after {limit:?}"));
    guard.0 = None;
    let out = stdout.join().expect("stdout reader");
    let err = stderr.join().expect("stderr reader");
    (status, out, err)
}

fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills and reaps the child when dropped (unless it was taken out).
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGTERM to a process.
pub fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid}: {status}");
}

/// A running `wharf serve`.
pub struct Server {
    guard: ChildGuard,
    /// The port from the `listening on` line.
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Every stderr line so far (the reader thread keeps draining the pipe).
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `wharf serve --listen 127.0.0.1:0 --data DATA`.
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, &["--listen", "127.0.0.1:0"])
    }

    /// `wharf serve --data DATA ARGS...`; waits (bounded) for the `listening on` line.
    pub fn start_with(data: &Path, args: &[&str]) -> Self {
        let mut cmd = wharf();
        cmd.arg("serve").arg("--data").arg(data).args(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wharf serve");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let guard = ChildGuard(Some(child));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().expect("lines").push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + GENEROUS;
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(" listening on ") => break line,
                Ok(_) => {}
                Err(e) => panic!(
                    "no `listening on` line ({e}); stderr so far:\n{}",
                    lines.lock().expect("lines").join("\n")
                ),
            }
        };
        let port = parse_port(&line).unwrap_or_else(|| panic!("no port in {line:?}"));
        Self {
            guard,
            port,
            base: format!("http://127.0.0.1:{port}"),
            stderr: lines,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.guard.0.as_ref().expect("running").id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        sigterm(self.pid());
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running at the end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.guard.0.as_mut().expect("running");
        let status = wait_bounded(child, timeout)?;
        self.guard.0 = None;
        Some(status)
    }

    /// SIGTERM, then asserts a clean exit (status 0) within [`GENEROUS`]; returns how long
    /// the exit took.
    pub fn stop_cleanly(&mut self) -> Duration {
        let start = Instant::now();
        self.sigterm();
        let status = self.wait_exit(GENEROUS).unwrap_or_else(|| {
            panic!(
                "wharf serve still running {GENEROUS:?} after SIGTERM; stderr:\n{}",
                self.stderr_text()
            )
        });
        assert!(
            status.success(),
            "wharf serve exited with {status} after SIGTERM; stderr:\n{}",
            self.stderr_text()
        );
        start.elapsed()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("lines").join("\n")
    }
}

/// The port of `wharf 0.1.0 listening on http://127.0.0.1:PORT (data DIR)`.
pub fn parse_port(line: &str) -> Option<u16> {
    let rest = line.split(" listening on ").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    let (_, port) = addr.rsplit_once(':')?;
    port.parse().ok()
}

/// An HTTP client that ignores proxy settings (HTTP/1.1, keep-alive).
pub fn client() -> wharf_test::reqwest::Client {
    wharf_test::install_crypto();
    wharf_test::reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("client")
}

/// Which of `queues` RabbitMQ at `url` still has (a passive declare of each).
pub fn amqp_queues_left(url: &str, queues: &[String]) -> Vec<String> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let limit = std::time::Duration::from_secs(30);
        let conn = tokio::time::timeout(
            limit,
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
        )
        .await
        .expect("connecting in time")
        .expect("connect to RabbitMQ");
        let mut left = Vec::new();
        for q in queues {
            // A channel each: a passive declare of a missing queue closes the channel.
            let ch = tokio::time::timeout(limit, conn.create_channel())
                .await
                .expect("a channel in time")
                .expect("channel");
            let r = tokio::time::timeout(
                limit,
                ch.queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            .expect("an answer in time");
            match r {
                Ok(_) => left.push(q.clone()),
                Err(e) => assert!(e.to_string().contains("NOT_FOUND"), "{q}: {e}"),
            }
        }
        let _ = conn.close(200, "done".into()).await;
        left
    })
}
