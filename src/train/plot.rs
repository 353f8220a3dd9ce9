//! Validation curves as PNG and SVG (plotters), written through temporary names and renamed.
//! Text in the PNG is drawn with the bundled DejaVu Sans (assets/, Bitstream Vera license), so
//! plotting needs no system fonts.

use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();
/// Distinct, high-contrast colors (the "tab10" palette's first six).
const COLORS: [RGBColor; 6] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

/// One curve: a name and (x, y) points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A horizontal reference line (the hidden model's loss, an ensemble's final loss).
#[derive(Clone, Debug)]
pub struct Reference {
    pub name: String,
    pub y: f64,
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    refs: &[Reference],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(refs.iter().map(|r| r.y)).filter(|y| y.is_finite()).collect();
    let xmax = xs.fold(1.0f64, f64::max);
    let (ymin, ymax) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
    let pad = ((ymax - ymin) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax, (ymin - pad)..(ymax + pad))?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).label_style(("sans-serif", 14)).draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()].to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.iter().cloned(), color.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    for (i, r) in refs.iter().enumerate() {
        let color = if i == 0 { BLACK.to_rgba() } else { RGBColor(120, 120, 120).to_rgba() };
        chart
            .draw_series(LineSeries::new(vec![(0.0, r.y), (xmax, r.y)], color.stroke_width(1)))?
            .label(r.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()
}

/// Write the same chart as `<stem>.png` and `<stem>.svg`.
pub fn plot_curves(stem: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series], refs: &[Reference]) -> Result<()> {
    REGISTER.call_once(|| {
        // The bundled font is valid; a failure here would only lose text in the PNG.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let fail = |p: &Path, e: String| Error::Invalid(format!("{}: plotting failed: {e}", p.display()));
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    let (png_tmp, svg_tmp) = (stem.with_extension("tmp.png"), stem.with_extension("tmp.svg"));
    {
        let root = BitMapBackend::new(&png_tmp, (960, 600)).into_drawing_area();
        draw(&root, title, x_label, y_label, series, refs).map_err(|e| fail(&png, e.to_string()))?;
    }
    {
        let root = SVGBackend::new(&svg_tmp, (960, 600)).into_drawing_area();
        draw(&root, title, x_label, y_label, series, refs).map_err(|e| fail(&svg, e.to_string()))?;
    }
    std::fs::rename(&png_tmp, &png).map_err(|e| Error::io(&png, e))?;
    std::fs::rename(&svg_tmp, &svg).map_err(|e| Error::io(&svg, e))
}
