//! The caller's handle ([`Scorer`]): Arrow batch in, Arrow batch out, above the engine.
//! `open` and the per-call options and stage times here; `submit`/`wait`/`cancel`/stats in
//! [`pending`]; the general path that prepares jobs and writes outputs (and `describe`) in
//! [`plan`]. `score`, `featurize` and `predict` are presets of that one path.
//!
//! The batch's columns feed the spec's declared inputs (a version-1 spec's one image input
//! takes the only column, or `input_column`). The output has one row per input row, in order.
//! A row that cannot be read gets null outputs and a reason in `error` ("row 17: invalid PNG:
//! ..."), and the other rows are still scored; only a batch that cannot be read at all fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde::Deserialize;

use crate::engine::{Done, Engine, JobTimes, Op, Ticket};
use crate::error::{Error, Result};
use crate::limits::CallLimits;
use crate::model::{self, Model, ModelConfig};

pub mod pending;
pub mod plan;

pub use pending::Pending;

/// Per-call options (the FFI layers pass them as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchOptions {
    /// How many best classes go into `top_k`.
    pub top_k: usize,
    /// Rows per forward pass; 0 = auto ([`Scorer::auto_batch_size`]).
    pub batch_size: usize,
    /// Added to row numbers in error messages (the row's position in the partition).
    pub row_offset: u64,
    /// The image column, when the batch has more than one.
    pub input_column: Option<String>,
    /// A pixel limit for this call (width x height); 0 means the spec's
    /// `preprocess.max_pixels`, and the smaller of the two applies.
    pub max_pixels: u64,
    /// The general path ([`Scorer::predict`]): input name → the column(s) it reads, for
    /// inputs whose columns differ from the spec's.
    pub columns: HashMap<String, Vec<String>>,
    /// The general path with a text input: order the rows of this call longest first (in
    /// characters, as sentence-transformers' `encode` does) before cutting them into
    /// `batch_size` passes, so each pass pads little. Outputs and errors stay in input order.
    /// Default true. A padded (`ragged: "pad"`) tensor input's rows are ordered by their
    /// values the same way, when it has no text input.
    pub sort_by_length: bool,
    /// Values one row of one input may hold ([`crate::limits`]); 0 means the spec's
    /// `max_row_elements` (default 2^26), and the smaller of the two applies.
    pub max_row_elements: u64,
    /// Bytes of one forward pass's inputs (padding and masks included): a chunk is cut before
    /// it passes them, and a row that alone passes them is a row error. 0 means the engine's
    /// `queue_bytes` (default 256 MiB), and the smaller of the two applies.
    pub max_batch_bytes: u64,
    /// UTF-8 bytes of one text row; 0 means the spec's `max_text_bytes` (default 1 MiB), and
    /// the smaller of the two applies.
    pub max_text_bytes: u64,
    /// The outputs to compute, by preset name (`score`, `featurize`, `predict`, `embed`;
    /// [`crate::spec::preset`]); absent: the op code's (`submit`'s 0 score, 1 featurize,
    /// 2 predict).
    pub preset: Option<String>,
    /// The outputs to compute, by name, in this order (instead of a preset); they must come
    /// from one method.
    pub outputs: Option<Vec<String>>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            top_k: 5,
            batch_size: 64,
            row_offset: 0,
            input_column: None,
            max_pixels: 0,
            columns: HashMap::new(),
            sort_by_length: true,
            max_row_elements: 0,
            max_batch_bytes: 0,
            max_text_bytes: 0,
            preset: None,
            outputs: None,
        }
    }
}

impl BatchOptions {
    pub fn from_json(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_str(text).map_err(|e| Error::config("batch options", e.to_string()))
    }

    /// The per-row limits this call asks for (0: the spec's).
    pub fn limits(&self) -> CallLimits {
        CallLimits {
            max_pixels: self.max_pixels,
            max_row_elements: self.max_row_elements,
            max_text_bytes: self.max_text_bytes,
        }
    }
}

