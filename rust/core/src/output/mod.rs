//! Outputs of the general path: one writer per declared output turns the selected part of
//! what the model returned (after `post`) into an Arrow column, one row per input row.
//! The Arrow type of each column comes from [`field`] alone, so a schema is known before any
//! model is loaded ([`crate::Scorer::describe`]).

use arrow_array::ArrayRef;
use arrow_schema::Field;

use crate::spec::general::OutputDecl;
use crate::value::Value;

/// Field metadata key marking a `vector` column (an ML `Vector` in the JVM).
pub const COLUMN_KEY: &str = "torchspark.column";

/// Builds one output column chunk by chunk.
pub trait OutputWriter: Send {
    /// Appends one chunk of rows: `good[i]` says whether row `i` of the chunk ran (a row
    /// that did not gets a null); `value` is the selected output for the rows that ran, in
    /// order (a tensor whose first dimension is their count, or a per-row list), `None` when
    /// none ran. Errors (the returned shape or kind differs from the declaration) name the
    /// output and both shapes.
    fn append_chunk(&mut self, value: Option<&Value>, good: &[bool]) -> Result<(), String>;
    /// The column of every row appended so far.
    fn finish(&mut self) -> ArrayRef;
}

/// The Arrow field of `decl`'s column (nullable; a `vector` carries [`COLUMN_KEY`]).
pub fn field(decl: &OutputDecl) -> Field {
    let _ = decl;
    unimplemented!("output fields: not built yet")
}

/// A writer for `decl`.
pub fn writer(decl: &OutputDecl) -> Box<dyn OutputWriter> {
    let _ = decl;
    unimplemented!("output writers: not built yet")
}
