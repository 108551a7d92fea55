//! The model spec: a JSON file beside the model (`model.pt` or `model.pt2` → `model.json`).
//!
//! It is a public format that people write by hand, so it is strict: an unknown field or two
//! fields that contradict each other are rejected with a message that names the field.
//!
//! ```json
//! {"input": {"height": 32, "width": 32, "channels": 3, "channel_order": "RGB"},
//!  "preprocess": {"resize": null, "center_crop": null, "scale": 0.00392156862745098,
//!                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
//!  "labels": ["airplane", "automobile"],
//!  "output": "logits",
//!  "featurize": {"method": "features"}}
//! ```
//!
//! Each pixel `p` (0..=255) of channel `c` becomes `(p * scale - mean[c]) / std[c]`.
//!
//! `preprocess.resize` is `null`, `[height, width]` (every image becomes exactly that size), or
//! an integer `N`: torchvision's `Resize(N)`, the shorter side becomes `N` and the longer keeps
//! the aspect ratio (the ImageNet recipe is `"resize": 256, "center_crop": [224, 224]`).
//!
//! `input.channels` is 1 (PIL's `convert("L")`), 3 (`convert("RGB")`) or 4 (four bands as the
//! file stores them: `channel_order` `"RGBA"` or `"RGBN"`, RGB + near-infrared; see
//! docs/images.md). `preprocess.max_pixels` refuses larger images from their header, and
//! `preprocess.exif_orientation` (`"ignore"` or `"apply"`) says whether EXIF rotations are applied.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole spec file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// What the network takes: one image of `channels × height × width`.
    pub input: InputSpec,
    /// How decoded pixels become the input tensor.
    #[serde(default)]
    pub preprocess: Preprocess,
    /// Class names, index-aligned with the model's output; optional.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Whether `forward` returns logits (softmax is applied) or probabilities.
    #[serde(default)]
    pub output: OutputKind,
    /// How to get embeddings; optional (featurizing fails clearly without it).
    #[serde(default)]
    pub featurize: Option<Featurize>,
    /// A pinned sha256 (hex) of the model file; loading refuses any other file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The precision the model file itself computes in (written by `export_model`; absent
    /// means `fp32`). For an AOTInductor package it is a property of its compiled code.
    #[serde(default)]
    pub precision: Option<FilePrecision>,
    /// The CPU an AOTInductor package's compiled code needs (written by `export_model`;
    /// absent: nothing is known beyond the package's own metadata). Ignored for TorchScript,
    /// which libtorch compiles on each host when it loads.
    #[serde(default)]
    pub cpu: Option<CpuSpec>,
}

/// `cpu`: what a package was compiled for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// The `-march` it was compiled with (`x86-64-v3`, `x86-64-v4`, `native`...), for messages.
    #[serde(default)]
    pub march: Option<String>,
    /// The `/proc/cpuinfo` flags its code needs (`avx2`, `fma`, `avx512f`, `abm`...): a host
    /// without one of them refuses the package before loading its code.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// What a model file computes in: fixed at export, unlike the runtime `precision` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilePrecision {
    #[default]
    Fp32,
    Bf16,
    /// Post-training static quantization (PT2E, x86 Inductor quantizer), float in and out.
    Int8,
}

impl std::fmt::Display for FilePrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FilePrecision::Fp32 => "fp32",
            FilePrecision::Bf16 => "bf16",
            FilePrecision::Int8 => "int8",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub height: u32,
    pub width: u32,
    /// 1 (gray), 3 (color) or 4 (four bands: needs `channel_order` `RGBA` or `RGBN`).
    #[serde(default = "three")]
    pub channels: u32,
    /// `RGB` or `BGR` for 3 channels, `L` for one (defaults `RGB` / `L`); for 4 channels
    /// `RGBA` or `RGBN` (required: the file's 4 samples in their stored order either way, the
    /// name says what the 4th band is).
    #[serde(default)]
    pub channel_order: Option<ChannelOrder>,
}

fn three() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChannelOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
    #[serde(rename = "L")]
    Gray,
    /// Red, green, blue, alpha (an RGBA PNG, Spark's BGRA struct reordered).
    #[serde(rename = "RGBA")]
    Rgba,
    /// Red, green, blue, near-infrared: a 4-sample TIFF aerial tile.
    #[serde(rename = "RGBN")]
    Rgbn,
}

