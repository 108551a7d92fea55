//! The FFI layers: panics become errors, and a batch round-trips through the C ABI.
#![allow(clippy::unwrap_used)] // a failed unwrap in a helper is a failed test

use std::ffi::{CStr, CString, c_char};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow_array::{Array, BinaryArray, RecordBatch, StructArray};
use torchspark::capi::*;

#[path = "../../core/tests/common/mod.rs"]
mod common;
use common::fixtures;
mod capi;

fn take_message(p: *mut c_char) -> String {
    assert!(!p.is_null());
    // SAFETY: set by the library, freed once below.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { ts_string_free(p) };
    s
}

#[test]
fn injected_panic_becomes_an_error() {
    let e = torchspark::injected_panic().unwrap_err();
    assert!(e.to_string().contains("injected panic"), "{e}");
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: a writable out pointer.
    let code = unsafe { ts_panic_for_test(&mut err) };
    assert_eq!(code, 7);
    assert!(take_message(err).contains("injected panic"));
}

#[test]
fn scores_a_batch_through_the_c_abi() {
    let cfg = CString::new(format!(
        r#"{{"model_path": "{}", "num_threads": 1}}"#,
        fixtures().join("resnet20.pt").display()
    ))
    .unwrap();
    let (mut handle, mut err) = (0u64, std::ptr::null_mut());
    // SAFETY: valid strings and out pointers.
    assert_eq!(unsafe { ts_open(cfg.as_ptr(), &mut handle, &mut err) }, 0);
    let png = std::fs::read(fixtures().join("images/digit_00_label0.png")).unwrap();
    let col = BinaryArray::from(vec![Some(png.as_slice()), Some(b"junk".as_slice())]);
    let batch = RecordBatch::try_from_iter([("content", Arc::new(col) as _)]).unwrap();
    let (mut a, mut s) = to_ffi(&StructArray::from(batch).into_data()).unwrap();
    let (mut oa, mut os) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
    let opts = CString::new(r#"{"top_k": 2}"#).unwrap();
    // SAFETY: exported structs and writable outputs.
    let code = unsafe {
        ts_score(
            handle,
            opts.as_ptr(),
            &mut a,
            &mut s,
            &mut oa,
            &mut os,
            &mut err,
        )
    };
    assert_eq!(code, 0);
    let out = RecordBatch::from(StructArray::from(unsafe { from_ffi(oa, &os) }.unwrap()));
    assert_eq!(out.num_rows(), 2);
    let errors = out.column_by_name("error").unwrap().as_string::<i32>();
    assert!(errors.is_null(0));
    assert!(
        errors.value(1).starts_with("row 1: "),
        "{}",
        errors.value(1)
    );
    assert!(ts_load_count() >= 1);
    ts_close(handle);
}

#[test]
fn open_errors_carry_kind_and_path() {
    let cfg = CString::new(r#"{"model_path": "/nowhere/m.pt"}"#).unwrap();
    let (mut handle, mut err) = (0u64, std::ptr::null_mut());
    // SAFETY: valid strings and out pointers.
    let code = unsafe { ts_open(cfg.as_ptr(), &mut handle, &mut err) };
    assert_eq!(code, 1);
    assert_eq!(handle, 0);
    assert!(take_message(err).contains("/nowhere/m.pt"));
    let cfg = CString::new(r#"{"model_path": "x.pt", "colour": 1}"#).unwrap();
    let code = unsafe { ts_open(cfg.as_ptr(), &mut handle, &mut err) };
    assert_eq!(code, 3);
    assert!(take_message(err).contains("colour"));
}

#[test]
fn jni_ipc_helpers_round_trip() {
    let col = BinaryArray::from(vec![Some(b"a".as_slice()), None]);
    let batch = RecordBatch::try_from_iter([("content", Arc::new(col) as _)]).unwrap();
    let bytes = torchspark::jni_api::write_ipc(&batch).unwrap();
    let back = torchspark::jni_api::read_ipc(&bytes).unwrap();
    assert_eq!(back, batch);
    assert!(back.column(0).is_null(1));
    assert!(torchspark::jni_api::read_ipc(b"garbage").is_err());
}

/// A batch through `ts_submit` / `ts_collect` equals `ts_score`; a discarded pending frees
/// cleanly; a second batch in flight from one thread comes back right; a bad op code and a null
/// pending are errors, not crashes; the engine's stats are JSON with the queue empty at the end.
#[test]
fn submit_collect_discard_and_cancel_through_the_c_abi() {
    let cfg = CString::new(format!(
        r#"{{"model_path": "{}", "num_threads": 1, "engine": {{"mode": "shared", "cores": 2, "task_cpus": 1}}}}"#,
        fixtures().join("resnet20.pt").display()
    ))
    .unwrap();
    let (mut handle, mut err) = (0u64, std::ptr::null_mut());
    // SAFETY: valid strings and out pointers.
    assert_eq!(unsafe { ts_open(cfg.as_ptr(), &mut handle, &mut err) }, 0);
    let png = std::fs::read(fixtures().join("images/digit_00_label0.png")).unwrap();
    let batch = || {
        let col = BinaryArray::from(vec![Some(png.as_slice()), Some(b"junk".as_slice())]);
        RecordBatch::try_from_iter([("content", Arc::new(col) as _)]).unwrap()
    };
    let opts = CString::new(r#"{"top_k": 2}"#).unwrap();
    let submit = |op: i32, task: u64, err: &mut *mut c_char| {
        let (mut a, mut s) = to_ffi(&StructArray::from(batch()).into_data()).unwrap();
        let mut pending = 0u64;
        // SAFETY: exported structs and writable outputs.
        let code = unsafe {
            ts_submit(
                handle,
                op,
                opts.as_ptr(),
                &mut a,
                &mut s,
                task,
                &mut pending,
                err,
            )
        };
        (code, pending)
    };
    let collect = |pending: u64, err: &mut *mut c_char| -> (i32, Option<RecordBatch>) {
        let (mut oa, mut os) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
        loop {
            let mut ready = 0i32;
            // SAFETY: a live pending handle and writable outputs.
            let code = unsafe { ts_collect(pending, 100, &mut oa, &mut os, &mut ready, err) };
            if code != 0 {
                return (code, None);
            }
            if ready == 1 {
                let data = unsafe { from_ffi(oa, &os) }.unwrap();
                return (0, Some(RecordBatch::from(StructArray::from(data))));
            }
        }
    };
    // Two in flight from one thread, collected in order.
    let (c1, p1) = submit(0, 7, &mut err);
    let (c2, p2) = submit(0, 7, &mut err);
    assert_eq!((c1, c2), (0, 0));
    let (_, first) = collect(p1, &mut err);
    let (_, second) = collect(p2, &mut err);
    let (first, second) = (first.unwrap(), second.unwrap());
    let prob = |b: &RecordBatch| format!("{:?}", b.column_by_name("probability").unwrap());
    assert_eq!(prob(&first), prob(&second));
    let errors = first.column_by_name("error").unwrap().as_string::<i32>();
    assert!(errors.is_null(0));
    assert!(
        errors.value(1).starts_with("row 1: "),
        "{}",
        errors.value(1)
    );
    // Discarded without waiting: freed once, no crash, nothing left queued.
    let (c3, p3) = submit(1, 8, &mut err);
    if c3 == 0 {
        ts_discard(p3);
    } else {
        // featurize on a spec without `featurize` fails at submit, naming the spec
        assert!(take_message(err).contains("featurize"));
        err = std::ptr::null_mut();
    }
    ts_cancel_task(handle, 8);
    // A bad op code is a config error.
    let (c4, p4) = submit(9, 9, &mut err);
    assert_eq!((c4, p4), (3, 0));
    assert!(take_message(err).contains("op"));
    err = std::ptr::null_mut();
    // A null pending handle is an error, not a crash.
    let (code, none) = collect(0, &mut err);
    assert!(code != 0 && none.is_none());
    assert!(take_message(err).contains("null pending"));
    err = std::ptr::null_mut();
    let mut json: *mut c_char = std::ptr::null_mut();
    assert_eq!(unsafe { ts_engine_stats(handle, &mut json, &mut err) }, 0);
    let stats = take_message(json);
    assert!(stats.contains("\"queued_rows\":0"), "{stats}");
    assert!(ts_auto_batch_size(handle) >= 1);
    ts_close(handle);
}

/// Options of the close tests: 3 good rows and a junk one.
const OPTS: &str = r#"{"top_k": 2, "batch_size": 2}"#;

/// The probabilities of a score result, flattened (a null row: none).
fn probabilities(b: &RecordBatch) -> Vec<f32> {
    let list = b.column_by_name("probability").unwrap().as_list::<i32>();
    let values = list
        .values()
        .as_primitive::<arrow_array::types::Float32Type>();
    values.values().to_vec()
}

/// A score result of `capi::pngs(png, 3, true)`: four rows, the junk one an error, the
/// probabilities PyTorch's (`reference`'s; within 1e-5: oneDNN blocks by batch shape, and
/// merged passes differ in shape).
fn check_scores(b: &RecordBatch, reference: &[f32]) {
    assert_eq!(b.num_rows(), 4);
    assert_eq!(capi::good_rows(b), 3);
    let got = probabilities(b);
    assert_eq!(got.len(), reference.len());
    let worst = got
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-5,
        "a call racing a close scored wrong values (off by {worst})"
    );
}

/// Closing a model while other threads are inside calls on it through the C ABI (score,
/// submit + collect, submit + discard, stats), 150 times, shared and per-task engines: every
/// call returns the right rows, or a cancelled/closed job (its task was cancelled, its engine
/// closed), or an error naming the closed handle; never freed memory. After the close every
/// call names the handle, and a second close does nothing.
#[test]
fn closing_a_model_while_threads_call_it_is_safe() {
    let png = std::fs::read(fixtures().join("images/digit_00_label0.png")).unwrap();
    let model = fixtures().join("resnet20.pt");
    // Its own engines (`workers` given): the other tests' engine must keep its queue to itself.
    let engine =
        |mode: &str| format!(r#"{{"mode": "{mode}", "cores": 2, "workers": 2, "task_cpus": 1}}"#);
    let batch = capi::pngs(&png, 3, true);
    let first = capi::open(&capi::config(&model, 1, &engine("per-task"))).unwrap();
    let reference = probabilities(&capi::score(first, &batch, OPTS).unwrap());
    ts_close(first);
    let calls = Arc::new(AtomicU64::new(0));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..150u64 {
        let mode = if round % 3 == 2 { "per-task" } else { "shared" };
        let handle = capi::open(&capi::config(&model, 1, &engine(mode))).unwrap();
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let (batch, reference, calls) =
                    (batch.clone(), reference.clone(), Arc::clone(&calls));
                std::thread::spawn(move || {
                    let task = 1000 + round;
                    loop {
                        let r = match t {
                            0 => capi::score(handle, &batch, OPTS)
                                .map(|b| check_scores(&b, &reference)),
                            1 => capi::submit(handle, 0, &batch, OPTS, task)
                                .and_then(capi::collect)
                                .map(|b| check_scores(&b, &reference)),
                            _ => capi::submit(handle, 0, &batch, OPTS, task + 1)
                                .map(|p| ts_discard(p))
                                .and_then(|()| capi::stats(handle).map(drop)),
                        };
                        match r {
                            Ok(()) => {
                                calls.fetch_add(1, Ordering::Relaxed);
                            }
                            Err((3, m))
                                if m.contains(&format!("model handle {handle} is not open")) =>
                            {
                                return;
                            }
                            Err((6, m)) if m.contains("cancelled") || m.contains("closed") => {}
                            Err(other) => panic!("round {round}, thread {t}: {other:?}"),
                        }
                    }
                })
            })
            .collect();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::thread::sleep(Duration::from_micros((seed >> 33) % 4000));
        if round % 2 == 0 {
            // As NativeModel.close does: the handle's task first.
            ts_cancel_task(handle, 1000 + round);
        }
        ts_close(handle);
        for t in threads {
            t.join().unwrap();
        }
        let (code, message) = capi::score(handle, &batch, OPTS).unwrap_err();
        assert_eq!(code, 3, "{message}");
        assert!(
            message.contains(&format!("model handle {handle} is not open: closed")),
            "{message}"
        );
        assert_eq!(ts_auto_batch_size(handle), 0);
        ts_close(handle);
    }
    assert!(
        calls.load(Ordering::Relaxed) > 150,
        "the closes raced too few calls"
    );
}

/// A pending discarded while another thread collects it: the collect returns its batch (it
/// holds it) or, afterwards, an error naming the pending; a second collector at the same time
/// is told another thread is collecting. Never freed memory.
#[test]
fn discarding_a_pending_while_it_is_collected_is_safe() {
    let png = std::fs::read(fixtures().join("images/digit_00_label0.png")).unwrap();
    let model = fixtures().join("resnet20.pt");
    let engine = r#"{"mode": "shared", "cores": 2, "task_cpus": 1, "debug_delay_ms": 20}"#;
    let handle = capi::open(&capi::config(&model, 1, engine)).unwrap();
    let batch = capi::pngs(&png, 3, true);
    for round in 0..40u64 {
        let pending = capi::submit(handle, 0, &batch, OPTS, 7).unwrap();
        let collector = std::thread::spawn(move || capi::collect(pending));
        let second = std::thread::spawn(move || capi::collect_once(pending, 50));
        std::thread::sleep(Duration::from_millis(round % 5));
        ts_discard(pending);
        match collector.join().unwrap() {
            Ok(b) => assert_eq!(capi::good_rows(&b), 3),
            Err((3, m)) => assert!(
                m.contains(&format!("pending handle {pending} is not open")),
                "{m}"
            ),
            Err(other) => panic!("{other:?}"),
        }
        match second.join().unwrap() {
            Ok(Some(b)) => assert_eq!(capi::good_rows(&b), 3),
            Ok(None) => {}
            Err((3, m)) => assert!(
                m.contains("another thread is collecting it") || m.contains("is not open"),
                "{m}"
            ),
            Err(other) => panic!("{other:?}"),
        }
        let (code, m) = capi::collect_once(pending, 0).unwrap_err();
        assert_eq!(code, 3, "{m}");
        ts_discard(pending);
    }
    ts_close(handle);
}

/// `ts_describe_preset` gives each preset's schema without a model (the score result's names
/// and types of issue 26), `ts_describe` is the `predict` preset, and a preset the spec cannot
/// give (or an unknown one) is an error with its kind.
#[test]
fn describe_gives_each_presets_schema() {
    let spec = std::fs::read_to_string(fixtures().join("resnet20.json")).unwrap();
    let spec = CString::new(spec).unwrap();
    let describe = |preset: Option<&str>| -> Result<arrow_schema::Schema, (i32, String)> {
        let mut out = FFI_ArrowSchema::empty();
        let mut err: *mut c_char = std::ptr::null_mut();
        let name = preset.map(|p| CString::new(p).unwrap());
        // SAFETY: valid strings and out pointers.
        let code = unsafe {
            match &name {
                Some(p) => ts_describe_preset(spec.as_ptr(), p.as_ptr(), &mut out, &mut err),
                None => ts_describe(spec.as_ptr(), &mut out, &mut err),
            }
        };
        if code != 0 {
            return Err((code, take_message(err)));
        }
        Ok(arrow_schema::Schema::try_from(&out).unwrap())
    };
    use arrow_schema::DataType as T;
    let score = describe(Some("score")).unwrap();
    let types: Vec<(String, T)> = score
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(types[0], ("prediction".into(), T::Float64));
    assert_eq!(types[2], ("predicted_label".into(), T::Utf8));
    assert_eq!(types[4], ("error".into(), T::Utf8));
    match &types[1].1 {
        T::List(item) => assert_eq!(item.data_type(), &T::Float32),
        other => panic!("probability is {other}"),
    }
    match &types[3].1 {
        T::List(item) => match item.data_type() {
            T::Struct(f) => {
                let f: Vec<(&str, &T)> = f
                    .iter()
                    .map(|f| (f.name().as_str(), f.data_type()))
                    .collect();
                assert_eq!(
                    f,
                    [
                        ("index", &T::Int32),
                        ("label", &T::Utf8),
                        ("probability", &T::Float32)
                    ]
                );
            }
            other => panic!("top_k items are {other}"),
        },
        other => panic!("top_k is {other}"),
    }
    let names = |s: &arrow_schema::Schema| -> Vec<String> {
        s.fields().iter().map(|f| f.name().clone()).collect()
    };
    assert_eq!(
        names(&describe(Some("featurize")).unwrap()),
        ["features", "error"]
    );
    assert_eq!(names(&describe(None).unwrap()), ["output", "error"]);
    assert_eq!(
        names(&describe(Some("predict")).unwrap()),
        ["output", "error"]
    );
    let (code, msg) = describe(Some("embed")).unwrap_err();
    assert!(msg.contains("no `embed` preset"), "{code} {msg}");
    let (_, msg) = describe(Some("classify")).unwrap_err();
    assert!(msg.contains("preset `classify` is not one of"), "{msg}");
}
