//! Charts of `wharf bench compare`, rendered to PNG with `plotters`:
//!
//! - [`bars`]: a grouped bar chart, one group per case (e.g. "publish 100 B"), one bar per
//!   system in each group, with the value written above each bar when it fits and an
//!   optional error bar (the spread of the repeats);
//! - [`latency_curves`]: latency percentile curves, one line per system, on a "nines" x axis
//!   (p50, p90, p99, p99.9, …, max evenly spaced) and a logarithmic latency axis.
//!
//! A system has the same colour in every chart: its position in the `systems` list picks it
//! from a fixed palette of ten colours.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary (`assets/fonts`, its licence beside
//! it) and handed to plotters' `ab_glyph` renderer, so that no system font library is needed.
//! The layout is done here in pixels (plotters only rasterises rectangles, paths, circles and
//! text): labels are measured, wrapped, shortened with "…" or left out so that they never
//! overlap, whatever the number of systems and groups or the length of the labels.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One bar group: a case (e.g. "publish 100 B") and each system's value in it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BarGroup {
    /// The case, written under the group (wrapped, shortened with "…" if too long).
    pub(crate) label: String,
    /// One bar per system measured in this case, drawn in the order of `systems`; a system
    /// that has no bar here leaves no gap.
    pub(crate) bars: Vec<Bar>,
}

/// One system's value in a [`BarGroup`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bar {
    /// The system, as named in `systems` (a name missing there is appended to it).
    pub(crate) system: String,
    /// The bar's height. NaN, infinite or negative: no bar, "n/a" written instead.
    pub(crate) value: f64,
    /// The low end of the spread (e.g. the minimum of the repeats), if any.
    pub(crate) low: Option<f64>,
    /// The high end of the spread (e.g. the maximum of the repeats), if any.
    pub(crate) high: Option<f64>,
}

/// One system's latency percentiles, for [`latency_curves`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Curve {
    /// The system, as named in `systems` (a name missing there is appended to it).
    pub(crate) system: String,
    /// `(percentile, latency in ns)`, in any order: percentile 100.0 is the maximum, 0.0 the
    /// minimum. Points with a NaN or negative percentile are left out.
    pub(crate) points: Vec<(f64, u64)>,
}

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChartError {
    /// The requested size is too small to lay out a chart, or too large.
    #[error(
        "chart size {0}x{1} is out of range (from {MIN_WIDTH}x{MIN_HEIGHT} to {MAX_SIDE}x{MAX_SIDE} pixels)"
    )]
    Size(u32, u32),
    /// The output path does not end in `.png` (the encoder picks the format by extension).
    #[error("chart file {0} must end in .png")]
    NotPng(PathBuf),
    /// The embedded font could not be loaded.
    #[error("chart font: {0}")]
    Font(String),
    /// Drawing or writing the PNG failed (e.g. the directory does not exist).
    #[error("drawing chart {path}: {message}")]
    Draw {
        /// The chart file.
        path: PathBuf,
        /// What plotters or the encoder said.
        message: String,
    },
}

/// Smallest accepted width.
const MIN_WIDTH: u32 = 200;
/// Smallest accepted height.
const MIN_HEIGHT: u32 = 150;
/// Largest accepted width or height.
const MAX_SIDE: u32 = 8192;

/// DejaVu Sans 2.37 (Bitstream Vera licence + public domain, see LICENSE-DejaVu.txt).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The family the font is registered as; plotters' default family, so that every text
/// (ours or plotters' own) finds it.
const FAMILY: &str = "sans-serif";

/// Ten colours distinguishable from each other on white (d3's "category10").
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4), // blue
    RGBColor(0xff, 0x7f, 0x0e), // orange
    RGBColor(0x2c, 0xa0, 0x2c), // green
    RGBColor(0xd6, 0x27, 0x28), // red
    RGBColor(0x94, 0x67, 0xbd), // purple
    RGBColor(0x8c, 0x56, 0x4b), // brown
    RGBColor(0xe3, 0x77, 0xc2), // pink
    RGBColor(0x7f, 0x7f, 0x7f), // grey
    RGBColor(0xbc, 0xbd, 0x22), // olive
    RGBColor(0x17, 0xbe, 0xcf), // cyan
];

/// Text, axes.
const INK: RGBColor = RGBColor(0x22, 0x22, 0x22);
/// Secondary text ("n/a", "no data").
const MUTED: RGBColor = RGBColor(0x88, 0x88, 0x88);
/// Grid lines.
const GRID: RGBColor = RGBColor(0xe3, 0xe3, 0xe3);
/// Minor grid lines.
const GRID_MINOR: RGBColor = RGBColor(0xf1, 0xf1, 0xf1);
/// Error bars.
const WHISKER: RGBColor = RGBColor(0x33, 0x33, 0x33);

/// Glyphs come out of plotters' `ab_glyph` renderer about a fifth of the font size higher
/// than the box it lays them out in: text is moved down (across its line) by this much.
const TEXT_NUDGE: f64 = 0.2;

/// The colour of the system at `index` in the systems list.
pub(crate) fn system_color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// Writes a grouped bar chart as a PNG of `size` (width, height) pixels at `path` (which
/// must end in `.png`): the groups along x, their labels under them, one bar per system in
/// each group coloured by the system's position in `systems` (systems named in `groups` but
/// not in `systems` are appended), a legend of `systems` under `title`, a y axis titled
/// `y_label` starting at 0. A bar's value is written above it when it fits ("123k"); its
/// `low`/`high`, when given, are drawn as a thin error bar. No groups or no valid value gives
/// a chart saying "no data".
pub(crate) fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    systems: &[String],
    groups: &[BarGroup],
    size: (u32, u32),
) -> Result<(), ChartError> {
    let systems = merged_systems(
        systems,
        groups
            .iter()
            .flat_map(|g| g.bars.iter().map(|b| b.system.as_str())),
    );
    render(path, size, |canvas| {
        draw_bars(canvas, title, y_label, &systems, groups)
    })
}

