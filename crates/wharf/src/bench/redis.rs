//! [`Redis`]: Redis Streams itself, without Wharf (`--target redis://[[USER]:PASS@]HOST[:PORT][/DB]`,
//! e.g. `redis://127.0.0.1:6379`), with the `redis` crate (redis-rs) over multiplexed async
//! connections — a baseline of a broker many services already run. The mapping (also in
//! [`Driver::describe`]):
//!
//! - **topic** = one stream key `bench.{topic}`. `--partitions N` gives N stream keys
//!   `bench.{topic}.{p}`, and each publisher spreads its messages over them round-robin, as
//!   Wharf does without keys. `create_topic` makes the empty streams, and publishes use
//!   `XADD … NOMKSTREAM`, so a publish after the topic was deleted fails rather than making
//!   the key again. Creating a topic checks that its keys are unused or streams already (`TYPE`) and remembers
//!   them, so that deleting the topic can `DEL` every one. Streams are not trimmed (no `MAXLEN`):
//!   every message stays in the server's memory until the topic is deleted.
//! - **durability**: a server setting in Redis, not a stream's. `appendonly no`: a reply once
//!   the entry is in memory (persisted only by RDB snapshots, if configured); `appendonly yes`
//!   writes each command to the append-only file before replying and fsyncs it before the reply
//!   with `appendfsync always` (Wharf's `always`), once a second with `everysec` (`interval`), or
//!   never on its own with `no` (`none`). `--durability` is not applied (the driver does not
//!   reconfigure the server): the settings read at connect (`CONFIG GET appendonly`,
//!   `appendfsync`; a server that refuses `CONFIG` is reported as unknown) are in the report.
//! - **publish** = one pipeline of `XADD key * v <value>` per message of the batch (with
//!   `--header`, the batch's headers as further fields `h:{name}`; none otherwise), written to
//!   the connection at once, then every reply awaited; an error reply to any `XADD` is an
//!   error. Publishers share the `--connections` multiplexed connections round-robin (a
//!   multiplexed connection pipelines the requests of all its users on one socket). A batch's
//!   pipeline is encoded once and sent again while the batch, its length and its first
//!   partition stay the same.
//! - **stream subscription** = a consumer group `{sub}` on every key of the topic, created at
//!   `0` (the earliest entry) with `XGROUP CREATE … MKSTREAM`; a group that exists already is
//!   kept as it is (`BUSYGROUP`). A member is a consumer of the group of its own name
//!   (`XGROUP CREATECONSUMER`, so a missing group is an error at once) reading with
//!   `XREADGROUP GROUP {sub} {member} COUNT c BLOCK ms NOACK STREAMS keys… > …`: `NOACK`
//!   because the consume workload commits nothing (entries are not added to the group's
//!   pending list, the cheapest group read). `COUNT` applies per key: with N keys it is
//!   ⌈`--batch` / N⌉, and entries beyond `--batch` wait in the member for its next batch.
//! - **queue** = stream keys as for a topic, with a consumer group `q` created at `0`
//!   (`MKSTREAM`). A queue consumer is a consumer of `q` of its own name reading with
//!   `XREADGROUP GROUP q {member} COUNT c BLOCK ms STREAMS keys… > …` (the entries go to the
//!   group's pending list under its name) for no more than its window has room for: all keys
//!   with `COUNT room / N`, or `COUNT 1` from `room` of the keys in turn when the room is
//!   smaller than N. An ack is one `XACK key q id…` per key, all in one pipeline; it counts what
//!   Redis answered it acknowledged. Redis has no negative ack and no lease: what a consumer
//!   leaves unacked stays pending under its name until another consumer claims it
//!   (`XAUTOCLAIM`), which these consumers do not do.
//!
//! Blocking reads: a `BLOCK` read holds its connection until entries come or its time ends,
//! so each subscriber and queue consumer has a connection of its own (on a shared multiplexed
//! connection it would hold back every other user's requests). The block time is the
//! workload's timeout in whole milliseconds — never `BLOCK 0`, which waits forever: under
//! 1 ms the read has no `BLOCK` and answers at once. Its answer is awaited for
//! [`ANSWER_TIMEOUT`] beyond that before it is an error (a read given up on would lose the
//! entries Redis handed it). Every other wait is bounded as well ([`CONNECT_TIMEOUT`],
//! [`ANSWER_TIMEOUT`]). `rediss://` (TLS) and unix sockets are not supported by this build.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, Cmd, ConnectionAddr, Pipeline, RedisResult, Value};
use async_trait::async_trait;
use bytes::Bytes;

use super::driver::{
    self, AckHandle, Batch, BenchError, Driver, Publisher, QueueConsumer, Result, ServerSide,
    Subscriber, TopicSpec, redact,
};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reply may take (beyond the block time of a blocking read).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The consumer group of a queue.
const QUEUE_GROUP: &str = "q";
/// A consumer group that exists only while [`Redis::create_keys`] makes an empty stream.
const CREATE_GROUP: &str = "wharf-bench-create";
/// The field of a stream entry that holds the message's value.
const VALUE_FIELD: &[u8] = b"v";
/// What the field of a header starts with (`h:{name}`).
const HEADER_PREFIX: &str = "h:";

fn redis_error(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError(format!("{what}: {e}"))
}

/// `f`, or an error naming `what` if it takes longer than `limit`.
async fn timed<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = RedisResult<T>>,
) -> Result<T> {
    driver::timed(limit, what, "Redis", f, redis_error).await
}

/// The stream keys of a topic (or queue) with `partitions` partitions: `bench.{name}` for
/// one, `bench.{name}.{p}` for more.
fn stream_keys(name: &str, partitions: u32) -> Vec<String> {
    if partitions <= 1 {
        vec![format!("bench.{name}")]
    } else {
        (0..partitions)
            .map(|p| format!("bench.{name}.{p}"))
            .collect()
    }
}

/// `keys` for a message: all of them, or the first and the last of many.
fn listed(keys: &[String]) -> String {
    match keys {
        [first, .., last] if keys.len() > 3 => {
            format!("{first} … {last} ({} keys)", keys.len())
        }
        _ => keys.join(", "),
    }
}

