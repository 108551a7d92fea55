//! The AOTInductor backend: `.pt2` packages through libtorch's `AOTIModelPackageLoader`,
//! reached through the C++ bridge in `cpp/aoti_bridge.cpp` (built by `build.rs`).
//!
//! A package is compiled code (a `*.wrapper.so` inside the zip) for one device, one precision
//! and one input layout: nothing is cast at run time. Packages written by `export_model` take
//! contiguous NCHW float32 input (a channels-last conversion, where it pays, is inside the
//! graph), which is also what `torch.export` users get by default.
//!
//! # Where a package's files go
//! libtorch's loader, given a `.pt2` file, extracts it into `$TMPDIR/aotinductor_XXXXXX` and
//! removes that folder only when the loader is destroyed: a model still loaded at exit (the
//! registry keeps it for the process's life), a loader that fails half way, or a process that
//! ends in `os._exit`/SIGKILL left it behind. So the loader is never given the file: the bytes
//! that were read (and hashed, when the spec pins a digest) are extracted here into a private
//! `mkdtemp` folder (0700, random name; files 0600), and the loader reads that folder through
//! our descriptor on it (`/proc/self/fd/N`: a rename in the temp dir cannot redirect it) in its
//! unpacked-package mode, in which it removes nothing. See [`Extraction`].

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Mutex, Once};

use once_cell::sync::Lazy;

use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::spec::CpuSpec;

unsafe extern "C" {
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

/// Held around every `AOTIModelPackageLoader` construction in this process (see `Loader::load`).
static PACKAGE_LOADS: Mutex<()> = Mutex::new(());

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
        // libtorch's package loader parses its JSON files into one function-local `static
        // nlohmann::json` (torch/csrc/inductor/aoti_package/model_package_loader.cpp,
        // `load_json_file`): two loads at once corrupt its map and crash. One load at a time.
        let _one_at_a_time = PACKAGE_LOADS.lock().unwrap_or_else(|p| p.into_inner());
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

/// The zip archive over a package's bytes.
fn archive(bytes: &[u8]) -> std::result::Result<zip::ZipArchive<std::io::Cursor<&[u8]>>, String> {
    zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("it is not a readable package (zip archive): {e}"))
}

/// The metadata JSON files are a few hundred bytes; more is not a package's metadata.
const METADATA_LIMIT: u64 = 1 << 20;

/// The metadata of `model` (`AOTI_DEVICE_KEY`, `AOTI_CPU_ISA`, ...), read from the package's
/// bytes without loading its code: the first `<root>/data/aotinductor/<model>/*wrapper_metadata.json`,
/// as libtorch's loader picks it.
fn metadata(bytes: &[u8], model: &str) -> std::result::Result<HashMap<String, String>, String> {
    let mut zip = archive(bytes)?;
    let name = zip.file_names().find(|n| {
        n.split_once("/data/aotinductor/")
            .and_then(|(_, rest)| rest.split_once('/'))
            .is_some_and(|(m, file)| {
                m == model && !file.contains('/') && file.ends_with("wrapper_metadata.json")
            })
    });
    let Some(name) = name.map(str::to_string) else {
        return Err(format!("it has no metadata for its model `{model}`"));
    };
    let mut text = String::new();
    zip.by_name(&name)
        .map_err(|e| format!("cannot read {name}: {e}"))?
        .take(METADATA_LIMIT)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("package metadata {name}: {e}"))
}

