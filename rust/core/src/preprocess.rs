//! One row → the model's CHW float input, as the spec says.
//!
//! Pipeline: decode (or take Spark's BGR struct) → RGB or gray → optional resize (bilinear,
//! antialiased on downscale; to a fixed size, or the shorter side to N as torchvision's
//! `Resize(N)`) → optional center crop → `(p * scale - mean) / std` per channel,
//! written straight into the row's slice of the batch tensor. Errors are plain strings: the
//! batch layer prefixes them with the row number.
//!
//! Decoding is the `image` crate's (zune-jpeg for JPEG, SIMD). Resizing is a port of Pillow's
//! antialiased bilinear resample (what torchvision's Resize does to PIL images): the same
//! coefficients, fixed-point arithmetic and rounding, so the pixels equal PIL's bit for bit;
//! integer-only, it is also several times faster than `image::imageops::resize` (floats).

use std::time::{Duration, Instant};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb};

use crate::spec::{ModelSpec, Resize};

/// One row of input, borrowed from the Arrow batch.
#[derive(Debug, Clone, Copy)]
pub enum ImageInput<'a> {
    /// Encoded bytes: PNG, JPEG, BMP or GIF (first frame).
    Encoded(&'a [u8]),
    /// Spark's image struct: row-major BGR (3), BGRA (4) or gray (1) bytes.
    SparkImage {
        height: i32,
        width: i32,
        n_channels: i32,
        data: &'a [u8],
    },
    /// Already the model input: C×H×W floats, used as they are.
    Floats(&'a [f32]),
    /// Same, as f64 (Spark `array<double>`).
    Doubles(&'a [f64]),
}

/// Where one row's preprocessing went; the batch layer sums these over rows (thread time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowTimes {
    /// Decoding the encoded bytes (or converting Spark's struct) to RGB/gray pixels.
    pub decode: Duration,
    /// The antialiased resize (zero when the image already has the target size).
    pub resize: Duration,
}

/// What the spec asks for, precomputed once per model.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    height: u32,
    width: u32,
    channels: usize,
    bgr: bool,
    resize: Option<Resize>,
    center_crop: Option<[u32; 2]>,
    /// `lut[c][p] = (p * scale - mean[c]) / std[c]` for every byte value `p`.
    lut: Vec<[f32; 256]>,
}

enum Pixels {
    Rgb(ImageBuffer<Rgb<u8>, Vec<u8>>),
    Gray(ImageBuffer<Luma<u8>, Vec<u8>>),
}

impl Pixels {
    fn dimensions(&self) -> (u32, u32) {
        match self {
            Pixels::Rgb(i) => i.dimensions(),
            Pixels::Gray(i) => i.dimensions(),
        }
    }
}

impl Preprocessor {
    pub fn new(spec: &ModelSpec) -> Self {
        let (mean, std) = spec.mean_std();
        let scale = spec.preprocess.scale;
        let lut = mean
            .iter()
            .zip(&std)
            .map(|(&m, &s)| {
                let mut t = [0f32; 256];
                for (p, v) in t.iter_mut().enumerate() {
                    *v = (p as f32 * scale - m) / s;
                }
                t
            })
            .collect();
        Preprocessor {
            height: spec.input.height,
            width: spec.input.width,
            channels: spec.input.channels as usize,
            bgr: spec.wants_bgr(),
            resize: spec.preprocess.resize,
            center_crop: spec.preprocess.center_crop,
            lut,
        }
    }

    /// Number of floats one row fills.
    pub fn row_len(&self) -> usize {
        self.channels * self.height as usize * self.width as usize
    }

    /// Fills `out` (exactly `row_len()` floats, CHW) from one row.
    pub fn fill(&self, input: ImageInput<'_>, out: &mut [f32]) -> Result<(), String> {
        self.fill_timed(input, out).map(|_| ())
    }

    /// [`Self::fill`], also saying how long decoding and resizing took.
    pub fn fill_timed(&self, input: ImageInput<'_>, out: &mut [f32]) -> Result<RowTimes, String> {
        let mut times = RowTimes::default();
        match input {
            ImageInput::Floats(v) => {
                self.check_len(v.len())?;
                out.copy_from_slice(v);
            }
            ImageInput::Doubles(v) => {
                self.check_len(v.len())?;
                for (o, &x) in out.iter_mut().zip(v) {
                    *o = x as f32;
                }
            }
            ImageInput::Encoded(bytes) => {
                let started = Instant::now();
                let pixels = self.decode(bytes)?;
                times.decode = started.elapsed();
                self.finish(pixels, out, &mut times)?;
            }
            ImageInput::SparkImage {
                height,
                width,
                n_channels,
                data,
            } => {
                let started = Instant::now();
                let pixels = self.spark_pixels(height, width, n_channels, data)?;
                times.decode = started.elapsed();
                self.finish(pixels, out, &mut times)?;
            }
        }
        Ok(times)
    }

