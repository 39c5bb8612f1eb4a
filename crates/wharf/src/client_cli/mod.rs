//! The operator verbs on a running server, over the Rust SDK (gRPC): `topic`, `publish`,
//! `consume`, `queue`, `sub`, `dlq`, `status` and `apps`; and `call`, an HTTP request to an
//! app through Wharf.
//!
//! Every verb takes the connection flags of [`ConnArgs`] (`--server`, `--token`, `--json`, ...),
//! builds its own Tokio runtime, and reports a failure as `error: <message> (<code>)` on stderr
//! with exit status 1 (clap's usage errors keep their exit status 2). Human output is aligned
//! columns on stdout; `--json` prints one JSON document per command, or one JSON object per
//! line for the message streams of `consume`.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wharf_client::{Client, ErrorKind, Position};

use crate::cli::CliError;

mod apps;
mod call;
mod consume;
mod dlq;
mod output;
mod publish;
mod queue;
mod status;
mod sub;
mod topic;

/// The client verbs (flattened into `wharf`'s own subcommands).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClientCommand {
    /// Topics on a running server: create, list, describe, delete.
    Topic(topic::TopicArgs),
    /// Publish messages to a topic: values as arguments, or lines of stdin or a file.
    Publish(publish::PublishArgs),
    /// Print a topic's messages (tail it), or consume as a member of a consumer group.
    Consume(consume::ConsumeArgs),
    /// Queues (a topic plus a shared subscription of the same name): create, send, receive,
    /// ack, nack, extend, terminate.
    Queue(queue::QueueArgs),
    /// Subscriptions of a topic: create, list, describe, reset, delete.
    Sub(sub::SubArgs),
    /// Dead letters of a shared subscription: list them, or redrive them into it.
    Dlq(dlq::DlqArgs),
    /// Whether the server is reachable and writable, and every topic and subscription with
    /// its messages, lag, in-flight and dead-lettered counts.
    Status(status::StatusArgs),
    /// The apps Wharf calls: list (default), describe, register, deregister, delete, put.
    Apps(apps::AppsArgs),
    /// Call an app through Wharf over HTTP (`/v1/invoke/APP/PATH`), like curl: the answer's
    /// body on stdout; exit status 0 for a 2xx answer, 1 otherwise.
    Call(call::CallArgs),
}

/// How to reach the server, and how to print. Accepted after any client verb or its
/// subcommand.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct ConnArgs {
    /// The server: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(
        long,
        global = true,
        env = "WHARF_SERVER",
        default_value = wharf_client::DEFAULT_URL,
        value_name = "URL"
    )]
    server: String,
    /// Bearer token (when the server has `[[auth.tokens]]`).
    #[arg(long, global = true, env = "WHARF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Machine-readable output on stdout: one JSON document per command, or one JSON object
    /// per line for message streams.
    #[arg(long, global = true)]
    json: bool,
    /// A CA certificate (PEM file) to trust for an https:// server, besides the system's.
    #[arg(long, global = true, env = "WHARF_CA_CERT", value_name = "PEM_FILE")]
    ca_cert: Option<PathBuf>,
    /// How long connecting to the server may take (`10s`, `500ms`, `1m`).
    #[arg(
        long,
        global = true,
        default_value = "10s",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    connect_timeout: Duration,
    /// How long one call may take (the wait of a long-poll comes on top).
    #[arg(
        long,
        global = true,
        default_value = "30s",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    request_timeout: Duration,
}

/// A failure of a client verb, as printed: `error: <message> (<code>)`.
#[derive(Debug)]
pub(crate) struct CmdError {
    message: String,
    code: String,
}

impl CmdError {
    /// A failure with a message and a stable code.
    pub(crate) fn new(code: &str, message: impl Into<String>) -> Self {
        CmdError {
            message: message.into(),
            code: code.to_owned(),
        }
    }

    /// A bad combination of flags or a malformed value the parser could not catch.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CmdError::new("invalid_argument", message)
    }

    /// The stable code.
    pub(crate) fn code(&self) -> &str {
        &self.code
    }

    /// The message.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context: ` in front of its message.
    pub(crate) fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// A short snake_case code for an SDK error without a server code.
