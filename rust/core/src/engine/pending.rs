//! What `Scorer::submit` returns, and the `Scorer` side of the engine.
//!
//! A call runs in three steps: PREPARE on the caller's thread (read the rows, decode or
//! tokenize, assemble each chunk of good rows into a [`Job`](super::Job)), SUBMIT each job to
//! the engine, FINISH in [`Pending::wait`] (the output columns, the error column, the input
//! order, the metadata). `score`, `featurize` and `predict` are `submit` + `wait`: one path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;

use super::{EngineStats, Op, TaskId};
use crate::batch::{BatchOptions, ImagePending, Scorer};
use crate::error::{Error, Result};
use crate::model::Target;
use crate::plan::GeneralPending;
use crate::spec::general::{DType, InputKind};

/// A submitted batch: [`Pending::wait`] returns its result once. `Send` and `'static`: it owns
/// its row errors, masks, output writers and tickets, and may be collected on another thread
/// than the one that submitted it.
pub struct Pending {
    state: PendingState,
}

// The FFI layers box a Pending and may collect it on another thread.
const _: fn() = || {
    fn send_static<T: Send + 'static>() {}
    send_static::<Pending>();
};

enum PendingState {
    Images(Box<ImagePending>),
    General(Box<GeneralPending>),
    Taken,
}

impl Pending {
    /// The result, waiting at most `timeout`: `Ok(None)` when it is not ready yet (call again),
    /// `Ok(Some(batch))` or the call's error once; later calls fail.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<RecordBatch>> {
        // Output writers read tensors: inside the gate (the ticket waits step outside it).
        let _inside = crate::lifecycle::try_enter()?;
        let polled = match &mut self.state {
            PendingState::Images(p) => p.poll(timeout),
            PendingState::General(p) => p.poll(timeout),
            PendingState::Taken => {
                return Err(Error::Internal {
                    reason: "this pending batch was already collected".into(),
                });
            }
        };
        if !matches!(polled, Ok(None)) {
            self.state = PendingState::Taken;
        }
        polled
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Its chunks hold tensors (masks) and tickets: freed inside the gate.
        let state = std::mem::replace(&mut self.state, PendingState::Taken);
        let _inside = crate::lifecycle::enter();
        drop(state);
    }
}

/// Task ids of synchronous calls (`score`, `featurize`, `predict`): one per call, above the
/// range of Spark's attempt ids and Python's counters so that they never meet a real task.
static NEXT_CALL: AtomicU64 = AtomicU64::new(1 << 63);

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
        task: TaskId,
    ) -> Result<Pending> {
        // PREPARE builds tensors on this thread: inside the gate.
        let _inside = crate::lifecycle::try_enter()?;
        // The options' selection wins over the op code's preset.
        let op = if opts.preset.is_some() || opts.outputs.is_some() {
            Op::Predict
        } else {
            op
        };
        let state = match op {
            Op::Score => PendingState::Images(Box::new(self.submit_images(
                batch,
                opts,
                Target::Probabilities,
                task,
            )?)),
            Op::Featurize => {
                self.check_featurize()?;
                PendingState::Images(Box::new(self.submit_images(
                    batch,
                    opts,
                    Target::Features,
                    task,
                )?))
            }
            Op::Predict => PendingState::General(Box::new(self.submit_general(
                batch,
                opts,
                opts.preset.as_deref().unwrap_or(match op {
                    Op::Score => "score",
                    Op::Featurize => "featurize",
                    Op::Predict => "predict",
                }),
                task,
            )?)),
        };
        Ok(Pending { state })
    }

    /// `submit` + `wait` (bounded by `engine.timeout_ms`): the synchronous calls.
    pub(crate) fn call(
        &self,
        op: Op,
        batch: &RecordBatch,
        opts: &BatchOptions,
    ) -> Result<RecordBatch> {
        let task = NEXT_CALL.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.submit(op, batch, opts, task)?;
        let deadline = Instant::now() + self.timeout();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(out) = pending.wait(left)? {
                return Ok(out);
            }
            if left.is_zero() {
                self.cancel_task(task);
                return Err(Error::Inference {
                    path: self.model().path().to_path_buf(),
                    reason: format!(
                        "no result within {} ms (engine timeout_ms); engine: {}",
                        self.timeout().as_millis(),
                        serde_json::to_string(&self.engine_stats()).unwrap_or_default()
                    ),
                });
            }
        }
    }

    /// Drops `task`'s queued work and discards its results still being computed (a failed or
    /// killed task); returns how many queued jobs were dropped.
    pub fn cancel_task(&self, task: TaskId) -> usize {
        self.engine().cancel(task)
    }

    /// The engine's sizes and counters.
    pub fn engine_stats(&self) -> EngineStats {
        self.engine().stats()
    }

    /// The rows per forward pass a caller should send when its batch size is "auto" (0), from
    /// the model's input size (docs/engine.md has the rule and its measurements):
    /// - image specs: `clamp(prev_power_of_two(4 MiB / (row_len x 4 bytes)), 16, 1024)`
    ///   (ResNet-20's 32x32 → 256, a 224x224 model → 16);
    /// - general specs with a text input: 64;
    /// - other general specs: the bytes of a row from the fixed input shapes and dtypes,
    ///   `clamp(prev_power_of_two(4 MiB / bytes), 16, 8192)` (a 10-feature MLP → 8192); 64
    ///   when an input has a variable dimension (`ragged`), whose size the spec cannot tell.
    pub fn auto_batch_size(&self) -> usize {
        const TARGET_BYTES: usize = 4 << 20;
        let rows = |bytes: usize, max: usize| {
            let fit = TARGET_BYTES / bytes.max(1);
            let pow2 = if fit == 0 { 1 } else { 1 << fit.ilog2() };
            pow2.clamp(16, max)
        };
        let model = self.model();
        if let Ok(pre) = model.preprocessor() {
            return rows(pre.row_len() * std::mem::size_of::<f32>(), 1024);
        }
        let spec = model.general();
        if spec
            .inputs
            .iter()
            .any(|d| d.kind == InputKind::Text || d.ragged.is_some())
        {
            return 64;
        }
        let bytes: usize = spec
            .inputs
            .iter()
            .filter(|d| d.kind != InputKind::TypeIds && d.kind != InputKind::Mask)
            .map(|d| {
                let elems: usize = d.shape.iter().map(|&s| s.max(1) as usize).product();
                elems * dtype_bytes(d.dtype)
            })
            .sum();
        rows(bytes, 8192)
    }
}

/// Bytes of one element of `dtype`.
fn dtype_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Float64 | DType::Int64 => 8,
        DType::Float32 | DType::Int32 => 4,
        DType::Uint8 | DType::Bool => 1,
    }
}
