//! Configuration: `wharf.toml` < `WHARF_*` environment variables < command-line flags, merged
//! into one typed [`Config`] and validated before anything starts. Errors name the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::auth::Grant;

/// A configuration error, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A key has a bad value.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The key, e.g. `limits.max_wait_ms` (or the environment variable).
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The listener.
    pub server: ServerConfig,
    /// Which message engine runs under the API.
    pub engine: EngineConfig,
    /// Where and how data is kept.
    pub storage: StorageConfig,
    /// Limits on requests and connections.
    pub limits: Limits,
    /// Bearer tokens.
    pub auth: AuthConfig,
    /// TLS.
    pub tls: TlsConfig,
    /// Cross-origin requests from browsers.
    pub cors: CorsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Apps that can be called (`[apps.NAME]`: `policy`, `grpc_services`, static `instances`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub apps: std::collections::BTreeMap<String, wharf_invoke::AppConfig>,
}

/// `[server]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Allow a non-loopback listener without tokens.
    pub allow_anonymous: bool,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7400".into(),
            allow_anonymous: false,
            shutdown_grace_ms: 30_000,
        }
    }
}

/// `[engine]`: the message engine under the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `embedded` (Wharf's own storage in `storage.data`), `nats` (NATS JetStream) or
    /// `rabbitmq` (RabbitMQ 3.10+ streams; topics and messages only so far).
    pub kind: String,
    /// NATS server URL(s), comma-separated (`kind = "nats"`).
    pub nats_url: String,
    /// Prefix of the streams, subjects and KV bucket Wharf creates in NATS; nodes with the
    /// same prefix on the same NATS are one Wharf.
    pub nats_prefix: String,
    /// Replicas of each stream (1 on one NATS server; 3 or 5 on a cluster).
    pub nats_replicas: u64,
    /// AMQP URL of RabbitMQ (`kind = "rabbitmq"`).
    pub amqp_url: String,
    /// Prefix of the queues Wharf declares in RabbitMQ; nodes with the same prefix on the
    /// same RabbitMQ are one Wharf.
    pub amqp_prefix: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: "embedded".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_prefix: "wharf".into(),
            nats_replicas: 1,
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            amqp_prefix: "wharf".into(),
        }
    }
}

/// `[storage]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The data directory of the embedded engine.
    pub data: PathBuf,
    /// How often retention (max age, max bytes) is applied.
    pub retention_check_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("./wharf-data"),
            retention_check_ms: 60_000,
        }
    }
}

/// `[limits]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest message (key + value + headers) accepted, whatever the topic allows.
    pub max_message_bytes: u64,
    /// Most messages in one publish.
    pub max_batch_messages: usize,
    /// Most headers on one message.
    pub max_headers: usize,
    /// Most bytes of header names and values on one message.
    pub max_header_bytes: usize,
    /// Largest request body.
    pub max_request_bytes: usize,
    /// Longest long-poll `wait_ms`.
    pub max_wait_ms: u64,
    /// Most messages or deliveries one read, fetch or receive returns.
    pub max_read_messages: usize,
    /// Most open connections; more are answered `503 too_many_connections`.
    pub max_connections: usize,
    /// A client must send its request headers within this time.
    pub header_read_timeout_ms: u64,
    /// A client must send its request body within this time (`408 request_timeout`).
    pub body_read_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_batch_messages: 1000,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            max_request_bytes: 32 * 1024 * 1024,
            max_wait_ms: 30_000,
            max_read_messages: 1000,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
        }
    }
}

/// `[auth]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The tokens; none means every request is allowed (only on a loopback listener, unless
    /// `server.allow_anonymous`).
    pub tokens: Vec<TokenConfig>,
}

/// One `[[auth.tokens]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs.
    pub name: String,
    /// The secret (at least 16 characters).
    pub token: String,
    /// `publish`, `consume`, `admin`, `invoke`, `metrics`, each optionally `:pattern` (`*` matches any
    /// characters; no pattern = every name).
    pub scopes: Vec<String>,
}

