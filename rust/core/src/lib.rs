//! torchspark-core: TorchScript and AOTInductor scoring and featurizing over Arrow batches.
//!
//! This crate knows nothing of JNI or Python; the `torchspark` cdylib wraps it for both.
//!
//! - [`model`]: the process-wide registry (one model per file, device and precision).
//! - [`spec`]: the JSON model spec beside each `.pt` / `.pt2` (version 1: images; 2: any tensors).
//! - [`plan`]: the general path (`Scorer::predict`): [`input`] readers → `forward` → [`output`]
//!   writers, over the [`value`] tree a model returns.
//! - [`preprocess`]: decode, resize, crop, normalize into CHW floats (rayon over rows).
//! - [`engine`]: one forward-pass scheduler per model and sizing (batches across tasks).
//! - [`lifecycle`]: exit, fork and unload with passes in flight (the gate around torch code).
//! - [`batch`]: Arrow `RecordBatch` in, scores or features out, bad rows marked, never dropped.
//! - [`error`]: the one error type.
//! - [`limits`]: the memory bounds of rows and chunks (row errors and splits, never an abort).
//! - [`host`]: this host's name and CPU flags (packages needing instructions it lacks are refused).

pub mod config;
pub mod engine;
pub mod error;
pub mod host;
pub mod input;
pub mod lifecycle;
pub mod limits;
pub mod model;
pub mod output;
pub mod preprocess;
pub mod run;
pub mod spec;
mod sys;
pub mod value;

pub use engine::{EngineConfig, EngineMode, EngineStats, Op, TaskId};
pub use run::{BatchOptions, Pending, Scorer, StageTimes};

/// The old path of the handle's types (now in [`run`]), kept for callers that name it.
pub mod batch {
    pub use crate::run::{BatchOptions, Scorer, StageTimes};
}

/// The old path of the general path's public items (now [`run::plan`]).
pub mod plan {
    pub use crate::run::plan::{INPUTS_KEY, TRUNCATED_ROWS_KEY, output_schema};
}
pub use error::{Error, ErrorKind, Result};
pub use model::{Format, ModelConfig, Precision, load_count};
pub use spec::{
    CpuSpec, DEFAULT_MAX_PIXELS, ExifOrientation, FilePrecision, GeneralSpec, ModelSpec, Resize,
    Spec,
};
