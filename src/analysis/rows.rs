//! Training rows read where they are: a row-major float32 or float64 buffer and the indices of
//! the rows to use, so that probes on one layer of a `[layers, n, d]` stack copy nothing.

use crate::error::{MsError, Result};

/// A feature value the solvers read in place (activations arrive as float32 or float64).
pub trait Feature: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
}

impl Feature for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Feature for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// Some rows of a row-major `[n, d]` matrix, read in place.
#[derive(Clone, Copy)]
pub struct RowSet<'a, T> {
    pub data: &'a [T],
    pub d: usize,
    pub rows: &'a [usize],
}

impl<'a, T: Feature> RowSet<'a, T> {
    /// `data` must hold whole rows and every index must name one of them.
    pub fn new(data: &'a [T], d: usize, rows: &'a [usize]) -> Result<Self> {
        let n = data.len().checked_div(d).unwrap_or(0);
        if d == 0 || data.len() != n * d {
            return Err(MsError::shape(format!(
                "a matrix of {} values does not split into rows of {d} features",
                data.len()
            )));
        }
        if let Some(&bad) = rows.iter().find(|&&i| i >= n) {
            return Err(MsError::invalid(format!(
                "row index {bad} out of range for {n} rows"
            )));
        }
        Ok(RowSet { data, d, rows })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    #[inline(always)]
    pub fn row(&self, k: usize) -> &'a [T] {
        let i = self.rows[k];
        &self.data[i * self.d..(i + 1) * self.d]
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [T]> + '_ {
        (0..self.rows.len()).map(|k| self.row(k))
    }

    /// NaN or inf anywhere in the selected rows is an error that names where.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        if self.is_empty() {
            return Err(MsError::data(format!("{what} has no rows")));
        }
        for (k, row) in self.iter().enumerate() {
            if let Some((j, v)) = row
                .iter()
                .enumerate()
                .find(|(_, v)| !v.to_f64().is_finite())
            {
                return Err(MsError::data(format!(
                    "{what} contains {} at row {}, column {j}: features must be finite (no NaN or inf)",
                    v.to_f64(),
                    self.rows[k]
                )));
            }
        }
        Ok(())
    }
}
