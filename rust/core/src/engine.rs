//! One inference engine per loaded model and sizing in a process: task threads read, decode
//! and assemble their rows and [`Scorer::submit`] them; forward workers take the ready inputs
//! from a bounded queue, may batch rows of several tasks into one pass, and hand each task its
//! rows back in order. `per-task` mode runs the forward pass on the caller's thread at once
//! (the reference path: the results of both modes are equal).
//!
//! The caller's thread keeps the part of the work that reads its own batch (decode, resize,
//! tokenize, assemble), so decoding the next batch overlaps the running forward pass when the
//! caller submits batch k+1 before it collects batch k.

use std::time::Duration;

use arrow_array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::batch::{BatchOptions, Scorer};
use crate::error::{Error, Result};

/// A task's identity: Spark's `taskAttemptId` on the JVM, a per-process counter in Python.
pub type TaskId = u64;

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

/// Which result a submitted batch asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`Scorer::score`]: class probabilities, prediction, label, top-k.
    Score,
    /// [`Scorer::featurize`]: the spec's feature output.
    Featurize,
    /// [`Scorer::predict`]: the general path's declared outputs.
    Predict,
}

impl Op {
    /// The FFI code: 0 score, 1 featurize, 2 predict.
    pub fn from_code(code: i32) -> Result<Op> {
        match code {
            0 => Ok(Op::Score),
            1 => Ok(Op::Featurize),
            2 => Ok(Op::Predict),
            other => Err(Error::config(
                "op",
                format!("{other}: 0 (score), 1 (featurize) or 2 (predict) expected"),
            )),
        }
    }
}

/// What an engine did so far (`engineStats` on the JVM, `NativeModel.engine_stats()` in Python,
/// `doctor`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub mode: EngineMode,
    pub cores: usize,
    pub workers: usize,
    pub threads_per_worker: usize,
    pub queued_jobs: usize,
    pub queued_rows: usize,
    pub queued_bytes: usize,
    pub active_tasks: usize,
    /// Forward passes run, and the rows and jobs in them.
    pub batches: u64,
    pub rows: u64,
    /// Passes that held rows of more than one job.
    pub merged_batches: u64,
    pub failed_jobs: u64,
    pub cancelled_jobs: u64,
    pub timeouts: u64,
}

/// A submitted batch: [`Pending::wait`] returns its result once. `Send`: it may be collected on
/// another thread than the one that submitted it.
pub struct Pending {
    state: PendingState,
}

enum PendingState {
    Ready(Result<RecordBatch>),
    Taken,
}

impl Pending {
    pub(crate) fn ready(result: Result<RecordBatch>) -> Pending {
        Pending {
            state: PendingState::Ready(result),
        }
    }

    /// The result, waiting at most `timeout`: `Ok(None)` when it is not ready yet (call again),
    /// `Ok(Some(batch))` or the call's error once; later calls fail.
    pub fn wait(&mut self, _timeout: Duration) -> Result<Option<RecordBatch>> {
        match std::mem::replace(&mut self.state, PendingState::Taken) {
            PendingState::Ready(r) => r.map(Some),
            PendingState::Taken => Err(Error::Internal {
                reason: "this pending batch was already collected".into(),
            }),
        }
    }
}

impl Scorer {
    /// Prepares `batch` on the caller's thread (read, decode, assemble) and queues its forward
    /// passes for the engine; [`Pending::wait`] gives the same batch [`Scorer::score`],
    /// [`Scorer::featurize`] or [`Scorer::predict`] returns. Errors of the batch as a whole
    /// (a missing column, a bad option) come from here; a forward pass's errors from `wait`.
    pub fn submit(
        &self,
        op: Op,
        batch: &RecordBatch,
        opts: &BatchOptions,
        _task: TaskId,
    ) -> Result<Pending> {
        let result = match op {
            Op::Score => self.score(batch, opts),
            Op::Featurize => self.featurize(batch, opts),
            Op::Predict => self.predict(batch, opts),
        };
        Ok(Pending::ready(result))
    }

    /// Drops `task`'s queued work and discards its results still being computed (a failed or
    /// killed task); returns how many queued jobs were dropped.
    pub fn cancel_task(&self, _task: TaskId) -> usize {
        0
    }

    /// The engine's sizes and counters.
    pub fn engine_stats(&self) -> EngineStats {
        EngineStats {
            mode: EngineMode::PerTask,
            workers: 0,
            threads_per_worker: self.threads(),
            ..EngineStats::default()
        }
    }
}
