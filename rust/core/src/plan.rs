//! The general path: any declared inputs → `forward` → any declared outputs.
//!
//! For each chunk of `batch_size` rows: every input's reader reads its rows (a row is good
//! only if all its inputs are); the good rows are assembled into `forward`'s arguments (stack,
//! pad + mask, list) and submitted to the engine as one job (all on the caller's thread); once
//! its forward pass is back ([`crate::Pending::wait`]), each output's writer takes its part of
//! the result (`from`, `post`) and writes a column, a null for each bad row. Bad rows carry their reason
//! in `error`: ``row 17: input `meta` (column `bmi`): expected 10 values, got 9``.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_select::take::{take, take_record_batch};

use crate::batch::{BatchOptions, Scorer, StageTimes, row_span, wait_chunk};
use crate::engine::{Done, Job, Op, TaskId, Ticket, Work};
use crate::error::{Error, Result};
use crate::input;
use crate::limits::{self, CallLimits};
use crate::model::Model;
use crate::output::{self, OutputWriter};
use crate::spec::Spec;
use crate::spec::general::{DType, GeneralSpec, InputDecl, InputKind, Ragged};
use crate::spec::preset::SelectError;
use crate::value::ModelInput;

/// Schema metadata key: the inputs as JSON (`[{"name", "kind", "columns", "dtype", "shape"}]`),
/// so that callers know which columns to send.
pub const INPUTS_KEY: &str = "torchspark.inputs";

/// Schema metadata key of a result whose spec has a text input: how many of its rows had their
/// text cut at `max_length` (a decimal string).
pub const TRUNCATED_ROWS_KEY: &str = "torchspark.truncated_rows";

impl Scorer {
    /// Runs the model's general path over `batch`: one column per declared output, then
    /// `error` (null, or why the row has no outputs). `opts.columns` maps input names to
    /// other columns than the spec's.
    ///
    /// Errors: [`Error::Input`] (a column missing or of a type its input cannot read),
    /// [`Error::Inference`] (the forward pass failed, or returned something that does not
    /// match a declared output: the message names the output and both shapes).
    pub fn predict(&self, batch: &RecordBatch, opts: &BatchOptions) -> Result<RecordBatch> {
        self.call(Op::Predict, batch, opts)
    }