/// Writes latency percentile curves as a PNG of `size` (width, height) pixels at `path`
/// (which must end in `.png`): one line per curve, coloured by the system's position in
/// `systems` (systems of `curves` not in `systems` are appended), through its points; x is
/// the percentile on a "nines" scale (x = -log10(1 - p/100): p90, p99, p99.9, … one step
/// apart, p50 labelled too, the maximum one step after the last labelled percentile), y the
/// latency on a logarithmic scale labelled in ns/µs/ms/s; a legend under `title`. No points
/// at all gives a chart saying "no data".
pub(crate) fn latency_curves(
    path: &Path,
    title: &str,
    systems: &[String],
    curves: &[Curve],
    size: (u32, u32),
) -> Result<(), ChartError> {
    let systems = merged_systems(systems, curves.iter().map(|c| c.system.as_str()));
    render(path, size, |canvas| {
        draw_latency(canvas, title, &systems, curves)
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering: file, font, text.

/// The drawing surface and the sizes derived from its dimensions.
struct Canvas<'a> {
    /// The whole image, in pixels from the top left corner.
    area: DrawingArea<BitMapBackend<'a>, Shift>,
    /// Image width.
    width: i32,
    /// Image height.
    height: i32,
    /// Font size of labels and legend.
    font: f64,
    /// Font size of the title.
    title_font: f64,
    /// Font size of the values written on bars.
    small_font: f64,
    /// Outer margin.
    pad: i32,
}

/// Draw errors inside a rendering; given the chart's path by [`render`].
struct DrawError(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for DrawError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        DrawError(e.to_string())
    }
}

/// Checks the arguments, draws with `draw` on a white image and writes it; on failure
/// removes whatever was written.
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Canvas<'_>) -> Result<(), DrawError>,
) -> Result<(), ChartError> {
    if !(MIN_WIDTH..=MAX_SIDE).contains(&width) || !(MIN_HEIGHT..=MAX_SIDE).contains(&height) {
        return Err(ChartError::Size(width, height));
    }
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        return Err(ChartError::NotPng(path.to_path_buf()));
    }
    ensure_font()?;
    let result = (|| {
        let area = BitMapBackend::new(path, (width, height)).into_drawing_area();
        area.fill(&WHITE)?;
        let font = (f64::from(width.min(height * 3 / 2)) / 64.0)
            .round()
            .clamp(10.0, 18.0);
        let canvas = Canvas {
            area,
            width: width as i32,
            height: height as i32,
            font,
            title_font: (font * 1.4).round(),
            small_font: (font * 0.85).round().max(9.0),
            pad: (f64::from(width.min(height)) / 60.0)
                .round()
                .clamp(6.0, 20.0) as i32,
        };
        draw(&canvas)?;
        canvas.area.present()?;
        Ok(())
    })();
    result.map_err(|DrawError(message)| {
        // A failed drawing may still have been written (the backend saves when dropped).
        let _ = std::fs::remove_file(path);
        ChartError::Draw {
            path: path.to_path_buf(),
            message,
        }
    })
}

/// Registers the embedded font with plotters, once per process.
fn ensure_font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the embedded DejaVu Sans could not be parsed".to_string())
        })
        .clone()
        .map_err(ChartError::Font)
}

/// Text direction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Left to right.
    Across,
    /// Bottom to top (rotated 270° clockwise).
    Up,
}

