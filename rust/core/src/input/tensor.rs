//! Numbers from Arrow columns into per-row tensors of the declared dtype and shape.
//!
//! Accepted columns (docs/models-inputs.md is the user's reference):
//! - a numeric or bool scalar column, for shape `[]` or `[1]`;
//! - several such columns gathered into one `[K]` input (`column: ["a", "b", ...]`);
//! - `List` / `LargeList` / `FixedSizeList`, nested to any depth, of numbers or bools: a flat
//!   list is reshaped to the declared shape (one `-1` resolved from its length); a list nested
//!   as deep as the shape has dimensions is checked dimension by dimension (rectangular);
//! - Spark's ML vector (`struct<type: int8, size: int32, indices: list<int32>,
//!   values: list<double>>`, type 0 sparse, 1 dense), densified, read as a flat list;
//! - `arrow.fixed_shape_tensor` (a `FixedSizeList` read as a flat list; [`check_field`] checks
//!   its declared shape against the extension's).
//!
//! Values convert to the declared dtype: any number to a float (a float64 beyond float32's
//! range is an error, not infinity); to an integer dtype only if integral and in range; to bool
//! only 0 or 1. Each row costs one pass over its values: the source and target types are
//! matched once per row, then a monomorphic loop converts (no dispatch per value).

use std::borrow::Cow;
use std::fmt::Display;
use std::ops::Range;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, BooleanArray, PrimitiveArray, StructArray};
use arrow_schema::{DataType, Field};

use super::{DenseRows, InputReader, RowData, RowTensor};
use crate::input::image::preprocess::RowTimes;
use crate::spec::general::{DType, InputDecl, NanPolicy};

/// What a tensor input accepts, for the batch error of a column it cannot read.
const ACCEPTED: &str = "numeric or bool scalars (shape [] or [1], or several gathered into \
                        one [K] input), List / LargeList / FixedSizeList of numbers or bools \
                        (nested to any depth), Spark ML vectors, arrow.fixed_shape_tensor";

/// The extension name of Arrow's canonical fixed-shape tensor.
pub const FIXED_SHAPE_TENSOR: &str = "arrow.fixed_shape_tensor";

