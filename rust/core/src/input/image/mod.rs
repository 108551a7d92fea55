//! Image inputs: the column reader (this file) over encoded bytes, Spark's image struct or
//! preprocessed floats; one row's pipeline in [`preprocess`] (decode, convert, resize, crop,
//! normalize), the files' completeness checks in `complete.rs`, Pillow's resize in
//! `resize.rs`. `crate::preprocess` re-exports [`preprocess`]'s public items (their old path).
//!
//! A fixed shape `[C, H, W]` follows version 1's rules exactly ([`Preprocessor::fill_limited`]:
//! decode, PIL's channel conversion, resize, crop, normalize); a column of floats is also
//! read as the already-preprocessed `C x H x W` values, as version 1 does. Shape
//! `[C, -1, -1]` (`ragged: "list"`) decodes each image at its own size
//! ([`Preprocessor::fill_native`]). Rows decode in parallel on a pool of `threads` threads.

use std::ops::Range;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type};
use arrow_array::{Array, ArrayRef, Int32Array, StructArray};
use arrow_schema::DataType;
use rayon::prelude::*;

use super::{DenseRows, InputReader, RowData, RowTensor};
mod complete;
pub mod preprocess;
mod resize;

use crate::spec::general::InputDecl;
use preprocess::{ImageInput, Preprocessor, RowTimes};

/// See [`super::reader`].
pub fn reader<'a>(
    decl: &'a InputDecl,
    columns: Vec<(&'a str, &'a ArrayRef)>,
    max_pixels: u64,
    max_elements: u64,
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
        max_elements,
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
    /// `max_row_elements`: an image at its own size holds at most this many values.
    max_elements: u64,
}