fn kind_code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not_found",
        ErrorKind::AlreadyExists => "already_exists",
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::PermissionDenied => "forbidden",
        ErrorKind::Conflict => "conflict",
        ErrorKind::ResourceExhausted => "resource_exhausted",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Transport => "transport",
        ErrorKind::Unsupported => "not_supported",
        ErrorKind::Closed => "closed",
        ErrorKind::Internal => "internal",
        _ => "error",
    }
}

impl From<wharf_client::Error> for CmdError {
    fn from(e: wharf_client::Error) -> Self {
        let code = e.code().unwrap_or_else(|| kind_code(e.kind()));
        CmdError::new(code, tidy(e.message()))
    }
}

/// A transport error's message lists its chain of causes, in which tonic and hyper repeat
/// themselves (`tcp connect error: tcp connect error: ...`): each cause once.
fn tidy(message: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in message.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

impl From<std::io::Error> for CmdError {
    fn from(e: std::io::Error) -> Self {
        CmdError::new("io", e.to_string())
    }
}

pub(crate) type CmdResult<T = ()> = Result<T, CmdError>;

/// What every verb runs with: the connection flags and the output mode.
pub(crate) struct Ctx {
    conn: ConnArgs,
}

impl Ctx {
    /// Whether `--json` was given.
    pub(crate) fn json(&self) -> bool {
        self.conn.json
    }

    /// The server URL.
    pub(crate) fn server(&self) -> &str {
        &self.conn.server
    }

    /// Connects (bounded by `--connect-timeout`).
    pub(crate) async fn connect(&self) -> CmdResult<Client> {
        let c = &self.conn;
        let mut builder = Client::builder(c.server.clone())
            .connect_timeout(c.connect_timeout)
            .request_timeout(Some(c.request_timeout));
        if let Some(token) = &c.token {
            builder = builder.token(token.clone());
        }
        if let Some(path) = &c.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                CmdError::new(
                    "io",
                    format!("cannot read --ca-cert {}: {e}", path.display()),
                )
            })?;
            builder = builder.ca_certificate_pem(pem);
        }
        // The SDK's connect has its own bound, but a TLS handshake or a DNS lookup that hangs
        // must not hang the command: one more bound around it all.
        let bound = c.connect_timeout.saturating_add(Duration::from_secs(1));
        match tokio::time::timeout(bound, builder.connect()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => {
                Err(CmdError::from(e).context(format!("cannot reach the server at {}", c.server)))
            }
            Err(_) => Err(CmdError::new(
                "timeout",
                format!(
                    "cannot reach the server at {} within {:?}",
                    c.server, c.connect_timeout
                ),
            )),
        }
    }
}

impl ClientCommand {
    fn conn(&self) -> &ConnArgs {
        match self {
            ClientCommand::Topic(a) => &a.conn,
            ClientCommand::Publish(a) => &a.conn,
            ClientCommand::Consume(a) => &a.conn,
            ClientCommand::Queue(a) => &a.conn,
            ClientCommand::Sub(a) => &a.conn,
            ClientCommand::Dlq(a) => &a.conn,
            ClientCommand::Status(a) => &a.conn,
            ClientCommand::Apps(a) => &a.conn,
            ClientCommand::Call(a) => &a.conn,
        }
    }
}

