//! The Python extension module `mindscope._native`.
//!
//! Each submodule binds one area of the core; this file only wires them together.
//! Rules for every binding: compute without the GIL through `interruptible` (Ctrl-C stops it, a
//! panic becomes `InternalError`; `interruptible_reporting` also passes progress to a Python
//! callable), return numpy
//! arrays that take ownership of Rust buffers (no copy), and turn every `MsError` into the typed
//! exception of `mindscope.errors` via `to_py_err`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use crate::error::MsError;
use crate::interrupt::Cancel;
use crate::progress::Progress;

pub mod analysis;
pub mod convert;
pub mod model;
pub mod patching;
pub mod plot;
pub mod requests;
pub mod storage;

/// Convert a core error into the matching `mindscope.errors` exception (a user callback's
/// own exception is re-raised as itself).
pub fn to_py_err(err: MsError) -> PyErr {
    Python::attach(|py| {
        if let MsError::Callback { payload, .. } = &err {
            if let Some(e) = payload.0.downcast_ref::<PyErr>() {
                return e.clone_ref(py);
            }
        }
        if let MsError::Interrupted = err {
            return pyo3::exceptions::PyKeyboardInterrupt::new_err(());
        }
        let class = py
            .import("mindscope.errors")
            .and_then(|m| m.getattr(err.python_class()));
        match class {
            Ok(cls) => match cls.call1((err.to_string(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(e) => e,
            },
            Err(e) => e,
        }
    })
}

/// `?`-friendly conversion for binding code.
pub trait IntoPyResult<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for crate::error::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py_err)
    }
}

/// What a caught panic said.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => s.to_string(),
            Err(_) => "a panic without a message".into(),
        },
    }
}

/// Run a binding's body, turning a panic into `mindscope.errors.InternalError` (an
/// `Exception`, unlike pyo3's `PanicException`), so that no panic reaches Python as such.
pub fn guarded<T>(body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(p) => Err(to_py_err(MsError::Internal(panic_message(p)))),
    }
}

/// Whether any of `interventions` calls a Python function.
pub fn calls_python(interventions: &[crate::hooks::Intervention]) -> bool {
    interventions
        .iter()
        .any(|iv| matches!(iv.action, crate::hooks::Action::Custom(_)))
}

/// `work` on this thread attached to Python once for its whole length (and detached while it
/// runs) when `python_hooks`. Each Python hook function then takes the GIL on a thread state
/// that already exists; without it every call creates and destroys one, and with it the
/// thread state's frame stack (an mmap, page faults and an munmap, per hooked site and step).
pub fn keeping_python_thread<T: Send>(python_hooks: bool, work: impl FnOnce() -> T + Send) -> T {
    if python_hooks {
        Python::attach(|py| py.detach(work))
    } else {
        work()
    }
}

/// How often the waiting thread looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Run `work` without the GIL on a worker thread while the calling thread waits for it and
/// checks for signals (Python runs signal handlers only on the main thread, between
/// bytecodes or when native code asks). On Ctrl-C the token fires, `work` stops at its next
/// check and the `KeyboardInterrupt` is raised here; a panic becomes `InternalError`.
pub fn interruptible<T: Send>(
    py: Python<'_>,
    work: impl FnOnce(&Cancel) -> crate::Result<T> + Send,
) -> PyResult<T> {
    interruptible_with(py, &Cancel::new(), work)
}

/// [`interruptible`] with a token made beforehand (when the work's inputs hold it).
pub fn interruptible_with<T: Send>(
    py: Python<'_>,
    cancel: &Cancel,
    work: impl FnOnce(&Cancel) -> crate::Result<T> + Send,
) -> PyResult<T> {
    interruptible_reporting(py, cancel, None, work)
}

/// [`interruptible_with`] that also passes the work's progress to `callback` (a Python
/// callable taking `(done, total)`, or None for no reports).
///
/// The core counts every batch into the token's [`Progress`]; the waiting thread hands the
/// newest count to `callback` when it changed, at most once per poll (50 ms) and once when
/// the work ends, holding the GIL only for the call. If `callback` raises (e.g.
/// `KeyboardInterrupt`), the work is cancelled and the exception re-raised here.
pub fn interruptible_reporting<T: Send>(
    py: Python<'_>,
    cancel: &Cancel,
    callback: Option<&Bound<'_, PyAny>>,
    work: impl FnOnce(&Cancel) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let callback: Option<Py<PyAny>> = callback
        .filter(|c| !c.is_none())
        .map(|c| c.clone().unbind());
    let latest: Arc<Mutex<Option<(u64, u64)>>> = Arc::default();
    let token = match &callback {
        Some(_) => {
            let latest = latest.clone();
            let sink = move |done, total| {
                *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some((done, total));
            };
            cancel.clone().with_progress(Progress::new(sink))
        }
        None => cancel.clone(),
    };
    // The first exception seen while waiting: a signal's or the callback's.
    let mut raised: Option<PyErr> = None;
    let report = |raised: &mut Option<PyErr>| {
        let (Some(cb), None) = (&callback, &raised) else {
            return;
        };
        let Some((done, total)) = latest.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        if let Err(e) = Python::attach(|py| cb.call1(py, (done, total)).map(drop)) {
            token.fire();
            *raised = Some(e);
        }
    };
    let outcome = py.detach(|| {
        std::thread::scope(|scope| {
            let (tx, rx) = channel();
            let worker_token = &token;
            scope.spawn(move || {
                // On a pool worker: see `per_core::in_pool`.
                let run = || crate::kernels::per_core::in_pool(|| work(worker_token));
                let _ = tx.send(catch_unwind(AssertUnwindSafe(run)));
            });
            loop {
                match rx.recv_timeout(SIGNAL_POLL) {
                    Ok(done) => {
                        report(&mut raised);
                        return done;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        report(&mut raised);
                        if raised.is_none() {
                            if let Err(e) = Python::attach(|py| py.check_signals()) {
                                token.fire();
                                raised = Some(e);
                            }
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Ok(Err(MsError::Internal("the worker thread vanished".into())))
                    }
                }
            }
        })
    });
    if let Some(e) = raised {
        return Err(e);
    }
    match outcome {
        Ok(result) => result.map_err(to_py_err),
        Err(p) => Err(to_py_err(MsError::Internal(panic_message(p)))),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    model::register(m)?;
    analysis::register(m)?;
    plot::register(m)?;
    storage::register(m)?;
    Ok(())
}
