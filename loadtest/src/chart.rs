//! PNG charts of a run with plotters: latency percentiles over time, deliveries per
//! second and connects per second. Text needs a TrueType font, loaded at run time
//! from Debian's fonts-dejavu-core when present; without it the charts are drawn
//! without text (axes and lines only) rather than not at all.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use crate::report::{Point, Report};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a font once; whether text can be drawn.
fn font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const W: u32 = 1000;
const H: u32 = 500;

struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    values: Vec<(f64, f64)>,
}

fn draw(path: &Path, title: &str, y_desc: &str, log_y: bool, series: &[Series<'_>]) -> Result<()> {
    let text = font();
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let x_max = series
        .iter()
        .flat_map(|s| s.values.iter().map(|v| v.0))
        .fold(1.0f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.values.iter().map(|v| v.1))
        .fold(0.0f64, f64::max)
        .max(if log_y { 1.0 } else { 1e-9 })
        * 1.1;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption(title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(70);
    } else {
        builder.x_label_area_size(5).y_label_area_size(5);
    }
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    if log_y {
        let y_min = series
            .iter()
            .flat_map(|s| s.values.iter().map(|v| v.1))
            .filter(|v| *v > 0.0)
            .fold(f64::MAX, f64::min)
            .min(y_max / 10.0)
            .max(0.001)
            * 0.8;
        let mut chart = builder
            .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
            .map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("seconds").y_desc(y_desc);
        } else {
            mesh.disable_x_mesh().x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| err(&e))?;
        for s in series {
            let pts: Vec<(f64, f64)> = s.values.iter().copied().filter(|v| v.1 > 0.0).collect();
            let color = s.color;
            let drawn = chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(&e))?;
            if text {
                drawn.label(s.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| err(&e))?;
        }
    } else {
        let mut chart = builder
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("seconds").y_desc(y_desc);
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| err(&e))?;
        for s in series {
            let color = s.color;
            let drawn = chart
                .draw_series(LineSeries::new(s.values.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?;
            if text {
                drawn.label(s.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn series<'a>(
    name: &'a str,
    color: RGBColor,
    pts: &[Point],
    f: impl Fn(&Point) -> f64,
) -> Series<'a> {
    Series {
        name,
        color,
        values: pts.iter().map(|p| (p.t as f64, f(p))).collect(),
    }
}

/// Draws the charts of a report into `dir`; returns the files written.
pub fn draw_all(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stem = match &report.label {
        Some(l) => l.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-"),
        None if report.server == crate::cli::ServerKind::Nchan => {
            format!("{}-nchan", report.scenario)
        }
        None => report.scenario.clone(),
    };
    let pts = &report.timeline;
    let mut out = Vec::new();
    let with_latency: Vec<Point> = pts.iter().filter(|p| p.deliveries > 0).cloned().collect();
    if !with_latency.is_empty() {
        let path = dir.join(format!("{stem}-latency.png"));
        let ms = |v: u64| v as f64 / 1000.0;
        draw(
            &path,
            &format!("{stem}: publish-to-delivery latency per second"),
            "latency (ms, log scale)",
            true,
            &[
                series("p50", RGBColor(31, 119, 180), &with_latency, |p| {
                    ms(p.p50_us)
                }),
                series(
                    "p90",
                    RGBColor(44, 160, 44),
                    &with_latency,
                    |p| ms(p.p90_us),
                ),
                series("p99", RGBColor(255, 127, 14), &with_latency, |p| {
                    ms(p.p99_us)
                }),
                series("p99.9", RGBColor(214, 39, 40), &with_latency, |p| {
                    ms(p.p999_us)
                }),
                series("max", RGBColor(90, 90, 90), &with_latency, |p| ms(p.max_us)),
            ],
        )?;
        out.push(path);
        let path = dir.join(format!("{stem}-deliveries.png"));
        draw(
            &path,
            &format!("{stem}: deliveries per second"),
            "deliveries/s",
            false,
            &[series("deliveries/s", RGBColor(31, 119, 180), pts, |p| {
                p.deliveries as f64
            })],
        )?;
        out.push(path);
    }
    if pts.iter().any(|p| p.connects > 0) {
        let path = dir.join(format!("{stem}-connects.png"));
        draw(
            &path,
            &format!("{stem}: connections opened per second"),
            "connects/s",
            false,
            &[series("connects/s", RGBColor(148, 103, 189), pts, |p| {
                p.connects as f64
            })],
        )?;
        out.push(path);
    }
    Ok(out)
}