/// A loaded package: its `model` and the extra models that featurize methods name.
pub(crate) struct Package {
    // Declared before `files`: the loaders go first when a package is dropped.
    main: Loader,
    methods: HashMap<String, Loader>,
    /// The extracted files of a CUDA package, which loads its kernels from them on first use;
    /// a CPU package's are removed once it is loaded (see [`Package::load`]). Held, never read:
    /// dropping it removes the folder.
    _files: Option<Extraction>,
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
    /// Loads `MAIN` and each of `methods` from `bytes`, the content of `path` that was read
    /// (and checked against the spec's `sha256` pin, when there is one); errors name `path`.
    pub(crate) fn load(
        path: &Path,
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
        let meta = metadata(bytes, MAIN).map_err(&fail)?;
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
        let files = Extraction::new(bytes).map_err(&fail)?;
        let libtorch = crate::sys::load_libtorch_global();
        let load = |name: &str| {
            Loader::load(files.loader_path(), name, device).map_err(|e| match &libtorch {
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
            // A CPU package has read what it runs while loading (the wrapper `.so` is mapped,
            // its constants copied or mapped): its folder goes now, so even a process that ends
            // in os._exit or SIGKILL leaves nothing. CUDA kernels (`.cubin`) load on first use.
            _files: matches!(device, Device::Cuda(_)).then_some(files),
        })
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

/// A package's files, extracted from the bytes that were read into a private folder: made by
/// `mkdtemp` in the temp dir (`$TMPDIR`, else `/tmp`) as `torchspark-pt2-XXXXXX` (mode 0700, a
/// random name nobody can predict or pre-create), each file created 0600 with `O_EXCL` and
/// `O_NOFOLLOW` through our descriptor on the folder. The loader reads the folder through that
/// descriptor too (`/proc/self/fd/N`), so renaming or replacing the folder's name in a temp dir
/// that others can write cannot redirect it. Removed on drop, and at exit when still alive (an
/// `atexit` handler: a model loaded at exit is never dropped).
pub(crate) struct Extraction {
    dir: PathBuf,
    /// Open on `dir` (O_DIRECTORY | O_NOFOLLOW): `loader_path` goes through it.
    handle: std::fs::File,
    /// `/proc/self/fd/N` for `handle` when /proc shows it, else `dir`.
    via: PathBuf,
}

/// Extraction folders alive in this process, removed by [`remove_at_exit`].
static LIVE: Lazy<Mutex<HashSet<PathBuf>>> = Lazy::new(|| Mutex::new(HashSet::new()));
static AT_EXIT: Once = Once::new();

/// Runs at process exit (after `main` returns, `exit()`, `System.exit`, Python's normal exit):
/// removes every extraction folder still alive. Only file system calls, no torch code; a lock
/// held by a thread that was stopped mid-update is skipped, never waited for.
extern "C" fn remove_at_exit() {
    if let Ok(mut live) = LIVE.try_lock() {
        for dir in live.drain() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Extraction {
    /// Extracts every entry of the package `bytes`; the error says why (an entry name that
    /// would leave the folder, a full disk, an unwritable temp dir).
    pub(crate) fn new(bytes: &[u8]) -> std::result::Result<Extraction, String> {
        let base = std::env::temp_dir();
        let mut template = base
            .join("torchspark-pt2-XXXXXX")
            .as_os_str()
            .as_bytes()
            .to_vec();
        template.push(0);
        // SAFETY: a writable NUL-terminated buffer that mkdtemp fills in place.
        if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
            return Err(format!(
                "cannot make a private folder to extract it into in {} ({}); set TMPDIR to a \
                 writable directory",
                base.display(),
                std::io::Error::last_os_error()
            ));
        }
        template.pop();
        let dir = PathBuf::from(std::ffi::OsString::from_vec(template));
        let handle = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&dir)
        {
            Ok(h) => h,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(format!("cannot open the folder {}: {e}", dir.display()));
            }
        };
        let via = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
        let via = match (std::fs::metadata(&via), handle.metadata()) {
            (Ok(a), Ok(b)) if (a.dev(), a.ino()) == (b.dev(), b.ino()) => via,
            _ => dir.clone(),
        };
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain extern "C" function with no arguments.
            unsafe { libc::atexit(remove_at_exit) };
        });
        if let Ok(mut live) = LIVE.lock() {
            live.insert(dir.clone());
        }
        let extraction = Extraction { dir, handle, via };
        extraction
            .extract(bytes)
            .map_err(|e| format!("cannot extract it into {}: {e}", extraction.dir.display()))?;
        Ok(extraction)
    }

    fn extract(&self, bytes: &[u8]) -> std::result::Result<(), String> {
        let mut zip = archive(bytes)?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| e.to_string())?;
            let name = entry.name().to_string();
            let rel = contained(&name)
                .ok_or_else(|| format!("its entry `{name}` is not a relative path inside it"))?;
            let target = self.via.join(&rel);
            let mut dirs = std::fs::DirBuilder::new();
            dirs.recursive(true).mode(0o700);
            if entry.is_dir() {
                dirs.create(&target).map_err(|e| format!("{name}: {e}"))?;
                continue;
            }
            if let Some(parent) = target.parent() {
                dirs.create(parent).map_err(|e| format!("{name}: {e}"))?;
            }
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&target)
                .map_err(|e| format!("{name}: {e}"))?;
            std::io::copy(&mut entry, &mut out).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }

    /// What the loader is given: the folder, through our descriptor on it.
    pub(crate) fn loader_path(&self) -> &Path {
        &self.via
    }

    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `name` as a path of plain components inside the folder: none empty, `.` or `..`, and not
/// absolute (an entry must not write anywhere else).
fn contained(name: &str) -> Option<PathBuf> {
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    let plain = |c: &str| !c.is_empty() && c != "." && c != ".." && !c.contains('\0');
    (!trimmed.starts_with('/') && trimmed.split('/').all(plain)).then(|| PathBuf::from(trimmed))
}

