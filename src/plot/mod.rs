//! Figures drawn with plotters into PNG files: scatter maps, per-layer curves and heatmaps.
//!
//! A figure is described by a [`FigureSpec`] (built by the Python layer and passed as JSON), laid
//! out as a grid of panels and rendered in pure Rust: no system fonts or libraries are needed
//! because the DejaVu Sans font ships inside the binary.

mod bars;
mod colors;
mod heatmap;
mod layout;
mod legend;
mod lines;
mod scatter;
pub mod spec;

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

pub use spec::{FigureSpec, Panel};

use crate::error::{MsError, Result};

const FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
pub(crate) const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF compiled into the binary; failure would be a build bug.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Any plotters error as a core error (plotters errors carry the backend's error type).
pub(crate) fn draw_err<E: std::fmt::Debug>(e: E) -> MsError {
    MsError::Compute(format!("drawing the figure failed: {e:?}"))
}

/// `(min, max)` of finite values, widened by `margin` of the span (and never empty).
pub(crate) fn padded_range(values: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - margin * span, hi + margin * span)
}

fn validate(spec: &FigureSpec) -> Result<()> {
    if spec.panels.is_empty() {
        return Err(MsError::invalid("a figure needs at least one panel"));
    }
    if spec.columns == 0 {
        return Err(MsError::invalid("columns must be at least 1"));
    }
    if !(100..=8000).contains(&spec.width) || !(100..=8000).contains(&spec.height) {
        return Err(MsError::invalid(format!(
            "figure size {}x{} is outside 100..8000 pixels",
            spec.width, spec.height
        )));
    }
    for (i, p) in spec.panels.iter().enumerate() {
        match p {
            Panel::Scatter(s) => scatter::validate(s),
            Panel::Lines(l) => lines::validate(l),
            Panel::Heatmap(h) => heatmap::validate(h),
            Panel::Bars(b) => bars::validate(b),
        }
        .map_err(|e| MsError::invalid(format!("panel {i}: {e}")))?;
    }
    let rows = spec.panels.len().div_ceil(spec.columns);
    for (name, weights, n) in [
        ("widths", &spec.widths, spec.columns),
        ("heights", &spec.heights, rows),
    ] {
        if let Some(w) = weights {
            if w.len() != n || w.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(MsError::invalid(format!(
                    "{name} must be {n} positive numbers (one per {}), got {w:?}",
                    if name == "widths" { "column" } else { "row" }
                )));
            }
        }
    }
    Ok(())
}

