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
    /// 1 (gray) or 3 (color).
    #[serde(default = "three")]
    pub channels: u32,
    /// `RGB` or `BGR` for 3 channels, `L` for one; defaults to `RGB` / `L`.
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
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Resize every image to `[height, width]` first (bilinear), or `null`.
    #[serde(default)]
    pub resize: Option<[u32; 2]>,
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
    /// `model.pt` → `model.json`.
    pub fn default_path(model_path: &Path) -> PathBuf {
        model_path.with_extension("json")
    }

    /// Reads and validates the spec file; errors name `path` and the offending field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Spec {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_json(&text).map_err(|reason| Error::Spec {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses and validates; the error string names the field.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let i = &self.input;
        if i.height == 0 || i.width == 0 {
            return Err("input.height and input.width must be positive".into());
        }
        match (i.channels, i.channel_order) {
            (3, None | Some(ChannelOrder::Rgb | ChannelOrder::Bgr)) => {}
            (1, None | Some(ChannelOrder::Gray)) => {}
            (1 | 3, Some(order)) => {
                return Err(format!(
                    "input.channel_order {order:?} contradicts input.channels = {}",
                    i.channels
                ));
            }
            (c, _) => return Err(format!("input.channels must be 1 or 3, not {c}")),
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
        if p.std.contains(&0.0) {
            return Err("preprocess.std must not contain 0".into());
        }
        for (name, size) in [("resize", p.resize), ("center_crop", p.center_crop)] {
            if let Some([h, w]) = size
                && (h == 0 || w == 0)
            {
                return Err(format!(
                    "preprocess.{name} must be positive, not [{h}, {w}]"
                ));
            }
        }
        if let (Some([rh, rw]), Some([ch, cw])) = (p.resize, p.center_crop)
            && (ch > rh || cw > rw)
        {
            return Err(format!(
                "preprocess.center_crop [{ch}, {cw}] is larger than preprocess.resize [{rh}, {rw}]"
            ));
        }
        let (field, last) = match (p.center_crop, p.resize) {
            (Some(c), _) => ("preprocess.center_crop", Some(c)),
            (None, Some(r)) => ("preprocess.resize", Some(r)),
            (None, None) => ("", None),
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