/// `[tls]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; empty = plain TCP.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// `[cors]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to call the API from a browser (`"*"` = any); empty = none.
    pub allowed_origins: Vec<String>,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `wharf_server=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// The documented default configuration, as printed by `wharf config default`.
pub const DEFAULT_TOML: &str = r#"# wharf.toml — every key, with its default. Precedence: this file < WHARF_* environment
# variables (WHARF_<SECTION>_<KEY>, e.g. WHARF_LIMITS_MAX_WAIT_MS=5000; lists comma-separated)
# < command-line flags.

[server]
# Address of the one listener (REST, SSE, metrics; gRPC joins it).
listen = "127.0.0.1:7400"
# A listener on a non-loopback address refuses to start without [[auth.tokens]] unless this
# is true.
allow_anonymous = false
# On SIGINT/SIGTERM: stop accepting, give in-flight requests this long, make state durable.
shutdown_grace_ms = 30000

[engine]
# The message engine: "embedded" (Wharf's own storage, in storage.data), "nats" (NATS
# JetStream 2.9+; several Wharf nodes with one nats_prefix on one NATS are one Wharf), or
# "rabbitmq" (RabbitMQ 3.10+ streams: topics, publish and read so far; subscriptions answer
# not_supported). docs/ENGINES.md says what each engine does and lacks.
kind = "embedded"
nats_url = "nats://127.0.0.1:4222"
nats_prefix = "wharf"
# Replicas of each stream: 1 on one NATS server, 3 or 5 on a cluster.
nats_replicas = 1
amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f"
amqp_prefix = "wharf"

[storage]
# Data directory of the embedded engine.
data = "./wharf-data"
# How often retention (topics' max age / max bytes) deletes old segments.
retention_check_ms = 60000

[limits]
# Largest message (key + value + headers) the server accepts; a topic may allow less.
max_message_bytes = 1048576
# Most messages in one publish request.
max_batch_messages = 1000
# Most headers on one message, and most bytes of header names + values on one message.
max_headers = 64
max_header_bytes = 16384
# Largest request body.
max_request_bytes = 33554432
# Longest long-poll wait (wait_ms) of reads, fetches and receives.
max_wait_ms = 30000
# Most messages (or deliveries) one read, fetch or receive returns.
max_read_messages = 1000
# Most open connections; more get 503 too_many_connections.
max_connections = 10000
# A client must send its request headers within this time, and its body within that one.
header_read_timeout_ms = 10000
body_read_timeout_ms = 30000

[auth]
# Bearer tokens. None = no authentication (allowed on a loopback listener only, unless
# server.allow_anonymous). Scopes: publish, consume, admin, invoke, metrics — each optionally
# limited to names matching a pattern, e.g. "publish:orders.*" ('*' matches anything).
tokens = []
# [[auth.tokens]]
# name = "orders-service"
# token = "a-long-random-secret-of-16-chars-or-more"
# scopes = ["publish:orders.*", "consume:payments.*"]

[tls]
# PEM certificate chain and private key; both empty = plain TCP.
cert_file = ""
key_file = ""

[cors]
# Browser origins allowed to call the API, e.g. ["https://app.example.com"]; "*" = any.
allowed_origins = []

[log]
# A tracing filter (e.g. "info", "wharf_server=debug,info"); "text" or "json" lines on stderr.
level = "info"
format = "text"

# Apps Wharf calls (service invocation and push delivery); none by default. Instances can
# also be registered at run time (PUT /v1/apps/{app}/instances/{id}, the SDK, `wharf apps`).
# Every policy key is optional; these are the defaults.
# [apps.orders]
# grpc_services = ["shop.Orders"]       # gRPC calls to these services go to this app
# instances = [{ id = "a", address = "http://127.0.0.1:8081", http2 = false }]
# [apps.orders.policy]
# timeout_ms = 15000                    # deadline when the call brings none (and its upper bound)
# per_try_timeout_ms = 5000
# max_concurrency = 1000                # calls in flight; more are refused at once (429)
# rate_limit_per_second = 0             # 0 = no rate limit
# [apps.orders.policy.retry]
# max_attempts = 3                      # the first included; at most 10
# backoff_base_ms = 25
# backoff_max_ms = 1000
# jitter = 1.0                          # 0 = exact schedule, 1 = full jitter
# budget_ratio = 0.2                    # retries at most 20% of calls ...
# budget_min_per_second = 10            # ... plus this many per second
# idempotent_routes = []                # e.g. ["POST /orders/*", "/shop.Orders/Get"]
# [apps.orders.policy.breaker]
# consecutive_failures = 5
# ejection_ms = 5000                    # doubles after each failed probe ...
# max_ejection_ms = 60000               # ... up to this
"#;

/// Command-line overrides (the highest precedence).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--data`
    pub data: Option<PathBuf>,
    /// `--allow-anonymous`
    pub allow_anonymous: bool,
    /// `--log-level`
    pub log_level: Option<String>,
    /// `--engine`
    pub engine: Option<String>,
    /// `--nats-url`
    pub nats_url: Option<String>,
    /// `--amqp-url`
    pub amqp_url: Option<String>,
}

