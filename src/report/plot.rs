//! Comparison plots with plotters, each as PNG and SVG: pretraining loss curves
//! (mean over a group's runs with a ±std band) and downstream metrics as horizontal
//! bars (mean, ±std error bars, one dot per run). Text is drawn with a TrueType font
//! read at run time (DejaVu Sans from `fonts-dejavu-core`, or `VSSL_FONT`), so no
//! fontconfig or freetype is needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::runs::{stat, Group, RunData};
use crate::{Error, Result};

/// Where fonts usually are (Debian/Ubuntu, Fedora, Arch, macOS).
const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Tableau 10: distinct on white, colour-blind aware.
const COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The colour of row `i` (the same row has the same colour in every plot).
fn color(i: usize) -> RGBColor {
    let (r, g, b) = COLORS[i % COLORS.len()];
    RGBColor(r, g, b)
}

static FONT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Registers the plot font once per process (the `VSSL_FONT` file, else the first
/// of `FONT_PATHS` that exists); returns its path.
pub fn ensure_font() -> Result<PathBuf> {
    FONT.get_or_init(|| {
        let mut tried = Vec::new();
        let env = std::env::var_os("VSSL_FONT").map(PathBuf::from);
        for p in env
            .iter()
            .cloned()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
        {
            tried.push(p.display().to_string());
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            // plotters keeps fonts for the life of the process; registered once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(p);
            }
        }
        Err(format!(
            "no TrueType font for plot text (tried {}): install fonts-dejavu-core \
             (`bash tools/setup.sh` does) or set VSSL_FONT=/path/to/font.ttf",
            tried.join(", ")
        ))
    })
    .clone()
    .map_err(Error::BadInput)
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("plotting {}: {e}", path.display()))
}

/// Writes `<stem>.png` and `<stem>.svg`; `png` and `svg` draw the same picture
/// (one generic drawing function called for each backend).
fn both<P, S>(stem: &Path, size: (u32, u32), png: P, svg: S) -> Result<Vec<PathBuf>>
where
    P: Fn(&DrawingArea<BitMapBackend, Shift>) -> std::result::Result<(), String>,
    S: Fn(&DrawingArea<SVGBackend, Shift>) -> std::result::Result<(), String>,
{
    ensure_font()?;
    let png_path = stem.with_extension("png");
    {
        let root = BitMapBackend::new(&png_path, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&png_path, e))?;
        png(&root).map_err(|e| plot_err(&png_path, e))?;
        root.present().map_err(|e| plot_err(&png_path, e))?;
    }
    let svg_path = stem.with_extension("svg");
    {
        let root = SVGBackend::new(&svg_path, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&svg_path, e))?;
        svg(&root).map_err(|e| plot_err(&svg_path, e))?;
        root.present().map_err(|e| plot_err(&svg_path, e))?;
    }
    Ok(vec![png_path, svg_path])
}

/// A group's loss curve: (step, mean, std) over its runs, at steps every run logged.
fn curve(runs: &[RunData], g: &Group) -> Vec<(f64, f64, f64)> {
    let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    // Runs still training would cut the curve short: use finished ones when there are.
    let logged: Vec<&RunData> = g
        .runs
        .iter()
        .map(|&i| &runs[i])
        .filter(|r| !r.losses.is_empty())
        .collect();
    let done: Vec<&RunData> = logged.iter().copied().filter(|r| r.trained).collect();
    let with = if done.is_empty() { logged } else { done };
    for r in &with {
        for &(s, l) in &r.losses {
            by_step.entry(s).or_default().push(l);
        }
    }
    by_step
        .into_iter()
        .filter(|(_, v)| v.len() == with.len())
        .map(|(s, v)| {
            let (m, sd) = crate::eval::metrics::mean_std(&v);
            (s as f64, m, sd)
        })
        .collect()
}

/// One line of a line plot: palette index, legend name, (step, mean, std); a band
/// of ±std is drawn where std is not zero.
pub struct Curve {
    pub color: usize,
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// Pretraining loss curves, one line (mean) and band (±std) per group; groups
/// without a loss log (random init) are left out. None when no run has one.
pub fn loss_curves(
    runs: &[RunData],
    groups: &[Group],
    stem: &Path,
) -> Result<Option<Vec<PathBuf>>> {
    let curves: Vec<Curve> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| Curve {
            color: i,
            name: g.name.clone(),
            points: curve(runs, g),
        })
        .filter(|c| !c.points.is_empty())
        .collect();
    if curves.is_empty() {
        return Ok(None);
    }
    let title = "Pretraining loss (mean ± std over runs)";
    line_plot(stem, title, "loss", &curves).map(Some)
}