    /// PREPARE and SUBMIT of the general path: reads every input's rows on the caller's
    /// thread, assembles each chunk's good rows into `forward`'s arguments (masks and type ids
    /// in their declared places) and submits them as one engine job. [`GeneralPending::poll`]
    /// finishes.
    pub(crate) fn submit_general(
        &self,
        batch: &RecordBatch,
        opts: &BatchOptions,
        preset: &str,
        task: TaskId,
    ) -> Result<GeneralPending> {
        let spec = self.model().general();
        let selected = select(spec, preset, opts.outputs.as_deref(), self.model().path())?;
        // One call, one method: `select` checked that the selected outputs share it.
        let method = selected
            .first()
            .and_then(|&i| spec.method_of(&spec.outputs[i]))
            .map(str::to_string);
        let batch_size = self.batch_rows(opts);
        let n = batch.num_rows();
        let columns = resolve_columns(spec, opts, batch)?;
        let limits = opts.limits();
        let budget = self.batch_bytes(opts);
        // `ragged: "single"` runs one row per forward pass.
        let chunk = if spec.inputs.iter().any(|d| d.ragged == Some(Ragged::Single)) {
            1
        } else {
            batch_size
        };
        // Longest first (text, or padded values), so that each pass pads little; undone in
        // `finish`.
        let order = match length_order(spec, &columns, batch, opts, chunk) {
            Some(o) => Some(o),
            None => match padded_input(spec, opts, n, chunk) {
                Some(padded) => {
                    let readers = self.readers(spec, &columns, batch, &limits)?;
                    padded_order(spec, &readers, &limits, padded, n, chunk, budget)
                }
                None => None,
            },
        };
        let sorted;
        let batch = match &order {
            Some(o) => {
                sorted = take_rows(batch, &columns, o)?;
                &sorted
            }
            None => batch,
        };
        // Row `j` of `batch` is the caller's row `original(j)`.
        let original = |j: usize| order.as_ref().map_or(j, |o| o[j] as usize);
        let readers = self.readers(spec, &columns, batch, &limits)?;
        let segments = Sizer::new(spec, &readers, &limits, budget).plan(n, chunk);
        let mut times = StageTimes::default();
        let fail = |reason: String| Error::Inference {
            path: self.model().path().to_path_buf(),
            reason,
        };
        let mut chunks = VecDeque::with_capacity(segments.len());
        for seg in segments {
            let (start, end) = (seg.rows.start, seg.rows.end);
            let started = Instant::now();
            let mut good = vec![true; end - start];
            let mut reasons: Vec<Option<String>> = vec![None; end - start];
            let mut read: Vec<Option<input::Chunk>> = Vec::new();
            if let Some((i, why)) = &seg.over_budget {
                // A row whose inputs alone pass the budget is never read.
                good.fill(false);
                let row = opts.row_offset + original(start) as u64;
                reasons[0] = Some(format!(
                    "row {row}: input `{}` (column {}): {why}",
                    spec.inputs[*i].name,
                    columns[*i].join(", ")
                ));
            } else {
                // Per input: this chunk's rows, or None for a mask.
                read = readers
                    .iter()
                    .zip(&spec.inputs)
                    .map(|(r, decl)| {
                        r.as_ref().map(|r| {
                            input::Chunk::read(r.as_ref(), decl, start..end, self.threads())
                        })
                    })
                    .collect();
            }
            for (i, rows) in read.iter().enumerate() {
                let Some(rows) = rows else { continue };
                let decl = &spec.inputs[i];
                for (k, row) in rows.status().into_iter().enumerate() {
                    match row {
                        Ok(t) => {
                            times.decode += t.decode;
                            times.resize += t.resize;
                        }
                        Err(e) if good[k] => {
                            good[k] = false;
                            let row = opts.row_offset + original(start + k) as u64;
                            reasons[k] = Some(format!(
                                "row {row}: input `{}` (column {}): {e}",
                                decl.name,
                                columns[i].join(", ")
                            ));
                        }
                        Err(_) => {}
                    }
                }
            }
            let count = good.iter().filter(|&&g| g).count();
            let mut post_masks: HashMap<String, tch::Tensor> = HashMap::new();
            // An empty chunk (no good rows) submits nothing.
            let ticket = if count > 0 {
                let mut args = Vec::with_capacity(spec.inputs.len());
                // Padded input name -> its mask; mask input name -> the mask (for `post` pools).
                let mut masks: HashMap<&str, tch::Tensor> = HashMap::new();
                for (i, decl) in spec.inputs.iter().enumerate() {
                    let Some(rows) = read[i].take() else { continue };
                    let mask_dtype = mask_dtype(spec, &decl.name);
                    let (arg, mask) = rows
                        .assemble(decl, &good, mask_dtype)
                        .map_err(|e| fail(format!("input `{}`: {e}", decl.name)))?;
                    if let Some(m) = mask {
                        masks.insert(decl.name.as_str(), m);
                    }
                    args.push((i, arg));
                }
                // Masks and type ids take their place in the declared order.
                let mut ordered = Vec::with_capacity(spec.inputs.len());
                let mut args = args.into_iter().peekable();
                for (i, decl) in spec.inputs.iter().enumerate() {
                    if decl.kind.is_generated() {
                        let of = decl.of.as_deref().unwrap_or_default();
                        let m = masks.get(of).ok_or_else(|| {
                            fail(format!(
                                "input `{}`: no mask was built for `{of}`",
                                decl.name
                            ))
                        })?;
                        let arg = if decl.kind == InputKind::TypeIds {
                            // One segment: type id 0 for every token, padding included (as
                            // the tokenizer's single-sequence template gives).
                            m.f_zeros_like()
                                .and_then(|z| z.f_to_kind(input::assemble::kind(decl.dtype)))
                                .map_err(|e| fail(format!("input `{}`: {e}", decl.name)))?
                        } else {
                            post_masks.insert(decl.name.clone(), m.shallow_clone());
                            m.shallow_clone()
                        };
                        ordered.push(ModelInput::Batch(arg));
                    } else if let Some((_, arg)) = args.next_if(|(j, _)| *j == i) {
                        ordered.push(arg);
                    }
                }
                times.preprocess += started.elapsed();
                Some(self.engine().submit(Job {
                    task,
                    rows: count,
                    bytes: input_bytes(&ordered),
                    // A chunk cut by bytes is not merged into a larger pass.
                    max_batch: if seg.cut { end - start } else { chunk },
                    work: Work::General {
                        args: ordered,
                        method: method.clone(),
                    },
                })?)
            } else {
                times.preprocess += started.elapsed();
                None
            };
            // Sorted rows are not contiguous in the caller's order: they are listed.
            let rows = match &order {
                None => row_span(opts.row_offset + start as u64..opts.row_offset + end as u64),
                Some(_) => {
                    let mut rows: Vec<u64> = (start..end)
                        .map(|j| opts.row_offset + original(j) as u64)
                        .collect();
                    rows.sort_unstable();
                    let list: Vec<String> = rows.iter().take(10).map(u64::to_string).collect();
                    let more = if rows.len() > 10 { ", ..." } else { "" };
                    format!("rows {}{more}", list.join(", "))
                }
            };
            chunks.push_back(GeneralChunk {
                good,
                reasons,
                post_masks,
                ticket,
                rows,
            });
        }
        let truncated = spec
            .inputs
            .iter()
            .any(|d| d.kind == InputKind::Text)
            .then(|| readers.iter().flatten().map(|r| r.truncated()).sum());
        Ok(GeneralPending {
            model: Arc::clone(self.model_arc()),
            writers: selected
                .iter()
                .map(|&i| output::writer(&spec.outputs[i], opts.top_k))
                .collect(),
            selected,
            error: StringBuilder::with_capacity(n, 0),
            chunks,
            order,
            truncated,
            times,
        })
    }

