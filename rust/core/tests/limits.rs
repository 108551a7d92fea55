//! The memory limits (docs/limits.md, issue 25): every size a row chooses becomes a row error
//! or a split of the call into more forward passes, never an abort; the good rows beside the
//! bad ones still equal PyTorch's outputs.
//!
//! Memory is measured in a child process of this test binary that runs one ignored `child_*`
//! test alone: its peak RSS (`VmHWM`, reset after the warm-up) and its exit status (an abort on
//! an allocation is a signal) are checked by the parent test of the same name without `child_`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a helper is a failed test

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BinaryBuilder, Float32Builder, Float64Builder, Int8Builder, Int32Builder, ListBuilder,
    StringBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields};
use common::*;
use serde_json::Value;
use torchspark_core::input::text::TextTokenizer;
use torchspark_core::spec::general::InputDecl;
use torchspark_core::{BatchOptions, EngineConfig, ModelConfig, Scorer};

// ---- the child-process harness ----------------------------------------------------------------

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` 5); the RSS now, in kB.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    status_kb("VmRSS:")
}

/// Prints the peak RSS growth since [`reset_peak`] for the parent.
fn report_peak(before_kb: u64) {
    let grew = status_kb("VmHWM:").saturating_sub(before_kb) / 1024;
    println!("PEAK_GROWTH_MB={grew}");
}

/// Runs the ignored test `name` alone in a child process: it must exit 0 (no abort, no failed
/// assertion); returns the peak RSS growth (MiB) it printed.
fn peak_growth_in_child(name: &str) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} in a child process ended with {:?} (a signal is an abort)\n{stdout}\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .find_map(|l| l.split("PEAK_GROWTH_MB=").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no PEAK_GROWTH_MB in\n{stdout}"))
}

// ---- batches ------------------------------------------------------------------------------------

/// Spark's VectorUDT struct with the given rows: (type 0 sparse / 1 dense, size, indices, values).
fn vectors(rows: &[(i8, i32, Vec<i32>, Vec<f64>)]) -> ArrayRef {
    let (mut t, mut s) = (Int8Builder::new(), Int32Builder::new());
    let mut ix = ListBuilder::new(Int32Builder::new());
    let mut vs = ListBuilder::new(Float64Builder::new());
    for (kind, size, indices, values) in rows {
        t.append_value(*kind);
        s.append_value(*size);
        ix.values().append_slice(indices);
        ix.append(true);
        vs.values().append_slice(values);
        vs.append(true);
    }
    let (ix, vs) = (ix.finish(), vs.finish());
    let fields = Fields::from(vec![
        Field::new("type", DataType::Int8, false),
        Field::new("size", DataType::Int32, true),
        Field::new("indices", ix.data_type().clone(), true),
        Field::new("values", vs.data_type().clone(), true),
    ]);
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(t.finish()),
        Arc::new(s.finish()),
        Arc::new(ix),
        Arc::new(vs),
    ];
    Arc::new(StructArray::new(fields, arrays, None))
}

fn flat_rows(rows: &[Vec<f32>]) -> ArrayRef {
    let mut b = ListBuilder::new(Float32Builder::new());
    for r in rows {
        b.values().append_slice(r);
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Rows of shape [h, w] as lists of lists.
fn nested_rows(rows: &[(usize, usize, f32)]) -> ArrayRef {
    let mut b = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
    for &(h, w, v) in rows {
        for _ in 0..h {
            b.values().values().append_slice(&vec![v; w]);
            b.values().append(true);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

fn binary(rows: &[&[u8]]) -> ArrayRef {
    let mut b = BinaryBuilder::new();
    for r in rows {
        b.append_value(r);
    }
    Arc::new(b.finish())
}

fn strings(rows: &[&str]) -> ArrayRef {
    let mut b = StringBuilder::new();
    for r in rows {
        b.append_value(r);
    }
    Arc::new(b.finish())
}

fn scorer(model: &Path) -> Scorer {
    Scorer::open(&ModelConfig::new(model)).unwrap()
}

/// A scorer with an engine of its own (a distinct config), so that its counters are this
/// test's alone.
fn private_scorer(model: &Path, tag: u64) -> Scorer {
    let mut config = ModelConfig::new(model);
    config.engine = EngineConfig {
        max_wait_us: 1_000 + tag,
        ..EngineConfig::default()
    };
    Scorer::open(&config).unwrap()
}

fn errors(out: &RecordBatch) -> Vec<Option<String>> {
    let e = out.column_by_name("error").unwrap().as_string::<i32>();
    (0..e.len())
        .map(|i| (!e.is_null(i)).then(|| e.value(i).to_string()))
        .collect()
}

fn totals(out: &RecordBatch) -> Vec<Option<f64>> {
    let t = out
        .column_by_name("total")
        .unwrap()
        .as_primitive::<Float64Type>();
    (0..t.len())
        .map(|i| (!t.is_null(i)).then(|| t.value(i)))
        .collect()
}

fn opts() -> BatchOptions {
    BatchOptions::default()
}

// ---- per-row elements: Spark ML vectors ----------------------------------------------------------

/// 16 sparse vectors of one value each, declared size 2^27 (the audit's abort), among good
/// ones: row errors naming the row, input, column, size and limit; the good rows' sums.
#[test]
#[ignore = "run alone in a child process by sparse_vectors_past_the_row_limit_are_row_errors"]
fn child_sparse_vectors_past_the_row_limit() {
    let s = scorer(&limit_fixtures().join("sum_pad.pt"));
    let good = (0i8, 10, vec![1, 3], vec![2.0, 4.0]);
    let dense = (1i8, 0, vec![], vec![1.0, 2.5, 3.0]);
    s.predict(
        &batch_of("x", vectors(std::slice::from_ref(&good))),
        &opts(),
    )
    .unwrap();
    let before = reset_peak();
    let mut rows: Vec<(i8, i32, Vec<i32>, Vec<f64>)> =
        (0..16).map(|i| (0, 1 << 27, vec![i], vec![1.0])).collect();
    rows.insert(3, good);
    rows.push(dense);
    let out = s.predict(&batch_of("x", vectors(&rows)), &opts()).unwrap();
    report_peak(before);
    let (errs, sums) = (errors(&out), totals(&out));
    for (i, e) in errs.iter().enumerate() {
        if i == 3 || i == 17 {
            assert!(e.is_none(), "row {i}: {e:?}");
        } else {
            assert_eq!(
                e.as_deref(),
                Some(
                    format!(
                        "row {i}: input `x` (column x): sparse vector of size 134,217,728: over \
                         the limit of 67,108,864 values per row (max_row_elements)"
                    )
                    .as_str()
                )
            );
        }
    }
    assert_eq!((sums[3], sums[17]), (Some(6.0), Some(6.5)));
    // A call lowers the limit: the size-10 vector is refused, the 3-value one is not.
    let low = BatchOptions {
        max_row_elements: 5,
        ..opts()
    };
    let rows = vec![
        (0i8, 10, vec![1, 3], vec![2.0, 4.0]),
        (1, 0, vec![], vec![1.0, 2.5, 3.0]),
    ];
    let out = s.predict(&batch_of("x", vectors(&rows)), &low).unwrap();
    let errs = errors(&out);
    assert!(
        errs[0].as_deref().unwrap().ends_with(
            "sparse vector of size 10: over the limit of 5 values per row (max_row_elements)"
        ),
        "{errs:?}"
    );
    assert_eq!((errs[1].as_deref(), totals(&out)[1]), (None, Some(6.5)));
}

#[test]
fn sparse_vectors_past_the_row_limit_are_row_errors() {
    let grew = peak_growth_in_child("child_sparse_vectors_past_the_row_limit");
    assert!(grew < 64, "peak RSS grew by {grew} MiB");
}

/// The spec's `max_row_elements` sets the limit (above or below the default); a call only
/// lowers it; flat and nested lists are refused before they are copied.
#[test]
fn the_spec_sets_the_row_limit_and_a_call_only_lowers_it() {
    let tmp = tempdir("spec_limit");
    let dir = tmp.path();
    let src = limit_fixtures();
    std::fs::copy(src.join("sum_pad.pt"), dir.join("m.pt")).unwrap();
    std::fs::write(
        dir.join("m.json"),
        r#"{"spec_version": 2,
            "inputs": [{"name": "x", "shape": [-1], "ragged": "pad", "max_row_elements": 3}],
            "outputs": [{"name": "total", "column": "scalar"}]}"#,
    )
    .unwrap();
    let s = scorer(&dir.join("m.pt"));
    let rows = flat_rows(&[vec![1.0; 3], vec![1.0; 4], vec![2.0; 2]]);
    let batch = batch_of("x", rows);
    let out = s.predict(&batch, &opts()).unwrap();
    let errs = errors(&out);
    assert_eq!(
        errs[1].as_deref(),
        Some(
            "row 1: input `x` (column x): the row has 4 values, over the limit of 3 values per \
             row (max_row_elements)"
        )
    );
    assert_eq!(totals(&out), vec![Some(3.0), None, Some(4.0)]);
    // A call asking for more gets the spec's; asking for less lowers it.
    let more = BatchOptions {
        max_row_elements: 10,
        ..opts()
    };
    assert_eq!(
        errors(&s.predict(&batch, &more).unwrap())[1],
        errs[1].clone()
    );
    let less = BatchOptions {
        max_row_elements: 2,
        ..opts()
    };
    let out = s.predict(&batch, &less).unwrap();
    assert_eq!(totals(&out), vec![None, None, Some(4.0)]);
    // Nested lists: the same limit, before any value is copied.
    let nested = scorer(&src.join("sum2d.pt"));
    let rows = nested_rows(&[(2, 2, 1.0), (3, 3, 1.0)]);
    let out = nested
        .predict(
            &batch_of("x", rows),
            &BatchOptions {
                max_row_elements: 4,
                ..opts()
            },
        )
        .unwrap();
    assert_eq!(totals(&out), vec![Some(4.0), None]);
    assert!(
        errors(&out)[1]
            .as_deref()
            .unwrap()
            .contains("the row has 9 values")
    );
}

/// A fresh directory under the system temp dir, removed when the returned guard drops.
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("torchspark-limits-{name}-"))
        .tempdir()
        .unwrap()
}

// ---- per-chunk bytes: images at their own size ---------------------------------------------------

/// The per-channel means the native-size fixture model gives a one-colour image: each value
/// is `p as f32 * (1/255 as f32)`, and a float64 mean of 2^24 equal float32 values is exact.
fn uniform_means() -> Vec<f64> {
    let scale = (1.0f64 / 255.0) as f32;
    [10u8, 120, 250]
        .iter()
        .map(|&p| f64::from(f32::from(p) * scale))
        .collect()
}

fn mean_rows(out: &RecordBatch) -> Vec<Option<Vec<f64>>> {
    let m = out.column_by_name("mean").unwrap().as_list::<i32>();
    (0..m.len())
        .map(|i| {
            (!m.is_null(i)).then(|| m.value(i).as_primitive::<Float64Type>().values().to_vec())
        })
        .collect()
}

/// PyTorch's per-channel means of the 16x12 random fixture image (PIL decodes it; the model's
/// own arithmetic: float32 values, float64 mean).
fn small_means(png: &[u8]) -> Vec<f64> {
    let img = image::load_from_memory(png).unwrap().to_rgb8();
    let scale = (1.0f64 / 255.0) as f32;
    let n = f64::from(img.width() * img.height());
    (0..3)
        .map(|c| {
            img.pixels()
                .map(|p| f64::from(f32::from(p[c]) * scale))
                .sum::<f64>()
                / n
        })
        .collect()
}

/// Eight 4096x4096 images at their own size (201 MB of floats each): one forward pass each
/// under the 256 MiB budget, not one pass of 1.6 GB; two 8000x8000 ones (192,000,000 values)
/// are row errors from their headers; a small image beside them is scored.
#[test]
#[ignore = "run alone in a child process by native_size_images_are_cut_by_bytes"]
fn child_native_size_images_are_cut_by_bytes() {
    let dir = limit_fixtures();
    let s = private_scorer(&dir.join("native_mean.pt"), 1);
    let small = std::fs::read(dir.join("small.png")).unwrap();
    let big = std::fs::read(dir.join("uniform_4096.png")).unwrap();
    let huge = std::fs::read(dir.join("uniform_8000.png")).unwrap();
    s.predict(&batch_of("image", binary(&[&small])), &opts())
        .unwrap();
    let passes = s.engine_stats().batches;
    let before = reset_peak();
    let mut rows: Vec<&[u8]> = vec![&big; 8];
    rows.insert(2, &huge);
    rows.insert(5, &small);
    rows.push(&huge);
    let out = s
        .predict(&batch_of("image", binary(&rows)), &opts())
        .unwrap();
    report_peak(before);
    let (errs, means) = (errors(&out), mean_rows(&out));
    let big_means = uniform_means();
    for (i, row) in rows.iter().enumerate() {
        if row.len() == huge.len() {
            assert_eq!(
                errs[i].as_deref(),
                Some(
                    format!(
                        "row {i}: input `images` (column image): image is 8000x8000 (width x \
                         height) x 3 channels = 192,000,000 values, over the limit of 67,108,864 \
                         values per row (max_row_elements)"
                    )
                    .as_str()
                )
            );
        } else if row.len() == small.len() {
            let got = means[i].clone().unwrap();
            for (g, w) in got.iter().zip(small_means(&small)) {
                assert!((g - w).abs() < 1e-12, "row {i}: {got:?}");
            }
        } else {
            assert_eq!(means[i].as_deref(), Some(big_means.as_slice()), "row {i}");
        }
    }
    // One pass per 4096 image (the small one rides with one of them).
    let ran = s.engine_stats().batches - passes;
    assert!((8..=9).contains(&ran), "{ran} forward passes");
    // A lower budget per call: 100 MB refuses the 4096 images, naming the bytes and limit.
    let low = BatchOptions {
        max_batch_bytes: 100_000_000,
        ..opts()
    };
    let out = s
        .predict(&batch_of("image", binary(&[&big, &small])), &low)
        .unwrap();
    let errs = errors(&out);
    assert_eq!(
        errs[0].as_deref(),
        Some(
            "row 0: input `images` (column image): the row's input (shape [3, 4096, 4096] \
             float32) takes 201,326,592 bytes, over the limit of 100,000,000 bytes per forward \
             pass (max_batch_bytes, at most the engine's queue_bytes)"
        )
    );
    assert!(errs[1].is_none());
}

#[test]
fn native_size_images_are_cut_by_bytes() {
    let grew = peak_growth_in_child("child_native_size_images_are_cut_by_bytes");
    // One image per job (201 MB): the running pass (and the model's own temporaries), one
    // queued job (the engine's 256 MiB queue bound), the next one assembled (its floats and
    // their tensor copy) and waiting for queue space: 1.0-1.5 GB measured (docs/limits.md).
    // All eight in one pass need 3.2 GB before the model runs; the pass count is checked in
    // the child.
    assert!(grew < 2_048, "peak RSS grew by {grew} MiB");
}

// ---- padding waste --------------------------------------------------------------------------------

/// Rows [6000, 1] and [1, 6000] (padded together: 36,000,000 values each) and one 2,000,000-value
/// row among 63 rows of 4 (padded together: 128,000,000 values): ordered by size and cut so that
/// padding stays within 4x the real values; every total as PyTorch sums it, in input order.
#[test]
#[ignore = "run alone in a child process by ragged_rows_are_cut_so_padding_stays_bounded"]
fn child_ragged_rows_are_cut_so_padding_stays_bounded() {
    let dir = limit_fixtures();
    let two_d = private_scorer(&dir.join("sum2d.pt"), 2);
    let flat = private_scorer(&dir.join("sum_pad.pt"), 3);
    two_d
        .predict(&batch_of("x", nested_rows(&[(2, 2, 1.0)])), &opts())
        .unwrap();
    flat.predict(&batch_of("x", flat_rows(&[vec![1.0; 4]])), &opts())
        .unwrap();
    let rows2 = nested_rows(&[
        (2, 3, 0.5),
        (6000, 1, 1.0),
        (3, 2, 2.0),
        (1, 6000, 0.25),
        (1, 1, 7.0),
    ]);
    let mut rows1: Vec<Vec<f32>> = (0..63).map(|i| vec![i as f32; 4]).collect();
    rows1.insert(40, vec![0.5; 2_000_000]);
    let rows1 = flat_rows(&rows1);
    let passes = (two_d.engine_stats().batches, flat.engine_stats().batches);
    let before = reset_peak();
    let out2 = two_d.predict(&batch_of("x", rows2), &opts()).unwrap();
    let out1 = flat.predict(&batch_of("x", rows1), &opts()).unwrap();
    report_peak(before);
    assert_eq!(
        totals(&out2),
        vec![Some(3.0), Some(6000.0), Some(12.0), Some(1500.0), Some(7.0)]
    );
    assert!(errors(&out2).iter().all(Option::is_none));
    let sums = totals(&out1);
    assert_eq!(sums[40], Some(1_000_000.0));
    for (i, s) in sums.iter().enumerate().filter(|(i, _)| *i != 40) {
        let v = if i < 40 { i } else { i - 1 };
        assert_eq!(*s, Some(4.0 * v as f64), "row {i}");
    }
    // The two long 2-D rows each ran alone; the 2M row shares its pass with at most 3 rows.
    assert!(two_d.engine_stats().batches - passes.0 >= 2);
    assert!(flat.engine_stats().batches - passes.1 >= 2);
}

#[test]
fn ragged_rows_are_cut_so_padding_stays_bounded() {
    let grew = peak_growth_in_child("child_ragged_rows_are_cut_so_padding_stays_bounded");
    // Padded together they took +825 MiB and +1,474 MiB.
    assert!(grew < 160, "peak RSS grew by {grew} MiB");
}

/// A padded row that alone passes the budget is a row error, never read; a row under it
/// still runs; `sort_by_length: false` keeps the order and still cuts by bytes.
#[test]
fn a_padded_row_past_the_budget_is_a_row_error() {
    let s = scorer(&limit_fixtures().join("sum_pad.pt"));
    let rows = flat_rows(&[vec![1.0; 10], vec![1.0; 1000], vec![2.0; 5]]);
    for sort in [true, false] {
        let o = BatchOptions {
            max_batch_bytes: 2_000,
            sort_by_length: sort,
            ..opts()
        };
        let out = s.predict(&batch_of("x", rows.clone()), &o).unwrap();
        assert_eq!(totals(&out), vec![Some(10.0), None, Some(10.0)]);
        assert_eq!(
            errors(&out)[1].as_deref(),
            Some(
                "row 1: input `x` (column x): the row's input (shape [1000] float32) takes 4,000 \
                 bytes, over the limit of 2,000 bytes per forward pass (max_batch_bytes, at most \
                 the engine's queue_bytes)"
            )
        );
    }
}

// ---- fixed shapes: chunks cut by bytes -----------------------------------------------------------

/// ImageScorer's path: a lower budget gives passes of fewer rows and the same scores; a budget
/// under one row makes every row an error naming the bytes and the limit.
#[test]
fn fixed_rows_are_cut_by_bytes_with_equal_scores() {
    let fx = fixtures();
    let s = private_scorer(&fx.join("resnet20.pt"), 4);
    let files: Vec<Vec<u8>> = expected()
        .iter()
        .take(7)
        .map(|e| image_bytes(&e.file))
        .collect();
    let rows: Vec<Option<&[u8]>> = files.iter().map(|f| Some(f.as_slice())).collect();
    let batch = binary_batch(&rows);
    let whole = s.score(&batch, &opts()).unwrap();
    let passes = s.engine_stats().batches;
    let row_bytes = 3 * 32 * 32 * 4;
    let split = BatchOptions {
        max_batch_bytes: 3 * row_bytes as u64,
        ..opts()
    };
    let cut = s.score(&batch, &split).unwrap();
    assert_eq!(s.engine_stats().batches - passes, 3);
    for i in 0..rows.len() {
        let (a, b) = (
            list_row(&whole, "probability", i).unwrap(),
            list_row(&cut, "probability", i).unwrap(),
        );
        assert!(max_abs_diff(&a, &b) < 1e-5, "row {i}");
    }
    let none = BatchOptions {
        max_batch_bytes: row_bytes as u64 - 1,
        ..opts()
    };
    let out = s.score(&batch, &none).unwrap();
    let e = str_row(&out, "error", 4).unwrap();
    assert_eq!(
        e,
        "row 4: input `image` (column content): the row's input (shape [3, 32, 32] float32) \
         takes 12,288 bytes, over the limit of 12,287 bytes per forward pass (max_batch_bytes, \
         at most the engine's queue_bytes)"
    );
}

// ---- top-k ------------------------------------------------------------------------------------------

/// `top_k` of 10^12 (the audit's 4 TB reservation) gives every class, as `top_k` 10 does.
#[test]
fn top_k_past_the_class_count_gives_every_class() {
    let fx = fixtures();
    let s = scorer(&fx.join("resnet20.pt"));
    let file = image_bytes(&expected()[0].file);
    let batch = binary_batch(&[Some(&file), None]);
    let huge = s
        .score(
            &batch,
            &BatchOptions {
                top_k: 1_000_000_000_000,
                ..opts()
            },
        )
        .unwrap();
    let ten = s
        .score(
            &batch,
            &BatchOptions {
                top_k: 10,
                ..opts()
            },
        )
        .unwrap();
    let top = huge.column_by_name("top_k").unwrap().as_list::<i32>();
    assert_eq!(top.value(0).len(), 10);
    assert_eq!(
        huge.column_by_name("top_k").unwrap().to_data(),
        ten.column_by_name("top_k").unwrap().to_data()
    );
}

// ---- text ---------------------------------------------------------------------------------------------

/// Per text: its ids, and per text whether it was truncated.
type IdsAt = (Vec<Vec<i64>>, Vec<bool>);

struct Expected {
    texts: Vec<String>,
    /// tokenizer -> max_length -> ids
    ids: HashMap<String, HashMap<usize, IdsAt>>,
}

fn expected_ids() -> Expected {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(limit_fixtures().join("limits_expected.json")).unwrap(),
    )
    .unwrap();
    let texts = v["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let mut ids = HashMap::new();
    for (name, per) in v["tokenizers"].as_object().unwrap() {
        let mut m = HashMap::new();
        for (len, e) in per.as_object().unwrap() {
            let rows = e["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_i64().unwrap())
                        .collect()
                })
                .collect();
            let cut = e["truncated"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_bool().unwrap())
                .collect();
            m.insert(len.parse().unwrap(), (rows, cut));
        }
        ids.insert(name.clone(), m);
    }
    Expected { texts, ids }
}

const TOKENIZERS: [&str; 3] = ["wordpiece", "bytelevel", "unigram"];

fn text_decl(name: &str, max_length: usize, add_special: bool) -> InputDecl {
    serde_json::from_value(serde_json::json!({
        "name": "input_ids", "kind": "text", "dtype": "int64", "shape": [-1], "ragged": "pad",
        "tokenizer": format!("{name}.tokenizer.json"), "max_length": max_length,
        "add_special_tokens": add_special,
    }))
    .unwrap()
}

fn text_tokenizer(name: &str, max_length: usize, add_special: bool) -> TextTokenizer {
    TextTokenizer::load(
        &limit_fixtures(),
        "inputs[0]",
        &text_decl(name, max_length, add_special),
    )
    .unwrap()
}

/// WordPiece (the packaged MiniLM), byte-level BPE and Metaspace + Unigram: the ids of long
/// texts, cut at their heads, equal Python `tokenizers`' on the whole text, truncated, at
/// every max_length (and the truncation flag).
#[test]
fn head_cut_ids_equal_python_tokenizers() {
    let exp = expected_ids();
    for name in TOKENIZERS {
        for (&max_length, (ids, cut)) in &exp.ids[name] {
            let tok = text_tokenizer(name, max_length, true);
            for (i, text) in exp.texts.iter().enumerate() {
                let (got, was_cut) = tok.encode(text).unwrap();
                assert_eq!(got, ids[i], "{name}, text {i}, max_length {max_length}");
                assert_eq!(was_cut, cut[i], "{name}, text {i}, max_length {max_length}");
            }
        }
    }
}

/// Texts of random words and pieces (scripts, combining marks, added tokens, runs of spaces):
/// the head cut gives the whole text's ids at every max_length, with and without special
/// tokens, for the three tokenizers (the whole text through `tokenizers` directly).
#[test]
fn head_cut_equals_the_whole_text_wherever_the_cut_falls() {
    use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};
    let pieces = [
        "spark",
        "tensor",
        "Café",
        "e\u{301}",
        "東京は",
        "🍕",
        "👩\u{200d}💻",
        "\u{3000}",
        "<mask>",
        "[SEP]",
        "</s>",
        "don't",
        "3.14",
        "12345678",
        "(a,b)",
        "x\u{1c}y",
        "\t",
        "\n",
        "  ",
        "ﬁ",
        "supercalifragilistic",
        "Straße",
        "a",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let texts: Vec<String> = (0..40)
        .map(|_| {
            let words = 200 + next(3000);
            let sep = [" ", " ", "", "  ", "\n"];
            (0..words)
                .map(|_| format!("{}{}", pieces[next(pieces.len())], sep[next(sep.len())]))
                .collect()
        })
        .collect();
    for name in TOKENIZERS {
        let file = limit_fixtures().join(format!("{name}.tokenizer.json"));
        for (max_length, special) in [(8, true), (13, false), (64, true), (300, true), (64, false)]
        {
            let tok = text_tokenizer(name, max_length, special);
            let mut whole = Tokenizer::from_file(&file).unwrap();
            whole.with_padding(None);
            whole
                .with_truncation(Some(TruncationParams {
                    max_length,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                    direction: TruncationDirection::Right,
                }))
                .unwrap();
            for (i, text) in texts.iter().enumerate() {
                let want: Vec<i64> = whole
                    .encode_fast(text.as_str(), special)
                    .unwrap()
                    .get_ids()
                    .iter()
                    .map(|&v| i64::from(v))
                    .collect();
                let (got, _) = tok.encode(text).unwrap();
                assert_eq!(
                    got, want,
                    "{name}, text {i}, max_length {max_length}, special {special}"
                );
            }
        }
    }
}

/// A text 128 times longer costs about the same: only its head is tokenized. Tokenizing the
/// whole 7 MB text takes seconds (the audit's 50 MB row: 20-37 s), the head about a millisecond,
/// so the bound is loose: each figure is the best of 5 (a loaded machine's pauses only add), and
/// 250 ms of slack keeps a descheduled thread from failing it (the stress loop saw 81 ms once).
#[test]
fn head_cut_is_linear_in_the_kept_prefix() {
    let words = "spark torch tensor 東京は日本 Café <mask> 3.14 ";
    let short = words.repeat(64 << 10 >> 6);
    let long = words.repeat(8 << 20 >> 6);
    for name in TOKENIZERS {
        let tok = text_tokenizer(name, 256, true);
        let time = |t: &str| {
            (0..5)
                .map(|_| {
                    let started = Instant::now();
                    for _ in 0..3 {
                        tok.encode(t).unwrap();
                    }
                    started.elapsed()
                })
                .min()
                .unwrap_or_default()
        };
        time(&short);
        let (a, b) = (time(&short), time(&long));
        assert!(
            b < a * 8 + Duration::from_millis(250),
            "{name}: {} bytes in {b:?}, {} bytes in {a:?}",
            long.len(),
            short.len()
        );
    }
}

fn ids_rows(out: &RecordBatch) -> Vec<Option<Vec<i64>>> {
    let l = out.column_by_name("ids").unwrap().as_list::<i32>();
    (0..l.len())
        .map(|i| {
            (!l.is_null(i)).then(|| {
                l.value(i)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .copied()
                    .filter(|&v| v != -1)
                    .collect()
            })
        })
        .collect()
}

/// A 50 MB text (no spaces) is a row error naming its bytes and the limit, at once and with
/// flat memory; the rows beside it get Python's ids; a call lowers the limit.
#[test]
#[ignore = "run alone in a child process by text_past_max_text_bytes_is_a_row_error"]
fn child_text_past_max_text_bytes() {
    let exp = expected_ids();
    let dir = limit_fixtures();
    let s = scorer(&dir.join("ids_bytelevel.pt"));
    let hello = exp.texts.iter().position(|t| t == "Hello, world!").unwrap();
    let long = exp.texts.len() - 6; // the first long text
    let ok = [exp.texts[hello].as_str(), exp.texts[long].as_str()];
    s.predict(&batch_of("text", strings(&ok)), &opts()).unwrap();
    let batch = batch_of("text", strings(&[ok[0], &"a".repeat(50 << 20), ok[1]]));
    let before = reset_peak();
    let started = Instant::now();
    let out = s.predict(&batch, &opts()).unwrap();
    let took = started.elapsed();
    report_peak(before);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let errs = errors(&out);
    assert_eq!(
        errs[1].as_deref(),
        Some(
            "row 1: input `input_ids` (column text): text is 52,428,800 bytes, over the limit of \
             1,048,576 bytes per row (max_text_bytes)"
        )
    );
    let ids = ids_rows(&out);
    let want = &exp.ids["bytelevel"][&64].0;
    assert_eq!(ids[0].as_ref(), Some(&want[hello]));
    assert_eq!(ids[2].as_ref(), Some(&want[long]));
    let low = BatchOptions {
        max_text_bytes: 10,
        ..opts()
    };
    let errs = errors(&s.predict(&batch_of("text", strings(&ok)), &low).unwrap());
    assert!(
        errs[0]
            .as_deref()
            .unwrap()
            .ends_with("text is 13 bytes, over the limit of 10 bytes per row (max_text_bytes)"),
        "{errs:?}"
    );
}

#[test]
fn text_past_max_text_bytes_is_a_row_error() {
    let grew = peak_growth_in_child("child_text_past_max_text_bytes");
    assert!(grew < 64, "peak RSS grew by {grew} MiB");
}

/// The spec fields are strict: on the wrong kind of input, or 0, they are refused naming the
/// field; every spec without them keeps working (the fixtures have none).
#[test]
fn limit_fields_of_the_spec_are_checked() {
    use torchspark_core::Spec;
    let spec = |input: &str| {
        format!(r#"{{"spec_version": 2, "inputs": [{input}], "outputs": [{{"name": "o"}}]}}"#)
    };
    let text =
        r#"{"name": "t", "kind": "text", "dtype": "int64", "tokenizer": "t.json", "max_length": 8"#;
    let cases = [
        (
            format!(r#"{text}, "max_row_elements": 5}}"#),
            "inputs[0].max_row_elements belongs to",
        ),
        (
            r#"{"name": "x", "shape": [3], "max_text_bytes": 5}"#.to_string(),
            "inputs[0].max_text_bytes belongs to",
        ),
        (
            r#"{"name": "x", "shape": [3], "max_row_elements": 0}"#.to_string(),
            "inputs[0].max_row_elements must be at least 1",
        ),
        (
            format!(r#"{text}, "max_text_bytes": 0}}"#),
            "inputs[0].max_text_bytes must be at least 1",
        ),
    ];
    for (input, want) in cases {
        let e = Spec::from_json(&spec(&input)).unwrap_err();
        assert!(e.contains(want), "{e}");
    }
    assert!(Spec::from_json(&spec(&format!(r#"{text}, "max_text_bytes": 100}}"#))).is_ok());
    assert!(
        Spec::from_json(&spec(
            r#"{"name": "x", "shape": [-1], "ragged": "pad", "max_row_elements": 100000000000}"#
        ))
        .is_ok()
    );
}