impl Canvas<'_> {
    /// Width and height of `text` at `size`, laid out left to right.
    fn measure(&self, text: &str, size: f64) -> (i32, i32) {
        FontDesc::new(FontFamily::Name(FAMILY), size, FontStyle::Normal)
            .box_size(text)
            .map(|(w, h)| (w.min(1 << 20) as i32, h.min(1 << 20) as i32))
            // Only if the font is missing, which ensure_font rules out: a rough estimate.
            .unwrap_or((
                (text.chars().count() as f64 * size * 0.6) as i32,
                size as i32,
            ))
    }

    /// Width of `text` at `size`.
    fn text_width(&self, text: &str, size: f64) -> i32 {
        self.measure(text, size).0
    }

    /// Height of a line of text at `size`, spacing included (plotters' layout box of a text
    /// is shorter than its glyphs, from the top of an "H" to the bottom of a "g").
    fn line_height(&self, size: f64) -> i32 {
        (size * 1.2).round() as i32
    }

    /// Draws `text` anchored at `at` (anchor in the text's own direction).
    #[allow(clippy::too_many_arguments)]
    fn text(
        &self,
        text: &str,
        size: f64,
        color: RGBColor,
        at: (i32, i32),
        h: HPos,
        v: VPos,
        dir: Dir,
    ) -> Result<(), DrawError> {
        if text.is_empty() {
            return Ok(());
        }
        let nudge = (size * TEXT_NUDGE).round() as i32;
        let mut font = FontDesc::new(FontFamily::Name(FAMILY), size, FontStyle::Normal);
        let at = match dir {
            Dir::Across => (at.0, at.1 + nudge),
            Dir::Up => {
                font = font.transform(FontTransform::Rotate270);
                (at.0 + nudge, at.1)
            }
        };
        let style = font.color(&color).pos(Pos::new(h, v));
        self.area.draw_text(text, &style, at)?;
        Ok(())
    }

    /// `text`, shortened with "…" to fit in `max_width` pixels at `size` ("" if not even
    /// "…" fits).
    fn fit(&self, text: &str, size: f64, max_width: i32) -> String {
        // Very long labels: nothing past a few hundred characters can fit anyway.
        let mut chars: Vec<char> = text.trim().chars().take(400).collect();
        let full: String = chars.iter().collect();
        if chars.len() < 400 && self.text_width(&full, size) <= max_width {
            return full;
        }
        // Cut by halves, then one character at a time.
        while chars.len() > 8 {
            let half: String = chars[..chars.len() / 2].iter().collect();
            if self.text_width(&format!("{half}…"), size) <= max_width {
                break;
            }
            chars.truncate(chars.len() / 2);
        }
        while !chars.is_empty() {
            let candidate = format!("{}…", chars.iter().collect::<String>().trim_end());
            if self.text_width(&candidate, size) <= max_width {
                return candidate;
            }
            chars.pop();
        }
        if self.text_width("…", size) <= max_width {
            "…".to_string()
        } else {
            String::new()
        }
    }

    /// `text` broken into at most `max_lines` lines of at most `max_width` pixels at `size`,
    /// and whether it fitted without shortening.
    fn wrap(&self, text: &str, size: f64, max_width: i32, max_lines: usize) -> (Vec<String>, bool) {
        let mut lines: Vec<String> = Vec::new();
        let mut complete = true;
        let mut current = String::new();
        for word in text.split_whitespace().take(200) {
            let candidate = if current.is_empty() {
                word.to_string()
            } else {
                format!("{current} {word}")
            };
            if self.text_width(&candidate, size) <= max_width {
                current = candidate;
                continue;
            }
            if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            if self.text_width(word, size) <= max_width {
                current = word.to_string();
            } else {
                complete = false;
                lines.push(self.fit(word, size, max_width));
            }
        }
        if !current.is_empty() {
            lines.push(current);
        }
        if lines.len() > max_lines.max(1) {
            complete = false;
            let rest = lines.split_off(max_lines.max(1) - 1).join(" ");
            lines.push(self.fit(&rest, size, max_width));
        }
        (lines, complete)
    }

    /// Draws the title and, under it, the legend (one entry per system, wrapped into rows,
    /// each centred); returns the y under them.
    fn header(&self, title: &str, systems: &[String], swatch: Swatch) -> Result<i32, DrawError> {
        let mut y = self.pad;
        let title = self.fit(title, self.title_font, self.width - 2 * self.pad);
        if !title.is_empty() {
            self.text(
                &title,
                self.title_font,
                INK,
                (self.width / 2, y),
                HPos::Center,
                VPos::Top,
                Dir::Across,
            )?;
            y += self.line_height(self.title_font) + self.pad;
        }
        if systems.is_empty() {
            return Ok(y);
        }
        let font = self.font;
        let mark = (font * 1.6).round() as i32;
        let gap = (font * 0.4).round() as i32;
        let spacing = (font * 1.5).round() as i32;
        let row_height = self.line_height(font).max(mark / 2) + gap;
        let usable = self.width - 2 * self.pad;
        let name_max = (usable / 2).max(60) - mark - gap;
        // Rows of (colour, name, entry width); no colour for the "+N more" note.
        let mut rows: Vec<Vec<(Option<RGBColor>, String, i32)>> = Vec::new();
        let mut row: Vec<(Option<RGBColor>, String, i32)> = Vec::new();
        let mut row_width = 0;
        for (i, system) in systems.iter().enumerate() {
            let name = self.fit(system, font, name_max);
            let entry = mark + gap + self.text_width(&name, font);
            if !row.is_empty() && row_width + spacing + entry > usable {
                rows.push(std::mem::take(&mut row));
                row_width = 0;
            }
            if !row.is_empty() {
                row_width += spacing;
            }
            row_width += entry;
            row.push((Some(system_color(i)), name, entry));
        }
        rows.push(row);
        // At most a quarter of the height for the legend.
        let max_rows = ((self.height / 4) / row_height).max(1) as usize;
        if rows.len() > max_rows {
            let hidden: usize = rows[max_rows..].iter().map(Vec::len).sum();
            rows.truncate(max_rows);
            if let Some(last) = rows.last_mut() {
                let note = format!("+{hidden} more");
                let width = self.text_width(&note, font);
                last.push((None, note, width));
            }
        }
        for row in &rows {
            let total: i32 =
                row.iter().map(|e| e.2).sum::<i32>() + spacing * (row.len() as i32 - 1).max(0);
            let mut x = (self.width - total).max(0) / 2;
            let mid = y + row_height / 2;
            for (color, name, entry) in row {
                let text_x = match color {
                    Some(color) => {
                        swatch.draw(self, *color, x, mid, mark)?;
                        x + mark + gap
                    }
                    None => x,
                };
                let ink = if color.is_some() { INK } else { MUTED };
                self.text(
                    name,
                    font,
                    ink,
                    (text_x, mid),
                    HPos::Left,
                    VPos::Center,
                    Dir::Across,
                )?;
                x += entry + spacing;
            }
            y += row_height;
        }
        Ok(y + gap)
    }

    /// Draws `text` rotated, centred along the left edge of the plot from `top` to `bottom`.
    fn y_title(&self, text: &str, top: i32, bottom: i32) -> Result<(), DrawError> {
        let text = self.fit(text, self.font, bottom - top);
        let x = self.pad + self.line_height(self.font) / 2;
        self.text(
            &text,
            self.font,
            INK,
            (x, (top + bottom) / 2),
            HPos::Center,
            VPos::Center,
            Dir::Up,
        )
    }

    /// Width taken by the y title (0 if there is none) and its gap.
    fn y_title_width(&self, text: &str) -> i32 {
        if text.trim().is_empty() {
            0
        } else {
            self.line_height(self.font) + self.pad
        }
    }

    /// A straight line.
    fn line(
        &self,
        from: (i32, i32),
        to: (i32, i32),
        color: RGBColor,
        width: u32,
    ) -> Result<(), DrawError> {
        self.area
            .draw(&PathElement::new(vec![from, to], color.stroke_width(width)))?;
        Ok(())
    }

    /// "no data", centred in the plot.
    fn no_data(&self, plot: &Plot) -> Result<(), DrawError> {
        self.text(
            "no data",
            self.title_font,
            MUTED,
            ((plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2),
            HPos::Center,
            VPos::Center,
            Dir::Across,
        )
    }
}

/// How a system is shown in the legend.
#[derive(Clone, Copy)]
enum Swatch {
    /// A filled square (bars).
    Block,
    /// A short line with a dot (curves).
    Line,
}

impl Swatch {
    /// Draws the swatch from `x` over `width` pixels, centred on `y`.
    fn draw(
        self,
        canvas: &Canvas<'_>,
        color: RGBColor,
        x: i32,
        y: i32,
        width: i32,
    ) -> Result<(), DrawError> {
        match self {
            Swatch::Block => {
                let side = (width * 5 / 8).max(6);
                let x0 = x + (width - side) / 2;
                canvas.area.draw(&Rectangle::new(
                    [(x0, y - side / 2), (x0 + side, y + side / 2)],
                    color.filled(),
                ))?;
            }
            Swatch::Line => {
                canvas.line((x, y), (x + width, y), color, 3)?;
                canvas
                    .area
                    .draw(&Circle::new((x + width / 2, y), 3, color.filled()))?;
            }
        }
        Ok(())
    }
}

