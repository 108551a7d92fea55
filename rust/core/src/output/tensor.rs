//! `scalar`, `vector` and `array` columns: a batch tensor `[rows, ...]` after `post`, its
//! per-row shape checked against the declaration, copied out in one bulk copy per chunk and
//! written as a primitive column or as lists nested once per per-row dimension.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{NullBufferBuilder, OffsetBufferBuilder};
use arrow_array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, ListArray};
use arrow_schema::Field;
use tch::kind::Element;
use tch::{Kind, Tensor};

use super::{OutputWriter, post, shape_text};
use crate::spec::general::{ColumnKind, DType, OutputDecl, PostOp};
use crate::value::Value;

/// Column values of one element type, flat and row-major.
pub(crate) enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

impl Buf {
    pub(crate) fn new(dtype: DType) -> Buf {
        match dtype {
            DType::Float32 => Buf::F32(Vec::new()),
            DType::Float64 => Buf::F64(Vec::new()),
            DType::Int64 => Buf::I64(Vec::new()),
            DType::Int32 | DType::Uint8 | DType::Bool => Buf::I32(Vec::new()),
        }
    }

    /// Appends every value of `t` (row-major), converted to `dtype` as `Tensor.to(dtype)`
    /// would (uint8 wraps and bool is 0/1 before widening to int32), in one copy.
    pub(crate) fn extend(&mut self, t: &Tensor, dtype: DType) -> Result<(), String> {
        let t = cast(t, dtype).map_err(|e| format!("converting to {dtype}: {e}"))?;
        let n = t.numel();
        match self {
            Buf::F32(v) => copy_into(v, &t, n),
            Buf::F64(v) => copy_into(v, &t, n),
            Buf::I32(v) => copy_into(v, &t, n),
            Buf::I64(v) => copy_into(v, &t, n),
        }
    }

    /// Moves the last `good.iter().filter(..).count()` values to the positions of the good
    /// rows among `good.len()` new slots (a row that did not run gets 0, under a null).
    fn spread(&mut self, good: &[bool]) {
        match self {
            Buf::F32(v) => spread(v, good),
            Buf::F64(v) => spread(v, good),
            Buf::I32(v) => spread(v, good),
            Buf::I64(v) => spread(v, good),
        }
    }

    /// The values as an Arrow array (the buffer starts afresh).
    pub(crate) fn take_array(&mut self, nulls: &mut NullBufferBuilder) -> ArrayRef {
        let nulls = nulls.finish();
        match self {
            Buf::F32(v) => Arc::new(Float32Array::new(std::mem::take(v).into(), nulls)),
            Buf::F64(v) => Arc::new(Float64Array::new(std::mem::take(v).into(), nulls)),
            Buf::I32(v) => Arc::new(Int32Array::new(std::mem::take(v).into(), nulls)),
            Buf::I64(v) => Arc::new(Int64Array::new(std::mem::take(v).into(), nulls)),
        }
    }
}

fn cast(t: &Tensor, dtype: DType) -> Result<Tensor, tch::TchError> {
    match dtype {
        DType::Float32 => t.f_to_kind(Kind::Float),
        DType::Float64 => t.f_to_kind(Kind::Double),
        DType::Int64 => t.f_to_kind(Kind::Int64),
        DType::Int32 => t.f_to_kind(Kind::Int),
        DType::Uint8 => t.f_to_kind(Kind::Uint8)?.f_to_kind(Kind::Int),
        DType::Bool => t.f_to_kind(Kind::Bool)?.f_to_kind(Kind::Int),
    }
}

fn copy_into<T: Element + Copy>(v: &mut Vec<T>, t: &Tensor, n: usize) -> Result<(), String> {
    let start = v.len();
    // The model chose `n` (from inputs the budget bounds): a failed allocation is an error.
    v.try_reserve_exact(n).map_err(|_| {
        format!(
            "copying the output: {n} values ({} bytes) cannot be allocated",
            n.saturating_mul(std::mem::size_of::<T>())
        )
    })?;
    v.resize(start + n, T::ZERO);
    // libtorch makes the tensor contiguous (and moves it to the CPU) and does one memcpy.
    t.f_copy_data(&mut v[start..], n)
        .map_err(|e| format!("copying the output: {e}"))
}

