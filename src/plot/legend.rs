//! Legends drawn by hand, so they can go in a corner no data passes through or beside the plot.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::spec::{LegendCorner, Marker};
use super::{draw_err, FAMILY};
use crate::error::Result;

/// What a legend entry shows before its name.
#[derive(Debug, Clone, Copy)]
pub enum Swatch {
    /// `dash`: (dash, gap) lengths in pixels; solid when absent.
    Line {
        color: RGBColor,
        dash: Option<(i32, i32)>,
        width: u32,
    },
    Point {
        color: RGBColor,
        marker: Marker,
    },
    Bar {
        color: RGBColor,
    },
}

pub struct Legend {
    pub entries: Vec<(String, Swatch)>,
}

const ROW_H: i32 = 18;
const FONT_PX: i32 = 12;
const INSET: i32 = 8;

impl Legend {
    /// `(width, height)` in pixels (text width estimated at 0.6 em per character).
    pub fn size(&self) -> (i32, i32) {
        let chars = self
            .entries
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0) as i32;
        (
            chars * FONT_PX * 6 / 10 + 40,
            self.entries.len() as i32 * ROW_H + 8,
        )
    }
}

/// Where the legend goes: `wanted` unless it is `Auto`; then the first corner whose box holds
/// none of `samples` (data coordinates), else outside the plot.
pub fn place(
    legend: &Legend,
    wanted: LegendCorner,
    (pw, ph): (f64, f64),
    ((x0, x1), (y0, y1)): ((f64, f64), (f64, f64)),
    samples: &[(f64, f64)],
) -> LegendCorner {
    if wanted != LegendCorner::Auto {
        return wanted;
    }
    let (lw, lh) = legend.size();
    let (lw, lh) = (f64::from(lw + INSET + 4), f64::from(lh + INSET + 4));
    if lw > pw * 0.75 || lh > ph * 0.7 {
        return LegendCorner::Outside;
    }
    let pixels: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| ((x - x0) / (x1 - x0) * pw, (y1 - y) / (y1 - y0) * ph))
        .collect();
    let free = |corner: LegendCorner, left: bool, top: bool| {
        let xs = if left { (0.0, lw) } else { (pw - lw, pw) };
        let ys = match corner {
            LegendCorner::CenterLeft | LegendCorner::CenterRight => {
                ((ph - lh) / 2.0, (ph + lh) / 2.0)
            }
            _ if top => (0.0, lh),
            _ => (ph - lh, ph),
        };
        !pixels
            .iter()
            .any(|&(x, y)| x >= xs.0 && x <= xs.1 && y >= ys.0 && y <= ys.1)
    };
    [
        (LegendCorner::UpperRight, false, true),
        (LegendCorner::UpperLeft, true, true),
        (LegendCorner::LowerRight, false, false),
        (LegendCorner::LowerLeft, true, false),
        (LegendCorner::CenterRight, false, false),
        (LegendCorner::CenterLeft, true, false),
    ]
    .into_iter()
    .find(|&(c, left, top)| free(c, left, top))
    .map_or(LegendCorner::Outside, |(c, _, _)| c)
}

/// Points along the segments of a polyline, so a legend box is not placed across a line.
pub fn along(points: &[(f64, f64)], per_segment: usize) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = points.to_vec();
    for w in points.windows(2) {
        for k in 1..per_segment {
            let t = k as f64 / per_segment as f64;
            out.push((
                w[0].0 + t * (w[1].0 - w[0].0),
                w[0].1 + t * (w[1].1 - w[0].1),
            ));
        }
    }
    out
}

/// Draw `legend` in a corner of `plot` (the plotting area) or at the top left of `outside`.
pub fn draw<DB: DrawingBackend>(
    legend: &Legend,
    corner: LegendCorner,
    plot: &DrawingArea<DB, Shift>,
    outside: Option<&DrawingArea<DB, Shift>>,
) -> Result<()> {
    let (lw, lh) = legend.size();
    let (area, x, y) = match (corner, outside) {
        (LegendCorner::Outside, Some(o)) => (o, 6, INSET + 30),
        _ => {
            let (pw, ph) = plot.dim_in_pixel();
            let (pw, ph) = (pw as i32, ph as i32);
            let left = matches!(
                corner,
                LegendCorner::UpperLeft | LegendCorner::LowerLeft | LegendCorner::CenterLeft
            );
            let x = if left { INSET } else { pw - lw - INSET };
            let y = match corner {
                LegendCorner::LowerLeft | LegendCorner::LowerRight => ph - lh - INSET,
                LegendCorner::CenterLeft | LegendCorner::CenterRight => (ph - lh) / 2,
                _ => INSET,
            };
            (plot, x, y)
        }
    };
    area.draw(&Rectangle::new(
        [(x, y), (x + lw, y + lh)],
        WHITE.mix(0.9).filled(),
    ))
    .map_err(draw_err)?;
    area.draw(&Rectangle::new(
        [(x, y), (x + lw, y + lh)],
        RGBColor(180, 180, 180),
    ))
    .map_err(draw_err)?;
    for (i, (name, swatch)) in legend.entries.iter().enumerate() {
        let cy = y + 4 + ROW_H / 2 + i as i32 * ROW_H;
        let sx = x + 8;
        match *swatch {
            Swatch::Line { color, dash, width } => {
                let style = ShapeStyle::from(color).stroke_width(width);
                if let Some((on, off)) = dash {
                    let mut x0 = sx;
                    while x0 < sx + 24 {
                        let x1 = (x0 + on).min(sx + 24);
                        area.draw(&PathElement::new(vec![(x0, cy), (x1, cy)], style))
                            .map_err(draw_err)?;
                        x0 = x1 + off;
                    }
                } else {
                    area.draw(&PathElement::new(vec![(sx, cy), (sx + 22, cy)], style))
                        .map_err(draw_err)?;
                }
            }
            Swatch::Point { color, marker } => {
                draw_marker(area, (sx + 11, cy), 5, color, marker)?;
            }
            Swatch::Bar { color } => {
                area.draw(&Rectangle::new(
                    [(sx + 3, cy - 6), (sx + 19, cy + 6)],
                    color.filled(),
                ))
                .map_err(draw_err)?;
            }
        }
        area.draw(&Text::new(
            name.clone(),
            (sx + 30, cy),
            (FAMILY, FONT_PX)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

/// One marker at a pixel position.
pub fn draw_marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (x, y): (i32, i32),
    size: i32,
    color: RGBColor,
    marker: Marker,
) -> Result<()> {
    match marker {
        Marker::Circle => area.draw(&Circle::new((x, y), size, color.filled())),
        Marker::Ring => area.draw(&Circle::new((x, y), size, color.stroke_width(2))),
        Marker::Triangle => area.draw(&TriangleMarker::new((x, y), size + 1, color.filled())),
        Marker::Cross => area.draw(&Cross::new((x, y), size, color.stroke_width(2))),
    }
    .map_err(draw_err)
}
