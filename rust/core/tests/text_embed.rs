//! Text through the general path (issue 18): generated `type_ids` and masks in their declared
//! places, pooling `post` ops over the mask, rows sorted by length and put back in order.
//! A tiny model traced here from tch ops shows exactly what the plan passes to `forward`.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use tch::{CModule, Kind, Tensor};
use torchspark_core::{BatchOptions, ModelConfig, Scorer};

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

fn open(path: &PathBuf) -> Scorer {
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
