//! `wharf apps list|describe|register|deregister|delete|put`: the app registry, the services
//! Wharf calls (invocation, push delivery), with their instances' health and breaker state.

use std::time::Duration;

use serde_json::{Value, json};
use wharf_client::{ErrorKind, Instance, proto};

use super::output::{self, Table, fields, millis_text};
use super::{CmdError, CmdResult, ConnArgs, Ctx};

/// Flags of `wharf apps`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  wharf apps                                   # the same as `wharf apps list`
  wharf apps register orders a http://127.0.0.1:8081 --ttl-ms 10000
  wharf apps put orders --max-concurrency 100 --max-attempts 2 --grpc-service shop.Orders
  wharf apps describe orders
  wharf apps deregister orders a
  wharf apps delete orders")]
pub(crate) struct AppsArgs {
    /// What to do (default: list).
    #[command(subcommand)]
    cmd: Option<AppsCommand>,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

#[derive(Debug, clap::Subcommand)]
enum AppsCommand {
    /// List every app and its instances: breaker, state, latency, in-flight calls, attempts,
    /// failures, expiry (the default).
    #[command(visible_alias = "ls")]
    List,
    /// Show an app: its policy (every setting), gRPC services, breaker and instances.
    #[command(visible_alias = "get")]
    Describe {
        /// The app.
        app: String,
    },
    /// Register an instance of an app (the app is created with the default policy if it does
    /// not exist), or renew its TTL. Prints the instance.
    Register {
        /// The app.
        app: String,
        /// The instance's id (unique within the app).
        id: String,
        /// Where it listens: http://HOST:PORT.
        address: String,
        /// Drop it unless registered again within this many ms (100..=86400000) [default:
        /// until deregistered].
        #[arg(long, value_name = "MS")]
        ttl_ms: Option<u64>,
        /// Speak HTTP/2 (h2c) to it for plain HTTP calls too (gRPC always uses HTTP/2).
        #[arg(long)]
        http2: bool,
    },
    /// Remove an instance of an app.
    Deregister {
        /// The app.
        app: String,
        /// The instance.
        id: String,
        /// Succeed if there is no such instance.
        #[arg(long)]
        if_exists: bool,
    },
    /// Delete an app and its instances.
    #[command(visible_alias = "rm")]
    Delete {
        /// The app.
        app: String,
        /// Succeed if there is no such app.
        #[arg(long)]
        if_exists: bool,
    },
    /// Create an app or replace its policy, gRPC services and static instances (registered
    /// instances are kept). Every policy setting not given takes the server's default, not
    /// its current value. Prints the app.
    Put(PutArgs),
}

#[derive(Debug, clap::Args)]
struct PutArgs {
    /// The app.
    app: String,
    /// A gRPC service routed to this app, e.g. `shop.Orders` (repeatable).
    #[arg(long = "grpc-service", value_name = "NAME")]
    grpc_services: Vec<String>,
    /// A static instance that never expires, `ID=http://HOST:PORT` (repeatable).
    #[arg(long = "instance", value_name = "ID=ADDRESS", value_parser = parse_static_instance)]
    instances: Vec<(String, String)>,
    /// The deadline of a call that brings none, and the bound of one that does, in ms
    /// [default: 15000].
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Each attempt's own timeout (until the response headers), in ms [default: 5000].
    #[arg(long, value_name = "MS")]
    per_try_timeout_ms: Option<u64>,
    /// Calls in flight at once; more are refused at once [default: 1000].
    #[arg(long, value_name = "N")]
    max_concurrency: Option<u64>,
    /// Calls per second; 0 = no limit [default: 0].
    #[arg(long, value_name = "PER_SECOND")]
    rate_limit: Option<u32>,
    /// Attempts per call, the first included (1 = never retry) [default: 3].
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Backoff before the first retry, in ms; doubles each retry [default: 25].
    #[arg(long, value_name = "MS")]
    backoff_base_ms: Option<u64>,
    /// Upper bound of the retry backoff, in ms [default: 1000].
    #[arg(long, value_name = "MS")]
    backoff_max_ms: Option<u64>,
    /// Random fraction taken off each backoff: 0 = exact schedule, 1 = full jitter
    /// [default: 1].
    #[arg(long, value_name = "FRACTION")]
    jitter: Option<f64>,
    /// Retries allowed as a fraction of calls (0.2 = 20%) [default: 0.2].
    #[arg(long, value_name = "FRACTION")]
    budget_ratio: Option<f32>,
    /// Retries per second always allowed, whatever the ratio [default: 10].
    #[arg(long, value_name = "N")]
    budget_min_per_second: Option<u32>,
    /// A route whose calls may be retried although its method is not idempotent:
    /// `"POST /orders/*"` or a gRPC method `/shop.Orders/Get` (repeatable).
    #[arg(long = "idempotent-route", value_name = "ROUTE")]
    idempotent_routes: Vec<String>,
    /// Consecutive failures that eject an instance [default: 5].
    #[arg(long, value_name = "N")]
    breaker_failures: Option<u32>,
    /// How long the first ejection lasts, in ms; each failed probe doubles it [default:
    /// 5000].
    #[arg(long, value_name = "MS")]
    ejection_ms: Option<u64>,
    /// Upper bound of an ejection, in ms [default: 60000].
    #[arg(long, value_name = "MS")]
    max_ejection_ms: Option<u64>,
}

impl PutArgs {
    fn request(self) -> proto::PutAppRequest {
        proto::PutAppRequest {
            name: self.app,
            policy: Some(proto::AppPolicy {
                timeout_ms: self.timeout_ms,
                per_try_timeout_ms: self.per_try_timeout_ms,
                max_concurrency: self.max_concurrency,
                rate_limit_per_second: self.rate_limit,
                retry_max_attempts: self.max_attempts,
                retry_backoff_base_ms: self.backoff_base_ms,
                retry_backoff_max_ms: self.backoff_max_ms,
                retry_jitter: self.jitter,
                retry_budget_ratio: self.budget_ratio,
                retry_budget_min_per_second: self.budget_min_per_second,
                idempotent_routes: self.idempotent_routes,
                breaker_consecutive_failures: self.breaker_failures,
                breaker_ejection_ms: self.ejection_ms,
                breaker_max_ejection_ms: self.max_ejection_ms,
            }),
            grpc_services: self.grpc_services,
            instances: self
                .instances
                .into_iter()
                .map(|(id, address)| proto::StaticInstance {
                    id,
                    address,
                    http2: false,
                })
                .collect(),
        }
    }
}

/// `id=address`.
fn parse_static_instance(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((id, address)) if !id.trim().is_empty() && !address.trim().is_empty() => {
            Ok((id.trim().to_owned(), address.trim().to_owned()))
        }
        _ => Err(format!("{s:?} is not an instance: ID=http://HOST:PORT")),
    }
}

