//! One image row → the model's CHW float input, as the spec says (the [`Preprocessor`]).
//!
//! Pipeline: check the encoded file is complete and within the pixel limit (from its header)
//! → decode (or take Spark's BGR struct) → optional EXIF orientation → PIL's `convert("L")`,
//! `convert("RGB")` or the four stored bands → optional resize (bilinear, antialiased on
//! downscale; to a fixed size, or the shorter side to N as torchvision's `Resize(N)`) →
//! optional center crop → `(p * scale - mean) / std` per channel, written straight into the
//! row's slice of the batch tensor. Errors are plain strings: the batch layer prefixes them
//! with the row number.
//!
//! Decoding is the `image` crate's (zune-jpeg for JPEG, SIMD; pure-Rust PNG, GIF, BMP, TIFF and
//! WebP decoders). The conversion to 8-bit L/RGB follows Pillow's rules bit for bit (see
//! [`to_bands`] and docs/images.md). Resizing is a port of Pillow's antialiased bilinear
//! resample (what torchvision's Resize does to PIL images): the same coefficients, fixed-point
//! arithmetic and rounding, so the pixels equal PIL's bit for bit; integer-only, it is also
//! several times faster than `image::imageops::resize` (floats). The format checks live in
//! `complete.rs`, the resample in `resize.rs` beside this file.

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use super::complete::{
    check_complete, gif_first_frame_size, is_eof, tiff_extra_sample_as_alpha, webp_first_frame_size,
};
use super::resize::{Window, crop_offset, resize_like_pillow};
use crate::spec::{ExifOrientation, ModelSpec, Resize};

/// One row of input, borrowed from the Arrow batch.
#[derive(Debug, Clone, Copy)]
pub enum ImageInput<'a> {
    /// Encoded bytes: PNG, JPEG, BMP, GIF (first frame), TIFF (first page) or WebP.
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

/// An image decoded at its own size ([`Preprocessor::fill_native`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NativeImage {
    /// `channels x height x width` floats, CHW, normalized.
    pub values: Vec<f32>,
    pub height: u32,
    pub width: u32,
    pub times: RowTimes,
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
    max_pixels: u64,
    exif: ExifOrientation,
    /// `lut[c][p] = (p * scale - mean[c]) / std[c]` for every byte value `p`.
    lut: Vec<[f32; 256]>,
}

/// Decoded 8-bit pixels, row-major, `c` interleaved bands (1: L, 2: LA, 3: RGB, 4: RGBA).
struct Pixels {
    w: u32,
    h: u32,
    c: usize,
    data: Vec<u8>,
}

