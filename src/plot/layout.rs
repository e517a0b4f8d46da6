//! What every chart panel shares: the title, the plot area's size (to keep a map's aspect and
//! to find a free corner for the legend) and tick labels.

use plotters::coord::cartesian::Cartesian2d;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::legend::{self, Legend};
use super::spec::{Axes, LegendCorner};
use super::{draw_err, FAMILY};
use crate::error::Result;

/// Space around a chart and for its tick labels, in pixels (the same for every chart kind so
/// the plot area's size can be computed before plotters builds the chart).
pub const MARGIN: u32 = 8;
pub const X_LABEL_AREA: u32 = 40;
pub const Y_LABEL_AREA: u32 = 56;

/// A number as a tick label: as few digits as it needs ("1", "0.5", "-2.25", never "1.0").
pub fn tick_label(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    if v != 0.0 && v.abs() < 1e-4 {
        return format!("{v:e}");
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// A tick label on an axis whose values are whole numbers (layers): blank between them.
pub fn integer_tick_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        tick_label(v.round())
    } else {
        String::new()
    }
}

/// Pixel size of the plot area inside `(w, h)` once margins and tick-label areas are taken.
pub fn plot_size(w: u32, h: u32) -> (f64, f64) {
    (
        f64::from(w.saturating_sub(2 * MARGIN + Y_LABEL_AREA).max(1)),
        f64::from(h.saturating_sub(2 * MARGIN + X_LABEL_AREA).max(1)),
    )
}

/// Margins `(top, bottom, left, right)` that shrink a `(w, h)` area so its plot area shows
/// `x_span` and `y_span` with `aspect` = pixels per y unit / pixels per x unit.
pub fn aspect_margins(
    w: u32,
    h: u32,
    x_span: f64,
    y_span: f64,
    aspect: f64,
) -> (u32, u32, u32, u32) {
    let (pw, ph) = plot_size(w, h);
    let (ppx, ppy) = (pw / x_span, ph / y_span);
    if ppy / ppx > aspect {
        let cut = (ph - aspect * ppx * y_span).max(0.0) as u32;
        (cut / 2, cut - cut / 2, 0, 0)
    } else {
        let cut = (pw - ppy / aspect * x_span).max(0.0) as u32;
        (0, 0, cut / 2, cut - cut / 2)
    }
}

/// The areas a chart is drawn in: `chart` (for ChartBuilder, without caption) and where its
/// legend goes.
pub struct Frame<DB: DrawingBackend> {
    pub chart: DrawingArea<DB, Shift>,
    pub legend_outside: Option<DrawingArea<DB, Shift>>,
    pub corner: LegendCorner,
}

/// A chart on the frame's plot area with the shared margins and label areas (every x/y
/// panel: lines, scatter, bars).
pub type XyChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

impl<DB: DrawingBackend> Frame<DB> {
    pub fn chart(&self, x_range: (f64, f64), y_range: (f64, f64)) -> Result<XyChart<'_, DB>> {
        ChartBuilder::on(&self.chart)
            .margin(MARGIN)
            .x_label_area_size(X_LABEL_AREA)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
            .map_err(draw_err)
    }
}

/// Draw the title, pick the legend's place (`samples`: data points and points along lines,
/// which a corner legend must not cover) and keep the aspect.
pub fn frame<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    axes: &Axes,
    ranges: ((f64, f64), (f64, f64)),
    legend: Option<&Legend>,
    wanted: LegendCorner,
    samples: &[(f64, f64)],
) -> Result<Frame<DB>> {
    let body = if axes.title.is_empty() {
        area.clone()
    } else {
        area.titled(&axes.title, (FAMILY, 16)).map_err(draw_err)?
    };
    let (w, h) = body.dim_in_pixel();
    let corner = match legend {
        None => wanted,
        Some(l) => legend::place(l, wanted, plot_size(w, h), ranges, samples),
    };
    let (mut chart, legend_outside) = match (legend, corner) {
        (Some(l), LegendCorner::Outside) => {
            let lw = (l.size().0 + 12).min(w as i32 / 2);
            let (c, rest) = body.split_horizontally(w as i32 - lw);
            (c, Some(rest))
        }
        _ => (body, None),
    };
    if let Some(a) = axes.aspect.filter(|a| *a > 0.0) {
        let (w, h) = chart.dim_in_pixel();
        let ((x0, x1), (y0, y1)) = ranges;
        let (t, b, l, r) = aspect_margins(w, h, x1 - x0, y1 - y0, a);
        chart = chart.margin(t, b, l, r);
    }
    Ok(Frame {
        chart,
        legend_outside,
        corner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_have_no_needless_digits() {
        assert_eq!(tick_label(1.0), "1");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(-0.0), "0");
        assert_eq!(tick_label(0.1 + 0.2), "0.3");
        assert_eq!(tick_label(-2.25), "-2.25");
        assert_eq!(tick_label(1500.0), "1500");
        assert_eq!(tick_label(2e-6), "2e-6");
        assert_eq!(integer_tick_label(3.0), "3");
        assert_eq!(integer_tick_label(2.5), "");
    }

    #[test]
    fn aspect_margins_keep_the_requested_ratio() {
        for (w, h) in [(700, 620), (1400, 500), (300, 900)] {
            let (t, b, l, r) = aspect_margins(w, h, 360.0, 180.0, 1.25);
            let (pw, ph) = plot_size(w - l - r, h - t - b);
            let ratio = (ph / 180.0) / (pw / 360.0);
            assert!((ratio - 1.25).abs() < 0.02, "{w}x{h}: {ratio}");
        }
    }
}
