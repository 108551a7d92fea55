//! JNI entry points of `dev.torchspark.NativeBridge`.
//!
//! A batch crosses as Arrow IPC stream bytes (`byte[]`): Spark ships Arrow Java's vector and
//! IPC classes but not `arrow-c-data`, and a copy of a batch of encoded images is small beside
//! the forward pass (the benchmark measures it). Handles are `jlong` ids of [`crate::handles`]'s
//! tables, released by `closeModel`: a call on a closed handle throws a `ConfigException`
//! naming it, one already running finishes first. Errors become exceptions of the class
//! [`exception_class`] maps the core's kind to.
//!
//! The core's work runs inside the lifecycle gate, the JNI calls (reading arguments, making
//! results, throwing) outside it: a JVM that is exiting never lets a thread back from native
//! code, and an exit must not wait for such a thread.

use std::ffi::c_void;
use std::io::Cursor;
use std::sync::{Mutex, TryLockError};

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use jni::JNIEnv;
use jni::objects::{JByteArray, JClass, JString};
use jni::sys::{JavaVM, jbyteArray, jint, jlong, jstring};
use torchspark_core::lifecycle::try_enter;
use torchspark_core::{BatchOptions, Error, ErrorKind, ModelConfig, Op, Result, Scorer};

use crate::guard;
use crate::handles::{MODELS, PENDINGS};

/// The one table from error kinds to Java exception classes (all extend TorchSparkException).
pub fn exception_class(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ModelLoad => "dev/torchspark/ModelLoadException",
        ErrorKind::Spec => "dev/torchspark/ModelSpecException",
        ErrorKind::Config => "dev/torchspark/ConfigException",
        ErrorKind::Device => "dev/torchspark/DeviceException",
        ErrorKind::Input => "dev/torchspark/InputException",
        ErrorKind::Inference => "dev/torchspark/InferenceException",
        ErrorKind::Internal => "dev/torchspark/TorchSparkException",
    }
}

/// Runs `f` under the panic guard; on error throws and returns `fallback`.
fn with_env<T>(env: &mut JNIEnv, fallback: T, f: impl FnOnce(&mut JNIEnv) -> Result<T>) -> T {
    match guard(|| f(env)) {
        Ok(v) => v,
        Err(e) => {
            // If an exception is already pending (a failed JNI call), leave it in place.
            if !env.exception_check().unwrap_or(false) {
                let _ = env.throw_new(exception_class(e.kind()), e.to_string());
            }
            fallback
        }
    }
}

fn jni_err(e: jni::errors::Error) -> Error {
    Error::Internal {
        reason: format!("JNI: {e}"),
    }
}

fn string(env: &mut JNIEnv, s: &JString) -> Result<String> {
    if s.is_null() {
        return Ok(String::new());
    }
    Ok(env.get_string(s).map_err(jni_err)?.into())
}

/// The id a `jlong` handle stands for (a negative one is no id).
fn id(handle: jlong) -> u64 {
    u64::try_from(handle).unwrap_or(0)
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_openModel(
    mut env: JNIEnv,
    _class: JClass,
    config_json: JString,
) -> jlong {
    with_env(&mut env, 0, |env| {
        let config = ModelConfig::from_json(&string(env, &config_json)?)?;
        let _inside = try_enter()?;
        Ok(MODELS.insert(Scorer::open(&config)?) as jlong)
    })
}

/// Releases a handle: calls running on it finish first, later ones throw. Closing a handle
/// twice, 0 or an unknown one does nothing.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_closeModel(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
) {
    with_env(&mut env, (), |_| {
        let _inside = try_enter()?;
        drop(MODELS.remove(id(handle)));
        Ok(())
    })
}

/// A synchronous twin of `submit` (op 0, the `score` preset) + `collect`, kept for old callers;
/// the JVM calls `submit`/`collect`, and these three entries go when no caller remains.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_score<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass,
    handle: jlong,
    ipc: JByteArray<'l>,
    options_json: JString,
) -> jbyteArray {
    let run = |s: &Scorer, b: &RecordBatch, o: &BatchOptions| s.score(b, o);
    call(&mut env, handle, ipc, options_json, run)
}

/// A synchronous twin of `submit` (op 1, the `featurize` preset) + `collect`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_featurize<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass,
    handle: jlong,
    ipc: JByteArray<'l>,
    options_json: JString,
) -> jbyteArray {
    let run = |s: &Scorer, b: &RecordBatch, o: &BatchOptions| s.featurize(b, o);
    call(&mut env, handle, ipc, options_json, run)
}

