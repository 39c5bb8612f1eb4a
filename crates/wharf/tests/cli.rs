//! The `wharf` command line: `config default` and `config check`, `--version`, and `serve`
//! refusing bad configuration (naming the key) before it touches the data directory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use common::{GENEROUS, Server, run_to_end, wharf};

const SECTIONS: [&str; 8] = [
    "server", "engine", "storage", "limits", "auth", "tls", "cors", "log",
];

fn parse_toml(text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"))
}

/// Runs `wharf serve ARGS` expecting it to refuse to start; returns its stderr.
fn serve_refused(data: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = wharf();
    cmd.arg("serve").arg("--data").arg(data).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (status, out, err) = run_to_end(cmd);
    assert!(
        !status.success(),
        "serve {args:?} {env:?} started or succeeded: {status}\n{out}\n{err}"
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.starts_with("wharf: "), "{err}");
    assert!(
        !data.exists(),
        "a refused configuration created the data directory"
    );
    err
}

#[test]
fn version() {
    let mut cmd = wharf();
    cmd.arg("--version");
    let (status, out, err) = run_to_end(cmd);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out, format!("wharf {}\n", env!("CARGO_PKG_VERSION")));
    let mut cmd = wharf();
    cmd.args(["serve", "--version"]);
    let (status, out, _) = run_to_end(cmd);
    assert!(status.success());
    assert_eq!(out, format!("wharf-serve {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn config_default_is_toml_with_every_section_and_is_the_default() {
    let mut cmd = wharf();
    cmd.args(["config", "default"]);
    let (status, out, err) = run_to_end(cmd);
    assert!(status.success(), "{status}: {err}");
    let table = parse_toml(&out);
    for section in SECTIONS {
        assert!(
            table.get(section).is_some_and(toml::Value::is_table),
            "no [{section}] in\n{out}"
        );
    }
    assert_eq!(table.len(), SECTIONS.len(), "{out}");
    assert_eq!(table["server"]["listen"].as_str(), Some("127.0.0.1:7400"));
    assert_eq!(
        table["server"]["shutdown_grace_ms"].as_integer(),
        Some(30_000)
    );
    assert_eq!(table["limits"]["max_wait_ms"].as_integer(), Some(30_000));
    assert_eq!(table["storage"]["data"].as_str(), Some("./wharf-data"));

    // What `config check` resolves from no file and no variables is exactly that.
    let mut cmd = wharf();
    cmd.args(["config", "check"]);
    let (status, resolved, err) = run_to_end(cmd);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(parse_toml(&resolved), table, "{resolved}");
}

#[test]
fn config_check_prints_file_under_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("wharf.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:9999\"\n[limits]\nmax_headers = 7\nmax_wait_ms = 5\n",
    )
    .expect("write");
    let env = [
        ("WHARF_LIMITS_MAX_WAIT_MS", "1234"),
        (
            "WHARF_CORS_ALLOWED_ORIGINS",
            "https://a.example, https://b.example",
        ),
    ];
    let check = |via_env: bool| {
        let mut cmd = wharf();
        cmd.args(["config", "check"]);
        if via_env {
            cmd.env("WHARF_CONFIG", &file);
        } else {
            cmd.arg("--config").arg(&file);
        }
        cmd.envs(env);
        let (status, out, err) = run_to_end(cmd);
        assert!(status.success(), "{status}: {err}");
        parse_toml(&out)
    };
    let c = check(false);
    assert_eq!(c["limits"]["max_wait_ms"].as_integer(), Some(1234), "{c}");
    assert_eq!(c["limits"]["max_headers"].as_integer(), Some(7), "{c}");
    assert_eq!(
        c["server"]["listen"].as_str(),
        Some("127.0.0.1:9999"),
        "{c}"
    );
    assert_eq!(
        c["cors"]["allowed_origins"],
        toml::Value::Array(vec!["https://a.example".into(), "https://b.example".into()]),
        "{c}"
    );
    // Untouched keys keep their defaults.
    assert_eq!(c["limits"]["max_batch_messages"].as_integer(), Some(1000));
    assert_eq!(c["log"]["level"].as_str(), Some("info"));
    for section in SECTIONS {
        assert!(c.contains_key(section), "no [{section}] in {c}");
    }
    assert_eq!(check(true), c, "WHARF_CONFIG names the same file");
}

#[test]
fn open_listener_without_tokens_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = serve_refused(&dir.path().join("data"), &["--listen", "0.0.0.0:0"], &[]);
    assert!(err.contains("server.listen"), "{err}");
    assert!(err.contains("--allow-anonymous"), "{err}");
}

#[test]
fn allow_anonymous_opens_the_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start_with(&data, &["--listen", "0.0.0.0:0", "--allow-anonymous"]);
    assert!(
        server
            .stderr_text()
            .contains(&format!("listening on http://0.0.0.0:{} ", server.port)),
        "{}",
        server.stderr_text()
    );
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    s.set_read_timeout(Some(GENEROUS)).expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(data.is_dir());
    server.stop_cleanly();
}

#[test]
fn bad_environment_value_names_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let listen = ["--listen", "127.0.0.1:0"];
    let err = serve_refused(&data, &listen, &[("WHARF_LIMITS_MAX_WAIT_MS", "abc")]);
    assert!(err.contains("WHARF_LIMITS_MAX_WAIT_MS"), "{err}");
    assert!(err.contains("abc"), "{err}");
    // A well-formed value out of range names the key.
    let err = serve_refused(&data, &listen, &[("WHARF_LIMITS_MAX_WAIT_MS", "99999999")]);
    assert!(err.contains("limits.max_wait_ms"), "{err}");
}

#[test]
fn unknown_config_key_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let file = dir.path().join("wharf.toml");
    std::fs::write(&file, "[limits]\nmax_wiat_ms = 5\n").expect("write");
    let file_arg = file.to_str().expect("utf-8 path");
    let err = serve_refused(
        &data,
        &["--listen", "127.0.0.1:0", "--config", file_arg],
        &[],
    );
    assert!(err.contains("max_wiat_ms"), "{err}");
    let err = serve_refused(
        &data,
        &["--listen", "127.0.0.1:0"],
        &[("WHARF_CONFIG", file_arg)],
    );
    assert!(err.contains("max_wiat_ms"), "{err}");

    let mut cmd = wharf();
    cmd.args(["config", "check", "--config", file_arg]);
    let (status, out, err) = run_to_end(cmd);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains("max_wiat_ms"), "{err}");
    assert!(out.is_empty(), "{out}");
}
