//! Outputs of the general path: one writer per declared output turns the selected part of
//! what the model returned (after `post`) into an Arrow column, one row per input row.
//! The Arrow type of each column comes from [`field`] alone, so a schema is known before any
//! model is loaded ([`crate::Scorer::describe`]).
//!
//! | `column` | per row (after `post`) | Arrow |
//! |---|---|---|
//! | `scalar` | `[]` or `[1]` | Float64 (default), Float32, Int64 (default after argmax), Int32 |
//! | `vector` | `[K]` | List<Float64> (or Float32 with `dtype`), field metadata `torchspark.column = vector` |
//! | `array` | rank = `shape`'s length (absent: flattened to 1-D) | nested List of Float32 (default), Int32 (default after argmax), Float64, Int64 |
//! | `structs` | a dict of `[K, ...]` tensors | List<Struct<fields>> |
//! | `png` | `[H, W]` class map in 0..=255 | Binary (8-bit greyscale PNG) |
//! | `prediction` | `[K]` class vector | Float64: the argmax ([`classes`]) |
//! | `label` | `[K]` class vector | Utf8: `labels[argmax]` |
//! | `top_k` | `[K]` class vector | List<Struct<index Int32, label Utf8, probability Float32>> |
//!
//! `uint8` is written as Int32 (Spark has no unsigned byte). Every field and list item is
//! nullable; a row that did not run is null. docs/models-outputs.md is the user reference.

pub mod classes;
mod png;
mod post;
mod structs;
mod tensor;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, Fields};
use tch::Tensor;

use crate::spec::general::{ColumnKind, DType, FieldDecl, OutputDecl};
use crate::value::Value;

/// Field metadata key marking a `vector` column (an ML `Vector` in the JVM).
pub const COLUMN_KEY: &str = "torchspark.column";

/// Builds one output column chunk by chunk.
pub trait OutputWriter: Send {
    /// Appends one chunk of rows: `good[i]` says whether row `i` of the chunk ran (a row
    /// that did not gets a null); `value` is the selected output for the rows that ran, in
    /// order (a tensor whose first dimension is their count, or a per-row list), `None` when
    /// none ran. `masks`: the chunk's masks by mask input name (`[count, T]`, the rows that
    /// ran), which pooling `post` ops read. Errors (the returned shape or kind differs from the
    /// declaration) name the output and both shapes.
    fn append_chunk(
        &mut self,
        value: Option<&Value>,
        good: &[bool],
        masks: &HashMap<String, Tensor>,
    ) -> Result<(), String>;
    /// The column of every row appended so far (the writer starts afresh).
    fn finish(&mut self) -> ArrayRef;
}

/// The Arrow field of `decl`'s column (nullable; a `vector` carries [`COLUMN_KEY`]).
pub fn field(decl: &OutputDecl) -> Field {
    let name = decl.name.as_str();
    match decl.column {
        ColumnKind::Scalar => Field::new(name, arrow_type(decl.dtype()), true),
        ColumnKind::Vector => {
            Field::new(name, nested(arrow_type(decl.dtype()), 1), true).with_metadata(
                HashMap::from([(COLUMN_KEY.to_string(), "vector".to_string())]),
            )
        }
        ColumnKind::Array => Field::new(name, nested(arrow_type(decl.dtype()), decl.rank()), true),
        ColumnKind::Structs => Field::new(
            name,
            nested(DataType::Struct(struct_fields(&decl.fields)), 1),
            true,
        ),
        ColumnKind::Png => Field::new(name, DataType::Binary, true),
        ColumnKind::Prediction | ColumnKind::Label | ColumnKind::TopK => {
            Field::new(name, classes::class_type(decl.column), true)
        }
    }
}

/// A writer for `decl`; `top_k` is the call's (the `top_k` column's k).
pub fn writer(decl: &OutputDecl, top_k: usize) -> Box<dyn OutputWriter> {
    match decl.column {
        ColumnKind::Prediction | ColumnKind::Label | ColumnKind::TopK => {
            Box::new(classes::ClassWriter::new(decl, top_k))
        }
        ColumnKind::Structs => Box::new(structs::StructsWriter::new(decl)),
        ColumnKind::Png => Box::new(png::PngWriter::new(decl)),
        _ => Box::new(tensor::TensorWriter::new(decl)),
    }
}

/// The Arrow type of a column element of `dtype` (uint8 and bool widen to Int32: Spark has
/// neither an unsigned byte nor, in these columns, booleans).
pub(crate) fn arrow_type(dtype: DType) -> DataType {
    match dtype {
        DType::Float32 => DataType::Float32,
        DType::Float64 => DataType::Float64,
        DType::Int64 => DataType::Int64,
        DType::Int32 | DType::Uint8 | DType::Bool => DataType::Int32,
    }
}

/// `item` wrapped in `depth` nullable lists (item field "item", as Arrow and Spark name it).
pub(crate) fn nested(item: DataType, depth: usize) -> DataType {
    (0..depth).fold(item, |t, _| {
        DataType::List(Arc::new(Field::new_list_field(t, true)))
    })
}

/// A `structs` column's struct fields: a scalar, or a list when the field's shape is `[N]`.
pub(crate) fn struct_fields(fields: &[FieldDecl]) -> Fields {
    fields
        .iter()
        .map(|f| {
            let t = arrow_type(f.dtype());
            Field::new(&f.name, nested(t, f.shape.len().min(1)), true)
        })
        .collect()
}

/// How a per-row shape is written in messages: `[3, 8]`.
pub(crate) fn shape_text(s: &[i64]) -> String {
    format!("{s:?}")
}