    /// One reader per declared input over `batch` (`None` for a generated one); a column
    /// missing or of a type its input cannot read fails the call, naming both.
    fn readers<'a>(
        &'a self,
        spec: &'a GeneralSpec,
        columns: &'a [Vec<String>],
        batch: &'a RecordBatch,
        limits: &CallLimits,
    ) -> Result<Vec<Option<Box<dyn input::InputReader + 'a>>>> {
        let mut readers = Vec::new();
        for (decl, cols) in spec.inputs.iter().zip(columns) {
            if decl.kind.is_generated() {
                readers.push(None);
                continue;
            }
            let arrays = cols
                .iter()
                .map(|c| {
                    batch
                        .column_by_name(c)
                        .map(|a| (c.as_str(), a))
                        .ok_or_else(|| missing_column(batch, &decl.name, c))
                })
                .collect::<Result<Vec<_>>>()?;
            // Field metadata (arrow.fixed_shape_tensor's shape) is checked here: readers see
            // arrays only.
            let schema = batch.schema_ref();
            let checked = cols
                .iter()
                .try_for_each(|c| match schema.field_with_name(c) {
                    Ok(f) if decl.kind == InputKind::Tensor => input::tensor::check_field(decl, f),
                    _ => Ok(()),
                });
            let reader = checked.and_then(|()| {
                input::reader(decl, arrays, limits, self.model().tokenizer(&decl.name))
            });
            let reader = reader.map_err(|e| {
                Error::input(format!(
                    "input `{}` (column {}): {e}",
                    decl.name,
                    cols.join(", ")
                ))
            })?;
            readers.push(Some(reader));
        }
        Ok(readers)
    }

    /// The schema [`Scorer::predict`] returns for the spec `spec_json`, without loading the
    /// model: one field per output, then `error`; its metadata [`INPUTS_KEY`] lists the inputs.
    /// The `predict` preset's schema ([`Scorer::describe_preset`]).
    pub fn describe(spec_json: &str) -> Result<SchemaRef> {
        Self::describe_preset(spec_json, "predict", None)
    }

    /// The schema a call with `preset` (or the named `outputs`, which win) returns for the spec
    /// `spec_json`, without loading the model: one field per selected output, then `error`;
    /// metadata [`INPUTS_KEY`] lists the inputs. Callers build their schemas from it.
    pub fn describe_preset(
        spec_json: &str,
        preset: &str,
        outputs: Option<&[String]>,
    ) -> Result<SchemaRef> {
        let spec = Spec::from_json(spec_json).map_err(|reason| Error::Spec {
            path: "<spec>".into(),
            reason,
        })?;
        let general = spec.general();
        let selected = select(&general, preset, outputs, std::path::Path::new("<spec>"))?;
        Ok(output_schema(&general, &selected))
    }
}

/// A submitted general batch: its chunks' masks, row errors and tickets, in order, and the
/// writers the finished chunks went to.
pub(crate) struct GeneralPending {
    model: Arc<Model>,
    writers: Vec<Box<dyn OutputWriter>>,
    /// The outputs the writers write (indices into the spec's), in column order.
    selected: Vec<usize>,
    error: StringBuilder,
    chunks: VecDeque<GeneralChunk>,
    /// The rows' order when they ran longest text first (undone at the end).
    order: Option<Vec<u32>>,
    /// Rows whose text was cut at `max_length`, when the spec has a text input.
    truncated: Option<u64>,
    times: StageTimes,
}

struct GeneralChunk {
    good: Vec<bool>,
    reasons: Vec<Option<String>>,
    /// Mask input name -> the mask of the rows that ran (for `post` pools).
    post_masks: HashMap<String, tch::Tensor>,
    /// The forward pass of the good rows; `None` when there were none.
    ticket: Option<Ticket>,
    /// "rows 8-15" (or the rows listed, when sorted by length), for a failed pass's message.
    rows: String,
}

impl GeneralPending {
    /// FINISH: waits (at most `timeout` in all) for each chunk's result in order and hands it
    /// to the output writers, then builds the very batch [`Scorer::predict`] returns;
    /// `Ok(None)` = not ready yet (the chunks written so far are kept).
    pub(crate) fn poll(&mut self, timeout: Duration) -> Result<Option<RecordBatch>> {
        let deadline = Instant::now() + timeout;
        let spec = self.model.general();
        let path = self.model.path();
        let fail = |reason: String| Error::Inference {
            path: path.to_path_buf(),
            reason,
        };
        while let Some(chunk) = self.chunks.front_mut() {
            let value = match &mut chunk.ticket {
                None => None,
                Some(ticket) => {
                    let Some(done) = wait_chunk(ticket, deadline, &chunk.rows, &mut self.times)?
                    else {
                        return Ok(None);
                    };
                    match done {
                        Done::General(value) => Some(value),
                        Done::Image { .. } => {
                            return Err(internal(
                                "finishing a general batch",
                                "the engine returned image values",
                            ));
                        }
                    }
                }
            };
            let started = Instant::now();
            for (&i, w) in self.selected.iter().zip(self.writers.iter_mut()) {
                let decl = &spec.outputs[i];
                let selected = match (&value, decl.output_index, &decl.from) {
                    (None, ..) => None,
                    (Some(v), Some(index), _) => Some(
                        v.element(index)
                            .map_err(|e| fail(format!("output `{}`: {e}", decl.name)))?,
                    ),
                    (Some(v), None, None) => Some(v),
                    (Some(v), None, Some(path)) => Some(
                        v.select(&path.steps())
                            .map_err(|e| fail(format!("output `{}`: {e}", decl.name)))?,
                    ),
                };
                w.append_chunk(selected, &chunk.good, &chunk.post_masks)
                    .map_err(|e| fail(format!("output `{}`: {e}", decl.name)))?;
            }
            for r in chunk.reasons.drain(..) {
                self.error.append_option(r);
            }
            // Writing the outputs counted as forward time before the engine; it still does.
            self.times.forward += started.elapsed();
            self.chunks.pop_front();
        }
        let mut arrays: Vec<ArrayRef> = self.writers.iter_mut().map(|w| w.finish()).collect();
        arrays.push(Arc::new(self.error.finish()));
        if let Some(o) = &self.order {
            arrays = unsort(&arrays, o)?;
        }
        let mut schema = self.times.annotate(output_schema(spec, &self.selected));
        if let Some(truncated) = self.truncated {
            let mut meta = schema.metadata().clone();
            meta.insert(TRUNCATED_ROWS_KEY.to_string(), truncated.to_string());
            schema = Arc::new(schema.as_ref().clone().with_metadata(meta));
        }
        RecordBatch::try_new(schema, arrays)
            .map(Some)
            .map_err(|e| internal("building the output batch", e))
    }
}

