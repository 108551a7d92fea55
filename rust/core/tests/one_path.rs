//! The safety net of issue 26: every version-1 fixture (ResNet-20 `.pt` fp32 and bf16, the
//! tuple net, the `.pt2` packages incl. bf16 and int8 where this host runs them, the identity
//! models) through the `score` and `featurize` calls and the general path's presets (`submit`
//! with op 2 and `"preset"`), at equal batch composition (per-task engine, the same batch
//! sizes), against an oracle that does not share the engine's code:
//! - a TorchScript model (`.pt`): tch's `CModule` on the file, fed the public
//!   [`Preprocessor`]'s rows chunk by chunk as the image path did (channels-last strides,
//!   bf16 input for a bf16 model, softmax of logits, argmax / top-k with ties to the lower
//!   index): compared **bitwise**;
//! - a package (`.pt2`): PyTorch's values for the same package (`expected.json`, as aoti.rs
//!   reads them), within aoti.rs's tolerances (1e-5 on lossless images; features scaled by
//!   their magnitude for ResNet-20): no independent AOTInductor runner exists in Rust.
//!
//! Bad rows everywhere: the same rows fail, each with ``row N: input `image` (column C): `` and
//! the reason the preprocessor gives (or "input is null").
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use common::*;
use tch::{CModule, Device, IValue, Kind, Tensor};
use torchspark_core::preprocess::{ImageInput, Preprocessor};
use torchspark_core::spec::{FeatureSource, OutputKind};
use torchspark_core::{
    BatchOptions, EngineMode, ModelConfig, ModelSpec, Op, Precision, Scorer, Spec,
};

/// A model and how it is opened.
struct Case {
    name: String,
    path: PathBuf,
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
        path,
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

/// One input row, owned, with the fixture image it shows (PyTorch's values are keyed by it).
#[derive(Clone)]
enum Row {
    Null,
    Bytes(Vec<u8>, Option<String>),
    Floats(Vec<f32>, Option<String>),
    /// Spark's image struct: height, width, BGR bytes.
    Spark(u32, u32, Vec<u8>, String),
}

impl Row {
    fn input(&self) -> Option<ImageInput<'_>> {
        match self {
            Row::Null => None,
            Row::Bytes(b, _) => Some(ImageInput::Encoded(b)),
            Row::Floats(v, _) => Some(ImageInput::Floats(v)),
            Row::Spark(h, w, data, _) => Some(ImageInput::SparkImage {
                height: *h as i32,
                width: *w as i32,
                n_channels: 3,
                data,
            }),
        }
    }

    fn file(&self) -> Option<&str> {
        match self {
            Row::Null => None,
            Row::Bytes(_, f) | Row::Floats(_, f) => f.as_deref(),
            Row::Spark(.., f) => Some(f),
        }
    }
}

/// A `w` x `h` RGB PNG (for the row over the pixel limit).
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn fixture_row(file: &str) -> Row {
    Row::Bytes(image_bytes(file), Some(file.to_string()))
}

/// Good rows of several formats and every kind of bad row: empty, truncated, null, not an
/// image, over the pixel limit (`max_pixels` 1024 lets the 32x32 fixtures through).
fn encoded_rows() -> Vec<Row> {
    let exp = expected();
    let first = image_bytes(&exp[0].file);
    vec![
        fixture_row(&exp[0].file),
        Row::Bytes(Vec::new(), None),
        Row::Bytes(first[..first.len() / 2].to_vec(), None),
        Row::Null,
        Row::Bytes(b"not an image".to_vec(), None),
        Row::Bytes(png(40, 40), None),
        fixture_row(&exp[1].file),
        fixture_row("gray_1.png"),
        fixture_row("rgba_0.png"),
        fixture_row(&exp[2].file),
        fixture_row(&exp[3].file),
    ]
}

fn encoded_batch(rows: &[Row]) -> RecordBatch {
    let bytes: Vec<Option<&[u8]>> = rows
        .iter()
        .map(|r| match r {
            Row::Bytes(b, _) => Some(b.as_slice()),
            _ => None,
        })
        .collect();
    binary_batch(&bytes)
}

/// Two fixtures as this model's preprocessing makes them (C x H x W floats), a short row and a
/// null.
fn float_rows(pre: &Preprocessor) -> Vec<Row> {
    let exp = expected();
    let floats = |file: &str| {
        let mut v = vec![0f32; pre.row_len()];
        pre.fill(ImageInput::Encoded(&image_bytes(file)), &mut v)
            .unwrap();
        Row::Floats(v, Some(file.to_string()))
    };
    vec![
        floats(&exp[0].file),
        Row::Floats(vec![0.5; 10], None),
        Row::Null,
        floats(&exp[1].file),
    ]
}