/// A model plus the caller's thread budget and the engine its forward passes go through:
/// what an FFI handle points to.
#[derive(Clone)]
pub struct Scorer {
    model: Arc<Model>,
    num_threads: usize,
    engine: Arc<Engine>,
    /// Bound on [`Scorer::score`]'s (and the others') wait for their results.
    timeout: Duration,
    /// The engine's `queue_bytes` bound: no chunk's inputs are larger ([`Scorer::batch_bytes`]).
    queue_bytes: usize,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("model", &self.model)
            .field("num_threads", &self.num_threads)
            .field("engine", &self.engine.stats())
            .finish()
    }
}

impl Scorer {
    /// Opens (or reuses) the process-wide model for `config`, and its engine for
    /// `config.engine`.
    pub fn open(config: &ModelConfig) -> Result<Scorer> {
        let num_threads = config.threads()?;
        let model = model::get_or_load(config)?;
        let engine = Engine::get(&model, &config.engine, num_threads)?;
        Ok(Scorer {
            model,
            num_threads,
            engine,
            timeout: Duration::from_millis(config.engine.timeout_ms),
            queue_bytes: match config.engine.queue_bytes {
                0 => crate::limits::DEFAULT_BATCH_BYTES,
                n => n,
            },
        })
    }

    /// The model shared with the engine (what a [`Pending`] keeps alive).
    pub(crate) fn model_arc(&self) -> &Arc<Model> {
        &self.model
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Bound on a synchronous call's wait for its forward passes (`engine.timeout_ms`).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Intra-op threads (and image decoding threads) this caller's passes use.
    pub fn threads(&self) -> usize {
        self.num_threads
    }

    /// Class probabilities, prediction, label and top-k for every row.
    pub fn score(&self, batch: &RecordBatch, opts: &BatchOptions) -> Result<RecordBatch> {
        self.call(Op::Score, batch, opts)
    }

    /// The spec's featurize output, flattened, for every row.
    pub fn featurize(&self, batch: &RecordBatch, opts: &BatchOptions) -> Result<RecordBatch> {
        self.call(Op::Featurize, batch, opts)
    }
}

impl Scorer {
    /// The most bytes one chunk's inputs may take in a call with `opts`: the engine's queue
    /// bound, lowered by `max_batch_bytes`.
    pub fn batch_bytes(&self, opts: &BatchOptions) -> usize {
        match usize::try_from(opts.max_batch_bytes) {
            Ok(0) | Err(_) => self.queue_bytes,
            Ok(n) => n.min(self.queue_bytes),
        }
    }

    /// The rows per forward pass of `opts`: its `batch_size`, or the auto size for 0.
    pub(crate) fn batch_rows(&self, opts: &BatchOptions) -> usize {
        match opts.batch_size {
            0 => self.auto_batch_size().max(1),
            n => n,
        }
    }
}

/// The reason of a row whose inputs alone (`bytes`, of `what`) pass the chunk budget.
pub(crate) fn over_chunk_budget(bytes: u64, budget: u64, what: &str) -> String {
    format!(
        "the row's input ({what}) takes {} bytes, over the limit of {} bytes per forward pass \
         (max_batch_bytes, at most the engine's queue_bytes)",
        crate::limits::grouped(bytes),
        crate::limits::grouped(budget)
    )
}

/// "rows 8-15" (or "row 8"): the rows of a chunk, for messages.
pub(crate) fn row_span(rows: std::ops::Range<u64>) -> String {
    match rows.end.saturating_sub(rows.start) {
        0 | 1 => format!("row {}", rows.start),
        _ => format!("rows {}-{}", rows.start, rows.end - 1),
    }
}

/// A failed job's error, naming the chunk's rows: "rows 8-15: forward pass failed: {reason}".
/// One chunk's result, waiting until `deadline`: `None` = not ready yet. Its engine times go
/// into `times`; a failed forward pass names the chunk's `rows`.
pub(crate) fn wait_chunk(
    ticket: &mut Ticket,
    deadline: Instant,
    rows: &str,
    times: &mut StageTimes,
) -> Result<Option<Done>> {
    let left = deadline.saturating_duration_since(Instant::now());
    let Some(done) = ticket.wait(left) else {
        return Ok(None);
    };
    let (done, job) = done.map_err(|e| forward_failed(e, rows))?;
    times.add_job(&job);
    Ok(Some(done))
}

pub(crate) fn forward_failed(e: Error, rows: &str) -> Error {
    match e {
        Error::Inference { path, reason } => Error::Inference {
            path,
            reason: format!("{rows}: forward pass failed: {reason}"),
        },
        other => other,
    }
}

/// Where a batch's native time went; travels as the output schema's metadata
/// (`torchspark.preprocess_ns`, `torchspark.forward_ns`, the split of preprocessing in
/// `torchspark.decode_ns`, `torchspark.resize_ns`, and the engine's `torchspark.queue_ns`,
/// `torchspark.batch_rows`, `torchspark.batch_jobs`) so that callers can report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// Read, decode, resize, crop, normalize (rayon), assemble: the caller's thread, wall time.
    pub preprocess: Duration,
    /// The forward passes the call's jobs ran in (tensor creation, forward, reading the output
    /// back), summed over its jobs: a pass shared with other tasks' jobs counts in each. The
    /// general path adds its output writers' time (`post` ops, PNG encoding), as before the
    /// engine.
    pub forward: Duration,
    /// Decoding, summed over rows (thread time: with a pool it can exceed `preprocess`).
    pub decode: Duration,
    /// Resizing, summed over rows (thread time).
    pub resize: Duration,
    /// The call's jobs' waits in the engine's queue, summed.
    pub queue: Duration,
    /// Rows and jobs of the passes the call's jobs ran in, summed over its jobs: divided by
    /// the job count they give the mean pass (the JVM divides).
    pub batch_rows: u64,
    pub batch_jobs: u64,
}

