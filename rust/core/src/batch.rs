//! Arrow batch in, Arrow batch out: scoring and featurizing.
//!
//! The input batch has one image column (or `input_column` names it): binary (encoded images),
//! Spark's image struct, or a list of floats. The output has one row per input row, in order.
//! A row that cannot be read gets null outputs and a reason in `error` ("row 17: invalid PNG:
//! ..."), and the other rows are still scored; only a batch that cannot be read at all fails.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    ArrayBuilder, Float32Builder, Int32Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, BinaryArray, LargeBinaryArray, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use rayon::prelude::*;
use serde::Deserialize;

use crate::engine::{Done, Engine, Job, JobTimes, Op, TaskId, Ticket, Work};
use crate::error::{Error, Result};
use crate::limits::CallLimits;
use crate::model::{self, Model, ModelConfig, Target};
use crate::preprocess::{ImageInput, RowTimes};

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

    /// The model shared with the engine (what a [`crate::engine::Pending`] keeps alive).
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

    /// The schema [`Scorer::score`] returns.
    pub fn score_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("prediction", DataType::Int32, true),
            Field::new(
                "probability",
                DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
                true,
            ),
            Field::new("predicted_label", DataType::Utf8, true),
            Field::new(
                "top_k",
                DataType::List(Arc::new(Field::new_list_field(
                    DataType::Struct(top_k_fields()),
                    true,
                ))),
                true,
            ),
            Field::new("error", DataType::Utf8, true),
        ]))
    }

    /// The schema [`Scorer::featurize`] returns.
    pub fn featurize_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "features",
                DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
                true,
            ),
            Field::new("error", DataType::Utf8, true),
        ]))
    }

    /// Class probabilities, prediction, label and top-k for every row.
    pub fn score(&self, batch: &RecordBatch, opts: &BatchOptions) -> Result<RecordBatch> {
        self.call(Op::Score, batch, opts)
    }

    /// The spec's featurize output, flattened, for every row.
    pub fn featurize(&self, batch: &RecordBatch, opts: &BatchOptions) -> Result<RecordBatch> {
        self.call(Op::Featurize, batch, opts)
    }

    /// Fails unless the spec says what featurizing returns.
    pub(crate) fn check_featurize(&self) -> Result<()> {
        if let Some(f) = &self.model.image_spec()?.featurize {
            f.source().map_err(|reason| Error::Spec {
                path: crate::spec::ModelSpec::default_path(self.model.path()),
                reason,
            })?;
            Ok(())
        } else {
            Err(Error::Spec {
                path: crate::spec::ModelSpec::default_path(self.model.path()),
                reason: "no `featurize` entry: add {\"method\": NAME} or {\"output_index\": N}"
                    .into(),
            })
        }
    }
}

