//! The AOTInductor backend: `.pt2` packages through libtorch's `AOTIModelPackageLoader`,
//! reached through the C++ bridge in `cpp/aoti_bridge.cpp` (built by `build.rs`).
//!
//! A package is compiled code (a `*.wrapper.so` inside the zip) for one device, one precision
//! and one input layout: nothing is cast at run time. Packages written by `export_model` take
//! contiguous NCHW float32 input (a channels-last conversion, where it pays, is inside the
//! graph), which is also what `torch.export` users get by default.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::spec::CpuSpec;

unsafe extern "C" {
    fn ts_aoti_package_metadata(
        path: *const c_char,
        model_name: *const c_char,
        json_out: *mut *mut c_char,
    ) -> *mut c_char;
    fn ts_aoti_load(
        path: *const c_char,
        model_name: *const c_char,
        num_runners: usize,
        device_index: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn ts_aoti_run(
        loader: *mut c_void,
        inputs: *const *const torch_sys::C_tensor,
        n_inputs: usize,
        outputs: *mut *mut *mut torch_sys::C_tensor,
        n_outputs: *mut usize,
    ) -> *mut c_char;
    fn ts_aoti_delete(loader: *mut c_void);
    fn ts_aoti_free(p: *mut c_void);
}

/// Takes ownership of a bridge message (NULL = success).
fn take_error(p: *mut c_char) -> std::result::Result<(), String> {
    if p.is_null() {
        return Ok(());
    }
    // SAFETY: non-null results of the bridge are malloc'd NUL-terminated strings we now own.
    let text = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: allocated by the bridge's malloc, freed once here.
    unsafe { ts_aoti_free(p.cast()) };
    Err(super::first_line(&text))
}

/// One model of a package, loaded.
struct Loader(NonNull<c_void>);

// SAFETY: AOTIModelPackageLoader::run is safe to call from several threads at once: the
// container behind it hands each call a free model instance under its own mutex (waiting when
// all are busy) and shares only the read-only constants. We never call anything else on it
// after loading, and `Drop` runs once, when the last `Arc<Model>` goes.
unsafe impl Send for Loader {}
// SAFETY: see `Send`: `run` takes `&self` here and is internally synchronized.
unsafe impl Sync for Loader {}

impl Drop for Loader {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ts_aoti_load and is deleted exactly once.
        unsafe { ts_aoti_delete(self.0.as_ptr()) }
    }
}

impl Loader {
    fn load(path: &Path, model: &str, device: Device) -> std::result::Result<Loader, String> {
        let c_path = c_string(&path.to_string_lossy())?;
        let c_model = c_string(model)?;
        let index = match device {
            Device::Cuda(i) => i as c_int,
            _ => -1,
        };
        // One runner per core: concurrent Spark tasks (at most one per core) each get a model
        // instance instead of queueing. Runners share the weights, so the extra cost is each
        // runner's own activation buffers, allocated per call anyway.
        let runners = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut out = std::ptr::null_mut();
        // SAFETY: valid C strings and a writable out pointer; the bridge catches all exceptions.
        take_error(unsafe {
            ts_aoti_load(c_path.as_ptr(), c_model.as_ptr(), runners, index, &mut out)
        })?;
        NonNull::new(out)
            .map(Loader)
            .ok_or_else(|| "the loader returned no package".to_string())
    }

