//! Heatmap panels: a matrix of coloured cells with row and column labels (tokens x layers,
//! attribution per token), drawn cell by cell so long token labels can be rotated.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::layout::tick_label;
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
    if let Some(text) = &h.cell_text {
        if text.len() != rows || text.iter().any(|r| r.len() != cols) {
            return Err(format!("cell_text must be {rows} rows of {cols} strings"));
        }
    }
    for (name, v) in [("vmin", h.vmin), ("vmax", h.vmax)] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(format!("{name} must be finite"));
        }
    }
    if let (Some(a), Some(b)) = (h.vmin, h.vmax) {
        if a >= b {
            return Err(format!("vmin {a} must be below vmax {b}"));
        }
    }
    if h.log_scale {
        if h.diverging {
            return Err("a colour scale is either diverging or logarithmic, not both".into());
        }
        if h.vmin.is_some_and(|v| v <= 0.0) {
            return Err("a logarithmic colour scale needs vmin > 0".into());
        }
        let non_positive = h
            .values
            .iter()
            .flatten()
            .any(|v| v.is_finite() && *v <= 0.0);
        if non_positive && h.vmin.is_none() {
            return Err(
                "a logarithmic colour scale needs positive values (or vmin, below which cells take the lowest colour)"
                    .into(),
            );
        }
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

/// Where a value sits on the colour scale.
#[derive(Debug, Clone, Copy)]
pub struct ColorScale {
    kind: ScaleKind,
    lo: f64,
    hi: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ScaleKind {
    Linear,
    Log,
    /// Symmetric around 0: `lo = -hi`.
    Diverging,
}

impl ColorScale {
    pub fn for_panel(h: &HeatmapPanel) -> Self {
        let finite = h.values.iter().flatten().copied().filter(|v| v.is_finite());
        let usable = finite.filter(|v| !h.log_scale || *v > 0.0);
        let (lo, hi) = usable.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let (lo, hi) = (h.vmin.unwrap_or(lo), h.vmax.unwrap_or(hi));
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        if h.diverging {
            let bound = lo.abs().max(hi.abs()).max(1e-12);
            ColorScale {
                kind: ScaleKind::Diverging,
                lo: -bound,
                hi: bound,
            }
        } else if h.log_scale {
            let lo = lo.max(1e-300);
            ColorScale {
                kind: ScaleKind::Log,
                lo,
                hi: hi.max(lo * 10.0),
            }
        } else {
            ColorScale {
                kind: ScaleKind::Linear,
                lo,
                hi,
            }
        }
    }

    /// Position in `[0, 1]` along the scale (clamped outside the range).
    pub fn position(&self, v: f64) -> f64 {
        let t = match self.kind {
            ScaleKind::Log => (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln()),
            _ if self.hi > self.lo => (v - self.lo) / (self.hi - self.lo),
            _ => 0.5,
        };
        t.clamp(0.0, 1.0)
    }

    pub fn color(&self, v: f64) -> RGBColor {
        let t = self.position(v);
        if self.kind == ScaleKind::Diverging {
            colors::diverging(2.0 * t - 1.0)
        } else {
            colors::sequential(t)
        }
    }

    /// Labelled values for the colour bar: the ends, or every power of ten for a log scale.
    pub fn ticks(&self) -> Vec<(f64, String)> {
        if self.kind != ScaleKind::Log {
            let mut t = vec![(self.lo, tick_label(round_to(self.lo, 3)))];
            if self.kind == ScaleKind::Diverging {
                t.push((0.0, "0".into()));
            }
            t.push((self.hi, tick_label(round_to(self.hi, 3))));
            return t;
        }
        let (a, b) = (
            self.lo.log10().ceil() as i32,
            self.hi.log10().floor() as i32,
        );
        let step = ((b - a) / 6 + 1).max(1);
        (a..=b)
            .step_by(step as usize)
            .map(|k| (10f64.powi(k), decade_label(k)))
            .collect()
    }
}

fn round_to(v: f64, digits: i32) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let scale = 10f64.powi(digits - 1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// `10^k` as a label: "1", "0.1", "0.01", then "10⁻³", "10⁻⁴", ...
pub fn decade_label(k: i32) -> String {
    if (-2..=3).contains(&k) {
        return tick_label(10f64.powi(k));
    }
    let sup: String = k
        .to_string()
        .chars()
        .map(|c| match c {
            '-' => '⁻',
            d => ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'][d as usize - '0' as usize],
        })
        .collect();
    format!("10{sup}")
}

/// A value printed in its cell: two or three significant digits, no needless zeros.
fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        tick_label((v * 10.0).round() / 10.0)
    } else {
        format!("{v:.2}")
    }
}

/// The largest font (pixels, 9 to 14) whose every cell text fits its cell, if any.
fn cell_font_px<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    texts: &[Vec<String>],
    cell: (i32, i32),
) -> Option<i32> {
    let widest = texts
        .iter()
        .flatten()
        .flat_map(|t| t.split('\n'))
        .max_by_key(|l| l.chars().count())?
        .to_string();
    let lines = texts
        .iter()
        .flatten()
        .map(|t| t.split('\n').count())
        .max()
        .unwrap_or(1) as i32;
    (9..=14).rev().find(|&px| {
        let (tw, _) = area
            .estimate_text_size(&widest, &TextStyle::from((FAMILY, px).into_font()))
            .unwrap_or((u32::MAX, 0));
        (tw as i32) + 4 <= cell.0 && lines * (px + 2) + 2 <= cell.1
    })
}

