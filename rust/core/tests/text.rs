//! Text inputs (issue 18) against the Python `tokenizers` package, the oracle
//! (tests/fixtures/make_text_fixtures.py writes `text_expected.json` with it): token ids exact
//! for all texts, the spec's overrides of tokenizer.json, bad rows and bad tokenizer files.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{
    ArrayRef, BinaryArray, Int32Array, LargeBinaryArray, LargeStringArray, RecordBatch,
    StringArray, StringViewArray,
};
use serde_json::Value;
use torchspark_core::input::RowData;
use torchspark_core::input::text::{TextTokenizer, sort_keys};
use torchspark_core::spec::general::InputDecl;
use torchspark_core::{BatchOptions, ErrorKind, GeneralSpec, ModelConfig, Scorer};

use common::text_fixtures;

struct Expected {
    texts: Vec<String>,
    ids: Vec<Vec<i64>>,
    truncated: Vec<bool>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(text_fixtures().join("text_expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    Expected {
        texts: v["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect(),
        ids: v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_i64().unwrap())
                    .collect()
            })
            .collect(),
        truncated: v["truncated"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_bool().unwrap())
            .collect(),
    }
}

/// The text input of `ids.json` (the fixture spec), after normalize.
fn ids_spec() -> GeneralSpec {
    let text = std::fs::read_to_string(text_fixtures().join("ids.json")).unwrap();
    GeneralSpec::from_json(&text).unwrap()
}

fn tokenizer(decl: &InputDecl) -> TextTokenizer {
    TextTokenizer::load(&text_fixtures(), "inputs[0]", decl).unwrap()
}

fn batch(column: &str, array: ArrayRef) -> RecordBatch {
    RecordBatch::try_from_iter(vec![(column, array)]).unwrap()
}

/// The `ids` column of a predict on ids.pt, its -1 padding stripped, and the `error` column.
fn predicted_ids(out: &RecordBatch) -> (Vec<Vec<i64>>, Vec<Option<String>>) {
    let ids = out.column_by_name("ids").unwrap().as_list::<i32>();
    let rows = (0..ids.len())
        .map(|i| {
            let row = ids.value(i);
            row.as_primitive::<Int64Type>()
                .values()
                .iter()
                .copied()
                .filter(|&v| v != -1)
                .collect()
        })
        .collect();
    let err = out.column_by_name("error").unwrap().as_string::<i32>();
    let errors = (0..err.len())
        .map(|i| (!err.is_null(i)).then(|| err.value(i).to_string()))
        .collect();
    (rows, errors)
}