    fn check_len(&self, len: usize) -> Result<(), String> {
        if len == self.row_len() {
            Ok(())
        } else {
            Err(format!(
                "expected {} floats ({}x{}x{}), got {len}",
                self.row_len(),
                self.channels,
                self.height,
                self.width
            ))
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<Pixels, String> {
        if bytes.is_empty() {
            return Err("empty image bytes".into());
        }
        let format = image::guess_format(bytes).map_err(|_| {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!(
                "not a PNG, JPEG, BMP or GIF image (first bytes: {})",
                head.join(" ")
            )
        })?;
        let name = format_name(format);
        let img = image::load_from_memory_with_format(bytes, format)
            .map_err(|e| format!("invalid {name}: {e}"))?;
        Ok(self.to_pixels(img))
    }

    fn to_pixels(&self, img: DynamicImage) -> Pixels {
        if self.channels == 1 {
            Pixels::Gray(img.into_luma8())
        } else {
            // Gray is expanded to three equal channels; alpha is dropped.
            Pixels::Rgb(img.into_rgb8())
        }
    }

    fn spark_pixels(
        &self,
        height: i32,
        width: i32,
        nc: i32,
        data: &[u8],
    ) -> Result<Pixels, String> {
        if height <= 0 || width <= 0 {
            return Err(format!(
                "image struct has height {height} and width {width} (an undecodable file?)"
            ));
        }
        let (h, w) = (height as u32, width as u32);
        let npix = h as usize * w as usize;
        let nc_usize = match nc {
            1 | 3 | 4 => nc as usize,
            _ => {
                return Err(format!(
                    "image struct has nChannels {nc}; 1, 3 or 4 expected"
                ));
            }
        };
        if data.len() != npix * nc_usize {
            return Err(format!(
                "image struct data has {} bytes, but {height}x{width}x{nc} needs {}",
                data.len(),
                npix * nc_usize
            ));
        }
        let img = match nc_usize {
            1 => DynamicImage::ImageLuma8(
                ImageBuffer::from_raw(w, h, data.to_vec()).ok_or("bad gray buffer")?,
            ),
            _ => {
                // Spark stores BGR / BGRA; turn it into RGB, dropping alpha.
                let mut rgb = Vec::with_capacity(npix * 3);
                for px in data.chunks_exact(nc_usize) {
                    rgb.extend_from_slice(&[px[2], px[1], px[0]]);
                }
                DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, rgb).ok_or("bad color buffer")?)
            }
        };
        Ok(self.to_pixels(img))
    }