/// `preprocess.exif_orientation`: what to do with an EXIF Orientation tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExifOrientation {
    /// Use the pixels as stored, as `PIL.Image.open` and torchvision's loaders do.
    #[default]
    Ignore,
    /// Rotate/flip as the tag says, equal to `PIL.ImageOps.exif_transpose`.
    Apply,
}

/// Pillow raises `DecompressionBombError` above twice its `MAX_IMAGE_PIXELS` (89,478,485).
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Resize first (antialiased bilinear): `N` (shorter side), `[height, width]`, or `null`.
    #[serde(default, deserialize_with = "resize_field")]
    pub resize: Option<Resize>,
    /// Then cut the central `[height, width]`, or `null`.
    #[serde(default)]
    pub center_crop: Option<[u32; 2]>,
    /// Multiplies the raw 0..=255 pixel value.
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Subtracted per channel after scaling (one value or one per channel).
    #[serde(default = "zero")]
    pub mean: Vec<f32>,
    /// Divides per channel after the mean (one value or one per channel).
    #[serde(default = "one")]
    pub std: Vec<f32>,
    /// Largest width x height decoded; larger images are row errors, found from the header
    /// before any pixel is allocated. Default [`DEFAULT_MAX_PIXELS`] (Pillow's bomb limit).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Whether an EXIF Orientation tag is applied (default: ignored, like PIL).
    #[serde(default)]
    pub exif_orientation: ExifOrientation,
}

fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}

/// `preprocess.resize`: a fixed size, or the length of the shorter side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// `N`: torchvision's `Resize(N)`; the shorter side becomes `N`, the longer keeps the
    /// aspect ratio.
    ShorterSide(u32),
    /// `[height, width]`: every image becomes exactly this size (the aspect ratio is not kept).
    Exact([u32; 2]),
}

impl Resize {
    /// The `(width, height)` that an image of `width` x `height` is resized to.
    ///
    /// For `ShorterSide(n)` this is torchvision's `_compute_resized_output_size`: the longer
    /// side becomes `int(n * long / short)`, truncated (integer division gives the same value).
    pub fn target(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            Resize::Exact([h, w]) => (w, h),
            Resize::ShorterSide(n) => {
                let (short, long) = (width.min(height).max(1), width.max(height));
                let new_long = (u64::from(n) * u64::from(long) / u64::from(short))
                    .min(u64::from(u32::MAX)) as u32;
                if width <= height {
                    (n, new_long)
                } else {
                    (new_long, n)
                }
            }
        }
    }
}

impl std::fmt::Display for Resize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resize::ShorterSide(n) => write!(f, "{n}"),
            Resize::Exact([h, w]) => write!(f, "[{h}, {w}]"),
        }
    }
}

/// Reads `preprocess.resize` from any JSON value, so that a bad one gets a message that names
/// the field and both accepted forms rather than serde's generic one.
fn resize_field<'de, D>(d: D) -> std::result::Result<Option<Resize>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde_json::Value;
    let v = Value::deserialize(d)?;
    let side = |x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
    };
    let parsed = match &v {
        Value::Null => return Ok(None),
        Value::Number(_) => side(&v).map(Resize::ShorterSide),
        Value::Array(a) if a.len() == 2 => match (side(&a[0]), side(&a[1])) {
            (Some(h), Some(w)) => Some(Resize::Exact([h, w])),
            _ => None,
        },
        _ => None,
    };
    parsed.map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "preprocess.resize must be a positive integer N (the shorter side becomes N), \
             [height, width] with positive integers, or null; not {v}"
        ))
    })
}

fn default_scale() -> f32 {
    1.0 / 255.0
}
fn zero() -> Vec<f32> {
    vec![0.0]
}
fn one() -> Vec<f32> {
    vec![1.0]
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            resize: None,
            center_crop: None,
            scale: default_scale(),
            mean: zero(),
            std: one(),
            max_pixels: DEFAULT_MAX_PIXELS,
            exif_orientation: ExifOrientation::Ignore,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    #[default]
    Logits,
    Probabilities,
}