impl Config {
    /// Loads `path` (if given; a missing file is an error), applies `WHARF_*` variables from
    /// `env` and then `overrides`, and validates the result.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut config: Config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                path: path.map_or_else(|| PathBuf::from("<environment>"), ToOwned::to_owned),
                message: e.to_string(),
            })?;
        if let Some(listen) = &overrides.listen {
            config.server.listen.clone_from(listen);
        }
        if let Some(data) = &overrides.data {
            config.storage.data.clone_from(data);
        }
        if overrides.allow_anonymous {
            config.server.allow_anonymous = true;
        }
        if let Some(level) = &overrides.log_level {
            config.log.level.clone_from(level);
        }
        if let Some(kind) = &overrides.engine {
            config.engine.kind.clone_from(kind);
        }
        if let Some(url) = &overrides.nats_url {
            config.engine.nats_url.clone_from(url);
        }
        if let Some(url) = &overrides.amqp_url {
            config.engine.amqp_url.clone_from(url);
        }
        config.validate()?;
        Ok(config)
    }

    /// The listen address (validated by [`Config::validate`]).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        if let Ok(addr) = self.server.listen.parse() {
            return Ok(addr);
        }
        // A host name (e.g. `localhost:7400`): its first address.
        std::net::ToSocketAddrs::to_socket_addrs(self.server.listen.as_str())
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                invalid(
                    "server.listen",
                    format!(
                        "{:?} is not an address like 127.0.0.1:7400 or localhost:7400",
                        self.server.listen
                    ),
                )
            })
    }

    /// Checks every key; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr = self.listen_addr()?;
        if !matches!(self.engine.kind.as_str(), "embedded" | "nats" | "rabbitmq") {
            return Err(invalid(
                "engine.kind",
                format!(
                    "{:?} is not an engine: use \"embedded\", \"nats\" or \"rabbitmq\"",
                    self.engine.kind
                ),
            ));
        }
        range("engine.nats_replicas", self.engine.nats_replicas, 1, 5)?;
        for (name, app) in &self.apps {
            app.validate(name)
                .map_err(|e| invalid(format!("apps.{name}"), e.to_string()))?;
        }
        let l = &self.limits;
        range("limits.max_message_bytes", l.max_message_bytes, 1, 16 << 20)?;
        range(
            "limits.max_batch_messages",
            l.max_batch_messages as u64,
            1,
            100_000,
        )?;
        range("limits.max_headers", l.max_headers as u64, 0, 100)?;
        range(
            "limits.max_header_bytes",
            l.max_header_bytes as u64,
            0,
            1 << 20,
        )?;
        range(
            "limits.max_request_bytes",
            l.max_request_bytes as u64,
            1024,
            1 << 30,
        )?;
        range("limits.max_wait_ms", l.max_wait_ms, 0, 3_600_000)?;
        range(
            "limits.max_read_messages",
            l.max_read_messages as u64,
            1,
            100_000,
        )?;
        range(
            "limits.max_connections",
            l.max_connections as u64,
            1,
            1 << 20,
        )?;
        range(
            "limits.header_read_timeout_ms",
            l.header_read_timeout_ms,
            100,
            3_600_000,
        )?;
        range(
            "limits.body_read_timeout_ms",
            l.body_read_timeout_ms,
            100,
            3_600_000,
        )?;
        range(
            "server.shutdown_grace_ms",
            self.server.shutdown_grace_ms,
            0,
            3_600_000,
        )?;
        range(
            "storage.retention_check_ms",
            self.storage.retention_check_ms,
            100,
            86_400_000,
        )?;
        if self.storage.data.as_os_str().is_empty() {
            return Err(invalid("storage.data", "must not be empty"));
        }
        let mut names = std::collections::HashSet::new();
        let mut secrets = std::collections::HashSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            if t.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if !names.insert(&t.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is used twice", t.name),
                ));
            }
            if t.token.chars().count() < 16 || t.token.chars().any(char::is_whitespace) {
                return Err(invalid(
                    format!("{key}.token"),
                    "must be at least 16 characters without whitespace",
                ));
            }
            if !secrets.insert(&t.token) {
                return Err(invalid(format!("{key}.token"), "is used by another token"));
            }
            if t.scopes.is_empty() {
                return Err(invalid(format!("{key}.scopes"), "must name at least one"));
            }
            for s in &t.scopes {
                Grant::parse(s).map_err(|m| invalid(format!("{key}.scopes"), m))?;
            }
        }
        if self.auth.tokens.is_empty() && !addr.ip().is_loopback() && !self.server.allow_anonymous {
            return Err(invalid(
                "server.listen",
                format!(
                    "{addr} is reachable from other machines and no [[auth.tokens]] are \
                     configured; add tokens, or pass --allow-anonymous to run it open"
                ),
            ));
        }
        match (self.tls.cert_file.is_empty(), self.tls.key_file.is_empty()) {
            (true, true) | (false, false) => {}
            (false, true) => return Err(invalid("tls.key_file", "is needed with tls.cert_file")),
            (true, false) => return Err(invalid("tls.cert_file", "is needed with tls.key_file")),
        }
        for (i, o) in self.cors.allowed_origins.iter().enumerate() {
            let ok = o == "*"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !o.ends_with('/')
                    && http::HeaderValue::from_str(o).is_ok());
            if !ok {
                return Err(invalid(
                    format!("cors.allowed_origins[{i}]"),
                    format!("{o:?} is not an origin like \"https://app.example.com\" or \"*\""),
                ));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{:?} is not a filter like \"info\"", self.log.level),
            ));
        }
        if self.log.format != "text" && self.log.format != "json" {
            return Err(invalid("log.format", "must be \"text\" or \"json\""));
        }
        Ok(())
    }
}