fn spread<T: Copy + Default>(v: &mut Vec<T>, good: &[bool]) {
    let count = good.iter().filter(|&&g| g).count();
    let start = v.len() - count.min(v.len());
    v.resize(start + good.len(), T::default());
    // Back to front: a good row's slot is never before its value's current place.
    let mut j = count;
    for (i, &g) in good.iter().enumerate().rev() {
        if g {
            j -= 1;
            v[start + i] = v[start + j];
        } else {
            v[start + i] = T::default();
        }
    }
}

/// One list level of a column: its offsets and their running total, checked against Arrow's
/// i32 before each chunk is appended (so that `take_list` cannot overflow).
pub(crate) struct Level {
    offsets: OffsetBufferBuilder<i32>,
    total: usize,
}

impl Level {
    pub(crate) fn new() -> Level {
        Level {
            offsets: OffsetBufferBuilder::new(0),
            total: 0,
        }
    }

    /// Whether `more` further entries still fit.
    pub(crate) fn check(&self, more: usize) -> Result<(), String> {
        match self
            .total
            .checked_add(more)
            .and_then(|n| i32::try_from(n).ok())
        {
            Some(_) => Ok(()),
            None => Err(format!(
                "the column would hold more than Arrow's 2^31 - 1 list entries in one batch ({} \
                 + {more}); use smaller batches",
                self.total
            )),
        }
    }

    pub(crate) fn push(&mut self, len: usize) {
        self.total += len;
        self.offsets.push_length(len);
    }

    /// A list array over `child`, null where `nulls` says (the level starts afresh).
    pub(crate) fn take_list(&mut self, child: ArrayRef, nulls: &mut NullBufferBuilder) -> ArrayRef {
        let offsets = std::mem::replace(self, Level::new()).offsets;
        let item = Arc::new(Field::new_list_field(child.data_type().clone(), true));
        // Within i32 (`check`), growing from 0 and ending at the child's length: built so.
        Arc::new(ListArray::new(
            item,
            offsets.finish(),
            child,
            nulls.finish(),
        ))
    }
}

/// A `scalar`, `vector` or `array` column: per chunk a tensor `[rows, ...]`, `post` applied,
/// the per-row shape checked (scalar `[]`/`[1]`, vector 1-D, array the declared rank and fixed
/// sizes), values converted to the column dtype in one bulk copy.
pub struct TensorWriter {
    column: ColumnKind,
    dtype: DType,
    shape: Option<Vec<i64>>,
    post: Vec<PostOp>,
    /// How many lists wrap a value (0: a primitive column).
    depth: usize,
    values: Buf,
    /// One per nesting level, outermost first.
    levels: Vec<Level>,
    valid: NullBufferBuilder,
}

impl TensorWriter {
    pub fn new(decl: &OutputDecl) -> TensorWriter {
        let dtype = decl.dtype();
        let depth = decl.rank();
        TensorWriter {
            column: decl.column,
            dtype,
            shape: decl.shape.clone(),
            post: decl.post.clone(),
            depth,
            values: Buf::new(dtype),
            levels: (0..depth).map(|_| Level::new()).collect(),
            valid: NullBufferBuilder::new(0),
        }
    }

    /// What the declaration asks for, for messages.
    fn declared(&self) -> String {
        match (self.column, &self.shape) {
            (ColumnKind::Scalar, _) => "a scalar per row ([] or [1])".into(),
            (ColumnKind::Vector, Some(s)) => format!("a vector {} per row", shape_text(s)),
            (ColumnKind::Vector, None) => "a vector per row".into(),
            (_, Some(s)) => format!("an array of shape {} per row", shape_text(s)),
            (_, None) => "an array per row".into(),
        }
    }

    /// The per-row shape written, from the per-row shape after `post`; `None` if it does not
    /// fit the declaration.
    fn written(&self, row: &[i64]) -> Option<Vec<i64>> {
        let fits = |declared: &[i64]| {
            declared.len() == row.len()
                && declared.iter().zip(row).all(|(&d, &r)| d == -1 || d == r)
        };
        match self.column {
            ColumnKind::Scalar => (row.is_empty() || row == [1]).then(Vec::new),
            ColumnKind::Vector => {
                (row.len() == 1 && self.shape.as_deref().is_none_or(fits)).then(|| row.to_vec())
            }
            _ => match &self.shape {
                Some(s) => fits(s).then(|| row.to_vec()),
                None => Some(vec![row.iter().product()]),
            },
        }
    }

