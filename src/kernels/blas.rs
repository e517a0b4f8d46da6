//! An optional faster matrix multiply: the OpenBLAS that numpy ships in its wheels.
//!
//! numpy's Linux and macOS wheels carry OpenBLAS (`scipy-openblas` since numpy 2.0), built
//! with kernels for each x86 generation; its `sgemm` is faster than candle's `gemm` crate on
//! the models' linear shapes (README, Benchmarks). Linking a BLAS at build time is not an
//! option (a fresh machine has no system OpenBLAS; the static builds download sources), so
//! the Python layer hands us the path of numpy's copy and we resolve `cblas_sgemm` in it at
//! run time. Without it (Rust tests, another numpy build) `linear` stays on `gemm`.
//!
//! Any library exporting `cblas_sgemm` can be loaded instead; the Python layer prefers MKL's
//! `libmkl_rt` when the PyPI package `mkl` is installed (it runs in its sequential layer, see
//! [`use_sequential_mkl`]). Libraries with a per-thread thread count (OpenBLAS, MKL) get the
//! row split below; others are called once.

use std::ffi::{c_void, CString};
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{MsError, Result};

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// `cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)` with
/// 64-bit integers (ILP64, numpy's `scipy_openblas64_`).
type SgemmIlp64 = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i64,
    i64,
    i64,
    f32,
    *const f32,
    i64,
    *const f32,
    i64,
    f32,
    *mut f32,
    i64,
);
/// The same with 32-bit integers.
type SgemmLp64 = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);
/// `int f(int)`: the setters used here, e.g. the number of threads this thread's calls may
/// use (OpenBLAS's `openblas_set_num_threads_local`, MKL's `MKL_Set_Num_Threads_Local`).
type IntSetter = unsafe extern "C" fn(i32) -> i32;

/// Per-thread thread-count setters tried, in order.
const THREADS_LOCAL_SYMBOLS: [&str; 2] = [
    "openblas_set_num_threads_local",
    "MKL_Set_Num_Threads_Local",
];

#[derive(Clone, Copy)]
enum Sgemm {
    Ilp64(SgemmIlp64),
    Lp64(SgemmLp64),
}

/// The library in use: its path, sgemm, and OpenBLAS's per-thread thread count setter.
struct Blas {
    path: String,
    sgemm: Sgemm,
    set_threads_local: Option<IntSetter>,
}

static BLAS: OnceLock<Blas> = OnceLock::new();

/// Symbol names tried, in order, with their integer width (true = 64-bit).
const SYMBOLS: [(&str, bool); 4] = [
    ("scipy_cblas_sgemm64_", true),
    ("cblas_sgemm64_", true),
    ("scipy_cblas_sgemm", false),
    ("cblas_sgemm", false),
];

/// Load `cblas_sgemm` from the shared library at `path`. One library serves the whole
/// process: asking again for the same file returns it, asking for another is an error.
pub fn load(path: &str) -> Result<String> {
    if let Some(b) = BLAS.get() {
        let same = |p: &str| std::fs::canonicalize(p).ok();
        if b.path == path || (same(path).is_some() && same(path) == same(&b.path)) {
            return Ok(b.path.clone());
        }
        return Err(MsError::invalid(format!(
            "{} is already the BLAS of this process; the library can be chosen once, before \
             the first model is loaded (asked for {path})",
            b.path
        )));
    }
    let c_path = CString::new(path)
        .map_err(|_| MsError::invalid(format!("BLAS path {path:?} contains a NUL byte")))?;
    // SAFETY: dlopen/dlsym with valid C strings; the handle is never closed, so the function
    // pointers stay valid for the life of the process.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(MsError::invalid(format!(
            "cannot load a BLAS library from {path}"
        )));
    }
    use_sequential_mkl(handle);
    for (name, ilp64) in SYMBOLS {
        let c_name = CString::new(name).expect("static symbol name");
        let sym: *mut c_void = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
        if sym.is_null() {
            continue;
        }
        // SAFETY: the symbol is cblas_sgemm with the integer width its name implies.
        let sgemm = unsafe {
            if ilp64 {
                Sgemm::Ilp64(std::mem::transmute::<*mut c_void, SgemmIlp64>(sym))
            } else {
                Sgemm::Lp64(std::mem::transmute::<*mut c_void, SgemmLp64>(sym))
            }
        };
        let set_threads_local = THREADS_LOCAL_SYMBOLS.iter().find_map(|name| {
            let c_name = CString::new(*name).expect("static symbol name");
            let sym: *mut c_void = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
            // SAFETY: both symbols are `int f(int)`.
            (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, IntSetter>(sym) })
        });
        let blas = BLAS.get_or_init(|| Blas {
            path: path.to_string(),
            sgemm,
            set_threads_local,
        });
        return Ok(blas.path.clone());
    }
    Err(MsError::invalid(format!(
        "{path} has no cblas_sgemm (looked for {})",
        SYMBOLS.map(|s| s.0).join(", ")
    )))
}