/// Draw `spec` into the PNG at `path`. The image is written to a temporary name next to it and
/// renamed when complete, so an existing file is never left half-written.
pub fn render(spec: &FigureSpec, path: &Path) -> Result<()> {
    validate(spec)?;
    register_font();
    let ext_ok = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !ext_ok {
        return Err(MsError::invalid(format!(
            "figures are written as PNG: the path must end in .png, got {}",
            path.display()
        )));
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| MsError::invalid(format!("{} is not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.partial.png", file_name.to_string_lossy()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(MsError::io(
                format!(
                    "cannot write {}: folder {} does not exist",
                    path.display(),
                    dir.display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
    }
    let drawn = draw(spec, &tmp);
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        MsError::io(format!("cannot write {}", path.display()), e)
    })
}

/// Pixel offsets where the `n` cells of `total` pixels split, by relative `weights` (equal
/// when absent).
fn breakpoints(weights: Option<&[f64]>, n: usize, total: u32) -> Vec<i32> {
    let equal = vec![1.0; n];
    let w = weights.unwrap_or(&equal);
    let sum: f64 = w.iter().sum();
    let mut acc = 0.0;
    w[..n.saturating_sub(1)]
        .iter()
        .map(|v| {
            acc += v;
            (acc / sum * f64::from(total)).round() as i32
        })
        .collect()
}

fn draw(spec: &FigureSpec, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, (spec.width, spec.height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let body = match &spec.title {
        Some(t) if !t.is_empty() => root.titled(t, (FAMILY, 22)).map_err(draw_err)?,
        _ => root.clone(),
    };
    let rows = spec.panels.len().div_ceil(spec.columns);
    let (w, h) = body.dim_in_pixel();
    let xs = breakpoints(spec.widths.as_deref(), spec.columns, w);
    let ys = breakpoints(spec.heights.as_deref(), rows, h);
    let areas = body.split_by_breakpoints(xs, ys);
    for (panel, area) in spec.panels.iter().zip(areas.iter()) {
        match panel {
            Panel::Scatter(s) => scatter::draw(s, area)?,
            Panel::Lines(l) => lines::draw(l, area)?,
            Panel::Heatmap(h) => heatmap::draw(h, area)?,
            Panel::Bars(b) => bars::draw(b, area)?,
        }
    }
    root.present().map_err(|e| match e {
        plotters::drawing::DrawingAreaErrorKind::BackendError(b) => MsError::io(
            format!("cannot write {}", path.display()),
            std::io::Error::other(format!("{b:?}")),
        ),
        other => draw_err(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_ignore_non_finite_values_and_never_collapse() {
        assert_eq!(
            padded_range([f64::NAN, 1.0, 3.0].into_iter(), 0.0),
            (1.0, 3.0)
        );
        let (lo, hi) = padded_range([2.0, 2.0].into_iter(), 0.1);
        assert!(lo < 2.0 && hi > 2.0);
        assert_eq!(padded_range(std::iter::empty(), 0.1), (0.0, 1.0));
    }

    #[test]
    fn specs_are_validated_before_drawing() {
        let spec: FigureSpec = serde_json::from_str(
            r#"{"panels": [{"kind": "heatmap", "values": [[1.0, null], [2.0]]}]}"#,
        )
        .unwrap();
        let err = render(&spec, Path::new("/tmp/never-written.png")).unwrap_err();
        assert!(err.to_string().contains("row 1 has 1 values"), "{err}");
        let empty: FigureSpec = serde_json::from_str(r#"{"panels": []}"#).unwrap();
        assert!(render(&empty, Path::new("x.png")).is_err());
    }

    #[test]
    fn rows_and_columns_split_by_weight() {
        assert_eq!(breakpoints(None, 3, 300), vec![100, 200]);
        assert_eq!(breakpoints(Some(&[1.0, 3.0]), 2, 400), vec![100]);
        assert!(breakpoints(None, 1, 300).is_empty());
        let spec: FigureSpec = serde_json::from_str(
            r#"{"heights": [1, 0], "columns": 1, "panels": [
                {"kind": "lines", "series": [{"name": "a", "x": [0], "y": [0]}]},
                {"kind": "lines", "series": [{"name": "a", "x": [0], "y": [0]}]}]}"#,
        )
        .unwrap();
        let err = render(&spec, Path::new("/tmp/never-written.png")).unwrap_err();
        assert!(
            err.to_string().contains("heights must be 2 positive"),
            "{err}"
        );
    }

    /// Render `spec` and return the image as RGB rows, to check what was drawn where.
    fn pixels(spec: &str) -> (u32, u32, Vec<u8>) {
        let spec: FigureSpec = serde_json::from_str(spec).unwrap();
        let path = std::env::temp_dir().join(format!(
            "mindscope-plot-px-{}-{:?}.png",
            std::process::id(),
            std::thread::current().id()
        ));
        render(&spec, &path).unwrap();
        let mut reader = png::Decoder::new(std::fs::File::open(&path).unwrap())
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn land_is_drawn_where_land_is_and_water_elsewhere() {
        // A square island from x 0..10, y 0..10 in a -20..20 frame, no title, no axes text.
        let (w, h, px) = pixels(
            r#"{"width": 400, "height": 400, "panels": [{"kind": "scatter", "x": [], "y": [],
                "x_range": [-20, 20], "y_range": [-20, 20],
                "land": {"land": [[0, 0, 10, 0, 10, 10, 0, 10, 0, 0]]}}]}"#,
        );
        let (pw, ph) = layout::plot_size(w, h);
        let (left, top) = (
            f64::from(layout::MARGIN + layout::Y_LABEL_AREA),
            f64::from(layout::MARGIN),
        );
        let at = |x: f64, y: f64| {
            let cx = (left + (x + 20.0) / 40.0 * pw) as usize;
            let cy = (top + (20.0 - y) / 40.0 * ph) as usize;
            let i = (cy * w as usize + cx) * 3;
            (px[i], px[i + 1], px[i + 2])
        };
        let land = scatter::LAND;
        let water = scatter::WATER;
        // Odd coordinates: away from the grid lines drawn at the tick labels.
        assert_eq!(at(3.0, 7.0), (land.0, land.1, land.2));
        assert_eq!(at(-13.0, -7.0), (water.0, water.1, water.2));
        assert_eq!(at(17.0, 3.0), (water.0, water.1, water.2));
    }

    #[test]
    fn heatmap_cells_carry_their_text() {
        // Two equal cells: one with text, one without. Text pixels differ from the fill.
        let spec = |text: &str| {
            format!(
                r#"{{"width": 400, "height": 200, "panels": [{{"kind": "heatmap",
                "values": [[0.5, 0.5]], "vmin": 0, "vmax": 1, "cell_text": [["{text}", ""]]}}]}}"#
            )
        };
        let (w, h, with) = pixels(&spec("0.93\\nAUROC 0.12"));
        let (_, _, without) = pixels(&spec(""));
        let differing = |x_lo: usize, x_hi: usize| {
            (0..h as usize)
                .flat_map(|y| (x_lo..x_hi).map(move |x| (y * w as usize + x) * 3))
                .filter(|&i| with[i..i + 3] != without[i..i + 3])
                .count()
        };
        // The grid starts after a small row-label margin and spans two cells before the colour bar.
        let grid_end = w as usize - 84;
        let mid = (8 + grid_end) / 2;
        assert!(differing(8, mid) > 100, "no text drawn in the first cell");
        assert_eq!(
            differing(mid + 2, w as usize),
            0,
            "text leaked into the second cell"
        );
    }

    #[test]
    fn renders_a_png() {
        let spec: FigureSpec = serde_json::from_str(
            r#"{"width": 400, "height": 300, "panels": [
                {"kind": "lines", "series": [{"name": "a", "x": [0, 1], "y": [0, 1]}]}]}"#,
        )
        .unwrap();
        let path = std::env::temp_dir().join(format!("mindscope-plot-{}.png", std::process::id()));
        render(&spec, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG");
    }
}
