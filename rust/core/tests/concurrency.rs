//! One model per process, shared by concurrent threads (its own binary: the load counter is
//! process-wide).

mod common;

use std::sync::Arc;

use common::*;
use torchspark_core::{BatchOptions, ModelConfig, Scorer, load_count};

#[test]
fn eight_threads_share_one_model_and_agree() {
    let exp = expected();
    let bytes: Vec<Vec<u8>> = exp.iter().map(|e| image_bytes(&e.file)).collect();
    let rows: Vec<Option<&[u8]>> = bytes.iter().map(|b| Some(b.as_slice())).collect();
    let batch = Arc::new(binary_batch(&rows));
    let config = ModelConfig {
        num_threads: Some(1),
        ..ModelConfig::new(fixtures().join("resnet20.pt"))
    };
    assert_eq!(load_count(), 0);
    let reference = Scorer::open(&config)
        .unwrap()
        .score(&batch, &BatchOptions::default())
        .unwrap();
    for (_, out) in score_on_eight_threads(&config, &batch) {
        for i in 0..exp.len() {
            let a = list_row(&out, "probability", i).unwrap();
            let b = list_row(&reference, "probability", i).unwrap();
            let d = max_abs_diff(&a, &b);
            // Other batch sizes: equal up to float rounding (see scoring.rs).
            assert!(d <= 1e-5, "row {i}: {d}");
        }
    }
    assert_eq!(load_count(), 1, "the model must be loaded once per process");
}