pub fn draw<DB: DrawingBackend>(h: &HeatmapPanel, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let rows = h.values.len();
    let cols = h.values[0].len();
    let scale = ColorScale::for_panel(h);

    let (w, ht) = area.dim_in_pixel();
    let (w, ht) = (w as i32, ht as i32);
    let char_w = 7;
    let row_label_w = h
        .row_labels
        .iter()
        .map(|l| shown(l).chars().count() as i32 * char_w + 10)
        .max()
        .unwrap_or(0)
        + if h.y_label.is_empty() { 4 } else { 22 };
    let col_label_len = h
        .col_labels
        .iter()
        .map(|l| shown(l).chars().count() as i32)
        .max()
        .unwrap_or(0);
    let top = if h.title.is_empty() { 6 } else { 28 };
    let colorbar_w = 76;
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
    } + if h.x_label.is_empty() { 0 } else { 20 };
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
    let texts: Option<Vec<Vec<String>>> = h.cell_text.clone().or_else(|| {
        h.annotate.then(|| {
            h.values
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|&v| {
                            if v.is_finite() {
                                format_value(v)
                            } else {
                                String::new()
                            }
                        })
                        .collect()
                })
                .collect()
        })
    });
    let font_px = texts
        .as_ref()
        .and_then(|t| cell_font_px(area, t, (cell_w, cell_h)));
    for (r, row) in h.values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let (cx, cy) = (x0 + c as i32 * cell_w, y0 + r as i32 * cell_h);
            let fill = if v.is_finite() {
                scale.color(v)
            } else {
                RGBColor(255, 255, 255)
            };
            if v.is_finite() {
                area.draw(&Rectangle::new(
                    [(cx, cy), (cx + cell_w, cy + cell_h)],
                    fill.filled(),
                ))
                .map_err(draw_err)?;
            }
            let (Some(px), Some(texts)) = (font_px, texts.as_ref()) else {
                continue;
            };
            let lines: Vec<&str> = texts[r][c].split('\n').collect();
            let n = lines.len() as i32;
            for (k, line) in lines.iter().enumerate() {
                let ly = cy + cell_h / 2 + (2 * k as i32 - (n - 1)) * (px + 2) / 2;
                area.draw(&Text::new(
                    line.to_string(),
                    (cx + cell_w / 2, ly),
                    (FAMILY, px)
                        .into_font()
                        .color(&colors::text_on(fill))
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                ))
                .map_err(draw_err)?;
            }
        }
    }
    let label_font = (FAMILY, 12).into_font();
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
    let axis_font = (FAMILY, 13).into_font();
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
        &scale,
    )
}

fn draw_colorbar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    origin: (i32, i32),
    height: i32,
    scale: &ColorScale,
) -> Result<()> {
    let steps = height.clamp(2, 200);
    for s in 0..steps {
        let t = 1.0 - f64::from(s) / f64::from(steps - 1);
        let y = origin.1 + s * height / steps;
        let color = if scale.kind == ScaleKind::Diverging {
            colors::diverging(2.0 * t - 1.0)
        } else {
            colors::sequential(t)
        };
        area.draw(&Rectangle::new(
            [(origin.0, y), (origin.0 + 12, y + height / steps + 1)],
            color.filled(),
        ))
        .map_err(draw_err)?;
    }
    let font = (FAMILY, 11).into_font();
    for (v, label) in scale.ticks() {
        let y = origin.1 + ((1.0 - scale.position(v)) * f64::from(height)).round() as i32;
        area.draw(&PathElement::new(
            vec![(origin.0 + 12, y), (origin.0 + 15, y)],
            BLACK,
        ))
        .map_err(draw_err)?;
        area.draw(&Text::new(
            label,
            (origin.0 + 17, y),
            font.clone()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(json: &str) -> HeatmapPanel {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn log_scale_is_monotone_across_decades() {
        let h = panel(r#"{"values": [[1e-6, 1e-3, 0.5, 1.0]], "log_scale": true}"#);
        let s = ColorScale::for_panel(&h);
        let vals = [1e-7, 1e-6, 3e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0];
        let pos: Vec<f64> = vals.iter().map(|&v| s.position(v)).collect();
        assert_eq!(pos[0], 0.0);
        assert_eq!(pos[1], 0.0);
        assert!(pos[1..].windows(2).all(|w| w[1] > w[0]), "{pos:?}");
        assert_eq!(*pos.last().unwrap(), 1.0);
        // Equal ratios, equal steps: 1e-5 -> 1e-4 as far as 1e-2 -> 1e-1.
        assert!(((pos[4] - pos[3]) - (pos[7] - pos[6])).abs() < 1e-12);
        let labels: Vec<String> = s.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(labels.first().unwrap(), "10⁻⁶");
        assert_eq!(labels.last().unwrap(), "1");
    }

    #[test]
    fn log_scale_refuses_non_positive_values_without_vmin() {
        let h = panel(r#"{"values": [[0.0, 0.5]], "log_scale": true}"#);
        assert!(validate(&h).unwrap_err().contains("positive"));
        let h = panel(r#"{"values": [[0.0, 0.5]], "log_scale": true, "vmin": 1e-4}"#);
        assert!(validate(&h).is_ok());
        assert_eq!(ColorScale::for_panel(&h).position(0.0), 0.0);
    }

    #[test]
    fn decade_labels() {
        assert_eq!(decade_label(0), "1");
        assert_eq!(decade_label(-1), "0.1");
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(-3), "10⁻³");
        assert_eq!(decade_label(-12), "10⁻¹²");
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.5), "0.50");
        assert_eq!(format_value(12.34), "12.3");
    }
}