/// A scratch folder with a copy of the fixture tokenizer (and model), for edited specs.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("torchspark-text-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Token ids equal the Python `tokenizers` package's, exactly, for every fixture text (ASCII,
/// accents, CJK, Arabic, emoji, ZWJ sequences, combining marks, control characters, empty and
/// whitespace-only, a literal "[SEP]", texts cut at 256), truncation flags included: through
/// the tokenizer directly, through every column type the reader takes, and end to end
/// through `Scorer::predict` on ids.pt (which returns its padded input ids).
#[test]
fn token_ids_equal_python_tokenizers() {
    let exp = expected();
    let spec = ids_spec();
    let decl = &spec.inputs[0];
    let tok = tokenizer(decl);
    for (i, text) in exp.texts.iter().enumerate() {
        let (ids, cut) = tok.encode(text).unwrap();
        assert_eq!(ids, exp.ids[i], "text {i} {text:?}");
        assert_eq!(cut, exp.truncated[i], "text {i}: truncated flag");
    }
    assert!(
        exp.truncated.iter().any(|&t| t),
        "the fixture has cut texts"
    );
    assert_eq!(exp.ids[0][..], [101, 2023, 2003, 2019, 2742, 6251, 102][..]);

    // The reader over each column type: the same ids, and the count of cut rows.
    let strs: Vec<&str> = exp.texts.iter().map(String::as_str).collect();
    let bytes: Vec<&[u8]> = strs.iter().map(|s| s.as_bytes()).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(strs.clone())),
        Arc::new(LargeStringArray::from(strs.clone())),
        Arc::new(StringViewArray::from(strs.clone())),
        Arc::new(BinaryArray::from(bytes.clone())),
        Arc::new(LargeBinaryArray::from(bytes.clone())),
    ];
    let n = strs.len();
    let cut = exp.truncated.iter().filter(|&&t| t).count() as u64;
    for col in &columns {
        let r = torchspark_core::input::reader(
            decl,
            vec![("text", col)],
            &Default::default(),
            Some(&tok),
        )
        .unwrap();
        let rows = r.read(0..n, 2);
        for (i, row) in rows.into_iter().enumerate() {
            let row = row.unwrap();
            assert_eq!(row.shape, vec![exp.ids[i].len() as i64]);
            assert_eq!(
                row.data,
                RowData::I64(exp.ids[i].clone()),
                "{}",
                col.data_type()
            );
        }
        assert_eq!(r.truncated(), cut, "{}", col.data_type());
    }
    // int32 ids.
    let mut d32 = decl.clone();
    d32.dtype = torchspark_core::spec::general::DType::Int32;
    let r = torchspark_core::input::reader(
        &d32,
        vec![("text", &columns[0])],
        &Default::default(),
        Some(&tok),
    )
    .unwrap();
    let row = r.read(0..1, 1).pop().unwrap().unwrap();
    let want: Vec<i32> = exp.ids[0].iter().map(|&v| v as i32).collect();
    assert_eq!(row.data, RowData::I32(want));

    // End to end: batches of 8, the rows padded to each batch's longest and masked.
    let scorer = Scorer::open(&ModelConfig::new(text_fixtures().join("ids.pt"))).unwrap();
    let opts = BatchOptions {
        batch_size: 8,
        ..BatchOptions::default()
    };
    let out = scorer
        .predict(&batch("text", columns[0].clone()), &opts)
        .unwrap();
    let (ids, errors) = predicted_ids(&out);
    assert!(errors.iter().all(Option::is_none), "{errors:?}");
    assert_eq!(ids, exp.ids);

    // Sort keys: characters (not bytes) of strings, bytes of binary values, 0 for nulls.
    let keys = sort_keys(&columns[0]).unwrap();
    let chars: Vec<usize> = strs.iter().map(|s| s.chars().count()).collect();
    assert_eq!(keys, chars);
    assert_eq!(sort_keys(&columns[2]).unwrap(), chars);
    let blen: Vec<usize> = bytes.iter().map(|b| b.len()).collect();
    assert_eq!(sort_keys(&columns[3]).unwrap(), blen);
    let with_null: ArrayRef = Arc::new(StringArray::from(vec![Some("héllo"), None]));
    assert_eq!(sort_keys(&with_null).unwrap(), vec![5, 0]);
    let ints: ArrayRef = Arc::new(Int32Array::from(vec![1]));
    assert!(sort_keys(&ints).is_none());
}

