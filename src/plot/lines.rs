//! Line panels: named series such as a metric per layer, with optional labelled reference lines
//! and per-point labels.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::layout::{self, integer_tick_label, tick_label};
use super::legend::{self, Legend, Swatch};
use super::spec::LinesPanel;
use super::{colors, draw_err, padded_range, FAMILY};
use crate::error::Result;

/// Reference lines (chance, baselines): grey, each with its own dash pattern so the legend
/// tells them apart.
const GREY: RGBColor = RGBColor(110, 110, 110);
const SERIES_DASH: (i32, i32) = (8, 5);

fn reference_dash(k: usize) -> (i32, i32) {
    [(6, 4), (2, 3), (12, 3), (4, 8)][k % 4]
}

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
                        dash: s.dashed.then_some(SERIES_DASH),
                        width: 2,
                    },
                )
            })
            .chain(
                l.hline_labels
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| !t.is_empty())
                    .map(|(k, t)| {
                        (
                            t.clone(),
                            Swatch::Line {
                                color: GREY,
                                dash: Some(reference_dash(k)),
                                width: 1,
                            },
                        )
                    }),
            )
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
        (legend.entries.len() > 1).then_some(&legend),
        l.legend,
        &samples,
    )?;
    let mut chart = frame.chart(x_range, y_range)?;
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
    for (k, &h) in l.hlines.iter().enumerate() {
        let (on, off) = reference_dash(k);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x_range.0, h), (x_range.1, h)],
                on,
                off,
                GREY.stroke_width(1),
            ))
            .map_err(draw_err)?;
    }
    for (i, s) in l.series.iter().enumerate() {
        let color = colors::category(i);
        let pts = points(s);
        let style = ShapeStyle::from(color).stroke_width(2);
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(
                pts.clone(),
                SERIES_DASH.0,
                SERIES_DASH.1,
                style,
            ))
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
        let font = TextStyle::from((FAMILY, 12).into_font()).color(&RGBColor(50, 50, 50));
        let (bx, by) = frame.chart.get_base_pixel();
        for ((&x, &y), text) in labelled {
            let (px, py) = chart.backend_coord(&(x, y));
            // Below and right of the point (free of the line on rising curves), on a light
            // backing so a crossing line does not hide it.
            let (tx, ty) = (px - bx + 6, py - by + 4);
            let (tw, th) = frame
                .chart
                .estimate_text_size(text, &font)
                .map_err(draw_err)?;
            frame
                .chart
                .draw(&Rectangle::new(
                    [(tx - 1, ty), (tx + tw as i32 + 1, ty + th as i32)],
                    WHITE.mix(0.8).filled(),
                ))
                .map_err(draw_err)?;
            frame
                .chart
                .draw(&Text::new(
                    text.clone(),
                    (tx, ty),
                    font.clone().pos(Pos::new(HPos::Left, VPos::Top)),
                ))
                .map_err(draw_err)?;
        }
    }
    // A lone series is named by the title and axis; a legend would only cover data.
    if legend.entries.len() > 1 {
        let plot = chart.plotting_area().strip_coord_spec();
        legend::draw(&legend, frame.corner, &plot, frame.legend_outside.as_ref())?;
    }
    Ok(())
}