/// Runs a client verb on a runtime of its own. On failure prints `error: <message> (<code>)`
/// to stderr and exits with status 1.
pub(crate) fn run(cmd: ClientCommand) -> Result<(), CliError> {
    let ctx = Ctx {
        conn: cmd.conn().clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wharf-cli")
        .enable_all()
        .build()
        .map_err(|e| CliError::Serve(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async move {
        match cmd {
            ClientCommand::Topic(a) => topic::run(&ctx, a).await,
            ClientCommand::Publish(a) => publish::run(&ctx, a).await,
            ClientCommand::Consume(a) => consume::run(&ctx, a).await,
            ClientCommand::Queue(a) => queue::run(&ctx, a).await,
            ClientCommand::Sub(a) => sub::run(&ctx, a).await,
            ClientCommand::Dlq(a) => dlq::run(&ctx, a).await,
            ClientCommand::Status(a) => status::run(&ctx, a).await,
            ClientCommand::Apps(a) => apps::run(&ctx, a).await,
            ClientCommand::Call(a) => call::run(&ctx, a).await,
        }
    });
    // A thread blocked on stdin must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(200));
    output::flush_stdout();
    match result {
        Ok(()) => Ok(()),
        // `wharf consume ... | head`: the reader has what it wanted.
        Err(e) if e.code == output::BROKEN_PIPE => Ok(()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

// ---- flag parsers ---------------------------------------------------------------------------

/// `10s`, `500ms`, `2m`, `1.5s`, `1h`, `10` (seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        u => return Err(format!("unknown duration unit {u:?} (ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A point in time: RFC 3339 (`2026-11-26T10:00:00Z`), `-DURATION` (that long ago: `-5m`), or
/// milliseconds since the Unix epoch. Answers ms since the epoch.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if let Some(ago) = t.strip_prefix('-') {
        let d = parse_duration(ago)?;
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms().saturating_sub(ms));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map_err(|_| format!("{s:?}: too large for ms since the epoch"));
    }
    wharf_broker::time::parse_rfc3339(t).ok_or_else(|| {
        format!(
            "{s:?} is not a time: RFC 3339 (2026-11-26T10:00:00Z), -DURATION (-5m) or ms since \
             the epoch"
        )
    })
}

/// A position in a partition: `earliest`, `latest`, `offset:N` (or just `N`), or a time
/// (`time:T`, or T itself when it is RFC 3339 or `-DURATION`).
pub(crate) fn parse_position(s: &str) -> Result<Position, String> {
    let t = s.trim();
    match t {
        "earliest" | "beginning" | "start" => return Ok(Position::Earliest),
        "latest" | "end" => return Ok(Position::Latest),
        _ => {}
    }
    if let Some(o) = t.strip_prefix("offset:") {
        return o
            .trim()
            .parse()
            .map(Position::Offset)
            .map_err(|_| format!("{s:?}: offset:N takes a whole number"));
    }
    if let Some(time) = t.strip_prefix("time:") {
        return parse_time(time).map(Position::TimestampMs);
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map(Position::Offset)
            .map_err(|_| format!("{s:?}: offset too large"));
    }
    parse_time(t).map(Position::TimestampMs).map_err(|_| {
        format!(
            "{s:?} is not a position: earliest, latest, an offset (N or offset:N), or a time \
             (RFC 3339, -DURATION like -5m, or time:MS_SINCE_EPOCH)"
        )
    })
}

/// `name=value` (a header).
pub(crate) fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not a header: NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn positions_and_times() {
        assert_eq!(parse_position("earliest"), Ok(Position::Earliest));
        assert_eq!(parse_position("latest"), Ok(Position::Latest));
        assert_eq!(parse_position("42"), Ok(Position::Offset(42)));
        assert_eq!(parse_position("offset:7"), Ok(Position::Offset(7)));
        assert_eq!(
            parse_position("2026-11-26T00:00:00Z"),
            Ok(Position::TimestampMs(1_795_651_200_000))
        );
        assert_eq!(parse_position("time:1000"), Ok(Position::TimestampMs(1000)));
        let Ok(Position::TimestampMs(ago)) = parse_position("-1h") else {
            panic!("-1h is a time");
        };
        assert!((now_ms() - ago - 3_600_000).abs() < 60_000);
        assert!(parse_position("offset:x").is_err());
        assert!(parse_position("yesterday").is_err());
        assert_eq!(parse_time("1000"), Ok(1000));
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("a=b=c"),
            Ok(("a".to_owned(), "b=c".to_owned()))
        );
        assert_eq!(parse_header("a="), Ok(("a".to_owned(), String::new())));
        assert!(parse_header("=b").is_err());
        assert!(parse_header("ab").is_err());
    }

    #[test]
    fn sdk_errors_keep_the_server_code() {
        let e = CmdError::from(wharf_client::Error::from_code(
            "topic_not_found",
            "no topic \"x\"",
        ));
        assert_eq!(e.to_string(), "no topic \"x\" (topic_not_found)");
        let e = CmdError::from(wharf_client::Error::new(
            ErrorKind::Transport,
            "transport error: tcp connect error: tcp connect error: refused",
        ));
        assert_eq!(
            e.to_string(),
            "transport error: tcp connect error: refused (transport)"
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        crate::cli::Cli::command().debug_assert();
    }
}