    fn run(&self, inputs: &[&Tensor]) -> std::result::Result<Vec<Tensor>, String> {
        let mut outputs = std::ptr::null_mut();
        let mut n = 0usize;
        let ptrs: Vec<*const torch_sys::C_tensor> = inputs.iter().map(|t| t.as_ptr()).collect();
        // SAFETY: the loader is live; every input is a valid tensor for the duration of the call.
        take_error(unsafe {
            ts_aoti_run(
                self.0.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len(),
                &mut outputs,
                &mut n,
            )
        })?;
        if outputs.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: the bridge returns `n` fresh at::Tensor* that we now own (tch frees each with
        // `delete`, as it does its own), in a malloc'd array freed once below.
        let tensors = (0..n)
            .map(|i| unsafe { Tensor::from_ptr(*outputs.add(i)) })
            .collect();
        // SAFETY: the array itself, allocated by the bridge's malloc.
        unsafe { ts_aoti_free(outputs.cast()) };
        Ok(tensors)
    }
}

fn c_string(s: &str) -> std::result::Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// The package's metadata (`AOTI_DEVICE_KEY`, ...), read without loading its code.
fn metadata(path: &Path, model: &str) -> std::result::Result<HashMap<String, String>, String> {
    let c_path = c_string(&path.to_string_lossy())?;
    let c_model = c_string(model)?;
    let mut json = std::ptr::null_mut();
    // SAFETY: valid C strings and a writable out pointer; the bridge catches all exceptions.
    take_error(unsafe { ts_aoti_package_metadata(c_path.as_ptr(), c_model.as_ptr(), &mut json) })?;
    if json.is_null() {
        return Ok(HashMap::new());
    }
    // SAFETY: as in take_error: a malloc'd string we own.
    let text = unsafe { CStr::from_ptr(json) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once.
    unsafe { ts_aoti_free(json.cast()) };
    serde_json::from_str(&text).map_err(|e| format!("package metadata: {e}"))
}

/// A loaded package: its `model` and the extra models that featurize methods name.
pub(crate) struct Package {
    main: Loader,
    methods: HashMap<String, Loader>,
}

impl std::fmt::Debug for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Package")
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The model name `aoti_compile_and_package` gives a single program.
pub(crate) const MAIN: &str = "model";

impl Package {
    /// Loads `MAIN` and each of `methods` from `file` (a verified copy of `path`, or `path`
    /// itself); errors name `path`.
    pub(crate) fn load(
        path: &Path,
        file: &Path,
        bytes: &[u8],
        device: Device,
        methods: &[&str],
        cpu: Option<&CpuSpec>,
    ) -> Result<Package> {
        let fail = |reason: String| Error::ModelLoad {
            path: path.to_path_buf(),
            format: super::Format::Aoti.name(),
            reason,
        };
        let models = super::format::package_models(bytes);
        for name in std::iter::once(MAIN).chain(methods.iter().copied()) {
            if !models.iter().any(|m| m == name) {
                return Err(fail(format!(
                    "it has no model named `{name}` (models inside: {})",
                    if models.is_empty() {
                        "none: not a readable package".to_string()
                    } else {
                        models.join(", ")
                    }
                )));
            }
        }
        // A package compiled for one device runs its kernels on that device's pointers
        // whatever we ask: refuse a mismatch before loading any code.
        let meta = metadata(file, MAIN).map_err(&fail)?;
        let compiled_for = meta.get("AOTI_DEVICE_KEY").map_or("cpu", String::as_str);
        let wanted = match device {
            Device::Cuda(_) => "cuda",
            _ => "cpu",
        };
        if compiled_for != wanted {
            return Err(fail(format!(
                "it was compiled for device `{compiled_for}`, but `{wanted}` was requested; \
                 compile it again for {wanted}"
            )));
        }
        // Also for GPU packages: their host-side wrapper is compiled with the same -march.
        check_cpu(cpu, &meta).map_err(&fail)?;
        let libtorch = crate::sys::load_libtorch_global();
        let load = |name: &str| {
            Loader::load(file, name, device).map_err(|e| match &libtorch {
                Err(why) if e.contains("libtorch.so") => fail(format!("{e} ({why})")),
                _ => fail(e),
            })
        };
        let main = load(MAIN)?;
        let mut loaded = HashMap::new();
        for &m in methods {
            loaded.insert(m.to_string(), load(m)?);
        }
        Ok(Package {
            main,
            methods: loaded,
        })
    }

    /// Runs `model` (or a featurize method's model) on `x`; all outputs, flattened.
    pub(crate) fn run(
        &self,
        x: &Tensor,
        method: Option<&str>,
    ) -> std::result::Result<Vec<Tensor>, String> {
        self.run_many(std::slice::from_ref(x), method)
    }

    /// Runs `model` (or `method`'s model) on several inputs, in the order it was exported with.
    pub(crate) fn run_many(
        &self,
        xs: &[Tensor],
        method: Option<&str>,
    ) -> std::result::Result<Vec<Tensor>, String> {
        let loader = match method {
            None => &self.main,
            Some(m) => self
                .methods
                .get(m)
                .ok_or_else(|| format!("the package has no model named `{m}`"))?,
        };
        loader.run(&xs.iter().collect::<Vec<_>>())
    }
}

/// Refuses a package whose code needs CPU instructions this host lacks: it would die with
/// SIGILL (taking the JVM or Python worker with it) at its first unsupported instruction.
/// The need is the spec's `cpu.flags` plus what the metadata's `AOTI_CPU_ISA` implies.
fn check_cpu(
    cpu: Option<&CpuSpec>,
    meta: &HashMap<String, String>,
) -> std::result::Result<(), String> {
    let isa = meta.get("AOTI_CPU_ISA").map_or("", String::as_str);
    let required = cpu
        .iter()
        .flat_map(|c| c.flags.iter().map(String::as_str))
        .chain(crate::host::aoti_isa_flags(isa));
    let missing = crate::host::missing_cpu_flags(required);
    if missing.is_empty() {
        return Ok(());
    }
    let target = match cpu.and_then(|c| c.march.as_deref()) {
        Some(march) => format!("compiled for `{march}`"),
        None if cpu.is_some() => "compiled for another CPU (its spec's cpu.flags)".to_string(),
        None => format!("compiled for the vector ISA `{isa}` (its metadata's AOTI_CPU_ISA)"),
    };
    Err(format!(
        "it was {target} and needs CPU instructions that this host ({}) lacks: {}; \
         re-export it with export_model(..., format=\"aoti\", cpu=\"x86-64-v3\") to run on \
         every AVX2 CPU, or run it on nodes whose CPUs have these flags",
        crate::host::name(),
        missing.join(", ")
    ))
}

/// Where the AOTI backend must read the package from: when the spec pins a digest, a private
/// copy of the verified bytes (so the code that runs is the code that was checked), else the
/// file itself. The copy is removed when this is dropped (after loading; the loader has
/// extracted what it needs by then).
pub(crate) struct Source {
    path: PathBuf,
    temp: bool,
}

impl Source {
    pub(crate) fn new(path: &Path, verified: Option<&[u8]>) -> Result<Source> {
        let Some(bytes) = verified else {
            return Ok(Source {
                path: path.to_path_buf(),
                temp: false,
            });
        };
        use std::io::Write;
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let copy = std::env::temp_dir().join(format!(
            "torchspark-{}-{}.pt2",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&copy)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        write().map_err(|e| Error::ModelLoad {
            path: path.to_path_buf(),
            format: super::Format::Aoti.name(),
            reason: format!("cannot write the verified copy {}: {e}", copy.display()),
        })?;
        Ok(Source {
            path: copy,
            temp: true,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if self.temp {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