/// Bytes held by `forward`'s arguments (counted against the engine's `queue_bytes`).
fn input_bytes(args: &[ModelInput]) -> usize {
    let bytes = |t: &tch::Tensor| t.numel() * t.kind().elt_size_in_bytes();
    args.iter()
        .map(|a| match a {
            ModelInput::Batch(t) => bytes(t),
            ModelInput::List(ts) => ts.iter().map(bytes).sum(),
        })
        .sum()
}

/// The `selected` outputs' fields, `error`, and the inputs as metadata.
pub fn output_schema(spec: &GeneralSpec, selected: &[usize]) -> SchemaRef {
    let mut fields: Vec<Field> = selected
        .iter()
        .map(|&i| output::field(&spec.outputs[i]))
        .collect();
    fields.push(Field::new("error", DataType::Utf8, true));
    let inputs: Vec<serde_json::Value> = spec
        .inputs
        .iter()
        .map(|d| {
            serde_json::json!({
                "name": d.name,
                "kind": match d.kind {
                    InputKind::Tensor => "tensor",
                    InputKind::Image => "image",
                    InputKind::Mask => "mask",
                    InputKind::Text => "text",
                    InputKind::TypeIds => "type_ids",
                },
                "columns": d.columns(),
                "dtype": d.dtype.name(),
                "shape": d.shape,
            })
        })
        .collect();
    let meta = HashMap::from([(
        INPUTS_KEY.to_string(),
        serde_json::Value::Array(inputs).to_string(),
    )]);
    Arc::new(Schema::new_with_metadata(fields, meta))
}

/// One forward pass's rows, as [`Sizer::plan`] cuts them.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    rows: Range<usize>,
    /// Cut before `chunk` rows by bytes or padding waste: its job is not merged into a larger
    /// pass.
    cut: bool,
    /// One row whose inputs alone pass the budget: the input that takes the most, and why.
    over_budget: Option<(usize, String)>,
}

/// How the rows of a call add up to a forward pass's input bytes ([`limits`]): each input's
/// rows from their shapes as known before reading ([`input::InputReader::row_shape`]): stacked
/// rows and lists take their values, padded rows the chunk's largest shape (masks and type
/// ids included) for every row.
struct Sizer<'r, 'a> {
    inputs: Vec<Option<Sizing<'r, 'a>>>,
    budget: u64,
}

struct Sizing<'r, 'a> {
    reader: &'r (dyn input::InputReader + 'a),
    /// Bytes of one value of the input's dtype.
    elem: u64,
    /// Bytes of one padded value: the input's, and its mask's and type ids' (for `ragged: "pad"`).
    padded: Option<u64>,
    /// `max_row_elements`: a larger row fails when read, taking no memory.
    limit: u64,
    /// A text input's `max_length`: its rows' ids, at most (their count is known only once
    /// tokenized).
    text: Option<i64>,
    /// "shape [6000, 6000] float32", for the over-budget message.
    dtype: DType,
}

/// One input's part of the chunk being planned.
#[derive(Debug, Clone, Default)]
struct Part {
    rows: u64,
    /// Values of its rows (stacked, list: the bytes; padded: the real values).
    values: u64,
    /// A padded input's largest size in each dimension.
    max: Vec<i64>,
}

fn values_of(shape: &[i64]) -> u64 {
    shape
        .iter()
        .map(|&d| u64::try_from(d).unwrap_or(0))
        .fold(1u64, u64::saturating_mul)
}