/// The `BLOCK` time of a read that may wait `timeout`: whole milliseconds, rounded down so the
/// read never outlasts `timeout`; `None` (no `BLOCK`: answer at once) under 1 ms, as `BLOCK 0`
/// would wait forever.
fn block_ms(timeout: Duration) -> Option<u64> {
    let ms = timeout.as_millis();
    (ms > 0).then(|| u64::try_from(ms).unwrap_or(u64::MAX))
}

/// What a read that may bring at most `room` entries asks of `n` keys: the indices of the keys
/// to read and the `COUNT` (which Redis applies per key). All keys with `room / n` each, or,
/// when `room < n`, one entry from each of `room` keys, starting at `*turn` (which moves on, so
/// every key has its turn).
fn read_plan(room: usize, n: usize, turn: &mut usize) -> (Vec<usize>, usize) {
    let (room, n) = (room.max(1), n.max(1));
    if room >= n {
        ((0..n).collect(), room / n)
    } else {
        let keys = (0..room).map(|i| (*turn + i) % n).collect();
        *turn = (*turn + room) % n;
        (keys, 1)
    }
}

/// The handle of entry `id` of partition `p` (of `partitions`): the entry id alone with one
/// partition, `{p}/{id}` with several.
fn ack_handle(partitions: usize, p: usize, id: String) -> AckHandle {
    if partitions <= 1 {
        AckHandle::Text(id)
    } else {
        AckHandle::Text(format!("{p}/{id}"))
    }
}

/// The partition and entry id of a handle made by [`ack_handle`].
fn parse_ack(partitions: usize, handle: &AckHandle) -> Result<(usize, &str)> {
    let bad = || {
        BenchError(format!(
            "ack handle {handle:?} is not a Redis entry of this queue"
        ))
    };
    let AckHandle::Text(text) = handle else {
        return Err(bad());
    };
    if partitions <= 1 {
        return Ok((0, text.as_str()));
    }
    let (p, id) = text.split_once('/').ok_or_else(bad)?;
    let p: usize = p.parse().map_err(|_| bad())?;
    if p >= partitions || id.is_empty() {
        return Err(bad());
    }
    Ok((p, id))
}

/// A consumer name unique to one member (within this process, and with the process id
/// among processes of one host).
fn consumer_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "wharf-bench-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The bytes of a string reply.
fn text_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

/// A string reply, taken without copying.
fn into_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s)),
        Value::VerbatimString { text, .. } => Some(Bytes::from(text)),
        _ => None,
    }
}

/// The two elements of a two-element array.
fn pair(v: Value) -> Option<(Value, Value)> {
    let Value::Array(items) = v else {
        return None;
    };
    let mut it = items.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), None) => Some((a, b)),
        _ => None,
    }
}

/// The (name, value) pairs of a flat array (RESP2) or a map (RESP3).
fn field_pairs(v: Value) -> Option<Vec<(Value, Value)>> {
    match v {
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(name), Some(value)) = (it.next(), it.next()) {
                out.push((name, value));
            }
            Some(out)
        }
        Value::Map(pairs) => Some(pairs),
        _ => None,
    }
}

/// Hands each entry of an `XREADGROUP` reply to `each`: the index of its key in `keys`, its id
/// and the value of its field `v`.
fn read_reply(
    reply: Value,
    keys: &[String],
    what: &str,
    mut each: impl FnMut(usize, String, Bytes),
) -> Result<()> {
    let odd = |detail: &str| BenchError(format!("{what}: unexpected reply from Redis: {detail}"));
    let streams = match reply {
        Value::Nil => return Ok(()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(|s| pair(s).ok_or_else(|| odd("a stream that is not [key, entries]")))
            .collect::<Result<Vec<_>>>()?,
        other => return Err(odd(&format!("{other:?}"))),
    };
    for (key, entries) in streams {
        let key = text_of(&key).ok_or_else(|| odd("a key that is not a string"))?;
        let p = keys
            .iter()
            .position(|k| k.as_bytes() == key)
            .ok_or_else(|| odd(&format!("entries of {}", String::from_utf8_lossy(key))))?;
        let Value::Array(entries) = entries else {
            return Err(odd("entries that are not an array"));
        };
        for entry in entries {
            let (id, fields) =
                pair(entry).ok_or_else(|| odd("an entry that is not [id, fields]"))?;
            let id = text_of(&id)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| odd("an entry id that is not text"))?
                .to_owned();
            let fields = field_pairs(fields).ok_or_else(|| {
                odd(&format!(
                    "entry {id} has no fields (deleted while pending?)"
                ))
            })?;
            let value = fields
                .into_iter()
                .find(|(name, _)| text_of(name) == Some(VALUE_FIELD))
                .and_then(|(_, v)| into_bytes(v))
                .ok_or_else(|| {
                    BenchError(format!(
                        "{what}: entry {id} of {} has no field v (not published by wharf bench)",
                        keys[p]
                    ))
                })?;
            each(p, id, value);
        }
    }
    Ok(())
}

/// The value of `name` in an `INFO` text (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The value of a `CONFIG GET` reply for one parameter: `[name, value]` (RESP2) or a map
/// (RESP3).
fn config_value(reply: Value) -> Option<String> {
    let value = match reply {
        Value::Map(pairs) => pairs.into_iter().next()?.1,
        other => pair(other)?.1,
    };
    text_of(&value).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The server's name and version (`Redis 7.0.15`, `Valkey 8.0.1`) from its `INFO server`.
fn server_name(info: &str) -> String {
    if let Some(v) = info_field(info, "valkey_version") {
        return format!("Valkey {v}");
    }
    match info_field(info, "redis_version") {
        Some(v) => format!("Redis {v}"),
        None => "Redis (version unknown)".to_owned(),
    }
}

/// The persistence settings for the report.
fn persistence(appendonly: Option<&str>, appendfsync: Option<&str>) -> String {
    match (appendonly, appendfsync) {
        (Some("yes"), Some(fsync)) => format!("appendonly yes, appendfsync {fsync}"),
        (Some(aof), _) => format!("appendonly {aof}"),
        (None, _) => "persistence settings unknown: CONFIG GET refused".to_owned(),
    }
}

/// How connections are made: bounded connect; no reply deadline in the client (every request
/// is bounded here, a blocking read by its block time plus [`ANSWER_TIMEOUT`]).
fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(None)
}