/// The plot rectangle, in pixels.
struct Plot {
    /// Left edge (the y axis).
    left: i32,
    /// Right edge.
    right: i32,
    /// Top edge.
    top: i32,
    /// Bottom edge (the x axis).
    bottom: i32,
}

impl Plot {
    /// Draws the axes: the left and bottom edges.
    fn axes(&self, canvas: &Canvas<'_>) -> Result<(), DrawError> {
        canvas.line((self.left, self.top), (self.left, self.bottom), INK, 1)?;
        canvas.line((self.left, self.bottom), (self.right, self.bottom), INK, 1)
    }
}

/// `systems` without repeats, followed by the systems of `used` that it does not name.
fn merged_systems<'a>(systems: &'a [String], used: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut all: Vec<String> = Vec::with_capacity(systems.len());
    for system in systems.iter().map(String::as_str).chain(used) {
        if !all.iter().any(|s| s == system) {
            all.push(system.to_string());
        }
    }
    all
}

/// The position of `system` in `systems` (which [`merged_systems`] made contain it).
fn system_index(systems: &[String], system: &str) -> usize {
    systems.iter().position(|s| s == system).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Bars.

/// How the group labels are laid out under the groups.
enum GroupLabels {
    /// Left to right, each in up to this many lines.
    Across(usize),
    /// Bottom to top, each at most this long.
    Up(i32),
}

/// Draws the bar chart on `canvas`.
fn draw_bars(
    canvas: &Canvas<'_>,
    title: &str,
    y_label: &str,
    systems: &[String],
    groups: &[BarGroup],
) -> Result<(), DrawError> {
    let font = canvas.font;
    let line_height = canvas.line_height(font);
    let top = canvas.header(title, systems, Swatch::Block)? + line_height / 2;

    let valid = |v: f64| v.is_finite() && v >= 0.0;
    let data_max = groups
        .iter()
        .flat_map(|g| &g.bars)
        .flat_map(|b| [Some(b.value), b.low, b.high])
        .flatten()
        .filter(|v| valid(*v))
        .fold(0.0_f64, f64::max);
    let has_data = groups.iter().flat_map(|g| &g.bars).any(|b| valid(b.value));

    // The y scale, with room above the highest bar for its value label.
    let label_room = canvas.line_height(canvas.small_font) + 6;
    let rough_height = (canvas.height - top - canvas.pad - 3 * line_height).max(40);
    let wanted = if data_max > 0.0 {
        data_max * f64::from(rough_height) / f64::from((rough_height - label_room).max(20))
    } else {
        1.0
    };
    let tick_count = (rough_height / (line_height * 3)).clamp(2, 10) as usize;
    let (step, mut y_max) = nice_scale(wanted, tick_count);

    let tick_label_width = (0..=((y_max / step).round() as i64 + 1))
        .map(|k| canvas.text_width(&compact(k as f64 * step), font))
        .max()
        .unwrap_or(0);
    let left = canvas.pad + canvas.y_title_width(y_label) + tick_label_width + 8;
    let right = canvas.width - canvas.pad - line_height;
    let plot_width = (right - left).max(1);

    // Group labels: across in up to three lines if they all fit so, else rotated.
    let group_width = f64::from(plot_width) / groups.len().max(1) as f64;
    let label_width = (group_width as i32 - 6).max(1);
    let wrapped: Vec<(Vec<String>, bool)> = groups
        .iter()
        .map(|g| canvas.wrap(&g.label, font, label_width, 3))
        .collect();
    let longest = groups
        .iter()
        .map(|g| canvas.text_width(g.label.trim(), font))
        .max()
        .unwrap_or(0);
    let max_up = canvas.height / 4;
    let labels = if wrapped.iter().all(|(_, complete)| *complete)
        || group_width < f64::from(line_height) * 1.2
    {
        GroupLabels::Across(wrapped.iter().map(|(l, _)| l.len()).max().unwrap_or(0))
    } else {
        GroupLabels::Up(longest.min(max_up))
    };
    let label_area = match labels {
        GroupLabels::Across(lines) => lines as i32 * line_height + 8,
        GroupLabels::Up(length) => length + 8,
    };
    let bottom = canvas.height - canvas.pad - label_area;
    let plot = Plot {
        left,
        right,
        top,
        bottom: bottom.max(top + 20),
    };
    let plot_height = f64::from(plot.bottom - plot.top);
    // The highest bar's label must fit under the top edge.
    if data_max > 0.0 && data_max / y_max * plot_height > plot_height - f64::from(label_room) {
        y_max += step;
    }
    let y_of = |v: f64| -> i32 {
        let v = if v.is_finite() {
            v.clamp(0.0, y_max)
        } else {
            0.0
        };
        plot.bottom - (v / y_max * plot_height).round() as i32
    };

    // Grid and y labels.
    let ticks = (y_max / step).round() as i64;
    for k in 0..=ticks {
        let v = k as f64 * step;
        let y = y_of(v);
        if k > 0 {
            canvas.line((plot.left, y), (plot.right, y), GRID, 1)?;
        }
        canvas.text(
            &compact(v),
            font,
            INK,
            (plot.left - 6, y),
            HPos::Right,
            VPos::Center,
            Dir::Across,
        )?;
    }
    canvas.y_title(y_label, plot.top, plot.bottom)?;

    // Bars, value labels, error bars.
    let max_bar = (font * 6.0).max(12.0);
    for (g, group) in groups.iter().enumerate() {
        let x0 = f64::from(plot.left) + g as f64 * group_width;
        if g > 0 {
            let x = x0.round() as i32;
            canvas.line((x, plot.bottom), (x, plot.bottom + 5), INK, 1)?;
        }
        let mut bars: Vec<(usize, &Bar)> = group
            .bars
            .iter()
            .map(|b| (system_index(systems, &b.system), b))
            .collect();
        bars.sort_by_key(|(i, _)| *i);
        if !bars.is_empty() {
            let slot = (group_width * 0.8 / bars.len() as f64).min(max_bar);
            let start = x0 + (group_width - slot * bars.len() as f64) / 2.0;
            for (j, (index, bar)) in bars.iter().enumerate() {
                let slot_left = start + j as f64 * slot;
                draw_bar(
                    canvas,
                    &plot,
                    &y_of,
                    slot_left,
                    slot,
                    system_color(*index),
                    bar,
                )?;
            }
        }
        // The group's label.
        let center = (x0 + group_width / 2.0).round() as i32;
        match labels {
            GroupLabels::Across(_) => {
                for (l, line) in wrapped[g].0.iter().enumerate() {
                    canvas.text(
                        line,
                        font,
                        INK,
                        (center, plot.bottom + 6 + l as i32 * line_height),
                        HPos::Center,
                        VPos::Top,
                        Dir::Across,
                    )?;
                }
            }
            GroupLabels::Up(length) => {
                let text = canvas.fit(&group.label, font, length);
                canvas.text(
                    &text,
                    font,
                    INK,
                    (center, plot.bottom + 6),
                    HPos::Right,
                    VPos::Center,
                    Dir::Up,
                )?;
            }
        }
    }
    plot.axes(canvas)?;
    if !has_data {
        canvas.no_data(&plot)?;
    }
    Ok(())
}

/// Draws one bar in the slot from `slot_left`, `slot` pixels wide: the bar, its error bar,
/// its value above (if it fits the slot), or "n/a" for a value that cannot be drawn.
fn draw_bar(
    canvas: &Canvas<'_>,
    plot: &Plot,
    y_of: &dyn Fn(f64) -> i32,
    slot_left: f64,
    slot: f64,
    color: RGBColor,
    bar: &Bar,
) -> Result<(), DrawError> {
    let inset = (slot * 0.08).min(4.0);
    let x0 = (slot_left + inset).round() as i32;
    let x1 = ((slot_left + slot - inset).round() as i32).max(x0 + 1);
    let center = (x0 + x1) / 2;
    let slot_width = slot.round() as i32;
    if !(bar.value.is_finite() && bar.value >= 0.0) {
        let size = canvas.small_font;
        if canvas.text_width("n/a", size) <= slot_width {
            canvas.text(
                "n/a",
                size,
                MUTED,
                (center, plot.bottom - 3),
                HPos::Center,
                VPos::Bottom,
                Dir::Across,
            )?;
        }
        return Ok(());
    }
    let top = y_of(bar.value);
    if top < plot.bottom {
        canvas.area.draw(&Rectangle::new(
            [(x0, top), (x1, plot.bottom)],
            color.filled(),
        ))?;
    }
    let mut label_bottom = top;
    let usable = |v: &f64| v.is_finite();
    if bar.low.is_some_and(|v| usable(&v)) || bar.high.is_some_and(|v| usable(&v)) {
        let low = bar.low.filter(usable).unwrap_or(bar.value);
        let high = bar.high.filter(usable).unwrap_or(bar.value);
        let (y_low, y_high) = (y_of(low.min(high)), y_of(low.max(high)));
        let cap = ((x1 - x0) / 6).clamp(2, 8);
        canvas.line((center, y_low), (center, y_high), WHISKER, 1)?;
        canvas.line((center - cap, y_high), (center + cap, y_high), WHISKER, 1)?;
        canvas.line((center - cap, y_low), (center + cap, y_low), WHISKER, 1)?;
        label_bottom = label_bottom.min(y_high);
    }
    let text = compact(bar.value);
    for size in [canvas.small_font, (canvas.small_font * 0.8).round()] {
        if size >= 8.0 && canvas.text_width(&text, size) <= slot_width {
            canvas.text(
                &text,
                size,
                INK,
                (center, label_bottom - 3),
                HPos::Center,
                VPos::Bottom,
                Dir::Across,
            )?;
            break;
        }
    }
    Ok(())
}

/// A "nice" tick step (1, 2, 2.5 or 5 × 10^k) for about `ticks` ticks from 0 to `max`, and the
/// first multiple of it at or above `max`.
fn nice_scale(max: f64, ticks: usize) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max.min(1e300)
    } else {
        1.0
    };
    let raw = max / ticks.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    let top = ((max / step) * (1.0 - 1e-9)).ceil().max(1.0) * step;
    (step, top)
}