/// Curves over steps with a legend, as `<stem>.png` and `<stem>.svg`.
pub fn line_plot(stem: &Path, title: &str, y_desc: &str, curves: &[Curve]) -> Result<Vec<PathBuf>> {
    let pts = curves.iter().flat_map(|c| c.points.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(s, m, sd) in pts {
        x1 = x1.max(s);
        y0 = y0.min(m - sd);
        y1 = y1.max(m + sd);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6 * y1.abs().max(1.0));
    let frame = Frame {
        x1,
        y0: y0 - pad,
        y1: y1 + pad,
        title,
        y_desc,
    };
    both(
        stem,
        (960, 560),
        |r| draw_lines(r, curves, &frame),
        |r| draw_lines(r, curves, &frame),
    )
}

/// The axes of a line plot.
struct Frame<'a> {
    x1: f64,
    y0: f64,
    y1: f64,
    title: &'a str,
    y_desc: &'a str,
}

/// Draws line curves on any backend.
fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curves: &[Curve],
    f: &Frame,
) -> std::result::Result<(), String> {
    let mut chart = ChartBuilder::on(root)
        .caption(f.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..f.x1, f.y0..f.y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(f.y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for Curve {
        color: ci,
        name,
        points: c,
    } in curves
    {
        let color = color(*ci);
        if c.len() > 1 && c.iter().any(|p| p.2 != 0.0) {
            let mut band: Vec<(f64, f64)> = c.iter().map(|&(s, m, sd)| (s, m + sd)).collect();
            band.extend(c.iter().rev().map(|&(s, m, sd)| (s, m - sd)));
            chart
                .draw_series(std::iter::once(Polygon::new(band, color.mix(0.18))))
                .map_err(|e| e.to_string())?;
        }
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(c.iter().map(|&(s, m, _)| (s, m)), style))
            .map_err(|e| e.to_string())?
            .label(name.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())
}

/// One panel per metric: a horizontal bar per group (mean), a ±std error bar, and a
/// dot per run.
pub fn metric_bars(
    runs: &[RunData],
    groups: &[Group],
    metrics: &[String],
    stem: &Path,
) -> Result<Vec<PathBuf>> {
    let n = groups.len().max(1);
    let longest = groups
        .iter()
        .map(|g| g.name.chars().count())
        .max()
        .unwrap_or(4);
    let label_px = (longest as u32 * 8 + 16).clamp(60, 420);
    let panel_h = 90 + 34 * n as u32;
    let size = (900 + label_px, panel_h * metrics.len().max(1) as u32);
    both(
        stem,
        size,
        |r| draw_bars(r, runs, groups, metrics, label_px),
        |r| draw_bars(r, runs, groups, metrics, label_px),
    )
}

/// Draws the metric panels on any backend.
fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunData],
    groups: &[Group],
    metrics: &[String],
    label_px: u32,
) -> std::result::Result<(), String> {
    let n = groups.len().max(1);
    let panels = root.split_evenly((metrics.len().max(1), 1));
    for (panel, metric) in panels.iter().zip(metrics) {
        let stats: Vec<_> = groups.iter().map(|g| stat(runs, g, metric)).collect();
        let mut lo = 0f64;
        let mut hi = 0f64;
        for s in stats.iter().flatten() {
            for v in s
                .values
                .iter()
                .chain([s.mean + s.std, s.mean - s.std].iter())
            {
                lo = lo.min(*v);
                hi = hi.max(*v);
            }
        }
        let span = (hi - lo).max(1e-9);
        let (lo, hi) = (
            if lo < 0.0 { lo - 0.12 * span } else { 0.0 },
            hi + 0.18 * span,
        );
        let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
        let y_of = |i: usize| (n - 1 - i) as f64;
        let fmt = |y: &f64| {
            let r = y.round();
            if (y - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < n {
                names[n - 1 - r as usize].clone()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(metric, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(label_px)
            .build_cartesian_2d(lo..hi, -0.5f64..(n as f64 - 0.5))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&fmt)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in stats.iter().enumerate() {
            let Some(s) = s else { continue };
            let y = y_of(i);
            let color = color(i);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y - 0.32), (s.mean, y + 0.32)],
                    color.mix(0.75).filled(),
                )))
                .map_err(|e| e.to_string())?;
            if s.values.len() > 1 {
                chart
                    .draw_series(std::iter::once(ErrorBar::new_horizontal(
                        y,
                        s.mean - s.std,
                        s.mean,
                        s.mean + s.std,
                        BLACK.stroke_width(2),
                        12,
                    )))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .draw_series(
                    s.values
                        .iter()
                        .map(|&v| Circle::new((v, y), 3, BLACK.mix(0.6).filled())),
                )
                .map_err(|e| e.to_string())?;
            let right = s.values.iter().fold(s.mean + s.std, |a, &b| a.max(b));
            let text = if s.values.len() > 1 {
                format!("{:.3} ± {:.3}", s.mean, s.std)
            } else {
                format!("{:.3}", s.mean)
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (right + 0.02 * (hi - lo), y + 0.12),
                    ("sans-serif", 13),
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
