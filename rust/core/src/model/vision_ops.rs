//! torchvision's `nms` for scripted torchvision detectors, registered once per process.
//!
//! A scripted detector (SSD, SSDlite) calls `torchvision::nms`, which plain libtorch lacks:
//! loading it fails with "Unknown builtin op". torchvision's own `_C.so` needs
//! `libtorch_python.so`, so it cannot be loaded into an executor JVM. `cpp/vision_ops.cpp`
//! has the same CPU kernel as torchvision's and registers it at run time, only when the
//! dispatcher lacks the op (in a Python worker that imported torchvision first, torchvision's
//! own kernel stays). A process that imports torchvision *after* this registration aborts
//! (torchvision registers the op again at library load), so torchspark's Python package
//! imports torchvision first when it is installed.

use std::ffi::{CStr, c_char, c_void};
use std::path::Path;
use std::sync::OnceLock;

use crate::error::{Error, Result};

unsafe extern "C" {
    fn ts_vision_ops_register() -> *mut c_char;
    fn ts_vision_ops_free(p: *mut c_void);
}

/// The outcome of the process's one registration attempt.
static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Makes `torchvision::nms` (CPU) callable by TorchScript models; call before loading one.
/// Idempotent and cheap after the first call.
///
/// Errors: [`Error::ModelLoad`] naming `path` (the model about to load) when libtorch refused
/// the registration.
pub(crate) fn ensure_registered(path: &Path) -> Result<()> {
    REGISTERED
        .get_or_init(register)
        .clone()
        .map_err(|reason| Error::ModelLoad {
            path: path.to_path_buf(),
            format: super::Format::TorchScript.name(),
            reason: format!("cannot register torchvision::nms: {reason}"),
        })
}

fn register() -> std::result::Result<(), String> {
    // SAFETY: the bridge takes no arguments and catches every C++ exception.
    let err = unsafe { ts_vision_ops_register() };
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a malloc'd NUL-terminated string we now own.
    let text = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated by the bridge's malloc, freed once here.
    unsafe { ts_vision_ops_free(err.cast()) };
    Err(super::first_line(&text))
}
