//! Line panels: named series such as a metric per layer, with optional reference lines.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::spec::{LegendCorner, LinesPanel};
use super::{colors, draw_err, padded_range, FAMILY};
use crate::error::Result;

pub fn validate(l: &LinesPanel) -> std::result::Result<(), String> {
    if l.series.is_empty() {
        return Err("a lines panel needs at least one series".into());
    }
    for s in &l.series {
        if s.x.len() != s.y.len() {
            return Err(format!(
                "series '{}' has {} x values and {} y values",
                s.name,
                s.x.len(),
                s.y.len()
            ));
        }
    }
    Ok(())
}

pub fn draw<DB: DrawingBackend>(l: &LinesPanel, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let xs = || l.series.iter().flat_map(|s| s.x.iter().copied());
    let ys = || {
        l.series
            .iter()
            .flat_map(|s| s.y.iter().copied())
            .chain(l.hlines.iter().copied())
    };
    let x_range = l.axes.x_range.unwrap_or_else(|| padded_range(xs(), 0.02));
    let y_range = l.axes.y_range.unwrap_or_else(|| padded_range(ys(), 0.06));
    let mut chart = ChartBuilder::on(area)
        .caption(&l.axes.title, (FAMILY, 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(&l.axes.x_label)
        .y_desc(&l.axes.y_label)
        .label_style((FAMILY, 12))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(draw_err)?;
    for &h in &l.hlines {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x_range.0, h), (x_range.1, h)],
                6,
                4,
                RGBColor(120, 120, 120).into(),
            ))
            .map_err(draw_err)?;
    }
    for (i, s) in l.series.iter().enumerate() {
        let color = colors::category(i);
        let points: Vec<(f64, f64)> =
            s.x.iter()
                .zip(&s.y)
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|(&x, &y)| (x, y))
                .collect();
        let style = ShapeStyle::from(color).stroke_width(2);
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))
        }
        .map_err(draw_err)?;
        drawn
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        if s.markers {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?;
        }
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(match l.legend {
            LegendCorner::UpperLeft => SeriesLabelPosition::UpperLeft,
            LegendCorner::UpperRight => SeriesLabelPosition::UpperRight,
            LegendCorner::LowerLeft => SeriesLabelPosition::LowerLeft,
            LegendCorner::LowerRight => SeriesLabelPosition::LowerRight,
        })
        .draw()
        .map_err(draw_err)?;
    Ok(())
}
