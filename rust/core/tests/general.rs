//! The four proofs of the general path (issue 17) end to end through `Scorer::open` and
//! `Scorer::predict`, PyTorch the oracle (tests/fixtures/make_general_fixtures.py):
//! regression, segmentation, detection (a scripted torchvision detector: torchvision::nms),
//! two inputs and two outputs (TorchScript and AOTInductor).
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, FixedSizeListBuilder, Float64Builder, Int8Builder, Int32Builder, ListBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field};
use serde_json::Value;
use torchspark_core::{BatchOptions, ModelConfig, Scorer, Spec};

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
        let scores: Vec<f64> = f64s(&case["scores"]);
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

// ---------------------------------------------------------------------------------------------
// Batches and columns

fn opts(batch_size: usize) -> BatchOptions {
    BatchOptions {
        batch_size,
        ..BatchOptions::default()
    }
}

fn open(name: &str) -> Scorer {
    Scorer::open(&ModelConfig::new(general_fixtures().join(name))).unwrap()
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

/// The encoded files `dir/<name>` as a Binary column.
fn images(dir: &str, files: &[String]) -> ArrayRef {
    let mut b = BinaryBuilder::new();
    for f in files {
        b.append_value(std::fs::read(general_fixtures().join(dir).join(f)).unwrap());
    }
    Arc::new(b.finish())
}

/// Rows of float64 values as `List<Float64>` (`None`: a null row).
fn list_f64(rows: &[Option<Vec<f64>>]) -> ArrayRef {
    let mut b = ListBuilder::new(Float64Builder::new());
    for r in rows {
        match r {
            Some(v) => {
                b.values().append_slice(v);
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

/// Rows of `k` float64 values as `FixedSizeList<Float64>(k)`.
fn fixed_f64(rows: &[Vec<f64>], k: i32) -> ArrayRef {
    let mut b = FixedSizeListBuilder::new(Float64Builder::new(), k);
    for r in rows {
        b.values().append_slice(r);
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Spark ML vectors as Arrow sees `VectorUDT`: `struct<type: int8, size: int32, indices:
/// list<int32>, values: list<float64>>`; even rows dense (type 1), odd rows sparse (type 0,
/// every nonzero listed).
fn ml_vectors(rows: &[Vec<f64>]) -> ArrayRef {
    let mut kind = Int8Builder::new();
    let mut size = Int32Builder::new();
    let mut indices = ListBuilder::new(Int32Builder::new());
    let mut values = ListBuilder::new(Float64Builder::new());
    for (i, r) in rows.iter().enumerate() {
        if i % 2 == 0 {
            kind.append_value(1);
            size.append_null();
            indices.append(false);
            values.values().append_slice(r);
        } else {
            kind.append_value(0);
            size.append_value(r.len() as i32);
            for (k, &v) in r.iter().enumerate().filter(|(_, v)| **v != 0.0) {
                indices.values().append_value(k as i32);
                values.values().append_value(v);
            }
            indices.append(true);
        }
        values.append(true);
    }
    let field = |name: &str, t: DataType, nullable: bool| Arc::new(Field::new(name, t, nullable));
    let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
    Arc::new(StructArray::from(vec![
        (
            field("type", DataType::Int8, false),
            Arc::new(kind.finish()) as ArrayRef,
        ),
        (
            field("size", DataType::Int32, true),
            Arc::new(size.finish()) as ArrayRef,
        ),
        (
            field("indices", list(DataType::Int32), true),
            Arc::new(indices.finish()) as ArrayRef,
        ),
        (
            field("values", list(DataType::Float64), true),
            Arc::new(values.finish()) as ArrayRef,
        ),
    ]))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn rows_f64(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(f64s).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Row `i` of a flat list column of any float type, as f64.
fn floats_at(col: &ArrayRef, i: usize) -> Vec<f64> {
    let l = col.as_list::<i32>();
    assert!(!l.is_null(i), "row {i} is null");
    float_values(&l.value(i))
}

fn float_values(a: &ArrayRef) -> Vec<f64> {
    match a.data_type() {
        DataType::Float32 => a
            .as_primitive::<Float32Type>()
            .values()
            .iter()
            .map(|&v| f64::from(v))
            .collect(),
        DataType::Float64 => a.as_primitive::<Float64Type>().values().to_vec(),
        other => panic!("not a float column: {other}"),
    }
}

fn errors(out: &RecordBatch) -> Vec<Option<String>> {
    let e = out.column_by_name("error").unwrap().as_string::<i32>();
    (0..e.len())
        .map(|i| (!e.is_null(i)).then(|| e.value(i).to_string()))
        .collect()
}

fn assert_no_errors(out: &RecordBatch) {
    let errs: Vec<_> = errors(out).into_iter().flatten().collect();
    assert!(errs.is_empty(), "row errors: {errs:?}");
}

// ---------------------------------------------------------------------------------------------
// The four proofs

/// Regression: the diabetes MLP from a `List<Float64>`, a `FixedSizeList<Float64>` and an ML
/// vector column (dense and sparse rows) gives PyTorch's predictions (<= 1e-5) and its RMSE.
#[test]
fn regression_matches_pytorch_from_list_fixed_size_list_and_ml_vector() {
    let data = common::general_json("diabetes.json");
    let x = rows_f64(&data["X"]);
    let (y, pred) = (f64s(&data["y"]), f64s(&data["pred"]));
    let scorer = open("diabetes_mlp.pt");
    let list = list_f64(&x.iter().cloned().map(Some).collect::<Vec<_>>());
    for (kind, column) in [
        ("List", list),
        ("FixedSizeList", fixed_f64(&x, 10)),
        ("VectorUDT", ml_vectors(&x)),
    ] {
        // The model computes in float64, so any chunking agrees with the oracle's one batch.
        for batch_size in [512, 64, 7] {
            let out = scorer
                .predict(
                    &batch(vec![("features", column.clone())]),
                    &opts(batch_size),
                )
                .unwrap();
            assert_no_errors(&out);
            let got = out.column_by_name("prediction").unwrap();
            assert_eq!(got.data_type(), &DataType::Float64, "{kind}");
            let got = got.as_primitive::<Float64Type>().values().to_vec();
            let diff = max_diff(&got, &pred);
            assert!(
                diff <= 1e-5,
                "{kind}, batches of {batch_size}: max abs diff {diff}"
            );
            let rmse = (got
                .iter()
                .zip(&y)
                .map(|(p, t)| (p - t).powi(2))
                .sum::<f64>()
                / y.len() as f64)
                .sqrt();
            let want = data["rmse"].as_f64().unwrap();
            assert!(
                (rmse - want).abs() <= 1e-9 * want,
                "{kind}: RMSE {rmse} vs PyTorch's {want}"
            );
        }
    }
}

/// Segmentation: the class map (argmax over classes) equals PyTorch's at every pixel whose
/// top-2 logits are not within 1e-4, and the PNG column decodes to that same map.
#[test]
fn segmentation_class_maps_and_png_match_pytorch() {
    let exp = common::general_json("seg_expected.json");
    let files = strings(&exp["files"]);
    let scorer = open("seg.pt");
    let out = scorer
        .predict(&batch(vec![("image", images("seg", &files))]), &opts(64))
        .unwrap();
    assert_no_errors(&out);
    let classes = out.column_by_name("classes").unwrap().as_list::<i32>();
    let pngs = out.column_by_name("mask").unwrap().as_binary::<i32>();
    let mut compared = 0;
    for (i, file) in files.iter().enumerate() {
        let want = &exp["classes"][i];
        let ambiguous: HashSet<(usize, usize)> = exp["ambiguous"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_u64().unwrap() as usize,
                )
            })
            .collect();
        let map = classes.value(i);
        let map = map.as_list::<i32>();
        assert_eq!(map.len(), 64, "{file}: rows");
        let png = image::load_from_memory(pngs.value(i)).unwrap();
        assert_eq!(png.color(), image::ColorType::L8, "{file}: 8-bit greyscale");
        let png = png.to_luma8();
        assert_eq!(png.dimensions(), (64, 64), "{file}: png size");
        for r in 0..64 {
            let row = map.value(r);
            let row = row.as_primitive::<Int32Type>();
            assert_eq!(row.len(), 64, "{file}: row {r}");
            for c in 0..64 {
                let got = row.value(c);
                assert_eq!(
                    i32::from(png.get_pixel(c as u32, r as u32)[0]),
                    got,
                    "{file}: png pixel ({r}, {c}) differs from the class map"
                );
                if !ambiguous.contains(&(r, c)) {
                    assert_eq!(
                        i64::from(got),
                        want[r][c].as_i64().unwrap(),
                        "{file}: class at ({r}, {c})"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(
        compared > 6 * 64 * 64 - 64,
        "too few pixels compared: {compared}"
    );
}

/// Detection: images of three sizes in one batch through a scripted SSDlite (torchspark's
/// nms): per image the same count and labels, scores within 1e-5, boxes within 1e-5 of the
/// image's size (pixel coordinates near 160 are float32 values 1.5e-5 apart, and a batch of
/// another size rounds the convolutions differently: up to 7e-5 pixels here).
#[test]
fn detection_of_three_sizes_in_one_batch_matches_torchvision() {
    let exp = common::general_json("det_expected.json");
    let files = strings(&exp["files"]);
    let sizes = rows_f64(&exp["sizes"]);
    let scorer = open("det.pt");
    let input = batch(vec![("image", images("det", &files))]);
    // All five images in one forward pass, then chunks of 2, 2 and 1.
    for batch_size in [64, 2] {
        let out = scorer.predict(&input, &opts(batch_size)).unwrap();
        assert_no_errors(&out);
        let dets = out.column_by_name("detections").unwrap().as_list::<i32>();
        for (i, file) in files.iter().enumerate() {
            let at = format!("{file} (batches of {batch_size})");
            let want = exp["detections"][i].as_array().unwrap();
            let row = dets.value(i);
            let row = row.as_struct();
            assert_eq!(row.len(), want.len(), "{at}: detection count");
            let boxes = row.column_by_name("box").unwrap();
            let labels = row
                .column_by_name("label")
                .unwrap()
                .as_primitive::<Int64Type>();
            let scores = float_values(row.column_by_name("score").unwrap());
            let (h, w) = (sizes[i][0], sizes[i][1]);
            for (k, e) in want.iter().enumerate() {
                assert_eq!(
                    labels.value(k),
                    e["label"].as_i64().unwrap(),
                    "{at}: label {k}"
                );
                let scale = [w, h, w, h];
                let relative =
                    |b: Vec<f64>| -> Vec<f64> { b.iter().zip(scale).map(|(v, s)| v / s).collect() };
                let d = max_diff(&relative(floats_at(boxes, k)), &relative(f64s(&e["box"])));
                assert!(d <= 1e-5, "{at}: box {k} differs by {d} of the image size");
                let d = (scores[k] - e["score"].as_f64().unwrap()).abs();
                assert!(d <= 1e-5, "{at}: score {k} differs by {d}");
            }
        }
    }
}

/// Two inputs (an image and a metadata vector), two outputs (softmax of the logits as a
/// vector, the embedding as an array) from one forward pass, TorchScript and AOTInductor.
#[test]
fn two_inputs_two_outputs_match_pytorch_torchscript_and_package() {
    let exp = common::general_json("two_io_expected.json");
    let files = strings(&exp["files"]);
    let meta = rows_f64(&exp["meta"]);
    let input = batch(vec![
        ("image", images("two_io", &files)),
        (
            "meta",
            list_f64(&meta.into_iter().map(Some).collect::<Vec<_>>()),
        ),
    ]);
    // The package's outputs (as torch._inductor runs it) and TorchScript's agree within 1e-5
    // (checked when the fixtures were made); each is compared with its own oracle.
    for (model, suffix) in [("two_io.pt", ""), ("two_io_aoti.pt2", "_aoti")] {
        let scorer = open(model);
        // One forward pass, then chunks of 3, 3 and 2.
        for batch_size in [64, 3] {
            let out = scorer.predict(&input, &opts(batch_size)).unwrap();
            assert_no_errors(&out);
            for name in ["probability", "embedding"] {
                let col = out.column_by_name(name).unwrap();
                for (i, file) in files.iter().enumerate() {
                    let want = f64s(&exp[format!("{name}{suffix}")][i]);
                    let d = max_diff(&floats_at(col, i), &want);
                    assert!(
                        d <= 1e-5,
                        "{model} {file} (batches of {batch_size}): {name} differs by {d}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bad models and bad rows

/// A model whose output is not what the spec declares fails the batch, naming the output and
/// both shapes.
#[test]
fn output_unlike_its_declaration_fails_naming_output_and_shapes() {
    let dir = general_fixtures();
    let tmp = std::env::temp_dir().join(format!("torchspark-general-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(dir.join("two_io.pt"), tmp.join("two_io.pt")).unwrap();
    let mut spec = common::general_json("two_io.json");
    spec["outputs"][1]["shape"] = serde_json::json!([7]);
    std::fs::write(tmp.join("two_io.json"), spec.to_string()).unwrap();
    let scorer = Scorer::open(&ModelConfig::new(tmp.join("two_io.pt"))).unwrap();
    let exp = common::general_json("two_io_expected.json");
    let files = strings(&exp["files"]);
    let meta = rows_f64(&exp["meta"]);
    let input = batch(vec![
        ("image", images("two_io", &files[..2])),
        (
            "meta",
            list_f64(&[Some(meta[0].clone()), Some(meta[1].clone())]),
        ),
    ]);
    let err = scorer.predict(&input, &opts(64)).unwrap_err().to_string();
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(err.contains("embedding"), "names the output: {err}");
    assert!(
        err.contains('7') && err.contains('8'),
        "names both shapes: {err}"
    );
}

/// A row of the wrong length and a null row are row errors naming the row, input, column and
/// shapes; every other row is scored right.
#[test]
fn bad_rows_are_row_errors_and_the_others_are_right() {
    let data = common::general_json("diabetes.json");
    let x = rows_f64(&data["X"]);
    let pred = f64s(&data["pred"]);
    let mut rows: Vec<Option<Vec<f64>>> = x[..8].iter().cloned().map(Some).collect();
    rows[3] = Some(x[3][..9].to_vec());
    rows[5] = None;
    let scorer = open("diabetes_mlp.pt");
    let out = scorer
        .predict(&batch(vec![("features", list_f64(&rows))]), &opts(4))
        .unwrap();
    let errs = errors(&out);
    let got = out
        .column_by_name("prediction")
        .unwrap()
        .as_primitive::<Float64Type>();
    for (i, e) in errs.iter().enumerate() {
        if i == 3 || i == 5 {
            let e = e
                .as_deref()
                .unwrap_or_else(|| panic!("row {i} has no error"));
            assert!(
                got.is_null(i),
                "row {i}: no prediction from data that was not there"
            );
            assert!(e.starts_with(&format!("row {i}: ")), "names the row: {e}");
            assert!(e.contains("`features`"), "names the input: {e}");
            assert!(e.contains("column features"), "names the column: {e}");
            if i == 3 {
                assert!(e.contains("10") && e.contains('9'), "both shapes: {e}");
            }
        } else {
            assert_eq!(e, &None, "row {i}");
            // Chunks of 4 rows, not the oracle's 442: float rounding may differ in the last
            // bit of a product, so relative to the value's size.
            let d = (got.value(i) - pred[i]).abs();
            assert!(
                d <= 1e-5 * pred[i].abs().max(1.0),
                "row {i}: differs by {d}"
            );
        }
    }
}
