//! Helpers shared by the Rust integration tests.

use std::path::PathBuf;

/// The shared reference data: `$MINDSCOPE_SHARED`, or `../shared` next to the repository
/// (the same rule as `tests/python/conftest.py`).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("MINDSCOPE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}
