//! Numbers as the reports print them, the report tables, target verdicts and whole reports.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

/// `1234567.8` as `1,234,568`; `-` if not finite.
pub fn grouped(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if x < 0.0 && out != "0" {
        format!("-{out}")
    } else {
        out
    }
}

/// `x` with `decimals` decimals; `-` if not finite.
pub fn fixed(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "-".into()
    }
}

/// A latency in µs with a sensible precision: one decimal below 10, else [`grouped`]; `-` if
/// not finite.
pub fn micros(x: f64) -> String {
    match x {
        x if !x.is_finite() => "-".into(),
        x if x < 10.0 => format!("{x:.1}"),
        x => grouped(x),
    }
}

/// A size in bytes as `100 B`, or `4 KiB` when it is a whole number of KiB.
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// What ended a cell: `time` (its time limit) or `count` (its count limit).
pub fn stopped_by(by_time: bool) -> String {
    if by_time { "time" } else { "count" }.into()
}

/// A table of a report, printed as aligned text or as markdown.
#[derive(Clone, Debug)]
pub struct Table {
    title: String,
    head: Vec<String>,
    /// Columns left-aligned (the first `left` ones); the rest are right-aligned.
    left: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with a title, column heads, and the number of its first columns that
    /// are left-aligned (the others are right-aligned).
    pub fn new(title: &str, head: &[&str], left: usize) -> Self {
        Self {
            title: title.into(),
            head: head.iter().map(|h| (*h).to_owned()).collect(),
            left,
            rows: Vec::new(),
        }
    }

    /// Adds a row, a cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The title, the heads, a rule and the rows, in columns two spaces apart, each line
    /// ending in a newline.
    pub fn text(&self) -> String {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                let pad = " ".repeat(w - c.chars().count());
                if i > 0 {
                    out.push_str("  ");
                }
                if i < self.left {
                    let _ = write!(out, "{c}{pad}");
                } else {
                    let _ = write!(out, "{pad}{c}");
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = format!("{}\n", self.title);
        out.push_str(&line(&self.head));
        out.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    /// The title as a `####` heading, then the table in markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("#### {}\n\n| {} |\n|", self.title, self.head.join(" | "));
        for i in 0..self.head.len() {
            out.push_str(if i < self.left { ":---|" } else { "---:|" });
        }
        out.push('\n');
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

/// A project target checked by a benchmark: its verdict and what it measured.
#[derive(Clone, Debug)]
pub struct Target {
    /// Whether the target was met.
    pub pass: bool,
    /// The target and the numbers behind the verdict.
    pub text: String,
}

impl Target {
    /// `PASS` or `MISS`.
    pub fn verdict(&self) -> &'static str {
        if self.pass { "PASS" } else { "MISS" }
    }
}

/// A whole report: header lines, tables, notes and target verdicts.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    /// The header lines (see [`crate::run_header`]); the text form repeats the last two
    /// (see [`crate::end_lines`]) at its end.
    pub header: &'a [String],
    /// The tables, in order.
    pub tables: &'a [&'a Table],
    /// Notes on how to read the tables.
    pub notes: &'a [&'a str],
    /// What the target verdicts rest on, in the heading `Targets (...)`.
    pub targets_about: &'a str,
    /// The target verdicts, if any.
    pub targets: &'a [Target],
}

impl Report<'_> {
    /// The report as text: the tables (each followed by a blank line), the notes, the targets
    /// if there are any, and the last two header lines.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for t in self.tables {
            let _ = writeln!(out, "{}", t.text());
        }
        out.push_str("Notes:\n");
        for n in self.notes {
            let _ = writeln!(out, "  - {n}");
        }
        out.push('\n');
        if !self.targets.is_empty() {
            let _ = writeln!(out, "Targets ({}):", self.targets_about);
            for t in self.targets {
                let _ = writeln!(out, "  {}  {}", t.verdict(), t.text);
            }
            out.push('\n');
        }
        for h in self.header.iter().skip(self.header.len().saturating_sub(2)) {
            let _ = writeln!(out, "  {h}");
        }
        out
    }

    /// The report as markdown: the header as a list, the tables, the notes, and the targets if
    /// there are any.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        for h in self.header {
            let _ = writeln!(md, "- {h}");
        }
        md.push('\n');
        for t in self.tables {
            md.push_str(&t.markdown());
            md.push('\n');
        }
        md.push_str("Notes:\n\n");
        for n in self.notes {
            let _ = writeln!(md, "- {n}");
        }
        if !self.targets.is_empty() {
            let _ = write!(md, "\n#### Targets ({})\n\n", self.targets_about);
            for t in self.targets {
                let _ = writeln!(md, "- **{}** {}", t.verdict(), t.text);
            }
        }
        md
    }
}

/// Writes `md` to `path` (the `WHARF_BENCH_MD` knob), if there is one, and says so on stderr.
pub fn write_markdown(path: Option<&Path>, md: &str) -> std::io::Result<()> {
    if let Some(path) = path {
        fs::write(path, md)?;
        eprintln!("markdown written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(grouped(1_234_567.8), "1,234,568");
        assert_eq!(grouped(999.4), "999");
        assert_eq!(grouped(-1234.0), "-1,234");
        assert_eq!(grouped(-0.3), "0");
        assert_eq!(grouped(f64::NAN), "-");
        assert_eq!(fixed(1.234, 2), "1.23");
        assert_eq!(fixed(f64::INFINITY, 2), "-");
        assert_eq!(micros(3.25), "3.2");
        assert_eq!(micros(12_345.6), "12,346");
        assert_eq!(size_label(100), "100 B");
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(1536), "1536 B");
        assert_eq!(stopped_by(true), "time");
    }

    #[test]
    fn table_text_and_markdown() {
        let mut t = Table::new("T", &["name", "n"], 1);
        t.row(vec!["a".into(), "1,000".into()]);
        t.row(vec!["bbbbbb".into(), "2".into()]);
        assert_eq!(
            t.text(),
            "T\nname        n\n-------------\na       1,000\nbbbbbb      2\n"
        );
        assert_eq!(
            t.markdown(),
            "#### T\n\n| name | n |\n|:---|---:|\n| a | 1,000 |\n| bbbbbb | 2 |\n"
        );
    }

    #[test]
    fn report_targets_only_when_there_are_some() {
        let header = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let table = Table::new("T", &["x"], 1);
        let targets = [Target {
            pass: false,
            text: "t".into(),
        }];
        let mut report = Report {
            header: &header,
            tables: &[&table],
            notes: &["n"],
            targets_about: "why",
            targets: &targets,
        };
        assert_eq!(
            report.text(),
            "T\nx\n-\n\nNotes:\n  - n\n\nTargets (why):\n  MISS  t\n\n  b\n  c\n"
        );
        assert!(
            report
                .markdown()
                .ends_with("- n\n\n#### Targets (why)\n\n- **MISS** t\n")
        );
        report.targets = &[];
        assert_eq!(report.text(), "T\nx\n-\n\nNotes:\n  - n\n\n  b\n  c\n");
        assert_eq!(
            report.markdown(),
            "- a\n- b\n- c\n\n#### T\n\n| x |\n|:---|\n\nNotes:\n\n- n\n"
        );
    }
}
