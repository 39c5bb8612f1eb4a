//! Output of the client verbs: aligned tables and key/value lists for people, JSON for
//! programs, and the record forms (`p:offset key value`, or a JSON object like the REST API's).

use std::collections::BTreeMap;
use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use wharf_client::{Position, Record, proto};

use super::{CmdError, CmdResult};

/// Writes `text` to stdout. A closed pipe (`| head`) is reported as the `broken_pipe` error,
/// which ends the command quietly.
pub(crate) fn write_stdout(text: &str) -> CmdResult {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).map_err(stdout_error)
}

/// Flushes stdout (errors are reported by the writes before).
pub(crate) fn flush_stdout() {
    let _ = std::io::stdout().lock().flush();
}

/// Flushes stdout, reporting a failure.
pub(crate) fn flush() -> CmdResult {
    std::io::stdout().lock().flush().map_err(stdout_error)
}

fn stdout_error(e: std::io::Error) -> CmdError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CmdError::new(BROKEN_PIPE, "stdout was closed")
    } else {
        CmdError::new("io", format!("cannot write to stdout: {e}"))
    }
}

/// The code of a write to a closed stdout.
pub(crate) const BROKEN_PIPE: &str = "broken_pipe";

/// Prints one line.
pub(crate) fn line(text: &str) -> CmdResult {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    write_stdout(&s)
}

/// Prints a JSON document (pretty) on its own lines.
pub(crate) fn json_document(v: &Value) -> CmdResult {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| CmdError::new("internal", format!("cannot print JSON: {e}")))?;
    line(&text)
}

/// Prints a JSON value on one line (JSON lines).
pub(crate) fn json_line(v: &Value) -> CmdResult {
    line(&v.to_string())
}

/// Columns aligned with two spaces between them; a column of numbers (and `-` or blanks) is
/// aligned right.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new<const N: usize>(header: [&str; N]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra cells are dropped).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, a newline after every line.
    pub(crate) fn render(&self) -> String {
        let n = self.header.len();
        let cell = |row: &Vec<String>, i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        // Right-aligned: columns with a number and nothing but numbers, `-` and blanks.
        let mut numeric = vec![true; n];
        let mut some_number = vec![false; n];
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                let c = cell(row, i);
                *w = (*w).max(c.chars().count());
                let is_number = c.parse::<f64>().is_ok();
                some_number[i] |= is_number;
                numeric[i] &= is_number || c.is_empty() || c == "-";
            }
        }
        for (num, some) in numeric.iter_mut().zip(&some_number) {
            *num &= *some;
        }
        let mut out = String::new();
        let mut emit = |cells: Vec<String>| {
            let mut text = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(c.chars().count());
                let last = i + 1 == n;
                if numeric[i] {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(c);
                } else {
                    text.push_str(c);
                    if !last {
                        text.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    text.push_str("  ");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        emit(self.header.clone());
        for row in &self.rows {
            emit((0..n).map(|i| cell(row, i)).collect());
        }
        out
    }

    /// Prints the table.
    pub(crate) fn print(&self) -> CmdResult {
        write_stdout(&self.render())
    }
}

/// `name  value` lines, names aligned.
pub(crate) fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(format!("{k:width$}  {v}").trim_end());
        out.push('\n');
    }
    out
}

/// Bytes for a terminal: UTF-8 (invalid sequences replaced) with control characters escaped,
/// so one message stays on one line.
pub(crate) fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// The human form of a record: `partition:offset key value` (`-` for no key).
pub(crate) fn record_line(r: &Record) -> String {
    let key = r.key.as_deref().map_or_else(|| "-".to_owned(), printable);
    format!("{}:{} {key} {}", r.partition, r.offset, printable(&r.value))
}

/// A record as JSON, like the REST API's messages: key and value as UTF-8 text, or both in
/// base64 when either is not UTF-8 (`encoding` says which).
pub(crate) fn record_json(r: &Record) -> Value {
    let utf8 = std::str::from_utf8(&r.value).is_ok()
        && r.key
            .as_deref()
            .is_none_or(|k| std::str::from_utf8(k).is_ok());
    let text = |b: &[u8]| {
        if utf8 {
            String::from_utf8_lossy(b).into_owned()
        } else {
            B64.encode(b)
        }
    };
    let headers: BTreeMap<&str, &str> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    json!({
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp_ms,
        "key": r.key.as_deref().map(text),
        "value": text(&r.value),
        "headers": headers,
        "encoding": if utf8 { "utf8" } else { "base64" },
    })
}