/// A multiplexed connection of `client` (`shown`: its URL, redacted), answering `PING`.
async fn open(client: &Client, shown: &str) -> Result<MultiplexedConnection> {
    let config = connection_config();
    let connecting = client.get_multiplexed_async_connection_with_config(&config);
    let mut con = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(BenchError(format!("cannot connect to {shown}: {e}"))),
        Err(_) => {
            return Err(BenchError(format!(
                "cannot connect to {shown}: no answer within {CONNECT_TIMEOUT:?}"
            )));
        }
    };
    // A server that wants a password accepts the connection and refuses every command.
    timed(
        CONNECT_TIMEOUT,
        &format!("cannot use {shown}"),
        ::redis::cmd("PING").query_async::<Value>(&mut con),
    )
    .await?;
    Ok(con)
}

/// Sends `pipe` (built with `ignore_errors`, so error replies come back as values) and checks
/// the replies: error replies whose code `tolerated` accepts count as done; others are an
/// error naming the key of their command (`keys[i]`).
async fn run_tolerant(
    con: &mut MultiplexedConnection,
    pipe: &Pipeline,
    keys: &[&str],
    what: &str,
    tolerated: impl Fn(&str) -> bool,
) -> Result<Vec<Value>> {
    let replies: Vec<Value> = timed(ANSWER_TIMEOUT, what, pipe.query_async(con)).await?;
    for (i, r) in replies.iter().enumerate() {
        if let Value::ServerError(e) = r
            && !tolerated(e.code())
        {
            let key = keys.get(i).copied().unwrap_or("?");
            return Err(BenchError(format!("{what} ({key}): {e}")));
        }
    }
    Ok(replies)
}

/// Redis reached over `connections` multiplexed connections shared by the publishers, plus
/// one of its own per subscriber and queue consumer.
pub(crate) struct Redis {
    client: Client,
    /// The target, its password redacted.
    url: String,
    host: String,
    port: u16,
    /// `Redis 7.0.15`.
    server: String,
    /// `appendonly no`, `appendonly yes, appendfsync everysec`, …
    persistence: String,
    /// How many shared connections were opened (for the report).
    connections: usize,
    /// The shared connections (empty once closed).
    conns: Mutex<Vec<MultiplexedConnection>>,
    /// Round-robin over the shared connections.
    next: AtomicUsize,
    /// Topic or queue name → its stream keys.
    made: Mutex<HashMap<String, Vec<String>>>,
}

impl Redis {
    /// Opens `connections` multiplexed connections to `url` (`redis://[[USER]:PASS@]HOST[:PORT][/DB]`)
    /// and reads the server's version and persistence settings.
    pub(crate) async fn connect(url: &str, connections: usize) -> Result<Self> {
        let shown = redact(url);
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        match scheme.as_str() {
            "redis" => {}
            "rediss" => {
                return Err(BenchError(format!(
                    "--target {shown:?}: rediss:// (TLS) is not supported by this build (give \
                     redis://HOST[:PORT][/DB])"
                )));
            }
            _ => {
                return Err(BenchError(format!(
                    "--target {shown:?}: give redis://HOST[:PORT][/DB]"
                )));
            }
        }
        let client = Client::open(url)
            .map_err(|e| BenchError(format!("--target {shown:?} is not a Redis URL: {e}")))?;
        let (host, port) = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            _ => {
                return Err(BenchError(format!(
                    "--target {shown:?}: give redis://HOST[:PORT][/DB]"
                )));
            }
        };
        let mut conns = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            conns.push(open(&client, &shown).await?);
        }
        let mut con = conns[0].clone();
        // What the report says about the server; a server that refuses these still runs.
        let info = timed(
            ANSWER_TIMEOUT,
            "INFO server",
            ::redis::cmd("INFO")
                .arg("server")
                .query_async::<Value>(&mut con),
        )
        .await
        .ok()
        .and_then(|v| text_of(&v).map(|b| String::from_utf8_lossy(b).into_owned()))
        .unwrap_or_default();
        let config = |name: &'static str| {
            let mut con = con.clone();
            async move {
                timed(
                    ANSWER_TIMEOUT,
                    "CONFIG GET",
                    ::redis::cmd("CONFIG")
                        .arg("GET")
                        .arg(name)
                        .query_async::<Value>(&mut con),
                )
                .await
                .ok()
                .and_then(config_value)
            }
        };
        let appendonly = config("appendonly").await;
        let appendfsync = config("appendfsync").await;
        Ok(Self {
            client,
            url: shown,
            host,
            port,
            server: server_name(&info),
            persistence: persistence(appendonly.as_deref(), appendfsync.as_deref()),
            connections: conns.len(),
            conns: Mutex::new(conns),
            next: AtomicUsize::new(0),
            made: Mutex::new(HashMap::new()),
        })
    }

    /// The next shared connection, round-robin.
    fn pick(&self) -> Result<MultiplexedConnection> {
        let conns = self
            .conns
            .lock()
            .map_err(|_| BenchError::new("the driver's state is poisoned"))?;
        if conns.is_empty() {
            return Err(BenchError(format!(
                "the connections to {} are closed",
                self.url
            )));
        }
        Ok(conns[self.next.fetch_add(1, Ordering::Relaxed) % conns.len()].clone())
    }

    fn made(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Vec<String>>>> {
        self.made
            .lock()
            .map_err(|_| BenchError::new("the driver's state is poisoned"))
    }

    /// The stream keys of `name`, created by this run.
    fn keys_of(&self, name: &str) -> Result<Vec<String>> {
        self.made()?
            .get(name)
            .cloned()
            .ok_or_else(|| BenchError(format!("{name} was not created by this run")))
    }

    /// Checks that the keys of `name` are unused or streams, and remembers them.
    async fn create_keys(&self, name: &str, spec: TopicSpec) -> Result<Vec<String>> {
        let keys = stream_keys(name, spec.partitions);
        if let Some(known) = self.made()?.get(name)
            && *known != keys
        {
            return Err(BenchError(format!(
                "{name} was created with {} partition(s) already, not {}",
                known.len(),
                keys.len()
            )));
        }
        let mut pipe = ::redis::pipe();
        for k in &keys {
            pipe.cmd("TYPE").arg(k.as_str());
        }
        let what = format!("checking the keys {}", listed(&keys));
        let types: Vec<Value> =
            timed(ANSWER_TIMEOUT, &what, pipe.query_async(&mut self.pick()?)).await?;
        for (k, t) in keys.iter().zip(&types) {
            let t = text_of(t).map(String::from_utf8_lossy).unwrap_or_default();
            if t != "none" && t != "stream" {
                return Err(BenchError(format!(
                    "{what}: {k} exists and is a {t}, not a stream"
                )));
            }
        }
        // The streams exist from here on (an empty stream is made by a group created with
        // MKSTREAM, then dropped), and publishes use NOMKSTREAM: a publish that outlives
        // the topic's deletion (a cancelled run) fails instead of leaving a key behind.
        let mut pipe = ::redis::pipe();
        let mut missing = 0usize;
        for (k, t) in keys.iter().zip(&types) {
            if text_of(t).is_some_and(|t| t == b"none") {
                missing += 1;
                pipe.cmd("XGROUP")
                    .arg("CREATE")
                    .arg(k.as_str())
                    .arg(CREATE_GROUP)
                    .arg("$")
                    .arg("MKSTREAM")
                    .ignore();
                pipe.cmd("XGROUP")
                    .arg("DESTROY")
                    .arg(k.as_str())
                    .arg(CREATE_GROUP)
                    .ignore();
            }
        }
        // (An empty pipeline is an error in redis-rs: only sent when a stream is missing.)
        if missing > 0 {
            let what = format!("creating the streams {}", listed(&keys));
            timed(
                ANSWER_TIMEOUT,
                &what,
                pipe.query_async::<()>(&mut self.pick()?),
            )
            .await?;
        }
        self.made()?.insert(name.to_owned(), keys.clone());
        Ok(keys)
    }

    /// Creates the consumer group `group` at the earliest entry on every one of `keys`
    /// (creating the streams); a group that exists is kept.
    async fn create_groups(&self, keys: &[String], group: &str) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for k in keys {
            pipe.cmd("XGROUP")
                .arg("CREATE")
                .arg(k.as_str())
                .arg(group)
                .arg("0")
                .arg("MKSTREAM");
        }
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        run_tolerant(
            &mut self.pick()?,
            &pipe,
            &names,
            &format!("creating the consumer group {group}"),
            |code| code == "BUSYGROUP",
        )
        .await?;
        Ok(())
    }

    /// A connection of its own and a new consumer of `group` on every one of `keys`.
    async fn member(&self, keys: &[String], group: &str, what: &str) -> Result<Member> {
        let mut con = open(&self.client, &self.url).await?;
        let consumer = consumer_name();
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for k in keys {
            pipe.cmd("XGROUP")
                .arg("CREATECONSUMER")
                .arg(k.as_str())
                .arg(group)
                .arg(consumer.as_str());
        }
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        run_tolerant(&mut con, &pipe, &names, what, |_| false).await?;
        Ok(Member {
            con,
            keys: keys.to_vec(),
            group: group.to_owned(),
            consumer,
            what: what.to_owned(),
        })
    }
}