/// A synchronous twin of `submit` (op 2, the `predict` preset unless the options name one) +
/// `collect`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_predict<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass,
    handle: jlong,
    ipc: JByteArray<'l>,
    options_json: JString,
) -> jbyteArray {
    let run = |s: &Scorer, b: &RecordBatch, o: &BatchOptions| s.predict(b, o);
    call(&mut env, handle, ipc, options_json, run)
}

/// Prepares one Arrow IPC batch on the calling thread and queues its forward passes in the
/// model's engine; returns a pending handle for `collect` or `discard` (exactly one of them).
/// `op`: 0 score, 1 featurize, 2 predict: the preset used when the options name none
/// (`"preset"` or `"outputs"` in the options win).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_submit<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass,
    handle: jlong,
    op: jint,
    ipc: JByteArray<'l>,
    options_json: JString,
    task_id: jlong,
) -> jlong {
    with_env(&mut env, 0, |env| {
        let op = Op::from_code(op)?;
        let options = BatchOptions::from_json(&string(env, &options_json)?)?;
        let bytes = env.convert_byte_array(&ipc).map_err(jni_err)?;
        let _inside = try_enter()?;
        let scorer = MODELS.get(id(handle))?;
        let batch = read_ipc(&bytes)?;
        let pending = scorer.submit(op, &batch, &options, task_id as u64)?;
        Ok(PENDINGS.insert(Mutex::new(pending)) as jlong)
    })
}

/// The result of a `submit` as Arrow IPC bytes, waiting at most `wait_ms`; null when it is not
/// ready yet (call again). Frees the pending handle once it returns bytes or throws. A pending
/// that is not live (collected, discarded), or that another thread is collecting, throws.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_collect<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass,
    pending: jlong,
    wait_ms: jlong,
) -> jbyteArray {
    with_env(&mut env, std::ptr::null_mut(), |env| {
        let bytes = {
            let _inside = try_enter()?;
            let entry = PENDINGS.get(id(pending))?;
            // One collect at a time: a second one throws rather than wait behind the first.
            let mut p = match entry.try_lock() {
                Ok(p) => p,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Handle {
                        what: "pending",
                        id: id(pending),
                        reason: "another thread is collecting it".into(),
                    });
                }
            };
            let wait = std::time::Duration::from_millis(wait_ms.max(0) as u64);
            let result = p.wait(wait);
            drop(p);
            if matches!(result, Ok(None)) {
                return Ok(std::ptr::null_mut());
            }
            // The last use of this handle: Java forgets it now, on a result or an error.
            drop(PENDINGS.remove(id(pending)));
            drop(entry);
            let batch = result?.ok_or_else(|| Error::Internal {
                reason: "pending result vanished".into(),
            })?;
            write_ipc(&batch)?
        };
        Ok(env
            .byte_array_from_slice(&bytes)
            .map_err(jni_err)?
            .into_raw())
    })
}

/// Frees a pending handle without waiting for it (its task failed or was killed); its result,
/// when it comes, is dropped.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_discard(
    mut env: JNIEnv,
    _class: JClass,
    pending: jlong,
) {
    with_env(&mut env, (), |_| {
        let _inside = try_enter()?;
        drop(PENDINGS.remove(id(pending)));
        Ok(())
    })
}

/// Drops a task's queued work in the model's engine; returns the number of jobs dropped.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_cancelTask(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
    task_id: jlong,
) -> jlong {
    with_env(&mut env, 0, |_| {
        let _inside = try_enter()?;
        Ok(MODELS.get(id(handle))?.cancel_task(task_id as u64) as jlong)
    })
}

/// The rows per forward pass this model's "auto" batch size means (`Scorer::auto_batch_size`).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_autoBatchSize(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
) -> jint {
    with_env(&mut env, 0, |_| {
        let _inside = try_enter()?;
        Ok(MODELS
            .get(id(handle))?
            .auto_batch_size()
            .min(i32::MAX as usize) as jint)
    })
}

/// The engine's sizes and counters as JSON (`EngineStats`).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_engineStats(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
) -> jstring {
    with_env(&mut env, std::ptr::null_mut(), |env| {
        let stats = {
            let _inside = try_enter()?;
            serde_json::to_string(&MODELS.get(id(handle))?.engine_stats()).map_err(|e| {
                Error::Internal {
                    reason: format!("engine stats: {e}"),
                }
            })?
        };
        Ok(env.new_string(stats).map_err(jni_err)?.into_raw())
    })
}

