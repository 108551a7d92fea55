//! Image inputs: encoded bytes or Spark's image struct through [`crate::preprocess`].
//!
//! A fixed shape `[C, H, W]` follows version 1's rules exactly ([`Preprocessor::fill_limited`]:
//! decode, PIL's channel conversion, resize, crop, normalize); a column of floats is also
//! read as the already-preprocessed `C x H x W` values, as version 1 does. Shape
//! `[C, -1, -1]` (`ragged: "list"`) decodes each image at its own size
//! ([`Preprocessor::fill_native`]). Rows decode in parallel on a pool of `threads` threads.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type};
use arrow_array::{Array, ArrayRef, Int32Array, StructArray};
use arrow_schema::DataType;
use once_cell::sync::Lazy;
use rayon::prelude::*;

use super::{InputReader, RowData, RowTensor};
use crate::preprocess::{ImageInput, Preprocessor};
use crate::spec::general::InputDecl;

/// See [`super::reader`].
pub fn reader<'a>(
    decl: &'a InputDecl,
    columns: Vec<(&'a str, &'a ArrayRef)>,
    max_pixels: u64,
) -> Result<Box<dyn InputReader + 'a>, String> {
    let [(_, col)] = columns[..] else {
        return Err(format!(
            "an image input reads one column, not {}",
            columns.len()
        ));
    };
    let native = decl.shape.len() == 3 && decl.shape[1] == -1;
    let spec = if native {
        // Native sizes: the channel and number rules on a stand-in 1x1 size (never used).
        let mut probe = decl.clone();
        probe.shape = vec![decl.shape[0], 1, 1];
        probe.image_spec()
    } else {
        decl.image_spec()
    }
    .ok_or_else(|| format!("shape {:?} is not an image shape", decl.shape))?;
    let rows = read_rows(col.as_ref(), native)?;
    Ok(Box::new(ImageReader {
        rows,
        pre: Preprocessor::new(&spec),
        native,
        shape: &decl.shape,
        max_pixels,
    }))
}

type Row<'a> = Result<ImageInput<'a>, String>;

struct ImageReader<'a> {
    rows: Vec<Row<'a>>,
    pre: Preprocessor,
    /// Each image at its own size (`[C, -1, -1]`).
    native: bool,
    shape: &'a [i64],
    max_pixels: u64,
}

impl ImageReader<'_> {
    fn row(&self, i: usize) -> Result<RowTensor, String> {
        let input = self
            .rows
            .get(i)
            .ok_or_else(|| format!("row {i} is beyond the column"))?
            .clone()?;
        if self.native {
            let (out, (h, w), times) = self.pre.fill_native(input, self.max_pixels)?;
            return Ok(RowTensor {
                data: RowData::F32(out),
                shape: vec![self.shape[0], i64::from(h), i64::from(w)],
                times,
            });
        }
        let mut out = vec![0f32; self.pre.row_len()];
        let times = self.pre.fill_limited(input, &mut out, self.max_pixels)?;
        Ok(RowTensor {
            data: RowData::F32(out),
            shape: self.shape.to_vec(),
            times,
        })
    }
}

impl InputReader for ImageReader<'_> {
    fn read(&self, rows: Range<usize>, threads: usize) -> Vec<Result<RowTensor, String>> {
        // Decoding gets the caller's thread budget, like the forward pass that follows it.
        match decode_pool(threads) {
            None => rows.map(|i| self.row(i)).collect(),
            Some(pool) => pool.install(|| rows.into_par_iter().map(|i| self.row(i)).collect()),
        }
    }
}

/// A rayon pool of `n` threads per distinct `n` (a handful per process), none for one thread
/// (as batch.rs's, for the general path).
fn decode_pool(n: usize) -> Option<&'static rayon::ThreadPool> {
    static POOLS: Lazy<Mutex<HashMap<usize, &'static rayon::ThreadPool>>> =
        Lazy::new(|| Mutex::new(HashMap::new()));
    if n <= 1 {
        return None;
    }
    let mut pools = POOLS.lock().ok()?;
    if let Some(p) = pools.get(&n) {
        return Some(p);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("torchspark-decode-{i}"))
        .build()
        .ok()?;
    let pool: &'static rayon::ThreadPool = Box::leak(Box::new(pool));
    pools.insert(n, pool);
    Some(pool)
}