/// ITU-R 601-2 luma with Pillow's fixed-point rounding: `L24` in Pillow's Convert.c
/// (`rgb2l`), which `Image.convert("L")` applies to RGB, RGBA, P and PA images.
#[inline]
pub fn pil_luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
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
            max_pixels: spec.preprocess.max_pixels,
            exif: spec.preprocess.exif_orientation,
            lut,
        }
    }

    /// Number of floats one row fills.
    pub fn row_len(&self) -> usize {
        self.channels * self.height as usize * self.width as usize
    }

    /// "3x224x224 float32": one row's shape, for messages.
    pub fn shape_text(&self) -> String {
        format!("{}x{}x{} float32", self.channels, self.height, self.width)
    }

    /// The pixel limit in force when a call asks for `requested` (0: the spec's): the smaller.
    pub fn pixel_limit(&self, requested: u64) -> u64 {
        if requested == 0 {
            self.max_pixels
        } else {
            requested.min(self.max_pixels)
        }
    }

    /// Fills `out` (exactly `row_len()` floats, CHW) from one row.
    pub fn fill(&self, input: ImageInput<'_>, out: &mut [f32]) -> Result<(), String> {
        self.fill_timed(input, out).map(|_| ())
    }

    /// [`Self::fill`], also saying how long decoding and resizing took.
    pub fn fill_timed(&self, input: ImageInput<'_>, out: &mut [f32]) -> Result<RowTimes, String> {
        self.fill_limited(input, out, 0)
    }

    /// [`Self::fill_timed`] with a caller's pixel limit (`max_pixels`, 0: the spec's; the
    /// smaller of the two applies): a larger image is an error naming its size and the limit.
    pub fn fill_limited(
        &self,
        input: ImageInput<'_>,
        out: &mut [f32],
        max_pixels: u64,
    ) -> Result<RowTimes, String> {
        // A fixed-size row's values are the spec's, whatever the image's size.
        let limit = SizeLimit {
            pixels: self.pixel_limit(max_pixels),
            values: u64::MAX,
        };
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
                let pixels = self.decode(bytes, limit)?;
                times.decode = started.elapsed();
                self.finish(pixels, out, &mut times, (self.width, self.height))?;
            }
            ImageInput::SparkImage {
                height,
                width,
                n_channels,
                data,
            } => {
                let started = Instant::now();
                let pixels = self.spark_pixels(height, width, n_channels, data, limit)?;
                times.decode = started.elapsed();
                self.finish(pixels, out, &mut times, (self.width, self.height))?;
            }
        }
        Ok(times)
    }

    /// One image at its own size, for inputs of shape `[C, -1, -1]`: its `C x h x w` floats
    /// (CHW) and its size. The same decoding, channel conversion (PIL's `convert`), EXIF
    /// orientation, pixel limit (`max_pixels` as in [`Self::fill_limited`]) and
    /// `(p * scale - mean) / std` as [`Self::fill`]; no resize or crop (such a spec has none:
    /// asking for one is an error). Floats carry no size, so only encoded bytes and Spark's
    /// image struct are read.
    ///
    /// `max_values` bounds `C x h x w` (`max_row_elements`), checked from the header as the
    /// pixel limit is, before any pixel is allocated.
    pub fn fill_native(
        &self,
        input: ImageInput<'_>,
        max_pixels: u64,
        max_values: u64,
    ) -> Result<NativeImage, String> {
        if self.resize.is_some() || self.center_crop.is_some() {
            return Err("an image at its own size takes no resize or center_crop".into());
        }
        let limit = SizeLimit {
            pixels: self.pixel_limit(max_pixels),
            values: max_values,
        };
        let mut times = RowTimes::default();
        let started = Instant::now();
        let pixels = match input {
            ImageInput::Encoded(bytes) => self.decode(bytes, limit)?,
            ImageInput::SparkImage {
                height,
                width,
                n_channels,
                data,
            } => self.spark_pixels(height, width, n_channels, data, limit)?,
            ImageInput::Floats(_) | ImageInput::Doubles(_) => {
                return Err(
                    "floats have no height and width: images of varying size come as encoded \
                     bytes or Spark's image struct"
                        .into(),
                );
            }
        };
        times.decode = started.elapsed();
        let (w, h) = (pixels.w, pixels.h);
        let mut out = vec![0f32; self.channels * w as usize * h as usize];
        self.finish(pixels, &mut out, &mut times, (w, h))?;
        Ok(NativeImage {
            values: out,
            height: h,
            width: w,
            times,
        })
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

    /// An encoded image's or Spark struct's width and height as its header says (cheap: no
    /// pixel is decoded); `None` for floats or an unreadable header.
    pub fn dimensions(&self, input: ImageInput<'_>) -> Option<(u32, u32)> {
        match input {
            ImageInput::Encoded(bytes) => {
                let format = image::guess_format(bytes).ok()?;
                format_name(format)?;
                ImageReader::with_format(Cursor::new(bytes), format)
                    .into_dimensions()
                    .ok()
            }
            ImageInput::SparkImage { height, width, .. } => {
                Some((u32::try_from(width).ok()?, u32::try_from(height).ok()?))
            }
            ImageInput::Floats(_) | ImageInput::Doubles(_) => None,
        }
    }

    /// A header's `width` x `height` against the limits, before any pixel is allocated.
    fn check_size(&self, w: u32, h: u32, limit: SizeLimit) -> Result<(), String> {
        check_pixels(w, h, limit.pixels)?;
        let values = u64::from(w) * u64::from(h) * self.channels as u64;
        if values > limit.values {
            return Err(format!(
                "image is {w}x{h} (width x height) x {} channels = {} values, over the limit of \
                 {} values per row (max_row_elements)",
                self.channels,
                crate::limits::grouped(values),
                crate::limits::grouped(limit.values)
            ));
        }
        Ok(())
    }

    fn decode(&self, bytes: &[u8], limit: SizeLimit) -> Result<Pixels, String> {
        if bytes.is_empty() {
            return Err("empty image bytes".into());
        }
        let format = image::guess_format(bytes)
            .ok()
            .filter(|f| format_name(*f).is_some())
            .ok_or_else(|| {
                let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!(
                    "not a PNG, JPEG, BMP, GIF, TIFF or WebP image (first bytes: {})",
                    head.join(" ")
                )
            })?;
        let name = format_name(format).unwrap_or("image");
        if let Err(why) = check_complete(format, bytes) {
            return Err(format!("truncated {name}: image file is truncated ({why})"));
        }
        let fail = |e: ImageError| {
            if is_eof(&e) {
                format!("truncated {name}: image file is truncated ({e})")
            } else {
                format!("invalid {name}: {e}")
            }
        };
        // The TIFF decoder drops an RGB file's 4th sample unless it is marked as alpha: for a
        // 4-band spec, read it as alpha (the NIR band of an RGBN aerial tile).
        let patched = match (format, self.channels) {
            (ImageFormat::Tiff, 4) => tiff_extra_sample_as_alpha(bytes),
            _ => None,
        };
        let bytes = patched.as_deref().unwrap_or(bytes);
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        // The image crate's own allocation cap (512 MiB by default) would refuse images under
        // the pixel limit: allow the documented decode budget (16 bytes a pixel, RGBA f32).
        // PNG, GIF and TIFF honour it; WebP, JPEG and BMP ignore it, so every size a decoder
        // allocates for is checked against the budget below (`check_decode_peak`).
        let mut limits = Limits::default();
        limits.max_alloc = Some(crate::limits::decode_budget(limit.pixels));
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(fail)?;
        let (w, h) = decoder.dimensions();
        self.check_size(w, h, limit)?;
        check_decode_peak(format, decoder.color_type(), w, h, limit.pixels)?;
        // A GIF's first frame may be larger than its logical screen, and a WebP's VP8 bitstream
        // carries its own size, which the decoder allocates for before comparing it with the
        // canvas (the header's size).
        let frame = gif_first_frame_size(format, bytes).or(webp_first_frame_size(format, bytes));
        if let Some((fw, fh)) = frame {
            self.check_size(fw, fh, limit)?;
            check_decode_peak(format, decoder.color_type(), fw, fh, limit.pixels)?;
        }
        let orientation = match self.exif {
            ExifOrientation::Ignore => None,
            ExifOrientation::Apply => Some(decoder.orientation().map_err(fail)?),
        };
        let mut img = DynamicImage::from_decoder(decoder).map_err(fail)?;
        // PIL opens a 16-bit grey PNG with tRNS as I;16 (the transparent value only in `info`):
        // drop the alpha band the decoder made of tRNS, so that the I;16 clamp applies.
        if let DynamicImage::ImageLumaA16(la) = &img
            && format == ImageFormat::Png
            && bytes.get(24..26) == Some(&[16, 0])
        {
            let luma: Vec<u16> = la.as_raw().iter().step_by(2).copied().collect();
            if let Some(i) = image::ImageBuffer::from_raw(la.width(), la.height(), luma) {
                img = DynamicImage::ImageLuma16(i);
            }
        }
        if let Some(o) = orientation {
            img.apply_orientation(o);
        }
        let mut bands = to_bands(img).map_err(|e| format!("{name}: {e}"))?;
        if format == ImageFormat::Gif && self.channels == 4 {
            bands = gif_bands(bands);
        }
        self.select(bands)
    }

    /// Makes `self.channels` bands out of the decoded ones, as PIL's `convert` does.
    fn select(&self, p: Pixels) -> Result<Pixels, String> {
        let Pixels { w, h, c, data } = p;
        let data = match (self.channels, c) {
            (1, 1) | (3, 3) | (4, 4) => data,
            // LA -> L drops alpha (Pillow's la2l).
            (1, 2) => data.chunks_exact(2).map(|px| px[0]).collect(),
            // RGB(A) -> L: L24 (rgb2l / rgba2l).
            (1, _) => data
                .chunks_exact(c)
                .map(|px| pil_luma(px[0], px[1], px[2]))
                .collect(),
            // L(A) -> RGB repeats L; RGBA -> RGB drops alpha.
            (3, 1 | 2) => data.chunks_exact(c).flat_map(|px| [px[0]; 3]).collect(),
            (3, _) => data
                .chunks_exact(c)
                .flat_map(|px| [px[0], px[1], px[2]])
                .collect(),
            (want, have) => {
                return Err(format!(
                    "the spec asks for {want} bands but the image has {have} ({})",
                    band_names(have)
                ));
            }
        };
        Ok(Pixels {
            w,
            h,
            c: self.channels,
            data,
        })
    }

    fn spark_pixels(
        &self,
        height: i32,
        width: i32,
        nc: i32,
        data: &[u8],
        limit: SizeLimit,
    ) -> Result<Pixels, String> {
        if height <= 0 || width <= 0 {
            return Err(format!(
                "image struct has height {height} and width {width} (an undecodable file?)"
            ));
        }
        let (h, w) = (height as u32, width as u32);
        self.check_size(w, h, limit)?;
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
        // Spark stores BGR / BGRA; reorder to RGB(A) so that the rules of encoded files apply.
        let bands = match nc_usize {
            1 => data.to_vec(),
            3 => data
                .chunks_exact(3)
                .flat_map(|px| [px[2], px[1], px[0]])
                .collect(),
            _ => data
                .chunks_exact(4)
                .flat_map(|px| [px[2], px[1], px[0], px[3]])
                .collect(),
        };
        self.select(Pixels {
            w,
            h,
            c: nc_usize,
            data: bands,
        })
        .map_err(|e| format!("image struct: {e}"))
    }

    /// Resizes, crops and normalizes `pixels` into `out`, the model's `width` x `height`.
    fn finish(
        &self,
        pixels: Pixels,
        out: &mut [f32],
        times: &mut RowTimes,
        (width, height): (u32, u32),
    ) -> Result<(), String> {
        let (w, h) = (pixels.w, pixels.h);
        let c = pixels.c;
        let (rw, rh) = self.resize.map_or((w, h), |r| r.target(w, h));
        let (ow, oh) = (width as usize, height as usize);
        // Where the model's input lies in the resized image: the center crop, else all of it.
        let (cx, cy) = if let Some([ch, cw]) = self.center_crop {
            if cw > rw || ch > rh {
                return Err(format!(
                    "image is {rh}x{rw} (height x width), smaller than center_crop [{ch}, {cw}]"
                ));
            }
            // torchvision's CenterCrop: round((size - crop) / 2), half to even.
            (crop_offset(rw, cw) as usize, crop_offset(rh, ch) as usize)
        } else if (rw, rh) != (width, height) {
            return Err(format!(
                "image is {rh}x{rw} (height x width) but the model takes {height}x{width} and the spec has no resize",
            ));
        } else {
            (0, 0)
        };
        // Only the crop window is resized: each output pixel has its own taps, so the pixels
        // equal PIL's resize-then-crop, and a thin image's huge resize (1x65535 under resize
        // 256 would be 256x16776960) never exists in memory.
        let resized;
        let (raw, stride, x0, y0) = if (rw, rh) != (w, h) {
            let started = Instant::now();
            let window = Window {
                x0: cx,
                y0: cy,
                w: ow,
                h: oh,
            };
            resized = resize_like_pillow(&pixels.data, (w, h), (rw, rh), c, window);
            times.resize = started.elapsed();
            (&resized, ow * c, 0, 0)
        } else {
            (&pixels.data, w as usize * c, cx, cy)
        };
        let plane = ow * oh;
        for (k, out_plane) in out.chunks_exact_mut(plane).enumerate().take(c) {
            // Output plane k takes source band k, or 2 - k for a BGR model.
            let band = if self.bgr && c == 3 { 2 - k } else { k };
            let lut = &self.lut[k];
            for y in 0..oh {
                let src = &raw[(y + y0) * stride + x0 * c..][..ow * c];
                let dst = &mut out_plane[y * ow..][..ow];
                for (o, px) in dst.iter_mut().zip(src.chunks_exact(c)) {
                    *o = lut[px[band] as usize];
                }
            }
        }
        Ok(())
    }
}

