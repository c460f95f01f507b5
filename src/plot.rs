//! `fleet plot`: learning curves of run folders as one PNG. Each run's
//! curve is the mean return of its last 100 episodes (`return_mean` in
//! `progress.csv`) against env steps or wall-clock seconds. Runs whose
//! `config.toml` files are equal but for `seed` are one line, their mean
//! over the stretch of the axis all of them cover, with a shaded band from
//! their lowest to their highest, and each of them drawn faintly beside it;
//! any other run is a line of its own.
//!
//! Text (ticks, axis names, the legend) needs a TrueType font, read at run
//! time from `FLEET_PLOT_FONT` or a usual system place (DejaVu Sans,
//! Liberation Sans); without one the chart is drawn without text. Reading
//! and checking the files is [`crate::runs`]'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use toml::Table;

use crate::runs::{self, CONFIG_FILE, PROGRESS_FILE};

/// What the horizontal axis shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XAxis {
    /// Env steps taken by all actors.
    Steps,
    /// Seconds since the run started.
    Time,
}

/// Fonts tried, in order, when `FLEET_PLOT_FONT` is unset.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// The family name the font is registered under.
const FONT: &str = "sans-serif";

/// Line colours, one per group, repeating past the last.
const COLOURS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One run folder read back.
#[derive(Debug, Clone)]
struct Run {
    name: String,
    /// The config without `seed`, to group runs by.
    config: Table,
    /// (x, mean return) in the order of the progress file.
    points: Vec<(f64, f64)>,
}

/// What one line of the chart draws.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    /// (x, mean over the group's runs).
    pub mean: Vec<(f64, f64)>,
    /// (x, lowest, highest) over the group's runs; empty for a single run.
    pub band: Vec<(f64, f64, f64)>,
    /// Each run of a group of several, drawn faintly: the whole of every
    /// run stays visible where they do not all overlap.
    pub runs: Vec<Vec<(f64, f64)>>,
}

/// Draws the curves of the run folders `paths` into a `size` PNG at `output`.
pub fn plot(paths: &[PathBuf], output: &Path, x: XAxis, size: (u32, u32)) -> Result<()> {
    let (width, height) = size;
    if !(64..=16_384).contains(&width) || !(64..=16_384).contains(&height) {
        bail!("image size {width}×{height}: each side must be 64 to 16384 pixels");
    }
    let runs = paths.iter().map(|p| read_run(p, x)).collect::<Result<Vec<_>>>()?;
    for run in runs.iter().filter(|r| r.points.is_empty()) {
        eprintln!(
            "warning: {} has no mean return yet (fewer than 100 episodes); nothing to draw",
            run.name
        );
    }
    let curves = group(runs);
    let text = load_font();
    if !text {
        eprintln!("warning: no TrueType font found (set FLEET_PLOT_FONT to a .ttf file); drawing without text");
    }
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    draw(&curves, x, (width, height), text, &mut pixels).map_err(|e| anyhow!("drawing the chart: {e}"))?;
    write_png(output, (width, height), &pixels)
}

/// Reads a run folder's config and progress file.
fn read_run(path: &Path, x: XAxis) -> Result<Run> {
    if !path.is_dir() {
        bail!("run folder {} does not exist", path.display());
    }
    let config_path = path.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let mut config: Table = text.parse().with_context(|| format!("parsing {}", config_path.display()))?;
    config.remove("seed");
    let rows = runs::read_progress(&path.join(PROGRESS_FILE))?;
    let points = rows
        .iter()
        .filter_map(|row| {
            let at = match x {
                XAxis::Steps => row.env_steps as f64,
                XAxis::Time => row.wall_seconds,
            };
            row.return_mean.map(|r| (at, r))
        })
        .collect();
    let name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| path.display().to_string());
    Ok(Run { name, config, points })
}

/// One curve per set of runs whose configs are equal but for the seed, in
/// the order their first runs were given.
fn group(runs: Vec<Run>) -> Vec<Curve> {
    let mut groups: Vec<Vec<Run>> = Vec::new();
    for run in runs {
        match groups.iter_mut().find(|g| g[0].config == run.config) {
            Some(group) => group.push(run),
            None => groups.push(vec![run]),
        }
    }
    groups.into_iter().map(|g| curve(&g)).collect()
}

/// The mean and min–max band of `runs` (one or more) over the x values
/// they all cover.
fn curve(runs: &[Run]) -> Curve {
    let label = match runs {
        [run] => run.name.clone(),
        [first, ..] => format!("{} +{} (same config, {} seeds)", first.name, runs.len() - 1, runs.len()),
        [] => String::new(),
    };
    if runs.len() == 1 {
        return Curve {
            label,
            mean: runs[0].points.clone(),
            band: Vec::new(),
            runs: Vec::new(),
        };
    }
    let drawn: Vec<&Run> = runs.iter().filter(|r| !r.points.is_empty()).collect();
    let from = drawn.iter().map(|r| r.points[0].0).fold(f64::NEG_INFINITY, f64::max);
    let to = drawn.iter().map(|r| r.points[r.points.len() - 1].0).fold(f64::INFINITY, f64::min);
    let mut xs: Vec<f64> = drawn
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.0))
        .filter(|&x| x >= from && x <= to)
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (mut mean, mut band) = (Vec::new(), Vec::new());
    for x in xs {
        let ys: Vec<f64> = drawn.iter().filter_map(|r| interpolate(&r.points, x)).collect();
        if ys.is_empty() {
            continue;
        }
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        mean.push((x, ys.iter().sum::<f64>() / ys.len() as f64));
        band.push((x, lo, hi));
    }
    Curve {
        label,
        mean,
        band,
        runs: runs.iter().map(|r| r.points.clone()).collect(),
    }
}

