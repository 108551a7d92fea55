//! C ABI for Python workers (ctypes). Batches cross as Arrow C Data Interface structs: a
//! RecordBatch is exported as one struct array (pyarrow's `RecordBatch._export_to_c`).
//!
//! Every function returns 0 on success or an [`ErrorKind`] number, and then stores a message
//! in `*err_out` (free it with [`ts_string_free`]). Handles are opaque non-zero ids (the
//! tables of [`crate::handles`]), released with [`ts_close`]: a call on a closed handle, even
//! one racing the close from another thread, fails naming the handle (code 3, config); a call
//! already running keeps its model until it returns.

use std::ffi::{CStr, CString, c_char};
use std::ptr;
use std::sync::{Mutex, TryLockError};

use arrow_array::{Array, RecordBatch, StructArray};

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi};
use torchspark_core::{BatchOptions, Error, ModelConfig, Op, Result, Scorer};

use crate::handles::{MODELS, PENDINGS};
use crate::{gated, guard};

fn report(result: Result<()>, err_out: *mut *mut c_char) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            if !err_out.is_null() {
                let text = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
                // SAFETY: the caller passes a writable pointer (checked non-null).
                unsafe { *err_out = text.into_raw() };
            }
            e.kind() as i32
        }
    }
}

fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Ok("");
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::Config {
            field: what.into(),
            reason: "not UTF-8".into(),
        })
}

/// Opens (or reuses) a model; `config_json` is a `ModelConfig`.
///
/// # Safety
/// `config_json` is a NUL-terminated string; `handle_out` and `err_out` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_open(
    config_json: *const c_char,
    handle_out: *mut u64,
    err_out: *mut *mut c_char,
) -> i32 {
    report(
        gated(|| {
            let config = ModelConfig::from_json(c_str(config_json, "config")?)?;
            if handle_out.is_null() {
                return Err(Error::Config {
                    field: "handle_out".into(),
                    reason: "null pointer".into(),
                });
            }
            let id = MODELS.insert(Scorer::open(&config)?);
            // SAFETY: checked non-null; the caller owns the slot.
            unsafe { *handle_out = id };
            Ok(())
        }),
        err_out,
    )
}

/// Releases a handle from [`ts_open`]; the model itself stays loaded for the process. Calls
/// running on it finish first (they hold the model); later calls fail naming the handle. A
/// handle closed twice, 0 or unknown: nothing happens.
#[unsafe(no_mangle)]
pub extern "C" fn ts_close(handle: u64) {
    let _ = gated(|| {
        drop(MODELS.remove(handle));
        Ok(())
    });
}

/// Scores one batch (the `score` preset). A synchronous twin kept for old callers: `ts_submit`
/// (op 0, or `"preset": "score"`) + `ts_collect` give the same batch; Python and the JVM call
/// those, and this entry goes when no caller remains. Takes ownership of `in_array`/`in_schema` (released on return) and
/// fills `out_array`/`out_schema`, which the caller must import (and so release).
///
/// # Safety
/// The pointers are valid Arrow C Data Interface structs; `out_*` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_score(
    handle: u64,
    options_json: *const c_char,
    in_array: *mut FFI_ArrowArray,
    in_schema: *mut FFI_ArrowSchema,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    err_out: *mut *mut c_char,
) -> i32 {
    let run = |s: &Scorer, b: &RecordBatch, o: &BatchOptions| s.score(b, o);
    // SAFETY: forwarded contract.
    unsafe {
        call(
            handle,
            options_json,
            in_array,
            in_schema,
            out_array,
            out_schema,
            err_out,
            run,
        )
    }
}

/// Featurizes one batch (the `featurize` preset); same contract as [`ts_score`], and the same
/// fate: a synchronous twin of `ts_submit` (op 1) + `ts_collect`.
///
/// # Safety
/// As for [`ts_score`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_featurize(
    handle: u64,
    options_json: *const c_char,
    in_array: *mut FFI_ArrowArray,
    in_schema: *mut FFI_ArrowSchema,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    err_out: *mut *mut c_char,
) -> i32 {
    let run = |s: &Scorer, b: &RecordBatch, o: &BatchOptions| s.featurize(b, o);
    // SAFETY: forwarded contract.
    unsafe {
        call(
            handle,
            options_json,
            in_array,
            in_schema,
            out_array,
            out_schema,
            err_out,
            run,
        )
    }
}