/// See [`super::reader`]. One column: a scalar, (nested) list, vector or fixed-shape tensor
/// column; several: numeric scalar columns gathered, in order, into the `[K]` input.
pub fn reader<'a>(
    decl: &'a InputDecl,
    columns: Vec<(&'a str, &'a ArrayRef)>,
    max_elements: u64,
) -> Result<Box<dyn InputReader + 'a>, String> {
    let source = match &columns[..] {
        [] => return Err("no column to read".into()),
        &[(_, col)] => single_source(decl, col.as_ref())?,
        many => {
            if decl.shape != [many.len() as i64] {
                return Err(format!(
                    "{} scalar columns are gathered, so the shape must be [{}], not {:?}",
                    many.len(),
                    many.len(),
                    decl.shape
                ));
            }
            let leaves = many
                .iter()
                .map(|&(name, col)| {
                    Leaf::of(col.as_ref()).map(|l| (name, l)).ok_or_else(|| {
                        format!(
                            "column `{name}` has type {}; a gathered column holds numeric or \
                             bool scalars",
                            col.data_type()
                        )
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Source::Gather(leaves)
        }
    };
    Ok(Box::new(TensorReader {
        shape: &decl.shape,
        dtype: decl.dtype,
        nan_error: decl.nan == NanPolicy::Error,
        max_elements,
        source,
    }))
}

/// Checks a column's field against `decl` where its metadata says more than its Arrow type:
/// an `arrow.fixed_shape_tensor` column's `shape` must equal the declared one (a `-1` matches
/// any size), and a non-identity `permutation` is refused (the values would not be row-major
/// in the declared order). Other fields pass. The reader alone cannot see field metadata.
pub fn check_field(decl: &InputDecl, field: &Field) -> Result<(), String> {
    let meta = field.metadata();
    if meta.get("ARROW:extension:name").map(String::as_str) != Some(FIXED_SHAPE_TENSOR) {
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct Ext {
        shape: Vec<i64>,
        #[serde(default)]
        permutation: Option<Vec<i64>>,
    }
    let text = meta
        .get("ARROW:extension:metadata")
        .map_or("", String::as_str);
    let ext: Ext = serde_json::from_str(text).map_err(|e| {
        format!("{FIXED_SHAPE_TENSOR} column with unreadable metadata {text:?}: {e}")
    })?;
    if let Some(p) = &ext.permutation
        && p.iter().enumerate().any(|(i, &d)| d != i as i64)
    {
        return Err(format!(
            "{FIXED_SHAPE_TENSOR} column has permutation {p:?}; only the identity (row-major \
             values) is read"
        ));
    }
    let matches = ext.shape.len() == decl.shape.len()
        && ext
            .shape
            .iter()
            .zip(&decl.shape)
            .all(|(&e, &d)| d == -1 || e == d);
    if !matches {
        return Err(format!(
            "the column is a {FIXED_SHAPE_TENSOR} of shape {:?}, but the input's shape is {:?}",
            ext.shape, decl.shape
        ));
    }
    Ok(())
}

struct TensorReader<'a> {
    shape: &'a [i64],
    dtype: DType,
    nan_error: bool,
    /// The most values a row may hold (`max_row_elements`): checked before a row is copied
    /// or a sparse vector expanded.
    max_elements: u64,
    source: Source<'a>,
}

/// Where a row's values come from.
enum Source<'a> {
    /// One value per row (shape `[]` or `[1]`).
    Scalar(Leaf<'a>),
    /// One value per row from each column, in order (shape `[K]`).
    Gather(Vec<(&'a str, Leaf<'a>)>),
    /// List levels over a leaf array; one level is read flat and reshaped, more must be as
    /// many as the shape's dimensions.
    Nested {
        levels: Vec<Level<'a>>,
        leaf: Leaf<'a>,
    },
    /// Spark's ML vector struct.
    Vector(VectorCols<'a>),
}

/// One list level: where each of its values' children lie in the next level.
enum Level<'a> {
    List(&'a [i32], &'a dyn Array),
    Large(&'a [i64], &'a dyn Array),
    Fixed(usize, &'a dyn Array),
}

impl Level<'_> {
    fn array(&self) -> &dyn Array {
        match self {
            Level::List(_, a) | Level::Large(_, a) | Level::Fixed(_, a) => *a,
        }
    }

    /// The child range of value `i`.
    #[inline]
    fn span(&self, i: usize) -> (usize, usize) {
        match self {
            Level::List(o, _) => (o[i] as usize, o[i + 1] as usize),
            Level::Large(o, _) => (o[i] as usize, o[i + 1] as usize),
            Level::Fixed(n, _) => (i * n, (i + 1) * n),
        }
    }
}

/// A leaf array of numbers or bools.
enum Leaf<'a> {
    I8(&'a PrimitiveArray<Int8Type>),
    I16(&'a PrimitiveArray<Int16Type>),
    I32(&'a PrimitiveArray<Int32Type>),
    I64(&'a PrimitiveArray<Int64Type>),
    U8(&'a PrimitiveArray<UInt8Type>),
    U16(&'a PrimitiveArray<UInt16Type>),
    U32(&'a PrimitiveArray<UInt32Type>),
    U64(&'a PrimitiveArray<UInt64Type>),
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
    Bool(&'a BooleanArray),
}

/// Spark's VectorUDT as Arrow sees it.
struct VectorCols<'a> {
    all: &'a StructArray,
    kind: &'a PrimitiveArray<Int8Type>,
    size: &'a PrimitiveArray<Int32Type>,
    indices: (&'a [i32], &'a dyn Array, &'a PrimitiveArray<Int32Type>),
    values: (&'a [i32], &'a dyn Array, &'a PrimitiveArray<Float64Type>),
}

/// Why a value could not be taken (positions are flat, within the row).
enum Bad {
    Null(usize),
    Nan(usize),
    Value {
        at: usize,
        text: String,
        integral: bool,
    },
}

impl<'a> Leaf<'a> {
    fn of(a: &'a dyn Array) -> Option<Leaf<'a>> {
        Some(match a.data_type() {
            DataType::Int8 => Leaf::I8(a.as_primitive()),
            DataType::Int16 => Leaf::I16(a.as_primitive()),
            DataType::Int32 => Leaf::I32(a.as_primitive()),
            DataType::Int64 => Leaf::I64(a.as_primitive()),
            DataType::UInt8 => Leaf::U8(a.as_primitive()),
            DataType::UInt16 => Leaf::U16(a.as_primitive()),
            DataType::UInt32 => Leaf::U32(a.as_primitive()),
            DataType::UInt64 => Leaf::U64(a.as_primitive()),
            DataType::Float32 => Leaf::F32(a.as_primitive()),
            DataType::Float64 => Leaf::F64(a.as_primitive()),
            DataType::Boolean => Leaf::Bool(a.as_boolean()),
            _ => return None,
        })
    }

    fn array(&self) -> &dyn Array {
        match self {
            Leaf::I8(a) => *a,
            Leaf::I16(a) => *a,
            Leaf::I32(a) => *a,
            Leaf::I64(a) => *a,
            Leaf::U8(a) => *a,
            Leaf::U16(a) => *a,
            Leaf::U32(a) => *a,
            Leaf::U64(a) => *a,
            Leaf::F32(a) => *a,
            Leaf::F64(a) => *a,
            Leaf::Bool(a) => *a,
        }
    }

    /// Appends values `a..b` converted to `T` to `out`; positions in errors start at `base`.
    fn convert_into<T: Target>(
        &self,
        (a, b): (usize, usize),
        nan_error: bool,
        base: usize,
        out: &mut Vec<T>,
    ) -> Result<(), Bad> {
        let arr = self.array();
        if arr.null_count() > 0
            && let Some(k) = (a..b).find(|&k| arr.is_null(k))
        {
            return Err(Bad::Null(base + k - a));
        }
        match self {
            Leaf::I8(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::I16(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::I32(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::I64(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::U8(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::U16(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::U32(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::U64(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::F32(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::F64(x) => convert(&x.values()[a..b], nan_error, base, out),
            Leaf::Bool(x) => {
                let v: Vec<bool> = (a..b).map(|k| x.value(k)).collect();
                convert(&v, nan_error, base, out)
            }
        }
    }
}

/// A number an Arrow leaf holds.
trait Num: Copy + Display {
    fn to<T: Target>(self) -> Option<T>;
    fn is_nan(self) -> bool;
    /// Whether it is a whole number (for the reason a conversion to an integer failed).
    fn is_integral(self) -> bool;
}

macro_rules! int_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            #[inline]
            fn to<T: Target>(self) -> Option<T> {
                T::from_int(i128::from(self))
            }
            fn is_nan(self) -> bool {
                false
            }
            fn is_integral(self) -> bool {
                true
            }
        }
    )*};
}
int_num!(i8, i16, i32, i64, u8, u16, u32, u64, bool);

macro_rules! float_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            #[inline]
            fn to<T: Target>(self) -> Option<T> {
                T::from_f64(f64::from(self))
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn is_integral(self) -> bool {
                self.is_finite() && self.fract() == 0.0
            }
        }
    )*};
}
float_num!(f32, f64);

/// A declared dtype's Rust type.
trait Target: Copy {
    const ZERO: Self;
    fn from_f64(v: f64) -> Option<Self>;
    fn from_int(v: i128) -> Option<Self>;
    fn wrap(v: Vec<Self>) -> RowData;
}

/// `v` as an i64 if it is a whole number in range (NaN and infinities are not).
#[inline]
fn whole(v: f64) -> Option<i64> {
    // 2^63 is exact in f64; every whole f64 in [-2^63, 2^63) is an i64.
    let two_63 = -(i64::MIN as f64);
    (v.fract() == 0.0 && (-two_63..two_63).contains(&v)).then_some(v as i64)
}

impl Target for f32 {
    const ZERO: f32 = 0.0;
    #[inline]
    fn from_f64(v: f64) -> Option<f32> {
        let y = v as f32;
        // A finite float64 beyond float32's range would become infinity: refuse it.
        (y.is_finite() || !v.is_finite()).then_some(y)
    }
    #[inline]
    fn from_int(v: i128) -> Option<f32> {
        Some(v as f32)
    }
    fn wrap(v: Vec<f32>) -> RowData {
        RowData::F32(v)
    }
}

impl Target for f64 {
    const ZERO: f64 = 0.0;
    #[inline]
    fn from_f64(v: f64) -> Option<f64> {
        Some(v)
    }
    #[inline]
    fn from_int(v: i128) -> Option<f64> {
        Some(v as f64)
    }
    fn wrap(v: Vec<f64>) -> RowData {
        RowData::F64(v)
    }
}

macro_rules! int_target {
    ($t:ty, $variant:ident) => {
        impl Target for $t {
            const ZERO: $t = 0;
            #[inline]
            fn from_f64(v: f64) -> Option<$t> {
                whole(v).and_then(|i| <$t>::try_from(i).ok())
            }
            #[inline]
            fn from_int(v: i128) -> Option<$t> {
                <$t>::try_from(v).ok()
            }
            fn wrap(v: Vec<$t>) -> RowData {
                RowData::$variant(v)
            }
        }
    };
}
int_target!(i64, I64);
int_target!(i32, I32);
int_target!(u8, U8);

impl Target for bool {
    const ZERO: bool = false;
    #[inline]
    fn from_f64(v: f64) -> Option<bool> {
        if v == 0.0 {
            Some(false)
        } else if v == 1.0 {
            Some(true)
        } else {
            None
        }
    }
    #[inline]
    fn from_int(v: i128) -> Option<bool> {
        match v {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn wrap(v: Vec<bool>) -> RowData {
        RowData::Bool(v)
    }
}

/// The one loop every value goes through, monomorphic in source and target.
#[inline]
fn convert<S: Num, T: Target>(
    src: &[S],
    nan_error: bool,
    base: usize,
    out: &mut Vec<T>,
) -> Result<(), Bad> {
    out.reserve(src.len());
    for (k, &s) in src.iter().enumerate() {
        if nan_error && s.is_nan() {
            return Err(Bad::Nan(base + k));
        }
        match s.to::<T>() {
            Some(t) => out.push(t),
            None => {
                return Err(Bad::Value {
                    at: base + k,
                    text: s.to_string(),
                    integral: s.is_integral(),
                });
            }
        }
    }
    Ok(())
}

/// The source of one column, or why the input cannot read it.
fn single_source<'a>(decl: &InputDecl, col: &'a dyn Array) -> Result<Source<'a>, String> {
    let shape = &decl.shape;
    let rank = shape.len();
    if let Some(leaf) = Leaf::of(col) {
        if shape.contains(&-1) || shape.iter().product::<i64>() != 1 {
            return Err(format!(
                "a scalar column ({}) fills shape [] or [1], not {shape:?}: send a list or \
                 vector column, or gather scalar columns with a list in `column`",
                col.data_type()
            ));
        }
        return Ok(Source::Scalar(leaf));
    }
    if let DataType::Struct(_) = col.data_type() {
        return vector_cols(col.as_struct())
            .map(Source::Vector)
            .and_then(|s| flat_check(shape).map(|()| s));
    }
    let mut levels = Vec::new();
    let mut at: &'a dyn Array = col;
    loop {
        let level = match at.data_type() {
            DataType::List(_) => {
                let l = at.as_list::<i32>();
                (Level::List(l.value_offsets(), at), l.values().as_ref())
            }
            DataType::LargeList(_) => {
                let l = at.as_list::<i64>();
                (Level::Large(l.value_offsets(), at), l.values().as_ref())
            }
            DataType::FixedSizeList(_, n) => {
                let l = at.as_fixed_size_list();
                (Level::Fixed(*n as usize, at), l.values().as_ref())
            }
            _ => break,
        };
        levels.push(level.0);
        at = level.1;
    }
    let Some(leaf) = Leaf::of(at).filter(|_| !levels.is_empty()) else {
        return Err(format!(
            "Arrow type {} cannot be read as a tensor (accepted: {ACCEPTED})",
            col.data_type()
        ));
    };
    let depth = levels.len();
    // One level is read flat (and reshaped), whatever the rank; deeper ones must match it.
    if depth == 1 {
        flat_check(shape)?;
    } else if depth != rank {
        return Err(format!(
            "the column's lists are nested {depth} deep ({}), but shape {shape:?} has {rank} \
             dimension(s): send lists nested {rank} deep, or one flat list",
            col.data_type()
        ));
    }
    Ok(Source::Nested { levels, leaf })
}

/// A flat list fills `shape` only if at most one dimension is variable.
fn flat_check(shape: &[i64]) -> Result<(), String> {
    if shape.iter().filter(|&&d| d == -1).count() > 1 {
        return Err(format!(
            "a flat list or vector cannot fill shape {shape:?} (more than one variable \
             dimension): send lists nested {} deep",
            shape.len()
        ));
    }
    Ok(())
}

fn vector_cols(s: &StructArray) -> Result<VectorCols<'_>, String> {
    let not_vector = || {
        format!(
            "struct column {} is not Spark's ML vector (type: int8, size: int32, indices: \
             list<int32>, values: list<double>) (accepted: {ACCEPTED})",
            s.data_type()
        )
    };
    let field = |name: &str| s.column_by_name(name).ok_or_else(not_vector);
    let list = |name: &str| -> Result<(&[i32], &dyn Array, &dyn Array), String> {
        let c = field(name)?;
        let l = c.as_list_opt::<i32>().ok_or_else(not_vector)?;
        Ok((l.value_offsets(), c.as_ref(), l.values().as_ref()))
    };
    let (io, il, iv) = list("indices")?;
    let (vo, vl, vv) = list("values")?;
    Ok(VectorCols {
        all: s,
        kind: field("type")?.as_primitive_opt().ok_or_else(not_vector)?,
        size: field("size")?.as_primitive_opt().ok_or_else(not_vector)?,
        indices: (io, il, iv.as_primitive_opt().ok_or_else(not_vector)?),
        values: (vo, vl, vv.as_primitive_opt().ok_or_else(not_vector)?),
    })
}

/// Row `i` of a vector column, dense, as float64 (a dense vector borrowed, a sparse one
/// expanded). `shape` is the declared one: a fixed shape bounds a sparse vector's size before
/// it is expanded, and so does `max_elements` (`max_row_elements`).
fn vector_row<'a>(
    v: &VectorCols<'a>,
    i: usize,
    shape: &[i64],
    max_elements: u64,
) -> Result<Cow<'a, [f64]>, String> {
    if v.all.is_null(i) || v.kind.is_null(i) {
        return Err("input is null".into());
    }
    let (vo, vl, vv) = v.values;
    if vl.is_null(i) {
        return Err("vector has no values (null)".into());
    }
    let (a, b) = (vo[i] as usize, vo[i + 1] as usize);
    if vv.null_count() > 0
        && let Some(k) = (a..b).find(|&k| vv.is_null(k))
    {
        return Err(format!("null at position {}", k - a));
    }
    let values = &vv.values()[a..b];
    match v.kind.value(i) {
        1 => {
            check_elements(values.len(), max_elements)?;
            Ok(Cow::Borrowed(values))
        }
        0 => {
            let (io, il, iv) = v.indices;
            if v.size.is_null(i) || il.is_null(i) {
                return Err("sparse vector without size or indices (null)".into());
            }
            let size = v.size.value(i);
            let (c, d) = (io[i] as usize, io[i + 1] as usize);
            if d - c != values.len() {
                return Err(format!(
                    "sparse vector has {} indices but {} values",
                    d - c,
                    values.len()
                ));
            }
            let size = usize::try_from(size)
                .map_err(|_| format!("sparse vector has negative size {size}"))?;
            // A size that cannot fit is refused before it is expanded (it is data: a huge
            // one must be a row error, not an allocation abort).
            if !shape.contains(&-1) {
                let want = shape.iter().product::<i64>() as usize;
                if size != want {
                    return Err(format!(
                        "expected shape {shape:?} ({want} values), got a sparse vector of size \
                         {size}"
                    ));
                }
            }
            if size as u64 > max_elements {
                return Err(format!(
                    "sparse vector of size {}: {}",
                    crate::limits::grouped(size as u64),
                    over_elements(max_elements)
                ));
            }
            let mut dense = vec![0f64; size];
            for (k, &x) in values.iter().enumerate() {
                let j = iv.value(c + k);
                let slot = usize::try_from(j)
                    .ok()
                    .and_then(|j| dense.get_mut(j))
                    .ok_or_else(|| {
                        format!("sparse vector index {j} is out of range for size {size}")
                    })?;
                *slot = x;
            }
            Ok(Cow::Owned(dense))
        }
        t => Err(format!(
            "vector type {t} is neither 0 (sparse) nor 1 (dense)"
        )),
    }
}

/// "over the limit of N values per row (max_row_elements)".
fn over_elements(limit: u64) -> String {
    format!(
        "over the limit of {} values per row (max_row_elements)",
        crate::limits::grouped(limit)
    )
}

/// A row of `n` values against `max_row_elements`, before it is copied.
fn check_elements(n: usize, limit: u64) -> Result<(), String> {
    if n as u64 > limit {
        Err(format!(
            "the row has {} values, {}",
            crate::limits::grouped(n as u64),
            over_elements(limit)
        ))
    } else {
        Ok(())
    }
}

/// The shape of a row given as one flat list of `n` values.
fn flat_shape(shape: &[i64], n: usize) -> Result<Vec<i64>, String> {
    let resolved = flat_len(shape, n)?;
    Ok(shape
        .iter()
        .map(|&d| if d == -1 { resolved } else { d })
        .collect())
}

/// Checks that `n` values fill `shape` (at most one `-1`); the size of its `-1` (or 1).
fn flat_len(shape: &[i64], n: usize) -> Result<i64, String> {
    let known: i64 = shape.iter().filter(|&&d| d != -1).product();
    let n = n as i64;
    match shape.iter().position(|&d| d == -1) {
        None if n == known => Ok(1),
        None => Err(format!(
            "expected shape {shape:?} ({known} values), got {n} value{}",
            plural(n)
        )),
        Some(_) if n > 0 && n % known == 0 => Ok(n / known),
        Some(_) if known == 1 => Err(format!(
            "expected shape {shape:?} (at least one value), got 0 values"
        )),
        Some(_) => Err(format!(
            "expected shape {shape:?} (a positive multiple of {known} values), got {n} value{}",
            plural(n)
        )),
    }
}

fn plural(n: i64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A flat position as the index it has in `shape` (rank 2 and more).
fn position(at: usize, shape: &[i64]) -> String {
    if shape.len() <= 1 {
        return format!("position {at}");
    }
    let mut rest = at as i64;
    let mut index = vec![0i64; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            index[i] = rest % d;
            rest /= d;
        }
    }
    format!("position {index:?}")
}

impl Bad {
    fn reason(self, shape: &[i64], dtype: DType) -> String {
        match self {
            Bad::Null(at) => format!("null at {}", position(at, shape)),
            Bad::Nan(at) => format!(
                "NaN at {} (the input has nan: \"error\")",
                position(at, shape)
            ),
            Bad::Value { at, text, integral } => {
                let why = match dtype {
                    DType::Bool => "not 0 or 1",
                    DType::Float32 | DType::Float64 => "out of range",
                    _ if !integral => "not an integer",
                    _ => "out of range",
                };
                format!(
                    "value {text} at {} does not convert to {dtype} ({why})",
                    position(at, shape)
                )
            }
        }
    }
}

impl TensorReader<'_> {
    fn row(&self, i: usize) -> Result<RowTensor, String> {
        let (data, shape) = with_dtype!(self.dtype, T => {
            let mut out = Vec::<T>::new();
            let shape = self.fill(i, &mut out, true)?;
            (T::wrap(out), shape)
        });
        Ok(RowTensor {
            data,
            shape,
            times: RowTimes::default(),
        })
    }

    /// Rows `rows` into one buffer (fixed shapes only: each good row adds `row_len` values).
    fn dense<T: Target>(&self, rows: Range<usize>) -> (Vec<T>, Vec<Result<RowTimes, String>>) {
        let row_len = self.shape.iter().product::<i64>() as usize;
        if let Err(e) = check_elements(row_len, self.max_elements) {
            return (Vec::new(), rows.map(|_| Err(e.clone())).collect());
        }
        let mut out = Vec::with_capacity(row_len * rows.len());
        let status = rows
            .map(|i| {
                let start = out.len();
                let res = self.fill(i, &mut out, false).and_then(|_| {
                    if out.len() - start == row_len {
                        Ok(RowTimes::default())
                    } else {
                        Err(format!(
                            "expected shape {:?} ({row_len} values), got {} values",
                            self.shape,
                            out.len() - start
                        ))
                    }
                });
                if res.is_err() {
                    out.truncate(start);
                    out.resize(start + row_len, T::ZERO);
                }
                res
            })
            .collect();
        (out, status)
    }

    /// Appends row `i`'s values to `out` (on error, maybe some of them); its shape when
    /// `want_shape` (else an empty vector: no allocation).
    fn fill<T: Target>(
        &self,
        i: usize,
        out: &mut Vec<T>,
        want_shape: bool,
    ) -> Result<Vec<i64>, String> {
        let (dtype, nan) = (self.dtype, self.nan_error);
        let declared = || {
            if want_shape {
                self.shape.to_vec()
            } else {
                vec![]
            }
        };
        match &self.source {
            Source::Scalar(leaf) => {
                if leaf.array().is_null(i) {
                    return Err("input is null".into());
                }
                leaf.convert_into((i, i + 1), nan, 0, out)
                    .map_err(|b| b.reason(&[], dtype))?;
                Ok(declared())
            }
            Source::Gather(leaves) => {
                for (k, (column, leaf)) in leaves.iter().enumerate() {
                    leaf.convert_into((i, i + 1), nan, k, out).map_err(|b| {
                        format!("{} (column `{column}`)", b.reason(self.shape, dtype))
                    })?;
                }
                Ok(declared())
            }
            Source::Vector(v) => {
                let dense = vector_row(v, i, self.shape, self.max_elements)?;
                flat_len(self.shape, dense.len())?;
                convert(&dense, nan, 0, out).map_err(|b| {
                    let at = flat_shape(self.shape, dense.len()).unwrap_or_default();
                    b.reason(&at, dtype)
                })?;
                if want_shape {
                    flat_shape(self.shape, dense.len())
                } else {
                    Ok(vec![])
                }
            }
            Source::Nested { levels, leaf } => {
                let (range, shape) = match &levels[..] {
                    // One level (the common case): no walk, no allocation.
                    [level] => {
                        if level.array().is_null(i) {
                            return Err("input is null".into());
                        }
                        let range = level.span(i);
                        let n = range.1 - range.0;
                        flat_len(self.shape, n)?;
                        let shape = if want_shape {
                            flat_shape(self.shape, n)?
                        } else {
                            vec![]
                        };
                        (range, shape)
                    }
                    _ => {
                        let (range, dims) = self.walk(levels, i)?;
                        (range, self.nested_shape(&dims)?)
                    }
                };
                check_elements(range.1 - range.0, self.max_elements)?;
                leaf.convert_into(range, nan, 0, out).map_err(|b| {
                    if shape.is_empty() {
                        let at = flat_shape(self.shape, range.1 - range.0).unwrap_or_default();
                        b.reason(&at, dtype)
                    } else {
                        b.reason(&shape, dtype)
                    }
                })?;
                Ok(shape)
            }
        }
    }

    /// Follows row `i` down the list levels: its leaf range and the common length of the
    /// lists at each depth (a row's dimensions; lists of one depth must be of one length).
    fn walk(&self, levels: &[Level<'_>], i: usize) -> Result<((usize, usize), Vec<usize>), String> {
        let mut range = (i, i + 1);
        let mut dims = Vec::with_capacity(levels.len());
        for (depth, level) in levels.iter().enumerate() {
            let arr = level.array();
            let mut len = None;
            for j in range.0..range.1 {
                if arr.is_null(j) {
                    return Err(if depth == 0 {
                        "input is null".to_string()
                    } else {
                        format!(
                            "null list in dimension {} (at index {} of it)",
                            depth - 1,
                            j - range.0
                        )
                    });
                }
                let (a, b) = level.span(j);
                match len {
                    None => len = Some(b - a),
                    Some(l) if l != b - a => {
                        return Err(format!(
                            "expected shape {:?}, got lists of lengths {l} and {} in dimension \
                             {depth} (not rectangular)",
                            self.shape,
                            b - a,
                        ));
                    }
                    Some(_) => {}
                }
            }
            dims.push(len.unwrap_or(0));
            range = if range.1 > range.0 {
                (level.span(range.0).0, level.span(range.1 - 1).1)
            } else {
                (0, 0)
            };
        }
        Ok((range, dims))
    }

    /// `dims` (one per declared dimension) checked against the declared shape.
    fn nested_shape(&self, dims: &[usize]) -> Result<Vec<i64>, String> {
        let got: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let ok = got
            .iter()
            .zip(self.shape)
            .all(|(&g, &d)| if d == -1 { g > 0 } else { g == d });
        if ok {
            Ok(got)
        } else if got.contains(&0) {
            Err(format!(
                "expected shape {:?}, got {got:?} (no values)",
                self.shape
            ))
        } else {
            Err(format!("expected shape {:?}, got {got:?}", self.shape))
        }
    }
}

impl InputReader for TensorReader<'_> {
    fn read(&self, rows: Range<usize>, _threads: usize) -> Vec<Result<RowTensor, String>> {
        rows.map(|i| self.row(i)).collect()
    }

    fn row_shape(&self, i: usize) -> Option<Vec<i64>> {
        if !self.shape.contains(&-1) {
            return Some(self.shape.to_vec());
        }
        match &self.source {
            Source::Scalar(_) | Source::Gather(_) => Some(self.shape.to_vec()),
            Source::Vector(v) => {
                if v.all.is_null(i) || v.kind.is_null(i) || v.values.1.is_null(i) {
                    return None;
                }
                let n = match v.kind.value(i) {
                    1 => v.values.0[i + 1] as usize - v.values.0[i] as usize,
                    0 if !v.size.is_null(i) => usize::try_from(v.size.value(i)).ok()?,
                    _ => return None,
                };
                flat_shape(self.shape, n).ok()
            }
            Source::Nested { levels, .. } => match &levels[..] {
                [level] => {
                    if level.array().is_null(i) {
                        return None;
                    }
                    let (a, b) = level.span(i);
                    flat_shape(self.shape, b - a).ok()
                }
                _ => {
                    let (_, dims) = self.walk(levels, i).ok()?;
                    self.nested_shape(&dims).ok()
                }
            },
        }
    }

    fn read_dense(&self, rows: Range<usize>, _threads: usize) -> Option<DenseRows> {
        if self.shape.contains(&-1) {
            return None;
        }
        let (data, status) = with_dtype!(self.dtype, T => {
            let (v, status) = self.dense::<T>(rows);
            (T::wrap(v), status)
        });
        Some(DenseRows { data, status })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow_array::builder::{
        BooleanBuilder, FixedSizeListBuilder, Float32Builder, Float64Builder, Int8Builder,
        Int32Builder, LargeListBuilder, ListBuilder, StringBuilder,
    };
    use arrow_array::{Float64Array, Int32Array, Int64Array, UInt64Array};
    use arrow_schema::Fields;

    use super::*;

    fn decl(json: &str) -> InputDecl {
        serde_json::from_str(json).unwrap()
    }

    /// The reader under the default per-row element limit.
    fn reader<'a>(
        decl: &'a InputDecl,
        columns: Vec<(&'a str, &'a ArrayRef)>,
    ) -> Result<Box<dyn InputReader + 'a>, String> {
        super::reader(decl, columns, crate::limits::DEFAULT_MAX_ROW_ELEMENTS)
    }

    fn read(decl: &InputDecl, col: &ArrayRef) -> Vec<Result<RowTensor, String>> {
        let r = reader(decl, vec![("x", col)]).unwrap();
        r.read(0..col.len(), 1)
    }

    fn doubles(rows: &[Option<Vec<Option<f64>>>]) -> ArrayRef {
        let mut b = ListBuilder::new(Float64Builder::new());
        for r in rows {
            match r {
                Some(v) => {
                    for x in v {
                        b.values().append_option(*x);
                    }
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        Arc::new(b.finish())
    }

    fn some(v: &[f64]) -> Option<Vec<Option<f64>>> {
        Some(v.iter().map(|&x| Some(x)).collect())
    }

    fn err(r: &Result<RowTensor, String>) -> &str {
        r.as_ref().unwrap_err()
    }

    #[test]
    fn list_of_double_becomes_float32_rows_of_the_declared_shape() {
        let d = decl(r#"{"name": "features", "shape": [10]}"#);
        let ten: Vec<f64> = (0..10).map(|i| f64::from(i) / 4.0).collect();
        let col = doubles(&[some(&ten), some(&ten[..9]), None]);
        let rows = read(&d, &col);
        let ok = rows[0].as_ref().unwrap();
        assert_eq!(ok.shape, vec![10]);
        assert_eq!(
            ok.data,
            RowData::F32(ten.iter().map(|&x| x as f32).collect())
        );
        assert_eq!(
            err(&rows[1]),
            "expected shape [10] (10 values), got 9 values"
        );
        assert_eq!(err(&rows[2]), "input is null");
    }

    #[test]
    fn the_dense_path_reads_what_rows_read_into_one_buffer() {
        let d = decl(r#"{"name": "features", "shape": [2], "dtype": "int64"}"#);
        let col = doubles(&[
            some(&[1.0, 2.0]),
            some(&[3.0]),
            None,
            some(&[5.0, 6.5]),
            some(&[7.0, 8.0]),
        ]);
        let r = reader(&d, vec![("x", &col)]).unwrap();
        let rows = r.read(1..5, 1);
        let dense = r.read_dense(1..5, 1).unwrap();
        assert_eq!(dense.data, RowData::I64(vec![0, 0, 0, 0, 0, 0, 7, 8]));
        let reasons: Vec<Option<&String>> = dense.status.iter().map(|s| s.as_ref().err()).collect();
        let expected: Vec<Option<&String>> = rows.iter().map(|r| r.as_ref().err()).collect();
        assert_eq!(reasons, expected);
        let var = decl(r#"{"name": "x", "shape": [-1], "ragged": "pad"}"#);
        assert!(
            reader(&var, vec![("x", &col)])
                .unwrap()
                .read_dense(0..1, 1)
                .is_none()
        );
    }

    #[test]
    fn nulls_inside_a_row_and_nan_under_nan_error_name_the_position() {
        let col = doubles(&[
            Some(vec![Some(1.0), Some(2.0), Some(3.0), None]),
            some(&[1.0, f64::NAN, 0.0, 0.0]),
        ]);
        let pass = decl(r#"{"name": "x", "shape": [4], "dtype": "float64"}"#);
        let rows = read(&pass, &col);
        assert_eq!(err(&rows[0]), "null at position 3");
        let RowData::F64(v) = &rows[1].as_ref().unwrap().data else {
            panic!("not f64")
        };
        assert!(v[1].is_nan());
        let strict = decl(r#"{"name": "x", "shape": [2, 2], "nan": "error"}"#);
        let rows = read(&strict, &col);
        assert_eq!(
            err(&rows[1]),
            "NaN at position [0, 1] (the input has nan: \"error\")"
        );
    }

    #[test]
    fn values_convert_only_when_the_dtype_holds_them() {
        let col = doubles(&[some(&[1.0, 2.5]), some(&[3.0, 300.0]), some(&[1e40, 0.0])]);
        let rows = read(
            &decl(r#"{"name": "x", "shape": [2], "dtype": "int64"}"#),
            &col,
        );
        assert_eq!(
            err(&rows[0]),
            "value 2.5 at position 1 does not convert to int64 (not an integer)"
        );
        assert_eq!(rows[1].as_ref().unwrap().data, RowData::I64(vec![3, 300]));
        assert!(err(&rows[2]).contains("1e40") || err(&rows[2]).contains("10000000000"));
        let rows = read(
            &decl(r#"{"name": "x", "shape": [2], "dtype": "uint8"}"#),
            &col,
        );
        assert_eq!(
            err(&rows[1]),
            "value 300 at position 1 does not convert to uint8 (out of range)"
        );
        let rows = read(&decl(r#"{"name": "x", "shape": [2]}"#), &col);
        assert!(
            err(&rows[2]).ends_with("at position 0 does not convert to float32 (out of range)"),
            "{}",
            err(&rows[2])
        );
        let rows = read(
            &decl(r#"{"name": "x", "shape": [2], "dtype": "bool"}"#),
            &col,
        );
        assert_eq!(
            err(&rows[0]),
            "value 2.5 at position 1 does not convert to bool (not 0 or 1)"
        );
        // Integers beyond int64 (uint64) are out of range, not wrapped.
        let big: ArrayRef = Arc::new(UInt64Array::from(vec![u64::MAX, 7]));
        let rows = read(
            &decl(r#"{"name": "x", "shape": [], "dtype": "int64"}"#),
            &big,
        );
        assert!(err(&rows[0]).contains("(out of range)"));
        assert_eq!(rows[1].as_ref().unwrap().data, RowData::I64(vec![7]));
    }

    #[test]
    fn scalar_columns_fill_shape_scalar_or_one() {
        let col: ArrayRef = Arc::new(Int64Array::from(vec![Some(4), None]));
        let rows = read(
            &decl(r#"{"name": "x", "shape": [], "dtype": "int32"}"#),
            &col,
        );
        let ok = rows[0].as_ref().unwrap();
        assert_eq!(
            (ok.data.clone(), ok.shape.clone()),
            (RowData::I32(vec![4]), vec![])
        );
        assert_eq!(err(&rows[1]), "input is null");
        let mut b = BooleanBuilder::new();
        b.append_value(true);
        let col: ArrayRef = Arc::new(b.finish());
        let rows = read(&decl(r#"{"name": "x", "shape": [1]}"#), &col);
        assert_eq!(rows[0].as_ref().unwrap().data, RowData::F32(vec![1.0]));
        let e = reader(&decl(r#"{"name": "x", "shape": [10]}"#), vec![("x", &col)])
            .err()
            .unwrap();
        assert!(e.contains("scalar column") && e.contains("[10]"), "{e}");
    }

    #[test]
    fn gathered_scalar_columns_form_one_vector_in_order() {
        let a: ArrayRef = Arc::new(Float64Array::from(vec![0.5, 1.5]));
        let b: ArrayRef = Arc::new(Int32Array::from(vec![Some(2), None]));
        let c: ArrayRef = Arc::new(Int64Array::from(vec![3, 4]));
        let d = decl(r#"{"name": "meta", "column": ["a", "b", "c"], "shape": [3]}"#);
        let r = reader(&d, vec![("a", &a), ("b", &b), ("c", &c)]).unwrap();
        let rows = r.read(0..2, 1);
        assert_eq!(
            rows[0].as_ref().unwrap().data,
            RowData::F32(vec![0.5, 2.0, 3.0])
        );
        assert_eq!(err(&rows[1]), "null at position 1 (column `b`)");
        let s: ArrayRef = Arc::new(StringBuilder::new().finish());
        let e = reader(&d, vec![("a", &a), ("s", &s), ("c", &c)])
            .err()
            .unwrap();
        assert!(e.contains("column `s` has type Utf8"), "{e}");
    }

    #[test]
    fn nested_lists_are_checked_dimension_by_dimension() {
        // [[1,2,3],[4,5,6]], [[1,2],[3,4]], [[1,2,3],[4,5]], [[1,2,3]]
        let mut b = ListBuilder::new(ListBuilder::new(Int32Builder::new()));
        for row in [
            vec![vec![1, 2, 3], vec![4, 5, 6]],
            vec![vec![1, 2], vec![3, 4]],
            vec![vec![1, 2, 3], vec![4, 5]],
            vec![vec![1, 2, 3]],
        ] {
            for inner in row {
                b.values().values().append_slice(&inner);
                b.values().append(true);
            }
            b.append(true);
        }
        let col: ArrayRef = Arc::new(b.finish());
        let rows = read(
            &decl(r#"{"name": "x", "shape": [2, 3], "dtype": "int64"}"#),
            &col,
        );
        let ok = rows[0].as_ref().unwrap();
        assert_eq!(ok.data, RowData::I64(vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(ok.shape, vec![2, 3]);
        assert_eq!(err(&rows[1]), "expected shape [2, 3], got [2, 2]");
        assert_eq!(
            err(&rows[2]),
            "expected shape [2, 3], got lists of lengths 3 and 2 in dimension 1 (not rectangular)"
        );
        let var = decl(r#"{"name": "x", "shape": [-1, 3], "ragged": "pad"}"#);
        let rows = read(&var, &col);
        assert_eq!(rows[0].as_ref().unwrap().shape, vec![2, 3]);
        assert_eq!(rows[3].as_ref().unwrap().shape, vec![1, 3]);
        // A depth that is neither 1 nor the shape's rank fails the batch.
        let e = reader(
            &decl(r#"{"name": "x", "shape": [2, 3, 1]}"#),
            vec![("x", &col)],
        )
        .err()
        .unwrap();
        assert!(
            e.contains("nested 2 deep") && e.contains("3 dimension"),
            "{e}"
        );
    }

    #[test]
    fn a_flat_list_is_reshaped_resolving_one_variable_dimension() {
        let col = doubles(&[some(&[1.0; 6]), some(&[1.0; 5]), some(&[])]);
        let rows = read(&decl(r#"{"name": "x", "shape": [2, 3]}"#), &col);
        assert_eq!(rows[0].as_ref().unwrap().shape, vec![2, 3]);
        assert_eq!(
            err(&rows[1]),
            "expected shape [2, 3] (6 values), got 5 values"
        );
        let rows = read(
            &decl(r#"{"name": "x", "shape": [-1, 2], "ragged": "pad"}"#),
            &col,
        );
        assert_eq!(rows[0].as_ref().unwrap().shape, vec![3, 2]);
        assert_eq!(
            err(&rows[1]),
            "expected shape [-1, 2] (a positive multiple of 2 values), got 5 values"
        );
        let rows = read(
            &decl(r#"{"name": "x", "shape": [-1], "ragged": "list"}"#),
            &col,
        );
        assert_eq!(rows[1].as_ref().unwrap().shape, vec![5]);
        assert_eq!(
            err(&rows[2]),
            "expected shape [-1] (at least one value), got 0 values"
        );
        let e = reader(
            &decl(r#"{"name": "x", "shape": [-1, -1], "ragged": "pad"}"#),
            vec![("x", &col)],
        )
        .err()
        .unwrap();
        assert!(e.contains("more than one variable"), "{e}");
    }

    #[test]
    fn fixed_size_and_large_lists_read_like_lists_also_when_sliced() {
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 2);
        for i in 0..4 {
            b.values().append_slice(&[i as f32, -(i as f32)]);
            b.append(true);
        }
        let col: ArrayRef = Arc::new(b.finish().slice(1, 3));
        let rows = read(&decl(r#"{"name": "x", "shape": [2]}"#), &col);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0].as_ref().unwrap().data,
            RowData::F32(vec![1.0, -1.0])
        );
        assert_eq!(
            rows[2].as_ref().unwrap().data,
            RowData::F32(vec![3.0, -3.0])
        );
        let mut b = LargeListBuilder::new(Int8Builder::new());
        b.values().append_slice(&[1, 0, 1]);
        b.append(true);
        let col: ArrayRef = Arc::new(b.finish());
        let rows = read(
            &decl(r#"{"name": "x", "shape": [3], "dtype": "bool"}"#),
            &col,
        );
        assert_eq!(
            rows[0].as_ref().unwrap().data,
            RowData::Bool(vec![true, false, true])
        );
    }

    /// Spark's VectorUDT struct with the given rows: (type, size, indices, values).
    fn vectors(rows: &[(i8, i32, Vec<i32>, Vec<f64>)]) -> ArrayRef {
        let (mut t, mut s) = (Int8Builder::new(), Int32Builder::new());
        let mut ix = ListBuilder::new(Int32Builder::new());
        let mut vs = ListBuilder::new(Float64Builder::new());
        for (kind, size, indices, values) in rows {
            t.append_value(*kind);
            s.append_value(*size);
            ix.values().append_slice(indices);
            ix.append(true);
            vs.values().append_slice(values);
            vs.append(true);
        }
        let (ix, vs) = (ix.finish(), vs.finish());
        let fields = Fields::from(vec![
            Field::new("type", DataType::Int8, false),
            Field::new("size", DataType::Int32, true),
            Field::new("indices", ix.data_type().clone(), true),
            Field::new("values", vs.data_type().clone(), true),
        ]);
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(t.finish()),
            Arc::new(s.finish()),
            Arc::new(ix),
            Arc::new(vs),
        ];
        Arc::new(StructArray::new(fields, arrays, None))
    }

    #[test]
    fn spark_vectors_dense_and_sparse_are_densified() {
        let col = vectors(&[
            (1, 0, vec![], vec![1.0, 2.0, 3.0, 4.0, 5.0]),
            (0, 5, vec![1, 3], vec![2.0, 4.0]),
            (0, 5, vec![1, 7], vec![2.0, 4.0]),
            (1, 0, vec![], vec![1.0]),
            (0, i32::MAX, vec![1], vec![2.0]),
        ]);
        let rows = read(&decl(r#"{"name": "features", "shape": [5]}"#), &col);
        assert_eq!(
            rows[0].as_ref().unwrap().data,
            RowData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0])
        );
        assert_eq!(
            rows[1].as_ref().unwrap().data,
            RowData::F32(vec![0.0, 2.0, 0.0, 4.0, 0.0])
        );
        assert_eq!(
            err(&rows[2]),
            "sparse vector index 7 is out of range for size 5"
        );
        assert_eq!(err(&rows[3]), "expected shape [5] (5 values), got 1 value");
        // The dense path: the same values in one buffer, zeros for bad rows.
        let d = decl(r#"{"name": "features", "shape": [5]}"#);
        let dense = reader(&d, vec![("x", &col)])
            .unwrap()
            .read_dense(0..3, 1)
            .unwrap();
        let RowData::F32(all) = dense.data else {
            panic!("not f32")
        };
        assert_eq!(
            &all[..10],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 2.0, 0.0, 4.0, 0.0]
        );
        assert_eq!(&all[10..], &[0.0; 5]);
        assert!(dense.status[2].is_err());
        // A huge size is refused before it is expanded.
        assert_eq!(
            err(&rows[4]),
            "expected shape [5] (5 values), got a sparse vector of size 2147483647"
        );
        let var = decl(r#"{"name": "x", "shape": [-1], "ragged": "pad"}"#);
        let rows = read(&var, &col);
        assert_eq!(rows[1].as_ref().unwrap().shape, vec![5]);
        assert_eq!(
            err(&rows[4]),
            "sparse vector of size 2,147,483,647: over the limit of 67,108,864 values per row \
             (max_row_elements)"
        );
    }

    #[test]
    fn unreadable_column_types_fail_the_batch_naming_the_type() {
        let s: ArrayRef = Arc::new(StringBuilder::new().finish());
        let e = reader(&decl(r#"{"name": "x", "shape": [3]}"#), vec![("x", &s)])
            .err()
            .unwrap();
        assert!(
            e.starts_with("Arrow type Utf8 cannot be read as a tensor (accepted:"),
            "{e}"
        );
        let mut b = ListBuilder::new(StringBuilder::new());
        b.append(true);
        let l: ArrayRef = Arc::new(b.finish());
        let e = reader(&decl(r#"{"name": "x", "shape": [3]}"#), vec![("x", &l)])
            .err()
            .unwrap();
        assert!(e.contains("List(") && e.contains("accepted"), "{e}");
    }

    #[test]
    fn fixed_shape_tensor_metadata_must_match_the_declared_shape() {
        let field = |shape: &str| {
            Field::new(
                "x",
                DataType::new_fixed_size_list(DataType::Float32, 12, false),
                true,
            )
            .with_metadata(HashMap::from([
                (
                    "ARROW:extension:name".to_string(),
                    FIXED_SHAPE_TENSOR.to_string(),
                ),
                ("ARROW:extension:metadata".to_string(), shape.to_string()),
            ]))
        };
        let d = decl(r#"{"name": "x", "shape": [3, 4]}"#);
        assert!(check_field(&d, &field(r#"{"shape": [3, 4]}"#)).is_ok());
        let e = check_field(&d, &field(r#"{"shape": [4, 3]}"#)).unwrap_err();
        assert!(e.contains("shape [4, 3]") && e.contains("[3, 4]"), "{e}");
        let e = check_field(&d, &field(r#"{"shape": [3, 4], "permutation": [1, 0]}"#)).unwrap_err();
        assert!(e.contains("permutation"), "{e}");
        let var = decl(r#"{"name": "x", "shape": [-1, 4], "ragged": "pad"}"#);
        assert!(check_field(&var, &field(r#"{"shape": [3, 4]}"#)).is_ok());
        // Its values are a FixedSizeList: read flat, row-major.
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 12);
        b.values().append_slice(&[0.5; 12]);
        b.append(true);
        let col: ArrayRef = Arc::new(b.finish());
        assert_eq!(read(&d, &col)[0].as_ref().unwrap().shape, vec![3, 4]);
    }
}