/// Where embeddings come from: a method of the scripted module, or one element of the tuple
/// that `forward` returns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Featurize {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub output_index: Option<usize>,
}

/// `featurize`, validated: exactly one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureSource {
    Method(String),
    OutputIndex(usize),
}

impl ModelSpec {
    /// The spec beside a model, `model.pt` → `model.json`: the path's last name (trailing `/`
    /// ignored) loses its extension, from its last `.` unless that `.` starts the name (`.pt`
    /// → `.pt.json`), and gains `.json`. The JVM (`ModelSource.specOf`) and Python
    /// (`torchspark.cluster.spec_path`) apply the same rule to the same string; one table
    /// (tests/fixtures/spec_paths.json) pins all three.
    pub fn default_path(model_path: &Path) -> PathBuf {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let bytes = model_path.as_os_str().as_bytes();
        let end = bytes.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
        let path = &bytes[..end];
        let name = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        let stem = match path.iter().rposition(|&b| b == b'.') {
            Some(dot) if dot > name => &path[..dot],
            _ => path,
        };
        let mut spec = stem.to_vec();
        spec.extend_from_slice(b".json");
        PathBuf::from(std::ffi::OsString::from_vec(spec))
    }

    /// Reads and validates the spec file; errors name `path` and the offending field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Spec {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_bytes(path, &bytes)
    }

    /// The spec file `path` whose `bytes` the caller has read; errors name `path` and the field.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        super::parse_bytes(path, bytes, Self::from_json)
    }

    /// Parses and validates; the error string names the field.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let i = &self.input;
        if i.height == 0 || i.width == 0 {
            return Err("input.height and input.width must be positive".into());
        }
        match (i.channels, i.channel_order) {
            (3, None | Some(ChannelOrder::Rgb | ChannelOrder::Bgr)) => {}
            (1, None | Some(ChannelOrder::Gray)) => {}
            (4, Some(ChannelOrder::Rgba | ChannelOrder::Rgbn)) => {}
            (4, None) => {
                return Err(
                    "input.channels = 4 needs input.channel_order \"RGBA\" or \"RGBN\" \
                            (what the 4th band is)"
                        .into(),
                );
            }
            (1 | 3 | 4, Some(order)) => {
                return Err(format!(
                    "input.channel_order {order:?} contradicts input.channels = {}",
                    i.channels
                ));
            }
            (c, _) => return Err(format!("input.channels must be 1, 3 or 4, not {c}")),
        }
        let p = &self.preprocess;
        if !p.scale.is_finite() || p.scale == 0.0 {
            return Err(format!(
                "preprocess.scale must be finite and non-zero, not {}",
                p.scale
            ));
        }
        for (name, values) in [("mean", &p.mean), ("std", &p.std)] {
            if values.len() != 1 && values.len() != i.channels as usize {
                return Err(format!(
                    "preprocess.{name} has {} values; input.channels = {} needs 1 or {}",
                    values.len(),
                    i.channels,
                    i.channels
                ));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(format!("preprocess.{name} must be finite"));
            }
        }
        if p.max_pixels == 0 {
            return Err("preprocess.max_pixels must be at least 1".into());
        }
        if p.std.contains(&0.0) {
            return Err("preprocess.std must not contain 0".into());
        }
        if let Some([h, w]) = p.center_crop
            && (h == 0 || w == 0)
        {
            return Err(format!(
                "preprocess.center_crop must be positive, not [{h}, {w}]"
            ));
        }
        match (p.resize, p.center_crop) {
            (Some(Resize::Exact([rh, rw])), Some([ch, cw])) if ch > rh || cw > rw => {
                return Err(format!(
                    "preprocess.center_crop [{ch}, {cw}] is larger than preprocess.resize [{rh}, {rw}]"
                ));
            }
            // The shorter side may be either one, so the crop must fit N both ways.
            (Some(Resize::ShorterSide(n)), Some([ch, cw])) if ch > n || cw > n => {
                return Err(format!(
                    "preprocess.center_crop [{ch}, {cw}] is larger than preprocess.resize {n} \
                     (the shorter side)"
                ));
            }
            (Some(Resize::ShorterSide(n)), None) => {
                return Err(format!(
                    "preprocess.resize {n} (the shorter side) keeps each image's aspect ratio, so \
                     it needs a center_crop to give the fixed input size (or use [height, width])"
                ));
            }
            _ => {}
        }
        let (field, last) = match (p.center_crop, p.resize) {
            (Some(c), _) => ("preprocess.center_crop", Some(c)),
            (None, Some(Resize::Exact(r))) => ("preprocess.resize", Some(r)),
            _ => ("", None),
        };
        if let Some([h, w]) = last
            && (h != i.height || w != i.width)
        {
            return Err(format!(
                "{field} gives [{h}, {w}] images but input is {}x{} (height x width)",
                i.height, i.width
            ));
        }
        if let Some(labels) = &self.labels
            && labels.is_empty()
        {
            return Err("labels must not be empty (omit it instead)".into());
        }
        if let Some(f) = &self.featurize {
            f.source()?;
        }
        if let Some(sha) = &self.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err("sha256 must be 64 hex digits".into());
        }
        if let Some(cpu) = &self.cpu
            && let Some(bad) = cpu.flags.iter().find(|f| {
                f.is_empty()
                    || !f
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
        {
            return Err(format!(
                "cpu.flags: {bad:?} is not a CPU flag as /proc/cpuinfo spells it \
                 (lowercase letters, digits and _, e.g. \"avx2\", \"avx512_bf16\")"
            ));
        }
        Ok(())
    }

    /// Mean and std expanded to one value per channel.
    pub fn mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.input.channels as usize;
        let expand = |v: &Vec<f32>| {
            if v.len() == 1 {
                vec![v[0]; c]
            } else {
                v.clone()
            }
        };
        (expand(&self.preprocess.mean), expand(&self.preprocess.std))
    }

    /// Number of values in one input image (C×H×W).
    pub fn input_len(&self) -> usize {
        (self.input.channels * self.input.height * self.input.width) as usize
    }

    /// Whether the model wants BGR channel order.
    pub fn wants_bgr(&self) -> bool {
        self.input.channel_order == Some(ChannelOrder::Bgr)
    }
}