#[async_trait]
impl Driver for Redis {
    fn describe(&self) -> String {
        format!(
            "{} at {} ({}) directly (no Wharf): redis-rs 1.8, streams; {} multiplexed \
             connection{} shared by the publishers, one more per subscriber and queue consumer \
             (BLOCK reads); topic = stream key (--partitions N = N keys, publishers \
             round-robin), untrimmed; --durability ignored (the server's appendonly/appendfsync \
             apply); publish = one pipeline of XADD * per batch, every reply awaited; \
             subscribe = consumer group from 0, XREADGROUP NOACK COUNT --batch BLOCK; queue = \
             stream + group q, XREADGROUP COUNT window BLOCK, XACK per key in one pipeline, \
             confirmed",
            self.server,
            self.url,
            self.persistence,
            self.connections,
            if self.connections == 1 { "" } else { "s" },
        )
    }

    fn server_side(&self) -> ServerSide {
        ServerSide::Remote {
            host: self.host.clone(),
            port: self.port,
        }
    }

    async fn create_topic(&self, topic: &str, spec: TopicSpec) -> Result<()> {
        self.create_keys(topic, spec).await?;
        Ok(())
    }

    async fn create_queue(&self, queue: &str, spec: TopicSpec) -> Result<()> {
        let keys = self.create_keys(queue, spec).await?;
        self.create_groups(&keys, QUEUE_GROUP).await
    }

    async fn create_subscription(&self, topic: &str, sub: &str) -> Result<()> {
        let keys = self.keys_of(topic)?;
        self.create_groups(&keys, sub).await
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        let made = self.made()?.remove(topic);
        let keys = made.unwrap_or_else(|| stream_keys(topic, 1));
        let what = format!("deleting {}", listed(&keys));
        let mut del = ::redis::cmd("DEL");
        for k in &keys {
            del.arg(k.as_str());
        }
        let first = match self.pick() {
            Ok(mut con) => timed(ANSWER_TIMEOUT, &what, del.query_async::<Value>(&mut con)).await,
            Err(e) => Err(e),
        };
        if first.is_ok() {
            return Ok(());
        }
        // A run that failed may have left the shared connections broken (or they are
        // closed): the clean-up opens one of its own.
        let mut con = open(&self.client, &self.url)
            .await
            .map_err(|e| e.context(&what))?;
        timed(ANSWER_TIMEOUT, &what, del.query_async::<Value>(&mut con)).await?;
        Ok(())
    }

    async fn publisher(&self, topic: &str) -> Result<Box<dyn Publisher>> {
        let keys = self.keys_of(topic)?;
        Ok(Box::new(RedisPublisher {
            con: self.pick()?,
            what: format!("publishing to {}", listed(&keys)),
            keys,
            next: 0,
            cached: None,
            pipe: Pipeline::new(),
        }))
    }