impl ImageReader<'_> {
    fn row(&self, i: usize) -> Result<RowTensor, String> {
        let input = self
            .rows
            .get(i)
            .ok_or_else(|| format!("row {i} is beyond the column"))?
            .clone()?;
        if self.native {
            let img = self
                .pre
                .fill_native(input, self.max_pixels, self.max_elements)?;
            return Ok(RowTensor {
                data: RowData::F32(img.values),
                shape: vec![self.shape[0], i64::from(img.height), i64::from(img.width)],
                times: img.times,
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
        match crate::sys::decode_pool(threads) {
            None => rows.map(|i| self.row(i)).collect(),
            Some(pool) => pool.install(|| rows.into_par_iter().map(|i| self.row(i)).collect()),
        }
    }

    fn row_shape(&self, i: usize) -> Option<Vec<i64>> {
        if !self.native {
            return Some(self.shape.to_vec());
        }
        let input = *self.rows.get(i)?.as_ref().ok()?;
        let (w, h) = self.pre.dimensions(input)?;
        Some(vec![self.shape[0], i64::from(h), i64::from(w)])
    }

    fn read_dense(&self, rows: Range<usize>, threads: usize) -> Option<DenseRows> {
        if self.native {
            return None;
        }
        let row_len = self.pre.row_len().max(1);
        let first = rows.start;
        let mut out = vec![0f32; row_len * rows.len()];
        // Each row decodes straight into its slot of the batch (as batch.rs does).
        let fill = |(k, slot): (usize, &mut [f32])| -> Result<RowTimes, String> {
            let input = self
                .rows
                .get(first + k)
                .ok_or_else(|| format!("row {} is beyond the column", first + k))?
                .clone()?;
            let res = self.pre.fill_limited(input, slot, self.max_pixels);
            if res.is_err() {
                slot.fill(0.0);
            }
            res
        };
        let status = match crate::sys::decode_pool(threads) {
            None => out.chunks_mut(row_len).enumerate().map(fill).collect(),
            Some(pool) => {
                pool.install(|| out.par_chunks_mut(row_len).enumerate().map(fill).collect())
            }
        };
        Some(DenseRows {
            data: RowData::F32(out),
            status,
        })
    }
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

/// Spark's image struct: `origin, height, width, nChannels, mode, data` (nulls: `None`).
pub(crate) fn struct_rows(s: &StructArray) -> Result<Vec<Option<ImageInput<'_>>>, String> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::BinaryArray;
    use arrow_array::builder::{BinaryBuilder, Int32Builder, StringBuilder};
    use arrow_schema::{Field, Fields};
    use image::{ImageBuffer, ImageFormat, Rgb};

    use super::*;

    fn decl(json: &str) -> InputDecl {
        serde_json::from_str(json).unwrap()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 40) as u8, (y * 60) as u8, 200]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    const DEFAULT: u64 = crate::limits::DEFAULT_MAX_ROW_ELEMENTS;

    const NORM: &str = r#""preprocess": {"scale": 0.00392156862745098, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}"#;

    #[test]
    fn native_size_equals_the_fixed_path_on_an_image_of_the_declared_size() {
        let (a, b) = (png(5, 4), png(3, 7));
        let col: ArrayRef = Arc::new(BinaryArray::from(vec![
            Some(a.as_slice()),
            Some(b.as_slice()),
            None,
            Some(b"not an image".as_slice()),
        ]));
        let fixed = decl(&format!(
            r#"{{"name": "image", "kind": "image", "shape": [3, 4, 5], {NORM}}}"#
        ));
        let native = decl(&format!(
            r#"{{"name": "images", "kind": "image", "shape": [3, -1, -1], "ragged": "list", {NORM}}}"#
        ));
        let f = reader(&fixed, vec![("image", &col)], 0, DEFAULT)
            .unwrap()
            .read(0..4, 1);
        let n = reader(&native, vec![("image", &col)], 0, DEFAULT)
            .unwrap()
            .read(0..4, 2);
        let (f0, n0) = (f[0].as_ref().unwrap(), n[0].as_ref().unwrap());
        assert_eq!(n0.shape, vec![3, 4, 5]);
        assert_eq!(n0.data, f0.data);
        assert_eq!(n[1].as_ref().unwrap().shape, vec![3, 7, 3]);
        assert_eq!(n[1].as_ref().unwrap().data.len(), 3 * 7 * 3);
        assert!(f[1].as_ref().unwrap_err().contains("no resize"));
        assert_eq!(n[2].as_ref().unwrap_err(), "input is null");
        assert!(n[3].as_ref().unwrap_err().contains("not a PNG"));
        // The dense path gives the same rows in one buffer, zeros for bad rows.
        let dense = reader(&fixed, vec![("image", &col)], 0, DEFAULT)
            .unwrap()
            .read_dense(0..4, 2)
            .unwrap();
        let RowData::F32(all) = &dense.data else {
            panic!("not f32")
        };
        assert_eq!(RowData::F32(all[..60].to_vec()), f0.data);
        assert!(all[60..].iter().all(|&x| x == 0.0));
        assert!(dense.status[0].is_ok() && dense.status[1..].iter().all(Result::is_err));
        assert!(
            reader(&native, vec![("image", &col)], 0, DEFAULT)
                .unwrap()
                .read_dense(0..4, 1)
                .is_none()
        );
        // The pixel limit applies to each image.
        let small = reader(&native, vec![("image", &col)], 20, DEFAULT)
            .unwrap()
            .read(0..2, 1);
        assert!(
            small[1]
                .as_ref()
                .unwrap_err()
                .contains("over the limit of 20")
        );
        assert!(small[0].is_ok());
    }

    #[test]
    fn spark_image_struct_at_native_size_matches_the_encoded_file() {
        let (w, h) = (3usize, 2usize);
        let mut bgr = Vec::new();
        for y in 0..h {
            for x in 0..w {
                bgr.extend_from_slice(&[200, (y * 60) as u8, (x * 40) as u8]);
            }
        }
        let mut origin = StringBuilder::new();
        origin.append_value("mem");
        let int = |v: i32| {
            let mut b = Int32Builder::new();
            b.append_value(v);
            Arc::new(b.finish()) as ArrayRef
        };
        let mut data = BinaryBuilder::new();
        data.append_value(&bgr);
        let fields = Fields::from(vec![
            Field::new("origin", DataType::Utf8, true),
            Field::new("height", DataType::Int32, true),
            Field::new("width", DataType::Int32, true),
            Field::new("nChannels", DataType::Int32, true),
            Field::new("mode", DataType::Int32, true),
            Field::new("data", DataType::Binary, true),
        ]);
        let s: ArrayRef = Arc::new(StructArray::new(
            fields,
            vec![
                Arc::new(origin.finish()),
                int(h as i32),
                int(w as i32),
                int(3),
                int(16),
                Arc::new(data.finish()),
            ],
            None,
        ));
        let encoded = png(w as u32, h as u32);
        let bin: ArrayRef = Arc::new(BinaryArray::from(vec![Some(encoded.as_slice())]));
        let native = decl(&format!(
            r#"{{"name": "images", "kind": "image", "shape": [3, -1, -1], "ragged": "list", {NORM}}}"#
        ));
        let a = reader(&native, vec![("s", &s)], 0, DEFAULT)
            .unwrap()
            .read(0..1, 1);
        let b = reader(&native, vec![("b", &bin)], 0, DEFAULT)
            .unwrap()
            .read(0..1, 1);
        let (a, b) = (a[0].as_ref().unwrap(), b[0].as_ref().unwrap());
        assert_eq!((&a.data, &a.shape), (&b.data, &b.shape));
    }

    #[test]
    fn float_lists_are_fixed_size_only_and_other_types_fail_the_batch() {
        let native =
            decl(r#"{"name": "images", "kind": "image", "shape": [3, -1, -1], "ragged": "list"}"#);
        let mut b =
            arrow_array::builder::ListBuilder::new(arrow_array::builder::Float32Builder::new());
        b.values().append_slice(&[0.5; 12]);
        b.append(true);
        let floats: ArrayRef = Arc::new(b.finish());
        let e = reader(&native, vec![("x", &floats)], 0, DEFAULT)
            .err()
            .unwrap();
        assert!(e.contains("cannot be read as an image"), "{e}");
        let fixed = decl(r#"{"name": "image", "kind": "image", "shape": [3, 2, 2]}"#);
        let rows = reader(&fixed, vec![("x", &floats)], 0, DEFAULT)
            .unwrap()
            .read(0..1, 1);
        assert_eq!(rows[0].as_ref().unwrap().data, RowData::F32(vec![0.5; 12]));
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![1]));
        let e = reader(&fixed, vec![("x", &ints)], 0, DEFAULT)
            .err()
            .unwrap();
        assert!(
            e.starts_with("Arrow type Int32 cannot be read as an image"),
            "{e}"
        );
    }
}