/// [`Scorer::score`]'s batch from every row's probabilities (or its error).
fn score_output(
    model: &Model,
    rows: &[RowOutput],
    times: &StageTimes,
    k: usize,
) -> Result<RecordBatch> {
    let labels = model.image_spec()?.labels.as_deref();
    // `top_k` past the class count gives every class: the caller's number never sizes memory.
    let classes = rows
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    let k = k.min(classes);
    let mut prediction = Int32Builder::with_capacity(rows.len());
    let mut probability = ListBuilder::new(Float32Builder::new());
    let mut label = StringBuilder::new();
    let mut top_k = ListBuilder::new(StructBuilder::from_fields(
        top_k_fields(),
        k.saturating_mul(rows.len()),
    ));
    let mut error = StringBuilder::new();
    for row in rows {
        match row {
            Ok(p) => {
                let order = ranking(p, k.max(1));
                let best = order.first().copied().unwrap_or(0);
                prediction.append_value(best as i32);
                probability.values().append_slice(p);
                probability.append(true);
                label.append_option(labels.and_then(|l| l.get(best)));
                let entries = top_k.values();
                for &i in order.iter().take(k) {
                    struct_field::<Int32Builder>(entries, 0).append_value(i as i32);
                    struct_field::<StringBuilder>(entries, 1)
                        .append_option(labels.and_then(|l| l.get(i)));
                    struct_field::<Float32Builder>(entries, 2).append_value(p[i]);
                    entries.append(true);
                }
                top_k.append(true);
                error.append_null();
            }
            Err(e) => {
                prediction.append_null();
                probability.append(false);
                label.append_null();
                top_k.append(false);
                error.append_value(e);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(prediction.finish()),
        Arc::new(probability.finish()),
        Arc::new(label.finish()),
        Arc::new(top_k.finish()),
        Arc::new(error.finish()),
    ];
    RecordBatch::try_new(times.annotate(Scorer::score_schema()), columns).map_err(arrow_bug)
}

/// [`Scorer::featurize`]'s batch from every row's features (or its error).
fn featurize_output(rows: &[RowOutput], times: &StageTimes) -> Result<RecordBatch> {
    let mut features = ListBuilder::new(Float32Builder::new());
    let mut error = StringBuilder::new();
    for row in rows {
        match row {
            Ok(f) => {
                features.values().append_slice(f);
                features.append(true);
                error.append_null();
            }
            Err(e) => {
                features.append(false);
                error.append_value(e);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(features.finish()), Arc::new(error.finish())];
    RecordBatch::try_new(times.annotate(Scorer::featurize_schema()), columns).map_err(arrow_bug)
}

impl Scorer {
    /// PREPARE and SUBMIT of the image path: reads and preprocesses every row on the
    /// caller's thread, moves each chunk's good rows into one engine job; `Err` rows keep their
    /// message. [`ImagePending::poll`] finishes.
    pub(crate) fn submit_images(
        &self,
        batch: &RecordBatch,
        opts: &BatchOptions,
        target: Target,
        task: TaskId,
    ) -> Result<ImagePending> {
        let mut times = StageTimes::default();
        let batch_size = self.batch_rows(opts);
        let column = input_column(batch, opts.input_column.as_deref())?;
        let inputs = read_rows(column.as_ref())?;
        let pre = self.model.preprocessor()?;
        let row_len = pre.row_len();
        // Chunks are cut by bytes as well as rows: no job passes the engine's byte bound.
        let row_bytes = row_len.saturating_mul(std::mem::size_of::<f32>()).max(1);
        let budget = self.batch_bytes(opts);
        let over_budget = row_bytes > budget;
        let batch_size = batch_size.min((budget / row_bytes).max(1));
        let mut chunks = VecDeque::with_capacity(inputs.len().div_ceil(batch_size));
        for (chunk_index, chunk) in inputs.chunks(batch_size).enumerate() {
            let first = opts.row_offset + (chunk_index * batch_size) as u64;
            // Each chunk owns its pixels: the engine may still hold the previous chunk's.
            let mut pixels = if over_budget {
                Vec::new()
            } else {
                vec![0f32; chunk.len() * row_len]
            };
            let started = Instant::now();
            let fill = |(i, (out, input)): (usize, (&mut [f32], &Row<'_>))| {
                let row = first + i as u64;
                match input {
                    Ok(input) => pre.fill_limited(*input, out, opts.max_pixels),
                    Err(e) => Err(e.clone()),
                }
                .map_err(|e| format!("row {row}: {e}"))
            };
            if over_budget {
                let reason = over_chunk_budget(row_bytes as u64, budget as u64, &pre.shape_text());
                let status = (0..chunk.len() as u64)
                    .map(|i| Err(format!("row {}: {reason}", first + i)))
                    .collect();
                let rows = row_span(first..first + chunk.len() as u64);
                chunks.push_back(ImageChunk {
                    status,
                    ticket: None,
                    rows,
                });
                continue;
            }
            // Decoding gets the caller's thread budget, like the forward pass that follows it,
            // so concurrent tasks never use more than tasks x num_threads cores.
            let status: Vec<std::result::Result<RowTimes, String>> =
                match decode_pool(self.num_threads) {
                    None => pixels
                        .chunks_mut(row_len)
                        .zip(chunk)
                        .enumerate()
                        .map(fill)
                        .collect(),
                    Some(pool) => pool.install(|| {
                        pixels
                            .par_chunks_mut(row_len)
                            .zip(chunk.par_iter())
                            .enumerate()
                            .map(fill)
                            .collect()
                    }),
                };
            // Move the good rows to the front so one forward pass takes them all.
            let mut good = 0;
            for (i, s) in status.iter().enumerate() {
                if let Ok(t) = s {
                    times.decode += t.decode;
                    times.resize += t.resize;
                    if i != good {
                        pixels.copy_within(i * row_len..(i + 1) * row_len, good * row_len);
                    }
                    good += 1;
                }
            }
            pixels.truncate(good * row_len);
            times.preprocess += started.elapsed();
            // An empty chunk (no good rows) submits nothing.
            let ticket = if good > 0 {
                Some(self.engine.submit(Job {
                    task,
                    rows: good,
                    bytes: pixels.len() * std::mem::size_of::<f32>(),
                    max_batch: batch_size,
                    work: Work::Image { pixels, target },
                })?)
            } else {
                None
            };
            let status = status.into_iter().map(|s| s.map(|_| ())).collect();
            let rows = row_span(first..first + chunk.len() as u64);
            chunks.push_back(ImageChunk {
                status,
                ticket,
                rows,
            });
        }
        Ok(ImagePending {
            model: Arc::clone(&self.model),
            target,
            top_k: opts.top_k,
            results: Vec::with_capacity(inputs.len()),
            chunks,
            times,
        })
    }

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

/// A submitted image batch: its chunks' row errors and tickets, in order.
pub(crate) struct ImagePending {
    model: Arc<Model>,
    target: Target,
    top_k: usize,
    chunks: VecDeque<ImageChunk>,
    /// The rows of the chunks finished so far.
    results: Vec<RowOutput>,
    times: StageTimes,
}

struct ImageChunk {
    /// Per row: `Err(message)` for a row that could not be read.
    status: Vec<std::result::Result<(), String>>,
    /// The forward pass of the good rows; `None` when there were none.
    ticket: Option<Ticket>,
    /// "rows 8-15", for a failed pass's message.
    rows: String,
}

impl ImagePending {
    /// FINISH: waits (at most `timeout` in all) for each chunk's result in order, then builds
    /// the very batch [`Scorer::score`] / [`Scorer::featurize`] returns; `Ok(None)` = not
    /// ready yet (the chunks finished so far are kept).
    pub(crate) fn poll(&mut self, timeout: Duration) -> Result<Option<RecordBatch>> {
        let deadline = Instant::now() + timeout;
        while let Some(chunk) = self.chunks.front_mut() {
            let (values, width) = match &mut chunk.ticket {
                None => (Vec::new(), 0),
                Some(ticket) => {
                    let Some(done) = wait_chunk(ticket, deadline, &chunk.rows, &mut self.times)?
                    else {
                        return Ok(None);
                    };
                    match done {
                        Done::Image { values, width } => (values, width),
                        Done::General(_) => {
                            return Err(Error::Internal {
                                reason: "the engine returned a general value for an image job"
                                    .into(),
                            });
                        }
                    }
                }
            };
            let mut outputs = values.chunks_exact(width.max(1));
            let status = std::mem::take(&mut chunk.status);
            self.chunks.pop_front();
            for s in status {
                self.results.push(match s {
                    Ok(()) => Ok(outputs.next().map(<[f32]>::to_vec).unwrap_or_default()),
                    Err(e) => Err(e),
                });
            }
        }
        let results = std::mem::take(&mut self.results);
        match self.target {
            Target::Probabilities => score_output(&self.model, &results, &self.times, self.top_k),
            Target::Features => featurize_output(&results, &self.times),
        }
        .map(Some)
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

/// A rayon pool of `n` threads per distinct `n` (a handful per process, re-made in a forked
/// child), none for one thread.
pub(crate) fn decode_pool(n: usize) -> Option<&'static rayon::ThreadPool> {
    crate::lifecycle::decode_pool(n)
}

fn top_k_fields() -> Fields {
    Fields::from(vec![
        Field::new("index", DataType::Int32, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("probability", DataType::Float32, false),
    ])
}

fn struct_field<T: ArrayBuilder>(b: &mut StructBuilder, i: usize) -> &mut T {
    // The builder is made from top_k_fields(), so the types are known.
    #[allow(clippy::expect_used)]
    b.field_builder::<T>(i).expect("top_k builder field type")
}

/// Indices of the `k` largest values, best first; ties keep the lower index (like argmax).
fn ranking(p: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

fn arrow_bug(e: arrow_schema::ArrowError) -> Error {
    Error::Internal {
        reason: format!("building the output batch: {e}"),
    }
}

fn input_column<'a>(batch: &'a RecordBatch, name: Option<&str>) -> Result<&'a ArrayRef> {
    match name {
        Some(n) => batch.column_by_name(n).ok_or_else(|| {
            Error::input(format!(
                "no column `{n}` (the batch has {:?})",
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect::<Vec<_>>()
            ))
        }),
        None if batch.num_columns() == 1 => Ok(batch.column(0)),
        None => Err(Error::input(format!(
            "expected one image column, got {}; set input_column",
            batch.num_columns()
        ))),
    }
}

type Row<'a> = std::result::Result<ImageInput<'a>, String>;

/// One row's model output, or why it has none.
type RowOutput = std::result::Result<Vec<f32>, String>;

/// Borrows every row of the image column; nulls and malformed structs become row errors.
fn read_rows(col: &dyn Array) -> Result<Vec<Row<'_>>> {
    let null = || Err("input is null".to_string());
    let rows = match col.data_type() {
        DataType::Binary => binary_rows(col.as_binary::<i32>()),
        DataType::LargeBinary => large_binary_rows(col.as_binary::<i64>()),
        DataType::Struct(_) => struct_rows(col.as_struct())?,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            return match f.data_type() {
                DataType::Float32 | DataType::Float64 => float_rows(col),
                other => Err(Error::input(format!(
                    "list column of {other}: float or double expected"
                ))),
            };
        }
        other => {
            return Err(Error::input(format!(
                "image column has type {other}; binary, Spark's image struct or a list of floats expected"
            )));
        }
    };
    Ok(rows.into_iter().map(|r| r.map_or_else(null, Ok)).collect())
}

fn binary_rows(a: &BinaryArray) -> Vec<Option<ImageInput<'_>>> {
    a.iter().map(|v| v.map(ImageInput::Encoded)).collect()
}

fn large_binary_rows(a: &LargeBinaryArray) -> Vec<Option<ImageInput<'_>>> {
    a.iter().map(|v| v.map(ImageInput::Encoded)).collect()
}

/// Float rows borrow straight from the child values buffer (no copy).
fn float_rows(col: &dyn Array) -> Result<Vec<Row<'_>>> {
    let (offsets, values, nulls): (Vec<(usize, usize)>, &ArrayRef, _) = match col.data_type() {
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            let o = l.value_offsets();
            let spans = o
                .windows(2)
                .map(|w| (w[0] as usize, w[1] as usize))
                .collect();
            (spans, l.values(), l.nulls())
        }
        DataType::LargeList(_) => {
            let l = col.as_list::<i64>();
            let o = l.value_offsets();
            let spans = o
                .windows(2)
                .map(|w| (w[0] as usize, w[1] as usize))
                .collect();
            (spans, l.values(), l.nulls())
        }
        _ => {
            let l = col.as_fixed_size_list();
            let n = l.value_length() as usize;
            let start = l.offset() * n;
            let spans = (0..l.len())
                .map(|i| (start + i * n, start + (i + 1) * n))
                .collect();
            (spans, l.values(), l.nulls())
        }
    };
    let is_null = |i: usize| nulls.is_some_and(|n| n.is_null(i));
    let rows = match values.data_type() {
        DataType::Float32 => {
            let v = values.as_primitive::<Float32Type>();
            let has_nulls = v.null_count() > 0;
            let raw = v.values();
            offsets
                .iter()
                .enumerate()
                .map(|(i, &(a, b))| {
                    if is_null(i) {
                        Err("input is null".to_string())
                    } else if has_nulls && (a..b).any(|j| v.is_null(j)) {
                        Err("float list contains null".to_string())
                    } else {
                        Ok(ImageInput::Floats(&raw[a..b]))
                    }
                })
                .collect()
        }
        _ => {
            let v = values.as_primitive::<Float64Type>();
            let has_nulls = v.null_count() > 0;
            let raw = v.values();
            offsets
                .iter()
                .enumerate()
                .map(|(i, &(a, b))| {
                    if is_null(i) {
                        Err("input is null".to_string())
                    } else if has_nulls && (a..b).any(|j| v.is_null(j)) {
                        Err("float list contains null".to_string())
                    } else {
                        Ok(ImageInput::Doubles(&raw[a..b]))
                    }
                })
                .collect()
        }
    };
    Ok(rows)
}

/// Spark's image struct: `origin, height, width, nChannels, mode, data` (as the general path
/// reads it).
fn struct_rows(s: &StructArray) -> Result<Vec<Option<ImageInput<'_>>>> {
    crate::input::image::struct_rows(s).map_err(Error::input)
}