fn float_batch_of(rows: &[Row]) -> RecordBatch {
    let floats: Vec<Option<&[f32]>> = rows
        .iter()
        .map(|r| match r {
            Row::Floats(v, _) => Some(v.as_slice()),
            _ => None,
        })
        .collect();
    float_batch(&floats)
}

/// Spark's image struct (BGR) of two fixtures.
fn struct_rows() -> Vec<Row> {
    expected()[..2]
        .iter()
        .map(|e| {
            let img = image::load_from_memory(&image_bytes(&e.file))
                .unwrap()
                .to_rgb8();
            let (w, h) = img.dimensions();
            let bgr = img.pixels().flat_map(|p| [p[2], p[1], p[0]]).collect();
            Row::Spark(h, w, bgr, e.file.clone())
        })
        .collect()
}

/// The struct rows beside another column (`input_column` picks them).
fn struct_batch(rows: &[Row]) -> RecordBatch {
    let rows: Vec<(String, u32, u32, Vec<u8>)> = rows
        .iter()
        .map(|r| match r {
            Row::Spark(h, w, data, file) => (file.clone(), *h, *w, data.clone()),
            _ => unreachable!("struct rows only"),
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Probabilities,
    Features,
}

/// What the image path computed, rebuilt from public parts.
struct Oracle {
    name: String,
    spec: ModelSpec,
    pre: Preprocessor,
    /// The TorchScript module; `None` for a package (PyTorch's values instead).
    module: Option<CModule>,
    bf16: bool,
    channels_last: bool,
    threads: i32,
}

/// One row's values, or the reason it has none.
type Want = std::result::Result<Vec<f32>, String>;

impl Oracle {
    fn new(c: &Case) -> Oracle {
        let text = std::fs::read_to_string(ModelSpec::default_path(&c.path)).unwrap();
        let Spec::Image(spec) = Spec::from_json(&text).unwrap() else {
            panic!("{}: a version-1 spec", c.name)
        };
        let bf16 = c.config.precision == Precision::Bf16;
        let module = (c.path.extension().unwrap() == "pt").then(|| {
            let mut m = CModule::load_on_device(&c.path, Device::Cpu).unwrap();
            m.set_eval();
            if bf16 {
                m.to(Device::Cpu, Kind::BFloat16, false);
            }
            m
        });
        Oracle {
            name: c.path.file_stem().unwrap().to_string_lossy().into_owned(),
            pre: Preprocessor::new(&spec),
            spec,
            module,
            bf16,
            channels_last: c.config.channels_last,
            threads: c.config.num_threads.unwrap() as i32,
        }
    }

    /// Every row as the image path ran it: rows in chunks of `batch_size`, each chunk's good
    /// rows in one forward pass; a package's rows get PyTorch's values for their image.
    fn run(&self, rows: &[Row], o: &BatchOptions, target: Target) -> Vec<Want> {
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(o.batch_size) {
            let len = self.pre.row_len();
            let mut pixels = Vec::new();
            let status: Vec<std::result::Result<(), String>> = chunk
                .iter()
                .map(|r| {
                    let input = r.input().ok_or_else(|| "input is null".to_string())?;
                    let mut v = vec![0f32; len];
                    self.pre.fill_limited(input, &mut v, o.max_pixels)?;
                    pixels.extend_from_slice(&v);
                    Ok(())
                })
                .collect();
            let good = pixels.len() / len;
            let mut values = match &self.module {
                Some(m) if good > 0 => self.forward(m, pixels, good, target).into_iter(),
                _ => Vec::new().into_iter(),
            };
            for (row, s) in chunk.iter().zip(status) {
                out.push(s.map(|()| match &self.module {
                    Some(_) => values.next().unwrap(),
                    None => self.pytorch(row.file().unwrap(), target),
                }));
            }
        }
        out
    }

    /// `Model::run` as it was: NCHW view, NHWC strides, bf16, output 0 (or the featurize
    /// source), softmax of logits in float32.
    fn forward(&self, m: &CModule, x: Vec<f32>, n: usize, target: Target) -> Vec<Vec<f32>> {
        tch::set_num_threads(self.threads);
        let _no_grad = tch::no_grad_guard();
        let i = &self.spec.input;
        let mut t = Tensor::from_slice(&x).view([
            n as i64,
            i.channels as i64,
            i.height as i64,
            i.width as i64,
        ]);
        if self.channels_last {
            t = t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        }
        if self.bf16 {
            t = t.to_kind(Kind::BFloat16);
        }
        let args = [IValue::Tensor(t)];
        let source = match target {
            Target::Probabilities => FeatureSource::OutputIndex(0),
            Target::Features => self.spec.featurize.as_ref().unwrap().source().unwrap(),
        };
        let (out, index) = match source {
            FeatureSource::Method(name) => (m.method_is(&name, &args).unwrap(), 0),
            FeatureSource::OutputIndex(k) => (m.forward_is(&args).unwrap(), k),
        };
        let out = match out {
            IValue::Tensor(t) if index == 0 => t,
            IValue::Tuple(items) => match items.into_iter().nth(index).unwrap() {
                IValue::Tensor(t) => t,
                _ => panic!("{}: output {index} is not a tensor", self.name),
            },
            _ => panic!("{}: output {index} is not a tensor", self.name),
        };
        let out = match (target, self.spec.output) {
            (Target::Probabilities, OutputKind::Logits) => out.softmax(-1, Kind::Float),
            _ => out.to_kind(Kind::Float),
        };
        let width = out.numel() / n;
        let flat = Vec::<f32>::try_from(&out.contiguous().view([-1])).unwrap();
        flat.chunks(width).map(<[f32]>::to_vec).collect()
    }

    /// PyTorch's values for `file` through this package.
    fn pytorch(&self, file: &str, target: Target) -> Vec<f32> {
        let e = expected_for(&self.name)
            .into_iter()
            .find(|e| e.file == file)
            .unwrap();
        match target {
            Target::Probabilities => e.probability,
            Target::Features => e.features,
        }
    }

    /// Bitwise for a TorchScript model; aoti.rs's tolerance for a package.
    fn assert_close(&self, what: &str, file: Option<&str>, want: &[f32], got: &[f32], t: Target) {
        if self.module.is_some() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(want), bits(got), "{what}");
            return;
        }
        let file = file.unwrap();
        let tol = if file.ends_with(".jpg") { 2e-2 } else { 1e-5 };
        let scale = if t == Target::Features && self.name.starts_with("resnet20") {
            want.iter().fold(1f32, |m, v| m.max(v.abs()))
        } else {
            1.0
        };
        let d = max_abs_diff(want, got);
        assert!(
            d <= tol * scale,
            "{what}: {file} differs from PyTorch by {d}"
        );
    }
}