impl StageTimes {
    pub const PREPROCESS_KEY: &'static str = "torchspark.preprocess_ns";
    pub const FORWARD_KEY: &'static str = "torchspark.forward_ns";
    pub const DECODE_KEY: &'static str = "torchspark.decode_ns";
    pub const RESIZE_KEY: &'static str = "torchspark.resize_ns";
    pub const QUEUE_KEY: &'static str = "torchspark.queue_ns";
    pub const BATCH_ROWS_KEY: &'static str = "torchspark.batch_rows";
    pub const BATCH_JOBS_KEY: &'static str = "torchspark.batch_jobs";

    /// Adds one finished job's engine times.
    pub(crate) fn add_job(&mut self, job: &JobTimes) {
        self.forward += job.forward;
        self.queue += job.queued;
        self.batch_rows += job.batch_rows as u64;
        self.batch_jobs += job.batch_jobs as u64;
    }

    /// `schema` with these times as metadata.
    pub fn annotate(&self, schema: SchemaRef) -> SchemaRef {
        let mut meta = schema.metadata().clone();
        meta.insert(Self::PREPROCESS_KEY, self.preprocess.as_nanos().to_string());
        meta.insert(Self::FORWARD_KEY, self.forward.as_nanos().to_string());
        meta.insert(Self::DECODE_KEY, self.decode.as_nanos().to_string());
        meta.insert(Self::RESIZE_KEY, self.resize.as_nanos().to_string());
        meta.insert(Self::QUEUE_KEY, self.queue.as_nanos().to_string());
        meta.insert(Self::BATCH_ROWS_KEY, self.batch_rows.to_string());
        meta.insert(Self::BATCH_JOBS_KEY, self.batch_jobs.to_string());
        Arc::new(schema.as_ref().clone().with_metadata(meta))
    }

    /// The times a batch from [`Scorer::score`] or [`Scorer::featurize`] carries.
    pub fn of(batch: &RecordBatch) -> Option<StageTimes> {
        let meta = batch.schema_ref().metadata();
        let read = |k: &str| meta.get(k)?.parse::<u64>().ok().map(Duration::from_nanos);
        let count = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Some(StageTimes {
            preprocess: read(Self::PREPROCESS_KEY)?,
            forward: read(Self::FORWARD_KEY)?,
            decode: read(Self::DECODE_KEY).unwrap_or_default(),
            resize: read(Self::RESIZE_KEY).unwrap_or_default(),
            queue: read(Self::QUEUE_KEY).unwrap_or_default(),
            batch_rows: count(Self::BATCH_ROWS_KEY),
            batch_jobs: count(Self::BATCH_JOBS_KEY),
        })
    }
}
