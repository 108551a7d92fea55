//! The handles both FFI layers hand out: process-wide tables from an id to a reference-counted
//! object, ids never reused. A call clones the object's `Arc` for its duration, so closing a
//! handle while another thread is inside a call on it frees nothing under that call (the
//! object goes with the last call), and a call after the close fails naming the handle instead
//! of reading freed memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use once_cell::sync::Lazy;
use torchspark_core::{Error, Pending, Result, Scorer};

/// One counter for both tables: a pending id is never a model id, and no id comes back.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Open models (`ts_open`, `openModel`).
pub static MODELS: Lazy<Table<Scorer>> = Lazy::new(|| Table::new("model"));
/// Submitted batches not yet collected or discarded (`ts_submit`, `submit`). The mutex: one
/// collect at a time.
pub static PENDINGS: Lazy<Table<Mutex<Pending>>> = Lazy::new(|| Table::new("pending"));

pub struct Table<T> {
    what: &'static str,
    map: Mutex<HashMap<u64, Arc<T>>>,
}

impl<T> Table<T> {
    fn new(what: &'static str) -> Self {
        Table {
            what,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<u64, Arc<T>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `value`; returns its id (non-zero, below 2^63: a positive `jlong` too).
    pub fn insert(&self, value: T) -> u64 {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        self.map().insert(id, Arc::new(value));
        id
    }

    /// The object behind `id`, for one call.
    ///
    /// Errors: [`Error::Handle`] naming the id when it is 0, closed or never given out.
    pub fn get(&self, id: u64) -> Result<Arc<T>> {
        self.map()
            .get(&id)
            .cloned()
            .ok_or_else(|| self.not_open(id))
    }

    /// Takes `id` out of the table; the object goes when its last call ends. `None` when it
    /// was not there (closed twice: nothing to do).
    pub fn remove(&self, id: u64) -> Option<Arc<T>> {
        self.map().remove(&id)
    }

    fn not_open(&self, id: u64) -> Error {
        let reason = match (id, self.what) {
            (0, "model") => "null model handle (closed or never opened)".to_string(),
            (0, _) => "null pending handle (collected or discarded already)".to_string(),
            (_, "model") => {
                "closed (NativeModel.close, NativeBridge.closeModel) or never opened".to_string()
            }
            _ => "collected or discarded already, or never submitted".to_string(),
        };
        Error::Handle {
            what: self.what,
            id,
            reason,
        }
    }
}
