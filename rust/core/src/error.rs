//! The one error type of the core.
//!
//! Whole-call failures (a model that will not load, a bad spec, a batch of the wrong shape) are
//! [`Error`]s. A bad *row* is never an `Error`: it becomes the row's `error` column and the rest
//! of the batch is still scored (see [`crate::run`]).

use std::path::PathBuf;

/// Everything that can make a whole call fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model file does not exist or cannot be read.
    #[error("model file {path}: {reason}")]
    ModelNotFound { path: PathBuf, reason: String },

    /// libtorch refused the model file (not TorchScript or an AOTInductor package, truncated,
    /// wrong version, compiled for another device...); `format` is what it was read as.
    #[error("cannot load {format} {path}: {reason}")]
    ModelLoad {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },

    /// The model file's sha256 is not the pinned one.
    #[error("model file {path}: sha256 is {actual}, but {expected} was pinned")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// The spec JSON is missing, unreadable, malformed, or contradicts itself.
    #[error("model spec {path}: {reason}")]
    Spec { path: PathBuf, reason: String },

    /// A caller's option is out of range or unknown (`field` names it).
    #[error("invalid option `{field}`: {reason}")]
    Config { field: String, reason: String },

    /// The requested device cannot be used.
    #[error("device `{device}`: {reason}")]
    Device { device: String, reason: String },

    /// The batch as a whole cannot be scored (wrong column count or type).
    #[error("input batch: {reason}")]
    Input { reason: String },

    /// The forward pass (or the featurize method) failed.
    #[error("model {path}: inference failed: {reason}")]
    Inference { path: PathBuf, reason: String },

    /// A bug or a panic caught at the boundary.
    #[error("internal error: {reason}")]
    Internal { reason: String },

    /// An FFI handle (`what`: "model" or "pending") that is not open: closed, collected,
    /// discarded, or never given out. A config error for the caller.
    #[error("{what} handle {id} is not open: {reason}")]
    Handle {
        what: &'static str,
        id: u64,
        reason: String,
    },
}

impl Error {
    /// A stable, machine-readable category used by the FFI layers to pick an exception class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ModelNotFound { .. } | Error::ModelLoad { .. } | Error::Checksum { .. } => {
                ErrorKind::ModelLoad
            }
            Error::Spec { .. } => ErrorKind::Spec,
            Error::Config { .. } | Error::Handle { .. } => ErrorKind::Config,
            Error::Device { .. } => ErrorKind::Device,
            Error::Input { .. } => ErrorKind::Input,
            Error::Inference { .. } => ErrorKind::Inference,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn config(field: &str, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn input(reason: impl Into<String>) -> Self {
        Error::Input {
            reason: reason.into(),
        }
    }
}

/// Error categories, numbered for the C ABI (the numbers are part of the ABI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorKind {
    /// Model missing, unreadable, not a loadable model, or checksum mismatch.
    ModelLoad = 1,
    /// The model spec JSON is wrong.
    Spec = 2,
    /// A caller option is wrong.
    Config = 3,
    /// The device is not available.
    Device = 4,
    /// The batch cannot be scored as a whole.
    Input = 5,
    /// libtorch failed during the forward pass.
    Inference = 6,
    /// A panic or a bug.
    Internal = 7,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
