//! Text through the general path (issue 18): all-MiniLM-L6-v2's embeddings equal
//! sentence-transformers' (tests/fixtures/make_text_fixtures.py); generated `type_ids` and
//! masks in their declared places, pooling `post` ops over the mask, rows sorted by length and
//! put back in order. Tiny models traced here from tch ops show what the plan passes to
//! `forward`.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{Int64Builder, ListBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde_json::Value;
use tch::{CModule, Kind, Tensor};
use torchspark_core::{BatchOptions, ModelConfig, Scorer};

mod common;
use common::text_fixtures;

/// text_expected.json, read once.
fn expected() -> &'static Value {
    static EXPECTED: OnceLock<Value> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let text = std::fs::read_to_string(text_fixtures().join("text_expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn texts() -> Vec<String> {
    let t = expected()["texts"].as_array().unwrap();
    t.iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

/// MiniLM, opened once for every test of this binary (the registry shares it anyway).
fn minilm() -> &'static Scorer {
    static MINILM: OnceLock<Scorer> = OnceLock::new();
    MINILM.get_or_init(|| open(&text_fixtures().join("minilm.pt")))
}

fn text_batch(rows: &[Option<&str>]) -> RecordBatch {
    let col: ArrayRef = Arc::new(StringArray::from(rows.to_vec()));
    RecordBatch::try_from_iter([("text", col)]).unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Every text of text_expected.json (ASCII, accents, CJK, Arabic, emoji, control characters,
/// empty, whitespace, a 300-token and a 3,000-word text) embeds within 1e-5 of
/// `SentenceTransformer.encode(normalize_embeddings=True)`; the pair's cosine is theirs.
#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let texts = texts();
    let rows: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    // Sorted, the four 256-token texts fill the first pass of 4 exactly: the cheapest run.
    let opts = BatchOptions {
        batch_size: 4,
        ..BatchOptions::default()
    };
    let out = minilm().predict(&text_batch(&rows), &opts).unwrap();
    assert!(
        errors(&out).iter().all(Option::is_none),
        "{:?}",
        errors(&out)
    );
    let want = expected()["embeddings"].as_array().unwrap();
    let mut got = Vec::new();
    for (i, w) in want.iter().enumerate() {
        let w: Vec<f64> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let g = row_f64(&out, "embedding", i).unwrap();
        let d = max_abs_diff(&g, &w);
        assert!(d <= 1e-5, "text {i} {:?}: max abs diff {d:e}", texts[i]);
        got.push(g);
    }
    let truncated: usize = expected()["truncated"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t.as_bool().unwrap())
        .count();
    let meta = out.schema_ref().metadata();
    assert_eq!(
        meta.get("torchspark.truncated_rows"),
        Some(&truncated.to_string())
    );
    let pair = expected()["pair"].as_array().unwrap();
    let (a, b) = (
        pair[0].as_u64().unwrap() as usize,
        pair[1].as_u64().unwrap() as usize,
    );
    let cosine = dot(&got[a], &got[b]);
    let theirs = expected()["cosine_pair"].as_f64().unwrap();
    assert!((cosine - theirs).abs() <= 1e-5, "{cosine} vs {theirs}");
    assert!((cosine - 0.755).abs() <= 1e-3, "{cosine}");
}

/// With sorting on and off (batch 4), every row's embedding is the same within 1e-6 and in
/// input order; a null row is named by its own row number, offset included.
#[test]
fn sorting_by_length_keeps_row_order_and_values() {
    let texts = texts();
    // Rows of 2 to 35 tokens mixed (short ones: the forward passes stay cheap), a null.
    let mut rows: Vec<Option<&str>> = [0usize, 13, 4, 21, 26, 8, 30, 16, 1]
        .iter()
        .map(|&i| Some(texts[i].as_str()))
        .collect();
    rows.insert(5, None);
    let batch = text_batch(&rows);
    let run = |sort_by_length| {
        let opts = BatchOptions {
            batch_size: 4,
            row_offset: 100,
            sort_by_length,
            ..BatchOptions::default()
        };
        minilm().predict(&batch, &opts).unwrap()
    };
    let (sorted, unsorted) = (run(true), run(false));
    for out in [&sorted, &unsorted] {
        let e = errors(out);
        assert_eq!(
            e[5].as_deref(),
            Some("row 105: input `input_ids` (column text): null")
        );
        assert!(e.iter().enumerate().all(|(i, e)| (i == 5) == e.is_some()));
        assert!(row_f64(out, "embedding", 5).is_none());
    }
    let want = expected()["embeddings"].as_array().unwrap();
    let first: Vec<f64> = want[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(max_abs_diff(&row_f64(&sorted, "embedding", 0).unwrap(), &first) <= 1e-5);
    for i in (0..rows.len()).filter(|&i| i != 5) {
        let (a, b) = (
            row_f64(&sorted, "embedding", i).unwrap(),
            row_f64(&unsorted, "embedding", i).unwrap(),
        );
        assert!(max_abs_diff(&a, &b) <= 1e-6, "row {i}");
    }
}

/// Writes `name.pt`, traced from `f` on `args`, and `name.json` = `spec` into a fresh folder of
/// this test binary's temporary directory; returns the model path.
fn traced(
    name: &str,
    args: &[Tensor],
    f: &mut dyn FnMut(&[Tensor]) -> Vec<Tensor>,
    spec: &str,
) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("text_embed_{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let m = CModule::create_by_tracing(name, "forward", args, &mut |a: &[Tensor]| f(a)).unwrap();
    let path = dir.join(format!("{name}.pt"));
    m.save(&path).unwrap();
    std::fs::write(path.with_extension("json"), spec).unwrap();
    path
}

/// `[n, T, 3]`: per token (its id, its mask value, 10) as float32.
fn tokens3(a: &[Tensor]) -> Tensor {
    let f = |t: &Tensor| t.to_kind(Kind::Float);
    Tensor::stack(&[f(&a[0]), f(&a[1]), f(&a[1]).zeros_like() + 10.0], -1)
}

/// forward(ids, mask) -> [`tokens3`], for an ids input of a tensor kind padded with 7, and
/// `outputs`.
fn ids_model(name: &str, outputs: &str) -> PathBuf {
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).reshape([2, 2]);
    let spec = format!(
        r#"{{"spec_version": 2,
            "inputs": [
              {{"name": "input_ids", "kind": "tensor", "column": "ids", "dtype": "int64",
                "shape": [-1], "ragged": "pad", "pad_value": 7}},
              {{"name": "attention_mask", "kind": "mask", "of": "input_ids", "dtype": "int64"}}],
            "outputs": {outputs}}}"#
    );
    traced(
        name,
        &[ids.shallow_clone(), ids.ones_like()],
        &mut |a| vec![tokens3(a)],
        &spec,
    )
}