/// tokenizer.json fixes padding (Fixed 128) and truncation (128) for MiniLM; the spec's
/// `max_length` replaces both (sentence-transformers cuts at 256 and does not pad a row),
/// and `add_special_tokens: false` drops [CLS] and [SEP].
#[test]
fn spec_overrides_tokenizer_padding_and_truncation() {
    let exp = expected();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(text_fixtures().join("minilm.tokenizer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        file["truncation"]["max_length"], 128,
        "the file's own truncation"
    );
    assert_eq!(
        file["padding"]["strategy"]["Fixed"], 128,
        "the file's own padding"
    );
    let spec = ids_spec();
    let tok = tokenizer(&spec.inputs[0]);
    // No padding: a short text keeps its length; no cut at 128: a long one has 256.
    assert_eq!(tok.encode("hello").unwrap().0, vec![101, 7592, 102]);
    let long = exp.truncated.iter().position(|&t| t).unwrap();
    let (ids, cut) = tok.encode(&exp.texts[long]).unwrap();
    assert_eq!((ids.len(), cut), (256, true));
    let fits = exp.ids.iter().position(|r| r.len() == 256).unwrap();
    if !exp.truncated[fits] {
        // Exactly max_length tokens is not a cut.
        assert!(!tok.encode(&exp.texts[fits]).unwrap().1);
    }

    // max_length 16: the first 15 tokens then [SEP] (longest-first, right), flagged.
    let mut short = spec.inputs[0].clone();
    short.max_length = Some(16);
    let t16 = tokenizer(&short);
    let (ids, cut) = t16.encode(&exp.texts[long]).unwrap();
    let mut want = exp.ids[long][..15].to_vec();
    want.push(102);
    assert_eq!((ids, cut), (want, true));
    let (ids, cut) = t16.encode("hello").unwrap();
    assert_eq!((ids, cut), (vec![101, 7592, 102], false));

    // No special tokens: the same ids without [CLS]/[SEP]; max_length counts them all.
    let mut plain = spec.inputs[0].clone();
    plain.add_special_tokens = Some(false);
    plain.max_length = Some(4);
    let tp = tokenizer(&plain);
    let (ids, cut) = tp.encode(&exp.texts[0]).unwrap();
    assert_eq!((ids, cut), (exp.ids[0][1..5].to_vec(), true));
    let (ids, _) = tp.encode("").unwrap();
    assert!(ids.is_empty());
}

/// Long texts tokenize only their head when that is exact (BERT normalizer and
/// pre-tokenizer): the same ids and truncation flags as tokenizing the whole text, at several
/// max_length, for the fixture texts and long texts built to trip a cut (no spaces, CJK,
/// control and Unicode whitespace, "[SEP]" and accents near every cut point).
#[test]
fn long_texts_give_the_ids_of_the_whole_text() {
    use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};
    let exp = expected();
    let spec = ids_spec();
    let file = text_fixtures().join("minilm.tokenizer.json");
    let words = [
        "alpha",
        "Beta\u{85}gamma",
        "déjà\tvu",
        "[SEP]",
        "naïve",
        "\u{3000}",
        "東京",
        "e\u{301}",
        "x\u{1c}y",
        "\n",
        "supercalifragilistic",
        "🍕",
        "a,b",
        "",
    ];
    let mut texts: Vec<String> = exp.texts.clone();
    for seed in 0..6usize {
        let n = 400 + seed * 700;
        let t: Vec<&str> = (0..n)
            .map(|i| words[(i * 7 + seed * 3 + i / 5) % words.len()])
            .collect();
        texts.push(t.join(if seed % 2 == 0 { " " } else { "  " }));
    }
    // max_length 8 reads 1,024 characters: cut at the U+0085 (BERT deletes it: "playi|ngx.."
    // is one word) the head would give "play ##i", the text "playing".
    let trap = format!(
        "{}playi\u{85}ng{} more",
        format!("{} ", "z".repeat(200)).repeat(5),
        "x".repeat(20)
    );
    texts.push(format!("{trap}{}", " words".repeat(400)));
    texts.push("東京".repeat(3000));
    texts.push("word ".repeat(3000));
    for max_length in [8, 32, 256, 512] {
        let mut d = spec.inputs[0].clone();
        d.max_length = Some(max_length);
        let tok = tokenizer(&d);
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
            let want = whole.encode_fast(text.as_str(), true).unwrap();
            let want_ids: Vec<i64> = want.get_ids().iter().map(|&v| i64::from(v)).collect();
            let (ids, cut) = tok.encode(text).unwrap();
            assert_eq!(ids, want_ids, "text {i} at max_length {max_length}");
            assert_eq!(
                cut,
                !want.get_overflowing().is_empty(),
                "text {i} at {max_length}"
            );
        }
    }
}