    fn append_nulls(&mut self, rows: usize) {
        if self.depth == 0 {
            self.values.spread(&vec![false; rows]);
        } else if let Some(level) = self.levels.first_mut() {
            (0..rows).for_each(|_| level.push(0));
        }
        self.valid.append_n_nulls(rows);
    }
}

/// "a tensor [4, 3, 8] (per row [3, 8])", and what `post` made of it.
pub(crate) fn returned(raw: &[i64], after: Option<&[i64]>, post: &[PostOp]) -> String {
    let per_row = |s: &[i64]| shape_text(s.get(1..).unwrap_or_default());
    let mut text = format!("a tensor {} (per row {})", shape_text(raw), per_row(raw));
    if let Some(after) = after
        && !post.is_empty()
    {
        text.push_str(&format!(
            ", after post ({}) {} (per row {})",
            post::describe(post),
            shape_text(after),
            per_row(after)
        ));
    }
    text
}

/// The batch tensor of a chunk whose `count` rows ran: `value` must be a tensor `[count, ...]`.
pub(crate) fn batch_tensor<'v>(
    value: &'v Value,
    count: usize,
    declared: &str,
) -> Result<&'v Tensor, String> {
    let t = match value {
        Value::Tensor(t) => t,
        Value::List(_) | Value::Dict(_) => {
            return Err(format!(
                "declared {declared}, the model returned {} (select one tensor with `from`)",
                value.describe()
            ));
        }
        _ => {
            return Err(format!(
                "declared {declared}, the model returned {}",
                value.describe()
            ));
        }
    };
    let size = t.size();
    match size.first() {
        Some(&n) if n == count as i64 => Ok(t),
        Some(&n) => Err(format!(
            "the model returned a tensor {} for {count} rows (its first dimension must be the \
             row: {n} != {count})",
            shape_text(&size)
        )),
        None => Err(format!(
            "declared {declared}, the model returned a 0-d tensor (no row dimension)"
        )),
    }
}

impl OutputWriter for TensorWriter {
    fn append_chunk(
        &mut self,
        value: Option<&Value>,
        good: &[bool],
        masks: &HashMap<String, Tensor>,
    ) -> Result<(), String> {
        let count = good.iter().filter(|&&g| g).count();
        let Some(value) = value else {
            if count > 0 {
                return Err(format!("no output for the {count} rows that ran"));
            }
            self.append_nulls(good.len());
            return Ok(());
        };
        let t = batch_tensor(value, count, &self.declared())?;
        let p = post::apply(t, &self.post, masks)?;
        let size = p.size();
        let row = &size[1..];
        let Some(w) = self.written(row) else {
            return Err(format!(
                "declared {}, the model returned {}",
                self.declared(),
                returned(&t.size(), Some(&size), &self.post)
            ));
        };
        if self.depth == 0 {
            self.values.extend(&p, self.dtype)?;
            self.values.spread(good);
            self.valid.append_slice(good);
            return Ok(());
        }
        let w: Vec<usize> = w.iter().map(|&d| d as usize).collect();
        // Per good row, level l gains w[0] * .. * w[l-1] lists of w[l] entries each.
        let lists: Vec<usize> = (0..self.depth).map(|l| w[..l].iter().product()).collect();
        for (l, level) in self.levels.iter().enumerate() {
            level.check(count * lists[l] * w[l])?;
        }
        self.values.extend(&p, self.dtype)?;
        for &g in good {
            if !g {
                self.levels[0].push(0);
                continue;
            }
            for (l, level) in self.levels.iter_mut().enumerate() {
                (0..lists[l]).for_each(|_| level.push(w[l]));
            }
        }
        self.valid.append_slice(good);
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        if self.depth == 0 {
            return self.values.take_array(&mut self.valid);
        }
        let mut array = self.values.take_array(&mut NullBufferBuilder::new(0));
        for l in (1..self.depth).rev() {
            array = self.levels[l].take_list(array, &mut NullBufferBuilder::new(0));
        }
        self.levels[0].take_list(array, &mut self.valid)
    }
}
