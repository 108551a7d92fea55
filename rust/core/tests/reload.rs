//! A model file replaced or rewritten at the same path is a new model; handles opened before
//! keep theirs (its own binary: the load counter is process-wide).
#![allow(clippy::unwrap_used)] // a failed unwrap in a helper is a failed test

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arrow_array::RecordBatch;
use common::*;
use torchspark_core::model::get_or_load;
use torchspark_core::{BatchOptions, ModelConfig, Scorer, load_count};

/// The load counter is process-wide: these tests take turns.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("torchspark-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces `dest` by renaming a fresh copy of `src` over it: a new inode, as `mv`, `rsync` and
/// most uploaders do.
/// Fixture `name`'s model and spec copied into `dir` as `stem.pt` / `stem.json`.
fn copy_fixture(fx: &Path, name: &str, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let (model, spec) = (
        dir.join(format!("{stem}.pt")),
        dir.join(format!("{stem}.json")),
    );
    std::fs::copy(fx.join(format!("{name}.pt")), &model).unwrap();
    std::fs::copy(fx.join(format!("{name}.json")), &spec).unwrap();
    (model, spec)
}

fn replace_by_rename(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("part");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// Rewrites `dest` in place (same inode) with `bytes`, then puts its old mtime back, as
/// `cp --preserve=timestamps` onto an existing file would.
fn rewrite_in_place(dest: &Path, bytes: &[u8]) {
    let mtime: SystemTime = std::fs::metadata(dest).unwrap().modified().unwrap();
    std::fs::write(dest, bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(dest).unwrap();
    f.set_modified(mtime).unwrap();
}

fn images() -> (Vec<String>, RecordBatch) {
    let exp = expected();
    let bytes: Vec<Vec<u8>> = exp.iter().map(|e| image_bytes(&e.file)).collect();
    let rows: Vec<Option<&[u8]>> = bytes.iter().map(|b| Some(b.as_slice())).collect();
    (
        exp.iter().map(|e| e.file.clone()).collect(),
        binary_batch(&rows),
    )
}

/// Asserts `scorer`'s probabilities equal PyTorch's `want` per image (lossless images: 1e-5).
fn assert_scores(scorer: &Scorer, batch: &RecordBatch, files: &[String], want: &[Vec<f32>]) {
    let out = scorer.score(batch, &BatchOptions::default()).unwrap();
    for (i, (file, w)) in files.iter().zip(want).enumerate() {
        let p = list_row(&out, "probability", i).unwrap();
        let d = max_abs_diff(&p, w);
        let tol = if file.ends_with(".jpg") { 2e-2 } else { 1e-5 };
        assert!(d <= tol, "{file}: max abs diff {d}");
    }
}

#[test]
fn a_model_replaced_at_the_same_path_loads_anew_and_old_handles_keep_theirs() {
    let _turn = serial();
    let fx = fixtures();
    let exp = expected();
    let resnet: Vec<Vec<f32>> = exp.iter().map(|e| e.probability.clone()).collect();
    let tuple: Vec<Vec<f32>> = exp.iter().map(|e| e.tuple_probability.clone()).collect();
    let (files, batch) = images();
    let dir = TempDir::new("reload");
    let (model, spec) = copy_fixture(&fx, "resnet20", &dir.0, "k");
    let config = ModelConfig {
        num_threads: Some(1),
        ..ModelConfig::new(&model)
    };
    let before = load_count();

    // Model A, opened twice: one load, one shared model.
    let a = Scorer::open(&config).unwrap();
    assert_scores(&a, &batch, &files, &resnet);
    let again = get_or_load(&config).unwrap();
    assert!(
        std::ptr::eq(a.model(), &*again),
        "an unchanged file is not reloaded"
    );
    assert_eq!(load_count(), before + 1);
    let first = Arc::downgrade(&again);
    drop(again);

    // Replaced by rename (same weights, kept as parameters): a new model, the stale entry leaves
    // the registry, and only the handle opened before still holds it.
    replace_by_rename(&fx.join("resnet20_params.pt"), &model);
    let a2 = Scorer::open(&config).unwrap();
    assert_eq!(load_count(), before + 2);
    assert!(!std::ptr::eq(a.model(), a2.model()));
    assert_scores(&a2, &batch, &files, &resnet);
    assert!(
        first.upgrade().is_some(),
        "held by the handle opened before"
    );

    // Model B written over the same inode, its spec too: B's outputs, A's handle unchanged.
    let inode = std::fs::metadata(&model).unwrap().ino();
    rewrite_in_place(&model, &std::fs::read(fx.join("tuple_net.pt")).unwrap());
    replace_by_rename(&fx.join("tuple_net.json"), &spec);
    assert_eq!(std::fs::metadata(&model).unwrap().ino(), inode);
    let b = Scorer::open(&config).unwrap();
    assert_eq!(load_count(), before + 3);
    assert_scores(&b, &batch, &files, &tuple);
    assert_scores(&a, &batch, &files, &resnet);
    drop((a, a2));
    assert!(first.upgrade().is_none(), "freed with its last handle");
    let b_again = Scorer::open(&config).unwrap();
    assert!(std::ptr::eq(b.model(), b_again.model()));
    assert_eq!(load_count(), before + 3);
}

#[test]
fn a_spec_edited_in_place_with_its_length_and_mtime_kept_reloads() {
    let _turn = serial();
    let fx = fixtures();
    let dir = TempDir::new("respec");
    let (model, spec) = copy_fixture(&fx, "tuple_net", &dir.0, "t");
    let config = ModelConfig::new(&model);
    let old = Scorer::open(&config).unwrap();
    let labels = |s: &Scorer| s.model().image_spec().unwrap().labels.clone().unwrap();
    assert_eq!(labels(&old), ["w", "x", "y", "z"]);
    let text = std::fs::read_to_string(&spec).unwrap();
    let edited = text
        .replace("\"w\"", "\"a\"")
        .replace("\"x\"", "\"b\"")
        .replace("\"y\"", "\"c\"")
        .replace("\"z\"", "\"d\"");
    assert_eq!(edited.len(), text.len());
    let before_meta = std::fs::metadata(&spec).unwrap();
    rewrite_in_place(&spec, edited.as_bytes());
    let after_meta = std::fs::metadata(&spec).unwrap();
    assert_eq!(
        before_meta.modified().unwrap(),
        after_meta.modified().unwrap()
    );
    assert_eq!(
        (before_meta.ino(), before_meta.len()),
        (after_meta.ino(), after_meta.len())
    );
    let new = Scorer::open(&config).unwrap();
    assert_eq!(labels(&new), ["a", "b", "c", "d"]);
    assert_eq!(labels(&old), ["w", "x", "y", "z"]);
}

#[test]
fn a_model_that_fails_to_load_after_a_change_is_reported_and_not_served_stale() {
    let _turn = serial();
    let fx = fixtures();
    let dir = TempDir::new("broken");
    let (model, _spec) = copy_fixture(&fx, "resnet20", &dir.0, "m");
    let config = ModelConfig::new(&model);
    let good = Scorer::open(&config).unwrap();
    std::fs::write(&model, b"not a model").unwrap();
    let e = Scorer::open(&config).unwrap_err().to_string();
    assert!(e.contains(&*model.to_string_lossy()), "{e}");
    // Restored: loads again (a failed load leaves nothing behind).
    replace_by_rename(&fx.join("resnet20.pt"), &model);
    let restored = Scorer::open(&config).unwrap();
    assert!(!std::ptr::eq(good.model(), restored.model()));
}
