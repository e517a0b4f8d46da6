//! Bar panels: a histogram, its series stacked (e.g. correct and wrong answers per bin).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::layout::{self, tick_label};
use super::legend::{self, Legend, Swatch};
use super::spec::BarsPanel;
use super::{colors, draw_err, FAMILY};
use crate::error::Result;

pub fn validate(b: &BarsPanel) -> std::result::Result<(), String> {
    if b.series.is_empty() || b.x.is_empty() {
        return Err("a bars panel needs at least one series and one bar".into());
    }
    if !(b.width.is_finite() && b.width > 0.0) {
        return Err(format!("bar width must be positive, got {}", b.width));
    }
    if b.x.iter().any(|x| !x.is_finite()) {
        return Err("bar positions must be finite".into());
    }
    for s in &b.series {
        if s.heights.len() != b.x.len() {
            return Err(format!(
                "series '{}' has {} heights for {} bars",
                s.name,
                s.heights.len(),
                b.x.len()
            ));
        }
        if s.heights.iter().any(|h| !h.is_finite() || *h < 0.0) {
            return Err(format!(
                "series '{}': heights must be finite and >= 0",
                s.name
            ));
        }
    }
    Ok(())
}

/// Top of each stack.
fn totals(b: &BarsPanel) -> Vec<f64> {
    (0..b.x.len())
        .map(|i| b.series.iter().map(|s| s.heights[i]).sum())
        .collect()
}

pub fn draw<DB: DrawingBackend>(b: &BarsPanel, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let half = b.width / 2.0;
    let lo = b.x.iter().copied().fold(f64::INFINITY, f64::min) - half;
    let hi = b.x.iter().copied().fold(f64::NEG_INFINITY, f64::max) + half;
    let x_range = b.axes.x_range.unwrap_or((lo, hi));
    let tops = totals(b);
    let top = tops.iter().copied().fold(0.0, f64::max);
    let y_range = b
        .axes
        .y_range
        .unwrap_or((0.0, if top > 0.0 { top * 1.08 } else { 1.0 }));
    let legend = (b.series.len() > 1).then(|| Legend {
        entries: b
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.name.clone(),
                    Swatch::Bar {
                        color: colors::category(i),
                    },
                )
            })
            .collect(),
    });
    // A legend box must not hide a bar: sample each bar's outline.
    let samples: Vec<(f64, f64)> =
        b.x.iter()
            .zip(&tops)
            .flat_map(|(&x, &t)| {
                (0..=8).flat_map(move |k| {
                    let y = t * f64::from(k) / 8.0;
                    [(x - half, y), (x, y), (x + half, y)]
                })
            })
            .collect();
    let frame = layout::frame(
        area,
        &b.axes,
        (x_range, y_range),
        legend.as_ref(),
        b.legend,
        &samples,
    )?;
    let mut chart = frame.chart(x_range, y_range)?;
    let fmt = |v: &f64| tick_label(*v);
    chart
        .configure_mesh()
        .x_desc(&b.axes.x_label)
        .y_desc(&b.axes.y_label)
        .label_style((FAMILY, 12))
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .disable_x_mesh()
        .light_line_style(RGBColor(244, 244, 244))
        .draw()
        .map_err(draw_err)?;
    let mut base = vec![0.0; b.x.len()];
    for (k, s) in b.series.iter().enumerate() {
        let color = colors::category(k);
        chart
            .draw_series(
                b.x.iter()
                    .enumerate()
                    .filter(|(i, _)| s.heights[*i] > 0.0)
                    .flat_map(|(i, &x)| {
                        let (y0, y1) = (base[i], base[i] + s.heights[i]);
                        let corners = [(x - half * 0.94, y0), (x + half * 0.94, y1)];
                        [
                            Rectangle::new(corners, color.mix(0.85).filled()),
                            Rectangle::new(corners, WHITE.stroke_width(1)),
                        ]
                    }),
            )
            .map_err(draw_err)?;
        for (i, h) in s.heights.iter().enumerate() {
            base[i] += h;
        }
    }
    if let Some(l) = &legend {
        let plot = chart.plotting_area().strip_coord_spec();
        legend::draw(l, frame.corner, &plot, frame.legend_outside.as_ref())?;
    }
    Ok(())
}
