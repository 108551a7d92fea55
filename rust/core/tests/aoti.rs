//! AOTInductor packages (`.pt2`) against PyTorch running the same package
//! (`torch._inductor.aoti_load_package`, see tests/fixtures/make_fixtures.py).
// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use common::*;
use torchspark_core::{BatchOptions, ErrorKind, Format, ModelConfig, Precision, Scorer};

/// JPEG decoders differ by a level here and there (see scoring.rs); lossless must match.
fn tol(file: &str) -> f32 {
    if file.ends_with(".jpg") { 2e-2 } else { 1e-5 }
}

fn open(name: &str) -> Scorer {
    Scorer::open(&ModelConfig::new(fixtures().join(name))).unwrap()
}

/// Every fixture image, repeated to `n` rows at least.
fn image_batch(exp: &[ModelExpected], n: usize) -> (RecordBatch, Vec<usize>) {
    let bytes: Vec<Vec<u8>> = exp.iter().map(|e| image_bytes(&e.file)).collect();
    let index: Vec<usize> = (0..n.max(exp.len())).map(|i| i % exp.len()).collect();
    let rows: Vec<Option<&[u8]>> = index.iter().map(|&i| Some(bytes[i].as_slice())).collect();
    (binary_batch(&rows), index)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("torchspark-aoti-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the TupleNet package (spec edited) loads and scores the first fixture image as
/// PyTorch ran the original.
fn scores_first_image_like_pytorch(pt2: &Path) {
    let exp = expected_for("tuple_net_aoti");
    let (batch, _) = image_batch(&exp, 0);
    let out = Scorer::open(&ModelConfig::new(pt2))
        .unwrap()
        .score(&batch, &BatchOptions::default())
        .unwrap();
    let p = list_row(&out, "probability", 0).unwrap();
    assert!(max_abs_diff(&p, &exp[0].probability) <= 1e-5);
}

/// `package` and its spec copied into `dir` as `model.pt2` / `model.json`, with `edit` applied
/// to the spec.
fn copy_package(dir: &Path, package: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let pt2 = dir.join("model.pt2");
    std::fs::copy(fixtures().join(package), &pt2).unwrap();
    let spec_path = fixtures().join(package).with_extension("json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spec_path).unwrap()).unwrap();
    edit(&mut spec);
    std::fs::write(dir.join("model.json"), spec.to_string()).unwrap();
    pt2
}

#[test]
fn package_scores_like_pytorch_at_batch_sizes_1_7_256() {
    let exp = expected_for("resnet20_aoti");
    let (batch, index) = image_batch(&exp, 256);
    let scorer = open("resnet20_aoti.pt2");
    assert_eq!(scorer.model().format(), Format::Aoti);
    for batch_size in [1, 7, 256] {
        let o = BatchOptions {
            batch_size,
            ..BatchOptions::default()
        };
        let scored = scorer.score(&batch, &o).unwrap();
        let features = scorer.featurize(&batch, &o).unwrap();
        for (row, &i) in index.iter().enumerate() {
            let e = &exp[i];
            assert_eq!(str_row(&scored, "error", row), None, "{}", e.file);
            let p = list_row(&scored, "probability", row).unwrap();
            let d = max_abs_diff(&p, &e.probability);
            assert!(d <= tol(&e.file), "bs {batch_size} {}: {d}", e.file);
            // output_index 1: the 64 pooled features forward returns beside the logits.
            let f = list_row(&features, "features", row).unwrap();
            let scale = e.features.iter().fold(1f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&f, &e.features);
            assert!(d <= tol(&e.file) * scale, "bs {batch_size} {}: {d}", e.file);
        }
    }
}

#[test]
fn package_and_torchscript_give_the_same_predictions() {
    let exp = expected();
    let (batch, _) = image_batch(&expected_for("resnet20_aoti"), 0);
    let pt = open("resnet20.pt")
        .score(&batch, &BatchOptions::default())
        .unwrap();
    let pt2 = open("resnet20_aoti.pt2")
        .score(&batch, &BatchOptions::default())
        .unwrap();
    for (i, e) in exp.iter().enumerate() {
        let (a, b) = (
            list_row(&pt, "probability", i).unwrap(),
            list_row(&pt2, "probability", i).unwrap(),
        );
        // Different compilers of the same weights: equal up to float rounding.
        assert!(max_abs_diff(&a, &b) <= 1e-4, "{}", e.file);
    }
}

#[test]
fn featurize_method_is_a_model_of_that_name_in_the_package() {
    for kind in ["aoti", "int8", "bf16"] {
        let name = format!("tuple_net_{kind}");
        let exp = expected_for(&name);
        let (batch, _) = image_batch(&exp, 0);
        let scorer = open(&format!("{name}.pt2"));
        let o = BatchOptions {
            batch_size: 7,
            ..BatchOptions::default()
        };
        let scored = scorer.score(&batch, &o).unwrap();
        let features = scorer.featurize(&batch, &o).unwrap();
        for (i, e) in exp.iter().enumerate() {
            // Output "probabilities": taken as the package returns them, no softmax.
            let p = list_row(&scored, "probability", i).unwrap();
            let d = max_abs_diff(&p, &e.probability);
            assert!(d <= tol(&e.file), "{name} {}: {d}", e.file);
            let f = list_row(&features, "features", i).unwrap();
            let d = max_abs_diff(&f, &e.features);
            assert!(d <= tol(&e.file), "{name} {}: {d}", e.file);
        }
    }
}

#[test]
fn eight_threads_share_one_package_and_agree() {
    let exp = expected_for("resnet20_aoti");
    let (batch, _) = image_batch(&exp, 0);
    let batch = Arc::new(batch);
    let config = ModelConfig {
        num_threads: Some(1),
        ..ModelConfig::new(fixtures().join("resnet20_aoti.pt2"))
    };
    let first = Scorer::open(&config).unwrap();
    for (scorer, out) in score_on_eight_threads(&config, &batch) {
        assert!(
            std::ptr::eq(scorer.model(), first.model()),
            "one package per (file, device, precision) per process"
        );
        for (i, e) in exp.iter().enumerate() {
            let p = list_row(&out, "probability", i).unwrap();
            let d = max_abs_diff(&p, &e.probability);
            assert!(d <= tol(&e.file), "{}: {d}", e.file);
        }
    }
}

/// libtorch's package loader keeps the JSON it parses in one process-wide static: distinct
/// packages loaded at the same moment from many threads crashed the process (SIGSEGV in
/// `load_json_file`, 1 run in ~40 of this binary). Every thread's package loads and scores.
#[test]
fn distinct_packages_loading_on_eight_threads_at_once_all_load_and_score() {
    for round in 0..3 {
        let dirs: Vec<PathBuf> = (0..8)
            .map(|i| {
                let d = temp_dir(&format!("parallel-load-{round}-{i}"));
                copy_package(&d, "tuple_net_aoti.pt2", |_| {});
                d
            })
            .collect();
        let start = Arc::new(std::sync::Barrier::new(dirs.len()));
        std::thread::scope(|s| {
            for d in &dirs {
                let start = Arc::clone(&start);
                s.spawn(move || {
                    start.wait();
                    scores_first_image_like_pytorch(&d.join("model.pt2"));
                });
            }
        });
        for d in dirs {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}

#[test]
fn corrupt_package_fails_every_time_with_its_path() {
    let d = temp_dir("corrupt");
    let pt2 = copy_package(&d, "tuple_net_aoti.pt2", |_| {});
    let bytes = std::fs::read(&pt2).unwrap();
    for content in [&bytes[..bytes.len() / 2], b"not a zip archive".as_slice()] {
        std::fs::write(&pt2, content).unwrap();
        for _ in 0..2 {
            let e = Scorer::open(&ModelConfig::new(&pt2)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ModelLoad, "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains("model.pt2") && msg.contains("AOTInductor package"),
                "{msg}"
            );
        }
    }
}

#[test]
fn package_compiled_for_another_device_is_refused_naming_it() {
    let e = Scorer::open(&ModelConfig::new(fixtures().join("tuple_net_cuda.pt2"))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ModelLoad, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("tuple_net_cuda.pt2") && msg.contains("compiled for device `cuda`"),
        "{msg}"
    );
}

#[test]
fn missing_featurize_model_names_the_package_and_its_models() {
    let d = temp_dir("nomethod");
    let pt2 = copy_package(&d, "tuple_net_aoti.pt2", |s| {
        s["featurize"] = serde_json::json!({"method": "nope"});
    });
    let e = Scorer::open(&ModelConfig::new(&pt2)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("model.pt2") && msg.contains("`nope`") && msg.contains("embed, model"),
        "{msg}"
    );
}

#[test]
fn pinned_sha256_is_enforced_for_packages() {
    use sha2::{Digest, Sha256};
    let d = temp_dir("sha");
    let bytes = std::fs::read(fixtures().join("tuple_net_aoti.pt2")).unwrap();
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pt2 = copy_package(&d, "tuple_net_aoti.pt2", |s| s["sha256"] = digest.into());
    // The old verified copy's name (`<tmp>/torchspark-<pid>-<n>.pt2`) could be predicted and
    // pre-created by anyone to make the load fail; nothing predictable is used now.
    let planted = std::env::temp_dir().join(format!("torchspark-{}-0.pt2", std::process::id()));
    std::fs::write(&planted, b"planted").unwrap();
    scores_first_image_like_pytorch(&pt2);
    std::fs::remove_file(&planted).unwrap();

    let d = temp_dir("sha-wrong");
    let pt2 = copy_package(&d, "tuple_net_aoti.pt2", |s| {
        s["sha256"] = "0".repeat(64).into()
    });
    let e = Scorer::open(&ModelConfig::new(&pt2)).unwrap_err();
    assert!(
        e.to_string().contains("sha256") && e.to_string().contains("model.pt2"),
        "{e}"
    );
}

#[test]
fn bf16_option_needs_a_package_compiled_in_bf16() {
    let config = |name: &str| ModelConfig {
        precision: Precision::Bf16,
        ..ModelConfig::new(fixtures().join(name))
    };
    let e = Scorer::open(&config("tuple_net_aoti.pt2")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("precision=\"bf16\""), "{e}");
    // A bf16 package runs as compiled under either option.
    let exp = expected_for("tuple_net_bf16");
    let (batch, _) = image_batch(&exp, 0);
    let out = Scorer::open(&config("tuple_net_bf16.pt2"))
        .unwrap()
        .score(&batch, &BatchOptions::default())
        .unwrap();
    let p = list_row(&out, "probability", 0).unwrap();
    assert!(max_abs_diff(&p, &exp[0].probability) <= 1e-5);
}

#[test]
fn package_needing_cpu_flags_this_host_lacks_is_refused_naming_file_host_and_flags() {
    let d = temp_dir("cpu");
    let pt2 = copy_package(&d, "tuple_net_aoti.pt2", |s| {
        s["cpu"] = serde_json::json!({"flags": ["avx2", "torchspark_no_such_flag"]});
    });
    let host = torchspark_core::host::name();
    // Refused before any of its code is loaded, every time (a failed load is retried).
    for _ in 0..2 {
        let e = Scorer::open(&ModelConfig::new(&pt2)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ModelLoad, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("model.pt2")
                && msg.contains(&format!("this host ({host})"))
                && msg.contains("lacks: torchspark_no_such_flag;")
                && msg.contains("cpu=\"x86-64-v3\""),
            "{msg}"
        );
    }
    // The same package whose spec names only flags this host has loads and scores.
    let d = temp_dir("cpu-ok");
    let pt2 = copy_package(&d, "tuple_net_aoti.pt2", |s| {
        s["cpu"] = serde_json::json!({"march": "x86-64-v3", "flags": ["avx2", "fma"]});
    });
    scores_first_image_like_pytorch(&pt2);
}

/// The entries of `dir` (none expected).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn loads_releases_and_exit_with_a_package_loaded_leave_nothing_in_the_temp_dir() {
    // The child gets its own TMPDIR: AOTInductor's `aotinductor_XXXXXX` and our own
    // `torchspark-pt2-XXXXXX` folders would both land there.
    let tmp = temp_dir("tmpdir");
    let pt2 = copy_package(&temp_dir("reloads"), "tuple_net_aoti.pt2", |_| {});
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_loads_releases_and_exits_with_a_package_loaded",
            "--ignored",
            "--nocapture",
        ])
        .env("TMPDIR", &tmp)
        .env("TORCHSPARK_TEST_PACKAGE", &pt2)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("EXITING WITH A PACKAGE LOADED"), "{stdout}");
    assert_eq!(entries(&tmp), Vec::<String>::new());
}

#[test]
#[ignore = "a child of loads_releases_and_exit_with_a_package_loaded_leave_nothing_in_the_temp_dir"]
fn child_loads_releases_and_exits_with_a_package_loaded() {
    let Some(pt2) = std::env::var_os("TORCHSPARK_TEST_PACKAGE").map(PathBuf::from) else {
        return;
    };
    let tmp = std::env::temp_dir();
    let spec = pt2.with_extension("json");
    let text = std::fs::read_to_string(&spec).unwrap();
    let before = torchspark_core::load_count();
    for i in 1..=5 {
        // A spec edited in place is a new version: the package loads again and the previous
        // one is released when its scorer drops.
        std::fs::write(&spec, format!("{text}{}", " ".repeat(i))).unwrap();
        scores_first_image_like_pytorch(&pt2);
        assert_eq!(torchspark_core::load_count(), before + i as u64);
        assert_eq!(entries(&tmp), Vec::<String>::new(), "load {i}");
    }
    let kept = Scorer::open(&ModelConfig::new(&pt2)).unwrap();
    assert_eq!(entries(&tmp), Vec::<String>::new());
    println!("EXITING WITH A PACKAGE LOADED");
    std::mem::forget(kept);
    std::process::exit(0);
}
