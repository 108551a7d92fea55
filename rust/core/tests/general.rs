//! The four proofs of the general path (issue 17) end to end through `Scorer::open` and
//! `Scorer::predict`, PyTorch the oracle (tests/fixtures/make_general_fixtures.py):
//! regression, segmentation, detection (a scripted torchvision detector: torchvision::nms),
//! two inputs and two outputs (TorchScript and AOTInductor).
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use torchspark_core::{ModelConfig, Scorer, Spec};

use common::general_fixtures;

/// Every fixture spec passes the validator.
#[test]
fn fixture_specs_are_valid() {
    let dir = general_fixtures();
    for name in ["diabetes_mlp", "seg", "det", "two_io", "two_io_aoti"] {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
        match Spec::from_json(&text) {
            Ok(Spec::General(_)) => {}
            Ok(_) => panic!("{name}.json is not a version-2 spec"),
            Err(e) => panic!("{name}.json: {e}"),
        }
    }
}

/// torchspark's CPU `torchvision::nms` (registered when a TorchScript model loads) keeps the
/// same boxes in the same order as torchvision's, ties in score included, in float32 and 64.
#[test]
fn nms_matches_torchvision() {
    use tch::{CModule, IValue, Kind, Tensor};
    let dir = general_fixtures();
    // Opening any TorchScript model registers the op (the detector needs it to load at all).
    Scorer::open(&ModelConfig::new(dir.join("det.pt"))).unwrap();
    let nms = CModule::load(dir.join("nms.pt")).unwrap();
    let cases = common::general_json("nms_cases.json");
    for (c, case) in cases.as_array().unwrap().iter().enumerate() {
        let kind = match case["dtype"].as_str().unwrap() {
            "float64" => Kind::Double,
            _ => Kind::Float,
        };
        let boxes: Vec<f64> = case["boxes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        let scores: Vec<f64> = floats64(&case["scores"]);
        let n = scores.len() as i64;
        let boxes = Tensor::from_slice(&boxes).reshape([n, 4]).to_kind(kind);
        let scores = Tensor::from_slice(&scores).to_kind(kind);
        let iou = case["iou"].as_f64().unwrap();
        let out = nms
            .forward_is(&[
                IValue::Tensor(boxes),
                IValue::Tensor(scores),
                IValue::Double(iou),
            ])
            .unwrap();
        let IValue::Tensor(keep) = out else {
            panic!("case {c}: nms returned {out:?}")
        };
        assert_eq!(keep.kind(), Kind::Int64, "case {c}: keep indices are int64");
        let keep: Vec<i64> = Vec::try_from(keep).unwrap();
        let expected: Vec<i64> = case["keep"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(keep, expected, "case {c} ({n} boxes, iou {iou})");
    }
}

fn floats64(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
