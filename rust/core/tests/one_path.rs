//! The safety net of issue 26: every version-1 fixture (ResNet-20 `.pt` fp32 and bf16, the
//! tuple net, the `.pt2` packages incl. bf16 and int8 where this host runs them, the identity
//! models) through `score` / `featurize` and through the general path's presets (`submit` with
//! op 2 and `"preset"`), at equal batch composition (per-task engine, the same batch sizes),
//! compared **bitwise**: the same rows fail, with today's reason inside the new message, and
//! every value of every other row has the same bits.
#![allow(clippy::unwrap_used)] // a failed unwrap in a helper is a failed test

mod common;

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use common::*;
use torchspark_core::{BatchOptions, EngineMode, ModelConfig, Op, Precision, Scorer};

/// A model and how it is opened.
struct Case {
    name: String,
    config: ModelConfig,
    /// A package this host's CPU may not run (its refusal is then the result: skipped).
    may_not_run: bool,
}

fn case(path: PathBuf, edit: impl FnOnce(&mut ModelConfig)) -> Case {
    let mut config = ModelConfig::new(&path);
    // Forward passes on the caller's thread: the batch composition is the call's own.
    config.engine.mode = EngineMode::PerTask;
    config.num_threads = Some(2);
    edit(&mut config);
    Case {
        name: format!(
            "{} ({:?}, channels_last {})",
            path.file_name().unwrap().to_string_lossy(),
            config.precision,
            config.channels_last
        ),
        may_not_run: path.extension().is_some_and(|e| e == "pt2"),
        config,
    }
}

fn cases() -> Vec<Case> {
    let f = fixtures();
    let mut all = vec![
        case(f.join("resnet20.pt"), |_| {}),
        case(f.join("resnet20.pt"), |c| c.channels_last = false),
        case(f.join("resnet20_params.pt"), |c| {
            c.precision = Precision::Bf16
        }),
        case(f.join("tuple_net.pt"), |_| {}),
        case(f.join("resnet20_aoti.pt2"), |_| {}),
        case(f.join("tuple_net_aoti.pt2"), |_| {}),
        case(f.join("tuple_net_bf16.pt2"), |_| {}),
        case(f.join("tuple_net_int8.pt2"), |_| {}),
    ];
    let ident = ident_fixtures();
    for name in [
        "ident_c3_16",
        "ident_c1_16",
        "ident_c4_16",
        "ident_c3_16_small_limit",
    ] {
        all.push(case(ident.join(format!("{name}.pt")), |_| {}));
    }
    all
}

/// A `w` x `h` RGB PNG (for the row over the pixel limit).
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Good rows of several formats and every kind of bad row: empty, truncated, null, not an
/// image, over the pixel limit (`max_pixels` 1024 lets the 32x32 fixtures through).
fn encoded_batch() -> RecordBatch {
    let exp = expected();
    let good: Vec<Vec<u8>> = exp.iter().map(|e| image_bytes(&e.file)).collect();
    let truncated = good[0][..good[0].len() / 2].to_vec();
    let big = png(40, 40);
    let gray = image_bytes("gray_1.png");
    let rgba = image_bytes("rgba_0.png");
    let rows: Vec<Option<&[u8]>> = vec![
        Some(&good[0]),
        Some(&[]),
        Some(&truncated),
        None,
        Some(b"not an image"),
        Some(&big),
        Some(&good[1]),
        Some(&gray),
        Some(&rgba),
        Some(&good[2]),
        Some(&good[3]),
    ];
    binary_batch(&rows)
}

/// Preprocessed rows (the fixtures' PyTorch inputs), a short row and a null.
fn float_rows() -> RecordBatch {
    let exp = expected();
    let short = vec![0.5f32; 10];
    float_batch(&[Some(&exp[0].input), Some(&short), None, Some(&exp[1].input)])
}

/// Spark's image struct (BGR) of two fixtures, beside another column (`input_column` picks it).
fn struct_rows() -> RecordBatch {
    let exp = expected();
    let rows: Vec<(String, u32, u32, Vec<u8>)> = exp[..2]
        .iter()
        .map(|e| {
            let img = image::load_from_memory(&image_bytes(&e.file))
                .unwrap()
                .to_rgb8();
            let (w, h) = img.dimensions();
            let bgr = img.pixels().flat_map(|p| [p[2], p[1], p[0]]).collect();
            (e.file.clone(), h, w, bgr)
        })
        .collect();
    let images = spark_image_batch(&rows);
    let other: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![1, 2]));
    RecordBatch::try_from_iter([("id", other), ("picture", images.column(0).clone())]).unwrap()
}

fn opts(batch_size: usize) -> BatchOptions {
    BatchOptions {
        batch_size,
        top_k: 3,
        row_offset: 7,
        max_pixels: 1024,
        ..BatchOptions::default()
    }
}

