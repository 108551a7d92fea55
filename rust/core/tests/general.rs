//! The four proofs of the general path (issue 17) end to end through `Scorer::open` and
//! `Scorer::predict`, PyTorch the oracle (tests/fixtures/make_general_fixtures.py):
//! regression, segmentation, detection (a scripted torchvision detector: torchvision::nms),
//! two inputs and two outputs (TorchScript and AOTInductor).
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use torchspark_core::Spec;

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