impl<'r, 'a> Sizer<'r, 'a> {
    fn new(
        spec: &GeneralSpec,
        readers: &'r [Option<Box<dyn input::InputReader + 'a>>],
        limits: &CallLimits,
        budget: usize,
    ) -> Self {
        let inputs = spec
            .inputs
            .iter()
            .zip(readers)
            .map(|(decl, r)| {
                let reader = r.as_deref()?;
                let elem = elem_bytes(decl.dtype);
                let padded = (decl.ragged == Some(Ragged::Pad)
                    || decl.ragged == Some(Ragged::Single))
                .then(|| {
                    let generated: Vec<&InputDecl> = spec
                        .inputs
                        .iter()
                        .filter(|g| g.kind.is_generated() && g.of.as_deref() == Some(&decl.name))
                        .collect();
                    // A type_ids input alone still gets an int64 mask built for its shape.
                    let mask = if !generated.is_empty()
                        && !generated.iter().any(|g| g.kind == InputKind::Mask)
                    {
                        8
                    } else {
                        0
                    };
                    elem + mask + generated.iter().map(|g| elem_bytes(g.dtype)).sum::<u64>()
                });
                Some(Sizing {
                    reader,
                    elem,
                    padded,
                    limit: decl.row_element_limit(limits.max_row_elements),
                    text: (decl.kind == InputKind::Text)
                        .then(|| decl.max_length.unwrap_or(0) as i64),
                    dtype: decl.dtype,
                })
            })
            .collect();
        Sizer {
            inputs,
            budget: budget as u64,
        }
    }

    /// Row `j`'s shape in input `s` as far as it takes memory: `None` when it is unknown or
    /// the row fails when read (over `max_row_elements`, unreadable).
    fn shape(s: &Sizing<'_, '_>, j: usize) -> Option<Vec<i64>> {
        if let Some(max_length) = s.text {
            return Some(vec![max_length]);
        }
        s.reader.row_shape(j).filter(|v| values_of(v) <= s.limit)
    }

    /// The bytes of `part` with a row of `shape` added, and (padded inputs, not text) its
    /// padded and real values.
    fn with_row(
        s: &Sizing<'_, '_>,
        part: &Part,
        shape: Option<&[i64]>,
    ) -> (u64, Option<(u64, u64)>) {
        match (s.padded, shape) {
            (Some(per_value), shape) => {
                let mut max = part.max.clone();
                let mut rows = part.rows;
                let mut real = part.values;
                if let Some(shape) = shape {
                    if max.len() < shape.len() {
                        max.resize(shape.len(), 0);
                    }
                    for (m, &d) in max.iter_mut().zip(shape) {
                        *m = (*m).max(d);
                    }
                    rows += 1;
                    real = real.saturating_add(values_of(shape));
                }
                let padded = if max.is_empty() {
                    0
                } else {
                    rows.saturating_mul(values_of(&max))
                };
                let waste = s.text.is_none().then_some((padded, real));
                (padded.saturating_mul(per_value), waste)
            }
            (None, shape) => {
                let values = part.values.saturating_add(shape.map_or(0, values_of));
                (values.saturating_mul(s.elem), None)
            }
        }
    }

    fn add(s: &Sizing<'_, '_>, part: &mut Part, shape: Option<&[i64]>) {
        let Some(shape) = shape else { return };
        part.rows += 1;
        part.values = part.values.saturating_add(values_of(shape));
        if s.padded.is_some() {
            if part.max.len() < shape.len() {
                part.max.resize(shape.len(), 0);
            }
            for (m, &d) in part.max.iter_mut().zip(shape) {
                *m = (*m).max(d);
            }
        }
    }

    /// Rows `0..n` cut into passes of at most `chunk` rows whose inputs stay within the
    /// budget and whose padding stays within [`limits::MAX_PAD_RATIO`] of the real values
    /// (above [`limits::PAD_WASTE_FLOOR_BYTES`]); a row that alone passes the budget is a
    /// segment of its own, never read.
    fn plan(&self, n: usize, chunk: usize) -> Vec<Segment> {
        let mut segments = Vec::new();
        let mut parts: Vec<Part> = vec![Part::default(); self.inputs.len()];
        let mut start = 0;
        for j in 0..n {
            let shapes: Vec<Option<Vec<i64>>> = self
                .inputs
                .iter()
                .map(|s| s.as_ref().and_then(|s| Self::shape(s, j)))
                .collect();
            // The row alone.
            let alone: Vec<u64> = self
                .inputs
                .iter()
                .zip(&shapes)
                .map(|(s, shape)| {
                    s.as_ref().map_or(0, |s| {
                        Self::with_row(s, &Part::default(), shape.as_deref()).0
                    })
                })
                .collect();
            if alone.iter().fold(0u64, |a, &b| a.saturating_add(b)) > self.budget {
                if j > start {
                    segments.push(Segment {
                        rows: start..j,
                        cut: true,
                        over_budget: None,
                    });
                }
                let (i, &bytes) = alone
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, b)| **b)
                    .unwrap_or((0, &0));
                let what = match (&self.inputs[i], &shapes[i]) {
                    (Some(s), Some(shape)) => format!("shape {shape:?} {}", s.dtype),
                    _ => "its values".to_string(),
                };
                segments.push(Segment {
                    rows: j..j + 1,
                    cut: true,
                    over_budget: Some((
                        i,
                        crate::batch::over_chunk_budget(bytes, self.budget, &what),
                    )),
                });
                start = j + 1;
                parts.iter_mut().for_each(|p| *p = Part::default());
                continue;
            }
            if j > start {
                let mut total = 0u64;
                let mut wasteful = false;
                for ((s, part), shape) in self.inputs.iter().zip(&parts).zip(&shapes) {
                    let Some(s) = s else { continue };
                    let (bytes, waste) = Self::with_row(s, part, shape.as_deref());
                    total = total.saturating_add(bytes);
                    if let Some((padded, real)) = waste {
                        wasteful |= bytes > limits::PAD_WASTE_FLOOR_BYTES as u64
                            && padded > real.saturating_mul(limits::MAX_PAD_RATIO as u64);
                    }
                }
                let full = j - start >= chunk;
                if full || total > self.budget || wasteful {
                    segments.push(Segment {
                        rows: start..j,
                        cut: !full,
                        over_budget: None,
                    });
                    start = j;
                    parts.iter_mut().for_each(|p| *p = Part::default());
                }
            }
            for ((s, part), shape) in self.inputs.iter().zip(parts.iter_mut()).zip(&shapes) {
                if let Some(s) = s {
                    Self::add(s, part, shape.as_deref());
                }
            }
        }
        if start < n {
            segments.push(Segment {
                rows: start..n,
                cut: false,
                over_budget: None,
            });
        }
        segments
    }
}