    async fn subscribe(
        &self,
        topic: &str,
        sub: &str,
        max_batch: usize,
    ) -> Result<Box<dyn Subscriber>> {
        let keys = self.keys_of(topic)?;
        let what = format!("consuming subscription {sub} of {}", listed(&keys));
        let member = self.member(&keys, sub, &what).await?;
        let max_batch = max_batch.max(1);
        Ok(Box::new(RedisSubscriber {
            per_key: max_batch.div_ceil(keys.len()),
            member,
            max_batch,
            buffered: VecDeque::new(),
        }))
    }

    async fn queue_consumer(&self, queue: &str, window: usize) -> Result<Box<dyn QueueConsumer>> {
        let keys = self.keys_of(queue)?;
        let what = format!("consuming queue {}", listed(&keys));
        Ok(Box::new(RedisQueueConsumer {
            member: self.member(&keys, QUEUE_GROUP, &what).await?,
            window: window.max(1),
            held: 0,
            turn: 0,
        }))
    }

    async fn close(&self) -> Result<()> {
        // Dropping the last handle of a multiplexed connection closes it.
        let conns = std::mem::take(
            &mut *self
                .conns
                .lock()
                .map_err(|_| BenchError::new("the driver's state is poisoned"))?,
        );
        drop(conns);
        Ok(())
    }
}

struct RedisPublisher {
    /// A shared connection.
    con: MultiplexedConnection,
    /// The topic's stream keys (its partitions), used round-robin.
    keys: Vec<String>,
    next: usize,
    /// Batch id, message count and first partition of `pipe`.
    cached: Option<(u64, usize, usize)>,
    /// The `XADD`s of the cached batch.
    pipe: Pipeline,
    what: String,
}

#[async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&mut self, batch: &Batch, n: usize) -> Result<usize> {
        let n = n.min(batch.len());
        if n == 0 {
            return Ok(0);
        }
        let start = self.next % self.keys.len();
        self.next = self.next.wrapping_add(n);
        if self.cached != Some((batch.id(), n, start)) {
            let headers: Vec<(String, &str)> = batch
                .headers()
                .iter()
                .map(|(k, v)| (format!("{HEADER_PREFIX}{k}"), v.as_str()))
                .collect();
            let mut pipe = Pipeline::with_capacity(n);
            // Error replies come back as values: one refused XADD is reported with how many
            // were.
            pipe.ignore_errors();
            for (i, v) in batch.values()[..n].iter().enumerate() {
                let key = &self.keys[(start + i) % self.keys.len()];
                pipe.cmd("XADD")
                    .arg(key.as_str())
                    .arg("NOMKSTREAM")
                    .arg("*")
                    .arg(VALUE_FIELD)
                    .arg(v.as_ref());
                for (name, value) in &headers {
                    pipe.arg(name.as_str()).arg(*value);
                }
            }
            self.pipe = pipe;
            self.cached = Some((batch.id(), n, start));
        }
        let replies: Vec<Value> = timed(
            ANSWER_TIMEOUT,
            &self.what,
            self.pipe.query_async(&mut self.con),
        )
        .await?;
        let mut refused = replies.iter().filter_map(|r| match r {
            Value::ServerError(e) => Some(e),
            _ => None,
        });
        if let Some(first) = refused.next() {
            return Err(BenchError(format!(
                "{}: Redis refused {} of {n} XADDs: {first}",
                self.what,
                1 + refused.count()
            )));
        }
        if replies.len() != n {
            return Err(BenchError(format!(
                "{}: {} replies to {n} XADDs",
                self.what,
                replies.len()
            )));
        }
        Ok(n)
    }
}

/// A consumer of a group on every key of a topic, with a connection of its own.
struct Member {
    con: MultiplexedConnection,
    keys: Vec<String>,
    group: String,
    consumer: String,
    what: String,
}

impl Member {
    /// `XREADGROUP` of new entries of the keys `which` (indices into `keys`), at most `count`
    /// from each, waiting up to `timeout`; each entry handed to `each` with its key's index.
    async fn read(
        &mut self,
        which: impl Iterator<Item = usize> + Clone,
        count: usize,
        noack: bool,
        timeout: Duration,
        each: impl FnMut(usize, String, Bytes),
    ) -> Result<()> {
        let mut cmd = Cmd::new();
        cmd.arg("XREADGROUP")
            .arg("GROUP")
            .arg(self.group.as_str())
            .arg(self.consumer.as_str())
            .arg("COUNT")
            .arg(count.max(1));
        let block = block_ms(timeout);
        if let Some(ms) = block {
            cmd.arg("BLOCK").arg(ms);
        }
        if noack {
            cmd.arg("NOACK");
        }
        cmd.arg("STREAMS");
        let mut streams = 0;
        for k in which.clone() {
            cmd.arg(self.keys[k].as_str());
            streams += 1;
        }
        for _ in 0..streams {
            cmd.arg(">");
        }
        // Redis answers a BLOCK read when its time is up: waiting longer than that means the
        // server or the network is in trouble.
        let limit = block.map_or(Duration::ZERO, Duration::from_millis) + ANSWER_TIMEOUT;
        let reply: Value = timed(limit, &self.what, cmd.query_async(&mut self.con)).await?;
        read_reply(reply, &self.keys, &self.what, each)
    }

    /// Leaves the group (`XGROUP DELCONSUMER` on every key) and drops the connection.
    async fn leave(mut self) -> Result<()> {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for k in &self.keys {
            pipe.cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(k.as_str())
                .arg(self.group.as_str())
                .arg(self.consumer.as_str());
        }
        // A key deleted already has no group left to leave.
        timed(
            ANSWER_TIMEOUT,
            &self.what,
            pipe.query_async::<Vec<Value>>(&mut self.con),
        )
        .await?;
        Ok(())
    }
}

struct RedisSubscriber {
    member: Member,
    max_batch: usize,
    /// The `COUNT` of a read (per key): ⌈max_batch / keys⌉.
    per_key: usize,
    /// Entries read beyond `max_batch`, handed out first next time.
    buffered: VecDeque<Bytes>,
}