/// Runs one batch through a model's general path (`Scorer::predict`: declared inputs in,
/// the selected outputs (the `predict` preset unless the options name one) plus `error` out);
/// same contract as [`ts_score`], and the same fate: a synchronous twin of `ts_submit` (op 2).
///
/// # Safety
/// As for [`ts_score`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_predict(
    handle: u64,
    options_json: *const c_char,
    in_array: *mut FFI_ArrowArray,
    in_schema: *mut FFI_ArrowSchema,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    err_out: *mut *mut c_char,
) -> i32 {
    let run = |s: &Scorer, b: &RecordBatch, o: &BatchOptions| s.predict(b, o);
    // SAFETY: forwarded contract.
    unsafe {
        call(
            handle,
            options_json,
            in_array,
            in_schema,
            out_array,
            out_schema,
            err_out,
            run,
        )
    }
}

/// The schema of the `predict` preset for the spec JSON `spec_json` (what `ts_predict`
/// returns), without loading a model: [`ts_describe_preset`] with `"predict"`.
///
/// # Safety
/// `spec_json` is a NUL-terminated string; `out_schema` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_describe(
    spec_json: *const c_char,
    out_schema: *mut FFI_ArrowSchema,
    err_out: *mut *mut c_char,
) -> i32 {
    // SAFETY: forwarded contract; a static NUL-terminated name.
    unsafe { ts_describe_preset(spec_json, c"predict".as_ptr(), out_schema, err_out) }
}

/// The schema a call with the preset `preset` (`score`, `featurize`, `predict`, `embed`)
/// returns for the spec JSON `spec_json`, without loading a model (`Scorer::describe_preset`):
/// one field per selected output, then `error`; written to `out_schema`, which the caller must
/// import. A preset the spec cannot give is an error (kind `spec`), as it is at `ts_submit`.
///
/// # Safety
/// `spec_json` and `preset` are NUL-terminated strings; `out_schema` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_describe_preset(
    spec_json: *const c_char,
    preset: *const c_char,
    out_schema: *mut FFI_ArrowSchema,
    err_out: *mut *mut c_char,
) -> i32 {
    report(
        gated(|| {
            if out_schema.is_null() {
                return Err(Error::Input {
                    reason: "null Arrow C Data Interface pointer".into(),
                });
            }
            let schema =
                Scorer::describe_preset(c_str(spec_json, "spec")?, c_str(preset, "preset")?, None)?;
            let s = FFI_ArrowSchema::try_from(schema.as_ref()).map_err(|e| Error::Internal {
                reason: format!("cannot export the schema: {e}"),
            })?;
            // SAFETY: checked non-null; the caller imports (and so releases) it.
            unsafe { ptr::write(out_schema, s) };
            Ok(())
        }),
        err_out,
    )
}

#[allow(clippy::too_many_arguments)] // the C signature, spelled out once
unsafe fn call(
    handle: u64,
    options_json: *const c_char,
    in_array: *mut FFI_ArrowArray,
    in_schema: *mut FFI_ArrowSchema,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    err_out: *mut *mut c_char,
    run: impl FnOnce(&Scorer, &RecordBatch, &BatchOptions) -> Result<RecordBatch>,
) -> i32 {
    report(
        guard(|| {
            if out_array.is_null() || out_schema.is_null() {
                return Err(Error::Input {
                    reason: "null Arrow C Data Interface pointer".into(),
                });
            }
            // SAFETY: forwarded contract (the input is released whatever happens next).
            let batch = unsafe { import(in_array, in_schema) }?;
            let out = gated(|| {
                let scorer = MODELS.get(handle)?;
                let options = BatchOptions::from_json(c_str(options_json, "options")?)?;
                run(&scorer, &batch, &options)
            });
            // Released outside the gate: pyarrow's release of a numpy-backed buffer takes the
            // GIL, which a forking thread holds while the fork waits for the gate.
            drop(batch);
            // SAFETY: checked non-null; the caller imports (and so releases) them.
            unsafe { export(out?, out_array, out_schema) }
        }),
        err_out,
    )
}