fn ids_batch(rows: &[Option<&[i64]>]) -> RecordBatch {
    let mut b = ListBuilder::new(Int64Builder::new());
    for r in rows {
        match r {
            Some(v) => {
                b.values().append_slice(v);
                b.append(true);
            }
            None => b.append(false),
        }
    }
    let col: ArrayRef = Arc::new(b.finish());
    let schema = Schema::new(vec![Field::new("ids", col.data_type().clone(), true)]);
    RecordBatch::try_new(Arc::new(schema), vec![col]).unwrap()
}

/// Row `i` of a list<float64> or list<list<int64>> column, flattened (None when null).
fn row_f64(out: &RecordBatch, col: &str, i: usize) -> Option<Vec<f64>> {
    let list = out.column_by_name(col).unwrap().as_list::<i32>();
    list.is_valid(i).then(|| flat(&list.value(i)))
}

fn flat(a: &ArrayRef) -> Vec<f64> {
    match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            (0..l.len()).flat_map(|i| flat(&l.value(i))).collect()
        }
        DataType::Int64 => a
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|&x| x as f64)
            .collect(),
        _ => a.as_primitive::<Float64Type>().values().to_vec(),
    }
}

fn errors(out: &RecordBatch) -> Vec<Option<String>> {
    let e = out.column_by_name("error").unwrap().as_string::<i32>();
    (0..e.len())
        .map(|i| e.is_valid(i).then(|| e.value(i).to_string()))
        .collect()
}

fn open(path: &Path) -> Scorer {
    Scorer::open(&ModelConfig::new(path)).unwrap()
}