/// What a decoded image may hold: `pixels` (width x height, `max_pixels`) and `values`
/// (C x width x height, `max_row_elements`; unbounded for fixed-size rows).
#[derive(Debug, Clone, Copy)]
struct SizeLimit {
    pixels: u64,
    values: u64,
}

/// A header's `width` x `height` against the pixel limit, before any pixel is allocated.
fn check_pixels(w: u32, h: u32, limit: u64) -> Result<(), String> {
    let n = u64::from(w) * u64::from(h);
    if n > limit {
        Err(format!(
            "image is {w}x{h} (width x height) = {n} pixels, over the limit of {limit} \
             (preprocess.max_pixels / maxPixels)"
        ))
    } else {
        Ok(())
    }
}

/// Bytes one decode of a `w` x `h` image holds, by format and the decoder's output colour
/// type (docs/limits.md; measured on every mode by tests/decode_memory.rs): the output buffer
/// plus the decoder's intermediates and the band conversion. Checked against the decode budget
/// before decoding, because WebP, JPEG and BMP ignore the image crate's `max_alloc`.
pub fn decode_peak_bytes(format: ImageFormat, color: image::ColorType, w: u32, h: u32) -> u64 {
    let out = u64::from(color.bytes_per_pixel());
    // JPEG and lossy WebP decode whole 16x16 blocks: a 2-pixel-high JPEG holds 16 rows.
    let blocks = u64::from(w).div_ceil(16) * 16 * (u64::from(h).div_ceil(16) * 16);
    let pixels = u64::from(w) * u64::from(h);
    match format {
        // The tiff crate's own buffer, copied into the output (16-bit RGBA: 16 bytes a pixel),
        // or later the converted bands beside the output; plus its strip or tile buffers.
        ImageFormat::Tiff => pixels * ((2 * out).max(out + 4) + 1),
        // A progressive (or CMYK) JPEG keeps every 16-bit coefficient of every component.
        ImageFormat::Jpeg => blocks * 14,
        // Lossless: an RGBA intermediate beside the RGB output; lossy: YUV planes, the alpha
        // plane and its lossless intermediate; animated: the canvas and one frame.
        ImageFormat::WebP => blocks * 13,
        // PNG, GIF, BMP: the output, then at most 4 bytes a pixel of converted bands.
        _ => pixels * (out + 4),
    }
}