fn range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(key, format!("{value} is outside {min}..={max}")))
    }
}

/// Applies `WHARF_<SECTION>_<KEY>` variables to the keys the default configuration has,
/// typed like the default value. Other `WHARF_*` variables are not configuration.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default())
        .map_err(|e| invalid("<defaults>", e.to_string()))?;
    let mut known: BTreeMap<String, (String, String, toml::Value)> = BTreeMap::new();
    for (section, keys) in &defaults {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for (key, value) in keys {
            let name = format!("WHARF_{}_{}", section, key).to_ascii_uppercase();
            known.insert(name, (section.clone(), key.clone(), value.clone()));
        }
    }
    for (name, raw) in env {
        let Some((section, key, default)) = known.get(&name) else {
            continue;
        };
        let value = match default {
            toml::Value::String(_) => toml::Value::String(raw.clone()),
            toml::Value::Integer(_) => toml::Value::Integer(
                raw.trim()
                    .parse()
                    .map_err(|_| invalid(&name, format!("{raw:?} is not an integer")))?,
            ),
            toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(invalid(&name, format!("{raw:?} is not true or false"))),
            }),
            toml::Value::Array(_) if key == "tokens" => {
                return Err(invalid(
                    &name,
                    "tokens cannot be set from the environment; use wharf.toml",
                ));
            }
            toml::Value::Array(_) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            _ => continue,
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry.as_table_mut() {
            Some(t) => {
                t.insert(key.clone(), value);
            }
            None => return Err(invalid(section, "must be a table")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_documented_default_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).expect("parses");
        assert_eq!(parsed, Config::default());
        // Every key of the typed default is spelled out in the template.
        let template: toml::Table = toml::from_str(DEFAULT_TOML).expect("parses");
        let defaults = toml::Table::try_from(Config::default()).expect("serialises");
        for (section, keys) in &defaults {
            for key in keys.as_table().expect("table").keys() {
                assert!(
                    template
                        .get(section)
                        .and_then(|s| s.as_table())
                        .is_some_and(|s| s.contains_key(key)),
                    "{section}.{key} is not documented in DEFAULT_TOML"
                );
            }
        }
        Config::default().validate().expect("valid");
    }

    #[test]
    fn apps_in_the_file_are_typed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wharf.toml");
        std::fs::write(
            &path,
            "[apps.orders]\ngrpc_services = [\"shop.Orders\"]\n\
             instances = [{ id = \"a\", address = \"http://127.0.0.1:8081\" }]\n\
             [apps.orders.policy.retry]\nmax_attempts = 2\n",
        )
        .expect("write");
        let c = Config::load(Some(&path), Vec::new(), &Overrides::default()).expect("valid");
        let app = &c.apps["orders"];
        assert_eq!(app.policy.retry.max_attempts, 2);
        assert_eq!(app.policy.timeout_ms, 15_000, "unset keys take the default");
        assert_eq!(app.instances[0].address, "http://127.0.0.1:8081");
        std::fs::write(
            &path,
            "[apps.orders]\ninstances = [{ id = \"a\", address = \"ftp://x\" }]\n",
        )
        .expect("write");
        let e = Config::load(Some(&path), Vec::new(), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("apps.orders"), "{e}");
        std::fs::write(&path, "[apps.orders.policy]\nretries = 3\n").expect("write");
        assert!(Config::load(Some(&path), Vec::new(), &Overrides::default()).is_err());
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wharf.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:1\"\n[limits]\nmax_wait_ms = 5\nmax_headers = 7\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&path),
            env(&[
                ("WHARF_LIMITS_MAX_WAIT_MS", "9"),
                ("WHARF_SERVER_LISTEN", "127.0.0.1:2"),
                (
                    "WHARF_CORS_ALLOWED_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("WHARF_PROPTEST_CASES", "not config"),
            ]),
            &Overrides {
                listen: Some("127.0.0.1:3".into()),
                ..Overrides::default()
            },
        )
        .expect("loads");
        assert_eq!(c.limits.max_wait_ms, 9);
        assert_eq!(c.limits.max_headers, 7);
        assert_eq!(c.server.listen, "127.0.0.1:3");
        assert_eq!(
            c.cors.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::load(
            None,
            env(&[("WHARF_LIMITS_MAX_WAIT_MS", "x")]),
            &Overrides::default(),
        )
        .expect_err("bad int");
        assert!(e.to_string().contains("WHARF_LIMITS_MAX_WAIT_MS"), "{e}");

        let e = Config::load(
            None,
            env(&[("WHARF_LIMITS_MAX_WAIT_MS", "99999999")]),
            &Overrides::default(),
        )
        .expect_err("out of range");
        assert!(e.to_string().contains("limits.max_wait_ms"), "{e}");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wharf.toml");
        std::fs::write(&path, "[limits]\nmax_wiat_ms = 5\n").expect("write");
        let e = Config::load(Some(&path), env(&[]), &Overrides::default()).expect_err("typo");
        assert!(e.to_string().contains("max_wiat_ms"), "{e}");
    }

    #[test]
    fn open_listener_without_tokens_needs_allow_anonymous() {
        let o = Overrides {
            listen: Some("0.0.0.0:7400".into()),
            ..Overrides::default()
        };
        let e = Config::load(None, env(&[]), &o).expect_err("refused");
        assert!(e.to_string().contains("server.listen"), "{e}");
        let o = Overrides {
            allow_anonymous: true,
            ..o
        };
        Config::load(None, env(&[]), &o).expect("allowed");
    }

    #[test]
    fn tokens_are_checked() {
        let mut c = Config::default();
        c.auth.tokens.push(TokenConfig {
            name: "a".into(),
            token: "short".into(),
            scopes: vec!["publish".into()],
        });
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("auth.tokens[0].token")
        );
        c.auth.tokens[0].token = "0123456789abcdef".into();
        c.auth.tokens[0].scopes = vec!["publsh:x".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("auth.tokens[0].scopes")
        );
        c.auth.tokens[0].scopes = vec!["publish:orders.*".into(), "admin".into()];
        c.validate().expect("valid");
    }
}