    fn finish(
        &self,
        mut pixels: Pixels,
        out: &mut [f32],
        times: &mut RowTimes,
    ) -> Result<(), String> {
        let (w, h) = pixels.dimensions();
        let target = self.resize.map_or((w, h), |r| r.target(w, h));
        if target != (w, h) {
            let started = Instant::now();
            let (rw, rh) = target;
            pixels = match pixels {
                Pixels::Rgb(i) => {
                    let v = resize_like_pillow(i.as_raw(), (w, h), (rw, rh), 3);
                    Pixels::Rgb(ImageBuffer::from_raw(rw, rh, v).ok_or("resize: bad RGB buffer")?)
                }
                Pixels::Gray(i) => {
                    let v = resize_like_pillow(i.as_raw(), (w, h), (rw, rh), 1);
                    Pixels::Gray(ImageBuffer::from_raw(rw, rh, v).ok_or("resize: bad gray buffer")?)
                }
            };
            times.resize = started.elapsed();
        }
        let (mut x0, mut y0) = (0u32, 0u32);
        let (w, h) = pixels.dimensions();
        if let Some([ch, cw]) = self.center_crop {
            if cw > w || ch > h {
                return Err(format!(
                    "image is {h}x{w} (height x width), smaller than center_crop [{ch}, {cw}]"
                ));
            }
            // torchvision's CenterCrop: round((size - crop) / 2), half to even.
            x0 = crop_offset(w, cw);
            y0 = crop_offset(h, ch);
        } else if (w, h) != (self.width, self.height) {
            return Err(format!(
                "image is {h}x{w} (height x width) but the model takes {}x{} and the spec has no resize",
                self.height, self.width
            ));
        }
        let (ow, oh) = (self.width as usize, self.height as usize);
        let plane = ow * oh;
        match &pixels {
            Pixels::Gray(img) => {
                let lut = &self.lut[0];
                let stride = w as usize;
                let raw = img.as_raw();
                for y in 0..oh {
                    let src = &raw[(y + y0 as usize) * stride + x0 as usize..][..ow];
                    for (o, &p) in out[y * ow..][..ow].iter_mut().zip(src) {
                        *o = lut[p as usize];
                    }
                }
            }
            Pixels::Rgb(img) => {
                let stride = w as usize * 3;
                let raw = img.as_raw();
                let (p0, rest) = out.split_at_mut(plane);
                let (p1, p2) = rest.split_at_mut(plane);
                // Output plane k takes source channel k (RGB) or 2 - k (BGR).
                let (s0, s2) = if self.bgr { (2, 0) } else { (0, 2) };
                let (l0, l1, l2) = (&self.lut[0], &self.lut[1], &self.lut[2]);
                for y in 0..oh {
                    let src = &raw[(y + y0 as usize) * stride + x0 as usize * 3..][..ow * 3];
                    let row = y * ow;
                    for (x, px) in src.chunks_exact(3).enumerate() {
                        p0[row + x] = l0[px[s0] as usize];
                        p1[row + x] = l1[px[1] as usize];
                        p2[row + x] = l2[px[s2] as usize];
                    }
                }
            }
        }
        Ok(())
    }
}

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
    fn bilinear(in_size: usize, out_size: usize) -> Taps {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // the triangle filter's support is 1, widened on downscale
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut pre = vec![0f64; ksize];
        for xx in 0..out_size {
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
            for (k, &w) in weights[xx * ksize..][..n].iter_mut().zip(&pre) {
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

/// Pillow's `ImagingResample` with the bilinear filter on packed u8 pixels (`c` channels,
/// `from`/`to` as width x height): horizontal pass over the rows the vertical pass needs,
/// rounded to u8, then the vertical pass. Equal to `PIL.Image.resize(..., BILINEAR)`.
fn resize_like_pillow(src: &[u8], from: (u32, u32), to: (u32, u32), c: usize) -> Vec<u8> {
    let (w, h) = (from.0 as usize, from.1 as usize);
    let (ow, oh) = (to.0 as usize, to.1 as usize);
    let half = 1i32 << (PRECISION_BITS - 1);
    let vert = Taps::bilinear(h, oh);
    // Rows of the source that the vertical pass reads.
    let (first, last) = if oh != h && oh > 0 {
        let (s, n) = vert.bounds[oh - 1];
        (vert.bounds[0].0, s + n)
    } else {
        (0, h)
    };
    let (tmp, tw) = if ow != w {
        let horiz = Taps::bilinear(w, ow);
        let mut tmp = vec![0u8; (last - first) * ow * c];
        for (y, out_row) in tmp.chunks_exact_mut(ow * c).enumerate() {
            let row = &src[(y + first) * w * c..][..w * c];
            for xx in 0..ow {
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
        (tmp, ow)
    } else {
        (src[first * w * c..last * w * c].to_vec(), w)
    };
    if oh == h {
        return tmp;
    }
    let stride = tw * c;
    let mut out = vec![0u8; oh * stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (y0, k) = vert.of(yy);
        let y0 = y0 - first;
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc = half;
            for (y, &kw) in k.iter().enumerate() {
                acc += tmp[(y0 + y) * stride + i] as i32 * kw;
            }
            *o = clip8(acc);
        }
    }
    out
}

fn crop_offset(size: u32, crop: u32) -> u32 {
    let d = size - crop;
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Gif => "GIF",
        _ => "image",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ModelSpec {
        ModelSpec::from_json(json).unwrap()
    }

    fn png(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = ImageBuffer::from_fn(w, h, |x, y| Rgb(f(x, y)));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn normalizes_into_chw_planes() {
        let p = Preprocessor::new(&spec(
            r#"{"input": {"height": 2, "width": 3},
                "preprocess": {"scale": 1.0, "mean": [1, 2, 3], "std": [2, 2, 2]}}"#,
        ));
        let bytes = png(3, 2, |x, y| [(x + 10 * y) as u8, 100, 200]);
        let mut out = vec![0f32; 18];
        p.fill(ImageInput::Encoded(&bytes), &mut out).unwrap();
        assert_eq!(&out[..6], &[-0.5, 0.0, 0.5, 4.5, 5.0, 5.5]);
        assert_eq!(out[6], 49.0);
        assert_eq!(out[12], 98.5);
    }

    #[test]
    fn spark_bgr_struct_matches_png_rgb() {
        let p = Preprocessor::new(&spec(r#"{"input": {"height": 2, "width": 2}}"#));
        let f = |x: u32, y: u32| [(x * 50) as u8, (y * 70) as u8, 9];
        let bytes = png(2, 2, f);
        let mut bgr = Vec::new();
        for y in 0..2 {
            for x in 0..2 {
                let [r, g, b] = f(x, y);
                bgr.extend_from_slice(&[b, g, r]);
            }
        }
        let (mut a, mut b) = (vec![0f32; 12], vec![0f32; 12]);
        p.fill(ImageInput::Encoded(&bytes), &mut a).unwrap();
        let s = ImageInput::SparkImage {
            height: 2,
            width: 2,
            n_channels: 3,
            data: &bgr,
        };
        p.fill(s, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bgr_model_gets_swapped_planes() {
        let rgb = Preprocessor::new(&spec(r#"{"input": {"height": 1, "width": 1}}"#));
        let bgr = Preprocessor::new(&spec(
            r#"{"input": {"height": 1, "width": 1, "channel_order": "BGR"}}"#,
        ));
        let bytes = png(1, 1, |_, _| [10, 20, 30]);
        let (mut a, mut b) = (vec![0f32; 3], vec![0f32; 3]);
        rgb.fill(ImageInput::Encoded(&bytes), &mut a).unwrap();
        bgr.fill(ImageInput::Encoded(&bytes), &mut b).unwrap();
        assert_eq!(a, vec![b[2], b[1], b[0]]);
    }

    #[test]
    fn gray_struct_expands_to_three_channels() {
        let p = Preprocessor::new(&spec(
            r#"{"input": {"height": 1, "width": 2}, "preprocess": {"scale": 1.0}}"#,
        ));
        let s = ImageInput::SparkImage {
            height: 1,
            width: 2,
            n_channels: 1,
            data: &[51, 102],
        };
        let mut out = vec![0f32; 6];
        p.fill(s, &mut out).unwrap();
        assert_eq!(out, vec![51.0, 102.0, 51.0, 102.0, 51.0, 102.0]);
    }

    #[test]
    fn resize_then_center_crop() {
        let p = Preprocessor::new(&spec(
            r#"{"input": {"height": 4, "width": 4},
                "preprocess": {"resize": [6, 6], "center_crop": [4, 4], "scale": 1.0}}"#,
        ));
        let bytes = png(12, 12, |_, _| [7, 7, 7]);
        let mut out = vec![0f32; 48];
        p.fill(ImageInput::Encoded(&bytes), &mut out).unwrap();
        assert!(out.iter().all(|&v| (v - 7.0).abs() < 1e-6));
    }

    #[test]
    fn shorter_side_resize_then_center_crop_keeps_the_middle() {
        // 12x6 (landscape) -> shorter side 4 -> 8x4 -> the central 4x4: columns 2..6 of the
        // resized image, i.e. source columns 4..12, all red; the outer columns are blue.
        let p = Preprocessor::new(&spec(
            r#"{"input": {"height": 4, "width": 4},
                "preprocess": {"resize": 4, "center_crop": [4, 4], "scale": 1.0}}"#,
        ));
        let bytes = png(12, 6, |x, _| {
            if (4..8).contains(&x) {
                [200, 0, 0]
            } else {
                [0, 0, 200]
            }
        });
        let mut out = vec![0f32; 48];
        let t = p.fill_timed(ImageInput::Encoded(&bytes), &mut out).unwrap();
        assert!(t.resize > Duration::ZERO);
        // The two central columns of the crop are pure red, the two outer ones mixed.
        for y in 0..4 {
            assert_eq!(
                &out[y * 4 + 1..y * 4 + 3],
                &[200.0, 200.0],
                "row {y}: {out:?}"
            );
        }
        let portrait = png(6, 12, |_, _| [9, 9, 9]);
        p.fill(ImageInput::Encoded(&portrait), &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 9.0), "{out:?}");
    }

    #[test]
    fn rejects_wrong_size_without_resize() {
        let p = Preprocessor::new(&spec(r#"{"input": {"height": 4, "width": 4}}"#));
        let bytes = png(5, 4, |_, _| [0, 0, 0]);
        let e = p
            .fill(ImageInput::Encoded(&bytes), &mut [0f32; 48])
            .unwrap_err();
        assert!(e.contains("no resize"), "{e}");
    }

    #[test]
    fn names_truncated_png() {
        let p = Preprocessor::new(&spec(r#"{"input": {"height": 4, "width": 4}}"#));
        let bytes = png(4, 4, |x, _| [x as u8, 0, 0]);
        let e = p
            .fill(
                ImageInput::Encoded(&bytes[..bytes.len() / 2]),
                &mut [0f32; 48],
            )
            .unwrap_err();
        assert!(e.starts_with("invalid PNG"), "{e}");
    }

    #[test]
    fn crop_offset_rounds_half_to_even_like_torchvision() {
        assert_eq!(crop_offset(10, 4), 3);
        assert_eq!(crop_offset(5, 4), 0); // round(0.5) = 0
        assert_eq!(crop_offset(7, 4), 2); // round(1.5) = 2
        assert_eq!(crop_offset(9, 4), 2); // round(2.5) = 2
    }
}
