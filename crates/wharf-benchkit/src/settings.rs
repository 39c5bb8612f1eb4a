//! Settings from the environment and the command line.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tempfile::TempDir;

use crate::BoxResult;
use crate::machine::mount_of;

/// The environment variable `key`, parsed, if it is set and not blank; an error names the
/// variable and its value if it does not parse.
pub fn env_parse<T: FromStr>(key: &str) -> BoxResult<Option<T>> {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse() {
            Ok(x) => Ok(Some(x)),
            Err(_) => Err(format!("{key}={v:?} is not a valid value").into()),
        },
        _ => Ok(None),
    }
}

/// The environment variable `key` as a path, if it is set and not empty.
pub fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The time limit of a cell in seconds: `WHARF_BENCH_SECS`, else `default`. It must be a
/// positive, finite number.
pub fn env_secs(default: f64) -> BoxResult<f64> {
    let secs: f64 = env_parse("WHARF_BENCH_SECS")?.unwrap_or(default);
    if !(secs > 0.0 && secs.is_finite()) {
        return Err("WHARF_BENCH_SECS must be a positive number of seconds".into());
    }
    Ok(secs)
}

/// Whether the program's arguments (after the program name) include `flag` exactly, e.g.
/// `--quick`. Other arguments (such as the `--bench` that `cargo bench` passes) do not matter.
pub fn has_arg(flag: &str) -> bool {
    std::env::args().skip(1).any(|a| a == flag)
}

/// Where a benchmark makes its temporary data directory: `WHARF_BENCH_DIR` if set; else
/// `<target dir>/wharf-bench` (a bench runs from `<target>/<profile>/deps/`), unless that is
/// on a memory file system (tmpfs, ramfs), where fsyncs cost nothing; else `/var/tmp`.
pub fn bench_base() -> PathBuf {
    env_path("WHARF_BENCH_DIR").unwrap_or_else(default_base)
}

/// A fresh temporary directory for a run's data, named `prefix` and a random suffix, in `base`
/// (made first if missing; see [`bench_base`]). It is removed when dropped.
pub fn temp_data_dir(base: &Path, prefix: &str) -> std::io::Result<TempDir> {
    fs::create_dir_all(base)?;
    tempfile::Builder::new().prefix(prefix).tempdir_in(base)
}

/// Ends the process with status 1 if `result` is an error, after printing `{what} failed:
/// {error}` to stderr (a benchmark's `main`).
pub fn exit_on_error(what: &str, result: BoxResult<()>) {
    if let Err(e) = result {
        eprintln!("{what} failed: {e}");
        std::process::exit(1);
    }
}

fn default_base() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps")
            .then(|| deps.parent()?.parent().map(|t| t.join("wharf-bench")))?
    });
    if let Some(dir) = from_exe
        && fs::create_dir_all(&dir).is_ok()
        && !mount_of(&dir).is_some_and(|m| m.is_memory())
    {
        return dir;
    }
    PathBuf::from("/var/tmp")
}

/// The command line that reproduces this run: each of `knobs` that is set in the environment
/// as `KEY=value `, then `cargo` (e.g. `cargo bench -p wharf-log --bench log`), then
/// ` -- ` and `args` separated by spaces, if there are any.
pub fn reproduce_command<S: AsRef<str>>(
    knobs: &[&str],
    cargo: &str,
    args: impl IntoIterator<Item = S>,
) -> String {
    let mut cmd = String::new();
    for key in knobs {
        if let Ok(v) = std::env::var(key) {
            let _ = write!(cmd, "{key}={v} ");
        }
    }
    cmd.push_str(cargo);
    let args: Vec<S> = args.into_iter().collect();
    if !args.is_empty() {
        cmd.push_str(" --");
        for a in &args {
            let _ = write!(cmd, " {}", a.as_ref());
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_without_knobs() {
        let knobs = ["WHARF_BENCHKIT_TEST_SURELY_UNSET"];
        assert_eq!(
            reproduce_command(&knobs, "cargo bench", None::<&str>),
            "cargo bench"
        );
        assert_eq!(
            reproduce_command(&knobs, "cargo bench", Some("--quick")),
            "cargo bench -- --quick"
        );
        assert_eq!(
            reproduce_command(&knobs, "cargo bench", ["--quick", "--only=a,b"]),
            "cargo bench -- --quick --only=a,b"
        );
    }
}