/// Takes ownership of an exported struct array (released on return) as a batch.
///
/// # Safety
/// The pointers are null or valid Arrow C Data Interface structs, moved out exactly once.
unsafe fn import(
    in_array: *mut FFI_ArrowArray,
    in_schema: *mut FFI_ArrowSchema,
) -> Result<RecordBatch> {
    if in_array.is_null() || in_schema.is_null() {
        return Err(Error::Input {
            reason: "null Arrow C Data Interface pointer".into(),
        });
    }
    // Take ownership first, so the input is released whatever happens next.
    // SAFETY: valid exported structs (checked non-null), moved out exactly once.
    let (array, schema) = unsafe {
        (
            FFI_ArrowArray::from_raw(in_array),
            FFI_ArrowSchema::from_raw(in_schema),
        )
    };
    // SAFETY: the struct pair describes one array, as the C Data Interface requires.
    let data = unsafe { from_ffi(array, &schema) }.map_err(|e| Error::Input {
        reason: format!("cannot import the Arrow batch: {e}"),
    })?;
    Ok(RecordBatch::from(StructArray::from(data)))
}

/// Exports `out` into the caller's structs.
///
/// # Safety
/// `out_array` and `out_schema` are non-null and writable.
unsafe fn export(
    out: RecordBatch,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
) -> Result<()> {
    // The schema goes out from the batch's own schema, so that its metadata (the stage
    // times) crosses too; a struct array's type alone would drop it.
    let s = FFI_ArrowSchema::try_from(out.schema_ref().as_ref()).map_err(|e| Error::Internal {
        reason: format!("cannot export the result schema: {e}"),
    })?;
    let a = FFI_ArrowArray::new(&StructArray::from(out).into_data());
    // SAFETY: the caller passes writable structs; it imports (and so releases) them.
    unsafe {
        ptr::write(out_array, a);
        ptr::write(out_schema, s);
    }
    Ok(())
}

/// Prepares one batch on the calling thread and queues its forward passes in the model's
/// engine (`Scorer::submit`); `op` is 0 score, 1 featurize, 2 predict: the preset used when
/// the options name none (their `"preset"` or `"outputs"` win); `task` identifies the
/// caller for [`ts_cancel_task`]. Takes ownership of `in_array`/`in_schema`. Stores a pending
/// handle in `pending_out`, to be given once to [`ts_collect`] (until it is ready or fails) or
/// [`ts_discard`] (one never collected nor discarded keeps its memory until the process ends).
///
/// # Safety
/// As for [`ts_score`]; `pending_out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_submit(
    handle: u64,
    op: i32,
    options_json: *const c_char,
    in_array: *mut FFI_ArrowArray,
    in_schema: *mut FFI_ArrowSchema,
    task: u64,
    pending_out: *mut u64,
    err_out: *mut *mut c_char,
) -> i32 {
    report(
        guard(|| {
            // SAFETY: forwarded contract.
            let batch = unsafe { import(in_array, in_schema) }?;
            if pending_out.is_null() {
                return Err(Error::Input {
                    reason: "null pending_out pointer".into(),
                });
            }
            let id = gated(|| {
                let scorer = MODELS.get(handle)?;
                let op = Op::from_code(op)?;
                let options = BatchOptions::from_json(c_str(options_json, "options")?)?;
                let pending = scorer.submit(op, &batch, &options, task)?;
                Ok(PENDINGS.insert(Mutex::new(pending)))
            });
            // Released outside the gate (see `call`).
            drop(batch);
            // SAFETY: checked non-null.
            unsafe { *pending_out = id? };
            Ok(())
        }),
        err_out,
    )
}