/// Bytes of one value of `d`.
fn elem_bytes(d: DType) -> u64 {
    match d {
        DType::Float32 | DType::Int32 => 4,
        DType::Float64 | DType::Int64 => 8,
        DType::Uint8 | DType::Bool => 1,
    }
}

/// The padded tensor input whose rows [`padded_order`] would sort by: the first one, when
/// `sort_by_length` is on, there is no text input (text sorts by characters) and more than
/// one row and one row a pass.
fn padded_input(spec: &GeneralSpec, opts: &BatchOptions, n: usize, chunk: usize) -> Option<usize> {
    if !opts.sort_by_length || chunk == 1 || n < 2 || u32::try_from(n).is_err() {
        return None;
    }
    if spec.inputs.iter().any(|d| d.kind == InputKind::Text) {
        return None;
    }
    spec.inputs
        .iter()
        .position(|d| d.kind == InputKind::Tensor && d.ragged == Some(Ragged::Pad))
}

/// The order in which to run the rows of a call whose padded tensor input `padded` would need
/// more than one pass: most values first (stable), so that each pass pads little and the
/// budget cuts few passes; `None` when one pass holds them all (they run as they come).
fn padded_order(
    spec: &GeneralSpec,
    readers: &[Option<Box<dyn input::InputReader + '_>>],
    limits: &CallLimits,
    padded: usize,
    n: usize,
    chunk: usize,
    budget: usize,
) -> Option<Vec<u32>> {
    let reader = readers.get(padded)?.as_deref()?;
    if Sizer::new(spec, readers, limits, budget)
        .plan(n, chunk)
        .len()
        <= 1
    {
        return None;
    }
    let keys: Vec<u64> = (0..n)
        .map(|j| reader.row_shape(j).map_or(0, |s| values_of(&s)))
        .collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(keys[i as usize]));
    Some(order)
}

/// The order in which to run `batch`'s rows (a permutation of `0..n`), longest text first, or
/// `None` to run them as they come: with `opts.sort_by_length` off, no text input, at most one
/// pass of rows or one row per pass, or a column missing (then reading it fails, naming the batch's columns).
/// Stable: rows of equal length keep their order.
fn length_order(
    spec: &GeneralSpec,
    columns: &[Vec<String>],
    batch: &RecordBatch,
    opts: &BatchOptions,
    chunk: usize,
) -> Option<Vec<u32>> {
    let n = batch.num_rows();
    if !opts.sort_by_length || chunk == 1 || n <= chunk || u32::try_from(n).is_err() {
        return None;
    }
    let text = spec.inputs.iter().position(|d| d.kind == InputKind::Text)?;
    if columns
        .iter()
        .flatten()
        .any(|c| batch.column_by_name(c).is_none())
    {
        return None;
    }
    let keys = input::text::sort_keys(batch.column_by_name(columns[text].first()?)?)?;
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(keys[i as usize]));
    Some(order)
}

/// The columns the inputs read, their rows in `order` (other columns are not copied).
fn take_rows(batch: &RecordBatch, columns: &[Vec<String>], order: &[u32]) -> Result<RecordBatch> {
    let schema = batch.schema_ref();
    let mut read: Vec<usize> = columns
        .iter()
        .flatten()
        .filter_map(|c| schema.index_of(c).ok())
        .collect();
    read.sort_unstable();
    read.dedup();
    let projected = batch
        .project(&read)
        .map_err(|e| internal("selecting the input columns", e))?;
    let indices = UInt32Array::from(order.to_vec());
    take_record_batch(&projected, &indices).map_err(|e| internal("sorting the rows by length", e))
}

/// `arrays` (rows in `order`) back in input order.
fn unsort(arrays: &[ArrayRef], order: &[u32]) -> Result<Vec<ArrayRef>> {
    let mut inverse = vec![0u32; order.len()];
    for (j, &i) in order.iter().enumerate() {
        inverse[i as usize] = j as u32;
    }
    let inverse = UInt32Array::from(inverse);
    arrays
        .iter()
        .map(|a| take(a.as_ref(), &inverse, None))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| internal("putting the rows back in input order", e))
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal {
        reason: format!("{what}: {e}"),
    }
}