#[async_trait]
impl Subscriber for RedisSubscriber {
    async fn next_batch(&mut self, out: &mut Vec<Bytes>, timeout: Duration) -> Result<usize> {
        out.clear();
        if !self.buffered.is_empty() {
            let n = self.buffered.len().min(self.max_batch);
            out.extend(self.buffered.drain(..n));
            return Ok(out.len());
        }
        let (max_batch, buffered) = (self.max_batch, &mut self.buffered);
        let all = 0..self.member.keys.len();
        self.member
            .read(all, self.per_key, true, timeout, |_, _, v| {
                if out.len() < max_batch {
                    out.push(v);
                } else {
                    buffered.push_back(v);
                }
            })
            .await?;
        Ok(out.len())
    }

    async fn close(self: Box<Self>) -> Result<()> {
        // With NOACK nothing is pending under the member's name.
        self.member.leave().await
    }
}

struct RedisQueueConsumer {
    member: Member,
    window: usize,
    /// Deliveries handed out and not acked.
    held: usize,
    /// The next key to read when the window's room is smaller than the number of keys.
    turn: usize,
}

#[async_trait]
impl QueueConsumer for RedisQueueConsumer {
    async fn receive(
        &mut self,
        values: &mut Vec<Bytes>,
        acks: &mut Vec<AckHandle>,
        timeout: Duration,
    ) -> Result<usize> {
        values.clear();
        acks.clear();
        let room = self.window.saturating_sub(self.held);
        if room == 0 {
            // The window is full: nothing can come before an ack.
            tokio::time::sleep(timeout).await;
            return Ok(0);
        }
        let partitions = self.member.keys.len();
        let (which, count) = read_plan(room, partitions, &mut self.turn);
        self.member
            .read(which.into_iter(), count, false, timeout, |p, id, v| {
                values.push(v);
                acks.push(ack_handle(partitions, p, id));
            })
            .await?;
        self.held += values.len();
        Ok(values.len())
    }

    async fn ack(&mut self, acks: &[AckHandle]) -> Result<usize> {
        let partitions = self.member.keys.len();
        let mut ids: Vec<Vec<&str>> = vec![Vec::new(); partitions];
        for a in acks {
            let (p, id) = parse_ack(partitions, a)?;
            ids[p].push(id);
        }
        let mut pipe = ::redis::pipe();
        for (key, ids) in self.member.keys.iter().zip(&ids) {
            if !ids.is_empty() {
                pipe.cmd("XACK")
                    .arg(key.as_str())
                    .arg(QUEUE_GROUP)
                    .arg(ids.as_slice());
            }
        }
        if pipe.is_empty() {
            return Ok(0);
        }
        let member = &mut self.member;
        let replies: Vec<i64> = timed(
            ANSWER_TIMEOUT,
            &member.what,
            pipe.query_async(&mut member.con),
        )
        .await?;
        let done = usize::try_from(replies.iter().sum::<i64>()).unwrap_or(0);
        self.held = self.held.saturating_sub(done);
        Ok(done)
    }

    async fn close(self: Box<Self>) -> Result<()> {
        // Leaving the group would drop the consumer's pending entries from the group for good:
        // a consumer that holds some stays.
        if self.held == 0 {
            self.member.leave().await
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:secret@127.0.0.1:6379/2"),
            "redis://:***@127.0.0.1:6379/2"
        );
        assert_eq!(
            redact("redis://bench:secret@h:6379"),
            "redis://bench:***@h:6379"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://user@h/0"), "redis://user@h/0");
    }

    #[test]
    fn keys_per_partition() {
        assert_eq!(stream_keys("t", 1), ["bench.t"]);
        assert_eq!(stream_keys("t", 0), ["bench.t"]);
        assert_eq!(stream_keys("t", 3), ["bench.t.0", "bench.t.1", "bench.t.2"]);
        assert_eq!(
            listed(&stream_keys("t", 8)),
            "bench.t.0 … bench.t.7 (8 keys)"
        );
    }

    #[test]
    fn block_time_never_outlasts_the_timeout_and_is_never_zero() {
        assert_eq!(block_ms(Duration::ZERO), None);
        assert_eq!(block_ms(Duration::from_micros(999)), None);
        assert_eq!(block_ms(Duration::from_micros(1999)), Some(1));
        assert_eq!(block_ms(Duration::from_millis(200)), Some(200));
    }

    #[test]
    fn reads_never_bring_more_than_the_room() {
        let mut turn = 0;
        assert_eq!(read_plan(10, 1, &mut turn), (vec![0], 10));
        assert_eq!(read_plan(10, 3, &mut turn), (vec![0, 1, 2], 3));
        assert_eq!(turn, 0);
        assert_eq!(read_plan(2, 3, &mut turn), (vec![0, 1], 1));
        assert_eq!(read_plan(2, 3, &mut turn), (vec![2, 0], 1));
        assert_eq!(read_plan(1, 3, &mut turn), (vec![1], 1));
        assert_eq!(turn, 2);
    }

    #[test]
    fn ack_handles_round_trip() {
        let h = ack_handle(1, 0, "1-0".into());
        assert_eq!(h, AckHandle::Text("1-0".into()));
        assert_eq!(parse_ack(1, &h).unwrap(), (0, "1-0"));
        let h = ack_handle(3, 2, "17-4".into());
        assert_eq!(h, AckHandle::Text("2/17-4".into()));
        assert_eq!(parse_ack(3, &h).unwrap(), (2, "17-4"));
        assert!(parse_ack(3, &AckHandle::Text("3/1-0".into())).is_err());
        assert!(parse_ack(3, &AckHandle::Text("1-0".into())).is_err());
        assert!(parse_ack(1, &AckHandle::Number(1)).is_err());
    }

    #[test]
    fn server_and_persistence_for_the_report() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(server_name(info), "Redis 7.0.15");
        assert_eq!(
            server_name("redis_version:7.2.4\r\nvalkey_version:8.0.1\r\n"),
            "Valkey 8.0.1"
        );
        assert_eq!(server_name(""), "Redis (version unknown)");
        assert_eq!(persistence(Some("no"), Some("everysec")), "appendonly no");
        assert_eq!(
            persistence(Some("yes"), Some("always")),
            "appendonly yes, appendfsync always"
        );
        assert!(persistence(None, None).contains("unknown"));
        let reply = Value::Array(vec![
            Value::BulkString(b"appendonly".to_vec()),
            Value::BulkString(b"no".to_vec()),
        ]);
        assert_eq!(config_value(reply).as_deref(), Some("no"));
    }

