//! `wharf call APP PATH`: an HTTP request to an app through Wharf (`/v1/invoke/{app}{path}`),
//! like curl: the response body on stdout as it came, with `-i` the status line and headers
//! first. Exit status 0 for a 2xx answer, 1 otherwise; Wharf's own errors (a JSON
//! `{"code","message"}`) print as `error: <message> (<code>)` like the other verbs.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use hyper::http::response::Parts;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use super::output::{self, BROKEN_PIPE};
use super::{CmdError, CmdResult, ConnArgs, Ctx};

/// The header carrying a call's deadline (ms remaining), as Wharf reads it.
const DEADLINE_HEADER: &str = "wharf-deadline";
/// The header marking a call safe to retry.
const IDEMPOTENT_HEADER: &str = "wharf-idempotent";

/// Flags of `wharf call`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  wharf call orders /orders/17?expand=lines
  wharf call orders /orders -d '{\"item\":\"book\"}' -H 'content-type: application/json'
  wharf call orders /orders/17 -X DELETE --deadline-ms 2000 -i
  wharf call orders /orders --data-file order.json --idempotent")]
pub(crate) struct CallArgs {
    /// The app.
    #[arg(value_parser = parse_app)]
    app: String,
    /// The path to call on the app, starting with `/` (a query string may follow).
    #[arg(value_parser = parse_path)]
    path: String,
    /// The method [default: GET, or POST with a body].
    #[arg(
        short = 'X',
        long = "request",
        visible_alias = "method",
        value_name = "METHOD"
    )]
    method: Option<String>,
    /// The request body (sent as given; set its type with -H 'content-type: ...').
    #[arg(short = 'd', long, value_name = "DATA", conflicts_with = "data_file")]
    data: Option<String>,
    /// The request body from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    data_file: Option<PathBuf>,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_http_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The call's deadline in ms (the `wharf-deadline` header): Wharf gives up after it, and
    /// the app gets what remains.
    #[arg(long, value_name = "MS")]
    deadline_ms: Option<u64>,
    /// Mark the call safe to retry (`wharf-idempotent: true`), e.g. a POST with an
    /// idempotency key.
    #[arg(long)]
    idempotent: bool,
    /// Print the response's status line and headers before its body, like curl -i.
    #[arg(short = 'i', long)]
    include: bool,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

/// An app name: not empty, no `/`, `?` or `#`.
fn parse_app(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(['/', '?', '#']) || s.chars().any(char::is_whitespace) {
        return Err(format!("{s:?} is not an app name"));
    }
    Ok(s.to_owned())
}

/// A path: starts with `/`.
fn parse_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "{s:?}: the path must start with '/' (e.g. /orders/17)"
        ));
    }
    Ok(s.to_owned())
}

/// `Name: value` (curl's form).
fn parse_http_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some((name, value)) = s.split_once(':') else {
        return Err(format!("{s:?} is not a header: 'Name: value'"));
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of header {name} is not valid"))?;
    Ok((name, value))
}

pub(crate) async fn run(ctx: &Ctx, args: CallArgs) -> CmdResult {
    let conn = &ctx.conn;
    let base = conn.server.trim_end_matches('/');
    let url = format!("{base}/v1/invoke/{}{}", args.app, args.path);
    let uri: Uri = url
        .parse()
        .map_err(|e| CmdError::usage(format!("cannot call {url:?}: {e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(CmdError::usage(format!(
                "bad server URL {:?}: give http://HOST:PORT or https://HOST:PORT",
                conn.server
            )));
        }
    };
    if !https && conn.ca_cert.is_some() {
        return Err(CmdError::usage(format!(
            "TLS options need an https:// URL, not {:?}",
            conn.server
        )));
    }

    let body = match (&args.data, &args.data_file) {
        (Some(d), _) => Some(Bytes::from(d.clone().into_bytes())),
        (None, Some(path)) => Some(read_body(path)?),
        (None, None) => None,
    };
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| CmdError::usage(format!("{m:?} is not an HTTP method")))?,
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| CmdError::usage(format!("cannot build the request: {e}")))?;
    let headers = request.headers_mut();
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("wharf-cli/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in &args.headers {
        headers.append(name.clone(), value.clone());
    }
    if let Some(token) = &conn.token
        && !headers.contains_key(AUTHORIZATION)
    {
        let value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| CmdError::usage("the token is not printable ASCII"))?;
        headers.insert(AUTHORIZATION, value);
    }
    if let Some(ms) = args.deadline_ms {
        headers.insert(DEADLINE_HEADER, HeaderValue::from(ms));
    }
    if args.idempotent {
        headers.insert(IDEMPOTENT_HEADER, HeaderValue::from_static("true"));
    }

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(conn.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ctx, https)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: HttpClient<_, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build(connector);

    // The whole exchange is bounded by --request-timeout, or by the call's own deadline (and
    // a second more for Wharf's answer) when that is longer.
    let bound = conn.connect_timeout.saturating_add(
        args.deadline_ms
            .map(|ms| Duration::from_millis(ms).saturating_add(Duration::from_secs(1)))
            .unwrap_or_default()
            .max(conn.request_timeout),
    );
    match tokio::time::timeout(bound, exchange(ctx, &args, client.request(request))).await {
        Ok(result) => result,
        Err(_) => Err(CmdError::new(
            "timeout",
            format!("no complete answer from {base} within {bound:?}"),
        )),
    }
}

/// A file's bytes, or stdin's for `-` (read before anything is sent).
fn read_body(path: &Path) -> CmdResult<Bytes> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .map_err(|e| CmdError::new("io", format!("cannot read stdin: {e}")))?;
        return Ok(Bytes::from(buf));
    }
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| CmdError::new("io", format!("cannot read {}: {e}", path.display())))
}

