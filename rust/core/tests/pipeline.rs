//! The Scorer side of the engine (issue 19): `submit` prepares on the caller's thread and
//! queues forward passes, `Pending::wait` finishes; its result is the very batch `score`,
//! `featurize` and `predict` return, in `shared` and `per-task` mode, for images (a bad row
//! included), a tabular MLP and MiniLM with its rows sorted by length.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{Float64Builder, ListBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use torchspark_core::engine::EngineMode;
use torchspark_core::{BatchOptions, ModelConfig, Op, Pending, Scorer, StageTimes};

use common::{binary_batch, expected, fixtures, general_fixtures, image_bytes, text_fixtures};

fn open(path: &Path, mode: EngineMode) -> Scorer {
    let mut config = ModelConfig::new(path);
    config.num_threads = Some(1);
    config.engine.mode = mode;
    Scorer::open(&config).unwrap()
}

/// `pending`'s batch, polling in short slices as the FFI callers do.
fn collect(mut pending: Pending) -> RecordBatch {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(out) = pending.wait(Duration::from_millis(5)).unwrap() {
            // The result comes once.
            assert!(pending.wait(Duration::ZERO).is_err());
            return out;
        }
        assert!(Instant::now() < deadline, "no result within 60 s");
    }
}

/// Equal columns, bit for bit (the schema's metadata holds times, which differ).
fn assert_same(got: &RecordBatch, want: &RecordBatch, what: &str) {
    assert_eq!(
        got.schema().fields(),
        want.schema().fields(),
        "{what}: fields"
    );
    assert_eq!(got.num_rows(), want.num_rows(), "{what}: rows");
    for (i, (g, w)) in got.columns().iter().zip(want.columns()).enumerate() {
        assert_eq!(g.to_data(), w.to_data(), "{what}: column {i}");
    }
}

/// Ten fixture images with a bad row and a null in the last chunk of 4 (so that no two jobs
/// of the call could share a pass: the batch composition is per-task's).
fn image_batch() -> RecordBatch {
    let bytes: Vec<Vec<u8>> = expected().iter().map(|e| image_bytes(&e.file)).collect();
    let mut rows: Vec<Option<&[u8]>> = bytes.iter().take(8).map(|b| Some(b.as_slice())).collect();
    rows.push(Some(b"not an image"));
    rows.push(None);
    binary_batch(&rows)
}

