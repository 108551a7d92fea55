//! The torchspark shared library: the core behind a C ABI (Arrow C Data Interface, for Python
//! workers through ctypes) and JNI entry points (for Spark executors). Both layers only convert
//! and forward; every entry point runs inside [`guard`], so a Rust panic becomes an error value
//! or a Java exception instead of aborting the host process.

pub mod capi;
pub mod jni_api;

use std::panic::{AssertUnwindSafe, catch_unwind};

use torchspark_core::{Error, Result};

/// Runs `f`, turning a panic into [`Error::Internal`].
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            Err(Error::Internal {
                reason: format!("native panic: {msg}"),
            })
        }
    }
}

/// Behind every FFI layer's test hook: proves a panic comes back as an error.
pub fn injected_panic() -> Result<()> {
    guard(|| panic!("injected panic for test"))
}