/// A null, bad UTF-8 in a binary column and a good row: row errors name the row, the input
/// and the column, the good rows are scored; an int column fails the batch naming the
/// input, the column and its type.
#[test]
fn bad_text_rows_name_row_and_column() {
    let exp = expected();
    let scorer = Scorer::open(&ModelConfig::new(text_fixtures().join("ids.pt"))).unwrap();
    let opts = BatchOptions {
        batch_size: 2,
        row_offset: 100,
        ..BatchOptions::default()
    };
    let bin: ArrayRef = Arc::new(BinaryArray::from(vec![
        Some(exp.texts[0].as_bytes()),
        None,
        Some(&b"caf\xc3\xa9 \xff!"[..]),
        Some(b"".as_slice()),
        Some(exp.texts[1].as_bytes()),
    ]));
    let out = scorer.predict(&batch("text", bin), &opts).unwrap();
    let (ids, errors) = predicted_ids(&out);
    assert_eq!(errors[0], None);
    assert_eq!(ids[0], exp.ids[0]);
    let e1 = errors[1].as_deref().unwrap();
    for needle in ["row 101", "input_ids", "text", "null"] {
        assert!(e1.contains(needle), "{e1}");
    }
    let e2 = errors[2].as_deref().unwrap();
    for needle in [
        "row 102",
        "input_ids",
        "text",
        "not UTF-8: invalid byte at offset 6",
    ] {
        assert!(e2.contains(needle), "{e2}");
    }
    // An empty text is [CLS] [SEP], like the reference.
    assert_eq!(errors[3], None);
    assert_eq!(ids[3], vec![101, 102]);
    assert_eq!(errors[4], None);
    assert_eq!(ids[4], exp.ids[1]);

    let ints: ArrayRef = Arc::new(Int32Array::from(vec![1, 2]));
    let e = scorer.predict(&batch("text", ints), &opts).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Input, "{msg}");
    for needle in ["input_ids", "text", "Int32", "string or binary"] {
        assert!(msg.contains(needle), "{msg}");
    }
}

/// Tokenizer files that cannot serve the spec fail the load as spec errors naming the
/// file: not JSON, a sha256 pin that differs, a vocabulary larger than `vocab_size`, a
/// missing file.
#[test]
fn tokenizer_load_errors_name_the_file() {
    let fixtures = text_fixtures();
    let dir = scratch("load");
    let model = dir.join("ids.pt");
    std::fs::copy(fixtures.join("ids.pt"), &model).unwrap();
    let good = std::fs::read(fixtures.join("minilm.tokenizer.json")).unwrap();
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("ids.json")).unwrap()).unwrap();
    let open = |tokenizer: &[u8], edit: &dyn Fn(&mut Value)| {
        std::fs::write(dir.join("tok.json"), tokenizer).unwrap();
        let mut s = spec.clone();
        s["inputs"][0]["tokenizer"] = "tok.json".into();
        edit(&mut s);
        std::fs::write(dir.join("ids.json"), s.to_string()).unwrap();
        Scorer::open(&ModelConfig::new(&model))
    };
    let file = dir.join("tok.json").display().to_string();
    let refused = |r: torchspark_core::Result<Scorer>, needles: &[&str]| {
        let e = r.expect_err("the load must fail");
        let msg = e.to_string();
        assert_eq!(e.kind(), ErrorKind::Spec, "{msg}");
        assert!(msg.contains(&file), "{msg} does not name {file}");
        assert!(msg.contains("inputs[0]"), "{msg}");
        for n in needles {
            assert!(msg.contains(n), "{msg} does not contain {n}");
        }
    };
    // The copy loads (the pin is of these bytes).
    open(&good, &|_| {}).unwrap();
    // Without a pin, the same spec beside a replaced tokenizer reloads (and fails here).
    let unpinned = |s: &mut Value| {
        s["inputs"][0]
            .as_object_mut()
            .unwrap()
            .remove("tokenizer_sha256");
    };
    open(&good, &unpinned).unwrap();
    refused(
        open(b"{\"version\": \"1.0\", \"model\": ", &unpinned),
        &["not a Hugging Face tokenizer.json"],
    );
    let mut edited = good.clone();
    edited.extend_from_slice(b"\n");
    refused(open(&edited, &|_| {}), &["tokenizer_sha256 pins be50c362"]);
    refused(
        open(&good, &|s| s["inputs"][0]["vocab_size"] = 1000.into()),
        &["30522 tokens", "vocab_size 1000"],
    );
    let missing = |s: &mut Value| s["inputs"][0]["tokenizer"] = "tok.json".into();
    std::fs::remove_file(dir.join("tok.json")).ok();
    let mut s = spec.clone();
    missing(&mut s);
    std::fs::write(dir.join("ids.json"), s.to_string()).unwrap();
    refused(Scorer::open(&ModelConfig::new(&model)), &["cannot read"]);
    let _ = std::fs::remove_dir_all(&dir);
}