/// `v` in three significant digits with a k/M/G/T suffix: "0", "0.25", "12.3", "123k",
/// "1.5M".
fn compact(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let mut a = v.abs();
    let mut unit = 0;
    const UNITS: [&str; 5] = ["", "k", "M", "G", "T"];
    while a >= 999.5 && unit + 1 < UNITS.len() {
        a /= 1000.0;
        unit += 1;
    }
    let digits = if a >= 100.0 {
        0
    } else {
        (2 - a.log10().floor() as i32).clamp(0, 9) as usize
    };
    let mut s = format!("{a:.digits$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{sign}{s}{}", UNITS[unit])
}

// ---------------------------------------------------------------------------------------------
// Latency curves.

/// Position of percentile `p` on the nines axis (`None` for a NaN or negative percentile);
/// `max_x` is where the maximum goes (p >= 100).
fn nines(p: f64, max_x: f64) -> Option<f64> {
    if p.is_nan() || p < 0.0 {
        None
    } else if p >= 100.0 {
        Some(max_x)
    } else {
        Some((-(1.0 - p / 100.0).log10()).min(MAX_NINES))
    }
}

/// The most nines shown (p99.9999999); higher percentiles are drawn there.
const MAX_NINES: f64 = 9.0;

/// "p90", "p99", "p99.9", … for `k` nines.
fn nines_label(k: u32) -> String {
    match k {
        0 => "p0".to_string(),
        1 => "p90".to_string(),
        2 => "p99".to_string(),
        _ => format!("p99.{}", "9".repeat(k as usize - 2)),
    }
}

/// `ns` nanoseconds in the largest unit that keeps it at 1 or more: "500 ns", "2 µs",
/// "1.5 ms", "10 s".
fn duration_label(ns: f64) -> String {
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{} {unit}", compact(value))
}

/// log10 of the 1, 2 or 5 × 10^k at or under `v` (`up`: at or over it).
fn step_125(v: f64, up: bool) -> f64 {
    let v = v.max(1.0);
    let decade = v.log10().floor();
    let steps = [1.0, 2.0, 5.0, 10.0].map(|m| m * 10f64.powf(decade));
    let tolerance = v * 1e-9;
    let step = if up {
        steps.into_iter().find(|s| *s >= v - tolerance)
    } else {
        steps.into_iter().rev().find(|s| *s <= v + tolerance)
    };
    step.unwrap_or(v).log10()
}