/// The general path: `submit` with op 2 (predict) and `preset`.
fn general(scorer: &Scorer, batch: &RecordBatch, o: &BatchOptions, preset: &str) -> RecordBatch {
    let o = BatchOptions {
        preset: Some(preset.to_string()),
        ..o.clone()
    };
    let mut p = scorer.submit(Op::Predict, batch, &o, 42).unwrap();
    p.wait(Duration::from_secs(120)).unwrap().unwrap()
}

type Bits = Vec<Option<Vec<u32>>>;

/// A list<float32> column's rows as bits (null rows `None`).
fn f32_lists(b: &RecordBatch, col: &str) -> Bits {
    let l = b.column_by_name(col).unwrap().as_list::<i32>();
    (0..l.len())
        .map(|i| {
            (!l.is_null(i)).then(|| {
                let v = l.value(i);
                v.as_primitive::<Float32Type>()
                    .values()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
        })
        .collect()
}

/// A list<float64> column's rows, each value rounded to float32, as bits.
fn f64_lists_as_f32(b: &RecordBatch, col: &str) -> Bits {
    let l = b.column_by_name(col).unwrap().as_list::<i32>();
    (0..l.len())
        .map(|i| {
            (!l.is_null(i)).then(|| {
                let v = l.value(i);
                v.as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .map(|&x| {
                        // The float64 vector holds float32 values exactly.
                        assert_eq!(x as f32 as f64, x);
                        (x as f32).to_bits()
                    })
                    .collect()
            })
        })
        .collect()
}

type TopK = Vec<Option<Vec<(i32, Option<String>, u32)>>>;

fn top_k(b: &RecordBatch, col: &str) -> TopK {
    let l = b.column_by_name(col).unwrap().as_list::<i32>();
    (0..l.len())
        .map(|i| {
            (!l.is_null(i)).then(|| {
                let v = l.value(i);
                let s = v.as_struct();
                let idx = s.column(0).as_primitive::<Int32Type>();
                let label = s.column(1).as_string::<i32>();
                let p = s.column(2).as_primitive::<Float32Type>();
                (0..s.len())
                    .map(|j| {
                        (
                            idx.value(j),
                            (!label.is_null(j)).then(|| label.value(j).to_string()),
                            p.value(j).to_bits(),
                        )
                    })
                    .collect()
            })
        })
        .collect()
}

/// The predictions as numbers: the old int32 column or the new float64 one.
fn predictions(b: &RecordBatch) -> Vec<Option<f64>> {
    let c = b.column_by_name("prediction").unwrap();
    (0..c.len())
        .map(|i| {
            (!c.is_null(i)).then(|| match c.data_type() {
                arrow_schema::DataType::Int32 => f64::from(c.as_primitive::<Int32Type>().value(i)),
                _ => c.as_primitive::<Float64Type>().value(i),
            })
        })
        .collect()
}

fn strings(b: &RecordBatch, col: &str) -> Vec<Option<String>> {
    (0..b.num_rows()).map(|i| str_row(b, col, i)).collect()
}

/// The same rows fail, and each new message is ``row N: input `image` (column C): `` and the
/// old message's reason.
fn same_errors(what: &str, old: &RecordBatch, new: &RecordBatch, column: &str) {
    let (old, new) = (strings(old, "error"), strings(new, "error"));
    assert_eq!(old.len(), new.len(), "{what}");
    for (i, (o, n)) in old.iter().zip(&new).enumerate() {
        match (o, n) {
            (None, None) => {}
            (Some(o), Some(n)) => {
                let (row, reason) = o.split_once(": ").unwrap();
                let prefix = format!("{row}: input `image` (column {column}): ");
                let same = *n == format!("{prefix}{reason}") || n == o;
                assert!(same, "{what} row {i}: old {o:?}, new {n:?}");
            }
            _ => panic!("{what} row {i}: old {o:?}, new {n:?}"),
        }
    }
}

fn check_score(what: &str, old: &RecordBatch, new: &RecordBatch, column: &str) {
    let names: Vec<String> = new
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "prediction",
            "probability",
            "predicted_label",
            "top_k",
            "error"
        ],
        "{what}"
    );
    same_errors(what, old, new, column);
    assert_eq!(predictions(old), predictions(new), "{what}: prediction");
    assert_eq!(
        f32_lists(old, "probability"),
        f32_lists(new, "probability"),
        "{what}: probability"
    );
    assert_eq!(
        strings(old, "predicted_label"),
        strings(new, "predicted_label"),
        "{what}: predicted_label"
    );
    assert_eq!(top_k(old, "top_k"), top_k(new, "top_k"), "{what}: top_k");
}