/// The schema of the `predict` preset for a spec's JSON text, as an IPC stream with no
/// batches: `describePreset(spec, "predict")`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_describe<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass,
    spec_json: JString,
) -> jbyteArray {
    with_env(&mut env, std::ptr::null_mut(), |env| {
        let spec = string(env, &spec_json)?;
        describe(env, &spec, "predict")
    })
}

/// The schema a call with `preset` (`score`, `featurize`, `predict`, `embed`) returns for a
/// spec's JSON text, as an IPC stream with no batches (one field per selected output, then
/// `error`); a preset the spec cannot give throws (kind `spec`).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_describePreset<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass,
    spec_json: JString,
    preset: JString,
) -> jbyteArray {
    with_env(&mut env, std::ptr::null_mut(), |env| {
        let spec = string(env, &spec_json)?;
        let preset = string(env, &preset)?;
        describe(env, &spec, &preset)
    })
}

fn describe(env: &mut JNIEnv<'_>, spec: &str, preset: &str) -> Result<jbyteArray> {
    let schema = {
        let _inside = try_enter()?;
        Scorer::describe_preset(spec, preset, None)?
    };
    let fail = |e: arrow_schema::ArrowError| Error::Internal {
        reason: format!("cannot write the Arrow IPC schema: {e}"),
    };
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &schema).map_err(fail)?;
    w.finish().map_err(fail)?;
    drop(w);
    Ok(env.byte_array_from_slice(&out).map_err(jni_err)?.into_raw())
}

fn call<'l>(
    env: &mut JNIEnv<'l>,
    handle: jlong,
    ipc: JByteArray<'l>,
    options_json: JString,
    run: impl FnOnce(&Scorer, &RecordBatch, &BatchOptions) -> Result<RecordBatch>,
) -> jbyteArray {
    with_env(env, std::ptr::null_mut(), |env| {
        let options = BatchOptions::from_json(&string(env, &options_json)?)?;
        let bytes = env.convert_byte_array(&ipc).map_err(jni_err)?;
        let out = {
            let _inside = try_enter()?;
            let scorer = MODELS.get(id(handle))?;
            let batch = read_ipc(&bytes)?;
            write_ipc(&run(&scorer, &batch, &options)?)?
        };
        Ok(env.byte_array_from_slice(&out).map_err(jni_err)?.into_raw())
    })
}

/// One record batch from IPC stream bytes.
pub fn read_ipc(bytes: &[u8]) -> Result<RecordBatch> {
    let bad = |e: arrow_schema::ArrowError| Error::Input {
        reason: format!("cannot read the Arrow IPC batch: {e}"),
    };
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(bad)?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(bad)?;
    match batches.len() {
        1 => Ok(batches
            .into_iter()
            .next()
            .unwrap_or_else(|| RecordBatch::new_empty(schema))),
        _ => arrow_select::concat::concat_batches(&schema, &batches).map_err(bad),
    }
}

/// IPC stream bytes of one record batch.
pub fn write_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let fail = |e: arrow_schema::ArrowError| Error::Internal {
        reason: format!("cannot write the Arrow IPC result: {e}"),
    };
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).map_err(fail)?;
    w.write(batch).map_err(fail)?;
    w.finish().map_err(fail)?;
    drop(w);
    Ok(out)
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_loadCount(
    _env: JNIEnv,
    _class: JClass,
) -> jlong {
    torchspark_core::load_count() as jlong
}

/// The JVM is exiting (NativeBridge's shutdown hook): queued jobs are dropped, engines stop,
/// and the call waits (at most `TORCHSPARK_DRAIN_MS`) for the forward passes in flight, before
/// `exit()` runs libtorch's static destructors. Afterwards another thread's new call throws
/// "the process is exiting", and one whose wait for a result ends then waits until the process
/// is gone. Returns the threads still in a pass (0: drained).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_shutdown(
    _env: JNIEnv,
    _class: JClass,
) -> jlong {
    guard(|| Ok(torchspark_core::lifecycle::shutdown(true) as jlong)).unwrap_or(0)
}

/// The class loader that loaded the library is gone: its queued jobs are dropped and the call
/// waits (bounded) for the passes in flight. The library stays mapped (it pins itself), so a
/// later loader may use it again.
#[unsafe(no_mangle)]
pub extern "system" fn JNI_OnUnload(_vm: *mut JavaVM, _reserved: *mut c_void) {
    let _ = guard(|| Ok(torchspark_core::lifecycle::quiesce()));
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_torchspark_NativeBridge_panicForTest(
    mut env: JNIEnv,
    _class: JClass,
) {
    with_env(&mut env, (), |_| crate::injected_panic())
}
