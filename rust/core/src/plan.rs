//! The general path: any declared inputs → `forward` → any declared outputs.
//!
//! For each chunk of `batch_size` rows: every input's reader reads its rows (a row is good
//! only if all its inputs are); the good rows are assembled into `forward`'s arguments (stack,
//! pad + mask, list) and submitted to the engine as one job (all on the caller's thread); once
//! its forward pass is back ([`crate::Pending::wait`]), each output's writer takes its part of
//! the result (`from`, `post`) and writes a column, a null for each bad row. Bad rows carry their reason
//! in `error`: ``row 17: input `meta` (column `bmi`): expected 10 values, got 9``.

use std::collections::{HashMap, VecDeque};
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
use crate::model::Model;
use crate::output::{self, OutputWriter};
use crate::spec::Spec;
use crate::spec::general::{DType, GeneralSpec, InputDecl, InputKind, Ragged};
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
        task: TaskId,
    ) -> Result<GeneralPending> {
        let spec = self.model().general();
        let batch_size = self.batch_rows(opts);
        let n = batch.num_rows();
        let columns = resolve_columns(spec, opts)?;
        // `ragged: "single"` runs one row per forward pass.
        let chunk = if spec.inputs.iter().any(|d| d.ragged == Some(Ragged::Single)) {
            1
        } else {
            batch_size
        };
        // Longest text first, so that each pass pads little; undone in `finish`.
        let order = length_order(spec, &columns, batch, opts, chunk);
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
        let mut readers = Vec::new();
        for (decl, cols) in spec.inputs.iter().zip(&columns) {
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
                input::reader(
                    decl,
                    arrays,
                    opts.max_pixels,
                    self.model().tokenizer(&decl.name),
                )
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
        let mut times = StageTimes::default();
        let fail = |reason: String| Error::Inference {
            path: self.model().path().to_path_buf(),
            reason,
        };
        let mut chunks = VecDeque::with_capacity(n.div_ceil(chunk));
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            let started = Instant::now();
            // Per input: this chunk's rows, or None for a mask.
            let mut read: Vec<Option<input::Chunk>> = readers
                .iter()
                .zip(&spec.inputs)
                .map(|(r, decl)| {
                    r.as_ref()
                        .map(|r| input::Chunk::read(r.as_ref(), decl, start..end, self.threads()))
                })
                .collect();
            let mut good = vec![true; end - start];
            let mut reasons: Vec<Option<String>> = vec![None; end - start];
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
                    max_batch: chunk,
                    work: Work::General { args: ordered },
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
            start = end;
        }
        let truncated = spec
            .inputs
            .iter()
            .any(|d| d.kind == InputKind::Text)
            .then(|| readers.iter().flatten().map(|r| r.truncated()).sum());
        Ok(GeneralPending {
            model: Arc::clone(self.model_arc()),
            writers: spec.outputs.iter().map(output::writer).collect(),
            error: StringBuilder::with_capacity(n, 0),
            chunks,
            order,
            truncated,
            times,
        })
    }

    /// The schema [`Scorer::predict`] returns for the spec `spec_json`, without loading the
    /// model: one field per output, then `error`; its metadata [`INPUTS_KEY`] lists the inputs.
    pub fn describe(spec_json: &str) -> Result<SchemaRef> {
        let spec = Spec::from_json(spec_json).map_err(|reason| Error::Spec {
            path: "<spec>".into(),
            reason,
        })?;
        Ok(output_schema(&spec.general()))
    }
}

/// A submitted general batch: its chunks' masks, row errors and tickets, in order, and the
/// writers the finished chunks went to.
pub(crate) struct GeneralPending {
    model: Arc<Model>,
    writers: Vec<Box<dyn OutputWriter>>,
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
            for (decl, w) in spec.outputs.iter().zip(self.writers.iter_mut()) {
                let selected = match (&value, &decl.from) {
                    (None, _) => None,
                    (Some(v), None) => Some(v),
                    (Some(v), Some(path)) => Some(
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
        let mut schema = self.times.annotate(output_schema(spec));
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

/// Output fields, `error`, and the inputs as metadata.
pub fn output_schema(spec: &GeneralSpec) -> SchemaRef {
    let mut fields: Vec<Field> = spec.outputs.iter().map(output::field).collect();
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

/// Each input's columns: the caller's `opts.columns[name]`, else the spec's.
fn resolve_columns(spec: &GeneralSpec, opts: &BatchOptions) -> Result<Vec<Vec<String>>> {
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
    Ok(spec
        .inputs
        .iter()
        .map(|d| match opts.columns.get(&d.name) {
            Some(cols) if !d.kind.is_generated() => cols.clone(),
            _ => d.columns(),
        })
        .collect())
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
