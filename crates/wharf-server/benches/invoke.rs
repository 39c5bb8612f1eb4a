//! Invocation benchmark: what calling an app through Wharf adds, next to calling it directly
//! and through nginx (a plain reverse proxy), in the same run, HTTP and gRPC, 1 KiB bodies.
//!
//! ```text
//! cargo bench -p wharf-server --bench invoke                        # full run, about 3 minutes
//! WHARF_BENCH_QUICK=1 cargo bench -p wharf-server --bench invoke    # smoke run, seconds
//! ```
//!
//! - **the app**: an echo server in this process on 127.0.0.1:0 (hyper, HTTP/1.1 and h2c on
//!   one port): `POST /echo` answers the body; gRPC `wharf.testing.v1.Echo/Unary` answers the
//!   payload. Nothing else: it is as cheap as an app can be, so the numbers are the proxies'.
//! - **direct**: the clients call the app.
//! - **wharf**: the real server (`wharf_test::TestServer`, default config, no auth) with the
//!   app registered (`PUT /v1/apps/bench/instances/a`, `grpc_services` = the echo service);
//!   HTTP: `POST /v1/invoke/bench/echo`; gRPC: the echo call sent to Wharf's port. Every call
//!   goes through the whole stack (deadline, admission, retry, balancer, per-try timeout).
//! - **nginx**: the Debian package's `nginx` as a child process (`WHARF_BENCH_NGINX` or
//!   `nginx` on the PATH; skipped with a note if absent), `worker_processes auto`, `access_log
//!   off`, keep-alive without a request limit on both sides (nginx's default of 1000
//!   requests per connection would close the gRPC clients' HTTP/2 connection mid-run); HTTP: `proxy_pass`, gRPC: `grpc_pass` on an h2c listener.
//! - **clients** (on their own tokio runtime): HTTP/1.1 keep-alive (`reqwest`, one client);
//!   gRPC: one tonic channel. Two modes per target and protocol: **rate** — an open loop at
//!   `RATE` calls/s (calls start on schedule whatever the earlier ones do, up to 512 in
//!   flight), latency from each call's start; **max** — `CONCURRENCY` closed-loop workers.
//! - Every cell stops after its time limit (`WHARF_BENCH_SECS`, default 4 s, at most 20) or
//!   its call count, whichever comes first; `ROUNDS` interleaved rounds (quick: 1); medians.
//!   Knobs: `WHARF_BENCH_QUICK=1`, `WHARF_BENCH_SECS`, `WHARF_BENCH_NGINX`, `WHARF_BENCH_MD`,
//!   `WHARF_BENCH_ONLY` (cells whose `protocol-mode-target` contains it, e.g. `http-max`).
//!
//! Targets (issue 6): Wharf adds at most 150 µs at p50 and 1 ms at p99 over direct, and is no
//! slower than nginx for HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use wharf_benchkit::{
    BoxResult, Table, end_lines, env_path, env_secs, exit_on_error, fixed, grouped, has_arg,
    median, percentile_us, reproduce_command, run_header, write_markdown,
};
use wharf_proto::testing::v1::echo_client::EchoClient;
use wharf_proto::testing::v1::echo_server::{Echo, EchoServer};
use wharf_proto::testing::v1::{EchoReply, EchoRequest};
use wharf_test::TestServer;
use wharf_test::reqwest;

/// Body size.
const SIZE: usize = 1024;
/// Calls per second of the rate cells.
const RATE: u64 = 1000;
/// Workers of the max cells.
const CONCURRENCY: usize = 16;
/// Most calls in flight in a rate cell.
const RATE_IN_FLIGHT: usize = 512;
/// Interleaved rounds of a full run.
const ROUNDS: usize = 3;

// ---- the app -------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct EchoSvc;

