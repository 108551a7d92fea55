//! The C ABI as a Python worker calls it (ctypes does the same with these structs), in safe
//! wrappers: an error is `(code, message)`.
// Test helpers: a failed unwrap is a failed test, with its location.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::{CStr, CString, c_char};
use std::sync::Arc;

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow_array::{Array, BinaryArray, RecordBatch, StructArray};
use torchspark::capi::*;

pub type Failure = (i32, String);

fn take(p: *mut c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: set by the library, freed once here.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { ts_string_free(p) };
    s
}

/// `n` rows of one fixture PNG (a row `junk` at the end when `junk`).
pub fn pngs(png: &[u8], n: usize, junk: bool) -> RecordBatch {
    let mut rows: Vec<Option<&[u8]>> = vec![Some(png); n];
    if junk {
        rows.push(Some(b"junk".as_slice()));
    }
    let col = BinaryArray::from(rows);
    RecordBatch::try_from_iter([("content", Arc::new(col) as _)]).unwrap()
}

/// A ModelConfig for `model` with the engine section `engine` (JSON object text).
pub fn config(model: &std::path::Path, threads: usize, engine: &str) -> String {
    format!(
        r#"{{"model_path": "{}", "num_threads": {threads}, "engine": {engine}}}"#,
        model.display()
    )
}

pub fn open(config: &str) -> Result<u64, Failure> {
    let cfg = CString::new(config).unwrap();
    let (mut handle, mut err) = (0u64, std::ptr::null_mut());
    // SAFETY: valid strings and out pointers.
    let code = unsafe { ts_open(cfg.as_ptr(), &mut handle, &mut err) };
    if code == 0 {
        Ok(handle)
    } else {
        Err((code, take(err)))
    }
}

fn import(oa: FFI_ArrowArray, os: FFI_ArrowSchema) -> RecordBatch {
    // SAFETY: filled by the library on success.
    RecordBatch::from(StructArray::from(unsafe { from_ffi(oa, &os) }.unwrap()))
}

/// `ts_score` of `batch` with `options` (JSON).
pub fn score(handle: u64, batch: &RecordBatch, options: &str) -> Result<RecordBatch, Failure> {
    let opts = CString::new(options).unwrap();
    let (mut a, mut s) = to_ffi(&StructArray::from(batch.clone()).into_data()).unwrap();
    let (mut oa, mut os) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
    let mut err = std::ptr::null_mut();
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
    if code == 0 {
        Ok(import(oa, os))
    } else {
        Err((code, take(err)))
    }
}

/// `ts_submit` of `batch` (op 0 score, 2 predict) for `task`: the pending handle.
pub fn submit(
    handle: u64,
    op: i32,
    batch: &RecordBatch,
    options: &str,
    task: u64,
) -> Result<u64, Failure> {
    let opts = CString::new(options).unwrap();
    let (mut a, mut s) = to_ffi(&StructArray::from(batch.clone()).into_data()).unwrap();
    let (mut pending, mut err) = (0u64, std::ptr::null_mut());
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
            &mut err,
        )
    };
    if code == 0 {
        Ok(pending)
    } else {
        Err((code, take(err)))
    }
}

/// One `ts_collect` of at most `wait_ms`: `None` when not ready yet.
pub fn collect_once(pending: u64, wait_ms: u64) -> Result<Option<RecordBatch>, Failure> {
    let (mut oa, mut os) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
    let (mut ready, mut err) = (0i32, std::ptr::null_mut());
    // SAFETY: writable outputs.
    let code = unsafe { ts_collect(pending, wait_ms, &mut oa, &mut os, &mut ready, &mut err) };
    match (code, ready) {
        (0, 1) => Ok(Some(import(oa, os))),
        (0, _) => Ok(None),
        _ => Err((code, take(err))),
    }
}

/// `ts_collect` in slices of 100 ms until the result or an error.
pub fn collect(pending: u64) -> Result<RecordBatch, Failure> {
    loop {
        if let Some(b) = collect_once(pending, 100)? {
            return Ok(b);
        }
    }
}

/// The engine's stats JSON.
pub fn stats(handle: u64) -> Result<String, Failure> {
    let (mut json, mut err) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: writable outputs.
    let code = unsafe { ts_engine_stats(handle, &mut json, &mut err) };
    if code == 0 {
        Ok(take(json))
    } else {
        Err((code, take(err)))
    }
}

/// Rows of a score result whose `error` is null.
pub fn good_rows(b: &RecordBatch) -> usize {
    b.column_by_name("error").unwrap().null_count()
}
