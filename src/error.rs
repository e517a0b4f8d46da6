//! One error type for the whole core. Each variant maps to a typed Python exception
//! (see `python/mindscope/errors.py`), so bad input never surfaces as a panic.

use std::any::Any;
use std::sync::Arc;

use thiserror::Error;

/// What a user callback raised, carried through the core untouched so that the bindings can
/// re-raise it as itself (a Python exception keeps its type, traceback and cause).
#[derive(Clone)]
pub struct CallbackPayload(pub Arc<dyn Any + Send + Sync>);

impl std::fmt::Debug for CallbackPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackPayload")
    }
}

#[derive(Debug, Error)]
pub enum MsError {
    /// An argument has a wrong value (empty prompt list, out-of-range index, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// An array has the wrong shape or length.
    #[error("{0}")]
    Shape(String),
    /// A hook name that the model does not have.
    #[error("{0}")]
    UnknownHook(String),
    /// A model file that cannot be read (not GGUF, truncated, missing tensor, ...).
    #[error("{0}")]
    ModelFormat(String),
    /// A model architecture mindscope does not implement.
    #[error("{0}")]
    UnsupportedArchitecture(String),
    /// An estimator used before `fit`.
    #[error("{0}")]
    NotFitted(String),
    /// Input data that is unusable (NaN/inf features, a single class, ...).
    #[error("{0}")]
    Data(String),
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A numerical backend failed (candle, linear algebra); a bug or an exotic input.
    #[error("{0}")]
    Compute(String),
    /// A request would need more memory than is available; the message says how to ask for less.
    #[error("{0}")]
    Resource(String),
    /// The caller asked to stop (Ctrl-C): the computation ended early, its partial results
    /// dropped.
    #[error("interrupted")]
    Interrupted,
    /// A bug: a panic caught at the boundary, with what it said.
    #[error("internal error: {0}. This is a bug in mindscope; please report it with the call that caused it")]
    Internal(String),
    /// A user callback (a Python hook function) raised.
    #[error("{message}")]
    Callback {
        message: String,
        payload: CallbackPayload,
    },
}

pub type Result<T> = std::result::Result<T, MsError>;

impl MsError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        MsError::InvalidArgument(msg.into())
    }
    pub fn shape(msg: impl Into<String>) -> Self {
        MsError::Shape(msg.into())
    }
    pub fn data(msg: impl Into<String>) -> Self {
        MsError::Data(msg.into())
    }
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        MsError::Io {
            context: context.into(),
            source,
        }
    }
    /// The same error with `what: ` in front of its message (e.g. which layer of a sweep).
    pub fn context(self, what: &str) -> Self {
        match self {
            MsError::InvalidArgument(m) => MsError::InvalidArgument(format!("{what}: {m}")),
            MsError::Shape(m) => MsError::Shape(format!("{what}: {m}")),
            MsError::UnknownHook(m) => MsError::UnknownHook(format!("{what}: {m}")),
            MsError::ModelFormat(m) => MsError::ModelFormat(format!("{what}: {m}")),
            MsError::UnsupportedArchitecture(m) => {
                MsError::UnsupportedArchitecture(format!("{what}: {m}"))
            }
            MsError::NotFitted(m) => MsError::NotFitted(format!("{what}: {m}")),
            MsError::Data(m) => MsError::Data(format!("{what}: {m}")),
            MsError::Io { context, source } => MsError::Io {
                context: format!("{what}: {context}"),
                source,
            },
            MsError::Compute(m) => MsError::Compute(format!("{what}: {m}")),
            MsError::Resource(m) => MsError::Resource(format!("{what}: {m}")),
            // The user's own exception goes back unchanged.
            MsError::Callback { message, payload } => MsError::Callback { message, payload },
            MsError::Interrupted => MsError::Interrupted,
            MsError::Internal(m) => MsError::Internal(format!("{what}: {m}")),
        }
    }

    /// Name of the Python exception class in `mindscope.errors` this error becomes.
    pub fn python_class(&self) -> &'static str {
        match self {
            MsError::InvalidArgument(_) => "InvalidArgumentError",
            MsError::Shape(_) => "ShapeError",
            MsError::UnknownHook(_) => "UnknownHookError",
            MsError::ModelFormat(_) => "ModelFormatError",
            MsError::UnsupportedArchitecture(_) => "UnsupportedArchitectureError",
            MsError::NotFitted(_) => "NotFittedError",
            MsError::Data(_) => "DataError",
            MsError::Io { .. } => "StorageError",
            MsError::Compute(_) => "ComputeError",
            MsError::Resource(_) => "ResourceError",
            MsError::Callback { .. } => "InvalidArgumentError",
            MsError::Interrupted => "KeyboardInterrupt",
            MsError::Internal(_) => "InternalError",
        }
    }
}

impl From<candle_core::Error> for MsError {
    fn from(e: candle_core::Error) -> Self {
        // candle appends a backtrace to some errors; the first line is the message.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or_default();
        MsError::Compute(format!("tensor computation failed: {first}"))
    }
}
