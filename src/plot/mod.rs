//! Figures drawn with plotters into PNG files: scatter maps, per-layer curves and heatmaps.
//!
//! A figure is described by a [`FigureSpec`] (built by the Python layer and passed as JSON), laid
//! out as a grid of panels and rendered in pure Rust: no system fonts or libraries are needed
//! because the DejaVu Sans font ships inside the binary.

mod colors;
mod heatmap;
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
        }
        .map_err(|e| MsError::invalid(format!("panel {i}: {e}")))?;
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

fn draw(spec: &FigureSpec, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, (spec.width, spec.height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let body = match &spec.title {
        Some(t) if !t.is_empty() => root.titled(t, (FAMILY, 22)).map_err(draw_err)?,
        _ => root.clone(),
    };
    let rows = spec.panels.len().div_ceil(spec.columns);
    let areas = body.split_evenly((rows, spec.columns));
    for (panel, area) in spec.panels.iter().zip(areas.iter()) {
        match panel {
            Panel::Scatter(s) => scatter::draw(s, area)?,
            Panel::Lines(l) => lines::draw(l, area)?,
            Panel::Heatmap(h) => heatmap::draw(h, area)?,
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