impl Featurize {
    /// Exactly one of `method` / `output_index`.
    pub fn source(&self) -> std::result::Result<FeatureSource, String> {
        match (&self.method, self.output_index) {
            (Some(m), None) if !m.is_empty() => Ok(FeatureSource::Method(m.clone())),
            (None, Some(i)) => Ok(FeatureSource::OutputIndex(i)),
            (Some(_), Some(_)) => {
                Err("featurize: give either `method` or `output_index`, not both".into())
            }
            _ => Err("featurize: give `method` (a non-empty name) or `output_index`".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CIFAR: &str = r#"{"input": {"height": 32, "width": 32, "channels": 3, "channel_order": "RGB"},
        "preprocess": {"resize": null, "center_crop": null, "scale": 0.00392156862745098,
                       "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "labels": ["a", "b"], "output": "logits", "featurize": {"method": "features"}}"#;

    /// One table for Rust, the JVM (ModelSourceSuite) and Python (test_cluster_helpers.py).
    #[test]
    fn spec_path_follows_the_shared_table() {
        let table =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/spec_paths.json");
        let text = std::fs::read_to_string(&table).unwrap_or_else(|e| panic!("{e}"));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let rows = json["paths"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(rows.len() >= 20, "{}", table.display());
        for row in rows {
            let (model, spec) = (row[0].as_str().unwrap_or(""), row[1].as_str().unwrap_or(""));
            assert_eq!(
                ModelSpec::default_path(Path::new(model)),
                PathBuf::from(spec),
                "{model:?}"
            );
        }
    }

    #[test]
    fn accepts_the_documented_example() {
        let s = ModelSpec::from_json(CIFAR).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.input.height, 32);
        assert_eq!(
            s.featurize.and_then(|f| f.source().ok()),
            Some(FeatureSource::Method("features".into()))
        );
    }

    #[test]
    fn rejects_unknown_field_naming_it() {
        let bad = CIFAR.replace("\"output\"", "\"outptu\"");
        let e = ModelSpec::from_json(&bad).err().unwrap_or_default();
        assert!(e.contains("outptu"), "{e}");
    }

    #[test]
    fn rejects_unknown_nested_field() {
        let bad = CIFAR.replace("\"scale\"", "\"scal\"");
        let e = ModelSpec::from_json(&bad).err().unwrap_or_default();
        assert!(e.contains("scal"), "{e}");
    }

    #[test]
    fn rejects_crop_that_contradicts_input_size() {
        let bad = CIFAR.replace("\"center_crop\": null", "\"center_crop\": [28, 28]");
        let e = ModelSpec::from_json(&bad).err().unwrap_or_default();
        assert!(e.contains("center_crop"), "{e}");
    }

    #[test]
    fn rejects_crop_larger_than_resize() {
        let bad = CIFAR
            .replace("\"resize\": null", "\"resize\": [30, 30]")
            .replace("\"center_crop\": null", "\"center_crop\": [32, 32]");
        let e = ModelSpec::from_json(&bad).err().unwrap_or_default();
        assert!(e.contains("larger than preprocess.resize"), "{e}");
    }

    fn resize_spec(resize: &str, crop: &str) -> std::result::Result<ModelSpec, String> {
        ModelSpec::from_json(
            &CIFAR
                .replace("\"resize\": null", &format!("\"resize\": {resize}"))
                .replace("\"center_crop\": null", &format!("\"center_crop\": {crop}")),
        )
    }

    #[test]
    fn resize_integer_is_the_shorter_side() {
        let s = resize_spec("36", "[32, 32]").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.preprocess.resize, Some(Resize::ShorterSide(36)));
        let s = resize_spec("[40, 36]", "[32, 32]").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.preprocess.resize, Some(Resize::Exact([40, 36])));
        let s = resize_spec("null", "null").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.preprocess.resize, None);
    }

    #[test]
    fn shorter_side_keeps_the_aspect_ratio_like_torchvision() {
        // (width, height) in and out; the longer side is int(n * long / short), truncated.
        let r = Resize::ShorterSide(256);
        assert_eq!(r.target(451, 300), (384, 256)); // landscape: 256 * 451 / 300 = 384.85
        assert_eq!(r.target(400, 600), (256, 384)); // portrait
        assert_eq!(r.target(640, 427), (383, 256)); // 383.70 truncated, not rounded
        assert_eq!(r.target(512, 512), (256, 256)); // square
        assert_eq!(r.target(100, 150), (256, 384)); // upscale
        assert_eq!(r.target(25, 25), (256, 256));
        assert_eq!(r.target(256, 300), (256, 300)); // already there: no resize
        assert_eq!(Resize::Exact([224, 300]).target(640, 427), (300, 224));
    }

    #[test]
    fn rejects_bad_resize_values_naming_the_field() {
        for bad in [
            "0",
            "-256",
            "256.5",
            "[256]",
            "[256, 256, 3]",
            "[0, 32]",
            "\"256\"",
            "{}",
        ] {
            let e = resize_spec(bad, "[32, 32]").err().unwrap_or_default();
            assert!(e.contains("preprocess.resize must be"), "{bad}: {e}");
        }
    }

    #[test]
    fn shorter_side_resize_needs_a_crop_that_fits() {
        let e = resize_spec("30", "[32, 32]").err().unwrap_or_default();
        assert!(e.contains("larger than preprocess.resize 30"), "{e}");
        let e = resize_spec("32", "null").err().unwrap_or_default();
        assert!(e.contains("needs a center_crop"), "{e}");
    }

    #[test]
    fn rejects_mean_of_wrong_length() {
        let bad = CIFAR.replace("\"mean\": [0.5, 0.5, 0.5]", "\"mean\": [0.5, 0.5]");
        let e = ModelSpec::from_json(&bad).err().unwrap_or_default();
        assert!(e.contains("preprocess.mean"), "{e}");
    }

    #[test]
    fn rejects_both_featurize_sources() {
        let bad = CIFAR.replace(
            "{\"method\": \"features\"}",
            "{\"method\": \"features\", \"output_index\": 1}",
        );
        let e = ModelSpec::from_json(&bad).err().unwrap_or_default();
        assert!(e.contains("featurize"), "{e}");
    }

    #[test]
    fn rejects_gray_order_with_three_channels() {
        let bad = CIFAR.replace("\"RGB\"", "\"L\"");
        let e = ModelSpec::from_json(&bad).err().unwrap_or_default();
        assert!(e.contains("channel_order"), "{e}");
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = ModelSpec::from_json(r#"{"input": {"height": 8, "width": 8}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.input.channels, 3);
        assert_eq!(s.output, OutputKind::Logits);
        assert_eq!(s.mean_std(), (vec![0.0; 3], vec![1.0; 3]));
        assert_eq!(s.precision, None);
        assert_eq!(s.cpu, None);
    }

    #[test]
    fn cpu_names_the_flags_a_package_needs() {
        let s = ModelSpec::from_json(
            r#"{"input": {"height": 8, "width": 8},
                "cpu": {"march": "x86-64-v3", "flags": ["avx2", "fma", "abm"]}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cpu = s.cpu.unwrap_or_else(|| panic!("no cpu"));
        assert_eq!(cpu.march.as_deref(), Some("x86-64-v3"));
        assert_eq!(cpu.flags, ["avx2", "fma", "abm"]);
        let only_flags =
            ModelSpec::from_json(r#"{"input": {"height": 8, "width": 8}, "cpu": {"flags": []}}"#);
        assert!(only_flags.is_ok(), "{only_flags:?}");
        for bad in [
            r#""cpu": {"flags": ["AVX2"]}"#,
            r#""cpu": {"flags": [""]}"#,
            r#""cpu": {"flagz": ["avx2"]}"#,
        ] {
            let e = ModelSpec::from_json(&format!(
                r#"{{"input": {{"height": 8, "width": 8}}, {bad}}}"#
            ))
            .err()
            .unwrap_or_default();
            assert!(e.contains("cpu") || e.contains("flagz"), "{bad}: {e}");
        }
    }

    #[test]
    fn four_channels_need_a_declared_band_order() {
        let four = |order: &str| {
            ModelSpec::from_json(&format!(
                r#"{{"input": {{"height": 8, "width": 8, "channels": 4{order}}},
                    "preprocess": {{"mean": [1, 2, 3, 4], "std": [1]}}}}"#
            ))
        };
        for order in ["RGBA", "RGBN"] {
            let s =
                four(&format!(r#", "channel_order": "{order}""#)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.mean_std().0, [1.0, 2.0, 3.0, 4.0]);
        }
        let e = four("").err().unwrap_or_default();
        assert!(e.contains("needs input.channel_order"), "{e}");
        let e = four(r#", "channel_order": "RGB""#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("contradicts"), "{e}");
        let e = ModelSpec::from_json(r#"{"input": {"height": 8, "width": 8, "channels": 2}}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("1, 3 or 4"), "{e}");
    }

    #[test]
    fn max_pixels_and_exif_orientation_default_like_pil() {
        let s = ModelSpec::from_json(r#"{"input": {"height": 8, "width": 8}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.preprocess.max_pixels, 178_956_970);
        assert_eq!(s.preprocess.exif_orientation, ExifOrientation::Ignore);
        let s = ModelSpec::from_json(
            r#"{"input": {"height": 8, "width": 8},
                "preprocess": {"max_pixels": 1000, "exif_orientation": "apply"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.preprocess.max_pixels, 1000);
        assert_eq!(s.preprocess.exif_orientation, ExifOrientation::Apply);
        for bad in [
            r#""max_pixels": 0"#,
            r#""max_pixels": -1"#,
            r#""exif_orientation": "auto""#,
        ] {
            let e = ModelSpec::from_json(&format!(
                r#"{{"input": {{"height": 8, "width": 8}}, "preprocess": {{{bad}}}}}"#
            ))
            .err()
            .unwrap_or_default();
            assert!(!e.is_empty(), "{bad} accepted");
        }
    }

    #[test]
    fn precision_names_what_the_file_computes_in() {
        let s =
            ModelSpec::from_json(r#"{"input": {"height": 8, "width": 8}, "precision": "int8"}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.precision, Some(FilePrecision::Int8));
        let e =
            ModelSpec::from_json(r#"{"input": {"height": 8, "width": 8}, "precision": "int4"}"#)
                .err()
                .unwrap_or_default();
        assert!(e.contains("int4"), "{e}");
    }
}
