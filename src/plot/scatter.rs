//! Scatter panels: points coloured by group, optional segments and graticule (the world map).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::spec::ScatterPanel;
use super::{colors, draw_err, padded_range, FAMILY};
use crate::error::Result;

pub fn validate(s: &ScatterPanel) -> std::result::Result<(), String> {
    let n = s.x.len();
    if s.y.len() != n {
        return Err(format!("x has {n} values but y has {}", s.y.len()));
    }
    if !s.groups.is_empty() {
        if s.groups.len() != n {
            return Err(format!(
                "groups has {} entries for {n} points",
                s.groups.len()
            ));
        }
        if let Some(&g) = s.groups.iter().max() {
            if g >= s.group_names.len().max(1) {
                return Err(format!(
                    "group index {g} has no name ({} group names)",
                    s.group_names.len()
                ));
            }
        }
    }
    if let Some((lx, ly)) = &s.line_to {
        if lx.len() != n || ly.len() != n {
            return Err(format!("line_to must have {n} end points"));
        }
    }
    Ok(())
}

pub fn draw<DB: DrawingBackend>(s: &ScatterPanel, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let ends = s.line_to.as_ref();
    let x_range = s.axes.x_range.unwrap_or_else(|| {
        padded_range(
            s.x.iter()
                .chain(ends.iter().flat_map(|e| e.0.iter()))
                .copied(),
            0.05,
        )
    });
    let y_range = s.axes.y_range.unwrap_or_else(|| {
        padded_range(
            s.y.iter()
                .chain(ends.iter().flat_map(|e| e.1.iter()))
                .copied(),
            0.05,
        )
    });
    let mut chart = ChartBuilder::on(area)
        .caption(&s.axes.title, (FAMILY, 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
        .map_err(draw_err)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&s.axes.x_label)
        .y_desc(&s.axes.y_label)
        .label_style((FAMILY, 12))
        .light_line_style(WHITE);
    if s.graticule.is_some() {
        mesh.disable_mesh();
    }
    mesh.draw().map_err(draw_err)?;
    if let Some(step) = s.graticule.filter(|g| *g > 0.0) {
        let grid = RGBColor(215, 215, 215);
        let lines = |lo: f64, hi: f64| {
            let first = (lo / step).ceil() as i64;
            let last = (hi / step).floor() as i64;
            (first..=last).map(move |k| k as f64 * step)
        };
        for gx in lines(x_range.0, x_range.1) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(gx, y_range.0), (gx, y_range.1)],
                    grid,
                )))
                .map_err(draw_err)?;
        }
        for gy in lines(y_range.0, y_range.1) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x_range.0, gy), (x_range.1, gy)],
                    grid,
                )))
                .map_err(draw_err)?;
        }
    }
    let group = |i: usize| s.groups.get(i).copied().unwrap_or(0);
    if let Some((lx, ly)) = ends {
        chart
            .draw_series((0..s.x.len()).map(|i| {
                PathElement::new(
                    vec![(s.x[i], s.y[i]), (lx[i], ly[i])],
                    colors::category(group(i)).mix(0.18),
                )
            }))
            .map_err(draw_err)?;
    }
    let n_groups = s.group_names.len().max(1);
    for g in 0..n_groups {
        let color = colors::category(g);
        let size = s.point_size;
        let series = chart
            .draw_series(
                (0..s.x.len())
                    .filter(|&i| group(i) == g && s.x[i].is_finite() && s.y[i].is_finite())
                    .map(|i| Circle::new((s.x[i], s.y[i]), size, color.mix(0.8).filled())),
            )
            .map_err(draw_err)?;
        if let Some(name) = s.group_names.get(g) {
            series
                .label(name)
                .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
        }
    }
    if !s.group_names.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FAMILY, 11))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}
