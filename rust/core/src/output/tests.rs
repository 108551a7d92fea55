//! Every column kind end to end: the declared field, the values written (torch is the oracle),
//! nulls for rows that did not run, and the errors for results that do not fit.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, Field};
use tch::{Device, Kind, Tensor};

use super::{COLUMN_KEY, field, writer};
use crate::spec::general::OutputDecl;
use crate::value::Value;

fn decl(json: &str) -> OutputDecl {
    serde_json::from_str(json).unwrap()
}

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// Writes the chunks with `decl`'s writer; checks the column's type is `field(decl)`'s.
fn write(d: &OutputDecl, chunks: &[(Option<Value>, Vec<bool>)]) -> Result<ArrayRef, String> {
    let mut w = writer(d, 5);
    for (v, good) in chunks {
        w.append_chunk(v.as_ref(), good, &HashMap::new())?;
    }
    let array = w.finish();
    assert_eq!(array.data_type(), field(d).data_type());
    Ok(array)
}

fn write_err(d: &OutputDecl, v: Value, good: &[bool]) -> String {
    write(d, &[(Some(v), good.to_vec())]).unwrap_err()
}

fn floats64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).reshape([-1])).unwrap()
}

const GOOD: [bool; 6] = [true, false, true, true, false, true];

#[test]
fn fields_follow_the_contract_table() {
    let f = field(&decl(r#"{"name": "p", "column": "scalar"}"#));
    assert_eq!(
        (f.name().as_str(), f.data_type(), f.is_nullable()),
        ("p", &DataType::Float64, true)
    );
    let f = field(&decl(
        r#"{"name": "c", "column": "scalar", "post": [{"op": "argmax"}]}"#,
    ));
    assert_eq!(f.data_type(), &DataType::Int64);
    let f = field(&decl(
        r#"{"name": "c", "column": "scalar", "dtype": "uint8"}"#,
    ));
    assert_eq!(f.data_type(), &DataType::Int32);
    let f = field(&decl(
        r#"{"name": "c", "column": "scalar", "dtype": "float32"}"#,
    ));
    assert_eq!(f.data_type(), &DataType::Float32);

    let f = field(&decl(r#"{"name": "v", "column": "vector"}"#));
    let item = Arc::new(Field::new("item", DataType::Float64, true));
    assert_eq!(f.data_type(), &DataType::List(item));
    assert_eq!(
        f.metadata().get(COLUMN_KEY).map(String::as_str),
        Some("vector")
    );

    let f = field(&decl(r#"{"name": "a"}"#));
    assert_eq!(f.data_type(), &super::nested(DataType::Float32, 1));
    assert!(f.metadata().is_empty());
    let f = field(&decl(
        r#"{"name": "a", "shape": [-1, -1], "post": [{"op": "argmax", "axis": 0}]}"#,
    ));
    let inner = DataType::List(Arc::new(Field::new("item", DataType::Int32, true)));
    let outer = DataType::List(Arc::new(Field::new("item", inner, true)));
    assert_eq!(f.data_type(), &outer);
    let f = field(&decl(
        r#"{"name": "a", "shape": [2, 3, 4], "dtype": "int64"}"#,
    ));
    assert_eq!(f.data_type(), &super::nested(DataType::Int64, 3));
    let f = field(&decl(r#"{"name": "a", "shape": [8], "dtype": "uint8"}"#));
    assert_eq!(f.data_type(), &super::nested(DataType::Int32, 1));

    let f = field(&decl(
        r#"{"name": "m", "column": "png", "post": [{"op": "argmax", "axis": 0}]}"#,
    ));
    assert_eq!(f.data_type(), &DataType::Binary);

    let f = field(&decl(
        r#"{"name": "d", "column": "structs", "fields": [
            {"name": "box", "from": "boxes", "shape": [4]},
            {"name": "label", "from": "labels", "dtype": "int64"},
            {"name": "score", "from": "scores"}]}"#,
    ));
    let DataType::List(item) = f.data_type() else {
        panic!("{f:?}")
    };
    let DataType::Struct(fields) = item.data_type() else {
        panic!("{item:?}")
    };
    let types: Vec<_> = fields
        .iter()
        .map(|f| (f.name().as_str(), f.data_type().clone()))
        .collect();
    assert_eq!(
        types,
        [
            ("box", super::nested(DataType::Float32, 1)),
            ("label", DataType::Int64),
            ("score", DataType::Float32),
        ]
    );
    assert!(fields.iter().all(|f| f.is_nullable()) && item.is_nullable());
}

#[test]
fn scalar_writes_one_value_per_good_row_and_nulls_for_the_others() {
    let d = decl(r#"{"name": "prediction", "column": "scalar"}"#);
    let t = randn(&[4, 1]);
    let a = write(
        &d,
        &[(Some(Value::Tensor(t.shallow_clone())), GOOD.to_vec())],
    )
    .unwrap();
    let a = a.as_primitive::<Float64Type>();
    let want = floats64(&t);
    let nulls: Vec<bool> = (0..6).map(|i| a.is_null(i)).collect();
    assert_eq!(nulls, [false, true, false, false, true, false]);
    let got: Vec<f64> = [0, 2, 3, 5].iter().map(|&i| a.value(i)).collect();
    assert_eq!(got, want);

    // A per-row [] works too, and argmax gives int64 classes.
    let d = decl(r#"{"name": "c", "column": "scalar", "post": [{"op": "argmax"}]}"#);
    let t = randn(&[3, 5]);
    let a = write(
        &d,
        &[(Some(Value::Tensor(t.shallow_clone())), vec![true; 3])],
    )
    .unwrap();
    assert_eq!(
        a.as_primitive::<Int64Type>().values().to_vec(),
        ints(&t.argmax(1, false))
    );
    assert_eq!(a.null_count(), 0);
}

#[test]
fn scalar_converts_to_the_declared_dtype() {
    let t = Tensor::from_slice(&[1.5f32, -2.0, 300.0]).reshape([3, 1]);
    let a = write(
        &decl(r#"{"name": "x", "column": "scalar", "dtype": "float32"}"#),
        &[(Some(Value::Tensor(t.shallow_clone())), vec![true; 3])],
    )
    .unwrap();
    assert_eq!(
        a.as_primitive::<Float32Type>().values().to_vec(),
        [1.5, -2.0, 300.0]
    );
    let a = write(
        &decl(r#"{"name": "x", "column": "scalar", "dtype": "int32"}"#),
        &[(Some(Value::Tensor(t.shallow_clone())), vec![true; 3])],
    )
    .unwrap();
    assert_eq!(
        a.as_primitive::<Int32Type>().values().to_vec(),
        [1, -2, 300]
    );
    // uint8 as torch's `.to(torch.uint8)` gives it, widened to int32.
    let t = Tensor::from_slice(&[7i64, 200]).reshape([2]);
    let a = write(
        &decl(r#"{"name": "x", "column": "scalar", "dtype": "uint8"}"#),
        &[(Some(Value::Tensor(t)), vec![true; 2])],
    )
    .unwrap();
    assert_eq!(a.as_primitive::<Int32Type>().values().to_vec(), [7, 200]);
}

/// A sentence embedding: each chunk's mask (its good rows only) reaches `post`; rows that did
/// not run are null.
#[test]
fn vector_mean_pools_each_chunk_with_its_mask() {
    let d = decl(
        r#"{"name": "embedding", "column": "vector", "shape": [3],
            "post": [{"op": "mean_pool", "mask": "m"}, {"op": "l2_normalize"}]}"#,
    );
    let mut w = writer(&d, 5);
    let mut want = Vec::new();
    // Chunk 1: rows 0 and 2 ran (2 and 1 tokens of T = 2); chunk 2: its one row, 3 tokens.
    for (t, lens, good) in [
        (randn(&[2, 2, 3]), vec![2i64, 1], vec![true, false, true]),
        (randn(&[1, 3, 3]), vec![3], vec![true]),
    ] {
        let tokens = t.size()[1];
        let rows: Vec<i64> = lens
            .iter()
            .flat_map(|&l| (0..tokens).map(move |k| i64::from(k < l)))
            .collect();
        let m = Tensor::from_slice(&rows).reshape([lens.len() as i64, tokens]);
        for (i, &l) in lens.iter().enumerate() {
            let mean = t
                .get(i as i64)
                .slice(0, 0, l, 1)
                .mean_dim(0, false, Kind::Float);
            let norm = mean.norm().double_value(&[]);
            want.push(floats64(&(mean / norm)));
        }
        let masks = HashMap::from([("m".to_string(), m)]);
        w.append_chunk(Some(&Value::Tensor(t)), &good, &masks)
            .unwrap();
    }
    let a = w.finish();
    let a = a.as_list::<i32>();
    assert_eq!((a.len(), a.null_count(), a.is_null(1)), (4, 1, true));
    for (i, exp) in [0usize, 2, 3].iter().zip(&want) {
        let row = a.value(*i);
        let row = row.as_primitive::<Float64Type>().values().to_vec();
        let diff = row
            .iter()
            .zip(exp)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-6, "row {i}: {row:?} vs {exp:?}");
    }
}

#[test]
fn vector_applies_softmax_like_torch() {
    let d = decl(r#"{"name": "probability", "column": "vector", "post": [{"op": "softmax"}]}"#);
    let t = randn(&[4, 5]);
    let a = write(
        &d,
        &[(Some(Value::Tensor(t.shallow_clone())), GOOD.to_vec())],
    )
    .unwrap();
    let a = a.as_list::<i32>();
    let want = t.softmax(-1, Kind::Float);
    for (k, &i) in [0usize, 2, 3, 5].iter().enumerate() {
        let row = a.value(i);
        let row = row.as_primitive::<Float64Type>().values().to_vec();
        let exp = floats64(&want.get(k as i64));
        let diff = row
            .iter()
            .zip(&exp)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(row.len() == 5 && diff < 1e-7, "{row:?} vs {exp:?}");
    }
    assert_eq!(
        (a.null_count(), a.is_null(1), a.is_null(4)),
        (2, true, true)
    );
}

#[test]
fn array_applies_sigmoid_and_keeps_the_declared_nesting() {
    let d = decl(r#"{"name": "e", "shape": [2, 3], "post": [{"op": "sigmoid"}]}"#);
    let t = randn(&[2, 2, 3]);
    let a = write(
        &d,
        &[(
            Some(Value::Tensor(t.shallow_clone())),
            vec![true, false, true],
        )],
    )
    .unwrap();
    let a = a.as_list::<i32>();
    assert_eq!((a.len(), a.is_null(1), a.value(1).len()), (3, true, 0));
    let want = t.sigmoid();
    for (k, i) in [(0i64, 0usize), (1, 2)] {
        let rows = a.value(i);
        let rows = rows.as_list::<i32>();
        assert_eq!(rows.len(), 2);
        for r in 0..2 {
            let v = rows.value(r);
            let v = v.as_primitive::<Float32Type>().values().to_vec();
            let exp: Vec<f32> = Vec::try_from(want.get(k).get(r as i64)).unwrap();
            let diff = v
                .iter()
                .zip(&exp)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(v.len() == 3 && diff <= 1e-7, "{v:?} vs {exp:?}");
        }
    }
}

#[test]
fn array_without_a_shape_is_flattened_row_major() {
    let d = decl(r#"{"name": "e", "dtype": "int64"}"#);
    let t = Tensor::arange(24, (Kind::Int64, Device::Cpu)).reshape([2, 3, 4]);
    let a = write(&d, &[(Some(Value::Tensor(t)), vec![true, true])]).unwrap();
    let a = a.as_list::<i32>();
    let row = a.value(1);
    assert_eq!(
        row.as_primitive::<Int64Type>().values().to_vec(),
        (12..24).collect::<Vec<_>>()
    );
}

#[test]
fn array_class_map_from_argmax_over_chunks_of_different_sizes() {
    let d =
        decl(r#"{"name": "classes", "shape": [-1, -1], "post": [{"op": "argmax", "axis": 0}]}"#);
    let (t1, t2) = (randn(&[2, 4, 3, 5]), randn(&[1, 4, 6, 2]));
    let a = write(
        &d,
        &[
            (
                Some(Value::Tensor(t1.shallow_clone())),
                vec![true, false, true],
            ),
            (None, vec![false, false]),
            (Some(Value::Tensor(t2.shallow_clone())), vec![true]),
        ],
    )
    .unwrap();
    let a = a.as_list::<i32>();
    assert_eq!(a.len(), 6);
    let nulls: Vec<bool> = (0..6).map(|i| a.is_null(i)).collect();
    assert_eq!(nulls, [false, true, false, true, true, false]);
    let expect = [(0usize, t1.get(0)), (2, t1.get(1)), (5, t2.get(0))];
    for (i, logits) in expect {
        let want = logits.argmax(0, false);
        let rows = a.value(i);
        let rows = rows.as_list::<i32>();
        assert_eq!(rows.len() as i64, want.size()[0]);
        let got: Vec<i64> = (0..rows.len())
            .flat_map(|r| {
                let v = rows.value(r);
                v.as_primitive::<Int32Type>()
                    .values()
                    .iter()
                    .map(|&x| x as i64)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, ints(&want));
    }
}

#[test]
fn png_decodes_to_the_class_map() {
    let d = decl(r#"{"name": "mask", "column": "png", "post": [{"op": "argmax", "axis": 0}]}"#);
    let t = randn(&[2, 4, 5, 7]);
    let a = write(
        &d,
        &[(
            Some(Value::Tensor(t.shallow_clone())),
            vec![true, false, true],
        )],
    )
    .unwrap();
    let a = a.as_binary::<i32>();
    assert_eq!((a.len(), a.is_null(1)), (3, true));
    for (k, i) in [(0i64, 0usize), (1, 2)] {
        let img = image::load_from_memory(a.value(i)).unwrap();
        assert_eq!(img.color(), image::ColorType::L8);
        assert_eq!((img.width(), img.height()), (7, 5));
        let got: Vec<i64> = img
            .to_luma8()
            .into_raw()
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(got, ints(&t.get(k).argmax(0, false)));
    }
    // Classes up to 255 survive.
    let map = Tensor::from_slice(&[0i64, 255, 17, 128]).reshape([1, 2, 2]);
    let logits = map.one_hot(256).permute([0, 3, 1, 2]).to_kind(Kind::Float);
    let a = write(&d, &[(Some(Value::Tensor(logits)), vec![true])]).unwrap();
    let img = image::load_from_memory(a.as_binary::<i32>().value(0)).unwrap();
    assert_eq!(img.to_luma8().into_raw(), [0, 255, 17, 128]);
}

fn detections(rows: &[(usize, &[&str])]) -> Value {
    Value::List(
        rows.iter()
            .map(|&(k, keys)| {
                let k = k as i64;
                Value::Dict(
                    keys.iter()
                        .map(|&key| {
                            let t = match key {
                                "boxes" => {
                                    Tensor::arange(k * 4, (Kind::Float, Device::Cpu))
                                        .reshape([k, 4])
                                        / 10.0
                                }
                                "labels" => Tensor::arange(k, (Kind::Int64, Device::Cpu)) + 1,
                                _ => Tensor::linspace(0.9, 0.5, k, (Kind::Float, Device::Cpu)),
                            };
                            (key.to_string(), Value::Tensor(t))
                        })
                        .collect(),
                )
            })
            .collect(),
    )
}

const DETECTIONS: &str = r#"{"name": "detections", "from": 1, "column": "structs", "fields": [
    {"name": "box", "from": "boxes", "shape": [4]},
    {"name": "label", "from": "labels", "dtype": "int64"},
    {"name": "score", "from": "scores"}]}"#;
const KEYS: &[&str] = &["scores", "labels", "boxes"];

#[test]
fn structs_write_one_struct_per_entry() {
    let d = decl(DETECTIONS);
    let v = detections(&[(2, KEYS), (0, KEYS), (3, KEYS)]);
    let a = write(&d, &[(Some(v), vec![true, false, true, true])]).unwrap();
    let a = a.as_list::<i32>();
    let lens: Vec<usize> = (0..4).map(|i| a.value(i).len()).collect();
    assert_eq!(lens, [2, 0, 0, 3]);
    assert!(a.is_null(1) && !a.is_null(2));
    let row = a.value(3);
    let row = row.as_struct();
    let boxes = row.column(0).as_list::<i32>();
    let b2 = boxes.value(2);
    assert_eq!(
        b2.as_primitive::<Float32Type>().values().to_vec(),
        [0.8, 0.9, 1.0, 1.1]
    );
    assert_eq!(
        row.column(1).as_primitive::<Int64Type>().values().to_vec(),
        [1, 2, 3]
    );
    let scores = row
        .column(2)
        .as_primitive::<Float32Type>()
        .values()
        .to_vec();
    assert_eq!(
        scores,
        Vec::<f32>::try_from(Tensor::linspace(0.9, 0.5, 3, (Kind::Float, Device::Cpu))).unwrap()
    );
}

#[test]
fn structs_errors_name_the_missing_key_and_the_shapes() {
    let d = decl(DETECTIONS);
    let e = write_err(
        &d,
        detections(&[(1, KEYS), (1, &["scores", "labels"])]),
        &[true, true],
    );
    assert!(
        e.contains("result 1: row dict has no key `boxes` (keys: scores, labels)"),
        "{e}"
    );
    let bad = Value::List(vec![Value::Dict(vec![
        ("boxes".into(), Value::Tensor(randn(&[2, 5]))),
        (
            "labels".into(),
            Value::Tensor(Tensor::zeros([2], (Kind::Int64, Device::Cpu))),
        ),
        ("scores".into(), Value::Tensor(randn(&[2]))),
    ])]);
    let e = write_err(&d, bad, &[true]);
    assert!(
        e.contains(
            "field `box` (key `boxes`): declared [K, 4], the model returned a tensor [2, 5]"
        ),
        "{e}"
    );
    let bad = Value::List(vec![Value::Dict(vec![
        ("boxes".into(), Value::Tensor(randn(&[2, 4]))),
        (
            "labels".into(),
            Value::Tensor(Tensor::zeros([3], (Kind::Int64, Device::Cpu))),
        ),
        ("scores".into(), Value::Tensor(randn(&[2]))),
    ])]);
    let e = write_err(&d, bad, &[true]);
    assert!(
        e.contains("key `labels` has 3 entries (a tensor [3]), but key `boxes` has 2"),
        "{e}"
    );
    let e = write_err(&d, detections(&[(1, KEYS)]), &[true, true]);
    assert!(e.contains("a list of 1 per-row results for 2 rows"), "{e}");
    let e = write_err(&d, Value::Tensor(randn(&[2, 4])), &[true, true]);
    assert!(
        e.contains(
            "declared a list of per-row dicts (structs), the model returned a tensor [2, 4]"
        ),
        "{e}"
    );
    let e = write_err(&d, Value::List(vec![Value::Other("None".into())]), &[true]);
    assert!(
        e.contains("result 0: declared a dict per row (structs), the model returned None"),
        "{e}"
    );
}

#[test]
fn tensor_kinds_reject_results_that_do_not_fit() {
    let vector = decl(r#"{"name": "v", "column": "vector"}"#);
    let e = write_err(&vector, Value::Tensor(randn(&[4, 3, 8])), &[true; 4]);
    assert!(
        e.contains(
            "declared a vector per row, the model returned a tensor [4, 3, 8] (per row [3, 8])"
        ),
        "{e}"
    );
    let e = write_err(
        &vector,
        Value::Tensor(randn(&[4, 3])),
        &[true, true, false, true],
    );
    assert!(e.contains("a tensor [4, 3] for 3 rows"), "{e}");
    let e = write_err(&vector, Value::Other("a string".into()), &[true]);
    assert!(
        e.contains("declared a vector per row, the model returned a string"),
        "{e}"
    );
    let e = write_err(
        &vector,
        Value::List(vec![Value::Tensor(randn(&[1, 3]))]),
        &[true],
    );
    assert!(
        e.contains("the model returned a tuple/list of 1 (select one tensor with `from`)"),
        "{e}"
    );
    let e = write_err(&vector, Value::Tensor(Tensor::from(1.0f32)), &[true]);
    assert!(e.contains("a 0-d tensor"), "{e}");

    let scalar = decl(r#"{"name": "s", "column": "scalar"}"#);
    let e = write_err(&scalar, Value::Tensor(randn(&[2, 2])), &[true; 2]);
    assert!(e.contains("declared a scalar per row ([] or [1]), the model returned a tensor [2, 2] (per row [2])"), "{e}");

    let array = decl(r#"{"name": "a", "shape": [-1, 8], "post": [{"op": "softmax"}]}"#);
    let e = write_err(&array, Value::Tensor(randn(&[2, 3, 7])), &[true; 2]);
    assert!(e.contains("declared an array of shape [-1, 8] per row, the model returned a tensor [2, 3, 7] (per row [3, 7]), after post (softmax axis -1) [2, 3, 7] (per row [3, 7])"), "{e}");
    let e = write_err(&array, Value::Tensor(randn(&[2, 8])), &[true; 2]);
    assert!(e.contains("per row [8]"), "{e}");

    let png = decl(r#"{"name": "m", "column": "png", "post": [{"op": "argmax", "axis": 0}]}"#);
    let e = write_err(&png, Value::Tensor(randn(&[1, 4, 2, 3, 3])), &[true]);
    assert!(
        e.contains("declared a png of an [H, W] class map per row"),
        "{e}"
    );
    let logits = Tensor::zeros([1, 300, 2, 2], (Kind::Float, Device::Cpu));
    let _ = logits.get(0).get(299).fill_(1.0);
    let e = write_err(&png, Value::Tensor(logits), &[true]);
    assert!(e.contains("the class map has class 299"), "{e}");
}

#[test]
fn chunks_where_no_row_ran_are_all_null_in_every_kind() {
    let decls = [
        r#"{"name": "s", "column": "scalar"}"#,
        r#"{"name": "v", "column": "vector"}"#,
        r#"{"name": "a", "shape": [-1, 2]}"#,
        r#"{"name": "m", "column": "png", "post": [{"op": "argmax", "axis": 0}]}"#,
        DETECTIONS,
    ];
    for d in decls {
        let a = write(&decl(d), &[(None, vec![false; 3])]).unwrap();
        assert_eq!((a.len(), a.null_count()), (3, 3), "{d}");
    }
    let e = writer(&decl(decls[0]), 5)
        .append_chunk(None, &[true], &HashMap::new())
        .unwrap_err();
    assert!(e.contains("no output for the 1 rows that ran"), "{e}");
}

#[test]
fn finish_starts_afresh() {
    let d = decl(r#"{"name": "a", "shape": [2]}"#);
    let mut w = writer(&d, 5);
    w.append_chunk(
        Some(&Value::Tensor(randn(&[3, 2]))),
        &[true; 3],
        &HashMap::new(),
    )
    .unwrap();
    assert_eq!(w.finish().len(), 3);
    w.append_chunk(
        Some(&Value::Tensor(randn(&[1, 2]))),
        &[true],
        &HashMap::new(),
    )
    .unwrap();
    let a = w.finish();
    assert_eq!((a.len(), a.as_list::<i32>().values().len()), (1, 2));
}

#[test]
fn structs_fields_of_any_length_and_converted_dtypes() {
    let d = decl(
        r#"{"name": "kp", "column": "structs", "fields": [
            {"name": "points", "shape": [-1], "dtype": "float64"},
            {"name": "label", "from": "labels", "dtype": "int32"}]}"#,
    );
    let row = |k: i64, n: i64| {
        Value::Dict(vec![
            (
                "labels".into(),
                Value::Tensor(Tensor::arange(k, (Kind::Int64, Device::Cpu)).reshape([k, 1])),
            ),
            (
                "points".into(),
                Value::Tensor(Tensor::ones([k, n], (Kind::Float, Device::Cpu))),
            ),
        ])
    };
    let v = Value::List(vec![row(2, 3), row(1, 5)]);
    let a = write(&d, &[(Some(v), vec![true, true])]).unwrap();
    let a = a.as_list::<i32>();
    let second = a.value(1);
    let second = second.as_struct();
    let points = second.column(0).as_list::<i32>();
    assert_eq!(
        points
            .value(0)
            .as_primitive::<Float64Type>()
            .values()
            .to_vec(),
        [1.0; 5]
    );
    let first = a.value(0);
    assert_eq!(
        first
            .as_struct()
            .column(1)
            .as_primitive::<Int32Type>()
            .values()
            .to_vec(),
        [0, 1]
    );
}
