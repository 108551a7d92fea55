//! Process-level settings that make libtorch fast inside a host that did not configure it
//! (a Spark executor JVM, a Python worker): malloc tuning, thread counts (intra-op, interop,
//! the decode pools of the image and text readers), the CUDA backend and libtorch's loading.

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::Once;

unsafe extern "C" {
    fn mallopt(param: c_int, value: c_int) -> c_int;
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
}

// glibc's <malloc.h>.
const M_TRIM_THRESHOLD: c_int = -1;
const M_TOP_PAD: c_int = -2;
const M_MMAP_THRESHOLD: c_int = -3;
const M_ARENA_MAX: c_int = -8;
const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;

static TUNE: Once = Once::new();

/// Once per process, before the first model load.
///
/// glibc serves large blocks (libtorch's activation buffers) with fresh `mmap`s and gives them
/// back at once, so every forward pass page-faults its activations in again: measured here at
/// ~2x slower. Raising the mmap and trim thresholds keeps those blocks in the heap. Users must
/// not have to set `MALLOC_*` variables for this, so the library does it.
///
/// Kept blocks live in the arena of the thread that freed them, and glibc gives each new thread
/// its own arena, up to 8 per core: in a long-lived executor, whose pools keep starting task
/// threads, RSS then rose in steps of one arena's activations for hundreds of thousands of
/// images (the soak, docs/soak.md). So arenas are capped at the cores (at least 2), the most
/// forward passes that run at once; `MALLOC_ARENA_MAX` (YARN sets 4) wins when set.
pub(crate) fn tune_process() {
    TUNE.call_once(|| {
        if std::env::var_os("TORCHSPARK_KEEP_MALLOC").is_none() {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
            // SAFETY: mallopt only changes allocator parameters; any value is accepted or refused.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 256 << 20);
                mallopt(M_TOP_PAD, 64 << 20);
                if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                    mallopt(M_ARENA_MAX, cores.min(c_int::MAX as usize) as c_int);
                }
            }
        }
        init_interop_once();
    });
}

static INTEROP: Once = Once::new();

/// One interop thread, before the first forward pass of the process (every pass runs on its
/// caller's or a worker's thread; libtorch's interop pool would only add idle threads).
fn init_interop_once() {
    INTEROP.call_once(|| {
        // Fails (and tch panics) if the pool was already started, e.g. by torch in the same
        // Python process; then it is already set and there is nothing to do.
        let _ = std::panic::catch_unwind(|| {
            if tch::get_num_interop_threads() != 1 {
                tch::set_num_interop_threads(1);
            }
        });
    });
}

/// A rayon pool of `n` threads per distinct `n` for the readers' decoding and tokenizing (a
/// handful per process, re-made in a forked child: [`crate::lifecycle`] keys them by process),
/// none for one thread.
pub(crate) fn decode_pool(n: usize) -> Option<&'static rayon::ThreadPool> {
    crate::lifecycle::decode_pool(n)
}

/// Sets this thread's intra-op thread count (libtorch's OpenMP setting is per calling thread,
/// and Spark tasks run on their own threads).
pub(crate) fn set_threads(n: usize) {
    tune_process();
    // One thread on a thread whose OpenMP team stayed in the parent of a fork.
    let n = crate::lifecycle::omp_threads(n.clamp(1, 1024)) as i32;
    if tch::get_num_threads() != n {
        tch::set_num_threads(n);
    }
}

static CUDA: Once = Once::new();

/// A binary linked with `--as-needed` drops `libtorch_cuda.so` (nothing references it
/// directly), so libtorch would never see a GPU: load it on first request of a CUDA device.
pub(crate) fn load_cuda_backend() {
    CUDA.call_once(|| {
        // Next to the libtorch_cpu.so this process really loaded, else by the search path.
        let beside = loaded_beside_torch_cpu("libtorch_cuda.so");
        for name in beside.into_iter().chain(["libtorch_cuda.so".to_string()]) {
            let Ok(c_name) = CString::new(name) else {
                continue;
            };
            // SAFETY: dlopen with a valid C string; a null result just means "not there".
            if !unsafe { dlopen(c_name.as_ptr(), RTLD_NOW | RTLD_GLOBAL) }.is_null() {
                break;
            }
        }
    });
}

static LIBTORCH: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

/// An AOTInductor package's `*.wrapper.so` NEEDS `libtorch.so` by name and has no RUNPATH,
/// and this library links only `libtorch_cpu.so`: make `libtorch.so` (beside the loaded
/// `libtorch_cpu.so`) global once, before the first package loads, from any host.
pub(crate) fn load_libtorch_global() -> Result<(), String> {
    LIBTORCH
        .get_or_init(|| {
            let beside = loaded_beside_torch_cpu("libtorch.so");
            let tried: Vec<String> = beside.into_iter().chain(["libtorch.so".into()]).collect();
            for name in &tried {
                let Ok(c_name) = CString::new(name.as_str()) else {
                    continue;
                };
                // SAFETY: dlopen with a valid C string; a null result just means "not there".
                if !unsafe { dlopen(c_name.as_ptr(), RTLD_NOW | RTLD_GLOBAL) }.is_null() {
                    return Ok(());
                }
            }
            Err(format!(
                "could not load libtorch.so from {}",
                tried.join(" or ")
            ))
        })
        .clone()
}

/// `name` in the directory of the `libtorch_cpu.so` this process really loaded.
fn loaded_beside_torch_cpu(name: &str) -> Option<String> {
    std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|maps| {
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .find(|p| p.ends_with("/libtorch_cpu.so"))
                .map(|p| p.replace("/libtorch_cpu.so", &format!("/{name}")))
        })
}
