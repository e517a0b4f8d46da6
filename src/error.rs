//! One error type for the whole core. Each variant maps to a typed Python exception
//! (see `python/mindscope/errors.py`), so bad input never surfaces as a panic.

use thiserror::Error;

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