/// MKL's `MKL_THREADING_SEQUENTIAL`.
const MKL_THREADING_SEQUENTIAL: i32 = 1;

/// If the library is MKL's `libmkl_rt`, select its sequential layer before the first call:
/// every product runs single-threaded on a rayon worker anyway (see [`sgemm_xwt_ptr`]), and
/// the sequential layer loads no OpenMP runtime (Intel's `libiomp5` beside torch's or
/// numpy's would be a second thread pool in the process). A no-op for other libraries, and
/// for an MKL that has already run (it keeps the layer it started with).
fn use_sequential_mkl(handle: *mut c_void) {
    let name = CString::new("MKL_Set_Threading_Layer").expect("static symbol name");
    // SAFETY: dlsym on a live handle; the symbol, when present, is `int f(int)`.
    unsafe {
        let sym = libc::dlsym(handle, name.as_ptr());
        if !sym.is_null() {
            let set_layer = std::mem::transmute::<*mut c_void, IntSetter>(sym);
            set_layer(MKL_THREADING_SEQUENTIAL);
        }
    }
}

/// The path of the BLAS library in use, if any.
pub fn active() -> Option<String> {
    BLAS.get().map(|b| b.path.clone())
}

pub fn is_loaded() -> bool {
    BLAS.get().is_some()
}

