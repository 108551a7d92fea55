//! `png` columns: each row's `[H, W]` class map (after `post`, which ends with argmax) as an
//! 8-bit greyscale PNG. PNG is lossless, so decoding a cell gives back the class indices
//! exactly (pixel value = class, 0..=255).

use arrow_array::ArrayRef;
use arrow_array::builder::BinaryBuilder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use std::collections::HashMap;
use std::sync::Arc;
use tch::{Kind, Tensor};

use super::tensor::{batch_tensor, returned};
use super::{OutputWriter, post, shape_text};
use crate::spec::general::{OutputDecl, PostOp};
use crate::value::Value;

/// A `png` column: per chunk a tensor `[rows, ...]` that `post` turns into `[rows, H, W]`
/// class indices in 0..=255.
pub struct PngWriter {
    shape: Option<Vec<i64>>,
    post: Vec<PostOp>,
    out: BinaryBuilder,
}

impl PngWriter {
    pub fn new(decl: &OutputDecl) -> PngWriter {
        PngWriter {
            shape: decl.shape.clone(),
            post: decl.post.clone(),
            out: BinaryBuilder::new(),
        }
    }

    fn declared(&self) -> String {
        match &self.shape {
            Some(s) => format!("a png of a class map {} per row", shape_text(s)),
            None => "a png of an [H, W] class map per row".into(),
        }
    }
}

/// `map` (`h * w` classes, row-major) as an 8-bit greyscale PNG; decoding it gives `map`
/// back exactly.
pub(crate) fn encode(map: &[u8], w: u32, h: u32) -> Result<Vec<u8>, String> {
    let mut png = Vec::new();
    // Fast deflate: class maps are long runs, which it already shrinks well.
    PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive)
        .write_image(map, w, h, ExtendedColorType::L8)
        .map_err(|e| format!("encoding a {h}x{w} png: {e}"))?;
    Ok(png)
}

impl OutputWriter for PngWriter {
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
            (0..good.len()).for_each(|_| self.out.append_null());
            return Ok(());
        };
        let t = batch_tensor(value, count, &self.declared())?;
        let p = post::apply(t, &self.post, masks)?;
        let size = p.size();
        let fits = match (&size[1..], &self.shape) {
            ([_, _], None) => true,
            ([h, w], Some(s)) => {
                s.len() == 2 && (s[0] == -1 || s[0] == *h) && (s[1] == -1 || s[1] == *w)
            }
            _ => false,
        };
        let (&[h, w], true) = (&size[1..], fits) else {
            return Err(format!(
                "declared {}, the model returned {}",
                self.declared(),
                returned(&t.size(), Some(&size), &self.post)
            ));
        };
        let (Ok(h32), Ok(w32)) = (u32::try_from(h), u32::try_from(w)) else {
            return Err(format!("a class map {h}x{w} is too large for a png"));
        };
        let map = if p.numel() > 0 {
            let range = |x: tch::Tensor| x.f_double_value(&[]).map_err(|e| e.to_string());
            let lo = range(p.f_min().map_err(|e| e.to_string())?)?;
            let hi = range(p.f_max().map_err(|e| e.to_string())?)?;
            if lo < 0.0 || hi > 255.0 || lo.is_nan() || hi.is_nan() {
                let class = if hi > 255.0 || hi.is_nan() { hi } else { lo };
                return Err(format!(
                    "a png pixel holds a class 0..=255, the class map has class {class}"
                ));
            }
            let mut map = Vec::new();
            map.try_reserve_exact(p.numel())
                .map_err(|_| format!("a class map of {} pixels cannot be allocated", p.numel()))?;
            map.resize(p.numel(), 0u8);
            p.f_to_kind(Kind::Uint8)
                .and_then(|u| u.f_copy_data(&mut map, p.numel()))
                .map_err(|e| format!("copying the class map: {e}"))?;
            map
        } else {
            Vec::new()
        };
        let per_row = (h * w) as usize;
        let mut rows = map.chunks_exact(per_row.max(1));
        for &g in good {
            if !g {
                self.out.append_null();
                continue;
            }
            let cells = if per_row == 0 {
                &[][..]
            } else {
                rows.next().unwrap_or_default()
            };
            self.out.append_value(encode(cells, w32, h32)?);
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(self.out.finish())
    }
}