/// `forward(ids, mask)` gets the padded ids and their 1/0 mask; mean/max/cls pools read that
/// mask (padding never counts), over chunks of any size, a null row between.
#[test]
fn pools_read_the_mask_of_each_chunk() {
    let path = ids_model(
        "ids3",
        r#"[{"name": "tokens", "column": "array", "dtype": "int64", "shape": [-1, 3]},
            {"name": "mean", "column": "vector", "shape": [3],
             "post": [{"op": "mean_pool", "mask": "attention_mask"}]},
            {"name": "max", "column": "vector", "shape": [3],
             "post": [{"op": "max_pool", "mask": "attention_mask"}]},
            {"name": "cls", "column": "vector", "shape": [3],
             "post": [{"op": "cls_pool", "mask": "attention_mask"}]},
            {"name": "unit", "column": "vector", "shape": [3],
             "post": [{"op": "mean_pool", "mask": "attention_mask"}, {"op": "l2_normalize"}]}]"#,
    );
    let scorer = open(&path);
    let rows: [Option<&[i64]>; 5] = [
        Some(&[101, 5, 102]),
        Some(&[101, 102]),
        None,
        Some(&[101, 9, 8, 30, 102]),
        Some(&[3]),
    ];
    let batch = ids_batch(&rows);
    for batch_size in [2, 64] {
        let opts = BatchOptions {
            batch_size,
            ..BatchOptions::default()
        };
        let out = scorer.predict(&batch, &opts).unwrap();
        for (i, r) in rows.iter().enumerate() {
            let Some(ids) = r else {
                assert!(row_f64(&out, "tokens", i).is_none());
                assert!(row_f64(&out, "mean", i).is_none());
                continue;
            };
            let ids: Vec<f64> = ids.iter().map(|&x| x as f64).collect();
            // tokens: (id, 1, 10) for each real token, then (7, 0, 10) for each pad.
            let tokens = row_f64(&out, "tokens", i).unwrap();
            let t = tokens.len() / 3;
            for (k, tok) in tokens.chunks(3).enumerate() {
                let want = match ids.get(k) {
                    Some(&id) => [id, 1.0, 10.0],
                    None => [7.0, 0.0, 10.0],
                };
                assert_eq!(tok, want, "batch {batch_size} row {i} token {k} of {t}");
            }
            let n = ids.len() as f64;
            let mean = ids.iter().sum::<f64>() / n;
            let max = ids.iter().cloned().fold(f64::MIN, f64::max);
            let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
            assert!(close(
                &row_f64(&out, "mean", i).unwrap(),
                &[mean, 1.0, 10.0]
            ));
            assert_eq!(row_f64(&out, "max", i).unwrap(), [max, 1.0, 10.0]);
            assert_eq!(row_f64(&out, "cls", i).unwrap(), [ids[0], 1.0, 10.0]);
            let norm = (mean * mean + 1.0 + 100.0).sqrt();
            let unit = [mean / norm, 1.0 / norm, 10.0 / norm];
            assert!(close(&row_f64(&out, "unit", i).unwrap(), &unit), "row {i}");
        }
        let e = errors(&out);
        assert_eq!(
            e[2].as_deref(),
            Some("row 2: input `input_ids` (column ids): input is null")
        );
        assert!(e.iter().enumerate().all(|(i, e)| (i == 2) == e.is_some()));
    }
}

/// A model that takes ids and type ids but no mask still gets type ids: zeros shaped like the
/// padded ids, in their declared dtype.
#[test]
fn type_ids_without_a_mask_input_are_shaped_like_the_padded_ids() {
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).reshape([2, 2]);
    let spec = r#"{"spec_version": 2,
        "inputs": [
          {"name": "input_ids", "kind": "text", "column": "text", "dtype": "int64",
           "tokenizer": "tok.json", "max_length": 16},
          {"name": "token_type_ids", "kind": "type_ids", "of": "input_ids", "dtype": "int32"}],
        "outputs": [{"name": "tokens", "column": "array", "dtype": "int64", "shape": [-1, 2]}]}"#;
    let path = traced(
        "ids_types",
        &[ids.shallow_clone(), ids.zeros_like().to_kind(Kind::Int)],
        &mut |a| {
            // int32 wraps at 2^31 (int64 does not): shows the dtype the type ids came in.
            let wrapped = (&a[1] + i32::MAX as i64 + 1).to_kind(Kind::Int64);
            vec![Tensor::stack(&[a[0].shallow_clone(), wrapped], -1)]
        },
        spec,
    );
    let tok = text_fixtures().join("minilm.tokenizer.json");
    std::fs::copy(tok, path.with_file_name("tok.json")).unwrap();
    let batch = text_batch(&[Some("a"), Some("This is an example sentence")]);
    let out = open(&path)
        .predict(&batch, &BatchOptions::default())
        .unwrap();
    let w = -2147483648.0;
    // "a" is [CLS] a [SEP], padded with 0 to the other row's 7 tokens.
    let ids = [101.0, 1037.0, 102.0, 0.0, 0.0, 0.0, 0.0];
    let want: Vec<f64> = ids.iter().flat_map(|&i| [i, w]).collect();
    assert_eq!(row_f64(&out, "tokens", 0).unwrap(), want);
    let ids = [101.0, 2023.0, 2003.0, 2019.0, 2742.0, 6251.0, 102.0];
    let want: Vec<f64> = ids.iter().flat_map(|&i| [i, w]).collect();
    assert_eq!(row_f64(&out, "tokens", 1).unwrap(), want);
}
