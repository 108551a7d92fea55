//! The engine's sizing as the caller gives it ([`EngineConfig`], `"engine": {...}` of a
//! [`crate::ModelConfig`]): plain data below both `model` (whose config carries it) and
//! `engine` (which reads it), so that neither imports the other for it. Re-exported as
//! `engine::{EngineConfig, EngineMode}` and at the crate root.

use serde::{Deserialize, Serialize};

/// `shared`: forward passes run on the engine's workers (batched across tasks, overlapping the
/// caller's decoding). `per-task`: each call runs its forward pass on the caller's thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineMode {
    #[default]
    Shared,
    PerTask,
}

/// How the engine is sized; travels in [`crate::ModelConfig`] as `"engine": {...}`. Every
/// count of 0 means "auto". Workers x threads per worker never exceed `cores`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub mode: EngineMode,
    /// The executor's cores (`spark.executor.cores`, N of `local[N]`); 0 = this host's.
    pub cores: usize,
    /// Forward workers; 0 = auto: `max(1, cores / task_cpus)` on CPU, 1 per GPU.
    pub workers: usize,
    /// Intra-op threads of each worker's passes; 0 = auto: `max(1, cores / workers)`.
    pub threads_per_worker: usize,
    /// `spark.task.cpus`: each task's decoding threads; 0 = 1.
    pub task_cpus: usize,
    /// How long a worker waits for a fuller batch when more than one task is active, in
    /// microseconds.
    pub max_wait_us: u64,
    /// Bound on queued rows; 0 = 4 x the largest batch submitted.
    pub queue_rows: usize,
    /// Bound on queued input bytes (native memory); 0 = 256 MiB.
    pub queue_bytes: usize,
    /// Bound on every wait (for queue space, for a result), in milliseconds.
    pub timeout_ms: u64,
    /// Test hook: each forward pass sleeps this long first (kill and merge tests).
    pub debug_delay_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            mode: EngineMode::Shared,
            cores: 0,
            workers: 0,
            threads_per_worker: 0,
            task_cpus: 0,
            max_wait_us: 2_000,
            queue_rows: 0,
            queue_bytes: 0,
            timeout_ms: 600_000,
            debug_delay_ms: 0,
        }
    }
}
