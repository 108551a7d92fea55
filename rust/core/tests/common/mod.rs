//! Shared helpers: the fixtures written by `tests/fixtures/make_fixtures.py` (made on demand),
//! and Arrow batch builders.
// Test helpers: a failed unwrap is a failed test, with its location.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use arrow_array::builder::{
    BinaryBuilder, Float32Builder, Int32Builder, ListBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

static MAKE: Mutex<()> = Mutex::new(());

/// The fixture directory, generated with the venv's PyTorch when missing.
pub fn fixtures() -> PathBuf {
    let root = repo_root();
    let out = root.join("tests/fixtures/out");
    let _lock = MAKE.lock().unwrap_or_else(|e| e.into_inner());
    if !out.join("expected.json").exists() || !out.join("tuple_net_cuda.pt2").exists() {
        let python = std::env::var("TORCHSPARK_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join(".venv/bin/python"));
        let status = Command::new(python)
            .arg(root.join("tests/fixtures/make_fixtures.py"))
            .arg(&out)
            .status()
            .expect("run make_fixtures.py (run `make setup` first)");
        assert!(status.success(), "make_fixtures.py failed");
    }
    out
}

pub struct Expected {
    pub file: String,
    pub probability: Vec<f32>,
    pub features: Vec<f32>,
    pub input: Vec<f32>,
    pub probability_bf16: Vec<f32>,
    pub tuple_probability: Vec<f32>,
    pub tuple_features: Vec<f32>,
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The per-image entries of the fixtures' `expected.json`.
fn expected_images() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    match v["images"].take() {
        Value::Array(images) => images,
        other => panic!("expected.json: images is not a list: {other}"),
    }
}

pub fn expected() -> Vec<Expected> {
    expected_images()
        .iter()
        .map(|e| Expected {
            file: e["file"].as_str().unwrap().to_string(),
            probability: floats(&e["resnet20"]["probability"]),
            features: floats(&e["resnet20"]["features"]),
            input: floats(&e["resnet20"]["input"]),
            probability_bf16: floats(&e["resnet20"]["probability_bf16"]),
            tuple_probability: floats(&e["tuple_net"]["probability"]),
            tuple_features: floats(&e["tuple_net"]["features"]),
        })
        .collect()
}

/// PyTorch's outputs for one fixture model (`resnet20_aoti`, `tuple_net_int8`, ...), per image.
pub struct ModelExpected {
    pub file: String,
    pub probability: Vec<f32>,
    pub features: Vec<f32>,
}

pub fn expected_for(model: &str) -> Vec<ModelExpected> {
    expected_images()
        .iter()
        .map(|e| ModelExpected {
            file: e["file"].as_str().unwrap().to_string(),
            probability: floats(&e[model]["probability"]),
            features: floats(&e[model]["features"]),
        })
        .collect()
}

pub fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

pub fn batch_of(name: &str, col: ArrayRef) -> RecordBatch {
    RecordBatch::try_from_iter([(name, col)]).unwrap()
}

pub fn binary_batch(rows: &[Option<&[u8]>]) -> RecordBatch {
    let mut b = BinaryBuilder::new();
    for r in rows {
        b.append_option(*r);
    }
    batch_of("content", Arc::new(b.finish()))
}

pub fn float_batch(rows: &[Option<&[f32]>]) -> RecordBatch {
    let mut b = ListBuilder::new(Float32Builder::new());
    for r in rows {
        match r {
            Some(v) => {
                b.values().append_slice(v);
                b.append(true)
            }
            None => b.append(false),
        }
    }
    batch_of("input", Arc::new(b.finish()))
}

/// Spark's image struct (`origin, height, width, nChannels, mode, data`) with BGR data.
pub fn spark_image_batch(rows: &[(String, u32, u32, Vec<u8>)]) -> RecordBatch {
    let mut origin = StringBuilder::new();
    let (mut h, mut w, mut c, mut mode) = (
        Int32Builder::new(),
        Int32Builder::new(),
        Int32Builder::new(),
        Int32Builder::new(),
    );
    let mut data = BinaryBuilder::new();
    for (o, height, width, bgr) in rows {
        origin.append_value(o);
        h.append_value(*height as i32);
        w.append_value(*width as i32);
        c.append_value(3);
        mode.append_value(16);
        data.append_value(bgr);
    }
    let s = StructArray::from(vec![
        (
            Arc::new(Field::new("origin", DataType::Utf8, true)),
            Arc::new(origin.finish()) as ArrayRef,
        ),
        (
            Arc::new(Field::new("height", DataType::Int32, true)),
            Arc::new(h.finish()) as ArrayRef,
        ),
        (
            Arc::new(Field::new("width", DataType::Int32, true)),
            Arc::new(w.finish()) as ArrayRef,
        ),
        (
            Arc::new(Field::new("nChannels", DataType::Int32, true)),
            Arc::new(c.finish()) as ArrayRef,
        ),
        (
            Arc::new(Field::new("mode", DataType::Int32, true)),
            Arc::new(mode.finish()) as ArrayRef,
        ),
        (
            Arc::new(Field::new("data", DataType::Binary, true)),
            Arc::new(data.finish()) as ArrayRef,
        ),
    ]);
    batch_of("image", Arc::new(s))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length differs");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn list_row(batch: &RecordBatch, col: &str, i: usize) -> Option<Vec<f32>> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float32Type;
    let l = batch.column_by_name(col).unwrap().as_list::<i32>();
    if l.is_null(i) {
        return None;
    }
    Some(l.value(i).as_primitive::<Float32Type>().values().to_vec())
}

pub fn str_row(batch: &RecordBatch, col: &str, i: usize) -> Option<String> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    let s = batch.column_by_name(col).unwrap().as_string::<i32>();
    (!s.is_null(i)).then(|| s.value(i).to_string())
}

/// 8 threads, each opening its own `Scorer` on `config` and scoring `batch` three times with
/// batch sizes 1, 6, ..., 36 (several passes, so that the threads really overlap): each thread's
/// scorer and last output.
pub fn score_on_eight_threads(
    config: &torchspark_core::ModelConfig,
    batch: &Arc<RecordBatch>,
) -> Vec<(torchspark_core::Scorer, RecordBatch)> {
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (batch, config) = (batch.clone(), config.clone());
            std::thread::spawn(move || {
                let scorer = torchspark_core::Scorer::open(&config).unwrap();
                let o = torchspark_core::BatchOptions {
                    batch_size: 1 + t * 5,
                    ..torchspark_core::BatchOptions::default()
                };
                let mut out = scorer.score(&batch, &o).unwrap();
                for _ in 0..2 {
                    out = scorer.score(&batch, &o).unwrap();
                }
                (scorer, out)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}
