//! torchspark-core: TorchScript and AOTInductor inference over Arrow batches.
//!
//! This crate knows nothing of JNI or Python; the `torchspark` cdylib wraps it for both.
//!
//! Floors, bottom up: a module imports only modules on its own floor's left or on lower
//! floors (`tools/check_import_circles.py`, run by `make lint`, fails on any circle).
//!
//! 1. [`error`] (the one error type), [`config`] (the engine's sizing, carried by
//!    [`ModelConfig`]), [`host`] (host name, CPU flags), [`limits`] (memory bounds of rows and
//!    chunks): import nothing of the crate.
//! 2. [`lifecycle`] (the gate around torch code; exit, fork, unload): imports `error` only; the
//!    engine registers its exit/fork hooks with it ([`lifecycle`]'s `EngineHooks`).
//! 3. [`spec`] (the JSON model spec: version 1 lowered to 2, presets), then `sys` (thread
//!    pools, interop set-up; uses `lifecycle`), then [`value`] (what a model returns; uses
//!    `spec`).
//! 4. [`input`] (one reader per declared input: tensor, text, image with its own folder:
//!    decode, completeness checks, Pillow's resize), [`output`] (one writer per output,
//!    class writers included).
//! 5. [`model`] (the registry, `Model::forward`, the backends; uses `input` for tokenizers).
//! 6. [`engine`] (queue, workers, merged passes; uses `model`, `lifecycle`, `config`).
//! 7. [`run`] (the caller's handle [`Scorer`]: open, submit, wait, cancel, stats, describe,
//!    presets; reads inputs, submits jobs, writes outputs).
//!
//! `batch`, `plan` and `preprocess` are the old paths of items now in [`run`] and
//! [`input`], re-exported here so every public name keeps working.

pub mod config;
pub mod engine;
pub mod error;
pub mod host;
pub mod input;
pub mod lifecycle;
pub mod limits;
pub mod model;
pub mod output;
pub mod run;
pub mod spec;
mod sys;
pub mod value;

pub use engine::{EngineConfig, EngineMode, EngineStats, Op, TaskId};
pub use error::{Error, ErrorKind, Result};
pub use model::{Format, ModelConfig, Precision, load_count};
pub use run::{BatchOptions, Pending, Scorer, StageTimes};
pub use spec::{
    CpuSpec, DEFAULT_MAX_PIXELS, ExifOrientation, FilePrecision, GeneralSpec, ModelSpec, Resize,
    Spec,
};

/// The old path of the handle's types (now in [`run`]), kept for callers that name it.
pub mod batch {
    pub use crate::run::{BatchOptions, Scorer, StageTimes};
}

/// The old path of the image preprocessor (now [`input::image::preprocess`]).
pub mod preprocess {
    pub use crate::input::image::preprocess::*;
}

/// The old path of the general path's public items (now [`run::plan`]).
pub mod plan {
    pub use crate::run::plan::{INPUTS_KEY, TRUNCATED_ROWS_KEY, output_schema};
}