/// The value of the piecewise-linear curve `points` (x never decreasing)
/// at `x`; `None` outside it.
fn interpolate(points: &[(f64, f64)], x: f64) -> Option<f64> {
    let first = points.first()?;
    let last = points.last()?;
    if x < first.0 || x > last.0 {
        return None;
    }
    let i = points.partition_point(|p| p.0 < x);
    let right = points[i.min(points.len() - 1)];
    if i == 0 || right.0 == x {
        return Some(right.1);
    }
    let left = points[i - 1];
    let t = (x - left.0) / (right.0 - left.0);
    Some(left.1 + t * (right.1 - left.1))
}

/// Registers the first font found; false when there is none.
fn load_font() -> bool {
    let candidates: Vec<PathBuf> = match std::env::var_os("FLEET_PLOT_FONT") {
        Some(path) => vec![PathBuf::from(path)],
        None => FONT_PATHS.iter().map(PathBuf::from).collect(),
    };
    for path in candidates {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
            return true;
        }
        eprintln!("warning: {} is not a TrueType font", path.display());
    }
    false
}

/// The axis range covering `values` with a margin (a unit range when empty).
fn range(values: impl Iterator<Item = f64>, pad_below: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 1.0, hi + 1.0);
    }
    let pad = 0.05 * (hi - lo);
    (if pad_below { lo - pad } else { lo }, hi + pad)
}

/// A tick label of the x axis, whose range spans `span`.
fn tick(x: XAxis, v: f64, span: f64) -> String {
    match x {
        XAxis::Steps if span >= 1e6 => format!("{:.2}M", v / 1e6),
        XAxis::Steps if span >= 1e4 => format!("{:.0}k", v / 1e3),
        XAxis::Steps => format!("{v:.0}"),
        _ if span < 10.0 => format!("{v:.1}"),
        _ => format!("{v:.0}"),
    }
}

/// Draws `curves` into `pixels` (RGB, row-major).
fn draw(
    curves: &[Curve],
    x: XAxis,
    size: (u32, u32),
    text: bool,
    pixels: &mut [u8],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || curves.iter().flat_map(|c| c.mean.iter().chain(c.runs.iter().flatten()));
    let (x0, x1) = range(points().map(|p| p.0), false);
    let (y0, y1) = range(points().map(|p| p.1), true);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if text {
        builder.x_label_area_size(44).y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210));
    let format = |v: &f64| tick(x, *v, x1 - x0);
    if text {
        let label = FontDesc::new(FontFamily::Name(FONT), 14.0, FontStyle::Normal);
        mesh.label_style(label.clone())
            .axis_desc_style(label)
            .x_label_formatter(&format)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc(match x {
                XAxis::Steps => "env steps",
                XAxis::Time => "wall-clock seconds",
            })
            .y_desc("mean return (last 100 episodes)");
    }
    mesh.draw()?;
    for (i, curve) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if curve.band.len() >= 2 {
            let outline: Vec<(f64, f64)> = curve
                .band
                .iter()
                .map(|b| (b.0, b.2))
                .chain(curve.band.iter().rev().map(|b| (b.0, b.1)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(outline, colour.mix(0.25).filled())))?;
        }
        for run in &curve.runs {
            chart.draw_series(LineSeries::new(run.iter().copied(), colour.mix(0.45).stroke_width(1)))?;
        }
        let line = chart.draw_series(LineSeries::new(curve.mean.iter().copied(), colour.stroke_width(2)))?;
        if text {
            line.label(curve.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
    }
    if text && !curves.is_empty() {
        chart
            .configure_series_labels()
            .label_font(FontDesc::new(FontFamily::Name(FONT), 13.0, FontStyle::Normal))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn write_png(path: &Path, (width, height): (u32, u32), pixels: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().with_context(|| format!("writing {}", path.display()))?;
    writer
        .write_image_data(pixels)
        .with_context(|| format!("writing {}", path.display()))?;
    writer.finish().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, seed: i64, points: &[(f64, f64)]) -> Run {
        let mut config: Table = format!("seed = {seed}\n[run]\nactors = 2\n").parse().unwrap();
        config.remove("seed");
        Run {
            name: name.into(),
            config,
            points: points.to_vec(),
        }
    }

    #[test]
    fn interpolates_inside_and_refuses_outside() {
        let points = [(0.0, 0.0), (10.0, 100.0), (20.0, 100.0)];
        assert_eq!(interpolate(&points, 5.0), Some(50.0));
        assert_eq!(interpolate(&points, 10.0), Some(100.0));
        assert_eq!(interpolate(&points, 0.0), Some(0.0));
        assert_eq!(interpolate(&points, 20.0), Some(100.0));
        assert_eq!(interpolate(&points, 21.0), None);
        assert_eq!(interpolate(&[], 1.0), None);
    }

    #[test]
    fn seeds_of_one_config_make_one_curve_with_a_band() {
        let a = run("a", 1, &[(0.0, 10.0), (100.0, 30.0)]);
        let b = run("b", 2, &[(50.0, 40.0), (150.0, 60.0)]);
        let mut other = run("c", 1, &[(0.0, 1.0)]);
        other.config.insert("extra".into(), toml::Value::Integer(1));
        let curves = group(vec![a, b, other]);
        assert_eq!(curves.len(), 2);
        // Over [50, 100]: a is 20 then 30, b is 40 then 50.
        assert_eq!(curves[0].mean, vec![(50.0, 30.0), (100.0, 40.0)]);
        assert_eq!(curves[0].band, vec![(50.0, 20.0, 40.0), (100.0, 30.0, 50.0)]);
        assert!(curves[0].label.contains("2 seeds"), "{}", curves[0].label);
        assert_eq!(curves[1].label, "c");
        assert!(curves[1].band.is_empty());
    }
}