/// The dtype of the mask `assemble` builds for the padded input `name`: its mask input's, or
/// int64 when only a `type_ids` input needs it (for its shape); `None` when nothing does.
fn mask_dtype(spec: &GeneralSpec, name: &str) -> Option<DType> {
    let generated: Vec<&InputDecl> = spec
        .inputs
        .iter()
        .filter(|d| d.kind.is_generated() && d.of.as_deref() == Some(name))
        .collect();
    if generated.is_empty() {
        return None;
    }
    Some(
        generated
            .iter()
            .find(|d| d.kind == InputKind::Mask)
            .map_or(DType::Int64, |m| m.dtype),
    )
}

/// The outputs a call computes: `outputs` by name, else `preset`'s ([`crate::spec::preset`]);
/// a preset the spec cannot give is a spec error naming `model`'s spec file.
fn select(
    spec: &GeneralSpec,
    preset: &str,
    outputs: Option<&[String]>,
    model: &std::path::Path,
) -> Result<Vec<usize>> {
    spec.select(preset, outputs).map_err(|e| match e {
        SelectError::Spec(reason) => Error::Spec {
            path: crate::spec::ModelSpec::default_path(model),
            reason,
        },
        SelectError::Config(reason) => Error::config(
            if outputs.is_some() {
                "outputs"
            } else {
                "preset"
            },
            reason,
        ),
    })
}