/// The most a decode of this header holds ([`decode_peak_bytes`]), against the documented
/// decode budget for `max_pixels` (16 bytes a pixel, at least 64 MiB).
fn check_decode_peak(
    format: ImageFormat,
    color: image::ColorType,
    w: u32,
    h: u32,
    max_pixels: u64,
) -> Result<(), String> {
    let need = decode_peak_bytes(format, color, w, h);
    let budget = crate::limits::decode_budget(max_pixels);
    if need > budget {
        return Err(format!(
            "image is {w}x{h} (width x height) {} {color:?}: decoding it holds about {} MiB, \
             over the decode limit of {} MiB (16 bytes x preprocess.max_pixels / maxPixels {})",
            format_name(format).unwrap_or("image"),
            need >> 20,
            budget >> 20,
            crate::limits::grouped(max_pixels)
        ));
    }
    Ok(())
}

/// The decoded image as 8-bit bands, by Pillow 13's rules for the same file (docs/images.md):
/// 8-bit L, LA, RGB, RGBA as they are (palettes are expanded by the decoders, as PIL's
/// `convert` does); 16-bit gray is opened as `I;16` and clamped to 0..=255 by `convert`
/// (values above 255 become 255, not scaled); 16-bit LA, RGB and RGBA keep the high byte
/// (Pillow's `LA;16B`, `RGB;16B`, `RGBA;16B` raw modes, and the same for TIFF).
fn to_bands(img: DynamicImage) -> Result<Pixels, String> {
    let (w, h) = (img.width(), img.height());
    let px = |c: usize, data: Vec<u8>| Ok(Pixels { w, h, c, data });
    let high = |v: &[u16]| v.iter().map(|&x| (x >> 8) as u8).collect::<Vec<u8>>();
    match img {
        DynamicImage::ImageLuma8(i) => px(1, i.into_raw()),
        DynamicImage::ImageLumaA8(i) => px(2, i.into_raw()),
        DynamicImage::ImageRgb8(i) => px(3, i.into_raw()),
        DynamicImage::ImageRgba8(i) => px(4, i.into_raw()),
        DynamicImage::ImageLuma16(i) => {
            px(1, i.as_raw().iter().map(|&x| x.min(255) as u8).collect())
        }
        DynamicImage::ImageLumaA16(i) => px(2, high(i.as_raw())),
        DynamicImage::ImageRgb16(i) => px(3, high(i.as_raw())),
        DynamicImage::ImageRgba16(i) => px(4, high(i.as_raw())),
        other => Err(format!(
            "{:?} images (floating-point samples) are not supported",
            other.color()
        )),
    }
}