/// `x [m, k] @ w^T (+ bias)` for row-major `x`, `w [n, k]` and `bias [n]`, as a fresh
/// row-major `[m, n]` `Vec`, if a BLAS is loaded and takes the product (see
/// [`sgemm_xwt_into`]).
///
/// The bias costs no pass of its own: each block of the output starts as copies of the bias
/// row and the product is accumulated onto it (beta = 1), where beta = 0 would have zeroed
/// the block first (OpenBLAS's beta step) and a separate add would have read and written it
/// again.
pub fn sgemm_xwt(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Option<Vec<f32>> {
    if bias.is_some_and(|b| b.len() != n) {
        return None;
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: `out` has room for [m, n]; on success every element was written (beta = 0
    // writes C without reading it, as OpenBLAS zero-fills in its beta step; with a bias,
    // every block is filled with it before the product reads it).
    unsafe {
        if !sgemm_xwt_ptr(x, w, bias, m, n, k, out.as_mut_ptr()) {
            return None;
        }
        out.set_len(m * n);
    }
    Some(out)
}

/// `out [m, n] = x [m, k] @ w^T` for row-major `x` and `w [n, k]`; false (nothing written)
/// if no BLAS is loaded, the product is too small for it (see below) or the sizes do not fit
/// its integers.
pub fn sgemm_xwt_into(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, out: &mut [f32]) -> bool {
    // SAFETY: `out` is an exclusive [m, n] block.
    out.len() == m * n && unsafe { sgemm_xwt_ptr(x, w, None, m, n, k, out.as_mut_ptr()) }
}

/// With OpenBLAS, the rows are split across the rayon pool and each worker multiplies its
/// block single-threaded: OpenBLAS's own worker threads spin after every call (12 % of a
/// forward's samples in `blas_thread_server`), stealing the cores from the rayon kernels
/// that run between the matrix products; split this way, capture went from 452-481 to
/// 513-569 tokens/s (32 x 64). Products of fewer rows than 16 per worker return false
/// (the caller's gemm path): one-token steps of generation stream the weights, where gemm's
/// weights-first product on every core is the faster choice.
///
/// # Safety
/// `out` must point to room for `[m, n]` floats that nothing else accesses during the call.
unsafe fn sgemm_xwt_ptr(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    out: *mut f32,
) -> bool {
    let Some(blas) = BLAS.get() else {
        return false;
    };
    if x.len() != m * k || w.len() != n * k || m == 0 || n == 0 || k == 0 {
        return false;
    }
    if bias.is_some_and(|b| b.len() != n) {
        return false;
    }
    let c = SendPtr(out);
    let threads = rayon::current_num_threads();
    match blas.set_threads_local {
        // Few rows (token-by-token generation): the gemm path's weights-first product wins.
        Some(_) if m < MIN_ROWS_PER_THREAD * threads => false,
        // Always inside the rayon pool, even with one block, so that RAYON_NUM_THREADS holds.
        Some(set_local) => {
            // Split the longer side: rows of x for the block's projections, output columns
            // (rows of w) for the LM head, whose 49,152 x 576 weight each worker would
            // otherwise stream in full.
            let by_rows = m >= n;
            let len = if by_rows { m } else { n };
            let block = len.div_ceil(threads);
            (0..threads)
                .into_par_iter()
                .map(|t| {
                    let (a, b) = (t * block, ((t + 1) * block).min(len));
                    if a >= b {
                        return true;
                    }
                    SINGLE_THREADED.with(|done| {
                        if !done.get() {
                            // SAFETY: sets OpenBLAS's thread count for this thread only.
                            unsafe { set_local(1) };
                            done.set(true);
                        }
                    });
                    // SAFETY: each task writes a disjoint block (rows a..b, or columns a..b
                    // with the full row stride n) of the caller's [m, n] block.
                    unsafe {
                        if by_rows {
                            let xs = &x[a * k..b * k];
                            sgemm_raw(blas, xs, w, bias, c.at(a * n), b - a, n, k, n)
                        } else {
                            let ws = &w[a * k..b * k];
                            let bs = bias.map(|bs| &bs[a..b]);
                            sgemm_raw(blas, x, ws, bs, c.at(a), m, b - a, k, n)
                        }
                    }
                })
                .all(|ok| ok)
        }
        _ => unsafe { sgemm_raw(blas, x, w, bias, c.at(0), m, n, k, n) },
    }
}

/// Rows per rayon worker below which `linear` keeps the gemm path.
const MIN_ROWS_PER_THREAD: usize = 16;

thread_local! {
    /// Whether this thread already asked OpenBLAS for single-threaded calls.
    static SINGLE_THREADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A raw output pointer handed to the rayon workers (each writes its own rows).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `offset` floats on (a method, so closures capture the whole `SendPtr`).
    ///
    /// # Safety
    /// `offset` must stay inside the allocation.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// One `cblas_sgemm`: `c [m, n] = x [m, k] @ w^T (+ bias [n])`, rows of `c` `ldc` floats
/// apart; false (nothing written) if the sizes do not fit the library's integers.
///
/// # Safety
/// `c` must point to an `[m, n]` block (row stride `ldc`) that nothing else accesses during
/// the call.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_raw(
    blas: &Blas,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    c: *mut f32,
    m: usize,
    n: usize,
    k: usize,
    ldc: usize,
) -> bool {
    if let Sgemm::Lp64(_) = blas.sgemm {
        if [m, n, k, ldc].iter().any(|&v| i32::try_from(v).is_err()) {
            return false;
        }
    }
    let beta = match bias {
        Some(b) => {
            for row in 0..m {
                // SAFETY: row `row` of the caller's block: n floats at c + row * ldc.
                let dst = unsafe { std::slice::from_raw_parts_mut(c.add(row * ldc), n) };
                dst.copy_from_slice(&b[..n]);
            }
            1.0
        }
        None => 0.0,
    };
    match blas.sgemm {
        Sgemm::Ilp64(f) => f(
            ROW_MAJOR,
            NO_TRANS,
            TRANS,
            m as i64,
            n as i64,
            k as i64,
            1.0,
            x.as_ptr(),
            k as i64,
            w.as_ptr(),
            k as i64,
            beta,
            c,
            ldc as i64,
        ),
        Sgemm::Lp64(f) => {
            let (Ok(m32), Ok(n32), Ok(k32), Ok(ldc32)) = (
                i32::try_from(m),
                i32::try_from(n),
                i32::try_from(k),
                i32::try_from(ldc),
            ) else {
                return false;
            };
            f(
                ROW_MAJOR,
                NO_TRANS,
                TRANS,
                m32,
                n32,
                k32,
                1.0,
                x.as_ptr(),
                k32,
                w.as_ptr(),
                k32,
                beta,
                c,
                ldc32,
            )
        }
    }
    true
}