/// Draws the latency chart on `canvas`.
fn draw_latency(
    canvas: &Canvas<'_>,
    title: &str,
    systems: &[String],
    curves: &[Curve],
) -> Result<(), DrawError> {
    let font = canvas.font;
    let line_height = canvas.line_height(font);
    let top = canvas.header(title, systems, Swatch::Line)? + line_height / 2;

    // The x scale: the last labelled number of nines (at least p99.9), then max.
    let finite: Vec<f64> = curves
        .iter()
        .flat_map(|c| &c.points)
        .filter(|(p, _)| *p < 100.0)
        .filter_map(|(p, _)| nines(*p, 0.0))
        .collect();
    let last_nines = finite
        .iter()
        .fold(3.0_f64, |a, x| a.max((x - 1e-6).ceil()))
        .min(MAX_NINES) as u32;
    let max_x = f64::from(last_nines + 1);
    let x_range = (0.0, max_x + 0.25);

    // The y scale: from the 1-2-5 step under the lowest latency to the one over the highest,
    // as powers of ten.
    let latencies: Vec<u64> = curves
        .iter()
        .flat_map(|c| &c.points)
        .filter(|(p, _)| nines(*p, max_x).is_some())
        .map(|(_, ns)| *ns)
        .collect();
    let has_data = !latencies.is_empty();
    let (y_low, y_high) = if has_data {
        let lowest = latencies.iter().copied().min().unwrap_or(1).max(1) as f64;
        let highest = latencies.iter().copied().max().unwrap_or(1).max(1) as f64;
        // A little room, so that points are not drawn on the edges.
        let low = step_125(lowest / 1.05, false);
        let high = step_125(highest * 1.05, true).max(low + 2f64.log10());
        (low, high)
    } else {
        (3.0, 6.0) // 1 µs to 1 ms
    };
    let (low_decade, high_decade) = (y_low.floor() as i32, y_high.ceil() as i32);

    // x labels: p50, p90, p99, …, max, and min if some curve has p0.
    let mut x_ticks: Vec<(f64, String)> = Vec::new();
    if curves
        .iter()
        .flat_map(|c| &c.points)
        .any(|(p, _)| *p == 0.0)
    {
        x_ticks.push((0.0, "min".to_string()));
    }
    x_ticks.push((2f64.log10(), "p50".to_string()));
    x_ticks.extend((1..=last_nines).map(|k| (f64::from(k), nines_label(k))));
    x_ticks.push((max_x, "max".to_string()));

    // y ticks: 1, 2, 5 × 10^k, or only some decades, as room allows.
    let tick_values: Vec<(f64, bool)> = (low_decade..=high_decade)
        .flat_map(|d| {
            [1.0, 2.0, 5.0]
                .into_iter()
                .map(move |m| (m * 10f64.powi(d), m == 1.0))
        })
        .filter(|(v, _)| (y_low - 1e-9..=y_high + 1e-9).contains(&v.log10()))
        .collect();
    let label_width = tick_values
        .iter()
        .map(|(v, _)| canvas.text_width(&duration_label(*v), font))
        .max()
        .unwrap_or(0);
    let left = canvas.pad + canvas.y_title_width("latency") + label_width + 8;
    let right = canvas.width - canvas.pad - line_height;
    let bottom = canvas.height - canvas.pad - 2 * line_height - 10;
    let plot = Plot {
        left,
        right: right.max(left + 20),
        top,
        bottom: bottom.max(top + 20),
    };
    let plot_width = f64::from(plot.right - plot.left);
    let plot_height = f64::from(plot.bottom - plot.top);
    let x_of = |x: f64| -> i32 {
        plot.left + ((x - x_range.0) / (x_range.1 - x_range.0) * plot_width).round() as i32
    };
    let decades = y_high - y_low;
    let y_of = |ns: f64| -> i32 {
        let d = (ns.max(1.0).log10() - y_low).clamp(0.0, decades);
        plot.bottom - (d / decades * plot_height).round() as i32
    };

    // Grid and y labels: minor values labelled if a decade is tall enough; decades skipped if
    // even they would crowd.
    let decade_height = plot_height / decades;
    let minor_labels = decade_height >= f64::from(line_height) * 4.0;
    let decade_every = (f64::from(line_height) * 1.5 / decade_height)
        .ceil()
        .max(1.0) as i32;
    for (v, major) in &tick_values {
        let y = y_of(*v);
        let decade = v.log10().round() as i32;
        if y > plot.top && y < plot.bottom {
            canvas.line(
                (plot.left, y),
                (plot.right, y),
                if *major { GRID } else { GRID_MINOR },
                1,
            )?;
        }
        let labelled = if *major {
            (decade - low_decade) % decade_every == 0
        } else {
            minor_labels
        };
        if labelled {
            canvas.text(
                &duration_label(*v),
                font,
                INK,
                (plot.left - 6, y),
                HPos::Right,
                VPos::Center,
                Dir::Across,
            )?;
        }
    }
    canvas.y_title("latency", plot.top, plot.bottom)?;

    // x grid and labels, leaving out those that would overlap (max is always kept).
    let mut placed: Vec<(i32, i32, usize)> = Vec::new(); // (left, right, tick)
    for (i, (x, label)) in x_ticks.iter().enumerate() {
        let center = x_of(*x);
        let half = canvas.text_width(label, font) / 2 + 4;
        let is_max = i + 1 == x_ticks.len();
        while is_max && placed.last().is_some_and(|(_, r, _)| *r > center - half) {
            placed.pop();
        }
        if placed.last().is_none_or(|(_, r, _)| *r <= center - half) {
            placed.push((center - half, center + half, i));
        }
    }
    for (x, _) in &x_ticks {
        let px = x_of(*x);
        canvas.line((px, plot.top), (px, plot.bottom), GRID, 1)?;
    }
    for (_, _, i) in &placed {
        let (x, label) = &x_ticks[*i];
        let px = x_of(*x);
        canvas.line((px, plot.bottom), (px, plot.bottom + 4), INK, 1)?;
        canvas.text(
            label,
            font,
            INK,
            (px, plot.bottom + 6),
            HPos::Center,
            VPos::Top,
            Dir::Across,
        )?;
    }
    canvas.text(
        "percentile",
        font,
        INK,
        ((plot.left + plot.right) / 2, plot.bottom + 10 + line_height),
        HPos::Center,
        VPos::Top,
        Dir::Across,
    )?;
    plot.axes(canvas)?;

    // The curves.
    for curve in curves {
        let color = system_color(system_index(systems, &curve.system));
        let mut points: Vec<(f64, u64)> = curve
            .points
            .iter()
            .filter_map(|(p, ns)| nines(*p, max_x).map(|x| (x, *ns)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let pixels: Vec<(i32, i32)> = points
            .iter()
            .map(|(x, ns)| (x_of(*x), y_of(*ns as f64)))
            .collect();
        if pixels.len() > 1 {
            canvas
                .area
                .draw(&PathElement::new(pixels.clone(), color.stroke_width(2)))?;
        }
        for p in pixels {
            canvas.area.draw(&Circle::new(p, 4, color.filled()))?;
        }
    }
    if !has_data {
        canvas.no_data(&plot)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Systems of a typical comparison.
    fn systems() -> Vec<String> {
        [
            "wharf (fsync)",
            "wharf (no fsync)",
            "NATS JetStream (sync)",
            "RabbitMQ stream",
            "Redis Streams (appendfsync always)",
        ]
        .map(String::from)
        .to_vec()
    }

    fn bar(system: &str, value: f64, spread: Option<(f64, f64)>) -> Bar {
        Bar {
            system: system.to_string(),
            value,
            low: spread.map(|s| s.0),
            high: spread.map(|s| s.1),
        }
    }

    /// A typical throughput chart, with a zero, a NaN, a system missing from a group, one
    /// missing from `systems` and a long label.
    fn sample_groups(systems: &[String]) -> Vec<BarGroup> {
        let values = [
            (
                "publish 100 B",
                [182_000.0, 1_250_000.0, 95_500.0, 310_000.0, 64_000.0],
            ),
            (
                "publish 1 KiB",
                [150_000.0, 880_000.0, 80_100.0, 240_000.0, 52_000.0],
            ),
            (
                "publish 64 KiB, batch 1, 16 in flight",
                [8_100.0, 12_000.0, 0.0, 7_300.0, f64::NAN],
            ),
            (
                "consume 1 KiB",
                [420_000.0, 450_000.0, 210_000.0, 600_000.0, 380_000.0],
            ),
        ];
        let mut groups: Vec<BarGroup> = values
            .iter()
            .map(|(label, vs)| BarGroup {
                label: label.to_string(),
                bars: systems
                    .iter()
                    .zip(vs)
                    .map(|(s, v)| bar(s, *v, v.is_finite().then_some((v * 0.92, v * 1.05))))
                    .collect(),
            })
            .collect();
        groups[3].bars.remove(2);
        groups.push(BarGroup {
            label: "queue 1 KiB (work queue, 16 consumers, ack per batch)".to_string(),
            bars: vec![
                bar(&systems[0], 95_000.0, Some((90_000.0, 99_000.0))),
                bar("Kafka (not in systems)", 120_000.0, None),
            ],
        });
        groups
    }

    /// Typical latency curves, one with p99.99, one with a single point.
    fn sample_curves(systems: &[String]) -> Vec<Curve> {
        let base = [
            (50.0, 1.0),
            (90.0, 1.6),
            (99.0, 3.5),
            (99.9, 9.0),
            (100.0, 30.0),
        ];
        let scales = [180_000.0, 90_000.0, 400_000.0, 1_100_000.0, 250_000.0];
        let mut curves: Vec<Curve> = systems
            .iter()
            .zip(scales)
            .map(|(s, scale)| Curve {
                system: s.clone(),
                points: base.iter().map(|(p, m)| (*p, (m * scale) as u64)).collect(),
            })
            .collect();
        curves[1].points.push((99.99, 2_000_000));
        curves[4].points = vec![(99.0, 700_000)];
        curves
    }

    /// Where the tests write their charts: a temporary directory, or `$WHARF_CHART_TEST_DIR`
    /// to keep them for a look.
    fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
        match std::env::var_os("WHARF_CHART_TEST_DIR") {
            Some(dir) => (None, PathBuf::from(dir)),
            None => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().to_path_buf();
                (Some(dir), path)
            }
        }
    }

    /// A bar chart test case: name, systems, groups, size.
    type BarCase = (&'static str, Vec<String>, Vec<BarGroup>, (u32, u32));

    /// Asserts `path` is a PNG of `size`, from its signature and IHDR chunk.
    fn assert_png(path: &Path, size: (u32, u32)) {
        let bytes = std::fs::read(path).expect("chart written");
        assert!(bytes.len() > 33, "{} too short", path.display());
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let width = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes"));
        let height = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));
        assert_eq!((width, height), size, "{}", path.display());
    }

    #[test]
    fn chart_bars_typical_and_degenerate() {
        let (_keep, dir) = out_dir();
        let systems = systems();
        let long = "x".repeat(5000);
        let many: Vec<BarGroup> = (0..40)
            .map(|i| BarGroup {
                label: format!("case number {i} with a rather long description"),
                bars: (0..12)
                    .map(|s| bar(&format!("system {s}"), f64::from(i * 1000 + s), None))
                    .collect(),
            })
            .collect();
        let cases: Vec<BarCase> = vec![
            (
                "typical",
                systems.clone(),
                sample_groups(&systems),
                (1200, 650),
            ),
            ("no-groups", systems.clone(), vec![], (800, 500)),
            ("no-systems-no-groups", vec![], vec![], (800, 500)),
            (
                "empty-group",
                systems.clone(),
                vec![BarGroup {
                    label: "nothing".into(),
                    bars: vec![],
                }],
                (800, 500),
            ),
            (
                "one-system-zero",
                vec!["wharf".into()],
                vec![BarGroup {
                    label: "publish".into(),
                    bars: vec![bar("wharf", 0.0, None)],
                }],
                (800, 500),
            ),
            (
                "all-invalid",
                systems.clone(),
                vec![BarGroup {
                    label: "bad".into(),
                    bars: vec![
                        bar(&systems[0], f64::NAN, Some((f64::NAN, f64::INFINITY))),
                        bar(&systems[1], -5.0, None),
                        bar(&systems[2], f64::INFINITY, None),
                    ],
                }],
                (800, 500),
            ),
            (
                "extremes",
                vec![long.clone(), "tiny".into()],
                vec![
                    BarGroup {
                        label: long.clone(),
                        bars: vec![
                            bar(&long, 1e15, Some((-1.0, 2e15))),
                            bar("tiny", 1e-9, None),
                        ],
                    },
                    BarGroup {
                        label: String::new(),
                        bars: vec![bar("tiny", 3.0, Some((5.0, 1.0)))],
                    },
                ],
                (640, 400),
            ),
            ("many", vec![], many, (1200, 650)),
            (
                "smallest",
                systems.clone(),
                sample_groups(&systems),
                (MIN_WIDTH, MIN_HEIGHT),
            ),
        ];
        for (name, systems, groups, size) in cases {
            let path = dir.join(format!("bars-{name}.png"));
            let result = bars(
                &path,
                &format!("throughput: {name}"),
                "msg/s",
                &systems,
                &groups,
                size,
            );
            assert!(result.is_ok(), "{name}: {result:?}");
            assert_png(&path, size);
        }
    }

    #[test]
    fn chart_latency_typical_and_degenerate() {
        let (_keep, dir) = out_dir();
        let systems = systems();
        let one = |points: Vec<(f64, u64)>| {
            vec![Curve {
                system: "wharf".into(),
                points,
            }]
        };
        let cases: Vec<(&str, Vec<String>, Vec<Curve>)> = vec![
            ("typical", systems.clone(), sample_curves(&systems)),
            ("no-curves", systems.clone(), vec![]),
            ("no-systems", vec![], vec![]),
            ("empty-points", vec!["wharf".into()], one(vec![])),
            (
                "single-point",
                vec!["wharf".into()],
                one(vec![(50.0, 1000)]),
            ),
            (
                "only-max",
                vec!["wharf".into()],
                one(vec![(100.0, 5_000_000)]),
            ),
            (
                "zeros",
                vec!["wharf".into()],
                one(vec![(50.0, 0), (99.0, 0), (100.0, 0)]),
            ),
            (
                "odd-percentiles",
                vec![],
                one(vec![
                    (f64::NAN, 5),
                    (-1.0, 5),
                    (0.0, 10),
                    (99.999_999_999_9, 1_000),
                    (150.0, u64::MAX),
                ]),
            ),
        ];
        for (name, systems, curves) in cases {
            let path = dir.join(format!("latency-{name}.png"));
            let size = (900, 550);
            let result =
                latency_curves(&path, &format!("latency: {name}"), &systems, &curves, size);
            assert!(result.is_ok(), "{name}: {result:?}");
            assert_png(&path, size);
        }
    }

    #[test]
    fn chart_rejects_impossible_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let png = dir.path().join("c.png");
        let systems = systems();
        for size in [
            (0, 0),
            (100, 600),
            (600, 100),
            (MAX_SIDE + 1, 600),
            (u32::MAX, u32::MAX),
        ] {
            let err = bars(&png, "t", "y", &systems, &[], size).expect_err("bad size");
            assert!(matches!(err, ChartError::Size(..)), "{err}");
            let err = latency_curves(&png, "t", &systems, &[], size).expect_err("bad size");
            assert!(matches!(err, ChartError::Size(..)), "{err}");
        }
        let err = bars(
            &dir.path().join("c.jpg"),
            "t",
            "y",
            &systems,
            &[],
            (400, 300),
        )
        .expect_err("not png");
        assert!(matches!(err, ChartError::NotPng(_)), "{err}");
        let missing = dir.path().join("no/such/dir/c.png");
        let err = latency_curves(&missing, "t", &systems, &[], (400, 300)).expect_err("no dir");
        assert!(matches!(err, ChartError::Draw { .. }), "{err}");
        assert!(!missing.exists());
    }

    #[test]
    fn chart_number_formats() {
        let cases = [
            (0.0, "0"),
            (0.25, "0.25"),
            (1.0, "1"),
            (12.34, "12.3"),
            (123.4, "123"),
            (999.4, "999"),
            (999.6, "1k"),
            (1_000.0, "1k"),
            (123_456.0, "123k"),
            (1_250_000.0, "1.25M"),
            (999_999.0, "1M"),
            (2.5e9, "2.5G"),
            (7e15, "7000T"),
            (-1500.0, "-1.5k"),
            (f64::NAN, "n/a"),
        ];
        for (v, want) in cases {
            assert_eq!(compact(v), want, "{v}");
        }
        assert_eq!(duration_label(500.0), "500 ns");
        assert_eq!(duration_label(2_000.0), "2 µs");
        assert_eq!(duration_label(1_500_000.0), "1.5 ms");
        assert_eq!(duration_label(1e10), "10 s");
        assert_eq!(nines_label(1), "p90");
        assert_eq!(nines_label(3), "p99.9");
        assert_eq!(nines_label(5), "p99.999");
        assert_eq!(nice_scale(9.3, 5), (2.0, 10.0));
        assert_eq!(nice_scale(0.0, 5), (0.2, 1.0));
        assert_eq!(nice_scale(f64::NAN, 5), (0.2, 1.0));
        let (step, top) = nice_scale(1_234_567.0, 6);
        assert_eq!((step, top), (250_000.0, 1_250_000.0));
        assert!((nines(99.9, 5.0).expect("valid") - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0, 5.0), Some(5.0));
        assert_eq!(nines(f64::NAN, 5.0), None);
    }

    /// Writes the sample charts to /tmp for a look:
    /// `cargo test -p wharf --bin wharf chart_samples -- --ignored`.
    #[test]
    #[ignore = "writes /tmp/chart-sample-*.png for review"]
    fn chart_samples() {
        let systems = systems();
        let out = Path::new("/tmp");
        bars(
            &out.join("chart-sample-bars.png"),
            "Throughput (msg/s, higher is better)",
            "messages per second",
            &systems,
            &sample_groups(&systems),
            (1200, 650),
        )
        .expect("bars");
        latency_curves(
            &out.join("chart-sample-latency.png"),
            "Latency at 10k msg/s (lower is better)",
            &systems,
            &sample_curves(&systems),
            (1200, 650),
        )
        .expect("latency");
    }
}