/// The GIF decoder always gives RGBA; a frame without transparent pixels has 3 bands, as PIL's
/// `P` image without a transparency index.
fn gif_bands(p: Pixels) -> Pixels {
    if p.c == 4 && p.data.chunks_exact(4).all(|px| px[3] == 255) {
        let data = p
            .data
            .chunks_exact(4)
            .flat_map(|px| [px[0], px[1], px[2]])
            .collect();
        Pixels { c: 3, data, ..p }
    } else {
        p
    }
}

fn band_names(c: usize) -> &'static str {
    match c {
        1 => "L",
        2 => "LA",
        3 => "RGB",
        _ => "RGBA",
    }
}

fn format_name(f: ImageFormat) -> Option<&'static str> {
    Some(match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::WebP => "WebP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    /// Every format's decode peak fits the budget at `max_pixels` for a square image, except
    /// TIFF's 16-bit RGBA (17 bytes a pixel), which is refused a little below it; a thin JPEG
    /// or WebP counts its 16x16 blocks. Refusals name the limit.
    #[test]
    fn decode_peak_fits_the_budget_or_is_a_row_error_naming_the_limit() {
        use image::ColorType::*;
        let max_pixels = 1u64 << 24; // 4096 x 4096
        let per_pixel = |f, c| decode_peak_bytes(f, c, 4096, 4096) / (1 << 24);
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::Gif,
            ImageFormat::Tiff,
            ImageFormat::WebP,
        ] {
            for color in [L8, La8, Rgb8, Rgba8, L16, La16, Rgb16, Rgba16] {
                let at_limit = check_decode_peak(format, color, 4096, 4096, max_pixels);
                if per_pixel(format, color) <= crate::limits::DECODE_BYTES_PER_PIXEL {
                    assert!(at_limit.is_ok(), "{format:?} {color:?}: {at_limit:?}");
                } else {
                    let e = at_limit.unwrap_err();
                    assert!(
                        e.contains("decode limit of 256 MiB") && e.contains("16,777,216"),
                        "{e}"
                    );
                    // 16/17 of the pixels fit.
                    assert!(check_decode_peak(format, color, 4096, 3855, max_pixels).is_ok());
                }
            }
        }
        assert_eq!(per_pixel(ImageFormat::Tiff, Rgba16), 17);
        // 16,384 x 1 pixels of JPEG decode as 16,384 x 16 (14 bytes each): 3.5 MiB.
        assert_eq!(
            decode_peak_bytes(ImageFormat::Jpeg, Rgb8, 16_384, 1),
            16_384 * 16 * 14
        );
        let thin = check_decode_peak(ImageFormat::Jpeg, Rgb8, 1 << 20, 16, max_pixels);
        assert!(thin.is_ok());
        let thinner = check_decode_peak(ImageFormat::Jpeg, Rgb8, 1 << 23, 2, max_pixels);
        assert!(thinner.unwrap_err().contains("decode limit"));
        // The 64 MiB floor: a small max_pixels still decodes what fits 64 MiB.
        assert!(check_decode_peak(ImageFormat::WebP, Rgb8, 2048, 2048, 16).is_ok());
    }

    use super::super::complete::{jpeg_complete, png_complete};
    use super::*;
    use image::{ImageBuffer, Luma, Rgb};

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
        assert!(e.starts_with("truncated PNG"), "{e}");
    }

    fn encode(img: DynamicImage, f: ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, f).unwrap();
        out.into_inner()
    }

    fn gray_of(bytes: &[u8]) -> Result<Vec<f32>, String> {
        let p = Preprocessor::new(&spec(
            r#"{"input": {"height": 2, "width": 2, "channels": 1}, "preprocess": {"scale": 1.0}}"#,
        ));
        let mut out = vec![0f32; 4];
        p.fill(ImageInput::Encoded(bytes), &mut out).map(|_| out)
    }

    #[test]
    fn gray_is_pil_convert_l_not_rec709() {
        // Pillow: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 (ITU-R 601-2).
        assert_eq!(pil_luma(255, 0, 0), 76);
        assert_eq!(pil_luma(0, 255, 0), 150);
        assert_eq!(pil_luma(0, 0, 255), 29);
        assert_eq!(pil_luma(255, 255, 255), 255);
        let bytes = png(2, 2, |x, y| {
            [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 99, 199]][(y * 2 + x) as usize]
        });
        assert_eq!(gray_of(&bytes).unwrap(), [76.0, 150.0, 29.0, 83.0]);
        // Spark's BGR struct gives the same.
        let p = Preprocessor::new(&spec(
            r#"{"input": {"height": 1, "width": 2, "channels": 1}, "preprocess": {"scale": 1.0}}"#,
        ));
        let mut out = vec![0f32; 2];
        let s = ImageInput::SparkImage {
            height: 1,
            width: 2,
            n_channels: 3,
            data: &[0, 0, 255, 199, 99, 9],
        };
        p.fill(s, &mut out).unwrap();
        assert_eq!(out, [76.0, 83.0]);
    }

    #[test]
    fn sixteen_bit_follows_pillow_clamp_for_gray_high_byte_for_color() {
        let g16 = ImageBuffer::from_fn(2, 2, |x, y| {
            Luma([[200u16, 255, 256, 65535][(y * 2 + x) as usize]])
        });
        let bytes = encode(DynamicImage::ImageLuma16(g16), ImageFormat::Png);
        assert_eq!(gray_of(&bytes).unwrap(), [200.0, 255.0, 255.0, 255.0]);
        let c16 = ImageBuffer::from_fn(2, 2, |x, _| {
            Rgb([x as u16 * 0x1234 + 0x00ff, 0x8000, 0xffff])
        });
        let bytes = encode(DynamicImage::ImageRgb16(c16), ImageFormat::Png);
        let p = Preprocessor::new(&spec(
            r#"{"input": {"height": 2, "width": 2}, "preprocess": {"scale": 1.0}}"#,
        ));
        let mut out = vec![0f32; 12];
        p.fill(ImageInput::Encoded(&bytes), &mut out).unwrap();
        assert_eq!(&out[..4], &[0.0, 19.0, 0.0, 19.0]);
        assert_eq!(
            &out[4..],
            &[128.0, 128.0, 128.0, 128.0, 255.0, 255.0, 255.0, 255.0]
        );
    }

    #[test]
    fn cut_files_are_truncated_not_filled() {
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_fn(32, 32, |x, y| {
            Rgb([(x * 8) as u8, (y * 8) as u8, 77])
        }));
        for f in [
            ImageFormat::Jpeg,
            ImageFormat::Png,
            ImageFormat::Tiff,
            ImageFormat::WebP,
            ImageFormat::Gif,
        ] {
            let bytes = encode(img.clone(), f);
            assert!(check_complete(f, &bytes).is_ok(), "{f:?} whole");
            for cut in [bytes.len() / 2, bytes.len() * 9 / 10] {
                let e = gray_of(&bytes[..cut]).unwrap_err();
                assert!(e.contains("truncated"), "{f:?} cut at {cut}: {e}");
            }
        }
        let jpeg = encode(img.clone(), ImageFormat::Jpeg);
        assert_eq!(
            jpeg_complete(&jpeg[..jpeg.len() - 2]),
            Err("no end-of-image marker")
        );
        let png = encode(img, ImageFormat::Png);
        assert!(png_complete(&png[..png.len() - 12]).is_err(), "no IEND");
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        // A PNG header claiming 100000 x 100000 RGB (30 GB decoded) with a few bytes of data.
        let mut bytes = png(1, 1, |_, _| [0, 0, 0]);
        bytes[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]);
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = gray_of(&bytes).unwrap_err();
        assert!(
            e.contains("100000x100000") && e.contains("limit of 178956970"),
            "{e}"
        );
        let p = Preprocessor::new(&spec(
            r#"{"input": {"height": 2, "width": 2}, "preprocess": {"max_pixels": 10}}"#,
        ));
        assert_eq!(p.pixel_limit(0), 10);
        assert_eq!(p.pixel_limit(1_000), 10);
        assert_eq!(p.pixel_limit(3), 3);
        let small = png(2, 2, |_, _| [1, 2, 3]);
        let e = p
            .fill_limited(ImageInput::Encoded(&small), &mut [0f32; 12], 3)
            .unwrap_err();
        assert!(e.contains("2x2") && e.contains("limit of 3 "), "{e}");
        assert!(
            p.fill_limited(ImageInput::Encoded(&small), &mut [0f32; 12], 0)
                .is_ok()
        );
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn four_bands_from_rgba_and_bgra_struct_fewer_is_an_error() {
        let p = Preprocessor::new(&spec(
            r#"{"input": {"height": 1, "width": 1, "channels": 4, "channel_order": "RGBA"},
                "preprocess": {"scale": 1.0}}"#,
        ));
        let rgba = encode(
            DynamicImage::ImageRgba8(ImageBuffer::from_pixel(1, 1, image::Rgba([1, 2, 3, 4]))),
            ImageFormat::Png,
        );
        let mut out = vec![0f32; 4];
        p.fill(ImageInput::Encoded(&rgba), &mut out).unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
        let s = ImageInput::SparkImage {
            height: 1,
            width: 1,
            n_channels: 4,
            data: &[3, 2, 1, 4],
        };
        p.fill(s, &mut out).unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
        let e = p
            .fill(ImageInput::Encoded(&png(1, 1, |_, _| [1, 2, 3])), &mut out)
            .unwrap_err();
        assert!(e.contains("asks for 4 bands but the image has 3"), "{e}");
        let s = ImageInput::SparkImage {
            height: 1,
            width: 1,
            n_channels: 3,
            data: &[3, 2, 1],
        };
        assert!(p.fill(s, &mut out).unwrap_err().contains("4 bands"));
    }

    #[test]
    fn resizing_the_crop_window_equals_resize_then_crop() {
        // Seeded noise; sizes that down- and upscale each axis, odd and even crops.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for &((w, h), (rw, rh), (cw, ch), c) in &[
            (
                (40usize, 30usize),
                (25usize, 20usize),
                (11usize, 9usize),
                3usize,
            ),
            ((17, 50), (33, 64), (20, 31), 1),
            ((64, 64), (64, 23), (64, 10), 4),
            ((9, 70), (9, 140), (5, 100), 3),
        ] {
            let src: Vec<u8> = (0..w * h * c).map(|_| next() as u8).collect();
            let from = (w as u32, h as u32);
            let to = (rw as u32, rh as u32);
            let full = Window {
                x0: 0,
                y0: 0,
                w: rw,
                h: rh,
            };
            let all = resize_like_pillow(&src, from, to, c, full);
            let (x0, y0) = (
                crop_offset(rw as u32, cw as u32) as usize,
                crop_offset(rh as u32, ch as u32) as usize,
            );
            let win = Window {
                x0,
                y0,
                w: cw,
                h: ch,
            };
            let part = resize_like_pillow(&src, from, to, c, win);
            for y in 0..ch {
                assert_eq!(
                    &part[y * cw * c..][..cw * c],
                    &all[((y + y0) * rw + x0) * c..][..cw * c],
                    "{from:?} -> {to:?}, crop {cw}x{ch}, row {y}"
                );
            }
        }
    }

    #[test]
    fn crop_offset_rounds_half_to_even_like_torchvision() {
        assert_eq!(crop_offset(10, 4), 3);
        assert_eq!(crop_offset(5, 4), 0); // round(0.5) = 0
        assert_eq!(crop_offset(7, 4), 2); // round(1.5) = 2
        assert_eq!(crop_offset(9, 4), 2); // round(2.5) = 2
    }
}
