//! What a figure shows, as data: the Python layer builds a [`FigureSpec`] (as JSON) and the
//! renderer draws it. Keeping the spec declarative means every experiment's plot is one
//! small function that fills in arrays, and the drawing code lives in one place.

use serde::Deserialize;

/// A grid of panels written to one PNG.
#[derive(Debug, Deserialize)]
pub struct FigureSpec {
    /// Total size in pixels.
    #[serde(default = "default_width")]
    pub width: u32,
    #[serde(default = "default_height")]
    pub height: u32,
    /// Panels per row; rows follow from the number of panels.
    #[serde(default = "default_columns")]
    pub columns: usize,
    #[serde(default)]
    pub title: Option<String>,
    pub panels: Vec<Panel>,
    /// Relative widths of the columns and heights of the rows (equal when absent), so a
    /// one-row heatmap need not take as much room as a 30-row one.
    #[serde(default)]
    pub widths: Option<Vec<f64>>,
    #[serde(default)]
    pub heights: Option<Vec<f64>>,
}

fn default_width() -> u32 {
    1200
}
fn default_height() -> u32 {
    700
}
fn default_columns() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Panel {
    Scatter(ScatterPanel),
    Lines(LinesPanel),
    Heatmap(HeatmapPanel),
    Bars(BarsPanel),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Axes {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Fixed ranges; otherwise the data's range with a margin.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    /// Pixels per y unit over pixels per x unit; the plot area shrinks to keep it (a map in
    /// degrees: `1 / cos(standard parallel)`). Free when absent.
    pub aspect: Option<f64>,
}

/// Points coloured by group, optionally with faint segments to a second position
/// (e.g. predicted -> true city location) and a graticule (lat/lon grid).
#[derive(Debug, Deserialize)]
pub struct ScatterPanel {
    #[serde(flatten)]
    pub axes: Axes,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Group index per point (into `group_names`); all 0 when absent.
    #[serde(default)]
    pub groups: Vec<usize>,
    #[serde(default)]
    pub group_names: Vec<String>,
    /// Segment end points, one per point.
    #[serde(default)]
    pub line_to: Option<(Vec<f64>, Vec<f64>)>,
    /// Grid lines every this many units on both axes (drawn light).
    #[serde(default)]
    pub graticule: Option<f64>,
    #[serde(default = "default_point_size")]
    pub point_size: u32,
    /// Size of a dark dot drawn at each `line_to` end (0: none).
    #[serde(default)]
    pub end_point_size: u32,
    /// Colour (palette index) and marker per group; palette order and circles when absent.
    #[serde(default)]
    pub group_styles: Vec<GroupStyle>,
    /// Land drawn under the points (map panels).
    #[serde(default)]
    pub land: Option<Land>,
    #[serde(default)]
    pub legend: LegendCorner,
}

/// How one group's points look.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct GroupStyle {
    pub color: usize,
    #[serde(default)]
    pub marker: Marker,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Marker {
    #[default]
    Circle,
    /// An open circle: tells a second set apart without a second colour.
    Ring,
    Triangle,
    Cross,
}

/// Land shading for a map in the panel's data coordinates: rings as flat
/// `[x0, y0, x1, y1, ...]` lists. `land` rings are filled, `lakes` filled back with water,
/// `coast` polylines stroked.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Land {
    pub land: Vec<Vec<f64>>,
    pub lakes: Vec<Vec<f64>>,
    pub coast: Vec<Vec<f64>>,
}

fn default_point_size() -> u32 {
    3
}

/// Named series of (x, y) with optional markers, e.g. a metric per layer.
#[derive(Debug, Deserialize)]
pub struct LinesPanel {
    #[serde(flatten)]
    pub axes: Axes,
    pub series: Vec<Series>,
    /// Horizontal reference lines (chance level, ...).
    #[serde(default)]
    pub hlines: Vec<f64>,
    /// Legend name of each reference line (same order as `hlines`; empty: not in the legend).
    #[serde(default)]
    pub hline_labels: Vec<String>,
    /// Corner of the legend: put it where the data is not.
    #[serde(default)]
    pub legend: LegendCorner,
}

/// Where a legend sits: a corner or the middle of a side of the plot area, right of it
/// (`outside`), or `auto`: the first of those places no data passes through, else outside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegendCorner {
    #[default]
    Auto,
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
    CenterLeft,
    CenterRight,
    Outside,
}

#[derive(Debug, Deserialize)]
pub struct Series {
    pub name: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    #[serde(default = "yes")]
    pub markers: bool,
    #[serde(default)]
    pub dashed: bool,
    /// Text beside each point (e.g. how many samples it averages); empty: none.
    #[serde(default)]
    pub point_labels: Vec<String>,
}

/// Bars at `x` (centres) of width `width`; several series stack (a histogram split by
/// outcome).
#[derive(Debug, Deserialize)]
pub struct BarsPanel {
    #[serde(flatten)]
    pub axes: Axes,
    pub x: Vec<f64>,
    pub width: f64,
    pub series: Vec<BarSeries>,
    #[serde(default)]
    pub legend: LegendCorner,
}

#[derive(Debug, Deserialize)]
pub struct BarSeries {
    pub name: String,
    pub heights: Vec<f64>,
}

fn yes() -> bool {
    true
}

/// A matrix of values as coloured cells with row and column labels (tokens, layers).
#[derive(Debug, Deserialize)]
pub struct HeatmapPanel {
    #[serde(default)]
    pub title: String,
    /// Row-major `[rows][cols]`; missing cells (JSON `null`) become NaN and stay blank.
    #[serde(deserialize_with = "rows_with_gaps")]
    pub values: Vec<Vec<f64>>,
    #[serde(default)]
    pub row_labels: Vec<String>,
    #[serde(default)]
    pub col_labels: Vec<String>,
    /// Diverging blue-white-red around 0 (signed effects); otherwise a sequential scale.
    #[serde(default)]
    pub diverging: bool,
    /// Print each value in its cell.
    #[serde(default)]
    pub annotate: bool,
    /// Text per cell `[rows][cols]` instead of the value (lines split at `\n`), drawn whether
    /// or not `annotate` is set.
    #[serde(default)]
    pub cell_text: Option<Vec<Vec<String>>>,
    /// Colour by log10 of the value (probabilities spanning decades); values must be positive
    /// unless `vmin` is given, below which everything takes the lowest colour.
    #[serde(default)]
    pub log_scale: bool,
    /// Colour range; the data's range when absent.
    #[serde(default)]
    pub vmin: Option<f64>,
    #[serde(default)]
    pub vmax: Option<f64>,
    #[serde(default)]
    pub x_label: String,
    #[serde(default)]
    pub y_label: String,
}

/// JSON has no NaN, so missing cells arrive as `null`.
fn rows_with_gaps<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
    let rows: Vec<Vec<Option<f64>>> = Vec::deserialize(d)?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
        .collect())
}
