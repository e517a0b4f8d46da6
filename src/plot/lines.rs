//! Line panels: named series such as a metric per layer, with optional labelled reference lines
//! and per-point labels.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::layout::{self, integer_tick_label, tick_label, MARGIN, X_LABEL_AREA, Y_LABEL_AREA};
use super::legend::{self, Legend, Swatch};
use super::spec::LinesPanel;
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
        if !s.point_labels.is_empty() && s.point_labels.len() != s.x.len() {
            return Err(format!(
                "series '{}' has {} point labels for {} points",
                s.name,
                s.point_labels.len(),
                s.x.len()
            ));
        }
    }
    if !l.hline_labels.is_empty() && l.hline_labels.len() != l.hlines.len() {
        return Err(format!(
            "{} hline labels for {} hlines",
            l.hline_labels.len(),
            l.hlines.len()
        ));
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
    let points = |s: &super::spec::Series| -> Vec<(f64, f64)> {
        s.x.iter()
            .zip(&s.y)
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(&x, &y)| (x, y))
            .collect()
    };
    let legend = Legend {
        entries: l
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.name.clone(),
                    Swatch::Line {
                        color: colors::category(i),
                        dashed: s.dashed,
                    },
                )
            })
            .collect(),
    };
    let mut samples: Vec<(f64, f64)> = l
        .series
        .iter()
        .flat_map(|s| legend::along(&points(s), 16))
        .collect();
    for &h in &l.hlines {
        samples.extend(
            (0..=16).map(|k| (x_range.0 + (x_range.1 - x_range.0) * f64::from(k) / 16.0, h)),
        );
    }
    let frame = layout::frame(
        area,
        &l.axes,
        (x_range, y_range),
        Some(&legend),
        l.legend,
        &samples,
    )?;
    let mut chart = ChartBuilder::on(&frame.chart)
        .margin(MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
        .map_err(draw_err)?;
    let integer_x = xs().all(|x| x == x.round()) && (x_range.1 - x_range.0) >= 3.0;
    let fmt = |v: &f64| tick_label(*v);
    let int_fmt = |v: &f64| integer_tick_label(*v);
    let x_fmt: &dyn Fn(&f64) -> String = if integer_x { &int_fmt } else { &fmt };
    chart
        .configure_mesh()
        .x_desc(&l.axes.x_label)
        .y_desc(&l.axes.y_label)
        .label_style((FAMILY, 12))
        .x_label_formatter(x_fmt)
        .y_label_formatter(&fmt)
        .light_line_style(RGBColor(244, 244, 244))
        .draw()
        .map_err(draw_err)?;
    let grey = RGBColor(120, 120, 120);
    for (k, &h) in l.hlines.iter().enumerate() {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x_range.0, h), (x_range.1, h)],
                6,
                4,
                grey.into(),
            ))
            .map_err(draw_err)?;
        if let Some(text) = l.hline_labels.get(k).filter(|t| !t.is_empty()) {
            let (px, py) = chart.backend_coord(&(x_range.1, h));
            frame
                .chart
                .draw(&Text::new(
                    text.clone(),
                    (
                        px - 6 - frame.chart.get_base_pixel().0,
                        py - 3 - frame.chart.get_base_pixel().1,
                    ),
                    (FAMILY, 12)
                        .into_font()
                        .color(&grey)
                        .pos(Pos::new(HPos::Right, VPos::Bottom)),
                ))
                .map_err(draw_err)?;
        }
    }
    for (i, s) in l.series.iter().enumerate() {
        let color = colors::category(i);
        let pts = points(s);
        let style = ShapeStyle::from(color).stroke_width(2);
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style))
        }
        .map_err(draw_err)?;
        if s.markers {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?;
        }
        let labelled =
            s.x.iter()
                .zip(&s.y)
                .zip(&s.point_labels)
                .filter(|((x, y), t)| x.is_finite() && y.is_finite() && !t.is_empty());
        for ((&x, &y), text) in labelled {
            let (px, py) = chart.backend_coord(&(x, y));
            let (bx, by) = frame.chart.get_base_pixel();
            frame
                .chart
                .draw(&Text::new(
                    text.clone(),
                    // Below and right of the point: free of the line on rising curves.
                    (px - bx + 6, py - by + 4),
                    (FAMILY, 12)
                        .into_font()
                        .color(&RGBColor(50, 50, 50))
                        .pos(Pos::new(HPos::Left, VPos::Top)),
                ))
                .map_err(draw_err)?;
        }
    }
    let plot = chart.plotting_area().strip_coord_spec();
    legend::draw(&legend, frame.corner, &plot, frame.legend_outside.as_ref())
}
