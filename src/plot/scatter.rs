//! Scatter panels: points coloured by group, optional segments, graticule and land (the world
//! map).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::layout::{self, tick_label};
use super::legend::{self, Legend, Swatch};
use super::spec::{GroupStyle, Land, Marker, ScatterPanel};
use super::{colors, draw_err, padded_range, FAMILY};
use crate::error::Result;

/// Land and water colours: light enough that every category colour stays readable on them.
pub const LAND: RGBColor = RGBColor(226, 222, 210);
pub const WATER: RGBColor = RGBColor(243, 247, 251);
const COAST: RGBColor = RGBColor(170, 165, 150);

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
    if !s.group_styles.is_empty() && s.group_styles.len() != s.group_names.len() {
        return Err(format!(
            "{} group styles for {} groups",
            s.group_styles.len(),
            s.group_names.len()
        ));
    }
    if let Some((lx, ly)) = &s.line_to {
        if lx.len() != n || ly.len() != n {
            return Err(format!("line_to must have {n} end points"));
        }
    }
    if let Some(land) = &s.land {
        let rings = land.land.iter().chain(&land.lakes).chain(&land.coast);
        if let Some(r) = rings.clone().find(|r| r.len() % 2 == 1) {
            return Err(format!(
                "land rings are flat [x0, y0, x1, y1, ...] lists; one has {} numbers",
                r.len()
            ));
        }
        if rings.flatten().any(|v| !v.is_finite()) {
            return Err("land coordinates must be finite".into());
        }
    }
    if s.axes.aspect.is_some_and(|a| !(a.is_finite() && a > 0.0)) {
        return Err(format!(
            "aspect must be a positive number, got {:?}",
            s.axes.aspect
        ));
    }
    Ok(())
}

fn style_of(s: &ScatterPanel, g: usize) -> GroupStyle {
    s.group_styles.get(g).copied().unwrap_or(GroupStyle {
        color: g,
        marker: Marker::Circle,
    })
}

fn pairs(flat: &[f64]) -> Vec<(f64, f64)> {
    flat.chunks_exact(2).map(|p| (p[0], p[1])).collect()
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
    let n_groups = s.group_names.len().max(1);
    let legend = (!s.group_names.is_empty()).then(|| Legend {
        entries: (0..n_groups)
            .map(|g| {
                let st = style_of(s, g);
                let color = colors::category(st.color);
                (
                    s.group_names[g].clone(),
                    Swatch::Point {
                        color,
                        marker: st.marker,
                    },
                )
            })
            .collect(),
    });
    let samples: Vec<(f64, f64)> = s.x.iter().copied().zip(s.y.iter().copied()).collect();
    let frame = layout::frame(
        area,
        &s.axes,
        (x_range, y_range),
        legend.as_ref(),
        s.legend,
        &samples,
    )?;
    let mut chart = frame.chart(x_range, y_range)?;
    if s.land.is_some() {
        chart.plotting_area().fill(&WATER).map_err(draw_err)?;
    }
    if let Some(land) = &s.land {
        draw_land(&mut chart, land)?;
    }
    let fmt = |v: &f64| tick_label(*v);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&s.axes.x_label)
        .y_desc(&s.axes.y_label)
        .label_style((FAMILY, 12))
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .light_line_style(WHITE);
    if s.land.is_some() {
        // On a map the grid follows the tick labels, so every labelled meridian and parallel
        // is drawn (a separate graticule step would not match the labels).
        mesh.bold_line_style(RGBColor(170, 180, 195).mix(0.45))
            .light_line_style(TRANSPARENT);
    } else if s.graticule.is_some() {
        mesh.disable_mesh();
    }
    mesh.draw().map_err(draw_err)?;
    if let Some(step) = s.graticule.filter(|g| *g > 0.0 && s.land.is_none()) {
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
    let color_of = |i: usize| colors::category(style_of(s, group(i)).color);
    if let Some((lx, ly)) = ends {
        chart
            .draw_series((0..s.x.len()).map(|i| {
                PathElement::new(
                    vec![(s.x[i], s.y[i]), (lx[i], ly[i])],
                    color_of(i).mix(0.35),
                )
            }))
            .map_err(draw_err)?;
        if s.end_point_size > 0 {
            let dark = RGBColor(60, 60, 60);
            chart
                .draw_series(
                    (0..s.x.len())
                        .map(|i| Circle::new((lx[i], ly[i]), s.end_point_size, dark.filled())),
                )
                .map_err(draw_err)?;
        }
    }
    let plot = chart.plotting_area().strip_coord_spec();
    let to_px = |x: f64, y: f64| chart.backend_coord(&(x, y));
    let (ox, oy) = plot.get_base_pixel();
    for g in 0..n_groups {
        let st = style_of(s, g);
        let color = colors::category(st.color);
        for i in
            (0..s.x.len()).filter(|&i| group(i) == g && s.x[i].is_finite() && s.y[i].is_finite())
        {
            let (px, py) = to_px(s.x[i], s.y[i]);
            legend::draw_marker(
                &plot,
                (px - ox, py - oy),
                s.point_size as i32,
                color,
                st.marker,
            )?;
        }
    }
    if let Some(l) = &legend {
        legend::draw(l, frame.corner, &plot, frame.legend_outside.as_ref())?;
    }
    Ok(())
}

fn draw_land<DB: DrawingBackend>(
    chart: &mut ChartContext<
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    land: &Land,
) -> Result<()> {
    for (rings, color) in [(&land.land, LAND), (&land.lakes, WATER)] {
        chart
            .draw_series(rings.iter().map(|r| Polygon::new(pairs(r), color.filled())))
            .map_err(draw_err)?;
    }
    chart
        .draw_series(
            land.coast
                .iter()
                .map(|r| PathElement::new(pairs(r), COAST.stroke_width(1))),
        )
        .map_err(draw_err)?;
    Ok(())
}