/// Borrows every row of the column; nulls and malformed structs become row errors.
fn read_rows(col: &dyn Array, native: bool) -> Result<Vec<Row<'_>>, String> {
    let null = || Err("input is null".to_string());
    let rows: Vec<Option<ImageInput<'_>>> = match col.data_type() {
        DataType::Binary => col
            .as_binary::<i32>()
            .iter()
            .map(|v| v.map(ImageInput::Encoded))
            .collect(),
        DataType::LargeBinary => col
            .as_binary::<i64>()
            .iter()
            .map(|v| v.map(ImageInput::Encoded))
            .collect(),
        DataType::Struct(_) => struct_rows(col.as_struct())?,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) if !native => {
            return float_rows(col);
        }
        other => {
            return Err(format!(
                "Arrow type {other} cannot be read as an image (accepted: binary (encoded \
                 PNG, JPEG, BMP, GIF, TIFF, WebP), Spark's image struct{})",
                if native {
                    ""
                } else {
                    ", a list of float or double (C x H x W, preprocessed)"
                }
            ));
        }
    };
    Ok(rows.into_iter().map(|r| r.map_or_else(null, Ok)).collect())
}

/// Spark's image struct: `origin, height, width, nChannels, mode, data`.
fn struct_rows(s: &StructArray) -> Result<Vec<Option<ImageInput<'_>>>, String> {
    let int = |name: &str| -> Result<&Int32Array, String> {
        s.column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Int32Type>())
            .ok_or_else(|| {
                format!("image struct needs an int field `{name}` (Spark's image schema)")
            })
    };
    let (h, w, c) = (int("height")?, int("width")?, int("nChannels")?);
    let data = s
        .column_by_name("data")
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or("image struct needs a binary field `data` (Spark's image schema)")?;
    Ok((0..s.len())
        .map(|i| {
            if s.is_null(i) || data.is_null(i) || h.is_null(i) || w.is_null(i) || c.is_null(i) {
                None
            } else {
                Some(ImageInput::SparkImage {
                    height: h.value(i),
                    width: w.value(i),
                    n_channels: c.value(i),
                    data: data.value(i),
                })
            }
        })
        .collect())
}

/// Preprocessed floats, borrowed from the list's values.
fn float_rows(col: &dyn Array) -> Result<Vec<Row<'_>>, String> {
    let (spans, values): (Vec<(usize, usize)>, &ArrayRef) = match col.data_type() {
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            let o = l.value_offsets();
            let spans = o.windows(2).map(|w| (w[0] as usize, w[1] as usize));
            (spans.collect(), l.values())
        }
        DataType::LargeList(_) => {
            let l = col.as_list::<i64>();
            let o = l.value_offsets();
            let spans = o.windows(2).map(|w| (w[0] as usize, w[1] as usize));
            (spans.collect(), l.values())
        }
        _ => {
            let l = col.as_fixed_size_list();
            let n = l.value_length() as usize;
            (
                (0..l.len()).map(|i| (i * n, (i + 1) * n)).collect(),
                l.values(),
            )
        }
    };
    let row = |i: usize, (a, b): (usize, usize), v: &dyn Array| -> Result<(), String> {
        if col.is_null(i) {
            Err("input is null".into())
        } else if v.null_count() > 0
            && let Some(k) = (a..b).find(|&k| v.is_null(k))
        {
            Err(format!("null at position {}", k - a))
        } else {
            Ok(())
        }
    };
    match values.data_type() {
        DataType::Float32 => {
            let v = values.as_primitive::<Float32Type>();
            Ok(spans
                .iter()
                .enumerate()
                .map(|(i, &(a, b))| {
                    row(i, (a, b), v).map(|()| ImageInput::Floats(&v.values()[a..b]))
                })
                .collect())
        }
        DataType::Float64 => {
            let v = values.as_primitive::<Float64Type>();
            Ok(spans
                .iter()
                .enumerate()
                .map(|(i, &(a, b))| {
                    row(i, (a, b), v).map(|()| ImageInput::Doubles(&v.values()[a..b]))
                })
                .collect())
        }
        other => Err(format!(
            "a list of {other} cannot be read as an image (a list of float or double, or binary, \
             or Spark's image struct)"
        )),
    }
}
