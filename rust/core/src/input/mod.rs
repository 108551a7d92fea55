//! Inputs of the general path: one reader per declared input turns its column(s) of an Arrow
//! batch into per-row tensors ([`RowTensor`]), or a reason per row why not.
//!
//! - [`tensor`]: numbers: numeric scalars, (nested) lists, `FixedSizeList`, Spark ML vectors
//!   (dense and sparse), gathered scalar columns, `arrow.fixed_shape_tensor`;
//! - [`image`]: encoded images or Spark's image struct through [`image::preprocess`];
//! - [`text`]: strings through the model's Hugging Face tokenizer into token ids;
//! - [`assemble`]: good rows → the batched argument of `forward` (stack, pad + mask, list).
//!
//! A reason never holds the row number, input or column: the plan prefixes those
//! (``row 17: input `meta` (column `bmi`): expected 10 values, got 9``).

use std::ops::Range;

use arrow_array::ArrayRef;

use crate::input::image::preprocess::RowTimes;
use crate::limits::CallLimits;
use crate::spec::general::{DType, InputDecl, InputKind};
use crate::value::ModelInput;

/// Runs `$body` with `$t` the Rust type of `$dtype` (a [`DType`]); the readers and the
/// assembly use it so that each dtype's code is written once, generically.
macro_rules! with_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::Float32 => {
                type $t = f32;
                $body
            }
            DType::Float64 => {
                type $t = f64;
                $body
            }
            DType::Int64 => {
                type $t = i64;
                $body
            }
            DType::Int32 => {
                type $t = i32;
                $body
            }
            DType::Uint8 => {
                type $t = u8;
                $body
            }
            DType::Bool => {
                type $t = bool;
                $body
            }
        }
    };
}

pub mod assemble;
pub mod image;
pub mod tensor;
pub mod text;

/// One row of one input: values in the declared dtype, row-major, and their per-row shape.
#[derive(Debug, Clone, PartialEq)]
pub struct RowTensor {
    pub data: RowData,
    /// Per-row shape (the declared one, with each `-1` resolved for this row).
    pub shape: Vec<i64>,
    /// Decode and resize time (images; zero otherwise).
    pub times: RowTimes,
}

/// A row's values in the input's declared dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum RowData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