/// Waits at most `wait_ms` for a pending batch. Ready: fills `out_array`/`out_schema` (the
/// caller imports them), sets `*ready_out = 1` and frees the pending handle. Not ready yet:
/// `*ready_out = 0` (call again). The batch's error frees the handle too. A handle that is not
/// live (collected, discarded), that another thread is collecting at the moment, or a call
/// after the process began to exit, is an error that frees nothing.
///
/// # Safety
/// The out pointers are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_collect(
    pending: u64,
    wait_ms: u64,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    ready_out: *mut i32,
    err_out: *mut *mut c_char,
) -> i32 {
    report(
        gated(|| {
            if out_array.is_null() || out_schema.is_null() || ready_out.is_null() {
                return Err(Error::Input {
                    reason: "null out pointer".into(),
                });
            }
            let entry = PENDINGS.get(pending)?;
            // One collect at a time: a second one fails rather than wait behind the first.
            let mut p = match entry.try_lock() {
                Ok(p) => p,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Handle {
                        what: "pending",
                        id: pending,
                        reason: "another thread is collecting it".into(),
                    });
                }
            };
            let result = p.wait(std::time::Duration::from_millis(wait_ms));
            drop(p);
            if matches!(result, Ok(None)) {
                // SAFETY: checked non-null.
                unsafe { *ready_out = 0 };
                return Ok(());
            }
            // The last use of this handle; the caller forgets it now.
            drop(PENDINGS.remove(pending));
            drop(entry);
            let out = result?.ok_or_else(|| Error::Internal {
                reason: "pending result vanished".into(),
            })?;
            // SAFETY: checked non-null.
            unsafe {
                export(out, out_array, out_schema)?;
                *ready_out = 1;
            }
            Ok(())
        }),
        err_out,
    )
}

/// Frees a pending handle without its result (a collect running on it keeps it until it
/// returns). 0, unknown or freed already: nothing happens.
#[unsafe(no_mangle)]
pub extern "C" fn ts_discard(pending: u64) {
    let _ = gated(|| {
        drop(PENDINGS.remove(pending));
        Ok(())
    });
}

/// Drops `task`'s queued work from the model's engine; returns the jobs dropped (0 for a
/// handle that is not open).
#[unsafe(no_mangle)]
pub extern "C" fn ts_cancel_task(handle: u64, task: u64) -> u64 {
    gated(|| Ok(MODELS.get(handle)?.cancel_task(task) as u64)).unwrap_or(0)
}

/// The rows per forward pass this model's "auto" batch size means (0 for a handle that is not
/// open).
#[unsafe(no_mangle)]
pub extern "C" fn ts_auto_batch_size(handle: u64) -> u64 {
    gated(|| Ok(MODELS.get(handle)?.auto_batch_size() as u64)).unwrap_or(0)
}

/// The process is exiting (Python's `atexit` calls this, before any C++ static destructor):
/// queued jobs are dropped, engines stop, and the call waits (at most `TORCHSPARK_DRAIN_MS`)
/// for the forward passes in flight. Afterwards only this thread's calls run; another thread's
/// new call fails "the process is exiting" (code 7), and one whose wait for a result ends then
/// waits until the process is gone. Returns the threads still in a pass (0: drained).
#[unsafe(no_mangle)]
pub extern "C" fn ts_shutdown() -> u64 {
    guard(|| Ok(torchspark_core::lifecycle::shutdown(true) as u64)).unwrap_or(0)
}

/// The engine's stats as JSON in `*json_out` (free it with [`ts_string_free`]).
///
/// # Safety
/// `json_out` and `err_out` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_engine_stats(
    handle: u64,
    json_out: *mut *mut c_char,
    err_out: *mut *mut c_char,
) -> i32 {
    report(
        gated(|| {
            if json_out.is_null() {
                return Err(Error::Input {
                    reason: "null json_out pointer".into(),
                });
            }
            let stats =
                serde_json::to_string(&MODELS.get(handle)?.engine_stats()).map_err(|e| {
                    Error::Internal {
                        reason: format!("engine stats: {e}"),
                    }
                })?;
            let text = CString::new(stats).unwrap_or_default();
            // SAFETY: checked non-null.
            unsafe { *json_out = text.into_raw() };
            Ok(())
        }),
        err_out,
    )
}

/// How many models this process has loaded from disk.
#[unsafe(no_mangle)]
pub extern "C" fn ts_load_count() -> u64 {
    torchspark_core::load_count()
}

/// Frees a message that a call stored in `err_out`.
///
/// # Safety
/// `s` came from this library's `err_out` (or is null) and is freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: see the function's contract.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Test hook: panics inside the guard and reports it like any error (code 7, internal).
///
/// # Safety
/// `err_out` is writable or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ts_panic_for_test(err_out: *mut *mut c_char) -> i32 {
    report(crate::injected_panic(), err_out)
}

/// The library version, a static NUL-terminated string.
#[unsafe(no_mangle)]
pub extern "C" fn ts_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
