//! The model spec: a JSON file beside the model (`model.pt` or `model.pt2` → `model.json`).
//!
//! Two versions share one file name and one strictness (unknown fields and contradictions are
//! refused, naming the field):
//! - version 1 (no `spec_version`, or `1`): one image in, one vector out ([`image`],
//!   [`ModelSpec`]), what `ImageScorer` and `ImageFeaturizer` run;
//! - version 2 (`"spec_version": 2`): any tensors in and out ([`general`], [`GeneralSpec`]),
//!   what `TorchModel` runs. docs/models.md is its reference.

use std::path::Path;

use crate::error::{Error, Result};

pub mod general;
pub mod image;

pub use general::GeneralSpec;
pub use image::*;

/// The versions this build reads.
pub const SPEC_VERSIONS: [u32; 2] = [1, 2];

/// A parsed, validated spec of either version.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// Version 1: one image in, class scores or features out.
    Image(ModelSpec),
    /// Version 2: declared tensor inputs and outputs.
    General(GeneralSpec),
}

impl Spec {
    /// Parses `bytes` (read from `path`, which errors name) as either version.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Spec> {
        let spec_error = |reason: String| Error::Spec {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| spec_error(format!("cannot read: not UTF-8 ({e})")))?;
        Self::from_json(text).map_err(spec_error)
    }

    /// Parses and validates either version; the error names the field.
    pub fn from_json(text: &str) -> std::result::Result<Spec, String> {
        match spec_version(text)? {
            1 => {
                // An explicit `"spec_version": 1` is allowed; the version-1 struct has no field
                // for it, so it is taken out before the strict parse.
                let mut value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| e.to_string())?;
                if let Some(obj) = value.as_object_mut() {
                    obj.remove("spec_version");
                }
                ModelSpec::from_json(&value.to_string()).map(Spec::Image)
            }
            2 => GeneralSpec::from_json(text).map(Spec::General),
            v => Err(format!(
                "spec_version {v} is newer than this torchspark (it reads {} and {})",
                SPEC_VERSIONS[0], SPEC_VERSIONS[1]
            )),
        }
    }

    /// The pinned sha256 of the model file, if any.
    pub fn sha256(&self) -> Option<&str> {
        match self {
            Spec::Image(s) => s.sha256.as_deref(),
            Spec::General(s) => s.sha256.as_deref(),
        }
    }

    /// The precision the model file computes in (absent: fp32).
    pub fn precision(&self) -> Option<FilePrecision> {
        match self {
            Spec::Image(s) => s.precision,
            Spec::General(s) => s.precision,
        }
    }

    pub fn cpu(&self) -> Option<&CpuSpec> {
        match self {
            Spec::Image(s) => s.cpu.as_ref(),
            Spec::General(s) => s.cpu.as_ref(),
        }
    }

    /// The spec as a general one: a version-1 image spec becomes one `image` input and one
    /// `output` vector (softmax applied when its `output` is `logits`).
    pub fn general(&self) -> GeneralSpec {
        match self {
            Spec::Image(s) => GeneralSpec::from_image(s),
            Spec::General(g) => g.clone(),
        }
    }
}

/// `spec_version` of a JSON object: absent means 1.
fn spec_version(text: &str) -> std::result::Result<u32, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Some(obj) = value.as_object() else {
        return Err("the spec must be a JSON object".into());
    };
    match obj.get("spec_version") {
        None => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|&v| v >= 1)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("spec_version must be a positive integer, not {v}")),
    }
}