#[tonic::async_trait]
impl Echo for EchoSvc {
    async fn unary(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let r = req.into_inner();
        Ok(tonic::Response::new(EchoReply {
            payload: r.payload,
            count: 1,
            instance: String::new(),
        }))
    }
    type ServerStreamStream = futures_util::stream::Empty<Result<EchoReply, tonic::Status>>;
    async fn server_stream(
        &self,
        _: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Self::ServerStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("unary only"))
    }
    async fn client_stream(
        &self,
        _: tonic::Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("unary only"))
    }
    type BidiStream = futures_util::stream::Empty<Result<EchoReply, tonic::Status>>;
    async fn bidi(
        &self,
        _: tonic::Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<Self::BidiStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("unary only"))
    }
}

/// The echo app: HTTP (any path: the body back) and gRPC Echo/Unary on one port.
async fn start_app() -> BoxResult<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let grpc = tonic::service::Routes::new(EchoServer::new(EchoSvc)).prepare();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let grpc = grpc.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut grpc = grpc.clone();
                    async move {
                        let is_grpc = req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                        if is_grpc {
                            let req = req.map(tonic::body::Body::new);
                            let resp = tower::Service::call(&mut grpc, req)
                                .await
                                .unwrap_or_else(|never| match never {});
                            return Ok::<_, Infallible>(resp.map(|b| b.boxed_unsync()));
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        Ok(hyper::Response::new(
                            Full::new(body)
                                .map_err(|never| match never {})
                                .boxed_unsync(),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

// ---- nginx ---------------------------------------------------------------------------------

struct Nginx {
    child: Child,
    http: SocketAddr,
    grpc: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> BoxResult<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn find_nginx() -> Option<PathBuf> {
    if let Some(p) = env_path("WHARF_BENCH_NGINX") {
        return Some(p);
    }
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

async fn start_nginx(bin: &Path, app: SocketAddr) -> BoxResult<Nginx> {
    let dir = tempfile::tempdir()?;
    let (http, grpc) = (free_port()?, free_port()?);
    let d = dir.path().display();
    let conf = format!(
        "worker_processes auto;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         client_max_body_size 1m;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
         upstream app_http {{ server {app}; keepalive 64; keepalive_requests 10000000; }}\n\
         upstream app_grpc {{ server {app}; keepalive 64; keepalive_requests 10000000; }}\n\
         server {{ listen {http}; location / {{ proxy_pass http://app_http; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
         server {{ listen {grpc} http2; location / {{ grpc_pass grpc://app_grpc; }} }}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .arg("-g")
        .arg("daemon off;")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let nginx = Nginx {
        child,
        http,
        grpc,
        _dir: dir,
    };
    // Ready when both ports accept (bounded).
    let until = Instant::now() + Duration::from_secs(20);
    for port in [http, grpc] {
        while tokio::net::TcpStream::connect(port).await.is_err() {
            if Instant::now() > until {
                return Err("nginx did not start listening within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(nginx)
}

// ---- load ----------------------------------------------------------------------------------

#[derive(Clone)]
enum Caller {
    Http {
        client: reqwest::Client,
        url: String,
    },
    Grpc {
        client: EchoClient<Channel>,
    },
}

impl Caller {
    async fn call(&self, body: &Bytes) -> BoxResult<()> {
        match self {
            Caller::Http { client, url } => {
                let resp = client.post(url).body(body.clone()).send().await?;
                if !resp.status().is_success() {
                    return Err(format!("HTTP {}", resp.status()).into());
                }
                let got = resp.bytes().await?;
                if got.len() != body.len() {
                    return Err("short answer".into());
                }
            }
            Caller::Grpc { client } => {
                let mut c = client.clone();
                let r = c
                    .unary(EchoRequest {
                        payload: body.to_vec(),
                        count: 0,
                    })
                    .await?;
                if r.get_ref().payload.len() != body.len() {
                    return Err("short answer".into());
                }
            }
        }
        Ok(())
    }
}

struct CellResult {
    calls: u64,
    secs: f64,
    lat: Vec<u64>,
}

/// Open loop at `RATE`/s: latency from each call's intended start.
async fn rate_cell(caller: Caller, secs: Duration, max_calls: u64) -> BoxResult<CellResult> {
    let body = wharf_benchkit::payload(SIZE, 1);
    let slots = Arc::new(Semaphore::new(RATE_IN_FLIGHT));
    let failed = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let start = Instant::now();
    let interval = Duration::from_nanos(1_000_000_000 / RATE);
    let mut n = 0u64;
    while n < max_calls && start.elapsed() < secs && !failed.load(Ordering::Relaxed) {
        let intended = start + interval * n as u32;
        tokio::time::sleep_until(intended.into()).await;
        let permit = slots.clone().acquire_owned().await?;
        let (caller, body, tx, failed) = (caller.clone(), body.clone(), tx.clone(), failed.clone());
        tokio::spawn(async move {
            // From the call's start: the runtime timer's 1 ms granularity would otherwise add
            // up to 1 ms to every call alike (never more than RATE_IN_FLIGHT are in flight,
            // so the schedule does not wait for slow calls).
            let t = Instant::now();
            match caller.call(&body).await {
                Ok(()) => {
                    let _ = tx.send(t.elapsed().as_nanos() as u64);
                }
                Err(e) => {
                    eprintln!("call failed: {e}");
                    failed.store(true, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        n += 1;
    }
    drop(tx);
    let mut lat = Vec::with_capacity(n as usize);
    while let Some(l) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await? {
        lat.push(l);
    }
    if failed.load(Ordering::Relaxed) {
        return Err("calls failed".into());
    }
    Ok(CellResult {
        calls: lat.len() as u64,
        secs: start.elapsed().as_secs_f64(),
        lat,
    })
}

/// Closed loop: `CONCURRENCY` workers calling back to back.
async fn max_cell(caller: Caller, secs: Duration, max_calls: u64) -> BoxResult<CellResult> {
    let body = wharf_benchkit::payload(SIZE, 1);
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (caller, body, count) = (caller.clone(), body.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < secs && count.fetch_add(1, Ordering::Relaxed) < max_calls {
                let t = Instant::now();
                caller.call(&body).await?;
                lat.push(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, wharf_benchkit::BoxError>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(CellResult {
        calls: lat.len() as u64,
        secs: start.elapsed().as_secs_f64(),
        lat,
    })
}

// ---- the run -------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Http,
    Grpc,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Rate,
    Max,
}

struct Row {
    proto: Proto,
    mode: Mode,
    target: &'static str,
    rps: Vec<f64>,
    p50: Vec<f64>,
    p90: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
}

/// The allocator `wharf serve` runs with (crates/wharf/src/main.rs), so the server measured here
/// is the one users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Like `wharf serve`: its allocator (above) and a log subscriber at `info` (without one,
    // every span of the HTTP/2 stack would fall back to the `log` crate, a cost the server
    // does not have).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    exit_on_error("wharf-server invoke bench", run());
}

fn runtime(name: &str, workers: usize) -> BoxResult<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()?)
}

#[allow(clippy::too_many_lines)]
fn run() -> BoxResult<()> {
    let quick = has_arg("--quick") || std::env::var_os("WHARF_BENCH_QUICK").is_some();
    let secs = Duration::from_secs_f64(env_secs(if quick { 0.3 } else { 4.0 })?.min(20.0));
    let rounds = if quick { 1 } else { ROUNDS };
    let max_calls: u64 = if quick { 200 } else { 1_000_000 };
    let started = Instant::now();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let app_rt = runtime("bench-app", workers)?;
    let srv_rt = runtime("bench-wharf", workers)?;
    let cli_rt = runtime("bench-client", workers)?;
    let app = app_rt.block_on(start_app())?;
    let server = srv_rt.block_on(TestServer::start());
    let data = server.data_dir.clone();
    let base = server.base.clone();
    // Register the app with Wharf.
    cli_rt.block_on(async {
        let c = reqwest::Client::new();
        let r = c
            .put(format!("{base}/v1/apps/bench"))
            .json(&serde_json::json!({ "grpc_services": ["wharf.testing.v1.Echo"] }))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("PUT /v1/apps/bench: {}", r.status()).into());
        }
        let r = c
            .put(format!("{base}/v1/apps/bench/instances/a"))
            .json(&serde_json::json!({ "address": format!("http://{app}") }))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("registering the app: {}", r.status()).into());
        }
        Ok::<_, wharf_benchkit::BoxError>(())
    })?;
    let nginx_bin = find_nginx();
    let nginx = match &nginx_bin {
        Some(bin) => Some(cli_rt.block_on(start_nginx(bin, app))?),
        None => None,
    };

    let knobs = [
        "WHARF_BENCH_QUICK",
        "WHARF_BENCH_SECS",
        "WHARF_BENCH_NGINX",
        "WHARF_BENCH_ONLY",
    ];
    let command = reproduce_command(
        &knobs,
        "cargo bench -p wharf-server --bench invoke",
        quick.then_some("--quick"),
    );
    let mut header = run_header(
        &command,
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &data,
        [
            format!(
                "app: echo (hyper HTTP/1.1 + h2c, tonic Echo/Unary) at {app}, on its own runtime ({workers} workers)"
            ),
            format!(
                "wharf: wharf_test::TestServer at {base} (default config), app `bench` registered; own runtime ({workers} workers)"
            ),
            match (&nginx_bin, &nginx) {
                (Some(bin), Some(n)) => format!(
                    "nginx: {} (worker_processes auto), HTTP {} (proxy_pass, keepalive 64), gRPC {} (grpc_pass, h2c)",
                    bin.display(),
                    n.http,
                    n.grpc
                ),
                _ => "nginx: not found (set WHARF_BENCH_NGINX); its rows are skipped".into(),
            },
            format!(
                "clients: reqwest HTTP/1.1 keep-alive and one tonic channel, own runtime ({workers} workers); {SIZE} B bodies; rate {RATE}/s (open loop, latency from each call's start, at most {RATE_IN_FLIGHT} in flight) and max ({CONCURRENCY} closed-loop workers)"
            ),
            format!(
                "limits per cell: {:.1} s or {} calls; {rounds} interleaved round(s){}",
                secs.as_secs_f64(),
                grouped(max_calls as f64),
                if quick { " (quick mode)" } else { "" }
            ),
        ],
    );
    eprintln!("wharf-server invocation benchmark");
    for h in &header {
        eprintln!("  {h}");
    }

    // Callers per target.
    let callers = cli_rt.block_on(async {
        let http = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(1024)
            .build()?;
        let channel = |addr: String| async move {
            Channel::from_shared(addr)?
                .connect()
                .await
                .map_err(wharf_benchkit::BoxError::from)
        };
        let mut out: Vec<(Proto, &'static str, Caller)> = vec![
            (
                Proto::Http,
                "direct",
                Caller::Http {
                    client: http.clone(),
                    url: format!("http://{app}/echo"),
                },
            ),
            (
                Proto::Http,
                "wharf",
                Caller::Http {
                    client: http.clone(),
                    url: format!("{base}/v1/invoke/bench/echo"),
                },
            ),
            (
                Proto::Grpc,
                "direct",
                Caller::Grpc {
                    client: EchoClient::new(channel(format!("http://{app}")).await?),
                },
            ),
            (
                Proto::Grpc,
                "wharf",
                Caller::Grpc {
                    client: EchoClient::new(channel(base.clone()).await?),
                },
            ),
        ];
        if let Some(n) = &nginx {
            out.push((
                Proto::Http,
                "nginx",
                Caller::Http {
                    client: http.clone(),
                    url: format!("http://{}/echo", n.http),
                },
            ));
            out.push((
                Proto::Grpc,
                "nginx",
                Caller::Grpc {
                    client: EchoClient::new(channel(format!("http://{}", n.grpc)).await?),
                },
            ));
        }
        Ok::<_, wharf_benchkit::BoxError>(out)
    })?;

    // `WHARF_BENCH_ONLY=http-max-wharf` (any substring of `proto-mode-target`): only those
    // cells, e.g. to profile one.
    let only = std::env::var("WHARF_BENCH_ONLY").unwrap_or_default();
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..rounds {
        for mode in [Mode::Rate, Mode::Max] {
            // Rotate the order of the targets each round.
            let mut order: Vec<usize> = (0..callers.len()).collect();
            order.rotate_left(round % callers.len().max(1));
            for i in order {
                let Some((proto, target, caller)) = callers.get(i).cloned() else {
                    continue;
                };
                let name = format!("{proto:?}-{mode:?}-{target}").to_lowercase();
                if !name.contains(&only) {
                    continue;
                }
                // Warm up (connections, pools).
                cli_rt.block_on(max_cell(caller.clone(), Duration::from_millis(200), 200))?;
                let r = cli_rt.block_on(async {
                    match mode {
                        Mode::Rate => rate_cell(caller, secs, max_calls).await,
                        Mode::Max => max_cell(caller, secs, max_calls).await,
                    }
                })?;
                let mut lat = r.lat;
                lat.sort_unstable();
                let row = match rows
                    .iter_mut()
                    .position(|x| x.proto == proto && x.mode == mode && x.target == target)
                {
                    Some(k) => &mut rows[k],
                    None => {
                        rows.push(Row {
                            proto,
                            mode,
                            target,
                            rps: vec![],
                            p50: vec![],
                            p90: vec![],
                            p99: vec![],
                            p999: vec![],
                        });
                        let k = rows.len() - 1;
                        &mut rows[k]
                    }
                };
                row.rps.push(r.calls as f64 / r.secs.max(1e-9));
                row.p50.push(percentile_us(&lat, 0.50));
                row.p90.push(percentile_us(&lat, 0.90));
                row.p99.push(percentile_us(&lat, 0.99));
                row.p999.push(percentile_us(&lat, 0.999));
                eprintln!(
                    "  round {} {:?} {:?} {target}: {} calls/s, p50 {} µs, p99 {} µs",
                    round + 1,
                    proto,
                    mode,
                    grouped(r.calls as f64 / r.secs.max(1e-9)),
                    fixed(percentile_us(&lat, 0.50), 0),
                    fixed(percentile_us(&lat, 0.99), 0)
                );
            }
        }
    }
    drop(nginx);
    header.extend(end_lines(started));

    let mut table = Table::new(
        "Invocation: direct vs through Wharf vs through nginx (medians of the rounds)",
        &[
            "protocol",
            "mode",
            "target",
            "calls/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "added p50 µs",
            "added p99 µs",
        ],
        3,
    );
    for r in &rows {
        let direct = rows
            .iter()
            .find(|d| d.proto == r.proto && d.mode == r.mode && d.target == "direct");
        let added = |f: fn(&Row) -> &Vec<f64>| match direct {
            Some(d) if r.target != "direct" => fixed(median(f(r)) - median(f(d)), 0),
            _ => "-".into(),
        };
        table.row(vec![
            format!("{:?}", r.proto).to_lowercase(),
            format!("{:?}", r.mode).to_lowercase(),
            r.target.into(),
            grouped(median(&r.rps)),
            fixed(median(&r.p50), 0),
            fixed(median(&r.p90), 0),
            fixed(median(&r.p99), 0),
            fixed(median(&r.p999), 0),
            added(|x| &x.p50),
            added(|x| &x.p99),
        ]);
    }
    println!();
    for h in &header {
        println!("{h}");
    }
    println!();
    println!("{}", table.text());
    let md = format!(
        "{}\n\n{}\n",
        header
            .iter()
            .map(|h| format!("- {h}"))
            .collect::<Vec<_>>()
            .join("\n"),
        table.markdown()
    );
    write_markdown(env_path("WHARF_BENCH_MD").as_deref(), &md)?;
    drop(server);
    Ok(())
}