pub(crate) async fn run(ctx: &Ctx, args: AppsArgs) -> CmdResult {
    let client = ctx.connect().await?;
    match args.cmd.unwrap_or(AppsCommand::List) {
        AppsCommand::List => {
            let mut apps = client.list_apps().await?;
            apps.sort_by(|a, b| a.name.cmp(&b.name));
            if ctx.json() {
                let list: Vec<Value> = apps.iter().map(app_json).collect();
                return output::json_document(&json!({ "apps": list }));
            }
            let mut t = Table::new([
                "APP",
                "BREAKER",
                "INSTANCE",
                "ADDRESS",
                "STATE",
                "LATENCY",
                "IN-FLIGHT",
                "ATTEMPTS",
                "FAILURES",
                "EXPIRES",
            ]);
            for app in &apps {
                if app.instances.is_empty() {
                    let mut row = vec![app.name.clone(), app.breaker.clone()];
                    row.extend(std::iter::repeat_n("-".to_owned(), 8));
                    t.row(row);
                }
                for i in &app.instances {
                    let mut row = vec![app.name.clone(), app.breaker.clone()];
                    row.extend(instance_cells(i));
                    t.row(row);
                }
            }
            t.print()
        }
        AppsCommand::Describe { app } => {
            let app = client.get_app(app).await?;
            print_app(ctx, &app)
        }
        AppsCommand::Register {
            app,
            id,
            address,
            ttl_ms,
            http2,
        } => {
            let instance = Instance {
                address,
                ttl: ttl_ms.map(Duration::from_millis),
                http2,
            };
            let i = client.register_instance(app.clone(), id, &instance).await?;
            if ctx.json() {
                let mut doc = instance_json(&i);
                doc["app"] = json!(app);
                return output::json_document(&doc);
            }
            output::write_stdout(&fields(&[
                ("app", app),
                ("instance", i.id.clone()),
                ("address", i.address.clone()),
                ("http2", yes_no(i.http2)),
                ("state", i.state.clone()),
                ("expires", expires_text(i.expires_in_ms)),
            ]))
        }
        AppsCommand::Deregister { app, id, if_exists } => {
            let removed = match client.deregister_instance(app.clone(), id.clone()).await {
                Ok(()) => true,
                Err(e) if if_exists && e.kind() == ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            };
            if ctx.json() {
                output::json_document(
                    &json!({ "app": app, "instance": id, "deregistered": removed }),
                )
            } else if removed {
                output::line(&format!("deregistered instance {id} of app {app}"))
            } else {
                output::line(&format!("no instance {id} of app {app}"))
            }
        }
        AppsCommand::Delete { app, if_exists } => {
            let deleted = match client.delete_app(app.clone()).await {
                Ok(()) => true,
                Err(e) if if_exists && e.kind() == ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            };
            if ctx.json() {
                output::json_document(&json!({ "app": app, "deleted": deleted }))
            } else if deleted {
                output::line(&format!("deleted app {app}"))
            } else {
                output::line(&format!("no app {app}"))
            }
        }
        AppsCommand::Put(p) => {
            if p.jitter.is_some_and(|j| !j.is_finite()) {
                return Err(CmdError::usage("--jitter must be a number from 0 to 1"));
            }
            if p.budget_ratio.is_some_and(|r| !r.is_finite()) {
                return Err(CmdError::usage("--budget-ratio must be a number"));
            }
            let app = client.put_app(p.request()).await?;
            print_app(ctx, &app)
        }
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// `static` for an instance that never expires, else the time left: `9.2s`, `4m05s`,
/// `2h30m`.
fn expires_text(ms: u64) -> String {
    if ms == 0 {
        return "static".into();
    }
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs / 60 % 60)
    }
}