impl RowData {
    pub fn len(&self) -> usize {
        match self {
            RowData::F32(v) => v.len(),
            RowData::F64(v) => v.len(),
            RowData::I64(v) => v.len(),
            RowData::I32(v) => v.len(),
            RowData::U8(v) => v.len(),
            RowData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads one declared input from its columns.
pub trait InputReader: Send + Sync {
    /// Rows `rows` of the batch, in order: each a tensor of the declared dtype and shape, or
    /// the reason it cannot be read (null, wrong length or shape, NaN under `nan: "error"`,
    /// a value the dtype cannot hold, an image that does not decode). `threads` bounds the
    /// threads used (images decode in parallel).
    fn read(&self, rows: Range<usize>, threads: usize) -> Vec<Result<RowTensor, String>>;

    /// For an input of fixed shape, [`InputReader::read`] into one buffer: `None` when this
    /// reader has no such path (the caller then uses `read`). Saves an allocation per row
    /// and the stacking copy ([`assemble::assemble_dense`] takes the result).
    fn read_dense(&self, rows: Range<usize>, threads: usize) -> Option<DenseRows> {
        let _ = (rows, threads);
        None
    }

    /// How many rows read so far were cut to fit (a text input's `max_length`); 0 for
    /// inputs that never cut.
    fn truncated(&self) -> u64 {
        0
    }

    /// Row `i`'s per-row shape as far as it is known before the row is read (the declared
    /// one, list offsets, a vector's size, an image's header), for cutting chunks by bytes:
    /// cheap, never allocates the row. `None` when it is not known beforehand (text: at most
    /// `max_length`) or the row cannot be read (reading it says why).
    fn row_shape(&self, i: usize) -> Option<Vec<i64>> {
        let _ = i;
        None
    }
}

/// Rows of a fixed-shape input in one buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseRows {
    /// `[n, ...shape]` values, row-major, in the declared dtype; a bad row's slot is zeros.
    pub data: RowData,
    /// Each row's decode times, or the reason it cannot be read (as [`InputReader::read`]).
    pub status: Vec<Result<RowTimes, String>>,
}

/// The reader for `decl` over `columns` (its column(s) of the batch, in declared order).
/// `limits` are the caller's per-row limits (each 0: the spec's; [`crate::limits`]);
/// `tokenizer` is the model's tokenizer for a text input ([`crate::model::Model::tokenizer`]).
/// Errors (a column type the input cannot read) fail the whole batch and name the column and
/// its type.
pub fn reader<'a>(
    decl: &'a InputDecl,
    columns: Vec<(&'a str, &'a ArrayRef)>,
    limits: &CallLimits,
    tokenizer: Option<&'a text::TextTokenizer>,
) -> Result<Box<dyn InputReader + 'a>, String> {
    let max_elements = decl.row_element_limit(limits.max_row_elements);
    match decl.kind {
        InputKind::Tensor => tensor::reader(decl, columns, max_elements),
        InputKind::Image => image::reader(decl, columns, limits.max_pixels, max_elements),
        InputKind::Text => match tokenizer {
            Some(tok) => text::reader(
                decl,
                columns,
                tok,
                decl.text_byte_limit(limits.max_text_bytes),
            ),
            None => Err(format!(
                "input `{}`: no tokenizer was loaded for this text input",
                decl.name
            )),
        },
        InputKind::Mask | InputKind::TypeIds => Err(format!(
            "input `{}` is generated ({}), not read",
            decl.name,
            if decl.kind == InputKind::Mask {
                "a mask"
            } else {
                "type ids"
            }
        )),
    }
}

/// One chunk of one input as read: per-row tensors, or (fixed shapes) one dense buffer.
#[derive(Debug)]
pub enum Chunk {
    Rows(Vec<Result<RowTensor, String>>),
    Dense(DenseRows),
}

impl Chunk {
    /// Rows `rows` of `decl` through `reader`: densely when the shape is fixed and the reader
    /// can, else row by row.
    pub fn read(
        reader: &dyn InputReader,
        decl: &InputDecl,
        rows: Range<usize>,
        threads: usize,
    ) -> Chunk {
        if decl.ragged.is_none()
            && let Some(d) = reader.read_dense(rows.clone(), threads)
        {
            return Chunk::Dense(d);
        }
        Chunk::Rows(reader.read(rows, threads))
    }

    /// Each row's decode times, or the reason it cannot be read.
    pub fn status(&self) -> Vec<Result<RowTimes, &String>> {
        match self {
            Chunk::Rows(rows) => rows.iter().map(|r| r.as_ref().map(|t| t.times)).collect(),
            Chunk::Dense(d) => d.status.iter().map(|s| s.as_ref().copied()).collect(),
        }
    }

    /// The rows with `good[i]` → `forward`'s argument (and the mask, for a padded input that
    /// has one; see [`assemble::assemble`]).
    pub fn assemble(
        self,
        decl: &InputDecl,
        good: &[bool],
        mask_dtype: Option<DType>,
    ) -> Result<(ModelInput, Option<tch::Tensor>), String> {
        match self {
            Chunk::Dense(d) => assemble::assemble_dense(decl, d.data, good).map(|a| (a, None)),
            Chunk::Rows(rows) => {
                let ok: Vec<&RowTensor> = rows
                    .iter()
                    .zip(good)
                    .filter(|(_, g)| **g)
                    .filter_map(|(r, _)| r.as_ref().ok())
                    .collect();
                assemble::assemble(decl, &ok, mask_dtype)
            }
        }
    }
}