fn list_f64(rows: &[Vec<f64>]) -> ArrayRef {
    let mut b = ListBuilder::new(Float64Builder::new());
    for r in rows {
        b.values().append_slice(r);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn diabetes_batch(n: usize) -> RecordBatch {
    let data = common::general_json("diabetes.json");
    let x: Vec<Vec<f64>> = data["X"]
        .as_array()
        .unwrap()
        .iter()
        .take(n)
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    RecordBatch::try_from_iter([("features", list_f64(&x))]).unwrap()
}

fn text_batch() -> RecordBatch {
    let texts: Vec<Option<&str>> = vec![
        Some("a"),
        Some("The quick brown fox jumps over the lazy dog, twice, and then once more."),
        None,
        Some("Spark runs the tasks; the engine runs the forward passes."),
        Some("short one"),
        Some(""),
        Some("Une phrase en français, avec des accents: é è à ç."),
    ];
    let col: ArrayRef = Arc::new(StringArray::from(texts));
    RecordBatch::try_from_iter([("text", col)]).unwrap()
}

#[test]
fn submit_then_wait_equals_score_featurize_predict() {
    let resnet = fixtures().join("resnet20.pt");
    let mlp = general_fixtures().join("diabetes_mlp.pt");
    let minilm = text_fixtures().join("minilm.pt");
    let images = image_batch();
    let tabular = diabetes_batch(50);
    let texts = text_batch();
    let image_opts = BatchOptions {
        batch_size: 4,
        ..BatchOptions::default()
    };
    let mlp_opts = BatchOptions {
        batch_size: 16,
        ..BatchOptions::default()
    };
    let text_opts = BatchOptions {
        batch_size: 2,
        sort_by_length: true,
        ..BatchOptions::default()
    };
    // The reference: per-task mode's synchronous calls.
    let reference = open(&resnet, EngineMode::PerTask);
    let want_score = reference.score(&images, &image_opts).unwrap();
    let want_features = reference.featurize(&images, &image_opts).unwrap();
    let want_mlp = open(&mlp, EngineMode::PerTask)
        .predict(&tabular, &mlp_opts)
        .unwrap();
    let want_text = open(&minilm, EngineMode::PerTask)
        .predict(&texts, &text_opts)
        .unwrap();
    // The bad row and the null carry their reasons; the good rows none.
    let errors: Vec<Option<String>> = (0..10)
        .map(|i| common::str_row(&want_score, "error", i))
        .collect();
    assert!(errors[..8].iter().all(Option::is_none), "{errors:?}");
    assert!(
        errors[8]
            .as_deref()
            .unwrap()
            .starts_with("row 8: input `image` (column content): "),
        "{errors:?}"
    );
    assert_eq!(
        errors[9].as_deref(),
        Some("row 9: input `image` (column content): input is null")
    );
    assert!(common::str_row(&want_text, "error", 2).is_some());

    for mode in [EngineMode::Shared, EngineMode::PerTask] {
        let what = |s: &str| format!("{s} ({mode:?})");
        let scorer = open(&resnet, mode);
        let got = collect(scorer.submit(Op::Score, &images, &image_opts, 7).unwrap());
        assert_same(&got, &want_score, &what("score"));
        // Three chunks of 4, 4 and 2 rows (of which 0 good in the last): two jobs.
        let times = StageTimes::of(&got).unwrap();
        assert_eq!(times.batch_jobs, 2, "{}", what("score jobs"));
        assert_eq!(times.batch_rows, 8, "{}", what("score rows"));
        assert!(times.forward > Duration::ZERO && times.preprocess > Duration::ZERO);
        for key in [
            StageTimes::QUEUE_KEY,
            StageTimes::BATCH_ROWS_KEY,
            StageTimes::BATCH_JOBS_KEY,
        ] {
            assert!(got.schema().metadata().contains_key(key), "{key}");
        }
        assert_same(
            &scorer.score(&images, &image_opts).unwrap(),
            &want_score,
            &what("score()"),
        );
        let got = collect(
            scorer
                .submit(Op::Featurize, &images, &image_opts, 7)
                .unwrap(),
        );
        assert_same(&got, &want_features, &what("featurize"));

        let got = collect(
            open(&mlp, mode)
                .submit(Op::Predict, &tabular, &mlp_opts, 8)
                .unwrap(),
        );
        assert_same(&got, &want_mlp, &what("diabetes"));

        let got = collect(
            open(&minilm, mode)
                .submit(Op::Predict, &texts, &text_opts, 9)
                .unwrap(),
        );
        assert_same(&got, &want_text, &what("minilm"));
        assert_eq!(
            got.schema().metadata().get("torchspark.truncated_rows"),
            want_text
                .schema()
                .metadata()
                .get("torchspark.truncated_rows")
        );
    }
}

#[test]
fn two_pendings_in_flight_from_one_thread_come_back_right() {
    let scorer = open(&fixtures().join("resnet20.pt"), EngineMode::Shared);
    let all = image_batch();
    // Every job holds 2 rows (a full pass), so none shares a pass: per-task's composition.
    let (first, second) = (all.slice(0, 4), all.slice(4, 6));
    let opts = BatchOptions {
        batch_size: 2,
        ..BatchOptions::default()
    };
    let second_opts = BatchOptions {
        row_offset: 4,
        ..opts.clone()
    };
    // Batch k+1 is submitted before batch k is collected (the JVM's double buffering); each
    // comes back with its own rows, in order.
    let a = scorer.submit(Op::Score, &first, &opts, 11).unwrap();
    let b = scorer.submit(Op::Score, &second, &second_opts, 11).unwrap();
    // A pending may be collected on another thread than the one that submitted it.
    let b = std::thread::spawn(move || collect(b));
    let a = collect(a);
    let b = b.join().unwrap();
    let reference = open(&fixtures().join("resnet20.pt"), EngineMode::PerTask);
    assert_same(&a, &reference.score(&first, &opts).unwrap(), "first");
    assert_same(
        &b,
        &reference.score(&second, &second_opts).unwrap(),
        "second",
    );
    assert_eq!(
        common::str_row(&b, "error", 4).as_deref().map(|e| &e[..6]),
        Some("row 8:")
    );
}

#[test]
fn auto_batch_sizes() {
    let resnet = fixtures().join("resnet20.pt");
    assert_eq!(open(&resnet, EngineMode::PerTask).auto_batch_size(), 256);
    // The same network under a 224x224 spec: 602 KB a row, 16 rows.
    let dir = std::env::temp_dir().join(format!("torchspark-auto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("resnet20.json")).unwrap())
            .unwrap();
    spec["input"]["height"] = 224.into();
    spec["input"]["width"] = 224.into();
    let spec_path = dir.join("resnet224.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let mut config = ModelConfig::new(&resnet);
    config.spec_path = Some(spec_path);
    config.num_threads = Some(1);
    assert_eq!(Scorer::open(&config).unwrap().auto_batch_size(), 16);
    std::fs::remove_dir_all(&dir).unwrap();
    let mlp = general_fixtures().join("diabetes_mlp.pt");
    assert_eq!(open(&mlp, EngineMode::PerTask).auto_batch_size(), 8192);
    let minilm = text_fixtures().join("minilm.pt");
    assert_eq!(open(&minilm, EngineMode::PerTask).auto_batch_size(), 64);
}

#[test]
fn batch_size_zero_is_auto() {
    let auto = BatchOptions {
        batch_size: 0,
        ..BatchOptions::default()
    };
    // 300 float rows: auto (256) cuts them into 256 + 44.
    let row: Vec<f32> = (0..3 * 32 * 32).map(|i| (i % 97) as f32 / 97.0).collect();
    let rows: Vec<Option<&[f32]>> = (0..300).map(|_| Some(row.as_slice())).collect();
    let images = common::float_batch(&rows);
    let scorer = open(&fixtures().join("resnet20.pt"), EngineMode::PerTask);
    let got = scorer.score(&images, &auto).unwrap();
    let times = StageTimes::of(&got).unwrap();
    assert_eq!((times.batch_jobs, times.batch_rows), (2, 300));
    let want = scorer
        .score(
            &images,
            &BatchOptions {
                batch_size: 256,
                ..BatchOptions::default()
            },
        )
        .unwrap();
    assert_same(&got, &want, "images, auto = 256");

    let tabular = diabetes_batch(100);
    let mlp = open(
        &general_fixtures().join("diabetes_mlp.pt"),
        EngineMode::PerTask,
    );
    let got = mlp.predict(&tabular, &auto).unwrap();
    let times = StageTimes::of(&got).unwrap();
    assert_eq!((times.batch_jobs, times.batch_rows), (1, 100));
    let want = mlp
        .predict(
            &tabular,
            &BatchOptions {
                batch_size: 8192,
                ..BatchOptions::default()
            },
        )
        .unwrap();
    assert_same(&got, &want, "tabular, auto = 8192");
}

/// A pass that fails (a spec of 1 channel for a 3-channel network) fails the call with
/// libtorch's reason, naming the model and the chunk's rows.
#[test]
fn a_failed_forward_names_the_model_and_its_rows() {
    let resnet = fixtures().join("resnet20.pt");
    let dir = std::env::temp_dir().join(format!("torchspark-grey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("resnet20.json")).unwrap())
            .unwrap();
    spec["input"]["channels"] = 1.into();
    spec["input"]["channel_order"] = serde_json::Value::Null;
    spec["preprocess"]["mean"] = serde_json::json!([0.5]);
    spec["preprocess"]["std"] = serde_json::json!([0.25]);
    let spec_path = dir.join("grey.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let row = vec![0.5f32; 32 * 32];
    let rows: Vec<Option<&[f32]>> = (0..3).map(|_| Some(row.as_slice())).collect();
    let opts = BatchOptions {
        batch_size: 2,
        row_offset: 10,
        ..BatchOptions::default()
    };
    for mode in [EngineMode::Shared, EngineMode::PerTask] {
        let mut config = ModelConfig::new(&resnet);
        config.spec_path = Some(spec_path.clone());
        config.num_threads = Some(1);
        config.engine.mode = mode;
        let scorer = Scorer::open(&config).unwrap();
        let e = scorer
            .score(&common::float_batch(&rows), &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resnet20.pt"), "{e}");
        assert!(e.contains("rows 10-11: forward pass failed: "), "{e}");
        assert!(e.contains("channels"), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Errors of the batch as a whole come from `submit` itself (nothing is queued); a pending
/// that was dropped uncollected costs nothing more.
#[test]
fn errors_of_the_whole_batch_come_from_submit() {
    let mlp = open(
        &general_fixtures().join("diabetes_mlp.pt"),
        EngineMode::Shared,
    );
    let wrong: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
    let batch = RecordBatch::try_from_iter([("other", wrong)]).unwrap();
    let e = mlp
        .submit(Op::Predict, &batch, &BatchOptions::default(), 21)
        .err()
        .expect("a missing column fails the submit");
    assert_eq!(e.kind(), torchspark_core::ErrorKind::Input, "{e}");
    assert!(e.to_string().contains("`features`"), "{e}");
    // An image op on a general model says it is not an image model.
    let e = mlp
        .submit(
            Op::Score,
            &binary_batch(&[Some(b"x")]),
            &BatchOptions::default(),
            21,
        )
        .err()
        .expect("score on a general model fails");
    assert!(e.to_string().contains("general model"), "{e}");
    drop(
        mlp.submit(
            Op::Predict,
            &diabetes_batch(3),
            &BatchOptions::default(),
            21,
        )
        .unwrap(),
    );
    let out = mlp
        .predict(&diabetes_batch(3), &BatchOptions::default())
        .unwrap();
    assert_eq!(out.num_rows(), 3);
}
