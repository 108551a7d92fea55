//! The torchspark shared library: the core behind a C ABI (Arrow C Data Interface, for Python
//! workers through ctypes) and JNI entry points (for Spark executors). Both layers only convert
//! and forward; every entry point runs inside [`guard`], so a Rust panic becomes an error value
//! or a Java exception instead of aborting the host process, and its core work inside
//! [`gated`] (the lifecycle gate, `torchspark_core::lifecycle`). Handles are ids in the tables
//! of [`handles`], never raw pointers.

pub mod capi;
pub mod handles;
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

/// [`guard`] with `f` inside the lifecycle gate: `f` may run torch code and must not call back
/// into a JVM (a JVM that is exiting never lets the thread back, and the exit would wait for it).
pub fn gated<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    guard(|| {
        let _inside = torchspark_core::lifecycle::try_enter()?;
        f()
    })
}

/// Behind every FFI layer's test hook: proves a panic comes back as an error.
pub fn injected_panic() -> Result<()> {
    guard(|| panic!("injected panic for test"))
}
