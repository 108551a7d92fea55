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
pub mod preset;

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
        parse_bytes(path, bytes, Self::from_json)
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
                    if let Some(k) = ["inputs", "outputs"].iter().find(|k| obj.contains_key(**k)) {
                        return Err(format!(
                            "`{k}` belongs to the general spec: add \"spec_version\": 2 \
                             (docs/models.md)"
                        ));
                    }
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

/// `bytes` (the spec file `path`) as UTF-8 JSON through `parse`; errors name `path`.
fn parse_bytes<T>(
    path: &Path,
    bytes: &[u8],
    parse: impl FnOnce(&str) -> std::result::Result<T, String>,
) -> Result<T> {
    let spec_error = |reason: String| Error::Spec {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| spec_error(format!("cannot read: not UTF-8 ({e})")))?;
    parse(text).map_err(spec_error)
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

#[cfg(test)]
mod tests {
    use super::*;

    const GENERAL: &str = r#"{"spec_version": 2,
      "inputs": [
        {"name": "image", "kind": "image", "column": "content", "shape": [3, 32, 32],
         "preprocess": {"scale": 0.00392156862745098, "mean": [0.5], "std": [0.5]}},
        {"name": "meta", "column": ["age", "bmi", "bp", "s1"], "shape": [4], "nan": "error"},
        {"name": "ids", "dtype": "int64", "shape": [-1], "ragged": "pad", "pad_value": 0},
        {"name": "ids_mask", "kind": "mask", "of": "ids", "dtype": "int64"}],
      "outputs": [
        {"name": "probability", "from": 0, "column": "vector", "post": [{"op": "softmax"}]},
        {"name": "embedding", "from": 1, "shape": [8]},
        {"name": "classes", "from": [2, "out"], "shape": [-1, -1],
         "post": [{"op": "argmax", "axis": 0}]},
        {"name": "mask", "from": [2, "out"], "column": "png", "post": [{"op": "argmax", "axis": 0}]},
        {"name": "detections", "from": 3, "column": "structs", "fields": [
          {"name": "box", "from": "boxes", "shape": [4]},
          {"name": "label", "from": "labels", "dtype": "int32"},
          {"name": "score", "from": "scores"}]}]}"#;

    fn general_with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Spec, String> {
        let mut v: serde_json::Value = serde_json::from_str(GENERAL).unwrap();
        edit(&mut v);
        Spec::from_json(&v.to_string())
    }

    #[test]
    fn every_kind_at_once_parses() {
        let Spec::General(g) = Spec::from_json(GENERAL).unwrap() else {
            panic!("not general")
        };
        assert_eq!(g.inputs.len(), 4);
        assert_eq!(g.outputs[2].dtype(), general::DType::Int32);
        assert_eq!(g.outputs[0].dtype(), general::DType::Float64);
        assert_eq!(g.outputs[2].rank(), 2);
    }

    #[test]
    fn version_one_stays_valid_with_or_without_its_number() {
        let v1 = r#"{"input": {"height": 32, "width": 32}}"#;
        assert!(matches!(Spec::from_json(v1), Ok(Spec::Image(_))));
        let v1n = r#"{"spec_version": 1, "input": {"height": 32, "width": 32}}"#;
        assert!(matches!(Spec::from_json(v1n), Ok(Spec::Image(_))));
        let e = Spec::from_json(r#"{"input": {"height": 2, "width": 2}, "inputs": []}"#);
        assert!(e.unwrap_err().contains("spec_version\": 2"));
    }

    #[test]
    fn newer_versions_and_bad_numbers_are_refused() {
        let e = Spec::from_json(r#"{"spec_version": 3}"#).unwrap_err();
        assert!(e.contains("spec_version 3 is newer"), "{e}");
        let e = Spec::from_json(r#"{"spec_version": "2"}"#).unwrap_err();
        assert!(e.contains("positive integer"), "{e}");
    }

    /// Each contradiction is refused, naming the field.
    #[test]
    fn contradictions_name_the_field() {
        type Edit = fn(&mut serde_json::Value);
        let cases: Vec<(Edit, &str)> = vec![
            (
                |v| v["inputs"][2]["ragged"] = serde_json::Value::Null,
                "inputs[2].ragged",
            ),
            (
                |v| v["inputs"][1]["shape"] = serde_json::json!([5]),
                "inputs[1].column gathers 4",
            ),
            (
                |v| v["inputs"][3]["of"] = serde_json::json!("meta"),
                "inputs[3].of: input `meta` is not padded",
            ),
            (
                |v| v["inputs"][3]["of"] = serde_json::json!("nope"),
                "no input is named `nope`",
            ),
            (
                |v| v["inputs"][1]["name"] = serde_json::json!("image"),
                "inputs[1].name `image` is declared twice",
            ),
            (
                |v| v["inputs"][2]["pad_value"] = serde_json::json!(0.5),
                "inputs[2].pad_value 0.5 is not a value of dtype int64",
            ),
            (
                |v| v["inputs"][0]["shape"] = serde_json::json!([2, 32, 32]),
                "inputs[0]",
            ),
            (
                |v| v["inputs"][0]["dtype"] = serde_json::json!("int64"),
                "inputs[0].dtype",
            ),
            (
                |v| v["inputs"][0]["shape"] = serde_json::json!([3, -1, -1]),
                "inputs[0].shape",
            ),
            (
                |v| v["inputs"][1]["preprocess"] = serde_json::json!({}),
                "inputs[1]: channel_order and preprocess",
            ),
            (
                |v| v["inputs"][0]["bogus"] = serde_json::json!(1),
                "unknown field `bogus`",
            ),
            (
                |v| v["outputs"][3]["post"] = serde_json::json!([]),
                "outputs.mask: a `png` column",
            ),
            (
                |v| v["outputs"][4]["fields"] = serde_json::json!([]),
                "outputs.detections.fields",
            ),
            (
                |v| v["outputs"][1]["name"] = serde_json::json!("error"),
                "outputs[1].name",
            ),
            (
                |v| v["outputs"][1]["column"] = serde_json::json!("scalar"),
                "outputs.embedding.shape",
            ),
            (
                // float32 and float64 vectors are allowed (the score's probability is float32).
                |v| v["outputs"][0]["dtype"] = serde_json::json!("int64"),
                "outputs.probability.dtype",
            ),
            (
                |v| v["outputs"][2]["dtype"] = serde_json::json!("float32"),
                "outputs.classes.dtype",
            ),
            (
                |v| v["outputs"][0]["post"][0]["op"] = serde_json::json!("mean"),
                "unknown variant `mean`",
            ),
            (
                |v| v["outputs"] = serde_json::json!([]),
                "outputs must have at least one entry",
            ),
        ];
        for (edit, expected) in cases {
            let e = general_with(edit).unwrap_err();
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
        }
    }

    #[test]
    fn a_version_one_spec_as_general_is_one_image_in_one_vector_out() {
        let Spec::Image(s) = Spec::from_json(
            r#"{"input": {"height": 8, "width": 8, "channels": 1}, "output": "logits"}"#,
        )
        .unwrap() else {
            panic!("v1")
        };
        let g = GeneralSpec::from_image(&s);
        g.validate().unwrap();
        assert_eq!(g.inputs[0].shape, vec![1, 8, 8]);
        assert_eq!(g.outputs[0].post.len(), 1);
    }
}
