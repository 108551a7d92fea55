//! Pillow's antialiased bilinear resample, ported bit for bit (the same coefficients,
//! fixed-point arithmetic and rounding), computing only the crop window; and torchvision's
//! center-crop offset. Called by the row pipeline in [`super::preprocess`].

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One axis of a resample: per output index, the first input index, the tap count, and
/// `ksize` fixed-point weights (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

impl Taps {
    /// The taps of output indices `range` of an `in_size` -> `out_size` resample (indexed from
    /// `range.start`).
    fn bilinear(in_size: usize, out_size: usize, range: std::ops::Range<usize>) -> Taps {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // the triangle filter's support is 1, widened on downscale
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(range.len());
        let mut weights = vec![0i32; range.len() * ksize];
        let mut pre = vec![0f64; ksize];
        for (i, xx) in range.enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = ((xmax - xmin).max(0) as usize).min(ksize);
            let mut total = 0.0;
            for (x, w) in pre.iter_mut().enumerate().take(n) {
                let t = ((x as i64 + xmin) as f64 - center + 0.5) / filterscale;
                *w = (1.0 - t.abs()).max(0.0);
                total += *w;
            }
            let one = (1u32 << PRECISION_BITS) as f64;
            for (k, &w) in weights[i * ksize..][..n].iter_mut().zip(&pre) {
                let w = if total != 0.0 { w / total } else { w };
                *k = if w < 0.0 {
                    (-0.5 + w * one) as i32
                } else {
                    (0.5 + w * one) as i32
                };
            }
            bounds.push((xmin as usize, n));
        }
        Taps {
            ksize,
            bounds,
            weights,
        }
    }

    fn of(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.weights[i * self.ksize..][..n])
    }
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A rectangle of a resized image, in its pixels.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) x0: usize,
    pub(super) y0: usize,
    pub(super) w: usize,
    pub(super) h: usize,
}

/// Pillow's `ImagingResample` with the bilinear filter on packed u8 pixels (`c` channels,
/// `from`/`to` as width x height), computing only `window` of the output: horizontal pass over
/// the rows the vertical pass needs, rounded to u8, then the vertical pass. Equal to
/// `PIL.Image.resize(..., BILINEAR).crop(window)`; memory and time follow the window.
pub(super) fn resize_like_pillow(
    src: &[u8],
    from: (u32, u32),
    to: (u32, u32),
    c: usize,
    win: Window,
) -> Vec<u8> {
    let (w, h) = (from.0 as usize, from.1 as usize);
    let (ow, oh) = (to.0 as usize, to.1 as usize);
    let half = 1i32 << (PRECISION_BITS - 1);
    let vert = (oh != h).then(|| Taps::bilinear(h, oh, win.y0..win.y0 + win.h));
    // Rows of the source that the vertical pass reads (the window's own rows without one).
    let (first, last) = match &vert {
        Some(v) if win.h > 0 => (v.bounds[0].0, v.bounds[win.h - 1].0 + v.bounds[win.h - 1].1),
        _ => (win.y0, win.y0 + win.h),
    };
    let row_len = win.w * c;
    let mut tmp = vec![0u8; (last - first) * row_len];
    if ow != w {
        let horiz = Taps::bilinear(w, ow, win.x0..win.x0 + win.w);
        for (y, out_row) in tmp.chunks_exact_mut(row_len.max(1)).enumerate() {
            let row = &src[(y + first) * w * c..][..w * c];
            for xx in 0..win.w {
                let (x0, k) = horiz.of(xx);
                for ch in 0..c {
                    let mut acc = half;
                    for (x, &kw) in k.iter().enumerate() {
                        acc += row[(x0 + x) * c + ch] as i32 * kw;
                    }
                    out_row[xx * c + ch] = clip8(acc);
                }
            }
        }
    } else {
        for (y, out_row) in tmp.chunks_exact_mut(row_len.max(1)).enumerate() {
            out_row.copy_from_slice(&src[((y + first) * w + win.x0) * c..][..row_len]);
        }
    }
    let Some(vert) = vert else {
        return tmp;
    };
    let mut out = vec![0u8; win.h * row_len];
    for (yy, out_row) in out.chunks_exact_mut(row_len.max(1)).enumerate() {
        let (y0, k) = vert.of(yy);
        let y0 = y0 - first;
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc = half;
            for (y, &kw) in k.iter().enumerate() {
                acc += tmp[(y0 + y) * row_len + i] as i32 * kw;
            }
            *o = clip8(acc);
        }
    }
    out
}

pub(super) fn crop_offset(size: u32, crop: u32) -> u32 {
    let d = size - crop;
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}
