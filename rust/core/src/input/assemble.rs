//! Good rows of one input → the argument `forward` takes.
//!
//! - fixed shape: one tensor `[n, ...shape]`;
//! - `ragged: "pad"`: each variable dimension padded to the chunk's longest row with
//!   `pad_value` (default 0), values at the start of each dimension (as
//!   `torch.nn.utils.rnn.pad_sequence`), and the mask (1 real, 0 pad) when one is declared;
//! - `ragged: "list"`: `List[Tensor]`, one `[...shape]` tensor per row (torchvision's
//!   detection models);
//! - `ragged: "single"`: as `pad` (the plan passes one row at a time, so nothing is padded).

use tch::{Kind, Tensor};

use super::{RowData, RowTensor};
use crate::spec::general::{DType, InputDecl, Ragged};
use crate::value::ModelInput;

/// Stacks `rows` (all read for `decl`) into `[n, ...shape]`; with `ragged: "pad"` pads each
/// variable dimension to the longest row with `pad_value`; with `ragged: "list"` gives
/// `List[Tensor]`. Also returns, for a padded input, the mask (`[n, ...padded shape]`, 1 real,
/// 0 pad) in `mask_dtype` when the spec declares a mask of it.
///
/// Errors (a bug upstream, never bad data: readers check every row): no rows, a row whose
/// values do not fill its shape or are not of the declared dtype, fixed-shape rows of
/// different shapes, a tensor libtorch cannot make.
pub fn assemble(
    decl: &InputDecl,
    rows: &[&RowTensor],
    mask_dtype: Option<DType>,
) -> Result<(ModelInput, Option<Tensor>), String> {
    let Some(first) = rows.first() else {
        return Err("no rows to assemble".into());
    };
    for r in rows {
        let want: i64 = r.shape.iter().product();
        if r.shape.len() != first.shape.len() || want != r.data.len() as i64 {
            return Err(format!(
                "a row of shape {:?} holds {} values (the first row has shape {:?})",
                r.shape,
                r.data.len(),
                first.shape
            ));
        }
    }
    match decl.ragged {
        None => {
            if let Some(r) = rows.iter().find(|r| r.shape != first.shape) {
                return Err(format!(
                    "rows of shapes {:?} and {:?} in a fixed-shape input",
                    first.shape, r.shape
                ));
            }
            let mut dims = vec![rows.len() as i64];
            dims.extend_from_slice(&first.shape);
            let t = with_dtype!(decl.dtype, T => stack::<T>(rows, &dims))?;
            Ok((ModelInput::Batch(t), None))
        }
        Some(Ragged::List) => {
            let ts = rows
                .iter()
                .map(|r| with_dtype!(decl.dtype, T => stack::<T>(&[*r], &r.shape)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((ModelInput::List(ts), None))
        }
        Some(Ragged::Pad | Ragged::Single) => {
            let pad = decl.pad_value.unwrap_or(0.0);
            let (t, mask) =
                with_dtype!(decl.dtype, T => padded::<T>(rows, pad, mask_dtype.is_some()))?;
            let mask = match (mask, mask_dtype) {
                (Some(m), Some(d)) => Some(m.f_to_kind(kind(d)).map_err(torch)?),
                _ => None,
            };
            Ok((ModelInput::Batch(t), mask))
        }
    }
}

/// The good rows of a fixed-shape chunk read by [`super::InputReader::read_dense`] →
/// `[count, ...shape]`: rows with `good[i]` moved to the front, in order, in place.
///
/// Errors (a bug upstream): `data` is not of the declared dtype or not `good.len()` rows of
/// the declared shape, no row is good, or libtorch cannot make the tensor.
pub fn assemble_dense(
    decl: &InputDecl,
    data: RowData,
    good: &[bool],
) -> Result<ModelInput, String> {
    if decl.shape.contains(&-1) {
        return Err(format!("shape {:?} is not fixed", decl.shape));
    }
    with_dtype!(decl.dtype, T => compact::<T>(data, good, &decl.shape)).map(ModelInput::Batch)
}

fn compact<T: Elem>(data: RowData, good: &[bool], shape: &[i64]) -> Result<Tensor, String> {
    let mut v =
        T::take(data).ok_or_else(|| format!("rows are not of the input's dtype {}", T::DTYPE))?;
    let row_len = shape.iter().product::<i64>() as usize;
    if v.len() != row_len * good.len() {
        return Err(format!(
            "{} values for {} rows of shape {shape:?}",
            v.len(),
            good.len()
        ));
    }
    let mut count = 0;
    for (i, _) in good.iter().enumerate().filter(|(_, g)| **g) {
        if i != count {
            v.copy_within(i * row_len..(i + 1) * row_len, count * row_len);
        }
        count += 1;
    }
    if count == 0 {
        return Err("no rows to assemble".into());
    }
    v.truncate(count * row_len);
    let mut dims = vec![count as i64];
    dims.extend_from_slice(shape);
    T::tensor(&v, &dims)
}

/// The torch kind of a dtype.
pub fn kind(d: DType) -> Kind {
    match d {
        DType::Float32 => Kind::Float,
        DType::Float64 => Kind::Double,
        DType::Int64 => Kind::Int64,
        DType::Int32 => Kind::Int,
        DType::Uint8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

fn torch(e: tch::TchError) -> String {
    format!("libtorch: {e}")
}

/// A row element type: its slice in [`RowData`] and how a tensor of it is made.
trait Elem: Copy + 'static {
    const DTYPE: DType;
    fn slice(d: &RowData) -> Option<&[Self]>;
    fn take(d: RowData) -> Option<Vec<Self>>;
    fn pad(v: f64) -> Self;
    fn tensor(v: &[Self], dims: &[i64]) -> Result<Tensor, String>;
}

macro_rules! elem {
    ($t:ty, $dtype:expr, $variant:ident) => {
        impl Elem for $t {
            const DTYPE: DType = $dtype;
            fn slice(d: &RowData) -> Option<&[$t]> {
                match d {
                    RowData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn take(d: RowData) -> Option<Vec<$t>> {
                match d {
                    RowData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn pad(v: f64) -> $t {
                // The spec's validation makes `v` a value of this dtype.
                v as $t
            }
            fn tensor(v: &[$t], dims: &[i64]) -> Result<Tensor, String> {
                Tensor::f_from_slice(v)
                    .and_then(|t| t.f_view(dims))
                    .map_err(torch)
            }
        }
    };
}
elem!(f32, DType::Float32, F32);
elem!(f64, DType::Float64, F64);
elem!(i64, DType::Int64, I64);
elem!(i32, DType::Int32, I32);
elem!(u8, DType::Uint8, U8);

impl Elem for bool {
    const DTYPE: DType = DType::Bool;
    fn slice(d: &RowData) -> Option<&[bool]> {
        match d {
            RowData::Bool(v) => Some(v),
            _ => None,
        }
    }
    fn take(d: RowData) -> Option<Vec<bool>> {
        match d {
            RowData::Bool(v) => Some(v),
            _ => None,
        }
    }
    fn pad(v: f64) -> bool {
        v != 0.0
    }
    fn tensor(v: &[bool], dims: &[i64]) -> Result<Tensor, String> {
        let bytes: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
        u8::tensor(&bytes, dims)?
            .f_to_kind(Kind::Bool)
            .map_err(torch)
    }
}

fn values<T: Elem>(r: &RowTensor) -> Result<&[T], String> {
    T::slice(&r.data).ok_or_else(|| format!("a row is not of the input's dtype {}", T::DTYPE))
}

/// Rows of one shape, concatenated, as a tensor of `dims`.
fn stack<T: Elem>(rows: &[&RowTensor], dims: &[i64]) -> Result<Tensor, String> {
    if let [one] = rows {
        return T::tensor(values::<T>(one)?, dims);
    }
    let mut all = Vec::with_capacity(rows.iter().map(|r| r.data.len()).sum());
    for r in rows {
        all.extend_from_slice(values::<T>(r)?);
    }
    T::tensor(&all, dims)
}

/// Rows padded to the largest size in each dimension, and (when `with_mask`) the uint8 mask.
fn padded<T: Elem>(
    rows: &[&RowTensor],
    pad: f64,
    with_mask: bool,
) -> Result<(Tensor, Option<Tensor>), String> {
    let rank = rows.first().map_or(0, |r| r.shape.len());
    let mut max = vec![0i64; rank];
    for r in rows {
        for (m, &d) in max.iter_mut().zip(&r.shape) {
            *m = (*m).max(d);
        }
    }
    let per_row: i64 = max.iter().product();
    // Row sizes are data: a padded batch too large to allocate is an error, not an abort.
    let too_big = || {
        format!(
            "padding {} rows to shape {max:?} needs more memory than can be allocated; lower \
             batchSize or use ragged: \"list\"",
            rows.len()
        )
    };
    let total = (per_row as usize)
        .checked_mul(rows.len())
        .ok_or_else(too_big)?;
    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|_| too_big())?;
    out.resize(total, T::pad(pad));
    let mut mask = Vec::new();
    if with_mask {
        mask.try_reserve_exact(total).map_err(|_| too_big())?;
        mask.resize(total, 0u8);
    }
    // Row-major strides of the padded shape.
    let mut stride = vec![1usize; rank];
    for k in (0..rank.saturating_sub(1)).rev() {
        stride[k] = stride[k + 1] * max[k + 1] as usize;
    }
    for (n, r) in rows.iter().enumerate() {
        let v = values::<T>(r)?;
        let base = n * per_row as usize;
        let line = r.shape.last().map_or(1, |&d| d as usize);
        let outer = &r.shape[..rank.saturating_sub(1)];
        // Each innermost line of the row goes to its place in the padded row.
        let mut index = vec![0usize; outer.len()];
        for src in v.chunks_exact(line.max(1)) {
            let dst = base + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
            out[dst..dst + src.len()].copy_from_slice(src);
            if with_mask {
                mask[dst..dst + src.len()].fill(1);
            }
            for k in (0..index.len()).rev() {
                index[k] += 1;
                if (index[k] as i64) < outer[k] {
                    break;
                }
                index[k] = 0;
            }
        }
    }
    let mut dims = vec![rows.len() as i64];
    dims.extend_from_slice(&max);
    let t = T::tensor(&out, &dims)?;
    let m = if with_mask {
        Some(u8::tensor(&mask, &dims)?)
    } else {
        None
    };
    Ok((t, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::image::preprocess::RowTimes;

    fn decl(json: &str) -> InputDecl {
        serde_json::from_str(json).unwrap()
    }

    fn row(data: RowData, shape: &[i64]) -> RowTensor {
        RowTensor {
            data,
            shape: shape.to_vec(),
            times: RowTimes::default(),
        }
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn fixed_rows_stack_into_one_batch_of_the_dtype() {
        let d = decl(r#"{"name": "x", "shape": [2, 2], "dtype": "int32"}"#);
        let (a, b) = (
            row(RowData::I32(vec![1, 2, 3, 4]), &[2, 2]),
            row(RowData::I32(vec![5, 6, 7, 8]), &[2, 2]),
        );
        let (ModelInput::Batch(t), None) = assemble(&d, &[&a, &b], None).unwrap() else {
            panic!("not a batch without mask")
        };
        assert_eq!(t.size(), vec![2, 2, 2]);
        assert_eq!(t.kind(), Kind::Int);
        assert_eq!(values(&t), (1..=8).map(f64::from).collect::<Vec<_>>());
        let d = decl(r#"{"name": "x", "shape": [3], "dtype": "bool"}"#);
        let r = row(RowData::Bool(vec![true, false, true]), &[3]);
        let (ModelInput::Batch(t), _) = assemble(&d, &[&r], None).unwrap() else {
            panic!("not a batch")
        };
        assert_eq!((t.kind(), t.size()), (Kind::Bool, vec![1, 3]));
        assert_eq!(values(&t), vec![1.0, 0.0, 1.0]);
    }

    #[test]
    fn padding_fills_each_variable_dimension_and_the_mask_marks_real_values() {
        let d = decl(
            r#"{"name": "ids", "shape": [-1], "dtype": "int64", "ragged": "pad", "pad_value": -1}"#,
        );
        let (a, b) = (
            row(RowData::I64(vec![7, 8]), &[2]),
            row(RowData::I64(vec![1, 2, 3, 4]), &[4]),
        );
        let (ModelInput::Batch(t), Some(m)) = assemble(&d, &[&a, &b], Some(DType::Int64)).unwrap()
        else {
            panic!("no mask")
        };
        assert_eq!((t.size(), t.kind()), (vec![2, 4], Kind::Int64));
        assert_eq!(values(&t), vec![7.0, 8.0, -1.0, -1.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!((m.size(), m.kind()), (vec![2, 4], Kind::Int64));
        assert_eq!(values(&m), vec![1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        // Two variable dimensions: [1, 2] and [2, 1] -> [2, 2, 2], zeros padding by default.
        let d = decl(r#"{"name": "x", "shape": [-1, -1], "ragged": "pad"}"#);
        let (a, b) = (
            row(RowData::F32(vec![1.0, 2.0]), &[1, 2]),
            row(RowData::F32(vec![3.0, 4.0]), &[2, 1]),
        );
        let (ModelInput::Batch(t), Some(m)) = assemble(&d, &[&a, &b], Some(DType::Bool)).unwrap()
        else {
            panic!("no mask")
        };
        assert_eq!(t.size(), vec![2, 2, 2]);
        assert_eq!(values(&t), vec![1.0, 2.0, 0.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
        assert_eq!(m.kind(), Kind::Bool);
        assert_eq!(values(&m), vec![1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        // Without a declared mask, none is made.
        assert!(assemble(&d, &[&a, &b], None).unwrap().1.is_none());
    }

    #[test]
    fn list_gives_one_tensor_per_row_and_single_a_batch_of_one() {
        let d = decl(r#"{"name": "images", "shape": [1, -1, -1], "ragged": "list"}"#);
        let (a, b) = (
            row(RowData::F32(vec![1.0; 6]), &[1, 2, 3]),
            row(RowData::F32(vec![2.0; 4]), &[1, 4, 1]),
        );
        let (ModelInput::List(ts), None) = assemble(&d, &[&a, &b], None).unwrap() else {
            panic!("not a list")
        };
        assert_eq!(ts[0].size(), vec![1, 2, 3]);
        assert_eq!(ts[1].size(), vec![1, 4, 1]);
        assert_eq!(values(&ts[1]), vec![2.0; 4]);
        let d = decl(r#"{"name": "x", "shape": [-1], "ragged": "single", "dtype": "float64"}"#);
        let r = row(RowData::F64(vec![0.5, 1.5, 2.5]), &[3]);
        let (ModelInput::Batch(t), None) = assemble(&d, &[&r], None).unwrap() else {
            panic!("not a batch")
        };
        assert_eq!((t.size(), t.kind()), (vec![1, 3], Kind::Double));
    }

    #[test]
    fn a_dense_chunk_keeps_its_good_rows_in_order() {
        let d = decl(r#"{"name": "x", "shape": [2]}"#);
        let data = RowData::F32(vec![1.0, 2.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0]);
        let ModelInput::Batch(t) = assemble_dense(&d, data, &[true, false, true, true]).unwrap()
        else {
            panic!("not a batch")
        };
        assert_eq!(t.size(), vec![3, 2]);
        assert_eq!(values(&t), vec![1.0, 2.0, 5.0, 6.0, 7.0, 8.0]);
        let short = RowData::F32(vec![1.0]);
        assert!(assemble_dense(&d, short, &[true]).is_err());
        let none = RowData::F32(vec![0.0, 0.0]);
        assert!(assemble_dense(&d, none, &[false]).is_err());
    }

    #[test]
    fn rows_that_do_not_fit_the_declaration_are_refused() {
        let d = decl(r#"{"name": "x", "shape": [2]}"#);
        let bad = row(RowData::F32(vec![1.0]), &[2]);
        assert!(
            assemble(&d, &[&bad], None)
                .unwrap_err()
                .contains("holds 1 values")
        );
        let wrong = row(RowData::F64(vec![1.0, 2.0]), &[2]);
        assert!(
            assemble(&d, &[&wrong], None)
                .unwrap_err()
                .contains("dtype float32")
        );
        assert!(assemble(&d, &[], None).is_err());
    }

    #[test]
    fn a_padded_batch_too_large_to_allocate_is_an_error_not_an_abort() {
        let d = decl(r#"{"name": "x", "shape": [-1, -1, -1], "ragged": "pad"}"#);
        let n = 1i64 << 20;
        let rows: Vec<RowTensor> = [[1, 1, n], [1, n, 1], [n, 1, 1]]
            .iter()
            .map(|s| row(RowData::F32(vec![0.0; n as usize]), s))
            .collect();
        let refs: Vec<&RowTensor> = rows.iter().collect();
        let e = assemble(&d, &refs, None).unwrap_err();
        assert!(e.contains("needs more memory than can be allocated"), "{e}");
    }
}
