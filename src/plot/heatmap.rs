//! Heatmap panels: a matrix of coloured cells with row and column labels (tokens x layers,
//! attribution per token), drawn cell by cell so long token labels can be rotated.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::spec::HeatmapPanel;
use super::{colors, draw_err, FAMILY};
use crate::error::Result;

pub fn validate(h: &HeatmapPanel) -> std::result::Result<(), String> {
    let rows = h.values.len();
    if rows == 0 || h.values[0].is_empty() {
        return Err("a heatmap needs at least one row and one column".into());
    }
    let cols = h.values[0].len();
    if let Some(r) = h.values.iter().position(|r| r.len() != cols) {
        return Err(format!(
            "row {r} has {} values but row 0 has {cols}",
            h.values[r].len()
        ));
    }
    if !h.row_labels.is_empty() && h.row_labels.len() != rows {
        return Err(format!("{} row labels for {rows} rows", h.row_labels.len()));
    }
    if !h.col_labels.is_empty() && h.col_labels.len() != cols {
        return Err(format!(
            "{} column labels for {cols} columns",
            h.col_labels.len()
        ));
    }
    Ok(())
}

/// Visible form of a token label: spaces and newlines shown, long labels shortened.
fn shown(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| match c {
            ' ' => '·',
            '\n' => '↵',
            '\t' => '→',
            c => c,
        })
        .collect();
    if s.chars().count() > 20 {
        format!("{}…", s.chars().take(19).collect::<String>())
    } else {
        s
    }
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn draw<DB: DrawingBackend>(h: &HeatmapPanel, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let rows = h.values.len();
    let cols = h.values[0].len();
    let finite = || h.values.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let bound = lo.abs().max(hi.abs()).max(1e-12);
    let color_of = |v: f64| {
        if h.diverging {
            colors::diverging(v / bound)
        } else if hi > lo {
            colors::sequential((v - lo) / (hi - lo))
        } else {
            colors::sequential(0.5)
        }
    };

    let (w, ht) = area.dim_in_pixel();
    let (w, ht) = (w as i32, ht as i32);
    let char_w = 7;
    let row_label_w = h
        .row_labels
        .iter()
        .map(|l| shown(l).chars().count() as i32 * char_w + 10)
        .max()
        .unwrap_or(0)
        + if h.y_label.is_empty() { 4 } else { 20 };
    let col_label_len = h
        .col_labels
        .iter()
        .map(|l| shown(l).chars().count() as i32)
        .max()
        .unwrap_or(0);
    let top = if h.title.is_empty() { 6 } else { 26 };
    let colorbar_w = 70;
    let grid_w = (w - row_label_w - colorbar_w - 8).max(cols as i32);
    let cell_w = grid_w / cols as i32;
    // Column labels go sideways when they do not fit their cell.
    let rotate = col_label_len * char_w > cell_w;
    let bottom = if h.col_labels.is_empty() {
        8
    } else if rotate {
        col_label_len * char_w + 12
    } else {
        22
    } + if h.x_label.is_empty() { 0 } else { 18 };
    let grid_h = (ht - top - bottom).max(rows as i32);
    let cell_h = grid_h / rows as i32;
    let x0 = row_label_w;
    let y0 = top;

    if !h.title.is_empty() {
        area.draw(&Text::new(
            h.title.clone(),
            (w / 2, 6),
            (FAMILY, 16)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(draw_err)?;
    }
    for (r, row) in h.values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let (cx, cy) = (x0 + c as i32 * cell_w, y0 + r as i32 * cell_h);
            if !v.is_finite() {
                continue;
            }
            let fill = color_of(v);
            area.draw(&Rectangle::new(
                [(cx, cy), (cx + cell_w, cy + cell_h)],
                fill.filled(),
            ))
            .map_err(draw_err)?;
            if h.annotate && cell_w >= 26 && cell_h >= 14 {
                area.draw(&Text::new(
                    format_value(v),
                    (cx + cell_w / 2, cy + cell_h / 2),
                    (FAMILY, 10)
                        .into_font()
                        .color(&colors::text_on(fill))
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                ))
                .map_err(draw_err)?;
            }
        }
    }
    let label_font = (FAMILY, 11).into_font();
    // Skip labels when rows are too dense to read, keeping every k-th.
    let row_step = (13 / cell_h.max(1) + 1) as usize;
    for (r, label) in h.row_labels.iter().enumerate().step_by(row_step) {
        area.draw(&Text::new(
            shown(label),
            (x0 - 4, y0 + r as i32 * cell_h + cell_h / 2),
            label_font
                .clone()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(draw_err)?;
    }
    let col_step = if rotate {
        (13 / cell_w.max(1) + 1) as usize
    } else {
        1
    };
    let label_y = y0 + rows as i32 * cell_h + 4;
    for (c, label) in h.col_labels.iter().enumerate().step_by(col_step) {
        let cx = x0 + c as i32 * cell_w + cell_w / 2;
        let style = if rotate {
            label_font
                .clone()
                .transform(FontTransform::Rotate90)
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center))
        } else {
            label_font
                .clone()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top))
        };
        area.draw(&Text::new(shown(label), (cx, label_y), style))
            .map_err(draw_err)?;
    }
    let axis_font = (FAMILY, 12).into_font();
    if !h.x_label.is_empty() {
        area.draw(&Text::new(
            h.x_label.clone(),
            (x0 + cols as i32 * cell_w / 2, ht - 4),
            axis_font
                .clone()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Bottom)),
        ))
        .map_err(draw_err)?;
    }
    if !h.y_label.is_empty() {
        area.draw(&Text::new(
            h.y_label.clone(),
            (4, y0 + rows as i32 * cell_h / 2),
            axis_font
                .transform(FontTransform::Rotate270)
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(draw_err)?;
    }
    draw_colorbar(
        area,
        (x0 + cols as i32 * cell_w + 14, y0),
        rows as i32 * cell_h,
        (lo, hi),
        h.diverging,
        bound,
        &color_of,
    )
}

fn draw_colorbar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    origin: (i32, i32),
    height: i32,
    (lo, hi): (f64, f64),
    diverging: bool,
    bound: f64,
    color_of: &dyn Fn(f64) -> RGBColor,
) -> Result<()> {
    if !lo.is_finite() {
        return Ok(());
    }
    let (vmin, vmax) = if diverging { (-bound, bound) } else { (lo, hi) };
    let steps = height.clamp(2, 200);
    for s in 0..steps {
        let t = 1.0 - f64::from(s) / f64::from(steps - 1);
        let v = vmin + t * (vmax - vmin);
        let y = origin.1 + s * height / steps;
        area.draw(&Rectangle::new(
            [(origin.0, y), (origin.0 + 12, y + height / steps + 1)],
            color_of(v).filled(),
        ))
        .map_err(draw_err)?;
    }
    let font = (FAMILY, 10).into_font();
    for (v, y) in [(vmax, origin.1), (vmin, origin.1 + height)] {
        area.draw(&Text::new(
            format_value(v),
            (origin.0 + 16, y),
            font.clone()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}
