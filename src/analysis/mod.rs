//! Analysis methods on activations: probes, projections, truth directions and metrics.
//!
//! Everything works on plain `f64` matrices `[n_samples, n_features]` (ndarray views), so the
//! same code serves model caches, dumps on disk and arrays from elsewhere.
//!
//! Linear algebra is pure Rust (linfa-linalg's symmetric eigendecomposition), not
//! ndarray-linalg: ndarray-linalg needs a LAPACK library, and its static backends download
//! sources at build time (which fails offline) while the system backend needs Debian packages a
//! fresh machine lacks. The problems here are small and symmetric (`d x d` covariances with
//! d <= a few thousand), where an eigendecomposition is exact enough and fast.

pub mod check;
pub mod lbfgs;
pub mod logistic;
pub mod metrics;
pub mod pca;
pub mod ridge;
pub mod rows;
pub mod standardize;
pub mod sweep;
pub mod truth;

pub use logistic::{LogisticModel, LogisticParams};
pub use pca::Pca;
pub use ridge::{RidgeModel, RidgeParams};
pub use rows::{Feature, RowSet};
pub use standardize::Standardizer;
pub use truth::{DirectionMethod, TruthDirection};