    #[test]
    fn replies_of_both_protocols_are_read() {
        let entry = |id: &str, v: &[u8]| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"v".to_vec()),
                    Value::BulkString(v.to_vec()),
                    Value::BulkString(b"h:k".to_vec()),
                    Value::BulkString(b"x".to_vec()),
                ]),
            ])
        };
        let keys = vec!["bench.t.0".to_owned(), "bench.t.1".to_owned()];
        let resp2 = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"bench.t.1".to_vec()),
            Value::Array(vec![entry("1-0", b"a"), entry("2-0", b"b")]),
        ])]);
        let mut got = Vec::new();
        read_reply(resp2, &keys, "t", |p, id, v| got.push((p, id, v))).unwrap();
        assert_eq!(
            got,
            [
                (1, "1-0".to_owned(), Bytes::from_static(b"a")),
                (1, "2-0".to_owned(), Bytes::from_static(b"b"))
            ]
        );
        let resp3 = Value::Map(vec![(
            Value::BulkString(b"bench.t.0".to_vec()),
            Value::Array(vec![entry("3-0", b"c")]),
        )]);
        got.clear();
        read_reply(resp3, &keys, "t", |p, id, v| got.push((p, id, v))).unwrap();
        assert_eq!(got, [(0, "3-0".to_owned(), Bytes::from_static(b"c"))]);
        read_reply(Value::Nil, &keys, "t", |_, _, _| panic!("no entries")).unwrap();
        let other_key = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"elsewhere".to_vec()),
            Value::Array(vec![]),
        ])]);
        assert!(read_reply(other_key, &keys, "t", |_, _, _| {}).is_err());
    }

    #[tokio::test]
    async fn unusable_targets_are_clear_errors() {
        let e = Redis::connect("rediss://h:6380", 1).await.err().unwrap().0;
        assert!(e.contains("rediss:// (TLS) is not supported"), "{e}");
        let e = Redis::connect("nats://h:4222", 1).await.err().unwrap().0;
        assert!(e.contains("give redis://HOST"), "{e}");
        // Nothing listens on port 1: refused at once, the password not shown.
        let e = Redis::connect("redis://:secret@127.0.0.1:1", 1)
            .await
            .err()
            .unwrap()
            .0;
        assert!(
            e.starts_with("cannot connect to redis://:***@127.0.0.1:1"),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
    }

    // ---- against a live Redis at 127.0.0.1:6379 ----

    const LIVE: &str = "redis://127.0.0.1:6379";

    /// A driver for the live Redis, or `None` (the test is skipped) if there is none and this
    /// is not CI.
    async fn live() -> Option<Redis> {
        match Redis::connect(LIVE, 2).await {
            Ok(r) => Some(r),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("no Redis at {LIVE} on CI: {e}")
            }
            Err(e) => {
                println!("skipped: no Redis at {LIVE}: {e}");
                None
            }
        }
    }

    fn unique(what: &str) -> String {
        format!("test-{what}-{:016x}", rand::random::<u64>())
    }

    fn spec(partitions: u32) -> TopicSpec {
        TopicSpec {
            partitions,
            durability: None,
        }
    }

    fn values(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(format!("value {i:04} \0\u{ff}").into_bytes()))
            .collect()
    }

    /// Reads `sub` until `want` values came (or 10 s passed).
    async fn drain(sub: &mut dyn Subscriber, want: usize) -> Vec<Bytes> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut out = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            sub.next_batch(&mut out, Duration::from_millis(500))
                .await
                .unwrap();
            got.append(&mut out);
        }
        got
    }

    async fn exists(r: &Redis, keys: &[String]) -> i64 {
        let mut cmd = ::redis::cmd("EXISTS");
        for k in keys {
            cmd.arg(k.as_str());
        }
        cmd.query_async(&mut r.pick().unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn published_batch_is_consumed_through_a_subscription() {
        let Some(r) = live().await else { return };
        let topic = unique("consume");
        r.create_topic(&topic, spec(1)).await.unwrap();
        r.create_topic(&topic, spec(1)).await.unwrap();
        r.create_subscription(&topic, "s").await.unwrap();
        r.create_subscription(&topic, "s").await.unwrap();
        let sent = values(25);
        let batch = Batch::new(sent.clone(), Arc::from(Vec::new()));
        let mut p = r.publisher(&topic).await.unwrap();
        assert_eq!(p.publish(&batch, 20).await.unwrap(), 20);
        assert_eq!(p.publish(&batch, 25).await.unwrap(), 25);
        let mut sub = r.subscribe(&topic, "s", 10).await.unwrap();
        let got = drain(&mut *sub, 45).await;
        let want: Vec<Bytes> = sent[..20].iter().chain(&sent).cloned().collect();
        assert_eq!(got, want);
        // Nothing more: the empty read ends within its timeout.
        let t = Instant::now();
        let mut out = Vec::new();
        let n = sub
            .next_batch(&mut out, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(n, 0);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        sub.close().await.unwrap();
        r.delete_topic(&topic).await.unwrap();
        r.close().await.unwrap();
    }

    #[tokio::test]
    async fn partitions_and_headers() {
        let Some(r) = live().await else { return };
        let topic = unique("partitions");
        r.create_topic(&topic, spec(3)).await.unwrap();
        r.create_subscription(&topic, "s").await.unwrap();
        let sent = values(10);
        let headers: Arc<[(String, String)]> = Arc::from(vec![("k".to_owned(), "x".to_owned())]);
        let batch = Batch::new(sent.clone(), headers);
        let mut p = r.publisher(&topic).await.unwrap();
        assert_eq!(p.publish(&batch, 10).await.unwrap(), 10);
        let keys = stream_keys(&topic, 3);
        // Round-robin: 4, 3, 3 entries; each with the header as a field.
        for (k, want) in keys.iter().zip([4, 3, 3]) {
            let len: i64 = ::redis::cmd("XLEN")
                .arg(k.as_str())
                .query_async(&mut r.pick().unwrap())
                .await
                .unwrap();
            assert_eq!(len, want, "{k}");
        }
        let first: Value = ::redis::cmd("XRANGE")
            .arg(keys[0].as_str())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut r.pick().unwrap())
            .await
            .unwrap();
        let Value::Array(entries) = first else {
            panic!("{first:?}")
        };
        let (_, fields) = pair(entries.into_iter().next().unwrap()).unwrap();
        let fields: Vec<Vec<u8>> = field_pairs(fields)
            .unwrap()
            .into_iter()
            .flat_map(|(a, b)| [text_of(&a).unwrap().to_vec(), text_of(&b).unwrap().to_vec()])
            .collect();
        assert_eq!(
            fields,
            [
                b"v".to_vec(),
                sent[0].to_vec(),
                b"h:k".to_vec(),
                b"x".to_vec()
            ]
        );
        // A batch of 4 from 3 keys: COUNT 2 each, the rest buffered for the next batch.
        let mut sub = r.subscribe(&topic, "s", 4).await.unwrap();
        let mut out = Vec::new();
        let n = sub
            .next_batch(&mut out, Duration::from_secs(5))
            .await
            .unwrap();
        assert!((1..=4).contains(&n), "{n}");
        let mut got = out.clone();
        got.extend(drain(&mut *sub, 10 - n).await);
        got.sort();
        assert_eq!(got, sent);
        sub.close().await.unwrap();
        r.delete_topic(&topic).await.unwrap();
        assert_eq!(exists(&r, &keys).await, 0);
    }

    #[tokio::test]
    async fn queue_receive_and_ack() {
        let Some(r) = live().await else { return };
        for partitions in [1, 2] {
            let queue = unique("queue");
            r.create_queue(&queue, spec(partitions)).await.unwrap();
            r.create_queue(&queue, spec(partitions)).await.unwrap();
            let sent = values(30);
            let batch = Batch::new(sent.clone(), Arc::from(Vec::new()));
            let mut p = r.publisher(&queue).await.unwrap();
            assert_eq!(p.publish(&batch, 30).await.unwrap(), 30);
            let mut c = r.queue_consumer(&queue, 8).await.unwrap();
            let (mut vals, mut acks) = (Vec::new(), Vec::new());
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while got.len() < 30 && Instant::now() < deadline {
                let n = c
                    .receive(&mut vals, &mut acks, Duration::from_millis(500))
                    .await
                    .unwrap();
                assert!(n <= 8, "window exceeded: {n}");
                assert_eq!(acks.len(), n);
                assert_eq!(c.ack(&acks).await.unwrap(), n);
                got.append(&mut vals);
            }
            got.sort();
            assert_eq!(got, sent);
            // Acked twice: Redis acks nothing more.
            assert_eq!(c.ack(&acks).await.unwrap(), 0);
            // Everything acked: an empty receive within its timeout, and nothing pending.
            let t = Instant::now();
            let n = c
                .receive(&mut vals, &mut acks, Duration::from_millis(100))
                .await
                .unwrap();
            assert_eq!(n, 0);
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            for k in stream_keys(&queue, partitions) {
                let pending: Value = ::redis::cmd("XPENDING")
                    .arg(k.as_str())
                    .arg(QUEUE_GROUP)
                    .query_async(&mut r.pick().unwrap())
                    .await
                    .unwrap();
                let Value::Array(summary) = pending else {
                    panic!("{pending:?}")
                };
                assert_eq!(summary.first(), Some(&Value::Int(0)), "{k}");
            }
            c.close().await.unwrap();
            r.delete_topic(&queue).await.unwrap();
        }
    }

    #[tokio::test]
    async fn two_subscriptions_both_receive_everything() {
        let Some(r) = live().await else { return };
        let topic = unique("fanout");
        r.create_topic(&topic, spec(2)).await.unwrap();
        r.create_subscription(&topic, "a").await.unwrap();
        r.create_subscription(&topic, "b").await.unwrap();
        let sent = values(40);
        let batch = Batch::new(sent.clone(), Arc::from(Vec::new()));
        let mut p = r.publisher(&topic).await.unwrap();
        assert_eq!(p.publish(&batch, 40).await.unwrap(), 40);
        let mut a = r.subscribe(&topic, "a", 16).await.unwrap();
        let mut b = r.subscribe(&topic, "b", 16).await.unwrap();
        let (mut got_a, mut got_b) = tokio::join!(drain(&mut *a, 40), drain(&mut *b, 40));
        got_a.sort();
        got_b.sort();
        assert_eq!(got_a, sent);
        assert_eq!(got_b, sent);
        a.close().await.unwrap();
        b.close().await.unwrap();
        r.delete_topic(&topic).await.unwrap();
    }

    #[tokio::test]
    async fn delete_topic_removes_every_key() {
        let Some(r) = live().await else { return };
        let topic = unique("delete");
        r.create_topic(&topic, spec(3)).await.unwrap();
        r.create_subscription(&topic, "s").await.unwrap();
        let batch = Batch::new(values(6), Arc::from(Vec::new()));
        let mut p = r.publisher(&topic).await.unwrap();
        assert_eq!(p.publish(&batch, 6).await.unwrap(), 6);
        let keys = stream_keys(&topic, 3);
        assert_eq!(exists(&r, &keys).await, 3);
        r.delete_topic(&topic).await.unwrap();
        assert_eq!(exists(&r, &keys).await, 0);
        // The driver forgot the topic.
        assert!(r.publisher(&topic).await.is_err());
        // A key of another type is refused.
        let other = unique("string");
        let _: () = ::redis::cmd("SET")
            .arg(format!("bench.{other}"))
            .arg("x")
            .query_async(&mut r.pick().unwrap())
            .await
            .unwrap();
        let e = r.create_topic(&other, spec(1)).await.unwrap_err().0;
        assert!(e.contains("is a string, not a stream"), "{e}");
        r.delete_topic(&other).await.unwrap();
        assert!(r.describe().starts_with("Redis "), "{}", r.describe());
    }
}