/// INSTANCE, ADDRESS, STATE, LATENCY, IN-FLIGHT, ATTEMPTS, FAILURES, EXPIRES.
fn instance_cells(i: &proto::Instance) -> Vec<String> {
    vec![
        i.id.clone(),
        i.address.clone(),
        i.state.clone(),
        format!("{:.1}", i.latency_ewma_ms),
        i.in_flight.to_string(),
        i.attempts.to_string(),
        i.failures.to_string(),
        expires_text(i.expires_in_ms),
    ]
}

/// An `f32` as the decimal it was written as (`0.2`, not `0.20000000298023224`).
fn f32_json(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// An instance as JSON, like the REST API's (`expires_in_ms` null: static;
/// `ejected_for_ms` null: not ejected).
pub(crate) fn instance_json(i: &proto::Instance) -> Value {
    json!({
        "id": i.id,
        "address": i.address,
        "http2": i.http2,
        "expires_in_ms": (i.expires_in_ms > 0).then_some(i.expires_in_ms),
        "state": i.state,
        "ejected_for_ms": (i.ejected_for_ms > 0).then_some(i.ejected_for_ms),
        "latency_ewma_ms": i.latency_ewma_ms,
        "in_flight": i.in_flight,
        "consecutive_failures": i.consecutive_failures,
        "attempts": i.attempts,
        "failures": i.failures,
    })
}

/// A policy as JSON, shaped like the REST API's and wharf.toml's `policy` (a setting the
/// server did not send is null).
fn policy_json(p: &proto::AppPolicy) -> Value {
    json!({
        "timeout_ms": p.timeout_ms,
        "per_try_timeout_ms": p.per_try_timeout_ms,
        "max_concurrency": p.max_concurrency,
        "rate_limit_per_second": p.rate_limit_per_second,
        "retry": {
            "max_attempts": p.retry_max_attempts,
            "backoff_base_ms": p.retry_backoff_base_ms,
            "backoff_max_ms": p.retry_backoff_max_ms,
            "jitter": p.retry_jitter,
            "budget_ratio": p.retry_budget_ratio.map_or(Value::Null, f32_json),
            "budget_min_per_second": p.retry_budget_min_per_second,
            "idempotent_routes": p.idempotent_routes,
        },
        "breaker": {
            "consecutive_failures": p.breaker_consecutive_failures,
            "ejection_ms": p.breaker_ejection_ms,
            "max_ejection_ms": p.breaker_max_ejection_ms,
        },
    })
}

/// An app as JSON, like the REST API's: name, breaker, gRPC services, policy, instances.
pub(crate) fn app_json(a: &proto::App) -> Value {
    let instances: Vec<Value> = a.instances.iter().map(instance_json).collect();
    json!({
        "name": a.name,
        "breaker": a.breaker,
        "grpc_services": a.grpc_services,
        "policy": policy_json(&a.policy.clone().unwrap_or_default()),
        "instances": instances,
    })
}

fn print_app(ctx: &Ctx, a: &proto::App) -> CmdResult {
    if ctx.json() {
        return output::json_document(&app_json(a));
    }
    let p = a.policy.clone().unwrap_or_default();
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), millis_text);
    let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let mut text = fields(&[
        ("app", a.name.clone()),
        ("breaker", a.breaker.clone()),
        ("grpc services", list(&a.grpc_services)),
        ("timeout", ms(p.timeout_ms)),
        ("per-try timeout", ms(p.per_try_timeout_ms)),
        ("max concurrency", num(p.max_concurrency)),
        (
            "rate limit",
            match p.rate_limit_per_second {
                Some(0) => "none".to_owned(),
                Some(n) => format!("{n}/s"),
                None => "-".to_owned(),
            },
        ),
        ("max attempts", num(p.retry_max_attempts.map(u64::from))),
        (
            "retry backoff",
            format!(
                "{} doubling to {}",
                ms(p.retry_backoff_base_ms),
                ms(p.retry_backoff_max_ms)
            ),
        ),
        (
            "retry jitter",
            p.retry_jitter
                .map_or_else(|| "-".to_owned(), |j| j.to_string()),
        ),
        (
            "retry budget",
            format!(
                "{} of calls + {}/s",
                p.retry_budget_ratio.map_or_else(
                    || "-".to_owned(),
                    |r| format!("{}%", (f64::from(r) * 10_000.0).round() / 100.0)
                ),
                num(p.retry_budget_min_per_second.map(u64::from))
            ),
        ),
        ("idempotent routes", list(&p.idempotent_routes)),
        (
            "breaker failures",
            num(p.breaker_consecutive_failures.map(u64::from)),
        ),
        ("ejection", ms(p.breaker_ejection_ms)),
        ("max ejection", ms(p.breaker_max_ejection_ms)),
    ]);
    text.push('\n');
    if a.instances.is_empty() {
        text.push_str("no instances\n");
    } else {
        let mut table = Table::new([
            "INSTANCE",
            "ADDRESS",
            "STATE",
            "LATENCY",
            "IN-FLIGHT",
            "ATTEMPTS",
            "FAILURES",
            "EXPIRES",
        ]);
        for i in &a.instances {
            table.row(instance_cells(i));
        }
        text.push_str(&table.render());
    }
    output::write_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_for_people() {
        assert_eq!(expires_text(0), "static");
        assert_eq!(expires_text(9_240), "9.2s");
        assert_eq!(expires_text(245_000), "4m05s");
        assert_eq!(expires_text(9_000_000), "2h30m");
    }

    #[test]
    fn json_like_the_rest_api() {
        let app = proto::App {
            name: "orders".into(),
            policy: Some(proto::AppPolicy {
                timeout_ms: Some(15_000),
                retry_budget_ratio: Some(0.2),
                ..proto::AppPolicy::default()
            }),
            grpc_services: vec!["shop.Orders".into()],
            breaker: "closed".into(),
            instances: vec![proto::Instance {
                id: "a".into(),
                address: "http://127.0.0.1:1".into(),
                state: "healthy".into(),
                expires_in_ms: 0,
                ..proto::Instance::default()
            }],
        };
        let j = app_json(&app);
        assert_eq!(j["policy"]["timeout_ms"], 15_000);
        assert_eq!(j["policy"]["retry"]["budget_ratio"], 0.2);
        assert_eq!(j["policy"]["breaker"]["ejection_ms"], Value::Null);
        assert_eq!(j["instances"][0]["expires_in_ms"], Value::Null);
        assert_eq!(j["instances"][0]["state"], "healthy");
        assert_eq!(j["grpc_services"][0], "shop.Orders");
    }

    #[test]
    fn static_instances() {
        assert_eq!(
            parse_static_instance("a=http://h:1"),
            Ok(("a".to_owned(), "http://h:1".to_owned()))
        );
        assert!(parse_static_instance("a").is_err());
        assert!(parse_static_instance("=http://h:1").is_err());
    }
}