impl Drop for Extraction {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.remove(&self.dir);
        }
        // Only the folder we made: a name swapped for something else (in a temp dir others
        // can write) is left alone.
        let ours = |m: std::fs::Metadata| {
            self.handle
                .metadata()
                .is_ok_and(|h| (h.dev(), h.ino()) == (m.dev(), m.ino()))
        };
        if std::fs::symlink_metadata(&self.dir).is_ok_and(ours) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    // A failed unwrap is a failed test, with its location.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn package() -> Vec<u8> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/out");
        std::fs::read(root.join("tuple_net_aoti.pt2")).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn extraction_is_private_random_and_removed_on_drop() {
        let bytes = package();
        let (a, b) = (
            Extraction::new(&bytes).unwrap(),
            Extraction::new(&bytes).unwrap(),
        );
        assert_ne!(a.dir(), b.dir(), "a fresh random name each time");
        for e in [&a, &b] {
            let name = e.dir().file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("torchspark-pt2-"), "{name}");
            assert_eq!(mode(e.dir()), 0o700);
            let mut files = 0;
            let mut stack = vec![e.dir().to_path_buf()];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).unwrap() {
                    let p = entry.unwrap().path();
                    let t = std::fs::symlink_metadata(&p).unwrap().file_type();
                    if t.is_dir() {
                        assert_eq!(mode(&p), 0o700, "{}", p.display());
                        stack.push(p);
                    } else {
                        assert!(t.is_file(), "{}", p.display());
                        assert_eq!(mode(&p), 0o600, "{}", p.display());
                        files += 1;
                    }
                }
            }
            assert!(files >= 10, "every entry extracted ({files})");
            // The loader reads it through our descriptor, not the name.
            assert!(e.loader_path().starts_with("/proc/self/fd/"));
        }
        let dirs = [a.dir().to_path_buf(), b.dir().to_path_buf()];
        drop((a, b));
        for d in dirs {
            assert!(!d.exists(), "{} removed", d.display());
        }
    }

    #[test]
    fn entries_that_would_leave_the_folder_are_refused() {
        for bad in ["/etc/x", "../x", "a/../../x", "a//b", "./a", "", "a/./b"] {
            assert_eq!(contained(bad), None, "{bad:?}");
        }
        assert_eq!(contained("p/data/x.so"), Some(PathBuf::from("p/data/x.so")));
        assert_eq!(contained("p/data/"), Some(PathBuf::from("p/data")));
        // A package whose entry climbs out is refused before anything is written outside.
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            let o = zip::write::FileOptions::default();
            w.start_file("p/data/aotinductor/model/ok.txt", o).unwrap();
            std::io::Write::write_all(&mut w, b"ok").unwrap();
            w.start_file("p/../../escaped-by-a-package.txt", o).unwrap();
            std::io::Write::write_all(&mut w, b"no").unwrap();
            w.finish().unwrap();
        }
        let e = Extraction::new(buf.get_ref()).err().unwrap();
        assert!(e.contains("p/../../escaped-by-a-package.txt"), "{e}");
        assert!(
            !std::env::temp_dir()
                .join("escaped-by-a-package.txt")
                .exists()
        );
    }

    /// Re-runs this test binary as a child that runs only `child`, with `TMPDIR` set to
    /// `tmp`; returns its stdout. The child ends with `exit()`, which runs atexit handlers.
    fn run_child(child: &str, tmp: &Path) -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                child,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TMPDIR", tmp)
            .env("TORCHSPARK_TEST_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn folder_still_alive_at_exit_is_removed_by_the_exit_handler() {
        let tmp = std::env::temp_dir().join(format!("torchspark-exit-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let out = run_child(
            "model::aoti::tests::child_exits_with_an_extraction_alive",
            &tmp,
        );
        let dir = out
            .lines()
            .find_map(|l| l.split_once("EXTRACTED ").map(|(_, d)| d))
            .unwrap_or_else(|| panic!("child output: {out}"));
        assert!(dir.starts_with(tmp.to_str().unwrap()), "{dir}");
        assert!(!Path::new(dir).exists(), "{dir} left behind");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
        std::fs::remove_dir(&tmp).unwrap();
    }

    #[test]
    #[ignore = "a child of folder_still_alive_at_exit_is_removed_by_the_exit_handler"]
    fn child_exits_with_an_extraction_alive() {
        if std::env::var_os("TORCHSPARK_TEST_CHILD").is_none() {
            return;
        }
        let e = Extraction::new(&package()).unwrap();
        println!("EXTRACTED {}", e.dir().display());
        assert!(e.dir().is_dir());
        // As a model the registry holds at exit: never dropped.
        std::mem::forget(e);
        std::process::exit(0);
    }
}