/// Each input's columns: the caller's `opts.columns[name]`, else the spec's. A lowered
/// version-1 spec's image input reads, when the caller names none: `input_column`, else the
/// batch's only column, else a column named `image`.
fn resolve_columns(
    spec: &GeneralSpec,
    opts: &BatchOptions,
    batch: &RecordBatch,
) -> Result<Vec<Vec<String>>> {
    for name in opts.columns.keys() {
        if !spec
            .inputs
            .iter()
            .any(|d| &d.name == name && !d.kind.is_generated())
        {
            return Err(Error::config(
                "columns",
                format!(
                    "no input is named `{name}` (the spec's inputs: {})",
                    spec.inputs
                        .iter()
                        .filter(|d| !d.kind.is_generated())
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    spec.inputs
        .iter()
        .map(|d| match opts.columns.get(&d.name) {
            Some(cols) if !d.kind.is_generated() => Ok(cols.clone()),
            _ if spec.lowered_from_v1 && d.kind == InputKind::Image => {
                only_column(batch, opts.input_column.as_deref())
            }
            _ => Ok(d.columns()),
        })
        .collect()
}

/// Version 1's rule for its one image column: `input_column` when set, else the batch's only
/// column, else the column named `image`.
fn only_column(batch: &RecordBatch, named: Option<&str>) -> Result<Vec<String>> {
    let schema = batch.schema_ref();
    match named {
        Some(n) => Ok(vec![n.to_string()]),
        None if batch.num_columns() == 1 => Ok(vec![schema.field(0).name().clone()]),
        None if schema.index_of(crate::spec::general::V1_INPUT).is_ok() => {
            Ok(vec![crate::spec::general::V1_INPUT.to_string()])
        }
        None => Err(Error::input(format!(
            "expected one image column, got {}; set input_column",
            batch.num_columns()
        ))),
    }
}

fn missing_column(batch: &RecordBatch, input: &str, column: &str) -> Error {
    Error::input(format!(
        "input `{input}` reads column `{column}`, which the batch does not have (it has {})",
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int32Type;
    use arrow_array::{Int32Array, StringArray};

    fn text_spec() -> GeneralSpec {
        let spec = r#"{"spec_version": 2,
            "inputs": [{"name": "ids", "kind": "text", "column": "t", "dtype": "int64",
                        "tokenizer": "tok.json", "max_length": 8}],
            "outputs": [{"name": "o"}]}"#;
        match Spec::from_json(spec).unwrap() {
            Spec::General(g) => g,
            Spec::Image(_) => unreachable!(),
        }
    }

    fn batch(texts: &[Option<&str>]) -> RecordBatch {
        let t: ArrayRef = Arc::new(StringArray::from(texts.to_vec()));
        let other: ArrayRef = Arc::new(Int32Array::from_iter_values(0..texts.len() as i32));
        RecordBatch::try_from_iter([("other", other), ("t", t)]).unwrap()
    }

    fn opts(batch_size: usize, sort_by_length: bool) -> BatchOptions {
        BatchOptions {
            batch_size,
            sort_by_length,
            ..BatchOptions::default()
        }
    }

    #[test]
    fn rows_run_longest_text_first_and_ties_keep_their_order() {
        let spec = text_spec();
        let cols = vec![vec!["t".to_string()]];
        // "é" is one character; a null counts 0.
        let b = batch(&[
            Some("ab"),
            None,
            Some("éé"),
            Some("abcd"),
            Some("x"),
            Some("ba"),
        ]);
        let order = length_order(&spec, &cols, &b, &opts(2, true), 2).unwrap();
        assert_eq!(order, [3, 0, 2, 5, 4, 1]);
        // Only the columns read travel, in the new order; unsort gives input order back.
        let sorted = take_rows(&b, &cols, &order).unwrap();
        assert_eq!(sorted.num_columns(), 1);
        let t = sorted.column(0).as_string::<i32>();
        assert_eq!(t.value(0), "abcd");
        let rows: ArrayRef = Arc::new(Int32Array::from_iter_values(
            order.iter().map(|&i| i as i32),
        ));
        let back = unsort(&[rows], &order).unwrap();
        let back: Vec<i32> = back[0].as_primitive::<Int32Type>().values().to_vec();
        assert_eq!(back, [0, 1, 2, 3, 4, 5]);
    }

    /// Rows whose shapes are known beforehand (as `row_shape` gives them).
    struct Shapes(Vec<Vec<i64>>);

    impl input::InputReader for Shapes {
        fn read(
            &self,
            _: std::ops::Range<usize>,
            _: usize,
        ) -> Vec<std::result::Result<input::RowTensor, String>> {
            unreachable!("planning reads no row")
        }
        fn row_shape(&self, i: usize) -> Option<Vec<i64>> {
            self.0.get(i).cloned()
        }
    }

    fn plan(spec: &str, shapes: Vec<Vec<i64>>, budget: usize, chunk: usize) -> Vec<Segment> {
        let spec = match Spec::from_json(spec).unwrap() {
            Spec::General(g) => g,
            Spec::Image(_) => unreachable!(),
        };
        let n = shapes.len();
        let mut readers: Vec<Option<Box<dyn input::InputReader>>> =
            vec![Some(Box::new(Shapes(shapes)))];
        readers.extend((1..spec.inputs.len()).map(|_| None));
        Sizer::new(&spec, &readers, &CallLimits::default(), budget).plan(n, chunk)
    }

    fn spans(segments: &[Segment]) -> Vec<(usize, usize, bool)> {
        segments
            .iter()
            .map(|s| (s.rows.start, s.rows.end, s.over_budget.is_some()))
            .collect()
    }

    const PAD2: &str = r#"{"spec_version": 2, "inputs": [{"name": "x", "shape": [-1, -1], "ragged": "pad"}],
        "outputs": [{"name": "o"}]}"#;
    const PAD1: &str = r#"{"spec_version": 2,
        "inputs": [{"name": "x", "shape": [-1], "ragged": "pad", "dtype": "int64"},
                   {"name": "m", "kind": "mask", "of": "x", "dtype": "int64"}],
        "outputs": [{"name": "o"}]}"#;

    #[test]
    fn padded_passes_are_cut_by_bytes_and_by_waste() {
        // [6000, 1] and [1, 6000] would pad to 72,000,000 values: each runs alone.
        let p = plan(
            PAD2,
            vec![vec![6000, 1], vec![1, 6000], vec![2, 2]],
            256 << 20,
            64,
        );
        assert_eq!(spans(&p), [(0, 1, false), (1, 3, false)]);
        assert!(p[0].cut && !p[1].cut);
        // One 2,000,000-value row (16 MB with its int64 mask) then rows of 4: it shares a pass
        // with 3 of them (4x waste), the rest run together.
        let mut rows = vec![vec![2_000_000]];
        rows.extend(std::iter::repeat_n(vec![4], 63));
        let p = plan(PAD1, rows, 256 << 20, 64);
        assert_eq!(spans(&p), [(0, 4, false), (4, 64, false)]);
        // Small passes are never cut for waste.
        let p = plan(PAD1, vec![vec![500], vec![1], vec![1]], 256 << 20, 64);
        assert_eq!(spans(&p), [(0, 3, false)]);
    }

    #[test]
    fn a_row_past_the_budget_is_its_own_segment_and_rows_still_cut_by_count() {
        // Value and mask: 16 bytes a padded int64 value; 1,000 bytes of budget.
        let p = plan(
            PAD1,
            vec![vec![10], vec![100], vec![10], vec![10]],
            1_000,
            2,
        );
        assert_eq!(spans(&p), [(0, 1, false), (1, 2, true), (2, 4, false)]);
        let (i, why) = p[1].over_budget.clone().unwrap();
        assert_eq!(i, 0);
        assert!(
            why.contains("shape [100] int64) takes 1,600 bytes"),
            "{why}"
        );
        assert!(!p[2].cut);
        // A fixed shape: rows per pass by bytes.
        let fixed = r#"{"spec_version": 2, "inputs": [{"name": "x", "shape": [10]}],
            "outputs": [{"name": "o"}]}"#;
        let p = plan(fixed, vec![vec![10]; 7], 120, 64);
        assert_eq!(spans(&p), [(0, 3, false), (3, 6, false), (6, 7, false)]);
        assert!(p[0].cut && p[1].cut && !p[2].cut);
    }

    #[test]
    fn rows_keep_their_order_when_sorting_saves_nothing() {
        let spec = text_spec();
        let cols = vec![vec!["t".to_string()]];
        let b = batch(&[Some("a"), Some("abc")]);
        let b3 = batch(&[Some("a"), Some("abc"), Some("ab")]);
        assert_eq!(
            length_order(&spec, &cols, &b3, &opts(2, true), 2).unwrap(),
            [1, 2, 0]
        );
        assert!(length_order(&spec, &cols, &b3, &opts(2, false), 2).is_none());
        // One pass holds every row, or each pass one row (`ragged: "single"`).
        assert!(length_order(&spec, &cols, &b, &opts(2, true), 2).is_none());
        assert!(length_order(&spec, &cols, &b3, &opts(1, true), 1).is_none());
        // A missing column is left to the reader's error.
        let missing = vec![vec!["nope".to_string()]];
        assert!(length_order(&spec, &missing, &b3, &opts(2, true), 2).is_none());
    }
}