/// Indices of the `k` largest values, best first; ties keep the lower index (like argmax).
fn ranking(p: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

fn f32_row(l: &arrow_array::ListArray, i: usize) -> Option<Vec<f32>> {
    (!l.is_null(i)).then(|| l.value(i).as_primitive::<Float32Type>().values().to_vec())
}

/// A list<float64> row, each value a float32 exactly.
fn f64_row_as_f32(l: &arrow_array::ListArray, i: usize) -> Option<Vec<f32>> {
    (!l.is_null(i)).then(|| {
        let v = l.value(i);
        v.as_primitive::<Float64Type>()
            .values()
            .iter()
            .map(|&x| {
                assert_eq!(x as f32 as f64, x, "a float32 value in the float64 vector");
                x as f32
            })
            .collect()
    })
}

/// Row `i`'s error: the oracle's reason behind ``row N: input `image` (column C): ``, or none.
fn check_error(what: &str, out: &RecordBatch, i: usize, want: &Want, o: &BatchOptions, col: &str) {
    let got = str_row(out, "error", i);
    match want {
        Ok(_) => assert_eq!(got, None, "{what} row {i}"),
        Err(reason) => {
            let row = o.row_offset + i as u64;
            let full = format!("row {row}: input `image` (column {col}): {reason}");
            assert_eq!(got.as_deref(), Some(full.as_str()), "{what} row {i}");
        }
    }
}

fn check_score(
    oracle: &Oracle,
    what: &str,
    rows: &[Row],
    out: &RecordBatch,
    o: &BatchOptions,
    col: &str,
) {
    let names: Vec<String> = out
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
    let want = oracle.run(rows, o, Target::Probabilities);
    let prediction = out.column_by_name("prediction").unwrap();
    assert_eq!(prediction.data_type(), &arrow_schema::DataType::Float64);
    let prediction = prediction.as_primitive::<Float64Type>();
    let probability = out.column_by_name("probability").unwrap().as_list::<i32>();
    let top_k = out.column_by_name("top_k").unwrap().as_list::<i32>();
    let labels = oracle.spec.labels.as_deref();
    let classes = want.iter().flatten().map(Vec::len).max().unwrap_or(0);
    for (i, w) in want.iter().enumerate() {
        let what = format!("{what} row {i}");
        check_error(&what, out, i, w, o, col);
        let Ok(w) = w else {
            assert!(prediction.is_null(i) && probability.is_null(i) && top_k.is_null(i));
            assert_eq!(str_row(out, "predicted_label", i), None, "{what}");
            continue;
        };
        let got = f32_row(probability, i).unwrap();
        oracle.assert_close(&what, rows[i].file(), w, &got, Target::Probabilities);
        // The class writers: from the exact probabilities (the oracle's for a TorchScript
        // model, the row's own for a package, whose values are PyTorch's up to rounding).
        let p = if oracle.module.is_some() { w } else { &got };
        let order = ranking(p, o.top_k.min(classes).max(1));
        assert_eq!(prediction.value(i), order[0] as f64, "{what}: prediction");
        assert_eq!(
            str_row(out, "predicted_label", i).as_deref(),
            labels.and_then(|l| l.get(order[0])).map(String::as_str),
            "{what}: predicted_label"
        );
        let entries = top_k.value(i);
        let s = entries.as_struct();
        let idx = s.column(0).as_primitive::<Int32Type>();
        let label = s.column(1).as_string::<i32>();
        let prob = s.column(2).as_primitive::<Float32Type>();
        assert_eq!(s.len(), o.top_k.min(classes), "{what}: top_k");
        for (j, &c) in order.iter().take(s.len()).enumerate() {
            assert_eq!(idx.value(j), c as i32, "{what}: top_k {j}");
            assert_eq!(
                (!label.is_null(j)).then(|| label.value(j)),
                labels.and_then(|l| l.get(c)).map(String::as_str),
                "{what}: top_k {j}"
            );
            assert_eq!(prob.value(j).to_bits(), p[c].to_bits(), "{what}: top_k {j}");
        }
    }
}

fn compare(
    c: &Case,
    oracle: &Oracle,
    scorer: &Scorer,
    what: &str,
    rows: &[Row],
    batch: &RecordBatch,
    o: &BatchOptions,
) {
    let column = match &o.input_column {
        Some(c) => c.clone(),
        None => batch.schema().field(0).name().clone(),
    };
    let what = format!("{}: {what}", c.name);
    // The `score` call (op 0) and the `score` preset are one path.
    let scored = scorer.score(batch, o).unwrap();
    check_score(oracle, &format!("{what}, score"), rows, &scored, o, &column);
    let new = general(scorer, batch, o, "score");
    check_score(
        oracle,
        &format!("{what}, preset score"),
        rows,
        &new,
        o,
        &column,
    );
    // `predict` of a version-1 spec: its class vector as a float64 vector (softmax applied to
    // logits), which is the score's probability exactly.
    let output = general(scorer, batch, o, "predict");
    let want = oracle.run(rows, o, Target::Probabilities);
    let got = output.column_by_name("output").unwrap().as_list::<i32>();
    for (i, w) in want.iter().enumerate() {
        let what = format!("{what}, predict row {i}");
        check_error(&what, &output, i, w, o, &column);
        match w {
            Ok(w) => {
                let g = f64_row_as_f32(got, i).unwrap();
                oracle.assert_close(&what, rows[i].file(), w, &g, Target::Probabilities);
            }
            Err(_) => assert!(got.is_null(i), "{what}"),
        }
    }
    if oracle.spec.featurize.is_some() {
        let want = oracle.run(rows, o, Target::Features);
        for (call, out) in [
            ("featurize", scorer.featurize(batch, o).unwrap()),
            ("preset featurize", general(scorer, batch, o, "featurize")),
        ] {
            let features = out.column_by_name("features").unwrap().as_list::<i32>();
            for (i, w) in want.iter().enumerate() {
                let what = format!("{what}, {call} row {i}");
                check_error(&what, &out, i, w, o, &column);
                match w {
                    Ok(w) => {
                        let g = f32_row(features, i).unwrap();
                        oracle.assert_close(&what, rows[i].file(), w, &g, Target::Features);
                    }
                    Err(_) => assert!(features.is_null(i), "{what}"),
                }
            }
        }
    }
}

#[test]
fn every_version_one_fixture_gives_the_oracles_values_on_the_general_path() {
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
        let oracle = Oracle::new(&c);
        let encoded = encoded_rows();
        for batch_size in [3, 64] {
            compare(
                &c,
                &oracle,
                &scorer,
                &format!("encoded, batch {batch_size}"),
                &encoded,
                &encoded_batch(&encoded),
                &opts(batch_size),
            );
        }
        let input = &oracle.spec.input;
        if (input.channels, input.height, input.width) == (3, 32, 32) {
            let floats = float_rows(&oracle.pre);
            compare(
                &c,
                &oracle,
                &scorer,
                "floats",
                &floats,
                &float_batch_of(&floats),
                &opts(2),
            );
            let o = BatchOptions {
                input_column: Some("picture".into()),
                ..opts(2)
            };
            let structs = struct_rows();
            compare(
                &c,
                &oracle,
                &scorer,
                "image structs",
                &structs,
                &struct_batch(&structs),
                &o,
            );
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
    let short = vec![0.5f32; 10];
    let floats = float_batch(&[Some(&exp[0].input), Some(&short), None, Some(&exp[1].input)]);
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