fn compare(c: &Case, scorer: &Scorer, what: &str, batch: &RecordBatch, o: &BatchOptions) {
    let column = match &o.input_column {
        Some(c) => c.clone(),
        None => batch.schema().field(0).name().clone(),
    };
    let what = format!("{}: {what}", c.name);
    let old = scorer.score(batch, o).unwrap();
    let new = general(scorer, batch, o, "score");
    check_score(&what, &old, &new, &column);
    // `predict` of a version-1 spec: its class vector as a float64 vector (softmax applied to
    // logits), which is the score's probability exactly.
    let output = general(scorer, batch, o, "predict");
    same_errors(&what, &old, &output, &column);
    assert_eq!(
        f32_lists(&old, "probability"),
        f64_lists_as_f32(&output, "output"),
        "{what}: output"
    );
    if scorer.model().image_spec().unwrap().featurize.is_some() {
        let old = scorer.featurize(batch, o).unwrap();
        let new = general(scorer, batch, o, "featurize");
        same_errors(&what, &old, &new, &column);
        assert_eq!(
            f32_lists(&old, "features"),
            f32_lists(&new, "features"),
            "{what}: features"
        );
    }
}

#[test]
fn every_version_one_fixture_gives_the_same_bits_on_the_general_path() {
    let mut ran = 0;
    for c in cases() {
        let scorer = match Scorer::open(&c.config) {
            Ok(s) => s,
            Err(e) if c.may_not_run && e.to_string().contains("CPU") => {
                eprintln!("{}: not on this host: {e}", c.name);
                continue;
            }
            Err(e) => panic!("{}: {e}", c.name),
        };
        for batch_size in [3, 64] {
            compare(
                &c,
                &scorer,
                &format!("encoded, batch {batch_size}"),
                &encoded_batch(),
                &opts(batch_size),
            );
        }
        let input = &scorer.model().image_spec().unwrap().input;
        if (input.channels, input.height, input.width) == (3, 32, 32) {
            compare(&c, &scorer, "floats", &float_rows(), &opts(2));
            let o = BatchOptions {
                input_column: Some("picture".into()),
                ..opts(2)
            };
            compare(&c, &scorer, "image structs", &struct_rows(), &o);
        }
        ran += 1;
    }
    // Every TorchScript case and the fp32 packages run on any x86-64-v3 host.
    assert!(ran >= 9, "only {ran} fixtures ran");
}

/// Issue 26, table row 1: `predict` on a version-1 spec whose `forward` returns one tensor
/// (resnet20.pt) gives PyTorch's probabilities (softmax of its logits) as `output`.
#[test]
fn predict_on_a_version_one_spec_gives_pytorchs_values() {
    let exp = expected();
    let bytes: Vec<Vec<u8>> = exp.iter().map(|e| image_bytes(&e.file)).collect();
    let rows: Vec<Option<&[u8]>> = bytes.iter().map(|b| Some(b.as_slice())).collect();
    let scorer = Scorer::open(&ModelConfig::new(fixtures().join("resnet20.pt"))).unwrap();
    let out = scorer
        .predict(&binary_batch(&rows), &BatchOptions::default())
        .unwrap();
    assert_eq!(out.schema().field(0).name(), "output");
    let output = out.column_by_name("output").unwrap().as_list::<i32>();
    for (i, e) in exp.iter().enumerate() {
        assert_eq!(str_row(&out, "error", i), None);
        let got: Vec<f32> = output
            .value(i)
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .map(|&x| x as f32)
            .collect();
        let tol = if e.file.ends_with(".jpg") { 2e-2 } else { 1e-5 };
        assert!(max_abs_diff(&got, &e.probability) <= tol, "{}", e.file);
    }
}

/// Issue 26, table row 2: an image input fed an `array<float>` column of preprocessed C x H x W
/// values (named through `columns`, beside another column) gives PyTorch's values.
#[test]
fn an_image_input_reads_preprocessed_floats() {
    let exp = expected();
    let floats = float_rows();
    let other: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![0, 1, 2, 3]));
    let batch =
        RecordBatch::try_from_iter([("id", other), ("pixels", floats.column(0).clone())]).unwrap();
    let scorer = Scorer::open(&ModelConfig::new(fixtures().join("resnet20.pt"))).unwrap();
    let o = BatchOptions {
        columns: [("image".to_string(), vec!["pixels".to_string()])].into(),
        preset: Some("score".into()),
        ..BatchOptions::default()
    };
    let out = scorer.predict(&batch, &o).unwrap();
    for (row, e) in [(0, &exp[0]), (3, &exp[1])] {
        assert_eq!(str_row(&out, "error", row), None);
        let got = list_row(&out, "probability", row).unwrap();
        assert!(max_abs_diff(&got, &e.probability) <= 1e-5, "row {row}");
    }
    let short = str_row(&out, "error", 1).unwrap();
    assert!(
        short.starts_with("row 1: input `image` (column pixels): expected 3072 floats"),
        "{short}"
    );
    // Two columns and none named: version 1's rule asks for one.
    let e = scorer
        .predict(&batch, &BatchOptions::default())
        .unwrap_err();
    assert!(
        e.to_string().contains("expected one image column, got 2"),
        "{e}"
    );
}