/// `earliest`, `latest`, `offset N`, or an RFC 3339 time.
pub(crate) fn position_text(p: Position) -> String {
    match p {
        Position::Earliest => "earliest".into(),
        Position::Latest => "latest".into(),
        Position::Offset(o) => format!("offset {o}"),
        Position::TimestampMs(t) => wharf_broker::time::format_rfc3339(t),
    }
}

/// A position from the wire (unset: the default, earliest).
pub(crate) fn position_from_proto(p: Option<&proto::Position>) -> Position {
    use proto::position::At;
    match p.and_then(|p| p.at) {
        Some(At::Offset(o)) => Position::Offset(o),
        Some(At::TimestampMs(t)) => Position::TimestampMs(t),
        Some(At::Edge(e)) if e == proto::Edge::Latest as i32 => Position::Latest,
        _ => Position::Earliest,
    }
}

/// A position as JSON: `"earliest"`, `"latest"`, `{"offset": N}` or `{"timestamp": MS}`.
pub(crate) fn position_json(p: Position) -> Value {
    match p {
        Position::Earliest => json!("earliest"),
        Position::Latest => json!("latest"),
        Position::Offset(o) => json!({ "offset": o }),
        Position::TimestampMs(t) => json!({ "timestamp": t }),
    }
}

/// Milliseconds for people: `7d`, `2h`, `90s`, `250ms`.
pub(crate) fn millis_text(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    if ms == 0 {
        return "0".into();
    }
    for (unit, name) in UNITS {
        if ms.is_multiple_of(unit) {
            return format!("{}{name}", ms / unit);
        }
    }
    format!("{ms}ms")
}

/// Bytes for people: `1 MiB`, `512 KiB`, `100 B`.
pub(crate) fn bytes_text(b: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if b >= unit && b.is_multiple_of(unit) {
            return format!("{} {name}", b / unit);
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::Bytes;

    use super::*;

    fn record(key: Option<&'static [u8]>, value: &'static [u8]) -> Record {
        Record::from(proto::Message {
            partition: 1,
            offset: 7,
            timestamp_ms: 1000,
            key: key.map(Bytes::from_static),
            value: Bytes::from_static(value),
            headers: HashMap::from([("h".to_owned(), "v".to_owned())]),
        })
    }

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let mut t = Table::new(["NAME", "COUNT", "NOTE"]);
        t.row(vec!["orders".into(), "5".into(), "x".into()]);
        t.row(vec!["a".into(), "123".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME    COUNT  NOTE\norders      5  x\na         123\n"
        );
    }

    #[test]
    fn records_print_on_one_line_and_as_rest_json() {
        let r = record(Some(b"k"), b"a\nb");
        assert_eq!(record_line(&r), "1:7 k a\\nb");
        assert_eq!(record_line(&record(None, b"v")), "1:7 - v");
        let j = record_json(&r);
        assert_eq!(j["value"], "a\nb");
        assert_eq!(j["key"], "k");
        assert_eq!(j["encoding"], "utf8");
        assert_eq!(j["headers"]["h"], "v");
        let j = record_json(&record(None, b"\xff\x00"));
        assert_eq!(j["encoding"], "base64");
        assert_eq!(j["value"], "/wA=");
        assert_eq!(j["key"], Value::Null);
    }

    #[test]
    fn human_units() {
        assert_eq!(millis_text(604_800_000), "7d");
        assert_eq!(millis_text(90_000), "90s");
        assert_eq!(millis_text(250), "250ms");
        assert_eq!(bytes_text(1 << 20), "1 MiB");
        assert_eq!(bytes_text(1000), "1000 B");
        assert_eq!(
            fields(&[("a", "1".into()), ("bbb", "2".into())]),
            "a    1\nbbb  2\n"
        );
    }
}