/// The roots a TLS connection trusts: the system's and `--ca-cert`'s (none for http://).
fn tls_config(ctx: &Ctx, https: bool) -> CmdResult<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = &ctx.conn.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                CmdError::new(
                    "io",
                    format!("cannot read --ca-cert {}: {e}", path.display()),
                )
            })?;
            let bad = |e: &dyn std::fmt::Display| {
                CmdError::usage(format!(
                    "--ca-cert {}: not a PEM certificate: {e}",
                    path.display()
                ))
            };
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(&e))?;
                roots.add(cert).map_err(|e| bad(&e))?;
                added += 1;
            }
            if added == 0 {
                return Err(bad(&"no certificate in it"));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CmdError::new("internal", format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Sends the request and prints the answer.
async fn exchange(
    ctx: &Ctx,
    args: &CallArgs,
    sent: hyper_util::client::legacy::ResponseFuture,
) -> CmdResult {
    let response = sent.await.map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        CmdError::new(
            "transport",
            format!(
                "cannot reach the server at {}: {}",
                ctx.conn.server,
                super::tidy(&message)
            ),
        )
    })?;
    let (parts, mut body) = response.into_parts();
    let ok = parts.status.is_success();
    let json_answer = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));

    // A JSON document, or a body that may be Wharf's error: read it whole.
    if ctx.json() || (!ok && json_answer) {
        let bytes = body.collect().await.map_err(|e| body_error(&e))?.to_bytes();
        let wharf_error = if !ok && json_answer {
            wharf_error(&bytes)
        } else {
            None
        };
        if ctx.json() {
            output::json_document(&response_json(&parts, &bytes))?;
        } else {
            if args.include {
                write_bytes(head_text(&parts).as_bytes())?;
            }
            if wharf_error.is_none() {
                write_bytes(&bytes)?;
            }
        }
        return match wharf_error {
            Some(e) => Err(e),
            None if ok => Ok(()),
            None => Err(status_error(parts.status)),
        };
    }

    if args.include {
        write_bytes(head_text(&parts).as_bytes())?;
    }
    // Stream the body through as it comes.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(&e))?;
        if let Some(data) = frame.data_ref() {
            write_bytes(data)?;
        }
    }
    output::flush()?;
    if ok {
        Ok(())
    } else {
        Err(status_error(parts.status))
    }
}

/// Wharf's error answer: a JSON object with a `code` (and a `message`).
fn wharf_error(body: &[u8]) -> Option<CmdError> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let code = v.get("code")?.as_str()?;
    let message = v.get("message").and_then(Value::as_str).unwrap_or_default();
    Some(CmdError::new(code, message))
}

/// The answer was not a 2xx (and not Wharf's own error): the app said so.
fn status_error(status: hyper::StatusCode) -> CmdError {
    CmdError::new("http_status", format!("the app answered {status}"))
}

fn body_error(e: &hyper::Error) -> CmdError {
    CmdError::new("transport", format!("the answer broke off: {e}"))
}

/// `HTTP/1.1 200 OK` and the headers, CRLF-terminated, then a blank line (curl -i).
fn head_text(r: &Parts) -> String {
    let mut text = format!("{:?} {}\r\n", r.version, r.status);
    for (name, value) in &r.headers {
        text.push_str(&format!(
            "{name}: {}\r\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push_str("\r\n");
    text
}

/// The answer as one JSON document: status, headers, and the body as UTF-8 text or base64.
fn response_json(r: &Parts, body: &Bytes) -> Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in &r.headers {
        let value = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.clone(), value]),
            None => {
                headers.insert(name.as_str().to_owned(), value);
            }
        }
    }
    let (text, encoding) = match std::str::from_utf8(body) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (B64.encode(body), "base64"),
    };
    json!({
        "status": r.status.as_u16(),
        "headers": headers,
        "body": text,
        "encoding": encoding,
    })
}

/// Bytes to stdout as they are; a closed pipe ends the command quietly.
fn write_bytes(bytes: &[u8]) -> CmdResult {
    std::io::stdout().lock().write_all(bytes).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CmdError::new(BROKEN_PIPE, "stdout was closed")
        } else {
            CmdError::new("io", format!("cannot write to stdout: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use hyper::Response;

    use super::*;

    #[test]
    fn headers_and_paths() {
        let (n, v) = parse_http_header("Content-Type: application/json").expect("header");
        assert_eq!(n.as_str(), "content-type");
        assert_eq!(v, "application/json");
        let (n, v) = parse_http_header("x-empty:").expect("header");
        assert_eq!((n.as_str(), v.to_str().ok()), ("x-empty", Some("")));
        assert!(parse_http_header("no-colon").is_err());
        assert!(parse_http_header("bad name: x").is_err());
        assert!(parse_path("/a?b=c").is_ok());
        assert!(parse_path("a").is_err());
        assert!(parse_app("orders").is_ok());
        assert!(parse_app("a/b").is_err());
        assert!(parse_app("").is_err());
    }

    #[test]
    fn wharf_errors_need_a_code() {
        let e =
            wharf_error(br#"{"code":"app_not_found","message":"no app \"x\""}"#).expect("an error");
        assert_eq!(e.to_string(), "no app \"x\" (app_not_found)");
        assert!(wharf_error(br#"{"message":"x"}"#).is_none());
        assert!(wharf_error(b"not json").is_none());
    }

    #[test]
    fn heads_like_curl() {
        let mut r = Response::new(());
        r.headers_mut()
            .insert("x-instance", HeaderValue::from_static("a"));
        let (parts, ()) = r.into_parts();
        assert_eq!(
            head_text(&parts),
            "HTTP/1.1 200 OK\r\nx-instance: a\r\n\r\n"
        );
    }
}
